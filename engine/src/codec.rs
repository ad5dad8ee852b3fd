//! Stable binary encoding of [`Command`] and [`Event`], shared by the journal, the
//! replication stream and the tools. The byte layout of every kind is documented in
//! `docs/engine-encoding.md`; a unit test keeps those tables in sync with this file.
//!
//! Every message is a 4-byte header followed by a fixed-layout body:
//!
//! | offset | size | field      | type |
//! |--------|------|------------|------|
//! | 0      | 1    | `kind`     | u8   |
//! | 1      | 1    | `version`  | u8   |
//! | 2      | 2    | `body_len` | u16  |
//!
//! All integers are little-endian. Fields sit at fixed offsets, naturally aligned
//! relative to the start of the message, and the message is zero-padded to a multiple of
//! 8 bytes (journal records are 8-byte aligned). `body_len` counts the bytes after the
//! header, padding included. Command kinds are the [`CommandKind`] numbers (below 0x80);
//! event kinds are in [`event_kind`] (0x80 and above), so an event fed to the command
//! decoder fails with [`DecodeError::UnknownKind`] instead of decoding as garbage.
//!
//! Decoding is strict, so that encodings are canonical: every enum byte, bool byte and
//! option tag is validated, padding must be zero, an absent option's value must be zero,
//! and `body_len` must be exactly the length of the kind at that version. Whatever
//! decodes re-encodes to the same bytes.
//!
//! # Evolution (append-only)
//!
//! The version is global: [`CODEC_VERSION`] is the newest layout, written by every
//! encoder. Decoders accept versions `1..=CODEC_VERSION` and reject anything else with
//! [`DecodeError::UnsupportedVersion`]; an old decoder therefore refuses newer data
//! instead of misreading it. A new version may only *append* fields to a kind (after its
//! last field, or into trailing padding), never move, resize, reinterpret or remove one,
//! and never reuse a kind or an enum value. The decoder of the new version keeps the old
//! lengths, reads the appended fields only when `version` is new enough, and gives them a
//! documented default otherwise. (Re-encoding an old record then writes the new version:
//! canonicality holds per version.) Today every kind is at version 1.

use std::fmt;

use crate::command::{Command, CommandKind, MarketSpec, OrderRef, PlaceOrder};
use crate::event::Event;
use crate::types::*;

/// The newest layout version; the only one this decoder knows.
pub const CODEC_VERSION: u8 = 1;
/// Bytes of the common header: kind, version, body length.
pub const HEADER_SIZE: usize = 4;
/// Every encoded message is a multiple of this many bytes.
pub const ALIGN: usize = 8;
/// The largest encoded command (`CreateMarket`). `encode_command` needs this much room.
pub const COMMAND_SIZE_MAX: usize = 88;
/// The largest encoded event (`Trade`). `encode_event` needs this much room.
pub const EVENT_SIZE_MAX: usize = 88;

/// Kind bytes of events. Disjoint from the command kinds (which stay below 0x80).
pub mod event_kind {
    pub const ACCEPTED: u8 = 0x81;
    pub const TRADE: u8 = 0x82;
    pub const CANCELLED: u8 = 0x83;
    pub const REPLACED: u8 = 0x84;
    pub const LEVEL: u8 = 0x85;
    pub const REJECTED: u8 = 0x86;
    pub const FUNDS: u8 = 0x87;
    pub const MARKET_STATUS: u8 = 0x88;
    pub const CANCEL_ALL_DONE: u8 = 0x89;
    pub const ADMIN_DONE: u8 = 0x8A;

