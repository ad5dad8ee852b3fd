//! The engine benchmark: book-only matching, the full exchange, and a naive
//! `BTreeMap<Price, VecDeque>` baseline, all over the same command stream.
//!
//! The load models exchange-core's published generator (`TestOrdersGenerator`): a
//! pre-filled book around a drifting last-trade price, then a steady mix of passive GTC
//! placements, IOCs priced at the band edge, cancels, and replaces that move old orders
//! toward the last trade price (some of which cross and trade).
//!
//! The stream is generated once, up front, by driving a real [`Exchange`] and recording
//! each command plus the equivalent book operation (the exchange assigns order ids, so
//! the generator reads them back). Timing then replays the recorded streams into fresh
//! clones of the pre-filled state, so generation is never timed.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hint::black_box;
use std::time::Instant;

use rand::{RngExt, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use ringex_engine::book::{Incoming, NullSink, OrderBook};
use ringex_engine::{
    AccountId, Command, Event, Exchange, MarketId, MarketSpec, OrderId, OrderKind, OrderRef,
    PlaceOrder, Price, Qty, RejectReason, Side, StpMode, Symbol, TimeInForce,
};
use rustc_hash::FxHashMap;

use super::{cpu_model, latency_histogram, median, LatencySummary};

/// The workload shapes of `ringex bench engine`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// exchange-core's generator: mostly moves of old orders (this module).
    Core,
    /// High cancel ratio, client ids reused, a deep static book, a flash crash
    /// ([`super::churn`]).
    Churn,
}

impl Shape {
    pub fn name(self) -> &'static str {
        match self {
            Shape::Core => "core",
            Shape::Churn => "churn",
        }
    }

    pub fn parse(s: &str) -> Option<Shape> {
        match s {
            "core" => Some(Shape::Core),
            "churn" => Some(Shape::Churn),
            _ => None,
        }
    }
}

/// Arguments of `ringex bench engine`.
#[derive(Clone, Debug)]
pub struct EngineBenchArgs {
    /// Timed commands per variant (after the pre-fill).
    pub commands: usize,
    /// Market counts to run, one variant each (1 = exchange-core's single pair).
    pub markets: Vec<usize>,
    /// Workload shapes to run; every shape runs every market count.
    pub shapes: Vec<Shape>,
    /// Throughput runs per variant; the median is reported.
    pub runs: usize,
    pub seed: u64,
    /// Instead of timing, write each variant's book operations to this directory (for
    /// `engine/examples/book_replay.rs`).
    pub dump_ops: Option<std::path::PathBuf>,
}

impl Default for EngineBenchArgs {
    fn default() -> Self {
        EngineBenchArgs {
            commands: 3_000_000,
            markets: vec![1, 1000],
            shapes: vec![Shape::Core, Shape::Churn],
            runs: 5,
            seed: 0x5eed_2024,
            dump_ops: None,
        }
    }
}

/// Orders reserved by the `with_capacity` book-only row, all markets together.
pub const RESERVED_ORDERS: usize = 1 << 20;

const ACCOUNTS: u32 = 1000;
const QUOTE_ASSET: u32 = 1;
/// Resting orders to pre-fill: exchange-core's single pair has 1,000; its multi-symbol
/// sets have about 100 per symbol.
const PREFILL_SINGLE: usize = 1000;
const PREFILL_PER_MARKET: usize = 100;
/// Moves and cancels pick among the oldest live orders (exchange-core: first 512).
const PICK_WINDOW: usize = 512;
/// Book size is re-checked every this many commands per market.
const CHECK_EVERY: u32 = 512;
/// Quote and base minor units per tick and per lot: big enough that fees are non-zero.
const TICK_SIZE: i64 = 1000;
const LOT_SIZE: i64 = 1000;

// ------------------------------------------------------------------------ stream

/// A book operation equivalent to one exchange command. `market` is the index (id - 1).
#[derive(Clone, Copy, Debug)]
pub enum BookOp {
    Place {
        market: u32,
        id: OrderId,
        side: Side,
        price: Price,
        qty: Qty,
        owner: u32,
        tif: TimeInForce,
    },
    Cancel {
        market: u32,
        id: OrderId,
    },
    /// Price change: remove, then submit again with the same id (loses priority).
    Move {
        market: u32,
        id: OrderId,
        price: Price,
        qty: Qty,
    },
    /// Pure quantity decrease: keeps priority.
    Reduce {
        market: u32,
        id: OrderId,
        qty: Qty,
    },
    /// The exchange rejected the command: nothing to do in a book.
    Nop,
}

/// What the generator produced and what the exchange made of it (timed part only).
#[derive(Clone, Debug, Default)]
pub struct MixStats {
    pub gtc: u64,
    pub ioc: u64,
    pub cancel: u64,
    pub replace_move: u64,
    pub replace_reduce: u64,
    /// Commands that produced at least one trade.
    pub with_trades: u64,
    /// Replaces (moves) that crossed and traded.
    pub moves_with_trades: u64,
    pub trades: u64,
    pub rejects: BTreeMap<&'static str, u64>,
}

impl MixStats {
    fn total(&self) -> u64 {
        self.gtc + self.ioc + self.cancel + self.replace_move + self.replace_reduce
    }

    pub fn reject_count(&self) -> u64 {
        self.rejects.values().sum()
    }

