//! Cut the last segment at every byte offset of its last records, flip bits anywhere:
//! open must recover exactly the valid prefix or refuse with the documented error.

mod common;
use common::*;
use ringex_journal::{verify, Durability, Error, Journal, OwnedRecord, Reader, Verify};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

const SEGMENT_BYTES: u64 = 8192;
const RECORDS_DURABLE: u64 = 30;
const RECORDS_TAIL: u64 = 8;

fn len_of(seq: u64) -> usize {
    40 + (seq as usize * 53) % 260
}

struct Golden {
    files: BTreeMap<PathBuf, Vec<u8>>,
    records: Vec<OwnedRecord>,
    /// (segment path, frame start, frame end, seq) for every record.
    extents: Vec<(PathBuf, u64, u64, u64)>,
}

fn build(dir: &Path) -> Golden {
    let mut c = config(
        dir,
        Durability::Async {
            flush_interval_ms: 3_600_000,
        },
    );
    c.segment_size_bytes = SEGMENT_BYTES;
    c.record_size_bytes_max = 1024;
    let mut j = Journal::open(c).unwrap();
    append_n(&mut j, RECORDS_DURABLE, len_of);
    j.sync().unwrap();
    append_n(&mut j, RECORDS_TAIL, len_of);
    j.abandon();
    let _ = std::fs::remove_file(dir.join("next.seg.spare"));
    let mut files = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "seg") {
            files.insert(p.clone(), std::fs::read(&p).unwrap());
        }
    }
    assert!(
        files.len() >= 3,
        "want several segments, got {}",
        files.len()
    );
    let records = read_all(dir);
    assert_eq!(records.len() as u64, RECORDS_DURABLE + RECORDS_TAIL);
    check_prefix(&records, len_of);
    // Frame extents, walking each segment's frames.
    let mut extents = Vec::new();
    let mut seq = 1u64;
    for (path, bytes) in &files {
        let mut at = 4096u64;
        loop {
            let len = u32::from_le_bytes(bytes[at as usize..at as usize + 4].try_into().unwrap());
            let s =
                u64::from_le_bytes(bytes[at as usize + 8..at as usize + 16].try_into().unwrap());
            if s != seq || bytes[at as usize + 4] != 1 {
                break;
            }
            let end = at + ringex_journal::frame_size_bytes(u64::from(len));
            extents.push((path.clone(), at, end, seq));
            seq += 1;
            at = end;
        }
    }
    assert_eq!(extents.len(), records.len());
    Golden {
        files,
        records,
        extents,
    }
}

fn restore(g: &Golden, dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "seg" || x == "spare") {
            std::fs::remove_file(p).unwrap();
        }
    }
    for (p, b) in &g.files {
        std::fs::write(p, b).unwrap();
    }
}

/// Reads with a fresh reader: whatever it returns before an error or the end must be an
/// exact prefix of the original records.
fn read_prefix(dir: &Path, g: &Golden) -> u64 {
    let mut r = match Reader::open(dir) {
        Ok(r) => r,
        Err(e) => {
            assert!(matches!(e, Error::Corrupt { .. }), "{e}");
            return 0;
        }
    };
    let mut n = 0u64;
    for _ in 0..g.records.len() + 1 {
        match r.next_owned() {
            Ok(Some(rec)) => {
                assert_eq!(
                    rec, g.records[n as usize],
                    "reader returned a damaged record"
                );
                n += 1;
            }
            Ok(None) => break,
            Err(e) => {
                assert!(matches!(e, Error::Corrupt { .. }), "{e}");
                break;
            }
        }
    }
    n
}

fn assert_documented_refusal(e: &Error, dir: &Path) {
    let msg = e.to_string();
    assert!(
        matches!(e, Error::Corrupt { .. }),
        "unexpected error: {msg}"
    );
    assert!(msg.contains(".seg"), "{msg}");
    assert!(msg.contains("offset"), "{msg}");
    assert!(
        msg.contains(&format!("ringex journal verify --dir {}", dir.display())),
        "{msg}"
    );
}

