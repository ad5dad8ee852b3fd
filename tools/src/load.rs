//! `ringex load`: an open-loop load generator with a realistic user mix.
//!
//! Users, each an account with its own API key and session:
//!
//! | class | users | share of requests | behaviour |
//! |-------|------:|------------------:|-----------|
//! | market maker | 5% | 60% | quotes both sides around a drifting mid, 2 levels a side, and keeps moving them: replace (90%) or cancel then re-quote |
//! | retail | 80% | 20% | sporadic: limit orders near the mid (some marketable), market orders, balance checks, cancels |
//! | bot | 15% | 20% | bursts of 5-20 requests at one instant: IOC takers, post-only joins, cancels |
//!
//! **Open loop.** Every request gets a planned send time from its user's schedule
//! (Poisson arrivals at the user's rate; a bot's burst shares one instant), whatever
//! happens to earlier requests. Latency is measured from the *planned* time to the first
//! answer (accept, reject, replaced, cancelled, query result), so a stalled server or
//! a late generator shows up in the figures instead of silently lowering the offered
//! load (coordinated omission). The service time (actual send to first answer) and the
//! generator's own send lag are reported beside it.
//!
//! **What is counted.** The achieved rate counts only first answers that arrived within
//! the run, divided by its duration: answers that come in the drain afterwards (up to
//! 3 s, waiting for what is still outstanding) are reported beside it, never in it, so a
//! server that queues cannot look faster than it was. Every sent request is in the
//! latency tables: one never answered is recorded at (end of the drain - its planned
//! send), a lower bound on its latency, and counted separately, so a stall can only make
//! the percentiles worse. An answer that refuses the request because the server's input
//! is full (`Unavailable`) is an answer, but not service: the served rate beside the
//! achieved one leaves those refusals out.
//!
//! **Per-user rates follow from `--users`.** The mix fixes each class's share of users
//! and of requests, so a market maker sends `rate * 0.6 / (users * 0.05)` requests a
//! second: at the default 60 users and 100 K/s, 20 K/s each, where a real market maker
//! quotes at 10-50 orders/s. More users spread the same rate over more connections,
//! which costs the server more (fewer requests share a socket write): raise `--users`
//! and the server's connection limits to measure that (docs/benchmarks.md has 600 and
//! 2000 users).
//!
//! **One thread.** All connections are non-blocking and multiplexed on one mio poller;
//! a timerfd wakes the loop at the next planned send with nanosecond precision, so the
//! generator neither spins nor rounds to milliseconds, and leaves the other core to the
//! server on a 2-core machine (`--spin` busy-polls instead, for runs where it has a core
//! of its own). Requests due together on a connection go out in one write.
//!
//! **Setup** goes through the admin listener: accounts `account_base..+users` are
//! created (or reused: `AccountExists` is fine), funded with deposits whose external
//! references are derived from the account and asset (idempotent across reruns), and
//! given API keys whose secrets are derived from `--key-seed`. Users log in with
//! cancel-on-disconnect, so their orders go away when the run ends.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use rand::{RngExt, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use ringex_engine::{OrderRef, RejectReason, Side, StpMode, TimeInForce};
use ringex_gateway::protocol::{permission, ServerMessage};
use serde::Serialize;

use crate::client::{Client, ClientError, ClientOptions, Failover, OrderParams, Request};

/// Command-line arguments of `ringex load`.
#[derive(clap::Args, Clone, Debug)]
pub struct LoadArgs {
    /// Trading listener; several, comma-separated (a primary, then its standby), to fail
    /// over between: a user whose connection breaks tries them in turn (up to 3 times
    /// in the run), resuming its session where it is known, else starting a new one.
    #[arg(long, default_value = "127.0.0.1:9100")]
    pub addr: String,
    /// Admin listener (setup: accounts, deposits, API keys).
    #[arg(long, default_value = "127.0.0.1:9103")]
    pub admin_addr: String,
    #[arg(long, default_value_t = 100)]
    pub admin_key_id: u64,
    #[arg(long, default_value = "demo-admin-secret")]
    pub admin_secret: String,
    /// Target total request rate, requests per second.
    #[arg(long, default_value_t = 10_000)]
    pub rate: u64,
    /// Seconds of load.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Simulated users (each one connection). The default server allows 64
    /// connections per IP.
    #[arg(long, default_value_t = 60)]
    pub users: u32,
    /// Markets to trade, with their reference prices in ticks (`id:price`).
    #[arg(long, value_delimiter = ',', default_values_t = ["1:6000000".to_string(), "2:300000".to_string()])]
    pub markets: Vec<String>,
    /// Assets to fund every user with.
    #[arg(long, value_delimiter = ',', default_values_t = [1u32, 2, 3])]
    pub assets: Vec<u32>,
    /// Deposit per user and asset, in the asset's minor units.
    #[arg(long, default_value_t = 1_000_000_000_000)]
    pub deposit: i64,
    /// First account id of the simulated users.
    #[arg(long, default_value_t = 500_000)]
    pub account_base: u32,
    /// First API key id of the simulated users.
    #[arg(long, default_value_t = 7_000_000)]
    pub key_base: u64,
    /// Seed of the API key secrets (keep it to reuse accounts across runs).
    #[arg(long, default_value_t = 1)]
    pub key_seed: u64,
    /// Seed of the simulation.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Print nothing but the final report.
    #[arg(long)]
    pub quiet: bool,
    /// Busy-poll the sockets instead of sleeping until the next send or answer, as a
    /// latency-sensitive market maker does on a core of its own: no wake-up delay in the
    /// figures. Burns the generator's core for the whole run.
    #[arg(long)]
    pub spin: bool,
    /// Skip the setup through the admin listener: the accounts and keys exist already (a
    /// rerun with the same seeds), or the server takes any login (the echo server of
    /// `ringex bench gateway-floor`). Setup is never part of the measured run.
    #[arg(long)]
    pub no_setup: bool,
}

impl LoadArgs {
    /// Defaults for a quick run against the given listeners (tests, examples).
    pub fn new(addr: SocketAddr, admin_addr: SocketAddr) -> LoadArgs {
        LoadArgs {
            addr: addr.to_string(),
            admin_addr: admin_addr.to_string(),
            admin_key_id: 100,
            admin_secret: "demo-admin-secret".into(),
            rate: 1000,
            duration: 1.0,
            users: 20,
            markets: vec!["1:6000000".into(), "2:300000".into()],
            assets: vec![1, 2, 3],
            deposit: 1_000_000_000_000,
            account_base: 500_000,
            key_base: 7_000_000,
            key_seed: 1,
            seed: 42,
            json: None,
            quiet: true,
            spin: false,
            no_setup: false,
        }
    }
}

