//! What the gateway refused, to whom: counted by reason and logged at a bounded rate.
//!
//! Every refusal of a peer (a connection over a limit, a failed login, a malformed frame,
//! a refused request, a connection the gateway cuts off) adds one to its reason's counter
//! in [`RefusalCounters`] (a relaxed atomic add, read by the node's metrics) and passes
//! through a [`RefusalLog`]. The log lets the first [`LOG_LINES_PER_WINDOW`] refusals of
//! each one-second window through as [`LogRecord::Refused`], at most
//! [`LOG_LINES_PER_REASON`] of one reason (so a flood of one kind leaves lines for the
//! others: a bad signature amid a connection flood still gets its line), and counts the
//! rest, which it reports in one [`LogRecord::Suppressed`] when the window ends. A flood
//! of refusals costs a handful of lines a second, and the summaries account for every
//! refusal.
//!
//! The gateway never writes to stderr itself: records go into a bounded [`LogQueue`] that
//! the daemon drains on its logging thread, so a stalled stderr never stalls the event
//! loop. Time comes from the caller (`now_ns`), so the rate limit is tested without
//! sleeping.

use std::collections::VecDeque;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::protocol::{template, FrameError, LoginRejectReason, LogoutReason};

/// Refusals logged on a line of their own per window; the rest are summed up.
pub const LOG_LINES_PER_WINDOW: u32 = 10;
/// Of those, at most this many of one reason.
pub const LOG_LINES_PER_REASON: u32 = 3;
/// The length of a log window.
pub const LOG_WINDOW_NS: u64 = 1_000_000_000;
/// Distinct (reason, address) pairs a window's summary keeps counts for; refusals from
/// further addresses are counted under their reason only ("others").
pub const SUMMARY_SOURCES_MAX: usize = 32;
/// Addresses a summary names per reason, most refused first.
pub const SUMMARY_SOURCES_SHOWN: usize = 3;

/// Why the gateway refused a peer. The names are stable: they appear in the log and in
/// the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Refusal {
    /// A connection from an address that already has `limits.connections_per_ip` open:
    /// closed at accept.
    PerIpLimit,
    /// A connection while `gateway.connections_max` are open: closed at accept.
    ConnectionLimit,
    /// No valid Login within the login timeout.
    LoginTimeout,
    /// Login with a key that does not exist or was revoked.
    UnknownKey,
    /// Login with a key of a suspended account.
    AccountSuspended,
    /// Login with a key that lacks the listener's permission.
    WrongListener,
    /// Login whose HMAC does not match the key.
    BadSignature,
    /// Login whose timestamp is outside the freshness window, behind or ahead.
    StaleTimestamp,
    /// Login that reuses a (key, nonce) pair within the window.
    ReplayedNonce,
    /// Resume of a session that is unknown, ended, of another key or listener, or from a
    /// seq outside the retained window.
    ResumeImpossible,
    /// Resume of a session still attached to a live connection.
    AlreadyLoggedIn,
    /// Login of a key that has its most sessions.
    TooManySessions,
    /// A message not allowed in the connection's state (a request before Login, a second
    /// Login).
    ProtocolViolation,
    /// A frame whose length, block length, schema or version is wrong: framing is lost.
    MalformedFrame,
    /// A template id the server does not take.
    UnknownTemplate,
    /// A bad field in a session message (Login).
    InvalidField,
    /// A bad field in a request: the request is rejected, the session goes on.
    MalformedRequest,
    /// A request the session's permissions do not cover: the session ends.
    NotPermitted,
    /// A request over the key's rate: rejected.
    RateLimited,
    /// More requests refused within one second than the key's rate: the session ends.
    RateLimitAbuse,
    /// A client that does not read what it is sent: disconnected.
    SlowConsumer,
    /// A logged-in client silent for the silence timeout: disconnected.
    HeartbeatTimeout,
    /// A WebSocket subscription beyond `websocket.subscriptions_max`: refused.
    SubscriptionLimit,
    /// A WebSocket connection that neither subscribed nor authenticated within
    /// `websocket.first_subscription_ms`: closed (1008).
    SubscriptionTimeout,
    /// The oldest connection of an address that has `limits.unauthenticated_per_ip`
    /// connections not yet logged in, when another one comes: closed, nothing sent, so
    /// that idle sockets cannot lock a real client of the same address out.
    UnauthenticatedEvicted,
}

