//! The gateway on real loopback sockets, with an engine applied inline behind it. Each
//! test reads as one rule of `docs/protocol.md`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ringex_engine::{
    Command, Event, Exchange, MarketSpec, MarketStatus, OrderKind, OrderRef, RejectReason, Side,
    StpMode, Symbol, TimeInForce,
};
use ringex_gateway::backend::{Backend, BackendError, Delivery, InlineBackend};
use ringex_gateway::protocol::{
    decode_server, encode_client, login_flags, permission, secret_hash, BalanceQuery, Cancel,
    ClientMessage, FrameError, Login, LoginRejectReason, LogoutReason, NewOrder, ServerMessage,
    FRAME_SIZE_MAX,
};
use ringex_gateway::server::{Gateway, GatewayConfig};

const MARKET: u32 = 1;
const ADMIN_KEY: u64 = 100;
const MAKER_KEY: u64 = 10;
const TAKER_KEY: u64 = 11;
const OPS_KEY: u64 = 101;

fn secret(key: u64) -> String {
    format!("secret-{key}")
}

/// An exchange with one market, an operator (admin key) and two funded traders.
fn exchange() -> Exchange {
    let mut ex = Exchange::new();
    let mut out = Vec::new();
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
        (11, TAKER_KEY, permission::TRADE),
    ] {
        cmds.push(Command::CreateAccount { account });
        cmds.push(Command::AddApiKey {
            account,
            key_id: key,
            secret_hash: secret_hash(secret(key).as_bytes()),
            permissions: perms,
        });
        for asset in [1, 2] {
            cmds.push(Command::Deposit {
                account,
                asset,
                amount: 1_000_000_000,
                external_ref: u64::from(account) * 10 + u64::from(asset),
            });
        }
    }
    // An operator's key, good on both listeners.
    cmds.push(Command::AddApiKey {
        account: 1,
        key_id: OPS_KEY,
        secret_hash: secret_hash(secret(OPS_KEY).as_bytes()),
        permissions: permission::ADMIN | permission::TRADE,
    });
    for c in &cmds {
        out.clear();
        ex.apply(c, &mut out);
        assert!(!matches!(out[0], Event::Rejected { .. }), "{c:?}: {out:?}");
    }
    ex
}

struct Server {
    trading: SocketAddr,
    admin: SocketAddr,
    stats: Arc<ringex_gateway::server::GatewayStats>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

fn serve(config: GatewayConfig) -> Server {
    run(Gateway::bind(config).unwrap())
}

/// Runs a bound gateway's event loop on a thread of its own.
fn run(mut gateway: Gateway) -> Server {
    let trading = gateway.trading_addr().unwrap();
    let admin = gateway.admin_addr().unwrap();
    let stats = gateway.stats();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let thread = std::thread::spawn(move || {
        let mut backend = InlineBackend::new(exchange());
        gateway.run(&mut backend, &flag).unwrap();
    });
    Server {
        trading,
        admin,
        stats,
        stop,
        thread: Some(thread),
    }
}

fn default_server() -> Server {
    serve(GatewayConfig::loopback())
}

/// A bare test client: frames in, frames out, a timeout on every read.
struct Peer {
    stream: TcpStream,
    buf: Vec<u8>,
    next_request: u64,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn login_message(key: u64, secret_of: &str) -> Login {
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
    login.sign(&secret_hash(secret_of.as_bytes()));
    login
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
            next_request: 1,
        }
    }

    fn send(&mut self, msg: &ClientMessage) {
        let mut b = [0u8; FRAME_SIZE_MAX];
        let n = encode_client(msg, &mut b);
        self.stream.write_all(&b[..n]).unwrap();
    }

    /// The next frame, or None after `wait` (or on a closed connection).
    fn recv_within(&mut self, wait: Duration) -> Option<ServerMessage> {
        let deadline = Instant::now() + wait;
        loop {
            match decode_server(&self.buf) {
                Ok((m, n)) => {
                    self.buf.drain(..n);
                    return Some(m);
                }
                Err(FrameError::Incomplete) => {}
                Err(e) => panic!("server sent a bad frame: {e}"),
            }
            if Instant::now() >= deadline {
                return None;
            }
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

    /// The next frame that is not a heartbeat.
    fn recv(&mut self) -> ServerMessage {
        for _ in 0..100 {
            match self.recv_within(Duration::from_secs(5)) {
                Some(ServerMessage::Heartbeat) => continue,
                Some(m) => return m,
                None => panic!("no message from the server"),
            }
        }
        panic!("only heartbeats");
    }

    /// Every message of one request, up to and including its RequestDone.
    fn outcome(&mut self, request_id: u64) -> Vec<ServerMessage> {
        let mut out = Vec::new();
        for _ in 0..1000 {
            let m = self.recv();
            let done = matches!(m, ServerMessage::RequestDone(d) if d.request_id == request_id);
            out.push(m);
            if done {
                return out;
            }
        }
        panic!("no RequestDone for {request_id}: {out:?}");
    }

    fn login(addr: SocketAddr, key: u64) -> (Peer, ServerMessage) {
        Peer::login_with(addr, key, |_| {})
    }

    /// Logs in with the login message changed by `adjust` (flags, resume, heartbeat),
    /// signed after the change; returns the server's reply.
    fn login_with(
        addr: SocketAddr,
        key: u64,
        adjust: impl FnOnce(&mut Login),
    ) -> (Peer, ServerMessage) {
        let mut p = Peer::connect(addr);
        let mut login = login_message(key, &secret(key));
        adjust(&mut login);
        login.sign(&secret_hash(secret(key).as_bytes()));
        p.send(&ClientMessage::Login(login));
        let reply = p.recv();
        (p, reply)
    }

    fn logged_in(addr: SocketAddr, key: u64) -> Peer {
        let (p, reply) = Peer::login(addr, key);
        assert!(
            matches!(reply, ServerMessage::LoginAccepted(_)),
            "{reply:?}"
        );
        p
    }

    fn request_id(&mut self) -> u64 {
        let id = self.next_request;
        self.next_request += 1;
        id
    }

    fn order(&mut self, side: Side, price: i64, qty: u64, cid: u64) -> Vec<ServerMessage> {
        let request_id = self.request_id();
        self.send(&limit_order(request_id, side, price, qty, cid));
        self.outcome(request_id)
    }

    /// Reads until the server closes; returns the Logout reason if one came.
    fn logout_reason(&mut self) -> Option<LogoutReason> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            match self.recv_within(Duration::from_millis(200)) {
                Some(ServerMessage::Logout { reason }) => return Some(reason),
                Some(_) => continue,
                None => {
                    if self.closed() {
                        return None;
                    }
                }
            }
        }
        panic!("the server did not close the connection");
    }

    /// Drops the connection without a Logout (as a network failure would), once the
    /// server has seen it go: the session is detached, resumable.
    fn disconnect(mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
        assert_eq!(self.logout_reason(), None);
    }

    /// Whether the server has closed the connection. Bytes that arrive meanwhile are
    /// kept for the next `recv` (dropping them would cut the stream mid-frame).
    fn closed(&mut self) -> bool {
        let mut b = [0u8; 4096];
        match self.stream.read(&mut b) {
            Ok(0) => true,
            Ok(n) => {
                self.buf.extend_from_slice(&b[..n]);
                false
            }
            Err(_) => false,
        }
    }
}

