//! The node end to end: real journal files in a temp directory, real threads, the real
//! binary for the command line. Small rings, small segments, a few thousand commands.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command as Process, Stdio};
use std::sync::atomic::Ordering::SeqCst;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ringex::bench::engine::generate;
use ringex::config::Config;
use ringex::node::slots::OutputSlot;
use ringex::node::{ChannelSink, CountingSink, Node, OutputMode};
use ringex_engine::{Command, Event, Exchange, MarketStatus, Output, RejectReason};
use ringex_journal::{segment_file_name, OsStorage, Reader, Storage};

const TOPOLOGIES: [&str; 3] = ["split", "fused", "inline"];

/// A node config for tests: tiny rings and segments, everything else explicit.
fn config(dir: &Path, topology: &str, durability: &str, snapshot_every: u64) -> Config {
    let text = format!(
        r#"
[node]
id = 1
data_dir = "{}"

[journal]
durability = "{durability}"
segment_size_mib = 1
flush_interval_ms = 2
low_space_mib = 0

[pipeline]
topology = "{topology}"
input_ring_size = 256
output_ring_size = 1024
wait = "backoff"
batch_max = 64

[snapshot]
every_commands = {snapshot_every}
every_seconds = 0
keep = 2

[metrics]
log_every_seconds = 0
"#,
        dir.display()
    );
    Config::parse(&text, "test.toml").expect("test config is valid")
}

/// A deterministic stream on the exchange-core-like generator: setup (assets, markets,
/// funded accounts), pre-fill and a steady-state mix with trades, cancels and replaces.
fn stream(commands: usize) -> Vec<Command> {
    let w = generate(2, commands, 7);
    let mut all = w.setup;
    all.extend(w.prefill);
    all.extend(w.commands);
    all
}

/// The state hash and events of an engine fed `commands` directly.
fn direct(commands: &[Command]) -> (u128, Vec<Event>) {
    let mut ex = Exchange::new();
    let mut events = Vec::new();
    for c in commands {
        ex.apply(c, &mut events);
    }
    (ex.state_hash(), events)
}

fn event_of(slot: &OutputSlot) -> Event {
    match slot.item {
        Output::Event(e) => e,
        Output::Reply(r) => panic!("a query reply where an event was expected: {r:?}"),
    }
}

fn submit_all(node: &mut Node, commands: &[Command]) {
    for (i, c) in commands.iter().enumerate() {
        submit_waiting(node, c, i as u64);
    }
}

/// Submits one command. A full input ring is the node's answer while the pipeline is
/// behind, and on a loaded machine it can stay full for longer than `submit` waits: the
/// command is offered again, until a deadline that only turns a stall into a failure.
fn submit_waiting(node: &mut Node, command: &Command, tag: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match node.submit(command, tag) {
            Ok(()) => return,
            Err(ringex::node::NodeError::Backpressure) if Instant::now() < deadline => {}
            Err(e) => panic!("submit: {e}"),
        }
    }
}

/// Runs `commands` through a node and returns (final hash, events in order, seq_last).
fn run(config: &Config, commands: &[Command]) -> (u128, Vec<OutputSlot>, u64) {
    let (tx, rx) = mpsc::channel();
    let mut node = Node::start(config, OutputMode::Sink(Box::new(ChannelSink(tx)))).expect("start");
    submit_all(&mut node, commands);
    let report = node.shutdown().expect("clean shutdown");
    (report.state_hash, rx.try_iter().collect(), report.seq_last)
}

fn journal_payloads(dir: &Path) -> Vec<(u64, Vec<u8>)> {
    let mut reader = Reader::open(dir.join("journal")).expect("reader");
    let mut out = Vec::new();
    for _ in 0..1_000_000 {
        match reader.next_owned().expect("read") {
            Some(r) => out.push((r.seq, r.payload)),
            None => break,
        }
    }
    out
}

#[test]
fn every_topology_reaches_the_state_of_an_engine_fed_directly() {
    let commands = stream(3_000);
    let (hash_direct, events_direct) = direct(&commands);
    let mut journals = Vec::new();
    for topology in TOPOLOGIES {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), topology, "group", 1_000);
        let (hash, events, seq_last) = run(&cfg, &commands);
        assert_eq!(seq_last, commands.len() as u64, "{topology}");
        assert_eq!(hash, hash_direct, "{topology}: state hash");
        let events: Vec<Event> = events.iter().map(event_of).collect();
        assert_eq!(events, events_direct, "{topology}: events");
        journals.push(journal_payloads(dir.path()));
        // Restart from the same directory: the same state, whatever was snapshotted.
        let mut node =
            Node::start(&cfg, OutputMode::Sink(Box::new(CountingSink))).expect("restart");
        assert_eq!(node.recovery().seq_last, commands.len() as u64);
        assert_eq!(node.state_hash().unwrap(), (seq_last, hash_direct));
        node.shutdown().unwrap();
    }
    for (topology, journal) in TOPOLOGIES.iter().zip(&journals).skip(1) {
        assert_eq!(
            journal, &journals[0],
            "{topology} writes the same journal as split"
        );
    }
}

