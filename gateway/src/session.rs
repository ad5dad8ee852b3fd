//! The session core: logins, sessions, permissions, per-key rate limits and request
//! bookkeeping, without sockets or clocks (sans-I/O, as quinn-proto is).
//!
//! Both front-ends drive one each, on their own threads: the binary gateway
//! (`server`) and the retail WebSocket edge (`retail`). A front-end feeds it decoded
//! requests ([`SessionCore::handle`]), what the exchange answered
//! ([`SessionCore::deliver`]) and the time ([`Now`]); the core submits commands and
//! queries through a [`Backend`] and says what should happen to connections as
//! [`Action`]s, which the front-end takes with [`SessionCore::pop_action`] and carries
//! out in order (queue a message, close, count a refusal). Tests drive it in memory with
//! an [`crate::backend::InlineBackend`].
//!
//! Messages are the binary protocol's [`ServerMessage`] values: the binary front-end
//! encodes them as frames, the WebSocket front-end renders them as JSON. A connection is
//! a transport; a session is the sequenced stream of one login, and may outlive its
//! connection (binary resume).

use std::collections::{HashMap, VecDeque};

use rustc_hash::FxHashMap;

use ringex_engine::{
    AccountId, CommandKind, Event, MarketId, OrderId, OrderRef, Output, Query, QueryReply,
    RejectReason,
};

use crate::backend::{Backend, BackendError, Delivery, Promotion};
use crate::limits::{NoncesSeen, TokenBucket};
use crate::protocol::{
    encode_server, login_flags, permission, template, AdminAck, Balance, BalanceEnd, Cancelled,
    ClientMessage, Filled, Liquidity, Login, LoginAccepted, LoginRejectReason, LogoutReason,
    MassCancelDone, OpenOrder, OpenOrdersEnd, OrderAccepted, OrderRejected, Promoted, Replaced,
    RequestDone, ServerMessage, SystemEvent, FRAME_SIZE_MAX,
};
use crate::refusals::{Detail, Listener, Refusal};

/// A front-end's name for one of its connections.
pub type ConnId = usize;

/// The largest server frame (Filled, 88 bytes) fits: encode buffers need no more, and
/// zeroing 512 bytes per message showed up in profiles.
pub const SERVER_FRAME_MAX: usize = 128;
const _: () = assert!(SERVER_FRAME_MAX <= FRAME_SIZE_MAX);

/// Granted heartbeat interval bounds (docs/protocol.md §3.2).
const HEARTBEAT_MS_MIN: u32 = 100;
const HEARTBEAT_MS_MAX: u32 = 1000;

/// Tag layout: the top byte says what a submission was for, the next one which
/// front-end made it, the rest names it (a session or a connection).
const PURPOSE_SHIFT: u32 = 56;
const FRONT_SHIFT: u32 = 48;
const ID_MASK: u64 = (1 << FRONT_SHIFT) - 1;
pub(crate) const PURPOSE_REQUEST: u64 = 1;
pub(crate) const PURPOSE_LOGIN: u64 = 2;
const PURPOSE_WARM: u64 = 3;
const PURPOSE_INTERNAL: u64 = 4;
/// The barrier query of a stop (see [`SessionCore::begin_stop`]).
const PURPOSE_STOP: u64 = 5;
/// Queries of a front-end's own (the retail edge's depth and balance lookups): the
/// core leaves their answers to the front-end.
pub const PURPOSE_FRONT: u64 = 6;

/// The binary gateway's tags carry front 0, so they read as before the retail edge.
pub const FRONT_BINARY: u8 = 0;
pub const FRONT_RETAIL: u8 = 1;

/// A submission's tag.
pub fn tag(front: u8, purpose: u64, id: u64) -> u64 {
    assert!(id <= ID_MASK, "tag id {id} too large");
    assert!(purpose < 256);
    purpose << PURPOSE_SHIFT | u64::from(front) << FRONT_SHIFT | id
}

/// The front-end that made the submission with this tag.
pub fn tag_front(tag: u64) -> u8 {
    (tag >> FRONT_SHIFT) as u8
}

/// The purpose of the submission with this tag.
pub fn tag_purpose(tag: u64) -> u64 {
    tag >> PURPOSE_SHIFT
}

/// The id (session or connection) the tag names.
pub fn tag_id(tag: u64) -> u64 {
    tag & ID_MASK
}

/// The time, from the caller: monotonic for timers and limits, wall for the freshness
/// of login timestamps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    pub mono_ns: u64,
    pub wall_ns: u64,
}

