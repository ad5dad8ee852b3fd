//! The single writer: appends through a shared mmap of the active segment (or a staging
//! ring for the pwrite/io_uring backends), rolls segments, and runs helper threads: the
//! syncer (group commit or periodic flush, checkpoints), the preallocator (creates the next
//! segment with real blocks ahead of time) and, for mmap, the populator (prefaults pages
//! ahead of the writer).

use crate::error::{Error, Result};
use crate::format::*;
use crate::lock::DirLock;
use crate::recovery::{self, RecoveryReport, Verify};
use crate::segment::{list_segments, segment_path, SPARE_FILE_NAME};
use crate::snapshot::SnapshotStore;
use crate::stage::{write_run, Backend, Engine, Ring};
use crate::storage::{OsStorage, Storage};
use crate::tap::FrameTap;
use memmap2::{MmapOptions, MmapRaw};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

mod sync;
mod threads;

use sync::{sync_round, syncer_main, CheckpointState, DirectState, StagedSyncer, SyncerState};
use threads::{populator_main, preallocator_main};

/// What an appended record survives before `durable` covers it. See the crate README.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Records are in the page cache once appended (survive a process crash, not a power
    /// cut); a background flush syncs every `flush_interval_ms` and advances `durable`.
    Async { flush_interval_ms: u64 },
    /// Group commit: the syncer fdatasyncs as soon as there is something unsynced, covering
    /// every record appended before the call; `durable` advances only after it returns.
    Group,
}

#[derive(Clone)]
pub struct Config {
    pub dir: PathBuf,
    /// Size of every new segment file (header page + data + seal).
    pub segment_size_bytes: u64,
    pub durability: Durability,
    /// Identity written into new segments; ignored when the journal exists.
    pub journal_id: u128,
    /// Epoch stamped into records. Must not be below the journal's last epoch; 0 takes
    /// the journal's own (1 for a new journal): a node reopening its journal after a
    /// promotion goes on in the epoch it was promoted to.
    pub epoch: u32,
    pub record_size_bytes_max: u32,
    /// Appends are refused while the file system has less free space than this.
    pub low_space_threshold_bytes: u64,
    /// Write zeros into preallocated segments and sync them, on the preallocation thread
    /// (at open for the first segment). This turns fallocate's unwritten extents into
    /// written blocks, so syncs during appends carry no extent conversion: on ext4 the
    /// conversion at I/O completion holds the inode's extent lock, and a mapped writer
    /// faulting pages meanwhile spun on it for up to 20 ms (measured, docs/benchmarks.md).
    /// Costs one extra write of each segment. With the mmap backend the zeroed pages stay
    /// cached, so the writer's page faults find them ready; the staged backends drop them.
    pub prealloc_zero_fill: bool,
    pub verify: Verify,
    /// A sequence the caller knows was durable in this journal (the node passes its newest
    /// snapshot's: snapshots are written only once their commands are durable). Opening
    /// refuses, changing nothing, when the journal cannot hold it intact: a torn-tail cut
    /// must never reach below it. 0: none.
    pub seq_durable_known: u64,
    /// The first sequence the caller will read (the node: its snapshot's sequence + 1, or
    /// 1 without one). Opening refuses, changing nothing, when the journal starts after
    /// it. 0: any start will do (a pruned journal read from its start).
    pub seq_first_needed: u64,
    /// For a directory with no journal yet: start after this `(sequence, chain value)`
    /// instead of at 1 (a standby that installs its primary's snapshot there). Ignored
    /// when the journal exists.
    pub start_after: Option<(u64, u64)>,
    pub storage: Arc<dyn Storage>,
    /// Write path. `Pwrite` and `IoUring` stage records in memory; `IoUring` needs `Group`.
    /// `Pwrite` under `Async` writes through: the writer's own
    /// [`Journal::write_staged`] puts each batch into the page cache with one pwrite.
    /// `Auto` (the default) picks `Pwrite` for `Async` and `IoUring` for `Group`, or
    /// `Pwrite` for `Group` when the caller commits (`caller_commits`).
    pub backend: Backend,
    /// Size of the staging ring for the staged backends (a power of two).
    pub staging_size_bytes: u64,
    /// Staged backends only (ignored by `Mmap`: mapped writes and O_DIRECT never share a
    /// file): write segment data with O_DIRECT (aligned 4 KiB blocks from the syncer's
    /// buffer, bypassing the page cache; checkpoints and seals stay buffered). Falls back
    /// to buffered writes where the file system refuses O_DIRECT. Default true.
    pub direct_io: bool,
    /// Pin the journal's background threads (sync, preallocate, populate) to this core.
    /// On a machine with fewer cores than busy threads, put them beside a thread that
    /// waits (the gateway) so they never preempt the pipeline. `None`: unpinned.
    pub helper_core: Option<usize>,
    /// Who prefaults the active segment's pages ahead of the writer (mmap backend).
    pub prefault: Prefault,
    /// `Group`: the writer's own thread makes its batches durable with
    /// [`Journal::commit`], so the syncer thread does not also sync after every append (it
    /// still syncs what is left every 10 ms, and sealed segments and checkpoints). Its
    /// rounds in parallel with the caller's cost a thread wake-up per batch and made the
    /// caller's commit wait for the lock: measured, the node's inline group maximum went
    /// from ~0.3 to ~0.5 M commands/s without them (docs/benchmarks.md). Default false.
    pub caller_commits: bool,
}

/// Who prefaults pages of the mapped segment before the writer reaches them (a page the
/// writer reaches first faults on its first write: ~1-5 us of kernel time here).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prefault {
    /// A background thread, woken as the writer advances. Best with a spare core: on a
    /// machine without one it preempts a busy thread for as long as a chunk takes.
    Thread,
    /// The writer's own thread, in bounded steps, when it calls
    /// [`Journal::prefault_ahead`] (between batches or when idle). No extra thread.
    Writer,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("dir", &self.dir)
            .field("segment_size_bytes", &self.segment_size_bytes)
            .field("durability", &self.durability)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl Config {
    pub fn new(dir: impl Into<PathBuf>) -> Config {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let journal_id = now ^ (u128::from(std::process::id()) << 96) | 1;
        Config {
            dir: dir.into(),
            segment_size_bytes: 256 << 20,
            durability: Durability::Group,
            journal_id,
            epoch: 1,
            record_size_bytes_max: 1 << 20,
            low_space_threshold_bytes: 1 << 30,
            prealloc_zero_fill: false,
            verify: Verify::Tail,
            seq_durable_known: 0,
            seq_first_needed: 0,
            start_after: None,
            storage: Arc::new(OsStorage),
            backend: Backend::Auto,
            staging_size_bytes: 8 << 20,
            direct_io: true,
            helper_core: None,
            prefault: Prefault::Thread,
            caller_commits: false,
        }
    }

    fn backend_resolved(&self) -> Backend {
        match (self.backend, self.durability) {
            // Writing through with pwrite: 2.5x the mapped writer's rate in the pipeline,
            // and no page faults or TLB shootdowns in its tail (docs/benchmarks.md).
            (Backend::Auto, Durability::Async { .. }) => Backend::Pwrite,
            // The caller's thread commits: pwrite + fdatasync right there beats io_uring,
            // whose fdatasync runs on a kernel worker that must be woken (node pipeline,
            // inline at 100 K/s: p50 121-131 against 160-177 us, recorded 2026-11-28;
            // docs/benchmarks.md). The syncer thread batches
            // better with io_uring (BENCHMARKS.md).
            (Backend::Auto, Durability::Group) if self.caller_commits => Backend::Pwrite,
            (Backend::Auto, Durability::Group) => Backend::IoUring,
            (b, _) => b,
        }
    }

    /// `Pwrite` under `Async`: the writer writes its staged batches itself
    /// ([`Journal::write_staged`]) and the syncer only syncs.
    fn writes_through(&self) -> bool {
        self.backend_resolved() == Backend::Pwrite
            && matches!(self.durability, Durability::Async { .. })
    }

    fn validate(&self) -> Result<()> {
        if self.segment_size_bytes < SEGMENT_SIZE_BYTES_MIN
            || !self.segment_size_bytes.is_multiple_of(4096)
        {
            return Err(Error::Config(format!(
                "segment_size_bytes {} must be a multiple of 4096 and at least {SEGMENT_SIZE_BYTES_MIN}",
                self.segment_size_bytes
            )));
        }
        let data_bytes = seal_offset(self.segment_size_bytes) - DATA_OFFSET;
        if frame_size(u64::from(self.record_size_bytes_max)) > data_bytes {
            return Err(Error::Config(format!(
                "record_size_bytes_max {} does not fit a segment's {data_bytes} data bytes",
                self.record_size_bytes_max
            )));
        }
        let backend = self.backend_resolved();
        if backend != Backend::Mmap {
            if backend == Backend::IoUring && self.durability != Durability::Group {
                return Err(Error::Config(format!(
                    "the {:?} backend needs the group durability mode",
                    self.backend
                )));
            }
            if self.staging_size_bytes < 4096
                || !self.staging_size_bytes.is_power_of_two()
                || self.staging_size_bytes < 2 * frame_size(u64::from(self.record_size_bytes_max))
            {
                return Err(Error::Config(format!(
                    "staging_size_bytes {} must be a power of two holding two maximal records",
                    self.staging_size_bytes
                )));
            }
        }
        if let Durability::Async { flush_interval_ms } = self.durability {
            if flush_interval_ms == 0 {
                return Err(Error::Config("flush_interval_ms must be positive".into()));
            }
        }
        Ok(())
    }
}

