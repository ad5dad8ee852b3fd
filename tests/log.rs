//! The node's log: each line an RFC 3339 UTC time, a level, a target and the message;
//! `--log-format json` one JSON object per line; `RUST_LOG` filters.

use std::process::Command as Process;

fn start(args: &[&str], rust_log: Option<&str>) -> (bool, String) {
    let mut cmd = Process::new(env!("CARGO_BIN_EXE_ringex"));
    cmd.arg("start").args(args).env_remove("RUST_LOG");
    if let Some(filter) = rust_log {
        cmd.env("RUST_LOG", filter);
    }
    let out = cmd.output().expect("run ringex start");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_log_line_has_a_utc_time_a_level_a_target_and_the_message() {
    let (ok, log) = start(&["--config", "/nonexistent/ringex.toml"], None);
    assert!(!ok);
    let line = log.lines().last().expect("a line");
    // 2026-12-07T21:09:11.698348Z ERROR ringex: cannot read ...
    let (time, rest) = line.split_once(' ').unwrap();
    assert!(
        time.len() == 27 && time.as_bytes()[10] == b'T' && time.ends_with('Z'),
        "{line}"
    );
    let rest = rest.trim_start();
    assert!(rest.starts_with("ERROR ringex: "), "{line}");
    assert!(rest.contains("/nonexistent/ringex.toml"), "{line}");
}

#[test]
fn json_lines_for_log_shippers() {
    let (ok, log) = start(
        &[
            "--log-format",
            "json",
            "--config",
            "/nonexistent/ringex.toml",
        ],
        None,
    );
    assert!(!ok);
    let line = log.lines().last().expect("a line");
    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(v["level"], "ERROR");
    assert_eq!(v["target"], "ringex");
    assert!(v["message"]
        .as_str()
        .unwrap()
        .contains("/nonexistent/ringex.toml"));
    assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn rust_log_filters_by_level() {
    let (ok, log) = start(&["--config", "/nonexistent/ringex.toml"], Some("off"));
    assert!(!ok, "the exit status still says it failed");
    assert!(log.is_empty(), "{log}");
    let (_, log) = start(
        &["--config", "/nonexistent/ringex.toml"],
        Some("not a = filter"),
    );
    assert!(log.contains("RUST_LOG is not a filter"), "{log}");
}

/// Pruning after a snapshot is routine: logged at INFO by `ringex::node`, so that
/// `RUST_LOG=warn` keeps only what went wrong.
#[test]
fn pruning_after_a_snapshot_is_logged_as_information() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    // A bootstrap of 8,000 funded accounts (32,000 commands) rolls 1 MiB segments; a
    // snapshot every 5,000 commands, one kept, leaves the first segment to prune. The
    // journal prunes at the end of a batch after a snapshot is on disk: the bootstrap's
    // batches after each snapshot are those.
    let mut text = ringex::config::DEFAULT_CONFIG_TOML
        .replace(
            "data_dir = \"./data\"",
            &format!("data_dir = \"{}\"", dir.path().display()),
        )
        .replace("127.0.0.1:9100", "127.0.0.1:0")
        .replace("127.0.0.1:9101", "127.0.0.1:0")
        .replace("127.0.0.1:9102", "127.0.0.1:0")
        .replace("127.0.0.1:9103", "127.0.0.1:0")
        .replace("segment_size_mib = 64", "segment_size_mib = 1")
        .replace("durability = \"group\"", "durability = \"async\"")
        .replace("every_commands = 1000000", "every_commands = 5000")
        .replace("keep = 3 ", "keep = 1 ");
    for id in 0..8000u32 {
        text.push_str(&format!(
            "\n[[accounts]]\nid = {}\ndeposits = {{ BTC = 1, ETH = 1, USDT = 1 }}\n",
            100_000 + id
        ));
    }
    let config = dir.path().join("ringex.toml");
    std::fs::write(&config, text).unwrap();
    let mut node = Process::new(env!("CARGO_BIN_EXE_ringex"))
        .args(["start", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(node.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if line.contains("pruned") && tx.send(line).is_err() {
                break;
            }
        }
    });
    // A failure bound, not the thing measured.
    let line = rx.recv_timeout(std::time::Duration::from_secs(120));
    node.kill().unwrap();
    node.wait().unwrap();
    let line = line.expect("the node prunes the segment its snapshot covers");
    assert!(
        line.contains(" INFO ringex::node: pruned 1 journal segment(s) up to seq "),
        "{line}"
    );
}
