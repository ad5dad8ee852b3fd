//! The metrics registry every stage writes to: counters and gauges as atomics (one writer
//! each), latency histograms (hdrhistogram) that each stage fills locally and merges here
//! once per batch, so the hot path takes no lock per command.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use hdrhistogram::Histogram;
use ringex_engine::{CommandKind, MarketId};
use ringex_gateway::refusals::Refusal;
use ringex_gateway::server::GatewayStats;
use ringex_journal::Watermarks;

/// Histograms track 1 ns .. 60 s with 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

#[derive(Default, Debug, Clone, Copy)]
pub struct MarketCounters {
    pub orders: u64,
    pub trades: u64,
}

/// One value per cache line (128 bytes: adjacent-line prefetch pairs lines). The counters
/// have different writer threads (producer, pipeline, publisher); sharing a line made
/// every producer bump stall the pipeline's next one (measured: 79% of the engine stage's
/// `apply` samples sat on the stores right after publishing, while the producer counted
/// backpressure).
#[derive(Default, Debug)]
#[repr(align(128))]
pub struct Padded<T>(pub T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

pub struct Metrics {
    pub started: Instant,
    /// Commands the producer published into the input ring.
    pub commands_submitted: Padded<AtomicU64>,
    /// Submissions refused because the input ring stayed full (backpressure).
    pub commands_backpressured: Padded<AtomicU64>,
    /// Commands appended to the journal.
    pub commands_journaled: Padded<AtomicU64>,
    /// Commands the engine applied.
    pub commands_applied: Padded<AtomicU64>,
    /// Commands refused because they could not be made durable.
    pub commands_unavailable: Padded<AtomicU64>,
    /// Commands the journal refused to append (low space, preallocation failing): they
    /// passed the journaler without being journaled.
    pub commands_refused_by_journal: Padded<AtomicU64>,
    /// Events the engine put into the output ring.
    pub events_produced: Padded<AtomicU64>,
    /// Events the publisher handed on.
    pub events_published: Padded<AtomicU64>,
    /// Sequence of the newest snapshot written (0: none).
    pub snapshot_seq: Padded<AtomicU64>,
    /// The journal's written and durable watermarks.
    pub journal: OnceLock<Arc<Watermarks>>,
    /// The gateway's counters (connections, refusals by reason), once one serves.
    pub gateway: OnceLock<Arc<GatewayStats>>,
    /// A primary's link to its standby (acknowledged sequences, connection).
    pub replication: OnceLock<Arc<ringex_replicator::link::Link>>,
    /// A `sync` primary that went on as `async` (its standby stayed away too long), until
    /// the standby catches up: for an alert.
    pub replication_degraded: AtomicBool,
    /// Times a `sync` primary degraded to `async`.
    pub replication_degradations: AtomicU64,
    /// Checkpoint records whose state hash this node matched.
    pub checkpoints_matched: AtomicU64,
    /// Time from a batch's last append until it was durable, in ns.
    pub durability_wait_ns: Mutex<Histogram<u64>>,
    /// Engine time per command, in ns, by command kind.
    pub engine_latency_ns: Mutex<BTreeMap<CommandKind, Histogram<u64>>>,
    /// Engine time per order (sampled as above), in ns, by market and order kind (its
    /// wire byte: 1 limit, 2 market).
    pub order_latency_ns: Mutex<BTreeMap<(MarketId, u8), Histogram<u64>>>,
    pub markets: Mutex<BTreeMap<MarketId, MarketCounters>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            started: Instant::now(),
            commands_submitted: Padded::default(),
            commands_backpressured: Padded::default(),
            commands_journaled: Padded::default(),
            commands_applied: Padded::default(),
            commands_unavailable: Padded::default(),
            commands_refused_by_journal: Padded::default(),
            events_produced: Padded::default(),
            events_published: Padded::default(),
            snapshot_seq: Padded::default(),
            journal: OnceLock::new(),
            gateway: OnceLock::new(),
            replication: OnceLock::new(),
            replication_degraded: AtomicBool::new(false),
            replication_degradations: AtomicU64::new(0),
            checkpoints_matched: AtomicU64::new(0),
            durability_wait_ns: Mutex::new(new_histogram()),
            engine_latency_ns: Mutex::new(BTreeMap::new()),
            order_latency_ns: Mutex::new(BTreeMap::new()),
            markets: Mutex::new(BTreeMap::new()),
        }
    }
}

fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// Adds to a counter that has exactly one writer thread.
pub fn bump(a: &AtomicU64, n: u64) {
    a.store(a.load(Ordering::Relaxed) + n, Ordering::Relaxed);
}

/// A point-in-time copy for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub submitted: u64,
    pub journaled: u64,
    pub applied: u64,
    pub unavailable: u64,
    pub backpressured: u64,
    pub events_published: u64,
    /// Input-ring occupancy ahead of the journaler and of the engine.
    pub input_ring_journaler: u64,
    pub input_ring_engine: u64,
    /// Output-ring occupancy ahead of the publisher.
    pub output_ring_publisher: u64,
    pub journal_written: u64,
    pub journal_durable: u64,
    /// The journal's sync rounds (group commits or async flushes) and their total time.
    pub journal_syncs: u64,
    pub journal_sync_ns_total: u64,
    pub snapshot_seq: u64,
    pub durability_wait_ns_p99: u64,
    pub engine_ns_p99: u64,
    /// The gateway's refusals of peers since start, by reason in [`Refusal::ALL`] order.
    pub refusals: [u64; Refusal::COUNT],
}

impl Summary {
    /// Nothing happened between `previous` and this: no command submitted, refused or
    /// applied, no event published, no snapshot, no refusal of a peer. (Sync rounds do
    /// not count: the async mode's background flush runs on an idle node too.)
    pub fn quiet_since(&self, previous: &Summary) -> bool {
        let Summary {
            submitted,
            journaled,
            applied,
            unavailable,
            backpressured,
            events_published,
            snapshot_seq,
            refusals,
            ..
        } = *self;
        (
            submitted,
            journaled,
            applied,
            unavailable,
            backpressured,
            events_published,
            snapshot_seq,
            refusals,
        ) == (
            previous.submitted,
            previous.journaled,
            previous.applied,
            previous.unavailable,
            previous.backpressured,
            previous.events_published,
            previous.snapshot_seq,
            previous.refusals,
        )
    }
}

impl Metrics {
    pub fn summary(&self) -> Summary {
        let submitted = get(&self.commands_submitted);
        let journaled = get(&self.commands_journaled);
        let applied = get(&self.commands_applied) + get(&self.commands_unavailable);
        let produced = get(&self.events_produced);
        let published = get(&self.events_published);
        let (written, durable) = self
            .journal
            .get()
            .map_or((0, 0), |w| (w.written(), w.durable()));
        let (syncs, sync_ns_total) = self.journal.get().map_or((0, 0), |w| w.syncs());
        let engine_ns_p99 = {
            let per_kind = self
                .engine_latency_ns
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let mut all = new_histogram();
            for h in per_kind.values() {
                all.add(h).expect("same bounds");
            }
            all.value_at_quantile(0.99)
        };
        Summary {
            submitted,
            journaled,
            applied: get(&self.commands_applied),
            unavailable: get(&self.commands_unavailable),
            backpressured: get(&self.commands_backpressured),
            events_published: published,
            // A command the journal refused passed the journaler too.
            input_ring_journaler: submitted
                .saturating_sub(journaled)
                .saturating_sub(get(&self.commands_refused_by_journal)),
            input_ring_engine: submitted.saturating_sub(applied),
            output_ring_publisher: produced.saturating_sub(published),
            journal_written: written,
            journal_durable: durable,
            journal_syncs: syncs,
            journal_sync_ns_total: sync_ns_total,
            snapshot_seq: get(&self.snapshot_seq),
            durability_wait_ns_p99: self
                .durability_wait_ns
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .value_at_quantile(0.99),
            engine_ns_p99,
            refusals: self
                .gateway
                .get()
                .map_or([0; Refusal::COUNT], |g| g.refusals.snapshot()),
        }
    }

