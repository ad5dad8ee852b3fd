//! The operator's journal toolkit (`ringex journal export|events|order|account|tail|seek|
//! stats|diff|snapshot|prune`, `verify --deep`, `dump`), run as the real binary on
//! journals written by a real node: a known history answers known questions; damage is an
//! error that says where, never a panic; a live writer beside the tools raises no alarm.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};

use ringex::config::Config;
use ringex::node::{CountingSink, Node, NodeError, OutputMode};
use ringex_engine::{
    Command, Exchange, OrderKind, OrderRef, PlaceOrder, Query, QueryReply, Side, StpMode,
    TimeInForce,
};
use ringex_tools::journal::format as fmt;
use serde_json::Value;

fn config(dir: &Path) -> Config {
    let text = ringex::config::DEFAULT_CONFIG_TOML
        .replace(
            "data_dir = \"./data\"",
            &format!("data_dir = \"{}\"", dir.display()),
        )
        .replace("segment_size_mib = 64", "segment_size_mib = 1")
        .replace("every_commands = 1000000", "every_commands = 0")
        .replace("every_seconds = 300 ", "every_seconds = 0 ");
    Config::parse(&text, "test.toml").expect("test config is valid")
}

fn place(account: u32, side: Side, tif: TimeInForce, price: i64, qty: u64, cid: u64) -> Command {
    Command::Place(PlaceOrder {
        account,
        market: 1,
        client_order_id: cid,
        side,
        kind: OrderKind::Limit,
        tif,
        price,
        qty,
        quote_budget: 0,
        stp: StpMode::None,
    })
}

/// The history after the default config's 17 bootstrap commands, on BTC-USDT (reference
/// price 6,000,000 ticks, band ±10%):
/// - 18: 1001 sells 5 at 6,000,000 (order 1 rests)
/// - 19: 1002 buys 3 at 6,000,000 IOC (order 2, fills 3 against order 1)
/// - 20: 1002 buys 1 at 9,000,000: rejected, outside the band
/// - 21: 1001 cancels order 1 (2 lots unfilled)
/// - 22: 1002 cancels order 1: rejected, unknown order
/// - 23: 1001 buys 4 at 5,900,000 (order 3 rests)
fn trading() -> Vec<Command> {
    vec![
        place(1001, Side::Sell, TimeInForce::Gtc, 6_000_000, 5, 11),
        place(1002, Side::Buy, TimeInForce::Ioc, 6_000_000, 3, 21),
        place(1002, Side::Buy, TimeInForce::Gtc, 9_000_000, 1, 22),
        Command::Cancel {
            account: 1001,
            market: 1,
            order: OrderRef::Exchange(1),
        },
        Command::Cancel {
            account: 1002,
            market: 1,
            order: OrderRef::Exchange(1),
        },
        place(1001, Side::Buy, TimeInForce::Gtc, 5_900_000, 4, 12),
    ]
}

fn submit(node: &mut Node, command: &Command) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        match node.submit(command, 0) {
            Ok(()) => return,
            Err(NodeError::Backpressure) if std::time::Instant::now() < deadline => {}
            Err(e) => panic!("submit: {e}"),
        }
    }
}

/// Every command of the known history, bootstrap first.
fn history(cfg: &Config) -> Vec<Command> {
    let mut all: Vec<Command> = cfg
        .bootstrap_commands()
        .into_iter()
        .map(|(_, c)| c)
        .collect();
    assert_eq!(all.len(), 17);
    all.extend(trading());
    all
}

/// What the live node answered while it wrote the known history.
struct Answers {
    /// Every event, with the sequence of the command that produced it.
    events: Vec<(u64, ringex_engine::Event)>,
    /// (account, the sequence it was asked after) -> its balances and open orders.
    accounts: Vec<((u32, u64), Vec<QueryReply>)>,
}

/// A node in poll mode, its outputs drained as the gateway drains them.
struct Live {
    node: Node,
    slots: Vec<ringex::node::slots::OutputSlot>,
    woken: std::sync::mpsc::Receiver<()>,
    queries: u64,
}

const QUERY_TAG: u64 = 1 << 60;

impl Live {
    fn start(cfg: &Config) -> Live {
        let (tx, woken) = std::sync::mpsc::channel();
        let waker: ringex::node::Waker = std::sync::Arc::new(move || {
            let _ = tx.send(());
        });
        let node = Node::start(cfg, OutputMode::Poll(waker)).unwrap();
        Live {
            node,
            slots: Vec::new(),
            woken,
            queries: 0,
        }
    }

    fn drain(&mut self) {
        let slots = &mut self.slots;
        self.node.poll_outputs(1 << 16, |s| slots.push(*s));
    }

    fn submit(&mut self, c: &Command, tag: u64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            match self.node.submit(c, tag) {
                Ok(()) => return,
                Err(NodeError::Backpressure) if std::time::Instant::now() < deadline => {
                    self.drain()
                }
                Err(e) => panic!("submit: {e}"),
            }
        }
    }

    /// The node's answer to `q`, after every command submitted before it.
    fn query(&mut self, q: Query) -> Vec<QueryReply> {
        self.queries += 1;
        let tag = QUERY_TAG + self.queries;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            match self.node.submit_query(&q, tag) {
                Ok(()) => break,
                Err(NodeError::Backpressure) if std::time::Instant::now() < deadline => {
                    self.drain()
                }
                Err(e) => panic!("query: {e}"),
            }
        }
        loop {
            self.drain();
            if self.slots.iter().any(|s| s.tag == tag && s.last) {
                break;
            }
            self.node.want_wake();
            if self.node.outputs_available() {
                continue;
            }
            self.woken
                .recv_timeout(std::time::Duration::from_secs(60))
                .expect("the node wakes its owner");
        }
        self.slots
            .iter()
            .filter(|s| s.tag == tag)
            .filter_map(|s| match s.item {
                ringex_engine::Output::Reply(r) => Some(r),
                _ => None,
            })
            .collect()
    }

    fn account(&mut self, account: u32) -> Vec<QueryReply> {
        let mut r = self.query(Query::Balances { account });
        r.extend(self.query(Query::OpenOrders {
            account,
            market: None,
        }));
        r
    }
}

