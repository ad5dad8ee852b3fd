//! The replication benchmark: the same node and driver as the pipeline bench
//! (fused topology, group durability), with replication `none` (a single node), `async`
//! and `sync` (a standby in this process, on loopback, with its own journal on the same
//! disk), measured in one run so the ratios compare like with like: throughput at the
//! maximum rate and latency at a fixed rate; then the time from a promotion request to the
//! first order the promoted standby accepts (the primary gone without a word).
//!
//! Both nodes share this machine's two cores and one disk, which a real pair would not:
//! the standby's work and its fdatasyncs compete with the primary's here.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringex_engine::Command;

use super::engine::generate;
use super::pipeline::{drive_case, node_config_text, PipelineBenchArgs};
use super::{cpu_model, median};
use crate::config::Config;
use crate::node::{CountingSink, Node, NodeError, OutputMode};
use crate::standby::{self, StandbyEnd};

#[derive(Clone, Debug)]
pub struct ReplicationBenchArgs {
    pub commands: usize,
    /// Offered rates; 0 = maximum.
    pub rates: Vec<u64>,
    pub dir: PathBuf,
    pub runs: usize,
    pub seed: u64,
}

impl Default for ReplicationBenchArgs {
    fn default() -> Self {
        ReplicationBenchArgs {
            commands: 500_000,
            rates: vec![100_000, 0],
            dir: std::env::temp_dir().join("ringex-bench-replication"),
            runs: 3,
            seed: 0x5eed_2024,
        }
    }
}

const MODES: [&str; 3] = ["none", "async", "sync"];

fn config(dir: &Path, role: &str, mode: &str, primary: &str) -> Config {
    let base = node_config_text(dir, "fused", "group", "free", &PipelineBenchArgs::default());
    let text = base.replacen(
        "[node]\nid = 1\n",
        &format!(
            "[node]\nid = {}\nrole = \"{role}\"\n",
            if role == "standby" { 2 } else { 1 }
        ),
        1,
    ) + &format!(
        r#"
[listeners]
replication = "127.0.0.1:0"
[replication]
mode = "{mode}"
primary = "{primary}"
on_standby_loss = "halt"
checkpoint_every_commands = 0
"#
    );
    Config::parse(&text, "bench-replication").expect("bench config is valid")
}

/// A standby on its own thread.
struct Standby {
    stop: Arc<AtomicBool>,
    promote: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<StandbyEnd, String>>,
}

fn start_standby(dir: &Path, mode: &str, primary: &str) -> Standby {
    let config = config(dir, "standby", mode, primary);
    let stop = Arc::new(AtomicBool::new(false));
    let promote = Arc::new(AtomicBool::new(false));
    let thread = {
        let (stop, promote) = (stop.clone(), promote.clone());
        std::thread::spawn(move || standby::run(&config, stop, promote, Arc::new(|_| {})))
    };
    Standby {
        stop,
        promote,
        thread,
    }
}

