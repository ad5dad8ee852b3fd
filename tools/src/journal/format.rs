//! What the journal tools print: records and events as named fields, in text, JSON lines
//! or CSV; times in ISO 8601 UTC beside the raw nanoseconds; amounts as decimals computed
//! from integers. Nothing here prints a Rust debug representation.

use std::io::Write;

use ringex_engine::codec::{decode_command, CODEC_VERSION};
use ringex_engine::{Command, CommandKind, Event, OrderRef};

/// Record types the node writes (the node's `RECORD_*` constants; a test in the node
/// checks that they agree).
pub const RECORD_COMMAND: u16 = 1;
pub const RECORD_EPOCH: u16 = 2;
pub const RECORD_CHECKPOINT: u16 = 3;

/// Stands for a closed output (`ringex journal export | head`): the CLI stops quietly.
pub const OUTPUT_CLOSED: &str = "output closed";

/// Writes `bytes`, turning an I/O error into the tools' message.
pub fn emit(out: &mut dyn Write, bytes: &[u8]) -> Result<(), String> {
    out.write_all(bytes).map_err(|e| match e.kind() {
        std::io::ErrorKind::BrokenPipe => OUTPUT_CLOSED.to_string(),
        _ => format!("cannot write the output: {e}"),
    })
}

/// A journal record decoded.
#[derive(Clone, Copy)]
pub enum Body {
    Command(Command),
    /// A promotion: `node_id` is primary from `epoch` on.
    Epoch {
        epoch: u32,
        node_id: u32,
    },
    /// The primary's state hash after `seq` (one every `every` commands).
    Checkpoint {
        seq: u64,
        every: u64,
        hash: u128,
    },
    /// Bytes that pass the frame checks but are no record this version knows.
    Undecodable(&'static str),
}

/// Decodes a record's payload (never panics: anything unknown is `Undecodable`).
pub fn decode(record_type: u16, schema_version: u16, payload: &[u8]) -> Body {
    let u64_at = |i: usize| u64::from_le_bytes(payload[i..i + 8].try_into().expect("8 bytes"));
    let u32_at = |i: usize| u32::from_le_bytes(payload[i..i + 4].try_into().expect("4 bytes"));
    match record_type {
        RECORD_COMMAND => {
            if schema_version != u16::from(CODEC_VERSION) {
                return Body::Undecodable("unsupported command schema version");
            }
            match decode_command(payload) {
                Ok((cmd, used)) if used == payload.len() => Body::Command(cmd),
                Ok(_) => Body::Undecodable("trailing bytes after the command"),
                Err(_) => Body::Undecodable("the command does not decode"),
            }
        }
        RECORD_CHECKPOINT if schema_version == 1 && payload.len() == 32 => Body::Checkpoint {
            seq: u64_at(0),
            every: u64_at(8),
            hash: u128::from_le_bytes(payload[16..32].try_into().expect("16 bytes")),
        },
        RECORD_EPOCH if schema_version == 1 && payload.len() == 8 => Body::Epoch {
            epoch: u32_at(0),
            node_id: u32_at(4),
        },
        RECORD_CHECKPOINT => Body::Undecodable("malformed checkpoint record"),
        RECORD_EPOCH => Body::Undecodable("malformed epoch record"),
        _ => Body::Undecodable("unknown record type"),
    }
}

/// Why a record did not decode, with the decoder's own words (for `verify --deep`).
pub fn decode_error(record_type: u16, schema_version: u16, payload: &[u8]) -> Option<String> {
    if let Body::Undecodable(why) = decode(record_type, schema_version, payload) {
        let detail = match (record_type, decode_command(payload)) {
            (RECORD_COMMAND, Err(e)) => format!(": {e}"),
            _ => String::new(),
        };
        return Some(format!(
            "{why}{detail} (record type {record_type}, schema {schema_version}, {} bytes)",
            payload.len()
        ));
    }
    None
}

/// A field's value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum V {
    U(u64),
    I(i64),
    S(String),
    /// A name: a plain word, no escaping needed.
    N(&'static str),
    B(bool),
}

impl V {
    fn text(&self, out: &mut Vec<u8>) {
        match self {
            V::U(v) => push_u64(out, *v),
            V::I(v) => {
                if *v < 0 {
                    out.put_c(b'-');
                }
                push_u64(out, v.unsigned_abs());
            }
            V::S(v) => out.put(v),
            V::N(v) => out.put(v),
            V::B(v) => out.put(if *v { "true" } else { "false" }),
        }
    }

