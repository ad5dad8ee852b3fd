//! The pipeline benchmark: the whole node (rings, journal, engine, publisher;
//! in the inline topology the driver's own thread journals and applies) driven open loop
//! at fixed offered rates.
//!
//! Every command is stamped with its *planned* send time; if the driver falls behind, the
//! command still carries the time it should have been sent, so queueing behind a stall is
//! counted (no coordinated omission). Latency runs from that stamp until the publisher
//! thread receives the command's last event. In the same run: the engine alone over the
//! same stream (the throughput baseline) and the latency of one commit alone on the same
//! file system (the `group` mode baseline): one command's record written the way the
//! journal's group commit writes it (O_DIRECT whole blocks into a preallocated,
//! zero-filled file, or buffered for the mapped journal), then fdatasync.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use ringex_engine::{Command, Exchange};

use super::engine::generate;
use super::{cpu_model, latency_histogram, median, LatencySummary};
use crate::config::Config;
use crate::node::{Node, OutputMode};

/// Arguments of `ringex bench pipeline`.
#[derive(Clone, Debug)]
pub struct PipelineBenchArgs {
    /// Timed commands per case.
    pub commands: usize,
    /// Offered rates in commands/s; 0 means "as fast as the node takes them".
    pub rates: Vec<u64>,
    pub topologies: Vec<String>,
    pub durabilities: Vec<String>,
    /// `free` or `pinned` (see [`Placement`]).
    pub placements: Vec<String>,
    /// Where the journals go (pick the disk to measure). A fresh subdirectory per case.
    pub dir: PathBuf,
    pub seed: u64,
    /// Ring sizes in slots; None: the node's defaults.
    pub input_ring_size: Option<usize>,
    pub output_ring_size: Option<usize>,
    /// Passes over all the cases, each with its own baselines; with more than one, a
    /// table of per-case medians follows (the machine is noisy: quote medians).
    pub runs: usize,
}

impl Default for PipelineBenchArgs {
    fn default() -> Self {
        PipelineBenchArgs {
            commands: 1_000_000,
            rates: vec![100_000, 1_000_000, 0],
            topologies: vec!["fused".into(), "split".into(), "inline".into()],
            durabilities: vec!["async".into(), "group".into()],
            placements: vec!["free".into(), "pinned".into()],
            dir: std::env::temp_dir().join("ringex-bench-pipeline"),
            seed: 0x5eed_2024,
            input_ring_size: None,
            output_ring_size: None,
            runs: 1,
        }
    }
}

/// Tag of a command whose latency is not recorded (setup, pre-fill).
const UNTIMED: u64 = u64::MAX;
/// Most commands the driver publishes in one batch.
const BATCH_MAX: usize = 64;

/// The driver's view of the output ring: it drains outputs whenever it is not sending
/// (as the gateway does), and records each command's latency from its planned send time
/// (carried in its tag, as ns since `base`) to the moment the driver sees its last event.
struct Collector {
    base: Instant,
    histogram: Histogram<u64>,
    completed: usize,
}

impl Collector {
    fn drain(&mut self, node: &mut Node) -> usize {
        let base = self.base;
        let histogram = &mut self.histogram;
        let completed = &mut self.completed;
        node.poll_outputs(4096, |slot| {
            if slot.last && slot.tag != UNTIMED {
                let now_ns = base.elapsed().as_nanos() as u64;
                histogram.saturating_record(now_ns.saturating_sub(slot.tag).max(1));
                *completed += 1;
            }
        })
    }
}

pub struct CaseReport {
    pub topology: String,
    pub durability: String,
    pub placement: String,
    pub rate_offered: u64,
    pub commands_per_s: f64,
    pub latency: LatencySummary,
    pub backpressured: u64,
    /// Group mode: p99 of the time from a batch's last append until it was durable (the
    /// commits themselves, without the queueing in front of them).
    pub commit_ns_p99: u64,
    /// The baselines of the run this case belongs to: the engine alone (commands/s) and
    /// the p99 of one commit alone (one record written as this case's journal writes it,
    /// then fdatasync; 0 for async cases).
    pub engine_alone_per_s: f64,
    pub commit_alone_ns_p99: u64,
    /// Cache-line round trip between core 0 and the last core, measured just before the
    /// case (the host's vCPU placement; None on one core).
    pub cross_core_ns: Option<f64>,
}

