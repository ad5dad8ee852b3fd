//! The exchange layer: assets, markets, accounts, holds, fees, self-trade prevention and
//! admin commands, around one [`OrderBook`] per market.
//!
//! Funds: a buy holds `notional(limit, qty) + ceil(notional * max(maker, taker) / 1e6)`
//! quote; a sell holds `qty * lot_size` base; a market buy holds its quote budget, or
//! the notional at the top of the price band when it is by quantity. Fees are in quote,
//! rounded down per fill: the buyer pays notional + fee, the seller receives notional -
//! fee. The rounding choices guarantee that an order's hold always covers what it can
//! still be charged; after every fill the excess above what the remainder needs is
//! released.

use std::collections::{BTreeMap, BTreeSet};

use rustc_hash::FxHashMap;

use crate::book::{Incoming, MatchEnd, MatchSink, Node, OrderBook, Outcome};
use crate::client_index::ClientIndex;
use crate::command::*;
use crate::event::Event;
use crate::types::*;

/// Per-order data the exchange keeps inside the book.
///
/// Packed (22 bytes, alignment 1) so that a book node with it is 64 bytes, one cache
/// line's worth ([`NODE_BYTES`]): aligned, the 8-byte `hold` would round it up to 24
/// and the node to 72. The client order id lives in the account's open-order slot
/// ([`OpenOrders`]), read where an order is found by it or leaves. Fields are read and
/// written by value (a reference to a packed field does not compile).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C, packed)]
pub struct OrderMeta {
    /// The order's slot in its account's [`OpenOrders`] while it rests. (The account
    /// itself is the node's `owner`: an index into `Exchange::accounts`.)
    pub open_slot: u32,
    /// Funds still held for this order (quote for buys, base for sells).
    pub hold: Amount,
    /// Fee rates fixed when the order was accepted.
    pub maker_fee_ppm: u32,
    pub taker_fee_ppm: u32,
    pub stp: u8,
    pub post_only: bool,
    /// The order has a client order id (kept in its open-order slot, with the order's
    /// book handle: the slot is written when the order rests only if it has one).
    pub has_client_id: bool,
}

/// `OrderMeta::open_slot` of an order that does not rest (yet).
pub const NO_SLOT: u32 = u32::MAX;

/// Bytes of a resting order in an exchange book's order slab.
pub const NODE_BYTES: usize = std::mem::size_of::<Node<OrderMeta>>();
const _: () = assert!(
    NODE_BYTES == 64,
    "an exchange book node is one cache line's worth"
);

impl OrderMeta {
    fn hold_fee_ppm(&self) -> u32 {
        self.maker_fee_ppm.max(self.taker_fee_ppm)
    }
    fn stp_mode(&self) -> StpMode {
        StpMode::from_u8(self.stp).expect("valid stp stored")
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Balance {
    pub available: Amount,
    pub held: Amount,
}

/// Balances of asset ids below this bound live inside the [`Account`] itself.
pub const INLINE_BALANCES: usize = 4;

/// An account's balances, indexed by asset id (a slice through `Deref`). While the
/// account holds no asset id at or above [`INLINE_BALANCES`] they live inline, so that
/// reaching a balance on every order and fill reads no second allocation; past that,
/// all of them move to the heap.
///
/// In this field order (`repr(C)`): the length, which every access reads, beside the
/// first inline balances (see [`Account`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Balances {
    len: usize,
    inline: [Balance; INLINE_BALANCES],
    /// Every balance once `len > INLINE_BALANCES`; empty before.
    spill: Vec<Balance>,
}

impl Balances {
    pub fn new() -> Self {
        Self::default()
    }

    /// Grows to `n` balances (zero), if shorter.
    pub fn grow_to(&mut self, n: usize) {
        if n <= self.len {
            return;
        }
        if n > INLINE_BALANCES {
            if self.len <= INLINE_BALANCES {
                self.spill.extend_from_slice(&self.inline[..self.len]);
            }
            self.spill.resize(n, Balance::default());
        }
        self.len = n;
    }

    /// Appends a balance.
    pub fn push(&mut self, b: Balance) {
        let i = self.len;
        self.grow_to(i + 1);
        self[i] = b;
    }

    /// Removes the last balance.
    pub fn pop(&mut self) -> Option<Balance> {
        let last = *self.last()?;
        if self.len > INLINE_BALANCES {
            self.spill.pop();
            if self.len - 1 == INLINE_BALANCES {
                self.inline.copy_from_slice(&self.spill);
                self.spill.clear();
            }
        } else {
            self.inline[self.len - 1] = Balance::default();
        }
        self.len -= 1;
        Some(last)
    }
}

impl std::ops::Deref for Balances {
    type Target = [Balance];
    fn deref(&self) -> &[Balance] {
        if self.len <= INLINE_BALANCES {
            &self.inline[..self.len]
        } else {
            &self.spill
        }
    }
}

impl std::ops::DerefMut for Balances {
    fn deref_mut(&mut self) -> &mut [Balance] {
        if self.len <= INLINE_BALANCES {
            &mut self.inline[..self.len]
        } else {
            &mut self.spill
        }
    }
}

impl<'a> IntoIterator for &'a Balances {
    type Item = &'a Balance;
    type IntoIter = std::slice::Iter<'a, Balance>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl From<Vec<Balance>> for Balances {
    fn from(v: Vec<Balance>) -> Self {
        let mut b = Balances::new();
        for x in v {
            b.push(x);
        }
        b
    }
}

#[derive(Clone, Debug)]
pub struct Asset {
    pub symbol: Symbol,
    pub decimals: u8,
}

/// An account's resting orders: a slab of `(order id, client order id, market)` slots
/// with a free list, so that an order enters and leaves in constant time (its slot is
/// kept in its [`OrderMeta`]), the index of their client order ids ([`ClientIndex`]:
/// client ids are unique among an account's open orders), and the count per market for
/// the open-order cap. Slots are an
/// internal detail: whatever lists the orders sorts them by id first
/// ([`OpenOrders::sorted`]), so the order of slots never shows.
///
/// In this field order (`repr(C)`): the counts an order's entry and exit update first,
/// then the slab and the client-id index (see [`Account`]).
#[derive(Clone, Debug)]
#[repr(C)]
pub struct OpenOrders {
    len: u32,
    free: u32,
    /// Open orders in one market, kept inline: most accounts trade one market, and
    /// counting there then touches no second allocation. `(0, 0)` when unused; the
    /// market is never also in `per_market`.
    inline: (MarketId, u32),
    /// In use: `market != 0`. Free: `market == 0` and `id` is the next free slot
    /// (`FREE_END` ends the list).
    slots: Vec<OpenSlot>,
    /// Client order id -> slot, for the slots whose client order id is not 0.
    by_client: ClientIndex,
    /// Open orders per other market, sorted by market; only markets with at least one.
    per_market: Vec<(MarketId, u32)>,
}

#[derive(Clone, Copy, Debug)]
struct OpenSlot {
    id: OrderId,
    /// 0: none.
    client_order_id: ClientOrderId,
    market: MarketId,
    /// The order's handle in its market's book while it rests ([`NO_HANDLE`] before),
    /// so that an order found by client id is reached without probing the book's index.
    handle: u32,
}

/// `OpenSlot::handle` of an order that has not rested yet.
const NO_HANDLE: u32 = u32::MAX;

const FREE_END: u32 = u32::MAX;

impl OpenOrders {
    pub(crate) fn new() -> Self {
        OpenOrders {
            slots: Vec::new(),
            free: FREE_END,
            len: 0,
            inline: (0, 0),
            per_market: Vec::new(),
            by_client: ClientIndex::default(),
        }
    }

    /// Number of open orders.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Open orders in `market`.
    pub fn count_in(&self, market: MarketId) -> u32 {
        if self.inline.0 == market {
            return self.inline.1;
        }
        match self.per_market.binary_search_by_key(&market, |&(m, _)| m) {
            Ok(i) => self.per_market[i].1,
            Err(_) => 0,
        }
    }

    /// The order in `slot`, if the slot is in use.
    pub fn get(&self, slot: u32) -> Option<(OrderId, MarketId)> {
        self.slots
            .get(slot as usize)
            .filter(|s| s.market != 0)
            .map(|s| (s.id, s.market))
    }

    /// The slot of the open order with client order id `client_order_id` (not 0).
    pub fn find_client(&self, client_order_id: ClientOrderId) -> Option<u32> {
        if client_order_id == 0 {
            return None;
        }
        let slots = &self.slots;
        self.by_client.get(client_order_id, |s| {
            slots.get(s as usize).map_or(0, |x| x.client_order_id)
        })
    }

    /// The order in `slot` as `(id, market, book handle)`, if the slot is in use.
    fn resting(&self, slot: u32) -> Option<(OrderId, MarketId, u32)> {
        self.slots
            .get(slot as usize)
            .filter(|s| s.market != 0)
            .map(|s| (s.id, s.market, s.handle))
    }

    /// Records the book handle at which the order in `slot` rests.
    pub(crate) fn set_handle(&mut self, slot: u32, handle: u32) {
        let s = &mut self.slots[slot as usize];
        assert!(s.market != 0, "slot in use");
        s.handle = handle;
    }

    /// The client order id of the order in `slot` (0: none, or the slot is free).
    pub fn client_order_id(&self, slot: u32) -> ClientOrderId {
        self.slots
            .get(slot as usize)
            .filter(|s| s.market != 0)
            .map_or(0, |s| s.client_order_id)
    }

