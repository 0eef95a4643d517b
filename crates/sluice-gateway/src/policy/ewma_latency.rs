//! EWMA latency: lowest moving-average latency, multiplied by (requests in flight + 1) so a
//! fast target is not flooded ("peak EWMA"). A target without samples yet scores zero, so new
//! or recovered targets get traffic and a measurement.

use std::sync::Arc;

use super::{Policy, RouteRequest};
use crate::target::Target;

/// Lowest expected latency first.
#[derive(Debug, Default)]
pub struct EwmaLatency;

impl Policy for EwmaLatency {
    fn rank(&self, _: &RouteRequest, targets: &[Arc<Target>], eligible: &[usize]) -> Vec<usize> {
        let mut order = eligible.to_vec();
        order.sort_by_key(|&i| {
            let t = &targets[i];
            t.ewma().as_micros().saturating_mul(u128::from(t.outstanding()) + 1)
        });
        order
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::{Duration, Instant};

    use super::*;
    use crate::policy::testing::{req, targets};

    #[test]
    fn prefers_fast_targets_but_weighs_load() {
        let t = targets(3);
        t[0].observe_latency(Duration::from_millis(60));
        t[1].observe_latency(Duration::from_millis(10));
        t[2].observe_latency(Duration::from_millis(30));
        assert_eq!(EwmaLatency.rank(&req(0), &t, &[0, 1, 2]), [1, 2, 0]);
        let _busy: Vec<_> = (0..4).map(|_| t[1].begin(Instant::now()).unwrap()).collect();
        assert_eq!(EwmaLatency.rank(&req(0), &t, &[0, 1, 2]), [2, 1, 0], "10ms x 5 in flight > 30ms idle");
    }

    #[test]
    fn the_average_moves_towards_new_samples() {
        let t = targets(1);
        t[0].observe_latency(Duration::from_millis(100));
        for _ in 0..20 {
            t[0].observe_latency(Duration::from_millis(10));
        }
        assert!(t[0].ewma() < Duration::from_millis(11), "{:?}", t[0].ewma());
    }
}
