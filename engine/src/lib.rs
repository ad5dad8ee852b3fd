//! ringex-engine: the deterministic exchange state machine.
//!
//! A pure function of (state, command) -> (state, events): no I/O, no threads, no clock,
//! no randomness, no floats, and no iteration over unordered collections. Replaying the
//! same commands reproduces the same events and the same [`Exchange::state_hash`] bit for
//! bit. See `engine/README.md` for the rules and the event order.

pub mod book;
pub mod client_index;
pub mod codec;
pub mod command;
pub mod event;
pub mod exchange;
pub mod id_index;
pub mod price_index;
pub mod query;
pub mod snapshot;
pub mod types;

pub use book::OrderBook;
pub use command::{Command, CommandKind, MarketSpec, OrderRef, PlaceOrder};
pub use event::Event;
pub use exchange::Exchange;
pub use query::{Output, Query, QueryReply};
pub use types::*;
