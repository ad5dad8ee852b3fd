//! `ringex bench gateway-floor`: the binary gateway against the floor of its machine.
//!
//! The floor is an echo server with the gateway's event-loop shape and nothing else: the
//! same mio poll, the same idle spin (`gateway.spin_us`), the same framing and codec,
//! the same read per readable socket (a short read ends it), answers buffered per
//! connection and written once at the end of the pass. It answers each request with the
//! frames of the sizes the gateway sends for it (an accept, a cancel report, a replace
//! report or the balances, then `RequestDone`), with sequence numbers, and answers the
//! Login with `LoginAccepted` without checking the signature. It has no sessions,
//! engine, journal or fills. What the gateway costs above it, at the same rate and in the
//! same run, is what the gateway does; what both cost is the machine (loopback TCP, the
//! scheduler, the client).
//!
//! Both servers are driven by the same `ringex load` client code (tools/), with the same
//! users, seed and rate; against the floor the client skips only the admin setup, which
//! is never part of the measured run, so it does identical work per request. The node
//! runs as a child process (`ringex start` with the documented `inline.toml` settings on
//! ports of its own), the floor in a thread of this process; both are pinned to the same
//! core and both stay up for the whole benchmark, each idle while the other is measured.
//! Runs alternate floor and gateway at each rate.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use ringex_engine::{CancelReason, OrderKind, OrderRef, TimeInForce};
use ringex_gateway::protocol::{
    decode_client, encode_server, login_flags, Balance, BalanceEnd, Cancelled, ClientMessage,
    FrameError, LoginAccepted, LogoutReason, OrderAccepted, Replaced, RequestDone, ServerMessage,
    FRAME_SIZE_MAX,
};
use ringex_tools::load::{self, LoadArgs, Report};

use super::median;

const LISTENER: Token = Token(0);
const FIRST_CONN: usize = 1;
/// As the gateway (gateway/src/server.rs): bytes read per call, the idle poll, the timer
/// period, the output buffer kept between bursts and the heartbeat interval granted.
const READ_BUFFER_BYTES: usize = 64 * 1024;
const IDLE_POLL: Duration = Duration::from_millis(50);
const TIMER_EVERY: Duration = Duration::from_millis(20);
const WBUF_KEEP_BYTES: usize = 64 * 1024;
const HEARTBEAT: Duration = Duration::from_millis(1000);
/// Output a connection may have unsent before it is dropped (the gateway's default).
const OUTBOUND_MAX_BYTES: usize = 4 << 20;
/// Connections the floor takes at most.
const CONNECTIONS_MAX: usize = 4096;
/// Balances answered to a balance query: the load generator funds three assets.
const BALANCES_PER_QUERY: u32 = 3;

struct Conn {
    stream: TcpStream,
    rbuf: Box<[u8]>,
    rlen: usize,
    wbuf: Vec<u8>,
    wpos: usize,
    writable_registered: bool,
    next_seq: u64,
    next_order_id: u64,
    logged_in: bool,
    last_tx: Instant,
}

/// The floor server: see the module documentation.
pub struct FloorServer {
    poll: Poll,
    listener: TcpListener,
    conns: HashMap<usize, Conn>,
    next_conn: usize,
    spin: Duration,
    dirty: Vec<usize>,
    unread: Vec<usize>,
    unread_spare: Vec<usize>,
    closing: Vec<usize>,
    /// Time spent on passes with work, as the gateway's `gateway_busy`.
    pub busy_ns: Arc<AtomicU64>,
}

