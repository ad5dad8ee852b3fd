//! `ringex load --ws N`: N WebSocket subscribers on a busy market while the binary load
//! runs, measured in the same run against the binary load alone.
//!
//! Phases: (1) the binary load alone (`load::run`, unless `--ws-no-baseline`): the
//! baseline; (2) N connections open, each subscribes to the market's channels, and stay
//! idle for `--ws-idle` seconds: the daemon's memory per connection is its RSS growth
//! over N (`--ws-daemon-pid`); (3) the binary load again, while every subscriber reads:
//! messages and bytes delivered, trade-to-client latency, connections still held. The
//! report gives the binary load's latency in (1) and (3) side by side.
//!
//! The subscribers run on one thread over one mio poller, non-blocking, with the
//! RFC 6455 client rules (masked frames, pongs to the server's pings) and, with
//! `--ws-compression on`, permessage-deflate (each message inflated on its own, as the
//! server compresses it). Trade-to-client latency is the time a trade message is read
//! minus the trade's `time` (the command's journaled timestamp, in whole milliseconds),
//! so it counts the whole path (gateway, journal, engine, publisher, socket) and reads up
//! to 1 ms high. Only `--ws-sample` connections, spread evenly, are inflated and read
//! for the latency and the payload size; the others' frames are counted (messages and
//! bytes delivered) without decoding, so one generator thread can keep up with what
//! thousands of subscribers are sent.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flate2::{Decompress, FlushDecompress};
use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::load::{self, LoadArgs, Report};

/// Command-line arguments of the WebSocket part of `ringex load`.
#[derive(clap::Args, Clone, Debug)]
pub struct WsLoadArgs {
    /// WebSocket subscribers to hold during the load (0: none, the binary load only).
    #[arg(long = "ws", default_value_t = 0)]
    pub ws_connections: u32,
    /// The daemon's WebSocket listener.
    #[arg(long = "ws-addr", default_value = "127.0.0.1:9101")]
    pub ws_addr: String,
    /// Offer permessage-deflate: on or off.
    #[arg(long = "ws-compression", default_value = "on")]
    pub ws_compression: String,
    #[arg(long = "ws-market", default_value = "BTC-USDT")]
    pub ws_market: String,
    #[arg(long = "ws-channels", value_delimiter = ',', default_values_t = ["trades".to_string(), "depth".to_string()])]
    pub ws_channels: Vec<String>,
    /// The daemon's process id, to read its RSS before and after the connections.
    #[arg(long = "ws-daemon-pid")]
    pub ws_daemon_pid: Option<u32>,
    /// Seconds the subscribers stay idle before the load (the memory figure is taken at
    /// the end of it).
    #[arg(long = "ws-idle", default_value_t = 2.0)]
    pub ws_idle_s: f64,
    /// Skip the binary load alone (the baseline).
    #[arg(long = "ws-no-baseline")]
    pub ws_no_baseline: bool,
    /// Connections whose messages are inflated and read for the latency and the
    /// payload size, spread evenly over all (every subscriber gets the same stream);
    /// the others' frames are counted, not decoded, so the generator's own work does
    /// not limit what the server can be seen to deliver. 0: all of them.
    #[arg(long = "ws-sample", default_value_t = 100)]
    pub ws_sample: u32,
}

impl Default for WsLoadArgs {
    fn default() -> Self {
        WsLoadArgs {
            ws_connections: 0,
            ws_addr: "127.0.0.1:9101".into(),
            ws_compression: "on".into(),
            ws_market: "BTC-USDT".into(),
            ws_channels: vec!["trades".into(), "depth".into()],
            ws_daemon_pid: None,
            ws_idle_s: 2.0,
            ws_no_baseline: false,
            ws_sample: 100,
        }
    }
}