/// Whether the server has closed (or reset) a non-blocking connection by now.
fn closed_now(stream: &mut TcpStream) -> bool {
    let mut b = [0u8; 64];
    match stream.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

/// Waits until `done` holds; fails after a generous deadline (a bound on failure: how
/// long it took is not what is tested).
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "still waiting until {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A GTC limit order in the test market.
fn limit_order(request_id: u64, side: Side, price: i64, qty: u64, cid: u64) -> ClientMessage {
    ClientMessage::NewOrder(NewOrder {
        price,
        qty,
        ..limit_order_fields(request_id, side, cid)
    })
}

/// A GTC limit order on the test market, price and quantity zero.
fn limit_order_fields(request_id: u64, side: Side, cid: u64) -> NewOrder {
    NewOrder {
        request_id,
        market: MARKET,
        client_order_id: cid,
        side,
        kind: OrderKind::Limit,
        tif: TimeInForce::Gtc,
        stp: StpMode::None,
        price: 0,
        qty: 0,
        quote_budget: 0,
    }
}

fn rejected(reply: ServerMessage) -> LoginRejectReason {
    match reply {
        ServerMessage::LoginRejected { reason } => reason,
        other => panic!("expected LoginRejected, got {other:?}"),
    }
}

// ---------------------------------------------------------------- login

#[test]
fn a_login_with_a_valid_signature_is_accepted_with_a_new_session() {
    let s = default_server();
    let (_p, reply) = Peer::login(s.trading, MAKER_KEY);
    let ServerMessage::LoginAccepted(a) = reply else {
        panic!("{reply:?}")
    };
    assert_eq!(a.account, 10);
    assert_eq!(a.next_seq, 1);
    assert_eq!(a.last_request_id, 0);
    assert_eq!(a.heartbeat_ms, 1000);
}

#[test]
fn logins_with_a_bad_signature_unknown_key_stale_timestamp_or_replayed_nonce_are_refused() {
    let s = default_server();
    let mut p = Peer::connect(s.trading);
    p.send(&ClientMessage::Login(login_message(
        MAKER_KEY,
        "wrong secret",
    )));
    assert_eq!(rejected(p.recv()), LoginRejectReason::BadSignature);
    assert!(p.logout_reason().is_none(), "closed after the reject");

    let mut p = Peer::connect(s.trading);
    p.send(&ClientMessage::Login(login_message(999, "x")));
    assert_eq!(rejected(p.recv()), LoginRejectReason::UnknownKey);

    let mut stale = login_message(MAKER_KEY, &secret(MAKER_KEY));
    stale.timestamp_ns -= 60_000_000_000;
    stale.sign(&secret_hash(secret(MAKER_KEY).as_bytes()));
    let mut p = Peer::connect(s.trading);
    p.send(&ClientMessage::Login(stale));
    assert_eq!(rejected(p.recv()), LoginRejectReason::StaleTimestamp);

    let login = login_message(MAKER_KEY, &secret(MAKER_KEY));
    let mut p = Peer::connect(s.trading);
    p.send(&ClientMessage::Login(login));
    assert!(matches!(p.recv(), ServerMessage::LoginAccepted(_)));
    let mut q = Peer::connect(s.trading);
    q.send(&ClientMessage::Login(login));
    assert_eq!(rejected(q.recv()), LoginRejectReason::ReplayedNonce);
}

#[test]
fn a_key_has_at_most_its_configured_sessions_detached_ones_included() {
    // Long enough that the logins below all happen while the sessions linger.
    let linger = Duration::from_secs(2);
    let s = serve(GatewayConfig {
        sessions_per_key_max: 2,
        session_linger_ms: linger.as_millis() as u64,
        ..GatewayConfig::loopback()
    });
    let first = Peer::logged_in(s.trading, MAKER_KEY);
    let mut second = Peer::logged_in(s.trading, MAKER_KEY);
    let (_, reply) = Peer::login(s.trading, MAKER_KEY);
    assert_eq!(rejected(reply), LoginRejectReason::TooManySessions);
    // Other keys have their own count.
    let _taker = Peer::logged_in(s.trading, TAKER_KEY);
    // A logout ends its session: its place is free at once.
    second.send(&ClientMessage::Logout);
    assert_eq!(second.logout_reason(), Some(LogoutReason::Requested));
    let mut second = Peer::logged_in(s.trading, MAKER_KEY);
    // A dropped connection leaves its session resumable: it still counts.
    let detached_from = Instant::now();
    first.disconnect();
    second.send(&ClientMessage::Logout);
    assert_eq!(second.logout_reason(), Some(LogoutReason::Requested));
    let _second = Peer::logged_in(s.trading, MAKER_KEY);
    let (_, reply) = Peer::login(s.trading, MAKER_KEY);
    assert_eq!(rejected(reply), LoginRejectReason::TooManySessions);
    // Once the detached one is no longer resumable, there is room again, and not before.
    let mut room = Vec::new();
    wait_until("the detached session leaves", || {
        match Peer::login(s.trading, MAKER_KEY) {
            (p, ServerMessage::LoginAccepted(_)) => room.push(p),
            (_, reply) => assert_eq!(rejected(reply), LoginRejectReason::TooManySessions),
        }
        !room.is_empty()
    });
    assert!(detached_from.elapsed() > linger);
}

#[test]
fn connect_and_logout_cycles_of_one_key_never_lock_it_out() {
    // A linger far longer than the test: only a logout's own end frees a place.
    let s = serve(GatewayConfig {
        sessions_per_key_max: 2,
        session_linger_ms: 600_000,
        ..GatewayConfig::loopback()
    });
    for _ in 0..50 {
        let mut p = Peer::logged_in(s.trading, MAKER_KEY);
        p.send(&ClientMessage::Logout);
        assert_eq!(p.logout_reason(), Some(LogoutReason::Requested));
    }
    Peer::logged_in(s.trading, MAKER_KEY);
    Peer::logged_in(s.trading, MAKER_KEY);
}

#[test]
fn a_session_ended_by_logout_cannot_be_resumed() {
    let s = default_server();
    let (mut p, reply) = Peer::login(s.trading, MAKER_KEY);
    let ServerMessage::LoginAccepted(opened) = reply else {
        panic!("{reply:?}")
    };
    p.send(&ClientMessage::Logout);
    assert_eq!(p.logout_reason(), Some(LogoutReason::Requested));
    let (_, reply) = Peer::login_with(s.trading, MAKER_KEY, |l| {
        l.resume_session = opened.session_id;
        l.resume_from_seq = opened.next_seq;
    });
    assert_eq!(rejected(reply), LoginRejectReason::ResumeImpossible);
}

#[test]
fn keys_log_in_only_on_the_listener_their_permission_allows() {
    let s = default_server();
    assert_eq!(
        rejected(Peer::login(s.trading, ADMIN_KEY).1),
        LoginRejectReason::WrongListener
    );
    assert_eq!(
        rejected(Peer::login(s.admin, MAKER_KEY).1),
        LoginRejectReason::WrongListener
    );
    Peer::logged_in(s.admin, ADMIN_KEY);
}

#[test]
fn a_session_resumes_only_on_the_listener_it_was_opened_on() {
    let s = default_server();
    let (a, reply) = Peer::login(s.admin, OPS_KEY);
    let ServerMessage::LoginAccepted(opened) = reply else {
        panic!("{reply:?}")
    };
    a.disconnect();
    // The key may trade, but an admin session must not move to the trading listener
    // (nor a trading session to the admin one): admin requests are for the admin
    // listener only.
    let resume = |l: &mut Login| {
        l.resume_session = opened.session_id;
        l.resume_from_seq = opened.next_seq;
    };
    let (_, reply) = Peer::login_with(s.trading, OPS_KEY, resume);
    assert_eq!(rejected(reply), LoginRejectReason::ResumeImpossible);
    let (_, reply) = Peer::login_with(s.admin, OPS_KEY, resume);
    assert!(
        matches!(reply, ServerMessage::LoginAccepted(_)),
        "{reply:?}"
    );
}

#[test]
fn anything_but_a_login_first_is_a_protocol_violation() {
    let s = default_server();
    let mut p = Peer::connect(s.trading);
    p.send(&ClientMessage::BalanceQuery(BalanceQuery { request_id: 1 }));
    assert_eq!(p.logout_reason(), Some(LogoutReason::ProtocolViolation));
}

#[test]
fn a_malformed_frame_ends_the_session_with_a_reason() {
    let s = default_server();
    let mut p = Peer::logged_in(s.trading, MAKER_KEY);
    p.stream.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(p.logout_reason(), Some(LogoutReason::MalformedFrame));
}

#[test]
fn a_close_that_arrives_with_the_last_bytes_ends_the_connection_at_once() {
    // The client's last bytes and its end of stream wait in the socket together before
    // the loop runs, so they raise one readiness edge and no later one. No timeout could
    // end the connection within the test's time.
    let gateway = Gateway::bind(GatewayConfig {
        login_timeout_ms: 3_600_000,
        idle_timeout_ms: 3_600_000,
        ..GatewayConfig::loopback()
    })
    .unwrap();
    let mut p = Peer::connect(gateway.trading_addr().unwrap());
    p.send(&ClientMessage::Login(login_message(
        MAKER_KEY,
        &secret(MAKER_KEY),
    )));
    p.stream.shutdown(std::net::Shutdown::Write).unwrap();
    let s = run(gateway);
    wait_until("the connection is closed at its end of stream", || {
        s.stats.connections_total.load(Ordering::Relaxed) == 1
            && s.stats.connections_active.load(Ordering::Relaxed) == 0
    });
}

#[test]
fn idle_connections_that_never_log_in_do_not_take_the_places_of_sessions() {
    let s = serve(GatewayConfig {
        connections_per_ip: 2,
        unauthenticated_per_ip: 4,
        login_timeout_ms: 600_000,
        ..GatewayConfig::loopback()
    });
    // As many idle sockets from this address as the unauthenticated bound allows...
    let idle: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(s.trading).unwrap())
        .collect();
    wait_until("the idle sockets are accepted", || {
        s.stats.connections_total.load(Ordering::Relaxed) == 4
    });
    // ...and one more takes the place of the oldest, which is closed.
    let over = TcpStream::connect(s.trading).unwrap();
    wait_until("the oldest idle socket is closed for the new one", || {
        s.stats.connections_total.load(Ordering::Relaxed) == 5
            && s.stats.connections_active.load(Ordering::Relaxed) == 4
    });
    // Two of them log in: each leaves the unauthenticated count for the address's
    // sessions, so the idle ones never shut a client out of its places.
    drop(idle);
    drop(over);
    wait_until("the idle sockets are gone", || {
        s.stats.connections_active.load(Ordering::Relaxed) == 0
    });
    let _idle: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(s.trading).unwrap())
        .collect();
    let _a = Peer::logged_in(s.trading, MAKER_KEY);
    let _b = Peer::logged_in(s.trading, TAKER_KEY);
    // The address's sessions are full: a third login is refused, idle sockets or not.
    let (_, reply) = Peer::login(s.trading, MAKER_KEY);
    assert_eq!(rejected(reply), LoginRejectReason::TooManySessions);
    // The unauthenticated places are still there for clients that log in.
    let _more: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(s.trading).unwrap())
        .collect();
    wait_until("every socket is accepted", || {
        s.stats.connections_active.load(Ordering::Relaxed) == 6
    });
}

