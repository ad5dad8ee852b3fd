//! Attacks leave a trace: every refusal of a peer is counted by reason
//! (`GatewayStats::refusals`) and logged with the peer's address, the listener and, where
//! known, the key, at a bounded rate: a flood costs a few lines a second plus a summary
//! that counts every refusal (docs/operations.md, "Refusals"). Real sockets on loopback,
//! an engine applied inline behind the gateway.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ringex_engine::{Command, Event, Exchange, MarketSpec, RejectReason, Symbol};
use ringex_gateway::backend::InlineBackend;
use ringex_gateway::protocol::{
    decode_server, encode_client, permission, secret_hash, template, AdminRequest, BalanceQuery,
    ClientMessage, FrameError, Login, LoginRejectReason, LogoutReason, NewOrder, ServerMessage,
    FRAME_SIZE_MAX,
};
use ringex_gateway::refusals::{
    Detail, Listener, LogQueue, LogRecord, Refusal, RefusalRecord, LOG_LINES_PER_REASON,
};
use ringex_gateway::server::{Gateway, GatewayConfig, GatewayStats};

const MARKET: u32 = 1;
const ADMIN_KEY: u64 = 100;
const MAKER_KEY: u64 = 10;
/// The key of a suspended account.
const SUSPENDED_KEY: u64 = 12;
/// Generous bound on waiting for something the gateway does within milliseconds.
const DEADLINE: Duration = Duration::from_secs(10);

fn secret(key: u64) -> String {
    format!("secret-{key}")
}

/// One market, an operator (admin key), a funded trader and a suspended account.
fn exchange() -> Exchange {
    let mut ex = Exchange::new();
    let mut cmds = vec![
        Command::CreateAsset {
            asset: 1,
            symbol: Symbol::new("BTC").unwrap(),
            decimals: 8,
        },
        Command::CreateAsset {
            asset: 2,
            symbol: Symbol::new("USD").unwrap(),
            decimals: 2,
        },
        Command::CreateMarket(MarketSpec {
            market: MARKET,
            symbol: Symbol::new("BTC-USD").unwrap(),
            base: 1,
            quote: 2,
            tick_size: 1,
            lot_size: 1,
            qty_min: 1,
            qty_max: 1_000_000,
            band_ppm: 0,
            reference_price: 100,
            maker_fee_ppm: 0,
            taker_fee_ppm: 0,
        }),
    ];
    for (account, key, perms) in [
        (1, ADMIN_KEY, permission::ADMIN),
        (10, MAKER_KEY, permission::TRADE),
        (12, SUSPENDED_KEY, permission::TRADE),
    ] {
        cmds.push(Command::CreateAccount { account });
        cmds.push(Command::AddApiKey {
            account,
            key_id: key,
            secret_hash: secret_hash(secret(key).as_bytes()),
            permissions: perms,
        });
    }
    cmds.push(Command::SuspendAccount { account: 12 });
    let mut out = Vec::new();
    for c in &cmds {
        out.clear();
        ex.apply(c, &mut out);
        assert!(!matches!(out[0], Event::Rejected { .. }), "{c:?}: {out:?}");
    }
    ex
}

/// A gateway on its own thread, and what it logged so far.
struct Server {
    trading: SocketAddr,
    admin: SocketAddr,
    stats: Arc<GatewayStats>,
    log: Arc<LogQueue>,
    records: Vec<LogRecord>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_now();
    }
}

