//! A node refuses to start on a damaged journal rather than lose what the disk held
//! intact, and a refused start changes nothing: a journal of several segments written by
//! a real node, each segment damaged in each way a crash cannot explain, then a start and
//! `ringex journal verify` (the real binary), which must name the same place. What a
//! crash does leave (a torn tail) is still cut and the node starts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command as Process;

use ringex::bench::engine::generate;
use ringex::config::Config;
use ringex::node::{CountingSink, Node, NodeError, OutputMode};
use ringex_engine::Command;

fn config(dir: &Path) -> Config {
    let text = format!(
        r#"
[node]
id = 1
data_dir = "{}"

[journal]
durability = "group"
segment_size_mib = 1
low_space_mib = 0

[pipeline]
topology = "fused"
input_ring_size = 256
output_ring_size = 1024
wait = "backoff"
batch_max = 64

[snapshot]
every_commands = 0
every_seconds = 0
keep = 2

[metrics]
log_every_seconds = 0
"#,
        dir.display()
    );
    Config::parse(&text, "test.toml").expect("test config is valid")
}

fn stream(commands: usize) -> Vec<Command> {
    let w = generate(2, commands, 11);
    let mut all = w.setup;
    all.extend(w.prefill);
    all.extend(w.commands);
    all
}

/// Submits, waiting out backpressure (a loaded test machine): a bounded wait, then a
/// failure.
fn submit(node: &mut Node, command: &Command, tag: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        match node.submit(command, tag) {
            Ok(()) => return,
            Err(NodeError::Backpressure) if std::time::Instant::now() < deadline => {}
            Err(e) => panic!("submit: {e}"),
        }
    }
}

fn start(config: &Config) -> Result<Node, NodeError> {
    Node::start(config, OutputMode::Sink(Box::new(CountingSink)))
}

/// Every file under `dir`, for "nothing changed".
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