#[test]
fn idle_sockets_at_the_unauthenticated_bound_give_way_to_a_client_oldest_first() {
    let s = serve(GatewayConfig {
        unauthenticated_per_ip: 16,
        login_timeout_ms: 600_000,
        ..GatewayConfig::loopback()
    });
    // Sixteen idle sockets from this address, accepted one after the other.
    let mut idle: Vec<TcpStream> = Vec::new();
    for n in 1..=16 {
        idle.push(TcpStream::connect(s.trading).unwrap());
        wait_until("the idle socket is accepted", || {
            s.stats.connections_total.load(Ordering::Relaxed) == n
        });
    }
    // A real client from the same address logs in at once and trades...
    let mut p = Peer::logged_in(s.trading, MAKER_KEY);
    let out = p.order(Side::Sell, 101, 5, 77);
    assert!(matches!(out[0], ServerMessage::OrderAccepted(_)), "{out:?}");
    // ...in the place of the oldest idle socket, which is closed (and counted); the
    // others stay open.
    idle[0]
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut b = [0u8; 8];
    assert!(
        matches!(idle[0].read(&mut b), Ok(0) | Err(_)),
        "the oldest is closed"
    );
    for other in &mut idle[1..] {
        other.set_nonblocking(true).unwrap();
        assert!(!closed_now(other), "only the oldest is closed");
    }
    assert_eq!(
        s.stats
            .refusals
            .get(ringex_gateway::refusals::Refusal::UnauthenticatedEvicted),
        1
    );
    assert_eq!(s.stats.connections_active.load(Ordering::Relaxed), 16);
}

#[test]
fn a_listener_that_cannot_bind_names_its_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let e = Gateway::bind(GatewayConfig {
        admin_addr: addr,
        ..GatewayConfig::loopback()
    })
    .err()
    .expect("the admin address is taken");
    assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
    assert!(
        e.to_string()
            .starts_with(&format!("{addr} (admin listener): ")),
        "{e}"
    );
    let e = Gateway::bind(GatewayConfig {
        trading_addr: addr,
        ..GatewayConfig::loopback()
    })
    .err()
    .expect("the trading address is taken");
    assert!(
        e.to_string()
            .starts_with(&format!("{addr} (trading listener): ")),
        "{e}"
    );
}

#[test]
fn a_connection_that_never_logs_in_is_closed_after_the_login_timeout() {
    let s = serve(GatewayConfig {
        login_timeout_ms: 200,
        ..GatewayConfig::loopback()
    });
    let mut p = Peer::connect(s.trading);
    assert_eq!(p.logout_reason(), Some(LogoutReason::LoginTimeout));
}

// ---------------------------------------------------------------- trading

#[test]
fn an_order_is_accepted_and_its_outcome_ends_with_request_done() {
    let s = default_server();
    let mut p = Peer::logged_in(s.trading, MAKER_KEY);
    let out = p.order(Side::Sell, 101, 5, 77);
    let ServerMessage::OrderAccepted(a) = out[0] else {
        panic!("{out:?}")
    };
    assert_eq!(
        (a.seq, a.request_id, a.client_order_id, a.qty),
        (1, 1, 77, 5)
    );
    let ServerMessage::RequestDone(d) = out[1] else {
        panic!("{out:?}")
    };
    assert_eq!((d.seq, d.request_id, d.count), (2, 1, 1));
}

#[test]
fn a_cross_fills_both_sides_with_the_makers_price_and_one_match_id() {
    let s = default_server();
    let mut maker = Peer::logged_in(s.trading, MAKER_KEY);
    let mut taker = Peer::logged_in(s.trading, TAKER_KEY);
    maker.order(Side::Sell, 100, 5, 1);
    let out = taker.order(Side::Buy, 105, 3, 2);
    let taker_fill = out
        .iter()
        .find_map(|m| match m {
            ServerMessage::Filled(f) => Some(*f),
            _ => None,
        })
        .expect("taker filled");
    assert_eq!(
        (taker_fill.price, taker_fill.qty, taker_fill.client_order_id),
        (100, 3, 2)
    );
    assert_eq!(taker_fill.request_id, 1);
    let ServerMessage::Filled(maker_fill) = maker.recv() else {
        panic!("maker gets a fill")
    };
    assert_eq!(
        maker_fill.request_id, 0,
        "the maker did not ask for this fill"
    );
    assert_eq!(maker_fill.client_order_id, 1);
    assert_eq!(maker_fill.remaining_qty, 2);
    assert_eq!(maker_fill.match_id, taker_fill.match_id);
}

#[test]
fn a_market_buy_by_budget_echoes_its_client_order_id_on_every_fill_and_its_end() {
    let s = default_server();
    let mut maker = Peer::logged_in(s.trading, MAKER_KEY);
    let mut taker = Peer::logged_in(s.trading, TAKER_KEY);
    maker.order(Side::Sell, 100, 1, 11);
    maker.order(Side::Sell, 101, 1, 12);
    let request_id = taker.request_id();
    taker.send(&ClientMessage::NewOrder(NewOrder {
        kind: OrderKind::Market,
        tif: TimeInForce::Ioc,
        price: 0,
        qty: 0,
        quote_budget: 1_000,
        ..limit_order_fields(request_id, Side::Buy, 77)
    }));
    let out = taker.outcome(request_id);
    let echoed: Vec<(&str, u64)> = out
        .iter()
        .filter_map(|m| match m {
            ServerMessage::OrderAccepted(a) => Some(("accepted", a.client_order_id)),
            ServerMessage::Filled(f) => Some(("filled", f.client_order_id)),
            ServerMessage::Cancelled(c) => Some(("cancelled", c.client_order_id)),
            _ => None,
        })
        .collect();
    assert_eq!(
        echoed,
        [
            ("accepted", 77),
            ("filled", 77),
            ("filled", 77),
            ("cancelled", 77)
        ],
        "{out:?}"
    );
}