/// The journal's progress, readable from any thread. `written`: last sequence in the page
/// cache (visible to readers). `durable`: last sequence synced to disk. And what the syncs
/// cost, for metrics: every sync round (group commit, or the async flush), in any mode.
#[derive(Debug, Default)]
pub struct Watermarks {
    written: AtomicU64,
    durable: AtomicU64,
    syncs: AtomicU64,
    sync_ns_total: AtomicU64,
    /// Largest round since the last [`Watermarks::take_sync_ns_max`].
    sync_ns_max: AtomicU64,
}

impl Watermarks {
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }
    pub fn durable(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }
    /// Sync rounds completed, and their total time in ns.
    pub fn syncs(&self) -> (u64, u64) {
        (
            self.syncs.load(Ordering::Relaxed),
            self.sync_ns_total.load(Ordering::Relaxed),
        )
    }
    /// The longest sync round since the previous call, in ns (0: none).
    pub fn take_sync_ns_max(&self) -> u64 {
        self.sync_ns_max.swap(0, Ordering::Relaxed)
    }
    pub(crate) fn record_sync(&self, took_ns: u64) {
        self.sync_ns_total.fetch_add(took_ns, Ordering::Relaxed);
        self.sync_ns_max.fetch_max(took_ns, Ordering::Relaxed);
        self.syncs.fetch_add(1, Ordering::Relaxed);
    }
}

/// A mapped segment. The writer writes the data area; the syncer writes checkpoint slots in
/// the header page. The ranges never overlap.
pub(crate) struct Segment {
    pub base_seq: u64,
    pub path: PathBuf,
    pub file: File,
    map: MmapRaw,
    pub size_bytes: u64,
}

// SAFETY: the raw mapping is written by exactly one thread per byte range (see above).
unsafe impl Send for Segment {}
unsafe impl Sync for Segment {}

impl Segment {
    fn open(path: &Path, base_seq: u64, size_bytes: u64) -> Result<Segment> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| Error::io(format!("open {}", path.display()), e))?;
        let len = file
            .metadata()
            .map_err(|e| Error::io(format!("stat {}", path.display()), e))?
            .len();
        if len != size_bytes {
            return Err(Error::io(
                format!(
                    "segment {} is {len} bytes, expected {size_bytes}",
                    path.display()
                ),
                std::io::Error::from(std::io::ErrorKind::InvalidData),
            ));
        }
        let map = MmapOptions::new()
            .len(size_bytes as usize)
            .map_raw(&file)
            .map_err(|e| Error::io(format!("mmap {}", path.display()), e))?;
        Ok(Segment {
            base_seq,
            path: path.to_path_buf(),
            file,
            map,
            size_bytes,
        })
    }

    /// Drops the synced pages of `[from, to)` from this process's mapping and from the
    /// page cache. Best effort (a failure only costs memory). Callers pass only ranges
    /// that are synced and that the writer has passed: no byte is lost (a shared file
    /// mapping keeps its data in the file), readers fault the pages back in from disk.
    pub(crate) fn drop_cached(&self, from: u64, to: u64) {
        use std::os::fd::AsRawFd;
        let from = from.next_multiple_of(PAGE_BYTES);
        if to <= from {
            return;
        }
        let len = to - from;
        // SAFETY: MADV_DONTNEED on a shared file mapping only unmaps pages; their contents
        // stay in the file (this range is synced), and later accesses read them back.
        let _ = unsafe {
            self.map.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                from as usize,
                len as usize,
            )
        };
        // SAFETY: plain syscall on an open descriptor.
        unsafe {
            libc::posix_fadvise(
                self.file.as_raw_fd(),
                from as libc::off_t,
                len as libc::off_t,
                libc::POSIX_FADV_DONTNEED,
            );
        }
    }

    /// Prefaults `[offset, offset + len)` readable (MADV_POPULATE_READ) without touching
    /// the bytes, so it never races the writer: the page is in the cache and mapped, and the
    /// writer's first store costs a minor fault only. Not writable: a page prefaulted
    /// writable is dirty, so the next flush writes its zeros back and write-protects it, and
    /// the writer's store then faults anyway, waiting for the folio lock whenever that
    /// writeback is in flight: measured, p99 at 100 K appends/s went from 1.4-2.5 ms
    /// (writable) to 34-45 us (readable) in the node's pipeline bench.
    fn populate(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.map
            .advise_range(memmap2::Advice::PopulateRead, offset as usize, len as usize)
    }

    /// Copies `bytes` to `offset`. Caller guarantees it owns the range.
    #[inline]
    fn write(&self, offset: u64, bytes: &[u8]) {
        assert!(offset + bytes.len() as u64 <= self.size_bytes);
        // SAFETY: in bounds (asserted); the range is owned by the calling thread.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.map.as_mut_ptr().add(offset as usize),
                bytes.len(),
            );
        }
    }
}

/// Progress of the writer, published through a seqlock so the syncer reads a consistent
/// (sequence, chain, segment, offset, epoch).
#[derive(Default)]
struct Progress {
    version: AtomicU64,
    seq: AtomicU64,
    chain: AtomicU64,
    segment_base_seq: AtomicU64,
    end_offset_bytes: AtomicU64,
    epoch: AtomicU64,
    stream_end: AtomicU64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct ProgressSnapshot {
    seq: u64,
    chain: u64,
    segment_base_seq: u64,
    end_offset_bytes: u64,
    epoch: u32,
    /// Bytes staged since open (staged backends; 0 for mmap).
    stream_end: u64,
}

impl Progress {
    #[inline]
    fn publish(&self, s: ProgressSnapshot) {
        let v = self.version.load(Ordering::Relaxed);
        self.version.store(v + 1, Ordering::Relaxed);
        fence(Ordering::Release);
        self.seq.store(s.seq, Ordering::Relaxed);
        self.chain.store(s.chain, Ordering::Relaxed);
        self.segment_base_seq
            .store(s.segment_base_seq, Ordering::Relaxed);
        self.end_offset_bytes
            .store(s.end_offset_bytes, Ordering::Relaxed);
        self.epoch.store(u64::from(s.epoch), Ordering::Relaxed);
        self.stream_end.store(s.stream_end, Ordering::Relaxed);
        self.version.store(v + 2, Ordering::Release);
    }

