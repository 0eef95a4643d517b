//! An embedding model ready to serve: a BERT encoder with its `tokenizer.json`, text in,
//! normalised vectors out.

use std::path::Path;

use crate::bert::BertEncoder;
use crate::error::{ModelError, Result};

/// Encoder + tokenizer of a sentence-embedding model directory.
#[derive(Debug)]
pub struct EmbeddingModel {
    /// Weights and forward pass.
    pub encoder: BertEncoder,
    tokenizer: tokenizers::Tokenizer,
    /// The directory name (the model's name in the API).
    pub name: String,
    prefix: Vec<u32>,
    suffix: Vec<u32>,
}

impl EmbeddingModel {
    /// Opens `dir` (`config.json`, `*.safetensors`, `tokenizer.json`).
    pub fn load(dir: &Path, threads: usize) -> Result<Self> {
        let encoder = BertEncoder::load(dir, threads)?;
        let path = dir.join("tokenizer.json");
        let mut tokenizer = tokenizers::Tokenizer::from_file(&path).map_err(|e| ModelError::Tokenizer(format!("{}: {e}", path.display())))?;
        // The file may carry a truncation and padding setup for training; we never cut or pad
        // silently (too-long inputs are refused or truncated on request, by the caller).
        tokenizer.with_truncation(None).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        tokenizer.with_padding(None);
        let name = dir.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "embedding".into());
        // The special tokens around every input, found by encoding one word with and without them.
        let tok_err = |e: tokenizers::Error| ModelError::Tokenizer(e.to_string());
        let with = tokenizer.encode("a", true).map_err(tok_err)?.get_ids().to_vec();
        let bare = tokenizer.encode("a", false).map_err(tok_err)?.get_ids().to_vec();
        let at = with.windows(bare.len().max(1)).position(|w| w == bare.as_slice()).unwrap_or(with.len());
        let (prefix, suffix) = (with[..at].to_vec(), with[(at + bare.len()).min(with.len())..].to_vec());
        Ok(Self { encoder, tokenizer, name, prefix, suffix })
    }

    /// Token ids of `text`, with the model's special tokens ([CLS] … [SEP]).
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.tokenizer.encode(text, true).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids of `text` without special tokens, each with its span in characters of `text`.
    pub fn tokenize_spans(&self, text: &str) -> Result<Vec<(u32, (usize, usize))>> {
        let enc = self.tokenizer.encode_char_offsets(text, false).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().iter().copied().zip(enc.get_offsets().iter().copied()).collect())
    }

    /// `ids` between the special tokens every input carries ([CLS] … [SEP]).
    pub fn wrap(&self, ids: &[u32]) -> Vec<u32> {
        let mut out = Vec::with_capacity(ids.len() + self.prefix.len() + self.suffix.len());
        out.extend_from_slice(&self.prefix);
        out.extend_from_slice(ids);
        out.extend_from_slice(&self.suffix);
        out
    }

    /// Special tokens `wrap` adds.
    pub fn special_tokens(&self) -> usize {
        self.prefix.len() + self.suffix.len()
    }

    /// The longest input the model takes, in tokens (special tokens included).
    pub fn max_tokens(&self) -> usize {
        self.encoder.cfg.max_position_embeddings
    }

    /// Cuts `ids` to `max_tokens`, keeping the closing special token as the tokenizer's own
    /// truncation would.
    pub fn truncate(&self, ids: &mut Vec<u32>) {
        let max = self.max_tokens();
        if ids.len() > max {
            let last = ids[ids.len() - 1];
            ids.truncate(max - 1);
            ids.push(last);
        }
    }

    /// The embedding dimension.
    pub fn dim(&self) -> usize {
        self.encoder.dim()
    }

    /// Normalised vectors of `texts` (token ids), one forward.
    pub fn embed(&self, texts: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        self.encoder.embed(texts)
    }
}
