//! The publisher fed by a real engine, in memory: its updates, read back as a client
//! reads them (JSON, decimal strings), rebuild the engine's book exactly.

use super::*;
use crate::backend::{Backend, InlineBackend};
use crate::session::{tag, FRONT_RETAIL, PURPOSE_FRONT};
use ringex_engine::{
    Command, Exchange, MarketSpec, OrderKind, PlaceOrder, StpMode, Symbol, TimeInForce,
};
use serde_json::Value;

const MARKET: MarketId = 1;

fn exchange() -> Exchange {
    let mut ex = Exchange::new();
    let mut out = Vec::new();
    let mut cmds = vec![
        Command::CreateAsset {
            asset: 1,
            symbol: Symbol::new("BTC").unwrap(),
            decimals: 8,
        },
        Command::CreateAsset {
            asset: 2,
            symbol: Symbol::new("USDT").unwrap(),
            decimals: 6,
        },
        Command::CreateMarket(MarketSpec {
            market: MARKET,
            symbol: Symbol::new("BTC-USDT").unwrap(),
            base: 1,
            quote: 2,
            tick_size: 1,
            lot_size: 10_000,
            qty_min: 1,
            qty_max: 1_000_000,
            band_ppm: 0,
            reference_price: 6_000_000,
            maker_fee_ppm: 0,
            taker_fee_ppm: 0,
        }),
    ];
    for account in [1, 2] {
        cmds.push(Command::CreateAccount { account });
        for (asset, amount) in [(1, 100_000_000_000), (2, 100_000_000_000_000)] {
            cmds.push(Command::Deposit {
                account,
                asset,
                amount,
                external_ref: u64::from(account) * 10 + u64::from(asset),
            });
        }
    }
    for c in &cmds {
        ex.apply(c, &mut out);
    }
    ex
}

