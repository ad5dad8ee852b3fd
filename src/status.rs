//! The node's side of HTTP `/health` and `/metrics` (docs/http.md): what the pipeline,
//! the journal, replication and the binary gateway count, read from the same atomics
//! and histograms the log summary reads, without resetting anything.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hdrhistogram::Histogram;
use ringex_engine::{CommandKind, MarketId};
use ringex_gateway::http::NodeStatus;
use ringex_gateway::prom::{Exposition, LATENCY_BUCKETS_NS};
use ringex_gateway::refusals::Refusal;
use ringex_gateway::server::GatewayStats;

use crate::config::{Config, ReplicationMode, Role};
use crate::metrics::Metrics;
use crate::node::{Node, Shared};

pub struct NodeHealth {
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    gateway: Arc<GatewayStats>,
    role: Role,
    mode: ReplicationMode,
}

impl NodeHealth {
    pub fn new(config: &Config, node: &Node, gateway: Arc<GatewayStats>) -> NodeHealth {
        NodeHealth {
            shared: node.shared(),
            metrics: node.metrics(),
            gateway,
            role: config.node.role,
            mode: config.replication.mode,
        }
    }
}

fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Single => "single",
        Role::Primary => "primary",
        Role::Standby => "standby",
    }
}

fn kind_name(kind: CommandKind) -> String {
    format!("{kind:?}")
        .chars()
        .enumerate()
        .fold(String::new(), |mut s, (i, c)| {
            if c.is_ascii_uppercase() && i > 0 {
                s.push('_');
            }
            s.push(c.to_ascii_lowercase());
            s
        })
}

/// A histogram in ns as Prometheus buckets in seconds; the sum from its recorded values
/// (within its 3 significant digits).
fn write_histogram(e: &mut Exposition, name: &str, labels: &[(&str, &str)], h: &Histogram<u64>) {
    let buckets: Vec<(&str, u64)> = LATENCY_BUCKETS_NS
        .iter()
        .map(|(ns, le)| (*le, h.count_between(0, *ns)))
        .collect();
    let sum: u128 = h
        .iter_recorded()
        .map(|v| {
            u128::from(h.median_equivalent(v.value_iterated_to())) * u128::from(v.count_at_value())
        })
        .sum();
    e.histogram(name, labels, &buckets, sum, h.len());
}

impl NodeStatus for NodeHealth {
    fn health(&self, out: &mut Vec<u8>) -> bool {
        let failure = self.shared.failure();
        let halted = self.shared.replication_halted.load(Ordering::Relaxed);
        let (written, durable) = self
            .metrics
            .journal
            .get()
            .map_or((0, 0), |w| (w.written(), w.durable()));
        let mut j = format!(
            "\"role\":\"{}\",\"epoch\":{},\"sequence\":{},\"journal\":{{\"written\":{written},\
             \"durable\":{durable}}},\"snapshot\":{}",
            role_name(self.role),
            get(&self.shared.epoch),
            get(&self.shared.applied_seq),
            get(&self.metrics.snapshot_seq),
        );
        match self.metrics.replication.get() {
            Some(link) => {
                let since = link
                    .since_ack()
                    .map_or("null".to_string(), |d| d.as_millis().to_string());
                let state = if link.fenced_by().is_some() {
                    "fenced"
                } else if halted {
                    "halted"
                } else if self.metrics.replication_degraded.load(Ordering::Relaxed) {
                    "degraded"
                } else if link.connected() {
                    "connected"
                } else {
                    "disconnected"
                };
                let mode = match self.mode {
                    ReplicationMode::None => "none",
                    ReplicationMode::Async => "async",
                    ReplicationMode::Sync => "sync",
                };
                j.push_str(&format!(
                    ",\"replication\":{{\"mode\":\"{mode}\",\"state\":\"{state}\",\
                     \"standbyDurable\":{},\"lag\":{},\"sinceAckMs\":{since}}}",
                    link.durable(),
                    written.saturating_sub(link.durable()),
                ));
            }
            None => j.push_str(",\"replication\":null"),
        }
        j.push_str(",\"failure\":");
        out.extend_from_slice(j.as_bytes());
        match &failure {
            Some(why) => ringex_gateway::publisher::push_json_str(out, why),
            None => out.extend_from_slice(b"null"),
        }
        failure.is_none() && !halted
    }

