//! `ringex http-load`: closed-loop HTTP load with keep-alive against the daemon's HTTP
//! listener (docs/http.md), for docs/benchmarks.md.
//!
//! N connections on one thread over one mio poller; each keeps one request in flight
//! (no pipelining): it sends a GET, reads the whole answer, records the round trip and
//! sends the next. Connection `i` asks for `paths[i % paths.len()]`, so several paths
//! share the run and are reported apart. Answers other than 200 count as errors.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

#[derive(clap::Args, Clone, Debug)]
pub struct HttpLoadArgs {
    /// The daemon's HTTP listener.
    #[arg(long, default_value = "127.0.0.1:9102")]
    pub addr: String,
    /// Keep-alive connections, each with one request in flight.
    #[arg(long, default_value_t = 100)]
    pub connections: usize,
    /// Seconds measured (after one second of warm-up).
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Request targets, spread over the connections (repeat the flag for several).
    #[arg(long = "path", default_values_t = ["/api/v1/depth?market=BTC-USDT&limit=20".to_string(), "/api/v1/ticker?market=BTC-USDT".to_string()])]
    pub paths: Vec<String>,
}

/// Per path: requests answered 200 in the measured window, errors, round-trip latency.
pub struct PathReport {
    pub path: String,
    pub ok: u64,
    pub errors: u64,
    pub bytes: u64,
    pub latency_ns: Histogram<u64>,
}

pub struct HttpReport {
    pub seconds: f64,
    pub paths: Vec<PathReport>,
}

struct Conn {
    stream: TcpStream,
    path: usize,
    request: Vec<u8>,
    sent_at: Instant,
    buf: Vec<u8>,
    connected: bool,
}

const WARM_UP: Duration = Duration::from_secs(1);

pub fn run(args: &HttpLoadArgs) -> Result<HttpReport, String> {
    let addr: SocketAddr = args
        .addr
        .parse()
        .map_err(|e| format!("--addr {:?}: {e}", args.addr))?;
    if args.paths.is_empty() || args.connections == 0 {
        return Err("at least one --path and one connection".into());
    }
    let mut poll = Poll::new().map_err(|e| e.to_string())?;
    let mut conns = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        poll.registry()
            .register(
                &mut stream,
                Token(i),
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|e| e.to_string())?;
        let path = i % args.paths.len();
        conns.push(Conn {
            stream,
            path,
            request: format!(
                "GET {} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: ringex-http-load\r\n\r\n",
                args.paths[path]
            )
            .into_bytes(),
            sent_at: Instant::now(),
            buf: Vec::with_capacity(16 * 1024),
            connected: false,
        });
    }
    let mut reports: Vec<PathReport> = args
        .paths
        .iter()
        .map(|p| PathReport {
            path: p.clone(),
            ok: 0,
            errors: 0,
            bytes: 0,
            latency_ns: Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("bounds"),
        })
        .collect();
    let start = Instant::now();
    let measure_from = start + WARM_UP;
    let end = measure_from + Duration::from_secs_f64(args.duration);
    let mut events = Events::with_capacity(1024);
    let mut chunk = vec![0u8; 64 * 1024];
    while Instant::now() < end {
        poll.poll(&mut events, Some(Duration::from_millis(100)))
            .map_err(|e| e.to_string())?;
        for ev in events.iter() {
            let i = ev.token().0;
            let c = &mut conns[i];
            if ev.is_writable() && !c.connected {
                c.connected = true;
                c.sent_at = Instant::now();
                c.stream
                    .write_all(&c.request)
                    .map_err(|e| format!("send: {e}"))?;
            }
            if !ev.is_readable() {
                continue;
            }
            loop {
                match c.stream.read(&mut chunk) {
                    Ok(0) => return Err(format!("connection {i} closed by the server")),
                    Ok(n) => {
                        c.buf.extend_from_slice(&chunk[..n]);
                        if n < chunk.len() {
                            // The socket is empty: later data raises a new event.
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(format!("read: {e}")),
                }
            }
            // Bounded: one request in flight, so at most one answer.
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut r = httparse::Response::new(&mut headers);
            let Ok(httparse::Status::Complete(head)) = r.parse(&c.buf) else {
                continue;
            };
            let len: usize = r
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                .ok_or("an answer without Content-Length")?;
            if c.buf.len() < head + len {
                continue;
            }
            let now = Instant::now();
            if now >= measure_from {
                let rep = &mut reports[c.path];
                if r.code == Some(200) {
                    rep.ok += 1;
                } else {
                    rep.errors += 1;
                }
                rep.bytes += (head + len) as u64;
                let _ = rep
                    .latency_ns
                    .record((now - c.sent_at).as_nanos().max(1) as u64);
            }
            c.buf.clear();
            c.sent_at = now;
            c.stream
                .write_all(&c.request)
                .map_err(|e| format!("send: {e}"))?;
        }
    }
    let seconds = (Instant::now() - measure_from).as_secs_f64();
    let report = HttpReport {
        seconds,
        paths: reports,
    };
    for p in &report.paths {
        println!(
            "http-load: {} connections={} requests/s={:.0} p50={}us p99={}us p99.9={}us \
             errors={} bytes/answer={}",
            p.path,
            args.connections.div_ceil(args.paths.len()),
            p.ok as f64 / seconds,
            p.latency_ns.value_at_quantile(0.5) / 1000,
            p.latency_ns.value_at_quantile(0.99) / 1000,
            p.latency_ns.value_at_quantile(0.999) / 1000,
            p.errors,
            p.bytes.checked_div(p.ok + p.errors).unwrap_or(0),
        );
    }
    let total: u64 = report.paths.iter().map(|p| p.ok).sum();
    println!(
        "http-load: total requests/s={:.0} over {seconds:.1} s",
        total as f64 / seconds
    );
    Ok(report)
}