impl CaseReport {
    /// Throughput as a share of the engine alone in the same run.
    pub fn ratio_to_engine(&self) -> f64 {
        self.commands_per_s / self.engine_alone_per_s.max(1.0)
    }

    /// The commands' p99 over the p99 of one commit alone (the `group` target).
    pub fn ratio_to_commit_alone(&self) -> f64 {
        self.latency.latency_ns_p99 as f64 / self.commit_alone_ns_p99.max(1) as f64
    }

    fn case(&self) -> (&str, &str, u64, &str) {
        (
            &self.topology,
            &self.durability,
            self.rate_offered,
            &self.placement,
        )
    }
}

/// Medians of one case over several runs.
#[derive(Clone, Debug, PartialEq)]
pub struct CaseMedians {
    pub topology: String,
    pub durability: String,
    pub placement: String,
    pub rate_offered: u64,
    pub runs: usize,
    pub commands_per_s: f64,
    pub ratio_to_engine: f64,
    pub ratio_to_engine_min: f64,
    pub ratio_to_engine_max: f64,
    pub latency_us_p50: f64,
    pub latency_us_p99: f64,
    pub latency_us_p999: f64,
    pub ratio_to_commit_alone: f64,
    pub cross_core_ns: Option<f64>,
    /// Runs whose round trip was measured, and of those, the ones in the near placement
    /// (below [`NEAR_ROUND_TRIP_NS`]): a condition to quote beside the medians, which are
    /// over all runs.
    pub runs_placed: usize,
    pub runs_near: usize,
}

/// A cross-core round trip below this is the near vCPU placement (~50-110 ns measured;
/// the far one ~400-470 ns).
pub const NEAR_ROUND_TRIP_NS: f64 = 200.0;

/// Groups the reports by case (first-seen order) and takes the median of each figure.
pub fn case_medians(reports: &[CaseReport]) -> Vec<CaseMedians> {
    let mut cases: Vec<Vec<&CaseReport>> = Vec::new();
    for r in reports {
        match cases.iter_mut().find(|c| c[0].case() == r.case()) {
            Some(c) => c.push(r),
            None => cases.push(vec![r]),
        }
    }
    cases
        .into_iter()
        .map(|c| {
            let of =
                |f: &dyn Fn(&CaseReport) -> f64| -> Vec<f64> { c.iter().map(|r| f(r)).collect() };
            let ratios = of(&|r| r.ratio_to_engine());
            let cross: Vec<f64> = c.iter().filter_map(|r| r.cross_core_ns).collect();
            CaseMedians {
                topology: c[0].topology.clone(),
                durability: c[0].durability.clone(),
                placement: c[0].placement.clone(),
                rate_offered: c[0].rate_offered,
                runs: c.len(),
                commands_per_s: median(&of(&|r| r.commands_per_s)),
                ratio_to_engine: median(&ratios),
                ratio_to_engine_min: ratios.iter().copied().fold(f64::INFINITY, f64::min),
                ratio_to_engine_max: ratios.iter().copied().fold(0.0, f64::max),
                latency_us_p50: median(&of(&|r| us(r.latency.latency_ns_p50))),
                latency_us_p99: median(&of(&|r| us(r.latency.latency_ns_p99))),
                latency_us_p999: median(&of(&|r| us(r.latency.latency_ns_p999))),
                ratio_to_commit_alone: median(&of(&|r| r.ratio_to_commit_alone())),
                cross_core_ns: (!cross.is_empty()).then(|| median(&cross)),
                runs_placed: cross.len(),
                runs_near: cross.iter().filter(|&&ns| ns < NEAR_ROUND_TRIP_NS).count(),
            }
        })
        .collect()
}

