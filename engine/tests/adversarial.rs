//! Adversarial commands: every field a client or an admin can set, at its extremes
//! (prices and amounts near the integer limits, zero and maximal quantities, fees above
//! 100%, ids 0 and u32::MAX, market specs whose products overflow even i128), on markets
//! with extreme but legal specs. The engine must answer each command (an event or a
//! reject), keep every invariant after every command (the checked mode), answer every
//! query, and restore its own snapshot to the same state hash. Never panic: a command
//! that panics the engine is journaled first and would panic every replay.

use proptest::prelude::*;
use ringex_engine::*;

fn pick<T: Clone + std::fmt::Debug + 'static>(v: Vec<T>) -> impl Strategy<Value = T> {
    prop::sample::select(v)
}
fn price() -> impl Strategy<Value = Price> {
    prop_oneof![
        3 => pick(vec![i64::MIN, -1, 0, 1, 2, 99, 100, 101, 150, i64::MAX, i64::MAX - 1, 1 << 62, 1 << 54, 3394337824647765222, 340284171788185628, 1 << 32]),
        3 => 1i64..300,
        1 => any::<i64>(),
    ]
}
fn qty() -> impl Strategy<Value = Qty> {
    prop_oneof![
        3 => pick(vec![0u64, 1, 2, 3, 1_000_000_000, u64::MAX, u64::MAX - 1, 1 << 62, i64::MAX as u64, (i64::MAX as u64) + 1, 1 << 32, 999994696]),
        3 => 1u64..20,
        1 => any::<u64>(),
    ]
}
fn amount() -> impl Strategy<Value = Amount> {
    prop_oneof![
        3 => pick(vec![i64::MIN, -1, 0, 1, 100, 1_000_000, i64::MAX, i64::MAX / 2, i64::MAX - 1, 1 << 62]),
        2 => 1i64..1_000_000_000,
        1 => any::<i64>(),
    ]
}
fn fee() -> impl Strategy<Value = u32> {
    pick(vec![
        0u32,
        1,
        1000,
        48_576,
        999_999,
        1_000_000,
        1_000_001,
        u32::MAX,
    ])
}
fn account() -> impl Strategy<Value = AccountId> {
    pick(vec![0u32, 1, 2, u32::MAX, 77])
}
fn market_id() -> impl Strategy<Value = MarketId> {
    pick(vec![0u32, 1, 2, 3, 65_535, 65_536, u32::MAX])
}
fn asset_id() -> impl Strategy<Value = AssetId> {
    pick(vec![0u32, 1, 2, 3, 65_535, 65_536, u32::MAX])
}
fn side() -> impl Strategy<Value = Side> {
    pick(vec![Side::Buy, Side::Sell])
}
fn tif() -> impl Strategy<Value = TimeInForce> {
    pick(vec![
        TimeInForce::Gtc,
        TimeInForce::Ioc,
        TimeInForce::Fok,
        TimeInForce::PostOnly,
    ])
}
fn stp() -> impl Strategy<Value = StpMode> {
    pick(vec![
        StpMode::None,
        StpMode::CancelNewest,
        StpMode::CancelOldest,
        StpMode::CancelBoth,
    ])
}
fn status() -> impl Strategy<Value = MarketStatus> {
    pick(vec![
        MarketStatus::Open,
        MarketStatus::Halted,
        MarketStatus::CancelOnly,
        MarketStatus::Closed,
    ])
}
fn oref() -> impl Strategy<Value = OrderRef> {
    prop_oneof![
        (0u64..12).prop_map(OrderRef::Exchange),
        pick(vec![0u64, 1, 2, u64::MAX]).prop_map(OrderRef::Client),
        Just(OrderRef::Exchange(u64::MAX)),
    ]
}
/// Legal tick sizes, up to ones whose products with large prices overflow even i128.
const TICK_SIZES: [i64; 8] = [
    1,
    2,
    16,
    10,
    1_000_000_000_000,
    100_000_000_000_000,
    1 << 54,
    i64::MAX,
];

