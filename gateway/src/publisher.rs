//! The market-data publisher: the pipeline's output-publishing stage for public data.
//!
//! It consumes every engine event in sequence ([`Publisher::apply`]) and keeps each
//! market's public state: its price levels, its recent trades, and a 24-hour ticker
//! computed from the events' own (journaled) timestamps, so the state is a function of
//! the events alone: no clock, and replaying the same events gives the same updates.
//! At command boundaries [`Publisher::flush`] turns what changed into public updates:
//! compact, self-describing JSON records (channel, market, kind, engine sequence) that
//! mean the same wherever they are read, so they can later cross a message bus to
//! remote edges unchanged. The WebSocket edge (`retail`) compresses each once and
//! writes the same bytes to every subscriber; `docs/websocket.md` is their contract,
//! including the depth checksum, byte for byte.
//!
//! The state starts from the engine's answers to [`Query::Markets`] and one
//! [`Query::Depth`] per market, which travel the ring in order with the commands: what
//! an answer reports and the events after it never overlap or leave a gap.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use ringex_engine::{
    AccountId, CommandKind, Event, MarketId, MarketStatus, Output, Price, Qty, Query, QueryReply,
    Side,
};

use crate::backend::Delivery;
use crate::units::Units;

/// A level: price in ticks, total quantity in lots.
pub type Level = (Price, Qty);
/// Levels of one side, best first.
pub type Levels = Vec<Level>;
/// The best bid and the best ask.
type Bbo = (Option<Level>, Option<Level>);

/// Trades a market remembers for a new subscriber's snapshot.
pub const RECENT_TRADES_MAX: usize = 50;
/// Trades kept for markets the publisher has not listed yet (the list is asked for at
/// start and answered within milliseconds; trades made meanwhile still belong in the
/// ticker and the recent trades). Past it the oldest are dropped.
const EARLY_TRADES_MAX: usize = 16_384;
/// Levels per side that the checksum covers.
pub const CHECKSUM_LEVELS: usize = 10;
/// The ticker's window, in its one-minute buckets.
const TICKER_MINUTES: u64 = 24 * 60;
const MINUTE_NS: u64 = 60_000_000_000;

/// The public channels of a market.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    Trades,
    Depth,
    Bbo,
    Ticker,
}

impl Channel {
    pub const ALL: [Channel; 4] = [
        Channel::Trades,
        Channel::Depth,
        Channel::Bbo,
        Channel::Ticker,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Channel::Trades => "trades",
            Channel::Depth => "depth",
            Channel::Bbo => "bbo",
            Channel::Ticker => "ticker",
        }
    }

    pub fn from_name(name: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.name() == name)
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// One public update, encoded once for every subscriber.
#[derive(Clone, Debug)]
pub struct Update {
    pub market: MarketId,
    pub channel: Channel,
    /// The engine sequence it reports up to.
    pub seq: u64,
    pub json: Arc<[u8]>,
}

/// What a client needs to read a market.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MarketInfo {
    pub id: MarketId,
    pub symbol: String,
    pub base: String,
    pub quote: String,
    pub base_asset: ringex_engine::AssetId,
    pub quote_asset: ringex_engine::AssetId,
    pub base_decimals: u8,
    pub quote_decimals: u8,
    pub status: MarketStatus,
    /// None when the tick is no finite decimal: such a market is not served as decimals.
    pub units: Option<Units>,
    pub qty_min: Qty,
    pub qty_max: Qty,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Trade {
    id: u64,
    price: Price,
    qty: Qty,
    taker_side: Side,
    time_ns: u64,
}

#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    minute: u64,
    open: Price,
    high: Price,
    low: Price,
    close: Price,
    volume: u128,
    /// Sum of price * qty, in tick-lots.
    notional: u128,
    count: u64,
}

/// The 24-hour ticker at one-minute resolution: at most 1,440 buckets, whatever the
/// trade rate.
#[derive(Clone, Debug, Default)]
struct Ticker {
    buckets: VecDeque<Bucket>,
}

