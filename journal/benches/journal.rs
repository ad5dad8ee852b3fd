//! Journal benchmark (not a test). Run in release:
//!   CARGO_TARGET_DIR=/work/target-journal cargo bench -p ringex-journal
//! Env: RINGEX_BENCH_DIR (default: $TMPDIR/ringex-journal-bench), RINGEX_BENCH_QUICK=1 for a
//! short run, RINGEX_BENCH_ONLY=async|group for one family.
//!
//! Cases: `async` append of 64/256-byte payloads (records/s, MB/s); `group` commit with a
//! producer that appends batches of B records and may run at most a ring's worth of records
//! ahead of `durable` (the pipeline's gating), against a baseline in the same run: a plain
//! `std::fs::File` doing `write_all` + `sync_data` per batch of the same B records.

use hdrhistogram::Histogram;
use ringex_journal::{frame_size_bytes, Backend, Config, Durability, Journal};
use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
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
    c.segment_size_bytes = 256 << 20;
    c.durability = durability;
    c.low_space_threshold_bytes = 1 << 30;
    c
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
    let mut j = Journal::open(c).unwrap();
    let used = format!(
        "{:?}{}",
        j.backend(),
        if j.direct_io() { "+O_DIRECT" } else { "" }
    );
    if let Some(note) = j.backend_note() {
        println!("  note: {note}");
    }
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

/// Closed loop, like the baseline: append a batch, `commit()` it (sync in this thread),
/// repeat. The latency of one group commit with nothing queued ahead of it.
fn bench_group_closed(
    root: &Path,
    payload_len: usize,
    batch: u64,
    duration: Duration,
    backend: Backend,
    direct_io: bool,
) -> Outcome {
    let dir = fresh_dir(root, &format!("closed-{payload_len}-{batch}"));
    let mut c = config(&dir, Durability::Group);
    c.backend = backend;
    c.direct_io = direct_io;
    c.prealloc_zero_fill = std::env::var("RINGEX_BENCH_ZERO_FILL").is_ok();
    let mut j = Journal::open(c).unwrap();
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
    Outcome {
        records,
        elapsed,
        payload_len,
        latency: Some(hist),
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

/// Baseline: one plain file, a batch of B frames per write_all, then sync_data.
fn bench_baseline(root: &Path, payload_len: usize, batch: u64, duration: Duration) -> Outcome {
    let dir = fresh_dir(root, &format!("baseline-{payload_len}-{batch}"));
    let mut f = std::fs::File::create(dir.join("plain.log")).unwrap();
    let frame = frame_size_bytes(payload_len as u64) as usize;
    let mut buf = vec![0xefu8; frame * batch as usize];
    let mut hist = Histogram::<u64>::new(3).unwrap();
    let start = Instant::now();
    let mut records = 0u64;
    while start.elapsed() < duration {
        // Same framing work as the journal: header fields and a CRC per record.
        for (i, rec) in buf.chunks_mut(frame).enumerate() {
            rec[8..16].copy_from_slice(&(records + i as u64).to_le_bytes());
            let crc = crc32fast::hash(&rec[..]);
            rec[40..44].copy_from_slice(&crc.to_le_bytes());
        }
        let t = Instant::now();
        f.write_all(&buf).unwrap();
        f.sync_data().unwrap();
        hist.record(t.elapsed().as_nanos() as u64).unwrap();
        records += batch;
    }
    let elapsed = start.elapsed();
    let _ = std::fs::remove_dir_all(&dir);
    Outcome {
        records,
        elapsed,
        payload_len,
        latency: Some(hist),
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
    for payload_len in [64usize, 256] {
        if !"group".contains(only.as_str()) {
            break;
        }
        for batch in [16u64, 256] {
            let base = bench_baseline(&root, payload_len, batch, duration);
            base.print(&format!(
                "baseline write_all+sync_data {payload_len} B x{batch}"
            ));
            for (backend, direct_io) in [
                (Backend::Mmap, false),
                (Backend::IoUring, false),
                (Backend::IoUring, true),
            ] {
                let (g, used) =
                    bench_group(&root, payload_len, batch, duration, backend, direct_io);
                let name = format!("group {used} {payload_len} B x{batch}");
                g.print(&name);
                println!(
                    "{:<44} {:>12.1}x records/s vs baseline",
                    format!("ratio {name}"),
                    g.records_per_s() / base.records_per_s()
                );
                let closed =
                    bench_group_closed(&root, payload_len, batch, duration, backend, direct_io);
                let name = format!("closed-loop {used} {payload_len} B x{batch}");
                closed.print(&name);
                println!(
                    "{:<44} {:>12.1}x records/s vs baseline",
                    format!("ratio {name}"),
                    closed.records_per_s() / base.records_per_s()
                );
            }
        }
    }
    let _ = std::fs::remove_dir_all(&root);
}
