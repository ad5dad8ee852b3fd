//! A Rust client for the binary order-entry protocol (docs/protocol.md).
//!
//! One [`Client`] is one session on one TCP connection. It offers two styles on the same
//! connection:
//!
//! - **Blocking**: [`Client::new_order`], [`Client::cancel`], [`Client::balances`], the
//!   admin helpers... send one request and return every message it caused, up to the
//!   `RequestDone` that ends every processed request's answer (docs/protocol.md 3.3).
//! - **Pipelined**: [`Client::send`] returns the request id at once; [`Client::poll`] /
//!   [`Client::recv`] return server messages as they arrive. Messages that arrive while a
//!   blocking call waits for its own answer (unsolicited fills, answers to pipelined
//!   requests) are kept, in order, for `poll`; so is the part of its own answer already
//!   received when the call fails (a timeout, a disconnect), since a resume does not
//!   replay what was received.
//! - **Event loop**: a caller that multiplexes many clients on one mio `Poll` (the load
//!   generator) registers [`Client::raw_fd`] and, on each readable event, calls
//!   [`Client::read_ready`], which hands over everything the socket holds with one read
//!   fewer than `poll` makes (it trusts the next readiness edge instead of reading until
//!   WouldBlock), and sends heartbeats with [`Client::keepalive`].
//!
//! The socket is non-blocking underneath; waits use `ppoll` with a deadline, so no call
//! blocks longer than its timeout. Heartbeats are sent from inside the client's calls when
//! the connection has been idle for the granted interval: an application that calls
//! nothing for longer than the server's silence timeout (5 s by default) is logged out.
//!
//! Sequencing: every sequenced message must carry the next seq. One already received (a
//! replay that starts early) is skipped; a gap is an error ([`ClientError::SeqGap`]); [`Client::reconnect`] then resumes the session from the
//! first missing seq and the server replays what was lost. Requests sent but not yet
//! known to be processed are kept in a bounded [`Outbox`] and resent, with their ids, by
//! `reconnect` (the server ignores ids it has already processed).
//!
//! Failover: [`Client::connect_any`] takes several addresses (a primary and its standby)
//! and [`Client::failover`] moves a broken client to the next one that answers,
//! resuming the session where the server knows it and starting a new one where it does
//! not (a promoted standby: sessions live in a gateway's memory).
//!
//! Nothing the server sends can make the client panic: malformed frames, unexpected
//! messages and out-of-order seqs are errors.
//!
//! ```no_run
//! use ringex_engine::{OrderRef, Side, TimeInForce};
//! use ringex_tools::client::{Client, ClientOptions, OrderParams, Request};
//!
//! let mut c = Client::connect("127.0.0.1:9100", 1, "demo-secret-1001", ClientOptions::default())?;
//! // Blocking: the accept, the immediate fills and the IOC cancel, or the reject.
//! let r = c.new_order(&OrderParams::limit(1, Side::Buy, 6_000_000, 5).tif(TimeInForce::Ioc))?;
//! println!("filled {} lots, rejected: {:?}", r.filled_qty(), r.rejected());
//! // Pipelined: many requests in flight, reports read as they come.
//! for i in 0..10 {
//!     let order = OrderParams::limit(1, Side::Sell, 6_010_000 + i, 1).client_order_id(100 + i as u64);
//!     c.send(&Request::NewOrder(order))?;
//! }
//! while let Some(msg) = c.poll(std::time::Duration::from_millis(10))? {
//!     println!("{msg:?}");
//! }
//! c.cancel(1, OrderRef::Client(100))?;
//! c.logout()?;
//! # Ok::<(), ringex_tools::client::ClientError>(())
//! ```

mod outbox;
mod reader;
mod request;

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ringex_engine::{
    AccountId, Amount, AssetId, Command, MarketId, MarketSpec, MarketStatus, OrderRef, Price, Qty,
};
use ringex_gateway::protocol::{
    encode_client, login_flags, secret_hash, AdminAck, Balance, ClientMessage, FrameError, Login,
    LoginAccepted, LoginRejectReason, LogoutReason, OpenOrder, OrderRejected, Promoted,
    ServerMessage, FRAME_SIZE_MAX,
};

pub use outbox::Outbox;
pub use reader::FrameReader;
pub use request::{OrderParams, OrderReport, Request, Response};

/// Most socket reads one [`Client::read_ready`] makes (each of 16 KiB or more).
const READS_PER_READY_MAX: usize = 64;
/// Most messages kept unread for `poll` (80 MiB or so): a blocking call that would read
/// more returns an error instead of growing memory without bound.
const INBOX_MAX: usize = 1 << 20;
/// The heartbeat intervals a server may grant (docs/protocol.md 3.2 grants 100-1000 ms;
/// up to a minute is accepted).
const HEARTBEAT_MS_MIN: u32 = 100;
const HEARTBEAT_MS_MAX: u32 = 60_000;

