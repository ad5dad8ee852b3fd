//! The retail WebSocket edge on real loopback sockets, beside the binary gateway, with an
//! engine applied inline behind both (the hand-off between the two loops is the one the
//! daemon runs). Each test reads as one rule of `docs/websocket.md`; the Rust client is
//! tungstenite's, the Python one (`tools/python/ws_book_check.py`) is `websockets`.

use std::collections::VecDeque;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ringex_engine::{Command, Event, Exchange, MarketSpec, Side, Symbol};
use ringex_gateway::backend::InlineBackend;
use ringex_gateway::handoff;
use ringex_gateway::protocol::{permission, secret_hash, sign_login};
use ringex_gateway::refusals::Refusal;
use ringex_gateway::retail::{RetailConfig, RetailEdge, RetailStats};
use ringex_gateway::server::{Gateway, GatewayConfig};
use serde_json::{json, Value};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

const MARKET: u32 = 1;
const MAKER_KEY: u64 = 10;
const TAKER_KEY: u64 = 11;
const ADMIN_KEY: u64 = 100;

fn secret(key: u64) -> String {
    format!("secret-{key}")
}

/// BTC-USDT as in the demo config (a tick is 0.01 USDT, a lot 0.0001 BTC), two funded
/// traders (accounts 10 and 11, keys 10 and 11) and an operator.
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
            symbol: Symbol::new("USDT").unwrap(),
            decimals: 6,
        },
        Command::CreateMarket(MarketSpec {
            market: MARKET,
            symbol: Symbol::new("BTC-USDT").unwrap(),
            base: 1,
            quote: 2,
            tick_size: 1,
            lot_size: 10_000,
            qty_min: 1,
            qty_max: 1_000_000,
            band_ppm: 0,
            reference_price: 6_000_000,
            maker_fee_ppm: 200,
            taker_fee_ppm: 500,
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
        for (asset, amount) in [(1, 100_000_000_000), (2, 100_000_000_000_000)] {
            cmds.push(Command::Deposit {
                account,
                asset,
                amount,
                external_ref: u64::from(account) * 10 + u64::from(asset),
            });
        }
    }
    for c in &cmds {
        out.clear();
        ex.apply(c, &mut out);
        assert!(!matches!(out[0], Event::Rejected { .. }), "{c:?}: {out:?}");
    }
    ex
}

/// Both loops on threads of their own, linked as the daemon links them.
struct Rig {
    ws: SocketAddr,
    binary: SocketAddr,
    stats: Arc<RetailStats>,
    stop: Arc<AtomicBool>,
    gateway: Option<JoinHandle<InlineBackend>>,
    retail: Option<JoinHandle<()>>,
}

impl Rig {
    fn start(config: RetailConfig) -> Rig {
        Rig::start_with(config, 1 << 16)
    }

    /// With `outbox` slots for the engine's output on its way to the retail loop.
    fn start_with(config: RetailConfig, outbox: usize) -> Rig {
        let mut gateway = Gateway::bind(GatewayConfig::loopback()).unwrap();
        let mut retail = RetailEdge::bind(config, gateway.log_queue()).unwrap();
        let (g, r) = handoff::link(4096, outbox, gateway.waker(), retail.waker());
        gateway.attach_retail(g);
        retail.attach(r);
        let stop = Arc::new(AtomicBool::new(false));
        let (ws, binary, stats) = (
            retail.local_addr().unwrap(),
            gateway.trading_addr().unwrap(),
            retail.stats(),
        );
        let s = Arc::clone(&stop);
        let gateway = std::thread::spawn(move || {
            let mut backend = InlineBackend::new(exchange());
            gateway.run(&mut backend, &s).unwrap();
            backend
        });
        let s = Arc::clone(&stop);
        let retail = std::thread::spawn(move || retail.run(&s).unwrap());
        let rig = Rig {
            ws,
            binary,
            stats,
            stop,
            gateway: Some(gateway),
            retail: Some(retail),
        };
        wait_until("the publisher loaded the books", || {
            rig.stats.ready.load(Ordering::Relaxed)
        });
        rig
    }

    /// Stops both loops and returns the engine, to compare with what clients saw.
    fn stop(mut self) -> Exchange {
        self.stop.store(true, Ordering::Relaxed);
        self.retail.take().unwrap().join().unwrap();
        self.gateway.take().unwrap().join().unwrap().exchange
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.retail.take() {
            let _ = t.join();
        }
        if let Some(t) = self.gateway.take() {
            let _ = t.join();
        }
    }
}

/// A failure bound, not a measurement.
const DEADLINE: Duration = Duration::from_secs(20);

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::yield_now();
    }
}

/// A tungstenite client that keeps what it read but was not asked for yet, so a test
/// can wait for a reply and still see the stream messages that came before it.
struct Client {
    ws: WebSocket<TcpStream>,
    backlog: VecDeque<Value>,
}

fn connect(addr: SocketAddr) -> Client {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let (ws, _) = tungstenite::client(format!("ws://{addr}/ws"), stream).unwrap();
    Client {
        ws,
        backlog: VecDeque::new(),
    }
}

fn send(c: &mut Client, v: Value) {
    c.ws.send(Message::text(v.to_string())).unwrap();
}

/// The next text message off the socket (pings are answered by tungstenite itself).
fn read_text(c: &mut Client) -> Value {
    loop {
        match c.ws.read().unwrap() {
            Message::Text(t) => {
                if std::env::var_os("WS_DEBUG").is_some() {
                    eprintln!("<< {t}");
                }
                return serde_json::from_str(t.as_str()).unwrap();
            }
            Message::Close(f) => panic!("closed: {f:?}"),
            _ => {}
        }
    }
}

/// The next message, oldest unread first.
fn recv(c: &mut Client) -> Value {
    match c.backlog.pop_front() {
        Some(v) => v,
        None => read_text(c),
    }
}

/// The first message matching `pred`, read or waiting; the others stay for later.
fn recv_until(c: &mut Client, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    if let Some(i) = c.backlog.iter().position(&pred) {
        return c.backlog.remove(i).unwrap();
    }
    let deadline = Instant::now() + DEADLINE;
    loop {
        assert!(Instant::now() < deadline, "no message {what}");
        let m = read_text(c);
        if pred(&m) {
            return m;
        }
        c.backlog.push_back(m);
    }
}

fn reply(c: &mut Client, id: u64) -> Value {
    recv_until(c, &format!("answering request {id}"), |m| m["id"] == id)
}

