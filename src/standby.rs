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
//!
//! `ringex start` runs a standby with [`serve`]: beside the follower, its admin listener
//! takes admin logins (keys looked up in the standby's own engine, through the [`Desk`])
//! and `Promote`, and refuses everything else. Promoted, the follower journals the new
//! epoch and hands its node back; the same process then serves as the primary.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use ringex_journal::{Verify, QUARANTINE_DIR_NAME};
use ringex_replicator::standby::{Connection, JournalEnd, StandbyConfig, Start};

use crate::config::Config;
use crate::node::replication::{acknowledge, follow, StandbyProgress};
use crate::node::slots::OutputSlot;
use crate::node::{CountingSink, EventSink, Node, OutputMode, StartOptions, Waker};
use ringex_engine::{Command, Output, Query};
use ringex_gateway::backend::{Backend, BackendError, Delivery, Promotion};
use ringex_gateway::server::Gateway;

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
                // The pause ends early when told to end (a promotion waits on it).
                let resume_at = Instant::now() + RECONNECT_PAUSE;
                while !until() && Instant::now() < resume_at {
                    std::thread::sleep(Duration::from_millis(5));
                }
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
    run_with(config, stop, promote, log, None)
}

/// [`run`], sharing the node with a standby's admin listener through `desk` (when given):
/// key lookups for its logins, and the outcome of a promotion it asked for.
pub fn run_with(
    config: &Config,
    stop: Arc<AtomicBool>,
    promote: Arc<AtomicBool>,
    log: Arc<dyn Fn(String) + Send + Sync>,
    desk: Option<Arc<Desk>>,
) -> Result<StandbyEnd, String> {
    let result = follow_until_the_end(config, &stop, &promote, &*log, desk.as_ref());
    if let Some(desk) = desk {
        desk.finish(&result);
    }
    result
}

/// Locks the node slot (a panic elsewhere does not make the node unusable here).
fn lock(slot: &Mutex<Option<Node>>) -> std::sync::MutexGuard<'_, Option<Node>> {
    slot.lock().unwrap_or_else(|e| e.into_inner())
}

/// Takes the node out of its slot.
fn take(slot: &Mutex<Option<Node>>) -> Result<Node, String> {
    lock(slot)
        .take()
        .ok_or_else(|| "the standby's node is gone".to_string())
}

