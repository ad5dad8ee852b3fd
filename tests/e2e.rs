//! The whole exchange end to end: `serve` (gateway + node + journal) on loopback with the
//! embedded demo config, driven by the Rust client library and by an independent Python
//! client written from `docs/protocol.md`. A restart keeps every acknowledged order.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command as Process, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use ringex::config::{Config, DEFAULT_CONFIG_TOML};
use ringex_engine::{OrderRef, Side, TimeInForce};
use ringex_gateway::protocol::Liquidity;
use ringex_tools::client::{Client, ClientOptions, OrderParams};

const BTC_USDT: u32 = 1;
/// Demo keys of the embedded config.
const MAKER: (u64, &str) = (1, "demo-secret-1001");
const TAKER: (u64, &str) = (2, "demo-secret-1002");

/// The embedded config with its data in `dir`, ephemeral ports and small segments.
fn config_text(dir: &Path, topology: &str) -> String {
    DEFAULT_CONFIG_TOML
        .replace(
            "data_dir = \"./data\"",
            &format!("data_dir = \"{}\"", dir.display()),
        )
        .replace("127.0.0.1:9100", "127.0.0.1:0")
        .replace("127.0.0.1:9103", "127.0.0.1:0")
        .replace("127.0.0.1:9101", "127.0.0.1:0")
        .replace("127.0.0.1:9102", "127.0.0.1:0")
        .replace("segment_size_mib = 64", "segment_size_mib = 1")
        .replace("log_every_seconds = 5", "log_every_seconds = 0")
        .replace("topology = \"auto\"", &format!("topology = \"{topology}\""))
}

/// The node of the embedded default config (inline topology, as on 2 cores) on ephemeral
/// ports over `dir`, in a thread: its listeners, its stop flag and the thread.
fn serve_inline(
    dir: &Path,
) -> (
    ringex::serve::Listening,
    Arc<AtomicBool>,
    JoinHandle<Result<(), String>>,
) {
    let config = Config::parse(&config_text(dir, "inline"), "e2e.toml").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready) = mpsc::channel();
    let flag = Arc::clone(&stop);
    let thread = std::thread::spawn(move || {
        ringex::serve::serve_listening(&config, flag, move |l| {
            let _ = ready_tx.send(l);
        })
    });
    let l = ready
        .recv_timeout(Duration::from_secs(30))
        .expect("listening");
    (l, stop, thread)
}

struct Running {
    trading: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<(), String>>>,
}

impl Running {
    fn start(dir: &Path, topology: &str) -> Running {
        Running::start_with(&config_text(dir, topology))
    }

    fn start_with(text: &str) -> Running {
        let config = Config::parse(text, "e2e.toml").expect("valid config");
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready) = mpsc::channel();
        let flag = Arc::clone(&stop);
        let thread =
            std::thread::spawn(move || ringex::serve::serve(&config, flag, Some(ready_tx)));
        let (trading, _admin) = ready
            .recv_timeout(Duration::from_secs(30))
            .expect("the exchange starts listening");
        Running {
            trading,
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let result = self.thread.take().unwrap().join().unwrap();
        assert_eq!(result, Ok(()), "clean shutdown");
    }
}

fn options() -> ClientOptions {
    ClientOptions {
        timeout: Duration::from_secs(10),
        ..ClientOptions::default()
    }
}

#[test]
fn a_maker_quotes_a_taker_crosses_and_a_restart_keeps_the_resting_remainder() {
    maker_taker_and_restart("fused");
}

#[test]
fn the_same_through_the_inline_topology() {
    maker_taker_and_restart("inline");
}

