//! A primary and its standby, both real nodes with real journals, streaming over
//! loopback: the standby holds the primary's journal byte for byte and reaches the same
//! state; in `sync` mode every command the primary applied exists on the standby, so a
//! promoted standby has everything any client was told about.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringex::bench::engine::generate;
use ringex::config::{Config, Role};
use ringex::node::{CountingSink, Node, NodeError, OutputMode};
use ringex::standby::{self, StandbyEnd};
use ringex_engine::Command;
use ringex_journal::FrameReader;

fn config(dir: &Path, role: &str, mode: &str, topology: &str, primary: &str) -> Config {
    let text = format!(
        r#"
[node]
id = {}
role = "{role}"
data_dir = "{}"

[journal]
durability = "group"
segment_size_mib = 1
low_space_mib = 0

[pipeline]
topology = "{topology}"
input_ring_size = 256
output_ring_size = 1024
wait = "backoff"
batch_max = 64

[snapshot]
every_commands = 0
every_seconds = 0
keep = 2

[listeners]
replication = "127.0.0.1:0"

[replication]
mode = "{mode}"
primary = "{primary}"
on_standby_loss = "halt"
heartbeat_ms = 20
silence_max_ms = 2000
checkpoint_every_commands = 1000

[metrics]
log_every_seconds = 0
"#,
        if role == "standby" { 2 } else { 1 },
        dir.display()
    );
    Config::parse(&text, "test.toml").expect("test config is valid")
}

fn stream(commands: usize) -> Vec<Command> {
    let w = generate(2, commands, 5);
    let mut all = w.setup;
    all.extend(w.prefill);
    all.extend(w.commands);
    all
}

/// Submits as a client would: a full ring is offered again, and so is a refusal of a
/// `sync` primary halted for a standby that is slow to acknowledge (a standby starting
/// on a loaded machine can take longer than the halt's one second), which it lifts once
/// the standby has caught up.
fn submit(node: &mut Node, command: &Command, tag: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match node.submit(command, tag) {
            Ok(()) => return,
            Err(NodeError::Backpressure) if Instant::now() < deadline => {}
            Err(NodeError::Refused(why))
                if why.contains("replication halted") && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("submit: {e}"),
        }
    }
}

/// A standby of the primary at `addr`, running on its own thread until told to stop or
/// to promote.
struct Standby {
    stop: Arc<AtomicBool>,
    promote: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<StandbyEnd, String>>,
}

impl Standby {
    fn start(config: Config) -> Standby {
        let stop = Arc::new(AtomicBool::new(false));
        let promote = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stop, promote) = (stop.clone(), promote.clone());
            std::thread::spawn(move || {
                standby::run(&config, stop, promote, Arc::new(|l| eprintln!("{l}")))
            })
        };
        Standby {
            stop,
            promote,
            thread,
        }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        assert!(matches!(
            self.thread.join().unwrap(),
            Ok(StandbyEnd::Stopped)
        ));
    }

    fn promote(self) -> (Node, u32, u64) {
        self.promote.store(true, Ordering::Relaxed);
        match self.thread.join().unwrap() {
            Ok(StandbyEnd::Promoted { node, epoch, seq }) => (*node, epoch, seq),
            Ok(StandbyEnd::Stopped) => panic!("stopped instead of promoted"),
            Err(e) => panic!("standby failed: {e}"),
        }
    }
}

/// Waits until the primary's link says the standby has `seq` durable.
fn wait_replicated(primary: &Node, seq: u64) {
    let link = primary
        .metrics()
        .replication
        .get()
        .cloned()
        .expect("a primary");
    assert!(
        link.wait_durable(seq, Duration::from_secs(60)),
        "the standby acknowledged {} of {seq}",
        link.durable()
    );
}

fn frames(dir: &Path, last: u64) -> Vec<u8> {
    let mut r = FrameReader::open(&dir.join("journal"), 1).unwrap();
    let (mut all, mut out) = (Vec::new(), Vec::new());
    while r.next_batch(&mut out, 1 << 20, last).unwrap().is_some() {
        all.extend_from_slice(&out);
    }
    all
}

