//! `ringex start`: the node with the gateway in front of it.
//!
//! Threads: the gateway's event loop runs on the calling thread, is the only producer of
//! the input ring and drains the output ring itself (the node in poll mode wakes it);
//! the node's pipeline thread(s) and the journal's helpers run beside it. On 2 cores with
//! the fused topology that is one core for the network and one for the exchange; with the
//! inline topology the event loop's thread is the pipeline too (`Node::poll_outputs`
//! journals and applies what the pass submitted).

use std::collections::VecDeque;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringex_engine::{Command, Event, Output, Query};
use ringex_gateway::backend::{Backend, BackendError, Delivery};
use ringex_gateway::http::HttpConfig;
use ringex_gateway::refusals::{LogQueue, Refusal};
use ringex_gateway::retail::{RetailConfig, RetailEdge, RetailStats};
use ringex_gateway::server::{Gateway, GatewayConfig};

use crate::config::Config;
use crate::metrics::Summary;
use crate::node::wait::pause;
use crate::node::{Node, NodeError, OutputMode, StartOptions};

/// Attempts to get a submission into a full input ring, draining outputs in between.
const SUBMIT_ATTEMPTS_MAX: u32 = 100_000;
/// Deliveries drained per attempt while the input ring is full.
const DRAIN_WHILE_FULL: u64 = 4096;
/// Most deliveries the stash holds: past it, a submission that finds the input ring full
/// is refused (`Busy`, answered as unavailable) instead of moving more output into
/// memory, so overload stays bounded by the rings plus this.
const STASH_MAX: usize = 16 * DRAIN_WHILE_FULL as usize;

/// The node as the gateway's backend. When the input ring is full it drains the output
/// ring into a stash (the engine may be waiting for room there) and tries again, so the
/// gateway never deadlocks against the engine and never sleeps long.
pub struct NodeBackend<'a> {
    node: &'a mut Node,
    stash: VecDeque<Delivery>,
}

impl<'a> NodeBackend<'a> {
    pub fn new(node: &'a mut Node) -> NodeBackend<'a> {
        NodeBackend {
            node,
            stash: VecDeque::new(),
        }
    }

    fn stash_outputs(&mut self) -> usize {
        let stash = &mut self.stash;
        self.node.poll_outputs(DRAIN_WHILE_FULL, |s| {
            stash.push_back(Delivery {
                seq: s.seq,
                tag: s.tag,
                item: s.item,
                last: s.last,
                timestamp_ns: s.timestamp_ns,
            })
        })
    }

    fn retry(
        &mut self,
        mut attempt: impl FnMut(&mut Node) -> Result<(), NodeError>,
    ) -> Result<(), BackendError> {
        for waits in 0..SUBMIT_ATTEMPTS_MAX {
            match attempt(self.node) {
                Ok(()) => return Ok(()),
                Err(NodeError::Backpressure) => {
                    if self.stash.len() >= STASH_MAX {
                        return Err(BackendError::Busy);
                    }
                    if self.stash_outputs() == 0 {
                        pause(waits);
                    }
                }
                Err(e) => return Err(BackendError::Unavailable(e.to_string())),
            }
        }
        Err(BackendError::Busy)
    }
}

impl Backend for NodeBackend<'_> {
    fn submit(&mut self, command: &Command, tag: u64) -> Result<(), BackendError> {
        let command = *command;
        self.retry(|n| n.try_submit(&command, tag))
    }

    fn query(&mut self, query: &Query, tag: u64) -> Result<(), BackendError> {
        let query = *query;
        self.retry(|n| n.try_submit_query(&query, tag))
    }

