//! HTTP on the retail loop (`docs/http.md`): REST market data read from the same
//! [`Publisher`] state the WebSocket channels publish, `/health` and `/metrics` (the
//! node's part through [`NodeStatus`]), and the live page at `/`.
//!
//! It runs on the retail edge's thread and poll, on a listener of its own: never on the
//! market makers' loop. Requests are parsed with `httparse`; GET only; keep-alive and
//! pipelining (answers in request order); a request's head is bounded in size
//! (431) and in time (408); a request with a body is refused (413). Every error is a
//! JSON object `{"error":{"code":N,"msg":"..."}}`. Nothing a client sends can stop the
//! loop: output per connection is bounded (a connection that does not read its answers
//! is not read either), and every loop over input is bounded by the input.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use mio::event::Event;
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use ringex_engine::MarketId;

use crate::prom::Exposition;
use crate::publisher::{push_json_str, Channel, Publisher};
use crate::refusals::Refusal;
use crate::retail::RetailStats;

/// Tokens of this module carry the top bit, so they never meet the retail edge's.
pub const TOKEN_BIT: usize = 1 << (usize::BITS - 1);
const LISTENER: Token = Token(TOKEN_BIT);
const INDEX_BITS: u32 = 20;
const INDEX_MASK: usize = (1 << INDEX_BITS) - 1;

/// Bytes read from a socket per call.
const READ_CHUNK_BYTES: usize = 16 * 1024;
/// Reads per connection per pass; a connection with more is read again next pass.
const READS_PER_PASS: usize = 8;
/// Answers queued and unwritten past this stop the connection's reading until written.
const OUT_PAUSE_BYTES: usize = 256 * 1024;
/// Headers a request may have.
const HEADERS_MAX: usize = 32;
/// The most query parameters a request may carry.
const PARAMS_MAX: usize = 8;
/// Depth levels per side: the default and the most a request may ask for.
pub const DEPTH_LIMIT_DEFAULT: usize = 100;
pub const DEPTH_LIMIT_MAX: usize = 5000;
/// Recent trades: the default and the most (all the publisher keeps).
pub const TRADES_LIMIT_DEFAULT: usize = crate::publisher::RECENT_TRADES_MAX;
pub const TRADES_LIMIT_MAX: usize = crate::publisher::RECENT_TRADES_MAX;

/// `Cache-Control: max-age` per resource, in whole seconds (RFC 9111 counts no
/// fractions: what changes faster than a second, depth and trades, is 0).
const MAX_AGE_MARKETS: u32 = 60;
const MAX_AGE_TICKER: u32 = 1;
const MAX_AGE_TRADES: u32 = 0;
const MAX_AGE_DEPTH: u32 = 0;

/// The live page (`/`): one static file; the WebSocket port is filled in at start.
const PAGE: &str = include_str!("http/page.html");
const PAGE_WS_PORT: &str = "__RINGEX_WS_PORT__";

#[derive(Clone, Debug)]
pub struct HttpConfig {
    pub addr: SocketAddr,
    /// Open connections at most; past it a new one is answered 503 and closed.
    pub connections_max: u32,
    /// Open connections from one address at most: one client cannot take them all.
    pub connections_per_ip: u32,
    /// The longest request head (request line and headers); past it, 431.
    pub header_bytes_max: usize,
    /// A request's head must arrive whole within this once it has begun; else 408.
    pub header_timeout_ms: u32,
    /// A keep-alive connection with no request under way is closed after this.
    pub idle_timeout_ms: u32,
}

impl HttpConfig {
    /// An ephemeral loopback port and the documented defaults: for tests.
    pub fn loopback() -> HttpConfig {
        HttpConfig {
            addr: "127.0.0.1:0".parse().expect("address"),
            connections_max: 4096,
            connections_per_ip: 256,
            header_bytes_max: 8 * 1024,
            header_timeout_ms: 5_000,
            idle_timeout_ms: 60_000,
        }
    }
}

