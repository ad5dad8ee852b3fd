//! Raw frames read from a journal's files, for a replicator catching a standby up: the
//! bytes exactly as the journal holds them, checked (length, CRC, padding, sequence,
//! chain), in batches. Reads go around the page cache (O_DIRECT) where the file system
//! allows it: a buffered read racing the writer's direct writes can leave stale pages, and
//! a catch-up read beside a live writer would otherwise risk exactly that.

use crate::aligned::{AlignedBuf, DIRECT_BLOCK_BYTES};
use crate::error::{Error, Result};
use crate::format::*;
use crate::segment::{list_segments, SegmentFile};
use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Bytes read from a segment at a time.
const WINDOW_BYTES: usize = 1 << 20;

struct Open {
    path: PathBuf,
    file: File,
    size_bytes: u64,
    /// The window: file bytes `[buf_at, buf_at + buf_len)`.
    buf: AlignedBuf,
    buf_at: u64,
    buf_len: usize,
}

impl Open {
    /// Forgets the window: the next load reads the file again (what was read before may
    /// have been the file before the writer's latest write).
    fn invalidate(&mut self) {
        self.buf_len = 0;
    }

    /// Makes `[at, at + len)` readable from the window (re-reading from `at`'s block).
    fn load(&mut self, at: u64, len: usize) -> Result<bool> {
        if at >= self.buf_at && at + len as u64 <= self.buf_at + self.buf_len as u64 {
            return Ok(true);
        }
        let start = at & !(DIRECT_BLOCK_BYTES - 1);
        let want = (WINDOW_BYTES as u64).min(self.size_bytes.saturating_sub(start)) as usize;
        let want = want.next_multiple_of(DIRECT_BLOCK_BYTES as usize);
        let buf = &mut self.buf.as_mut_slice()[..want];
        let mut got = 0;
        // A short read means the end of the file: at most one extra call.
        for _ in 0..2 {
            let n = self
                .file
                .read_at(&mut buf[got..], start + got as u64)
                .map_err(|e| Error::io(format!("read {}", self.path.display()), e))?;
            got += n;
            if n == 0 || got == want {
                break;
            }
        }
        self.buf_at = start;
        self.buf_len = got;
        Ok(at + len as u64 <= start + got as u64)
    }

    fn bytes(&self, at: u64, len: usize) -> &[u8] {
        let from = (at - self.buf_at) as usize;
        &self.buf.as_slice()[from..from + len]
    }
}

/// Reads raw frames in order from a starting sequence, across segments.
pub struct FrameReader {
    dir: PathBuf,
    open: Option<Open>,
    segment_base_seq: u64,
    seal_at: u64,
    offset: u64,
    seq_next: u64,
    chain: u64,
}

impl std::fmt::Debug for FrameReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameReader")
            .field("dir", &self.dir)
            .field("seq_next", &self.seq_next)
            .finish_non_exhaustive()
    }
}

fn open_file(path: &Path) -> std::io::Result<File> {
    let direct = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path);
    match direct {
        Ok(f) => Ok(f),
        // No O_DIRECT here (tmpfs): buffered reads; such file systems have no direct
        // writes either.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => crate::segment::open_regular(path),
        Err(e) => Err(e),
    }
}

impl FrameReader {
    /// A reader whose first frame is `seq`. Err `SequenceUnavailable` when no segment
    /// holds it (pruned, or not written yet).
    pub fn open(dir: &Path, seq: u64) -> Result<FrameReader> {
        let segments = list_segments(dir)?;
        let Some(seg) = segments.iter().rev().find(|s| s.base_seq <= seq).cloned() else {
            return Err(Error::SequenceUnavailable {
                seq,
                seq_first: segments.first().map_or(0, |s| s.base_seq),
                seq_last: 0,
            });
        };
        let mut r = FrameReader {
            dir: dir.to_path_buf(),
            open: None,
            segment_base_seq: 0,
            seal_at: 0,
            offset: DATA_OFFSET,
            seq_next: seq,
            chain: 0,
        };
        r.enter(&seg)?;
        // Walk to `seq` (rare: a catch-up's start).
        let mut skip = Vec::new();
        let steps_max = seq - seg.base_seq;
        for _ in 0..steps_max {
            if r.seq_next == seq {
                break;
            }
            if r.next_batch(&mut skip, 1, r.seq_next)?.is_none() {
                return Err(Error::SequenceUnavailable {
                    seq,
                    seq_first: seg.base_seq,
                    seq_last: r.seq_next - 1,
                });
            }
        }
        Ok(r)
    }

