//! `ringex journal ...`: the operator's journal and snapshot toolkit. Everything here
//! reads only (it never takes the writer's lock, and is safe beside a running node),
//! streams in constant memory, and reports damage as an error that says where, never as a
//! panic.
//!
//! - [`format`]: records and events as named fields in text, JSON lines or CSV.
//! - [`replay`]: the engine's state and events, rebuilt from the nearest snapshot.
//! - [`verbs`]: export, events, order, account, tail, seek, stats, diff, snapshot, prune.

pub mod format;
pub mod replay;
pub mod verbs;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

pub use format::Format;
pub use verbs::{run, SnapshotCmd, ToolCmd};

/// Where the default config keeps the journal (`node.data_dir` = `./data`).
pub const JOURNAL_DIR_DEFAULT: &str = "./data/journal";

fn holds_segments(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.ends_with(".seg") && n.len() == 24)
        })
    })
}

/// The journal directory an operator meant: `dir` itself when it holds segments, its
/// `journal/` when it is a node's data directory, the default config's journal when no
/// `--dir` is given. A directory with no journal in it is an error, never an empty
/// journal.
pub fn resolve_dir(dir: Option<&Path>) -> Result<PathBuf, String> {
    let given = dir.map_or_else(|| PathBuf::from(JOURNAL_DIR_DEFAULT), Path::to_path_buf);
    if holds_segments(&given) {
        return Ok(given);
    }
    let inner = given.join("journal");
    if holds_segments(&inner) {
        return Ok(inner);
    }
    // A directory that exists but cannot be listed (permissions) is not an empty one:
    // say so, rather than that it holds no journal.
    for d in [&given, &inner] {
        if let Err(e) = std::fs::read_dir(d) {
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                return Err(format!(
                    "{} cannot be read ({e}); run as the user the node runs as, or give \
                     this user read access to the data directory",
                    d.display()
                ));
            }
        }
    }
    let what = if !given.exists() {
        "does not exist"
    } else if !given.is_dir() {
        "is not a directory"
    } else {
        "holds no journal segments (NNNNNNNNNNNNNNNNNNNN.seg), nor does its journal/"
    };
    Err(format!(
        "{} {what}; pass the journal directory (a node's <data_dir>/journal) or the data \
         directory with --dir{}",
        given.display(),
        if dir.is_none() {
            " (the default is the default config's ./data/journal)"
        } else {
            ""
        }
    ))
}

/// The snapshots directory beside a node's journal directory (`<data_dir>/journal` and
/// `<data_dir>/snapshots`); None for a journal directory laid out otherwise (a copy on
/// its own), whose neighbours are not its snapshots.
pub fn snapshots_dir(journal_dir: &Path) -> Option<PathBuf> {
    let name = journal_dir.canonicalize().ok()?;
    if name.file_name()? != "journal" {
        return None;
    }
    Some(name.parent()?.join("snapshots"))
}

/// The snapshots directory an operator meant: `dir` itself when it holds snapshot files,
/// a data directory's `snapshots/`, or the one beside a journal directory; the default
/// config's `./data/snapshots` when no `--dir` is given.
pub fn resolve_snapshots_dir(dir: Option<&Path>) -> Result<PathBuf, String> {
    let given = dir.map_or_else(|| PathBuf::from("./data"), Path::to_path_buf);
    let holds = |d: &Path| {
        std::fs::read_dir(d).is_ok_and(|entries| {
            entries.flatten().any(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with("snapshot-") && n.ends_with(".snap"))
            })
        })
    };
    if holds(&given) {
        return Ok(given);
    }
    if given.join("snapshots").is_dir() {
        return Ok(given.join("snapshots"));
    }
    if let Some(beside) = snapshots_dir(&given).filter(|d| d.is_dir()) {
        return Ok(beside);
    }
    Err(format!(
        "{} holds no snapshots (snapshot-NNNNNNNNNNNNNNNNNNNN.snap), nor a snapshots/ \
         directory; pass a node's data directory or its snapshots directory with --dir",
        given.display()
    ))
}

/// The first and last sequence the journal holds (last < first: no records yet). Reads
/// only the newest segment.
pub fn seq_bounds(dir: &Path) -> Result<(u64, u64), String> {
    let segments = ringex_journal::list_segments(dir).map_err(|e| e.to_string())?;
    let (Some(first), Some(last)) = (segments.first(), segments.last()) else {
        return Err(format!("{} holds no journal segments", dir.display()));
    };
    let mut reader = ringex_journal::Reader::open(dir).map_err(|e| e.to_string())?;
    reader.seek(last.base_seq).map_err(|e| e.to_string())?;
    let mut seq_last = last.base_seq.saturating_sub(1);
    // Bounded by the segment's size: each record takes at least a frame header.
    while let Some(r) = reader.next().map_err(|e| e.to_string())? {
        seq_last = r.seq;
    }
    Ok((first.base_seq, seq_last))
}

/// A progress bar on stderr for long work, only when stderr is a terminal (never in a
/// pipe, a log or a test).
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    start: u64,
}

