mod common;
use common::*;
use ringex_journal::{Durability, Error, Journal, Reader, Tailer};
use std::time::Duration;

fn len_of(seq: u64) -> usize {
    (seq as usize * 37) % 700
}

#[test]
fn append_close_reopen_read_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = Journal::open(config(dir.path(), Durability::Group)).unwrap();
    assert_eq!(j.recovery_report().seq_last, 0);
    let last = append_n(&mut j, 300, len_of);
    assert!(j.wait_durable(last, Duration::from_secs(60)).unwrap());
    j.close().unwrap();
    let segs = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "seg")
        })
        .count();
    assert!(segs > 5, "expected many segments, got {segs}");

    let mut j = Journal::open(config(dir.path(), Durability::Group)).unwrap();
    let rep = j.recovery_report().clone();
    assert_eq!(rep.seq_last, 300);
    assert_eq!(rep.truncation, None);
    assert_eq!(j.seq_next(), 301);
    append_n(&mut j, 50, len_of);
    j.close().unwrap();
    let all = read_all(dir.path());
    assert_eq!(all.len(), 350);
    check_prefix(&all, len_of);

    // seek into the middle
    let mut r = Reader::open(dir.path()).unwrap();
    for seq in [1u64, 2, 77, 150, 299, 300, 301, 350] {
        r.seek(seq).unwrap();
        assert_eq!(r.next_owned().unwrap().unwrap().seq, seq);
    }
    r.seek(351).unwrap();
    assert!(r.next_owned().unwrap().is_none());
    assert!(matches!(
        r.seek(400),
        Err(Error::SequenceUnavailable { .. })
    ));
    // seek by timestamp: ts = seq * 1000
    assert_eq!(r.seek_timestamp(0).unwrap(), Some(1));
    assert_eq!(r.seek_timestamp(150_000).unwrap(), Some(150));
    assert_eq!(r.next_owned().unwrap().unwrap().seq, 150);
    assert_eq!(r.seek_timestamp(150_001).unwrap(), Some(151));
    assert_eq!(r.seek_timestamp(10_000_000).unwrap(), None);
}

#[test]
fn second_writer_is_refused_with_holder() {
    let dir = tempfile::tempdir().unwrap();
    let _j = Journal::open(config(dir.path(), Durability::Group)).unwrap();
    let err = Journal::open(config(dir.path(), Durability::Group)).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Locked { .. }), "{msg}");
    assert!(
        msg.contains(&format!("pid {}", std::process::id())),
        "{msg}"
    );
}

#[test]
fn async_mode_flushes_in_background() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = Journal::open(config(
        dir.path(),
        Durability::Async {
            flush_interval_ms: 5,
        },
    ))
    .unwrap();
    let last = append_n(&mut j, 100, len_of);
    assert_eq!(j.watermarks().written(), last);
    assert!(j.wait_durable(last, Duration::from_secs(60)).unwrap());
    drop(j);
    check_prefix(&read_all(dir.path()), len_of);
}

#[test]
fn tailer_sees_every_record_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = Journal::open(config(
        dir.path(),
        Durability::Async {
            flush_interval_ms: 2,
        },
    ))
    .unwrap();
    let watermarks = j.watermarks();
    let path = dir.path().to_path_buf();
    let total = 2000u64;
    let reader = std::thread::spawn(move || {
        let r = Reader::open(&path)
            .unwrap()
            .with_watermarks(watermarks, false);
        let mut t = Tailer::new(r, 1).unwrap();
        let mut expect = 1u64;
        let mut idle_rounds = 0;
        while expect <= total {
            match t.next_timeout(Duration::from_millis(100)).unwrap() {
                Some(rec) => {
                    assert_eq!(rec.seq, expect);
                    assert_eq!(rec.payload, payload(expect, len_of(expect)).as_slice());
                    expect += 1;
                    idle_rounds = 0;
                }
                None => {
                    idle_rounds += 1;
                    assert!(idle_rounds < 600, "tailer stalled at {expect}");
                }
            }
        }
        assert!(t.next_timeout(Duration::from_millis(50)).unwrap().is_none());
        expect - 1
    });
    for i in 0..total {
        append_n(&mut j, 1, len_of);
        if i % 97 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    assert_eq!(reader.join().unwrap(), total);
    j.close().unwrap();
}

