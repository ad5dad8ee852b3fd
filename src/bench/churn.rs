//! The second workload shape of `ringex bench engine` (`--shape churn`): order flow with a
//! high cancel ratio over a deep static book, with wide price swings and a flash crash.
//!
//! Per command: 50% new orders (15% of them IOC of 1-3 lots priced within 5 ticks of the
//! mid, the rest GTC near the touch), 41% cancels, 9% modifies (replaces: two thirds move the price, one
//! third lower the quantity in place). Cancels and modifies pick uniformly among the live
//! orders placed in the timed part; the deep book placed by the pre-fill is never
//! cancelled (trades may still take it). Every order carries a client order id taken from
//! its account's pool of free ids, so ids are reused as soon as an order is cancelled or
//! filled (the engine allows a client id again once its order is closed), and cancels
//! name orders by client id.
//!
//! The live population is kept between half and twice its target: a cancel with fewer
//! live orders than half the target becomes a GTC, and a GTC with more than
//! twice the target becomes a cancel (the realised mix is printed).
//!
//! The deep book lies 2,000 to 30,000 ticks from the initial price on both sides. The
//! price path: a random walk (a tick in a sixteenth of the commands) whose drift, drawn
//! every 50,000 commands, adds a tick up or down in a 32nd, kept within 1,500 ticks of
//! the initial price (swings of up to 3,000 ticks), and a flash crash starting at 60% of the stream that falls
//! [`CRASH_TICKS`] ticks over 1% of the stream, stays down for 2%, and recovers over 5%.
//! No price band, so the crash is not clamped.
//!
//! Like the first shape, the stream is generated once by driving a real `Exchange`, so
//! order ids are the exchange's own and the replay reproduces the generator's state hash.

use std::collections::HashMap;