#[test]
fn a_request_id_not_above_the_last_processed_one_is_ignored() {
    let s = default_server();
    let mut p = Peer::logged_in(s.trading, MAKER_KEY);
    p.order(Side::Sell, 120, 1, 0);
    // Resend request 1: ignored, no answer. Answers come in request order, so the next
    // request's answer is the next thing the session hears.
    p.next_request = 1;
    let request_id = p.request_id();
    p.send(&limit_order(request_id, Side::Sell, 120, 1, 0));
    p.send(&ClientMessage::BalanceQuery(BalanceQuery { request_id: 2 }));
    let out = p.outcome(2);
    assert!(matches!(out[0], ServerMessage::Balance(_)), "{out:?}");
    assert!(
        out.iter().all(|m| m.request_id() == Some(2)),
        "only request 2 was answered: {out:?}"
    );
}

#[test]
fn a_session_cannot_touch_another_accounts_orders() {
    let s = default_server();
    let mut maker = Peer::logged_in(s.trading, MAKER_KEY);
    let mut other = Peer::logged_in(s.trading, TAKER_KEY);
    let out = maker.order(Side::Sell, 110, 1, 0);
    let ServerMessage::OrderAccepted(a) = out[0] else {
        panic!()
    };
    let request_id = other.request_id();
    other.send(&ClientMessage::Cancel(Cancel {
        request_id,
        market: MARKET,
        order: OrderRef::Exchange(a.order_id),
    }));
    let out = other.outcome(request_id);
    let ServerMessage::OrderRejected(r) = out[0] else {
        panic!("{out:?}")
    };
    assert_eq!(r.reason, RejectReason::UnknownOrder);
}

#[test]
fn an_admin_request_from_a_trading_session_ends_it() {
    let s = default_server();
    let mut p = Peer::logged_in(s.trading, MAKER_KEY);
    p.send(&ClientMessage::Admin(
        ringex_gateway::protocol::AdminRequest {
            request_id: 1,
            command: Command::CreateAccount { account: 77 },
        },
    ));
    assert_eq!(p.logout_reason(), Some(LogoutReason::NotPermitted));
}

#[test]
fn an_admin_session_creates_and_funds_accounts() {
    let s = default_server();
    let mut a = Peer::logged_in(s.admin, ADMIN_KEY);
    a.send(&ClientMessage::Admin(
        ringex_gateway::protocol::AdminRequest {
            request_id: 1,
            command: Command::CreateAccount { account: 500 },
        },
    ));
    assert!(matches!(a.outcome(1)[0], ServerMessage::AdminAck(_)));
    let deposit = Command::Deposit {
        account: 500,
        asset: 2,
        amount: 10,
        external_ref: 9,
    };
    for request_id in [2, 3] {
        a.send(&ClientMessage::Admin(
            ringex_gateway::protocol::AdminRequest {
                request_id,
                command: deposit,
            },
        ));
        let out = a.outcome(request_id);
        let ServerMessage::AdminAck(ack) = out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(
            ack.duplicate,
            request_id == 3,
            "idempotent by external reference"
        );
    }
}

/// Sends one admin command from an admin session and waits for its AdminAck.
fn admin(a: &mut Peer, command: Command) {
    let request_id = a.request_id();
    a.send(&ClientMessage::Admin(
        ringex_gateway::protocol::AdminRequest {
            request_id,
            command,
        },
    ));
    let out = a.outcome(request_id);
    assert!(matches!(out[0], ServerMessage::AdminAck(_)), "{out:?}");
}

#[test]
fn revoking_a_key_logs_its_sessions_out_and_honours_cancel_on_disconnect() {
    let s = default_server();
    let mut maker = a_sell_at_100_cancelled_on_disconnect(s.trading);
    let mut a = Peer::logged_in(s.admin, ADMIN_KEY);
    admin(&mut a, Command::RevokeApiKey { key_id: MAKER_KEY });
    assert_eq!(maker.logout_reason(), Some(LogoutReason::KeyRevoked));
    // The session asked for cancel-on-disconnect: its order is gone. (The admin's
    // connection stays.)
    assert_nothing_to_buy_at_100(&s, 1);
    // And the key no longer logs in.
    let (_, reply) = Peer::login(s.trading, MAKER_KEY);
    assert_eq!(rejected(reply), LoginRejectReason::UnknownKey);
}

#[test]
fn suspending_an_account_logs_its_sessions_out() {
    let s = default_server();
    let mut taker = Peer::logged_in(s.trading, TAKER_KEY);
    let mut a = Peer::logged_in(s.admin, ADMIN_KEY);
    admin(&mut a, Command::SuspendAccount { account: 11 });
    assert_eq!(taker.logout_reason(), Some(LogoutReason::KeyRevoked));
    let (_, reply) = Peer::login(s.trading, TAKER_KEY);
    assert_eq!(rejected(reply), LoginRejectReason::AccountSuspended);
    // Other accounts are untouched.
    let mut maker = Peer::logged_in(s.trading, MAKER_KEY);
    let out = maker.order(Side::Sell, 100, 1, 0);
    assert!(matches!(out[0], ServerMessage::OrderAccepted(_)), "{out:?}");
}

#[test]
fn halting_a_market_tells_every_session_and_rejects_its_orders_until_it_reopens() {
    let s = default_server();
    let mut maker = Peer::logged_in(s.trading, MAKER_KEY);
    let mut a = Peer::logged_in(s.admin, ADMIN_KEY);
    let set = |a: &mut Peer, status| {
        let cancel_resting = false;
        admin(
            a,
            Command::SetMarketStatus {
                market: MARKET,
                status,
                cancel_resting,
            },
        );
    };
    set(&mut a, MarketStatus::Halted);
    let ServerMessage::SystemEvent(halted) = maker.recv() else {
        panic!("a system event first")
    };
    assert_eq!(
        (halted.market, halted.status),
        (MARKET, MarketStatus::Halted)
    );
    assert_eq!(
        (halted.seq, halted.request_id),
        (1, 0),
        "sequenced, no request"
    );
    let out = maker.order(Side::Sell, 100, 1, 7);
    let ServerMessage::OrderRejected(r) = out[0] else {
        panic!("{out:?}")
    };
    assert_eq!(r.reason, RejectReason::MarketHalted);
    set(&mut a, MarketStatus::Open);
    let ServerMessage::SystemEvent(open) = maker.recv() else {
        panic!("a system event")
    };
    assert_eq!(
        (open.status, open.seq),
        (MarketStatus::Open, halted.seq + 3)
    );
    let out = maker.order(Side::Sell, 100, 1, 7);
    assert!(matches!(out[0], ServerMessage::OrderAccepted(_)), "{out:?}");
}

// ---------------------------------------------------------------- metrics

/// The inline engine, except that applying each order takes `stall` (a journal write
/// that waits on the disk, the thread losing its core).
struct StallingBackend {
    inner: InlineBackend,
    stall: Duration,
}

impl Backend for StallingBackend {
    fn submit(&mut self, command: &Command, tag: u64) -> Result<(), BackendError> {
        if matches!(command, Command::Place(_)) {
            std::thread::sleep(self.stall);
        }
        self.inner.submit(command, tag)
    }
    fn query(&mut self, query: &ringex_engine::Query, tag: u64) -> Result<(), BackendError> {
        self.inner.query(query, tag)
    }
    fn drain(&mut self, limit: usize, f: &mut dyn FnMut(&Delivery)) -> usize {
        self.inner.drain(limit, f)
    }
    fn want_wake(&self) {
        self.inner.want_wake()
    }
    fn outputs_available(&self) -> bool {
        self.inner.outputs_available()
    }
}

/// The inline engine, except that every output reaches the gateway `delay` after its
/// command (a pipeline on other threads, its rings not yet drained).
struct DelayedBackend {
    inner: InlineBackend,
    delay: Duration,
    held: std::collections::VecDeque<(Instant, Delivery)>,
}