#[test]
fn a_standby_reaches_the_primary_s_state_and_journal_in_every_topology_and_mode() {
    for (topology, mode) in [("fused", "sync"), ("inline", "async"), ("split", "sync")] {
        let tmp = tempfile::tempdir().unwrap();
        let (pdir, sdir) = (tmp.path().join("p"), tmp.path().join("s"));
        let pcfg = config(&pdir, "primary", mode, topology, "127.0.0.1:1");
        let mut primary = Node::start(&pcfg, OutputMode::Sink(Box::new(CountingSink))).unwrap();
        let addr = primary.replication_addr().unwrap().to_string();
        let commands = stream(6_000);
        // In async mode half go in before the standby exists (it catches up from the
        // files); a sync primary halts without a standby, so that one starts first.
        let early = if mode == "async" { 3_000 } else { 0 };
        for (i, c) in commands[..early].iter().enumerate() {
            submit(&mut primary, c, i as u64);
        }
        let standby = Standby::start(config(&sdir, "standby", mode, topology, &addr));
        for (i, c) in commands[early..].iter().enumerate() {
            submit(&mut primary, c, i as u64);
        }
        let (seq, hash) = primary.state_hash().unwrap();
        // The commands, and the primary's checkpoint records among them.
        assert!(seq > commands.len() as u64, "{topology}");
        wait_replicated(&primary, seq);
        standby.stop();
        primary.shutdown().unwrap();
        // The standby's data directory, opened as a node of its own: the same state.
        let node = Node::start(
            &config(&sdir, "single", "none", topology, "127.0.0.1:1"),
            OutputMode::Sink(Box::new(CountingSink)),
        )
        .unwrap();
        assert_eq!(node.recovery().seq_last, seq, "{topology} {mode}");
        assert_eq!(node.recovery().state_hash, hash, "{topology} {mode}");
        drop(node);
        assert_eq!(frames(&pdir, seq), frames(&sdir, seq), "{topology} {mode}");
    }
}

#[test]
fn a_promoted_sync_standby_has_every_command_the_primary_applied() {
    let tmp = tempfile::tempdir().unwrap();
    let (pdir, sdir) = (tmp.path().join("p"), tmp.path().join("s"));
    let pcfg = config(&pdir, "primary", "sync", "fused", "127.0.0.1:1");
    let mut primary = Node::start(&pcfg, OutputMode::Sink(Box::new(CountingSink))).unwrap();
    let addr = primary.replication_addr().unwrap().to_string();
    let standby = Standby::start(config(&sdir, "standby", "sync", "fused", &addr));
    let commands = stream(4_000);
    for (i, c) in commands.iter().enumerate() {
        submit(&mut primary, c, i as u64);
    }
    // Everything the primary applied (and so could have told a client about).
    let (seq, hash) = primary.state_hash().unwrap();
    // The primary dies (no shutdown, no final snapshot).
    drop(primary);
    let (mut node, epoch, epoch_seq) = standby.promote();
    assert_eq!(epoch, 2);
    assert_eq!(
        epoch_seq,
        seq + 1,
        "the epoch record follows the primary's last"
    );
    // Its state before the epoch record is the primary's.
    let (seq_now, hash_now) = node.state_hash().unwrap();
    assert_eq!(seq_now, seq + 1);
    assert_eq!(hash_now, hash, "the epoch record changes no state");
    // It takes orders in the new epoch.
    submit(&mut node, &commands[commands.len() - 1], 0);
    let (after, _) = node.state_hash().unwrap();
    assert_eq!(after, seq + 2);
    node.shutdown().unwrap();
    // A restart stays in the new epoch.
    let node = Node::start(
        &config(&sdir, "single", "none", "fused", "127.0.0.1:1"),
        OutputMode::Sink(Box::new(CountingSink)),
    )
    .unwrap();
    assert_eq!(node.epoch(), 2);
    assert_eq!(node.recovery().seq_last, seq + 2);
    let _ = Role::Single;
}