fn maker_taker_and_restart(topology: &str) {
    let dir = tempfile::tempdir().unwrap();
    let exchange = Running::start(dir.path(), topology);
    let mut maker = Client::connect(exchange.trading, MAKER.0, MAKER.1, options()).unwrap();
    let mut taker = Client::connect(exchange.trading, TAKER.0, TAKER.1, options()).unwrap();
    let ask = maker
        .new_order(
            &OrderParams::limit(BTC_USDT, Side::Sell, 6_001_000, 5)
                .client_order_id(7)
                .tif(TimeInForce::PostOnly),
        )
        .unwrap();
    let ask_id = ask.order_id().expect("accepted");
    let r = taker
        .new_order(&OrderParams::limit(BTC_USDT, Side::Buy, 6_002_000, 3))
        .unwrap();
    let fill = *r.fills().next().expect("the taker is filled");
    assert_eq!(
        (fill.price, fill.qty, fill.liquidity),
        (6_001_000, 3, Liquidity::Taker)
    );
    // The maker hears of its fill without asking.
    let maker_fill = loop {
        match maker.poll(Duration::from_secs(5)).unwrap() {
            Some(ringex_gateway::protocol::ServerMessage::Filled(f)) => break f,
            Some(_) => continue,
            None => panic!("no fill for the maker"),
        }
    };
    assert_eq!(maker_fill.client_order_id, 7);
    assert_eq!(maker_fill.liquidity, Liquidity::Maker);
    assert_eq!(maker_fill.match_id, fill.match_id);
    drop(maker);
    drop(taker);
    exchange.stop();

    // A restart recovers from the snapshot and journal: the remainder still rests.
    let exchange = Running::start(dir.path(), topology);
    let mut maker = Client::connect(exchange.trading, MAKER.0, MAKER.1, options()).unwrap();
    let open = maker.open_orders(BTC_USDT).unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!((open[0].order_id, open[0].remaining_qty), (ask_id, 2));
    assert_eq!(open[0].client_order_id, 7);
    // Replace through the gateway: a pure decrease keeps priority, a price change loses it.
    let r = maker
        .replace(BTC_USDT, OrderRef::Client(7), 6_001_000, 1)
        .unwrap();
    assert!(r.replaced().expect("replaced").priority_kept);
    let r = maker
        .replace(BTC_USDT, OrderRef::Client(7), 6_003_000, 1)
        .unwrap();
    let replaced = r.replaced().expect("replaced");
    assert!(!replaced.priority_kept);
    assert_eq!((replaced.price, replaced.client_order_id), (6_003_000, 7));
    let r = maker.mass_cancel(0).unwrap();
    assert_eq!(r.mass_cancel_done().expect("done").count, 1);
    assert!(maker.open_orders(0).unwrap().is_empty());
    drop(maker);
    exchange.stop();
}

#[test]
fn a_bootstrap_larger_than_the_rings_completes_and_one_the_journal_refuses_fails_the_start() {
    // 3,000 funded accounts: ~9,000 bootstrap commands through 64-slot rings.
    let dir = tempfile::tempdir().unwrap();
    let mut text = config_text(dir.path(), "fused")
        .replace("input_ring_size = 65536", "input_ring_size = 64")
        .replace("output_ring_size = 262144", "output_ring_size = 64")
        .replace("batch_max = 512", "batch_max = 64");
    for id in 0..3_000u32 {
        text.push_str(&format!(
            "\n[[accounts]]\nid = {}\ndeposits = {{ BTC = 1000, USDT = 1000 }}\n",
            10_000 + id
        ));
    }
    let config = Config::parse(&text, "big.toml").expect("valid config");
    let stop = Arc::new(AtomicBool::new(true)); // stop as soon as it listens
    assert_eq!(ringex::serve::serve(&config, stop, None), Ok(()));

    // A journal that refuses every append (less free space than it keeps in reserve):
    // the engine answers each bootstrap command `Unavailable`, and the start fails and
    // says which, instead of claiming a bootstrap it did not do. (Commands the engine
    // itself would refuse never get here: the config check runs them first.)
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(dir.path(), "inline")
        .replace("low_space_mib = 256", "low_space_mib = 1000000000");
    let config = Config::parse(&text, "full.toml").expect("valid config");
    let stop = Arc::new(AtomicBool::new(true));
    let err = ringex::serve::serve(&config, stop, None).unwrap_err();
    assert!(err.contains("bootstrap of assets[0] was refused"), "{err}");
    assert!(err.contains("refused: unavailable"), "{err}");
}

