//! The order book: price levels with FIFO queues, usable on its own without accounts.
//!
//! Layout:
//! - Levels live in a slab per side (`Vec<Level>` with a free list), so a level's handle
//!   is stable while it exists. An ordered index (`BTreeMap<key, handle>`) keeps them in
//!   price order for the "next best" and depth queries, and the best level's handle is
//!   cached. Creating or emptying a level is O(log levels); everything else is O(1).
//!   (A sorted `Vec` of levels was measured first: on exchange-core's load, where moves of
//!   old orders deep in the book create and empty levels constantly, shifting hundreds of
//!   levels per change cost 45% of the time.)
//! - Orders live in a slab (`Vec<Node<T>>` with a free list) and form an intrusive doubly
//!   linked FIFO per level. Each order knows its level's handle, so cancel by id is one
//!   index lookup and a few pointer updates. The id index ([`IdIndex`]) works in a table
//!   sized to the orders it holds, so its cost does not grow with what was reserved.
//! - [`OrderBook::with_capacity`] writes the whole order slab and index when called
//!   (their page faults are taken there) and threads the reserved nodes onto the free
//!   list, so the hot path neither grows a vector nor touches a fresh page.
//! - Each side caches its best level's handle and price: whether an incoming order
//!   crosses is decided without touching the level.
//! - `T` is the caller's per-order payload (the exchange keeps account and hold data there).
//!
//! Matching is one generic loop, [`OrderBook::submit`], reporting fills, self-trade
//! cancels and level changes to a [`MatchSink`] so the exchange layer can settle funds
//! inline while the book stays ignorant of accounts.

use crate::id_index::IdIndex;
use crate::price_index::PriceIndex;
use crate::types::*;

const NIL: u32 = u32::MAX;

/// A resting order.
#[derive(Clone, Copy, Debug)]
pub struct Node<T> {
    pub id: OrderId,
    pub side: Side,
    pub price: Price,
    /// Remaining quantity.
    pub qty: Qty,
    /// Who owns the order, for self-trade prevention.
    pub owner: u32,
    pub data: T,
    prev: u32,
    next: u32,
    /// Handle of the order's level in its side's level slab.
    level: u32,
}

#[derive(Clone, Copy, Debug)]
struct Level {
    price: Price,
    total: Qty,
    count: u32,
    head: u32,
    tail: u32,
}

/// One side of the book.
#[derive(Clone, Debug, Default)]
struct Ladder {
    /// Level slab; free slots are listed in `free`.
    levels: Vec<Level>,
    free: Vec<u32>,
    /// Live levels by `key`: the best level has the highest.
    by_key: PriceIndex,
    /// Handle of the best level, or NIL when the side is empty.
    best: u32,
    /// The best level's price (meaningless when `best` is NIL).
    best_price: Price,
}

/// Sort key that makes "better" mean "greater" on both sides.
fn key(side: Side, price: Price) -> i64 {
    match side {
        Side::Buy => price,
        Side::Sell => -price,
    }
}

impl Ladder {
    fn new() -> Ladder {
        Ladder {
            best: NIL,
            ..Ladder::default()
        }
    }

    fn find(&self, side: Side, price: Price) -> Option<u32> {
        if self.best != NIL && self.best_price == price {
            return Some(self.best);
        }
        self.by_key.get(key(side, price))
    }

    fn best_level(&self) -> Option<&Level> {
        (self.best != NIL).then(|| &self.levels[self.best as usize])
    }

    fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Levels from best to worst.
    fn iter_best_first(&self) -> impl Iterator<Item = &Level> + '_ {
        self.by_key
            .iter_desc()
            .map(|(_, h)| &self.levels[h as usize])
    }

    /// The level at `price`, created empty if missing.
    fn find_or_create(&mut self, side: Side, price: Price) -> u32 {
        if let Some(h) = self.find(side, price) {
            return h;
        }
        let level = Level {
            price,
            total: 0,
            count: 0,
            head: NIL,
            tail: NIL,
        };
        let h = match self.free.pop() {
            Some(h) => {
                self.levels[h as usize] = level;
                h
            }
            None => {
                assert!(self.levels.len() < NIL as usize, "level slab full");
                self.levels.push(level);
                (self.levels.len() - 1) as u32
            }
        };
        let k = key(side, price);
        self.by_key.insert(k, h);
        if self.best == NIL || k > key(side, self.best_price) {
            self.best = h;
            self.best_price = price;
        }
        h
    }

    /// Drops an empty level.
    fn remove_level(&mut self, side: Side, h: u32) {
        let level = self.levels[h as usize];
        assert!(level.count == 0 && level.total == 0 && level.head == NIL);
        let removed = self.by_key.remove(key(side, level.price));
        assert_eq!(removed, h);
        self.free.push(h);
        if self.best == h {
            self.best = self.by_key.max().map_or(NIL, |(_, b)| b);
            if self.best != NIL {
                self.best_price = self.levels[self.best as usize].price;
            }
        }
    }
}

/// Why matching stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatchEnd {
    /// Nothing left to fill.
    Filled,
    /// The opposite side is empty or no longer crosses the limit.
    NoLiquidity,
    /// The sink could not afford a single lot at the next price (budget orders).
    Unaffordable,
    /// Self-trade prevention cancelled the incoming order's remainder.
    SelfTrade,
}