impl Ticker {
    fn add(&mut self, t: &Trade) {
        let minute = t.time_ns / MINUTE_NS;
        match self.buckets.back_mut() {
            // Timestamps never go backwards; a trade in an older minute joins the newest.
            Some(b) if b.minute >= minute => {
                b.high = b.high.max(t.price);
                b.low = b.low.min(t.price);
                b.close = t.price;
                b.volume += u128::from(t.qty);
                b.notional += t.price.max(0) as u128 * u128::from(t.qty);
                b.count += 1;
            }
            _ => self.buckets.push_back(Bucket {
                minute,
                open: t.price,
                high: t.price,
                low: t.price,
                close: t.price,
                volume: u128::from(t.qty),
                notional: t.price.max(0) as u128 * u128::from(t.qty),
                count: 1,
            }),
        }
        self.expire(t.time_ns);
        debug_assert!(self.buckets.len() as u64 <= TICKER_MINUTES);
    }

    /// Drops the buckets that are out of the 24 hours before `now_ns`.
    fn expire(&mut self, now_ns: u64) {
        let minute = now_ns / MINUTE_NS;
        while let Some(b) = self.buckets.front() {
            if b.minute + TICKER_MINUTES > minute {
                break;
            }
            self.buckets.pop_front();
        }
    }
}

/// One side of a book: its levels in a Vec sorted worst first, so the best level is the
/// last. Changes cluster near the best price, so an insert or a removal moves few
/// elements, and a lookup is a binary search over contiguous memory (cheaper than a
/// tree's pointer chase for the few hundred levels a book has near its top).
#[derive(Clone, Debug)]
struct BookSide {
    /// Bids: prices ascending (the highest, the best, last); asks: descending.
    levels: Vec<Level>,
    bids: bool,
}

impl BookSide {
    fn new(bids: bool) -> BookSide {
        BookSide {
            levels: Vec::new(),
            bids,
        }
    }

    /// Where `price` is or would go, in the worst-first order.
    fn position(&self, price: Price) -> Result<usize, usize> {
        if self.bids {
            self.levels.binary_search_by(|(p, _)| p.cmp(&price))
        } else {
            self.levels.binary_search_by(|(p, _)| price.cmp(p))
        }
    }

    fn set(&mut self, price: Price, qty: Qty) {
        match (self.position(price), qty) {
            (Ok(i), 0) => {
                self.levels.remove(i);
            }
            (Ok(i), q) => self.levels[i].1 = q,
            (Err(_), 0) => {}
            (Err(i), q) => self.levels.insert(i, (price, q)),
        }
    }

    fn get(&self, price: Price) -> Qty {
        match self.position(price) {
            Ok(i) => self.levels[i].1,
            Err(_) => 0,
        }
    }

    /// Best first.
    fn iter(&self) -> impl Iterator<Item = Level> + '_ {
        self.levels.iter().rev().copied()
    }

    fn best(&self) -> Option<Level> {
        self.levels.last().copied()
    }

    fn len(&self) -> usize {
        self.levels.len()
    }

    fn clear(&mut self) {
        self.levels.clear();
    }
}

struct MarketState {
    info: MarketInfo,
    bids: BookSide,
    asks: BookSide,
    /// Prices of the levels changed since the last flush, in the order of their
    /// changes and with repeats (sorted and deduplicated when published).
    changed_bids: Vec<Price>,
    changed_asks: Vec<Price>,
    new_trades: Vec<Trade>,
    recent: VecDeque<Trade>,
    ticker: Ticker,
    /// The engine sequence the depth stream last reported up to.
    depth_last: u64,
    /// The best bid and ask last published.
    bbo: Bbo,
    /// The depth answer arrived: the state is whole.
    loaded: bool,
    /// A depth answer is coming: its first level replaces the book.
    loading: bool,
    /// Loaded again after a restart, and not yet reported by `take_reloaded`.
    reloaded: bool,
}

impl MarketState {
    /// Counts a trade in the ticker and the recent trades.
    fn record_trade(&mut self, t: Trade) {
        self.ticker.add(&t);
        if self.recent.len() == RECENT_TRADES_MAX {
            self.recent.pop_front();
        }
        self.recent.push_back(t);
    }