/// The node's side of `/health` and `/metrics`: it lives in the daemon, which knows
/// the pipeline, the journal and the binary gateway.
pub trait NodeStatus: Send + Sync {
    /// Appends the node's metric families; `pairs` are the markets (id, symbol).
    fn metrics(&self, pairs: &[(MarketId, String)], out: &mut Exposition);
    /// Appends the node's health fields (a JSON object's members, without braces) and
    /// says whether the node takes orders.
    fn health(&self, out: &mut Vec<u8>) -> bool;
}

/// What a request may read: the retail loop's state.
pub struct View<'a> {
    pub publisher: &'a mut Publisher,
    pub retail: &'a RetailStats,
}

struct Conn {
    id: usize,
    peer: std::net::IpAddr,
    stream: TcpStream,
    rbuf: Vec<u8>,
    out: Vec<u8>,
    out_pos: usize,
    /// When the request under way began (its first bytes arrived).
    request_since_ns: Option<u64>,
    /// The last read, or the last write that made progress.
    last_active_ns: u64,
    /// Reading stopped because the answers queued are over the bound: read again once
    /// they are written.
    read_paused: bool,
    /// Close once the output is written (an error ended the connection, or the client
    /// asked to).
    closing: bool,
    writable_registered: bool,
}

/// Counters of the HTTP edge.
#[derive(Default)]
struct Counts {
    connections_active: u64,
    connections_total: u64,
    /// Answers by status code.
    responses: BTreeMap<u16, u64>,
    /// Public updates written to WebSocket subscribers, by market.
    ws_sent: BTreeMap<MarketId, u64>,
}

pub struct Http {
    config: HttpConfig,
    listener: TcpListener,
    listening: bool,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    generation: usize,
    unread: Vec<usize>,
    /// Open connections by remote address.
    ips: crate::limits::ConnectionCounts,
    /// The last accept pass stopped at its bound with connections maybe still queued:
    /// the next pass accepts on (the listener's readiness is edge-triggered).
    accept_pending: bool,
    status: Option<Arc<dyn NodeStatus>>,
    counts: Counts,
    page: Vec<u8>,
    base: Instant,
    scratch: Box<[u8]>,
}

/// One answer.
struct Response {
    status: u16,
    content_type: &'static str,
    max_age: Option<u32>,
    body: Vec<u8>,
    /// The connection ends after it.
    close: bool,
    /// Say `Connection: keep-alive` (to an HTTP/1.0 client that asked for it).
    keep_alive: bool,
}

impl Response {
    fn json(status: u16, max_age: Option<u32>, body: Vec<u8>) -> Response {
        Response {
            status,
            content_type: "application/json",
            max_age,
            body,
            close: false,
            keep_alive: false,
        }
    }

    fn error(status: u16, msg: &str) -> Response {
        let mut body = format!("{{\"error\":{{\"code\":{status},\"msg\":").into_bytes();
        push_json_str(&mut body, msg);
        body.extend_from_slice(b"}}");
        Response::json(status, None, body)
    }

