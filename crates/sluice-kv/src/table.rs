//! Per-sequence block tables over the shared pool, with automatic prefix caching.
//!
//! Life of a sequence: `start` finds the longest cached prefix of its prompt (full blocks whose
//! chained hashes, salted with the sequence's namespace, are in the pool) and takes a reference
//! on those blocks; `grow` allocates blocks as positions are scheduled (all or nothing, so the
//! scheduler can preempt instead); `commit` registers every block that became full so later
//! sequences can share it; `release` drops the references, last block first.

use std::collections::HashMap;

use crate::hash::{BlockHash, hash_block};
use crate::pool::{BlockId, BlockPool, NoFreeBlocks};

/// A sequence's identity in the manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqId(pub u64);

#[derive(Debug)]
struct SeqState {
    blocks: Vec<BlockId>,
    /// Hashes of the leading full blocks registered so far.
    hashes: Vec<BlockHash>,
    salt: Vec<u8>,
}

/// Prefix-cache counters (tokens), as vLLM reports them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PrefixCacheStats {
    /// Prompt tokens looked up.
    pub queried_tokens: u64,
    /// Prompt tokens found cached.
    pub hit_tokens: u64,
}

/// Block tables of all live sequences over one pool.
#[derive(Debug)]
pub struct KvManager {
    pool: BlockPool,
    block_size: usize,
    prefix_caching: bool,
    seqs: HashMap<SeqId, SeqState>,
    stats: PrefixCacheStats,
}

impl KvManager {
    /// `num_blocks` blocks of `block_size` positions each.
    pub fn new(num_blocks: usize, block_size: usize, prefix_caching: bool) -> Self {
        Self {
            pool: BlockPool::new(num_blocks),
            block_size: block_size.max(1),
            prefix_caching,
            seqs: HashMap::new(),
            stats: PrefixCacheStats::default(),
        }
    }

    /// Positions per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// The pool (read-only: counts, usage).
    pub fn pool(&self) -> &BlockPool {
        &self.pool
    }

    /// Prefix-cache counters.
    pub fn prefix_stats(&self) -> PrefixCacheStats {
        self.stats
    }

    /// Registers a new sequence and reuses the longest cached prefix of `prompt`; returns how
    /// many prompt tokens are already in the cache. At least the last prompt token is always
    /// left to compute, since its logits are needed.
    pub fn start(&mut self, seq: SeqId, prompt: &[u32], salt: &[u8]) -> usize {
        debug_assert!(!self.seqs.contains_key(&seq), "sequence {seq:?} started twice");
        let mut state = SeqState { blocks: Vec::new(), hashes: Vec::new(), salt: salt.to_vec() };
        if self.prefix_caching && !prompt.is_empty() {
            let max_blocks = (prompt.len() - 1) / self.block_size;
            for chunk in prompt.chunks_exact(self.block_size).take(max_blocks) {
                let h = hash_block(state.hashes.last(), chunk, salt);
                let Some(b) = self.pool.lookup(&h) else { break };
                self.pool.acquire(b);
                state.blocks.push(b);
                state.hashes.push(h);
            }
            self.stats.queried_tokens += prompt.len() as u64;
            self.stats.hit_tokens += (state.blocks.len() * self.block_size) as u64;
        }
        let cached = state.blocks.len() * self.block_size;
        self.seqs.insert(seq, state);
        cached
    }

    /// Makes room for `num_positions` positions in total (allocating only what is missing).
    pub fn grow(&mut self, seq: SeqId, num_positions: usize) -> Result<(), NoFreeBlocks> {
        let needed = num_positions.div_ceil(self.block_size);
        let Some(state) = self.seqs.get_mut(&seq) else { return Ok(()) };
        if needed > state.blocks.len() {
            let new = self.pool.allocate(needed - state.blocks.len())?;
            state.blocks.extend(new);
        }
        Ok(())
    }

    /// Blocks needed to grow `seq` to `num_positions` (0 if it already fits).
    pub fn blocks_needed(&self, seq: SeqId, num_positions: usize) -> usize {
        let have = self.seqs.get(&seq).map_or(0, |s| s.blocks.len());
        num_positions.div_ceil(self.block_size).saturating_sub(have)
    }

    /// Records that the first `tokens.len()` positions of `seq` now hold computed keys and
    /// values for `tokens`; every newly full block becomes shareable.
    pub fn commit(&mut self, seq: SeqId, tokens: &[u32]) {
        if !self.prefix_caching {
            return;
        }
        let Some(state) = self.seqs.get_mut(&seq) else { return };
        let full = (tokens.len() / self.block_size).min(state.blocks.len());
        for i in state.hashes.len()..full {
            let chunk = &tokens[i * self.block_size..(i + 1) * self.block_size];
            let h = hash_block(state.hashes.last(), chunk, &state.salt);
            self.pool.register(state.blocks[i], h);
            state.hashes.push(h);
        }
    }

    /// The sequence's block table (block `i` holds positions `i*block_size..`).
    pub fn block_table(&self, seq: SeqId) -> &[BlockId] {
        self.seqs.get(&seq).map_or(&[], |s| &s.blocks)
    }

    /// Ends a sequence (finished, cancelled or preempted): its blocks return to the pool, the
    /// full ones stay cached until evicted.
    pub fn release(&mut self, seq: SeqId) {
        if let Some(state) = self.seqs.remove(&seq) {
            let rev: Vec<BlockId> = state.blocks.iter().rev().copied().collect();
            self.pool.free(&rev);
        }
    }

    /// Live sequences.
    pub fn num_seqs(&self) -> usize {
        self.seqs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_request_with_same_prefix_reuses_blocks_and_other_salts_do_not() {
        let mut m = KvManager::new(16, 4, true);
        let prompt: Vec<u32> = (0..10).collect();
        assert_eq!(m.start(SeqId(1), &prompt, b"a"), 0);
        m.grow(SeqId(1), 11).unwrap();
        m.commit(SeqId(1), &prompt);
        let first = m.block_table(SeqId(1)).to_vec();
        m.release(SeqId(1));
        // Same namespace: two full blocks (8 tokens) reused, the same physical blocks.
        assert_eq!(m.start(SeqId(2), &prompt, b"a"), 8);
        assert_eq!(m.block_table(SeqId(2)), &first[..2]);
        // Another namespace: nothing.
        assert_eq!(m.start(SeqId(3), &prompt, b"b"), 0);
        // Exactly block-aligned prompt: the last block is recomputed for its logits.
        assert_eq!(m.start(SeqId(4), &prompt[..8], b"a"), 4);
        for s in [2, 3, 4] {
            m.release(SeqId(s));
        }
        assert_eq!(m.pool().num_free(), 16);
        assert_eq!(m.prefix_stats(), PrefixCacheStats { queried_tokens: 38, hit_tokens: 12 });
    }

    #[test]
    fn growth_is_all_or_nothing() {
        let mut m = KvManager::new(3, 4, false);
        m.start(SeqId(1), &[1, 2, 3], b"");
        assert!(m.grow(SeqId(1), 16).is_err());
        assert_eq!(m.block_table(SeqId(1)).len(), 0);
        m.grow(SeqId(1), 12).unwrap();
        assert_eq!(m.blocks_needed(SeqId(1), 13), 1);
        m.release(SeqId(1));
        assert_eq!(m.pool().num_free(), 3);
    }
}
