//! Readers: iterate from any sequence, follow the tail, seek by timestamp. Every frame
//! returned was checked (length, CRC, sequence, chain); damage is an error, never a record.

use crate::error::{Error, Result};
use crate::format::*;
use crate::segment::{list_segments, map_read, SegmentFile};
use crate::writer::Watermarks;
use memmap2::Mmap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A record borrowed from the mapped segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub seq: u64,
    pub epoch: u32,
    pub timestamp_ns: u64,
    pub record_type: u16,
    pub schema_version: u16,
    /// Chain value after the previous record (stored in this frame).
    pub chain_prev: u64,
    pub payload: &'a [u8],
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedRecord {
    pub seq: u64,
    pub epoch: u32,
    pub timestamp_ns: u64,
    pub record_type: u16,
    pub schema_version: u16,
    pub chain_prev: u64,
    pub payload: Vec<u8>,
}

impl Record<'_> {
    pub fn to_owned_record(&self) -> OwnedRecord {
        OwnedRecord {
            seq: self.seq,
            epoch: self.epoch,
            timestamp_ns: self.timestamp_ns,
            record_type: self.record_type,
            schema_version: self.schema_version,
            chain_prev: self.chain_prev,
            payload: self.payload.to_vec(),
        }
    }
}

struct Mapped {
    base_seq: u64,
    path: PathBuf,
    map: Mmap,
    size_bytes: u64,
    chain_prev: u64,
    epoch: u32,
}

/// A position in a segment the reader can resume from without scanning.
#[derive(Clone, Copy, Debug)]
struct IndexEntry {
    seq: u64,
    offset: u64,
    chain: u64,
    epoch: u32,
}

/// One sparse-index entry every this many records.
const SPARSE_INDEX_STRIDE: u64 = 64;

/// Reads a journal directory (no lock needed; safe alongside the writer).
pub struct Reader {
    dir: PathBuf,
    segments: Vec<SegmentFile>,
    current: Option<Mapped>,
    offset: u64,
    seq_next: u64,
    chain: u64,
    epoch: u32,
    /// When set, never read past `written` (in-process readers beside the writer).
    watermarks: Option<Arc<Watermarks>>,
    /// Read only up to `durable` instead of `written`.
    durable_only: bool,
    /// Sparse index of sealed segments (immutable, so entries never go stale), built on
    /// the first seek into each.
    index: std::collections::BTreeMap<u64, Vec<IndexEntry>>,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("dir", &self.dir)
            .field("seq_next", &self.seq_next)
            .finish_non_exhaustive()
    }
}

enum Step {
    Record(usize, FrameHeader),
    End,
    NextSegment,
}

impl Reader {
    /// The journal directory this reader reads.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Opens a reader positioned at the first record of the journal.
    pub fn open(dir: impl AsRef<Path>) -> Result<Reader> {
        let dir = dir.as_ref().to_path_buf();
        let segments = list_segments(&dir)?;
        let mut r = Reader {
            dir,
            segments,
            current: None,
            offset: DATA_OFFSET,
            seq_next: 1,
            chain: 0,
            epoch: 0,
            watermarks: None,
            durable_only: false,
            index: std::collections::BTreeMap::new(),
        };
        if let Some(first) = r.segments.first().cloned() {
            r.enter_segment(&first)?;
        }
        Ok(r)
    }

    /// A reader that never reads past the writer's `written` (or `durable`) watermark.
    pub fn with_watermarks(mut self, watermarks: Arc<Watermarks>, durable_only: bool) -> Reader {
        self.watermarks = Some(watermarks);
        self.durable_only = durable_only;
        self
    }

    /// Sequence the next `next()` returns.
    pub fn seq_next(&self) -> u64 {
        self.seq_next
    }

    fn corrupt(&self, offset: u64, reason: impl Into<String>) -> Error {
        Error::Corrupt {
            segment: self
                .current
                .as_ref()
                .map_or_else(|| self.dir.clone(), |m| m.path.clone()),
            offset_bytes: offset,
            seq: self.seq_next,
            reason: reason.into(),
            dir: self.dir.clone(),
        }
    }