// ---------------------------------------------------------------- the user mix

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UserClass {
    MarketMaker,
    Retail,
    Bot,
}

impl UserClass {
    /// Position in [`MIX`].
    fn index(self) -> usize {
        MIX.iter()
            .position(|&(class, _, _)| class == self)
            .expect("every class is in the mix")
    }

    fn snake_name(self) -> &'static str {
        match self {
            UserClass::MarketMaker => "market_maker",
            UserClass::Retail => "retail",
            UserClass::Bot => "bot",
        }
    }
}

/// Class shares: (class, share of users, share of requests).
pub const MIX: [(UserClass, f64, f64); 3] = [
    (UserClass::MarketMaker, 0.05, 0.60),
    (UserClass::Retail, 0.80, 0.20),
    (UserClass::Bot, 0.15, 0.20),
];

/// Mean requests in one bot burst (uniform 5..=20).
const BOT_BURST_MEAN: f64 = 12.5;

/// How many users of each class for `users` users: at least one of each when there
/// are three or more users, retail taking the rounding.
pub fn class_counts(users: u32) -> [(UserClass, u32); 3] {
    let mm = ((users as f64 * MIX[0].1).round() as u32).max(1);
    let bot = ((users as f64 * MIX[2].1).round() as u32).max(1);
    let retail = users.saturating_sub(mm + bot).max(1);
    [
        (UserClass::MarketMaker, mm),
        (UserClass::Retail, retail),
        (UserClass::Bot, bot),
    ]
}

/// The classes of users `0..users` and the request rate of each.
pub fn plan_users(users: u32, rate: f64) -> Vec<(UserClass, f64)> {
    let mut out = Vec::new();
    for ((class, n), (_, _, req_share)) in class_counts(users).into_iter().zip(MIX) {
        let per_user = rate * req_share / n as f64;
        out.extend((0..n).map(|_| (class, per_user)));
    }
    out
}

/// Open-loop arrivals: planned times (ns from the start) of one user's requests.
/// Market makers and retail are Poisson at `rate`; bots send bursts of 5-20 requests at
/// one instant, the bursts Poisson at `rate / 12.5`.
pub struct Schedule {
    class: UserClass,
    rate: f64,
    next_ns: u64,
    burst_left: u32,
}

impl Schedule {
    pub fn new(class: UserClass, rate: f64, rng: &mut Xoshiro256PlusPlus) -> Schedule {
        let mut s = Schedule {
            class,
            rate,
            next_ns: 0,
            burst_left: 0,
        };
        s.next_ns = s.gap(rng);
        s
    }

    fn gap(&self, rng: &mut Xoshiro256PlusPlus) -> u64 {
        let per_second = match self.class {
            UserClass::Bot => self.rate / BOT_BURST_MEAN,
            _ => self.rate,
        };
        if per_second <= 0.0 {
            return u64::MAX / 2;
        }
        let u: f64 = rng.random::<f64>().max(1e-12);
        (-u.ln() / per_second * 1e9) as u64
    }

    /// The planned time of the next request.
    pub fn peek(&self) -> u64 {
        self.next_ns
    }

    /// Consumes the next planned time and schedules the one after.
    pub fn advance(&mut self, rng: &mut Xoshiro256PlusPlus) -> u64 {
        let now = self.next_ns;
        if self.class == UserClass::Bot {
            if self.burst_left == 0 {
                self.burst_left = rng.random_range(5..=20u32);
            }
            self.burst_left -= 1;
            if self.burst_left > 0 {
                return now; // the rest of the burst, same instant
            }
        }
        self.next_ns = now.saturating_add(self.gap(rng));
        now
    }
}

// ---------------------------------------------------------------- markets and users

#[derive(Clone, Copy, Debug)]
struct MarketSim {
    id: u32,
    reference: i64,
    mid: f64,
}

impl MarketSim {
    fn drift(&mut self, rng: &mut Xoshiro256PlusPlus) {
        // A random walk of ~1 bp per step, kept within ±3% of the reference so that
        // every price stays inside the ±10% band around the last trade.
        let step: f64 = rng.random::<f64>() - 0.5;
        let r = self.reference as f64;
        self.mid = (self.mid + step * r * 2e-4).clamp(r * 0.97, r * 1.03);
    }

    fn price(&self, offset_frac: f64) -> i64 {
        ((self.mid * (1.0 + offset_frac)).round() as i64).max(1)
    }
}

/// Request labels in the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    NewLimit,
    NewMarket,
    Replace,
    Cancel,
    Balance,
}

impl Kind {
    const ALL: [Kind; 5] = [
        Kind::NewLimit,
        Kind::NewMarket,
        Kind::Replace,
        Kind::Cancel,
        Kind::Balance,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::NewLimit => "new_limit",
            Kind::NewMarket => "new_market",
            Kind::Replace => "replace",
            Kind::Cancel => "cancel",
            Kind::Balance => "balance",
        }
    }
}

const MM_LEVELS: usize = 2;
const RETAIL_MAX_OPEN: usize = 5;
const BOT_MAX_OPEN: usize = 20;

struct InFlight {
    request_id: u64,
    kind: Kind,
    planned_ns: u64,
    sent_ns: u64,
    answered: bool,
}

struct User {
    class: UserClass,
    market: usize,
    client: Client,
    schedule: Schedule,
    in_flight: VecDeque<InFlight>,
    next_cloid: u64,
    /// Market makers: the client order id resting (or pending) in each slot,
    /// `[bid levels.., ask levels..]`.
    slots: [Option<u64>; 2 * MM_LEVELS],
    next_slot: usize,
    /// Retail and bots: client order ids believed open, oldest first.
    open: VecDeque<u64>,
    dead: bool,
    /// Why the connection broke, until a failover replaces it (then it is reported with
    /// the failovers, not as an error).
    broken: Option<String>,
    /// Failovers this user may still try when its connection breaks.
    failovers_left: u32,
}

/// Failovers one user may make in a run.
const FAILOVERS_PER_USER: u32 = 3;

