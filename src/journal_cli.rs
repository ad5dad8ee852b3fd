//! `ringex journal ...`: inspection of a journal directory, for operators. The journal's
//! corruption errors name `ringex journal verify --dir DIR`; this is it.
//!
//! Everything but `repair` is read-only and safe beside a running node (it never takes
//! the writer's lock): `verify` runs the same analysis `ringex start` does and reports what
//! it would cut or refuse, with the same message; `describe` summarises segments; `dump`
//! decodes records and marks damaged stretches, reading past them; `replay` feeds the
//! records to a fresh engine and prints the state hash (compare two nodes, or a node with
//! its snapshot). `repair` is the operator's explicit cut of a damaged journal.

use std::fmt::Write as _;
use std::path::Path;

use ringex_engine::{Event, Exchange};
use ringex_journal::{describe, scan, verify_known, verify_known_visit, Reader, ScanItem, Verify};

use crate::node::recovery::apply_records;

use ringex_tools::journal::format::{self as fmt, iso8601, At, Format, LineWriter};
use ringex_tools::journal::snapshots_dir;
pub use ringex_tools::journal::{resolve_dir, JOURNAL_DIR_DEFAULT};

fn ts(ns: Option<u64>) -> String {
    ns.map_or("-".into(), |n| format!("{} ({n} ns)", iso8601(n)))
}

/// What `describe` found wrong, for its exit status: the segments with a problem, but not
/// the newest one's end beside a running writer (a record it is writing at that moment is
/// no damage). None when there is nothing to report.
pub fn describe_problems(dir: &Path, d: &ringex_journal::JournalDescription) -> Option<String> {
    let live = ringex_journal::lock_holder(dir).is_some();
    let newest = d.segments.last().map(|s| s.base_seq);
    let bad: Vec<String> = d
        .segments
        .iter()
        .filter(|s| s.problem.is_some() && !(live && Some(s.base_seq) == newest))
        .map(|s| s.path.display().to_string())
        .collect();
    // Sequences between two sound segments that no file holds: a segment is missing.
    let gaps: Vec<String> = d
        .segments
        .windows(2)
        .filter(|w| w[0].problem.is_none() && w[1].problem.is_none())
        .filter(|w| w[0].seq_last.saturating_add(1) < w[1].base_seq)
        .map(|w| format!("{}..={}", w[0].seq_last + 1, w[1].base_seq - 1))
        .collect();
    let mut what = Vec::new();
    if !bad.is_empty() {
        what.push(format!(
            "{} segment(s) with a PROBLEM ({})",
            bad.len(),
            bad.join(", ")
        ));
    }
    if !gaps.is_empty() {
        what.push(format!(
            "sequences {} are in no segment (a segment is missing)",
            gaps.join(", ")
        ));
    }
    (!what.is_empty()).then(|| {
        format!(
            "{}; `ringex journal verify --dir {}` says whether a start would cut it or \
             refuse, and what to do",
            what.join("; "),
            dir.display()
        )
    })
}

