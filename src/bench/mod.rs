//! Benchmarks runnable from the CLI (`ringex bench ...`) and from `cargo bench`.
//!
//! Bench code may use randomness and floats; the engine may not. Every generator is
//! seeded, so two runs with the same arguments replay the same command stream.

pub mod churn;
pub mod engine;
pub mod engine_scale;
pub mod floor;
pub mod journal_tools;
pub mod pipeline;
pub mod replication;

use hdrhistogram::Histogram;

/// Per-command latency percentiles, in nanoseconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct LatencySummary {
    pub latency_ns_p50: u64,
    pub latency_ns_p99: u64,
    pub latency_ns_p999: u64,
    pub latency_ns_max: u64,
    pub latency_ns_mean: f64,
}

impl LatencySummary {
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        LatencySummary {
            latency_ns_p50: h.value_at_quantile(0.50),
            latency_ns_p99: h.value_at_quantile(0.99),
            latency_ns_p999: h.value_at_quantile(0.999),
            latency_ns_max: h.max(),
            latency_ns_mean: h.mean(),
        }
    }
}

/// A histogram for nanosecond samples from 1 ns to 10 s, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 10_000_000_000, 3).expect("valid histogram bounds")
}

/// The median of `values` (mean of the middle two for an even count); 0 if empty.
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The CPU model from /proc/cpuinfo, for the report header.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string())
}

/// Round trip of one cache line between two threads pinned to cores `a` and `b` (each
/// waits for the other's store, then stores): what every hand-off between two cores costs.
/// On the shared VMs measured it is bimodal, ~80–110 ns or ~410–420 ns, as the host places
/// the two vCPUs near each other or not, and the fused topology's maximum follows it
/// (docs/benchmarks.md). None if the threads cannot be pinned.
pub fn cross_core_round_trip_ns(a: usize, b: usize, round_trips: u64) -> Option<f64> {
    use std::sync::atomic::{AtomicU64, Ordering};
    #[repr(align(128))]
    struct Line(AtomicU64);
    // Only cores this process may run on: pinning to others is refused, or, past the
    // size of a CPU set, panics in libc.
    let available = crate::config::allowed_core_ids().unwrap_or_default();
    if a == b || round_trips == 0 || !available.contains(&a) || !available.contains(&b) {
        return None;
    }
    let line = Line(AtomicU64::new(0));
    let pin = |core| core_affinity::set_for_current(core_affinity::CoreId { id: core });
    std::thread::scope(|scope| {
        let line = &line;
        let echo = scope.spawn(move || {
            if !pin(b) {
                line.0.store(u64::MAX, Ordering::Release);
                return;
            }
            // Bounded: one pass per round trip, each ended by the other side's store.
            for i in 1..=round_trips {
                loop {
                    match line.0.load(Ordering::Acquire) {
                        v if v == 2 * i - 1 => break,
                        u64::MAX => return,
                        _ => std::hint::spin_loop(),
                    }
                }
                line.0.store(2 * i, Ordering::Release);
            }
        });
        // The caller stays unpinned: this side runs on a thread of its own too.
        let ping = scope.spawn(move || {
            let pinned = pin(a);
            let start = std::time::Instant::now();
            let mut completed = 0;
            if pinned {
                'trips: for i in 1..=round_trips {
                    let sent = line.0.compare_exchange(
                        2 * i - 2,
                        2 * i - 1,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    );
                    if sent.is_err() {
                        break; // the echo thread could not pin itself
                    }
                    loop {
                        match line.0.load(Ordering::Acquire) {
                            v if v == 2 * i => break,
                            u64::MAX => break 'trips,
                            _ => std::hint::spin_loop(),
                        }
                    }
                    completed = i;
                }
            }
            let took = start.elapsed();
            if completed < round_trips {
                line.0.store(u64::MAX, Ordering::Release);
            }
            (completed == round_trips).then(|| took.as_nanos() as f64 / round_trips as f64)
        });
        let _ = echo.join();
        ping.join().ok().flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }

    #[test]
    fn the_cross_core_round_trip_needs_two_cores_and_completes_on_them() {
        assert_eq!(cross_core_round_trip_ns(0, 0, 10), None);
        let cores = crate::config::allowed_core_ids().unwrap_or_default();
        if let [first, .., last] = cores[..] {
            let ns = cross_core_round_trip_ns(first, last, 1_000).expect("both threads pin");
            assert!(ns > 0.0);
        }
        // A core that does not exist: not measured, and nothing hangs or panics.
        assert_eq!(cross_core_round_trip_ns(0, 1 << 20, 1_000), None);
    }
}
