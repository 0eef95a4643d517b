//! Token-aware chunking: windows of `size` tokens (special tokens included) overlapping by
//! `overlap` tokens, each remembering the characters of the document it covers.

use sluice_model::EmbeddingModel;

use crate::error::RetrievalError;

/// One chunk of a document.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    /// Position in the document.
    pub index: usize,
    /// First character (inclusive).
    pub start_char: usize,
    /// Last character (exclusive).
    pub end_char: usize,
    /// The text `[start_char, end_char)`.
    pub text: String,
    /// Token ids, with the model's special tokens, ready to embed.
    pub ids: Vec<u32>,
}

/// Splits `text` into chunks of at most `size` tokens overlapping by `overlap`.
pub fn chunk(model: &EmbeddingModel, text: &str, size: usize, overlap: usize) -> Result<Vec<Chunk>, RetrievalError> {
    let body = size.saturating_sub(model.special_tokens());
    if body == 0 || overlap >= body {
        return Err(RetrievalError::Invalid(format!("chunk size {size} must exceed the overlap {overlap} plus {} special tokens", model.special_tokens())));
    }
    let spans = model.tokenize_spans(text).map_err(|e| RetrievalError::Model(e.to_string()))?;
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let byte_at = |c: usize| chars.get(c).map_or(text.len(), |(b, _)| *b);
    let mut out = Vec::new();
    let mut start = 0;
    while start < spans.len() {
        let end = (start + body).min(spans.len());
        let (start_char, end_char) = (spans[start].1.0, spans[end - 1].1.1);
        let ids: Vec<u32> = spans[start..end].iter().map(|s| s.0).collect();
        out.push(Chunk { index: out.len(), start_char, end_char, text: text[byte_at(start_char)..byte_at(end_char)].to_string(), ids: model.wrap(&ids) });
        if end == spans.len() {
            break;
        }
        start = end - overlap;
    }
    Ok(out)
}