/// Reads until the server closes; returns the close code and reason.
fn closed(c: &mut Client) -> (u16, String) {
    loop {
        match c.ws.read() {
            Ok(Message::Close(Some(f))) => return (u16::from(f.code), f.reason.to_string()),
            Ok(Message::Close(None)) => return (1005, String::new()),
            Ok(_) => {}
            Err(e) => panic!("no close frame: {e}"),
        }
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn auth_params(key: u64, nonce: u64) -> Value {
    let ts = now_ns();
    let sig = sign_login(&secret_hash(secret(key).as_bytes()), key, ts, nonce);
    let hex: String = sig.iter().map(|b| format!("{b:02x}")).collect();
    json!({"key": key, "timestamp": ts, "nonce": nonce, "signature": hex})
}

fn auth(ws: &mut Client, key: u64, id: u64) -> Value {
    send(
        ws,
        json!({"method": "auth", "params": auth_params(key, id), "id": id}),
    );
    reply(ws, id)
}

fn place(ws: &mut Client, id: u64, side: &str, price: &str, qty: &str) -> Value {
    send(
        ws,
        json!({"method": "order.place", "id": id,
               "params": {"market": "BTC-USDT", "side": side, "price": price, "qty": qty}}),
    );
    reply(ws, id)
}

#[test]
fn a_subscriber_gets_a_snapshot_then_diffs_that_chain_and_trades() {
    let rig = Rig::start(RetailConfig::loopback());
    let mut watcher = connect(rig.ws);
    send(
        &mut watcher,
        json!({"method": "subscribe", "params": {"channels": ["depth", "trades"], "markets": ["BTC-USDT"]}, "id": 1}),
    );
    let r = reply(&mut watcher, 1);
    assert_eq!(r["result"], json!(["depth@BTC-USDT", "trades@BTC-USDT"]));
    let snapshot = recv(&mut watcher);
    assert_eq!(snapshot["channel"], "depth");
    assert_eq!(snapshot["type"], "snapshot");
    assert_eq!(snapshot["bids"], json!([]));
    let mut last = snapshot["last"].as_u64().unwrap();
    let trades_snapshot = recv(&mut watcher);
    assert_eq!(trades_snapshot["channel"], "trades");
    let mut maker = connect(rig.ws);
    assert_eq!(auth(&mut maker, MAKER_KEY, 7)["result"]["account"], 10);
    let placed = place(&mut maker, 8, "sell", "60000.00", "0.0100");
    assert_eq!(placed["result"]["status"], "new", "{placed}");
    let mut taker = connect(rig.ws);
    auth(&mut taker, TAKER_KEY, 9);
    let took = place(&mut taker, 10, "buy", "60001.00", "0.0040");
    assert_eq!(took["result"]["status"], "filled", "{took}");
    assert_eq!(took["result"]["fills"][0]["price"], "60000.00");
    assert_eq!(took["result"]["fills"][0]["liquidity"], "taker");
    // Fee: 0.05% of 240 USDT.
    assert_eq!(took["result"]["fills"][0]["fee"], "0.120000");
    let d1 = recv_until(&mut watcher, "the resting sell", |m| {
        m["channel"] == "depth"
    });
    assert_eq!(d1["first"].as_u64().unwrap(), last + 1);
    assert_eq!(d1["asks"], json!([["60000.00", "0.0100"]]));
    last = d1["last"].as_u64().unwrap();
    let trades = recv_until(&mut watcher, "the trade", |m| m["channel"] == "trades");
    assert_eq!(trades["trades"][0]["price"], "60000.00");
    assert_eq!(trades["trades"][0]["qty"], "0.0040");
    assert_eq!(trades["trades"][0]["side"], "buy");
    let d2 = recv_until(&mut watcher, "the fill's depth", |m| {
        m["channel"] == "depth"
    });
    assert_eq!(d2["first"].as_u64().unwrap(), last + 1);
    assert_eq!(d2["asks"], json!([["60000.00", "0.0060"]]));
    let ex = rig.stop();
    assert_eq!(ex.market(MARKET).unwrap().trade_count, 1);
}

#[test]
fn a_channel_or_market_named_twice_is_one_subscription_with_one_copy_of_each_message() {
    let rig = Rig::start(RetailConfig::loopback());
    let mut watcher = connect(rig.ws);
    send(
        &mut watcher,
        json!({"method": "subscribe", "id": 1, "params": {
            "channels": ["trades", "depth", "trades"], "markets": ["BTC-USDT", "BTC-USDT"]}}),
    );
    let names = reply(&mut watcher, 1)["result"].clone();
    let mut maker = connect(rig.ws);
    auth(&mut maker, MAKER_KEY, 7);
    place(&mut maker, 8, "sell", "60000.00", "0.0100");
    let mut taker = connect(rig.ws);
    auth(&mut taker, TAKER_KEY, 9);
    place(&mut taker, 10, "buy", "60001.00", "0.0040");
    // A last order, so that everything before its depth update has arrived.
    place(&mut maker, 11, "sell", "60010.00", "0.0100");
    let mut seen = vec![recv(&mut watcher)];
    while seen.last().unwrap()["asks"]
        .as_array()
        .is_none_or(|asks| !asks.iter().any(|l| l[0] == "60010.00"))
    {
        seen.push(recv(&mut watcher));
    }
    let kinds: Vec<String> = seen
        .iter()
        .map(|m| format!("{} {}", m["channel"], m["type"]).replace('"', ""))
        .collect();
    assert_eq!(
        kinds,
        [
            "trades snapshot",
            "depth snapshot",
            "depth update",
            "trades update",
            "depth update",
            "depth update"
        ],
        "{seen:#?}"
    );
    assert_eq!(names, json!(["trades@BTC-USDT", "depth@BTC-USDT"]));
    rig.stop();
}

#[test]
fn a_subscribe_naming_one_pair_thousands_of_times_is_one_subscription() {
    // A message of the largest size naming the same pair thousands of times: millions of
    // channel-market combinations, had each been taken (they held the loop for 0.7 s
    // and 140 MB in a release build), for one subscription.
    let rig = Rig::start(RetailConfig::loopback());
    let mut greedy = connect(rig.ws);
    let many = json!({"method": "subscribe", "id": 3, "params": {
        "channels": vec!["bbo"; 3000], "markets": vec!["BTC-USDT"; 3000]}});
    assert!(many.to_string().len() < 64 * 1024);
    send(&mut greedy, many);
    assert_eq!(reply(&mut greedy, 3)["result"], json!(["bbo@BTC-USDT"]));
    assert_eq!(recv(&mut greedy)["type"], "snapshot");
    still_served(&rig);
    rig.stop();
}

#[test]
fn malformed_requests_get_their_documented_errors_and_the_connection_goes_on() {
    let rig = Rig::start(RetailConfig::loopback());
    let mut ws = connect(rig.ws);
    ws.ws.send(Message::text("{not json")).unwrap();
    let e = recv(&mut ws);
    assert_eq!(
        (e["id"].clone(), e["error"]["code"].clone()),
        (Value::Null, json!(400))
    );
    send(&mut ws, json!({"method": "teleport", "id": 2}));
    assert_eq!(reply(&mut ws, 2)["error"]["code"], 404);
    send(
        &mut ws,
        json!({"method": "subscribe", "params": {"channels": ["depth"], "markets": ["DOGE-USDT"]}, "id": 3}),
    );
    assert_eq!(
        reply(&mut ws, 3)["error"],
        json!({"code": 1001, "msg": "unknown_market"})
    );
    send(
        &mut ws,
        json!({"method": "subscribe", "params": {"channels": ["gossip"], "markets": ["BTC-USDT"]}, "id": 4}),
    );
    assert_eq!(reply(&mut ws, 4)["error"]["code"], 400);
    send(
        &mut ws,
        json!({"method": "order.place", "params": {}, "id": 5}),
    );
    assert_eq!(reply(&mut ws, 5)["error"]["code"], 401);
    auth(&mut ws, MAKER_KEY, 6);
    let bad_tick = place(&mut ws, 7, "buy", "60000.005", "0.0001");
    assert_eq!(bad_tick["error"], json!({"code": 1030, "msg": "bad_tick"}));
    let broke = place(&mut ws, 8, "buy", "6e4", "0.0001");
    assert_eq!(broke["error"]["code"], 400);
    send(&mut ws, json!({"method": "ping", "id": 9}));
    assert_eq!(reply(&mut ws, 9)["result"], "pong");
    assert!(rig.stats.refusals.get(Refusal::MalformedRequest) >= 3);
}

#[test]
fn binary_frames_oversized_messages_and_bad_utf8_close_with_their_codes() {
    let rig = Rig::start(RetailConfig::loopback());
    let mut ws = connect(rig.ws);
    ws.ws.send(Message::binary(vec![1u8, 2, 3])).unwrap();
    assert_eq!(closed(&mut ws).0, 1003);
    let mut ws = connect(rig.ws);
    ws.ws.send(Message::text("x".repeat(70_000))).unwrap();
    assert_eq!(closed(&mut ws).0, 1009);
    // Invalid UTF-8 in a text frame, written by hand (tungstenite will not send it).
    let mut raw = TcpStream::connect(rig.ws).unwrap();
    raw.set_read_timeout(Some(DEADLINE)).unwrap();
    let (ws, _) =
        tungstenite::client(format!("ws://{}/ws", rig.ws), raw.try_clone().unwrap()).unwrap();
    let mut ws = Client {
        ws,
        backlog: VecDeque::new(),
    };
    raw.write_all(&[0x81, 0x82, 0, 0, 0, 0, 0xff, 0xfe])
        .unwrap();
    assert_eq!(closed(&mut ws).0, 1007);
    // And everyone else is still served.
    let mut other = connect(rig.ws);
    send(&mut other, json!({"method": "ping", "id": 1}));
    assert_eq!(reply(&mut other, 1)["result"], "pong");
}

#[test]
fn a_flood_past_the_message_rate_is_answered_429_then_closed_1008() {
    let config = RetailConfig {
        messages_per_second: 5,
        ..RetailConfig::loopback()
    };
    let rig = Rig::start(config);
    let mut ws = connect(rig.ws);
    for i in 0..30 {
        let _ = ws.ws.send(Message::text(
            json!({"method": "ping", "id": i}).to_string(),
        ));
    }
    let mut codes = Vec::new();
    let (code, reason) = loop {
        match ws.ws.read() {
            Ok(Message::Text(t)) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                codes.push(v["error"]["code"].as_u64().unwrap_or(0));
            }
            Ok(Message::Close(Some(f))) => break (u16::from(f.code), f.reason.to_string()),
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(code, 1008, "{reason}");
    assert_eq!(
        codes.iter().filter(|c| **c == 0).count(),
        5,
        "the rate's worth answered"
    );
    assert!(codes.contains(&429));
    assert_eq!(rig.stats.refusals.get(Refusal::RateLimitAbuse), 1);
}

#[test]
fn subscriptions_beyond_the_limit_are_refused_413() {
    let config = RetailConfig {
        subscriptions_max: 2,
        ..RetailConfig::loopback()
    };
    let rig = Rig::start(config);
    let mut ws = connect(rig.ws);
    send(
        &mut ws,
        json!({"method": "subscribe", "params": {"channels": ["depth", "trades", "bbo"], "markets": ["BTC-USDT"]}, "id": 1}),
    );
    assert_eq!(reply(&mut ws, 1)["error"]["code"], 413);
    send(
        &mut ws,
        json!({"method": "subscribe", "params": {"channels": ["bbo", "ticker"], "markets": ["BTC-USDT"]}, "id": 2}),
    );
    assert!(reply(&mut ws, 2)["result"].is_array());
    assert_eq!(rig.stats.refusals.get(Refusal::SubscriptionLimit), 1);
}

#[test]
fn a_connection_that_never_subscribes_is_closed_1008() {
    let config = RetailConfig {
        first_subscription_ms: 200,
        ..RetailConfig::loopback()
    };
    let rig = Rig::start(config);
    let mut ws = connect(rig.ws);
    assert_eq!(closed(&mut ws).0, 1008);
    assert_eq!(rig.stats.refusals.get(Refusal::SubscriptionTimeout), 1);
}

#[test]
fn a_slow_consumer_is_closed_1013_while_another_receives_every_update() {
    slow_consumer_closed_while_another_receives_every_update(true);
}

#[test]
fn without_batched_sends_a_slow_consumer_is_closed_1013_while_another_receives_every_update() {
    slow_consumer_closed_while_another_receives_every_update(false);
}

fn slow_consumer_closed_while_another_receives_every_update(batched_sends: bool) {
    let config = RetailConfig {
        outbound_buffer_bytes: 16 * 1024,
        socket_send_buffer_bytes: 16 * 1024,
        messages_per_second: 100_000,
        requests_per_second_per_key: 100_000,
        batched_sends,
        ..RetailConfig::loopback()
    };
    let rig = Rig::start(config);
    let sub = json!({"method": "subscribe", "params": {"channels": ["depth"], "markets": ["BTC-USDT"]}, "id": 1});
    // The slow one subscribes and never reads again; its socket buffers fill.
    let mut slow = connect(rig.ws);
    send(&mut slow, sub.clone());
    let mut fast = connect(rig.ws);
    send(&mut fast, sub);
    reply(&mut fast, 1);
    let snapshot = recv(&mut fast);
    let mut last = snapshot["last"].as_u64().unwrap();
    let mut maker = connect(rig.ws);
    auth(&mut maker, MAKER_KEY, 1);
    // The server keeps a closed slow consumer's connection for its close frame only a
    // while (2 s): the slow client reads as soon as it is cut off, then the run goes on.
    let mut slow_closed: Option<(u16, String, u64)> = None;
    let orders = 10_000u64;
    let mut seen = 0u64;
    for i in 0..orders {
        // Distinct levels, so every order is a depth update.
        let price = format!("{}.00", 50_000 + i);
        send(
            &mut maker,
            json!({"method": "order.place", "id": 100 + i,
                   "params": {"market": "BTC-USDT", "side": "buy", "price": price, "qty": "0.0001"}}),
        );
        if i % 50 == 49 {
            reply(&mut maker, 100 + i);
            // Keep up: the fast client reads what came so far.
            while seen < i + 1 {
                let d = recv_until(&mut fast, "a depth update", |m| m["channel"] == "depth");
                assert_eq!(d["first"].as_u64().unwrap(), last + 1, "no gap");
                last = d["last"].as_u64().unwrap();
                seen += d["bids"].as_array().unwrap().len() as u64;
            }
            if slow_closed.is_none() && rig.stats.refusals.get(Refusal::SlowConsumer) == 1 {
                slow_closed = Some(read_to_close(&mut slow));
            }
        }
    }
    assert_eq!(seen, orders, "the fast client got every level");
    let (code, reason, updates) = match slow_closed {
        Some(closed) => closed,
        None => {
            wait_until("the slow client is cut off", || {
                rig.stats.refusals.get(Refusal::SlowConsumer) == 1
            });
            read_to_close(&mut slow)
        }
    };
    assert_eq!(code, 1013, "{reason}");
    assert!(updates > 0);
}

/// What a slow consumer cut off reads: its subscription's answer and snapshot, whole
/// updates that chain (its output was cut between frames), then the close frame. Returns
/// the close code and reason and how many updates came before it.
fn read_to_close(slow: &mut Client) -> (u16, String, u64) {
    assert_eq!(reply(slow, 1)["result"], json!(["depth@BTC-USDT"]));
    let mut slow_last = recv(slow)["last"].as_u64().unwrap();
    let mut updates = 0;
    loop {
        match slow.ws.read() {
            Ok(Message::Text(t)) => {
                let d: Value = serde_json::from_str(t.as_str()).unwrap();
                assert_eq!(d["first"].as_u64().unwrap(), slow_last + 1, "no gap");
                slow_last = d["last"].as_u64().unwrap();
                updates += 1;
            }
            Ok(Message::Close(Some(f))) => {
                return (u16::from(f.code), f.reason.to_string(), updates)
            }
            Ok(_) => {}
            Err(e) => panic!("the stream broke before the close: {e}"),
        }
    }
}

#[test]
fn private_streams_carry_only_the_own_accounts_orders_and_fills() {
    let rig = Rig::start(RetailConfig::loopback());
    let mut a = connect(rig.ws);
    auth(&mut a, MAKER_KEY, 1);
    send(
        &mut a,
        json!({"method": "subscribe", "params": {"channels": ["orders", "fills", "balances"]}, "id": 2}),
    );
    reply(&mut a, 2);
    let balances = recv_until(&mut a, "the first balances", |m| m["channel"] == "balances");
    assert_eq!(balances["balances"][0]["asset"], "BTC");
    assert_eq!(balances["balances"][0]["available"], "1000.00000000");
    let mut b = connect(rig.ws);
    auth(&mut b, TAKER_KEY, 3);
    send(
        &mut b,
        json!({"method": "subscribe", "params": {"channels": ["orders", "fills"]}, "id": 4}),
    );
    reply(&mut b, 4);
    let sell = place(&mut a, 5, "sell", "60000.00", "0.0002");
    let sell_id = sell["result"]["orderId"].as_u64().unwrap();
    let buy = place(&mut b, 6, "buy", "60000.00", "0.0002");
    let buy_id = buy["result"]["orderId"].as_u64().unwrap();
    let accepted = recv_until(&mut a, "a's order", |m| m["channel"] == "orders");
    assert_eq!(accepted["orderId"].as_u64().unwrap(), sell_id);
    let fill = recv_until(&mut a, "a's fill", |m| m["channel"] == "fills");
    assert_eq!(
        (fill["orderId"].as_u64().unwrap(), fill["liquidity"].clone()),
        (sell_id, json!("maker"))
    );
    let after = recv_until(&mut a, "balances after the fill", |m| {
        m["channel"] == "balances" && m["balances"][0]["available"] != "1000.00000000"
    });
    assert_eq!(after["balances"][0]["available"], "999.99980000");
    let fill = recv_until(&mut b, "b's fill", |m| m["channel"] == "fills");
    assert_eq!(fill["orderId"].as_u64().unwrap(), buy_id);
    // a may not touch b's order: the engine says it does not know it.
    send(
        &mut a,
        json!({"method": "order.cancel", "id": 7, "params": {"market": "BTC-USDT", "orderId": buy_id}}),
    );
    assert_eq!(reply(&mut a, 7)["error"]["msg"], "unknown_order");
}

#[test]
fn a_bad_signature_is_refused_and_the_connection_may_still_watch_the_market() {
    let rig = Rig::start(RetailConfig::loopback());
    let mut ws = connect(rig.ws);
    let mut params = auth_params(MAKER_KEY, 1);
    params["signature"] = json!("00".repeat(32));
    send(
        &mut ws,
        json!({"method": "auth", "params": params, "id": 1}),
    );
    assert_eq!(
        reply(&mut ws, 1)["error"],
        json!({"code": 403, "msg": "bad_signature"})
    );
    assert_eq!(auth(&mut ws, MAKER_KEY, 2)["result"]["account"], 10);
    assert_eq!(rig.stats.refusals.get(Refusal::BadSignature), 1);
}

#[test]
fn a_stop_tells_every_client_server_shutdown_then_closes_1001() {
    let rig = Rig::start(RetailConfig::loopback());
    let mut ws = connect(rig.ws);
    send(
        &mut ws,
        json!({"method": "subscribe", "params": {"channels": ["bbo"], "markets": ["BTC-USDT"]}, "id": 1}),
    );
    reply(&mut ws, 1);
    rig.stop.store(true, Ordering::Relaxed);
    let notice = recv_until(&mut ws, "the shutdown notice", |m| m["channel"] == "system");
    assert_eq!(notice["type"], "serverShutdown");
    assert_eq!(closed(&mut ws).0, u16::from(CloseCode::Away));
    rig.stop();
}

#[test]
fn order_entry_over_websocket_meets_the_keys_rate_limit_like_the_binary_protocol() {
    let rig = Rig::start(RetailConfig {
        requests_per_second_per_key: 3,
        messages_per_second: 100,
        ..RetailConfig::loopback()
    });
    let mut ws = connect(rig.ws);
    auth(&mut ws, MAKER_KEY, 1);
    for i in 0..5u64 {
        send(
            &mut ws,
            json!({"method": "order.place", "id": 10 + i,
                   "params": {"market": "BTC-USDT", "side": "buy", "price": "50000.00", "qty": "0.0001"}}),
        );
    }
    let answers: Vec<Value> = (0..5u64).map(|i| reply(&mut ws, 10 + i)).collect();
    let limited = answers
        .iter()
        .filter(|a| a["error"]["msg"] == "rate_limited")
        .count();
    assert_eq!(limited, 2, "{answers:?}");
    assert_eq!(answers[4]["error"]["code"], 1029);
    let _ = Side::Buy;
}

#[test]
fn a_plain_http_request_is_told_to_upgrade() {
    let rig = Rig::start(RetailConfig::loopback());
    let mut s = TcpStream::connect(rig.ws).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut answer = String::new();
    use std::io::Read;
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 426"), "{answer}");
    let _ = rig.binary;
}

/// The Python of `scripts/python-env.sh` (RINGEX_PYTHON, or the default place it makes).
fn python() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("RINGEX_PYTHON") {
        return Some(p.into());
    }
    let default =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/python-env/bin/python");
    default.exists().then_some(default)
}

/// Says that a test did not run here and why; fails instead where every test must run
/// (RINGEX_REQUIRE_ALL_TESTS=1, as scripts/test.sh sets).
fn skip(test: &str, why: &str) {
    if std::env::var_os("RINGEX_REQUIRE_ALL_TESTS").is_some_and(|v| v == "1") {
        panic!("{test}: cannot run here: {why} (RINGEX_REQUIRE_ALL_TESTS=1)");
    }
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: did not run: {why} (it fails instead with RINGEX_REQUIRE_ALL_TESTS=1)"
    );
}

/// The Python interpreter and tools/python/ws_book_check.py; None (the test skipped, as
/// `skip` says) without a Python environment.
fn python_book_check(test: &str) -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    let Some(python) = python() else {
        skip(test, "no Python environment: run scripts/python-env.sh");
        return None;
    };
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/python/ws_book_check.py");
    Some((python, script))
}