fn restore(dir: &Path, golden: &BTreeMap<PathBuf, Vec<u8>>) {
    for p in files(dir).keys() {
        if !golden.contains_key(p) {
            std::fs::remove_file(p).unwrap();
        }
    }
    for (p, b) in golden {
        std::fs::write(p, b).unwrap();
    }
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("journal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    v.sort();
    v
}

/// `ringex journal verify --dir DIR`: (exit success, stdout, stderr).
fn verify_cli(dir: &Path) -> (bool, String, String) {
    let out = Process::new(env!("CARGO_BIN_EXE_ringex"))
        .args(["journal", "verify", "--dir"])
        .arg(dir)
        .output()
        .expect("run ringex journal verify");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A node's journal of several 1 MiB segments, its last commands past the on-disk
/// checkpoint, and no snapshot: the journal's own evidence is all recovery has.
fn written_by_a_node(dir: &Path) -> (Config, u64) {
    let cfg = config(dir);
    let commands = stream(40_000);
    let mut node = start(&cfg).unwrap();
    for (i, c) in commands.iter().enumerate() {
        submit(&mut node, c, i as u64);
    }
    let (seq_last, _) = node.state_hash().unwrap();
    // Dropped without a shutdown: no final snapshot.
    drop(node);
    assert_eq!(seq_last, commands.len() as u64);
    assert!(segments(dir).len() >= 3, "{:?}", segments(dir));
    (cfg, seq_last)
}

/// (frame offset, seq) of the records of a segment file.
fn frames(path: &Path) -> Vec<(usize, u64)> {
    let b = std::fs::read(path).unwrap();
    let mut out = Vec::new();
    let mut at = 4096usize;
    while at + 48 <= b.len() && b[at + 4] == 1 {
        let len = u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as u64;
        out.push((
            at,
            u64::from_le_bytes(b[at + 8..at + 16].try_into().unwrap()),
        ));
        at += ringex_journal::frame_size_bytes(len) as usize;
    }
    out
}

/// The start refuses naming `seq`, changes no file, and `journal verify` refuses with
/// the same message.
fn refused(cfg: &Config, dir: &Path, what: &str, seq: u64) {
    let before = files(dir);
    let err = match start(cfg) {
        Ok(n) => panic!("{what}: started at seq {}", n.recovery().seq_last),
        Err(e) => e.to_string(),
    };
    if seq == 1 {
        // The journal's first record: a cut would keep nothing; only a restore helps.
        assert!(
            err.contains("(sequence 1, the first") || err.contains("records 1.."),
            "{what}: {err}"
        );
        assert!(err.contains("restore"), "{what}: {err}");
        assert!(!err.contains("--truncate-at"), "{what}: {err}");
    } else {
        assert!(err.contains(&format!("(sequence {seq})")), "{what}: {err}");
        assert!(err.contains("--truncate-at"), "{what}: {err}");
    }
    assert!(
        files(dir) == before,
        "{what}: the refused start changed files"
    );
    let (ok, _, stderr) = verify_cli(dir);
    assert!(!ok, "{what}: verify exited 0");
    let verify_msg = stderr.trim().trim_start_matches("ringex journal: ");
    assert!(
        err.contains(verify_msg),
        "{what}:\nstart:  {err}\nverify: {verify_msg}"
    );
    assert!(files(dir) == before, "{what}: verify changed files");
}

#[test]
fn damage_a_crash_cannot_explain_refuses_the_start_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (cfg, _) = written_by_a_node(dir);
    let golden = files(dir);
    let segs = segments(dir);
    let base = |p: &Path| -> u64 { p.file_stem().unwrap().to_str().unwrap().parse().unwrap() };
    for seg in &segs {
        let name = seg.display();
        let recs = frames(seg);
        let write = |f: &dyn Fn(&mut Vec<u8>)| {
            restore(dir, &golden);
            let mut b = golden[seg].clone();
            f(&mut b);
            std::fs::write(seg, b).unwrap();
        };

        write(&|b| b[..4096].fill(0));
        refused(&cfg, dir, &format!("{name}: header page zeroed"), base(seg));

        for len in [0usize, 100, 4096] {
            write(&|b| b.truncate(len));
            refused(&cfg, dir, &format!("{name}: cut to {len} bytes"), base(seg));
        }

        // A byte of a record with valid records after it: before the checkpoint, and past
        // it (the checkpoint slots zeroed, as when it lags the syncs).
        let (at, seq) = recs[recs.len() / 2];
        write(&|b| b[at + 60] ^= 0x04);
        refused(&cfg, dir, &format!("{name}: record {seq} flipped"), seq);
        write(&|b| b[at + 60] ^= 0x04);
        for s in &segs {
            let mut b = std::fs::read(s).unwrap();
            b[256..384].fill(0);
            std::fs::write(s, b).unwrap();
        }
        refused(
            &cfg,
            dir,
            &format!("{name}: record {seq} flipped, no checkpoint"),
            seq,
        );

        restore(dir, &golden);
        std::fs::remove_file(seg).unwrap();
        // The first segment's loss is seen as records the start needs; a later one's as
        // a gap, or as a segment the one before it says existed.
        refused(&cfg, dir, &format!("{name}: deleted"), base(seg));
    }
    restore(dir, &golden);
    let node = start(&cfg).expect("the undamaged journal starts");
    drop(node);
}

#[test]
fn a_torn_tail_is_cut_and_the_node_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (cfg, seq_last) = written_by_a_node(dir);
    let last = segments(dir).last().unwrap().clone();
    // What a crash leaves: the last record half written, zeros after it.
    let (at, seq) = *frames(&last).last().unwrap();
    assert_eq!(seq, seq_last);
    for s in segments(dir) {
        // As if the last sync's checkpoint never reached the disk.
        let mut c = std::fs::read(&s).unwrap();
        c[256..384].fill(0);
        std::fs::write(&s, c).unwrap();
    }
    let mut b = std::fs::read(&last).unwrap();
    b[at + 30..].fill(0);
    std::fs::write(&last, b).unwrap();
    let (ok, stdout, stderr) = verify_cli(dir);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains(&format!("sequences from {seq} cut")),
        "{stdout}"
    );
    let node = start(&cfg).expect("a torn tail does not stop the start");
    let t = node
        .recovery()
        .truncation
        .clone()
        .expect("the cut is reported");
    assert_eq!((t.seq_first_cut, node.recovery().seq_last), (seq, seq - 1));
    assert!(node
        .recovery()
        .to_string()
        .contains("cut a torn journal tail"));
    node.shutdown().unwrap();
}