/// A node's data directory holding the known history, with a snapshot after sequence 19
/// and the final one after 23; what the node answered on the way.
fn known_history(dir: &Path) -> (Config, Answers) {
    let cfg = config(dir);
    let mut live = Live::start(&cfg);
    let mut accounts = Vec::new();
    for (i, c) in history(&cfg).iter().enumerate() {
        let seq = i as u64 + 1;
        live.submit(c, seq);
        if seq == 19 {
            live.node.request_snapshot().unwrap();
            accounts.push(((1001, seq), live.account(1001)));
        }
        if seq == 20 {
            accounts.push(((1002, seq), live.account(1002)));
        }
    }
    for account in [1001, 1002] {
        accounts.push(((account, 23), live.account(account)));
    }
    // Every event is out before the last query's answer.
    let events = live
        .slots
        .iter()
        .filter(|s| s.tag < QUERY_TAG)
        .filter_map(|s| match s.item {
            ringex_engine::Output::Event(e) => Some((s.seq, e)),
            _ => None,
        })
        .collect();
    assert_eq!(live.node.shutdown().unwrap().seq_last, 23);
    (cfg, Answers { events, accounts })
}

/// The engine after the first `n` commands of the history, for what the node answered.
fn engine_after(cfg: &Config, n: usize) -> Exchange {
    let mut ex = Exchange::new();
    let mut events = Vec::new();
    for c in &history(cfg)[..n] {
        ex.apply(c, &mut events);
    }
    ex
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn ringex(args: &[&str], dir: &Path) -> Run {
    let out = Process::new(env!("CARGO_BIN_EXE_ringex"))
        .arg("journal")
        .args(args)
        .arg("--dir")
        .arg(dir)
        .output()
        .expect("run ringex journal");
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(
        !run.stderr.contains("panicked"),
        "{args:?} panicked: {}",
        run.stderr
    );
    run
}

fn ok(args: &[&str], dir: &Path) -> String {
    let run = ringex(args, dir);
    assert_eq!(run.code, 0, "{args:?}: {}", run.stderr);
    run.stdout
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn seqs(lines: &[Value]) -> Vec<u64> {
    lines.iter().map(|v| v["seq"].as_u64().unwrap()).collect()
}

#[test]
fn export_streams_the_known_history_in_text_jsonl_and_csv_with_filters() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    known_history(dir);
    let text = ok(&["export", "--from-seq", "18"], dir);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 6, "{text}");
    // SEQ TIME ts=NANOS epoch=E TYPE key=value...: the time in ISO 8601 UTC.
    let first: Vec<&str> = lines[0].split(' ').collect();
    assert_eq!(first[0], "18");
    assert!(
        first[1].len() == 30 && first[1].ends_with('Z') && first[1].as_bytes()[10] == b'T',
        "{}",
        lines[0]
    );
    assert!(
        lines[0].contains(
            "place account=1001 market=1 client_order_id=11 side=sell order_kind=limit \
             tif=gtc price=6000000 qty=5 stp=none"
        ),
        "{}",
        lines[0]
    );
    assert!(
        lines[3].ends_with("cancel account=1001 market=1 order_id=1"),
        "{}",
        lines[3]
    );
    assert!(!text.contains('{'), "no debug formatting: {text}");

    let all = json_lines(&ok(&["export", "--format", "jsonl"], dir));
    assert_eq!(seqs(&all), (1..=23).collect::<Vec<_>>());
    assert_eq!(all[0]["type"], "create_asset");
    assert_eq!(all[18]["type"], "place");
    assert_eq!(all[18]["account"], 1002);
    assert_eq!(all[18]["tif"], "ioc");
    // An API key's secret hash is key-equivalent: never exported.
    let keys: Vec<&Value> = all.iter().filter(|v| v["type"] == "add_api_key").collect();
    assert!(!keys.is_empty());
    assert!(keys.iter().all(|v| v["secret_hash"] == "<redacted>"));

    let csv = ok(&["export", "--format", "csv", "--type", "cancel"], dir);
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(
        rows[0],
        "seq,time,ts_ns,epoch,type,account,market,order_id,fields"
    );
    assert_eq!(rows.len(), 3, "{csv}");
    assert!(rows[1].starts_with("21,"), "{csv}");
    assert!(rows[1].ends_with(",cancel,1001,1,1,"), "{csv}");
    assert!(rows[2].ends_with(",cancel,1002,1,1,"), "{csv}");

    let by_account = json_lines(&ok(
        &["export", "--json", "--account", "1002", "--from-seq", "18"],
        dir,
    ));
    assert_eq!(seqs(&by_account), vec![19, 20, 22]);
    let range = json_lines(&ok(
        &["export", "--json", "--from-seq", "5", "--to-seq", "7"],
        dir,
    ));
    assert_eq!(seqs(&range), vec![5, 6, 7]);
    assert!(json_lines(&ok(
        &["export", "--json", "--market", "2", "--from-seq", "18"],
        dir
    ))
    .is_empty());
    // Times: everything written at or after record 21's time, and before it.
    let t21 = all[20]["ts_ns"].as_u64().unwrap();
    let iso21 = all[20]["time"].as_str().unwrap().to_string();
    let after: Vec<u64> = all
        .iter()
        .filter(|v| v["ts_ns"].as_u64().unwrap() >= t21)
        .map(|v| v["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(
        seqs(&json_lines(&ok(
            &["export", "--json", "--from-time", &iso21],
            dir
        ))),
        after
    );
    let before = json_lines(&ok(
        &["export", "--json", "--to-time", &t21.to_string()],
        dir,
    ));
    assert_eq!(before.len() + after.len(), 23);

    // What is wrong, and what to do.
    let bad = ringex(&["export", "--type", "fill"], dir);
    assert_eq!(bad.code, 1);
    assert!(
        bad.stderr
            .contains("unknown --type \"fill\"; the types are: place"),
        "{}",
        bad.stderr
    );
    let past = ringex(&["export", "--from-seq", "24"], dir);
    assert_eq!(past.code, 1);
    assert!(
        past.stderr.contains("past the journal's last record 23"),
        "{}",
        past.stderr
    );
    let time = ringex(&["export", "--from-time", "yesterday"], dir);
    assert_eq!(time.code, 2, "{}", time.stderr);
    assert!(time.stderr.contains("YYYY-MM-DD"), "{}", time.stderr);
}

#[test]
fn events_order_and_account_answer_what_happened_from_the_journal() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (cfg, answers) = known_history(dir);

    // Account 1002's fills and rejects, each with its reason.
    let trades = json_lines(&ok(
        &["events", "--json", "--type", "trade", "--account", "1002"],
        dir,
    ));
    assert_eq!(trades.len(), 1, "{trades:?}");
    let t = &trades[0];
    assert_eq!(
        (t["seq"].as_u64(), t["command"].as_str()),
        (Some(19), Some("place"))
    );
    assert_eq!(
        (t["maker_order_id"].as_u64(), t["taker_order_id"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(
        (t["price"].as_i64(), t["qty"].as_u64()),
        (Some(6_000_000), Some(3))
    );
    let rejects = ok(&["events", "--type", "rejected", "--account", "1002"], dir);
    let lines: Vec<&str> = rejects.lines().collect();
    assert_eq!(lines.len(), 2, "{rejects}");
    assert!(lines[0].starts_with("20 "), "{rejects}");
    assert!(
        lines[0].contains(
            "place -> rejected command=place account=1002 order_ref=22 reason=price_outside_band"
        ),
        "{rejects}"
    );
    assert!(lines[1].starts_with("22 "), "{rejects}");
    assert!(lines[1].contains("reason=unknown_order"), "{rejects}");
    // From a snapshot (after 19) on: the same events as a replay from the start.
    let from_snapshot = ok(&["events", "--json", "--from-seq", "20"], dir);
    let full = ok(&["events", "--json"], dir);
    let tail_of_full: Vec<Value> = json_lines(&full)
        .into_iter()
        .filter(|v| v["seq"].as_u64().unwrap() >= 20)
        .collect();
    assert_eq!(json_lines(&from_snapshot), tail_of_full);
    let csv = ok(&["events", "--format", "csv", "--order", "1"], dir);
    assert!(
        csv.starts_with("seq,time,ts_ns,epoch,command,event,account,market,order_id,fields\n"),
        "{csv}"
    );

    // An order's whole life, and where it stands.
    let life = ok(&["order", "1"], dir);
    let lines: Vec<&str> = life.lines().collect();
    assert!(
        lines[0].starts_with("18 ") && lines[0].contains(" place account=1001"),
        "{life}"
    );
    assert!(lines[1].contains("place -> accepted order_id=1"), "{life}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("19 ") && l.contains("-> trade ")),
        "{life}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("21 ")
            && l.contains("-> cancelled order_id=1")
            && l.contains("reason=requested")),
        "{life}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("22 ") && l.contains("reason=unknown_order")),
        "{life}"
    );
    assert_eq!(
        *lines.last().unwrap(),
        "order 1: cancelled (requested) at sequence 21, 2 lots unfilled",
        "{life}"
    );
    let open = json_lines(&ok(&["order", "3", "--json"], dir));
    assert_eq!(open.last().unwrap()["status"], "open");
    assert_eq!(open.last().unwrap()["remaining_qty"], 4);
    let taker = ok(&["order", "2"], dir);
    assert!(
        taker.ends_with("order 2: filled at sequence 19\n"),
        "{taker}"
    );
    let none = ringex(&["order", "99"], dir);
    assert_eq!(none.code, 1);
    assert!(
        none.stderr.contains("no order 99 in this journal"),
        "{}",
        none.stderr
    );
    assert!(none.stderr.contains("--type rejected"), "{}", none.stderr);

    // An account's balances and open orders agree with what the live node answered, at
    // the end (from the final snapshot) and at earlier sequences (by replay).
    for ((account, at), replies) in &answers.accounts {
        let (account, at) = (*account, *at);
        let at_seq = at.to_string();
        let args = [
            "account",
            &account.to_string(),
            "--json",
            "--at-seq",
            &at_seq,
        ];
        let got = &json_lines(&ok(&args, dir))[0];
        let mut balances = Vec::new();
        let mut orders = Vec::new();
        for r in replies.iter().copied() {
            match r {
                QueryReply::Balance {
                    asset,
                    available,
                    held,
                    ..
                } => balances.push((asset as u64, available, held)),
                QueryReply::OpenOrder {
                    order_id,
                    qty,
                    price,
                    ..
                } => orders.push((order_id, qty, price)),
                _ => {}
            }
        }
        let got_balances: Vec<(u64, i64, i64)> = got["balances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                (
                    b["asset"].as_u64().unwrap(),
                    b["available_minor"].as_i64().unwrap(),
                    b["held_minor"].as_i64().unwrap(),
                )
            })
            .collect();
        assert_eq!(got_balances, balances, "account {account} at {at}");
        let got_orders: Vec<(u64, u64, i64)> = got["open_orders"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| {
                (
                    o["order_id"].as_u64().unwrap(),
                    o["remaining_lots"].as_u64().unwrap(),
                    o["price_ticks"].as_i64().unwrap(),
                )
            })
            .collect();
        assert_eq!(got_orders, orders, "account {account} at {at}");
    }
    assert_eq!(answers.accounts.len(), 4);
    // Without --at-seq: after the journal's last record.
    assert_eq!(
        ok(&["account", "1002", "--json"], dir),
        ok(&["account", "1002", "--json", "--at-seq", "23"], dir)
    );
    // The engine fed the same commands directly agrees too.
    let ex = engine_after(&cfg, 23);
    assert!(ex.account(1001).is_some_and(|a| a.open_orders.len() == 1));

    // Every event the live node produced, in order, is the replay's.
    let replayed = json_lines(&ok(&["events", "--json"], dir));
    assert_eq!(replayed.len(), answers.events.len());
    for (line, (seq, event)) in replayed.iter().zip(&answers.events) {
        assert_eq!(line["seq"].as_u64(), Some(*seq), "{line}");
        assert_eq!(line["event"], fmt::event_type(event), "{line}");
        for (key, value) in fmt::event_fields(event) {
            let expected = match value {
                fmt::V::U(x) => Value::from(x),
                fmt::V::I(x) => Value::from(x),
                fmt::V::S(x) => Value::from(x),
                fmt::V::N(x) => Value::from(x),
                fmt::V::B(x) => Value::from(x),
            };
            assert_eq!(line[key], expected, "{key} in {line}");
        }
    }
    let text = ok(&["account", "1001"], dir);
    assert!(
        text.starts_with("account 1001 after sequence 23 ("),
        "{text}"
    );
    // Decimals from integers: 10 BTC less the 3 lots (0.0003 BTC) sold; the 2 lots
    // cancelled are held no more.
    assert!(
        text.contains("BTC (asset 1): available 9.99970000, held 0.00000000"),
        "{text}"
    );
    assert!(
        text.contains("order 3 BTC-USDT (market 1): buy 4 lots at 5900000 ticks, client id 12"),
        "{text}"
    );
    let missing = ringex(&["account", "4242"], dir);
    assert_eq!(missing.code, 1);
    assert!(
        missing
            .stderr
            .contains("account 4242 does not exist at sequence 23"),
        "{}",
        missing.stderr
    );
}

