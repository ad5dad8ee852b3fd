//! Startup: open the journal (which cuts a torn tail), load the newest valid snapshot,
//! replay the journal after it, and say what happened.

use std::fmt;
use std::path::{Path, PathBuf};

use ringex_engine::codec::{decode_command, CODEC_VERSION};
use ringex_engine::exchange::OpenOrderLimits;
use ringex_engine::{Event, Exchange, MarketId};
use ringex_journal::{Journal, Reader, RecoveryReport, SnapshotStore, Truncation};

use super::{NodeError, RECORD_CHECKPOINT, RECORD_COMMAND, RECORD_EPOCH};

/// What recovery did, for the log and for tests.
#[derive(Debug, Clone)]
pub struct RecoveryLog {
    /// Sequence of the snapshot the state was loaded from (None: started empty).
    pub snapshot_seq: Option<u64>,
    /// Newer snapshots that were damaged and skipped, with why.
    pub snapshots_skipped: Vec<(PathBuf, String)>,
    /// Journal records applied after the snapshot.
    pub records_replayed: u64,
    /// Last journal sequence, and so of the state, after recovery.
    pub seq_last: u64,
    /// The torn tail the journal cut on open, if any.
    pub truncation: Option<Truncation>,
    pub journal: RecoveryReport,
    pub state_hash: u128,
    /// Open-order caps of every market in the recovered state, ascending by market.
    pub market_limits: Vec<(MarketId, OpenOrderLimits)>,
}

impl fmt::Display for RecoveryLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.snapshot_seq {
            Some(seq) => write!(f, "loaded snapshot at seq {seq}")?,
            None => write!(f, "no snapshot, started empty")?,
        }
        for (path, why) in &self.snapshots_skipped {
            write!(f, "; skipped damaged snapshot {} ({why})", path.display())?;
        }
        write!(
            f,
            "; replayed {} journal records; state at seq {}",
            self.records_replayed, self.seq_last
        )?;
        match &self.truncation {
            Some(t) => write!(f, "; cut a torn journal tail: {t}")?,
            None => write!(f, "; journal tail intact")?,
        }
        write!(f, "; state hash {:032x}", self.state_hash)
    }
}

/// A journal record as the node writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record {
    /// An engine command: applied.
    Command(ringex_engine::Command),
    /// A promotion: from this record on, `node_id` is primary at `epoch`. Nothing to apply.
    Epoch { epoch: u32, node_id: u32 },
    /// The primary's state hash after sequence `seq` (it journals one every `every`
    /// commands): whoever replays the journal compares its own.
    Checkpoint { seq: u64, every: u64, hash: u128 },
}

/// Payload of a checkpoint record: sequence, interval, state hash, little-endian.
pub fn encode_checkpoint_record(seq: u64, every: u64, hash: u128) -> [u8; 32] {
    let mut b = [0u8; 32];
    b[..8].copy_from_slice(&seq.to_le_bytes());
    b[8..16].copy_from_slice(&every.to_le_bytes());
    b[16..].copy_from_slice(&hash.to_le_bytes());
    b
}

/// Divergence checks: the state hash after every `every`-th sequence, kept for a while,
/// compared with the primary's checkpoint records as they come.
#[derive(Debug, Default)]
pub struct Checkpoints {
    /// 0: not known yet (a replay takes it from the first checkpoint record).
    pub every: u64,
    recent: std::collections::VecDeque<(u64, u128)>,
}

/// Hashes kept for comparison: checkpoint records follow their sequence closely.
const CHECKPOINTS_KEPT: usize = 8;

impl Checkpoints {
    pub fn new(every: u64) -> Checkpoints {
        Checkpoints {
            every,
            recent: std::collections::VecDeque::with_capacity(CHECKPOINTS_KEPT),
        }
    }

    /// After a command at `seq`: its state hash when `seq` is a checkpoint.
    pub fn after_apply(&mut self, seq: u64, exchange: &Exchange) -> Option<u128> {
        if self.every == 0 || !seq.is_multiple_of(self.every) {
            return None;
        }
        let hash = exchange.state_hash();
        if self.recent.len() == CHECKPOINTS_KEPT {
            self.recent.pop_front();
        }
        self.recent.push_back((seq, hash));
        Some(hash)
    }

    /// A checkpoint record: Err with what differs when this node's own hash at `seq`
    /// is not the primary's. Nothing to compare (not computed here) passes.
    pub fn check(&mut self, seq: u64, every: u64, hash: u128) -> Result<bool, String> {
        if self.every == 0 {
            self.every = every;
        }
        match self.recent.iter().find(|(s, _)| *s == seq) {
            Some(&(_, own)) if own != hash => Err(format!(
                "DIVERGED: the state hash after sequence {seq} is {own:032x} here but \
                 {hash:032x} on the primary"
            )),
            Some(_) => Ok(true),
            None => Ok(false),
        }
    }
}

