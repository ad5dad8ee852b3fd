//! Exact decimal prices and quantities for a market, for the JSON front-ends.
//!
//! The engine counts prices in ticks and quantities in lots (`docs/engine-encoding.md`):
//! a fill of `q` lots at `p` ticks is worth `p * q * tick_size` quote minor units and
//! moves `q * lot_size` base minor units. In whole assets, one tick is
//! `tick_size * 10^base_decimals / (lot_size * 10^quote_decimals)` quote per base, and
//! one lot is `lot_size / 10^base_decimals` base. Both are written here as an integer
//! step at a decimal scale (the fewest decimals that make the step whole), so a price is
//! `ticks * price_step` units of `10^-price_scale`, printed with exactly `price_scale`
//! decimals, and a decimal a client sends converts back to ticks only when it is a whole
//! number of steps. No floats anywhere.

use ringex_engine::{Amount, Price, Qty};

/// Most decimals a price or quantity is written with.
pub const SCALE_MAX: u32 = 18;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Units {
    /// One tick, in units of 10^-price_scale quote per base.
    pub price_step: u64,
    pub price_scale: u32,
    /// One lot, in units of 10^-qty_scale base.
    pub qty_step: u64,
    pub qty_scale: u32,
}

/// Why a decimal could not become ticks or lots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecimalError {
    /// Not a decimal number (`123`, `0.5`, `-0.25`; no exponent, no sign for quantities).
    Syntax,
    /// Not a whole number of steps (ticks or lots).
    NotAStep,
    /// Too large for the engine's integers.
    Overflow,
}

impl Units {
    /// The units of a market, or `None` when its tick is no finite decimal of at most
    /// [`SCALE_MAX`] places (a lot size of 3 minor units, say).
    pub fn new(
        tick_size: Amount,
        lot_size: Amount,
        base_decimals: u8,
        quote_decimals: u8,
    ) -> Option<Units> {
        if tick_size <= 0 || lot_size <= 0 {
            return None;
        }
        let pow = |e: u32| 10u128.checked_pow(e);
        let numerator = (tick_size as u128).checked_mul(pow(u32::from(base_decimals))?)?;
        let denominator = (lot_size as u128).checked_mul(pow(u32::from(quote_decimals))?)?;
        let mut price = None;
        for scale in 0..=SCALE_MAX {
            let scaled = numerator.checked_mul(pow(scale)?)?;
            if scaled.is_multiple_of(denominator) {
                price = Some((u64::try_from(scaled / denominator).ok()?, scale));
                break;
            }
        }
        let (price_step, price_scale) = price?;
        let mut qty_step = lot_size as u64;
        let mut qty_scale = u32::from(base_decimals);
        // The fewest decimals: 10,000 sat lots at 8 decimals are steps of 1 at 4.
        while qty_scale > 0 && qty_step.is_multiple_of(10) {
            qty_step /= 10;
            qty_scale -= 1;
        }
        if qty_scale > SCALE_MAX {
            return None;
        }
        Some(Units {
            price_step,
            price_scale,
            qty_step,
            qty_scale,
        })
    }

    /// A price in ticks as a decimal string.
    pub fn price(&self, ticks: Price, out: &mut Vec<u8>) {
        write_decimal(
            i128::from(ticks) * i128::from(self.price_step),
            self.price_scale,
            out,
        );
    }

    /// A quantity in lots as a decimal string.
    pub fn qty(&self, lots: Qty, out: &mut Vec<u8>) {
        write_decimal(
            i128::from(lots) * i128::from(self.qty_step),
            self.qty_scale,
            out,
        );
    }

    /// A price difference (may be negative) as a decimal string.
    pub fn price_delta(&self, ticks: i128, out: &mut Vec<u8>) {
        write_decimal(ticks * i128::from(self.price_step), self.price_scale, out);
    }

    /// A quote amount of `ticks * lots` (a notional) as a decimal string at the scale of
    /// price times quantity.
    pub fn notional(&self, tick_lots: u128, out: &mut Vec<u8>) {
        let steps = u128::from(self.price_step) * u128::from(self.qty_step);
        let units = tick_lots.saturating_mul(steps).min(i128::MAX as u128) as i128;
        write_decimal(units, self.price_scale + self.qty_scale, out);
    }

    /// A decimal price as ticks.
    pub fn parse_price(&self, s: &str) -> Result<Price, DecimalError> {
        let units = parse_decimal(s, self.price_scale, true)?;
        if units % i128::from(self.price_step) != 0 {
            return Err(DecimalError::NotAStep);
        }
        Price::try_from(units / i128::from(self.price_step)).map_err(|_| DecimalError::Overflow)
    }

    /// A decimal quantity as lots.
    pub fn parse_qty(&self, s: &str) -> Result<Qty, DecimalError> {
        let units = parse_decimal(s, self.qty_scale, false)?;
        if units % i128::from(self.qty_step) != 0 {
            return Err(DecimalError::NotAStep);
        }
        Qty::try_from(units / i128::from(self.qty_step)).map_err(|_| DecimalError::Overflow)
    }
}