    /// Every event kind, in code order.
    pub const ALL: [u8; 10] = [
        ACCEPTED,
        TRADE,
        CANCELLED,
        REPLACED,
        LEVEL,
        REJECTED,
        FUNDS,
        MARKET_STATUS,
        CANCEL_ALL_DONE,
        ADMIN_DONE,
    ];
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer bytes than the header, or than the message the header announces.
    Truncated {
        need: usize,
        have: usize,
    },
    UnknownKind(u8),
    UnsupportedVersion {
        kind: u8,
        version: u8,
    },
    /// `body_len` (bytes after the header) differs from the kind's fixed body length.
    BadLength {
        kind: u8,
        expected: u16,
        got: u16,
    },
    /// An enum, bool or option byte out of range, a non-zero padding byte, or the value
    /// of an absent option not zero.
    InvalidField {
        field: &'static str,
        value: u64,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Truncated { need, have } => {
                write!(f, "truncated message: need {need} bytes, have {have}")
            }
            DecodeError::UnknownKind(k) => write!(f, "unknown message kind {k:#04x}"),
            DecodeError::UnsupportedVersion { kind, version } => write!(
                f,
                "unsupported version {version} of kind {kind:#04x} (this decoder knows 1..={CODEC_VERSION})"
            ),
            DecodeError::BadLength { kind, expected, got } => write!(
                f,
                "bad body length for kind {kind:#04x}: expected {expected}, got {got}"
            ),
            DecodeError::InvalidField { field, value } => {
                write!(f, "invalid value {value} in field `{field}`")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

type R = Result<(), DecodeError>;

// ---------------------------------------------------------------------------------------
// Sizes. Checked against the layouts below by `size_tables_match_layouts`.

/// Encoded length of a command of this kind, header and padding included.
pub const fn command_len(kind: CommandKind) -> usize {
    match kind {
        CommandKind::Place => 48,
        CommandKind::Cancel => 24,
        CommandKind::Replace => 40,
        CommandKind::CancelAll => 16,
        CommandKind::CreateAsset => 32,
        CommandKind::CreateMarket => 88,
        CommandKind::CreateAccount => 8,
        CommandKind::Deposit | CommandKind::Withdraw => 32,
        CommandKind::SetMarketFees => 16,
        CommandKind::SetFeeTier => 24,
        CommandKind::SetMarketStatus => 16,
        CommandKind::SuspendAccount | CommandKind::ResumeAccount => 8,
        CommandKind::AddApiKey => 56,
        CommandKind::RevokeApiKey => 16,
        CommandKind::SetMarketLimits => 16,
    }
}

/// Encoded length of an event of this kind byte, or `None` for an unknown kind.
pub const fn event_len(kind: u8) -> Option<usize> {
    use event_kind::*;
    Some(match kind {
        ACCEPTED => 48,
        TRADE => 88,
        CANCELLED => 32,
        REPLACED => 40,
        LEVEL => 32,
        REJECTED => 24,
        FUNDS => 40,
        MARKET_STATUS | CANCEL_ALL_DONE | ADMIN_DONE => 16,
        _ => return None,
    })
}

/// The kind byte of an event.
pub fn event_kind_of(ev: &Event) -> u8 {
    use event_kind::*;
    match ev {
        Event::Accepted { .. } => ACCEPTED,
        Event::Trade { .. } => TRADE,
        Event::Cancelled { .. } => CANCELLED,
        Event::Replaced { .. } => REPLACED,
        Event::Level { .. } => LEVEL,
        Event::Rejected { .. } => REJECTED,
        Event::Funds { .. } => FUNDS,
        Event::MarketStatus { .. } => MARKET_STATUS,
        Event::CancelAllDone { .. } => CANCEL_ALL_DONE,
        Event::AdminDone { .. } => ADMIN_DONE,
    }
}

// ---------------------------------------------------------------------------------------
// Public API

/// Encodes `cmd` at the start of `buf` and returns the bytes written (a multiple of 8).
///
/// # Panics
/// If `buf` is shorter than [`COMMAND_SIZE_MAX`], whatever the command: a fixed
/// requirement is easier to get right than one per kind.
pub fn encode_command(cmd: &Command, buf: &mut [u8]) -> usize {
    assert!(
        buf.len() >= COMMAND_SIZE_MAX,
        "encode_command needs a buffer of COMMAND_SIZE_MAX ({COMMAND_SIZE_MAX}) bytes, got {}",
        buf.len()
    );
    let kind = cmd.kind();
    let len = command_len(kind);
    let mut copy = *cmd;
    let mut w = Writer {
        buf: &mut buf[..len],
        pos: HEADER_SIZE,
    };
    let written = visit_command(&mut w, &mut copy);
    debug_assert!(written.is_ok(), "a valid command always encodes");
    debug_assert_eq!(w.pos, len, "layout of {kind:?} disagrees with command_len");
    write_header(buf, kind as u8, len);
    len
}

/// Decodes one command from the start of `bytes`; returns it and the bytes consumed.
/// Bytes after the message are left alone, so a stream of records decodes in a loop.
/// Never panics.
pub fn decode_command(bytes: &[u8]) -> Result<(Command, usize), DecodeError> {
    let (kind, _version, len) = read_header(bytes, |k| {
        CommandKind::from_u8(k).map(|kind| (kind, command_len(kind)))
    })?;
    let mut cmd = blank_command(kind);
    let mut r = Reader {
        buf: &bytes[..len],
        pos: HEADER_SIZE,
    };
    visit_command(&mut r, &mut cmd)?;
    debug_assert_eq!(r.pos, len);
    Ok((cmd, len))
}

/// Encodes `ev` at the start of `buf` and returns the bytes written (a multiple of 8).
///
/// # Panics
/// If `buf` is shorter than [`EVENT_SIZE_MAX`], whatever the event.
pub fn encode_event(ev: &Event, buf: &mut [u8]) -> usize {
    assert!(
        buf.len() >= EVENT_SIZE_MAX,
        "encode_event needs a buffer of EVENT_SIZE_MAX ({EVENT_SIZE_MAX}) bytes, got {}",
        buf.len()
    );
    let kind = event_kind_of(ev);
    let len = event_len(kind).unwrap_or(EVENT_SIZE_MAX); // always Some: kind is ours
    let mut copy = *ev;
    let mut w = Writer {
        buf: &mut buf[..len],
        pos: HEADER_SIZE,
    };
    let written = visit_event(&mut w, &mut copy);
    debug_assert!(written.is_ok(), "a valid event always encodes");
    debug_assert_eq!(
        w.pos, len,
        "layout of kind {kind:#04x} disagrees with event_len"
    );
    write_header(buf, kind, len);
    len
}

/// Decodes one event from the start of `bytes`; returns it and the bytes consumed.
/// Never panics.
pub fn decode_event(bytes: &[u8]) -> Result<(Event, usize), DecodeError> {
    // The version will matter once a kind has appended fields; today it is always 1.
    let (mut ev, _version, len) = read_header(bytes, |k| {
        event_len(k).and_then(|len| Some((blank_event(k)?, len)))
    })?;
    let mut r = Reader {
        buf: &bytes[..len],
        pos: HEADER_SIZE,
    };
    visit_event(&mut r, &mut ev)?;
    debug_assert_eq!(r.pos, len);
    Ok((ev, len))
}

/// Appends the encoding of `cmd` to `out`.
pub fn encode_command_vec(cmd: &Command, out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + COMMAND_SIZE_MAX, 0);
    let n = encode_command(cmd, &mut out[start..]);
    out.truncate(start + n);
}

/// Appends the encoding of `ev` to `out`.
pub fn encode_event_vec(ev: &Event, out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + EVENT_SIZE_MAX, 0);
    let n = encode_event(ev, &mut out[start..]);
    out.truncate(start + n);
}

// ---------------------------------------------------------------------------------------
// Header

fn write_header(buf: &mut [u8], kind: u8, len: usize) {
    debug_assert!(len.is_multiple_of(ALIGN) && len > HEADER_SIZE);
    buf[0] = kind;
    buf[1] = CODEC_VERSION;
    buf[2..4].copy_from_slice(&((len - HEADER_SIZE) as u16).to_le_bytes());
}

/// Validates the header in a fixed order (length of header, kind, version, body length,
/// length of message) and returns the kind, the version and the message length.
/// `lookup` maps a kind byte to the kind and its encoded length at version 1.
fn read_header<K>(
    bytes: &[u8],
    lookup: impl FnOnce(u8) -> Option<(K, usize)>,
) -> Result<(K, u8, usize), DecodeError> {
    if bytes.len() < HEADER_SIZE {
        return Err(DecodeError::Truncated {
            need: HEADER_SIZE,
            have: bytes.len(),
        });
    }
    let (kind_byte, version) = (bytes[0], bytes[1]);
    let body_len = u16::from_le_bytes([bytes[2], bytes[3]]);
    let (kind, len) = lookup(kind_byte).ok_or(DecodeError::UnknownKind(kind_byte))?;
    if version == 0 || version > CODEC_VERSION {
        return Err(DecodeError::UnsupportedVersion {
            kind: kind_byte,
            version,
        });
    }
    let expected = (len - HEADER_SIZE) as u16;
    if body_len != expected {
        return Err(DecodeError::BadLength {
            kind: kind_byte,
            expected,
            got: body_len,
        });
    }
    if bytes.len() < len {
        return Err(DecodeError::Truncated {
            need: len,
            have: bytes.len(),
        });
    }
    Ok((kind, version, len))
}

// ---------------------------------------------------------------------------------------
// Layouts. One function per message family walks the fields in byte order; the same walk
// encodes (Writer), decodes (Reader) and, in tests, prints the documentation tables, so
// the three cannot disagree. The walk must not depend on field values: fixed layout.

trait Visitor {
    /// `ty` is the documented type, shown in `docs/engine-encoding.md`.
    fn u8(&mut self, name: &'static str, ty: &'static str, x: &mut u8) -> R;
    fn u16(&mut self, name: &'static str, ty: &'static str, x: &mut u16) -> R;
    fn u32(&mut self, name: &'static str, ty: &'static str, x: &mut u32) -> R;
    fn u64(&mut self, name: &'static str, ty: &'static str, x: &mut u64) -> R;
    fn bytes<const N: usize>(&mut self, name: &'static str, ty: &'static str, x: &mut [u8; N])
        -> R;
    /// `n` zero bytes.
    fn pad(&mut self, n: usize) -> R;
}

struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl Writer<'_> {
    fn put<const N: usize>(&mut self, b: [u8; N]) -> R {
        self.buf[self.pos..self.pos + N].copy_from_slice(&b);
        self.pos += N;
        Ok(())
    }
}

impl Visitor for Writer<'_> {
    fn u8(&mut self, _: &'static str, _: &'static str, x: &mut u8) -> R {
        self.put([*x])
    }
    fn u16(&mut self, _: &'static str, _: &'static str, x: &mut u16) -> R {
        self.put(x.to_le_bytes())
    }
    fn u32(&mut self, _: &'static str, _: &'static str, x: &mut u32) -> R {
        self.put(x.to_le_bytes())
    }
    fn u64(&mut self, _: &'static str, _: &'static str, x: &mut u64) -> R {
        self.put(x.to_le_bytes())
    }
    fn bytes<const N: usize>(&mut self, _: &'static str, _: &'static str, x: &mut [u8; N]) -> R {
        self.put(*x)
    }
    fn pad(&mut self, n: usize) -> R {
        // Writes zeros explicitly: the caller's buffer may hold an older message.
        self.buf[self.pos..self.pos + n].fill(0);
        self.pos += n;
        Ok(())
    }
}

/// Reads from a slice whose length `read_header` has already checked against the kind's
/// layout, so indexing stays in bounds.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        out.copy_from_slice(&self.buf[self.pos..self.pos + N]);
        self.pos += N;
        out
    }
}

impl Visitor for Reader<'_> {
    fn u8(&mut self, _: &'static str, _: &'static str, x: &mut u8) -> R {
        *x = self.take::<1>()[0];
        Ok(())
    }
    fn u16(&mut self, _: &'static str, _: &'static str, x: &mut u16) -> R {
        *x = u16::from_le_bytes(self.take());
        Ok(())
    }
    fn u32(&mut self, _: &'static str, _: &'static str, x: &mut u32) -> R {
        *x = u32::from_le_bytes(self.take());
        Ok(())
    }
    fn u64(&mut self, _: &'static str, _: &'static str, x: &mut u64) -> R {
        *x = u64::from_le_bytes(self.take());
        Ok(())
    }
    fn bytes<const N: usize>(&mut self, _: &'static str, _: &'static str, x: &mut [u8; N]) -> R {
        *x = self.take();
        Ok(())
    }
    fn pad(&mut self, n: usize) -> R {
        let pad = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        match pad.iter().find(|b| **b != 0) {
            None => Ok(()),
            Some(b) => Err(DecodeError::InvalidField {
                field: "padding",
                value: (*b).into(),
            }),
        }
    }
}

// ---- field helpers: typed fields on top of the raw visitor ----

fn i64_field<V: Visitor>(v: &mut V, name: &'static str, x: &mut i64) -> R {
    let mut raw = *x as u64;
    v.u64(name, "i64", &mut raw)?;
    *x = raw as i64;
    Ok(())
}