#[test]
fn a_python_websockets_client_rebuilds_the_engines_book_with_and_without_compression() {
    let test = "a_python_websockets_client_rebuilds_the_engines_book_with_and_without_compression";
    let Some((python, script)) = python_book_check(test) else {
        return;
    };
    for compression in ["on", "off"] {
        let rig = Rig::start(RetailConfig {
            messages_per_second: 100_000,
            requests_per_second_per_key: 100_000,
            ..RetailConfig::loopback()
        });
        let out = std::process::Command::new(&python)
            .arg(&script)
            .args(["--url", &format!("ws://{}/ws", rig.ws)])
            .args(["--compression", compression])
            .args(["--maker", &format!("{MAKER_KEY}:{}", secret(MAKER_KEY))])
            .args(["--taker", &format!("{TAKER_KEY}:{}", secret(TAKER_KEY))])
            .args(["--orders", "400"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "compression {compression}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            seen["extensions"].as_array().unwrap().is_empty(),
            compression == "off"
        );
        if compression == "on" {
            assert!(rig.stats.bytes_out.load(Ordering::Relaxed) > 0);
        }
        let ex = rig.stop();
        let market = ex.market(MARKET).unwrap();
        let units = ringex_gateway::units::Units::new(1, 10_000, 8, 6).unwrap();
        let text = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut v = Vec::new();
            f(&mut v);
            String::from_utf8(v).unwrap()
        };
        for (side, name) in [(Side::Buy, "bids"), (Side::Sell, "asks")] {
            let engine: Vec<Value> = market
                .book
                .depth(side, usize::MAX)
                .into_iter()
                .map(|(p, q)| json!([text(&|o| units.price(p, o)), text(&|o| units.qty(q, o))]))
                .collect();
            assert_eq!(
                seen[name].as_array().unwrap(),
                &engine,
                "{name}, compression {compression}"
            );
        }
        assert!(
            market.trade_count > 50,
            "the burst crossed: {}",
            market.trade_count
        );
        assert_eq!(seen["gaps"], 0, "the edge kept up");
        assert_eq!(seen["trades"], market.trade_count);
        let volume = text(&|o| units.qty(market.volume_lots, o));
        assert_eq!(seen["volume"], volume);
        assert_eq!(seen["ticker"]["volume"], volume);
        assert_eq!(seen["ticker"]["count"], market.trade_count);
    }
}