    fn closing(mut self) -> Response {
        self.close = true;
        self
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// Is this token one of the HTTP edge's?
pub fn owns(token: Token) -> bool {
    token.0 & TOKEN_BIT != 0
}

impl Http {
    /// Binds the listener; it is registered with the loop's poll once the publisher is
    /// ready ([`Http::timers`]), so the first request finds the markets loaded.
    /// `ws_port` goes into the live page, which opens the WebSocket API there.
    pub fn bind(
        config: HttpConfig,
        status: Option<Arc<dyn NodeStatus>>,
        ws_port: u16,
    ) -> io::Result<Http> {
        let listener = TcpListener::bind(config.addr)?;
        Ok(Http {
            config,
            listener,
            listening: false,
            conns: Vec::new(),
            free: Vec::new(),
            generation: 1,
            unread: Vec::new(),
            ips: Default::default(),
            accept_pending: false,
            status,
            counts: Counts::default(),
            page: PAGE
                .replace(PAGE_WS_PORT, &ws_port.to_string())
                .into_bytes(),
            base: Instant::now(),
            scratch: vec![0u8; READ_CHUNK_BYTES].into_boxed_slice(),
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Connections with input left to read: the loop must not sleep.
    pub fn busy(&self) -> bool {
        !self.unread.is_empty() || self.accept_pending
    }

    /// Whether any HTTP connection is open.
    pub fn has_connections(&self) -> bool {
        self.conns.len() > self.free.len()
    }

    /// Counts public updates written to a market's WebSocket subscribers.
    pub fn count_ws_sent(&mut self, market: MarketId, frames: usize) {
        *self.counts.ws_sent.entry(market).or_default() += frames as u64;
    }

    fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    /// Starts listening once `ready`, and ends connections past their time limits.
    pub fn timers(&mut self, registry: &Registry, ready: bool) {
        if ready && !self.listening {
            self.listening = registry
                .register(&mut self.listener, LISTENER, Interest::READABLE)
                .is_ok();
        }
        // Also after a pass that found no descriptor free: the queued connections raise
        // no new event.
        self.accept(registry);
        let now = self.now_ns();
        let header_ns = u64::from(self.config.header_timeout_ms) * 1_000_000;
        let idle_ns = u64::from(self.config.idle_timeout_ms) * 1_000_000;
        let mut late = Vec::new();
        let mut idle = Vec::new();
        for c in self.conns.iter().flatten() {
            let quiet_ns = now.saturating_sub(c.last_active_ns);
            if c.out_pos < c.out.len() || c.read_paused {
                // Waiting for the client to read its answers.
                if quiet_ns >= idle_ns {
                    idle.push(c.id);
                }
                continue;
            }
            match c.request_since_ns {
                Some(t) if !c.closing && now.saturating_sub(t) >= header_ns => late.push(c.id),
                None if quiet_ns >= idle_ns => idle.push(c.id),
                _ => {}
            }
        }
        for id in late {
            let answer = Response::error(408, "the request's head did not arrive in time");
            self.answer(id, answer.closing());
            self.flush(registry, id);
        }
        for id in idle {
            self.drop_conn(registry, id);
        }
    }

    /// Reads the connections that had more input than one pass reads.
    pub fn pass(&mut self, registry: &Registry, view: &mut View<'_>) {
        if self.accept_pending {
            self.accept(registry);
        }
        for id in std::mem::take(&mut self.unread) {
            self.read(registry, id, view);
        }
    }

    /// A poll event for one of this module's tokens.
    pub fn event(&mut self, registry: &Registry, ev: &Event, view: &mut View<'_>) {
        let token = ev.token();
        if token == LISTENER {
            self.accept(registry);
            return;
        }
        let id = token.0 & !TOKEN_BIT;
        if ev.is_writable() {
            self.flush(registry, id);
        }
        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
            self.read(registry, id, view);
        }
    }

    fn conn(&mut self, id: usize) -> Option<&mut Conn> {
        match self.conns.get_mut(id & INDEX_MASK) {
            Some(Some(c)) if c.id == id => Some(c),
            _ => None,
        }
    }

    fn accept(&mut self, registry: &Registry) {
        self.accept_pending = false;
        if !self.listening {
            return;
        }
        // Bounded: at most the connection limit per wake-up; past it, the next pass.
        self.accept_pending = true;
        for _ in 0..self.config.connections_max.max(1) {
            let (mut stream, peer) = match self.listener.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.accept_pending = false;
                    return;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted
                    ) =>
                {
                    continue
                }
                // Out of descriptors: the timers accept again.
                Err(_) => {
                    self.accept_pending = false;
                    return;
                }
            };
            let refusal =
                if self.counts.connections_active >= u64::from(self.config.connections_max) {
                    Some("too many connections")
                } else if self.ips.count(peer.ip()) >= self.config.connections_per_ip {
                    Some("too many connections from this address")
                } else {
                    None
                };
            if let Some(msg) = refusal {
                let r = Response::error(503, msg).closing();
                let _ = stream.write(&render(&r));
                *self.counts.responses.entry(503).or_default() += 1;
                continue;
            }
            let _ = stream.set_nodelay(true);
            let index = match self.free.pop() {
                Some(i) => i,
                None if self.conns.len() <= INDEX_MASK => {
                    self.conns.push(None);
                    self.conns.len() - 1
                }
                None => {
                    self.accept_pending = false;
                    return;
                }
            };
            self.generation += 1;
            let id = (self.generation << INDEX_BITS | index) & !TOKEN_BIT;
            if registry
                .register(&mut stream, Token(TOKEN_BIT | id), Interest::READABLE)
                .is_err()
            {
                self.free.push(index);
                continue;
            }
            let now = self.now_ns();
            self.ips.try_add(peer.ip(), u32::MAX);
            self.conns[index] = Some(Conn {
                id,
                peer: peer.ip(),
                stream,
                rbuf: Vec::new(),
                out: Vec::new(),
                out_pos: 0,
                request_since_ns: None,
                last_active_ns: now,
                read_paused: false,
                closing: false,
                writable_registered: false,
            });
            self.counts.connections_active += 1;
            self.counts.connections_total += 1;
        }
    }

    fn read(&mut self, registry: &Registry, id: usize, view: &mut View<'_>) {
        // Requests read before a pause come first.
        if self.conn(id).is_some_and(|c| !c.rbuf.is_empty()) {
            self.handle(id, view);
            self.flush(registry, id);
        }
        for _ in 0..READS_PER_PASS {
            let Some(c) = self.conn(id) else {
                return;
            };
            if c.closing {
                return;
            }
            if c.out.len() - c.out_pos >= OUT_PAUSE_BYTES {
                // Read again once the answers are written (`flush`).
                c.read_paused = true;
                return;
            }
            let mut scratch = std::mem::take(&mut self.scratch);
            let Some(c) = self.conn(id) else {
                self.scratch = scratch;
                return;
            };
            let read = c.stream.read(&mut scratch);
            let n = match read {
                Ok(0) => {
                    self.scratch = scratch;
                    self.drop_conn(registry, id);
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.scratch = scratch;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    self.scratch = scratch;
                    continue;
                }
                Err(_) => {
                    self.scratch = scratch;
                    self.drop_conn(registry, id);
                    return;
                }
            };
            let now = self.now_ns();
            if let Some(c) = self.conn(id) {
                c.rbuf.extend_from_slice(&scratch[..n]);
                c.last_active_ns = now;
                c.request_since_ns.get_or_insert(now);
            }
            self.scratch = scratch;
            self.handle(id, view);
            self.flush(registry, id);
            if n < READ_CHUNK_BYTES {
                // A short read emptied the socket: data arriving later raises a new
                // (edge-triggered) event, so no read to see WouldBlock is needed.
                return;
            }
        }
        self.unread.push(id);
    }

    /// Answers every whole request in the read buffer, in order.
    fn handle(&mut self, id: usize, view: &mut View<'_>) {
        let header_max = self.config.header_bytes_max;
        let now = self.now_ns();
        // Bounded: each turn consumes a request or stops.
        loop {
            let Some(c) = self.conn(id) else {
                return;
            };
            if c.closing || c.rbuf.is_empty() {
                return;
            }
            if c.out.len() - c.out_pos >= OUT_PAUSE_BYTES {
                c.read_paused = true;
                return;
            }
            let rbuf = std::mem::take(&mut c.rbuf);
            let (used, response) = self.parse_and_route(&rbuf, header_max, view);
            let Some(c) = self.conn(id) else {
                return;
            };
            c.rbuf = rbuf;
            if used == 0 && response.is_none() {
                // A partial head: wait for more.
                return;
            }
            c.rbuf.drain(..used);
            c.request_since_ns = (!c.rbuf.is_empty()).then_some(now);
            if let Some(r) = response {
                self.answer(id, r);
            }
        }
    }

    /// Parses the request at the start of `buf`: (bytes used, answer). (0, None) is a
    /// head not yet whole.
    fn parse_and_route(
        &mut self,
        buf: &[u8],
        header_max: usize,
        view: &mut View<'_>,
    ) -> (usize, Option<Response>) {
        let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
        let mut req = httparse::Request::new(&mut headers);
        let used = match req.parse(buf) {
            Ok(httparse::Status::Complete(n)) if n <= header_max => n,
            Ok(httparse::Status::Complete(_)) => {
                return (buf.len(), Some(too_large()));
            }
            Ok(httparse::Status::Partial) if buf.len() > header_max => {
                return (buf.len(), Some(too_large()));
            }
            Ok(httparse::Status::Partial) => return (0, None),
            Err(httparse::Error::TooManyHeaders) => {
                let r = Response::error(431, "too many header fields").closing();
                return (buf.len(), Some(r));
            }
            Err(_) => {
                let r = Response::error(400, "not an HTTP/1.x request").closing();
                return (buf.len(), Some(r));
            }
        };
        let version = req.version.unwrap_or(1);
        let header = |name: &str| {
            req.headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value)
                .collect::<Vec<&[u8]>>()
        };
        let has_token = |name: &str, token: &str| {
            header(name).iter().any(|v| {
                std::str::from_utf8(v)
                    .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            })
        };
        let body = !header("transfer-encoding").is_empty()
            || header("content-length")
                .iter()
                .any(|v| std::str::from_utf8(v).map(str::trim) != Ok("0"));
        if body {
            // A GET API takes no body; not reading it, the connection cannot go on.
            let r = Response::error(413, "requests carry no body here").closing();
            return (buf.len(), Some(r));
        }
        let keep_alive = if version == 0 {
            has_token("connection", "keep-alive")
        } else {
            !has_token("connection", "close")
        };
        let method = req.method.unwrap_or("");
        let target = req.path.unwrap_or("/");
        let mut r = if method != "GET" {
            Response::error(405, "only GET is served")
        } else {
            self.route(target, view)
        };
        if !keep_alive {
            r.close = true;
        } else if version == 0 {
            r.keep_alive = true;
        }
        (used, Some(r))
    }

    fn route(&mut self, target: &str, view: &mut View<'_>) -> Response {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, q),
            None => (target, ""),
        };
        let params = match Params::parse(query) {
            Ok(p) => p,
            Err(msg) => return Response::error(400, &msg),
        };
        let allowed: &[&str] = match path {
            "/" | "/index.html" => &["market", "ws"],
            "/health" | "/metrics" | "/api/v1/markets" => &[],
            "/api/v1/ticker" => &["market"],
            "/api/v1/depth" | "/api/v1/trades" => &["market", "limit"],
            _ => return Response::error(404, "no such resource (docs/http.md lists them)"),
        };
        if let Some(unknown) = params
            .0
            .iter()
            .find(|(k, _)| !allowed.contains(&k.as_str()))
        {
            return Response::error(400, &format!("unknown parameter {}", quoted(&unknown.0)));
        }
        match path {
            "/" | "/index.html" => Response {
                status: 200,
                content_type: "text/html; charset=utf-8",
                max_age: Some(MAX_AGE_MARKETS),
                body: self.page.clone(),
                close: false,
                keep_alive: false,
            },
            "/health" => self.health(view),
            "/metrics" => Response {
                status: 200,
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                max_age: None,
                body: self.metrics(view).into_bytes(),
                close: false,
                keep_alive: false,
            },
            "/api/v1/markets" => {
                let mut j = vec![b'['];
                for (i, m) in view.publisher.markets().enumerate() {
                    if i > 0 {
                        j.push(b',');
                    }
                    crate::retail::api::market_entry(&mut j, m);
                }
                j.push(b']');
                Response::json(200, Some(MAX_AGE_MARKETS), j)
            }
            _ => self.market_data(path, &params, view),
        }
    }

