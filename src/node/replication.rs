//! The node's side of replication (the protocol is `ringex-replicator`'s).
//!
//! Primary: the journal stage rings the tap once a batch is appended, so the standby's
//! copy leaves while this node syncs its own; in `sync` mode the stage then waits until
//! the standby has the batch durable before the engine may apply it, so anything a client
//! hears about exists on two machines. When the standby goes away, the policy decides:
//! `halt` (new orders are refused as unavailable; the waiting batch waits) or `degrade`
//! (after a timeout, go on as `async`, loudly, until the standby has caught up again).
//!
//! Standby: frames from the primary are journaled byte for byte and their commands
//! applied by the same pipeline; a second thread acknowledges what is received and
//! durable.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringex_journal::{FrameTap, Watermarks};
use ringex_replicator::link::Link;
use ringex_replicator::standby::{Acker, Connection, Incoming};

use super::recovery::{decode_any_record, Record};
use super::{Node, NodeError, Shared};

/// What a `sync` primary does when its standby stops acknowledging.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossPolicy {
    /// Refuse new orders (unavailable) and keep the waiting batch waiting until the
    /// standby is back.
    Halt,
    /// After `after` without an acknowledgement, go on as `async`.
    Degrade { after: Duration },
}

/// How long a halted primary waits between log lines about it.
const HALT_NOTE_EVERY: Duration = Duration::from_secs(1);

/// The journal stage's side of a primary's replication.
pub struct Primary {
    pub tap: Arc<FrameTap>,
    pub link: Arc<Link>,
    /// `sync` mode: the engine waits for the standby.
    pub sync: bool,
    pub policy: LossPolicy,
    /// `sync` degraded to `async` (the standby was gone longer than the policy allows).
    degraded: bool,
    /// The last sequence of the batch before: a degraded primary is sync again once the
    /// standby holds it.
    seq_waited: u64,
}

impl Primary {
    pub fn new(tap: Arc<FrameTap>, link: Arc<Link>, sync: bool, policy: LossPolicy) -> Primary {
        Primary {
            tap,
            link,
            sync,
            policy,
            degraded: false,
            seq_waited: 0,
        }
    }

    /// A primary just promoted, with no standby yet: under `degrade` it starts degraded
    /// (sync again once a standby has caught up) rather than holding its first batch for
    /// the policy's timeout; under `halt` it waits for a standby, as the policy says.
    pub fn start_without_standby(&mut self, shared: &Shared) {
        if !self.sync || !matches!(self.policy, LossPolicy::Degrade { .. }) {
            return;
        }
        self.degraded = true;
        let metrics = &shared.metrics;
        metrics.replication_degraded.store(true, Ordering::Relaxed);
        metrics
            .replication_degradations
            .fetch_add(1, Ordering::Relaxed);
        shared.note(
            "replication: DEGRADED to async: promoted with no standby yet; commands are \
             acknowledged before they exist on two machines until a standby catches up"
                .into(),
        );
    }

    /// After a batch's appends: the standby's copy may leave.
    pub fn ship(&self) {
        self.tap.ring();
    }

    pub fn acked_durable(&self) -> u64 {
        self.link.durable()
    }