#[test]
fn cut_at_every_offset_of_the_last_records() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let g = build(dir);
    let durable_end = g.extents[RECORDS_DURABLE as usize - 1].clone();
    let last_path = g.files.keys().last().unwrap().clone();
    // Frames in the last segment; cut at every offset from the first of them to the end.
    let first_in_last = g.extents.iter().find(|e| e.0 == last_path).unwrap().1;
    let end_in_last = g.extents.last().unwrap().2;
    assert!(durable_end.0 != last_path || durable_end.2 > first_in_last);
    for cut in first_in_last..=end_in_last {
        restore(&g, dir);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&last_path)
            .unwrap();
        f.set_len(cut).unwrap();
        drop(f);
        let valid = g
            .extents
            .iter()
            .take_while(|e| e.0 != last_path || e.2 <= cut)
            .count() as u64;
        let result = Journal::open({
            let mut c = config(dir, Durability::Group);
            c.segment_size_bytes = SEGMENT_BYTES;
            c.record_size_bytes_max = 1024;
            c.verify = Verify::All;
            c
        });
        if valid >= RECORDS_DURABLE {
            let j = result.unwrap_or_else(|e| panic!("cut {cut}: {e}"));
            let rep = j.recovery_report().clone();
            assert_eq!(rep.seq_last, valid, "cut at {cut}");
            let torn = g
                .extents
                .iter()
                .any(|e| e.0 == last_path && e.1 < cut && cut < e.2);
            if torn {
                let t = rep.truncation.as_ref().expect("truncation reported");
                assert_eq!(t.seq_first_cut, valid + 1);
                assert!(t.cut_size_bytes > 0);
            }
            drop(j);
            assert_eq!(read_prefix(dir, &g), valid, "cut at {cut}");
        } else {
            let e = result.expect_err("cut before the durable point must refuse");
            assert_documented_refusal(&e, dir);
            assert_eq!(read_prefix(dir, &g), valid);
        }
    }
}

#[test]
fn flip_single_bits_anywhere() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let g = build(dir);
    restore(&g, dir);
    let mut flips = 0u64;
    let mut refusals = 0u64;
    let mut opens = 0u64;
    for (path, bytes) in &g.files {
        let used_end = bytes.iter().rposition(|&b| b != 0).unwrap_or(0) + 1;
        // Header page (header and checkpoints), every byte of the records, the seal,
        // and zero bytes around them: one bit per byte, cycling through bit positions.
        // Every byte of headers, checkpoints, frame headers and seals; every third byte of
        // payloads (keeps the test a few seconds in debug builds).
        let in_payload = |at: usize| {
            g.extents
                .iter()
                .any(|e| &e.0 == path && e.1 + 48 <= at as u64 && (at as u64) < e.2)
        };
        let offsets: Vec<usize> = (0..512)
            .chain(4096..used_end.min(bytes.len()))
            .chain(bytes.len() - 96..bytes.len())
            .filter(|&at| at % 3 == 0 || !in_payload(at))
            .collect();
        for &at in &offsets {
            let bit = (at * 5 + 3) % 8;
            let mut damaged = bytes.clone();
            damaged[at] ^= 1 << bit;
            std::fs::write(path, &damaged).unwrap();
            flips += 1;
            let in_record = g
                .extents
                .iter()
                .find(|e| &e.0 == path && e.1 <= at as u64 && (at as u64) < e.2);
            let result = verify(dir, Verify::All);
            match (&result, in_record) {
                (Ok(rep), Some(e)) => {
                    assert!(
                        e.3 > RECORDS_DURABLE,
                        "damage in durable record {} at {at} accepted",
                        e.3
                    );
                    assert_eq!(rep.seq_last, e.3 - 1);
                }
                (Ok(rep), None) => assert!(
                    rep.seq_last >= RECORDS_DURABLE,
                    "{} at {at}: {rep:?}",
                    path.display()
                ),
                (Err(err), Some(e)) => {
                    assert!(e.3 <= RECORDS_DURABLE, "torn record {} refused: {err}", e.3);
                    assert_documented_refusal(err, dir);
                }
                (Err(err), None) => assert_documented_refusal(err, dir),
            }
            if result.is_err() {
                refusals += 1;
            }
            // The default (tail) verification trusts sealed durable segments; it must still
            // either open or refuse as documented, and never panic.
            if at % 4 == 0 {
                if let Err(err) = verify(dir, Verify::Tail) {
                    assert_documented_refusal(&err, dir);
                }
            }
            // Readers never return a damaged record, whatever open says.
            let n = read_prefix(dir, &g);
            if let Some(e) = in_record {
                assert!(n < e.3, "reader passed damaged record {}", e.3);
            }
            // A sample goes through a real open (which cuts the tail) and a read.
            if at % 31 == 0 {
                opens += 1;
                let mut c = config(dir, Durability::Group);
                c.segment_size_bytes = SEGMENT_BYTES;
                c.record_size_bytes_max = 1024;
                c.verify = Verify::All;
                match Journal::open(c) {
                    Ok(j) => {
                        let last = j.recovery_report().seq_last;
                        assert_eq!(
                            Ok(last),
                            result.as_ref().map(|r| r.seq_last).map_err(|_| ())
                        );
                        drop(j);
                        // What is left reads back as exactly the recovered prefix.
                        assert_eq!(read_prefix(dir, &g), last);
                    }
                    Err(err) => assert_documented_refusal(&err, dir),
                }
                restore(&g, dir);
            } else {
                std::fs::write(path, bytes).unwrap();
            }
        }
    }
    assert!(
        flips > 1000 && refusals > 100 && opens > 50,
        "{flips} {refusals} {opens}"
    );
}