    fn market_data(&mut self, path: &str, params: &Params, view: &mut View<'_>) -> Response {
        if !view.publisher.is_ready() {
            // After an overrun the publisher reloads from the engine.
            return Response::error(503, "market data is loading: try again");
        }
        let Some(symbol) = params.get("market") else {
            return Response::error(400, "market is required, e.g. market=BTC-USDT");
        };
        let Some(market) = view.publisher.market_id(symbol) else {
            return Response::error(404, &format!("unknown market {}", quoted(symbol)));
        };
        let (channel, max_age, limit) = match path {
            "/api/v1/ticker" => (Channel::Ticker, MAX_AGE_TICKER, Ok(usize::MAX)),
            "/api/v1/depth" => (
                Channel::Depth,
                MAX_AGE_DEPTH,
                params.limit(DEPTH_LIMIT_DEFAULT, DEPTH_LIMIT_MAX),
            ),
            _ => (
                Channel::Trades,
                MAX_AGE_TRADES,
                params.limit(TRADES_LIMIT_DEFAULT, TRADES_LIMIT_MAX),
            ),
        };
        let limit = match limit {
            Ok(l) => l,
            Err(msg) => return Response::error(400, &msg),
        };
        match view.publisher.snapshot_limited(market, channel, limit) {
            Some(body) => Response::json(200, Some(max_age), body),
            None => Response::error(503, "the market is not served as decimals or not loaded"),
        }
    }