    pub fn describe(&self) -> String {
        let n = self.total().max(1) as f64;
        let pct = |x: u64| 100.0 * x as f64 / n;
        let rejects = if self.rejects.is_empty() {
            "none".to_string()
        } else {
            self.rejects
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        format!(
            "GTC {:.1}%  IOC {:.1}%  cancel {:.1}%  replace {:.1}% (move {:.1}%, reduce {:.1}%)\n\
             commands with trades {:.1}% (IOC and {:.2}% crossing moves); \
             {} trades = {:.3} per command; rejects: {}",
            pct(self.gtc),
            pct(self.ioc),
            pct(self.cancel),
            pct(self.replace_move + self.replace_reduce),
            pct(self.replace_move),
            pct(self.replace_reduce),
            pct(self.with_trades),
            pct(self.moves_with_trades),
            self.trades,
            self.trades as f64 / n,
            rejects,
        )
    }
}

/// A generated workload: admin setup and pre-fill (untimed), then the timed stream, as
/// exchange commands and as equivalent book operations.
pub struct Workload {
    pub markets: usize,
    pub setup: Vec<Command>,
    pub prefill: Vec<Command>,
    pub prefill_ops: Vec<BookOp>,
    pub commands: Vec<Command>,
    pub ops: Vec<BookOp>,
    pub mix: MixStats,
    /// The generating exchange's final state hash: a fresh replay must reproduce it.
    pub state_hash: u128,
    pub resting_after_prefill: usize,
    pub resting_at_end: usize,
}

#[derive(Clone, Copy, Debug)]
struct Live {
    account: AccountId,
    side: Side,
    price: Price,
    qty: Qty,
}

/// Per-market generator state (exchange-core: one `TestOrdersGeneratorSession` each).
struct MarketGen {
    id: MarketId,
    target_orders: usize,
    price_deviation: i64,
    /// Live order ids in insertion order; dead entries are dropped lazily when picked.
    queue: VecDeque<OrderId>,
    live: HashMap<OrderId, Live>,
    commands_seen: u32,
    /// Orders missing per side (bids, asks) at the last check; target is half each.
    lack: [i64; 2],
    /// Until the book first reaches its target, every place is a fast-fill GTC.
    filled_once: bool,
}

impl MarketGen {
    fn recheck(&mut self) {
        let bids = self.live.values().filter(|l| l.side == Side::Buy).count();
        let half = (self.target_orders / 2) as i64;
        self.lack = [half - bids as i64, half - (self.live.len() - bids) as i64];
    }

    /// A live order among the oldest [`PICK_WINDOW`] queue entries.
    fn pick(&mut self, rng: &mut Xoshiro256PlusPlus) -> Option<(OrderId, Live)> {
        while !self.queue.is_empty() {
            let i = rng.random_range(0..self.queue.len().min(PICK_WINDOW));
            let id = self.queue[i];
            match self.live.get(&id) {
                Some(l) => return Some((id, *l)),
                None => {
                    self.queue.remove(i);
                }
            }
        }
        None
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Gtc(Side),
    Ioc,
    Cancel,
    Move,
    Reduce,
}

/// exchange-core's size distribution: 1 + r^3, r uniform in 0..=5 (small sizes dominate).
fn random_size(rng: &mut Xoshiro256PlusPlus) -> Qty {
    let r = |rng: &mut Xoshiro256PlusPlus| rng.random_range(0..6u64);
    1 + r(rng) * r(rng) * r(rng)
}

/// A passive GTC price near the last trade price (exchange-core's offset distribution).
fn gtc_price(rng: &mut Xoshiro256PlusPlus, last: Price, price_deviation: i64, side: Side) -> Price {
    let u: f64 = rng.random();
    let dev = 1 + (u * u * price_deviation as f64) as i64;
    let sum: i64 = (0..4).map(|_| rng.random_range(0..dev)).sum();
    // Mean of 4 draws, times 2, minus dev: centred on zero, within [-dev, dev).
    let offset = (sum * 2 / 4 - dev).abs();
    match side {
        Side::Sell => last + offset,
        Side::Buy => last - offset,
    }
}

/// Moves `price` toward `last` by 1% of the gap, rounded away from zero; ±1 tick if equal.
fn move_toward(rng: &mut Xoshiro256PlusPlus, price: Price, last: Price) -> Price {
    let gap = last - price;
    if gap == 0 {
        return if rng.random_range(0..2) == 0 {
            price + 1
        } else {
            price - 1
        };
    }
    let step = (gap.abs() + 99) / 100;
    price + step * gap.signum()
}

/// Pareto(scale, shape) by inversion.
/// Each market's share of the activity: exchange-core's Pareto(0.001, 1.5), normalised
/// (one draw per market; none for a single market).
pub(super) fn activity_weights(rng: &mut Xoshiro256PlusPlus, markets: usize) -> Vec<f64> {
    if markets == 1 {
        return vec![1.0];
    }
    let w: Vec<f64> = (0..markets).map(|_| pareto(rng, 0.001, 1.5)).collect();
    let sum: f64 = w.iter().sum();
    w.iter().map(|x| x / sum).collect()
}

/// The running sums of `weights`, for [`pick_market`].
pub(super) fn cumulative_weights(weights: &[f64]) -> Vec<f64> {
    weights
        .iter()
        .scan(0.0, |acc, w| {
            *acc += w;
            Some(*acc)
        })
        .collect()
}

/// A market by its weight (one uniform draw; none for a single market).
pub(super) fn pick_market(rng: &mut Xoshiro256PlusPlus, cumulative: &[f64]) -> usize {
    let markets = cumulative.len();
    if markets == 1 {
        return 0;
    }
    let u: f64 = rng.random();
    cumulative.partition_point(|c| *c <= u).min(markets - 1)
}

pub(super) fn pareto(rng: &mut Xoshiro256PlusPlus, scale: f64, shape: f64) -> f64 {
    let u: f64 = rng.random();
    scale / (1.0 - u).powf(1.0 / shape)
}

struct Generator {
    rng: Xoshiro256PlusPlus,
    ex: Exchange,
    events: Vec<Event>,
    gens: Vec<MarketGen>,
}

impl Generator {
    fn account(&mut self) -> AccountId {
        self.rng.random_range(1..=ACCOUNTS)
    }

