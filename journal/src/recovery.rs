//! Recovery: find the end of the valid log, tell a torn tail (what a crash can leave:
//! cut it) from damage (anything else: refuse, changing nothing), and apply the cut.
//!
//! A crash tears only writes that no completed sync covered. So the first problem found
//! is cut only when nothing on the disk proves that its records were already durable:
//! not the newest checkpoint, not the durable lag stamped in any CRC-valid frame (read
//! past the damage too: every frame records what was synced before it was written), not
//! a sequence the caller knows to be durable (the node passes its newest snapshot's), and
//! not a checkpoint naming the segment as one that existed. Damage of a kind a crash
//! never produces (a segment file of the wrong size, a header that is neither intact nor
//! all zero, a missing segment, a segment from another journal) is refused wherever it is.
//! Nothing is changed until the whole journal has been read and the decision made.

use crate::error::{Error, Result};
use crate::format::*;
use crate::segment::{
    drop_cache, list_segments, map_read, read_direct, segment_path, vanished, SegmentBytes,
    SegmentFile, SPARE_FILE_NAME,
};
use crate::storage::Storage;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering as AtomicOrdering};

/// What recovery cut from the tail. The daemon should log it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Truncation {
    /// Segment where the valid log ends.
    pub segment: PathBuf,
    /// Offset in that segment where the cut starts (0: the whole segment was removed).
    pub offset_bytes: u64,
    /// First sequence number that is no longer in the journal.
    pub seq_first_cut: u64,
    /// Highest sequence number seen in a CRC-valid frame past the cut (equal to
    /// `seq_first_cut - 1` when no such frame was seen).
    pub seq_last_cut: u64,
    /// CRC-valid frames found past the cut (records written but never synced: a crash
    /// persisted them out of order).
    pub records_cut: u64,
    /// Bytes zeroed (from the cut to the last non-zero byte of its segment) plus the
    /// non-zero extent of every removed segment file.
    pub cut_size_bytes: u64,
    /// Later segment files removed.
    pub segments_removed: Vec<PathBuf>,
    /// Why the frame at the cut was rejected.
    pub reason: String,
}

impl std::fmt::Display for Truncation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cut at {} offset {}: {}; sequences from {} cut",
            self.segment.display(),
            self.offset_bytes,
            self.reason,
            self.seq_first_cut
        )?;
        if self.records_cut > 0 {
            write!(
                f,
                " ({} CRC-valid record(s) past the cut, up to {}, none of them proven durable)",
                self.records_cut, self.seq_last_cut
            )?;
        }
        write!(f, ", {} non-zero bytes", self.cut_size_bytes)?;
        if !self.segments_removed.is_empty() {
            write!(
                f,
                ", {} later segment(s) removed",
                self.segments_removed.len()
            )?;
        }
        Ok(())
    }
}

/// A journal read while its writer is running: everything up to the durable point was
/// checked; past it the writer may be mid-write, so a frame that is not (yet) valid is the
/// end of what can be read, not damage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveTail {
    /// The writer holding the lock, as its lock file says (`pid N`).
    pub holder: String,
    /// Valid records read past the durable point (not checked for durability).
    pub records_past_durable: u64,
    /// Why reading stopped there, when it stopped before the end of the data.
    pub stopped_at: Option<String>,
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
    /// Highest sequence proven durable by anything on the disk or known to the caller
    /// (checkpoints, frames' durable lag, the caller's snapshot): damage at or below it is
    /// refused, never cut.
    pub seq_durable_proven: u64,
    /// Segments whose frames were all checked (the others were checked by header and seal).
    pub segments_scanned: usize,
    /// The torn tail that was (or, for `verify`, would be) cut.
    pub truncation: Option<Truncation>,
    /// Set when a writer held the journal while it was verified.
    pub live: Option<LiveTail>,
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

/// How to read the journal.
#[derive(Clone, Debug, Default)]
pub(crate) struct Analysis {
    pub verify: Verify,
    /// A sequence the caller knows was durable (the node's newest snapshot): the journal
    /// must hold it intact.
    pub seq_durable_known: u64,
    /// The first sequence the caller will read (0: any start will do): a journal that
    /// starts after it lost records the caller needs.
    pub seq_first_needed: u64,
    /// A journal that does not exist yet will start after this sequence (a standby's,
    /// after the snapshot it installed): a known durable point up to it is no loss.
    pub start_after: u64,
    /// Read as if the journal ended just before this sequence (repair's cut).
    pub seq_end: Option<u64>,
    /// A writer is running (verify beside a live node): past the durable point, a frame
    /// that is not valid yet is the end of the data, not damage. Holds the lock holder.
    pub live: Option<String>,
}

/// Could a crash have left this?
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Damage {
    /// Bytes of a write a crash can tear (a frame, the bytes after the last record, a
    /// seal): torn unless something proves its records durable.
    Tearable,
    /// An all-zero segment header: the header of a segment created by a roll reaches the
    /// disk with the segment's first sync, so a crash can leave it zero only in a segment
    /// none of whose records was durable, and which no checkpoint names.
    HeaderZero,
    /// Never produced by a crash (the file's size, a garbled header, a missing segment,
    /// another journal's segment, a broken link between segments).
    NeverTorn,
}