/// Every replay checks the primary's checkpoint records: the journal of a primary
/// restarts cleanly, and one with a checkpoint whose hash is not the state's refuses.
#[test]
fn a_replay_compares_its_state_with_the_primary_s_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let pdir = tmp.path().join("p");
    // A primary without a standby: async, so nothing waits.
    let pcfg = config(&pdir, "primary", "async", "fused", "127.0.0.1:1");
    let mut primary = Node::start(&pcfg, OutputMode::Sink(Box::new(CountingSink))).unwrap();
    let commands = stream(3_000);
    for (i, c) in commands.iter().enumerate() {
        submit(&mut primary, c, i as u64);
    }
    let (seq, hash) = primary.state_hash().unwrap();
    // No shutdown: no final snapshot, so a restart replays every record.
    drop(primary);
    let single = config(&pdir, "single", "none", "fused", "127.0.0.1:1");
    let node = Node::start(&single, OutputMode::Sink(Box::new(CountingSink))).unwrap();
    assert_eq!(node.recovery().state_hash, hash);
    assert!(
        seq > commands.len() as u64,
        "checkpoint records were journaled"
    );
    drop(node);
    // A checkpoint that does not match what the records produce.
    let mut c = ringex_journal::Config::new(pdir.join("journal"));
    c.epoch = 0;
    let mut j = ringex_journal::Journal::open(c).unwrap();
    let bogus = ringex::node::recovery::encode_checkpoint_record(2_000, 1_000, 0xbad);
    j.append(ringex::node::RECORD_CHECKPOINT, 1, u64::MAX / 2, &bogus)
        .unwrap();
    j.close().unwrap();
    let e = match Node::start(&single, OutputMode::Sink(Box::new(CountingSink))) {
        Ok(_) => panic!("a replay that diverged started"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("DIVERGED"), "{e}");
    assert!(e.contains("after sequence 2000"), "{e}");
}

/// A free port on loopback (the OS picks it; it is released for the node to bind).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One of the shipped example configs with its data in `dir`, ephemeral client ports,
/// the replication listener or primary at `port`, and small segments.
fn shipped(example: &str, dir: &Path, port: u16) -> Config {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(example);
    let text = std::fs::read_to_string(&path).unwrap();
    let mut text = text
        .replace("./data-standby", &dir.display().to_string())
        .replace("./data", &dir.display().to_string())
        .replace("segment_size_mib = 64", "segment_size_mib = 1")
        .replace("log_every_seconds = 5", "log_every_seconds = 0")
        .replace("127.0.0.1:9104", &format!("127.0.0.1:{port}"));
    for p in [9100, 9101, 9102, 9103, 9200, 9201, 9202, 9203, 9204] {
        text = text.replace(&format!("127.0.0.1:{p}"), "127.0.0.1:0");
    }
    Config::parse(&text, example).expect("the example parses")
}

