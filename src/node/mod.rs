//! The node: the LMAX pipeline around the engine.
//!
//! ```text
//! producer ──► input ring ──► journaler ─┐
//!                        └──► replicator ┴─► engine ──► output ring ──► publisher ──► sink
//! ```
//!
//! `split` runs one thread per stage; `fused` runs the journaler, (replicator) and engine
//! as one thread that journals a batch, makes it durable, applies it and emits its events.
//! `inline` has no rings and no pipeline thread: the owner's thread (the gateway's event
//! loop) runs the fused stage itself, a batch being what it submits between two polls.
//! The engine sees a command only after it is durable per the journal's mode, and the
//! sink hears of a command only after the engine applied it.

pub mod doorbell;
pub mod recovery;
pub mod replication;
pub mod slots;
pub mod stages;
pub mod wait;

use std::collections::VecDeque;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use disruptor::{
    build_single_producer, EventPoller, Polling, ProcessorSettings, Producer,
    SingleConsumerBarrier, SingleProducer, SingleProducerBarrier,
};
use ringex_engine::{Command, Query};
use ringex_journal::{Backend, Durability, Journal, SnapshotStore};

use crate::config::{
    Config, DurabilityMode, JournalBackend, ReplicationMode, Role, StandbyLossPolicy, Topology,
    WaitMode,
};
use crate::metrics::{bump, Metrics};
use doorbell::{Bell, StageWait};
pub use recovery::RecoveryLog;
use slots::{InputSlot, OutputSlot, SlotKind};
use stages::{EngineStage, FusedStage, JournalStage, Outlet, SnapshotJob, SnapshotPolicy};
use wait::retry_until;

/// Journal record type of an engine command (payload: the engine codec).
pub const RECORD_COMMAND: u16 = 1;
/// Journal record type of a promotion (payload: `recovery::encode_epoch_record`).
pub const RECORD_EPOCH: u16 = 2;
/// Journal record type of a primary's state hash (payload:
/// `recovery::encode_checkpoint_record`).
pub const RECORD_CHECKPOINT: u16 = 3;
/// Placeholders for the slot fields a slot kind does not use.
pub(crate) const FILLER: Command = Command::CancelAll {
    account: 0,
    market: None,
};
const NO_QUERY: Query = Query::ApiKey { key_id: 0 };
/// How long `submit` retries a full input ring before reporting backpressure.
const SUBMIT_WAIT_MAX: Duration = Duration::from_millis(200);
/// How long a control request (state hash, shutdown) may take.
const CONTROL_WAIT_MAX: Duration = Duration::from_secs(120);
/// Bytes of frames the replication tap holds for a standby that is a little behind.
const REPLICATION_TAP_BYTES: u64 = 16 << 20;
/// Snapshot jobs queued for the writer before the engine waits: bounds memory.
const SNAPSHOT_QUEUE_MAX: usize = 2;

/// Why the node cannot start or go on.
#[derive(Debug)]
pub enum NodeError {
    Io {
        context: String,
        source: std::io::Error,
    },
    Journal(ringex_journal::Error),
    Snapshot {
        path: PathBuf,
        reason: String,
    },
    /// A journal record that cannot be replayed.
    Replay {
        seq: u64,
        reason: String,
    },
    /// The node stopped taking input; says why.
    Refused(String),
    /// The input ring stayed full (the pipeline is behind); retry later.
    Backpressure,
    /// A control request got no answer.
    NoReply(&'static str),
}

impl fmt::Display for NodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeError::Io { context, source } => write!(f, "{context}: {source}"),
            NodeError::Journal(e) => write!(f, "{e}"),
            NodeError::Snapshot { path, reason } => {
                write!(f, "snapshot {}: {reason}", path.display())
            }
            NodeError::Replay { seq, reason } => {
                write!(f, "cannot replay journal record {seq}: {reason}")
            }
            NodeError::Refused(why) => write!(f, "node refuses input: {why}"),
            NodeError::Backpressure => write!(f, "input ring full: the pipeline is behind"),
            NodeError::NoReply(what) => write!(f, "no reply to {what}"),
        }
    }
}

impl std::error::Error for NodeError {}

/// Replies to control slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlReply {
    StateHash {
        seq: u64,
        hash: u128,
        chain: u64,
    },
    Stopped {
        seq: u64,
        hash: u128,
    },
    /// The epoch record's sequence (0: the promotion failed; the node says why).
    Promoted {
        seq: u64,
        epoch: u32,
    },
}

/// State shared by the stages and the producer.
pub struct Shared {
    pub metrics: Arc<Metrics>,
    /// First journal sequence that is not durable after a durability failure; the engine
    /// applies nothing at or past it. `u64::MAX` while healthy.
    pub journal_failed_at: AtomicU64,
    refusing: AtomicBool,
    failure: Mutex<Option<String>>,
    /// The latest non-fatal problem, for the log.
    last_note: Mutex<Option<String>>,
    /// When a note was last logged (ms since `metrics.started`).
    note_logged_ms: AtomicU64,
    /// Poll mode: the consumer asked to be woken when output arrives.
    wake_wanted: AtomicBool,
    /// Sink mode: the publisher thread's doorbell, rung after each engine batch.
    output_bell: Option<&'static Bell>,
    /// The node's owner is gone without a shutdown: nobody will read the output ring, so
    /// the engine drops outputs instead of waiting for room.
    pub discard_output: AtomicBool,
    wake: Option<Waker>,
    /// The owner is stopping the node: stages waiting on something outside (a standby's
    /// acknowledgement) give up.
    pub stopping: AtomicBool,
    /// A `sync` primary waits for its standby under the `halt` policy: new commands are
    /// refused as unavailable until it acknowledges.
    pub replication_halted: AtomicBool,
    /// The engine's last applied sequence (a standby acknowledges it).
    pub applied_seq: Arc<AtomicU64>,
    /// The node's epoch: the journal's, raised by a promotion.
    pub epoch: AtomicU64,
    /// A primary's state hash the engine computed at a checkpoint, waiting for the
    /// producer to journal it (sequence, interval, hash); `checkpoint_ready` says so
    /// without a lock.
    pub checkpoint_pending: Mutex<Option<(u64, u64, u128)>>,
    pub checkpoint_ready: AtomicBool,
}

/// Called (from the engine thread) to wake a consumer that polls the output ring.
pub type Waker = Arc<dyn Fn() + Send + Sync>;

