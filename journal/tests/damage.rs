//! Recovery cuts only what a crash can tear. Damage to records that something on the disk
//! proves durable, and damage a crash never leaves, is refused with the place, the
//! sequence and the way out, and a refused open changes nothing. Verify beside a running
//! writer raises no false alarm; repair cuts on purpose and keeps what it cuts.

mod common;
use common::*;
use ringex_journal::{
    repair_truncate, verify, Backend, Durability, Error, Journal, Verify, QUARANTINE_DIR_NAME,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

const SEGMENT_BYTES: u64 = 16 * 1024;

fn len_of(seq: u64) -> usize {
    40 + (seq as usize * 37) % 200
}

fn journal(dir: &Path, durability: Durability, backend: Backend) -> Journal {
    let mut c = config(dir, durability);
    c.segment_size_bytes = SEGMENT_BYTES;
    c.record_size_bytes_max = 1024;
    c.backend = backend;
    c.verify = Verify::All;
    Journal::open(c).unwrap()
}

fn open(dir: &Path) -> ringex_journal::Result<Journal> {
    let mut c = config(dir, Durability::Group);
    c.segment_size_bytes = SEGMENT_BYTES;
    c.record_size_bytes_max = 1024;
    c.verify = Verify::All;
    Journal::open(c)
}

/// Appends `n` records and waits until they are durable (one group commit or more).
fn append_durable(j: &mut Journal, n: u64) -> u64 {
    let last = append_n(j, n, len_of);
    j.write_staged().unwrap();
    assert!(j.wait_durable(last, Duration::from_secs(10)).unwrap());
    last
}

fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            out.insert(p.clone(), std::fs::read(&p).unwrap());
        }
    }
    out
}

/// Opening refuses, names the sequence and the repair command, and changes no file.
fn refused_unchanged(dir: &Path, seq: u64) -> String {
    let before = files(dir);
    let e = match open(dir) {
        Ok(j) => panic!("opened: {:?}", j.recovery_report()),
        Err(e) => e,
    };
    let msg = e.to_string();
    if seq == 1 {
        // The journal's first record: a cut would keep nothing; only a restore helps.
        assert!(matches!(e, Error::Corrupt { seq: 0, .. }), "{msg}");
        assert!(
            msg.contains("(sequence 1, the first the journal holds"),
            "{msg}"
        );
        assert!(msg.contains("only a restore"), "{msg}");
        assert!(!msg.contains("--truncate-at"), "{msg}");
    } else {
        assert!(
            matches!(e, Error::Corrupt { seq: s, .. } if s == seq),
            "{msg}"
        );
        assert!(msg.contains(&format!("(sequence {seq})")), "{msg}");
        assert!(
            msg.contains(&format!("--truncate-at {seq}")),
            "the way out is named: {msg}"
        );
    }
    assert!(files(dir) == before, "a refused open changed files");
    // The operator's tool agrees with the open, at the same place.
    let v = verify(dir, Verify::All).expect_err("verify reports what open refuses");
    assert_eq!(v.to_string(), msg);
    msg
}

/// (path, frame offset) of record `seq`, walking the segments' frames.
fn locate(dir: &Path, seq: u64) -> (PathBuf, u64) {
    for path in segment_paths(dir) {
        let b = std::fs::read(&path).unwrap();
        let mut at = 4096usize;
        while at + 48 <= b.len() {
            let len = u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as u64;
            if b[at + 4] != 1 {
                break;
            }
            let s = u64::from_le_bytes(b[at + 8..at + 16].try_into().unwrap());
            if s == seq {
                return (path, at as u64);
            }
            at += ringex_journal::frame_size_bytes(len) as usize;
        }
    }
    panic!("record {seq} not found");
}

fn flip_payload_byte(dir: &Path, seq: u64) {
    let (path, at) = locate(dir, seq);
    let mut b = std::fs::read(&path).unwrap();
    b[at as usize + 50] ^= 0x20;
    std::fs::write(&path, b).unwrap();
}

/// The checkpoint lags the syncs (written at most every 10 ms, persisted by the next
/// sync): zeroing every slot is a state a crash can leave.
fn drop_checkpoints(dir: &Path) {
    for path in segment_paths(dir) {
        let mut b = std::fs::read(&path).unwrap();
        b[256..384].fill(0);
        std::fs::write(&path, b).unwrap();
    }
}

