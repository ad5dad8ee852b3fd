//! The node's configuration: one TOML file, or the embedded default.
//!
//! Every key is documented in `config/single.toml`. Unknown keys are errors (a typo must not
//! silently fall back to a default), and every error names the file, the key and the
//! reason.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use ringex_engine::{
    AccountId, Amount, AssetId, Command, MarketId, MarketSpec, Price, Qty, Symbol,
};
use serde::Deserialize;

/// The embedded default: a working single node with two demo markets.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../config/single.toml");
pub const DEFAULT_CONFIG_NAME: &str = "<embedded default config/single.toml>";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub node: NodeConfig,
    #[serde(default)]
    pub journal: JournalConfig,
    #[serde(default)]
    pub pipeline: PipelineConfig,
    #[serde(default)]
    pub snapshot: SnapshotConfig,
    #[serde(default)]
    pub listeners: ListenersConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub gateway: GatewayConfig,
    #[serde(default)]
    pub websocket: WebSocketConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub replication: ReplicationConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub assets: Vec<AssetConfig>,
    #[serde(default)]
    pub markets: Vec<MarketConfig>,
    #[serde(default)]
    pub accounts: Vec<AccountConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Single,
    Primary,
    Standby,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub id: u32,
    #[serde(default = "default_role")]
    pub role: Role,
    /// Journal segments and snapshots live here; relative paths are relative to the
    /// working directory.
    pub data_dir: PathBuf,
}

