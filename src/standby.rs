//! A standby node: it follows its primary's journal and applies it with the same
//! pipeline, publishing nothing, until it is stopped or promoted.
//!
//! Before its own journal opens, it reads where that journal ends and asks the primary
//! where to follow from (the handshake steps back through its segments' starts until the
//! prefixes match). Records the primary does not have (a demoted primary's unreplicated
//! suffix, or anything after a divergence) go to `journal/quarantine/` before the node
//! starts; a standby behind the primary's oldest segment installs the primary's snapshot
//! and starts its journal after it. A broken connection is reopened, from where the
//! standby's journal ends, with a pause between attempts.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ringex_journal::{Verify, QUARANTINE_DIR_NAME};
use ringex_replicator::standby::{Connection, JournalEnd, StandbyConfig, Start};

use crate::config::Config;
use crate::node::replication::{acknowledge, follow, StandbyProgress};
use crate::node::{CountingSink, Node, OutputMode, StartOptions};

/// Pause between connection attempts to the primary.
const RECONNECT_PAUSE: Duration = Duration::from_millis(200);

/// How a standby run ended.
pub enum StandbyEnd {
    /// `stop` was set: the node was shut down.
    Stopped,
    /// Promoted: the node journaled `epoch` at `seq` and is ready to take orders.
    Promoted {
        node: Box<Node>,
        epoch: u32,
        seq: u64,
    },
}

/// Where the standby's journal in `dir` ends, read without opening it: its identity,
/// epoch, last record and chain, and each segment's start as an anchor.
pub fn journal_end(dir: &Path) -> Result<JournalEnd, String> {
    let text = |e: ringex_journal::Error| e.to_string();
    let Some(_) = ringex_journal::first_sequence(dir).map_err(text)? else {
        return Ok(JournalEnd::default());
    };
    let report = ringex_journal::verify(dir, Verify::Tail).map_err(text)?;
    let described = ringex_journal::describe(dir).map_err(text)?;
    let journal_id = described
        .segments
        .iter()
        .find_map(|s| s.journal_id)
        .unwrap_or(0);
    let mut end = JournalEnd {
        journal_id,
        epoch: described
            .segments
            .iter()
            .filter_map(|s| s.epoch)
            .max()
            .unwrap_or(0),
        seq_last: report.seq_last,
        chain_last: 0,
        anchors: Vec::new(),
    };
    if report.seq_last > 0 {
        let (chain, epoch) = ringex_journal::record_chain_epoch(dir, report.seq_last)
            .map_err(text)?
            .ok_or("the journal's last record cannot be read")?;
        end.chain_last = chain;
        end.epoch = end.epoch.max(epoch);
    }
    for s in &described.segments {
        if let Ok(Some(chain)) = ringex_journal::chain_after(dir, s.base_seq - 1) {
            end.anchors.push((s.base_seq - 1, chain));
        }
    }
    Ok(end)
}

/// Moves every segment and snapshot of the node's data directory into the journal's
/// quarantine: the standby installs its primary's snapshot instead.
fn quarantine_all(data_dir: &Path, why: &str) -> Result<(), String> {
    let journal = data_dir.join("journal");
    let folder = journal
        .join(QUARANTINE_DIR_NAME)
        .join(format!("replaced-{}", std::process::id()));
    std::fs::create_dir_all(&folder).map_err(|e| format!("create {}: {e}", folder.display()))?;
    for dir in [&journal, &data_dir.join("snapshots")] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let n = name.to_string_lossy();
            if n.ends_with(".seg") || n.ends_with(".snap") || n == "next.seg.spare" {
                std::fs::rename(e.path(), folder.join(&name))
                    .map_err(|err| format!("move {}: {err}", e.path().display()))?;
            }
        }
    }
    std::fs::write(folder.join("NOTE.txt"), format!("{why}\n"))
        .map_err(|e| format!("write {}: {e}", folder.display()))
}

fn config_of(config: &Config) -> Result<StandbyConfig, String> {
    Ok(StandbyConfig {
        primary: config
            .replication
            .primary
            .parse()
            .map_err(|e| format!("replication.primary: {e}"))?,
        node_id: u64::from(config.node.id),
        silence_max: Duration::from_millis(config.replication.silence_max_ms),
    })
}

/// Connects (retrying until `stop`) and settles the handshake.
fn connect(
    config: &StandbyConfig,
    end: &JournalEnd,
    until: &dyn Fn() -> bool,
    log: &dyn Fn(String),
) -> Option<(Connection, Start)> {
    let mut said = None::<String>;
    // Until connected or told to end; each attempt is bounded by the connect timeout.
    while !until() {
        match Connection::open(config, end) {
            Ok(c) => return Some(c),
            Err(why) => {
                if said.as_deref() != Some(why.as_str()) {
                    log(format!("standby: {why}; retrying"));
                    said = Some(why);
                }
                std::thread::sleep(RECONNECT_PAUSE);
            }
        }
    }
    None
}

