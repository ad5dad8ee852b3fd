//! `ringex journal ...`: read-only inspection of a journal directory, for operators. The
//! journal's corruption errors name `ringex journal verify --dir DIR`; this is it.
//!
//! Nothing here writes: `verify` reports what recovery would cut or refuse without
//! cutting, `describe` summarises segments, `dump` decodes records, and `replay` feeds
//! them to a fresh engine and prints the state hash (compare two nodes, or a node with
//! its snapshot).

use std::fmt::Write as _;
use std::path::Path;

use ringex_engine::{Event, Exchange};
use ringex_journal::{describe, verify, Reader, Verify};

use crate::node::recovery::{apply_records, decode_record};

fn ts(ns: Option<u64>) -> String {
    ns.map_or("-".into(), |n| format!("{n}"))
}

/// Every segment with its header, seal, record count and time span, and the durable
/// checkpoint.
pub fn describe_text(dir: &Path) -> Result<String, String> {
    let d = describe(dir).map_err(|e| e.to_string())?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "journal {}: {} segment(s)",
        dir.display(),
        d.segments.len()
    );
    match d.checkpoint {
        Some((generation, durable, segment)) => {
            let _ = writeln!(
                out,
                "durable checkpoint: seq {durable} (generation {generation}, in segment {segment})"
            );
        }
        None => {
            let _ = writeln!(out, "durable checkpoint: none");
        }
    }
    for s in &d.segments {
        let _ = writeln!(
            out,
            "{}: seqs {}..={} ({} records), {} bytes, {}, epoch {}, timestamps {}..{}{}",
            s.path.display(),
            s.base_seq,
            s.seq_last,
            s.record_count,
            s.size_bytes,
            if s.sealed { "sealed" } else { "open" },
            s.epoch.map_or("?".into(), |e| e.to_string()),
            ts(s.timestamp_ns_first),
            ts(s.timestamp_ns_last),
            s.problem
                .as_ref()
                .map(|p| format!("; PROBLEM: {p}"))
                .unwrap_or_default(),
        );
    }
    Ok(out)
}

/// What opening the journal would find, without changing anything. `Err` on corruption
/// before the durable point (the message names the segment and offset).
pub fn verify_text(dir: &Path, all: bool) -> Result<String, String> {
    let mode = if all { Verify::All } else { Verify::Tail };
    let r = verify(dir, mode).map_err(|e| e.to_string())?;
    let mut out = format!(
        "journal {}: records {}..={}, durable checkpoint at {}, {} segment(s) scanned frame by \
         frame\n",
        dir.display(),
        r.seq_first,
        r.seq_last,
        r.seq_durable,
        r.segments_scanned
    );
    match &r.truncation {
        None => out.push_str("tail intact: nothing would be cut\n"),
        Some(t) => {
            let _ = writeln!(out, "torn tail that opening would cut: {t:?}");
        }
    }
    Ok(out)
}

/// Decodes records `from..` (at most `count`) as engine commands, one line each.
pub fn dump_text(dir: &Path, from: u64, count: u64) -> Result<String, String> {
    let mut reader = Reader::open(dir).map_err(|e| e.to_string())?;
    reader.seek(from.max(1)).map_err(|e| e.to_string())?;
    let mut out = String::new();
    for _ in 0..count {
        let Some(r) = reader.next().map_err(|e| e.to_string())? else {
            break;
        };
        let line = match decode_record(r.seq, r.record_type, r.schema_version, r.payload) {
            // The stored hash is key-equivalent (docs/protocol.md §3.1): never print it.
            Ok(ringex_engine::Command::AddApiKey {
                account,
                key_id,
                permissions,
                ..
            }) => format!(
                "AddApiKey {{ account: {account}, key_id: {key_id}, secret_hash: <redacted>, \
                 permissions: {permissions} }}"
            ),
            Ok(cmd) => format!("{cmd:?}"),
            Err(e) => format!("UNDECODABLE: {e}"),
        };
        let _ = writeln!(
            out,
            "{} epoch={} ts={} {line}",
            r.seq, r.epoch, r.timestamp_ns
        );
    }
    Ok(out)
}

/// Replays every record into a fresh engine; returns (records, last seq, state hash,
/// rejected commands).
pub fn replay(dir: &Path) -> Result<(u64, u64, u128, u64), String> {
    let mut reader = Reader::open(dir).map_err(|e| e.to_string())?;
    let mut exchange = Exchange::new();
    if Reader::open(dir)
        .and_then(|mut r| r.next().map(|rec| rec.is_none()))
        .map_err(|e| e.to_string())?
    {
        // An empty journal: nothing to replay (seeking sequence 1 would fail).
        return Ok((0, 0, exchange.state_hash(), 0));
    }
    let mut rejected = 0u64;
    let (records, seq_last) = apply_records(&mut reader, &mut exchange, 1, None, |events| {
        if matches!(events.first(), Some(Event::Rejected { .. })) {
            rejected += 1;
        }
    })
    .map_err(|e| {
        format!("{e} (replay needs the journal from seq 1; after pruning, use the snapshot)")
    })?;
    Ok((records, seq_last, exchange.state_hash(), rejected))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::node::{CountingSink, Node, OutputMode};

    #[test]
    fn the_tools_describe_verify_dump_and_replay_a_real_journal() {
        let dir = tempfile::tempdir().unwrap();
        let text = crate::config::DEFAULT_CONFIG_TOML
            .replace(
                "data_dir = \"./data\"",
                &format!("data_dir = \"{}\"", dir.path().display()),
            )
            .replace("segment_size_mib = 64", "segment_size_mib = 1");
        let config = Config::parse(&text, "t.toml").unwrap();
        let mut node = Node::start(&config, OutputMode::Sink(Box::new(CountingSink))).unwrap();
        for (_, cmd) in config.bootstrap_commands() {
            node.submit(&cmd, 0).unwrap();
        }
        let (_, hash) = node.state_hash().unwrap();
        node.shutdown().unwrap();
        let journal = dir.path().join("journal");
        let d = describe_text(&journal).unwrap();
        assert!(
            d.contains("1 segment(s)") || d.contains("segment(s)"),
            "{d}"
        );
        assert!(d.contains("(17 records)"), "{d}");
        let v = verify_text(&journal, true).unwrap();
        assert!(v.contains("records 1..=17"), "{v}");
        assert!(v.contains("tail intact"), "{v}");
        let dump = dump_text(&journal, 3, 2).unwrap();
        assert_eq!(dump.lines().count(), 2);
        assert!(dump.starts_with("3 "), "{dump}");
        assert!(dump.contains("CreateMarket"), "{dump}");
        let keys = dump_text(&journal, 1, 17).unwrap();
        assert!(keys.contains("secret_hash: <redacted>"), "{keys}");
        let (records, seq_last, replayed, rejected) = replay(&journal).unwrap();
        assert_eq!((records, seq_last, rejected), (17, 17, 0));
        assert_eq!(replayed, hash, "replay reproduces the node's state hash");
    }
}