#[test]
fn a_client_that_asks_but_never_reads_is_closed_1013_and_others_go_on() {
    let rig = Rig::start(RetailConfig {
        outbound_buffer_bytes: 16 * 1024,
        socket_send_buffer_bytes: 16 * 1024,
        messages_per_second: 1_000_000,
        ..RetailConfig::loopback()
    });
    // It subscribes to nothing, so no published update ever finds its queue full: only
    // the replies it asks for pile up.
    let mut greedy = connect(rig.ws);
    let request = Message::text(json!({"method": "markets", "id": 1}).to_string());
    let mut sent = 0;
    while rig.stats.slow_consumers.load(Ordering::Relaxed) == 0 {
        assert!(
            sent < 200_000,
            "{sent} unread replies (megabytes) and still queued"
        );
        greedy.ws.send(request.clone()).unwrap();
        sent += 1;
    }
    // What it was sent before the close arrives whole, frame by frame, then the close.
    let (code, reason) = closed(&mut greedy);
    assert_eq!(code, 1013, "{reason}");
    assert!(reason.starts_with("slow consumer"), "{reason}");
    let mut other = connect(rig.ws);
    send(&mut other, json!({"method": "ping", "id": 1}));
    assert_eq!(reply(&mut other, 1)["result"], "pong");
}

