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