/// What happened to an incoming order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Fully filled.
    Filled,
    /// The remainder rests on the book.
    Rested { remaining: Qty },
    /// The remainder was cancelled.
    Cancelled {
        remaining: Qty,
        end: MatchEnd,
        fok: bool,
    },
    /// A post-only order that would have taken; nothing changed.
    PostOnlyWouldTake,
}

/// An order entering the book.
#[derive(Clone, Copy, Debug)]
pub struct Incoming {
    pub id: OrderId,
    pub side: Side,
    /// Worst acceptable price. Market orders use [`Incoming::market_limit`].
    pub limit: Price,
    pub qty: Qty,
    pub owner: u32,
    pub stp: StpMode,
    pub tif: TimeInForce,
}

impl Incoming {
    /// The limit that makes an order cross every level: a market order.
    pub fn market_limit(side: Side) -> Price {
        match side {
            Side::Buy => Price::MAX,
            Side::Sell => Price::MIN,
        }
    }
}

/// Receives what matching does, in order. The exchange settles funds here.
pub trait MatchSink<T> {
    /// How many lots the incoming order may take at `price` (at most `want`). Budget
    /// orders cap it; everything else takes `want`.
    fn affordable(&mut self, price: Price, want: Qty) -> Qty {
        let _ = price;
        want
    }
    /// A fill of `qty` at `price`. `maker.qty` is already the maker's remaining quantity;
    /// the maker is removed from the book right after this call if it is zero.
    fn trade(&mut self, maker: &mut Node<T>, price: Price, qty: Qty, taker_remaining: Qty);
    /// Self-trade prevention removed this resting order (before the level update).
    fn maker_cancelled(&mut self, maker: &Node<T>);
    /// A level's new total after any change (zero: the level is gone).
    fn level(&mut self, side: Side, price: Price, total: Qty);
}

/// A sink for callers that only want the side effects on the book.
pub struct NullSink;

impl<T> MatchSink<T> for NullSink {
    fn trade(&mut self, _: &mut Node<T>, _: Price, _: Qty, _: Qty) {}
    fn maker_cancelled(&mut self, _: &Node<T>) {}
    fn level(&mut self, _: Side, _: Price, _: Qty) {}
}

/// Book events for the standalone book API ([`EventSink`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BookEvent {
    Trade {
        maker_id: OrderId,
        price: Price,
        qty: Qty,
        maker_remaining: Qty,
        taker_remaining: Qty,
    },
    SelfTradeCancel {
        maker_id: OrderId,
        remaining: Qty,
    },
    Level {
        side: Side,
        price: Price,
        total: Qty,
    },
}

/// Collects [`BookEvent`]s into a vector; `budget` (price x lots units) caps buys.
#[derive(Default)]
pub struct EventSink {
    pub events: Vec<BookEvent>,
    /// Remaining budget in price x lot units, for market buys by budget; `None` otherwise.
    pub budget: Option<u128>,
}

impl<T> MatchSink<T> for EventSink {
    fn affordable(&mut self, price: Price, want: Qty) -> Qty {
        match self.budget {
            None => want,
            Some(budget) => {
                assert!(price > 0);
                let lots = budget / price as u128;
                want.min(lots.min(u64::MAX as u128) as u64)
            }
        }
    }
    fn trade(&mut self, maker: &mut Node<T>, price: Price, qty: Qty, taker_remaining: Qty) {
        if let Some(budget) = self.budget.as_mut() {
            let cost = price as u128 * qty as u128;
            assert!(cost <= *budget);
            *budget -= cost;
        }
        self.events.push(BookEvent::Trade {
            maker_id: maker.id,
            price,
            qty,
            maker_remaining: maker.qty,
            taker_remaining,
        });
    }
    fn maker_cancelled(&mut self, maker: &Node<T>) {
        self.events.push(BookEvent::SelfTradeCancel {
            maker_id: maker.id,
            remaining: maker.qty,
        });
    }
    fn level(&mut self, side: Side, price: Price, total: Qty) {
        self.events.push(BookEvent::Level { side, price, total });
    }
}

/// A price-time priority order book. See the module docs for the layout.
#[derive(Clone, Debug)]
pub struct OrderBook<T> {
    bids: Ladder,
    asks: Ladder,
    nodes: Vec<Node<T>>,
    free_head: u32,
    index: IdIndex,
}

impl<T: Copy + Default> Default for OrderBook<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Copy + Default> OrderBook<T> {
    pub fn new() -> Self {
        Self::with_capacity(0)
    }

    /// Preallocates room for `orders` resting orders so the hot path does not allocate:
    /// the order slab is filled with free nodes (linked in slab order, so orders take
    /// slots in the same order as in a book that grew) and the id index is sized. Both
    /// are written here, so their page faults happen here; clones keep the reservation.
    pub fn with_capacity(orders: usize) -> Self {
        assert!(orders < NIL as usize, "order slab full");
        let mut nodes = Vec::with_capacity(orders);
        nodes.extend((0..orders as u32).map(|i| Node {
            id: 0,
            side: Side::Buy,
            price: 0,
            qty: 0,
            owner: 0,
            data: T::default(),
            prev: NIL,
            next: if i + 1 == orders as u32 { NIL } else { i + 1 },
            level: NIL,
        }));
        OrderBook {
            bids: Ladder::new(),
            asks: Ladder::new(),
            free_head: if orders == 0 { NIL } else { 0 },
            nodes,
            index: IdIndex::with_capacity(orders),
        }
    }

