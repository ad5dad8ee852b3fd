//! Benchmarks runnable from the CLI (`ringex bench ...`) and from `cargo bench`.
//!
//! Bench code may use randomness and floats; the engine may not. Every generator is
//! seeded, so two runs with the same arguments replay the same command stream.

pub mod engine;
pub mod pipeline;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }
}