use rand::{RngExt, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use ringex_engine::{
    AccountId, ClientOrderId, Command, Event, Exchange, MarketId, MarketSpec, OrderId, OrderKind,
    OrderRef, PlaceOrder, Price, Qty, Side, StpMode, Symbol, TimeInForce,
};

use super::engine::{
    activity_weights, cumulative_weights, pick_market, BookOp, MixStats, Workload,
};

const ACCOUNTS: u32 = 1000;
const QUOTE_ASSET: u32 = 1;
const TICK_SIZE: i64 = 1000;
const LOT_SIZE: i64 = 1000;
/// The initial price, in ticks.
const START_PRICE: Price = 1_000_000;
/// Resting orders of the deep static book, all markets together, half per side.
const STATIC_TOTAL: usize = 40_000;
/// The deep book lies between these distances from the initial price, in ticks.
const STATIC_GAP: i64 = 2_000;
const STATIC_SPAN: i64 = 30_000;
/// Outside the crash, the walk stays within this many ticks of the initial price (inside
/// the deep book's gap, so the deep book is taken only by the crash).
const SWING_TICKS: i64 = 1_500;
/// Live orders placed in the timed part, all markets together, kept near this count.
const ACTIVE_TOTAL: usize = 10_000;
/// Depth of the flash crash, in ticks.
pub const CRASH_TICKS: i64 = 40_000;
/// Commands per drift phase of the price walk.
const SWING_PHASE: u64 = 50_000;

/// An order the generator may cancel or modify.
#[derive(Clone, Copy, Debug)]
struct Live {
    account: AccountId,
    client_id: ClientOrderId,
    side: Side,
    price: Price,
    qty: Qty,
    /// Placed by the pre-fill: never cancelled or modified.
    fixed: bool,
    /// Index in `MarketGen::active` (meaningless when `fixed`).
    slot: usize,
}

struct MarketGen {
    id: MarketId,
    active_target: usize,
    static_per_side: usize,
    live: HashMap<OrderId, Live>,
    /// Live non-static orders, for uniform picks (swap-remove).
    active: Vec<OrderId>,
    /// The price walk: `mid` before the crash offset, drift per phase.
    walk: Price,
    drift: i64,
    commands_seen: u64,
}

impl MarketGen {
    fn forget(&mut self, id: OrderId, pools: &mut [Vec<ClientOrderId>]) {
        let Some(l) = self.live.remove(&id) else {
            return;
        };
        pools[l.account as usize - 1].push(l.client_id);
        if !l.fixed {
            let last = *self.active.last().expect("active order listed");
            self.active.swap_remove(l.slot);
            if last != id {
                self.live.get_mut(&last).expect("listed order is live").slot = l.slot;
            }
        }
    }
}

struct Generator {
    rng: Xoshiro256PlusPlus,
    ex: Exchange,
    events: Vec<Event>,
    gens: Vec<MarketGen>,
    /// Free client order ids per account (index = account - 1), reused last-in first-out.
    pools: Vec<Vec<ClientOrderId>>,
    next_client_id: Vec<ClientOrderId>,
    commands: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Gtc,
    Ioc,
    Cancel,
    Move,
    Reduce,
}

fn random_size(rng: &mut Xoshiro256PlusPlus) -> Qty {
    let r = |rng: &mut Xoshiro256PlusPlus| rng.random_range(0..6u64);
    1 + r(rng) * r(rng) * r(rng)
}

/// The crash offset (<= 0) at command `t` of `n`.
fn crash_offset(t: u64, n: u64) -> i64 {
    let at = |permille: u64| n * permille / 1000;
    let (start, bottom, hold, end) = (at(600), at(610), at(630), at(680));
    let span = |a: u64, b: u64| (b - a).max(1) as i64;
    if t < start || t >= end {
        0
    } else if t < bottom {
        -CRASH_TICKS * (t - start) as i64 / span(start, bottom)
    } else if t < hold {
        -CRASH_TICKS
    } else {
        -CRASH_TICKS + CRASH_TICKS * (t - hold) as i64 / span(hold, end)
    }
}

impl Generator {
    fn client_id(&mut self, account: AccountId) -> ClientOrderId {
        let i = account as usize - 1;
        self.pools[i].pop().unwrap_or_else(|| {
            self.next_client_id[i] += 1;
            self.next_client_id[i]
        })
    }

    /// The market's mid price now.
    fn mid(&mut self, m: usize, total: u64) -> Price {
        let g = &mut self.gens[m];
        if g.commands_seen.is_multiple_of(SWING_PHASE) {
            g.drift = self.rng.random_range(-1..=1);
        }
        g.commands_seen += 1;
        // One command in sixteen moves the walk a tick either way; one in 32 follows
        // the drift.
        let u = self.rng.random_range(0..32);
        let step = match u {
            0 => g.drift,
            1 => -1,
            2 => 1,
            _ => 0,
        };
        g.walk = (g.walk + step).clamp(START_PRICE - SWING_TICKS, START_PRICE + SWING_TICKS);
        (g.walk + crash_offset(self.commands, total)).max(1)
    }

    fn choose(&mut self, m: usize) -> Kind {
        let g = &self.gens[m];
        let u = self.rng.random_range(0..1000u32);
        let kind = if u < 75 {
            Kind::Ioc
        } else if u < 500 {
            Kind::Gtc
        } else if u < 910 {
            Kind::Cancel
        } else if u < 970 {
            Kind::Move
        } else {
            Kind::Reduce
        };
        // Keep the live population near its target without changing the mix much.
        match kind {
            Kind::Cancel | Kind::Move | Kind::Reduce if g.active.is_empty() => Kind::Gtc,
            Kind::Gtc if g.active.len() > g.active_target * 2 => Kind::Cancel,
            Kind::Cancel if g.active.len() < g.active_target / 2 => Kind::Gtc,
            k => k,
        }
    }

    fn place(
        &mut self,
        m: usize,
        side: Side,
        price: Price,
        qty: Qty,
        tif: TimeInForce,
    ) -> (Command, BookOp) {
        let account = self.rng.random_range(1..=ACCOUNTS);
        let client_order_id = self.client_id(account);
        let cmd = Command::Place(PlaceOrder {
            account,
            market: self.gens[m].id,
            client_order_id,
            side,
            kind: OrderKind::Limit,
            tif,
            price,
            qty,
            quote_budget: 0,
            stp: StpMode::None,
        });
        let op = BookOp::Place {
            market: m as u32,
            id: self.ex.next_order_id(),
            side,
            price,
            qty,
            owner: account,
            tif,
        };
        (cmd, op)
    }

    fn build(&mut self, m: usize, kind: Kind, mid: Price) -> (Command, BookOp) {
        let market = self.gens[m].id;
        let side = if self.rng.random_range(0..2) == 0 {
            Side::Buy
        } else {
            Side::Sell
        };
        match kind {
            Kind::Gtc => {
                // Near the touch: most within a few ticks, a tail to a few hundred.
                let u: f64 = self.rng.random();
                let offset = 1 + (u * u * u * 300.0) as i64;
                let price = match side {
                    Side::Buy => mid - offset,
                    Side::Sell => mid + offset,
                }
                .max(1);
                let qty = random_size(&mut self.rng);
                self.place(m, side, price, qty, TimeInForce::Gtc)
            }
            Kind::Ioc => {
                // Small, priced around the mid: about half reach the touch.
                let through = self.rng.random_range(-5..=5);
                let price = match side {
                    Side::Buy => mid + through,
                    Side::Sell => mid - through,
                }
                .max(1);
                let qty = self.rng.random_range(1..=3);
                self.place(m, side, price, qty, TimeInForce::Ioc)
            }
            Kind::Cancel | Kind::Move | Kind::Reduce => {
                let g = &self.gens[m];
                let id = g.active[self.rng.random_range(0..g.active.len())];
                let l = g.live[&id];
                let kind = if kind == Kind::Reduce && l.qty < 2 {
                    Kind::Move
                } else {
                    kind
                };
                let order = OrderRef::Client(l.client_id);
                match kind {
                    Kind::Cancel => (
                        Command::Cancel {
                            account: l.account,
                            market,
                            order,
                        },
                        BookOp::Cancel {
                            market: m as u32,
                            id,
                        },
                    ),
                    Kind::Reduce => {
                        let qty = l.qty - self.rng.random_range(1..l.qty);
                        (
                            Command::Replace {
                                account: l.account,
                                market,
                                order,
                                price: l.price,
                                qty,
                            },
                            BookOp::Reduce {
                                market: m as u32,
                                id,
                                qty,
                            },
                        )
                    }
                    _ => {
                        // Re-quote near the touch on the order's own side.
                        let offset = self.rng.random_range(1..=20);
                        let mut price = match l.side {
                            Side::Buy => mid - offset,
                            Side::Sell => mid + offset,
                        }
                        .max(1);
                        if price == l.price {
                            price += 1;
                        }
                        (
                            Command::Replace {
                                account: l.account,
                                market,
                                order,
                                price,
                                qty: l.qty,
                            },
                            BookOp::Move {
                                market: m as u32,
                                id,
                                price,
                                qty: l.qty,
                            },
                        )
                    }
                }
            }
        }
    }

    /// Applies `cmd` and updates the live shadow from its events. Returns (trades, rejected).
    fn apply(&mut self, m: usize, cmd: &Command, op: &BookOp, fixed: bool) -> (u64, bool) {
        self.events.clear();
        self.ex.apply(cmd, &mut self.events);
        let mut trades = 0;
        let mut rejected = false;
        let g = &mut self.gens[m];
        for e in &self.events {
            match *e {
                Event::Trade {
                    maker_order_id,
                    maker_remaining,
                    ..
                } => {
                    trades += 1;
                    if maker_remaining == 0 {
                        g.forget(maker_order_id, &mut self.pools);
                    } else if let Some(l) = g.live.get_mut(&maker_order_id) {
                        l.qty = maker_remaining;
                    }
                }
                Event::Cancelled { order_id, .. } => g.forget(order_id, &mut self.pools),
                Event::Accepted { order_id, .. } => {
                    if let BookOp::Place { id, .. } = op {
                        assert_eq!(order_id, *id, "predicted order id");
                    }
                }
                Event::Rejected { .. } => rejected = true,
                _ => {}
            }
        }
        if rejected {
            // A rejected place never used its client id.
            if let Command::Place(p) = cmd {
                self.pools[p.account as usize - 1].push(p.client_order_id);
            }
            return (trades, true);
        }
        let subject = match *op {
            BookOp::Place { id, .. } | BookOp::Move { id, .. } | BookOp::Reduce { id, .. } => id,
            _ => return (trades, false),
        };
        let book = &self.ex.market(g.id).expect("market").book;
        match (book.get(subject), cmd) {
            (Some(node), Command::Place(p)) => {
                let slot = g.active.len();
                if !fixed {
                    g.active.push(subject);
                }
                g.live.insert(
                    subject,
                    Live {
                        account: p.account,
                        client_id: p.client_order_id,
                        side: node.side,
                        price: node.price,
                        qty: node.qty,
                        fixed,
                        slot,
                    },
                );
            }
            (Some(node), _) => {
                let l = g.live.get_mut(&subject).expect("modified order was live");
                l.price = node.price;
                l.qty = node.qty;
            }
            (None, Command::Place(p)) => {
                // Filled or cancelled on entry: its client id is free again.
                self.pools[p.account as usize - 1].push(p.client_order_id);
            }
            (None, _) => g.forget(subject, &mut self.pools),
        }
        (trades, false)
    }
}

/// Generates the churn workload for `markets` markets (activity weights as the first
/// shape's when more than one).
pub fn generate(markets: usize, commands: usize, seed: u64) -> Workload {
    assert!(markets >= 1);
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0xc4a2_0000);
    let weights = activity_weights(&mut rng, markets);
    let sym = |s: String| Symbol::new(&s).expect("symbol");
    let mut setup = vec![Command::CreateAsset {
        asset: QUOTE_ASSET,
        symbol: sym("USD".into()),
        decimals: 2,
    }];
    let mut gens = Vec::with_capacity(markets);
    for (i, weight) in weights.iter().enumerate() {
        let base = QUOTE_ASSET + 1 + i as u32;
        setup.push(Command::CreateAsset {
            asset: base,
            symbol: sym(format!("B{i}")),
            decimals: 8,
        });
        let id = 1 + i as MarketId;
        let maker_fee_ppm = rng.random_range(0..1000u32);
        setup.push(Command::CreateMarket(MarketSpec {
            market: id,
            symbol: sym(format!("M{i}")),
            base,
            quote: QUOTE_ASSET,
            tick_size: TICK_SIZE,
            lot_size: LOT_SIZE,
            qty_min: 1,
            qty_max: 1_000_000,
            band_ppm: 0,
            reference_price: START_PRICE,
            maker_fee_ppm,
            taker_fee_ppm: maker_fee_ppm + rng.random_range(0..500u32),
        }));
        gens.push(MarketGen {
            id,
            active_target: ((ACTIVE_TOTAL as f64 * weight).round() as usize).max(2),
            static_per_side: ((STATIC_TOTAL as f64 * weight / 2.0).round() as usize).max(1),
            live: HashMap::new(),
            active: Vec::new(),
            walk: START_PRICE,
            drift: 0,
            commands_seen: 0,
        });
    }
    let ex = super::engine::fund_accounts(&mut setup, ACCOUNTS, QUOTE_ASSET, markets);
    let mut g = Generator {
        rng,
        ex,
        events: Vec::with_capacity(64),
        gens,
        pools: vec![Vec::new(); ACCOUNTS as usize],
        next_client_id: vec![0; ACCOUNTS as usize],
        commands: 0,
    };

    // ---- pre-fill (untimed): the deep static book, then the active orders near the touch.
    let mut prefill = Vec::new();
    let mut prefill_ops = Vec::new();
    for m in 0..markets {
        for i in 0..g.gens[m].static_per_side * 2 {
            let side = if i % 2 == 0 { Side::Buy } else { Side::Sell };
            let offset = g.rng.random_range(STATIC_GAP..=STATIC_SPAN);
            let price = match side {
                Side::Buy => START_PRICE - offset,
                Side::Sell => START_PRICE + offset,
            };
            let qty = random_size(&mut g.rng) * 10;
            let (cmd, op) = g.place(m, side, price, qty, TimeInForce::Gtc);
            let (_, rejected) = g.apply(m, &cmd, &op, true);
            assert!(!rejected, "pre-fill rejected");
            prefill.push(cmd);
            prefill_ops.push(op);
        }
        while g.gens[m].active.len() < g.gens[m].active_target {
            let (cmd, op) = g.build(m, Kind::Gtc, START_PRICE);
            let (_, rejected) = g.apply(m, &cmd, &op, false);
            assert!(!rejected, "pre-fill rejected");
            prefill.push(cmd);
            prefill_ops.push(op);
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
        let mid = g.mid(m, commands as u64);
        g.commands += 1;
        let kind = g.choose(m);
        let (cmd, op) = g.build(m, kind, mid);
        let (trades, rejected) = g.apply(m, &cmd, &op, false);
        match op {
            BookOp::Place {
                tif: TimeInForce::Ioc,
                ..
            } => mix.ioc += 1,
            BookOp::Place { .. } => mix.gtc += 1,
            BookOp::Cancel { .. } => mix.cancel += 1,
            BookOp::Move { .. } => mix.replace_move += 1,
            BookOp::Reduce { .. } => mix.replace_reduce += 1,
            BookOp::Nop => {}
        }
        if trades > 0 {
            mix.with_trades += 1;
            mix.moves_with_trades += matches!(op, BookOp::Move { .. }) as u64;
            mix.trades += trades;
        }
        if rejected {
            let reason = match g.events.last() {
                Some(Event::Rejected { reason, .. }) => reason.name(),
                _ => "unknown",
            };
            *mix.rejects.entry(reason).or_default() += 1;
        }
        cmds.push(cmd);
        ops.push(if rejected { BookOp::Nop } else { op });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crash_falls_holds_and_recovers() {
        let n = 100_000;
        assert_eq!(crash_offset(59_999, n), 0);
        assert_eq!(crash_offset(60_000, n), 0);
        assert_eq!(crash_offset(61_000, n), -CRASH_TICKS);
        assert_eq!(crash_offset(62_999, n), -CRASH_TICKS);
        assert_eq!(crash_offset(68_000, n), 0);
        assert!((60_001..68_000).all(|t| crash_offset(t, n) < 0));
    }
}
