//! A contiguous per-sequence key/value cache: `[layer][position][kv_head × head_dim]`, f32.
//! The model reads and writes it but does not own it, so the engine decides its lifetime
//! (the paged, shared block pool replaces this in the batching engine).

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};

/// Keys and values of one sequence, for positions `0..len`.
#[derive(Debug)]
pub struct KvCache {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    kv_dim: usize,
    capacity: usize,
    len: usize,
}

impl KvCache {
    /// A cache for up to `capacity` positions (allocated lazily as it fills).
    pub fn new(cfg: &ModelConfig, capacity: usize) -> Self {
        Self {
            k: vec![Vec::new(); cfg.n_layers],
            v: vec![Vec::new(); cfg.n_layers],
            kv_dim: cfg.kv_dim(),
            capacity,
            len: 0,
        }
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
        for (k, v) in self.k.iter_mut().zip(self.v.iter_mut()) {
            k.truncate(self.len * self.kv_dim);
            v.truncate(self.len * self.kv_dim);
        }
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

    /// Appends this step's keys and values for `layer` (`n × kv_dim` each).
    pub(crate) fn append(&mut self, layer: usize, k: &[f32], v: &[f32]) {
        debug_assert_eq!(self.k[layer].len(), self.len * self.kv_dim);
        self.k[layer].extend_from_slice(k);
        self.v[layer].extend_from_slice(v);
    }

    /// All cached keys and values of `layer`, including those appended this step.
    pub(crate) fn layer(&self, layer: usize) -> (&[f32], &[f32]) {
        (&self.k[layer], &self.v[layer])
    }

    /// Marks `n` appended positions as committed (after every layer appended them).
    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
        debug_assert!(self.k.iter().all(|k| k.len() == self.len * self.kv_dim));
    }

    /// Bytes held.
    pub fn byte_size(&self) -> usize {
        self.k.iter().chain(&self.v).map(|b| b.capacity() * 4).sum()
    }
}