#[test]
fn every_event_carries_its_commands_sequence_and_tag_and_marks_the_last() {
    let commands = stream(500);
    let dir = tempfile::tempdir().unwrap();
    let (_, events, _) = run(&config(dir.path(), "fused", "async", 0), &commands);
    let mut expected_seq = 1;
    for slot in &events {
        assert_eq!(slot.seq, expected_seq);
        assert_eq!(slot.tag, expected_seq - 1, "the tag is the submit index");
        if slot.last {
            expected_seq += 1;
        }
    }
    assert_eq!(expected_seq - 1, commands.len() as u64);
}

#[test]
fn restart_without_a_snapshot_replays_the_whole_journal() {
    let commands = stream(2_000);
    let (hash_direct, _) = direct(&commands);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "split", "group", 0);
    {
        let mut node = Node::start(&cfg, OutputMode::Sink(Box::new(CountingSink))).unwrap();
        submit_all(&mut node, &commands);
        assert_eq!(node.state_hash().unwrap().0, commands.len() as u64);
        // Dropped without shutdown: no final snapshot.
    }
    let mut node = Node::start(&cfg, OutputMode::Sink(Box::new(CountingSink))).unwrap();
    let log = node.recovery().clone();
    assert_eq!(log.snapshot_seq, None);
    assert_eq!(log.records_replayed, commands.len() as u64);
    assert_eq!(log.state_hash, hash_direct);
    assert_eq!(node.state_hash().unwrap().1, hash_direct);
    node.shutdown().unwrap();
}

#[test]
fn graceful_shutdown_writes_a_snapshot_and_the_next_start_replays_nothing() {
    for topology in ["fused", "inline"] {
        graceful_shutdown_writes_a_snapshot_and_the_next_start_replays_nothing_in(topology);
    }
}

fn graceful_shutdown_writes_a_snapshot_and_the_next_start_replays_nothing_in(topology: &str) {
    let commands = stream(1_000);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), topology, "group", 0);
    let (hash, _, seq_last) = run(&cfg, &commands);
    let node = Node::start(&cfg, OutputMode::Sink(Box::new(CountingSink))).unwrap();
    let log = node.recovery();
    assert_eq!(log.snapshot_seq, Some(seq_last));
    assert_eq!(log.records_replayed, 0);
    assert_eq!(log.state_hash, hash);
    node.shutdown().unwrap();
}

#[test]
fn a_restart_after_a_periodic_snapshot_replays_only_the_commands_after_it() {
    for topology in ["fused", "inline"] {
        a_restart_after_a_periodic_snapshot_replays_only_the_commands_after_it_in(topology);
    }
}

fn a_restart_after_a_periodic_snapshot_replays_only_the_commands_after_it_in(topology: &str) {
    let commands = stream(1_500);
    let (hash_direct, _) = direct(&commands);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), topology, "group", 500);
    {
        let mut node = Node::start(&cfg, OutputMode::Sink(Box::new(CountingSink))).unwrap();
        submit_all(&mut node, &commands);
        node.state_hash().unwrap();
        // Let the background writer finish the last periodic snapshot, then drop
        // without the final one.
        let metrics = node.metrics();
        let deadline = Instant::now() + Duration::from_secs(20);
        while metrics.summary().snapshot_seq == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let node = Node::start(&cfg, OutputMode::Sink(Box::new(CountingSink))).unwrap();
    let log = node.recovery().clone();
    let snap = log.snapshot_seq.expect("a periodic snapshot was written");
    assert!(snap >= 500 && snap.is_multiple_of(500), "{snap}");
    assert_eq!(log.records_replayed, commands.len() as u64 - snap);
    assert_eq!(log.state_hash, hash_direct);
    node.shutdown().unwrap();
}

#[test]
fn segments_before_the_oldest_kept_snapshot_are_pruned_and_recovery_still_works() {
    for topology in ["fused", "inline"] {
        segments_before_the_oldest_kept_snapshot_are_pruned_and_recovery_still_works_in(topology);
    }
}

