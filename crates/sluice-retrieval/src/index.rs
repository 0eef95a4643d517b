//! The embedded vector index: HNSW from `usearch` (cosine, f32), keyed by chunk id, persisted
//! as a file with a sidecar recording which write generation of the collection it holds. A
//! file that is missing, unreadable or of another generation is not trusted: the caller
//! rebuilds the index from the stored chunks.
//!
//! usearch rather than our own: it deletes (superseded chunks leave the index at once), saves
//! and loads, searches with a key filter, and its distance kernels are SIMD; hnsw_rs cannot
//! delete and instant-distance builds once.

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

use crate::error::RetrievalError;

/// Graph degree (HNSW's M).
const CONNECTIVITY: usize = 16;
/// Candidates kept while inserting.
const EXPANSION_ADD: usize = 128;
/// Candidates kept while searching (raised per query when more results are asked for).
pub const EXPANSION_SEARCH: usize = 64;

fn err(what: &str, e: impl std::fmt::Display) -> RetrievalError {
    RetrievalError::Index(format!("{what}: {e}"))
}

/// A vector index of one collection.
pub struct VectorIndex {
    index: RwLock<Index>,
    dim: usize,
}

impl std::fmt::Debug for VectorIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VectorIndex").field("dim", &self.dim).field("len", &self.len()).finish()
    }
}

fn options(dim: usize) -> IndexOptions {
    IndexOptions {
        dimensions: dim,
        metric: MetricKind::Cos,
        quantization: ScalarKind::F32,
        connectivity: CONNECTIVITY,
        expansion_add: EXPANSION_ADD,
        expansion_search: EXPANSION_SEARCH,
        multi: false,
    }
}

fn sidecar(path: &Path) -> PathBuf {
    path.with_extension("generation")
}

impl VectorIndex {
    /// An empty index of `dim`-dimensional vectors.
    pub fn new(dim: usize) -> Result<Self, RetrievalError> {
        let index = Index::new(&options(dim)).map_err(|e| err("cannot create the vector index", e))?;
        index.reserve(1024).map_err(|e| err("cannot reserve index space", e))?;
        Ok(Self { index: RwLock::new(index), dim })
    }

    /// The index saved at `path` if it holds `generation`; None when it must be rebuilt.
    pub fn load(path: &Path, dim: usize, generation: i64) -> Option<Self> {
        let recorded: i64 = std::fs::read_to_string(sidecar(path)).ok()?.trim().parse().ok()?;
        if recorded != generation {
            return None;
        }
        let index = Index::new(&options(dim)).ok()?;
        index.load(path.to_str()?).ok()?;
        (index.dimensions() == dim).then(|| Self { index: RwLock::new(index), dim })
    }

    /// Writes the index and the generation it holds (the old files stay until the new are whole).
    pub fn save(&self, path: &Path, generation: i64) -> Result<(), RetrievalError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| err("cannot create the index directory", e))?;
        }
        let tmp = path.with_extension("tmp");
        let tmp_str = tmp.to_str().ok_or_else(|| err("index path", "not UTF-8"))?;
        self.index.read().map_err(|e| err("index lock", e))?.save(tmp_str).map_err(|e| err("cannot save the vector index", e))?;
        // Generation first marked stale, then the file, then the generation: a crash in between
        // leaves a mismatch, which means rebuild, never a wrong index.
        let _ = std::fs::remove_file(sidecar(path));
        std::fs::rename(&tmp, path).map_err(|e| err("cannot move the index into place", e))?;
        std::fs::write(sidecar(path), generation.to_string()).map_err(|e| err("cannot record the index generation", e))
    }

    /// Removes the files of the index at `path`.
    pub fn remove_files(path: &Path) {
        let _ = std::fs::remove_file(sidecar(path));
        let _ = std::fs::remove_file(path);
    }

    /// Adds vectors under their keys.
    pub fn add(&self, items: &[(u64, &[f32])]) -> Result<(), RetrievalError> {
        let index = self.index.write().map_err(|e| err("index lock", e))?;
        let need = index.size() + items.len();
        if need > index.capacity() {
            index.reserve(need.max(index.capacity() * 2)).map_err(|e| err("cannot grow the vector index", e))?;
        }
        for (key, v) in items {
            if v.len() != self.dim {
                return Err(RetrievalError::Invalid(format!("a {}-dimensional vector for a {}-dimensional index", v.len(), self.dim)));
            }
            index.add(*key, v).map_err(|e| err("cannot add to the vector index", e))?;
        }
        Ok(())
    }

    /// Removes keys (absent ones are ignored).
    pub fn remove(&self, keys: &[u64]) -> Result<(), RetrievalError> {
        let index = self.index.write().map_err(|e| err("index lock", e))?;
        for k in keys {
            index.remove(*k).map_err(|e| err("cannot remove from the vector index", e))?;
        }
        Ok(())
    }

    /// Up to `n` nearest keys with their cosine distances, searching `ef` candidates.
    pub fn search(&self, query: &[f32], n: usize, ef: usize) -> Result<Vec<(u64, f32)>, RetrievalError> {
        let index = self.index.read().map_err(|e| err("index lock", e))?;
        if index.size() == 0 {
            return Ok(Vec::new());
        }
        index.change_expansion_search(ef.max(n));
        let m = index.search(query, n).map_err(|e| err("vector search failed", e))?;
        Ok(m.keys.into_iter().zip(m.distances).collect())
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.index.read().map_or(0, |i| i.size())
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