/// Runs a standby until `stop` (then shuts it down) or `promote` (then promotes it).
/// `log` gets the lines an operator needs.
pub fn run(
    config: &Config,
    stop: Arc<AtomicBool>,
    promote: Arc<AtomicBool>,
    log: Arc<dyn Fn(String) + Send + Sync>,
) -> Result<StandbyEnd, String> {
    let sconfig = config_of(config)?;
    let data_dir = &config.node.data_dir;
    let journal_dir = data_dir.join("journal");
    std::fs::create_dir_all(&journal_dir)
        .map_err(|e| format!("create {}: {e}", journal_dir.display()))?;
    let end = journal_end(&journal_dir)?;
    let until = || stop.load(Ordering::Relaxed) || promote.load(Ordering::Relaxed);
    let Some((mut conn, start)) = connect(&sconfig, &end, &until, &*log) else {
        return Ok(StandbyEnd::Stopped);
    };
    let mut options = StartOptions::default();
    match start {
        Start::Follow {
            seq_from,
            cut,
            journal_id,
            ..
        } => {
            if let Some(cut) = cut {
                let first = ringex_journal::first_sequence(&journal_dir)
                    .map_err(|e| e.to_string())?
                    .unwrap_or(1);
                let why = format!("standby: records from {cut} on are not the primary's");
                if cut <= first {
                    // Nothing of this journal is the primary's: all of it goes.
                    quarantine_all(data_dir, &why)?;
                    log(format!("{why}: the whole journal moved to the quarantine"));
                } else {
                    let snapshots = data_dir.join("snapshots");
                    let r = ringex_journal::repair_truncate(&journal_dir, cut, Some(&snapshots))
                        .map_err(|e| e.to_string())?;
                    log(format!("{why}: moved to {}", r.quarantine.display()));
                }
            }
            options.journal_id = Some(journal_id);
            log(format!(
                "standby: following the primary from sequence {seq_from}"
            ));
        }
        Start::Snapshot {
            seq,
            chain,
            snapshot_epoch,
            state_hash,
            bytes,
            journal_id,
            ..
        } => {
            quarantine_all(
                data_dir,
                &format!(
                    "The primary no longer held this standby's next record: its snapshot at \
                     sequence {seq} replaced this journal and these snapshots."
                ),
            )?;
            let store = ringex_journal::SnapshotStore::open(
                data_dir.join("snapshots"),
                config.snapshot.keep,
            )
            .map_err(|e| e.to_string())?;
            store
                .write(
                    seq,
                    snapshot_epoch,
                    chain,
                    &state_hash.to_le_bytes(),
                    &bytes,
                )
                .map_err(|e| e.to_string())?;
            options.journal_id = Some(journal_id);
            options.start_after = Some((seq, chain));
            log(format!(
                "standby: installed the primary's snapshot at sequence {seq}; following from {}",
                seq + 1
            ));
        }
    }
    let mut node = Node::start_with(config, OutputMode::Sink(Box::new(CountingSink)), options)
        .map_err(|e| e.to_string())?;
    let marks = node.journal_watermarks();
    let applied = node.applied_seq();
    let heartbeat = Duration::from_millis(config.replication.heartbeat_ms);
    // Followed until stopped or promoted; reconnects as the connection breaks.
    let mut reconnect = false;
    loop {
        if reconnect {
            let (seq_last, chain_last) = node.journal_end().map_err(|e| e.to_string())?;
            let end = JournalEnd {
                journal_id: node.journal_id(),
                epoch: node.epoch(),
                seq_last,
                chain_last,
                anchors: Vec::new(),
            };
            match connect(&sconfig, &end, &until, &*log) {
                Some((c, Start::Follow { cut: None, .. })) => conn = c,
                Some((_, other)) => {
                    node.shutdown().map_err(|e| e.to_string())?;
                    let what = match other {
                        Start::Follow { cut: Some(cut), .. } => {
                            format!("this journal's records from {cut} on are not the primary's")
                        }
                        Start::Follow { .. } => "the primary's history moved".to_string(),
                        Start::Snapshot { seq, .. } => format!(
                            "the primary no longer holds this journal's next record and \
                             offers its snapshot at sequence {seq}"
                        ),
                    };
                    return Err(format!(
                        "standby: the primary no longer matches this journal ({what}); \
                         restart the standby to reconcile"
                    ));
                }
                None => {}
            }
        }
        let progress = Arc::new(StandbyProgress::default());
        let ended = Arc::new(AtomicBool::new(false));
        let acker = {
            let acker = conn.acker()?;
            let (progress, marks, applied, ended) = (
                progress.clone(),
                marks.clone(),
                applied.clone(),
                ended.clone(),
            );
            std::thread::Builder::new()
                .name("ringex-standby-acks".into())
                .spawn(move || acknowledge(acker, progress, marks, applied, heartbeat, ended))
                .map_err(|e| e.to_string())?
        };
        let result = follow(&mut node, &mut conn, &progress, &until);
        ended.store(true, Ordering::Relaxed);
        conn.close();
        let _ = acker.join();
        if let Some(why) = node.failure() {
            return Err(format!("standby stopped: {why}"));
        }
        if promote.load(Ordering::Relaxed) {
            let (seq_last, _) = node.journal_end().map_err(|e| e.to_string())?;
            let epoch = node.epoch() + 1;
            let seq = node.promote(epoch).map_err(|e| e.to_string())?;
            log(format!(
                "standby: PROMOTED to primary at epoch {epoch} after sequence {seq_last} (the \
                 epoch record is sequence {seq})"
            ));
            return Ok(StandbyEnd::Promoted {
                node: Box::new(node),
                epoch,
                seq,
            });
        }
        if stop.load(Ordering::Relaxed) {
            node.shutdown().map_err(|e| e.to_string())?;
            return Ok(StandbyEnd::Stopped);
        }
        if let Err(why) = result {
            log(format!("standby: the stream ended: {why}; reconnecting"));
        }
        reconnect = true;
    }
}
