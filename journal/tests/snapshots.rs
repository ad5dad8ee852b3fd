mod common;
use common::*;
use ringex_journal::{Durability, Error, Journal, Reader, SnapshotStore};

fn len_of(seq: u64) -> usize {
    100 + (seq as usize * 17) % 400
}

#[test]
fn write_list_keep_k_and_fall_back_when_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(dir.path().join("snapshots"), 3).unwrap();
    assert!(store.load_newest_valid().unwrap().is_none());
    for seq in [10u64, 20, 30, 40, 50] {
        let payload = payload(seq, 1000 + seq as usize);
        let m = store
            .write(seq, 2, seq * 3, &[seq as u8; 32], &payload)
            .unwrap();
        assert_eq!(m.seq, seq);
    }
    let list = store.list().unwrap();
    assert_eq!(
        list.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![30, 40, 50]
    );
    assert!(list.iter().all(|e| e.meta.is_ok()));
    assert_eq!(store.seq_oldest().unwrap(), Some(30));
    let newest = store.load_newest_valid().unwrap().unwrap();
    assert_eq!(newest.meta.seq, 50);
    assert_eq!(newest.meta.chain, 150);
    assert_eq!(newest.meta.epoch, 2);
    assert_eq!(newest.meta.state_hash, vec![50u8; 32]);
    assert_eq!(newest.payload, payload(50, 1050));
    assert!(newest.skipped.is_empty());

    // Damage the newest: one flipped payload bit.
    let path = newest.meta.path.clone();
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n - 10] ^= 4;
    std::fs::write(&path, &bytes).unwrap();
    let loaded = store.load_newest_valid().unwrap().unwrap();
    assert_eq!(loaded.meta.seq, 40);
    assert_eq!(loaded.skipped.len(), 1);
    assert!(loaded.skipped[0].1.contains("CRC"), "{:?}", loaded.skipped);
    // Truncate the next one too.
    let p40 = loaded.meta.path.clone();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p40)
        .unwrap()
        .set_len(50)
        .unwrap();
    let loaded = store.load_newest_valid().unwrap().unwrap();
    assert_eq!(loaded.meta.seq, 30);
    assert_eq!(loaded.skipped.len(), 2);
    assert!(
        store
            .list()
            .unwrap()
            .iter()
            .filter(|e| e.meta.is_err())
            .count()
            == 2
    );

    // A leftover temp file from an interrupted write is ignored and cleaned.
    std::fs::write(
        dir.path()
            .join("snapshots/snapshot-00000000000000000099.snap.tmp"),
        b"junk",
    )
    .unwrap();
    let store = SnapshotStore::open(dir.path().join("snapshots"), 3).unwrap();
    assert_eq!(store.load_newest_valid().unwrap().unwrap().meta.seq, 30);
    assert!(!dir
        .path()
        .join("snapshots/snapshot-00000000000000000099.snap.tmp")
        .exists());
    assert!(matches!(
        store.write(1, 1, 1, &[0; 33], b""),
        Err(Error::Config(_))
    ));
}

#[test]
fn prune_respects_oldest_snapshot_and_cursors() {
    let dir = tempfile::tempdir().unwrap();
    let jdir = dir.path().join("journal");
    let store = SnapshotStore::open(dir.path().join("snapshots"), 2).unwrap();
    let mut j = Journal::open(config(&jdir, Durability::Group)).unwrap();
    append_n(&mut j, 400, len_of);
    let segments_before = ringex_journal_segments(&jdir);
    assert!(segments_before.len() > 8);

    // No snapshot: nothing may go.
    let r = j.prune(&store, false).unwrap();
    assert!(r.segments.is_empty());

    store.write(150, 1, 0, b"h", b"state@150").unwrap();
    store.write(300, 1, 0, b"h", b"state@300").unwrap();
    let cursor = j.register_cursor(100);
    let dry = j.prune(&store, true).unwrap();
    assert!(dry.dry_run);
    assert_eq!(dry.seq_keep_from, 100);
    assert!(!dry.segments.is_empty());
    assert!(dry.segments.iter().all(|s| s.seq_last < 100));
    assert_eq!(
        ringex_journal_segments(&jdir),
        segments_before,
        "dry run removed files"
    );

    // The cursor moves on: the oldest snapshot (150) bounds pruning now.
    cursor.store(1_000, std::sync::atomic::Ordering::Release);
    let r = j.prune(&store, false).unwrap();
    assert_eq!(r.seq_keep_from, 151);
    assert!(r.segments.iter().all(|s| s.seq_last <= 150));
    let first_left = ringex_journal_segments(&jdir)[0];
    assert!(
        first_left <= 151,
        "first remaining segment starts at {first_left}"
    );
    assert!(first_left > 1);

    // Reading from the first retained sequence works; earlier ones are reported unavailable.
    let mut reader = Reader::open(&jdir).unwrap();
    assert!(matches!(
        reader.seek(1),
        Err(Error::SequenceUnavailable { .. })
    ));
    reader.seek(151).unwrap();
    assert_eq!(reader.next_owned().unwrap().unwrap().seq, 151);

    // The pruned journal reopens and continues its sequence.
    drop(cursor);
    j.close().unwrap();
    let mut j = Journal::open(config(&jdir, Durability::Group)).unwrap();
    assert_eq!(j.recovery_report().seq_first, first_left);
    assert_eq!(j.seq_next(), 401);
    append_n(&mut j, 10, len_of);
    j.close().unwrap();
    let mut reader = Reader::open(&jdir).unwrap();
    reader.seek(first_left).unwrap();
    let mut n = 0;
    while let Some(rec) = reader.next_owned().unwrap() {
        assert_eq!(rec.seq, first_left + n);
        assert_eq!(rec.payload, payload(rec.seq, len_of(rec.seq)));
        n += 1;
    }
    assert_eq!(first_left + n - 1, 410);
}

