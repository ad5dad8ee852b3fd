//! The staged backends (pwrite, io_uring) behave like the mmap one: same files, same
//! recovery, same watermarks.

mod common;
use common::*;
use ringex_journal::{Backend, Durability, Error, FaultStorage, Journal, Reader, Tailer};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

fn len_of(seq: u64) -> usize {
    (seq as usize * 29) % 1500
}

fn staged(dir: &std::path::Path, backend: Backend) -> ringex_journal::Config {
    let mut c = config(dir, Durability::Group);
    c.backend = backend;
    c.staging_size_bytes = 16 * 1024; // small: exercises wrap-around and back-pressure
    c
}

fn round_trip(backend: Backend, direct_io: bool) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = staged(dir.path(), backend);
    c.direct_io = direct_io;
    let mut j = Journal::open(c).unwrap();
    let test = format!("round_trip({backend:?}, direct_io: {direct_io})");
    if direct_io && !j.direct_io() {
        // Some file systems (older tmpfs, some overlays) refuse O_DIRECT: the journal
        // must fall back and say so.
        let note = j.backend_note().unwrap_or_default().to_string();
        assert!(note.contains("O_DIRECT"), "{note}");
        skip(
            &test,
            "writing with O_DIRECT",
            &format!("fell back: {note}"),
        );
    }
    if backend == Backend::IoUring && j.backend() != Backend::IoUring {
        let note = format!("fell back: {:?}", j.backend_note());
        skip(&test, "the io_uring write path", &note);
    }
    let last = append_n(&mut j, 500, len_of);
    assert!(j.wait_durable(last, Duration::from_secs(60)).unwrap());
    assert_eq!(j.watermarks().written(), last);
    j.close().unwrap();
    let mut again = staged(dir.path(), backend);
    again.direct_io = direct_io;
    continue_across_backends(dir.path(), Durability::Group, again);
}

/// Files are backend-independent: after 500 records, 20 more through the mmap backend,
/// then 80 through `again` (closed without anything else: `close` writes what is staged),
/// and all 600 read back.
fn continue_across_backends(
    dir: &std::path::Path,
    durability: Durability,
    again: ringex_journal::Config,
) {
    let mut j = Journal::open(config(dir, durability)).unwrap();
    assert_eq!(j.recovery_report().seq_last, 500);
    assert_eq!(j.recovery_report().truncation, None);
    append_n(&mut j, 20, len_of);
    j.close().unwrap();
    let mut j = Journal::open(again).unwrap();
    append_n(&mut j, 80, len_of);
    j.close().unwrap();
    let all = read_all(dir);
    assert_eq!(all.len(), 600);
    check_prefix(&all, len_of);
}

#[test]
fn pwrite_round_trip() {
    round_trip(Backend::Pwrite, false);
}

#[test]
fn pwrite_direct_round_trip() {
    round_trip(Backend::Pwrite, true);
}

#[test]
fn io_uring_direct_round_trip() {
    round_trip(Backend::IoUring, true);
}

#[test]
fn direct_io_is_ignored_by_mmap_and_auto_picks_by_mode() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), Durability::Group);
    c.direct_io = true;
    let j = Journal::open(c).unwrap();
    assert_eq!(j.backend(), Backend::Mmap);
    assert!(!j.direct_io());
    drop(j);
    let mut c = config(dir.path(), Durability::Group);
    c.backend = Backend::Auto;
    let j = Journal::open(c).unwrap();
    assert_ne!(j.backend(), Backend::Mmap);
    drop(j);
    let mut c = config(dir.path(), Durability::Group);
    c.backend = Backend::Auto;
    c.caller_commits = true;
    let j = Journal::open(c).unwrap();
    assert_eq!(
        j.backend(),
        Backend::Pwrite,
        "the committing thread writes and syncs"
    );
    drop(j);
    let mut c = config(
        dir.path(),
        Durability::Async {
            flush_interval_ms: 5,
        },
    );
    c.backend = Backend::Auto;
    let j = Journal::open(c).unwrap();
    assert_eq!(
        j.backend(),
        Backend::Pwrite,
        "async writes through by default"
    );
    assert!(!j.direct_io(), "writing through goes via the page cache");
}

#[test]
fn io_uring_round_trip() {
    round_trip(Backend::IoUring, false);
}

#[test]
fn io_uring_needs_group_mode() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = staged(dir.path(), Backend::IoUring);
    c.durability = Durability::Async {
        flush_interval_ms: 5,
    };
    assert!(matches!(Journal::open(c), Err(Error::Config(_))));
}