fn segments_before_the_oldest_kept_snapshot_are_pruned_and_recovery_still_works_in(topology: &str) {
    let commands = stream(20_000);
    let (hash_direct, _) = direct(&commands);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), topology, "async", 4_000);
    let mut node = Node::start(&cfg, OutputMode::Sink(Box::new(CountingSink))).unwrap();
    submit_all(&mut node, &commands);
    // Snapshots are written in the background; the journal prunes at the end of its
    // first batch after one is on disk. However late the writer is, every state-hash
    // request is such a batch.
    let first_segment = dir.path().join("journal").join(segment_file_name(1));
    let deadline = Instant::now() + Duration::from_secs(60);
    while first_segment.exists() {
        assert!(
            Instant::now() < deadline,
            "{topology}: the first segment was not pruned; {:?}",
            node.last_note()
        );
        node.state_hash().unwrap();
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(node.shutdown().unwrap().state_hash, hash_direct);
    let first_record = journal_payloads(dir.path()).first().map(|(seq, _)| *seq);
    assert!(
        first_record.is_some_and(|seq| seq > 1),
        "the first segment was pruned: journal now starts at {first_record:?}"
    );
    let mut node = Node::start(&cfg, OutputMode::Sink(Box::new(CountingSink))).unwrap();
    assert_eq!(node.state_hash().unwrap().1, hash_direct);
    node.shutdown().unwrap();
}

#[test]
fn a_snapshot_the_engine_refuses_is_skipped_for_the_previous_one() {
    let commands = stream(1_500);
    let (hash_direct, _) = direct(&commands);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "fused", "group", 500);
    let (_, _, seq_last) = run(&cfg, &commands);
    // Replace the newest snapshot with a well-framed one whose payload is not a state.
    let store = ringex_journal::SnapshotStore::open(dir.path().join("snapshots"), 2).unwrap();
    store
        .write(seq_last, 1, 0, &[0u8; 16], b"not an exchange state")
        .unwrap();
    let node = Node::start(&cfg, OutputMode::Sink(Box::new(CountingSink))).unwrap();
    let log = node.recovery().clone();
    assert_eq!(log.snapshots_skipped.len(), 1, "{log}");
    assert!(log.snapshot_seq.unwrap() < seq_last, "{log}");
    assert_eq!(log.state_hash, hash_direct);
    assert!(
        log.to_string().contains("skipped damaged snapshot"),
        "{log}"
    );
    node.shutdown().unwrap();
}

#[test]
fn a_snapshot_from_another_history_is_skipped() {
    // Two data directories whose journals agree up to a point and then differ.
    let a_commands = stream(1_500);
    let mut b_commands = a_commands[..a_commands.len() - 100].to_vec();
    b_commands.extend(a_commands[a_commands.len() - 100..].iter().rev().copied());
    b_commands.extend(a_commands[..50].iter().copied());
    let (hash_b, _) = direct(&b_commands);
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (_, _, a_last) = run(&config(a.path(), "inline", "group", 0), &a_commands);
    let cfg_b = config(b.path(), "inline", "group", 0);
    let (_, _, b_last) = run(&cfg_b, &b_commands);
    assert!(b_last > a_last);
    // B's snapshots give way to A's final one: at a sequence B's journal has, with a
    // state B never had.
    let b_snapshots = b.path().join("snapshots");
    std::fs::remove_dir_all(&b_snapshots).unwrap();
    std::fs::create_dir_all(&b_snapshots).unwrap();
    for entry in std::fs::read_dir(a.path().join("snapshots")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, b_snapshots.join(path.file_name().unwrap())).unwrap();
    }
    let node = Node::start(&cfg_b, OutputMode::Sink(Box::new(CountingSink))).unwrap();
    let log = node.recovery().clone();
    assert_eq!(log.snapshot_seq, None, "{log}");
    assert!(log.to_string().contains("another history"), "{log}");
    assert_eq!(log.state_hash, hash_b, "a full replay of B's own journal");
    node.shutdown().unwrap();
}