impl FloorServer {
    pub fn bind(addr: SocketAddr, spin_us: u32) -> io::Result<FloorServer> {
        let poll = Poll::new()?;
        let mut listener = TcpListener::bind(addr)?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        Ok(FloorServer {
            poll,
            listener,
            conns: HashMap::new(),
            next_conn: FIRST_CONN,
            spin: Duration::from_micros(u64::from(spin_us)),
            dirty: Vec::new(),
            unread: Vec::new(),
            unread_spare: Vec::new(),
            closing: Vec::new(),
            busy_ns: Arc::new(AtomicU64::new(0)),
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `stop` is set. The pass is the gateway's: poll (without sleeping
    /// while within `spin` of the last activity), read what became readable, answer,
    /// write each connection's output once.
    pub fn run(&mut self, stop: &AtomicBool) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut active_at = Instant::now();
        let mut timers_at = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let spinning = !self.spin.is_zero() && active_at.elapsed() < self.spin;
            let busy = spinning || !self.unread.is_empty();
            let timeout = if busy { Duration::ZERO } else { IDLE_POLL };
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            let worked_from = Instant::now();
            let worked = !events.is_empty() || !self.unread.is_empty();
            if !events.is_empty() {
                active_at = worked_from;
            }
            let unread = std::mem::take(&mut self.unread_spare);
            let mut ids = std::mem::replace(&mut self.unread, unread);
            for &id in &ids {
                self.read(id, false);
            }
            ids.clear();
            self.unread_spare = ids;
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(),
                    Token(id) => {
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            self.read(id, ev.is_read_closed() || ev.is_error());
                        }
                        if ev.is_writable() {
                            self.flush(id);
                        }
                    }
                }
            }
            if timers_at.elapsed() >= TIMER_EVERY {
                timers_at = Instant::now();
                self.heartbeats();
            }
            for id in std::mem::take(&mut self.closing) {
                self.flush(id);
                self.conns.remove(&id);
            }
            let mut dirty = std::mem::take(&mut self.dirty);
            for &id in &dirty {
                self.flush(id);
            }
            dirty.clear();
            self.dirty = dirty;
            if worked {
                let ns = worked_from.elapsed().as_nanos() as u64;
                self.busy_ns.fetch_add(ns, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    fn accept(&mut self) {
        // Bounded: at most the connection limit per wake-up.
        for _ in 0..CONNECTIONS_MAX {
            let mut stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted
                    ) =>
                {
                    continue
                }
                Err(_) => return,
            };
            if self.conns.len() >= CONNECTIONS_MAX {
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
                continue;
            }
            self.conns.insert(
                id,
                Conn {
                    stream,
                    rbuf: vec![0u8; READ_BUFFER_BYTES].into_boxed_slice(),
                    rlen: 0,
                    wbuf: Vec::with_capacity(16 * 1024),
                    wpos: 0,
                    writable_registered: false,
                    next_seq: 1,
                    next_order_id: 1,
                    logged_in: false,
                    last_tx: Instant::now(),
                },
            );
        }
    }

    /// The gateway's read: a socket read, the frames in it, and no second read when the
    /// first was short (the next bytes raise a new readiness edge).
    fn read(&mut self, id: usize, closing: bool) {
        for _ in 0..64 {
            let Some(conn) = self.conns.get_mut(&id) else {
                return;
            };
            let space = conn.rbuf.len() - conn.rlen;
            let n = match conn.stream.read(&mut conn.rbuf[conn.rlen..]) {
                Ok(0) => {
                    self.conns.remove(&id);
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.conns.remove(&id);
                    return;
                }
            };
            conn.rlen += n;
            if !self.handle_frames(id) {
                return;
            }
            if n < space && !closing {
                return;
            }
        }
        self.unread.push(id);
    }

    /// Answers the complete frames in the read buffer. False if the connection ends.
    fn handle_frames(&mut self, id: usize) -> bool {
        let Some(conn) = self.conns.get_mut(&id) else {
            return false;
        };
        let was_idle = conn.wpos == conn.wbuf.len() && !conn.writable_registered;
        let mut consumed = 0usize;
        let mut open = true;
        // Bounded: every pass consumes at least one 8-byte frame.
        for _ in 0..READ_BUFFER_BYTES / 8 + 1 {
            let bytes = &conn.rbuf[consumed..conn.rlen];
            if bytes.is_empty() {
                break;
            }
            match decode_client(bytes) {
                Ok((msg, n)) => {
                    consumed += n;
                    if !answer(conn, &msg) {
                        open = false;
                        break;
                    }
                }
                Err(FrameError::Incomplete) => break,
                Err(_) => {
                    push(
                        conn,
                        &ServerMessage::Logout {
                            reason: LogoutReason::MalformedFrame,
                        },
                    );
                    open = false;
                    break;
                }
            }
        }
        conn.rbuf.copy_within(consumed..conn.rlen, 0);
        conn.rlen -= consumed;
        let has_output = conn.wpos < conn.wbuf.len();
        if conn.wbuf.len() - conn.wpos > OUTBOUND_MAX_BYTES {
            open = false;
        }
        if was_idle && has_output {
            self.dirty.push(id);
        }
        if !open {
            self.closing.push(id);
        }
        open
    }

