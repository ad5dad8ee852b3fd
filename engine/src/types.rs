//! Scalar types and small enums shared by the book, the exchange and the codec.
//!
//! Units: prices are in ticks (`Price`), quantities in lots (`Qty`), money in the minor
//! units of an asset (`Amount`). The quote value of `qty` lots at `price` ticks is
//! `price * qty * tick_size` minor units of the quote asset, where `tick_size` is a
//! property of the market (see [`crate::MarketSpec`]). No floats anywhere.

/// Price in ticks. Always positive for a valid order.
pub type Price = i64;
/// Quantity in lots.
pub type Qty = u64;
/// Money in an asset's minor units (satoshi, cents...).
pub type Amount = i64;
/// Exchange-assigned order id: dense, starting at 1, never reused.
pub type OrderId = u64;
/// Client-chosen order id, unique among one account's open orders. Zero means "none".
pub type ClientOrderId = u64;
pub type AccountId = u32;
pub type AssetId = u32;
pub type MarketId = u32;

/// The account that collects every fee. It exists from genesis.
pub const FEE_ACCOUNT: AccountId = 0;
/// Fees are expressed in parts per million of the quote notional.
pub const PPM: u64 = 1_000_000;
/// Asset and market ids are small dense integers below this bound.
pub const ID_MAX: u32 = 1 << 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Side {
    Buy = 1,
    Sell = 2,
}

