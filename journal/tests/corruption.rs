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

/// A journal of several segments: records up to `RECORDS_DURABLE` synced and
/// checkpointed, the rest written after the last sync. The syncer may run one more round
/// after `sync()` returns (persisting the checkpoint), which can make later records
/// durable too: such a journal is built again, so the durable point is exactly
/// `RECORDS_DURABLE`.
fn build(dir: &Path) -> Golden {
    for _ in 0..50 {
        for e in std::fs::read_dir(dir).unwrap() {
            std::fs::remove_file(e.unwrap().path()).unwrap();
        }
        let g = build_once(dir);
        if verify(dir, Verify::All).unwrap().seq_durable_proven == RECORDS_DURABLE {
            return g;
        }
    }
    panic!("no journal with exactly {RECORDS_DURABLE} durable records in 50 attempts");
}

fn build_once(dir: &Path) -> Golden {
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

fn open_group(dir: &Path) -> ringex_journal::Result<Journal> {
    let mut c = config(dir, Durability::Group);
    c.segment_size_bytes = SEGMENT_BYTES;
    c.record_size_bytes_max = 1024;
    c.verify = Verify::All;
    Journal::open(c)
}

/// Every file of the directory (segments, spare, lock), for "nothing changed".
fn snapshot_files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            out.insert(p.clone(), std::fs::read(&p).unwrap());
        }
    }
    out
}

/// Opening refuses as documented and leaves every file as it was.
fn assert_refused_unchanged(dir: &Path, what: &str) -> Error {
    let before = snapshot_files(dir);
    let e = match open_group(dir) {
        Ok(j) => panic!("{what}: opened at {:?}", j.recovery_report()),
        Err(e) => e,
    };
    assert_documented_refusal(&e, dir);
    assert!(
        snapshot_files(dir) == before,
        "{what}: a refused open changed files"
    );
    e
}

/// The last sequence held by each segment file (its base - 1 when it holds none).
fn segment_last(g: &Golden, path: &Path) -> u64 {
    g.extents
        .iter()
        .filter(|e| e.0 == path)
        .map(|e| e.3)
        .max()
        .unwrap_or_else(|| {
            let name = path.file_stem().unwrap().to_str().unwrap();
            name.parse::<u64>().unwrap() - 1
        })
}

/// After a cut, the journal takes new records and reads everything back.
fn append_reopen_read(dir: &Path, g: &Golden, valid: u64) {
    let mut j = open_group(dir).unwrap();
    assert_eq!(j.recovery_report().seq_last, valid);
    let seq = j.seq_next();
    assert_eq!(seq, valid + 1);
    j.append(7, 1, seq * 1000, &payload(seq, len_of(seq)))
        .unwrap();
    j.close().unwrap();
    let j = open_group(dir).unwrap();
    assert_eq!(j.recovery_report().seq_last, valid + 1);
    assert!(j.recovery_report().truncation.is_none());
    drop(j);
    let records = read_all(dir);
    assert_eq!(records.len() as u64, valid + 1);
    assert_eq!(&records[..valid as usize], &g.records[..valid as usize]);
    assert_eq!(records[valid as usize].payload, payload(seq, len_of(seq)));
}

/// A crash leaves the unwritten part of a preallocated segment zero: from every offset of
/// the last records on, the rest of the file reads back as zeros. Past the durable point
/// the torn record is cut (and reported exactly); before it, opening refuses.
#[test]
fn torn_tail_at_every_offset_of_the_last_records() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let g = build(dir);
    let last_path = g.files.keys().last().unwrap().clone();
    let first_in_last = g.extents.iter().find(|e| e.0 == last_path).unwrap().1;
    let end_in_last = g.extents.last().unwrap().2;
    for cut in first_in_last..=end_in_last {
        restore(&g, dir);
        let mut damaged = g.files[&last_path].clone();
        damaged[cut as usize..].fill(0);
        std::fs::write(&last_path, &damaged).unwrap();
        // Records whose bytes the zeros left intact (padding is zero already).
        let valid = g
            .extents
            .iter()
            .take_while(|e| {
                e.0 != last_path
                    || damaged[e.1 as usize..e.2 as usize]
                        == g.files[&last_path][e.1 as usize..e.2 as usize]
            })
            .count() as u64;
        if valid < RECORDS_DURABLE {
            assert_refused_unchanged(dir, &format!("zeros from {cut}"));
            assert_eq!(read_prefix(dir, &g), valid);
            continue;
        }
        let j = open_group(dir).unwrap_or_else(|e| panic!("cut {cut}: {e}"));
        let rep = j.recovery_report().clone();
        drop(j);
        assert_eq!(rep.seq_last, valid, "cut at {cut}");
        let torn = g.extents.get(valid as usize).filter(|e| e.1 < cut);
        match (torn, &rep.truncation) {
            (Some(e), Some(t)) => {
                assert_eq!(t.seq_first_cut, e.3, "cut at {cut}");
                assert_eq!(t.seq_last_cut, e.3 - 1, "nothing valid past a torn end");
                assert_eq!(t.records_cut, 0);
                assert_eq!(t.offset_bytes, e.1);
                assert_eq!(t.segment, last_path);
                let nonzero = damaged[e.1 as usize..cut as usize]
                    .iter()
                    .rposition(|&b| b != 0)
                    .map_or(0, |i| i as u64 + 1);
                assert_eq!(t.cut_size_bytes, nonzero, "cut at {cut}");
                // The torn bytes are zero on disk now.
                let after = std::fs::read(&last_path).unwrap();
                assert!(
                    after[e.1 as usize..].iter().all(|&b| b == 0),
                    "cut at {cut}"
                );
            }
            (None, None) => {}
            (torn, t) => panic!("cut at {cut}: torn {torn:?}, reported {t:?}"),
        }
        assert_eq!(read_prefix(dir, &g), valid, "cut at {cut}");
        if cut % 13 == 0 || torn.is_some_and(|e| e.1 + 1 == cut) {
            append_reopen_read(dir, &g, valid);
        }
    }
}

