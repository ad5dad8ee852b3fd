//! The retail JSON API (`docs/websocket.md`): requests in, replies and private stream
//! messages out. Pure functions over values: no sockets, no state of their own.

use ringex_engine::{
    AssetId, CancelReason, MarketId, OrderKind, OrderRef, Price, Qty, RejectReason, Side, StpMode,
    TimeInForce,
};
use serde_json::Value;

use crate::protocol::{
    Cancel, Cancelled, ClientMessage, Filled, Liquidity, MassCancel, NewOrder, OpenOrdersQuery,
    OrderAccepted, Replace, Replaced,
};
use crate::publisher::{push_json_str, MarketInfo};
use crate::units::{write_decimal, DecimalError, Units};

/// Error codes of replies (`docs/websocket.md`, "Errors"). Engine reject reasons are
/// `REJECT_BASE + reason`.
pub mod code {
    pub const BAD_REQUEST: u32 = 400;
    pub const NOT_AUTHENTICATED: u32 = 401;
    pub const AUTH_FAILED: u32 = 403;
    pub const UNKNOWN_METHOD: u32 = 404;
    pub const ALREADY_AUTHENTICATED: u32 = 409;
    pub const TOO_MANY_SUBSCRIPTIONS: u32 = 413;
    pub const TOO_MANY_REQUESTS: u32 = 429;
    pub const UNAVAILABLE: u32 = 503;
    pub const REJECT_BASE: u32 = 1000;
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub code: u32,
    pub msg: String,
}

pub fn err(code: u32, msg: impl Into<String>) -> ApiError {
    ApiError {
        code,
        msg: msg.into(),
    }
}

pub fn reject(reason: RejectReason) -> ApiError {
    err(code::REJECT_BASE + reason as u32, reason.name())
}

/// A request: its id as the client wrote it (raw JSON, echoed verbatim), method, params.
#[derive(Clone, Debug)]
pub struct Request {
    pub id: String,
    pub method: String,
    pub params: Value,
}

/// Longest request id echoed, in bytes of JSON.
pub const ID_BYTES_MAX: usize = 80;

/// Reads a request; on error, the id to answer with ("null" when unreadable).
pub fn parse_request(text: &[u8]) -> Result<Request, (String, ApiError)> {
    let value: Value = serde_json::from_slice(text).map_err(|e| {
        (
            "null".to_string(),
            err(code::BAD_REQUEST, format!("invalid JSON: {e}")),
        )
    })?;
    let Value::Object(mut map) = value else {
        return Err((
            "null".into(),
            err(code::BAD_REQUEST, "a request is a JSON object"),
        ));
    };
    let id = match map.remove("id") {
        None | Some(Value::Null) => "null".to_string(),
        Some(v @ (Value::Number(_) | Value::String(_))) => v.to_string(),
        Some(_) => {
            return Err((
                "null".into(),
                err(code::BAD_REQUEST, "id must be a number, a string or null"),
            ))
        }
    };
    if id.len() > ID_BYTES_MAX {
        return Err(("null".into(), err(code::BAD_REQUEST, "id too long")));
    }
    let method = match map.remove("method") {
        Some(Value::String(m)) => m,
        _ => return Err((id, err(code::BAD_REQUEST, "method must be a string"))),
    };
    let params = map.remove("params").unwrap_or(Value::Null);
    Ok(Request { id, method, params })
}

/// `{"id":..,"result":..}`.
pub fn reply_result(id: &str, result: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + id.len() + result.len());
    out.extend_from_slice(b"{\"id\":");
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(b",\"result\":");
    out.extend_from_slice(result);
    out.push(b'}');
    out
}

/// `{"id":..,"error":{"code":..,"msg":..}}`.
pub fn reply_error(id: &str, e: &ApiError) -> Vec<u8> {
    let mut out = Vec::with_capacity(48 + id.len() + e.msg.len());
    out.extend_from_slice(b"{\"id\":");
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(format!(",\"error\":{{\"code\":{},\"msg\":", e.code).as_bytes());
    push_json_str(&mut out, &e.msg);
    out.extend_from_slice(b"}}");
    out
}