#[derive(Clone, Debug)]
pub struct CoreConfig {
    /// Which front-end this core serves (goes into its tags).
    pub front: u8,
    pub heartbeat_ms: u32,
    pub idle_timeout_ms: u32,
    /// Login timestamps further than this from the wall clock are refused, and nonces
    /// are remembered twice this long.
    pub login_freshness_ms: u32,
    /// Sequenced messages kept per session for resume; 0 keeps none (the session ends
    /// with its connection).
    pub resume_window_messages: u32,
    pub session_linger_ms: u64,
    pub requests_per_second_per_key: u32,
    /// Logical sessions one API key may have at once, detached ones included.
    pub sessions_per_key_max: u32,
}

/// What a connection is doing, as far as sessions go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    AwaitingLogin,
    LoggingIn,
    Active(u64),
}

/// What the front-end must do, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Queue a message on the connection (sequenced ones carry their seq). A connection
    /// that cannot take it is a slow consumer.
    Send { conn: ConnId, msg: ServerMessage },
    /// The login was accepted: queue `accepted`, then the resume's `replay` (binary
    /// frames, allowed above the outbound limit), and keep these timers.
    LoggedIn {
        conn: ConnId,
        accepted: ServerMessage,
        heartbeat_ms: u32,
        silence_ms: u32,
        replay: Vec<u8>,
    },
    /// The login was refused: say why and close.
    LoginRejected {
        conn: ConnId,
        reason: LoginRejectReason,
    },
    /// Close now, saying why first when there is a reason.
    Close {
        conn: ConnId,
        reason: Option<LogoutReason>,
    },
    /// Close at the end of the pass (found while routing the exchange's output).
    CloseLater { conn: ConnId, reason: LogoutReason },
    /// Count and log a refusal of the connection's peer.
    Refuse {
        conn: ConnId,
        reason: Refusal,
        key_id: Option<u64>,
        detail: Detail,
    },
}

struct CoreConn {
    state: ConnState,
    listener: Listener,
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
    /// Answered by the front-end itself (a refusal, a promotion): answered when it
    /// reaches the front, so answers stay in request order.
    local_reject: Option<LocalAnswer>,
}

/// What the core answers a request with when the exchange's outputs do not.
#[derive(Clone, Copy, Debug)]
enum LocalAnswer {
    Reject(RejectReason),
    Promoted(Promotion),
}

struct Session {
    id: u64,
    key_id: u64,
    account: AccountId,
    permissions: u32,
    /// Logged in on the admin listener.
    admin: bool,
    conn: Option<ConnId>,
    next_seq: u64,
    /// Encoded sequenced frames still resumable, oldest first, back to back.
    retained: VecDeque<u8>,
    retained_first_seq: u64,
    retained_count: u32,
    last_request_id: u64,
    inflight: VecDeque<Inflight>,
    cancel_on_disconnect: bool,
    detached_at_ns: Option<u64>,
    /// Ended by the client's Logout: not resumable, so it ends with its connection.
    logged_out: bool,
}

struct PendingLogin {
    login: Login,
    key: Option<(AccountId, [u8; 32], u32, bool)>,
}

/// Whose sessions an admin command ends.
#[derive(Clone, Copy, Debug)]
enum SessionsOf {
    Key(u64),
    Account(AccountId),
}

/// A session as its front-end may see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    pub id: u64,
    pub key_id: u64,
    pub account: AccountId,
    pub conn: Option<ConnId>,
}

/// The maps looked up for every request and every report are keyed by ids this server or
/// the engine assigns (connections, sessions, accounts and keys that logged in, order
/// ids), never by a value a peer chooses, so they hash with Fx instead of SipHash: SipHash
/// was ~6% of the node's samples at 100 K orders/s (2026-12-07). A peer's resume names a
/// session id, but only looks it up.
pub struct SessionCore {
    config: CoreConfig,
    conns: FxHashMap<ConnId, CoreConn>,
    sessions: FxHashMap<u64, Session>,
    next_session: u64,
    by_account: FxHashMap<AccountId, Vec<u64>>,
    pending_logins: FxHashMap<ConnId, PendingLogin>,
    /// Client order ids of open orders, to echo them on every report.
    orders: FxHashMap<OrderId, u64>,
    /// Market buys by budget between their acceptance and their end, which is always a
    /// Cancelled in the same command: a few at most.
    budget_orders: Vec<OrderId>,
    buckets: FxHashMap<u64, TokenBucket>,
    nonces: HashMap<u64, NoncesSeen>,
    match_seq: u64,
    match_index: u64,
    /// The stop's barrier query was answered.
    stop_barrier_answered: bool,
    /// Accounts whose cancel-on-disconnect sessions were ended by an admin command (see
    /// `end_sessions`): their orders are cancelled at the end of the pass.
    cancel_all_pending: Vec<AccountId>,
    actions: VecDeque<Action>,
}

