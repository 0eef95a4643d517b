//! GPT-2 style byte-level BPE: a pre-tokenizer splits text into words (regexes chosen by the
//! GGUF `tokenizer.ggml.pre` name), each word's bytes start as single-byte symbols and the
//! lowest-ranked adjacent merge is applied until none applies.

use std::collections::{BinaryHeap, HashMap};
use std::cmp::Reverse;

use fancy_regex::Regex;

use super::{TokenKind, build_lookup, tok_err};
use crate::error::Result;

const GPT2_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GPT-2's reversible map from bytes to printable characters.
fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable = (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        table[b as usize] = if printable {
            char::from_u32(b).unwrap_or('\0')
        } else {
            n += 1;
            char::from_u32(255 + n).unwrap_or('\0')
        };
    }
    table
}

/// The inverse of GPT-2's byte-to-character map.
pub(super) fn char_to_byte_map() -> HashMap<char, u8> {
    byte_to_char_table().iter().enumerate().map(|(b, c)| (*c, b as u8)).collect()
}

pub(super) struct Bpe {
    /// Regexes applied in sequence: each splits the pieces the previous one produced.
    pre: Vec<Regex>,
    byte_token: [u32; 256],
    merges: HashMap<(u32, u32), (u32, u32)>,
}

impl Bpe {
    /// Builds the model; returns it with every token's decoded bytes.
    pub(super) fn new(
        tokens: &[String],
        kinds: &[TokenKind],
        merges: &[String],
        pre: &str,
    ) -> Result<(Self, Vec<Vec<u8>>)> {
        let table = byte_to_char_table();
        let char_to_byte = char_to_byte_map();
        let pieces: Vec<Vec<u8>> = tokens
            .iter()
            .zip(kinds)
            .map(|(t, k)| match k {
                TokenKind::Normal | TokenKind::Byte => {
                    // Byte-level tokens map back char by char; anything outside the alphabet
                    // (rare in real vocabularies) is kept as its UTF-8 text.
                    t.chars()
                        .flat_map(|c| char_to_byte.get(&c).map(|b| vec![*b]).unwrap_or_else(|| c.to_string().into_bytes()))
                        .collect()
                }
                _ => t.as_bytes().to_vec(),
            })
            .collect();
        let lookup = build_lookup(&pieces);
        let text_to_id: HashMap<&str, u32> =
            tokens.iter().enumerate().rev().map(|(i, t)| (t.as_str(), i as u32)).collect();
        let mut byte_token = [u32::MAX; 256];
        for (b, slot) in byte_token.iter_mut().enumerate() {
            let key = table[b].to_string();
            *slot = text_to_id
                .get(key.as_str())
                .copied()
                .or_else(|| lookup.get(&vec![b as u8]).copied())
                .unwrap_or(u32::MAX);
        }
        let mut merge_map = HashMap::with_capacity(merges.len());
        for (rank, m) in merges.iter().enumerate() {
            let Some((a, b)) = m.split_once(' ') else { continue };
            let (Some(&ia), Some(&ib)) = (text_to_id.get(a), text_to_id.get(b)) else { continue };
            let merged = format!("{a}{b}");
            let Some(&im) = text_to_id.get(merged.as_str()) else { continue };
            merge_map.entry((ia, ib)).or_insert((rank as u32, im));
        }
        let patterns: Vec<&str> = match pre {
            "smollm" => vec![r"\p{N}", GPT2_PATTERN],
            "llama3" | "llama-bpe" | "llama-v3" | "falcon3" => vec![LLAMA3_PATTERN],
            "qwen2" | "deepseek-r1-qwen" => vec![QWEN2_PATTERN],
            "default" | "gpt2" | "gpt-2" | "mpt" | "olmo" => vec![GPT2_PATTERN],
            // A wrong pre-tokenizer silently changes every prompt: refuse instead.
            other => {
                return Err(tok_err(format!(
                    "unsupported pre-tokenizer {other:?} (supported: gpt2, smollm, llama3/llama-bpe, qwen2)"
                )));
            }
        };
        let pre = patterns
            .into_iter()
            .map(|p| Regex::new(p).map_err(|e| tok_err(format!("pre-tokenizer regex: {e}"))))
            .collect::<Result<_>>()?;
        Ok((Self { pre, byte_token, merges: merge_map }, pieces))
    }