impl Refusal {
    pub const COUNT: usize = 25;

    pub const ALL: [Refusal; Refusal::COUNT] = {
        use Refusal::*;
        [
            PerIpLimit,
            ConnectionLimit,
            LoginTimeout,
            UnknownKey,
            AccountSuspended,
            WrongListener,
            BadSignature,
            StaleTimestamp,
            ReplayedNonce,
            ResumeImpossible,
            AlreadyLoggedIn,
            TooManySessions,
            ProtocolViolation,
            MalformedFrame,
            UnknownTemplate,
            InvalidField,
            MalformedRequest,
            NotPermitted,
            RateLimited,
            RateLimitAbuse,
            SlowConsumer,
            HeartbeatTimeout,
            SubscriptionLimit,
            SubscriptionTimeout,
            UnauthenticatedEvicted,
        ]
    };

    /// The name in log lines and metrics.
    pub fn name(self) -> &'static str {
        use Refusal::*;
        match self {
            PerIpLimit => "per-ip-limit",
            ConnectionLimit => "connection-limit",
            LoginTimeout => "login-timeout",
            UnknownKey => "unknown-key",
            AccountSuspended => "account-suspended",
            WrongListener => "wrong-listener",
            BadSignature => "bad-signature",
            StaleTimestamp => "stale-timestamp",
            ReplayedNonce => "replayed-nonce",
            ResumeImpossible => "resume-impossible",
            AlreadyLoggedIn => "already-logged-in",
            TooManySessions => "too-many-sessions",
            ProtocolViolation => "protocol-violation",
            MalformedFrame => "malformed-frame",
            UnknownTemplate => "unknown-template",
            InvalidField => "invalid-field",
            MalformedRequest => "malformed-request",
            NotPermitted => "not-permitted",
            RateLimited => "rate-limited",
            RateLimitAbuse => "rate-limit-abuse",
            SlowConsumer => "slow-consumer",
            HeartbeatTimeout => "heartbeat-timeout",
            SubscriptionLimit => "subscription-limit",
            SubscriptionTimeout => "subscription-timeout",
            UnauthenticatedEvicted => "unauthenticated-evicted",
        }
    }

    /// The reason's position in [`Refusal::ALL`] (and in [`RefusalCounters::snapshot`]).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The refusal a login rejection is; `None` for `Unavailable`, which is the
    /// exchange's state, not the client's doing.
    pub fn from_login(reason: LoginRejectReason) -> Option<Refusal> {
        use LoginRejectReason as L;
        Some(match reason {
            L::UnknownKey => Refusal::UnknownKey,
            L::BadSignature => Refusal::BadSignature,
            L::StaleTimestamp => Refusal::StaleTimestamp,
            L::ReplayedNonce => Refusal::ReplayedNonce,
            L::ResumeImpossible => Refusal::ResumeImpossible,
            L::AlreadyLoggedIn => Refusal::AlreadyLoggedIn,
            L::WrongListener => Refusal::WrongListener,
            L::AccountSuspended => Refusal::AccountSuspended,
            L::TooManySessions => Refusal::TooManySessions,
            L::Unavailable => return None,
        })
    }

    /// The refusal a server-initiated Logout is; `None` for the ends that are not the
    /// client's doing (its own Logout, a shutdown, an operator's revocation).
    pub fn from_logout(reason: LogoutReason) -> Option<Refusal> {
        use LogoutReason as L;
        Some(match reason {
            L::ProtocolViolation => Refusal::ProtocolViolation,
            L::MalformedFrame => Refusal::MalformedFrame,
            L::UnknownTemplate => Refusal::UnknownTemplate,
            L::InvalidField => Refusal::InvalidField,
            L::HeartbeatTimeout => Refusal::HeartbeatTimeout,
            L::LoginTimeout => Refusal::LoginTimeout,
            L::SlowConsumer => Refusal::SlowConsumer,
            L::RateLimitAbuse => Refusal::RateLimitAbuse,
            L::NotPermitted => Refusal::NotPermitted,
            L::Requested | L::ServerShutdown | L::KeyRevoked => return None,
        })
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Refusals by reason since start. One writer (the gateway's thread), any readers.
#[derive(Debug, Default)]
pub struct RefusalCounters {
    counts: [AtomicU64; Refusal::COUNT],
}

impl RefusalCounters {
    pub fn add(&self, reason: Refusal) {
        self.counts[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, reason: Refusal) -> u64 {
        self.counts[reason.index()].load(Ordering::Relaxed)
    }

    /// Every counter, in [`Refusal::ALL`] order.
    pub fn snapshot(&self) -> [u64; Refusal::COUNT] {
        Refusal::ALL.map(|r| self.get(r))
    }

    pub fn total(&self) -> u64 {
        self.snapshot().iter().sum()
    }
}

/// The listener a connection came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    Trading,
    Admin,
    /// The retail WebSocket listener (`retail`).
    WebSocket,
}

impl Listener {
    pub fn of(admin: bool) -> Listener {
        if admin {
            Listener::Admin
        } else {
            Listener::Trading
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Listener::Trading => "trading",
            Listener::Admin => "admin",
            Listener::WebSocket => "websocket",
        }
    }
}

/// What else a log line says about a refusal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detail {
    None,
    /// The login's timestamp minus the server clock, in ns (negative: behind).
    ClockSkewNs(i64),
    /// What the decoder found wrong.
    Frame(FrameError),
    /// The template of the refused message.
    Template(u16),
    /// The connection limit that was reached.
    Limit(u32),
}

/// One refusal, as logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefusalRecord {
    pub reason: Refusal,
    pub peer: SocketAddr,
    pub listener: Listener,
    /// The session's key; for a login, the key it claimed (whether or not it exists);
    /// `None` before a Login was read.
    pub key_id: Option<u64>,
    pub detail: Detail,
}