/// A masked client frame, written by hand (tungstenite sends neither fragments of our
/// choosing nor compressed frames).
fn client_frame(opcode: u8, fin: bool, rsv1: bool, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut out = vec![(u8::from(fin) << 7) | (u8::from(rsv1) << 6) | opcode];
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
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    out
}

/// Opens a WebSocket by hand on `path`, offering `extensions`; returns the stream and
/// the response head.
fn raw_upgrade(addr: SocketAddr, path: &str, extensions: Option<&str>) -> (TcpStream, String) {
    use std::io::Read;
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    if let Some(e) = extensions {
        req.push_str(&format!("Sec-WebSocket-Extensions: {e}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    // Byte by byte, so nothing after the head is taken from the stream.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => break,
        }
    }
    (s, String::from_utf8(head).unwrap())
}

/// One server frame: (fin, rsv1, opcode, payload).
fn read_frame(s: &mut TcpStream) -> (bool, bool, u8, Vec<u8>) {
    use std::io::Read;
    let mut h = [0u8; 2];
    s.read_exact(&mut h).unwrap();
    assert_eq!(h[1] & 0x80, 0, "server frames are not masked");
    let len = match h[1] & 0x7f {
        126 => {
            let mut l = [0u8; 2];
            s.read_exact(&mut l).unwrap();
            u64::from(u16::from_be_bytes(l))
        }
        127 => {
            let mut l = [0u8; 8];
            s.read_exact(&mut l).unwrap();
            u64::from_be_bytes(l)
        }
        n => u64::from(n),
    };
    let mut payload = vec![0u8; len as usize];
    s.read_exact(&mut payload).unwrap();
    (h[0] & 0x80 != 0, h[0] & 0x40 != 0, h[0] & 0x0f, payload)
}

#[test]
fn the_echo_path_echoes_text_and_binary_whole_fragmented_and_compressed() {
    let rig = Rig::start(RetailConfig {
        echo_path: Some("/echo".into()),
        first_subscription_ms: 200,
        ..RetailConfig::loopback()
    });
    let (mut s, head) = raw_upgrade(rig.ws, "/echo", Some("permessage-deflate"));
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains("permessage-deflate"), "{head}");
    let text = br#"{"not":"a request","but":"echoed"}"#;
    let binary: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    let mut deflater = ringex_gateway::ws::Deflater::default();
    let compressed = deflater.deflate(text);
    let mut bytes = client_frame(0x1, true, false, text);
    bytes.extend(client_frame(0x2, true, false, &binary));
    // Fragmented, with a ping between the fragments.
    bytes.extend(client_frame(0x2, false, false, &binary[..300]));
    bytes.extend(client_frame(0x0, false, false, &binary[300..301]));
    bytes.extend(client_frame(0x9, true, false, b"between"));
    bytes.extend(client_frame(0x0, true, false, &binary[301..]));
    // Compressed in one frame and in three.
    bytes.extend(client_frame(0x1, true, true, &compressed));
    let (a, rest) = compressed.split_at(compressed.len() / 3);
    let (b, c) = rest.split_at(rest.len() / 2);
    bytes.extend(client_frame(0x1, false, true, a));
    bytes.extend(client_frame(0x0, false, false, b));
    bytes.extend(client_frame(0x0, true, false, c));
    s.write_all(&bytes).unwrap();
    // Echoes are whole, uncompressed messages; the ping is answered where it came.
    let expected: [(u8, &[u8]); 6] = [
        (0x1, text),
        (0x2, &binary),
        (0xA, b"between"),
        (0x2, &binary),
        (0x1, text),
        (0x1, text),
    ];
    for (opcode, payload) in expected {
        let (fin, rsv1, op, got) = read_frame(&mut s);
        assert_eq!((fin, rsv1, op), (true, false, opcode));
        assert_eq!(got, payload);
    }
    // No first-subscription timer on the echo path (it was 200 ms), and the close is
    // answered.
    let deadline = Instant::now() + Duration::from_millis(600);
    let mut n = 0u32;
    while Instant::now() < deadline {
        n += 1;
        s.write_all(&client_frame(0x1, true, false, b"still here"))
            .unwrap();
        assert_eq!(read_frame(&mut s).3, b"still here");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(n > 3);
    s.write_all(&client_frame(0x8, true, false, &1000u16.to_be_bytes()))
        .unwrap();
    let (_, _, op, payload) = read_frame(&mut s);
    assert_eq!((op, payload), (0x8, 1000u16.to_be_bytes().to_vec()));
}

#[test]
fn the_echo_path_is_off_by_default() {
    let rig = Rig::start(RetailConfig::loopback());
    let (_, head) = raw_upgrade(rig.ws, "/echo", None);
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
}

/// Reads server frames until a close; returns its code and reason.
fn raw_closed(s: &mut TcpStream) -> (u16, String) {
    loop {
        let (_, _, op, payload) = read_frame(s);
        if op == 0x8 {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            return (code, String::from_utf8_lossy(&payload[2..]).into_owned());
        }
    }
}

fn still_served(rig: &Rig) {
    let mut other = connect(rig.ws);
    send(&mut other, json!({"method": "ping", "id": 1}));
    assert_eq!(reply(&mut other, 1)["result"], "pong");
}

#[test]
fn frames_that_break_the_rules_close_with_their_codes_and_others_go_on() {
    let rig = Rig::start(RetailConfig::loopback());
    // Compressed without negotiation.
    let (mut s, _) = raw_upgrade(rig.ws, "/ws", None);
    s.write_all(&client_frame(0x1, true, true, b"\x4b\x04\x00"))
        .unwrap();
    assert_eq!(raw_closed(&mut s).0, 1002);
    // Negotiated, but not deflate data.
    let (mut s, head) = raw_upgrade(rig.ws, "/ws", Some("permessage-deflate"));
    assert!(head.contains("permessage-deflate"), "{head}");
    s.write_all(&client_frame(0x1, true, true, &[0xff; 8]))
        .unwrap();
    assert_eq!(raw_closed(&mut s).0, 1007);
    // Unmasked.
    let (mut s, _) = raw_upgrade(rig.ws, "/ws", None);
    s.write_all(&[0x81, 0x02, b'h', b'i']).unwrap();
    assert_eq!(raw_closed(&mut s).0, 1002);
    // A header announcing an exabyte: refused at the header, nothing is allocated.
    let (mut s, _) = raw_upgrade(rig.ws, "/ws", None);
    let mut huge = vec![0x81, 0xff];
    huge.extend_from_slice(&(u64::MAX >> 1).to_be_bytes());
    huge.extend_from_slice(&[1, 2, 3, 4]);
    s.write_all(&huge).unwrap();
    assert_eq!(raw_closed(&mut s).0, 1009);
    // Fragments that never end: the message is refused once over the size limit.
    let (mut s, _) = raw_upgrade(rig.ws, "/ws", None);
    let mut endless = client_frame(0x1, false, false, &[b'a'; 1000]);
    for _ in 0..80 {
        endless.extend(client_frame(0x0, false, false, &[b'a'; 1000]));
    }
    let _ = s.write_all(&endless);
    assert_eq!(raw_closed(&mut s).0, 1009);
    // A close code no one may send.
    let (mut s, _) = raw_upgrade(rig.ws, "/ws", None);
    s.write_all(&client_frame(0x8, true, false, &1005u16.to_be_bytes()))
        .unwrap();
    assert_eq!(raw_closed(&mut s).0, 1002);
    still_served(&rig);
}

#[test]
fn compressed_messages_over_the_rate_are_refused_without_being_inflated() {
    let rig = Rig::start(RetailConfig::loopback());
    let rate = RetailConfig::loopback().messages_per_second as u64;
    let (mut s, head) = raw_upgrade(rig.ws, "/ws", Some("permessage-deflate"));
    assert!(head.contains("permessage-deflate"), "{head}");
    // A third of a kilobyte that inflates to 60 KB, five hundred times in one write:
    // 170 KB on the wire, 30 MB if every message were inflated.
    let text = format!(
        r#"{{"method":"ping","id":1,"pad":"{}"}}"#,
        "a".repeat(60_000)
    );
    let bomb = ringex_gateway::ws::Deflater::default().deflate(text.as_bytes());
    assert!(bomb.len() < 400, "{}", bomb.len());
    let batch: Vec<u8> = (0..500)
        .flat_map(|_| client_frame(0x1, true, true, &bomb))
        .collect();
    let _ = s.write_all(&batch);
    assert_eq!(
        raw_closed(&mut s),
        (1008, "message rate limit: too many refused".to_string())
    );
    // Only the messages the rate lets in were inflated (a second's worth, and what the
    // bucket refilled meanwhile); the refused ones, and everything after the close,
    // were not.
    let inflated = rig.stats.bytes_inflated.load(Ordering::Relaxed);
    assert!(
        inflated <= (rate + rate / 5) * text.len() as u64,
        "{inflated} bytes inflated for at most {rate} messages of {}",
        text.len()
    );
    assert!(inflated >= rate * text.len() as u64, "{inflated}");
    still_served(&rig);
}

#[test]
fn the_connections_of_one_address_share_a_budget_of_inflated_bytes() {
    let rig = Rig::start(RetailConfig {
        inflated_bytes_per_second_per_ip: 10_000,
        ..RetailConfig::loopback()
    });
    let (mut a, _) = raw_upgrade(rig.ws, "/ws", Some("permessage-deflate"));
    let (mut b, head) = raw_upgrade(rig.ws, "/ws", Some("permessage-deflate"));
    assert!(head.contains("permessage-deflate"), "{head}");
    // Each inflates to 60 KB: the first is read (a debt of 50 KB, five seconds at
    // 10 KB/s), then nothing compressed from this address is inflated until it is paid.
    let compressed_ping = |id: u64| {
        let text = format!(
            r#"{{"method":"ping","id":{id},"pad":"{}"}}"#,
            "a".repeat(60_000)
        );
        let deflated = ringex_gateway::ws::Deflater::default().deflate(text.as_bytes());
        client_frame(0x1, true, true, &deflated)
    };
    let text_of = |s: &mut TcpStream| -> Value {
        let (_, _, op, payload) = read_frame(s);
        assert_eq!(op, 0x1);
        serde_json::from_slice(&payload).unwrap()
    };
    a.write_all(&compressed_ping(1)).unwrap();
    assert_eq!(text_of(&mut a)["id"], 1);
    let inflated = rig.stats.bytes_inflated.load(Ordering::Relaxed);
    a.write_all(&compressed_ping(2)).unwrap();
    assert_eq!(text_of(&mut a)["error"]["code"], 429);
    // The other connection of the address shares the debt...
    b.write_all(&compressed_ping(3)).unwrap();
    let refused = text_of(&mut b);
    assert_eq!(
        (&refused["id"], &refused["error"]["code"]),
        (&Value::Null, &serde_json::json!(429)),
        "{refused}"
    );
    assert_eq!(rig.stats.bytes_inflated.load(Ordering::Relaxed), inflated);
    // ...and is still served uncompressed.
    b.write_all(&client_frame(
        0x1,
        true,
        false,
        br#"{"method":"ping","id":4}"#,
    ))
    .unwrap();
    assert_eq!(text_of(&mut b)["id"], 4);
    still_served(&rig);
}

#[test]
fn a_ping_flood_is_answered_within_the_message_rate_then_closed_1008() {
    let rig = Rig::start(RetailConfig {
        messages_per_second: 5,
        ..RetailConfig::loopback()
    });
    let (mut s, _) = raw_upgrade(rig.ws, "/ws", None);
    let flood: Vec<u8> = (0..200)
        .flat_map(|_| client_frame(0x9, true, false, b"p"))
        .collect();
    let _ = s.write_all(&flood);
    let mut pongs = 0;
    let code = loop {
        let (_, _, op, payload) = read_frame(&mut s);
        match op {
            0xA => pongs += 1,
            0x8 => break u16::from_be_bytes([payload[0], payload[1]]),
            _ => {}
        }
    };
    assert_eq!((code, pongs), (1008, 5));
    still_served(&rig);
}

#[test]
fn connections_past_the_per_ip_limit_get_503_until_one_leaves() {
    let rig = Rig::start(RetailConfig {
        connections_per_ip: 3,
        ..RetailConfig::loopback()
    });
    let mut held: Vec<Client> = (0..3).map(|_| connect(rig.ws)).collect();
    let (_, head) = raw_upgrade(rig.ws, "/ws", None);
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert_eq!(rig.stats.refusals.get(Refusal::PerIpLimit), 1);
    let mut gone = held.pop().unwrap();
    gone.ws.close(None).unwrap();
    let _ = closed(&mut gone);
    drop(gone);
    wait_until("the server let the connection go", || {
        rig.stats.connections_active.load(Ordering::Relaxed) == 2
    });
    still_served(&rig);
}

#[test]
fn an_upgrade_that_never_completes_is_dropped_and_holds_no_one_up() {
    use std::io::Read;
    let rig = Rig::start(RetailConfig {
        first_subscription_ms: 300,
        connections_per_ip: 2,
        ..RetailConfig::loopback()
    });
    // Two slow handshakes take the address's connections; a third is refused meanwhile.
    let mut slow: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = TcpStream::connect(rig.ws).unwrap();
            s.set_read_timeout(Some(DEADLINE)).unwrap();
            s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: webso")
                .unwrap();
            s
        })
        .collect();
    wait_until("both are accepted", || {
        rig.stats.connections_active.load(Ordering::Relaxed) == 2
    });
    let (_, head) = raw_upgrade(rig.ws, "/ws", None);
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    // Once the time to subscribe has passed, they are dropped without an answer...
    for s in &mut slow {
        let mut rest = Vec::new();
        assert_eq!(s.read_to_end(&mut rest).unwrap(), 0, "{rest:?}");
    }
    // ...and the address may connect again.
    still_served(&rig);
}

