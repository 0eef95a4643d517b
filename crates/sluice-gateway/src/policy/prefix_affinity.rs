//! Prefix affinity: requests whose prompts start alike go to the same engine, where their
//! prefix is already in the KV cache. Rendezvous hashing over the hash of the prompt's first
//! bytes picks a home for each prefix (adding or losing an engine moves only its share);
//! bounded load keeps a hot prefix from swamping its home: an engine with more than
//! `1.25 × average + 2` requests in flight is passed over for the next by score.

use std::sync::Arc;

use super::{Policy, RouteRequest};
use crate::target::Target;

/// Same prefix, same engine, unless it is overloaded.
#[derive(Debug, Default)]
pub struct PrefixAffinity;

fn mix(mut x: u64) -> u64 {
    // splitmix64 finaliser: a cheap, well-spread hash of (prefix, target).
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn name_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

impl Policy for PrefixAffinity {
    fn rank(&self, req: &RouteRequest, targets: &[Arc<Target>], eligible: &[usize]) -> Vec<usize> {
        let mut order = eligible.to_vec();
        order.sort_by_key(|&i| std::cmp::Reverse(mix(req.prefix_hash ^ name_hash(targets[i].name()))));
        let total: u32 = eligible.iter().map(|&i| targets[i].outstanding()).sum();
        let bound = 1.25 * f64::from(total) / eligible.len().max(1) as f64 + 2.0;
        // Stable partition: engines within the bound keep their score order, the rest follow.
        let (ok, over): (Vec<usize>, Vec<usize>) = order.into_iter().partition(|&i| f64::from(targets[i].outstanding()) <= bound);
        ok.into_iter().chain(over).collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::HashMap;
    use std::time::Instant;

    use super::*;
    use crate::policy::testing::{req, targets};

    #[test]
    fn one_prefix_one_home_and_prefixes_spread() {
        let t = targets(4);
        let all = [0, 1, 2, 3];
        let mut homes = HashMap::new();
        for prefix in 0..400u64 {
            let home = PrefixAffinity.rank(&req(prefix), &t, &all)[0];
            for _ in 0..3 {
                assert_eq!(PrefixAffinity.rank(&req(prefix), &t, &all)[0], home);
            }
            *homes.entry(home).or_insert(0) += 1;
        }
        assert!(homes.values().all(|&n| n > 60), "spread over engines: {homes:?}");
    }

    #[test]
    fn losing_an_engine_moves_only_its_prefixes() {
        let t = targets(4);
        for prefix in 0..200u64 {
            let before = PrefixAffinity.rank(&req(prefix), &t, &[0, 1, 2, 3])[0];
            let after = PrefixAffinity.rank(&req(prefix), &t, &[0, 1, 3])[0];
            if before != 2 {
                assert_eq!(before, after);
            }
        }
    }

    #[test]
    fn an_overloaded_home_is_passed_over() {
        let t = targets(2);
        let prefix = 7;
        let home = PrefixAffinity.rank(&req(prefix), &t, &[0, 1])[0];
        let _busy: Vec<_> = (0..10).map(|_| t[home].begin(Instant::now()).unwrap()).collect();
        assert_eq!(PrefixAffinity.rank(&req(prefix), &t, &[0, 1]), [1 - home, home]);
    }
}
