//! Pinned histories: fixed command streams whose events and state hashes are recorded
//! here as constants. The engine's semantics are its contract with every journal ever
//! written: a change to how any of these histories plays out (an event, an order of
//! events, a balance, the canonical encoding of the state) fails this file. Internal
//! data structures may change freely as long as these values do not.
//!
//! The streams come from a small deterministic generator (xorshift, fixed seeds) that
//! covers every trading and admin command: limit, market, budget, IOC, FOK and post-only
//! orders under every self-trade mode, client ids (also duplicated), cancels and
//! replaces by both ids, cancel-all in one and all markets, fee changes and tiers,
//! market status changes with and without cancelling, suspensions, deposits and
//! withdrawals.
//!
//! `tests/data/pinned-v1.snap` is a snapshot written by the format-1 code after the
//! first history: it must keep restoring to the same state.

use ringex_engine::codec::encode_event_vec;
use ringex_engine::*;

const QUOTE: AssetId = 1;
const MARKETS: u32 = 3;
const ACCOUNTS: u32 = 24;

struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn spec(market: MarketId) -> MarketSpec {
    MarketSpec {
        market,
        symbol: Symbol::new(&format!("M{market}")).unwrap(),
        base: 1 + market,
        quote: QUOTE,
        tick_size: 10,
        lot_size: 100,
        qty_min: 1,
        qty_max: 500,
        band_ppm: if market == 3 { 0 } else { 200_000 },
        reference_price: 1_000,
        maker_fee_ppm: 100 * market,
        taker_fee_ppm: 700 * market,
    }
}

fn setup() -> Vec<Command> {
    let mut cmds = vec![Command::CreateAsset {
        asset: QUOTE,
        symbol: Symbol::new("USD").unwrap(),
        decimals: 2,
    }];
    for m in 1..=MARKETS {
        cmds.push(Command::CreateAsset {
            asset: 1 + m,
            symbol: Symbol::new(&format!("B{m}")).unwrap(),
            decimals: 8,
        });
        cmds.push(Command::CreateMarket(spec(m)));
    }
    let mut external_ref = 1;
    for a in 1..=ACCOUNTS {
        cmds.push(Command::CreateAccount { account: a });
        for asset in 1..=1 + MARKETS {
            cmds.push(Command::Deposit {
                account: a,
                asset,
                amount: 50_000_000 + a as i64 * 1_000,
                external_ref,
            });
            external_ref += 1;
        }
    }
    cmds
}

/// `n` commands after the setup, from `seed`. Order ids are guessed from the count of
/// commands so far (many guesses name no order, which exercises the rejects too).
fn history(seed: u64, n: usize) -> Vec<Command> {
    let mut g = Gen(seed);
    let mut cmds = setup();
    let mut places = 0u64;
    for _ in 0..n {
        let account = 1 + g.below(ACCOUNTS as u64) as u32;
        let market = 1 + g.below(MARKETS as u64) as u32;
        let side = if g.below(2) == 0 {
            Side::Buy
        } else {
            Side::Sell
        };
        let price = 900 + g.below(200) as i64;
        let qty = 1 + g.below(40);
        let client_order_id = if g.below(3) == 0 { 0 } else { g.below(30) };
        let stp = [
            StpMode::None,
            StpMode::CancelNewest,
            StpMode::CancelOldest,
            StpMode::CancelBoth,
        ][g.below(4) as usize];
        let recent = places.saturating_sub(g.below(40)).max(1);
        let order = if g.below(4) == 0 {
            OrderRef::Client(g.below(30))
        } else {
            OrderRef::Exchange(recent)
        };
        let roll = g.below(1000);
        let cmd = match roll {
            0..=449 => {
                places += 1;
                let tif = match g.below(10) {
                    0 => TimeInForce::Ioc,
                    1 => TimeInForce::Fok,
                    2 => TimeInForce::PostOnly,
                    _ => TimeInForce::Gtc,
                };
                Command::Place(PlaceOrder {
                    account,
                    market,
                    client_order_id,
                    side,
                    kind: OrderKind::Limit,
                    tif,
                    price,
                    qty,
                    quote_budget: 0,
                    stp,
                })
            }
            450..=499 => {
                places += 1;
                let budget = g.below(3) == 0 && side == Side::Buy;
                Command::Place(PlaceOrder {
                    account,
                    market,
                    client_order_id,
                    side,
                    kind: OrderKind::Market,
                    tif: if !budget && g.below(3) == 0 {
                        TimeInForce::Fok
                    } else {
                        TimeInForce::Ioc
                    },
                    price: 0,
                    qty: if budget { 0 } else { qty },
                    quote_budget: if budget { g.below(400_000) as i64 } else { 0 },
                    stp,
                })
            }
            500..=719 => Command::Cancel {
                account,
                market,
                order,
            },
            720..=929 => Command::Replace {
                account,
                market,
                order,
                price: if g.below(2) == 0 { price } else { 1_000 },
                qty,
            },
            930..=944 => Command::CancelAll {
                account,
                market: if g.below(2) == 0 { Some(market) } else { None },
            },
            945..=954 => Command::SetMarketStatus {
                market,
                status: [
                    MarketStatus::Open,
                    MarketStatus::Open,
                    MarketStatus::Open,
                    MarketStatus::Open,
                    MarketStatus::Halted,
                    MarketStatus::CancelOnly,
                    MarketStatus::Closed,
                ][g.below(7) as usize],
                cancel_resting: g.below(4) == 0,
            },
            955..=964 => Command::SetFeeTier {
                account,
                market,
                fees: if g.below(3) == 0 {
                    None
                } else {
                    Some((g.below(3000) as u32, g.below(3000) as u32))
                },
            },
            965..=969 => Command::SetMarketFees {
                market,
                maker_fee_ppm: g.below(2000) as u32,
                taker_fee_ppm: g.below(4000) as u32,
            },
            970..=979 => {
                if g.below(2) == 0 {
                    Command::SuspendAccount { account }
                } else {
                    Command::ResumeAccount { account }
                }
            }
            980..=989 => Command::Deposit {
                account,
                asset: 1 + g.below(1 + MARKETS as u64) as u32,
                amount: g.below(1_000_000) as i64,
                external_ref: 10_000 + g.below(5_000),
            },
            _ => Command::Withdraw {
                account,
                asset: 1 + g.below(1 + MARKETS as u64) as u32,
                amount: g.below(10_000_000) as i64,
                external_ref: 10_000 + g.below(5_000),
            },
        };
        cmds.push(cmd);
    }
    cmds
}