impl Side {
    pub fn opposite(self) -> Side {
        match self {
            Side::Buy => Side::Sell,
            Side::Sell => Side::Buy,
        }
    }
    pub fn from_u8(v: u8) -> Option<Side> {
        match v {
            1 => Some(Side::Buy),
            2 => Some(Side::Sell),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum OrderKind {
    Limit = 1,
    Market = 2,
}

impl OrderKind {
    pub fn from_u8(v: u8) -> Option<OrderKind> {
        match v {
            1 => Some(OrderKind::Limit),
            2 => Some(OrderKind::Market),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum TimeInForce {
    /// Good till cancelled: the remainder rests on the book.
    Gtc = 1,
    /// Immediate or cancel: the remainder is cancelled and reported.
    Ioc = 2,
    /// Fill or kill: fills entirely at once, or not at all.
    Fok = 3,
    /// Rests without taking; rejected if it would take on entry.
    PostOnly = 4,
}

impl TimeInForce {
    pub fn from_u8(v: u8) -> Option<TimeInForce> {
        match v {
            1 => Some(TimeInForce::Gtc),
            2 => Some(TimeInForce::Ioc),
            3 => Some(TimeInForce::Fok),
            4 => Some(TimeInForce::PostOnly),
            _ => None,
        }
    }
    /// Whether a remainder of this order may rest on the book.
    pub fn rests(self) -> bool {
        matches!(self, TimeInForce::Gtc | TimeInForce::PostOnly)
    }
}

/// Self-trade prevention: what happens when an incoming order meets a resting order of
/// the same owner. The incoming (taker) order's mode decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum StpMode {
    /// Trade with yourself like with anyone else.
    None = 0,
    /// Cancel the incoming order's remainder; the resting order stays.
    CancelNewest = 1,
    /// Cancel the resting order and keep matching.
    CancelOldest = 2,
    /// Cancel both the resting order and the incoming remainder.
    CancelBoth = 3,
}

impl StpMode {
    pub fn from_u8(v: u8) -> Option<StpMode> {
        match v {
            0 => Some(StpMode::None),
            1 => Some(StpMode::CancelNewest),
            2 => Some(StpMode::CancelOldest),
            3 => Some(StpMode::CancelBoth),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum MarketStatus {
    /// Everything allowed.
    Open = 1,
    /// No trading at all: places, replaces and cancels are rejected.
    Halted = 2,
    /// Only cancels (and cancel-all) are accepted.
    CancelOnly = 3,
    /// Delisted: like halted, and it is expected to have no resting orders.
    Closed = 4,
}

impl MarketStatus {
    pub fn from_u8(v: u8) -> Option<MarketStatus> {
        match v {
            1 => Some(MarketStatus::Open),
            2 => Some(MarketStatus::Halted),
            3 => Some(MarketStatus::CancelOnly),
            4 => Some(MarketStatus::Closed),
            _ => None,
        }
    }
}

/// Why an order left the book (or never reached it) without being fully filled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum CancelReason {
    /// A cancel command from the owner.
    Requested = 1,
    /// Remainder of an IOC or market order.
    ImmediateOrCancel = 2,
    /// A fill-or-kill order that could not fill entirely.
    FillOrKill = 3,
    /// Self-trade prevention cancelled this order.
    SelfTrade = 4,
    /// A cancel-all command from the owner.
    CancelAll = 5,
    /// An operator changed the market's status with `cancel_resting`.
    MarketStatus = 6,
    /// A market buy by quote budget finished: the unspent budget is released.
    BudgetDone = 7,
}

impl CancelReason {
    pub fn from_u8(v: u8) -> Option<CancelReason> {
        use CancelReason::*;
        [
            Requested,
            ImmediateOrCancel,
            FillOrKill,
            SelfTrade,
            CancelAll,
            MarketStatus,
            BudgetDone,
        ]
        .into_iter()
        .find(|r| *r as u8 == v)
    }
}

/// Every rejection carries exactly one of these. The numeric values are part of the wire
/// format and never change meaning; new reasons are appended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum RejectReason {
    UnknownMarket = 1,
    UnknownAccount = 2,
    UnknownAsset = 3,
    /// Cancel or replace of an order that is not resting (or not the caller's).
    UnknownOrder = 4,
    AccountSuspended = 5,
    MarketHalted = 6,
    MarketCancelOnly = 7,
    MarketClosed = 8,
    /// Quantity is zero, or the combination of quantity and budget is not allowed.
    InvalidQuantity = 9,
    /// Price is not positive, or a market order carries a price.
    InvalidPrice = 10,
    /// Time in force not allowed for this order kind (e.g. a GTC market order).
    InvalidTimeInForce = 11,
    BelowMinQuantity = 12,
    AboveMaxQuantity = 13,
    /// Limit price outside the band around the market's reference price.
    PriceOutsideBand = 14,
    DuplicateClientOrderId = 15,
    InsufficientBalance = 16,
    PostOnlyWouldTake = 17,
    /// An amount computation would overflow 64 bits.
    AmountOverflow = 18,
    /// A market buy by quantity needs a price band to bound its hold.
    MarketBuyNeedsBand = 19,
    AssetExists = 20,
    MarketExists = 21,
    AccountExists = 22,
    /// Id zero or at or above [`crate::ID_MAX`], or a market whose base equals its quote.
    InvalidId = 23,
    /// Tick size, lot size, quantity bounds or band out of range.
    InvalidMarketSpec = 24,
    /// A fee above 100% (1,000,000 ppm).
    InvalidFee = 25,
    /// Deposit or withdraw amount not positive.
    InvalidAmount = 26,
    ApiKeyExists = 27,
    UnknownApiKey = 28,
    /// Reserved for the gateway: request rate above the configured limit.
    RateLimited = 29,
    /// Reserved for the gateway: a decimal price that is not a whole number of ticks.
    BadTick = 30,
    /// Reserved for the gateway: the request could not be decoded.
    Malformed = 31,
    /// Asset decimals above 18.
    InvalidDecimals = 32,
    /// Reserved for the node: the command was not written to the journal (the journal
    /// had failed, or the disk is nearly full). It was not applied and never will be.
    Unavailable = 33,
    /// Reserved for the node: the command was written to the journal, but the disk failed
    /// before it was confirmed durable. It was not applied in this run; if its record
    /// survived, the restart's replay applies it. Query before resubmitting.
    OutcomeUnknown = 34,
    /// The account already has its market's maximum of resting orders there, or the
    /// market's book holds its maximum (a GTC or post-only order could rest).
    TooManyOpenOrders = 35,
}

impl RejectReason {
    pub const ALL: [RejectReason; 35] = {
        use RejectReason::*;
        [
            UnknownMarket,
            UnknownAccount,
            UnknownAsset,
            UnknownOrder,
            AccountSuspended,
            MarketHalted,
            MarketCancelOnly,
            MarketClosed,
            InvalidQuantity,
            InvalidPrice,
            InvalidTimeInForce,
            BelowMinQuantity,
            AboveMaxQuantity,
            PriceOutsideBand,
            DuplicateClientOrderId,
            InsufficientBalance,
            PostOnlyWouldTake,
            AmountOverflow,
            MarketBuyNeedsBand,
            AssetExists,
            MarketExists,
            AccountExists,
            InvalidId,
            InvalidMarketSpec,
            InvalidFee,
            InvalidAmount,
            ApiKeyExists,
            UnknownApiKey,
            RateLimited,
            BadTick,
            Malformed,
            InvalidDecimals,
            Unavailable,
            OutcomeUnknown,
            TooManyOpenOrders,
        ]
    };

    pub fn from_u16(v: u16) -> Option<RejectReason> {
        RejectReason::ALL.into_iter().find(|r| *r as u16 == v)
    }

    /// A stable snake_case name for logs, metrics labels and JSON.
    pub fn name(self) -> &'static str {
        use RejectReason::*;
        match self {
            UnknownMarket => "unknown_market",
            UnknownAccount => "unknown_account",
            UnknownAsset => "unknown_asset",
            UnknownOrder => "unknown_order",
            AccountSuspended => "account_suspended",
            MarketHalted => "market_halted",
            MarketCancelOnly => "market_cancel_only",
            MarketClosed => "market_closed",
            InvalidQuantity => "invalid_quantity",
            InvalidPrice => "invalid_price",
            InvalidTimeInForce => "invalid_time_in_force",
            BelowMinQuantity => "below_min_quantity",
            AboveMaxQuantity => "above_max_quantity",
            PriceOutsideBand => "price_outside_band",
            DuplicateClientOrderId => "duplicate_client_order_id",
            InsufficientBalance => "insufficient_balance",
            PostOnlyWouldTake => "post_only_would_take",
            AmountOverflow => "amount_overflow",
            MarketBuyNeedsBand => "market_buy_needs_band",
            AssetExists => "asset_exists",
            MarketExists => "market_exists",
            AccountExists => "account_exists",
            InvalidId => "invalid_id",
            InvalidMarketSpec => "invalid_market_spec",
            InvalidFee => "invalid_fee",
            InvalidAmount => "invalid_amount",
            ApiKeyExists => "api_key_exists",
            UnknownApiKey => "unknown_api_key",
            RateLimited => "rate_limited",
            BadTick => "bad_tick",
            Malformed => "malformed",
            InvalidDecimals => "invalid_decimals",
            Unavailable => "unavailable",
            OutcomeUnknown => "outcome_unknown",
            TooManyOpenOrders => "too_many_open_orders",
        }
    }
}

/// A short fixed-size name (asset symbol, market symbol): up to 16 ASCII bytes,
/// zero-padded. Fixed size keeps the binary encoding fixed-layout.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Symbol(pub [u8; 16]);

impl Symbol {
    /// Builds a symbol from a string; `None` if longer than 16 bytes or not printable
    /// ASCII.
    pub fn new(s: &str) -> Option<Symbol> {
        let bytes = s.as_bytes();
        if bytes.is_empty() || bytes.len() > 16 {
            return None;
        }
        if !bytes.iter().all(|b| b.is_ascii_graphic()) {
            return None;
        }
        let mut out = [0u8; 16];
        out[..bytes.len()].copy_from_slice(bytes);
        Some(Symbol(out))
    }

    pub fn as_str(&self) -> &str {
        let len = self.0.iter().position(|b| *b == 0).unwrap_or(16);
        std::str::from_utf8(&self.0[..len]).unwrap_or("?")
    }
}

impl std::fmt::Debug for Symbol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reject_reason_codes_round_trip_and_are_unique() {
        for (i, r) in RejectReason::ALL.iter().enumerate() {
            assert_eq!(*r as u16, i as u16 + 1);
            assert_eq!(RejectReason::from_u16(*r as u16), Some(*r));
        }
        assert_eq!(RejectReason::from_u16(0), None);
        assert_eq!(RejectReason::from_u16(1000), None);
    }

    #[test]
    fn symbol_rejects_empty_long_and_non_ascii() {
        assert!(Symbol::new("").is_none());
        assert!(Symbol::new("ABCDEFGHIJKLMNOPQ").is_none());
        assert!(Symbol::new("BTC USDT").is_none());
        assert_eq!(Symbol::new("BTC-USDT").unwrap().as_str(), "BTC-USDT");
    }
}