#[test]
fn a_bootstrap_that_stopped_part_way_is_completed_by_the_next_start() {
    // The first start journals exactly a prefix of the full bootstrap (as if it had
    // died part-way); the next start, with the full config, finds the journal holding
    // nothing but that prefix and submits the rest.
    let dir = tempfile::tempdir().unwrap();
    let partial = config_text(dir.path(), "inline");
    let full = format!(
        "{partial}\n[[accounts]]\nid = 4242\ndeposits = {{ USDT = 1000 }}\n\
         api_keys = [{{ key_id = 42, secret = \"late-secret\" }}]\n"
    );
    let start = Running::start_with;
    start(&partial).stop();
    let exchange = start(&full);
    let mut late = Client::connect(exchange.trading, 42, "late-secret", options())
        .expect("the rest of the bootstrap was submitted");
    late.logout().unwrap();
    exchange.stop();
    // A later start finds the whole bootstrap and adds nothing.
    let exchange = start(&full);
    let mut late = Client::connect(exchange.trading, 42, "late-secret", options()).unwrap();
    late.logout().unwrap();
    exchange.stop();
}

#[test]
fn an_independent_python_client_trades_against_ringex_start() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("e2e.toml");
    std::fs::write(&config_path, config_text(dir.path(), "auto")).unwrap();
    let mut server = Process::new(env!("CARGO_BIN_EXE_ringex"))
        .args(["start", "--config"])
        .arg(&config_path)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(server.stderr.take().unwrap());
    let mut trading = None;
    let mut line = String::new();
    for _ in 0..100 {
        line.clear();
        if stderr.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if let Some(rest) = line.split("binary protocol on ").nth(1) {
            trading = rest.split(',').next().map(str::to_string);
            break;
        }
    }
    let trading = trading.expect("ringex start reports its listener");
    let probe = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/python/probe.py");
    let out = Process::new("python3")
        .arg(&probe)
        .args(["--addr", &trading, "--count", "50"])
        .output()
        .expect("python3 runs");
    unsafe {
        libc::kill(server.id() as i32, libc::SIGTERM);
    }
    let status = server.wait().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("round trips 100"), "{stdout}");
    assert!(status.success(), "exit 0 after SIGTERM");
}