    /// Heap bytes held by the book: order slab, id index, level slabs and level indexes
    /// (ordered-map entries outside the bitmap window counted at their key and value).
    pub fn heap_bytes(&self) -> usize {
        let ladders: usize = [&self.bids, &self.asks]
            .iter()
            .map(|l| {
                l.levels.capacity() * std::mem::size_of::<Level>()
                    + l.free.capacity() * 4
                    + l.by_key.heap_bytes()
            })
            .sum();
        self.order_heap_bytes() + ladders
    }

    /// Heap bytes held per order rather than per level: the order slab and the id index.
    pub fn order_heap_bytes(&self) -> usize {
        self.nodes.capacity() * std::mem::size_of::<Node<T>>() + self.index.heap_bytes()
    }

    /// The slab handle of a resting order.
    fn handle(&self, id: OrderId) -> Option<u32> {
        let nodes = &self.nodes;
        self.index.get(id, |h| nodes[h as usize].id)
    }

    fn ladder(&self, side: Side) -> &Ladder {
        match side {
            Side::Buy => &self.bids,
            Side::Sell => &self.asks,
        }
    }

    fn ladder_mut(&mut self, side: Side) -> &mut Ladder {
        match side {
            Side::Buy => &mut self.bids,
            Side::Sell => &mut self.asks,
        }
    }

    // ---------------------------------------------------------------- queries

    pub fn order_count(&self) -> usize {
        self.index.len()
    }

    pub fn level_count(&self, side: Side) -> usize {
        self.ladder(side).len()
    }

    /// Best price and its total quantity.
    pub fn best(&self, side: Side) -> Option<(Price, Qty)> {
        self.ladder(side).best_level().map(|l| (l.price, l.total))
    }

    pub fn best_price(&self, side: Side) -> Option<Price> {
        let ladder = self.ladder(side);
        (ladder.best != NIL).then_some(ladder.best_price)
    }

    /// Aggregated quantity resting at `price` on `side` (zero if none).
    pub fn qty_at(&self, side: Side, price: Price) -> Qty {
        let ladder = self.ladder(side);
        ladder
            .find(side, price)
            .map_or(0, |h| ladder.levels[h as usize].total)
    }

    /// The best `n` levels of `side`, best first, into `out` (cleared first).
    pub fn depth_into(&self, side: Side, n: usize, out: &mut Vec<(Price, Qty)>) {
        out.clear();
        let ladder = self.ladder(side);
        out.extend(ladder.iter_best_first().take(n).map(|l| (l.price, l.total)));
    }

    pub fn depth(&self, side: Side, n: usize) -> Vec<(Price, Qty)> {
        let mut out = Vec::with_capacity(n.min(self.level_count(side)));
        self.depth_into(side, n, &mut out);
        out
    }

    pub fn contains(&self, id: OrderId) -> bool {
        self.handle(id).is_some()
    }

    pub fn get(&self, id: OrderId) -> Option<&Node<T>> {
        self.handle(id).map(|h| &self.nodes[h as usize])
    }

    pub fn data_mut(&mut self, id: OrderId) -> Option<&mut T> {
        let h = self.handle(id)?;
        Some(&mut self.nodes[h as usize].data)
    }

    /// Whether an order on `side` with this `limit` would take liquidity on entry.
    pub fn would_take(&self, side: Side, limit: Price) -> bool {
        match self.best_price(side.opposite()) {
            None => false,
            Some(best) => crosses(side, limit, best),
        }
    }

    /// Visits every resting order: bids best to worst, then asks best to worst, each
    /// level in time priority. Deterministic; used by snapshots and mass cancels.
    pub fn for_each_order(&self, mut f: impl FnMut(&Node<T>)) {
        for side in [Side::Buy, Side::Sell] {
            for level in self.ladder(side).iter_best_first() {
                let mut h = level.head;
                let mut seen = 0u32;
                while h != NIL {
                    assert!(seen < level.count);
                    let node = &self.nodes[h as usize];
                    f(node);
                    h = node.next;
                    seen += 1;
                }
                assert_eq!(seen, level.count);
            }
        }
    }

    /// Whether the book is crossed (best bid >= best ask): never true after a command.
    pub fn is_crossed(&self) -> bool {
        match (self.best_price(Side::Buy), self.best_price(Side::Sell)) {
            (Some(bid), Some(ask)) => bid >= ask,
            _ => false,
        }
    }