impl User {
    fn new_cloid(&mut self) -> u64 {
        self.next_cloid += 1;
        self.next_cloid
    }

    /// The order with this client id is gone (filled, cancelled, rejected).
    fn forget(&mut self, cloid: u64) {
        if cloid == 0 {
            return;
        }
        for s in self.slots.iter_mut() {
            if *s == Some(cloid) {
                *s = None;
            }
        }
        if let Some(i) = self.open.iter().position(|c| *c == cloid) {
            self.open.remove(i);
        }
    }

    /// The next request of this user.
    fn next_request(
        &mut self,
        market: &MarketSim,
        rng: &mut Xoshiro256PlusPlus,
    ) -> (Kind, Request) {
        let m = market.id;
        match self.class {
            UserClass::MarketMaker => {
                let slot = self.next_slot;
                self.next_slot = (self.next_slot + 1) % self.slots.len();
                let side = if slot < MM_LEVELS {
                    Side::Buy
                } else {
                    Side::Sell
                };
                let level = (slot % MM_LEVELS) as f64;
                let sign = if side == Side::Buy { -1.0 } else { 1.0 };
                let jitter: f64 = rng.random::<f64>() * 2e-4;
                let price = market.price(sign * (5e-4 + level * 2e-4 + jitter));
                let qty = rng.random_range(1..=5u64);
                match self.slots[slot] {
                    Some(cloid) if rng.random_bool(0.9) => (
                        Kind::Replace,
                        Request::Replace {
                            market: m,
                            order: OrderRef::Client(cloid),
                            price,
                            qty,
                        },
                    ),
                    Some(cloid) => {
                        self.slots[slot] = None;
                        (
                            Kind::Cancel,
                            Request::Cancel {
                                market: m,
                                order: OrderRef::Client(cloid),
                            },
                        )
                    }
                    None => {
                        let cloid = self.new_cloid();
                        self.slots[slot] = Some(cloid);
                        (
                            Kind::NewLimit,
                            Request::NewOrder(
                                OrderParams::limit(m, side, price, qty)
                                    .client_order_id(cloid)
                                    .stp(StpMode::CancelNewest),
                            ),
                        )
                    }
                }
            }
            UserClass::Retail => {
                let side = if rng.random_bool(0.5) {
                    Side::Buy
                } else {
                    Side::Sell
                };
                let roll: f64 = rng.random();
                if roll < 0.2 {
                    (Kind::Balance, Request::BalanceQuery)
                } else if roll < 0.4 {
                    let qty = rng.random_range(1..=3u64);
                    (
                        Kind::NewMarket,
                        Request::NewOrder(OrderParams::market(m, side, qty)),
                    )
                } else if roll < 0.5 || self.open.len() >= RETAIL_MAX_OPEN {
                    match self.open.pop_front() {
                        Some(cloid) => (
                            Kind::Cancel,
                            Request::Cancel {
                                market: m,
                                order: OrderRef::Client(cloid),
                            },
                        ),
                        None => (Kind::Balance, Request::BalanceQuery),
                    }
                } else {
                    // Mostly passive, sometimes marketable.
                    let sign = if side == Side::Buy { 1.0 } else { -1.0 };
                    let off = rng.random_range(-4e-3..2e-3) * sign;
                    let qty = rng.random_range(1..=3u64);
                    let cloid = self.new_cloid();
                    self.open.push_back(cloid);
                    (
                        Kind::NewLimit,
                        Request::NewOrder(
                            OrderParams::limit(m, side, market.price(off), qty)
                                .client_order_id(cloid),
                        ),
                    )
                }
            }
            UserClass::Bot => {
                let side = if rng.random_bool(0.5) {
                    Side::Buy
                } else {
                    Side::Sell
                };
                let sign = if side == Side::Buy { 1.0 } else { -1.0 };
                let roll: f64 = rng.random();
                let qty = rng.random_range(1..=2u64);
                if roll < 0.15 || self.open.len() >= BOT_MAX_OPEN {
                    if let Some(cloid) = self.open.pop_front() {
                        return (
                            Kind::Cancel,
                            Request::Cancel {
                                market: m,
                                order: OrderRef::Client(cloid),
                            },
                        );
                    }
                }
                if roll < 0.75 {
                    // Take liquidity: IOC through the touch.
                    (
                        Kind::NewLimit,
                        Request::NewOrder(
                            OrderParams::limit(m, side, market.price(sign * 1e-3), qty)
                                .tif(TimeInForce::Ioc),
                        ),
                    )
                } else {
                    // Join the book behind the makers.
                    let cloid = self.new_cloid();
                    self.open.push_back(cloid);
                    (
                        Kind::NewLimit,
                        Request::NewOrder(
                            OrderParams::limit(m, side, market.price(-sign * 8e-4), qty)
                                .tif(TimeInForce::PostOnly)
                                .client_order_id(cloid),
                        ),
                    )
                }
            }
        }
    }
}

// ---------------------------------------------------------------- report