#[test]
fn a_stop_after_a_restart_that_only_replayed_writes_the_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (cfg, seq_last) = written_by_a_node(dir);
    let node = start(&cfg).unwrap();
    assert_eq!(node.recovery().records_replayed, seq_last);
    let report = node.shutdown().unwrap();
    assert_eq!(report.seq_last, seq_last);
    assert_eq!(
        ringex_journal::snapshot_seq_newest(&dir.join("snapshots")).unwrap(),
        Some(seq_last)
    );
    let node = start(&cfg).unwrap();
    assert_eq!(node.recovery().snapshot_seq, Some(seq_last));
    assert_eq!(node.recovery().records_replayed, 0);
    node.shutdown().unwrap();
}

#[test]
fn a_snapshot_ahead_of_the_journal_refuses_the_start_before_anything_is_cut() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (cfg, seq_last) = written_by_a_node(dir);
    start(&cfg).unwrap().shutdown().unwrap();
    // Damage past the journal's own proofs (the last record, no checkpoint), which alone
    // would be cut as a torn tail: the snapshot at the end proves it durable.
    let last = segments(dir).last().unwrap().clone();
    let (at, seq) = *frames(&last).last().unwrap();
    assert_eq!(seq, seq_last);
    for s in segments(dir) {
        let mut c = std::fs::read(&s).unwrap();
        c[256..384].fill(0);
        std::fs::write(&s, c).unwrap();
    }
    let mut b = std::fs::read(&last).unwrap();
    b[at + 60] ^= 0x10;
    std::fs::write(&last, b).unwrap();
    refused(&cfg, dir, "last record flipped under a snapshot", seq);
}

#[test]
fn verify_beside_a_node_under_load_raises_no_false_alarm() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let cfg = config(&dir);
    let commands = stream(200_000);
    let mut node = start(&cfg).unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let load = std::thread::spawn(move || {
        for (i, c) in commands.iter().enumerate() {
            submit(&mut node, c, i as u64);
            if rx.try_recv().is_ok() {
                break;
            }
        }
        node.shutdown().unwrap().seq_last
    });
    let mut live = 0;
    for run in 0..20 {
        let (ok, stdout, stderr) = verify_cli(&dir);
        assert!(ok, "run {run}: {stderr}");
        assert!(stdout.contains("tail intact"), "run {run}: {stdout}");
        live += usize::from(stdout.contains("live: a writer (pid "));
    }
    let _ = tx.send(());
    let seq_last = load.join().unwrap();
    assert!(live >= 10, "the writer was seen in only {live} of 20 runs");
    // The pages the verifier read while the node wrote with O_DIRECT do not fool the
    // next start: it recovers everything, cutting nothing.
    let node = start(&cfg).unwrap();
    assert_eq!(node.recovery().seq_last, seq_last);
    assert!(node.recovery().truncation.is_none());
    node.shutdown().unwrap();
}

#[test]
fn the_journal_tools_find_the_journal_or_say_where_it_is_not() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_, seq_last) = written_by_a_node(dir);
    // The data directory is accepted and resolved to its journal.
    let (ok, stdout, _) = verify_cli(dir);
    assert!(ok);
    assert!(stdout.contains(&format!("..={seq_last}")), "{stdout}");
    // A directory with no journal is an error, for every tool.
    let empty = tempfile::tempdir().unwrap();
    for tool in ["verify", "describe", "dump", "replay"] {
        let out = Process::new(env!("CARGO_BIN_EXE_ringex"))
            .args(["journal", tool, "--dir"])
            .arg(empty.path())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{tool}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("holds no journal segments"),
            "{tool}: {stderr}"
        );
    }
}