/// Segments are preallocated at full size before they are named, so a shorter (or
/// longer) segment is damage wherever it is, never a torn tail: refused, nothing changed.
#[test]
fn a_segment_of_the_wrong_size_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let g = build(dir);
    for path in g.files.keys() {
        for len in [0, 100, 4096, SEGMENT_BYTES - 1, SEGMENT_BYTES + 4096] {
            restore(&g, dir);
            let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
            f.set_len(len).unwrap();
            drop(f);
            let e = assert_refused_unchanged(dir, &format!("{} at {len} bytes", path.display()));
            assert!(e.to_string().contains(&path.display().to_string()), "{e}");
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
            // Outside records: the header page's unchecked bytes and the checkpoint slots
            // (a damaged slot falls back to the other) change nothing; the header itself
            // is refused; bytes after the segment's last record (zeros, or its seal) are a
            // torn tail unless the segment's records are durable.
            let seg_last = segment_last(&g, path);
            let total = RECORDS_DURABLE + RECORDS_TAIL;
            match (&result, in_record) {
                (Ok(rep), Some(e)) => {
                    assert!(
                        e.3 > RECORDS_DURABLE,
                        "damage in durable record {} at {at} accepted",
                        e.3
                    );
                    assert_eq!(rep.seq_last, e.3 - 1);
                    let t = rep.truncation.as_ref().expect("a torn record is reported");
                    assert_eq!((t.seq_first_cut, t.segment.as_path()), (e.3, e.0.as_path()));
                    assert_eq!(t.offset_bytes, e.1);
                    // Every later record is intact and counted, none proven durable.
                    assert_eq!(t.records_cut, total - e.3);
                    assert_eq!(t.seq_last_cut, total.max(e.3 - 1) - u64::from(e.3 == total));
                }
                (Ok(rep), None) if at < 4096 => {
                    assert!(at >= 128, "{} header byte {at} accepted", path.display());
                    assert_eq!((rep.seq_last, &rep.truncation), (total, &None), "at {at}");
                }
                (Ok(rep), None) => {
                    assert!(
                        seg_last >= RECORDS_DURABLE,
                        "{} at {at}: {rep:?}",
                        path.display()
                    );
                    assert_eq!(rep.seq_last, seg_last, "{} at {at}", path.display());
                    let t = rep.truncation.as_ref().unwrap_or_else(|| {
                        panic!("{} at {at}: not reported: {rep:?}", path.display())
                    });
                    assert_eq!(t.seq_first_cut, seg_last + 1);
                    assert_eq!((t.records_cut, t.seq_last_cut), (total - seg_last, total));
                    assert_eq!(
                        t.segments_removed.len(),
                        g.files
                            .keys()
                            .filter(|p| segment_last(&g, p) > seg_last)
                            .count()
                    );
                    assert!(t.cut_size_bytes >= 1);
                    if t.records_cut == 0 {
                        // Garbage after the very last record: one byte, cut and zeroed;
                        // the journal takes the next record after it.
                        assert_eq!(t.cut_size_bytes, at as u64 + 1 - t.offset_bytes);
                        append_reopen_read(dir, &g, total);
                        restore(&g, dir);
                        std::fs::write(path, &damaged).unwrap();
                    }
                }
                (Err(err), None) if at >= 4096 => {
                    assert!(
                        seg_last < RECORDS_DURABLE,
                        "{} at {at}: refused a torn tail: {err}",
                        path.display()
                    );
                    assert_documented_refusal(err, dir);
                }
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
            // No record changed: only the seal was lost, and the segment's records end
            // the log unless the segment is durable.
            let seq_lost_first = first_changed.unwrap_or(segment_last(&g, path) + 1);
            if seq_lost_first <= RECORDS_DURABLE {
                assert_refused_unchanged(dir, &format!("sector {page_start} zeroed"));
                continue;
            }
            let j = open_group(dir).unwrap_or_else(|e| panic!("page {page_start}: {e}"));
            let rep = j.recovery_report().clone();
            drop(j);
            assert_eq!(rep.seq_last, seq_lost_first - 1, "page {page_start}");
            let Some(t) = rep.truncation else {
                // The sector held the journal's last bytes: what is left ends cleanly.
                let from = g.extents[seq_lost_first as usize - 1].1 as usize;
                assert!(
                    damaged[from..].iter().all(|&b| b == 0),
                    "sector {page_start}"
                );
                assert_eq!(path, g.files.keys().last().unwrap());
                continue;
            };
            assert_eq!(t.seq_first_cut, seq_lost_first);
            // Records past the lost sector are found and reported as cut.
            assert!(t.seq_last_cut >= seq_lost_first - 1);
            assert_eq!(read_prefix(dir, &g), seq_lost_first - 1);
        }
    }
}