#[derive(Clone, Debug, Default, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Percentiles {
        let us = |v: u64| v as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub target_rate: u64,
    pub duration_s: f64,
    pub users: BTreeMap<String, u32>,
    /// Requests planned within the duration.
    pub planned: u64,
    pub sent: u64,
    /// Requests whose first answer arrived, within the run or in the drain after it.
    pub answered: u64,
    /// Of those, first answers that arrived within the run (what `achieved_rate` counts).
    pub answered_in_run: u64,
    /// First answers that arrived in the drain after the run (not in `achieved_rate`).
    pub answered_in_drain: u64,
    /// Sent but never answered by the end of the drain. Each is in the latency tables at
    /// (end of the drain - its planned send; service time: - its actual send), a lower
    /// bound on its latency.
    pub unanswered: u64,
    /// Seconds spent after the run waiting for outstanding answers (at most 3).
    pub drain_s: f64,
    /// First answers received within the run per second of the run:
    /// `answered_in_run / duration_s`.
    pub achieved_rate: f64,
    /// Requests whose first answer refused them as `Unavailable` (the server's input was
    /// full), within the run or after it; counted in `answered` too.
    pub refused_unavailable: u64,
    /// Answers within the run other than those refusals, per second of the run.
    pub served_rate: f64,
    pub accepted: u64,
    /// Every reject, `too_late` included.
    pub rejected: u64,
    /// Rejects other than `too_late`, by reason.
    pub rejects_by_reason: BTreeMap<String, u64>,
    /// Cancels and replaces refused `UnknownOrder` because the order filled (or expired)
    /// while they were in flight: the race any client meets, not a fault.
    pub too_late: u64,
    pub fills: u64,
    /// Failures that ended a user's part of the run (a connection lost with no failover
    /// left, or a failover that found no server). A connection lost and then failed over
    /// is in `failover_causes` instead.
    pub errors: u64,
    /// Users whose connection was broken at the end of the run (failed, no failover).
    pub connections_lost: u64,
    /// Users that reconnected after a failure (`--addr` with several addresses).
    pub failovers: u64,
    /// Requests in flight when a user failed over to a server that did not know its
    /// session: never answered (the old server may or may not have processed them);
    /// counted in `unanswered` too.
    pub failover_unanswered: u64,
    /// Why the connections that failed over broke (the first 20).
    pub failover_causes: Vec<String>,
    pub error_messages: Vec<String>,
    /// Planned send -> first answer (coordinated-omission corrected), per request type
    /// and `all`; every sent request, the unanswered ones as described at `unanswered`.
    pub latency: BTreeMap<String, Percentiles>,
    /// Actual send -> first answer; every sent request, likewise.
    pub service_time: BTreeMap<String, Percentiles>,
    /// Planned send -> first answer per user class (`market_maker`, `retail`, `bot`): a
    /// bot's burst waits for itself, a market maker's quote does not.
    pub latency_by_class: BTreeMap<String, Percentiles>,
    /// How late the generator sent requests after their planned time.
    pub send_lag: Percentiles,
}

impl Report {
    /// What makes the run a failure: connections lost and requests never answered, or
    /// None when every user kept its connection and every request was answered.
    pub fn failure(&self) -> Option<String> {
        if self.connections_lost == 0 && self.unanswered == 0 {
            return None;
        }
        Some(format!(
            "{} of {} connections lost, {} of {} requests never answered",
            self.connections_lost,
            self.users.values().sum::<u32>(),
            self.unanswered,
            self.sent
        ))
    }

    pub fn print(&self) {
        println!(
            "ringex load: target {} req/s for {:.1} s, users {:?}",
            self.target_rate, self.duration_s, self.users
        );
        println!(
            "  planned {}  sent {}  answered {} ({} within the run, {} in the {:.1} s drain \
             after it)  never answered {}",
            self.planned,
            self.sent,
            self.answered,
            self.answered_in_run,
            self.answered_in_drain,
            self.drain_s,
            self.unanswered
        );
        println!(
            "  achieved {:.0} req/s ({:.1}% of target): answers received within the run / \
             {:.1} s (answers in the drain not counted)",
            self.achieved_rate,
            100.0 * self.achieved_rate / self.target_rate.max(1) as f64,
            self.duration_s
        );
        println!(
            "  served {:.0} req/s ({:.1}% of target): the same without the {} refused \
             Unavailable (the server's input was full)",
            self.served_rate,
            100.0 * self.served_rate / self.target_rate.max(1) as f64,
            self.refused_unavailable
        );
        println!(
            "  accepted {}  rejected {}  fills {}  errors {}",
            self.accepted, self.rejected, self.fills, self.errors
        );
        if self.failovers > 0 {
            println!(
                "  failovers {} ({} requests in flight then were never answered)",
                self.failovers, self.failover_unanswered
            );
            for why in &self.failover_causes {
                println!("    failed over after: {why}");
            }
        }
        for (reason, n) in &self.rejects_by_reason {
            println!("    reject {reason}: {n}");
        }
        if self.too_late > 0 {
            println!(
                "    too late {}: cancels and replaces of an order that filled or expired \
                 while they were in flight (answered UnknownOrder; expected with this mix)",
                self.too_late
            );
        }
        for e in &self.error_messages {
            println!("    error: {e}");
        }
        if self.unanswered > 0 {
            println!(
                "  latency tables count every sent request; the {} never answered are in them \
                 at (end of the drain - send), a lower bound",
                self.unanswered
            );
        } else {
            println!("  latency tables count every sent request (all were answered)");
        }
        println!("  round trip, planned send -> first answer (CO-corrected), microseconds:");
        print_table(&self.latency);
        println!("  service time, actual send -> first answer, microseconds:");
        print_table(&self.service_time);
        println!("  round trip by user class (CO-corrected), microseconds:");
        print_table(&self.latency_by_class);
        let l = &self.send_lag;
        println!(
            "  generator send lag: p50 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1} us",
            l.p50_us, l.p99_us, l.p999_us, l.max_us
        );
    }
}

fn print_table(t: &BTreeMap<String, Percentiles>) {
    println!(
        "    {:<12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "", "count", "p50", "p90", "p99", "p99.9", "max"
    );
    for (k, p) in t {
        println!(
            "    {:<12} {:>9} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>10.1}",
            k, p.count, p.p50_us, p.p90_us, p.p99_us, p.p999_us, p.max_us
        );
    }
}

// ---------------------------------------------------------------- timerfd

/// A monotonic timerfd for sub-millisecond wakeups of the poller.
struct Timer(RawFd);

impl Timer {
    fn new() -> io::Result<Timer> {
        // SAFETY: plain syscall; the fd is owned by the Timer and closed on drop.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Timer(fd))
    }