/// What one non-blocking read found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SocketRead {
    /// WouldBlock.
    Nothing,
    /// Some bytes, less than the free space: the socket was emptied.
    Short,
    /// As many bytes as there was space for: more may be waiting.
    Filled,
}

/// Where [`Client::failover`] picked up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failover {
    /// The session resumed at `addr`: missed messages are replayed (read them with
    /// `poll`) and unanswered requests were resent with their ids.
    Resumed {
        addr: SocketAddr,
        accepted: LoginAccepted,
    },
    /// The session is not known at `addr` (another node): a new session, whose seqs
    /// start at 1. `unanswered`: requests sent in the old session with no answer; they
    /// may or may not have been processed, and were not resent.
    NewSession {
        addr: SocketAddr,
        accepted: LoginAccepted,
        unanswered: Vec<ClientMessage>,
    },
}

/// Where to pick a session up after a disconnect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resume {
    pub session_id: u64,
    /// The first seq wanted: last seq received + 1.
    pub from_seq: u64,
}

#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Requested heartbeat interval; 0 = the server default (1000 ms).
    pub heartbeat_ms: u32,
    pub cancel_on_disconnect: bool,
    /// Resume this session instead of starting a new one.
    pub resume: Option<Resume>,
    /// Bound on connect, login, and every blocking call.
    pub timeout: Duration,
    /// The server is considered gone after this much silence (it heartbeats every
    /// granted interval); never less than 3 intervals.
    pub silence_timeout: Duration,
    /// Most requests kept for resending while their answers are outstanding.
    pub outbox_capacity: usize,
    /// [`Client::failover`]: passes over the address list before giving up.
    pub failover_rounds: u32,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            heartbeat_ms: 0,
            cancel_on_disconnect: false,
            resume: None,
            timeout: Duration::from_secs(5),
            silence_timeout: Duration::from_secs(5),
            outbox_capacity: 65_536,
            failover_rounds: 3,
        }
    }
}

#[derive(Debug)]
pub enum ClientError {
    Io(io::Error),
    /// The server sent bytes that do not decode. The connection is unusable.
    Frame(FrameError),
    LoginRejected(LoginRejectReason),
    /// The server ended the session (also the answer to our own Logout).
    LoggedOut(LogoutReason),
    /// The server closed the connection without a Logout.
    Closed,
    /// A call was made on a connection that has failed; `reconnect` first.
    Disconnected,
    Timeout,
    /// A sequenced message ahead of the next expected one: messages were lost. Reconnect
    /// to replay them.
    SeqGap {
        expected: u64,
        got: u64,
    },
    /// The server sent something the protocol does not allow here.
    Protocol(String),
    /// A blocking query or admin request was refused.
    Rejected(OrderRejected),
    /// Too many requests in flight without an answer ([`ClientOptions::outbox_capacity`]).
    OutboxFull,
    /// The request cannot be encoded (an `Admin` request with a non-admin command).
    InvalidRequest,
    /// Nothing received for the silence timeout.
    ServerSilent,
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Io(e) => write!(f, "i/o error: {e}"),
            ClientError::Frame(e) => write!(f, "malformed frame from the server: {e}"),
            ClientError::LoginRejected(r) => write!(f, "login rejected: {r:?}"),
            ClientError::LoggedOut(r) => write!(f, "logged out by the server: {r:?}"),
            ClientError::Closed => write!(f, "connection closed by the server"),
            ClientError::Disconnected => write!(f, "not connected (reconnect first)"),
            ClientError::Timeout => write!(f, "timed out"),
            ClientError::SeqGap { expected, got } => {
                write!(f, "sequence gap: expected seq {expected}, got {got}")
            }
            ClientError::Protocol(s) => write!(f, "protocol error: {s}"),
            ClientError::Rejected(r) => {
                write!(f, "request {} rejected: {:?}", r.request_id, r.reason)
            }
            ClientError::OutboxFull => write!(f, "too many unanswered requests"),
            ClientError::InvalidRequest => write!(f, "invalid request"),
            ClientError::ServerSilent => write!(f, "the server went silent"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        ClientError::Io(e)
    }
}

pub type Result<T> = std::result::Result<T, ClientError>;

/// Login nonces: the wall clock in ns, but strictly increasing within the process so two
/// logins of one key in the same nanosecond never share a nonce.
fn next_nonce(now_ns: u64) -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let mut prev = LAST.load(Ordering::Relaxed);
    loop {
        let n = now_ns.max(prev + 1);
        match LAST.compare_exchange_weak(prev, n, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return n,
            Err(p) => prev = p,
        }
    }
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Waits until `fd` is ready for `events` or `timeout` passes. `Ok(false)` on timeout.
fn wait_fd(fd: RawFd, events: libc::c_short, timeout: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: one valid pollfd, a valid timespec, no signal mask.
    let r = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(e);
    }
    Ok(r > 0)
}