    fn json(&self, out: &mut Vec<u8>) {
        match self {
            V::S(s) => out.put(&serde_json::to_string(s).expect("a string serialises")),
            V::N(s) => {
                out.put_c(b'"');
                out.put(s);
                out.put_c(b'"');
            }
            other => other.text(out),
        }
    }
}

pub type Fields = Vec<(&'static str, V)>;

/// Appending text to a byte buffer (a line is ASCII but for strings from the journal,
/// which are UTF-8): no UTF-8 check per piece.
trait Put {
    fn put(&mut self, s: &str);
    fn put_c(&mut self, c: u8);
}

impl Put for Vec<u8> {
    #[inline]
    fn put(&mut self, s: &str) {
        self.extend_from_slice(s.as_bytes());
    }
    #[inline]
    fn put_c(&mut self, c: u8) {
        self.push(c);
    }
}

/// `v` in decimal, appended (the streaming verbs write millions of numbers).
pub fn push_u64(out: &mut Vec<u8>, v: u64) {
    push_digits(out, v, 1);
}

/// `v` in decimal with at least `width` digits (zeros in front), appended.
fn push_digits(out: &mut Vec<u8>, mut v: u64, width: usize) {
    let mut buf = [b'0'; 20];
    let mut i = buf.len();
    // Two digits per division while four or more are left, from a table of the pairs.
    while v >= 1000 {
        let pair = (v % 100) as usize * 2;
        v /= 100;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
    }
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let start = i.min(buf.len() - width.min(buf.len()));
    out.extend_from_slice(&buf[start..]);
}

/// "00" to "99", back to back.
const DIGIT_PAIRS: &[u8; 200] = b"\
    0001020304050607080910111213141516171819\
    2021222324252627282930313233343536373839\
    4041424344454647484950515253545556575859\
    6061626364656667686970717273747576777879\
    8081828384858687888990919293949596979899";

/// An engine enum's snake_case name, as the tools print it.
pub trait Named {
    fn name(self) -> &'static str;
}

impl Named for ringex_engine::Side {
    fn name(self) -> &'static str {
        match self {
            Self::Buy => "buy",
            Self::Sell => "sell",
        }
    }
}

impl Named for ringex_engine::OrderKind {
    fn name(self) -> &'static str {
        match self {
            Self::Limit => "limit",
            Self::Market => "market",
        }
    }
}

impl Named for ringex_engine::TimeInForce {
    fn name(self) -> &'static str {
        match self {
            Self::Gtc => "gtc",
            Self::Ioc => "ioc",
            Self::Fok => "fok",
            Self::PostOnly => "post_only",
        }
    }
}

impl Named for ringex_engine::StpMode {
    fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::CancelNewest => "cancel_newest",
            Self::CancelOldest => "cancel_oldest",
            Self::CancelBoth => "cancel_both",
        }
    }
}

impl Named for ringex_engine::MarketStatus {
    fn name(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Halted => "halted",
            Self::CancelOnly => "cancel_only",
            Self::Closed => "closed",
        }
    }
}

impl Named for ringex_engine::CancelReason {
    fn name(self) -> &'static str {
        match self {
            Self::Requested => "requested",
            Self::ImmediateOrCancel => "immediate_or_cancel",
            Self::FillOrKill => "fill_or_kill",
            Self::SelfTrade => "self_trade",
            Self::CancelAll => "cancel_all",
            Self::MarketStatus => "market_status",
            Self::BudgetDone => "budget_done",
        }
    }
}