    /// Every open order as `(id, market, client order id)`, ascending by id.
    pub fn sorted_with_client_ids(&self) -> Vec<(OrderId, MarketId, ClientOrderId)> {
        let mut out: Vec<_> = self
            .slots
            .iter()
            .filter(|s| s.market != 0)
            .map(|s| (s.id, s.market, s.client_order_id))
            .collect();
        out.sort_unstable_by_key(|&(id, _, _)| id);
        out
    }

    /// Every open order as `(id, market)`, ascending by id, into `out` (cleared first).
    pub fn sorted_into(&self, out: &mut Vec<(OrderId, MarketId)>) {
        out.clear();
        out.extend(
            self.slots
                .iter()
                .filter(|s| s.market != 0)
                .map(|s| (s.id, s.market)),
        );
        // Ids are unique: the order is total, whatever the slots' order.
        out.sort_unstable_by_key(|&(id, _)| id);
    }

    /// Every open order as `(id, market)`, ascending by id.
    pub fn sorted(&self) -> Vec<(OrderId, MarketId)> {
        let mut out = Vec::with_capacity(self.len());
        self.sorted_into(&mut out);
        out
    }

    /// Adds an order (`client_order_id` 0: none); returns its slot.
    pub(crate) fn insert(
        &mut self,
        id: OrderId,
        market: MarketId,
        client_order_id: ClientOrderId,
    ) -> u32 {
        assert!(market != 0, "market ids start at 1");
        let new = OpenSlot {
            id,
            client_order_id,
            market,
            handle: NO_HANDLE,
        };
        let slot = if self.free != FREE_END {
            let slot = self.free;
            let s = &mut self.slots[slot as usize];
            assert!(s.market == 0, "free list names a used slot");
            self.free = s.id as u32;
            *s = new;
            slot
        } else {
            let slot = u32::try_from(self.slots.len()).expect("open orders fit u32");
            assert!(slot != FREE_END);
            if self.slots.capacity() == 0 {
                // Room for one: many accounts rest a single order, and a vector's first
                // growth would take four slots.
                self.slots.reserve_exact(1);
            }
            self.slots.push(new);
            slot
        };
        self.len += 1;
        if client_order_id != 0 {
            self.by_client
                .insert(client_order_id, slot, self.len as usize);
        }
        if self.inline.0 == market {
            self.inline.1 += 1;
            return slot;
        }
        match self.per_market.binary_search_by_key(&market, |&(m, _)| m) {
            Ok(i) => self.per_market[i].1 += 1,
            Err(_) if self.inline.0 == 0 => self.inline = (market, 1),
            Err(i) => self.per_market.insert(i, (market, 1)),
        }
        slot
    }

    /// Removes order `id` from `slot`, which must hold it; returns its client order id.
    fn remove(&mut self, slot: u32, id: OrderId) -> ClientOrderId {
        let s = &mut self.slots[slot as usize];
        assert!(s.market != 0 && s.id == id, "slot holds the order");
        let (market, client_order_id) = (s.market, s.client_order_id);
        *s = OpenSlot {
            id: self.free as OrderId,
            client_order_id: 0,
            market: 0,
            handle: NO_HANDLE,
        };
        self.free = slot;
        self.len -= 1;
        if client_order_id != 0 {
            let indexed = self.by_client.remove(client_order_id, slot);
            assert!(indexed, "client order id indexed");
        }
        if self.inline.0 == market {
            self.inline.1 -= 1;
            if self.inline.1 == 0 {
                self.inline = (0, 0);
            }
            return client_order_id;
        }
        let i = self
            .per_market
            .binary_search_by_key(&market, |&(m, _)| m)
            .expect("counted");
        self.per_market[i].1 -= 1;
        if self.per_market[i].1 == 0 {
            self.per_market.remove(i);
        }
        client_order_id
    }

    /// Whether the per-market counts match the slots in use.
    fn counts_agree(&self) -> bool {
        let mut counts: BTreeMap<MarketId, u32> = BTreeMap::new();
        for s in self.slots.iter().filter(|s| s.market != 0) {
            *counts.entry(s.market).or_default() += 1;
        }
        let used = counts.values().map(|&c| c as usize).sum::<usize>();
        let mut listed: Vec<(MarketId, u32)> = self.per_market.clone();
        let inline_ok = match self.inline {
            (0, c) => c == 0,
            (m, c) => {
                let fresh = self.per_market.iter().all(|&(pm, _)| pm != m);
                listed.push((m, c));
                fresh && c > 0
            }
        };
        listed.sort_unstable();
        used == self.len()
            && inline_ok
            && counts.into_iter().eq(listed)
            && self.per_market.windows(2).all(|w| w[0].0 < w[1].0)
    }

    /// Whether the client-id index lists exactly the slots in use with a client order
    /// id, each under its own, and is well formed.
    fn client_index_agrees(&self) -> bool {
        let mut with_client_id = 0;
        for (slot, s) in self.slots.iter().enumerate() {
            if s.market != 0 && s.client_order_id != 0 {
                with_client_id += 1;
                if self.find_client(s.client_order_id) != Some(slot as u32) {
                    return false;
                }
            }
        }
        self.by_client.count() == with_client_id && self.by_client.is_well_formed()
    }

    /// Heap bytes held (capacity, not length).
    pub fn heap_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<OpenSlot>()
            + self.per_market.capacity() * std::mem::size_of::<(MarketId, u32)>()
            + self.by_client.heap_bytes()
    }
}

/// An account's fee overrides per market: (maker, taker) ppm, ascending by market.
/// Boxed, and no box while there are none (most accounts): an empty map inline would
/// take 24 bytes of the account, 8 more than it has to spare within three cache lines.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[allow(clippy::box_collection)] // The box is the point: 8 bytes in the account, not 24.
pub struct FeeTiers(Option<Box<BTreeMap<MarketId, (u32, u32)>>>);

impl FeeTiers {
    pub fn get(&self, market: &MarketId) -> Option<&(u32, u32)> {
        self.0.as_ref()?.get(market)
    }

    pub fn insert(&mut self, market: MarketId, fees: (u32, u32)) {
        self.0.get_or_insert_default().insert(market, fees);
    }

    pub fn remove(&mut self, market: &MarketId) {
        if let Some(map) = self.0.as_mut() {
            map.remove(market);
            if map.is_empty() {
                self.0 = None;
            }
        }
    }

    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |m| m.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `(market, (maker, taker))`, ascending by market.
    pub fn iter(&self) -> impl Iterator<Item = (&MarketId, &(u32, u32))> {
        self.0.iter().flat_map(|m| m.iter())
    }

    pub fn values(&self) -> impl Iterator<Item = &(u32, u32)> {
        self.iter().map(|(_, v)| v)
    }
}

/// Cache-line aligned and 192 bytes (three lines, [`ACCOUNT_BYTES`]): an account is read
/// on every command that names it and on every fill. Laid out in this field order
/// (`repr(C)`, and so are [`Balances`] and [`OpenOrders`]) so that what most commands
/// read shares lines: the first line holds the suspended flag, the balances' length and
/// the balances of asset ids 0-2 (a replace or a fill in a market of two such assets
/// reads nothing else of the account); the second the fee tiers and the open-order
/// counts (a place, an order leaving); the third the slab and client-id index pointers.
#[derive(Clone, Debug)]
#[repr(C, align(64))]
pub struct Account {
    pub id: AccountId,
    pub suspended: bool,
    /// Indexed by asset id; grown on demand.
    pub balances: Balances,
    /// Fee overrides per market: (maker, taker) ppm.
    pub fee_tiers: FeeTiers,
    /// Open orders with their market (cancel-all and queries list them by id).
    pub open_orders: OpenOrders,
}

/// Bytes of an [`Account`].
pub const ACCOUNT_BYTES: usize = std::mem::size_of::<Account>();
const _: () = assert!(ACCOUNT_BYTES == 192, "an account is three cache lines");
const _: () = {
    use std::mem::{offset_of, size_of};
    let balances = offset_of!(Account, balances) + offset_of!(Balances, inline);
    assert!(
        balances + 3 * size_of::<Balance>() <= 64,
        "asset ids 0-2 in the first line"
    );
    let counts = offset_of!(Account, open_orders) + offset_of!(OpenOrders, inline);
    assert!(offset_of!(Account, fee_tiers) >= 64 && counts + 8 <= 128);
};

impl Account {
    fn new(id: AccountId) -> Self {
        Account {
            id,
            suspended: false,
            balances: Balances::new(),
            open_orders: OpenOrders::new(),
            fee_tiers: FeeTiers::default(),
        }
    }

    pub fn balance(&self, asset: AssetId) -> Balance {
        self.balances
            .get(asset as usize)
            .copied()
            .unwrap_or_default()
    }

    fn balance_mut(&mut self, asset: AssetId) -> &mut Balance {
        let i = asset as usize;
        self.balances.grow_to(i + 1);
        &mut self.balances[i]
    }
}

/// Default cap on one account's resting orders in one market.
pub const DEFAULT_OPEN_ORDERS_PER_ACCOUNT: u32 = 100_000;
/// Default cap on the resting orders of one market.
pub const DEFAULT_OPEN_ORDERS_PER_MARKET: u32 = 2_000_000;

/// Caps on resting orders in one market: per account, and in all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenOrderLimits {
    /// Most resting orders one account may have in the market.
    pub per_account: u32,
    /// Most resting orders the market's book may hold.
    pub per_market: u32,
}