    /// `sync` mode: waits until the standby has `seq` durable, as the policy says. Err
    /// when the node stops (or is fenced) before it does.
    pub fn wait_standby(&mut self, seq: u64, shared: &Shared) -> Result<(), String> {
        // Fenced: nothing more is applied, whatever the mode (an `async` or degraded
        // primary waits for nobody, and would otherwise go on in the old epoch).
        if let Some(epoch) = self.link.fenced_by() {
            return Err(fenced(epoch, shared));
        }
        if !self.sync {
            return Ok(());
        }
        let metrics = &shared.metrics;
        let seq_before = std::mem::replace(&mut self.seq_waited, seq);
        if self.degraded {
            // Caught up with everything before this batch: wait for this one again.
            if self.link.durable() < seq_before || !self.link.connected() {
                return Ok(());
            }
            self.degraded = false;
            metrics.replication_degraded.store(false, Ordering::Relaxed);
            shared.note(format!(
                "replication: the standby has caught up (sequence {seq_before}): sync again"
            ));
        }
        let slice = match self.policy {
            LossPolicy::Degrade { after } => after,
            LossPolicy::Halt => HALT_NOTE_EVERY,
        };
        let started = Instant::now();
        // Bounded by the node stopping, being fenced, or the policy giving up.
        loop {
            if self.link.wait_durable(seq, slice) {
                if shared.replication_halted.swap(false, Ordering::AcqRel) {
                    shared.note(format!(
                        "replication: the standby acknowledged sequence {seq} after {} ms: \
                         taking orders again",
                        started.elapsed().as_millis()
                    ));
                }
                return Ok(());
            }
            if let Some(epoch) = self.link.fenced_by() {
                return Err(fenced(epoch, shared));
            }
            if shared.stopping.load(Ordering::Acquire) {
                return Err(format!(
                    "replication: stopping while the standby has not acknowledged \
                     sequences {}..={seq}",
                    self.link.durable() + 1
                ));
            }
            match self.policy {
                LossPolicy::Degrade { after } => {
                    self.degraded = true;
                    metrics.replication_degraded.store(true, Ordering::Relaxed);
                    metrics
                        .replication_degradations
                        .fetch_add(1, Ordering::Relaxed);
                    shared.note(format!(
                        "replication: DEGRADED to async: the standby has not acknowledged \
                         sequence {seq} within {} ms ({}); commands are now acknowledged \
                         before they exist on two machines",
                        after.as_millis(),
                        if self.link.connected() {
                            "connected, behind"
                        } else {
                            "not connected"
                        }
                    ));
                    return Ok(());
                }
                LossPolicy::Halt => {
                    shared.replication_halted.store(true, Ordering::Release);
                    shared.note(format!(
                        "replication: HALTED: the standby has not acknowledged sequence \
                         {seq} for {} ms ({}); orders are refused until it does",
                        started.elapsed().as_millis(),
                        if self.link.connected() {
                            "connected, behind"
                        } else {
                            "not connected"
                        }
                    ));
                }
            }
        }
    }
}

/// Marks the node failed for good: a node at `epoch` says a newer primary exists.
fn fenced(epoch: u32, shared: &Shared) -> String {
    let why = format!(
        "replication: FENCED: a node at epoch {epoch} says a newer primary exists; this node \
         takes no more orders: stop it, and start it as the new primary's standby \
         (docs/operations.md, \"When the primary is lost\", step 4)"
    );
    shared.fail(why.clone());
    why
}

/// What a standby has done with the stream, for its acknowledgements.
#[derive(Debug, Default)]
pub struct StandbyProgress {
    /// Last sequence handed to the pipeline.
    pub received: AtomicU64,
    /// The newest timestamp seen from the primary (heartbeats, frames).
    pub primary_time_ns: AtomicU64,
    /// The primary's written point, from its heartbeats.
    pub primary_written: AtomicU64,
}

/// Hands frames from the primary to the node until the connection ends, `stop` is set,
/// or a frame does not fit. Returns why it ended.
///
/// The node is locked for each message only, so that its owner's other users (a standby's
/// admin listener looking up a key) get their turn between messages.
pub fn follow(
    node: &Mutex<Option<Node>>,
    conn: &mut Connection,
    progress: &StandbyProgress,
    until: &dyn Fn() -> bool,
) -> Result<(), String> {
    let lock = || node.lock().unwrap_or_else(|e| e.into_inner());
    let mut expected = {
        let mut guard = lock();
        let node = guard.as_mut().ok_or("the node is gone")?;
        node.journal_end().map_err(|e| e.to_string())?.0 + 1
    };
    // What the journal already holds counts as received (after a reconnect the primary
    // may be waiting for exactly that).
    progress.received.store(expected - 1, Ordering::Release);
    // Ends with the connection or `until`: each pass waits at most 50 ms.
    while !until() {
        match conn.next(Duration::from_millis(50))? {
            None => {}
            Some(Incoming::Heartbeat {
                seq_written,
                timestamp_ns,
                ..
            }) => {
                progress
                    .primary_written
                    .store(seq_written, Ordering::Relaxed);
                progress
                    .primary_time_ns
                    .fetch_max(timestamp_ns, Ordering::Relaxed);
            }
            Some(Incoming::Frames {
                seq_first,
                count,
                bytes,
            }) => {
                if seq_first != expected {
                    return Err(format!(
                        "the primary sent sequence {seq_first} where {expected} was next"
                    ));
                }
                let mut guard = lock();
                let node = guard.as_mut().ok_or("the node is gone")?;
                let mut at = 0usize;
                for _ in 0..count {
                    if at + 48 > bytes.len() {
                        return Err("a frames message ends inside a frame".into());
                    }
                    let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
                    let size = ringex_journal::frame_size_bytes(u64::from(len)) as usize;
                    let frame = bytes
                        .get(at..at + size)
                        .ok_or("a frames message ends inside a frame")?;
                    node.submit_replica(frame)
                        .map_err(|e| format!("sequence {expected}: {e}"))?;
                    expected += 1;
                    at += size;
                }
                if at != bytes.len() {
                    return Err("a frames message holds more than its count".into());
                }
                progress.received.store(expected - 1, Ordering::Release);
                node.flush_replicas();
            }
        }
        // Its journal refused a frame (seen here after the pipeline's turn, or on the next
        // pass): nothing after it can be journaled, so the stream ends.
        if let Some(why) = lock().as_ref().and_then(|n| n.failure()) {
            return Err(why);
        }
    }
    Ok(())
}

