//! A tap on the writer: every frame the journal appends, copied as it is appended into a
//! bounded single-producer/single-consumer byte ring, for a replicator that ships frames
//! to a standby while the writer's own sync runs (so the standby's write and the primary's
//! overlap, as the journaler and replicator of the LMAX design do).
//!
//! The writer never waits for the tap. When the consumer falls behind and a frame does not
//! fit, the tap *detaches*: the writer stops copying (one relaxed load per append from
//! then on) and the consumer catches up from the journal's files. It then asks to
//! *reattach*; the writer starts copying again at its next append
//! ([`FrameTap::seq_attached`]), and the consumer reads the files up to the sequence
//! before it, so the stream has no seam and no gap.

use std::cell::UnsafeCell;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::format::{frame_size, get_u32, get_u64, FRAME_HEADER_SIZE};

/// Tap states, in `FrameTap::state`.
const ATTACHED: u64 = 0;
const DETACHED: u64 = 1;
const REATTACH_WANTED: u64 = 2;

/// The frame copy ring. Positions are byte counts since creation; byte `p` lives at
/// `p % capacity`.
pub struct FrameTap {
    buf: Box<[UnsafeCell<u8>]>,
    capacity: u64,
    /// Bytes published by the writer (Release after the bytes are in).
    write_pos: AtomicU64,
    /// Bytes consumed (Release after the consumer is done with them).
    read_pos: AtomicU64,
    state: AtomicU64,
    /// First sequence copied after the last (re)attach (written before `write_pos`
    /// publishes that frame).
    seq_attached: AtomicU64,
    /// The consumer is parked in [`FrameTap::wait`]: [`FrameTap::ring`] wakes it.
    consumer_parked: AtomicBool,
    consumer: Mutex<Option<std::thread::Thread>>,
}

// SAFETY: the writer only writes free positions `[write_pos, read_pos + capacity)` before
// publishing them with `write_pos` (Release); the consumer only reads published
// `[read_pos, write_pos)` (Acquire) and frees them with `read_pos` (Release).
unsafe impl Sync for FrameTap {}
unsafe impl Send for FrameTap {}

/// What the consumer finds.
#[derive(Debug, PartialEq, Eq)]
pub enum TapRead {
    /// Nothing new.
    Empty,
    /// Whole frames, `count` of them from sequence `seq_first`: call
    /// [`FrameTap::consume`] with `bytes` when done with them.
    Frames {
        seq_first: u64,
        count: u32,
        bytes_len: usize,
    },
    /// The tap is detached (it fell behind, or never attached): read the journal's files.
    /// After [`FrameTap::reattach`], the first frames read start at
    /// [`FrameTap::seq_attached`]; everything before it comes from the files.
    Detached,
}

impl FrameTap {
    /// A tap holding at most `capacity` bytes (a power of two, at least 64 KiB), created
    /// detached: the consumer reattaches it once it has caught up.
    pub fn new(capacity: u64) -> FrameTap {
        assert!(capacity >= 64 << 10 && capacity.is_power_of_two());
        // Zeroed in one allocation (byte by byte, 16 MiB takes a second in a debug build).
        let bytes = vec![0u8; capacity as usize].into_boxed_slice();
        // SAFETY: `UnsafeCell<u8>` is `repr(transparent)` over `u8`: the same layout, so
        // the slice of zero bytes is a valid slice of cells of the same length.
        let buf = unsafe { Box::from_raw(Box::into_raw(bytes) as *mut [UnsafeCell<u8>]) };
        FrameTap {
            buf,
            capacity,
            write_pos: AtomicU64::new(0),
            read_pos: AtomicU64::new(0),
            state: AtomicU64::new(DETACHED),
            seq_attached: AtomicU64::new(0),
            consumer_parked: AtomicBool::new(false),
            consumer: Mutex::new(None),
        }
    }

    /// Writer's side, once per batch: wakes a consumer parked in [`FrameTap::wait`]. One
    /// atomic load when nobody waits.
    #[inline]
    pub fn ring(&self) {
        fence(Ordering::SeqCst);
        if self.consumer_parked.load(Ordering::Relaxed) {
            if let Some(t) = self
                .consumer
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
            {
                t.unpark();
            }
        }
    }

    /// Consumer: sleeps until a frame is published (and the writer rings) or `timeout`
    /// passes. Returns at once when frames wait.
    pub fn wait(&self, timeout: Duration) {
        *self.consumer.lock().unwrap_or_else(|e| e.into_inner()) = Some(std::thread::current());
        self.consumer_parked.store(true, Ordering::Relaxed);
        // Pairs with the fence in `ring`: either the writer sees the flag, or this sees
        // the frame.
        fence(Ordering::SeqCst);
        if self.write_pos.load(Ordering::Acquire) == self.read_pos.load(Ordering::Relaxed) {
            std::thread::park_timeout(timeout);
        }
        self.consumer_parked.store(false, Ordering::Relaxed);
    }