/// Applies `cmds` and returns the exchange, a digest of every event's encoding in order,
/// and the number of events.
fn play(cmds: &[Command]) -> (Exchange, u128, usize) {
    let mut ex = Exchange::new();
    ex.set_checked(true);
    let mut out = Vec::new();
    let mut bytes = Vec::new();
    let mut events = 0;
    for c in cmds {
        out.clear();
        ex.apply(c, &mut out);
        for e in &out {
            encode_event_vec(e, &mut bytes);
        }
        events += out.len();
    }
    (ex, fnv128(&bytes), events)
}

/// FNV-1a over 128 bits: enough to pin a byte stream.
fn fnv128(bytes: &[u8]) -> u128 {
    let mut h: u128 = 0x6c62272e07bb014262b821756295c58d;
    for &b in bytes {
        h ^= b as u128;
        h = h.wrapping_mul(0x0000000001000000000000000000013B);
    }
    h
}

/// (seed, commands, state hash, events digest, event count)
const PINNED: [(u64, usize, u128, u128, usize); 4] = [
    (
        0x1,
        4_000,
        0x958c6eabdb0997673f35036ec5845fab,
        0xeabe3209c1cb52e0ad3432d4ba2f0a32,
        5813,
    ),
    (
        0x5eed,
        4_000,
        0x69635900349e5e5a35314fec88552ea9,
        0x823d2752563d57afad41d28e7f9c6598,
        6180,
    ),
    (
        0xdead_beef,
        8_000,
        0x3bef8917028f4629f7bab6869bbda513,
        0x97e89116dbab1025c0a164d104c30933,
        11056,
    ),
    (
        0x0123_4567_89ab_cdef,
        2_000,
        0x2390c756408615f817367a20c4f4b13c,
        0x3ece954d0f8cdc3ab6698819fabb9ccb,
        2988,
    ),
];

#[test]
fn pinned_histories_give_their_recorded_events_and_state_hashes() {
    let mut failures = Vec::new();
    for (seed, n, hash, digest, count) in PINNED {
        let (ex, got_digest, got_count) = play(&history(seed, n));
        let got = (ex.state_hash(), got_digest, got_count);
        if got != (hash, digest, count) {
            failures.push(format!(
                "({seed:#x}, {n}, {:#034x}, {:#034x}, {}),",
                got.0, got.1, got.2
            ));
        }
    }
    assert!(failures.is_empty(), "changed:\n{}", failures.join("\n"));
}

#[test]
fn the_pinned_histories_rest_trade_and_reject() {
    // The histories are only worth pinning if they do things: orders rest, trade,
    // cancel and get rejected for many reasons.
    let (ex, _, _) = play(&history(PINNED[0].0, PINNED[0].1));
    let resting: usize = ex
        .market_ids()
        .map(|m| ex.market(m).unwrap().book.order_count())
        .sum();
    let trades: u64 = ex
        .market_ids()
        .map(|m| ex.market(m).unwrap().trade_count)
        .sum();
    assert!(resting > 10, "{resting} resting");
    assert!(trades > 200, "{trades} trades");
}

const SNAPSHOT_V1: &[u8] = include_bytes!("data/pinned-v1.snap");

#[test]
fn a_snapshot_written_by_format_1_restores_to_the_same_state_and_continues() {
    let (seed, n, hash, _, _) = PINNED[0];
    let restored = Exchange::restore(SNAPSHOT_V1).expect("restores");
    assert_eq!(restored.state_hash(), hash);
    // Restored, then continued: the same as never having stopped.
    let cmds = history(seed, n + 1_000);
    let (straight, _, _) = play(&cmds);
    let mut ex = restored;
    ex.set_checked(true);
    let mut out = Vec::new();
    for c in &cmds[cmds.len() - 1_000..] {
        ex.apply(c, &mut out);
    }
    assert_eq!(ex.state_hash(), straight.state_hash());
}