    /// The one-line log summary `ringex start` prints every few seconds. `previous` and
    /// `seconds` give the rate since the last line.
    pub fn summary_line(&self, previous: &Summary, seconds: f64) -> (Summary, String) {
        let s = self.summary();
        let rate = (s.applied - previous.applied) as f64 / seconds.max(1e-9);
        let syncs = s.journal_syncs - previous.journal_syncs;
        let sync_us_avg = (s.journal_sync_ns_total - previous.journal_sync_ns_total)
            .checked_div(syncs)
            .unwrap_or(0)
            / 1000;
        let sync_us_max = self.journal.get().map_or(0, |w| w.take_sync_ns_max()) / 1000;
        let (orders, trades) = {
            let m = self.markets.lock().unwrap_or_else(|e| e.into_inner());
            m.values()
                .fold((0, 0), |(o, t), c| (o + c.orders, t + c.trades))
        };
        let line = format!(
            "applied={} ({rate:.0}/s) journal written={} durable={} syncs={syncs} \
             sync_avg={sync_us_avg}us sync_max={sync_us_max}us ring journaler={} engine={} \
             publisher={} backpressured={} unavailable={} orders={orders} trades={trades} \
             durable_wait_p99={}us engine_p99={}ns snapshot={} refused={}",
            s.applied,
            s.journal_written,
            s.journal_durable,
            s.input_ring_journaler,
            s.input_ring_engine,
            s.output_ring_publisher,
            s.backpressured,
            s.unavailable,
            s.durability_wait_ns_p99 / 1000,
            s.engine_ns_p99,
            s.snapshot_seq,
            refused_since(previous, &s),
        );
        let line = match self.replication.get() {
            Some(link) => format!("{line} {}", self.replication_token(link, s.journal_written)),
            None => line,
        };
        (s, line)
    }

    /// A primary's replication, for the log: `repl=connected(lag=12,acked_ms=3)`,
    /// `repl=DEGRADED(...)`, `repl=disconnected(lag=...,acked_ms=never)`.
    fn replication_token(&self, link: &ringex_replicator::link::Link, written: u64) -> String {
        let lag = written.saturating_sub(link.durable());
        let acked = link
            .since_ack()
            .map_or("never".to_string(), |d| d.as_millis().to_string());
        let state = if link.fenced_by().is_some() {
            "FENCED"
        } else if self.replication_degraded.load(Ordering::Relaxed) {
            "DEGRADED"
        } else if link.connected() {
            "connected"
        } else {
            "disconnected"
        };
        format!("repl={state}(lag={lag},acked_ms={acked})")
    }
}

/// The refusals between two summaries: their sum, then the reasons that had any, as
/// one token: `0`, or `1987(per-ip-limit=1950,bad-signature=37)`.
fn refused_since(previous: &Summary, now: &Summary) -> String {
    let mut total = 0;
    let mut reasons = Vec::new();
    for reason in Refusal::ALL {
        let i = reason.index();
        let n = now.refusals[i].saturating_sub(previous.refusals[i]);
        if n > 0 {
            total += n;
            reasons.push(format!("{reason}={n}"));
        }
    }
    if reasons.is_empty() {
        "0".to_string()
    } else {
        format!("{total}({})", reasons.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_is_quiet_when_nothing_but_background_flushes_happened() {
        let before = Summary {
            applied: 10,
            journal_syncs: 3,
            ..Summary::default()
        };
        let flushed = Summary {
            journal_syncs: 9,
            journal_sync_ns_total: 1_000,
            ..before
        };
        assert!(flushed.quiet_since(&before));
        let applied = Summary {
            applied: 11,
            ..flushed
        };
        assert!(!applied.quiet_since(&before));
        let mut refused = before;
        refused.refusals[0] += 1;
        assert!(!refused.quiet_since(&before));
    }

    #[test]
    fn the_summary_line_counts_the_gateways_refusals_of_the_interval_by_reason() {
        let metrics = Metrics::default();
        let (first, line) = metrics.summary_line(&Summary::default(), 1.0);
        assert!(line.ends_with(" refused=0"), "no gateway yet: {line}");
        let stats = Arc::new(GatewayStats::default());
        assert!(metrics.gateway.set(Arc::clone(&stats)).is_ok());
        for _ in 0..1950 {
            stats.refusals.add(Refusal::PerIpLimit);
        }
        stats.refusals.add(Refusal::BadSignature);
        let (second, line) = metrics.summary_line(&first, 1.0);
        assert!(
            line.ends_with(" refused=1951(per-ip-limit=1950,bad-signature=1)"),
            "{line}"
        );
        assert_eq!(second.refusals[Refusal::PerIpLimit.index()], 1950);
        // The next interval counts only its own.
        stats.refusals.add(Refusal::BadSignature);
        let (_, line) = metrics.summary_line(&second, 1.0);
        assert!(line.ends_with(" refused=1(bad-signature=1)"), "{line}");
    }
}
