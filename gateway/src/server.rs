//! The binary-protocol gateway: one mio event loop serving every connection.
//!
//! It decodes requests, checks sessions, permissions and limits, submits engine commands
//! and queries through a [`Backend`], and turns what comes back into sequenced reports
//! routed to the sessions that own them. It never blocks on a client: output is
//! buffered per connection up to a bound, and a client that does not read is cut off.
//!
//! Sessions outlive connections (for resume), so the two are separate: a `Conn` is a
//! socket, a `Session` is the sequenced stream of one login.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use ringex_engine::{
    AccountId, CommandKind, Event, MarketId, OrderId, OrderRef, Output, Query, QueryReply,
    RejectReason,
};

use crate::backend::{Backend, BackendError, Delivery};
use crate::limits::{ConnectionCounts, NoncesSeen, TokenBucket};
use crate::protocol::{
    decode_client, encode_server, login_flags, permission, template, AdminAck, Balance, BalanceEnd,
    Cancelled, ClientMessage, Filled, FrameError, Liquidity, Login, LoginAccepted,
    LoginRejectReason, LogoutReason, MassCancelDone, OpenOrder, OpenOrdersEnd, OrderAccepted,
    OrderRejected, Replaced, RequestDone, ServerMessage, SystemEvent, FRAME_SIZE_MAX, HEADER_SIZE,
};
use crate::refusals::{
    Detail, Listener, LogQueue, Refusal, RefusalCounters, RefusalLog, RefusalRecord,
    LOG_LINES_PER_REASON, LOG_LINES_PER_WINDOW, LOG_WINDOW_NS,
};

const TRADING: Token = Token(0);
const ADMIN: Token = Token(1);
const WAKER: Token = Token(2);
const FIRST_CONN: usize = 3;

/// Bytes read from a socket per call; frames are at most `FRAME_SIZE_MAX`.
const READ_BUFFER_BYTES: usize = 64 * 1024;
/// Deliveries handled per loop pass, so reads and writes are never starved.
const DRAIN_PER_PASS: usize = 4096;
/// How often timers (heartbeats, timeouts, session expiry) are checked.
const TIMER_EVERY: Duration = Duration::from_millis(20);
/// Longest sleep in `poll` when idle.
const IDLE_POLL: Duration = Duration::from_millis(50);
/// Granted heartbeat interval bounds (docs/protocol.md §3.2).
const HEARTBEAT_MS_MIN: u32 = 100;
const HEARTBEAT_MS_MAX: u32 = 1000;

/// The largest server frame (Filled, 88 bytes) fits: encode buffers need no more, and
/// zeroing 512 bytes per message showed up in profiles.
const SERVER_FRAME_MAX: usize = 128;
const _: () = assert!(SERVER_FRAME_MAX <= FRAME_SIZE_MAX);
/// A connection's output buffer keeps its capacity between bursts up to this; a larger
/// one (a slow reader's backlog, a resume's replay) is released once it is written out.
const WBUF_KEEP_BYTES: usize = 64 * 1024;

/// Tag layout: the top byte says what a submission was for, the rest names it.
const PURPOSE_SHIFT: u32 = 56;
const PURPOSE_REQUEST: u64 = 1;
const PURPOSE_LOGIN: u64 = 2;
const PURPOSE_WARM: u64 = 3;
const PURPOSE_INTERNAL: u64 = 4;
/// The barrier query of a stop (see `stop_gracefully`).
const PURPOSE_STOP: u64 = 5;
/// How long a stop waits for the answers to what was submitted and for the clients to
/// take them.
const STOP_DRAIN_MAX: Duration = Duration::from_secs(5);
/// A bound on each of a stop's waiting loops: a pass waits at most 1 ms, so the deadline
/// ends them first.
const STOP_PASSES_MAX: usize = 2 * STOP_DRAIN_MAX.as_millis() as usize;

fn tag(purpose: u64, id: u64) -> u64 {
    assert!(id < 1 << PURPOSE_SHIFT);
    purpose << PURPOSE_SHIFT | id
}

#[derive(Clone, Debug)]
pub struct GatewayConfig {
    pub trading_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub heartbeat_ms: u32,
    pub idle_timeout_ms: u32,
    pub login_timeout_ms: u32,
    /// Login timestamps further than this from the server clock are refused, and nonces
    /// are remembered this long.
    pub login_freshness_ms: u32,
    pub outbound_buffer_bytes: usize,
    pub resume_window_messages: u32,
    pub session_linger_ms: u64,
    pub connections_max: u32,
    pub connections_per_ip: u32,
    pub requests_per_second_per_key: u32,
    /// Logical sessions one API key may have at once, detached ones included.
    pub sessions_per_key_max: u32,
    /// After the last socket or exchange activity, poll without sleeping for this long
    /// (0: always sleep in `poll` when idle). Worth it only on a core of its own.
    pub spin_us: u32,
}

impl GatewayConfig {
    /// Ephemeral loopback ports and the documented defaults: for tests.
    pub fn loopback() -> GatewayConfig {
        GatewayConfig {
            trading_addr: "127.0.0.1:0".parse().expect("address"),
            admin_addr: "127.0.0.1:0".parse().expect("address"),
            heartbeat_ms: 1000,
            idle_timeout_ms: 5000,
            login_timeout_ms: 5000,
            login_freshness_ms: 5000,
            outbound_buffer_bytes: 4 << 20,
            resume_window_messages: 65_536,
            session_linger_ms: 60_000,
            connections_max: 1024,
            connections_per_ip: 256,
            requests_per_second_per_key: 100_000,
            sessions_per_key_max: 16,
            spin_us: 0,
        }
    }
}

/// Counters for metrics and tests.
#[derive(Debug, Default)]
pub struct GatewayStats {
    pub connections_active: AtomicU64,
    pub connections_total: AtomicU64,
    pub frames_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub slow_consumers: AtomicU64,
    pub rate_limited: AtomicU64,
    /// Time the event loop spent on passes that had work (socket events or engine
    /// output), from the end of the poll to the end of the pass: against wall time, how
    /// busy the loop is. Near 100% the loop saturates, and well before that requests
    /// queue behind each other's passes.
    pub busy_ns: AtomicU64,
    /// Passes that took 100 µs or more, and 1 ms or more: stalls of the event loop
    /// (large bursts of work, or the thread losing its core), which every request
    /// waiting meanwhile pays. Counted for passes with work and for polls that should
    /// have returned at once.
    pub passes_slow_100us: AtomicU64,
    pub passes_slow_1ms: AtomicU64,
    /// Refusals of peers by reason (`refusals`): each is also logged, at a bounded rate,
    /// through [`Gateway::log_queue`].
    pub refusals: RefusalCounters,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ConnState {
    AwaitingLogin,
    LoggingIn,
    Active(u64),
}

struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    admin_listener: bool,
    /// Marked for closing: queue nothing more.
    closing: bool,
    rbuf: Box<[u8]>,
    rlen: usize,
    /// Output not yet fully written: whole frames back to back from index 0.
    /// It is only ever cut at a frame boundary (see [`frame_around`]), even when the
    /// socket took part of a frame: the client must never get part of a frame followed
    /// by another frame.
    wbuf: Vec<u8>,
    /// Bytes of `wbuf` the socket has taken; may fall inside a frame.
    wpos: usize,
    state: ConnState,
    opened_ns: u64,
    last_rx_ns: u64,
    last_tx_ns: u64,
    heartbeat_ns: u64,
    silence_ns: u64,
    writable_registered: bool,
    /// Bytes of a resume replay still allowed above the outbound limit: the replay is
    /// bounded by the retained window, which may be larger than the limit, and a client
    /// must be able to resume from anywhere in it. Zero once the backlog is back under
    /// the limit.
    replay_allowance_bytes: usize,
}

/// A request the session is waiting on, in submission order.
#[derive(Clone, Copy, Debug)]
struct Inflight {
    request_id: u64,
    template: u16,
    market: MarketId,
    order: Option<OrderRef>,
    /// Messages sent for it so far.
    sent: u32,
    /// Refused by the gateway itself: answered when it reaches the front, so answers stay
    /// in request order.
    local_reject: Option<RejectReason>,
}

