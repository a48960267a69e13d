//! A duration histogram made of atomics: observing takes no lock (prometheus-client's own
//! `Histogram` takes a write lock per observation, shared by every request of a label set).
//! Encoding goes through prometheus-client's encoder, so the exposition is the crate's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Whole requests, to the last byte: 5 ms .. 5 min.
pub const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
];
/// Time to first token: 1 ms .. 10 s.
pub const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Gaps between output tokens: 0.5 ms .. 2 s.
pub const TOKEN_GAP_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.0,
];

/// The index of the bucket `secs` falls in (`bounds.len()` is +Inf).
fn bucket_of(bounds: &[f64], secs: f64) -> usize {
    bounds.partition_point(|b| *b < secs)
}

#[derive(Debug)]
struct Inner {
    bounds: &'static [f64],
    /// One per bound plus +Inf; not cumulative.
    counts: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
}

/// Cloning shares the same counts (as prometheus-client's metrics do).
#[derive(Debug, Clone)]
pub struct AtomicHistogram(Arc<Inner>);

impl AtomicHistogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        AtomicHistogram(Arc::new(Inner {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }))
    }

    pub fn observe(&self, d: Duration) {
        let i = bucket_of(self.0.bounds, d.as_secs_f64());
        if let Some(c) = self.0.counts.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.0.sum_nanos.fetch_add(nanos(d), Ordering::Relaxed);
    }

    /// Adds a request's own tally (same bounds) in one go.
    pub fn merge(&self, local: &LocalHistogram) {
        for (c, n) in self.0.counts.iter().zip(local.counts.iter()) {
            if *n > 0 {
                c.fetch_add(u64::from(*n), Ordering::Relaxed);
            }
        }
        self.0
            .sum_nanos
            .fetch_add(local.sum_nanos, Ordering::Relaxed);
    }

    /// (sum in seconds, count, non-cumulative buckets with +Inf as `f64::MAX`).
    pub fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let buckets: Vec<(f64, u64)> = self
            .0
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::MAX))
            .zip(self.0.counts.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.0.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        (sum, count, buckets)
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = self.snapshot();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// One request's tally of many observations (a stream's token gaps), merged once at its end.
#[derive(Debug, Clone)]
pub struct LocalHistogram {
    bounds: &'static [f64],
    counts: Vec<u32>,
    sum_nanos: u64,
}

impl LocalHistogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        LocalHistogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum_nanos: 0,
        }
    }

    pub fn observe(&mut self, d: Duration) {
        let i = bucket_of(self.bounds, d.as_secs_f64());
        if let Some(c) = self.counts.get_mut(i) {
            *c = c.saturating_add(1);
        }
        self.sum_nanos = self.sum_nanos.saturating_add(nanos(d));
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| u64::from(*c)).sum()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn buckets_count_up_to_their_bound() {
        let h = AtomicHistogram::new(&[0.01, 0.1]);
        h.observe(Duration::from_millis(10));
        h.observe(Duration::from_millis(50));
        h.observe(Duration::from_secs(3));
        let (sum, count, buckets) = h.snapshot();
        assert_eq!(count, 3);
        assert!((sum - 3.06).abs() < 1e-9, "{sum}");
        assert_eq!(buckets, vec![(0.01, 1), (0.1, 1), (f64::MAX, 1)]);
    }

    #[test]
    fn a_local_tally_merges_into_the_shared_one() {
        let h = AtomicHistogram::new(TOKEN_GAP_BUCKETS);
        let mut local = LocalHistogram::new(TOKEN_GAP_BUCKETS);
        local.observe(Duration::from_micros(700));
        local.observe(Duration::from_millis(30));
        h.merge(&local);
        h.merge(&local);
        let (_, count, buckets) = h.snapshot();
        assert_eq!(count, 4);
        assert_eq!(buckets[1], (0.001, 2));
        assert_eq!(buckets[6], (0.05, 2));
    }
}