    fn enter_segment(&mut self, seg: &SegmentFile) -> Result<()> {
        let Some((_, map)) = map_read(&seg.path)? else {
            return Err(Error::Corrupt {
                segment: seg.path.clone(),
                offset_bytes: 0,
                seq: seg.base_seq,
                reason: "empty segment file".into(),
                dir: self.dir.clone(),
            });
        };
        let header = SegmentHeader::decode(&map).map_err(|reason| Error::Corrupt {
            segment: seg.path.clone(),
            offset_bytes: 0,
            seq: seg.base_seq,
            reason,
            dir: self.dir.clone(),
        })?;
        if header.base_seq != seg.base_seq || (map.len() as u64) < header.segment_size_bytes {
            return Err(Error::Corrupt {
                segment: seg.path.clone(),
                offset_bytes: 0,
                seq: seg.base_seq,
                reason: "header does not match the file name or size".into(),
                dir: self.dir.clone(),
            });
        }
        if self.current.is_some()
            && (header.chain_prev != self.chain || header.base_seq != self.seq_next)
        {
            return Err(Error::Corrupt {
                segment: seg.path.clone(),
                offset_bytes: 0,
                seq: self.seq_next,
                reason: if header.base_seq > self.seq_next {
                    format!(
                        "segment is missing: the log continues at {} but the next segment \
                         starts at {}",
                        self.seq_next, header.base_seq
                    )
                } else {
                    "segment does not continue the previous one (sequence or chain)".into()
                },
                dir: self.dir.clone(),
            });
        }
        self.chain = header.chain_prev;
        self.seq_next = header.base_seq;
        self.epoch = header.epoch;
        self.offset = DATA_OFFSET;
        self.current = Some(Mapped {
            base_seq: header.base_seq,
            path: seg.path.clone(),
            map,
            size_bytes: header.segment_size_bytes,
            chain_prev: header.chain_prev,
            epoch: header.epoch,
        });
        Ok(())
    }

    fn refresh_segments(&mut self) -> Result<()> {
        self.segments = list_segments(&self.dir)?;
        Ok(())
    }

    /// Positions the reader so the next record returned is `seq`: binary search over the
    /// segments by base sequence, then a checked scan within the segment.
    pub fn seek(&mut self, seq: u64) -> Result<()> {
        self.refresh_segments()?;
        let first = self.segments.first().map_or(1, |s| s.base_seq);
        let idx = self.segments.partition_point(|s| s.base_seq <= seq);
        if idx == 0 {
            return Err(Error::SequenceUnavailable {
                seq,
                seq_first: first,
                seq_last: 0,
            });
        }
        let seg = self.segments[idx - 1].clone();
        if self
            .current
            .as_ref()
            .is_some_and(|c| c.base_seq == seg.base_seq)
        {
            self.rewind();
        } else {
            self.current = None;
            self.enter_segment(&seg)?;
        }
        self.seek_with_index(seq)?;
        let steps_max = seq - self.seq_next + 1;
        for _ in 0..steps_max {
            if self.seq_next == seq {
                return Ok(());
            }
            match self.step(false)? {
                Step::Record(..) => {}
                Step::End | Step::NextSegment => break,
            }
        }
        if self.seq_next == seq {
            return Ok(());
        }
        Err(Error::SequenceUnavailable {
            seq,
            seq_first: first,
            seq_last: self.seq_next - 1,
        })
    }

    /// Back to the first record of the current segment.
    fn rewind(&mut self) {
        let cur = self.current.as_ref().expect("mapped");
        self.offset = DATA_OFFSET;
        self.seq_next = cur.base_seq;
        self.chain = cur.chain_prev;
        self.epoch = cur.epoch;
    }

    /// In a sealed segment, jumps to the closest indexed position at or before `seq`,
    /// building the segment's index (one checked scan) the first time.
    fn seek_with_index(&mut self, seq: u64) -> Result<()> {
        let cur = self.current.as_ref().expect("mapped");
        let base = cur.base_seq;
        if !matches!(Seal::read(&cur.map, cur.size_bytes), Ok(Some(_))) {
            return Ok(()); // active segment: it may still change; scan it
        }
        if !self.index.contains_key(&base) {
            let mut entries = Vec::new();
            let records_max = (cur.size_bytes / FRAME_HEADER_SIZE as u64) + 1;
            for _ in 0..records_max {
                if (self.seq_next - base).is_multiple_of(SPARSE_INDEX_STRIDE) {
                    entries.push(IndexEntry {
                        seq: self.seq_next,
                        offset: self.offset,
                        chain: self.chain,
                        epoch: self.epoch,
                    });
                }
                // Damage ends the index where it is: the positions before it are sound,
                // so a record before the damage is still found, and a read that goes on
                // to the damage reports it there.
                match self.step(false) {
                    Ok(Step::Record(..)) => {}
                    Ok(Step::End | Step::NextSegment) | Err(_) => break,
                }
            }
            self.index.insert(base, entries);
            self.rewind();
        }
        let entries = &self.index[&base];
        let i = entries.partition_point(|e| e.seq <= seq);
        if i > 0 {
            let e = entries[i - 1];
            self.offset = e.offset;
            self.seq_next = e.seq;
            self.chain = e.chain;
            self.epoch = e.epoch;
        }
        Ok(())
    }