#[test]
fn tailer_without_watermarks_follows_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = Journal::open(config(dir.path(), Durability::Group)).unwrap();
    append_n(&mut j, 10, len_of);
    let mut t = Tailer::new(Reader::open(dir.path()).unwrap(), 5).unwrap();
    for seq in 5..=10 {
        assert_eq!(
            t.next_timeout(Duration::from_millis(10))
                .unwrap()
                .unwrap()
                .seq,
            seq
        );
    }
    assert!(t.next_timeout(Duration::from_millis(5)).unwrap().is_none());
    append_n(&mut j, 200, len_of);
    for seq in 11..=210 {
        assert_eq!(
            t.next_timeout(Duration::from_millis(100))
                .unwrap()
                .unwrap()
                .seq,
            seq
        );
    }
}

/// Runs `body` on a fresh group-mode journal for the mapped and the staged write path,
/// then closes it and reads everything back.
fn with_each_group_backend(caller_commits: bool, body: impl Fn(&mut Journal)) {
    for backend in [
        ringex_journal::Backend::Mmap,
        ringex_journal::Backend::IoUring,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path(), Durability::Group);
        c.backend = backend;
        c.caller_commits = caller_commits;
        let mut j = Journal::open(c).unwrap();
        body(&mut j);
        j.close().unwrap();
        check_prefix(&read_all(dir.path()), len_of);
    }
}

#[test]
fn commit_syncs_in_the_calling_thread() {
    with_each_group_backend(false, |j| {
        for round in 0..50u64 {
            let last = append_n(j, 1 + round % 7, len_of);
            assert!(j.commit().unwrap() >= last);
            assert!(j.watermarks().durable() >= last);
            assert!(j.watermarks().written() >= last);
        }
    });
}

#[test]
fn every_sync_round_is_counted_and_timed_for_metrics() {
    with_each_group_backend(false, |j| {
        let marks = j.watermarks();
        let (before, _) = marks.syncs();
        marks.take_sync_ns_max();
        for _ in 0..5 {
            let last = append_n(j, 3, len_of);
            assert!(j.commit().unwrap() >= last);
        }
        let (after, ns_total) = marks.syncs();
        assert!(
            after >= before + 5,
            "{:?}: each commit is a round",
            j.backend()
        );
        assert!(ns_total > 0);
        let max = marks.take_sync_ns_max();
        assert!(max > 0 && max <= ns_total, "{max} {ns_total}");
    });
}

/// With `caller_commits` the syncer stops syncing after every append (the caller's
/// `commit` does that), but still syncs what nobody committed, within its interval.
#[test]
fn when_the_caller_commits_the_syncer_still_syncs_what_it_left() {
    with_each_group_backend(true, |j| {
        let committed = append_n(j, 20, len_of);
        assert!(j.commit().unwrap() >= committed);
        let left = append_n(j, 5, len_of);
        assert!(
            j.wait_durable(left, std::time::Duration::from_secs(60))
                .unwrap(),
            "{:?}: the syncer's periodic round made the uncommitted appends durable",
            j.backend()
        );
    });
}

#[test]
fn epochs_only_go_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = Journal::open(config(dir.path(), Durability::Group)).unwrap();
    append_n(&mut j, 5, len_of);
    assert!(matches!(j.set_epoch(0), Err(Error::StaleEpoch { .. })));
    j.set_epoch(3).unwrap();
    append_n(&mut j, 5, len_of);
    j.close().unwrap();
    // A node still at epoch 1 may not write this journal again.
    let err = Journal::open(config(dir.path(), Durability::Group)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::StaleEpoch {
                epoch: 1,
                epoch_journal: 3
            }
        ),
        "{err}"
    );
    let mut c = config(dir.path(), Durability::Group);
    c.epoch = 3;
    let mut j = Journal::open(c).unwrap();
    assert_eq!(j.seq_next(), 11);
    append_n(&mut j, 1, len_of);
    j.close().unwrap();
    let epochs: Vec<u32> = read_all(dir.path()).iter().map(|r| r.epoch).collect();
    assert_eq!(epochs, vec![1, 1, 1, 1, 1, 3, 3, 3, 3, 3, 3]);
}

