//! The exchange's rules, one test each. Read top to bottom, this file is the
//! specification of `Exchange::apply` (with `engine/README.md`).

use ringex_engine::*;

const BTC: AssetId = 1;
const USD: AssetId = 2;
const M: MarketId = 1;
const ALICE: AccountId = 10;
const BOB: AccountId = 11;

/// One market BTC/USD: 1 tick = 1 USD minor unit per lot, 1 lot = 1 BTC minor unit,
/// maker 0.1%, taker 0.2%, band ±50% around 100.
fn spec() -> MarketSpec {
    MarketSpec {
        market: M,
        symbol: Symbol::new("BTC-USD").unwrap(),
        base: BTC,
        quote: USD,
        tick_size: 1,
        lot_size: 1,
        qty_min: 1,
        qty_max: 1_000_000,
        band_ppm: 500_000,
        reference_price: 100,
        maker_fee_ppm: 1_000,
        taker_fee_ppm: 2_000,
    }
}

struct World {
    ex: Exchange,
    events: Vec<Event>,
    next_ref: u64,
}

impl World {
    fn new() -> World {
        World::with_spec(spec())
    }

    fn with_spec(spec: MarketSpec) -> World {
        let mut w = World {
            ex: Exchange::new(),
            events: Vec::new(),
            next_ref: 1,
        };
        w.ex.set_checked(true);
        w.ok(Command::CreateAsset {
            asset: BTC,
            symbol: Symbol::new("BTC").unwrap(),
            decimals: 8,
        });
        w.ok(Command::CreateAsset {
            asset: USD,
            symbol: Symbol::new("USD").unwrap(),
            decimals: 2,
        });
        w.ok(Command::CreateMarket(spec));
        for account in [ALICE, BOB] {
            w.ok(Command::CreateAccount { account });
            w.deposit(account, BTC, 1_000_000);
            w.deposit(account, USD, 1_000_000);
        }
        w
    }

    fn apply(&mut self, cmd: Command) -> Vec<Event> {
        self.events.clear();
        self.ex.apply(&cmd, &mut self.events);
        self.events.clone()
    }

    /// Applies a command that must not be rejected.
    fn ok(&mut self, cmd: Command) -> Vec<Event> {
        let ev = self.apply(cmd);
        assert!(
            !ev.iter().any(|e| matches!(e, Event::Rejected { .. })),
            "{cmd:?} rejected: {ev:?}"
        );
        ev
    }

    /// Applies a command that must be rejected with `reason`, changing nothing.
    fn rejected(&mut self, cmd: Command, reason: RejectReason) {
        let before = self.ex.state_hash();
        let ev = self.apply(cmd);
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert!(
            matches!(ev[0], Event::Rejected { reason: r, .. } if r == reason),
            "expected {reason:?}, got {ev:?}"
        );
        assert_eq!(
            before,
            self.ex.state_hash(),
            "a rejection changed the state"
        );
    }

    fn deposit(&mut self, account: AccountId, asset: AssetId, amount: Amount) {
        let external_ref = self.next_ref;
        self.next_ref += 1;
        self.ok(Command::Deposit {
            account,
            asset,
            amount,
            external_ref,
        });
    }

    fn bal(&self, account: AccountId, asset: AssetId) -> (Amount, Amount) {
        let b = self.ex.balance(account, asset);
        (b.available, b.held)
    }

    fn book(&self) -> &OrderBook<ringex_engine::exchange::OrderMeta> {
        &self.ex.market(M).unwrap().book
    }

    /// Places a GTC limit order and returns its order id.
    fn limit(&mut self, account: AccountId, side: Side, price: Price, qty: Qty) -> OrderId {
        self.place(order(account, side, price, qty))
    }

    fn place(&mut self, p: PlaceOrder) -> OrderId {
        let ev = self.ok(Command::Place(p));
        match ev[0] {
            Event::Accepted { order_id, .. } => order_id,
            _ => panic!("not accepted: {ev:?}"),
        }
    }
}

fn order(account: AccountId, side: Side, price: Price, qty: Qty) -> PlaceOrder {
    PlaceOrder {
        account,
        market: M,
        client_order_id: 0,
        side,
        kind: OrderKind::Limit,
        tif: TimeInForce::Gtc,
        price,
        qty,
        quote_budget: 0,
        stp: StpMode::None,
    }
}

fn market_order(account: AccountId, side: Side, qty: Qty, budget: Amount) -> PlaceOrder {
    PlaceOrder {
        kind: OrderKind::Market,
        tif: TimeInForce::Ioc,
        price: 0,
        quote_budget: budget,
        ..order(account, side, 0, qty)
    }
}

fn trades(ev: &[Event]) -> Vec<(OrderId, Price, Qty)> {
    ev.iter()
        .filter_map(|e| match *e {
            Event::Trade {
                maker_order_id,
                price,
                qty,
                ..
            } => Some((maker_order_id, price, qty)),
            _ => None,
        })
        .collect()
}

fn cancelled_reason(ev: &[Event]) -> Option<(OrderId, Qty, CancelReason)> {
    ev.iter().rev().find_map(|e| match *e {
        Event::Cancelled {
            order_id,
            remaining_qty,
            reason,
            ..
        } => Some((order_id, remaining_qty, reason)),
        _ => None,
    })
}

// ------------------------------------------------------------------ holds

#[test]
fn a_buy_holds_notional_plus_worst_case_taker_fee_rounded_up() {
    let mut w = World::new();
    w.limit(ALICE, Side::Buy, 101, 7); // 707 + ceil(707 * 0.002) = 707 + 2
    assert_eq!(w.bal(ALICE, USD), (1_000_000 - 709, 709));
}

#[test]
fn a_sell_holds_its_base_quantity() {
    let mut w = World::new();
    w.limit(ALICE, Side::Sell, 120, 30);
    assert_eq!(w.bal(ALICE, BTC), (1_000_000 - 30, 30));
}