impl OpenOrderLimits {
    /// What a market gets unless configured otherwise: far above any real trading
    /// account's needs, and a bound on what one market's book can take.
    pub const DEFAULT: OpenOrderLimits = OpenOrderLimits {
        per_account: DEFAULT_OPEN_ORDERS_PER_ACCOUNT,
        per_market: DEFAULT_OPEN_ORDERS_PER_MARKET,
    };
}

impl Default for OpenOrderLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

#[derive(Clone, Debug)]
pub struct Market {
    pub spec: MarketSpec,
    pub status: MarketStatus,
    /// Open-order caps (`SetMarketLimits`; [`OpenOrderLimits::DEFAULT`] until set).
    pub limits: OpenOrderLimits,
    /// The last trade price (the band's centre); initially `spec.reference_price`.
    pub reference_price: Price,
    pub book: OrderBook<OrderMeta>,
    pub trade_count: u64,
    pub volume_lots: u64,
}

impl Market {
    /// `(low, high)` limits allowed by the price band; `None` if the band is disabled.
    pub fn band(&self) -> Option<(Price, Price)> {
        if self.spec.band_ppm == 0 {
            return None;
        }
        let r = self.reference_price as i128;
        let width = r * self.spec.band_ppm as i128 / PPM as i128;
        let low = (r - width).max(1);
        let high = (r + width).min(Price::MAX as i128);
        Some((low as Price, high as Price))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKey {
    pub account: AccountId,
    pub secret_hash: [u8; 32],
    pub permissions: u32,
}

/// Quote notional of `qty` lots at `price`: `price * qty * tick_size`, if it fits.
pub fn notional(price: Price, qty: Qty, tick_size: Amount) -> Option<Amount> {
    if tick_size == 0 {
        return Some(0);
    }
    // Checked i64 products are exact when they succeed, and fail exactly when the
    // product does not fit an amount: the same answer as the i128 computation below.
    if let Ok(q) = i64::try_from(qty) {
        return price.checked_mul(q)?.checked_mul(tick_size);
    }
    // price * qty always fits in i128 (|price| < 2^63, qty < 2^64), but times a large
    // tick it may not, and a wrapped product would hold the wrong amount. When price *
    // qty alone exceeds an amount, so does the notional (a tick is at least 1), and
    // otherwise the product of two i64 fits in i128: no overflow check in i128 needed.
    let price_qty = Amount::try_from(price as i128 * qty as i128).ok()?;
    Amount::try_from(price_qty as i128 * tick_size as i128).ok()
}

/// Fee on a notional, rounded down (per fill).
pub fn fee_floor(notional: Amount, fee_ppm: u32) -> Amount {
    if fee_ppm == 0 {
        return 0;
    }
    // In i64 when the product fits (the same truncating division), else in i128.
    match notional.checked_mul(fee_ppm as i64) {
        Some(x) => x / PPM as i64,
        None => (notional as i128 * fee_ppm as i128 / PPM as i128) as Amount,
    }
}

/// Quote a resting buy must hold: notional plus the worst-case fee, rounded up.
pub fn buy_hold(price: Price, qty: Qty, tick_size: Amount, fee_ppm: u32) -> Option<Amount> {
    let n = notional(price, qty, tick_size)?;
    if fee_ppm == 0 {
        return Some(n);
    }
    // In i64 when the intermediate fits (the same result), else in i128.
    if let Some(x) = n
        .checked_mul(fee_ppm as i64)
        .and_then(|x| x.checked_add(PPM as i64 - 1))
    {
        return n.checked_add(x / PPM as i64);
    }
    let n = n as i128;
    let fee = (n * fee_ppm as i128 + PPM as i128 - 1) / PPM as i128;
    Amount::try_from(n + fee).ok()
}

/// Lots a budget buys at `price` with fees: the largest `q` with
/// `q*unit*(1e6+fee)/1e6 <= budget`; never costs more than the budget.
pub fn lots_for_budget(budget: Amount, price: Price, tick_size: Amount, fee_ppm: u32) -> Qty {
    let unit = price as i128 * tick_size as i128;
    assert!(unit > 0 && budget >= 0);
    // A lot whose price with fees does not fit in i128 is beyond any budget (an i64).
    let Some(lot_cost_ppm) = unit.checked_mul(PPM as i128 + fee_ppm as i128) else {
        return 0;
    };
    let lots = budget as i128 * PPM as i128 / lot_cost_ppm;
    lots.min(Qty::MAX as i128) as Qty
}

/// The deterministic exchange state machine.
#[derive(Clone, Debug)]
pub struct Exchange {
    pub(crate) assets: Vec<Option<Asset>>,
    pub(crate) markets: Vec<Option<Market>>,
    pub(crate) accounts: Vec<Account>,
    pub(crate) account_index: FxHashMap<AccountId, u32>,
    pub(crate) api_keys: BTreeMap<u64, ApiKey>,
    pub(crate) deposit_refs: BTreeSet<u64>,
    pub(crate) withdraw_refs: BTreeSet<u64>,
    /// Per asset: deposits minus withdrawals. Every balance sums to this.
    pub(crate) supply: Vec<Amount>,
    pub(crate) next_order_id: OrderId,
    /// Check every invariant after every command (tests, `--checked` runs).
    checked: bool,
    /// Reused scratch buffers for mass cancels: no allocation in steady state.
    scratch_ids: Vec<OrderId>,
    scratch_open: Vec<(OrderId, MarketId)>,
}

impl Default for Exchange {
    fn default() -> Self {
        Self::new()
    }
}

type Reject = RejectReason;

impl Exchange {
    /// An empty exchange holding only the fee account.
    pub fn new() -> Self {
        let mut ex = Exchange {
            assets: Vec::new(),
            markets: Vec::new(),
            accounts: Vec::new(),
            account_index: FxHashMap::default(),
            api_keys: BTreeMap::new(),
            deposit_refs: BTreeSet::new(),
            withdraw_refs: BTreeSet::new(),
            supply: Vec::new(),
            next_order_id: 1,
            checked: false,
            scratch_ids: Vec::new(),
            scratch_open: Vec::new(),
        };
        ex.insert_account(FEE_ACCOUNT);
        ex
    }

    /// Enables the invariant check after every command (slow; for tests and audits).
    pub fn set_checked(&mut self, checked: bool) {
        self.checked = checked;
    }

    // ---------------------------------------------------------------- queries

    pub fn market(&self, id: MarketId) -> Option<&Market> {
        self.markets.get(id as usize).and_then(|m| m.as_ref())
    }

    pub fn asset(&self, id: AssetId) -> Option<&Asset> {
        self.assets.get(id as usize).and_then(|a| a.as_ref())
    }

    pub fn account(&self, id: AccountId) -> Option<&Account> {
        self.account_index
            .get(&id)
            .map(|&i| &self.accounts[i as usize])
    }

    pub fn balance(&self, account: AccountId, asset: AssetId) -> Balance {
        self.account(account)
            .map(|a| a.balance(asset))
            .unwrap_or_default()
    }

    pub fn api_key(&self, key_id: u64) -> Option<&ApiKey> {
        self.api_keys.get(&key_id)
    }

    /// Deposits minus withdrawals of `asset`.
    pub fn supply(&self, asset: AssetId) -> Amount {
        self.supply.get(asset as usize).copied().unwrap_or(0)
    }

    /// The id the next accepted order will get.
    pub fn next_order_id(&self) -> OrderId {
        self.next_order_id
    }

    /// Market ids in ascending order.
    pub fn market_ids(&self) -> impl Iterator<Item = MarketId> + '_ {
        self.markets
            .iter()
            .enumerate()
            .filter(|(_, m)| m.is_some())
            .map(|(i, _)| i as MarketId)
    }

    // ---------------------------------------------------------------- apply

    /// Applies one command, appending its events to `out`.
    pub fn apply(&mut self, cmd: &Command, out: &mut Vec<Event>) {
        let result = match *cmd {
            Command::Place(ref p) => self.place(p, out),
            Command::Cancel {
                account,
                market,
                order,
            } => self.cancel(account, market, order, out),
            Command::Replace {
                account,
                market,
                order,
                price,
                qty,
            } => self.replace(account, market, order, price, qty, out),
            Command::CancelAll { account, market } => self.cancel_all(account, market, out),
            _ => self.apply_admin(cmd, out),
        };
        if let Err(reason) = result {
            out.push(Event::Rejected {
                kind: cmd.kind(),
                account: command_account(cmd),
                order_ref: command_order_ref(cmd),
                reason,
            });
        }
        if self.checked {
            self.check_invariants();
        }
    }

    fn account_idx(&self, id: AccountId) -> Result<u32, Reject> {
        self.account_index
            .get(&id)
            .copied()
            .ok_or(Reject::UnknownAccount)
    }

    fn market_ref(&self, id: MarketId) -> Result<&Market, Reject> {
        self.market(id).ok_or(Reject::UnknownMarket)
    }

    fn check_trading(status: MarketStatus) -> Result<(), Reject> {
        match status {
            MarketStatus::Open => Ok(()),
            MarketStatus::Halted => Err(Reject::MarketHalted),
            MarketStatus::CancelOnly => Err(Reject::MarketCancelOnly),
            MarketStatus::Closed => Err(Reject::MarketClosed),
        }
    }

    fn check_cancel(status: MarketStatus) -> Result<(), Reject> {
        match status {
            MarketStatus::Open | MarketStatus::CancelOnly => Ok(()),
            MarketStatus::Halted => Err(Reject::MarketHalted),
            MarketStatus::Closed => Err(Reject::MarketClosed),
        }
    }

    /// The funds `meta`'s order needs while resting with `qty` at `price`.
    fn resting_hold(
        spec: &MarketSpec,
        side: Side,
        price: Price,
        qty: Qty,
        meta: &OrderMeta,
    ) -> Amount {
        match side {
            Side::Buy => buy_hold(price, qty, spec.tick_size, meta.hold_fee_ppm())
                .expect("a resting hold never exceeds the hold it was accepted with"),
            Side::Sell => qty as Amount * spec.lot_size,
        }
    }

    fn place(&mut self, p: &PlaceOrder, out: &mut Vec<Event>) -> Result<(), Reject> {
        let market = self.market_ref(p.market)?;
        let acct = self.account_idx(p.account)?;
        if self.accounts[acct as usize].suspended {
            return Err(Reject::AccountSuspended);
        }
        Self::check_trading(market.status)?;
        let spec = &market.spec;
        let by_budget = p.quote_budget != 0;
        // Shape of the order.
        match p.kind {
            OrderKind::Limit => {
                if by_budget {
                    return Err(Reject::InvalidQuantity);
                }
                if p.price <= 0 {
                    return Err(Reject::InvalidPrice);
                }
            }
            OrderKind::Market => {
                if p.price != 0 {
                    return Err(Reject::InvalidPrice);
                }
                if !matches!(p.tif, TimeInForce::Ioc | TimeInForce::Fok) {
                    return Err(Reject::InvalidTimeInForce);
                }
                if by_budget {
                    if p.side != Side::Buy || p.qty != 0 || p.quote_budget < 0 {
                        return Err(Reject::InvalidQuantity);
                    }
                    if p.tif == TimeInForce::Fok {
                        return Err(Reject::InvalidTimeInForce);
                    }
                }
            }
        }
        if !by_budget {
            if p.qty == 0 {
                return Err(Reject::InvalidQuantity);
            }
            if p.qty < spec.qty_min {
                return Err(Reject::BelowMinQuantity);
            }
            if p.qty > spec.qty_max {
                return Err(Reject::AboveMaxQuantity);
            }
        }
        let band = market.band();
        let limit = match (p.kind, p.side) {
            (OrderKind::Limit, _) => {
                if let Some((low, high)) = band {
                    if p.price < low || p.price > high {
                        return Err(Reject::PriceOutsideBand);
                    }
                }
                p.price
            }
            (OrderKind::Market, Side::Buy) if by_budget => Incoming::market_limit(Side::Buy),
            (OrderKind::Market, Side::Buy) => match band {
                Some((_, high)) => high,
                None => return Err(Reject::MarketBuyNeedsBand),
            },
            (OrderKind::Market, Side::Sell) => band.map_or(1, |(low, _)| low),
        };
        let account = &self.accounts[acct as usize];
        if account.open_orders.find_client(p.client_order_id).is_some() {
            return Err(Reject::DuplicateClientOrderId);
        }
        // Only an order that can rest counts against the caps.
        if matches!(p.tif, TimeInForce::Gtc | TimeInForce::PostOnly) {
            let limits = &market.limits;
            // An account's orders in one market never outnumber all its orders: the
            // per-market count (a second allocation per account) is read only when the
            // total reaches the cap.
            let open = &account.open_orders;
            if (open.len() >= limits.per_account as usize
                && open.count_in(p.market) >= limits.per_account)
                || market.book.order_count() >= limits.per_market as usize
            {
                return Err(Reject::TooManyOpenOrders);
            }
        }
        let (maker_fee_ppm, taker_fee_ppm) = match account.fee_tiers.get(&p.market) {
            Some(&tier) => tier,
            None => (spec.maker_fee_ppm, spec.taker_fee_ppm),
        };
        let meta = OrderMeta {
            open_slot: NO_SLOT,
            hold: 0,
            maker_fee_ppm,
            taker_fee_ppm,
            stp: p.stp as u8,
            post_only: p.tif == TimeInForce::PostOnly,
            has_client_id: p.client_order_id != 0,
        };
        let (hold_asset, hold) = match p.side {
            Side::Buy if by_budget => (spec.quote, p.quote_budget),
            Side::Buy => (
                spec.quote,
                buy_hold(limit, p.qty, spec.tick_size, meta.hold_fee_ppm())
                    .ok_or(Reject::AmountOverflow)?,
            ),
            Side::Sell => (
                spec.base,
                (p.qty as i128 * spec.lot_size as i128)
                    .try_into()
                    .map_err(|_| Reject::AmountOverflow)?,
            ),
        };
        if account.balance(hold_asset).available < hold {
            return Err(Reject::InsufficientBalance);
        }
        if p.tif == TimeInForce::PostOnly && market.book.would_take(p.side, limit) {
            return Err(Reject::PostOnlyWouldTake);
        }

        // Accepted: from here on nothing is rejected.
        let order_id = self.next_order_id;
        self.next_order_id += 1;
        let balance = self.accounts[acct as usize].balance_mut(hold_asset);
        balance.available -= hold;
        balance.held += hold;
        out.push(Event::Accepted {
            order_id,
            account: p.account,
            market: p.market,
            client_order_id: p.client_order_id,
            side: p.side,
            price: p.price,
            qty: p.qty,
        });
        let incoming = Incoming {
            id: order_id,
            side: p.side,
            limit,
            qty: if by_budget { Qty::MAX } else { p.qty },
            owner: acct,
            stp: p.stp,
            tif: p.tif,
        };
        let meta = OrderMeta { hold, ..meta };
        self.execute(p.market, &incoming, meta, p.client_order_id, by_budget, out);
        Ok(())
    }

    /// Matches an accepted order (new, or replaced with loss of priority), settles every
    /// fill, then rests or cancels the remainder and releases what it no longer needs.
    /// A replaced order arrives with its open-order slot (`meta.open_slot`, which keeps
    /// its client order id), a new one with none and its `client_order_id` (0: none).
    fn execute(
        &mut self,
        market_id: MarketId,
        incoming: &Incoming,
        meta: OrderMeta,
        client_order_id: ClientOrderId,
        by_budget: bool,
        out: &mut Vec<Event>,
    ) {
        let Market {
            spec,
            book,
            reference_price,
            trade_count,
            volume_lots,
            ..
        } = self.markets[market_id as usize]
            .as_mut()
            .expect("market checked");
        let owner = incoming.owner;
        // A replaced order already has its slot (and its client id listed).
        let replaced = meta.open_slot != NO_SLOT;
        let mut meta = meta;
        if !replaced && matches!(incoming.tif, TimeInForce::Gtc | TimeInForce::PostOnly) {
            // An order that may rest takes its slot before matching, so that resting
            // needs no second visit to the book; it gives the slot back if it does not
            // rest.
            meta.open_slot = self.accounts[owner as usize].open_orders.insert(
                incoming.id,
                market_id,
                client_order_id,
            );
        }
        let taker_account_id = self.accounts[owner as usize].id;
        let mut sink = SettleSink {
            spec,
            accounts: &mut self.accounts,
            out,
            taker_id: incoming.id,
            taker_side: incoming.side,
            taker_account: owner,
            taker_account_id,
            taker: meta,
            by_budget,
            last_price: None,
            trades: 0,
            volume: 0,
        };
        let outcome = book.submit(incoming, meta, &mut sink);
        let SettleSink {
            taker,
            last_price,
            trades,
            volume,
            ..
        } = sink;
        if let Some(price) = last_price {
            *reference_price = price;
        }
        *trade_count += trades;
        // A statistic: it saturates rather than wrap (qty_max may be near u64::MAX).
        *volume_lots = volume_lots.saturating_add(volume);
        let account = &mut self.accounts[owner as usize];
        let hold_asset = match incoming.side {
            Side::Buy => spec.quote,
            Side::Sell => spec.base,
        };
        let cancelled = match outcome {
            Outcome::PostOnlyWouldTake => unreachable!("post-only checked before acceptance"),
            Outcome::Filled => None,
            Outcome::Rested { remaining } => {
                // Keep exactly what the resting remainder needs; release the rest.
                let need =
                    Self::resting_hold(spec, incoming.side, incoming.limit, remaining, &taker);
                assert!(taker.hold >= need, "hold covers the resting remainder");
                let release = taker.hold - need;
                let b = account.balance_mut(hold_asset);
                b.held -= release;
                b.available += release;
                // The book rested the order with the hold it entered with: correct it
                // only if fills or rounding changed what it needs. An order with a
                // client id is found through its slot, which keeps its book handle.
                // (The index entry and the node were just written: finding the handle
                // misses no cache.)
                if need != meta.hold || taker.has_client_id {
                    let handle = book.find_handle(incoming.id).expect("just rested");
                    if need != meta.hold {
                        book.data_at_mut(handle).hold = need;
                    }
                    if taker.has_client_id {
                        account.open_orders.set_handle(taker.open_slot, handle);
                    }
                }
                None
            }
            Outcome::Cancelled {
                remaining,
                end,
                fok,
            } => Some(match (fok, end, by_budget) {
                (true, _, _) => (remaining, CancelReason::FillOrKill),
                (_, _, true) => (0, CancelReason::BudgetDone),
                (_, MatchEnd::SelfTrade, _) => (remaining, CancelReason::SelfTrade),
                _ => (remaining, CancelReason::ImmediateOrCancel),
            }),
        };
        if !matches!(outcome, Outcome::Rested { .. }) {
            let b = account.balance_mut(hold_asset);
            b.held -= taker.hold;
            b.available += taker.hold;
            // An order that filled or was cancelled leaves the account's lists.
            if taker.open_slot != NO_SLOT {
                account.open_orders.remove(taker.open_slot, incoming.id);
            }
        }
        if let Some((remaining_qty, reason)) = cancelled {
            out.push(Event::Cancelled {
                order_id: incoming.id,
                account: account.id,
                market: market_id,
                remaining_qty,
                reason,
            });
        }
    }

    /// Finds a resting order of `acct` in `market` by exchange or client id: its handle
    /// in the market's book (valid until the book changes).
    fn find_order(&self, acct: u32, market: &Market, order: OrderRef) -> Result<u32, Reject> {
        let handle = match order {
            OrderRef::Exchange(id) => market.book.find_handle(id),
            OrderRef::Client(cid) => {
                // The slot names the order's market and its handle in that book: an
                // order of another market is unknown here, as the book's index would say.
                let open = &self.accounts[acct as usize].open_orders;
                let slot = open.find_client(cid).ok_or(Reject::UnknownOrder)?;
                let (id, m, h) = open.resting(slot).ok_or(Reject::UnknownOrder)?;
                (m == market.spec.market)
                    .then(|| market.book.resting_at(h).filter(|n| n.id == id).map(|_| h))
                    .flatten()
            }
        };
        match handle {
            Some(h) if market.book.at(h).owner == acct => Ok(h),
            _ => Err(Reject::UnknownOrder),
        }
    }

    fn cancel(
        &mut self,
        account: AccountId,
        market_id: MarketId,
        order: OrderRef,
        out: &mut Vec<Event>,
    ) -> Result<(), Reject> {
        let market = self.market_ref(market_id)?;
        let acct = self.account_idx(account)?;
        Self::check_cancel(market.status)?;
        let handle = self.find_order(acct, market, order)?;
        let market = self.markets[market_id as usize]
            .as_mut()
            .expect("market checked");
        let (node, total) = market.book.remove_at(handle);
        self.released(market_id, node, total, CancelReason::Requested, out);
        Ok(())
    }

    /// Removes a resting order, releases its hold, and reports it.
    fn cancel_resting(
        &mut self,
        market_id: MarketId,
        id: OrderId,
        reason: CancelReason,
        out: &mut Vec<Event>,
    ) {
        let market = self.markets[market_id as usize]
            .as_mut()
            .expect("market checked");
        let (node, total) = market.book.remove(id).expect("order checked");
        self.released(market_id, node, total, reason, out);
    }

    /// Releases a resting order the book gave up, and reports it.
    fn released(
        &mut self,
        market_id: MarketId,
        node: Node<OrderMeta>,
        total: Qty,
        reason: CancelReason,
        out: &mut Vec<Event>,
    ) {
        let market = self.markets[market_id as usize]
            .as_ref()
            .expect("market checked");
        release_order(&market.spec, &mut self.accounts, &node);
        out.push(Event::Cancelled {
            order_id: node.id,
            account: self.accounts[node.owner as usize].id,
            market: market_id,
            remaining_qty: node.qty,
            reason,
        });
        out.push(Event::Level {
            market: market_id,
            side: node.side,
            price: node.price,
            total_qty: total,
        });
    }

    fn replace(
        &mut self,
        account: AccountId,
        market_id: MarketId,
        order: OrderRef,
        price: Price,
        qty: Qty,
        out: &mut Vec<Event>,
    ) -> Result<(), Reject> {
        let market = self.market_ref(market_id)?;
        let acct = self.account_idx(account)?;
        if self.accounts[acct as usize].suspended {
            return Err(Reject::AccountSuspended);
        }
        Self::check_trading(market.status)?;
        let handle = self.find_order(acct, market, order)?;
        let node = market.book.at(handle);
        if price <= 0 {
            return Err(Reject::InvalidPrice);
        }
        if qty == 0 {
            return Err(Reject::InvalidQuantity);
        }
        let spec = &market.spec;
        if qty < spec.qty_min {
            return Err(Reject::BelowMinQuantity);
        }
        if qty > spec.qty_max {
            return Err(Reject::AboveMaxQuantity);
        }
        let node = *node;
        let id = node.id;
        if let Some((low, high)) = market.band() {
            if price != node.price && (price < low || price > high) {
                return Err(Reject::PriceOutsideBand);
            }
        }
        let keeps_priority = price == node.price && qty <= node.qty;
        if !keeps_priority && node.data.post_only && market.book.would_take(node.side, price) {
            return Err(Reject::PostOnlyWouldTake);
        }
        let need = match node.side {
            Side::Buy => buy_hold(price, qty, spec.tick_size, node.data.hold_fee_ppm())
                .ok_or(Reject::AmountOverflow)?,
            Side::Sell => (qty as i128 * spec.lot_size as i128)
                .try_into()
                .map_err(|_| Reject::AmountOverflow)?,
        };
        let hold_asset = match node.side {
            Side::Buy => spec.quote,
            Side::Sell => spec.base,
        };
        let extra = need - node.data.hold;
        if extra > self.accounts[acct as usize].balance(hold_asset).available {
            return Err(Reject::InsufficientBalance);
        }

        // Accepted.
        let b = self.accounts[acct as usize].balance_mut(hold_asset);
        b.available -= extra;
        b.held += extra;
        out.push(Event::Replaced {
            order_id: id,
            account,
            market: market_id,
            price,
            qty,
            priority_kept: keeps_priority,
        });
        let market = self.markets[market_id as usize].as_mut().expect("checked");
        if keeps_priority {
            // The book has not changed since `find_order`: its handle still names the order.
            market.book.data_at_mut(handle).hold = need;
            if qty < node.qty {
                let total = market.book.reduce_at(handle, qty);
                out.push(Event::Level {
                    market: market_id,
                    side: node.side,
                    price,
                    total_qty: total,
                });
            }
            return Ok(());
        }
        // Unchanged since `find_order` too.
        let (_, total) = market.book.remove_at(handle);
        out.push(Event::Level {
            market: market_id,
            side: node.side,
            price: node.price,
            total_qty: total,
        });
        let incoming = Incoming {
            id,
            side: node.side,
            limit: price,
            qty,
            owner: acct,
            stp: node.data.stp_mode(),
            tif: if node.data.post_only {
                TimeInForce::PostOnly
            } else {
                TimeInForce::Gtc
            },
        };
        // The order keeps its open-order slot (and client id) while it re-enters.
        let meta = OrderMeta {
            hold: need,
            ..node.data
        };
        self.execute(market_id, &incoming, meta, 0, false, out);
        Ok(())
    }

    fn cancel_all(
        &mut self,
        account: AccountId,
        market: Option<MarketId>,
        out: &mut Vec<Event>,
    ) -> Result<(), Reject> {
        let acct = self.account_idx(account)?;
        if let Some(m) = market {
            Self::check_cancel(self.market_ref(m)?.status)?;
        }
        let mut open = std::mem::take(&mut self.scratch_open);
        // Ascending order id, whatever the slots' order.
        self.accounts[acct as usize]
            .open_orders
            .sorted_into(&mut open);
        open.retain(|&(_, m)| {
            let status = self.markets[m as usize].as_ref().expect("exists").status;
            market.is_none_or(|only| only == m) && Self::check_cancel(status).is_ok()
        });
        for &(id, m) in &open {
            self.cancel_resting(m, id, CancelReason::CancelAll, out);
        }
        out.push(Event::CancelAllDone {
            account,
            count: open.len() as u32,
        });
        self.scratch_open = open;
        Ok(())
    }

    fn insert_account(&mut self, id: AccountId) {
        let idx = self.accounts.len() as u32;
        self.accounts.push(Account::new(id));
        let prev = self.account_index.insert(id, idx);
        assert!(prev.is_none());
    }

    fn asset_ref(&self, id: AssetId) -> Result<&Asset, Reject> {
        self.asset(id).ok_or(Reject::UnknownAsset)
    }

    fn apply_admin(&mut self, cmd: &Command, out: &mut Vec<Event>) -> Result<(), Reject> {
        let kind = cmd.kind();
        let done_id: u64 = match *cmd {
            Command::CreateAsset {
                asset,
                symbol,
                decimals,
            } => {
                if asset == 0 || asset >= ID_MAX {
                    return Err(Reject::InvalidId);
                }
                if self.asset(asset).is_some() {
                    return Err(Reject::AssetExists);
                }
                if decimals > 18 {
                    return Err(Reject::InvalidDecimals);
                }
                let i = asset as usize;
                if self.assets.len() <= i {
                    self.assets.resize(i + 1, None);
                    self.supply.resize(i + 1, 0);
                }
                self.assets[i] = Some(Asset { symbol, decimals });
                asset as u64
            }
            Command::CreateMarket(spec) => {
                self.create_market(spec)?;
                spec.market as u64
            }
            Command::CreateAccount { account } => {
                if self.account_index.contains_key(&account) {
                    return Err(Reject::AccountExists);
                }
                self.insert_account(account);
                account as u64
            }
            Command::Deposit {
                account,
                asset,
                amount,
                external_ref,
            } => return self.move_funds(true, account, asset, amount, external_ref, out),
            Command::Withdraw {
                account,
                asset,
                amount,
                external_ref,
            } => return self.move_funds(false, account, asset, amount, external_ref, out),
            Command::SetMarketFees {
                market,
                maker_fee_ppm,
                taker_fee_ppm,
            } => {
                self.market_ref(market)?;
                check_fees(maker_fee_ppm, taker_fee_ppm)?;
                let m = self.markets[market as usize].as_mut().expect("checked");
                m.spec.maker_fee_ppm = maker_fee_ppm;
                m.spec.taker_fee_ppm = taker_fee_ppm;
                market as u64
            }
            Command::SetFeeTier {
                account,
                market,
                fees,
            } => {
                let acct = self.account_idx(account)?;
                self.market_ref(market)?;
                let tiers = &mut self.accounts[acct as usize].fee_tiers;
                match fees {
                    Some((maker, taker)) => {
                        check_fees(maker, taker)?;
                        tiers.insert(market, (maker, taker));
                    }
                    None => {
                        tiers.remove(&market);
                    }
                }
                account as u64
            }
            Command::SetMarketStatus {
                market,
                status,
                cancel_resting,
            } => {
                self.market_ref(market)?;
                self.markets[market as usize]
                    .as_mut()
                    .expect("checked")
                    .status = status;
                out.push(Event::MarketStatus { market, status });
                if cancel_resting {
                    let mut ids = std::mem::take(&mut self.scratch_ids);
                    ids.clear();
                    let book = &self.markets[market as usize]
                        .as_ref()
                        .expect("checked")
                        .book;
                    book.for_each_order(|n| ids.push(n.id));
                    for &id in &ids {
                        self.cancel_resting(market, id, CancelReason::MarketStatus, out);
                    }
                    self.scratch_ids = ids;
                }
                return Ok(());
            }
            Command::SuspendAccount { account } | Command::ResumeAccount { account } => {
                let acct = self.account_idx(account)?;
                self.accounts[acct as usize].suspended = kind == CommandKind::SuspendAccount;
                account as u64
            }
            Command::AddApiKey {
                account,
                key_id,
                secret_hash,
                permissions,
            } => {
                self.account_idx(account)?;
                if self.api_keys.contains_key(&key_id) {
                    return Err(Reject::ApiKeyExists);
                }
                self.api_keys.insert(
                    key_id,
                    ApiKey {
                        account,
                        secret_hash,
                        permissions,
                    },
                );
                key_id
            }
            Command::RevokeApiKey { key_id } => {
                self.api_keys.remove(&key_id).ok_or(Reject::UnknownApiKey)?;
                key_id
            }
            Command::SetMarketLimits {
                market,
                max_open_orders_per_account,
                max_open_orders,
            } => {
                self.market_ref(market)?;
                if max_open_orders_per_account == 0 || max_open_orders == 0 {
                    return Err(Reject::InvalidMarketSpec);
                }
                self.markets[market as usize]
                    .as_mut()
                    .expect("checked")
                    .limits = OpenOrderLimits {
                    per_account: max_open_orders_per_account,
                    per_market: max_open_orders,
                };
                market as u64
            }
            Command::Place(_)
            | Command::Cancel { .. }
            | Command::Replace { .. }
            | Command::CancelAll { .. } => unreachable!("trading commands handled in apply"),
        };
        out.push(Event::AdminDone { kind, id: done_id });
        Ok(())
    }

    fn create_market(&mut self, spec: MarketSpec) -> Result<(), Reject> {
        if spec.market == 0 || spec.market >= ID_MAX || spec.base == spec.quote {
            return Err(Reject::InvalidId);
        }
        if self.market(spec.market).is_some() {
            return Err(Reject::MarketExists);
        }
        self.asset_ref(spec.base)?;
        self.asset_ref(spec.quote)?;
        let spec_ok = spec.tick_size > 0
            && spec.lot_size > 0
            && spec.qty_min > 0
            && spec.qty_max >= spec.qty_min
            && spec.reference_price > 0
            && spec.band_ppm as u64 <= PPM;
        if !spec_ok {
            return Err(Reject::InvalidMarketSpec);
        }
        check_fees(spec.maker_fee_ppm, spec.taker_fee_ppm)?;
        let i = spec.market as usize;
        if self.markets.len() <= i {
            self.markets.resize(i + 1, None);
        }
        self.markets[i] = Some(Market {
            spec,
            status: MarketStatus::Open,
            reference_price: spec.reference_price,
            limits: OpenOrderLimits::DEFAULT,
            book: OrderBook::new(),
            trade_count: 0,
            volume_lots: 0,
        });
        Ok(())
    }

    /// Deposit (`deposit`) or withdrawal: idempotent by `external_ref`, each kind with
    /// its own set of references; a rejected withdrawal does not consume its reference.
    fn move_funds(
        &mut self,
        deposit: bool,
        account: AccountId,
        asset: AssetId,
        amount: Amount,
        external_ref: u64,
        out: &mut Vec<Event>,
    ) -> Result<(), Reject> {
        let acct = self.account_idx(account)?;
        self.asset_ref(asset)?;
        if amount <= 0 {
            return Err(Reject::InvalidAmount);
        }
        let refs = if deposit {
            &self.deposit_refs
        } else {
            &self.withdraw_refs
        };
        let duplicate = refs.contains(&external_ref);
        if !duplicate {
            if deposit {
                let supply = self.supply[asset as usize]
                    .checked_add(amount)
                    .ok_or(Reject::AmountOverflow)?;
                self.supply[asset as usize] = supply;
                self.deposit_refs.insert(external_ref);
                self.accounts[acct as usize].balance_mut(asset).available += amount;
            } else {
                if self.accounts[acct as usize].suspended {
                    return Err(Reject::AccountSuspended);
                }
                let b = self.accounts[acct as usize].balance_mut(asset);
                if b.available < amount {
                    return Err(Reject::InsufficientBalance);
                }
                b.available -= amount;
                self.supply[asset as usize] -= amount;
                self.withdraw_refs.insert(external_ref);
            }
        }
        out.push(Event::Funds {
            account,
            asset,
            amount: if deposit { amount } else { -amount },
            available: self.accounts[acct as usize].balance(asset).available,
            external_ref,
            duplicate,
        });
        Ok(())
    }

    // ---------------------------------------------------------------- invariants

    /// Checks every invariant; panics on the first violation. See
    /// [`Exchange::verify_invariants`]; this also checks each book's internal structure.
    pub fn check_invariants(&self) {
        for m in self.markets.iter().flatten() {
            m.book.check_invariants();
        }
        if let Err(violation) = self.verify_invariants() {
            panic!("invariant violated: {violation}");
        }
    }

    /// Checks, without panicking, that:
    /// - no book is crossed;
    /// - every market spec, order and fee tier is within the engine's ranges;
    /// - each resting order holds exactly what its remainder needs;
    /// - each account's held amount per asset equals the sum of its orders' holds, and
    ///   its open-order and client-id indexes list exactly its resting orders;
    /// - for every asset, all balances (fee account included) sum to deposits minus
    ///   withdrawals, and none is negative.
    ///
    /// `restore` runs this, so a snapshot that decodes into an impossible state is refused.
    pub fn verify_invariants(&self) -> Result<(), String> {
        let mut held: BTreeMap<(u32, AssetId), i128> = BTreeMap::new();
        // Order ids are global: one id names one order in one book.
        let mut order_ids: BTreeSet<OrderId> = BTreeSet::new();
        let mut open_count = vec![0usize; self.accounts.len()];
        let mut with_client_id = 0usize;
        for m in self.markets.iter().flatten() {
            let s = &m.spec;
            if m.limits.per_account == 0 || m.limits.per_market == 0 {
                return Err(format!("market {} has a zero open-order cap", s.market));
            }
            let spec_ok = s.tick_size > 0
                && s.lot_size > 0
                && s.qty_min > 0
                && s.qty_max >= s.qty_min
                && s.band_ppm as u64 <= PPM
                && m.reference_price > 0
                && check_fees(s.maker_fee_ppm, s.taker_fee_ppm).is_ok()
                && self.asset(s.base).is_some()
                && self.asset(s.quote).is_some()
                && s.base != s.quote;
            if !spec_ok {
                return Err(format!("market {} has an invalid spec", s.market));
            }
            if m.book.is_crossed() {
                return Err(format!("market {} book crossed", s.market));
            }
            let mut violation = None;
            m.book.for_each_order(|n| {
                if violation.is_none() && !order_ids.insert(n.id) {
                    violation = Some(format!("order {} in two books", n.id));
                }
                if violation.is_none() {
                    violation = self
                        .verify_order(m, n, &mut held, &mut open_count, &mut with_client_id)
                        .err();
                }
            });
            if let Some(v) = violation {
                return Err(v);
            }
        }
        let mut totals = vec![0i128; self.supply.len()];
        let mut indexed_client_ids = 0usize;
        for (i, account) in self.accounts.iter().enumerate() {
            if account.open_orders.len() != open_count[i] || !account.open_orders.counts_agree() {
                return Err(format!("account {} open-order index", account.id));
            }
            if !account.open_orders.client_index_agrees() {
                return Err(format!("account {} client id index", account.id));
            }
            indexed_client_ids += account.open_orders.by_client.count();
            for &(maker, taker) in account.fee_tiers.values() {
                check_fees(maker, taker).map_err(|_| format!("account {} fee tier", account.id))?;
            }
            if account.balances.len() > self.supply.len() {
                return Err(format!("account {} balances beyond assets", account.id));
            }
            for (asset, b) in account.balances.iter().enumerate() {
                if b.available < 0 || b.held < 0 {
                    return Err(format!("account {} asset {asset} negative", account.id));
                }
                let want = held
                    .get(&(i as u32, asset as AssetId))
                    .copied()
                    .unwrap_or(0);
                if b.held as i128 != want {
                    return Err(format!(
                        "account {} asset {asset}: held {} but orders need {want}",
                        account.id, b.held
                    ));
                }
                totals[asset] += b.available as i128 + b.held as i128;
            }
        }
        // Every hold an order needs was compared above, unless its asset lies past the end
        // of the account's balances (a restored state can say so): then it is unbacked.
        for (&(account, asset), &need) in &held {
            let balances = self.accounts[account as usize].balances.len();
            if need != 0 && asset as usize >= balances {
                return Err(format!(
                    "account {} asset {asset}: orders need {need} held but it has no balance",
                    self.accounts[account as usize].id
                ));
            }
        }
        for (asset, total) in totals.iter().enumerate() {
            let supply = self.supply[asset];
            if *total != supply as i128 || supply < 0 {
                return Err(format!(
                    "asset {asset}: balances sum to {total}, deposits minus withdrawals are {supply}"
                ));
            }
        }
        if indexed_client_ids != with_client_id {
            return Err("client id index size".into());
        }
        Ok(())
    }

    fn verify_order(
        &self,
        m: &Market,
        n: &Node<OrderMeta>,
        held: &mut BTreeMap<(u32, AssetId), i128>,
        open_count: &mut [usize],
        with_client_id: &mut usize,
    ) -> Result<(), String> {
        let d = &n.data;
        let account = self
            .accounts
            .get(n.owner as usize)
            .ok_or_else(|| format!("order {} account index", n.id))?;
        if StpMode::from_u8(d.stp).is_none()
            || check_fees(d.maker_fee_ppm, d.taker_fee_ppm).is_err()
            || n.id >= self.next_order_id
        {
            return Err(format!("order {} fields", n.id));
        }
        let (asset, need) = match n.side {
            Side::Buy => (
                m.spec.quote,
                buy_hold(n.price, n.qty, m.spec.tick_size, d.hold_fee_ppm()),
            ),
            Side::Sell => (
                m.spec.base,
                Amount::try_from(n.qty as i128 * m.spec.lot_size as i128).ok(),
            ),
        };
        if need != Some(d.hold) {
            return Err(format!("order {} holds {} but needs {need:?}", n.id, {
                d.hold
            }));
        }
        *held.entry((n.owner, asset)).or_default() += d.hold as i128;
        let resting = account.open_orders.resting(d.open_slot);
        if resting.map(|(id, market, _)| (id, market)) != Some((n.id, m.spec.market)) {
            return Err(format!("order {} missing from its account's index", n.id));
        }
        open_count[n.owner as usize] += 1;
        let client_order_id = account.open_orders.client_order_id(d.open_slot);
        if d.has_client_id != (client_order_id != 0) {
            return Err(format!("order {} client id flag", n.id));
        }
        if client_order_id != 0 {
            *with_client_id += 1;
            // Found by client id through the slot's handle.
            if resting.map(|(_, _, h)| h) != m.book.find_handle(n.id) {
                return Err(format!("order {} book handle in its slot", n.id));
            }
            if account.open_orders.find_client(client_order_id) != Some(d.open_slot) {
                return Err(format!("order {} client id index", n.id));
            }
        }
        Ok(())
    }
}

fn check_fees(maker: u32, taker: u32) -> Result<(), Reject> {
    if maker as u64 > PPM || taker as u64 > PPM {
        return Err(Reject::InvalidFee);
    }
    Ok(())
}

/// Releases a removed order's hold and forgets it in the account's lists.
fn release_order(spec: &MarketSpec, accounts: &mut [Account], node: &Node<OrderMeta>) {
    let account = &mut accounts[node.owner as usize];
    let asset = match node.side {
        Side::Buy => spec.quote,
        Side::Sell => spec.base,
    };
    let b = account.balance_mut(asset);
    assert!(b.held >= node.data.hold);
    b.held -= node.data.hold;
    b.available += node.data.hold;
    account.open_orders.remove(node.data.open_slot, node.id);
}

/// Settles fills as the book reports them.
struct SettleSink<'a> {
    spec: &'a MarketSpec,
    accounts: &'a mut Vec<Account>,
    out: &'a mut Vec<Event>,
    taker_id: OrderId,
    taker_side: Side,
    /// The incoming order's account (index).
    taker_account: u32,
    /// ... and its id, for the trade events.
    taker_account_id: AccountId,
    /// The incoming order's data; `hold` is what it still holds.
    taker: OrderMeta,
    by_budget: bool,
    last_price: Option<Price>,
    trades: u64,
    volume: u64,
}