    fn read(&self) -> ProgressSnapshot {
        // Bounded: the writer holds the odd version for a handful of stores.
        for attempt in 0..1_000_000u32 {
            let v1 = self.version.load(Ordering::Acquire);
            if v1.is_multiple_of(2) {
                let s = ProgressSnapshot {
                    seq: self.seq.load(Ordering::Relaxed),
                    chain: self.chain.load(Ordering::Relaxed),
                    segment_base_seq: self.segment_base_seq.load(Ordering::Relaxed),
                    end_offset_bytes: self.end_offset_bytes.load(Ordering::Relaxed),
                    epoch: self.epoch.load(Ordering::Relaxed) as u32,
                    stream_end: self.stream_end.load(Ordering::Relaxed),
                };
                fence(Ordering::Acquire);
                if self.version.load(Ordering::Relaxed) == v1 {
                    return s;
                }
            }
            if attempt % 64 == 63 {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        panic!("progress seqlock never settled: writer thread stuck mid-publish");
    }
}

enum Spare {
    Empty,
    Requested,
    Ready(File),
    Failed(String),
}

struct Shared {
    dir: PathBuf,
    storage: Arc<dyn Storage>,
    durability: Durability,
    segment_size_bytes: u64,
    low_space_threshold_bytes: u64,
    zero_fill: ZeroFill,
    watermarks: Arc<Watermarks>,
    progress: Progress,
    failed: AtomicBool,
    failure: Mutex<Option<String>>,
    low_space: AtomicBool,
    free_space_bytes: AtomicU64,
    stop: AtomicBool,
    /// Stop without the final sync (a simulated crash).
    abandon: AtomicBool,
    /// Sequence recorded in the newest checkpoint known to be on disk.
    checkpoint_seq_durable: AtomicU64,
    /// `sync()` wants a checkpoint now rather than at the next interval.
    checkpoint_requested: AtomicBool,
    /// Active segment and sealed segments not yet synced (syncer's work list).
    segments: Mutex<SyncList>,
    syncer_idle: AtomicBool,
    syncer_wake: (Mutex<bool>, Condvar),
    durable_changed: (Mutex<()>, Condvar),
    spare: Mutex<Spare>,
    spare_changed: Condvar,
    /// The writer is waiting for the spare: a zero fill in progress stops where it is
    /// (the file is fully allocated already; the rest stays unwritten extents).
    spare_wanted: AtomicBool,
    cursors: Mutex<Vec<Weak<AtomicU64>>>,
    /// Offset up to which the populate thread should prefault the active segment.
    populate_target: (Mutex<u64>, Condvar),
    /// Staging ring of the staged backends (None for mmap).
    ring: Option<Ring>,
    /// `Config::caller_commits`.
    caller_commits: bool,
    /// `Pwrite` under `Async`: the writer writes its staged bytes itself
    /// ([`Journal::write_staged`]) and publishes progress only then; the syncer only syncs.
    write_through: bool,
    sync_state: Mutex<SyncerState>,
    /// Staged data goes to disk with O_DIRECT.
    direct_io: bool,
    backend: Backend,
    backend_note: Option<String>,
    /// Set when the configured segment size differs from the journal's, which is kept.
    segment_size_note: Option<String>,
}

/// Longest time between checkpoint writes while records are being synced.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(10);

/// The unit of prefaulting and of dropping pages from the page cache.
const PAGE_BYTES: u64 = 4096;
/// How far ahead of the writer the populate thread prefaults pages, and in what steps.
const POPULATE_AHEAD_BYTES: u64 = 8 << 20;
const POPULATE_CHUNK_BYTES: u64 = 1 << 20;
/// `Prefault::Writer`: how far ahead of the append position, and the most per call.
pub const WRITER_PREFAULT_AHEAD_BYTES: u64 = 128 << 10;
pub const WRITER_PREFAULT_STEP_BYTES: u64 = 64 << 10;

struct SyncList {
    active: Arc<Segment>,
    sealed_unsynced: Vec<Arc<Segment>>,
    dir_unsynced: bool,
    /// Set by a roll: the next sync round records in the sealed segment that its successor
    /// exists (see [`RollMarker`]).
    roll_marker: Option<RollMarker>,
}

/// After a roll, once the new segment's name and header are synced, the syncer writes a
/// checkpoint into the sealed segment's header page naming the new segment (and claiming
/// the sealed segment's last record, synced in the same round), then syncs it, before
/// the round publishes any record of the new segment as durable. So whenever a record of
/// a segment was ever durable, an older segment says that segment existed: recovery
/// refuses to treat its loss, truncation or zeroed header as a torn tail.
pub(crate) struct RollMarker {
    pub(crate) sealed: Arc<Segment>,
    pub(crate) seq_last: u64,
    pub(crate) chain: u64,
    pub(crate) epoch: u32,
    pub(crate) segment_base_seq: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks is a bug elsewhere; the data stays usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn fail(&self, reason: String) {
        let mut f = lock(&self.failure);
        if f.is_none() {
            *f = Some(reason);
        }
        self.failed.store(true, Ordering::SeqCst);
        drop(f);
        let _g = lock(&self.durable_changed.0);
        self.durable_changed.1.notify_all();
    }

    fn failure(&self) -> Error {
        Error::Failed {
            reason: lock(&self.failure)
                .clone()
                .unwrap_or_else(|| "unknown".into()),
        }
    }

    /// The writer's bytes reach the file through the page cache (mmap, or writing
    /// through): synced pages behind it are dropped, so they do not pile up in memory.
    fn writer_fills_cache(&self) -> bool {
        self.ring.is_none() || self.write_through
    }

    /// Group mode, unless the caller commits: the syncer syncs as soon as there is
    /// something unsynced (woken by appends).
    fn syncer_commits(&self) -> bool {
        self.durability == Durability::Group && !self.caller_commits
    }

    fn wake_syncer(&self) {
        let mut w = lock(&self.syncer_wake.0);
        *w = true;
        self.syncer_wake.1.notify_one();
    }

    /// Refreshes the low-space flag from statvfs.
    fn check_space(&self) -> Result<u64> {
        let free = self
            .storage
            .free_space_bytes(&self.dir)
            .map_err(|e| Error::io(format!("statvfs {}", self.dir.display()), e))?;
        self.free_space_bytes.store(free, Ordering::Relaxed);
        self.low_space
            .store(free < self.low_space_threshold_bytes, Ordering::Release);
        Ok(free)
    }

    fn low_space_error(&self) -> Error {
        Error::LowSpace {
            dir: self.dir.clone(),
            free_bytes: self.free_space_bytes.load(Ordering::Relaxed),
            threshold_bytes: self.low_space_threshold_bytes,
        }
    }
}

/// What `prune` removed (or, in a dry run, would remove).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PruneReport {
    pub dry_run: bool,
    /// Records from this sequence on are kept (0: nothing may go, no snapshot).
    pub seq_keep_from: u64,
    pub segments: Vec<PrunedSegment>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrunedSegment {
    pub path: PathBuf,
    pub base_seq: u64,
    pub seq_last: u64,
    pub size_bytes: u64,
}

/// The journal writer. One per directory (enforced by the lock file).
pub struct Journal {
    shared: Arc<Shared>,
    active: Arc<Segment>,
    seal_at: u64,
    end_offset_bytes: u64,
    seq_next: u64,
    chain: u64,
    epoch: u32,
    /// The epoch of the active segment's last record (its header's while it has none):
    /// what its seal must say, which differs from `epoch` after a promotion.
    epoch_segment_last: u32,
    sealed: bool,
    record_count: u64,
    timestamp_ns_first: u64,
    timestamp_ns_last: u64,
    record_size_bytes_max: u32,
    journal_id: u128,
    report: RecoveryReport,
    syncer: Option<JoinHandle<()>>,
    preallocator: Option<JoinHandle<()>>,
    populator: Option<JoinHandle<()>>,
    /// When `end_offset_bytes` passes this, ask the populate thread to move ahead.
    populate_next_at: u64,
    /// `Prefault::Writer`: the active segment is prefaulted below this offset.
    prefaulted_to: u64,
    /// Bytes staged since open (staged backends).
    stream_end: u64,
    hasher_fresh: crc32fast::Hasher,
    /// Why the last spare segment could not be prepared, until one is: appends that need
    /// a spare meanwhile are refused at once instead of each waiting for a retry.
    spare_failure: Option<String>,
    /// A replicator's copy of every frame appended.
    tap: Option<Arc<FrameTap>>,
    _lock: DirLock,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("dir", &self.shared.dir)
            .field("seq_next", &self.seq_next)
            .field("segment", &self.active.path)
            .finish_non_exhaustive()
    }
}

/// Spawns a background thread, pinned to `core` if given (a core that does not exist
/// leaves it unpinned: placement is a hint, never a reason to stop).
fn spawn_helper(
    name: &str,
    core: Option<usize>,
    body: impl FnOnce() + Send + 'static,
) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            if let Some(id) = core {
                core_affinity::set_for_current(core_affinity::CoreId { id });
            }
            body()
        })
        .map_err(|e| Error::io(format!("spawn {name} thread"), e))
}

/// Checks, before anything is changed, what opening will need to write: the directory,
/// the active segment, and a leftover spare it will replace. A refusal here leaves the
/// directory as it was (a permission error found half-way would not).
fn writable(dir: &Path, tail: &recovery::Tail) -> Result<()> {
    let refuse = |what: String, e: std::io::Error| Error::io(what, e);
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).map_err(|_| {
        refuse(
            format!("journal directory {}", dir.display()),
            std::io::ErrorKind::InvalidInput.into(),
        )
    })?;
    // SAFETY: a plain syscall on a valid C string.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
        return Err(refuse(
            format!("journal directory {} is not writable", dir.display()),
            std::io::Error::last_os_error(),
        ));
    }
    if let Some(active) = tail.segments.last() {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(&active.path)
            .map_err(|e| refuse(format!("open {} for writing", active.path.display()), e))?;
    }
    let spare = dir.join(SPARE_FILE_NAME);
    if let Ok(meta) = std::fs::symlink_metadata(&spare) {
        if !meta.is_file() {
            return Err(refuse(
                format!(
                    "{} is not a regular file (the journal replaces it with the next segment): \
                     move it away",
                    spare.display()
                ),
                std::io::ErrorKind::InvalidInput.into(),
            ));
        }
    }
    Ok(())
}