    /// Checks every structural invariant; panics on the first violation.
    pub fn check_invariants(&self) {
        assert!(!self.is_crossed(), "book crossed");
        let mut orders = 0usize;
        for side in [Side::Buy, Side::Sell] {
            let ladder = self.ladder(side);
            assert_eq!(ladder.by_key.len() + ladder.free.len(), ladder.levels.len());
            ladder.by_key.check();
            let best = ladder.by_key.max().map_or(NIL, |(_, h)| h);
            assert_eq!(ladder.best, best, "cached best level");
            if best != NIL {
                assert_eq!(ladder.best_price, ladder.levels[best as usize].price);
            }
            for (k, lh) in ladder.by_key.iter_desc() {
                let level = &ladder.levels[lh as usize];
                assert_eq!(key(side, level.price), k);
                assert!(level.count > 0 && level.total > 0);
                let (mut total, mut count, mut h, mut prev) = (0u64, 0u32, level.head, NIL);
                while h != NIL {
                    let node = &self.nodes[h as usize];
                    assert_eq!(node.prev, prev);
                    assert_eq!(node.price, level.price);
                    assert_eq!(node.side, side);
                    assert_eq!(node.level, lh);
                    assert!(node.qty > 0);
                    assert_eq!(self.handle(node.id), Some(h));
                    total += node.qty;
                    count += 1;
                    prev = h;
                    h = node.next;
                }
                assert_eq!(prev, level.tail);
                assert_eq!((total, count), (level.total, level.count));
                orders += count as usize;
            }
        }
        assert_eq!(orders, self.index.len());
        self.index.check();
        // Every free node is marked free: no level.
        let (mut h, mut free) = (self.free_head, 0usize);
        while h != NIL {
            assert!(free < self.nodes.len(), "free list cycles");
            assert_eq!(self.nodes[h as usize].level, NIL, "free node with a level");
            free += 1;
            h = self.nodes[h as usize].next;
        }
        assert_eq!(orders + free, self.nodes.len());
    }

    // ---------------------------------------------------------------- mutations

    fn alloc(&mut self, node: Node<T>) -> u32 {
        if self.free_head != NIL {
            let h = self.free_head;
            self.free_head = self.nodes[h as usize].next;
            self.nodes[h as usize] = node;
            h
        } else {
            assert!(self.nodes.len() < NIL as usize, "order slab full");
            self.nodes.push(node);
            (self.nodes.len() - 1) as u32
        }
    }

    /// Appends a resting order at the back of its level, without matching. Returns the
    /// level's new total. The id must not be resting already.
    pub fn insert(
        &mut self,
        id: OrderId,
        side: Side,
        price: Price,
        qty: Qty,
        owner: u32,
        data: T,
    ) -> Qty {
        assert!(qty > 0, "resting quantity must be positive");
        assert!(!self.contains(id), "order id already resting");
        let h = self.alloc(Node {
            id,
            side,
            price,
            qty,
            owner,
            data,
            prev: NIL,
            next: NIL,
            level: NIL,
        });
        self.index.insert(id, h);
        let ladder = self.ladder_mut(side);
        let lh = ladder.find_or_create(side, price);
        let level = &mut ladder.levels[lh as usize];
        let tail = level.tail;
        level.tail = h;
        if tail == NIL {
            level.head = h;
        }
        level.total += qty;
        level.count += 1;
        let total = level.total;
        self.nodes[h as usize].prev = tail;
        self.nodes[h as usize].level = lh;
        if tail != NIL {
            self.nodes[tail as usize].next = h;
        }
        total
    }

    /// Unlinks slab entry `h` from its level and the id index and frees it. Returns the
    /// node and the level's new total.
    fn unlink(&mut self, h: u32) -> (Node<T>, Qty) {
        let id = self.nodes[h as usize].id;
        let nodes = &self.nodes;
        let removed = self.index.remove(id, |x| nodes[x as usize].id);
        assert_eq!(removed, Some(h));
        self.unlink_unindexed(h)
    }

    /// [`Self::unlink`] for an order already removed from the id index.
    fn unlink_unindexed(&mut self, h: u32) -> (Node<T>, Qty) {
        let node = self.nodes[h as usize];
        if node.prev != NIL {
            self.nodes[node.prev as usize].next = node.next;
        }
        if node.next != NIL {
            self.nodes[node.next as usize].prev = node.prev;
        }
        let ladder = self.ladder_mut(node.side);
        let level = &mut ladder.levels[node.level as usize];
        assert_eq!(level.price, node.price);
        if level.head == h {
            level.head = node.next;
        }
        if level.tail == h {
            level.tail = node.prev;
        }
        assert!(level.total >= node.qty && level.count > 0);
        level.total -= node.qty;
        level.count -= 1;
        let total = level.total;
        if level.count == 0 {
            assert_eq!(total, 0);
            ladder.remove_level(node.side, node.level);
        }
        // A free node has no level: what tells a stale handle from a resting order.
        self.nodes[h as usize].level = NIL;
        self.nodes[h as usize].next = self.free_head;
        self.free_head = h;
        (node, total)
    }

    /// Removes a resting order. Returns it and its level's new total.
    pub fn remove(&mut self, id: OrderId) -> Option<(Node<T>, Qty)> {
        let nodes = &self.nodes;
        let h = self.index.remove(id, |x| nodes[x as usize].id)?;
        Some(self.unlink_unindexed(h))
    }

    /// [`Self::remove`] for the order at handle `h` (from [`Self::find_handle`]): its
    /// unlinking does not wait on the id index's answer.
    pub(crate) fn remove_at(&mut self, h: u32) -> (Node<T>, Qty) {
        self.unlink(h)
    }

