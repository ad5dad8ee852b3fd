//! ringex: the daemon's library side. For now only the benchmarks live here.

pub mod bench;
