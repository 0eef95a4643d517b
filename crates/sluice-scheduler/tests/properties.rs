//! Random workloads through the scheduler: every plan respects the token budget and sequence
//! limit, every scheduled sequence holds blocks for what it computes, each sequence's
//! positions are computed in order without gaps, and when all sequences finish the pool is
//! whole again.

use std::collections::HashMap;

use proptest::prelude::*;
use sluice_kv::SeqId;
use sluice_scheduler::{NewSeq, Scheduler, SchedulerConfig};

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn random_workloads_respect_limits_and_finish(
        seqs in prop::collection::vec((1usize..30, 1usize..12, 0u8..3), 1..12),
        blocks in 8usize..40,
        budget in 1usize..24,
        prefill_cap in 1usize..24,
        max_seqs in 1usize..6,
    ) {
        let block_size = 4;
        let mut s = Scheduler::new(SchedulerConfig {
            max_num_batched_tokens: budget,
            max_prefill_tokens_with_decodes: prefill_cap,
            max_num_seqs: max_seqs,
            max_waiting: 64,
            num_blocks: blocks,
            block_size,
            prefix_caching: true,
        });
        let mut want: HashMap<SeqId, usize> = HashMap::new();
        let mut next_pos: HashMap<SeqId, usize> = HashMap::new();
        for (i, (prompt, gen_len, family)) in seqs.iter().enumerate() {
            // Requests that could never fit the pool are refused upstream; skip them here.
            if (prompt + gen_len).div_ceil(block_size) > blocks { continue; }
            let id = SeqId(i as u64);
            let tokens: Vec<u32> = (0..*prompt as u32).map(|t| t + 1000 * *family as u32).collect();
            s.add(NewSeq { id, prompt: tokens, salt: vec![*family], priority: 0 }).unwrap();
            want.insert(id, prompt + gen_len);
        }
        let mut steps = 0;
        while !s.is_idle() {
            steps += 1;
            prop_assert!(steps < 5000, "no progress");
            // Running sequences one position short of their tokens: this step decodes them.
            let decoding: Vec<SeqId> = next_pos.iter().filter(|&(id, &p)| s.tokens(*id).is_some_and(|t| t.len() == p + 1)).map(|(id, _)| *id).collect();
            let plan = s.schedule();
            prop_assert!(plan.num_tokens() <= budget);
            prop_assert!(plan.scheduled.len() <= max_seqs);
            // A step with a running sequence's decode in it takes at most the cap of prompt
            // tokens (a multi-token item is always prompt or recomputation).
            if plan.scheduled.iter().any(|x| x.len == 1 && decoding.contains(&x.id)) {
                let prefill: usize = plan.scheduled.iter().filter(|x| x.len > 1).map(|x| x.len).sum();
                prop_assert!(prefill <= prefill_cap, "{} prompt tokens beside decodes (cap {})", prefill, prefill_cap);
            }
            for p in &plan.preempted {
                next_pos.remove(p);
            }
            for item in &plan.scheduled {
                let table = s.kv().block_table(item.id).len();
                prop_assert!(table * block_size >= item.start + item.len, "scheduled beyond its blocks");
                // Positions advance without gaps (a prefix-cache hit may skip ahead at admission).
                if let Some(&p) = next_pos.get(&item.id) {
                    prop_assert_eq!(item.start, p);
                }
                next_pos.insert(item.id, item.start + item.len);
            }
            let sampled: Vec<(SeqId, u32)> = plan.scheduled.iter().filter(|x| x.sample).map(|x| (x.id, 1)).collect();
            s.complete(&plan, &sampled);
            for (id, _) in sampled {
                if s.tokens(id).map_or(0, |t| t.len()) >= want[&id] {
                    s.remove(id);
                    next_pos.remove(&id);
                }
            }
        }
        prop_assert_eq!(s.kv().pool().num_free(), blocks);
    }
}
