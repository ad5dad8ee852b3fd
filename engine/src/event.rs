//! Events: the only output of the engine. A command produces zero or more events, in a
//! documented order (see `engine/README.md`, "Event order").

use crate::command::CommandKind;
use crate::types::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// An order passed validation and its funds are held. Always the first event of an
    /// accepted place.
    Accepted {
        order_id: OrderId,
        account: AccountId,
        market: MarketId,
        client_order_id: ClientOrderId,
        side: Side,
        price: Price,
        qty: Qty,
    },
    /// A fill. `price` is the maker's price. Fees are in quote minor units.
    Trade {
        market: MarketId,
        maker_order_id: OrderId,
        taker_order_id: OrderId,
        maker_account: AccountId,
        taker_account: AccountId,
        taker_side: Side,
        price: Price,
        qty: Qty,
        maker_fee: Amount,
        taker_fee: Amount,
        maker_remaining: Qty,
        taker_remaining: Qty,
    },
    /// An order left the book, or its remainder never reached it. `remaining_qty` is what
    /// was left unfilled.
    Cancelled {
        order_id: OrderId,
        account: AccountId,
        market: MarketId,
        remaining_qty: Qty,
        reason: CancelReason,
    },
    /// A replace was applied. `priority_kept` is true for a pure quantity decrease.
    Replaced {
        order_id: OrderId,
        account: AccountId,
        market: MarketId,
        price: Price,
        qty: Qty,
        priority_kept: bool,
    },
    /// A price level's new total quantity (zero: the level is gone).
    Level {
        market: MarketId,
        side: Side,
        price: Price,
        total_qty: Qty,
    },
    /// A command was refused; nothing changed.
    Rejected {
        kind: CommandKind,
        account: AccountId,
        /// The order the command named (exchange id, client id, or zero).
        order_ref: u64,
        reason: RejectReason,
    },
    /// A balance changed by a deposit or withdrawal (`amount` negative for withdrawals).
    /// `duplicate` is true when the external reference was already applied and nothing
    /// changed.
    Funds {
        account: AccountId,
        asset: AssetId,
        amount: Amount,
        available: Amount,
        external_ref: u64,
        duplicate: bool,
    },
    /// A market's status changed.
    MarketStatus {
        market: MarketId,
        status: MarketStatus,
    },
    /// Cancel-all finished; `count` orders were cancelled.
    CancelAllDone { account: AccountId, count: u32 },
    /// Any other admin command succeeded. `id` is the object it named (asset, market,
    /// account or key id).
    AdminDone { kind: CommandKind, id: u64 },
}
