//! Recovery: find the end of the valid log, tell a torn tail (after the durable point: cut
//! it) from corruption (at or before the durable point: refuse), and apply the cut.

use crate::error::{Error, Result};
use crate::format::*;
use crate::segment::{list_segments, map_read, SegmentFile, SPARE_FILE_NAME};
use crate::storage::Storage;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// What recovery cut from the tail. The daemon should log it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Truncation {
    /// Segment where the valid log ends.
    pub segment: PathBuf,
    /// Offset in that segment where the cut starts (0: the whole segment was removed).
    pub offset_bytes: u64,
    /// First sequence number that is no longer in the journal.
    pub seq_first_cut: u64,
    /// Highest sequence number seen in a CRC-valid frame past the cut (best effort; equal
    /// to `seq_first_cut - 1` when no such frame was seen).
    pub seq_last_cut: u64,
    /// Non-zero bytes zeroed or removed, including removed segment files.
    pub cut_size_bytes: u64,
    /// Later segment files removed.
    pub segments_removed: Vec<PathBuf>,
    /// Why the frame at the cut was rejected.
    pub reason: String,
}

/// The outcome of opening (or verifying) a journal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// First sequence present (0 for an empty journal).
    pub seq_first: u64,
    /// Last valid sequence after recovery (0 for an empty journal).
    pub seq_last: u64,
    /// Durable point read from the newest valid checkpoint (0 when none).
    pub seq_durable: u64,
    /// Segments whose frames were all checked (the others were checked by header and seal).
    pub segments_scanned: usize,
    /// The torn tail that was (or, for `verify`, would be) cut.
    pub truncation: Option<Truncation>,
}

/// Where the log ends, for the writer to resume.
#[derive(Clone, Debug, Default)]
pub(crate) struct Tail {
    pub journal_id: u128,
    pub segments: Vec<SegmentFile>,
    pub segment_size_bytes: u64,
    pub end_offset_bytes: u64,
    pub seq_next: u64,
    pub chain: u64,
    pub epoch: u32,
    pub sealed: bool,
    pub record_count: u64,
    pub timestamp_ns_first: u64,
    pub timestamp_ns_last: u64,
    pub checkpoint_generation: u64,
    /// Non-zero extent of the cut segment, to zero: `[offset, end)`.
    pub zero_range: Option<(PathBuf, u64, u64)>,
}

/// Whether to check every frame of every segment or only what may hold unsynced data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Verify {
    /// Scan segments that can hold records past the durable point; check the header and
    /// seal of the others. Readers still check every frame they return.
    #[default]
    Tail,
    /// Scan every frame of every segment.
    All,
}

struct Problem {
    index: usize,
    offset_bytes: u64,
    seq: u64,
    reason: String,
}

/// Highest sequence of CRC-valid frames walked from `offset` (best effort, bounded).
fn walk_max_seq(buf: &[u8], mut offset: u64, limit: u64) -> Option<u64> {
    let mut seq_max = None;
    let steps_max = (limit.saturating_sub(offset)) / FRAME_HEADER_SIZE as u64 + 1;
    for _ in 0..steps_max {
        match check_frame(buf, offset, limit) {
            FrameCheck::Valid(h) if h.kind == FRAME_KIND_DATA => {
                seq_max = Some(seq_max.map_or(h.seq, |m: u64| m.max(h.seq)));
                offset += frame_size(u64::from(h.payload_len));
            }
            _ => break,
        }
    }
    seq_max
}

/// End of the non-zero bytes in `buf[from..to]` (returns `from` if all zero).
fn nonzero_end(buf: &[u8], from: u64, to: u64) -> u64 {
    let to = to.min(buf.len() as u64);
    if from >= to {
        return from;
    }
    match buf[from as usize..to as usize]
        .iter()
        .rposition(|&b| b != 0)
    {
        Some(i) => from + i as u64 + 1,
        None => from,
    }
}