/// The WebSocket edge of a running exchange: a subscriber sees the binary maker's quote in
/// the depth stream, and a WebSocket order crosses it and reaches the binary taker's
/// session as a fill. Through the real node (inline topology, as on 2 cores).
#[test]
fn a_websocket_client_watches_and_trades_beside_the_binary_protocol() {
    use serde_json::{json, Value};
    use tungstenite::Message;
    let dir = tempfile::tempdir().unwrap();
    let (l, stop, thread) = serve_inline(dir.path());
    let ws_addr = l
        .websocket
        .expect("the WebSocket listener is on by default");
    let stream = std::net::TcpStream::connect(ws_addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let (mut ws, response) = tungstenite::client(format!("ws://{ws_addr}/ws"), stream).unwrap();
    assert_eq!(response.status(), 101);
    let next = |ws: &mut tungstenite::WebSocket<std::net::TcpStream>| -> Value {
        loop {
            if let Message::Text(t) = ws.read().unwrap() {
                return serde_json::from_str(t.as_str()).unwrap();
            }
        }
    };
    let sub = json!({"method": "subscribe", "id": 1,
                     "params": {"channels": ["depth"], "markets": ["BTC-USDT"]}});
    ws.send(Message::text(sub.to_string())).unwrap();
    assert_eq!(next(&mut ws)["id"], 1);
    let snapshot = next(&mut ws);
    assert_eq!(snapshot["type"], "snapshot");
    let mut maker = Client::connect(l.trading, MAKER.0, MAKER.1, options()).unwrap();
    maker
        .new_order(&OrderParams::limit(BTC_USDT, Side::Sell, 6_001_000, 5))
        .unwrap();
    let diff = loop {
        let m = next(&mut ws);
        if m["channel"] == "depth" {
            break m;
        }
    };
    assert_eq!(diff["asks"], json!([["60010.00", "0.0005"]]));
    assert_eq!(
        diff["first"].as_u64().unwrap(),
        snapshot["last"].as_u64().unwrap() + 1
    );
    // The taker trades over WebSocket with the demo key of account 1002.
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let secret_hash = ringex_gateway::protocol::secret_hash(TAKER.1.as_bytes());
    let sig = ringex_gateway::protocol::sign_login(&secret_hash, TAKER.0, ts, 1);
    let hex: String = sig.iter().map(|b| format!("{b:02x}")).collect();
    let auth = json!({"method": "auth", "id": 2,
                      "params": {"key": TAKER.0, "timestamp": ts, "nonce": 1, "signature": hex}});
    ws.send(Message::text(auth.to_string())).unwrap();
    let authed = loop {
        let m = next(&mut ws);
        if m["id"] == 2 {
            break m;
        }
    };
    assert_eq!(authed["result"]["account"], 1002, "{authed}");
    let order = json!({"method": "order.place", "id": 3, "params": {
        "market": "BTC-USDT", "side": "buy", "price": "60010.00", "qty": "0.0002"}});
    ws.send(Message::text(order.to_string())).unwrap();
    let placed = loop {
        let m = next(&mut ws);
        if m["id"] == 3 {
            break m;
        }
    };
    assert_eq!(placed["result"]["status"], "filled", "{placed}");
    let maker_fill = loop {
        match maker.poll(Duration::from_secs(5)).unwrap() {
            Some(ringex_gateway::protocol::ServerMessage::Filled(f)) => break f,
            Some(_) => continue,
            None => panic!("no fill for the binary maker"),
        }
    };
    assert_eq!(
        (maker_fill.qty, maker_fill.liquidity),
        (2, Liquidity::Maker)
    );
    stop.store(true, Ordering::Relaxed);
    let shutdown = loop {
        let m = next(&mut ws);
        if m["channel"] == "system" {
            break m;
        }
    };
    assert_eq!(shutdown["type"], "serverShutdown");
    assert_eq!(thread.join().unwrap(), Ok(()));
}

/// `ringex start` as a child process with `config`; returns it and its WebSocket address.
fn spawn_node(config_path: &Path) -> (std::process::Child, SocketAddr) {
    let mut node = Process::new(env!("CARGO_BIN_EXE_ringex"))
        .args(["start", "--config"])
        .arg(config_path)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(node.stderr.take().unwrap());
    let mut line = String::new();
    let mut ws = None;
    for _ in 0..100 {
        line.clear();
        if stderr.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if let Some(rest) = line.split("WebSocket on ").nth(1) {
            // "WebSocket on ADDR, HTTP on ...; SIGTERM ..."
            ws = rest
                .split([',', ';'])
                .next()
                .and_then(|a| a.trim().parse().ok());
            break;
        }
    }
    // Keep the log flowing so the node never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    (
        node,
        ws.expect("ringex start reports its WebSocket listener"),
    )
}