/// `Pwrite` under `Async`: the writer writes its staged records itself.
fn write_through(dir: &std::path::Path) -> ringex_journal::Config {
    let mut c = staged(dir, Backend::Pwrite);
    c.durability = Durability::Async {
        flush_interval_ms: 5,
    };
    c
}

#[test]
fn writing_through_records_reach_the_file_at_write_staged_and_disk_at_the_flush() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = Journal::open(write_through(dir.path())).unwrap();
    assert_eq!(j.backend(), Backend::Pwrite);
    let marks = j.watermarks();
    let last = append_n(&mut j, 3, len_of);
    // Staged only: neither written nor in the file, so not yet safe from a crash.
    assert_eq!(marks.written(), 0);
    assert!(read_all(dir.path()).is_empty());
    assert_eq!(j.write_staged().unwrap(), last);
    assert_eq!(marks.written(), last);
    assert_eq!(read_all(dir.path()).len(), 3);
    // Nothing more staged: a second call writes nothing and says the same.
    assert_eq!(j.write_staged().unwrap(), last);
    // The periodic flush makes them durable without being asked.
    assert!(j.wait_durable(last, Duration::from_secs(60)).unwrap());
    j.close().unwrap();
    check_prefix(&read_all(dir.path()), len_of);
}

/// Batches of every size, across staging-ring wraps, full rings (the writer writes
/// mid-batch) and segment rolls; reopened with the other backends in between.
#[test]
fn writing_through_round_trips_across_rolls_full_rings_and_backends() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = Journal::open(write_through(dir.path())).unwrap();
    let mut batch = 1;
    while j.seq_next() <= 500 {
        let n = batch.min(501 - j.seq_next());
        let last = append_n(&mut j, n, len_of);
        assert_eq!(j.write_staged().unwrap(), last);
        assert_eq!(j.watermarks().written(), last);
        batch = batch % 37 + 5;
    }
    j.close().unwrap();
    let async_mode = Durability::Async {
        flush_interval_ms: 5,
    };
    continue_across_backends(dir.path(), async_mode, write_through(dir.path()));
}

/// A failed write is fatal like a failed sync: the batch it carried is neither written nor
/// visible, nothing more is accepted, and everything written before survives.
#[test]
fn writing_through_a_failed_write_is_fatal_and_keeps_what_was_written() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(FaultStorage::default());
    let mut c = write_through(dir.path());
    c.storage = faults.clone();
    let mut j = Journal::open(c).unwrap();
    let kept = append_n(&mut j, 10, len_of);
    assert_eq!(j.write_staged().unwrap(), kept);
    faults.writes_ok_remaining.store(0, Ordering::SeqCst);
    append_n(&mut j, 3, len_of);
    let e = j.write_staged().unwrap_err();
    assert!(e.is_fatal() && e.to_string().contains("write of"), "{e}");
    assert_eq!(j.watermarks().written(), kept);
    assert!(j.append(7, 1, 0, b"y").unwrap_err().is_fatal());
    assert!(j.sync().unwrap_err().is_fatal());
    drop(j);
    let all = read_all(dir.path());
    assert_eq!(all.len() as u64, kept);
    check_prefix(&all, len_of);
}

#[test]
fn writing_through_sync_failure_is_fatal() {
    sync_failure_is_fatal(write_through);
}

#[test]
fn staged_tailer_sees_every_record_once() {
    for (backend, direct_io, through) in [
        (Backend::Pwrite, false, false),
        (Backend::IoUring, false, false),
        (Backend::IoUring, true, false),
        (Backend::Pwrite, false, true),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut c = if through {
            write_through(dir.path())
        } else {
            staged(dir.path(), backend)
        };
        c.direct_io = direct_io;
        let mut j = Journal::open(c).unwrap();
        let w = j.watermarks();
        let path = dir.path().to_path_buf();
        let total = 1500u64;
        let t = std::thread::spawn(move || {
            let r = Reader::open(&path).unwrap().with_watermarks(w, false);
            let mut t = Tailer::new(r, 1).unwrap();
            let mut expect = 1;
            while expect <= total {
                if let Some(rec) = t.next_timeout(Duration::from_secs(60)).unwrap() {
                    assert_eq!(rec.seq, expect);
                    assert_eq!(rec.payload, payload(expect, len_of(expect)).as_slice());
                    expect += 1;
                } else {
                    panic!("tailer stalled at {expect}");
                }
            }
        });
        for _ in 0..total / 10 {
            append_n(&mut j, 10, len_of);
            j.write_staged().unwrap();
        }
        t.join().unwrap();
        j.close().unwrap();
    }
}

