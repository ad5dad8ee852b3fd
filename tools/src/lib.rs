//! ringex-tools: the Rust client library for the binary protocol, the load generator and
//! the journal toolkit.
//!
//! - [`client`]: a blocking and pipelined client for docs/protocol.md.
//! - [`load`]: `ringex load`, an open-loop load generator with a realistic user mix.
//! - [`wsload`]: `ringex load --ws N`, WebSocket subscribers beside that load.
//! - [`httpload`]: `ringex http-load`, keep-alive HTTP requests from many connections.
//! - [`journal`]: `ringex journal ...`, the operator's journal and snapshot toolkit.

pub mod client;
pub mod httpload;
pub mod journal;
pub mod load;
pub mod wsload;