struct Session {
    id: u64,
    key_id: u64,
    account: AccountId,
    permissions: u32,
    /// Logged in on the admin listener.
    admin: bool,
    conn: Option<usize>,
    next_seq: u64,
    /// Encoded sequenced frames still resumable, oldest first, back to back.
    retained: VecDeque<u8>,
    retained_first_seq: u64,
    retained_count: u32,
    last_request_id: u64,
    inflight: VecDeque<Inflight>,
    cancel_on_disconnect: bool,
    detached_at_ns: Option<u64>,
}

struct PendingLogin {
    login: Login,
    key: Option<(AccountId, [u8; 32], u32, bool)>,
}

pub struct Gateway {
    config: GatewayConfig,
    poll: Poll,
    waker: Arc<Waker>,
    trading: TcpListener,
    admin: TcpListener,
    conns: HashMap<usize, Conn>,
    next_conn: usize,
    sessions: HashMap<u64, Session>,
    next_session: u64,
    by_account: HashMap<AccountId, Vec<u64>>,
    pending_logins: HashMap<usize, PendingLogin>,
    /// Client order ids of open orders, to echo them on every report.
    orders: HashMap<OrderId, u64>,
    /// Market buys by budget between their acceptance and their end, which is always a
    /// Cancelled in the same command: a few at most.
    budget_orders: Vec<OrderId>,
    buckets: HashMap<u64, TokenBucket>,
    nonces: HashMap<u64, NoncesSeen>,
    ips: ConnectionCounts,
    stats: Arc<GatewayStats>,
    /// Refusals on their way to the log (see `refuse`).
    refusal_log: RefusalLog,
    log_queue: Arc<LogQueue>,
    base: Instant,
    match_seq: u64,
    match_index: u64,
    timers_at: Instant,
    /// Connections to close at the end of this pass (found where the backend is not at
    /// hand), with the Logout reason to send.
    closing: Vec<(usize, Option<LogoutReason>)>,
    /// Reused buffers: no allocation per loop pass.
    deliveries: Vec<Delivery>,
    /// Connections given output this pass, in order (see `flush_all`).
    dirty: Vec<usize>,
    /// Connections whose read stopped at its bound with bytes perhaps left: readiness is
    /// edge-triggered, so no event will come for those bytes; the next pass reads on.
    unread: Vec<usize>,
    unread_spare: Vec<usize>,
    /// The stop's barrier query was answered (see `stop_gracefully`).
    stop_barrier_answered: bool,
    /// Accounts whose cancel-on-disconnect sessions were ended by an admin command (see
    /// `end_sessions`): their orders are cancelled at the end of the pass.
    cancel_all_pending: Vec<AccountId>,
    /// Listeners (trading, admin) whose accepting stopped before the backlog was empty
    /// (the per-pass bound, or an error such as running out of file descriptors): no new
    /// edge comes for connections already waiting, so the timers accept again.
    accept_again: [bool; 2],
}

/// Whose sessions an admin command ends.
#[derive(Clone, Copy, Debug)]
enum SessionsOf {
    Key(u64),
    Account(AccountId),
}

/// Cancel-on-disconnect: cancels the account's orders in every market. The Cancelled
/// events route to the account's sessions (a detached one included, for resume); the
/// gateway needs no answer itself. `session`: the one that asked, or 0 when it is gone.
fn cancel_on_disconnect(backend: &mut dyn Backend, account: AccountId, session: u64) {
    let cmd = ringex_engine::Command::CancelAll {
        account,
        market: None,
    };
    let _ = backend.submit(&cmd, tag(PURPOSE_INTERNAL, session));
}