fn str_param<'a>(params: &'a Value, name: &str) -> Result<Option<&'a str>, ApiError> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(err(code::BAD_REQUEST, format!("{name} must be a string"))),
    }
}

fn required_str<'a>(params: &'a Value, name: &str) -> Result<&'a str, ApiError> {
    str_param(params, name)?.ok_or_else(|| err(code::BAD_REQUEST, format!("{name} is required")))
}

/// A u64 written as a JSON number or a string of digits.
pub fn u64_param(params: &Value, name: &str) -> Result<Option<u64>, ApiError> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| err(code::BAD_REQUEST, format!("{name} must be a whole number"))),
        Some(Value::String(s)) => s
            .parse()
            .map(Some)
            .map_err(|_| err(code::BAD_REQUEST, format!("{name} must be a whole number"))),
        Some(_) => Err(err(
            code::BAD_REQUEST,
            format!("{name} must be a whole number"),
        )),
    }
}

/// Names in a string or a list of strings.
pub fn names(params: &Value, plural: &str, singular: &str) -> Result<Vec<String>, ApiError> {
    let v = params.get(plural).or_else(|| params.get(singular));
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| err(code::BAD_REQUEST, format!("{plural} must be strings")))
            })
            .collect(),
        Some(_) => Err(err(
            code::BAD_REQUEST,
            format!("{plural} must be a list of strings"),
        )),
    }
}

/// The market a request names, with its units.
pub fn market<'a>(
    params: &Value,
    lookup: impl Fn(&str) -> Option<&'a MarketInfo>,
) -> Result<(MarketId, Units), ApiError> {
    let symbol = required_str(params, "market")?;
    let info = lookup(symbol).ok_or_else(|| reject(RejectReason::UnknownMarket))?;
    let units = info
        .units
        .ok_or_else(|| err(code::UNAVAILABLE, "this market has no decimal prices"))?;
    Ok((info.id, units))
}

fn price(units: &Units, s: &str) -> Result<Price, ApiError> {
    units.parse_price(s).map_err(|e| match e {
        DecimalError::NotAStep => reject(RejectReason::BadTick),
        DecimalError::Overflow => reject(RejectReason::InvalidPrice),
        DecimalError::Syntax => err(code::BAD_REQUEST, "price must be a decimal string"),
    })
}

fn qty(units: &Units, s: &str) -> Result<Qty, ApiError> {
    units.parse_qty(s).map_err(|e| match e {
        DecimalError::NotAStep | DecimalError::Overflow => reject(RejectReason::InvalidQuantity),
        DecimalError::Syntax => err(code::BAD_REQUEST, "qty must be a decimal string"),
    })
}

fn quote_amount(decimals: u8, s: &str) -> Result<i64, ApiError> {
    let units =
        crate::units::parse_decimal(s, u32::from(decimals), false).map_err(|e| match e {
            DecimalError::Syntax => err(code::BAD_REQUEST, "quoteBudget must be a decimal string"),
            _ => reject(RejectReason::InvalidQuantity),
        })?;
    i64::try_from(units).map_err(|_| reject(RejectReason::InvalidQuantity))
}

fn order_ref(params: &Value) -> Result<OrderRef, ApiError> {
    match (
        u64_param(params, "orderId")?,
        u64_param(params, "clientOrderId")?,
    ) {
        (Some(id), None) => Ok(OrderRef::Exchange(id)),
        (None, Some(id)) => Ok(OrderRef::Client(id)),
        _ => Err(err(
            code::BAD_REQUEST,
            "give orderId or clientOrderId, one of them",
        )),
    }
}

fn pick<T: Copy>(
    value: Option<&str>,
    default: T,
    table: &[(&str, T)],
    what: &str,
) -> Result<T, ApiError> {
    let Some(v) = value else {
        return Ok(default);
    };
    table
        .iter()
        .find(|(name, _)| *name == v)
        .map(|(_, t)| *t)
        .ok_or_else(|| err(code::BAD_REQUEST, format!("unknown {what} {v:?}")))
}