fn ringex_journal_segments(dir: &std::path::Path) -> Vec<u64> {
    let mut v: Vec<u64> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".seg").and_then(|d| d.parse().ok())
        })
        .collect();
    v.sort();
    v
}

/// Runs `f` on another thread and fails the test if it has not returned within a minute
/// (a bound on failure: a call that blocks never returns).
fn returning<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(60))
        .expect("returned instead of blocking")
}

fn mkfifo(path: &std::path::Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

#[test]
fn a_fifo_or_device_named_like_a_segment_or_snapshot_is_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let jdir = dir.path().join("journal");
    let mut j = Journal::open(config(&jdir, Durability::Group)).unwrap();
    let last = append_n(&mut j, 20, |_| 100);
    assert!(j.commit().unwrap() >= last);
    j.close().unwrap();
    let snapshots = dir.path().join("snapshots");
    let store = SnapshotStore::open(&snapshots, 3).unwrap();
    store.write(10, 1, 1, &[7; 16], b"state").unwrap();
    // A FIFO would block an open forever; /dev/zero would never end a read.
    mkfifo(&snapshots.join("snapshot-00000000000000000015.snap"));
    std::os::unix::fs::symlink(
        "/dev/zero",
        snapshots.join("snapshot-00000000000000000016.snap"),
    )
    .unwrap();
    let listed = returning(move || store.list().unwrap());
    let unusable: Vec<String> = listed.iter().filter_map(|e| e.meta.clone().err()).collect();
    assert_eq!(unusable.len(), 2, "{unusable:?}");
    assert!(
        unusable
            .iter()
            .all(|why| why.contains("not a regular file")),
        "{unusable:?}"
    );
    assert!(listed.iter().any(|e| e.seq == 10 && e.meta.is_ok()));
    // The journal: a FIFO named like a later segment is an error naming it.
    mkfifo(&jdir.join("00000000000000099999.seg"));
    let opened = returning(move || Journal::open(config(&jdir, Durability::Group)).err());
    let e = opened.expect("refused").to_string();
    assert!(
        e.contains("not a regular file") && e.contains("99999.seg"),
        "{e}"
    );
}

#[test]
fn the_read_only_listing_creates_nothing_and_removes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let snaps = dir.path().join("snapshots");
    // A missing directory holds no snapshots, and stays missing.
    assert!(ringex_journal::snapshot_list(&snaps).unwrap().is_empty());
    assert!(!snaps.exists());
    let store = SnapshotStore::open(&snaps, 2).unwrap();
    store.write(7, 1, 21, &[7u8; 32], &payload(7, 500)).unwrap();
    // A snapshot being written (a running node's temporary file) is left alone.
    let tmp = snaps.join(format!("{}.tmp", ringex_journal::snapshot_file_name(9)));
    std::fs::write(&tmp, b"partial").unwrap();
    let list = ringex_journal::snapshot_list(&snaps).unwrap();
    assert_eq!(list.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![7]);
    assert_eq!(list[0].meta.as_ref().unwrap().chain, 21);
    assert!(tmp.exists());
    assert_eq!(store.list().unwrap(), list);
}

#[test]
fn a_snapshot_store_that_cannot_be_created_says_it_is_the_snapshot_store() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-directory");
    std::fs::write(&file, b"x").unwrap();
    let Err(e) = SnapshotStore::open(file.join("snapshots"), 1) else {
        panic!("a path under a file cannot be a directory");
    };
    let text = e.to_string();
    assert!(
        text.starts_with("snapshot I/O error: create_dir_all "),
        "{text}"
    );
}