#[test]
fn tail_seek_stats_snapshots_and_prune_on_the_known_history() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    known_history(dir);
    let all = json_lines(&ok(&["export", "--json"], dir));

    let tail = json_lines(&ok(&["tail", "-n", "3", "--json"], dir));
    assert_eq!(seqs(&tail), vec![21, 22, 23]);
    assert_eq!(ok(&["tail"], dir).lines().count(), 10);

    let at = &json_lines(&ok(&["seek", "--seq", "20", "--json"], dir))[0];
    assert_eq!(at["seq"], 20);
    let segment = PathBuf::from(at["segment"].as_str().unwrap());
    let bytes = std::fs::read(&segment).unwrap();
    let offset = at["offset_bytes"].as_u64().unwrap() as usize;
    // The frame there holds sequence 20 (the header's sequence field, little-endian).
    let frame = &bytes[offset..offset + at["frame_bytes"].as_u64().unwrap() as usize];
    assert!(
        frame.windows(8).any(|w| w == 20u64.to_le_bytes()),
        "a frame of record 20"
    );
    let t20 = all[19]["ts_ns"].as_u64().unwrap();
    let by_time = &json_lines(&ok(&["seek", "--time", &t20.to_string(), "--json"], dir))[0];
    let found = by_time["seq"].as_u64().unwrap();
    assert!(
        found <= 20 && by_time["ts_ns"].as_u64().unwrap() >= t20,
        "{by_time}"
    );
    let late = ringex(&["seek", "--time", "2500-01-01"], dir);
    assert_eq!(late.code, 1);
    assert!(
        late.stderr
            .contains("no record written at or after 2500-01-01T00:00:00.000000000Z"),
        "{}",
        late.stderr
    );
    let text = ok(&["seek", "--seq", "20"], dir);
    assert!(text.starts_with("sequence 20: segment "), "{text}");

    let stats = &json_lines(&ok(&["stats", "--json"], dir))[0];
    assert_eq!(stats["records"], 23);
    assert_eq!(
        (stats["seq_first"].as_u64(), stats["seq_last"].as_u64()),
        (Some(1), Some(23))
    );
    let group = |name: &str| {
        stats["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["group"] == name)
            .map(|g| g["records"].as_u64().unwrap())
    };
    assert_eq!(group("place"), Some(4));
    assert_eq!(group("cancel"), Some(2));
    assert_eq!(group("create_account"), Some(3));
    let by_market = &json_lines(&ok(&["stats", "--json", "--by", "market"], dir))[0];
    assert_eq!(by_market["groups"][0]["group"], "market 1");
    // Its creation and the six trading commands.
    assert_eq!(by_market["groups"][0]["records"], 7, "{by_market}");
    let text = ok(&["stats", "--by", "minute"], dir);
    assert!(text.starts_with("23 records, "), "{text}");

    let list = ok(&["snapshot", "list"], dir);
    assert!(
        list.contains("seq 19: ") && list.contains("seq 23: "),
        "{list}"
    );
    let verify = ok(&["snapshot", "verify"], dir);
    assert_eq!(
        verify
            .matches("ok, and the journal's chain value agrees")
            .count(),
        2,
        "{verify}"
    );
    let describe = &json_lines(&ok(&["snapshot", "describe", "--json"], dir))[0];
    assert_eq!(describe["seq"], 23);
    assert_eq!(describe["next_order_id"], 4);
    assert_eq!(describe["markets"][0]["resting_orders"], 1);
    assert_eq!(describe["markets"][0]["trades"], 1);
    // The open-order caps in force (defaults here: the config sets none).
    assert_eq!(
        describe["markets"][0]["max_open_orders_per_account"],
        100_000
    );
    assert_eq!(describe["markets"][0]["max_open_orders"], 2_000_000);
    let old = ok(&["snapshot", "describe", "--seq", "19"], dir);
    assert!(old.contains("state after sequence 19"), "{old}");
    assert!(
        old.contains("open-order caps 100000 per account and 2000000 in the book"),
        "{old}"
    );

    let prune = ok(&["prune", "--dry-run"], dir);
    assert!(
        prune.contains("oldest snapshot at sequence 19: pruning would remove 0 segment(s)"),
        "{prune}"
    );
    let refused = ringex(&["prune"], dir);
    assert_eq!(refused.code, 1);
    assert!(
        refused.stderr.contains("prunes its own journal"),
        "{}",
        refused.stderr
    );

    let v = &json_lines(&ok(&["verify", "--deep", "--json"], dir))[0];
    assert_eq!(
        (v["ok"].as_bool(), v["seq_last"].as_u64()),
        (Some(true), Some(23))
    );
    assert_eq!(v["deep_records_decoded"], 23);
    assert!(v["torn_tail"].is_null(), "{v}");
    let deep = ok(&["verify", "--deep"], dir);
    assert!(deep.contains("deep: 23 record(s) read"), "{deep}");
    let dump = ok(&["dump", "--from", "18", "--count", "1"], dir);
    assert!(
        dump.starts_with("18 ") && dump.contains(" ts=") && dump.contains("Z ts="),
        "{dump}"
    );
    let describe = ok(&["describe"], dir);
    assert!(
        describe.contains("Z ("),
        "ISO times beside nanoseconds: {describe}"
    );
}