    fn drain(&mut self, limit: usize, f: &mut dyn FnMut(&Delivery)) -> usize {
        let mut n = 0;
        while n < limit {
            let Some(d) = self.stash.pop_front() else {
                break;
            };
            f(&d);
            n += 1;
        }
        if n < limit {
            n += self.node.poll_outputs((limit - n) as u64, |s| {
                f(&Delivery {
                    seq: s.seq,
                    tag: s.tag,
                    item: s.item,
                    last: s.last,
                    timestamp_ns: s.timestamp_ns,
                })
            });
        }
        n
    }

    fn want_wake(&self) {
        self.node.want_wake();
    }

    fn outputs_available(&self) -> bool {
        !self.stash.is_empty() || self.node.outputs_available()
    }
}

/// The gateway's settings from the node's config.
pub fn gateway_config(config: &Config) -> Result<GatewayConfig, String> {
    let addr = |key: &str, value: &str| {
        value
            .parse()
            .map_err(|e| format!("key `listeners.{key}`: {value:?} is not an address: {e}"))
    };
    let g = &config.gateway;
    Ok(GatewayConfig {
        trading_addr: addr("binary", &config.listeners.binary)?,
        admin_addr: addr("admin", &config.listeners.admin)?,
        heartbeat_ms: g.heartbeat_ms,
        idle_timeout_ms: g.idle_timeout_ms,
        login_timeout_ms: g.login_timeout_ms,
        login_freshness_ms: g.login_clock_skew_ms,
        outbound_buffer_bytes: g.outbound_buffer_kib as usize * 1024,
        resume_window_messages: g.resume_window_messages,
        session_linger_ms: u64::from(g.session_linger_seconds) * 1000,
        connections_max: g.connections_max,
        connections_per_ip: config.limits.connections_per_ip,
        unauthenticated_per_ip: config.limits.unauthenticated_per_ip,
        requests_per_second_per_key: config.limits.requests_per_second_per_key,
        sessions_per_key_max: config.limits.sessions_per_key,
        spin_us: g.spin_us,
    })
}

/// The retail edge's settings from the node's config; None when it is not served.
pub fn retail_config(config: &Config) -> Result<Option<RetailConfig>, String> {
    let l = &config.listeners;
    if l.websocket.is_empty() {
        return Ok(None);
    }
    let addr = l.websocket.parse().map_err(|e| {
        format!(
            "key `listeners.websocket`: {:?} is not an address: {e}",
            l.websocket
        )
    })?;
    let w = &config.websocket;
    Ok(Some(RetailConfig {
        addr,
        connections_max: w.connections_max,
        connections_per_ip: w.connections_per_ip,
        messages_per_second: w.messages_per_second,
        subscriptions_max: w.subscriptions_max,
        first_subscription_ms: w.first_subscription_ms,
        outbound_buffer_bytes: w.outbound_buffer_kib as usize * 1024,
        message_bytes_max: w.message_max_kib as usize * 1024,
        inflated_bytes_per_second_per_ip: u64::from(w.inflated_kib_per_second_per_ip) * 1024,
        socket_send_buffer_bytes: w.socket_send_buffer_kib as usize * 1024,
        ping_interval_ms: w.ping_interval_ms,
        idle_timeout_ms: w.idle_timeout_ms,
        compression: w.compression,
        batched_sends: w.batched_sends,
        echo_path: (!w.echo_path.is_empty()).then(|| w.echo_path.clone()),
        login_freshness_ms: config.gateway.login_clock_skew_ms,
        requests_per_second_per_key: config.limits.requests_per_second_per_key,
        sessions_per_key_max: config.limits.sessions_per_key,
    }))
}

/// The HTTP edge's settings from the node's config; None when it is not served.
pub fn http_config(config: &Config) -> Result<Option<HttpConfig>, String> {
    let l = &config.listeners;
    if l.http.is_empty() {
        return Ok(None);
    }
    let addr = l
        .http
        .parse()
        .map_err(|e| format!("key `listeners.http`: {:?} is not an address: {e}", l.http))?;
    let h = &config.http;
    Ok(Some(HttpConfig {
        addr,
        connections_max: h.connections_max,
        connections_per_ip: h.connections_per_ip,
        header_bytes_max: h.header_max_kib as usize * 1024,
        header_timeout_ms: h.header_timeout_ms,
        idle_timeout_ms: h.idle_timeout_ms,
    }))
}

