//! Model-based property tests of `Exchange::apply`.
//!
//! `Model` below is a slow, obviously-correct reference written from `engine/README.md`
//! alone (not from the engine's source): resting orders live in one `Vec` with a global
//! arrival counter, the best order is found by a linear scan (best price, then earliest
//! arrival), balances are a `BTreeMap<(account, asset), (available, held)>`, and every
//! product is computed in `i128`. Random command streams over a small world (three
//! assets, two markets, four funded accounts) must produce, command by command, exactly
//! the engine's events and balances; the engine runs in checked mode, so its own
//! invariants are asserted after every command as well.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use ringex_engine::*;

// ============================================================================ the model

const PPM_I: i128 = 1_000_000;

#[derive(Clone, Debug)]
struct MOrder {
    id: OrderId,
    /// Global arrival counter: time priority among resting orders.
    arrival: u64,
    account: AccountId,
    market: MarketId,
    cid: ClientOrderId,
    side: Side,
    price: Price,
    remaining: Qty,
    /// What this order currently holds (quote for buys, base for sells).
    hold: Amount,
    maker_fee: u32,
    taker_fee: u32,
    stp: StpMode,
    post_only: bool,
}

#[derive(Clone, Debug)]
struct MMarket {
    spec: MarketSpec,
    status: MarketStatus,
    reference: Price,
    /// Open-order caps: (per account, per market).
    limits: (u32, u32),
}

impl MMarket {
    /// `[ref - w, ref + w]`, `w = ref * band / 1e6`, low end at least 1.
    fn band(&self) -> Option<(Price, Price)> {
        if self.spec.band_ppm == 0 {
            return None;
        }
        let r = self.reference as i128;
        let w = r * self.spec.band_ppm as i128 / PPM_I;
        Some(((r - w).max(1) as Price, (r + w) as Price))
    }
}

#[derive(Clone, Debug, Default)]
struct MAccount {
    suspended: bool,
    tiers: BTreeMap<MarketId, (u32, u32)>,
}

#[derive(Clone, Debug)]
struct Model {
    assets: BTreeSet<AssetId>,
    markets: BTreeMap<MarketId, MMarket>,
    accounts: BTreeMap<AccountId, MAccount>,
    /// (account, asset) -> (available, held)
    balances: BTreeMap<(AccountId, AssetId), (Amount, Amount)>,
    /// Every resting order, in no particular order.
    orders: Vec<MOrder>,
    next_id: OrderId,
    arrival: u64,
    deposit_refs: BTreeSet<u64>,
    withdraw_refs: BTreeSet<u64>,
    api_keys: BTreeSet<u64>,
}

type R<T> = Result<T, RejectReason>;

fn to_amount(v: i128) -> R<Amount> {
    Amount::try_from(v).map_err(|_| RejectReason::AmountOverflow)
}

fn notional(price: Price, qty: Qty, tick: Amount) -> i128 {
    price as i128 * qty as i128 * tick as i128
}

fn fee_down(notional: i128, ppm: u32) -> i128 {
    notional * ppm as i128 / PPM_I
}

/// A buy's hold: notional plus the worst-case fee rounded up.
fn buy_hold(price: Price, qty: Qty, tick: Amount, ppm: u32) -> R<Amount> {
    let n = notional(price, qty, tick);
    to_amount(n + (n * ppm as i128 + PPM_I - 1) / PPM_I)
}

/// Lots a budget buys at one price level.
fn lots_for_budget(budget: Amount, price: Price, tick: Amount, taker_ppm: u32) -> Qty {
    let den = price as i128 * tick as i128 * (PPM_I + taker_ppm as i128);
    (budget as i128 * PPM_I / den) as Qty
}

fn check_fees(maker: u32, taker: u32) -> R<()> {
    if maker > 1_000_000 || taker > 1_000_000 {
        return Err(RejectReason::InvalidFee);
    }
    Ok(())
}

/// Whether a limit order of `side` at `limit` may trade against a resting `price`.
fn crosses(side: Side, limit: Price, resting: Price) -> bool {
    match side {
        Side::Buy => resting <= limit,
        Side::Sell => resting >= limit,
    }
}

/// Whether resting price `a` (arrival `aa`) beats `b` (arrival `ab`) for a taker of
/// `taker_side`: better price first, then earlier arrival.
fn better(taker_side: Side, a: Price, aa: u64, b: Price, ab: u64) -> bool {
    if a != b {
        match taker_side {
            Side::Buy => a < b,
            Side::Sell => a > b,
        }
    } else {
        aa < ab
    }
}

/// The order a taker is being matched as: a fresh place or a replaced order.
struct Taker {
    order: MOrder,
    /// Limit price used for matching (band top/bottom for market orders, or "no limit").
    limit: Price,
    tif: TimeInForce,
    /// `Some(remaining budget)` for a market buy by budget.
    budget: Option<Amount>,
}

impl Model {
    fn new() -> Model {
        let mut accounts = BTreeMap::new();
        accounts.insert(FEE_ACCOUNT, MAccount::default());
        Model {
            assets: BTreeSet::new(),
            markets: BTreeMap::new(),
            accounts,
            balances: BTreeMap::new(),
            orders: Vec::new(),
            next_id: 1,
            arrival: 0,
            deposit_refs: BTreeSet::new(),
            withdraw_refs: BTreeSet::new(),
            api_keys: BTreeSet::new(),
        }
    }

    fn balance(&self, account: AccountId, asset: AssetId) -> (Amount, Amount) {
        self.balances
            .get(&(account, asset))
            .copied()
            .unwrap_or((0, 0))
    }

    fn bal_mut(&mut self, account: AccountId, asset: AssetId) -> &mut (Amount, Amount) {
        self.balances.entry((account, asset)).or_insert((0, 0))
    }

    /// Moves `amount` from available to held (negative: back).
    fn hold(&mut self, account: AccountId, asset: AssetId, amount: Amount) {
        let b = self.bal_mut(account, asset);
        b.0 -= amount;
        b.1 += amount;
    }

    fn hold_asset(&self, market: MarketId, side: Side) -> AssetId {
        let s = &self.markets[&market].spec;
        match side {
            Side::Buy => s.quote,
            Side::Sell => s.base,
        }
    }

    /// What a resting order with this remainder must hold.
    fn need(&self, o: &MOrder) -> R<Amount> {
        let s = &self.markets[&o.market].spec;
        match o.side {
            Side::Buy => buy_hold(
                o.price,
                o.remaining,
                s.tick_size,
                o.maker_fee.max(o.taker_fee),
            ),
            Side::Sell => to_amount(o.remaining as i128 * s.lot_size as i128),
        }
    }

    fn level_total(&self, market: MarketId, side: Side, price: Price) -> Qty {
        self.orders
            .iter()
            .filter(|o| o.market == market && o.side == side && o.price == price)
            .map(|o| o.remaining)
            .sum()
    }

    fn level_event(&self, market: MarketId, side: Side, price: Price) -> Event {
        Event::Level {
            market,
            side,
            price,
            total_qty: self.level_total(market, side, price),
        }
    }

    fn fee_rates(&self, account: AccountId, market: MarketId) -> (u32, u32) {
        match self.accounts[&account].tiers.get(&market) {
            Some(&t) => t,
            None => {
                let s = &self.markets[&market].spec;
                (s.maker_fee_ppm, s.taker_fee_ppm)
            }
        }
    }

    /// Index in `orders` of the best resting order a taker may meet, by linear scan.
    fn best_opposite(&self, market: MarketId, taker_side: Side, limit: Price) -> Option<usize> {
        let mut best: Option<usize> = None;
        for (i, o) in self.orders.iter().enumerate() {
            if o.market != market || o.side == taker_side || !crosses(taker_side, limit, o.price) {
                continue;
            }
            best = match best {
                Some(b)
                    if !better(
                        taker_side,
                        o.price,
                        o.arrival,
                        self.orders[b].price,
                        self.orders[b].arrival,
                    ) =>
                {
                    Some(b)
                }
                _ => Some(i),
            };
        }
        best
    }