#[test]
fn cancel_releases_the_whole_hold() {
    let mut w = World::new();
    let id = w.limit(ALICE, Side::Buy, 99, 10);
    let ev = w.ok(Command::Cancel {
        account: ALICE,
        market: M,
        order: OrderRef::Exchange(id),
    });
    assert_eq!(
        cancelled_reason(&ev),
        Some((id, 10, CancelReason::Requested))
    );
    assert_eq!(w.bal(ALICE, USD), (1_000_000, 0));
}

#[test]
fn an_order_beyond_available_balance_is_rejected() {
    let mut w = World::new();
    w.rejected(
        Command::Place(order(ALICE, Side::Sell, 100, 1_000_001)),
        RejectReason::AboveMaxQuantity,
    );
    w.rejected(
        Command::Place(order(ALICE, Side::Buy, 149, 7_000)),
        RejectReason::InsufficientBalance,
    );
    assert_eq!(w.bal(ALICE, USD), (1_000_000, 0));
}

// ------------------------------------------------------------------ fills and fees

#[test]
fn a_fill_settles_both_sides_and_pays_fees_to_the_fee_account() {
    let mut w = World::new();
    let maker = w.limit(ALICE, Side::Sell, 100, 1_000);
    let ev = w.ok(Command::Place(order(BOB, Side::Buy, 100, 1_000)));
    assert_eq!(trades(&ev), vec![(maker, 100, 1_000)]);
    // Notional 100,000: maker fee 100, taker fee 200, both in USD.
    assert_eq!(w.bal(ALICE, BTC), (999_000, 0));
    assert_eq!(w.bal(ALICE, USD), (1_000_000 + 100_000 - 100, 0));
    assert_eq!(w.bal(BOB, BTC), (1_001_000, 0));
    assert_eq!(w.bal(BOB, USD), (1_000_000 - 100_000 - 200, 0));
    assert_eq!(w.bal(FEE_ACCOUNT, USD), (300, 0));
}

#[test]
fn fees_are_rounded_down_per_fill() {
    let mut w = World::new();
    w.limit(ALICE, Side::Sell, 100, 4);
    let ev = w.ok(Command::Place(order(BOB, Side::Buy, 100, 4)));
    // Notional 400: maker 0.4 -> 0, taker 0.8 -> 0.
    assert!(matches!(
        ev[1],
        Event::Trade {
            maker_fee: 0,
            taker_fee: 0,
            ..
        }
    ));
}

#[test]
fn the_fill_price_is_the_makers_and_the_taker_gets_the_improvement_back() {
    let mut w = World::new();
    w.limit(ALICE, Side::Sell, 100, 1_000);
    w.ok(Command::Place(order(BOB, Side::Buy, 110, 1_000)));
    // Held 110,000 + 220 at placement; paid 100,000 + 200; the rest is free again.
    assert_eq!(w.bal(BOB, USD), (1_000_000 - 100_200, 0));
}

#[test]
fn a_partially_filled_resting_buy_keeps_exactly_what_its_remainder_needs() {
    let mut w = World::new();
    w.limit(ALICE, Side::Buy, 100, 1_000);
    w.ok(Command::Place(order(BOB, Side::Sell, 100, 400)));
    // Remainder 600 at 100: 60,000 + 120 (worst-case fee, rounded up).
    assert_eq!(w.bal(ALICE, USD).1, 60_120);
}

#[test]
fn price_time_priority_across_levels_and_within_a_level() {
    let mut w = World::new();
    let a = w.limit(ALICE, Side::Sell, 101, 5);
    let b = w.limit(BOB, Side::Sell, 100, 5);
    let c = w.limit(ALICE, Side::Sell, 100, 5);
    let ev = w.ok(Command::Place(order(BOB, Side::Buy, 101, 12)));
    assert_eq!(trades(&ev), vec![(b, 100, 5), (c, 100, 5), (a, 101, 2)]);
}

#[test]
fn level_events_follow_each_fill_and_the_resting_remainder() {
    let mut w = World::new();
    let maker = w.limit(ALICE, Side::Sell, 100, 3);
    let ev = w.ok(Command::Place(order(BOB, Side::Buy, 100, 5)));
    let taker = maker + 1;
    assert!(matches!(ev[0], Event::Accepted { order_id, .. } if order_id == taker));
    assert!(matches!(
        ev[1],
        Event::Trade {
            qty: 3,
            maker_remaining: 0,
            taker_remaining: 2,
            ..
        }
    ));
    assert_eq!(
        ev[2],
        Event::Level {
            market: M,
            side: Side::Sell,
            price: 100,
            total_qty: 0
        }
    );
    assert_eq!(
        ev[3],
        Event::Level {
            market: M,
            side: Side::Buy,
            price: 100,
            total_qty: 2
        }
    );
    assert_eq!(ev.len(), 4);
}

// ------------------------------------------------------------------ time in force

#[test]
fn an_ioc_remainder_is_cancelled_and_reported() {
    let mut w = World::new();
    w.limit(ALICE, Side::Sell, 100, 3);
    let ev = w.ok(Command::Place(PlaceOrder {
        tif: TimeInForce::Ioc,
        ..order(BOB, Side::Buy, 100, 5)
    }));
    let taker = w.ex.next_order_id() - 1;
    assert_eq!(
        cancelled_reason(&ev),
        Some((taker, 2, CancelReason::ImmediateOrCancel))
    );
    assert_eq!(w.book().order_count(), 0);
    assert_eq!(w.bal(BOB, USD).1, 0);
}

#[test]
fn fok_fills_entirely_or_trades_nothing() {
    let mut w = World::new();
    w.limit(ALICE, Side::Sell, 100, 3);
    let fok = PlaceOrder {
        tif: TimeInForce::Fok,
        ..order(BOB, Side::Buy, 100, 5)
    };
    let ev = w.ok(Command::Place(fok));
    assert!(trades(&ev).is_empty());
    assert_eq!(cancelled_reason(&ev).unwrap().2, CancelReason::FillOrKill);
    assert_eq!(w.bal(BOB, USD), (1_000_000, 0));
    let ev = w.ok(Command::Place(PlaceOrder { qty: 3, ..fok }));
    assert_eq!(trades(&ev).len(), 1);
}

