//! The binary TCP protocol for market makers: message types and their codec.
//!
//! `docs/protocol.md` is the contract; this module implements it. Every frame is an
//! 8-byte header followed by a fixed-layout body:
//!
//! | offset | size | type | field        |
//! |--------|------|------|--------------|
//! | 0      | 2    | u16  | `frame_len`  |
//! | 2      | 2    | u16  | `block_len`  |
//! | 4      | 2    | u16  | `template_id`|
//! | 6      | 1    | u8   | `schema_id`  |
//! | 7      | 1    | u8   | `version`    |
//!
//! Little-endian, fields naturally aligned, frames a multiple of 8 bytes. Evolution is
//! append-only (SBE style): a decoder accepts a `block_len` at least as long as the one it
//! knows and ignores the tail, and rejects a shorter one.
//!
//! Encoding and decoding never allocate. Decoding never panics: it checks the frame
//! length, the schema, the template and the block length before reading a field, and
//! validates every enum, bool and tag byte and every reserved byte (must be zero), so that
//! whatever decodes (at the current version and block length) re-encodes to the same
//! bytes.

use std::fmt;

mod auth;
mod client;
mod server;
mod wire;

#[cfg(test)]
mod tests;

pub use auth::{secret_hash, sign_login, verify_login, LOGIN_SIGNED_SIZE};
pub use client::{
    client_block_len, decode_client, encode_client, AdminRequest, BalanceQuery, Cancel,
    ClientMessage, Login, MassCancel, NewOrder, OpenOrdersQuery, Replace,
};
pub use server::{
    decode_server, encode_server, server_block_len, AdminAck, Balance, BalanceEnd, Cancelled,
    Filled, LoginAccepted, MassCancelDone, OpenOrder, OpenOrdersEnd, OrderAccepted, OrderRejected,
    Promoted, Replaced, RequestDone, ServerMessage, SystemEvent,
};

/// Identifies this protocol: a frame with another schema id is refused.
pub const SCHEMA_ID: u8 = 1;
/// The layout version written by the encoders. Decoders accept any version from 1 up:
/// newer versions only append fields, which the block length lets us skip.
pub const VERSION: u8 = 1;
pub const HEADER_SIZE: usize = 8;
/// Frames and bodies are multiples of this many bytes, so every field is aligned.
pub const ALIGN: usize = 8;
/// The largest frame either side may send. A buffer this large fits any message.
pub const FRAME_SIZE_MAX: usize = 512;

/// Template ids. Client and server templates are disjoint, so a frame sent the wrong way
/// fails with [`FrameError::UnknownTemplate`] instead of decoding as something else.
pub mod template {
    // ---- client -> server: session ----
    pub const LOGIN: u16 = 1;
    pub const LOGOUT: u16 = 2;
    pub const HEARTBEAT: u16 = 3;
    // ---- client -> server: trading and queries ----
    pub const NEW_ORDER: u16 = 10;
    pub const CANCEL: u16 = 11;
    pub const REPLACE: u16 = 12;
    pub const MASS_CANCEL: u16 = 13;
    pub const BALANCE_QUERY: u16 = 14;
    pub const OPEN_ORDERS_QUERY: u16 = 15;
    // ---- client -> server: admin. Template id = engine `CommandKind` + 16. ----
    pub const CREATE_ASSET: u16 = 32;
    pub const CREATE_MARKET: u16 = 33;
    pub const CREATE_ACCOUNT: u16 = 34;
    pub const DEPOSIT: u16 = 35;
    pub const WITHDRAW: u16 = 36;
    pub const SET_MARKET_FEES: u16 = 37;
    pub const SET_FEE_TIER: u16 = 38;
    pub const SET_MARKET_STATUS: u16 = 39;
    pub const SUSPEND_ACCOUNT: u16 = 40;
    pub const RESUME_ACCOUNT: u16 = 41;
    pub const ADD_API_KEY: u16 = 42;
    pub const REVOKE_API_KEY: u16 = 43;
    pub const SET_MARKET_LIMITS: u16 = 44;
    /// Admin template id of an engine command kind: kind + 16.
    pub const ADMIN_OFFSET: u16 = 16;
    // ---- client -> server: admin, not an engine command ----
    /// Makes a standby the primary (admin listener, admin session).
    pub const PROMOTE: u16 = 48;