    /// Lowers a resting order's quantity in place, keeping its time priority. Returns the
    /// level's new total. `qty` must be positive and below the current quantity.
    pub fn reduce(&mut self, id: OrderId, qty: Qty) -> Option<Qty> {
        let h = self.handle(id)?;
        Some(self.reduce_at(h, qty))
    }

    /// The slab handle of resting order `id`: valid until the book next changes, for
    /// [`Self::at`], [`Self::data_at_mut`] and [`Self::reduce_at`] without a second
    /// id lookup.
    pub(crate) fn find_handle(&self, id: OrderId) -> Option<u32> {
        self.handle(id)
    }

    /// The resting order at handle `h` (from [`Self::find_handle`]).
    pub(crate) fn at(&self, h: u32) -> &Node<T> {
        &self.nodes[h as usize]
    }

    /// The resting order at handle `h`, if one rests there (a free node has no level).
    pub(crate) fn resting_at(&self, h: u32) -> Option<&Node<T>> {
        self.nodes.get(h as usize).filter(|n| n.level != NIL)
    }

    /// The data of the resting order at handle `h` (from [`Self::find_handle`]).
    pub(crate) fn data_at_mut(&mut self, h: u32) -> &mut T {
        &mut self.nodes[h as usize].data
    }

    /// [`Self::reduce`] for the order at handle `h` (from [`Self::find_handle`]).
    pub(crate) fn reduce_at(&mut self, h: u32, qty: Qty) -> Qty {
        let node = &mut self.nodes[h as usize];
        assert!(qty > 0 && qty < node.qty, "reduce must lower the quantity");
        let delta = node.qty - qty;
        node.qty = qty;
        let (side, lh) = (node.side, node.level);
        let level = &mut self.ladder_mut(side).levels[lh as usize];
        level.total -= delta;
        level.total
    }

    /// Whether `qty` of an incoming order could fill entirely right now (fill-or-kill),
    /// honouring the order's limit and self-trade prevention.
    pub fn fillable(&self, order: &Incoming) -> bool {
        let opposite = order.side.opposite();
        let mut need = order.qty;
        for level in self.ladder(opposite).iter_best_first() {
            if !crosses(order.side, order.limit, level.price) {
                return false;
            }
            if order.stp == StpMode::None {
                if level.total >= need {
                    return true;
                }
                need -= level.total;
                continue;
            }
            let mut h = level.head;
            while h != NIL {
                let node = &self.nodes[h as usize];
                if node.owner != order.owner {
                    if node.qty >= need {
                        return true;
                    }
                    need -= node.qty;
                } else if order.stp != StpMode::CancelOldest {
                    // The incoming remainder would be cancelled here.
                    return false;
                }
                h = node.next;
            }
        }
        false
    }

    /// Matches an incoming order against the opposite side, in price-time priority, until
    /// it is filled, stops crossing, cannot afford more, or meets itself.
    pub fn match_incoming<S: MatchSink<T>>(
        &mut self,
        order: &Incoming,
        sink: &mut S,
    ) -> (Qty, MatchEnd) {
        let opposite = order.side.opposite();
        let mut remaining = order.qty;
        // Each pass removes a resting order, or returns, or fills part of one without
        // removing it. The last happens only on the last resting order this order
        // reaches: when its remaining quantity ends first (the next pass returns), or
        // when a budget buy's budget does. A budget leaves at most two such fills: the
        // lot cap is computed with the exact fee, each fill charges the fee rounded down,
        // and the rounding saved can buy one lot more, never two (engine/README.md).
        let passes_max = self.index.len() + 4;
        for _ in 0..passes_max {
            if remaining == 0 {
                return (0, MatchEnd::Filled);
            }
            let ladder = self.ladder(opposite);
            let price = ladder.best_price;
            if ladder.best == NIL || !crosses(order.side, order.limit, price) {
                return (remaining, MatchEnd::NoLiquidity);
            }
            let h = ladder.levels[ladder.best as usize].head;
            let maker = self.nodes[h as usize];
            if maker.owner == order.owner && order.stp != StpMode::None {
                if order.stp == StpMode::CancelNewest {
                    return (remaining, MatchEnd::SelfTrade);
                }
                sink.maker_cancelled(&maker);
                let (_, total) = self.unlink(h);
                sink.level(opposite, price, total);
                if order.stp == StpMode::CancelBoth {
                    return (remaining, MatchEnd::SelfTrade);
                }
                continue;
            }
            let can = sink.affordable(price, remaining);
            assert!(can <= remaining);
            if can == 0 {
                return (remaining, MatchEnd::Unaffordable);
            }
            let qty = can.min(maker.qty);
            remaining -= qty;
            let node = &mut self.nodes[h as usize];
            node.qty -= qty;
            let maker_done = node.qty == 0;
            sink.trade(node, price, qty, remaining);
            let lh = node.level;
            let level = &mut self.ladder_mut(opposite).levels[lh as usize];
            level.total -= qty;
            let mut total = level.total;
            if maker_done {
                // The maker's quantity is already zero: unlinking subtracts nothing more.
                total = self.unlink(h).1;
            }
            sink.level(opposite, price, total);
        }
        unreachable!("matching loop exceeded its bound");
    }