fn create_segment_file(
    dir: &Path,
    path: &Path,
    header: &SegmentHeader,
    storage: &dyn Storage,
    spare: Option<File>,
    zero_fill: ZeroFill,
) -> Result<()> {
    let sync_header = spare.is_none();
    let file = match spare {
        Some(f) => f,
        // At open: nobody is waiting yet, the fill completes.
        None => prepare_spare(
            &dir.join(SPARE_FILE_NAME),
            header.segment_size_bytes,
            zero_fill,
            storage,
            &AtomicBool::new(false),
        )?,
    };
    file.write_all_at(&header.encode(), 0)
        .map_err(|e| Error::io(format!("write header {}", path.display()), e))?;
    if sync_header {
        // The journal's first segment: its header is on disk before it has a name, so
        // recovery knows a damaged oldest header is never a torn write. (A rolled
        // segment's header reaches the disk with the segment's first sync, before any of
        // its records is durable; the syncer then records in the sealed segment that it
        // exists.)
        storage
            .sync_data(&file)
            .map_err(|e| Error::io(format!("fdatasync {}", path.display()), e))?;
    }
    let tmp = dir.join(SPARE_FILE_NAME);
    std::fs::rename(&tmp, path)
        .map_err(|e| Error::io(format!("rename {} to {}", tmp.display(), path.display()), e))?;
    Ok(())
}

/// Zero fill writes and syncs this much at a time.
const ZERO_FILL_CHUNK_BYTES: usize = 1 << 20;

/// How new segment files are prepared (`Config::prealloc_zero_fill`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ZeroFill {
    /// fallocate only: unwritten extents, converted as appends are synced.
    Off,
    /// Zeros written and synced; the pages stay cached for the writer: a mapped writer's
    /// faults find them ready, and a writer writing through the cache in small pieces
    /// never has the kernel read a partly written page back from disk.
    Cached,
    /// Zeros written and synced, then dropped from the cache (the group mode's staged
    /// backends write whole staged runs with pwrite or O_DIRECT and never read the zeros
    /// through the cache).
    Dropped,
}

impl ZeroFill {
    pub(crate) fn of(config: &Config) -> ZeroFill {
        // The writer's own small writes reach the cache: mapped stores, or writing through.
        let cached = config.backend_resolved() == Backend::Mmap || config.writes_through();
        match (config.prealloc_zero_fill, cached) {
            (false, _) => ZeroFill::Off,
            (true, true) => ZeroFill::Cached,
            (true, false) => ZeroFill::Dropped,
        }
    }
}

/// Creates `path` with `size_bytes` of real blocks (zeroed content).
/// A zero fill stops early (between chunks) once `hurry` is set: the writer needs the
/// file now, and a fully allocated file is a valid segment with or without the zeros.
fn prepare_spare(
    path: &Path,
    size_bytes: u64,
    zero_fill: ZeroFill,
    storage: &dyn Storage,
    hurry: &AtomicBool,
) -> Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| Error::io(format!("create {}", path.display()), e))?;
    let result = storage
        .allocate(&file, size_bytes)
        .map_err(|e| Error::PreallocFailed {
            path: path.to_path_buf(),
            reason: format!("fallocate of {size_bytes} bytes: {e}"),
        });
    let result = result.and_then(|()| {
        if zero_fill == ZeroFill::Off {
            // The allocated size is durable before the file can get a segment's name:
            // recovery treats a segment of the wrong size as damage, never as a tear.
            return storage.sync_data(&file).map_err(|e| Error::PreallocFailed {
                path: path.to_path_buf(),
                reason: format!("sync after fallocate: {e}"),
            });
        }
        let zeros = vec![0u8; ZERO_FILL_CHUNK_BYTES];
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        let mut at = 0u64;
        for _ in 0..size_bytes.div_ceil(ZERO_FILL_CHUNK_BYTES as u64) {
            if hurry.load(Ordering::Relaxed) {
                break;
            }
            let n = (size_bytes - at).min(ZERO_FILL_CHUNK_BYTES as u64) as usize;
            file.write_all_at(&zeros[..n], at)
                .map_err(|e| Error::PreallocFailed {
                    path: path.to_path_buf(),
                    reason: format!("zero fill: {e}"),
                })?;
            // Each chunk goes to disk before the next is written: at most one chunk of
            // this background I/O is ever queued ahead of the journal's own syncs, and
            // the dirty pages never pile up for the kernel's flusher. Best effort: the
            // sync below reports errors.
            // SAFETY: plain syscalls on an open descriptor.
            unsafe {
                libc::sync_file_range(
                    fd,
                    at as libc::off64_t,
                    n as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WAIT_BEFORE
                        | libc::SYNC_FILE_RANGE_WRITE
                        | libc::SYNC_FILE_RANGE_WAIT_AFTER,
                );
                if zero_fill == ZeroFill::Dropped {
                    libc::posix_fadvise(
                        fd,
                        at as libc::off_t,
                        n as libc::off_t,
                        libc::POSIX_FADV_DONTNEED,
                    );
                }
            }
            at += n as u64;
        }
        assert!(at <= size_bytes);
        // The extents' new state (written) is metadata: make it durable too.
        storage
            .sync_data(&file)
            .map_err(|e| Error::PreallocFailed {
                path: path.to_path_buf(),
                reason: format!("sync after zero fill: {e}"),
            })?;
        Ok(())
    });
    if let Err(e) = result {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(file)
}