/// A logged-in session. See the module documentation.
pub struct Client {
    addr: SocketAddr,
    /// Every address this client may fail over between (`addr` among them), in order.
    addrs: Vec<SocketAddr>,
    key_id: u64,
    secret_hash: [u8; 32],
    options: ClientOptions,
    stream: TcpStream,
    reader: FrameReader,
    /// Encoded bytes not yet written.
    wbuf: Vec<u8>,
    wpos: usize,
    login: LoginAccepted,
    heartbeat: Duration,
    silence: Duration,
    /// The seq the next sequenced message must carry.
    next_seq: u64,
    next_request_id: u64,
    outbox: Outbox,
    /// Messages read during blocking calls that belong to nobody waiting: for `poll`.
    inbox: VecDeque<ServerMessage>,
    last_sent: Instant,
    last_received: Instant,
    broken: bool,
    /// LoginAccepted received on this connection: heartbeats may be sent.
    logged_in: bool,
}

impl Client {
    /// Connects, logs in (new session, or `options.resume`) and waits for LoginAccepted.
    pub fn connect<A: ToSocketAddrs>(
        addr: A,
        key_id: u64,
        secret: &str,
        options: ClientOptions,
    ) -> Result<Client> {
        let addr = addr
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address"))?;
        let stream = Self::open(addr, options.timeout)?;
        let now = Instant::now();
        let outbox = Outbox::new(options.outbox_capacity);
        let mut client = Client {
            addr,
            addrs: vec![addr],
            key_id,
            secret_hash: secret_hash(secret.as_bytes()),
            stream,
            reader: FrameReader::new(),
            wbuf: Vec::with_capacity(64 * 1024),
            wpos: 0,
            login: LoginAccepted {
                session_id: 0,
                next_seq: 1,
                last_request_id: 0,
                account: 0,
                heartbeat_ms: 1000,
                flags: 0,
            },
            heartbeat: Duration::from_secs(1),
            silence: options.silence_timeout,
            next_seq: 1,
            next_request_id: 1,
            outbox,
            inbox: VecDeque::new(),
            last_sent: now,
            last_received: now,
            broken: false,
            logged_in: false,
            options,
        };
        let resume = client.options.resume;
        client.login(resume)?;
        Ok(client)
    }

