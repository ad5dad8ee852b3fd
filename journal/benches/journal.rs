//! Journal benchmark (not a test). Run in release:
//!   cargo bench -p ringex-journal
//! Env: RINGEX_BENCH_DIR (default: $TMPDIR/ringex-journal-bench), RINGEX_BENCH_QUICK=1 for a
//! short run, RINGEX_BENCH_ONLY=async|group for one family, RINGEX_BENCH_RUNS=N to repeat
//! the group family N times and print per-case medians, RINGEX_BENCH_ZERO_FILL=0 to leave
//! the journal's segments fallocated only (the node zero-fills them, the default here).
//!
//! Cases: `async` append of 64/256-byte payloads (records/s, MB/s); `group` commit of
//! batches of B records, two ways, each against a plain-file baseline doing the same thing
//! in the same run, on a preallocated, zero-filled file overwritten in place (the journal's
//! segments are preallocated and zero-filled too, so neither side's syncs carry a growing
//! size or extent conversions the other's do not):
//! - pipelined: the producer may run at most a ring's worth of records (65,536) ahead of
//!   `durable` (the pipeline's gating) while a syncer commits whatever is there. Baseline:
//!   a writer thread frames each batch and writes it with one pwrite, a syncer thread runs
//!   back-to-back fdatasyncs, under the same bound.
//! - closed loop: append B, commit, repeat. Baseline: frame B, one pwrite, fdatasync,
//!   repeat.

use hdrhistogram::Histogram;
use ringex_journal::{frame_size_bytes, Backend, Config, Durability, Journal};
use std::collections::{BTreeMap, VecDeque};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const RING_RECORDS: u64 = 65_536;

struct Outcome {
    records: u64,
    elapsed: Duration,
    payload_len: usize,
    latency: Option<Histogram<u64>>,
}

impl Outcome {
    fn records_per_s(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64()
    }
    fn mb_per_s(&self) -> f64 {
        (self.records * self.payload_len as u64) as f64 / self.elapsed.as_secs_f64() / 1e6
    }
    fn print(&self, name: &str) {
        print!(
            "{name:<44} {:>12.0} rec/s {:>9.1} MB/s payload {:>9.1} MB/s on disk",
            self.records_per_s(),
            self.mb_per_s(),
            (self.records * frame_size_bytes(self.payload_len as u64)) as f64
                / self.elapsed.as_secs_f64()
                / 1e6
        );
        if let Some(h) = &self.latency {
            print!(
                "  commit latency us p50 {:.0} p99 {:.0} p99.9 {:.0}",
                h.value_at_quantile(0.5) as f64 / 1e3,
                h.value_at_quantile(0.99) as f64 / 1e3,
                h.value_at_quantile(0.999) as f64 / 1e3
            );
        }
        println!();
    }
}

