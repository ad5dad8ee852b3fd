//! The retail edge: WebSocket clients (`docs/websocket.md`) on a mio event loop and a
//! thread of their own, never on the market makers' loop.
//!
//! One pass of the loop: read and answer what clients sent (through the same
//! [`SessionCore`] as the binary gateway: logins, permissions, per-key limits, request
//! bookkeeping), take what the exchange output through the hand-off (`handoff`), feed
//! the [`Publisher`] and route private events to sessions, turn each published update
//! into one frame (and one compressed frame) written to every subscriber, then write
//! what each connection has queued. Nothing here waits on a client: output is queued
//! per connection up to a bound, and a client over it is closed with 1013.

pub mod api;

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, IoSlice, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use ringex_engine::{AccountId, AssetId, MarketId, Output, Query, QueryReply, RejectReason};
use rustc_hash::FxHashMap;
use serde_json::Value;

use crate::backend::{wall_clock_ns, Backend, Delivery};
use crate::handoff::RetailEnd;
use crate::limits::{Budget, ConnectionCounts, TokenBucket};
use crate::protocol::{
    login_flags, template, ClientMessage, Login, LoginRejectReason, LogoutReason, ServerMessage,
};
use crate::publisher::{
    is_publisher_query, publisher_query, Channel, Publisher, PublisherQuery, Update,
    PUBLISHER_QUERY_END,
};
use crate::refusals::{
    Detail, Listener, LogQueue, Refusal, RefusalCounters, RefusalLog, RefusalRecord,
    LOG_LINES_PER_REASON, LOG_LINES_PER_WINDOW, LOG_WINDOW_NS,
};
use crate::session::{
    tag, tag_front, tag_id, tag_purpose, Action, ConnState, CoreConfig, Now, SessionCore,
    FRONT_RETAIL, PURPOSE_FRONT, PURPOSE_LOGIN, PURPOSE_REQUEST,
};
use crate::ws::{self, close, Handshake, Incoming, ReadContext};
use api::{code, err, ApiError};

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
/// Connection ids: a slot index in the low bits, a generation above, so an id is never
/// reused while an answer for it may still be on its way.
const INDEX_BITS: u32 = 20;
const INDEX_MASK: usize = (1 << INDEX_BITS) - 1;
const FIRST_GENERATION: usize = 1;

/// Bytes read from a socket per call.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Reads per connection per pass before the next pass reads on.
const READS_PER_PASS: usize = 16;
/// Frames of one connection handled per pass; what is left waits in its read buffer
/// (and the rest in its socket) for the next pass. A frame costs the loop about the same
/// whatever its size, and empty continuation frames of a message that never ends, or
/// pongs, count against no message rate or size: without this bound two clients sending
/// them as fast as they could held every other client's reply up for 12 s in a debug
/// build, up to 1 s in release (a whole 1 MiB of reads, 174,762 frames, per connection
/// per pass; 2026-12-08).
const FRAMES_PER_PASS: usize = 1024;
/// The longest opening handshake accepted.
const HANDSHAKE_BYTES_MAX: usize = 8 * 1024;
/// Exchange output handled per pass: all there is, up to a whole hand-off queue. The
/// fan-out (one frame per channel to every subscriber) costs about the same per pass
/// however many events the pass folds, so a loop that falls behind takes larger passes
/// and can catch up; a fixed small bound made the fan-out's cost follow the event rate
/// instead. (It is not enough on a loaded 2-core machine at 100 K orders/s with 1,000
/// subscribers: docs/benchmarks.md, WebSocket.)
const DRAIN_PER_PASS: usize = 1 << 16;
/// Chunks per vectored write (one batched send gathers as many).
const IOVECS_MAX: usize = crate::fanout::SLICES_PER_OP;
/// Requests one connection may have in flight at the exchange.
const INFLIGHT_MAX: usize = 256;
/// How often timers (pings, timeouts) run; the longest sleep when idle.
const TIMER_EVERY: Duration = Duration::from_millis(50);
/// How long public market data may wait for the retail loop's next pass. Without a
/// signed-in session the loop drains the hand-off on this tick instead of asking the
/// gateway's loop to wake it: a wake-up asked for after every pass cost the gateway's
/// thread an eventfd write per pass at 100 K orders/s and the retail thread a wake-up
/// each time, which doubled the market makers' p50 (2026-12-07, `ringex bench
/// gateway-floor`). Signed-in sessions wait for their own replies and fills, so while
/// one exists the loop is woken at once as before.
const MARKET_DATA_TICK: Duration = Duration::from_millis(1);
/// How long a closing connection waits for the client's close frame.
const CLOSE_WAIT_NS: u64 = 2_000_000_000;
/// How long a stop waits for clients to take their `serverShutdown` and close frame.
const STOP_FLUSH_MAX: Duration = Duration::from_secs(2);
/// A write queue keeps at most this many chunks' room between bursts.
const OUT_KEEP_CHUNKS: usize = 16;
/// A read buffer keeps at most this capacity between messages.
const RBUF_KEEP_BYTES: usize = 4 * 1024;

/// Private channel bits.
const PRIVATE_ORDERS: u8 = 1;
const PRIVATE_FILLS: u8 = 2;
const PRIVATE_BALANCES: u8 = 4;

#[derive(Clone, Debug)]
pub struct RetailConfig {
    pub addr: SocketAddr,
    pub connections_max: u32,
    pub connections_per_ip: u32,
    /// Messages a connection may send per second (pings and pongs included); past it a
    /// message is answered 429, and a second's worth of refusals closes it (1008).
    pub messages_per_second: u32,
    pub subscriptions_max: u32,
    /// A connection must subscribe or authenticate within this, or is closed (1008).
    pub first_subscription_ms: u32,
    /// Unsent bytes of published updates a connection may have queued; past it, 1013.
    pub outbound_buffer_bytes: usize,
    /// The largest message a client may send (after inflation).
    pub message_bytes_max: usize,
    /// Bytes the connections of one address may inflate per second together; past it
    /// their compressed messages are refused unread, as over the message rate.
    pub inflated_bytes_per_second_per_ip: u64,
    /// The kernel's send buffer per connection (SO_SNDBUF); 0 leaves the kernel's
    /// default, which grows to megabytes per connection before the outbound bound
    /// above sees a slow client.
    pub socket_send_buffer_bytes: usize,
    pub ping_interval_ms: u32,
    /// A connection silent this long (not even a pong) is dropped.
    pub idle_timeout_ms: u32,
    /// Offer permessage-deflate when a client asks for it.
    pub compression: bool,
    /// Write the subscribers of a pass through io_uring, many sockets per system call
    /// (`fanout`); false, or no io_uring here, writes each with its own `writev`.
    pub batched_sends: bool,
    /// A path that echoes every message (for conformance suites); off when None.
    pub echo_path: Option<String>,
    pub login_freshness_ms: u32,
    pub requests_per_second_per_key: u32,
    pub sessions_per_key_max: u32,
}

impl RetailConfig {
    /// An ephemeral loopback port and the documented defaults: for tests.
    pub fn loopback() -> RetailConfig {
        RetailConfig {
            addr: "127.0.0.1:0".parse().expect("address"),
            connections_max: 10_000,
            connections_per_ip: 256,
            messages_per_second: 50,
            subscriptions_max: 64,
            first_subscription_ms: 10_000,
            outbound_buffer_bytes: 1 << 20,
            message_bytes_max: 64 * 1024,
            socket_send_buffer_bytes: 256 * 1024,
            ping_interval_ms: 20_000,
            idle_timeout_ms: 60_000,
            compression: true,
            batched_sends: true,
            inflated_bytes_per_second_per_ip: 8 << 20,
            echo_path: None,
            login_freshness_ms: 5_000,
            requests_per_second_per_key: 100,
            sessions_per_key_max: 16,
        }
    }
}

/// Counters for metrics and tests.
#[derive(Debug, Default)]
pub struct RetailStats {
    pub connections_active: AtomicU64,
    pub connections_total: AtomicU64,
    pub messages_in: AtomicU64,
    /// Bytes of client messages inflated (permessage-deflate), bombs stopped included.
    pub bytes_inflated: AtomicU64,
    /// Frames queued to clients, and their bytes.
    pub messages_out: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Updates the publisher produced (each written to all its subscribers).
    pub updates_published: AtomicU64,
    pub slow_consumers: AtomicU64,
    /// Times the edge fell a whole hand-off queue behind and restarted its view.
    pub overruns: AtomicU64,
    /// Markets whose book was reloaded after an overrun and whose subscribers were sent
    /// fresh snapshots and gap notices.
    pub resyncs: AtomicU64,
    /// The publisher has its markets and books: connections are accepted.
    pub ready: AtomicBool,
    /// io_uring failed while the fan-out used it: it writes one `writev` per connection
    /// from then on (the node logs it once).
    pub fanout_fell_back: AtomicBool,
    pub refusals: RefusalCounters,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Handshake,
    Open,
    /// A close frame was queued: the connection ends when the client answers, when the
    /// output is written (`after_flush`), or at `deadline_ns`.
    Closing {
        deadline_ns: u64,
        after_flush: bool,
    },
}

enum Chunk {
    Shared(Arc<[u8]>),
    Own(Vec<u8>),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Shared(b) => b,
            Chunk::Own(b) => b,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    Place,
    Cancel,
    Replace,
    CancelAll,
    Balances,
    OpenOrders,
}

/// A request waiting at the exchange: its answer is built from what the core sends for
/// it, and written when its `RequestDone` comes.
struct Pending {
    request_id: u64,
    id: String,
    method: Method,
    /// A refusal of the front-end's own, answered in request order.
    error: Option<ApiError>,
    msgs: Vec<ServerMessage>,
}