/// The shipped primary and standby configs run a pair: orders placed through the
/// primary's gateway with the Rust client are on the standby, which is promoted when the
/// primary stops and serves them from its own gateway.
#[test]
fn the_shipped_configs_run_a_pair_that_fails_over_with_every_acknowledged_order() {
    use ringex_engine::{Side, TimeInForce};
    use ringex_tools::client::{Client, ClientOptions, OrderParams};
    let tmp = tempfile::tempdir().unwrap();
    let (pdir, sdir) = (tmp.path().join("p"), tmp.path().join("s"));
    let port = free_port();
    let pcfg = shipped("config/primary.toml", &pdir, port);
    let scfg = shipped("config/standby.toml", &sdir, port);
    assert_eq!(pcfg.node.role, Role::Primary);
    // The standby first: a sync primary that halts without one would not finish its
    // bootstrap (the standby retries until the primary listens).
    let standby = Standby::start(scfg.clone());
    // The primary, as `ringex start` runs it.
    let stop_primary = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let primary = {
        let (config, stop) = (pcfg.clone(), stop_primary.clone());
        std::thread::spawn(move || {
            ringex::serve::serve_listening(&config, stop, move |l| {
                let _ = ready_tx.send(l);
            })
        })
    };
    let listening = ready.recv_timeout(Duration::from_secs(60)).unwrap();
    let trading = listening.trading;
    let options = ClientOptions {
        timeout: Duration::from_secs(10),
        ..ClientOptions::default()
    };
    let mut maker = Client::connect(trading, 1, "demo-secret-1001", options.clone()).unwrap();
    let mut acked = Vec::new();
    for i in 0..50u64 {
        let r = maker
            .new_order(
                &OrderParams::limit(1, Side::Sell, 6_100_000 + i as i64 * 10, 1)
                    .client_order_id(i + 1)
                    .tif(TimeInForce::PostOnly),
            )
            .unwrap();
        acked.push(r.order_id().expect("accepted"));
    }
    drop(maker);
    // The primary's /health names its role and its standby, which holds every order.
    let http = listening.http.expect("the shipped config serves HTTP");
    let health = |http| -> serde_json::Value {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(http).unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        let body = answer.split("\r\n\r\n").nth(1).unwrap();
        serde_json::from_str(body).unwrap()
    };
    let start = std::time::Instant::now();
    let h = loop {
        let h = health(http);
        if h["replication"]["lag"] == 0 || start.elapsed() > Duration::from_secs(30) {
            break h;
        }
        std::thread::yield_now();
    };
    assert_eq!(
        (&h["role"], &h["status"]),
        (&"primary".into(), &"ok".into()),
        "{h}"
    );
    let r = &h["replication"];
    assert_eq!(
        (&r["mode"], &r["state"], &r["lag"]),
        (&"sync".into(), &"connected".into(), &0.into()),
        "{h}"
    );
    assert!(
        r["standbyDurable"].as_u64().unwrap() >= h["sequence"].as_u64().unwrap(),
        "{h}"
    );
    stop_primary.store(true, Ordering::Relaxed);
    primary.join().unwrap().unwrap();
    // Promoted: stopped, its epoch raised as `ringex promote` does, then started as the
    // primary with its own config's role changed.
    standby.stop();
    let mut node = Node::start(&scfg, OutputMode::Sink(Box::new(CountingSink))).unwrap();
    let epoch = node.epoch() + 1;
    node.promote(epoch).unwrap();
    node.shutdown().unwrap();
    let mut promoted = scfg.clone();
    promoted.node.role = Role::Primary;
    let stop_new = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let new_primary = {
        let stop = stop_new.clone();
        std::thread::spawn(move || ringex::serve::serve(&promoted, stop, Some(ready_tx)))
    };
    let (trading, _) = ready.recv_timeout(Duration::from_secs(60)).unwrap();
    let mut maker = Client::connect(trading, 1, "demo-secret-1001", options).unwrap();
    let open = maker.open_orders(1).unwrap();
    let mut ids: Vec<u64> = open.iter().map(|o| o.order_id).collect();
    ids.sort();
    assert_eq!(
        ids, acked,
        "every acknowledged order is on the promoted standby"
    );
    // It takes new orders.
    let r = maker
        .new_order(&OrderParams::limit(1, Side::Sell, 6_200_000, 1).tif(TimeInForce::PostOnly))
        .unwrap();
    assert!(r.order_id().is_some());
    drop(maker);
    stop_new.store(true, Ordering::Relaxed);
    new_primary.join().unwrap().unwrap();
}