    fn new(info: MarketInfo) -> MarketState {
        MarketState {
            info,
            bids: BookSide::new(true),
            asks: BookSide::new(false),
            changed_bids: Vec::new(),
            changed_asks: Vec::new(),
            new_trades: Vec::new(),
            recent: VecDeque::with_capacity(RECENT_TRADES_MAX),
            ticker: Ticker::default(),
            depth_last: 0,
            bbo: (None, None),
            loaded: false,
            loading: false,
            reloaded: false,
        }
    }

    fn best(&self) -> Bbo {
        (self.bids.best(), self.asks.best())
    }

    fn set_level(&mut self, side: Side, price: Price, qty: Qty) {
        let (book, changed) = match side {
            Side::Buy => (&mut self.bids, &mut self.changed_bids),
            Side::Sell => (&mut self.asks, &mut self.changed_asks),
        };
        book.set(price, qty);
        changed.push(price);
    }
}

/// Queries the publisher needs answered (the front-end submits them, tagged with the id
/// given here, and hands the answers back through [`Publisher::apply`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublisherQuery {
    pub id: u64,
    pub query: Query,
}

/// The query id of the market list; a market's depth is `DEPTH_QUERY_BASE + market`.
pub const MARKETS_QUERY: u64 = 0;
pub const DEPTH_QUERY_BASE: u64 = 1;
/// Ids at or above this are not the publisher's (the front-end's balance lookups).
pub const PUBLISHER_QUERY_END: u64 = 1 << 32;
/// A depth query's id carries the publisher's restart count (modulo 2^14) from this bit
/// up, so an answer to a query asked before a restart (perhaps cut by the loss that
/// caused it) is told apart from the one asked after, and ignored.
const EPOCH_SHIFT: u32 = 33;
const EPOCH_MASK: u64 = (1 << 14) - 1;

/// Whether a front-end query id is the publisher's (else a balance lookup's).
pub fn is_publisher_query(id: u64) -> bool {
    id & PUBLISHER_QUERY_END == 0
}

/// The query a publisher query id asks (to submit it again after a refusal).
pub fn publisher_query(id: u64) -> PublisherQuery {
    let base = id & (PUBLISHER_QUERY_END - 1);
    let query = if base == MARKETS_QUERY {
        Query::Markets
    } else {
        Query::Depth {
            market: (base - DEPTH_QUERY_BASE) as MarketId,
            levels: u32::MAX,
        }
    };
    PublisherQuery { id, query }
}

pub struct Publisher {
    markets: BTreeMap<MarketId, MarketState>,
    by_symbol: HashMap<String, MarketId>,
    /// The highest engine sequence applied.
    seq: u64,
    /// The latest event timestamp: the publisher's only notion of time.
    time_ns: u64,
    match_seq: u64,
    match_index: u64,
    touched: Vec<MarketId>,
    /// Queries to submit, for the front-end.
    queries: Vec<PublisherQuery>,
    /// The market list was asked for and not answered yet.
    markets_pending: bool,
    /// Restarts since start: the depth queries' epoch.
    epoch: u64,
    /// Trades of markets not listed yet, in order, for when they are.
    early_trades: VecDeque<(MarketId, Trade)>,
    scratch: Vec<u8>,
}

impl Default for Publisher {
    fn default() -> Self {
        Publisher::new()
    }
}

impl Publisher {
    /// A publisher that knows nothing yet: it asks for the market list first.
    pub fn new() -> Publisher {
        Publisher {
            markets: BTreeMap::new(),
            by_symbol: HashMap::new(),
            seq: 0,
            time_ns: 0,
            match_seq: 0,
            match_index: 0,
            touched: Vec::new(),
            queries: vec![PublisherQuery {
                id: MARKETS_QUERY,
                query: Query::Markets,
            }],
            markets_pending: true,
            epoch: 0,
            early_trades: VecDeque::new(),
            scratch: Vec::new(),
        }
    }

    /// Queries to submit now (the market list, a new market's depth).
    pub fn take_queries(&mut self) -> Vec<PublisherQuery> {
        std::mem::take(&mut self.queries)
    }