#[test]
fn dump_shows_the_records_around_damage() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    written_by_a_node(dir);
    let seg = segments(dir)[1].clone();
    let recs = frames(&seg);
    let (at, seq) = recs[recs.len() / 2];
    let mut b = std::fs::read(&seg).unwrap();
    b[at + 60] ^= 0x04;
    std::fs::write(&seg, b).unwrap();
    let out = Process::new(env!("CARGO_BIN_EXE_ringex"))
        .args(["journal", "dump", "--from"])
        .arg((seq - 2).to_string())
        .args(["--count", "5", "--dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert!(lines[0].starts_with(&format!("{} ", seq - 2)), "{text}");
    assert!(lines[1].starts_with(&format!("{} ", seq - 1)), "{text}");
    assert!(
        lines[2].starts_with(&format!("!! DAMAGED where sequence {seq} should be")),
        "{text}"
    );
    assert!(lines[3].starts_with(&format!("{} ", seq + 1)), "{text}");
    assert!(lines[3].contains("NOT LINKED"), "{text}");
    assert!(lines[4].starts_with(&format!("{} ", seq + 2)), "{text}");
    // At most 0 lines is no request: refused, rather than answered with one record.
    let out = Process::new(env!("CARGO_BIN_EXE_ringex"))
        .args(["journal", "dump", "--count", "0", "--dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("--count"));
}

/// The start restores the newest snapshot that checks out whole, so a damaged newer one
/// means a replay from an older one. The records that replay reads are checked before
/// anything changes: damage among them refuses the start with nothing changed, although
/// the damaged snapshot's header still covers them; and so does a journal pruned past
/// what the replay needs, saying that the snapshots are damaged. Verify agrees.
/// The sequence in a segment's or a snapshot's file name.
fn base(p: &Path) -> u64 {
    let stem = p.file_stem().unwrap().to_str().unwrap();
    stem.trim_start_matches("snapshot-").parse().unwrap()
}

/// A node's data directory written in two runs, each stopped with its snapshot: (config,
/// older snapshot, newest snapshot at the journal's last record); the segments before
/// the older one are pruned.
fn two_snapshots(dir: &Path) -> (Config, PathBuf, PathBuf) {
    let cfg = config(dir);
    let commands = stream(60_000);
    let third = commands.len() / 3;
    for part in [&commands[..third], &commands[third..]] {
        let mut node = start(&cfg).unwrap();
        for (i, c) in part.iter().enumerate() {
            submit(&mut node, c, i as u64);
        }
        node.shutdown().unwrap();
    }
    let mut snapshots: Vec<PathBuf> = std::fs::read_dir(dir.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    snapshots.sort();
    assert_eq!(snapshots.len(), 2, "{snapshots:?}");
    // Pruning runs after a snapshot is written, which a stop does not wait for: remove
    // what it removes, the segments wholly before the older snapshot.
    let segs = segments(dir);
    for pair in segs.windows(2) {
        if base(&pair[1]) <= base(&snapshots[0]) + 1 {
            std::fs::remove_file(&pair[0]).unwrap();
        }
    }
    (cfg, snapshots[0].clone(), snapshots[1].clone())
}

#[test]
fn a_damaged_newest_snapshot_is_skipped_before_the_journal_is_opened() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (cfg, older, newest) = two_snapshots(dir);
    let segs = segments(dir);
    assert!(
        base(&segs[0]) > 1,
        "pruned up to the older snapshot: {segs:?}"
    );
    // A sealed segment wholly between the two snapshots: only a replay from the older
    // one reads it.
    let seg = segs[..segs.len() - 1]
        .iter()
        .find(|s| base(s) > base(&older))
        .expect("a sealed segment after the older snapshot")
        .clone();
    let golden = files(dir);
    let damage = |path: &Path, at: usize| {
        let mut b = std::fs::read(path).unwrap();
        b[at] ^= 0x08;
        std::fs::write(path, b).unwrap();
    };
    let snapshot_payload_byte = |path: &Path| std::fs::metadata(path).unwrap().len() as usize - 1;

    let (at, seq) = frames(&seg)[frames(&seg).len() / 2];
    damage(&seg, at + 60);
    damage(&newest, snapshot_payload_byte(&newest));
    refused(
        &cfg,
        dir,
        "newest snapshot damaged, a record after the older one flipped",
        seq,
    );

    restore(dir, &golden);
    for s in [&older, &newest] {
        damage(s, snapshot_payload_byte(s));
    }
    let before = files(dir);
    let err = match start(&cfg) {
        Ok(n) => panic!("started at seq {}", n.recovery().seq_last),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("records 1..") && err.contains("no snapshot checks out"),
        "{err}"
    );
    assert!(files(dir) == before, "the refused start changed files");
    let (ok, _, stderr) = verify_cli(dir);
    assert!(!ok, "verify exited 0");
    assert!(stderr.contains("no snapshot checks out"), "{stderr}");

    restore(dir, &golden);
    start(&cfg).unwrap().shutdown().unwrap();
}

/// Repair moves the snapshots past the cut into the quarantine beside the segments, and
/// its note says so; the node then starts from the older snapshot and replays to the cut.
#[test]
fn repair_notes_the_snapshots_it_moves() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (cfg, older, newest) = two_snapshots(dir);
    // A record after the older snapshot in the newest segment, which every start reads:
    // the newest snapshot proves it durable, so the start refuses.
    let last = segments(dir).last().unwrap().clone();
    let recs = frames(&last);
    let (at, seq) = recs[recs.len() / 2];
    assert!(seq > base(&older), "{seq} after {}", base(&older));
    let mut b = std::fs::read(&last).unwrap();
    b[at + 60] ^= 0x02;
    std::fs::write(&last, b).unwrap();
    refused(&cfg, dir, "record flipped under the newest snapshot", seq);

    let out = Process::new(env!("CARGO_BIN_EXE_ringex"))
        .args(["journal", "repair", "--truncate-at"])
        .arg(seq.to_string())
        .arg("--dir")
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let quarantine = dir.join(format!("journal/quarantine/cut-at-{seq:020}"));
    let name = newest.file_name().unwrap();
    assert!(quarantine.join(name).exists() && !newest.exists());
    let note = std::fs::read_to_string(quarantine.join("NOTE.txt")).unwrap();
    assert!(
        note.contains("Snapshots moved here") && note.contains(name.to_str().unwrap()),
        "{note}"
    );
    let node = start(&cfg).unwrap();
    assert_eq!(node.recovery().snapshot_seq, Some(base(&older)));
    assert_eq!(node.recovery().seq_last, seq - 1);
    node.shutdown().unwrap();
}

/// Damage in a sealed segment that the newest snapshot and the checkpoint cover: the
/// start checks that segment by header and seal only, and starts. Verify, which reads
/// every frame, reports the damage and says that the start does not read it, instead of
/// a refusal and its repair (which would give up every record from there on).
#[test]
fn verify_says_when_the_damage_it_finds_is_in_records_the_start_does_not_read() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (cfg, older, newest) = two_snapshots(dir);
    let segs = segments(dir);
    let seg = segs[..segs.len() - 1]
        .iter()
        .find(|s| base(s) > base(&older))
        .expect("a sealed segment after the older snapshot")
        .clone();
    let recs = frames(&seg);
    let (at, seq) = recs[recs.len() / 2];
    let mut b = std::fs::read(&seg).unwrap();
    b[at + 60] ^= 0x01;
    std::fs::write(&seg, b).unwrap();

    let node = start(&cfg).expect("the start does not read the damaged segment");
    assert_eq!(node.recovery().snapshot_seq, Some(base(&newest)));
    node.shutdown().unwrap();

    let (ok, _, stderr) = verify_cli(dir);
    assert!(!ok, "the damage is reported with a failing exit");
    assert!(
        stderr.contains("in records `ringex start` does not read")
            && stderr.contains(&format!("(sequence {seq})"))
            && stderr.contains(&seg.display().to_string()),
        "{stderr}"
    );
    assert!(!stderr.contains("--truncate-at"), "{stderr}");
}

/// The start reads from its newest snapshot on: damage wholly before it does not stop the
/// start, and `journal verify` reports it as damage in records the start does not read.
#[test]
fn damage_the_snapshot_covers_does_not_stop_the_start() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut cfg, seq_last) = written_by_a_node(dir);
    // Keep the covered segments (pruning would remove them).
    cfg.journal.prune_after_snapshot = false;
    start(&cfg).unwrap().shutdown().unwrap();
    let segs = segments(dir);
    let middle = &segs[1];
    let mut b = std::fs::read(middle).unwrap();
    b[..4096].fill(0);
    std::fs::write(middle, b).unwrap();
    let node = start(&cfg).expect("the damage lies before the snapshot");
    assert_eq!(node.recovery().snapshot_seq, Some(seq_last));
    assert_eq!(node.recovery().records_replayed, 0);
    drop(node);
    let (ok, _, stderr) = verify_cli(dir);
    assert!(!ok, "verify reports the damage");
    assert!(
        stderr.contains("records `ringex start` does not read"),
        "{stderr}"
    );
    assert!(!stderr.contains("--truncate-at"), "{stderr}");
}
