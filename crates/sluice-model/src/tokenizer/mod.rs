//! Tokenizers built from GGUF metadata: byte-level BPE (GPT-2 style, with the model's
//! pre-tokenizer) and SentencePiece-style (scores, byte fallback). Special tokens (control and
//! user-defined) are split out of the text first, longest first, as llama.cpp does, when the
//! caller asks for special-token parsing (chat templates do; raw user text does not).

mod bpe;
pub(crate) mod hf;
mod spm;

use std::collections::HashMap;

use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;

/// The role a vocabulary entry plays (GGUF `tokenizer.ggml.token_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// Ordinary text piece.
    Normal,
    /// Unknown-token placeholder.
    Unknown,
    /// Control token such as `<|im_end|>`: never produced from raw text, hidden in output.
    Control,
    /// Added token matched verbatim in text and shown in output.
    UserDefined,
    /// Byte-fallback token `<0xXX>`.
    Byte,
    /// Unused slot.
    Unused,
}

impl TokenKind {
    fn from_gguf(v: i64) -> Self {
        match v {
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            _ => Self::Normal,
        }
    }
}

enum Algorithm {
    Bpe(bpe::Bpe),
    Spm(spm::Spm),
    /// A Hugging Face `tokenizer.json`; `raw` encodes special-token text as plain text.
    Hf { plain: Box<tokenizers::Tokenizer>, raw: Box<tokenizers::Tokenizer> },
}

/// Converts text to token ids and back.
pub struct Tokenizer {
    algo: Algorithm,
    /// Decoded bytes of every token (what it contributes to output text).
    pieces: Vec<Vec<u8>>,
    kinds: Vec<TokenKind>,
    /// Control / user-defined / unknown tokens: (text, id), longest text first.
    specials: Vec<(String, u32)>,
    /// Beginning-of-sequence token.
    pub bos: Option<u32>,
    /// End-of-sequence token.
    pub eos: Option<u32>,
    /// Whether prompts start with BOS.
    pub add_bos: bool,
    eog: Vec<u32>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer").field("vocab", &self.pieces.len()).finish()
    }
}

fn tok_err(msg: impl Into<String>) -> ModelError {
    ModelError::Tokenizer(msg.into())
}