#[test]
fn damage_to_a_record_a_later_sync_covered_is_refused_past_the_checkpoint() {
    for backend in [Backend::Mmap, Backend::IoUring, Backend::Pwrite] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut j = journal(dir, Durability::Group, backend);
        let a = append_durable(&mut j, 40);
        let b = append_durable(&mut j, 40);
        let c = append_durable(&mut j, 1);
        j.abandon();
        let _ = std::fs::remove_file(dir.join("next.seg.spare"));
        drop_checkpoints(dir);
        let golden = files(dir);
        assert_eq!(verify(dir, Verify::All).unwrap().seq_last, c);

        // A record of the first batch: the second batch's records were written after it
        // was synced, and say so.
        flip_payload_byte(dir, a - 3);
        let msg = refused_unchanged(dir, a - 3);
        assert!(
            msg.contains("written after it was synced"),
            "{backend:?}: {msg}"
        );
        assert!(msg.contains("CRC-valid record(s) lie past it"), "{msg}");
        for (p, bytes) in &golden {
            std::fs::write(p, bytes).unwrap();
        }
        // A record of the second batch: the last record proves it.
        flip_payload_byte(dir, b);
        refused_unchanged(dir, b);
        for (p, bytes) in &golden {
            std::fs::write(p, bytes).unwrap();
        }
        // The last batch: nothing written after it proves it synced, and a crash during
        // its write looks the same. It is cut, and reported.
        flip_payload_byte(dir, c);
        let j = open(dir).unwrap();
        let t = j.recovery_report().truncation.clone().expect("reported");
        assert_eq!((t.seq_first_cut, j.recovery_report().seq_last), (c, c - 1));
    }
}

/// A journal of several segments written in group mode and closed: the newest segment's
/// header page holds the checkpoints, and the segment before it says it exists.
fn closed_journal(dir: &Path) -> Vec<PathBuf> {
    let mut j = journal(dir, Durability::Group, Backend::Mmap);
    for _ in 0..6 {
        append_durable(&mut j, 40);
    }
    j.close().unwrap();
    let _ = std::fs::remove_file(dir.join("next.seg.spare"));
    let segs = segment_paths(dir);
    assert!(segs.len() >= 4, "{segs:?}");
    segs
}

fn base_of(path: &Path) -> u64 {
    path.file_stem().unwrap().to_str().unwrap().parse().unwrap()
}

#[test]
fn a_zeroed_header_page_of_any_segment_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let segs = closed_journal(dir);
    let golden = files(dir);
    for path in &segs {
        for (p, bytes) in &golden {
            std::fs::write(p, bytes).unwrap();
        }
        let mut b = golden[path].clone();
        b[..4096].fill(0);
        std::fs::write(path, b).unwrap();
        let msg = refused_unchanged(dir, base_of(path));
        assert!(msg.contains(&path.display().to_string()), "{msg}");
    }
}

#[test]
fn a_missing_segment_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let segs = closed_journal(dir);
    let golden = files(dir);
    for path in &segs[1..] {
        for (p, bytes) in &golden {
            std::fs::write(p, bytes).unwrap();
        }
        std::fs::remove_file(path).unwrap();
        let msg = refused_unchanged(dir, base_of(path));
        assert!(msg.contains(&path.display().to_string()), "{msg}");
    }
}

/// Appends, syncs, then appends past a roll with no sync since (async mode, an hour's
/// flush interval) and abandons the writer: (newest segment, its base, last sequence).
fn roll_without_a_sync(dir: &Path) -> (PathBuf, u64, u64) {
    let mut j = journal(
        dir,
        Durability::Async {
            flush_interval_ms: 3_600_000,
        },
        Backend::Mmap,
    );
    append_n(&mut j, 60, len_of);
    j.sync().unwrap();
    let segs_before = segment_paths(dir);
    let mut last = 60;
    while segment_paths(dir).len() == segs_before.len() {
        last = append_n(&mut j, 1, len_of);
    }
    last = last.max(append_n(&mut j, 3, len_of));
    j.abandon();
    let _ = std::fs::remove_file(dir.join("next.seg.spare"));
    let newest = segment_paths(dir).last().unwrap().clone();
    let base = base_of(&newest);
    (newest, base, last)
}