    /// Chooses the next command for market `m` the way exchange-core does.
    fn choose(&mut self, m: usize) -> Kind {
        let g = &mut self.gens[m];
        // Re-check at most every `target` commands too: small books would otherwise
        // overshoot by up to 512 orders between checks.
        let check_every = CHECK_EVERY.min(g.target_orders.max(1) as u32);
        if g.commands_seen.is_multiple_of(check_every) {
            g.recheck();
        }
        g.commands_seen += 1;
        // exchange-core: pick a side, then grow that side if it lacks orders.
        let side = if self.rng.random_range(0..4) >= 2 {
            Side::Buy
        } else {
            Side::Sell
        };
        let lack = g.lack[(side == Side::Sell) as usize];
        let fast_threshold = (CHECK_EVERY as i64).min(g.target_orders as i64 / 2 * 3 / 4);
        let grow = lack > 0;
        if !grow {
            g.filled_once = true;
        }
        let q_max = match (grow, !g.filled_once || lack > fast_threshold) {
            (true, true) => 2,
            (true, false) => 10,
            (false, _) => 40,
        };
        let q = self.rng.random_range(0..q_max);
        match q {
            0 | 1 if grow => Kind::Gtc(side),
            0 | 1 => Kind::Ioc,
            2 => Kind::Cancel,
            3 => Kind::Reduce,
            _ => Kind::Move,
        }
    }

    /// Builds the command and its book operation; the id of a new order is predicted
    /// from the exchange (ids are dense, in order of acceptance).
    fn build(&mut self, m: usize, mut kind: Kind) -> (Kind, Command, BookOp) {
        let market = self.gens[m].id;
        let (mut low, high) = self
            .ex
            .market(market)
            .expect("market")
            .band()
            .expect("band");
        low = low.max(1);
        let last = self.ex.market(market).expect("market").reference_price;
        let picked = match kind {
            Kind::Cancel | Kind::Move | Kind::Reduce => {
                let p = self.gens[m].pick(&mut self.rng);
                if p.is_none() {
                    kind = Kind::Ioc;
                }
                p
            }
            _ => None,
        };
        if let (Kind::Reduce, Some((_, l))) = (kind, picked) {
            if l.qty < 2 {
                kind = Kind::Move;
            }
        }
        let idx = m as u32;
        match kind {
            Kind::Gtc(_) | Kind::Ioc => {
                let account = self.account();
                let side = match kind {
                    Kind::Gtc(side) => side,
                    _ if self.rng.random_range(0..2) == 0 => Side::Buy,
                    _ => Side::Sell,
                };
                let qty = random_size(&mut self.rng);
                let (price, tif) = if let Kind::Gtc(_) = kind {
                    let dev = self.gens[m].price_deviation;
                    let p = gtc_price(&mut self.rng, last, dev, side);
                    (p.clamp(low, high), TimeInForce::Gtc)
                } else {
                    // A protected market order: priced at the band edge.
                    let p = match side {
                        Side::Buy => high,
                        Side::Sell => low,
                    };
                    (p, TimeInForce::Ioc)
                };
                let cmd = Command::Place(PlaceOrder {
                    account,
                    market,
                    client_order_id: 0,
                    side,
                    kind: OrderKind::Limit,
                    tif,
                    price,
                    qty,
                    quote_budget: 0,
                    stp: StpMode::None,
                });
                let op = BookOp::Place {
                    market: idx,
                    id: self.ex.next_order_id(),
                    side,
                    price,
                    qty,
                    owner: account,
                    tif,
                };
                (kind, cmd, op)
            }
            Kind::Cancel => {
                let (id, l) = picked.expect("picked");
                let cmd = Command::Cancel {
                    account: l.account,
                    market,
                    order: OrderRef::Exchange(id),
                };
                (kind, cmd, BookOp::Cancel { market: idx, id })
            }
            Kind::Reduce => {
                let (id, l) = picked.expect("picked");
                let qty = l.qty - self.rng.random_range(1..l.qty);
                let cmd = Command::Replace {
                    account: l.account,
                    market,
                    order: OrderRef::Exchange(id),
                    price: l.price,
                    qty,
                };
                (
                    kind,
                    cmd,
                    BookOp::Reduce {
                        market: idx,
                        id,
                        qty,
                    },
                )
            }
            Kind::Move => {
                let (id, l) = picked.expect("picked");
                let mut price = move_toward(&mut self.rng, l.price, last).clamp(low, high);
                if price == l.price {
                    // Pinned at a band edge: step inward instead.
                    price = if price == high { price - 1 } else { price + 1 };
                }
                let cmd = Command::Replace {
                    account: l.account,
                    market,
                    order: OrderRef::Exchange(id),
                    price,
                    qty: l.qty,
                };
                let op = BookOp::Move {
                    market: idx,
                    id,
                    price,
                    qty: l.qty,
                };
                (kind, cmd, op)
            }
        }
    }

