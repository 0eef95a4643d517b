//! Property tests: random interleavings of start / grow / commit / release over a small pool
//! with heavily shared prompts. After every step the pool's invariants hold, every block's
//! reference count equals the number of live sequences holding it (so no leak, no double free,
//! no negative count), and no block held by a live sequence has lost its cached hash
//! (a block with a live reader is never evicted). At the end every block is free again.

use std::collections::HashMap;

use proptest::prelude::*;
use sluice_kv::{KvManager, SeqId};

#[derive(Debug, Clone)]
enum Op {
    Start { prompt: usize, len: usize, salt: u8 },
    Grow { seq: usize, extra: usize },
    Commit { seq: usize },
    Release { seq: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0usize..3, 1usize..40, 0u8..2).prop_map(|(prompt, len, salt)| Op::Start { prompt, len, salt }),
        (0usize..8, 0usize..12).prop_map(|(seq, extra)| Op::Grow { seq, extra }),
        (0usize..8).prop_map(|seq| Op::Commit { seq }),
        (0usize..8).prop_map(|seq| Op::Release { seq }),
    ]
}

/// Three base prompts sharing long prefixes.
fn prompt(kind: usize, len: usize) -> Vec<u32> {
    (0..len as u32).map(|i| if i < 12 { i } else { i * (kind as u32 + 1) }).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn pool_invariants_hold_under_random_operations(ops in prop::collection::vec(op(), 1..120)) {
        let block_size = 4;
        let total = 12;
        let mut m = KvManager::new(total, block_size, true);
        // Model: live sequences with their tokens and reserved positions.
        let mut live: HashMap<usize, (Vec<u32>, usize)> = HashMap::new();
        // Full blocks each live sequence has committed (they must keep their hashes).
        let mut committed: HashMap<usize, usize> = HashMap::new();
        let mut salts: HashMap<usize, u8> = HashMap::new();
        let mut next_id = 0usize;
        for op in ops {
            match op {
                Op::Start { prompt: p, len, salt } => {
                    if live.len() >= 8 { continue; }
                    let id = next_id;
                    next_id += 1;
                    let tokens = prompt(p, len);
                    let cached = m.start(SeqId(id as u64), &tokens, &[salt]);
                    prop_assert!(cached < tokens.len() && cached.is_multiple_of(block_size));
                    live.insert(id, (tokens, cached));
                    committed.insert(id, cached / block_size);
                    salts.insert(id, salt);
                }
                Op::Grow { seq, extra } => {
                    let Some(id) = live.keys().copied().min_by_key(|k| (k + seq) % 8) else { continue };
                    let (tokens, reserved) = live.get_mut(&id).unwrap();
                    let want = (tokens.len() + extra).max(*reserved);
                    let before = m.pool().num_free();
                    match m.grow(SeqId(id as u64), want) {
                        Ok(()) => {
                            *reserved = want;
                            tokens.extend((0..extra as u32).map(|i| 1000 + i));
                        }
                        Err(_) => prop_assert_eq!(m.pool().num_free(), before, "failed growth allocated"),
                    }
                }
                Op::Commit { seq } => {
                    let Some(id) = live.keys().copied().min_by_key(|k| (k + seq) % 8) else { continue };
                    let (tokens, reserved) = &live[&id];
                    let n = tokens.len().min(*reserved);
                    m.commit(SeqId(id as u64), &tokens[..n]);
                    let full = (n / block_size).min(m.block_table(SeqId(id as u64)).len());
                    let c = committed.get_mut(&id).unwrap();
                    *c = (*c).max(full);
                }
                Op::Release { seq } => {
                    let Some(id) = live.keys().copied().min_by_key(|k| (k + seq) % 8) else { continue };
                    live.remove(&id);
                    committed.remove(&id);
                    m.release(SeqId(id as u64));
                }
            }
            prop_assert_eq!(m.pool().check_invariants(), Ok(()));
            let mut holders: HashMap<u32, u32> = HashMap::new();
            for id in live.keys() {
                for b in m.block_table(SeqId(*id as u64)) {
                    *holders.entry(b.0).or_insert(0) += 1;
                }
            }
            for (id, c) in &committed {
                let expected = sluice_kv::hash_prefix(&live[id].0, block_size, &[salts[id]]);
                for (i, b) in m.block_table(SeqId(*id as u64))[..*c].iter().enumerate() {
                    prop_assert_eq!(m.pool().block_hash(*b), Some(expected[i]), "block {} of live seq {} lost or changed its hash", b.0, id);
                }
            }
            let in_use = holders.len();
            prop_assert_eq!(m.pool().num_free() + in_use, total, "leak or double free");
            for b in 0..total as u32 {
                let want = holders.get(&b).copied().unwrap_or(0);
                prop_assert_eq!(m.pool().ref_count(sluice_kv::BlockId(b)), want, "ref count of block {}", b);
            }
        }
        for id in live.keys() {
            m.release(SeqId(*id as u64));
        }
        prop_assert_eq!(m.pool().num_free(), total);
        prop_assert_eq!(m.num_seqs(), 0);
    }
}
