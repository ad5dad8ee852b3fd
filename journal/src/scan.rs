//! A damage-tolerant walk over a journal's frames, for operator tools (`ringex journal
//! dump`): where a reader stops at the first damaged frame, this reports the damage and
//! goes on from the next CRC-valid frame, so an operator sees the records around it.
//! Read-only, never takes the writer's lock.

use crate::error::Result;
use crate::format::*;
use crate::recovery::{next_valid_frame, nonzero_end};
use crate::segment::{list_segments, map_read, vanished};
use std::path::{Path, PathBuf};

/// One thing found by [`scan`].
#[derive(Debug)]
pub enum ScanItem<'a> {
    /// A frame whose length, CRC and padding check out. `linked` is false when its
    /// sequence or chain value does not follow the previous record's.
    Record {
        segment: &'a Path,
        offset_bytes: u64,
        header: FrameHeader,
        payload: &'a [u8],
        linked: bool,
    },
    /// Bytes that are neither a valid frame nor the zeros after the last one: from
    /// `offset_bytes` to the next valid frame (or the end of the data area).
    Damaged {
        segment: &'a Path,
        offset_bytes: u64,
        len_bytes: u64,
        /// The sequence the damaged bytes should have held next.
        seq_expected: u64,
        reason: String,
    },
}

/// Walks the frames of every segment that may hold sequences from `seq_from` on, in
/// order, calling `each` for records with sequences from `seq_from` and for every damaged
/// stretch after the first such record's segment starts; stops when `each` returns false.
/// Errors only on I/O (a directory or file that cannot be read).
pub fn scan(dir: &Path, seq_from: u64, mut each: impl FnMut(ScanItem<'_>) -> bool) -> Result<()> {
    let segments = list_segments(dir)?;
    // The segment holding `seq_from`: the last one starting at or before it.
    let first = segments
        .iter()
        .rposition(|s| s.base_seq <= seq_from)
        .unwrap_or(0);
    let mut seq_expected = segments.get(first).map_or(1, |s| s.base_seq);
    let mut chain: Option<u64>;
    for seg in &segments[first..] {
        let path: PathBuf = seg.path.clone();
        let map = match map_read(&path) {
            // Pruned by a running writer since the listing: no longer part of the journal
            // (the next record read is then marked as not linked to the last one shown).
            Err(e) if vanished(&e) => continue,
            map => map?,
        };
        let Some((_, map)) = map else {
            let go = each(ScanItem::Damaged {
                segment: &path,
                offset_bytes: 0,
                len_bytes: 0,
                seq_expected,
                reason: "empty segment file".into(),
            });
            if !go {
                return Ok(());
            }
            continue;
        };
        let len = map.len() as u64;
        let header = SegmentHeader::decode(&map);
        let limit = match &header {
            Ok(h) => {
                seq_expected = h.base_seq;
                chain = Some(h.chain_prev);
                seal_offset(h.segment_size_bytes).min(len)
            }
            Err(why) => {
                let go = each(ScanItem::Damaged {
                    segment: &path,
                    offset_bytes: 0,
                    len_bytes: DATA_OFFSET.min(len),
                    seq_expected,
                    reason: format!("segment header: {why}"),
                });
                if !go {
                    return Ok(());
                }
                chain = None;
                len.saturating_sub(SEAL_FRAME_SIZE)
            }
        };
        let mut at = DATA_OFFSET;
        // Each step moves past a frame or a damaged stretch: at most one per 8 bytes.
        let steps_max = limit.saturating_sub(at) / FRAME_ALIGN + 1;
        for _ in 0..steps_max {
            if at >= limit {
                break;
            }
            let check = if at + FRAME_HEADER_SIZE as u64 > limit {
                FrameCheck::Empty
            } else {
                check_frame(&map, at, limit)
            };
            let reason = match check {
                FrameCheck::Valid(h) if h.kind == FRAME_KIND_DATA => {
                    let linked = h.seq == seq_expected && chain.is_none_or(|c| c == h.chain_prev);
                    let payload_at = (at as usize) + FRAME_HEADER_SIZE;
                    if h.seq >= seq_from {
                        let go = each(ScanItem::Record {
                            segment: &path,
                            offset_bytes: at,
                            header: h,
                            payload: &map[payload_at..payload_at + h.payload_len as usize],
                            linked,
                        });
                        if !go {
                            return Ok(());
                        }
                    }
                    seq_expected = h.seq + 1;
                    chain = Some(chain_next(h.chain_prev, h.crc, h.seq));
                    at += frame_size(u64::from(h.payload_len));
                    continue;
                }
                FrameCheck::Valid(_) => "seal frame inside the data area".to_string(),
                FrameCheck::Invalid(why) => why,
                FrameCheck::Empty => {
                    if nonzero_end(&map, at, limit) == at {
                        break;
                    }
                    "non-zero bytes after the last valid record".to_string()
                }
            };
            let next = next_valid_frame(&map, at + FRAME_ALIGN, limit, seq_expected);
            let end = next.map_or(nonzero_end(&map, at, limit), |(o, _)| o);
            let go = each(ScanItem::Damaged {
                segment: &path,
                offset_bytes: at,
                len_bytes: end - at,
                seq_expected,
                reason,
            });
            if !go {
                return Ok(());
            }
            chain = None;
            match next {
                Some((o, _)) => at = o,
                None => break,
            }
        }
    }
    Ok(())
}