    /// Submits an order: checks post-only and fill-or-kill, matches, then rests the
    /// remainder (GTC, post-only) or cancels it (IOC, FOK, market, self-trade).
    pub fn submit<S: MatchSink<T>>(&mut self, order: &Incoming, data: T, sink: &mut S) -> Outcome {
        assert!(order.qty > 0);
        if order.tif == TimeInForce::PostOnly && self.would_take(order.side, order.limit) {
            return Outcome::PostOnlyWouldTake;
        }
        if order.tif == TimeInForce::Fok && !self.fillable(order) {
            return Outcome::Cancelled {
                remaining: order.qty,
                end: MatchEnd::NoLiquidity,
                fok: true,
            };
        }
        let (remaining, end) = self.match_incoming(order, sink);
        if remaining == 0 {
            return Outcome::Filled;
        }
        if end != MatchEnd::SelfTrade && order.tif.rests() {
            assert!(!self.would_take(order.side, order.limit));
            let total = self.insert(
                order.id,
                order.side,
                order.limit,
                remaining,
                order.owner,
                data,
            );
            sink.level(order.side, order.limit, total);
            return Outcome::Rested { remaining };
        }
        assert!(
            order.tif != TimeInForce::Fok,
            "a checked FOK fills entirely"
        );
        Outcome::Cancelled {
            remaining,
            end,
            fok: false,
        }
    }
}