    fn health(&self, view: &View<'_>) -> Response {
        let mut j = b"{".to_vec();
        let ok = match &self.status {
            Some(s) => {
                let ok = s.health(&mut j);
                j.push(b',');
                ok
            }
            None => true,
        };
        j.extend_from_slice(
            format!(
                "\"published\":{},\"websocket\":{{\"ready\":{},\"connections\":{}}},\
                 \"status\":\"{}\"}}",
                view.publisher.seq(),
                view.retail.ready.load(Ordering::Relaxed),
                view.retail.connections_active.load(Ordering::Relaxed),
                if ok { "ok" } else { "unavailable" }
            )
            .as_bytes(),
        );
        Response::json(if ok { 200 } else { 503 }, None, j)
    }

    fn metrics(&self, view: &View<'_>) -> String {
        let mut e = Exposition::default();
        let publisher = &*view.publisher;
        let pairs: Vec<(MarketId, String)> = publisher
            .markets()
            .map(|m| (m.id, m.symbol.clone()))
            .collect();
        if let Some(s) = &self.status {
            s.metrics(&pairs, &mut e);
        }
        e.family(
            "exchange_order_book_depth",
            "gauge",
            "Price levels on one side of a market's book, as the public depth shows it.",
        );
        for m in publisher.markets() {
            let (bids, asks) = publisher.level_counts(m.id).unwrap_or((0, 0));
            e.sample(
                "exchange_order_book_depth",
                &[("pair", &m.symbol), ("side", "bid")],
                bids as u64,
            );
            e.sample(
                "exchange_order_book_depth",
                &[("pair", &m.symbol), ("side", "ask")],
                asks as u64,
            );
        }
        let r = view.retail;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        e.single(
            "exchange_ws_connections_active",
            "gauge",
            "Open WebSocket connections.",
            get(&r.connections_active),
        );
        e.family(
            "exchange_ws_messages_sent_total",
            "counter",
            "Public market-data messages written to WebSocket subscribers, by market.",
        );
        for m in publisher.markets() {
            let n = self.counts.ws_sent.get(&m.id).copied().unwrap_or(0);
            e.sample("exchange_ws_messages_sent_total", &[("pair", &m.symbol)], n);
        }
        for (name, help, value) in [
            (
                "ringex_ws_connections_total",
                "WebSocket connections accepted.",
                get(&r.connections_total),
            ),
            (
                "ringex_ws_messages_received_total",
                "WebSocket messages and control frames received.",
                get(&r.messages_in),
            ),
            (
                "ringex_ws_frames_sent_total",
                "WebSocket frames queued to clients (replies, snapshots, updates).",
                get(&r.messages_out),
            ),
            (
                "ringex_ws_bytes_sent_total",
                "Bytes of WebSocket frames queued to clients.",
                get(&r.bytes_out),
            ),
            (
                "ringex_ws_updates_published_total",
                "Public updates the publisher produced.",
                get(&r.updates_published),
            ),
            (
                "ringex_ws_slow_consumers_total",
                "WebSocket clients closed for not reading (1013).",
                get(&r.slow_consumers),
            ),
            (
                "ringex_ws_overruns_total",
                "Times the retail loop fell a whole hand-off queue behind.",
                get(&r.overruns),
            ),
        ] {
            e.single(name, "counter", help, value);
        }
        e.family(
            "ringex_ws_refusals_total",
            "counter",
            "Refusals of WebSocket peers, by reason.",
        );
        for reason in Refusal::ALL {
            e.sample(
                "ringex_ws_refusals_total",
                &[("reason", reason.name())],
                r.refusals.get(reason),
            );
        }
        e.single(
            "ringex_http_connections_active",
            "gauge",
            "Open HTTP connections.",
            self.counts.connections_active,
        );
        e.single(
            "ringex_http_connections_total",
            "counter",
            "HTTP connections accepted.",
            self.counts.connections_total,
        );
        e.family(
            "ringex_http_responses_total",
            "counter",
            "HTTP answers, by status code (this one not yet counted).",
        );
        for (code, n) in &self.counts.responses {
            e.sample(
                "ringex_http_responses_total",
                &[("code", &code.to_string())],
                *n,
            );
        }
        e.text
    }

