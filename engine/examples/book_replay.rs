//! Replays a file of book operations (written by `ringex bench engine --dump-ops DIR`)
//! into standalone `OrderBook<()>`s and prints the CPU time per operation: books from
//! `new()` and from `with_capacity(2^20 / markets)`, alternated pass by pass, median of
//! the passes. The time is the thread's CPU time (`/proc/thread-self/schedstat`), so
//! time spent waiting for a core on a busy machine is not counted; wall time follows. Uses only the book API that has not changed since the first releases, so
//! the same file builds against older engine sources (`scripts/bench-book-ab.sh`).
//!
//! Usage: `book_replay OPS_FILE [PASSES]` (default 5 passes).

use std::hint::black_box;
use std::time::Instant;

use ringex_engine::book::{Incoming, NullSink, OrderBook};
use ringex_engine::{OrderId, Price, Qty, Side, StpMode, TimeInForce};

const MAGIC: u64 = u64::from_le_bytes(*b"RINGEXOP");
const RESERVED_ORDERS: usize = 1 << 20;

#[derive(Clone, Copy)]
enum Op {
    Nop,
    Place(usize, Incoming),
    Cancel(usize, OrderId),
    Move(usize, OrderId, Price, Qty),
    Reduce(usize, OrderId, Qty),
}

fn decode(w: &[u64]) -> Op {
    let market = w[1] as usize;
    match w[0] {
        0 => Op::Nop,
        1 => Op::Place(
            market,
            Incoming {
                id: w[2],
                side: Side::from_u8((w[5] >> 8) as u8).expect("side"),
                limit: w[3] as Price,
                qty: w[4],
                owner: (w[5] >> 16) as u32,
                stp: StpMode::None,
                tif: TimeInForce::from_u8(w[5] as u8).expect("tif"),
            },
        ),
        2 => Op::Cancel(market, w[2]),
        3 => Op::Move(market, w[2], w[3] as Price, w[4]),
        4 => Op::Reduce(market, w[2], w[4]),
        k => panic!("unknown operation kind {k}"),
    }
}

#[inline(always)]
fn apply(books: &mut [OrderBook<()>], op: &Op) {
    match *op {
        Op::Nop => {}
        Op::Place(m, ref o) => {
            books[m].submit(o, (), &mut NullSink);
        }
        Op::Cancel(m, id) => {
            books[m].remove(id).expect("cancel names a resting order");
        }
        Op::Move(m, id, price, qty) => {
            let (node, _) = books[m].remove(id).expect("move names a resting order");
            let o = Incoming {
                id,
                side: node.side,
                limit: price,
                qty,
                owner: node.owner,
                stp: StpMode::None,
                tif: TimeInForce::Gtc,
            };
            books[m].submit(&o, (), &mut NullSink);
        }
        Op::Reduce(m, id, qty) => {
            books[m]
                .reduce(id, qty)
                .expect("reduce names a resting order");
        }
    }
}

/// This thread's CPU time so far, in ns (0 where schedstat is unavailable).
fn cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).expect("usage: book_replay OPS_FILE [PASSES]");
    let passes: usize = args.get(2).map_or(5, |p| p.parse().expect("passes"));
    let bytes = std::fs::read(path).expect("read the operations file");
    let words: Vec<u64> = bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect();
    assert_eq!(words[0], MAGIC, "not an operations file");
    let (n_prefill, n_timed) = (words[1] as usize, words[2] as usize);
    let ops: Vec<Op> = words[3..].chunks_exact(6).map(decode).collect();
    assert_eq!(ops.len(), n_prefill + n_timed);
    let markets = 1 + ops
        .iter()
        .map(|op| match *op {
            Op::Nop => 0,
            Op::Place(m, _) | Op::Cancel(m, _) | Op::Move(m, ..) | Op::Reduce(m, ..) => m,
        })
        .max()
        .unwrap_or(0);
    let (prefill, timed) = ops.split_at(n_prefill);

    let mut fresh: Vec<OrderBook<()>> = (0..markets).map(|_| OrderBook::new()).collect();
    let mut reserved: Vec<OrderBook<()>> = (0..markets)
        .map(|_| OrderBook::with_capacity(RESERVED_ORDERS / markets))
        .collect();
    for op in prefill {
        apply(&mut fresh, op);
        apply(&mut reserved, op);
    }
    let mut ns = [Vec::new(), Vec::new()];
    let mut wall = [Vec::new(), Vec::new()];
    for _ in 0..passes {
        for (i, init) in [&fresh, &reserved].into_iter().enumerate() {
            let mut books = init.clone();
            let (start, cpu) = (Instant::now(), cpu_ns());
            for op in timed {
                apply(&mut books, op);
            }
            let (secs, cpu) = (start.elapsed().as_secs_f64(), cpu_ns() - cpu);
            black_box(&books);
            ns[i].push(cpu as f64 / timed.len() as f64);
            wall[i].push(secs * 1e9 / timed.len() as f64);
            drop(books);
        }
    }
    for (i, name) in ["new", "with_capacity"].iter().enumerate() {
        let runs: Vec<String> = ns[i].iter().map(|x| format!("{x:.1}")).collect();
        println!(
            "{name:<14} {:>7.1} ns/op CPU (median of {passes}: {}), wall {:.1} ns/op, {} markets, {} ops",
            median(&mut ns[i]),
            runs.join(", "),
            median(&mut wall[i]),
            markets,
            timed.len()
        );
    }
}
