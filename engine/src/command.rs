//! Commands: the only input of the engine. Every command is journaled before the engine
//! applies it, so a command must carry everything its outcome depends on.

use crate::types::*;

/// Identifies an order in a cancel or replace: by exchange id or by client id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OrderRef {
    Exchange(OrderId),
    Client(ClientOrderId),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlaceOrder {
    pub account: AccountId,
    pub market: MarketId,
    /// Zero means none; otherwise unique among the account's open orders.
    pub client_order_id: ClientOrderId,
    pub side: Side,
    pub kind: OrderKind,
    pub tif: TimeInForce,
    /// Limit price in ticks; must be zero for market orders.
    pub price: Price,
    /// Quantity in lots. Zero only for a market buy by `quote_budget`.
    pub qty: Qty,
    /// Market buys only: spend at most this much quote (fees included) instead of a
    /// quantity. Zero means "by quantity".
    pub quote_budget: Amount,
    pub stp: StpMode,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MarketSpec {
    pub market: MarketId,
    pub symbol: Symbol,
    pub base: AssetId,
    pub quote: AssetId,
    /// Quote minor units per tick per lot: a fill of `q` lots at `p` ticks is worth
    /// `p * q * tick_size` quote minor units.
    pub tick_size: Amount,
    /// Base minor units per lot.
    pub lot_size: Amount,
    pub qty_min: Qty,
    pub qty_max: Qty,
    /// Limit prices must lie within `reference ± reference * band_ppm / 1e6`. Zero disables
    /// the band (and with it market buys by quantity).
    pub band_ppm: u32,
    /// The initial reference price; afterwards the last trade price.
    pub reference_price: Price,
    pub maker_fee_ppm: u32,
    pub taker_fee_ppm: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    // ---- trading ----
    Place(PlaceOrder),
    Cancel {
        account: AccountId,
        market: MarketId,
        order: OrderRef,
    },
    /// Amend price and/or remaining quantity. A price change or a quantity increase loses
    /// time priority; a pure decrease keeps it. The order keeps its id.
    Replace {
        account: AccountId,
        market: MarketId,
        order: OrderRef,
        price: Price,
        qty: Qty,
    },
    /// Cancel every open order of the account, in one market or (`None`) in all markets
    /// that accept cancels.
    CancelAll {
        account: AccountId,
        market: Option<MarketId>,
    },
    // ---- admin ----
    CreateAsset {
        asset: AssetId,
        symbol: Symbol,
        decimals: u8,
    },
    CreateMarket(MarketSpec),
    CreateAccount {
        account: AccountId,
    },
    /// Idempotent by `external_ref`: a repeated reference is acknowledged, not applied.
    Deposit {
        account: AccountId,
        asset: AssetId,
        amount: Amount,
        external_ref: u64,
    },
    /// Idempotent by `external_ref`; rejected beyond the available balance.
    Withdraw {
        account: AccountId,
        asset: AssetId,
        amount: Amount,
        external_ref: u64,
    },
    SetMarketFees {
        market: MarketId,
        maker_fee_ppm: u32,
        taker_fee_ppm: u32,
    },
    /// Per-account fee override for one market; `None` clears it.
    SetFeeTier {
        account: AccountId,
        market: MarketId,
        fees: Option<(u32, u32)>,
    },
    /// Halting cancels nothing unless `cancel_resting` is set.
    SetMarketStatus {
        market: MarketId,
        status: MarketStatus,
        cancel_resting: bool,
    },
    SuspendAccount {
        account: AccountId,
    },
    ResumeAccount {
        account: AccountId,
    },
    /// The engine stores only the hash of the key's secret, computed by the caller.
    AddApiKey {
        account: AccountId,
        key_id: u64,
        secret_hash: [u8; 32],
        permissions: u32,
    },
    RevokeApiKey {
        key_id: u64,
    },
    /// Caps on resting orders in a market: per account, and in all. A GTC or post-only
    /// order is rejected `too_many_open_orders` when either is reached. Lowering a cap
    /// cancels nothing. Both must be at least 1.
    SetMarketLimits {
        market: MarketId,
        max_open_orders_per_account: u32,
        max_open_orders: u32,
    },
}

/// The command's type as a small number: used in rejects and in the codec.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum CommandKind {
    Place = 1,
    Cancel = 2,
    Replace = 3,
    CancelAll = 4,
    CreateAsset = 16,
    CreateMarket = 17,
    CreateAccount = 18,
    Deposit = 19,
    Withdraw = 20,
    SetMarketFees = 21,
    SetFeeTier = 22,
    SetMarketStatus = 23,
    SuspendAccount = 24,
    ResumeAccount = 25,
    AddApiKey = 26,
    RevokeApiKey = 27,
    SetMarketLimits = 28,
}

impl CommandKind {
    pub const ALL: [CommandKind; 17] = {
        use CommandKind::*;
        [
            Place,
            Cancel,
            Replace,
            CancelAll,
            CreateAsset,
            CreateMarket,
            CreateAccount,
            Deposit,
            Withdraw,
            SetMarketFees,
            SetFeeTier,
            SetMarketStatus,
            SuspendAccount,
            ResumeAccount,
            AddApiKey,
            RevokeApiKey,
            SetMarketLimits,
        ]
    };

    pub fn from_u8(v: u8) -> Option<CommandKind> {
        CommandKind::ALL.into_iter().find(|k| *k as u8 == v)
    }

    pub fn is_admin(self) -> bool {
        (self as u8) >= 16
    }
}

impl Command {
    pub fn kind(&self) -> CommandKind {
        match self {
            Command::Place(_) => CommandKind::Place,
            Command::Cancel { .. } => CommandKind::Cancel,
            Command::Replace { .. } => CommandKind::Replace,
            Command::CancelAll { .. } => CommandKind::CancelAll,
            Command::CreateAsset { .. } => CommandKind::CreateAsset,
            Command::CreateMarket(_) => CommandKind::CreateMarket,
            Command::CreateAccount { .. } => CommandKind::CreateAccount,
            Command::Deposit { .. } => CommandKind::Deposit,
            Command::Withdraw { .. } => CommandKind::Withdraw,
            Command::SetMarketFees { .. } => CommandKind::SetMarketFees,
            Command::SetFeeTier { .. } => CommandKind::SetFeeTier,
            Command::SetMarketStatus { .. } => CommandKind::SetMarketStatus,
            Command::SuspendAccount { .. } => CommandKind::SuspendAccount,
            Command::ResumeAccount { .. } => CommandKind::ResumeAccount,
            Command::AddApiKey { .. } => CommandKind::AddApiKey,
            Command::RevokeApiKey { .. } => CommandKind::RevokeApiKey,
            Command::SetMarketLimits { .. } => CommandKind::SetMarketLimits,
        }
    }
}