struct Problem {
    index: usize,
    /// Path of the damaged (or missing) segment file.
    path: PathBuf,
    offset_bytes: u64,
    /// First sequence that would be lost.
    seq: u64,
    reason: String,
    damage: Damage,
}

/// CRC-valid data frames seen: the highest durable point they prove, and where.
#[derive(Clone, Debug, Default)]
struct Proof {
    seq_durable: u64,
    /// (segment, offset, seq) of the frame that proves `seq_durable`.
    witness: Option<(PathBuf, u64, u64)>,
    frames: u64,
    seq_max: u64,
}

impl Proof {
    fn see(&mut self, h: &FrameHeader, path: &Path, offset: u64) {
        self.frames += 1;
        self.seq_max = self.seq_max.max(h.seq);
        let d = h.seq_durable_before();
        if d > self.seq_durable {
            self.seq_durable = d;
            self.witness = Some((path.to_path_buf(), offset, h.seq));
        }
    }
}

/// Past damage, frames further than this from the damaged sequence are not looked at
/// (only a cheap filter before the CRC: no journal holds 2^40 records).
const SEQ_SPAN_PLAUSIBLE: u64 = 1 << 40;

/// The first CRC-valid data frame at an 8-byte position in `buf[from..limit]` whose
/// sequence is at least `seq_min`: how readers get past damage, where frame boundaries
/// are unknown. Returns its offset and header.
pub(crate) fn next_valid_frame(
    buf: &[u8],
    from: u64,
    limit: u64,
    seq_min: u64,
) -> Option<(u64, FrameHeader)> {
    let limit = limit.min(buf.len() as u64);
    let mut at = align_up(from);
    let steps_max = limit.saturating_sub(at) / FRAME_ALIGN + 1;
    for _ in 0..steps_max {
        if at + FRAME_HEADER_SIZE as u64 > limit {
            return None;
        }
        let start = at as usize;
        // A frame's first 8 bytes hold its kind, so they are never all zero: skip zeros
        // to the next non-zero 8-byte word at once.
        if get_u64(buf, start) == 0 {
            let i = buf[start..limit as usize].iter().position(|&b| b != 0)?;
            at = (at + i as u64) & !(FRAME_ALIGN - 1);
            continue;
        }
        // Cheap checks before the CRC: kind, flags, reserved bytes, a plausible sequence.
        let hdr = &buf[start..start + FRAME_HEADER_SIZE];
        let seq = get_u64(hdr, 8);
        let plausible = hdr[4] == FRAME_KIND_DATA
            && hdr[5] == 0
            && get_u16(hdr, 38) == 0
            && seq >= seq_min
            && seq - seq_min < SEQ_SPAN_PLAUSIBLE;
        if plausible {
            if let FrameCheck::Valid(h) = check_frame(buf, at, limit) {
                return Some((at, h));
            }
        }
        at += FRAME_ALIGN;
    }
    None
}

/// Adds what every CRC-valid data frame in `buf[from..limit]` proves to `proof`.
fn scan_past_damage(
    buf: &[u8],
    path: &Path,
    from: u64,
    limit: u64,
    seq_min: u64,
    proof: &mut Proof,
) {
    let mut at = from;
    // Each frame found moves past itself: at most one per 8 bytes.
    let frames_max = limit.saturating_sub(from) / FRAME_ALIGN + 1;
    for _ in 0..frames_max {
        let Some((offset, h)) = next_valid_frame(buf, at, limit, seq_min) else {
            return;
        };
        proof.see(&h, path, offset);
        at = offset + frame_size(u64::from(h.payload_len));
    }
}