    /// Fires once after `after` (at least 1 µs).
    fn arm(&self, after: Duration) -> io::Result<()> {
        let after = after.max(Duration::from_micros(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: after.as_secs() as libc::time_t,
                tv_nsec: after.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: valid fd and itimerspec.
        let r = unsafe { libc::timerfd_settime(self.0, 0, &spec, std::ptr::null_mut()) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Clears the expiration count so the next expiry is a new readiness edge.
    fn clear(&self) {
        let mut buf = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a valid buffer; EAGAIN is fine.
        unsafe { libc::read(self.0, buf.as_mut_ptr().cast(), 8) };
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        // SAFETY: the fd is ours.
        unsafe { libc::close(self.0) };
    }
}

// ---------------------------------------------------------------- run

fn parse_markets(specs: &[String]) -> Result<Vec<MarketSim>, String> {
    specs
        .iter()
        .map(|s| {
            let (id, price) = s
                .split_once(':')
                .ok_or_else(|| format!("market `{s}`: expected id:reference_price"))?;
            let id: u32 = id
                .trim()
                .parse()
                .map_err(|e| format!("market `{s}`: {e}"))?;
            let reference: i64 = price
                .trim()
                .parse()
                .map_err(|e| format!("market `{s}`: {e}"))?;
            if id == 0 || reference <= 0 {
                return Err(format!("market `{s}`: id and price must be positive"));
            }
            Ok(MarketSim {
                id,
                reference,
                mid: reference as f64,
            })
        })
        .collect()
}

/// Comma-separated addresses, each resolved.
fn resolve_all(addrs: &str) -> Result<Vec<SocketAddr>, String> {
    let all = addrs
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(resolve)
        .collect::<Result<Vec<_>, _>>()?;
    if all.is_empty() {
        return Err("--addr: no address".into());
    }
    Ok(all)
}

fn resolve(addr: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    addr.to_socket_addrs()
        .map_err(|e| format!("{addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr}: no address"))
}

/// The API key secret of a simulated account.
pub fn user_secret(key_seed: u64, account: u32) -> String {
    format!("ringex-load-{key_seed}-{account}")
}

/// Creates (or reuses) the accounts, funds them and registers their keys.
fn setup(args: &LoadArgs, admin_addr: SocketAddr) -> Result<(), String> {
    let mut admin = Client::connect(
        admin_addr,
        args.admin_key_id,
        &args.admin_secret,
        ClientOptions::default(),
    )
    .map_err(|e| format!("admin login at {admin_addr}: {e}"))?;
    let ok_or_exists = |r: Result<_, ClientError>, exists: RejectReason| match r {
        Ok(_) => Ok(()),
        Err(ClientError::Rejected(rej)) if rej.reason == exists => Ok(()),
        Err(e) => Err(e.to_string()),
    };
    for i in 0..args.users {
        let account = args.account_base + i;
        ok_or_exists(admin.create_account(account), RejectReason::AccountExists)?;
        for &asset in &args.assets {
            // One reference per (account, asset): a rerun does not deposit again.
            let external_ref =
                0x4c4f_4144_0000_0000 | (u64::from(account) << 16) | u64::from(asset);
            admin
                .deposit(account, asset, args.deposit, external_ref)
                .map_err(|e| format!("deposit to {account}: {e}"))?;
        }
        ok_or_exists(
            admin.add_api_key(
                account,
                args.key_base + u64::from(i),
                &user_secret(args.key_seed, account),
                permission::TRADE,
            ),
            RejectReason::ApiKeyExists,
        )?;
    }
    let _ = admin.logout();
    Ok(())
}

struct Stats {
    latency: BTreeMap<Kind, Histogram<u64>>,
    service: BTreeMap<Kind, Histogram<u64>>,
    all_latency: Histogram<u64>,
    all_service: Histogram<u64>,
    /// Indexed like [`MIX`].
    by_class: [Histogram<u64>; 3],
    send_lag: Histogram<u64>,
    planned: u64,
    sent: u64,
    answered: u64,
    /// First answers that arrived up to `run_ns` (the end of the run, before the drain).
    answered_in_run: u64,
    /// First answers refusing the request as `Unavailable`: all, and within the run.
    refused: u64,
    refused_in_run: u64,
    run_ns: u64,
    accepted: u64,
    rejected: u64,
    fills: u64,
    rejects: BTreeMap<String, u64>,
    /// Cancels and replaces refused `UnknownOrder`: the order ended while they were in
    /// flight.
    too_late: u64,
    errors: Vec<String>,
    failovers: u64,
    failover_unanswered: u64,
    failover_causes: Vec<String>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("histogram bounds")
}

impl Stats {
    fn new(run_ns: u64) -> Stats {
        Stats {
            latency: Kind::ALL.iter().map(|k| (*k, histogram())).collect(),
            service: Kind::ALL.iter().map(|k| (*k, histogram())).collect(),
            all_latency: histogram(),
            all_service: histogram(),
            by_class: [histogram(), histogram(), histogram()],
            send_lag: histogram(),
            planned: 0,
            sent: 0,
            answered: 0,
            answered_in_run: 0,
            refused: 0,
            refused_in_run: 0,
            run_ns,
            accepted: 0,
            rejected: 0,
            fills: 0,
            rejects: BTreeMap::new(),
            too_late: 0,
            errors: Vec::new(),
            failovers: 0,
            failover_unanswered: 0,
            failover_causes: Vec::new(),
        }
    }

    /// Records `f`'s latency (from its planned send) and service time (from its actual
    /// send) as of `now_ns`: its first answer, or the end of the run for one never answered.
    fn record(&mut self, class: UserClass, f: &InFlight, now_ns: u64) {
        let lat = now_ns.saturating_sub(f.planned_ns).max(1);
        let svc = now_ns.saturating_sub(f.sent_ns).max(1);
        self.all_latency.saturating_record(lat);
        self.all_service.saturating_record(svc);
        self.by_class[class.index()].saturating_record(lat);
        if let Some(h) = self.latency.get_mut(&f.kind) {
            h.saturating_record(lat);
        }
        if let Some(h) = self.service.get_mut(&f.kind) {
            h.saturating_record(svc);
        }
    }
}

/// Handles one server message of `user`.
fn on_message(user: &mut User, msg: &ServerMessage, now_ns: u64, stats: &mut Stats) {
    let request_id = msg.request_id().unwrap_or(0);
    // Order state first.
    match msg {
        ServerMessage::Filled(f) => {
            stats.fills += 1;
            if f.remaining_qty == 0 {
                user.forget(f.client_order_id);
            }
        }
        ServerMessage::Cancelled(c) => user.forget(c.client_order_id),
        ServerMessage::OrderRejected(r) => {
            stats.rejected += 1;
            // The generator cancels and replaces only orders it placed and has not seen
            // end, so `UnknownOrder` there is the race every client meets: the order
            // filled (or expired) while the cancel was on its way.
            let amends = user.in_flight.iter().any(|f| {
                f.request_id == request_id && matches!(f.kind, Kind::Cancel | Kind::Replace)
            });
            if amends && r.reason == RejectReason::UnknownOrder {
                stats.too_late += 1;
            } else {
                *stats.rejects.entry(format!("{:?}", r.reason)).or_default() += 1;
            }
            if let Some(OrderRef::Client(cloid)) = r.order {
                // A refused new order never rested; a refused cancel/replace names an
                // order that is gone (UnknownOrder) or will be treated as gone.
                user.forget(cloid);
            }
        }
        ServerMessage::OrderAccepted(_) | ServerMessage::Replaced(_) => stats.accepted += 1,
        _ => {}
    }
    if request_id == 0 {
        return;
    }
    let Some(pos) = user
        .in_flight
        .iter()
        .position(|f| f.request_id == request_id)
    else {
        return;
    };
    let f = &mut user.in_flight[pos];
    if !f.answered {
        f.answered = true;
        stats.answered += 1;
        let in_run = now_ns <= stats.run_ns;
        if in_run {
            stats.answered_in_run += 1;
        }
        if matches!(msg, ServerMessage::OrderRejected(r) if r.reason == RejectReason::Unavailable) {
            stats.refused += 1;
            if in_run {
                stats.refused_in_run += 1;
            }
        }
        stats.record(user.class, f, now_ns);
    }
    if matches!(msg, ServerMessage::RequestDone(_)) {
        user.in_flight.remove(pos);
    }
}

/// Runs the load and returns the report (also printed, and written as
/// JSON with `--json`). Errors are setup failures; failures during the run are counted
/// in the report.
pub fn run(args: &LoadArgs) -> Result<Report, String> {
    // Each user is a connection, and the schedule's gaps are whole nanoseconds.
    const USERS_MAX: u32 = 100_000;
    const RATE_MAX: u64 = 100_000_000;
    if !(3..=USERS_MAX).contains(&args.users) {
        return Err(format!(
            "--users must be in 3..={USERS_MAX} (at least one of each class)"
        ));
    }
    if args.rate == 0 || args.duration.is_nan() || args.duration <= 0.0 {
        return Err("--rate and --duration must be positive".into());
    }
    if args.duration > 86_400.0 {
        return Err("--duration must be at most 86400 s".into());
    }
    if args.rate > RATE_MAX {
        return Err(format!("--rate must be at most {RATE_MAX} requests/s"));
    }
    let mut markets = parse_markets(&args.markets)?;
    if markets.is_empty() {
        return Err("no markets".into());
    }
    let addrs = resolve_all(&args.addr)?;
    let admin_addr = resolve(&args.admin_addr)?;
    let say = |s: String| {
        if !args.quiet {
            eprintln!("{s}");
        }
    };

    let plan = plan_users(args.users, args.rate as f64);
    let counts = class_counts(args.users);
    let mm_rate = plan[0].1;
    say(format!(
        "load: {} users ({} market makers at {:.0} req/s each, {} retail at {:.1}, {} bots at {:.1}), target {} req/s for {:.1} s",
        args.users,
        counts[0].1,
        mm_rate,
        counts[1].1,
        args.rate as f64 * MIX[1].2 / counts[1].1 as f64,
        counts[2].1,
        args.rate as f64 * MIX[2].2 / counts[2].1 as f64,
        args.rate,
        args.duration
    ));
    if mm_rate > 10_000.0 {
        say(format!(
            "load: warning: {mm_rate:.0} req/s per market maker is above the default per-key \
             limit (10,000/s); expect RateLimited rejects unless the server allows more \
             (or use more --users)"
        ));
    }

    if !args.no_setup {
        say("load: setting up accounts through the admin listener".into());
        setup(args, admin_addr)?;
    }

    let mut rng = Xoshiro256PlusPlus::seed_from_u64(args.seed);
    let mut users = Vec::with_capacity(plan.len());
    for (i, (class, rate)) in plan.iter().enumerate() {
        let account = args.account_base + i as u32;
        let options = ClientOptions {
            cancel_on_disconnect: true,
            outbox_capacity: 1 << 20,
            // A standby being promoted opens its listener within a second or so.
            failover_rounds: 50,
            ..ClientOptions::default()
        };
        let client = Client::connect_any(
            &addrs,
            args.key_base + i as u64,
            &user_secret(args.key_seed, account),
            options,
        )
        .map_err(|e| format!("user {i} (account {account}) login at {}: {e}", args.addr))?;
        users.push(User {
            class: *class,
            market: i % markets.len(),
            client,
            schedule: Schedule::new(*class, *rate, &mut rng),
            in_flight: VecDeque::new(),
            next_cloid: 0,
            slots: [None; 2 * MM_LEVELS],
            next_slot: 0,
            open: VecDeque::new(),
            dead: false,
            broken: None,
            failovers_left: if addrs.len() > 1 {
                FAILOVERS_PER_USER
            } else {
                0
            },
        });
    }
    say(format!("load: {} users logged in; running", users.len()));

    let mut poll = Poll::new().map_err(|e| e.to_string())?;
    let timer = Timer::new().map_err(|e| e.to_string())?;
    let timer_token = Token(usize::MAX);
    poll.registry()
        .register(&mut SourceFd(&timer.0), timer_token, Interest::READABLE)
        .map_err(|e| e.to_string())?;
    for (i, u) in users.iter().enumerate() {
        poll.registry()
            .register(
                &mut SourceFd(&u.client.raw_fd()),
                Token(i),
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|e| e.to_string())?;
    }

    let duration_ns = (args.duration * 1e9) as u64;
    let mut stats = Stats::new(duration_ns);
    let mut heap: BinaryHeap<Reverse<(u64, usize)>> = users
        .iter()
        .enumerate()
        .map(|(i, u)| Reverse((u.schedule.peek(), i)))
        .collect();
    let mut events = Events::with_capacity(1024);
    let mut dirty: Vec<usize> = Vec::new();
    let mut is_dirty = vec![false; users.len()];
    // Messages of one read, and users whose read stopped at its bound (no new readiness
    // edge will come for what is left): reused, nothing allocated per pass.
    let mut received: Vec<ServerMessage> = Vec::with_capacity(1024);
    let mut unread: Vec<(usize, bool)> = Vec::new();
    let mut reading: Vec<(usize, bool)> = Vec::new();
    let drain_ns = 3_000_000_000u64;
    let start = Instant::now();
    let mut next_drift = 0u64;
    let mut next_keepalive = 0u64;

    let fail = |user: &mut User, stats: &mut Stats, e: ClientError| {
        if !user.dead {
            user.dead = true;
            let what = format!("account {}: {e}", user.client.account());
            if user.failovers_left > 0 {
                user.broken = Some(what);
            } else {
                stats.errors.push(what);
            }
        }
    };

    // When the loop ends: at the run's end, or at the end of the drain after it.
    let end_ns = loop {
        let now_ns = start.elapsed().as_nanos() as u64;
        let loading = now_ns < duration_ns;
        if !loading {
            let outstanding: usize = users
                .iter()
                .filter(|u| !u.dead)
                .map(|u| u.in_flight.len())
                .sum();
            if outstanding == 0 || now_ns >= duration_ns + drain_ns {
                break now_ns;
            }
        }

        // Market drift every 10 ms, keepalives every 100 ms.
        while now_ns >= next_drift {
            for m in markets.iter_mut() {
                m.drift(&mut rng);
            }
            next_drift += 10_000_000;
        }
        if now_ns >= next_keepalive {
            for u in users.iter_mut() {
                if !u.dead {
                    if let Err(e) = u.client.keepalive() {
                        fail(u, &mut stats, e);
                    }
                }
            }
            next_keepalive = now_ns + 100_000_000;
        }

        // Send everything due.
        if loading {
            while let Some(&Reverse((due, i))) = heap.peek() {
                if due > now_ns || due >= duration_ns {
                    break;
                }
                heap.pop();
                let u = &mut users[i];
                let planned = u.schedule.advance(&mut rng);
                stats.planned += 1;
                if !u.dead {
                    let market = markets[u.market];
                    let (kind, req) = u.next_request(&market, &mut rng);
                    match u.client.queue_request(&req) {
                        Ok(request_id) => {
                            stats.sent += 1;
                            stats
                                .send_lag
                                .saturating_record(now_ns - planned.min(now_ns) + 1);
                            u.in_flight.push_back(InFlight {
                                request_id,
                                kind,
                                planned_ns: planned,
                                sent_ns: now_ns,
                                answered: false,
                            });
                            if !is_dirty[i] {
                                is_dirty[i] = true;
                                dirty.push(i);
                            }
                        }
                        Err(e) => fail(u, &mut stats, e),
                    }
                }
                heap.push(Reverse((u.schedule.peek(), i)));
            }
            for i in dirty.drain(..) {
                is_dirty[i] = false;
                let u = &mut users[i];
                if let Err(e) = u.client.flush() {
                    fail(u, &mut stats, e);
                }
            }
        }

        // Wait for answers or the next planned send.
        let now_ns = start.elapsed().as_nanos() as u64;
        let next_due = heap.peek().map_or(u64::MAX, |r| r.0 .0);
        let wake = if loading && next_due < duration_ns {
            next_due
        } else {
            (now_ns + 1_000_000).min(duration_ns.max(now_ns + 1))
        }
        .min(next_keepalive)
        .min(next_drift);
        if wake > now_ns && !args.spin && unread.is_empty() {
            timer
                .arm(Duration::from_nanos(wake - now_ns))
                .map_err(|e| e.to_string())?;
            match poll.poll(&mut events, None) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.to_string()),
            }
        } else {
            match poll.poll(&mut events, Some(Duration::ZERO)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.to_string()),
            }
        }
        for ev in events.iter() {
            if ev.token() == timer_token {
                timer.clear();
                continue;
            }
            let i = ev.token().0;
            let u = &mut users[i];
            if u.dead {
                continue;
            }
            if ev.is_writable() {
                if let Err(e) = u.client.flush() {
                    fail(u, &mut stats, e);
                    continue;
                }
            }
            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                unread.push((i, ev.is_read_closed() || ev.is_error()));
            }
        }
        std::mem::swap(&mut unread, &mut reading);
        for &(i, peer_closed) in &reading {
            let u = &mut users[i];
            if u.dead {
                continue;
            }
            received.clear();
            let read = u.client.read_ready(peer_closed, &mut |m| received.push(m));
            let t = start.elapsed().as_nanos() as u64;
            for msg in &received {
                on_message(u, msg, t, &mut stats);
            }
            match read {
                Ok((_, false)) => {}
                Ok((_, true)) => unread.push((i, peer_closed)),
                Err(e) => fail(u, &mut stats, e),
            }
        }
        reading.clear();

        // Users whose connection broke and who may fail over: to the next address that
        // takes them (blocking: the run is disturbed anyway).
        for (i, u) in users.iter_mut().enumerate() {
            if !u.dead || u.failovers_left == 0 {
                continue;
            }
            u.failovers_left -= 1;
            match u.client.failover() {
                Ok(how) => {
                    let t = start.elapsed().as_nanos() as u64;
                    if let Failover::NewSession { .. } = how {
                        // Never answered: the new server does not know them.
                        for f in u.in_flight.drain(..).filter(|f| !f.answered) {
                            stats.record(u.class, &f, t);
                            stats.failover_unanswered += 1;
                        }
                        u.open.clear();
                        u.slots = [None; 2 * MM_LEVELS];
                    }
                    let fd = u.client.raw_fd();
                    let interest = Interest::READABLE | Interest::WRITABLE;
                    let registered = poll
                        .registry()
                        .register(&mut SourceFd(&fd), Token(i), interest)
                        .or_else(|_| {
                            poll.registry()
                                .reregister(&mut SourceFd(&fd), Token(i), interest)
                        });
                    match registered {
                        Ok(()) => {
                            u.dead = false;
                            stats.failovers += 1;
                            if let Some(why) = u.broken.take() {
                                stats.failover_causes.push(why);
                            }
                        }
                        Err(e) => {
                            let why = u.broken.take().unwrap_or_default();
                            stats.errors.push(format!("{why}; failover: {e}"))
                        }
                    }
                }
                Err(e) => {
                    let why = u.broken.take().unwrap_or_default();
                    stats.errors.push(format!("{why}; failover: {e}"))
                }
            }
        }
    };

