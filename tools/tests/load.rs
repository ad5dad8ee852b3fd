//! A short `load::run` against the real gateway on loopback.

mod common;

use std::time::Duration;

use common::*;
use ringex_tools::load::{run, LoadArgs};

#[test]
fn short_load_run_completes_without_errors() {
    let server = serve();
    let dir = std::env::temp_dir().join(format!("ringex-load-test-{}", std::process::id()));
    let json = dir.with_extension("json");
    let mut args = LoadArgs::new(server.trading, server.admin);
    args.rate = 2_000;
    args.duration = 1.0;
    args.users = 20;
    args.json = Some(json.clone());
    // The run ends by itself (its duration, then a bounded drain); the deadline only
    // turns a hang into a failure.
    let report = {
        let args = args.clone();
        let (done, report) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(run(&args));
        });
        report
            .recv_timeout(Duration::from_secs(300))
            .expect("the run ends")
            .unwrap()
    };
    report.print();
    assert_eq!(report.errors, 0, "{:?}", report.error_messages);
    assert_eq!(report.unanswered, 0);
    assert!(report.sent > 1_000, "{report:?}");
    assert_eq!(report.answered, report.sent);
    assert!(report.fills > 0, "the mix trades: {report:?}");
    assert!(report.latency["all"].count == report.answered);
    // Every answered request is counted once under its user's class.
    let by_class: u64 = report.latency_by_class.values().map(|p| p.count).sum();
    assert_eq!(by_class, report.answered, "{:?}", report.latency_by_class);
    for class in ["market_maker", "retail", "bot"] {
        assert!(report.latency_by_class.contains_key(class), "{class}");
    }
    // No reject that would mean the generator builds bad orders.
    for bad in [
        "PriceOutsideBand",
        "InsufficientBalance",
        "Malformed",
        "InvalidPrice",
    ] {
        assert!(!report.rejects_by_reason.contains_key(bad), "{report:?}");
    }
    let text = std::fs::read_to_string(&json).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(v["latency"]["all"]["p99_us"].as_f64().unwrap() > 0.0);
    let _ = std::fs::remove_file(&json);

    // A rerun reuses the accounts (idempotent setup) and works the same.
    args.json = None;
    args.duration = 0.3;
    let again = run(&args).unwrap();
    assert_eq!(again.errors, 0, "{:?}", again.error_messages);
}