/// What the engine answered to the bootstrap commands so far.
struct BootstrapAnswers {
    /// Commands whose last output came back.
    answered: usize,
    /// The first refusal, naming its entry.
    refusal: Option<String>,
}

impl BootstrapAnswers {
    fn take(&mut self, commands: &[(String, Command)], d: &Delivery) {
        if let Output::Event(Event::Rejected { reason, .. }) = d.item {
            if self.refusal.is_none() {
                let key = commands
                    .get(d.tag as usize)
                    .map_or("?", |(k, _)| k.as_str());
                self.refusal = Some(format!("bootstrap of {key} was refused: {}", reason.name()));
            }
        }
        if d.last {
            self.answered += 1;
        }
    }
}

/// Submits the config's bootstrap commands from `from` on through the journal and waits
/// for the engine's answer to each. It goes through the gateway's own backend, which
/// drains the output ring while the input ring is full (a large bootstrap outgrows both
/// rings). A command the engine refuses (a journal that refuses appends) fails the start,
/// naming it.
fn bootstrap(node: &mut Node, commands: &[(String, Command)], from: usize) -> Result<(), String> {
    let mut backend = NodeBackend::new(node);
    let mut answers = BootstrapAnswers {
        answered: from,
        refusal: None,
    };
    for (i, (key, cmd)) in commands.iter().enumerate().skip(from) {
        backend.submit(cmd, i as u64).map_err(|e| {
            let why = match e {
                BackendError::Busy => "the node took no input".to_string(),
                BackendError::Unavailable(why) => why,
            };
            format!("bootstrap of {key} failed: {why}")
        })?;
        backend.drain(DRAIN_WHILE_FULL as usize, &mut |d| {
            answers.take(commands, d)
        });
    }
    // Bounded: each wait is short, and the engine answers every command it was given.
    for waits in 0..SUBMIT_ATTEMPTS_MAX {
        if answers.answered >= commands.len() {
            return answers.refusal.map_or(Ok(()), Err);
        }
        if backend.drain(DRAIN_WHILE_FULL as usize, &mut |d| {
            answers.take(commands, d)
        }) == 0
        {
            pause(waits);
        }
    }
    Err(format!(
        "bootstrap: {} of {} commands answered",
        answers.answered,
        commands.len()
    ))
}

/// How many bootstrap commands the journal holds when it holds nothing else: its records
/// are exactly the first N of `commands`. None when it holds anything else (a finished
/// bootstrap followed by other commands, another config's bootstrap, pruned records): then
/// the bootstrap is not ours to complete.
fn bootstrap_prefix(
    journal_dir: &std::path::Path,
    commands: &[(String, Command)],
) -> Option<usize> {
    let mut reader = ringex_journal::Reader::open(journal_dir).ok()?;
    reader.seek(1).ok()?;
    // Bounded by the bootstrap's length (one more read to see that nothing follows).
    for (i, (_, expected)) in commands.iter().enumerate() {
        let Some(r) = reader.next().ok()? else {
            return Some(i);
        };
        let found =
            crate::node::recovery::decode_record(r.seq, r.record_type, r.schema_version, r.payload)
                .ok()?;
        if r.seq != i as u64 + 1 || found != *expected {
            return None;
        }
    }
    Some(commands.len())
}

/// The addresses `serve` listens on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listening {
    pub trading: SocketAddr,
    pub admin: SocketAddr,
    /// None when `listeners.websocket` is empty.
    pub websocket: Option<SocketAddr>,
    /// None when `listeners.http` is empty.
    pub http: Option<SocketAddr>,
}