/// A one-byte enum, validated on decode by the type's own `from_u8`.
trait Code8: Copy {
    /// The documented type.
    const TY: &'static str;
    fn code(self) -> u8;
    fn from_code(v: u8) -> Option<Self>;
}

macro_rules! code8 {
    ($($t:ident),*) => {$(
        impl Code8 for $t {
            const TY: &'static str = concat!("u8 ", stringify!($t));
            fn code(self) -> u8 {
                self as u8
            }
            fn from_code(v: u8) -> Option<Self> {
                $t::from_u8(v)
            }
        }
    )*};
}

code8!(
    Side,
    OrderKind,
    TimeInForce,
    StpMode,
    MarketStatus,
    CancelReason,
    CommandKind
);

fn enum8<V: Visitor, T: Code8>(v: &mut V, name: &'static str, x: &mut T) -> R {
    let mut raw = x.code();
    v.u8(name, T::TY, &mut raw)?;
    *x = T::from_code(raw).ok_or(DecodeError::InvalidField {
        field: name,
        value: raw.into(),
    })?;
    Ok(())
}

fn bool8<V: Visitor>(v: &mut V, name: &'static str, x: &mut bool) -> R {
    let mut raw = u8::from(*x);
    v.u8(name, "u8 bool (0, 1)", &mut raw)?;
    *x = match raw {
        0 => false,
        1 => true,
        _ => {
            return Err(DecodeError::InvalidField {
                field: name,
                value: raw.into(),
            })
        }
    };
    Ok(())
}

/// `[tag: u8][pad][id: u64]`, tag 1 = exchange id, 2 = client id.
fn order_ref<V: Visitor>(v: &mut V, x: &mut OrderRef, pad: usize) -> R {
    let (mut tag, mut id) = match *x {
        OrderRef::Exchange(id) => (1u8, id),
        OrderRef::Client(id) => (2u8, id),
    };
    v.u8("order_ref_tag", "u8 (1 exchange, 2 client)", &mut tag)?;
    v.pad(pad)?;
    v.u64("order_ref_id", "u64", &mut id)?;
    *x = match tag {
        1 => OrderRef::Exchange(id),
        2 => OrderRef::Client(id),
        _ => {
            return Err(DecodeError::InvalidField {
                field: "order_ref_tag",
                value: tag.into(),
            })
        }
    };
    Ok(())
}

/// Decodes an option tag; an absent value must be all zeros so the encoding is canonical.
fn option_from(tag_name: &'static str, tag: u8, value_name: &'static str, value: u64) -> R {
    match (tag, value) {
        (0, 0) | (1, _) => Ok(()),
        (0, v) => Err(DecodeError::InvalidField {
            field: value_name,
            value: v,
        }),
        (t, _) => Err(DecodeError::InvalidField {
            field: tag_name,
            value: t.into(),
        }),
    }
}

fn symbol<V: Visitor>(v: &mut V, x: &mut Symbol) -> R {
    // Raw bytes: whether a symbol is well-formed is the engine's call, not the codec's.
    v.bytes("symbol", "[u8; 16] ASCII, zero-padded", &mut x.0)
}

fn visit_place<V: Visitor>(v: &mut V, p: &mut PlaceOrder) -> R {
    v.u32("account", "u32", &mut p.account)?;
    v.u32("market", "u32", &mut p.market)?;
    enum8(v, "side", &mut p.side)?;
    enum8(v, "kind", &mut p.kind)?;
    enum8(v, "tif", &mut p.tif)?;
    enum8(v, "stp", &mut p.stp)?;
    v.u64("client_order_id", "u64", &mut p.client_order_id)?;
    i64_field(v, "price", &mut p.price)?;
    v.u64("qty", "u64", &mut p.qty)?;
    i64_field(v, "quote_budget", &mut p.quote_budget)
}

fn visit_market_spec<V: Visitor>(v: &mut V, m: &mut MarketSpec) -> R {
    v.u32("market", "u32", &mut m.market)?;
    v.u32("base", "u32", &mut m.base)?;
    v.u32("quote", "u32", &mut m.quote)?;
    symbol(v, &mut m.symbol)?;
    i64_field(v, "tick_size", &mut m.tick_size)?;
    i64_field(v, "lot_size", &mut m.lot_size)?;
    v.u64("qty_min", "u64", &mut m.qty_min)?;
    v.u64("qty_max", "u64", &mut m.qty_max)?;
    i64_field(v, "reference_price", &mut m.reference_price)?;
    v.u32("band_ppm", "u32", &mut m.band_ppm)?;
    v.u32("maker_fee_ppm", "u32", &mut m.maker_fee_ppm)?;
    v.u32("taker_fee_ppm", "u32", &mut m.taker_fee_ppm)?;
    v.pad(4)
}

/// The body of `cmd`, in byte order. Decoding starts from `blank_command(kind)`.
fn visit_command<V: Visitor>(v: &mut V, cmd: &mut Command) -> R {
    match cmd {
        Command::Place(p) => visit_place(v, p),
        Command::Cancel {
            account,
            market,
            order,
        } => {
            v.u32("account", "u32", account)?;
            v.u32("market", "u32", market)?;
            order_ref(v, order, 3)
        }
        Command::Replace {
            account,
            market,
            order,
            price,
            qty,
        } => {
            v.u32("account", "u32", account)?;
            v.u32("market", "u32", market)?;
            order_ref(v, order, 3)?;
            i64_field(v, "price", price)?;
            v.u64("qty", "u64", qty)
        }
        Command::CancelAll { account, market } => {
            let mut tag = u8::from(market.is_some());
            let mut id = market.unwrap_or(0);
            v.u32("account", "u32", account)?;
            v.u8("market_tag", "u8 (0 all markets, 1 one market)", &mut tag)?;
            v.pad(3)?;
            v.u32("market", "u32 (0 when market_tag = 0)", &mut id)?;
            option_from("market_tag", tag, "market", id.into())?;
            *market = (tag == 1).then_some(id);
            Ok(())
        }
        Command::CreateAsset {
            asset,
            symbol: sym,
            decimals,
        } => {
            v.u32("asset", "u32", asset)?;
            v.u8("decimals", "u8", decimals)?;
            v.pad(7)?;
            symbol(v, sym)
        }
        Command::CreateMarket(m) => visit_market_spec(v, m),
        Command::CreateAccount { account }
        | Command::SuspendAccount { account }
        | Command::ResumeAccount { account } => v.u32("account", "u32", account),
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
        } => {
            v.u32("account", "u32", account)?;
            v.u32("asset", "u32", asset)?;
            v.pad(4)?;
            i64_field(v, "amount", amount)?;
            v.u64("external_ref", "u64", external_ref)
        }
        Command::SetMarketFees {
            market,
            maker_fee_ppm,
            taker_fee_ppm,
        } => {
            v.u32("market", "u32", market)?;
            v.u32("maker_fee_ppm", "u32", maker_fee_ppm)?;
            v.u32("taker_fee_ppm", "u32", taker_fee_ppm)
        }
        Command::SetMarketLimits {
            market,
            max_open_orders_per_account,
            max_open_orders,
        } => {
            v.u32("market", "u32", market)?;
            v.u32(
                "max_open_orders_per_account",
                "u32",
                max_open_orders_per_account,
            )?;
            v.u32("max_open_orders", "u32", max_open_orders)
        }
        Command::SetFeeTier {
            account,
            market,
            fees,
        } => {
            let mut tag = u8::from(fees.is_some());
            let (mut maker, mut taker) = fees.unwrap_or((0, 0));
            v.u32("account", "u32", account)?;
            v.u32("market", "u32", market)?;
            v.u8("fees_tag", "u8 (0 clear override, 1 set)", &mut tag)?;
            v.pad(3)?;
            v.u32("maker_fee_ppm", "u32 (0 when fees_tag = 0)", &mut maker)?;
            v.u32("taker_fee_ppm", "u32 (0 when fees_tag = 0)", &mut taker)?;
            option_from("fees_tag", tag, "maker_fee_ppm", maker.into())?;
            option_from("fees_tag", tag, "taker_fee_ppm", taker.into())?;
            *fees = (tag == 1).then_some((maker, taker));
            Ok(())
        }
        Command::SetMarketStatus {
            market,
            status,
            cancel_resting,
        } => {
            v.u32("market", "u32", market)?;
            enum8(v, "status", status)?;
            bool8(v, "cancel_resting", cancel_resting)?;
            v.pad(6)
        }
        Command::AddApiKey {
            account,
            key_id,
            secret_hash,
            permissions,
        } => {
            v.u32("account", "u32", account)?;
            v.u32("permissions", "u32", permissions)?;
            v.pad(4)?;
            v.u64("key_id", "u64", key_id)?;
            v.bytes("secret_hash", "[u8; 32]", secret_hash)
        }
        Command::RevokeApiKey { key_id } => {
            v.pad(4)?;
            v.u64("key_id", "u64", key_id)
        }
    }
}