impl fmt::Display for RefusalRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "refused {} peer={} listener={}",
            self.reason,
            self.peer,
            self.listener.name()
        )?;
        if let Some(key) = self.key_id {
            write!(f, " key={key}")?;
        }
        match self.detail {
            Detail::None => Ok(()),
            Detail::ClockSkewNs(ns) => write!(f, " clock_skew_ms={}", ns / 1_000_000),
            Detail::Frame(e) => write!(f, " error=\"{e}\""),
            Detail::Template(id) => write!(f, " template={}({id})", template::name(id)),
            Detail::Limit(n) => write!(f, " limit={n}"),
        }
    }
}

/// The refusals of one reason a window did not log on lines of their own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SuppressedReason {
    pub reason: Refusal,
    pub count: u64,
    /// The addresses most refused, most first (at most [`SUMMARY_SOURCES_SHOWN`]).
    pub sources: Vec<(IpAddr, u64)>,
    /// The rest of `count`.
    pub others: u64,
}

/// The summary of a window's refusals beyond its logged lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Suppressed {
    pub total: u64,
    /// From the window's start to this summary.
    pub window_ns: u64,
    /// Reasons with a count, in [`Refusal::ALL`] order.
    pub reasons: Vec<SuppressedReason>,
}

impl fmt::Display for Suppressed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.window_ns / 1_000_000;
        write!(
            f,
            "suppressed {} more refusals in {}.{:03} s:",
            self.total,
            ms / 1000,
            ms % 1000
        )?;
        for (i, r) in self.reasons.iter().enumerate() {
            let sep = if i == 0 { "" } else { ";" };
            write!(f, "{sep} {} {} from", r.reason, r.count)?;
            for (j, (ip, n)) in r.sources.iter().enumerate() {
                let sep = if j == 0 { "" } else { "," };
                write!(f, "{sep} {ip} {n}")?;
            }
            if r.others > 0 {
                let sep = if r.sources.is_empty() { "" } else { "," };
                write!(f, "{sep} others {}", r.others)?;
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogRecord {
    Refused(RefusalRecord),
    Suppressed(Suppressed),
}

impl fmt::Display for LogRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogRecord::Refused(r) => r.fmt(f),
            LogRecord::Suppressed(s) => s.fmt(f),
        }
    }
}