    /// The crossing resting orders a taker would meet, in price-time priority.
    fn crossing_in_priority(&self, market: MarketId, side: Side, limit: Price) -> Vec<MOrder> {
        let mut v: Vec<MOrder> = self
            .orders
            .iter()
            .filter(|o| o.market == market && o.side != side && crosses(side, limit, o.price))
            .cloned()
            .collect();
        v.sort_by(|a, b| {
            if better(side, a.price, a.arrival, b.price, b.arrival) {
                std::cmp::Ordering::Less
            } else {
                std::cmp::Ordering::Greater
            }
        });
        v
    }

    fn find_order(&self, account: AccountId, market: MarketId, r: OrderRef) -> R<usize> {
        self.orders
            .iter()
            .position(|o| {
                o.account == account
                    && o.market == market
                    && match r {
                        OrderRef::Exchange(id) => o.id == id,
                        OrderRef::Client(cid) => cid != 0 && o.cid == cid,
                    }
            })
            .ok_or(RejectReason::UnknownOrder)
    }

    /// Removes a resting order, releases its hold, reports `Cancelled` + `Level`.
    fn cancel_resting(&mut self, idx: usize, reason: CancelReason, out: &mut Vec<Event>) {
        let o = self.orders.remove(idx);
        let asset = self.hold_asset(o.market, o.side);
        self.hold(o.account, asset, -o.hold);
        out.push(Event::Cancelled {
            order_id: o.id,
            account: o.account,
            market: o.market,
            remaining_qty: o.remaining,
            reason,
        });
        out.push(self.level_event(o.market, o.side, o.price));
    }

    fn trading_status(status: MarketStatus) -> R<()> {
        match status {
            MarketStatus::Open => Ok(()),
            MarketStatus::Halted => Err(RejectReason::MarketHalted),
            MarketStatus::CancelOnly => Err(RejectReason::MarketCancelOnly),
            MarketStatus::Closed => Err(RejectReason::MarketClosed),
        }
    }

    fn cancel_status(status: MarketStatus) -> R<()> {
        match status {
            MarketStatus::Open | MarketStatus::CancelOnly => Ok(()),
            MarketStatus::Halted => Err(RejectReason::MarketHalted),
            MarketStatus::Closed => Err(RejectReason::MarketClosed),
        }
    }

    // ------------------------------------------------------------------ apply

    fn apply(&mut self, cmd: &Command) -> Vec<Event> {
        let before = self.clone();
        let mut out = Vec::new();
        if let Err(reason) = self.apply_inner(cmd, &mut out) {
            *self = before;
            out = vec![Event::Rejected {
                kind: cmd.kind(),
                account: reject_account(cmd),
                order_ref: reject_ref(cmd),
                reason,
            }];
        }
        out
    }

    fn apply_inner(&mut self, cmd: &Command, out: &mut Vec<Event>) -> R<()> {
        use RejectReason as X;
        let kind = cmd.kind();
        match *cmd {
            Command::Place(ref p) => self.place(p, out),
            Command::Cancel {
                account,
                market,
                order,
            } => {
                let m = self.markets.get(&market).ok_or(X::UnknownMarket)?;
                let status = m.status;
                self.accounts.get(&account).ok_or(X::UnknownAccount)?;
                Self::cancel_status(status)?;
                let idx = self.find_order(account, market, order)?;
                self.cancel_resting(idx, CancelReason::Requested, out);
                Ok(())
            }
            Command::Replace {
                account,
                market,
                order,
                price,
                qty,
            } => self.replace(account, market, order, price, qty, out),
            Command::CancelAll { account, market } => {
                self.accounts.get(&account).ok_or(X::UnknownAccount)?;
                if let Some(mk) = market {
                    let m = self.markets.get(&mk).ok_or(X::UnknownMarket)?;
                    Self::cancel_status(m.status)?;
                }
                let mut ids: Vec<OrderId> = self
                    .orders
                    .iter()
                    .filter(|o| {
                        o.account == account
                            && market.is_none_or(|mk| o.market == mk)
                            && Self::cancel_status(self.markets[&o.market].status).is_ok()
                    })
                    .map(|o| o.id)
                    .collect();
                ids.sort();
                for id in &ids {
                    let idx = self.orders.iter().position(|o| o.id == *id).unwrap();
                    self.cancel_resting(idx, CancelReason::CancelAll, out);
                }
                out.push(Event::CancelAllDone {
                    account,
                    count: ids.len() as u32,
                });
                Ok(())
            }
            Command::CreateAsset {
                asset, decimals, ..
            } => {
                if asset == 0 || asset >= ID_MAX {
                    return Err(X::InvalidId);
                }
                if self.assets.contains(&asset) {
                    return Err(X::AssetExists);
                }
                if decimals > 18 {
                    return Err(X::InvalidDecimals);
                }
                self.assets.insert(asset);
                out.push(Event::AdminDone {
                    kind,
                    id: asset as u64,
                });
                Ok(())
            }
            Command::CreateMarket(s) => {
                if s.market == 0 || s.market >= ID_MAX || s.base == s.quote {
                    return Err(X::InvalidId);
                }
                if self.markets.contains_key(&s.market) {
                    return Err(X::MarketExists);
                }
                if !self.assets.contains(&s.base) || !self.assets.contains(&s.quote) {
                    return Err(X::UnknownAsset);
                }
                if s.tick_size <= 0
                    || s.lot_size <= 0
                    || s.qty_min == 0
                    || s.qty_max < s.qty_min
                    || s.reference_price <= 0
                    || s.band_ppm > 1_000_000
                {
                    return Err(X::InvalidMarketSpec);
                }
                check_fees(s.maker_fee_ppm, s.taker_fee_ppm)?;
                self.markets.insert(
                    s.market,
                    MMarket {
                        spec: s,
                        status: MarketStatus::Open,
                        reference: s.reference_price,
                        limits: (
                            exchange::DEFAULT_OPEN_ORDERS_PER_ACCOUNT,
                            exchange::DEFAULT_OPEN_ORDERS_PER_MARKET,
                        ),
                    },
                );
                out.push(Event::AdminDone {
                    kind,
                    id: s.market as u64,
                });
                Ok(())
            }
            Command::CreateAccount { account } => {
                if self.accounts.contains_key(&account) {
                    return Err(X::AccountExists);
                }
                self.accounts.insert(account, MAccount::default());
                out.push(Event::AdminDone {
                    kind,
                    id: account as u64,
                });
                Ok(())
            }
            Command::Deposit {
                account,
                asset,
                amount,
                external_ref,
            } => {
                self.accounts.get(&account).ok_or(X::UnknownAccount)?;
                if !self.assets.contains(&asset) {
                    return Err(X::UnknownAsset);
                }
                if amount <= 0 {
                    return Err(X::InvalidAmount);
                }
                let duplicate = self.deposit_refs.contains(&external_ref);
                if !duplicate {
                    self.deposit_refs.insert(external_ref);
                    self.bal_mut(account, asset).0 += amount;
                }
                out.push(Event::Funds {
                    account,
                    asset,
                    amount,
                    available: self.balance(account, asset).0,
                    external_ref,
                    duplicate,
                });
                Ok(())
            }
            Command::Withdraw {
                account,
                asset,
                amount,
                external_ref,
            } => {
                self.accounts.get(&account).ok_or(X::UnknownAccount)?;
                if !self.assets.contains(&asset) {
                    return Err(X::UnknownAsset);
                }
                if amount <= 0 {
                    return Err(X::InvalidAmount);
                }
                let duplicate = self.withdraw_refs.contains(&external_ref);
                if !duplicate {
                    if self.accounts[&account].suspended {
                        return Err(X::AccountSuspended);
                    }
                    if self.balance(account, asset).0 < amount {
                        return Err(X::InsufficientBalance);
                    }
                    self.withdraw_refs.insert(external_ref);
                    self.bal_mut(account, asset).0 -= amount;
                }
                out.push(Event::Funds {
                    account,
                    asset,
                    amount: -amount,
                    available: self.balance(account, asset).0,
                    external_ref,
                    duplicate,
                });
                Ok(())
            }
            Command::SetMarketFees {
                market,
                maker_fee_ppm,
                taker_fee_ppm,
            } => {
                self.markets.get(&market).ok_or(X::UnknownMarket)?;
                check_fees(maker_fee_ppm, taker_fee_ppm)?;
                let m = self.markets.get_mut(&market).unwrap();
                m.spec.maker_fee_ppm = maker_fee_ppm;
                m.spec.taker_fee_ppm = taker_fee_ppm;
                out.push(Event::AdminDone {
                    kind,
                    id: market as u64,
                });
                Ok(())
            }
            Command::SetFeeTier {
                account,
                market,
                fees,
            } => {
                self.accounts.get(&account).ok_or(X::UnknownAccount)?;
                self.markets.get(&market).ok_or(X::UnknownMarket)?;
                let tiers = &mut self.accounts.get_mut(&account).unwrap().tiers;
                match fees {
                    Some((maker, taker)) => {
                        check_fees(maker, taker)?;
                        tiers.insert(market, (maker, taker));
                    }
                    None => {
                        tiers.remove(&market);
                    }
                }
                out.push(Event::AdminDone {
                    kind,
                    id: account as u64,
                });
                Ok(())
            }
            Command::SetMarketStatus {
                market,
                status,
                cancel_resting,
            } => {
                self.markets
                    .get_mut(&market)
                    .ok_or(X::UnknownMarket)?
                    .status = status;
                out.push(Event::MarketStatus { market, status });
                if cancel_resting {
                    // Bids best (highest) first, then asks best (lowest) first, each
                    // level in time order.
                    let mut bids: Vec<&MOrder> = self
                        .orders
                        .iter()
                        .filter(|o| o.market == market && o.side == Side::Buy)
                        .collect();
                    bids.sort_by_key(|o| (std::cmp::Reverse(o.price), o.arrival));
                    let mut asks: Vec<&MOrder> = self
                        .orders
                        .iter()
                        .filter(|o| o.market == market && o.side == Side::Sell)
                        .collect();
                    asks.sort_by_key(|o| (o.price, o.arrival));
                    let ids: Vec<OrderId> = bids.iter().chain(asks.iter()).map(|o| o.id).collect();
                    for id in ids {
                        let idx = self.orders.iter().position(|o| o.id == id).unwrap();
                        self.cancel_resting(idx, CancelReason::MarketStatus, out);
                    }
                }
                Ok(())
            }
            Command::SuspendAccount { account } | Command::ResumeAccount { account } => {
                self.accounts
                    .get_mut(&account)
                    .ok_or(X::UnknownAccount)?
                    .suspended = kind == CommandKind::SuspendAccount;
                out.push(Event::AdminDone {
                    kind,
                    id: account as u64,
                });
                Ok(())
            }
            Command::AddApiKey {
                account, key_id, ..
            } => {
                self.accounts.get(&account).ok_or(X::UnknownAccount)?;
                if !self.api_keys.insert(key_id) {
                    return Err(X::ApiKeyExists);
                }
                out.push(Event::AdminDone { kind, id: key_id });
                Ok(())
            }
            Command::RevokeApiKey { key_id } => {
                if !self.api_keys.remove(&key_id) {
                    return Err(X::UnknownApiKey);
                }
                out.push(Event::AdminDone { kind, id: key_id });
                Ok(())
            }
            Command::SetMarketLimits {
                market,
                max_open_orders_per_account,
                max_open_orders,
            } => {
                let m = self.markets.get_mut(&market).ok_or(X::UnknownMarket)?;
                if max_open_orders_per_account == 0 || max_open_orders == 0 {
                    return Err(X::InvalidMarketSpec);
                }
                m.limits = (max_open_orders_per_account, max_open_orders);
                out.push(Event::AdminDone {
                    kind,
                    id: market as u64,
                });
                Ok(())
            }
        }
    }