/// The body of `ev`, in byte order. Decoding starts from `blank_event(kind)`.
fn visit_event<V: Visitor>(v: &mut V, ev: &mut Event) -> R {
    match ev {
        Event::Accepted {
            order_id,
            account,
            market,
            client_order_id,
            side,
            price,
            qty,
        } => {
            v.u32("account", "u32", account)?;
            v.u32("market", "u32", market)?;
            enum8(v, "side", side)?;
            v.pad(3)?;
            v.u64("order_id", "u64", order_id)?;
            v.u64("client_order_id", "u64", client_order_id)?;
            i64_field(v, "price", price)?;
            v.u64("qty", "u64", qty)
        }
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
        } => {
            v.u32("market", "u32", market)?;
            v.u32("maker_account", "u32", maker_account)?;
            v.u32("taker_account", "u32", taker_account)?;
            enum8(v, "taker_side", taker_side)?;
            v.pad(7)?;
            v.u64("maker_order_id", "u64", maker_order_id)?;
            v.u64("taker_order_id", "u64", taker_order_id)?;
            i64_field(v, "price", price)?;
            v.u64("qty", "u64", qty)?;
            i64_field(v, "maker_fee", maker_fee)?;
            i64_field(v, "taker_fee", taker_fee)?;
            v.u64("maker_remaining", "u64", maker_remaining)?;
            v.u64("taker_remaining", "u64", taker_remaining)
        }
        Event::Cancelled {
            order_id,
            account,
            market,
            remaining_qty,
            reason,
        } => {
            v.u32("account", "u32", account)?;
            v.u32("market", "u32", market)?;
            enum8(v, "reason", reason)?;
            v.pad(3)?;
            v.u64("order_id", "u64", order_id)?;
            v.u64("remaining_qty", "u64", remaining_qty)
        }
        Event::Replaced {
            order_id,
            account,
            market,
            price,
            qty,
            priority_kept,
        } => {
            v.u32("account", "u32", account)?;
            v.u32("market", "u32", market)?;
            bool8(v, "priority_kept", priority_kept)?;
            v.pad(3)?;
            v.u64("order_id", "u64", order_id)?;
            i64_field(v, "price", price)?;
            v.u64("qty", "u64", qty)
        }
        Event::Level {
            market,
            side,
            price,
            total_qty,
        } => {
            v.u32("market", "u32", market)?;
            enum8(v, "side", side)?;
            v.pad(7)?;
            i64_field(v, "price", price)?;
            v.u64("total_qty", "u64", total_qty)
        }
        Event::Rejected {
            kind,
            account,
            order_ref,
            reason,
        } => {
            let mut raw = *reason as u16;
            v.u32("account", "u32", account)?;
            enum8(v, "command_kind", kind)?;
            v.pad(1)?;
            v.u16("reason", "u16 RejectReason", &mut raw)?;
            *reason = RejectReason::from_u16(raw).ok_or(DecodeError::InvalidField {
                field: "reason",
                value: raw.into(),
            })?;
            v.pad(4)?;
            v.u64("order_ref", "u64", order_ref)
        }
        Event::Funds {
            account,
            asset,
            amount,
            available,
            external_ref,
            duplicate,
        } => {
            v.u32("account", "u32", account)?;
            v.u32("asset", "u32", asset)?;
            bool8(v, "duplicate", duplicate)?;
            v.pad(3)?;
            i64_field(v, "amount", amount)?;
            i64_field(v, "available", available)?;
            v.u64("external_ref", "u64", external_ref)
        }
        Event::MarketStatus { market, status } => {
            v.u32("market", "u32", market)?;
            enum8(v, "status", status)?;
            v.pad(7)
        }
        Event::CancelAllDone { account, count } => {
            v.u32("account", "u32", account)?;
            v.u32("count", "u32", count)?;
            v.pad(4)
        }
        Event::AdminDone { kind, id } => {
            enum8(v, "command_kind", kind)?;
            v.pad(3)?;
            v.u64("id", "u64", id)
        }
    }
}

/// A command of this kind with every field zero (or its first enum value): the decoder
/// overwrites every field.
fn blank_command(kind: CommandKind) -> Command {
    let place = PlaceOrder {
        account: 0,
        market: 0,
        client_order_id: 0,
        side: Side::Buy,
        kind: OrderKind::Limit,
        tif: TimeInForce::Gtc,
        price: 0,
        qty: 0,
        quote_budget: 0,
        stp: StpMode::None,
    };
    let spec = MarketSpec {
        market: 0,
        symbol: Symbol::default(),
        base: 0,
        quote: 0,
        tick_size: 0,
        lot_size: 0,
        qty_min: 0,
        qty_max: 0,
        band_ppm: 0,
        reference_price: 0,
        maker_fee_ppm: 0,
        taker_fee_ppm: 0,
    };
    let order = OrderRef::Exchange(0);
    match kind {
        CommandKind::Place => Command::Place(place),
        CommandKind::Cancel => Command::Cancel {
            account: 0,
            market: 0,
            order,
        },
        CommandKind::Replace => Command::Replace {
            account: 0,
            market: 0,
            order,
            price: 0,
            qty: 0,
        },
        CommandKind::CancelAll => Command::CancelAll {
            account: 0,
            market: None,
        },
        CommandKind::CreateAsset => Command::CreateAsset {
            asset: 0,
            symbol: Symbol::default(),
            decimals: 0,
        },
        CommandKind::CreateMarket => Command::CreateMarket(spec),
        CommandKind::CreateAccount => Command::CreateAccount { account: 0 },
        CommandKind::Deposit => Command::Deposit {
            account: 0,
            asset: 0,
            amount: 0,
            external_ref: 0,
        },
        CommandKind::Withdraw => Command::Withdraw {
            account: 0,
            asset: 0,
            amount: 0,
            external_ref: 0,
        },
        CommandKind::SetMarketFees => Command::SetMarketFees {
            market: 0,
            maker_fee_ppm: 0,
            taker_fee_ppm: 0,
        },
        CommandKind::SetMarketLimits => Command::SetMarketLimits {
            market: 0,
            max_open_orders_per_account: 0,
            max_open_orders: 0,
        },
        CommandKind::SetFeeTier => Command::SetFeeTier {
            account: 0,
            market: 0,
            fees: None,
        },
        CommandKind::SetMarketStatus => Command::SetMarketStatus {
            market: 0,
            status: MarketStatus::Open,
            cancel_resting: false,
        },
        CommandKind::SuspendAccount => Command::SuspendAccount { account: 0 },
        CommandKind::ResumeAccount => Command::ResumeAccount { account: 0 },
        CommandKind::AddApiKey => Command::AddApiKey {
            account: 0,
            key_id: 0,
            secret_hash: [0; 32],
            permissions: 0,
        },
        CommandKind::RevokeApiKey => Command::RevokeApiKey { key_id: 0 },
    }
}