/// Cancel-on-disconnect: cancels the account's orders in every market. The Cancelled
/// events route to the account's sessions (a detached one included, for resume); the
/// core needs no answer itself. `session`: the one that asked, or 0 when it is gone.
fn cancel_on_disconnect(backend: &mut dyn Backend, front: u8, account: AccountId, session: u64) {
    let cmd = ringex_engine::Command::CancelAll {
        account,
        market: None,
    };
    let _ = backend.submit(&cmd, tag(front, PURPOSE_INTERNAL, session));
}

impl SessionCore {
    pub fn new(config: CoreConfig) -> SessionCore {
        SessionCore {
            config,
            conns: FxHashMap::default(),
            sessions: FxHashMap::default(),
            next_session: 1,
            by_account: FxHashMap::default(),
            pending_logins: FxHashMap::default(),
            orders: FxHashMap::default(),
            budget_orders: Vec::new(),
            buckets: FxHashMap::default(),
            nonces: HashMap::new(),
            match_seq: 0,
            match_index: 0,
            stop_barrier_answered: false,
            cancel_all_pending: Vec::new(),
            actions: VecDeque::new(),
        }
    }

    pub fn config(&self) -> &CoreConfig {
        &self.config
    }

    /// The next thing the front-end must do, in order.
    pub fn pop_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    pub fn has_actions(&self) -> bool {
        !self.actions.is_empty()
    }

    // ------------------------------------------------------------ connections

    /// A connection opened on `listener`: it must log in first.
    pub fn conn_opened(&mut self, conn: ConnId, listener: Listener) {
        let old = self.conns.insert(
            conn,
            CoreConn {
                state: ConnState::AwaitingLogin,
                listener,
            },
        );
        assert!(old.is_none(), "connection {conn} opened twice");
    }

    /// The connection is gone: its session detaches (and ends at once when it was logged
    /// out or nothing is retained for a resume); cancel-on-disconnect runs.
    pub fn conn_closed(&mut self, conn: ConnId, now: Now, backend: &mut dyn Backend) {
        self.pending_logins.remove(&conn);
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        if let ConnState::Active(s) = c.state {
            let front = self.config.front;
            let mut logged_out = false;
            if let Some(session) = self.sessions.get_mut(&s) {
                session.conn = None;
                session.detached_at_ns = Some(now.mono_ns);
                logged_out = session.logged_out;
                if session.cancel_on_disconnect {
                    cancel_on_disconnect(backend, front, session.account, s);
                }
            }
            if logged_out || self.config.resume_window_messages == 0 {
                self.remove_session(s);
            }
        }
    }

    pub fn conn_state(&self, conn: ConnId) -> Option<ConnState> {
        self.conns.get(&conn).map(|c| c.state)
    }

    /// The session of a logged-in connection.
    pub fn session_of(&self, conn: ConnId) -> Option<SessionInfo> {
        match self.conn_state(conn)? {
            ConnState::Active(s) => self.session(s),
            _ => None,
        }
    }

    pub fn session(&self, id: u64) -> Option<SessionInfo> {
        self.sessions.get(&id).map(|s| SessionInfo {
            id: s.id,
            key_id: s.key_id,
            account: s.account,
            conn: s.conn,
        })
    }

    /// The key a refusal on this connection is logged with: its session's, or the one a
    /// pending login claims.
    pub fn key_of(&self, conn: ConnId) -> Option<u64> {
        match self.conns.get(&conn)?.state {
            ConnState::Active(s) => self.sessions.get(&s).map(|s| s.key_id),
            ConnState::AwaitingLogin | ConnState::LoggingIn => {
                self.pending_logins.get(&conn).map(|p| p.login.api_key_id)
            }
        }
    }

    fn refuse(&mut self, conn: ConnId, reason: Refusal, detail: Detail) {
        let key_id = self.key_of(conn);
        self.actions.push_back(Action::Refuse {
            conn,
            reason,
            key_id,
            detail,
        });
    }

    // ------------------------------------------------------------ messages

