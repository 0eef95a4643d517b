//! Cheapest that fits: lowest marginal price for this request (prompt × input price + maximum
//! output × output price) among targets whose window fits; owned capacity (hourly cost) costs
//! nothing more per request, so it wins while it is available. Ties go to the least loaded.

use std::sync::Arc;

use super::{Policy, RouteRequest};
use crate::target::Target;

/// Lowest price first.
#[derive(Debug, Default)]
pub struct Cheapest;

impl Policy for Cheapest {
    fn rank(&self, req: &RouteRequest, targets: &[Arc<Target>], eligible: &[usize]) -> Vec<usize> {
        let mut order = eligible.to_vec();
        order.sort_by(|&a, &b| {
            let (ta, tb) = (&targets[a], &targets[b]);
            let pa = ta.request_price(req.prompt_tokens, req.max_tokens);
            let pb = tb.request_price(req.prompt_tokens, req.max_tokens);
            pa.total_cmp(&pb).then(ta.outstanding().cmp(&tb.outstanding()))
        });
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Cost, Price};
    use crate::policy::testing::{req, target};

    #[test]
    fn orders_by_price_with_owned_capacity_first() {
        let price = |input, output| Cost::PerToken(Price { input, cached_input: input, output });
        let t = vec![
            target("premium", price(2.5, 10.0), None),
            target("budget", price(0.15, 0.6), None),
            target("owned", Cost::Hourly(1.5), None),
        ];
        assert_eq!(Cheapest.rank(&req(0), &t, &[0, 1, 2]), [2, 1, 0]);
        // Output-heavy requests weigh the output price.
        let t = vec![target("cheap-in", price(0.1, 5.0), None), target("cheap-out", price(1.0, 1.0), None)];
        let long_output = RouteRequest { prompt_tokens: 10, max_tokens: 1000, prefix_hash: 0 };
        assert_eq!(Cheapest.rank(&long_output, &t, &[0, 1]), [1, 0]);
        let long_prompt = RouteRequest { prompt_tokens: 10_000, max_tokens: 10, prefix_hash: 0 };
        assert_eq!(Cheapest.rank(&long_prompt, &t, &[0, 1]), [0, 1]);
    }
}