#[test]
fn a_post_only_order_that_would_take_is_rejected() {
    let mut w = World::new();
    w.limit(ALICE, Side::Sell, 100, 3);
    let po = PlaceOrder {
        tif: TimeInForce::PostOnly,
        ..order(BOB, Side::Buy, 100, 1)
    };
    w.rejected(Command::Place(po), RejectReason::PostOnlyWouldTake);
    w.place(PlaceOrder { price: 99, ..po });
}

#[test]
fn a_market_buy_by_budget_never_spends_more_than_its_budget() {
    let mut w = World::new();
    w.limit(ALICE, Side::Sell, 100, 5);
    w.limit(ALICE, Side::Sell, 120, 5);
    let ev = w.ok(Command::Place(market_order(BOB, Side::Buy, 0, 1_000)));
    // 5 lots at 100 cost 500 + 1 fee; 495 left buys 4 lots at 120 (480 + 0 fee).
    assert_eq!(trades(&ev).iter().map(|t| t.2).sum::<Qty>(), 9);
    assert_eq!(cancelled_reason(&ev).unwrap().2, CancelReason::BudgetDone);
    assert_eq!(w.bal(BOB, USD), (1_000_000 - 501 - 480, 0));
    assert_eq!(w.bal(BOB, BTC).0, 1_000_009);
}

/// The lot cap is computed with the exact fee, but each fill charges the fee rounded
/// down: what the rounding saved may buy one more lot from the same resting order. (On
/// the demo BTC-USDT market this crashed the engine: the matching loop's bound assumed
/// every pass removed a resting order, and the journaled command crashed every replay.)
#[test]
fn a_market_buy_by_budget_may_take_a_second_fill_from_the_same_resting_order() {
    let mut w = World::with_spec(MarketSpec {
        lot_size: 10_000,
        band_ppm: 100_000,
        reference_price: 6_000_000,
        maker_fee_ppm: 200,
        taker_fee_ppm: 500,
        ..spec()
    });
    w.deposit(BOB, USD, 20_000_000);
    let maker = w.limit(ALICE, Side::Sell, 5_999_999, 3);
    let ev = w.ok(Command::Place(market_order(BOB, Side::Buy, 0, 12_005_997)));
    // 1 lot costs 5,999,999 + 2,999 fee (2,999.9995 rounded down): the cap is 1 lot
    // (12,005,997 / 6,002,998.9995), and the 6,002,999 left buys one more.
    assert_eq!(
        trades(&ev),
        vec![(maker, 5_999_999, 1), (maker, 5_999_999, 1)]
    );
    assert_eq!(cancelled_reason(&ev).unwrap().2, CancelReason::BudgetDone);
    assert_eq!(w.bal(BOB, USD), (21_000_000 - 2 * 6_002_998, 0));
}

#[test]
fn a_market_buy_by_budget_whose_lot_price_exceeds_any_amount_buys_nothing() {
    let mut w = World::with_spec(MarketSpec {
        tick_size: 100_000_000_000_000,
        qty_max: 1_000_000_000,
        band_ppm: 0,
        taker_fee_ppm: 2_500,
        ..spec()
    });
    w.deposit(BOB, USD, 1_000_000_000_000_000_000);
    // price x tick x (1e6 + fee) is beyond i128: no lot is affordable (it used to wrap,
    // divide by a small number or zero, and crash).
    w.limit(ALICE, Side::Sell, 3_394_337_824_647_765_222, 1);
    let ev = w.ok(Command::Place(market_order(
        BOB,
        Side::Buy,
        0,
        1_000_000_000_000_000_000,
    )));
    assert!(trades(&ev).is_empty(), "{ev:?}");
    assert_eq!(w.bal(BOB, USD).1, 0, "the hold is released");
}

#[test]
fn an_order_whose_notional_exceeds_any_amount_is_rejected() {
    let mut w = World::with_spec(MarketSpec {
        tick_size: 1_000_000_000_000,
        qty_max: 1_000_000_000,
        band_ppm: 0,
        ..spec()
    });
    // price x qty x tick overflows i128 itself (it used to wrap to a small hold).
    w.rejected(
        Command::Place(order(
            ALICE,
            Side::Buy,
            340_284_171_788_185_628,
            999_994_696,
        )),
        RejectReason::AmountOverflow,
    );
    w.deposit(ALICE, USD, 2_000_000_000_000);
    let id = w.limit(ALICE, Side::Buy, 1, 1);
    w.rejected(
        Command::Replace {
            account: ALICE,
            market: M,
            order: OrderRef::Exchange(id),
            price: 340_284_171_788_185_628,
            qty: 999_994_696,
        },
        RejectReason::AmountOverflow,
    );
}

#[test]
fn a_markets_traded_volume_saturates_instead_of_wrapping() {
    let mut w = World::with_spec(MarketSpec {
        qty_max: u64::MAX,
        band_ppm: 0,
        reference_price: 1,
        maker_fee_ppm: 0,
        taker_fee_ppm: 0,
        ..spec()
    });
    // Each account ends up with a little more than 2^62 - 2^21 of each asset (the total
    // of an asset must fit in an i64).
    for account in [ALICE, BOB] {
        for asset in [BTC, USD] {
            w.deposit(account, asset, i64::MAX / 2 - (1 << 21));
        }
    }
    // Five trades of this many lots add up to more than u64::MAX; four do not.
    let q: Qty = (1 << 62) - (1 << 21);
    for round in 0..5 {
        let (seller, buyer) = if round % 2 == 0 {
            (ALICE, BOB)
        } else {
            (BOB, ALICE)
        };
        w.limit(seller, Side::Sell, 1, q);
        w.ok(Command::Place(order(buyer, Side::Buy, 1, q)));
    }
    assert_eq!(w.ex.market(M).unwrap().volume_lots, u64::MAX);
}