    // ---- server -> client: session (not sequenced) ----
    pub const LOGIN_ACCEPTED: u16 = 101;
    pub const LOGIN_REJECTED: u16 = 102;
    pub const SERVER_LOGOUT: u16 = 103;
    pub const SERVER_HEARTBEAT: u16 = 104;
    // ---- server -> client: sequenced ----
    pub const ORDER_ACCEPTED: u16 = 110;
    pub const ORDER_REJECTED: u16 = 111;
    pub const FILLED: u16 = 112;
    pub const CANCELLED: u16 = 113;
    pub const REPLACED: u16 = 114;
    pub const MASS_CANCEL_DONE: u16 = 115;
    pub const BALANCE: u16 = 116;
    pub const BALANCE_END: u16 = 117;
    pub const OPEN_ORDER: u16 = 118;
    pub const OPEN_ORDERS_END: u16 = 119;
    pub const SYSTEM_EVENT: u16 = 120;
    pub const ADMIN_ACK: u16 = 121;
    pub const REQUEST_DONE: u16 = 122;
    pub const PROMOTED: u16 = 123;

    pub const CLIENT_ALL: [u16; 23] = [
        LOGIN,
        LOGOUT,
        HEARTBEAT,
        NEW_ORDER,
        CANCEL,
        REPLACE,
        MASS_CANCEL,
        BALANCE_QUERY,
        OPEN_ORDERS_QUERY,
        CREATE_ASSET,
        CREATE_MARKET,
        CREATE_ACCOUNT,
        DEPOSIT,
        WITHDRAW,
        SET_MARKET_FEES,
        SET_FEE_TIER,
        SET_MARKET_STATUS,
        SUSPEND_ACCOUNT,
        RESUME_ACCOUNT,
        ADD_API_KEY,
        REVOKE_API_KEY,
        SET_MARKET_LIMITS,
        PROMOTE,
    ];

    pub const SERVER_ALL: [u16; 18] = [
        LOGIN_ACCEPTED,
        LOGIN_REJECTED,
        SERVER_LOGOUT,
        SERVER_HEARTBEAT,
        ORDER_ACCEPTED,
        ORDER_REJECTED,
        FILLED,
        CANCELLED,
        REPLACED,
        MASS_CANCEL_DONE,
        BALANCE,
        BALANCE_END,
        OPEN_ORDER,
        OPEN_ORDERS_END,
        SYSTEM_EVENT,
        ADMIN_ACK,
        REQUEST_DONE,
        PROMOTED,
    ];

    /// Client templates that carry a `request_id` at frame offset 8: everything but the
    /// session messages.
    pub fn is_request(id: u16) -> bool {
        matches!(
            id,
            NEW_ORDER..=OPEN_ORDERS_QUERY | CREATE_ASSET..=SET_MARKET_LIMITS | PROMOTE
        )
    }

    /// Requests only an admin session may send: the admin engine commands and Promote.
    pub fn is_admin(id: u16) -> bool {
        matches!(id, CREATE_ASSET..=SET_MARKET_LIMITS | PROMOTE)
    }

    /// A stable name for logs and error messages.
    pub fn name(id: u16) -> &'static str {
        match id {
            LOGIN => "Login",
            LOGOUT => "Logout",
            HEARTBEAT => "Heartbeat",
            NEW_ORDER => "NewOrder",
            CANCEL => "Cancel",
            REPLACE => "Replace",
            MASS_CANCEL => "MassCancel",
            BALANCE_QUERY => "BalanceQuery",
            OPEN_ORDERS_QUERY => "OpenOrdersQuery",
            CREATE_ASSET => "CreateAsset",
            CREATE_MARKET => "CreateMarket",
            CREATE_ACCOUNT => "CreateAccount",
            DEPOSIT => "Deposit",
            WITHDRAW => "Withdraw",
            SET_MARKET_FEES => "SetMarketFees",
            SET_FEE_TIER => "SetFeeTier",
            SET_MARKET_STATUS => "SetMarketStatus",
            SUSPEND_ACCOUNT => "SuspendAccount",
            RESUME_ACCOUNT => "ResumeAccount",
            ADD_API_KEY => "AddApiKey",
            REVOKE_API_KEY => "RevokeApiKey",
            SET_MARKET_LIMITS => "SetMarketLimits",
            PROMOTE => "Promote",
            LOGIN_ACCEPTED => "LoginAccepted",
            LOGIN_REJECTED => "LoginRejected",
            SERVER_LOGOUT => "Logout(server)",
            SERVER_HEARTBEAT => "Heartbeat(server)",
            ORDER_ACCEPTED => "OrderAccepted",
            ORDER_REJECTED => "OrderRejected",
            FILLED => "Filled",
            CANCELLED => "Cancelled",
            REPLACED => "Replaced",
            MASS_CANCEL_DONE => "MassCancelDone",
            BALANCE => "Balance",
            BALANCE_END => "BalanceEnd",
            OPEN_ORDER => "OpenOrder",
            OPEN_ORDERS_END => "OpenOrdersEnd",
            SYSTEM_EVENT => "SystemEvent",
            ADMIN_ACK => "AdminAck",
            REQUEST_DONE => "RequestDone",
            PROMOTED => "Promoted",
            _ => "unknown",
        }
    }
}