    fn metrics(&self, pairs: &[(MarketId, String)], e: &mut Exposition) {
        let pair = |id: MarketId| {
            pairs
                .iter()
                .find(|(m, _)| *m == id)
                .map_or_else(|| format!("market-{id}"), |(_, s)| s.clone())
        };
        let m = &*self.metrics;
        e.family(
            "exchange_order_latency_seconds",
            "histogram",
            "Engine time to apply an order, sampled (one command in 8), by market and type.",
        );
        {
            let h = m.order_latency_ns.lock().unwrap_or_else(|p| p.into_inner());
            for ((market, kind), h) in h.iter() {
                let kind = if *kind == 2 { "market" } else { "limit" };
                let name = pair(*market);
                write_histogram(
                    e,
                    "exchange_order_latency_seconds",
                    &[("pair", &name), ("type", kind)],
                    h,
                );
            }
        }
        let markets = m.markets.lock().unwrap_or_else(|p| p.into_inner()).clone();
        e.family(
            "exchange_orders_processed_total",
            "counter",
            "Orders the engine applied, by market.",
        );
        for (market, symbol) in pairs {
            let orders = markets.get(market).map_or(0, |c| c.orders);
            e.sample(
                "exchange_orders_processed_total",
                &[("pair", symbol)],
                orders,
            );
        }
        e.family(
            "exchange_trades_total",
            "counter",
            "Trades the engine matched, by market.",
        );
        for (market, symbol) in pairs {
            let trades = markets.get(market).map_or(0, |c| c.trades);
            e.sample("exchange_trades_total", &[("pair", symbol)], trades);
        }
        let s = m.summary();
        let counters = [
            (
                "ringex_commands_submitted_total",
                "Commands published into the input ring.",
                get(&m.commands_submitted),
            ),
            (
                "ringex_commands_backpressured_total",
                "Submissions refused because the input ring stayed full.",
                get(&m.commands_backpressured),
            ),
            (
                "ringex_commands_journaled_total",
                "Commands appended to the journal.",
                get(&m.commands_journaled),
            ),
            (
                "ringex_commands_applied_total",
                "Commands the engine applied.",
                get(&m.commands_applied),
            ),
            (
                "ringex_commands_unavailable_total",
                "Commands refused because they could not be made durable.",
                get(&m.commands_unavailable),
            ),
            (
                "ringex_commands_refused_by_journal_total",
                "Commands the journal refused to append.",
                get(&m.commands_refused_by_journal),
            ),
            (
                "ringex_events_produced_total",
                "Events the engine put into the output ring.",
                get(&m.events_produced),
            ),
            (
                "ringex_events_published_total",
                "Events handed on to the front-ends.",
                get(&m.events_published),
            ),
            (
                "ringex_journal_syncs_total",
                "The journal's sync rounds (group commits or flushes).",
                s.journal_syncs,
            ),
            (
                "ringex_replication_degradations_total",
                "Times a sync primary went on as async.",
                get(&m.replication_degradations),
            ),
            (
                "ringex_checkpoints_matched_total",
                "Checkpoint records whose state hash this node matched.",
                get(&m.checkpoints_matched),
            ),
        ];
        for (name, help, v) in counters {
            e.single(name, "counter", help, v);
        }
        e.family(
            "ringex_journal_sync_seconds_total",
            "counter",
            "Time spent in the journal's sync rounds.",
        );
        e.text.push_str(&format!(
            "ringex_journal_sync_seconds_total {}.{:09}\n",
            s.journal_sync_ns_total / 1_000_000_000,
            s.journal_sync_ns_total % 1_000_000_000
        ));
        let gauges = [
            (
                "ringex_sequence_applied",
                "The engine's last applied sequence.",
                get(&self.shared.applied_seq),
            ),
            (
                "ringex_journal_written_sequence",
                "The journal's written watermark.",
                s.journal_written,
            ),
            (
                "ringex_journal_durable_sequence",
                "The journal's durable watermark.",
                s.journal_durable,
            ),
            (
                "ringex_snapshot_sequence",
                "The sequence of the newest snapshot (0: none).",
                s.snapshot_seq,
            ),
            (
                "ringex_input_ring_journaler",
                "Commands in the input ring ahead of the journaler.",
                s.input_ring_journaler,
            ),
            (
                "ringex_input_ring_engine",
                "Commands in the input ring ahead of the engine.",
                s.input_ring_engine,
            ),
            (
                "ringex_output_ring_publisher",
                "Events in the output ring ahead of the front-ends.",
                s.output_ring_publisher,
            ),
            ("ringex_epoch", "The node's epoch.", get(&self.shared.epoch)),
        ];
        for (name, help, v) in gauges {
            e.single(name, "gauge", help, v);
        }
        if let Some(link) = m.replication.get() {
            e.single(
                "ringex_replication_connected",
                "gauge",
                "1 while the standby is connected.",
                u64::from(link.connected()),
            );
            e.single(
                "ringex_replication_lag",
                "gauge",
                "Journal records written here and not yet durable on the standby.",
                s.journal_written.saturating_sub(link.durable()),
            );
            e.single(
                "ringex_replication_degraded",
                "gauge",
                "1 while a sync primary goes on as async.",
                u64::from(m.replication_degraded.load(Ordering::Relaxed)),
            );
        }
        e.family(
            "ringex_durability_wait_seconds",
            "histogram",
            "Time from a batch's last append until it was durable.",
        );
        {
            let h = m
                .durability_wait_ns
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            write_histogram(e, "ringex_durability_wait_seconds", &[], &h);
        }
        e.family(
            "ringex_engine_command_seconds",
            "histogram",
            "Engine time per command, sampled (one in 8), by command kind.",
        );
        {
            let per_kind = m
                .engine_latency_ns
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            for (kind, h) in per_kind.iter() {
                let name = kind_name(*kind);
                write_histogram(e, "ringex_engine_command_seconds", &[("kind", &name)], h);
            }
        }
        let g = &*self.gateway;
        for (name, kind, help, v) in [
            (
                "ringex_gateway_connections_active",
                "gauge",
                "Open binary-protocol connections.",
                get(&g.connections_active),
            ),
            (
                "ringex_gateway_connections_total",
                "counter",
                "Binary-protocol connections accepted.",
                get(&g.connections_total),
            ),
            (
                "ringex_gateway_frames_received_total",
                "counter",
                "Binary-protocol frames received.",
                get(&g.frames_in),
            ),
            (
                "ringex_gateway_messages_sent_total",
                "counter",
                "Binary-protocol messages sent.",
                get(&g.messages_out),
            ),
            (
                "ringex_gateway_slow_consumers_total",
                "counter",
                "Binary-protocol clients cut off for not reading.",
                get(&g.slow_consumers),
            ),
            (
                "ringex_gateway_rate_limited_total",
                "counter",
                "Binary-protocol requests refused by a rate limit.",
                get(&g.rate_limited),
            ),
            (
                "ringex_gateway_slow_passes_100us_total",
                "counter",
                "Gateway loop passes that took 100 us or more.",
                get(&g.passes_slow_100us),
            ),
            (
                "ringex_gateway_slow_passes_1ms_total",
                "counter",
                "Gateway loop passes that took 1 ms or more.",
                get(&g.passes_slow_1ms),
            ),
        ] {
            e.single(name, kind, help, v);
        }
        e.family(
            "ringex_gateway_busy_seconds_total",
            "counter",
            "Time the binary gateway's loop spent on passes with work.",
        );
        let busy = get(&g.busy_ns);
        e.text.push_str(&format!(
            "ringex_gateway_busy_seconds_total {}.{:09}\n",
            busy / 1_000_000_000,
            busy % 1_000_000_000
        ));
        e.family(
            "ringex_gateway_refusals_total",
            "counter",
            "Refusals of binary-protocol peers, by reason.",
        );
        for reason in Refusal::ALL {
            e.sample(
                "ringex_gateway_refusals_total",
                &[("reason", reason.name())],
                g.refusals.get(reason),
            );
        }
    }
}