fn fresh_dir(root: &Path, name: &str) -> PathBuf {
    let d = root.join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn config(dir: &Path, durability: Durability) -> Config {
    let mut c = Config::new(dir);
    c.segment_size_bytes = SEGMENT_BYTES;
    c.durability = durability;
    c.low_space_threshold_bytes = 1 << 30;
    c
}

/// Segments, and the baseline's file: the node's segment size.
const SEGMENT_BYTES: u64 = 256 << 20;

/// The journal's segments zero-filled (as the node's, `journal.zero_fill_segments`)
/// unless RINGEX_BENCH_ZERO_FILL=0.
fn zero_fill() -> bool {
    std::env::var("RINGEX_BENCH_ZERO_FILL").map_or(true, |v| v != "0")
}

/// `batch`: None for the mmap backend (every append is written); Some(n) to write through
/// with pwrite, `write_staged` after every n appends (as the node does per batch).
fn bench_async(root: &Path, payload_len: usize, records: u64, batch: Option<u64>) -> Outcome {
    let dir = fresh_dir(root, &format!("async-{payload_len}"));
    let mut c = config(
        &dir,
        Durability::Async {
            flush_interval_ms: 100,
        },
    );
    c.backend = if batch.is_some() {
        Backend::Pwrite
    } else {
        Backend::Mmap
    };
    let mut j = Journal::open(c).unwrap();
    let payload = vec![0xabu8; payload_len];
    let every = batch.unwrap_or(u64::MAX);
    let start = Instant::now();
    for i in 0..records {
        j.append(1, 1, i, &payload).unwrap();
        if i % every == every - 1 {
            j.write_staged().unwrap();
        }
    }
    j.write_staged().unwrap();
    let elapsed = start.elapsed();
    j.close().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    Outcome {
        records,
        elapsed,
        payload_len,
        latency: None,
    }
}

fn bench_group(
    root: &Path,
    payload_len: usize,
    batch: u64,
    duration: Duration,
    backend: Backend,
    direct_io: bool,
) -> (Outcome, String) {
    let dir = fresh_dir(root, &format!("group-{payload_len}-{batch}"));
    let mut c = config(&dir, Durability::Group);
    c.backend = backend;
    c.direct_io = direct_io;
    c.prealloc_zero_fill = zero_fill();
    let mut j = Journal::open(c).unwrap();
    let used = format!(
        "{:?}{}",
        j.backend(),
        if j.direct_io() { "+O_DIRECT" } else { "" }
    );
    if let Some(note) = j.backend_note() {
        println!("  note: {note}");
    }
    settle_preallocation();
    let w = j.watermarks();
    let payload = vec![0xcdu8; payload_len];
    let mut hist = Histogram::<u64>::new(3).unwrap();
    let mut pending: VecDeque<(u64, Instant)> = VecDeque::new();
    let start = Instant::now();
    let mut records = 0u64;
    while start.elapsed() < duration {
        let mut last = 0;
        for _ in 0..batch {
            last = j.append(1, 1, records, &payload).unwrap();
            records += 1;
        }
        pending.push_back((last, Instant::now()));
        // Gate: at most a ring's worth of records ahead of durable.
        loop {
            let durable = w.durable();
            let now = Instant::now();
            while let Some(&(seq, t)) = pending.front() {
                if seq > durable {
                    break;
                }
                hist.record((now - t).as_nanos() as u64).unwrap();
                pending.pop_front();
            }
            if last <= durable + RING_RECORDS {
                break;
            }
            std::hint::spin_loop();
        }
    }
    let last = records;
    assert!(j.wait_durable(last, Duration::from_secs(60)).unwrap());
    let elapsed = start.elapsed();
    let now = Instant::now();
    for (_, t) in pending {
        hist.record((now - t).as_nanos() as u64).unwrap();
    }
    j.close().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (
        Outcome {
            records,
            elapsed,
            payload_len,
            latency: Some(hist),
        },
        used,
    )
}

/// Closed loop, like its baseline: append a batch, `commit()` it (sync in this thread, as
/// the node's journaling thread does: `caller_commits`), repeat. The latency of one group
/// commit with nothing queued ahead of it.
fn bench_group_closed(
    root: &Path,
    payload_len: usize,
    batch: u64,
    duration: Duration,
    backend: Backend,
    direct_io: bool,
) -> (Outcome, String) {
    let dir = fresh_dir(root, &format!("closed-{payload_len}-{batch}"));
    let mut c = config(&dir, Durability::Group);
    c.backend = backend;
    c.direct_io = direct_io;
    c.prealloc_zero_fill = zero_fill();
    c.caller_commits = true;
    let mut j = Journal::open(c).unwrap();
    let used = format!(
        "{:?}{}",
        j.backend(),
        if j.direct_io() { "+O_DIRECT" } else { "" }
    );
    settle_preallocation();
    let payload = vec![0xcdu8; payload_len];
    let mut hist = Histogram::<u64>::new(3).unwrap();
    let start = Instant::now();
    let mut records = 0u64;
    while start.elapsed() < duration {
        let t = Instant::now();
        let mut last = 0;
        for _ in 0..batch {
            last = j.append(1, 1, records, &payload).unwrap();
            records += 1;
        }
        assert!(j.commit().unwrap() >= last);
        hist.record(t.elapsed().as_nanos() as u64).unwrap();
    }
    let elapsed = start.elapsed();
    j.close().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (
        Outcome {
            records,
            elapsed,
            payload_len,
            latency: Some(hist),
        },
        used,
    )
}

/// Waits (at most 30 s) until the journal's preallocation thread has prepared the spare
/// segment it starts preparing at open (with zero fill: a segment's worth of writes), so that
/// the timed part starts in the steady state between segment rolls instead of competing
/// with that fill. Reads the thread's state and write count from /proc; where /proc says
/// nothing, returns at once.
fn settle_preallocation() {
    let deadline = Instant::now() + Duration::from_secs(30);
    let task = std::fs::read_dir("/proc/self/task").ok().and_then(|tasks| {
        tasks.flatten().map(|t| t.path()).find(|p| {
            std::fs::read_to_string(p.join("comm"))
                .is_ok_and(|c| c.trim_end().starts_with("journal-preall"))
        })
    });
    let Some(task) = task else {
        return;
    };
    let written = || {
        std::fs::read_to_string(task.join("io"))
            .ok()
            .and_then(|io| {
                io.lines().find_map(|l| {
                    l.strip_prefix("wchar: ")
                        .and_then(|v| v.parse::<u64>().ok())
                })
            })
            .unwrap_or(0)
    };
    let sleeping = || {
        std::fs::read_to_string(task.join("stat")).is_ok_and(|st| {
            st.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('S'))
        })
    };
    let needed = if zero_fill() { SEGMENT_BYTES } else { 0 };
    let mut quiet = 0;
    while quiet < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
        quiet = if written() >= needed && sleeping() {
            quiet + 1
        } else {
            0
        };
    }
}