    fn split<'a>(&self, text: &'a str) -> Vec<&'a str> {
        let mut pieces = vec![text];
        for re in &self.pre {
            let mut next = Vec::with_capacity(pieces.len() * 2);
            for p in pieces {
                let mut last = 0;
                for m in re.find_iter(p) {
                    // fancy-regex only errs on backtrack limits; keep the rest as one piece then.
                    let Ok(m) = m else { break };
                    if m.start() > last {
                        next.push(&p[last..m.start()]);
                    }
                    if m.end() > m.start() {
                        next.push(m.as_str());
                    }
                    last = m.end();
                }
                if last < p.len() {
                    next.push(&p[last..]);
                }
            }
            pieces = next;
        }
        pieces
    }

    pub(super) fn encode(&self, text: &str, out: &mut Vec<u32>) {
        for word in self.split(text) {
            self.encode_word(word.as_bytes(), out);
        }
    }

    /// Merges by rank with a heap over adjacent pairs: O(n log n) per word.
    fn encode_word(&self, bytes: &[u8], out: &mut Vec<u32>) {
        let n = bytes.len();
        let mut ids: Vec<u32> = bytes.iter().map(|&b| self.byte_token[b as usize]).collect();
        if n == 1 {
            out.extend(ids);
            return;
        }
        let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
        let mut next: Vec<usize> = (1..=n).collect();
        let mut alive = vec![true; n];
        let mut heap = BinaryHeap::new();
        for i in 0..n - 1 {
            if let Some(&(rank, _)) = self.merges.get(&(ids[i], ids[i + 1])) {
                heap.push(Reverse((rank, i, ids[i], ids[i + 1])));
            }
        }
        while let Some(Reverse((rank, i, left, right))) = heap.pop() {
            let j = next[i];
            // Stale entry: a symbol involved was merged away or changed since it was pushed.
            if !alive[i] || j >= n || !alive[j] || ids[i] != left || ids[j] != right {
                continue;
            }
            let Some(&(_, merged)) = self.merges.get(&(left, right)) else { continue };
            let _ = rank;
            ids[i] = merged;
            alive[j] = false;
            next[i] = next[j];
            if next[j] < n {
                prev[next[j]] = i;
            }
            let p = prev[i];
            if p < n
                && let Some(&(r, _)) = self.merges.get(&(ids[p], ids[i])) {
                    heap.push(Reverse((r, p, ids[p], ids[i])));
                }
            let q = next[i];
            if q < n
                && let Some(&(r, _)) = self.merges.get(&(ids[i], ids[q])) {
                    heap.push(Reverse((r, i, ids[i], ids[q])));
                }
        }
        let mut i = 0;
        while i < n {
            if ids[i] != u32::MAX {
                out.push(ids[i]);
            }
            i = next[i];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab() -> (Vec<String>, Vec<TokenKind>) {
        let table = byte_to_char_table();
        let mut tokens: Vec<String> = (0..256).map(|b| table[b].to_string()).collect();
        tokens.push("ab".into());
        tokens.push("Ġab".into());
        let kinds = vec![TokenKind::Normal; tokens.len()];
        (tokens, kinds)
    }

    #[test]
    fn every_pre_tokenizer_compiles_and_splits() {
        let (tokens, kinds) = vocab();
        for pre in ["default", "gpt2", "smollm", "llama3", "llama-bpe", "qwen2"] {
            let (b, pieces) = Bpe::new(&tokens, &kinds, &["a b".into(), "Ġ ab".into()], pre).unwrap();
            let mut out = Vec::new();
            b.encode("ab ab 123\n\n  x", &mut out);
            let text: Vec<u8> = out.iter().flat_map(|&t| pieces[t as usize].clone()).collect();
            assert_eq!(text, b"ab ab 123\n\n  x", "{pre}");
            assert_eq!(out[0], 256, "{pre}: merges apply");
        }
    }

    #[test]
    fn smollm_splits_digits_individually() {
        let (tokens, kinds) = vocab();
        let (b, _) = Bpe::new(&tokens, &kinds, &[], "smollm").unwrap();
        assert_eq!(b.split("ab123 4"), vec!["ab", "1", "2", "3", " ", "4"]);
    }
}
