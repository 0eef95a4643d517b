//! Round-robin: each request starts at the next target.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Policy, RouteRequest, rotated};
use crate::target::Target;

/// Each target in turn.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl Policy for RoundRobin {
    fn rank(&self, _: &RouteRequest, _: &[Arc<Target>], eligible: &[usize]) -> Vec<usize> {
        rotated(eligible, self.next.fetch_add(1, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::{req, targets};

    #[test]
    fn spreads_requests_evenly() {
        let t = targets(3);
        let p = RoundRobin::default();
        let firsts: Vec<usize> = (0..6).map(|_| p.rank(&req(0), &t, &[0, 1, 2])[0]).collect();
        assert_eq!(firsts, [0, 1, 2, 0, 1, 2]);
        assert_eq!(p.rank(&req(0), &t, &[0, 2]).len(), 2);
    }
}