/// Runs the node and the gateway until `stop` is set; then drains, snapshots and stops.
/// Every step says what it did on stderr. `ready` (if given) receives the bound
/// (trading, admin) addresses once the gateway accepts connections.
pub fn serve(
    config: &Config,
    stop: Arc<AtomicBool>,
    ready: Option<std::sync::mpsc::Sender<(SocketAddr, SocketAddr)>>,
) -> Result<(), String> {
    serve_listening(config, stop, move |l| {
        if let Some(ready) = ready {
            let _ = ready.send((l.trading, l.admin));
        }
    })
}

/// [`serve`], telling `on_ready` every address it listens on (the WebSocket one too).
pub fn serve_listening(
    config: &Config,
    stop: Arc<AtomicBool>,
    on_ready: impl FnOnce(Listening),
) -> Result<(), String> {
    serve_with(config, stop, on_ready, StartOptions::default())
}

/// [`serve_listening`], starting the node with `options` (a standby promoted in this
/// process starts as the primary with `promoted`).
pub fn serve_with(
    config: &Config,
    stop: Arc<AtomicBool>,
    on_ready: impl FnOnce(Listening),
    options: StartOptions,
) -> Result<(), String> {
    let gateway_config = gateway_config(config)?;
    let mut gateway =
        Gateway::bind(gateway_config.clone()).map_err(|e| format!("cannot listen on {e}"))?;
    let waker = gateway.waker();
    let wake: crate::node::Waker = Arc::new(move || {
        let _ = waker.wake();
    });
    let mut node = Node::start_with(config, OutputMode::Poll(wake), options)
        .map_err(|e| format!("cannot start: {e}"))?;
    let _ = node.metrics().gateway.set(gateway.stats());
    // A stop request reaches the node at once, not only once the gateway's loop (which
    // runs the inline pipeline, perhaps waiting for a standby) gets back to it.
    let served = Arc::new(AtomicBool::new(false));
    let _stop_watch = {
        let (stop, served, stopping) = (stop.clone(), served.clone(), node.stopping_handle());
        std::thread::Builder::new()
            .name("ringex-stop-watch".into())
            .spawn(move || {
                // Ends with the stop request or when serving ends: 20 ms per pass.
                while !stop.load(Ordering::Relaxed) && !served.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                if stop.load(Ordering::Relaxed) {
                    stopping();
                }
            })
            .map_err(|e| format!("cannot start: {e}"))?
    };
    let _served = SetOnDrop(served);
    tracing::info!("recovery: {}", node.recovery());
    tracing::info!(
        "topology {}, durability {}, journal backend {}",
        format!("{:?}", node.topology()).to_lowercase(),
        format!("{:?}", config.journal.durability).to_lowercase(),
        node.journal_backend()
    );
    let commands = config.bootstrap_commands();
    let done = if node.is_fresh() {
        Some(0)
    } else if node.recovery().seq_last >= commands.len() as u64 {
        // As many records as the bootstrap or more: it is complete, or followed by
        // other commands (then not ours to complete). No need to read them.
        None
    } else {
        bootstrap_prefix(&config.node.data_dir.join("journal"), &commands)
    };
    if let Some(done) = done.filter(|&done| done < commands.len()) {
        if done > 0 {
            tracing::warn!(
                "the journal holds only the first {done} of {} bootstrap commands (a first \
                 start stopped part-way): submitting the rest",
                commands.len()
            );
        }
        bootstrap(&mut node, &commands, done)?;
        tracing::info!(
            "bootstrapped {} assets, {} markets, {} accounts through the journal",
            config.assets.len(),
            config.markets.len(),
            config.accounts.len()
        );
    } else {
        // Not bootstrapped now: the config's caps took effect, if at all, at the first
        // start. Say so where they differ from the exchange's.
        let live = &node.recovery().market_limits;
        for line in config.open_order_caps_not_in_effect(|m| {
            live.iter().find(|&&(id, _)| id == m).map(|&(_, l)| l)
        }) {
            tracing::warn!("{line}");
        }
    }
    // The event loop runs on this thread: pin it if the config says where, only now that
    // the node's threads exist (they would inherit a one-core mask).
    if let Some(&core) = config.pipeline.cores.get("gateway") {
        let pinned = core_affinity::set_for_current(core_affinity::CoreId { id: core });
        if !pinned {
            return Err(format!(
                "key `pipeline.cores.gateway`: cannot pin the gateway thread to core {core}"
            ));
        }
    }
    let trading = gateway.trading_addr().map_err(|e| e.to_string())?;
    let admin = gateway.admin_addr().map_err(|e| e.to_string())?;
    // The retail edge: its own loop and thread, handing its orders to this loop.
    let retail = match retail_config(config)? {
        None => None,
        Some(rc) => {
            let addr = rc.addr;
            let mut edge = RetailEdge::bind(rc, gateway.log_queue())
                .map_err(|e| format!("cannot listen for WebSocket clients on {addr}: {e}"))?;
            let w = &config.websocket;
            match edge.send_fallback_reason() {
                None => tracing::info!("WebSocket fan-out: batched sends through io_uring"),
                Some(why) if w.batched_sends => {
                    tracing::warn!("WebSocket fan-out: one writev per connection: {why}")
                }
                Some(why) => tracing::info!("WebSocket fan-out: one writev per connection: {why}"),
            }
            let (g, r) = ringex_gateway::handoff::link(
                w.handoff_in_slots as usize,
                w.handoff_out_slots as usize,
                gateway.waker(),
                edge.waker(),
            );
            gateway.attach_retail(g);
            edge.attach(r);
            let local = edge.local_addr().map_err(|e| e.to_string())?;
            let http = match http_config(config)? {
                None => None,
                Some(hc) => {
                    let addr = hc.addr;
                    let status = crate::status::NodeHealth::new(config, &node, gateway.stats());
                    let bound = edge
                        .serve_http(hc, Some(Arc::new(status)))
                        .map_err(|e| format!("cannot listen for HTTP on {addr}: {e}"))?;
                    Some(bound)
                }
            };
            let stats = edge.stats();
            let s = Arc::clone(&stop);
            let core = config.pipeline.cores.get("websocket").copied();
            let nice = w.thread_nice as libc::c_int;
            let thread = std::thread::Builder::new()
                .name("ringex-retail".into())
                .spawn(move || {
                    if let Some(id) = core {
                        core_affinity::set_for_current(core_affinity::CoreId { id });
                    }
                    if nice > 0 {
                        // SAFETY: plain syscall on the calling thread (its own nice value).
                        unsafe {
                            libc::setpriority(libc::PRIO_PROCESS, 0, nice);
                        }
                    }
                    edge.run(&s)
                })
                .map_err(|e| format!("cannot start the WebSocket thread: {e}"))?;
            Some((local, stats, thread, http))
        }
    };
    let websocket = retail
        .as_ref()
        .map_or("off".to_string(), |(a, _, _, _)| a.to_string());
    let http = retail.as_ref().and_then(|(_, _, _, h)| *h);
    tracing::info!(
        "listening: binary protocol on {trading}, admin on {admin}, WebSocket on \
         {websocket}, HTTP on {}; SIGTERM or Ctrl-C stops",
        http.map_or("off".to_string(), |a| a.to_string())
    );
    on_ready(Listening {
        trading,
        admin,
        websocket: retail.as_ref().map(|(a, _, _, _)| *a),
        http,
    });
    let retail_stats = retail.as_ref().map(|(_, s, _, _)| Arc::clone(s));
    let logger = spawn_logger(config, &node, &gateway, retail_stats, Arc::clone(&stop));
    let result = {
        let mut backend = NodeBackend::new(&mut node);
        gateway.run(&mut backend, &stop)
    };
    stop.store(true, Ordering::Relaxed);
    if let Some((_, _, thread, _)) = retail {
        match thread.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("the WebSocket loop stopped: {e}"),
            Err(_) => tracing::error!("the WebSocket loop panicked"),
        }
    }
    let dropped_before = logger.map_or(0, |l| l.join().unwrap_or(0));
    // What the gateway refused while it stopped.
    print_refusals(
        &gateway.log_queue(),
        dropped_before,
        &mut crate::log::GatewayLines::default(),
    );
    if let Err(e) = result {
        tracing::error!("the gateway stopped: {e}");
    }
    if let Some(why) = node.failure() {
        tracing::error!("the node had stopped taking input: {why}");
    }
    tracing::info!("stopping: draining the pipeline and writing a snapshot");
    let report = node
        .shutdown()
        .map_err(|e| format!("shutdown failed: {e}"))?;
    tracing::info!(
        "stopped at seq {} with state hash {:032x}",
        report.seq_last,
        report.state_hash
    );
    Ok(())
}