fn name(v: impl Named) -> V {
    V::N(v.name())
}

/// A command kind's name: `place`, `cancel_all`, `create_market`...
pub fn kind_name(kind: CommandKind) -> &'static str {
    use CommandKind::*;
    match kind {
        Place => "place",
        Cancel => "cancel",
        Replace => "replace",
        CancelAll => "cancel_all",
        CreateAsset => "create_asset",
        CreateMarket => "create_market",
        CreateAccount => "create_account",
        Deposit => "deposit",
        Withdraw => "withdraw",
        SetMarketFees => "set_market_fees",
        SetFeeTier => "set_fee_tier",
        SetMarketStatus => "set_market_status",
        SuspendAccount => "suspend_account",
        ResumeAccount => "resume_account",
        AddApiKey => "add_api_key",
        RevokeApiKey => "revoke_api_key",
        SetMarketLimits => "set_market_limits",
    }
}

/// Every record type name `--type` accepts for commands.
pub fn record_type_names() -> Vec<&'static str> {
    let mut v: Vec<_> = CommandKind::ALL.iter().map(|k| kind_name(*k)).collect();
    v.extend(["epoch", "checkpoint", "undecodable"]);
    v
}

/// Every event type name `--type` accepts for events.
pub const EVENT_TYPE_NAMES: [&str; 10] = [
    "accepted",
    "trade",
    "cancelled",
    "replaced",
    "level",
    "rejected",
    "funds",
    "market_status",
    "cancel_all_done",
    "admin_done",
];

/// The record's type name.
pub fn body_type(body: &Body) -> &'static str {
    match body {
        Body::Command(c) => kind_name(c.kind()),
        Body::Epoch { .. } => "epoch",
        Body::Checkpoint { .. } => "checkpoint",
        Body::Undecodable(_) => "undecodable",
    }
}

fn order_ref(fields: &mut Fields, r: OrderRef) {
    match r {
        OrderRef::Exchange(id) => fields.push(("order_id", V::U(id))),
        OrderRef::Client(id) => fields.push(("client_order_id", V::U(id))),
    }
}

/// A record's fields (an API key's secret hash is key-equivalent: never shown).
pub fn body_fields(body: &Body) -> Fields {
    let mut f = Vec::with_capacity(12);
    body_fields_into(body, &mut f);
    f
}

