//! The syncer: group commit / periodic flush rounds, checkpoints, and the staged (pwrite,
//! io_uring, O_DIRECT) write path. Runs on the `journal-sync` thread and, through
//! `Journal::commit`, on the writer's thread, serialised by the sync-state mutex.

use super::*;
use crate::aligned::{AlignedBuf, DIRECT_BLOCK_BYTES};

/// The syncer's state for staged backends: its I/O engine and where the active segment's
/// bytes sit in the stream (offset = segment_offset_base + (stream - segment_stream_base)).
pub(super) struct StagedSyncer {
    pub(super) engine: Engine,
    pub(super) segment_base_seq: u64,
    pub(super) segment_offset_base: u64,
    pub(super) segment_stream_base: u64,
    pub(super) direct: Option<DirectState>,
}

/// O_DIRECT state of the syncer: a descriptor of the active segment opened with O_DIRECT,
/// the aligned write buffer, and the bytes of the partially written last block (rewritten
/// whole, with the new bytes, by the next write).
pub(super) struct DirectState {
    segment_base_seq: u64,
    file: File,
    buf: AlignedBuf,
    /// Bytes `[tail_offset, tail_offset + tail_len)` of the segment, `tail_offset` aligned.
    tail: [u8; DIRECT_BLOCK_BYTES as usize],
    tail_offset: u64,
    tail_len: usize,
}

impl DirectState {
    pub(super) fn new(
        segment: &Segment,
        end_offset: u64,
        staging_size_bytes: u64,
    ) -> std::io::Result<DirectState> {
        let mut d = DirectState {
            segment_base_seq: 0,
            file: segment.file.try_clone()?,
            buf: AlignedBuf::new((staging_size_bytes + 2 * DIRECT_BLOCK_BYTES) as usize),
            tail: [0u8; DIRECT_BLOCK_BYTES as usize],
            tail_offset: 0,
            tail_len: 0,
        };
        d.switch(segment, end_offset)?;
        Ok(d)
    }

    /// Opens `segment` with O_DIRECT and loads its partial last block.
    fn switch(&mut self, segment: &Segment, end_offset: u64) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        self.file = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&segment.path)?;
        self.segment_base_seq = segment.base_seq;
        self.tail_offset = end_offset & !(DIRECT_BLOCK_BYTES - 1);
        self.tail_len = (end_offset - self.tail_offset) as usize;
        // Buffered read of bytes written earlier (by recovery, or by direct writes, which
        // the page cache sees after invalidation).
        segment
            .file
            .read_exact_at(&mut self.tail[..self.tail_len], self.tail_offset)?;
        Ok(())
    }
}