    // Requests never answered (including those of users whose connection failed) go into
    // the latency tables at the end of the drain: a lower bound, never left out.
    let mut unanswered = stats.failover_unanswered;
    for u in users.iter_mut() {
        if let Some(why) = u.broken.take() {
            stats.errors.push(why);
        }
    }
    for u in &users {
        for f in u.in_flight.iter().filter(|f| !f.answered) {
            unanswered += 1;
            stats.record(u.class, f, end_ns);
        }
    }
    let connections_lost = users.iter().filter(|u| u.dead).count() as u64;
    for u in users.iter_mut() {
        if !u.dead {
            let _ = u.client.logout();
        }
    }

    let run_s = (duration_ns as f64 / 1e9).max(1e-9);
    let mut report = Report {
        target_rate: args.rate,
        duration_s: args.duration,
        users: counts.iter().map(|(c, n)| (format!("{c:?}"), *n)).collect(),
        planned: stats.planned,
        sent: stats.sent,
        answered: stats.answered,
        answered_in_run: stats.answered_in_run,
        answered_in_drain: stats.answered - stats.answered_in_run,
        unanswered,
        drain_s: end_ns.saturating_sub(duration_ns) as f64 / 1e9,
        achieved_rate: stats.answered_in_run as f64 / run_s,
        refused_unavailable: stats.refused,
        served_rate: (stats.answered_in_run - stats.refused_in_run) as f64 / run_s,
        accepted: stats.accepted,
        rejected: stats.rejected,
        rejects_by_reason: stats.rejects.clone(),
        too_late: stats.too_late,
        fills: stats.fills,
        errors: stats.errors.len() as u64,
        connections_lost,
        failovers: stats.failovers,
        failover_unanswered: stats.failover_unanswered,
        failover_causes: stats.failover_causes.iter().take(20).cloned().collect(),
        error_messages: stats.errors.iter().take(20).cloned().collect(),
        latency: BTreeMap::new(),
        service_time: BTreeMap::new(),
        latency_by_class: BTreeMap::new(),
        send_lag: Percentiles::of(&stats.send_lag),
    };
    for (class, _, _) in MIX {
        let h = &stats.by_class[class.index()];
        if !h.is_empty() {
            report
                .latency_by_class
                .insert(class.snake_name().into(), Percentiles::of(h));
        }
    }
    for k in Kind::ALL {
        if !stats.latency[&k].is_empty() {
            report
                .latency
                .insert(k.name().into(), Percentiles::of(&stats.latency[&k]));
            report
                .service_time
                .insert(k.name().into(), Percentiles::of(&stats.service[&k]));
        }
    }
    report
        .latency
        .insert("all".into(), Percentiles::of(&stats.all_latency));
    report
        .service_time
        .insert("all".into(), Percentiles::of(&stats.all_service));