/// A node killed with SIGKILL while a WebSocket client streams orders at it and another
/// watches the book: after a restart on the same data, every order the client was told
/// was placed is there, and nothing it did not send.
#[test]
fn a_node_killed_mid_stream_keeps_every_order_acknowledged_over_websocket() {
    use serde_json::{json, Value};
    use tungstenite::Message;
    type Ws = tungstenite::WebSocket<std::net::TcpStream>;
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("e2e.toml");
    let text = config_text(dir.path(), "auto")
        .replace("messages_per_second = 50 ", "messages_per_second = 100000 ");
    std::fs::write(&config_path, text).unwrap();
    let open = |addr: SocketAddr| -> Ws {
        let stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        tungstenite::client(format!("ws://{addr}/ws"), stream)
            .unwrap()
            .0
    };
    let request = |ws: &mut Ws, v: Value| ws.send(Message::text(v.to_string())).unwrap();
    let answer = |ws: &mut Ws, id: u64| -> Value {
        loop {
            if let Message::Text(t) = ws.read().unwrap() {
                let m: Value = serde_json::from_str(t.as_str()).unwrap();
                if m["id"] == id {
                    return m;
                }
            }
        }
    };
    let auth = |ws: &mut Ws, nonce: u64| {
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        let hash = ringex_gateway::protocol::secret_hash(MAKER.1.as_bytes());
        let sig = ringex_gateway::protocol::sign_login(&hash, MAKER.0, ts, nonce);
        let hex: String = sig.iter().map(|b| format!("{b:02x}")).collect();
        request(
            ws,
            json!({"method": "auth", "id": 0,
                   "params": {"key": MAKER.0, "timestamp": ts, "nonce": nonce, "signature": hex}}),
        );
        assert_eq!(answer(ws, 0)["result"]["account"], 1001);
    };
    let order = |i: u64| {
        json!({"method": "order.place", "id": i, "params": {"market": "BTC-USDT",
               "side": "buy", "price": format!("{}.00", 59_000 - i % 50), "qty": "0.0001",
               "clientOrderId": i}})
    };

    let (mut node, ws_addr) = spawn_node(&config_path);
    let mut watcher = open(ws_addr);
    request(
        &mut watcher,
        json!({"method": "subscribe", "id": 1,
               "params": {"channels": ["depth", "trades"], "markets": ["BTC-USDT"]}}),
    );
    assert_eq!(answer(&mut watcher, 1)["id"], 1);
    let mut trader = open(ws_addr);
    auth(&mut trader, 1);
    let mut acknowledged = Vec::new();
    for i in 1..=100 {
        request(&mut trader, order(i));
        let placed = answer(&mut trader, i);
        assert_eq!(placed["result"]["status"], "new", "{placed}");
        acknowledged.push(i);
    }
    // Fifty more in flight, and the node is killed under them.
    for i in 101..=150 {
        request(&mut trader, order(i));
    }
    for i in 101..=110 {
        assert_eq!(answer(&mut trader, i)["result"]["status"], "new");
        acknowledged.push(i);
    }
    unsafe {
        libc::kill(node.id() as i32, libc::SIGKILL);
    }
    node.wait().unwrap();
    // Both clients see the connection end (no close frame: the process is gone).
    for ws in [&mut watcher, &mut trader] {
        let ended = loop {
            match ws.read() {
                Ok(_) => continue,
                Err(e) => break e,
            }
        };
        assert!(
            !matches!(ended, tungstenite::Error::ConnectionClosed),
            "{ended}"
        );
    }

    let (mut node, ws_addr) = spawn_node(&config_path);
    let mut trader = open(ws_addr);
    auth(&mut trader, 2);
    request(
        &mut trader,
        json!({"method": "account.openOrders", "id": 1, "params": {"market": "BTC-USDT"}}),
    );
    let open_orders = answer(&mut trader, 1);
    let mut ids: Vec<u64> = open_orders["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["clientOrderId"].as_u64().unwrap())
        .collect();
    ids.sort_unstable();
    assert!(
        acknowledged.iter().all(|i| ids.contains(i)),
        "acknowledged orders lost: {:?}",
        acknowledged
            .iter()
            .filter(|i| !ids.contains(i))
            .collect::<Vec<_>>()
    );
    assert!(ids.iter().all(|i| (1..=150).contains(i)), "{ids:?}");
    unsafe {
        libc::kill(node.id() as i32, libc::SIGTERM);
    }
    assert!(node.wait().unwrap().success(), "exit 0 after SIGTERM");
}

/// The websocat binary the test command installs (`scripts/test-tools.sh`), from `PATH`
/// or cargo's install directory.
fn websocat() -> Option<std::path::PathBuf> {
    let mut dirs: Vec<std::path::PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        dirs.push(Path::new(&home).join("bin"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join("websocat"))
        .find(|p| p.is_file())
}

/// The shell blocks of docs/websocket.md's websocat section, in order.
fn documented_websocat_examples() -> Vec<String> {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/websocket.md"))
            .expect("docs/websocket.md");
    let section = doc
        .split("\n### websocat\n")
        .nth(1)
        .and_then(|s| s.split("\n### ").next())
        .expect("docs/websocket.md has a websocat section");
    section
        .split("```sh\n")
        .skip(1)
        .map(|block| block.split("```").next().unwrap_or_default().to_string())
        .collect()
}

/// A retail user with websocat, exactly as docs/websocket.md shows: typing subscriptions
/// and watching the best bid and offer move, a one-shot request from a script, and a
/// script that signs in, places an order and cancels it.
#[test]
fn websocat_watches_and_trades_with_the_documented_examples() {
    let Some(websocat) = websocat() else {
        assert!(
            std::env::var_os("RINGEX_REQUIRE_ALL_TESTS").is_none_or(|v| v != "1"),
            "websocat is not installed (scripts/test-tools.sh installs it) and \
             RINGEX_REQUIRE_ALL_TESTS=1"
        );
        eprintln!("SKIPPED websocat examples: websocat is not installed");
        return;
    };
    let examples = documented_websocat_examples();
    assert_eq!(
        examples.len(),
        3,
        "interactive, one-shot, trading: {examples:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let (l, stop, thread) = serve_inline(dir.path());
    let ws_addr = l
        .websocket
        .expect("the WebSocket listener is on by default");
    let at_node = |text: &str| text.replace("127.0.0.1:9101", &ws_addr.to_string());
    let path = format!(
        "{}:{}",
        websocat.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );

    // Interactive: the first line is the command, the others are typed.
    let interactive = at_node(&examples[0]);
    let mut lines = interactive.lines();
    let command = lines.next().unwrap();
    let url = command.strip_prefix("websocat ").expect("websocat URL");
    let mut watcher = Process::new(&websocat)
        .arg(url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut typed = watcher.stdin.take().unwrap();
    for line in lines {
        std::io::Write::write_all(&mut typed, format!("{line}\n").as_bytes()).unwrap();
    }
    let (seen_tx, seen) = mpsc::channel::<serde_json::Value>();
    let stdout = BufReader::new(watcher.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let value = serde_json::from_str(&line).expect("one JSON message per line");
            if seen_tx.send(value).is_err() {
                break;
            }
        }
    });
    let next = || {
        seen.recv_timeout(Duration::from_secs(20))
            .expect("websocat prints")
    };
    let mut replies = 0;
    let mut snapshots = 0;
    while replies < 2 || snapshots < 2 {
        let m = next();
        if m["id"] == 1 {
            assert_eq!(
                m["result"],
                serde_json::json!(["bbo@BTC-USDT", "ticker@BTC-USDT"])
            );
            replies += 1;
        } else if m["id"] == 2 {
            assert_eq!(m["result"][0]["market"], "BTC-USDT", "{m}");
            replies += 1;
        } else if m["type"] == "snapshot" {
            snapshots += 1;
        }
    }
    let mut maker = Client::connect(l.trading, MAKER.0, MAKER.1, options()).unwrap();
    maker
        .new_order(
            &OrderParams::limit(BTC_USDT, Side::Sell, 6_001_000, 5).tif(TimeInForce::PostOnly),
        )
        .unwrap();
    let bbo = loop {
        let m = next();
        if m["channel"] == "bbo" && m["type"] != "snapshot" {
            break m;
        }
    };
    assert_eq!(
        bbo["ask"],
        serde_json::json!(["60010.00", "0.0005"]),
        "{bbo}"
    );
    drop(typed);
    assert!(
        watcher.wait().unwrap().success(),
        "websocat exits when its input ends"
    );

    // From scripts: the one-shot request, then sign in, place and cancel.
    let run = |script: &str| -> Vec<serde_json::Value> {
        let out = Process::new("bash")
            .args(["-euo", "pipefail", "-c", &at_node(script)])
            .env("PATH", &path)
            .output()
            .expect("bash runs");
        assert!(
            out.status.success(),
            "{script}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON message per line"))
            .collect()
    };
    assert_eq!(
        run(&examples[1]),
        [serde_json::json!({"id": 1, "result": "pong"})]
    );
    let traded = run(&examples[2]);
    assert_eq!(traded.len(), 3, "{traded:?}");
    assert_eq!(traded[0]["result"]["account"], 1001, "{traded:?}");
    assert_eq!(traded[1]["result"]["status"], "new", "{traded:?}");
    assert_eq!(traded[2]["result"]["status"], "cancelled", "{traded:?}");
    assert_eq!(
        traded[2]["result"]["orderId"], traded[1]["result"]["orderId"],
        "the cancel found the order placed"
    );
    stop.store(true, Ordering::Relaxed);
    assert_eq!(thread.join().unwrap(), Ok(()));
}

/// `ringex admin set-market-limits`, run as an operator runs it against the node's admin
/// listener: the caps apply at once (a GTC order past the account's cap is refused
/// `TooManyOpenOrders`, an IOC is not capped, a cancel makes room) and hold after a
/// restart. A refusal names the engine's reason and exits 1.
#[test]
fn ringex_admin_sets_a_markets_open_order_caps_that_hold_across_a_restart() {
    use ringex_engine::RejectReason;
    let dir = tempfile::tempdir().unwrap();
    let (l, stop, thread) = serve_inline(dir.path());
    // The command finds the admin listener in its config.
    let cli_config = dir.path().join("admin.toml");
    std::fs::write(
        &cli_config,
        DEFAULT_CONFIG_TOML.replace("127.0.0.1:9103", &l.admin.to_string()),
    )
    .unwrap();
    let admin = |args: &[&str]| {
        let out = Process::new(env!("CARGO_BIN_EXE_ringex"))
            .args(["admin", "set-market-limits", "--config"])
            .arg(&cli_config)
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code(), text)
    };
    let caps = ["--market", "1", "--per-account", "2", "--per-market", "10"];
    let (code, text) = admin(&caps);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("market 1: at most 2 resting orders per account"),
        "{text}"
    );
    let (code, text) = admin(&["--market", "99", "--per-account", "2", "--per-market", "10"]);
    assert_eq!(
        (code, text.contains("refused: unknown_market")),
        (Some(1), true),
        "{text}"
    );
    let (code, text) = admin(&["--market", "1", "--per-account", "0", "--per-market", "10"]);
    assert_eq!(
        (code, text.contains("invalid_market_spec")),
        (Some(1), true),
        "{text}"
    );
    // A trading key does not log in on the admin listener.
    let mut with_trading_key = caps.to_vec();
    with_trading_key.extend(["--key-id", "1", "--secret", "demo-secret-1001"]);
    let (code, text) = admin(&with_trading_key);
    assert_eq!(
        (code, text.contains("WrongListener")),
        (Some(1), true),
        "{text}"
    );

    let reject = |c: &mut Client, params: &OrderParams| {
        c.new_order(params).unwrap().rejected().map(|r| r.reason)
    };
    let buy = |price| OrderParams::limit(BTC_USDT, Side::Buy, price, 1);
    let mut maker = Client::connect(l.trading, MAKER.0, MAKER.1, options()).unwrap();
    assert_eq!(reject(&mut maker, &buy(5_500_000).client_order_id(1)), None);
    assert_eq!(reject(&mut maker, &buy(5_500_001)), None);
    assert_eq!(
        reject(&mut maker, &buy(5_500_002)),
        Some(RejectReason::TooManyOpenOrders)
    );
    assert_eq!(
        reject(&mut maker, &buy(5_500_002).tif(TimeInForce::Ioc)),
        None
    );
    drop(maker);
    stop.store(true, Ordering::Relaxed);
    assert_eq!(thread.join().unwrap(), Ok(()));

    let (l, stop, thread) = serve_inline(dir.path());
    let mut maker = Client::connect(l.trading, MAKER.0, MAKER.1, options()).unwrap();
    assert_eq!(
        reject(&mut maker, &buy(5_500_002)),
        Some(RejectReason::TooManyOpenOrders)
    );
    maker.cancel(BTC_USDT, OrderRef::Client(1)).unwrap();
    assert_eq!(reject(&mut maker, &buy(5_500_002)), None);
    drop(maker);
    stop.store(true, Ordering::Relaxed);
    assert_eq!(thread.join().unwrap(), Ok(()));
}