struct Conn {
    id: usize,
    stream: TcpStream,
    peer: SocketAddr,
    phase: Phase,
    rbuf: Vec<u8>,
    reader: ws::Reader,
    deflate: bool,
    echo: bool,
    out: VecDeque<Chunk>,
    /// Bytes of the front chunk already written.
    out_pos: usize,
    /// Unwritten bytes queued.
    out_bytes: usize,
    writable_registered: bool,
    dirty: bool,
    /// In `unread`: read again next pass (once, however many times it is asked).
    read_again: bool,
    opened_ns: u64,
    last_rx_ns: u64,
    last_ping_ns: u64,
    /// Subscribed or authenticated once: the first-subscription timer is off.
    engaged: bool,
    subs: Vec<(MarketId, Channel)>,
    private: u8,
    bucket: TokenBucket,
    next_request_id: u64,
    pending: VecDeque<Pending>,
    /// The id of an `auth` under way.
    auth_id: Option<String>,
    /// Subscriptions whose snapshot follows the subscribe's reply.
    snapshot_due: Vec<(MarketId, Channel)>,
}

/// The retail edge's event loop.
pub struct RetailEdge {
    config: RetailConfig,
    poll: Poll,
    waker: Arc<Waker>,
    listener: TcpListener,
    listening: bool,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    generation: usize,
    ips: ConnectionCounts,
    /// What each address may still inflate (addresses that sent compressed messages).
    inflate_budgets: HashMap<IpAddr, Budget>,
    core: SessionCore,
    publisher: Publisher,
    link: Option<RetailEnd>,
    subscribers: FxHashMap<(MarketId, Channel), Vec<usize>>,
    balance_subs: HashMap<AccountId, Vec<usize>>,
    balance_due: Vec<AccountId>,
    balance_pending: HashSet<AccountId>,
    balance_dirty: HashSet<AccountId>,
    balance_replies: HashMap<AccountId, Vec<(AssetId, i64, i64)>>,
    deflater: ws::Deflater,
    inflater: ws::Inflater,
    stats: Arc<RetailStats>,
    refusal_log: RefusalLog,
    base: Instant,
    dirty: Vec<usize>,
    /// The connections of the pass's batched send, and what each send did.
    sending: Vec<usize>,
    send_results: Vec<crate::fanout::SendResult>,
    batch: crate::fanout::BatchWriter,
    unread: Vec<usize>,
    to_close: Vec<(usize, u16, String)>,
    updates: Vec<Update>,
    deliveries: Vec<Delivery>,
    scratch: Box<[u8]>,
    /// The last delivery handled ended a command: the publisher may flush.
    at_boundary: bool,
    retry_queries: Vec<PublisherQuery>,
    timers_at: Instant,
    /// HTTP on this loop (`http`), when served.
    http: Option<crate::http::Http>,
}

fn reason_name(reason: LoginRejectReason) -> &'static str {
    match reason {
        LoginRejectReason::UnknownKey => "unknown_key",
        LoginRejectReason::BadSignature => "bad_signature",
        LoginRejectReason::StaleTimestamp => "stale_timestamp",
        LoginRejectReason::ReplayedNonce => "replayed_nonce",
        LoginRejectReason::ResumeImpossible => "resume_impossible",
        LoginRejectReason::AlreadyLoggedIn => "already_logged_in",
        LoginRejectReason::WrongListener => "wrong_listener",
        LoginRejectReason::AccountSuspended => "account_suspended",
        LoginRejectReason::TooManySessions => "too_many_sessions",
        LoginRejectReason::Unavailable => "unavailable",
    }
}

/// The close code and reason for a session the core ends.
fn close_for(reason: Option<LogoutReason>) -> (u16, &'static str) {
    match reason {
        None | Some(LogoutReason::Requested) => (close::NORMAL, "bye"),
        Some(LogoutReason::ServerShutdown) => (close::GOING_AWAY, "server shutdown"),
        Some(LogoutReason::SlowConsumer) => (close::TRY_AGAIN_LATER, "slow consumer"),
        Some(LogoutReason::RateLimitAbuse) => (close::POLICY_VIOLATION, "rate limit abuse"),
        Some(LogoutReason::NotPermitted) => (close::POLICY_VIOLATION, "not permitted"),
        Some(LogoutReason::KeyRevoked) => {
            (close::POLICY_VIOLATION, "key revoked or account suspended")
        }
        Some(_) => (close::POLICY_VIOLATION, "protocol violation"),
    }
}

