//! The pipeline's stages. Each is a plain struct driven by a ring handler, so the `split`
//! topology (one thread per stage) and the `fused` one (one thread for all) share the same
//! code and produce the same journal and events.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Sender, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use disruptor::{Producer, SingleConsumerBarrier, SingleProducer};
use ringex_engine::codec::{encode_command, CODEC_VERSION, COMMAND_SIZE_MAX};
use ringex_engine::{
    Command, CommandKind, Event, Exchange, Output, Query, QueryReply, RejectReason,
};
use ringex_journal::{Journal, SnapshotStore};

use super::slots::{InputSlot, OutputSlot, SlotKind};
use super::wait::retry_until;
use super::{ControlReply, Shared, RECORD_COMMAND};
use crate::metrics::{bump, new_histogram, MarketCounters};

/// How long the engine waits for room in the output ring before calling the publisher
/// stalled (a bug: the publisher never blocks on clients).
const OUTPUT_WAIT_MAX: Duration = Duration::from_secs(60);
/// One command in this many has its engine latency measured (see `apply_command`).
const LATENCY_SAMPLE_EVERY: u64 = 8;
/// Local metrics are merged into the shared registry at most this often (a lock each),
/// or sooner when the latency samples fill `LATENCY_SAMPLES_MAX`.
const METRICS_MERGE_EVERY: Duration = Duration::from_millis(20);
/// Latency samples kept between merges. The stage keeps samples, not histograms of its
/// own: a histogram of the registry's range (1 ns to 60 s, 3 digits) is ~27 K counters,
/// 216 KB, and merging one walks them all and then zeroes them: 3.3% of the inline
/// gateway thread at 100 K orders/s (2026-12-07, a profile under `ringex bench
/// gateway-floor`), and each merge passed that memory through the cache. Recording a
/// sample into the registry's histogram touches one counter.
const LATENCY_SAMPLES_MAX: usize = 4096;

/// Journals commands in ring order and, in `group` mode, makes each batch durable before
/// the engine may see it.
pub struct JournalStage {
    pub journal: Journal,
    pub group: bool,
    pub shared: Arc<Shared>,
    /// Listing of the snapshots, to prune segments no recovery needs any more.
    snapshots: Option<SnapshotStore>,
    /// The snapshot sequence the journal was last pruned for.
    pruned_for_snapshot_seq: u64,
    /// Split topology: the engine's doorbell, rung after each journaled batch.
    pub next_bell: Option<&'static crate::node::doorbell::Bell>,
    /// Highest sequence appended.
    seq_last: u64,
    batch_appended: u64,
    buf: [u8; COMMAND_SIZE_MAX],
    /// This node's id, in the epoch record a promotion journals.
    pub node_id: u32,
    /// A primary's replication: the tap the standby is fed from, and (in `sync` mode)
    /// the wait for the standby's acknowledgement before the engine may see a batch.
    pub replication: Option<crate::node::replication::Primary>,
}

impl JournalStage {
    pub fn new(
        journal: Journal,
        group: bool,
        shared: Arc<Shared>,
        snapshots: Option<SnapshotStore>,
    ) -> JournalStage {
        let seq_last = journal.seq_next() - 1;
        JournalStage {
            journal,
            group,
            shared,
            snapshots,
            pruned_for_snapshot_seq: 0,
            next_bell: None,
            seq_last,
            batch_appended: 0,
            buf: [0; COMMAND_SIZE_MAX],
            node_id: 0,
            replication: None,
        }
    }