/// `Login.flags` and `LoginAccepted.flags` bits. Undefined bits must be zero.
pub mod login_flags {
    /// Cancel all the account's open orders when this session's connection ends.
    pub const CANCEL_ON_DISCONNECT: u32 = 1 << 0;
    /// Server only: this login resumed an existing session.
    pub const RESUMED: u32 = 1 << 1;
    pub const CLIENT_ALL: u32 = CANCEL_ON_DISCONNECT;
    pub const SERVER_ALL: u32 = CANCEL_ON_DISCONNECT | RESUMED;
}

/// API key permission bits (`AddApiKey.permissions`). Other bits are ignored.
pub mod permission {
    /// Place, cancel, replace, mass cancel, queries.
    pub const TRADE: u32 = 1 << 0;
    /// Admin requests, on the admin listener only.
    pub const ADMIN: u32 = 1 << 1;
}

/// Why a Login was refused. Numeric values are wire format: append only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum LoginRejectReason {
    UnknownKey = 1,
    BadSignature = 2,
    /// `timestamp_ns` too far from the server clock.
    StaleTimestamp = 3,
    /// The (key, nonce) pair was seen within twice the freshness window (while a login
    /// carrying it could still pass the timestamp check).
    ReplayedNonce = 4,
    /// The session to resume is unknown, ended, of another key, or `resume_from_seq` is
    /// outside the retained window. Log in to a new session and query open orders.
    ResumeImpossible = 5,
    /// The session to resume is still attached to a live connection.
    AlreadyLoggedIn = 6,
    /// The key lacks the listener's permission: [`permission::ADMIN`] on the admin
    /// listener, [`permission::TRADE`] on the trading listener.
    WrongListener = 7,
    AccountSuspended = 8,
    /// The key already has its most sessions (16, detached ones included), or the
    /// address its most logged-in connections. Connections over the limit of connections
    /// not yet logged in, or the total limit, are closed at accept, with no answer.
    TooManySessions = 9,
    /// The exchange takes no input now (its journal failed, or it is stopping).
    Unavailable = 10,
}

impl LoginRejectReason {
    pub const ALL: [LoginRejectReason; 10] = {
        use LoginRejectReason::*;
        [
            UnknownKey,
            BadSignature,
            StaleTimestamp,
            ReplayedNonce,
            ResumeImpossible,
            AlreadyLoggedIn,
            WrongListener,
            AccountSuspended,
            TooManySessions,
            Unavailable,
        ]
    };

    pub fn from_u16(v: u16) -> Option<LoginRejectReason> {
        LoginRejectReason::ALL.into_iter().find(|r| *r as u16 == v)
    }
}

/// Why the server ended a session (or acknowledges the client's Logout). Numeric values
/// are wire format: append only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum LogoutReason {
    /// Answer to the client's Logout.
    Requested = 1,
    /// A message not allowed in this state: a request before Login, a second Login...
    ProtocolViolation = 2,
    /// Bad frame length, block length, schema id or version: the stream cannot be trusted.
    MalformedFrame = 3,
    UnknownTemplate = 4,
    /// A bad enum, flag or reserved byte in a session message.
    InvalidField = 5,
    /// Nothing received for the configured silence timeout.
    HeartbeatTimeout = 6,
    /// No valid Login within the login timeout after connect.
    LoginTimeout = 7,
    /// The outbound buffer limit was exceeded: the client does not read fast enough.
    SlowConsumer = 8,
    /// More requests refused within one second than the key's rate (docs/protocol.md
    /// 3.5).
    RateLimitAbuse = 9,
    ServerShutdown = 10,
    /// The session's API key was revoked, or its account suspended.
    KeyRevoked = 11,
    /// An admin request on a session that is not an admin session.
    NotPermitted = 12,
}

impl LogoutReason {
    pub const ALL: [LogoutReason; 12] = {
        use LogoutReason::*;
        [
            Requested,
            ProtocolViolation,
            MalformedFrame,
            UnknownTemplate,
            InvalidField,
            HeartbeatTimeout,
            LoginTimeout,
            SlowConsumer,
            RateLimitAbuse,
            ServerShutdown,
            KeyRevoked,
            NotPermitted,
        ]
    };

    pub fn from_u16(v: u16) -> Option<LogoutReason> {
        LogoutReason::ALL.into_iter().find(|r| *r as u16 == v)
    }
}

/// Maker or taker side of a fill.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Liquidity {
    Maker = 1,
    Taker = 2,
}

impl Liquidity {
    pub fn from_u8(v: u8) -> Option<Liquidity> {
        match v {
            1 => Some(Liquidity::Maker),
            2 => Some(Liquidity::Taker),
            _ => None,
        }
    }
}