impl Progress {
    /// Work from sequence `start` to `end`; no bar below a few hundred thousand.
    pub fn new(what: &str, start: u64, end: u64) -> Progress {
        let len = end.saturating_sub(start);
        let bar = (std::io::stderr().is_terminal() && len >= 200_000).then(|| {
            let bar = indicatif::ProgressBar::new(len);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} [{bar:40}] {human_pos}/{human_len} records ({percent}%), {eta} left",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar.set_message(what.to_string());
            bar
        });
        Progress { bar, start }
    }

    /// At sequence `seq` (cheap: call it every record).
    #[inline]
    pub fn at(&self, seq: u64) {
        if let Some(bar) = &self.bar {
            if seq.is_multiple_of(4096) {
                bar.set_position(seq.saturating_sub(self.start));
            }
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Which items a verb shows: `--from-seq --to-seq --from-time --to-time --account
/// --market --type` (and for events, `--order`).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Filter {
    /// First sequence.
    #[arg(long)]
    pub from_seq: Option<u64>,
    /// Last sequence (inclusive).
    #[arg(long)]
    pub to_seq: Option<u64>,
    /// Records written at or after this time: nanoseconds since the Unix epoch or UTC
    /// ISO 8601 (2026-12-07T20:48:17Z).
    #[arg(long, value_parser = format::parse_time)]
    pub from_time: Option<u64>,
    /// Records written before this time (same forms as --from-time).
    #[arg(long, value_parser = format::parse_time)]
    pub to_time: Option<u64>,
    /// Only what concerns this account.
    #[arg(long)]
    pub account: Option<u32>,
    /// Only what concerns this market.
    #[arg(long)]
    pub market: Option<u32>,
    /// Only these types, comma-separated (place,cancel,... for records;
    /// trade,rejected,... for events).
    #[arg(long = "type", value_delimiter = ',')]
    pub types: Vec<String>,
}

impl Filter {
    pub fn seq_range(&self) -> (u64, u64) {
        (
            self.from_seq.unwrap_or(1).max(1),
            self.to_seq.unwrap_or(u64::MAX),
        )
    }

    pub fn time_ok(&self, ts: u64) -> bool {
        self.from_time.is_none_or(|t| ts >= t) && self.to_time.is_none_or(|t| ts < t)
    }

    /// Whether an item of type `kind` about `accounts` and `market` passes.
    pub fn item_ok(&self, kind: &str, accounts: [Option<u64>; 2], market: Option<u64>) -> bool {
        (self.types.is_empty() || self.types.iter().any(|t| t == kind))
            && self
                .account
                .is_none_or(|a| accounts.contains(&Some(u64::from(a))))
            && self.market.is_none_or(|m| market == Some(u64::from(m)))
    }

    /// Refuses type names that are none of `known`, naming them.
    pub fn check_types(&mut self, known: &[&str]) -> Result<(), String> {
        for t in &mut self.types {
            *t = t.trim().to_ascii_lowercase().replace('-', "_");
            if !known.contains(&t.as_str()) {
                return Err(format!(
                    "unknown --type {t:?}; the types are: {}",
                    known.join(", ")
                ));
            }
        }
        Ok(())
    }
}

/// The account(s) and market a set of fields names.
pub fn subjects(fields: &format::Fields) -> ([Option<u64>; 2], Option<u64>) {
    let get = |key: &str| {
        fields.iter().find_map(|(k, v)| match v {
            format::V::U(x) if *k == key => Some(*x),
            _ => None,
        })
    };
    let first = get("account").or_else(|| get("maker_account"));
    ([first, get("taker_account")], get("market"))
}

/// After a reader found no record at `seq_next`: whether that is the end of what is
/// written, or damage that stops the reader (bytes after the last record that are no
/// record, in the newest segment, where a reader cannot tell a torn write from a write in
/// progress). Beside a running writer the tail may be mid-write, and is not judged.
pub fn check_end(dir: &Path, seq_next: u64) -> Result<(), String> {
    if ringex_journal::lock_holder(dir).is_some() {
        return Ok(());
    }
    let mut problem = None;
    ringex_journal::scan(dir, seq_next, |item| {
        match item {
            ringex_journal::ScanItem::Damaged {
                segment,
                offset_bytes,
                len_bytes,
                reason,
                ..
            } => {
                problem = Some(format!(
                    "damage after the last readable record {}: segment {} at offset \
                     {offset_bytes}, {len_bytes} bytes: {reason}",
                    seq_next.saturating_sub(1),
                    segment.display()
                ))
            }
            ringex_journal::ScanItem::Record { header, .. } => {
                problem = Some(format!(
                    "record {} follows the last readable record {} without being linked to \
                     it",
                    header.seq,
                    seq_next.saturating_sub(1)
                ))
            }
        }
        false
    })
    .map_err(|e| e.to_string())?;
    match problem {
        None => Ok(()),
        Some(what) => Err(format!(
            "journal damaged: {what}; `ringex journal verify --dir {}` says whether a start \
             would cut it as a torn tail or refuse, and `ringex journal dump` shows the \
             records around it",
            dir.display()
        )),
    }
}