    /// The next record, or None at the current end of the journal.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Record<'_>>> {
        match self.advance()? {
            None => Ok(None),
            Some((at, h)) => Ok(Some(self.record_at(at, h))),
        }
    }

    pub fn next_owned(&mut self) -> Result<Option<OwnedRecord>> {
        Ok(self.next()?.map(|r| r.to_owned_record()))
    }

    fn record_at(&self, payload_at: usize, h: FrameHeader) -> Record<'_> {
        let map = &self
            .current
            .as_ref()
            .expect("record from a mapped segment")
            .map;
        Record {
            seq: h.seq,
            epoch: h.epoch,
            timestamp_ns: h.timestamp_ns,
            record_type: h.record_type,
            schema_version: h.schema_version,
            chain_prev: h.chain_prev,
            payload: &map[payload_at..payload_at + h.payload_len as usize],
        }
    }

    /// Moves past the next record and returns where its payload is.
    fn advance(&mut self) -> Result<Option<(usize, FrameHeader)>> {
        if let Some(w) = &self.watermarks {
            let limit = if self.durable_only {
                w.durable()
            } else {
                w.written()
            };
            if self.seq_next > limit {
                return Ok(None);
            }
        }
        // Bounded: each NextSegment enters a later segment.
        for _ in 0..self.segments.len() + 3 {
            match self.step(true)? {
                Step::Record(at, h) => return Ok(Some((at, h))),
                Step::End => return Ok(None),
                Step::NextSegment => {}
            }
        }
        Ok(None)
    }

    fn step(&mut self, follow: bool) -> Result<Step> {
        let Some(cur) = &self.current else {
            // An empty directory: the writer may create the first segment later.
            self.refresh_segments()?;
            let Some(first) = self.segments.first().cloned() else {
                return Ok(Step::End);
            };
            self.enter_segment(&first)?;
            return Ok(Step::NextSegment);
        };
        let seal_at = seal_offset(cur.size_bytes);
        let check = if self.offset + FRAME_HEADER_SIZE as u64 > seal_at {
            FrameCheck::Empty
        } else {
            check_frame(&cur.map, self.offset, seal_at)
        };
        let bound_by_watermark = self
            .watermarks
            .as_ref()
            .is_some_and(|w| self.seq_next <= w.written());
        match check {
            FrameCheck::Valid(h) => {
                if h.kind != FRAME_KIND_DATA {
                    return Err(self.corrupt(self.offset, "seal frame inside the data area"));
                }
                if h.seq != self.seq_next {
                    return Err(self.corrupt(
                        self.offset,
                        format!("sequence {} where {} was expected", h.seq, self.seq_next),
                    ));
                }
                if h.chain_prev != self.chain {
                    return Err(self.corrupt(
                        self.offset,
                        "chain value does not link to the previous record",
                    ));
                }
                if h.epoch < self.epoch {
                    return Err(self.corrupt(
                        self.offset,
                        format!("epoch {} below previous epoch {}", h.epoch, self.epoch),
                    ));
                }
                let at = self.offset as usize + FRAME_HEADER_SIZE;
                self.offset += frame_size(u64::from(h.payload_len));
                self.chain = chain_next(self.chain, h.crc, h.seq);
                self.seq_next += 1;
                self.epoch = h.epoch;
                Ok(Step::Record(at, h))
            }
            FrameCheck::Invalid(reason) => {
                let sealed = matches!(Seal::read(&cur.map, cur.size_bytes), Ok(Some(_)));
                if bound_by_watermark || sealed {
                    Err(self.corrupt(self.offset, reason))
                } else {
                    // Unsealed tail without a watermark: a write in progress, or a torn tail
                    // that recovery will cut. Either way, the end for now.
                    Ok(Step::End)
                }
            }
            FrameCheck::Empty => {
                let seal = match Seal::read(&cur.map, cur.size_bytes) {
                    Ok(Some(s)) => s,
                    // Not sealed: the end of what is written so far.
                    Ok(None) => return Ok(Step::End),
                    Err(reason) => return Err(self.corrupt(seal_at, reason)),
                };
                if seal.seq_next != self.seq_next || seal.chain != self.chain {
                    return Err(
                        self.corrupt(seal_at, "seal does not match the records of the segment")
                    );
                }
                if !follow {
                    return Ok(Step::End);
                }
                let base = cur.base_seq;
                let mut next = self.segments.iter().find(|s| s.base_seq > base).cloned();
                if next.is_none() {
                    self.refresh_segments()?;
                    next = self.segments.iter().find(|s| s.base_seq > base).cloned();
                }
                match next {
                    None => Ok(Step::End),
                    Some(s) => {
                        self.enter_segment(&s)?;
                        Ok(Step::NextSegment)
                    }
                }
            }
        }
    }

    /// First sequence whose timestamp is at or after `timestamp_ns`, assuming timestamps do
    /// not decrease along the journal. Positions the reader there. None if every record is
    /// earlier.
    pub fn seek_timestamp(&mut self, timestamp_ns: u64) -> Result<Option<u64>> {
        self.refresh_segments()?;
        let segments = self.segments.clone();
        // Binary search over segments by the timestamp of their first record.
        let mut lo = 0usize;
        let mut hi = segments.len();
        for _ in 0..64 {
            if lo >= hi {
                break;
            }
            let mid = (lo + hi) / 2;
            let ts = first_timestamp(&segments[mid])?;
            if ts.is_some_and(|t| t < timestamp_ns) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let start = lo.saturating_sub(1);
        let Some(seg) = segments.get(start) else {
            return Ok(None);
        };
        self.current = None;
        self.enter_segment(seg)?;
        let mut found = None;
        for _ in 0..u64::MAX {
            let Some((_, h)) = self.advance()? else {
                break;
            };
            if h.timestamp_ns >= timestamp_ns {
                found = Some(h.seq);
                break;
            }
        }
        if let Some(seq) = found {
            // Step back so the next `next()` returns this record.
            self.seek(seq)?;
        }
        Ok(found)
    }
}