/// Whether an order on `side` limited at `limit` trades against a level at `price`.
pub fn crosses(side: Side, limit: Price, price: Price) -> bool {
    match side {
        Side::Buy => price <= limit,
        Side::Sell => price >= limit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Book = OrderBook<()>;

    fn gtc(id: OrderId, side: Side, price: Price, qty: Qty) -> Incoming {
        Incoming {
            id,
            side,
            limit: price,
            qty,
            owner: id as u32,
            stp: StpMode::None,
            tif: TimeInForce::Gtc,
        }
    }

    fn with_tif(mut o: Incoming, tif: TimeInForce) -> Incoming {
        o.tif = tif;
        o
    }

    fn submit(book: &mut Book, o: Incoming) -> (Outcome, Vec<BookEvent>) {
        let mut sink = EventSink::default();
        let out = book.submit(&o, (), &mut sink);
        book.check_invariants();
        (out, sink.events)
    }

    fn trades(events: &[BookEvent]) -> Vec<(OrderId, Price, Qty)> {
        events
            .iter()
            .filter_map(|e| match e {
                BookEvent::Trade {
                    maker_id,
                    price,
                    qty,
                    ..
                } => Some((*maker_id, *price, *qty)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn resting_orders_fill_in_price_then_time_priority() {
        let mut b = Book::new();
        submit(&mut b, gtc(1, Side::Sell, 101, 5));
        submit(&mut b, gtc(2, Side::Sell, 100, 5));
        submit(&mut b, gtc(3, Side::Sell, 100, 5));
        let (out, ev) = submit(&mut b, gtc(4, Side::Buy, 101, 12));
        assert_eq!(out, Outcome::Filled);
        assert_eq!(trades(&ev), vec![(2, 100, 5), (3, 100, 5), (1, 101, 2)]);
        assert_eq!(b.best(Side::Sell), Some((101, 3)));
    }

    #[test]
    fn fill_price_is_the_resting_orders_price() {
        let mut b = Book::new();
        submit(&mut b, gtc(1, Side::Buy, 105, 3));
        let (_, ev) = submit(&mut b, gtc(2, Side::Sell, 90, 3));
        assert_eq!(trades(&ev), vec![(1, 105, 3)]);
    }

    #[test]
    fn gtc_remainder_rests_at_its_limit() {
        let mut b = Book::new();
        submit(&mut b, gtc(1, Side::Sell, 100, 2));
        let (out, ev) = submit(&mut b, gtc(2, Side::Buy, 100, 5));
        assert_eq!(out, Outcome::Rested { remaining: 3 });
        assert_eq!(
            ev.last(),
            Some(&BookEvent::Level {
                side: Side::Buy,
                price: 100,
                total: 3
            })
        );
        assert_eq!(b.best(Side::Buy), Some((100, 3)));
        assert_eq!(b.best(Side::Sell), None);
    }

    #[test]
    fn ioc_remainder_is_cancelled_and_reported() {
        let mut b = Book::new();
        submit(&mut b, gtc(1, Side::Sell, 100, 2));
        let (out, _) = submit(
            &mut b,
            with_tif(gtc(2, Side::Buy, 100, 5), TimeInForce::Ioc),
        );
        assert_eq!(
            out,
            Outcome::Cancelled {
                remaining: 3,
                end: MatchEnd::NoLiquidity,
                fok: false
            }
        );
        assert_eq!(b.order_count(), 0);
    }

    #[test]
    fn fok_fills_entirely_or_not_at_all() {
        let mut b = Book::new();
        submit(&mut b, gtc(1, Side::Sell, 100, 2));
        submit(&mut b, gtc(2, Side::Sell, 101, 2));
        let (out, ev) = submit(
            &mut b,
            with_tif(gtc(3, Side::Buy, 101, 5), TimeInForce::Fok),
        );
        assert!(matches!(
            out,
            Outcome::Cancelled {
                fok: true,
                remaining: 5,
                ..
            }
        ));
        assert!(ev.is_empty());
        assert_eq!(b.order_count(), 2);
        let (out, _) = submit(
            &mut b,
            with_tif(gtc(4, Side::Buy, 101, 4), TimeInForce::Fok),
        );
        assert_eq!(out, Outcome::Filled);
        assert_eq!(b.order_count(), 0);
    }

    #[test]
    fn fok_respects_its_limit_price() {
        let mut b = Book::new();
        submit(&mut b, gtc(1, Side::Sell, 100, 2));
        submit(&mut b, gtc(2, Side::Sell, 102, 5));
        let (out, _) = submit(
            &mut b,
            with_tif(gtc(3, Side::Buy, 101, 3), TimeInForce::Fok),
        );
        assert!(matches!(out, Outcome::Cancelled { fok: true, .. }));
    }

    #[test]
    fn post_only_that_would_take_is_rejected_without_change() {
        let mut b = Book::new();
        submit(&mut b, gtc(1, Side::Sell, 100, 2));
        let po = with_tif(gtc(2, Side::Buy, 100, 1), TimeInForce::PostOnly);
        assert_eq!(submit(&mut b, po).0, Outcome::PostOnlyWouldTake);
        let po = with_tif(gtc(3, Side::Buy, 99, 1), TimeInForce::PostOnly);
        assert_eq!(submit(&mut b, po).0, Outcome::Rested { remaining: 1 });
    }

    #[test]
    fn market_order_sweeps_levels_and_cancels_the_rest() {
        let mut b = Book::new();
        submit(&mut b, gtc(1, Side::Buy, 100, 2));
        submit(&mut b, gtc(2, Side::Buy, 90, 2));
        let mut m = with_tif(gtc(3, Side::Sell, 0, 10), TimeInForce::Ioc);
        m.limit = Incoming::market_limit(Side::Sell);
        let (out, ev) = submit(&mut b, m);
        assert_eq!(trades(&ev), vec![(1, 100, 2), (2, 90, 2)]);
        assert!(matches!(out, Outcome::Cancelled { remaining: 6, .. }));
    }

    #[test]
    fn market_buy_by_budget_stops_when_the_next_lot_is_unaffordable() {
        let mut b = Book::new();
        submit(&mut b, gtc(1, Side::Sell, 10, 3));
        submit(&mut b, gtc(2, Side::Sell, 20, 3));
        let mut m = with_tif(gtc(3, Side::Buy, 0, Qty::MAX), TimeInForce::Ioc);
        m.limit = Incoming::market_limit(Side::Buy);
        let mut sink = EventSink {
            budget: Some(75),
            ..Default::default()
        };
        let out = b.submit(&m, (), &mut sink);
        // 3 lots at 10 = 30, then 2 lots at 20 = 40; 5 left cannot buy a lot at 20.
        assert_eq!(trades(&sink.events), vec![(1, 10, 3), (2, 20, 2)]);
        assert_eq!(sink.budget, Some(5));
        assert!(matches!(
            out,
            Outcome::Cancelled {
                end: MatchEnd::Unaffordable,
                ..
            }
        ));
    }

    #[test]
    fn a_handle_names_a_resting_order_only_while_it_rests() {
        let mut b = Book::new();
        submit(&mut b, gtc(1, Side::Buy, 50, 1));
        let h = b.find_handle(1).expect("rests");
        assert_eq!(b.resting_at(h).map(|n| n.id), Some(1));
        b.remove(1);
        // The freed node still holds id 1, but no order rests there.
        assert!(b.resting_at(h).is_none());
        assert!(b.resting_at(h + 1).is_none());
        submit(&mut b, gtc(2, Side::Sell, 60, 1));
        assert_eq!(b.resting_at(h).map(|n| n.id), Some(2));
    }

    #[test]
    fn cancel_by_id_removes_from_the_middle_of_a_queue() {
        let mut b = Book::new();
        for id in 1..=3 {
            submit(&mut b, gtc(id, Side::Buy, 50, id));
        }
        let (node, total) = b.remove(2).unwrap();
        assert_eq!((node.qty, total), (2, 4));
        b.check_invariants();
        assert!(b.remove(2).is_none());
        let (_, ev) = submit(&mut b, gtc(9, Side::Sell, 50, 4));
        assert_eq!(trades(&ev), vec![(1, 50, 1), (3, 50, 3)]);
    }

    #[test]
    fn reduce_keeps_time_priority() {
        let mut b = Book::new();
        submit(&mut b, gtc(1, Side::Sell, 100, 5));
        submit(&mut b, gtc(2, Side::Sell, 100, 5));
        assert_eq!(b.reduce(1, 2), Some(7));
        b.check_invariants();
        let (_, ev) = submit(&mut b, gtc(3, Side::Buy, 100, 3));
        assert_eq!(trades(&ev), vec![(1, 100, 2), (2, 100, 1)]);
    }

    #[test]
    fn self_trade_cancel_newest_keeps_the_resting_order() {
        let mut b = Book::new();
        let mut rest = gtc(1, Side::Sell, 100, 5);
        rest.owner = 7;
        submit(&mut b, rest);
        let mut take = gtc(2, Side::Buy, 100, 3);
        take.owner = 7;
        take.stp = StpMode::CancelNewest;
        let (out, ev) = submit(&mut b, take);
        assert!(ev.is_empty());
        assert!(matches!(
            out,
            Outcome::Cancelled {
                end: MatchEnd::SelfTrade,
                remaining: 3,
                ..
            }
        ));
        assert_eq!(b.best(Side::Sell), Some((100, 5)));
    }

    #[test]
    fn self_trade_cancel_oldest_removes_resting_and_continues() {
        let mut b = Book::new();
        let mut own = gtc(1, Side::Sell, 100, 5);
        own.owner = 7;
        submit(&mut b, own);
        submit(&mut b, gtc(2, Side::Sell, 100, 5));
        let mut take = gtc(3, Side::Buy, 100, 3);
        take.owner = 7;
        take.stp = StpMode::CancelOldest;
        let (out, ev) = submit(&mut b, take);
        assert_eq!(out, Outcome::Filled);
        assert_eq!(
            ev[0],
            BookEvent::SelfTradeCancel {
                maker_id: 1,
                remaining: 5
            }
        );
        assert_eq!(trades(&ev), vec![(2, 100, 3)]);
    }

    #[test]
    fn self_trade_cancel_both_removes_both() {
        let mut b = Book::new();
        let mut own = gtc(1, Side::Sell, 100, 5);
        own.owner = 7;
        submit(&mut b, own);
        let mut take = gtc(2, Side::Buy, 100, 3);
        take.owner = 7;
        take.stp = StpMode::CancelBoth;
        let (out, _) = submit(&mut b, take);
        assert!(matches!(
            out,
            Outcome::Cancelled {
                end: MatchEnd::SelfTrade,
                ..
            }
        ));
        assert_eq!(b.order_count(), 0);
    }

    #[test]
    fn queries_report_best_depth_and_quantity_at_price() {
        let mut b = Book::new();
        for (id, p) in [(1, 97), (2, 99), (3, 98), (4, 99)] {
            submit(&mut b, gtc(id, Side::Buy, p, 10));
        }
        for (id, p) in [(5, 101), (6, 103)] {
            submit(&mut b, gtc(id, Side::Sell, p, 1));
        }
        assert_eq!(b.best(Side::Buy), Some((99, 20)));
        assert_eq!(b.best(Side::Sell), Some((101, 1)));
        assert_eq!(b.qty_at(Side::Buy, 98), 10);
        assert_eq!(b.qty_at(Side::Buy, 96), 0);
        assert_eq!(b.depth(Side::Buy, 2), vec![(99, 20), (98, 10)]);
        assert_eq!(b.depth(Side::Sell, 5), vec![(101, 1), (103, 1)]);
    }

    #[test]
    fn a_reserved_book_and_its_clones_take_orders_without_growing() {
        let reserved = Book::with_capacity(1000);
        let mut clone = reserved.clone();
        assert_eq!(clone.heap_bytes(), reserved.heap_bytes());
        for id in 1..=1000 {
            clone.insert(id, Side::Buy, 100 - (id % 50) as Price, 1, 0, ());
        }
        clone.check_invariants();
        assert_eq!(
            clone.order_heap_bytes(),
            reserved.order_heap_bytes(),
            "the order slab and id index did not grow"
        );
    }

    #[test]
    fn a_reserved_book_behaves_as_a_grown_one() {
        let mut grown = Book::new();
        let mut reserved = Book::with_capacity(64);
        for id in 1..=300u64 {
            let side = if id % 2 == 0 { Side::Buy } else { Side::Sell };
            let price = 100 + (id % 7) as Price - 3;
            let o = gtc(id, side, price, 1 + id % 5);
            assert_eq!(submit(&mut grown, o), submit(&mut reserved, o));
            if id % 3 == 0 {
                assert_eq!(
                    grown.remove(id - 1).map(|(n, t)| (n.qty, t)),
                    reserved.remove(id - 1).map(|(n, t)| (n.qty, t))
                );
            }
        }
        assert_eq!(grown.depth(Side::Buy, 100), reserved.depth(Side::Buy, 100));
        assert_eq!(
            grown.depth(Side::Sell, 100),
            reserved.depth(Side::Sell, 100)
        );
        assert_eq!(grown.order_count(), reserved.order_count());
    }

    #[test]
    fn level_lookup_works_beyond_the_scanned_window() {
        let mut b = Book::new();
        for i in 0..100 {
            b.insert(i + 1, Side::Sell, 1000 + i as Price * 2, 1, 0, ());
        }
        assert_eq!(b.qty_at(Side::Sell, 1100), 1);
        assert_eq!(b.qty_at(Side::Sell, 1101), 0);
        b.insert(500, Side::Sell, 1101, 4, 0, ());
        assert_eq!(b.qty_at(Side::Sell, 1101), 4);
        b.check_invariants();
        assert!(b.remove(500).is_some());
        b.check_invariants();
    }
}