#[test]
fn a_journal_that_lost_durable_commands_is_refused_not_rolled_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), "inline", "async", 0);
    // Every segment stays, so the damaged one is not the oldest (that case the journal
    // refuses by itself).
    cfg.journal.prune_after_snapshot = false;
    let commands = stream(20_000);
    let (_, _, seq_last) = run(&cfg, &commands);
    // Damage: the newest segment loses its contents (the final snapshot, at `seq_last`,
    // survives).
    let journal = dir.path().join("journal");
    let newest = std::fs::read_dir(&journal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .max()
        .unwrap();
    assert!(
        !newest.ends_with("00000000000000000001.seg"),
        "several segments"
    );
    std::fs::OpenOptions::new()
        .write(true)
        .open(&newest)
        .unwrap()
        .set_len(0)
        .unwrap();
    let base: u64 = newest
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let refused = Node::start(&cfg, OutputMode::Sink(Box::new(CountingSink)));
    let e = refused
        .err()
        .expect("a start that would roll commands back")
        .to_string();
    assert!(
        e.contains(&format!(
            "the newest snapshot proves sequences up to {seq_last}"
        )),
        "{e}"
    );
    assert!(e.contains(&format!("(sequence {base})")), "{e}");
    // The operator's way out, named in the message: cut the journal there on purpose,
    // which also sets aside the snapshots past the cut.
    let out = Process::new(env!("CARGO_BIN_EXE_ringex"))
        .args(["journal", "repair", "--dir"])
        .arg(dir.path())
        .arg("--truncate-at")
        .arg(base.to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut node = Node::start(&cfg, OutputMode::Sink(Box::new(CountingSink))).unwrap();
    let (seq, hash) = node.state_hash().unwrap();
    assert_eq!(seq, base - 1);
    assert_eq!(hash, direct(&commands[..seq as usize]).0);
    node.shutdown().unwrap();
}

#[test]
fn a_command_the_journal_refuses_is_rejected_as_unavailable_and_never_applied() {
    for topology in ["fused", "inline"] {
        a_command_the_journal_refuses_is_rejected_as_unavailable_and_never_applied_in(topology);
    }
}

fn a_command_the_journal_refuses_is_rejected_as_unavailable_and_never_applied_in(topology: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), topology, "group", 0);
    // Demand more free space than any disk has: every append is refused.
    cfg.journal.low_space_mib = 1 << 40;
    let (tx, rx) = mpsc::channel();
    let mut node = match Node::start(&cfg, OutputMode::Sink(Box::new(ChannelSink(tx)))) {
        Ok(n) => n,
        Err(e) => panic!("a low-space journal still opens for reading: {e}"),
    };
    let commands = stream(10);
    submit_all(&mut node, &commands[..3]);
    let (seq, hash) = node.state_hash().unwrap();
    assert_eq!(seq, 0, "nothing was applied");
    assert_eq!(hash, Exchange::new().state_hash());
    // The publisher runs on its own thread: wait for the three outcomes.
    let events: Vec<OutputSlot> = (0..3)
        .map(|_| {
            rx.recv_timeout(Duration::from_secs(10))
                .expect("an outcome")
        })
        .collect();
    for e in &events {
        assert!(matches!(
            event_of(e),
            Event::Rejected {
                reason: RejectReason::Unavailable,
                ..
            }
        ));
    }
    assert!(
        node.last_note().unwrap().contains("space"),
        "{:?}",
        node.last_note()
    );
    assert!(node.failure().is_none(), "low space is not fatal");
    // Refused commands passed the journaler: nothing waits in front of it.
    let summary = node.metrics().summary();
    assert_eq!(summary.unavailable, 3);
    assert_eq!(summary.input_ring_journaler, 0, "{summary:?}");
    drop(node);
}

/// The outcome of each of `count` commands: the reject reason of its last slot, if any.
fn outcomes(rx: &mpsc::Receiver<OutputSlot>, count: usize) -> Vec<(u64, Option<RejectReason>)> {
    let mut out = Vec::new();
    while out.len() < count {
        let slot = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("an outcome");
        if slot.last {
            let reason = match event_of(&slot) {
                Event::Rejected { reason, .. } => Some(reason),
                _ => None,
            };
            out.push((slot.seq, reason));
        }
    }
    out
}

/// A disk that, once `fail_from_now` is set, fails the sync of every record written from
/// then on; the writes themselves land in the page cache. A sync with no new record to
/// persist (the journal's idle checkpoint rounds) still succeeds, so the first sync to
/// fail is the one meant to make the next batch durable, whenever it comes.
#[derive(Default)]
struct RecordSyncsFail {
    fail_from_now: std::sync::atomic::AtomicBool,
    record_written_since: std::sync::atomic::AtomicBool,
}