fn wall_clock_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl Gateway {
    /// Binds both listeners and prepares the event loop.
    pub fn bind(config: GatewayConfig) -> io::Result<Gateway> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let mut trading = TcpListener::bind(config.trading_addr)?;
        let mut admin = TcpListener::bind(config.admin_addr)?;
        poll.registry()
            .register(&mut trading, TRADING, Interest::READABLE)?;
        poll.registry()
            .register(&mut admin, ADMIN, Interest::READABLE)?;
        let log_queue = Arc::new(LogQueue::default());
        Ok(Gateway {
            config,
            poll,
            waker,
            trading,
            admin,
            conns: HashMap::new(),
            next_conn: FIRST_CONN,
            sessions: HashMap::new(),
            next_session: 1,
            by_account: HashMap::new(),
            pending_logins: HashMap::new(),
            orders: HashMap::new(),
            budget_orders: Vec::new(),
            buckets: HashMap::new(),
            nonces: HashMap::new(),
            ips: ConnectionCounts::default(),
            stats: Arc::new(GatewayStats::default()),
            refusal_log: RefusalLog::new(
                Arc::clone(&log_queue),
                (LOG_LINES_PER_WINDOW, LOG_LINES_PER_REASON),
                LOG_WINDOW_NS,
                0,
            ),
            log_queue,
            base: Instant::now(),
            match_seq: 0,
            match_index: 0,
            timers_at: Instant::now(),
            closing: Vec::new(),
            deliveries: Vec::with_capacity(DRAIN_PER_PASS),
            dirty: Vec::new(),
            unread: Vec::new(),
            unread_spare: Vec::new(),
            stop_barrier_answered: false,
            accept_again: [false; 2],
            cancel_all_pending: Vec::new(),
        })
    }

    /// Wakes the loop from another thread (the node calls it when output arrives).
    pub fn waker(&self) -> Arc<Waker> {
        Arc::clone(&self.waker)
    }

    pub fn trading_addr(&self) -> io::Result<SocketAddr> {
        self.trading.local_addr()
    }

    pub fn admin_addr(&self) -> io::Result<SocketAddr> {
        self.admin.local_addr()
    }

    pub fn stats(&self) -> Arc<GatewayStats> {
        Arc::clone(&self.stats)
    }

    /// The log records of refusals (`refusals`), for the daemon to drain and print.
    pub fn log_queue(&self) -> Arc<LogQueue> {
        Arc::clone(&self.log_queue)
    }

    fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    /// Serves until `stop` is set, then sends every client `Logout{ServerShutdown}`.
    pub fn run(&mut self, backend: &mut dyn Backend, stop: &AtomicBool) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let spin = Duration::from_micros(u64::from(self.config.spin_us));
        let mut active_at = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            // Spinning is opt-in: measured on 2 cores, a spinning event loop starves the
            // clients and a pipeline thread more than a wake-up costs; with the inline
            // topology and a core of its own it saves the wake-up.
            let spinning = !spin.is_zero() && active_at.elapsed() < spin;
            let busy = spinning || !self.unread.is_empty() || backend.outputs_available() || {
                backend.want_wake();
                backend.outputs_available()
            };
            let timeout = if busy { Duration::ZERO } else { IDLE_POLL };
            let polled_from = Instant::now();
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            let worked_from = Instant::now();
            let mut worked = !events.is_empty() || !self.unread.is_empty();
            if !events.is_empty() {
                active_at = worked_from;
            }
            // Reads below may queue their connection again: into the spare list, so
            // neither list is ever reallocated.
            let unread = std::mem::take(&mut self.unread_spare);
            let mut ids = std::mem::replace(&mut self.unread, unread);
            for &id in &ids {
                self.read(id, false, backend);
            }
            ids.clear();
            self.unread_spare = ids;
            for ev in events.iter() {
                match ev.token() {
                    TRADING => self.accept(false),
                    ADMIN => self.accept(true),
                    WAKER => {}
                    Token(id) => {
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            self.read(id, ev.is_read_closed() || ev.is_error(), backend);
                        }
                        if ev.is_writable() {
                            self.flush(id);
                        }
                    }
                }
            }
            worked |= self.deliver_outputs(backend);
            if self.timers_at.elapsed() >= TIMER_EVERY {
                self.timers_at = Instant::now();
                self.timers(backend);
            }
            self.end_pass(backend);
            let ended = Instant::now();
            if worked {
                let busy_ns = (ended - worked_from).as_nanos() as u64;
                self.stats.busy_ns.fetch_add(busy_ns, Ordering::Relaxed);
            }
            // A poll that may sleep is not a stall; one that should return at once is.
            let pass_from = if timeout.is_zero() {
                polled_from
            } else {
                worked_from
            };
            if worked || timeout.is_zero() {
                self.count_slow_pass(ended - pass_from);
            }
        }
        self.stop_gracefully(backend);
        // What the current window suppressed so far, rather than nothing.
        let now = self.now_ns();
        self.refusal_log.flush(now);
        Ok(())
    }

    /// The end of `run`: reads nothing more, answers every request already submitted
    /// (so every processed request gets its `RequestDone`), runs the sessions'
    /// cancel-on-disconnect while they can still hear the reports, then sends every
    /// client `Logout{ServerShutdown}` and closes without discarding what the kernel
    /// still holds for it. Bounded by `STOP_DRAIN_MAX`.
    fn stop_gracefully(&mut self, backend: &mut dyn Backend) {
        let deadline = Instant::now() + STOP_DRAIN_MAX;
        let flagged: Vec<(u64, AccountId)> = self
            .sessions
            .values()
            .filter(|s| s.conn.is_some() && s.cancel_on_disconnect)
            .map(|s| (s.id, s.account))
            .collect();
        for (sid, account) in flagged {
            cancel_on_disconnect(backend, account, sid);
            if let Some(s) = self.sessions.get_mut(&sid) {
                s.cancel_on_disconnect = false;
            }
        }
        // A barrier: its reply comes after the outputs of everything submitted before it.
        self.stop_barrier_answered = false;
        let barrier = Query::ApiKey { key_id: 0 };
        let barrier_sent = backend.query(&barrier, tag(PURPOSE_STOP, 0)).is_ok();
        let mut events = Events::with_capacity(1024);
        for _ in 0..STOP_PASSES_MAX {
            self.deliver_outputs(backend);
            self.end_pass(backend);
            let answered = (!barrier_sent || self.stop_barrier_answered)
                && self.sessions.values().all(|s| s.inflight.is_empty());
            if answered || Instant::now() >= deadline {
                break;
            }
            self.flush_writable(&mut events, Duration::from_millis(1));
        }
        let ids: Vec<usize> = self.conns.keys().copied().collect();
        for &id in &ids {
            self.send_unsequenced(
                id,
                &ServerMessage::Logout {
                    reason: LogoutReason::ServerShutdown,
                },
            );
        }
        self.flush_all();
        for _ in 0..STOP_PASSES_MAX {
            let unsent = self.conns.values().any(|c| c.wpos < c.wbuf.len());
            if !unsent || Instant::now() >= deadline {
                break;
            }
            self.flush_writable(&mut events, Duration::from_millis(1));
        }
        for id in ids {
            if let Some(conn) = self.conns.get_mut(&id) {
                // Half-close, then read what the client still had in flight: closing with
                // unread input would reset the connection and discard the Logout.
                let _ = conn.stream.shutdown(std::net::Shutdown::Write);
                let mut scratch = [0u8; 4096];
                for _ in 0..64 {
                    match conn.stream.read(&mut scratch) {
                        Ok(n) if n > 0 => {}
                        _ => break,
                    }
                }
            }
            self.close(id, None, backend);
        }
    }

    /// Hands what the backend has output to the sessions it belongs to; true if there
    /// was any.
    fn deliver_outputs(&mut self, backend: &mut dyn Backend) -> bool {
        let mut deliveries = std::mem::take(&mut self.deliveries);
        deliveries.clear();
        backend.drain(DRAIN_PER_PASS, &mut |d| deliveries.push(*d));
        let any = !deliveries.is_empty();
        for d in &deliveries {
            self.deliver(d, backend);
        }
        self.deliveries = deliveries;
        any
    }

    /// The end of every pass: closes the connections the pass ended, runs the
    /// cancel-on-disconnect of sessions an admin command ended, and writes what the pass
    /// produced.
    fn end_pass(&mut self, backend: &mut dyn Backend) {
        for (id, reason) in std::mem::take(&mut self.closing) {
            self.close(id, reason, backend);
        }
        for account in std::mem::take(&mut self.cancel_all_pending) {
            // The session is gone already: no session to tag.
            cancel_on_disconnect(backend, account, 0);
        }
        self.flush_all();
    }

    /// Waits up to `wait` for sockets to become writable and writes to them.
    fn flush_writable(&mut self, events: &mut Events, wait: Duration) {
        if self.poll.poll(events, Some(wait)).is_err() {
            return;
        }
        for ev in events.iter() {
            let token = ev.token();
            if ev.is_writable() && ![TRADING, ADMIN, WAKER].contains(&token) {
                self.flush(token.0);
            }
        }
    }

    fn count_slow_pass(&self, took: Duration) {
        if took >= Duration::from_micros(100) {
            self.stats.passes_slow_100us.fetch_add(1, Ordering::Relaxed);
            if took >= Duration::from_millis(1) {
                self.stats.passes_slow_1ms.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    // ------------------------------------------------------------ connections

    fn accept(&mut self, admin_listener: bool) {
        self.accept_again[usize::from(admin_listener)] = false;
        // Bounded: at most the configured connection count per wake-up.
        for _ in 0..self.config.connections_max.max(1) {
            let listener = if admin_listener {
                &self.admin
            } else {
                &self.trading
            };
            let (mut stream, peer) = match listener.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // A connection reset while it waited, or a signal: the next one may be fine.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted
                    ) =>
                {
                    continue
                }
                // Out of file descriptors or memory: try again at the next timer tick.
                Err(_) => {
                    self.accept_again[usize::from(admin_listener)] = true;
                    return;
                }
            };
            let limit = if self.conns.len() as u32 >= self.config.connections_max {
                Some((Refusal::ConnectionLimit, self.config.connections_max))
            } else if !self.ips.try_add(peer.ip(), self.config.connections_per_ip) {
                Some((Refusal::PerIpLimit, self.config.connections_per_ip))
            } else {
                None
            };
            if let Some((reason, limit)) = limit {
                // Over a limit: close at once; nothing was promised.
                drop(stream);
                let listener = Listener::of(admin_listener);
                self.refuse(reason, peer, listener, None, Detail::Limit(limit));
                continue;
            }
            let _ = stream.set_nodelay(true);
            let id = self.next_conn;
            self.next_conn += 1;
            if self
                .poll
                .registry()
                .register(&mut stream, Token(id), Interest::READABLE)
                .is_err()
            {
                self.ips.remove(peer.ip());
                continue;
            }
            let now = self.now_ns();
            self.conns.insert(
                id,
                Conn {
                    stream,
                    peer,
                    admin_listener,
                    closing: false,
                    rbuf: vec![0u8; READ_BUFFER_BYTES].into_boxed_slice(),
                    rlen: 0,
                    wbuf: Vec::with_capacity(16 * 1024),
                    wpos: 0,
                    state: ConnState::AwaitingLogin,
                    opened_ns: now,
                    last_rx_ns: now,
                    last_tx_ns: now,
                    heartbeat_ns: u64::from(self.config.heartbeat_ms) * 1_000_000,
                    silence_ns: u64::from(self.config.idle_timeout_ms) * 1_000_000,
                    writable_registered: false,
                    replay_allowance_bytes: 0,
                },
            );
            self.stats
                .connections_active
                .fetch_add(1, Ordering::Relaxed);
            self.stats.connections_total.fetch_add(1, Ordering::Relaxed);
        }
        // The bound, not the backlog, ended the loop.
        self.accept_again[usize::from(admin_listener)] = true;
    }

    /// Reads what the socket holds and handles the frames in it. `closing`: the peer
    /// closed or failed, so read on to the end of the stream.
    fn read(&mut self, id: usize, closing: bool, backend: &mut dyn Backend) {
        // Bounded: a socket read per pass until it would block.
        for _ in 0..64 {
            let Some(conn) = self.conns.get_mut(&id) else {
                return;
            };
            let space = conn.rbuf.len() - conn.rlen;
            let n = match conn.stream.read(&mut conn.rbuf[conn.rlen..]) {
                Ok(0) => {
                    self.close(id, None, backend);
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.close(id, None, backend);
                    return;
                }
            };
            conn.rlen += n;
            conn.last_rx_ns = self.base.elapsed().as_nanos() as u64;
            if !self.handle_frames(id, backend) {
                return;
            }
            // A short read emptied the socket, and bytes arriving later raise a new
            // readiness edge: the read that would only say WouldBlock is skipped (one
            // system call per request). Not when the peer closed: its end of stream
            // raises no further edge and must be read now.
            if n < space && !closing {
                return;
            }
        }
        self.unread.push(id);
    }

    /// Decodes and handles the complete frames in the read buffer. False if the
    /// connection was closed.
    fn handle_frames(&mut self, id: usize, backend: &mut dyn Backend) -> bool {
        let mut consumed = 0usize;
        // Bounded: every pass consumes at least one 8-byte frame.
        for _ in 0..READ_BUFFER_BYTES / 8 + 1 {
            let Some(conn) = self.conns.get(&id) else {
                return false;
            };
            let bytes = &conn.rbuf[consumed..conn.rlen];
            if bytes.is_empty() {
                break;
            }
            match decode_client(bytes) {
                Ok((msg, n)) => {
                    consumed += n;
                    self.stats.frames_in.fetch_add(1, Ordering::Relaxed);
                    if !self.handle(id, msg, backend) {
                        return false;
                    }
                }
                Err(FrameError::Incomplete) => break,
                Err(e) => match e.logout_reason() {
                    Some(reason) => {
                        if let Some(refusal) = Refusal::from_logout(reason) {
                            self.refuse_conn(id, refusal, Detail::Frame(e));
                        }
                        self.close(id, Some(reason), backend);
                        return false;
                    }
                    None => {
                        let FrameError::InvalidField {
                            template_id,
                            frame_len,
                            request_id,
                            ..
                        } = e
                        else {
                            unreachable!("only invalid request fields keep the session")
                        };
                        consumed += frame_len as usize;
                        let session = match self.conns.get(&id).map(|c| c.state) {
                            Some(ConnState::Active(s)) => s,
                            _ => {
                                // A request before the login.
                                let detail = Detail::Frame(e);
                                self.refuse_conn(id, Refusal::ProtocolViolation, detail);
                                self.close(id, Some(LogoutReason::ProtocolViolation), backend);
                                return false;
                            }
                        };
                        // The request-id rule applies to malformed requests too.
                        let fresh = self.sessions.get_mut(&session).is_some_and(|s| {
                            let fresh = request_id > s.last_request_id;
                            if fresh {
                                s.last_request_id = request_id;
                            }
                            fresh
                        });
                        if fresh {
                            self.refuse_conn(id, Refusal::MalformedRequest, Detail::Frame(e));
                            // Its fields could not be read: no market or order to name.
                            self.request_refused(
                                session,
                                request_id,
                                template_id,
                                (0, None),
                                RejectReason::Malformed,
                            );
                        }
                    }
                },
            }
        }
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.rbuf.copy_within(consumed..conn.rlen, 0);
            conn.rlen -= consumed;
        }
        true
    }

    /// Handles one decoded frame. False if the connection was closed.
    fn handle(&mut self, id: usize, msg: ClientMessage, backend: &mut dyn Backend) -> bool {
        let state = self.conns[&id].state;
        match (state, msg) {
            (ConnState::AwaitingLogin, ClientMessage::Login(login)) => {
                self.begin_login(id, login, backend)
            }
            (ConnState::Active(_), ClientMessage::Heartbeat) => true,
            (ConnState::Active(_), ClientMessage::Logout) => {
                self.close(id, Some(LogoutReason::Requested), backend);
                false
            }
            (ConnState::Active(s), msg) if msg.request_id().is_some() => {
                self.request(s, msg, backend)
            }
            (_, msg) => {
                let detail = Detail::Template(msg.template_id());
                self.refuse_conn(id, Refusal::ProtocolViolation, detail);
                self.close(id, Some(LogoutReason::ProtocolViolation), backend);
                false
            }
        }
    }

    /// Closes a connection, first queuing `Logout{reason}` (best effort) if given.
    fn close(&mut self, id: usize, reason: Option<LogoutReason>, backend: &mut dyn Backend) {
        if let Some(reason) = reason {
            if let Some(conn) = self.conns.get_mut(&id) {
                conn.closing = false;
            }
            self.send_unsequenced(id, &ServerMessage::Logout { reason });
            self.flush(id);
        }
        let Some(mut conn) = self.conns.remove(&id) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut conn.stream);
        self.ips.remove(conn.peer.ip());
        self.pending_logins.remove(&id);
        self.stats
            .connections_active
            .fetch_sub(1, Ordering::Relaxed);
        if let ConnState::Active(s) = conn.state {
            let now = self.now_ns();
            if let Some(session) = self.sessions.get_mut(&s) {
                session.conn = None;
                session.detached_at_ns = Some(now);
                if session.cancel_on_disconnect {
                    cancel_on_disconnect(backend, session.account, s);
                }
            }
        }
    }

    /// Writes the connections that got output this pass, in the order they got it: the
    /// session whose request caused a burst (its acceptance comes first) is written before
    /// the makers its order filled. Connections whose socket was full wait for writability.
    fn flush_all(&mut self) {
        let mut ids = std::mem::take(&mut self.dirty);
        for &id in &ids {
            self.flush(id);
        }
        ids.clear();
        self.dirty = ids;
    }

    /// Writes what is buffered; registers for writability if the socket is full.
    fn flush(&mut self, id: usize) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        // Bounded: each write makes progress or returns.
        for _ in 0..1024 {
            if conn.wpos == conn.wbuf.len() {
                conn.wbuf.clear();
                if conn.wbuf.capacity() > WBUF_KEEP_BYTES {
                    conn.wbuf.shrink_to(WBUF_KEEP_BYTES);
                }
                conn.wpos = 0;
                break;
            }
            match conn.stream.write(&conn.wbuf[conn.wpos..]) {
                Ok(0) => break,
                Ok(n) => conn.wpos += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // The peer is gone (reset, broken pipe): nothing more can reach it. The
                // read side sees the close and ends the connection.
                Err(_) => {
                    conn.wpos = conn.wbuf.len();
                    break;
                }
            }
        }
        let pending = conn.wpos < conn.wbuf.len();
        if conn.wbuf.len() - conn.wpos <= self.config.outbound_buffer_bytes {
            conn.replay_allowance_bytes = 0;
        }
        if pending && conn.wpos > conn.wbuf.len() / 2 {
            // Only whole written frames leave, so the buffer still starts at a frame. The
            // walk reads 2 bytes per frame written since the last drain.
            let (start, _) = frame_around(&conn.wbuf, conn.wpos);
            conn.wbuf.drain(..start);
            conn.wpos -= start;
        }
        if pending != conn.writable_registered {
            let interest = if pending {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            let _ = self
                .poll
                .registry()
                .reregister(&mut conn.stream, Token(id), interest);
            conn.writable_registered = pending;
        }
    }

    /// Queues a frame on a connection. False if that made it a slow consumer.
    fn queue(&mut self, id: usize, frame: &[u8]) -> bool {
        let Some(conn) = self.conns.get_mut(&id) else {
            return true;
        };
        let cap = self.config.outbound_buffer_bytes + conn.replay_allowance_bytes;
        if conn.closing {
            return true;
        }
        if conn.wbuf.len() - conn.wpos + frame.len() > cap {
            return false;
        }
        // Empty and not waiting for writability: new output for this pass's flush.
        if conn.wpos == conn.wbuf.len() && !conn.writable_registered {
            self.dirty.push(id);
        }
        conn.wbuf.extend_from_slice(frame);
        conn.last_tx_ns = self.base.elapsed().as_nanos() as u64;
        self.stats.messages_out.fetch_add(1, Ordering::Relaxed);
        true
    }

    fn send_unsequenced(&mut self, id: usize, msg: &ServerMessage) {
        let mut buf = [0u8; SERVER_FRAME_MAX];
        let n = encode_server(msg, &mut buf);
        let _ = self.queue(id, &buf[..n]);
    }

    // ------------------------------------------------------------ refusals

    /// Counts a refusal of a peer and passes it to the log, which writes at most a few
    /// lines a second and sums up the rest. Runs on refusals only, never for a request
    /// that goes through.
    fn refuse(
        &mut self,
        reason: Refusal,
        peer: SocketAddr,
        listener: Listener,
        key_id: Option<u64>,
        detail: Detail,
    ) {
        self.stats.refusals.add(reason);
        let now = self.now_ns();
        let record = RefusalRecord {
            reason,
            peer,
            listener,
            key_id,
            detail,
        };
        self.refusal_log.refused(now, record);
    }

    /// A refusal on an open connection: its peer, listener and key (the session's, or the
    /// one a pending login claims).
    fn refuse_conn(&mut self, id: usize, reason: Refusal, detail: Detail) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        let key_id = match conn.state {
            ConnState::Active(s) => self.sessions.get(&s).map(|s| s.key_id),
            ConnState::AwaitingLogin | ConnState::LoggingIn => {
                self.pending_logins.get(&id).map(|p| p.login.api_key_id)
            }
        };
        let (peer, listener) = (conn.peer, Listener::of(conn.admin_listener));
        self.refuse(reason, peer, listener, key_id, detail);
    }

    // ------------------------------------------------------------ login

    fn begin_login(&mut self, id: usize, login: Login, backend: &mut dyn Backend) -> bool {
        if let Some(c) = self.conns.get_mut(&id) {
            c.state = ConnState::LoggingIn;
        }
        self.pending_logins
            .insert(id, PendingLogin { login, key: None });
        let q = Query::ApiKey {
            key_id: login.api_key_id,
        };
        if backend.query(&q, tag(PURPOSE_LOGIN, id as u64)).is_err() {
            self.pending_logins.remove(&id);
            self.reject_login(id, LoginRejectReason::Unavailable, backend);
            return false;
        }
        true
    }

    fn reject_login(&mut self, id: usize, reason: LoginRejectReason, backend: &mut dyn Backend) {
        self.send_unsequenced(id, &ServerMessage::LoginRejected { reason });
        self.flush(id);
        self.close(id, None, backend);
    }

    /// The key lookup came back: check the login in the documented order.
    fn finish_login(&mut self, id: usize, backend: &mut dyn Backend) {
        let Some(pending) = self.pending_logins.remove(&id) else {
            return;
        };
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        let (admin_listener, peer) = (conn.admin_listener, conn.peer);
        let login = pending.login;
        let now = wall_clock_ns();
        match self.check_login(&login, pending.key, admin_listener, now) {
            Err(reason) => {
                if let Some(refusal) = Refusal::from_login(reason) {
                    let detail = if reason == LoginRejectReason::StaleTimestamp {
                        let skew = i128::from(login.timestamp_ns) - i128::from(now);
                        Detail::ClockSkewNs(skew.clamp(i64::MIN.into(), i64::MAX.into()) as i64)
                    } else {
                        Detail::None
                    };
                    let listener = Listener::of(admin_listener);
                    self.refuse(refusal, peer, listener, Some(login.api_key_id), detail);
                }
                self.reject_login(id, reason, backend)
            }
            Ok((account, permissions)) => {
                self.open_session(id, login, account, permissions, backend)
            }
        }
    }

    fn check_login(
        &mut self,
        login: &Login,
        key: Option<(AccountId, [u8; 32], u32, bool)>,
        admin_listener: bool,
        now: u64,
    ) -> Result<(AccountId, u32), LoginRejectReason> {
        let Some((account, secret_hash, permissions, suspended)) = key else {
            return Err(LoginRejectReason::UnknownKey);
        };
        if suspended {
            return Err(LoginRejectReason::AccountSuspended);
        }
        let needed = if admin_listener {
            permission::ADMIN
        } else {
            permission::TRADE
        };
        if permissions & needed == 0 {
            return Err(LoginRejectReason::WrongListener);
        }
        if !login.verify(&secret_hash) {
            return Err(LoginRejectReason::BadSignature);
        }
        let window_ns = u64::from(self.config.login_freshness_ms) * 1_000_000;
        if login.timestamp_ns.abs_diff(now) > window_ns {
            return Err(LoginRejectReason::StaleTimestamp);
        }
        if !self
            .nonces
            .entry(login.api_key_id)
            .or_default()
            .admit(login.nonce, now, 2 * window_ns)
        {
            return Err(LoginRejectReason::ReplayedNonce);
        }
        if login.resume_session != 0 {
            let s = self
                .sessions
                .get(&login.resume_session)
                .ok_or(LoginRejectReason::ResumeImpossible)?;
            // A session stays on the listener it was opened on: an admin session resumed
            // on the trading listener would take admin requests there.
            if s.key_id != login.api_key_id || s.admin != admin_listener {
                return Err(LoginRejectReason::ResumeImpossible);
            }
            if s.conn.is_some() {
                return Err(LoginRejectReason::AlreadyLoggedIn);
            }
            let from = login.resume_from_seq;
            if from < s.retained_first_seq || from > s.next_seq {
                return Err(LoginRejectReason::ResumeImpossible);
            }
        } else {
            let open = self
                .sessions
                .values()
                .filter(|s| s.key_id == login.api_key_id)
                .count();
            if open >= self.config.sessions_per_key_max as usize {
                return Err(LoginRejectReason::TooManySessions);
            }
        }
        Ok((account, permissions))
    }

    fn open_session(
        &mut self,
        id: usize,
        login: Login,
        account: AccountId,
        permissions: u32,
        backend: &mut dyn Backend,
    ) {
        let heartbeat_ms = match login.heartbeat_ms {
            0 => self
                .config
                .heartbeat_ms
                .clamp(HEARTBEAT_MS_MIN, HEARTBEAT_MS_MAX),
            h => h.clamp(HEARTBEAT_MS_MIN, HEARTBEAT_MS_MAX),
        };
        let silence_ms = self.config.idle_timeout_ms.max(3 * heartbeat_ms);
        let cancel_on_disconnect = login.flags & login_flags::CANCEL_ON_DISCONNECT != 0;
        let resumed = login.resume_session != 0;
        // The window's most: no frame is larger than SERVER_FRAME_MAX.
        let retained_capacity = self.config.resume_window_messages as usize * SERVER_FRAME_MAX;
        let session_id = if resumed {
            login.resume_session
        } else {
            let sid = self.next_session;
            self.next_session += 1;
            self.sessions.insert(
                sid,
                Session {
                    id: sid,
                    key_id: login.api_key_id,
                    account,
                    permissions,
                    admin: self.conns.get(&id).is_some_and(|c| c.admin_listener),
                    conn: None,
                    next_seq: 1,
                    // Reserve the window up front (pages are touched only as it fills):
                    // growing by doubling would copy megabytes on the event loop.
                    retained: VecDeque::with_capacity(retained_capacity),
                    retained_first_seq: 1,
                    retained_count: 0,
                    last_request_id: 0,
                    inflight: VecDeque::new(),
                    cancel_on_disconnect,
                    detached_at_ns: None,
                },
            );
            self.by_account.entry(account).or_default().push(sid);
            // Learn the client order ids of orders that rest from before.
            let q = Query::OpenOrders {
                account,
                market: None,
            };
            let _ = backend.query(&q, tag(PURPOSE_WARM, sid));
            sid
        };
        let session = self.sessions.get_mut(&session_id).expect("session exists");
        session.conn = Some(id);
        session.detached_at_ns = None;
        session.cancel_on_disconnect = cancel_on_disconnect;
        let from = if resumed {
            login.resume_from_seq
        } else {
            session.next_seq
        };
        let mut flags = if cancel_on_disconnect {
            login_flags::CANCEL_ON_DISCONNECT
        } else {
            0
        };
        if resumed {
            flags |= login_flags::RESUMED;
        }
        let accepted = ServerMessage::LoginAccepted(LoginAccepted {
            session_id,
            next_seq: from,
            last_request_id: session.last_request_id,
            account,
            heartbeat_ms,
            flags,
        });
        // The replay: every retained frame from `from` on.
        let mut replay = Vec::new();
        let mut at = 0usize;
        let (front, back) = session.retained.as_slices();
        let retained: Vec<u8> = [front, back].concat();
        let seqs = session.retained_first_seq
            ..session.retained_first_seq + u64::from(session.retained_count);
        for seq in seqs {
            let len = u16::from_le_bytes([retained[at], retained[at + 1]]) as usize;
            if seq >= from {
                replay.extend_from_slice(&retained[at..at + len]);
            }
            at += len;
        }
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.state = ConnState::Active(session_id);
            conn.heartbeat_ns = u64::from(heartbeat_ms) * 1_000_000;
            conn.silence_ns = u64::from(silence_ms) * 1_000_000;
        }
        self.send_unsequenced(id, &accepted);
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.replay_allowance_bytes = replay.len();
        }
        if !replay.is_empty() && !self.queue(id, &replay) {
            self.slow_consumer(id, backend);
        }
    }

    // ------------------------------------------------------------ requests

    /// Handles an application request of an active session. False if the connection was
    /// closed.
    fn request(&mut self, session_id: u64, msg: ClientMessage, backend: &mut dyn Backend) -> bool {
        let request_id = msg.request_id().expect("a request");
        let Some(session) = self.sessions.get_mut(&session_id) else {
            return true;
        };
        if request_id <= session.last_request_id {
            // A retransmission: ignored by design (docs/protocol.md §3.3).
            return true;
        }
        // Admin requests only from admin sessions; orders only with the TRADE bit;
        // queries from either (docs/protocol.md §3.8, §3.9).
        let trade = session.permissions & permission::TRADE != 0;
        let is_query = matches!(
            msg,
            ClientMessage::BalanceQuery(_) | ClientMessage::OpenOrdersQuery(_)
        );
        let permitted = if msg.is_admin() {
            session.admin
        } else if is_query {
            trade || session.admin
        } else {
            trade
        };
        if !permitted {
            if let Some(c) = session.conn {
                let detail = Detail::Template(msg.template_id());
                self.refuse_conn(c, Refusal::NotPermitted, detail);
                self.close(c, Some(LogoutReason::NotPermitted), backend);
            }
            return false;
        }
        session.last_request_id = request_id;
        let account = session.account;
        let key_id = session.key_id;
        let (market, order) = request_subject(&msg);
        let template = msg.template_id();
        let now = self.now_ns();
        let rate = u64::from(self.config.requests_per_second_per_key.max(1));
        let bucket = self
            .buckets
            .entry(key_id)
            .or_insert_with(|| TokenBucket::new(rate, now));
        if !bucket.try_take(now) {
            let abusive = bucket.refuse(now);
            self.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
            let conn = self.sessions.get(&session_id).and_then(|s| s.conn);
            if let Some(c) = conn {
                self.refuse_conn(c, Refusal::RateLimited, Detail::Template(template));
            }
            self.request_refused(
                session_id,
                request_id,
                template,
                (market, order),
                RejectReason::RateLimited,
            );
            if abusive {
                // Its rejects are queued ahead of the Logout.
                if let Some(c) = self.sessions.get(&session_id).and_then(|s| s.conn) {
                    self.refuse_conn(c, Refusal::RateLimitAbuse, Detail::None);
                    self.close(c, Some(LogoutReason::RateLimitAbuse), backend);
                }
                return false;
            }
            return true;
        }
        let t = tag(PURPOSE_REQUEST, session_id);
        let submitted = match &msg {
            ClientMessage::BalanceQuery(_) => backend.query(&Query::Balances { account }, t),
            ClientMessage::OpenOrdersQuery(q) => backend.query(
                &Query::OpenOrders {
                    account,
                    market: (q.market != 0).then_some(q.market),
                },
                t,
            ),
            other => match other.to_command(account) {
                Some(cmd) => backend.submit(&cmd, t),
                None => Err(BackendError::Unavailable("not a command".into())),
            },
        };
        match submitted {
            Ok(()) => {
                let session = self.sessions.get_mut(&session_id).expect("exists");
                session.inflight.push_back(Inflight {
                    request_id,
                    template,
                    market,
                    order,
                    sent: 0,
                    local_reject: None,
                });
            }
            Err(_) => self.request_refused(
                session_id,
                request_id,
                template,
                (market, order),
                RejectReason::Unavailable,
            ),
        }
        true
    }

    /// A request the gateway answers itself: queued behind the session's earlier
    /// requests so answers stay in request order.
    fn request_refused(
        &mut self,
        session_id: u64,
        request_id: u64,
        template: u16,
        (market, order): (MarketId, Option<OrderRef>),
        reason: RejectReason,
    ) {
        let Some(session) = self.sessions.get_mut(&session_id) else {
            return;
        };
        session.inflight.push_back(Inflight {
            request_id,
            template,
            market,
            order,
            sent: 0,
            local_reject: Some(reason),
        });
        if session.inflight.len() == 1 {
            self.answer_local_rejects(session_id);
        }
    }

    /// Answers the gateway's own rejects waiting at the front of the queue.
    fn answer_local_rejects(&mut self, session_id: u64) {
        // Bounded by the queue's length.
        loop {
            let front = match self
                .sessions
                .get(&session_id)
                .and_then(|s| s.inflight.front())
            {
                Some(f) => *f,
                None => return,
            };
            let Some(reason) = front.local_reject else {
                return;
            };
            let msg = ServerMessage::OrderRejected(OrderRejected {
                seq: 0,
                request_id: front.request_id,
                request_template: front.template,
                order: front.order,
                market: front.market,
                reason,
            });
            self.send_sequenced(session_id, msg);
            self.send_sequenced(
                session_id,
                ServerMessage::RequestDone(RequestDone {
                    seq: 0,
                    request_id: front.request_id,
                    count: 1,
                }),
            );
            if let Some(s) = self.sessions.get_mut(&session_id) {
                s.inflight.pop_front();
            }
        }
    }

    // ------------------------------------------------------------ output

    /// Assigns the session's next seq, retains the frame for resume and queues it on the
    /// session's connection if attached.
    fn send_sequenced(&mut self, session_id: u64, mut msg: ServerMessage) {
        let window = self.config.resume_window_messages.max(1);
        let Some(session) = self.sessions.get_mut(&session_id) else {
            return;
        };
        msg.set_seq(session.next_seq);
        session.next_seq += 1;
        let mut buf = [0u8; SERVER_FRAME_MAX];
        let n = encode_server(&msg, &mut buf);
        session.retained.extend(&buf[..n]);
        session.retained_count += 1;
        // Bounded: evicts exactly the frames over the window.
        while session.retained_count > window {
            let len = u16::from_le_bytes([session.retained[0], session.retained[1]]) as usize;
            session.retained.drain(..len);
            session.retained_count -= 1;
            session.retained_first_seq += 1;
        }
        if let Some(c) = session.conn {
            if !self.queue(c, &buf[..n]) {
                self.stats.slow_consumers.fetch_add(1, Ordering::Relaxed);
                self.refuse_conn(c, Refusal::SlowConsumer, Detail::None);
                self.mark_closing(c, LogoutReason::SlowConsumer);
            }
        }
    }

    /// Marks a connection for closing at the end of this pass. A slow consumer loses its
    /// unsent output (it is retained for resume) so the Logout has room.
    fn mark_closing(&mut self, id: usize, reason: LogoutReason) {
        if let Some(conn) = self.conns.get_mut(&id) {
            if conn.closing {
                return;
            }
            conn.closing = true;
            if reason == LogoutReason::SlowConsumer {
                drop_unsent_frames(conn);
            }
            self.closing.push((id, Some(reason)));
        }
    }

    fn slow_consumer(&mut self, id: usize, backend: &mut dyn Backend) {
        self.stats.slow_consumers.fetch_add(1, Ordering::Relaxed);
        self.refuse_conn(id, Refusal::SlowConsumer, Detail::None);
        if let Some(conn) = self.conns.get_mut(&id) {
            // Make room for the Logout so it has a chance to arrive.
            drop_unsent_frames(conn);
        }
        self.close(id, Some(LogoutReason::SlowConsumer), backend);
    }

    /// Sends `msg` to every session of `account`; the originating session gets the
    /// request id, the others 0.
    fn send_to_account(&mut self, account: AccountId, origin: Option<u64>, msg: ServerMessage) {
        // Index, not clone: this runs for every routed event. Sending never changes the
        // account's session list (sessions end only in timers, logins and revocations).
        let count = self.by_account.get(&account).map_or(0, Vec::len);
        for i in 0..count {
            let sid = self.by_account[&account][i];
            let mut m = msg;
            let rid = if Some(sid) == origin {
                self.count_for_front(sid)
            } else {
                0
            };
            set_request_id(&mut m, rid);
            self.send_sequenced(sid, m);
        }
    }

    /// The front request's id, counting one more message sent for it.
    fn count_for_front(&mut self, session_id: u64) -> u64 {
        match self
            .sessions
            .get_mut(&session_id)
            .and_then(|s| s.inflight.front_mut())
        {
            Some(f) => {
                f.sent += 1;
                f.request_id
            }
            None => 0,
        }
    }

    /// Sends a message that answers the session's front request.
    fn send_to_origin(&mut self, session_id: u64, mut msg: ServerMessage) {
        let rid = self.count_for_front(session_id);
        set_request_id(&mut msg, rid);
        self.send_sequenced(session_id, msg);
    }

    fn deliver(&mut self, d: &Delivery, backend: &mut dyn Backend) {
        let purpose = d.tag >> PURPOSE_SHIFT;
        let id = d.tag & ((1 << PURPOSE_SHIFT) - 1);
        match purpose {
            PURPOSE_LOGIN => {
                self.login_reply(id as usize, d, backend);
                return;
            }
            PURPOSE_STOP => {
                if d.last {
                    self.stop_barrier_answered = true;
                }
                return;
            }
            PURPOSE_WARM => {
                if let Output::Reply(QueryReply::OpenOrder {
                    order_id,
                    client_order_id,
                    ..
                }) = d.item
                {
                    self.orders.insert(order_id, client_order_id);
                }
                return;
            }
            _ => {}
        }
        let origin = (purpose == PURPOSE_REQUEST && self.sessions.contains_key(&id)).then_some(id);
        match d.item {
            Output::Event(e) => self.route_event(d.seq, e, origin),
            Output::Reply(r) => {
                if let Some(o) = origin {
                    self.route_reply(o, r);
                }
            }
        }
        if d.last {
            if let Some(o) = origin {
                let front = self
                    .sessions
                    .get_mut(&o)
                    .and_then(|s| s.inflight.pop_front());
                if let Some(f) = front {
                    debug_assert!(f.local_reject.is_none());
                    let done = ServerMessage::RequestDone(RequestDone {
                        seq: 0,
                        request_id: f.request_id,
                        count: f.sent,
                    });
                    self.send_sequenced(o, done);
                }
                self.answer_local_rejects(o);
            }
        }
    }

    fn login_reply(&mut self, conn: usize, d: &Delivery, backend: &mut dyn Backend) {
        match d.item {
            Output::Reply(QueryReply::ApiKey {
                account,
                secret_hash,
                permissions,
                account_suspended,
                ..
            }) => {
                if let Some(p) = self.pending_logins.get_mut(&conn) {
                    p.key = Some((account, secret_hash, permissions, account_suspended));
                }
            }
            Output::Reply(QueryReply::End { .. }) => self.finish_login(conn, backend),
            _ => {}
        }
    }

    fn route_reply(&mut self, origin: u64, r: QueryReply) {
        let (template, market) = match self.sessions.get(&origin).and_then(|s| s.inflight.front()) {
            Some(f) => (f.template, f.market),
            None => return,
        };
        let msg = match r {
            QueryReply::Balance {
                asset,
                available,
                held,
                ..
            } => ServerMessage::Balance(Balance {
                seq: 0,
                request_id: 0,
                asset,
                available,
                held,
            }),
            QueryReply::OpenOrder {
                order_id,
                market,
                client_order_id,
                side,
                price,
                qty,
                ..
            } => {
                self.orders.insert(order_id, client_order_id);
                ServerMessage::OpenOrder(OpenOrder {
                    seq: 0,
                    request_id: 0,
                    order_id,
                    client_order_id,
                    market,
                    side,
                    price,
                    remaining_qty: qty,
                })
            }
            QueryReply::End { count, .. } if template == template::BALANCE_QUERY => {
                ServerMessage::BalanceEnd(BalanceEnd {
                    seq: 0,
                    request_id: 0,
                    count,
                })
            }
            QueryReply::End { count, .. } => ServerMessage::OpenOrdersEnd(OpenOrdersEnd {
                seq: 0,
                request_id: 0,
                market,
                count,
            }),
            QueryReply::ApiKey { .. } => return,
        };
        self.send_to_origin(origin, msg);
    }

    fn match_id(&mut self, seq: u64) -> u64 {
        if seq != self.match_seq {
            self.match_seq = seq;
            self.match_index = 0;
        }
        self.match_index += 1;
        seq << 16 | self.match_index.min(0xFFFF)
    }

    fn route_event(&mut self, seq: u64, e: Event, origin: Option<u64>) {
        match e {
            Event::Accepted {
                order_id,
                account,
                market,
                client_order_id,
                side,
                price,
                qty,
            } => {
                self.orders.insert(order_id, client_order_id);
                if qty == 0 {
                    // A market buy by budget: every fill reports remaining 0, and the
                    // order ends with its Cancelled{BudgetDone}.
                    self.budget_orders.push(order_id);
                }
                let msg = ServerMessage::OrderAccepted(OrderAccepted {
                    seq: 0,
                    request_id: 0,
                    order_id,
                    client_order_id,
                    market,
                    side,
                    price,
                    qty,
                });
                self.send_to_account(account, origin, msg);
            }
            Event::Trade {
                market,
                maker_order_id,
                taker_order_id,
                maker_account,
                taker_account,
                taker_side,
                price,
                qty,
                maker_fee,
                taker_fee,
                maker_remaining,
                taker_remaining,
            } => {
                let match_id = self.match_id(seq);
                for (order_id, account, side, liquidity, fee, remaining) in [
                    (
                        maker_order_id,
                        maker_account,
                        taker_side.opposite(),
                        Liquidity::Maker,
                        maker_fee,
                        maker_remaining,
                    ),
                    (
                        taker_order_id,
                        taker_account,
                        taker_side,
                        Liquidity::Taker,
                        taker_fee,
                        taker_remaining,
                    ),
                ] {
                    let client_order_id = self.orders.get(&order_id).copied().unwrap_or(0);
                    if remaining == 0 && !self.budget_orders.contains(&order_id) {
                        self.orders.remove(&order_id);
                    }
                    let msg = ServerMessage::Filled(Filled {
                        seq: 0,
                        request_id: 0,
                        order_id,
                        client_order_id,
                        match_id,
                        market,
                        side,
                        liquidity,
                        price,
                        qty,
                        remaining_qty: remaining,
                        fee,
                    });
                    let o = if liquidity == Liquidity::Taker {
                        origin
                    } else {
                        None
                    };
                    self.send_to_account(account, o, msg);
                }
            }
            Event::Cancelled {
                order_id,
                account,
                market,
                remaining_qty,
                reason,
            } => {
                let client_order_id = self.orders.remove(&order_id).unwrap_or(0);
                self.budget_orders.retain(|o| *o != order_id);
                let msg = ServerMessage::Cancelled(Cancelled {
                    seq: 0,
                    request_id: 0,
                    order_id,
                    client_order_id,
                    market,
                    remaining_qty,
                    reason,
                });
                self.send_to_account(account, origin, msg);
            }
            Event::Replaced {
                order_id,
                account,
                market,
                price,
                qty,
                priority_kept,
            } => {
                let client_order_id = self.orders.get(&order_id).copied().unwrap_or(0);
                let msg = ServerMessage::Replaced(Replaced {
                    seq: 0,
                    request_id: 0,
                    order_id,
                    client_order_id,
                    market,
                    price,
                    qty,
                    priority_kept,
                });
                self.send_to_account(account, origin, msg);
            }
            Event::Rejected { reason, .. } => {
                if let Some(o) = origin {
                    let Some(front) = self
                        .sessions
                        .get(&o)
                        .and_then(|s| s.inflight.front())
                        .copied()
                    else {
                        return;
                    };
                    let msg = ServerMessage::OrderRejected(OrderRejected {
                        seq: 0,
                        request_id: 0,
                        request_template: front.template,
                        order: front.order,
                        market: front.market,
                        reason,
                    });
                    self.send_to_origin(o, msg);
                }
            }
            Event::Level { .. } => {}
            Event::Funds {
                amount,
                external_ref,
                duplicate,
                ..
            } => {
                if let Some(o) = origin {
                    let kind = if amount >= 0 {
                        CommandKind::Deposit
                    } else {
                        CommandKind::Withdraw
                    };
                    let msg = admin_ack(kind, external_ref, duplicate);
                    self.send_to_origin(o, msg);
                }
            }
            Event::MarketStatus { market, status } => {
                if let Some(o) = origin {
                    let ack = admin_ack(CommandKind::SetMarketStatus, u64::from(market), false);
                    self.send_to_origin(o, ack);
                }
                let ids: Vec<u64> = self
                    .sessions
                    .keys()
                    .copied()
                    .filter(|s| Some(*s) != origin)
                    .collect();
                for sid in ids {
                    let msg = ServerMessage::SystemEvent(SystemEvent {
                        seq: 0,
                        request_id: 0,
                        market,
                        status,
                    });
                    self.send_sequenced(sid, msg);
                }
            }
            Event::CancelAllDone { count, .. } => {
                if let Some(o) = origin {
                    let market = self
                        .sessions
                        .get(&o)
                        .and_then(|s| s.inflight.front())
                        .map_or(0, |f| f.market);
                    let msg = ServerMessage::MassCancelDone(MassCancelDone {
                        seq: 0,
                        request_id: 0,
                        market,
                        count,
                    });
                    self.send_to_origin(o, msg);
                }
            }
            Event::AdminDone { kind, id } => {
                if let Some(o) = origin {
                    let msg = admin_ack(kind, id, false);
                    self.send_to_origin(o, msg);
                }
                match kind {
                    CommandKind::RevokeApiKey => self.end_sessions(SessionsOf::Key(id)),
                    CommandKind::SuspendAccount => {
                        if let Ok(account) = AccountId::try_from(id) {
                            self.end_sessions(SessionsOf::Account(account));
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// The sessions of a revoked key or a suspended account end now: their connections
    /// are told why (`KeyRevoked`) and closed at the end of the pass, and those that asked
    /// for cancel-on-disconnect get it, as on any other close.
    fn end_sessions(&mut self, which: SessionsOf) {
        let ids: Vec<u64> = self
            .sessions
            .values()
            .filter(|s| match which {
                SessionsOf::Key(key_id) => s.key_id == key_id,
                SessionsOf::Account(account) => s.account == account,
            })
            .map(|s| s.id)
            .collect();
        for sid in ids {
            let Some(session) = self.sessions.get(&sid) else {
                continue;
            };
            let (conn, account, cancel) =
                (session.conn, session.account, session.cancel_on_disconnect);
            if cancel && !self.cancel_all_pending.contains(&account) {
                self.cancel_all_pending.push(account);
            }
            if let Some(c) = conn {
                // The connection no longer belongs to a session.
                if let Some(conn) = self.conns.get_mut(&c) {
                    conn.state = ConnState::LoggingIn;
                }
                self.mark_closing(c, LogoutReason::KeyRevoked);
            }
            self.remove_session(sid);
        }
    }

    fn remove_session(&mut self, sid: u64) {
        if let Some(s) = self.sessions.remove(&sid) {
            if let Some(list) = self.by_account.get_mut(&s.account) {
                list.retain(|x| *x != sid);
                if list.is_empty() {
                    self.by_account.remove(&s.account);
                }
            }
        }
    }

    // ------------------------------------------------------------ timers

    fn timers(&mut self, backend: &mut dyn Backend) {
        for admin_listener in [false, true] {
            if self.accept_again[usize::from(admin_listener)] {
                self.accept(admin_listener);
            }
        }
        let now = self.now_ns();
        let login_timeout_ns = u64::from(self.config.login_timeout_ms) * 1_000_000;
        let mut to_close = Vec::new();
        let mut heartbeats = Vec::new();
        for (id, c) in &self.conns {
            match c.state {
                ConnState::AwaitingLogin | ConnState::LoggingIn => {
                    if now.saturating_sub(c.opened_ns) > login_timeout_ns && !c.closing {
                        to_close.push((*id, Some(LogoutReason::LoginTimeout)));
                    }
                }
                ConnState::Active(_) if c.closing => {}
                ConnState::Active(_) => {
                    if now.saturating_sub(c.last_rx_ns) > c.silence_ns {
                        to_close.push((*id, Some(LogoutReason::HeartbeatTimeout)));
                    } else if now.saturating_sub(c.last_tx_ns) >= c.heartbeat_ns {
                        heartbeats.push(*id);
                    }
                }
            }
        }
        for id in heartbeats {
            self.send_unsequenced(id, &ServerMessage::Heartbeat);
        }
        for (id, reason) in to_close {
            if let Some(refusal) = reason.and_then(Refusal::from_logout) {
                self.refuse_conn(id, refusal, Detail::None);
            }
            self.close(id, reason, backend);
        }
        self.refusal_log.tick(now);
        let linger_ns = self.config.session_linger_ms.saturating_mul(1_000_000);
        let expired: Vec<u64> = self
            .sessions
            .values()
            .filter(|s| {
                s.conn.is_none()
                    && s.detached_at_ns
                        .is_some_and(|at| now.saturating_sub(at) > linger_ns)
            })
            .map(|s| s.id)
            .collect();
        for sid in expired {
            self.remove_session(sid);
        }
    }
}

/// The start and the end of the frame of `wbuf` that holds byte `pos`, or `(pos, pos)`
/// when a frame starts at `pos` (or `pos` is the end). `wbuf` holds whole frames back to
/// back from index 0. Bounded: every step passes a frame of at least 8 bytes.
fn frame_around(wbuf: &[u8], pos: usize) -> (usize, usize) {
    let mut at = 0;
    while at < pos && at + 2 <= wbuf.len() {
        let len = usize::from(u16::from_le_bytes([wbuf[at], wbuf[at + 1]])).max(HEADER_SIZE);
        if at + len > pos {
            return (at, (at + len).min(wbuf.len()));
        }
        at += len;
    }
    (pos, pos)
}

/// Drops the frames the socket has not started on. The frame it took part of stays, to
/// be written out in full before the Logout: cut there, the client would read the
/// Logout's bytes as the rest of that frame (a desynchronised stream, or a forged
/// message that happens to decode).
fn drop_unsent_frames(conn: &mut Conn) {
    let (_, end) = frame_around(&conn.wbuf, conn.wpos);
    conn.wbuf.truncate(end);
}

/// The market and order a request names, for rejects.
fn request_subject(msg: &ClientMessage) -> (MarketId, Option<OrderRef>) {
    match msg {
        ClientMessage::NewOrder(o) => (
            o.market,
            (o.client_order_id != 0).then_some(OrderRef::Client(o.client_order_id)),
        ),
        ClientMessage::Cancel(c) => (c.market, Some(c.order)),
        ClientMessage::Replace(r) => (r.market, Some(r.order)),
        ClientMessage::MassCancel(m) => (m.market, None),
        ClientMessage::OpenOrdersQuery(q) => (q.market, None),
        _ => (0, None),
    }
}

/// An `AdminAck` for the originating session (its seq and request id are set on sending).
fn admin_ack(kind: CommandKind, id: u64, duplicate: bool) -> ServerMessage {
    ServerMessage::AdminAck(AdminAck {
        seq: 0,
        request_id: 0,
        kind,
        id,
        duplicate,
    })
}

fn set_request_id(msg: &mut ServerMessage, request_id: u64) {
    match msg {
        ServerMessage::OrderAccepted(m) => m.request_id = request_id,
        ServerMessage::OrderRejected(m) => m.request_id = request_id,
        ServerMessage::Filled(m) => m.request_id = request_id,
        ServerMessage::Cancelled(m) => m.request_id = request_id,
        ServerMessage::Replaced(m) => m.request_id = request_id,
        ServerMessage::MassCancelDone(m) => m.request_id = request_id,
        ServerMessage::Balance(m) => m.request_id = request_id,
        ServerMessage::BalanceEnd(m) => m.request_id = request_id,
        ServerMessage::OpenOrder(m) => m.request_id = request_id,
        ServerMessage::OpenOrdersEnd(m) => m.request_id = request_id,
        ServerMessage::SystemEvent(m) => m.request_id = request_id,
        ServerMessage::AdminAck(m) => m.request_id = request_id,
        ServerMessage::RequestDone(m) => m.request_id = request_id,
        ServerMessage::LoginAccepted(_)
        | ServerMessage::LoginRejected { .. }
        | ServerMessage::Logout { .. }
        | ServerMessage::Heartbeat => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{server_block_len, template, HEADER_SIZE};

    #[test]
    fn every_server_frame_fits_the_encode_buffer() {
        for id in template::SERVER_ALL {
            let frame = HEADER_SIZE + server_block_len(id).expect("known");
            assert!(frame <= SERVER_FRAME_MAX, "template {id}: {frame} bytes");
        }
    }
}