impl Shared {
    fn new(
        metrics: Arc<Metrics>,
        wake: Option<Waker>,
        output_bell: Option<&'static Bell>,
    ) -> Shared {
        Shared {
            metrics,
            journal_failed_at: AtomicU64::new(u64::MAX),
            refusing: AtomicBool::new(false),
            failure: Mutex::new(None),
            last_note: Mutex::new(None),
            note_logged_ms: AtomicU64::new(0),
            wake_wanted: AtomicBool::new(false),
            output_bell,
            discard_output: AtomicBool::new(false),
            wake,
            stopping: AtomicBool::new(false),
            replication_halted: AtomicBool::new(false),
            applied_seq: Arc::new(AtomicU64::new(0)),
            epoch: AtomicU64::new(0),
            checkpoint_pending: Mutex::new(None),
            checkpoint_ready: AtomicBool::new(false),
        }
    }

    /// After a batch: wakes a polling consumer that is about to sleep. A fence and one
    /// atomic load per batch when nobody waits; the wake (a syscall) only when someone
    /// does.
    pub fn wake_consumer(&self) {
        if let Some(bell) = self.output_bell {
            bell.ring();
        }
        if let Some(wake) = &self.wake {
            // The batch's outputs are published (a store of the ring's cursor) and the
            // owner's request is read here; the owner stores its request and then reads
            // the cursor (`Node::want_wake`, `Node::outputs_available`). Without a full
            // fence on both sides each load may miss the other's store, and the owner
            // sleeps with output waiting. With them, at least one sees the other.
            fence(Ordering::SeqCst);
            if self.wake_wanted.load(Ordering::Relaxed)
                && self.wake_wanted.swap(false, Ordering::AcqRel)
            {
                wake();
            }
        }
    }

    /// Stops intake for good, keeping the first reason.
    pub fn fail(&self, why: String) {
        let mut f = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        if f.is_none() {
            tracing::error!("{why}");
            *f = Some(why);
        }
        self.refusing.store(true, Ordering::SeqCst);
    }

    /// Records what the node survived or did in the background (a refused append, a
    /// skipped or failed snapshot, pruning) and logs it: a new note at once, the same one
    /// again at most once a second, so a full disk refusing every append does not flood
    /// the log.
    pub fn note(&self, why: String) {
        let mut last = self.last_note.lock().unwrap_or_else(|e| e.into_inner());
        let now_ms = self.metrics.started.elapsed().as_millis() as u64;
        let logged_ms = self.note_logged_ms.load(Ordering::Relaxed);
        if last.as_deref() != Some(why.as_str()) || now_ms >= logged_ms + 1_000 {
            self.note_logged_ms.store(now_ms, Ordering::Relaxed);
            tracing::warn!("{why}");
        }
        *last = Some(why);
    }

    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn last_note(&self) -> Option<String> {
        self.last_note
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Receives every event the engine emits, in order, on the publisher thread. The gateway
/// will route them to sessions; until then `ringex start` counts them.
pub trait EventSink: Send + 'static {
    fn on_event(&mut self, slot: &OutputSlot);
}

/// Counts events and nothing else.
#[derive(Default)]
pub struct CountingSink;

impl EventSink for CountingSink {
    fn on_event(&mut self, _slot: &OutputSlot) {}
}

/// Where the engine's output goes.
pub enum OutputMode {
    /// A publisher thread hands every slot to the sink.
    Sink(Box<dyn EventSink>),
    /// No publisher thread: the owner of the node drains the output ring itself with
    /// [`Node::poll_outputs`] (the gateway does, on its event-loop thread). The waker is
    /// called after a batch if the owner asked with [`Node::want_wake`].
    Poll(Waker),
}

/// A sink that forwards every event over a channel (tests, tools).
pub struct ChannelSink(pub mpsc::Sender<OutputSlot>);

impl EventSink for ChannelSink {
    fn on_event(&mut self, slot: &OutputSlot) {
        let _ = self.0.send(*slot);
    }
}

/// What a clean shutdown left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    pub seq_last: u64,
    pub state_hash: u128,
}

/// A running node. Dropping it without `shutdown` stops the threads without the final
/// snapshot.
pub struct Node {
    /// How input reaches the pipeline. None once stopped.
    intake: Option<Intake>,
    control: Receiver<ControlReply>,
    snapshot_writer: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
    recovery: RecoveryLog,
    topology: Topology,
    timestamp_ns_last: u64,
    /// True when the journal was empty at start (the caller bootstraps).
    fresh: bool,
    /// The journal's write path, and why if it is not the one asked for.
    journal_backend: String,
    journal_id: u128,
    /// Waits for the journal's durable point (a standby's acknowledgements).
    durable_waiter: ringex_journal::DurableWaiter,
    /// A primary's replication listener: its stop flag, thread and address.
    replication: Option<(Arc<AtomicBool>, JoinHandle<()>, std::net::SocketAddr)>,
}

/// How a node starts, beyond its config.
pub struct StartOptions {
    /// The journal's storage calls (tests and drills inject disk faults).
    pub storage: Arc<dyn ringex_journal::Storage>,
    /// Identity of a journal created now (a standby takes its primary's).
    pub journal_id: Option<u128>,
    /// A journal created now starts after this `(sequence, chain)` (a standby that
    /// installed its primary's snapshot there).
    pub start_after: Option<(u64, u64)>,
    /// A primary just promoted from standby: it has no standby yet, so a `sync` primary
    /// whose policy is `degrade` starts degraded (as `async`, loudly) instead of holding
    /// its first orders for `degrade_after_ms`.
    pub promoted: bool,
}

impl Default for StartOptions {
    fn default() -> StartOptions {
        StartOptions {
            storage: Arc::new(ringex_journal::OsStorage),
            journal_id: None,
            start_after: None,
            promoted: false,
        }
    }
}

/// How submissions reach the pipeline.
enum Intake {
    /// Split and fused: through the input ring to the stage threads.
    Rings(Rings),
    /// Inline: straight into the fused stage, on the owner's thread.
    Inline(Box<Inline>),
}

/// The owner's ends of the rings (split and fused topologies). Dropped in field order:
/// the producer first, which drains the input ring and joins its stages.
struct Rings {
    producer: SingleProducer<InputSlot, SingleConsumerBarrier>,
    /// Doorbells of the input ring's first stages: rung after every publish.
    bells: Vec<&'static Bell>,
    /// Poll mode: the output ring's consumer end.
    poller: Option<EventPoller<OutputSlot, SingleProducerBarrier>>,
}

