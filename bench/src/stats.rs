//! Latency samples and their summary.

use serde::Serialize;
use std::time::Duration;

/// Latencies in milliseconds.
#[derive(Debug, Default, Clone)]
pub struct Samples(pub Vec<f64>);

impl Samples {
    pub fn push(&mut self, d: Duration) {
        self.0.push(d.as_secs_f64() * 1e3);
    }

    pub fn extend(&mut self, other: Samples) {
        self.0.extend(other.0);
    }

    pub fn summary(&self) -> Summary {
        let mut v: Vec<f64> = self.0.iter().copied().filter(|x| x.is_finite()).collect();
        v.sort_by(f64::total_cmp);
        let q = |p: f64| -> f64 {
            if v.is_empty() {
                return f64::NAN;
            }
            // Nearest rank: the smallest sample with at least p of them at or below it.
            let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
            v[rank - 1]
        };
        Summary {
            n: v.len(),
            p50: q(0.50),
            p99: q(0.99),
            p999: q(0.999),
            max: v.last().copied().unwrap_or(f64::NAN),
        }
    }

    /// At most `n` samples, evenly spread: enough for a chart or the JSON
    /// file without writing every one of a million.
    pub fn thinned(&self, n: usize) -> Vec<f64> {
        if self.0.len() <= n {
            return self.0.clone();
        }
        let step = self.0.len() as f64 / n as f64;
        (0..n).map(|i| self.0[(i as f64 * step) as usize]).collect()
    }
}

/// Percentiles of a set of latencies, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Summary {
    pub n: usize,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// Events per second over time: counts per `bucket` since a start instant.
#[derive(Debug, Clone)]
pub struct Rate {
    start: std::time::Instant,
    bucket: Duration,
    counts: Vec<u64>,
}

impl Rate {
    pub fn new(start: std::time::Instant, bucket: Duration) -> Rate {
        Rate {
            start,
            bucket,
            counts: Vec::new(),
        }
    }

    pub fn add(&mut self, at: std::time::Instant) {
        let i = (at.saturating_duration_since(self.start).as_secs_f64() / self.bucket.as_secs_f64())
            as usize;
        if self.counts.len() <= i {
            self.counts.resize(i + 1, 0);
        }
        self.counts[i] += 1;
    }

    /// `(seconds since start, events per second)` per bucket.
    pub fn points(&self) -> Vec<(f64, f64)> {
        let b = self.bucket.as_secs_f64();
        self.counts
            .iter()
            .enumerate()
            .map(|(i, &c)| (i as f64 * b, c as f64 / b))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let s = Samples((1..=1000).map(f64::from).collect());
        let m = s.summary();
        assert_eq!(
            (m.n, m.p50, m.p99, m.p999, m.max),
            (1000, 500.0, 990.0, 999.0, 1000.0)
        );
        assert!(Samples::default().summary().p50.is_nan());
        assert_eq!(s.thinned(10).len(), 10);
    }
}