impl Storage for RecordSyncsFail {
    fn sync_data(&self, file: &std::fs::File) -> std::io::Result<()> {
        if self.record_written_since.load(SeqCst) {
            return Err(std::io::Error::from_raw_os_error(libc::EIO));
        }
        OsStorage.sync_data(file)
    }
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        OsStorage.sync_dir(dir)
    }
    fn allocate(&self, file: &std::fs::File, len: u64) -> std::io::Result<()> {
        OsStorage.allocate(file, len)
    }
    fn free_space_bytes(&self, dir: &Path) -> std::io::Result<u64> {
        OsStorage.free_space_bytes(dir)
    }
    /// The journal's record writes (checkpoints and headers are written directly).
    fn write_all_at(&self, file: &std::fs::File, buf: &[u8], offset: u64) -> std::io::Result<()> {
        if self.fail_from_now.load(SeqCst) {
            self.record_written_since.store(true, SeqCst);
        }
        OsStorage.write_all_at(file, buf, offset)
    }
}

#[test]
fn commands_caught_by_a_failed_sync_are_answered_outcome_unknown_and_replayed_after_restart() {
    for topology in TOPOLOGIES {
        commands_caught_by_a_failed_sync_are_answered_outcome_unknown_in(topology);
    }
}

fn commands_caught_by_a_failed_sync_are_answered_outcome_unknown_in(topology: &str) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), topology, "group", 0);
    let commands = stream(40);
    let (healthy, doomed) = commands.split_at(commands.len() - 6);
    let storage = std::sync::Arc::new(RecordSyncsFail::default());
    let (tx, rx) = mpsc::channel();
    let out = OutputMode::Sink(Box::new(ChannelSink(tx)));
    let mut node = Node::start_on(&cfg, out, storage.clone()).expect("start");
    submit_all(&mut node, healthy);
    for (seq, reason) in outcomes(&rx, healthy.len()) {
        assert!(seq > 0 && reason != Some(RejectReason::OutcomeUnknown));
    }
    // The disk fails to persist any record written from now on; writes still land in
    // the page cache.
    storage.fail_from_now.store(true, SeqCst);
    // Once the node knows, it refuses input at the door.
    let taken = doomed
        .iter()
        .take_while(|c| node.submit(c, 0).is_ok())
        .count();
    assert!(taken >= 1);
    let answers = outcomes(&rx, taken);
    // The first batch was written, then its sync failed: outcome unknown. After that the
    // journal takes nothing: unavailable, which is final.
    let unknown = answers
        .iter()
        .take_while(|(_, r)| *r == Some(RejectReason::OutcomeUnknown))
        .count();
    assert!(unknown >= 1, "{topology}: {answers:?}");
    for (i, (seq, reason)) in answers.iter().enumerate() {
        if i < unknown {
            assert_eq!(*seq, (healthy.len() + i + 1) as u64, "{topology}: written");
        } else {
            assert_eq!(
                *reason,
                Some(RejectReason::Unavailable),
                "{topology}: {answers:?}"
            );
            assert_eq!(*seq, 0, "{topology}: never written");
        }
    }
    assert!(
        node.failure().is_some(),
        "{topology}: a failed sync is fatal"
    );
    let (seq, hash) = node.state_hash().unwrap();
    assert_eq!(
        seq,
        healthy.len() as u64,
        "{topology}: nothing past the sync applied"
    );
    assert_eq!(hash, direct(healthy).0, "{topology}");
    drop(node);
    // The records survived (only the sync "failed"): the restart applies them.
    let mut node = Node::start(&cfg, OutputMode::Sink(Box::new(CountingSink))).expect("restart");
    let (seq, hash) = node.state_hash().unwrap();
    let survived = &commands[..healthy.len() + unknown];
    assert_eq!(
        seq,
        survived.len() as u64,
        "{topology}: {}",
        node.recovery()
    );
    assert_eq!(hash, direct(survived).0, "{topology}");
    node.shutdown().unwrap();
}

/// A book of 1,000 resting orders, then one command that cancels them all: more events
/// than the smallest output ring holds several times over.
fn halt_cancelling_a_full_book() -> (Vec<Command>, Vec<Event>) {
    let w = generate(1, 0, 7);
    let market = w
        .setup
        .iter()
        .find_map(|c| match c {
            Command::CreateMarket(spec) => Some(spec.market),
            _ => None,
        })
        .expect("the generator creates a market");
    let mut commands = w.setup;
    commands.extend(w.prefill);
    let (_, before) = direct(&commands);
    commands.push(Command::SetMarketStatus {
        market,
        status: MarketStatus::Halted,
        cancel_resting: true,
    });
    let (_, all) = direct(&commands);
    (commands, all[before.len()..].to_vec())
}