    /// Applies `cmd` to the generating exchange and updates the live-order shadow from
    /// its events. Returns (trades, reject reason).
    fn apply(&mut self, m: usize, cmd: &Command, op: &BookOp) -> (u64, Option<RejectReason>) {
        self.events.clear();
        self.ex.apply(cmd, &mut self.events);
        let g = &mut self.gens[m];
        let mut trades = 0;
        let mut reject = None;
        for e in &self.events {
            match *e {
                Event::Trade {
                    maker_order_id,
                    maker_remaining,
                    ..
                } => {
                    trades += 1;
                    if maker_remaining == 0 {
                        g.live.remove(&maker_order_id);
                    } else if let Some(l) = g.live.get_mut(&maker_order_id) {
                        l.qty = maker_remaining;
                    }
                }
                Event::Cancelled { order_id, .. } => {
                    g.live.remove(&order_id);
                }
                Event::Accepted { order_id, .. } => {
                    if let BookOp::Place { id, .. } = op {
                        assert_eq!(order_id, *id, "predicted order id");
                    }
                }
                Event::Rejected { reason, .. } => reject = Some(reason),
                _ => {}
            }
        }
        // The subject order: resting now (new or replaced), or gone.
        let subject = match *op {
            BookOp::Place { id, .. } | BookOp::Move { id, .. } | BookOp::Reduce { id, .. } => {
                Some(id)
            }
            _ => None,
        };
        if let (Some(id), None) = (subject, reject) {
            let book = &self.ex.market(g.id).expect("market").book;
            match book.get(id) {
                Some(node) => {
                    let l = Live {
                        account: match cmd {
                            Command::Place(p) => p.account,
                            _ => g.live.get(&id).expect("replaced order was live").account,
                        },
                        side: node.side,
                        price: node.price,
                        qty: node.qty,
                    };
                    if g.live.insert(id, l).is_none() {
                        g.queue.push_back(id);
                    }
                }
                None => {
                    g.live.remove(&id);
                }
            }
        }
        (trades, reject)
    }
}

/// Generates the workload: `markets` markets, Pareto-weighted activity when more than one.
pub fn generate(markets: usize, commands: usize, seed: u64) -> Workload {
    assert!(markets >= 1);
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let weights = activity_weights(&mut rng, markets);
    let prefill_total = if markets == 1 {
        PREFILL_SINGLE
    } else {
        PREFILL_PER_MARKET * markets
    };

    // ---- setup: assets, markets, accounts, funds
    let mut setup = Vec::new();
    let sym = |s: String| Symbol::new(&s).expect("symbol");
    setup.push(Command::CreateAsset {
        asset: QUOTE_ASSET,
        symbol: sym("USD".into()),
        decimals: 2,
    });
    let mut gens = Vec::with_capacity(markets);
    for (i, weight) in weights.iter().enumerate() {
        let base = QUOTE_ASSET + 1 + i as u32;
        setup.push(Command::CreateAsset {
            asset: base,
            symbol: sym(format!("B{i}")),
            decimals: 8,
        });
        // exchange-core: price 10^(3.3 + 1.5U + 1.5U), deviation min(5%, 10,000),
        // band ±5 deviations.
        let e = 3.3 + 1.5 * rng.random::<f64>() + 1.5 * rng.random::<f64>();
        let price = 10f64.powf(e) as Price;
        let price_deviation = (price / 20).clamp(1, 10_000);
        let band_ppm = (5 * price_deviation * 1_000_000 / price) as u32;
        let maker_fee_ppm = rng.random_range(0..1000u32);
        let taker_fee_ppm = maker_fee_ppm + rng.random_range(0..500u32);
        let id = 1 + i as MarketId;
        setup.push(Command::CreateMarket(MarketSpec {
            market: id,
            symbol: sym(format!("M{i}")),
            base,
            quote: QUOTE_ASSET,
            tick_size: TICK_SIZE,
            lot_size: LOT_SIZE,
            qty_min: 1,
            qty_max: 1_000_000,
            band_ppm,
            reference_price: price,
            maker_fee_ppm,
            taker_fee_ppm,
        }));
        gens.push(MarketGen {
            id,
            target_orders: ((prefill_total as f64 * weight).round() as usize).max(2),
            price_deviation,
            queue: VecDeque::new(),
            live: HashMap::new(),
            commands_seen: 0,
            lack: [0, 0],
            filled_once: false,
        });
    }
    let ex = fund_accounts(&mut setup, ACCOUNTS, QUOTE_ASSET, markets);

    let mut g = Generator {
        rng,
        ex,
        events: Vec::with_capacity(64),
        gens,
    };

    // ---- pre-fill: GTC placements until every market reaches its target
    let mut prefill = Vec::new();
    let mut prefill_ops = Vec::new();
    for m in 0..markets {
        // exchange-core fills until each side holds half the target.
        for attempt in 0.. {
            g.gens[m].recheck();
            let lack = g.gens[m].lack;
            if (lack[0] <= 0 && lack[1] <= 0) || attempt > 100 * prefill_total {
                break;
            }
            let side = if lack[1] <= 0 || (lack[0] > 0 && g.rng.random_range(0..2) == 0) {
                Side::Buy
            } else {
                Side::Sell
            };
            let (_, cmd, op) = g.build(m, Kind::Gtc(side));
            let (_, reject) = g.apply(m, &cmd, &op);
            prefill.push(cmd);
            prefill_ops.push(if reject.is_some() { BookOp::Nop } else { op });
        }
    }
    let resting_after_prefill = g.gens.iter().map(|x| x.live.len()).sum();

    // ---- the timed stream
    let cumulative = cumulative_weights(&weights);
    let mut cmds = Vec::with_capacity(commands);
    let mut ops = Vec::with_capacity(commands);
    let mut mix = MixStats::default();
    for _ in 0..commands {
        let m = pick_market(&mut g.rng, &cumulative);
        let kind = g.choose(m);
        let (kind, cmd, op) = g.build(m, kind);
        let (trades, reject) = g.apply(m, &cmd, &op);
        match kind {
            Kind::Gtc(_) => mix.gtc += 1,
            Kind::Ioc => mix.ioc += 1,
            Kind::Cancel => mix.cancel += 1,
            Kind::Move => mix.replace_move += 1,
            Kind::Reduce => mix.replace_reduce += 1,
        }
        if trades > 0 {
            mix.with_trades += 1;
            mix.moves_with_trades += (kind == Kind::Move) as u64;
            mix.trades += trades;
        }
        if let Some(r) = reject {
            *mix.rejects.entry(r.name()).or_default() += 1;
            // exchange-core re-checks the book size on each reject.
            g.gens[m].recheck();
        }
        cmds.push(cmd);
        ops.push(if reject.is_some() { BookOp::Nop } else { op });
    }
    Workload {
        markets,
        setup,
        prefill,
        prefill_ops,
        commands: cmds,
        ops,
        mix,
        state_hash: g.ex.state_hash(),
        resting_after_prefill,
        resting_at_end: g.gens.iter().map(|x| x.live.len()).sum(),
    }
}

// ------------------------------------------------------------------------ baseline

/// A resting order in the baseline book.
#[derive(Clone, Copy, Debug)]
struct BaseOrder {
    id: OrderId,
    qty: Qty,
    owner: u32,
}

/// The straightforward book to beat: `BTreeMap<Price, VecDeque<Order>>` per side and a
/// hash map from order id to (side, price), with the engine's own hasher (FxHash, as
/// `OrderBook`'s index) and, through [`BaselineBook::with_capacity`], the same reserved
/// room as the engine's books in the bench: the comparison is of the book's structure,
/// not of SipHash against FxHash or of rehashing. Price-time matching; cancel scans the
/// level's queue.
#[derive(Clone, Debug, Default)]
pub struct BaselineBook {
    bids: BTreeMap<Price, VecDeque<BaseOrder>>,
    asks: BTreeMap<Price, VecDeque<BaseOrder>>,
    index: FxHashMap<OrderId, (Side, Price)>,
}

impl BaselineBook {
    /// Room for `orders` resting orders in the index, as `OrderBook::with_capacity`.
    pub fn with_capacity(orders: usize) -> Self {
        let mut index = FxHashMap::default();
        index.reserve(orders);
        BaselineBook {
            bids: BTreeMap::new(),
            asks: BTreeMap::new(),
            index,
        }
    }

