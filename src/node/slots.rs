//! What travels on the rings.

use std::sync::atomic::{AtomicU64, Ordering};

use ringex_engine::{Command, Event, Output, Query};

/// What an input slot carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotKind {
    /// An engine command: journaled, then applied.
    Command,
    /// Control: take a snapshot now. Not journaled.
    Snapshot,
    /// Control: report the state hash. Not journaled.
    StateHash,
    /// Control: the last slot before shutdown: write the final snapshot. Not journaled.
    Shutdown,
    /// A read-only query, answered in ring order. Not journaled.
    Query,
    /// A standby's copy of a primary's journal frame (`InputSlot::frame`): journaled
    /// byte for byte, then its command applied.
    Replica,
    /// A standby's copy of a primary's epoch record: journaled byte for byte; the engine
    /// takes the epoch in `tag`.
    ReplicaEpoch,
    /// A primary's checkpoint: the state hash in `aux` (sequence, interval, hash low,
    /// high) journaled as a checkpoint record.
    Checkpoint,
    /// A standby's copy of a primary's checkpoint record (`frame`; the values in `aux`):
    /// journaled byte for byte, compared with the standby's own hash.
    ReplicaCheckpoint,
    /// Control: a promotion. The journal takes the epoch in `tag` and an epoch record,
    /// durable before the engine sees it.
    Promote,
}

/// Largest frame a replica slot carries: a command record's (header, the largest encoded
/// command, padding).
pub const REPLICA_FRAME_MAX: usize =
    (48 + ringex_engine::codec::COMMAND_SIZE_MAX).next_multiple_of(8);

/// One input-ring slot. The producer writes the plain fields; the journaler, which only
/// gets `&InputSlot` from the ring, records the journal sequence and chain in atomics
/// that the engine reads after the ring's barrier (release/acquire through the cursors).
#[derive(Debug)]
pub struct InputSlot {
    pub kind: SlotKind,
    /// Stamped by the producer from the system clock, journaled with the command.
    pub timestamp_ns: u64,
    /// Opaque to the node: the gateway's session and request, echoed on every event.
    pub tag: u64,
    pub command: Command,
    /// For `SlotKind::Query`.
    pub query: Query,
    /// For `SlotKind::Replica`: the frame, `frame_len` bytes of it.
    pub frame: [u8; REPLICA_FRAME_MAX],
    pub frame_len: usize,
    /// Checkpoint slots: sequence, interval, state hash (low, high 64 bits).
    pub aux: [u64; 4],
    /// Journal sequence assigned by the journaler; 0 if the append failed.
    seq: AtomicU64,
    /// Journal chain value after this record.
    chain: AtomicU64,
}

impl InputSlot {
    pub fn empty() -> InputSlot {
        InputSlot {
            kind: SlotKind::Command,
            timestamp_ns: 0,
            tag: 0,
            command: Command::CancelAll {
                account: 0,
                market: None,
            },
            query: Query::ApiKey { key_id: 0 },
            frame: [0; REPLICA_FRAME_MAX],
            frame_len: 0,
            aux: [0; 4],
            seq: AtomicU64::new(0),
            chain: AtomicU64::new(0),
        }
    }

    /// Fills the producer's fields (the journaler's stay as they are).
    pub fn set(
        &mut self,
        kind: SlotKind,
        timestamp_ns: u64,
        tag: u64,
        command: Command,
        query: Query,
    ) {
        self.kind = kind;
        self.timestamp_ns = timestamp_ns;
        self.tag = tag;
        self.command = command;
        self.query = query;
    }

    pub fn seq(&self) -> u64 {
        self.seq.load(Ordering::Relaxed)
    }

    pub fn chain(&self) -> u64 {
        self.chain.load(Ordering::Relaxed)
    }

    /// Written by the journaler only.
    pub fn set_journaled(&self, seq: u64, chain: u64) {
        self.seq.store(seq, Ordering::Relaxed);
        self.chain.store(chain, Ordering::Relaxed);
    }
}

/// One output-ring slot: one engine event (or query reply) with the sequence and tag of
/// the command (or query) it answers.
#[derive(Clone, Copy, Debug)]
pub struct OutputSlot {
    /// Journal sequence of the command that produced the event (0: not journaled); for a
    /// query reply, of the last command applied before the query.
    pub seq: u64,
    pub tag: u64,
    pub item: Output,
    /// The command's (or query's) last item: its outcome is complete.
    pub last: bool,
    /// The command's journaled timestamp (the query's stamp for replies).
    pub timestamp_ns: u64,
}

impl OutputSlot {
    pub fn empty() -> OutputSlot {
        OutputSlot {
            seq: 0,
            tag: 0,
            item: Output::Event(Event::CancelAllDone {
                account: 0,
                count: 0,
            }),
            last: false,
            timestamp_ns: 0,
        }
    }
}