/// A copy of a journal directory (segments only), for journals that share a history.
fn copy_journal(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.join("journal")).unwrap();
    for e in std::fs::read_dir(from.join("journal")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "seg") {
            std::fs::copy(&p, to.join("journal").join(p.file_name().unwrap())).unwrap();
        }
    }
}

#[test]
fn diff_finds_the_first_record_where_two_journals_part() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    known_history(&a);
    // B: A's journal to sequence 20, then other commands from 21 on.
    let b = tmp.path().join("b");
    copy_journal(&a, &b);
    let cut = Process::new(env!("CARGO_BIN_EXE_ringex"))
        .args(["journal", "repair", "--truncate-at", "21", "--dir"])
        .arg(b.join("journal"))
        .output()
        .unwrap();
    assert!(
        cut.status.success(),
        "{}",
        String::from_utf8_lossy(&cut.stderr)
    );
    let mut node = Node::start(&config(&b), OutputMode::Sink(Box::new(CountingSink))).unwrap();
    for c in trading().iter().rev().take(3) {
        submit(&mut node, c);
    }
    node.shutdown().unwrap();

    let diff = |x: &Path, y: &Path, json: bool| {
        let mut cmd = Process::new(env!("CARGO_BIN_EXE_ringex"));
        cmd.args(["journal", "diff"]).arg(x).arg(y);
        if json {
            cmd.arg("--json");
        }
        let out = cmd.output().unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, stderr) = diff(&a, &b, false);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stdout.contains("the journals agree on sequences 1..=20"),
        "{stdout}"
    );
    assert!(
        stdout.contains("FIRST DIFFERENCE at sequence 21:"),
        "{stdout}"
    );
    assert!(
        stdout.contains("cancel account=1001 market=1 order_id=1"),
        "{stdout}"
    );
    assert!(stderr.contains("differ from sequence 21 on"), "{stderr}");
    let (code, stdout, _) = diff(&a, &b, true);
    assert_eq!(code, 1);
    let v: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(
        (v["agree_through"].as_u64(), v["first_difference"].as_u64()),
        (Some(20), Some(21))
    );

    // A journal and its copy agree; a copy that is behind is behind, not divergent.
    let c = tmp.path().join("c");
    copy_journal(&a, &c);
    let (code, stdout, _) = diff(&a, &c, false);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("agree on sequences 1..=23") && stdout.contains("both end there"),
        "{stdout}"
    );
    let cut = Process::new(env!("CARGO_BIN_EXE_ringex"))
        .args(["journal", "repair", "--truncate-at", "22", "--dir"])
        .arg(c.join("journal"))
        .output()
        .unwrap();
    assert!(cut.status.success());
    let (code, stdout, _) = diff(&a, &c, false);
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.contains("is 2 record(s) behind, not divergent"),
        "{stdout}"
    );

    // Beside a running node the ends are read at different moments: a journal being
    // written may look behind the other only because it was read first, so diff does not
    // say which is behind (a standby read later can seem ahead of its primary).
    let node = Node::start(&config(&c), OutputMode::Sink(Box::new(CountingSink))).unwrap();
    let (code, stdout, _) = diff(&a, &c, false);
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.contains("agree on sequences 1..=21")
            && stdout.contains("being written")
            && stdout.contains("which journal is behind is not judged")
            && !stdout.contains("record(s) behind"),
        "{stdout}"
    );
    node.shutdown().unwrap();
}