impl DelayedBackend {
    fn hold_outputs(&mut self) {
        let now = Instant::now();
        let held = &mut self.held;
        self.inner
            .drain(usize::MAX, &mut |d| held.push_back((now, *d)));
    }
}

impl Backend for DelayedBackend {
    fn submit(&mut self, command: &Command, tag: u64) -> Result<(), BackendError> {
        let r = self.inner.submit(command, tag);
        self.hold_outputs();
        r
    }
    fn query(&mut self, query: &ringex_engine::Query, tag: u64) -> Result<(), BackendError> {
        let r = self.inner.query(query, tag);
        self.hold_outputs();
        r
    }
    fn drain(&mut self, limit: usize, f: &mut dyn FnMut(&Delivery)) -> usize {
        let mut n = 0;
        while n < limit
            && self
                .held
                .front()
                .is_some_and(|(at, _)| at.elapsed() >= self.delay)
        {
            let (_, d) = self.held.pop_front().expect("checked");
            f(&d);
            n += 1;
        }
        n
    }
    fn want_wake(&self) {}
    fn outputs_available(&self) -> bool {
        self.held
            .front()
            .is_some_and(|(at, _)| at.elapsed() >= self.delay)
    }
}

#[test]
fn a_stop_answers_every_request_it_took_then_logs_out() {
    let mut gateway = Gateway::bind(GatewayConfig::loopback()).unwrap();
    let addr = gateway.trading_addr().unwrap();
    let stats = gateway.stats();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let server = std::thread::spawn(move || {
        let mut backend = DelayedBackend {
            inner: InlineBackend::new(exchange()),
            delay: Duration::from_millis(200),
            held: Default::default(),
        };
        gateway.run(&mut backend, &flag).unwrap();
    });
    let mut maker = Peer::logged_in(addr, MAKER_KEY);
    let n = 100;
    for i in 0..n {
        let request_id = maker.request_id();
        maker.send(&limit_order(request_id, Side::Sell, 200 + i % 50, 1, 0));
    }
    // The server has taken the requests (it hands each frame to the backend as it
    // counts it); their answers are still on their way when the stop comes.
    wait_until("the server has read the login and every order", || {
        stats.frames_in.load(Ordering::Relaxed) == 1 + n as u64
    });
    stop.store(true, Ordering::Relaxed);
    let mut done = 0;
    let reason = loop {
        match maker.recv_within(Duration::from_secs(10)) {
            Some(ServerMessage::RequestDone(_)) => done += 1,
            Some(ServerMessage::Logout { reason }) => break reason,
            Some(_) => {}
            None => panic!("closed without a Logout after {done} answers"),
        }
    };
    assert_eq!(reason, LogoutReason::ServerShutdown);
    assert_eq!(done, n, "every request the server took is answered");
    server.join().unwrap();
}

#[test]
fn the_event_loops_busy_time_and_slow_passes_are_counted() {
    let mut gateway = Gateway::bind(GatewayConfig::loopback()).unwrap();
    let addr = gateway.trading_addr().unwrap();
    let stats = gateway.stats();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let thread = std::thread::spawn(move || {
        let mut backend = StallingBackend {
            inner: InlineBackend::new(exchange()),
            stall: Duration::from_millis(2),
        };
        gateway.run(&mut backend, &flag).unwrap();
    });
    let mut p = Peer::logged_in(addr, MAKER_KEY);
    for price in [120, 121, 122] {
        let out = p.order(Side::Sell, price, 1, 0);
        assert!(matches!(out[0], ServerMessage::OrderAccepted(_)), "{out:?}");
    }
    // The answer leaves before its pass is counted: the loop finishes it after.
    wait_until(
        "each order's pass, stalled 2 ms, is counted as slow",
        || stats.passes_slow_1ms.load(Ordering::Relaxed) >= 3,
    );
    let slow_1ms = stats.passes_slow_1ms.load(Ordering::Relaxed);
    let slow_100us = stats.passes_slow_100us.load(Ordering::Relaxed);
    assert!(slow_100us >= slow_1ms, "{slow_100us} < {slow_1ms}");
    assert!(
        stats.busy_ns.load(Ordering::Relaxed) >= 6_000_000,
        "the stalls were work"
    );
    stop.store(true, Ordering::Relaxed);
    thread.join().unwrap();
}

// ---------------------------------------------------------------- limits

#[test]
fn requests_beyond_the_rate_limit_are_rejected_not_dropped() {
    let s = serve(GatewayConfig {
        requests_per_second_per_key: 5,
        ..GatewayConfig::loopback()
    });
    let mut p = Peer::logged_in(s.trading, MAKER_KEY);
    for request_id in 1..=8 {
        p.send(&ClientMessage::BalanceQuery(BalanceQuery { request_id }));
    }
    // The ninth, sent with the others, finds the bucket empty too.
    p.send(&limit_order(9, Side::Sell, 120, 1, 77));
    let mut limited = 0;
    for request_id in 1..=8 {
        let out = p.outcome(request_id);
        if let ServerMessage::OrderRejected(r) = out[0] {
            assert_eq!(r.reason, RejectReason::RateLimited);
            limited += 1;
        }
    }
    assert!(limited >= 3, "{limited}");
    // A refused order is named like any reject: its market and client order id.
    let out = p.outcome(9);
    let ServerMessage::OrderRejected(r) = out[0] else {
        panic!("{out:?}")
    };
    assert_eq!(r.reason, RejectReason::RateLimited);
    assert_eq!((r.market, r.order), (MARKET, Some(OrderRef::Client(77))));
}

/// Whether a balance query is answered, or refused by the rate limit.
fn balance_query_accepted(p: &mut Peer) -> bool {
    let request_id = p.request_id();
    p.send(&ClientMessage::BalanceQuery(BalanceQuery { request_id }));
    let out = p.outcome(request_id);
    match out[0] {
        ServerMessage::Balance(_) => true,
        ServerMessage::OrderRejected(r) if r.reason == RejectReason::RateLimited => false,
        _ => panic!("{out:?}"),
    }
}

/// The most requests one bucket of `rate_per_s` can grant within `elapsed`: a full
/// second's worth banked, plus what refills meanwhile.
fn bucket_allowance(rate_per_s: u64, elapsed: Duration) -> u64 {
    let refilled = (u128::from(rate_per_s) * elapsed.as_nanos()).div_ceil(1_000_000_000);
    rate_per_s + refilled as u64
}

#[test]
fn sessions_of_one_key_share_the_keys_request_budget() {
    const RATE: u64 = 2;
    let s = serve(GatewayConfig {
        requests_per_second_per_key: RATE as u32,
        ..GatewayConfig::loopback()
    });
    let mut first = Peer::logged_in(s.trading, MAKER_KEY);
    let mut second = Peer::logged_in(s.trading, MAKER_KEY);
    // The two sessions take turns, RATE requests each; every answer is awaited, so the
    // gateway sees them one by one. Per session, all would be granted. (Refusing no more
    // than RATE within a second keeps this within the abuse threshold.)
    let from = Instant::now();
    let mut accepted = 0;
    for _ in 0..RATE {
        accepted += u64::from(balance_query_accepted(&mut first));
        accepted += u64::from(balance_query_accepted(&mut second));
    }
    let elapsed = from.elapsed();
    assert!(accepted >= RATE, "the key's budget is granted: {accepted}");
    // One bucket for the key: what it banked and what it refilled meanwhile, which
    // while the turns took under a second is less than two sessions' budgets.
    let allowance = bucket_allowance(RATE, elapsed);
    assert!(
        accepted <= allowance,
        "{accepted} requests granted in {elapsed:?}; one key's bucket grants {allowance}"
    );
    assert_eq!(
        s.stats.rate_limited.load(Ordering::Relaxed),
        2 * RATE - accepted
    );
}

