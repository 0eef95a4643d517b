//! Lock-free latency histograms the engine thread fills and the server renders (Prometheus
//! text format). Bucket bounds follow vLLM's, so existing dashboards carry over.

use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds (seconds) for time to first token.
pub const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
];
/// Upper bounds (seconds) between two tokens of one request.
pub const ITL_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
];
/// Upper bounds (seconds) of whole requests.
pub const E2E_BUCKETS: &[f64] = &[0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0];

/// A cumulative histogram over fixed bounds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations at or below each bound (not cumulative), plus one overflow slot.
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
}

impl Histogram {
    /// An empty histogram.
    pub fn new(bounds: &'static [f64]) -> Self {
        Self { bounds, counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(), sum_micros: AtomicU64::new(0) }
    }

    /// Records one value in seconds.
    pub fn observe(&self, seconds: f64) {
        let i = self.bounds.iter().position(|&b| seconds <= b).unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add((seconds.max(0.0) * 1e6) as u64, Ordering::Relaxed);
    }

    /// Appends the Prometheus text of this histogram.
    pub fn render(&self, name: &str, help: &str, labels: &str, out: &mut String) {
        use std::fmt::Write;
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, b) in self.bounds.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {cumulative}");
        }
        cumulative += self.counts[self.bounds.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}\n{name}_count{{{labels}}} {cumulative}");
    }
}

/// The engine's latency histograms.
#[derive(Debug)]
pub struct Latencies {
    /// Request arrival to first token.
    pub ttft: Histogram,
    /// Between consecutive tokens of a request.
    pub itl: Histogram,
    /// Request arrival to its end.
    pub e2e: Histogram,
}

impl Default for Latencies {
    fn default() -> Self {
        Self { ttft: Histogram::new(TTFT_BUCKETS), itl: Histogram::new(ITL_BUCKETS), e2e: Histogram::new(E2E_BUCKETS) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_cumulative_buckets() {
        let h = Histogram::new(&[0.1, 1.0]);
        h.observe(0.05);
        h.observe(0.5);
        h.observe(3.0);
        let mut s = String::new();
        h.render("x", "help", "model=\"m\"", &mut s);
        assert!(s.contains("x_bucket{model=\"m\",le=\"0.1\"} 1"), "{s}");
        assert!(s.contains("x_bucket{model=\"m\",le=\"1\"} 2"), "{s}");
        assert!(s.contains("x_bucket{model=\"m\",le=\"+Inf\"} 3"), "{s}");
        assert!(s.contains("x_count{model=\"m\"} 3"), "{s}");
        assert!(s.contains("x_sum{model=\"m\"} 3.55"), "{s}");
    }
}
