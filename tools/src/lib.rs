//! ringex-tools: the Rust client library for the binary protocol and the load generator.
//!
//! - [`client`]: a blocking and pipelined client for docs/protocol.md.
//! - [`load`]: `ringex load`, an open-loop load generator with a realistic user mix.
//! - [`wsload`]: `ringex load --ws N`, WebSocket subscribers beside that load.

pub mod client;
pub mod load;
pub mod wsload;
