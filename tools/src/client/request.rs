//! Requests without ids (the client numbers them) and responses.

use ringex_engine::{
    Amount, ClientOrderId, Command, MarketId, OrderKind, OrderRef, Price, Qty, Side, StpMode,
    TimeInForce,
};
use ringex_gateway::protocol::{
    template, AdminAck, AdminRequest, Balance, BalanceQuery, Cancel, Cancelled, ClientMessage,
    Filled, MassCancel, MassCancelDone, NewOrder, OpenOrder, OpenOrdersQuery, OrderAccepted,
    OrderRejected, Promoted, Replace, Replaced, ServerMessage,
};

/// The fields of a new order. Build with [`OrderParams::limit`], [`OrderParams::market`]
/// or [`OrderParams::market_buy_budget`], then adjust with the builder methods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrderParams {
    pub market: MarketId,
    pub side: Side,
    pub kind: OrderKind,
    pub tif: TimeInForce,
    pub stp: StpMode,
    /// Ticks; zero for market orders.
    pub price: Price,
    /// Lots; zero only for a market buy by budget.
    pub qty: Qty,
    /// Market buys by budget only (quote minor units, fees included).
    pub quote_budget: Amount,
    /// Zero = none.
    pub client_order_id: ClientOrderId,
}

impl OrderParams {
    /// A GTC limit order without self-trade prevention or client order id.
    pub fn limit(market: MarketId, side: Side, price: Price, qty: Qty) -> OrderParams {
        OrderParams {
            market,
            side,
            kind: OrderKind::Limit,
            tif: TimeInForce::Gtc,
            stp: StpMode::None,
            price,
            qty,
            quote_budget: 0,
            client_order_id: 0,
        }
    }

    /// An IOC market order by quantity.
    pub fn market(market: MarketId, side: Side, qty: Qty) -> OrderParams {
        OrderParams {
            kind: OrderKind::Market,
            tif: TimeInForce::Ioc,
            ..OrderParams::limit(market, side, 0, qty)
        }
    }

    /// An IOC market buy spending at most `budget` quote minor units, fees included.
    pub fn market_buy_budget(market: MarketId, budget: Amount) -> OrderParams {
        OrderParams {
            quote_budget: budget,
            ..OrderParams::market(market, Side::Buy, 0)
        }
    }

    pub fn tif(mut self, tif: TimeInForce) -> OrderParams {
        self.tif = tif;
        self
    }

    pub fn stp(mut self, stp: StpMode) -> OrderParams {
        self.stp = stp;
        self
    }

    pub fn client_order_id(mut self, id: ClientOrderId) -> OrderParams {
        self.client_order_id = id;
        self
    }
}

/// An application request before the client gives it a request id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    NewOrder(OrderParams),
    Cancel {
        market: MarketId,
        order: OrderRef,
    },
    Replace {
        market: MarketId,
        order: OrderRef,
        price: Price,
        qty: Qty,
    },
    /// `market = 0`: all markets.
    MassCancel {
        market: MarketId,
    },
    BalanceQuery,
    /// `market = 0`: all markets.
    OpenOrdersQuery {
        market: MarketId,
    },
    /// An admin engine command (admin listener and admin key only).
    Admin(Command),
    /// Make a standby the primary (admin listener and admin key only).
    Promote,
}

impl Request {
    /// Whether this request can be encoded: an `Admin` request must carry an admin
    /// command.
    pub fn is_valid(&self) -> bool {
        match self {
            Request::Admin(c) => c.kind().is_admin(),
            _ => true,
        }
    }

    /// The wire template of this request (callers check [`Request::is_valid`] first).
    pub fn template_id(&self) -> u16 {
        match self {
            Request::NewOrder(_) => template::NEW_ORDER,
            Request::Cancel { .. } => template::CANCEL,
            Request::Replace { .. } => template::REPLACE,
            Request::MassCancel { .. } => template::MASS_CANCEL,
            Request::BalanceQuery => template::BALANCE_QUERY,
            Request::OpenOrdersQuery { .. } => template::OPEN_ORDERS_QUERY,
            Request::Admin(c) => c.kind() as u16 + template::ADMIN_OFFSET,
            Request::Promote => template::PROMOTE,
        }
    }