/// Payload of an epoch record: the new epoch and the promoted node, little-endian.
pub fn encode_epoch_record(epoch: u32, node_id: u32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&epoch.to_le_bytes());
    b[4..].copy_from_slice(&node_id.to_le_bytes());
    b
}

/// Decodes one journal record, checking type and schema.
pub fn decode_any_record(
    seq: u64,
    record_type: u16,
    schema_version: u16,
    payload: &[u8],
) -> Result<Record, NodeError> {
    let bad = |why: String| NodeError::Replay { seq, reason: why };
    match record_type {
        RECORD_COMMAND => {
            if schema_version != u16::from(CODEC_VERSION) {
                return Err(bad(format!("unsupported schema version {schema_version}")));
            }
            let (cmd, used) = decode_command(payload).map_err(|e| bad(e.to_string()))?;
            if used != payload.len() {
                return Err(bad(format!("{} trailing bytes", payload.len() - used)));
            }
            Ok(Record::Command(cmd))
        }
        RECORD_CHECKPOINT => {
            if schema_version != 1 || payload.len() != 32 {
                return Err(bad("malformed checkpoint record".into()));
            }
            Ok(Record::Checkpoint {
                seq: u64::from_le_bytes(payload[..8].try_into().expect("8 bytes")),
                every: u64::from_le_bytes(payload[8..16].try_into().expect("8 bytes")),
                hash: u128::from_le_bytes(payload[16..].try_into().expect("16 bytes")),
            })
        }
        RECORD_EPOCH => {
            if schema_version != 1 || payload.len() != 8 {
                return Err(bad("malformed epoch record".into()));
            }
            Ok(Record::Epoch {
                epoch: u32::from_le_bytes(payload[..4].try_into().expect("4 bytes")),
                node_id: u32::from_le_bytes(payload[4..].try_into().expect("4 bytes")),
            })
        }
        other => Err(bad(format!("unknown record type {other}"))),
    }
}

/// Decodes one journal record that must be a command.
pub fn decode_record(
    seq: u64,
    record_type: u16,
    schema_version: u16,
    payload: &[u8],
) -> Result<ringex_engine::Command, NodeError> {
    match decode_any_record(seq, record_type, schema_version, payload)? {
        Record::Command(cmd) => Ok(cmd),
        other => Err(NodeError::Replay {
            seq,
            reason: match other {
                Record::Epoch { epoch, node_id } => {
                    format!("not a command: a promotion of node {node_id} to epoch {epoch}")
                }
                Record::Checkpoint { seq, .. } => {
                    format!("not a command: a checkpoint of the state after {seq}")
                }
                Record::Command(_) => unreachable!("matched above"),
            },
        }),
    }
}

/// Applies journal records `from..=to` (to the journal's end when `to` is `None`) to
/// `exchange`, handing each command's events to `each`. Returns (records applied, last
/// sequence). Recovery and `ringex journal replay` both replay through here.
pub fn apply_records(
    reader: &mut Reader,
    exchange: &mut Exchange,
    from: u64,
    to: Option<u64>,
    mut each: impl FnMut(&[Event]),
) -> Result<(u64, u64), NodeError> {
    reader.seek(from).map_err(NodeError::Journal)?;
    // A record that cannot be replayed names the command that shows the journal around it.
    let inspect = format!(
        "inspect with `{} {}`",
        ringex_journal::VERIFY_COMMAND,
        reader.dir().display()
    );
    let replay_error = |seq: u64, reason: String| NodeError::Replay {
        seq,
        reason: format!("{reason} ({inspect})"),
    };
    let mut events: Vec<Event> = Vec::with_capacity(64);
    // The journal's checkpoint records check the replay as they come.
    let mut checkpoints = Checkpoints::new(0);
    let (mut applied, mut seq_last) = (0u64, from - 1);
    // Bounded by `to`, or by the journal's length (the reader returns None at its end).
    for expected in from..=to.unwrap_or(u64::MAX) {
        let Some(r) = reader.next().map_err(NodeError::Journal)? else {
            if let Some(to) = to {
                let why = format!("journal ended before its last sequence {to}");
                return Err(replay_error(expected, why));
            }
            break;
        };
        assert_eq!(
            r.seq, expected,
            "the journal reader returns dense sequences"
        );
        let record =
            decode_any_record(r.seq, r.record_type, r.schema_version, r.payload).map_err(|e| {
                match e {
                    NodeError::Replay { seq, reason } => replay_error(seq, reason),
                    other => other,
                }
            })?;
        match record {
            Record::Command(cmd) => {
                events.clear();
                exchange.apply(&cmd, &mut events);
                each(&events);
                checkpoints.after_apply(r.seq, exchange);
            }
            Record::Checkpoint { seq, every, hash } => {
                checkpoints
                    .check(seq, every, hash)
                    .map_err(|why| replay_error(r.seq, why))?;
            }
            Record::Epoch { .. } => {}
        }
        applied += 1;
        seq_last = r.seq;
    }
    Ok((applied, seq_last))
}