impl Tokenizer {
    /// Builds the tokenizer described by GGUF metadata.
    pub fn from_gguf(f: &GgufFile) -> Result<Self> {
        let tokens: Vec<String> = f
            .get("tokenizer.ggml.tokens")
            .and_then(|v| v.as_array())
            .ok_or_else(|| tok_err("GGUF has no tokenizer.ggml.tokens"))?
            .iter()
            .map(|v| v.as_str().map(str::to_string).ok_or_else(|| tok_err("non-string token")))
            .collect::<Result<_>>()?;
        let n = tokens.len();
        let kinds: Vec<TokenKind> = match f.get("tokenizer.ggml.token_type").and_then(|v| v.as_array()) {
            Some(a) if a.len() == n => a
                .iter()
                .map(|v| match v {
                    crate::gguf::MetaValue::I64(x) => TokenKind::from_gguf(*x),
                    crate::gguf::MetaValue::U64(x) => TokenKind::from_gguf(*x as i64),
                    _ => TokenKind::Normal,
                })
                .collect(),
            Some(_) => return Err(tok_err("tokenizer.ggml.token_type length differs from the vocabulary")),
            None => vec![TokenKind::Normal; n],
        };
        let id_key = |k: &str| -> Result<Option<u32>> {
            match f.get(k).and_then(|v| v.as_u64()) {
                None => Ok(None),
                Some(v) if (v as usize) < n => Ok(Some(v as u32)),
                Some(v) => Err(tok_err(format!("{k} = {v} is outside the vocabulary"))),
            }
        };
        let bos = id_key("tokenizer.ggml.bos_token_id")?;
        let eos = id_key("tokenizer.ggml.eos_token_id")?;
        let model = f.get_str("tokenizer.ggml.model").unwrap_or("");
        let (algo, pieces, default_add_bos) = match model {
            "gpt2" => {
                let merges: Vec<String> = f
                    .get("tokenizer.ggml.merges")
                    .and_then(|v| v.as_array())
                    .ok_or_else(|| tok_err("BPE tokenizer without tokenizer.ggml.merges"))?
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect();
                let pre = f.get_str("tokenizer.ggml.pre").unwrap_or("default");
                let (b, pieces) = bpe::Bpe::new(&tokens, &kinds, &merges, pre)?;
                (Algorithm::Bpe(b), pieces, false)
            }
            "llama" => {
                let scores: Vec<f32> = match f.get("tokenizer.ggml.scores").and_then(|v| v.as_array()) {
                    Some(a) if a.len() == n => a.iter().map(|v| v.as_f64().unwrap_or(0.0) as f32).collect(),
                    _ => return Err(tok_err("SentencePiece tokenizer needs tokenizer.ggml.scores")),
                };
                let add_space_prefix =
                    f.get("tokenizer.ggml.add_space_prefix").and_then(|v| v.as_bool()).unwrap_or(true);
                let (s, pieces) = spm::Spm::new(&tokens, &kinds, scores, add_space_prefix);
                (Algorithm::Spm(s), pieces, true)
            }
            other => return Err(tok_err(format!("unsupported tokenizer model {other:?} (supported: gpt2, llama)"))),
        };
        let add_bos = f.get("tokenizer.ggml.add_bos_token").and_then(|v| v.as_bool()).unwrap_or(default_add_bos);
        Ok(Self::assemble(algo, pieces, kinds, &tokens, bos, eos, add_bos))
    }