    /// Starts over from the engine after output was lost (the retail loop fell a whole
    /// hand-off queue behind): the market list and every book are asked for again, and
    /// each market publishes nothing until its book's answer arrived, which replaces
    /// the book (the events before it are in it). The markets stay known, so clients
    /// keep their subscriptions; trades of the gap are not published (nor counted by
    /// the ticker), and the trades reported after the answer are all those after it.
    pub fn restart(&mut self) {
        self.queries.clear();
        self.markets_pending = false;
        self.ask_markets();
        self.touched.clear();
        self.epoch += 1;
        let epoch = self.epoch;
        for (&market, m) in &mut self.markets {
            m.loading = true;
            m.loaded = false;
            m.reloaded = true;
            m.changed_bids.clear();
            m.changed_asks.clear();
            m.new_trades.clear();
            self.queries.push(depth_query(epoch, market));
        }
    }

    /// Markets whose book was loaded again after a [`Publisher::restart`] since the last
    /// call, with the engine sequence the book is as of.
    pub fn take_reloaded(&mut self) -> Vec<(MarketId, u64)> {
        let mut out = Vec::new();
        for (&market, m) in &mut self.markets {
            if m.reloaded && m.loaded {
                m.reloaded = false;
                out.push((market, m.depth_last));
            }
        }
        out
    }

    /// Every market listed and its book loaded.
    pub fn is_ready(&self) -> bool {
        !self.markets_pending && self.markets.values().all(|m| m.loaded)
    }

    pub fn seq(&self) -> u64 {
        self.seq
    }

    pub fn market(&self, id: MarketId) -> Option<&MarketInfo> {
        self.markets.get(&id).map(|m| &m.info)
    }

    pub fn market_id(&self, symbol: &str) -> Option<MarketId> {
        self.by_symbol.get(symbol).copied()
    }

    pub fn markets(&self) -> impl Iterator<Item = &MarketInfo> {
        self.markets.values().map(|m| &m.info)
    }

    /// The market's book, best first per side: (bids, asks).
    pub fn book(&self, id: MarketId) -> Option<(Levels, Levels)> {
        let m = self.markets.get(&id)?;
        Some((m.bids.iter().collect(), m.asks.iter().collect()))
    }

    /// Takes one item of the exchange's output, in order. `query` is the publisher
    /// query id when the item answers one of its queries.
    pub fn apply(&mut self, d: &Delivery, query: Option<u64>) {
        self.seq = self.seq.max(d.seq);
        self.time_ns = self.time_ns.max(d.timestamp_ns);
        match (d.item, query) {
            (Output::Reply(r), Some(id)) => self.apply_reply(r, id, d.seq),
            (Output::Reply(_), None) => {}
            (Output::Event(e), _) => self.apply_event(d.seq, d.timestamp_ns, e),
        }
    }

    fn touch(&mut self, market: MarketId) {
        if !self.touched.contains(&market) {
            self.touched.push(market);
        }
    }

    fn apply_event(&mut self, seq: u64, time_ns: u64, e: Event) {
        match e {
            Event::Level {
                market,
                side,
                price,
                total_qty,
            } => {
                if let Some(m) = self.markets.get_mut(&market) {
                    m.set_level(side, price, total_qty);
                    self.touch(market);
                }
            }
            Event::Trade {
                market,
                taker_side,
                price,
                qty,
                ..
            } => {
                // The same ids as the fills of the binary protocol and the private streams.
                if seq != self.match_seq {
                    self.match_seq = seq;
                    self.match_index = 0;
                }
                self.match_index += 1;
                let id = seq << 16 | self.match_index.min(0xFFFF);
                let t = Trade {
                    id,
                    price,
                    qty,
                    taker_side,
                    time_ns,
                };
                if let Some(m) = self.markets.get_mut(&market) {
                    m.record_trade(t);
                    m.new_trades.push(t);
                    self.touch(market);
                } else {
                    // Made before the market list reached the publisher: counted once
                    // the market is listed (nobody can have subscribed to it yet).
                    if self.early_trades.len() == EARLY_TRADES_MAX {
                        self.early_trades.pop_front();
                    }
                    self.early_trades.push_back((market, t));
                }
            }
            Event::MarketStatus { market, status } => {
                if let Some(m) = self.markets.get_mut(&market) {
                    m.info.status = status;
                }
            }
            Event::AdminDone {
                kind: CommandKind::CreateMarket,
                ..
            } => self.ask_markets(),
            _ => {}
        }
    }

