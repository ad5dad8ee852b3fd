//! The binary-protocol gateway: one mio event loop serving every connection.
//!
//! It reads frames, decodes them and hands them to the [`SessionCore`] (sessions,
//! logins, permissions, limits, request bookkeeping: `session`), which submits engine
//! commands and queries through a [`Backend`] and routes what comes back to the
//! sessions that own them; this loop carries out what the core decides (queue a
//! message, close a connection, log a refusal). It never blocks on a client: output is
//! buffered per connection up to a bound, and a client that does not read is cut off.
//!
//! Sessions outlive connections (for resume), so the two are separate: a `Conn` here is
//! a socket, a session (in the core) is the sequenced stream of one login.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use rustc_hash::FxHashMap;

use crate::backend::{wall_clock_ns, Backend, Delivery};
use crate::handoff::GatewayEnd;
use crate::limits::ConnectionCounts;
use crate::protocol::{
    decode_client, encode_server, FrameError, LoginRejectReason, LogoutReason, ServerMessage,
    HEADER_SIZE,
};
use crate::refusals::{
    Detail, Listener, LogQueue, Refusal, RefusalCounters, RefusalLog, RefusalRecord,
    LOG_LINES_PER_REASON, LOG_LINES_PER_WINDOW, LOG_WINDOW_NS,
};
use crate::session::{
    Action, ConnState, CoreConfig, Now, SessionCore, FRONT_BINARY, SERVER_FRAME_MAX,
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
/// A connection's output buffer keeps its capacity between bursts up to this; a larger
/// one (a slow reader's backlog, a resume's replay) is released once it is written out.
const WBUF_KEEP_BYTES: usize = 64 * 1024;

/// How long a stop waits for the answers to what was submitted and for the clients to
/// take them.
const STOP_DRAIN_MAX: Duration = Duration::from_secs(5);
/// A bound on each of a stop's waiting loops: a pass waits at most 1 ms, so the deadline
/// ends them first.
const STOP_PASSES_MAX: usize = 2 * STOP_DRAIN_MAX.as_millis() as usize;

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
    /// Connections from one address that have sent their Login (sessions, and logins
    /// being checked).
    pub connections_per_ip: u32,
    /// Connections from one address that have not sent a Login yet: bounded apart, so
    /// idle sockets cannot take the places of clients that log in.
    pub unauthenticated_per_ip: u32,
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
            login_timeout_ms: 2000,
            login_freshness_ms: 5000,
            outbound_buffer_bytes: 4 << 20,
            resume_window_messages: 65_536,
            session_linger_ms: 60_000,
            connections_max: 1024,
            connections_per_ip: 256,
            unauthenticated_per_ip: 16,
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
    opened_ns: u64,
    /// Counted against `connections_per_ip` (it sent its Login), else against
    /// `unauthenticated_per_ip`.
    logging_in: bool,
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

pub struct Gateway {
    config: GatewayConfig,
    poll: Poll,
    waker: Arc<Waker>,
    /// None on a standby: it serves only its admin listener until promoted.
    trading: Option<TcpListener>,
    admin: TcpListener,
    /// Keyed by ids this loop assigns: Fx, not SipHash (see `SessionCore`).
    conns: FxHashMap<usize, Conn>,
    next_conn: usize,
    /// Sessions, logins, permissions, limits and request bookkeeping.
    core: SessionCore,
    /// Connections per address that sent their Login.
    ips: ConnectionCounts,
    /// Connections per address that have not.
    unauthenticated_ips: ConnectionCounts,
    stats: Arc<GatewayStats>,
    /// Refusals on their way to the log (see `refuse`).
    refusal_log: RefusalLog,
    log_queue: Arc<LogQueue>,
    base: Instant,
    /// The time of this pass's work, read once when the pass starts work (and again when
    /// the exchange's output is delivered, and at the timers) instead of twice per request
    /// and once per frame queued: the clock was ~4% of the node's samples at 100 K
    /// orders/s (2026-12-07). Timeouts, heartbeats, rate limits and login freshness are
    /// coarser than a pass.
    clock: Now,
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
    /// The retail edge's end of the hand-off, when one is attached: its submissions go
    /// into the exchange from this loop, and the exchange's events go back to it.
    retail: Option<GatewayEnd>,
    /// Listeners (trading, admin) whose accepting stopped before the backlog was empty
    /// (the per-pass bound, or an error such as running out of file descriptors): no new
    /// edge comes for connections already waiting, so the timers accept again.
    accept_again: [bool; 2],
}

impl Gateway {
    /// Binds both listeners and prepares the event loop.
    pub fn bind(config: GatewayConfig) -> io::Result<Gateway> {
        Gateway::bind_listeners(config, true)
    }

    /// Binds the admin listener only (`config.trading_addr` is not used): a standby's
    /// gateway, which takes admin logins and `Promote` and no trading connections.
    pub fn bind_admin(config: GatewayConfig) -> io::Result<Gateway> {
        Gateway::bind_listeners(config, false)
    }

    /// A bind error names the address it could not take and the listener it is for.
    fn bind_listeners(config: GatewayConfig, trading: bool) -> io::Result<Gateway> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let bind = |addr: SocketAddr, which: &str| {
            TcpListener::bind(addr)
                .map_err(|e| io::Error::new(e.kind(), format!("{addr} ({which} listener): {e}")))
        };
        let trading = match trading {
            true => {
                let mut listener = bind(config.trading_addr, "trading")?;
                poll.registry()
                    .register(&mut listener, TRADING, Interest::READABLE)?;
                Some(listener)
            }
            false => None,
        };
        let mut admin = bind(config.admin_addr, "admin")?;
        poll.registry()
            .register(&mut admin, ADMIN, Interest::READABLE)?;
        let log_queue = Arc::new(LogQueue::default());
        let core = SessionCore::new(CoreConfig {
            front: FRONT_BINARY,
            heartbeat_ms: config.heartbeat_ms,
            idle_timeout_ms: config.idle_timeout_ms,
            login_freshness_ms: config.login_freshness_ms,
            // At least one: a binary session always outlives its connection.
            resume_window_messages: config.resume_window_messages.max(1),
            session_linger_ms: config.session_linger_ms,
            requests_per_second_per_key: config.requests_per_second_per_key,
            sessions_per_key_max: config.sessions_per_key_max,
        });
        Ok(Gateway {
            config,
            poll,
            waker,
            trading,
            admin,
            conns: FxHashMap::default(),
            next_conn: FIRST_CONN,
            core,
            ips: ConnectionCounts::default(),
            unauthenticated_ips: ConnectionCounts::default(),
            stats: Arc::new(GatewayStats::default()),
            refusal_log: RefusalLog::new(
                Arc::clone(&log_queue),
                (LOG_LINES_PER_WINDOW, LOG_LINES_PER_REASON),
                LOG_WINDOW_NS,
                0,
            ),
            log_queue,
            base: Instant::now(),
            clock: Now {
                mono_ns: 0,
                wall_ns: wall_clock_ns(),
            },
            timers_at: Instant::now(),
            closing: Vec::new(),
            deliveries: Vec::with_capacity(DRAIN_PER_PASS),
            dirty: Vec::new(),
            unread: Vec::new(),
            unread_spare: Vec::new(),
            accept_again: [false; 2],
            retail: None,
        })
    }

    /// Attaches the retail edge (`retail`): from now on this loop submits its commands
    /// and queries and hands it every event. Call before `run`.
    pub fn attach_retail(&mut self, end: GatewayEnd) {
        self.retail = Some(end);
    }

    /// Wakes the loop from another thread (the node calls it when output arrives).
    pub fn waker(&self) -> Arc<Waker> {
        Arc::clone(&self.waker)
    }

    pub fn trading_addr(&self) -> io::Result<SocketAddr> {
        match &self.trading {
            Some(listener) => listener.local_addr(),
            None => Err(io::Error::new(
                io::ErrorKind::NotFound,
                "no trading listener (a standby's gateway)",
            )),
        }
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

    fn now(&self) -> Now {
        Now {
            mono_ns: self.now_ns(),
            wall_ns: wall_clock_ns(),
        }
    }

    /// Reads the clock into `self.clock` (see there).
    fn tick(&mut self) -> Now {
        self.clock = self.now();
        self.clock
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
            let retail_waiting = self.retail.as_ref().is_some_and(|r| r.has_submissions());
            let busy = spinning
                || retail_waiting
                || !self.unread.is_empty()
                || backend.outputs_available()
                || {
                    backend.want_wake();
                    let retail = self.retail.as_ref().is_some_and(|r| r.want_wake());
                    backend.outputs_available() || retail
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
            if worked {
                self.clock = Now {
                    mono_ns: worked_from.duration_since(self.base).as_nanos() as u64,
                    wall_ns: wall_clock_ns(),
                };
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
                    TRADING => self.accept(false, backend),
                    ADMIN => self.accept(true, backend),
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
            if let Some(retail) = self.retail.as_mut() {
                worked |= retail.submit_pending(backend) > 0;
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
        self.tick();
        // A barrier: its reply comes after the outputs of everything submitted before it.
        let barrier_sent = self.core.begin_stop(backend);
        let mut events = Events::with_capacity(1024);
        for _ in 0..STOP_PASSES_MAX {
            self.deliver_outputs(backend);
            self.end_pass(backend);
            let answered = self.core.stop_answered(barrier_sent);
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
        let now = if any { self.tick() } else { self.clock };
        for d in &deliveries {
            if let Some(retail) = self.retail.as_mut() {
                retail.forward(d);
            }
            self.core.deliver(d, now, backend);
            self.apply_actions(backend);
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
        self.core.end_pass(backend);
        self.flush_all();
        if let Some(retail) = self.retail.as_mut() {
            retail.end_pass();
        }
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

    /// The oldest open connection from `ip` that has not sent its Login (connection ids
    /// grow in the order of accept). Bounded by the open connections.
    fn oldest_unauthenticated(&self, ip: std::net::IpAddr) -> Option<usize> {
        self.conns
            .iter()
            .filter(|(_, c)| !c.logging_in && c.peer.ip() == ip)
            .map(|(id, _)| *id)
            .min()
    }

    fn accept(&mut self, admin_listener: bool, backend: &mut dyn Backend) {
        self.accept_again[usize::from(admin_listener)] = false;
        // Bounded: at most the configured connection count per wake-up.
        for _ in 0..self.config.connections_max.max(1) {
            let listener = match (admin_listener, &self.trading) {
                (true, _) => &self.admin,
                (false, Some(trading)) => trading,
                (false, None) => return,
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
            } else if self.make_unauthenticated_room(peer.ip(), backend) {
                None
            } else {
                Some((Refusal::PerIpLimit, self.config.unauthenticated_per_ip))
            };
            if let Some((reason, limit)) = limit {
                // Over a limit: close at once; nothing was promised. Counted first, so a
                // peer that sees the close finds the refusal counted.
                let listener = Listener::of(admin_listener);
                self.refuse(reason, peer, listener, None, Detail::Limit(limit));
                drop(stream);
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
                self.unauthenticated_ips.remove(peer.ip());
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
                    opened_ns: now,
                    logging_in: false,
                    last_rx_ns: now,
                    last_tx_ns: now,
                    heartbeat_ns: u64::from(self.config.heartbeat_ms) * 1_000_000,
                    silence_ns: u64::from(self.config.idle_timeout_ms) * 1_000_000,
                    writable_registered: false,
                    replay_allowance_bytes: 0,
                },
            );
            self.core.conn_opened(id, Listener::of(admin_listener));
            self.stats
                .connections_active
                .fetch_add(1, Ordering::Relaxed);
            self.stats.connections_total.fetch_add(1, Ordering::Relaxed);
        }
        // The bound, not the backlog, ended the loop.
        self.accept_again[usize::from(admin_listener)] = true;
    }

    /// Counts a new connection from `ip` against `limits.unauthenticated_per_ip`. At the
    /// bound, the address's oldest connection not yet logged in is closed to make room
    /// (counted and logged as `unauthenticated-evicted`): a client that connects to log
    /// in at once is never locked out by idle sockets of its own address, which go
    /// oldest first. False only when there is none to close (a bound of 0).
    fn make_unauthenticated_room(
        &mut self,
        ip: std::net::IpAddr,
        backend: &mut dyn Backend,
    ) -> bool {
        let bound = self.config.unauthenticated_per_ip;
        if self.unauthenticated_ips.try_add(ip, bound) {
            return true;
        }
        let Some(oldest) = self.oldest_unauthenticated(ip) else {
            return false;
        };
        // Counted first, so a peer that sees the close finds the eviction counted.
        self.refuse_conn(
            oldest,
            Refusal::UnauthenticatedEvicted,
            Detail::Limit(bound),
        );
        self.close(oldest, None, backend);
        self.unauthenticated_ips.try_add(ip, bound)
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
    /// connection was closed. Only a whole frame ends a silence: bytes of an unfinished
    /// one do not keep a session alive.
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
                        let detail = Detail::Frame(e);
                        let open = self
                            .core
                            .malformed_request(id, request_id, template_id, detail);
                        self.apply_actions(backend);
                        if !open || !self.conns.contains_key(&id) {
                            return false;
                        }
                    }
                },
            }
        }
        let now = self.clock.mono_ns;
        if let Some(conn) = self.conns.get_mut(&id) {
            if consumed > 0 {
                conn.last_rx_ns = now;
            }
            conn.rbuf.copy_within(consumed..conn.rlen, 0);
            conn.rlen -= consumed;
        }
        true
    }

    /// Handles one decoded frame. False if the connection was closed.
    fn handle(
        &mut self,
        id: usize,
        msg: crate::protocol::ClientMessage,
        backend: &mut dyn Backend,
    ) -> bool {
        if matches!(msg, crate::protocol::ClientMessage::Login(_)) && !self.count_login(id) {
            let limit = self.config.connections_per_ip;
            self.refuse_conn(id, Refusal::PerIpLimit, Detail::Limit(limit));
            self.reject_login(id, LoginRejectReason::TooManySessions, backend);
            return false;
        }
        let now = self.clock;
        let open = self.core.handle(id, msg, now, backend);
        self.apply_actions(backend);
        open && self.conns.contains_key(&id)
    }

    /// A connection sent its Login: it moves from its address's unauthenticated count to
    /// its count of sessions, unless that is full (false).
    fn count_login(&mut self, id: usize) -> bool {
        let Some(conn) = self.conns.get_mut(&id) else {
            return false;
        };
        if conn.logging_in {
            return true;
        }
        let ip = conn.peer.ip();
        if !self.ips.try_add(ip, self.config.connections_per_ip) {
            return false;
        }
        self.unauthenticated_ips.remove(ip);
        conn.logging_in = true;
        true
    }

    /// Carries out what the core decided, in order.
    fn apply_actions(&mut self, backend: &mut dyn Backend) {
        // Bounded: closing a connection adds no actions of the core's own.
        while let Some(action) = self.core.pop_action() {
            match action {
                Action::Send { conn, msg } => {
                    let mut buf = [0u8; SERVER_FRAME_MAX];
                    let n = encode_server(&msg, &mut buf);
                    if !self.queue(conn, &buf[..n]) {
                        self.stats.slow_consumers.fetch_add(1, Ordering::Relaxed);
                        self.refuse_conn(conn, Refusal::SlowConsumer, Detail::None);
                        self.mark_closing(conn, LogoutReason::SlowConsumer);
                    }
                }
                Action::LoggedIn {
                    conn,
                    accepted,
                    heartbeat_ms,
                    silence_ms,
                    replay,
                } => {
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.heartbeat_ns = u64::from(heartbeat_ms) * 1_000_000;
                        c.silence_ns = u64::from(silence_ms) * 1_000_000;
                    }
                    self.send_unsequenced(conn, &accepted);
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.replay_allowance_bytes = replay.len();
                    }
                    if !replay.is_empty() && !self.queue(conn, &replay) {
                        self.slow_consumer(conn, backend);
                    }
                }
                Action::LoginRejected { conn, reason } => self.reject_login(conn, reason, backend),
                Action::Close { conn, reason } => self.close(conn, reason, backend),
                Action::CloseLater { conn, reason } => self.mark_closing(conn, reason),
                Action::Refuse {
                    conn,
                    reason,
                    key_id,
                    detail,
                } => {
                    if reason == Refusal::RateLimited {
                        self.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
                    }
                    if let Some(c) = self.conns.get(&conn) {
                        let (peer, listener) = (c.peer, Listener::of(c.admin_listener));
                        self.refuse(reason, peer, listener, key_id, detail);
                    }
                }
            }
        }
    }

    fn reject_login(&mut self, id: usize, reason: LoginRejectReason, backend: &mut dyn Backend) {
        self.send_unsequenced(id, &ServerMessage::LoginRejected { reason });
        self.flush(id);
        self.close(id, None, backend);
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
        if conn.logging_in {
            self.ips.remove(conn.peer.ip());
        } else {
            self.unauthenticated_ips.remove(conn.peer.ip());
        }
        self.stats
            .connections_active
            .fetch_sub(1, Ordering::Relaxed);
        let now = self.now();
        self.core.conn_closed(id, now, backend);
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
        crate::interest::set_writable(
            self.poll.registry(),
            &mut conn.stream,
            Token(id),
            pending,
            &mut conn.writable_registered,
        );
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
        conn.last_tx_ns = self.clock.mono_ns;
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
        let key_id = self.core.key_of(id);
        let (peer, listener) = (conn.peer, Listener::of(conn.admin_listener));
        self.refuse(reason, peer, listener, key_id, detail);
    }

    // ------------------------------------------------------------ timers

    fn timers(&mut self, backend: &mut dyn Backend) {
        for admin_listener in [false, true] {
            if self.accept_again[usize::from(admin_listener)] {
                self.accept(admin_listener, backend);
            }
        }
        let now = self.tick().mono_ns;
        let login_timeout_ns = u64::from(self.config.login_timeout_ms) * 1_000_000;
        let mut to_close = Vec::new();
        let mut heartbeats = Vec::new();
        for (id, c) in &self.conns {
            let state = self.core.conn_state(*id);
            match state {
                None | Some(ConnState::AwaitingLogin | ConnState::LoggingIn) => {
                    if now.saturating_sub(c.opened_ns) > login_timeout_ns && !c.closing {
                        to_close.push((*id, Some(LogoutReason::LoginTimeout)));
                    }
                }
                Some(ConnState::Active(_)) if c.closing => {}
                Some(ConnState::Active(_)) => {
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
        let now = self.now();
        self.core.expire_sessions(now);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{server_block_len, template};

    #[test]
    fn every_server_frame_fits_the_encode_buffer() {
        for id in template::SERVER_ALL {
            let frame = HEADER_SIZE + server_block_len(id).expect("known");
            assert!(frame <= SERVER_FRAME_MAX, "template {id}: {frame} bytes");
        }
    }
}
