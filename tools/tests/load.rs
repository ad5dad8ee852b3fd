//! `load::run` against the real gateway on loopback: a short run against a server that
//! keeps up, and runs against servers that answer late or never, which must not make the
//! figures look better than the server was.

mod common;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use ringex_engine::{Command, Query};
use ringex_gateway::backend::{Backend, BackendError, Delivery, InlineBackend};
use ringex_gateway::server::GatewayConfig;
use ringex_tools::load::{run, LoadArgs, Report};

#[test]
fn short_load_run_completes_without_errors() {
    let server = serve();
    let dir = std::env::temp_dir().join(format!("ringex-load-test-{}", std::process::id()));
    let json = dir.with_extension("json");
    let mut args = LoadArgs::new(server.trading, server.admin);
    args.rate = 2_000;
    args.duration = 1.0;
    args.users = 20;
    args.json = Some(json.clone());
    // The run ends by itself (its duration, then a bounded drain); the deadline only
    // turns a hang into a failure.
    let report = {
        let args = args.clone();
        let (done, report) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(run(&args));
        });
        report
            .recv_timeout(Duration::from_secs(300))
            .expect("the run ends")
            .unwrap()
    };
    report.print();
    assert_eq!(report.errors, 0, "{:?}", report.error_messages);
    assert_eq!(report.unanswered, 0);
    assert_eq!(report.connections_lost, 0);
    assert_eq!(report.failure(), None);
    assert!(report.sent > 1_000, "{report:?}");
    assert_eq!(report.answered, report.sent);
    // A server that keeps up refuses nothing: everything answered was served.
    assert_eq!(report.refused_unavailable, 0);
    assert_eq!(report.served_rate, report.achieved_rate);
    assert!(report.fills > 0, "the mix trades: {report:?}");
    assert_eq!(
        report.answered_in_run + report.answered_in_drain,
        report.answered
    );
    assert!(report.latency["all"].count == report.answered);
    // Every answered request is counted once under its user's class.
    let by_class: u64 = report.latency_by_class.values().map(|p| p.count).sum();
    assert_eq!(by_class, report.answered, "{:?}", report.latency_by_class);
    for class in ["market_maker", "retail", "bot"] {
        assert!(report.latency_by_class.contains_key(class), "{class}");
    }
    // No reject that would mean the generator builds bad orders.
    for bad in [
        "PriceOutsideBand",
        "InsufficientBalance",
        "Malformed",
        "InvalidPrice",
    ] {
        assert!(!report.rejects_by_reason.contains_key(bad), "{report:?}");
    }
    // A cancel or replace that crosses its order's last fill is answered UnknownOrder:
    // counted as too late, apart from the rejects.
    assert!(
        !report.rejects_by_reason.contains_key("UnknownOrder"),
        "{report:?}"
    );
    assert!(report.too_late <= report.rejected, "{report:?}");
    let text = std::fs::read_to_string(&json).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(v["latency"]["all"]["p99_us"].as_f64().unwrap() > 0.0);
    let _ = std::fs::remove_file(&json);

    // A rerun reuses the accounts (idempotent setup) and works the same.
    args.json = None;
    args.duration = 0.3;
    let again = run(&args).unwrap();
    assert_eq!(again.errors, 0, "{:?}", again.error_messages);
}

/// A request held back by [`Stalling`].
enum Held {
    Command(Command, u64),
    Query(Query, u64),
}

/// The inline engine behind a server that stops answering trading requests after its
/// first `answered_max`: it holds every later order, cancel, replace and balance or
/// open-orders query, and hands them to the engine `hold_for` after it held the first
/// (a server that answers late), or never (`None`). Logins, admin commands and
/// cancel-on-disconnect pass straight through.
struct Stalling {
    inner: InlineBackend,
    answered_max: u64,
    taken: u64,
    hold_for: Option<Duration>,
    held_since: Option<Instant>,
    released: bool,
    held: VecDeque<Held>,
}

impl Stalling {
    fn new(inner: InlineBackend, answered_max: u64, hold_for: Option<Duration>) -> Stalling {
        Stalling {
            inner,
            answered_max,
            taken: 0,
            hold_for,
            held_since: None,
            released: false,
            held: VecDeque::new(),
        }
    }

    /// Whether to hold the next trading request.
    fn holds(&mut self) -> bool {
        if self.released {
            return false;
        }
        self.taken += 1;
        if self.taken <= self.answered_max {
            return false;
        }
        self.held_since.get_or_insert_with(Instant::now);
        true
    }

    fn release_due(&self) -> bool {
        !self.released
            && matches!((self.held_since, self.hold_for), (Some(t), Some(d)) if t.elapsed() >= d)
    }

