//! Injected storage faults: failed sync (fatal, never retried), low space (refused before
//! the disk is full), failed preallocation (appends pause, then resume).

mod common;
use common::*;
use ringex_journal::{Durability, Error, FaultStorage, Journal, Storage};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Waits until `done` holds; fails after a generous deadline (a bound on failure only).
fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "still waiting until {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn len_of(seq: u64) -> usize {
    (seq as usize * 11) % 300
}

#[test]
fn failed_sync_is_fatal_and_never_retried() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(FaultStorage::default());
    let mut c = config(dir.path(), Durability::Group);
    c.storage = faults.clone();
    let mut j = Journal::open(c).unwrap();
    append_n(&mut j, 10, len_of);
    j.sync().unwrap();
    let durable_before = j.watermarks().durable();
    faults.syncs_ok_remaining.store(0, Ordering::SeqCst);
    // The next sync fails: the one for this record, or the background round that
    // records the durable point in a checkpoint, if it comes first (then the append
    // itself is refused).
    let err = match j.append(7, 1, 0, b"will not be durable") {
        Ok(seq) => j.wait_durable(seq, Duration::from_secs(60)).unwrap_err(),
        Err(e) => e,
    };
    let msg = err.to_string();
    assert!(err.is_fatal(), "{msg}");
    assert!(
        msg.contains("fdatasync") && msg.contains("not retried"),
        "{msg}"
    );
    assert_eq!(j.watermarks().durable(), durable_before);
    // Every later call says why.
    for _ in 0..3 {
        let e = j.append(7, 1, 0, b"x").unwrap_err();
        assert!(e.is_fatal() && e.to_string().contains("fdatasync"), "{e}");
    }
    assert!(j.sync().unwrap_err().is_fatal());
    assert!(j.commit().unwrap_err().is_fatal());
    // Even if the disk "recovers", the writer does not retry.
    faults.syncs_ok_remaining.store(u64::MAX, Ordering::SeqCst);
    assert!(j.append(7, 1, 0, b"x").unwrap_err().is_fatal());
    drop(j);
    // A fresh open recovers the records (they are in the page cache here).
    let j = Journal::open(config(dir.path(), Durability::Group)).unwrap();
    assert!(j.recovery_report().seq_last >= 10);
}

#[test]
fn low_space_threshold_refuses_appends_then_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(FaultStorage::default());
    let mut c = config(dir.path(), Durability::Group);
    c.storage = faults.clone();
    c.low_space_threshold_bytes = 1 << 20;
    let mut j = Journal::open(c).unwrap();
    append_n(&mut j, 5, len_of);
    faults.free_space_bytes_fake.store(4096, Ordering::SeqCst);
    assert_eq!(j.check_space().unwrap(), 4096);
    let e = j.append(7, 1, 0, b"refused").unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(
            e,
            Error::LowSpace {
                free_bytes: 4096,
                threshold_bytes: 1048576,
                ..
            }
        ),
        "{msg}"
    );
    assert!(
        msg.contains("free space") && msg.contains("threshold"),
        "{msg}"
    );
    assert_eq!(j.seq_next(), 6, "a refused append assigns no sequence");
    faults
        .free_space_bytes_fake
        .store(u64::MAX, Ordering::SeqCst);
    j.check_space().unwrap();
    append_n(&mut j, 5, len_of);
    j.close().unwrap();
    check_prefix(&read_all(dir.path()), len_of);
}

#[test]
fn low_space_at_open_refuses_appends() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), Durability::Group);
    c.low_space_threshold_bytes = u64::MAX / 2; // more than any disk has
    let mut j = Journal::open(c).unwrap();
    assert!(matches!(
        j.append(1, 1, 0, b"x"),
        Err(Error::LowSpace { .. })
    ));
}

/// [`FaultStorage`], counting the preallocations it grants and refuses, so that a test
/// can wait for the preallocator's attempts.
#[derive(Default)]
struct CountedAllocations {
    faults: FaultStorage,
    granted: AtomicU64,
    refused: AtomicU64,
}

impl Storage for CountedAllocations {
    fn sync_data(&self, file: &std::fs::File) -> std::io::Result<()> {
        self.faults.sync_data(file)
    }
    fn sync_dir(&self, dir: &std::path::Path) -> std::io::Result<()> {
        self.faults.sync_dir(dir)
    }
    fn allocate(&self, file: &std::fs::File, len: u64) -> std::io::Result<()> {
        let r = self.faults.allocate(file, len);
        let counter = if r.is_ok() {
            &self.granted
        } else {
            &self.refused
        };
        counter.fetch_add(1, Ordering::SeqCst);
        r
    }
    fn free_space_bytes(&self, dir: &std::path::Path) -> std::io::Result<u64> {
        self.faults.free_space_bytes(dir)
    }
    fn write_all_at(&self, file: &std::fs::File, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.faults.write_all_at(file, buf, offset)
    }
}