    fn ask_markets(&mut self) {
        if !self.markets_pending {
            self.markets_pending = true;
            self.queries.push(PublisherQuery {
                id: MARKETS_QUERY,
                query: Query::Markets,
            });
        }
    }

    fn apply_reply(&mut self, r: QueryReply, id: u64, seq: u64) {
        let base = id & (PUBLISHER_QUERY_END - 1);
        if base >= DEPTH_QUERY_BASE && id >> EPOCH_SHIFT != self.epoch & EPOCH_MASK {
            return; // asked before the last restart
        }
        let id = base;
        match r {
            QueryReply::Market {
                market,
                symbol,
                base,
                quote,
                base_symbol,
                quote_symbol,
                base_decimals,
                quote_decimals,
                status,
                tick_size,
                lot_size,
                qty_min,
                qty_max,
            } => {
                let info = MarketInfo {
                    id: market,
                    symbol: symbol.as_str().to_string(),
                    base: base_symbol.as_str().to_string(),
                    quote: quote_symbol.as_str().to_string(),
                    base_asset: base,
                    quote_asset: quote,
                    base_decimals,
                    quote_decimals,
                    status,
                    units: Units::new(tick_size, lot_size, base_decimals, quote_decimals),
                    qty_min,
                    qty_max,
                };
                match self.markets.get_mut(&market) {
                    Some(m) => m.info = info,
                    None => {
                        self.by_symbol.insert(info.symbol.clone(), market);
                        let mut m = MarketState::new(info);
                        m.loading = true;
                        // In order, and bounded by EARLY_TRADES_MAX.
                        self.early_trades.retain(|&(id, t)| {
                            if id == market {
                                m.record_trade(t);
                            }
                            id != market
                        });
                        self.markets.insert(market, m);
                        self.queries.push(depth_query(self.epoch, market));
                    }
                }
            }
            QueryReply::Level {
                market,
                side,
                price,
                qty,
            } => {
                if let Some(m) = self.markets.get_mut(&market) {
                    if m.loading {
                        // The answer replaces whatever events arrived before it: it
                        // reflects all of them.
                        m.loading = false;
                        m.bids.clear();
                        m.asks.clear();
                        m.changed_bids.clear();
                        m.changed_asks.clear();
                    }
                    m.set_level(side, price, qty);
                }
            }
            QueryReply::End { .. } if id == MARKETS_QUERY => self.markets_pending = false,
            QueryReply::End { .. } if id >= DEPTH_QUERY_BASE => {
                let market = (id - DEPTH_QUERY_BASE) as MarketId;
                if let Some(m) = self.markets.get_mut(&market) {
                    if m.loading {
                        m.bids.clear();
                        m.asks.clear();
                    }
                    m.loading = false;
                    m.loaded = true;
                    m.changed_bids.clear();
                    m.changed_asks.clear();
                    if m.reloaded {
                        // Trades before the answer are of the gap: the stream resumes
                        // after it.
                        m.new_trades.clear();
                    }
                    m.depth_last = seq;
                    m.bbo = m.best();
                }
            }
            _ => {}
        }
    }