/// The standby's acknowledgements: what it received, what its journal made durable and
/// what its engine applied, as soon as a sync round makes more durable (a `sync` primary
/// waits for exactly that), and every `heartbeat` otherwise.
pub fn acknowledge(
    mut acker: Acker,
    progress: Arc<StandbyProgress>,
    marks: Arc<Watermarks>,
    durable_waiter: ringex_journal::DurableWaiter,
    applied: Arc<AtomicU64>,
    heartbeat: Duration,
    stop: Arc<AtomicBool>,
) -> Result<(), String> {
    let mut last = (0u64, 0u64);
    let mut sent_at = Instant::now() - heartbeat;
    // Ends when the connection or the node does; each pass waits at most 1 ms.
    while !stop.load(Ordering::Relaxed) {
        let received = progress.received.load(Ordering::Acquire);
        let durable = marks.durable().min(received);
        let changed = (received, durable) != last;
        if changed || sent_at.elapsed() >= heartbeat {
            acker.ack(
                received,
                durable,
                applied.load(Ordering::Relaxed),
                progress.primary_time_ns.load(Ordering::Relaxed),
            )?;
            last = (received, durable);
            sent_at = Instant::now();
        }
        // Woken by the sync round that makes the next record durable; received-only
        // progress is reported within the millisecond. A journal durable past `received`
        // waits for the follower to publish its batch, a moment away. A failed journal
        // stops the node, which ends this loop through `stop`.
        let journal_durable = marks.durable();
        if journal_durable > received {
            std::thread::sleep(Duration::from_micros(50));
        } else if durable_waiter
            .wait(journal_durable + 1, Duration::from_millis(1))
            .is_err()
        {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    acker.close();
    Ok(())
}

impl Node {
    /// Standby: publishes a primary's frame to be journaled byte for byte, its command
    /// to be applied. The frame must be a command record or an epoch record.
    pub fn submit_replica(&mut self, frame: &[u8]) -> Result<(), NodeError> {
        let bad = |why: String| NodeError::Refused(format!("replicated frame: {why}"));
        if frame.len() > super::slots::REPLICA_FRAME_MAX || frame.len() < 48 {
            return Err(bad(format!("{} bytes", frame.len())));
        }
        let h = ringex_journal::frame_header(frame).map_err(bad)?;
        let payload = &frame[48..48 + h.payload_len as usize];
        let record = decode_any_record(h.seq, h.record_type, h.schema_version, payload)?;
        let mut aux = [0u64; 4];
        let (kind, command, tag) = match record {
            Record::Command(cmd) => (super::slots::SlotKind::Replica, cmd, 0),
            Record::Epoch { epoch, .. } => (
                super::slots::SlotKind::ReplicaEpoch,
                super::FILLER,
                u64::from(epoch),
            ),
            Record::Checkpoint { seq, every, hash } => {
                aux = [seq, every, hash as u64, (hash >> 64) as u64];
                (super::slots::SlotKind::ReplicaCheckpoint, super::FILLER, 0)
            }
        };
        self.publish_frame(kind, command, tag, frame, aux)
    }
}
