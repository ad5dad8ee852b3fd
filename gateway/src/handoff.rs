//! The hand-off between the binary gateway's event loop and the retail edge's.
//!
//! The input ring keeps one producer, the binary gateway's thread (in the inline
//! topology, the default below 4 cores, there is no ring at all: that thread runs the
//! pipeline). The retail edge hands its commands and queries over through a bounded
//! wait-free queue (`rtrb`, one producer, one consumer) and wakes the gateway's loop;
//! the gateway submits them between its own, tagged as the retail edge's, and copies
//! every engine event and every answer to a retail submission into a second bounded
//! queue, waking the retail loop when it sleeps. What the market makers' loop pays:
//! one check of an empty queue per pass, and a copy of each event into a queue
//! (measured in docs/benchmarks.md, "WebSocket").
//!
//! Neither side ever waits for the other. A full inbox refuses the retail submission at
//! once (the retail client is answered `unavailable`). A full outbox (the retail loop
//! fell a whole queue behind) drops output and raises `overrun`: the retail edge then
//! restarts its view of the exchange (its publisher reloads the books and resends
//! snapshots; signed-in clients, whose own output may be lost, are closed with 1013),
//! while the market makers never notice.

use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use mio::Waker;
use ringex_engine::{Command, Output, Query};

use crate::backend::{Backend, BackendError, Delivery};
use crate::session::{tag_front, FRONT_RETAIL};

/// A retail submission on its way to the input ring.
#[derive(Clone, Copy, Debug)]
pub enum Submission {
    Command(Command, u64),
    Query(Query, u64),
}

/// What comes back to the retail edge.
#[derive(Clone, Copy, Debug)]
pub enum Returned {
    Delivery(Delivery),
    /// The gateway could not submit it (the node refuses input or stayed full).
    Refused {
        tag: u64,
    },
}

/// State both sides see.
#[derive(Debug, Default)]
pub struct LinkShared {
    /// The retail loop is about to sleep and wants a wake-up when output arrives.
    retail_wants_wake: AtomicBool,
    /// The gateway loop is about to sleep and wants a wake-up when submissions arrive.
    gateway_wants_wake: AtomicBool,
    /// Output was dropped because the outbox was full; cleared by the retail edge once
    /// it restarted its view.
    pub overrun: AtomicBool,
    /// Items dropped on a full outbox, since start.
    pub dropped: AtomicU64,
    /// Retail submissions the gateway took, and those it could not submit.
    pub submitted: AtomicU64,
    pub refused: AtomicU64,
}

/// The gateway's end.
pub struct GatewayEnd {
    inbox: rtrb::Consumer<Submission>,
    outbox: rtrb::Producer<Returned>,
    retail_waker: Arc<Waker>,
    shared: Arc<LinkShared>,
    /// Something was pushed this pass: wake the retail loop at the end of it.
    pushed: bool,
}

/// The retail edge's end: a [`Backend`] whose submissions travel through the gateway.
pub struct RetailEnd {
    inbox: rtrb::Producer<Submission>,
    outbox: rtrb::Consumer<Returned>,
    gateway_waker: Arc<Waker>,
    pub shared: Arc<LinkShared>,
    /// Something was submitted since the last wake.
    submitted: bool,
    /// Submissions the gateway refused, for the retail loop to answer.
    refused: Vec<u64>,
}

/// Most retail submissions the gateway takes per pass: its own clients keep their turn.
pub const SUBMISSIONS_PER_PASS: usize = 1024;

/// Builds both ends: `inbox` slots for retail submissions, `outbox` slots for what comes
/// back. `gateway_waker` wakes the binary loop, `retail_waker` the retail loop.
pub fn link(
    inbox: usize,
    outbox: usize,
    gateway_waker: Arc<Waker>,
    retail_waker: Arc<Waker>,
) -> (GatewayEnd, RetailEnd) {
    assert!(inbox > 0 && outbox > 0);
    let shared = Arc::new(LinkShared::default());
    let (in_tx, in_rx) = rtrb::RingBuffer::new(inbox);
    let (out_tx, out_rx) = rtrb::RingBuffer::new(outbox);
    (
        GatewayEnd {
            inbox: in_rx,
            outbox: out_tx,
            retail_waker,
            shared: Arc::clone(&shared),
            pushed: false,
        },
        RetailEnd {
            inbox: in_tx,
            outbox: out_rx,
            gateway_waker,
            shared,
            submitted: false,
            refused: Vec::new(),
        },
    )
}