/// Checks what `run` would otherwise find out by panicking part-way: every case's node
/// config (topology, durability and its backend, placement, ring sizes), and that the
/// journal directory can be created.
pub fn check_args(args: &PipelineBenchArgs) -> Result<(), String> {
    for placement in &args.placements {
        if !["free", "pinned"].contains(&placement.as_str()) {
            return Err(format!("unknown placement {placement:?} (free, pinned)"));
        }
    }
    for topology in &args.topologies {
        for durability in &args.durabilities {
            for placement in &args.placements {
                let text = node_config_text(&args.dir, topology, durability, placement, args);
                Config::parse(&text, "bench").map_err(|e| {
                    format!("topology {topology:?}, durability {durability:?}: {e}")
                })?;
            }
        }
    }
    std::fs::create_dir_all(&args.dir)
        .map_err(|e| format!("journal directory {}: {e}", args.dir.display()))
}

fn node_config(
    dir: &Path,
    topology: &str,
    durability: &str,
    placement: &str,
    args: &PipelineBenchArgs,
) -> Config {
    let text = node_config_text(dir, topology, durability, placement, args);
    Config::parse(&text, "bench").expect("bench config is valid (check_args)")
}

/// `durability` is a mode, optionally with a journal backend: `async`, `group`,
/// `group-mmap`, `group-pwrite`, `group-io-uring`. The ring sizes are the node's unless
/// `args` sets them; the config's own checks apply to them.
pub(crate) fn node_config_text(
    dir: &Path,
    topology: &str,
    durability: &str,
    placement: &str,
    args: &PipelineBenchArgs,
) -> String {
    let (durability, backend) = durability.split_once('-').unwrap_or((durability, "auto"));
    let mut rings = String::new();
    if let Some(n) = args.input_ring_size {
        rings += &format!("input_ring_size = {n}\n");
    }
    if let Some(n) = args.output_ring_size {
        rings += &format!("output_ring_size = {n}\n");
    }
    let batch_max = args.input_ring_size.map_or(512, |n| n.min(512));
    // Fused: the pipeline thread and the driver, one core each, so the pipeline may spin.
    // Split: more stages than cores, so they back off.
    let wait = if topology == "fused" {
        "busy-spin"
    } else {
        "backoff"
    };
    format!(
        r#"
[node]
id = 1
data_dir = "{}"
[journal]
durability = "{durability}"
backend = "{backend}"
segment_size_mib = 256
flush_interval_ms = 5
low_space_mib = 64
[pipeline]
topology = "{topology}"
wait = "{wait}"
batch_max = {batch_max}
{rings}{cores}
[snapshot]
every_commands = 0
every_seconds = 0
keep = 1
[metrics]
log_every_seconds = 0
"#,
        dir.display(),
        cores = pipeline_cores(topology, placement),
    )
}

/// The `[pipeline]` cores line for a placement. `pinned`: the journal's helpers and the
/// snapshot writer share core 0 with the driver (which stands for the gateway); the fused
/// pipeline thread has the last core to itself (inline: the driver runs the pipeline, and
/// the helpers have the last core). Split stages stay unpinned (they outnumber
/// the cores and take turns through their doorbells).
fn pipeline_cores(topology: &str, placement: &str) -> String {
    match (placement, topology) {
        ("pinned", "fused") => format!("cores = {{ pipeline = {}, helpers = 0 }}", core_last()),
        // Inline: the driver on core 0 is the pipeline; the helpers get the other core.
        ("pinned", "inline") => format!("cores = {{ helpers = {} }}", core_last()),
        ("pinned", _) => "cores = { helpers = 0 }".into(),
        _ => String::new(),
    }
}

/// The last core this process may use. Read once, before any bench thread pins itself
/// (the crate reads the calling thread's mask).
fn core_last() -> usize {
    static CORE_LAST: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORE_LAST.get_or_init(|| {
        crate::config::allowed_core_ids()
            .and_then(|ids| ids.into_iter().max())
            .unwrap_or(0)
    })
}