impl Rings {
    fn ring_bells(&self) {
        for bell in &self.bells {
            bell.ring();
        }
    }

    /// Poll mode: hands up to `limit` output slots to `f`; returns how many.
    fn poll(&mut self, limit: u64, mut f: impl FnMut(&OutputSlot)) -> usize {
        let Some(poller) = self.poller.as_mut() else {
            return 0;
        };
        match poller.take(limit) {
            Ok(mut guard) => {
                let mut n = 0;
                for slot in &mut guard {
                    f(slot);
                    n += 1;
                }
                n
            }
            Err(Polling::NoEvents) | Err(Polling::Shutdown) => 0,
        }
    }

    /// Poll mode: discards what is in the output ring (nobody else drains it while the
    /// owner waits for a control reply, or once the node is dropped).
    fn discard_outputs(&mut self) {
        self.poll(u64::MAX, |_| {});
    }
}

/// The inline topology: the fused stage run by the node's owner, between its own work.
/// A batch is what the owner submits between two polls (or, with a sink, one submit
/// call); the events go into a queue on the same thread.
struct Inline {
    stage: FusedStage,
    /// Sink mode: handed every output at the end of each batch.
    sink: Option<Box<dyn EventSink>>,
    /// Poll mode: submissions are refused (backpressure) while more outputs than this
    /// wait to be polled, which bounds the queue to this plus one batch's events.
    queued_max: usize,
    slot: InputSlot,
}

impl Inline {
    fn queue(&mut self) -> &mut VecDeque<OutputSlot> {
        match &mut self.stage.engine.out {
            Outlet::Queue(q) => q,
            Outlet::Ring { .. } => unreachable!("the inline stage has a queue outlet"),
        }
    }

    fn queued(&self) -> usize {
        match &self.stage.engine.out {
            Outlet::Queue(q) => q.len(),
            Outlet::Ring { .. } => unreachable!("the inline stage has a queue outlet"),
        }
    }

    fn is_full(&self) -> bool {
        self.sink.is_none() && self.queued() >= self.queued_max
    }

    /// Journals (and, at the batch's end, applies) the slot as filled by `fill`.
    fn submit(&mut self, fill: impl FnOnce(&mut InputSlot), end_of_batch: bool) {
        fill(&mut self.slot);
        self.stage.handle(&self.slot, false);
        if end_of_batch {
            self.end_batch();
        }
    }

    /// Ends the open batch, if any, and hands its outputs to the sink.
    fn end_batch(&mut self) {
        if self.stage.pending() > 0 {
            self.stage.end_batch();
        }
        if let Some(mut sink) = self.sink.take() {
            for slot in self.queue().drain(..) {
                sink.on_event(&slot);
            }
            self.sink = Some(sink);
        }
    }
}

fn io_err(context: String) -> impl FnOnce(std::io::Error) -> NodeError {
    move |source| NodeError::Io { context, source }
}

/// The journal's settings from the node's config.
pub fn journal_config(config: &Config) -> ringex_journal::Config {
    let dir = config.node.data_dir.join("journal");
    let mut j = ringex_journal::Config::new(dir);
    j.segment_size_bytes = config.journal.segment_size_mib << 20;
    j.durability = match config.journal.durability {
        DurabilityMode::Async => Durability::Async {
            flush_interval_ms: config.journal.flush_interval_ms,
        },
        DurabilityMode::Group => Durability::Group,
    };
    j.low_space_threshold_bytes = config.journal.low_space_mib << 20;
    j.helper_core = config.pipeline.cores.get("helpers").copied();
    // The journaling thread prefaults between batches: no helper thread to preempt it.
    j.prefault = ringex_journal::Prefault::Writer;
    j.prealloc_zero_fill = config.journal.zero_fill_segments;
    // Every topology's journaling thread commits its batches itself (`make_durable`).
    j.caller_commits = true;
    // The journal's own epoch: a promoted node reopens in the epoch it was promoted to.
    j.epoch = 0;
    // Commands encode to at most COMMAND_SIZE_MAX bytes; leave room for growth.
    j.record_size_bytes_max = 4096;
    j.backend = match config.journal.backend {
        JournalBackend::Auto => ringex_journal::Backend::Auto,
        JournalBackend::Mmap => ringex_journal::Backend::Mmap,
        JournalBackend::Pwrite => ringex_journal::Backend::Pwrite,
        JournalBackend::IoUring => ringex_journal::Backend::IoUring,
    };
    j
}

fn pin<B, E, W>(builder: B, core: Option<usize>) -> B
where
    B: ProcessorSettings<E, W>,
{
    match core {
        Some(c) => builder.pin_at_core(c),
        None => builder,
    }
}

impl Node {
    /// Recovers the state from the data directory and starts the pipeline.
    pub fn start(config: &Config, output: OutputMode) -> Result<Node, NodeError> {
        Node::start_on(config, output, Arc::new(ringex_journal::OsStorage))
    }

    /// [`Node::start`] with the journal's storage calls going through `storage` (tests
    /// and drills inject disk faults with [`ringex_journal::FaultStorage`]).
    pub fn start_on(
        config: &Config,
        output: OutputMode,
        storage: Arc<dyn ringex_journal::Storage>,
    ) -> Result<Node, NodeError> {
        Node::start_with(
            config,
            output,
            StartOptions {
                storage,
                ..StartOptions::default()
            },
        )
    }

