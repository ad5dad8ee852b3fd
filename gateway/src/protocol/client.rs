//! Client -> server messages: session, trading, queries and admin requests.

use ringex_engine::{
    AccountId, Amount, ClientOrderId, Command, CommandKind, MarketId, MarketSpec, MarketStatus,
    OrderKind, OrderRef, PlaceOrder, Price, Qty, Side, StpMode, Symbol, TimeInForce,
};

use super::template as t;
use super::wire::{Reader, Writer};
use super::{frame_header, login_flags, FrameError, HEADER_SIZE};

/// Order reference tags on the wire (`ref_kind`).
pub(super) const REF_NONE: u8 = 0;
pub(super) const REF_EXCHANGE: u8 = 1;
pub(super) const REF_CLIENT: u8 = 2;

pub(super) fn ref_encode(order: Option<OrderRef>) -> (u8, u64) {
    match order {
        None => (REF_NONE, 0),
        Some(OrderRef::Exchange(id)) => (REF_EXCHANGE, id),
        Some(OrderRef::Client(id)) => (REF_CLIENT, id),
    }
}

/// Decodes a tag at `tag_offset` and a u64 at `value_offset`; `None` needs a zero value so
/// the encoding stays canonical.
pub(super) fn ref_decode(
    r: &Reader<'_>,
    tag_offset: usize,
    value_offset: usize,
    optional: bool,
) -> Result<Option<OrderRef>, FrameError> {
    let value = r.u64(value_offset);
    match r.u8(tag_offset) {
        REF_NONE if optional => {
            if value != 0 {
                return Err(r.invalid(value_offset));
            }
            Ok(None)
        }
        REF_EXCHANGE => Ok(Some(OrderRef::Exchange(value))),
        REF_CLIENT => Ok(Some(OrderRef::Client(value))),
        _ => Err(r.invalid(tag_offset)),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Login {
    pub api_key_id: u64,
    /// Client wall clock, nanoseconds since the Unix epoch.
    pub timestamp_ns: u64,
    /// Never reused by a key within the freshness window.
    pub nonce: u64,
    /// HMAC-SHA256 of `api_key_id || timestamp_ns || nonce` (see [`super::sign_login`]).
    pub signature: [u8; 32],
    /// Zero for a new session; otherwise the session to resume.
    pub resume_session: u64,
    /// On resume: the seq of the first message wanted (last seen + 1). Zero otherwise.
    pub resume_from_seq: u64,
    /// Requested heartbeat interval; zero asks for the server default.
    pub heartbeat_ms: u32,
    /// [`login_flags`] bits.
    pub flags: u32,
}

impl Login {
    /// Signs with the key's secret hash and stores the signature.
    pub fn sign(&mut self, secret_hash: &[u8; 32]) {
        self.signature =
            super::sign_login(secret_hash, self.api_key_id, self.timestamp_ns, self.nonce);
    }

    /// Constant-time check of the signature against the key's secret hash.
    pub fn verify(&self, secret_hash: &[u8; 32]) -> bool {
        super::verify_login(
            secret_hash,
            self.api_key_id,
            self.timestamp_ns,
            self.nonce,
            &self.signature,
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewOrder {
    pub request_id: u64,
    pub market: MarketId,
    pub client_order_id: ClientOrderId,
    pub side: Side,
    pub kind: OrderKind,
    pub tif: TimeInForce,
    pub stp: StpMode,
    /// Ticks; zero for market orders.
    pub price: Price,
    /// Lots; zero only for a market buy by `quote_budget`.
    pub qty: Qty,
    /// Quote minor units; market buys only, zero means "by quantity".
    pub quote_budget: Amount,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cancel {
    pub request_id: u64,
    pub market: MarketId,
    pub order: OrderRef,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replace {
    pub request_id: u64,
    pub market: MarketId,
    pub order: OrderRef,
    pub price: Price,
    pub qty: Qty,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MassCancel {
    pub request_id: u64,
    /// Zero means every market (market ids start at 1).
    pub market: MarketId,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BalanceQuery {
    pub request_id: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenOrdersQuery {
    pub request_id: u64,
    /// Zero means every market.
    pub market: MarketId,
}

/// An admin request: exactly one admin engine [`Command`] (`command.kind().is_admin()`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdminRequest {
    pub request_id: u64,
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientMessage {
    Login(Login),
    Logout,
    Heartbeat,
    NewOrder(NewOrder),
    Cancel(Cancel),
    Replace(Replace),
    MassCancel(MassCancel),
    BalanceQuery(BalanceQuery),
    OpenOrdersQuery(OpenOrdersQuery),
    Admin(AdminRequest),
    /// Makes a standby the primary: admin sessions only, on the admin listener.
    Promote {
        request_id: u64,
    },
}

impl ClientMessage {
    pub fn template_id(&self) -> u16 {
        match self {
            ClientMessage::Login(_) => t::LOGIN,
            ClientMessage::Logout => t::LOGOUT,
            ClientMessage::Heartbeat => t::HEARTBEAT,
            ClientMessage::NewOrder(_) => t::NEW_ORDER,
            ClientMessage::Cancel(_) => t::CANCEL,
            ClientMessage::Replace(_) => t::REPLACE,
            ClientMessage::MassCancel(_) => t::MASS_CANCEL,
            ClientMessage::BalanceQuery(_) => t::BALANCE_QUERY,
            ClientMessage::OpenOrdersQuery(_) => t::OPEN_ORDERS_QUERY,
            ClientMessage::Admin(a) => {
                let kind = a.command.kind();
                assert!(kind.is_admin(), "admin request carries {kind:?}");
                kind as u16 + t::ADMIN_OFFSET
            }
            ClientMessage::Promote { .. } => t::PROMOTE,
        }
    }

    /// Bytes [`encode_client`] writes for this message.
    pub fn frame_len(&self) -> usize {
        HEADER_SIZE + client_block_len(self.template_id()).expect("known template")
    }

    /// The request id of an application request; `None` for session messages.
    pub fn request_id(&self) -> Option<u64> {
        match self {
            ClientMessage::Login(_) | ClientMessage::Logout | ClientMessage::Heartbeat => None,
            ClientMessage::NewOrder(m) => Some(m.request_id),
            ClientMessage::Cancel(m) => Some(m.request_id),
            ClientMessage::Replace(m) => Some(m.request_id),
            ClientMessage::MassCancel(m) => Some(m.request_id),
            ClientMessage::BalanceQuery(m) => Some(m.request_id),
            ClientMessage::OpenOrdersQuery(m) => Some(m.request_id),
            ClientMessage::Admin(m) => Some(m.request_id),
            ClientMessage::Promote { request_id } => Some(*request_id),
        }
    }

    /// Only an admin session may send it: admin engine commands and Promote.
    pub fn is_admin(&self) -> bool {
        matches!(
            self,
            ClientMessage::Admin(_) | ClientMessage::Promote { .. }
        )
    }

    /// The engine command this request becomes. Trading requests act for `account`, the
    /// session's account (a trading request never names one); admin requests carry their
    /// own command and ignore `account`. `None` for session messages and queries, which
    /// the gateway answers itself.
    pub fn to_command(&self, account: AccountId) -> Option<Command> {
        match *self {
            ClientMessage::NewOrder(m) => Some(Command::Place(PlaceOrder {
                account,
                market: m.market,
                client_order_id: m.client_order_id,
                side: m.side,
                kind: m.kind,
                tif: m.tif,
                price: m.price,
                qty: m.qty,
                quote_budget: m.quote_budget,
                stp: m.stp,
            })),
            ClientMessage::Cancel(m) => Some(Command::Cancel {
                account,
                market: m.market,
                order: m.order,
            }),
            ClientMessage::Replace(m) => Some(Command::Replace {
                account,
                market: m.market,
                order: m.order,
                price: m.price,
                qty: m.qty,
            }),
            ClientMessage::MassCancel(m) => Some(Command::CancelAll {
                account,
                market: if m.market == 0 { None } else { Some(m.market) },
            }),
            ClientMessage::Admin(a) => {
                assert!(a.command.kind().is_admin());
                Some(a.command)
            }
            ClientMessage::Login(_)
            | ClientMessage::Logout
            | ClientMessage::Heartbeat
            | ClientMessage::BalanceQuery(_)
            | ClientMessage::OpenOrdersQuery(_)
            | ClientMessage::Promote { .. } => None,
        }
    }
}

/// Body size of a client template at [`super::VERSION`]; `None` if unknown.
pub fn client_block_len(template_id: u16) -> Option<usize> {
    Some(match template_id {
        t::LOGIN => 80,
        t::LOGOUT | t::HEARTBEAT => 0,
        t::NEW_ORDER => 48,
        t::CANCEL => 24,
        t::REPLACE => 40,
        t::MASS_CANCEL => 16,
        t::BALANCE_QUERY => 8,
        t::OPEN_ORDERS_QUERY => 16,
        t::CREATE_ASSET => 32,
        t::CREATE_MARKET => 88,
        t::CREATE_ACCOUNT => 16,
        t::DEPOSIT | t::WITHDRAW => 32,
        t::SET_MARKET_FEES => 24,
        t::SET_FEE_TIER => 32,
        t::SET_MARKET_STATUS => 16,
        t::SUSPEND_ACCOUNT | t::RESUME_ACCOUNT => 16,
        t::ADD_API_KEY => 56,
        t::REVOKE_API_KEY => 16,
        t::SET_MARKET_LIMITS => 24,
        t::PROMOTE => 8,
        _ => return None,
    })
}

/// Encodes one frame at the start of `buf` and returns its length. Panics if `buf` is
/// shorter than [`ClientMessage::frame_len`] ([`super::FRAME_SIZE_MAX`] always fits).
pub fn encode_client(msg: &ClientMessage, buf: &mut [u8]) -> usize {
    let template_id = msg.template_id();
    let block_len = client_block_len(template_id).expect("known template");
    let mut w = Writer::new(buf, template_id, block_len);
    match msg {
        ClientMessage::Login(m) => {
            assert_eq!(
                m.flags & !login_flags::CLIENT_ALL,
                0,
                "undefined login flags"
            );
            w.u64(8, m.api_key_id);
            w.u64(16, m.timestamp_ns);
            w.u64(24, m.nonce);
            w.bytes(32, &m.signature);
            w.u64(64, m.resume_session);
            w.u64(72, m.resume_from_seq);
            w.u32(80, m.heartbeat_ms);
            w.u32(84, m.flags);
        }
        ClientMessage::Logout | ClientMessage::Heartbeat => {}
        ClientMessage::NewOrder(m) => {
            w.u64(8, m.request_id);
            w.u64(16, m.client_order_id);
            w.i64(24, m.price);
            w.u64(32, m.qty);
            w.i64(40, m.quote_budget);
            w.u32(48, m.market);
            w.u8(52, m.side as u8);
            w.u8(53, m.kind as u8);
            w.u8(54, m.tif as u8);
            w.u8(55, m.stp as u8);
        }
        ClientMessage::Cancel(m) => {
            let (tag, value) = ref_encode(Some(m.order));
            w.u64(8, m.request_id);
            w.u64(16, value);
            w.u32(24, m.market);
            w.u8(28, tag);
        }
        ClientMessage::Replace(m) => {
            let (tag, value) = ref_encode(Some(m.order));
            w.u64(8, m.request_id);
            w.u64(16, value);
            w.i64(24, m.price);
            w.u64(32, m.qty);
            w.u32(40, m.market);
            w.u8(44, tag);
        }
        ClientMessage::MassCancel(m) => {
            w.u64(8, m.request_id);
            w.u32(16, m.market);
        }
        ClientMessage::BalanceQuery(m) => {
            w.u64(8, m.request_id);
        }
        ClientMessage::OpenOrdersQuery(m) => {
            w.u64(8, m.request_id);
            w.u32(16, m.market);
        }
        ClientMessage::Admin(a) => {
            w.u64(8, a.request_id);
            encode_admin(&mut w, &a.command);
        }
        ClientMessage::Promote { request_id } => {
            w.u64(8, *request_id);
        }
    }
    w.len()
}

fn encode_admin(w: &mut Writer<'_>, command: &Command) {
    match *command {
        Command::CreateAsset {
            asset,
            symbol,
            decimals,
        } => {
            w.bytes(16, &symbol.0);
            w.u32(32, asset);
            w.u8(36, decimals);
        }
        Command::CreateMarket(s) => {
            w.bytes(16, &s.symbol.0);
            w.i64(32, s.tick_size);
            w.i64(40, s.lot_size);
            w.u64(48, s.qty_min);
            w.u64(56, s.qty_max);
            w.i64(64, s.reference_price);
            w.u32(72, s.market);
            w.u32(76, s.base);
            w.u32(80, s.quote);
            w.u32(84, s.band_ppm);
            w.u32(88, s.maker_fee_ppm);
            w.u32(92, s.taker_fee_ppm);
        }
        Command::CreateAccount { account }
        | Command::SuspendAccount { account }
        | Command::ResumeAccount { account } => {
            w.u32(16, account);
        }
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
            w.i64(16, amount);
            w.u64(24, external_ref);
            w.u32(32, account);
            w.u32(36, asset);
        }
        Command::SetMarketFees {
            market,
            maker_fee_ppm,
            taker_fee_ppm,
        } => {
            w.u32(16, market);
            w.u32(20, maker_fee_ppm);
            w.u32(24, taker_fee_ppm);
        }
        Command::SetFeeTier {
            account,
            market,
            fees,
        } => {
            w.u32(16, account);
            w.u32(20, market);
            match fees {
                Some((maker, taker)) => {
                    w.u32(24, maker);
                    w.u32(28, taker);
                }
                None => w.u8(32, 1),
            }
        }
        Command::SetMarketStatus {
            market,
            status,
            cancel_resting,
        } => {
            w.u32(16, market);
            w.u8(20, status as u8);
            w.bool(21, cancel_resting);
        }
        Command::AddApiKey {
            account,
            key_id,
            secret_hash,
            permissions,
        } => {
            w.u64(16, key_id);
            w.bytes(24, &secret_hash);
            w.u32(56, account);
            w.u32(60, permissions);
        }
        Command::RevokeApiKey { key_id } => {
            w.u64(16, key_id);
        }
        Command::SetMarketLimits {
            market,
            max_open_orders_per_account,
            max_open_orders,
        } => {
            w.u32(16, market);
            w.u32(20, max_open_orders_per_account);
            w.u32(24, max_open_orders);
        }
        Command::Place(_)
        | Command::Cancel { .. }
        | Command::Replace { .. }
        | Command::CancelAll { .. } => unreachable!("not an admin command: {command:?}"),
    }
}

/// Decodes the first frame of `bytes`. Returns the message and the frame length to
/// consume, or [`FrameError::Incomplete`] if the frame is not all there yet.
pub fn decode_client(bytes: &[u8]) -> Result<(ClientMessage, usize), FrameError> {
    let header = frame_header(bytes)?;
    let template_id = header.template_id;
    let known = client_block_len(template_id).ok_or(FrameError::UnknownTemplate { template_id })?;
    if (header.block_len as usize) < known {
        return Err(FrameError::BadBlockLength {
            template_id,
            block_len: header.block_len,
        });
    }
    let r = Reader::new(bytes, &header, known, t::is_request(template_id));
    let msg = match template_id {
        t::LOGIN => {
            let flags = r.u32(84);
            if flags & !login_flags::CLIENT_ALL != 0 {
                return Err(r.invalid(84));
            }
            ClientMessage::Login(Login {
                api_key_id: r.u64(8),
                timestamp_ns: r.u64(16),
                nonce: r.u64(24),
                signature: r.array(32),
                resume_session: r.u64(64),
                resume_from_seq: r.u64(72),
                heartbeat_ms: r.u32(80),
                flags,
            })
        }
        t::LOGOUT => ClientMessage::Logout,
        t::HEARTBEAT => ClientMessage::Heartbeat,
        t::NEW_ORDER => ClientMessage::NewOrder(NewOrder {
            request_id: r.u64(8),
            client_order_id: r.u64(16),
            price: r.i64(24),
            qty: r.u64(32),
            quote_budget: r.i64(40),
            market: r.u32(48),
            side: r.enum_u8(52, Side::from_u8)?,
            kind: r.enum_u8(53, OrderKind::from_u8)?,
            tif: r.enum_u8(54, TimeInForce::from_u8)?,
            stp: r.enum_u8(55, StpMode::from_u8)?,
        }),
        t::CANCEL => {
            r.zero(29, 3)?;
            ClientMessage::Cancel(Cancel {
                request_id: r.u64(8),
                market: r.u32(24),
                order: ref_decode(&r, 28, 16, false)?.expect("required ref"),
            })
        }
        t::REPLACE => {
            r.zero(45, 3)?;
            ClientMessage::Replace(Replace {
                request_id: r.u64(8),
                market: r.u32(40),
                order: ref_decode(&r, 44, 16, false)?.expect("required ref"),
                price: r.i64(24),
                qty: r.u64(32),
            })
        }
        t::MASS_CANCEL => {
            r.zero(20, 4)?;
            ClientMessage::MassCancel(MassCancel {
                request_id: r.u64(8),
                market: r.u32(16),
            })
        }
        t::BALANCE_QUERY => ClientMessage::BalanceQuery(BalanceQuery {
            request_id: r.u64(8),
        }),
        t::OPEN_ORDERS_QUERY => {
            r.zero(20, 4)?;
            ClientMessage::OpenOrdersQuery(OpenOrdersQuery {
                request_id: r.u64(8),
                market: r.u32(16),
            })
        }
        t::PROMOTE => ClientMessage::Promote {
            request_id: r.u64(8),
        },
        _ => {
            debug_assert!(t::is_admin(template_id));
            ClientMessage::Admin(AdminRequest {
                request_id: r.u64(8),
                command: decode_admin(&r, template_id)?,
            })
        }
    };
    Ok((msg, header.frame_len as usize))
}

fn decode_admin(r: &Reader<'_>, template_id: u16) -> Result<Command, FrameError> {
    let kind = CommandKind::from_u8((template_id - t::ADMIN_OFFSET) as u8).expect("admin template");
    assert!(kind.is_admin());
    Ok(match kind {
        CommandKind::CreateAsset => {
            r.zero(37, 3)?;
            Command::CreateAsset {
                asset: r.u32(32),
                symbol: Symbol(r.array(16)),
                decimals: r.u8(36),
            }
        }
        CommandKind::CreateMarket => Command::CreateMarket(MarketSpec {
            market: r.u32(72),
            // Raw bytes: whether a symbol is well formed is the engine's call.
            symbol: Symbol(r.array(16)),
            base: r.u32(76),
            quote: r.u32(80),
            tick_size: r.i64(32),
            lot_size: r.i64(40),
            qty_min: r.u64(48),
            qty_max: r.u64(56),
            band_ppm: r.u32(84),
            reference_price: r.i64(64),
            maker_fee_ppm: r.u32(88),
            taker_fee_ppm: r.u32(92),
        }),
        CommandKind::CreateAccount | CommandKind::SuspendAccount | CommandKind::ResumeAccount => {
            r.zero(20, 4)?;
            let account = r.u32(16);
            match kind {
                CommandKind::CreateAccount => Command::CreateAccount { account },
                CommandKind::SuspendAccount => Command::SuspendAccount { account },
                _ => Command::ResumeAccount { account },
            }
        }
        CommandKind::Deposit | CommandKind::Withdraw => {
            let (account, asset, amount, external_ref) =
                (r.u32(32), r.u32(36), r.i64(16), r.u64(24));
            if kind == CommandKind::Deposit {
                Command::Deposit {
                    account,
                    asset,
                    amount,
                    external_ref,
                }
            } else {
                Command::Withdraw {
                    account,
                    asset,
                    amount,
                    external_ref,
                }
            }
        }
        CommandKind::SetMarketFees => {
            r.zero(28, 4)?;
            Command::SetMarketFees {
                market: r.u32(16),
                maker_fee_ppm: r.u32(20),
                taker_fee_ppm: r.u32(24),
            }
        }
        CommandKind::SetFeeTier => {
            r.zero(33, 7)?;
            let fees = if r.bool(32)? {
                // A cleared tier carries no fees: keeps the encoding canonical.
                r.zero(24, 8)?;
                None
            } else {
                Some((r.u32(24), r.u32(28)))
            };
            Command::SetFeeTier {
                account: r.u32(16),
                market: r.u32(20),
                fees,
            }
        }
        CommandKind::SetMarketStatus => {
            r.zero(22, 2)?;
            Command::SetMarketStatus {
                market: r.u32(16),
                status: r.enum_u8(20, MarketStatus::from_u8)?,
                cancel_resting: r.bool(21)?,
            }
        }
        CommandKind::AddApiKey => Command::AddApiKey {
            account: r.u32(56),
            key_id: r.u64(16),
            secret_hash: r.array(24),
            permissions: r.u32(60),
        },
        CommandKind::RevokeApiKey => Command::RevokeApiKey { key_id: r.u64(16) },
        CommandKind::SetMarketLimits => {
            r.zero(28, 4)?;
            Command::SetMarketLimits {
                market: r.u32(16),
                max_open_orders_per_account: r.u32(20),
                max_open_orders: r.u32(24),
            }
        }
        CommandKind::Place
        | CommandKind::Cancel
        | CommandKind::Replace
        | CommandKind::CancelAll => {
            unreachable!("admin templates map to admin kinds")
        }
    })
}