impl RetailEdge {
    /// Binds the listener. Connections are accepted once the publisher has loaded the
    /// markets (through the link given with [`RetailEdge::attach`]).
    pub fn bind(config: RetailConfig, log_queue: Arc<LogQueue>) -> io::Result<RetailEdge> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let listener = TcpListener::bind(config.addr)?;
        let core = SessionCore::new(CoreConfig {
            front: FRONT_RETAIL,
            heartbeat_ms: 1000,
            idle_timeout_ms: config.idle_timeout_ms,
            login_freshness_ms: config.login_freshness_ms,
            resume_window_messages: 0,
            session_linger_ms: 0,
            requests_per_second_per_key: config.requests_per_second_per_key,
            sessions_per_key_max: config.sessions_per_key_max,
        });
        let batch = crate::fanout::BatchWriter::new(config.batched_sends);
        Ok(RetailEdge {
            config,
            poll,
            waker,
            listener,
            listening: false,
            conns: Vec::new(),
            free: Vec::new(),
            generation: FIRST_GENERATION,
            ips: ConnectionCounts::default(),
            inflate_budgets: HashMap::new(),
            core,
            publisher: Publisher::new(),
            link: None,
            subscribers: FxHashMap::default(),
            balance_subs: HashMap::new(),
            balance_due: Vec::new(),
            balance_pending: HashSet::new(),
            balance_dirty: HashSet::new(),
            balance_replies: HashMap::new(),
            deflater: ws::Deflater::default(),
            inflater: ws::Inflater::default(),
            stats: Arc::new(RetailStats::default()),
            refusal_log: RefusalLog::new(
                log_queue,
                (LOG_LINES_PER_WINDOW, LOG_LINES_PER_REASON),
                LOG_WINDOW_NS,
                0,
            ),
            base: Instant::now(),
            dirty: Vec::new(),
            sending: Vec::new(),
            send_results: Vec::new(),
            batch,
            unread: Vec::new(),
            to_close: Vec::new(),
            updates: Vec::new(),
            deliveries: Vec::with_capacity(8192),
            scratch: vec![0u8; READ_CHUNK_BYTES].into_boxed_slice(),
            at_boundary: true,
            retry_queries: Vec::new(),
            timers_at: Instant::now(),
            http: None,
        })
    }

    /// Wakes the loop from another thread (the gateway's, when output arrives).
    /// Why the fan-out writes each connection with its own `writev` (`fanout`); None
    /// when it batches through io_uring.
    pub fn send_fallback_reason(&self) -> Option<&str> {
        self.batch.fallback_reason()
    }

    pub fn waker(&self) -> Arc<Waker> {
        Arc::clone(&self.waker)
    }

    /// The retail end of the hand-off to the exchange.
    pub fn attach(&mut self, link: RetailEnd) {
        self.link = Some(link);
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn stats(&self) -> Arc<RetailStats> {
        Arc::clone(&self.stats)
    }

    /// Serves HTTP (`http`) on this loop too; returns the bound address.
    pub fn serve_http(
        &mut self,
        config: crate::http::HttpConfig,
        status: Option<Arc<dyn crate::http::NodeStatus>>,
    ) -> io::Result<SocketAddr> {
        let ws_port = self.local_addr()?.port();
        let http = crate::http::Http::bind(config, status, ws_port)?;
        let addr = http.local_addr()?;
        self.http = Some(http);
        Ok(addr)
    }

    fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    fn now(&self) -> Now {
        Now {
            mono_ns: self.now_ns(),
            wall_ns: wall_clock_ns(),
        }
    }

    fn conn(&mut self, id: usize) -> Option<&mut Conn> {
        slot(&mut self.conns, id)
    }

    fn conn_ref(&self, id: usize) -> Option<&Conn> {
        match self.conns.get(id & INDEX_MASK) {
            Some(Some(c)) if c.id == id => Some(c),
            _ => None,
        }
    }

    /// Serves until `stop` is set, then tells every client `serverShutdown` and closes
    /// with 1001.
    pub fn run(&mut self, stop: &AtomicBool) -> io::Result<()> {
        let mut link = self
            .link
            .take()
            .expect("attach the hand-off before running");
        let mut events = Events::with_capacity(1024);
        self.submit_publisher_queries(&mut link);
        link.end_pass();
        // Whether the last pass took engine output: a market that just traded is ticked
        // at MARKET_DATA_TICK even with nobody connected, so the hand-off never fills.
        let mut took_outputs = false;
        while !stop.load(Ordering::Relaxed) {
            let busy = !self.unread.is_empty()
                || self.http.as_ref().is_some_and(|h| h.busy())
                || link.outputs_available();
            let timeout = if busy {
                Duration::ZERO
            } else if self.core.session_count() > 0 {
                link.want_wake();
                if link.outputs_available() {
                    Duration::ZERO
                } else {
                    TIMER_EVERY
                }
            } else if took_outputs
                || self.stats.connections_active.load(Ordering::Relaxed) > 0
                || self.http.as_ref().is_some_and(|h| h.has_connections())
            {
                MARKET_DATA_TICK
            } else {
                TIMER_EVERY
            };
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            let unread = std::mem::take(&mut self.unread);
            for id in unread {
                if let Some(c) = slot(&mut self.conns, id) {
                    c.read_again = false;
                }
                self.read(id, &mut link);
            }
            if let Some(h) = &mut self.http {
                let mut view = crate::http::View {
                    publisher: &mut self.publisher,
                    retail: &self.stats,
                };
                h.pass(self.poll.registry(), &mut view);
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(),
                    WAKER => {}
                    t if crate::http::owns(t) => {
                        if let Some(h) = &mut self.http {
                            let mut view = crate::http::View {
                                publisher: &mut self.publisher,
                                retail: &self.stats,
                            };
                            h.event(self.poll.registry(), ev, &mut view);
                        }
                    }
                    Token(id) => {
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            self.read(id, &mut link);
                        }
                        if ev.is_writable() {
                            self.flush(id);
                        }
                    }
                }
            }
            took_outputs = link.outputs_available();
            self.take_outputs(&mut link);
            if self.timers_at.elapsed() >= TIMER_EVERY {
                self.timers_at = Instant::now();
                self.timers(&mut link);
                if let Some(h) = &mut self.http {
                    h.timers(self.poll.registry(), self.listening);
                }
            }
            self.end_pass(&mut link);
        }
        self.stop_gracefully(&mut link);
        let now = self.now_ns();
        self.refusal_log.flush(now);
        self.link = Some(link);
        Ok(())
    }

    fn end_pass(&mut self, link: &mut RetailEnd) {
        self.apply_actions(link);
        self.core.end_pass(link);
        self.query_balances(link);
        self.submit_publisher_queries(link);
        for (id, code, reason) in std::mem::take(&mut self.to_close) {
            self.close_with(id, code, &reason);
        }
        self.flush_all();
        link.end_pass();
    }

    fn submit_publisher_queries(&mut self, link: &mut RetailEnd) {
        let mut queries = self.publisher.take_queries();
        queries.append(&mut self.retry_queries);
        for q in queries {
            let t = tag(FRONT_RETAIL, PURPOSE_FRONT, q.id);
            if link.query(&q.query, t).is_err() {
                self.retry_queries.push(q);
            }
        }
    }

    // ------------------------------------------------------------ exchange output

    fn take_outputs(&mut self, link: &mut RetailEnd) {
        if link.shared.overrun.load(Ordering::Acquire) {
            self.restart_view(link);
        }
        let mut deliveries = std::mem::take(&mut self.deliveries);
        deliveries.clear();
        link.drain(DRAIN_PER_PASS, &mut |d| deliveries.push(*d));
        let now = self.now();
        for d in &deliveries {
            self.take(d, now, link);
            self.apply_actions(link);
            self.at_boundary = d.last;
        }
        // Public updates once per pass, at a command boundary: when the loop keeps up a
        // pass holds a command or two (updates per command, at once); when the exchange
        // is busier, a pass holds more and its changes fold into one update per channel,
        // so the fan-out's cost follows the passes, not the command rate.
        if !deliveries.is_empty() && self.at_boundary {
            self.resync();
            self.publish();
        }
        self.deliveries = deliveries;
        for t in link.take_refused() {
            self.submission_refused(t, link);
        }
        if !self.listening && self.publisher.is_ready() {
            self.listening = true;
            self.stats.ready.store(true, Ordering::Relaxed);
            // Registered only now: connections wait in the backlog until the books are
            // loaded, so the first subscription always finds them.
            let _ = self
                .poll
                .registry()
                .register(&mut self.listener, LISTENER, Interest::READABLE);
            self.accept();
        }
    }

    fn take(&mut self, d: &Delivery, now: Now, link: &mut RetailEnd) {
        let mine = tag_front(d.tag) == FRONT_RETAIL;
        if mine && tag_purpose(d.tag) == PURPOSE_FRONT {
            let id = tag_id(d.tag);
            if is_publisher_query(id) {
                self.publisher.apply(d, Some(id));
            } else {
                self.balance_reply(id - PUBLISHER_QUERY_END, d);
            }
            return;
        }
        self.publisher.apply(d, None);
        self.core.deliver(d, now, link);
    }

    /// Publishes what the last commands changed: one frame per update, and one
    /// compressed frame if a subscriber negotiated compression, for all subscribers.
    fn publish(&mut self) {
        let mut updates = std::mem::take(&mut self.updates);
        self.publisher.flush(&mut updates);
        for u in updates.drain(..) {
            self.stats.updates_published.fetch_add(1, Ordering::Relaxed);
            let key = (u.market, u.channel);
            // The list is lent out while it is walked (no copy per update); a slow
            // consumer closed meanwhile cannot leave it then, so it leaves it after.
            let Some(mut subs) = self.subscribers.get_mut(&key).map(std::mem::take) else {
                continue;
            };
            if let Some(h) = &mut self.http {
                h.count_ws_sent(u.market, subs.len());
            }
            let mut plain: Option<Arc<[u8]>> = None;
            let mut compressed: Option<Arc<[u8]>> = None;
            let mut closed = 0;
            for &id in &subs {
                let deflate = self.conn_ref(id).is_some_and(|c| c.deflate);
                let frame = if deflate {
                    let json = &u.json;
                    let deflater = &mut self.deflater;
                    Arc::clone(compressed.get_or_insert_with(|| {
                        ws::frame(ws::OP_TEXT, true, &deflater.deflate(json)).into()
                    }))
                } else {
                    Arc::clone(
                        plain.get_or_insert_with(|| ws::frame(ws::OP_TEXT, false, &u.json).into()),
                    )
                };
                if !self.queue_update(id, frame) {
                    closed += 1;
                }
            }
            if closed > 0 {
                subs.retain(|&id| self.conn_ref(id).is_some_and(|c| c.phase == Phase::Open));
            }
            if let Some(list) = self.subscribers.get_mut(&key) {
                // Nothing subscribes during the walk.
                debug_assert!(list.is_empty());
                *list = subs;
            }
        }
        self.updates = updates;
    }

    /// Queues a published frame; a connection over its outbound bound is a slow
    /// consumer and is closed, the others never notice. False when the connection is
    /// not (or no longer) open.
    fn queue_update(&mut self, id: usize, frame: Arc<[u8]>) -> bool {
        let limit = self.config.outbound_buffer_bytes;
        let Some(c) = self.conn(id) else {
            return false;
        };
        if c.phase != Phase::Open {
            return false;
        }
        if c.out_bytes + frame.len() > limit {
            let unsent = c.out_bytes;
            self.slow_consumer(id, unsent);
            return false;
        }
        self.queue_chunk(id, Chunk::Shared(frame));
        true
    }

    /// Queues a frame of this connection's own (a reply, a snapshot, a private update, a
    /// pong, an echo). A client that does not read cannot make its queue grow without
    /// bound by asking: when what it was sent is still unsent past the outbound bound,
    /// it is closed 1013 like a slow subscriber. What the socket takes now is written
    /// first, so a client that reads is never cut by the size of one burst.
    fn queue_own(&mut self, id: usize, frame: Vec<u8>) {
        let limit = self.config.outbound_buffer_bytes;
        let unsent = |edge: &Self| match edge.conn_ref(id) {
            Some(c) if c.phase == Phase::Open => Some(c.out_bytes),
            _ => None,
        };
        let Some(before) = unsent(self) else {
            return;
        };
        if before > limit {
            self.flush(id);
            match unsent(self) {
                None => return,
                Some(left) if left > limit => {
                    self.slow_consumer(id, left);
                    return;
                }
                Some(_) => {}
            }
        }
        self.queue_chunk(id, Chunk::Own(frame));
    }

    fn slow_consumer(&mut self, id: usize, unsent: usize) {
        self.stats.slow_consumers.fetch_add(1, Ordering::Relaxed);
        self.refuse_conn(id, Refusal::SlowConsumer, Detail::None);
        if let Some(c) = self.conn(id) {
            // Keep only the frame being written, so the close frame follows whole frames.
            let keep = usize::from(c.out_pos > 0);
            while c.out.len() > keep {
                if let Some(chunk) = c.out.pop_back() {
                    c.out_bytes -= chunk.bytes().len();
                }
            }
        }
        let reason = format!("slow consumer: {unsent} bytes unsent");
        self.close_with(id, close::TRY_AGAIN_LATER, &reason);
    }

    fn queue_chunk(&mut self, id: usize, chunk: Chunk) {
        let len = chunk.bytes().len();
        let Some(c) = self.conn(id) else {
            return;
        };
        c.out_bytes += len;
        c.out.push_back(chunk);
        let newly_dirty = !c.dirty && !c.writable_registered;
        if newly_dirty {
            c.dirty = true;
        }
        if newly_dirty {
            self.dirty.push(id);
        }
        self.stats.messages_out.fetch_add(1, Ordering::Relaxed);
        self.stats
            .bytes_out
            .fetch_add(len as u64, Ordering::Relaxed);
    }

    /// A text message of this connection's own (a reply, a snapshot, a private update):
    /// uncompressed (RSV1 = 0 is allowed per message), so no deflate state per
    /// connection.
    fn send_text(&mut self, id: usize, json: &[u8]) {
        self.queue_own(id, ws::frame(ws::OP_TEXT, false, json));
    }

    /// After an overrun (this loop fell a whole hand-off queue behind, so exchange
    /// output was lost): the publisher reloads every book from the engine, and once a
    /// book is back its subscribers are told (`resync`): a fresh `snapshot` for depth,
    /// bbo and ticker, a `gap` notice for trades. Public-only clients stay connected.
    /// A connection with a session (or a sign-in or requests under way) may have lost
    /// its own orders' answers and fills, which nothing can replay: it is closed with
    /// 1013, and its client asks `account.openOrders` after reconnecting.
    fn restart_view(&mut self, link: &mut RetailEnd) {
        self.stats.overruns.fetch_add(1, Ordering::Relaxed);
        // Cleared before the queue is emptied: a loss after this point raises it again.
        link.shared.overrun.store(false, Ordering::Release);
        link.discard();
        let private: Vec<usize> = self
            .conns
            .iter()
            .flatten()
            .filter(|c| {
                c.auth_id.is_some()
                    || !c.pending.is_empty()
                    || !matches!(
                        self.core.conn_state(c.id),
                        None | Some(ConnState::AwaitingLogin)
                    )
            })
            .map(|c| c.id)
            .collect();
        for id in private {
            self.close_with(
                id,
                close::TRY_AGAIN_LATER,
                "exchange data interrupted: reconnect",
            );
        }
        self.publisher.restart();
        self.at_boundary = true;
        self.balance_pending.clear();
        self.balance_replies.clear();
        self.submit_publisher_queries(link);
    }

    /// Tells the subscribers of each market whose book was loaded again after an
    /// overrun: depth, bbo and ticker subscribers get a fresh `snapshot` (a client
    /// replaces its book with it), trades subscribers a `gap` notice (trades up to the
    /// notice's `seq` may be missing; every later one is sent).
    fn resync(&mut self) {
        for (market, seq) in self.publisher.take_reloaded() {
            self.stats.resyncs.fetch_add(1, Ordering::Relaxed);
            let Some(symbol) = self.publisher.market(market).map(|m| m.symbol.clone()) else {
                continue;
            };
            let mut gap = Vec::with_capacity(96);
            gap.extend_from_slice(b"{\"channel\":\"trades\",\"market\":");
            crate::publisher::push_json_str(&mut gap, &symbol);
            gap.extend_from_slice(format!(",\"type\":\"gap\",\"seq\":{seq}}}").as_bytes());
            for channel in Channel::ALL {
                let Some(subs) = self.subscribers.get(&(market, channel)) else {
                    continue;
                };
                if subs.is_empty() {
                    continue;
                }
                let subs = subs.clone();
                let json = match channel {
                    Channel::Trades => Some(gap.clone()),
                    _ => self.publisher.snapshot(market, channel),
                };
                let Some(json) = json else {
                    continue;
                };
                for id in subs {
                    self.send_text(id, &json);
                }
            }
        }
    }

    fn submission_refused(&mut self, t: u64, link: &mut RetailEnd) {
        let id = tag_id(t);
        match tag_purpose(t) {
            PURPOSE_REQUEST => {
                // The outcome of what the session had in flight is unknown: say so.
                if let Some(conn) = self.core.session(id).and_then(|s| s.conn) {
                    self.to_close.push((
                        conn,
                        close::TRY_AGAIN_LATER,
                        "exchange unavailable".into(),
                    ));
                }
            }
            PURPOSE_FRONT if is_publisher_query(id) => {
                self.retry_queries.push(publisher_query(id));
            }
            PURPOSE_FRONT => {
                let account = (id - PUBLISHER_QUERY_END) as AccountId;
                self.balance_pending.remove(&account);
                self.balance_due.push(account);
            }
            PURPOSE_LOGIN => {
                // A login's key lookup.
                self.login_failed(id as usize, LoginRejectReason::Unavailable, link);
            }
            _ => {}
        }
    }

    // ------------------------------------------------------------ balances

    fn query_balances(&mut self, link: &mut RetailEnd) {
        for account in std::mem::take(&mut self.balance_due) {
            if self.balance_pending.contains(&account) {
                self.balance_dirty.insert(account);
                continue;
            }
            if !self.balance_subs.contains_key(&account) {
                continue;
            }
            let t = tag(
                FRONT_RETAIL,
                PURPOSE_FRONT,
                crate::publisher::balance_query_id(account),
            );
            if link.query(&Query::Balances { account }, t).is_ok() {
                self.balance_pending.insert(account);
            } else {
                self.balance_dirty.insert(account);
            }
        }
    }

    fn balance_reply(&mut self, account: u64, d: &Delivery) {
        let account = account as AccountId;
        match d.item {
            Output::Reply(QueryReply::Balance {
                asset,
                available,
                held,
                ..
            }) => self
                .balance_replies
                .entry(account)
                .or_default()
                .push((asset, available, held)),
            Output::Reply(QueryReply::End { .. }) => {
                self.balance_pending.remove(&account);
                if self.balance_dirty.remove(&account) {
                    self.balance_due.push(account);
                }
                let balances = self.balance_replies.remove(&account).unwrap_or_default();
                let subs = self.balance_subs.get(&account).cloned().unwrap_or_default();
                if subs.is_empty() {
                    return;
                }
                let mut j = Vec::with_capacity(64 + 80 * balances.len());
                j.extend_from_slice(
                    format!(
                        "{{\"channel\":\"balances\",\"seq\":{},\"balances\":[",
                        d.seq
                    )
                    .as_bytes(),
                );
                for (i, (asset, available, held)) in balances.iter().enumerate() {
                    if i > 0 {
                        j.push(b',');
                    }
                    let sd = self.asset(*asset);
                    let sd = sd.as_ref().map(|(s, d)| (s.as_str(), *d));
                    api::balance_entry(&mut j, *asset, sd, *available, *held);
                }
                j.extend_from_slice(b"]}");
                for id in subs {
                    self.send_text(id, &j);
                }
            }
            _ => {}
        }
    }

    /// An asset's symbol and decimals, from the markets that trade it.
    fn asset(&self, asset: AssetId) -> Option<(String, u8)> {
        self.publisher.markets().find_map(|m| {
            if m.base_asset == asset {
                Some((m.base.clone(), m.base_decimals))
            } else if m.quote_asset == asset {
                Some((m.quote.clone(), m.quote_decimals))
            } else {
                None
            }
        })
    }

    // ------------------------------------------------------------ core actions

    fn apply_actions(&mut self, link: &mut RetailEnd) {
        // Bounded: carrying out an action adds none of the core's.
        while let Some(action) = self.core.pop_action() {
            match action {
                Action::Send { conn, msg } => self.private(conn, msg),
                Action::LoggedIn { conn, accepted, .. } => {
                    let ServerMessage::LoginAccepted(a) = accepted else {
                        continue;
                    };
                    let Some(id) = self.conn(conn).and_then(|c| c.auth_id.take()) else {
                        continue;
                    };
                    let result =
                        format!("{{\"account\":{},\"session\":{}}}", a.account, a.session_id);
                    self.send_text(conn, &api::reply_result(&id, result.as_bytes()));
                }
                Action::LoginRejected { conn, reason } => self.login_failed(conn, reason, link),
                Action::Close { conn, reason } => {
                    let (code, why) = close_for(reason);
                    self.to_close.push((conn, code, why.into()));
                }
                Action::CloseLater { conn, reason } => {
                    let (code, why) = close_for(Some(reason));
                    self.to_close.push((conn, code, why.into()));
                }
                Action::Refuse {
                    conn,
                    reason,
                    key_id,
                    detail,
                } => {
                    if let Some(peer) = self.conn_ref(conn).map(|c| c.peer) {
                        self.refuse(reason, peer, key_id, detail);
                    }
                }
            }
        }
    }

    /// A refused login: the client is told why; the connection stays for public data
    /// and may try again.
    fn login_failed(&mut self, conn: usize, reason: LoginRejectReason, link: &mut RetailEnd) {
        let now = self.now();
        self.core.conn_closed(conn, now, link);
        if self.conn_ref(conn).is_none() {
            return;
        }
        self.core.conn_opened(conn, Listener::WebSocket);
        let Some(id) = self.conn(conn).and_then(|c| c.auth_id.take()) else {
            return;
        };
        let e = if reason == LoginRejectReason::Unavailable {
            err(code::UNAVAILABLE, reason_name(reason))
        } else {
            err(code::AUTH_FAILED, reason_name(reason))
        };
        self.send_text(conn, &api::reply_error(&id, &e));
    }

    /// A message the core sends a session: part of a pending answer, and a private
    /// stream update.
    fn private(&mut self, conn: usize, msg: ServerMessage) {
        let request_id = msg_request_id(&msg);
        if let ServerMessage::RequestDone(done) = msg {
            self.answer(conn, done.request_id);
            return;
        }
        let Some(c) = self.conn(conn) else {
            return;
        };
        if request_id != 0 {
            if let Some(p) = c.pending.iter_mut().find(|p| p.request_id == request_id) {
                p.msgs.push(msg);
            }
        }
        let private = c.private;
        let (bit, channel) = match msg {
            ServerMessage::OrderAccepted(_)
            | ServerMessage::Cancelled(_)
            | ServerMessage::Replaced(_) => (PRIVATE_ORDERS, "orders"),
            ServerMessage::Filled(_) => (PRIVATE_FILLS, "fills"),
            _ => return,
        };
        if private & PRIVATE_BALANCES != 0 {
            if let Some(s) = self.core.session_of(conn) {
                if !self.balance_due.contains(&s.account) {
                    self.balance_due.push(s.account);
                }
            }
        }
        if private & bit == 0 {
            return;
        }
        let mut j = Vec::with_capacity(256);
        j.extend_from_slice(format!("{{\"channel\":\"{channel}\",").as_bytes());
        let kind = match msg {
            ServerMessage::OrderAccepted(m) => {
                j.extend_from_slice(b"\"type\":\"accepted\",");
                api::accepted_fields(&mut j, &m, self.publisher.market(m.market));
                m.seq
            }
            ServerMessage::Cancelled(m) => {
                j.extend_from_slice(b"\"type\":\"cancelled\",");
                api::cancelled_fields(&mut j, &m, self.publisher.market(m.market));
                m.seq
            }
            ServerMessage::Replaced(m) => {
                j.extend_from_slice(b"\"type\":\"replaced\",");
                api::replaced_fields(&mut j, &m, self.publisher.market(m.market));
                m.seq
            }
            ServerMessage::Filled(m) => {
                api::filled_fields(&mut j, &m, self.publisher.market(m.market));
                m.seq
            }
            _ => return,
        };
        j.extend_from_slice(format!(",\"seq\":{kind}}}").as_bytes());
        self.send_text(conn, &j);
    }

    /// A request's `RequestDone`: its reply, from what was sent for it.
    fn answer(&mut self, conn: usize, request_id: u64) {
        let Some(c) = self.conn(conn) else {
            return;
        };
        let Some(pos) = c.pending.iter().position(|p| p.request_id == request_id) else {
            return;
        };
        let Some(p) = c.pending.remove(pos) else {
            return;
        };
        let reply = self.render_answer(&p);
        self.send_text(conn, &reply);
    }

    fn render_answer(&self, p: &Pending) -> Vec<u8> {
        if let Some(e) = &p.error {
            return api::reply_error(&p.id, e);
        }
        for m in &p.msgs {
            if let ServerMessage::OrderRejected(r) = m {
                return api::reply_error(&p.id, &api::reject(r.reason));
            }
        }
        let market = |id| self.publisher.market(id);
        let mut j = Vec::with_capacity(256);
        match p.method {
            Method::Place | Method::Replace | Method::Cancel => {
                j.push(b'{');
                let mut fills = Vec::new();
                let mut status = "new";
                let mut wrote = false;
                for m in &p.msgs {
                    match m {
                        ServerMessage::OrderAccepted(a) if !wrote => {
                            api::accepted_fields(&mut j, a, market(a.market));
                            wrote = true;
                        }
                        ServerMessage::Replaced(r) if !wrote => {
                            api::replaced_fields(&mut j, r, market(r.market));
                            status = "replaced";
                            wrote = true;
                        }
                        ServerMessage::Cancelled(c) => {
                            if !wrote {
                                api::cancelled_fields(&mut j, c, market(c.market));
                                wrote = true;
                            } else {
                                j.extend_from_slice(
                                    format!(
                                        ",\"cancelReason\":\"{}\"",
                                        api::cancel_reason_name(c.reason)
                                    )
                                    .as_bytes(),
                                );
                            }
                            status = "cancelled";
                        }
                        ServerMessage::Filled(f) => {
                            let mut fj = vec![b'{'];
                            api::filled_fields(&mut fj, f, market(f.market));
                            fj.push(b'}');
                            fills.push(fj);
                            if status != "cancelled" {
                                status = if f.remaining_qty == 0 {
                                    "filled"
                                } else {
                                    "partially_filled"
                                };
                            }
                        }
                        _ => {}
                    }
                }
                if !wrote {
                    j.extend_from_slice(b"\"market\":null");
                }
                j.extend_from_slice(format!(",\"status\":\"{status}\",\"fills\":[").as_bytes());
                for (i, f) in fills.iter().enumerate() {
                    if i > 0 {
                        j.push(b',');
                    }
                    j.extend_from_slice(f);
                }
                j.extend_from_slice(b"]}");
            }
            Method::CancelAll => {
                let count = p
                    .msgs
                    .iter()
                    .find_map(|m| match m {
                        ServerMessage::MassCancelDone(d) => Some(d.count),
                        _ => None,
                    })
                    .unwrap_or(0);
                j.extend_from_slice(format!("{{\"cancelled\":{count}}}").as_bytes());
            }
            Method::Balances => {
                j.push(b'[');
                let mut first = true;
                for m in &p.msgs {
                    if let ServerMessage::Balance(b) = m {
                        if !first {
                            j.push(b',');
                        }
                        first = false;
                        let sd = self.asset(b.asset);
                        let sd = sd.as_ref().map(|(s, d)| (s.as_str(), *d));
                        api::balance_entry(&mut j, b.asset, sd, b.available, b.held);
                    }
                }
                j.push(b']');
            }
            Method::OpenOrders => {
                j.push(b'[');
                let mut first = true;
                for m in &p.msgs {
                    if let ServerMessage::OpenOrder(o) = m {
                        if !first {
                            j.push(b',');
                        }
                        first = false;
                        j.push(b'{');
                        api::open_order_fields(&mut j, o, market(o.market));
                        j.push(b'}');
                    }
                }
                j.push(b']');
            }
        }
        api::reply_result(&p.id, &j)
    }

    // ------------------------------------------------------------ connections

    fn accept(&mut self) {
        if !self.listening {
            return;
        }
        // Bounded: at most the configured connection count per wake-up.
        for _ in 0..self.config.connections_max.max(1) {
            let (mut stream, peer) = match self.listener.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted
                    ) =>
                {
                    continue
                }
                // Out of descriptors: the timers accept again.
                Err(_) => return,
            };
            let active = self.stats.connections_active.load(Ordering::Relaxed);
            let limit = if active >= u64::from(self.config.connections_max) {
                Some((Refusal::ConnectionLimit, self.config.connections_max))
            } else if !self.ips.try_add(peer.ip(), self.config.connections_per_ip) {
                Some((Refusal::PerIpLimit, self.config.connections_per_ip))
            } else {
                None
            };
            if let Some((reason, limit)) = limit {
                // Counted before the answer leaves, so whoever reads the answer finds the
                // refusal counted.
                self.refuse(reason, peer, None, Detail::Limit(limit));
                let _ = stream.write(&ws::http_error(503, "too many connections"));
                drop(stream);
                continue;
            }
            let _ = stream.set_nodelay(true);
            if self.config.socket_send_buffer_bytes > 0 {
                set_send_buffer(&stream, self.config.socket_send_buffer_bytes);
            }
            let index = match self.free.pop() {
                Some(i) => i,
                None => {
                    self.conns.push(None);
                    self.conns.len() - 1
                }
            };
            assert!(index <= INDEX_MASK, "connection slots exhausted");
            self.generation += 1;
            let id = self.generation << INDEX_BITS | index;
            if self
                .poll
                .registry()
                .register(&mut stream, Token(id), Interest::READABLE)
                .is_err()
            {
                self.ips.remove(peer.ip());
                self.free.push(index);
                continue;
            }
            let now = self.now_ns();
            let rate = u64::from(self.config.messages_per_second.max(1));
            self.conns[index] = Some(Conn {
                id,
                stream,
                peer,
                phase: Phase::Handshake,
                rbuf: Vec::new(),
                reader: ws::Reader::default(),
                deflate: false,
                echo: false,
                out: VecDeque::new(),
                out_pos: 0,
                out_bytes: 0,
                writable_registered: false,
                dirty: false,
                read_again: false,
                opened_ns: now,
                last_rx_ns: now,
                last_ping_ns: now,
                engaged: false,
                subs: Vec::new(),
                private: 0,
                bucket: TokenBucket::new(rate, now),
                next_request_id: 1,
                pending: VecDeque::new(),
                auth_id: None,
                snapshot_due: Vec::new(),
            });
            self.stats
                .connections_active
                .fetch_add(1, Ordering::Relaxed);
            self.stats.connections_total.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Reads what the socket holds and handles it.
    fn read(&mut self, id: usize, link: &mut RetailEnd) {
        let mut frames_left = FRAMES_PER_PASS;
        // Frames read in an earlier pass and not handled yet go first; while some are
        // left nothing more is read, so the read buffer stays within one read of them.
        let backlog = self
            .conn_ref(id)
            .is_some_and(|c| c.phase != Phase::Handshake && !c.rbuf.is_empty());
        if backlog {
            if !self.handle_bytes(id, link, &mut frames_left) {
                return;
            }
            if frames_left == 0 {
                self.read_again(id);
                return;
            }
        }
        for _ in 0..READS_PER_PASS {
            let Some(c) = slot(&mut self.conns, id) else {
                return;
            };
            let n = match c.stream.read(&mut self.scratch) {
                Ok(0) => {
                    self.drop_conn(id, link);
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.drop_conn(id, link);
                    return;
                }
            };
            let now = self.now_ns();
            let Some(c) = slot(&mut self.conns, id) else {
                return;
            };
            c.rbuf.extend_from_slice(&self.scratch[..n]);
            c.last_rx_ns = now;
            if !self.handle_bytes(id, link, &mut frames_left) {
                return;
            }
            if frames_left == 0 {
                break;
            }
        }
        self.read_again(id);
    }

    /// Reads a connection again next pass, once: one that always has bytes also raises a
    /// readiness event on every arrival, and each read of it used to queue it again, so
    /// it was read as many more times per pass as passes went by (108 entries for two
    /// flooding connections after 3 s, 2026-12-08).
    fn read_again(&mut self, id: usize) {
        if let Some(c) = slot(&mut self.conns, id) {
            if !c.read_again {
                c.read_again = true;
                self.unread.push(id);
            }
        }
    }

    /// Handles the complete handshake or frames in the read buffer, at most
    /// `frames_left` frames (each handled one is counted off). False if the connection
    /// is gone or no longer reads.
    fn handle_bytes(&mut self, id: usize, link: &mut RetailEnd, frames_left: &mut usize) -> bool {
        let Some(c) = self.conn(id) else {
            return false;
        };
        if c.phase == Phase::Handshake && !self.handshake(id, link) {
            return false;
        }
        let Some(c) = self.conn(id) else {
            return false;
        };
        // Each frame is handled as soon as it is parsed, so a connection closed by one
        // message (its rate abused, a binary frame) has nothing after it parsed, and a
        // compressed message that will be refused for the rate is not inflated: a batch
        // of tiny compressed messages, each inflating to `message_max_kib`, costs no
        // more than the messages the connection may send.
        let mut rbuf = std::mem::take(&mut c.rbuf);
        let mut reader = std::mem::take(&mut c.reader);
        let mut at = 0usize;
        let mut failure = None;
        let mut reading = true;
        // One clock read for the frames read together: a flood of empty frames made a
        // read per frame most of the loop's time.
        let now = self.now_ns();
        // Bounded: each frame consumes at least two bytes, and by `frames_left`.
        for _ in 0..rbuf.len() / 2 + 1 {
            if *frames_left == 0 {
                break;
            }
            let Some(c) = slot(&mut self.conns, id) else {
                break;
            };
            let ip = c.peer.ip();
            let echo = c.echo;
            // Echoes (conformance suites) are neither rated nor budgeted.
            let budget = &mut self.inflate_budgets;
            let rate = self.config.inflated_bytes_per_second_per_ip;
            // Only a connection that negotiated compression can send a compressed
            // message (RSV1 is a protocol error otherwise): only those touch the budget.
            let inflate = c.phase == Phase::Open
                && (echo
                    || (c.bucket.has_token(now)
                        && (!c.deflate
                            || budget
                                .entry(ip)
                                .or_insert_with(|| Budget::new(rate, now))
                                .has_room(now))));
            let inflated_before = self.inflater.total_out();
            let mut cx = ReadContext {
                deflate: c.deflate,
                message_bytes_max: self.config.message_bytes_max,
                inflate,
                inflater: &mut self.inflater,
            };
            let parsed = reader.next(&rbuf[at..], &mut cx);
            let inflated = self.inflater.total_out() - inflated_before;
            if inflated > 0 && !echo {
                if let Some(b) = self.inflate_budgets.get_mut(&ip) {
                    b.charge(inflated, now);
                }
            }
            self.stats
                .bytes_inflated
                .store(self.inflater.total_out(), Ordering::Relaxed);
            match parsed {
                Ok((0, _)) => break,
                Ok((n, m)) => {
                    at += n;
                    *frames_left -= 1;
                    if let Some(m) = m {
                        if !self.message(id, m, link) {
                            reading = false;
                            break;
                        }
                    }
                }
                Err(f) => {
                    failure = Some(f);
                    break;
                }
            }
        }
        rbuf.drain(..at);
        if rbuf.is_empty() && rbuf.capacity() > RBUF_KEEP_BYTES {
            rbuf = Vec::new();
        }
        if let Some(c) = self.conn(id) {
            c.rbuf = rbuf;
            c.reader = reader;
        }
        if !reading {
            return false;
        }
        if let Some(f) = failure {
            let refusal = match f.code {
                close::MESSAGE_TOO_BIG | close::INVALID_PAYLOAD => Refusal::MalformedFrame,
                _ => Refusal::ProtocolViolation,
            };
            self.refuse_conn(id, refusal, Detail::None);
            self.close_with(id, f.code, f.reason);
            return false;
        }
        self.conn_ref(id).is_some()
    }

    fn handshake(&mut self, id: usize, link: &mut RetailEnd) -> bool {
        let echo_path = self.config.echo_path.clone();
        let compression = self.config.compression;
        let Some(c) = self.conn(id) else {
            return false;
        };
        match ws::read_handshake(&c.rbuf) {
            Handshake::Partial if c.rbuf.len() > HANDSHAKE_BYTES_MAX => {
                let answer = ws::http_error(431, "request too large");
                self.http_refuse(id, answer, link);
                false
            }
            Handshake::Partial => false,
            Handshake::Refuse(status, why) => {
                let answer = ws::http_error(status, why);
                self.http_refuse(id, answer, link);
                false
            }
            Handshake::Upgrade(mut u, n) => {
                let path = u.path.split('?').next().unwrap_or("/").to_string();
                let echo = echo_path.as_deref().is_some_and(|p| p == path);
                if !echo && path != "/" && path != "/ws" {
                    let answer = ws::http_error(404, "the WebSocket API is at /ws");
                    self.http_refuse(id, answer, link);
                    return false;
                }
                if !compression {
                    u.deflate = None;
                }
                c.rbuf.drain(..n);
                c.deflate = u.deflate.is_some();
                c.echo = echo;
                c.phase = Phase::Open;
                let response = ws::handshake_response(&u);
                self.queue_chunk(id, Chunk::Own(response));
                self.core.conn_opened(id, Listener::WebSocket);
                true
            }
        }
    }

    fn http_refuse(&mut self, id: usize, answer: Vec<u8>, link: &mut RetailEnd) {
        if let Some(c) = self.conn(id) {
            let _ = c.stream.write(&answer);
        }
        self.refuse_conn(id, Refusal::ProtocolViolation, Detail::None);
        self.drop_conn(id, link);
    }

    /// Handles one message or control frame. False if the connection stops reading.
    fn message(&mut self, id: usize, m: Incoming, link: &mut RetailEnd) -> bool {
        self.stats.messages_in.fetch_add(1, Ordering::Relaxed);
        let Some(c) = self.conn(id) else {
            return false;
        };
        if let Phase::Closing { .. } = c.phase {
            if let Incoming::Close(..) = m {
                // The client answered our close: the connection is done.
                self.drop_conn(id, link);
                return false;
            }
            return true;
        }
        let echo = c.echo;
        match m {
            Incoming::Close(code, _) => {
                let code = code.unwrap_or(close::NORMAL);
                let frame = if code == close::NORMAL || (3000..5000).contains(&code) {
                    ws::close_frame(code, "")
                } else {
                    ws::close_frame(close::NORMAL, "")
                };
                self.queue_chunk(id, Chunk::Own(frame));
                if let Some(c) = self.conn(id) {
                    c.phase = Phase::Closing {
                        deadline_ns: c.last_rx_ns + CLOSE_WAIT_NS,
                        after_flush: true,
                    };
                }
                false
            }
            Incoming::Ping(payload) => {
                if !self.take_token(id) {
                    return self.conn_ref(id).is_some();
                }
                self.queue_own(id, ws::frame(ws::OP_PONG, false, &payload));
                true
            }
            Incoming::Pong(_) => true,
            Incoming::Unread { binary } if binary && !echo => self.refuse_binary(id),
            // Over the message rate when it was read (echoes are not rated, so always
            // inflated): refused as any message over the rate, unread.
            Incoming::Unread { .. } => {
                self.refuse_over_rate(id);
                self.conn_ref(id).is_some()
            }
            Incoming::Binary(data) if echo => {
                self.queue_own(id, ws::frame(ws::OP_BINARY, false, &data));
                true
            }
            Incoming::Text(data) if echo => {
                self.queue_own(id, ws::frame(ws::OP_TEXT, false, &data));
                true
            }
            Incoming::Binary(_) => self.refuse_binary(id),
            Incoming::Text(text) => {
                if !self.take_token(id) {
                    return self.conn_ref(id).is_some();
                }
                self.request(id, &text, link);
                self.conn_ref(id).is_some_and(|c| c.phase == Phase::Open)
            }
        }
    }

    /// A binary message outside the echo path (read or left unread): closed 1003.
    fn refuse_binary(&mut self, id: usize) -> bool {
        self.refuse_conn(id, Refusal::ProtocolViolation, Detail::None);
        self.close_with(
            id,
            close::UNSUPPORTED_DATA,
            "binary frames are not part of this API",
        );
        false
    }

    /// Takes one of the connection's inbound message tokens; an over-rate message is
    /// answered 429, and a second's worth of those closes the connection (1008).
    fn take_token(&mut self, id: usize) -> bool {
        let now = self.now_ns();
        let Some(c) = self.conn(id) else {
            return false;
        };
        if c.bucket.try_take(now) {
            return true;
        }
        self.refuse_over_rate(id);
        false
    }

    /// Answers a message over the rate 429, or closes the connection 1008 when the
    /// refusals within one second exceed the rate.
    fn refuse_over_rate(&mut self, id: usize) {
        let now = self.now_ns();
        let Some(c) = self.conn(id) else {
            return;
        };
        let abusive = c.bucket.refuse(now);
        self.refuse_conn(id, Refusal::RateLimited, Detail::None);
        if abusive {
            self.refuse_conn(id, Refusal::RateLimitAbuse, Detail::None);
            self.close_with(
                id,
                close::POLICY_VIOLATION,
                "message rate limit: too many refused",
            );
        } else {
            let e = err(code::TOO_MANY_REQUESTS, "message rate limit");
            self.send_text(id, &api::reply_error("null", &e));
        }
    }

    // ------------------------------------------------------------ requests

    fn request(&mut self, id: usize, text: &[u8], link: &mut RetailEnd) {
        let r = match api::parse_request(text) {
            Ok(r) => r,
            Err((rid, e)) => {
                self.refuse_conn(id, Refusal::MalformedRequest, Detail::None);
                self.send_text(id, &api::reply_error(&rid, &e));
                return;
            }
        };
        let result = match r.method.as_str() {
            "ping" => Ok(Some(b"\"pong\"".to_vec())),
            "markets" => Ok(Some(self.markets_json())),
            "subscribe" => self.subscribe(id, &r.params, true),
            "unsubscribe" => self.subscribe(id, &r.params, false),
            "auth" => self.auth(id, &r, link),
            "order.place" | "order.cancel" | "order.replace" | "order.cancelAll"
            | "account.balances" | "account.openOrders" => self.trade(id, &r, link),
            other => {
                self.refuse_conn(id, Refusal::MalformedRequest, Detail::None);
                Err(err(
                    code::UNKNOWN_METHOD,
                    format!("unknown method {other:?}"),
                ))
            }
        };
        match result {
            Ok(Some(json)) => self.send_text(id, &api::reply_result(&r.id, &json)),
            Ok(None) => {}
            Err(e) => self.send_text(id, &api::reply_error(&r.id, &e)),
        }
        if r.method == "subscribe" {
            self.send_snapshots(id);
        }
    }

    fn markets_json(&self) -> Vec<u8> {
        let mut j = vec![b'['];
        for (i, m) in self.publisher.markets().enumerate() {
            if i > 0 {
                j.push(b',');
            }
            api::market_entry(&mut j, m);
        }
        j.push(b']');
        j
    }

    /// Subscribes or unsubscribes the cross product of `channels` and `markets`
    /// (private channels take no market).
    fn subscribe(
        &mut self,
        id: usize,
        params: &Value,
        on: bool,
    ) -> Result<Option<Vec<u8>>, ApiError> {
        // A name given twice is one subscription: one snapshot, one copy of each update,
        // one count against the limit, one name in the reply.
        let mut channels = api::names(params, "channels", "channel")?;
        let mut markets = api::names(params, "markets", "market")?;
        dedup_keeping_order(&mut channels);
        dedup_keeping_order(&mut markets);
        if channels.is_empty() {
            return Err(err(code::BAD_REQUEST, "channels is required"));
        }
        let mut public = Vec::new();
        let mut private = 0u8;
        for ch in &channels {
            match ch.as_str() {
                "orders" => private |= PRIVATE_ORDERS,
                "fills" => private |= PRIVATE_FILLS,
                "balances" => private |= PRIVATE_BALANCES,
                name => {
                    let Some(channel) = Channel::from_name(name) else {
                        return Err(err(code::BAD_REQUEST, format!("unknown channel {name:?}")));
                    };
                    if markets.is_empty() {
                        return Err(err(code::BAD_REQUEST, format!("{name} needs markets")));
                    }
                    for symbol in &markets {
                        let market = self
                            .publisher
                            .market_id(symbol)
                            .ok_or_else(|| api::reject(RejectReason::UnknownMarket))?;
                        public.push((market, channel));
                    }
                }
            }
        }
        let account = self.core.session_of(id).map(|s| s.account);
        if private != 0 && account.is_none() && on {
            return Err(err(
                code::NOT_AUTHENTICATED,
                "private channels need auth first",
            ));
        }
        let subscriptions_max = self.config.subscriptions_max as usize;
        let Some(c) = self.conn(id) else {
            return Ok(None);
        };
        if on {
            let new: Vec<(MarketId, Channel)> = public
                .iter()
                .copied()
                .filter(|s| !c.subs.contains(s))
                .collect();
            let private_new = (private & !c.private).count_ones() as usize;
            if c.subs.len() + c.private.count_ones() as usize + new.len() + private_new
                > subscriptions_max
            {
                self.refuse_conn(
                    id,
                    Refusal::SubscriptionLimit,
                    Detail::Limit(subscriptions_max as u32),
                );
                return Err(err(
                    code::TOO_MANY_SUBSCRIPTIONS,
                    format!("at most {subscriptions_max} subscriptions per connection"),
                ));
            }
            c.engaged = true;
            c.subs.extend(new.iter().copied());
            c.snapshot_due.extend(new.iter().copied());
            let balances_new = private & PRIVATE_BALANCES != 0 && c.private & PRIVATE_BALANCES == 0;
            c.private |= private;
            for s in new {
                self.subscribers.entry(s).or_default().push(id);
            }
            if let (true, Some(account)) = (balances_new, account) {
                self.balance_subs.entry(account).or_default().push(id);
                self.balance_due.push(account);
            }
        } else {
            c.subs.retain(|s| !public.contains(s));
            let balances_off = private & PRIVATE_BALANCES != 0 && c.private & PRIVATE_BALANCES != 0;
            c.private &= !private;
            for s in public {
                if let Some(list) = self.subscribers.get_mut(&s) {
                    list.retain(|x| *x != id);
                }
            }
            if let (true, Some(account)) = (balances_off, account) {
                if let Some(list) = self.balance_subs.get_mut(&account) {
                    list.retain(|x| *x != id);
                }
            }
        }
        let mut j = vec![b'['];
        let mut first = true;
        for ch in &channels {
            for m in markets.iter().filter(|_| Channel::from_name(ch).is_some()) {
                if !first {
                    j.push(b',');
                }
                first = false;
                crate::publisher::push_json_str(&mut j, &format!("{ch}@{m}"));
            }
            if Channel::from_name(ch).is_none() {
                if !first {
                    j.push(b',');
                }
                first = false;
                crate::publisher::push_json_str(&mut j, ch);
            }
        }
        j.push(b']');
        // The snapshots follow the reply (`send_snapshots`), for subscriptions not yet
        // given one.
        Ok(Some(j))
    }

    /// Sends the snapshot of each new subscription, after the subscribe's reply.
    fn send_snapshots(&mut self, id: usize) {
        let Some(c) = self.conn(id) else {
            return;
        };
        for (market, channel) in std::mem::take(&mut c.snapshot_due) {
            if let Some(json) = self.publisher.snapshot(market, channel) {
                self.send_text(id, &json);
            }
        }
    }

    fn auth(
        &mut self,
        id: usize,
        r: &api::Request,
        link: &mut RetailEnd,
    ) -> Result<Option<Vec<u8>>, ApiError> {
        match self.core.conn_state(id) {
            Some(ConnState::AwaitingLogin) => {}
            Some(_) => return Err(err(code::ALREADY_AUTHENTICATED, "already authenticated")),
            None => return Ok(None),
        }
        let p = &r.params;
        let key =
            api::u64_param(p, "key")?.ok_or_else(|| err(code::BAD_REQUEST, "key is required"))?;
        let timestamp_ns = api::u64_param(p, "timestamp")?
            .ok_or_else(|| err(code::BAD_REQUEST, "timestamp is required"))?;
        let nonce = api::u64_param(p, "nonce")?
            .ok_or_else(|| err(code::BAD_REQUEST, "nonce is required"))?;
        let signature = api::signature(p)?;
        let cancel_on_disconnect = p
            .get("cancelOnDisconnect")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let login = Login {
            api_key_id: key,
            timestamp_ns,
            nonce,
            signature,
            resume_session: 0,
            resume_from_seq: 0,
            heartbeat_ms: 0,
            flags: if cancel_on_disconnect {
                login_flags::CANCEL_ON_DISCONNECT
            } else {
                0
            },
        };
        if let Some(c) = self.conn(id) {
            c.auth_id = Some(r.id.clone());
            c.engaged = true;
        }
        let now = self.now();
        self.core.handle(id, ClientMessage::Login(login), now, link);
        Ok(None)
    }

    /// Order entry and account queries: through the session core, as binary requests.
    fn trade(
        &mut self,
        id: usize,
        r: &api::Request,
        link: &mut RetailEnd,
    ) -> Result<Option<Vec<u8>>, ApiError> {
        let Some(session) = self.core.session_of(id) else {
            return Err(err(code::NOT_AUTHENTICATED, "order entry needs auth first"));
        };
        let Some(c) = self.conn(id) else {
            return Ok(None);
        };
        if c.pending.len() >= INFLIGHT_MAX {
            return Err(err(code::TOO_MANY_REQUESTS, "too many requests in flight"));
        }
        let request_id = c.next_request_id;
        c.next_request_id += 1;
        let lookup = |s: &str| {
            self.publisher
                .market_id(s)
                .and_then(|m| self.publisher.market(m))
        };
        let (method, built) = match r.method.as_str() {
            "order.place" => (Method::Place, api::new_order(request_id, &r.params, lookup)),
            "order.cancel" => (Method::Cancel, api::cancel(request_id, &r.params, lookup)),
            "order.replace" => (Method::Replace, api::replace(request_id, &r.params, lookup)),
            "order.cancelAll" => (
                Method::CancelAll,
                api::cancel_all(request_id, &r.params, lookup),
            ),
            "account.openOrders" => (
                Method::OpenOrders,
                api::open_orders(request_id, &r.params, lookup),
            ),
            _ => (
                Method::Balances,
                Ok(ClientMessage::BalanceQuery(crate::protocol::BalanceQuery {
                    request_id,
                })),
            ),
        };
        let Some(c) = self.conn(id) else {
            return Ok(None);
        };
        c.pending.push_back(Pending {
            request_id,
            id: r.id.clone(),
            method,
            error: None,
            msgs: Vec::new(),
        });
        match built {
            Ok(msg) => {
                let now = self.now();
                self.core.handle(id, msg, now, link);
            }
            Err(e) => {
                // Refused here, answered in request order behind what is in flight.
                let template = match method {
                    Method::Place => template::NEW_ORDER,
                    Method::Cancel => template::CANCEL,
                    Method::Replace => template::REPLACE,
                    Method::CancelAll => template::MASS_CANCEL,
                    Method::OpenOrders => template::OPEN_ORDERS_QUERY,
                    Method::Balances => template::BALANCE_QUERY,
                };
                if let Some(p) = self.conn(id).and_then(|c| c.pending.back_mut()) {
                    p.error = Some(e);
                }
                self.refuse_conn(id, Refusal::MalformedRequest, Detail::Template(template));
                self.core
                    .refuse_request(session.id, request_id, template, RejectReason::Malformed);
            }
        }
        Ok(None)
    }

    // ------------------------------------------------------------ closing

    /// Queues a close frame and stops reading requests; the connection ends when the
    /// client answers or after a short wait.
    fn close_with(&mut self, id: usize, code: u16, reason: &str) {
        let now = self.now_ns();
        let Some(c) = self.conn(id) else {
            return;
        };
        match c.phase {
            Phase::Closing { .. } => return,
            Phase::Handshake => {
                let _ = c.stream.write(&ws::http_error(400, reason));
                c.phase = Phase::Closing {
                    deadline_ns: now,
                    after_flush: true,
                };
                return;
            }
            Phase::Open => {}
        }
        c.phase = Phase::Closing {
            deadline_ns: now + CLOSE_WAIT_NS,
            after_flush: false,
        };
        let frame = ws::close_frame(code, reason);
        self.queue_chunk(id, Chunk::Own(frame));
        self.unsubscribe_all(id);
    }

    fn unsubscribe_all(&mut self, id: usize) {
        let Some(c) = self.conn(id) else {
            return;
        };
        let subs = std::mem::take(&mut c.subs);
        let balances = c.private & PRIVATE_BALANCES != 0;
        c.private = 0;
        for s in subs {
            if let Some(list) = self.subscribers.get_mut(&s) {
                list.retain(|x| *x != id);
            }
        }
        if balances {
            if let Some(account) = self.core.session_of(id).map(|s| s.account) {
                if let Some(list) = self.balance_subs.get_mut(&account) {
                    list.retain(|x| *x != id);
                }
            }
        }
    }

    /// Ends a connection now.
    fn drop_conn(&mut self, id: usize, link: &mut RetailEnd) {
        self.unsubscribe_all(id);
        let index = id & INDEX_MASK;
        let Some(mut c) = self.conns.get_mut(index).and_then(Option::take) else {
            return;
        };
        if c.id != id {
            self.conns[index] = Some(c);
            return;
        }
        let _ = self.poll.registry().deregister(&mut c.stream);
        self.ips.remove(c.peer.ip());
        if self.ips.count(c.peer.ip()) == 0 {
            self.inflate_budgets.remove(&c.peer.ip());
        }
        self.free.push(index);
        self.stats
            .connections_active
            .fetch_sub(1, Ordering::Relaxed);
        let now = self.now();
        self.core.conn_closed(id, now, link);
    }

    /// Writes every connection that has output: one send each, batched into one
    /// system call per `fanout::OPS_PER_SUBMIT` connections (`fanout`), then the usual
    /// per-connection write for what is left of a queue longer than one send gathers.
    fn flush_all(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        let mut sending = std::mem::take(&mut self.sending);
        let mut results = std::mem::take(&mut self.send_results);
        sending.clear();
        results.clear();
        for &id in &dirty {
            if let Some(c) = slot(&mut self.conns, id) {
                c.dirty = false;
                if !c.out.is_empty() && !c.writable_registered {
                    sending.push(id);
                }
            }
        }
        let conns = &self.conns;
        let sends = sending.iter().map(|&id| {
            let c = conns[id & INDEX_MASK]
                .as_ref()
                .expect("a connection with output stays until its flush");
            (c.stream.as_raw_fd(), queued_slices(c))
        });
        let was_batched = self.batch.is_batched();
        self.batch.write_each(sends, &mut results);
        if was_batched && !self.batch.is_batched() {
            self.stats.fanout_fell_back.store(true, Ordering::Relaxed);
        }
        debug_assert_eq!(results.len(), sending.len());
        let now = self.now_ns();
        for (&id, result) in sending.iter().zip(results.drain(..)) {
            let Some(c) = slot(&mut self.conns, id) else {
                continue;
            };
            let offered: usize = queued_slices(c).map(|b| b.len()).sum();
            let socket_full = match result {
                Ok(written) => {
                    take_written(c, written);
                    written < offered
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => false,
                Err(_) => {
                    end_after_write_error(c, now);
                    false
                }
            };
            if socket_full {
                // What the socket did not take waits for it to be writable.
                self.after_write(id);
            }
        }
        // The rest: queues longer than one send, and connections closing after a flush.
        // A connection now waiting for writability is flushed when it is writable.
        for &id in &dirty {
            if self.conn_ref(id).is_some_and(|c| !c.writable_registered) {
                self.flush(id);
            }
        }
        dirty.clear();
        debug_assert!(self.dirty.is_empty(), "a flush queues nothing");
        self.dirty = dirty;
        self.sending = sending;
        self.send_results = results;
    }

    /// Writes what is queued; waits for writability if the socket is full.
    fn flush(&mut self, id: usize) {
        let now = self.now_ns();
        let Some(c) = slot(&mut self.conns, id) else {
            return;
        };
        // Bounded: each write makes progress or stops.
        for _ in 0..1024 {
            if c.out.is_empty() {
                break;
            }
            let mut slices = [IoSlice::new(&[]); IOVECS_MAX];
            let mut n = 0;
            for (i, bytes) in queued_slices(c).enumerate() {
                slices[i] = IoSlice::new(bytes);
                n += 1;
            }
            match (&c.stream).write_vectored(&slices[..n]) {
                Ok(0) => break,
                Ok(written) => take_written(c, written),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    end_after_write_error(c, now);
                    break;
                }
            }
        }
        self.after_write(id);
    }

    /// After a write: waits for writability while output is left, frees an idle
    /// queue's room, and ends a connection that was closing once its output is out.
    fn after_write(&mut self, id: usize) {
        let now = self.now_ns();
        let Some(c) = slot(&mut self.conns, id) else {
            return;
        };
        let pending = !c.out.is_empty();
        if !pending && c.out.capacity() > OUT_KEEP_CHUNKS {
            // An idle connection keeps no memory from its last burst.
            c.out = VecDeque::new();
        }
        crate::interest::set_writable(
            self.poll.registry(),
            &mut c.stream,
            Token(id),
            pending,
            &mut c.writable_registered,
        );
        if !pending {
            if let Phase::Closing {
                after_flush: true, ..
            } = c.phase
            {
                c.phase = Phase::Closing {
                    deadline_ns: now,
                    after_flush: true,
                };
                let _ = c.stream.shutdown(std::net::Shutdown::Write);
            }
        }
    }

    // ------------------------------------------------------------ refusals

    fn refuse(&mut self, reason: Refusal, peer: SocketAddr, key_id: Option<u64>, detail: Detail) {
        self.stats.refusals.add(reason);
        let now = self.now_ns();
        let record = RefusalRecord {
            reason,
            peer,
            listener: Listener::WebSocket,
            key_id,
            detail,
        };
        self.refusal_log.refused(now, record);
    }

    fn refuse_conn(&mut self, id: usize, reason: Refusal, detail: Detail) {
        let Some(peer) = self.conn_ref(id).map(|c| c.peer) else {
            return;
        };
        let key_id = self.core.session_of(id).map(|s| s.key_id);
        self.refuse(reason, peer, key_id, detail);
    }

    // ------------------------------------------------------------ timers

    fn timers(&mut self, link: &mut RetailEnd) {
        self.accept();
        let now = self.now_ns();
        let ping_ns = u64::from(self.config.ping_interval_ms) * 1_000_000;
        let idle_ns = u64::from(self.config.idle_timeout_ms) * 1_000_000;
        let first_ns = u64::from(self.config.first_subscription_ms) * 1_000_000;
        let mut pings = Vec::new();
        let mut silent = Vec::new();
        let mut unengaged = Vec::new();
        let mut ended = Vec::new();
        for c in self.conns.iter_mut().flatten() {
            match c.phase {
                Phase::Closing { deadline_ns, .. } => {
                    if now >= deadline_ns {
                        ended.push(c.id);
                    }
                }
                Phase::Handshake => {
                    if now.saturating_sub(c.opened_ns) > first_ns {
                        ended.push(c.id);
                    }
                }
                Phase::Open => {
                    if now.saturating_sub(c.last_rx_ns) > idle_ns {
                        silent.push(c.id);
                    } else if !c.engaged && !c.echo && now.saturating_sub(c.opened_ns) > first_ns {
                        unengaged.push(c.id);
                    } else if now.saturating_sub(c.last_ping_ns) >= ping_ns {
                        c.last_ping_ns = now;
                        pings.push(c.id);
                    }
                }
            }
        }
        for id in pings {
            let stamp = (now / 1_000_000).to_be_bytes();
            self.queue_chunk(id, Chunk::Own(ws::frame(ws::OP_PING, false, &stamp)));
        }
        for id in silent {
            self.refuse_conn(id, Refusal::HeartbeatTimeout, Detail::None);
            // The close frame goes to the socket if it has room (a peer that is gone
            // takes nothing), then the connection ends.
            self.close_with(id, close::POLICY_VIOLATION, "silent too long");
            self.flush(id);
            self.drop_conn(id, link);
        }
        for id in unengaged {
            self.refuse_conn(id, Refusal::SubscriptionTimeout, Detail::None);
            self.close_with(id, close::POLICY_VIOLATION, "no subscription in time");
        }
        for id in ended {
            self.drop_conn(id, link);
        }
        self.refusal_log.tick(now);
    }

    /// The end of `run`: every open connection hears `serverShutdown` and a close
    /// (1001); the loop waits a little for them to be written.
    fn stop_gracefully(&mut self, link: &mut RetailEnd) {
        let notice = br#"{"channel":"system","type":"serverShutdown"}"#;
        let ids: Vec<usize> = self.conns.iter().flatten().map(|c| c.id).collect();
        for &id in &ids {
            self.send_text(id, notice);
            self.close_with(id, close::GOING_AWAY, "server shutdown");
        }
        self.flush_all();
        let deadline = Instant::now() + STOP_FLUSH_MAX;
        let mut events = Events::with_capacity(1024);
        // Bounded by the deadline: each wait is at most 10 ms.
        while Instant::now() < deadline {
            let unsent = self.conns.iter().flatten().any(|c| !c.out.is_empty());
            if !unsent {
                break;
            }
            if self
                .poll
                .poll(&mut events, Some(Duration::from_millis(10)))
                .is_err()
            {
                break;
            }
            for ev in events.iter() {
                if ev.is_writable() && ev.token() != LISTENER && ev.token() != WAKER {
                    self.flush(ev.token().0);
                }
            }
        }
        for id in ids {
            self.drop_conn(id, link);
        }
        self.apply_actions(link);
        link.end_pass();
    }
}