/// A journal of several 1 MiB segments and no snapshot.
fn several_segments(dir: &Path) -> Vec<PathBuf> {
    let cfg = config(dir);
    let w = ringex::bench::engine::generate(2, 40_000, 11);
    let mut node = Node::start(&cfg, OutputMode::Sink(Box::new(CountingSink))).unwrap();
    for c in w.setup.iter().chain(&w.prefill).chain(&w.commands) {
        submit(&mut node, c);
    }
    // Dropped without a shutdown: no final snapshot.
    drop(node);
    let mut segs: Vec<PathBuf> = std::fs::read_dir(dir.join("journal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segs.sort();
    assert!(segs.len() >= 3, "{segs:?}");
    segs
}

/// Every verb that reads through the damage exits 1 naming it; none panics.
fn every_verb_refuses(dir: &Path, what: &str) {
    let reading: [&[&str]; 7] = [
        &["export"],
        &["events"],
        &["stats"],
        &["account", "1"],
        &["order", "1"],
        &["verify", "--deep"],
        &["replay"],
    ];
    for args in reading {
        let run = ringex(args, dir);
        assert_eq!(run.code, 1, "{what}: {args:?} exits 1: {}", run.stderr);
        assert!(
            run.stderr.contains("corrupt") || run.stderr.contains("damage"),
            "{what}: {args:?} names the damage: {}",
            run.stderr
        );
        assert!(
            !run.stderr.contains(" { "),
            "{what}: {args:?}: no debug formatting: {}",
            run.stderr
        );
    }
    // The others answer what they can, or refuse; none panics (`ringex` checks).
    for args in [
        &["tail", "-n", "2"][..],
        &["seek", "--seq", "3"],
        &["snapshot", "list"],
        &["prune", "--dry-run"],
        &["dump", "--count", "100000"],
        &["describe"],
    ] {
        let run = ringex(args, dir);
        assert!(
            run.code == 0 || run.code == 1,
            "{what}: {args:?}: {}",
            run.stderr
        );
    }
}

#[test]
fn every_verb_on_a_damaged_journal_exits_non_zero_without_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let segs = several_segments(dir);
    let golden: Vec<Vec<u8>> = segs.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let restore = || {
        for (p, b) in segs.iter().zip(&golden) {
            std::fs::write(p, b).unwrap();
        }
    };

    // A flipped bit in a sealed segment's record.
    let mut b = golden[1].clone();
    b[golden[1].len() / 2] ^= 0x10;
    std::fs::write(&segs[1], &b).unwrap();
    every_verb_refuses(dir, "flipped bit");
    restore();

    // A missing segment, named as missing by the readers.
    std::fs::remove_file(&segs[1]).unwrap();
    every_verb_refuses(dir, "missing segment");
    let export = ringex(&["export"], dir);
    assert!(
        export.stderr.contains("segment is missing"),
        "export names the missing segment: {}",
        export.stderr
    );
    restore();

    // A torn tail: the newest record half written over.
    let last = segs.last().unwrap();
    let mut b = golden.last().unwrap().clone();
    let end = b.iter().rposition(|&x| x != 0).unwrap();
    assert!(end > 4096 + 64, "the newest segment holds records");
    for x in &mut b[end - 20..=end] {
        *x = 0xff;
    }
    std::fs::write(last, &b).unwrap();
    every_verb_refuses(dir, "torn tail");
}

#[test]
fn the_tools_read_beside_a_live_writer_without_alarm_and_tail_follows_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let cfg = config(&dir);
    let mut node = Node::start(&cfg, OutputMode::Sink(Box::new(CountingSink))).unwrap();
    for c in history(&cfg) {
        submit(&mut node, &c);
    }
    // The follower shows the newest record, then every record appended after it started.
    let mut follower = Process::new(env!("CARGO_BIN_EXE_ringex"))
        .args(["journal", "tail", "-n", "1", "-f", "--json", "--dir"])
        .arg(&dir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<u64>();
    let stdout = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            let v: Value = serde_json::from_str(&line).unwrap();
            if tx.send(v["seq"].as_u64().unwrap()).is_err() {
                return;
            }
        }
    });
    let wait = std::time::Duration::from_secs(120);
    assert_eq!(rx.recv_timeout(wait), Ok(23), "the newest record first");

    let w = ringex::bench::engine::generate(2, 30_000, 5);
    let commands: Vec<Command> = w
        .setup
        .iter()
        .chain(&w.prefill)
        .chain(&w.commands)
        .copied()
        .collect();
    let total = 23 + commands.len() as u64;
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let load = std::thread::spawn(move || {
        for c in &commands {
            submit(&mut node, c);
            let _ = stop_rx.try_recv();
        }
        node
    });
    // Meanwhile, the reading verbs see a consistent prefix and raise no alarm.
    for run in 0..5 {
        let export = json_lines(&ok(&["export", "--json", "--from-seq", "20"], &dir));
        let got = seqs(&export);
        assert!(got.len() >= 4, "run {run}");
        assert!(
            got.windows(2).all(|w| w[1] == w[0] + 1),
            "run {run}: dense sequences"
        );
        let stats = &json_lines(&ok(&["stats", "--json"], &dir))[0];
        assert!(stats["records"].as_u64().unwrap() >= 23, "run {run}");
        ok(&["events", "--type", "trade", "--from-seq", "18"], &dir);
        ok(&["verify", "--deep"], &dir);
    }
    drop(stop_tx);
    let node = load.join().unwrap();
    for expected in 24..=total {
        assert_eq!(rx.recv_timeout(wait), Ok(expected), "tail -f in order");
    }
    follower.kill().unwrap();
    let _ = follower.wait();
    node.shutdown().unwrap();
}

