//! `ringex`: the exchange daemon's command line. Logic lives in the library.

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use ringex::bench::engine::{self, EngineBenchArgs};

#[derive(Parser)]
#[command(name = "ringex", version, about = "LMAX-style crypto exchange daemon")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the exchange node (not built yet).
    Start,
    /// Run a benchmark.
    Bench {
        #[command(subcommand)]
        which: Bench,
    },
}

#[derive(Subcommand)]
enum Bench {
    /// Engine benchmark (issue 2): book-only, full exchange and a BTreeMap baseline.
    Engine(EngineArgs),
}

#[derive(Args)]
struct EngineArgs {
    /// Timed commands per variant.
    #[arg(long, default_value_t = 3_000_000)]
    commands: usize,
    /// Number of markets; repeat for several variants. Default: 1 and 1000.
    #[arg(long)]
    markets: Vec<usize>,
    /// Throughput runs per variant (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Generator seed.
    #[arg(long, default_value_t = EngineBenchArgs::default().seed)]
    seed: u64,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Cmd::Start => {
            eprintln!(
                "ringex start: the node (gateway, journal, replication) is not built yet; \
                 only `ringex bench engine` works today."
            );
            ExitCode::from(2)
        }
        Cmd::Bench {
            which: Bench::Engine(a),
        } => {
            let defaults = EngineBenchArgs::default();
            engine::run(&EngineBenchArgs {
                commands: a.commands,
                markets: if a.markets.is_empty() {
                    defaults.markets
                } else {
                    a.markets
                },
                runs: a.runs,
                seed: a.seed,
            });
            ExitCode::SUCCESS
        }
    }
}