/// The share of `elapsed` that `busy_ns` is, in whole percent (integer arithmetic).
fn busy_percent(busy_ns: u64, elapsed: Duration) -> u64 {
    let elapsed_ns = (elapsed.as_nanos() as u64).max(1);
    (busy_ns.saturating_mul(100) / elapsed_ns).min(100)
}

/// Prints the gateway's log records of refused peers, one `ringex: gateway …` line each
/// (docs/operations.md, "Refusals"), and says how many records the full queue dropped
/// since `dropped_before`. Returns the queue's dropped count.
fn print_refusals(queue: &LogQueue, dropped_before: u64, out: &mut impl Write) -> u64 {
    for record in queue.drain() {
        let _ = writeln!(out, "ringex: gateway {record}");
    }
    let dropped = queue.dropped();
    if dropped > dropped_before {
        let _ = writeln!(
            out,
            "ringex: gateway log queue full: {} refusal records dropped",
            dropped - dropped_before
        );
    }
    dropped
}

/// An idle node's summary line comes at most this often (or every 12 lines' time, if
/// longer): lines that would say nothing happened are left out in between.
const IDLE_LOG_EVERY: Duration = Duration::from_secs(60);

/// Logs the one-line summary every `metrics.log_every_seconds` while anything happens,
/// and on an idle node every [`IDLE_LOG_EVERY`]; and the gateway's refusals as they come
/// (within 50 ms). Returns the log queue's dropped count.
fn spawn_logger(
    config: &Config,
    node: &Node,
    gateway: &Gateway,
    retail: Option<Arc<RetailStats>>,
    stop: Arc<AtomicBool>,
) -> Option<std::thread::JoinHandle<u64>> {
    let every = Duration::from_secs(config.metrics.log_every_seconds);
    let idle_every = IDLE_LOG_EVERY.max(every * 12);
    let metrics = node.metrics();
    let stats = gateway.stats();
    let refusals = gateway.log_queue();
    std::thread::Builder::new()
        .name("ringex-log".into())
        .spawn(move || {
            // Never urgent: at nice 19 its wake-ups do not preempt the event loop.
            // SAFETY: plain syscall on the calling thread.
            unsafe {
                libc::setpriority(libc::PRIO_PROCESS, 0, 19);
            }
            let mut last = Instant::now();
            let mut checked = Instant::now();
            let mut previous = Summary::default();
            // What the summary's counters leave out: connections and WebSocket output.
            let activity = || {
                (
                    stats.connections_active.load(Ordering::Relaxed),
                    retail
                        .as_ref()
                        .map_or(0, |r| r.messages_out.load(Ordering::Relaxed)),
                )
            };
            let mut activity_before = None;
            let mut busy_ns_before = stats.busy_ns.load(Ordering::Relaxed);
            let slow = || {
                [&stats.passes_slow_100us, &stats.passes_slow_1ms]
                    .map(|c| c.load(Ordering::Relaxed))
            };
            let mut slow_before = slow();
            let mut dropped = 0;
            let mut fanout_fallback_logged = false;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
                dropped =
                    print_refusals(&refusals, dropped, &mut crate::log::GatewayLines::default());
                if !fanout_fallback_logged
                    && retail
                        .as_ref()
                        .is_some_and(|r| r.fanout_fell_back.load(Ordering::Relaxed))
                {
                    fanout_fallback_logged = true;
                    tracing::warn!(
                        "WebSocket fan-out: io_uring failed while running; one writev per \
                         connection from now on (subscribers whose send was lost with it were \
                         disconnected)"
                    );
                }
                if every.is_zero() || checked.elapsed() < every {
                    continue;
                }
                checked = Instant::now();
                let quiet =
                    metrics.summary().quiet_since(&previous) && activity_before == Some(activity());
                if !quiet || last.elapsed() >= idle_every {
                    activity_before = Some(activity());
                    let elapsed = last.elapsed();
                    let (s, line) = metrics.summary_line(&previous, elapsed.as_secs_f64());
                    let busy_ns = stats.busy_ns.load(Ordering::Relaxed);
                    let slow_now = slow();
                    let ws = retail.as_ref().map_or(String::new(), |r| {
                        let refused: u64 = Refusal::ALL.iter().map(|x| r.refusals.get(*x)).sum();
                        format!(
                            " ws_connections={} ws_messages_out={} ws_refusals={refused} \
                             ws_overruns={}",
                            r.connections_active.load(Ordering::Relaxed),
                            r.messages_out.load(Ordering::Relaxed),
                            r.overruns.load(Ordering::Relaxed),
                        )
                    });
                    tracing::info!(
                        target: "ringex::metrics",
                        "{line} connections={} gateway_busy={}% \
                         gateway_slow_passes={}/{}{ws}",
                        stats.connections_active.load(Ordering::Relaxed),
                        busy_percent(busy_ns - busy_ns_before, elapsed),
                        slow_now[0] - slow_before[0],
                        slow_now[1] - slow_before[1],
                    );
                    previous = s;
                    busy_ns_before = busy_ns;
                    slow_before = slow_now;
                    last = Instant::now();
                }
            }
            dropped
        })
        .ok()
}

