//! A small mergeable latency histogram: microsecond values in log-linear buckets
//! (about 1% relative precision), serialisable so worker processes can ship theirs
//! to the scenario runner.

use serde::{Deserialize, Serialize};

/// Sub-buckets per power of two.
const SUB: u64 = 64;

/// Counts of latencies in microseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Histogram {
    /// Sparse (bucket index, count) pairs when serialised; dense in memory.
    counts: Vec<u64>,
    total: u64,
    max_us: u64,
}

fn index(us: u64) -> usize {
    if us < SUB {
        return us as usize;
    }
    let exp = 63 - us.leading_zeros() as u64; // floor(log2)
    let shift = exp - 6; // SUB = 2^6
    let sub = (us >> shift) - SUB;
    ((shift + 1) * SUB + sub) as usize
}

fn lower_bound(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let shift = i / SUB - 1;
    let sub = i % SUB;
    (SUB + sub) << shift
}

impl Histogram {
    /// Records one value.
    pub fn record(&mut self, us: u64) {
        let i = index(us);
        if i >= self.counts.len() {
            self.counts.resize(i + 1, 0);
        }
        self.counts[i] += 1;
        self.total += 1;
        self.max_us = self.max_us.max(us);
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, other: &Histogram) {
        if other.counts.len() > self.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max_us = self.max_us.max(other.max_us);
    }

    /// Number of values.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// Largest value, µs.
    pub fn max(&self) -> u64 {
        self.max_us
    }

    /// The value at quantile `q` (0..=1), µs (bucket lower bound).
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return lower_bound(i).min(self.max_us);
            }
        }
        self.max_us
    }

    /// Non-empty buckets as (lower bound µs, count), for charts.
    pub fn buckets(&self) -> Vec<(u64, u64)> {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, c)| (lower_bound(i), *c))
            .collect()
    }

    /// Clears all counts.
    pub fn reset(&mut self) {
        *self = Histogram::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_precise() {
        let mut last = 0;
        for us in [
            0u64, 1, 63, 64, 65, 127, 128, 1000, 12_345, 1_000_000, 50_000_000,
        ] {
            let i = index(us);
            assert!(i >= last);
            last = i;
            let lb = lower_bound(i);
            assert!(
                lb <= us && (us - lb) as f64 <= us as f64 * 0.02 + 1.0,
                "{us} -> {lb}"
            );
        }
    }

    #[test]
    fn quantiles_and_merge() {
        let mut a = Histogram::default();
        for v in 1..=100 {
            a.record(v * 100);
        }
        assert_eq!(a.count(), 100);
        let p50 = a.quantile(0.5);
        assert!((4900..=5000).contains(&p50), "{p50}");
        let mut b = Histogram::default();
        b.record(1_000_000);
        a.merge(&b);
        assert_eq!(a.max(), 1_000_000);
        assert!(a.quantile(1.0) >= 990_000);
        let json = serde_json::to_string(&a).unwrap();
        let back: Histogram = serde_json::from_str(&json).unwrap();
        assert_eq!(back, a);
    }
}