    // `--quiet` silences the progress lines, never the report.
    report.print();
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_class_index_is_its_position_in_the_mix() {
        for (i, (class, _, _)) in MIX.iter().enumerate() {
            assert_eq!(class.index(), i);
        }
    }

    #[test]
    fn class_counts_follow_the_mix() {
        assert_eq!(
            class_counts(100),
            [
                (UserClass::MarketMaker, 5),
                (UserClass::Retail, 80),
                (UserClass::Bot, 15)
            ]
        );
        assert_eq!(
            class_counts(60),
            [
                (UserClass::MarketMaker, 3),
                (UserClass::Retail, 48),
                (UserClass::Bot, 9)
            ]
        );
        // Small runs still have one of each.
        let c = class_counts(3);
        assert!(c.iter().all(|(_, n)| *n == 1));
    }

    #[test]
    fn request_shares_follow_the_mix() {
        let plan = plan_users(100, 10_000.0);
        let total: f64 = plan.iter().map(|(_, r)| r).sum();
        assert!((total - 10_000.0).abs() < 1e-6);
        let share = |c| {
            plan.iter()
                .filter(|(k, _)| *k == c)
                .map(|(_, r)| r)
                .sum::<f64>()
                / total
        };
        assert!((share(UserClass::MarketMaker) - 0.6).abs() < 1e-9);
        assert!((share(UserClass::Retail) - 0.2).abs() < 1e-9);
        assert!((share(UserClass::Bot) - 0.2).abs() < 1e-9);
    }