pub(super) fn syncer_main(shared: &Shared) {
    // Normal priority on purpose, although nobody waits for its rounds in async mode: at
    // nice 19 (or SCHED_BATCH) its wake-ups stopped preempting a gateway spinning on its
    // core (p99 ~440 -> ~285 us), but a round preempted inside fdatasync then holds
    // kernel locks the writer's next pwrite needs for as long as it waits for a CPU, and
    // the fused pipeline's p99 at 100 K/s went from 0.1-0.3 ms to 1.6-8.4 ms (priority
    // inversion; docs/benchmarks.md).
    let interval = match shared.durability {
        Durability::Async { flush_interval_ms } => Duration::from_millis(flush_interval_ms),
        // Group mode is woken by appends; the timeout only bounds idle checkpointing (and,
        // when the caller commits, how long an uncommitted append waits for a sync).
        Durability::Group => CHECKPOINT_INTERVAL,
    };
    let mut space_checked = Instant::now();
    loop {
        let stopping = shared.stop.load(Ordering::SeqCst);
        if shared.failed.load(Ordering::SeqCst) {
            return;
        }
        if stopping && shared.abandon.load(Ordering::SeqCst) {
            return;
        }
        {
            let mut st = lock(&shared.sync_state);
            let cp = &st.checkpoint;
            let work = shared.progress.read().seq > shared.watermarks.durable()
                || cp.unsynced.is_some()
                || (cp.to_write.is_some()
                    && (cp.written_at.elapsed() >= CHECKPOINT_INTERVAL
                        || shared.checkpoint_requested.load(Ordering::Acquire)));
            if work && !shared.failed.load(Ordering::SeqCst) {
                if let Err(reason) = sync_round(shared, &mut st) {
                    shared.fail(reason);
                    return;
                }
            }
        }
        if stopping {
            return;
        }
        if space_checked.elapsed() >= Duration::from_millis(100) {
            let _ = shared.check_space();
            space_checked = Instant::now();
        }
        if shared.syncer_commits() && shared.progress.read().seq > shared.watermarks.durable() {
            continue; // more arrived during the sync: next group
        }
        let mut woken = lock(&shared.syncer_wake.0);
        shared.syncer_idle.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let more_work =
            shared.syncer_commits() && shared.progress.read().seq > shared.watermarks.durable();
        if !*woken && !more_work {
            woken = shared
                .syncer_wake
                .1
                .wait_timeout(woken, interval)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *woken = false;
        shared.syncer_idle.store(false, Ordering::SeqCst);
    }
}

/// What a sync round needs between rounds. Behind a mutex: the syncer thread and
/// `Journal::commit` (sync in the caller's thread) both run rounds.
pub(super) struct SyncerState {
    pub(super) generation: u64,
    pub(super) checkpoint: CheckpointState,
    pub(super) staged: Option<StagedSyncer>,
    /// Writer filling the cache (mmap, or writing through): (segment base, offset) below
    /// which the active segment's synced pages have been dropped from the page cache.
    pub(super) dropped: (u64, u64),
}

/// Writer filling the cache (mmap, or writing through): synced pages further than this
/// behind the durable point leave the page cache. New pages are the dear part of an
/// append into the cache (allocate and zero: 1-7 us each on the VMs measured, against
/// ~0.4 us for a page just freed), and pages dropped behind the writer are the ones the
/// kernel hands back for the pages ahead of it. It also keeps
/// the journal from filling memory with data nobody reads. Tailers keep reading: dropped
/// pages are read back from the file.
const DROP_BEHIND_KEEP_BYTES: u64 = 8 << 20;

pub(super) struct CheckpointState {
    /// Durable point not yet recorded in a checkpoint slot.
    pub(super) to_write: Option<ProgressSnapshot>,
    /// Sequence of a checkpoint written but not yet synced.
    pub(super) unsynced: Option<u64>,
    /// When the last checkpoint slot was written.
    pub(super) written_at: Instant,
}

/// One sync: sync sealed segments, the directory and the active segment (staged backends
/// write their staged bytes first), advance `durable`, then record it in a checkpoint slot
/// that the next round persists. Err is fatal.
pub(super) fn sync_round(shared: &Shared, st: &mut SyncerState) -> std::result::Result<(), String> {
    let started = Instant::now();
    let SyncerState {
        generation,
        checkpoint: checkpoint_pending,
        staged,
        dropped,
    } = st;
    let staged = staged.as_mut();
    let snap = shared.progress.read();
    let (active, sealed, dir_unsynced, roll_marker) = {
        let mut list = lock(&shared.segments);
        let sealed = std::mem::take(&mut list.sealed_unsynced);
        let d = std::mem::replace(&mut list.dir_unsynced, false);
        (list.active.clone(), sealed, d, list.roll_marker.take())
    };
    // A checkpoint written by the previous round is persisted by this round's syncs.
    let checkpoint_written = checkpoint_pending.unsynced.take();
    for s in &sealed {
        shared
            .storage
            .sync_data(&s.file)
            .map_err(|e| format!("fdatasync of {} failed: {e}", s.path.display()))?;
        if shared.writer_fills_cache() {
            let from = if dropped.0 == s.base_seq {
                dropped.1
            } else {
                DATA_OFFSET
            };
            s.drop_cached(from, seal_offset(s.size_bytes));
        }
    }
    if dir_unsynced {
        shared
            .storage
            .sync_dir(&shared.dir)
            .map_err(|e| format!("fsync of directory {} failed: {e}", shared.dir.display()))?;
    }
    let ring = shared.ring.as_ref();
    match (staged, ring) {
        (Some(st), Some(ring)) if snap.stream_end > ring.flushed_end.load(Ordering::Acquire) => {
            let flushed = ring.flushed_end.load(Ordering::Acquire);
            // The writer drains the ring before it rolls, so unflushed bytes belong to the
            // active segment, and a new segment starts where the stream was flushed to.
            assert_eq!(
                active.base_seq, snap.segment_base_seq,
                "staged bytes span a roll"
            );
            if st.segment_base_seq != active.base_seq {
                st.segment_base_seq = active.base_seq;
                st.segment_offset_base = DATA_OFFSET;
                st.segment_stream_base = flushed;
            }
            let offset = st.segment_offset_base + (flushed - st.segment_stream_base);
            assert!(offset + (snap.stream_end - flushed) <= seal_offset(active.size_bytes));
            let (a, b) = ring.slices(flushed, snap.stream_end);
            let what = |e: std::io::Error| {
                format!(
                    "write + fdatasync of {} at offset {offset} failed: {e}",
                    active.path.display()
                )
            };
            match st.direct.as_mut() {
                None => st
                    .engine
                    .write_and_sync(shared.storage.as_ref(), &active.file, offset, a, b)
                    .map_err(what)?,
                Some(d) => {
                    if d.segment_base_seq != active.base_seq {
                        d.switch(&active, offset).map_err(what)?;
                    }
                    assert_eq!(d.tail_offset + d.tail_len as u64, offset);
                    // Whole blocks: the partial last block written before, then the new
                    // bytes, then zeros up to the block end (zeros are what the
                    // preallocated file holds there anyway).
                    let len = a.len() + b.len();
                    let total = d.tail_len + len;
                    let total_aligned =
                        (total as u64).next_multiple_of(DIRECT_BLOCK_BYTES) as usize;
                    let tail_len = d.tail_len;
                    let buf = d.buf.as_mut_slice();
                    assert!(total_aligned <= buf.len());
                    buf[..tail_len].copy_from_slice(&d.tail[..tail_len]);
                    buf[tail_len..tail_len + a.len()].copy_from_slice(a);
                    buf[tail_len + a.len()..total].copy_from_slice(b);
                    buf[total..total_aligned].fill(0);
                    st.engine
                        .write_and_sync(
                            shared.storage.as_ref(),
                            &d.file,
                            d.tail_offset,
                            &buf[..total_aligned],
                            &[],
                        )
                        .map_err(what)?;
                    let keep_from = total & !(DIRECT_BLOCK_BYTES as usize - 1);
                    let new_tail_len = total - keep_from;
                    let mut tail = [0u8; DIRECT_BLOCK_BYTES as usize];
                    tail[..new_tail_len].copy_from_slice(&buf[keep_from..total]);
                    d.tail = tail;
                    d.tail_offset += keep_from as u64;
                    d.tail_len = new_tail_len;
                }
            }
            ring.flushed_end.store(snap.stream_end, Ordering::Release);
            shared.watermarks.written.store(snap.seq, Ordering::Release);
        }
        _ => {
            shared
                .storage
                .sync_data(&active.file)
                .map_err(|e| format!("fdatasync of {} failed: {e}", active.path.display()))?;
            if shared.writer_fills_cache() && snap.segment_base_seq == active.base_seq {
                if dropped.0 != active.base_seq {
                    *dropped = (active.base_seq, DATA_OFFSET);
                }
                let end = snap.end_offset_bytes.saturating_sub(DROP_BEHIND_KEEP_BYTES)
                    & !(PAGE_BYTES - 1);
                if end > dropped.1 {
                    active.drop_cached(dropped.1, end);
                    dropped.1 = end;
                }
            }
        }
    }
    if let Some(m) = roll_marker {
        // The new segment's name (directory synced above) and header (its sync above) are
        // on disk, and so is every record of the sealed one: say so in the sealed segment
        // before any record of the new one is published durable.
        let c = Checkpoint {
            generation: *generation,
            seq: m.seq_last,
            chain: m.chain,
            segment_base_seq: m.segment_base_seq,
            end_offset_bytes: DATA_OFFSET,
            epoch: m.epoch,
        };
        let at = CHECKPOINT_OFFSETS[(*generation % 2) as usize] as u64;
        m.sealed
            .file
            .write_all_at(&c.encode(), at)
            .and_then(|()| shared.storage.sync_data(&m.sealed.file))
            .map_err(|e| {
                format!(
                    "write + fdatasync of the roll checkpoint in {} failed: {e}",
                    m.sealed.path.display()
                )
            })?;
        *generation += 1;
    }
    if let Some(seq) = checkpoint_written {
        shared.checkpoint_seq_durable.store(seq, Ordering::Release);
    }
    if snap.seq > shared.watermarks.durable() {
        shared.watermarks.durable.store(snap.seq, Ordering::Release);
        checkpoint_pending.to_write = Some(snap);
    }
    // Record the durable point: it only claims what was synced above, so it is safe
    // whenever it reaches the disk; the next round's sync makes sure it does. At most every
    // CHECKPOINT_INTERVAL (or on request), so a group commit usually writes one region of
    // the file, not two.
    let checkpoint_due = checkpoint_pending.written_at.elapsed() >= CHECKPOINT_INTERVAL
        || shared.checkpoint_requested.swap(false, Ordering::AcqRel);
    let to_write = if checkpoint_due {
        checkpoint_pending.to_write.take()
    } else {
        None
    };
    if let Some(cp) = to_write {
        checkpoint_pending.written_at = Instant::now();
        let c = Checkpoint {
            generation: *generation,
            seq: cp.seq,
            chain: cp.chain,
            segment_base_seq: cp.segment_base_seq,
            end_offset_bytes: cp.end_offset_bytes,
            epoch: cp.epoch,
        };
        let at = CHECKPOINT_OFFSETS[(*generation % 2) as usize] as u64;
        if shared.ring.is_some() {
            active.file.write_all_at(&c.encode(), at).map_err(|e| {
                format!(
                    "write of checkpoint to {} failed: {e}",
                    active.path.display()
                )
            })?;
        } else {
            active.write(at, &c.encode());
        }
        *generation += 1;
        checkpoint_pending.unsynced = Some(cp.seq);
    }
    shared
        .watermarks
        .record_sync(started.elapsed().as_nanos() as u64);
    let _g = lock(&shared.durable_changed.0);
    shared.durable_changed.1.notify_all();
    Ok(())
}