/// One case: a fresh node, setup and pre-fill untimed, then `timed` at `rate` (0: max).
/// The driver thread plays the gateway: the only producer, and the drainer of the output
/// ring (the node runs in poll mode, no publisher thread).
fn run_case(
    args: &PipelineBenchArgs,
    setup: &[Command],
    timed: &[Command],
    topology: &str,
    durability: &str,
    rate: u64,
    placement: &str,
) -> CaseReport {
    let dir = args
        .dir
        .join(format!("{topology}-{durability}-{rate}-{placement}"));
    let _ = std::fs::remove_dir_all(&dir);
    // Started here: config validation and stage pinning read the calling thread's cores,
    // and the driver pins itself.
    let config = node_config(&dir, topology, durability, placement, args);
    let no_wake: crate::node::Waker = std::sync::Arc::new(|| {});
    let node = Node::start(&config, OutputMode::Poll(no_wake)).expect("bench node starts");
    // The driver runs on its own thread so that pinning it leaves the caller unpinned.
    let measured = std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("bench-driver".into())
            .spawn_scoped(scope, || {
                if placement == "pinned" {
                    core_affinity::set_for_current(core_affinity::CoreId { id: 0 });
                }
                drive_case(node, setup, timed, rate)
            })
            .expect("spawn the bench driver")
            .join()
            .expect("the bench driver completes")
    });
    let _ = std::fs::remove_dir_all(&dir);
    CaseReport {
        topology: topology.into(),
        durability: durability.into(),
        placement: placement.into(),
        rate_offered: rate,
        commands_per_s: measured.commands_per_s,
        latency: measured.latency,
        backpressured: measured.backpressured,
        commit_ns_p99: measured.commit_ns_p99,
        engine_alone_per_s: 0.0,
        commit_alone_ns_p99: 0,
        cross_core_ns: None,
    }
}

/// What one driver run measured.
pub(crate) struct Measured {
    pub commands_per_s: f64,
    pub latency: LatencySummary,
    pub backpressured: u64,
    pub commit_ns_p99: u64,
}