impl Server {
    fn start(config: GatewayConfig) -> Server {
        let mut gateway = Gateway::bind(config).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let (trading, admin) = (
            gateway.trading_addr().unwrap(),
            gateway.admin_addr().unwrap(),
        );
        let (stats, log) = (gateway.stats(), gateway.log_queue());
        let thread = std::thread::spawn(move || {
            let mut backend = InlineBackend::new(exchange());
            gateway.run(&mut backend, &flag).unwrap();
        });
        Server {
            trading,
            admin,
            stats,
            log,
            records: Vec::new(),
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the gateway and waits until its event loop has ended.
    fn stop_now(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }

    fn count(&self, reason: Refusal) -> u64 {
        self.stats.refusals.get(reason)
    }

    /// Waits until `done` holds for what was logged so far.
    fn wait_log(&mut self, what: &str, done: impl Fn(&[LogRecord]) -> bool) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            self.records.extend(self.log.drain());
            if done(&self.records) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "never logged: {what}: {:?}",
                self.records
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The refusals logged so far on lines of their own.
    fn refusals(&self) -> impl Iterator<Item = &RefusalRecord> {
        self.records.iter().filter_map(|r| match r {
            LogRecord::Refused(r) => Some(r),
            LogRecord::Suppressed(_) => None,
        })
    }

    /// Waits for the log line of a refusal of `reason` from `peer`, and checks that the
    /// refusal was counted.
    fn logged(&mut self, reason: Refusal, peer: SocketAddr) -> RefusalRecord {
        let found = |records: &[LogRecord]| {
            records.iter().find_map(|r| match r {
                LogRecord::Refused(r) if r.reason == reason && r.peer == peer => Some(*r),
                _ => None,
            })
        };
        self.wait_log(&format!("{reason} from {peer}"), |r| found(r).is_some());
        // Counted before it was logged.
        assert!(self.count(reason) >= 1, "{reason} logged but not counted");
        found(&self.records).expect("found")
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// A login for `key` signed with `secret_of`'s hash, changed by `adjust` before signing.
fn login(key: u64, secret_of: &str, adjust: impl FnOnce(&mut Login)) -> Login {
    let mut login = Login {
        api_key_id: key,
        timestamp_ns: now_ns(),
        nonce: now_ns(),
        signature: [0; 32],
        resume_session: 0,
        resume_from_seq: 0,
        heartbeat_ms: 0,
        flags: 0,
    };
    adjust(&mut login);
    login.sign(&secret_hash(secret_of.as_bytes()));
    login
}

/// A bare client: frames in, frames out.
struct Peer {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Peer {
    fn connect(addr: SocketAddr) -> Peer {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        Peer {
            stream,
            buf: Vec::new(),
        }
    }

    /// The address the gateway sees this client at.
    fn addr(&self) -> SocketAddr {
        self.stream.local_addr().unwrap()
    }

    fn send(&mut self, msg: &ClientMessage) {
        let mut b = [0u8; FRAME_SIZE_MAX];
        let n = encode_client(msg, &mut b);
        self.stream.write_all(&b[..n]).unwrap();
    }

    /// The next frame other than a heartbeat; None when the server closed.
    fn recv(&mut self) -> Option<ServerMessage> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            match decode_server(&self.buf) {
                Ok((ServerMessage::Heartbeat, n)) => {
                    self.buf.drain(..n);
                    continue;
                }
                Ok((m, n)) => {
                    self.buf.drain(..n);
                    return Some(m);
                }
                Err(FrameError::Incomplete) => {}
                Err(e) => panic!("the server sent a bad frame: {e}"),
            }
            assert!(Instant::now() < deadline, "nothing from the server");
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return None,
            }
        }
    }

    fn login(addr: SocketAddr, login: Login) -> (Peer, ServerMessage) {
        let mut p = Peer::connect(addr);
        p.send(&ClientMessage::Login(login));
        let reply = p.recv().expect("a reply to the login");
        (p, reply)
    }

    fn logged_in(addr: SocketAddr, key: u64) -> (Peer, u64) {
        let (p, reply) = Peer::login(addr, login(key, &secret(key), |_| {}));
        match reply {
            ServerMessage::LoginAccepted(a) => (p, a.session_id),
            other => panic!("{other:?}"),
        }
    }

    /// Reads until the server closes; the Logout reason if one came.
    fn logout_reason(&mut self) -> Option<LogoutReason> {
        loop {
            match self.recv() {
                Some(ServerMessage::Logout { reason }) => return Some(reason),
                Some(_) => continue,
                None => return None,
            }
        }
    }
}

/// A login refused with `expected`: returns the peer address it came from.
fn refused_login(addr: SocketAddr, login: Login, expected: LoginRejectReason) -> SocketAddr {
    let (p, reply) = Peer::login(addr, login);
    assert_eq!(reply, ServerMessage::LoginRejected { reason: expected });
    p.addr()
}

fn balance_query(request_id: u64) -> ClientMessage {
    ClientMessage::BalanceQuery(BalanceQuery { request_id })
}

// ---------------------------------------------------------------- logins

#[test]
fn bad_signatures_unknown_keys_and_stale_or_future_timestamps_are_counted_and_logged() {
    let mut s = Server::start(GatewayConfig::loopback());

    let wrong_secret = login(MAKER_KEY, "not the secret", |_| {});
    let peer = refused_login(s.trading, wrong_secret, LoginRejectReason::BadSignature);
    let r = s.logged(Refusal::BadSignature, peer);
    assert_eq!(r.key_id, Some(MAKER_KEY), "the key the login claimed");
    assert_eq!(r.listener, Listener::Trading);

    let unknown = login(999, "x", |_| {});
    let peer = refused_login(s.trading, unknown, LoginRejectReason::UnknownKey);
    assert_eq!(s.logged(Refusal::UnknownKey, peer).key_id, Some(999));

    // A minute behind and a minute ahead: the line says which, and by how much.
    for (shift, behind) in [(-60i64, true), (60, false)] {
        let skewed = login(MAKER_KEY, &secret(MAKER_KEY), |l| {
            l.timestamp_ns = l.timestamp_ns.wrapping_add_signed(shift * 1_000_000_000);
        });
        let peer = refused_login(s.trading, skewed, LoginRejectReason::StaleTimestamp);
        let r = s.logged(Refusal::StaleTimestamp, peer);
        assert_eq!(r.key_id, Some(MAKER_KEY));
        let Detail::ClockSkewNs(skew) = r.detail else {
            panic!("{r:?}")
        };
        assert_eq!(skew < 0, behind, "{skew}");
        assert!(
            (59_000_000_000..61_000_000_000).contains(&skew.abs()),
            "{skew}"
        );
        let line = r.to_string();
        assert!(
            line.ends_with(&format!(" clock_skew_ms={}", skew / 1_000_000)),
            "{line}"
        );
    }

    assert_eq!(s.count(Refusal::BadSignature), 1);
    assert_eq!(s.count(Refusal::UnknownKey), 1);
    assert_eq!(s.count(Refusal::StaleTimestamp), 2);
    assert_eq!(s.stats.refusals.total(), 4);
}

#[test]
fn replayed_nonces_wrong_listeners_and_suspended_accounts_are_counted_and_logged() {
    let mut s = Server::start(GatewayConfig::loopback());

    let once = login(MAKER_KEY, &secret(MAKER_KEY), |_| {});
    let (_first, reply) = Peer::login(s.trading, once);
    assert!(
        matches!(reply, ServerMessage::LoginAccepted(_)),
        "{reply:?}"
    );
    let peer = refused_login(s.trading, once, LoginRejectReason::ReplayedNonce);
    assert_eq!(
        s.logged(Refusal::ReplayedNonce, peer).key_id,
        Some(MAKER_KEY)
    );

    let admin_on_trading = login(ADMIN_KEY, &secret(ADMIN_KEY), |_| {});
    let peer = refused_login(
        s.trading,
        admin_on_trading,
        LoginRejectReason::WrongListener,
    );
    let r = s.logged(Refusal::WrongListener, peer);
    assert_eq!((r.key_id, r.listener), (Some(ADMIN_KEY), Listener::Trading));

    let trader_on_admin = login(MAKER_KEY, &secret(MAKER_KEY), |_| {});
    let peer = refused_login(s.admin, trader_on_admin, LoginRejectReason::WrongListener);
    let r = s.logged(Refusal::WrongListener, peer);
    assert_eq!((r.key_id, r.listener), (Some(MAKER_KEY), Listener::Admin));
    assert!(r.to_string().contains("listener=admin key=10"), "{r}");

    let suspended = login(SUSPENDED_KEY, &secret(SUSPENDED_KEY), |_| {});
    let peer = refused_login(s.trading, suspended, LoginRejectReason::AccountSuspended);
    assert_eq!(
        s.logged(Refusal::AccountSuspended, peer).key_id,
        Some(SUSPENDED_KEY)
    );

    assert_eq!(s.count(Refusal::ReplayedNonce), 1);
    assert_eq!(s.count(Refusal::WrongListener), 2);
    assert_eq!(s.count(Refusal::AccountSuspended), 1);
    assert_eq!(s.stats.refusals.total(), 4);
}

#[test]
fn resumes_that_cannot_be_had_and_logins_over_the_session_limit_are_counted_and_logged() {
    let mut s = Server::start(GatewayConfig {
        sessions_per_key_max: 1,
        ..GatewayConfig::loopback()
    });
    let (_attached, session) = Peer::logged_in(s.trading, MAKER_KEY);

    let another = login(MAKER_KEY, &secret(MAKER_KEY), |_| {});
    let peer = refused_login(s.trading, another, LoginRejectReason::TooManySessions);
    assert_eq!(
        s.logged(Refusal::TooManySessions, peer).key_id,
        Some(MAKER_KEY)
    );

    let take_over = login(MAKER_KEY, &secret(MAKER_KEY), |l| {
        l.resume_session = session;
        l.resume_from_seq = 1;
    });
    let peer = refused_login(s.trading, take_over, LoginRejectReason::AlreadyLoggedIn);
    assert_eq!(
        s.logged(Refusal::AlreadyLoggedIn, peer).key_id,
        Some(MAKER_KEY)
    );

    let unknown_session = login(MAKER_KEY, &secret(MAKER_KEY), |l| {
        l.resume_session = session + 1000;
        l.resume_from_seq = 1;
    });
    let peer = refused_login(
        s.trading,
        unknown_session,
        LoginRejectReason::ResumeImpossible,
    );
    assert_eq!(
        s.logged(Refusal::ResumeImpossible, peer).key_id,
        Some(MAKER_KEY)
    );

    assert_eq!(s.count(Refusal::TooManySessions), 1);
    assert_eq!(s.count(Refusal::AlreadyLoggedIn), 1);
    assert_eq!(s.count(Refusal::ResumeImpossible), 1);
    assert_eq!(s.stats.refusals.total(), 3);
}

#[test]
fn connections_that_never_log_in_or_fall_silent_are_counted_and_logged() {
    let mut s = Server::start(GatewayConfig {
        login_timeout_ms: 200,
        idle_timeout_ms: 300,
        ..GatewayConfig::loopback()
    });
    let mut idle = Peer::connect(s.trading);
    assert_eq!(idle.logout_reason(), Some(LogoutReason::LoginTimeout));
    let r = s.logged(Refusal::LoginTimeout, idle.addr());
    assert_eq!(r.key_id, None, "no login was read");

    let silent = login(MAKER_KEY, &secret(MAKER_KEY), |l| l.heartbeat_ms = 100);
    let (mut silent, reply) = Peer::login(s.trading, silent);
    assert!(
        matches!(reply, ServerMessage::LoginAccepted(_)),
        "{reply:?}"
    );
    assert_eq!(silent.logout_reason(), Some(LogoutReason::HeartbeatTimeout));
    let r = s.logged(Refusal::HeartbeatTimeout, silent.addr());
    assert_eq!(r.key_id, Some(MAKER_KEY));

    assert_eq!(s.count(Refusal::LoginTimeout), 1);
    assert_eq!(s.count(Refusal::HeartbeatTimeout), 1);
}

// ---------------------------------------------------------------- connections

/// Whether the server closes (or resets) the connection within the deadline.
fn closed(stream: &mut TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let deadline = Instant::now() + DEADLINE;
    let mut b = [0u8; 64];
    while Instant::now() < deadline {
        match stream.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

/// Waits until the gateway has accepted `n` connections in all.
fn accepted(s: &Server, n: u64) {
    let deadline = Instant::now() + DEADLINE;
    while s.stats.connections_total.load(Ordering::Relaxed) < n {
        assert!(Instant::now() < deadline, "the gateway did not accept");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn connections_over_the_per_address_or_total_limit_are_counted_and_logged_at_accept() {
    // Over the unauthenticated bound of its address, a connection is taken and the
    // address's oldest one not yet logged in is closed.
    let mut s = Server::start(GatewayConfig {
        unauthenticated_per_ip: 1,
        ..GatewayConfig::loopback()
    });
    let mut held = TcpStream::connect(s.trading).unwrap();
    accepted(&s, 1);
    let _new = TcpStream::connect(s.admin).unwrap();
    assert!(closed(&mut held), "the oldest is closed");
    let r = s.logged(Refusal::UnauthenticatedEvicted, held.local_addr().unwrap());
    assert_eq!(r.listener, Listener::Trading);
    assert_eq!(r.key_id, None);
    assert_eq!(r.detail, Detail::Limit(1));
    assert!(r.to_string().ends_with(" limit=1"), "{r}");
    assert_eq!(s.count(Refusal::UnauthenticatedEvicted), 1);
    assert_eq!(s.stats.refusals.total(), 1, "the eviction only");
    accepted(&s, 2);

    // Over the total, a connection is closed at once.
    let mut s = Server::start(GatewayConfig {
        connections_max: 1,
        ..GatewayConfig::loopback()
    });
    let _held = TcpStream::connect(s.trading).unwrap();
    accepted(&s, 1);
    let mut over = TcpStream::connect(s.admin).unwrap();
    assert!(closed(&mut over), "closed at once");
    let r = s.logged(Refusal::ConnectionLimit, over.local_addr().unwrap());
    assert_eq!(r.listener, Listener::Admin);
    assert_eq!(r.key_id, None);
    assert_eq!(r.detail, Detail::Limit(1));
    assert!(r.to_string().ends_with(" limit=1"), "{r}");
    assert_eq!(s.count(Refusal::ConnectionLimit), 1);
    assert_eq!(s.stats.refusals.total(), 1, "the refusal only");
}

/// Connections of a flood that may wait for the gateway to accept them: well under the
/// listen backlog (128, mio's).
const IN_FLIGHT_MAX: u64 = 64;

/// Waits until the gateway has refused `n` connections over the connection limit.
fn refused_at_least(s: &Server, n: u64) {
    let deadline = Instant::now() + DEADLINE;
    while s.count(Refusal::ConnectionLimit) < n {
        assert!(
            Instant::now() < deadline,
            "{} of {n}",
            s.count(Refusal::ConnectionLimit)
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_flood_of_refused_connections_logs_a_few_lines_and_a_summary_that_counts_every_one() {
    const FLOOD: u64 = 2_000;
    let mut s = Server::start(GatewayConfig {
        connections_max: 1,
        // The held connection stays for the whole flood.
        login_timeout_ms: 600_000,
        ..GatewayConfig::loopback()
    });
    let _held = TcpStream::connect(s.trading).unwrap();
    accepted(&s, 1);
    let started = Instant::now();
    for sent in 1..=FLOOD {
        // Connected, then closed by the gateway; the client does not wait for it.
        drop(TcpStream::connect(s.trading).unwrap());
        // Never more waiting to be accepted than the listen backlog holds: the kernel
        // would drop the handshake's last packet and the client would retry a second
        // later, which tests the kernel, not the gateway.
        refused_at_least(&s, sent.saturating_sub(IN_FLIGHT_MAX));
    }
    refused_at_least(&s, FLOOD);
    // Every refusal is on a line of its own or in a summary (which comes at the end of
    // its window, a second at most after the flood).
    let accounted = |records: &[LogRecord]| -> u64 {
        records
            .iter()
            .map(|r| match r {
                LogRecord::Refused(r) => u64::from(r.reason == Refusal::ConnectionLimit),
                LogRecord::Suppressed(s) => s
                    .reasons
                    .iter()
                    .filter(|r| r.reason == Refusal::ConnectionLimit)
                    .map(|r| r.count)
                    .sum(),
            })
            .sum()
    };
    s.wait_log("every refusal of the flood", |r| accounted(r) >= FLOOD);
    let windows = started.elapsed().as_secs() + 2;
    assert_eq!(accounted(&s.records), FLOOD, "counted exactly once each");
    assert_eq!(s.count(Refusal::ConnectionLimit), FLOOD);
    let lines = s.refusals().count() as u64;
    assert!(
        lines <= u64::from(LOG_LINES_PER_REASON) * windows,
        "{lines} lines in at most {windows} windows"
    );
    let summaries: Vec<_> = s
        .records
        .iter()
        .filter_map(|r| match r {
            LogRecord::Suppressed(s) => Some(s),
            LogRecord::Refused(_) => None,
        })
        .collect();
    assert!(!summaries.is_empty() && summaries.len() as u64 <= windows);
    for summary in summaries {
        let refused_here = &summary.reasons[0];
        assert_eq!(refused_here.reason, Refusal::ConnectionLimit);
        // The flood came from one address: the summary names it with its full count.
        assert_eq!(
            refused_here.sources,
            vec![("127.0.0.1".parse().unwrap(), refused_here.count)]
        );
        let line = summary.to_string();
        assert!(
            line.starts_with(&format!("suppressed {} more refusals in ", summary.total))
                && line.contains(&format!(
                    "connection-limit {} from 127.0.0.1",
                    refused_here.count
                )),
            "{line}"
        );
    }
    for r in s.refusals() {
        assert_eq!(r.peer.ip().to_string(), "127.0.0.1");
    }
    assert_eq!(s.log.dropped(), 0);
}

#[test]
fn a_stopping_gateway_sums_up_what_it_suppressed_without_waiting_for_the_window_to_end() {
    let mut s = Server::start(GatewayConfig {
        connections_max: 1,
        // The held connection stays for the whole flood.
        login_timeout_ms: 600_000,
        ..GatewayConfig::loopback()
    });
    let _held = TcpStream::connect(s.trading).unwrap();
    accepted(&s, 1);
    let refused = 2 * u64::from(LOG_LINES_PER_REASON);
    for sent in 1..=refused {
        drop(TcpStream::connect(s.trading).unwrap());
        refused_at_least(&s, sent);
    }
    s.stop_now();
    s.records.extend(s.log.drain());
    let lines = s.refusals().count() as u64;
    let suppressed: u64 = s
        .records
        .iter()
        .map(|r| match r {
            LogRecord::Suppressed(s) => s.total,
            LogRecord::Refused(_) => 0,
        })
        .sum();
    assert_eq!(
        (lines, suppressed),
        (u64::from(LOG_LINES_PER_REASON), refused - lines)
    );
}

// ---------------------------------------------------------------- frames

/// `frame` with the byte at `offset` replaced.
fn with_byte(msg: &ClientMessage, offset: usize, byte: u8) -> Vec<u8> {
    let mut b = [0u8; FRAME_SIZE_MAX];
    let n = encode_client(msg, &mut b);
    b[offset] = byte;
    b[..n].to_vec()
}

/// A NewOrder frame with side 9, which no side is.
fn order_with_a_bad_side() -> Vec<u8> {
    let order = ClientMessage::NewOrder(NewOrder {
        request_id: 1,
        market: MARKET,
        client_order_id: 1,
        side: ringex_engine::Side::Buy,
        kind: ringex_engine::OrderKind::Limit,
        tif: ringex_engine::TimeInForce::Gtc,
        stp: ringex_engine::StpMode::None,
        price: 100,
        qty: 1,
        quote_budget: 0,
    });
    with_byte(&order, 52, 9)
}

#[test]
fn frames_that_break_the_protocol_are_counted_and_logged() {
    let mut s = Server::start(GatewayConfig::loopback());

    // A request before the login.
    let mut early = Peer::connect(s.trading);
    early.send(&balance_query(1));
    assert_eq!(early.logout_reason(), Some(LogoutReason::ProtocolViolation));
    let r = s.logged(Refusal::ProtocolViolation, early.addr());
    assert_eq!(r.key_id, None);
    assert_eq!(r.detail, Detail::Template(template::BALANCE_QUERY));

    // A request before the login that does not even decode.
    let mut early_and_bad = Peer::connect(s.trading);
    early_and_bad
        .stream
        .write_all(&order_with_a_bad_side())
        .unwrap();
    assert_eq!(
        early_and_bad.logout_reason(),
        Some(LogoutReason::ProtocolViolation)
    );
    let r = s.logged(Refusal::ProtocolViolation, early_and_bad.addr());
    assert!(
        matches!(r.detail, Detail::Frame(FrameError::InvalidField { .. })),
        "{r:?}"
    );

    // Not this protocol at all, after a login: the session's key is named.
    let (mut garbage, _) = Peer::logged_in(s.trading, MAKER_KEY);
    garbage.stream.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(garbage.logout_reason(), Some(LogoutReason::MalformedFrame));
    let r = s.logged(Refusal::MalformedFrame, garbage.addr());
    assert_eq!(r.key_id, Some(MAKER_KEY));
    assert!(
        matches!(r.detail, Detail::Frame(FrameError::BadLength { .. })),
        "{r:?}"
    );
    assert!(r.to_string().contains("error=\"bad frame length"), "{r}");

    // A template the server does not take (a server template, sent the wrong way).
    let mut wrong_way = Peer::connect(s.trading);
    let mut frame = with_byte(&ClientMessage::Heartbeat, 4, template::LOGIN_ACCEPTED as u8);
    frame[5] = 0;
    wrong_way.stream.write_all(&frame).unwrap();
    assert_eq!(
        wrong_way.logout_reason(),
        Some(LogoutReason::UnknownTemplate)
    );
    let r = s.logged(Refusal::UnknownTemplate, wrong_way.addr());
    assert_eq!(r.key_id, None);

    // A Login with an undefined flag.
    let mut bad_flag = Peer::connect(s.trading);
    let login = login(MAKER_KEY, &secret(MAKER_KEY), |_| {});
    let frame = with_byte(&ClientMessage::Login(login), 84, 0x80);
    bad_flag.stream.write_all(&frame).unwrap();
    assert_eq!(bad_flag.logout_reason(), Some(LogoutReason::InvalidField));
    s.logged(Refusal::InvalidField, bad_flag.addr());

    // A request with a bad side: rejected, and the session goes on.
    let (mut sloppy, _) = Peer::logged_in(s.trading, MAKER_KEY);
    sloppy.stream.write_all(&order_with_a_bad_side()).unwrap();
    match sloppy.recv() {
        Some(ServerMessage::OrderRejected(r)) => assert_eq!(r.reason, RejectReason::Malformed),
        other => panic!("{other:?}"),
    }
    let r = s.logged(Refusal::MalformedRequest, sloppy.addr());
    assert_eq!(r.key_id, Some(MAKER_KEY));

    assert_eq!(s.count(Refusal::ProtocolViolation), 2);
    for reason in [
        Refusal::MalformedFrame,
        Refusal::UnknownTemplate,
        Refusal::InvalidField,
        Refusal::MalformedRequest,
    ] {
        assert_eq!(s.count(reason), 1, "{reason}");
    }
    assert_eq!(s.stats.refusals.total(), 6);
}

// ---------------------------------------------------------------- sessions

#[test]
fn requests_beyond_the_sessions_permissions_or_its_rate_are_counted_and_logged() {
    let mut s = Server::start(GatewayConfig {
        requests_per_second_per_key: 5,
        ..GatewayConfig::loopback()
    });
    let (mut trader, _) = Peer::logged_in(s.trading, MAKER_KEY);
    trader.send(&ClientMessage::Admin(AdminRequest {
        request_id: 1,
        command: Command::CreateAccount { account: 77 },
    }));
    assert_eq!(trader.logout_reason(), Some(LogoutReason::NotPermitted));
    let r = s.logged(Refusal::NotPermitted, trader.addr());
    assert_eq!(r.key_id, Some(MAKER_KEY));
    assert_eq!(r.detail, Detail::Template(template::CREATE_ACCOUNT));

    // Five allowed, six refused within the second: the sixth refusal is abuse.
    let (mut eager, _) = Peer::logged_in(s.trading, MAKER_KEY);
    for request_id in 1..=11 {
        eager.send(&balance_query(request_id));
    }
    assert_eq!(eager.logout_reason(), Some(LogoutReason::RateLimitAbuse));
    let r = s.logged(Refusal::RateLimitAbuse, eager.addr());
    assert_eq!(r.key_id, Some(MAKER_KEY));
    // The first of the six on lines of their own, the rest in the window's summary.
    let limited: Vec<_> = s
        .refusals()
        .filter(|r| r.reason == Refusal::RateLimited)
        .collect();
    assert_eq!(limited.len() as u32, LOG_LINES_PER_REASON, "{limited:?}");
    for r in limited {
        assert_eq!((r.peer, r.key_id), (eager.addr(), Some(MAKER_KEY)));
        assert_eq!(r.detail, Detail::Template(template::BALANCE_QUERY));
    }
    let rest = 6 - u64::from(LOG_LINES_PER_REASON);
    s.wait_log("the summary of the rate limited requests", |records| {
        records.iter().any(|r| match r {
            LogRecord::Suppressed(s) => s.reasons.iter().any(|r| {
                r.reason == Refusal::RateLimited
                    && r.sources == vec![("127.0.0.1".parse().unwrap(), rest)]
            }),
            LogRecord::Refused(_) => false,
        })
    });
    assert_eq!(s.count(Refusal::NotPermitted), 1);
    assert_eq!(s.count(Refusal::RateLimited), 6);
    assert_eq!(s.count(Refusal::RateLimitAbuse), 1);
}

#[test]
fn a_client_that_does_not_read_is_counted_and_logged_as_a_slow_consumer() {
    let mut s = Server::start(GatewayConfig {
        outbound_buffer_bytes: 16 * 1024,
        ..GatewayConfig::loopback()
    });
    let (mut p, _) = Peer::logged_in(s.trading, MAKER_KEY);
    let mut frames = Vec::new();
    let mut b = [0u8; FRAME_SIZE_MAX];
    for request_id in 1..=60_000 {
        let n = encode_client(&balance_query(request_id), &mut b);
        frames.extend_from_slice(&b[..n]);
    }
    // Never read: the answers fill the kernel's buffers, then the gateway's.
    p.stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = p.stream.write_all(&frames);
    let r = s.logged(Refusal::SlowConsumer, p.addr());
    assert_eq!(r.key_id, Some(MAKER_KEY));
    assert_eq!(s.count(Refusal::SlowConsumer), 1);
}
