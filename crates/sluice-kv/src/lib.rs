//! Paged KV cache bookkeeping, synchronous and model-free: the block pool with automatic
//! prefix caching (`pool`), the chained block hashes that key it (`hash`), and the per-sequence
//! block tables built on both (`table`). The engine owns one `KvManager` and maps its block
//! ids onto its own KV memory.

pub mod hash;
pub mod pool;
pub mod table;

pub use hash::{BlockHash, hash_block, hash_prefix};
pub use pool::{BlockId, BlockPool, NoFreeBlocks};
pub use table::{KvManager, SeqId};