/// A crash right after a roll (async mode: no sync round since) can leave the new
/// segment named but its header never written, and none of its records synced: that
/// segment is a torn tail, removed and reported.
#[test]
fn a_new_segment_whose_header_never_reached_the_disk_is_cut() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // The syncer may run one more round after `sync()` returns; if that round follows the
    // roll, it records the new segment (the state this test is not about): build again.
    let (newest, base, last) = (0..50)
        .find_map(|_| {
            for e in std::fs::read_dir(dir).unwrap() {
                std::fs::remove_file(e.unwrap().path()).unwrap();
            }
            let built = roll_without_a_sync(dir);
            // Any checkpoint slot (magic `CKPT`) naming the new segment (bytes 32..40).
            let named = segment_paths(dir).iter().any(|p| {
                let b = std::fs::read(p).unwrap();
                [256usize, 320].iter().any(|&at| {
                    &b[at..at + 4] == b"CKPT"
                        && u64::from_le_bytes(b[at + 32..at + 40].try_into().unwrap()) >= built.1
                })
            });
            (!named).then_some(built)
        })
        .expect("a roll with no sync round after it in 50 attempts");
    let rep = verify(dir, Verify::All).unwrap();
    assert!(rep.seq_durable_proven < base, "{rep:?}");
    let mut b = std::fs::read(&newest).unwrap();
    b[..4096].fill(0);
    std::fs::write(&newest, b).unwrap();

    let j = open(dir).unwrap();
    let rep = j.recovery_report().clone();
    drop(j);
    let t = rep.truncation.expect("the torn segment is reported");
    assert_eq!(t.segments_removed, vec![newest.clone()]);
    assert_eq!((t.seq_first_cut, t.seq_last_cut), (base, last));
    assert_eq!(rep.seq_last, base - 1);
    assert!(!newest.exists());
    assert_eq!(open(dir).unwrap().seq_next(), base);
}

/// A file named like a later segment that no roll made (of the wrong size, empty, or with
/// a header that is neither intact nor zero) is not a torn tail, even past the durable
/// point: the open refuses and deletes nothing, naming the file; the repair the message
/// names moves it into the quarantine, and the journal opens.
#[test]
fn a_stray_file_named_like_a_later_segment_is_refused_not_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    closed_journal(dir);
    let last = verify(dir, Verify::All).unwrap().seq_last;
    let golden = files(dir);
    let stray = dir.join(format!("{:020}.seg", last + 1000));
    let mut garbled = vec![0u8; SEGMENT_BYTES as usize];
    garbled[..8].copy_from_slice(b"not ours");
    for bytes in [b"hello\n".to_vec(), Vec::new(), garbled] {
        for (p, b) in &golden {
            std::fs::write(p, b).unwrap();
        }
        std::fs::write(&stray, &bytes).unwrap();
        let msg = refused_unchanged(dir, last + 1);
        assert!(msg.contains(&stray.display().to_string()), "{msg}");
        assert!(stray.exists());
    }
    let r = repair_truncate(dir, last + 1, None).unwrap();
    assert_eq!(r.segments_moved, vec![stray.clone()]);
    assert!(!stray.exists());
    assert_eq!(open(dir).unwrap().seq_next(), last + 1);
}

#[test]
fn verify_beside_a_running_writer_reports_the_live_tail_not_damage() {
    for backend in [Backend::Mmap, Backend::IoUring] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let mut j = journal(&dir, Durability::Group, backend);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                // Bounded: at most this many records, or until told to stop.
                for _ in 0..200_000u64 {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    append_n(&mut j, 1, len_of);
                }
                j.close().unwrap();
            })
        };
        let mut live_seen = 0;
        for _ in 0..20 {
            let rep = verify(&dir, Verify::All).unwrap_or_else(|e| panic!("{backend:?}: {e}"));
            assert!(rep.truncation.is_none(), "{backend:?}: false alarm {rep:?}");
            let live = rep.live.expect("the writer holds the lock");
            assert!(live.holder.starts_with("pid "), "{live:?}");
            live_seen += 1;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.join().unwrap();
        assert_eq!(live_seen, 20);
        let rep = verify(&dir, Verify::All).unwrap();
        assert!(rep.live.is_none() && rep.truncation.is_none(), "{rep:?}");
    }
}