    /// Appends a command slot; returns its (seq, chain), or (0, 0) if it was refused.
    pub fn append(&mut self, slot: &InputSlot) -> (u64, u64) {
        match slot.kind {
            SlotKind::Command => {}
            SlotKind::Shutdown => {
                self.make_durable();
                if let Err(e) = self.journal.sync() {
                    self.shared.fail(format!("final journal sync failed: {e}"));
                }
                return (0, 0);
            }
            SlotKind::Snapshot | SlotKind::StateHash | SlotKind::Query => return (0, 0),
            SlotKind::Checkpoint => {
                let [seq, every, lo, hi] = slot.aux;
                let hash = u128::from(lo) | (u128::from(hi) << 64);
                let payload = super::recovery::encode_checkpoint_record(seq, every, hash);
                let result =
                    self.journal
                        .append(super::RECORD_CHECKPOINT, 1, slot.timestamp_ns, &payload);
                return self.appended(result);
            }
            SlotKind::Replica | SlotKind::ReplicaEpoch | SlotKind::ReplicaCheckpoint => {
                if self.shared.refusing.load(Ordering::Relaxed) {
                    // Stopped by an earlier frame, said once: the frames behind it in the
                    // ring cannot follow it (each would be refused as out of sequence).
                    bump(&self.shared.metrics.commands_refused_by_journal, 1);
                    return (0, 0);
                }
                let result = self.journal.append_replica(&slot.frame[..slot.frame_len]);
                if let Err(e) = &result {
                    // The stream from the primary no longer fits this journal.
                    let advice = match e {
                        ringex_journal::Error::LowSpace { .. }
                        | ringex_journal::Error::PreallocFailed { .. } => {
                            "; the standby stops: free disk space (or move its data \
                             directory), then restart it, and it follows again from where \
                             its journal ends"
                        }
                        _ => "",
                    };
                    self.shared.fail(format!("standby: {e}{advice}"));
                    bump(&self.shared.metrics.commands_refused_by_journal, 1);
                    return (0, 0);
                }
                return self.appended(result);
            }
            SlotKind::Promote => return self.promote(slot),
        }
        let n = encode_command(&slot.command, &mut self.buf);
        let result = self.journal.append(
            RECORD_COMMAND,
            u16::from(CODEC_VERSION),
            slot.timestamp_ns,
            &self.buf[..n],
        );
        self.appended(result)
    }

    /// A promotion: everything appended so far made durable, then the new epoch and its
    /// record, synced before the engine (and so any client) sees anything after it.
    fn promote(&mut self, slot: &InputSlot) -> (u64, u64) {
        let epoch = slot.tag as u32;
        self.make_durable();
        if let Err(e) = self.journal.set_epoch(epoch) {
            self.shared
                .fail(format!("promotion to epoch {epoch} refused: {e}"));
            return (0, 0);
        }
        let payload = super::recovery::encode_epoch_record(epoch, self.node_id);
        let result = self
            .journal
            .append(super::RECORD_EPOCH, 1, slot.timestamp_ns, &payload);
        let appended = self.appended(result);
        self.make_durable();
        if let Err(e) = self.journal.sync() {
            self.shared.fail(format!(
                "promotion to epoch {epoch}: journal sync failed: {e}"
            ));
        }
        appended
    }

    /// Bookkeeping after an append: its (seq, chain), or (0, 0) when it was refused.
    fn appended(&mut self, result: ringex_journal::Result<u64>) -> (u64, u64) {
        match result {
            Ok(seq) => {
                assert_eq!(seq, self.seq_last + 1, "journal sequences are dense");
                self.seq_last = seq;
                self.batch_appended += 1;
                bump(&self.shared.metrics.commands_journaled, 1);
                (seq, self.journal.chain())
            }
            Err(e) => {
                // Low space and preallocation failures clear up by themselves: refuse this
                // command and carry on. A failed sync never does: stop taking input.
                if e.is_fatal() {
                    self.shared.fail(format!("journal failed: {e}"));
                } else {
                    self.shared.note(format!("journal refused an append: {e}"));
                }
                bump(&self.shared.metrics.commands_refused_by_journal, 1);
                (0, 0)
            }
        }
    }

    /// Makes the batch durable per the mode before the engine may see it: in `group` mode
    /// waits until everything appended is on disk; in `async` mode puts it in the page
    /// cache (a no-op for mapped appends; one pwrite for a journal writing through). If it
    /// never gets there, marks the node failed so the engine applies nothing past it.
    pub fn make_durable(&mut self) {
        if self.batch_appended == 0 {
            return;
        }
        self.batch_appended = 0;
        // The standby's copy leaves now, while this node syncs its own.
        if let Some(r) = &self.replication {
            r.ship();
        }
        self.make_durable_locally();
        if let Some(r) = &mut self.replication {
            if let Err(why) = r.wait_standby(self.seq_last, &self.shared) {
                // Stopping while the standby is away: what it never acknowledged is not
                // applied (its clients hear the outcome is unknown; a restart replays it).
                self.shared
                    .journal_failed_at
                    .fetch_min(r.acked_durable() + 1, Ordering::SeqCst);
                self.shared.note(why);
            }
        }
    }