/// An event of this kind with every field zero (or its first enum value), `None` for an
/// unknown kind.
fn blank_event(kind: u8) -> Option<Event> {
    use event_kind::*;
    let ck = CommandKind::Place;
    Some(match kind {
        ACCEPTED => Event::Accepted {
            order_id: 0,
            account: 0,
            market: 0,
            client_order_id: 0,
            side: Side::Buy,
            price: 0,
            qty: 0,
        },
        TRADE => Event::Trade {
            market: 0,
            maker_order_id: 0,
            taker_order_id: 0,
            maker_account: 0,
            taker_account: 0,
            taker_side: Side::Buy,
            price: 0,
            qty: 0,
            maker_fee: 0,
            taker_fee: 0,
            maker_remaining: 0,
            taker_remaining: 0,
        },
        CANCELLED => Event::Cancelled {
            order_id: 0,
            account: 0,
            market: 0,
            remaining_qty: 0,
            reason: CancelReason::Requested,
        },
        REPLACED => Event::Replaced {
            order_id: 0,
            account: 0,
            market: 0,
            price: 0,
            qty: 0,
            priority_kept: false,
        },
        LEVEL => Event::Level {
            market: 0,
            side: Side::Buy,
            price: 0,
            total_qty: 0,
        },
        REJECTED => Event::Rejected {
            kind: ck,
            account: 0,
            order_ref: 0,
            reason: RejectReason::UnknownMarket,
        },
        FUNDS => Event::Funds {
            account: 0,
            asset: 0,
            amount: 0,
            available: 0,
            external_ref: 0,
            duplicate: false,
        },
        MARKET_STATUS => Event::MarketStatus {
            market: 0,
            status: MarketStatus::Open,
        },
        CANCEL_ALL_DONE => Event::CancelAllDone {
            account: 0,
            count: 0,
        },
        ADMIN_DONE => Event::AdminDone { kind: ck, id: 0 },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;
    use proptest::sample::select;

    // ---- strategies ----

    fn side() -> impl Strategy<Value = Side> {
        select(vec![Side::Buy, Side::Sell])
    }
    fn order_kind() -> impl Strategy<Value = OrderKind> {
        select(vec![OrderKind::Limit, OrderKind::Market])
    }
    fn tif() -> impl Strategy<Value = TimeInForce> {
        use TimeInForce::*;
        select(vec![Gtc, Ioc, Fok, PostOnly])
    }
    fn stp() -> impl Strategy<Value = StpMode> {
        use StpMode::*;
        select(vec![None, CancelNewest, CancelOldest, CancelBoth])
    }
    fn market_status() -> impl Strategy<Value = MarketStatus> {
        use MarketStatus::*;
        select(vec![Open, Halted, CancelOnly, Closed])
    }
    fn cancel_reason() -> impl Strategy<Value = CancelReason> {
        (1u8..=7).prop_map(|v| CancelReason::from_u8(v).unwrap())
    }
    fn command_kind() -> impl Strategy<Value = CommandKind> {
        select(CommandKind::ALL.to_vec())
    }
    fn reject_reason() -> impl Strategy<Value = RejectReason> {
        select(RejectReason::ALL.to_vec())
    }
    fn symbol() -> impl Strategy<Value = Symbol> {
        any::<[u8; 16]>().prop_map(Symbol)
    }
    fn order_ref() -> impl Strategy<Value = OrderRef> {
        prop_oneof![
            any::<u64>().prop_map(OrderRef::Exchange),
            any::<u64>().prop_map(OrderRef::Client),
        ]
    }

    fn place() -> impl Strategy<Value = PlaceOrder> {
        (
            (any::<u32>(), any::<u32>(), any::<u64>()),
            (side(), order_kind(), tif(), stp()),
            (any::<i64>(), any::<u64>(), any::<i64>()),
        )
            .prop_map(
                |(
                    (account, market, client_order_id),
                    (side, kind, tif, stp),
                    (price, qty, quote_budget),
                )| {
                    PlaceOrder {
                        account,
                        market,
                        client_order_id,
                        side,
                        kind,
                        tif,
                        price,
                        qty,
                        quote_budget,
                        stp,
                    }
                },
            )
    }

    fn market_spec() -> impl Strategy<Value = MarketSpec> {
        (
            (any::<u32>(), symbol(), any::<u32>(), any::<u32>()),
            (any::<i64>(), any::<i64>(), any::<u64>(), any::<u64>()),
            (any::<u32>(), any::<i64>(), any::<u32>(), any::<u32>()),
        )
            .prop_map(|(a, b, c)| MarketSpec {
                market: a.0,
                symbol: a.1,
                base: a.2,
                quote: a.3,
                tick_size: b.0,
                lot_size: b.1,
                qty_min: b.2,
                qty_max: b.3,
                band_ppm: c.0,
                reference_price: c.1,
                maker_fee_ppm: c.2,
                taker_fee_ppm: c.3,
            })
    }

    /// Every `Command` variant, with arbitrary field values (the codec carries values; the
    /// engine judges them).
    fn arb_command() -> impl Strategy<Value = Command> {
        let u32_ = any::<u32>;
        let u64_ = any::<u64>;
        prop_oneof![
            place().prop_map(Command::Place),
            (u32_(), u32_(), order_ref()).prop_map(|(account, market, order)| {
                Command::Cancel {
                    account,
                    market,
                    order,
                }
            }),
            (u32_(), u32_(), order_ref(), any::<i64>(), u64_()).prop_map(
                |(account, market, order, price, qty)| Command::Replace {
                    account,
                    market,
                    order,
                    price,
                    qty
                }
            ),
            (u32_(), proptest::option::of(u32_()))
                .prop_map(|(account, market)| Command::CancelAll { account, market }),
            (u32_(), symbol(), any::<u8>()).prop_map(|(asset, symbol, decimals)| {
                Command::CreateAsset {
                    asset,
                    symbol,
                    decimals,
                }
            }),
            market_spec().prop_map(Command::CreateMarket),
            u32_().prop_map(|account| Command::CreateAccount { account }),
            (u32_(), u32_(), any::<i64>(), u64_()).prop_map(
                |(account, asset, amount, external_ref)| Command::Deposit {
                    account,
                    asset,
                    amount,
                    external_ref
                }
            ),
            (u32_(), u32_(), any::<i64>(), u64_()).prop_map(
                |(account, asset, amount, external_ref)| Command::Withdraw {
                    account,
                    asset,
                    amount,
                    external_ref
                }
            ),
            (u32_(), u32_(), u32_()).prop_map(|(market, maker_fee_ppm, taker_fee_ppm)| {
                Command::SetMarketFees {
                    market,
                    maker_fee_ppm,
                    taker_fee_ppm,
                }
            }),
            (u32_(), u32_(), proptest::option::of((u32_(), u32_()))).prop_map(
                |(account, market, fees)| Command::SetFeeTier {
                    account,
                    market,
                    fees
                }
            ),
            (u32_(), market_status(), any::<bool>()).prop_map(
                |(market, status, cancel_resting)| Command::SetMarketStatus {
                    market,
                    status,
                    cancel_resting
                }
            ),
            u32_().prop_map(|account| Command::SuspendAccount { account }),
            u32_().prop_map(|account| Command::ResumeAccount { account }),
            (u32_(), u64_(), any::<[u8; 32]>(), u32_()).prop_map(
                |(account, key_id, secret_hash, permissions)| Command::AddApiKey {
                    account,
                    key_id,
                    secret_hash,
                    permissions
                }
            ),
            u64_().prop_map(|key_id| Command::RevokeApiKey { key_id }),
            (u32_(), u32_(), u32_()).prop_map(|(market, per_account, per_market)| {
                Command::SetMarketLimits {
                    market,
                    max_open_orders_per_account: per_account,
                    max_open_orders: per_market,
                }
            }),
        ]
    }

    /// Every `Event` variant, with arbitrary field values.
    fn arb_event() -> impl Strategy<Value = Event> {
        let u32_ = any::<u32>;
        let u64_ = any::<u64>;
        let i64_ = any::<i64>;
        prop_oneof![
            (u64_(), u32_(), u32_(), u64_(), side(), i64_(), u64_()).prop_map(
                |(order_id, account, market, client_order_id, side, price, qty)| {
                    Event::Accepted {
                        order_id,
                        account,
                        market,
                        client_order_id,
                        side,
                        price,
                        qty,
                    }
                }
            ),
            (
                (u32_(), u64_(), u64_(), u32_(), u32_(), side()),
                (i64_(), u64_(), i64_(), i64_(), u64_(), u64_()),
            )
                .prop_map(|(a, b)| Event::Trade {
                    market: a.0,
                    maker_order_id: a.1,
                    taker_order_id: a.2,
                    maker_account: a.3,
                    taker_account: a.4,
                    taker_side: a.5,
                    price: b.0,
                    qty: b.1,
                    maker_fee: b.2,
                    taker_fee: b.3,
                    maker_remaining: b.4,
                    taker_remaining: b.5,
                }),
            (u64_(), u32_(), u32_(), u64_(), cancel_reason()).prop_map(
                |(order_id, account, market, remaining_qty, reason)| Event::Cancelled {
                    order_id,
                    account,
                    market,
                    remaining_qty,
                    reason
                }
            ),
            (u64_(), u32_(), u32_(), i64_(), u64_(), any::<bool>()).prop_map(
                |(order_id, account, market, price, qty, priority_kept)| Event::Replaced {
                    order_id,
                    account,
                    market,
                    price,
                    qty,
                    priority_kept
                }
            ),
            (u32_(), side(), i64_(), u64_()).prop_map(|(market, side, price, total_qty)| {
                Event::Level {
                    market,
                    side,
                    price,
                    total_qty,
                }
            }),
            (command_kind(), u32_(), u64_(), reject_reason()).prop_map(
                |(kind, account, order_ref, reason)| Event::Rejected {
                    kind,
                    account,
                    order_ref,
                    reason
                }
            ),
            (u32_(), u32_(), i64_(), i64_(), u64_(), any::<bool>()).prop_map(
                |(account, asset, amount, available, external_ref, duplicate)| Event::Funds {
                    account,
                    asset,
                    amount,
                    available,
                    external_ref,
                    duplicate
                }
            ),
            (u32_(), market_status())
                .prop_map(|(market, status)| Event::MarketStatus { market, status }),
            (u32_(), u32_()).prop_map(|(account, count)| Event::CancelAllDone { account, count }),
            (command_kind(), u64_()).prop_map(|(kind, id)| Event::AdminDone { kind, id }),
        ]
    }

    /// Bytes that are mostly zero, so that random bodies often get past the padding checks
    /// and exercise the field validation behind them.
    fn zero_biased_bytes(len: usize) -> impl Strategy<Value = Vec<u8>> {
        vec(
            prop_oneof![3 => Just(0u8), 1 => 0u8..5, 1 => any::<u8>()],
            len,
        )
    }

    /// A valid header of a random kind (command or event) followed by a random body of
    /// exactly the announced length.
    fn valid_header_random_body() -> impl Strategy<Value = Vec<u8>> {
        let kinds: Vec<(u8, usize)> = CommandKind::ALL
            .iter()
            .map(|k| (*k as u8, command_len(*k)))
            .chain(event_kind::ALL.iter().map(|k| (*k, event_len(*k).unwrap())))
            .collect();
        select(kinds).prop_flat_map(|(kind, len)| {
            zero_biased_bytes(len).prop_map(move |mut bytes| {
                bytes[0] = kind;
                bytes[1] = CODEC_VERSION;
                bytes[2..4].copy_from_slice(&((len - HEADER_SIZE) as u16).to_le_bytes());
                bytes
            })
        })
    }

    fn encode_cmd(cmd: &Command) -> Vec<u8> {
        let mut out = Vec::new();
        encode_command_vec(cmd, &mut out);
        out
    }

    fn encode_ev(ev: &Event) -> Vec<u8> {
        let mut out = Vec::new();
        encode_event_vec(ev, &mut out);
        out
    }

    /// Decoders must not panic, and whatever they accept must re-encode to the same bytes.
    fn check_canonical(bytes: &[u8]) -> Result<(), TestCaseError> {
        if let Ok((cmd, n)) = decode_command(bytes) {
            prop_assert_eq!(&encode_cmd(&cmd)[..], &bytes[..n]);
        }
        if let Ok((ev, n)) = decode_event(bytes) {
            prop_assert_eq!(&encode_ev(&ev)[..], &bytes[..n]);
        }
        Ok(())
    }

    type Decode<T> = fn(&[u8]) -> Result<(T, usize), DecodeError>;

    fn check_truncations<T: PartialEq + fmt::Debug>(
        bytes: &[u8],
        decode: Decode<T>,
    ) -> Result<(), TestCaseError> {
        for len in 0..bytes.len() {
            let need = if len < HEADER_SIZE {
                HEADER_SIZE
            } else {
                bytes.len()
            };
            prop_assert_eq!(
                decode(&bytes[..len]).err(),
                Some(DecodeError::Truncated { need, have: len })
            );
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn every_command_round_trips_and_consumes_exactly_its_encoding(cmd in arb_command()) {
            // Garbage in the buffer: the encoder must write every byte it claims.
            let mut buf = [0xA5u8; COMMAND_SIZE_MAX + 16];
            let n = encode_command(&cmd, &mut buf);
            prop_assert_eq!(n, command_len(cmd.kind()));
            prop_assert!(n.is_multiple_of(ALIGN) && n <= COMMAND_SIZE_MAX);
            prop_assert_eq!(decode_command(&buf[..n]), Ok((cmd, n)));
            // Trailing bytes belong to the next record.
            prop_assert_eq!(decode_command(&buf), Ok((cmd, n)));
        }

        #[test]
        fn every_event_round_trips_and_consumes_exactly_its_encoding(ev in arb_event()) {
            let mut buf = [0xA5u8; EVENT_SIZE_MAX + 16];
            let n = encode_event(&ev, &mut buf);
            prop_assert_eq!(Some(n), event_len(event_kind_of(&ev)));
            prop_assert!(n.is_multiple_of(ALIGN) && n <= EVENT_SIZE_MAX);
            prop_assert_eq!(decode_event(&buf[..n]), Ok((ev, n)));
            prop_assert_eq!(decode_event(&buf), Ok((ev, n)));
        }

        #[test]
        fn random_bytes_never_panic_and_what_decodes_reencodes_identically(
            bytes in vec(any::<u8>(), 0..2 * COMMAND_SIZE_MAX)
        ) {
            check_canonical(&bytes)?;
        }

        #[test]
        fn random_bodies_behind_a_valid_header_decode_canonically_or_fail_cleanly(
            bytes in valid_header_random_body()
        ) {
            check_canonical(&bytes)?;
        }

        #[test]
        fn a_command_with_one_byte_changed_is_rejected_or_reencodes_to_the_changed_bytes(
            cmd in arb_command(), at in any::<prop::sample::Index>(), byte in any::<u8>()
        ) {
            let mut bytes = encode_cmd(&cmd);
            let i = at.index(bytes.len());
            bytes[i] = byte;
            check_canonical(&bytes)?;
        }

        #[test]
        fn an_event_with_one_byte_changed_is_rejected_or_reencodes_to_the_changed_bytes(
            ev in arb_event(), at in any::<prop::sample::Index>(), byte in any::<u8>()
        ) {
            let mut bytes = encode_ev(&ev);
            let i = at.index(bytes.len());
            bytes[i] = byte;
            check_canonical(&bytes)?;
        }

        #[test]
        fn every_truncation_of_a_command_reports_truncated(cmd in arb_command()) {
            check_truncations(&encode_cmd(&cmd), decode_command)?;
        }

        #[test]
        fn every_truncation_of_an_event_reports_truncated(ev in arb_event()) {
            check_truncations(&encode_ev(&ev), decode_event)?;
        }

        #[test]
        fn a_stream_of_records_decodes_in_order(
            cmds in vec(arb_command(), 0..8), evs in vec(arb_event(), 0..8)
        ) {
            let mut stream = Vec::new();
            cmds.iter().for_each(|c| encode_command_vec(c, &mut stream));
            let mut rest = &stream[..];
            for cmd in &cmds {
                let (got, n) = decode_command(rest).unwrap();
                prop_assert_eq!(&got, cmd);
                rest = &rest[n..];
            }
            prop_assert!(rest.is_empty());

            let mut stream = Vec::new();
            evs.iter().for_each(|e| encode_event_vec(e, &mut stream));
            let mut rest = &stream[..];
            for ev in &evs {
                let (got, n) = decode_event(rest).unwrap();
                prop_assert_eq!(&got, ev);
                rest = &rest[n..];
            }
            prop_assert!(rest.is_empty());
        }
    }

    // ---- golden bytes: a failure here means the wire layout changed ----

    fn hex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits
            .chunks(2)
            .map(|d| u8::from_str_radix(std::str::from_utf8(d).unwrap(), 16).unwrap())
            .collect()
    }

    fn golden_place() -> Command {
        Command::Place(PlaceOrder {
            account: 7,
            market: 3,
            client_order_id: 0x1122_3344_5566_7788,
            side: Side::Sell,
            kind: OrderKind::Limit,
            tif: TimeInForce::PostOnly,
            price: 50_000,
            qty: 12,
            quote_budget: 0,
            stp: StpMode::CancelOldest,
        })
    }

    #[test]
    fn golden_place_command_bytes_are_pinned() {
        let expected = hex("01 01 2c 00  07 00 00 00 \
             03 00 00 00  02 01 04 02 \
             88 77 66 55 44 33 22 11 \
             50 c3 00 00 00 00 00 00 \
             0c 00 00 00 00 00 00 00 \
             00 00 00 00 00 00 00 00");
        assert_eq!(encode_cmd(&golden_place()), expected);
        assert_eq!(decode_command(&expected), Ok((golden_place(), 48)));
    }

    #[test]
    fn golden_trade_event_bytes_are_pinned() {
        let trade = Event::Trade {
            market: 3,
            maker_order_id: 41,
            taker_order_id: 42,
            maker_account: 7,
            taker_account: 9,
            taker_side: Side::Buy,
            price: 50_000,
            qty: 12,
            maker_fee: -5,
            taker_fee: 60,
            maker_remaining: 0,
            taker_remaining: 3,
        };
        let expected = hex("82 01 54 00  03 00 00 00 \
             07 00 00 00  09 00 00 00 \
             01 00 00 00 00 00 00 00 \
             29 00 00 00 00 00 00 00 \
             2a 00 00 00 00 00 00 00 \
             50 c3 00 00 00 00 00 00 \
             0c 00 00 00 00 00 00 00 \
             fb ff ff ff ff ff ff ff \
             3c 00 00 00 00 00 00 00 \
             00 00 00 00 00 00 00 00 \
             03 00 00 00 00 00 00 00");
        assert_eq!(encode_ev(&trade), expected);
        assert_eq!(decode_event(&expected), Ok((trade, 88)));
    }

    // ---- the header ----

    #[test]
    fn unknown_kinds_are_rejected_and_commands_and_events_do_not_mix() {
        let mut bytes = encode_cmd(&golden_place());
        assert_eq!(decode_event(&bytes), Err(DecodeError::UnknownKind(1)));
        bytes[0] = 0;
        assert_eq!(decode_command(&bytes), Err(DecodeError::UnknownKind(0)));
        bytes[0] = 5; // between the trading and the admin kinds
        assert_eq!(decode_command(&bytes), Err(DecodeError::UnknownKind(5)));

        let ev = encode_ev(&Event::AdminDone {
            kind: CommandKind::Deposit,
            id: 1,
        });
        assert_eq!(decode_command(&ev), Err(DecodeError::UnknownKind(0x8A)));
    }

    #[test]
    fn only_known_versions_are_accepted() {
        for version in [0, CODEC_VERSION + 1, 255] {
            let mut bytes = encode_cmd(&golden_place());
            bytes[1] = version;
            assert_eq!(
                decode_command(&bytes),
                Err(DecodeError::UnsupportedVersion { kind: 1, version })
            );
            let mut bytes = encode_ev(&Event::CancelAllDone {
                account: 1,
                count: 2,
            });
            bytes[1] = version;
            assert_eq!(
                decode_event(&bytes),
                Err(DecodeError::UnsupportedVersion {
                    kind: event_kind::CANCEL_ALL_DONE,
                    version
                })
            );
        }
    }

    #[test]
    fn body_length_must_be_exactly_the_kinds_length() {
        let mut bytes = encode_cmd(&golden_place());
        bytes.extend_from_slice(&[0; 8]);
        bytes[2..4].copy_from_slice(&52u16.to_le_bytes());
        assert_eq!(
            decode_command(&bytes),
            Err(DecodeError::BadLength {
                kind: 1,
                expected: 44,
                got: 52
            })
        );
        bytes[2..4].copy_from_slice(&36u16.to_le_bytes());
        assert_eq!(
            decode_command(&bytes),
            Err(DecodeError::BadLength {
                kind: 1,
                expected: 44,
                got: 36
            })
        );
    }

    // ---- field validation ----

    fn decode_patched_command(cmd: Command, at: usize, byte: u8) -> Result<Command, DecodeError> {
        let mut bytes = encode_cmd(&cmd);
        bytes[at] = byte;
        decode_command(&bytes).map(|(c, _)| c)
    }

    fn decode_patched_event(ev: Event, at: usize, byte: u8) -> Result<Event, DecodeError> {
        let mut bytes = encode_ev(&ev);
        bytes[at] = byte;
        decode_event(&bytes).map(|(e, _)| e)
    }

    fn invalid(field: &'static str, value: u64) -> DecodeError {
        DecodeError::InvalidField { field, value }
    }

    #[test]
    fn enum_bytes_outside_their_range_are_rejected() {
        let place = golden_place();
        assert_eq!(
            decode_patched_command(place, 12, 0),
            Err(invalid("side", 0))
        );
        assert_eq!(
            decode_patched_command(place, 12, 3),
            Err(invalid("side", 3))
        );
        assert_eq!(
            decode_patched_command(place, 13, 3),
            Err(invalid("kind", 3))
        );
        assert_eq!(decode_patched_command(place, 14, 5), Err(invalid("tif", 5)));
        assert_eq!(decode_patched_command(place, 15, 4), Err(invalid("stp", 4)));

        let status = Command::SetMarketStatus {
            market: 1,
            status: MarketStatus::Halted,
            cancel_resting: true,
        };
        assert_eq!(
            decode_patched_command(status, 8, 0),
            Err(invalid("status", 0))
        );

        let cancelled = Event::Cancelled {
            order_id: 1,
            account: 2,
            market: 3,
            remaining_qty: 4,
            reason: CancelReason::Requested,
        };
        assert_eq!(
            decode_patched_event(cancelled, 12, 8),
            Err(invalid("reason", 8))
        );

        let rejected = Event::Rejected {
            kind: CommandKind::Place,
            account: 1,
            order_ref: 2,
            reason: RejectReason::InsufficientBalance,
        };
        assert_eq!(
            decode_patched_event(rejected, 8, 5),
            Err(invalid("command_kind", 5))
        );
        assert_eq!(
            decode_patched_event(rejected, 10, 0),
            Err(invalid("reason", 0))
        );
        assert_eq!(
            decode_patched_event(rejected, 11, 1),
            Err(invalid("reason", 256 + 16))
        );
    }

    #[test]
    fn bool_bytes_other_than_zero_or_one_are_rejected() {
        let status = Command::SetMarketStatus {
            market: 1,
            status: MarketStatus::Halted,
            cancel_resting: false,
        };
        assert_eq!(
            decode_patched_command(status, 9, 2),
            Err(invalid("cancel_resting", 2))
        );
        let funds = Event::Funds {
            account: 1,
            asset: 2,
            amount: 3,
            available: 4,
            external_ref: 5,
            duplicate: true,
        };
        assert_eq!(
            decode_patched_event(funds, 12, 0xff),
            Err(invalid("duplicate", 0xff))
        );
    }

    #[test]
    fn option_tags_are_validated_and_absent_values_must_be_zero() {
        let all = Command::CancelAll {
            account: 1,
            market: None,
        };
        assert_eq!(
            decode_patched_command(all, 8, 2),
            Err(invalid("market_tag", 2))
        );
        assert_eq!(
            decode_patched_command(all, 12, 9),
            Err(invalid("market", 9))
        );
        assert_eq!(
            decode_patched_command(all, 8, 1),
            Ok(Command::CancelAll {
                account: 1,
                market: Some(0)
            })
        );

        let tier = Command::SetFeeTier {
            account: 1,
            market: 2,
            fees: None,
        };
        assert_eq!(
            decode_patched_command(tier, 12, 7),
            Err(invalid("fees_tag", 7))
        );
        assert_eq!(
            decode_patched_command(tier, 20, 1),
            Err(invalid("taker_fee_ppm", 1))
        );

        let cancel = Command::Cancel {
            account: 1,
            market: 2,
            order: OrderRef::Client(3),
        };
        assert_eq!(
            decode_patched_command(cancel, 12, 0),
            Err(invalid("order_ref_tag", 0))
        );
        assert_eq!(
            decode_patched_command(cancel, 12, 3),
            Err(invalid("order_ref_tag", 3))
        );
    }

    #[test]
    fn non_zero_padding_is_rejected_so_encodings_stay_canonical() {
        for kind in CommandKind::ALL {
            let cmd = blank_command(kind);
            for row in command_rows(kind).iter().filter(|r| r.name == PADDING) {
                for at in row.offset..row.offset + row.size {
                    assert_eq!(
                        decode_patched_command(cmd, at, 0x40),
                        Err(invalid("padding", 0x40)),
                        "{kind:?} byte {at}"
                    );
                }
            }
        }
        for kind in event_kind::ALL {
            let ev = blank_event(kind).unwrap();
            for row in event_rows(kind).iter().filter(|r| r.name == PADDING) {
                for at in row.offset..row.offset + row.size {
                    assert_eq!(
                        decode_patched_event(ev, at, 1),
                        Err(invalid("padding", 1)),
                        "{kind:#04x} byte {at}"
                    );
                }
            }
        }
    }

    // ---- API contract ----

    #[test]
    fn vec_helpers_append_after_existing_bytes() {
        let mut out = vec![9u8; 3];
        encode_command_vec(&golden_place(), &mut out);
        assert_eq!(out.len(), 3 + 48);
        assert_eq!(&out[..3], &[9, 9, 9]);
        assert_eq!(decode_command(&out[3..]), Ok((golden_place(), 48)));

        let ev = Event::Level {
            market: 1,
            side: Side::Sell,
            price: 10,
            total_qty: 0,
        };
        encode_event_vec(&ev, &mut out);
        assert_eq!(out.len(), 3 + 48 + 32);
        assert_eq!(decode_event(&out[51..]), Ok((ev, 32)));
    }

    #[test]
    #[should_panic(expected = "COMMAND_SIZE_MAX")]
    fn encode_command_panics_if_the_buffer_is_shorter_than_the_maximum() {
        // Even though this command would fit in 8 bytes.
        encode_command(
            &Command::CreateAccount { account: 1 },
            &mut [0u8; COMMAND_SIZE_MAX - 1],
        );
    }

    #[test]
    #[should_panic(expected = "EVENT_SIZE_MAX")]
    fn encode_event_panics_if_the_buffer_is_shorter_than_the_maximum() {
        let ev = Event::CancelAllDone {
            account: 1,
            count: 0,
        };
        encode_event(&ev, &mut [0u8; EVENT_SIZE_MAX - 1]);
    }

    #[test]
    fn errors_display_what_went_wrong() {
        let cases = [
            (
                DecodeError::Truncated { need: 48, have: 5 },
                "need 48 bytes, have 5",
            ),
            (DecodeError::UnknownKind(0x42), "unknown message kind 0x42"),
            (
                DecodeError::UnsupportedVersion {
                    kind: 1,
                    version: 2,
                },
                "unsupported version 2",
            ),
            (
                DecodeError::BadLength {
                    kind: 1,
                    expected: 44,
                    got: 4,
                },
                "expected 44, got 4",
            ),
            (invalid("side", 9), "invalid value 9 in field `side`"),
        ];
        for (err, text) in cases {
            assert!(err.to_string().contains(text), "{err}");
        }
    }

    // ---- layouts: sizes and documentation are derived from the one walk per kind ----

    const PADDING: &str = "(padding)";

    #[derive(Debug)]
    struct Row {
        offset: usize,
        size: usize,
        name: &'static str,
        ty: &'static str,
    }

    /// A visitor that records the layout instead of reading or writing bytes.
    struct Describer {
        pos: usize,
        rows: Vec<Row>,
    }

    impl Describer {
        fn new() -> Describer {
            Describer {
                pos: HEADER_SIZE,
                rows: Vec::new(),
            }
        }
        fn row(&mut self, size: usize, name: &'static str, ty: &'static str) -> R {
            self.rows.push(Row {
                offset: self.pos,
                size,
                name,
                ty,
            });
            self.pos += size;
            Ok(())
        }
    }

    impl Visitor for Describer {
        fn u8(&mut self, name: &'static str, ty: &'static str, _: &mut u8) -> R {
            self.row(1, name, ty)
        }
        fn u16(&mut self, name: &'static str, ty: &'static str, _: &mut u16) -> R {
            self.row(2, name, ty)
        }
        fn u32(&mut self, name: &'static str, ty: &'static str, _: &mut u32) -> R {
            self.row(4, name, ty)
        }
        fn u64(&mut self, name: &'static str, ty: &'static str, _: &mut u64) -> R {
            self.row(8, name, ty)
        }
        fn bytes<const N: usize>(
            &mut self,
            name: &'static str,
            ty: &'static str,
            _: &mut [u8; N],
        ) -> R {
            self.row(N, name, ty)
        }
        fn pad(&mut self, n: usize) -> R {
            self.row(n, PADDING, "zero")
        }
    }

    fn command_rows(kind: CommandKind) -> Vec<Row> {
        let mut d = Describer::new();
        visit_command(&mut d, &mut blank_command(kind)).unwrap();
        d.rows
    }

    fn event_rows(kind: u8) -> Vec<Row> {
        let mut d = Describer::new();
        visit_event(&mut d, &mut blank_event(kind).unwrap()).unwrap();
        d.rows
    }

    fn end(rows: &[Row]) -> usize {
        rows.last().map_or(HEADER_SIZE, |r| r.offset + r.size)
    }

    fn event_name(kind: u8) -> &'static str {
        use event_kind::*;
        match kind {
            ACCEPTED => "Accepted",
            TRADE => "Trade",
            CANCELLED => "Cancelled",
            REPLACED => "Replaced",
            LEVEL => "Level",
            REJECTED => "Rejected",
            FUNDS => "Funds",
            MARKET_STATUS => "MarketStatus",
            CANCEL_ALL_DONE => "CancelAllDone",
            ADMIN_DONE => "AdminDone",
            _ => unreachable!(),
        }
    }

    #[test]
    fn size_tables_match_layouts_and_every_message_is_8_byte_aligned() {
        let check = |name: String, rows: &[Row], len: usize| {
            assert_eq!(end(rows), len, "{name}: walk and size table disagree");
            assert_eq!(len % ALIGN, 0, "{name}: not a multiple of {ALIGN}");
            for r in rows {
                // Natural alignment keeps the records readable in place by tools.
                if r.name != PADDING && !r.ty.starts_with('[') {
                    assert_eq!(r.offset % r.size, 0, "{name}: {} misaligned", r.name);
                }
            }
        };
        for kind in CommandKind::ALL {
            check(format!("{kind:?}"), &command_rows(kind), command_len(kind));
        }
        for kind in event_kind::ALL {
            check(
                event_name(kind).into(),
                &event_rows(kind),
                event_len(kind).unwrap(),
            );
        }
        let cmd_max = CommandKind::ALL.into_iter().map(command_len).max();
        let ev_max = event_kind::ALL.into_iter().filter_map(event_len).max();
        assert_eq!(cmd_max, Some(COMMAND_SIZE_MAX));
        assert_eq!(ev_max, Some(EVENT_SIZE_MAX));
    }

    fn table(title: &str, kind: u8, rows: &[Row]) -> String {
        let len = end(rows);
        let mut s = format!(
            "### {title} (kind `{kind:#04x}`, {len} bytes)\n\n\
             | offset | size | field | type |\n\
             |-------:|-----:|-------|------|\n\
             | 0 | 1 | kind | u8 = `{kind:#04x}` |\n\
             | 1 | 1 | version | u8 = 1 |\n\
             | 2 | 2 | body_len | u16 = {} |\n",
            len - HEADER_SIZE
        );
        for r in rows {
            s += &format!("| {} | {} | {} | {} |\n", r.offset, r.size, r.name, r.ty);
        }
        s
    }

    /// The generated part of `docs/engine-encoding.md`.
    fn generated_docs() -> String {
        let mut s = String::from("## Commands\n\n");
        for kind in CommandKind::ALL {
            s += &table(&format!("{kind:?}"), kind as u8, &command_rows(kind));
            s += "\n";
        }
        s += "## Events\n\n";
        for kind in event_kind::ALL {
            s += &table(event_name(kind), kind, &event_rows(kind));
            s += "\n";
        }
        s
    }

    #[test]
    fn the_documented_layouts_match_the_code() {
        const BEGIN: &str = "<!-- BEGIN GENERATED LAYOUTS -->\n";
        const END: &str = "<!-- END GENERATED LAYOUTS -->";
        let doc = include_str!("../../docs/engine-encoding.md");
        let generated = generated_docs();
        let found = doc
            .split_once(BEGIN)
            .and_then(|(_, rest)| rest.split_once(END))
            .map(|(inside, _)| inside.trim());
        assert!(
            found == Some(generated.trim()),
            "docs/engine-encoding.md is out of date; put this between the markers:\n{generated}"
        );
    }
}