    /// Writes what is buffered; registers for writability if the socket is full.
    fn flush(&mut self, id: usize) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
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
                Ok(n) => {
                    conn.wpos += n;
                    conn.last_tx = Instant::now();
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    conn.wpos = conn.wbuf.len();
                    break;
                }
            }
        }
        let pending = conn.wpos < conn.wbuf.len();
        ringex_gateway::interest::set_writable(
            self.poll.registry(),
            &mut conn.stream,
            Token(id),
            pending,
            &mut conn.writable_registered,
        );
    }

    /// A heartbeat to each logged-in connection idle for the heartbeat interval.
    fn heartbeats(&mut self) {
        for (&id, conn) in self.conns.iter_mut() {
            if conn.logged_in && conn.last_tx.elapsed() >= HEARTBEAT {
                let was_idle = conn.wpos == conn.wbuf.len() && !conn.writable_registered;
                push(conn, &ServerMessage::Heartbeat);
                if was_idle {
                    self.dirty.push(id);
                }
            }
        }
    }
}

/// Appends one frame to the connection's output.
fn push(conn: &mut Conn, msg: &ServerMessage) {
    let mut buf = [0u8; FRAME_SIZE_MAX];
    let n = encode_server(msg, &mut buf);
    conn.wbuf.extend_from_slice(&buf[..n]);
}

/// The next sequence number of the connection's session.
fn next_seq(conn: &mut Conn) -> u64 {
    let s = conn.next_seq;
    conn.next_seq += 1;
    s
}

fn order_ref_id(order: OrderRef) -> (u64, u64) {
    match order {
        OrderRef::Client(cloid) => (0, cloid),
        OrderRef::Exchange(id) => (id, 0),
    }
}

