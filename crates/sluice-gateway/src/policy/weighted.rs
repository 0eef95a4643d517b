//! Weighted: smooth weighted round-robin (as nginx does it) — over any window each target gets
//! its share of requests, interleaved rather than in bursts.

use std::sync::{Arc, Mutex};

use super::{Policy, RouteRequest};
use crate::target::Target;

/// In proportion to weights.
#[derive(Debug)]
pub struct Weighted {
    weights: Vec<i64>,
    current: Mutex<Vec<i64>>,
}

impl Weighted {
    /// Weights in the route's target order.
    pub fn new(weights: &[u32]) -> Self {
        Self { weights: weights.iter().map(|&w| i64::from(w)).collect(), current: Mutex::new(vec![0; weights.len()]) }
    }
}

impl Policy for Weighted {
    fn rank(&self, _: &RouteRequest, _: &[Arc<Target>], eligible: &[usize]) -> Vec<usize> {
        let Ok(mut cur) = self.current.lock() else { return eligible.to_vec() };
        let mut total = 0;
        for &i in eligible {
            let w = self.weights.get(i).copied().unwrap_or(1);
            cur[i] += w;
            total += w;
        }
        let mut order = eligible.to_vec();
        order.sort_by_key(|&i| std::cmp::Reverse(cur[i]));
        if let Some(&best) = order.first() {
            cur[best] -= total;
        }
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::{req, targets};

    #[test]
    fn shares_follow_the_weights() {
        let t = targets(3);
        let p = Weighted::new(&[5, 1, 1]);
        let mut counts = [0; 3];
        for _ in 0..70 {
            counts[p.rank(&req(0), &t, &[0, 1, 2])[0]] += 1;
        }
        assert_eq!(counts, [50, 10, 10]);
        let firsts: Vec<usize> = (0..7).map(|_| p.rank(&req(0), &t, &[0, 1, 2])[0]).collect();
        assert_eq!(firsts, [0, 0, 1, 0, 2, 0, 0], "interleaved, not a burst");
    }
}