fn first_timestamp(seg: &SegmentFile) -> Result<Option<u64>> {
    let Some((_, map)) = map_read(&seg.path)? else {
        return Ok(None);
    };
    let Ok(h) = SegmentHeader::decode(&map) else {
        return Ok(None);
    };
    let seal_at = seal_offset(h.segment_size_bytes).min(map.len() as u64);
    match check_frame(&map, DATA_OFFSET, seal_at) {
        FrameCheck::Valid(f) if f.kind == FRAME_KIND_DATA => Ok(Some(f.timestamp_ns)),
        _ => Ok(None),
    }
}

/// Follows the writer: waits for the next record with a bounded backoff (spin, yield,
/// then sleeps of at most `sleep_max`).
#[derive(Debug)]
pub struct Tailer {
    reader: Reader,
    pub sleep_max: Duration,
}

impl Tailer {
    /// Starts at `seq` (the first sequence to deliver).
    pub fn new(mut reader: Reader, seq: u64) -> Result<Tailer> {
        reader.seek(seq)?;
        Ok(Tailer {
            reader,
            sleep_max: Duration::from_millis(1),
        })
    }

    pub fn seq_next(&self) -> u64 {
        self.reader.seq_next
    }

    /// The next record, waiting up to `timeout` for it. None on timeout.
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Option<Record<'_>>> {
        let deadline = Instant::now() + timeout;
        let mut found = None;
        let mut sleep = Duration::from_micros(1);
        for attempt in 0u64.. {
            if let Some(x) = self.reader.advance()? {
                found = Some(x);
                break;
            }
            if Instant::now() >= deadline {
                break;
            }
            if attempt < 64 {
                std::hint::spin_loop();
            } else if attempt < 128 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(sleep);
                sleep = (sleep * 2).min(self.sleep_max);
            }
        }
        Ok(found.map(|(at, h)| self.reader.record_at(at, h)))
    }
}