fn place(account: u32, side: Side, price: Price, qty: Qty) -> Command {
    Command::Place(PlaceOrder {
        account,
        market: MARKET,
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

/// A publisher with its start-up queries answered, and an engine behind it.
struct Rig {
    backend: InlineBackend,
    publisher: Publisher,
    updates: Vec<Update>,
}

impl Rig {
    fn new(ex: Exchange) -> Rig {
        let mut rig = Rig {
            backend: InlineBackend::new(ex),
            publisher: Publisher::new(),
            updates: Vec::new(),
        };
        rig.pump();
        assert!(rig.publisher.is_ready());
        rig
    }

    /// Submits the publisher's queries and hands it everything output, flushing at
    /// each command's end.
    fn pump(&mut self) {
        for _ in 0..4 {
            for q in self.publisher.take_queries() {
                let t = tag(FRONT_RETAIL, PURPOSE_FRONT, q.id);
                self.backend.query(&q.query, t).unwrap();
            }
            let mut ds = Vec::new();
            self.backend.drain(usize::MAX, &mut |d| ds.push(*d));
            for d in ds {
                let query = (tag_purpose_is_front(d.tag)).then_some(crate::session::tag_id(d.tag));
                self.publisher.apply(&d, query);
                if d.last {
                    self.publisher.flush(&mut self.updates);
                }
            }
        }
    }

    fn submit(&mut self, cmd: Command) {
        self.backend.submit(&cmd, 0).unwrap();
        self.pump();
    }

    fn take(&mut self, channel: Channel) -> Vec<Value> {
        let (mine, rest) = std::mem::take(&mut self.updates)
            .into_iter()
            .partition(|u| u.channel == channel);
        self.updates = rest;
        mine.into_iter()
            .map(|u: Update| serde_json::from_slice(&u.json).unwrap())
            .collect()
    }
}

fn tag_purpose_is_front(t: u64) -> bool {
    crate::session::tag_purpose(t) == PURPOSE_FRONT
}

/// A client's book: price string -> qty string, rebuilt from the messages alone.
#[derive(Default, Debug, PartialEq)]
struct ClientBook {
    bids: BTreeMap<u64, (String, String)>,
    asks: BTreeMap<u64, (String, String)>,
    last: u64,
}

/// Decimal string -> an integer key that sorts like the price (a fixed scale here).
fn key(price: &str) -> u64 {
    price.replace('.', "").parse().unwrap()
}

impl ClientBook {
    fn apply(&mut self, msg: &Value) {
        for (side, book) in [("bids", &mut self.bids), ("asks", &mut self.asks)] {
            for l in msg[side].as_array().unwrap() {
                let (p, q) = (l[0].as_str().unwrap(), l[1].as_str().unwrap());
                if q.trim_matches(|c| c == '0' || c == '.').is_empty() {
                    book.remove(&key(p));
                } else {
                    book.insert(key(p), (p.to_string(), q.to_string()));
                }
            }
        }
    }

    /// The checksum as docs/websocket.md defines it, from the strings.
    fn checksum(&self) -> u32 {
        let mut s = String::new();
        let strip = |x: &str| x.replace('.', "").trim_start_matches('0').to_string();
        for (p, q) in self
            .asks
            .values()
            .take(10)
            .chain(self.bids.values().rev().take(10))
        {
            s += &strip(p);
            s += &strip(q);
        }
        crc32fast::hash(s.as_bytes())
    }
}

#[test]
fn a_snapshot_then_the_diffs_rebuild_the_engines_book_with_every_id_and_checksum() {
    let mut rig = Rig::new(exchange());
    rig.submit(place(1, Side::Buy, 5_999_000, 3));
    let snapshot: Value =
        serde_json::from_slice(&rig.publisher.snapshot(MARKET, Channel::Depth).unwrap()).unwrap();
    rig.take(Channel::Depth);
    let mut book = ClientBook::default();
    book.apply(&snapshot);
    book.last = snapshot["last"].as_u64().unwrap();
    assert_eq!(
        snapshot["checksum"].as_u64().unwrap() as u32,
        book.checksum()
    );
    assert_eq!(
        snapshot["bids"][0],
        serde_json::json!(["59990.00", "0.0003"])
    );
    // Enough orders for more than ten levels a side, and crosses that remove levels.
    for i in 0..30 {
        rig.submit(place(1, Side::Buy, 5_990_000 - i * 100, 1 + i as u64));
        rig.submit(place(2, Side::Sell, 6_010_000 + i * 100, 2 + i as u64));
    }
    rig.submit(place(2, Side::Sell, 5_990_000, 10));
    rig.submit(place(1, Side::Buy, 6_010_500, 40));
    let diffs = rig.take(Channel::Depth);
    assert!(
        diffs.len() >= 62,
        "one diff per command that changed levels"
    );
    for d in &diffs {
        assert_eq!(d["type"], "update");
        assert_eq!(d["first"].as_u64().unwrap(), book.last + 1, "no gap: {d}");
        book.last = d["last"].as_u64().unwrap();
        book.apply(d);
        assert_eq!(
            d["checksum"].as_u64().unwrap() as u32,
            book.checksum(),
            "{d}"
        );
    }
    let (bids, asks) = rig.publisher.book(MARKET).unwrap();
    let engine = &rig.backend.exchange.market(MARKET).unwrap().book;
    assert_eq!(bids, engine.depth(Side::Buy, usize::MAX));
    assert_eq!(asks, engine.depth(Side::Sell, usize::MAX));
    let units = rig.publisher.market(MARKET).unwrap().units.unwrap();
    let mut text = Vec::new();
    let as_strings = |levels: &[(Price, Qty)], text: &mut Vec<u8>| -> Vec<(String, String)> {
        levels
            .iter()
            .map(|(p, q)| {
                text.clear();
                units.price(*p, text);
                let p = String::from_utf8(text.clone()).unwrap();
                text.clear();
                units.qty(*q, text);
                (p, String::from_utf8(text.clone()).unwrap())
            })
            .collect()
    };
    let client_bids: Vec<(String, String)> = book.bids.values().rev().cloned().collect();
    assert_eq!(client_bids, as_strings(&bids, &mut text));
    let client_asks: Vec<(String, String)> = book.asks.values().cloned().collect();
    assert_eq!(client_asks, as_strings(&asks, &mut text));
    assert_eq!(
        book.checksum(),
        book_checksum(&units, &bids, &asks),
        "the client's and the server's checksum agree"
    );
}

#[test]
fn trades_carry_the_makers_price_the_takers_side_and_feed_the_ticker() {
    let mut rig = Rig::new(exchange());
    rig.submit(place(1, Side::Sell, 6_000_000, 2));
    rig.submit(place(1, Side::Sell, 6_000_100, 2));
    rig.submit(place(2, Side::Buy, 6_000_100, 3));
    let trades = rig.take(Channel::Trades);
    assert_eq!(trades.len(), 1, "one message for the command's two fills");
    let t = &trades[0]["trades"];
    assert_eq!(t[0]["price"], "60000.00");
    assert_eq!(t[0]["qty"], "0.0002");
    assert_eq!(t[1]["price"], "60001.00");
    assert_eq!(t[1]["qty"], "0.0001");
    assert_eq!(t[0]["side"], "buy");
    assert_eq!(
        t[1]["id"].as_u64().unwrap(),
        t[0]["id"].as_u64().unwrap() + 1
    );
    let ticker = rig.take(Channel::Ticker);
    let last = ticker.last().unwrap();
    assert_eq!(last["open"], "60000.00");
    assert_eq!(last["high"], "60001.00");
    assert_eq!(last["low"], "60000.00");
    assert_eq!(last["last"], "60001.00");
    assert_eq!(last["volume"], "0.0003");
    // 0.0002 * 60000 + 0.0001 * 60001 = 18.0001 USDT.
    assert_eq!(last["quoteVolume"], "18.000100");
    assert_eq!(last["change"], "1.00");
    assert_eq!(last["count"], 2);
    let bbo = rig.take(Channel::Bbo);
    assert_eq!(
        bbo.last().unwrap()["ask"],
        serde_json::json!(["60001.00", "0.0001"])
    );
}

#[test]
fn the_ticker_forgets_trades_older_than_a_day_by_the_events_own_time() {
    let mut ticker = Ticker::default();
    let day_ns = 24 * 60 * MINUTE_NS;
    let trade = |time_ns, price| Trade {
        id: 0,
        price,
        qty: 1,
        taker_side: Side::Buy,
        time_ns,
    };
    ticker.add(&trade(0, 100));
    ticker.add(&trade(day_ns / 2, 150));
    assert_eq!(ticker.buckets.len(), 2);
    ticker.add(&trade(day_ns + MINUTE_NS, 120));
    assert_eq!(
        ticker.buckets.front().unwrap().open,
        150,
        "the first trade left"
    );
    // However many trades, at most one bucket a minute.
    for i in 0..10_000 {
        ticker.add(&trade(2 * day_ns + i * 1_000_000, 100));
    }
    assert!(ticker.buckets.len() <= 2);
}

#[test]
fn events_before_the_depth_answer_are_covered_by_it_not_applied_twice() {
    let mut ex = exchange();
    let mut out = Vec::new();
    ex.apply(&place(1, Side::Buy, 5_000_000, 5), &mut out);
    let mut backend = InlineBackend::new(ex);
    let mut publisher = Publisher::new();
    for q in publisher.take_queries() {
        backend
            .query(&q.query, tag(FRONT_RETAIL, PURPOSE_FRONT, q.id))
            .unwrap();
    }
    let mut ds = Vec::new();
    backend.drain(usize::MAX, &mut |d| ds.push(*d));
    for d in &ds {
        publisher.apply(d, Some(crate::session::tag_id(d.tag)));
    }
    // The market is listed; its depth query goes out, then an order lands before it.
    let queries = publisher.take_queries();
    assert_eq!(queries.len(), 1);
    backend
        .submit(&place(1, Side::Buy, 5_000_000, 1), 0)
        .unwrap();
    backend
        .query(
            &queries[0].query,
            tag(FRONT_RETAIL, PURPOSE_FRONT, queries[0].id),
        )
        .unwrap();
    let mut ds = Vec::new();
    backend.drain(usize::MAX, &mut |d| ds.push(*d));
    for d in &ds {
        let q = tag_purpose_is_front(d.tag).then_some(crate::session::tag_id(d.tag));
        publisher.apply(d, q);
    }
    assert!(publisher.is_ready());
    assert_eq!(publisher.book(MARKET).unwrap().0, vec![(5_000_000, 6)]);
}

#[test]
fn after_a_restart_only_the_answer_asked_after_it_reloads_the_book() {
    let mut rig = Rig::new(exchange());
    rig.submit(place(1, Side::Buy, 5_000_000, 5));
    // A restart while a depth answer of the previous view is still on its way: its
    // first part was lost with the overrun, its end arrives after the restart.
    let stale: Vec<PublisherQuery> = {
        rig.publisher.restart();
        rig.publisher.take_queries()
    };
    let stale_depth = stale
        .iter()
        .find(|q| matches!(q.query, Query::Depth { .. }))
        .copied()
        .unwrap();
    rig.backend
        .query(
            &stale_depth.query,
            tag(FRONT_RETAIL, PURPOSE_FRONT, stale_depth.id),
        )
        .unwrap();
    let mut ds = Vec::new();
    rig.backend.drain(usize::MAX, &mut |d| ds.push(*d));
    rig.publisher.restart();
    // Only the end of the stale answer arrives (its level was lost), then a new order.
    let end = ds.last().unwrap();
    assert!(matches!(end.item, Output::Reply(QueryReply::End { .. })));
    rig.publisher
        .apply(end, Some(crate::session::tag_id(end.tag)));
    assert!(!rig.publisher.is_ready(), "a stale answer loads nothing");
    assert!(rig.publisher.take_reloaded().is_empty());
    rig.backend
        .submit(&place(2, Side::Buy, 4_999_999, 2), 0)
        .unwrap();
    rig.pump();
    assert!(rig.publisher.is_ready());
    assert_eq!(
        rig.publisher.book(MARKET).unwrap().0,
        vec![(5_000_000, 5), (4_999_999, 2)]
    );
    assert_eq!(rig.publisher.take_reloaded().len(), 1);
    // The next depth update chains on the reloaded book's sequence.
    rig.take(Channel::Depth);
    rig.submit(place(2, Side::Buy, 4_999_998, 1));
    let d = rig.take(Channel::Depth);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0]["bids"], serde_json::json!([["49999.98", "0.0001"]]));
}

#[test]
fn trades_made_before_the_market_list_arrives_count_in_the_ticker_and_the_recent_trades() {
    // At start the publisher's first query travels behind orders already at the engine:
    // their trades reach it before it knows the market.
    let mut backend = InlineBackend::new(exchange());
    backend
        .submit(&place(1, Side::Sell, 6_000_000, 2), 0)
        .unwrap();
    backend
        .submit(&place(2, Side::Buy, 6_000_000, 2), 0)
        .unwrap();
    let mut rig = Rig {
        backend,
        publisher: Publisher::new(),
        updates: Vec::new(),
    };
    rig.pump();
    assert!(rig.publisher.is_ready());

    let ticker: Value =
        serde_json::from_slice(&rig.publisher.snapshot(MARKET, Channel::Ticker).unwrap()).unwrap();
    assert_eq!(ticker["count"], 1, "{ticker}");
    assert_eq!(ticker["last"], "60000.00", "{ticker}");
    assert_eq!(ticker["volume"], "0.0002", "{ticker}");
    let trades: Value =
        serde_json::from_slice(&rig.publisher.snapshot(MARKET, Channel::Trades).unwrap()).unwrap();
    assert_eq!(trades["trades"].as_array().unwrap().len(), 1, "{trades}");

    // Counted once: later trades add to it as usual.
    rig.submit(place(1, Side::Sell, 6_000_100, 1));
    rig.submit(place(2, Side::Buy, 6_000_100, 1));
    let ticker: Value =
        serde_json::from_slice(&rig.publisher.snapshot(MARKET, Channel::Ticker).unwrap()).unwrap();
    assert_eq!(ticker["count"], 2, "{ticker}");
}