    fn make_durable_locally(&mut self) {
        if !self.group {
            if let Err(e) = self.journal.write_staged() {
                self.durability_lost(e.to_string());
            }
            return;
        }
        let start = Instant::now();
        // Group commit on this thread: no hand-off to the journal's syncer and back.
        match self.journal.commit() {
            Ok(durable) => {
                assert!(durable >= self.seq_last, "commit covers every append");
                let waited_ns = start.elapsed().as_nanos() as u64;
                let mut h = self
                    .shared
                    .metrics
                    .durability_wait_ns
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                h.saturating_record(waited_ns.max(1));
            }
            Err(e) => self.durability_lost(e.to_string()),
        }
    }

    fn durability_lost(&self, why: String) {
        // Past this point nothing may be applied: what is on disk (group) or in the page
        // cache (async).
        let marks = self.journal.watermarks();
        let kept = if self.group {
            marks.durable()
        } else {
            marks.written()
        };
        self.shared
            .journal_failed_at
            .fetch_min(kept + 1, Ordering::SeqCst);
        self.shared
            .fail(format!("journal could not make commands durable: {why}"));
    }

    /// Prefaults the journal's next pages, after the batch's work is handed on, so the
    /// appends of the next batches take no page faults (bounded: a few tens of µs).
    pub fn prefault_ahead(&mut self) {
        self.journal.prefault_ahead();
    }

    /// After a new snapshot is on disk, removes the segments that lie entirely before the
    /// oldest retained snapshot (the journal also keeps what registered readers need).
    /// Rare (once per snapshot), so its file-system work may run on this thread.
    pub fn prune_if_snapshotted(&mut self) {
        let Some(store) = &self.snapshots else {
            return;
        };
        let snapshot_seq = self.shared.metrics.snapshot_seq.load(Ordering::Relaxed);
        if snapshot_seq <= self.pruned_for_snapshot_seq {
            return;
        }
        self.pruned_for_snapshot_seq = snapshot_seq;
        match self.journal.prune(store, false) {
            Ok(report) => {
                // Routine, once per snapshot: information, not a warning (a `warn` filter
                // keeps only what went wrong).
                if let Some(last) = report.segments.last() {
                    tracing::info!(
                        target: "ringex::node",
                        "pruned {} journal segment(s) up to seq {} (before the oldest kept \
                         snapshot)",
                        report.segments.len(),
                        last.seq_last
                    );
                }
            }
            Err(e) => self.shared.note(format!("journal pruning failed: {e}")),
        }
    }

    /// Split topology: the journaler thread's handler.
    pub fn handle(&mut self, slot: &InputSlot, end_of_batch: bool) {
        let (seq, chain) = self.append(slot);
        slot.set_journaled(seq, chain);
        if end_of_batch {
            self.make_durable();
            if let Some(bell) = self.next_bell {
                bell.ring();
            }
            self.prune_if_snapshotted();
            self.prefault_ahead();
        }
    }
}

/// A job for the snapshot writer thread.
pub struct SnapshotJob {
    pub seq: u64,
    pub chain: u64,
    pub epoch: u32,
    pub state_hash: u128,
    pub bytes: Vec<u8>,
}

/// When to take periodic snapshots.
#[derive(Clone, Copy, Debug)]
pub struct SnapshotPolicy {
    pub every_commands: u64,
    pub every: Option<Duration>,
}

/// The business-logic processor: applies durable commands to the exchange and emits the
/// events into the output ring.
pub struct EngineStage {
    pub exchange: Exchange,
    pub out: Outlet,
    pub shared: Arc<Shared>,
    pub epoch: u32,
    pub policy: SnapshotPolicy,
    pub snapshots: SyncSender<SnapshotJob>,
    pub control: Sender<ControlReply>,
    /// The timestamp of the command (or query) being applied, stamped on its outputs.
    timestamp_ns: u64,
    seq_last: u64,
    chain_last: u64,
    seq_snapshot: u64,
    /// The last sequence a snapshot was attempted at (taken or skipped): the count policy
    /// runs from it.
    seq_snapshot_attempted: u64,
    snapshot_taken_at: Instant,
    metrics_merged_at: Instant,
    /// TSC clock for per-command timing: a few ns per read, against ~25 for the vDSO.
    clock: quanta::Clock,
    events: Vec<Event>,
    replies: Vec<QueryReply>,
    /// Engine time of sampled commands, by kind, until the next merge.
    latency_samples_ns: Vec<(CommandKind, u64)>,
    /// Engine time of sampled orders by (market, order kind as its wire byte), until the
    /// next merge.
    order_latency_samples_ns: Vec<((u32, u8), u64)>,
    markets: BTreeMap<u32, MarketCounters>,
    /// State hashes at checkpoint sequences, compared with checkpoint records.
    pub checkpoints: super::recovery::Checkpoints,
    /// A primary: hand each checkpoint's hash to the producer, which journals it.
    pub publishes_checkpoints: bool,
}