/// What the subscribers saw.
#[derive(Clone, Debug, Default)]
pub struct WsReport {
    pub ws_connections: u32,
    /// Connections that completed the handshake and the subscribe.
    pub subscribed: u32,
    /// Connections still open at the end.
    pub held: u32,
    /// Connections the server did not upgrade (an HTTP error such as 503 at a limit).
    pub refused: u32,
    pub ws_compression: bool,
    /// During the load phase.
    pub messages: u64,
    pub seconds: f64,
    pub wire_bytes: u64,
    /// Connections decoded (`--ws-sample`), and their bytes on the wire and inflated.
    pub sampled: u32,
    pub sampled_wire_bytes: u64,
    pub payload_bytes: u64,
    pub trades: u64,
    pub latency_p50_us: u64,
    pub latency_p99_us: u64,
    pub latency_max_us: u64,
    /// Close codes the server sent, with counts and the first reason given.
    pub closes: Vec<(u16, u64, String)>,
    /// The daemon's RSS before and after the connections, KiB.
    pub rss_before_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
}

/// Phases the subscriber thread goes through, set by the driver.
const PHASE_IDLE: u8 = 0;
const PHASE_MEASURE: u8 = 1;
const PHASE_STOP: u8 = 2;

struct WsConn {
    stream: TcpStream,
    buf: Vec<u8>,
    handshaken: bool,
    subscribed: bool,
    open: bool,
    refused: bool,
    /// Decoded for the latency and payload figures.
    sampled: bool,
    out: Vec<u8>,
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn now_wall_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A masked client text frame (mask zero: allowed, the server unmasks by XOR).
fn client_frame(opcode: u8, payload: &[u8], out: &mut Vec<u8>) {
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n < 65_536 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(payload);
}

/// Counters of the subscriber thread.
struct Tally {
    messages: u64,
    wire_bytes: u64,
    sampled_wire_bytes: u64,
    payload_bytes: u64,
    trades: u64,
    latency_us: Histogram<u64>,
    closes: std::collections::BTreeMap<u16, (u64, String)>,
}

/// Opens the connections, subscribes, reads until told to stop.
fn subscribers(
    args: WsLoadArgs,
    phase: Arc<AtomicU8>,
    ready: std::sync::mpsc::Sender<u32>,
) -> Result<(WsReport, f64), String> {
    let addr: SocketAddr = args
        .ws_addr
        .parse()
        .map_err(|e| format!("--ws-addr {}: {e}", args.ws_addr))?;
    let compression = args.ws_compression == "on";
    let mut poll = Poll::new().map_err(|e| e.to_string())?;
    let mut conns = Vec::with_capacity(args.ws_connections as usize);
    let subscribe = format!(
        "{{\"method\":\"subscribe\",\"id\":1,\"params\":{{\"channels\":{},\"markets\":[\"{}\"]}}}}",
        serde_json::to_string(&args.ws_channels).unwrap_or_default(),
        args.ws_market
    );
    let every = match args.ws_sample {
        0 => 1,
        n => (args.ws_connections / n).max(1),
    };
    for i in 0..args.ws_connections {
        let std = std::net::TcpStream::connect(addr)
            .map_err(|e| format!("connection {i} to {addr}: {e}"))?;
        std.set_nodelay(true).ok();
        let mut request = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        );
        if compression {
            request.push_str(
                "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
            );
        }
        request.push_str("\r\n");
        let mut first = request.into_bytes();
        client_frame(0x1, subscribe.as_bytes(), &mut first);
        (&std).write_all(&first).map_err(|e| e.to_string())?;
        std.set_nonblocking(true).map_err(|e| e.to_string())?;
        let mut stream = TcpStream::from_std(std);
        poll.registry()
            .register(&mut stream, Token(i as usize), Interest::READABLE)
            .map_err(|e| e.to_string())?;
        conns.push(WsConn {
            stream,
            buf: Vec::new(),
            handshaken: false,
            subscribed: false,
            open: true,
            refused: false,
            sampled: i % every == 0,
            out: Vec::new(),
        });
    }
    let mut tally = Tally {
        messages: 0,
        wire_bytes: 0,
        sampled_wire_bytes: 0,
        payload_bytes: 0,
        trades: 0,
        latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds"),
        closes: Default::default(),
    };
    let mut inflate = Inflate {
        inflater: Decompress::new(false),
        input: Vec::new(),
        output: Vec::new(),
    };
    let mut events = Events::with_capacity(4096);
    let mut scratch = vec![0u8; 256 * 1024];
    let mut ready_sent = false;
    let mut measuring_since: Option<Instant> = None;
    let mut measured = 0.0;
    let deadline_subscribed = Instant::now() + Duration::from_secs(120);
    loop {
        let p = phase.load(Ordering::Relaxed);
        if p == PHASE_STOP {
            break;
        }
        if p == PHASE_MEASURE && measuring_since.is_none() {
            measuring_since = Some(Instant::now());
            tally.messages = 0;
            tally.wire_bytes = 0;
            tally.sampled_wire_bytes = 0;
            tally.payload_bytes = 0;
            tally.trades = 0;
            tally.latency_us.reset();
        }
        if !ready_sent {
            let n = conns.iter().filter(|c| c.subscribed).count() as u32;
            // A connection the server refused (HTTP 503 past `connections_per_ip`) or
            // closed will never subscribe: the load does not wait for it.
            let settled = conns.iter().all(|c| c.subscribed || !c.open);
            if settled || Instant::now() > deadline_subscribed {
                let _ = ready.send(n);
                ready_sent = true;
            }
        }
        poll.poll(&mut events, Some(Duration::from_millis(20)))
            .map_err(|e| e.to_string())?;
        for ev in events.iter() {
            let c = &mut conns[ev.token().0];
            // Bounded: reads until the socket is empty, at most 64 times.
            for _ in 0..64 {
                match c.stream.read(&mut scratch) {
                    Ok(0) => {
                        c.open = false;
                        break;
                    }
                    Ok(n) => {
                        tally.wire_bytes += n as u64;
                        if c.sampled {
                            tally.sampled_wire_bytes += n as u64;
                        }
                        if c.handshaken && c.buf.is_empty() {
                            // The common case: frames parsed where they were read, only
                            // an unfinished one kept for the next read.
                            let used = frames(c, &scratch[..n], &mut tally, &mut inflate);
                            c.buf.extend_from_slice(&scratch[used..n]);
                        } else {
                            c.buf.extend_from_slice(&scratch[..n]);
                            parse(c, &mut tally, &mut inflate);
                        }
                        if n < scratch.len() {
                            // A short read took all the socket held: bytes that arrive
                            // later raise a new readiness event (mio is edge-triggered,
                            // and Linux signals each arrival), so the read that would
                            // only say WouldBlock is skipped; it was half the reads.
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        c.open = false;
                        break;
                    }
                }
            }
            if !c.out.is_empty() {
                let _ = c.stream.write(&c.out);
                c.out.clear();
            }
        }
    }
    if let Some(since) = measuring_since {
        measured = since.elapsed().as_secs_f64();
    }
    let h = &tally.latency_us;
    let report = WsReport {
        ws_connections: args.ws_connections,
        subscribed: conns.iter().filter(|c| c.subscribed).count() as u32,
        held: conns.iter().filter(|c| c.open).count() as u32,
        refused: conns.iter().filter(|c| c.refused).count() as u32,
        ws_compression: compression,
        messages: tally.messages,
        seconds: measured,
        wire_bytes: tally.wire_bytes,
        sampled: conns.iter().filter(|c| c.sampled).count() as u32,
        sampled_wire_bytes: tally.sampled_wire_bytes,
        payload_bytes: tally.payload_bytes,
        trades: tally.trades,
        latency_p50_us: h.value_at_quantile(0.5),
        latency_p99_us: h.value_at_quantile(0.99),
        latency_max_us: h.max(),
        closes: tally
            .closes
            .into_iter()
            .map(|(code, (n, reason))| (code, n, reason))
            .collect(),
        rss_before_kib: None,
        rss_after_kib: None,
    };
    Ok((report, measured))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The sampled connections' inflater and its buffers, reused message after message.
struct Inflate {
    inflater: Decompress,
    input: Vec<u8>,
    output: Vec<u8>,
}

/// Handles the complete handshake response and frames in a connection's buffer.
fn parse(c: &mut WsConn, tally: &mut Tally, inflate: &mut Inflate) {
    if !c.handshaken {
        let Some(end) = c.buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            return;
        };
        if !c.buf.starts_with(b"HTTP/1.1 101") {
            c.open = false;
            c.refused = true;
            c.buf.clear();
            return;
        }
        c.buf.drain(..end + 4);
        c.handshaken = true;
    }
    let buf = std::mem::take(&mut c.buf);
    let used = frames(c, &buf, tally, inflate);
    c.buf = buf;
    c.buf.drain(..used);
}

/// Handles the complete frames at the start of `bytes`; returns the bytes they took.
fn frames(c: &mut WsConn, bytes: &[u8], tally: &mut Tally, inflate: &mut Inflate) -> usize {
    let mut at = 0;
    // Bounded: each frame consumes at least two bytes.
    for _ in 0..bytes.len() / 2 + 1 {
        let b = &bytes[at..];
        if b.len() < 2 {
            break;
        }
        let (fin_op, len7) = (b[0], b[1] & 0x7f);
        let (len, head) = match len7 {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 if b.len() >= 10 => {
                let mut l = [0u8; 8];
                l.copy_from_slice(&b[2..10]);
                (u64::from_be_bytes(l) as usize, 10)
            }
            126 | 127 => break,
            n => (n as usize, 2),
        };
        if b.len() < head + len {
            break;
        }
        let payload = &b[head..head + len];
        let opcode = fin_op & 0x0f;
        let rsv1 = fin_op & 0x40 != 0;
        match opcode {
            0x1 if !c.sampled => {
                // Counted, not decoded: replies are never compressed, so the subscribe's
                // is found as it is.
                tally.messages += 1;
                if !rsv1 && payload.starts_with(b"{\"id\":1,\"result\"") {
                    c.subscribed = true;
                }
            }
            0x1 => {
                let text: &[u8] = if rsv1 {
                    let Inflate {
                        inflater,
                        input,
                        output: inflated,
                    } = &mut *inflate;
                    inflated.clear();
                    inflated.reserve(len * 8 + 64);
                    inflater.reset(false);
                    input.clear();
                    input.extend_from_slice(payload);
                    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
                    // Bounded: grows the output until the input is consumed.
                    for _ in 0..32 {
                        let before = inflater.total_in();
                        let _ = inflater.decompress_vec(
                            &input[(inflater.total_in() as usize).min(input.len())..],
                            inflated,
                            FlushDecompress::Sync,
                        );
                        if inflater.total_in() as usize >= input.len()
                            || inflater.total_in() == before && inflated.len() < inflated.capacity()
                        {
                            break;
                        }
                        inflated.reserve(inflated.capacity());
                    }
                    &inflated[..]
                } else {
                    payload
                };
                tally.messages += 1;
                tally.payload_bytes += text.len() as u64;
                if text.starts_with(b"{\"id\":1,\"result\"") {
                    c.subscribed = true;
                } else if text.starts_with(b"{\"channel\":\"trades\"")
                    && contains(text, b"\"type\":\"update\"")
                {
                    let now_us = now_wall_us();
                    let mut rest = text;
                    // Bounded by the message's length: each step moves past a match.
                    while let Some(i) = rest.windows(7).position(|w| w == b"\"time\":") {
                        rest = &rest[i + 7..];
                        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
                        if let Some(ms) = std::str::from_utf8(&rest[..digits])
                            .ok()
                            .and_then(|s| s.parse::<u64>().ok())
                        {
                            tally.trades += 1;
                            let _ = tally
                                .latency_us
                                .record(now_us.saturating_sub(ms * 1000).max(1));
                        }
                    }
                }
            }
            0x8 => {
                let code = if len >= 2 {
                    u16::from_be_bytes([payload[0], payload[1]])
                } else {
                    1005
                };
                let entry = tally.closes.entry(code).or_insert_with(|| {
                    let reason = payload.get(2..).unwrap_or_default();
                    (0, String::from_utf8_lossy(reason).into_owned())
                });
                entry.0 += 1;
                c.open = false;
            }
            0x9 => client_frame(0xA, payload, &mut c.out),
            _ => {}
        }
        at += head + len;
    }
    at
}

/// Runs the binary load alone, then with the subscribers, and prints both.
pub fn run(args: &LoadArgs, ws: &WsLoadArgs) -> Result<(Option<Report>, Report, WsReport), String> {
    let baseline = if ws.ws_no_baseline {
        None
    } else {
        eprintln!("ringex load --ws: phase 1, the binary load alone");
        Some(load::run(args)?)
    };
    let rss_before = ws.ws_daemon_pid.and_then(rss_kib);
    let phase = Arc::new(AtomicU8::new(PHASE_IDLE));
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let thread = {
        let (ws, phase) = (ws.clone(), Arc::clone(&phase));
        std::thread::Builder::new()
            .name("ws-subscribers".into())
            .spawn(move || subscribers(ws, phase, ready_tx))
            .map_err(|e| e.to_string())?
    };
    let subscribed = ready
        .recv_timeout(Duration::from_secs(180))
        .map_err(|_| "the subscribers did not get going".to_string())?;
    eprintln!(
        "ringex load --ws: phase 2, {subscribed} of {} subscribed; idle {:.1} s",
        ws.ws_connections, ws.ws_idle_s
    );
    std::thread::sleep(Duration::from_secs_f64(ws.ws_idle_s));
    let rss_after = ws.ws_daemon_pid.and_then(rss_kib);
    eprintln!("ringex load --ws: phase 3, the binary load with the subscribers reading");
    phase.store(PHASE_MEASURE, Ordering::Relaxed);
    let with_ws = load::run(args);
    phase.store(PHASE_STOP, Ordering::Relaxed);
    let (mut report, _) = thread
        .join()
        .map_err(|_| "the subscriber thread panicked".to_string())??;
    let with_ws = with_ws?;
    report.rss_before_kib = rss_before;
    report.rss_after_kib = rss_after;
    print(baseline.as_ref(), &with_ws, &report);
    Ok((baseline, with_ws, report))
}

fn print(baseline: Option<&Report>, with_ws: &Report, ws: &WsReport) {
    let p50 = |r: &Report| r.latency.get("all").map_or(0.0, |p| p.p50_us);
    let p99 = |r: &Report| r.latency.get("all").map_or(0.0, |p| p.p99_us);
    println!(
        "ringex load --ws: {} subscribers, compression {}",
        ws.ws_connections,
        if ws.ws_compression { "on" } else { "off" }
    );
    println!(
        "  held {} of {} (subscribed {}); closes by the server {:?}",
        ws.held, ws.ws_connections, ws.subscribed, ws.closes
    );
    if ws.refused > 0 {
        println!(
            "  refused at the upgrade: {} (HTTP 503 past the server's [websocket] \
             connections_per_ip, 64 by default, or connections_max)",
            ws.refused
        );
    }
    if let (Some(a), Some(b)) = (ws.rss_before_kib, ws.rss_after_kib) {
        let per = (b.saturating_sub(a) * 1024) / u64::from(ws.ws_connections.max(1));
        println!("  daemon RSS {a} KiB -> {b} KiB: {per} bytes per idle connection");
    }
    let secs = ws.seconds.max(1e-9);
    println!(
        "  delivered {} messages in {:.1} s: {:.0} messages/s; {} trades, trade-to-client \
         latency p50 {} us p99 {} us max {} us (ms-resolution timestamps)",
        ws.messages,
        ws.seconds,
        ws.messages as f64 / secs,
        ws.trades,
        ws.latency_p50_us,
        ws.latency_p99_us,
        ws.latency_max_us
    );
    println!(
        "  bytes on the wire {} ({:.1} MB/s); the {} decoded connections: wire {}, payload \
         {} : wire/payload {:.2} (latency and payload from them)",
        ws.wire_bytes,
        ws.wire_bytes as f64 / secs / 1e6,
        ws.sampled,
        ws.sampled_wire_bytes,
        ws.payload_bytes,
        ws.sampled_wire_bytes as f64 / (ws.payload_bytes.max(1) as f64)
    );
    match baseline {
        Some(b) => println!(
            "  binary protocol: p50 {:.1} us p99 {:.1} us alone; p50 {:.1} us p99 {:.1} us with \
             the subscribers ({:+.0}% at p50); served {:.0} req/s alone, {:.0} with",
            p50(b),
            p99(b),
            p50(with_ws),
            p99(with_ws),
            (p50(with_ws) / p50(b).max(1e-9) - 1.0) * 100.0,
            b.served_rate,
            with_ws.served_rate
        ),
        None => println!(
            "  binary protocol with the subscribers: p50 {:.1} us p99 {:.1} us, served {:.0} req/s",
            p50(with_ws),
            p99(with_ws),
            with_ws.served_rate
        ),
    }
}