#[test]
fn every_verb_says_where_there_is_no_journal() {
    let empty = tempfile::tempdir().unwrap();
    for args in [
        &["export"][..],
        &["events"],
        &["order", "1"],
        &["account", "1"],
        &["tail"],
        &["seek", "--seq", "1"],
        &["stats"],
        &["prune", "--dry-run"],
        &["verify", "--deep"],
    ] {
        let run = ringex(args, empty.path());
        assert_eq!(run.code, 1, "{args:?}");
        assert!(
            run.stderr.contains("holds no journal segments")
                && run.stderr.contains("pass the journal directory"),
            "{args:?}: {}",
            run.stderr
        );
    }
    let run = ringex(&["snapshot", "list"], empty.path());
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("holds no snapshots"), "{}", run.stderr);
    let out = Process::new(env!("CARGO_BIN_EXE_ringex"))
        .args(["journal", "diff"])
        .arg(empty.path())
        .arg(empty.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("holds no journal segments"));
}

#[test]
fn an_empty_journal_is_shown_as_empty() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let node = Node::start(&config(dir), OutputMode::Sink(Box::new(CountingSink))).unwrap();
    node.shutdown().unwrap();
    let describe = ok(&["describe"], dir);
    assert!(describe.contains(": empty (0 records)"), "{describe}");
    assert!(!describe.contains("1..=0"), "{describe}");
    let verify = ok(&["verify", "--deep"], dir);
    assert!(verify.contains("records none"), "{verify}");
    assert!(verify.contains("deep: 0 record(s)"), "{verify}");
    assert_eq!(ok(&["export"], dir), "");
    assert_eq!(ok(&["events"], dir), "");
    assert_eq!(ok(&["tail"], dir), "");
    assert!(ok(&["stats"], dir).starts_with("0 records, 0 bytes\n"));
    let seek = ringex(&["seek", "--seq", "1"], dir);
    assert_eq!(seek.code, 1);
    assert!(seek.stderr.contains("no records yet"), "{}", seek.stderr);
    let dump = ringex(&["dump"], dir);
    assert_eq!(dump.code, 1);
    assert!(
        dump.stderr.contains("no record from sequence 1 on"),
        "{}",
        dump.stderr
    );
    let account = ringex(&["account", "1001"], dir);
    assert_eq!(account.code, 1);
    assert!(
        account.stderr.contains("does not exist"),
        "{}",
        account.stderr
    );
}

#[test]
fn verify_deep_names_a_record_that_passes_its_checksum_but_does_not_decode() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    std::fs::create_dir_all(&journal).unwrap();
    let mut cfg = ringex_journal::Config::new(&journal);
    cfg.segment_size_bytes = 1 << 16;
    cfg.record_size_bytes_max = 4096;
    cfg.low_space_threshold_bytes = 0;
    let mut j = ringex_journal::Journal::open(cfg).unwrap();
    let version = u16::from(ringex_engine::codec::CODEC_VERSION);
    let mut buf = Vec::new();
    // Records 1..=2000 over several segments; record 1500 is no command at all.
    for seq in 1..=2000u64 {
        buf.clear();
        if seq == 1500 {
            buf.extend_from_slice(&[0xff; 7]);
        } else {
            ringex_engine::codec::encode_command_vec(
                &Command::Deposit {
                    account: 7,
                    asset: 1,
                    amount: seq as i64,
                    external_ref: seq,
                },
                &mut buf,
            );
        }
        j.append(fmt::RECORD_COMMAND, version, seq, &buf).unwrap();
    }
    j.close().unwrap();
    assert!(ringex_journal::list_segments(&journal).unwrap().len() > 2);

    let run = ringex(&["verify", "--deep"], &journal);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.stderr
            .contains("record 1500 passes its checksum but does not decode"),
        "{}",
        run.stderr
    );
    let run = ringex(&["verify", "--deep", "--json"], &journal);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.stderr
            .contains("record 1500 passes its checksum but does not decode"),
        "{}",
        run.stderr
    );
    // Without --deep, only the frames are checked: they are intact.
    let plain = ok(&["verify"], &journal);
    assert!(plain.contains("records 1..=2000"), "{plain}");
}