    /// Turns what changed since the last flush into updates, at a command boundary (the
    /// caller flushes only after an item with `last`).
    pub fn flush(&mut self, out: &mut Vec<Update>) {
        let seq = self.seq;
        let time_ms = self.time_ns / 1_000_000;
        for market in std::mem::take(&mut self.touched) {
            let Some(m) = self.markets.get_mut(&market) else {
                continue;
            };
            if !m.loaded {
                continue;
            }
            let Some(units) = m.info.units else {
                m.changed_bids.clear();
                m.changed_asks.clear();
                m.new_trades.clear();
                continue;
            };
            let symbol = &m.info.symbol;
            if !m.new_trades.is_empty() {
                let mut j = Vec::with_capacity(96 + 96 * m.new_trades.len());
                head(&mut j, Channel::Trades, symbol, "update");
                push_fmt(&mut j, format_args!(",\"seq\":{seq},\"trades\":["));
                for (i, t) in m.new_trades.iter().enumerate() {
                    if i > 0 {
                        j.push(b',');
                    }
                    write_trade(&mut j, &units, t);
                }
                j.extend_from_slice(b"]}");
                out.push(update(market, Channel::Trades, seq, j));
                m.new_trades.clear();
                let mut j = Vec::with_capacity(320);
                write_ticker(&mut j, m, seq, self.time_ns, "update");
                out.push(update(market, Channel::Ticker, seq, j));
            }
            if !m.changed_bids.is_empty() || !m.changed_asks.is_empty() {
                let first = m.depth_last + 1;
                let mut j = Vec::with_capacity(160);
                head(&mut j, Channel::Depth, symbol, "update");
                push_fmt(
                    &mut j,
                    format_args!(",\"first\":{first},\"last\":{seq},\"time\":{time_ms},\"bids\":["),
                );
                // Bids highest first, asks lowest first, each level once.
                m.changed_bids.sort_unstable_by(|a, b| b.cmp(a));
                m.changed_bids.dedup();
                write_changes(&mut j, &units, &m.changed_bids, &m.bids);
                j.extend_from_slice(b"],\"asks\":[");
                m.changed_asks.sort_unstable();
                m.changed_asks.dedup();
                write_changes(&mut j, &units, &m.changed_asks, &m.asks);
                push_fmt(
                    &mut j,
                    format_args!(
                        "],\"checksum\":{}}}",
                        checksum(&units, m, &mut self.scratch)
                    ),
                );
                out.push(update(market, Channel::Depth, seq, j));
                m.changed_bids.clear();
                m.changed_asks.clear();
                m.depth_last = seq;
                let best = m.best();
                if best != m.bbo {
                    m.bbo = best;
                    let mut j = Vec::with_capacity(160);
                    write_bbo(&mut j, &units, symbol, seq, time_ms, best, "update");
                    out.push(update(market, Channel::Bbo, seq, j));
                }
            }
        }
    }

    /// Price levels per side: (bids, asks); `None` for an unknown market.
    pub fn level_counts(&self, id: MarketId) -> Option<(usize, usize)> {
        let m = self.markets.get(&id)?;
        Some((m.bids.len(), m.asks.len()))
    }

    /// The current state of a channel, for a new subscriber; `None` for an unknown or
    /// not yet loaded market.
    pub fn snapshot(&mut self, market: MarketId, channel: Channel) -> Option<Vec<u8>> {
        self.snapshot_limited(market, channel, usize::MAX)
    }

    /// [`Publisher::snapshot`] with at most `limit` levels per side (depth) or the
    /// `limit` most recent trades (trades); the depth checksum still covers the book's
    /// top [`CHECKSUM_LEVELS`] levels, as in every depth message.
    pub fn snapshot_limited(
        &mut self,
        market: MarketId,
        channel: Channel,
        limit: usize,
    ) -> Option<Vec<u8>> {
        let time_ns = self.time_ns;
        let m = self.markets.get(&market)?;
        if !m.loaded {
            return None;
        }
        let units = m.info.units?;
        let symbol = &m.info.symbol;
        let mut j = Vec::with_capacity(256);
        match channel {
            Channel::Trades => {
                head(&mut j, channel, symbol, "snapshot");
                push_fmt(
                    &mut j,
                    format_args!(",\"seq\":{},\"trades\":[", m.depth_last.max(self.seq)),
                );
                let skip = m.recent.len().saturating_sub(limit);
                for (i, t) in m.recent.iter().skip(skip).enumerate() {
                    if i > 0 {
                        j.push(b',');
                    }
                    write_trade(&mut j, &units, t);
                }
                j.extend_from_slice(b"]}");
            }
            Channel::Depth => {
                head(&mut j, channel, symbol, "snapshot");
                push_fmt(
                    &mut j,
                    format_args!(
                        ",\"last\":{},\"time\":{},\"bids\":[",
                        m.depth_last,
                        time_ns / 1_000_000
                    ),
                );
                write_levels(&mut j, &units, m.bids.iter().take(limit));
                j.extend_from_slice(b"],\"asks\":[");
                write_levels(&mut j, &units, m.asks.iter().take(limit));
                push_fmt(
                    &mut j,
                    format_args!(
                        "],\"checksum\":{}}}",
                        checksum(&units, m, &mut self.scratch)
                    ),
                );
            }
            Channel::Bbo => {
                let seq = m.depth_last;
                write_bbo(
                    &mut j,
                    &units,
                    symbol,
                    seq,
                    time_ns / 1_000_000,
                    m.bbo,
                    "snapshot",
                );
            }
            Channel::Ticker => write_ticker(&mut j, m, self.seq, time_ns, "snapshot"),
        }
        Some(j)
    }
}

