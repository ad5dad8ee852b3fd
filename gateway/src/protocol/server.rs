//! Server -> client messages: session messages (not sequenced) and sequenced reports.
//!
//! Every sequenced message starts with `seq` (frame offset 8) and `request_id` (offset
//! 16): the per-session sequence number, dense from 1, and the id of the request that
//! caused it (zero when no request of this session did, e.g. a maker fill).

use ringex_engine::{
    AccountId, Amount, AssetId, CancelReason, ClientOrderId, CommandKind, MarketId, MarketStatus,
    OrderId, OrderRef, Price, Qty, RejectReason, Side,
};

use super::client::{ref_decode, ref_encode};
use super::template as t;
use super::wire::{Reader, Writer};
use super::{
    frame_header, login_flags, FrameError, Liquidity, LoginRejectReason, LogoutReason, HEADER_SIZE,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoginAccepted {
    pub session_id: u64,
    /// The seq of the next sequenced message on this connection: 1 for a new session,
    /// `resume_from_seq` on a resume (the replay starts there).
    pub next_seq: u64,
    /// The highest request id this session has processed (zero for a new session):
    /// after a resume, resend what is above it.
    pub last_request_id: u64,
    pub account: AccountId,
    /// The heartbeat interval granted.
    pub heartbeat_ms: u32,
    /// [`login_flags`] bits in force.
    pub flags: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrderAccepted {
    pub seq: u64,
    pub request_id: u64,
    pub order_id: OrderId,
    pub client_order_id: ClientOrderId,
    pub market: MarketId,
    pub side: Side,
    pub price: Price,
    pub qty: Qty,
}

/// Any request refused, by the engine or by the gateway (rate limit, malformed field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrderRejected {
    pub seq: u64,
    pub request_id: u64,
    /// Template id of the rejected request (an application request template).
    pub request_template: u16,
    /// The order the request named: the client order id of a NewOrder, the reference of
    /// a Cancel or Replace; `None` for other requests.
    pub order: Option<OrderRef>,
    pub market: MarketId,
    pub reason: RejectReason,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Filled {
    pub seq: u64,
    pub request_id: u64,
    pub order_id: OrderId,
    pub client_order_id: ClientOrderId,
    /// Unique per trade; both sides of a trade carry the same id.
    pub match_id: u64,
    pub market: MarketId,
    pub side: Side,
    pub liquidity: Liquidity,
    /// The maker's price, ticks.
    pub price: Price,
    pub qty: Qty,
    /// What is left of the order after this fill.
    pub remaining_qty: Qty,
    /// Quote minor units charged to this side.
    pub fee: Amount,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cancelled {
    pub seq: u64,
    pub request_id: u64,
    pub order_id: OrderId,
    pub client_order_id: ClientOrderId,
    pub market: MarketId,
    pub remaining_qty: Qty,
    pub reason: CancelReason,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replaced {
    pub seq: u64,
    pub request_id: u64,
    pub order_id: OrderId,
    pub client_order_id: ClientOrderId,
    pub market: MarketId,
    pub price: Price,
    /// The new remaining quantity.
    pub qty: Qty,
    pub priority_kept: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestDone {
    pub seq: u64,
    pub request_id: u64,
    /// Messages this request caused in this session before this one.
    pub count: u32,
}

/// A standby became the primary: it journaled (and synced) an epoch record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Promoted {
    pub seq: u64,
    pub request_id: u64,
    /// The journal sequence of the epoch record: everything before it came from the
    /// old primary, everything after it is this node's.
    pub epoch_seq: u64,
    /// The new epoch.
    pub epoch: u32,
    /// The promoted node's id (`node.id`).
    pub node_id: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MassCancelDone {
    pub seq: u64,
    pub request_id: u64,
    /// As requested; zero means every market.
    pub market: MarketId,
    pub count: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Balance {
    pub seq: u64,
    pub request_id: u64,
    pub asset: AssetId,
    pub available: Amount,
    pub held: Amount,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BalanceEnd {
    pub seq: u64,
    pub request_id: u64,
    /// Number of Balance messages sent for this query.
    pub count: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenOrder {
    pub seq: u64,
    pub request_id: u64,
    pub order_id: OrderId,
    pub client_order_id: ClientOrderId,
    pub market: MarketId,
    pub side: Side,
    pub price: Price,
    pub remaining_qty: Qty,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenOrdersEnd {
    pub seq: u64,
    pub request_id: u64,
    /// As requested; zero means every market.
    pub market: MarketId,
    /// Number of OpenOrder messages sent for this query.
    pub count: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SystemEvent {
    pub seq: u64,
    pub request_id: u64,
    pub market: MarketId,
    pub status: MarketStatus,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdminAck {
    pub seq: u64,
    pub request_id: u64,
    /// The admin command applied.
    pub kind: CommandKind,
    /// The object it named: asset, market, account or key id; the external reference
    /// for Deposit and Withdraw.
    pub id: u64,
    /// Deposit/Withdraw only: the external reference was already applied; nothing
    /// changed.
    pub duplicate: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerMessage {
    LoginAccepted(LoginAccepted),
    LoginRejected {
        reason: LoginRejectReason,
    },
    Logout {
        reason: LogoutReason,
    },
    Heartbeat,
    OrderAccepted(OrderAccepted),
    OrderRejected(OrderRejected),
    Filled(Filled),
    Cancelled(Cancelled),
    Replaced(Replaced),
    MassCancelDone(MassCancelDone),
    Balance(Balance),
    BalanceEnd(BalanceEnd),
    OpenOrder(OpenOrder),
    OpenOrdersEnd(OpenOrdersEnd),
    SystemEvent(SystemEvent),
    AdminAck(AdminAck),
    /// The request's outcome is complete: nothing more will carry its `request_id`.
    RequestDone(RequestDone),
    Promoted(Promoted),
}

/// Applies `$body` to the `seq`/`request_id` carrying struct of a sequenced message.
macro_rules! sequenced {
    ($msg:expr, $m:ident => $body:expr, $session:expr) => {
        match $msg {
            ServerMessage::LoginAccepted(_)
            | ServerMessage::LoginRejected { .. }
            | ServerMessage::Logout { .. }
            | ServerMessage::Heartbeat => $session,
            ServerMessage::OrderAccepted($m) => $body,
            ServerMessage::OrderRejected($m) => $body,
            ServerMessage::Filled($m) => $body,
            ServerMessage::Cancelled($m) => $body,
            ServerMessage::Replaced($m) => $body,
            ServerMessage::MassCancelDone($m) => $body,
            ServerMessage::Balance($m) => $body,
            ServerMessage::BalanceEnd($m) => $body,
            ServerMessage::OpenOrder($m) => $body,
            ServerMessage::OpenOrdersEnd($m) => $body,
            ServerMessage::SystemEvent($m) => $body,
            ServerMessage::AdminAck($m) => $body,
            ServerMessage::RequestDone($m) => $body,
            ServerMessage::Promoted($m) => $body,
        }
    };
}

impl ServerMessage {
    pub fn template_id(&self) -> u16 {
        match self {
            ServerMessage::LoginAccepted(_) => t::LOGIN_ACCEPTED,
            ServerMessage::LoginRejected { .. } => t::LOGIN_REJECTED,
            ServerMessage::Logout { .. } => t::SERVER_LOGOUT,
            ServerMessage::Heartbeat => t::SERVER_HEARTBEAT,
            ServerMessage::OrderAccepted(_) => t::ORDER_ACCEPTED,
            ServerMessage::OrderRejected(_) => t::ORDER_REJECTED,
            ServerMessage::Filled(_) => t::FILLED,
            ServerMessage::Cancelled(_) => t::CANCELLED,
            ServerMessage::Replaced(_) => t::REPLACED,
            ServerMessage::MassCancelDone(_) => t::MASS_CANCEL_DONE,
            ServerMessage::Balance(_) => t::BALANCE,
            ServerMessage::BalanceEnd(_) => t::BALANCE_END,
            ServerMessage::OpenOrder(_) => t::OPEN_ORDER,
            ServerMessage::OpenOrdersEnd(_) => t::OPEN_ORDERS_END,
            ServerMessage::SystemEvent(_) => t::SYSTEM_EVENT,
            ServerMessage::AdminAck(_) => t::ADMIN_ACK,
            ServerMessage::RequestDone(_) => t::REQUEST_DONE,
            ServerMessage::Promoted(_) => t::PROMOTED,
        }
    }

    /// Bytes [`encode_server`] writes for this message.
    pub fn frame_len(&self) -> usize {
        HEADER_SIZE + server_block_len(self.template_id()).expect("known template")
    }

    /// Sequenced messages are retained for resume; session messages are not.
    pub fn is_sequenced(&self) -> bool {
        self.seq().is_some()
    }

    pub fn seq(&self) -> Option<u64> {
        sequenced!(self, m => Some(m.seq), None)
    }

    /// Stamps the per-session sequence number (assigned when the message is queued).
    /// Panics on a session message, which has none.
    pub fn set_seq(&mut self, seq: u64) {
        assert!(seq > 0, "seqs start at 1");
        sequenced!(self, m => m.seq = seq, panic!("session messages are not sequenced"))
    }

    /// The request this message answers; `None` for session messages, `Some(0)` for
    /// unsolicited reports.
    pub fn request_id(&self) -> Option<u64> {
        sequenced!(self, m => Some(m.request_id), None)
    }
}

/// Body size of a server template at [`super::VERSION`]; `None` if unknown.
pub fn server_block_len(template_id: u16) -> Option<usize> {
    Some(match template_id {
        t::LOGIN_ACCEPTED => 40,
        t::LOGIN_REJECTED | t::SERVER_LOGOUT => 8,
        t::SERVER_HEARTBEAT => 0,
        t::ORDER_ACCEPTED => 56,
        t::ORDER_REJECTED => 40,
        t::FILLED => 80,
        t::CANCELLED => 48,
        t::REPLACED => 56,
        t::MASS_CANCEL_DONE => 24,
        t::REQUEST_DONE => 24,
        t::BALANCE => 40,
        t::BALANCE_END => 24,
        t::OPEN_ORDER => 56,
        t::OPEN_ORDERS_END => 24,
        t::SYSTEM_EVENT => 24,
        t::ADMIN_ACK => 32,
        t::PROMOTED => 32,
        _ => return None,
    })
}

/// Encodes one frame at the start of `buf` and returns its length. Panics if `buf` is
/// shorter than [`ServerMessage::frame_len`] ([`super::FRAME_SIZE_MAX`] always fits).
pub fn encode_server(msg: &ServerMessage, buf: &mut [u8]) -> usize {
    let template_id = msg.template_id();
    let block_len = server_block_len(template_id).expect("known template");
    let mut w = Writer::new(buf, template_id, block_len);
    if let (Some(seq), Some(request_id)) = (msg.seq(), msg.request_id()) {
        w.u64(8, seq);
        w.u64(16, request_id);
    }
    match msg {
        ServerMessage::LoginAccepted(m) => {
            assert_eq!(
                m.flags & !login_flags::SERVER_ALL,
                0,
                "undefined login flags"
            );
            w.u64(8, m.session_id);
            w.u64(16, m.next_seq);
            w.u64(24, m.last_request_id);
            w.u32(32, m.account);
            w.u32(36, m.heartbeat_ms);
            w.u32(40, m.flags);
        }
        ServerMessage::LoginRejected { reason } => w.u16(8, *reason as u16),
        ServerMessage::Logout { reason } => w.u16(8, *reason as u16),
        ServerMessage::Heartbeat => {}
        ServerMessage::OrderAccepted(m) => {
            w.u64(24, m.order_id);
            w.u64(32, m.client_order_id);
            w.i64(40, m.price);
            w.u64(48, m.qty);
            w.u32(56, m.market);
            w.u8(60, m.side as u8);
        }
        ServerMessage::OrderRejected(m) => {
            assert!(t::is_request(m.request_template), "{}", m.request_template);
            let (tag, value) = ref_encode(m.order);
            w.u64(24, value);
            w.u32(32, m.market);
            w.u16(36, m.request_template);
            w.u16(38, m.reason as u16);
            w.u8(40, tag);
        }
        ServerMessage::Filled(m) => {
            w.u64(24, m.order_id);
            w.u64(32, m.client_order_id);
            w.u64(40, m.match_id);
            w.i64(48, m.price);
            w.u64(56, m.qty);
            w.u64(64, m.remaining_qty);
            w.i64(72, m.fee);
            w.u32(80, m.market);
            w.u8(84, m.side as u8);
            w.u8(85, m.liquidity as u8);
        }
        ServerMessage::Cancelled(m) => {
            w.u64(24, m.order_id);
            w.u64(32, m.client_order_id);
            w.u64(40, m.remaining_qty);
            w.u32(48, m.market);
            w.u8(52, m.reason as u8);
        }
        ServerMessage::Replaced(m) => {
            w.u64(24, m.order_id);
            w.u64(32, m.client_order_id);
            w.i64(40, m.price);
            w.u64(48, m.qty);
            w.u32(56, m.market);
            w.bool(60, m.priority_kept);
        }
        ServerMessage::MassCancelDone(m) => {
            w.u32(24, m.market);
            w.u32(28, m.count);
        }
        ServerMessage::RequestDone(m) => {
            w.u32(24, m.count);
        }
        ServerMessage::Promoted(m) => {
            w.u64(24, m.epoch_seq);
            w.u32(32, m.epoch);
            w.u32(36, m.node_id);
        }
        ServerMessage::Balance(m) => {
            w.i64(24, m.available);
            w.i64(32, m.held);
            w.u32(40, m.asset);
        }
        ServerMessage::BalanceEnd(m) => {
            w.u32(24, m.count);
        }
        ServerMessage::OpenOrder(m) => {
            w.u64(24, m.order_id);
            w.u64(32, m.client_order_id);
            w.i64(40, m.price);
            w.u64(48, m.remaining_qty);
            w.u32(56, m.market);
            w.u8(60, m.side as u8);
        }
        ServerMessage::OpenOrdersEnd(m) => {
            w.u32(24, m.count);
            w.u32(28, m.market);
        }
        ServerMessage::SystemEvent(m) => {
            w.u32(24, m.market);
            w.u8(28, m.status as u8);
        }
        ServerMessage::AdminAck(m) => {
            assert!(m.kind.is_admin(), "{:?}", m.kind);
            w.u64(24, m.id);
            w.u8(32, m.kind as u8);
            w.bool(33, m.duplicate);
        }
    }
    w.len()
}

fn admin_kind(v: u8) -> Option<CommandKind> {
    CommandKind::from_u8(v).filter(|k| k.is_admin())
}

fn request_template(v: u16) -> Option<u16> {
    Some(v).filter(|v| t::is_request(*v))
}

/// Decodes the first frame of `bytes`. Returns the message and the frame length to
/// consume, or [`FrameError::Incomplete`] if the frame is not all there yet.
pub fn decode_server(bytes: &[u8]) -> Result<(ServerMessage, usize), FrameError> {
    let header = frame_header(bytes)?;
    let template_id = header.template_id;
    let known = server_block_len(template_id).ok_or(FrameError::UnknownTemplate { template_id })?;
    if (header.block_len as usize) < known {
        return Err(FrameError::BadBlockLength {
            template_id,
            block_len: header.block_len,
        });
    }
    let r = Reader::new(bytes, &header, known, false);
    // Session templates are shorter than 24 bytes: read these only for sequenced ones.
    let (seq, request_id) = if template_id >= t::ORDER_ACCEPTED {
        (r.u64(8), r.u64(16))
    } else {
        (0, 0)
    };
    let msg = match template_id {
        t::LOGIN_ACCEPTED => {
            r.zero(44, 4)?;
            let flags = r.u32(40);
            if flags & !login_flags::SERVER_ALL != 0 {
                return Err(r.invalid(40));
            }
            ServerMessage::LoginAccepted(LoginAccepted {
                session_id: r.u64(8),
                next_seq: r.u64(16),
                last_request_id: r.u64(24),
                account: r.u32(32),
                heartbeat_ms: r.u32(36),
                flags,
            })
        }
        t::LOGIN_REJECTED => {
            r.zero(10, 6)?;
            ServerMessage::LoginRejected {
                reason: r.enum_u16(8, LoginRejectReason::from_u16)?,
            }
        }
        t::SERVER_LOGOUT => {
            r.zero(10, 6)?;
            ServerMessage::Logout {
                reason: r.enum_u16(8, LogoutReason::from_u16)?,
            }
        }
        t::SERVER_HEARTBEAT => ServerMessage::Heartbeat,
        t::ORDER_ACCEPTED => {
            r.zero(61, 3)?;
            ServerMessage::OrderAccepted(OrderAccepted {
                seq,
                request_id,
                order_id: r.u64(24),
                client_order_id: r.u64(32),
                price: r.i64(40),
                qty: r.u64(48),
                market: r.u32(56),
                side: r.enum_u8(60, Side::from_u8)?,
            })
        }
        t::ORDER_REJECTED => {
            r.zero(41, 7)?;
            ServerMessage::OrderRejected(OrderRejected {
                seq,
                request_id,
                order: ref_decode(&r, 40, 24, true)?,
                market: r.u32(32),
                request_template: r.enum_u16(36, request_template)?,
                reason: r.enum_u16(38, RejectReason::from_u16)?,
            })
        }
        t::FILLED => {
            r.zero(86, 2)?;
            ServerMessage::Filled(Filled {
                seq,
                request_id,
                order_id: r.u64(24),
                client_order_id: r.u64(32),
                match_id: r.u64(40),
                price: r.i64(48),
                qty: r.u64(56),
                remaining_qty: r.u64(64),
                fee: r.i64(72),
                market: r.u32(80),
                side: r.enum_u8(84, Side::from_u8)?,
                liquidity: r.enum_u8(85, Liquidity::from_u8)?,
            })
        }
        t::CANCELLED => {
            r.zero(53, 3)?;
            ServerMessage::Cancelled(Cancelled {
                seq,
                request_id,
                order_id: r.u64(24),
                client_order_id: r.u64(32),
                remaining_qty: r.u64(40),
                market: r.u32(48),
                reason: r.enum_u8(52, CancelReason::from_u8)?,
            })
        }
        t::REPLACED => {
            r.zero(61, 3)?;
            ServerMessage::Replaced(Replaced {
                seq,
                request_id,
                order_id: r.u64(24),
                client_order_id: r.u64(32),
                price: r.i64(40),
                qty: r.u64(48),
                market: r.u32(56),
                priority_kept: r.bool(60)?,
            })
        }
        t::MASS_CANCEL_DONE => ServerMessage::MassCancelDone(MassCancelDone {
            seq,
            request_id,
            market: r.u32(24),
            count: r.u32(28),
        }),
        t::REQUEST_DONE => {
            r.zero(28, 4)?;
            ServerMessage::RequestDone(RequestDone {
                seq,
                request_id,
                count: r.u32(24),
            })
        }
        t::PROMOTED => ServerMessage::Promoted(Promoted {
            seq,
            request_id,
            epoch_seq: r.u64(24),
            epoch: r.u32(32),
            node_id: r.u32(36),
        }),
        t::BALANCE => {
            r.zero(44, 4)?;
            ServerMessage::Balance(Balance {
                seq,
                request_id,
                available: r.i64(24),
                held: r.i64(32),
                asset: r.u32(40),
            })
        }
        t::BALANCE_END => {
            r.zero(28, 4)?;
            ServerMessage::BalanceEnd(BalanceEnd {
                seq,
                request_id,
                count: r.u32(24),
            })
        }
        t::OPEN_ORDER => {
            r.zero(61, 3)?;
            ServerMessage::OpenOrder(OpenOrder {
                seq,
                request_id,
                order_id: r.u64(24),
                client_order_id: r.u64(32),
                price: r.i64(40),
                remaining_qty: r.u64(48),
                market: r.u32(56),
                side: r.enum_u8(60, Side::from_u8)?,
            })
        }
        t::OPEN_ORDERS_END => ServerMessage::OpenOrdersEnd(OpenOrdersEnd {
            seq,
            request_id,
            count: r.u32(24),
            market: r.u32(28),
        }),
        t::SYSTEM_EVENT => {
            r.zero(29, 3)?;
            ServerMessage::SystemEvent(SystemEvent {
                seq,
                request_id,
                market: r.u32(24),
                status: r.enum_u8(28, MarketStatus::from_u8)?,
            })
        }
        t::ADMIN_ACK => {
            r.zero(34, 6)?;
            ServerMessage::AdminAck(AdminAck {
                seq,
                request_id,
                id: r.u64(24),
                kind: r.enum_u8(32, admin_kind)?,
                duplicate: r.bool(33)?,
            })
        }
        _ => unreachable!("server_block_len knows {template_id}"),
    };
    Ok((msg, header.frame_len as usize))
}