impl MatchSink<OrderMeta> for SettleSink<'_> {
    fn affordable(&mut self, price: Price, want: Qty) -> Qty {
        if !self.by_budget {
            return want;
        }
        let lots = lots_for_budget(
            self.taker.hold,
            price,
            self.spec.tick_size,
            self.taker.taker_fee_ppm,
        );
        want.min(lots)
    }

    fn trade(&mut self, maker: &mut Node<OrderMeta>, price: Price, qty: Qty, taker_remaining: Qty) {
        let spec = self.spec;
        let n = notional(price, qty, spec.tick_size).expect("covered by the buyer's hold");
        let base = qty as Amount * spec.lot_size;
        let maker_fee = fee_floor(n, maker.data.maker_fee_ppm);
        let taker_fee = fee_floor(n, self.taker.taker_fee_ppm);
        let (maker_pays, taker_pays) = match self.taker_side {
            Side::Buy => (base, n + taker_fee),
            Side::Sell => (n + maker_fee, base),
        };
        // Taker: pay from its hold, receive the other asset.
        let (taker_gets, maker_gets) = match self.taker_side {
            Side::Buy => (base, n - maker_fee),
            Side::Sell => (n - taker_fee, base),
        };
        let (pay_asset, get_asset) = match self.taker_side {
            Side::Buy => (spec.quote, spec.base),
            Side::Sell => (spec.base, spec.quote),
        };
        assert!(self.taker.hold >= taker_pays, "taker hold covers the fill");
        self.taker.hold -= taker_pays;
        let t = &mut self.accounts[self.taker_account as usize];
        t.balance_mut(pay_asset).held -= taker_pays;
        t.balance_mut(get_asset).available += taker_gets;
        // Maker: the opposite assets.
        assert!(maker.data.hold >= maker_pays, "maker hold covers the fill");
        maker.data.hold -= maker_pays;
        let need = Exchange::resting_hold(spec, maker.side, maker.price, maker.qty, &maker.data);
        let release = maker.data.hold - need;
        assert!(release >= 0);
        maker.data.hold = need;
        let m = &mut self.accounts[maker.owner as usize];
        let maker_account = m.id;
        let maker_held = m.balance_mut(get_asset);
        maker_held.held -= maker_pays + release;
        maker_held.available += release;
        m.balance_mut(pay_asset).available += maker_gets;
        if maker.qty == 0 {
            assert_eq!(need, 0);
            m.open_orders.remove(maker.data.open_slot, maker.id);
        }
        self.accounts[FEE_ACCOUNT as usize]
            .balance_mut(spec.quote)
            .available += maker_fee + taker_fee;
        self.last_price = Some(price);
        self.trades += 1;
        self.volume = self.volume.saturating_add(qty);
        self.out.push(Event::Trade {
            market: spec.market,
            maker_order_id: maker.id,
            taker_order_id: self.taker_id,
            maker_account,
            taker_account: self.taker_account_id,
            taker_side: self.taker_side,
            price,
            qty,
            maker_fee,
            taker_fee,
            maker_remaining: maker.qty,
            taker_remaining: if self.by_budget { 0 } else { taker_remaining },
        });
    }

    fn maker_cancelled(&mut self, maker: &Node<OrderMeta>) {
        release_order(self.spec, self.accounts, maker);
        self.out.push(Event::Cancelled {
            order_id: maker.id,
            account: self.accounts[maker.owner as usize].id,
            market: self.spec.market,
            remaining_qty: maker.qty,
            reason: CancelReason::SelfTrade,
        });
    }

    fn level(&mut self, side: Side, price: Price, total: Qty) {
        self.out.push(Event::Level {
            market: self.spec.market,
            side,
            price,
            total_qty: total,
        });
    }
}

