//! ringex: the daemon's library side: configuration, the node (pipeline, recovery,
//! snapshots), metrics, the log, and the benchmark harnesses. `main.rs` is only the
//! command line.

pub mod bench;
pub mod config;
pub mod journal_cli;
pub mod log;
pub mod metrics;
pub mod node;
pub mod serve;
pub mod standby;
pub mod status;