/// [`body_fields`] into `f` (cleared first): no allocation once `f` has grown.
pub fn body_fields_into(body: &Body, f: &mut Fields) {
    use V::*;
    f.clear();
    match *body {
        Body::Command(cmd) => match cmd {
            Command::Place(p) => {
                f.extend([
                    ("account", U(p.account.into())),
                    ("market", U(p.market.into())),
                    ("client_order_id", U(p.client_order_id)),
                    ("side", name(p.side)),
                    ("order_kind", name(p.kind)),
                    ("tif", name(p.tif)),
                    ("price", I(p.price)),
                    ("qty", U(p.qty)),
                ]);
                if p.quote_budget != 0 {
                    f.push(("quote_budget", I(p.quote_budget)));
                }
                f.push(("stp", name(p.stp)));
            }
            Command::Cancel {
                account,
                market,
                order,
            } => {
                f.extend([("account", U(account.into())), ("market", U(market.into()))]);
                order_ref(f, order);
            }
            Command::Replace {
                account,
                market,
                order,
                price,
                qty,
            } => {
                f.extend([("account", U(account.into())), ("market", U(market.into()))]);
                order_ref(f, order);
                f.extend([("price", I(price)), ("qty", U(qty))]);
            }
            Command::CancelAll { account, market } => {
                f.push(("account", U(account.into())));
                match market {
                    Some(m) => f.push(("market", U(m.into()))),
                    None => f.push(("markets", N("all"))),
                }
            }
            Command::CreateAsset {
                asset,
                symbol,
                decimals,
            } => f.extend([
                ("asset", U(asset.into())),
                ("symbol", S(symbol.as_str().into())),
                ("decimals", U(decimals.into())),
            ]),
            Command::CreateMarket(m) => f.extend([
                ("market", U(m.market.into())),
                ("symbol", S(m.symbol.as_str().into())),
                ("base", U(m.base.into())),
                ("quote", U(m.quote.into())),
                ("tick_size", I(m.tick_size)),
                ("lot_size", I(m.lot_size)),
                ("qty_min", U(m.qty_min)),
                ("qty_max", U(m.qty_max)),
                ("band_ppm", U(m.band_ppm.into())),
                ("reference_price", I(m.reference_price)),
                ("maker_fee_ppm", U(m.maker_fee_ppm.into())),
                ("taker_fee_ppm", U(m.taker_fee_ppm.into())),
            ]),
            Command::CreateAccount { account } => f.push(("account", U(account.into()))),
            Command::Deposit {
                account,
                asset,
                amount,
                external_ref,
            }
            | Command::Withdraw {
                account,
                asset,
                amount,
                external_ref,
            } => f.extend([
                ("account", U(account.into())),
                ("asset", U(asset.into())),
                ("amount", I(amount)),
                ("external_ref", U(external_ref)),
            ]),
            Command::SetMarketFees {
                market,
                maker_fee_ppm,
                taker_fee_ppm,
            } => f.extend([
                ("market", U(market.into())),
                ("maker_fee_ppm", U(maker_fee_ppm.into())),
                ("taker_fee_ppm", U(taker_fee_ppm.into())),
            ]),
            Command::SetMarketLimits {
                market,
                max_open_orders_per_account,
                max_open_orders,
            } => f.extend([
                ("market", U(market.into())),
                (
                    "max_open_orders_per_account",
                    U(max_open_orders_per_account.into()),
                ),
                ("max_open_orders", U(max_open_orders.into())),
            ]),
            Command::SetFeeTier {
                account,
                market,
                fees,
            } => {
                f.extend([("account", U(account.into())), ("market", U(market.into()))]);
                match fees {
                    Some((maker, taker)) => f.extend([
                        ("maker_fee_ppm", U(maker.into())),
                        ("taker_fee_ppm", U(taker.into())),
                    ]),
                    None => f.push(("cleared", B(true))),
                }
            }
            Command::SetMarketStatus {
                market,
                status,
                cancel_resting,
            } => f.extend([
                ("market", U(market.into())),
                ("status", name(status)),
                ("cancel_resting", B(cancel_resting)),
            ]),
            Command::SuspendAccount { account } | Command::ResumeAccount { account } => {
                f.push(("account", U(account.into())))
            }
            Command::AddApiKey {
                account,
                key_id,
                permissions,
                ..
            } => f.extend([
                ("account", U(account.into())),
                ("key_id", U(key_id)),
                ("secret_hash", N("<redacted>")),
                ("permissions", U(permissions.into())),
            ]),
            Command::RevokeApiKey { key_id } => f.push(("key_id", U(key_id))),
        },
        Body::Epoch { epoch, node_id } => f.extend([
            ("new_epoch", U(epoch.into())),
            ("node_id", U(node_id.into())),
        ]),
        Body::Checkpoint { seq, every, hash } => f.extend([
            ("after_seq", U(seq)),
            ("every", U(every)),
            ("state_hash", S(format!("{hash:032x}"))),
        ]),
        Body::Undecodable(why) => f.push(("problem", S(why.into()))),
    }
}

/// An event's type name.
pub fn event_type(ev: &Event) -> &'static str {
    match ev {
        Event::Accepted { .. } => "accepted",
        Event::Trade { .. } => "trade",
        Event::Cancelled { .. } => "cancelled",
        Event::Replaced { .. } => "replaced",
        Event::Level { .. } => "level",
        Event::Rejected { .. } => "rejected",
        Event::Funds { .. } => "funds",
        Event::MarketStatus { .. } => "market_status",
        Event::CancelAllDone { .. } => "cancel_all_done",
        Event::AdminDone { .. } => "admin_done",
    }
}