    fn side_mut(&mut self, side: Side) -> &mut BTreeMap<Price, VecDeque<BaseOrder>> {
        match side {
            Side::Buy => &mut self.bids,
            Side::Sell => &mut self.asks,
        }
    }

    /// Matches, then rests a GTC remainder. Returns the number of fills.
    pub fn submit(
        &mut self,
        id: OrderId,
        side: Side,
        limit: Price,
        mut qty: Qty,
        owner: u32,
        tif: TimeInForce,
    ) -> u32 {
        let mut fills = 0;
        while qty > 0 {
            let mut level = match side {
                Side::Buy => match self.asks.first_entry() {
                    Some(e) if *e.key() <= limit => e,
                    _ => break,
                },
                Side::Sell => match self.bids.last_entry() {
                    Some(e) if *e.key() >= limit => e,
                    _ => break,
                },
            };
            let queue = level.get_mut();
            while qty > 0 {
                let Some(maker) = queue.front_mut() else {
                    break;
                };
                let fill = qty.min(maker.qty);
                maker.qty -= fill;
                qty -= fill;
                fills += 1;
                if maker.qty == 0 {
                    let maker_id = maker.id;
                    queue.pop_front();
                    self.index.remove(&maker_id);
                }
            }
            if queue.is_empty() {
                level.remove();
            }
        }
        if qty > 0 && tif == TimeInForce::Gtc {
            self.side_mut(side)
                .entry(limit)
                .or_default()
                .push_back(BaseOrder { id, qty, owner });
            self.index.insert(id, (side, limit));
        }
        fills
    }

    /// Removes a resting order; `None` if it is not resting.
    pub fn remove(&mut self, id: OrderId) -> Option<(Side, Price, Qty, u32)> {
        let (side, price) = self.index.remove(&id)?;
        let levels = self.side_mut(side);
        let queue = levels.get_mut(&price).expect("indexed level");
        let pos = queue
            .iter()
            .position(|o| o.id == id)
            .expect("indexed order");
        let order = queue.remove(pos).expect("position");
        if queue.is_empty() {
            levels.remove(&price);
        }
        Some((side, price, order.qty, order.owner))
    }

    /// Lowers a resting order's quantity in place; false if it is not resting.
    pub fn reduce(&mut self, id: OrderId, qty: Qty) -> bool {
        let Some(&(side, price)) = self.index.get(&id) else {
            return false;
        };
        let queue = self.side_mut(side).get_mut(&price).expect("indexed level");
        match queue.iter_mut().find(|o| o.id == id) {
            Some(o) => {
                o.qty = qty;
                true
            }
            None => false,
        }
    }

