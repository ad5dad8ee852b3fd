//! Injected storage faults: failed sync (fatal, never retried), low space (refused before
//! the disk is full), failed preallocation (appends pause, then resume).

mod common;
use common::*;
use ringex_journal::{Durability, Error, FaultStorage, Journal};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

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
    let seq = j.append(7, 1, 0, b"will not be durable").unwrap();
    let err = j.wait_durable(seq, Duration::from_secs(10)).unwrap_err();
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

#[test]
fn failed_preallocation_pauses_appends_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(FaultStorage::default());
    // The first segment and the first spare succeed; everything after fails.
    faults.allocates_ok_remaining.store(2, Ordering::SeqCst);
    let mut c = config(dir.path(), Durability::Group);
    c.storage = faults.clone();
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
    assert!(matches!(
        j.append(7, 1, 0, b"x"),
        Err(Error::PreallocFailed { .. })
    ));
    assert_eq!(j.seq_next(), paused_at);
    // The retry that refusal asked for fails too, while the disk is still full.
    std::thread::sleep(Duration::from_millis(300));
    faults
        .allocates_ok_remaining
        .store(u64::MAX, Ordering::SeqCst);
    // The preallocator retries on its own: once space is back, the next append finds
    // its spare ready (it used to be refused once more, with the stale reason).
    std::thread::sleep(Duration::from_millis(600));
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

/// A real 256 KiB tmpfs under `dir`, where mounting works (root); None elsewhere.
fn small_tmpfs(dir: &std::path::Path) -> Option<(std::path::PathBuf, Unmount)> {
    let mnt = dir.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&mnt)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("skipping: cannot mount a tmpfs here");
        return None;
    }
    Some((mnt.clone(), Unmount(mnt)))
}

#[test]
fn a_snapshot_that_does_not_fit_leaves_no_partial_file() {
    let dir = tempfile::tempdir().unwrap();
    let Some((mnt, _guard)) = small_tmpfs(dir.path()) else {
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
    let Some((mnt, _guard)) = small_tmpfs(dir.path()) else {
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
    append_n(&mut j, 1, len_of);
    let e = j.commit().unwrap_err();
    assert!(e.is_fatal() && e.to_string().contains("fdatasync"), "{e}");
    assert!(j.append(7, 1, 0, b"x").unwrap_err().is_fatal());
    assert!(j.commit().unwrap_err().is_fatal());
}