/// tick_size, lot_size, qty_min, qty_max, band_ppm, reference_price, maker and taker fee.
type Terms = (i64, i64, u64, u64, u32, i64, u32, u32);

fn market_spec(market: MarketId, base: AssetId, quote: AssetId, terms: Terms) -> MarketSpec {
    let (tick_size, lot_size, qty_min, qty_max, band_ppm, reference_price, maker, taker) = terms;
    MarketSpec {
        market,
        symbol: Symbol::new("M").unwrap(),
        base,
        quote,
        tick_size,
        lot_size,
        qty_min,
        qty_max,
        band_ppm,
        reference_price,
        maker_fee_ppm: maker,
        taker_fee_ppm: taker,
    }
}

fn spec() -> impl Strategy<Value = MarketSpec> {
    (
        market_id(),
        asset_id(),
        asset_id(),
        (
            pick([&[-1, 0][..], &TICK_SIZES[..]].concat()),
            pick(vec![-1i64, 0, 1, 1000, 1 << 32, i64::MAX]),
            pick(vec![0u64, 1, 2, u64::MAX]),
            pick(vec![0u64, 1, 10, 1_000_000_000, u64::MAX]),
            pick(vec![0u32, 1, 500_000, 1_000_000, 1_000_001, u32::MAX]),
            pick(vec![-1i64, 0, 1, 100, 1 << 62, i64::MAX]),
            fee(),
            fee(),
        ),
    )
        .prop_map(|(market, base, quote, terms)| market_spec(market, base, quote, terms))
}
fn place() -> impl Strategy<Value = Command> {
    (
        account(),
        market_id(),
        pick(vec![0u64, 1, 2, u64::MAX]),
        side(),
        pick(vec![OrderKind::Limit, OrderKind::Market]),
        tif(),
        price(),
        qty(),
        prop_oneof![3 => Just(0i64), 1 => amount()],
        stp(),
    )
        .prop_map(
            |(account, market, client_order_id, side, kind, tif, price, qty, quote_budget, stp)| {
                Command::Place(PlaceOrder {
                    account,
                    market,
                    client_order_id,
                    side,
                    kind,
                    tif,
                    price,
                    qty,
                    quote_budget,
                    stp,
                })
            },
        )
}
fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        12 => place(),
        // market orders with a legal shape
        4 => (account(), market_id(), side(), pick(vec![TimeInForce::Ioc, TimeInForce::Fok]), qty(), stp()).prop_map(|(account, market, side, tif, qty, stp)|
            Command::Place(PlaceOrder { account, market, client_order_id: 0, side, kind: OrderKind::Market, tif, price: 0, qty, quote_budget: 0, stp })),
        3 => (account(), market_id(), amount(), stp()).prop_map(|(account, market, quote_budget, stp)|
            Command::Place(PlaceOrder { account, market, client_order_id: 0, side: Side::Buy, kind: OrderKind::Market, tif: TimeInForce::Ioc, price: 0, qty: 0, quote_budget, stp })),
        3 => (account(), market_id(), oref()).prop_map(|(account, market, order)| Command::Cancel { account, market, order }),
        5 => (account(), market_id(), oref(), price(), qty()).prop_map(|(account, market, order, price, qty)| Command::Replace { account, market, order, price, qty }),
        1 => (account(), prop::option::of(market_id())).prop_map(|(account, market)| Command::CancelAll { account, market }),
        1 => (asset_id(), any::<u8>()).prop_map(|(asset, decimals)| Command::CreateAsset { asset, symbol: Symbol::new("A").unwrap(), decimals }),
        2 => spec().prop_map(Command::CreateMarket),
        1 => account().prop_map(|account| Command::CreateAccount { account }),
        4 => (account(), asset_id(), amount(), 0u64..6).prop_map(|(account, asset, amount, external_ref)| Command::Deposit { account, asset, amount, external_ref }),
        2 => (account(), asset_id(), amount(), 0u64..6).prop_map(|(account, asset, amount, external_ref)| Command::Withdraw { account, asset, amount, external_ref }),
        1 => (market_id(), fee(), fee()).prop_map(|(market, maker_fee_ppm, taker_fee_ppm)| Command::SetMarketFees { market, maker_fee_ppm, taker_fee_ppm }),
        1 => (account(), market_id(), prop::option::of((fee(), fee()))).prop_map(|(account, market, fees)| Command::SetFeeTier { account, market, fees }),
        1 => (market_id(), status(), any::<bool>()).prop_map(|(market, status, cancel_resting)| Command::SetMarketStatus { market, status, cancel_resting }),
        1 => account().prop_map(|account| Command::SuspendAccount { account }),
        1 => account().prop_map(|account| Command::ResumeAccount { account }),
        1 => (account(), pick(vec![0u64, 1, u64::MAX])).prop_map(|(account, key_id)| Command::AddApiKey { account, key_id, secret_hash: [1; 32], permissions: u32::MAX }),
        1 => pick(vec![0u64, 1, u64::MAX]).prop_map(|key_id| Command::RevokeApiKey { key_id }),
    ]
}