    fn place(&mut self, p: &PlaceOrder, out: &mut Vec<Event>) -> R<()> {
        use RejectReason as X;
        let m = self.markets.get(&p.market).ok_or(X::UnknownMarket)?.clone();
        let acct = self.accounts.get(&p.account).ok_or(X::UnknownAccount)?;
        if acct.suspended {
            return Err(X::AccountSuspended);
        }
        Self::trading_status(m.status)?;
        match p.kind {
            OrderKind::Limit => {
                if p.quote_budget != 0 {
                    return Err(X::InvalidQuantity);
                }
                if p.price <= 0 {
                    return Err(X::InvalidPrice);
                }
            }
            OrderKind::Market => {
                if p.price != 0 {
                    return Err(X::InvalidPrice);
                }
                if !matches!(p.tif, TimeInForce::Ioc | TimeInForce::Fok) {
                    return Err(X::InvalidTimeInForce);
                }
                if p.quote_budget != 0 && (p.side == Side::Sell || p.qty != 0 || p.quote_budget < 0)
                {
                    return Err(X::InvalidQuantity);
                }
                if p.quote_budget != 0 && p.tif == TimeInForce::Fok {
                    return Err(X::InvalidTimeInForce);
                }
            }
        }
        let by_budget = p.kind == OrderKind::Market && p.quote_budget > 0;
        let band = m.band();
        if !by_budget {
            if p.qty == 0 {
                return Err(X::InvalidQuantity);
            }
            if p.qty < m.spec.qty_min {
                return Err(X::BelowMinQuantity);
            }
            if p.qty > m.spec.qty_max {
                return Err(X::AboveMaxQuantity);
            }
            match p.kind {
                OrderKind::Limit => {
                    if let Some((lo, hi)) = band {
                        if p.price < lo || p.price > hi {
                            return Err(X::PriceOutsideBand);
                        }
                    }
                }
                OrderKind::Market => {
                    if p.side == Side::Buy && band.is_none() {
                        return Err(X::MarketBuyNeedsBand);
                    }
                }
            }
        }
        if p.client_order_id != 0
            && self
                .orders
                .iter()
                .any(|o| o.account == p.account && o.cid == p.client_order_id)
        {
            return Err(X::DuplicateClientOrderId);
        }
        // An order that could rest needs room under both caps, counted before it trades.
        if matches!(p.tif, TimeInForce::Gtc | TimeInForce::PostOnly) {
            let in_market = self.orders.iter().filter(|o| o.market == p.market);
            let mine = in_market.clone().filter(|o| o.account == p.account).count();
            if mine >= m.limits.0 as usize || in_market.count() >= m.limits.1 as usize {
                return Err(X::TooManyOpenOrders);
            }
        }
        let (maker_fee, taker_fee) = self.fee_rates(p.account, p.market);
        let limit = match (p.kind, p.side) {
            (OrderKind::Limit, _) => p.price,
            (OrderKind::Market, Side::Buy) if by_budget => Price::MAX,
            (OrderKind::Market, Side::Buy) => band.expect("checked").1,
            (OrderKind::Market, Side::Sell) => band.map_or(1, |b| b.0),
        };
        let hold = match p.side {
            Side::Buy if by_budget => p.quote_budget,
            Side::Buy => buy_hold(limit, p.qty, m.spec.tick_size, maker_fee.max(taker_fee))?,
            Side::Sell => to_amount(p.qty as i128 * m.spec.lot_size as i128)?,
        };
        let asset = self.hold_asset(p.market, p.side);
        if self.balance(p.account, asset).0 < hold {
            return Err(X::InsufficientBalance);
        }
        if p.tif == TimeInForce::PostOnly && self.best_opposite(p.market, p.side, limit).is_some() {
            return Err(X::PostOnlyWouldTake);
        }

        // Accepted.
        let id = self.next_id;
        self.next_id += 1;
        out.push(Event::Accepted {
            order_id: id,
            account: p.account,
            market: p.market,
            client_order_id: p.client_order_id,
            side: p.side,
            price: p.price,
            qty: p.qty,
        });
        self.hold(p.account, asset, hold);
        let order = MOrder {
            id,
            arrival: 0,
            account: p.account,
            market: p.market,
            cid: p.client_order_id,
            side: p.side,
            price: p.price,
            remaining: p.qty,
            hold,
            maker_fee,
            taker_fee,
            stp: p.stp,
            post_only: p.tif == TimeInForce::PostOnly,
        };
        self.take(
            Taker {
                order,
                limit,
                tif: p.tif,
                budget: by_budget.then_some(p.quote_budget),
            },
            out,
        );
        Ok(())
    }