/// Reads the log without modifying anything. Errors with `Corrupt` on damage at or before
/// the durable point.
pub(crate) fn analyze(dir: &Path, verify: Verify) -> Result<(Tail, RecoveryReport)> {
    let segments = list_segments(dir)?;
    let mut report = RecoveryReport::default();
    let mut tail = Tail {
        seq_next: 1,
        ..Tail::default()
    };
    if segments.is_empty() {
        return Ok((tail, report));
    }

    // Map everything once; a file of length 0 maps to None.
    let mut maps = Vec::with_capacity(segments.len());
    for s in &segments {
        maps.push(map_read(&s.path)?.map(|(_, m)| m));
    }
    let headers: Vec<std::result::Result<SegmentHeader, String>> = maps
        .iter()
        .zip(&segments)
        .map(|(m, s)| match m {
            None => Err("empty file".to_string()),
            Some(m) => SegmentHeader::decode(m).and_then(|h| {
                if h.base_seq == s.base_seq {
                    Ok(h)
                } else {
                    Err(format!(
                        "header base sequence {} does not match the file name",
                        h.base_seq
                    ))
                }
            }),
        })
        .collect();

    // The newest checkpoint in any segment's header page. Slots carry their own CRC, so
    // they are read even when the segment header itself is damaged.
    let mut checkpoint: Option<Checkpoint> = None;
    for m in maps.iter().flatten() {
        for at in CHECKPOINT_OFFSETS {
            if m.len() >= at + CHECKPOINT_SIZE {
                if let Some(c) = Checkpoint::decode(&m[at..at + CHECKPOINT_SIZE]) {
                    if checkpoint.is_none_or(|b| c.generation > b.generation) {
                        checkpoint = Some(c);
                    }
                }
            }
        }
    }
    let seq_durable = checkpoint.map_or(0, |c| c.seq);
    report.seq_durable = seq_durable;
    tail.checkpoint_generation = checkpoint.map_or(0, |c| c.generation);

    let mut problem: Option<Problem> = None;
    let mut seq_next = segments[0].base_seq;
    let mut chain = 0u64;
    let mut epoch = 0u32;
    let mut journal_id = 0u128;
    let mut end_offset = DATA_OFFSET;
    let mut sealed = false;
    let mut record_count = 0u64;
    let mut ts_first = 0u64;
    let mut ts_last = 0u64;
    let mut segment_size = 0u64;
    let mut index_last_good = 0usize;

    'segments: for (i, seg) in segments.iter().enumerate() {
        let is_last = i + 1 == segments.len();
        let header = match &headers[i] {
            Ok(h) => *h,
            Err(why) => {
                problem = Some(Problem {
                    index: i,
                    offset_bytes: 0,
                    seq: seq_next,
                    reason: format!("segment header: {why}"),
                });
                break;
            }
        };
        let map = maps[i].as_ref().expect("valid header implies a mapping");
        if i == 0 {
            journal_id = header.journal_id;
            chain = header.chain_prev;
            epoch = header.epoch;
        }
        let why = if header.journal_id != journal_id {
            Some("segment belongs to another journal (journal id differs)".to_string())
        } else if header.base_seq != seq_next {
            Some(format!(
                "segment starts at {} but the log continues at {seq_next}",
                header.base_seq
            ))
        } else if header.chain_prev != chain {
            Some("segment header chain value does not continue the previous segment".to_string())
        } else if header.epoch < epoch {
            Some(format!(
                "segment epoch {} below previous epoch {epoch}",
                header.epoch
            ))
        } else {
            None
        };
        if let Some(reason) = why {
            problem = Some(Problem {
                index: i,
                offset_bytes: 0,
                seq: seq_next,
                reason,
            });
            break;
        }
        index_last_good = i;
        epoch = header.epoch;
        segment_size = header.segment_size_bytes;
        let file_len = map.len() as u64;
        let seal_at = seal_offset(segment_size);
        let limit = seal_at.min(file_len);
        end_offset = DATA_OFFSET;
        sealed = false;
        record_count = 0;
        ts_first = 0;
        ts_last = 0;

        let seal = if file_len >= segment_size {
            Seal::read(map, segment_size)
        } else {
            Ok(None)
        };
        let trusted_seal = match (&seal, verify) {
            (Ok(Some(s)), Verify::Tail)
                if !is_last && s.seq_next.saturating_sub(1) <= seq_durable =>
            {
                Some(*s)
            }
            _ => None,
        };
        if let Some(s) = trusted_seal {
            let ok = s.seq_next >= seq_next && s.epoch >= epoch && s.end_offset_bytes <= seal_at;
            if !ok {
                problem = Some(Problem {
                    index: i,
                    offset_bytes: seal_at,
                    seq: seq_next,
                    reason: "seal values out of range".into(),
                });
                break;
            }
            if checkpoint.is_some_and(|c| c.seq == s.seq_next - 1 && c.chain != s.chain) {
                return Err(Error::Corrupt {
                    segment: seg.path.clone(),
                    offset_bytes: seal_at,
                    reason: "seal chain value differs from the checkpoint's".into(),
                    dir: dir.to_path_buf(),
                });
            }
            seq_next = s.seq_next;
            chain = s.chain;
            epoch = s.epoch;
            end_offset = s.end_offset_bytes;
            sealed = true;
            record_count = s.record_count;
            ts_first = s.timestamp_ns_first;
            ts_last = s.timestamp_ns_last;
            continue;
        }

        report.segments_scanned += 1;
        let mut offset = DATA_OFFSET;
        let steps_max = seal_at / FRAME_HEADER_SIZE as u64 + 1;
        for _ in 0..steps_max {
            let check = if offset + FRAME_HEADER_SIZE as u64 > limit {
                if offset + FRAME_HEADER_SIZE as u64 > seal_at
                    || nonzero_end(map, offset, file_len) == offset
                {
                    // Data area full, or a cut file whose remainder is zero: the end.
                    FrameCheck::Empty
                } else {
                    FrameCheck::Invalid("file ends inside a frame".into())
                }
            } else {
                check_frame(map, offset, limit)
            };
            match check {
                FrameCheck::Empty => break,
                FrameCheck::Invalid(reason) => {
                    problem = Some(Problem {
                        index: i,
                        offset_bytes: offset,
                        seq: seq_next,
                        reason,
                    });
                    break 'segments;
                }
                FrameCheck::Valid(h) => {
                    let why = if h.kind != FRAME_KIND_DATA {
                        Some("seal frame inside the data area".to_string())
                    } else if h.seq != seq_next {
                        Some(format!("sequence {} where {seq_next} was expected", h.seq))
                    } else if h.chain_prev != chain {
                        Some("chain value does not link to the previous record".to_string())
                    } else if h.epoch < epoch {
                        Some(format!("epoch {} below previous epoch {epoch}", h.epoch))
                    } else {
                        None
                    };
                    if let Some(reason) = why {
                        problem = Some(Problem {
                            index: i,
                            offset_bytes: offset,
                            seq: seq_next,
                            reason,
                        });
                        break 'segments;
                    }
                    chain = chain_next(chain, h.crc, h.seq);
                    if let Some(c) = checkpoint {
                        if c.seq == h.seq && c.chain != chain {
                            return Err(Error::Corrupt {
                                segment: seg.path.clone(),
                                offset_bytes: offset,
                                reason: format!("chain value at durable sequence {} differs from the checkpoint's", h.seq),
                                dir: dir.to_path_buf(),
                            });
                        }
                    }
                    if record_count == 0 {
                        ts_first = h.timestamp_ns;
                    }
                    ts_last = h.timestamp_ns;
                    record_count += 1;
                    epoch = h.epoch;
                    seq_next += 1;
                    offset += frame_size(u64::from(h.payload_len));
                    end_offset = offset;
                }
            }
        }
        // After the last record: nothing but zeros up to the seal.
        let garbage_end = nonzero_end(map, end_offset, limit);
        if garbage_end > end_offset {
            problem = Some(Problem {
                index: i,
                offset_bytes: end_offset,
                seq: seq_next,
                reason: "non-zero bytes after the last valid record".into(),
            });
            break;
        }
        if file_len < segment_size {
            if !is_last {
                problem = Some(Problem {
                    index: i,
                    offset_bytes: file_len,
                    seq: seq_next,
                    reason: format!(
                        "file is {file_len} bytes, shorter than the segment size {segment_size}"
                    ),
                });
                break;
            }
            continue;
        }
        match seal {
            Ok(Some(s)) => {
                if s.seq_next != seq_next
                    || s.chain != chain
                    || s.end_offset_bytes != end_offset
                    || s.epoch != epoch
                {
                    problem = Some(Problem {
                        index: i,
                        offset_bytes: seal_at,
                        seq: seq_next,
                        reason: "seal does not match the records of the segment".into(),
                    });
                    break;
                }
                sealed = true;
            }
            Ok(None) if is_last => {}
            Ok(None) => {
                problem = Some(Problem {
                    index: i,
                    offset_bytes: seal_at,
                    seq: seq_next,
                    reason: "segment not sealed but a later segment exists".into(),
                });
                break;
            }
            Err(reason) => {
                problem = Some(Problem {
                    index: i,
                    offset_bytes: seal_at,
                    seq: seq_next,
                    reason,
                });
                break;
            }
        }
    }

    if let Some(p) = problem {
        let seg = &segments[p.index];
        let below_durable = p.seq <= seq_durable;
        // The oldest segment left after pruning: cutting it would leave no journal at all,
        // and the records before it are gone for good.
        let oldest_left = p.index == 0 && p.offset_bytes == 0 && seg.base_seq != 1;
        if below_durable || oldest_left {
            let why = if below_durable {
                format!(
                    "sequence {} is at or below the durable point {seq_durable}",
                    p.seq
                )
            } else {
                format!(
                    "the oldest segment left (earlier ones were pruned) is damaged at its \
                     start: sequences from {} on cannot be recovered",
                    p.seq
                )
            };
            return Err(Error::Corrupt {
                segment: seg.path.clone(),
                offset_bytes: p.offset_bytes,
                reason: format!("{} ({why})", p.reason),
                dir: dir.to_path_buf(),
            });
        }
        let mut cut_size_bytes = 0u64;
        let mut seq_last_cut = p.seq - 1;
        let mut segments_removed = Vec::new();
        let keep = if p.offset_bytes == 0 {
            p.index
        } else {
            p.index + 1
        };
        if p.offset_bytes > 0 {
            let map = maps[p.index].as_ref().expect("mapped");
            let end = nonzero_end(map, p.offset_bytes, map.len() as u64);
            cut_size_bytes += end - p.offset_bytes;
            let limit = seal_offset(segment_size).min(map.len() as u64);
            if let Some(s) = walk_max_seq(map, p.offset_bytes, limit) {
                seq_last_cut = seq_last_cut.max(s);
            }
            tail.zero_range = Some((seg.path.clone(), p.offset_bytes, end));
            // The segment is active again; `end_offset` already is the end of its valid
            // records.
            sealed = false;
        }
        for (j, s) in segments.iter().enumerate().skip(keep) {
            if let Some(m) = &maps[j] {
                cut_size_bytes += nonzero_end(m, 0, m.len() as u64);
                if let Some(x) = walk_max_seq(
                    m,
                    DATA_OFFSET,
                    seal_offset(segment_size).min(m.len() as u64),
                ) {
                    seq_last_cut = seq_last_cut.max(x);
                }
            }
            segments_removed.push(s.path.clone());
        }
        report.truncation = Some(Truncation {
            segment: seg.path.clone(),
            offset_bytes: p.offset_bytes,
            seq_first_cut: p.seq,
            seq_last_cut,
            cut_size_bytes,
            segments_removed,
            reason: p.reason,
        });
        if keep == 0 {
            // Nothing valid is left (a fresh journal whose first header was torn).
            report.seq_first = 0;
            report.seq_last = 0;
            tail.segments.clear();
            tail.seq_next = 1;
            return Ok((tail, report));
        }
        debug_assert!(index_last_good < keep);
    }

    if seq_next.saturating_sub(1) < seq_durable {
        let last = &segments[index_last_good];
        return Err(Error::Corrupt {
            segment: last.path.clone(),
            offset_bytes: end_offset,
            reason: format!(
                "the checkpoint records sequence {seq_durable} as durable but the journal ends at {}",
                seq_next - 1
            ),
            dir: dir.to_path_buf(),
        });
    }

    let keep = report.truncation.as_ref().map_or(segments.len(), |t| {
        segments.len() - t.segments_removed.len()
    });
    tail.journal_id = journal_id;
    tail.segments = segments[..keep].to_vec();
    tail.segment_size_bytes = segment_size;
    tail.end_offset_bytes = end_offset;
    tail.seq_next = seq_next;
    tail.chain = chain;
    tail.epoch = epoch;
    tail.sealed = sealed;
    tail.record_count = record_count;
    tail.timestamp_ns_first = ts_first;
    tail.timestamp_ns_last = ts_last;
    report.seq_first = segments[0].base_seq;
    report.seq_last = seq_next - 1;
    if report.seq_last < report.seq_first {
        report.seq_first = 0;
        report.seq_last = 0;
    }
    Ok((tail, report))
}