#[test]
fn each_key_has_its_own_request_budget_even_within_one_account() {
    const RATE: u64 = 2;
    const SECOND_MAKER_KEY: u64 = 12;
    let s = serve(GatewayConfig {
        requests_per_second_per_key: RATE as u32,
        ..GatewayConfig::loopback()
    });
    let mut a = Peer::logged_in(s.admin, ADMIN_KEY);
    admin(
        &mut a,
        Command::AddApiKey {
            account: 10,
            key_id: SECOND_MAKER_KEY,
            secret_hash: secret_hash(secret(SECOND_MAKER_KEY).as_bytes()),
            permissions: permission::TRADE,
        },
    );
    let mut first = Peer::logged_in(s.trading, MAKER_KEY);
    let mut second = Peer::logged_in(s.trading, SECOND_MAKER_KEY);
    let mut other_account = Peer::logged_in(s.trading, TAKER_KEY);
    // The first key spends its whole budget; the others still have all of theirs.
    for _ in 0..RATE {
        assert!(balance_query_accepted(&mut first));
    }
    for p in [&mut second, &mut other_account] {
        for _ in 0..RATE {
            assert!(balance_query_accepted(p), "a key's budget is its own");
        }
    }
    assert_eq!(s.stats.rate_limited.load(Ordering::Relaxed), 0);
}

#[test]
fn pipelined_requests_split_anywhere_by_tcp_are_all_answered_in_order() {
    let s = default_server();
    let mut p = Peer::logged_in(s.trading, MAKER_KEY);
    const REQUESTS: u64 = 40_000;
    let mut frames = Vec::new();
    let mut b = [0u8; FRAME_SIZE_MAX];
    for request_id in 1..=REQUESTS {
        let n = encode_client(
            &ClientMessage::BalanceQuery(BalanceQuery { request_id }),
            &mut b,
        );
        frames.extend_from_slice(&b[..n]);
    }
    // First half: writes of odd sizes with pauses, which cut frames anywhere (short
    // reads, frames completed by a later read). Second half: one write far larger than
    // the gateway's read buffer, then silence, so the end of it raises no new readiness
    // and must be read on from the reads before.
    let (small, large) = frames.split_at(frames.len() / 2);
    let (small, large) = (small.to_vec(), large.to_vec());
    let mut writer = p.stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        for (i, chunk) in small.chunks(997).enumerate() {
            writer.write_all(chunk).unwrap();
            if i % 50 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        writer.write_all(&large).unwrap();
    });
    let mut next_done = 1;
    let deadline = Instant::now() + Duration::from_secs(10);
    while next_done <= REQUESTS && Instant::now() < deadline {
        if let Some(ServerMessage::RequestDone(d)) = p.recv_within(Duration::from_millis(100)) {
            assert_eq!(d.request_id, next_done, "answers in request order");
            next_done += 1;
        }
    }
    sender.join().unwrap();
    assert_eq!(next_done, REQUESTS + 1, "every request answered");
}

#[test]
fn connections_waiting_beyond_one_passes_accept_bound_are_still_served_or_refused() {
    // The gateway accepts at most `connections_max` connections per readiness edge.
    // Six connect before its loop runs, so all six wait in the backlog behind one edge.
    // (No login timeout ends a served one meanwhile.)
    let gateway = Gateway::bind(GatewayConfig {
        connections_max: 2,
        login_timeout_ms: 3_600_000,
        ..GatewayConfig::loopback()
    })
    .unwrap();
    let addr = gateway.trading_addr().unwrap();
    let mut waiting: Vec<TcpStream> = (0..6).map(|_| TcpStream::connect(addr).unwrap()).collect();
    for stream in &waiting {
        stream.set_nonblocking(true).unwrap();
    }
    let s = run(gateway);
    // Two are served; the other four are closed (over the limit), not left hanging in
    // the backlog.
    let mut closed = [false; 6];
    wait_until("every connection over the limit is closed", || {
        for (stream, closed) in waiting.iter_mut().zip(&mut closed) {
            *closed = *closed || closed_now(stream);
        }
        closed.iter().filter(|&&c| c).count() >= 4
    });
    assert_eq!(s.stats.connections_total.load(Ordering::Relaxed), 2);
    assert_eq!(s.stats.connections_active.load(Ordering::Relaxed), 2);
    assert_eq!(
        closed.iter().filter(|&&c| c).count(),
        4,
        "the served two are open"
    );
}

#[test]
fn a_client_that_ignores_its_rate_limit_rejects_is_disconnected_for_abuse() {
    let s = serve(GatewayConfig {
        requests_per_second_per_key: 5,
        ..GatewayConfig::loopback()
    });
    let (mut p, reply) = Peer::login(s.trading, MAKER_KEY);
    let ServerMessage::LoginAccepted(accepted) = reply else {
        panic!("{reply:?}")
    };
    // Five allowed, then more than five refused within the second: abuse. Nothing is
    // sent after the eleventh, so the server's close finds no unread input and ends
    // the stream cleanly (unread input would reset it, and the Logout with it).
    for request_id in 1..=11 {
        p.send(&ClientMessage::BalanceQuery(BalanceQuery { request_id }));
    }
    let mut seq_last = 0;
    let mut answered = Vec::new();
    let reason = loop {
        match p.recv_within(Duration::from_secs(5)) {
            Some(ServerMessage::Logout { reason }) => break Some(reason),
            Some(m) => {
                seq_last = m.seq().unwrap_or(seq_last);
                if let ServerMessage::RequestDone(d) = m {
                    answered.push(d.request_id);
                }
            }
            None => break None,
        }
    };
    assert_eq!(reason, Some(LogoutReason::RateLimitAbuse));
    assert_eq!(s.stats.rate_limited.load(Ordering::Relaxed), 6);
    // Every request is still answered, in order: what did not go out before the Logout
    // waits in the session, and a resume replays it.
    let (mut p, reply) = Peer::login_with(s.trading, MAKER_KEY, |login| {
        login.resume_session = accepted.session_id;
        login.resume_from_seq = seq_last + 1;
    });
    assert!(matches!(reply, ServerMessage::LoginAccepted(_)));
    while answered.len() < 11 {
        match p.recv() {
            ServerMessage::RequestDone(d) => answered.push(d.request_id),
            ServerMessage::OrderRejected(r) => assert_eq!(r.reason, RejectReason::RateLimited),
            _ => {}
        }
    }
    assert_eq!(answered, (1..=11).collect::<Vec<_>>());
}

#[test]
fn a_client_that_does_not_read_is_disconnected_as_a_slow_consumer() {
    let s = serve(GatewayConfig {
        outbound_buffer_bytes: 16 * 1024,
        ..GatewayConfig::loopback()
    });
    let mut p = Peer::logged_in(s.trading, MAKER_KEY);
    let mut frames = Vec::new();
    let mut b = [0u8; FRAME_SIZE_MAX];
    for request_id in 1..=60_000 {
        let n = encode_client(
            &ClientMessage::BalanceQuery(BalanceQuery { request_id }),
            &mut b,
        );
        frames.extend_from_slice(&b[..n]);
    }
    // Send everything, never read: answers pile up in the kernel, then in the gateway.
    p.stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = p.stream.write_all(&frames);
    wait_until("the gateway gives up on the reader", || {
        s.stats.slow_consumers.load(Ordering::Relaxed) == 1
    });
    // The connection ends; the Logout may or may not get through the full buffers.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut closed = false;
    while Instant::now() < deadline {
        match p.recv_within(Duration::from_millis(100)) {
            Some(_) => continue,
            None => {
                if p.closed() {
                    closed = true;
                    break;
                }
            }
        }
    }
    assert!(closed, "the slow reader was disconnected");
    assert_eq!(s.stats.slow_consumers.load(Ordering::Relaxed), 1);
}

// ---------------------------------------------------------------- heartbeats, resume

#[test]
fn the_server_heartbeats_when_idle_and_logs_out_a_silent_client() {
    let s = serve(GatewayConfig {
        idle_timeout_ms: 300,
        ..GatewayConfig::loopback()
    });
    let (mut p, reply) = Peer::login_with(s.trading, MAKER_KEY, |login| {
        login.heartbeat_ms = 100;
    });
    let ServerMessage::LoginAccepted(a) = reply else {
        panic!()
    };
    assert_eq!(a.heartbeat_ms, 100);
    // The heartbeat (after 100 ms of silence) comes before the logout (after 300 ms).
    assert!(matches!(
        p.recv_within(Duration::from_secs(10)),
        Some(ServerMessage::Heartbeat)
    ));
    // Silent for 3 intervals at least: logged out.
    assert_eq!(p.logout_reason(), Some(LogoutReason::HeartbeatTimeout));
}