fn depth_query(epoch: u64, market: MarketId) -> PublisherQuery {
    PublisherQuery {
        id: (epoch & EPOCH_MASK) << EPOCH_SHIFT | (DEPTH_QUERY_BASE + u64::from(market)),
        query: Query::Depth {
            market,
            levels: u32::MAX,
        },
    }
}

fn update(market: MarketId, channel: Channel, seq: u64, json: Vec<u8>) -> Update {
    Update {
        market,
        channel,
        seq,
        json: json.into(),
    }
}

fn push_fmt(out: &mut Vec<u8>, args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = out.write_fmt(args);
}

/// Writes a string JSON-escaped (symbols are printable ASCII, but stay safe).
pub fn push_json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            c if (c as u32) < 0x20 => push_fmt(out, format_args!("\\u{:04x}", c as u32)),
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

fn head(out: &mut Vec<u8>, channel: Channel, symbol: &str, kind: &str) {
    push_fmt(
        out,
        format_args!("{{\"channel\":\"{}\",\"market\":", channel.name()),
    );
    push_json_str(out, symbol);
    push_fmt(out, format_args!(",\"type\":\"{kind}\""));
}

fn side_name(side: Side) -> &'static str {
    match side {
        Side::Buy => "buy",
        Side::Sell => "sell",
    }
}

fn write_trade(out: &mut Vec<u8>, units: &Units, t: &Trade) {
    push_fmt(out, format_args!("{{\"id\":{},\"price\":\"", t.id));
    units.price(t.price, out);
    out.extend_from_slice(b"\",\"qty\":\"");
    units.qty(t.qty, out);
    push_fmt(
        out,
        format_args!(
            "\",\"side\":\"{}\",\"time\":{}}}",
            side_name(t.taker_side),
            t.time_ns / 1_000_000
        ),
    );
}

fn write_level(out: &mut Vec<u8>, units: &Units, price: Price, qty: Qty) {
    out.extend_from_slice(b"[\"");
    units.price(price, out);
    out.extend_from_slice(b"\",\"");
    units.qty(qty, out);
    out.extend_from_slice(b"\"]");
}

fn write_levels(out: &mut Vec<u8>, units: &Units, levels: impl Iterator<Item = Level>) {
    for (i, (p, q)) in levels.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_level(out, units, p, q);
    }
}

/// Changed levels with their new totals ("0": gone).
fn write_changes(out: &mut Vec<u8>, units: &Units, changed: &[Price], book: &BookSide) {
    for (i, p) in changed.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_level(out, units, *p, book.get(*p));
    }
}

fn write_bbo(
    out: &mut Vec<u8>,
    units: &Units,
    symbol: &str,
    seq: u64,
    time_ms: u64,
    (bid, ask): Bbo,
    kind: &str,
) {
    head(out, Channel::Bbo, symbol, kind);
    push_fmt(
        out,
        format_args!(",\"seq\":{seq},\"time\":{time_ms},\"bid\":"),
    );
    match bid {
        Some((p, q)) => write_level(out, units, p, q),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"ask\":");
    match ask {
        Some((p, q)) => write_level(out, units, p, q),
        None => out.extend_from_slice(b"null"),
    }
    out.push(b'}');
}