/// Checks a journal directory without modifying it. `Ok` carries what opening it would cut.
pub fn verify(dir: &Path, verify: Verify) -> Result<RecoveryReport> {
    analyze(dir, verify).map(|(_, r)| r)
}

/// Applies the cut found by `analyze`: zero the torn bytes, remove later segments, restore
/// the cut segment's full preallocated size, sync.
pub(crate) fn apply(
    dir: &Path,
    tail: &Tail,
    report: &RecoveryReport,
    storage: &dyn Storage,
) -> Result<()> {
    let spare = dir.join(SPARE_FILE_NAME);
    if spare.exists() {
        std::fs::remove_file(&spare)
            .map_err(|e| Error::io(format!("remove {}", spare.display()), e))?;
    }
    let Some(t) = &report.truncation else {
        return Ok(());
    };
    for path in &t.segments_removed {
        std::fs::remove_file(path)
            .map_err(|e| Error::io(format!("remove {}", path.display()), e))?;
    }
    // A segment cut at offset 0 is itself in `segments_removed`.
    if let Some((path, from, to)) = &tail.zero_range {
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| Error::io(format!("open {}", path.display()), e))?;
        let zeros = [0u8; 4096];
        let mut at = *from;
        let chunks_max = (to - from) / zeros.len() as u64 + 1;
        for _ in 0..chunks_max {
            if at >= *to {
                break;
            }
            let n = (*to - at).min(zeros.len() as u64) as usize;
            file.write_all_at(&zeros[..n], at)
                .map_err(|e| Error::io(format!("zero {}", path.display()), e))?;
            at += n as u64;
        }
        assert!(at >= *to);
        // A cut file gets its preallocated size back, so mmap never reads past its end.
        storage
            .allocate(&file, tail.segment_size_bytes)
            .map_err(|e| Error::io(format!("fallocate {}", path.display()), e))?;
        storage
            .sync_data(&file)
            .map_err(|e| Error::io(format!("fdatasync {}", path.display()), e))?;
    }
    storage
        .sync_dir(dir)
        .map_err(|e| Error::io(format!("fsync directory {}", dir.display()), e))?;
    Ok(())
}