impl EngineStage {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        exchange: Exchange,
        seq_last: u64,
        chain_last: u64,
        seq_snapshot: u64,
        out: Outlet,
        shared: Arc<Shared>,
        epoch: u32,
        policy: SnapshotPolicy,
        snapshots: SyncSender<SnapshotJob>,
        control: Sender<ControlReply>,
    ) -> EngineStage {
        EngineStage {
            exchange,
            out,
            shared,
            epoch,
            policy,
            snapshots,
            control,
            timestamp_ns: 0,
            seq_last,
            chain_last,
            // The state's newest snapshot: after a restart that replayed records, the
            // state is ahead of it, and the next snapshot (the final one at the latest)
            // records the replayed commands too.
            seq_snapshot,
            seq_snapshot_attempted: seq_snapshot,
            snapshot_taken_at: Instant::now(),
            metrics_merged_at: Instant::now(),
            clock: quanta::Clock::new(),
            events: Vec::with_capacity(1024),
            replies: Vec::with_capacity(1024),
            latency_samples_ns: Vec::with_capacity(LATENCY_SAMPLES_MAX),
            order_latency_samples_ns: Vec::with_capacity(LATENCY_SAMPLES_MAX),
            markets: BTreeMap::new(),
            checkpoints: super::recovery::Checkpoints::new(0),
            publishes_checkpoints: false,
        }
    }

    /// Split topology: the engine thread's handler.
    pub fn handle(&mut self, slot: &InputSlot, end_of_batch: bool) {
        let item = Item {
            kind: slot.kind,
            tag: slot.tag,
            command: slot.command,
            query: slot.query,
            seq: slot.seq(),
            chain: slot.chain(),
            timestamp_ns: slot.timestamp_ns,
            aux: slot.aux,
        };
        self.apply(&item);
        if end_of_batch {
            self.end_of_batch();
        }
    }

    /// Applies one slot's content. `seq` 0 means the journal refused the command.
    pub fn apply(&mut self, item: &Item) {
        self.timestamp_ns = item.timestamp_ns;
        match item.kind {
            SlotKind::Command | SlotKind::Replica => {
                self.apply_command(item.tag, &item.command, item.seq, item.chain)
            }
            SlotKind::Checkpoint | SlotKind::ReplicaCheckpoint => {
                if item.seq != 0 {
                    assert_eq!(item.seq, self.seq_last + 1, "the checkpoint is in order");
                    self.seq_last = item.seq;
                    self.chain_last = item.chain;
                    let [seq, every, lo, hi] = item.aux;
                    let hash = u128::from(lo) | (u128::from(hi) << 64);
                    match self.checkpoints.check(seq, every, hash) {
                        Ok(true) => {
                            self.shared
                                .metrics
                                .checkpoints_matched
                                .fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(false) => {}
                        Err(why) => self.shared.fail(format!(
                            "{why}: this node's state is not the primary's; it stops taking \
                             input (compare `ringex journal replay` on both journals)"
                        )),
                    }
                }
            }
            SlotKind::ReplicaEpoch => {
                if item.seq != 0 {
                    assert_eq!(item.seq, self.seq_last + 1, "the epoch record is in order");
                    self.seq_last = item.seq;
                    self.chain_last = item.chain;
                    self.epoch = item.tag as u32;
                    self.shared
                        .epoch
                        .store(u64::from(self.epoch), Ordering::Release);
                }
            }
            SlotKind::Promote => {
                if item.seq != 0 {
                    assert_eq!(item.seq, self.seq_last + 1, "the epoch record is in order");
                    self.seq_last = item.seq;
                    self.chain_last = item.chain;
                    self.epoch = item.tag as u32;
                    self.shared
                        .epoch
                        .store(u64::from(self.epoch), Ordering::Release);
                }
                let _ = self.control.send(ControlReply::Promoted {
                    seq: item.seq,
                    epoch: item.tag as u32,
                });
            }
            SlotKind::Query => self.answer(item.tag, &item.query),
            SlotKind::Snapshot => self.snapshot(true),
            SlotKind::StateHash => {
                self.merge_metrics();
                let reply = ControlReply::StateHash {
                    seq: self.seq_last,
                    chain: self.chain_last,
                    hash: self.exchange.state_hash(),
                };
                let _ = self.control.send(reply);
            }
            SlotKind::Shutdown => {
                self.merge_metrics();
                self.snapshot(true);
                let reply = ControlReply::Stopped {
                    seq: self.seq_last,
                    hash: self.exchange.state_hash(),
                };
                let _ = self.control.send(reply);
            }
        }
    }

    fn apply_command(&mut self, tag: u64, cmd: &Command, seq: u64, chain: u64) {
        let failed_at = self.shared.journal_failed_at.load(Ordering::SeqCst);
        if seq == 0 || seq >= failed_at {
            // Not durable: not applied in this run. The client hears which of the two it
            // is: never written (final), or written before the disk failed (a restart
            // replays it if its record survived).
            let reason = if seq == 0 {
                RejectReason::Unavailable
            } else {
                RejectReason::OutcomeUnknown
            };
            let event = Event::Rejected {
                kind: cmd.kind(),
                account: 0,
                order_ref: 0,
                reason,
            };
            self.publish(seq, tag, Output::Event(event), true);
            bump(&self.shared.metrics.commands_unavailable, 1);
            return;
        }
        assert_eq!(
            seq,
            self.seq_last + 1,
            "the engine applies every journaled command once, in order"
        );
        // Engine latency is sampled (one command in LATENCY_SAMPLE_EVERY): two clock reads
        // and a histogram update per command cost a tenth of the engine's own time.
        let timed = seq.is_multiple_of(LATENCY_SAMPLE_EVERY);
        let start = if timed { self.clock.raw() } else { 0 };
        self.events.clear();
        self.exchange.apply(cmd, &mut self.events);
        if timed {
            let took_ns = self.clock.delta_as_nanos(start, self.clock.raw()).max(1);
            if self.latency_samples_ns.len() == LATENCY_SAMPLES_MAX {
                self.merge_metrics();
            }
            self.latency_samples_ns.push((cmd.kind(), took_ns));
            if let Command::Place(p) = cmd {
                self.order_latency_samples_ns
                    .push(((p.market, p.kind as u8), took_ns));
            }
        }
        self.seq_last = seq;
        self.chain_last = chain;
        if let Command::Place(p) = cmd {
            self.markets.entry(p.market).or_default().orders += 1;
        }
        let count = self.events.len();
        assert!(count > 0, "every command produces at least one event");
        for event in &self.events {
            if let Event::Trade { market, .. } = *event {
                self.markets.entry(market).or_default().trades += 1;
            }
        }
        self.publish_events(seq, tag);
        bump(&self.shared.metrics.commands_applied, 1);
        if let Some(hash) = self.checkpoints.after_apply(seq, &self.exchange) {
            if self.publishes_checkpoints {
                let every = self.checkpoints.every;
                *self
                    .shared
                    .checkpoint_pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some((seq, every, hash));
                self.shared.checkpoint_ready.store(true, Ordering::Release);
            }
        }
        let due = self.policy.every_commands > 0
            && seq - self.seq_snapshot_attempted >= self.policy.every_commands;
        if due {
            self.snapshot(false);
        }
    }

    /// Runs a read-only query in ring order and publishes its replies.
    fn answer(&mut self, tag: u64, query: &Query) {
        self.replies.clear();
        self.exchange.query(query, &mut self.replies);
        let count = self.replies.len();
        // Stamped with the last command applied: the answer reflects it and nothing after.
        let seq = self.seq_last;
        for i in 0..count {
            let reply = self.replies[i];
            self.publish(seq, tag, Output::Reply(reply), i + 1 == count);
        }
    }

    /// Publishes the command's events as one batch: one claim of the output ring.
    fn publish_events(&mut self, seq: u64, tag: u64) {
        let count = self.events.len();
        let events = &self.events;
        let timestamp_ns = self.timestamp_ns;
        self.out
            .emit(count, &self.shared.discard_output, |i, slot| {
                slot.seq = seq;
                slot.tag = tag;
                slot.item = Output::Event(events[i]);
                slot.last = i + 1 == count;
                slot.timestamp_ns = timestamp_ns;
            });
        bump(&self.shared.metrics.events_produced, count as u64);
    }

    fn publish(&mut self, seq: u64, tag: u64, item: Output, last: bool) {
        let timestamp_ns = self.timestamp_ns;
        self.out.emit(1, &self.shared.discard_output, |_, slot| {
            slot.seq = seq;
            slot.tag = tag;
            slot.item = item;
            slot.last = last;
            slot.timestamp_ns = timestamp_ns;
        });
        bump(&self.shared.metrics.events_produced, 1);
    }

    /// Copies the state (the only time matching pauses) and hands the bytes to the
    /// snapshot writer thread. A periodic snapshot never waits for the writer: when its
    /// queue is full (the disk is slower than the policy), this one is skipped and the
    /// next one due is tried. The final snapshot (`wait`) waits for room.
    fn snapshot(&mut self, wait: bool) {
        self.snapshot_taken_at = Instant::now();
        if self.seq_last == self.seq_snapshot || self.seq_last == 0 {
            return;
        }
        let (bytes, state_hash) = self.exchange.snapshot_and_hash();
        let job = SnapshotJob {
            seq: self.seq_last,
            chain: self.chain_last,
            epoch: self.epoch,
            state_hash,
            bytes,
        };
        let sent = if wait {
            self.snapshots
                .send(job)
                .map_err(|_| "the snapshot writer is gone")
        } else {
            self.snapshots.try_send(job).map_err(|e| match e {
                std::sync::mpsc::TrySendError::Full(_) => {
                    "the snapshot writer is still writing earlier ones"
                }
                std::sync::mpsc::TrySendError::Disconnected(_) => "the snapshot writer is gone",
            })
        };
        // Either way the policy counts from here: a skipped snapshot is retried when the
        // next one is due, not at every command.
        self.seq_snapshot_attempted = self.seq_last;
        match sent {
            Ok(()) => self.seq_snapshot = self.seq_last,
            Err(why) => self
                .shared
                .note(format!("snapshot at seq {} skipped: {why}", self.seq_last)),
        }
    }

    /// Merges local metrics (a lock every few ms, never per command) and checks the
    /// snapshot timer.
    pub fn end_of_batch(&mut self) {
        self.shared
            .applied_seq
            .store(self.seq_last, Ordering::Release);
        self.shared.wake_consumer();
        let now = Instant::now();
        if now.duration_since(self.metrics_merged_at) >= METRICS_MERGE_EVERY {
            self.metrics_merged_at = now;
            self.merge_metrics();
        }
        if let Some(every) = self.policy.every {
            if now.duration_since(self.snapshot_taken_at) >= every {
                self.snapshot(false);
            }
        }
    }

    fn merge_metrics(&mut self) {
        {
            let mut shared = self
                .shared
                .metrics
                .engine_latency_ns
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            for (kind, ns) in self.latency_samples_ns.drain(..) {
                shared
                    .entry(kind)
                    .or_insert_with(new_histogram)
                    .saturating_record(ns);
            }
        }
        {
            let mut shared = self
                .shared
                .metrics
                .order_latency_ns
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            for (key, ns) in self.order_latency_samples_ns.drain(..) {
                shared
                    .entry(key)
                    .or_insert_with(new_histogram)
                    .saturating_record(ns);
            }
        }
        {
            let mut shared = self
                .shared
                .metrics
                .markets
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            for (m, c) in &mut self.markets {
                let s = shared.entry(*m).or_default();
                s.orders += c.orders;
                s.trades += c.trades;
                *c = MarketCounters::default();
            }
        }
    }
}

