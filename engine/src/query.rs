//! Read-only queries. They change nothing, so they are not journaled and produce no
//! events; the node runs them in ring order, so an answer reflects every command before
//! the query and none after.

use crate::exchange::Exchange;
use crate::types::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Query {
    /// Every asset balance of an account (assets in id order; zero balances included only
    /// for assets the account has touched).
    Balances { account: AccountId },
    /// The account's resting orders, in order id order, in one market or all.
    OpenOrders {
        account: AccountId,
        market: Option<MarketId>,
    },
    /// An API key: what the gateway needs to check a login.
    ApiKey { key_id: u64 },
    /// A market's book by price level: the best `levels` of each side (bids best
    /// first, then asks best first). What a market-data publisher starts from.
    Depth { market: MarketId, levels: u32 },
    /// Every market, in id order, with what a client needs to read its prices and
    /// quantities (the assets' symbols and decimals).
    Markets,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueryReply {
    Balance {
        account: AccountId,
        asset: AssetId,
        available: Amount,
        held: Amount,
    },
    OpenOrder {
        order_id: OrderId,
        account: AccountId,
        market: MarketId,
        client_order_id: ClientOrderId,
        side: Side,
        price: Price,
        /// Remaining quantity.
        qty: Qty,
    },
    ApiKey {
        key_id: u64,
        account: AccountId,
        secret_hash: [u8; 32],
        permissions: u32,
        /// The key's account is suspended.
        account_suspended: bool,
    },
    /// One price level of a [`Query::Depth`].
    Level {
        market: MarketId,
        side: Side,
        price: Price,
        /// Total quantity resting at the price.
        qty: Qty,
    },
    /// One market of a [`Query::Markets`].
    Market {
        market: MarketId,
        symbol: Symbol,
        base: AssetId,
        quote: AssetId,
        base_symbol: Symbol,
        quote_symbol: Symbol,
        base_decimals: u8,
        quote_decimals: u8,
        status: MarketStatus,
        tick_size: Amount,
        lot_size: Amount,
        qty_min: Qty,
        qty_max: Qty,
    },
    /// The last reply of every query: how many replies came before it, and whether the
    /// subject (account, key) exists.
    End { count: u32, found: bool },
}

impl Exchange {
    /// Answers `q` into `out`; always ends with exactly one [`QueryReply::End`].
    pub fn query(&self, q: &Query, out: &mut Vec<QueryReply>) {
        let start = out.len();
        let found = match *q {
            Query::Balances { account } => match self.account(account) {
                None => false,
                Some(a) => {
                    for (asset, b) in a.balances.iter().enumerate() {
                        if self.asset(asset as AssetId).is_some() {
                            out.push(QueryReply::Balance {
                                account,
                                asset: asset as AssetId,
                                available: b.available,
                                held: b.held,
                            });
                        }
                    }
                    true
                }
            },
            Query::OpenOrders { account, market } => match self.account(account) {
                None => false,
                Some(a) => {
                    for (order_id, m, client_order_id) in a.open_orders.sorted_with_client_ids() {
                        if market.is_some_and(|only| only != m) {
                            continue;
                        }
                        let node = self.market(m).and_then(|mk| mk.book.get(order_id));
                        let node = node.expect("an open order rests in its market");
                        out.push(QueryReply::OpenOrder {
                            order_id,
                            account,
                            market: m,
                            client_order_id,
                            side: node.side,
                            price: node.price,
                            qty: node.qty,
                        });
                    }
                    true
                }
            },
            Query::ApiKey { key_id } => match self.api_key(key_id) {
                None => false,
                Some(k) => {
                    out.push(QueryReply::ApiKey {
                        key_id,
                        account: k.account,
                        secret_hash: k.secret_hash,
                        permissions: k.permissions,
                        account_suspended: self.account(k.account).is_some_and(|a| a.suspended),
                    });
                    true
                }
            },
            Query::Depth { market, levels } => match self.market(market) {
                None => false,
                Some(m) => {
                    for side in [Side::Buy, Side::Sell] {
                        for (price, qty) in m.book.depth(side, levels as usize) {
                            out.push(QueryReply::Level {
                                market,
                                side,
                                price,
                                qty,
                            });
                        }
                    }
                    true
                }
            },
            Query::Markets => {
                for id in self.market_ids() {
                    let m = self.market(id).expect("listed market exists");
                    let asset = |a| {
                        self.asset(a)
                            .map_or((Symbol::default(), 0), |a| (a.symbol, a.decimals))
                    };
                    let (base_symbol, base_decimals) = asset(m.spec.base);
                    let (quote_symbol, quote_decimals) = asset(m.spec.quote);
                    out.push(QueryReply::Market {
                        market: id,
                        symbol: m.spec.symbol,
                        base: m.spec.base,
                        quote: m.spec.quote,
                        base_symbol,
                        quote_symbol,
                        base_decimals,
                        quote_decimals,
                        status: m.status,
                        tick_size: m.spec.tick_size,
                        lot_size: m.spec.lot_size,
                        qty_min: m.spec.qty_min,
                        qty_max: m.spec.qty_max,
                    });
                }
                true
            }
        };
        let count = (out.len() - start) as u32;
        out.push(QueryReply::End { count, found });
    }
}

/// What the node's output ring carries: an engine event, or a query's reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Event(crate::event::Event),
    Reply(QueryReply),
}