    fn answer(&mut self, id: usize, r: Response) {
        *self.counts.responses.entry(r.status).or_default() += 1;
        let Some(c) = self.conn(id) else {
            return;
        };
        c.out.extend_from_slice(&render(&r));
        if r.close {
            c.closing = true;
            c.rbuf = Vec::new();
            c.request_since_ns = None;
        }
    }

    /// Writes what the connection has queued; closes it when done if it is closing;
    /// reads on when its output had stopped its reading.
    fn flush(&mut self, registry: &Registry, id: usize) {
        let now = self.now_ns();
        let Some(c) = self.conn(id) else {
            return;
        };
        // Bounded: each write takes bytes or stops.
        while c.out_pos < c.out.len() {
            match c.stream.write(&c.out[c.out_pos..]) {
                Ok(0) => break,
                Ok(n) => {
                    c.out_pos += n;
                    c.last_active_ns = now;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.drop_conn(registry, id);
                    return;
                }
            }
        }
        if c.out_pos == c.out.len() {
            c.out.clear();
            c.out_pos = 0;
            if c.closing {
                self.drop_conn(registry, id);
                return;
            }
            if c.writable_registered {
                c.writable_registered = false;
                let _ =
                    registry.reregister(&mut c.stream, Token(TOKEN_BIT | id), Interest::READABLE);
            }
            if c.read_paused {
                // Reading stopped while the answers waited: the buffer and the socket
                // may hold more requests.
                c.read_paused = false;
                if !self.unread.contains(&id) {
                    self.unread.push(id);
                }
            }
        } else if !c.writable_registered {
            c.writable_registered = true;
            let _ = registry.reregister(
                &mut c.stream,
                Token(TOKEN_BIT | id),
                Interest::READABLE | Interest::WRITABLE,
            );
        }
    }

