//! `ringex`: the exchange daemon's command line. Logic lives in the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use ringex::bench::engine::{self, EngineBenchArgs};
use ringex::bench::pipeline::{self, PipelineBenchArgs};
use ringex::config::{Config, Role, DEFAULT_CONFIG_NAME};

#[derive(Parser)]
#[command(name = "ringex", version, about = "LMAX-style crypto exchange daemon")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the exchange node: recover from the data directory, then run until SIGTERM or
    /// SIGINT, which drain the pipeline and write a final snapshot.
    Start {
        /// Config file (TOML). Without it, the embedded default (config/single.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The log's lines: text, or one JSON object per line for log shippers. RUST_LOG
        /// filters (default info; e.g. RUST_LOG=warn,ringex::metrics=info).
        #[arg(long, value_enum, default_value_t = ringex::log::LogFormat::Text)]
        log_format: ringex::log::LogFormat,
    },
    /// Run a benchmark.
    Bench {
        #[command(subcommand)]
        which: Bench,
    },
    /// Load generator: a realistic user mix against a running gateway, open loop, with
    /// round-trip latency percentiles; with `--ws N`, N WebSocket subscribers beside it.
    Load {
        #[command(flatten)]
        args: ringex_tools::load::LoadArgs,
        #[command(flatten)]
        ws: ringex_tools::wsload::WsLoadArgs,
    },
    /// HTTP load: keep-alive GETs from many connections against a running daemon's HTTP
    /// listener (docs/http.md), with requests per second and latency percentiles.
    HttpLoad {
        #[command(flatten)]
        args: ringex_tools::httpload::HttpLoadArgs,
    },
    /// Make a standby the primary. By default over its admin listener
    /// (`listeners.admin` of its config, on loopback) while it runs: it stops following,
    /// journals a new epoch (synced) and takes orders on its client listeners, in the
    /// same process. With `--offline`, on a stopped standby's data directory: journals the
    /// epoch; then start it with `node.role = "primary"`.
    Promote {
        /// The standby's config file.
        #[arg(long)]
        config: PathBuf,
        /// The standby is stopped: promote its data directory in place.
        #[arg(long)]
        offline: bool,
        /// Admin key id (with `--secret`). Default: the first admin key of the config's
        /// `[[accounts]]`.
        #[arg(long)]
        key_id: Option<u64>,
        /// The admin key's secret. Default: `RINGEX_ADMIN_SECRET` if set (with
        /// `--key-id`), else the config's.
        #[arg(long)]
        secret: Option<String>,
        /// How long to wait for the promotion, and then for the node to serve as the
        /// primary.
        #[arg(long, default_value_t = 30)]
        timeout_seconds: u64,
    },
    /// Change a running exchange over its admin listener (`listeners.admin` of the
    /// config) with an admin key: the command is journaled like any other, so replay,
    /// snapshots and a standby keep it.
    Admin {
        #[command(subcommand)]
        which: AdminCmd,
    },
    /// Inspect a journal directory (read only, safe beside a running node), or cut a
    /// damaged one on purpose (`repair`).
    Journal {
        #[command(subcommand)]
        which: JournalCmd,
    },
}

/// How `ringex admin` reaches the node: its config's admin listener and an admin key.
#[derive(Args)]
struct AdminConn {
    /// The node's config file. Default: the embedded default (admin on 127.0.0.1:9103).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Admin key id (with `--secret`). Default: the first admin key of the config's
    /// `[[accounts]]`.
    #[arg(long)]
    key_id: Option<u64>,
    /// The admin key's secret. Default: `RINGEX_ADMIN_SECRET` if set (with `--key-id`),
    /// else the config's.
    #[arg(long)]
    secret: Option<String>,
}

#[derive(Subcommand)]
enum AdminCmd {
    /// Set a market's open-order caps (`SetMarketLimits`): the most resting orders one
    /// account may have in it, and the most its book may hold. Each at least 1. Lowering
    /// a cap cancels nothing; new GTC and post-only orders are refused
    /// `too_many_open_orders` until the count is below it.
    SetMarketLimits {
        #[command(flatten)]
        conn: AdminConn,
        /// Market id.
        #[arg(long)]
        market: u32,
        /// Most resting orders of one account in the market.
        #[arg(long)]
        per_account: u32,
        /// Most resting orders in the market's book.
        #[arg(long)]
        per_market: u32,
    },
}