/// The writer prunes the oldest segments after each snapshot: verify, describe and scan
/// beside it read what is still there, and a segment removed between listing the
/// directory and reading it is no alarm.
#[test]
fn the_tools_beside_a_writer_that_prunes_raise_no_alarm() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("journal");
    let snapshots_dir = tmp.path().join("snapshots");
    std::fs::create_dir_all(&dir).unwrap();
    let mut j = journal(&dir, Durability::Group, Backend::Mmap);
    let snapshots = ringex_journal::SnapshotStore::open(&snapshots_dir, 1).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let pruned = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (stop, pruned) = (stop.clone(), pruned.clone());
        std::thread::spawn(move || {
            // Bounded: at most this many rounds, or until told to stop.
            for _ in 0..100_000u64 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let last = append_durable(&mut j, 20);
                snapshots
                    .write(last, 1, j.chain(), &[1; 32], b"state")
                    .unwrap();
                let n = j.prune(&snapshots, false).unwrap().segments.len();
                pruned.fetch_add(n, Ordering::Relaxed);
            }
            j.close().unwrap();
        })
    };
    // Until the writer has pruned 150 segments (the deadline is only a failure bound).
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut rounds = 0u64;
    while pruned.load(Ordering::Relaxed) < 150 {
        assert!(std::time::Instant::now() < deadline, "the writer stalled");
        let rep = verify(&dir, Verify::All).unwrap_or_else(|e| panic!("verify: {e}"));
        assert!(rep.truncation.is_none(), "false alarm {rep:?}");
        ringex_journal::describe(&dir).unwrap_or_else(|e| panic!("describe: {e}"));
        ringex_journal::scan(&dir, 1, |_| true).unwrap_or_else(|e| panic!("scan: {e}"));
        rounds += 1;
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    assert!(rounds > 0);
}

#[test]
fn repair_cuts_on_purpose_and_keeps_what_it_cuts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let segs = closed_journal(dir);
    let total = verify(dir, Verify::All).unwrap().seq_last;
    let seq_bad = base_of(&segs[1]) + 5;
    flip_payload_byte(dir, seq_bad);
    let (cut_path, _) = locate(dir, seq_bad);
    let damaged = files(dir);
    refused_unchanged(dir, seq_bad);

    // Refused, changing nothing: past the damage, at the start, beyond the end, and
    // while a writer holds the lock.
    for seq in [seq_bad + 1, 1, total + 5] {
        let e = repair_truncate(dir, seq, None).expect_err("refused");
        assert!(files(dir) == damaged, "repair at {seq} changed files: {e}");
    }

    let r = repair_truncate(dir, seq_bad, None).unwrap();
    assert_eq!((r.seq_cut, r.segment.clone()), (seq_bad, cut_path.clone()));
    assert_eq!(r.after.seq_last, seq_bad - 1);
    assert!(r.after.truncation.is_none());
    assert!(r.quarantine.starts_with(dir.join(QUARANTINE_DIR_NAME)));
    // The quarantine holds the original bytes of the cut segment and of every later one.
    let name = |p: &Path| p.file_name().unwrap().to_owned();
    assert_eq!(
        std::fs::read(r.quarantine.join(name(&cut_path))).unwrap(),
        damaged[&cut_path]
    );
    for p in segs.iter().filter(|p| base_of(p) > base_of(&cut_path)) {
        assert!(!p.exists());
        assert_eq!(
            std::fs::read(r.quarantine.join(name(p))).unwrap(),
            damaged[p]
        );
    }
    let note = std::fs::read_to_string(r.quarantine.join("NOTE.txt")).unwrap();
    assert!(note.contains(&format!("--truncate-at {seq_bad}")), "{note}");

    // The journal opens as cut, takes new records, and reads back.
    let mut j = open(dir).unwrap();
    assert!(j.recovery_report().truncation.is_none());
    assert_eq!(j.seq_next(), seq_bad);
    append_durable(&mut j, 50);
    // Repair refuses while the writer holds the journal.
    assert!(matches!(
        repair_truncate(dir, seq_bad + 10, None),
        Err(Error::Locked { .. })
    ));
    j.close().unwrap();
    let records = read_all(dir);
    assert_eq!(records.len() as u64, seq_bad - 1 + 50);
    check_prefix(&records, len_of);
}

/// What opening will write is checked before anything changes: a spare that is not a
/// file refuses the open, and the lock file and every segment stay as they were.
#[test]
fn an_open_that_cannot_write_refuses_before_changing_anything() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    closed_journal(dir);
    std::fs::create_dir(dir.join("next.seg.spare")).unwrap();
    let before = files(dir);
    let e = open(dir).expect_err("refused");
    assert!(e.to_string().contains("not a regular file"), "{e}");
    assert!(files(dir) == before, "the refused open changed files");
}
