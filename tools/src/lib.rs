//! ringex-tools: the Rust client library for the binary protocol and the load generator.
//!
//! - [`client`]: a blocking and pipelined client for docs/protocol.md.
//! - [`load`]: `ringex load`, an open-loop load generator with a realistic user mix.
//! - [`wsload`]: `ringex load --ws N`, WebSocket subscribers beside that load.
//! - [`httpload`]: `ringex http-load`, keep-alive HTTP requests from many connections.

pub mod client;
pub mod httpload;
pub mod load;
pub mod wsload;