/// `--dir` of the journal tools.
#[derive(Args)]
struct JournalDir {
    /// Journal directory, or a node's data directory (its journal/ is used). Default: the
    /// default config's ./data/journal.
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum JournalCmd {
    /// Segments, records, time spans and the durable checkpoint.
    Describe {
        #[command(flatten)]
        dir: JournalDir,
        #[arg(long)]
        json: bool,
    },
    /// What `ringex start` would find, changing nothing: the torn tail it would cut
    /// (reported, not cut), or the damage that makes it refuse (exit 1, the same
    /// message). Checks every frame; damage in records the start does not read is
    /// reported as such (exit 1). Safe beside a running node: records past the durable
    /// point are reported as live.
    Verify {
        #[command(flatten)]
        dir: JournalDir,
        /// As the start does: sealed segments before the checkpoint and the newest
        /// snapshot by header and seal only.
        #[arg(long)]
        quick: bool,
        /// Accepted for compatibility: every frame is checked by default.
        #[arg(long, hide = true)]
        all: bool,
        /// Then read every record again, re-deriving each chain value and decoding each
        /// payload.
        #[arg(long, conflicts_with = "quick")]
        deep: bool,
        #[arg(long)]
        json: bool,
    },
    /// Decode records as engine commands; damaged stretches are marked and read past.
    Dump {
        #[command(flatten)]
        dir: JournalDir,
        /// First sequence.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Most lines (at least 1).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
        count: u64,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Replay every record into a fresh engine and print the state hash.
    Replay {
        #[command(flatten)]
        dir: JournalDir,
        #[arg(long)]
        json: bool,
    },
    /// Cut a damaged journal on purpose, giving up every record from --truncate-at on:
    /// the segment holding it is copied and then zeroed from there, later segments and
    /// snapshots past the cut are moved into <journal>/quarantine/. Refused while a node
    /// runs, or when the records before the cut are not intact.
    Repair {
        #[command(flatten)]
        dir: JournalDir,
        /// First sequence to give up (the one `ringex start`'s refusal names).
        #[arg(long)]
        truncate_at: u64,
        /// The report as a JSON object.
        #[arg(long)]
        json: bool,
    },
    #[command(flatten)]
    Tools(ringex_tools::journal::ToolCmd),
}

#[derive(Subcommand)]
enum Bench {
    /// Engine benchmark: book-only, full exchange and a BTreeMap baseline.
    Engine(EngineArgs),
    /// Engine at scale: 10,000 markets, 1,000,000 accounts; throughput and memory.
    EngineScale(EngineScaleArgs),
    /// Pipeline benchmark: the whole node, open loop at fixed offered rates.
    Pipeline(PipelineArgs),
    /// Replication benchmark: none, async and sync (a standby in this process) at the
    /// same rates, and the failover time.
    Replication(ReplicationArgs),
    /// The journal toolkit's throughput (verify --deep, export, events) on a journal it
    /// writes, beside cat and sha256sum of the same files.
    JournalTools(JournalToolsArgs),
    /// The binary gateway against an echo server with its event loop and framing (the
    /// floor of the machine), driven alternately by the same load generator at the same
    /// rates; p50/p99/p99.9 and their ratios.
    GatewayFloor(GatewayFloorArgs),
}

#[derive(Args)]
struct GatewayFloorArgs {
    /// Offered rates in requests/s, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [10_000u64, 100_000])]
    rates: Vec<u64>,
    /// Runs of each server at each rate, alternating (medians are reported).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    runs: u32,
    /// Seconds of load per run.
    #[arg(long, default_value_t = 6.0)]
    duration: f64,
    /// The node listens on this port and the next three (binary, websocket, http,
    /// admin); the floor on this + 10.
    #[arg(long, default_value_t = 19_200)]
    base_port: u16,
    /// Scratch directory: the node's config, data and log.
    #[arg(long, default_value = "./bench-gateway-floor")]
    dir: PathBuf,
    /// `gateway.spin_us` of both servers.
    #[arg(long, default_value_t = 200)]
    spin_us: u32,
    /// The core of both servers (the gateway's and the floor's loop).
    #[arg(long, default_value_t = 1)]
    server_core: usize,
    /// The core of the load generator.
    #[arg(long, default_value_t = 0)]
    generator_core: usize,
    /// Only the floor, no node (to profile the floor alone).
    #[arg(long)]
    floor_only: bool,
}

#[derive(Args)]
struct EngineScaleArgs {
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=60_000))]
    markets: u32,
    #[arg(long, default_value_t = 1_000_000)]
    accounts: usize,
    /// Resting orders placed per market before timing.
    #[arg(long, default_value_t = 100)]
    orders_per_market: usize,
    /// Timed commands.
    #[arg(long, default_value_t = 2_000_000)]
    commands: usize,
}