/// `order.place` as the binary protocol's NewOrder.
pub fn new_order<'a>(
    request_id: u64,
    params: &Value,
    lookup: impl Fn(&str) -> Option<&'a MarketInfo>,
) -> Result<ClientMessage, ApiError> {
    let symbol = required_str(params, "market")?;
    let info = lookup(symbol).ok_or_else(|| reject(RejectReason::UnknownMarket))?;
    let (market, units) = market(params, |_| Some(info))?;
    let side = pick(
        Some(required_str(params, "side")?),
        Side::Buy,
        &[("buy", Side::Buy), ("sell", Side::Sell)],
        "side",
    )?;
    let kind = pick(
        str_param(params, "type")?,
        OrderKind::Limit,
        &[("limit", OrderKind::Limit), ("market", OrderKind::Market)],
        "type",
    )?;
    let default_tif = match kind {
        OrderKind::Limit => TimeInForce::Gtc,
        OrderKind::Market => TimeInForce::Ioc,
    };
    let tif = pick(
        str_param(params, "timeInForce")?,
        default_tif,
        &[
            ("gtc", TimeInForce::Gtc),
            ("ioc", TimeInForce::Ioc),
            ("fok", TimeInForce::Fok),
            ("post_only", TimeInForce::PostOnly),
        ],
        "timeInForce",
    )?;
    let stp = pick(
        str_param(params, "stp")?,
        StpMode::None,
        &[
            ("none", StpMode::None),
            ("cancel_newest", StpMode::CancelNewest),
            ("cancel_oldest", StpMode::CancelOldest),
            ("cancel_both", StpMode::CancelBoth),
        ],
        "stp",
    )?;
    let price = match str_param(params, "price")? {
        Some(p) => price(&units, p)?,
        None => 0,
    };
    let qty = match str_param(params, "qty")? {
        Some(q) => qty(&units, q)?,
        None => 0,
    };
    let quote_budget = match str_param(params, "quoteBudget")? {
        Some(b) => quote_amount(info.quote_decimals, b)?,
        None => 0,
    };
    Ok(ClientMessage::NewOrder(NewOrder {
        request_id,
        market,
        client_order_id: u64_param(params, "clientOrderId")?.unwrap_or(0),
        side,
        kind,
        tif,
        stp,
        price,
        qty,
        quote_budget,
    }))
}

/// `order.cancel`.
pub fn cancel<'a>(
    request_id: u64,
    params: &Value,
    lookup: impl Fn(&str) -> Option<&'a MarketInfo>,
) -> Result<ClientMessage, ApiError> {
    let (market, _) = market(params, lookup)?;
    Ok(ClientMessage::Cancel(Cancel {
        request_id,
        market,
        order: order_ref(params)?,
    }))
}

/// `order.replace`.
pub fn replace<'a>(
    request_id: u64,
    params: &Value,
    lookup: impl Fn(&str) -> Option<&'a MarketInfo>,
) -> Result<ClientMessage, ApiError> {
    let (market, units) = market(params, lookup)?;
    Ok(ClientMessage::Replace(Replace {
        request_id,
        market,
        order: order_ref(params)?,
        price: price(&units, required_str(params, "price")?)?,
        qty: qty(&units, required_str(params, "qty")?)?,
    }))
}

/// `order.cancelAll` (one market, or every market without `market`).
pub fn cancel_all<'a>(
    request_id: u64,
    params: &Value,
    lookup: impl Fn(&str) -> Option<&'a MarketInfo>,
) -> Result<ClientMessage, ApiError> {
    let market = match str_param(params, "market")? {
        Some(_) => market(params, lookup)?.0,
        None => 0,
    };
    Ok(ClientMessage::MassCancel(MassCancel { request_id, market }))
}

/// `account.openOrders`.
pub fn open_orders<'a>(
    request_id: u64,
    params: &Value,
    lookup: impl Fn(&str) -> Option<&'a MarketInfo>,
) -> Result<ClientMessage, ApiError> {
    let market = match str_param(params, "market")? {
        Some(_) => market(params, lookup)?.0,
        None => 0,
    };
    Ok(ClientMessage::OpenOrdersQuery(OpenOrdersQuery {
        request_id,
        market,
    }))
}