#[test]
fn a_connection_silent_past_the_idle_timeout_is_closed_1008() {
    let rig = Rig::start(RetailConfig {
        ping_interval_ms: 100,
        idle_timeout_ms: 400,
        ..RetailConfig::loopback()
    });
    // It never answers the server's pings (as a peer that vanished would not).
    let (mut s, _) = raw_upgrade(rig.ws, "/ws", None);
    let mut pings = 0;
    let (code, reason) = loop {
        let (_, _, op, payload) = read_frame(&mut s);
        match op {
            0x9 => pings += 1,
            0x8 => {
                break (
                    u16::from_be_bytes([payload[0], payload[1]]),
                    String::from_utf8_lossy(&payload[2..]).into_owned(),
                )
            }
            _ => {}
        }
    };
    assert_eq!((code, reason.as_str()), (1008, "silent too long"));
    assert!(pings >= 2, "{pings} pings");
    assert_eq!(rig.stats.refusals.get(Refusal::HeartbeatTimeout), 1);
}

#[test]
fn an_auth_replayed_on_another_connection_is_refused() {
    let rig = Rig::start(RetailConfig::loopback());
    let params = auth_params(MAKER_KEY, 77);
    let mut first = connect(rig.ws);
    send(
        &mut first,
        json!({"method": "auth", "params": params.clone(), "id": 1}),
    );
    assert_eq!(reply(&mut first, 1)["result"]["account"], 10);
    let mut replay = connect(rig.ws);
    send(
        &mut replay,
        json!({"method": "auth", "params": params, "id": 1}),
    );
    assert_eq!(
        reply(&mut replay, 1)["error"],
        json!({"code": 403, "msg": "replayed_nonce"})
    );
    // A timestamp outside the skew, correctly signed, is refused as well.
    let ts = now_ns() - 60_000_000_000;
    let sig = sign_login(
        &secret_hash(secret(MAKER_KEY).as_bytes()),
        MAKER_KEY,
        ts,
        78,
    );
    let hex: String = sig.iter().map(|b| format!("{b:02x}")).collect();
    send(
        &mut replay,
        json!({"method": "auth", "id": 2,
               "params": {"key": MAKER_KEY, "timestamp": ts, "nonce": 78, "signature": hex}}),
    );
    assert_eq!(reply(&mut replay, 2)["error"]["msg"], "stale_timestamp");
    // And the refused connection still may not trade.
    send(
        &mut replay,
        json!({"method": "order.cancelAll", "params": {}, "id": 3}),
    );
    assert_eq!(reply(&mut replay, 3)["error"]["code"], 401);
}