/// An event's fields.
pub fn event_fields(ev: &Event) -> Fields {
    let mut f = Vec::with_capacity(12);
    event_fields_into(ev, &mut f);
    f
}

/// [`event_fields`] into `f` (cleared first): no allocation once `f` has grown.
pub fn event_fields_into(ev: &Event, f: &mut Fields) {
    use V::*;
    f.clear();
    match *ev {
        Event::Accepted {
            order_id,
            account,
            market,
            client_order_id,
            side,
            price,
            qty,
        } => f.extend([
            ("order_id", U(order_id)),
            ("account", U(account.into())),
            ("market", U(market.into())),
            ("client_order_id", U(client_order_id)),
            ("side", name(side)),
            ("price", I(price)),
            ("qty", U(qty)),
        ]),
        Event::Trade {
            market,
            maker_order_id,
            taker_order_id,
            maker_account,
            taker_account,
            taker_side,
            price,
            qty,
            maker_fee,
            taker_fee,
            maker_remaining,
            taker_remaining,
        } => f.extend([
            ("market", U(market.into())),
            ("maker_order_id", U(maker_order_id)),
            ("taker_order_id", U(taker_order_id)),
            ("maker_account", U(maker_account.into())),
            ("taker_account", U(taker_account.into())),
            ("taker_side", name(taker_side)),
            ("price", I(price)),
            ("qty", U(qty)),
            ("maker_fee", I(maker_fee)),
            ("taker_fee", I(taker_fee)),
            ("maker_remaining", U(maker_remaining)),
            ("taker_remaining", U(taker_remaining)),
        ]),
        Event::Cancelled {
            order_id,
            account,
            market,
            remaining_qty,
            reason,
        } => f.extend([
            ("order_id", U(order_id)),
            ("account", U(account.into())),
            ("market", U(market.into())),
            ("remaining_qty", U(remaining_qty)),
            ("reason", name(reason)),
        ]),
        Event::Replaced {
            order_id,
            account,
            market,
            price,
            qty,
            priority_kept,
        } => f.extend([
            ("order_id", U(order_id)),
            ("account", U(account.into())),
            ("market", U(market.into())),
            ("price", I(price)),
            ("qty", U(qty)),
            ("priority_kept", B(priority_kept)),
        ]),
        Event::Level {
            market,
            side,
            price,
            total_qty,
        } => f.extend([
            ("market", U(market.into())),
            ("side", name(side)),
            ("price", I(price)),
            ("total_qty", U(total_qty)),
        ]),
        Event::Rejected {
            kind,
            account,
            order_ref,
            reason,
        } => f.extend([
            ("command", N(kind_name(kind))),
            ("account", U(account.into())),
            ("order_ref", U(order_ref)),
            ("reason", N(reason.name())),
        ]),
        Event::Funds {
            account,
            asset,
            amount,
            available,
            external_ref,
            duplicate,
        } => f.extend([
            ("account", U(account.into())),
            ("asset", U(asset.into())),
            ("amount", I(amount)),
            ("available", I(available)),
            ("external_ref", U(external_ref)),
            ("duplicate", B(duplicate)),
        ]),
        Event::MarketStatus { market, status } => {
            f.extend([("market", U(market.into())), ("status", name(status))])
        }
        Event::CancelAllDone { account, count } => {
            f.extend([("account", U(account.into())), ("count", U(count.into()))])
        }
        Event::AdminDone { kind, id } => f.extend([("command", N(kind_name(kind))), ("id", U(id))]),
    }
}

/// Output formats of the streaming verbs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One line per item: `SEQ TIME ts=NANOS epoch=E TYPE key=value ...`.
    Text,
    /// One JSON object per line.
    Jsonl,
    /// Comma-separated values with a header line.
    Csv,
}

