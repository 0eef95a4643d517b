//! Least outstanding requests: the target with the fewest requests in flight; ties rotate.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Policy, RouteRequest, rotated};
use crate::target::Target;

/// Fewest requests in flight first.
#[derive(Debug, Default)]
pub struct LeastOutstanding {
    next: AtomicUsize,
}

impl Policy for LeastOutstanding {
    fn rank(&self, _: &RouteRequest, targets: &[Arc<Target>], eligible: &[usize]) -> Vec<usize> {
        let mut order = rotated(eligible, self.next.fetch_add(1, Ordering::Relaxed));
        order.sort_by_key(|&i| targets[i].outstanding()); // stable: ties keep the rotation
        order
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Instant;

    use super::*;
    use crate::policy::testing::{req, targets};

    #[test]
    fn prefers_the_least_loaded() {
        let t = targets(3);
        let _busy: Vec<_> = (0..3).map(|_| t[0].begin(Instant::now()).unwrap()).collect();
        let _one = t[2].begin(Instant::now()).unwrap();
        let p = LeastOutstanding::default();
        assert_eq!(p.rank(&req(0), &t, &[0, 1, 2]), [1, 2, 0]);
    }
}
