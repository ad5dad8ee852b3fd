//! The node's log: `tracing` events on stderr, one line each with an RFC 3339 UTC time, a
//! level and a target (`ringex::serve`, `ringex::node`, `ringex::gateway`...), filtered
//! the `RUST_LOG` way (default `info`), as text or, for log shippers (journald, Loki,
//! Elasticsearch), as one JSON object per line. The hot path logs nothing: it counts in
//! the metrics, which the periodic summary line reports.

use std::io::{IsTerminal, Write};

/// `--log-format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `TIME LEVEL TARGET: message`.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message`.
    Json,
}

/// Installs the process's log subscriber (once; later calls change nothing). A `RUST_LOG`
/// that does not parse falls back to `info`, and says so.
pub fn init(format: LogFormat) {
    let given = std::env::var("RUST_LOG").ok();
    let (filter, bad) = match given.as_deref().map(tracing_subscriber::EnvFilter::try_new) {
        Some(Ok(f)) => (f, None),
        Some(Err(e)) => (tracing_subscriber::EnvFilter::new("info"), Some(e)),
        None => (tracing_subscriber::EnvFilter::new("info"), None),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_timer(tracing_subscriber::fmt::time::SystemTime)
        .with_target(true);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    if let Some(e) = bad {
        tracing::warn!("RUST_LOG is not a filter ({e}); logging at info");
    }
}

/// A writer whose every line becomes a warning of target `ringex::gateway` (a leading
/// `ringex: ` dropped): the gateway's refusal records, written by code that also writes
/// them to a buffer in tests.
#[derive(Default)]
pub struct GatewayLines {
    pending: Vec<u8>,
}

impl Write for GatewayLines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.pending.extend_from_slice(buf);
        while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            let text = String::from_utf8_lossy(&line[..end]);
            let text = text.strip_prefix("ringex: ").unwrap_or(&text);
            tracing::warn!(target: "ringex::gateway", "{}", text.strip_prefix("gateway ").unwrap_or(text));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