/// CPU floor: the per-record work of `append` (header, CRC, chain, copy) into a warm
/// in-memory buffer, no file. Separates CPU cost from page-fault cost.
fn bench_cpu_floor(payload_len: usize, records: u64) -> Outcome {
    let frame = frame_size_bytes(payload_len as u64) as usize;
    let mut buf = vec![0u8; 64 << 20];
    let payload = vec![0xabu8; payload_len];
    let mut chain = 0u64;
    let mut at = 0usize;
    let start = Instant::now();
    for seq in 1..=records {
        let mut hdr = [0u8; 48];
        hdr[0..4].copy_from_slice(&(payload_len as u32).to_le_bytes());
        hdr[8..16].copy_from_slice(&seq.to_le_bytes());
        hdr[24..32].copy_from_slice(&chain.to_le_bytes());
        let mut h = crc32fast::Hasher::new();
        h.update(&hdr);
        h.update(&payload);
        let crc = h.finalize();
        hdr[40..44].copy_from_slice(&crc.to_le_bytes());
        if at + frame > buf.len() {
            at = 0;
        }
        buf[at..at + 48].copy_from_slice(&hdr);
        buf[at + 48..at + 48 + payload_len].copy_from_slice(&payload);
        chain = ringex_journal::chain_next(chain, crc, seq);
        at += frame;
    }
    let elapsed = start.elapsed();
    std::hint::black_box(&buf);
    Outcome {
        records,
        elapsed,
        payload_len,
        latency: None,
    }
}

/// The baselines' file: `SEGMENT_BYTES` of zeros, written and synced (written blocks, as a
/// zero-filled segment), then overwritten in place, wrapping at its end.
fn plain_file(root: &Path) -> PathBuf {
    let dir = fresh_dir(root, "baseline");
    let path = dir.join("plain.log");
    let f = std::fs::File::create(&path).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for i in 0..SEGMENT_BYTES / zeros.len() as u64 {
        f.write_all_at(&zeros, i * zeros.len() as u64).unwrap();
    }
    f.sync_all().unwrap();
    path
}

/// A baseline's writing state: one batch of B frames, with the same framing work per
/// record as the journal's append (header fields and a CRC-32), written with one pwrite at
/// the next place in the file.
struct PlainWriter {
    file: std::fs::File,
    buf: Vec<u8>,
    frame: usize,
    batches_in_file: u64,
    batches: u64,
}

impl PlainWriter {
    fn open(path: &Path, payload_len: usize, batch: u64) -> PlainWriter {
        let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        let frame = frame_size_bytes(payload_len as u64) as usize;
        let batch_bytes = frame * batch as usize;
        PlainWriter {
            file,
            buf: vec![0xefu8; batch_bytes],
            frame,
            batches_in_file: SEGMENT_BYTES / batch_bytes as u64,
            batches: 0,
        }
    }

    /// Frames and writes the next batch; `first` is the first record's number.
    fn write_batch(&mut self, first: u64) {
        for (i, rec) in self.buf.chunks_mut(self.frame).enumerate() {
            rec[8..16].copy_from_slice(&(first + i as u64).to_le_bytes());
            rec[40..44].fill(0);
            let crc = crc32fast::hash(&rec[..]);
            rec[40..44].copy_from_slice(&crc.to_le_bytes());
        }
        let at = (self.batches % self.batches_in_file) * self.buf.len() as u64;
        self.file.write_all_at(&self.buf, at).unwrap();
        self.batches += 1;
    }
}

/// Closed-loop baseline: frame B records, one pwrite, fdatasync, repeat. Latency = one
/// batch's framing + write + sync (as the journal's closed loop times append + commit).
fn bench_baseline_closed(
    path: &Path,
    payload_len: usize,
    batch: u64,
    duration: Duration,
) -> Outcome {
    let mut w = PlainWriter::open(path, payload_len, batch);
    let mut hist = Histogram::<u64>::new(3).unwrap();
    let start = Instant::now();
    let mut records = 0u64;
    while start.elapsed() < duration {
        let t = Instant::now();
        w.write_batch(records);
        w.file.sync_data().unwrap();
        hist.record(t.elapsed().as_nanos() as u64).unwrap();
        records += batch;
    }
    Outcome {
        records,
        elapsed: start.elapsed(),
        payload_len,
        latency: Some(hist),
    }
}

