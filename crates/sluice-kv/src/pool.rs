//! The block pool: every KV block of an engine, O(1) allocate and free, freed blocks kept
//! reusable for prefix caching until evicted in least-recently-freed order.
//!
//! Design follows vLLM v1's `BlockPool` / `FreeKVCacheBlockQueue`: one array of block metadata,
//! an intrusive doubly-linked free queue threaded through it (so a cached block that gets
//! reused is unlinked from the middle in O(1)), and a map from block hash to block.
//!
//! Invariants (checked by `check_invariants`, asserted in debug builds after every operation
//! and by the property tests):
//! - a block is in the free queue exactly when its reference count is 0;
//! - `num_free` equals the length of the free queue;
//! - `cached[h] == b` implies `blocks[b].hash == Some(h)`, and every block with a hash is the
//!   target of its hash in `cached` or a duplicate of a block that is (same content computed
//!   twice, vLLM keeps both; only the mapped one is found by lookups);
//! - allocation takes blocks from the head of the free queue (oldest freed first) and drops
//!   their hash: a block with a live reader (ref > 0) is never evicted.

use std::collections::HashMap;

use crate::hash::BlockHash;

/// Index of a block in the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockId(pub u32);

const NIL: u32 = u32::MAX;

#[derive(Debug, Clone)]
struct Meta {
    ref_count: u32,
    hash: Option<BlockHash>,
    prev: u32,
    next: u32,
    in_free_queue: bool,
}

/// Not enough free blocks for an allocation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("KV cache full: {requested} blocks requested, {free} free")]
pub struct NoFreeBlocks {
    /// Blocks asked for.
    pub requested: usize,
    /// Blocks free at the time.
    pub free: usize,
}

/// All KV blocks of one engine.
#[derive(Debug)]
pub struct BlockPool {
    blocks: Vec<Meta>,
    head: u32,
    tail: u32,
    num_free: usize,
    cached: HashMap<BlockHash, BlockId>,
    /// Cached blocks evicted so far (for metrics).
    evictions: u64,
}

impl BlockPool {
    /// A pool of `num_blocks` free blocks.
    pub fn new(num_blocks: usize) -> Self {
        let n = num_blocks.min(NIL as usize - 1);
        let blocks = (0..n)
            .map(|i| Meta {
                ref_count: 0,
                hash: None,
                prev: if i == 0 { NIL } else { i as u32 - 1 },
                next: if i + 1 == n { NIL } else { i as u32 + 1 },
                in_free_queue: true,
            })
            .collect();
        let (head, tail) = if n == 0 { (NIL, NIL) } else { (0, n as u32 - 1) };
        Self { blocks, head, tail, num_free: n, cached: HashMap::new(), evictions: 0 }
    }

    /// Blocks in the pool.
    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Blocks that can be allocated (free, cached or not).
    pub fn num_free(&self) -> usize {
        self.num_free
    }

    /// Fraction of blocks in use by live sequences.
    pub fn usage(&self) -> f64 {
        if self.blocks.is_empty() { 0.0 } else { 1.0 - self.num_free as f64 / self.blocks.len() as f64 }
    }

    /// Cached blocks evicted so far.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Readers of a block.
    pub fn ref_count(&self, b: BlockId) -> u32 {
        self.blocks[b.0 as usize].ref_count
    }

    /// The prefix hash a block holds, if it is a registered full block.
    pub fn block_hash(&self, b: BlockId) -> Option<BlockHash> {
        self.blocks[b.0 as usize].hash
    }

    /// The block holding the prefix that ends with `hash`, if cached.
    pub fn lookup(&self, hash: &BlockHash) -> Option<BlockId> {
        self.cached.get(hash).copied()
    }

    fn unlink(&mut self, b: u32) {
        let (prev, next) = (self.blocks[b as usize].prev, self.blocks[b as usize].next);
        if prev == NIL { self.head = next } else { self.blocks[prev as usize].next = next }
        if next == NIL { self.tail = prev } else { self.blocks[next as usize].prev = prev }
        let m = &mut self.blocks[b as usize];
        m.prev = NIL;
        m.next = NIL;
        m.in_free_queue = false;
        self.num_free -= 1;
    }

    fn push_tail(&mut self, b: u32) {
        let m = &mut self.blocks[b as usize];
        debug_assert!(!m.in_free_queue, "double free of block {b}");
        m.prev = self.tail;
        m.next = NIL;
        m.in_free_queue = true;
        if self.tail == NIL { self.head = b } else { self.blocks[self.tail as usize].next = b }
        self.tail = b;
        self.num_free += 1;
    }

    /// Takes `n` blocks (reference count 1 each), evicting the least recently freed cached
    /// blocks as needed. All or nothing.
    pub fn allocate(&mut self, n: usize) -> Result<Vec<BlockId>, NoFreeBlocks> {
        if n > self.num_free {
            return Err(NoFreeBlocks { requested: n, free: self.num_free });
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let b = self.head;
            self.unlink(b);
            let m = &mut self.blocks[b as usize];
            debug_assert_eq!(m.ref_count, 0);
            m.ref_count = 1;
            if let Some(h) = m.hash.take() {
                if self.cached.get(&h) == Some(&BlockId(b)) {
                    self.cached.remove(&h);
                }
                self.evictions += 1;
            }
            out.push(BlockId(b));
        }
        self.debug_check();
        Ok(out)
    }

