//! What the gateway needs from the exchange behind it: submit commands and queries, and
//! drain what comes back in order. The node implements it over its rings (in `src/`);
//! [`InlineBackend`] implements it with an engine applied inline, for tests and tools.

use std::collections::VecDeque;
use std::time::{SystemTime, UNIX_EPOCH};

use ringex_engine::{Command, Event, Exchange, Output, Query, QueryReply};

/// One item from the exchange: an event or query reply, with the journal sequence of the
/// command that caused it (for a query reply, of the last command applied before the
/// query: the answer reflects it and nothing after), the tag given at submission, whether
/// it is the last item for that command or query, and the command's journaled timestamp
/// (ns since the Unix epoch; the query's submission time for replies).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub seq: u64,
    pub tag: u64,
    pub item: Output,
    pub last: bool,
    pub timestamp_ns: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendError {
    /// The input ring stayed full: retry later.
    Busy,
    /// The exchange takes no input (journal failed, shutting down...).
    Unavailable(String),
}

/// A standby's promotion, as `Promote` answers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Promotion {
    /// The journal sequence of the epoch record.
    pub epoch_seq: u64,
    pub epoch: u32,
    pub node_id: u32,
}

pub trait Backend {
    fn submit(&mut self, command: &Command, tag: u64) -> Result<(), BackendError>;
    fn query(&mut self, query: &Query, tag: u64) -> Result<(), BackendError>;
    /// Hands up to `limit` deliveries to `f`, in order; returns how many.
    fn drain(&mut self, limit: usize, f: &mut dyn FnMut(&Delivery)) -> usize;
    /// Asks to be woken (through the waker the backend was built with) when output
    /// arrives. The gateway calls it before sleeping, then checks
    /// [`Backend::outputs_available`] once more.
    fn want_wake(&self);
    fn outputs_available(&self) -> bool;
    /// Makes a standby the primary (`Promote`), returning once its epoch record is
    /// durable. Only a standby's backend can; any other refuses.
    fn promote(&mut self) -> Result<Promotion, BackendError> {
        Err(BackendError::Unavailable(
            "not a standby: nothing to promote".into(),
        ))
    }
}

/// An engine applied inline on the caller's thread: no journal, no rings. For tests and
/// tools that need a real exchange behind real sockets. Commands are stamped with the
/// system clock, as the node stamps them.
pub struct InlineBackend {
    pub exchange: Exchange,
    queue: VecDeque<Delivery>,
    seq_last: u64,
    events: Vec<Event>,
    replies: Vec<QueryReply>,
}

impl InlineBackend {
    pub fn new(exchange: Exchange) -> InlineBackend {
        InlineBackend {
            exchange,
            queue: VecDeque::new(),
            seq_last: 0,
            events: Vec::new(),
            replies: Vec::new(),
        }
    }
}

impl Backend for InlineBackend {
    fn submit(&mut self, command: &Command, tag: u64) -> Result<(), BackendError> {
        self.seq_last += 1;
        let timestamp_ns = wall_clock_ns();
        self.events.clear();
        self.exchange.apply(command, &mut self.events);
        let n = self.events.len();
        for (i, e) in self.events.iter().enumerate() {
            self.queue.push_back(Delivery {
                seq: self.seq_last,
                tag,
                item: Output::Event(*e),
                last: i + 1 == n,
                timestamp_ns,
            });
        }
        Ok(())
    }

    fn query(&mut self, query: &Query, tag: u64) -> Result<(), BackendError> {
        self.replies.clear();
        self.exchange.query(query, &mut self.replies);
        let timestamp_ns = wall_clock_ns();
        let n = self.replies.len();
        for (i, r) in self.replies.iter().enumerate() {
            self.queue.push_back(Delivery {
                seq: self.seq_last,
                tag,
                item: Output::Reply(*r),
                last: i + 1 == n,
                timestamp_ns,
            });
        }
        Ok(())
    }

    fn drain(&mut self, limit: usize, f: &mut dyn FnMut(&Delivery)) -> usize {
        let n = limit.min(self.queue.len());
        for d in self.queue.drain(..n) {
            f(&d);
        }
        n
    }

    fn want_wake(&self) {}

    fn outputs_available(&self) -> bool {
        !self.queue.is_empty()
    }
}

/// Nanoseconds since the Unix epoch (0 if the clock is before it).
pub fn wall_clock_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
