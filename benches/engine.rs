//! `cargo bench --bench engine`: the engine benchmark of issue 2 with default arguments.
//! Smaller runs: RINGEX_BENCH_COMMANDS, RINGEX_BENCH_MARKETS (comma-separated),
//! RINGEX_BENCH_RUNS.

use ringex::bench::engine::{run, EngineBenchArgs, Shape};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a valid value")),
        Err(_) => default,
    }
}

fn main() {
    // Command-line flags from `cargo bench` (e.g. `--bench`) are ignored; use the env vars.
    let mut args = EngineBenchArgs::default();
    args.commands = env_or("RINGEX_BENCH_COMMANDS", args.commands);
    args.runs = env_or("RINGEX_BENCH_RUNS", args.runs);
    if let Ok(m) = std::env::var("RINGEX_BENCH_MARKETS") {
        args.markets = m
            .split(',')
            .map(|x| x.trim().parse().expect("RINGEX_BENCH_MARKETS: numbers"))
            .collect();
    }
    if let Ok(v) = std::env::var("RINGEX_BENCH_SHAPES") {
        args.shapes = v
            .split(',')
            .map(|x| Shape::parse(x.trim()).expect("RINGEX_BENCH_SHAPES: core or churn"))
            .collect();
    }
    run(&args);
}
