//! Writing the Prometheus text exposition format (version 0.0.4): one `# HELP` and
//! `# TYPE` line per family, then its samples. Label values are escaped; values are
//! integers or decimals written from integers, so no float formatting is involved.

use std::fmt::Write;

/// Upper bounds of the latency histograms' buckets, in nanoseconds, with their `le`
/// labels in seconds (`+Inf` follows them).
pub const LATENCY_BUCKETS_NS: [(u64, &str); 16] = [
    (100, "0.0000001"),
    (250, "0.00000025"),
    (500, "0.0000005"),
    (1_000, "0.000001"),
    (2_500, "0.0000025"),
    (5_000, "0.000005"),
    (10_000, "0.00001"),
    (25_000, "0.000025"),
    (50_000, "0.00005"),
    (100_000, "0.0001"),
    (250_000, "0.00025"),
    (500_000, "0.0005"),
    (1_000_000, "0.001"),
    (10_000_000, "0.01"),
    (100_000_000, "0.1"),
    (1_000_000_000, "1"),
];

/// A metrics page being written.
#[derive(Default)]
pub struct Exposition {
    pub text: String,
}

impl Exposition {
    /// Starts a family: `kind` is `counter`, `gauge` or `histogram`.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    /// One sample of the current family.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.name_labels(name, labels, None);
        let _ = writeln!(self.text, " {value}");
    }

    /// A family with one sample and no labels.
    pub fn single(&mut self, name: &str, kind: &str, help: &str, value: u64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// The samples of one histogram series: `buckets` are (upper bound label,
    /// cumulative count) in increasing order; `+Inf` is `count`. The sum is in
    /// nanoseconds and written in seconds.
    pub fn histogram(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        buckets: &[(&str, u64)],
        sum_ns: u128,
        count: u64,
    ) {
        let bucket = format!("{name}_bucket");
        for (le, n) in buckets {
            self.name_labels(&bucket, labels, Some(le));
            let _ = writeln!(self.text, " {n}");
        }
        self.name_labels(&bucket, labels, Some("+Inf"));
        let _ = writeln!(self.text, " {count}");
        self.name_labels(&format!("{name}_sum"), labels, None);
        let _ = writeln!(
            self.text,
            " {}.{:09}",
            sum_ns / 1_000_000_000,
            sum_ns % 1_000_000_000
        );
        self.name_labels(&format!("{name}_count"), labels, None);
        let _ = writeln!(self.text, " {count}");
    }

    fn name_labels(&mut self, name: &str, labels: &[(&str, &str)], le: Option<&str>) {
        self.text.push_str(name);
        if labels.is_empty() && le.is_none() {
            return;
        }
        self.text.push('{');
        let mut first = true;
        for (k, v) in labels.iter().copied().chain(le.map(|le| ("le", le))) {
            if !first {
                self.text.push(',');
            }
            first = false;
            self.text.push_str(k);
            self.text.push_str("=\"");
            for c in v.chars() {
                match c {
                    '\\' => self.text.push_str("\\\\"),
                    '"' => self.text.push_str("\\\""),
                    '\n' => self.text.push_str("\\n"),
                    c => self.text.push(c),
                }
            }
            self.text.push('"');
        }
        self.text.push('}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_samples_and_histograms_are_written_in_the_text_format() {
        let mut e = Exposition::default();
        e.family("x_total", "counter", "Things.");
        e.sample("x_total", &[("pair", "A\"B")], 3);
        e.family("h_seconds", "histogram", "Time.");
        e.histogram(
            "h_seconds",
            &[("pair", "P")],
            &[("0.001", 2)],
            1_500_000_001,
            5,
        );
        assert_eq!(
            e.text,
            "# HELP x_total Things.\n# TYPE x_total counter\nx_total{pair=\"A\\\"B\"} 3\n\
             # HELP h_seconds Time.\n# TYPE h_seconds histogram\n\
             h_seconds_bucket{pair=\"P\",le=\"0.001\"} 2\n\
             h_seconds_bucket{pair=\"P\",le=\"+Inf\"} 5\n\
             h_seconds_sum{pair=\"P\"} 1.500000001\nh_seconds_count{pair=\"P\"} 5\n"
        );
    }
}
