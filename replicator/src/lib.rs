//! ringex-replicator: primary -> standby streaming of the input journal.
//!
//! `wire`: the sans-I/O message format both ends speak.

pub mod wire;