/// Where a record sits: the columns every line starts with.
#[derive(Clone, Copy, Debug)]
pub struct At {
    pub seq: u64,
    pub timestamp_ns: u64,
    pub epoch: u32,
}

/// Writes lines in one format; CSV gets its header before the first line.
pub struct LineWriter {
    pub format: Format,
    header_done: bool,
    /// For events: the column naming the command that produced them.
    with_command: bool,
    line: Vec<u8>,
    /// The start of the last line (its position and command), which the next line about
    /// the same record repeats: a command's events share it.
    prefix: Vec<u8>,
    prefix_of: Option<(u64, u64, u32)>,
}

const CSV_KEYS: [&str; 3] = ["account", "market", "order_id"];

impl LineWriter {
    pub fn new(format: Format, with_command: bool) -> LineWriter {
        LineWriter {
            format,
            header_done: false,
            with_command,
            line: Vec::with_capacity(256),
            prefix: Vec::with_capacity(128),
            prefix_of: None,
        }
    }

    /// One line: the record's position, its type (and for events, the command's), the
    /// fields.
    pub fn write(
        &mut self,
        out: &mut dyn Write,
        at: At,
        command: Option<&str>,
        kind: &str,
        fields: &Fields,
    ) -> Result<(), String> {
        if matches!(self.format, Format::Text | Format::Jsonl)
            && self.prefix_of != Some((at.seq, at.timestamp_ns, at.epoch))
        {
            self.prefix_of = Some((at.seq, at.timestamp_ns, at.epoch));
            let p = &mut self.prefix;
            p.clear();
            if self.format == Format::Text {
                push_u64(p, at.seq);
                p.put_c(b' ');
                iso8601_into(at.timestamp_ns, p);
                p.put(" ts=");
                push_u64(p, at.timestamp_ns);
                p.put(" epoch=");
                push_u64(p, at.epoch.into());
                p.put_c(b' ');
            } else {
                p.put("{\"seq\":");
                push_u64(p, at.seq);
                p.put(",\"time\":\"");
                iso8601_into(at.timestamp_ns, p);
                p.put("\",\"ts_ns\":");
                push_u64(p, at.timestamp_ns);
                p.put(",\"epoch\":");
                push_u64(p, at.epoch.into());
            }
        }
        let l = &mut self.line;
        l.clear();
        match self.format {
            Format::Text => {
                l.extend_from_slice(&self.prefix);
                if let Some(c) = command {
                    l.put(c);
                    l.put(" -> ");
                }
                l.put(kind);
                for (k, v) in fields {
                    l.put_c(b' ');
                    l.put(k);
                    l.put_c(b'=');
                    v.text(l);
                }
            }
            Format::Jsonl => {
                l.extend_from_slice(&self.prefix);
                if let Some(c) = command {
                    l.put(",\"command\":\"");
                    l.put(c);
                    l.put("\",\"event\":\"");
                } else {
                    l.put(",\"type\":\"");
                }
                l.put(kind);
                l.put_c(b'"');
                for (k, v) in fields {
                    l.put(",\"");
                    l.put(k);
                    l.put("\":");
                    v.json(l);
                }
                l.put_c(b'}');
            }
            Format::Csv => {
                if !self.header_done {
                    self.header_done = true;
                    let head = if self.with_command {
                        "seq,time,ts_ns,epoch,command,event,account,market,order_id,fields\n"
                    } else {
                        "seq,time,ts_ns,epoch,type,account,market,order_id,fields\n"
                    };
                    emit(out, head.as_bytes())?;
                }
                let _ = write!(l, "{},", at.seq);
                iso8601_into(at.timestamp_ns, l);
                let _ = write!(l, ",{},{},", at.timestamp_ns, at.epoch);
                if self.with_command {
                    let _ = write!(l, "{},", command.unwrap_or(""));
                }
                l.put(kind);
                for key in CSV_KEYS {
                    l.put_c(b',');
                    if let Some((_, v)) = fields.iter().find(|(k, _)| *k == key) {
                        v.text(l);
                    }
                }
                let mut rest: Vec<u8> = Vec::new();
                for (k, v) in fields.iter().filter(|(k, _)| !CSV_KEYS.contains(k)) {
                    if !rest.is_empty() {
                        rest.put_c(b' ');
                    }
                    rest.put(k);
                    rest.put_c(b'=');
                    v.text(&mut rest);
                }
                l.put_c(b',');
                if rest.iter().any(|b| matches!(b, b',' | b'"' | b'\n')) {
                    l.put_c(b'"');
                    for &b in &rest {
                        if b == b'"' {
                            l.put_c(b'"');
                        }
                        l.put_c(b);
                    }
                    l.put_c(b'"');
                } else {
                    l.extend_from_slice(&rest);
                }
            }
        }
        l.put_c(b'\n');
        emit(out, l)
    }
}