fn genesis(s1: MarketSpec, s2: MarketSpec) -> Vec<Command> {
    let mut v = vec![
        Command::CreateAsset {
            asset: 1,
            symbol: Symbol::new("A1").unwrap(),
            decimals: 8,
        },
        Command::CreateAsset {
            asset: 2,
            symbol: Symbol::new("A2").unwrap(),
            decimals: 18,
        },
        Command::CreateAsset {
            asset: 3,
            symbol: Symbol::new("A3").unwrap(),
            decimals: 0,
        },
        Command::CreateMarket(MarketSpec {
            market: 1,
            base: 1,
            quote: 2,
            ..s1
        }),
        Command::CreateMarket(MarketSpec {
            market: 2,
            base: 2,
            quote: 1,
            ..s2
        }),
    ];
    let mut r = 100;
    for a in [1u32, 2, u32::MAX] {
        v.push(Command::CreateAccount { account: a });
    }
    for a in [1u32, 2, u32::MAX, 0] {
        for asset in [1u32, 2, 3] {
            v.push(Command::Deposit {
                account: a,
                asset,
                amount: i64::MAX / 5,
                external_ref: r,
            });
            r += 1;
        }
    }
    v
}

fn run(cmds: &[Command]) {
    let mut ex = Exchange::new();
    ex.set_checked(true);
    let mut out = Vec::new();
    let mut replies = Vec::new();
    for c in cmds {
        out.clear();
        ex.apply(c, &mut out);
        assert!(!out.is_empty());
        for a in [0u32, 1, 2, u32::MAX, 77] {
            ex.query(&Query::Balances { account: a }, &mut replies);
            ex.query(
                &Query::OpenOrders {
                    account: a,
                    market: None,
                },
                &mut replies,
            );
            ex.query(
                &Query::OpenOrders {
                    account: a,
                    market: Some(1),
                },
                &mut replies,
            );
        }
        ex.query(&Query::ApiKey { key_id: 1 }, &mut replies);
        replies.clear();
    }
    let snap = ex.snapshot();
    let back = Exchange::restore(&snap).expect("own snapshot restores");
    assert_eq!(back.state_hash(), ex.state_hash());
}

fn spec_legal() -> impl Strategy<Value = MarketSpec> {
    (
        pick(TICK_SIZES.to_vec()),
        pick(vec![1i64, 1000, 1 << 32, i64::MAX]),
        pick(vec![1u64, 2]),
        pick(vec![1u64, 10, 1_000_000_000, u64::MAX]),
        pick(vec![0u32, 1, 500_000, 1_000_000]),
        pick(vec![1i64, 100, 1 << 62, i64::MAX]),
        pick(vec![0u32, 1000, 48_576, 1_000_000]),
        pick(vec![0u32, 1000, 48_576, 1_000_000]),
    )
        .prop_map(|terms| market_spec(1, 1, 2, terms))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]
    #[test]
    fn adversarial_commands_never_panic_or_break_an_invariant(s1 in spec_legal(), s2 in spec_legal(), cmds in prop::collection::vec(command(), 1..60)) {
        let mut all = genesis(s1, s2);
        all.extend(cmds);
        run(&all);
    }
}