/// The signature of `auth`: 64 hex digits.
pub fn signature(params: &Value) -> Result<[u8; 32], ApiError> {
    let hex = required_str(params, "signature")?;
    let bad = || err(code::BAD_REQUEST, "signature must be 64 hex digits");
    if hex.len() != 64 || !hex.is_ascii() {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

pub fn side_name(side: Side) -> &'static str {
    match side {
        Side::Buy => "buy",
        Side::Sell => "sell",
    }
}

pub fn cancel_reason_name(reason: CancelReason) -> &'static str {
    match reason {
        CancelReason::Requested => "requested",
        CancelReason::ImmediateOrCancel => "immediate_or_cancel",
        CancelReason::FillOrKill => "fill_or_kill",
        CancelReason::SelfTrade => "self_trade",
        CancelReason::CancelAll => "cancel_all",
        CancelReason::MarketStatus => "market_status",
        CancelReason::BudgetDone => "budget_done",
    }
}

/// Writes `"name":"decimal"` for a price, or ticks when the market is unknown.
fn put_price(out: &mut Vec<u8>, name: &str, info: Option<&MarketInfo>, p: Price) {
    out.extend_from_slice(format!(",\"{name}\":\"").as_bytes());
    match info.and_then(|i| i.units) {
        Some(u) => u.price(p, out),
        None => out.extend_from_slice(p.to_string().as_bytes()),
    }
    out.push(b'"');
}

fn put_qty(out: &mut Vec<u8>, name: &str, info: Option<&MarketInfo>, q: Qty) {
    out.extend_from_slice(format!(",\"{name}\":\"").as_bytes());
    match info.and_then(|i| i.units) {
        Some(u) => u.qty(q, out),
        None => out.extend_from_slice(q.to_string().as_bytes()),
    }
    out.push(b'"');
}

fn put_market(out: &mut Vec<u8>, info: Option<&MarketInfo>, id: MarketId) {
    out.extend_from_slice(b"\"market\":");
    match info {
        Some(i) => push_json_str(out, &i.symbol),
        None => out.extend_from_slice(id.to_string().as_bytes()),
    }
}

/// An amount in an asset's minor units as a decimal string.
pub fn put_amount(out: &mut Vec<u8>, name: &str, decimals: u8, amount: i64) {
    out.extend_from_slice(format!(",\"{name}\":\"").as_bytes());
    write_decimal(i128::from(amount), u32::from(decimals), out);
    out.push(b'"');
}

/// An order's fields as JSON object members (after `{`).
pub fn accepted_fields(out: &mut Vec<u8>, m: &OrderAccepted, info: Option<&MarketInfo>) {
    put_market(out, info, m.market);
    out.extend_from_slice(
        format!(
            ",\"orderId\":{},\"clientOrderId\":{},\"side\":\"{}\"",
            m.order_id,
            m.client_order_id,
            side_name(m.side)
        )
        .as_bytes(),
    );
    put_price(out, "price", info, m.price);
    put_qty(out, "qty", info, m.qty);
}

pub fn filled_fields(out: &mut Vec<u8>, m: &Filled, info: Option<&MarketInfo>) {
    put_market(out, info, m.market);
    let liquidity = match m.liquidity {
        Liquidity::Maker => "maker",
        Liquidity::Taker => "taker",
    };
    out.extend_from_slice(
        format!(
            ",\"orderId\":{},\"clientOrderId\":{},\"matchId\":{},\"side\":\"{}\",\
             \"liquidity\":\"{liquidity}\"",
            m.order_id,
            m.client_order_id,
            m.match_id,
            side_name(m.side)
        )
        .as_bytes(),
    );
    put_price(out, "price", info, m.price);
    put_qty(out, "qty", info, m.qty);
    put_qty(out, "remainingQty", info, m.remaining_qty);
    match info {
        Some(i) => put_amount(out, "fee", i.quote_decimals, m.fee),
        None => out.extend_from_slice(format!(",\"fee\":\"{}\"", m.fee).as_bytes()),
    }
}

pub fn cancelled_fields(out: &mut Vec<u8>, m: &Cancelled, info: Option<&MarketInfo>) {
    put_market(out, info, m.market);
    out.extend_from_slice(
        format!(
            ",\"orderId\":{},\"clientOrderId\":{},\"reason\":\"{}\"",
            m.order_id,
            m.client_order_id,
            cancel_reason_name(m.reason)
        )
        .as_bytes(),
    );
    put_qty(out, "remainingQty", info, m.remaining_qty);
}