/// Every segment with its header, seal, record count and time span, and the durable
/// checkpoint; with [`describe_problems`]'s summary.
pub fn describe_text(dir: &Path) -> Result<(String, Option<String>), String> {
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
        let seqs = if s.record_count == 0 {
            "empty".to_string()
        } else {
            format!("seqs {}..={}", s.base_seq, s.seq_last)
        };
        let _ = writeln!(
            out,
            "{}: {seqs} ({} records), {} bytes, {}, epoch {}, written {} .. {}{}",
            s.path.display(),
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
    Ok((out, describe_problems(dir, &d)))
}

/// [`describe_text`] as one JSON object.
pub fn describe_json(dir: &Path) -> Result<(String, Option<String>), String> {
    let d = describe(dir).map_err(|e| e.to_string())?;
    let segments: Vec<_> = d
        .segments
        .iter()
        .map(|s| {
            serde_json::json!({
                "path": s.path.display().to_string(),
                "base_seq": s.base_seq,
                "records": s.record_count,
                "seq_last": (s.record_count > 0).then_some(s.seq_last),
                "size_bytes": s.size_bytes,
                "sealed": s.sealed,
                "epoch": s.epoch,
                "time_first": s.timestamp_ns_first.map(iso8601),
                "time_last": s.timestamp_ns_last.map(iso8601),
                "ts_ns_first": s.timestamp_ns_first,
                "ts_ns_last": s.timestamp_ns_last,
                "problem": s.problem,
            })
        })
        .collect();
    let v = serde_json::json!({
        "dir": dir.display().to_string(),
        "durable_checkpoint": d.checkpoint.map(|(generation, seq, segment)| {
            serde_json::json!({"seq": seq, "generation": generation, "segment_base_seq": segment})
        }),
        "segments": segments,
    });
    Ok((format!("{v}\n"), describe_problems(dir, &d)))
}

/// `verify --deep`: [`verify_text`] over every frame, with every record's chain value
/// re-derived and its payload decoded.
pub fn verify_deep_text(dir: &Path) -> Result<String, String> {
    let (r, n) = verify_deep(dir)?;
    let mut out = verify_render(dir, &r);
    let _ = writeln!(
        out,
        "deep: {n} record(s) read with every chain value re-derived and every payload decoded"
    );
    Ok(out)
}

/// What `ringex start` would find, without changing anything: the same analysis, with the
/// newest snapshot as the start takes it. `Err` carries the start's refusal, word for
/// word. Every frame of every segment is checked unless `quick` (then, as the start does
/// from a snapshot, sealed segments before the checkpoint and the snapshot by header and
/// seal only). Damage only the deeper check finds, in records the start does not read,
/// is an `Err` that says so: the start goes ahead there, and no cut is called for.
pub fn verify_text(dir: &Path, quick: bool) -> Result<String, String> {
    verify_report(dir, quick).map(|r| verify_render(dir, &r))
}

/// [`verify_text`]'s findings as one JSON object (`deep`: with the decoding pass's
/// record count).
pub fn verify_json(dir: &Path, quick: bool, deep: bool) -> Result<String, String> {
    let (r, decoded) = if deep {
        let (r, n) = verify_deep(dir)?;
        (r, Some(n))
    } else {
        (verify_report(dir, quick)?, None)
    };
    let v = serde_json::json!({
        "ok": true,
        "dir": dir.display().to_string(),
        "seq_first": (r.seq_last >= r.seq_first.max(1)).then_some(r.seq_first),
        "seq_last": (r.seq_last >= r.seq_first.max(1)).then_some(r.seq_last),
        "seq_durable": r.seq_durable,
        "seq_durable_proven": r.seq_durable_proven,
        "segments_checked": r.segments_scanned,
        "live": r.live.as_ref().map(|l| serde_json::json!({
            "holder": l.holder,
            "records_past_durable": l.records_past_durable,
            "stopped_at": l.stopped_at,
        })),
        "torn_tail": r.truncation.as_ref().map(|t| serde_json::json!({
            "segment": t.segment.display().to_string(),
            "offset_bytes": t.offset_bytes,
            "seq_first_cut": t.seq_first_cut,
            "seq_last_cut": t.seq_last_cut,
            "records_cut": t.records_cut,
            "bytes_cut": t.cut_size_bytes,
            "what": t.to_string(),
        })),
        "deep_records_decoded": decoded,
        "newest_snapshot_passed_over": snapshot_passed_over(dir),
    });
    Ok(format!("{v}\n"))
}

/// The full verification and the deep check in one pass over the bytes: each record is
/// decoded as the analysis finds its frame intact (length, CRC, padding, sequence, chain),
/// and counted. Beside a running writer, or when the analysis finds a torn tail, the
/// analysis does not reach every record a reader returns: then the checked reader reads
/// them all again, as it always did, with its own messages.
fn verify_deep(dir: &Path) -> Result<(ringex_journal::RecoveryReport, u64), String> {
    if ringex_journal::lock_holder(dir).is_none() {
        let (mut decoded, mut seq_seen) = (0u64, 0u64);
        let mut undecodable: Option<(u64, String)> = None;
        let r = verify_report_visit(dir, false, &mut |h, payload| {
            // A fresh listing starts the analysis again: count each record once.
            if h.seq <= seq_seen {
                return;
            }
            seq_seen = h.seq;
            decoded += 1;
            if undecodable.is_none() {
                undecodable = fmt::decode_error(h.record_type, h.schema_version, payload)
                    .map(|why| (h.seq, why));
            }
        })?;
        if r.live.is_none() && r.truncation.is_none() {
            if let Some((seq, why)) = undecodable {
                return Err(ringex_tools::journal::verbs::undecodable(dir, seq, &why));
            }
            return Ok((r, decoded));
        }
    }
    let r = verify_report(dir, false)?;
    let n = ringex_tools::journal::verbs::deep_check(dir)?;
    Ok((r, n))
}

fn verify_report(dir: &Path, quick: bool) -> Result<ringex_journal::RecoveryReport, String> {
    verify_report_visit(dir, quick, &mut |_, _| {})
}

fn verify_report_visit(
    dir: &Path,
    quick: bool,
    visit: &mut dyn FnMut(&ringex_journal::FrameHeader, &[u8]),
) -> Result<ringex_journal::RecoveryReport, String> {
    let snapshots = snapshots_dir(dir);
    let snapshot = match &snapshots {
        Some(d) => ringex_journal::snapshot_seq_newest(d).map_err(|e| e.to_string())?,
        None => None,
    }
    .unwrap_or(0);
    let snapshot_valid = match &snapshots {
        Some(d) => ringex_journal::snapshot_seq_newest_valid(d).map_err(|e| e.to_string())?,
        None => None,
    }
    .unwrap_or(0);
    // Without a usable snapshot the start reads, and so checks, every record.
    let start_mode = if snapshot_valid > 0 {
        Verify::Tail
    } else {
        Verify::All
    };
    let mode = if quick { start_mode } else { Verify::All };
    let r = match verify_known_visit(dir, mode, snapshot, snapshot_valid + 1, visit) {
        Ok(r) => r,
        Err(e) if mode == start_mode => return Err(e.to_string()),
        Err(e) => {
            return Err(
                match verify_known(dir, start_mode, snapshot, snapshot_valid + 1) {
                    Err(start) => start.to_string(),
                    Ok(_) => not_read_by_the_start(&e, snapshot_valid),
                },
            )
        }
    };
    Ok(r)
}

/// When the newest snapshot beside the journal is damaged: which one a start takes
/// instead (it passes over damaged ones, and so replays more of the journal).
fn snapshot_passed_over(dir: &Path) -> Option<String> {
    let entries = ringex_journal::snapshot_list(&snapshots_dir(dir)?).ok()?;
    let newest = entries.last()?;
    let why = newest.meta.as_ref().err()?;
    let usable = entries.iter().rev().find(|e| e.meta.is_ok());
    Some(format!(
        "the newest snapshot {} is damaged ({why}): a start passes over it to {}; \
         `ringex journal snapshot verify` checks them all",
        newest.path.display(),
        match usable {
            Some(e) => format!("the snapshot at sequence {}", e.seq),
            None => "the journal's first record (no snapshot is usable)".to_string(),
        }
    ))
}

fn verify_render(dir: &Path, r: &ringex_journal::RecoveryReport) -> String {
    let mut out = format!(
        "journal {}: records {}, durable checkpoint at {}, proven durable up to {}, {} \
         segment(s) checked frame by frame\n",
        dir.display(),
        if r.seq_last < r.seq_first.max(1) {
            "none".to_string()
        } else {
            format!("{}..={}", r.seq_first, r.seq_last)
        },
        r.seq_durable,
        r.seq_durable_proven,
        r.segments_scanned
    );
    if let Some(live) = &r.live {
        let _ = writeln!(
            out,
            "live: a writer ({}) holds the journal; {} record(s) past the durable point \
             not checked{}",
            live.holder,
            live.records_past_durable,
            live.stopped_at
                .as_ref()
                .map(|at| format!(" (the writer is mid-write at {at})"))
                .unwrap_or_default()
        );
    }
    if let Some(note) = snapshot_passed_over(dir) {
        let _ = writeln!(out, "snapshots: {note}");
    }
    match &r.truncation {
        None => out.push_str("tail intact: nothing would be cut\n"),
        Some(t) => {
            let _ = writeln!(out, "torn tail that opening would cut: {t}");
        }
    }
    out
}

/// Damage that the start does not read (sealed segments it checks by header and seal
/// only), so it starts: where it is, and that a cut is not what it calls for.
fn not_read_by_the_start(e: &ringex_journal::Error, snapshot: u64) -> String {
    let ringex_journal::Error::Corrupt {
        segment,
        offset_bytes,
        seq,
        reason,
        ..
    } = e
    else {
        return e.to_string();
    };
    let what = reason
        .split("; refusing to cut it")
        .next()
        .unwrap_or(reason);
    format!(
        "journal damaged in records `ringex start` does not read: segment {} at offset \
         {offset_bytes} (sequence {seq}): {what}. The start checks the sealed segments up to \
         the durable checkpoint and the newest snapshot (at {snapshot}) by header and seal \
         only, and it starts; `ringex journal replay` and a start that falls back to an \
         older snapshot read these records and would stop here. Keep a copy of the journal \
         directory; a repair is not needed to start, and would give up every record from \
         {seq} on",
        segment.display()
    )
}

/// One line per record from `from` (at most `count` lines), decoded as engine commands
/// with the time in ISO 8601 UTC beside the raw nanoseconds (`--json`: one JSON object per
/// line); damaged stretches get a line of their own and reading goes on past them.
pub fn dump_text(dir: &Path, from: u64, count: u64, json: bool) -> Result<String, String> {
    let mut out = Vec::new();
    let mut lines = 0u64;
    let mut writer = LineWriter::new(if json { Format::Jsonl } else { Format::Text }, false);
    let mut failed = None;
    scan(dir, from.max(1), |item| {
        match item {
            ScanItem::Record {
                header: h,
                payload,
                linked,
                ..
            } => {
                let body = fmt::decode(h.record_type, h.schema_version, payload);
                let mut fields = fmt::body_fields(&body);
                if !linked {
                    fields.push(("not_linked_to_the_record_before", fmt::V::B(true)));
                }
                let at = At {
                    seq: h.seq,
                    timestamp_ns: h.timestamp_ns,
                    epoch: h.epoch,
                };
                let line = writer.write(&mut out, at, None, fmt::body_type(&body), &fields);
                if let Err(e) = line {
                    failed = Some(e);
                    return false;
                }
                if !linked && !json {
                    // Said in words as well, at the end of the line.
                    out.pop();
                    out.extend_from_slice(b" (NOT LINKED to the record before)\n");
                }
            }
            ScanItem::Damaged {
                segment,
                offset_bytes,
                len_bytes,
                seq_expected,
                reason,
            } => {
                let line = if json {
                    serde_json::json!({
                        "damaged": true,
                        "seq_expected": seq_expected,
                        "segment": segment.display().to_string(),
                        "offset_bytes": offset_bytes,
                        "len_bytes": len_bytes,
                        "reason": reason,
                    })
                    .to_string()
                } else {
                    format!(
                        "!! DAMAGED where sequence {seq_expected} should be: {} offset \
                         {offset_bytes}, {len_bytes} bytes: {reason}",
                        segment.display()
                    )
                };
                out.extend_from_slice(line.as_bytes());
                out.push(b'\n');
            }
        }
        lines += 1;
        lines < count
    })
    .map_err(|e| e.to_string())?;
    if let Some(e) = failed {
        return Err(e);
    }
    if lines == 0 {
        return Err(format!(
            "no record from sequence {from} on in {}",
            dir.display()
        ));
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
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
    .map_err(|e| match e {
        crate::node::NodeError::Journal(e @ ringex_journal::Error::SequenceUnavailable { .. }) => {
            format!(
                "{e}: replay needs the journal from sequence 1; after pruning, the node starts \
                 from its snapshot, and `ringex journal events` or `account --at-seq` answer \
                 from the snapshots kept"
            )
        }
        e => e.to_string(),
    })?;
    // A reader ends at damage in the newest segment as at the end of what is written:
    // tell them apart.
    ringex_tools::journal::check_end(dir, seq_last + 1)?;
    Ok((records, seq_last, exchange.state_hash(), rejected))
}

/// Cuts the journal so that it ends before `seq_cut` (the operator's decision to give up
/// those records), keeping the original bytes in `<dir>/quarantine/`. Snapshots at or
/// after the cut describe records no longer in the journal: they move to the same folder.
pub fn repair_text(dir: &Path, seq_cut: u64) -> Result<String, String> {
    let snapshots = snapshots_dir(dir);
    let r = ringex_journal::repair_truncate(dir, seq_cut, snapshots.as_deref())
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "cut {} at offset {}: the journal now ends at {} (records {}..={})",
        r.segment.display(),
        r.offset_bytes,
        seq_cut - 1,
        r.after.seq_first,
        r.after.seq_last
    );
    for p in &r.segments_moved {
        let _ = writeln!(out, "moved {} into the quarantine", p.display());
    }
    for p in &r.snapshots_moved {
        let _ = writeln!(
            out,
            "moved snapshot {} (past the cut) into the quarantine",
            p.display()
        );
    }
    let _ = writeln!(
        out,
        "the original bytes are in {} (NOTE.txt says what was cut)",
        r.quarantine.display()
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::node::{CountingSink, Node, OutputMode};

    #[test]
    fn the_toolkit_decodes_the_record_types_the_node_writes() {
        use ringex_tools::journal::format as f;
        assert_eq!(f::RECORD_COMMAND, crate::node::RECORD_COMMAND);
        assert_eq!(f::RECORD_EPOCH, crate::node::RECORD_EPOCH);
        assert_eq!(f::RECORD_CHECKPOINT, crate::node::RECORD_CHECKPOINT);
        let payload = crate::node::recovery::encode_epoch_record(3, 7);
        assert!(matches!(
            f::decode(crate::node::RECORD_EPOCH, 1, &payload),
            f::Body::Epoch {
                epoch: 3,
                node_id: 7
            }
        ));
    }

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
        let (d, _) = describe_text(&journal).unwrap();
        assert!(
            d.contains("1 segment(s)") || d.contains("segment(s)"),
            "{d}"
        );
        assert!(d.contains("(17 records)"), "{d}");
        let v = verify_text(&journal, false).unwrap();
        assert!(v.contains("records 1..=17"), "{v}");
        assert!(v.contains("tail intact"), "{v}");
        let dump = dump_text(&journal, 3, 2, false).unwrap();
        assert_eq!(dump.lines().count(), 2);
        assert!(dump.starts_with("3 "), "{dump}");
        assert!(dump.contains("create_market"), "{dump}");
        let keys = dump_text(&journal, 1, 17, false).unwrap();
        assert!(keys.contains("secret_hash=<redacted>"), "{keys}");
        let (records, seq_last, replayed, rejected) = replay(&journal).unwrap();
        assert_eq!((records, seq_last, rejected), (17, 17, 0));
        assert_eq!(replayed, hash, "replay reproduces the node's state hash");
    }
}
