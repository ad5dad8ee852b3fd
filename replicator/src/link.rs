//! What the primary's pipeline sees of its standby: the acknowledged sequences, whether a
//! standby is attached, and how far behind it is. Written by the replication threads,
//! read by the pipeline (which, in `sync` mode, waits for `durable` before applying) and
//! by the metrics.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Link {
    started: Instant,
    /// A standby finished its handshake and is being streamed to.
    connected: AtomicBool,
    /// Highest sequences the standby acknowledged: received, durable on its disk,
    /// applied to its engine.
    received: AtomicU64,
    durable: AtomicU64,
    applied: AtomicU64,
    /// Highest sequence sent to the standby.
    sent: AtomicU64,
    /// When the last acknowledgement arrived (ms since `started`; 0: never).
    ack_at_ms: AtomicU64,
    /// Standbys that connected since start.
    connections: AtomicU64,
    /// The epoch of a standby that said it is newer than this primary (0: none): this
    /// node is fenced and must not take orders.
    fenced_by_epoch: AtomicU64,
    changed: (Mutex<()>, Condvar),
}

impl Default for Link {
    fn default() -> Link {
        Link::new()
    }
}

impl Link {
    pub fn new() -> Link {
        Link {
            started: Instant::now(),
            connected: AtomicBool::new(false),
            received: AtomicU64::new(0),
            durable: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            ack_at_ms: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            fenced_by_epoch: AtomicU64::new(0),
            changed: (Mutex::new(()), Condvar::new()),
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    pub fn durable(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Acquire)
    }

    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Acquire)
    }

    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// How long since the standby last acknowledged anything (None: never).
    pub fn since_ack(&self) -> Option<Duration> {
        match self.ack_at_ms.load(Ordering::Acquire) {
            0 => None,
            at => Some(Duration::from_millis(self.now_ms().saturating_sub(at))),
        }
    }

    /// The newer epoch that fenced this primary, if one did.
    pub fn fenced_by(&self) -> Option<u32> {
        match self.fenced_by_epoch.load(Ordering::Acquire) {
            0 => None,
            e => Some(e as u32),
        }
    }

    pub(crate) fn set_connected(&self, on: bool) {
        if on {
            self.connections.fetch_add(1, Ordering::Relaxed);
        }
        self.connected.store(on, Ordering::Release);
        self.notify();
    }

    pub(crate) fn set_sent(&self, seq: u64) {
        self.sent.store(seq, Ordering::Release);
    }

    pub(crate) fn fence(&self, epoch: u32) {
        self.fenced_by_epoch
            .fetch_max(u64::from(epoch), Ordering::AcqRel);
        self.notify();
    }

    /// An acknowledgement arrived. Sequences only move forward.
    pub(crate) fn ack(&self, received: u64, durable: u64, applied: u64) {
        self.received.fetch_max(received, Ordering::AcqRel);
        self.applied.fetch_max(applied, Ordering::AcqRel);
        self.ack_at_ms
            .store(self.now_ms().max(1), Ordering::Release);
        if durable > self.durable.fetch_max(durable, Ordering::AcqRel) {
            self.notify();
        }
    }

    fn notify(&self) {
        let _g = self.changed.0.lock().unwrap_or_else(|e| e.into_inner());
        self.changed.1.notify_all();
    }

    /// Waits until the standby has `seq` durable, or `timeout` passes: true when it has.
    /// Spins briefly first (the acknowledgement usually arrives while the caller's own
    /// sync runs), then sleeps on the acknowledgements.
    pub fn wait_durable(&self, seq: u64, timeout: Duration) -> bool {
        for _ in 0..64 {
            if self.durable() >= seq {
                return true;
            }
            std::hint::spin_loop();
        }
        let deadline = Instant::now() + timeout;
        let mut g = self.changed.0.lock().unwrap_or_else(|e| e.into_inner());
        // Bounded by the deadline: each wait ends by a notification or its timeout.
        loop {
            if self.durable() >= seq {
                return true;
            }
            let now = Instant::now();
            if now >= deadline || self.fenced_by().is_some() {
                return false;
            }
            g = self
                .changed
                .1
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_waiter_wakes_on_the_acknowledgement_that_covers_it() {
        let link = Arc::new(Link::new());
        let waiter = {
            let link = link.clone();
            std::thread::spawn(move || link.wait_durable(10, Duration::from_secs(60)))
        };
        link.ack(5, 5, 0);
        link.ack(12, 10, 3);
        assert!(waiter.join().unwrap());
        assert_eq!(
            (link.received(), link.durable(), link.applied()),
            (12, 10, 3)
        );
        // Older acknowledgements never move it back.
        link.ack(1, 1, 1);
        assert_eq!(link.durable(), 10);
        assert!(!link.wait_durable(11, Duration::from_millis(1)));
    }

    #[test]
    fn a_fenced_link_stops_waiters() {
        let link = Arc::new(Link::new());
        let waiter = {
            let link = link.clone();
            std::thread::spawn(move || link.wait_durable(10, Duration::from_secs(60)))
        };
        link.fence(3);
        assert!(!waiter.join().unwrap());
        assert_eq!(link.fenced_by(), Some(3));
    }
}