/// Queues the answer to one client frame: the frames the gateway sends for it, by size
/// and kind, without fills. False if the connection ends.
fn answer(conn: &mut Conn, msg: &ClientMessage) -> bool {
    let done = |conn: &mut Conn, request_id: u64, count: u32| {
        let seq = next_seq(conn);
        push(
            conn,
            &ServerMessage::RequestDone(RequestDone {
                seq,
                request_id,
                count,
            }),
        );
    };
    match msg {
        ClientMessage::Login(login) => {
            conn.logged_in = true;
            let accepted = LoginAccepted {
                session_id: login.api_key_id,
                next_seq: 1,
                last_request_id: 0,
                account: 0,
                heartbeat_ms: HEARTBEAT.as_millis() as u32,
                flags: login.flags & login_flags::CANCEL_ON_DISCONNECT,
            };
            push(conn, &ServerMessage::LoginAccepted(accepted));
        }
        ClientMessage::Logout => {
            push(
                conn,
                &ServerMessage::Logout {
                    reason: LogoutReason::Requested,
                },
            );
            return false;
        }
        ClientMessage::Heartbeat => {}
        ClientMessage::NewOrder(o) => {
            let order_id = conn.next_order_id;
            conn.next_order_id += 1;
            let seq = next_seq(conn);
            push(
                conn,
                &ServerMessage::OrderAccepted(OrderAccepted {
                    seq,
                    request_id: o.request_id,
                    order_id,
                    client_order_id: o.client_order_id,
                    market: o.market,
                    side: o.side,
                    price: o.price,
                    qty: o.qty,
                }),
            );
            let mut count = 1;
            // What does not rest is cancelled at once (the engine would fill some).
            if o.kind == OrderKind::Market || o.tif == TimeInForce::Ioc {
                let seq = next_seq(conn);
                push(
                    conn,
                    &ServerMessage::Cancelled(Cancelled {
                        seq,
                        request_id: o.request_id,
                        order_id,
                        client_order_id: o.client_order_id,
                        market: o.market,
                        remaining_qty: o.qty,
                        reason: CancelReason::ImmediateOrCancel,
                    }),
                );
                count += 1;
            }
            done(conn, o.request_id, count);
        }
        ClientMessage::Cancel(c) => {
            let (order_id, client_order_id) = order_ref_id(c.order);
            let seq = next_seq(conn);
            push(
                conn,
                &ServerMessage::Cancelled(Cancelled {
                    seq,
                    request_id: c.request_id,
                    order_id,
                    client_order_id,
                    market: c.market,
                    remaining_qty: 1,
                    reason: CancelReason::Requested,
                }),
            );
            done(conn, c.request_id, 1);
        }
        ClientMessage::Replace(r) => {
            let (order_id, client_order_id) = order_ref_id(r.order);
            let seq = next_seq(conn);
            push(
                conn,
                &ServerMessage::Replaced(Replaced {
                    seq,
                    request_id: r.request_id,
                    order_id,
                    client_order_id,
                    market: r.market,
                    price: r.price,
                    qty: r.qty,
                    priority_kept: false,
                }),
            );
            done(conn, r.request_id, 1);
        }
        ClientMessage::BalanceQuery(q) => {
            for asset in 1..=BALANCES_PER_QUERY {
                let seq = next_seq(conn);
                push(
                    conn,
                    &ServerMessage::Balance(Balance {
                        seq,
                        request_id: q.request_id,
                        asset,
                        available: 1_000_000_000_000,
                        held: 0,
                    }),
                );
            }
            let seq = next_seq(conn);
            push(
                conn,
                &ServerMessage::BalanceEnd(BalanceEnd {
                    seq,
                    request_id: q.request_id,
                    count: BALANCES_PER_QUERY,
                }),
            );
            done(conn, q.request_id, BALANCES_PER_QUERY + 1);
        }
        // Not sent by the load generator: answered as done.
        ClientMessage::MassCancel(m) => done(conn, m.request_id, 0),
        ClientMessage::OpenOrdersQuery(q) => done(conn, q.request_id, 0),
        ClientMessage::Admin(_) | ClientMessage::Promote { .. } => {
            push(
                conn,
                &ServerMessage::Logout {
                    reason: LogoutReason::ProtocolViolation,
                },
            );
            return false;
        }
    }
    true
}

// ---------------------------------------------------------------- the benchmark

#[derive(Clone, Debug)]
pub struct FloorBenchArgs {
    /// Offered rates, requests/s.
    pub rates: Vec<u64>,
    /// Runs of each server at each rate (alternating floor, gateway).
    pub runs: u32,
    /// Seconds of load per run.
    pub duration: f64,
    /// First of the four ports the node listens on (binary, websocket, http, admin:
    /// +0..+3); the floor takes +10.
    pub base_port: u16,
    /// Scratch directory: the node's config, data and log.
    pub dir: PathBuf,
    /// `gateway.spin_us` of both servers.
    pub spin_us: u32,
    /// The servers' core and the generator's core.
    pub server_core: usize,
    pub generator_core: usize,
    /// Run only the floor (no node): for profiling it.
    pub floor_only: bool,
}

impl Default for FloorBenchArgs {
    fn default() -> Self {
        FloorBenchArgs {
            rates: vec![10_000, 100_000],
            runs: 3,
            duration: 6.0,
            base_port: 19_200,
            dir: PathBuf::from("./bench-gateway-floor"),
            spin_us: 200,
            server_core: 1,
            generator_core: 0,
            floor_only: false,
        }
    }
}

/// One run's figures, microseconds.
#[derive(Clone, Copy, Debug, Default)]
struct RunFigures {
    p50: f64,
    p99: f64,
    p999: f64,
    achieved: f64,
    unanswered: u64,
}