#[test]
fn a_market_buy_by_quantity_holds_at_the_top_of_the_band() {
    let mut w = World::new();
    w.limit(ALICE, Side::Sell, 100, 5);
    let ev = w.ok(Command::Place(market_order(BOB, Side::Buy, 8, 0)));
    assert_eq!(trades(&ev), vec![(1, 100, 5)]);
    assert_eq!(
        cancelled_reason(&ev).unwrap().2,
        CancelReason::ImmediateOrCancel
    );
    assert_eq!(w.bal(BOB, USD), (1_000_000 - 501, 0));
}

#[test]
fn a_market_buy_by_quantity_needs_a_price_band() {
    let mut w = World::with_spec(MarketSpec {
        band_ppm: 0,
        ..spec()
    });
    w.rejected(
        Command::Place(market_order(BOB, Side::Buy, 8, 0)),
        RejectReason::MarketBuyNeedsBand,
    );
}

#[test]
fn a_market_order_must_be_ioc_or_fok_and_carry_no_price() {
    let mut w = World::new();
    let m = market_order(BOB, Side::Sell, 8, 0);
    w.rejected(
        Command::Place(PlaceOrder {
            tif: TimeInForce::Gtc,
            ..m
        }),
        RejectReason::InvalidTimeInForce,
    );
    w.rejected(
        Command::Place(PlaceOrder { price: 5, ..m }),
        RejectReason::InvalidPrice,
    );
    w.rejected(
        Command::Place(market_order(BOB, Side::Sell, 0, 100)),
        RejectReason::InvalidQuantity,
    );
}

// ------------------------------------------------------------------ price band

#[test]
fn a_limit_price_outside_the_band_is_rejected() {
    let mut w = World::new();
    w.rejected(
        Command::Place(order(ALICE, Side::Buy, 151, 1)),
        RejectReason::PriceOutsideBand,
    );
    w.rejected(
        Command::Place(order(ALICE, Side::Sell, 49, 1)),
        RejectReason::PriceOutsideBand,
    );
    w.limit(ALICE, Side::Buy, 150, 1);
}

#[test]
fn the_band_follows_the_last_trade_price() {
    let mut w = World::new();
    w.limit(ALICE, Side::Sell, 140, 1);
    w.ok(Command::Place(order(BOB, Side::Buy, 140, 1)));
    // Reference is now 140: band 70..=210.
    w.limit(ALICE, Side::Sell, 210, 1);
    w.rejected(
        Command::Place(order(ALICE, Side::Buy, 69, 1)),
        RejectReason::PriceOutsideBand,
    );
}

// ------------------------------------------------------------------ client order ids

#[test]
fn a_client_order_id_is_unique_among_the_accounts_open_orders() {
    let mut w = World::new();
    let with_cid = PlaceOrder {
        client_order_id: 77,
        ..order(ALICE, Side::Buy, 90, 1)
    };
    w.place(with_cid);
    w.rejected(
        Command::Place(with_cid),
        RejectReason::DuplicateClientOrderId,
    );
    // Another account may use the same client id.
    w.place(PlaceOrder {
        account: BOB,
        ..with_cid
    });
    // Once the order is closed, the id is free again.
    w.ok(Command::Cancel {
        account: ALICE,
        market: M,
        order: OrderRef::Client(77),
    });
    w.place(with_cid);
}

#[test]
fn an_order_is_found_by_its_client_id_after_moves_fills_and_reductions() {
    let mut w = World::new();
    let id = w.place(PlaceOrder {
        client_order_id: 5,
        ..order(ALICE, Side::Buy, 90, 10)
    });
    let by_client = |price, qty| Command::Replace {
        account: ALICE,
        market: M,
        order: OrderRef::Client(5),
        price,
        qty,
    };
    // The move takes Bob's ask and rests where that ask was; another order of Alice's
    // then rests where the moved order was.
    w.limit(BOB, Side::Sell, 95, 2);
    w.ok(by_client(95, 10));
    let other = w.limit(ALICE, Side::Buy, 80, 1);
    // A fill changes its quantity and hold; a reduction keeps its priority.
    w.limit(BOB, Side::Sell, 95, 3);
    w.ok(by_client(95, 4));
    let ev = w.ok(Command::Cancel {
        account: ALICE,
        market: M,
        order: OrderRef::Client(5),
    });
    assert!(
        matches!(ev[0], Event::Cancelled { order_id, remaining_qty: 4, .. } if order_id == id),
        "{ev:?}"
    );
    assert!(w.book().contains(other));
    w.rejected(
        Command::Cancel {
            account: ALICE,
            market: M,
            order: OrderRef::Client(5),
        },
        RejectReason::UnknownOrder,
    );
}

#[test]
fn a_client_order_id_names_an_order_in_its_own_market_only_and_is_unique_across_markets() {
    let mut w = World::new();
    let other = MarketSpec {
        market: 2,
        symbol: Symbol::new("BTC-USD2").unwrap(),
        ..spec()
    };
    w.ok(Command::CreateMarket(other));
    let in_other = PlaceOrder {
        market: 2,
        client_order_id: 9,
        ..order(ALICE, Side::Buy, 90, 1)
    };
    w.place(in_other);
    w.rejected(
        Command::Cancel {
            account: ALICE,
            market: M,
            order: OrderRef::Client(9),
        },
        RejectReason::UnknownOrder,
    );
    w.rejected(
        Command::Place(PlaceOrder {
            market: M,
            ..in_other
        }),
        RejectReason::DuplicateClientOrderId,
    );
    w.ok(Command::Cancel {
        account: ALICE,
        market: 2,
        order: OrderRef::Client(9),
    });
}