    fn drop_conn(&mut self, registry: &Registry, id: usize) {
        if self.conn(id).is_none() {
            return;
        }
        let index = id & INDEX_MASK;
        let Some(mut c) = self.conns[index].take() else {
            return;
        };
        let _ = registry.deregister(&mut c.stream);
        self.ips.remove(c.peer);
        self.free.push(index);
        self.counts.connections_active -= 1;
    }
}

/// `s` in double quotes, escaped as in JSON (not as Rust's `{:?}`: "\u{1}").
fn quoted(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len() + 2);
    push_json_str(&mut out, s);
    String::from_utf8(out).unwrap_or_default()
}

fn too_large() -> Response {
    Response::error(431, "the request's head is too large").closing()
}

fn render(r: &Response) -> Vec<u8> {
    let mut out = Vec::with_capacity(192 + r.body.len());
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
        r.status,
        reason_phrase(r.status),
        r.content_type,
        r.body.len()
    );
    match r.max_age {
        Some(s) => {
            let _ = write!(out, "Cache-Control: public, max-age={s}\r\n");
        }
        None => out.extend_from_slice(b"Cache-Control: no-store\r\n"),
    }
    if r.status == 405 {
        out.extend_from_slice(b"Allow: GET\r\n");
    }
    out.extend_from_slice(b"Access-Control-Allow-Origin: *\r\n");
    if r.close {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if r.keep_alive {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&r.body);
    out
}