#[test]
fn a_seal_carries_the_epoch_of_its_segments_last_record() {
    // 64-byte payloads make 112-byte frames, and 109 of them fill a 16 KiB segment's data
    // area exactly: the first record at the new epoch rolls, sealing a segment whose
    // records are all of the old one.
    let dir = tempfile::tempdir().unwrap();
    let data_area = SEGMENT_SIZE_BYTES - 4096 - 80;
    assert_eq!(data_area % 112, 0);
    let mut j = Journal::open(config(dir.path(), Durability::Group)).unwrap();
    append_n(&mut j, data_area / 112, |_| 64);
    j.set_epoch(2).unwrap();
    append_n(&mut j, 1, |_| 64);
    j.close().unwrap();
    assert_eq!(segment_paths(dir.path()).len(), 2, "the promotion rolled");
    let report = ringex_journal::verify(dir.path(), ringex_journal::Verify::All).unwrap();
    assert!(report.truncation.is_none(), "{report:?}");
    let mut c = config(dir.path(), Durability::Group);
    c.epoch = 2;
    let j = Journal::open(c).unwrap();
    assert_eq!(j.seq_next(), data_area / 112 + 2);
    j.close().unwrap();
    let epochs: Vec<u32> = read_all(dir.path()).iter().map(|r| r.epoch).collect();
    assert_eq!(
        epochs.iter().filter(|&&e| e == 1).count() as u64,
        data_area / 112
    );
    assert_eq!(epochs.last(), Some(&2));
}

#[test]
fn verify_reports_without_modifying() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = Journal::open(config(dir.path(), Durability::Group)).unwrap();
    append_n(&mut j, 40, len_of);
    j.sync().unwrap();
    append_n(&mut j, 3, len_of);
    j.abandon();
    // Tear the last record's last byte.
    let segs = segment_paths(dir.path());
    let last = segs.last().unwrap();
    let mut bytes = std::fs::read(last).unwrap();
    let end = bytes[4096..bytes.len() - 80]
        .iter()
        .rposition(|&b| b != 0)
        .unwrap()
        + 4096;
    bytes[end] ^= 0xff;
    std::fs::write(last, &bytes).unwrap();
    let rep = ringex_journal::verify(dir.path(), ringex_journal::Verify::All).unwrap();
    let t = rep.truncation.clone().expect("torn tail found");
    assert_eq!(t.seq_first_cut, 43);
    assert_eq!(rep.seq_last, 42);
    assert_eq!(rep.seq_durable, 40);
    assert_eq!(
        std::fs::read(last).unwrap(),
        bytes,
        "verify modified the file"
    );
    let j = Journal::open(config(dir.path(), Durability::Group)).unwrap();
    assert_eq!(
        j.recovery_report()
            .truncation
            .as_ref()
            .unwrap()
            .seq_first_cut,
        43
    );
    assert_eq!(j.seq_next(), 43);
}

#[test]
fn seeks_use_the_sparse_index_in_sealed_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(
        dir.path(),
        Durability::Async {
            flush_interval_ms: 50,
        },
    );
    c.segment_size_bytes = 256 * 1024;
    let mut j = Journal::open(c).unwrap();
    let small = |s: u64| (s % 40) as usize;
    append_n(&mut j, 9000, small);
    j.close().unwrap();
    let mut r = Reader::open(dir.path()).unwrap();
    // A scattered order, back and forth within and across segments.
    let mut seq = 1u64;
    for _ in 0..400 {
        seq = (seq * 7919 + 13) % 9000 + 1;
        r.seek(seq).unwrap();
        let rec = r.next_owned().unwrap().unwrap();
        assert_eq!(rec.seq, seq);
        assert_eq!(rec.payload, payload(seq, small(seq)));
        let rec = r.next_owned().unwrap();
        if seq < 9000 {
            assert_eq!(rec.unwrap().seq, seq + 1);
        }
    }
}

#[test]
fn describe_summarises_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = Journal::open(config(dir.path(), Durability::Group)).unwrap();
    append_n(&mut j, 120, len_of);
    j.close().unwrap();
    let d = ringex_journal::describe(dir.path()).unwrap();
    assert!(d.segments.len() > 2);
    assert!(d.segments.iter().all(|s| s.problem.is_none()), "{d:?}");
    assert!(d.segments[..d.segments.len() - 1].iter().all(|s| s.sealed));
    assert!(!d.segments.last().unwrap().sealed);
    assert_eq!(d.segments.iter().map(|s| s.record_count).sum::<u64>(), 120);
    assert_eq!(d.segments.last().unwrap().seq_last, 120);
    assert_eq!(d.segments[0].timestamp_ns_first, Some(1000));
    assert_eq!(d.checkpoint.map(|c| c.1), Some(120));
    for w in d.segments.windows(2) {
        assert_eq!(w[0].seq_last + 1, w[1].base_seq);
    }
}

