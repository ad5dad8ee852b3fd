//! A writer in a child process (this test binary, re-executed) is killed with SIGKILL
//! mid-stream; reopening must recover every record up to the durable watermark the child
//! reported.

mod common;
use common::*;
use ringex_journal::{Durability, Journal};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHILD_DIR_ENV: &str = "RINGEX_JOURNAL_KILL_CHILD_DIR";
const CHILD_MODE_ENV: &str = "RINGEX_JOURNAL_KILL_CHILD_MODE";

fn len_of(seq: u64) -> usize {
    (seq as usize * 13) % 900
}

fn child_config(dir: &std::path::Path, mode: &str) -> ringex_journal::Config {
    let durability = if mode != "async" && mode != "write-through" {
        Durability::Group
    } else {
        Durability::Async {
            flush_interval_ms: 2,
        }
    };
    let mut c = config(dir, durability);
    c.segment_size_bytes = 64 * 1024;
    if mode == "uring" || mode == "direct" {
        c.backend = ringex_journal::Backend::IoUring;
        c.staging_size_bytes = 32 * 1024;
        c.direct_io = mode == "direct";
    }
    if mode == "write-through" {
        c.backend = ringex_journal::Backend::Pwrite;
        c.staging_size_bytes = 32 * 1024;
    }
    c
}

/// The child: appends forever in batches of 5 (writing each through, for the backend that
/// needs it), printing the durable watermark whenever it moves and the written one every
/// 50 records.
#[test]
fn kill_child_entry() {
    let Ok(dir) = std::env::var(CHILD_DIR_ENV) else {
        return; // not the child
    };
    let mode = std::env::var(CHILD_MODE_ENV).unwrap();
    let mut j = Journal::open(child_config(dir.as_ref(), &mode)).unwrap();
    let w = j.watermarks();
    let mut out = std::io::stdout().lock();
    let mut reported = 0;
    writeln!(out, "READY").unwrap();
    out.flush().unwrap();
    for i in 0..10_000_000u64 {
        append_n(&mut j, 1, len_of);
        if i % 5 == 4 {
            j.write_staged().unwrap();
        }
        if i % 50 == 49 {
            writeln!(out, "WRITTEN {}", w.written()).unwrap();
        }
        let d = w.durable();
        if d > reported {
            reported = d;
            writeln!(out, "DURABLE {d}").unwrap();
            out.flush().unwrap();
        }
    }
}

fn run(mode: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "kill_child_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR_ENV, tmp.path())
        .env(CHILD_MODE_ENV, mode)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut durable_reported = 0u64;
    // A crash of the process (not of the machine) loses nothing written to the page cache.
    let mut written_reported = 0u64;
    let start = Instant::now();
    // Let it write across several segments, then kill it mid-stream.
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(n) = line.strip_prefix("DURABLE ") {
            durable_reported = n.trim().parse().unwrap();
        }
        if let Some(n) = line.strip_prefix("WRITTEN ") {
            written_reported = n.trim().parse().unwrap();
        }
        if durable_reported > 3000 || start.elapsed() > Duration::from_secs(20) {
            break;
        }
    }
    child.kill().unwrap(); // SIGKILL
                           // Lines written before the kill may still be in the pipe; they count too.
    for line in lines.map_while(Result::ok) {
        if let Some(n) = line.strip_prefix("DURABLE ") {
            durable_reported = durable_reported.max(n.trim().parse().unwrap());
        }
        if let Some(n) = line.strip_prefix("WRITTEN ") {
            written_reported = written_reported.max(n.trim().parse().unwrap());
        }
    }
    let _ = child.wait();
    assert!(durable_reported > 0, "child reported nothing");

    let j = Journal::open(child_config(tmp.path(), mode)).unwrap();
    let rep = j.recovery_report().clone();
    eprintln!("{mode}: durable reported {durable_reported}, recovered {rep:?}");
    assert!(
        rep.seq_last >= written_reported,
        "recovered {} < written reported {written_reported}: {rep:?}",
        rep.seq_last
    );
    assert!(
        rep.seq_last >= durable_reported,
        "recovered {} < durable reported {durable_reported}: {rep:?}",
        rep.seq_last
    );
    drop(j);
    let all = read_all(tmp.path());
    assert_eq!(all.len() as u64, rep.seq_last);
    check_prefix(&all, len_of);
}

#[test]
fn sigkill_group_mode_keeps_durable_records() {
    run("group");
}

#[test]
fn sigkill_async_mode_keeps_durable_records() {
    run("async");
}

#[test]
fn sigkill_writing_through_keeps_written_records() {
    run("write-through");
}

#[test]
fn sigkill_io_uring_backend_keeps_durable_records() {
    run("uring");
}

#[test]
fn sigkill_io_uring_direct_io_keeps_durable_records() {
    run("direct");
}