    /// All levels of `side`, best first, as (price, total quantity).
    pub fn depth(&self, side: Side) -> Vec<(Price, Qty)> {
        let total = |(p, q): (&Price, &VecDeque<BaseOrder>)| (*p, q.iter().map(|o| o.qty).sum());
        match side {
            Side::Buy => self.bids.iter().rev().map(total).collect(),
            Side::Sell => self.asks.iter().map(total).collect(),
        }
    }
}

// ------------------------------------------------------------------------ drivers

/// Applies one book operation to the engine's standalone books. Returns false on a miss
/// (an id that is not resting), which the cross-check reports.
#[inline(always)]
fn book_apply(books: &mut [OrderBook<()>], op: &BookOp) -> bool {
    match *op {
        BookOp::Place {
            market,
            id,
            side,
            price,
            qty,
            owner,
            tif,
        } => {
            let order = Incoming {
                id,
                side,
                limit: price,
                qty,
                owner,
                stp: StpMode::None,
                tif,
            };
            books[market as usize].submit(&order, (), &mut NullSink);
            true
        }
        BookOp::Cancel { market, id } => books[market as usize].remove(id).is_some(),
        BookOp::Move {
            market,
            id,
            price,
            qty,
        } => {
            let book = &mut books[market as usize];
            let Some((node, _)) = book.remove(id) else {
                return false;
            };
            let order = Incoming {
                id,
                side: node.side,
                limit: price,
                qty,
                owner: node.owner,
                stp: StpMode::None,
                tif: TimeInForce::Gtc,
            };
            book.submit(&order, (), &mut NullSink);
            true
        }
        BookOp::Reduce { market, id, qty } => books[market as usize].reduce(id, qty).is_some(),
        BookOp::Nop => true,
    }
}

#[inline(always)]
fn baseline_apply(books: &mut [BaselineBook], op: &BookOp) -> bool {
    match *op {
        BookOp::Place {
            market,
            id,
            side,
            price,
            qty,
            owner,
            tif,
        } => {
            books[market as usize].submit(id, side, price, qty, owner, tif);
            true
        }
        BookOp::Cancel { market, id } => books[market as usize].remove(id).is_some(),
        BookOp::Move {
            market,
            id,
            price,
            qty,
        } => {
            let book = &mut books[market as usize];
            let Some((side, _, _, owner)) = book.remove(id) else {
                return false;
            };
            book.submit(id, side, price, qty, owner, TimeInForce::Gtc);
            true
        }
        BookOp::Reduce { market, id, qty } => books[market as usize].reduce(id, qty),
        BookOp::Nop => true,
    }
}

/// Closed-loop throughput: the whole stream into a fresh clone of `init`. Returns
/// (million items per second, final state) so the state is dropped outside the timing.
fn throughput<S: Clone, I>(init: &S, items: &[I], mut f: impl FnMut(&mut S, &I)) -> (f64, S) {
    let mut state = init.clone();
    let start = Instant::now();
    for item in items {
        f(&mut state, item);
    }
    let secs = start.elapsed().as_secs_f64();
    black_box(&state);
    (items.len() as f64 / secs / 1e6, state)
}

/// One timed sample per item, in a pass of its own so timer overhead stays out of the
/// throughput figure.
fn latency<S: Clone, I>(
    clock: &quanta::Clock,
    init: &S,
    items: &[I],
    mut f: impl FnMut(&mut S, &I),
) -> (LatencySummary, S) {
    let mut hist = latency_histogram();
    let mut state = init.clone();
    for item in items {
        let t0 = clock.raw();
        f(&mut state, item);
        let t1 = clock.raw();
        hist.saturating_record(clock.delta_as_nanos(t0, t1));
    }
    black_box(&state);
    (LatencySummary::from_histogram(&hist), state)
}

/// Timer overhead per back-to-back pair of reads, in ns: (quanta raw, std Instant).
pub fn timer_overhead_ns(clock: &quanta::Clock) -> (f64, f64) {
    const N: u32 = 1_000_000;
    let start = Instant::now();
    let mut acc = 0u64;
    for _ in 0..N {
        let a = clock.raw();
        let b = clock.raw();
        acc = acc.wrapping_add(b.wrapping_sub(a));
    }
    black_box(acc);
    let quanta_ns = start.elapsed().as_nanos() as f64 / N as f64;
    let start = Instant::now();
    let mut acc = 0u128;
    for _ in 0..N {
        let a = Instant::now();
        let b = Instant::now();
        acc = acc.wrapping_add((b - a).as_nanos());
    }
    black_box(acc);
    let std_ns = start.elapsed().as_nanos() as f64 / N as f64;
    (quanta_ns, std_ns)
}

/// Figures for one implementation.
#[derive(Clone, Debug, Default)]
pub struct Figures {
    pub name: &'static str,
    pub throughput_mcps_runs: Vec<f64>,
    pub throughput_mcps_median: f64,
    pub latency: LatencySummary,
}

/// Everything one variant (a market count) measured.
#[derive(Clone, Debug)]
pub struct VariantReport {
    pub markets: usize,
    pub commands: usize,
    pub runs: usize,
    pub generation_secs: f64,
    pub mix: MixStats,
    pub resting_after_prefill: usize,
    pub resting_at_end: usize,
    /// Price levels (bids, asks) summed over markets at the end of the stream.
    pub levels_at_end: (usize, usize),
    pub shape: Shape,
    pub book: Figures,
    /// The same books created with `with_capacity(RESERVED_ORDERS / markets)`.
    pub book_reserved: Figures,
    pub exchange: Figures,
    pub baseline: Figures,
    /// Heap bytes of the book-only books at the end over their resting orders: all of
    /// it, and the order slab and id index alone.
    pub book_bytes_per_order: f64,
    pub book_order_bytes_per_order: f64,
    pub books_match: bool,
    pub misses_book: u64,
    pub misses_baseline: u64,
    pub state_hash: u128,
    pub state_hash_matches_generator: bool,
}

/// Best price, level count and full depth of both sides: the cross-check's view.
type BookView = Vec<(Vec<(Price, Qty)>, Vec<(Price, Qty)>)>;

fn view_books(books: &[OrderBook<()>]) -> BookView {
    books
        .iter()
        .map(|b| {
            (
                b.depth(Side::Buy, usize::MAX),
                b.depth(Side::Sell, usize::MAX),
            )
        })
        .collect()
}

fn view_baseline(books: &[BaselineBook]) -> BookView {
    books
        .iter()
        .map(|b| (b.depth(Side::Buy), b.depth(Side::Sell)))
        .collect()
}

fn view_exchange(ex: &Exchange, markets: usize) -> BookView {
    (0..markets)
        .map(|i| {
            let b = &ex.market(1 + i as MarketId).expect("market").book;
            (
                b.depth(Side::Buy, usize::MAX),
                b.depth(Side::Sell, usize::MAX),
            )
        })
        .collect()
}

/// Generates the workload for `markets` and measures all three implementations.
pub fn run_variant(
    shape: Shape,
    markets: usize,
    commands: usize,
    runs: usize,
    seed: u64,
    clock: &quanta::Clock,
) -> VariantReport {
    let start = Instant::now();
    let w = generate_shape(shape, markets, commands, seed);
    let generation_secs = start.elapsed().as_secs_f64();

    // Pre-filled states, cloned for every pass.
    let mut ex0 = Exchange::new();
    let mut events: Vec<Event> = Vec::with_capacity(1024);
    for cmd in w.setup.iter().chain(&w.prefill) {
        ex0.apply(cmd, &mut events);
        events.clear();
    }
    let capacity = w.resting_after_prefill * 2 / markets + 64;
    let mut books0: Vec<OrderBook<()>> = (0..markets).map(|_| OrderBook::new()).collect();
    let mut reserved0: Vec<OrderBook<()>> = (0..markets)
        .map(|_| OrderBook::with_capacity(RESERVED_ORDERS / markets))
        .collect();
    let mut base0: Vec<BaselineBook> = (0..markets)
        .map(|_| BaselineBook::with_capacity(capacity))
        .collect();
    for op in &w.prefill_ops {
        assert!(book_apply(&mut books0, op));
        assert!(book_apply(&mut reserved0, op));
        assert!(baseline_apply(&mut base0, op));
    }

    let mut book = Figures {
        name: "book-only (OrderBook<()>)",
        ..Default::default()
    };
    let mut book_reserved = Figures {
        name: "book-only, with_capacity",
        ..Default::default()
    };
    let mut exchange = Figures {
        name: "full exchange (apply)",
        ..Default::default()
    };
    let mut baseline = Figures {
        name: "baseline (BTreeMap+VecDeque)",
        ..Default::default()
    };
    let mut misses_book = 0u64;
    let mut misses_baseline = 0u64;
    let mut last_states = None;
    // Interleave the implementations so machine noise hits all of them alike.
    for _ in 0..runs.max(1) {
        let mut misses = 0u64;
        let (mcps, books) = throughput(&books0, &w.ops, |b, op| {
            misses += !book_apply(b, op) as u64;
        });
        book.throughput_mcps_runs.push(mcps);
        misses_book = misses;

        let mut misses = 0u64;
        let (mcps, reserved) = throughput(&reserved0, &w.ops, |b, op| {
            misses += !book_apply(b, op) as u64;
        });
        book_reserved.throughput_mcps_runs.push(mcps);
        misses_book += misses;
        drop(reserved);

        let (mcps, ex) = throughput(&ex0, &w.commands, |ex, cmd| {
            ex.apply(cmd, &mut events);
            events.clear();
        });
        exchange.throughput_mcps_runs.push(mcps);

        let mut misses = 0u64;
        let (mcps, base) = throughput(&base0, &w.ops, |b, op| {
            misses += !baseline_apply(b, op) as u64;
        });
        baseline.throughput_mcps_runs.push(mcps);
        misses_baseline = misses;
        // Keep the last run's end states for the cross-check; drop the rest untimed.
        last_states = Some((books, ex, base));
    }
    let (books_end, ex_end, base_end) = last_states.expect("at least one run");
    for f in [&mut book, &mut book_reserved, &mut exchange, &mut baseline] {
        f.throughput_mcps_median = median(&f.throughput_mcps_runs);
    }

    book.latency = latency(clock, &books0, &w.ops, |b, op| {
        book_apply(b, op);
    })
    .0;
    book_reserved.latency = latency(clock, &reserved0, &w.ops, |b, op| {
        book_apply(b, op);
    })
    .0;
    exchange.latency = latency(clock, &ex0, &w.commands, |ex, cmd| {
        ex.apply(cmd, &mut events);
        events.clear();
    })
    .0;
    baseline.latency = latency(clock, &base0, &w.ops, |b, op| {
        baseline_apply(b, op);
    })
    .0;

    let view = view_books(&books_end);
    let books_match = view == view_baseline(&base_end) && view == view_exchange(&ex_end, markets);
    let state_hash = ex_end.state_hash();
    let levels_at_end = books_end.iter().fold((0, 0), |(b, a), x| {
        (b + x.level_count(Side::Buy), a + x.level_count(Side::Sell))
    });
    let resting: usize = books_end.iter().map(|b| b.order_count()).sum();
    let book_bytes: usize = books_end.iter().map(|b| b.heap_bytes()).sum();
    let order_bytes: usize = books_end.iter().map(|b| b.order_heap_bytes()).sum();
    VariantReport {
        shape,
        book_reserved,
        book_bytes_per_order: book_bytes as f64 / resting.max(1) as f64,
        book_order_bytes_per_order: order_bytes as f64 / resting.max(1) as f64,
        levels_at_end,
        markets,
        commands,
        runs: runs.max(1),
        generation_secs,
        mix: w.mix,
        resting_after_prefill: w.resting_after_prefill,
        resting_at_end: w.resting_at_end,
        book,
        exchange,
        baseline,
        books_match,
        misses_book,
        misses_baseline,
        state_hash,
        state_hash_matches_generator: state_hash == w.state_hash,
    }
}

impl VariantReport {
    pub fn print(&self) {
        println!(
            "\n== shape {}, {} market(s), {} timed commands, {} runs (generated in {:.1} s)",
            self.shape.name(),
            self.markets,
            self.commands,
            self.runs,
            self.generation_secs
        );
        println!(
            "resting orders: {} after pre-fill, {} at end, over {} bid and {} ask levels",
            self.resting_after_prefill,
            self.resting_at_end,
            self.levels_at_end.0,
            self.levels_at_end.1
        );
        println!("mix: {}", self.mix.describe());
        println!(
            "{:<30} {:>10} {:>22} {:>8} {:>8} {:>9} {:>9}",
            "implementation", "Mcmd/s", "(runs)", "p50 ns", "p99 ns", "p99.9 ns", "max ns"
        );
        for f in [
            &self.book,
            &self.book_reserved,
            &self.exchange,
            &self.baseline,
        ] {
            let runs: Vec<String> = f
                .throughput_mcps_runs
                .iter()
                .map(|x| format!("{x:.2}"))
                .collect();
            println!(
                "{:<30} {:>10.2} {:>22} {:>8} {:>8} {:>9} {:>9}",
                f.name,
                f.throughput_mcps_median,
                runs.join(","),
                f.latency.latency_ns_p50,
                f.latency.latency_ns_p99,
                f.latency.latency_ns_p999,
                f.latency.latency_ns_max,
            );
        }
        let b = self.baseline.throughput_mcps_median.max(f64::MIN_POSITIVE);
        println!(
            "ratios vs baseline (throughput): book-only x{:.2}, full exchange x{:.2}; \
             with_capacity({}) / new(): x{:.2}",
            self.book.throughput_mcps_median / b,
            self.exchange.throughput_mcps_median / b,
            RESERVED_ORDERS / self.markets,
            self.book_reserved.throughput_mcps_median
                / self.book.throughput_mcps_median.max(f64::MIN_POSITIVE)
        );
        println!(
            "book-only memory at end, heap bytes per resting order: {:.1} for the order slab \
             and id index, {:.1} with the levels",
            self.book_order_bytes_per_order, self.book_bytes_per_order
        );
        println!(
            "cross-check: book-only, baseline and exchange books identical at end: {}; \
             misses (id not resting): book-only {}, baseline {}",
            if self.books_match { "yes" } else { "NO" },
            self.misses_book,
            self.misses_baseline
        );
        println!(
            "exchange state_hash: {:032x} (equals the generator's: {})",
            self.state_hash,
            if self.state_hash_matches_generator {
                "yes"
            } else {
                "NO"
            }
        );
    }
}

/// Runs every requested variant and prints the report. Returns the reports.
pub fn run(args: &EngineBenchArgs) -> Vec<VariantReport> {
    let clock = quanta::Clock::new();
    let (quanta_ns, std_ns) = timer_overhead_ns(&clock);
    println!(
        "ringex engine bench: nproc={}, cpu={}, release={}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model(),
        !cfg!(debug_assertions)
    );
    println!(
        "timer overhead per pair of reads: quanta raw {quanta_ns:.1} ns, std Instant {std_ns:.1} ns \
         (latency uses quanta raw)"
    );
    let mut reports = Vec::new();
    for &shape in &args.shapes {
        for &markets in &args.markets {
            let r = run_variant(shape, markets, args.commands, args.runs, args.seed, &clock);
            r.print();
            reports.push(r);
        }
    }
    reports
}

/// The workload of `shape`.
pub fn generate_shape(shape: Shape, markets: usize, commands: usize, seed: u64) -> Workload {
    match shape {
        Shape::Core => generate(markets, commands, seed),
        Shape::Churn => super::churn::generate(markets, commands, seed),
    }
}

/// Writes each requested variant's book operations (pre-fill, then the timed stream) to
/// `dir/ops-SHAPE-MARKETS.bin` for `engine/examples/book_replay.rs`: a header of three
/// little-endian u64 (magic, pre-fill count, timed count), then per operation six
/// little-endian u64: kind (0 nop, 1 place, 2 cancel, 3 move, 4 reduce), market, id,
/// price, quantity, and `owner << 16 | side << 8 | tif`.
pub fn dump_ops(args: &EngineBenchArgs, dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for &shape in &args.shapes {
        for &markets in &args.markets {
            let w = generate_shape(shape, markets, args.commands, args.seed);
            let mut out = Vec::with_capacity(24 + 48 * (w.prefill_ops.len() + w.ops.len()));
            for x in [OPS_MAGIC, w.prefill_ops.len() as u64, w.ops.len() as u64] {
                out.extend_from_slice(&x.to_le_bytes());
            }
            for op in w.prefill_ops.iter().chain(&w.ops) {
                for x in encode_op(op) {
                    out.extend_from_slice(&x.to_le_bytes());
                }
            }
            let path = dir.join(format!("ops-{}-{markets}.bin", shape.name()));
            std::fs::write(&path, out)?;
            println!(
                "{}: {} pre-fill + {} timed operations",
                path.display(),
                w.prefill_ops.len(),
                w.ops.len()
            );
        }
    }
    Ok(())
}

/// "RINGEXOP" in ASCII: the first word of an operations file.
pub const OPS_MAGIC: u64 = u64::from_le_bytes(*b"RINGEXOP");

fn encode_op(op: &BookOp) -> [u64; 6] {
    match *op {
        BookOp::Nop => [0; 6],
        BookOp::Place {
            market,
            id,
            side,
            price,
            qty,
            owner,
            tif,
        } => [
            1,
            market as u64,
            id,
            price as u64,
            qty,
            (owner as u64) << 16 | (side as u64) << 8 | tif as u64,
        ],
        BookOp::Cancel { market, id } => [2, market as u64, id, 0, 0, 0],
        BookOp::Move {
            market,
            id,
            price,
            qty,
        } => [3, market as u64, id, price as u64, qty, 0],
        BookOp::Reduce { market, id, qty } => [4, market as u64, id, 0, qty, 0],
    }
}

/// Appends to `setup` the accounts 1..=`accounts`, each funded in the quote asset and in
/// every market's base asset (`quote_asset + 1 ..= quote_asset + markets`) so that
/// nothing is rejected for lack of funds and sums never overflow; returns an exchange
/// that has applied all of `setup`, which must reject nothing.
pub(crate) fn fund_accounts(
    setup: &mut Vec<Command>,
    accounts: u32,
    quote_asset: u32,
    markets: usize,
) -> Exchange {
    let funds = i64::MAX / (2 * i64::from(accounts) + 2);
    let mut external_ref = 0u64;
    for account in 1..=accounts {
        setup.push(Command::CreateAccount { account });
        for asset in quote_asset..=quote_asset + markets as u32 {
            external_ref += 1;
            setup.push(Command::Deposit {
                account,
                asset,
                amount: funds,
                external_ref,
            });
        }
    }
    let mut ex = Exchange::new();
    let mut events = Vec::new();
    for cmd in setup.iter() {
        events.clear();
        ex.apply(cmd, &mut events);
        assert!(
            !events.iter().any(|e| matches!(e, Event::Rejected { .. })),
            "setup command rejected: {cmd:?} -> {events:?}"
        );
    }
    ex
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baseline_matches_in_price_time_priority() {
        let mut b = BaselineBook::default();
        b.submit(1, Side::Sell, 101, 5, 1, TimeInForce::Gtc);
        b.submit(2, Side::Sell, 100, 5, 2, TimeInForce::Gtc);
        b.submit(3, Side::Sell, 100, 5, 3, TimeInForce::Gtc);
        assert_eq!(b.submit(4, Side::Buy, 101, 12, 4, TimeInForce::Gtc), 3);
        assert_eq!(b.depth(Side::Sell), vec![(101, 3)]);
        assert_eq!(b.depth(Side::Buy), vec![]);
        assert!(b.remove(2).is_none());
        assert!(b.reduce(1, 1));
        assert_eq!(b.submit(5, Side::Buy, 100, 2, 5, TimeInForce::Ioc), 0);
        assert_eq!(b.depth(Side::Buy), vec![]);
    }

    #[test]
    fn small_workload_has_no_rejects_and_books_agree() {
        let clock = quanta::Clock::new();
        for shape in [Shape::Core, Shape::Churn] {
            for markets in [1, 20] {
                let r = run_variant(shape, markets, 20_000, 1, 7, &clock);
                assert_eq!(r.mix.reject_count(), 0, "{:?}", r.mix.rejects);
                assert!(r.books_match);
                assert_eq!((r.misses_book, r.misses_baseline), (0, 0));
                assert!(r.state_hash_matches_generator);
            }
        }
    }

    #[test]
    fn generation_is_reproducible() {
        for shape in [Shape::Core, Shape::Churn] {
            let a = generate_shape(shape, 3, 5000, 11);
            let b = generate_shape(shape, 3, 5000, 11);
            assert_eq!(a.commands, b.commands);
            assert_eq!(a.state_hash, b.state_hash);
        }
    }
}
