//! What replication needs from the journal: a tap that copies every appended frame, a
//! reader of raw frames from the files, and appends of another journal's frames byte for
//! byte. A standby built this way holds the primary's frames exactly, with the same chain.

mod common;
use common::*;
use ringex_journal::{Backend, Durability, Error, FrameReader, FrameTap, Journal, TapRead, Verify};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const SEGMENT_BYTES: u64 = 64 * 1024;

fn len_of(seq: u64) -> usize {
    20 + (seq as usize * 41) % 300
}

fn journal(dir: &Path, backend: Backend) -> Journal {
    let mut c = config(dir, Durability::Group);
    c.segment_size_bytes = SEGMENT_BYTES;
    c.record_size_bytes_max = 1024;
    c.backend = backend;
    c.verify = Verify::All;
    Journal::open(c).unwrap()
}

/// Every raw frame of a journal, in order.
fn frames(dir: &Path, seq_last: u64) -> Vec<u8> {
    let mut r = FrameReader::open(dir, 1).unwrap();
    let mut all = Vec::new();
    let mut out = Vec::new();
    for _ in 0..1_000_000 {
        match r.next_batch(&mut out, 64 << 10, seq_last).unwrap() {
            Some(_) => all.extend_from_slice(&out),
            None => break,
        }
    }
    assert_eq!(r.seq_next(), seq_last + 1);
    all
}

/// Appends every frame of `batch` (whole frames back to back) to `standby`.
fn append_frames(standby: &mut Journal, batch: &[u8]) {
    let mut at = 0;
    while at < batch.len() {
        let len = u32::from_le_bytes(batch[at..at + 4].try_into().unwrap()) as u64;
        let size = ringex_journal::frame_size_bytes(len) as usize;
        standby.append_replica(&batch[at..at + size]).unwrap();
        at += size;
    }
}

#[test]
fn a_standby_fed_by_the_tap_holds_the_primary_s_frames_byte_for_byte() {
    for backend in [Backend::Mmap, Backend::IoUring, Backend::Pwrite] {
        let tmp = tempfile::tempdir().unwrap();
        let (pdir, sdir) = (tmp.path().join("p"), tmp.path().join("s"));
        let mut primary = journal(&pdir, backend);
        let mut standby = journal(&sdir, backend);
        let tap = Arc::new(FrameTap::new(1 << 20));
        primary.set_tap(Some(tap.clone()));
        tap.reattach();
        let mut out = Vec::new();
        let mut shipped = 0u64;
        for round in 0..40 {
            let last = append_n(&mut primary, 25, len_of);
            primary.commit().unwrap();
            // Ship what the tap holds.
            loop {
                match tap.read(&mut out, 16 << 10) {
                    TapRead::Frames {
                        seq_first,
                        count,
                        bytes_len,
                    } => {
                        assert_eq!(seq_first, shipped + 1, "{backend:?} round {round}");
                        append_frames(&mut standby, &out);
                        shipped += u64::from(count);
                        tap.consume(bytes_len);
                    }
                    TapRead::Empty => break,
                    TapRead::Detached => panic!("the tap detached"),
                }
            }
            assert_eq!(shipped, last);
            standby.commit().unwrap();
        }
        assert_eq!(primary.chain(), standby.chain());
        let last = shipped;
        primary.close().unwrap();
        standby.close().unwrap();
        assert!(segment_paths(&pdir).len() > 3);
        assert_eq!(frames(&pdir, last), frames(&sdir, last), "{backend:?}");
        let records = read_all(&sdir);
        assert_eq!(records.len() as u64, last);
        check_prefix(&records, len_of);
    }
}

