//! Requests without ids (the client numbers them), responses, and the rule that decides
//! when a request's answer is complete.

use ringex_engine::{
    Amount, ClientOrderId, Command, MarketId, OrderKind, OrderRef, Price, Qty, Side, StpMode,
    TimeInForce,
};
use ringex_gateway::protocol::{
    template, AdminAck, AdminRequest, Balance, BalanceQuery, Cancel, Cancelled, ClientMessage,
    Filled, MassCancel, MassCancelDone, NewOrder, OpenOrder, OpenOrdersQuery, OrderAccepted,
    OrderRejected, Replace, Replaced, ServerMessage,
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
        }
    }
}

/// Every message one request caused, in arrival order.
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

/// Where a request's answer stands after the messages seen so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Nothing yet, or a message that must be followed by more (a `Balance` before its
    /// `BalanceEnd`, an IOC order's accept before its fills or cancel).
    Pending,
    /// The last message of the request has arrived.
    Done,
    /// The answer may be complete: a resting order's accept or partial fill, after which
    /// the protocol sends nothing if the order simply rests. See [`Completion`].
    MaybeDone,
}

/// Decides when a request's answer is complete.
///
/// The protocol (docs/protocol.md 3.3) has no explicit "last message of this request"
/// marker. Most requests end with a message that can only be last: `OrderRejected`,
/// `AdminAck`, `BalanceEnd`, `OpenOrdersEnd`, `MassCancelDone`, the `Cancelled` that
/// answers a `Cancel`, the final `Cancelled` of an IOC/FOK/market order or a fill that
/// leaves nothing. A GTC order that rests (fully or after partial fills), and a replace
/// that moved an order (it may then match), end with no such message. For those the
/// tracker says [`Progress::MaybeDone`], and the caller ends the request when a message
/// of a later request (or an unsolicited one) arrives, or after a short grace period with
/// nothing more: the server writes all messages of one engine command together, so on a
/// healthy connection they arrive within microseconds of each other.
#[derive(Clone, Copy, Debug)]
pub struct Completion {
    template_id: u16,
    /// NewOrder: whether the order may rest (GTC limit). Post-only orders rest
    /// without matching, so their accept is final.
    rests: bool,
    post_only: bool,
    order_id: Option<u64>,
    progress: Progress,
}

impl Completion {
    pub fn new(request: &Request) -> Completion {
        let (rests, post_only) = match request {
            Request::NewOrder(p) => (
                p.kind == OrderKind::Limit && p.tif.rests(),
                p.tif == TimeInForce::PostOnly,
            ),
            Request::Replace { .. } => (true, false),
            _ => (false, false),
        };
        Completion {
            template_id: request.template_id(),
            rests,
            post_only,
            order_id: None,
            progress: Progress::Pending,
        }
    }

    pub fn progress(&self) -> Progress {
        self.progress
    }