#[test]
fn cancel_of_an_order_that_is_not_resting_or_not_yours_is_rejected() {
    let mut w = World::new();
    let id = w.limit(ALICE, Side::Buy, 90, 1);
    w.rejected(
        Command::Cancel {
            account: BOB,
            market: M,
            order: OrderRef::Exchange(id),
        },
        RejectReason::UnknownOrder,
    );
    w.rejected(
        Command::Cancel {
            account: ALICE,
            market: M,
            order: OrderRef::Exchange(id + 1),
        },
        RejectReason::UnknownOrder,
    );
    w.rejected(
        Command::Replace {
            account: ALICE,
            market: M,
            order: OrderRef::Client(5),
            price: 90,
            qty: 1,
        },
        RejectReason::UnknownOrder,
    );
}

// ------------------------------------------------------------------ replace

fn replace(id: OrderId, price: Price, qty: Qty) -> Command {
    Command::Replace {
        account: ALICE,
        market: M,
        order: OrderRef::Exchange(id),
        price,
        qty,
    }
}

#[test]
fn a_pure_quantity_decrease_keeps_time_priority_and_releases_hold() {
    let mut w = World::new();
    let first = w.limit(ALICE, Side::Sell, 100, 5);
    let second = w.limit(BOB, Side::Sell, 100, 5);
    let ev = w.ok(replace(first, 100, 2));
    assert!(matches!(
        ev[0],
        Event::Replaced {
            priority_kept: true,
            ..
        }
    ));
    assert_eq!(w.bal(ALICE, BTC), (1_000_000 - 2, 2));
    let ev = w.ok(Command::Place(order(BOB, Side::Buy, 100, 3)));
    assert_eq!(trades(&ev), vec![(first, 100, 2), (second, 100, 1)]);
}

#[test]
fn a_quantity_increase_loses_time_priority() {
    let mut w = World::new();
    let first = w.limit(ALICE, Side::Sell, 100, 5);
    let second = w.limit(BOB, Side::Sell, 100, 5);
    let ev = w.ok(replace(first, 100, 6));
    assert!(matches!(
        ev[0],
        Event::Replaced {
            priority_kept: false,
            ..
        }
    ));
    let ev = w.ok(Command::Place(order(BOB, Side::Buy, 100, 6)));
    assert_eq!(trades(&ev), vec![(second, 100, 5), (first, 100, 1)]);
}

#[test]
fn a_price_change_that_crosses_trades_at_the_resting_price() {
    let mut w = World::new();
    let bid = w.limit(BOB, Side::Buy, 95, 5);
    let ask = w.limit(ALICE, Side::Sell, 105, 5);
    let ev = w.ok(replace(ask, 90, 5));
    assert_eq!(trades(&ev), vec![(bid, 95, 5)]);
    assert_eq!(w.book().order_count(), 0);
    assert!(w.ex.account(ALICE).unwrap().open_orders.is_empty());
}

#[test]
fn a_replace_beyond_available_balance_leaves_the_order_untouched() {
    let mut w = World::new();
    let id = w.limit(ALICE, Side::Sell, 100, 5);
    w.limit(ALICE, Side::Sell, 100, 10);
    w.rejected(replace(id, 100, 1_000_001), RejectReason::AboveMaxQuantity);
    w.rejected(
        replace(id, 101, 1_000_000),
        RejectReason::InsufficientBalance,
    );
    assert_eq!(w.book().get(id).unwrap().qty, 5);
}

// ------------------------------------------------------------------ self-trade prevention

fn self_trade(stp: StpMode) -> (World, OrderId, Vec<Event>) {
    let mut w = World::new();
    let resting = w.limit(ALICE, Side::Sell, 100, 5);
    w.limit(BOB, Side::Sell, 100, 5);
    let ev = w.ok(Command::Place(PlaceOrder {
        stp,
        ..order(ALICE, Side::Buy, 100, 3)
    }));
    (w, resting, ev)
}

#[test]
fn stp_cancel_newest_cancels_the_incoming_order_only() {
    let (w, resting, ev) = self_trade(StpMode::CancelNewest);
    assert!(trades(&ev).is_empty());
    assert_eq!(cancelled_reason(&ev).unwrap().2, CancelReason::SelfTrade);
    assert_eq!(w.book().get(resting).unwrap().qty, 5);
    assert_eq!(w.bal(ALICE, USD), (1_000_000, 0));
}

#[test]
fn stp_cancel_oldest_cancels_the_resting_order_and_keeps_matching() {
    let (w, resting, ev) = self_trade(StpMode::CancelOldest);
    assert!(
        matches!(ev[1], Event::Cancelled { order_id, reason: CancelReason::SelfTrade, .. } if order_id == resting)
    );
    assert_eq!(trades(&ev), vec![(resting + 1, 100, 3)]);
    assert_eq!(w.bal(ALICE, BTC), (1_000_003, 0));
}

#[test]
fn stp_cancel_both_cancels_both_orders() {
    let (w, resting, ev) = self_trade(StpMode::CancelBoth);
    assert!(trades(&ev).is_empty());
    assert!(!w.book().contains(resting));
    assert_eq!(cancelled_reason(&ev).unwrap().2, CancelReason::SelfTrade);
    assert_eq!(w.book().order_count(), 1);
}

#[test]
fn stp_none_lets_an_account_trade_with_itself() {
    let (w, resting, ev) = self_trade(StpMode::None);
    assert_eq!(trades(&ev), vec![(resting, 100, 3)]);
    // Alice paid both fees on 300 (0 after rounding down) to herself.
    assert_eq!(w.bal(ALICE, USD), (1_000_000, 0));
}

// ------------------------------------------------------------------ cancel-all

#[test]
fn cancel_all_cancels_every_open_order_of_the_account_in_id_order() {
    let mut w = World::new();
    let a = w.limit(ALICE, Side::Buy, 90, 1);
    w.limit(BOB, Side::Buy, 90, 1);
    let b = w.limit(ALICE, Side::Sell, 110, 1);
    let ev = w.ok(Command::CancelAll {
        account: ALICE,
        market: Some(M),
    });
    let ids: Vec<_> = ev
        .iter()
        .filter_map(|e| match e {
            Event::Cancelled {
                order_id,
                reason: CancelReason::CancelAll,
                ..
            } => Some(*order_id),
            _ => None,
        })
        .collect();
    assert_eq!(ids, vec![a, b]);
    assert_eq!(
        ev.last(),
        Some(&Event::CancelAllDone {
            account: ALICE,
            count: 2
        })
    );
    assert_eq!(w.book().order_count(), 1);
}

