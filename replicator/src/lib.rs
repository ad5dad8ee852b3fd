//! ringex-replicator: primary -> standby streaming of the input journal.
//!
//! - `wire`: the sans-I/O message format both ends speak.
//! - `handshake`: what a primary answers a standby, and where a standby steps back to.
//! - `link`: the acknowledged sequences, as the primary's pipeline waits on them.
//! - `primary`: the primary's listener and stream (files, then the journal's tap).
//! - `standby`: the standby's connection (handshake, stream, acknowledgements).

pub mod handshake;
pub mod link;
pub mod primary;
pub mod standby;
pub mod wire;