/// A demoted primary restarted as the standby of the promoted one keeps nothing the new
/// primary lacks: its unreplicated suffix goes to the quarantine, and it follows.
#[test]
fn a_demoted_primary_rejoins_as_a_standby_and_quarantines_what_the_new_primary_lacks() {
    let tmp = tempfile::tempdir().unwrap();
    let (pdir, sdir) = (tmp.path().join("p"), tmp.path().join("s"));
    let mut primary = Node::start(
        &config(&pdir, "primary", "sync", "fused", "127.0.0.1:1"),
        OutputMode::Sink(Box::new(CountingSink)),
    )
    .unwrap();
    let addr = primary.replication_addr().unwrap().to_string();
    let standby = Standby::start(config(&sdir, "standby", "sync", "fused", &addr));
    let commands = stream(2_000);
    for (i, c) in commands.iter().enumerate() {
        submit(&mut primary, c, i as u64);
    }
    let (seq, _) = primary.state_hash().unwrap();
    drop(primary);
    // The old primary's journal also holds records its standby never received (its
    // unacknowledged tail).
    {
        let mut c = ringex_journal::Config::new(pdir.join("journal"));
        c.epoch = 0;
        let mut j = ringex_journal::Journal::open(c).unwrap();
        let mut buf = [0u8; ringex_engine::codec::COMMAND_SIZE_MAX];
        let n = ringex_engine::codec::encode_command(&commands[10], &mut buf);
        for _ in 0..3 {
            j.append(
                ringex::node::RECORD_COMMAND,
                u16::from(ringex_engine::codec::CODEC_VERSION),
                u64::MAX / 2,
                &buf[..n],
            )
            .unwrap();
        }
        j.close().unwrap();
    }
    // Failover: the standby promoted and started as the primary (async: no standby yet).
    let (node, _, _) = standby.promote();
    node.shutdown().unwrap();
    let mut new_primary = Node::start(
        &config(&sdir, "primary", "async", "fused", "127.0.0.1:1"),
        OutputMode::Sink(Box::new(CountingSink)),
    )
    .unwrap();
    let new_addr = new_primary.replication_addr().unwrap().to_string();
    submit(&mut new_primary, &commands[20], 0);
    let (new_seq, new_hash) = new_primary.state_hash().unwrap();
    assert!(new_seq > seq + 1);
    // The old primary, now a standby of the new one.
    let rejoined = Standby::start(config(&pdir, "standby", "sync", "fused", &new_addr));
    wait_replicated(&new_primary, new_seq);
    rejoined.stop();
    new_primary.shutdown().unwrap();
    let node = Node::start(
        &config(&pdir, "single", "none", "fused", "127.0.0.1:1"),
        OutputMode::Sink(Box::new(CountingSink)),
    )
    .unwrap();
    assert_eq!(node.recovery().seq_last, new_seq);
    assert_eq!(node.recovery().state_hash, new_hash);
    assert_eq!(node.epoch(), 2);
    drop(node);
    let quarantine = pdir.join("journal").join("quarantine");
    assert!(
        std::fs::read_dir(&quarantine).unwrap().next().is_some(),
        "the old suffix is kept in {}",
        quarantine.display()
    );
}

/// A standby behind the primary's oldest segment (pruned after snapshots) installs the
/// primary's snapshot and follows from there.
#[test]
fn a_standby_behind_the_pruned_journal_starts_from_the_primary_s_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let (pdir, sdir) = (tmp.path().join("p"), tmp.path().join("s"));
    let text = |dir: &Path, role: &str, mode: &str, primary: &str| {
        let mut c = config(dir, role, mode, "fused", primary);
        c.snapshot.every_commands = 5_000;
        c.journal.prune_after_snapshot = true;
        c
    };
    let mut primary = Node::start(
        &text(&pdir, "primary", "async", "127.0.0.1:1"),
        OutputMode::Sink(Box::new(CountingSink)),
    )
    .unwrap();
    let addr = primary.replication_addr().unwrap().to_string();
    let commands = stream(40_000);
    for (i, c) in commands.iter().enumerate() {
        submit(&mut primary, c, i as u64);
    }
    // Until the oldest segments are pruned (the deadline is only a failure bound).
    let deadline = Instant::now() + Duration::from_secs(60);
    while ringex_journal::first_sequence(&pdir.join("journal")).unwrap() == Some(1) {
        assert!(Instant::now() < deadline, "the primary never pruned");
        primary.request_snapshot().unwrap();
        let _ = primary.state_hash().unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    let standby = Standby::start(text(&sdir, "standby", "async", &addr));
    submit(&mut primary, &commands[5], 0);
    let (seq, hash) = primary.state_hash().unwrap();
    wait_replicated(&primary, seq);
    standby.stop();
    primary.shutdown().unwrap();
    let node = Node::start(
        &text(&sdir, "single", "none", "127.0.0.1:1"),
        OutputMode::Sink(Box::new(CountingSink)),
    )
    .unwrap();
    assert_eq!(node.recovery().seq_last, seq);
    assert_eq!(node.recovery().state_hash, hash);
    assert!(
        ringex_journal::first_sequence(&sdir.join("journal")).unwrap() > Some(1),
        "the standby's journal starts after the snapshot"
    );
}