fn follow_until_the_end(
    config: &Config,
    stop: &AtomicBool,
    promote: &AtomicBool,
    log: &(dyn Fn(String) + Send + Sync),
    desk: Option<&Arc<Desk>>,
) -> Result<StandbyEnd, String> {
    let sconfig = config_of(config)?;
    let data_dir = &config.node.data_dir;
    let journal_dir = data_dir.join("journal");
    std::fs::create_dir_all(&journal_dir)
        .map_err(|e| format!("create {}: {e}", journal_dir.display()))?;
    let end = journal_end(&journal_dir)?;
    let until = || stop.load(Ordering::Relaxed) || promote.load(Ordering::Relaxed);
    let Some((mut conn, start)) = connect(&sconfig, &end, &until, log) else {
        if promote.load(Ordering::Relaxed) {
            return Err(
                "the standby never reached its primary, so it has no state of its \
                        own to promote here: stop it and run `ringex promote --offline`"
                    .into(),
            );
        }
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
    let sink: Box<dyn EventSink> = match desk {
        Some(desk) => Box::new(DeskSink(Arc::clone(desk))),
        None => Box::new(CountingSink),
    };
    let node =
        Node::start_with(config, OutputMode::Sink(sink), options).map_err(|e| e.to_string())?;
    let marks = node.journal_watermarks();
    let durable = node.durable_waiter();
    let applied = node.applied_seq();
    let local = Mutex::new(None);
    let slot: &Mutex<Option<Node>> = desk.map_or(&local, |d| &d.node);
    *lock(slot) = Some(node);
    let heartbeat = Duration::from_millis(config.replication.heartbeat_ms);
    // Followed until stopped or promoted; reconnects as the connection breaks.
    let mut reconnect = false;
    loop {
        if reconnect {
            let end = {
                let mut guard = lock(slot);
                let node = guard.as_mut().ok_or("the standby's node is gone")?;
                let (seq_last, chain_last) = node.journal_end().map_err(|e| e.to_string())?;
                JournalEnd {
                    journal_id: node.journal_id(),
                    epoch: node.epoch(),
                    seq_last,
                    chain_last,
                    anchors: Vec::new(),
                }
            };
            match connect(&sconfig, &end, &until, log) {
                Some((c, Start::Follow { cut: None, .. })) => conn = c,
                Some((_, other)) => {
                    take(slot)?.shutdown().map_err(|e| e.to_string())?;
                    let what = match other {
                        Start::Follow { cut: Some(cut), .. } => {
                            format!("its journal differs from this one's from sequence {cut} on")
                        }
                        Start::Follow { seq_from, .. } => {
                            format!("it streams from sequence {seq_from}")
                        }
                        Start::Snapshot { seq, .. } => format!(
                            "it no longer holds this journal's next record and sends its \
                             snapshot at sequence {seq}"
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
            let durable = durable.clone();
            std::thread::Builder::new()
                .name("ringex-standby-acks".into())
                .spawn(move || {
                    acknowledge(acker, progress, marks, durable, applied, heartbeat, ended)
                })
                .map_err(|e| e.to_string())?
        };
        let result = follow(slot, &mut conn, &progress, &until);
        ended.store(true, Ordering::Relaxed);
        conn.close();
        let _ = acker.join();
        if let Some(why) = lock(slot).as_ref().and_then(|n| n.failure()) {
            return Err(format!("standby stopped: {why}"));
        }
        if promote.load(Ordering::Relaxed) {
            let mut node = take(slot)?;
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
            take(slot)?.shutdown().map_err(|e| e.to_string())?;
            return Ok(StandbyEnd::Stopped);
        }
        if let Err(why) = result {
            log(format!("standby: the stream ended: {why}; reconnecting"));
        }
        reconnect = true;
    }
}

/// The longest a `Promote` waits for the standby to promote itself (it stops following
/// within 50 ms, then syncs its journal and the epoch record).
const PROMOTE_WAIT_MAX: Duration = Duration::from_secs(60);

/// What a running standby shares with its admin listener: the node, once the handshake
/// has given it one (the listener's logins look keys up in it, so a key revoked on the
/// primary is revoked here too), the engine's answers to those lookups, and a promotion
/// the listener asks for.
pub struct Desk {
    node: Mutex<Option<Node>>,
    replies: Mutex<VecDeque<Delivery>>,
    wake: Mutex<Option<Waker>>,
    promote: Arc<AtomicBool>,
    /// Set once the standby run has ended: promoted (with what `Promote` answers), or
    /// stopped or failed (why).
    outcome: Mutex<Option<Result<Promotion, String>>>,
    outcome_set: Condvar,
    /// Set when the admin listener should stop: the run ended, however.
    ended: Arc<AtomicBool>,
    node_id: u32,
}

impl Desk {
    pub fn new(node_id: u32) -> Arc<Desk> {
        Arc::new(Desk {
            node: Mutex::new(None),
            replies: Mutex::new(VecDeque::new()),
            wake: Mutex::new(None),
            promote: Arc::new(AtomicBool::new(false)),
            outcome: Mutex::new(None),
            outcome_set: Condvar::new(),
            ended: Arc::new(AtomicBool::new(false)),
            node_id,
        })
    }

    /// The flag a promotion sets (pass it to [`run_with`]).
    pub fn promote_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.promote)
    }

    /// Set once the standby run has ended: the admin listener's loop stops on it.
    pub fn ended_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.ended)
    }

    /// Called after each reply is queued (the admin listener's loop waker).
    pub fn set_waker(&self, wake: Waker) {
        *self.wake.lock().unwrap_or_else(|e| e.into_inner()) = Some(wake);
    }

    fn wake(&self) {
        if let Some(w) = self.wake.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            w();
        }
    }

    fn finish(&self, result: &Result<StandbyEnd, String>) {
        let outcome = match result {
            Ok(StandbyEnd::Promoted { epoch, seq, .. }) => Ok(Promotion {
                epoch_seq: *seq,
                epoch: *epoch,
                node_id: self.node_id,
            }),
            Ok(StandbyEnd::Stopped) => Err("the standby stopped".to_string()),
            Err(why) => Err(why.clone()),
        };
        *self.outcome.lock().unwrap_or_else(|e| e.into_inner()) = Some(outcome);
        self.outcome_set.notify_all();
        self.ended.store(true, Ordering::Release);
        self.wake();
    }

    /// Asks the standby to promote itself and waits for the outcome.
    fn promote(&self) -> Result<Promotion, String> {
        self.promote.store(true, Ordering::Release);
        let deadline = Instant::now() + PROMOTE_WAIT_MAX;
        let mut outcome = self.outcome.lock().unwrap_or_else(|e| e.into_inner());
        // Bounded by the deadline; each wait ends at it at the latest.
        while outcome.is_none() {
            let now = Instant::now();
            if now >= deadline {
                return Err("the promotion did not finish in time".into());
            }
            outcome = self
                .outcome_set
                .wait_timeout(outcome, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        outcome.clone().unwrap_or_else(|| Err("no outcome".into()))
    }
}

/// The standby node's output: replicated commands' events go nowhere (a standby publishes
/// nothing); the answers to the admin listener's key lookups go to it.
struct DeskSink(Arc<Desk>);

impl EventSink for DeskSink {
    fn on_event(&mut self, slot: &OutputSlot) {
        if !matches!(slot.item, Output::Reply(_)) {
            return;
        }
        self.0
            .replies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(Delivery {
                seq: slot.seq,
                tag: slot.tag,
                item: slot.item,
                last: slot.last,
                timestamp_ns: slot.timestamp_ns,
            });
        self.0.wake();
    }
}

/// The exchange as a standby's admin listener sees it: key lookups for logins, and
/// `Promote`. Everything else is refused: a standby takes no orders.
pub struct StandbyBackend {
    desk: Arc<Desk>,
}

impl StandbyBackend {
    pub fn new(desk: Arc<Desk>) -> StandbyBackend {
        StandbyBackend { desk }
    }
}

/// Why a standby refuses a request.
const NOT_PRIMARY: &str = "a standby takes no orders: it follows its primary until promoted";

impl Backend for StandbyBackend {
    fn submit(&mut self, _command: &Command, _tag: u64) -> Result<(), BackendError> {
        Err(BackendError::Unavailable(NOT_PRIMARY.into()))
    }

    fn query(&mut self, query: &Query, tag: u64) -> Result<(), BackendError> {
        if !matches!(query, Query::ApiKey { .. }) {
            return Err(BackendError::Unavailable(NOT_PRIMARY.into()));
        }
        let mut guard = lock(&self.desk.node);
        let Some(node) = guard.as_mut() else {
            return Err(BackendError::Unavailable(
                "the standby has not reached its primary yet".into(),
            ));
        };
        node.try_submit_query(query, tag)
            .map_err(|e| BackendError::Unavailable(e.to_string()))?;
        // The inline topology applies it now; the others as their stages run.
        node.flush_replicas();
        Ok(())
    }

    fn drain(&mut self, limit: usize, f: &mut dyn FnMut(&Delivery)) -> usize {
        let mut replies = self.desk.replies.lock().unwrap_or_else(|e| e.into_inner());
        let n = limit.min(replies.len());
        for d in replies.drain(..n) {
            f(&d);
        }
        n
    }

    fn want_wake(&self) {}

    fn outputs_available(&self) -> bool {
        !self
            .desk
            .replies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    fn promote(&mut self) -> Result<Promotion, BackendError> {
        self.desk.promote().map_err(BackendError::Unavailable)
    }
}

/// `ringex start` for a standby: follows the primary and serves the admin listener (admin
/// keys only: `Promote`) until `stop`, or until promoted; then, in the same process,
/// serves as the primary (client listeners, and a replication listener for a new
/// standby) until `stop`. `on_admin` gets the standby's admin address once it listens,
/// `on_ready` the primary's addresses once it takes orders.
pub fn serve(
    config: &Config,
    stop: Arc<AtomicBool>,
    on_admin: impl FnOnce(SocketAddr),
    on_ready: impl FnOnce(crate::serve::Listening),
) -> Result<(), String> {
    let gateway_config = crate::serve::gateway_config(config)?;
    let mut gateway =
        Gateway::bind_admin(gateway_config.clone()).map_err(|e| format!("cannot listen on {e}"))?;
    let admin = gateway.admin_addr().map_err(|e| e.to_string())?;
    let desk = Desk::new(config.node.id);
    let waker = gateway.waker();
    desk.set_waker(Arc::new(move || {
        let _ = waker.wake();
    }));
    tracing::info!(
        "standby of the primary at {}; admin listener on {admin} (`ringex promote` \
         makes this node the primary); SIGTERM or Ctrl-C stops",
        config.replication.primary
    );
    let thread = {
        let (config, stop, desk) = (config.clone(), Arc::clone(&stop), Arc::clone(&desk));
        let log: Arc<dyn Fn(String) + Send + Sync> =
            Arc::new(|line: String| tracing::info!(target: "ringex::standby", "{line}"));
        std::thread::Builder::new()
            .name("ringex-standby".into())
            .spawn(move || {
                let promote = desk.promote_flag();
                run_with(&config, stop, promote, log, Some(desk))
            })
            .map_err(|e| format!("cannot start the standby: {e}"))?
    };
    on_admin(admin);
    let served = {
        let mut backend = StandbyBackend::new(Arc::clone(&desk));
        gateway.run(&mut backend, &desk.ended_flag())
    };
    // The admin listener closes here; the primary's opens below.
    drop(gateway);
    if let Err(e) = &served {
        // Without its listener the standby could not be promoted: it stops too.
        tracing::error!("the standby's admin listener failed: {e}; stopping");
        stop.store(true, Ordering::Relaxed);
    }
    let ended = thread
        .join()
        .map_err(|_| "the standby thread panicked".to_string())?;
    let (node, epoch, seq) = match ended? {
        StandbyEnd::Stopped => {
            served.map_err(|e| format!("the standby's admin listener failed: {e}"))?;
            tracing::info!("standby stopped");
            return Ok(());
        }
        StandbyEnd::Promoted { node, epoch, seq } => (node, epoch, seq),
    };
    let started = Instant::now();
    // The standby's node published nothing; the primary's gateway drains its node
    // itself. Stopped with a snapshot, it starts again at once from it.
    let report = node
        .shutdown()
        .map_err(|e| format!("after the promotion: {e}"))?;
    let mut primary = config.clone();
    primary.node.role = crate::config::Role::Primary;
    tracing::warn!(
        "promoted: epoch {epoch} from sequence {seq} (state hash {:032x}); \
         starting as the primary ({} ms)",
        report.state_hash,
        started.elapsed().as_millis()
    );
    crate::serve::serve_with(
        &primary,
        stop,
        |l| {
            tracing::warn!(
                "PRIMARY at epoch {epoch}: taking orders {} ms after the epoch record \
                 was durable",
                started.elapsed().as_millis()
            );
            on_ready(l)
        },
        StartOptions {
            promoted: true,
            ..StartOptions::default()
        },
    )
}