    fn release_if_due(&mut self) {
        if !self.release_due() {
            return;
        }
        self.released = true;
        for h in std::mem::take(&mut self.held) {
            let _ = match h {
                Held::Command(c, tag) => self.inner.submit(&c, tag),
                Held::Query(q, tag) => self.inner.query(&q, tag),
            };
        }
    }
}

impl Backend for Stalling {
    fn submit(&mut self, command: &Command, tag: u64) -> Result<(), BackendError> {
        let trading = matches!(
            command,
            Command::Place(_) | Command::Cancel { .. } | Command::Replace { .. }
        );
        if trading && self.holds() {
            self.held.push_back(Held::Command(*command, tag));
            return Ok(());
        }
        self.inner.submit(command, tag)
    }

    fn query(&mut self, query: &Query, tag: u64) -> Result<(), BackendError> {
        let trading = !matches!(query, Query::ApiKey { .. });
        if trading && self.holds() {
            self.held.push_back(Held::Query(*query, tag));
            return Ok(());
        }
        self.inner.query(query, tag)
    }

    fn drain(&mut self, limit: usize, f: &mut dyn FnMut(&Delivery)) -> usize {
        self.release_if_due();
        self.inner.drain(limit, f)
    }

    fn want_wake(&self) {}

    fn outputs_available(&self) -> bool {
        self.inner.outputs_available() || (self.release_due() && !self.held.is_empty())
    }
}

/// The inline engine behind a server whose input is full after its first `taken_max`
/// trading requests: every later order, cancel, replace or query is refused (`Busy`),
/// which the gateway answers at once with `Unavailable`.
struct Refusing {
    inner: InlineBackend,
    taken_max: u64,
    taken: u64,
}

impl Refusing {
    fn full(&mut self) -> bool {
        self.taken += 1;
        self.taken > self.taken_max
    }
}

impl Backend for Refusing {
    fn submit(&mut self, command: &Command, tag: u64) -> Result<(), BackendError> {
        let trading = matches!(
            command,
            Command::Place(_) | Command::Cancel { .. } | Command::Replace { .. }
        );
        if trading && self.full() {
            return Err(BackendError::Busy);
        }
        self.inner.submit(command, tag)
    }

    fn query(&mut self, query: &Query, tag: u64) -> Result<(), BackendError> {
        if !matches!(query, Query::ApiKey { .. }) && self.full() {
            return Err(BackendError::Busy);
        }
        self.inner.query(query, tag)
    }

    fn drain(&mut self, limit: usize, f: &mut dyn FnMut(&Delivery)) -> usize {
        self.inner.drain(limit, f)
    }

    fn want_wake(&self) {}

    fn outputs_available(&self) -> bool {
        self.inner.outputs_available()
    }
}

#[test]
fn refusals_for_a_full_input_are_answers_but_not_service() {
    let server = serve_backend(GatewayConfig::loopback(), |inner| Refusing {
        inner,
        taken_max: 100,
        taken: 0,
    });
    let mut args = LoadArgs::new(server.trading, server.admin);
    args.rate = 2_000;
    args.duration = 1.0;
    args.users = 20;
    args.account_base = 800_000;
    args.key_base = 10_000_000;
    let report = run(&args).unwrap();
    report.print();
    assert_eq!(report.errors, 0, "{:?}", report.error_messages);
    assert!(report.sent > 1_000, "{report:?}");
    // Everything is answered at once, most of it with a refusal...
    assert_eq!(report.unanswered, 0, "{report:?}");
    assert!(report.achieved_rate > 0.5 * 2_000.0, "{report:?}");
    assert!(
        report.refused_unavailable > report.sent / 2,
        "{:?}",
        report.rejects_by_reason
    );
    assert_eq!(
        report.rejects_by_reason.get("Unavailable"),
        Some(&report.refused_unavailable)
    );
    // ...which the served rate leaves out.
    assert!(report.served_rate < 0.5 * 2_000.0, "{report:?}");
    assert!(report.served_rate < report.achieved_rate);
}

/// 1 s at 2,000 requests/s from 20 users against a server that answers its first 100
/// trading requests and then stalls as `hold_for` says.
fn run_against_a_stall(account_base: u32, key_base: u64, hold_for: Option<Duration>) -> Report {
    let server = serve_backend(GatewayConfig::loopback(), move |inline| {
        Stalling::new(inline, 100, hold_for)
    });
    let mut args = LoadArgs::new(server.trading, server.admin);
    args.rate = 2_000;
    args.duration = 1.0;
    args.users = 20;
    args.account_base = account_base;
    args.key_base = key_base;
    let report = run(&args).unwrap();
    report.print();
    assert_eq!(report.errors, 0, "{:?}", report.error_messages);
    assert!(report.sent > 1_000, "{report:?}");
    assert_eq!(report.answered + report.unanswered, report.sent);
    assert_eq!(
        report.answered_in_run + report.answered_in_drain,
        report.answered
    );
    // The achieved rate is what was answered within the run, per second of it.
    assert!(
        (report.achieved_rate - report.answered_in_run as f64 / args.duration).abs() < 1e-6,
        "{report:?}"
    );
    report
}