/// Pipelined baseline, the plain-file counterpart of `bench_group`: this thread frames and
/// writes batches, a syncer thread runs fdatasync back to back, each covering everything
/// written before it started, and the writer may run at most `RING_RECORDS` ahead of what
/// is durable. Latency = from a batch's write to the sync that covers it.
fn bench_baseline_pipelined(
    path: &Path,
    payload_len: usize,
    batch: u64,
    duration: Duration,
) -> Outcome {
    let mut w = PlainWriter::open(path, payload_len, batch);
    let sync_file = w.file.try_clone().unwrap();
    let written = AtomicU64::new(0);
    let durable = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let mut hist = Histogram::<u64>::new(3).unwrap();
    let mut pending: VecDeque<(u64, Instant)> = VecDeque::new();
    let (records, elapsed) = std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Acquire) {
                let upto = written.load(Ordering::Acquire);
                if upto > durable.load(Ordering::Relaxed) {
                    sync_file.sync_data().unwrap();
                    durable.store(upto, Ordering::Release);
                } else {
                    std::thread::yield_now();
                }
            }
        });
        let start = Instant::now();
        let mut records = 0u64;
        while start.elapsed() < duration {
            w.write_batch(records);
            records += batch;
            written.store(records, Ordering::Release);
            pending.push_back((records, Instant::now()));
            // Gate: at most a ring's worth of records ahead of durable.
            loop {
                let d = durable.load(Ordering::Acquire);
                let now = Instant::now();
                while let Some(&(upto, t)) = pending.front() {
                    if upto > d {
                        break;
                    }
                    hist.record((now - t).as_nanos() as u64).unwrap();
                    pending.pop_front();
                }
                if records <= d + RING_RECORDS {
                    break;
                }
                std::hint::spin_loop();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while durable.load(Ordering::Acquire) < records {
            assert!(
                Instant::now() < deadline,
                "the baseline's syncer catches up"
            );
            std::hint::spin_loop();
        }
        let elapsed = start.elapsed();
        stop.store(true, Ordering::Release);
        (records, elapsed)
    });
    let now = Instant::now();
    for (_, t) in pending {
        hist.record((now - t).as_nanos() as u64).unwrap();
    }
    Outcome {
        records,
        elapsed,
        payload_len,
        latency: Some(hist),
    }
}

/// One group case's figures in one run, for the medians over runs.
#[derive(Default)]
struct Figures {
    records_per_s: Vec<f64>,
    p50_us: Vec<f64>,
    p99_us: Vec<f64>,
    /// Against the same run's baseline of the same kind (pipelined or closed loop).
    ratio: Vec<f64>,
}

