//! Retrieval: the embedding service (batched forwards on their own thread); token-aware
//! chunking; tenant-scoped collections with vector (embedded HNSW or pgvector), lexical and
//! hybrid search, and freshness guarantees (read-your-writes, TTL, max age).

pub mod chunk;
pub mod collections;
pub mod embed;
pub mod error;
pub mod index;
pub mod search;
mod sql;
#[doc(hidden)]
pub mod testing;

pub use collections::{Collection, CollectionSpec, Collections, DocumentInput, Prepared, Stats, Upserted};
pub use embed::{Embedded, Embedders, EmbeddingService};
pub use error::RetrievalError;
pub use search::{Hit, Mode, Query};