    fn open(addr: SocketAddr, timeout: Duration) -> Result<TcpStream> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
        stream.set_nonblocking(true)?;
        Ok(stream)
    }

    fn login(&mut self, resume: Option<Resume>) -> Result<LoginAccepted> {
        let ts = unix_ns();
        let mut login = Login {
            api_key_id: self.key_id,
            timestamp_ns: ts,
            nonce: next_nonce(ts),
            signature: [0; 32],
            resume_session: resume.map_or(0, |r| r.session_id),
            resume_from_seq: resume.map_or(0, |r| r.from_seq),
            heartbeat_ms: self.options.heartbeat_ms,
            flags: if self.options.cancel_on_disconnect {
                login_flags::CANCEL_ON_DISCONNECT
            } else {
                0
            },
        };
        login.sign(&self.secret_hash);
        // Unusable until a valid LoginAccepted: a login that times out or fails leaves
        // the client broken, so nothing is sent on a connection that is not logged in.
        self.broken = true;
        self.logged_in = false;
        self.queue(&ClientMessage::Login(login));
        let deadline = Instant::now() + self.options.timeout;
        self.flush_until(deadline)?;
        let first = loop {
            if let Some(m) = self.decode_raw()? {
                break m;
            }
            self.fill_until(deadline)?;
        };
        // Every early return below leaves the client broken (set above).
        let accepted = match first {
            ServerMessage::LoginAccepted(a) => a,
            ServerMessage::LoginRejected { reason } => {
                return Err(ClientError::LoginRejected(reason));
            }
            ServerMessage::Logout { reason } => return Err(ClientError::LoggedOut(reason)),
            other => {
                return Err(ClientError::Protocol(format!(
                    "expected LoginAccepted, got {other:?}"
                )));
            }
        };
        let expected_seq = resume.map_or(1, |r| r.from_seq);
        let resumed = accepted.flags & login_flags::RESUMED != 0;
        if accepted.next_seq != expected_seq || resumed != resume.is_some() {
            return Err(ClientError::Protocol(format!(
                "LoginAccepted next_seq {} (flags {:#x}), expected {expected_seq}",
                accepted.next_seq, accepted.flags
            )));
        }
        // A new session has processed nothing; a resumed one at most what we sent. Any
        // other value would drop unanswered requests from the outbox without resending.
        let request_id_max = if resume.is_some() {
            self.next_request_id - 1
        } else {
            0
        };
        if accepted.last_request_id > request_id_max {
            return Err(ClientError::Protocol(format!(
                "LoginAccepted last_request_id {}, but requests were sent up to {request_id_max}",
                accepted.last_request_id
            )));
        }
        // The protocol grants 100-1000 ms; 0 would make the client heartbeat nonstop.
        if !(HEARTBEAT_MS_MIN..=HEARTBEAT_MS_MAX).contains(&accepted.heartbeat_ms) {
            return Err(ClientError::Protocol(format!(
                "LoginAccepted heartbeat {} ms",
                accepted.heartbeat_ms
            )));
        }
        self.broken = false;
        self.login = accepted;
        self.logged_in = true;
        self.next_seq = accepted.next_seq;
        self.heartbeat = Duration::from_millis(u64::from(accepted.heartbeat_ms));
        self.silence = self.options.silence_timeout.max(self.heartbeat * 3);
        self.next_request_id = self.next_request_id.max(accepted.last_request_id + 1);
        // Resend what the session has not processed, with the original ids.
        let again = self.outbox.unprocessed(accepted.last_request_id);
        for m in &again {
            self.queue(m);
        }
        self.flush_until(deadline)?;
        Ok(accepted)
    }

    /// Opens a new connection and resumes this session from the first seq not yet
    /// received; the server replays the missed messages (returned by `poll`) and the
    /// requests it had not processed are resent. On `LoginRejected(ResumeImpossible)`
    /// the session is gone: connect anew and rebuild state with the queries.
    ///
    /// `AlreadyLoggedIn` (the server has not yet seen the old connection close) is
    /// retried for up to the client's timeout.
    pub fn reconnect(&mut self) -> Result<LoginAccepted> {
        let addr = self.addr;
        self.resume_at(addr)
    }

    /// Opens a connection to `addr` and resumes the session there, retrying
    /// `AlreadyLoggedIn` for up to the client's timeout (see [`Client::reconnect`]).
    fn resume_at(&mut self, addr: SocketAddr) -> Result<LoginAccepted> {
        let give_up = Instant::now() + self.options.timeout;
        loop {
            self.attach(addr)?;
            let resume = Resume {
                session_id: self.login.session_id,
                from_seq: self.next_seq,
            };
            match self.login(Some(resume)) {
                Err(ClientError::LoginRejected(LoginRejectReason::AlreadyLoggedIn))
                    if Instant::now() < give_up =>
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                r => return r,
            }
        }
    }

    /// A fresh connection to `addr`, not logged in yet.
    fn attach(&mut self, addr: SocketAddr) -> Result<()> {
        self.broken = true;
        self.logged_in = false;
        let stream = Self::open(addr, self.options.timeout)?;
        self.addr = addr;
        self.stream = stream;
        self.reader.clear();
        self.wbuf.clear();
        self.wpos = 0;
        let now = Instant::now();
        self.last_sent = now;
        self.last_received = now;
        Ok(())
    }

    /// Connects to the first of `addrs` that takes the login (in order, one pass), and
    /// remembers them all for [`Client::failover`].
    pub fn connect_any(
        addrs: &[SocketAddr],
        key_id: u64,
        secret: &str,
        options: ClientOptions,
    ) -> Result<Client> {
        let mut last = ClientError::Io(io::Error::new(io::ErrorKind::InvalidInput, "no address"));
        for &addr in addrs {
            match Client::connect(addr, key_id, secret, options.clone()) {
                Ok(mut c) => {
                    c.addrs = addrs.to_vec();
                    return Ok(c);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The addresses [`Client::failover`] tries, in order.
    pub fn addresses(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The address of the current (or last) connection.
    pub fn address(&self) -> SocketAddr {
        self.addr
    }

    /// After the connection broke: tries the addresses in turn, starting with the
    /// current one, for at most [`ClientOptions::failover_rounds`] passes (each connect
    /// and login bounded by the client's timeout). Where the session is known (the same
    /// server, back), it resumes as [`Client::reconnect`] does. Where it is not
    /// (`ResumeImpossible`: sessions live in a gateway's memory, so a promoted standby
    /// never knows them), it logs in a new session there and hands back the requests
    /// that were never answered: whether the old server processed them is unknown here,
    /// so they are not resent; query open orders and balances to find out.
    pub fn failover(&mut self) -> Result<Failover> {
        let start = self.addrs.iter().position(|a| *a == self.addr).unwrap_or(0);
        let n = self.addrs.len().max(1);
        let mut last = ClientError::Disconnected;
        for round in 0..self.options.failover_rounds.max(1) {
            if round > 0 {
                // A pause between passes: a standby being promoted opens its listener
                // within a second or so.
                std::thread::sleep(Duration::from_millis(100));
            }
            for i in 0..n {
                let Some(&addr) = self.addrs.get((start + i) % n) else {
                    continue;
                };
                match self.resume_at(addr) {
                    Ok(accepted) => return Ok(Failover::Resumed { addr, accepted }),
                    Err(ClientError::LoginRejected(LoginRejectReason::ResumeImpossible)) => {
                        match self.new_session_at(addr) {
                            Ok(f) => return Ok(f),
                            Err(e) => last = e,
                        }
                    }
                    Err(e) => last = e,
                }
            }
        }
        Err(last)
    }

    /// A new session at `addr`, the unanswered requests of the old one handed back.
    fn new_session_at(&mut self, addr: SocketAddr) -> Result<Failover> {
        let unanswered = self.outbox.unprocessed(0);
        if let Some(last) = unanswered.last().and_then(|m| m.request_id()) {
            self.outbox.answered(last);
        }
        self.attach(addr)?;
        let accepted = self.login(None)?;
        Ok(Failover::NewSession {
            addr,
            accepted,
            unanswered,
        })
    }

    /// Drops the connection without a Logout, as a network failure would (the session
    /// stays resumable on the server; with cancel-on-disconnect its orders are
    /// cancelled). Unsent requests stay in the outbox for [`Client::reconnect`].
    pub fn disconnect(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        self.broken = true;
        self.logged_in = false;
    }

    // ---------------------------------------------------------------- accessors

    /// The LoginAccepted of the current connection.
    pub fn login_accepted(&self) -> &LoginAccepted {
        &self.login
    }

    pub fn session_id(&self) -> u64 {
        self.login.session_id
    }

    pub fn account(&self) -> AccountId {
        self.login.account
    }

    /// The heartbeat interval the server granted.
    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat
    }

    /// The last seq received (0 if none).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Where to resume this session from, for another process or a later `connect`.
    pub fn resume_point(&self) -> Resume {
        Resume {
            session_id: self.login.session_id,
            from_seq: self.next_seq,
        }
    }

    /// The id the next request will get.
    pub fn next_request_id(&self) -> u64 {
        self.next_request_id
    }

    /// Requests sent whose answer has not arrived yet (kept for resending).
    pub fn in_flight(&self) -> usize {
        self.outbox.len()
    }

    /// Whether the connection failed (a call returned a fatal error).
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// The socket, for callers that multiplex many clients on one poller. The client's
    /// socket is non-blocking; use [`Client::poll`] with a zero timeout and
    /// [`Client::flush`] when it is ready.
    pub fn raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    // ---------------------------------------------------------------- writing

    fn queue(&mut self, msg: &ClientMessage) {
        let mut buf = [0u8; FRAME_SIZE_MAX];
        let len = encode_client(msg, &mut buf);
        self.wbuf.extend_from_slice(&buf[..len]);
    }

    /// Writes what it can without blocking; `Ok(true)` when nothing is left to write.
    pub fn flush(&mut self) -> Result<bool> {
        if self.broken {
            return Err(ClientError::Disconnected);
        }
        self.write_some()
    }

    fn write_some(&mut self) -> Result<bool> {
        while self.wpos < self.wbuf.len() {
            match self.stream.write(&self.wbuf[self.wpos..]) {
                Ok(0) => return Err(self.fail(ClientError::Closed)),
                Ok(n) => {
                    self.wpos += n;
                    self.last_sent = Instant::now();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.fail(ClientError::Io(e))),
            }
        }
        self.wbuf.clear();
        self.wpos = 0;
        Ok(true)
    }

    fn flush_until(&mut self, deadline: Instant) -> Result<()> {
        while !self.write_some()? {
            let now = Instant::now();
            if now >= deadline {
                return Err(ClientError::Timeout);
            }
            wait_fd(self.raw_fd(), libc::POLLOUT, deadline - now)?;
        }
        Ok(())
    }

    /// Bytes encoded and not yet written (pipelined senders that use [`Client::queue_request`]).
    pub fn pending_write(&self) -> usize {
        self.wbuf.len() - self.wpos
    }

    /// Numbers and encodes a request without writing it: call [`Client::flush`] after a
    /// batch, so that many requests go out in one write. Returns its request id.
    pub fn queue_request(&mut self, req: &Request) -> Result<u64> {
        if self.broken {
            return Err(ClientError::Disconnected);
        }
        if !req.is_valid() {
            return Err(ClientError::InvalidRequest);
        }
        if self.outbox.is_full() {
            return Err(ClientError::OutboxFull);
        }
        let id = self.next_request_id;
        self.next_request_id += 1;
        let msg = req.to_message(id);
        self.outbox.push(id, msg);
        self.queue(&msg);
        Ok(id)
    }

    /// Sends a request without waiting for its answer and returns its request id. If the
    /// write fails the request stays in the outbox and `reconnect` resends it.
    pub fn send(&mut self, req: &Request) -> Result<u64> {
        let id = self.queue_request(req)?;
        let deadline = Instant::now() + self.options.timeout;
        self.flush_until(deadline)?;
        Ok(id)
    }

    /// Sends a heartbeat if nothing was sent for the heartbeat interval, and checks that
    /// the server is not silent. The client's other calls do this too; a pipelined
    /// caller that multiplexes sockets calls it from time to time.
    pub fn keepalive(&mut self) -> Result<()> {
        if self.broken {
            return Err(ClientError::Disconnected);
        }
        let now = Instant::now();
        if now.duration_since(self.last_received) >= self.silence {
            return Err(self.fail(ClientError::ServerSilent));
        }
        if self.logged_in
            && self.pending_write() == 0
            && now.duration_since(self.last_sent) >= self.heartbeat
        {
            self.queue(&ClientMessage::Heartbeat);
            self.last_sent = now;
        }
        self.write_some()?;
        Ok(())
    }

    // ---------------------------------------------------------------- reading

    fn fail(&mut self, e: ClientError) -> ClientError {
        self.broken = true;
        e
    }

    /// One non-blocking read into the frame buffer. `Ok(false)` if nothing was there.
    fn read_once(&mut self) -> Result<bool> {
        Ok(self.read_once_filled()? != SocketRead::Nothing)
    }

    /// One non-blocking read into the frame buffer, and how much it found.
    fn read_once_filled(&mut self) -> Result<SocketRead> {
        loop {
            match self.reader.read_from_filled(&mut self.stream) {
                Ok((0, _)) => return Err(self.fail(ClientError::Closed)),
                Ok((_, filled)) => {
                    self.last_received = Instant::now();
                    return Ok(if filled {
                        SocketRead::Filled
                    } else {
                        SocketRead::Short
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(SocketRead::Nothing),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.fail(ClientError::Io(e))),
            }
        }
    }

    /// For callers driven by edge-triggered readiness (a mio `Poll`): hands `f` every
    /// message the socket holds now (heartbeats excluded), then returns how many. It
    /// reads until a read comes back short: that read emptied the socket, and bytes
    /// arriving later raise a new readiness edge, so the read that would only say
    /// WouldBlock is not made (a system call saved per wake-up). `peer_closed`: the
    /// event said the server closed or failed (`is_read_closed`, `is_error`); then it
    /// reads on to the end of the stream, which raises no further edge, and returns the
    /// error. Reads at most `READS_PER_READY_MAX` times: `Ok((n, true))` then says bytes
    /// may be left, and no new edge will come for them, so call again.
    pub fn read_ready(
        &mut self,
        peer_closed: bool,
        f: &mut impl FnMut(ServerMessage),
    ) -> Result<(usize, bool)> {
        let mut n = 0;
        for _ in 0..READS_PER_READY_MAX {
            self.hand_over_received(f, &mut n)?;
            let read = self.read_once_filled()?;
            if read == SocketRead::Nothing || (read == SocketRead::Short && !peer_closed) {
                self.hand_over_received(f, &mut n)?;
                return Ok((n, false));
            }
        }
        Ok((n, true))
    }

    /// Hands `f` what is already received: the inbox, then the complete frames buffered;
    /// counts them in `n`.
    fn hand_over_received(
        &mut self,
        f: &mut impl FnMut(ServerMessage),
        n: &mut usize,
    ) -> Result<()> {
        while let Some(m) = self.inbox.pop_front() {
            f(m);
            *n += 1;
        }
        while let Some(m) = self.next_buffered()? {
            f(m);
            *n += 1;
        }
        Ok(())
    }

    /// Reads until some bytes arrive or `deadline` passes (then `Timeout`), sending
    /// heartbeats while waiting.
    fn fill_until(&mut self, deadline: Instant) -> Result<()> {
        loop {
            if self.read_once()? {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ClientError::Timeout);
            }
            // While logging in the client is not usable yet: nothing to keep alive.
            if self.logged_in {
                self.keepalive()?;
            }
            let wake = if self.logged_in {
                let hb_due = self.last_sent + self.heartbeat;
                deadline.min(hb_due.max(now + Duration::from_micros(50)))
            } else {
                deadline
            };
            wait_fd(self.raw_fd(), libc::POLLIN, wake - now)?;
        }
    }

    /// Decodes one buffered frame, without session checks.
    fn decode_raw(&mut self) -> Result<Option<ServerMessage>> {
        match self.reader.next_message() {
            Ok(m) => Ok(m),
            Err(e) => Err(self.fail(ClientError::Frame(e))),
        }
    }

    /// The next buffered message after the session checks: heartbeats are absorbed,
    /// Logout and out-of-order seqs are errors.
    fn next_buffered(&mut self) -> Result<Option<ServerMessage>> {
        if self.broken {
            return Err(ClientError::Disconnected);
        }
        while let Some(msg) = self.decode_raw()? {
            match msg {
                ServerMessage::Heartbeat => continue,
                ServerMessage::Logout { reason } => {
                    return Err(self.fail(ClientError::LoggedOut(reason)));
                }
                ServerMessage::LoginAccepted(_) | ServerMessage::LoginRejected { .. } => {
                    return Err(self.fail(ClientError::Protocol(format!("{msg:?} after login"))));
                }
                _ => {}
            }
            let (Some(seq), Some(request_id)) = (msg.seq(), msg.request_id()) else {
                unreachable!("every other message is sequenced")
            };
            if seq < self.next_seq {
                // Already received (a replay that starts early): not a loss, skipped.
                continue;
            }
            if seq > self.next_seq {
                return Err(self.fail(ClientError::SeqGap {
                    expected: self.next_seq,
                    got: seq,
                }));
            }
            if request_id >= self.next_request_id {
                return Err(self.fail(ClientError::Protocol(format!(
                    "answer to request {request_id}, which was never sent"
                ))));
            }
            self.next_seq += 1;
            if request_id != 0 {
                self.outbox.answered(request_id);
            }
            return Ok(Some(msg));
        }
        Ok(None)
    }

    /// The next message read from the socket (not from the inbox), waiting until
    /// `deadline`. `Ok(None)` on timeout.
    fn read_message(&mut self, deadline: Instant) -> Result<Option<ServerMessage>> {
        loop {
            if let Some(m) = self.next_buffered()? {
                return Ok(Some(m));
            }
            // Bytes that keep trickling in without completing a frame must not hold the
            // caller past its deadline.
            if Instant::now() >= deadline {
                return Ok(None);
            }
            match self.fill_until(deadline) {
                Ok(()) => {}
                Err(ClientError::Timeout) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    /// The next server message (heartbeats excluded), waiting at most `timeout`;
    /// `Ok(None)` if none came. With a zero timeout it never blocks.
    pub fn poll(&mut self, timeout: Duration) -> Result<Option<ServerMessage>> {
        if let Some(m) = self.inbox.pop_front() {
            return Ok(Some(m));
        }
        if timeout.is_zero() {
            // `None` only once the socket said WouldBlock, so that callers driven by
            // edge-triggered readiness never miss data.
            loop {
                if let Some(m) = self.next_buffered()? {
                    return Ok(Some(m));
                }
                if !self.read_once()? {
                    break;
                }
            }
            self.keepalive()?;
            return Ok(None);
        }
        self.read_message(Instant::now() + timeout)
    }

    /// The next server message, waiting up to the client's timeout (then `Timeout`).
    pub fn recv(&mut self) -> Result<ServerMessage> {
        self.poll(self.options.timeout)?.ok_or(ClientError::Timeout)
    }

    // ---------------------------------------------------------------- blocking API

    /// Sends a request and returns every message it caused. Other messages read
    /// meanwhile are kept for [`Client::poll`].
    pub fn request(&mut self, req: &Request) -> Result<Response> {
        let request_id = self.send(req)?;
        self.wait_response(request_id)
    }

    fn wait_response(&mut self, request_id: u64) -> Result<Response> {
        let mut response = Response {
            request_id,
            messages: Vec::new(),
        };
        // Everything read during the call, in order: on success the others go to the
        // inbox; on failure all of it does, so that no report is lost (its seq is counted
        // already, and a resume would not replay it).
        let mut arrived: Vec<ServerMessage> = Vec::new();
        let deadline = Instant::now() + self.options.timeout;
        let outcome = loop {
            if Instant::now() >= deadline {
                break Err(ClientError::Timeout);
            }
            if self.inbox.len() + arrived.len() >= INBOX_MAX {
                break Err(ClientError::Protocol(format!(
                    "{INBOX_MAX} messages arrived during one blocking call; poll them"
                )));
            }
            let msg = match self.read_message(deadline) {
                Ok(Some(m)) => m,
                Ok(None) => break Err(ClientError::Timeout),
                Err(e) => break Err(e),
            };
            arrived.push(msg);
            if msg.request_id() != Some(request_id) {
                continue;
            }
            if let ServerMessage::RequestDone(done) = msg {
                if done.count as usize != response.messages.len() {
                    let why = format!(
                        "RequestDone counts {} messages for request {request_id}, {} arrived",
                        done.count,
                        response.messages.len()
                    );
                    break Err(self.fail(ClientError::Protocol(why)));
                }
                break Ok(());
            }
            response.messages.push(msg);
        };
        match outcome {
            Ok(()) => {
                let others = arrived
                    .into_iter()
                    .filter(|m| m.request_id() != Some(request_id));
                self.inbox.extend(others);
                Ok(response)
            }
            Err(e) => {
                self.inbox.extend(arrived);
                Err(e)
            }
        }
    }

    /// Like [`Client::request`], but a rejection is an error.
    fn request_ok(&mut self, req: &Request) -> Result<Response> {
        let r = self.request(req)?;
        match r.rejected() {
            Some(rej) => Err(ClientError::Rejected(*rej)),
            None => Ok(r),
        }
    }

    /// Places an order and returns its outcome: OrderAccepted and the immediate fills
    /// and cancels, or OrderRejected (check [`Response::rejected`]).
    pub fn new_order(&mut self, order: &OrderParams) -> Result<OrderReport> {
        self.request(&Request::NewOrder(*order))
    }

    pub fn cancel(&mut self, market: MarketId, order: OrderRef) -> Result<Response> {
        self.request(&Request::Cancel { market, order })
    }

    pub fn replace(
        &mut self,
        market: MarketId,
        order: OrderRef,
        price: Price,
        qty: Qty,
    ) -> Result<Response> {
        self.request(&Request::Replace {
            market,
            order,
            price,
            qty,
        })
    }

    /// Cancels every open order of the account in `market` (0 = all markets); the
    /// response holds the `Cancelled` reports and `MassCancelDone`.
    pub fn mass_cancel(&mut self, market: MarketId) -> Result<Response> {
        self.request(&Request::MassCancel { market })
    }

    pub fn balances(&mut self) -> Result<Vec<Balance>> {
        Ok(self.request_ok(&Request::BalanceQuery)?.balances())
    }

    /// Resting orders of the account in `market` (0 = all markets).
    pub fn open_orders(&mut self, market: MarketId) -> Result<Vec<OpenOrder>> {
        Ok(self
            .request_ok(&Request::OpenOrdersQuery { market })?
            .open_orders())
    }

    /// Sends an admin command and returns its AdminAck; a refusal is
    /// [`ClientError::Rejected`]. Admin listener and admin key only.
    pub fn admin(&mut self, command: Command) -> Result<AdminAck> {
        let r = self.request_ok(&Request::Admin(command))?;
        r.admin_ack()
            .copied()
            .ok_or_else(|| ClientError::Protocol(format!("no AdminAck in {r:?}")))
    }

    /// Makes the standby this client is logged in to (admin listener, admin key) the
    /// primary: returns once its epoch record is durable. A node that is not a standby,
    /// or whose promotion failed, refuses ([`ClientError::Rejected`]).
    pub fn promote(&mut self) -> Result<Promoted> {
        let r = self.request_ok(&Request::Promote)?;
        r.promoted()
            .copied()
            .ok_or_else(|| ClientError::Protocol(format!("no Promoted in {r:?}")))
    }

    pub fn create_account(&mut self, account: AccountId) -> Result<AdminAck> {
        self.admin(Command::CreateAccount { account })
    }

    /// Idempotent by `external_ref` (`AdminAck.duplicate` when already applied).
    pub fn deposit(
        &mut self,
        account: AccountId,
        asset: AssetId,
        amount: Amount,
        external_ref: u64,
    ) -> Result<AdminAck> {
        self.admin(Command::Deposit {
            account,
            asset,
            amount,
            external_ref,
        })
    }

    pub fn withdraw(
        &mut self,
        account: AccountId,
        asset: AssetId,
        amount: Amount,
        external_ref: u64,
    ) -> Result<AdminAck> {
        self.admin(Command::Withdraw {
            account,
            asset,
            amount,
            external_ref,
        })
    }

    /// Registers an API key; only `SHA-256(secret)` is sent. `permissions`:
    /// `ringex_gateway::protocol::permission` bits.
    pub fn add_api_key(
        &mut self,
        account: AccountId,
        key_id: u64,
        secret: &str,
        permissions: u32,
    ) -> Result<AdminAck> {
        self.admin(Command::AddApiKey {
            account,
            key_id,
            secret_hash: secret_hash(secret.as_bytes()),
            permissions,
        })
    }

    pub fn revoke_api_key(&mut self, key_id: u64) -> Result<AdminAck> {
        self.admin(Command::RevokeApiKey { key_id })
    }

    pub fn create_asset(&mut self, asset: AssetId, symbol: &str, decimals: u8) -> Result<AdminAck> {
        let symbol = ringex_engine::Symbol::new(symbol).ok_or(ClientError::InvalidRequest)?;
        self.admin(Command::CreateAsset {
            asset,
            symbol,
            decimals,
        })
    }

    pub fn create_market(&mut self, spec: MarketSpec) -> Result<AdminAck> {
        self.admin(Command::CreateMarket(spec))
    }

    pub fn set_market_status(
        &mut self,
        market: MarketId,
        status: MarketStatus,
        cancel_resting: bool,
    ) -> Result<AdminAck> {
        self.admin(Command::SetMarketStatus {
            market,
            status,
            cancel_resting,
        })
    }

    pub fn suspend_account(&mut self, account: AccountId) -> Result<AdminAck> {
        self.admin(Command::SuspendAccount { account })
    }

    pub fn resume_account(&mut self, account: AccountId) -> Result<AdminAck> {
        self.admin(Command::ResumeAccount { account })
    }

    /// Ends the session: sends Logout and waits for the server's `Logout{Requested}`.
    /// Messages that arrive before it stay available to [`Client::poll`].
    pub fn logout(&mut self) -> Result<()> {
        if self.broken {
            return Err(ClientError::Disconnected);
        }
        self.queue(&ClientMessage::Logout);
        let deadline = Instant::now() + self.options.timeout;
        self.flush_until(deadline)?;
        loop {
            if Instant::now() >= deadline || self.inbox.len() >= INBOX_MAX {
                return Err(ClientError::Timeout);
            }
            match self.read_message(deadline) {
                Ok(Some(m)) => self.inbox.push_back(m),
                Ok(None) => return Err(ClientError::Timeout),
                Err(ClientError::LoggedOut(LogoutReason::Requested)) => return Ok(()),
                Err(ClientError::Closed) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.addr)
            .field("key_id", &self.key_id)
            .field("session_id", &self.login.session_id)
            .field("account", &self.login.account)
            .field("next_seq", &self.next_seq)
            .field("next_request_id", &self.next_request_id)
            .field("in_flight", &self.outbox.len())
            .field("broken", &self.broken)
            .finish()
    }
}

#[cfg(test)]
mod tests;