#[test]
fn sealed_last_segment_rolls_on_next_append() {
    // A crash between sealing a segment and creating the next one leaves a sealed last
    // segment; the next append must roll, and the sequence must continue.
    let dir = tempfile::tempdir().unwrap();
    let c = config(
        dir.path(),
        Durability::Async {
            flush_interval_ms: 3_600_000,
        },
    );
    let mut j = Journal::open(c).unwrap();
    let segments = || ringex_journal::describe(dir.path()).unwrap().segments;
    let mut n = 0;
    while segments().len() == 1 {
        append_n(&mut j, 1, len_of);
        j.sync().unwrap();
        n += 1;
        assert!(n < 1000);
    }
    // The last append rolled into segment 2 and was synced: the durable point is there.
    // Fill segment 2 without syncing until the next roll, then drop segment 3, as if the
    // crash came after segment 2 was sealed but before segment 3 existed.
    let base2 = segments()[1].base_seq;
    let mut m = 0;
    while segments().len() == 2 {
        append_n(&mut j, 1, len_of);
        m += 1;
        assert!(m < 1000);
    }
    j.abandon(); // durable point stays in segment 2 (synced before the second roll)
    let segs = segments();
    assert_eq!(segs.len(), 3);
    assert!(segs[1].sealed);
    let seq_last_kept = segs[1].seq_last;
    std::fs::remove_file(&segs[2].path).unwrap();

    let mut j = Journal::open(config(dir.path(), Durability::Group)).unwrap();
    assert_eq!(j.seq_next(), seq_last_kept + 1);
    assert!(base2 <= seq_last_kept);
    append_n(&mut j, 30, len_of);
    j.close().unwrap();
    let segs = segments();
    assert_eq!(
        segs[2].base_seq,
        seq_last_kept + 1,
        "rolled into a fresh segment"
    );
    let all = read_all(dir.path());
    assert_eq!(all.len() as u64, seq_last_kept + 30);
    check_prefix(&all, len_of);
}

/// The segment size is the journal's, fixed when it is created: a journal reopened with
/// another configured size goes on with its own (and says so), so the segments it rolls
/// to match the old ones and the next open finds one journal, not damage.
#[test]
fn a_changed_segment_size_applies_to_new_journals_only() {
    let dir = tempfile::tempdir().unwrap();
    let sized = |bytes: u64| {
        let mut c = config(
            dir.path(),
            Durability::Async {
                flush_interval_ms: 50,
            },
        );
        c.segment_size_bytes = bytes;
        c
    };
    let small = |s: u64| (s % 40) as usize;
    let mut j = Journal::open(sized(256 * 1024)).unwrap();
    assert_eq!(j.segment_size_note(), None);
    append_n(&mut j, 3000, small);
    j.close().unwrap();

    let mut j = Journal::open(sized(512 * 1024)).unwrap();
    let note = j.segment_size_note().expect("the changed size is noted");
    assert!(note.contains("262144") && note.contains("524288"), "{note}");
    let segments_before = ringex_journal::describe(dir.path()).unwrap().segments.len();
    append_n(&mut j, 6000, small);
    j.close().unwrap();
    let d = ringex_journal::describe(dir.path()).unwrap();
    assert!(d.segments.len() > segments_before, "it rolled: {d:?}");
    assert!(d.segments.iter().all(|s| s.problem.is_none()), "{d:?}");

    let j = Journal::open(sized(512 * 1024)).unwrap();
    assert_eq!(j.seq_next(), 9001, "every record is there");
    drop(j);

    // A configuration whose largest record fits its own segments but not the journal's:
    // the journal still opens, its records bounded by what its segments hold.
    let mut big = sized(64 << 20);
    big.record_size_bytes_max = 1 << 20;
    let j = Journal::open(big).unwrap();
    assert_eq!(j.seq_next(), 9001);
}
