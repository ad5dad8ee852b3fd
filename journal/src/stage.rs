//! Staged write backends: the writer copies frames into an in-memory ring. In `group` mode
//! the syncer (or the committing thread) writes them to the segment file with `pwrite` +
//! `fdatasync`, or with one io_uring submission (write linked to an fdatasync); in `async`
//! mode the writer writes them itself, a batch per pwrite (`Journal::write_staged`). The
//! file is never written through a mapping in these modes.

use std::cell::UnsafeCell;
use std::fs::File;
use std::io;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::storage::Storage;

/// Which write path a journal uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The default: `Pwrite` for `Async`; for `Group`, `IoUring` (with `direct_io` as
    /// configured), or `Pwrite` (likewise) when the caller commits.
    Auto,
    /// Writes through a shared mapping; syncs with fdatasync. Both durability modes.
    Mmap,
    /// Staged ring. `Group`: `pwrite` + `fdatasync` by the syncer (or the committing
    /// thread). `Async`: writes through, with one pwrite per batch by the writer
    /// (`Journal::write_staged`); the syncer fdatasyncs every flush interval.
    Pwrite,
    /// Staged ring, io_uring write linked to fdatasync (group mode only). Falls back to
    /// `Pwrite` when io_uring is unavailable or forbidden; `Journal::backend()` says which.
    IoUring,
}

/// Writes a staged run, `a` then `b` (its second half when it wraps the ring), at
/// `offset`, through `storage` (so tests inject write faults).
pub(crate) fn write_run(
    storage: &dyn Storage,
    file: &File,
    offset: u64,
    a: &[u8],
    b: &[u8],
) -> io::Result<()> {
    storage.write_all_at(file, a, offset)?;
    if !b.is_empty() {
        storage.write_all_at(file, b, offset + a.len() as u64)?;
    }
    Ok(())
}

/// The pwrite engine's commit: the run at `offset`, then fdatasync.
fn pwrite_and_sync(
    storage: &dyn Storage,
    file: &File,
    offset: u64,
    a: &[u8],
    b: &[u8],
) -> io::Result<()> {
    write_run(storage, file, offset, a, b)?;
    storage.sync_data(file)
}

/// Waits for one write + fdatasync pair's completions, each pass ended by a completion
/// or a signal: far more than any real run needs.
const IO_URING_WAIT_PASSES_MAX: u32 = 1_000_000;

/// Single-producer (writer) / single-consumer (syncer) byte ring addressed by stream
/// position (bytes staged since open, across segments): byte `p` lives at `p % capacity`.
pub(crate) struct Ring {
    buf: Box<[UnsafeCell<u8>]>,
    capacity: u64,
    /// Stream position up to which bytes were handed to the file (the syncer's; Release).
    pub flushed_end: AtomicU64,
}

// SAFETY: the writer only writes `[flushed_end, end)` positions it has not published; the
// syncer only reads published `[flushed_end, published_end)`. Publication is by the
// progress seqlock (Release/Acquire); freeing is by `flushed_end` (Release/Acquire).
unsafe impl Sync for Ring {}
unsafe impl Send for Ring {}

impl Ring {
    pub fn new(capacity: u64) -> Ring {
        assert!(capacity >= 4096 && capacity.is_power_of_two());
        let buf = (0..capacity)
            .map(|_| UnsafeCell::new(0u8))
            .collect::<Vec<_>>()
            .into_boxed_slice();
        Ring {
            buf,
            capacity,
            flushed_end: AtomicU64::new(0),
        }
    }

    fn ptr(&self) -> *mut u8 {
        UnsafeCell::raw_get(self.buf.as_ptr())
    }

    /// Free bytes for a writer whose next offset is `end`.
    #[inline]
    pub fn free(&self, end: u64) -> u64 {
        let flushed = self.flushed_end.load(Ordering::Acquire);
        debug_assert!(end >= flushed);
        self.capacity - (end - flushed)
    }

    /// Writer side: copy `bytes` to segment offset `offset` (wrapping).
    #[inline]
    pub fn write(&self, offset: u64, bytes: &[u8]) {
        let start = (offset % self.capacity) as usize;
        let first = bytes.len().min(self.capacity as usize - start);
        // SAFETY: in bounds by construction; the range is free (see the Sync comment).
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr().add(start), first);
            if first < bytes.len() {
                std::ptr::copy_nonoverlapping(
                    bytes.as_ptr().add(first),
                    self.ptr(),
                    bytes.len() - first,
                );
            }
        }
    }

    /// The bytes `[from, to)` as at most two slices: the syncer's published ones, or the
    /// writer's own not yet published (to checksum a frame in place).
    pub fn slices(&self, from: u64, to: u64) -> (&[u8], &[u8]) {
        assert!(to >= from && to - from <= self.capacity);
        let start = (from % self.capacity) as usize;
        let len = (to - from) as usize;
        let first = len.min(self.capacity as usize - start);
        // SAFETY: published bytes are not written again until `flushed_end` passes them.
        unsafe {
            (
                std::slice::from_raw_parts(self.ptr().add(start), first),
                std::slice::from_raw_parts(self.ptr(), len - first),
            )
        }
    }
}