/// A journal of 3,000 deposits over 64 KiB segments, each record's timestamp its
/// sequence; returns its segments, oldest first.
fn deposits_journal(journal: &Path) -> Vec<PathBuf> {
    std::fs::create_dir_all(journal).unwrap();
    let mut cfg = ringex_journal::Config::new(journal);
    cfg.segment_size_bytes = 1 << 16;
    cfg.record_size_bytes_max = 4096;
    cfg.low_space_threshold_bytes = 0;
    let mut j = ringex_journal::Journal::open(cfg).unwrap();
    let version = u16::from(ringex_engine::codec::CODEC_VERSION);
    let mut buf = Vec::new();
    for seq in 1..=3000u64 {
        buf.clear();
        ringex_engine::codec::encode_command_vec(
            &Command::Deposit {
                account: 7,
                asset: 1,
                amount: seq as i64,
                external_ref: seq,
            },
            &mut buf,
        );
        j.append(fmt::RECORD_COMMAND, version, seq, &buf).unwrap();
    }
    j.close().unwrap();
    let segs: Vec<PathBuf> = ringex_journal::list_segments(journal)
        .unwrap()
        .into_iter()
        .map(|s| s.path)
        .collect();
    assert!(segs.len() > 3, "{segs:?}");
    segs
}

fn base_seq(segment: &Path) -> u64 {
    let name = segment.file_stem().unwrap().to_str().unwrap();
    name.parse().unwrap()
}

#[test]
fn seek_names_the_damage_instead_of_answering_with_another_record() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    let segs = deposits_journal(&journal);
    let golden = std::fs::read(&segs[1]).unwrap();
    let base = base_seq(&segs[1]);
    let damaged = base + 50;

    // A flipped bit in the payload of record `damaged`, in a sealed segment.
    let at = &json_lines(&ok(
        &["seek", "--seq", &damaged.to_string(), "--json"],
        &journal,
    ))[0];
    let offset = at["offset_bytes"].as_u64().unwrap() as usize;
    let mut b = golden.clone();
    b[offset + 48 + 2] ^= 0x04;
    std::fs::write(&segs[1], &b).unwrap();

    let run = ringex(&["seek", "--seq", &damaged.to_string()], &journal);
    assert_eq!(
        run.code, 1,
        "the next record is not the one asked for: {}",
        run.stdout
    );
    assert!(
        run.stderr
            .contains(&format!("sequence {damaged} cannot be read"))
            && run.stderr.contains("damaged")
            && run.stderr.contains("ringex journal verify"),
        "{}",
        run.stderr
    );
    // Record 1 and those after the damage are where they were.
    ok(&["seek", "--seq", "1"], &journal);
    ok(&["seek", "--seq", &(damaged + 1).to_string()], &journal);
    // A time whose first record lies past the damage: the record asked for may be in it.
    let run = ringex(&["seek", "--time", &damaged.to_string()], &journal);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(run.stderr.contains("not all readable"), "{}", run.stderr);
    std::fs::write(&segs[1], &golden).unwrap();

    // A missing segment: its sequences and times are in no file.
    let missing = base_seq(&segs[2]);
    let kept = std::fs::read(&segs[2]).unwrap();
    std::fs::remove_file(&segs[2]).unwrap();
    let run = ringex(&["seek", "--seq", &(missing + 5).to_string()], &journal);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(run.stderr.contains("in no segment"), "{}", run.stderr);
    let run = ringex(&["seek", "--time", &(missing + 5).to_string()], &journal);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(run.stderr.contains("in no segment"), "{}", run.stderr);
    std::fs::write(&segs[2], &kept).unwrap();
    let found = &json_lines(&ok(
        &["seek", "--time", &(missing + 5).to_string(), "--json"],
        &journal,
    ))[0];
    assert_eq!(found["seq"], missing + 5);
}

#[test]
fn export_from_a_damaged_segment_gives_the_records_before_the_damage() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    let segs = deposits_journal(&journal);
    let base = base_seq(&segs[1]);
    let damaged = base + 50;
    let at = &json_lines(&ok(
        &["seek", "--seq", &damaged.to_string(), "--json"],
        &journal,
    ))[0];
    let offset = at["offset_bytes"].as_u64().unwrap() as usize;
    let mut b = std::fs::read(&segs[1]).unwrap();
    b[offset + 48 + 2] ^= 0x04;
    std::fs::write(&segs[1], &b).unwrap();

    // A range that ends before the damage is whole.
    let to = (damaged - 1).to_string();
    let from = base.to_string();
    let text = ok(
        &[
            "export",
            "--from-seq",
            &from,
            "--to-seq",
            &to,
            "--format",
            "jsonl",
        ],
        &journal,
    );
    assert_eq!(
        seqs(&json_lines(&text)),
        (base..damaged).collect::<Vec<_>>()
    );
    let text = ok(&["stats", "--from-seq", &from, "--to-seq", &to], &journal);
    assert!(text.starts_with("50 records, "), "{text}");
    let text = ok(&["events", "--to-seq", &to, "--format", "jsonl"], &journal);
    assert_eq!(json_lines(&text).last().unwrap()["seq"], damaged - 1);
    // One that reaches it gives what precedes it, then stops there with exit 1.
    let run = ringex(
        &["export", "--from-seq", &from, "--format", "jsonl"],
        &journal,
    );
    assert_eq!(run.code, 1);
    assert_eq!(
        seqs(&json_lines(&run.stdout)),
        (base..damaged).collect::<Vec<_>>()
    );
    assert!(
        run.stderr.contains(&format!("(sequence {damaged})")),
        "{}",
        run.stderr
    );
}

#[test]
fn a_range_that_holds_nothing_or_was_pruned_is_refused_not_shown_empty() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    let segs = deposits_journal(&journal);
    for verb in ["export", "stats"] {
        let run = ringex(&[verb, "--from-seq", "10", "--to-seq", "5"], &journal);
        assert_eq!(run.code, 1, "{verb}: {}", run.stdout);
        assert!(
            run.stderr.contains("--to-seq 5 is before --from-seq 10"),
            "{}",
            run.stderr
        );
        let run = ringex(&[verb, "--from-time", "100", "--to-time", "50"], &journal);
        assert_eq!(run.code, 1, "{verb}: {}", run.stdout);
        assert!(
            run.stderr.contains("is not after --from-time"),
            "{}",
            run.stderr
        );
    }
    // The oldest segment pruned: its sequences are no longer in the journal.
    std::fs::remove_file(&segs[0]).unwrap();
    let first = base_seq(&segs[1]);
    for verb in ["export", "stats", "events"] {
        let run = ringex(&[verb, "--to-seq", "5"], &journal);
        assert_eq!(run.code, 1, "{verb}: {}", run.stdout);
        assert!(
            run.stderr.contains(&format!(
                "--to-seq 5 is before the journal's first record {first}"
            )),
            "{verb}: {}",
            run.stderr
        );
    }
    // A range inside the journal still answers.
    let text = ok(&["stats", "--to-seq", &first.to_string()], &journal);
    assert!(text.starts_with("1 records, "), "{text}");
}

