//! The verbs of `ringex journal` that read records, events and snapshots. Each writes its
//! answer to `out` and returns an error that says what is wrong and what to do.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ringex_engine::{Command, Event, Exchange, OrderRef, Query, QueryReply};
use ringex_journal::{list_segments, scan, snapshot_list, Reader, ScanItem};

use super::format::{
    self, body_fields, body_fields_into, body_type, decimal, decode, emit, event_fields,
    event_fields_into, event_type, iso8601, At, Body, Format, LineWriter, Named, EVENT_TYPE_NAMES,
};
use super::replay::{self, start_before};
use super::{
    check_end, resolve_dir, resolve_snapshots_dir, seq_bounds, subjects, Filter, Progress,
};

/// `--dir` of the journal tools.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct DirArg {
    /// Journal directory, or a node's data directory (its journal/ is used). Default: the
    /// default config's ./data/journal.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// The journal toolkit's verbs beyond describe, verify, dump, replay and repair.
#[derive(Debug, clap::Subcommand)]
pub enum ToolCmd {
    /// Decoded records, one per line, streamed in constant memory, filtered.
    Export {
        #[command(flatten)]
        dir: DirArg,
        #[command(flatten)]
        filter: Filter,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Same as --format jsonl.
        #[arg(long)]
        json: bool,
    },
    /// The engine's output events (fills, cancels, rejects with reasons), by replay from
    /// the nearest snapshot, filtered like export.
    Events {
        #[command(flatten)]
        dir: DirArg,
        #[command(flatten)]
        filter: Filter,
        /// Only events about this order (exchange order id).
        #[arg(long)]
        order: Option<u64>,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Same as --format jsonl.
        #[arg(long)]
        json: bool,
    },
    /// An order's whole life: the command that placed it, fills, replaces, the cancel,
    /// and where it stands.
    Order {
        /// The exchange order id.
        id: u64,
        #[command(flatten)]
        dir: DirArg,
        #[arg(long)]
        json: bool,
    },
    /// An account's balances, holds and open orders at a sequence (default: the end).
    Account {
        id: u32,
        #[command(flatten)]
        dir: DirArg,
        /// The state after this sequence.
        #[arg(long)]
        at_seq: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// The last records; with -f, go on printing records as the node writes them.
    Tail {
        #[command(flatten)]
        dir: DirArg,
        /// How many of the last records.
        #[arg(short = 'n', long = "lines", default_value_t = 10)]
        lines: u64,
        /// Follow the journal as it grows (until interrupted).
        #[arg(short = 'f', long)]
        follow: bool,
        #[arg(long)]
        json: bool,
    },
    /// Which segment and offset hold a sequence, or the first record at or after a time.
    Seek {
        #[command(flatten)]
        dir: DirArg,
        #[arg(long, conflicts_with = "time")]
        seq: Option<u64>,
        /// Nanoseconds since the Unix epoch or UTC ISO 8601.
        #[arg(long, value_parser = format::parse_time)]
        time: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// Counts, bytes, rates and the time span, in total and by type, minute or market.
    Stats {
        #[command(flatten)]
        dir: DirArg,
        #[command(flatten)]
        filter: Filter,
        #[arg(long, value_enum, default_value_t = StatsBy::Type)]
        by: StatsBy,
        #[arg(long)]
        json: bool,
    },
    /// The first sequence where two journals differ (by chain value): a primary and its
    /// standby, or a journal and its backup. Exit 1 when they differ.
    Diff {
        /// A journal or data directory.
        a: PathBuf,
        /// Another journal or data directory.
        b: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// The snapshots beside a journal: list, verify (restore each and check it), describe.
    Snapshot {
        #[command(subcommand)]
        which: SnapshotCmd,
    },
    /// What pruning would remove now (segments wholly before the oldest snapshot).
    Prune {
        #[command(flatten)]
        dir: DirArg,
        /// Required: the running node prunes its own journal after each snapshot.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StatsBy {
    Type,
    Minute,
    Market,
}

#[derive(Debug, clap::Subcommand)]
pub enum SnapshotCmd {
    /// Every snapshot file with its sequence, size, epoch and whether its checksums hold.
    List {
        /// A data directory, its snapshots/, or its journal/ (default ./data).
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Restores every snapshot and checks it: checksums, state hash, invariants, and that
    /// it comes from this journal's history (its chain value). Exit 1 if any fails.
    Verify {
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// What a snapshot holds: markets, assets, the next order id.
    Describe {
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The snapshot at this sequence (default: the newest usable).
        #[arg(long)]
        seq: Option<u64>,
        #[arg(long)]
        json: bool,
    },
}

fn jsonl(json: bool, format: Format) -> Format {
    if json {
        Format::Jsonl
    } else {
        format
    }
}

fn json_line(out: &mut dyn Write, v: &serde_json::Value) -> Result<(), String> {
    emit(out, format!("{v}\n").as_bytes())
}

fn dir_of(d: &DirArg) -> Result<PathBuf, String> {
    resolve_dir(d.dir.as_deref())
}

/// Runs one verb, writing to `out`.
pub fn run(cmd: ToolCmd, out: &mut dyn Write) -> Result<(), String> {
    match cmd {
        ToolCmd::Export {
            dir,
            filter,
            format,
            json,
        } => export(&dir_of(&dir)?, filter, jsonl(json, format), out),
        ToolCmd::Events {
            dir,
            filter,
            order,
            format,
            json,
        } => events(&dir_of(&dir)?, filter, order, jsonl(json, format), out),
        ToolCmd::Order { id, dir, json } => order(&dir_of(&dir)?, id, json, out),
        ToolCmd::Account {
            id,
            dir,
            at_seq,
            json,
        } => account(&dir_of(&dir)?, id, at_seq, json, out),
        ToolCmd::Tail {
            dir,
            lines,
            follow,
            json,
        } => tail(&dir_of(&dir)?, lines, follow, json, out),
        ToolCmd::Seek {
            dir,
            seq,
            time,
            json,
        } => seek(&dir_of(&dir)?, seq, time, json, out),
        ToolCmd::Stats {
            dir,
            filter,
            by,
            json,
        } => stats(&dir_of(&dir)?, filter, by, json, out),
        ToolCmd::Diff { a, b, json } => {
            diff(&resolve_dir(Some(&a))?, &resolve_dir(Some(&b))?, json, out)
        }
        ToolCmd::Snapshot { which } => snapshot(which, out),
        ToolCmd::Prune { dir, dry_run, json } => prune(&dir_of(&dir)?, dry_run, json, out),
    }
}

/// The first sequence to read for a filter: refuses a range the journal does not hold.
fn range_start(dir: &Path, filter: &Filter) -> Result<Option<(u64, u64, u64)>, String> {
    let (from, to) = filter.seq_range();
    if let (Some(f), Some(t)) = (filter.from_seq, filter.to_seq) {
        if t < f {
            return Err(format!(
                "--to-seq {t} is before --from-seq {f}: the range holds no sequence (both \
                 are inclusive; give --to-seq at or after --from-seq)"
            ));
        }
    }
    if let (Some(f), Some(t)) = (filter.from_time, filter.to_time) {
        if t <= f {
            return Err(format!(
                "--to-time {} is not after --from-time {}: the interval holds no time \
                 (--from-time is inclusive, --to-time exclusive)",
                iso8601(t),
                iso8601(f)
            ));
        }
    }
    let (first, last) = seq_bounds(dir)?;
    if last < first {
        return Ok(None);
    }
    if filter.to_seq.is_some_and(|t| t < first) {
        return Err(format!(
            "--to-seq {to} is before the journal's first record {first} (earlier ones were \
             pruned after a snapshot): the journal no longer holds that range"
        ));
    }
    if filter.from_seq.is_some_and(|f| f < first) {
        return Err(format!(
            "--from-seq {from} is before the journal's first record {first} (earlier ones \
             were pruned after a snapshot); start at {first} or later"
        ));
    }
    if from > last {
        return Err(format!(
            "--from-seq {from} is past the journal's last record {last}"
        ));
    }
    Ok(Some((from.max(first), to.min(last), last)))
}

/// `export`: decoded records, filtered, in constant memory.
pub fn export(
    dir: &Path,
    mut filter: Filter,
    format: Format,
    out: &mut dyn Write,
) -> Result<(), String> {
    filter.check_types(&format::record_type_names())?;
    let Some((from, to, last)) = range_start(dir, &filter)? else {
        return Ok(());
    };
    let mut reader = Reader::open(dir).map_err(|e| e.to_string())?;
    reader.seek(from).map_err(|e| e.to_string())?;
    let progress = Progress::new("exporting", from, to);
    let mut w = LineWriter::new(format, false);
    let mut fields = Vec::with_capacity(16);
    let mut stopped = false;
    // Stops before reading past `to`: damage after the range is not the range's. At the
    // journal's end, what follows its last record is checked below.
    loop {
        if reader.seq_next() > to {
            stopped = to < last;
            break;
        }
        let Some(r) = reader.next().map_err(|e| e.to_string())? else {
            break;
        };
        progress.at(r.seq);
        if !filter.time_ok(r.timestamp_ns) {
            continue;
        }
        let body = decode(r.record_type, r.schema_version, r.payload);
        body_fields_into(&body, &mut fields);
        let (accounts, market) = subjects(&fields);
        let kind = body_type(&body);
        if !filter.item_ok(kind, accounts, market) {
            continue;
        }
        let at = At {
            seq: r.seq,
            timestamp_ns: r.timestamp_ns,
            epoch: r.epoch,
        };
        w.write(out, at, None, kind, &fields)?;
    }
    if !stopped && filter.to_seq.is_none_or(|t| reader.seq_next() <= t) {
        check_end(dir, reader.seq_next())?;
    }
    out.flush().map_err(|e| e.to_string())
}

/// Whether `ev` (produced by `body`) is about order `id`.
fn mentions_order(ev: &Event, body: &Body, id: u64) -> bool {
    match *ev {
        Event::Accepted { order_id, .. }
        | Event::Cancelled { order_id, .. }
        | Event::Replaced { order_id, .. } => order_id == id,
        Event::Trade {
            maker_order_id,
            taker_order_id,
            ..
        } => maker_order_id == id || taker_order_id == id,
        Event::Rejected { .. } => matches!(
            body,
            Body::Command(
                Command::Cancel {
                    order: OrderRef::Exchange(o),
                    ..
                } | Command::Replace {
                    order: OrderRef::Exchange(o),
                    ..
                }
            ) if *o == id
        ),
        _ => false,
    }
}

/// `events`: the engine's events over a range, by replay.
pub fn events(
    dir: &Path,
    mut filter: Filter,
    order: Option<u64>,
    format: Format,
    out: &mut dyn Write,
) -> Result<(), String> {
    filter.check_types(&EVENT_TYPE_NAMES)?;
    let Some((from, to, last)) = range_start(dir, &filter)? else {
        return Ok(());
    };
    let mut start = start_before(dir, from, |_| true)?;
    let mut w = LineWriter::new(format, true);
    let mut fields = Vec::with_capacity(16);
    replay::run(
        dir,
        &mut start,
        (to < last).then_some(to),
        "replaying",
        |_, step| {
            if step.seq < from || !filter.time_ok(step.timestamp_ns) {
                return Ok(true);
            }
            let command = body_type(&step.body);
            let at = At {
                seq: step.seq,
                timestamp_ns: step.timestamp_ns,
                epoch: step.epoch,
            };
            for ev in step.events {
                if order.is_some_and(|o| !mentions_order(ev, &step.body, o)) {
                    continue;
                }
                event_fields_into(ev, &mut fields);
                let (accounts, market) = subjects(&fields);
                let kind = event_type(ev);
                if filter.item_ok(kind, accounts, market) {
                    w.write(out, at, Some(command), kind, &fields)?;
                }
            }
            Ok(true)
        },
    )?;
    out.flush().map_err(|e| e.to_string())
}

/// Where an order stands.
enum OrderState {
    Unseen,
    Open { remaining: u64 },
    Filled,
    Cancelled { remaining: u64, reason: String },
}

/// `order ID`: the order's life, from the snapshot taken before it was placed.
pub fn order(dir: &Path, id: u64, json: bool, out: &mut dyn Write) -> Result<(), String> {
    let mut start = start_before(dir, u64::MAX, |ex| ex.next_order_id() <= id)?;
    let format = if json { Format::Jsonl } else { Format::Text };
    let (mut w_cmd, mut w_ev) = (
        LineWriter::new(format, false),
        LineWriter::new(format, true),
    );
    let mut state = OrderState::Unseen;
    let mut seq_state = start.seq;
    let seq_last = replay::run(dir, &mut start, None, "replaying", |_, step| {
        let mut related = step
            .events
            .iter()
            .filter(|e| mentions_order(e, &step.body, id))
            .peekable();
        if related.peek().is_none() {
            return Ok(true);
        }
        let at = At {
            seq: step.seq,
            timestamp_ns: step.timestamp_ns,
            epoch: step.epoch,
        };
        let command = body_type(&step.body);
        w_cmd.write(out, at, None, command, &body_fields(&step.body))?;
        for ev in related {
            w_ev.write(out, at, Some(command), event_type(ev), &event_fields(ev))?;
            let next = match *ev {
                Event::Accepted { qty, .. } => OrderState::Open { remaining: qty },
                Event::Replaced { qty, .. } => OrderState::Open { remaining: qty },
                Event::Trade {
                    maker_order_id,
                    maker_remaining,
                    taker_remaining,
                    ..
                } => {
                    let remaining = if maker_order_id == id {
                        maker_remaining
                    } else {
                        taker_remaining
                    };
                    if remaining == 0 {
                        OrderState::Filled
                    } else {
                        OrderState::Open { remaining }
                    }
                }
                Event::Cancelled {
                    remaining_qty,
                    reason,
                    ..
                } => OrderState::Cancelled {
                    remaining: remaining_qty,
                    reason: reason.name().to_string(),
                },
                // A later command naming the order (a rejected cancel) changes nothing.
                _ => continue,
            };
            state = next;
            seq_state = step.seq;
        }
        // To the journal's end: later commands may still name the order.
        Ok(true)
    })?;
    let (status, text) = match &state {
        OrderState::Unseen => {
            return Err(format!(
                "no order {id} in this journal (through sequence {seq_last} the engine \
                 assigned ids below {}); an order gets its id when it is accepted, so a \
                 rejected place has none: find it with `ringex journal events --type \
                 rejected --account ACCOUNT`",
                start.exchange.next_order_id()
            ))
        }
        OrderState::Open { remaining } => (
            serde_json::json!({"order_id": id, "status": "open", "remaining_qty": remaining, "at_seq": seq_last}),
            format!("order {id}: open, {remaining} lots remaining (journal read to sequence {seq_last})"),
        ),
        OrderState::Filled => (
            serde_json::json!({"order_id": id, "status": "filled", "at_seq": seq_state}),
            format!("order {id}: filled at sequence {seq_state}"),
        ),
        OrderState::Cancelled { remaining, reason } => (
            serde_json::json!({"order_id": id, "status": "cancelled", "reason": reason, "remaining_qty": remaining, "at_seq": seq_state}),
            format!("order {id}: cancelled ({reason}) at sequence {seq_state}, {remaining} lots unfilled"),
        ),
    };
    if json {
        json_line(out, &status)
    } else {
        emit(out, format!("{text}\n").as_bytes())
    }
}

/// `account ID`: balances, holds and open orders after a sequence.
pub fn account(
    dir: &Path,
    id: u32,
    at_seq: Option<u64>,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), String> {
    let (first, last) = seq_bounds(dir)?;
    let at = at_seq.unwrap_or(last);
    if at > last {
        return Err(format!(
            "--at-seq {at} is past the journal's last record {last}"
        ));
    }
    if at + 1 < first {
        return Err(format!(
            "--at-seq {at} is before the journal's first record {first}"
        ));
    }
    let mut start = start_before(dir, at + 1, |_| true)?;
    let mut ts = None;
    // To the journal's end (checked for damage after it) unless a sequence is asked for.
    replay::run(dir, &mut start, at_seq, "replaying", |_, step| {
        ts = Some(step.timestamp_ns);
        Ok(true)
    })?;
    let at = start.seq;
    if ts.is_none() && at >= first {
        // The state came whole from a snapshot: the time of its last record.
        let mut r = Reader::open(dir).map_err(|e| e.to_string())?;
        if r.seek(at).is_ok() {
            ts = r.next().ok().flatten().map(|r| r.timestamp_ns);
        }
    }
    let ex = &start.exchange;
    let Some(acc) = ex.account(id) else {
        return Err(format!(
            "account {id} does not exist at sequence {at} (created by a create_account \
             command: `ringex journal export --type create_account`)"
        ));
    };
    let mut replies = Vec::new();
    ex.query(&Query::Balances { account: id }, &mut replies);
    ex.query(
        &Query::OpenOrders {
            account: id,
            market: None,
        },
        &mut replies,
    );
    let asset = |a: u32| {
        ex.asset(a).map_or(("?".to_string(), 0), |x| {
            (x.symbol.as_str().to_string(), x.decimals)
        })
    };
    let market = |m: u32| {
        ex.market(m)
            .map_or("?".to_string(), |x| x.spec.symbol.as_str().to_string())
    };
    let mut balances = Vec::new();
    let mut orders = Vec::new();
    for r in &replies {
        match *r {
            QueryReply::Balance {
                asset: a,
                available,
                held,
                ..
            } => {
                let (symbol, decimals) = asset(a);
                balances.push(serde_json::json!({
                    "asset": a, "symbol": symbol, "decimals": decimals,
                    "available": decimal(available, decimals), "held": decimal(held, decimals),
                    "available_minor": available, "held_minor": held,
                }));
            }
            QueryReply::OpenOrder {
                order_id,
                market: m,
                client_order_id,
                side,
                price,
                qty,
                ..
            } => orders.push(serde_json::json!({
                "order_id": order_id, "market": m, "symbol": market(m),
                "client_order_id": client_order_id, "side": side.name(),
                "price_ticks": price, "remaining_lots": qty,
            })),
            _ => {}
        }
    }
    if json {
        return json_line(
            out,
            &serde_json::json!({
                "account": id, "at_seq": at, "time": ts.map(iso8601), "suspended": acc.suspended,
                "balances": balances, "open_orders": orders,
            }),
        );
    }
    let mut text = format!(
        "account {id} after sequence {at}{}{}\nbalances:\n",
        ts.map(|t| format!(" ({})", iso8601(t))).unwrap_or_default(),
        if acc.suspended { ", SUSPENDED" } else { "" }
    );
    if balances.is_empty() {
        text.push_str("  none\n");
    }
    for b in &balances {
        text.push_str(&format!(
            "  {} (asset {}): available {}, held {}\n",
            b["symbol"].as_str().unwrap_or("?"),
            b["asset"],
            b["available"].as_str().unwrap_or("?"),
            b["held"].as_str().unwrap_or("?"),
        ));
    }
    text.push_str(&format!("open orders: {}\n", orders.len()));
    for o in &orders {
        text.push_str(&format!(
            "  order {} {} (market {}): {} {} lots at {} ticks, client id {}\n",
            o["order_id"],
            o["symbol"].as_str().unwrap_or("?"),
            o["market"],
            o["side"].as_str().unwrap_or("?"),
            o["remaining_lots"],
            o["price_ticks"],
            o["client_order_id"],
        ));
    }
    emit(out, text.as_bytes())
}

/// `tail`: the last `n` records, then (with `follow`) every new one as it is written.
pub fn tail(
    dir: &Path,
    n: u64,
    follow: bool,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), String> {
    let (first, last) = seq_bounds(dir)?;
    let format = if json { Format::Jsonl } else { Format::Text };
    let mut w = LineWriter::new(format, false);
    // The first record to show; with nothing to show, the last record (skipped) anchors
    // the follower, for the journal may not hold the next sequence yet.
    let from = last.saturating_sub(n.saturating_sub(1)).max(first);
    let skip_through = if n == 0 { from.min(last) } else { 0 };
    let line = |r: &ringex_journal::Record<'_>,
                w: &mut LineWriter,
                out: &mut dyn Write|
     -> Result<(), String> {
        let body = decode(r.record_type, r.schema_version, r.payload);
        let at = At {
            seq: r.seq,
            timestamp_ns: r.timestamp_ns,
            epoch: r.epoch,
        };
        w.write(out, at, None, body_type(&body), &body_fields(&body))
    };
    let reader = Reader::open(dir).map_err(|e| e.to_string())?;
    if !follow {
        let mut reader = reader;
        if last < first {
            return Ok(());
        }
        reader.seek(from).map_err(|e| e.to_string())?;
        let mut stopped = false;
        while let Some(r) = reader.next().map_err(|e| e.to_string())? {
            if r.seq > last {
                stopped = true;
                break;
            }
            if r.seq > skip_through {
                line(&r, &mut w, out)?;
            }
        }
        if !stopped {
            check_end(dir, reader.seq_next())?;
        }
        return out.flush().map_err(|e| e.to_string());
    }
    drop(reader);
    // Following a live writer: frames read around the page cache (O_DIRECT), as a
    // standby's catch-up reads them; a mapped read racing the writer's direct writes could
    // keep seeing a stale page.
    let mut frames = ringex_journal::FrameReader::open(dir, from).map_err(|e| e.to_string())?;
    let mut batch = Vec::with_capacity(1 << 20);
    loop {
        let Some((_, count)) = frames
            .next_batch(&mut batch, 1 << 20, u64::MAX)
            .map_err(|e| e.to_string())?
        else {
            // Nothing new yet: look again shortly (a person is watching, not a machine).
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        let mut at = 0usize;
        for _ in 0..count {
            let len = u32::from_le_bytes(batch[at..at + 4].try_into().expect("4 bytes"));
            let size = ringex_journal::frame_size_bytes(len.into()) as usize;
            let h = ringex_journal::frame_header(&batch[at..at + size])?;
            if h.seq > skip_through {
                let payload_at = at + ringex_journal::FRAME_HEADER_SIZE;
                let r = ringex_journal::Record {
                    seq: h.seq,
                    epoch: h.epoch,
                    timestamp_ns: h.timestamp_ns,
                    record_type: h.record_type,
                    schema_version: h.schema_version,
                    chain_prev: h.chain_prev,
                    payload: &batch[payload_at..payload_at + h.payload_len as usize],
                };
                line(&r, &mut w, out)?;
            }
            at += size;
        }
        out.flush().map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe => format::OUTPUT_CLOSED.to_string(),
            _ => e.to_string(),
        })?;
    }
}

/// Where a record is: segment, offset, its frame's size, its time.
struct Found {
    seq: u64,
    segment: PathBuf,
    offset: u64,
    frame_bytes: u64,
    ts: u64,
    epoch: u32,
}

/// The first record from sequence `from` on that `hit` takes, and what stood between
/// `from` and it: a damaged stretch, or sequences no segment holds (a missing segment).
/// A record in such a stretch cannot be told apart from the one asked for, so the caller
/// refuses rather than answer with the next readable record.
fn find(
    dir: &Path,
    from: u64,
    hit: impl Fn(u64, u64) -> bool,
) -> Result<(Option<Found>, Option<String>), String> {
    let mut found = None;
    let mut trouble: Option<String> = None;
    let mut seq_expected = from;
    scan(dir, from, |item| match item {
        ScanItem::Record {
            segment,
            offset_bytes,
            header,
            ..
        } => {
            if header.seq != seq_expected && trouble.is_none() {
                trouble = Some(if header.seq > seq_expected {
                    format!(
                        "sequences {seq_expected}..={} are in no segment (a segment is \
                         missing before {})",
                        header.seq - 1,
                        segment.display()
                    )
                } else {
                    format!(
                        "segment {} at offset {offset_bytes} holds sequence {} where {} \
                         was expected",
                        segment.display(),
                        header.seq,
                        seq_expected
                    )
                });
            }
            seq_expected = header.seq + 1;
            if hit(header.seq, header.timestamp_ns) {
                found = Some(Found {
                    seq: header.seq,
                    segment: segment.to_path_buf(),
                    offset: offset_bytes,
                    frame_bytes: ringex_journal::frame_size_bytes(header.payload_len.into()),
                    ts: header.timestamp_ns,
                    epoch: header.epoch,
                });
                return false;
            }
            true
        }
        ScanItem::Damaged {
            segment,
            offset_bytes,
            reason,
            ..
        } => {
            if trouble.is_none() {
                trouble = Some(format!(
                    "segment {} at offset {offset_bytes} is damaged: {reason}",
                    segment.display()
                ));
            }
            true
        }
    })
    .map_err(|e| e.to_string())?;
    Ok((found, trouble))
}

/// `seek`: the segment and offset of a sequence, or of the first record at or after a
/// time.
pub fn seek(
    dir: &Path,
    seq: Option<u64>,
    time: Option<u64>,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), String> {
    let (first, last) = seq_bounds(dir)?;
    let found = match (seq, time) {
        (Some(s), None) => {
            if s < first || s > last {
                return Err(format!(
                    "sequence {s} is not in the journal, which holds {}",
                    if last < first {
                        "no records yet".to_string()
                    } else {
                        format!("{first}..={last}")
                    }
                ));
            }
            let (found, trouble) = find(dir, s, |seq, _| seq >= s)?;
            if found.as_ref().is_none_or(|f| f.seq != s) {
                return Err(format!(
                    "sequence {s} cannot be read: {}; `ringex journal verify --dir {}` \
                     says what a start would do about it, and `ringex journal dump --from \
                     {s} --dir {}` shows the records around it",
                    trouble.unwrap_or_else(|| "the journal holds no record with it".into()),
                    dir.display(),
                    dir.display()
                ));
            }
            found
        }
        (None, Some(t)) => {
            // The newest segment whose first record is not after `t`, then its records.
            let mut from = first;
            for seg in list_segments(dir).map_err(|e| e.to_string())? {
                let mut r = Reader::open(dir).map_err(|e| e.to_string())?;
                if r.seek(seg.base_seq).is_err() {
                    continue;
                }
                match r.next() {
                    Ok(Some(rec)) if rec.timestamp_ns <= t => from = seg.base_seq,
                    _ => break,
                }
            }
            let (found, trouble) = find(dir, from, |_, ts| ts >= t)?;
            if let (Some(why), Some(_)) = (trouble, &found) {
                return Err(format!(
                    "the records before the first one written at or after {} ({t} ns) \
                     that can be read{} are not all readable: {why}; the record asked \
                     for may be among them. `ringex journal verify --dir {}` says where \
                     the journal is damaged",
                    iso8601(t),
                    found
                        .as_ref()
                        .map_or(String::new(), |f| format!(" (sequence {})", f.seq)),
                    dir.display()
                ));
            }
            found
        }
        _ => return Err("give one of --seq N or --time T".into()),
    };
    let Some(f) = found else {
        return Err(match time {
            Some(t) => format!(
                "no record written at or after {} ({t} ns): the journal's records end at \
                 sequence {last}",
                iso8601(t)
            ),
            None => "the record is in a damaged stretch of the journal; see `ringex journal \
                     verify`"
                .into(),
        });
    };
    if json {
        return json_line(
            out,
            &serde_json::json!({
                "seq": f.seq, "segment": f.segment.display().to_string(), "offset_bytes": f.offset,
                "frame_bytes": f.frame_bytes, "time": iso8601(f.ts), "ts_ns": f.ts, "epoch": f.epoch,
            }),
        );
    }
    emit(
        out,
        format!(
            "sequence {}: segment {} at offset {} ({} bytes), written {} (ts={}), epoch {}\n",
            f.seq,
            f.segment.display(),
            f.offset,
            f.frame_bytes,
            iso8601(f.ts),
            f.ts,
            f.epoch
        )
        .as_bytes(),
    )
}

#[derive(Default, Clone, Copy)]
struct Tally {
    records: u64,
    bytes: u64,
}

/// `stats`: counts, bytes, rates, the time span; grouped by type, minute or market.
pub fn stats(
    dir: &Path,
    mut filter: Filter,
    by: StatsBy,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), String> {
    filter.check_types(&format::record_type_names())?;
    let mut total = Tally::default();
    let mut groups: BTreeMap<(u64, String), Tally> = BTreeMap::new();
    let mut fields = Vec::with_capacity(16);
    let (mut seq_first, mut seq_last, mut ts_first, mut ts_last) = (0u64, 0u64, None, 0u64);
    if let Some((from, to, last)) = range_start(dir, &filter)? {
        let mut reader = Reader::open(dir).map_err(|e| e.to_string())?;
        reader.seek(from).map_err(|e| e.to_string())?;
        let progress = Progress::new("counting", from, to);
        let mut stopped = false;
        // Stops before reading past `to`: damage after the range is not the range's. At
        // the journal's end, what follows its last record is checked below.
        loop {
            if reader.seq_next() > to {
                stopped = to < last;
                break;
            }
            let Some(r) = reader.next().map_err(|e| e.to_string())? else {
                break;
            };
            progress.at(r.seq);
            if !filter.time_ok(r.timestamp_ns) {
                continue;
            }
            let body = decode(r.record_type, r.schema_version, r.payload);
            let kind = body_type(&body);
            body_fields_into(&body, &mut fields);
            let (accounts, market) = subjects(&fields);
            if !filter.item_ok(kind, accounts, market) {
                continue;
            }
            let bytes = ringex_journal::frame_size_bytes(r.payload.len() as u64);
            let key = match by {
                StatsBy::Type => (0, kind.to_string()),
                StatsBy::Minute => {
                    let minute = r.timestamp_ns / 60_000_000_000;
                    (minute, String::new())
                }
                StatsBy::Market => (market.unwrap_or(u64::MAX), String::new()),
            };
            let g = groups.entry(key).or_default();
            g.records += 1;
            g.bytes += bytes;
            total.records += 1;
            total.bytes += bytes;
            if seq_first == 0 {
                seq_first = r.seq;
            }
            seq_last = r.seq;
            ts_first.get_or_insert(r.timestamp_ns);
            ts_last = r.timestamp_ns;
        }
        if !stopped && filter.to_seq.is_none_or(|t| reader.seq_next() <= t) {
            check_end(dir, reader.seq_next())?;
        }
    }
    let span_ns = ts_last.saturating_sub(ts_first.unwrap_or(ts_last));
    let per_s = |n: u64| {
        if span_ns == 0 {
            0.0
        } else {
            n as f64 * 1e9 / span_ns as f64
        }
    };
    let label = |k: &(u64, String)| match by {
        StatsBy::Type => k.1.clone(),
        StatsBy::Minute => iso8601(k.0 * 60_000_000_000)[..16].to_string() + "Z",
        StatsBy::Market if k.0 == u64::MAX => "none".to_string(),
        StatsBy::Market => format!("market {}", k.0),
    };
    if json {
        let groups: Vec<_> = groups
            .iter()
            .map(|(k, t)| serde_json::json!({"group": label(k), "records": t.records, "bytes": t.bytes}))
            .collect();
        return json_line(
            out,
            &serde_json::json!({
                "records": total.records, "bytes": total.bytes,
                "seq_first": seq_first, "seq_last": seq_last,
                "time_first": ts_first.map(iso8601), "time_last": ts_first.map(|_| iso8601(ts_last)),
                "span_seconds": span_ns as f64 / 1e9,
                "records_per_second": per_s(total.records), "bytes_per_second": per_s(total.bytes),
                "by": match by { StatsBy::Type => "type", StatsBy::Minute => "minute", StatsBy::Market => "market" },
                "groups": groups,
            }),
        );
    }
    let mut text = format!("{} records, {} bytes", total.records, total.bytes);
    if let Some(t0) = ts_first {
        text.push_str(&format!(
            ", sequences {seq_first}..={seq_last}, written {} .. {} ({:.3} s, {:.1} records/s, \
             {:.1} bytes/s)",
            iso8601(t0),
            iso8601(ts_last),
            span_ns as f64 / 1e9,
            per_s(total.records),
            per_s(total.bytes)
        ));
    }
    text.push('\n');
    for (k, t) in &groups {
        text.push_str(&format!(
            "  {:<24} {:>12} records {:>14} bytes\n",
            label(k),
            t.records,
            t.bytes
        ));
    }
    emit(out, text.as_bytes())
}

/// `diff`: the first sequence where two journals' records differ. Records at the same
/// sequence are the same record when everything the chain value covers agrees (the chain
/// value before it, the header, the payload).
pub fn diff(a: &Path, b: &Path, json: bool, out: &mut dyn Write) -> Result<(), String> {
    let (first_a, last_a) = seq_bounds(a)?;
    let (first_b, last_b) = seq_bounds(b)?;
    let from = first_a.max(first_b);
    let to = last_a.min(last_b);
    let mut agree_through = from.saturating_sub(1);
    let mut difference: Option<(u64, String, String)> = None;
    if from <= to {
        let mut ra = Reader::open(a).map_err(|e| e.to_string())?;
        let mut rb = Reader::open(b).map_err(|e| e.to_string())?;
        ra.seek(from).map_err(|e| format!("{}: {e}", a.display()))?;
        rb.seek(from).map_err(|e| format!("{}: {e}", b.display()))?;
        let progress = Progress::new("comparing", from, to);
        for seq in from..=to {
            progress.at(seq);
            let x = ra.next().map_err(|e| format!("{}: {e}", a.display()))?;
            let y = rb.next().map_err(|e| format!("{}: {e}", b.display()))?;
            let (Some(x), Some(y)) = (x, y) else { break };
            if x != y {
                let show = |r: &ringex_journal::Record<'_>| {
                    let body = decode(r.record_type, r.schema_version, r.payload);
                    let mut s = format!(
                        "{} ts={} epoch={} chain_before={:016x} {}",
                        iso8601(r.timestamp_ns),
                        r.timestamp_ns,
                        r.epoch,
                        r.chain_prev,
                        body_type(&body)
                    );
                    for (k, v) in body_fields(&body) {
                        let v = match v {
                            format::V::U(x) => x.to_string(),
                            format::V::I(x) => x.to_string(),
                            format::V::S(x) => x,
                            format::V::N(x) => x.to_string(),
                            format::V::B(x) => x.to_string(),
                        };
                        s.push_str(&format!(" {k}={v}"));
                    }
                    s
                };
                difference = Some((seq, show(&x), show(&y)));
                break;
            }
            agree_through = seq;
        }
    }
    let (an, bn) = (a.display().to_string(), b.display().to_string());
    if json {
        json_line(
            out,
            &serde_json::json!({
                "a": an, "b": bn, "a_seqs": [first_a, last_a], "b_seqs": [first_b, last_b],
                "compared_from": from, "agree_through": agree_through,
                "first_difference": difference.as_ref().map(|d| d.0),
                "a_record": difference.as_ref().map(|d| d.1.clone()),
                "b_record": difference.as_ref().map(|d| d.2.clone()),
            }),
        )?;
    }
    let mut text = String::new();
    if from > to {
        text.push_str(&format!(
            "the journals share no sequence: {an} holds {first_a}..={last_a}, {bn} holds \
             {first_b}..={last_b}\n"
        ));
    } else if agree_through >= from {
        text.push_str(&format!(
            "the journals agree on sequences {from}..={agree_through}\n"
        ));
    }
    match &difference {
        None if from <= to => {
            // A journal being written grows between the reads of the two ends: which one is
            // behind is then a matter of when each was read, not of the journals.
            let live: Vec<String> = [(&an, a), (&bn, b)]
                .into_iter()
                .filter_map(|(n, d)| {
                    ringex_journal::lock_holder(d).map(|w| format!("{n} (writer {w})"))
                })
                .collect();
            let note = match last_a.cmp(&last_b) {
                std::cmp::Ordering::Equal => "both end there".to_string(),
                _ if !live.is_empty() => format!(
                    "{an} ended at {last_a} and {bn} at {last_b} when each was read, but {} {} \
                     being written, so the ends were read at different moments and which \
                     journal is behind is not judged (compare them again once stopped, or \
                     use the primary's `repl=connected(lag=N,...)` log line)",
                    live.join(" and "),
                    if live.len() == 1 { "it is" } else { "they are" }
                ),
                std::cmp::Ordering::Greater => format!(
                    "{an} goes on to {last_a}: {bn} is {} record(s) behind, not divergent",
                    last_a - last_b
                ),
                std::cmp::Ordering::Less => format!(
                    "{bn} goes on to {last_b}: {an} is {} record(s) behind, not divergent",
                    last_b - last_a
                ),
            };
            text.push_str(&format!("no difference; {note}\n"));
        }
        None => {}
        Some((seq, x, y)) => {
            text.push_str(&format!(
                "FIRST DIFFERENCE at sequence {seq}:\n  {an}: {x}\n  {bn}: {y}\n"
            ));
        }
    }
    if !json {
        emit(out, text.as_bytes())?;
    }
    match difference {
        Some((seq, _, _)) => Err(format!(
            "the journals differ from sequence {seq} on{}; the node whose record is not the \
             primary's must not serve: re-seed it from the primary (a standby resynchronises \
             on reconnect and moves a divergent journal into its quarantine)",
            if seq == from && from > 1 {
                " (or earlier: the comparison starts where both journals hold records)"
            } else {
                ""
            }
        )),
        None => Ok(()),
    }
}

fn snapshot(cmd: SnapshotCmd, out: &mut dyn Write) -> Result<(), String> {
    match cmd {
        SnapshotCmd::List { dir, json } => {
            let dir = resolve_snapshots_dir(dir.as_deref())?;
            let entries = snapshot_list(&dir).map_err(|e| e.to_string())?;
            let mut text = format!("snapshots in {}: {}\n", dir.display(), entries.len());
            let mut rows = Vec::new();
            for e in &entries {
                let size = std::fs::metadata(&e.path).map_or(0, |m| m.len());
                match &e.meta {
                    Ok(m) => {
                        text.push_str(&format!(
                            "  seq {}: {} bytes, epoch {}, chain {:016x}, checksums hold ({})\n",
                            e.seq,
                            size,
                            m.epoch,
                            m.chain,
                            e.path.display()
                        ));
                        rows.push(serde_json::json!({"seq": e.seq, "path": e.path.display().to_string(), "size_bytes": size, "epoch": m.epoch, "chain": format!("{:016x}", m.chain), "ok": true}));
                    }
                    Err(why) => {
                        text.push_str(&format!(
                            "  seq {}: {size} bytes, DAMAGED: {why} ({})\n",
                            e.seq,
                            e.path.display()
                        ));
                        rows.push(serde_json::json!({"seq": e.seq, "path": e.path.display().to_string(), "size_bytes": size, "ok": false, "problem": why}));
                    }
                }
            }
            if json {
                json_line(
                    out,
                    &serde_json::json!({"dir": dir.display().to_string(), "snapshots": rows}),
                )
            } else {
                emit(out, text.as_bytes())
            }
        }
        SnapshotCmd::Verify { dir, json } => {
            let dir = resolve_snapshots_dir(dir.as_deref())?;
            let journal = dir
                .parent()
                .map(|p| p.join("journal"))
                .filter(|j| j.is_dir());
            let entries = snapshot_list(&dir).map_err(|e| e.to_string())?;
            if entries.is_empty() {
                return Err(format!("{} holds no snapshots", dir.display()));
            }
            let mut text = String::new();
            let mut rows = Vec::new();
            let mut bad = Vec::new();
            for e in &entries {
                let verdict = e.meta.clone().and_then(|m| {
                    let ex = replay::restore(&e.path, &m)?;
                    ex.verify_invariants()
                        .map_err(|why| format!("the restored state breaks an invariant: {why}"))?;
                    let chain = match &journal {
                        Some(j) => ringex_journal::chain_after(j, m.seq).ok().flatten(),
                        None => None,
                    };
                    Ok(match chain {
                        Some(c) if c != m.chain => {
                            return Err(format!(
                                "its chain value {:016x} is not the journal's {c:016x} at \
                                 sequence {}: it comes from another history",
                                m.chain, m.seq
                            ))
                        }
                        Some(_) => "ok, and the journal's chain value agrees",
                        None => "ok (the journal no longer holds its sequence to compare)",
                    })
                });
                match &verdict {
                    Ok(what) => text.push_str(&format!("  seq {}: {what}\n", e.seq)),
                    Err(why) => {
                        text.push_str(&format!("  seq {}: DAMAGED: {why}\n", e.seq));
                        bad.push(e.seq);
                    }
                }
                rows.push(serde_json::json!({"seq": e.seq, "path": e.path.display().to_string(), "ok": verdict.is_ok(), "detail": match &verdict { Ok(what) => what.to_string(), Err(why) => why.clone() }}));
            }
            if json {
                json_line(
                    out,
                    &serde_json::json!({"dir": dir.display().to_string(), "snapshots": rows}),
                )?;
            } else {
                emit(
                    out,
                    format!("snapshots in {}:\n{text}", dir.display()).as_bytes(),
                )?;
            }
            if bad.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "{} of {} snapshot(s) unusable (sequences {bad:?}): a start passes over \
                     them to an older snapshot or a full replay; move them out of {} once \
                     kept for inspection",
                    bad.len(),
                    entries.len(),
                    dir.display()
                ))
            }
        }
        SnapshotCmd::Describe { dir, seq, json } => {
            let dir = resolve_snapshots_dir(dir.as_deref())?;
            let entries = snapshot_list(&dir).map_err(|e| e.to_string())?;
            let entry = entries
                .iter()
                .rev()
                .find(|e| seq.map_or(e.meta.is_ok(), |s| e.seq == s))
                .ok_or_else(|| match seq {
                    Some(s) => format!(
                        "no snapshot at sequence {s} in {}; `ringex journal snapshot list` \
                         shows them",
                        dir.display()
                    ),
                    None => format!("no usable snapshot in {}", dir.display()),
                })?;
            let meta = entry
                .meta
                .clone()
                .map_err(|why| format!("snapshot {} is damaged: {why}", entry.path.display()))?;
            let ex = replay::restore(&entry.path, &meta)
                .map_err(|why| format!("snapshot {} is unusable: {why}", entry.path.display()))?;
            let passed_over: Vec<String> = entries
                .iter()
                .filter(|e| e.seq > entry.seq)
                .map(|e| e.seq.to_string())
                .collect();
            if !passed_over.is_empty() {
                // Not the newest file: say why, where an operator reads it.
                eprintln!(
                    "ringex journal: the newer snapshot(s) at sequence {} are damaged; this \
                     is the newest usable one (`ringex journal snapshot verify` says what is \
                     wrong with them)",
                    passed_over.join(", ")
                );
            }
            describe_state(&entry.path, &meta, &ex, json, out)
        }
    }
}

fn describe_state(
    path: &Path,
    meta: &ringex_journal::SnapshotMeta,
    ex: &Exchange,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), String> {
    let mut markets = Vec::new();
    let mut assets = BTreeMap::new();
    for id in ex.market_ids() {
        let m = ex.market(id).expect("a listed market exists");
        for a in [m.spec.base, m.spec.quote] {
            if let Some(x) = ex.asset(a) {
                assets.insert(a, (x.symbol.as_str().to_string(), x.decimals, ex.supply(a)));
            }
        }
        markets.push(serde_json::json!({
            "market": id, "symbol": m.spec.symbol.as_str(), "status": m.status.name(),
            "resting_orders": m.book.order_count(), "trades": m.trade_count, "volume_lots": m.volume_lots,
            "reference_price": m.reference_price,
            "max_open_orders_per_account": m.limits.per_account,
            "max_open_orders": m.limits.per_market,
        }));
    }
    let assets: Vec<_> = assets
        .iter()
        .map(|(id, (s, d, supply))| serde_json::json!({"asset": id, "symbol": s, "decimals": d, "supply": decimal(*supply, *d)}))
        .collect();
    let v = serde_json::json!({
        "path": path.display().to_string(), "seq": meta.seq, "epoch": meta.epoch,
        "chain": format!("{:016x}", meta.chain), "payload_bytes": meta.payload_size_bytes,
        "next_order_id": ex.next_order_id(), "markets": markets, "assets": assets,
    });
    if json {
        return json_line(out, &v);
    }
    let mut text = format!(
        "snapshot {}: state after sequence {}, epoch {}, chain {:016x}, {} payload bytes, \
         next order id {}\nmarkets:\n",
        path.display(),
        meta.seq,
        meta.epoch,
        meta.chain,
        meta.payload_size_bytes,
        ex.next_order_id()
    );
    for m in &markets {
        text.push_str(&format!(
            "  {} {}: {}, {} resting orders, {} trades, {} lots traded, reference price {}, \
             open-order caps {} per account and {} in the book\n",
            m["market"],
            m["symbol"].as_str().unwrap_or("?"),
            m["status"].as_str().unwrap_or("?"),
            m["resting_orders"],
            m["trades"],
            m["volume_lots"],
            m["reference_price"],
            m["max_open_orders_per_account"],
            m["max_open_orders"]
        ));
    }
    text.push_str("assets (of listed markets):\n");
    for a in &assets {
        text.push_str(&format!(
            "  {} {}: supply {}\n",
            a["asset"],
            a["symbol"].as_str().unwrap_or("?"),
            a["supply"].as_str().unwrap_or("?")
        ));
    }
    emit(out, text.as_bytes())
}

/// `prune --dry-run`: the segments the node's pruning would remove now, by its rule
/// (segments wholly before the oldest snapshot, never the newest segment).
pub fn prune(dir: &Path, dry_run: bool, json: bool, out: &mut dyn Write) -> Result<(), String> {
    if !dry_run {
        return Err(
            "prune only reports (--dry-run): the running node prunes its own journal after \
             each snapshot (journal.prune_after_snapshot), and removing segments under it is \
             not safe"
                .into(),
        );
    }
    let snapshots = super::snapshots_dir(dir);
    let oldest = match &snapshots {
        Some(d) => snapshot_list(d)
            .map_err(|e| e.to_string())?
            .first()
            .map(|e| e.seq),
        None => None,
    };
    let segments = list_segments(dir).map_err(|e| e.to_string())?;
    let mut gone = Vec::new();
    if let Some(snap) = oldest {
        let keep_from = snap + 1;
        for pair in segments.windows(2) {
            if pair[1].base_seq > keep_from {
                break;
            }
            let size = std::fs::metadata(&pair[0].path).map_or(0, |m| m.len());
            gone.push((pair[0].clone(), pair[1].base_seq - 1, size));
        }
    }
    let bytes: u64 = gone.iter().map(|g| g.2).sum();
    if json {
        let rows: Vec<_> = gone
            .iter()
            .map(|(s, last, size)| serde_json::json!({"path": s.path.display().to_string(), "seq_first": s.base_seq, "seq_last": last, "size_bytes": size}))
            .collect();
        return json_line(
            out,
            &serde_json::json!({"dry_run": true, "oldest_snapshot": oldest, "segments": rows, "bytes": bytes}),
        );
    }
    let mut text = match oldest {
        None => "no snapshot beside this journal: every record is needed for a replay, \
                 nothing would be pruned\n"
            .to_string(),
        Some(s) => format!(
            "oldest snapshot at sequence {s}: pruning would remove {} segment(s), {bytes} \
             bytes (a replication standby still catching up can hold back more)\n",
            gone.len()
        ),
    };
    for (s, last, size) in &gone {
        text.push_str(&format!(
            "  {} (sequences {}..={last}, {size} bytes)\n",
            s.path.display(),
            s.base_seq
        ));
    }
    emit(out, text.as_bytes())
}

/// `verify --deep`'s second pass: every record through the checked reader (length, CRC,
/// sequence, chain re-derived) and every payload decoded. Returns the records read.
/// The error for record `seq` that passes its checksum but does not decode.
pub fn undecodable(dir: &Path, seq: u64, why: &str) -> String {
    format!(
        "record {seq} passes its checksum but does not decode: {why}; the node would stop \
         replaying there; inspect it with `ringex journal dump --from {seq} --dir {}`",
        dir.display()
    )
}

pub fn deep_check(dir: &Path) -> Result<u64, String> {
    let (first, last) = seq_bounds(dir)?;
    if last < first {
        return Ok(0);
    }
    let mut reader = Reader::open(dir).map_err(|e| e.to_string())?;
    reader.seek(first).map_err(|e| e.to_string())?;
    let progress = Progress::new("decoding", first, last);
    let mut n = 0;
    while let Some(r) = reader.next().map_err(|e| e.to_string())? {
        progress.at(r.seq);
        if let Some(why) = format::decode_error(r.record_type, r.schema_version, r.payload) {
            return Err(undecodable(dir, r.seq, &why));
        }
        n += 1;
    }
    check_end(dir, reader.seq_next())?;
    Ok(n)
}