/// Drives `node` open loop at `rate` (0: as fast as it takes them) over `setup` (not
/// timed) then `timed`, and shuts it down.
pub(crate) fn drive_case(
    mut node: Node,
    setup: &[Command],
    timed: &[Command],
    rate: u64,
) -> Measured {
    let mut collector = Collector {
        base: Instant::now(),
        histogram: latency_histogram(),
        completed: 0,
    };
    for c in setup {
        submit_draining(&mut node, &mut collector, c, UNTIMED);
    }
    let base = collector.base;
    let interval_ns = 1_000_000_000u64.checked_div(rate).unwrap_or(0);
    let start = Instant::now();
    let start_ns = start.duration_since(base).as_nanos() as u64;
    let mut batch: Vec<(Command, u64)> = Vec::with_capacity(BATCH_MAX);
    let mut next = 0usize;
    // Bounded: every pass sends at least one command or waits for the next one's time.
    while next < timed.len() {
        let now_ns = base.elapsed().as_nanos() as u64;
        batch.clear();
        // Everything due goes out in one batch (as the gateway batches what it read);
        // at maximum rate everything is due and stamped with the actual send time.
        while next < timed.len() && batch.len() < BATCH_MAX {
            let planned_ns = start_ns + next as u64 * interval_ns;
            if planned_ns > now_ns {
                break;
            }
            let tag = if rate == 0 { now_ns } else { planned_ns };
            batch.push((timed[next], tag));
            next += 1;
        }
        if batch.is_empty() {
            // Open loop: until the next planned time, drain outputs.
            if collector.drain(&mut node) == 0 {
                std::hint::spin_loop();
            }
            continue;
        }
        submit_batch_draining(&mut node, &mut collector, &batch);
        // Like the gateway's loop: every pass also drains what came back.
        collector.drain(&mut node);
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    while collector.completed < timed.len() {
        assert!(Instant::now() < deadline, "every timed command completes");
        if collector.drain(&mut node) == 0 {
            std::hint::spin_loop();
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let summary = node.metrics().summary();
    node.shutdown().expect("bench node stops cleanly");
    Measured {
        commands_per_s: timed.len() as f64 / seconds,
        latency: LatencySummary::from_histogram(&collector.histogram),
        backpressured: summary.backpressured,
        commit_ns_p99: summary.durability_wait_ns_p99,
    }
}

/// Submits a batch without blocking; while the input ring lacks room, drains outputs (the
/// engine may be waiting for room there) and retries.
fn submit_batch_draining(node: &mut Node, collector: &mut Collector, batch: &[(Command, u64)]) {
    for _ in 0..100_000_000u64 {
        match node.try_submit_batch(batch) {
            Ok(()) => return,
            Err(crate::node::NodeError::Backpressure) => {
                if collector.drain(node) == 0 {
                    std::hint::spin_loop();
                }
            }
            Err(e) => panic!("bench submit failed: {e}"),
        }
    }
    panic!("the node took no batch for 100,000,000 attempts");
}

/// Submits without blocking; while the input ring is full, drains outputs (the engine
/// may be waiting for room there) and retries.
fn submit_draining(node: &mut Node, collector: &mut Collector, command: &Command, tag: u64) {
    for _ in 0..100_000_000u64 {
        match node.try_submit(command, tag) {
            Ok(()) => return,
            Err(crate::node::NodeError::Backpressure) => {
                if collector.drain(node) == 0 {
                    std::hint::spin_loop();
                }
            }
            Err(e) => panic!("bench submit failed: {e}"),
        }
    }
    panic!("the node took no command for 100,000,000 attempts");
}

/// The engine alone over the same stream: median of 3 runs, commands/s.
fn engine_alone(setup: &[Command], timed: &[Command]) -> f64 {
    let mut base = Exchange::new();
    let mut events = Vec::with_capacity(1024);
    for c in setup {
        base.apply(c, &mut events);
    }
    let mut rates = Vec::new();
    for _ in 0..3 {
        let mut ex = base.clone();
        let start = Instant::now();
        for c in timed {
            events.clear();
            ex.apply(c, &mut events);
        }
        // The final state and events escape, so none of the work can be optimised away.
        std::hint::black_box((&ex, &events));
        rates.push(timed.len() as f64 / start.elapsed().as_secs_f64());
    }
    median(&rates)
}

/// How one group commit reaches the disk, for the probe that stands for "one fdatasync".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ProbeWrite {
    /// As the journal's O_DIRECT path (the group default): the partly written last 4 KiB
    /// block and the new bytes, rewritten as whole blocks from an aligned buffer, then
    /// fdatasync.
    Direct,
    /// As the buffered backends (the mapped journal): the new bytes written into the page
    /// cache in place, then fdatasync.
    Buffered,
}

const PROBE_BLOCK_BYTES: usize = 4096;

/// Latency of one group commit of a single `frame_bytes` record, done the way the journal
/// does it, on the benchmark's file system: a preallocated, zero-filled file (as the
/// node's segments, `journal.zero_fill_segments`) overwritten in place, so no sync carries
/// a growing file size or an unwritten extent's conversion that the journal's commits do
/// not. `Direct` falls back to `Buffered` where the file system refuses O_DIRECT (as the
/// journal does); the second value says which ran.
fn commit_alone_latency(
    dir: &Path,
    samples: usize,
    frame_bytes: usize,
    how: ProbeWrite,
) -> (LatencySummary, ProbeWrite) {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    // The aligned buffer below holds a partial block and one record: two blocks at most.
    assert!(
        frame_bytes <= PROBE_BLOCK_BYTES,
        "a command's frame fits a block"
    );
    std::fs::create_dir_all(dir).expect("bench dir");
    let path = dir.join("fdatasync-probe");
    // Prepare: allocate, write zeros, sync (written blocks, as a zero-filled segment).
    let size = ((samples * frame_bytes) / PROBE_BLOCK_BYTES + 2) * PROBE_BLOCK_BYTES;
    {
        let file = std::fs::File::create(&path).expect("probe file");
        file.write_all_at(&vec![0u8; size], 0)
            .expect("probe zero fill");
        file.sync_all().expect("probe zero fill sync");
    }
    let direct_file = (how == ProbeWrite::Direct)
        .then(|| {
            std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(&path)
                .ok()
        })
        .flatten();
    let direct = direct_file.is_some();
    let file = match direct_file {
        Some(file) => {
            // The journal's O_DIRECT segments are not in the page cache either.
            // SAFETY: plain syscall on an open descriptor.
            unsafe {
                libc::posix_fadvise(
                    std::os::fd::AsRawFd::as_raw_fd(&file),
                    0,
                    0,
                    libc::POSIX_FADV_DONTNEED,
                );
            }
            file
        }
        None => std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("probe file"),
    };
    // Two blocks' worth, 4 KiB aligned: a record may straddle a block boundary.
    let mut raw = vec![0u8; 3 * PROBE_BLOCK_BYTES];
    let align = raw.as_ptr().align_offset(PROBE_BLOCK_BYTES);
    let block = &mut raw[align..align + 2 * PROBE_BLOCK_BYTES];
    let record = vec![7u8; frame_bytes];
    let mut h = latency_histogram();
    // Stream position; `block` holds the bytes of the block that contains it.
    let mut end = 0usize;
    for _ in 0..samples {
        let start = Instant::now();
        if direct {
            let tail_offset = end & !(PROBE_BLOCK_BYTES - 1);
            let tail_len = end - tail_offset;
            let total = tail_len + frame_bytes;
            let total_aligned = total.next_multiple_of(PROBE_BLOCK_BYTES);
            block[tail_len..total].copy_from_slice(&record);
            block[total..total_aligned].fill(0);
            file.write_all_at(&block[..total_aligned], tail_offset as u64)
                .expect("probe write");
            file.sync_data().expect("probe fdatasync");
            // Keep the new partial last block at the front.
            let keep_from = total & !(PROBE_BLOCK_BYTES - 1);
            block.copy_within(keep_from..total, 0);
        } else {
            file.write_all_at(&record, end as u64).expect("probe write");
            file.sync_data().expect("probe fdatasync");
        }
        h.saturating_record(start.elapsed().as_nanos() as u64);
        end += frame_bytes;
    }
    let _ = std::fs::remove_file(&path);
    let ran = if direct {
        ProbeWrite::Direct
    } else {
        ProbeWrite::Buffered
    };
    (LatencySummary::from_histogram(&h), ran)
}

/// The probe that stands for one commit of a case's journal: buffered for the mapped
/// journal, O_DIRECT for the others (pwrite and io_uring write with O_DIRECT by default).
fn probe_for(durability: &str) -> ProbeWrite {
    if durability.ends_with("-mmap") {
        ProbeWrite::Buffered
    } else {
        ProbeWrite::Direct
    }
}

/// Bytes one timed command takes in the journal (its frame), for the probe's records.
fn command_frame_bytes(timed: &[Command]) -> usize {
    let mut buf = vec![0u8; ringex_engine::codec::COMMAND_SIZE_MAX];
    let payload = timed
        .first()
        .map_or(64, |c| ringex_engine::codec::encode_command(c, &mut buf));
    ringex_journal::frame_size_bytes(payload as u64) as usize
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

pub fn run(args: &PipelineBenchArgs) -> Vec<CaseReport> {
    assert!(args.runs > 0, "at least one run");
    let workload = generate(1, args.commands, args.seed);
    let mut setup = workload.setup.clone();
    setup.extend(workload.prefill.iter().copied());
    let timed = &workload.commands;
    println!(
        "ringex pipeline bench: nproc={}, cpu={}, release={}, {} timed commands per case, \
         {} run(s), journals in {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model(),
        !cfg!(debug_assertions),
        timed.len(),
        args.runs,
        args.dir.display()
    );
    let frame_bytes = command_frame_bytes(timed);
    let mut reports = Vec::new();
    for run_index in 0..args.runs {
        if args.runs > 1 {
            println!("--- run {} of {}", run_index + 1, args.runs);
        }
        let alone = engine_alone(&setup, timed);
        println!("engine alone (baseline): {:.2} M commands/s", alone / 1e6);
        // One group commit alone, per write path the cases use.
        let mut probes: Vec<(ProbeWrite, LatencySummary)> = Vec::new();
        for d in args.durabilities.iter().filter(|d| d.starts_with("group")) {
            let want = probe_for(d);
            if probes.iter().any(|(w, _)| *w == want) {
                continue;
            }
            let (sync, ran) = commit_alone_latency(&args.dir, 2_000, frame_bytes, want);
            println!(
                "one commit alone ({}): p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us, max {:.1} us",
                probe_label(ran, frame_bytes),
                us(sync.latency_ns_p50),
                us(sync.latency_ns_p99),
                us(sync.latency_ns_p999),
                us(sync.latency_ns_max)
            );
            probes.push((want, sync));
        }
        println!(
            "{} {:>9} {:>9} {:>10} {:>10} {:>8} {:>6}",
            case_columns_header(),
            "p50 us",
            "p99 us",
            "p99.9 us",
            "max us",
            "backpr",
            "rt ns"
        );
        for topology in &args.topologies {
            for durability in &args.durabilities {
                for (&rate, placement) in args
                    .rates
                    .iter()
                    .flat_map(|r| args.placements.iter().map(move |p| (r, p)))
                {
                    if placement == "pinned" && core_last() == 0 {
                        continue;
                    }
                    // Where the host has put the two vCPUs right now (it moves them).
                    let cross_core_ns = super::cross_core_round_trip_ns(0, core_last(), 100_000);
                    let mut r =
                        run_case(args, &setup, timed, topology, durability, rate, placement);
                    r.engine_alone_per_s = alone;
                    r.commit_alone_ns_p99 = probes
                        .iter()
                        .find(|(w, _)| *w == probe_for(durability))
                        .map_or(0, |(_, sync)| sync.latency_ns_p99);
                    r.cross_core_ns = cross_core_ns;
                    print_row(&r);
                    reports.push(r);
                }
            }
        }
    }
    if args.runs > 1 {
        print_medians(&case_medians(&reports));
    }
    reports
}

/// What the probe did, for its line in the output.
fn probe_label(how: ProbeWrite, frame_bytes: usize) -> String {
    match how {
        ProbeWrite::Direct => format!(
            "one {frame_bytes} B record: O_DIRECT write of its 4 KiB block(s) + fdatasync, \
             preallocated zero-filled file overwritten in place, as the journal's group commit"
        ),
        ProbeWrite::Buffered => format!(
            "one {frame_bytes} B record: buffered write + fdatasync, preallocated zero-filled \
             file overwritten in place, as the mapped journal's commit"
        ),
    }
}

/// The columns every table starts with: the case and its throughput.
fn case_columns_header() -> String {
    format!(
        "{:<6} {:<6} {:<6} {:>10} {:>10} {:>8}",
        "topo", "durab", "place", "offered/s", "achieved/s", "x alone"
    )
}

fn rate_label(rate: u64) -> String {
    if rate == 0 {
        "max".to_string()
    } else {
        rate.to_string()
    }
}

/// The columns every row starts with, under [`case_columns_header`].
fn case_columns(
    (topology, durability, placement): (&str, &str, &str),
    rate: u64,
    commands_per_s: f64,
    ratio_to_engine: f64,
) -> String {
    format!(
        "{topology:<6} {durability:<6} {placement:<6} {:>10} {commands_per_s:>10.0} \
         {ratio_to_engine:>8.2}",
        rate_label(rate)
    )
}

/// The `rt ns` column: the cache-line round trip, or `-` when not measured.
fn round_trip_label(ns: Option<f64>) -> String {
    ns.map_or("-".to_string(), |ns| format!("{ns:.0}"))
}

fn print_row(r: &CaseReport) {
    println!(
        "{} {:>9.1} {:>9.1} {:>10.1} {:>10.1} {:>8} {:>6}",
        case_columns(
            (&r.topology, &r.durability, &r.placement),
            r.rate_offered,
            r.commands_per_s,
            r.ratio_to_engine()
        ),
        us(r.latency.latency_ns_p50),
        us(r.latency.latency_ns_p99),
        us(r.latency.latency_ns_p999),
        us(r.latency.latency_ns_max),
        r.backpressured,
        round_trip_label(r.cross_core_ns),
    );
    if r.durability.starts_with("group") {
        println!(
            "       group p99 / one commit alone p99 = {:.2}; the commits' own p99 {:.1} us",
            r.ratio_to_commit_alone(),
            us(r.commit_ns_p99)
        );
    }
}

fn print_medians(medians: &[CaseMedians]) {
    println!(
        "--- medians over all runs (x alone: median, min-max; x commit: the commands' p99 over \
         one commit alone's; rt: median round trip; near: runs with the two vCPUs placed \
         near, rt < {NEAR_ROUND_TRIP_NS:.0} ns)"
    );
    println!(
        "{} {:>11} {:>9} {:>9} {:>10} {:>8} {:>6} {:>6}",
        case_columns_header(),
        "min-max",
        "p50 us",
        "p99 us",
        "p99.9 us",
        "x commit",
        "rt ns",
        "near"
    );
    for m in medians {
        println!(
            "{} {:>11} {:>9.1} {:>9.1} {:>10.1} {:>8} {:>6} {:>6}",
            case_columns(
                (&m.topology, &m.durability, &m.placement),
                m.rate_offered,
                m.commands_per_s,
                m.ratio_to_engine
            ),
            format!("{:.2}-{:.2}", m.ratio_to_engine_min, m.ratio_to_engine_max),
            m.latency_us_p50,
            m.latency_us_p99,
            m.latency_us_p999,
            if m.durability.starts_with("group") {
                format!("{:.2}", m.ratio_to_commit_alone)
            } else {
                "-".to_string()
            },
            round_trip_label(m.cross_core_ns),
            format!("{}/{}", m.runs_near, m.runs_placed),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_case_completes_every_command_and_measures_latency() {
        let dir = tempfile::tempdir().unwrap();
        let args = PipelineBenchArgs {
            commands: 2_000,
            dir: dir.path().to_path_buf(),
            ..PipelineBenchArgs::default()
        };
        let w = generate(1, args.commands, 1);
        let mut setup = w.setup.clone();
        setup.extend(w.prefill.iter().copied());
        let r = run_case(&args, &setup, &w.commands, "fused", "async", 50_000, "free");
        assert!(r.commands_per_s > 0.0);
        assert!(r.latency.latency_ns_p50 > 0);
        assert!(r.latency.latency_ns_max >= r.latency.latency_ns_p99);
    }

    fn report(topology: &str, rate: u64, per_s: f64, alone: f64, p99_ns: u64) -> CaseReport {
        CaseReport {
            topology: topology.into(),
            durability: "group".into(),
            placement: "pinned".into(),
            rate_offered: rate,
            commands_per_s: per_s,
            latency: LatencySummary {
                latency_ns_p50: p99_ns / 2,
                latency_ns_p99: p99_ns,
                latency_ns_p999: p99_ns * 2,
                latency_ns_max: p99_ns * 3,
                latency_ns_mean: 0.0,
            },
            backpressured: 0,
            commit_ns_p99: 0,
            engine_alone_per_s: alone,
            commit_alone_ns_p99: 100_000,
            cross_core_ns: Some(per_s / 1000.0),
        }
    }

    #[test]
    fn medians_are_taken_per_case_against_each_runs_own_baselines() {
        // Two cases interleaved over three runs, as `run` produces them.
        let reports = [
            report("fused", 0, 5.0e6, 10.0e6, 300_000),
            report("inline", 0, 4.0e6, 10.0e6, 100_000),
            report("fused", 0, 2.0e6, 8.0e6, 500_000),
            report("inline", 0, 3.0e6, 12.0e6, 200_000),
            report("fused", 0, 6.0e6, 10.0e6, 100_000),
            report("inline", 0, 5.0e6, 10.0e6, 150_000),
        ];
        let m = case_medians(&reports);
        assert_eq!(m.len(), 2);
        assert_eq!((m[0].topology.as_str(), m[0].runs), ("fused", 3));
        assert_eq!(m[0].commands_per_s, 5.0e6);
        // Ratios 0.5, 0.25, 0.6: each against its own run's engine alone.
        assert_eq!(m[0].ratio_to_engine, 0.5);
        assert_eq!(
            (m[0].ratio_to_engine_min, m[0].ratio_to_engine_max),
            (0.25, 0.6)
        );
        assert_eq!(m[0].latency_us_p99, 300.0);
        assert_eq!(m[0].ratio_to_commit_alone, 3.0);
        assert_eq!(m[0].cross_core_ns, Some(5000.0));
        // Round trips 5000, 2000, 6000 ns: none near.
        assert_eq!((m[0].runs_near, m[0].runs_placed), (0, 3));
        assert_eq!(m[1].topology, "inline");
        assert_eq!(m[1].ratio_to_engine, 0.4);
        assert_eq!(m[1].latency_us_p50, 75.0);
    }
}
