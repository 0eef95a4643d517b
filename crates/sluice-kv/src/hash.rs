//! Chained block hashes for prefix caching: `H(parent, block_tokens, extra)`, SHA-256.
//!
//! `extra` carries a namespace salt chosen by the server (API key or tenant identity), never a
//! value from a request body, so one namespace can never hit — or time-probe — another's
//! cached prefixes. The parent hash chains a block to everything before it: equal hashes mean
//! equal prefixes, not merely equal blocks. SHA-256 makes deliberate collisions infeasible.

use sha2::{Digest, Sha256};

/// The identity of a full block and of the whole prefix ending with it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockHash(pub [u8; 32]);

impl std::fmt::Debug for BlockHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in &self.0[..6] {
            write!(f, "{b:02x}")?;
        }
        f.write_str("…")
    }
}

/// Hash of one full block given its parent's hash (`None` for the first block).
pub fn hash_block(parent: Option<&BlockHash>, tokens: &[u32], extra: &[u8]) -> BlockHash {
    let mut h = Sha256::new();
    match parent {
        Some(p) => {
            h.update([1u8]);
            h.update(p.0);
        }
        None => h.update([0u8]),
    }
    h.update((tokens.len() as u32).to_le_bytes());
    for t in tokens {
        h.update(t.to_le_bytes());
    }
    h.update((extra.len() as u32).to_le_bytes());
    h.update(extra);
    BlockHash(h.finalize().into())
}

/// Hashes of every full block of `tokens` (a trailing partial block has none).
pub fn hash_prefix(tokens: &[u32], block_size: usize, extra: &[u8]) -> Vec<BlockHash> {
    let mut out: Vec<BlockHash> = Vec::with_capacity(tokens.len() / block_size.max(1));
    for chunk in tokens.chunks_exact(block_size.max(1)) {
        let h = hash_block(out.last(), chunk, extra);
        out.push(h);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_salt_and_content_all_matter() {
        let a = hash_prefix(&[1, 2, 3, 4, 5, 6, 7, 8], 4, b"tenant-a");
        let b = hash_prefix(&[1, 2, 3, 4, 5, 6, 7, 8], 4, b"tenant-b");
        let c = hash_prefix(&[9, 2, 3, 4, 5, 6, 7, 8], 4, b"tenant-a");
        assert_eq!(a.len(), 2);
        assert_ne!(a[0], b[0], "salt separates namespaces");
        assert_eq!(a[1..], hash_prefix(&[1, 2, 3, 4, 5, 6, 7, 8, 9], 4, b"tenant-a")[1..2]);
        assert_ne!(a[1], c[1], "second block differs when the first does (chained)");
        assert_eq!(hash_prefix(&[1, 2, 3], 4, b"x").len(), 0, "partial blocks are not hashed");
    }
}