#[test]
fn a_command_with_more_events_than_the_output_ring_holds_is_delivered_whole() {
    let (commands, halt_events) = halt_cancelling_a_full_book();
    let ring_size = 64;
    assert!(halt_events.len() > 4 * ring_size, "{}", halt_events.len());
    for topology in TOPOLOGIES {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path(), topology, "async", 0);
        cfg.pipeline.output_ring_size = ring_size;
        let (_, slots, seq_last) = run(&cfg, &commands);
        assert_eq!(seq_last, commands.len() as u64, "{topology}");
        let halt: Vec<&OutputSlot> = slots
            .iter()
            .filter(|s| s.seq == commands.len() as u64)
            .collect();
        let events: Vec<Event> = halt.iter().map(|s| event_of(s)).collect();
        assert_eq!(events, halt_events, "{topology}");
        let lasts: Vec<bool> = halt.iter().map(|s| s.last).collect();
        assert_eq!(lasts.iter().filter(|l| **l).count(), 1, "{topology}");
        assert_eq!(
            lasts.last(),
            Some(&true),
            "{topology}: `last` ends the command"
        );
    }
}

#[test]
fn a_command_with_more_events_than_the_output_ring_holds_reaches_a_polling_owner() {
    let (commands, halt_events) = halt_cancelling_a_full_book();
    for topology in ["fused", "inline"] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path(), topology, "async", 0);
        cfg.pipeline.output_ring_size = 64;
        let waker: ringex::node::Waker = std::sync::Arc::new(|| {});
        let mut node = Node::start(&cfg, OutputMode::Poll(waker)).unwrap();
        let mut slots = Vec::new();
        // As the gateway does: never wait on the input ring, keep draining the output.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut next = 0;
        while slots.iter().filter(|s: &&OutputSlot| s.last).count() < commands.len() {
            assert!(Instant::now() < deadline, "{topology}: stalled");
            if next < commands.len() && node.try_submit(&commands[next], 0).is_ok() {
                next += 1;
            }
            node.poll_outputs(16, |s| slots.push(*s));
        }
        let events: Vec<Event> = slots
            .iter()
            .filter(|s| s.seq == commands.len() as u64)
            .map(event_of)
            .collect();
        assert_eq!(events, halt_events, "{topology}");
        assert!(node.failure().is_none(), "{topology}");
        node.shutdown().unwrap();
    }
}

// ---------------------------------------------------------------- crash

const CHILD_DIR: &str = "RINGEX_TEST_CRASH_CHILD_DIR";
const CHILD_TOPOLOGY: &str = "RINGEX_TEST_CRASH_CHILD_TOPOLOGY";
const CHILD_DURABILITY: &str = "RINGEX_TEST_CRASH_CHILD_DURABILITY";
const CRASH_COMMANDS: usize = 40_000;