    /// Handles one decoded message of a connection. False if the connection is to be
    /// closed (the actions say so).
    pub fn handle(
        &mut self,
        conn: ConnId,
        msg: ClientMessage,
        now: Now,
        backend: &mut dyn Backend,
    ) -> bool {
        let Some(state) = self.conn_state(conn) else {
            return false;
        };
        match (state, msg) {
            (ConnState::AwaitingLogin, ClientMessage::Login(login)) => {
                self.begin_login(conn, login, backend)
            }
            (ConnState::Active(_), ClientMessage::Heartbeat) => true,
            (ConnState::Active(s), ClientMessage::Logout) => {
                // The client is done with the session: it ends with the connection and
                // frees its place in the key's session count at once.
                if let Some(session) = self.sessions.get_mut(&s) {
                    session.logged_out = true;
                }
                self.actions.push_back(Action::Close {
                    conn,
                    reason: Some(LogoutReason::Requested),
                });
                false
            }
            (ConnState::Active(s), msg) if msg.request_id().is_some() => {
                self.request(s, msg, now, backend)
            }
            (_, msg) => {
                let detail = Detail::Template(msg.template_id());
                self.refuse(conn, Refusal::ProtocolViolation, detail);
                self.actions.push_back(Action::Close {
                    conn,
                    reason: Some(LogoutReason::ProtocolViolation),
                });
                false
            }
        }
    }

    /// A request whose fields could not be read, with the request id and template its
    /// frame carries. Before the login it is a protocol violation (false: close); after
    /// it, a fresh request id gets a `Malformed` reject in request order.
    pub fn malformed_request(
        &mut self,
        conn: ConnId,
        request_id: u64,
        template_id: u16,
        detail: Detail,
    ) -> bool {
        let session = match self.conn_state(conn) {
            Some(ConnState::Active(s)) => s,
            _ => {
                self.refuse(conn, Refusal::ProtocolViolation, detail);
                self.actions.push_back(Action::Close {
                    conn,
                    reason: Some(LogoutReason::ProtocolViolation),
                });
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
            self.refuse(conn, Refusal::MalformedRequest, detail);
            // Its fields could not be read: no market or order to name.
            self.request_refused(
                session,
                request_id,
                template_id,
                (0, None),
                RejectReason::Malformed,
            );
        }
        true
    }

    // ------------------------------------------------------------ login

    fn begin_login(&mut self, conn: ConnId, login: Login, backend: &mut dyn Backend) -> bool {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.state = ConnState::LoggingIn;
        }
        self.pending_logins
            .insert(conn, PendingLogin { login, key: None });
        let q = Query::ApiKey {
            key_id: login.api_key_id,
        };
        let t = tag(self.config.front, PURPOSE_LOGIN, conn as u64);
        if backend.query(&q, t).is_err() {
            self.pending_logins.remove(&conn);
            self.actions.push_back(Action::LoginRejected {
                conn,
                reason: LoginRejectReason::Unavailable,
            });
            return false;
        }
        true
    }