    /// Simulates the schedules of a whole user mix and checks the realised shares and
    /// rate, and that bots come in bursts.
    #[test]
    fn schedules_realise_the_planned_rates() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
        let plan = plan_users(100, 20_000.0);
        let mut scheds: Vec<Schedule> = plan
            .iter()
            .map(|(c, r)| Schedule::new(*c, *r, &mut rng))
            .collect();
        let horizon = 10_000_000_000u64; // 10 s simulated
        let mut per_class = [0u64; 3];
        let mut same_instant = 0u64;
        let mut bot_total = 0u64;
        for (i, s) in scheds.iter_mut().enumerate() {
            let mut last = u64::MAX;
            while s.peek() < horizon {
                let t = s.advance(&mut rng);
                let c = match plan[i].0 {
                    UserClass::MarketMaker => 0,
                    UserClass::Retail => 1,
                    UserClass::Bot => 2,
                };
                per_class[c] += 1;
                if c == 2 {
                    bot_total += 1;
                    if t == last {
                        same_instant += 1;
                    }
                }
                last = t;
            }
        }
        let total: u64 = per_class.iter().sum();
        let rate = total as f64 / 10.0;
        assert!((rate / 20_000.0 - 1.0).abs() < 0.03, "rate {rate}");
        let share = |i: usize| per_class[i] as f64 / total as f64;
        assert!((share(0) - 0.6).abs() < 0.02, "{per_class:?}");
        assert!((share(1) - 0.2).abs() < 0.02, "{per_class:?}");
        assert!((share(2) - 0.2).abs() < 0.03, "{per_class:?}");
        // Most bot requests share their instant with the previous one (bursts of 5-20).
        assert!(same_instant as f64 / bot_total as f64 > 0.8);
    }

    #[test]
    fn generated_orders_stay_in_the_band() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
        let mut m = MarketSim {
            id: 1,
            reference: 6_000_000,
            mid: 6_000_000.0,
        };
        for _ in 0..100_000 {
            m.drift(&mut rng);
            for off in [-5e-3, 5e-3] {
                let p = m.price(off);
                assert!((5_400_000..=6_600_000).contains(&p), "{p}");
            }
        }
    }

    #[test]
    fn market_args_parse() {
        let m = parse_markets(&["1:6000000".into(), " 2 : 300000".into()]).unwrap();
        assert_eq!((m[1].id, m[1].reference), (2, 300_000));
        assert!(parse_markets(&["1".into()]).is_err());
        assert!(parse_markets(&["0:5".into()]).is_err());
    }
}