#[test]
fn events_on_a_pruned_journal_name_the_sequence_answers_start_from() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut cfg = config(dir);
    cfg.journal.prune_after_snapshot = false;
    let w = ringex::bench::engine::generate(2, 40_000, 11);
    let mut node = Node::start(&cfg, OutputMode::Sink(Box::new(CountingSink))).unwrap();
    let all: Vec<&Command> = w
        .setup
        .iter()
        .chain(&w.prefill)
        .chain(&w.commands)
        .collect();
    let half = all.len() / 2;
    for c in &all[..half] {
        submit(&mut node, c);
    }
    node.request_snapshot().unwrap();
    for c in &all[half..] {
        submit(&mut node, c);
    }
    node.shutdown().unwrap();
    let list = &json_lines(&ok(&["snapshot", "list", "--json"], dir))[0];
    let oldest = list["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["seq"].as_u64())
        .min()
        .unwrap();
    // Pruning as the node does it: the oldest segment, wholly before the oldest snapshot.
    let segs = ringex_journal::list_segments(&dir.join("journal")).unwrap();
    assert!(segs[1].base_seq <= oldest, "{oldest} {segs:?}");
    std::fs::remove_file(&segs[0].path).unwrap();

    let run = ringex(&["events"], dir);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.stderr.contains(&format!(
            "the oldest usable snapshot is at sequence {oldest}, so answers start after it \
             (--from-seq {})",
            oldest + 1
        )),
        "{}",
        run.stderr
    );
    let from = (oldest + 1).to_string();
    let events = ok(&["events", "--from-seq", &from, "--to-seq", &from], dir);
    assert!(events.starts_with(&format!("{from} ")), "{events}");
}

#[test]
fn a_journal_directory_that_cannot_be_read_is_named_as_such() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let tmp = tempfile::tempdir().unwrap();
    let journal = tmp.path().join("journal");
    deposits_journal(&journal);
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&journal, std::fs::Permissions::from_mode(0o000)).unwrap();
    let mut cmd = Process::new(env!("CARGO_BIN_EXE_ringex"));
    cmd.args(["journal", "verify", "--dir"]).arg(tmp.path());
    // Root reads any directory: the tool runs as an unprivileged user then.
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } == 0 {
        cmd.uid(65534).gid(65534);
    }
    let out = cmd.output().unwrap();
    std::fs::set_permissions(&journal, std::fs::Permissions::from_mode(0o755)).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot be read") && stderr.contains("Permission denied"),
        "{stderr}"
    );
    assert!(!stderr.contains("holds no journal segments"), "{stderr}");

    // A segment this user may not read: the error says so, and what to do.
    let segs = ringex_journal::list_segments(&journal).unwrap();
    std::fs::set_permissions(&segs[1].path, std::fs::Permissions::from_mode(0o000)).unwrap();
    let mut cmd = Process::new(env!("CARGO_BIN_EXE_ringex"));
    cmd.args(["journal", "export", "--dir"]).arg(&journal);
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } == 0 {
        cmd.uid(65534).gid(65534);
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("Permission denied") && stderr.contains("run as the user that owns"),
        "{stderr}"
    );
}

#[test]
fn describe_shows_every_segment_and_exits_1_when_one_has_a_problem() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    let segs = deposits_journal(&journal);
    let intact = ok(&["describe"], &journal);
    assert!(!intact.contains("PROBLEM"), "{intact}");

    let mut b = std::fs::read(&segs[1]).unwrap();
    b[20] ^= 0x01; // the segment header
    std::fs::write(&segs[1], &b).unwrap();
    for json in [false, true] {
        let args: &[&str] = if json {
            &["describe", "--json"]
        } else {
            &["describe"]
        };
        let run = ringex(args, &journal);
        assert_eq!(run.code, 1, "{}", run.stdout);
        // The whole description still, the damaged segment marked in it.
        assert_eq!(
            run.stdout.matches(".seg").count(),
            segs.len(),
            "{}",
            run.stdout
        );
        assert!(run.stdout.contains("header"), "{}", run.stdout);
        assert!(
            run.stderr.contains("1 segment(s) with a PROBLEM")
                && run.stderr.contains(&segs[1].display().to_string())
                && run.stderr.contains("ringex journal verify"),
            "{}",
            run.stderr
        );
    }

    // A missing segment: every file is sound, but sequences are in none of them.
    std::fs::remove_file(&segs[1]).unwrap();
    let run = ringex(&["describe"], &journal);
    assert_eq!(run.code, 1, "{}", run.stdout);
    let gap = format!(
        "sequences {}..={} are in no segment",
        base_seq(&segs[1]),
        base_seq(&segs[2]) - 1
    );
    assert!(run.stderr.contains(&gap), "{}", run.stderr);
}

#[test]
fn a_damaged_newest_snapshot_is_named_by_verify_and_snapshot_describe() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    known_history(dir);
    let verify = ok(&["verify"], dir);
    assert!(!verify.contains("snapshots:"), "{verify}");

    // The newest snapshot (at 23) with a flipped bit in its payload.
    let newest = dir
        .join("snapshots")
        .join(ringex_journal::snapshot_file_name(23));
    let mut b = std::fs::read(&newest).unwrap();
    let at = b.len() - 10;
    b[at] ^= 0x20;
    std::fs::write(&newest, &b).unwrap();

    // The journal is sound, so verify passes; it says which snapshot a start takes.
    let verify = ok(&["verify"], dir);
    assert!(
        verify.contains(&format!(
            "snapshots: the newest snapshot {} is damaged (",
            newest.display()
        )) && verify.contains("a start passes over it to the snapshot at sequence 19"),
        "{verify}"
    );
    let v = &json_lines(&ok(&["verify", "--json"], dir))[0];
    assert!(
        v["newest_snapshot_passed_over"]
            .as_str()
            .is_some_and(|n| n.contains("sequence 19")),
        "{v}"
    );
    // snapshot describe shows the newest usable one, and says why not the newest file.
    let run = ringex(&["snapshot", "describe"], dir);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("state after sequence 19"),
        "{}",
        run.stdout
    );
    assert!(
        run.stderr
            .contains("the newer snapshot(s) at sequence 23 are damaged"),
        "{}",
        run.stderr
    );
}