    fn ptr(&self) -> *mut u8 {
        UnsafeCell::raw_get(self.buf.as_ptr())
    }

    fn copy_in(&self, at: u64, bytes: &[u8]) {
        let start = (at % self.capacity) as usize;
        let first = bytes.len().min(self.capacity as usize - start);
        // SAFETY: in bounds; the range is free and unpublished (see the Sync comment).
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

    /// Writer: offers the frame of `seq` made of `parts` (header, payload, padding).
    /// Copies it when attached and there is room; otherwise detaches and drops it.
    #[inline]
    pub(crate) fn offer(&self, seq: u64, parts: [&[u8]; 3]) {
        let state = self.state.load(Ordering::Relaxed);
        if state == DETACHED {
            return;
        }
        let len: u64 = parts.iter().map(|p| p.len() as u64).sum();
        let w = self.write_pos.load(Ordering::Relaxed);
        let free = self.capacity - (w - self.read_pos.load(Ordering::Acquire));
        if len > free {
            self.state.store(DETACHED, Ordering::Release);
            return;
        }
        if state == REATTACH_WANTED {
            // Published before the frame: a consumer that sees the frame sees this. A
            // consumer's detach meanwhile wins.
            self.seq_attached.store(seq, Ordering::Relaxed);
            if self
                .state
                .compare_exchange(
                    REATTACH_WANTED,
                    ATTACHED,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_err()
            {
                return;
            }
        }
        let mut at = w;
        for p in parts {
            self.copy_in(at, p);
            at += p.len() as u64;
        }
        self.write_pos.store(at, Ordering::Release);
    }

    /// Consumer: asks the writer to start copying again at its next append. Forgets the
    /// sequence of the previous attach.
    pub fn reattach(&self) {
        // Only the consumer moves the tap out of DETACHED, so the writer cannot store a
        // new `seq_attached` before the exchange below.
        if self.state.load(Ordering::Acquire) != DETACHED {
            return;
        }
        self.seq_attached.store(0, Ordering::Release);
        let _ = self.state.compare_exchange(
            DETACHED,
            REATTACH_WANTED,
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
    }

    /// Consumer: detaches (no standby to ship to); the writer stops copying.
    pub fn detach(&self) {
        self.state.store(DETACHED, Ordering::Release);
    }

    /// Consumer: the first sequence copied since the last (re)attach, once the writer has
    /// reattached (0 before).
    pub fn seq_attached(&self) -> u64 {
        self.seq_attached.load(Ordering::Acquire)
    }

    /// Consumer: whole frames published and not consumed, up to `max_bytes` (at least one
    /// frame when any is there), copied into `out` (cleared first).
    pub fn read(&self, out: &mut Vec<u8>, max_bytes: usize) -> TapRead {
        out.clear();
        let r = self.read_pos.load(Ordering::Relaxed);
        let w = self.write_pos.load(Ordering::Acquire);
        if r == w {
            return match self.state.load(Ordering::Acquire) {
                DETACHED => TapRead::Detached,
                _ => TapRead::Empty,
            };
        }
        let mut at = r;
        let mut count = 0u32;
        let mut seq_first = 0u64;
        let mut header = [0u8; FRAME_HEADER_SIZE];
        // Each step takes one whole frame: at most one per 48 bytes published.
        let frames_max = (w - r) / FRAME_HEADER_SIZE as u64 + 1;
        for _ in 0..frames_max {
            if at >= w {
                break;
            }
            self.copy_out(at, &mut header);
            let size = frame_size(u64::from(get_u32(&header, 0)));
            assert!(at + size <= w, "the writer publishes whole frames");
            if count > 0 && (at - r + size) as usize > max_bytes {
                break;
            }
            if count == 0 {
                seq_first = get_u64(&header, 8);
            }
            let start = out.len();
            out.resize(start + size as usize, 0);
            self.copy_out(at, &mut out[start..]);
            at += size;
            count += 1;
        }
        TapRead::Frames {
            seq_first,
            count,
            bytes_len: out.len(),
        }
    }

    fn copy_out(&self, at: u64, into: &mut [u8]) {
        let start = (at % self.capacity) as usize;
        let first = into.len().min(self.capacity as usize - start);
        // SAFETY: in bounds; the range is published and not yet freed.
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr().add(start), into.as_mut_ptr(), first);
            if first < into.len() {
                std::ptr::copy_nonoverlapping(
                    self.ptr(),
                    into.as_mut_ptr().add(first),
                    into.len() - first,
                );
            }
        }
    }

    /// Consumer: frees `bytes_len` bytes returned by [`FrameTap::read`].
    pub fn consume(&self, bytes_len: usize) {
        let r = self.read_pos.load(Ordering::Relaxed);
        assert!(r + bytes_len as u64 <= self.write_pos.load(Ordering::Acquire));
        self.read_pos.store(r + bytes_len as u64, Ordering::Release);
    }

    /// Consumer: true when the writer copies frames.
    pub fn attached(&self) -> bool {
        self.state.load(Ordering::Acquire) == ATTACHED
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seq: u64, payload_len: u32) -> Vec<u8> {
        let mut h = [0u8; FRAME_HEADER_SIZE];
        h[0..4].copy_from_slice(&payload_len.to_le_bytes());
        h[4] = 1;
        h[8..16].copy_from_slice(&seq.to_le_bytes());
        let mut f = h.to_vec();
        f.extend((0..payload_len).map(|i| (seq as u32 + i) as u8));
        f.resize(frame_size(u64::from(payload_len)) as usize, 0);
        f
    }

    fn offer(tap: &FrameTap, seq: u64, len: u32) {
        let f = frame(seq, len);
        tap.offer(seq, [&f[..48], &f[48..], &[]]);
    }

    #[test]
    fn a_new_tap_is_detached_until_the_consumer_reattaches() {
        let tap = FrameTap::new(64 << 10);
        offer(&tap, 1, 10);
        let mut out = Vec::new();
        assert_eq!(tap.read(&mut out, 1 << 20), TapRead::Detached);
        tap.reattach();
        assert_eq!(tap.read(&mut out, 1 << 20), TapRead::Empty);
        offer(&tap, 2, 10);
        offer(&tap, 3, 20);
        assert_eq!(tap.seq_attached(), 2);
        match tap.read(&mut out, 1 << 20) {
            TapRead::Frames {
                seq_first,
                count,
                bytes_len,
            } => {
                assert_eq!((seq_first, count), (2, 2));
                let mut want = frame(2, 10);
                want.extend(frame(3, 20));
                assert_eq!(out, want);
                tap.consume(bytes_len);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(tap.read(&mut out, 1 << 20), TapRead::Empty);
    }

    #[test]
    fn a_consumer_that_falls_behind_detaches_the_tap_and_reattaches_without_a_gap() {
        let tap = FrameTap::new(64 << 10);
        tap.reattach();
        let mut seq = 1;
        // Fill past capacity: the tap detaches at the first frame that does not fit.
        while tap.attached() || seq == 1 {
            offer(&tap, seq, 1000);
            seq += 1;
        }
        let dropped_first = seq - 1;
        let mut out = Vec::new();
        let mut got = Vec::new();
        for _ in 0..10_000 {
            match tap.read(&mut out, 8 << 10) {
                TapRead::Frames {
                    seq_first,
                    count,
                    bytes_len,
                } => {
                    got.extend(seq_first..seq_first + u64::from(count));
                    tap.consume(bytes_len);
                }
                TapRead::Detached => break,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(got, (1..dropped_first).collect::<Vec<_>>());
        // Frames go on being dropped until the consumer asks again.
        offer(&tap, seq, 1000);
        seq += 1;
        tap.reattach();
        offer(&tap, seq, 1000);
        assert_eq!(tap.seq_attached(), seq);
        match tap.read(&mut out, 1 << 20) {
            TapRead::Frames { seq_first, .. } => assert_eq!(seq_first, seq),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn frames_wrap_the_ring_intact_across_threads() {
        let tap = std::sync::Arc::new(FrameTap::new(64 << 10));
        tap.reattach();
        let n = 20_000u64;
        let writer = {
            let tap = tap.clone();
            std::thread::spawn(move || {
                let mut seq = 1;
                // Bounded: the consumer keeps up or the tap detaches.
                for _ in 0..10_000_000u64 {
                    if seq > n {
                        break;
                    }
                    let free = tap.capacity
                        - (tap.write_pos.load(Ordering::Relaxed)
                            - tap.read_pos.load(Ordering::Acquire));
                    if free < 2048 {
                        std::thread::yield_now();
                        continue;
                    }
                    offer(&tap, seq, (seq % 300) as u32 + 1);
                    seq += 1;
                }
            })
        };
        let mut out = Vec::new();
        let mut next = 1u64;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while next <= n && std::time::Instant::now() < deadline {
            if let TapRead::Frames {
                seq_first,
                count,
                bytes_len,
            } = tap.read(&mut out, 4096)
            {
                assert_eq!(seq_first, next);
                let mut at = 0;
                for s in seq_first..seq_first + u64::from(count) {
                    let f = frame(s, (s % 300) as u32 + 1);
                    assert_eq!(&out[at..at + f.len()], &f[..], "frame {s}");
                    at += f.len();
                }
                next += u64::from(count);
                tap.consume(bytes_len);
            }
        }
        writer.join().unwrap();
        assert_eq!(next, n + 1);
    }
}