#[test]
fn pwrite_sync_failure_is_fatal() {
    sync_failure_is_fatal(|dir| staged(dir, Backend::Pwrite));
}

/// Once an fdatasync fails, nothing more is accepted: the writer is failed for good.
fn sync_failure_is_fatal(config_in: impl Fn(&std::path::Path) -> ringex_journal::Config) {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(FaultStorage::default());
    let mut c = config_in(dir.path());
    c.storage = faults.clone();
    let mut j = Journal::open(c).unwrap();
    append_n(&mut j, 10, len_of);
    j.sync().unwrap();
    faults.syncs_ok_remaining.store(0, Ordering::SeqCst);
    // The next sync fails: the one for this record, or the background round that
    // records the durable point in a checkpoint, if it comes first (then the append or
    // the write is refused already).
    let e = j
        .append(7, 1, 0, b"x")
        .and_then(|seq| {
            j.write_staged()?;
            j.wait_durable(seq, Duration::from_secs(60))
        })
        .unwrap_err();
    assert!(e.is_fatal() && e.to_string().contains("fdatasync"), "{e}");
    assert!(j.append(7, 1, 0, b"y").unwrap_err().is_fatal());
    assert!(j.write_staged().unwrap_err().is_fatal());
}

/// Auto + O_DIRECT on a file system that may refuse O_DIRECT (tmpfs): works either way,
/// and says which.
#[test]
fn direct_io_on_tmpfs_works_or_falls_back() {
    let dir = match tempfile::tempdir_in("/dev/shm") {
        Ok(dir) => dir,
        Err(e) => {
            let why = format!("no tmpfs at /dev/shm to write in: {e}");
            skip(
                "direct_io_on_tmpfs_works_or_falls_back",
                "the whole test",
                &why,
            );
            return;
        }
    };
    let mut c = config(dir.path(), Durability::Group);
    c.backend = Backend::Auto;
    c.direct_io = true;
    let mut j = Journal::open(c).unwrap();
    eprintln!(
        "tmpfs: {:?} direct {} note {:?}",
        j.backend(),
        j.direct_io(),
        j.backend_note()
    );
    let last = append_n(&mut j, 300, len_of);
    assert_eq!(j.commit().unwrap(), last);
    j.close().unwrap();
    check_prefix(&read_all(dir.path()), len_of);
}

extern "C" fn ignore_signal(_: libc::c_int) {}

/// A signal landing on the thread that commits (as SIGTERM does on a node whose gateway
/// thread commits) interrupts io_uring's wait; the kernel then returns before the write
/// and fdatasync complete. The commit must wait them out, not fail the journal.
#[test]
fn signals_during_group_commits_fail_nothing_and_lose_nothing() {
    // SA_RESTART, as signal-hook installs handlers.
    // SAFETY: installs a handler that does nothing, for a signal only this test sends.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = ignore_signal as *const () as usize;
        action.sa_flags = libc::SA_RESTART;
        assert_eq!(
            libc::sigaction(libc::SIGUSR1, &action, std::ptr::null_mut()),
            0
        );
    }
    for backend in [Backend::IoUring, Backend::Pwrite] {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(staged(dir.path(), backend)).unwrap();
        // SAFETY: the id of the calling thread.
        let committer = unsafe { libc::pthread_self() };
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop_signals = Arc::clone(&stop);
        let signaller = std::thread::spawn(move || {
            let mut sent = 0u64;
            while !stop_signals.load(Ordering::Relaxed) && sent < 1_000_000 {
                // SAFETY: the committer outlives this thread (joined below).
                unsafe { libc::pthread_kill(committer, libc::SIGUSR1) };
                sent += 1;
                std::thread::sleep(Duration::from_micros(20));
            }
            sent
        });
        let mut last = 0;
        for _ in 0..300 {
            last = append_n(&mut j, 3, len_of);
            j.commit().expect("a signal does not fail a commit");
        }
        stop.store(true, Ordering::Relaxed);
        assert!(signaller.join().unwrap() > 0);
        assert_eq!(j.watermarks().durable(), last, "{backend:?}");
        j.close().unwrap();
        let records = read_all(dir.path());
        assert_eq!(records.len() as u64, last, "{backend:?}");
        check_prefix(&records, len_of);
    }
}
