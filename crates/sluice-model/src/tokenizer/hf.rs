//! Tokenizers from Hugging Face directories: `tokenizer.json` through the `tokenizers` crate,
//! with BOS/EOS and special tokens from `tokenizer_config.json` and `config.json`.

use std::path::Path;

use serde_json::Value;

use super::{Algorithm, TokenKind, Tokenizer, bpe, tok_err};
use crate::error::{ModelError, Result};

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io { path: path.to_path_buf(), source })?;
    serde_json::from_str(&text).map_err(|e| ModelError::InvalidHfDir(format!("{}: {e}", path.display())))
}

/// A token given as a string or as `{"content": ...}` in tokenizer_config.json.
fn token_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// Loads `dir/tokenizer.json` (+ `tokenizer_config.json`); `config` is the model's config.json.
pub(crate) fn load(dir: &Path, config: &Value) -> Result<(Tokenizer, Option<String>)> {
    let path = dir.join("tokenizer.json");
    let json = read_json(&path)?;
    let plain = tokenizers::Tokenizer::from_file(&path)
        .map_err(|e| tok_err(format!("{}: {e}", path.display())))?;
    let mut raw = plain.clone();
    raw.set_encode_special_tokens(true);
    let tc_path = dir.join("tokenizer_config.json");
    let tc = if tc_path.exists() { read_json(&tc_path)? } else { Value::Null };

    let vocab = plain.get_vocab(true);
    let n = vocab.values().map(|&i| i as usize + 1).max().unwrap_or(0);
    let mut texts = vec![String::new(); n];
    for (t, &i) in &vocab {
        texts[i as usize] = t.clone();
    }
    let mut kinds = vec![TokenKind::Normal; n];
    for (id, added) in plain.get_added_tokens_decoder() {
        if let Some(k) = kinds.get_mut(id as usize) {
            *k = if added.special { TokenKind::Control } else { TokenKind::UserDefined };
        }
    }
    let byte_level = json.get("decoder").map(|d| d.to_string().contains("ByteLevel")).unwrap_or(false);
    let pieces: Vec<Vec<u8>> = if byte_level {
        let table = bpe::char_to_byte_map();
        texts
            .iter()
            .zip(&kinds)
            .map(|(t, k)| match k {
                TokenKind::Normal => t
                    .chars()
                    .flat_map(|c| table.get(&c).map(|b| vec![*b]).unwrap_or_else(|| c.to_string().into_bytes()))
                    .collect(),
                _ => t.as_bytes().to_vec(),
            })
            .collect()
    } else {
        texts
            .iter()
            .enumerate()
            .map(|(i, t)| {
                if kinds[i] != TokenKind::Normal {
                    return t.as_bytes().to_vec();
                }
                if let Some(b) = super::spm::parse_byte_token(t) {
                    kinds[i] = TokenKind::Byte;
                    return vec![b];
                }
                t.replace('\u{2581}', " ").into_bytes()
            })
            .collect()
    };
    let id_of = |name: Option<String>| name.and_then(|s| vocab.get(&s).copied());
    let config_id = |key: &str| -> Option<u32> {
        match config.get(key)? {
            Value::Number(x) => x.as_u64().map(|v| v as u32),
            Value::Array(a) => a.first().and_then(Value::as_u64).map(|v| v as u32),
            _ => None,
        }
    };
    let bos = id_of(token_text(tc.get("bos_token"))).or_else(|| config_id("bos_token_id"));
    let eos = id_of(token_text(tc.get("eos_token"))).or_else(|| config_id("eos_token_id"));
    let mut extra_eos: Vec<u32> = match config.get("eos_token_id") {
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_u64).map(|v| v as u32).collect(),
        _ => Vec::new(),
    };
    extra_eos.retain(|id| Some(*id) != eos);
    // Prompts start with BOS when the config says so, or when the post-processor adds it.
    let add_bos = match tc.get("add_bos_token").and_then(Value::as_bool) {
        Some(b) => b,
        None => {
            let post = json.get("post_processor").map(Value::to_string).unwrap_or_default();
            bos.and_then(|b| texts.get(b as usize)).is_some_and(|t| !t.is_empty() && post.contains(t.as_str()))
        }
    };
    let template = match tc.get("chat_template") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Array(list)) => list
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .or_else(|| list.first())
            .and_then(|t| t.get("template"))
            .and_then(Value::as_str)
            .map(str::to_string),
        _ => None,
    };
    let template = match template {
        Some(t) => Some(t),
        None => {
            let p = dir.join("chat_template.jinja");
            if p.exists() {
                Some(std::fs::read_to_string(&p).map_err(|source| ModelError::Io { path: p.clone(), source })?)
            } else {
                None
            }
        }
    };
    let mut tok = Tokenizer::assemble(
        Algorithm::Hf { plain: Box::new(plain), raw: Box::new(raw) },
        pieces,
        kinds,
        &texts,
        bos,
        eos,
        add_bos,
    );
    tok.eog.extend(extra_eos);
    Ok((tok, template))
}