impl Journal {
    /// Opens (creating if needed) the journal in `config.dir`: takes the lock, recovers the
    /// tail, and starts the helper threads. `recovery_report()` says what was cut.
    pub fn open(mut config: Config) -> Result<Journal> {
        config.validate()?;
        let dir = config.dir.clone();
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("create_dir_all {}", dir.display()), e))?;
        let mut dir_lock = DirLock::acquire(&dir)?;
        let storage = config.storage.clone();
        let zero_fill = ZeroFill::of(&config);

        // Decide first, change after: a refused open leaves the directory as it was.
        let analysis = recovery::Analysis {
            verify: config.verify,
            seq_durable_known: config.seq_durable_known,
            seq_first_needed: config.seq_first_needed,
            start_after: config.start_after.map_or(0, |(seq, _)| seq),
            ..recovery::Analysis::default()
        };
        let (mut tail, report) = recovery::analyze(&dir, &analysis)?;
        if tail.segments.is_empty() {
            if let Some((seq, chain)) = config.start_after {
                // A journal that begins after a snapshot it was given (a standby installing
                // its primary's): its first segment starts past it, linked to its chain.
                tail.seq_next = seq + 1;
                tail.chain = chain;
            }
        }
        // A journal keeps the segment size it was created with: recovery refuses a journal
        // whose segments differ in size, so a changed setting applies to new journals only.
        let mut segment_size_note = None;
        if !tail.segments.is_empty() && tail.segment_size_bytes != config.segment_size_bytes {
            segment_size_note = Some(format!(
                "the journal's segments are {} bytes, as it was created; the configured {} \
                 bytes applies to a new journal only",
                tail.segment_size_bytes, config.segment_size_bytes
            ));
            config.segment_size_bytes = tail.segment_size_bytes;
            // A record must fit one of the journal's segments, whatever was configured.
            let data_bytes = seal_offset(config.segment_size_bytes) - DATA_OFFSET;
            let fits = data_bytes.saturating_sub(FRAME_HEADER_SIZE as u64);
            if frame_size(u64::from(config.record_size_bytes_max)) > data_bytes {
                config.record_size_bytes_max = u32::try_from(fits).unwrap_or(u32::MAX);
            }
            config.validate()?;
        }
        let epoch = match config.epoch {
            0 => tail.epoch.max(1),
            e => e,
        };
        if epoch < tail.epoch {
            return Err(Error::StaleEpoch {
                epoch,
                epoch_journal: tail.epoch,
            });
        }
        writable(&dir, &tail)?;
        dir_lock.note_holder()?;
        recovery::apply(&dir, &tail, &report, storage.as_ref())?;

        // The active segment: the last one, or a fresh first segment.
        let (active_file, journal_id) = match tail.segments.last() {
            Some(s) => (s.clone(), tail.journal_id),
            None => {
                let header = SegmentHeader {
                    journal_id: config.journal_id,
                    base_seq: tail.seq_next,
                    segment_size_bytes: config.segment_size_bytes,
                    chain_prev: tail.chain,
                    epoch,
                };
                let path = segment_path(&dir, header.base_seq);
                create_segment_file(&dir, &path, &header, storage.as_ref(), None, zero_fill)?;
                storage
                    .sync_dir(&dir)
                    .map_err(|e| Error::io(format!("fsync directory {}", dir.display()), e))?;
                (
                    crate::segment::SegmentFile {
                        base_seq: header.base_seq,
                        path,
                    },
                    config.journal_id,
                )
            }
        };
        let segment_size_bytes = if tail.segments.is_empty() {
            config.segment_size_bytes
        } else {
            tail.segment_size_bytes
        };
        {
            // A cut file gets its full preallocated size back before it is mapped.
            let f = OpenOptions::new()
                .write(true)
                .open(&active_file.path)
                .map_err(|e| Error::io(format!("open {}", active_file.path.display()), e))?;
            storage
                .allocate(&f, segment_size_bytes)
                .map_err(|e| Error::io(format!("fallocate {}", active_file.path.display()), e))?;
        }
        let active = Arc::new(Segment::open(
            &active_file.path,
            active_file.base_seq,
            segment_size_bytes,
        )?);

        // Everything recovered is made durable before it is reported durable.
        let bases: Vec<u64> = tail.segments.iter().map(|s| s.base_seq).collect();
        for (i, s) in tail.segments.iter().enumerate() {
            if needs_sync_at_open(&bases, i, report.seq_durable) {
                let f = File::open(&s.path)
                    .map_err(|e| Error::io(format!("open {}", s.path.display()), e))?;
                storage
                    .sync_data(&f)
                    .map_err(|e| Error::io(format!("fdatasync {}", s.path.display()), e))?;
            }
        }
        storage
            .sync_dir(&dir)
            .map_err(|e| Error::io(format!("fsync directory {}", dir.display()), e))?;

        let seq_last = tail.seq_next - 1;
        let watermarks = Arc::new(Watermarks::default());
        watermarks.written.store(seq_last, Ordering::Release);
        watermarks.durable.store(seq_last, Ordering::Release);
        let end_offset_bytes = if tail.segments.is_empty() {
            DATA_OFFSET
        } else {
            tail.end_offset_bytes
        };

        let (engine, backend, backend_note) = match config.backend_resolved() {
            Backend::Auto => unreachable!("resolved above"),
            Backend::Mmap => (None, Backend::Mmap, None),
            Backend::Pwrite => (Some(Engine::Pwrite), Backend::Pwrite, None),
            Backend::IoUring => match Engine::detect(true) {
                (e @ Engine::IoUring(_), note) => (Some(e), Backend::IoUring, note),
                (e, note) => (Some(e), Backend::Pwrite, note),
            },
        };
        let ring = engine
            .as_ref()
            .map(|_| Ring::new(config.staging_size_bytes));
        let write_through = config.writes_through();
        // Writing through, the writer writes and the syncer only syncs: no staged syncer,
        // and no O_DIRECT (the pages go to the page cache and the syncer flushes them).
        let engine = engine.filter(|_| !write_through);
        let mut backend_note = backend_note;
        let direct = if config.direct_io && engine.is_some() {
            match DirectState::new(&active, end_offset_bytes, config.staging_size_bytes) {
                Ok(d) => Some(d),
                Err(e) => {
                    let note = format!("O_DIRECT unavailable ({e}); using buffered writes");
                    backend_note = Some(match backend_note {
                        Some(n) => format!("{n}; {note}"),
                        None => note,
                    });
                    None
                }
            }
        } else {
            None
        };
        let direct_io = direct.is_some();
        let progress_initial = ProgressSnapshot {
            seq: seq_last,
            chain: tail.chain,
            segment_base_seq: active.base_seq,
            end_offset_bytes,
            epoch: tail.epoch.max(epoch),
            stream_end: 0,
        };
        let sync_state = SyncerState {
            generation: tail.checkpoint_generation + 1,
            // A checkpoint for the state recovered at open (synced above).
            checkpoint: CheckpointState {
                to_write: Some(progress_initial),
                unsynced: None,
                written_at: Instant::now() - CHECKPOINT_INTERVAL,
            },
            dropped: (active.base_seq, DATA_OFFSET),
            staged: engine.map(|engine| StagedSyncer {
                engine,
                segment_base_seq: active.base_seq,
                segment_offset_base: end_offset_bytes,
                segment_stream_base: 0,
                direct,
            }),
        };

        let shared = Arc::new(Shared {
            ring,
            write_through,
            caller_commits: config.caller_commits,
            sync_state: Mutex::new(sync_state),
            direct_io,
            backend,
            backend_note,
            segment_size_note,
            dir: dir.clone(),
            storage: storage.clone(),
            durability: config.durability,
            segment_size_bytes: config.segment_size_bytes,
            low_space_threshold_bytes: config.low_space_threshold_bytes,
            zero_fill,
            watermarks,
            progress: Progress::default(),
            failed: AtomicBool::new(false),
            failure: Mutex::new(None),
            low_space: AtomicBool::new(false),
            free_space_bytes: AtomicU64::new(u64::MAX),
            stop: AtomicBool::new(false),
            abandon: AtomicBool::new(false),
            checkpoint_seq_durable: AtomicU64::new(report.seq_durable),
            checkpoint_requested: AtomicBool::new(false),
            segments: Mutex::new(SyncList {
                active: active.clone(),
                sealed_unsynced: Vec::new(),
                dir_unsynced: false,
                roll_marker: None,
            }),
            syncer_idle: AtomicBool::new(false),
            syncer_wake: (Mutex::new(false), Condvar::new()),
            durable_changed: (Mutex::new(()), Condvar::new()),
            spare: Mutex::new(Spare::Requested),
            spare_changed: Condvar::new(),
            spare_wanted: AtomicBool::new(false),
            cursors: Mutex::new(Vec::new()),
            populate_target: (
                Mutex::new(end_offset_bytes + POPULATE_AHEAD_BYTES),
                Condvar::new(),
            ),
        });
        shared.progress.publish(progress_initial);
        shared.check_space()?;

        let core = config.helper_core;
        let syncer = {
            let shared = shared.clone();
            spawn_helper("journal-sync", core, move || syncer_main(&shared))?
        };
        let preallocator = {
            let shared = shared.clone();
            spawn_helper("journal-prealloc", core, move || preallocator_main(&shared))?
        };

        // Prefaulting only helps writes through the mapping.
        let populator = if shared.ring.is_none() && config.prefault == Prefault::Thread {
            let shared = shared.clone();
            Some(spawn_helper("journal-populate", core, move || {
                populator_main(&shared)
            })?)
        } else {
            None
        };

        Ok(Journal {
            populator,
            stream_end: 0,
            hasher_fresh: crc32fast::Hasher::new(),
            spare_failure: None,
            tap: None,
            populate_next_at: end_offset_bytes + POPULATE_CHUNK_BYTES,
            prefaulted_to: end_offset_bytes,
            seal_at: seal_offset(segment_size_bytes),
            active,
            end_offset_bytes,
            seq_next: tail.seq_next,
            chain: tail.chain,
            epoch,
            epoch_segment_last: if tail.segments.is_empty() {
                epoch
            } else {
                tail.epoch
            },
            sealed: tail.sealed,
            record_count: tail.record_count,
            timestamp_ns_first: tail.timestamp_ns_first,
            timestamp_ns_last: tail.timestamp_ns_last,
            record_size_bytes_max: config.record_size_bytes_max,
            journal_id,
            report,
            syncer: Some(syncer),
            preallocator: Some(preallocator),
            _lock: dir_lock,
            shared,
        })
    }

    /// What recovery found and cut when this journal was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.report
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// The lock file held while this writer is open.
    pub fn lock_path(&self) -> &Path {
        &self._lock.path
    }

    pub fn journal_id(&self) -> u128 {
        self.journal_id
    }

    /// The write path in use (`IoUring` may have fallen back to `Pwrite`).
    pub fn backend(&self) -> Backend {
        self.shared.backend
    }

    /// True when staged data is written with O_DIRECT.
    pub fn direct_io(&self) -> bool {
        self.shared.direct_io
    }

    /// Why the requested backend was not used, if it was not.
    pub fn backend_note(&self) -> Option<&str> {
        self.shared.backend_note.as_deref()
    }

    /// Why the segments are not of the configured size (the journal keeps its own), if
    /// they are not.
    pub fn segment_size_note(&self) -> Option<&str> {
        self.shared.segment_size_note.as_deref()
    }

    /// Shared watermarks, for readers and the pipeline.
    pub fn watermarks(&self) -> Arc<Watermarks> {
        self.shared.watermarks.clone()
    }

    /// A handle other threads wait on for the durable point (each sync round wakes it).
    pub fn durable_waiter(&self) -> DurableWaiter {
        DurableWaiter {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Next sequence `append` will assign.
    pub fn seq_next(&self) -> u64 {
        self.seq_next
    }

    /// Chain value after the last appended record.
    pub fn chain(&self) -> u64 {
        self.chain
    }

    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Raises the epoch stamped into later records (promotion). Never lowers it.
    pub fn set_epoch(&mut self, epoch: u32) -> Result<()> {
        if epoch < self.epoch {
            return Err(Error::StaleEpoch {
                epoch,
                epoch_journal: self.epoch,
            });
        }
        self.epoch = epoch;
        Ok(())
    }

    /// Appends one record and returns its sequence. `timestamp_ns` is the caller's (the
    /// journal reads no clock). No allocation, no syscall except when rolling a segment.
    #[inline]
    pub fn append(
        &mut self,
        record_type: u16,
        schema_version: u16,
        timestamp_ns: u64,
        payload: &[u8],
    ) -> Result<u64> {
        self.check_appendable(payload.len())?;
        let size = frame_size(payload.len() as u64);
        self.make_room(size)?;
        let seq = self.seq_next;
        let mut h = FrameHeader {
            payload_len: payload.len() as u32,
            kind: FRAME_KIND_DATA,
            record_type,
            seq,
            timestamp_ns,
            chain_prev: self.chain,
            epoch: self.epoch,
            schema_version,
            crc: 0,
            // What was durable before this frame exists: recovery's proof that damage at
            // or below it is not a torn write (a crash tears only unsynced writes).
            durable_lag: FrameHeader::durable_lag_of(
                seq,
                self.shared.watermarks.durable.load(Ordering::Relaxed),
            ),
        };
        let at = self.end_offset_bytes;
        let pad = (size - FRAME_HEADER_SIZE as u64 - payload.len() as u64) as usize;
        let hdr = if let Some(ring) = &self.shared.ring {
            let p = self.stream_end;
            let unpadded = FRAME_HEADER_SIZE as u64 + payload.len() as u64;
            let mut hdr = h.encode_without_crc();
            ring.write(p, &hdr);
            ring.write(p + FRAME_HEADER_SIZE as u64, payload);
            // The ring holds old bytes: padding is written explicitly.
            ring.write(p + unpadded, &[0u8; 8][..pad]);
            // One CRC pass over header and payload where they now lie together (two when
            // the frame wraps the ring), then the CRC into its field.
            let mut hasher = self.hasher_fresh.clone();
            let (first, second) = ring.slices(p, p + unpadded);
            hasher.update(first);
            hasher.update(second);
            h.crc = hasher.finalize();
            ring.write(p + FRAME_CRC_OFFSET as u64, &h.crc.to_le_bytes());
            hdr[FRAME_CRC_OFFSET..FRAME_CRC_OFFSET + 4].copy_from_slice(&h.crc.to_le_bytes());
            self.stream_end += size;
            hdr
        } else {
            let hdr = h.encode_with_crc_from(&self.hasher_fresh, payload);
            self.write_mapped(at, &hdr, payload, pad);
            hdr
        };
        if let Some(tap) = &self.tap {
            tap.offer(seq, [&hdr, payload, &[0u8; 8][..pad]]);
        }
        Ok(self.appended(&h, at + size))
    }

    /// Appends a frame exactly as another journal holds it (a standby copying its
    /// primary's frames byte for byte): header, payload and padding, as one slice. The
    /// frame must pass every check recovery makes (length, CRC, padding, kind) and follow
    /// this journal: the next sequence, the current chain value, an epoch not below the
    /// last one. Its epoch becomes the journal's.
    pub fn append_replica(&mut self, frame: &[u8]) -> Result<u64> {
        if frame.len() < FRAME_HEADER_SIZE {
            return Err(self.replica_refused(format!("{} bytes is not a frame", frame.len())));
        }
        let h = match check_frame(frame, 0, frame.len() as u64) {
            FrameCheck::Valid(h) if h.kind == FRAME_KIND_DATA => h,
            FrameCheck::Valid(_) => return Err(self.replica_refused("a seal frame".into())),
            FrameCheck::Empty => return Err(self.replica_refused("an empty frame".into())),
            FrameCheck::Invalid(why) => return Err(self.replica_refused(why)),
        };
        let size = frame_size(u64::from(h.payload_len));
        let why = if size != frame.len() as u64 {
            Some(format!(
                "frame of {} bytes in a slice of {}",
                size,
                frame.len()
            ))
        } else if h.seq != self.seq_next {
            Some(format!(
                "sequence {} where {} was expected",
                h.seq, self.seq_next
            ))
        } else if h.chain_prev != self.chain {
            Some("chain value does not link to this journal's last record".into())
        } else if h.epoch < self.epoch_segment_last {
            Some(format!(
                "epoch {} below the journal's {}",
                h.epoch, self.epoch_segment_last
            ))
        } else {
            None
        };
        if let Some(why) = why {
            return Err(self.replica_refused(why));
        }
        self.check_appendable(h.payload_len as usize)?;
        self.make_room(size)?;
        self.epoch = self.epoch.max(h.epoch);
        let at = self.end_offset_bytes;
        let (hdr, rest) = frame.split_at(FRAME_HEADER_SIZE);
        let (payload, padding) = rest.split_at(h.payload_len as usize);
        if let Some(ring) = &self.shared.ring {
            ring.write(self.stream_end, frame);
            self.stream_end += size;
        } else {
            self.write_mapped(
                at,
                hdr.try_into().expect("48 bytes"),
                payload,
                padding.len(),
            );
        }
        if let Some(tap) = &self.tap {
            tap.offer(h.seq, [hdr, payload, padding]);
        }
        Ok(self.appended(&h, at + size))
    }

    fn replica_refused(&self, why: String) -> Error {
        Error::Refused(format!(
            "replicated frame refused by {}: {why}",
            self.shared.dir.display()
        ))
    }

    /// The checks every append makes before it takes a sequence.
    #[inline]
    fn check_appendable(&self, payload_len: usize) -> Result<()> {
        if self.shared.failed.load(Ordering::Relaxed) {
            return Err(self.shared.failure());
        }
        if self.shared.low_space.load(Ordering::Relaxed) {
            return Err(self.shared.low_space_error());
        }
        if payload_len as u64 > u64::from(self.record_size_bytes_max) {
            return Err(Error::RecordTooLarge {
                size_bytes: payload_len as u64,
                size_bytes_max: u64::from(self.record_size_bytes_max),
            });
        }
        Ok(())
    }

    /// Rolls to the next segment when a frame of `size` bytes does not fit, and makes
    /// room in the staging ring.
    #[inline]
    fn make_room(&mut self, size: u64) -> Result<()> {
        if self.sealed || self.end_offset_bytes + size > self.seal_at {
            self.roll()?;
            assert!(self.end_offset_bytes + size <= self.seal_at);
        }
        if let Some(ring) = &self.shared.ring {
            if ring.free(self.stream_end) < size {
                if self.shared.write_through {
                    self.write_staged()?;
                } else {
                    self.wait_ring(size)?;
                }
            }
        }
        Ok(())
    }

    /// The mmap backend's frame write: payload first, header last, so a concurrent reader
    /// that sees the header sees a frame whose CRC it can check.
    #[inline]
    fn write_mapped(&self, at: u64, hdr: &[u8; FRAME_HEADER_SIZE], payload: &[u8], pad: usize) {
        self.active.write(at + FRAME_HEADER_SIZE as u64, payload);
        if pad > 0 {
            self.active.write(
                at + FRAME_HEADER_SIZE as u64 + payload.len() as u64,
                &[0u8; 8][..pad],
            );
        }
        // Other processes read without the watermark: order payload before header.
        fence(Ordering::Release);
        self.active.write(at, hdr);
    }

    /// Bookkeeping after a frame is in place, ending at `end_offset`: the chain, the
    /// segment's counts, the published progress and watermarks. Returns its sequence.
    #[inline]
    fn appended(&mut self, h: &FrameHeader, end_offset: u64) -> u64 {
        let seq = h.seq;
        self.chain = chain_next(self.chain, h.crc, seq);
        self.epoch_segment_last = h.epoch;
        self.end_offset_bytes = end_offset;
        if self.end_offset_bytes >= self.populate_next_at && self.populator.is_some() {
            self.request_populate();
        }
        self.seq_next = seq + 1;
        if self.record_count == 0 {
            self.timestamp_ns_first = h.timestamp_ns;
        }
        self.record_count += 1;
        self.timestamp_ns_last = h.timestamp_ns;
        if self.shared.write_through {
            // Published by `write_staged`, once the bytes are in the file.
            return seq;
        }
        self.publish_progress();
        if self.shared.ring.is_none() {
            // Staged backends: the syncer publishes `written` once the bytes are in the file.
            self.shared.watermarks.written.store(seq, Ordering::Release);
        }
        if self.shared.syncer_commits() {
            // Pairs with the syncer's SeqCst store of `syncer_idle` before it re-checks
            // progress: one of the two sides sees the other.
            fence(Ordering::SeqCst);
            if self.shared.syncer_idle.load(Ordering::Relaxed) {
                self.shared.syncer_idle.store(false, Ordering::Relaxed);
                self.shared.wake_syncer();
            }
        }
        seq
    }

    /// Copies every frame appended from now on into `tap` (for a replicator), or stops
    /// with `None`.
    pub fn set_tap(&mut self, tap: Option<Arc<FrameTap>>) {
        self.tap = tap;
    }

    fn publish_progress(&self) {
        self.shared.progress.publish(ProgressSnapshot {
            seq: self.seq_next - 1,
            chain: self.chain,
            segment_base_seq: self.active.base_seq,
            end_offset_bytes: self.end_offset_bytes,
            epoch: self.epoch,
            stream_end: self.stream_end,
        });
    }

    /// Writing through (`Pwrite` under `Async`): writes the records staged since the last
    /// call into the segment file, with one pwrite on this thread, and advances `written`
    /// over them. From then on they survive a crash of this process, and readers see them.
    /// Call it at the end of each batch, before anyone acts on the batch; `sync`, `commit`
    /// and `close` call it, and so do `append` when the staging ring is full and a segment
    /// roll. Returns `written`. No-op for the other backends (their appends are written, or
    /// the syncer writes them). A failed write is fatal, as a failed sync is; once the
    /// journal has failed, every backend returns the failure here.
    pub fn write_staged(&mut self) -> Result<u64> {
        if self.shared.failed.load(Ordering::Relaxed) {
            return Err(self.shared.failure());
        }
        if !self.shared.write_through {
            return Ok(self.shared.watermarks.written());
        }
        let ring = self.shared.ring.as_ref().expect("write-through stages");
        let flushed = ring.flushed_end.load(Ordering::Relaxed);
        if flushed == self.stream_end {
            return Ok(self.shared.watermarks.written());
        }
        // Rolls write first, so everything staged belongs to the active segment and ends at
        // the append position.
        let len = self.stream_end - flushed;
        assert!(
            len <= self.end_offset_bytes - DATA_OFFSET,
            "staged run spans a roll"
        );
        let offset = self.end_offset_bytes - len;
        let (a, b) = ring.slices(flushed, self.stream_end);
        let result = write_run(
            self.shared.storage.as_ref(),
            &self.active.file,
            offset,
            a,
            b,
        );
        if let Err(e) = result {
            self.shared.fail(format!(
                "write of {len} bytes to {} at offset {offset} failed: {e}",
                self.active.path.display()
            ));
            return Err(self.shared.failure());
        }
        ring.flushed_end.store(self.stream_end, Ordering::Release);
        self.publish_progress();
        let written = self.seq_next - 1;
        self.shared
            .watermarks
            .written
            .store(written, Ordering::Release);
        Ok(written)
    }

    /// `Prefault::Writer`: prefaults up to [`WRITER_PREFAULT_AHEAD_BYTES`] past the append
    /// position, at most [`WRITER_PREFAULT_STEP_BYTES`] per call, so one call stalls the
    /// caller for a bounded time (a few tens of µs here). Call it between batches or when
    /// idle. Returns the bytes prefaulted (0: already ahead, or not the mmap backend).
    pub fn prefault_ahead(&mut self) -> u64 {
        // Only the mmap backend maps pages; with a populate thread, prefaulting is its job.
        if self.shared.ring.is_some() || self.populator.is_some() || self.sealed {
            return 0;
        }
        let start = self
            .prefaulted_to
            .max(self.end_offset_bytes & !(PAGE_BYTES - 1));
        let want = (self.end_offset_bytes + WRITER_PREFAULT_AHEAD_BYTES).min(self.seal_at)
            & !(PAGE_BYTES - 1);
        if start >= want {
            return 0;
        }
        let len = (want - start).min(WRITER_PREFAULT_STEP_BYTES);
        if self.active.populate(start, len).is_err() {
            // Unsupported here (old kernel): stop for this segment; pages fault on write.
            self.prefaulted_to = self.active.size_bytes;
            return 0;
        }
        self.prefaulted_to = start + len;
        len
    }

    #[cold]
    fn request_populate(&mut self) {
        self.populate_next_at = self.end_offset_bytes + POPULATE_CHUNK_BYTES;
        *lock(&self.shared.populate_target.0) = self.end_offset_bytes + POPULATE_AHEAD_BYTES;
        self.shared.populate_target.1.notify_one();
    }

    /// Waits (bounded) until the syncer has written staged bytes so `size` more fit, or,
    /// with `size == 0`, until everything staged is in the file.
    #[cold]
    fn wait_ring(&mut self, size: u64) -> Result<()> {
        let ring = self.shared.ring.as_ref().expect("staged backend");
        let deadline = Instant::now() + Duration::from_secs(30);
        for attempt in 0u64.. {
            let ok = if size == 0 {
                ring.flushed_end.load(Ordering::Acquire) == self.stream_end
            } else {
                ring.free(self.stream_end) >= size
            };
            if ok {
                return Ok(());
            }
            if self.shared.failed.load(Ordering::SeqCst) {
                return Err(self.shared.failure());
            }
            if Instant::now() >= deadline {
                break;
            }
            self.shared.wake_syncer();
            if attempt < 100 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
        Err(Error::Failed {
            reason: "the syncer did not drain the staging ring within 30 s".into(),
        })
    }

    /// Seals the active segment and switches to the preallocated next one.
    #[cold]
    fn roll(&mut self) -> Result<()> {
        if self.shared.ring.is_some() && !self.sealed {
            // Staged: every record of this segment is in the file before the seal.
            if self.shared.write_through {
                self.write_staged()?;
            } else {
                self.wait_ring(0)?;
            }
        }
        if !self.sealed {
            let seal = Seal {
                seq_next: self.seq_next,
                chain: self.chain,
                epoch: self.epoch_segment_last,
                record_count: self.record_count,
                timestamp_ns_first: self.timestamp_ns_first,
                timestamp_ns_last: self.timestamp_ns_last,
                end_offset_bytes: self.end_offset_bytes,
            };
            if self.shared.ring.is_some() {
                self.active
                    .file
                    .write_all_at(&seal.encode(), self.seal_at)
                    .map_err(|e| {
                        Error::io(format!("write seal {}", self.active.path.display()), e)
                    })?;
            } else {
                self.active.write(self.seal_at, &seal.encode());
            }
            self.sealed = true;
        }
        let free = self.shared.check_space()?;
        if free < self.shared.low_space_threshold_bytes {
            return Err(self.shared.low_space_error());
        }
        let spare = self.take_spare()?;
        let header = SegmentHeader {
            journal_id: self.journal_id,
            base_seq: self.seq_next,
            segment_size_bytes: self.shared.segment_size_bytes,
            chain_prev: self.chain,
            epoch: self.epoch,
        };
        let path = segment_path(&self.shared.dir, header.base_seq);
        create_segment_file(
            &self.shared.dir,
            &path,
            &header,
            self.shared.storage.as_ref(),
            Some(spare),
            self.shared.zero_fill,
        )?;
        let segment = Arc::new(Segment::open(
            &path,
            header.base_seq,
            header.segment_size_bytes,
        )?);
        {
            let mut list = lock(&self.shared.segments);
            let old = std::mem::replace(&mut list.active, segment.clone());
            list.roll_marker = Some(RollMarker {
                sealed: old.clone(),
                seq_last: header.base_seq - 1,
                chain: header.chain_prev,
                epoch: header.epoch,
                segment_base_seq: header.base_seq,
            });
            list.sealed_unsynced.push(old);
            list.dir_unsynced = true;
        }
        *lock(&self.shared.spare) = Spare::Requested;
        self.shared.spare_changed.notify_all();
        self.active = segment;
        self.seal_at = seal_offset(header.segment_size_bytes);
        self.end_offset_bytes = DATA_OFFSET;
        self.prefaulted_to = DATA_OFFSET;
        if self.populator.is_some() {
            self.request_populate();
        }
        self.sealed = false;
        self.record_count = 0;
        self.timestamp_ns_first = 0;
        self.timestamp_ns_last = 0;
        self.epoch_segment_last = self.epoch;
        self.shared.progress.publish(ProgressSnapshot {
            seq: self.seq_next - 1,
            chain: self.chain,
            segment_base_seq: self.active.base_seq,
            end_offset_bytes: DATA_OFFSET,
            epoch: self.epoch,
            stream_end: self.stream_end,
        });
        Ok(())
    }

    /// Takes the spare prepared by the preallocator, waiting a bounded time for it.
    /// The error of an append that needs a spare segment it cannot have.
    fn spare_failed(&self, reason: String) -> Error {
        Error::PreallocFailed {
            path: self.shared.dir.join(SPARE_FILE_NAME),
            reason,
        }
    }

    fn take_spare(&mut self) -> Result<File> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut spare = lock(&self.shared.spare);
        loop {
            match std::mem::replace(&mut *spare, Spare::Empty) {
                Spare::Ready(f) => {
                    self.shared.spare_wanted.store(false, Ordering::SeqCst);
                    self.spare_failure = None;
                    return Ok(f);
                }
                Spare::Failed(reason) => {
                    // Ask again: the preallocator retries, and a later append takes the
                    // spare once space is back.
                    *spare = Spare::Requested;
                    self.shared.spare_changed.notify_all();
                    self.spare_failure = Some(reason.clone());
                    return Err(self.spare_failed(reason));
                }
                Spare::Empty => {
                    *spare = Spare::Requested;
                    self.shared.spare_changed.notify_all();
                }
                Spare::Requested => *spare = Spare::Requested,
            }
            // A retry after a failure is under way: refuse now. Waiting for it made every
            // append wait for the preallocator (a low-priority thread) while the disk
            // stayed full: seconds per refused command under load.
            if let Some(reason) = &self.spare_failure {
                return Err(self.spare_failed(reason.clone()));
            }
            self.shared.spare_wanted.store(true, Ordering::SeqCst);
            let now = Instant::now();
            if now >= deadline {
                return Err(self.spare_failed("timed out waiting for the preallocator".into()));
            }
            spare = self
                .shared
                .spare_changed
                .wait_timeout(spare, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Blocks until `durable >= seq`, the writer fails, or `timeout` passes. Ok(false) on
    /// timeout.
    pub fn wait_durable(&self, seq: u64, timeout: Duration) -> Result<bool> {
        wait_durable(&self.shared, seq, timeout)
    }

    /// Asks the syncer for a sync now (in `async` mode too) and waits for it to cover
    /// everything written so far.
    pub fn sync(&mut self) -> Result<()> {
        self.write_staged()?;
        let target = self.seq_next - 1;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut guard = lock(&self.shared.durable_changed.0);
        // Bounded by the deadline; each pass waits at most 10 ms.
        for _ in 0..10_000 {
            if self.shared.failed.load(Ordering::SeqCst) {
                return Err(self.shared.failure());
            }
            if self.shared.watermarks.durable() >= target
                && self.shared.checkpoint_seq_durable.load(Ordering::Acquire) >= target
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                break;
            }
            drop(guard);
            self.shared
                .checkpoint_requested
                .store(true, Ordering::Release);
            self.shared.wake_syncer();
            guard = lock(&self.shared.durable_changed.0);
            guard = self
                .shared
                .durable_changed
                .1
                .wait_timeout(guard, Duration::from_millis(10))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Err(Error::Failed {
            reason: "sync did not complete within 60 s".into(),
        })
    }

    /// Group commit in the calling thread: makes every record appended so far durable and
    /// returns the durable watermark. For a pipeline thread that journals a batch and
    /// must see it durable before applying it (no hand-off to the syncer thread). A failure
    /// is fatal, as for the syncer.
    pub fn commit(&mut self) -> Result<u64> {
        self.write_staged()?;
        let target = self.seq_next - 1;
        if self.shared.watermarks.durable() >= target {
            return Ok(self.shared.watermarks.durable());
        }
        let mut st = lock(&self.shared.sync_state);
        if self.shared.failed.load(Ordering::SeqCst) {
            return Err(self.shared.failure());
        }
        if self.shared.watermarks.durable() < target {
            if let Err(reason) = sync_round(&self.shared, &mut st) {
                self.shared.fail(reason);
                return Err(self.shared.failure());
            }
        }
        let durable = self.shared.watermarks.durable();
        debug_assert!(durable >= target);
        Ok(durable)
    }

    /// Stops the helper threads without the final sync, as a crash would, and releases the
    /// lock. What was appended stays in the page cache. For crash tests and drills.
    pub fn abandon(mut self) {
        self.shared.abandon.store(true, Ordering::SeqCst);
        self.stop_threads();
    }

    /// Whether the next segment is prepared (a roll would not wait for, or be refused
    /// for want of, its preallocation).
    pub fn spare_ready(&self) -> bool {
        matches!(*lock(&self.shared.spare), Spare::Ready(_))
    }

    /// Re-reads free space now (it is also refreshed on every roll and by the syncer).
    pub fn check_space(&self) -> Result<u64> {
        self.shared.check_space()
    }

    /// Registers a reader position for pruning: segments holding sequences at or above the
    /// cursor's value are kept. Dropping the returned handle unregisters it.
    pub fn register_cursor(&self, seq_next_needed: u64) -> Arc<AtomicU64> {
        let c = Arc::new(AtomicU64::new(seq_next_needed));
        let mut cursors = lock(&self.shared.cursors);
        cursors.retain(|w| w.strong_count() > 0);
        cursors.push(Arc::downgrade(&c));
        c
    }

    pub(crate) fn cursor_min(&self) -> Option<u64> {
        let cursors = lock(&self.shared.cursors);
        cursors
            .iter()
            .filter_map(Weak::upgrade)
            .map(|c| c.load(Ordering::Acquire))
            .min()
    }

    /// Removes segments that lie entirely before the oldest retained snapshot and before
    /// every registered cursor. Never the active segment. With `dry_run`, only reports.
    pub fn prune(&self, snapshots: &SnapshotStore, dry_run: bool) -> Result<PruneReport> {
        let mut report = PruneReport {
            dry_run,
            seq_keep_from: 0,
            segments: Vec::new(),
        };
        let Some(snapshot_seq) = snapshots.seq_oldest()? else {
            return Ok(report); // no snapshot: every record is needed for replay
        };
        let keep_from = match self.cursor_min() {
            Some(c) => c.min(snapshot_seq + 1),
            None => snapshot_seq + 1,
        };
        report.seq_keep_from = keep_from;
        let segments = list_segments(&self.shared.dir)?;
        for pair in segments.windows(2) {
            let (seg, next) = (&pair[0], &pair[1]);
            if next.base_seq > keep_from || seg.base_seq >= self.active.base_seq {
                break;
            }
            let size_bytes = std::fs::metadata(&seg.path).map_or(0, |m| m.len());
            report.segments.push(PrunedSegment {
                path: seg.path.clone(),
                base_seq: seg.base_seq,
                seq_last: next.base_seq - 1,
                size_bytes,
            });
        }
        if !dry_run && !report.segments.is_empty() {
            for s in &report.segments {
                std::fs::remove_file(&s.path)
                    .map_err(|e| Error::io(format!("remove {}", s.path.display()), e))?;
            }
            self.shared
                .storage
                .sync_dir(&self.shared.dir)
                .map_err(|e| {
                    Error::io(format!("fsync directory {}", self.shared.dir.display()), e)
                })?;
        }
        Ok(report)
    }

    /// Makes everything durable and stops the helper threads.
    pub fn close(mut self) -> Result<()> {
        let result = if self.shared.failed.load(Ordering::SeqCst) {
            Err(self.shared.failure())
        } else {
            self.sync()
        };
        self.stop_threads();
        result
    }

    fn stop_threads(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.wake_syncer();
        self.shared.spare_changed.notify_all();
        if let Some(h) = self.syncer.take() {
            let _ = h.join();
        }
        if let Some(h) = self.preallocator.take() {
            let _ = h.join();
        }
        self.shared.populate_target.1.notify_all();
        if let Some(h) = self.populator.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

/// Waits for the journal's durable point from a thread that is not the writer: a standby
/// acknowledges each sync round as it completes instead of polling the watermark.
#[derive(Clone)]
pub struct DurableWaiter {
    shared: Arc<Shared>,
}

impl DurableWaiter {
    /// Blocks until `durable >= seq`, the writer fails, or `timeout` passes. Ok(false) on
    /// timeout.
    pub fn wait(&self, seq: u64, timeout: Duration) -> Result<bool> {
        wait_durable(&self.shared, seq, timeout)
    }
}

fn wait_durable(shared: &Shared, seq: u64, timeout: Duration) -> Result<bool> {
    let deadline = Instant::now() + timeout;
    let mut guard = lock(&shared.durable_changed.0);
    loop {
        if shared.watermarks.durable() >= seq {
            return Ok(true);
        }
        if shared.failed.load(Ordering::SeqCst) {
            return Err(shared.failure());
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        guard = shared
            .durable_changed
            .1
            .wait_timeout(guard, (deadline - now).min(Duration::from_millis(10)))
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

/// Whether segment `i` (of segments starting at `bases`, in order) must be fdatasynced
/// when a journal opens with `seq_durable` its last checkpointed record: when it holds a
/// record past that point (its successor starts after the record after it, or it has
/// none), and the last two in any case (a seal may have been written and not synced).
fn needs_sync_at_open(bases: &[u64], i: usize, seq_durable: u64) -> bool {
    debug_assert!(i < bases.len());
    let past_durable = bases.get(i + 1).is_none_or(|&next| next > seq_durable + 1);
    past_durable || i + 2 >= bases.len()
}

#[cfg(test)]
mod open_sync_tests {
    use super::needs_sync_at_open;

    #[test]
    fn opening_syncs_every_segment_with_records_past_the_durable_point() {
        // Segments start at 1, 36, 71, 106, 141; the checkpoint says 30 is durable.
        let bases = [1, 36, 71, 106, 141];
        let synced = |durable| -> Vec<usize> {
            (0..bases.len())
                .filter(|&i| needs_sync_at_open(&bases, i, durable))
                .collect()
        };
        // The first holds 31..=35, past the durable point, though later ones follow.
        assert_eq!(synced(30), vec![0, 1, 2, 3, 4]);
        // Durable through 35: the first is complete.
        assert_eq!(synced(35), vec![1, 2, 3, 4]);
        // Durable through 70: the first two are complete; the last two always sync.
        assert_eq!(synced(70), vec![2, 3, 4]);
        assert_eq!(synced(200), vec![3, 4]);
    }
}