/// A TCP proxy between a standby and its primary that the test can stall (stop
/// forwarding, connections kept) or cut (close them and refuse new ones for a while).
struct Proxy {
    addr: std::net::SocketAddr,
    stalled: Arc<AtomicBool>,
    cut: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    fn start(to: std::net::SocketAddr) -> Proxy {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stalled, cut, stop) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        {
            let (stalled, cut, stop) = (stalled.clone(), cut.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok((a, _)) = listener.accept() else {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    };
                    if cut.load(Ordering::Relaxed) {
                        continue; // dropped: refused
                    }
                    let Ok(b) = std::net::TcpStream::connect(to) else {
                        continue;
                    };
                    for (mut from, mut into) in
                        [(a.try_clone().unwrap(), b.try_clone().unwrap()), (b, a)]
                    {
                        let (stalled, cut, stop) = (stalled.clone(), cut.clone(), stop.clone());
                        from.set_read_timeout(Some(Duration::from_millis(10)))
                            .unwrap();
                        std::thread::spawn(move || {
                            let mut buf = vec![0u8; 64 << 10];
                            loop {
                                if stop.load(Ordering::Relaxed) || cut.load(Ordering::Relaxed) {
                                    let _ = from.shutdown(std::net::Shutdown::Both);
                                    let _ = into.shutdown(std::net::Shutdown::Both);
                                    return;
                                }
                                if stalled.load(Ordering::Relaxed) {
                                    std::thread::sleep(Duration::from_millis(5));
                                    continue;
                                }
                                match from.read(&mut buf) {
                                    Ok(0) => {
                                        let _ = into.shutdown(std::net::Shutdown::Both);
                                        return;
                                    }
                                    Ok(n) => {
                                        if into.write_all(&buf[..n]).is_err() {
                                            return;
                                        }
                                    }
                                    Err(e)
                                        if e.kind() == std::io::ErrorKind::WouldBlock
                                            || e.kind() == std::io::ErrorKind::TimedOut => {}
                                    Err(_) => return,
                                }
                            }
                        });
                    }
                }
            });
        }
        Proxy {
            addr,
            stalled,
            cut,
            stop,
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn with_policy(mut c: Config, policy: &str, degrade_after_ms: u64) -> Config {
    c.replication.on_standby_loss = match policy {
        "halt" => ringex::config::StandbyLossPolicy::Halt,
        _ => ringex::config::StandbyLossPolicy::Degrade,
    };
    c.replication.degrade_after_ms = degrade_after_ms;
    c
}

/// A stalled link: a `sync` primary with `degrade` goes on as `async` after the timeout,
/// says so in its metrics, and is `sync` again once the standby has caught up.
#[test]
fn a_stalled_standby_degrades_a_sync_primary_until_it_catches_up() {
    let tmp = tempfile::tempdir().unwrap();
    let (pdir, sdir) = (tmp.path().join("p"), tmp.path().join("s"));
    let pcfg = with_policy(
        config(&pdir, "primary", "sync", "fused", "127.0.0.1:1"),
        "degrade",
        200,
    );
    let mut primary = Node::start(&pcfg, OutputMode::Sink(Box::new(CountingSink))).unwrap();
    let proxy = Proxy::start(primary.replication_addr().unwrap());
    let standby = Standby::start(config(
        &sdir,
        "standby",
        "sync",
        "fused",
        &proxy.addr.to_string(),
    ));
    let commands = stream(1_000);
    for (i, c) in commands[..500].iter().enumerate() {
        submit(&mut primary, c, i as u64);
    }
    // The standby may have been slow to start (and the primary degraded meanwhile): once
    // it has caught up, the next command finds the primary sync again.
    let (seq, _) = primary.state_hash().unwrap();
    wait_replicated(&primary, seq);
    submit(&mut primary, &commands[0], 0);
    let _ = primary.state_hash().unwrap();
    let metrics = primary.metrics();
    assert!(!metrics.replication_degraded.load(Ordering::Relaxed));
    let degradations = metrics.replication_degradations.load(Ordering::Relaxed);
    proxy.stalled.store(true, Ordering::Relaxed);
    let started = Instant::now();
    for (i, c) in commands[500..].iter().enumerate() {
        submit(&mut primary, c, i as u64);
    }
    let (seq, hash) = primary.state_hash().unwrap();
    assert!(metrics.replication_degraded.load(Ordering::Relaxed));
    assert_eq!(
        metrics.replication_degradations.load(Ordering::Relaxed),
        degradations + 1
    );
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "it waited first"
    );
    proxy.stalled.store(false, Ordering::Relaxed);
    wait_replicated(&primary, seq);
    // The next batch finds the standby caught up: sync again.
    submit(&mut primary, &commands[0], 0);
    let (seq, hash_after) = primary.state_hash().unwrap();
    assert!(!metrics.replication_degraded.load(Ordering::Relaxed));
    let _ = hash;
    wait_replicated(&primary, seq);
    standby.stop();
    primary.shutdown().unwrap();
    let node = Node::start(
        &config(&sdir, "single", "none", "fused", "127.0.0.1:1"),
        OutputMode::Sink(Box::new(CountingSink)),
    )
    .unwrap();
    assert_eq!(node.recovery().state_hash, hash_after);
}