impl Figures {
    fn push(&mut self, o: &Outcome, baseline: Option<&Outcome>) {
        self.records_per_s.push(o.records_per_s());
        if let Some(h) = &o.latency {
            self.p50_us.push(h.value_at_quantile(0.5) as f64 / 1e3);
            self.p99_us.push(h.value_at_quantile(0.99) as f64 / 1e3);
        }
        if let Some(b) = baseline {
            self.ratio.push(o.records_per_s() / b.records_per_s());
        }
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn range(v: &[f64]) -> (f64, f64) {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (lo, hi)
}

/// Per-case medians over the runs, in first-seen order (`order`).
fn print_medians(runs: usize, order: &[String], figures: &BTreeMap<String, Figures>) {
    println!(
        "--- medians over {runs} runs (ratio: against the same run's baseline of the same kind)"
    );
    println!(
        "{:<48} {:>10} {:>17} {:>8} {:>8} {:>8} {:>15}",
        "case", "M rec/s", "min-max", "p50 us", "p99 us", "ratio", "ratio min-max"
    );
    for name in order {
        let f = &figures[name];
        let (lo, hi) = range(&f.records_per_s);
        let (rlo, rhi) = range(&f.ratio);
        println!(
            "{:<48} {:>10.3} {:>17} {:>8.0} {:>8.0} {:>8} {:>15}",
            name,
            median(&f.records_per_s) / 1e6,
            format!("{:.3}-{:.3}", lo / 1e6, hi / 1e6),
            median(&f.p50_us),
            median(&f.p99_us),
            if f.ratio.is_empty() {
                "-".to_string()
            } else {
                format!("{:.2}x", median(&f.ratio))
            },
            if f.ratio.is_empty() {
                "-".to_string()
            } else {
                format!("{rlo:.2}-{rhi:.2}")
            },
        );
    }
}

fn main() {
    // `cargo bench` passes --bench; ignore arguments.
    let quick = std::env::var("RINGEX_BENCH_QUICK").is_ok();
    let root = std::env::var("RINGEX_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir().join("ringex-journal-bench"));
    std::fs::create_dir_all(&root).unwrap();
    println!("journal bench in {} (quick: {quick})", root.display());
    let async_records = if quick { 1_000_000 } else { 10_000_000 };
    let duration = Duration::from_millis(if quick { 300 } else { 2000 });

    let only = std::env::var("RINGEX_BENCH_ONLY").unwrap_or_default();
    if std::env::var("RINGEX_BENCH_WARM").is_ok() {
        // On a VM, the first touch of a guest page is several times dearer than reuse;
        // touching a few GiB once lets the page cache reuse warm pages.
        let mut v = vec![0u8; 3 << 30];
        for i in (0..v.len()).step_by(4096) {
            v[i] = 1;
        }
        std::hint::black_box(&v);
        println!("warmed 3 GiB of memory");
    }
    for payload_len in [64usize, 256] {
        if !"async".contains(only.as_str()) {
            break;
        }
        let o = bench_cpu_floor(payload_len, async_records);
        o.print(&format!("cpu floor (no file) {payload_len} B"));
    }
    for payload_len in [64usize, 256] {
        if !"async".contains(only.as_str()) {
            break;
        }
        let o = bench_async(&root, payload_len, async_records, None);
        o.print(&format!("async mmap {payload_len} B"));
        for batch in [1u64, 64] {
            let o = bench_async(&root, payload_len, async_records, Some(batch));
            o.print(&format!("async write-through {payload_len} B x{batch}"));
        }
    }
    if "group".contains(only.as_str()) {
        let runs: usize = std::env::var("RINGEX_BENCH_RUNS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1)
            .max(1);
        println!(
            "group family: {runs} run(s); journal segments {}; baselines on a preallocated, \
             zero-filled file overwritten in place",
            if zero_fill() {
                "zero-filled (as the node's)"
            } else {
                "fallocated only (RINGEX_BENCH_ZERO_FILL=0)"
            }
        );
        let plain = plain_file(&root);
        let mut order: Vec<String> = Vec::new();
        let mut figures: BTreeMap<String, Figures> = BTreeMap::new();
        let mut note = |name: &str, o: &Outcome, base: Option<&Outcome>| {
            if !figures.contains_key(name) {
                order.push(name.to_string());
            }
            figures.entry(name.to_string()).or_default().push(o, base);
        };
        for run in 0..runs {
            if runs > 1 {
                println!("--- run {} of {runs}", run + 1);
            }
            for payload_len in [64usize, 256] {
                for batch in [16u64, 256] {
                    let base = bench_baseline_pipelined(&plain, payload_len, batch, duration);
                    let name = format!("baseline pipelined {payload_len} B x{batch}");
                    base.print(&name);
                    note(&name, &base, None);
                    let base_closed = bench_baseline_closed(&plain, payload_len, batch, duration);
                    let name = format!("baseline closed-loop {payload_len} B x{batch}");
                    base_closed.print(&name);
                    note(&name, &base_closed, None);
                    for (backend, direct_io) in [
                        (Backend::Mmap, false),
                        (Backend::IoUring, false),
                        (Backend::IoUring, true),
                        (Backend::Pwrite, true),
                    ] {
                        let (g, used) =
                            bench_group(&root, payload_len, batch, duration, backend, direct_io);
                        let name = format!("group {used} {payload_len} B x{batch}");
                        g.print(&name);
                        println!(
                            "{:<44} {:>12.2}x records/s vs the pipelined baseline",
                            format!("ratio {name}"),
                            g.records_per_s() / base.records_per_s()
                        );
                        note(&name, &g, Some(&base));
                        let (closed, used) = bench_group_closed(
                            &root,
                            payload_len,
                            batch,
                            duration,
                            backend,
                            direct_io,
                        );
                        let name = format!("closed-loop {used} {payload_len} B x{batch}");
                        closed.print(&name);
                        println!(
                            "{:<44} {:>12.2}x records/s vs the closed-loop baseline",
                            format!("ratio {name}"),
                            closed.records_per_s() / base_closed.records_per_s()
                        );
                        note(&name, &closed, Some(&base_closed));
                    }
                }
            }
        }
        if runs > 1 {
            print_medians(runs, &order, &figures);
        }
    }
    let _ = std::fs::remove_dir_all(&root);
}
