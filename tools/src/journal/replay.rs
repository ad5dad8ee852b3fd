//! The engine's state at a sequence and its events over a range, rebuilt offline: from the
//! nearest usable snapshot before the range (or from the journal's first record), then
//! the journal's records through the engine, as the node does on a start. Deterministic,
//! so the events are those the node produced.

use std::path::Path;

use ringex_engine::{Event, Exchange};
use ringex_journal::{snapshot_list, Reader};

use super::format::{decode, Body};
use super::{snapshots_dir, Progress};

/// The state a replay starts from.
pub struct Start {
    pub exchange: Exchange,
    /// The sequence the state is after (0: empty).
    pub seq: u64,
    /// The snapshot it came from, if any.
    pub snapshot: Option<u64>,
}

/// The newest state at a sequence before `seq_before` that `accept` takes, from the
/// snapshots beside the journal (each checked: it decodes, restores, matches its state
/// hash) or from an empty engine when the journal starts at sequence 1. Damaged snapshots
/// are passed over (the next older one, or the journal's start, serves).
pub fn start_before(
    journal: &Path,
    seq_before: u64,
    accept: impl Fn(&Exchange) -> bool,
) -> Result<Start, String> {
    let seq_first = ringex_journal::first_sequence(journal)
        .map_err(|e| e.to_string())?
        .unwrap_or(1);
    if let Some(dir) = snapshots_dir(journal) {
        let entries = snapshot_list(&dir).map_err(|e| e.to_string())?;
        for entry in entries.into_iter().rev() {
            let Ok(meta) = entry.meta else { continue };
            if meta.seq >= seq_before || meta.seq + 1 < seq_first {
                continue;
            }
            let Ok(exchange) = restore(&entry.path, &meta) else {
                continue;
            };
            if accept(&exchange) {
                return Ok(Start {
                    exchange,
                    seq: meta.seq,
                    snapshot: Some(meta.seq),
                });
            }
        }
    }
    if seq_first <= 1 {
        return Ok(Start {
            exchange: Exchange::new(),
            seq: 0,
            snapshot: None,
        });
    }
    // Where the earliest answer starts: the oldest snapshot that restores and that the
    // journal continues (only looked for here, when the question reaches before it).
    let oldest_usable = snapshots_dir(journal).and_then(|dir| {
        snapshot_list(&dir).ok()?.into_iter().find_map(|entry| {
            let meta = entry.meta.ok()?;
            (meta.seq + 1 >= seq_first && restore(&entry.path, &meta).is_ok()).then_some(meta.seq)
        })
    });
    let later = match oldest_usable {
        Some(seq) => format!(
            "the oldest usable snapshot is at sequence {seq}, so answers start after it \
             (--from-seq {})",
            seq + 1
        ),
        None => "no snapshot beside it restores and joins the journal".to_string(),
    };
    Err(format!(
        "the journal's records start at sequence {seq_first} (earlier ones were pruned) and \
         what is asked reaches before the state a replay can start from: {later}; ask \
         about later sequences, or point --dir at a data directory whose snapshots/ holds \
         an older snapshot"
    ))
}

/// A snapshot file restored into an engine, checked against its recorded state hash.
pub fn restore(path: &Path, meta: &ringex_journal::SnapshotMeta) -> Result<Exchange, String> {
    let bytes = ringex_journal::read_regular(path).map_err(|e| format!("read: {e}"))?;
    let payload_at = bytes.len().saturating_sub(meta.payload_size_bytes as usize);
    let exchange = Exchange::restore(&bytes[payload_at..]).map_err(|e| e.to_string())?;
    if meta.state_hash != exchange.state_hash().to_le_bytes() {
        return Err("the restored state's hash differs from the one recorded".into());
    }
    Ok(exchange)
}

/// One record met by [`run`].
pub struct Step<'a> {
    pub seq: u64,
    pub timestamp_ns: u64,
    pub epoch: u32,
    pub body: Body,
    /// The command's events (empty for other records).
    pub events: &'a [Event],
}

/// Applies the journal's records after `start` through `to` (inclusive; the journal's end
/// when None), calling `each` for every record; `each` returns false to stop. Returns the
/// last sequence applied. A record that does not decode is an error: the state after it
/// would not be the node's.
pub fn run(
    journal: &Path,
    start: &mut Start,
    to: Option<u64>,
    what: &str,
    mut each: impl FnMut(&Exchange, Step<'_>) -> Result<bool, String>,
) -> Result<u64, String> {
    let from = start.seq + 1;
    let mut reader = Reader::open(journal).map_err(|e| e.to_string())?;
    match reader.seek(from) {
        Ok(()) => {}
        // The journal ends at the start's sequence: nothing to apply.
        Err(ringex_journal::Error::SequenceUnavailable { seq_last, .. }) if seq_last < from => {
            return Ok(start.seq)
        }
        Err(e) => return Err(e.to_string()),
    }
    let end = match to {
        Some(t) => t,
        None => super::seq_bounds(journal)?.1,
    };
    let progress = Progress::new(what, from, end);
    let mut events: Vec<Event> = Vec::with_capacity(64);
    let mut seq_last = start.seq;
    // Stops before reading past `to`: damage after the range is not the range's.
    loop {
        if to.is_some_and(|t| reader.seq_next() > t) {
            break;
        }
        let Some(r) = reader.next().map_err(|e| e.to_string())? else {
            break;
        };
        progress.at(r.seq);
        let body = decode(r.record_type, r.schema_version, r.payload);
        events.clear();
        match body {
            Body::Command(cmd) => start.exchange.apply(&cmd, &mut events),
            Body::Undecodable(why) => {
                return Err(format!(
                    "record {} cannot be replayed: {why}; inspect it with `ringex journal \
                     dump --from {} --dir {}`",
                    r.seq,
                    r.seq,
                    journal.display()
                ))
            }
            Body::Epoch { .. } | Body::Checkpoint { .. } => {}
        }
        seq_last = r.seq;
        let step = Step {
            seq: r.seq,
            timestamp_ns: r.timestamp_ns,
            epoch: r.epoch,
            body,
            events: &events,
        };
        if !each(&start.exchange, step)? {
            start.seq = seq_last;
            return Ok(seq_last);
        }
    }
    if to.is_none_or(|t| reader.seq_next() <= t) {
        super::check_end(journal, reader.seq_next())?;
    }
    start.seq = seq_last;
    Ok(seq_last)
}