/// The journal's chain value after `seq`: the next record's `chain_prev`, or the writer's
/// chain when `seq` is the last record. None when the journal cannot tell (no record after
/// `seq` to read).
fn journal_chain_after(journal: &Journal, journal_dir: &Path, seq: u64) -> Option<u64> {
    if seq + 1 == journal.seq_next() {
        return Some(journal.chain());
    }
    let mut reader = Reader::open(journal_dir).ok()?;
    reader.seek(seq + 1).ok()?;
    let r = reader.next().ok()??;
    (r.seq == seq + 1).then_some(r.chain_prev)
}

/// The newest snapshot that passes its checksums, restores into a state that passes every
/// invariant, matches its recorded state hash and was taken from this journal's history
/// (its chain value is the journal's at its sequence). Older ones are tried in turn; each
/// one skipped is reported with why. A usable snapshot ahead of the journal is an error:
/// the journal lost durable commands.
#[allow(clippy::type_complexity)]
fn load_snapshot(
    snapshots: &SnapshotStore,
    journal: &Journal,
    journal_dir: &Path,
) -> Result<(Exchange, Option<u64>, Vec<(PathBuf, String)>), NodeError> {
    let seq_last = journal.seq_next() - 1;
    let mut skipped = Vec::new();
    let entries = snapshots.list().map_err(NodeError::Journal)?;
    for entry in entries.into_iter().rev() {
        let meta = match entry.meta {
            Ok(m) => m,
            Err(why) => {
                skipped.push((entry.path, why));
                continue;
            }
        };
        let bytes = match ringex_journal::read_regular(&entry.path) {
            Ok(b) => b,
            Err(e) => {
                skipped.push((entry.path, format!("read: {e}")));
                continue;
            }
        };
        let payload_at = bytes.len().saturating_sub(meta.payload_size_bytes as usize);
        let exchange = match Exchange::restore(&bytes[payload_at..]) {
            Ok(ex) => ex,
            Err(e) => {
                skipped.push((entry.path, e.to_string()));
                continue;
            }
        };
        if meta.state_hash != exchange.state_hash().to_le_bytes() {
            let why = "restored state does not match the snapshot's state hash";
            skipped.push((entry.path, why.into()));
            continue;
        }
        if meta.seq > seq_last {
            // Snapshots are written only once their commands are durable: the journal
            // lost durable (acknowledged) commands. Starting from an older state would
            // roll them back without a word; the operator decides.
            return Err(NodeError::Snapshot {
                reason: format!(
                    "is at seq {} but the journal ends at {seq_last}: the journal lost \
                     commands it had made durable (damaged or truncated segments). Refusing \
                     to start rather than roll them back. Restore the journal from a backup; \
                     or, to start from the journal alone and lose commands {}..={}, move \
                     this snapshot (and any newer) out of the snapshots directory",
                    meta.seq,
                    seq_last + 1,
                    meta.seq
                ),
                path: entry.path,
            });
        }
        if journal_chain_after(journal, journal_dir, meta.seq) != Some(meta.chain) {
            let why = format!(
                "snapshot at seq {} was taken from another history: its chain value differs \
                 from the journal's at that sequence",
                meta.seq
            );
            skipped.push((entry.path, why));
            continue;
        }
        return Ok((exchange, Some(meta.seq), skipped));
    }
    Ok((Exchange::new(), None, skipped))
}

/// Loads the newest usable snapshot and replays the journal after it into an exchange.
pub fn recover(
    journal: &Journal,
    snapshots: &SnapshotStore,
    journal_dir: &Path,
) -> Result<(Exchange, RecoveryLog), NodeError> {
    let report = journal.recovery_report().clone();
    let seq_last = journal.seq_next() - 1;
    let (mut exchange, snapshot_seq, skipped) = load_snapshot(snapshots, journal, journal_dir)?;
    let from = snapshot_seq.unwrap_or(0) + 1;
    let mut replayed = 0u64;
    if from <= seq_last {
        let mut reader = Reader::open(journal_dir).map_err(NodeError::Journal)?;
        (replayed, _) = apply_records(&mut reader, &mut exchange, from, Some(seq_last), |_| {})?;
    }
    let state_hash = exchange.state_hash();
    let market_limits = exchange
        .market_ids()
        .filter_map(|id| exchange.market(id).map(|m| (id, m.limits)))
        .collect();
    let log = RecoveryLog {
        market_limits,
        snapshot_seq,
        snapshots_skipped: skipped,
        records_replayed: replayed,
        seq_last,
        truncation: report.truncation.clone(),
        journal: report,
        state_hash,
    };
    Ok((exchange, log))
}