#[test]
fn a_client_dribbling_bytes_of_an_unfinished_frame_is_logged_out_as_silent() {
    let s = serve(GatewayConfig {
        idle_timeout_ms: 300,
        ..GatewayConfig::loopback()
    });
    let (mut p, reply) = Peer::login_with(s.trading, MAKER_KEY, |login| {
        login.heartbeat_ms = 100;
    });
    assert!(
        matches!(reply, ServerMessage::LoginAccepted(_)),
        "{reply:?}"
    );
    // The bytes of an order's frame, one every 50 ms (well inside the 300 ms silence
    // timeout), never its last: 55 bytes, 2.75 s of never being silent for long.
    let mut frame = [0u8; FRAME_SIZE_MAX];
    let n = encode_client(&limit_order(1, Side::Buy, 100, 1, 1), &mut frame);
    assert!(
        (n - 1) * 50 > 5 * 300,
        "the frame outlasts the timeout by far"
    );
    for byte in &frame[..n - 1] {
        let _ = p.stream.write_all(std::slice::from_ref(byte));
        match p.recv_within(Duration::from_millis(50)) {
            Some(ServerMessage::Logout { reason }) => {
                assert_eq!(reason, LogoutReason::HeartbeatTimeout);
                return;
            }
            Some(ServerMessage::Heartbeat) | None => {}
            Some(m) => panic!("{m:?}"),
        }
    }
    panic!("a client that never finished a frame was not logged out");
}

#[test]
fn a_spinning_event_loop_serves_the_same_and_still_runs_its_timers() {
    let s = serve(GatewayConfig {
        spin_us: 200_000,
        idle_timeout_ms: 300,
        ..GatewayConfig::loopback()
    });
    let mut maker = Peer::logged_in(s.trading, MAKER_KEY);
    let mut taker = Peer::logged_in(s.trading, TAKER_KEY);
    maker.order(Side::Sell, 100, 5, 1);
    let out = taker.order(Side::Buy, 105, 3, 2);
    assert!(
        out.iter().any(|m| matches!(m, ServerMessage::Filled(_))),
        "{out:?}"
    );
    let ServerMessage::Filled(maker_fill) = maker.recv() else {
        panic!("maker gets a fill")
    };
    assert_eq!(maker_fill.remaining_qty, 2);
    // Both fall silent: heartbeats and the idle timeout run while the loop spins.
    assert_eq!(taker.logout_reason(), Some(LogoutReason::HeartbeatTimeout));
}

#[test]
fn a_reconnecting_client_resumes_its_session_and_gets_what_it_missed() {
    let s = default_server();
    let (mut maker, reply) = Peer::login(s.trading, MAKER_KEY);
    let ServerMessage::LoginAccepted(first) = reply else {
        panic!("{reply:?}")
    };
    let session_id = first.session_id;
    maker.order(Side::Sell, 100, 5, 1);
    maker.disconnect();
    // While the first session is away, its order fills.
    let mut taker = Peer::logged_in(s.trading, TAKER_KEY);
    taker.order(Side::Buy, 100, 2, 0);
    let (mut p, reply) = Peer::login_with(s.trading, MAKER_KEY, |login| {
        login.resume_session = session_id;
        login.resume_from_seq = 3;
    });
    let ServerMessage::LoginAccepted(a) = reply else {
        panic!()
    };
    assert_eq!(a.session_id, session_id);
    assert_eq!(a.next_seq, 3);
    assert_eq!(a.last_request_id, 1);
    assert_ne!(a.flags & login_flags::RESUMED, 0);
    let ServerMessage::Filled(f) = p.recv() else {
        panic!("the missed fill is replayed")
    };
    assert_eq!((f.seq, f.qty, f.client_order_id), (3, 2, 1));
}

#[test]
fn a_resume_replays_the_whole_window_even_when_it_exceeds_the_outbound_limit() {
    let s = serve(GatewayConfig {
        outbound_buffer_bytes: 16 * 1024,
        ..GatewayConfig::loopback()
    });
    let (mut p, reply) = Peer::login(s.trading, MAKER_KEY);
    let ServerMessage::LoginAccepted(first) = reply else {
        panic!("{reply:?}")
    };
    // Far more than 16 KiB of answers, read as they come (no slow consumer here).
    const REQUESTS: u64 = 1_000;
    for request_id in 1..=REQUESTS {
        p.send(&ClientMessage::BalanceQuery(BalanceQuery { request_id }));
        p.outcome(request_id);
    }
    p.disconnect();
    // Resume from the first seq: the replay is the whole window.
    let (mut p, reply) = Peer::login_with(s.trading, MAKER_KEY, |login| {
        login.resume_session = first.session_id;
        login.resume_from_seq = 1;
    });
    assert!(matches!(reply, ServerMessage::LoginAccepted(_)));
    let mut replayed_messages = 0usize;
    let mut done = 0;
    while done < REQUESTS {
        let m = p.recv();
        replayed_messages += 1;
        if let ServerMessage::RequestDone(d) = m {
            done += 1;
            assert_eq!(d.request_id, done, "replayed in order");
        }
    }
    assert!(replayed_messages > 2_000, "{replayed_messages}");
    assert_eq!(s.stats.slow_consumers.load(Ordering::Relaxed), 0);
    // After the replay, the session is live.
    p.next_request = REQUESTS + 1;
    p.send(&ClientMessage::BalanceQuery(BalanceQuery {
        request_id: REQUESTS + 1,
    }));
    let out = p.outcome(REQUESTS + 1);
    assert!(matches!(out[0], ServerMessage::Balance(_)), "{out:?}");
}

#[test]
fn resuming_outside_the_retained_window_is_refused() {
    let s = default_server();
    let (_, reply) = Peer::login_with(s.trading, MAKER_KEY, |login| {
        login.resume_session = 12345;
        login.resume_from_seq = 1;
    });
    assert_eq!(rejected(reply), LoginRejectReason::ResumeImpossible);
}

#[test]
fn cancel_on_disconnect_cancels_the_accounts_orders_when_the_connection_ends() {
    let s = default_server();
    drop(a_sell_at_100_cancelled_on_disconnect(s.trading));
    assert_nothing_to_buy_at_100(&s, 0);
}

/// The maker, logged in with cancel-on-disconnect, with a sell of 5 resting at 100.
fn a_sell_at_100_cancelled_on_disconnect(addr: SocketAddr) -> Peer {
    let (mut maker, reply) = Peer::login_with(addr, MAKER_KEY, |login| {
        login.flags = login_flags::CANCEL_ON_DISCONNECT;
    });
    assert!(matches!(reply, ServerMessage::LoginAccepted(_)));
    maker.order(Side::Sell, 100, 5, 0);
    maker
}

/// Once the gateway has closed the maker's connection, leaving `connections_left`, a
/// taker's buy at 100 fills nothing. (The gateway submits a session's cancels in the pass
/// that closes its connection; the taker's order comes in a later one.)
fn assert_nothing_to_buy_at_100(s: &Server, connections_left: u64) {
    wait_until("the maker's connection is closed", || {
        s.stats.connections_active.load(Ordering::Relaxed) == connections_left
    });
    let mut taker = Peer::logged_in(s.trading, TAKER_KEY);
    let out = taker.order(Side::Buy, 100, 1, 0);
    assert!(
        !out.iter().any(|m| matches!(m, ServerMessage::Filled(_))),
        "{out:?}"
    );
}

/// The inline engine behind a gate: once armed, every pass of the event loop that has
/// output to deliver stops before delivering it until the test lets it go. Between a
/// pass's writes (at its start) and the output it queues (in `drain`), the test can act
/// on the client side of the connection, as a client reading concurrently might.
struct GatedBackend {
    inner: InlineBackend,
    gate: Arc<Gate>,
}

#[derive(Default)]
struct Gate {
    state: std::sync::Mutex<GateState>,
    changed: std::sync::Condvar,
}

#[derive(Default)]
struct GateState {
    armed: bool,
    /// A pass is stopped in `drain`, waiting to be let go.
    waiting: bool,
}