    /// Matches an accepted (or re-entered) order against the book and disposes of its
    /// remainder. The taker's hold has already been moved to `held`.
    fn take(&mut self, mut t: Taker, out: &mut Vec<Event>) {
        let market = t.order.market;
        let spec = self.markets[&market].spec;
        let quote = spec.quote;
        let base = spec.base;
        let side = t.order.side;

        // Fill-or-kill: count only the liquidity the order could really take.
        if t.tif == TimeInForce::Fok {
            let mut liquidity: u64 = 0;
            for o in self.crossing_in_priority(market, side, t.limit) {
                if o.account == t.order.account {
                    match t.order.stp {
                        StpMode::None => {}
                        StpMode::CancelOldest => continue,
                        StpMode::CancelNewest | StpMode::CancelBoth => break,
                    }
                }
                liquidity += o.remaining;
            }
            if liquidity < t.order.remaining {
                self.finish_cancel(&t, CancelReason::FillOrKill, out);
                return;
            }
        }

        let mut stp_stop = false;
        loop {
            if t.budget.is_none() && t.order.remaining == 0 {
                break;
            }
            let Some(mi) = self.best_opposite(market, side, t.limit) else {
                break;
            };
            let maker = self.orders[mi].clone();
            if maker.account == t.order.account {
                match t.order.stp {
                    StpMode::None => {}
                    StpMode::CancelNewest => {
                        stp_stop = true;
                        break;
                    }
                    StpMode::CancelOldest => {
                        self.cancel_resting(mi, CancelReason::SelfTrade, out);
                        continue;
                    }
                    StpMode::CancelBoth => {
                        self.cancel_resting(mi, CancelReason::SelfTrade, out);
                        stp_stop = true;
                        break;
                    }
                }
            }
            let q = match t.budget {
                // README: "buys, at each price level, floor(budget * 1e6 / (price *
                // tick_size * (1e6 + taker_fee_ppm))) lots at most". Read here (as the
                // engine does) with the budget still left before each resting order;
                // see `a_budget_buy_recomputes_its_lot_cap_from_the_budget_left_at_each_resting_order`.
                Some(left) => {
                    let q = lots_for_budget(left, maker.price, spec.tick_size, t.order.taker_fee)
                        .min(maker.remaining);
                    if q == 0 {
                        break;
                    }
                    q
                }
                None => t.order.remaining.min(maker.remaining),
            };
            let n = notional(maker.price, q, spec.tick_size);
            let maker_fee = fee_down(n, maker.maker_fee);
            let taker_fee = fee_down(n, t.order.taker_fee);
            let base_qty = q as i128 * spec.lot_size as i128;
            let (n, maker_fee, taker_fee, base_qty) = (
                n as Amount,
                maker_fee as Amount,
                taker_fee as Amount,
                base_qty as Amount,
            );
            let (buyer, buyer_fee, seller, seller_fee) = match side {
                Side::Buy => (t.order.account, taker_fee, maker.account, maker_fee),
                Side::Sell => (maker.account, maker_fee, t.order.account, taker_fee),
            };
            // Buyer: pays notional + fee out of the hold, receives base.
            self.bal_mut(buyer, quote).1 -= n + buyer_fee;
            self.bal_mut(buyer, base).0 += base_qty;
            // Seller: delivers base out of the hold, receives notional - fee.
            self.bal_mut(seller, base).1 -= base_qty;
            self.bal_mut(seller, quote).0 += n - seller_fee;
            self.bal_mut(FEE_ACCOUNT, quote).0 += maker_fee + taker_fee;

            match side {
                Side::Buy => {
                    t.order.hold -= n + buyer_fee;
                    if let Some(left) = t.budget.as_mut() {
                        *left -= n + buyer_fee;
                    }
                    self.orders[mi].hold -= base_qty;
                }
                Side::Sell => {
                    t.order.hold -= base_qty;
                    self.orders[mi].hold -= n + buyer_fee;
                }
            }
            self.orders[mi].remaining -= q;
            if t.budget.is_none() {
                t.order.remaining -= q;
            }
            self.markets.get_mut(&market).unwrap().reference = maker.price;
            out.push(Event::Trade {
                market,
                maker_order_id: maker.id,
                taker_order_id: t.order.id,
                maker_account: maker.account,
                taker_account: t.order.account,
                taker_side: side,
                price: maker.price,
                qty: q,
                maker_fee,
                taker_fee,
                maker_remaining: self.orders[mi].remaining,
                taker_remaining: t.order.remaining,
            });
            // The maker keeps exactly what its remainder needs; the rest is released.
            let need = self.need(&self.orders[mi]).expect("fits");
            let excess = self.orders[mi].hold - need;
            assert!(excess >= 0, "model: maker hold went short");
            let maker_asset = self.hold_asset(market, maker.side);
            self.hold(maker.account, maker_asset, -excess);
            self.orders[mi].hold = need;
            if self.orders[mi].remaining == 0 {
                self.orders.remove(mi);
            }
            out.push(self.level_event(market, maker.side, maker.price));
        }

        if t.budget.is_some() {
            self.finish_cancel(&t, CancelReason::BudgetDone, out);
        } else if t.order.remaining == 0 {
            let asset = self.hold_asset(market, side);
            self.hold(t.order.account, asset, -t.order.hold);
        } else if stp_stop {
            self.finish_cancel(&t, CancelReason::SelfTrade, out);
        } else if t.tif.rests() {
            let need = self.need(&t.order).expect("fits");
            let excess = t.order.hold - need;
            assert!(excess >= 0, "model: taker hold went short");
            let asset = self.hold_asset(market, side);
            self.hold(t.order.account, asset, -excess);
            t.order.hold = need;
            self.arrival += 1;
            t.order.arrival = self.arrival;
            let (s, p) = (t.order.side, t.order.price);
            self.orders.push(t.order);
            out.push(self.level_event(market, s, p));
        } else {
            self.finish_cancel(&t, CancelReason::ImmediateOrCancel, out);
        }
    }

    /// Reports the taker's remainder as cancelled and releases what it still holds.
    fn finish_cancel(&mut self, t: &Taker, reason: CancelReason, out: &mut Vec<Event>) {
        let asset = self.hold_asset(t.order.market, t.order.side);
        let hold = match t.budget {
            Some(left) => left,
            None => t.order.hold,
        };
        self.hold(t.order.account, asset, -hold);
        out.push(Event::Cancelled {
            order_id: t.order.id,
            account: t.order.account,
            market: t.order.market,
            remaining_qty: t.order.remaining,
            reason,
        });
    }