    /// Adds a reader to a cached block found by `lookup` (unlinking it from the free queue if
    /// nobody was reading it).
    pub fn acquire(&mut self, b: BlockId) {
        if self.blocks[b.0 as usize].ref_count == 0 {
            self.unlink(b.0);
        }
        self.blocks[b.0 as usize].ref_count += 1;
        self.debug_check();
    }

    /// Drops one reader of each block, in order; blocks nobody reads go to the tail of the free
    /// queue (callers pass a sequence's blocks last-first, so its tail is evicted first).
    pub fn free(&mut self, blocks: &[BlockId]) {
        for &b in blocks {
            let m = &mut self.blocks[b.0 as usize];
            debug_assert!(m.ref_count > 0, "free of unreferenced block {}", b.0);
            if m.ref_count == 0 {
                continue;
            }
            m.ref_count -= 1;
            if m.ref_count == 0 {
                self.push_tail(b.0);
            }
        }
        self.debug_check();
    }

    /// Records that `b` now holds the full block identified by `hash`. If another block already
    /// holds that prefix, lookups keep finding the first one.
    pub fn register(&mut self, b: BlockId, hash: BlockHash) {
        let m = &mut self.blocks[b.0 as usize];
        debug_assert!(m.ref_count > 0, "registering an unreferenced block");
        if m.hash.is_some() {
            return;
        }
        m.hash = Some(hash);
        self.cached.entry(hash).or_insert(b);
        self.debug_check();
    }

    /// Drops every cached hash (e.g. after a model reload); blocks stay where they are.
    pub fn reset_prefix_cache(&mut self) {
        self.cached.clear();
        for m in &mut self.blocks {
            m.hash = None;
        }
    }

    fn debug_check(&self) {
        #[cfg(debug_assertions)]
        if let Err(e) = self.check_invariants() {
            debug_assert!(false, "block pool invariant broken: {e}");
        }
    }

    /// Verifies every invariant in the module header (O(blocks)).
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut count = 0usize;
        let mut prev = NIL;
        let mut cur = self.head;
        while cur != NIL {
            let m = &self.blocks[cur as usize];
            if !m.in_free_queue || m.ref_count != 0 {
                return Err(format!("block {cur} in the free queue with ref {}", m.ref_count));
            }
            if m.prev != prev {
                return Err(format!("block {cur}: broken back link"));
            }
            count += 1;
            if count > self.blocks.len() {
                return Err("free queue has a cycle".into());
            }
            prev = cur;
            cur = m.next;
        }
        if prev != self.tail {
            return Err("tail does not end the free queue".into());
        }
        if count != self.num_free {
            return Err(format!("num_free {} but {count} blocks queued", self.num_free));
        }
        for (i, m) in self.blocks.iter().enumerate() {
            if (m.ref_count == 0) != m.in_free_queue {
                return Err(format!("block {i}: ref {} but in_free_queue {}", m.ref_count, m.in_free_queue));
            }
        }
        for (h, b) in &self.cached {
            if self.blocks[b.0 as usize].hash != Some(*h) {
                return Err(format!("cached hash maps to block {} which holds another", b.0));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::hash_block;

    #[test]
    fn allocate_free_reuse_and_evict_in_lru_order() {
        let mut p = BlockPool::new(4);
        let a = p.allocate(2).unwrap();
        let h0 = hash_block(None, &[1, 2], b"");
        p.register(a[0], h0);
        assert_eq!(p.num_free(), 2);
        p.free(&[a[1], a[0]]);
        assert_eq!(p.num_free(), 4);
        // Cached and free: a lookup finds it and acquiring takes it off the free queue.
        let b = p.lookup(&h0).unwrap();
        p.acquire(b);
        assert_eq!(p.ref_count(b), 1);
        assert_eq!(p.num_free(), 3);
        p.free(&[b]);
        // Allocating everything evicts the cached block last (it was freed last).
        let all = p.allocate(4).unwrap();
        assert_eq!(*all.last().unwrap(), b);
        assert_eq!(p.lookup(&h0), None);
        assert_eq!(p.evictions(), 1);
        assert_eq!(p.allocate(1), Err(NoFreeBlocks { requested: 1, free: 0 }));
    }

    #[test]
    fn shared_blocks_stay_until_the_last_reader_leaves() {
        let mut p = BlockPool::new(2);
        let a = p.allocate(1).unwrap()[0];
        let h = hash_block(None, &[7], b"");
        p.register(a, h);
        p.acquire(a);
        p.free(&[a]);
        assert_eq!(p.ref_count(a), 1);
        // The only free block is the other one; the shared block cannot be evicted.
        let other = p.allocate(1).unwrap()[0];
        assert_ne!(other, a);
        assert_eq!(p.lookup(&h), Some(a));
        assert!(p.allocate(1).is_err());
    }
}