    fn corrupt(&self, reason: String) -> Error {
        Error::Corrupt {
            segment: self
                .open
                .as_ref()
                .map_or_else(|| self.dir.clone(), |o| o.path.clone()),
            offset_bytes: self.offset,
            seq: self.seq_next,
            reason,
            dir: self.dir.clone(),
        }
    }

    fn enter(&mut self, seg: &SegmentFile) -> Result<()> {
        let file = open_file(&seg.path)
            .map_err(|e| Error::io(format!("open {}", seg.path.display()), e))?;
        let size_bytes = file
            .metadata()
            .map_err(|e| Error::io(format!("stat {}", seg.path.display()), e))?
            .len();
        let mut open = Open {
            path: seg.path.clone(),
            file,
            size_bytes,
            buf: AlignedBuf::new(WINDOW_BYTES),
            buf_at: 0,
            buf_len: 0,
        };
        if !open.load(0, SEGMENT_HEADER_SIZE)? {
            return Err(self.corrupt(format!("{} too short for a header", seg.path.display())));
        }
        let header = SegmentHeader::decode(open.bytes(0, SEGMENT_HEADER_SIZE))
            .map_err(|why| self.corrupt(format!("segment header: {why}")))?;
        let first = self.open.is_none();
        if header.base_seq != seg.base_seq
            || (!first && (header.base_seq != self.seq_next || header.chain_prev != self.chain))
        {
            if !first && header.base_seq == seg.base_seq && header.base_seq > self.seq_next {
                return Err(self.corrupt(format!(
                    "segment is missing: the log continues at {} but the next segment starts \
                     at {}",
                    self.seq_next, header.base_seq
                )));
            }
            return Err(self.corrupt("segment does not continue the previous one".into()));
        }
        self.segment_base_seq = header.base_seq;
        self.seal_at = seal_offset(header.segment_size_bytes).min(size_bytes);
        self.offset = DATA_OFFSET;
        self.seq_next = header.base_seq;
        self.chain = header.chain_prev;
        self.open = Some(open);
        Ok(())
    }

    /// The next sequence this reader returns.
    pub fn seq_next(&self) -> u64 {
        self.seq_next
    }

    /// Appends whole frames to `out` (cleared first), from `seq_next()` up to `seq_last`
    /// inclusive and at most `max_bytes` (at least one frame): returns (first sequence,
    /// count), or None when nothing up to `seq_last` can be read yet. Every frame passed
    /// its checks; damage is an error.
    pub fn next_batch(
        &mut self,
        out: &mut Vec<u8>,
        max_bytes: usize,
        seq_last: u64,
    ) -> Result<Option<(u64, u32)>> {
        out.clear();
        let seq_first = self.seq_next;
        let mut count = 0u32;
        // Each step takes a frame or moves to the next segment.
        let steps_max = max_bytes / FRAME_HEADER_SIZE + 2 + 1024;
        for _ in 0..steps_max {
            if self.seq_next > seq_last {
                break;
            }
            let at = self.offset;
            if at + FRAME_HEADER_SIZE as u64 > self.seal_at {
                if !self.next_segment()? {
                    break;
                }
                continue;
            }
            let (h, size) = match self.frame_at(at)? {
                Some(FrameCheck::Valid(h)) => (h, frame_size(u64::from(h.payload_len))),
                // Not written yet: the caller asked beyond what the file holds, or the
                // segment ends here and the next one follows.
                None | Some(FrameCheck::Empty) => {
                    if !self.next_segment()? {
                        break;
                    }
                    continue;
                }
                Some(FrameCheck::Invalid(why)) => return Err(self.corrupt(why)),
            };
            let open = self.open.as_ref().expect("a segment is open");
            let bytes = open.bytes(at, size as usize);
            if h.kind != FRAME_KIND_DATA || h.seq != self.seq_next || h.chain_prev != self.chain {
                return Err(self.corrupt(format!(
                    "frame {} out of sequence or chain where {} was expected",
                    h.seq, self.seq_next
                )));
            }
            if count > 0 && out.len() + size as usize > max_bytes {
                break;
            }
            out.extend_from_slice(bytes);
            self.chain = chain_next(self.chain, h.crc, h.seq);
            self.seq_next += 1;
            self.offset = at + size;
            count += 1;
        }
        Ok((count > 0).then_some((seq_first, count)))
    }