pub fn replaced_fields(out: &mut Vec<u8>, m: &Replaced, info: Option<&MarketInfo>) {
    put_market(out, info, m.market);
    out.extend_from_slice(
        format!(
            ",\"orderId\":{},\"clientOrderId\":{},\"priorityKept\":{}",
            m.order_id, m.client_order_id, m.priority_kept
        )
        .as_bytes(),
    );
    put_price(out, "price", info, m.price);
    put_qty(out, "qty", info, m.qty);
}

/// An open order of `account.openOrders`.
pub fn open_order_fields(
    out: &mut Vec<u8>,
    m: &crate::protocol::OpenOrder,
    info: Option<&MarketInfo>,
) {
    put_market(out, info, m.market);
    out.extend_from_slice(
        format!(
            ",\"orderId\":{},\"clientOrderId\":{},\"side\":\"{}\"",
            m.order_id,
            m.client_order_id,
            side_name(m.side)
        )
        .as_bytes(),
    );
    put_price(out, "price", info, m.price);
    put_qty(out, "remainingQty", info, m.remaining_qty);
}

/// A balance entry: `{"asset":..,"available":..,"held":..}`.
pub fn balance_entry(
    out: &mut Vec<u8>,
    asset: AssetId,
    symbol_decimals: Option<(&str, u8)>,
    available: i64,
    held: i64,
) {
    out.extend_from_slice(b"{\"asset\":");
    let decimals = match symbol_decimals {
        Some((s, d)) => {
            push_json_str(out, s);
            d
        }
        None => {
            out.extend_from_slice(asset.to_string().as_bytes());
            0
        }
    };
    put_amount(out, "available", decimals, available);
    put_amount(out, "held", decimals, held);
    out.push(b'}');
}

/// The market list of the `markets` method.
pub fn market_entry(out: &mut Vec<u8>, m: &MarketInfo) {
    out.extend_from_slice(b"{\"market\":");
    push_json_str(out, &m.symbol);
    out.extend_from_slice(b",\"base\":");
    push_json_str(out, &m.base);
    out.extend_from_slice(b",\"quote\":");
    push_json_str(out, &m.quote);
    let status = match m.status {
        ringex_engine::MarketStatus::Open => "open",
        ringex_engine::MarketStatus::Halted => "halted",
        ringex_engine::MarketStatus::CancelOnly => "cancel_only",
        ringex_engine::MarketStatus::Closed => "closed",
    };
    out.extend_from_slice(format!(",\"status\":\"{status}\"").as_bytes());
    if let Some(u) = m.units {
        out.extend_from_slice(b",\"priceStep\":\"");
        write_decimal(i128::from(u.price_step), u.price_scale, out);
        out.extend_from_slice(b"\",\"qtyStep\":\"");
        write_decimal(i128::from(u.qty_step), u.qty_scale, out);
        out.push(b'"');
        put_qty(out, "qtyMin", Some(m), m.qty_min);
        put_qty(out, "qtyMax", Some(m), m.qty_max);
    }
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_echoed_as_written_and_broken_requests_say_why() {
        let r = parse_request(br#"{"id":"abc","method":"ping"}"#).unwrap();
        assert_eq!((r.id.as_str(), r.method.as_str()), ("\"abc\"", "ping"));
        let r = parse_request(br#"{"method":"ping","id":18446744073709551615}"#).unwrap();
        assert_eq!(r.id, "18446744073709551615");
        let (id, e) = parse_request(b"{not json").unwrap_err();
        assert_eq!((id.as_str(), e.code), ("null", code::BAD_REQUEST));
        let (id, e) = parse_request(br#"{"id":7,"method":3}"#).unwrap_err();
        assert_eq!((id.as_str(), e.code), ("7", code::BAD_REQUEST));
        let reply = reply_error("7", &reject(RejectReason::BadTick));
        assert_eq!(
            String::from_utf8(reply).unwrap(),
            r#"{"id":7,"error":{"code":1030,"msg":"bad_tick"}}"#
        );
    }
}