/// Not a test on its own: the child half of the SIGKILL test. It runs a node on the
/// directory in `RINGEX_TEST_CRASH_CHILD_DIR` and reports the journal's durable watermark
/// on stdout while it submits, until it is killed.
#[test]
fn crash_child() {
    let (Ok(dir), Ok(topology), Ok(durability)) = (
        std::env::var(CHILD_DIR),
        std::env::var(CHILD_TOPOLOGY),
        std::env::var(CHILD_DURABILITY),
    ) else {
        return;
    };
    let cfg = config(Path::new(&dir), &topology, &durability, 0);
    let mut node = Node::start(&cfg, OutputMode::Sink(Box::new(CountingSink))).unwrap();
    let metrics = node.metrics();
    let report = || {
        let s = metrics.summary();
        // Applied: the engine has emitted the command's events, so a client may know.
        println!("durable {} applied {}", s.journal_durable, s.applied);
    };
    for (i, c) in stream(CRASH_COMMANDS).iter().enumerate() {
        submit_waiting(&mut node, c, i as u64);
        if i % 100 == 0 {
            report();
        }
    }
    // Keep reporting until killed.
    for _ in 0..10_000 {
        report();
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_fused_node_killed_with_sigkill_recovers_every_durable_command() {
    killed_node_recovers_every_durable_command("fused", "group");
}

#[test]
fn an_inline_node_killed_with_sigkill_recovers_every_durable_command() {
    killed_node_recovers_every_durable_command("inline", "group");
}

/// Async mode survives a crash of the process: whatever the engine applied (and so may
/// have told a client) was in the page cache first.
#[test]
fn an_async_node_killed_with_sigkill_recovers_every_command_it_applied() {
    for topology in TOPOLOGIES {
        killed_node_recovers_every_durable_command(topology, "async");
    }
}

fn killed_node_recovers_every_durable_command(topology: &str, durability: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Process::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR, dir.path())
        .env(CHILD_TOPOLOGY, topology)
        .env(CHILD_DURABILITY, durability)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut durable_reported = 0u64;
    let mut applied_reported = 0u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    for line in stdout.lines() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("durable ") {
            let (durable, applied) = rest.split_once(" applied ").unwrap();
            durable_reported = durable.trim().parse().unwrap();
            applied_reported = applied.trim().parse().unwrap();
        }
        // Kill it mid-stream, well before the end.
        if durable_reported.min(applied_reported) >= 5_000 || Instant::now() > deadline {
            break;
        }
    }
    unsafe {
        libc::kill(child.id() as i32, libc::SIGKILL);
    }
    child.wait().unwrap();
    assert!(
        durable_reported >= 5_000,
        "child made progress: {durable_reported}"
    );

    let commands = stream(CRASH_COMMANDS);
    let cfg = config(dir.path(), topology, durability, 0);
    let mut node = Node::start(&cfg, OutputMode::Sink(Box::new(CountingSink))).unwrap();
    let seq = node.recovery().seq_last;
    assert!(
        seq >= durable_reported,
        "{topology} {durability}: recovered {seq} < durable {durable_reported}"
    );
    assert!(
        seq >= applied_reported,
        "{topology} {durability}: recovered {seq} < applied {applied_reported}"
    );
    assert!(seq <= commands.len() as u64);
    let (hash_direct, _) = direct(&commands[..seq as usize]);
    assert_eq!(node.state_hash().unwrap(), (seq, hash_direct));
    node.shutdown().unwrap();
}

// ---------------------------------------------------------------- command line

#[test]
fn a_bad_config_file_is_refused_with_file_key_and_reason_and_a_nonzero_exit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    let text = ringex::config::DEFAULT_CONFIG_TOML.replace("batch_max = 512", "batch_max = 0");
    std::fs::write(&path, text).unwrap();
    let out = Process::new(env!("CARGO_BIN_EXE_ringex"))
        .args(["start", "--config"])
        .arg(&path)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.toml"), "{stderr}");
    assert!(stderr.contains("pipeline.batch_max"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn the_primary_and_standby_examples_parse() {
    // tests/replication.rs runs them as a pair.
    for (example, role) in [
        ("config/primary.toml", ringex::config::Role::Primary),
        ("config/standby.toml", ringex::config::Role::Standby),
    ] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(example);
        let config = Config::load(&path).expect("the example parses");
        assert_eq!(config.node.role, role);
    }
}

#[test]
fn a_missing_config_file_is_refused_without_a_panic() {
    let out = Process::new(env!("CARGO_BIN_EXE_ringex"))
        .args(["start", "--config", "/nonexistent/ringex.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot read"), "{stderr}");
}

#[test]
fn ringex_start_on_the_embedded_default_bootstraps_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let run_once = || {
        let mut child = Process::new(env!("CARGO_BIN_EXE_ringex"))
            .arg("start")
            .current_dir(dir.path())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let mut lines = Vec::new();
        for line in stderr.lines() {
            let line = line.unwrap();
            if line.contains("listening") {
                unsafe {
                    libc::kill(pid, libc::SIGTERM);
                }
            }
            lines.push(line);
        }
        let status = child.wait().unwrap();
        let log = lines.join("\n");
        assert!(
            status.success(),
            "exit 0 after SIGTERM, got {status}:\n{log}"
        );
        log
    };
    let first = run_once();
    assert!(
        first.contains("bootstrapped 3 assets, 2 markets"),
        "{first}"
    );
    assert!(first.contains("stopped at seq 17"), "{first}");
    let second = run_once();
    assert!(
        second.contains("loaded snapshot at seq 17; replayed 0"),
        "{second}"
    );
    assert!(!second.contains("bootstrapped"), "{second}");
}

// ---------------------------------------------------------------- poll mode and queries

#[test]
fn in_poll_mode_the_owner_drains_outputs_and_queries_answer_in_order() {
    for topology in TOPOLOGIES {
        owner_drains_outputs_and_queries_answer_in_order(topology);
    }
}