    pub fn to_message(&self, request_id: u64) -> ClientMessage {
        match *self {
            Request::NewOrder(p) => ClientMessage::NewOrder(NewOrder {
                request_id,
                market: p.market,
                client_order_id: p.client_order_id,
                side: p.side,
                kind: p.kind,
                tif: p.tif,
                stp: p.stp,
                price: p.price,
                qty: p.qty,
                quote_budget: p.quote_budget,
            }),
            Request::Cancel { market, order } => ClientMessage::Cancel(Cancel {
                request_id,
                market,
                order,
            }),
            Request::Replace {
                market,
                order,
                price,
                qty,
            } => ClientMessage::Replace(Replace {
                request_id,
                market,
                order,
                price,
                qty,
            }),
            Request::MassCancel { market } => {
                ClientMessage::MassCancel(MassCancel { request_id, market })
            }
            Request::BalanceQuery => ClientMessage::BalanceQuery(BalanceQuery { request_id }),
            Request::OpenOrdersQuery { market } => {
                ClientMessage::OpenOrdersQuery(OpenOrdersQuery { request_id, market })
            }
            Request::Admin(command) => ClientMessage::Admin(AdminRequest {
                request_id,
                command,
            }),
            Request::Promote => ClientMessage::Promote { request_id },
        }
    }
}

/// Every message one request caused, in arrival order, without the final `RequestDone`
/// (docs/protocol.md 3.3: the server ends every processed request's answer with it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Response {
    pub request_id: u64,
    pub messages: Vec<ServerMessage>,
}

/// What a blocking [`crate::client::Client::new_order`] returns.
pub type OrderReport = Response;

impl Response {
    pub fn rejected(&self) -> Option<&OrderRejected> {
        self.messages.iter().find_map(|m| match m {
            ServerMessage::OrderRejected(r) => Some(r),
            _ => None,
        })
    }

    pub fn accepted(&self) -> Option<&OrderAccepted> {
        self.messages.iter().find_map(|m| match m {
            ServerMessage::OrderAccepted(a) => Some(a),
            _ => None,
        })
    }

    pub fn fills(&self) -> impl Iterator<Item = &Filled> {
        self.messages.iter().filter_map(|m| match m {
            ServerMessage::Filled(f) => Some(f),
            _ => None,
        })
    }

    pub fn cancelled(&self) -> impl Iterator<Item = &Cancelled> {
        self.messages.iter().filter_map(|m| match m {
            ServerMessage::Cancelled(c) => Some(c),
            _ => None,
        })
    }

    pub fn replaced(&self) -> Option<&Replaced> {
        self.messages.iter().find_map(|m| match m {
            ServerMessage::Replaced(r) => Some(r),
            _ => None,
        })
    }

    pub fn mass_cancel_done(&self) -> Option<&MassCancelDone> {
        self.messages.iter().find_map(|m| match m {
            ServerMessage::MassCancelDone(d) => Some(d),
            _ => None,
        })
    }

    pub fn promoted(&self) -> Option<&Promoted> {
        self.messages.iter().find_map(|m| match m {
            ServerMessage::Promoted(p) => Some(p),
            _ => None,
        })
    }

    pub fn admin_ack(&self) -> Option<&AdminAck> {
        self.messages.iter().find_map(|m| match m {
            ServerMessage::AdminAck(a) => Some(a),
            _ => None,
        })
    }

    pub fn balances(&self) -> Vec<Balance> {
        self.messages
            .iter()
            .filter_map(|m| match m {
                ServerMessage::Balance(b) => Some(*b),
                _ => None,
            })
            .collect()
    }

    pub fn open_orders(&self) -> Vec<OpenOrder> {
        self.messages
            .iter()
            .filter_map(|m| match m {
                ServerMessage::OpenOrder(o) => Some(*o),
                _ => None,
            })
            .collect()
    }

    /// The exchange order id of an accepted order.
    pub fn order_id(&self) -> Option<u64> {
        self.accepted().map(|a| a.order_id)
    }

    /// Lots filled by this request.
    pub fn filled_qty(&self) -> Qty {
        self.fills().map(|f| f.qty).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_requests_must_be_admin_commands() {
        let ok = Request::Admin(Command::CreateAccount { account: 5 });
        assert!(ok.is_valid());
        assert_eq!(ok.template_id(), template::CREATE_ACCOUNT);
        let bad = Request::Admin(Command::CancelAll {
            account: 5,
            market: None,
        });
        assert!(!bad.is_valid());
    }
}