fn wait_attached(link: &ringex_replicator::link::Link) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !link.connected() {
        assert!(
            Instant::now() < deadline,
            "the bench standby never attached"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One mode at one rate: (commands/s, p50, p99, p99.9 in us).
fn run_case(
    args: &ReplicationBenchArgs,
    setup: &[Command],
    timed: &[Command],
    mode: &str,
    rate: u64,
) -> (f64, f64, f64, f64) {
    let dir = args.dir.join(format!("{mode}-{rate}"));
    let _ = std::fs::remove_dir_all(&dir);
    let role = if mode == "none" { "single" } else { "primary" };
    let no_wake: crate::node::Waker = Arc::new(|| {});
    let node = Node::start(
        &config(&dir.join("primary"), role, mode, "127.0.0.1:1"),
        OutputMode::Poll(no_wake),
    )
    .expect("bench primary starts");
    let standby = node
        .replication_addr()
        .map(|addr| start_standby(&dir.join("standby"), mode, &addr.to_string()));
    // Timed once the standby follows (a sync primary takes nothing before).
    if let Some(link) = node.metrics().replication.get() {
        wait_attached(link);
    }
    let m = drive_case(node, setup, timed, rate);
    if let Some(s) = standby {
        s.stop.store(true, Ordering::Relaxed);
        let _ = s.thread.join();
    }
    let _ = std::fs::remove_dir_all(&dir);
    let us = |ns: u64| ns as f64 / 1000.0;
    (
        m.commands_per_s,
        us(m.latency.latency_ns_p50),
        us(m.latency.latency_ns_p99),
        us(m.latency.latency_ns_p999),
    )
}

/// From a promotion request to the first order the promoted standby answers, after the
/// primary vanished: ms.
fn failover_ms(args: &ReplicationBenchArgs, setup: &[Command]) -> f64 {
    let dir = args.dir.join("failover");
    let _ = std::fs::remove_dir_all(&dir);
    let mut primary = Node::start(
        &config(&dir.join("primary"), "primary", "sync", "127.0.0.1:1"),
        OutputMode::Sink(Box::new(CountingSink)),
    )
    .expect("bench primary starts");
    let addr = primary.replication_addr().expect("a primary").to_string();
    let standby = start_standby(&dir.join("standby"), "sync", &addr);
    wait_attached(primary.metrics().replication.get().expect("a primary"));
    for (i, c) in setup.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(60);
        // Bounded by the deadline: backpressure only while the standby catches up.
        loop {
            match primary.submit(c, i as u64) {
                Ok(()) => break,
                Err(NodeError::Backpressure) if Instant::now() < deadline => {}
                Err(e) => panic!("bench submit failed: {e}"),
            }
        }
    }
    let _ = primary.state_hash();
    drop(primary);
    let started = Instant::now();
    standby.promote.store(true, Ordering::Relaxed);
    let mut node = match standby.thread.join() {
        Ok(Ok(StandbyEnd::Promoted { node, .. })) => node,
        other => panic!("the standby was not promoted: {:?}", other.map(|r| r.err())),
    };
    node.submit(&setup[setup.len() - 1], 0)
        .expect("the promoted node takes an order");
    let _ = node.state_hash().expect("and answers it");
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let _ = node.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
    ms
}

pub fn run(args: &ReplicationBenchArgs) {
    let w = generate(2, args.commands, args.seed);
    let mut setup = w.setup;
    setup.extend(w.prefill);
    let timed = w.commands;
    println!(
        "replication bench: {} timed commands, fused, group durability, on {}; standby in \
         this process on loopback; medians of {} run(s)",
        timed.len(),
        cpu_model(),
        args.runs
    );
    println!(
        "{:<6} {:>10} {:>12} {:>9} {:>9} {:>9} {:>10} {:>8}",
        "mode", "offered", "cmd/s", "p50 us", "p99 us", "p99.9 us", "thru/none", "p99/none"
    );
    for &rate in &args.rates {
        let mut results: Vec<(f64, f64, f64, f64)> = Vec::new();
        for mode in MODES {
            let runs: Vec<_> = (0..args.runs)
                .map(|_| run_case(args, &setup, &timed, mode, rate))
                .collect();
            let pick = |f: fn(&(f64, f64, f64, f64)) -> f64| {
                median(&runs.iter().map(f).collect::<Vec<_>>())
            };
            results.push((pick(|r| r.0), pick(|r| r.1), pick(|r| r.2), pick(|r| r.3)));
        }
        let none = results[0];
        for (mode, r) in MODES.iter().zip(&results) {
            println!(
                "{:<6} {:>10} {:>12.0} {:>9.1} {:>9.1} {:>9.1} {:>10.2} {:>8.2}",
                mode,
                if rate == 0 {
                    "max".to_string()
                } else {
                    rate.to_string()
                },
                r.0,
                r.1,
                r.2,
                r.3,
                r.0 / none.0,
                r.2 / none.2
            );
        }
    }
    let failovers: Vec<f64> = (0..args.runs).map(|_| failover_ms(args, &setup)).collect();
    println!(
        "failover (promotion request to the first order answered, in process): median {:.1} \
         ms over {} run(s) ({:.1}..{:.1})",
        median(&failovers),
        failovers.len(),
        failovers.iter().cloned().fold(f64::MAX, f64::min),
        failovers.iter().cloned().fold(0.0, f64::max)
    );
}