fn write_ticker(out: &mut Vec<u8>, m: &MarketState, seq: u64, now_ns: u64, kind: &str) {
    let Some(units) = m.info.units else {
        return;
    };
    head(out, Channel::Ticker, &m.info.symbol, kind);
    let from_minute = (now_ns / MINUTE_NS + 1).saturating_sub(TICKER_MINUTES);
    let live = m.ticker.buckets.iter().filter(|b| b.minute >= from_minute);
    let mut open = None;
    let (mut high, mut low, mut close) = (Price::MIN, Price::MAX, 0);
    let (mut volume, mut notional, mut count) = (0u128, 0u128, 0u64);
    for b in live {
        open.get_or_insert(b.open);
        high = high.max(b.high);
        low = low.min(b.low);
        close = b.close;
        volume += b.volume;
        notional += b.notional;
        count += b.count;
    }
    push_fmt(
        out,
        format_args!(",\"seq\":{seq},\"time\":{}", now_ns / 1_000_000),
    );
    let Some(open) = open else {
        // No trades in the window: no prices, and zero volumes written with their
        // decimals like every other quantity.
        out.extend_from_slice(
            b",\"open\":null,\"high\":null,\"low\":null,\"last\":null,\"volume\":\"",
        );
        crate::units::write_decimal(0, units.qty_scale, out);
        out.extend_from_slice(b"\",\"quoteVolume\":\"");
        units.notional(0, out);
        out.extend_from_slice(b"\",\"change\":null,\"changePercent\":null,\"count\":0}");
        return;
    };
    let price = |name: &str, p: Price, out: &mut Vec<u8>| {
        push_fmt(out, format_args!(",\"{name}\":\""));
        units.price(p, out);
        out.push(b'"');
    };
    price("open", open, out);
    price("high", high, out);
    price("low", low, out);
    price("last", close, out);
    out.extend_from_slice(b",\"volume\":\"");
    crate::units::write_decimal(
        (volume * u128::from(units.qty_step)).min(i128::MAX as u128) as i128,
        units.qty_scale,
        out,
    );
    out.extend_from_slice(b"\",\"quoteVolume\":\"");
    units.notional(notional, out);
    out.extend_from_slice(b"\",\"change\":\"");
    let change = i128::from(close) - i128::from(open);
    units.price_delta(change, out);
    out.extend_from_slice(b"\",\"changePercent\":\"");
    // In hundredths of a percent, rounded toward zero.
    let basis_points = if open > 0 {
        change * 10_000 / i128::from(open)
    } else {
        0
    };
    crate::units::write_decimal(basis_points, 2, out);
    push_fmt(out, format_args!("\",\"count\":{count}}}"));
}

/// The depth checksum (`docs/websocket.md`): CRC32 (IEEE) of the top 10 asks (lowest
/// first) then the top 10 bids (highest first), each level written as its price then its
/// quantity, as the decimal strings the updates carry with the point removed and leading
/// zeros stripped, all concatenated without separators.
fn checksum(units: &Units, m: &MarketState, scratch: &mut Vec<u8>) -> u32 {
    scratch.clear();
    let asks = m.asks.iter().take(CHECKSUM_LEVELS);
    let bids = m.bids.iter().take(CHECKSUM_LEVELS);
    let mut field = Vec::with_capacity(32);
    for (p, q) in asks.chain(bids) {
        for part in 0..2 {
            field.clear();
            if part == 0 {
                units.price(p, &mut field);
            } else {
                units.qty(q, &mut field);
            }
            let digits = field.iter().copied().filter(|b| *b != b'.');
            scratch.extend(digits.skip_while(|b| *b == b'0'));
        }
    }
    crc32fast::hash(scratch)
}

/// The checksum of a book given best first per side, as a client computes it.
pub fn book_checksum(units: &Units, bids: &[(Price, Qty)], asks: &[(Price, Qty)]) -> u32 {
    let mut m = MarketState::new(MarketInfo {
        id: 0,
        symbol: String::new(),
        base: String::new(),
        quote: String::new(),
        base_asset: 0,
        quote_asset: 0,
        base_decimals: 0,
        quote_decimals: 0,
        status: MarketStatus::Open,
        units: Some(*units),
        qty_min: 0,
        qty_max: 0,
    });
    for &(p, q) in bids {
        m.bids.set(p, q);
    }
    for &(p, q) in asks {
        m.asks.set(p, q);
    }
    checksum(units, &m, &mut Vec::new())
}

/// The account a balance lookup of the front-end is for, from its query id.
pub fn balance_query_id(account: AccountId) -> u64 {
    PUBLISHER_QUERY_END + u64::from(account)
}

#[cfg(test)]
mod tests;
