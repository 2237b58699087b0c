//! A latency histogram for /metrics: fixed buckets (Prometheus's default ones, 5 ms to
//! 10 s), lock-free, one atomic add per observation (plus the count and the sum).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in seconds (`le`), as Prometheus client libraries'
/// defaults; +Inf is the count.
pub const BOUNDS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations at or under each bound (not cumulative; summed when rendered).
    buckets: [AtomicU64; BOUNDS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BOUNDS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(
            u64::try_from(d.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// `(le, cumulative count)` per bound, then the total count and the sum in seconds.
    pub fn snapshot(&self) -> (Vec<(f64, u64)>, u64, f64) {
        let mut acc = 0;
        let buckets = BOUNDS
            .iter()
            .zip(&self.buckets)
            .map(|(b, c)| {
                acc += c.load(Ordering::Relaxed);
                (*b, acc)
            })
            .collect();
        (
            buckets,
            self.count.load(Ordering::Relaxed),
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_the_sum_adds_up() {
        let h = Histogram::default();
        for ms in [1, 7, 7, 300, 20_000] {
            h.observe(Duration::from_millis(ms));
        }
        let (b, count, sum) = h.snapshot();
        assert_eq!(count, 5);
        assert_eq!(b[0], (0.005, 1));
        assert_eq!(b[1], (0.01, 3));
        assert_eq!(b[6], (0.5, 4));
        assert_eq!(b[10], (10.0, 4), "20 s is only in +Inf");
        assert!((sum - 20.315).abs() < 1e-9, "{sum}");
    }
}