#[derive(Args)]
struct JournalToolsArgs {
    /// Commands in the journal.
    #[arg(long, default_value_t = 10_000_000)]
    commands: usize,
    /// Scratch directory (its journal/ is replaced).
    #[arg(long, default_value = "./bench-journal-tools")]
    dir: PathBuf,
}

#[derive(Args)]
struct ReplicationArgs {
    /// Timed commands per case.
    #[arg(long, default_value_t = 500_000)]
    commands: usize,
    /// Offered rates in commands/s, comma-separated; 0 = maximum.
    #[arg(long, value_delimiter = ',', default_values_t = [100_000u64, 0])]
    rates: Vec<u64>,
    /// Runs per case (medians are reported).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    runs: u32,
    /// Directory for the journals.
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[derive(Args)]
struct PipelineArgs {
    /// Timed commands per case.
    #[arg(long, default_value_t = 1_000_000)]
    commands: usize,
    /// Offered rates in commands/s, comma-separated; 0 = maximum.
    #[arg(long, value_delimiter = ',', default_values_t = [100_000u64, 1_000_000, 0])]
    rates: Vec<u64>,
    /// Topologies to run, comma-separated (split, fused, inline).
    #[arg(long, value_delimiter = ',', default_values_t = ["fused".to_string(), "split".to_string(), "inline".to_string()])]
    topologies: Vec<String>,
    /// Durability modes to run, comma-separated (async, group).
    #[arg(long, value_delimiter = ',', default_values_t = ["async".to_string(), "group".to_string()])]
    durability: Vec<String>,
    /// Thread placements to run, comma-separated: `free` (the scheduler places every
    /// thread) and `pinned` (pipeline thread on the last core; driver, journal helpers and
    /// snapshot writer on core 0). Needs 2 cores for `pinned`.
    #[arg(long, value_delimiter = ',', default_values_t = ["free".to_string(), "pinned".to_string()])]
    placements: Vec<String>,
    /// Directory for the journals (choose the disk to measure).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Input ring size in slots (a power of two); default: the node's.
    #[arg(long)]
    input_ring_size: Option<usize>,
    /// Output ring size in slots (a power of two); default: the node's.
    #[arg(long)]
    output_ring_size: Option<usize>,
    /// Passes over all the cases, each with its own baselines and vCPU round trip; with
    /// more than one, per-case medians follow.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    runs: u32,
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
    /// Workload shape, `core` or `churn`; repeat for several. Default: both.
    #[arg(long)]
    shape: Vec<String>,
    /// Write each variant's book operations to this directory instead of timing.
    #[arg(long)]
    dump_ops: Option<std::path::PathBuf>,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Cmd::Start { config, log_format } => {
            ringex::log::init(log_format);
            start(config)
        }
        Cmd::Journal { which } => journal(which),
        Cmd::Admin { which } => admin(which),
        Cmd::Promote {
            config,
            offline,
            key_id,
            secret,
            timeout_seconds,
        } => {
            if offline {
                promote(&config)
            } else {
                promote_online(&config, key_id, secret, timeout_seconds)
            }
        }
        Cmd::Load { args, ws } if ws.ws_connections > 0 => {
            match ringex_tools::wsload::run(&args, &ws) {
                Ok((baseline, with_ws, _)) => {
                    load_exit(baseline.iter().chain(std::iter::once(&with_ws)))
                }
                Err(e) => {
                    eprintln!("ringex load --ws: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::HttpLoad { args } => match ringex_tools::httpload::run(&args) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ringex http-load: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Load { args, .. } => match ringex_tools::load::run(&args) {
            Ok(report) => load_exit(std::iter::once(&report)),
            Err(e) => {
                eprintln!("ringex load: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Bench {
            which: Bench::Pipeline(a),
        } => {
            let defaults = PipelineBenchArgs::default();
            let args = PipelineBenchArgs {
                commands: a.commands,
                rates: a.rates,
                topologies: a.topologies,
                durabilities: a.durability,
                placements: a.placements,
                dir: a.dir.unwrap_or(defaults.dir),
                seed: defaults.seed,
                input_ring_size: a.input_ring_size,
                output_ring_size: a.output_ring_size,
                runs: a.runs as usize,
            };
            if let Err(e) = pipeline::check_args(&args) {
                eprintln!("ringex bench pipeline: {e}");
                return ExitCode::FAILURE;
            }
            pipeline::run(&args);
            ExitCode::SUCCESS
        }
        Cmd::Bench {
            which: Bench::Replication(a),
        } => {
            let defaults = ringex::bench::replication::ReplicationBenchArgs::default();
            if a.commands == 0
                || a.commands > 100_000_000
                || a.rates.iter().any(|&r| r > 100_000_000)
            {
                eprintln!("ringex bench replication: --commands in 1..=100000000, rates at most 100000000");
                return ExitCode::FAILURE;
            }
            ringex::bench::replication::run(&ringex::bench::replication::ReplicationBenchArgs {
                commands: a.commands,
                rates: a.rates,
                dir: a.dir.unwrap_or(defaults.dir),
                runs: a.runs as usize,
                seed: defaults.seed,
            });
            ExitCode::SUCCESS
        }
        Cmd::Bench {
            which: Bench::JournalTools(a),
        } => {
            let args = ringex::bench::journal_tools::JournalToolsBenchArgs {
                commands: a.commands,
                dir: a.dir,
                seed: 7,
            };
            match ringex::bench::journal_tools::run(&args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("ringex bench journal-tools: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Bench {
            which: Bench::GatewayFloor(a),
        } => {
            let args = ringex::bench::floor::FloorBenchArgs {
                rates: a.rates,
                runs: a.runs,
                duration: a.duration,
                base_port: a.base_port,
                dir: a.dir,
                spin_us: a.spin_us,
                server_core: a.server_core,
                generator_core: a.generator_core,
                floor_only: a.floor_only,
            };
            match ringex::bench::floor::run(&args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("ringex bench gateway-floor: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Bench {
            which: Bench::EngineScale(a),
        } => {
            let markets = a.markets as usize;
            if a.accounts < markets {
                eprintln!("ringex bench engine-scale: --accounts must be at least --markets");
                return ExitCode::FAILURE;
            }
            ringex::bench::engine_scale::run(&ringex::bench::engine_scale::ScaleArgs {
                markets,
                accounts: a.accounts,
                orders_per_market: a.orders_per_market,
                commands: a.commands,
                ..Default::default()
            });
            ExitCode::SUCCESS
        }
        Cmd::Bench {
            which: Bench::Engine(a),
        } => {
            let defaults = EngineBenchArgs::default();
            // Each market takes an asset id below 65536; a run needs at least one.
            if a.markets.iter().any(|m| !(1..=10_000).contains(m)) || a.runs == 0 {
                eprintln!("ringex bench engine: --markets must be in 1..=10000, --runs at least 1");
                return ExitCode::FAILURE;
            }
            let mut shapes = Vec::new();
            for s in &a.shape {
                match engine::Shape::parse(s) {
                    Some(shape) => shapes.push(shape),
                    None => {
                        eprintln!("ringex bench engine: --shape must be core or churn");
                        return ExitCode::FAILURE;
                    }
                }
            }
            let args = EngineBenchArgs {
                commands: a.commands,
                markets: if a.markets.is_empty() {
                    defaults.markets
                } else {
                    a.markets
                },
                shapes: if shapes.is_empty() {
                    defaults.shapes
                } else {
                    shapes
                },
                runs: a.runs,
                seed: a.seed,
                dump_ops: a.dump_ops,
            };
            if let Some(dir) = &args.dump_ops {
                if let Err(e) = engine::dump_ops(&args, dir) {
                    eprintln!("ringex bench engine: writing {}: {e}", dir.display());
                    return ExitCode::FAILURE;
                }
                return ExitCode::SUCCESS;
            }
            engine::run(&args);
            ExitCode::SUCCESS
        }
    }
}

fn start(config_path: Option<PathBuf>) -> ExitCode {
    let config = match &config_path {
        Some(path) => Config::load(path),
        None => Ok(Config::embedded()),
    };
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(2);
        }
    };
    let source = config_path.map_or(DEFAULT_CONFIG_NAME.to_string(), |p| p.display().to_string());
    tracing::info!(
        "node {} starting with {source}; data in {}",
        config.node.id,
        config.node.data_dir.display()
    );
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(signal, Arc::clone(&stop)) {
            tracing::error!("cannot install the signal handler: {e}");
            return ExitCode::from(1);
        }
    }
    let result = match config.node.role {
        Role::Standby => serve_standby(&config, stop),
        Role::Single | Role::Primary => ringex::serve::serve(&config, stop, None),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::from(1)
        }
    }
}

/// A standby: follows its primary and serves its admin listener until SIGTERM or SIGINT
/// (then stops, with a snapshot), or until promoted over that listener (then serves as
/// the primary in this process until SIGTERM or SIGINT).
fn serve_standby(config: &Config, stop: Arc<AtomicBool>) -> Result<(), String> {
    ringex::standby::serve(config, stop, |_| {}, |_| {})
}

/// `ringex promote` while the standby runs: an admin login on its admin listener, then
/// `Promote`; then waits until its client listener accepts connections.
fn promote_online(
    config_path: &Path,
    key_id: Option<u64>,
    secret: Option<String>,
    timeout_seconds: u64,
) -> ExitCode {
    use ringex_gateway::protocol::LoginRejectReason;
    use ringex_tools::client::{Client, ClientError, ClientOptions};
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ringex promote: {e}");
            return ExitCode::from(2);
        }
    };
    let (key_id, secret) = match admin_key(&config, key_id, secret, "ringex promote") {
        Ok(k) => k,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let admin = config.listeners.admin.clone();
    let timeout = std::time::Duration::from_secs(timeout_seconds.clamp(1, 3600));
    let options = ClientOptions {
        timeout,
        ..ClientOptions::default()
    };
    let mut client = match Client::connect(admin.as_str(), key_id, &secret, options) {
        Ok(c) => c,
        Err(ClientError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            eprintln!(
                "ringex promote: nothing listens on {admin} (listeners.admin): is the standby \
                 running? A stopped standby is promoted with --offline"
            );
            return ExitCode::from(1);
        }
        Err(ClientError::LoginRejected(LoginRejectReason::Unavailable)) => {
            eprintln!(
                "ringex promote: the standby on {admin} has not reached its primary yet, so \
                 it holds no state to promote; stop it and use --offline on its data"
            );
            return ExitCode::from(1);
        }
        Err(e) => {
            let hint = match &e {
                ClientError::LoginRejected(
                    LoginRejectReason::UnknownKey | LoginRejectReason::BadSignature,
                ) => {
                    ": the standby does not know this key id with this secret; check --key-id \
                     and --secret (or RINGEX_ADMIN_SECRET): the key must be an admin key of \
                     the exchange (as the primary had it)"
                }
                ClientError::LoginRejected(LoginRejectReason::WrongListener) => {
                    ": this key is not an admin key; give an admin key's --key-id and --secret"
                }
                ClientError::LoginRejected(LoginRejectReason::StaleTimestamp) => {
                    ": this machine's clock is too far from the standby's"
                }
                _ => "",
            };
            eprintln!("ringex promote: admin login on {admin} with key {key_id}: {e}{hint}");
            return ExitCode::from(1);
        }
    };
    let started = std::time::Instant::now();
    let promoted = match client.promote() {
        Ok(p) => p,
        Err(ClientError::Rejected(_)) => {
            eprintln!(
                "ringex promote: refused by the node on {admin}: it is not a standby (already \
                 a primary?), or its promotion failed (its log says why)"
            );
            return ExitCode::from(1);
        }
        Err(e) => {
            eprintln!("ringex promote: {e}");
            return ExitCode::from(1);
        }
    };
    drop(client);
    println!(
        "promoted node {} ({admin}): epoch {} from sequence {} (synced) in {} ms",
        promoted.node_id,
        promoted.epoch,
        promoted.epoch_seq,
        started.elapsed().as_millis()
    );
    // The node now starts as the primary: its admin listener takes a login once its
    // gateway serves (a bound socket alone proves nothing: connections wait in the
    // backlog while the node starts).
    let deadline = started + timeout;
    let binary = &config.listeners.binary;
    // Bounded by the deadline; each attempt is bounded by its own timeout.
    while std::time::Instant::now() < deadline {
        let options = ClientOptions {
            timeout: std::time::Duration::from_millis(500),
            ..ClientOptions::default()
        };
        if let Ok(mut c) = Client::connect(admin.as_str(), key_id, &secret, options) {
            let _ = c.logout();
            println!(
                "primary: taking orders on {binary} {} ms after the promote",
                started.elapsed().as_millis()
            );
            return ExitCode::SUCCESS;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    eprintln!(
        "ringex promote: promoted, but the node's admin listener {admin} did not take a login \
         as the primary within {} s: see the node's log. Its journal holds the new epoch: if \
         the node stopped, start it as the primary (node.role = \"primary\" in {}), never \
         again as a standby of the old primary",
        timeout.as_secs(),
        config_path.display()
    );
    ExitCode::from(1)
}

/// The admin key `ringex admin` and `ringex promote` log in with: `--key-id` and
/// `--secret` (or `RINGEX_ADMIN_SECRET`), else the config's first admin key.
fn admin_key(
    config: &Config,
    key_id: Option<u64>,
    secret: Option<String>,
    what: &str,
) -> Result<(u64, String), String> {
    let configured = config
        .accounts
        .iter()
        .flat_map(|a| a.api_keys.iter())
        .find(|k| k.admin);
    // The environment's secret goes with an explicit key id only.
    let secret = match key_id {
        Some(_) => secret.or_else(|| std::env::var("RINGEX_ADMIN_SECRET").ok()),
        None => secret,
    };
    match (key_id, secret, configured) {
        (Some(id), Some(secret), _) => Ok((id, secret)),
        (None, None, Some(k)) => Ok((k.key_id, k.secret.clone())),
        (None, Some(_), _) => Err(format!("{what}: --secret needs --key-id")),
        _ => Err(format!(
            "{what}: no admin key: give --key-id and --secret (or RINGEX_ADMIN_SECRET), or \
             list one in the config's [[accounts]]"
        )),
    }
}

/// `ringex admin ...`: one admin command on a running node's admin listener; prints its
/// acknowledgement, or the engine's reject reason (exit status 1).
fn admin(which: AdminCmd) -> ExitCode {
    use ringex_engine::Command;
    use ringex_tools::client::{Client, ClientError, ClientOptions};
    let AdminCmd::SetMarketLimits {
        conn,
        market,
        per_account,
        per_market,
    } = which;
    let what = "ringex admin set-market-limits";
    let command = Command::SetMarketLimits {
        market,
        max_open_orders_per_account: per_account,
        max_open_orders: per_market,
    };
    let config = match &conn.config {
        Some(path) => Config::load(path),
        None => Ok(Config::embedded()),
    };
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{what}: {e}");
            return ExitCode::from(2);
        }
    };
    let (key_id, secret) = match admin_key(&config, conn.key_id, conn.secret, what) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let addr = config.listeners.admin.clone();
    let mut client = match Client::connect(addr.as_str(), key_id, &secret, ClientOptions::default())
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{what}: admin login on {addr} with key {key_id}: {e}");
            return ExitCode::from(1);
        }
    };
    let result = client.admin(command);
    let _ = client.logout();
    match result {
        Ok(ack) => {
            println!(
                "market {}: at most {per_account} resting orders per account and \
                 {per_market} in the book",
                ack.id
            );
            ExitCode::SUCCESS
        }
        Err(ClientError::Rejected(r)) => {
            eprintln!("{what}: refused: {}", r.reason.name());
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("{what}: {e}");
            ExitCode::from(1)
        }
    }
}

/// `ringex promote`: raises the epoch of a stopped standby's journal (an epoch record,
/// synced) so that it can start as the primary, and no node of an older epoch can act as
/// primary beside it.
fn promote(config_path: &Path) -> ExitCode {
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ringex promote: {e}");
            return ExitCode::from(2);
        }
    };
    let result = (|| -> Result<(u32, u64), String> {
        let mut node = ringex::node::Node::start(
            &config,
            ringex::node::OutputMode::Sink(Box::new(ringex::node::CountingSink)),
        )
        .map_err(|e| e.to_string())?;
        let epoch = node.epoch() + 1;
        let seq = node.promote(epoch).map_err(|e| e.to_string())?;
        node.shutdown().map_err(|e| e.to_string())?;
        Ok((epoch, seq))
    })();
    match result {
        Ok((epoch, seq)) => {
            println!(
                "promoted {}: epoch {epoch} from sequence {seq}; start it now with \
                 node.role = \"primary\" (a node of an older epoch is refused as its standby \
                 and fenced as a primary)",
                config.node.data_dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ringex promote: {e}");
            ExitCode::from(1)
        }
    }
}

/// A load run fails when a connection was lost or a request never answered: its figures
/// then describe a server that stopped serving, not its service.
fn load_exit<'a>(reports: impl Iterator<Item = &'a ringex_tools::load::Report>) -> ExitCode {
    let mut code = ExitCode::SUCCESS;
    for r in reports {
        if let Some(failure) = r.failure() {
            eprintln!("ringex load: failed: {failure}");
            code = ExitCode::FAILURE;
        }
    }
    code
}