/// The syncer's I/O engine for staged backends.
pub(crate) enum Engine {
    Pwrite,
    IoUring(Box<io_uring::IoUring>),
}

impl Engine {
    /// io_uring if it can be set up and supports write + fsync here; otherwise pwrite with
    /// the reason.
    pub fn detect(want_uring: bool) -> (Engine, Option<String>) {
        if !want_uring {
            return (Engine::Pwrite, None);
        }
        match io_uring::IoUring::new(8) {
            Err(e) => (
                Engine::Pwrite,
                Some(format!("io_uring unavailable ({e}); using pwrite")),
            ),
            Ok(ring) => {
                let mut probe = io_uring::Probe::new();
                if ring.submitter().register_probe(&mut probe).is_err()
                    || !probe.is_supported(io_uring::opcode::Writev::CODE)
                    || !probe.is_supported(io_uring::opcode::Fsync::CODE)
                {
                    return (
                        Engine::Pwrite,
                        Some("io_uring lacks writev/fsync here; using pwrite".into()),
                    );
                }
                (Engine::IoUring(Box::new(ring)), None)
            }
        }
    }

    /// Writes `a` then `b` at `offset`, then fdatasyncs `file`. The pwrite engine writes
    /// and syncs through `storage` (so faults inject); io_uring's own operations do not.
    pub fn write_and_sync(
        &mut self,
        storage: &dyn Storage,
        file: &File,
        offset: u64,
        a: &[u8],
        b: &[u8],
    ) -> io::Result<()> {
        match self {
            Engine::Pwrite => pwrite_and_sync(storage, file, offset, a, b),
            Engine::IoUring(ring) => {
                let iov = [
                    libc::iovec {
                        iov_base: a.as_ptr() as *mut libc::c_void,
                        iov_len: a.len(),
                    },
                    libc::iovec {
                        iov_base: b.as_ptr() as *mut libc::c_void,
                        iov_len: b.len(),
                    },
                ];
                let fd = io_uring::types::Fd(file.as_raw_fd());
                let total = a.len() + b.len();
                let iov_count = if b.is_empty() { 1 } else { 2 };
                let write = io_uring::opcode::Writev::new(fd, iov.as_ptr(), iov_count)
                    .offset(offset)
                    .build()
                    .flags(io_uring::squeue::Flags::IO_LINK)
                    .user_data(1);
                let fsync = io_uring::opcode::Fsync::new(fd)
                    .flags(io_uring::types::FsyncFlags::DATASYNC)
                    .build()
                    .user_data(2);
                // SAFETY: the iovecs and buffers outlive the submission: we wait for both
                // completions below before returning.
                unsafe {
                    let mut sq = ring.submission();
                    sq.push(&write)
                        .map_err(|_| io::Error::other("io_uring submission queue full"))?;
                    sq.push(&fsync)
                        .map_err(|_| io::Error::other("io_uring submission queue full"))?;
                }
                // The first call submits both entries; the kernel may return before they
                // complete when a signal arrives (it reports the submission, not the
                // interrupted wait), so wait until both completions are in. The buffers
                // must outlive the I/O: no return in between except a failed submission.
                let mut results = [None, None];
                let mut collected = 0;
                for pass in 0..IO_URING_WAIT_PASSES_MAX {
                    match ring.submit_and_wait(2 - collected) {
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) if pass == 0 => return Err(e),
                        Err(e) => {
                            eprintln!(
                                "ringex-journal: io_uring wait failed with I/O in flight: {e}"
                            );
                            std::process::abort();
                        }
                    }
                    for cqe in ring.completion() {
                        let slot = (cqe.user_data() as usize).wrapping_sub(1);
                        if slot < 2 && results[slot].is_none() {
                            results[slot] = Some(cqe.result());
                            collected += 1;
                        }
                    }
                    if collected == 2 {
                        break;
                    }
                }
                if collected < 2 {
                    // Only a signal storm gets here; the I/O may still use the buffers.
                    eprintln!("ringex-journal: io_uring completions never arrived");
                    std::process::abort();
                }
                // A signal can cancel the linked fdatasync (seen: -ECANCELED after a full
                // write) or the write before it ran. Neither is an I/O error, and both
                // operations may be repeated: finish this one the plain way. (EIO and
                // the like stay fatal: after a failed fdatasync the cache's state is
                // unknown.)
                let interrupted = |r: i32| r == -libc::ECANCELED || r == -libc::EINTR;
                if let [Some(w), Some(s)] = results {
                    if interrupted(w) || (w as usize == total && interrupted(s)) {
                        return pwrite_and_sync(storage, file, offset, a, b);
                    }
                }
                match results {
                    [Some(w), Some(s)] => {
                        if w < 0 {
                            return Err(io::Error::from_raw_os_error(-w));
                        }
                        if w as usize != total {
                            return Err(io::Error::other(format!(
                                "short write: {w} of {total} bytes"
                            )));
                        }
                        if s < 0 {
                            return Err(io::Error::from_raw_os_error(-s));
                        }
                        Ok(())
                    }
                    _ => Err(io::Error::other("io_uring completions missing")),
                }
            }
        }
    }
}