fn default_role() -> Role {
    Role::Single
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DurabilityMode {
    Async,
    Group,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JournalConfig {
    pub durability: DurabilityMode,
    pub segment_size_mib: u64,
    /// `async` mode: how often the background flush runs.
    pub flush_interval_ms: u64,
    /// Appends are refused while free space is below this.
    pub low_space_mib: u64,
    /// After each snapshot, delete the segments no recovery needs any more.
    pub prune_after_snapshot: bool,
    /// Write path: `auto` (pwrite: for async a batch per write through the page cache,
    /// for group O_DIRECT + fdatasync on the journaling thread), `mmap`, `pwrite`,
    /// `io-uring` (group only; falls back to pwrite where io_uring is unavailable).
    pub backend: JournalBackend,
    /// Write zeros into each new segment (and sync them) before it is used, on the
    /// journal's preallocation thread: appends then never wait on the file system's
    /// extent conversion. Each segment is written twice.
    pub zero_fill_segments: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JournalBackend {
    Auto,
    Mmap,
    Pwrite,
    IoUring,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            durability: DurabilityMode::Group,
            segment_size_mib: 64,
            flush_interval_ms: 5,
            low_space_mib: 256,
            prune_after_snapshot: true,
            backend: JournalBackend::Auto,
            zero_fill_segments: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Topology {
    /// `inline` below 4 cores, `split` otherwise.
    Auto,
    Split,
    Fused,
    /// No pipeline thread and no rings: the thread that submits (the gateway's event
    /// loop) journals, applies and collects the events itself, between its socket reads.
    /// No cross-thread hand-off, so no wake-up per request; for machines where the
    /// clients or other work need the second core.
    Inline,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WaitMode {
    /// Burn the core: only for stages with a dedicated core.
    BusySpin,
    /// Spin for a short while after the last work, then park until the producer rings
    /// (no timer, no lost wake-ups): for shared cores.
    Backoff,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    pub topology: Topology,
    /// Slots in the input ring (a power of two).
    pub input_ring_size: usize,
    /// Slots in the output ring (a power of two).
    pub output_ring_size: usize,
    pub wait: WaitMode,
    /// `backoff` only: how long an idle stage spins before parking, in microseconds; 0
    /// picks the default for the topology (300 fused, 10 split on small machines). Longer
    /// spins answer an occasional request faster; shorter ones leave the core to the
    /// gateway and clients when a small machine is busy (docs/benchmarks.md, gateway).
    pub spin_us: u32,
    /// Most commands one pipeline pass journals and applies together.
    pub batch_max: usize,
    /// Cores to pin to, by stage name (`pipeline`, `journaler`, `replicator`, `engine`,
    /// `publisher`, `gateway`); missing stages are not pinned.
    pub cores: BTreeMap<String, usize>,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            topology: Topology::Auto,
            input_ring_size: 1 << 16,
            output_ring_size: 1 << 18,
            wait: WaitMode::Backoff,
            spin_us: 0,
            batch_max: 512,
            cores: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotConfig {
    /// Take a snapshot after this many commands (0: never by count).
    pub every_commands: u64,
    /// Take a snapshot after this many seconds (0: never by time).
    pub every_seconds: u64,
    /// Snapshots kept on disk.
    pub keep: usize,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        SnapshotConfig {
            every_commands: 1_000_000,
            every_seconds: 300,
            keep: 3,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenersConfig {
    /// Binary order entry for trading keys.
    pub binary: String,
    /// Binary protocol for admin keys only; keep it on loopback.
    pub admin: String,
    /// The retail WebSocket API (docs/websocket.md); empty: not served.
    pub websocket: String,
    /// HTTP: REST market data, /health, /metrics, the live page (docs/http.md); served
    /// on the retail loop, so it needs `websocket`; empty: not served.
    pub http: String,
    /// A primary's replication listener, where its standby connects.
    pub replication: String,
}

impl Default for ListenersConfig {
    fn default() -> Self {
        ListenersConfig {
            binary: "127.0.0.1:9100".into(),
            admin: "127.0.0.1:9103".into(),
            websocket: "127.0.0.1:9101".into(),
            http: "127.0.0.1:9102".into(),
            replication: "127.0.0.1:9104".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplicationMode {
    /// No standby.
    None,
    /// The engine does not wait for the standby.
    Async,
    /// The engine applies a command only once the standby has it durable.
    Sync,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StandbyLossPolicy {
    /// Refuse orders (unavailable) until the standby acknowledges again.
    Halt,
    /// Go on as `async` after `degrade_after_ms`, loudly.
    Degrade,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicationConfig {
    pub mode: ReplicationMode,
    /// A standby's primary: the address of its replication listener.
    pub primary: String,
    /// `sync` mode, when the standby stops acknowledging.
    pub on_standby_loss: StandbyLossPolicy,
    pub degrade_after_ms: u64,
    /// A heartbeat each way after this long without a message.
    pub heartbeat_ms: u64,
    /// A peer silent this long is dropped (and reconnected, for a standby).
    pub silence_max_ms: u64,
    /// A primary journals its state hash every this many sequences; its standby (and any
    /// replay) compares its own and stops on a difference. Each costs the engine a pass
    /// over the state, as a snapshot's copy does. 0: never.
    pub checkpoint_every_commands: u64,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            mode: ReplicationMode::None,
            primary: "127.0.0.1:9104".into(),
            on_standby_loss: StandbyLossPolicy::Halt,
            degrade_after_ms: 1_000,
            heartbeat_ms: 100,
            silence_max_ms: 3_000,
            checkpoint_every_commands: 1_000_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub requests_per_second_per_key: u32,
    /// Connections from one address that sent their Login.
    pub connections_per_ip: u32,
    /// Connections from one address that have not sent a Login yet.
    pub unauthenticated_per_ip: u32,
    /// Logical sessions one API key may have at once, detached ones included.
    pub sessions_per_key: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            requests_per_second_per_key: 10_000,
            connections_per_ip: 64,
            unauthenticated_per_ip: 16,
            sessions_per_key: 16,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Heartbeat after this much idle time, both ways.
    pub heartbeat_ms: u32,
    /// A session silent for this long is logged out.
    pub idle_timeout_ms: u32,
    /// A connection must log in within this.
    pub login_timeout_ms: u32,
    /// Logins whose timestamp is further than this from the server clock are refused.
    pub login_clock_skew_ms: u32,
    /// A connection whose unread output exceeds this is disconnected (slow consumer).
    pub outbound_buffer_kib: u32,
    /// Sequenced messages kept per session for resume.
    pub resume_window_messages: u32,
    /// How long a disconnected session stays resumable.
    pub session_linger_seconds: u32,
    /// Connections the gateway serves at once.
    pub connections_max: u32,
    /// After the last activity the event loop polls without sleeping this long (0: it
    /// sleeps at once). For a gateway on a core of its own, e.g. the inline topology.
    pub spin_us: u32,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            heartbeat_ms: 1000,
            idle_timeout_ms: 5000,
            login_timeout_ms: 2000,
            login_clock_skew_ms: 5_000,
            outbound_buffer_kib: 4096,
            resume_window_messages: 65_536,
            session_linger_seconds: 60,
            connections_max: 1024,
            spin_us: 0,
        }
    }
}

/// The retail WebSocket edge's limits (docs/websocket.md, "Limits").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocketConfig {
    /// Connections served at once.
    pub connections_max: u32,
    /// Connections from one address at once.
    pub connections_per_ip: u32,
    /// Messages one connection may send per second (pings included).
    pub messages_per_second: u32,
    /// Subscriptions (channel and market pairs, private channels) per connection.
    pub subscriptions_max: u32,
    /// A connection must subscribe or authenticate within this.
    pub first_subscription_ms: u32,
    /// Unsent bytes one connection may have queued before it is closed (1013).
    pub outbound_buffer_kib: u32,
    /// The largest message a client may send, after decompression.
    pub message_max_kib: u32,
    /// What the connections of one address may inflate per second together
    /// (permessage-deflate); past it their compressed messages are refused unread (429).
    pub inflated_kib_per_second_per_ip: u32,
    /// The kernel's send buffer per connection (SO_SNDBUF; 0: the kernel's default,
    /// which grows to megabytes per connection before a slow client is seen).
    pub socket_send_buffer_kib: u32,
    pub ping_interval_ms: u32,
    /// A connection silent this long (not even a pong) is dropped.
    pub idle_timeout_ms: u32,
    /// Agree to permessage-deflate when a client offers it.
    pub compression: bool,
    /// Write a pass's subscribers through io_uring, many sockets per system call; false,
    /// or no io_uring on this kernel, writes each with its own `writev`.
    pub batched_sends: bool,
    /// A path that echoes every message, for conformance suites; empty: off.
    pub echo_path: String,
    /// Slots of the hand-off queues between the binary gateway's loop and the retail
    /// loop: retail submissions in, engine events and answers out.
    pub handoff_in_slots: u32,
    pub handoff_out_slots: u32,
    /// The retail loop's thread's nice value (0-19; WebSocket and HTTP run there): above
    /// 0, the market makers' loop gets a core it shares with it first.
    pub thread_nice: u32,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig {
            connections_max: 10_000,
            connections_per_ip: 64,
            messages_per_second: 50,
            subscriptions_max: 64,
            first_subscription_ms: 10_000,
            outbound_buffer_kib: 1024,
            message_max_kib: 64,
            inflated_kib_per_second_per_ip: 8192,
            socket_send_buffer_kib: 256,
            ping_interval_ms: 20_000,
            idle_timeout_ms: 60_000,
            compression: true,
            batched_sends: true,
            echo_path: String::new(),
            handoff_in_slots: 16_384,
            handoff_out_slots: 262_144,
            thread_nice: 0,
        }
    }
}

/// The HTTP edge's limits (docs/http.md, "Limits").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Connections served at once; past it a new one is answered 503.
    pub connections_max: u32,
    /// Connections served at once from one address; past it a new one is answered 503.
    pub connections_per_ip: u32,
    /// The longest request head (request line and headers); past it, 431.
    pub header_max_kib: u32,
    /// A request's head must arrive whole within this once begun; else 408.
    pub header_timeout_ms: u32,
    /// A keep-alive connection with no request under way is closed after this.
    pub idle_timeout_ms: u32,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            connections_max: 4096,
            connections_per_ip: 256,
            header_max_kib: 8,
            header_timeout_ms: 5_000,
            idle_timeout_ms: 60_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// How often `ringex start` logs its one-line summary (0: never).
    pub log_every_seconds: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            log_every_seconds: 5,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssetConfig {
    pub id: AssetId,
    pub symbol: String,
    pub decimals: u8,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarketConfig {
    pub id: MarketId,
    pub symbol: String,
    /// Asset symbols.
    pub base: String,
    pub quote: String,
    pub tick_size: Amount,
    pub lot_size: Amount,
    pub qty_min: Qty,
    pub qty_max: Qty,
    #[serde(default)]
    pub band_ppm: u32,
    pub reference_price: Price,
    #[serde(default)]
    pub maker_fee_ppm: u32,
    #[serde(default)]
    pub taker_fee_ppm: u32,
    /// Most resting orders one account may have in this market (engine default
    /// 100,000 when unset).
    #[serde(default)]
    pub max_open_orders_per_account: Option<u32>,
    /// Most resting orders this market's book may hold (engine default 2,000,000 when
    /// unset).
    #[serde(default)]
    pub max_open_orders: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountConfig {
    pub id: AccountId,
    /// Initial deposits by asset symbol, in minor units.
    #[serde(default)]
    pub deposits: BTreeMap<String, Amount>,
    #[serde(default)]
    pub api_keys: Vec<ApiKeyConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    pub key_id: u64,
    /// Demo only: the secret in clear. Only its SHA-256 enters the journal.
    pub secret: String,
    /// May trade (log in on the binary listener).
    #[serde(default = "default_true")]
    pub trade: bool,
    /// May administer (log in on the admin listener).
    #[serde(default)]
    pub admin: bool,
}

fn default_true() -> bool {
    true
}

/// API key permission bits, as the engine stores them and the gateway checks them.
pub mod permissions {
    pub const TRADE: u32 = 1 << 0;
    pub const ADMIN: u32 = 1 << 1;
}

impl ApiKeyConfig {
    pub fn permissions(&self) -> u32 {
        let mut p = 0;
        if self.trade {
            p |= permissions::TRADE;
        }
        if self.admin {
            p |= permissions::ADMIN;
        }
        p
    }
}

/// A configuration that cannot be used: names the file, the key and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub key: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "config {}: {}", self.file, self.reason)
        } else {
            write!(
                f,
                "config {}: key `{}`: {}",
                self.file, self.key, self.reason
            )
        }
    }
}

impl std::error::Error for ConfigError {}

/// The ids of the cores the calling thread may run on (its affinity mask: taskset,
/// cgroups); None when the system does not say. Pinning to any other core fails, or
/// panics in the ring crate.
pub fn allowed_core_ids() -> Option<Vec<usize>> {
    core_affinity::get_core_ids().map(|ids| ids.into_iter().map(|c| c.id).collect())
}

impl Config {
    /// The embedded default.
    pub fn embedded() -> Config {
        Config::parse(DEFAULT_CONFIG_TOML, DEFAULT_CONFIG_NAME).expect("embedded config is valid")
    }

    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: name.clone(),
            key: String::new(),
            reason: format!("cannot read: {e}"),
        })?;
        Config::parse(&text, &name)
    }

    /// Parses and validates TOML text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError {
            file: file.to_string(),
            key: String::new(),
            reason: e.to_string().trim_end().to_string(),
        })?;
        config.validate().map_err(|(key, reason)| ConfigError {
            file: file.to_string(),
            key,
            reason,
        })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), (String, String)> {
        let err = |key: &str, reason: String| Err((key.to_string(), reason));
        let l = &self.listeners;
        for (key, value) in [
            ("listeners.binary", &l.binary),
            ("listeners.admin", &l.admin),
            ("listeners.websocket", &l.websocket),
            ("listeners.http", &l.http),
            ("listeners.replication", &l.replication),
            ("replication.primary", &self.replication.primary),
        ] {
            if (key == "listeners.websocket" || key == "listeners.http") && value.is_empty() {
                continue;
            }
            if let Err(e) = value.parse::<std::net::SocketAddr>() {
                return err(key, format!("{value:?} is not an address (ip:port): {e}"));
            }
        }
        if !l.http.is_empty() && l.websocket.is_empty() {
            return err(
                "listeners.http",
                "HTTP is served on the retail loop: set listeners.websocket too, or \"\" \
                 here"
                    .into(),
            );
        }
        let r = &self.replication;
        match (self.node.role, r.mode) {
            (Role::Single, ReplicationMode::Async | ReplicationMode::Sync) => {
                return err(
                    "replication.mode",
                    "a single node has no standby: set node.role = \"primary\" to replicate".into(),
                )
            }
            (Role::Primary, ReplicationMode::None) => {
                return err(
                    "replication.mode",
                    "a primary replicates: \"async\" or \"sync\" (or set node.role = \
                     \"single\")"
                        .into(),
                )
            }
            _ => {}
        }
        let p = &self.pipeline;
        for (key, size) in [
            ("pipeline.input_ring_size", p.input_ring_size),
            ("pipeline.output_ring_size", p.output_ring_size),
        ] {
            if !size.is_power_of_two() || !(64..=1 << 24).contains(&size) {
                return err(
                    key,
                    format!("{size} is not a power of two in 64..=16777216"),
                );
            }
        }
        if p.batch_max == 0 || p.batch_max > p.input_ring_size {
            return err(
                "pipeline.batch_max",
                format!("{} must be in 1..=input_ring_size", p.batch_max),
            );
        }
        let allowed = allowed_core_ids();
        for (stage, core) in &p.cores {
            const STAGES: [&str; 8] = [
                "pipeline",
                "journaler",
                "replicator",
                "engine",
                "publisher",
                "gateway",
                "websocket",
                "helpers",
            ];
            if !STAGES.contains(&stage.as_str()) {
                return err(
                    &format!("pipeline.cores.{stage}"),
                    format!("unknown stage; expected one of {STAGES:?}"),
                );
            }
            // The cores this process may run on (taskset, cgroups), by id: pinning to
            // any other panics in the ring crate.
            if let Some(allowed) = &allowed {
                if !allowed.contains(core) {
                    return err(
                        &format!("pipeline.cores.{stage}"),
                        format!("core {core} is not one this process may run on ({allowed:?})"),
                    );
                }
            }
        }
        let j = &self.journal;
        if j.durability == DurabilityMode::Async && j.backend == JournalBackend::IoUring {
            return err(
                "journal.backend",
                "the io-uring backend needs durability = \"group\"".into(),
            );
        }
        // Numbers with a range. For the limits, zero shuts every client out (or, for the
        // rate, logs each one out on its first request); the upper bounds keep memory per
        // session bounded. `journal.low_space_mib` is shifted to bytes: a larger value
        // would wrap (and so disable the check).
        let (lim, g, ws) = (&self.limits, &self.gateway, &self.websocket);
        let wide = u64::from;
        for (key, value, range) in [
            ("pipeline.spin_us", wide(p.spin_us), 0..=100_000),
            ("journal.segment_size_mib", j.segment_size_mib, 1..=4096),
            ("journal.low_space_mib", j.low_space_mib, 0..=1 << 40),
            ("journal.flush_interval_ms", j.flush_interval_ms, 1..=10_000),
            (
                "limits.requests_per_second_per_key",
                wide(lim.requests_per_second_per_key),
                1..=100_000_000,
            ),
            (
                "limits.connections_per_ip",
                wide(lim.connections_per_ip),
                1..=1_000_000,
            ),
            (
                "limits.unauthenticated_per_ip",
                wide(lim.unauthenticated_per_ip),
                1..=1_000_000,
            ),
            (
                "limits.sessions_per_key",
                wide(lim.sessions_per_key),
                1..=1024,
            ),
            (
                "gateway.connections_max",
                wide(g.connections_max),
                1..=1_000_000,
            ),
            ("gateway.heartbeat_ms", wide(g.heartbeat_ms), 1..=60_000),
            (
                "gateway.idle_timeout_ms",
                wide(g.idle_timeout_ms),
                1..=3_600_000,
            ),
            (
                "gateway.login_timeout_ms",
                wide(g.login_timeout_ms),
                1..=3_600_000,
            ),
            (
                "gateway.login_clock_skew_ms",
                wide(g.login_clock_skew_ms),
                1..=3_600_000,
            ),
            (
                "gateway.outbound_buffer_kib",
                wide(g.outbound_buffer_kib),
                1..=1 << 20,
            ),
            (
                "gateway.resume_window_messages",
                wide(g.resume_window_messages),
                0..=1 << 20,
            ),
            ("gateway.spin_us", wide(g.spin_us), 0..=100_000),
            (
                "websocket.connections_max",
                wide(ws.connections_max),
                1..=1_000_000,
            ),
            (
                "websocket.connections_per_ip",
                wide(ws.connections_per_ip),
                1..=1_000_000,
            ),
            (
                "websocket.messages_per_second",
                wide(ws.messages_per_second),
                1..=1_000_000,
            ),
            (
                "websocket.subscriptions_max",
                wide(ws.subscriptions_max),
                1..=100_000,
            ),
            (
                "websocket.first_subscription_ms",
                wide(ws.first_subscription_ms),
                1..=3_600_000,
            ),
            (
                "websocket.outbound_buffer_kib",
                wide(ws.outbound_buffer_kib),
                1..=1 << 20,
            ),
            (
                "websocket.message_max_kib",
                wide(ws.message_max_kib),
                1..=1 << 14,
            ),
            (
                "websocket.inflated_kib_per_second_per_ip",
                wide(ws.inflated_kib_per_second_per_ip),
                1..=1 << 22,
            ),
            (
                "websocket.socket_send_buffer_kib",
                wide(ws.socket_send_buffer_kib),
                0..=1 << 16,
            ),
            (
                "websocket.ping_interval_ms",
                wide(ws.ping_interval_ms),
                100..=3_600_000,
            ),
            (
                "websocket.idle_timeout_ms",
                wide(ws.idle_timeout_ms),
                100..=3_600_000,
            ),
            (
                "websocket.handoff_in_slots",
                wide(ws.handoff_in_slots),
                16..=1 << 24,
            ),
            (
                "websocket.handoff_out_slots",
                wide(ws.handoff_out_slots),
                16..=1 << 24,
            ),
            (
                "replication.degrade_after_ms",
                r.degrade_after_ms,
                1..=3_600_000,
            ),
            ("replication.heartbeat_ms", r.heartbeat_ms, 1..=60_000),
            ("websocket.thread_nice", wide(ws.thread_nice), 0..=19),
            (
                "http.connections_max",
                wide(self.http.connections_max),
                1..=1_000_000,
            ),
            (
                "http.connections_per_ip",
                wide(self.http.connections_per_ip),
                1..=1_000_000,
            ),
            (
                "http.header_max_kib",
                wide(self.http.header_max_kib),
                1..=1024,
            ),
            (
                "http.header_timeout_ms",
                wide(self.http.header_timeout_ms),
                1..=3_600_000,
            ),
            (
                "http.idle_timeout_ms",
                wide(self.http.idle_timeout_ms),
                1..=3_600_000,
            ),
            (
                "replication.silence_max_ms",
                r.silence_max_ms,
                10..=3_600_000,
            ),
        ] {
            if !range.contains(&value) {
                return err(
                    key,
                    format!("{value} is outside {}..={}", range.start(), range.end()),
                );
            }
        }
        let echo = &self.websocket.echo_path;
        if !echo.is_empty() && (!echo.starts_with('/') || echo == "/" || echo == "/ws") {
            return err(
                "websocket.echo_path",
                format!("{echo:?}: a path like \"/echo\", not / or /ws (the API)"),
            );
        }
        if self.snapshot.keep == 0 {
            return err("snapshot.keep", "must keep at least one snapshot".into());
        }
        for (i, a) in self.assets.iter().enumerate() {
            if Symbol::new(&a.symbol).is_none() {
                return err(
                    &format!("assets[{i}].symbol"),
                    format!("{:?} is not 1-16 printable ASCII characters", a.symbol),
                );
            }
        }
        for (i, m) in self.markets.iter().enumerate() {
            if Symbol::new(&m.symbol).is_none() {
                return err(
                    &format!("markets[{i}].symbol"),
                    format!("{:?} is not 1-16 printable ASCII characters", m.symbol),
                );
            }
            for (key, sym) in [("base", &m.base), ("quote", &m.quote)] {
                if self.asset_id(sym).is_none() {
                    return err(
                        &format!("markets[{i}].{key}"),
                        format!("unknown asset {sym:?}"),
                    );
                }
            }
        }
        for (i, a) in self.accounts.iter().enumerate() {
            for sym in a.deposits.keys() {
                if self.asset_id(sym).is_none() {
                    return err(
                        &format!("accounts[{i}].deposits.{sym}"),
                        format!("unknown asset {sym:?}"),
                    );
                }
            }
        }
        // Everything the engine itself would reject: dry-run the bootstrap.
        let mut engine = ringex_engine::Exchange::new();
        let mut events = Vec::new();
        for (key, cmd) in self.bootstrap_commands() {
            events.clear();
            engine.apply(&cmd, &mut events);
            if let Some(ringex_engine::Event::Rejected { reason, .. }) = events.first() {
                return err(&key, format!("rejected by the engine: {}", reason.name()));
            }
        }
        Ok(())
    }

    fn asset_id(&self, symbol: &str) -> Option<AssetId> {
        self.assets
            .iter()
            .find(|a| a.symbol == symbol)
            .map(|a| a.id)
    }

    /// The admin commands that create the configured assets, markets and accounts, each
    /// with the config key it comes from. They travel through the journal like any other
    /// command, so replay and a standby see them.
    pub fn bootstrap_commands(&self) -> Vec<(String, Command)> {
        let mut out = Vec::new();
        let mut deposit_count = 0u64;
        for (i, a) in self.assets.iter().enumerate() {
            out.push((
                format!("assets[{i}]"),
                Command::CreateAsset {
                    asset: a.id,
                    symbol: Symbol::new(&a.symbol).unwrap_or_default(),
                    decimals: a.decimals,
                },
            ));
        }
        for (i, m) in self.markets.iter().enumerate() {
            out.push((
                format!("markets[{i}]"),
                Command::CreateMarket(MarketSpec {
                    market: m.id,
                    symbol: Symbol::new(&m.symbol).unwrap_or_default(),
                    base: self.asset_id(&m.base).unwrap_or(0),
                    quote: self.asset_id(&m.quote).unwrap_or(0),
                    tick_size: m.tick_size,
                    lot_size: m.lot_size,
                    qty_min: m.qty_min,
                    qty_max: m.qty_max,
                    band_ppm: m.band_ppm,
                    reference_price: m.reference_price,
                    maker_fee_ppm: m.maker_fee_ppm,
                    taker_fee_ppm: m.taker_fee_ppm,
                }),
            ));
            // Only a market that sets a cap journals one: the defaults need no command.
            if m.max_open_orders_per_account.is_some() || m.max_open_orders.is_some() {
                use ringex_engine::exchange::OpenOrderLimits;
                out.push((
                    format!("markets[{i}].max_open_orders"),
                    Command::SetMarketLimits {
                        market: m.id,
                        max_open_orders_per_account: m
                            .max_open_orders_per_account
                            .unwrap_or(OpenOrderLimits::DEFAULT.per_account),
                        max_open_orders: m
                            .max_open_orders
                            .unwrap_or(OpenOrderLimits::DEFAULT.per_market),
                    },
                ));
            }
        }
        for (i, a) in self.accounts.iter().enumerate() {
            out.push((
                format!("accounts[{i}]"),
                Command::CreateAccount { account: a.id },
            ));
            for (sym, &amount) in &a.deposits {
                deposit_count += 1;
                out.push((
                    format!("accounts[{i}].deposits.{sym}"),
                    Command::Deposit {
                        account: a.id,
                        asset: self.asset_id(sym).unwrap_or(0),
                        amount,
                        // Bootstrap deposits count down from the top of the reference
                        // space, away from those of real deposit systems.
                        external_ref: u64::MAX - deposit_count,
                    },
                ));
            }
            for (k, key) in a.api_keys.iter().enumerate() {
                out.push((
                    format!("accounts[{i}].api_keys[{k}]"),
                    Command::AddApiKey {
                        account: a.id,
                        key_id: key.key_id,
                        secret_hash: secret_hash(&key.secret),
                        permissions: key.permissions(),
                    },
                ));
            }
        }
        out
    }

    /// The topology to run, with `auto` resolved by core count.
    pub fn topology(&self) -> Topology {
        let cores = allowed_core_ids().map_or(1, |c| c.len());
        self.topology_for(cores)
    }

    /// The topology on a machine with `cores` usable cores: `auto` is `inline` below 4
    /// cores, `split` from 4. On 2 cores inline beat fused through the gateway in every
    /// measurement (latency and sustained rate, async and group: docs/benchmarks.md,
    /// gateway): the network, not the pipeline, is the bottleneck there, and a hand-off
    /// between threads costs a wake-up.
    pub fn topology_for(&self, cores: usize) -> Topology {
        match self.pipeline.topology {
            Topology::Auto if cores < 4 => Topology::Inline,
            Topology::Auto => Topology::Split,
            t => t,
        }
    }
}

/// The hash of an API key secret, as the engine stores it.
pub fn secret_hash(secret: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(secret.as_bytes()).into()
}

impl Config {
    /// The configured open-order caps that a recovered exchange does not have, one line
    /// each. The config's caps are journaled at bootstrap only (as every `[[markets]]`
    /// entry): editing them for a later start changes nothing, and the caps stay as
    /// journaled (bootstrap, then `SetMarketLimits`). `live` gives a market's caps in the
    /// recovered state; a market the state lacks is left out.
    pub fn open_order_caps_not_in_effect(
        &self,
        live: impl Fn(MarketId) -> Option<ringex_engine::exchange::OpenOrderLimits>,
    ) -> Vec<String> {
        use ringex_engine::exchange::OpenOrderLimits;
        let mut out = Vec::new();
        for (i, m) in self.markets.iter().enumerate() {
            if m.max_open_orders_per_account.is_none() && m.max_open_orders.is_none() {
                continue;
            }
            let Some(have) = live(m.id) else { continue };
            let want = OpenOrderLimits {
                per_account: m
                    .max_open_orders_per_account
                    .unwrap_or(OpenOrderLimits::DEFAULT.per_account),
                per_market: m
                    .max_open_orders
                    .unwrap_or(OpenOrderLimits::DEFAULT.per_market),
            };
            if want != have {
                out.push(format!(
                    "markets[{i}] ({}) configures open-order caps of {} per account and {} in \
                     the book, but the exchange has {} and {}: the config's caps are applied \
                     at the first start only; change them with `ringex admin \
                     set-market-limits --market {} --per-account N --per-market M`",
                    m.symbol,
                    want.per_account,
                    want.per_market,
                    have.per_account,
                    have.per_market,
                    m.id
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_topology_follows_the_core_count_and_an_explicit_one_is_kept() {
        let auto = Config::embedded();
        assert_eq!(auto.pipeline.topology, Topology::Auto);
        assert_eq!(auto.topology_for(1), Topology::Inline);
        assert_eq!(auto.topology_for(2), Topology::Inline);
        assert_eq!(auto.topology_for(3), Topology::Inline);
        assert_eq!(auto.topology_for(4), Topology::Split);
        let text = DEFAULT_CONFIG_TOML.replace("topology = \"auto\"", "topology = \"inline\"");
        let inline = Config::parse(&text, "inline.toml").unwrap();
        assert_eq!(inline.topology_for(16), Topology::Inline);
    }

    #[test]
    fn the_embedded_default_is_valid_and_bootstraps_two_markets() {
        let c = Config::embedded();
        let markets = c
            .bootstrap_commands()
            .iter()
            .filter(|(_, cmd)| matches!(cmd, Command::CreateMarket(_)))
            .count();
        assert_eq!(markets, 2);
    }

    fn broken(edit: impl Fn(&str) -> String) -> ConfigError {
        Config::parse(&edit(DEFAULT_CONFIG_TOML), "test.toml").unwrap_err()
    }

    #[test]
    fn an_unknown_key_is_refused_with_its_name() {
        let e = broken(|t| t.replace("[journal]", "[journal]\ndurabilty = \"async\""));
        assert_eq!(e.file, "test.toml");
        assert!(e.to_string().contains("durabilty"), "{e}");
    }

    #[test]
    fn a_bad_value_is_refused_with_its_key_and_reason() {
        let e = broken(|t| t.replace("input_ring_size = 65536", "input_ring_size = 1000"));
        assert_eq!(e.key, "pipeline.input_ring_size");
        assert!(e.reason.contains("power of two"));
    }

    #[test]
    fn limits_that_would_shut_every_client_out_are_refused() {
        for (line, key) in [
            (
                "requests_per_second_per_key = 10000",
                "limits.requests_per_second_per_key",
            ),
            ("connections_per_ip = 64", "limits.connections_per_ip"),
            (
                "unauthenticated_per_ip = 16",
                "limits.unauthenticated_per_ip",
            ),
            ("connections_max = 1024", "gateway.connections_max"),
            ("outbound_buffer_kib = 4096", "gateway.outbound_buffer_kib"),
        ] {
            let zero = line.split('=').next().unwrap().to_string() + "= 0";
            let e = broken(|t| t.replacen(line, &zero, 1));
            assert_eq!(e.key, key);
            assert!(e.reason.contains("outside 1..="), "{e}");
        }
        let sessions = |n: u32| {
            let t = DEFAULT_CONFIG_TOML.replacen(
                "sessions_per_key = 16",
                &format!("sessions_per_key = {n}"),
                1,
            );
            Config::parse(&t, "test.toml")
        };
        assert_eq!(sessions(2).unwrap().limits.sessions_per_key, 2);
        let e = sessions(5000).unwrap_err();
        assert_eq!(e.key, "limits.sessions_per_key");
    }

    #[test]
    fn a_market_on_an_unknown_asset_is_refused() {
        let e = broken(|t| t.replacen("quote = \"USDT\"", "quote = \"EUR\"", 1));
        assert_eq!(e.key, "markets[0].quote");
    }

    #[test]
    fn a_market_may_set_its_open_order_caps_and_zero_is_refused() {
        let with = |line: &str| {
            DEFAULT_CONFIG_TOML.replacen(
                "taker_fee_ppm = 500        # 0.05%",
                &format!("taker_fee_ppm = 500\n{line}"),
                1,
            )
        };
        let cfg = Config::parse(&with("max_open_orders_per_account = 50"), "t").unwrap();
        let caps: Vec<Command> = cfg
            .bootstrap_commands()
            .into_iter()
            .map(|(_, c)| c)
            .filter(|c| matches!(c, Command::SetMarketLimits { .. }))
            .collect();
        assert_eq!(
            caps,
            vec![Command::SetMarketLimits {
                market: 1,
                max_open_orders_per_account: 50,
                max_open_orders: 2_000_000,
            }]
        );
        // The embedded default sets none: its bootstrap is unchanged.
        let default = Config::parse(DEFAULT_CONFIG_TOML, "t").unwrap();
        assert!(!default
            .bootstrap_commands()
            .iter()
            .any(|(_, c)| matches!(c, Command::SetMarketLimits { .. })));
        let e = Config::parse(&with("max_open_orders = 0"), "t").unwrap_err();
        assert_eq!(e.key, "markets[0].max_open_orders");
        assert!(e.reason.contains("invalid_market_spec"), "{e}");
    }

    #[test]
    fn configured_caps_that_the_recovered_exchange_lacks_are_named() {
        use ringex_engine::exchange::OpenOrderLimits;
        let toml = DEFAULT_CONFIG_TOML.replacen(
            "taker_fee_ppm = 500        # 0.05%",
            "taker_fee_ppm = 500\nmax_open_orders_per_account = 50",
            1,
        );
        let cfg = Config::parse(&toml, "t").unwrap();
        let applied = OpenOrderLimits {
            per_account: 50,
            per_market: OpenOrderLimits::DEFAULT.per_market,
        };
        // As bootstrapped: nothing to say. A market without configured caps is never
        // named, whatever its live caps (they were changed live).
        assert!(cfg
            .open_order_caps_not_in_effect(|m| Some(if m == 1 {
                applied
            } else {
                OpenOrderLimits {
                    per_account: 3,
                    per_market: 4,
                }
            }))
            .is_empty());
        // Changed live since, or the config edited after the first start: named, with
        // the command that changes a running exchange.
        let lines = cfg.open_order_caps_not_in_effect(|_| Some(OpenOrderLimits::DEFAULT));
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].starts_with("markets[0] (BTC-USDT) configures open-order caps of 50 per account and 2000000 in the book, but the exchange has 100000 and 2000000"), "{}", lines[0]);
        assert!(lines[0].contains("ringex admin set-market-limits --market 1"));
        // A market the state does not have is not named.
        assert!(cfg.open_order_caps_not_in_effect(|_| None).is_empty());
    }

    #[test]
    fn an_engine_rejection_is_reported_against_its_key() {
        let e = broken(|t| t.replacen("tick_size = 1", "tick_size = 0", 1));
        assert_eq!(e.key, "markets[0]");
        assert!(e.reason.contains("invalid_market_spec"), "{e}");
    }

    #[test]
    fn cores_name_known_stages_and_the_journal_helpers() {
        let pin = |line: &str| {
            let t = DEFAULT_CONFIG_TOML.replace("[pipeline]", &format!("[pipeline]\n{line}"));
            Config::parse(&t, "test.toml")
        };
        let c = pin("cores = { pipeline = 0, helpers = 0 }").unwrap();
        assert_eq!(c.pipeline.cores.get("helpers"), Some(&0));
        let e = pin("cores = { helper = 0 }").unwrap_err();
        assert_eq!(e.key, "pipeline.cores.helper");
        assert!(e.reason.contains("helpers"), "{e}");
        let e = pin("cores = { helpers = 4096 }").unwrap_err();
        assert!(e.reason.contains("may run on"), "{e}");
    }

    #[test]
    fn a_listener_that_is_not_an_address_is_refused_with_its_key() {
        let t =
            DEFAULT_CONFIG_TOML.replace("binary = \"127.0.0.1:9100\"", "binary = \"localhost\"");
        assert_ne!(t, DEFAULT_CONFIG_TOML);
        let e = Config::parse(&t, "test.toml").unwrap_err();
        assert_eq!(
            (e.file.as_str(), e.key.as_str()),
            ("test.toml", "listeners.binary")
        );
        assert!(e.reason.contains("not an address"), "{e}");
    }

    #[test]
    fn cores_are_checked_against_the_ones_this_process_may_use_not_the_count() {
        let Some(ids) = allowed_core_ids().filter(|ids| ids.len() >= 2) else {
            return; // one core: nothing to restrict
        };
        let (first, last) = (ids[0], ids[ids.len() - 1]);
        // As under `taskset -c LAST`: one core allowed, with the last core's id.
        let (refused, accepted) = std::thread::spawn(move || {
            assert!(core_affinity::set_for_current(core_affinity::CoreId {
                id: last
            }));
            let pin = |core: usize| {
                let t = DEFAULT_CONFIG_TOML.replace(
                    "[pipeline]",
                    &format!("[pipeline]\ncores = {{ pipeline = {core} }}"),
                );
                Config::parse(&t, "test.toml")
            };
            (pin(first), pin(last))
        })
        .join()
        .unwrap();
        let e = refused.unwrap_err();
        assert_eq!(e.key, "pipeline.cores.pipeline");
        assert!(e.reason.contains("may run on"), "{e}");
        assert!(accepted.is_ok(), "{accepted:?}");
    }

    #[test]
    fn async_takes_the_mmap_and_pwrite_backends_but_not_io_uring() {
        let with = |backend: &str| {
            let t = DEFAULT_CONFIG_TOML
                .replace("durability = \"group\"", "durability = \"async\"")
                .replace("backend = \"auto\"", &format!("backend = \"{backend}\""));
            Config::parse(&t, "test.toml")
        };
        for ok in ["auto", "mmap", "pwrite"] {
            assert!(with(ok).is_ok(), "{ok}");
        }
        let e = with("io-uring").unwrap_err();
        assert_eq!(e.key, "journal.backend");
        assert!(e.reason.contains("group"), "{e}");
    }

    #[test]
    fn malformed_toml_is_refused_with_the_file_name() {
        let e = Config::parse("[node\nid = 1", "x.toml").unwrap_err();
        assert!(e.to_string().starts_with("config x.toml:"), "{e}");
    }
}