/// Nanoseconds since the Unix epoch as ISO 8601 UTC with nine fraction digits.
pub fn iso8601(ns: u64) -> String {
    let mut s = Vec::with_capacity(30);
    iso8601_into(ns, &mut s);
    String::from_utf8(s).expect("ASCII")
}

/// [`iso8601`], appended to `out`.
pub fn iso8601_into(ns: u64, out: &mut Vec<u8>) {
    let secs = (ns / 1_000_000_000) as i64;
    let frac = ns % 1_000_000_000;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    push_digits(out, y.max(0) as u64, 4);
    out.put_c(b'-');
    push_digits(out, m.into(), 2);
    out.put_c(b'-');
    push_digits(out, d.into(), 2);
    out.put_c(b'T');
    push_digits(out, (rem / 3600) as u64, 2);
    out.put_c(b':');
    push_digits(out, (rem / 60 % 60) as u64, 2);
    out.put_c(b':');
    push_digits(out, (rem % 60) as u64, 2);
    out.put_c(b'.');
    push_digits(out, frac, 9);
    out.put_c(b'Z');
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A time as the journal's nanoseconds since the Unix epoch: either those nanoseconds,
/// or ISO 8601 in UTC (`2026-12-07`, `2026-12-07T20:48`, `2026-12-07T20:48:17.25Z`,
/// `2026-12-07 20:48:17+00:00`).
pub fn parse_time(s: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "cannot read the time {s:?}: give nanoseconds since the Unix epoch, or UTC as \
             YYYY-MM-DD[THH:MM[:SS[.fraction]]][Z]"
        )
    };
    let t = s.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse().map_err(|_| bad());
    }
    let t = t
        .strip_suffix('Z')
        .or_else(|| t.strip_suffix("+00:00"))
        .unwrap_or(t);
    let (date, time) = match t.split_once(['T', ' ']) {
        Some((d, tm)) => (d, tm),
        None => (t, ""),
    };
    let num = |p: &str, len: usize| -> Result<u32, String> {
        if p.len() != len || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        p.parse().map_err(|_| bad())
    };
    let mut dp = date.split('-');
    let (Some(y), Some(m), Some(d), None) = (dp.next(), dp.next(), dp.next(), dp.next()) else {
        return Err(bad());
    };
    let (y, m, d) = (num(y, 4)?, num(m, 2)?, num(d, 2)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || y < 1970 {
        return Err(bad());
    }
    let (mut secs, mut frac_ns) = (0u64, 0u64);
    if !time.is_empty() {
        let (hms, frac) = match time.split_once('.') {
            Some((a, b)) => (a, Some(b)),
            None => (time, None),
        };
        let parts: Vec<&str> = hms.split(':').collect();
        if !(2..=3).contains(&parts.len()) {
            return Err(bad());
        }
        let h = num(parts[0], 2)?;
        let mi = num(parts[1], 2)?;
        let se = if parts.len() == 3 {
            num(parts[2], 2)?
        } else {
            0
        };
        if h > 23 || mi > 59 || se > 60 {
            return Err(bad());
        }
        secs = u64::from(h * 3600 + mi * 60 + se);
        if let Some(f) = frac {
            if f.is_empty() || f.len() > 9 || !f.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            frac_ns = format!("{f:0<9}").parse().map_err(|_| bad())?;
        }
    }
    let days = days_from_civil(i64::from(y), m, d) as u64;
    (days * 86_400 + secs)
        .checked_mul(1_000_000_000)
        .and_then(|ns| ns.checked_add(frac_ns))
        .ok_or_else(|| {
            format!("the time {s:?} is past what the journal's nanosecond clock holds (2554)")
        })
}