// ------------------------------------------------------------------ market status, accounts

fn set_status(status: MarketStatus, cancel_resting: bool) -> Command {
    Command::SetMarketStatus {
        market: M,
        status,
        cancel_resting,
    }
}

#[test]
fn a_halted_market_rejects_orders_and_cancels_but_keeps_the_book() {
    let mut w = World::new();
    let id = w.limit(ALICE, Side::Buy, 90, 1);
    w.ok(set_status(MarketStatus::Halted, false));
    assert!(w.book().contains(id));
    w.rejected(
        Command::Place(order(BOB, Side::Buy, 90, 1)),
        RejectReason::MarketHalted,
    );
    w.rejected(
        Command::Cancel {
            account: ALICE,
            market: M,
            order: OrderRef::Exchange(id),
        },
        RejectReason::MarketHalted,
    );
}

#[test]
fn a_cancel_only_market_accepts_cancels_only() {
    let mut w = World::new();
    let id = w.limit(ALICE, Side::Buy, 90, 1);
    w.ok(set_status(MarketStatus::CancelOnly, false));
    w.rejected(
        Command::Place(order(BOB, Side::Buy, 90, 1)),
        RejectReason::MarketCancelOnly,
    );
    w.rejected(replace(id, 91, 1), RejectReason::MarketCancelOnly);
    w.ok(Command::Cancel {
        account: ALICE,
        market: M,
        order: OrderRef::Exchange(id),
    });
}

#[test]
fn halting_with_cancel_resting_cancels_every_resting_order() {
    let mut w = World::new();
    w.limit(ALICE, Side::Buy, 90, 1);
    w.limit(BOB, Side::Sell, 110, 1);
    let ev = w.ok(set_status(MarketStatus::Halted, true));
    assert_eq!(
        ev[0],
        Event::MarketStatus {
            market: M,
            status: MarketStatus::Halted
        }
    );
    assert_eq!(w.book().order_count(), 0);
    assert_eq!(w.bal(ALICE, USD), (1_000_000, 0));
    assert_eq!(w.bal(BOB, BTC), (1_000_000, 0));
}

#[test]
fn a_suspended_account_cannot_trade_or_withdraw_but_can_cancel() {
    let mut w = World::new();
    let id = w.limit(ALICE, Side::Buy, 90, 1);
    w.ok(Command::SuspendAccount { account: ALICE });
    w.rejected(
        Command::Place(order(ALICE, Side::Buy, 90, 1)),
        RejectReason::AccountSuspended,
    );
    w.rejected(
        Command::Withdraw {
            account: ALICE,
            asset: USD,
            amount: 1,
            external_ref: 999,
        },
        RejectReason::AccountSuspended,
    );
    w.ok(Command::Cancel {
        account: ALICE,
        market: M,
        order: OrderRef::Exchange(id),
    });
    w.ok(Command::ResumeAccount { account: ALICE });
    w.limit(ALICE, Side::Buy, 90, 1);
}

// ------------------------------------------------------------------ funds

#[test]
fn deposits_and_withdrawals_are_idempotent_by_external_reference() {
    let mut w = World::new();
    let deposit = Command::Deposit {
        account: ALICE,
        asset: USD,
        amount: 50,
        external_ref: 5_000,
    };
    w.ok(deposit);
    let ev = w.ok(deposit);
    assert!(matches!(
        ev[0],
        Event::Funds {
            duplicate: true,
            ..
        }
    ));
    assert_eq!(w.bal(ALICE, USD).0, 1_000_050);
    let withdraw = Command::Withdraw {
        account: ALICE,
        asset: USD,
        amount: 30,
        external_ref: 5_000,
    };
    w.ok(withdraw);
    w.ok(withdraw);
    assert_eq!(w.bal(ALICE, USD).0, 1_000_020);
    assert_eq!(w.ex.supply(USD), 2_000_020);
}

#[test]
fn a_withdrawal_beyond_available_is_rejected_and_does_not_consume_its_reference() {
    let mut w = World::new();
    w.limit(ALICE, Side::Sell, 100, 999_999);
    let withdraw = Command::Withdraw {
        account: ALICE,
        asset: BTC,
        amount: 2,
        external_ref: 1,
    };
    w.rejected(withdraw, RejectReason::InsufficientBalance);
    w.ok(Command::Withdraw {
        account: ALICE,
        asset: BTC,
        amount: 1,
        external_ref: 1,
    });
}

// ------------------------------------------------------------------ fees

#[test]
fn a_fee_tier_overrides_the_market_fees_for_that_account() {
    let mut w = World::new();
    w.ok(Command::SetFeeTier {
        account: BOB,
        market: M,
        fees: Some((0, 0)),
    });
    w.limit(ALICE, Side::Sell, 100, 1_000);
    let ev = w.ok(Command::Place(order(BOB, Side::Buy, 100, 1_000)));
    assert!(matches!(
        ev[1],
        Event::Trade {
            maker_fee: 100,
            taker_fee: 0,
            ..
        }
    ));
}

#[test]
fn a_fee_change_applies_to_orders_accepted_after_it() {
    let mut w = World::new();
    w.limit(ALICE, Side::Buy, 100, 1_000); // holds 100,000 + 200
    w.ok(Command::SetMarketFees {
        market: M,
        maker_fee_ppm: 50_000,
        taker_fee_ppm: 50_000,
    });
    let ev = w.ok(Command::Place(order(BOB, Side::Sell, 100, 1_000)));
    assert!(matches!(
        ev[1],
        Event::Trade {
            maker_fee: 100,
            taker_fee: 5_000,
            ..
        }
    ));
    assert_eq!(w.bal(ALICE, USD), (1_000_000 - 100_100, 0));
}