    fn login_reply(&mut self, conn: ConnId, d: &Delivery, now: Now, backend: &mut dyn Backend) {
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
            Output::Reply(QueryReply::End { .. }) => self.finish_login(conn, now, backend),
            _ => {}
        }
    }

    /// The key lookup came back: check the login in the documented order.
    fn finish_login(&mut self, conn: ConnId, now: Now, backend: &mut dyn Backend) {
        let Some(pending) = self.pending_logins.remove(&conn) else {
            return;
        };
        let Some(listener) = self.conns.get(&conn).map(|c| c.listener) else {
            return;
        };
        let login = pending.login;
        match self.check_login(&login, pending.key, listener, now.wall_ns) {
            Err(reason) => {
                if let Some(refusal) = Refusal::from_login(reason) {
                    let detail = if reason == LoginRejectReason::StaleTimestamp {
                        let skew = i128::from(login.timestamp_ns) - i128::from(now.wall_ns);
                        Detail::ClockSkewNs(skew.clamp(i64::MIN.into(), i64::MAX.into()) as i64)
                    } else {
                        Detail::None
                    };
                    self.actions.push_back(Action::Refuse {
                        conn,
                        reason: refusal,
                        key_id: Some(login.api_key_id),
                        detail,
                    });
                }
                self.actions
                    .push_back(Action::LoginRejected { conn, reason });
            }
            Ok((account, permissions)) => {
                self.open_session(conn, login, account, permissions, backend)
            }
        }
    }

    fn check_login(
        &mut self,
        login: &Login,
        key: Option<(AccountId, [u8; 32], u32, bool)>,
        listener: Listener,
        wall_ns: u64,
    ) -> Result<(AccountId, u32), LoginRejectReason> {
        let Some((account, secret_hash, permissions, suspended)) = key else {
            return Err(LoginRejectReason::UnknownKey);
        };
        if suspended {
            return Err(LoginRejectReason::AccountSuspended);
        }
        let admin_listener = listener == Listener::Admin;
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
        if login.timestamp_ns.abs_diff(wall_ns) > window_ns {
            return Err(LoginRejectReason::StaleTimestamp);
        }
        if !self.nonces.entry(login.api_key_id).or_default().admit(
            login.nonce,
            wall_ns,
            2 * window_ns,
        ) {
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
        conn: ConnId,
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
        let admin = self
            .conns
            .get(&conn)
            .is_some_and(|c| c.listener == Listener::Admin);
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
                    admin,
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
                    logged_out: false,
                },
            );
            self.by_account.entry(account).or_default().push(sid);
            // Learn the client order ids of orders that rest from before.
            let q = Query::OpenOrders {
                account,
                market: None,
            };
            let _ = backend.query(&q, tag(self.config.front, PURPOSE_WARM, sid));
            sid
        };
        let session = self.sessions.get_mut(&session_id).expect("session exists");
        session.conn = Some(conn);
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
        if let Some(c) = self.conns.get_mut(&conn) {
            c.state = ConnState::Active(session_id);
        }
        self.actions.push_back(Action::LoggedIn {
            conn,
            accepted,
            heartbeat_ms,
            silence_ms,
            replay,
        });
    }

    // ------------------------------------------------------------ requests

    /// Handles an application request of an active session. False if the connection is
    /// to be closed.
    fn request(
        &mut self,
        session_id: u64,
        msg: ClientMessage,
        now: Now,
        backend: &mut dyn Backend,
    ) -> bool {
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
                self.refuse(c, Refusal::NotPermitted, detail);
                self.actions.push_back(Action::Close {
                    conn: c,
                    reason: Some(LogoutReason::NotPermitted),
                });
            }
            return false;
        }
        session.last_request_id = request_id;
        let account = session.account;
        let key_id = session.key_id;
        let (market, order) = request_subject(&msg);
        let template = msg.template_id();
        let rate = u64::from(self.config.requests_per_second_per_key.max(1));
        let bucket = self
            .buckets
            .entry(key_id)
            .or_insert_with(|| TokenBucket::new(rate, now.mono_ns));
        if !bucket.try_take(now.mono_ns) {
            let abusive = bucket.refuse(now.mono_ns);
            let conn = self.sessions.get(&session_id).and_then(|s| s.conn);
            if let Some(c) = conn {
                self.refuse(c, Refusal::RateLimited, Detail::Template(template));
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
                    self.refuse(c, Refusal::RateLimitAbuse, Detail::None);
                    self.actions.push_back(Action::Close {
                        conn: c,
                        reason: Some(LogoutReason::RateLimitAbuse),
                    });
                }
                return false;
            }
            return true;
        }
        let t = tag(self.config.front, PURPOSE_REQUEST, session_id);
        let submitted = match &msg {
            ClientMessage::BalanceQuery(_) => backend.query(&Query::Balances { account }, t),
            ClientMessage::OpenOrdersQuery(q) => backend.query(
                &Query::OpenOrders {
                    account,
                    market: (q.market != 0).then_some(q.market),
                },
                t,
            ),
            ClientMessage::Promote { .. } => {
                let answer = match backend.promote() {
                    Ok(p) => LocalAnswer::Promoted(p),
                    Err(_) => LocalAnswer::Reject(RejectReason::Unavailable),
                };
                self.answer_locally(session_id, request_id, template, (market, order), answer);
                return true;
            }
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

    /// A request the core answers itself: queued behind the session's earlier requests
    /// so answers stay in request order.
    fn request_refused(
        &mut self,
        session_id: u64,
        request_id: u64,
        template: u16,
        subject: (MarketId, Option<OrderRef>),
        reason: RejectReason,
    ) {
        let answer = LocalAnswer::Reject(reason);
        self.answer_locally(session_id, request_id, template, subject, answer);
    }

    /// A request the core answers itself (a refusal, a promotion), in request order.
    fn answer_locally(
        &mut self,
        session_id: u64,
        request_id: u64,
        template: u16,
        (market, order): (MarketId, Option<OrderRef>),
        answer: LocalAnswer,
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
            local_reject: Some(answer),
        });
        if session.inflight.len() == 1 {
            self.answer_local_rejects(session_id);
        }
    }

    /// A front-end's own refusal of a session's request before it reached the core's
    /// checks (a request it could not read into a request at all): answered in request
    /// order like the core's own.
    pub fn refuse_request(
        &mut self,
        session_id: u64,
        request_id: u64,
        template: u16,
        reason: RejectReason,
    ) {
        if let Some(s) = self.sessions.get_mut(&session_id) {
            if request_id <= s.last_request_id {
                return;
            }
            s.last_request_id = request_id;
        }
        self.request_refused(session_id, request_id, template, (0, None), reason);
    }

    /// Answers the core's own rejects waiting at the front of the queue.
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
            let msg = match front.local_reject {
                None => return,
                Some(LocalAnswer::Reject(reason)) => ServerMessage::OrderRejected(OrderRejected {
                    seq: 0,
                    request_id: front.request_id,
                    request_template: front.template,
                    order: front.order,
                    market: front.market,
                    reason,
                }),
                Some(LocalAnswer::Promoted(p)) => ServerMessage::Promoted(Promoted {
                    seq: 0,
                    request_id: front.request_id,
                    epoch_seq: p.epoch_seq,
                    epoch: p.epoch,
                    node_id: p.node_id,
                }),
            };
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
        let window = self.config.resume_window_messages;
        let Some(session) = self.sessions.get_mut(&session_id) else {
            return;
        };
        msg.set_seq(session.next_seq);
        session.next_seq += 1;
        if window > 0 {
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
        } else {
            session.retained_first_seq = session.next_seq;
        }
        if let Some(conn) = session.conn {
            self.actions.push_back(Action::Send { conn, msg });
        }
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

    /// Routes one item the exchange output to the sessions it concerns: answers to this
    /// core's requests and logins, and every event to the sessions of the accounts it
    /// names (whoever caused it).
    pub fn deliver(&mut self, d: &Delivery, now: Now, backend: &mut dyn Backend) {
        let mine = tag_front(d.tag) == self.config.front;
        let purpose = tag_purpose(d.tag);
        let id = tag_id(d.tag);
        if mine {
            match purpose {
                PURPOSE_LOGIN => {
                    self.login_reply(id as ConnId, d, now, backend);
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
        }
        let origin =
            (mine && purpose == PURPOSE_REQUEST && self.sessions.contains_key(&id)).then_some(id);
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
            QueryReply::ApiKey { .. } | QueryReply::Level { .. } | QueryReply::Market { .. } => {
                return
            }
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
                if let Some(cc) = self.conns.get_mut(&c) {
                    cc.state = ConnState::LoggingIn;
                }
                self.actions.push_back(Action::CloseLater {
                    conn: c,
                    reason: LogoutReason::KeyRevoked,
                });
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

    /// The end of a pass: cancel-on-disconnect of the sessions an admin command ended.
    pub fn end_pass(&mut self, backend: &mut dyn Backend) {
        for account in std::mem::take(&mut self.cancel_all_pending) {
            // The session is gone already: no session to tag.
            cancel_on_disconnect(backend, self.config.front, account, 0);
        }
    }

    /// Detached sessions past their linger end.
    pub fn expire_sessions(&mut self, now: Now) {
        let linger_ns = self.config.session_linger_ms.saturating_mul(1_000_000);
        let expired: Vec<u64> = self
            .sessions
            .values()
            .filter(|s| {
                s.conn.is_none()
                    && s.detached_at_ns
                        .is_some_and(|at| now.mono_ns.saturating_sub(at) > linger_ns)
            })
            .map(|s| s.id)
            .collect();
        for sid in expired {
            self.remove_session(sid);
        }
    }

    // ------------------------------------------------------------ stop

    /// The start of a graceful stop: runs the attached sessions' cancel-on-disconnect
    /// while they can still hear the reports, and submits a barrier query whose answer
    /// comes after the outputs of everything submitted before it. False if the barrier
    /// could not be submitted.
    pub fn begin_stop(&mut self, backend: &mut dyn Backend) -> bool {
        let flagged: Vec<(u64, AccountId)> = self
            .sessions
            .values()
            .filter(|s| s.conn.is_some() && s.cancel_on_disconnect)
            .map(|s| (s.id, s.account))
            .collect();
        for (sid, account) in flagged {
            cancel_on_disconnect(backend, self.config.front, account, sid);
            if let Some(s) = self.sessions.get_mut(&sid) {
                s.cancel_on_disconnect = false;
            }
        }
        self.stop_barrier_answered = false;
        let barrier = Query::ApiKey { key_id: 0 };
        backend
            .query(&barrier, tag(self.config.front, PURPOSE_STOP, 0))
            .is_ok()
    }

    /// Whether a stop may end: the barrier answered (if it was submitted) and every
    /// request answered.
    pub fn stop_answered(&self, barrier_sent: bool) -> bool {
        (!barrier_sent || self.stop_barrier_answered)
            && self.sessions.values().all(|s| s.inflight.is_empty())
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }
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
        ServerMessage::Promoted(m) => m.request_id = request_id,
        ServerMessage::LoginAccepted(_)
        | ServerMessage::LoginRejected { .. }
        | ServerMessage::Logout { .. }
        | ServerMessage::Heartbeat => {}
    }
}

#[cfg(test)]
mod tests {
    //! The core driven in memory: no sockets, no clock; an engine applied inline answers.
    use super::*;
    use crate::backend::InlineBackend;
    use crate::protocol::{secret_hash, NewOrder};
    use ringex_engine::{
        Command, Exchange, MarketSpec, OrderKind, Side, StpMode, Symbol, TimeInForce,
    };

    const KEY: u64 = 7;
    const ACCOUNT: AccountId = 70;
    const WALL_NS: u64 = 1_800_000_000_000_000_000;

    fn backend() -> InlineBackend {
        let mut ex = Exchange::new();
        let mut out = Vec::new();
        let cmds = [
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
                market: 1,
                symbol: Symbol::new("BTC-USD").unwrap(),
                base: 1,
                quote: 2,
                tick_size: 1,
                lot_size: 1,
                qty_min: 1,
                qty_max: 1_000,
                band_ppm: 0,
                reference_price: 100,
                maker_fee_ppm: 0,
                taker_fee_ppm: 0,
            }),
            Command::CreateAccount { account: ACCOUNT },
            Command::AddApiKey {
                account: ACCOUNT,
                key_id: KEY,
                secret_hash: secret_hash(b"s"),
                permissions: permission::TRADE,
            },
            Command::Deposit {
                account: ACCOUNT,
                asset: 2,
                amount: 1_000_000,
                external_ref: 1,
            },
        ];
        for c in &cmds {
            ex.apply(c, &mut out);
        }
        InlineBackend::new(ex)
    }

    fn core(rate: u32) -> SessionCore {
        SessionCore::new(CoreConfig {
            front: FRONT_RETAIL,
            heartbeat_ms: 1000,
            idle_timeout_ms: 5000,
            login_freshness_ms: 5000,
            resume_window_messages: 0,
            session_linger_ms: 0,
            requests_per_second_per_key: rate,
            sessions_per_key_max: 4,
        })
    }

    fn now(mono_ns: u64) -> Now {
        Now {
            mono_ns,
            wall_ns: WALL_NS,
        }
    }

    /// Hands everything the backend output to the core.
    fn pump(core: &mut SessionCore, b: &mut InlineBackend) {
        let mut ds = Vec::new();
        b.drain(usize::MAX, &mut |d| ds.push(*d));
        for d in ds {
            core.deliver(&d, now(0), b);
        }
    }

    fn actions(core: &mut SessionCore) -> Vec<Action> {
        std::iter::from_fn(|| core.pop_action()).collect()
    }

    fn login(nonce: u64) -> ClientMessage {
        let mut l = Login {
            api_key_id: KEY,
            timestamp_ns: WALL_NS,
            nonce,
            signature: [0; 32],
            resume_session: 0,
            resume_from_seq: 0,
            heartbeat_ms: 0,
            flags: 0,
        };
        l.sign(&secret_hash(b"s"));
        ClientMessage::Login(l)
    }

    fn order(request_id: u64) -> ClientMessage {
        ClientMessage::NewOrder(NewOrder {
            request_id,
            market: 1,
            client_order_id: request_id,
            side: Side::Buy,
            kind: OrderKind::Limit,
            tif: TimeInForce::Gtc,
            stp: StpMode::None,
            price: 90,
            qty: 1,
            quote_budget: 0,
        })
    }

    fn logged_in(core: &mut SessionCore, b: &mut InlineBackend, conn: ConnId) {
        core.conn_opened(conn, Listener::WebSocket);
        assert!(core.handle(conn, login(conn as u64), now(0), b));
        assert!(actions(core).is_empty(), "the key lookup is under way");
        pump(core, b);
        let acts = actions(core);
        assert!(
            matches!(acts[..], [Action::LoggedIn { conn: c, .. }] if c == conn),
            "{acts:?}"
        );
        assert!(core.session_of(conn).is_some());
    }

    #[test]
    fn a_signed_login_opens_a_session_and_a_replayed_nonce_is_refused() {
        let mut b = backend();
        let mut core = core(100);
        logged_in(&mut core, &mut b, 1);
        assert_eq!(core.session_of(1).unwrap().account, ACCOUNT);
        // The same nonce again, on another connection: refused, counted, closed.
        core.conn_opened(2, Listener::WebSocket);
        assert!(core.handle(2, login(1), now(0), &mut b));
        pump(&mut core, &mut b);
        let acts = actions(&mut core);
        assert!(matches!(
            acts[..],
            [
                Action::Refuse {
                    conn: 2,
                    reason: Refusal::ReplayedNonce,
                    ..
                },
                Action::LoginRejected {
                    conn: 2,
                    reason: LoginRejectReason::ReplayedNonce
                }
            ]
        ));
    }

    #[test]
    fn every_request_is_answered_in_order_and_ends_with_request_done() {
        let mut b = backend();
        let mut core = core(100);
        logged_in(&mut core, &mut b, 1);
        assert!(core.handle(1, order(1), now(0), &mut b));
        assert!(core.handle(1, order(2), now(0), &mut b));
        pump(&mut core, &mut b);
        let answers: Vec<(u64, &str)> = actions(&mut core)
            .into_iter()
            .map(|a| match a {
                Action::Send {
                    msg: ServerMessage::OrderAccepted(m),
                    ..
                } => (m.request_id, "accepted"),
                Action::Send {
                    msg: ServerMessage::RequestDone(m),
                    ..
                } => (m.request_id, "done"),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            answers,
            [(1, "accepted"), (1, "done"), (2, "accepted"), (2, "done")]
        );
    }

    #[test]
    fn a_key_over_its_rate_is_rejected_in_order_then_cut_off_for_abuse() {
        let mut b = backend();
        let mut core = core(2);
        logged_in(&mut core, &mut b, 1);
        // Two tokens: two orders go through; the next two are refused locally; the
        // fifth makes the refusals within one second more than the rate: abuse.
        for id in 1..=4 {
            assert!(core.handle(1, order(id), now(0), &mut b));
        }
        assert!(!core.handle(1, order(5), now(0), &mut b));
        let acts = actions(&mut core);
        let refused = acts
            .iter()
            .filter(|a| {
                matches!(
                    a,
                    Action::Refuse {
                        reason: Refusal::RateLimited,
                        ..
                    }
                )
            })
            .count();
        assert_eq!(refused, 3);
        assert!(matches!(
            acts.last(),
            Some(Action::Close {
                conn: 1,
                reason: Some(LogoutReason::RateLimitAbuse)
            })
        ));
        // The refused requests wait behind the two in the engine: no answer yet.
        assert!(!acts.iter().any(|a| matches!(a, Action::Send { .. })));
        pump(&mut core, &mut b);
        let order_of: Vec<u64> = actions(&mut core)
            .into_iter()
            .filter_map(|a| match a {
                Action::Send {
                    msg: ServerMessage::RequestDone(m),
                    ..
                } => Some(m.request_id),
                _ => None,
            })
            .collect();
        assert_eq!(order_of, [1, 2, 3, 4, 5]);
    }

    #[test]
    fn without_a_resume_window_a_session_ends_with_its_connection() {
        let mut b = backend();
        let mut core = core(100);
        logged_in(&mut core, &mut b, 1);
        assert_eq!(core.session_count(), 1);
        core.conn_closed(1, now(0), &mut b);
        assert_eq!(core.session_count(), 0);
    }

    #[test]
    fn another_front_ends_answers_are_not_taken_but_its_events_reach_the_account() {
        let mut b = backend();
        let mut core = core(100);
        logged_in(&mut core, &mut b, 1);
        // The binary gateway places an order for the same account: its answer is not
        // this core's, but the account's session hears of the order.
        let cmd = order(1).to_command(ACCOUNT).unwrap();
        b.submit(&cmd, tag(FRONT_BINARY, PURPOSE_REQUEST, 1))
            .unwrap();
        pump(&mut core, &mut b);
        let acts = actions(&mut core);
        assert!(
            matches!(
                acts[..],
                [Action::Send {
                    conn: 1,
                    msg: ServerMessage::OrderAccepted(OrderAccepted { request_id: 0, .. })
                }]
            ),
            "{acts:?}"
        );
    }
}