/// `units * 10^-scale` with exactly `scale` decimals (no point when `scale` is 0).
pub fn write_decimal(units: i128, scale: u32, out: &mut Vec<u8>) {
    if units < 0 {
        out.push(b'-');
    }
    // The digits on the stack, not in a String: this runs for every number of every
    // published update. u128::MAX has 39 digits.
    let mut buf = [0u8; 40];
    let mut at = buf.len();
    let mut v = units.unsigned_abs();
    loop {
        at -= 1;
        buf[at] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let digits = &buf[at..];
    let scale = scale as usize;
    if scale == 0 {
        out.extend_from_slice(digits);
        return;
    }
    if digits.len() <= scale {
        out.extend_from_slice(b"0.");
        out.extend(std::iter::repeat_n(b'0', scale - digits.len()));
        out.extend_from_slice(digits);
    } else {
        let (int, frac) = digits.split_at(digits.len() - scale);
        out.extend_from_slice(int);
        out.push(b'.');
        out.extend_from_slice(frac);
    }
}

/// A decimal string as units of `10^-scale`. More decimals than `scale` are accepted
/// only as trailing zeros.
pub fn parse_decimal(s: &str, scale: u32, signed: bool) -> Result<i128, DecimalError> {
    let (negative, body) = match s.strip_prefix('-') {
        Some(rest) if signed => (true, rest),
        Some(_) => return Err(DecimalError::Syntax),
        None => (false, s),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    let digits_ok = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty()
        || !digits_ok(int)
        || !digits_ok(frac)
        || (body.contains('.') && frac.is_empty())
    {
        return Err(DecimalError::Syntax);
    }
    if int.len() > 38 || frac.len() > 38 {
        return Err(DecimalError::Overflow);
    }
    let scale = scale as usize;
    let (kept, dropped) = frac.split_at(frac.len().min(scale));
    if dropped.bytes().any(|b| b != b'0') {
        return Err(DecimalError::NotAStep);
    }
    let mut units: i128 = 0;
    let padding = scale - kept.len();
    for b in int
        .bytes()
        .chain(kept.bytes())
        .chain(std::iter::repeat_n(b'0', padding))
    {
        units = units
            .checked_mul(10)
            .and_then(|u| u.checked_add(i128::from(b - b'0')))
            .ok_or(DecimalError::Overflow)?;
    }
    Ok(if negative { -units } else { units })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut out = Vec::new();
        f(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_demo_markets_read_in_cents_and_their_lot_sizes() {
        // BTC-USDT: 1 tick = 0.01 USDT per BTC, 1 lot = 0.0001 BTC.
        let btc = Units::new(1, 10_000, 8, 6).unwrap();
        assert_eq!(text(|o| btc.price(6_000_000, o)), "60000.00");
        assert_eq!(text(|o| btc.qty(25, o)), "0.0025");
        // ETH-USDT: 1 tick = 0.01 USDT per ETH, 1 lot = 0.001 ETH.
        let eth = Units::new(10, 100_000, 8, 6).unwrap();
        assert_eq!(text(|o| eth.price(300_000, o)), "3000.00");
        assert_eq!(text(|o| eth.qty(1, o)), "0.001");
    }

    #[test]
    fn decimals_convert_back_only_when_they_are_whole_steps() {
        let btc = Units::new(1, 10_000, 8, 6).unwrap();
        assert_eq!(btc.parse_price("60000.01"), Ok(6_000_001));
        assert_eq!(btc.parse_price("60000.010000"), Ok(6_000_001));
        assert_eq!(btc.parse_price("60000"), Ok(6_000_000));
        assert_eq!(btc.parse_price("60000.001"), Err(DecimalError::NotAStep));
        assert_eq!(btc.parse_qty("0.0025"), Ok(25));
        assert_eq!(btc.parse_qty("0.00025"), Err(DecimalError::NotAStep));
        for bad in ["", ".5", "5.", "1e3", "0x10", "1,5", " 1", "--1"] {
            assert_eq!(btc.parse_price(bad), Err(DecimalError::Syntax), "{bad:?}");
        }
        assert_eq!(btc.parse_qty("-1"), Err(DecimalError::Syntax));
        assert_eq!(
            btc.parse_price("99999999999999999999999999"),
            Err(DecimalError::Overflow)
        );
    }

    #[test]
    fn a_tick_that_is_no_finite_decimal_is_refused() {
        assert_eq!(Units::new(1, 3, 0, 0), None);
        assert_eq!(Units::new(1, 3, 0, 0).map(|u| u.price_scale), None);
        let whole = Units::new(1, 1, 8, 2).unwrap();
        assert_eq!((whole.price_step, whole.price_scale), (1_000_000, 0));
    }

    #[test]
    fn negative_and_small_values_keep_their_decimals() {
        assert_eq!(text(|o| write_decimal(-5, 2, o)), "-0.05");
        assert_eq!(text(|o| write_decimal(0, 3, o)), "0.000");
        assert_eq!(text(|o| write_decimal(123, 0, o)), "123");
    }
}
