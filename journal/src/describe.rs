//! A read-only summary of a journal directory, for operator tools (`ringex journal
//! describe`). Never modifies anything; damaged parts are reported, not repaired.

use crate::error::Result;
use crate::format::*;
use crate::segment::{list_segments, map_read, vanished};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentSummary {
    pub path: PathBuf,
    pub base_seq: u64,
    pub size_bytes: u64,
    /// From the header; None when the header is damaged (see `problem`).
    pub journal_id: Option<u128>,
    pub epoch: Option<u32>,
    pub sealed: bool,
    /// Records found (from the seal when sealed, else by a checked scan).
    pub record_count: u64,
    /// Last sequence in the segment (base_seq - 1 when empty).
    pub seq_last: u64,
    pub timestamp_ns_first: Option<u64>,
    pub timestamp_ns_last: Option<u64>,
    /// Offset just past the last valid frame.
    pub end_offset_bytes: u64,
    /// The first thing found wrong, if any.
    pub problem: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalDescription {
    pub segments: Vec<SegmentSummary>,
    /// Newest valid checkpoint: (generation, durable sequence, segment base).
    pub checkpoint: Option<(u64, u64, u64)>,
}

/// Summarises every segment of `dir` (header, seal, record counts, time span).
pub fn describe(dir: &Path) -> Result<JournalDescription> {
    let mut out = JournalDescription {
        segments: Vec::new(),
        checkpoint: None,
    };
    for seg in list_segments(dir)? {
        let mut s = SegmentSummary {
            path: seg.path.clone(),
            base_seq: seg.base_seq,
            size_bytes: 0,
            journal_id: None,
            epoch: None,
            sealed: false,
            record_count: 0,
            seq_last: seg.base_seq - 1,
            timestamp_ns_first: None,
            timestamp_ns_last: None,
            end_offset_bytes: DATA_OFFSET,
            problem: None,
        };
        let map = match map_read(&seg.path) {
            // Pruned by a running writer since the listing: no longer part of the journal,
            // and neither is anything before it (pruning removes the oldest first).
            Err(e) if vanished(&e) => {
                out.segments.clear();
                continue;
            }
            map => map?,
        };
        let Some((_, map)) = map else {
            s.problem = Some("empty file".into());
            out.segments.push(s);
            continue;
        };
        s.size_bytes = map.len() as u64;
        for at in CHECKPOINT_OFFSETS {
            if map.len() >= at + CHECKPOINT_SIZE {
                if let Some(c) = Checkpoint::decode(&map[at..at + CHECKPOINT_SIZE]) {
                    if out.checkpoint.is_none_or(|(g, _, _)| c.generation > g) {
                        out.checkpoint = Some((c.generation, c.seq, c.segment_base_seq));
                    }
                }
            }
        }
        let header = match SegmentHeader::decode(&map) {
            Ok(h) => h,
            Err(why) => {
                s.problem = Some(format!("header: {why}"));
                out.segments.push(s);
                continue;
            }
        };
        s.journal_id = Some(header.journal_id);
        s.epoch = Some(header.epoch);
        let size = header.segment_size_bytes;
        let seal_at = seal_offset(size).min(map.len() as u64);
        let mut offset = DATA_OFFSET;
        let mut seq_next = header.base_seq;
        let mut chain = header.chain_prev;
        let steps_max = seal_at / FRAME_HEADER_SIZE as u64 + 1;
        for _ in 0..steps_max {
            if offset + FRAME_HEADER_SIZE as u64 > seal_at {
                break;
            }
            match check_frame(&map, offset, seal_at) {
                FrameCheck::Empty => break,
                FrameCheck::Invalid(why) => {
                    s.problem = Some(format!("frame at offset {offset}: {why}"));
                    break;
                }
                FrameCheck::Valid(h) => {
                    if h.kind != FRAME_KIND_DATA || h.seq != seq_next || h.chain_prev != chain {
                        s.problem = Some(format!(
                            "frame at offset {offset}: out of sequence or chain"
                        ));
                        break;
                    }
                    chain = chain_next(chain, h.crc, h.seq);
                    s.timestamp_ns_first.get_or_insert(h.timestamp_ns);
                    s.timestamp_ns_last = Some(h.timestamp_ns);
                    s.record_count += 1;
                    seq_next += 1;
                    offset += frame_size(u64::from(h.payload_len));
                }
            }
        }
        s.seq_last = seq_next - 1;
        s.end_offset_bytes = offset;
        if map.len() as u64 >= size {
            match Seal::read(&map, size) {
                Ok(Some(seal)) => {
                    s.sealed = true;
                    if s.problem.is_none() && (seal.seq_next != seq_next || seal.chain != chain) {
                        s.problem = Some("seal does not match the records".into());
                    }
                }
                Ok(None) => {}
                Err(why) => {
                    s.problem.get_or_insert(why);
                }
            }
        } else {
            s.problem
                .get_or_insert(format!("file is shorter than the segment size {size}"));
        }
        out.segments.push(s);
    }
    Ok(out)
}