#[test]
fn a_slow_consumer_is_cut_between_frames_so_it_reads_whole_messages_then_the_close() {
    slow_consumer_cut_between_frames(true);
}

#[test]
fn without_batched_sends_a_slow_consumer_is_cut_between_frames_too() {
    slow_consumer_cut_between_frames(false);
}

fn slow_consumer_cut_between_frames(batched_sends: bool) {
    // Echoes larger than the socket's buffer are always written in parts: when the
    // client is found slow, one of them is half written.
    let rig = Rig::start(RetailConfig {
        echo_path: Some("/echo".into()),
        outbound_buffer_bytes: 16 * 1024,
        socket_send_buffer_bytes: 16 * 1024,
        messages_per_second: 1_000_000,
        batched_sends,
        ..RetailConfig::loopback()
    });
    let (mut s, _) = raw_upgrade(rig.ws, "/echo", None);
    let message: Vec<u8> = (0..60_000u32).map(|i| (i % 251) as u8).collect();
    let frame = client_frame(0x2, true, false, &message);
    let mut sent = 0;
    while rig.stats.slow_consumers.load(Ordering::Relaxed) == 0 {
        assert!(sent < 2_000, "{sent} echoes unread and still queued");
        s.write_all(&frame).unwrap();
        sent += 1;
    }
    let mut whole = 0;
    let (code, reason) = loop {
        let (fin, _, op, payload) = read_frame(&mut s);
        match op {
            0x2 => {
                assert!(fin && payload == message, "echo {whole} arrived broken");
                whole += 1;
            }
            0x8 => {
                break (
                    u16::from_be_bytes([payload[0], payload[1]]),
                    String::from_utf8_lossy(&payload[2..]).into_owned(),
                )
            }
            op => panic!("opcode {op:#x}: the stream lost its frame boundaries"),
        }
    };
    assert_eq!(code, 1013, "{reason}");
    assert!(whole < sent, "{whole} of {sent}");
}

#[test]
fn a_ticker_without_trades_has_no_prices_and_zero_volumes_in_their_decimals() {
    let rig = Rig::start(RetailConfig::loopback());
    let mut ws = connect(rig.ws);
    send(
        &mut ws,
        json!({"method": "subscribe", "params": {"channels": ["ticker"], "markets": ["BTC-USDT"]}, "id": 1}),
    );
    reply(&mut ws, 1);
    let t = recv_until(&mut ws, "the ticker snapshot", |m| m["channel"] == "ticker");
    assert_eq!(t["type"], "snapshot");
    for field in ["open", "high", "low", "last", "change", "changePercent"] {
        assert_eq!(t[field], Value::Null, "{field}");
    }
    assert_eq!(
        (
            t["volume"].clone(),
            t["quoteVolume"].clone(),
            t["count"].clone()
        ),
        (json!("0.0000"), json!("0.000000"), json!(0))
    );
}

/// A client's book from depth messages, as docs/websocket.md tells a client to keep it:
/// a snapshot (whenever one comes) replaces it, an update must chain on its `last`, and
/// the checksum must match after each message.
#[derive(Default)]
struct ClientBook {
    bids: std::collections::BTreeMap<u64, (String, String)>,
    asks: std::collections::BTreeMap<u64, (String, String)>,
    last: u64,
    snapshots: u32,
}

impl ClientBook {
    fn take(&mut self, m: &Value) {
        if m["type"] == "snapshot" {
            self.bids.clear();
            self.asks.clear();
            self.snapshots += 1;
        } else {
            assert_eq!(m["first"].as_u64().unwrap(), self.last + 1, "a gap: {m}");
        }
        self.last = m["last"].as_u64().unwrap();
        for (name, side) in [("bids", &mut self.bids), ("asks", &mut self.asks)] {
            for level in m[name].as_array().unwrap() {
                let (p, q) = (level[0].as_str().unwrap(), level[1].as_str().unwrap());
                let key: u64 = p.replace('.', "").parse().unwrap();
                if q.trim_start_matches(['0', '.']).is_empty() {
                    side.remove(&key);
                } else {
                    side.insert(key, (p.to_string(), q.to_string()));
                }
            }
        }
        let field = |s: &str| s.replace('.', "").trim_start_matches('0').to_string();
        let mut text = String::new();
        let asks = self.asks.values().take(10);
        for (p, q) in asks.chain(self.bids.values().rev().take(10)) {
            text += &field(p);
            text += &field(q);
        }
        assert_eq!(
            m["checksum"].as_u64().unwrap(),
            u64::from(crc32fast::hash(text.as_bytes())),
            "checksum at {m}"
        );
    }

    fn side(&self, side: Side) -> Vec<Value> {
        let levels: Vec<&(String, String)> = match side {
            Side::Buy => self.bids.values().rev().collect(),
            Side::Sell => self.asks.values().collect(),
        };
        levels.into_iter().map(|(p, q)| json!([p, q])).collect()
    }
}

/// A retail loop with a 64-slot outbound hand-off (`Rig::start_with`) overruns: pipelined
/// bursts of crossing orders from a signed-in connection, on 21 price levels at most (a
/// book's answer must fit the small queue when it is reloaded), until it did. That
/// connection, which may have lost its own answers and fills, is closed 1013. Once the
/// books are reloaded, orders one at a time (no overrun), then a marker bid at 50000.00.
fn overrun_then_trade(rig: &Rig) {
    let mut maker = connect(rig.ws);
    auth(&mut maker, MAKER_KEY, 1);
    let mut id = 100u64;
    while rig.stats.overruns.load(Ordering::Relaxed) == 0 {
        assert!(id < 1_000_000, "no overrun");
        for _ in 0..500 {
            let side = if id.is_multiple_of(2) { "buy" } else { "sell" };
            let price = format!("{}.00", 59_990 + id * 7 % 21);
            let order = json!({"method": "order.place", "id": id,
                "params": {"market": "BTC-USDT", "side": side, "price": price, "qty": "0.0003"}});
            id += 1;
            if maker.ws.send(Message::text(order.to_string())).is_err() {
                break;
            }
        }
    }
    let (code, reason) = closed(&mut maker);
    assert_eq!(code, 1013, "{reason}");
    assert!(reason.contains("interrupted"), "{reason}");
    wait_until("the books were reloaded", || {
        rig.stats.resyncs.load(Ordering::Relaxed) >= 1
    });
    let mut trader = connect(rig.ws);
    auth(&mut trader, TAKER_KEY, 2);
    for i in 0..20u64 {
        let side = if i.is_multiple_of(2) { "buy" } else { "sell" };
        let price = format!("{}.00", 59_995 + i % 11);
        place(&mut trader, 10 + i, side, &price, "0.0002");
    }
    assert_eq!(
        place(&mut trader, 50, "buy", "50000.00", "0.0001")["result"]["status"],
        "new"
    );
}