/// End of the non-zero bytes in `buf[from..to]` (returns `from` if all zero).
pub(crate) fn nonzero_end(buf: &[u8], from: u64, to: u64) -> u64 {
    let to = to.min(buf.len() as u64);
    if from >= to {
        return from;
    }
    // Mostly all zero (a segment's unwritten end): an OR over whole pages, which the
    // compiler turns into vector code, before the byte-wise search from the end.
    let all_zero = buf[from as usize..to as usize]
        .chunks(4096)
        .all(|page| page.iter().fold(0u8, |acc, &b| acc | b) == 0);
    if all_zero {
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

/// Checks frames (length, CRC, padding, kind) ahead of the walk in [`analyze_visit`], on
/// another core: the walk takes the headers of the frames found intact as they stand, and
/// checks the others itself. It publishes, per segment, how far every frame is intact
/// (from the data area's start, or from where the walk was when the checker fell behind
/// it and jumped there). Neither waits for the other: where the checker is held up (a
/// page read from the disk), the walk goes on checking frames itself. What is past a
/// segment's intact run is the walk's to check, with its own message.
struct CheckAhead {
    intact_until: Vec<AtomicU64>,
    /// Where the walk checks frames itself (a frame boundary it reached).
    walk_at: Vec<AtomicU64>,
    /// The walk has ended: stop.
    stop: AtomicBool,
}

/// Frames checked between two publications of progress.
const CHECK_AHEAD_FRAMES: u32 = 64;

impl CheckAhead {
    fn new(segments: usize) -> CheckAhead {
        CheckAhead {
            intact_until: (0..segments).map(|_| AtomicU64::new(0)).collect(),
            walk_at: (0..segments).map(|_| AtomicU64::new(0)).collect(),
            stop: AtomicBool::new(false),
        }
    }

    /// The checker's side: every segment in order.
    fn run(&self, maps: &[Option<SegmentBytes>]) {
        for (i, m) in maps.iter().enumerate() {
            if self.stop.load(AtomicOrdering::Relaxed) {
                return;
            }
            self.segment(i, m.as_deref());
        }
    }

    fn segment(&self, i: usize, m: Option<&[u8]>) {
        let Some(m) = m else { return };
        let Ok(header) = SegmentHeader::decode(m) else {
            return;
        };
        if m.len() as u64 != header.segment_size_bytes {
            return;
        }
        let seal_at = seal_offset(header.segment_size_bytes);
        let mut offset = DATA_OFFSET;
        let mut since = 0u32;
        // Each step passes a frame of at least a header's size.
        for _ in 0..seal_at / FRAME_HEADER_SIZE as u64 + 1 {
            if offset + FRAME_HEADER_SIZE as u64 > seal_at {
                break;
            }
            match check_frame(m, offset, seal_at) {
                FrameCheck::Valid(h) if h.kind == FRAME_KIND_DATA => {
                    offset += frame_size(u64::from(h.payload_len));
                }
                _ => break,
            }
            since += 1;
            if since == CHECK_AHEAD_FRAMES {
                since = 0;
                if self.stop.load(AtomicOrdering::Relaxed) {
                    return;
                }
                // Behind the walk: on from where it is (a frame boundary of the same
                // chain of frames), claiming nothing before it.
                let walk = self.walk_at[i].load(AtomicOrdering::Acquire);
                if walk > offset {
                    offset = walk;
                    continue;
                }
                self.intact_until[i].store(offset, AtomicOrdering::Release);
            }
        }
        self.intact_until[i].store(offset, AtomicOrdering::Release);
    }

    /// The walk's side: whether the frame at `offset` of segment `i` was found intact;
    /// if not (yet), the walk checks it itself, and says so.
    fn intact(&self, i: usize, offset: u64) -> bool {
        if offset < self.intact_until[i].load(AtomicOrdering::Acquire) {
            return true;
        }
        self.walk_at[i].store(offset, AtomicOrdering::Release);
        false
    }
}

/// Reads the log without modifying anything. Errors with `Corrupt` on damage a crash
/// cannot explain.
pub(crate) fn analyze(dir: &Path, how: &Analysis) -> Result<(Tail, RecoveryReport)> {
    analyze_visit(dir, how, &mut |_, _| {})
}

/// [`analyze`], handing every data frame it checks (length, CRC, padding, sequence, chain
/// and epoch all hold) to `visit` with its payload, in order, in the same pass.
pub(crate) fn analyze_visit(
    dir: &Path,
    how: &Analysis,
    visit: &mut dyn FnMut(&FrameHeader, &[u8]),
) -> Result<(Tail, RecoveryReport)> {
    let verify = how.verify;
    let mut segments = list_segments(dir)?;
    let mut report = RecoveryReport::default();
    let mut tail = Tail {
        seq_next: 1,
        ..Tail::default()
    };
    if segments.is_empty() {
        if how.seq_durable_known > how.start_after {
            return Err(Error::Corrupt {
                segment: dir.to_path_buf(),
                offset_bytes: 0,
                seq: 1,
                reason: format!(
                    "the journal holds no segment, but sequence {} is known to be durable \
                     (the newest snapshot is at it)",
                    how.seq_durable_known
                ),
                dir: dir.to_path_buf(),
            });
        }
        return Ok((tail, report));
    }

    if how.seq_first_needed > 0 && segments[0].base_seq > how.seq_first_needed {
        return Err(Error::Corrupt {
            segment: segment_path(dir, how.seq_first_needed),
            offset_bytes: 0,
            // A cut cannot bring missing records back: no repair advice.
            seq: 0,
            reason: format!(
                "records {}..{} are missing: the oldest segment starts at {}, and starting \
                 needs them ({}); restore the missing segments (or a snapshot that covers \
                 them) from a backup or the standby",
                how.seq_first_needed,
                segments[0].base_seq,
                segments[0].base_seq,
                match (how.seq_first_needed - 1, how.seq_durable_known) {
                    (0, 0) => "there is no snapshot".to_string(),
                    (0, newest) => format!(
                        "no snapshot checks out: the newest, at {newest}, and any older ones \
                         are damaged"
                    ),
                    (usable, newest) if newest > usable => format!(
                        "the newest snapshot that checks out is at {usable}; the one at \
                         {newest} is damaged"
                    ),
                    (usable, _) => format!("the newest snapshot is at {usable}"),
                }
            ),
            dir: dir.to_path_buf(),
        });
    }

    // The start (`Verify::Tail` with a snapshot) reads from `seq_first_needed` on: the
    // segments wholly before the one holding it are neither read nor checked (`verify`
    // with `Verify::All` checks them, and the next pruning removes them).
    let seq_first_journal = segments[0].base_seq;
    if how.verify == Verify::Tail && how.seq_first_needed > 1 {
        let first_needed = segments
            .iter()
            .rposition(|s| s.base_seq <= how.seq_first_needed)
            .unwrap_or(0);
        segments.drain(..first_needed);
    }

    // Read what the disk holds, not stale cached pages (see `drop_cache`): with no
    // writer, drop every segment's cached pages first; beside a running writer, drop the
    // sealed segments' (the writer no longer writes them; a live writer's active segment
    // keeps its cache) and read the newest segment with O_DIRECT. A file of length 0 reads
    // as None.
    // A running writer prunes its oldest segments after a snapshot: those that are gone
    // by the time they are read were listed a moment before, and are skipped.
    let mut maps = Vec::with_capacity(segments.len());
    let mut pruned = 0usize;
    for (i, s) in segments.iter().enumerate() {
        let newest = i + 1 == segments.len();
        let bytes = if how.live.is_some() && newest {
            read_direct(&s.path)
        } else {
            drop_cache(&s.path);
            map_read(&s.path).map(|m| m.map(|(_, m)| SegmentBytes::Mapped(m)))
        };
        match bytes {
            // Pruned since the listing, and so is everything before it (oldest first).
            Err(e) if how.live.is_some() && !newest && vanished(&e) => {
                maps.clear();
                pruned = i + 1;
            }
            bytes => maps.push(bytes?),
        }
    }
    segments.drain(..pruned);

    // Checkpoints in every segment's header page. Slots carry their own CRC, so they are
    // read even when the segment header itself is damaged. Each one's claims are true
    // when written: its sequence was durable, and its segment existed with its header.
    let mut checkpoint: Option<Checkpoint> = None;
    let mut checkpoint_seq_max = 0u64;
    let mut checkpoint_segment_max = 0u64;
    for m in maps.iter().flatten() {
        for at in CHECKPOINT_OFFSETS {
            if m.len() >= at + CHECKPOINT_SIZE {
                if let Some(c) = Checkpoint::decode(&m[at..at + CHECKPOINT_SIZE]) {
                    if checkpoint.is_none_or(|b| c.generation > b.generation) {
                        checkpoint = Some(c);
                    }
                    checkpoint_seq_max = checkpoint_seq_max.max(c.seq);
                    checkpoint_segment_max = checkpoint_segment_max.max(c.segment_base_seq);
                }
            }
        }
    }
    let seq_durable = checkpoint.map_or(0, |c| c.seq);
    report.seq_durable = seq_durable;
    tail.checkpoint_generation = checkpoint.map_or(0, |c| c.generation);

    // The journal's geometry comes from the first intact header.
    let header_first = maps
        .iter()
        .flatten()
        .find_map(|m| SegmentHeader::decode(m).ok());
    let segment_size_journal = header_first.map(|h| h.segment_size_bytes);

    // Records up to here are not read by the caller (None: no bound from the caller).
    let seq_read_before = if how.seq_first_needed > 0 {
        Some(how.seq_first_needed - 1)
    } else {
        (how.seq_durable_known > 0).then_some(how.seq_durable_known)
    };
    // Every frame's CRC on a second core, a little ahead of the walk below, which takes
    // the headers of the frames found intact as they stand and keeps every other check
    // (sequence, chain, epoch, checkpoint, seal, the zeros after the last record) and its
    // messages. Only where every frame is read and there is a second core.
    let ahead = (verify == Verify::All
        && how.live.is_none()
        && std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2))
    .then(|| CheckAhead::new(maps.len()));
    let mut problem: Option<Problem> = None;
    let mut proof = Proof::default();
    let mut seq_next = segments[0].base_seq;
    let mut chain = 0u64;
    let mut epoch = 0u32;
    let mut journal_id = 0u128;
    let mut end_offset = DATA_OFFSET;
    let mut sealed = false;
    let mut seal_last: Option<Seal> = None;
    let mut record_count = 0u64;
    let mut ts_first = 0u64;
    let mut ts_last = 0u64;
    let mut segment_size = 0u64;
    let mut index_last_good = 0usize;
    let mut ended = false;

    std::thread::scope(|scope| {
        let checker = ahead.as_ref().and_then(|a| {
            let maps = &maps;
            std::thread::Builder::new()
                .name("journal-check".into())
                .spawn_scoped(scope, move || a.run(maps))
                .ok()
        });
        let ahead = ahead.as_ref().filter(|_| checker.is_some());
        'segments: for (i, seg) in segments.iter().enumerate() {
            let is_last = i + 1 == segments.len();
            let found = |offset_bytes: u64, seq: u64, reason: String, damage: Damage| Problem {
                index: i,
                path: seg.path.clone(),
                offset_bytes,
                seq,
                reason,
                damage,
            };
            let file_len = maps[i].as_ref().map_or(0, |m| m.len() as u64);
            let header = match maps[i].as_deref().map(SegmentHeader::decode) {
                None => Err("empty file".to_string()),
                Some(Ok(h)) if h.base_seq != seg.base_seq => Err(format!(
                    "header base sequence {} does not match the file name",
                    h.base_seq
                )),
                Some(r) => r,
            };
            // Segments are preallocated and synced at full size before they get their name.
            if let Some(size) = header
                .as_ref()
                .ok()
                .map(|h| h.segment_size_bytes)
                .or(segment_size_journal)
            {
                if file_len != size {
                    problem = Some(found(
                        file_len.min(size),
                        seq_next,
                        format!(
                            "file is {file_len} bytes, not the segment size {size} (segments are \
                         preallocated at full size before they are named: cut or damaged)"
                        ),
                        Damage::NeverTorn,
                    ));
                    break;
                }
            }
            let header = match header {
                Ok(h) => h,
                Err(why) => {
                    let zero = maps[i].as_ref().is_some_and(|m| {
                        m.len() >= SEGMENT_HEADER_SIZE
                            && m[..SEGMENT_HEADER_SIZE].iter().all(|&b| b == 0)
                    });
                    let damage = if zero {
                        Damage::HeaderZero
                    } else {
                        Damage::NeverTorn
                    };
                    problem = Some(found(0, seq_next, format!("segment header: {why}"), damage));
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
                Some(
                    "segment header chain value does not continue the previous segment".to_string(),
                )
            } else if header.epoch < epoch {
                Some(format!(
                    "segment epoch {} below previous epoch {epoch}",
                    header.epoch
                ))
            } else if segment_size != 0 && header.segment_size_bytes != segment_size {
                Some(format!(
                    "segment size {} differs from the journal's {segment_size}",
                    header.segment_size_bytes
                ))
            } else {
                None
            };
            if let Some(reason) = why {
                let mut p = found(0, seq_next, reason, Damage::NeverTorn);
                if header.journal_id == journal_id && header.base_seq > seq_next {
                    // Name the file that is missing, not the one after the gap.
                    p.path = segment_path(dir, seq_next);
                    p.reason = format!(
                        "segment is missing: the log continues at {seq_next} but the next \
                     segment, {}, starts at {}",
                        seg.path.display(),
                        header.base_seq
                    );
                }
                problem = Some(p);
                break;
            }
            index_last_good = i;
            epoch = header.epoch;
            segment_size = header.segment_size_bytes;
            let seal_at = seal_offset(segment_size);
            end_offset = DATA_OFFSET;
            sealed = false;
            seal_last = None;
            record_count = 0;
            ts_first = 0;
            ts_last = 0;

            let seal = Seal::read(map, segment_size);
            let trusted_seal = match (&seal, verify) {
                // Sealed segments the caller will not read (up to the checkpoint, and before
                // the first sequence the caller reads, or else its known durable point) are
                // checked by header and seal only.
                (Ok(Some(s)), Verify::Tail)
                    if !is_last
                        && s.seq_next.saturating_sub(1) <= seq_durable
                        && seq_read_before.is_none_or(|b| s.seq_next.saturating_sub(1) <= b)
                        && how.seq_end.is_none_or(|e| s.seq_next <= e) =>
                {
                    Some(*s)
                }
                _ => None,
            };
            if let Some(s) = trusted_seal {
                let ok =
                    s.seq_next >= seq_next && s.epoch >= epoch && s.end_offset_bytes <= seal_at;
                if !ok {
                    problem = Some(found(
                        seal_at,
                        seq_next,
                        "seal values out of range".into(),
                        Damage::NeverTorn,
                    ));
                    break;
                }
                if checkpoint.is_some_and(|c| c.seq == s.seq_next - 1 && c.chain != s.chain) {
                    problem = Some(found(
                        seal_at,
                        seq_next,
                        "seal chain value differs from the checkpoint's".into(),
                        Damage::NeverTorn,
                    ));
                    break;
                }
                seq_next = s.seq_next;
                chain = s.chain;
                epoch = s.epoch;
                end_offset = s.end_offset_bytes;
                sealed = true;
                seal_last = Some(s);
                record_count = s.record_count;
                ts_first = s.timestamp_ns_first;
                ts_last = s.timestamp_ns_last;
                continue;
            }

            report.segments_scanned += 1;
            let mut offset = DATA_OFFSET;
            let steps_max = seal_at / FRAME_HEADER_SIZE as u64 + 1;
            for _ in 0..steps_max {
                if how.seq_end == Some(seq_next) {
                    ended = true;
                    break;
                }
                let check = if offset + FRAME_HEADER_SIZE as u64 > seal_at {
                    // Data area full: the end.
                    FrameCheck::Empty
                } else if ahead.is_some_and(|a| a.intact(i, offset)) {
                    let at = offset as usize;
                    FrameCheck::Valid(FrameHeader::decode_fields(&map[at..at + FRAME_HEADER_SIZE]))
                } else {
                    check_frame(map, offset, seal_at)
                };
                match check {
                    FrameCheck::Empty => break,
                    FrameCheck::Invalid(reason) => {
                        problem = Some(found(offset, seq_next, reason, Damage::Tearable));
                        break 'segments;
                    }
                    FrameCheck::Valid(h) => {
                        // A valid frame out of context is not a torn write: segments start
                        // zeroed and a cut zeroes what it cuts, so no stale frame is left.
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
                            problem = Some(found(offset, seq_next, reason, Damage::NeverTorn));
                            break 'segments;
                        }
                        chain = chain_next(chain, h.crc, h.seq);
                        if let Some(c) = checkpoint {
                            if c.seq == h.seq && c.chain != chain {
                                problem = Some(found(
                                offset,
                                h.seq,
                                format!(
                                    "chain value at durable sequence {} differs from the checkpoint's",
                                    h.seq
                                ),
                                Damage::NeverTorn,
                            ));
                                break 'segments;
                            }
                        }
                        proof.see(&h, &seg.path, offset);
                        let payload_at = (offset as usize) + FRAME_HEADER_SIZE;
                        visit(&h, &map[payload_at..payload_at + h.payload_len as usize]);
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
            if ended {
                break;
            }
            // After the last record: nothing but zeros up to the seal.
            if nonzero_end(map, end_offset, seal_at) > end_offset {
                problem = Some(found(
                    end_offset,
                    seq_next,
                    "non-zero bytes after the last valid record".into(),
                    Damage::Tearable,
                ));
                break;
            }
            match seal {
                Ok(Some(s)) => {
                    if s.seq_next != seq_next
                        || s.chain != chain
                        || s.end_offset_bytes != end_offset
                        || s.epoch != epoch
                    {
                        problem = Some(found(
                            seal_at,
                            seq_next,
                            "seal does not match the records of the segment".into(),
                            Damage::Tearable,
                        ));
                        break;
                    }
                    sealed = true;
                    seal_last = Some(s);
                }
                Ok(None) if is_last && nonzero_end(map, seal_at, segment_size) > seal_at => {
                    problem = Some(found(
                        seal_at,
                        seq_next,
                        "non-zero bytes in the seal area of the unsealed last segment".into(),
                        Damage::Tearable,
                    ));
                    break;
                }
                Ok(None) if is_last => {}
                Ok(None) => {
                    problem = Some(found(
                        seal_at,
                        seq_next,
                        "segment not sealed but a later segment exists".into(),
                        Damage::Tearable,
                    ));
                    break;
                }
                Err(reason) => {
                    problem = Some(found(seal_at, seq_next, reason, Damage::Tearable));
                    break;
                }
            }
        }
        if let Some(a) = ahead {
            a.stop.store(true, AtomicOrdering::Relaxed);
        }
    });

    // A sealed last segment whose successor a checkpoint names: the successor existed
    // with its header on disk (the writer records that only after syncing both), so it
    // was removed or lost, not torn.
    if problem.is_none() && !ended && sealed {
        if let Some(s) = seal_last {
            let missing = segment_path(dir, s.seq_next);
            let named = checkpoint_segment_max >= s.seq_next;
            let live_created = how.live.is_some() && missing.exists();
            if named && !live_created {
                problem = Some(Problem {
                    index: segments.len(),
                    path: missing,
                    offset_bytes: 0,
                    seq: s.seq_next,
                    reason: "segment is missing (a checkpoint records that it existed)".into(),
                    damage: Damage::NeverTorn,
                });
            }
        }
    }

    // What the caller knows and what the disk proves.
    let mut proven = (checkpoint_seq_max, "the newest checkpoint".to_string());
    if let Some(p) = &problem {
        // Every frame past the damage still says what was durable when it was written.
        let mut past = Proof::default();
        for (j, seg) in segments.iter().enumerate().skip(p.index) {
            let Some(m) = &maps[j] else { continue };
            let from = if j == p.index {
                p.offset_bytes + FRAME_ALIGN
            } else {
                DATA_OFFSET
            };
            let limit = segment_size_journal.map_or(m.len() as u64, seal_offset);
            scan_past_damage(m, &seg.path, from.max(DATA_OFFSET), limit, p.seq, &mut past);
        }
        if past.seq_durable > proof.seq_durable {
            proof.seq_durable = past.seq_durable;
            proof.witness = past.witness.clone();
        }
        proof.frames = past.frames;
        proof.seq_max = past.seq_max;
    } else {
        proof.frames = 0;
        proof.seq_max = 0;
    }
    // Cutting a torn tail removes every later segment file: each must be one a crash can
    // leave, or the file is not the writer's and the cut would delete it.
    if let Some(p) = problem.as_mut().filter(|p| p.damage != Damage::NeverTorn) {
        let stray = (p.index + 1..segments.len()).find_map(|j| {
            not_left_by_a_crash(maps[j].as_deref(), header_first.as_ref())
                .map(|(offset, why)| (j, offset, why))
        });
        if let Some((j, offset_bytes, why)) = stray {
            p.path = segments[j].path.clone();
            p.offset_bytes = offset_bytes;
            p.reason = format!("a later segment file, which a cut would remove: {why}");
            p.damage = Damage::NeverTorn;
        }
    }
    if proof.seq_durable > proven.0 {
        let (path, offset, seq) = proof.witness.clone().expect("a witness for a proof");
        proven = (
            proof.seq_durable,
            format!(
                "record {seq} ({} offset {offset}), written after it was synced",
                path.display()
            ),
        );
    }
    if how.seq_durable_known > proven.0 {
        proven = (how.seq_durable_known, "the newest snapshot".to_string());
    }
    let seq_proven = proven.0;
    report.seq_durable_proven = seq_proven;

    if let Some(p) = problem {
        let crash_cannot = match p.damage {
            Damage::NeverTorn => Some("a crash never leaves this".to_string()),
            Damage::HeaderZero if p.index == 0 => Some(
                "the oldest segment's header was synced before any record was written".to_string(),
            ),
            Damage::HeaderZero if checkpoint_segment_max >= segments[p.index].base_seq => Some(
                "a checkpoint records that this segment existed with its header on disk"
                    .to_string(),
            ),
            _ => None,
        };
        let proven_durable = (p.seq <= seq_proven).then(|| {
            format!(
                "sequence {} was durable: {} proves sequences up to {seq_proven}",
                p.seq, proven.1
            )
        });
        if let Some(why) = proven_durable.or(crash_cannot) {
            // At the journal's first record a cut would leave nothing: no repair advice.
            let first = p.seq <= seq_first_journal;
            return Err(Error::Corrupt {
                segment: p.path,
                offset_bytes: p.offset_bytes,
                seq: if first { 0 } else { p.seq },
                reason: format!(
                    "{}{}; refusing to cut it, {why}{}",
                    p.reason,
                    if first {
                        format!(
                            " (sequence {}, the first the journal holds: a cut would keep \
                             nothing, so only a restore, from a backup or the standby, \
                             brings these records back)",
                            p.seq
                        )
                    } else {
                        String::new()
                    },
                    if proof.frames > 0 {
                        format!(
                            "; {} CRC-valid record(s) lie past it, up to sequence {}",
                            proof.frames, proof.seq_max
                        )
                    } else {
                        String::new()
                    }
                ),
                dir: dir.to_path_buf(),
            });
        }
        if let Some(holder) = &how.live {
            // The writer is mid-write past the durable point: the end of what can be read.
            report.live = Some(LiveTail {
                holder: holder.clone(),
                records_past_durable: (seq_next - 1).saturating_sub(seq_proven),
                stopped_at: Some(format!(
                    "{} offset {}: {}",
                    p.path.display(),
                    p.offset_bytes,
                    p.reason
                )),
            });
            problem = None;
        } else {
            problem = Some(p);
        }
    }

    if let Some(p) = problem {
        let mut cut_size_bytes = 0u64;
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
            tail.zero_range = Some((p.path.clone(), p.offset_bytes, end));
            // The segment is active again; `end_offset` already is the end of its valid
            // records.
            sealed = false;
        }
        for (j, s) in segments.iter().enumerate().skip(keep) {
            if let Some(m) = &maps[j] {
                cut_size_bytes += nonzero_end(m, 0, m.len() as u64);
            }
            segments_removed.push(s.path.clone());
        }
        report.truncation = Some(Truncation {
            segment: p.path.clone(),
            offset_bytes: p.offset_bytes,
            seq_first_cut: p.seq,
            seq_last_cut: proof.seq_max.max(p.seq - 1),
            records_cut: proof.frames,
            cut_size_bytes,
            segments_removed,
            reason: p.reason,
        });
        // Only header damage cuts at offset 0, and the oldest segment's is always refused.
        assert!(keep > 0, "the oldest segment is never cut whole");
        debug_assert!(index_last_good < keep);
    } else if report.live.is_none() && how.live.is_some() {
        report.live = Some(LiveTail {
            holder: how.live.clone().unwrap_or_default(),
            records_past_durable: (seq_next - 1).saturating_sub(seq_proven),
            stopped_at: None,
        });
    }

    let seq_last = seq_next - 1;
    if seq_last < seq_proven && how.seq_end.is_none_or(|e| seq_proven < e) {
        let last = &segments[index_last_good];
        return Err(Error::Corrupt {
            segment: last.path.clone(),
            offset_bytes: end_offset,
            seq: seq_next,
            reason: format!(
                "the journal ends at {seq_last} but {} proves sequence {seq_proven} durable \
                 (records were lost)",
                proven.1
            ),
            dir: dir.to_path_buf(),
        });
    }

    let keep = report.truncation.as_ref().map_or(segments.len(), |t| {
        segments.len() - t.segments_removed.len()
    });
    let keep = if ended { index_last_good + 1 } else { keep };
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
    report.seq_last = seq_last;
    if report.seq_last < report.seq_first {
        report.seq_first = 0;
        report.seq_last = 0;
    }
    Ok((tail, report))
}

/// Why a segment file past a torn point cannot be one a crash left: a roll names only a
/// spare preallocated at full size and synced, whose header is then intact or, not yet
/// synced, all zero. `journal` is the journal's first intact header. Returns the offset
/// and the reason; None when a crash can leave it (or no intact header says the geometry).
fn not_left_by_a_crash(
    map: Option<&[u8]>,
    journal: Option<&SegmentHeader>,
) -> Option<(u64, String)> {
    let journal = journal?;
    let len = map.map_or(0, |m| m.len() as u64);
    let size = journal.segment_size_bytes;
    if size != len {
        return Some((
            len.min(size),
            format!(
                "file is {len} bytes, not the segment size {size} (segments are preallocated \
                 at full size before they are named)"
            ),
        ));
    }
    let header = &map?[..SEGMENT_HEADER_SIZE.min(len as usize)];
    if header.iter().all(|&b| b == 0) {
        return None;
    }
    match SegmentHeader::decode(header) {
        Err(why) => Some((0, format!("segment header: {why}"))),
        Ok(h) if h.journal_id != journal.journal_id => Some((
            0,
            "segment belongs to another journal (journal id differs)".to_string(),
        )),
        Ok(_) => None,
    }
}

/// Checks a journal directory without modifying it: the same analysis `Journal::open`
/// runs (with `verify`'s depth), so whatever opening would refuse, this reports with the
/// same place. `Ok` carries what opening would cut. Beside a running writer (another
/// process holds the lock) the records past the durable point may be mid-write: they are
/// reported as live, not as a torn tail. Never takes the writer's lock.
pub fn verify(dir: &Path, verify: Verify) -> Result<RecoveryReport> {
    verify_known(dir, verify, 0, 0)
}

/// [`verify`] with what the caller knows, as `Journal::open` takes it: a sequence known
/// durable and the first sequence it will read (`Config::seq_durable_known` and
/// `Config::seq_first_needed`; the node passes its newest snapshot's sequence and the next).
pub fn verify_known(
    dir: &Path,
    verify: Verify,
    seq_durable_known: u64,
    seq_first_needed: u64,
) -> Result<RecoveryReport> {
    verify_known_visit(
        dir,
        verify,
        seq_durable_known,
        seq_first_needed,
        &mut |_, _| {},
    )
}

/// [`verify_known`], handing every data frame it checks to `visit` with its payload, in
/// sequence order, in the same pass over the bytes (a deeper check of each record costs no
/// second read). Beside a running writer that prunes segments, the analysis may start
/// again from a fresh listing: `visit` then sees sequences it saw before.
pub fn verify_known_visit(
    dir: &Path,
    verify: Verify,
    seq_durable_known: u64,
    seq_first_needed: u64,
    visit: &mut dyn FnMut(&FrameHeader, &[u8]),
) -> Result<RecoveryReport> {
    let how = Analysis {
        verify,
        seq_durable_known,
        seq_first_needed,
        live: crate::lock::holder(dir),
        ..Analysis::default()
    };
    // Beside a running writer, a segment listed a moment ago may be pruned before it is
    // read (even the newest listed, when the writer rolled past it since): read again
    // from a fresh listing, a few times.
    for _ in 0..VANISHED_RETRIES {
        match analyze_visit(dir, &how, visit) {
            Err(e) if how.live.is_some() && vanished(&e) => continue,
            result => return result.map(|(_, r)| r),
        }
    }
    analyze_visit(dir, &how, visit).map(|(_, r)| r)
}

/// Fresh listings a verification beside a pruning writer tries.
const VANISHED_RETRIES: u32 = 5;

/// Applies the cut found by `analyze`: zero the torn bytes, remove later segments, sync.
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
        zero_range(&file, path, *from, *to)?;
        storage
            .sync_data(&file)
            .map_err(|e| Error::io(format!("fdatasync {}", path.display()), e))?;
    }
    storage
        .sync_dir(dir)
        .map_err(|e| Error::io(format!("fsync directory {}", dir.display()), e))?;
    Ok(())
}

/// Writes zeros over `[from, to)` of `file`.
pub(crate) fn zero_range(file: &std::fs::File, path: &Path, from: u64, to: u64) -> Result<()> {
    let zeros = [0u8; 4096];
    let mut at = from;
    let chunks_max = to.saturating_sub(from) / zeros.len() as u64 + 1;
    for _ in 0..chunks_max {
        if at >= to {
            break;
        }
        let n = (to - at).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], at)
            .map_err(|e| Error::io(format!("zero {}", path.display()), e))?;
        at += n as u64;
    }
    assert!(at >= to);
    Ok(())
}