    fn replace(
        &mut self,
        account: AccountId,
        market: MarketId,
        r: OrderRef,
        price: Price,
        qty: Qty,
        out: &mut Vec<Event>,
    ) -> R<()> {
        use RejectReason as X;
        let m = self.markets.get(&market).ok_or(X::UnknownMarket)?.clone();
        let acct = self.accounts.get(&account).ok_or(X::UnknownAccount)?;
        if acct.suspended {
            return Err(X::AccountSuspended);
        }
        Self::trading_status(m.status)?;
        let idx = self.find_order(account, market, r)?;
        if price <= 0 {
            return Err(X::InvalidPrice);
        }
        if qty == 0 {
            return Err(X::InvalidQuantity);
        }
        if qty < m.spec.qty_min {
            return Err(X::BelowMinQuantity);
        }
        if qty > m.spec.qty_max {
            return Err(X::AboveMaxQuantity);
        }
        let old = self.orders[idx].clone();
        let price_changed = price != old.price;
        if price_changed {
            if let Some((lo, hi)) = m.band() {
                if price < lo || price > hi {
                    return Err(X::PriceOutsideBand);
                }
            }
        }
        let keep = !price_changed && qty <= old.remaining;
        if !keep && old.post_only && self.best_opposite(market, old.side, price).is_some() {
            return Err(X::PostOnlyWouldTake);
        }
        let mut new = old.clone();
        new.price = price;
        new.remaining = qty;
        let new_hold = self.need(&new)?;
        let extra = new_hold - old.hold;
        let asset = self.hold_asset(market, old.side);
        if extra > self.balance(account, asset).0 {
            return Err(X::InsufficientBalance);
        }
        new.hold = new_hold;
        self.hold(account, asset, extra);
        out.push(Event::Replaced {
            order_id: old.id,
            account,
            market,
            price,
            qty,
            priority_kept: keep,
        });
        if keep {
            self.orders[idx] = new;
            if qty < old.remaining {
                out.push(self.level_event(market, old.side, old.price));
            }
        } else {
            self.orders.remove(idx);
            out.push(self.level_event(market, old.side, old.price));
            let tif = if old.post_only {
                TimeInForce::PostOnly
            } else {
                TimeInForce::Gtc
            };
            self.take(
                Taker {
                    order: new,
                    limit: price,
                    tif,
                    budget: None,
                },
                out,
            );
        }
        Ok(())
    }

    /// The model's own invariants (a sanity check of the model itself).
    fn check(&self) {
        let mut held: BTreeMap<(AccountId, AssetId), Amount> = BTreeMap::new();
        for o in &self.orders {
            assert!(o.remaining > 0);
            assert_eq!(o.hold, self.need(o).unwrap(), "model: order hold {o:?}");
            *held
                .entry((o.account, self.hold_asset(o.market, o.side)))
                .or_default() += o.hold;
        }
        for (&(acct, asset), &(avail, h)) in &self.balances {
            assert!(avail >= 0, "model: negative available {acct}/{asset}");
            assert_eq!(h, held.get(&(acct, asset)).copied().unwrap_or(0));
        }
    }
}

/// The account a `Rejected` event names.
fn reject_account(cmd: &Command) -> AccountId {
    match *cmd {
        Command::Place(ref p) => p.account,
        Command::Cancel { account, .. }
        | Command::Replace { account, .. }
        | Command::CancelAll { account, .. }
        | Command::CreateAccount { account }
        | Command::Deposit { account, .. }
        | Command::Withdraw { account, .. }
        | Command::SetFeeTier { account, .. }
        | Command::SuspendAccount { account }
        | Command::ResumeAccount { account }
        | Command::AddApiKey { account, .. } => account,
        _ => 0,
    }
}

/// The order (or object) a `Rejected` event names.
fn reject_ref(cmd: &Command) -> u64 {
    match *cmd {
        Command::Place(ref p) => p.client_order_id,
        Command::Cancel { order, .. } | Command::Replace { order, .. } => match order {
            OrderRef::Exchange(id) => id,
            OrderRef::Client(cid) => cid,
        },
        Command::CreateAsset { asset, .. } => asset as u64,
        Command::CreateMarket(s) => s.market as u64,
        Command::SetMarketFees { market, .. }
        | Command::SetMarketStatus { market, .. }
        | Command::SetMarketLimits { market, .. } => market as u64,
        Command::Deposit { external_ref, .. } | Command::Withdraw { external_ref, .. } => {
            external_ref
        }
        Command::AddApiKey { key_id, .. } | Command::RevokeApiKey { key_id } => key_id,
        _ => 0,
    }
}

// ============================================================================ the world

const BTC: AssetId = 1;
const USD: AssetId = 2;
const ETH: AssetId = 3;
/// BTC/USD, banded ±10% around 100.
const M1: MarketId = 1;
/// ETH/BTC, no band.
const M2: MarketId = 2;
const ACCOUNTS: [AccountId; 4] = [1, 2, 3, 4];
const UNKNOWN_ACCOUNT: AccountId = 9;
const UNKNOWN_MARKET: MarketId = 7;
const UNKNOWN_ASSET: AssetId = 8;
const ALL_ACCOUNTS: [AccountId; 6] = [0, 1, 2, 3, 4, UNKNOWN_ACCOUNT];
const ALL_ASSETS: [AssetId; 4] = [BTC, USD, ETH, UNKNOWN_ASSET];

fn spec(market: MarketId) -> MarketSpec {
    match market {
        M1 => MarketSpec {
            market: M1,
            symbol: Symbol::new("BTC-USD").unwrap(),
            base: BTC,
            quote: USD,
            tick_size: 10,
            lot_size: 1_000,
            qty_min: 1,
            qty_max: 30,
            band_ppm: 100_000,
            reference_price: 100,
            maker_fee_ppm: 1_000,
            taker_fee_ppm: 2_500,
        },
        _ => MarketSpec {
            market: M2,
            symbol: Symbol::new("ETH-BTC").unwrap(),
            base: ETH,
            quote: BTC,
            tick_size: 1,
            lot_size: 100,
            qty_min: 2,
            qty_max: 25,
            band_ppm: 0,
            reference_price: 50,
            maker_fee_ppm: 2_000,
            taker_fee_ppm: 7_000,
        },
    }
}

/// The genesis: assets, markets, accounts and their deposits, all through `apply`.
fn genesis() -> Vec<Command> {
    let mut v = Vec::new();
    for (asset, sym, decimals) in [(BTC, "BTC", 8), (USD, "USD", 2), (ETH, "ETH", 18)] {
        v.push(Command::CreateAsset {
            asset,
            symbol: Symbol::new(sym).unwrap(),
            decimals,
        });
    }
    v.push(Command::CreateMarket(spec(M1)));
    v.push(Command::CreateMarket(spec(M2)));
    let mut r = 1;
    for (i, &account) in ACCOUNTS.iter().enumerate() {
        v.push(Command::CreateAccount { account });
        // Account 1 is rich, account 4 is poor: some orders fail for lack of funds.
        let scale = [4, 3, 2, 1][i];
        for (asset, amount) in [(BTC, 15_000), (USD, 20_000), (ETH, 800)] {
            v.push(Command::Deposit {
                account,
                asset,
                amount: amount * scale,
                external_ref: r,
            });
            r += 1;
        }
    }
    v
}

// ============================================================================ generation