/// A stage dropped while its thread unwinds (a broken invariant) marks the node failed:
/// intake stops and clients are answered `Unavailable` at once, rather than waiting on a
/// thread that is gone. The panic message itself goes to stderr from the panic hook.
fn fail_if_panicking(shared: &Shared, stage: &str) {
    if std::thread::panicking() {
        shared.fail(format!(
            "the {stage} stage panicked (see the message above); the node takes no more \
             input: restart it"
        ));
    }
}

impl Drop for JournalStage {
    fn drop(&mut self) {
        fail_if_panicking(&self.shared, "journal");
    }
}

impl Drop for EngineStage {
    fn drop(&mut self) {
        fail_if_panicking(&self.shared, "engine");
    }
}

/// Where the engine stage puts its events.
pub enum Outlet {
    /// The output ring, drained by the publisher thread or the polling owner. A claim takes
    /// at most `claim_max` slots (half the ring), so it can always be met once the reader
    /// catches up.
    Ring {
        out: SingleProducer<OutputSlot, SingleConsumerBarrier>,
        claim_max: usize,
    },
    /// Inline topology: a queue on the owner's own thread, drained after each batch. The
    /// owner bounds it by submitting nothing while it holds more than a ring's worth; one
    /// command's events (a cancel-all, a halt cancelling a whole book) may exceed that
    /// once, by as many events as the engine holds orders.
    Queue(VecDeque<OutputSlot>),
}