impl RunFigures {
    fn of(r: &Report) -> RunFigures {
        let all = r.latency.get("all").cloned().unwrap_or_default();
        RunFigures {
            p50: all.p50_us,
            p99: all.p99_us,
            p999: all.p999_us,
            achieved: r.achieved_rate,
            unanswered: r.unanswered,
        }
    }
}

/// The node's config: the embedded default with the `inline.toml` settings of
/// docs/benchmarks.md ("Gateway"), on ports from `base_port`, data under `dir`.
fn node_config(args: &FloorBenchArgs, pinned: bool) -> Result<String, String> {
    let mut t: toml::Table = toml::from_str(crate::config::DEFAULT_CONFIG_TOML)
        .map_err(|e| format!("the embedded config: {e}"))?;
    let table = |t: &mut toml::Table, name: &str| -> Result<toml::Table, String> {
        match t.remove(name) {
            Some(toml::Value::Table(x)) => Ok(x),
            _ => Err(format!("the embedded config has no [{name}]")),
        }
    };
    let port = |k: u16| format!("127.0.0.1:{}", args.base_port + k);
    let mut node = table(&mut t, "node")?;
    let data = args.dir.join("data");
    node.insert("data_dir".into(), data.display().to_string().into());
    t.insert("node".into(), node.into());
    let mut journal = table(&mut t, "journal")?;
    journal.insert("durability".into(), "async".into());
    t.insert("journal".into(), journal.into());
    let mut limits = table(&mut t, "limits")?;
    limits.insert("requests_per_second_per_key".into(), 10_000_000.into());
    t.insert("limits".into(), limits.into());
    let mut pipeline = table(&mut t, "pipeline")?;
    pipeline.insert("topology".into(), "inline".into());
    if pinned {
        let mut cores = toml::Table::new();
        cores.insert("gateway".into(), (args.server_core as i64).into());
        cores.insert("helpers".into(), (args.server_core as i64).into());
        pipeline.insert("cores".into(), cores.into());
    }
    t.insert("pipeline".into(), pipeline.into());
    let mut gateway = table(&mut t, "gateway")?;
    gateway.insert("spin_us".into(), i64::from(args.spin_us).into());
    t.insert("gateway".into(), gateway.into());
    let mut listeners = table(&mut t, "listeners")?;
    listeners.insert("binary".into(), port(0).into());
    listeners.insert("websocket".into(), port(1).into());
    listeners.insert("http".into(), port(2).into());
    listeners.insert("admin".into(), port(3).into());
    t.insert("listeners".into(), listeners.into());
    toml::to_string(&t).map_err(|e| format!("the node's config: {e}"))
}

/// The node as a child process; stopped (SIGTERM, then killed after 10 s) on drop.
struct Node {
    child: Child,
}