    /// Feeds one message that carries this request's id.
    pub fn update(&mut self, msg: &ServerMessage) -> Progress {
        use ServerMessage as M;
        let t = self.template_id;
        let p = match msg {
            M::OrderRejected(_) | M::AdminAck(_) | M::BalanceEnd(_) | M::OpenOrdersEnd(_) => {
                Progress::Done
            }
            M::MassCancelDone(_) => Progress::Done,
            M::Cancelled(_) if t == template::CANCEL => Progress::Done,
            M::OrderAccepted(a) if t == template::NEW_ORDER => {
                self.order_id = Some(a.order_id);
                if self.post_only {
                    Progress::Done
                } else if self.rests {
                    Progress::MaybeDone
                } else {
                    Progress::Pending
                }
            }
            M::Replaced(r) if t == template::REPLACE => {
                self.order_id = Some(r.order_id);
                if r.priority_kept {
                    // A pure decrease in place: it cannot match.
                    Progress::Done
                } else {
                    Progress::MaybeDone
                }
            }
            M::Filled(f) if Some(f.order_id) == self.order_id => {
                if f.remaining_qty == 0 {
                    Progress::Done
                } else if self.rests {
                    Progress::MaybeDone
                } else {
                    Progress::Pending
                }
            }
            M::Cancelled(c) if Some(c.order_id) == self.order_id => Progress::Done,
            // Fills and self-trade cancels of other orders of the account (the resting
            // side of a self-trade) change nothing.
            _ => self.progress,
        };
        self.progress = p;
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringex_engine::{CancelReason, RejectReason};
    use ringex_gateway::protocol::{BalanceEnd, Liquidity};

    fn accepted(order_id: u64) -> ServerMessage {
        ServerMessage::OrderAccepted(OrderAccepted {
            seq: 1,
            request_id: 1,
            order_id,
            client_order_id: 0,
            market: 1,
            side: Side::Buy,
            price: 100,
            qty: 10,
        })
    }

    fn filled(order_id: u64, remaining_qty: u64) -> ServerMessage {
        ServerMessage::Filled(Filled {
            seq: 2,
            request_id: 1,
            order_id,
            client_order_id: 0,
            match_id: 1,
            market: 1,
            side: Side::Buy,
            liquidity: Liquidity::Taker,
            price: 100,
            qty: 1,
            remaining_qty,
            fee: 0,
        })
    }

    fn cancelled(order_id: u64) -> ServerMessage {
        ServerMessage::Cancelled(Cancelled {
            seq: 3,
            request_id: 1,
            order_id,
            client_order_id: 0,
            market: 1,
            remaining_qty: 3,
            reason: CancelReason::ImmediateOrCancel,
        })
    }

    #[test]
    fn gtc_accept_may_be_final_ioc_accept_is_not() {
        let gtc = Request::NewOrder(OrderParams::limit(1, Side::Buy, 100, 10));
        let mut c = Completion::new(&gtc);
        assert_eq!(c.update(&accepted(7)), Progress::MaybeDone);
        assert_eq!(c.update(&filled(7, 5)), Progress::MaybeDone);
        assert_eq!(c.update(&filled(7, 0)), Progress::Done);

        let ioc =
            Request::NewOrder(OrderParams::limit(1, Side::Buy, 100, 10).tif(TimeInForce::Ioc));
        let mut c = Completion::new(&ioc);
        assert_eq!(c.update(&accepted(7)), Progress::Pending);
        assert_eq!(c.update(&filled(7, 3)), Progress::Pending);
        // A self-trade cancel of another (resting) order of the account is not the end.
        assert_eq!(c.update(&cancelled(5)), Progress::Pending);
        assert_eq!(c.update(&cancelled(7)), Progress::Done);

        let post =
            Request::NewOrder(OrderParams::limit(1, Side::Buy, 100, 10).tif(TimeInForce::PostOnly));
        let mut c = Completion::new(&post);
        assert_eq!(c.update(&accepted(7)), Progress::Done);

        let market = Request::NewOrder(OrderParams::market(1, Side::Sell, 10));
        let mut c = Completion::new(&market);
        assert_eq!(c.update(&accepted(9)), Progress::Pending);
        assert_eq!(c.update(&filled(9, 0)), Progress::Done);
    }

    #[test]
    fn terminal_messages() {
        let reject = ServerMessage::OrderRejected(OrderRejected {
            seq: 1,
            request_id: 1,
            request_template: template::NEW_ORDER,
            order: None,
            market: 1,
            reason: RejectReason::InsufficientBalance,
        });
        let gtc = Request::NewOrder(OrderParams::limit(1, Side::Buy, 100, 10));
        assert_eq!(Completion::new(&gtc).update(&reject), Progress::Done);

        let mut c = Completion::new(&Request::BalanceQuery);
        let bal = ServerMessage::Balance(Balance {
            seq: 1,
            request_id: 1,
            asset: 1,
            available: 1,
            held: 0,
        });
        assert_eq!(c.update(&bal), Progress::Pending);
        let end = ServerMessage::BalanceEnd(BalanceEnd {
            seq: 2,
            request_id: 1,
            count: 1,
        });
        assert_eq!(c.update(&end), Progress::Done);

        let mut c = Completion::new(&Request::Cancel {
            market: 1,
            order: OrderRef::Client(3),
        });
        assert_eq!(c.update(&cancelled(4)), Progress::Done);

        let mut c = Completion::new(&Request::MassCancel { market: 0 });
        assert_eq!(c.update(&cancelled(4)), Progress::Pending);
        assert_eq!(c.update(&cancelled(5)), Progress::Pending);
    }

    #[test]
    fn replace_in_place_is_final_a_move_may_match() {
        let r = Request::Replace {
            market: 1,
            order: OrderRef::Exchange(7),
            price: 100,
            qty: 4,
        };
        let replaced = |kept| {
            ServerMessage::Replaced(Replaced {
                seq: 1,
                request_id: 1,
                order_id: 7,
                client_order_id: 0,
                market: 1,
                price: 100,
                qty: 4,
                priority_kept: kept,
            })
        };
        assert_eq!(Completion::new(&r).update(&replaced(true)), Progress::Done);
        let mut c = Completion::new(&r);
        assert_eq!(c.update(&replaced(false)), Progress::MaybeDone);
        assert_eq!(c.update(&filled(7, 0)), Progress::Done);
    }

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