/// Why bytes did not decode into a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Fewer bytes than the frame needs: read more and decode again. Not an error.
    Incomplete,
    /// `frame_len` below the header size, above [`FRAME_SIZE_MAX`] or not a multiple of
    /// [`ALIGN`]. Framing is lost.
    BadLength {
        frame_len: u16,
    },
    /// `block_len` is not `frame_len - 8`, or is shorter than this template's body.
    BadBlockLength {
        template_id: u16,
        block_len: u16,
    },
    BadSchema {
        schema_id: u8,
    },
    /// Version zero: versions start at 1.
    BadVersion {
        version: u8,
    },
    /// Not a template of this direction.
    UnknownTemplate {
        template_id: u16,
    },
    /// A well-framed message with a bad enum, bool, tag, flag or reserved byte at
    /// `offset` (from the frame start). `frame_len` says how much to skip; for an
    /// application request `request_id` is its id, so the server can reject just that
    /// request (zero for session messages).
    InvalidField {
        template_id: u16,
        offset: u16,
        frame_len: u16,
        request_id: u64,
    },
}

impl FrameError {
    /// How the server ends the session on this error, or `None` if the session goes on:
    /// `Incomplete` (read more), or `InvalidField` in an application request, which the
    /// server answers with `OrderRejected { reason: Malformed }` for that `request_id`
    /// (ignored like any request if the id is not above the last processed one), skipping
    /// `frame_len` bytes.
    pub fn logout_reason(&self) -> Option<LogoutReason> {
        match *self {
            FrameError::Incomplete => None,
            FrameError::BadLength { .. }
            | FrameError::BadBlockLength { .. }
            | FrameError::BadSchema { .. }
            | FrameError::BadVersion { .. } => Some(LogoutReason::MalformedFrame),
            FrameError::UnknownTemplate { .. } => Some(LogoutReason::UnknownTemplate),
            FrameError::InvalidField { template_id, .. } => {
                if template::is_request(template_id) {
                    None
                } else {
                    Some(LogoutReason::InvalidField)
                }
            }
        }
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            FrameError::Incomplete => write!(f, "incomplete frame"),
            FrameError::BadLength { frame_len } => write!(
                f,
                "bad frame length {frame_len} (must be {HEADER_SIZE}..={FRAME_SIZE_MAX}, \
                 a multiple of {ALIGN})"
            ),
            FrameError::BadBlockLength {
                template_id,
                block_len,
            } => write!(
                f,
                "bad block length {block_len} for template {template_id} ({})",
                template::name(template_id)
            ),
            FrameError::BadSchema { schema_id } => {
                write!(f, "unknown schema id {schema_id} (expected {SCHEMA_ID})")
            }
            FrameError::BadVersion { version } => write!(f, "bad version {version}"),
            FrameError::UnknownTemplate { template_id } => {
                write!(f, "unknown template id {template_id}")
            }
            FrameError::InvalidField {
                template_id,
                offset,
                request_id,
                ..
            } => write!(
                f,
                "invalid field at offset {offset} of {} (template {template_id}, \
                 request_id {request_id})",
                template::name(template_id)
            ),
        }
    }
}

impl std::error::Error for FrameError {}

/// The header fields of a complete, well-framed frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub frame_len: u16,
    pub block_len: u16,
    pub template_id: u16,
    pub schema_id: u8,
    pub version: u8,
}

/// Checks the framing of the first frame in `bytes` without decoding its body: length
/// bounds and alignment, schema, version, and `block_len == frame_len - 8`. The template
/// is not checked. Reports `BadLength` as soon as the 2 length bytes are in, so garbage
/// is refused without waiting for more input.
pub fn frame_header(bytes: &[u8]) -> Result<FrameHeader, FrameError> {
    if bytes.len() < 2 {
        return Err(FrameError::Incomplete);
    }
    let frame_len = u16::from_le_bytes([bytes[0], bytes[1]]);
    let len = frame_len as usize;
    if !(HEADER_SIZE..=FRAME_SIZE_MAX).contains(&len) || !len.is_multiple_of(ALIGN) {
        return Err(FrameError::BadLength { frame_len });
    }
    if bytes.len() < len {
        return Err(FrameError::Incomplete);
    }
    let header = FrameHeader {
        frame_len,
        block_len: u16::from_le_bytes([bytes[2], bytes[3]]),
        template_id: u16::from_le_bytes([bytes[4], bytes[5]]),
        schema_id: bytes[6],
        version: bytes[7],
    };
    if header.schema_id != SCHEMA_ID {
        return Err(FrameError::BadSchema {
            schema_id: header.schema_id,
        });
    }
    if header.version == 0 {
        return Err(FrameError::BadVersion {
            version: header.version,
        });
    }
    if header.block_len as usize != len - HEADER_SIZE {
        return Err(FrameError::BadBlockLength {
            template_id: header.template_id,
            block_len: header.block_len,
        });
    }
    Ok(header)
}