impl Outlet {
    pub fn ring(out: SingleProducer<OutputSlot, SingleConsumerBarrier>, size: usize) -> Outlet {
        assert!(size >= 2 && size.is_power_of_two());
        Outlet::Ring {
            out,
            claim_max: size / 2,
        }
    }

    /// Emits `count` slots filled by `fill(i, slot)`: one claim of the ring, or one per
    /// `claim_max` slots for a command with more events than that (a cancel-all of
    /// thousands of orders: a single claim larger than the ring could never be met). Waits
    /// for room (bounded: a publisher that never drains is a bug) unless `discard` says
    /// nobody will read the ring any more.
    fn emit(&mut self, count: usize, discard: &AtomicBool, fill: impl Fn(usize, &mut OutputSlot)) {
        match self {
            Outlet::Ring { out, claim_max } => {
                let claims = count.div_ceil(*claim_max);
                for claim in 0..claims {
                    let from = claim * *claim_max;
                    let n = (count - from).min(*claim_max);
                    let published = retry_until(OUTPUT_WAIT_MAX, || {
                        out.try_batch_publish(n, |slots| {
                            for (i, slot) in slots.enumerate() {
                                fill(from + i, slot);
                            }
                        })
                        .ok()
                        .or_else(|| discard.load(Ordering::Relaxed).then_some(0))
                    });
                    assert!(
                        published.is_some(),
                        "publisher stalled for {OUTPUT_WAIT_MAX:?}"
                    );
                }
            }
            Outlet::Queue(queue) => {
                for i in 0..count {
                    let mut slot = OutputSlot::empty();
                    fill(i, &mut slot);
                    queue.push_back(slot);
                }
            }
        }
    }
}