#[test]
fn a_standby_catches_up_from_the_files_and_joins_the_tap_without_a_seam() {
    let tmp = tempfile::tempdir().unwrap();
    let (pdir, sdir) = (tmp.path().join("p"), tmp.path().join("s"));
    let mut primary = journal(&pdir, Backend::IoUring);
    let mut standby = journal(&sdir, Backend::IoUring);
    append_n(&mut primary, 500, len_of);
    primary.commit().unwrap();
    let tap = Arc::new(FrameTap::new(64 << 10));
    primary.set_tap(Some(tap.clone()));
    // The standby had the first 100 already.
    let first = frames(&pdir, 100);
    append_frames(&mut standby, &first);
    let mut reader = FrameReader::open(&pdir, 101).unwrap();
    let mut out = Vec::new();
    // Catch up while the primary keeps appending; reattach when close, then fill the gap
    // from the files up to where the tap starts.
    let mut appended = 500;
    let mut next = 101u64;
    let mut attached_at = None;
    for step in 0..10_000 {
        if step % 3 == 0 && appended < 3_000 {
            appended = append_n(&mut primary, 7, len_of);
            primary.commit().unwrap();
        }
        let written = primary.watermarks().written();
        match attached_at {
            None => {
                if let Some((s, n)) = reader.next_batch(&mut out, 8 << 10, written).unwrap() {
                    assert_eq!(s, next);
                    append_frames(&mut standby, &out);
                    next += u64::from(n);
                }
                if written - next < 50 {
                    tap.reattach();
                    attached_at = Some(0);
                }
            }
            Some(_) => {
                let at = tap.seq_attached();
                if at == 0 {
                    continue;
                }
                // The files up to the tap's first frame.
                while next < at {
                    let (s, n) = reader
                        .next_batch(&mut out, 8 << 10, at - 1)
                        .unwrap()
                        .expect("written before the tap started");
                    assert_eq!(s, next);
                    append_frames(&mut standby, &out);
                    next += u64::from(n);
                }
                if let TapRead::Frames {
                    seq_first,
                    count,
                    bytes_len,
                } = tap.read(&mut out, 8 << 10)
                {
                    assert_eq!(seq_first, next, "no seam between the files and the tap");
                    append_frames(&mut standby, &out);
                    next += u64::from(count);
                    tap.consume(bytes_len);
                }
                if appended >= 3_000 && next > appended {
                    break;
                }
            }
        }
    }
    assert_eq!(next, appended + 1);
    assert_eq!(primary.chain(), standby.chain());
    primary.close().unwrap();
    standby.close().unwrap();
    assert_eq!(frames(&pdir, appended), frames(&sdir, appended));
}

#[test]
fn frames_that_do_not_follow_are_refused_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (pdir, sdir) = (tmp.path().join("p"), tmp.path().join("s"));
    let mut primary = journal(&pdir, Backend::Mmap);
    append_n(&mut primary, 10, len_of);
    primary.commit().unwrap();
    let all = frames(&pdir, 10);
    let mut standby = journal(&sdir, Backend::Mmap);
    let size = |at: usize| {
        ringex_journal::frame_size_bytes(u64::from(u32::from_le_bytes(
            all[at..at + 4].try_into().unwrap(),
        ))) as usize
    };
    let f1 = all[..size(0)].to_vec();
    let f2 = all[size(0)..size(0) + size(size(0))].to_vec();
    let refused = |j: &mut Journal, f: &[u8]| {
        let e = j.append_replica(f).expect_err("refused");
        assert!(matches!(e, Error::Refused(_)), "{e}");
    };
    // Out of order, a flipped bit, a short slice, a bad chain.
    refused(&mut standby, &f2);
    let mut flipped = f1.clone();
    flipped[60] ^= 1;
    refused(&mut standby, &flipped);
    refused(&mut standby, &f1[..f1.len() - 8]);
    standby.append_replica(&f1).unwrap();
    refused(&mut standby, &f1);
    // Nothing refused was taken: the right frame follows.
    assert_eq!(standby.append_replica(&f2).unwrap(), 2);
    assert_eq!(standby.seq_next(), 3);
    // A frame from a lower epoch than the journal's last record.
    let tmp2 = tempfile::tempdir().unwrap();
    let mut newer = {
        let mut c = config(tmp2.path(), Durability::Group);
        c.backend = Backend::Mmap;
        c.epoch = 5;
        Journal::open(c).unwrap()
    };
    let e = newer.append_replica(&f1).expect_err("stale epoch");
    assert!(e.to_string().contains("epoch 1 below"), "{e}");
    assert!(standby.wait_durable(0, Duration::ZERO).unwrap());
}