/// Sets its flag when dropped (however the function holding it returns).
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringex_gateway::refusals::{Detail, Listener, Refusal, RefusalLog, RefusalRecord};

    #[test]
    fn refusals_are_printed_one_prefixed_line_each_and_a_full_queue_says_so() {
        let queue = Arc::new(LogQueue::default());
        let mut log = RefusalLog::new(Arc::clone(&queue), (1, 1), 1_000_000_000, 0);
        let record = RefusalRecord {
            reason: Refusal::BadSignature,
            peer: "192.0.2.7:50000".parse().unwrap(),
            listener: Listener::Trading,
            key_id: Some(1001),
            detail: Detail::None,
        };
        log.refused(0, record);
        log.refused(1, record);
        log.flush(2);
        let mut out = Vec::new();
        assert_eq!(print_refusals(&queue, 0, &mut out), 0);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "ringex: gateway refused bad-signature peer=192.0.2.7:50000 listener=trading \
             key=1001\n\
             ringex: gateway suppressed 1 more refusals in 0.000 s: bad-signature 1 from \
             192.0.2.7 1\n"
        );
        // Nobody drained it: the queue fills, drops, and the next print says how many.
        for w in 0..LogQueue::CAPACITY as u64 + 5 {
            log.refused(w * 1_000_000_000, record);
        }
        let mut out = Vec::new();
        assert_eq!(print_refusals(&queue, 0, &mut out), 5);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), LogQueue::CAPACITY + 1);
        assert!(
            text.ends_with("ringex: gateway log queue full: 5 refusal records dropped\n"),
            "{text}"
        );
    }
}