#[test]
fn answers_arriving_after_the_run_do_not_count_in_the_achieved_rate() {
    // Held for 1.5 s from the 101st trading request (early in the 1 s run): everything
    // after it is answered, but only in the drain after the run.
    let report = run_against_a_stall(600_000, 8_000_000, Some(Duration::from_millis(1500)));
    assert_eq!(report.unanswered, 0, "{report:?}");
    assert!(
        report.answered_in_drain > report.sent / 2,
        "most answers came after the run: {report:?}"
    );
    assert!(
        report.achieved_rate < 0.5 * 2_000.0,
        "the server answered under half the requests within the run, so the achieved rate \
         is under half the target: {report:?}"
    );
    // Their latency includes the wait: each held request was planned before the run's end
    // and released at least 0.5 s after it.
    assert!(report.latency["all"].p50_us >= 500_000.0, "{report:?}");
}

#[test]
fn requests_never_answered_count_in_the_latency_tables_at_their_wait_so_far() {
    let report = run_against_a_stall(700_000, 9_000_000, None);
    assert!(report.unanswered > report.sent / 2, "{report:?}");
    // Which fails the run, saying how many.
    let failure = report
        .failure()
        .expect("a run with unanswered requests fails");
    assert!(
        failure.contains(&format!(
            "{} of {} requests never answered",
            report.unanswered, report.sent
        )),
        "{failure}"
    );
    assert!(
        report.drain_s >= 3.0,
        "the generator waited out its drain: {report:?}"
    );
    assert!(report.achieved_rate < 0.5 * 2_000.0, "{report:?}");
    // Every sent request is in the tables, answered or not...
    assert_eq!(report.latency["all"].count, report.sent);
    assert_eq!(report.service_time["all"].count, report.sent);
    let by_class: u64 = report.latency_by_class.values().map(|p| p.count).sum();
    assert_eq!(by_class, report.sent, "{:?}", report.latency_by_class);
    let by_kind: u64 = report
        .latency
        .iter()
        .filter(|(k, _)| k.as_str() != "all")
        .map(|(_, p)| p.count)
        .sum();
    assert_eq!(by_kind, report.sent, "{:?}", report.latency);
    // ...and one never answered waited at least from its send (within the 1 s run) to the
    // end of the 3 s drain. Most were never answered, so the median is at least that.
    assert!(report.latency["all"].p50_us >= 2_990_000.0, "{report:?}");
    assert!(
        report.service_time["all"].p50_us >= 2_990_000.0,
        "{report:?}"
    );
}

/// The inline engine behind a server that counts the trading requests it took.
struct Counting {
    inner: InlineBackend,
    taken: Arc<AtomicU64>,
}

impl Backend for Counting {
    fn submit(&mut self, command: &Command, tag: u64) -> Result<(), BackendError> {
        self.taken.fetch_add(1, Ordering::Relaxed);
        self.inner.submit(command, tag)
    }

    fn query(&mut self, query: &Query, tag: u64) -> Result<(), BackendError> {
        self.inner.query(query, tag)
    }

    fn drain(&mut self, limit: usize, f: &mut dyn FnMut(&Delivery)) -> usize {
        self.inner.drain(limit, f)
    }

    fn want_wake(&self) {}

    fn outputs_available(&self) -> bool {
        self.inner.outputs_available()
    }
}

#[test]
fn a_server_that_stops_mid_run_fails_the_run_with_the_connections_lost() {
    let taken = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&taken);
    let server = serve_backend(GatewayConfig::loopback(), move |inner| Counting {
        inner,
        taken: counter,
    });
    let mut args = LoadArgs::new(server.trading, server.admin);
    args.rate = 2_000;
    args.duration = 3.0;
    args.users = 20;
    args.account_base = 900_000;
    args.key_base = 11_000_000;
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(run(&args));
    });
    // The server stops once the run is under way (1,000 commands, the setup's included).
    let deadline = Instant::now() + Duration::from_secs(120);
    while taken.load(Ordering::Relaxed) < 1_000 {
        assert!(Instant::now() < deadline, "the run never got going");
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(server);
    let report = result
        .recv_timeout(Duration::from_secs(300))
        .expect("the run ends")
        .unwrap();
    report.print();
    assert!(report.connections_lost > 0, "{report:?}");
    let failure = report.failure().expect("a run that lost its server fails");
    assert!(
        failure.contains(&format!(
            "{} of 20 connections lost",
            report.connections_lost
        )),
        "{failure}"
    );
}