    fn assemble(
        algo: Algorithm,
        pieces: Vec<Vec<u8>>,
        kinds: Vec<TokenKind>,
        tokens: &[String],
        bos: Option<u32>,
        eos: Option<u32>,
        add_bos: bool,
    ) -> Self {
        let mut specials: Vec<(String, u32)> = tokens
            .iter()
            .enumerate()
            .filter(|(i, t)| {
                !t.is_empty() && matches!(kinds[*i], TokenKind::Control | TokenKind::UserDefined | TokenKind::Unknown)
            })
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        let mut eog: Vec<u32> = eos.into_iter().collect();
        for name in ["<|im_end|>", "<|endoftext|>", "<end_of_turn>", "<|eot_id|>", "<|end|>", "</s>"] {
            if let Some(&(_, id)) = specials.iter().find(|(t, _)| t == name)
                && kinds[id as usize] == TokenKind::Control && !eog.contains(&id) {
                    eog.push(id);
                }
        }
        Self { algo, pieces, kinds, specials, bos, eos, add_bos, eog }
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    /// Whether generating `id` ends the sequence (EOS or an end-of-turn token).
    pub fn is_end_of_generation(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }

    /// The end-of-generation token ids.
    pub fn end_of_generation_ids(&self) -> &[u32] {
        &self.eog
    }

    /// Token ids of `text`, without BOS. With `parse_special`, special-token texts in `text`
    /// become their ids; without, they are tokenized as plain text.
    pub fn encode(&self, text: &str, parse_special: bool) -> Vec<u32> {
        if let Algorithm::Hf { plain, raw } = &self.algo {
            let t = if parse_special { plain } else { raw };
            return t.encode(text, false).map(|e| e.get_ids().to_vec()).unwrap_or_default();
        }
        let mut out = Vec::new();
        // SentencePiece adds its space prefix to text at the start and after special tokens.
        let mut after_special = true;
        for frag in self.partition(text, parse_special) {
            match frag {
                Fragment::Special(id) => {
                    out.push(id);
                    after_special = true;
                }
                Fragment::Text(t) => {
                    match &self.algo {
                        Algorithm::Bpe(b) => b.encode(t, &mut out),
                        Algorithm::Spm(s) => s.encode(t, after_special, &mut out),
                        Algorithm::Hf { .. } => {}
                    }
                    after_special = false;
                }
            }
        }
        out
    }

    /// Token ids of a prompt: BOS first when the model wants it.
    pub fn encode_prompt(&self, text: &str, parse_special: bool) -> Vec<u32> {
        let mut ids = Vec::new();
        if let (true, Some(bos)) = (self.add_bos, self.bos) {
            ids.push(bos);
        }
        let body = self.encode(text, parse_special);
        // A template that already starts with the BOS text must not get a second one.
        if ids.len() == 1 && body.first() == ids.first() {
            return body;
        }
        ids.extend(body);
        ids
    }

    /// The bytes token `id` adds to output text; control tokens add nothing unless
    /// `render_special`.
    pub fn token_bytes(&self, id: u32, render_special: bool) -> &[u8] {
        match self.kinds.get(id as usize) {
            None => &[],
            Some(TokenKind::Control | TokenKind::Unknown | TokenKind::Unused) if !render_special => &[],
            Some(_) => &self.pieces[id as usize],
        }
    }

    /// Decodes ids to text (invalid UTF-8 replaced); `render_special` shows control tokens.
    pub fn decode(&self, ids: &[u32], render_special: bool) -> String {
        let bytes: Vec<u8> = ids.iter().flat_map(|&id| self.token_bytes(id, render_special).iter().copied()).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The literal text of a token as stored in the vocabulary (e.g. `<|im_end|>`).
    pub fn token_text(&self, id: u32) -> Option<String> {
        self.pieces.get(id as usize).map(|p| String::from_utf8_lossy(p).into_owned())
    }

    fn partition<'a>(&self, text: &'a str, parse_special: bool) -> Vec<Fragment<'a>> {
        let mut frags = vec![Fragment::Text(text)];
        for (tok, id) in &self.specials {
            if !parse_special && self.kinds[*id as usize] != TokenKind::UserDefined {
                continue;
            }
            let mut next = Vec::with_capacity(frags.len());
            for f in frags {
                match f {
                    Fragment::Text(mut t) => {
                        while let Some(pos) = t.find(tok.as_str()) {
                            if pos > 0 {
                                next.push(Fragment::Text(&t[..pos]));
                            }
                            next.push(Fragment::Special(*id));
                            t = &t[pos + tok.len()..];
                        }
                        if !t.is_empty() {
                            next.push(Fragment::Text(t));
                        }
                    }
                    s => next.push(s),
                }
            }
            frags = next;
        }
        frags
    }
}

enum Fragment<'a> {
    Text(&'a str),
    Special(u32),
}

/// Turns a token stream into text incrementally, holding back incomplete UTF-8 sequences.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    pending: Vec<u8>,
}

impl StreamDecoder {
    /// Adds a token's bytes and returns the text that is now complete.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            Err(e) if e.error_len().is_some() => {
                // Invalid (not merely incomplete): emit with replacement so we never stall.
                let s = String::from_utf8_lossy(&self.pending).into_owned();
                self.pending.clear();
                return s;
            }
            Err(e) => e.valid_up_to(),
        };
        let rest = self.pending.split_off(valid);
        let done = std::mem::replace(&mut self.pending, rest);
        String::from_utf8(done).unwrap_or_default()
    }

    /// Whatever is left at the end of the stream (replacement chars for a cut sequence).
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}

pub(crate) fn build_lookup(pieces: &[Vec<u8>]) -> HashMap<Vec<u8>, u32> {
    let mut m = HashMap::with_capacity(pieces.len());
    // First id wins for duplicate pieces, as in the reference vocabularies.
    for (i, p) in pieces.iter().enumerate().rev() {
        m.insert(p.clone(), i as u32);
    }
    m
}
