//! ringex-replicator: primary -> standby streaming of the input journal.
//!
//! - `wire`: the sans-I/O message format both ends speak.
//! - `handshake`: what a primary answers a standby, and where a standby steps back to.

pub mod handshake;
pub mod wire;