/// An abstract operation; turned into a `Command` against the model's current state
/// (so that cancels and replaces often name a real resting order).
#[derive(Clone, Debug)]
enum Op {
    Limit {
        account: AccountId,
        market: MarketId,
        side: Side,
        tif: TimeInForce,
        price_offset: i64,
        qty: Qty,
        cid: ClientOrderId,
        stp: StpMode,
    },
    Market {
        account: AccountId,
        market: MarketId,
        side: Side,
        tif: TimeInForce,
        qty: Qty,
        /// 0..=5 by quantity, 6..=8 buy by budget, 9 a malformed mix.
        mode: u8,
        budget: Amount,
        cid: ClientOrderId,
        stp: StpMode,
    },
    Cancel {
        pick: u16,
        /// Name a resting order (with its owner and market) rather than a random id.
        real: bool,
        by_client: bool,
        account: AccountId,
        market: MarketId,
    },
    Replace {
        pick: u16,
        real: bool,
        by_client: bool,
        account: AccountId,
        market: MarketId,
        price_delta: i64,
        /// 0 same qty, 1 down, 2 up, 3 arbitrary.
        qty_mode: u8,
        qty: Qty,
    },
    CancelAll {
        account: AccountId,
        market: Option<MarketId>,
    },
    Deposit {
        account: AccountId,
        asset: AssetId,
        amount: Amount,
        external_ref: u64,
    },
    Withdraw {
        account: AccountId,
        asset: AssetId,
        amount: Amount,
        external_ref: u64,
    },
    Fees {
        market: MarketId,
        maker: u32,
        taker: u32,
    },
    Limits {
        market: MarketId,
        per_account: u32,
        per_market: u32,
    },
    FeeTier {
        account: AccountId,
        market: MarketId,
        fees: Option<(u32, u32)>,
    },
    Status {
        market: MarketId,
        status: MarketStatus,
        cancel_resting: bool,
    },
    Suspend {
        account: AccountId,
        resume: bool,
    },
    ApiKey {
        account: AccountId,
        key_id: u64,
        revoke: bool,
    },
}

fn account() -> impl Strategy<Value = AccountId> {
    prop_oneof![
        40 => prop::sample::select(ACCOUNTS.to_vec()),
        1 => Just(FEE_ACCOUNT),
        1 => Just(UNKNOWN_ACCOUNT),
    ]
}

fn market() -> impl Strategy<Value = MarketId> {
    prop_oneof![24 => Just(M1), 16 => Just(M2), 1 => Just(UNKNOWN_MARKET)]
}

fn asset() -> impl Strategy<Value = AssetId> {
    prop_oneof![
        10 => prop::sample::select(vec![BTC, USD, ETH]),
        1 => Just(UNKNOWN_ASSET),
    ]
}

fn side() -> impl Strategy<Value = Side> {
    prop_oneof![Just(Side::Buy), Just(Side::Sell)]
}

fn stp() -> impl Strategy<Value = StpMode> {
    prop_oneof![
        4 => Just(StpMode::None),
        1 => Just(StpMode::CancelNewest),
        1 => Just(StpMode::CancelOldest),
        1 => Just(StpMode::CancelBoth),
    ]
}

fn tif() -> impl Strategy<Value = TimeInForce> {
    prop_oneof![
        5 => Just(TimeInForce::Gtc),
        2 => Just(TimeInForce::Ioc),
        2 => Just(TimeInForce::Fok),
        2 => Just(TimeInForce::PostOnly),
    ]
}

fn qty() -> impl Strategy<Value = Qty> {
    prop_oneof![20 => 1..=8u64, 1 => Just(0u64), 1 => 20..=40u64]
}

fn cid() -> impl Strategy<Value = ClientOrderId> {
    prop_oneof![3 => Just(0u64), 2 => 1..=6u64]
}

fn price_offset() -> impl Strategy<Value = i64> {
    prop_oneof![20 => -3..=3i64, 1 => -14..=14i64, 1 => Just(-1000i64)]
}

fn op() -> impl Strategy<Value = Op> {
    let limit = (
        account(),
        market(),
        side(),
        tif(),
        price_offset(),
        qty(),
        cid(),
        stp(),
    )
        .prop_map(
            |(account, market, side, tif, price_offset, qty, cid, stp)| Op::Limit {
                account,
                market,
                side,
                tif,
                price_offset,
                qty,
                cid,
                stp,
            },
        );
    let market_order = (
        account(),
        market(),
        side(),
        prop_oneof![4 => Just(TimeInForce::Ioc), 2 => Just(TimeInForce::Fok), 1 => tif()],
        qty(),
        0..10u8,
        prop_oneof![5 => 1..=30_000i64, 1 => -100..=100i64],
        cid(),
        stp(),
    )
        .prop_map(
            |(account, market, side, tif, qty, mode, budget, cid, stp)| Op::Market {
                account,
                market,
                side,
                tif,
                qty,
                mode,
                budget,
                cid,
                stp,
            },
        );
    let cancel = (
        any::<u16>(),
        prop::bool::weighted(0.8),
        prop::bool::weighted(0.3),
        account(),
        market(),
    )
        .prop_map(|(pick, real, by_client, account, market)| Op::Cancel {
            pick,
            real,
            by_client,
            account,
            market,
        });
    let replace = (
        any::<u16>(),
        prop::bool::weighted(0.8),
        prop::bool::weighted(0.2),
        account(),
        market(),
        prop_oneof![3 => Just(0i64), 3 => -4..=4i64, 1 => -20..=20i64],
        0..4u8,
        qty(),
    )
        .prop_map(
            |(pick, real, by_client, account, market, price_delta, qty_mode, qty)| Op::Replace {
                pick,
                real,
                by_client,
                account,
                market,
                price_delta,
                qty_mode,
                qty,
            },
        );
    let cancel_all = (account(), prop::option::of(market()))
        .prop_map(|(account, market)| Op::CancelAll { account, market });
    let amount = prop_oneof![10 => 1..=40_000i64, 1 => -5..=0i64];
    let deposit = (account(), asset(), amount.clone(), 1..=20u64).prop_map(
        |(account, asset, amount, external_ref)| Op::Deposit {
            account,
            asset,
            amount,
            external_ref,
        },
    );
    let withdraw = (account(), asset(), amount, 1..=8u64).prop_map(
        |(account, asset, amount, external_ref)| Op::Withdraw {
            account,
            asset,
            amount,
            external_ref,
        },
    );
    let fee = || prop_oneof![10 => 0..=10_000u32, 1 => Just(1_000_001u32)];
    let fees = (market(), fee(), fee()).prop_map(|(market, maker, taker)| Op::Fees {
        market,
        maker,
        taker,
    });
    let limits = (
        market(),
        prop_oneof![8 => 1..=4u32, 1 => Just(0u32), 1 => Just(100u32)],
        prop_oneof![8 => 2..=12u32, 1 => Just(0u32), 1 => Just(1_000u32)],
    )
        .prop_map(|(market, per_account, per_market)| Op::Limits {
            market,
            per_account,
            per_market,
        });
    let tier = (account(), market(), prop::option::of((fee(), fee()))).prop_map(
        |(account, market, fees)| Op::FeeTier {
            account,
            market,
            fees,
        },
    );
    let status = (
        market(),
        prop_oneof![
            24 => Just(MarketStatus::Open),
            2 => Just(MarketStatus::Halted),
            2 => Just(MarketStatus::CancelOnly),
            1 => Just(MarketStatus::Closed),
        ],
        prop::bool::weighted(0.3),
    )
        .prop_map(|(market, status, cancel_resting)| Op::Status {
            market,
            status,
            cancel_resting,
        });
    let suspend = (account(), prop::bool::weighted(0.75))
        .prop_map(|(account, resume)| Op::Suspend { account, resume });
    let api =
        (account(), 1..=4u64, any::<bool>()).prop_map(|(account, key_id, revoke)| Op::ApiKey {
            account,
            key_id,
            revoke,
        });
    prop_oneof![
        60 => limit,
        12 => market_order,
        12 => cancel,
        16 => replace,
        2 => cancel_all,
        3 => deposit,
        3 => withdraw,
        2 => fees,
        1 => limits,
        2 => tier,
        4 => status,
        2 => suspend,
        1 => api,
    ]
}

fn ops(max: usize) -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(op(), 1..max)
}

