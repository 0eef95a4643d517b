//! Paged key/value memory: per layer, `num_blocks × block_size` rows of `n_kv_heads × head_dim`
//! floats for keys and as many for values. Keys are stored row by row (a query's scores are dot
//! products over a key's dimensions); values are stored transposed within each block (dimension
//! `d` of a block's positions is one run of `block_size` floats), so each output of the weighted
//! sum is a dot product over positions with its accumulators in registers. Which block holds which positions of which sequence
//! is the caller's business (a block table per sequence, from `sluice-kv`); the model only
//! reads and writes rows through those tables. Memory is reserved zeroed, so untouched blocks
//! cost address space, not resident memory.
//!
//! `KvCache` is the single-sequence convenience on top: its own blocks, in order.

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};

/// Keys and values of every block of one engine.
#[derive(Debug)]
pub struct PagedKv {
    pub(crate) k: Vec<Vec<f32>>,
    pub(crate) v: Vec<Vec<f32>>,
    pub(crate) block_size: usize,
    num_blocks: usize,
}

impl PagedKv {
    /// Memory for `num_blocks` blocks of `block_size` positions.
    pub fn new(cfg: &ModelConfig, num_blocks: usize, block_size: usize) -> Self {
        let rows = num_blocks * block_size.max(1);
        let kv_dim = cfg.kv_dim();
        Self {
            k: (0..cfg.n_layers).map(|_| vec![0f32; rows * kv_dim]).collect(),
            v: (0..cfg.n_layers).map(|_| vec![0f32; rows * kv_dim]).collect(),
            block_size: block_size.max(1),
            num_blocks,
        }
    }

    /// Bytes one block occupies (keys and values of every layer).
    pub fn bytes_per_block(cfg: &ModelConfig, block_size: usize) -> usize {
        2 * cfg.n_layers * block_size * cfg.kv_dim() * std::mem::size_of::<f32>()
    }

    /// Blocks available.
    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    /// Positions per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }
}

/// One sequence's keys and values in blocks of its own (used by single-sequence callers).
#[derive(Debug)]
pub struct KvCache {
    pub(crate) paged: PagedKv,
    pub(crate) table: Vec<u32>,
    len: usize,
    capacity: usize,
}

const SINGLE_BLOCK: usize = 16;

impl KvCache {
    /// A cache for up to `capacity` positions.
    pub fn new(cfg: &ModelConfig, capacity: usize) -> Self {
        let blocks = capacity.div_ceil(SINGLE_BLOCK).max(1);
        Self { paged: PagedKv::new(cfg, blocks, SINGLE_BLOCK), table: (0..blocks as u32).collect(), len: 0, capacity }
    }

    /// Positions filled so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Maximum positions.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets positions from `len` on (e.g. to reuse a common prefix).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    pub(crate) fn check_room(&self, n_new: usize) -> Result<()> {
        if self.len + n_new > self.capacity {
            return Err(ModelError::InvalidInput(format!(
                "{} cached + {} new positions exceed the cache capacity {}",
                self.len, n_new, self.capacity
            )));
        }
        Ok(())
    }

    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }
}