    /// [`Node::start`] with [`StartOptions`].
    pub fn start_with(
        config: &Config,
        output: OutputMode,
        options: StartOptions,
    ) -> Result<Node, NodeError> {
        let storage = options.storage;
        let data_dir = &config.node.data_dir;
        let journal_dir = data_dir.join("journal");
        let snapshot_dir = data_dir.join("snapshots");
        for dir in [&journal_dir, &snapshot_dir] {
            std::fs::create_dir_all(dir)
                .map_err(io_err(format!("create directory {}", dir.display())))?;
        }
        let mut journal_config = journal_config(config);
        journal_config.storage = storage;
        if let Some(id) = options.journal_id {
            journal_config.journal_id = id;
        }
        journal_config.start_after = options.start_after;
        // The newest snapshot's commands were durable before it was written: the journal
        // refuses to open (changing nothing) rather than cut below it.
        journal_config.seq_durable_known = ringex_journal::snapshot_seq_newest(&snapshot_dir)
            .map_err(NodeError::Journal)?
            .unwrap_or(0);
        // The replay starts after the newest snapshot that checks out whole (a damaged
        // newer one is skipped): every record it will read is checked before anything
        // changes, all of them without a usable snapshot.
        journal_config.seq_first_needed = ringex_journal::snapshot_seq_newest_valid(&snapshot_dir)
            .map_err(NodeError::Journal)?
            .unwrap_or(0)
            + 1;
        if journal_config.seq_first_needed == 1 {
            journal_config.verify = ringex_journal::Verify::All;
        }
        let mut journal = Journal::open(journal_config).map_err(NodeError::Journal)?;
        if let Some(note) = journal.segment_size_note() {
            tracing::warn!("journal.segment_size_mib: {note}");
        }
        let journal_backend = format!(
            "{:?}{}{}",
            journal.backend(),
            match (journal.direct_io(), config.journal.durability) {
                (true, _) => " + O_DIRECT",
                (false, DurabilityMode::Async) if journal.backend() != Backend::Mmap => {
                    ", a batch per write through the page cache"
                }
                _ => "",
            },
            journal
                .backend_note()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default()
        );
        let snapshots =
            SnapshotStore::open(&snapshot_dir, config.snapshot.keep).map_err(NodeError::Journal)?;
        let (exchange, recovery) = recovery::recover(&journal, &snapshots, &journal_dir)?;
        let fresh = recovery.seq_last == 0;
        let metrics = Arc::new(Metrics::default());
        let _ = metrics.journal.set(journal.watermarks());
        let durable_waiter = journal.durable_waiter();
        let topology = config.topology();
        let inline = topology == Topology::Inline;
        let wake = match &output {
            OutputMode::Poll(w) if !inline => Some(Arc::clone(w)),
            _ => None,
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        // Fused: the pipeline thread and the gateway, one core each. Split: three stages
        // plus the gateway, which on a small machine share cores.
        let spin = match config.pipeline.spin_us {
            0 if topology == Topology::Split && cores < 4 => doorbell::SPIN_SHARED,
            0 => doorbell::SPIN_ALONE,
            us => Duration::from_micros(u64::from(us)),
        };
        let stage_wait = || match config.pipeline.wait {
            WaitMode::BusySpin => StageWait::Spin,
            WaitMode::Backoff => StageWait::bell(Bell::leak(spin)),
        };
        let publisher_wait = match &output {
            _ if inline => None,
            OutputMode::Sink(_) => Some(StageWait::bell(Bell::leak(doorbell::SPIN_SHARED))),
            OutputMode::Poll(_) => Some(StageWait::Spin),
        };
        let shared = Arc::new(Shared::new(
            Arc::clone(&metrics),
            wake,
            publisher_wait.as_ref().and_then(|w| w.own_bell()),
        ));
        let (control_tx, control) = mpsc::channel();
        let (snapshot_tx, snapshot_rx) = mpsc::sync_channel::<SnapshotJob>(SNAPSHOT_QUEUE_MAX);
        let snapshot_writer = spawn_snapshot_writer(
            snapshots,
            snapshot_rx,
            Arc::clone(&shared),
            journal.watermarks(),
            config.pipeline.cores.get("helpers").copied(),
        )?;

        let cores = &config.pipeline.cores;
        let core = |stage: &str| cores.get(stage).copied();
        let output_ring =
            |wait| build_single_producer(config.pipeline.output_ring_size, OutputSlot::empty, wait);
        // The publisher shares a core: it waits on its doorbell, rung by the engine.
        let (out, poller, inline_sink) = match (output, publisher_wait) {
            (output, None) => {
                let sink = match output {
                    OutputMode::Sink(sink) => Some(sink),
                    OutputMode::Poll(_) => None,
                };
                let queue = VecDeque::with_capacity(config.pipeline.output_ring_size);
                (Outlet::Queue(queue), None, sink)
            }
            (OutputMode::Sink(mut sink), Some(publisher_wait)) => {
                let b = output_ring(publisher_wait);
                let metrics = Arc::clone(&metrics);
                let out = pin(b, core("publisher"))
                    .thread_name("ringex-publish")
                    .handle_events_with(move |slot: &OutputSlot, _seq, _end| {
                        sink.on_event(slot);
                        bump(&metrics.events_published, 1);
                    })
                    .build();
                (
                    Outlet::ring(out, config.pipeline.output_ring_size),
                    None,
                    None,
                )
            }
            (OutputMode::Poll(_), Some(publisher_wait)) => {
                let (poller, b) = output_ring(publisher_wait).new_event_poller();
                let out = Outlet::ring(b.build(), config.pipeline.output_ring_size);
                (out, Some(poller), None)
            }
        };
        let group = config.journal.durability == DurabilityMode::Group;
        let seq_last = recovery.seq_last;
        let chain_last = journal.chain();
        let prune_store = if config.journal.prune_after_snapshot {
            Some(
                SnapshotStore::open(&snapshot_dir, config.snapshot.keep)
                    .map_err(NodeError::Journal)?,
            )
        } else {
            None
        };
        let epoch = journal.epoch();
        let journal_id = journal.journal_id();
        shared.epoch.store(u64::from(epoch), Ordering::Release);
        shared
            .applied_seq
            .store(recovery.seq_last, Ordering::Release);
        // A primary: a tap on the journal feeds the replication listener, and the journal
        // stage waits on the standby per the mode.
        let replication = match config.node.role {
            Role::Primary => {
                let tap = Arc::new(ringex_journal::FrameTap::new(REPLICATION_TAP_BYTES));
                journal.set_tap(Some(Arc::clone(&tap)));
                let link = Arc::new(ringex_replicator::link::Link::new());
                let _ = metrics.replication.set(Arc::clone(&link));
                let stop = Arc::new(AtomicBool::new(false));
                let r = &config.replication;
                let listen = config
                    .listeners
                    .replication
                    .parse()
                    .map_err(|e| NodeError::Refused(format!("listeners.replication: {e}")))?;
                let log_shared = Arc::clone(&shared);
                let (addr, handle) = ringex_replicator::primary::spawn(
                    ringex_replicator::primary::PrimaryConfig {
                        listen,
                        heartbeat: Duration::from_millis(r.heartbeat_ms),
                        silence_max: Duration::from_millis(r.silence_max_ms),
                        // Promoted online: the primary it followed may come back.
                        fence: if options.promoted {
                            r.primary.parse().ok()
                        } else {
                            None
                        },
                    },
                    ringex_replicator::primary::PrimaryJournal {
                        dir: journal_dir.clone(),
                        snapshots_dir: snapshot_dir.clone(),
                        journal_id: journal.journal_id(),
                        epoch,
                        watermarks: journal.watermarks(),
                        tap: Arc::clone(&tap),
                    },
                    Arc::clone(&link),
                    Arc::clone(&stop),
                    Arc::new(move |line| log_shared.note(line)),
                )
                .map_err(io_err(format!(
                    "replication listener on {}",
                    config.listeners.replication
                )))?;
                let policy = match r.on_standby_loss {
                    StandbyLossPolicy::Halt => replication::LossPolicy::Halt,
                    StandbyLossPolicy::Degrade => replication::LossPolicy::Degrade {
                        after: Duration::from_millis(r.degrade_after_ms),
                    },
                };
                let sync = r.mode == ReplicationMode::Sync;
                let mut primary = replication::Primary::new(tap, link, sync, policy);
                if options.promoted {
                    primary.start_without_standby(&shared);
                }
                Some((primary, (stop, handle, addr)))
            }
            Role::Single | Role::Standby => None,
        };
        let (replication_stage, replication) = match replication {
            Some((stage, thread)) => (Some(stage), Some(thread)),
            None => (None, None),
        };
        let mut journal_stage = JournalStage::new(journal, group, Arc::clone(&shared), prune_store);
        journal_stage.node_id = config.node.id;
        journal_stage.replication = replication_stage;
        let policy = SnapshotPolicy {
            every_commands: config.snapshot.every_commands,
            every: (config.snapshot.every_seconds > 0)
                .then(|| Duration::from_secs(config.snapshot.every_seconds)),
        };
        let engine_stage = EngineStage::new(
            exchange,
            seq_last,
            chain_last,
            recovery.snapshot_seq.unwrap_or(0),
            out,
            Arc::clone(&shared),
            epoch,
            policy,
            snapshot_tx,
            control_tx,
        );
        let mut engine_stage = engine_stage;
        match config.node.role {
            Role::Primary => {
                engine_stage.checkpoints =
                    recovery::Checkpoints::new(config.replication.checkpoint_every_commands);
                engine_stage.publishes_checkpoints =
                    config.replication.checkpoint_every_commands > 0;
            }
            // A standby takes the interval from its primary's first checkpoint record.
            Role::Standby | Role::Single => {}
        }
        let rings = |producer, bells| {
            Intake::Rings(Rings {
                producer,
                bells,
                poller,
            })
        };
        let intake = match topology {
            Topology::Inline => Intake::Inline(Box::new(Inline {
                stage: FusedStage::new(journal_stage, engine_stage, config.pipeline.batch_max),
                sink: inline_sink,
                queued_max: config.pipeline.output_ring_size,
                slot: InputSlot::empty(),
            })),
            Topology::Fused | Topology::Auto => {
                let wait = stage_wait();
                let bells = wait.own_bell().into_iter().collect();
                rings(
                    build_fused(config, wait, journal_stage, engine_stage),
                    bells,
                )
            }
            Topology::Split => {
                let engine = stage_wait();
                let journaler = stage_wait().ringing(engine.own_bell());
                let replicator = stage_wait().ringing(engine.own_bell());
                let bells = journaler
                    .own_bell()
                    .into_iter()
                    .chain(replicator.own_bell())
                    .collect();
                journal_stage.next_bell = engine.own_bell();
                let producer = build_split(
                    config,
                    [journaler, replicator, engine],
                    journal_stage,
                    engine_stage,
                );
                rings(producer, bells)
            }
        };
        Ok(Node {
            intake: Some(intake),
            control,
            snapshot_writer: Some(snapshot_writer),
            shared,
            recovery,
            topology,
            timestamp_ns_last: 0,
            fresh,
            journal_backend,
            replication,
            journal_id,
            durable_waiter,
        })
    }

    pub fn recovery(&self) -> &RecoveryLog {
        &self.recovery
    }

    pub fn topology(&self) -> Topology {
        self.topology
    }

    /// The journal's write path, and why if it is not the one configured.
    pub fn journal_backend(&self) -> &str {
        &self.journal_backend
    }

    /// True when the node started on an empty journal and no snapshot.
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.shared.metrics)
    }

    /// The state the stages share (failure, sequences, epoch), for `/health`.
    pub fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    /// Why the node stopped taking input, if it did.
    pub fn failure(&self) -> Option<String> {
        self.shared.failure()
    }

    /// The latest non-fatal problem (e.g. an append refused for low disk space).
    pub fn last_note(&self) -> Option<String> {
        self.shared.last_note()
    }

    /// Publishes a command stamped with the system clock. `tag` comes back on its events.
    pub fn submit(&mut self, command: &Command, tag: u64) -> Result<(), NodeError> {
        self.publish(SlotKind::Command, command, &NO_QUERY, tag, SUBMIT_WAIT_MAX)
    }

    /// Standby: publishes a frame slot (without ending the inline batch: the follower
    /// ends it per message with [`Node::flush_replicas`]).
    pub(crate) fn publish_frame(
        &mut self,
        kind: SlotKind,
        command: Command,
        tag: u64,
        frame: &[u8],
        aux: [u64; 4],
    ) -> Result<(), NodeError> {
        let timestamp_ns = self.stamp()?;
        let fill = |slot: &mut InputSlot| {
            slot.set(kind, timestamp_ns, tag, command, NO_QUERY);
            slot.frame[..frame.len()].copy_from_slice(frame);
            slot.frame_len = frame.len();
            slot.aux = aux;
        };
        let published = match self.intake()? {
            Intake::Inline(inline) => {
                let room = !inline.is_full();
                if room {
                    inline.submit(fill, false);
                }
                room
            }
            Intake::Rings(rings) => {
                let producer = &mut rings.producer;
                let published = retry_until(SUBMIT_WAIT_MAX, || producer.try_publish(fill).ok());
                rings.ring_bells();
                published.is_some()
            }
        };
        if !published {
            bump(&self.shared.metrics.commands_backpressured, 1);
            return Err(NodeError::Backpressure);
        }
        bump(&self.shared.metrics.commands_submitted, 1);
        Ok(())
    }

    /// A `sync` primary halted for its standby refuses commands (unavailable) until the
    /// standby acknowledges again.
    fn refuse_if_halted(&self) -> Result<(), NodeError> {
        if self.shared.replication_halted.load(Ordering::Relaxed) {
            return Err(NodeError::Refused(
                "replication halted: the standby has not acknowledged the latest commands; \
                 orders are refused until it does"
                    .into(),
            ));
        }
        Ok(())
    }

    /// A primary: journals the checkpoint the engine computed (before the command being
    /// published). Best effort: with the ring full it waits for the next command.
    fn publish_checkpoint(&mut self, timestamp_ns: u64) {
        let pending = self
            .shared
            .checkpoint_pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        self.shared.checkpoint_ready.store(false, Ordering::Relaxed);
        let Some((seq, every, hash)) = pending else {
            return;
        };
        let aux = [seq, every, hash as u64, (hash >> 64) as u64];
        let fill = |slot: &mut InputSlot| {
            slot.set(SlotKind::Checkpoint, timestamp_ns, 0, FILLER, NO_QUERY);
            slot.aux = aux;
        };
        let published = match self.intake.as_mut() {
            Some(Intake::Inline(inline)) => {
                inline.submit(fill, false);
                true
            }
            Some(Intake::Rings(rings)) => {
                let ok = rings.producer.try_publish(fill).is_ok();
                rings.ring_bells();
                ok
            }
            None => true,
        };
        if !published {
            *self
                .shared
                .checkpoint_pending
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some((seq, every, hash));
            self.shared.checkpoint_ready.store(true, Ordering::Relaxed);
        }
    }

    /// Standby: ends the batch of frames published so far (inline topology; the rings'
    /// stages end their batches themselves).
    pub fn flush_replicas(&mut self) {
        if let Some(Intake::Inline(inline)) = self.intake.as_mut() {
            inline.end_batch();
            inline.queue().clear();
        }
    }

    /// Where the journal ends: (last sequence, chain value after it), once everything
    /// published before is journaled and applied (a control round trip).
    pub fn journal_end(&mut self) -> Result<(u64, u64), NodeError> {
        match self.control(SlotKind::StateHash, "journal end")? {
            ControlReply::StateHash { seq, chain, .. } => Ok((seq, chain)),
            other => Err(NodeError::Refused(format!("unexpected reply {other:?}"))),
        }
    }

    /// Promotion: makes everything journaled so far durable, takes `epoch` (which must be
    /// above the journal's) and journals an epoch record, synced before anything after it
    /// is applied. Returns the epoch record's sequence.
    pub fn promote(&mut self, epoch: u32) -> Result<u64, NodeError> {
        match self.control_tagged(SlotKind::Promote, u64::from(epoch), "promotion")? {
            ControlReply::Promoted { seq, .. } if seq > 0 => Ok(seq),
            _ => Err(NodeError::Refused(
                self.shared
                    .failure()
                    .unwrap_or_else(|| "the promotion failed".into()),
            )),
        }
    }

    /// Waits for the journal's durable point, woken by each sync round.
    pub fn durable_waiter(&self) -> ringex_journal::DurableWaiter {
        self.durable_waiter.clone()
    }

    /// The journal's written and durable watermarks.
    pub fn journal_watermarks(&self) -> Arc<ringex_journal::Watermarks> {
        Arc::clone(
            self.shared
                .metrics
                .journal
                .get()
                .expect("set when the node starts"),
        )
    }

    /// The engine's last applied sequence, as it moves.
    pub fn applied_seq(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.shared.applied_seq)
    }

    /// The node's epoch (the journal's; a promotion raises it).
    pub fn epoch(&self) -> u32 {
        self.shared.epoch.load(Ordering::Acquire) as u32
    }

    /// The journal's identity.
    pub fn journal_id(&self) -> u128 {
        self.journal_id
    }

    /// A primary's replication listener address (its standby connects there).
    pub fn replication_addr(&self) -> Option<std::net::SocketAddr> {
        self.replication.as_ref().map(|(_, _, addr)| *addr)
    }

    fn stop_replication(&mut self) {
        if let Some((stop, handle, _)) = self.replication.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = handle.join();
        }
    }

    /// Publishes a read-only query, answered in order with the commands around it.
    pub fn submit_query(&mut self, query: &Query, tag: u64) -> Result<(), NodeError> {
        self.publish(SlotKind::Query, &FILLER, query, tag, SUBMIT_WAIT_MAX)
    }

    /// Like [`Node::submit`], but never waits: `Backpressure` at once if the ring is
    /// full. For an owner that must keep draining the output ring (the gateway).
    pub fn try_submit(&mut self, command: &Command, tag: u64) -> Result<(), NodeError> {
        self.publish(SlotKind::Command, command, &NO_QUERY, tag, Duration::ZERO)
    }

    /// Like [`Node::submit_query`], but never waits.
    pub fn try_submit_query(&mut self, query: &Query, tag: u64) -> Result<(), NodeError> {
        self.publish(SlotKind::Query, &FILLER, query, tag, Duration::ZERO)
    }

    /// Poll mode: hands up to `limit` output slots to `f`, in order; returns how many.
    /// In the inline topology this ends the open batch first (journal, apply) on the
    /// caller's thread.
    pub fn poll_outputs(&mut self, limit: u64, mut f: impl FnMut(&OutputSlot)) -> usize {
        let n = match self.intake.as_mut() {
            Some(Intake::Inline(inline)) => {
                inline.end_batch();
                let queue = inline.queue();
                let n = queue.len().min(limit as usize);
                for slot in queue.drain(..n) {
                    f(&slot);
                }
                n
            }
            Some(Intake::Rings(rings)) => rings.poll(limit, f),
            None => 0,
        };
        bump(&self.shared.metrics.events_published, n as u64);
        n
    }

    /// Poll mode: whether output is waiting.
    pub fn outputs_available(&self) -> bool {
        match &self.intake {
            Some(Intake::Inline(inline)) => inline.stage.pending() > 0 || inline.queued() > 0,
            Some(Intake::Rings(rings)) => rings.poller.as_ref().is_some_and(|p| p.has_available()),
            None => false,
        }
    }

    /// The intake, or why there is none (the node was shut down).
    fn intake(&mut self) -> Result<&mut Intake, NodeError> {
        self.intake
            .as_mut()
            .ok_or_else(|| NodeError::Refused("stopped".into()))
    }

    /// Poll mode: asks the engine to call the waker after its next batch. Call before
    /// sleeping, then check [`Node::outputs_available`] once more to close the race: a
    /// batch that ends after this call wakes the owner, and one that ended before it left
    /// its output where that check finds it.
    pub fn want_wake(&self) {
        self.shared.wake_wanted.store(true, Ordering::Relaxed);
        // Pairs with the fence in `Shared::wake_consumer`: the request is visible before
        // the ring is read again.
        fence(Ordering::SeqCst);
    }

    /// The timestamp for the next publish, or why the node takes no input. Journal
    /// timestamps never go backwards, even if the wall clock does.
    fn stamp(&mut self) -> Result<u64, NodeError> {
        if self.shared.refusing.load(Ordering::Relaxed) {
            let why = self.shared.failure().unwrap_or_else(|| "stopped".into());
            return Err(NodeError::Refused(why));
        }
        let now_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let timestamp_ns = now_ns.max(self.timestamp_ns_last);
        self.timestamp_ns_last = timestamp_ns;
        Ok(timestamp_ns)
    }

    fn publish(
        &mut self,
        kind: SlotKind,
        command: &Command,
        query: &Query,
        tag: u64,
        wait: Duration,
    ) -> Result<(), NodeError> {
        if kind == SlotKind::Command {
            self.refuse_if_halted()?;
        }
        let timestamp_ns = self.stamp()?;
        if kind == SlotKind::Command && self.shared.checkpoint_ready.load(Ordering::Relaxed) {
            self.publish_checkpoint(timestamp_ns);
        }
        let (command, query) = (*command, *query);
        let fill = |slot: &mut InputSlot| slot.set(kind, timestamp_ns, tag, command, query);
        let published = match self.intake()? {
            Intake::Inline(inline) => {
                let room = !inline.is_full();
                if room {
                    // With a sink nobody polls: each submission is its own batch.
                    let end_of_batch = inline.sink.is_some();
                    inline.submit(fill, end_of_batch);
                }
                room
            }
            Intake::Rings(rings) => {
                let producer = &mut rings.producer;
                let mut attempt = || producer.try_publish(fill).ok();
                let published = if wait.is_zero() {
                    attempt()
                } else {
                    retry_until(wait, attempt)
                };
                rings.ring_bells();
                published.is_some()
            }
        };
        if !published {
            bump(&self.shared.metrics.commands_backpressured, 1);
            return Err(NodeError::Backpressure);
        }
        if kind == SlotKind::Command {
            bump(&self.shared.metrics.commands_submitted, 1);
        }
        Ok(())
    }

    /// Publishes commands as one batch (one clock read, one ring claim), without waiting:
    /// all of them, or `Backpressure` and none if the ring lacks room for them all.
    /// `items` holds (command, tag) pairs; at most the ring's size.
    pub fn try_submit_batch(&mut self, items: &[(Command, u64)]) -> Result<(), NodeError> {
        if items.is_empty() {
            return Ok(());
        }
        self.refuse_if_halted()?;
        let timestamp_ns = self.stamp()?;
        if self.shared.checkpoint_ready.load(Ordering::Relaxed) {
            self.publish_checkpoint(timestamp_ns);
        }
        let published = match self.intake()? {
            Intake::Inline(inline) => {
                let room = !inline.is_full();
                if room {
                    for (i, &(command, tag)) in items.iter().enumerate() {
                        let end_of_batch = inline.sink.is_some() && i + 1 == items.len();
                        inline.submit(
                            |slot| {
                                slot.set(SlotKind::Command, timestamp_ns, tag, command, NO_QUERY)
                            },
                            end_of_batch,
                        );
                    }
                }
                room
            }
            Intake::Rings(rings) => {
                let published = rings.producer.try_batch_publish(items.len(), |slots| {
                    for (slot, &(command, tag)) in slots.zip(items) {
                        slot.set(SlotKind::Command, timestamp_ns, tag, command, NO_QUERY);
                    }
                });
                rings.ring_bells();
                published.is_ok()
            }
        };
        if !published {
            bump(&self.shared.metrics.commands_backpressured, 1);
            return Err(NodeError::Backpressure);
        }
        bump(&self.shared.metrics.commands_submitted, items.len() as u64);
        Ok(())
    }

    fn control(&mut self, kind: SlotKind, what: &'static str) -> Result<ControlReply, NodeError> {
        self.control_tagged(kind, 0, what)
    }

    /// A control slot carrying `tag`, stamped with the clock (a promotion journals a
    /// record).
    fn control_tagged(
        &mut self,
        kind: SlotKind,
        tag: u64,
        what: &'static str,
    ) -> Result<ControlReply, NodeError> {
        let now_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let ts = now_ns.max(self.timestamp_ns_last);
        self.timestamp_ns_last = ts;
        // Control slots must get through even after a journal failure.
        let rings = match self.intake.as_mut() {
            None => return Err(NodeError::NoReply(what)),
            Some(Intake::Inline(inline)) => {
                // Applied at once, with the open batch; its outputs stay queued for the owner.
                inline.submit(|slot| slot.set(kind, ts, tag, FILLER, NO_QUERY), true);
                return self
                    .control
                    .try_recv()
                    .map_err(|_| NodeError::NoReply(what));
            }
            Some(Intake::Rings(rings)) => rings,
        };
        let deadline = std::time::Instant::now() + CONTROL_WAIT_MAX;
        let published = retry_until(CONTROL_WAIT_MAX, || {
            rings.discard_outputs();
            rings
                .producer
                .try_publish(|slot| slot.set(kind, ts, tag, FILLER, NO_QUERY))
                .ok()
        });
        published.ok_or(NodeError::Backpressure)?;
        rings.ring_bells();
        // Bounded by the deadline: each pass waits at most 1 ms.
        while std::time::Instant::now() < deadline {
            rings.discard_outputs();
            match self.control.recv_timeout(Duration::from_millis(1)) {
                Ok(reply) => return Ok(reply),
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        Err(NodeError::NoReply(what))
    }

    /// The engine's state hash after every command submitted so far, and its sequence.
    pub fn state_hash(&mut self) -> Result<(u64, u128), NodeError> {
        match self.control(SlotKind::StateHash, "state hash")? {
            ControlReply::StateHash { seq, hash, .. } => Ok((seq, hash)),
            other => panic!("unexpected control reply {other:?}"),
        }
    }

    /// Asks for a snapshot at the current point (written in the background).
    pub fn request_snapshot(&mut self) -> Result<(), NodeError> {
        self.publish(SlotKind::Snapshot, &FILLER, &NO_QUERY, 0, SUBMIT_WAIT_MAX)
    }

    /// Stops intake, drains the rings, writes the final snapshot and syncs the journal.
    /// Tells the node, from any thread, that it is stopping (a signal arrived): a `sync`
    /// primary waiting for its standby gives the wait up at once (what the standby never
    /// acknowledged is not applied), instead of holding its thread, in the inline
    /// topology the gateway's, until the standby is back.
    pub fn stopping_handle(&self) -> impl Fn() + Send + Sync + 'static {
        let shared = Arc::clone(&self.shared);
        move || shared.stopping.store(true, Ordering::Release)
    }

    pub fn shutdown(mut self) -> Result<ShutdownReport, NodeError> {
        self.shared.stopping.store(true, Ordering::Release);
        let reply = self.control(SlotKind::Shutdown, "shutdown")?;
        // Dropping the producer drains the input ring and joins its stages; the engine
        // stage's drop does the same for the output ring and the publisher.
        drop(self.intake.take());
        if let Some(h) = self.snapshot_writer.take() {
            let _ = h.join();
        }
        if let Some(why) = self.shared.failure() {
            return Err(NodeError::Refused(why));
        }
        match reply {
            ControlReply::Stopped { seq, hash } => Ok(ShutdownReport {
                seq_last: seq,
                state_hash: hash,
            }),
            other => panic!("unexpected control reply {other:?}"),
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Nobody reads the output ring from now on: the engine must not wait for room.
        self.shared.discard_output.store(true, Ordering::SeqCst);
        if let Some(Intake::Rings(rings)) = self.intake.as_mut() {
            rings.discard_outputs();
        }
        self.shared.stopping.store(true, Ordering::Release);
        drop(self.intake.take());
        if let Some(h) = self.snapshot_writer.take() {
            let _ = h.join();
        }
        self.stop_replication();
    }
}

fn build_fused(
    config: &Config,
    wait: StageWait,
    journal_stage: JournalStage,
    engine_stage: EngineStage,
) -> SingleProducer<InputSlot, SingleConsumerBarrier> {
    let core = config.pipeline.cores.get("pipeline").copied();
    let stage = FusedStage::new(journal_stage, engine_stage, config.pipeline.batch_max);
    let b = build_single_producer(config.pipeline.input_ring_size, InputSlot::empty, wait);
    pin(b, core)
        .thread_name("ringex-pipeline")
        .handle_events_and_state_with(
            |s: &mut FusedStage, slot: &InputSlot, _seq, end| s.handle(slot, end),
            move || stage,
        )
        .build()
}

/// `waits`: the journaler's, the replicator's and the engine's.
fn build_split(
    config: &Config,
    waits: [StageWait; 3],
    journal_stage: JournalStage,
    engine_stage: EngineStage,
) -> SingleProducer<InputSlot, SingleConsumerBarrier> {
    let cores = &config.pipeline.cores;
    let core = |stage: &str| cores.get(stage).copied();
    let [journaler, replicator, engine] = waits;
    let b = build_single_producer(config.pipeline.input_ring_size, InputSlot::empty, journaler);
    let b = pin(b, core("journaler"))
        .thread_name("ringex-journal")
        .handle_events_and_state_with_wait_strategy(
            |s: &mut JournalStage, slot: &InputSlot, _seq, end| s.handle(slot, end),
            move || journal_stage,
            journaler,
        );
    // Replication is not built yet: its stage holds its place in the graph, in parallel
    // with the journaler, and passes every slot on (ringing the engine after a batch).
    let engine_bell = engine.own_bell();
    let b = pin(b, core("replicator"))
        .thread_name("ringex-replicate")
        .handle_events_with_wait_strategy(
            move |_slot: &InputSlot, _seq, end| {
                if end {
                    if let Some(bell) = engine_bell {
                        bell.ring();
                    }
                }
            },
            replicator,
        );
    pin(b.and_then(), core("engine"))
        .thread_name("ringex-engine")
        .handle_events_and_state_with_wait_strategy(
            |s: &mut EngineStage, slot: &InputSlot, _seq, end| s.handle(slot, end),
            move || engine_stage,
            engine,
        )
        .build()
}

/// How long the snapshot writer waits for the journal to make a snapshot's commands
/// durable (async mode: one flush interval, at most 10 s by config).
const SNAPSHOT_DURABLE_WAIT_MAX: Duration = Duration::from_secs(30);

fn spawn_snapshot_writer(
    store: SnapshotStore,
    jobs: Receiver<SnapshotJob>,
    shared: Arc<Shared>,
    journal: Arc<ringex_journal::Watermarks>,
    core: Option<usize>,
) -> Result<JoinHandle<()>, NodeError> {
    std::thread::Builder::new()
        .name("ringex-snapshot".into())
        .spawn(move || {
            if let Some(id) = core {
                core_affinity::set_for_current(core_affinity::CoreId { id });
            }
            // Ends when the engine stage drops its sender.
            for job in jobs {
                // A snapshot never gets ahead of the durable journal (in async mode the
                // engine applies what is only in the page cache): so a snapshot ahead of
                // the journal at start always means the journal lost durable records.
                let durable = retry_until(SNAPSHOT_DURABLE_WAIT_MAX, || {
                    (journal.durable() >= job.seq || shared.failure().is_some()).then_some(())
                });
                if durable.is_none() || journal.durable() < job.seq {
                    let why = "its commands were not made durable";
                    shared.note(format!("snapshot at seq {} skipped: {why}", job.seq));
                    continue;
                }
                let hash = job.state_hash.to_le_bytes();
                match store.write(job.seq, job.epoch, job.chain, &hash, &job.bytes) {
                    Ok(_) => shared
                        .metrics
                        .snapshot_seq
                        .store(job.seq, Ordering::Relaxed),
                    Err(e) => shared.note(format!("snapshot at seq {} failed: {e}", job.seq)),
                }
            }
        })
        .map_err(io_err("spawn snapshot writer".into()))
}