/// `amount` minor units of an asset with `decimals` as a decimal string, from integers.
pub fn decimal(amount: i64, decimals: u8) -> String {
    let sign = if amount < 0 { "-" } else { "" };
    let abs = amount.unsigned_abs();
    if decimals == 0 {
        return format!("{sign}{abs}");
    }
    let scale = 10u64.pow(u32::from(decimals.min(19)));
    format!(
        "{sign}{}.{:0width$}",
        abs / scale,
        abs % scale,
        width = usize::from(decimals)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_print_in_decimal_as_rust_does_with_zeros_to_the_width() {
        let mut values = vec![
            0,
            1,
            9,
            10,
            99,
            100,
            999,
            1000,
            1001,
            9999,
            10_000,
            123_456_789,
        ];
        values.extend([u64::MAX, u64::MAX - 1, 10u64.pow(19), 10u64.pow(19) - 1]);
        values.extend((0..64).map(|b| 1u64 << b));
        for v in values {
            let mut out = Vec::new();
            push_u64(&mut out, v);
            assert_eq!(String::from_utf8(out).unwrap(), v.to_string());
            for width in [2, 4, 9, 20] {
                let mut out = Vec::new();
                push_digits(&mut out, v, width);
                assert_eq!(String::from_utf8(out).unwrap(), format!("{v:0width$}"));
            }
        }
    }

    #[test]
    fn times_print_as_iso_8601_utc_and_read_back() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000000000Z");
        let t = parse_time("2026-12-07T20:48:17.25Z").unwrap();
        assert_eq!(iso8601(t), "2026-12-07T20:48:17.250000000Z");
        assert_eq!(parse_time("2024-02-29").unwrap() % 86_400_000_000_000, 0);
        assert_eq!(
            iso8601(parse_time("2024-02-29 23:59:59+00:00").unwrap()),
            "2024-02-29T23:59:59.000000000Z"
        );
        assert_eq!(
            parse_time("1765140497000000000").unwrap(),
            1765140497000000000
        );
        assert!(parse_time("yesterday").unwrap_err().contains("YYYY-MM-DD"));
        assert!(parse_time("2026-13-01").is_err());
        assert!(parse_time("2999-01-01").unwrap_err().contains("past what"));
    }

    #[test]
    fn amounts_print_as_decimals_from_integers() {
        assert_eq!(decimal(123_456, 2), "1234.56");
        assert_eq!(decimal(-5, 3), "-0.005");
        assert_eq!(decimal(7, 0), "7");
        assert_eq!(decimal(100_000_000, 8), "1.00000000");
    }

    #[test]
    fn numbers_print_in_decimal() {
        let mut s = Vec::new();
        for v in [
            V::U(0),
            V::U(u64::MAX),
            V::I(-7),
            V::I(i64::MIN),
            V::B(true),
        ] {
            v.text(&mut s);
            s.push(b' ');
        }
        assert_eq!(s, b"0 18446744073709551615 -7 -9223372036854775808 true ");
    }

    #[test]
    fn names_are_snake_case() {
        assert_eq!(ringex_engine::TimeInForce::PostOnly.name(), "post_only");
        assert_eq!(kind_name(CommandKind::CancelAll), "cancel_all");
    }
}