#[test]
fn fees_above_one_hundred_percent_are_rejected() {
    let mut w = World::new();
    w.rejected(
        Command::SetMarketFees {
            market: M,
            maker_fee_ppm: 1_000_001,
            taker_fee_ppm: 0,
        },
        RejectReason::InvalidFee,
    );
}

// ------------------------------------------------------------------ admin

#[test]
fn admin_objects_are_created_once_and_validated() {
    let mut w = World::new();
    w.rejected(
        Command::CreateAsset {
            asset: BTC,
            symbol: Symbol::new("X").unwrap(),
            decimals: 8,
        },
        RejectReason::AssetExists,
    );
    w.rejected(
        Command::CreateMarket(MarketSpec {
            market: 2,
            quote: 9,
            ..spec()
        }),
        RejectReason::UnknownAsset,
    );
    w.rejected(
        Command::CreateMarket(MarketSpec {
            market: 2,
            tick_size: 0,
            ..spec()
        }),
        RejectReason::InvalidMarketSpec,
    );
    w.rejected(Command::CreateMarket(spec()), RejectReason::MarketExists);
    w.rejected(
        Command::CreateAccount { account: ALICE },
        RejectReason::AccountExists,
    );
}

#[test]
fn api_keys_store_only_the_secret_hash_and_can_be_revoked() {
    let mut w = World::new();
    let add = Command::AddApiKey {
        account: ALICE,
        key_id: 42,
        secret_hash: [7; 32],
        permissions: 3,
    };
    w.ok(add);
    w.rejected(add, RejectReason::ApiKeyExists);
    assert_eq!(w.ex.api_key(42).unwrap().secret_hash, [7; 32]);
    w.ok(Command::RevokeApiKey { key_id: 42 });
    assert!(w.ex.api_key(42).is_none());
    w.rejected(
        Command::RevokeApiKey { key_id: 42 },
        RejectReason::UnknownApiKey,
    );
}

// ------------------------------------------------------------------ determinism

fn busy_history(w: &mut World) {
    for i in 0..50u64 {
        let price = 95 + (i * 7 % 11) as Price;
        let side = if i % 3 == 0 { Side::Sell } else { Side::Buy };
        let account = if i % 2 == 0 { ALICE } else { BOB };
        w.apply(Command::Place(order(account, side, price, 1 + i % 4)));
        if i % 5 == 0 {
            w.apply(Command::Cancel {
                account,
                market: M,
                order: OrderRef::Exchange(i / 2 + 1),
            });
        }
    }
}

#[test]
fn identical_histories_give_identical_state_hashes() {
    let (mut a, mut b) = (World::new(), World::new());
    busy_history(&mut a);
    busy_history(&mut b);
    assert_eq!(a.ex.state_hash(), b.ex.state_hash());
    a.limit(ALICE, Side::Buy, 80, 1);
    assert_ne!(a.ex.state_hash(), b.ex.state_hash());
}

#[test]
fn restore_then_continue_equals_never_having_stopped() {
    let mut a = World::new();
    busy_history(&mut a);
    let mut b = World {
        ex: Exchange::restore(&a.ex.snapshot()).unwrap(),
        events: Vec::new(),
        next_ref: a.next_ref,
    };
    b.ex.set_checked(true);
    assert_eq!(a.ex.state_hash(), b.ex.state_hash());
    let tail = |w: &mut World| {
        let mut all = Vec::new();
        all.extend(w.apply(Command::Place(order(BOB, Side::Sell, 90, 10))));
        all.extend(w.apply(Command::Place(order(ALICE, Side::Buy, 104, 10))));
        all
    };
    assert_eq!(tail(&mut a), tail(&mut b));
    assert_eq!(a.ex.state_hash(), b.ex.state_hash());
}

// ------------------------------------------------------------------ queries

#[test]
fn queries_report_balances_open_orders_and_api_keys_without_changing_anything() {
    let mut w = World::new();
    let a = w.limit(ALICE, Side::Buy, 90, 2);
    let b = w.limit(ALICE, Side::Sell, 110, 3);
    w.ok(Command::AddApiKey {
        account: ALICE,
        key_id: 9,
        secret_hash: [1; 32],
        permissions: 1,
    });
    let before = w.ex.state_hash();
    let mut out = Vec::new();
    w.ex.query(&Query::Balances { account: ALICE }, &mut out);
    assert_eq!(
        out,
        vec![
            QueryReply::Balance {
                account: ALICE,
                asset: BTC,
                available: 1_000_000 - 3,
                held: 3
            },
            QueryReply::Balance {
                account: ALICE,
                asset: USD,
                available: 1_000_000 - 181,
                held: 181
            },
            QueryReply::End {
                count: 2,
                found: true
            },
        ]
    );
    out.clear();
    w.ex.query(
        &Query::OpenOrders {
            account: ALICE,
            market: None,
        },
        &mut out,
    );
    let ids: Vec<_> = out
        .iter()
        .filter_map(|r| match r {
            QueryReply::OpenOrder { order_id, .. } => Some(*order_id),
            _ => None,
        })
        .collect();
    assert_eq!(ids, vec![a, b]);
    out.clear();
    w.ex.query(&Query::ApiKey { key_id: 9 }, &mut out);
    assert!(matches!(out[0], QueryReply::ApiKey { account: ALICE, .. }));
    out.clear();
    w.ex.query(&Query::Balances { account: 999 }, &mut out);
    assert_eq!(
        out,
        vec![QueryReply::End {
            count: 0,
            found: false
        }]
    );
    assert_eq!(before, w.ex.state_hash());
}