/// A slot's content, copied so the fused stage can apply it after the batch is durable.
#[derive(Clone, Copy)]
pub struct Item {
    pub kind: SlotKind,
    pub tag: u64,
    pub command: Command,
    pub query: Query,
    pub seq: u64,
    pub chain: u64,
    /// The producer's stamp, carried onto the outputs (the publisher's clock).
    pub timestamp_ns: u64,
    pub aux: [u64; 4],
}

/// The fused topology: one thread journals a batch, makes it durable, applies it and
/// emits its events.
pub struct FusedStage {
    pub journal: JournalStage,
    pub engine: EngineStage,
    pending: Vec<Item>,
    batch_max: usize,
}

impl FusedStage {
    pub fn new(journal: JournalStage, engine: EngineStage, batch_max: usize) -> FusedStage {
        assert!(batch_max > 0);
        FusedStage {
            journal,
            engine,
            pending: Vec::with_capacity(batch_max),
            batch_max,
        }
    }

    pub fn handle(&mut self, slot: &InputSlot, end_of_batch: bool) {
        let (seq, chain) = self.journal.append(slot);
        self.pending.push(Item {
            kind: slot.kind,
            tag: slot.tag,
            command: slot.command,
            query: slot.query,
            seq,
            chain,
            timestamp_ns: slot.timestamp_ns,
            aux: slot.aux,
        });
        if end_of_batch || self.pending.len() == self.batch_max {
            self.end_batch();
        }
    }

    /// Makes the batch durable, applies it and emits its events.
    pub fn end_batch(&mut self) {
        self.journal.make_durable();
        for item in &self.pending {
            self.engine.apply(item);
        }
        self.pending.clear();
        self.engine.end_of_batch();
        self.journal.prune_if_snapshotted();
        self.journal.prefault_ahead();
    }

    /// Journaled (or refused) items not yet applied.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}
