//! `sophgate_store_call_duration_seconds{call}`: how long each kind of shared-store call took,
//! answered or not (a call that ran out of time counts its `timeout_ms`). An admission is the
//! one round trip a request waits on, so its histogram is that round trip as the gateway sees
//! it: Redis's time, the network and the client. A kind's series appear with its first call.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;

use super::histogram::AtomicHistogram;
use crate::store::Call;

/// 10 µs .. 1 s, every 10 µs up to 100 µs: a round trip on loopback or in one data centre is
/// tens of µs, and a median read off the buckets should be good to a few µs there; a call
/// ends at `timeout_ms` (seconds at most).
pub const STORE_CALL_BUCKETS: &[f64] = &[
    0.00001, 0.00002, 0.00003, 0.00004, 0.00005, 0.00006, 0.00007, 0.00008, 0.00009, 0.0001,
    0.000125, 0.00015, 0.0002, 0.0003, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
    0.5, 1.0,
];

/// One histogram per [`Call`], in [`Call::ALL`]'s order.
static TIMES: OnceLock<Vec<AtomicHistogram>> = OnceLock::new();

fn times() -> &'static [AtomicHistogram] {
    TIMES.get_or_init(|| {
        Call::ALL
            .iter()
            .map(|_| AtomicHistogram::new(STORE_CALL_BUCKETS))
            .collect()
    })
}

fn histogram(call: Call) -> Option<&'static AtomicHistogram> {
    let i = Call::ALL.iter().position(|c| *c == call)?;
    times().get(i)
}

/// Records one call's time.
pub fn observe(call: Call, took: Duration) {
    if let Some(h) = histogram(call) {
        h.observe(took);
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CallLabel {
    call: &'static str,
}

/// Encodes the kinds of call made so far (the family's description always).
#[derive(Debug)]
pub struct StoreCalls;

impl Collector for StoreCalls {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let made: Vec<(Call, &AtomicHistogram)> = Call::ALL
            .iter()
            .zip(times())
            .filter(|(_, h)| h.snapshot().1 > 0)
            .map(|(c, h)| (*c, h))
            .collect();
        // The family is described even before a first call (no samples yet), so dashboards
        // and alerts written against the name find it on any gateway.
        let mut family = encoder.encode_descriptor(
            "sophgate_store_call_duration_seconds",
            "Shared-store (Redis) calls by kind: from sending to the answer or timeout_ms",
            None,
            MetricType::Histogram,
        )?;
        for (call, h) in made {
            let label = CallLabel { call: call.name() };
            h.encode(family.encode_family(&label)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_call_has_its_own_histogram() {
        // Other tests make store calls meanwhile: look only at a bucket they do not reach.
        let in_slow_bucket = |call: Call| {
            let (_, _, buckets) = histogram(call).unwrap().snapshot();
            buckets.iter().find(|(b, _)| *b == 1.0).unwrap().1
        };
        let before = in_slow_bucket(Call::ReadBudget);
        observe(Call::ReadBudget, Duration::from_millis(700));
        observe(Call::ReadBudget, Duration::from_millis(900));
        assert!(in_slow_bucket(Call::ReadBudget) >= before + 2);
        for (i, a) in Call::ALL.iter().enumerate() {
            for b in &Call::ALL[i + 1..] {
                assert!(
                    !std::ptr::eq(histogram(*a).unwrap(), histogram(*b).unwrap()),
                    "{} and {} share a histogram",
                    a.name(),
                    b.name()
                );
                assert_ne!(a.name(), b.name());
            }
        }
    }
}