#[test]
fn a_depth_query_lists_each_sides_best_levels_with_their_totals_best_first() {
    let mut w = World::new();
    w.limit(ALICE, Side::Buy, 99, 2);
    w.limit(BOB, Side::Buy, 99, 3);
    w.limit(ALICE, Side::Buy, 98, 1);
    w.limit(BOB, Side::Buy, 97, 1);
    w.limit(ALICE, Side::Sell, 101, 4);
    let mut out = Vec::new();
    w.ex.query(
        &Query::Depth {
            market: M,
            levels: 2,
        },
        &mut out,
    );
    let level = |side, price, qty| QueryReply::Level {
        market: M,
        side,
        price,
        qty,
    };
    assert_eq!(
        out,
        [
            level(Side::Buy, 99, 5),
            level(Side::Buy, 98, 1),
            level(Side::Sell, 101, 4),
            QueryReply::End {
                count: 3,
                found: true
            },
        ]
    );
    out.clear();
    w.ex.query(
        &Query::Depth {
            market: 9,
            levels: 2,
        },
        &mut out,
    );
    assert_eq!(
        out,
        [QueryReply::End {
            count: 0,
            found: false
        }]
    );
}

#[test]
fn a_markets_query_names_each_market_with_its_assets_and_units() {
    let w = World::new();
    let mut out = Vec::new();
    w.ex.query(&Query::Markets, &mut out);
    let QueryReply::Market {
        market,
        symbol,
        base_symbol,
        quote_symbol,
        base_decimals,
        quote_decimals,
        tick_size,
        lot_size,
        status,
        ..
    } = out[0]
    else {
        panic!("{out:?}")
    };
    assert_eq!((market, symbol.as_str()), (M, "BTC-USD"));
    assert_eq!(
        (base_symbol.as_str(), quote_symbol.as_str()),
        ("BTC", "USD")
    );
    assert_eq!((base_decimals, quote_decimals), (8, 2));
    assert_eq!((tick_size, lot_size), (spec().tick_size, spec().lot_size));
    assert_eq!(status, MarketStatus::Open);
    assert_eq!(out.len(), 2);
}

// ---------------------------------------------------------------- open-order caps

fn limits(per_account: u32, per_market: u32) -> Command {
    Command::SetMarketLimits {
        market: M,
        max_open_orders_per_account: per_account,
        max_open_orders: per_market,
    }
}

#[test]
fn an_account_at_its_open_order_cap_cannot_rest_another_order_in_that_market() {
    let mut w = World::new();
    w.ok(limits(2, 100));
    w.limit(ALICE, Side::Buy, 90, 1);
    let second = w.limit(ALICE, Side::Buy, 91, 1);
    w.rejected(
        Command::Place(order(ALICE, Side::Buy, 92, 1)),
        RejectReason::TooManyOpenOrders,
    );
    // Post-only counts too; another account is not affected.
    w.rejected(
        Command::Place(PlaceOrder {
            tif: TimeInForce::PostOnly,
            ..order(ALICE, Side::Sell, 120, 1)
        }),
        RejectReason::TooManyOpenOrders,
    );
    w.limit(BOB, Side::Buy, 92, 1);
    // Orders that cannot rest are not capped: an IOC, or a market order.
    w.ok(Command::Place(PlaceOrder {
        tif: TimeInForce::Ioc,
        ..order(ALICE, Side::Sell, 92, 1)
    }));
    // A replace moves an order already counted: it is not capped.
    w.ok(Command::Replace {
        account: ALICE,
        market: M,
        order: OrderRef::Exchange(second),
        price: 89,
        qty: 2,
    });
    // An order leaving the book makes room again.
    w.ok(Command::Cancel {
        account: ALICE,
        market: M,
        order: OrderRef::Exchange(second),
    });
    w.limit(ALICE, Side::Buy, 92, 1);
}

#[test]
fn a_market_at_its_open_order_cap_rests_no_further_order() {
    let mut w = World::new();
    w.ok(limits(10, 3));
    w.limit(ALICE, Side::Buy, 90, 1);
    w.limit(BOB, Side::Buy, 91, 1);
    w.limit(BOB, Side::Sell, 120, 1);
    w.rejected(
        Command::Place(order(ALICE, Side::Sell, 121, 1)),
        RejectReason::TooManyOpenOrders,
    );
    // The check comes after the order's own shape and the duplicate client id, before
    // its funds: an order too big to fund is still `too_many_open_orders`.
    w.rejected(
        Command::Place(order(ALICE, Side::Buy, 92, 999_999)),
        RejectReason::TooManyOpenOrders,
    );
    w.rejected(
        Command::Place(order(ALICE, Side::Buy, 92, 0)),
        RejectReason::InvalidQuantity,
    );
    // Counted before matching: an order that would fill entirely is refused too.
    w.rejected(
        Command::Place(order(ALICE, Side::Buy, 120, 1)),
        RejectReason::TooManyOpenOrders,
    );
    // Lowering a cap below what rests cancels nothing.
    w.ok(limits(1, 1));
    assert_eq!(w.book().order_count(), 3);
}

#[test]
fn open_order_caps_must_be_positive_and_name_a_market() {
    let mut w = World::new();
    w.rejected(limits(0, 10), RejectReason::InvalidMarketSpec);
    w.rejected(limits(10, 0), RejectReason::InvalidMarketSpec);
    w.rejected(
        Command::SetMarketLimits {
            market: 99,
            max_open_orders_per_account: 1,
            max_open_orders: 1,
        },
        RejectReason::UnknownMarket,
    );
    let ev = w.ok(limits(5, 50));
    assert_eq!(
        ev,
        vec![Event::AdminDone {
            kind: CommandKind::SetMarketLimits,
            id: M as u64,
        }]
    );
    let m = w.ex.market(M).unwrap();
    assert_eq!((m.limits.per_account, m.limits.per_market), (5, 50));
}

#[test]
fn markets_start_with_default_caps_far_above_normal_use() {
    let w = World::new();
    assert_eq!(
        w.ex.market(M).unwrap().limits,
        ringex_engine::exchange::OpenOrderLimits::DEFAULT
    );
    assert_eq!(
        ringex_engine::exchange::DEFAULT_OPEN_ORDERS_PER_ACCOUNT,
        100_000
    );
    assert_eq!(
        ringex_engine::exchange::DEFAULT_OPEN_ORDERS_PER_MARKET,
        2_000_000
    );
}