fn journal(cmd: JournalCmd) -> ExitCode {
    use ringex::journal_cli::{self, resolve_dir};
    let dir_of = |d: &JournalDir| resolve_dir(d.dir.as_deref());
    let mut json_errors = false;
    let result = match cmd {
        JournalCmd::Describe { dir, json } => dir_of(&dir).and_then(|dir| {
            let (text, problems) = if json {
                journal_cli::describe_json(&dir)?
            } else {
                journal_cli::describe_text(&dir)?
            };
            match problems {
                None => Ok(text),
                // The description first (it shows where), then exit 1 with the summary.
                Some(why) => {
                    print!("{text}");
                    Err(why)
                }
            }
        }),
        JournalCmd::Verify {
            dir,
            quick,
            all: _,
            deep,
            json,
        } => {
            json_errors = json;
            dir_of(&dir).and_then(|dir| match (json, deep) {
                (true, _) => journal_cli::verify_json(&dir, quick, deep),
                (false, true) => journal_cli::verify_deep_text(&dir),
                (false, false) => journal_cli::verify_text(&dir, quick),
            })
        }
        JournalCmd::Dump {
            dir,
            from,
            count,
            json,
        } => dir_of(&dir).and_then(|dir| journal_cli::dump_text(&dir, from, count, json)),
        JournalCmd::Replay { dir, json } => dir_of(&dir).and_then(|dir| {
            journal_cli::replay(&dir).map(|(n, seq, hash, rejected)| {
                if json {
                    format!(
                        "{}\n",
                        serde_json::json!({
                            "records": n, "seq_last": seq, "rejected": rejected,
                            "state_hash": format!("{hash:032x}"),
                        })
                    )
                } else {
                    format!(
                        "replayed {n} records (last seq {seq}, {rejected} rejected by the \
                         engine); state hash {hash:032x}\n"
                    )
                }
            })
        }),
        JournalCmd::Repair {
            dir,
            truncate_at,
            json,
        } => {
            json_errors = json;
            dir_of(&dir).and_then(|dir| {
                eprintln!(
                    "ringex journal repair: cutting {} at sequence {truncate_at}",
                    dir.display()
                );
                journal_cli::repair_text(&dir, truncate_at).map(|text| {
                    if json {
                        format!("{}\n", serde_json::json!({"ok": true, "report": text}))
                    } else {
                        text
                    }
                })
            })
        }
        JournalCmd::Tools(cmd) => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
            let result = ringex_tools::journal::run(cmd, &mut out);
            let flushed = std::io::Write::flush(&mut out);
            match (result, flushed) {
                (Err(e), _) if e == ringex_tools::journal::format::OUTPUT_CLOSED => {
                    Ok(String::new())
                }
                (Err(e), _) => Err(e),
                (Ok(()), Err(e)) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    Err(format!("cannot write the output: {e}"))
                }
                (Ok(()), _) => Ok(String::new()),
            }
        }
    };
    match result {
        Ok(text) => {
            // A reader that stopped early (`| head`) is no failure.
            let mut out = std::io::stdout().lock();
            match std::io::Write::write_all(&mut out, text.as_bytes())
                .and_then(|()| std::io::Write::flush(&mut out))
            {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    eprintln!("ringex journal: cannot write the output: {e}");
                    ExitCode::from(1)
                }
                _ => ExitCode::SUCCESS,
            }
        }
        Err(e) => {
            if json_errors {
                println!("{}", serde_json::json!({"ok": false, "error": e}));
            }
            eprintln!("ringex journal: {e}");
            ExitCode::from(1)
        }
    }
}
