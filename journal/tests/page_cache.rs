//! How the mmap backend uses memory: the writer may prefault its own pages in bounded
//! steps (no helper thread), and synced pages far behind the writer leave the page cache.
//! Neither may change a byte of what is read back.

mod common;
use common::*;
use ringex_journal::{Durability, Journal, Prefault, WRITER_PREFAULT_STEP_BYTES};
use std::path::Path;
use std::time::{Duration, Instant};

fn async_config(dir: &Path, segment_size_bytes: u64) -> ringex_journal::Config {
    let mut c = config(
        dir,
        Durability::Async {
            flush_interval_ms: 1,
        },
    );
    c.segment_size_bytes = segment_size_bytes;
    c
}

#[test]
fn writer_prefault_is_bounded_per_call_and_changes_no_byte() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = async_config(dir.path(), 1 << 20);
    c.prefault = Prefault::Writer;
    let mut j = Journal::open(c).unwrap();
    let mut prefaulted = 0;
    let mut calls = 0;
    for _ in 0..3_000 {
        append_n(&mut j, 1, |seq| (seq as usize * 13) % 300);
        let n = j.prefault_ahead();
        assert!(n <= WRITER_PREFAULT_STEP_BYTES, "one call did {n} bytes");
        assert_eq!(n % 4096, 0);
        prefaulted += n;
        calls += 1;
    }
    assert!(prefaulted > 0, "prefaulted nothing in {calls} calls");
    // Once ahead, a call does nothing until the writer moves.
    while j.prefault_ahead() > 0 {}
    assert_eq!(j.prefault_ahead(), 0);
    j.close().unwrap();
    let all = read_all(dir.path());
    assert_eq!(all.len(), 3_000);
    check_prefix(&all, |seq| (seq as usize * 13) % 300);
}

/// (Rss, dirty) kB of this process's mapping of `path`, from /proc/self/smaps.
fn mapping_rss_and_dirty_kb(path: &Path) -> (u64, u64) {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let name = path.to_str().unwrap();
    let mut in_mapping = false;
    let (mut rss, mut dirty) = (0, 0);
    for line in smaps.lines() {
        let is_header = line
            .split_whitespace()
            .next()
            .is_some_and(|f| f.contains('-') && !f.ends_with(':'));
        if is_header {
            in_mapping = line.ends_with(name);
            continue;
        }
        if !in_mapping {
            continue;
        }
        let kb = || {
            line.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        if line.starts_with("Rss:") {
            rss += kb();
        } else if line.starts_with("Shared_Dirty:") || line.starts_with("Private_Dirty:") {
            dirty += kb();
        }
    }
    (rss, dirty)
}

/// Pages prefaulted ahead of the writer are mapped but not dirty: a dirty page ahead
/// would be written back (zeros) by the next flush and write-protected, and the writer's
/// store would then fault and wait for that writeback's folio lock (milliseconds, seen
/// in the node's pipeline bench).
#[test]
fn pages_prefaulted_ahead_of_the_writer_are_mapped_but_not_dirty() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = async_config(dir.path(), 1 << 20);
    c.prefault = Prefault::Writer;
    let mut j = Journal::open(c).unwrap();
    let last = append_n(&mut j, 4, |_| 100);
    assert!(j.wait_durable(last, Duration::from_secs(60)).unwrap());
    let mut prefaulted = 0;
    for _ in 0..16 {
        prefaulted += j.prefault_ahead();
    }
    assert!(prefaulted >= 64 << 10, "prefaulted {prefaulted} bytes");
    let segment = &segment_paths(dir.path())[0];
    let (rss_kb, dirty_kb) = mapping_rss_and_dirty_kb(segment);
    assert!(rss_kb * 1024 >= prefaulted, "mapped {rss_kb} kB");
    // At most the header page and the one holding the records.
    assert!(
        dirty_kb <= 8,
        "{dirty_kb} kB dirty after prefaulting {prefaulted} bytes"
    );
    j.close().unwrap();
    assert_eq!(read_all(dir.path()).len(), 4);
}

#[test]
fn thread_prefault_journal_ignores_writer_calls() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = Journal::open(async_config(dir.path(), 1 << 20)).unwrap();
    append_n(&mut j, 10, |_| 100);
    assert_eq!(
        j.prefault_ahead(),
        0,
        "the populate thread owns prefaulting"
    );
    j.close().unwrap();
}

#[test]
fn synced_pages_far_behind_the_writer_leave_the_page_cache_and_read_back_intact() {
    let dir = tempfile::tempdir().unwrap();
    // One 64 MiB segment; write ~24 MiB, so all but the newest 8 MiB may be dropped.
    let mut j = Journal::open(async_config(dir.path(), 64 << 20)).unwrap();
    let len_of = |seq: u64| 900 + (seq as usize % 100);
    let last = append_n(&mut j, 24_000, len_of);
    assert!(j.wait_durable(last, Duration::from_secs(30)).unwrap());
    // ~23.4 MiB written and durable: the first 12 MiB lie well over 8 MiB behind the
    // writer. The drop runs in a flush round after the data is durable.
    let segment = &segment_paths(dir.path())[0];
    let behind_bytes = 12 << 20;
    // Most of them: a page the kernel's own writeback holds at the moment of the drop
    // stays (the drop is advice; on a busy machine up to a tenth were seen to).
    let deadline = Instant::now() + Duration::from_secs(60);
    let (resident, pages) = loop {
        let (resident, pages) = resident_pages(segment, behind_bytes);
        if resident * 5 < pages || Instant::now() > deadline {
            break (resident, pages);
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(
        resident * 5 < pages,
        "{resident} of the {pages} pages behind the writer still cached: not dropped"
    );
    // The newest pages stay cached for readers that follow the writer.
    let (resident_all, _) = resident_pages(segment, 24 << 20);
    assert!(
        resident_all - resident >= 1_000,
        "the newest pages were dropped too"
    );
    // More appends after the drop, then everything reads back, in process and after reopen.
    append_n(&mut j, 100, len_of);
    let all = read_all(dir.path());
    assert_eq!(all.len(), 24_100);
    check_prefix(&all, len_of);
    j.close().unwrap();
    let j = Journal::open(async_config(dir.path(), 64 << 20)).unwrap();
    assert_eq!(j.recovery_report().seq_last, 24_100);
    assert_eq!(j.recovery_report().truncation, None);
}