impl Node {
    fn start(args: &FloorBenchArgs, admin: SocketAddr, pinned: bool) -> Result<Node, String> {
        let config = args.dir.join("inline.toml");
        std::fs::write(&config, node_config(args, pinned)?)
            .map_err(|e| format!("{}: {e}", config.display()))?;
        let log = args.dir.join("node.log");
        let log_file =
            std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let exe = std::env::current_exe().map_err(|e| format!("this executable: {e}"))?;
        let child = Command::new(exe)
            .arg("start")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("starting the node: {e}"))?;
        let mut node = Node { child };
        // Ready when the admin listener takes a connection (it opens last).
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = node.child.try_wait() {
                return Err(format!(
                    "the node exited ({status}) before listening; see {}",
                    log.display()
                ));
            }
            if StdTcpStream::connect_timeout(&admin, Duration::from_millis(200)).is_ok() {
                return Ok(node);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the node did not listen on {admin} within 60 s; see {}",
                    log.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // SIGTERM drains and snapshots; bounded, then killed.
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: signals our own child, which has not been reaped yet.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pin(core: usize) -> bool {
    core_affinity::set_for_current(core_affinity::CoreId { id: core })
}

/// One load run against `addr` from a thread pinned to the generator's core.
fn drive(
    args: &FloorBenchArgs,
    addr: SocketAddr,
    admin: SocketAddr,
    rate: u64,
    setup: bool,
    pinned: bool,
) -> Result<Report, String> {
    let mut load_args = LoadArgs::new(addr, admin);
    load_args.rate = rate;
    load_args.duration = args.duration;
    load_args.users = 60;
    load_args.spin = true;
    load_args.quiet = true;
    load_args.no_setup = !setup;
    let core = args.generator_core;
    std::thread::scope(|s| {
        s.spawn(|| {
            if pinned && !pin(core) {
                return Err(format!("cannot pin the generator to core {core}"));
            }
            load::run(&load_args)
        })
        .join()
        .map_err(|_| "the load generator panicked".to_string())?
    })
}

/// Runs the benchmark and prints per-run figures, medians and ratios.
pub fn run(args: &FloorBenchArgs) -> Result<(), String> {
    if args.runs == 0 || args.rates.is_empty() || args.duration <= 0.0 {
        return Err("--runs, --rates and --duration must be positive".into());
    }
    if args.base_port > u16::MAX - 10 {
        return Err("--base-port must leave room for 11 ports".into());
    }
    let cores = crate::config::allowed_core_ids().unwrap_or_default();
    let pinned = cores.contains(&args.server_core)
        && cores.contains(&args.generator_core)
        && args.server_core != args.generator_core;
    if !pinned {
        eprintln!(
            "bench gateway-floor: cores {} and {} not both available (allowed {cores:?}); \
             nothing pinned, the node unpinned",
            args.server_core, args.generator_core
        );
    }
    std::fs::create_dir_all(&args.dir).map_err(|e| format!("{}: {e}", args.dir.display()))?;
    let _ = std::fs::remove_dir_all(args.dir.join("data"));
    let loopback = |k: u16| SocketAddr::from(([127, 0, 0, 1], args.base_port + k));
    let (node_addr, node_admin, floor_addr) = (loopback(0), loopback(3), loopback(10));

    let mut floor = FloorServer::bind(floor_addr, args.spin_us)
        .map_err(|e| format!("floor server on {floor_addr}: {e}"))?;
    let floor_busy = Arc::clone(&floor.busy_ns);
    let stop = Arc::new(AtomicBool::new(false));
    let floor_thread = {
        let stop = Arc::clone(&stop);
        let core = args.server_core;
        std::thread::Builder::new()
            .name("floor".into())
            .spawn(move || {
                if pinned {
                    pin(core);
                }
                floor.run(&stop)
            })
            .map_err(|e| format!("floor thread: {e}"))?
    };
    let result = (|| {
        let node = match args.floor_only {
            true => None,
            false => Some(Node::start(args, node_admin, pinned)?),
        };
        if let Some(node) = &node {
            println!(
                "bench gateway-floor: node pid {} on {node_addr} (config {}), floor on \
                 {floor_addr} (pid {}, thread \"floor\"); {} s runs, spin_us {}, \
                 servers on core {}, generator on core {}",
                node.pid(),
                args.dir.join("inline.toml").display(),
                std::process::id(),
                args.duration,
                args.spin_us,
                args.server_core,
                args.generator_core
            );
        }
        let mut table: Vec<SummaryRow> = Vec::new();
        for &rate in &args.rates {
            let (mut floors, mut gateways, mut floor_busy_share) = (Vec::new(), Vec::new(), vec![]);
            for i in 0..args.runs {
                let busy_from = floor_busy.load(Ordering::Relaxed);
                let r = drive(args, floor_addr, floor_addr, rate, false, pinned)?;
                let busy =
                    (floor_busy.load(Ordering::Relaxed) - busy_from) as f64 / (args.duration * 1e9);
                let f = RunFigures::of(&r);
                println!(
                    "RUN rate {rate} run {} floor:   p50 {:.1} p99 {:.1} p99.9 {:.1} us, \
                     achieved {:.0}/s, never answered {}, floor busy {:.0}% (load {})",
                    i + 1,
                    f.p50,
                    f.p99,
                    f.p999,
                    f.achieved,
                    f.unanswered,
                    100.0 * busy,
                    load_average()
                );
                floors.push(f);
                floor_busy_share.push(busy);
                if node.is_some() {
                    let r = drive(args, node_addr, node_admin, rate, true, pinned)?;
                    let g = RunFigures::of(&r);
                    println!(
                        "RUN rate {rate} run {} gateway: p50 {:.1} p99 {:.1} p99.9 {:.1} us, \
                         achieved {:.0}/s, never answered {} (load {})",
                        i + 1,
                        g.p50,
                        g.p99,
                        g.p999,
                        g.achieved,
                        g.unanswered,
                        load_average()
                    );
                    gateways.push(g);
                }
            }
            table.push((rate, floors, gateways, floor_busy_share));
        }
        print_summary(&table);
        drop(node);
        Ok(())
    })();
    stop.store(true, Ordering::Relaxed);
    let _ = floor_thread.join();
    result
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

type SummaryRow = (u64, Vec<RunFigures>, Vec<RunFigures>, Vec<f64>);

fn print_summary(table: &[SummaryRow]) {
    let med =
        |v: &[RunFigures], f: fn(&RunFigures) -> f64| median(&v.iter().map(f).collect::<Vec<_>>());
    let list = |v: &[RunFigures], f: fn(&RunFigures) -> f64| {
        v.iter()
            .map(|r| format!("{:.1}", f(r)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!();
    println!("gateway against its floor (medians of the runs; latency from the planned send, us):");
    println!(
        "  {:>8} {:<8} {:>9} {:>9} {:>9}   runs p50 | p99",
        "rate/s", "server", "p50", "p99", "p99.9"
    );
    for (rate, floors, gateways, busy) in table {
        for (name, v) in [("floor", floors), ("gateway", gateways)] {
            if v.is_empty() {
                continue;
            }
            println!(
                "  {:>8} {:<8} {:>9.1} {:>9.1} {:>9.1}   {} | {}",
                rate,
                name,
                med(v, |r| r.p50),
                med(v, |r| r.p99),
                med(v, |r| r.p999),
                list(v, |r| r.p50),
                list(v, |r| r.p99)
            );
        }
        println!(
            "  {:>8} floor busy {:.0}% (median)",
            rate,
            100.0 * median(busy)
        );
        if !gateways.is_empty() {
            let ratio = |f: fn(&RunFigures) -> f64| {
                let floor = med(floors, f);
                if floor > 0.0 {
                    med(gateways, f) / floor
                } else {
                    f64::NAN
                }
            };
            println!(
                "  {:>8} gateway / floor: p50 {:.2}x (target 1.3x)  p99 {:.2}x (target 1.5x)  \
                 p99.9 {:.2}x",
                rate,
                ratio(|r| r.p50),
                ratio(|r| r.p99),
                ratio(|r| r.p999)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The floor answers the load generator's login and every request (sequenced, each
    /// ended by `RequestDone`), so the generator runs against it as against the gateway,
    /// without its admin setup: nothing listens on the admin address given.
    #[test]
    fn the_floor_serves_the_load_generator_without_its_setup() {
        let mut floor =
            FloorServer::bind("127.0.0.1:0".parse().expect("address"), 0).expect("bind");
        let addr = floor.local_addr().expect("address");
        let unused_admin = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let stop = Arc::new(AtomicBool::new(false));
        let server = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || floor.run(&stop))
        };
        let mut args = LoadArgs::new(addr, unused_admin);
        args.rate = 2_000;
        args.duration = 0.5;
        args.no_setup = true;
        let report = load::run(&args);
        stop.store(true, Ordering::Relaxed);
        server.join().expect("floor thread").expect("floor loop");
        let report = report.expect("the run starts without the admin listener");
        assert_eq!(report.failure(), None);
        assert!(report.sent > 0);
        assert_eq!(report.answered, report.sent);
        assert_eq!(report.errors, 0, "{:?}", report.error_messages);
    }
}
