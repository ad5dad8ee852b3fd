//! ringex-gateway: the mio event loops serving the binary order-entry protocol
//! (`docs/protocol.md`) to market makers and the WebSocket API (`docs/websocket.md`)
//! to retail clients, over one sans-I/O session core (`session`).
//!
//! It knows wire formats and sessions, not matching: it talks to the exchange through
//! the [`backend::Backend`] trait, which the node implements over its rings (in the root
//! package) and [`backend::InlineBackend`] implements with an engine applied inline.
//! HTTP (`http`: REST market data, `/health`, `/metrics`, the live page) runs on the
//! retail loop.

pub mod backend;
pub mod fanout;
pub mod handoff;
pub mod http;
pub mod interest;
pub mod limits;
pub mod prom;
pub mod protocol;
pub mod publisher;
pub mod refusals;
pub mod retail;
pub mod server;
pub mod session;
pub mod units;
pub mod ws;