fn owner_drains_outputs_and_queries_answer_in_order(topology: &str) {
    use ringex_engine::{Query, QueryReply};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    const QUERY_TAG: u64 = u64::MAX;
    let commands = stream(300);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), topology, "async", 0);
    let wakes = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&wakes);
    let (woken_tx, woken) = mpsc::channel();
    let waker: ringex::node::Waker = Arc::new(move || {
        counter.fetch_add(1, Ordering::Relaxed);
        let _ = woken_tx.send(());
    });
    let mut node = Node::start(&cfg, OutputMode::Poll(waker)).unwrap();
    let mut slots = Vec::new();
    // Like the gateway: drain outputs whenever the rings push back.
    let offer =
        |node: &mut Node,
         slots: &mut Vec<OutputSlot>,
         submit: &dyn Fn(&mut Node) -> Result<(), ringex::node::NodeError>| {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                match submit(node) {
                    Ok(()) => return,
                    Err(ringex::node::NodeError::Backpressure) if Instant::now() < deadline => {
                        node.poll_outputs(1024, |s| slots.push(*s));
                    }
                    Err(e) => panic!("{topology}: {e}"),
                }
            }
        };
    for (i, c) in commands.iter().enumerate() {
        offer(&mut node, &mut slots, &|node| node.submit(c, i as u64));
    }
    // A wake asked for before the last input goes in comes after the batch that answers
    // it at the latest, however soon that batch ends.
    node.want_wake();
    // The generator's first funded account (ids start at 1).
    offer(&mut node, &mut slots, &|node| {
        node.submit_query(&Query::Balances { account: 1 }, QUERY_TAG)
    });
    // Like the gateway: drain, and sleep only once it has asked for a wake and looked
    // once more. A lost wake leaves the owner asleep until the deadline.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        node.poll_outputs(1024, |s| slots.push(*s));
        if slots.last().is_some_and(|s| s.tag == QUERY_TAG && s.last) {
            break;
        }
        node.want_wake();
        if node.outputs_available() {
            continue;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            woken.recv_timeout(left).is_ok(),
            "{topology}: asleep with output due, and no wake came"
        );
    }
    let commands_done = slots
        .iter()
        .filter(|s| s.last && matches!(s.item, Output::Event(_)))
        .count();
    assert_eq!(
        commands_done,
        commands.len(),
        "every command answered before the query"
    );
    let replies: Vec<QueryReply> = slots
        .iter()
        .filter(|s| s.tag == QUERY_TAG)
        .map(|s| match s.item {
            Output::Reply(r) => r,
            Output::Event(e) => panic!("{e:?}"),
        })
        .collect();
    assert!(matches!(
        replies.last(),
        Some(QueryReply::End { found: true, .. })
    ));
    assert!(replies.len() >= 2, "{replies:?}");
    if topology == "inline" {
        // Nothing runs behind the owner's back, so there is nobody to wake it.
        assert_eq!(wakes.load(Ordering::Relaxed), 0, "{topology}");
    } else {
        assert!(
            wakes.load(Ordering::Relaxed) >= 1,
            "{topology}: the waker was called"
        );
    }
    node.shutdown().unwrap();
}

#[test]
fn inline_a_full_output_queue_refuses_input_until_the_owner_polls() {
    let commands = stream(3_000);
    let dir = tempfile::tempdir().unwrap();
    // The test config's output ring holds 1024 slots: the inline queue's bound.
    let cfg = config(dir.path(), "inline", "async", 0);
    let mut node = Node::start(&cfg, OutputMode::Poll(std::sync::Arc::new(|| {}))).unwrap();
    let mut submitted = 0;
    let mut refused = false;
    for (i, c) in commands.iter().enumerate() {
        match node.try_submit(c, i as u64) {
            Ok(()) => submitted += 1,
            Err(ringex::node::NodeError::Backpressure) => {
                refused = true;
                break;
            }
            Err(e) => panic!("{e}"),
        }
        // Batches end as the owner polls; here it only asks whether output waits.
        if i % 64 == 63 {
            assert!(node.outputs_available());
            node.poll_outputs(0, |_| {});
        }
    }
    assert!(refused, "a queue past its bound pushes back");
    assert!(submitted < commands.len());
    let mut events = Vec::new();
    while node.poll_outputs(4096, |s| events.push(*s)) > 0 {}
    assert!(!node.outputs_available());
    for (i, c) in commands.iter().enumerate().skip(submitted) {
        node.try_submit(c, i as u64)
            .expect("room again after polling");
        node.poll_outputs(4096, |s| events.push(*s));
    }
    let events: Vec<Event> = events.iter().map(event_of).collect();
    assert_eq!(
        events,
        direct(&commands).1,
        "nothing lost, nothing reordered"
    );
    node.shutdown().unwrap();
}