#[test]
fn failed_preallocation_pauses_appends_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(CountedAllocations::default());
    let faults = &storage.faults;
    // The first segment and the first spare succeed; everything after fails.
    faults.allocates_ok_remaining.store(2, Ordering::SeqCst);
    let mut c = config(dir.path(), Durability::Group);
    c.storage = storage.clone();
    let mut j = Journal::open(c).unwrap();
    let mut paused_at = None;
    for _ in 0..2000 {
        let seq = j.seq_next();
        match j.append(7, 1, seq * 1000, &payload(seq, len_of(seq))) {
            Ok(s) => assert_eq!(s, seq),
            Err(e) => {
                assert!(matches!(e, Error::PreallocFailed { .. }), "{e}");
                assert!(e.to_string().contains("paused"), "{e}");
                paused_at = Some(seq);
                break;
            }
        }
    }
    let paused_at = paused_at.expect("preallocation failure surfaced");
    // Still paused, not failed; no sequence consumed.
    let refused = storage.refused.load(Ordering::SeqCst);
    assert!(matches!(
        j.append(7, 1, 0, b"x"),
        Err(Error::PreallocFailed { .. })
    ));
    assert_eq!(j.seq_next(), paused_at);
    // The retry that refusal asked for fails too, while the disk is still full.
    wait_until("the preallocator retried", || {
        storage.refused.load(Ordering::SeqCst) > refused
    });
    let granted = storage.granted.load(Ordering::SeqCst);
    faults
        .allocates_ok_remaining
        .store(u64::MAX, Ordering::SeqCst);
    // The preallocator retries on its own: once space is back, the next append finds
    // its spare ready (it used to be refused once more, with the stale reason).
    wait_until("the preallocator's own retry got its space", || {
        storage.granted.load(Ordering::SeqCst) > granted
    });
    wait_until("the spare segment is ready", || j.spare_ready());
    let seq = j.seq_next();
    j.append(7, 1, seq * 1000, &payload(seq, len_of(seq)))
        .expect("the first append after space came back");
    append_n(&mut j, 100, len_of);
    j.close().unwrap();
    let all = read_all(dir.path());
    assert_eq!(all.len() as u64, paused_at + 100);
    check_prefix(&all, len_of);
}

/// Unmounts its tmpfs when dropped.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// A real 256 KiB tmpfs under `dir`, where mounting works (root); elsewhere None, and
/// `test` is reported skipped (see `common::skip`).
fn small_tmpfs(dir: &std::path::Path, test: &str) -> Option<(std::path::PathBuf, Unmount)> {
    let mnt = dir.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&mnt)
        .stderr(std::process::Stdio::piped())
        .output();
    match mounted {
        Ok(out) if out.status.success() => Some((mnt.clone(), Unmount(mnt))),
        Ok(out) => {
            let why = String::from_utf8_lossy(&out.stderr);
            skip(
                test,
                "the whole test",
                &format!(
                    "mount of a 256 KiB tmpfs failed (needs root): {}",
                    why.trim()
                ),
            );
            None
        }
        Err(e) => {
            skip(test, "the whole test", &format!("cannot run mount: {e}"));
            None
        }
    }
}

#[test]
fn a_snapshot_that_does_not_fit_leaves_no_partial_file() {
    let dir = tempfile::tempdir().unwrap();
    let Some((mnt, _guard)) = small_tmpfs(
        dir.path(),
        "a_snapshot_that_does_not_fit_leaves_no_partial_file",
    ) else {
        return;
    };
    let store = ringex_journal::SnapshotStore::open(mnt.join("snapshots"), 2).unwrap();
    let e = store.write(10, 1, 1, &[7; 16], &vec![1u8; 1 << 20]);
    assert!(e.is_err(), "1 MiB does not fit in 256 KiB");
    let left: Vec<_> = std::fs::read_dir(mnt.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // The space is back: a snapshot that fits is written.
    store.write(11, 1, 1, &[7; 16], b"state").unwrap();
}

#[test]
fn tmpfs_full_never_sigbus() {
    let dir = tempfile::tempdir().unwrap();
    let Some((mnt, _guard)) = small_tmpfs(dir.path(), "tmpfs_full_never_sigbus") else {
        return;
    };
    let write_through = Durability::Async {
        flush_interval_ms: 5,
    };
    for (threshold, durability) in [
        (0u64, Durability::Group),
        (64 * 1024, Durability::Group),
        (0, write_through),
        (64 * 1024, write_through),
    ] {
        let mode = if durability == write_through {
            "through"
        } else {
            "group"
        };
        let jdir = mnt.join(format!("j{threshold}-{mode}"));
        let mut c = config(&jdir, durability);
        c.low_space_threshold_bytes = threshold;
        if durability == write_through {
            c.backend = ringex_journal::Backend::Pwrite;
            c.staging_size_bytes = 16 * 1024;
        }
        let mut j = Journal::open(c).unwrap();
        let mut stopped = None;
        for _ in 0..100_000 {
            let seq = j.seq_next();
            if let Err(e) = j.append(7, 1, seq * 1000, &payload(seq, len_of(seq))) {
                stopped = Some(e);
                break;
            }
        }
        let e = stopped.expect("a 256 KiB tmpfs must fill up");
        assert!(
            matches!(e, Error::PreallocFailed { .. } | Error::LowSpace { .. }),
            "{e}"
        );
        if threshold > 0 {
            assert!(
                matches!(e, Error::LowSpace { .. }) || e.to_string().contains("threshold"),
                "{e}"
            );
        }
        j.sync().unwrap();
        let written = j.seq_next() - 1;
        drop(j);
        let all = read_all(&jdir);
        assert_eq!(all.len() as u64, written);
        check_prefix(&all, len_of);
        std::fs::remove_dir_all(&jdir).unwrap();
    }
}

#[test]
fn failed_commit_is_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(FaultStorage::default());
    let mut c = config(dir.path(), Durability::Group);
    c.storage = faults.clone();
    let mut j = Journal::open(c).unwrap();
    append_n(&mut j, 3, len_of);
    j.commit().unwrap();
    faults.syncs_ok_remaining.store(0, Ordering::SeqCst);
    // The commit's sync fails, or a background checkpoint round's before it, and then
    // the append is refused already.
    let e = j
        .append(7, 1, 0, b"x")
        .and_then(|_| j.commit())
        .unwrap_err();
    assert!(e.is_fatal() && e.to_string().contains("fdatasync"), "{e}");
    assert!(j.append(7, 1, 0, b"x").unwrap_err().is_fatal());
    assert!(j.commit().unwrap_err().is_fatal());
}