impl GatewayEnd {
    /// Whether retail submissions wait (one atomic load).
    pub fn has_submissions(&self) -> bool {
        !self.inbox.is_empty()
    }

    /// Before the gateway sleeps: asks to be woken by the next submission; true if one
    /// is already waiting (then it must not sleep).
    pub fn want_wake(&self) -> bool {
        self.shared
            .gateway_wants_wake
            .store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        self.has_submissions()
    }

    /// Submits up to [`SUBMISSIONS_PER_PASS`] retail submissions; returns how many.
    pub fn submit_pending(&mut self, backend: &mut dyn Backend) -> usize {
        let n = self.inbox.slots().min(SUBMISSIONS_PER_PASS);
        for _ in 0..n {
            let Ok(s) = self.inbox.pop() else {
                break;
            };
            let (result, tag) = match s {
                Submission::Command(c, tag) => (backend.submit(&c, tag), tag),
                Submission::Query(q, tag) => (backend.query(&q, tag), tag),
            };
            self.shared.submitted.fetch_add(1, Ordering::Relaxed);
            if result.is_err() {
                self.shared.refused.fetch_add(1, Ordering::Relaxed);
                self.push(Returned::Refused { tag });
            }
        }
        n
    }

    /// Copies a delivery for the retail edge if it needs it: every event (public data,
    /// private streams), and the answers to its own submissions.
    #[inline]
    pub fn forward(&mut self, d: &Delivery) {
        if matches!(d.item, Output::Event(_)) || tag_front(d.tag) == FRONT_RETAIL {
            self.push(Returned::Delivery(*d));
        }
    }

    fn push(&mut self, item: Returned) {
        if self.outbox.push(item).is_err() {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            self.shared.overrun.store(true, Ordering::Release);
        }
        self.pushed = true;
    }

    /// The end of a gateway pass: wakes the retail loop if it sleeps and got output.
    pub fn end_pass(&mut self) {
        if !self.pushed {
            return;
        }
        self.pushed = false;
        fence(Ordering::SeqCst);
        if self.shared.retail_wants_wake.load(Ordering::Relaxed)
            && self.shared.retail_wants_wake.swap(false, Ordering::AcqRel)
        {
            let _ = self.retail_waker.wake();
        }
    }
}

impl RetailEnd {
    /// Submissions the gateway refused since the last call.
    pub fn take_refused(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.refused)
    }

    /// The end of a retail pass: wakes the gateway if it sleeps and got submissions.
    pub fn end_pass(&mut self) {
        if !self.submitted {
            return;
        }
        self.submitted = false;
        fence(Ordering::SeqCst);
        if self.shared.gateway_wants_wake.load(Ordering::Relaxed)
            && self.shared.gateway_wants_wake.swap(false, Ordering::AcqRel)
        {
            let _ = self.gateway_waker.wake();
        }
    }

    /// Discards everything waiting (after an overrun).
    pub fn discard(&mut self) -> usize {
        let n = self.outbox.slots();
        for _ in 0..n {
            let _ = self.outbox.pop();
        }
        self.refused.clear();
        n
    }

    fn push(&mut self, s: Submission) -> Result<(), BackendError> {
        match self.inbox.push(s) {
            Ok(()) => {
                self.submitted = true;
                Ok(())
            }
            Err(_) => Err(BackendError::Busy),
        }
    }
}

impl Backend for RetailEnd {
    fn submit(&mut self, command: &Command, tag: u64) -> Result<(), BackendError> {
        self.push(Submission::Command(*command, tag))
    }

    fn query(&mut self, query: &Query, tag: u64) -> Result<(), BackendError> {
        self.push(Submission::Query(*query, tag))
    }

    fn drain(&mut self, limit: usize, f: &mut dyn FnMut(&Delivery)) -> usize {
        let n = self.outbox.slots().min(limit);
        for _ in 0..n {
            match self.outbox.pop() {
                Ok(Returned::Delivery(d)) => f(&d),
                Ok(Returned::Refused { tag }) => self.refused.push(tag),
                Err(_) => break,
            }
        }
        n
    }

    fn want_wake(&self) {
        self.shared.retail_wants_wake.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
    }

    fn outputs_available(&self) -> bool {
        !self.outbox.is_empty()
    }
}