/// Log records from the gateway's thread to whoever prints them. Bounded: records that
/// find it full are dropped and counted (the log writes at most
/// [`LOG_LINES_PER_WINDOW`] + 1 records a window, so only a queue nobody drains fills up).
#[derive(Debug, Default)]
pub struct LogQueue {
    records: Mutex<VecDeque<LogRecord>>,
    dropped: AtomicU64,
}

impl LogQueue {
    pub const CAPACITY: usize = 256;

    fn push(&self, record: LogRecord) {
        let mut q = self.records.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= LogQueue::CAPACITY {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        q.push_back(record);
    }

    /// Takes every queued record, oldest first.
    pub fn drain(&self) -> Vec<LogRecord> {
        let mut q = self.records.lock().unwrap_or_else(|e| e.into_inner());
        q.drain(..).collect()
    }

    /// Records dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The rate limit between refusals and the log: per window, the first
/// `lines_per_window` refusals as records of their own (at most `lines_per_reason` of
/// each reason), a summary of the rest. Memory is bounded: the summary keeps a count per
/// reason and per (reason, address) for at most [`SUMMARY_SOURCES_MAX`] pairs.
#[derive(Debug)]
pub struct RefusalLog {
    queue: Arc<LogQueue>,
    lines_per_window: u32,
    lines_per_reason: u32,
    window_ns: u64,
    window_start_ns: u64,
    logged: u32,
    logged_by_reason: [u32; Refusal::COUNT],
    suppressed: u64,
    by_reason: [u64; Refusal::COUNT],
    /// Capacity reserved up front: never grows past [`SUMMARY_SOURCES_MAX`].
    sources: Vec<(Refusal, IpAddr, u64)>,
}

impl RefusalLog {
    pub fn new(
        queue: Arc<LogQueue>,
        (lines_per_window, lines_per_reason): (u32, u32),
        window_ns: u64,
        now_ns: u64,
    ) -> RefusalLog {
        RefusalLog {
            queue,
            lines_per_window,
            lines_per_reason,
            window_ns: window_ns.max(1),
            window_start_ns: now_ns,
            logged: 0,
            logged_by_reason: [0; Refusal::COUNT],
            suppressed: 0,
            by_reason: [0; Refusal::COUNT],
            sources: Vec::with_capacity(SUMMARY_SOURCES_MAX),
        }
    }

    /// A refusal happened: logged, or counted for the window's summary.
    pub fn refused(&mut self, now_ns: u64, record: RefusalRecord) {
        self.tick(now_ns);
        let of_reason = &mut self.logged_by_reason[record.reason.index()];
        if self.logged < self.lines_per_window && *of_reason < self.lines_per_reason {
            self.logged += 1;
            *of_reason += 1;
            self.queue.push(LogRecord::Refused(record));
            return;
        }
        self.suppressed += 1;
        self.by_reason[record.reason.index()] += 1;
        let ip = record.peer.ip();
        if let Some(s) = self
            .sources
            .iter_mut()
            .find(|(r, a, _)| *r == record.reason && *a == ip)
        {
            s.2 += 1;
        } else if self.sources.len() < SUMMARY_SOURCES_MAX {
            self.sources.push((record.reason, ip, 1));
        }
    }

    /// Ends the window if it is over: its summary, if anything was suppressed, goes to the
    /// queue. Call it now and then (the gateway does on its timer), so a summary comes
    /// out even when the refusals stop.
    pub fn tick(&mut self, now_ns: u64) {
        if now_ns.saturating_sub(self.window_start_ns) >= self.window_ns {
            self.flush(now_ns);
        }
    }

    /// Ends the window now (a stopping gateway reports what it suppressed so far).
    pub fn flush(&mut self, now_ns: u64) {
        if self.suppressed > 0 {
            let summary = self.summary(now_ns);
            self.queue.push(LogRecord::Suppressed(summary));
        }
        self.window_start_ns = now_ns;
        self.logged = 0;
        self.logged_by_reason = [0; Refusal::COUNT];
        self.suppressed = 0;
        self.by_reason = [0; Refusal::COUNT];
        self.sources.clear();
    }

    fn summary(&mut self, now_ns: u64) -> Suppressed {
        // Most refused first; ties by address, so the line is the same every time.
        self.sources
            .sort_unstable_by(|a, b| b.2.cmp(&a.2).then(a.1.cmp(&b.1)));
        let reasons = Refusal::ALL
            .iter()
            .filter(|r| self.by_reason[r.index()] > 0)
            .map(|&reason| {
                let count = self.by_reason[reason.index()];
                let sources: Vec<(IpAddr, u64)> = self
                    .sources
                    .iter()
                    .filter(|s| s.0 == reason)
                    .take(SUMMARY_SOURCES_SHOWN)
                    .map(|s| (s.1, s.2))
                    .collect();
                let named: u64 = sources.iter().map(|s| s.1).sum();
                SuppressedReason {
                    reason,
                    count,
                    sources,
                    others: count - named,
                }
            })
            .collect();
        Suppressed {
            total: self.suppressed,
            window_ns: now_ns.saturating_sub(self.window_start_ns),
            reasons,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn record(reason: Refusal, ip: &str) -> RefusalRecord {
        RefusalRecord {
            reason,
            peer: SocketAddr::new(ip.parse().unwrap(), 40_000),
            listener: Listener::Trading,
            key_id: None,
            detail: Detail::None,
        }
    }

    fn refused(records: &[LogRecord]) -> usize {
        records
            .iter()
            .filter(|r| matches!(r, LogRecord::Refused(_)))
            .count()
    }

    fn summaries(records: &[LogRecord]) -> Vec<Suppressed> {
        records
            .iter()
            .filter_map(|r| match r {
                LogRecord::Suppressed(s) => Some(s.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn every_reason_has_a_distinct_name_and_its_own_counter() {
        let names: std::collections::BTreeSet<_> = Refusal::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(names.len(), Refusal::COUNT);
        let counters = RefusalCounters::default();
        for (i, r) in Refusal::ALL.into_iter().enumerate() {
            assert_eq!(r.index(), i, "ALL is in declaration order");
            for _ in 0..=i {
                counters.add(r);
            }
        }
        for (i, r) in Refusal::ALL.into_iter().enumerate() {
            assert_eq!(counters.get(r), i as u64 + 1);
        }
        assert_eq!(
            counters.total(),
            (Refusal::COUNT * (Refusal::COUNT + 1) / 2) as u64
        );
    }

    #[test]
    fn every_client_caused_login_rejection_and_logout_is_a_refusal() {
        for reason in LoginRejectReason::ALL {
            let refusal = Refusal::from_login(reason);
            assert_eq!(
                refusal.is_none(),
                reason == LoginRejectReason::Unavailable,
                "{reason:?}"
            );
        }
        for reason in LogoutReason::ALL {
            let not_the_client = [
                LogoutReason::Requested,
                LogoutReason::ServerShutdown,
                LogoutReason::KeyRevoked,
            ];
            assert_eq!(
                Refusal::from_logout(reason).is_none(),
                not_the_client.contains(&reason),
                "{reason:?}"
            );
        }
    }

    #[test]
    fn a_window_logs_its_first_lines_and_sums_up_the_rest_exactly() {
        let queue = Arc::new(LogQueue::default());
        let mut log = RefusalLog::new(Arc::clone(&queue), (10, 5), SECOND, 0);
        for i in 0..1_950u64 {
            log.refused(i * 1000, record(Refusal::PerIpLimit, "127.0.0.1"));
        }
        for i in 0..37u64 {
            log.refused(2_000_000 + i, record(Refusal::BadSignature, "10.0.0.2"));
        }
        let records = queue.drain();
        // The first five of each on lines of their own: a flood of one kind does not hide
        // the other.
        assert_eq!(refused(&records), 10);
        let bad_signatures = records
            .iter()
            .filter(|r| matches!(r, LogRecord::Refused(r) if r.reason == Refusal::BadSignature));
        assert_eq!(bad_signatures.count(), 5);
        assert!(summaries(&records).is_empty(), "the window is not over");
        // The window ends at the next call after one second: a tick is enough.
        log.tick(SECOND - 1);
        assert!(queue.drain().is_empty());
        log.tick(SECOND);
        let records = queue.drain();
        let s = summaries(&records);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].total, 1_950 + 37 - 10);
        assert_eq!(s[0].window_ns, SECOND);
        assert_eq!(
            s[0].reasons,
            vec![
                SuppressedReason {
                    reason: Refusal::PerIpLimit,
                    count: 1_945,
                    sources: vec![("127.0.0.1".parse().unwrap(), 1_945)],
                    others: 0,
                },
                SuppressedReason {
                    reason: Refusal::BadSignature,
                    count: 32,
                    sources: vec![("10.0.0.2".parse().unwrap(), 32)],
                    others: 0,
                },
            ]
        );
        assert_eq!(
            s[0].to_string(),
            "suppressed 1977 more refusals in 1.000 s: per-ip-limit 1945 from 127.0.0.1 \
             1945; bad-signature 32 from 10.0.0.2 32"
        );
        // A new window logs again.
        log.refused(SECOND + 1, record(Refusal::BadSignature, "10.0.0.2"));
        assert_eq!(refused(&queue.drain()), 1);
        // Nothing suppressed: no summary.
        log.tick(3 * SECOND);
        assert!(queue.drain().is_empty());
    }

    #[test]
    fn a_summary_keeps_counts_for_a_bounded_number_of_addresses_and_names_the_busiest() {
        let queue = Arc::new(LogQueue::default());
        let mut log = RefusalLog::new(Arc::clone(&queue), (0, 0), SECOND, 0);
        // Many addresses, one refusal each, then one address often.
        for i in 0..1_000u32 {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string();
            log.refused(1, record(Refusal::LoginTimeout, &ip));
        }
        for _ in 0..5 {
            log.refused(2, record(Refusal::LoginTimeout, "10.0.0.7"));
        }
        assert!(log.sources.len() <= SUMMARY_SOURCES_MAX);
        assert_eq!(log.sources.capacity(), SUMMARY_SOURCES_MAX, "never grew");
        log.flush(3);
        let s = summaries(&queue.drain());
        let r = &s[0].reasons[0];
        assert_eq!((s[0].total, r.count), (1_005, 1_005));
        assert_eq!(r.sources.len(), SUMMARY_SOURCES_SHOWN);
        assert_eq!(r.sources[0], ("10.0.0.7".parse().unwrap(), 6));
        assert_eq!(r.sources.iter().map(|s| s.1).sum::<u64>() + r.others, 1_005);
        // The first addresses took the slots; the rest are counted, not named.
        assert_eq!(r.others, 1_005 - 6 - 1 - 1);
        assert!(s[0].to_string().contains(", others 997"), "{}", s[0]);
    }

    #[test]
    fn a_queue_nobody_drains_stays_bounded_and_counts_what_it_dropped() {
        let queue = Arc::new(LogQueue::default());
        let mut log = RefusalLog::new(Arc::clone(&queue), (10, 10), SECOND, 0);
        let windows = LogQueue::CAPACITY as u64;
        for w in 0..windows {
            for _ in 0..20 {
                log.refused(w * SECOND, record(Refusal::RateLimited, "127.0.0.1"));
            }
        }
        log.flush(windows * SECOND);
        let records = queue.drain();
        assert_eq!(records.len(), LogQueue::CAPACITY);
        // Ten lines and one summary a window.
        assert_eq!(queue.dropped(), windows * 11 - LogQueue::CAPACITY as u64);
    }

    #[test]
    fn a_record_names_the_peer_the_listener_the_key_and_what_was_wrong() {
        let mut r = record(Refusal::StaleTimestamp, "192.0.2.1");
        r.key_id = Some(1001);
        r.detail = Detail::ClockSkewNs(-61_500_000_000);
        assert_eq!(
            r.to_string(),
            "refused stale-timestamp peer=192.0.2.1:40000 listener=trading key=1001 \
             clock_skew_ms=-61500"
        );
        let mut r = record(Refusal::NotPermitted, "192.0.2.1");
        r.listener = Listener::Admin;
        r.key_id = Some(7);
        r.detail = Detail::Template(template::NEW_ORDER);
        assert_eq!(
            r.to_string(),
            "refused not-permitted peer=192.0.2.1:40000 listener=admin key=7 \
             template=NewOrder(10)"
        );
        let mut r = record(Refusal::PerIpLimit, "192.0.2.1");
        r.detail = Detail::Limit(256);
        assert_eq!(
            r.to_string(),
            "refused per-ip-limit peer=192.0.2.1:40000 listener=trading limit=256"
        );
    }
}