/// A query string's parameters, percent-decoded; a name given twice is refused.
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(query: &str) -> Result<Params, String> {
        let mut out: Vec<(String, String)> = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            if out.len() == PARAMS_MAX {
                // No path takes more; the check for repeats is quadratic.
                return Err(format!("more than {PARAMS_MAX} parameters"));
            }
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let k = percent_decode(k)?;
            let v = percent_decode(v)?;
            if out.iter().any(|(x, _)| *x == k) {
                return Err(format!("parameter {} given twice", quoted(&k)));
            }
            out.push((k, v));
        }
        Ok(Params(out))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// `limit`: absent is `default`; otherwise 1..=`max`.
    fn limit(&self, default: usize, max: usize) -> Result<usize, String> {
        match self.get("limit") {
            None => Ok(default),
            // Digits only: `parse` alone would take a sign ("+5").
            Some(v) => match v.parse::<usize>() {
                Ok(n) if v.bytes().all(|b| b.is_ascii_digit()) && (1..=max).contains(&n) => Ok(n),
                _ => Err(format!("limit must be a whole number from 1 to {max}")),
            },
        }
    }
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                // Two hex digits exactly: `u8::from_str_radix` alone would take a sign
                // ("%+1").
                let hex = bytes
                    .get(i + 1..i + 3)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => out.push(b),
                    None => return Err("bad percent-encoding in the query".into()),
                }
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| "the query is not UTF-8".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_decoded_and_a_repeated_one_is_refused() {
        let p = Params::parse("market=BTC%2DUSDT&limit=5").unwrap();
        assert_eq!(p.get("market"), Some("BTC-USDT"));
        assert_eq!(p.limit(100, 1000), Ok(5));
        assert!(Params::parse("market=A&market=B").is_err());
        assert!(Params::parse("market=%G1").is_err());
        assert!(Params::parse("market=%2").is_err());
        assert!(Params::parse("market=%+1").is_err());
        assert!(Params::parse("a=1&b=2&c=3&d=4&e=5&f=6&g=7&h=8").is_ok());
        assert!(Params::parse("a=1&b=2&c=3&d=4&e=5&f=6&g=7&h=8&i=9").is_err());
        assert!(Params::parse("market=%-1").is_err());
        let p = Params::parse("limit=%2B5").unwrap();
        assert!(p.limit(100, 1000).is_err());
        let p = Params::parse("limit=0").unwrap();
        assert!(p.limit(100, 1000).is_err());
        let p = Params::parse("limit=1001").unwrap();
        assert!(p.limit(100, 1000).is_err());
        let p = Params::parse("limit=-1").unwrap();
        assert!(p.limit(100, 1000).is_err());
    }

    #[test]
    fn an_answer_has_its_length_cache_policy_and_a_json_error_body() {
        let r = Response::error(404, "no \"such\" thing");
        let text = String::from_utf8(render(&r)).unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 48\r\n\
             Cache-Control: no-store\r\nAccess-Control-Allow-Origin: *\r\n\r\n\
             {\"error\":{\"code\":404,\"msg\":\"no \\\"such\\\" thing\"}}"
        );
    }
}