/// The engine's book side as the messages write it.
fn engine_levels(ex: &Exchange, side: Side) -> Vec<Value> {
    let units = ringex_gateway::units::Units::new(1, 10_000, 8, 6).unwrap();
    let text = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut v = Vec::new();
        f(&mut v);
        String::from_utf8(v).unwrap()
    };
    ex.market(MARKET)
        .unwrap()
        .book
        .depth(side, usize::MAX)
        .into_iter()
        .map(|(p, q)| json!([text(&|o| units.price(p, o)), text(&|o| units.qty(q, o))]))
        .collect()
}

#[test]
fn after_an_overrun_subscribers_stay_get_a_fresh_snapshot_and_a_gap_notice_and_reconcile() {
    // An outbound hand-off of 64 slots: a pipelined burst of orders puts far more
    // engine output in it than that before the retail loop takes it.
    let rig = Rig::start_with(
        RetailConfig {
            messages_per_second: 100_000,
            requests_per_second_per_key: 100_000,
            ..RetailConfig::loopback()
        },
        64,
    );
    let mut watchers: Vec<(Client, ClientBook)> = (0..2)
        .map(|_| {
            let mut w = connect(rig.ws);
            send(
                &mut w,
                json!({"method": "subscribe", "params": {"channels": ["depth", "trades"], "markets": ["BTC-USDT"]}, "id": 1}),
            );
            reply(&mut w, 1);
            let mut book = ClientBook::default();
            book.take(&recv_until(&mut w, "the depth snapshot", |m| {
                m["channel"] == "depth"
            }));
            (w, book)
        })
        .collect();
    overrun_then_trade(&rig);
    let overruns = rig.stats.overruns.load(Ordering::Relaxed);
    for (w, book) in &mut watchers {
        let mut gaps = Vec::new();
        while !book.bids.contains_key(&5_000_000) {
            let m = recv(w);
            match (m["channel"].as_str(), m["type"].as_str()) {
                (Some("depth"), _) => book.take(&m),
                (Some("trades"), Some("gap")) => {
                    assert_eq!(m["market"], "BTC-USDT");
                    gaps.push(m["seq"].as_u64().unwrap());
                }
                (Some("trades"), Some("update" | "snapshot")) => {}
                _ => panic!("unexpected: {m}"),
            }
        }
        // One fresh snapshot and one gap notice per reload (each reload may follow
        // more than one overrun while the books were still being asked for).
        assert!(book.snapshots >= 2, "a fresh snapshot after the overrun");
        assert!(
            !gaps.is_empty() && gaps.len() as u64 <= overruns,
            "{gaps:?}"
        );
        assert_eq!(gaps.len() as u32, book.snapshots - 1);
    }
    let (w, _) = &mut watchers[0];
    send(w, json!({"method": "ping", "id": 9}));
    assert_eq!(
        reply(w, 9)["result"],
        "pong",
        "the watcher is still connected"
    );
    let ex = rig.stop();
    for side in [Side::Buy, Side::Sell] {
        let engine = engine_levels(&ex, side);
        for (_, book) in &watchers {
            assert_eq!(book.side(side), engine, "{side:?}");
        }
    }
}

#[test]
fn a_python_websockets_client_keeps_its_book_across_an_overrun() {
    let test = "a_python_websockets_client_keeps_its_book_across_an_overrun";
    let Some((python, script)) = python_book_check(test) else {
        return;
    };
    let rig = Rig::start_with(
        RetailConfig {
            messages_per_second: 100_000,
            requests_per_second_per_key: 100_000,
            ..RetailConfig::loopback()
        },
        64,
    );
    let mut child = std::process::Command::new(&python)
        .arg(&script)
        .args(["--url", &format!("ws://{}/ws", rig.ws)])
        .args(["--watch-until", "50000.00"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert!(line.contains("subscribed"), "{line}");
    overrun_then_trade(&rig);
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr);
    assert!(status.success(), "{stderr}");
    line.clear();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    let seen: Value = serde_json::from_str(&line).unwrap();
    assert!(seen["snapshots"].as_u64().unwrap() >= 2, "{seen}");
    assert!(seen["gaps"].as_u64().unwrap() >= 1, "{seen}");
    let ex = rig.stop();
    assert_eq!(
        seen["bids"].as_array().unwrap(),
        &engine_levels(&ex, Side::Buy)
    );
    assert_eq!(
        seen["asks"].as_array().unwrap(),
        &engine_levels(&ex, Side::Sell)
    );
}

#[test]
fn a_flood_of_empty_fragments_holds_up_no_other_client() {
    // A message that never ends, sent as empty continuation frames as fast as two
    // connections can write them: neither the message rate (no message completes) nor
    // the message size (nothing is assembled) stops it, so the loop must take only a
    // bounded share of any one connection's frames per pass.
    // The measuring client asks as fast as it is answered, so its rate is raised.
    let rig = Rig::start(RetailConfig {
        messages_per_second: 100_000,
        ..RetailConfig::loopback()
    });
    let stop = Arc::new(AtomicBool::new(false));
    // The flood ends with the test, however it ends.
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let _stop_on_drop = StopOnDrop(Arc::clone(&stop));
    let written = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let flooders: Vec<JoinHandle<()>> = (0..2)
        .map(|_| {
            let (mut s, head) = raw_upgrade(rig.ws, "/ws", None);
            assert!(head.starts_with("HTTP/1.1 101"), "{head}");
            let (stop, written) = (Arc::clone(&stop), Arc::clone(&written));
            std::thread::spawn(move || {
                let subscribe = json!({"method": "subscribe", "id": 1,
                    "params": {"channels": ["bbo"], "markets": ["BTC-USDT"]}});
                s.write_all(&client_frame(
                    0x1,
                    true,
                    false,
                    subscribe.to_string().as_bytes(),
                ))
                .unwrap();
                s.write_all(&client_frame(0x1, false, false, b"")).unwrap();
                let burst = client_frame(0x0, false, false, b"").repeat(10_000);
                while !stop.load(Ordering::Relaxed) {
                    if s.write_all(&burst).is_err() {
                        break;
                    }
                    written.fetch_add(burst.len() as u64, Ordering::Relaxed);
                }
            })
        })
        .collect();
    wait_until("the flood is under way", || {
        written.load(Ordering::Relaxed) > 4 << 20
    });
    let mut c = connect(rig.ws);
    let mut worst = Duration::ZERO;
    let start = Instant::now();
    send(
        &mut c,
        json!({"method": "subscribe", "id": 0,
               "params": {"channels": ["bbo"], "markets": ["BTC-USDT"]}}),
    );
    reply(&mut c, 0);
    worst = worst.max(start.elapsed());
    // Long enough for a connection that always has bytes to be read again pass after
    // pass (and raise a readiness event on every arrival besides).
    let flooding = Instant::now();
    for id in 1.. {
        if flooding.elapsed() > Duration::from_secs(4) {
            break;
        }
        let start = Instant::now();
        send(&mut c, json!({"method": "ping", "id": id}));
        assert_eq!(reply(&mut c, id)["result"], "pong");
        worst = worst.max(start.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    let flooded = written.load(Ordering::Relaxed);
    for f in flooders {
        f.join().unwrap();
    }
    // Unbounded, one pass took a whole 1 MiB read of each flooder (174,762 frames): a
    // reply waited 12 s in a debug build. Bounded per read but queued again on every
    // readiness event, a flooder was read once more per pass as passes went by: 150 ms
    // after 3 s. Bounded: 8 ms (2026-12-08).
    assert!(
        worst < Duration::from_millis(100),
        "a reply took {worst:?} while {flooded} bytes of empty frames came in"
    );
}