/// The account a command names (0 for admin commands that name none).
fn command_account(cmd: &Command) -> AccountId {
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

/// The order (or object) id a rejected command named, for the reject event.
fn command_order_ref(cmd: &Command) -> u64 {
    match *cmd {
        Command::Place(ref p) => p.client_order_id,
        Command::Cancel { order, .. } | Command::Replace { order, .. } => match order {
            OrderRef::Exchange(id) => id,
            OrderRef::Client(cid) => cid,
        },
        Command::CreateAsset { asset, .. } => asset as u64,
        Command::CreateMarket(spec) => spec.market as u64,
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

#[cfg(test)]
mod invariant_tests {
    use super::*;
    use crate::{MarketSpec, OrderKind, PlaceOrder, Side, StpMode, Symbol, TimeInForce};

    /// One market (base 1, quote 2), account 7 funded in both, with a resting buy that
    /// holds quote.
    fn with_a_resting_buy() -> Exchange {
        let mut ex = Exchange::new();
        let spec = MarketSpec {
            market: 1,
            symbol: Symbol::new("BTC-USD").unwrap(),
            base: 1,
            quote: 2,
            tick_size: 1,
            lot_size: 1,
            qty_min: 1,
            qty_max: 100,
            band_ppm: 0,
            reference_price: 100,
            maker_fee_ppm: 0,
            taker_fee_ppm: 0,
        };
        let cmds = [
            Command::CreateAsset {
                asset: 1,
                symbol: Symbol::new("BTC").unwrap(),
                decimals: 8,
            },
            Command::CreateAsset {
                asset: 2,
                symbol: Symbol::new("USD").unwrap(),
                decimals: 2,
            },
            Command::CreateMarket(spec),
            Command::CreateAccount { account: 7 },
            Command::Deposit {
                account: 7,
                asset: 1,
                amount: 1_000,
                external_ref: 1,
            },
            Command::Deposit {
                account: 7,
                asset: 2,
                amount: 1_000,
                external_ref: 2,
            },
            buy(7, 1, 90, 2),
        ];
        apply_all(&mut ex, &cmds);
        ex
    }

    fn buy(account: AccountId, market: MarketId, price: Price, qty: Qty) -> Command {
        Command::Place(PlaceOrder {
            account,
            market,
            client_order_id: 0,
            side: Side::Buy,
            kind: OrderKind::Limit,
            tif: TimeInForce::Gtc,
            price,
            qty,
            quote_budget: 0,
            stp: StpMode::None,
        })
    }

    /// Applies each command, which must be accepted.
    fn apply_all(ex: &mut Exchange, cmds: &[Command]) {
        let mut out = Vec::new();
        for c in cmds {
            out.clear();
            ex.apply(c, &mut out);
            assert!(!matches!(out[0], Event::Rejected { .. }), "{c:?}: {out:?}");
        }
    }

    #[test]
    fn one_order_id_in_two_books_breaks_the_invariants() {
        let mut ex = with_a_resting_buy();
        let second = MarketSpec {
            market: 2,
            symbol: Symbol::new("BTC-USD2").unwrap(),
            ..ex.markets[1].as_ref().unwrap().spec
        };
        apply_all(
            &mut ex,
            &[
                Command::CreateMarket(second),
                Command::CreateAccount { account: 8 },
                Command::Deposit {
                    account: 8,
                    asset: 2,
                    amount: 1_000,
                    external_ref: 3,
                },
                buy(8, 2, 80, 1),
            ],
        );
        assert_eq!(ex.verify_invariants(), Ok(()));
        // What a crafted snapshot can say: account 8's order in the second market
        // carries the id of account 7's order in the first (and account 8 lists it under
        // that id). Each account's own view is consistent.
        let (first_id, second_id) = (1, 2);
        let book = &mut ex.markets[2].as_mut().unwrap().book;
        let (node, _) = book.remove(second_id).expect("the second order");
        book.insert(
            first_id, node.side, node.price, node.qty, node.owner, node.data,
        );
        let i = ex.account_idx(8).unwrap() as usize;
        ex.accounts[i]
            .open_orders
            .remove(node.data.open_slot, second_id);
        let slot = ex.accounts[i].open_orders.insert(first_id, 2, 0);
        ex.markets[2]
            .as_mut()
            .unwrap()
            .book
            .data_mut(first_id)
            .unwrap()
            .open_slot = slot;
        let err = ex.verify_invariants().unwrap_err();
        assert!(err.contains("in two books"), "{err}");
    }

    #[test]
    fn an_order_whose_hold_has_no_balance_behind_it_breaks_the_invariants() {
        let mut ex = with_a_resting_buy();
        assert_eq!(ex.verify_invariants(), Ok(()));
        // What a crafted snapshot can say: the account's balances end before the quote
        // asset its order holds, and the supply no longer counts that balance.
        let i = ex.account_idx(7).expect("account 7") as usize;
        let quote = ex.accounts[i].balances.pop().expect("the quote balance");
        ex.supply[2] -= quote.available + quote.held;
        let err = ex.verify_invariants().unwrap_err();
        assert!(err.contains("no balance"), "{err}");
    }

    /// [`with_a_resting_buy`] plus two resting buys of account 7 with client ids 77 and
    /// 78; returns the exchange, the account's index and the slot and id of order 77.
    fn with_client_ids() -> (Exchange, usize, u32, OrderId) {
        let mut ex = with_a_resting_buy();
        let with_cid = |cid, price| match buy(7, 1, price, 1) {
            Command::Place(p) => Command::Place(PlaceOrder {
                client_order_id: cid,
                ..p
            }),
            _ => unreachable!(),
        };
        apply_all(&mut ex, &[with_cid(77, 91), with_cid(78, 92)]);
        assert_eq!(ex.verify_invariants(), Ok(()));
        let i = ex.account_idx(7).unwrap() as usize;
        let slot = ex.accounts[i].open_orders.find_client(77).expect("indexed");
        let (id, _) = ex.accounts[i].open_orders.get(slot).unwrap();
        (ex, i, slot, id)
    }

    #[test]
    fn a_client_id_index_that_misses_an_order_or_lists_another_breaks_the_invariants() {
        // The order's slot says 79, but the index lists it under 77.
        let (mut ex, i, slot, _) = with_client_ids();
        ex.accounts[i].open_orders.slots[slot as usize].client_order_id = 79;
        let err = ex.verify_invariants().unwrap_err();
        assert!(err.contains("client id index"), "{err}");
        // The index forgets 77.
        let (mut ex, i, slot, _) = with_client_ids();
        assert!(ex.accounts[i].open_orders.by_client.remove(77, slot));
        let err = ex.verify_invariants().unwrap_err();
        assert!(err.contains("client id index"), "{err}");
        // The index lists a slot a second time, under a client id no order has.
        let (mut ex, i, slot, _) = with_client_ids();
        ex.accounts[i].open_orders.by_client.insert(80, slot, 4);
        let err = ex.verify_invariants().unwrap_err();
        assert!(err.contains("client id index"), "{err}");
    }

    #[test]
    fn an_order_with_a_client_id_whose_slot_names_another_book_node_breaks_the_invariants() {
        let (mut ex, i, slot, id) = with_client_ids();
        let book = &ex.markets[1].as_ref().unwrap().book;
        let other = book
            .find_handle(id - 1)
            .expect("the order without a client id rests");
        ex.accounts[i].open_orders.set_handle(slot, other);
        let err = ex.verify_invariants().unwrap_err();
        assert!(err.contains("book handle"), "{err}");
    }

    #[test]
    fn an_order_whose_client_id_flag_disagrees_with_its_slot_breaks_the_invariants() {
        let (mut ex, _, _, id) = with_client_ids();
        let book = &mut ex.markets[1].as_mut().unwrap().book;
        book.data_mut(id).unwrap().has_client_id = false;
        let err = ex.verify_invariants().unwrap_err();
        assert!(err.contains("client id flag"), "{err}");
    }
}

#[cfg(test)]
mod layout_tests {
    use super::*;

    fn bal(available: Amount) -> Balance {
        Balance { available, held: 0 }
    }

    #[test]
    fn balances_keep_their_values_and_order_as_they_grow_past_the_inline_ones_and_shrink_back() {
        let mut b = Balances::new();
        assert!(b.is_empty());
        for i in 0..INLINE_BALANCES as Amount {
            b.push(bal(i + 1));
        }
        b.grow_to(INLINE_BALANCES + 3);
        b[INLINE_BALANCES + 2].available = 99;
        b[0].available = 50;
        let want: Vec<Amount> = [50]
            .into_iter()
            .chain(2..=INLINE_BALANCES as Amount)
            .chain([0, 0, 99])
            .collect();
        assert_eq!(b.iter().map(|x| x.available).collect::<Vec<_>>(), want);
        // Growing to a shorter length changes nothing.
        b.grow_to(2);
        assert_eq!(b.len(), INLINE_BALANCES + 3);
        while b.len() > 2 {
            b.pop();
        }
        assert_eq!(b.iter().map(|x| x.available).collect::<Vec<_>>(), [50, 2]);
        // What was popped reads as zero when the balance is grown again.
        b.grow_to(INLINE_BALANCES + 1);
        assert!(b[2..].iter().all(|x| *x == Balance::default()));
        assert_eq!(Balances::from(b.to_vec()), b);
    }

    #[test]
    fn an_account_with_one_open_order_holds_one_slot_and_no_client_id_table() {
        let mut o = OpenOrders::new();
        o.insert(1, 7, 0);
        assert_eq!(o.heap_bytes(), std::mem::size_of::<OpenSlot>());
        // The first client id brings a table of one cache line.
        o.insert(2, 7, 5);
        assert_eq!(o.find_client(5), Some(1));
        assert!(o.heap_bytes() <= 4 * std::mem::size_of::<OpenSlot>() + 64);
    }

    #[test]
    fn open_orders_count_per_market_across_several_markets_in_any_order() {
        let mut o = OpenOrders::new();
        let a = o.insert(1, 7, 0);
        let b = o.insert(2, 3, 0);
        let c = o.insert(3, 7, 0);
        let d = o.insert(4, 5, 0);
        assert_eq!((o.count_in(7), o.count_in(3), o.count_in(5)), (2, 1, 1));
        assert!(o.counts_agree());
        o.remove(a, 1);
        o.remove(c, 3);
        assert_eq!((o.count_in(7), o.count_in(3), o.count_in(5)), (0, 1, 1));
        assert!(o.counts_agree());
        // A market seen before and a new one after the first market emptied.
        let e = o.insert(5, 3, 0);
        let f = o.insert(6, 9, 0);
        assert_eq!((o.count_in(3), o.count_in(9), o.count_in(7)), (2, 1, 0));
        assert!(o.counts_agree());
        for (slot, id) in [(b, 2), (d, 4), (e, 5), (f, 6)] {
            o.remove(slot, id);
            assert!(o.counts_agree());
        }
        assert!(o.is_empty());
        assert_eq!((o.count_in(3), o.count_in(5), o.count_in(9)), (0, 0, 0));
    }
}