#[test]
fn lost_checkpoint_slot_falls_back() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let g = build(dir);
    // Zero both checkpoint slots of every segment: open still works (durable point 0) and
    // treats damage anywhere as a torn tail.
    for (p, b) in &g.files {
        let mut d = b.clone();
        d[256..384].fill(0);
        std::fs::write(p, d).unwrap();
    }
    let rep = verify(dir, Verify::All).unwrap();
    assert_eq!(rep.seq_durable, 0);
    assert_eq!(rep.seq_last, RECORDS_DURABLE + RECORDS_TAIL);
    let _ = Duration::ZERO;
}

/// A lost write: one 512-byte sector of a segment reads back as zeros (it never reached
/// the disk), anywhere in the data or seal. Before the durable point: refuse; after it: keep
/// exactly the records before the first changed one.
#[test]
fn lost_sector_anywhere() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let g = build(dir);
    for (path, bytes) in &g.files {
        let used_end = bytes.iter().rposition(|&b| b != 0).unwrap_or(0) + 1;
        for page_start in (4096..used_end).step_by(512) {
            restore(&g, dir);
            let mut damaged = bytes.clone();
            let page_end = (page_start + 512).min(damaged.len());
            damaged[page_start..page_end].fill(0);
            if &damaged == bytes {
                continue;
            }
            std::fs::write(path, &damaged).unwrap();
            // The first record whose bytes changed.
            let first_changed = g
                .extents
                .iter()
                .find(|e| {
                    &e.0 == path
                        && bytes[e.1 as usize..e.2 as usize] != damaged[e.1 as usize..e.2 as usize]
                })
                .map(|e| e.3);
            let mut c = config(dir, Durability::Group);
            c.segment_size_bytes = SEGMENT_BYTES;
            c.record_size_bytes_max = 1024;
            c.verify = Verify::All;
            let result = Journal::open(c);
            match first_changed {
                Some(seq) if seq <= RECORDS_DURABLE => {
                    let e = result.expect_err("lost durable page must refuse");
                    assert_documented_refusal(&e, dir);
                }
                Some(seq) => {
                    let j = result.unwrap_or_else(|e| panic!("page {page_start}: {e}"));
                    assert_eq!(j.recovery_report().seq_last, seq - 1, "page {page_start}");
                    drop(j);
                    assert_eq!(read_prefix(dir, &g), seq - 1);
                }
                None => {
                    // Only the seal or zero areas changed.
                    if let Ok(j) = result {
                        assert!(j.recovery_report().seq_last >= RECORDS_DURABLE);
                    }
                }
            }
        }
    }
}
