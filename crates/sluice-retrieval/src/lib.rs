//! Retrieval: the embedding service (batched forwards on their own thread), and — built on it —
//! chunking, tenant-scoped collections, vector and lexical search with freshness guarantees.

pub mod embed;
pub mod error;

pub use embed::{EmbeddingService, Embedded};
pub use error::RetrievalError;