    /// The frame at `at`, checked; read again from the file once when the window held
    /// something else than a valid frame there (the window may predate the write). None
    /// when the file ends first.
    fn frame_at(&mut self, at: u64) -> Result<Option<FrameCheck>> {
        let seal_at = self.seal_at;
        let open = self.open.as_mut().expect("a segment is open");
        for attempt in 0..2 {
            if attempt == 1 {
                open.invalidate();
            }
            if !open.load(at, FRAME_HEADER_SIZE)? {
                continue;
            }
            let payload_len = get_u32(open.bytes(at, FRAME_HEADER_SIZE), 0);
            let size = frame_size(u64::from(payload_len));
            if at + size > seal_at {
                if attempt == 0 {
                    continue;
                }
                return Ok(Some(FrameCheck::Invalid(format!(
                    "frame length {payload_len} crosses the end of the data area"
                ))));
            }
            if !open.load(at, size as usize)? {
                continue;
            }
            let check = check_frame(open.bytes(at, size as usize), 0, size);
            if matches!(check, FrameCheck::Valid(_)) || attempt == 1 {
                return Ok(Some(check));
            }
        }
        Ok(None)
    }

    /// Moves to the segment starting at `seq_next` when one exists (the current one is
    /// sealed). False when there is none yet.
    fn next_segment(&mut self) -> Result<bool> {
        let segments = list_segments(&self.dir)?;
        match segments.iter().find(|s| s.base_seq == self.seq_next) {
            Some(s) if s.base_seq != self.segment_base_seq => {
                let s = s.clone();
                self.enter(&s)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

/// The first sequence the journal in `dir` holds a segment for (None: no segment).
pub fn first_sequence(dir: &Path) -> Result<Option<u64>> {
    Ok(list_segments(dir)?.first().map(|s| s.base_seq))
}

/// A whole frame's sequence and the chain value after it, when `frame` passes its
/// checks (length, CRC, padding, kind).
pub fn frame_seq_chain(frame: &[u8]) -> Option<(u64, u64)> {
    match check_frame(frame, 0, frame.len() as u64) {
        FrameCheck::Valid(h) if h.kind == FRAME_KIND_DATA => {
            Some((h.seq, chain_next(h.chain_prev, h.crc, h.seq)))
        }
        _ => None,
    }
}

/// The chain value after `seq` in the journal in `dir`, read from its files: after the
/// record `seq`, or, for the sequence just before the oldest segment, from that segment's
/// first record. None when the journal does not hold what it takes.
pub fn chain_after(dir: &Path, seq: u64) -> Result<Option<u64>> {
    let Some(first) = first_sequence(dir)? else {
        return Ok(None);
    };
    let mut out = Vec::new();
    if seq + 1 == first {
        let mut r = FrameReader::open(dir, first)?;
        return Ok(r.next_batch(&mut out, 1, first)?.map(|_| get_u64(&out, 24)));
    }
    if seq < first {
        return Ok(None);
    }
    let mut r = FrameReader::open(dir, seq)?;
    Ok(r.next_batch(&mut out, 1, seq)?
        .and_then(|_| frame_seq_chain(&out).map(|(_, c)| c)))
}

/// A whole frame's header, when `frame` passes its checks (length, CRC, padding, kind).
pub fn frame_header(frame: &[u8]) -> std::result::Result<FrameHeader, String> {
    match check_frame(frame, 0, frame.len() as u64) {
        FrameCheck::Valid(h) if frame_size(u64::from(h.payload_len)) == frame.len() as u64 => Ok(h),
        FrameCheck::Valid(_) => Err("the frame's length differs from its slice".into()),
        FrameCheck::Empty => Err("an empty frame".into()),
        FrameCheck::Invalid(why) => Err(why),
    }
}

/// The record `seq` of the journal in `dir`: (chain value after it, its epoch). None when
/// the journal does not hold it.
pub fn record_chain_epoch(dir: &Path, seq: u64) -> Result<Option<(u64, u32)>> {
    let mut r = FrameReader::open(dir, seq)?;
    let mut out = Vec::new();
    Ok(r.next_batch(&mut out, 1, seq)?.and_then(|_| {
        frame_header(&out)
            .ok()
            .map(|h| (chain_next(h.chain_prev, h.crc, h.seq), h.epoch))
    }))
}