/// Turns an abstract op into a command, looking at the model's current state.
fn materialize(op: &Op, model: &Model) -> Command {
    let centre = |market: MarketId| -> Price {
        model
            .markets
            .get(&market)
            .map_or(100, |m| m.spec.reference_price)
    };
    // A resting order chosen by `pick`, if any.
    let resting = |pick: u16| -> Option<&MOrder> {
        if model.orders.is_empty() {
            None
        } else {
            let mut ids: Vec<&MOrder> = model.orders.iter().collect();
            ids.sort_by_key(|o| o.id);
            Some(ids[pick as usize % ids.len()])
        }
    };
    match *op {
        Op::Limit {
            account,
            market,
            side,
            tif,
            price_offset,
            qty,
            cid,
            stp,
        } => Command::Place(PlaceOrder {
            account,
            market,
            client_order_id: cid,
            side,
            kind: OrderKind::Limit,
            tif,
            price: centre(market) + price_offset,
            qty,
            quote_budget: 0,
            stp,
        }),
        Op::Market {
            account,
            market,
            side,
            tif,
            qty,
            mode,
            budget,
            cid,
            stp,
        } => {
            let (side, tif, qty, budget) = match mode {
                0..=5 => (side, tif, qty, 0),
                6..=8 => (Side::Buy, TimeInForce::Ioc, 0, budget.abs().max(1)),
                _ => (side, tif, qty, budget),
            };
            Command::Place(PlaceOrder {
                account,
                market,
                client_order_id: cid,
                side,
                kind: OrderKind::Market,
                tif,
                price: if mode == 9 && budget % 7 == 0 { 100 } else { 0 },
                qty,
                quote_budget: budget,
                stp,
            })
        }
        Op::Cancel {
            pick,
            real,
            by_client,
            account,
            market,
        } => match resting(pick).filter(|_| real) {
            Some(o) => Command::Cancel {
                account: o.account,
                market: o.market,
                order: if by_client {
                    OrderRef::Client(o.cid)
                } else {
                    OrderRef::Exchange(o.id)
                },
            },
            None => Command::Cancel {
                account,
                market,
                order: if by_client {
                    OrderRef::Client(pick as u64 % 7)
                } else {
                    OrderRef::Exchange(1 + pick as u64 % model.next_id)
                },
            },
        },
        Op::Replace {
            pick,
            real,
            by_client,
            account,
            market,
            price_delta,
            qty_mode,
            qty,
        } => match resting(pick).filter(|_| real) {
            Some(o) => {
                let new_qty = match qty_mode {
                    0 => o.remaining,
                    1 => o.remaining.saturating_sub(1 + pick as u64 % 3),
                    2 => o.remaining + 1 + pick as u64 % 4,
                    _ => qty,
                };
                Command::Replace {
                    account: o.account,
                    market: o.market,
                    order: if by_client {
                        OrderRef::Client(o.cid)
                    } else {
                        OrderRef::Exchange(o.id)
                    },
                    price: o.price + price_delta,
                    qty: new_qty,
                }
            }
            None => Command::Replace {
                account,
                market,
                order: if by_client {
                    OrderRef::Client(pick as u64 % 7)
                } else {
                    OrderRef::Exchange(1 + pick as u64 % model.next_id)
                },
                price: centre(market) + price_delta,
                qty,
            },
        },
        Op::CancelAll { account, market } => Command::CancelAll { account, market },
        Op::Deposit {
            account,
            asset,
            amount,
            external_ref,
        } => Command::Deposit {
            account,
            asset,
            amount,
            external_ref,
        },
        Op::Withdraw {
            account,
            asset,
            amount,
            external_ref,
        } => Command::Withdraw {
            account,
            asset,
            amount,
            external_ref,
        },
        Op::Fees {
            market,
            maker,
            taker,
        } => Command::SetMarketFees {
            market,
            maker_fee_ppm: maker,
            taker_fee_ppm: taker,
        },
        Op::Limits {
            market,
            per_account,
            per_market,
        } => Command::SetMarketLimits {
            market,
            max_open_orders_per_account: per_account,
            max_open_orders: per_market,
        },
        Op::FeeTier {
            account,
            market,
            fees,
        } => Command::SetFeeTier {
            account,
            market,
            fees,
        },
        Op::Status {
            market,
            status,
            cancel_resting,
        } => Command::SetMarketStatus {
            market,
            status,
            cancel_resting,
        },
        Op::Suspend { account, resume } => {
            if resume {
                Command::ResumeAccount { account }
            } else {
                Command::SuspendAccount { account }
            }
        }
        Op::ApiKey {
            account,
            key_id,
            revoke,
        } => {
            if revoke {
                Command::RevokeApiKey { key_id }
            } else {
                Command::AddApiKey {
                    account,
                    key_id,
                    secret_hash: [key_id as u8; 32],
                    permissions: 1,
                }
            }
        }
    }
}

/// The full command stream (genesis, then the ops) and the model's events for each.
fn script(ops: &[Op]) -> (Vec<Command>, Vec<Vec<Event>>) {
    let mut model = Model::new();
    let mut cmds = Vec::new();
    let mut events = Vec::new();
    for cmd in genesis() {
        events.push(model.apply(&cmd));
        cmds.push(cmd);
    }
    for op in ops {
        let cmd = materialize(op, &model);
        events.push(model.apply(&cmd));
        model.check();
        cmds.push(cmd);
    }
    (cmds, events)
}

fn run_engine(ex: &mut Exchange, cmds: &[Command]) -> Vec<Vec<Event>> {
    cmds.iter()
        .map(|c| {
            let mut out = Vec::new();
            ex.apply(c, &mut out);
            out
        })
        .collect()
}

fn checked_exchange() -> Exchange {
    let mut ex = Exchange::new();
    ex.set_checked(true);
    ex
}

fn listing(cmds: &[Command], upto: usize) -> String {
    let skip = genesis().len();
    cmds[skip..=upto]
        .iter()
        .enumerate()
        .map(|(i, c)| format!("  #{i}: {c:?}\n"))
        .collect()
}

/// Applies the stream to a checked engine and the model side by side.
fn engine_matches_model(ops: &[Op]) -> Result<(), TestCaseError> {
    let mut model = Model::new();
    let mut ex = checked_exchange();
    let genesis = genesis();
    let n_genesis = genesis.len();
    let mut cmds_done = Vec::new();
    for i in 0..n_genesis + ops.len() {
        let cmd = if i < n_genesis {
            genesis[i]
        } else {
            materialize(&ops[i - n_genesis], &model)
        };
        cmds_done.push(cmd);
        let expected = model.apply(&cmd);
        model.check();
        let mut actual = Vec::new();
        ex.apply(&cmd, &mut actual);
        if actual != expected {
            return Err(TestCaseError::fail(format!(
                "events differ at command {i}: {cmd:?}\n expected (model): {expected:#?}\n actual (engine): {actual:#?}\n stream after genesis:\n{}",
                if i >= n_genesis { listing(&cmds_done, i) } else { String::new() }
            )));
        }
        for &account in &ALL_ACCOUNTS {
            for &asset in &ALL_ASSETS {
                let (available, held) = model.balance(account, asset);
                let b = ex.balance(account, asset);
                if (b.available, b.held) != (available, held) {
                    return Err(TestCaseError::fail(format!(
                        "balance of account {account} asset {asset} differs after command {i}: {cmd:?}\n model ({available}, {held}) engine ({}, {})\n stream after genesis:\n{}",
                        b.available,
                        b.held,
                        if i >= n_genesis { listing(&cmds_done, i) } else { String::new() }
                    )));
                }
            }
        }
        prop_assert_eq!(ex.next_order_id(), model.next_id);
        for (&id, m) in &model.markets {
            let em = ex.market(id).expect("market exists");
            prop_assert_eq!(em.reference_price, m.reference, "reference price of {}", id);
            prop_assert_eq!(em.status, m.status);
        }
    }
    Ok(())
}

// ============================================================================ properties