/// Sets SO_SNDBUF (best effort: the kernel may round it).
fn set_send_buffer(stream: &TcpStream, bytes: usize) {
    use std::os::fd::AsRawFd;
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: a plain setsockopt on a socket this process owns, with a valid int.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// The connection `id` names, if it is still there (borrowing only the slots).
/// Drops the repeats of each name, keeping its first place (a request's lists are
/// short: `message_max_kib` bounds them).
fn dedup_keeping_order(names: &mut Vec<String>) {
    let mut seen = std::collections::HashSet::with_capacity(names.len());
    names.retain(|n| seen.insert(n.clone()));
}

/// The front of a connection's queue as one send gathers it: at most `IOVECS_MAX`
/// chunks, the first from where the last write stopped.
fn queued_slices(c: &Conn) -> impl Iterator<Item = &[u8]> {
    c.out.iter().take(IOVECS_MAX).enumerate().map(|(i, chunk)| {
        let bytes = chunk.bytes();
        if i == 0 {
            &bytes[c.out_pos..]
        } else {
            bytes
        }
    })
}

/// Takes `written` bytes off the front of a connection's queue.
fn take_written(c: &mut Conn, mut written: usize) {
    assert!(
        written <= c.out_bytes,
        "the socket took no more than was queued"
    );
    c.out_bytes -= written;
    // Bounded by the chunks the write covered.
    while written > 0 {
        let front_left = c.out[0].bytes().len() - c.out_pos;
        if written >= front_left {
            written -= front_left;
            c.out.pop_front();
            c.out_pos = 0;
        } else {
            c.out_pos += written;
            written = 0;
        }
    }
}

/// A connection whose socket failed: what it had queued can never be written.
fn drop_output(c: &mut Conn) {
    c.out.clear();
    c.out_bytes = 0;
    c.out_pos = 0;
}

/// A write failed (the peer is gone, the kernel is short of buffers, or io_uring lost
/// the send's outcome): what was queued is dropped, and since the client's stream now
/// misses frames, or may hold part of one, nothing more is sent and the connection
/// ends (its subscriptions stop at the next update, the timers drop it). Its client
/// reconnects and starts again from snapshots, rather than read a stream with a hole.
fn end_after_write_error(c: &mut Conn, now_ns: u64) {
    drop_output(c);
    let _ = c.stream.shutdown(std::net::Shutdown::Both);
    c.phase = Phase::Closing {
        deadline_ns: now_ns,
        after_flush: true,
    };
}

fn slot(conns: &mut [Option<Conn>], id: usize) -> Option<&mut Conn> {
    match conns.get_mut(id & INDEX_MASK) {
        Some(Some(c)) if c.id == id => Some(c),
        _ => None,
    }
}

fn msg_request_id(msg: &ServerMessage) -> u64 {
    match msg {
        ServerMessage::OrderAccepted(m) => m.request_id,
        ServerMessage::OrderRejected(m) => m.request_id,
        ServerMessage::Filled(m) => m.request_id,
        ServerMessage::Cancelled(m) => m.request_id,
        ServerMessage::Replaced(m) => m.request_id,
        ServerMessage::MassCancelDone(m) => m.request_id,
        ServerMessage::Balance(m) => m.request_id,
        ServerMessage::BalanceEnd(m) => m.request_id,
        ServerMessage::OpenOrder(m) => m.request_id,
        ServerMessage::OpenOrdersEnd(m) => m.request_id,
        ServerMessage::SystemEvent(m) => m.request_id,
        ServerMessage::AdminAck(m) => m.request_id,
        ServerMessage::RequestDone(m) => m.request_id,
        _ => 0,
    }
}