/// A failure bound on each wait of the gate's lockstep, never the thing measured.
const GATE_WAIT_MAX: Duration = Duration::from_secs(30);

impl Gate {
    fn set_armed(&self, armed: bool) {
        let mut s = self.state.lock().unwrap();
        s.armed = armed;
        s.waiting = false;
        self.changed.notify_all();
    }

    /// The event loop's side: waits, while armed, until the test lets this pass go.
    fn pass(&self) {
        let mut s = self.state.lock().unwrap();
        if !s.armed {
            return;
        }
        s.waiting = true;
        self.changed.notify_all();
        let deadline = Instant::now() + GATE_WAIT_MAX;
        while s.armed && s.waiting && Instant::now() < deadline {
            s = self
                .changed
                .wait_timeout(s, deadline - Instant::now())
                .unwrap()
                .0;
        }
    }

    /// The test's side: true once a pass is stopped at the gate, false if none comes
    /// within `within`.
    fn stopped_pass(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let mut s = self.state.lock().unwrap();
        while !s.waiting {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            s = self.changed.wait_timeout(s, deadline - now).unwrap().0;
        }
        true
    }

    fn let_go(&self) {
        let mut s = self.state.lock().unwrap();
        s.waiting = false;
        self.changed.notify_all();
    }
}

impl Backend for GatedBackend {
    fn submit(&mut self, command: &Command, tag: u64) -> Result<(), BackendError> {
        self.inner.submit(command, tag)
    }
    fn query(&mut self, query: &ringex_engine::Query, tag: u64) -> Result<(), BackendError> {
        self.inner.query(query, tag)
    }
    fn drain(&mut self, limit: usize, f: &mut dyn FnMut(&Delivery)) -> usize {
        if self.inner.outputs_available() {
            self.gate.pass();
        }
        self.inner.drain(limit, f)
    }
    fn want_wake(&self) {}
    fn outputs_available(&self) -> bool {
        self.inner.outputs_available()
    }
}

/// Sets a small, fixed receive buffer (no autotuning): the client's window reopens as
/// soon as it empties the buffer, so its reads make room in the server's socket at once.
fn set_receive_buffer(stream: &TcpStream, bytes: usize) {
    use std::os::fd::AsRawFd;
    let value = bytes as libc::c_int;
    // SAFETY: a valid socket, and a c_int option value of the size given.
    let r = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
}

/// Reads up to `most` bytes of what the socket holds now into `out`, without waiting
/// (the socket stays blocking for the thread that writes to it); true at the end of the
/// stream.
fn read_what_is_there(stream: &TcpStream, most: usize, out: &mut Vec<u8>) -> bool {
    use std::os::fd::AsRawFd;
    let mut chunk = [0u8; 16 * 1024];
    for _ in 0..most.div_ceil(chunk.len()) {
        // SAFETY: a valid socket, and a buffer of the length given.
        let n = unsafe {
            libc::recv(
                stream.as_raw_fd(),
                chunk.as_mut_ptr().cast(),
                chunk.len(),
                libc::MSG_DONTWAIT,
            )
        };
        match n {
            0 => return true,
            n if n > 0 => out.extend_from_slice(&chunk[..n as usize]),
            _ => {
                let e = std::io::Error::last_os_error();
                match e.kind() {
                    std::io::ErrorKind::Interrupted => {}
                    std::io::ErrorKind::WouldBlock => return false,
                    _ => panic!("{e}"),
                }
            }
        }
    }
    false
}

/// A gateway behind a [`GatedBackend`]; dropping it opens the gate, then stops the
/// gateway.
struct GatedServer {
    server: Server,
    gate: Arc<Gate>,
}

impl Drop for GatedServer {
    fn drop(&mut self) {
        self.gate.set_armed(false);
    }
}

fn serve_gated(config: GatewayConfig) -> GatedServer {
    let mut gateway = Gateway::bind(config).unwrap();
    let gate = Arc::new(Gate::default());
    let stop = Arc::new(AtomicBool::new(false));
    let server = Server {
        trading: gateway.trading_addr().unwrap(),
        admin: gateway.admin_addr().unwrap(),
        stats: gateway.stats(),
        stop: Arc::clone(&stop),
        thread: Some({
            let gate = Arc::clone(&gate);
            std::thread::spawn(move || {
                let mut backend = GatedBackend {
                    inner: InlineBackend::new(exchange()),
                    gate,
                };
                gateway.run(&mut backend, &stop).unwrap();
            })
        }),
    };
    GatedServer { server, gate }
}

#[test]
fn a_slow_consumer_is_cut_off_between_frames_so_its_logout_still_decodes() {
    let s = serve_gated(GatewayConfig {
        outbound_buffer_bytes: 1 << 20,
        requests_per_second_per_key: 100_000_000,
        ..GatewayConfig::loopback()
    });
    let (stats, gate) = (&s.server.stats, &s.gate);
    let mut p = Peer::logged_in(s.server.trading, MAKER_KEY);
    set_receive_buffer(&p.stream, 64 * 1024);
    // Balance queries with 160 bytes of answers each: 16 MB, far more than the kernel
    // buffers (at most 4 MiB on the sending side) and the outbound limit together.
    const REQUESTS: u64 = 100_000;
    let mut requests = Vec::new();
    let mut b = [0u8; FRAME_SIZE_MAX];
    for request_id in 1..=REQUESTS {
        let n = encode_client(
            &ClientMessage::BalanceQuery(BalanceQuery { request_id }),
            &mut b,
        );
        requests.extend_from_slice(&b[..n]);
    }
    let mut writer = p.stream.try_clone().unwrap();
    writer
        .set_write_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // In every pass of the event loop that has answers to queue, after its writes and
    // before it queues them, the client reads up to 128 KiB: its window reopens, the
    // server's kernel sends and is acknowledged, and the server's socket has room
    // again. The client reads less than the server queues, so the kernel buffers fill,
    // the server writes part of a frame, its backlog grows, and it passes the limit in a
    // pass whose socket has room for the Logout.
    let mut stream = Vec::new();
    let step = |stream: &mut Vec<u8>| {
        if gate.stopped_pass(Duration::from_millis(10)) {
            read_what_is_there(&p.stream, 128 * 1024, stream);
            gate.let_go();
        }
    };
    gate.set_armed(true);
    // The server reads every request before it gives up on the client, so it closes
    // with no input unread (which would reset the connection): the kernel delivers all
    // the server gave it.
    let writing = std::thread::spawn(move || writer.write_all(&requests).unwrap());
    let deadline = Instant::now() + GATE_WAIT_MAX;
    while stats.frames_in.load(Ordering::Relaxed) < 1 + REQUESTS {
        assert_eq!(stats.slow_consumers.load(Ordering::Relaxed), 0);
        assert!(Instant::now() < deadline, "the server reads every request");
        step(&mut stream);
    }
    writing.join().unwrap();
    while stats.slow_consumers.load(Ordering::Relaxed) == 0 {
        assert!(
            Instant::now() < deadline,
            "the server gives up on the client"
        );
        step(&mut stream);
    }
    gate.set_armed(false);
    // The rest of the stream, to its end.
    p.stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    p.stream.read_to_end(&mut stream).unwrap();
    // Every byte the server sent belongs to a whole frame: sequenced messages with dense
    // seqs from 1 (the LoginAccepted was read at login), then the Logout.
    let mut at = 0;
    let mut last = None;
    let mut frames = 0u64;
    while at < stream.len() {
        let (m, n) = decode_server(&stream[at..]).unwrap_or_else(|e| {
            panic!(
                "frame {frames} at byte {at} of {}: {e} (after {last:?})",
                stream.len()
            )
        });
        if let Some(seq) = m.seq() {
            assert_eq!(seq, frames + 1, "{m:?}");
        }
        at += n;
        frames += 1;
        last = Some(m);
    }
    assert!(frames > 10_000, "{frames} frames");
    assert_eq!(
        last,
        Some(ServerMessage::Logout {
            reason: LogoutReason::SlowConsumer
        })
    );
    assert_eq!(stats.slow_consumers.load(Ordering::Relaxed), 1);
}