/// 512 cases per property by default (a few seconds in a debug build); set
/// `PROPTEST_CASES` to run more.
fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(512),
        max_shrink_iters: 4096,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// Property 1: command by command, the engine's events and every balance equal the
    /// reference model's; the engine's own invariants hold after every command.
    #[test]
    fn engine_events_and_balances_equal_the_reference_model(ops in ops(150)) {
        engine_matches_model(&ops)?;
    }

    /// Property 2: the same stream applied to two fresh exchanges gives the same events
    /// and the same state hash.
    #[test]
    fn the_same_stream_twice_gives_identical_events_and_state_hash(ops in ops(150)) {
        let (cmds, _) = script(&ops);
        let mut a = checked_exchange();
        let mut b = Exchange::new();
        let ea = run_engine(&mut a, &cmds);
        let eb = run_engine(&mut b, &cmds);
        prop_assert_eq!(ea, eb);
        prop_assert_eq!(a.state_hash(), b.state_hash());
        prop_assert_eq!(a.snapshot(), b.snapshot());
    }

    /// Property 3: snapshot at any point, restore, continue: the same events and final
    /// state hash as never having stopped; a restore is immediately indistinguishable.
    #[test]
    fn snapshot_restore_mid_stream_then_continue_equals_never_stopping(
        ops in ops(150),
        cut in any::<prop::sample::Index>(),
    ) {
        let (cmds, _) = script(&ops);
        let cut = cut.index(cmds.len() + 1);
        let mut straight = checked_exchange();
        let expected = run_engine(&mut straight, &cmds);

        let mut first = checked_exchange();
        let mut events = run_engine(&mut first, &cmds[..cut]);
        let snap = first.snapshot();
        let mut restored = Exchange::restore(&snap).expect("restore own snapshot");
        prop_assert_eq!(restored.state_hash(), first.state_hash());
        prop_assert_eq!(restored.snapshot(), snap);
        restored.set_checked(true);
        events.extend(run_engine(&mut restored, &cmds[cut..]));
        prop_assert_eq!(events, expected);
        prop_assert_eq!(restored.state_hash(), straight.state_hash());
    }
}

// ============================================================================ sanity

/// The generator really exercises the interesting paths (guards against a strategy that
/// silently stops trading).
#[test]
fn the_generated_streams_trade_reject_and_cancel_often() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let (mut trades, mut rejects, mut cancels, mut replaces, mut budget_done, mut stp) =
        (0, 0, 0, 0, 0, 0);
    let mut reasons = BTreeMap::new();
    let mut accepted = 0;
    for _ in 0..64 {
        let ops = ops(150).new_tree(&mut runner).unwrap().current();
        let (_, events) = script(&ops);
        for e in events.iter().flatten() {
            match e {
                Event::Trade { .. } => trades += 1,
                Event::Rejected { reason, kind, .. } => {
                    rejects += 1;
                    *reasons.entry(format!("{kind:?}/{reason:?}")).or_insert(0) += 1;
                }
                Event::Cancelled { reason, .. } => {
                    cancels += 1;
                    match reason {
                        CancelReason::BudgetDone => budget_done += 1,
                        CancelReason::SelfTrade => stp += 1,
                        _ => {}
                    }
                }
                Event::Replaced { .. } => replaces += 1,
                Event::Accepted { .. } => accepted += 1,
                _ => {}
            }
        }
    }
    eprintln!("accepted {accepted}");
    eprintln!("trades {trades} rejects {rejects} cancels {cancels} replaces {replaces} budget {budget_done} stp {stp}");
    assert!(accepted > 800, "accepted {accepted}");
    assert!(trades > 200, "trades {trades}");
    assert!(rejects > 500, "rejects {rejects}");
    assert!(cancels > 500, "cancels {cancels}");
    assert!(replaces > 150, "replaces {replaces}");
    assert!(budget_done > 50, "budget orders {budget_done}");
    assert!(stp > 25, "self-trade cancels {stp}");
    // Every reject reason the world can produce shows up.
    for reason in [
        "Place/InsufficientBalance",
        "Place/DuplicateClientOrderId",
        "Place/PostOnlyWouldTake",
        "Place/PriceOutsideBand",
        "Place/MarketBuyNeedsBand",
        "Place/MarketHalted",
        "Place/MarketCancelOnly",
        "Place/AccountSuspended",
        "Place/TooManyOpenOrders",
        "Replace/PriceOutsideBand",
        "Replace/UnknownOrder",
        "Cancel/UnknownOrder",
        "Withdraw/InsufficientBalance",
    ] {
        assert!(reasons.contains_key(reason), "no {reason}: {reasons:#?}");
    }
}

// ============================================================================ engine bugs

/// Applies `cmds` after the genesis to a checked engine and to the model, and asserts
/// that every command produces the same events.
fn assert_engine_matches_model(cmds: &[Command]) {
    let mut model = Model::new();
    let mut ex = checked_exchange();
    for cmd in genesis().iter().chain(cmds) {
        let expected = model.apply(cmd);
        let mut actual = Vec::new();
        ex.apply(cmd, &mut actual);
        assert_eq!(actual, expected, "events of {cmd:?}");
    }
}

fn limit(account: AccountId, side: Side, price: Price, qty: Qty) -> Command {
    Command::Place(PlaceOrder {
        account,
        market: M1,
        client_order_id: 0,
        side,
        kind: OrderKind::Limit,
        tif: TimeInForce::Gtc,
        price,
        qty,
        quote_budget: 0,
        stp: StpMode::None,
    })
}

fn budget_buy(account: AccountId, budget: Amount, stp: StpMode) -> Command {
    Command::Place(PlaceOrder {
        account,
        market: M1,
        client_order_id: 0,
        side: Side::Buy,
        kind: OrderKind::Market,
        tif: TimeInForce::Ioc,
        price: 0,
        qty: 0,
        quote_budget: budget,
        stp,
    })
}

/// README, "Event order": a budget order always ends with `Cancelled{BudgetDone}`,
/// remaining 0, even when self-trade prevention stops it. (Found by this suite: the
/// engine once reported `SelfTrade` with `remaining_qty` u64::MAX.)
#[test]
fn a_budget_order_stopped_by_self_trade_prevention_ends_budget_done_with_remaining_zero() {
    for stp in [StpMode::CancelNewest, StpMode::CancelBoth] {
        assert_engine_matches_model(&[limit(1, Side::Sell, 100, 1), budget_buy(1, 5_000, stp)]);
    }
}

/// README ambiguity: "buys, at each price level, floor(budget * 1e6 / ...) lots at most"
/// does not say whether the cap is computed once per level or again before each resting
/// order from the budget left. Fees round down per fill, so the second reading can buy
/// one lot more at a level. The engine (and the model) recompute before each resting
/// order: here 1 lot costs 1000 + 2 (fee 2.5 rounded down), leaving 2005, which buys 2
/// more lots (2000 + 5) — 3 lots at one level, where a cap computed on arrival at the
/// level (3007 / 1002.5) is 2. The budget is never exceeded either way.
#[test]
fn a_budget_buy_recomputes_its_lot_cap_from_the_budget_left_at_each_resting_order() {
    let mut ex = checked_exchange();
    for cmd in genesis() {
        ex.apply(&cmd, &mut Vec::new());
    }
    let mut out = Vec::new();
    ex.apply(&limit(2, Side::Sell, 100, 1), &mut out);
    ex.apply(&limit(3, Side::Sell, 100, 5), &mut out);
    out.clear();
    ex.apply(&budget_buy(1, 3007, StpMode::None), &mut out);
    let bought: Qty = out
        .iter()
        .map(|e| match e {
            Event::Trade { qty, .. } => *qty,
            _ => 0,
        })
        .sum();
    assert_eq!(bought, 3, "{out:#?}");
    assert_engine_matches_model(&[
        limit(2, Side::Sell, 100, 1),
        limit(3, Side::Sell, 100, 5),
        budget_buy(1, 3007, StpMode::None),
    ]);
}