/// A cut link: a `sync` primary with `halt` refuses new orders as unavailable until its
/// standby is back (it reconnects by itself), then takes them again; nothing was applied
/// that the standby does not hold.
#[test]
fn a_cut_link_halts_a_sync_primary_until_the_standby_is_back() {
    let tmp = tempfile::tempdir().unwrap();
    let (pdir, sdir) = (tmp.path().join("p"), tmp.path().join("s"));
    let pcfg = with_policy(
        config(&pdir, "primary", "sync", "fused", "127.0.0.1:1"),
        "halt",
        1_000,
    );
    let mut primary = Node::start(&pcfg, OutputMode::Sink(Box::new(CountingSink))).unwrap();
    let proxy = Proxy::start(primary.replication_addr().unwrap());
    let standby = Standby::start(config(
        &sdir,
        "standby",
        "sync",
        "fused",
        &proxy.addr.to_string(),
    ));
    let commands = stream(600);
    for (i, c) in commands[..300].iter().enumerate() {
        submit(&mut primary, c, i as u64);
    }
    proxy.cut.store(true, Ordering::Relaxed);
    // The next command waits for a standby that is gone; within a few seconds new orders
    // are refused.
    let deadline = Instant::now() + Duration::from_secs(30);
    let refused = loop {
        assert!(Instant::now() < deadline, "never halted");
        match primary.submit(&commands[300], 0) {
            Err(NodeError::Refused(why)) => break why,
            Ok(()) | Err(NodeError::Backpressure) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("{e}"),
        }
    };
    assert!(refused.contains("replication halted"), "{refused}");
    proxy.cut.store(false, Ordering::Relaxed);
    // Back: the standby reconnects, acknowledges, and orders are taken again.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "never resumed");
        match primary.submit(&commands[301], 0) {
            Ok(()) => break,
            Err(NodeError::Refused(_)) | Err(NodeError::Backpressure) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("{e}"),
        }
    }
    let (seq, hash) = primary.state_hash().unwrap();
    wait_replicated(&primary, seq);
    standby.stop();
    primary.shutdown().unwrap();
    let node = Node::start(
        &config(&sdir, "single", "none", "fused", "127.0.0.1:1"),
        OutputMode::Sink(Box::new(CountingSink)),
    )
    .unwrap();
    assert_eq!(
        (node.recovery().seq_last, node.recovery().state_hash),
        (seq, hash)
    );
}
