//! What the router needs from a request body without owning its schema: the model, whether it
//! streams, its output limit, an estimate of its prompt tokens, and a hash of its prefix.
//! The estimate (UTF-8 bytes / 4, plus a few tokens per message, as OpenAI's rule of thumb) is
//! only for choosing targets; a backend that still finds the prompt too long answers
//! `context_length_exceeded` and the router moves on to a target with a larger window.

use serde_json::{Map, Value};

use crate::backend::Api;
use crate::error::GatewayError;

/// Routing facts of one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Inspected {
    /// The client-facing model name.
    pub model: String,
    /// Server-sent events wanted.
    pub stream: bool,
    /// The client asked for the final usage chunk.
    pub include_usage: bool,
    /// `max_completion_tokens` or `max_tokens`.
    pub max_tokens: Option<u64>,
    /// Estimated prompt tokens.
    pub prompt_tokens: u64,
    /// Hash of the first `prefix_bytes` of the prompt text.
    pub prefix_hash: u64,
    /// `metadata.feature`, for cost attribution.
    pub feature: Option<String>,
    /// The prompt's text (message contents or prompts, concatenated).
    pub prompt_text: String,
}

/// Tokens per message for role markers in chat templates.
const PER_MESSAGE: u64 = 4;

fn estimate(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(4)
}

/// Reads the routing facts; `prefix_bytes` bounds the hashed prefix.
pub fn inspect(api: Api, body: &Map<String, Value>, prefix_bytes: impl Fn(&str) -> usize) -> Result<Inspected, GatewayError> {
    let model = match body.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        Some(_) => return Err(GatewayError::bad("model", "`model` must be a non-empty string")),
        None => return Err(GatewayError::bad("model", "`model` is required")),
    };
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(GatewayError::bad("stream", "`stream` must be a boolean")),
    };
    let include_usage = body
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let max_tokens = match body.get("max_completion_tokens").filter(|v| !v.is_null()).or_else(|| body.get("max_tokens").filter(|v| !v.is_null())) {
        None => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| GatewayError::bad("max_tokens", "`max_tokens` must be a non-negative integer"))?),
    };
    let mut text = String::new();
    let mut tokens = 0u64;
    match api {
        Api::Chat => {
            let Some(Value::Array(msgs)) = body.get("messages") else {
                return Err(GatewayError::bad("messages", "`messages` must be an array"));
            };
            for m in msgs {
                tokens += PER_MESSAGE;
                match m.get("content") {
                    Some(Value::String(s)) => text.push_str(s),
                    Some(Value::Array(parts)) => {
                        for p in parts {
                            if let Some(Value::String(s)) = p.get("text") {
                                text.push_str(s);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        Api::Completions => match body.get("prompt") {
            Some(Value::String(s)) => text.push_str(s),
            Some(Value::Array(items)) => {
                for it in items {
                    match it {
                        Value::String(s) => text.push_str(s),
                        Value::Number(_) => tokens += 1,
                        Value::Array(ids) => tokens += ids.len() as u64,
                        _ => {}
                    }
                }
            }
            _ => return Err(GatewayError::bad("prompt", "`prompt` must be a string or an array")),
        },
    }
    tokens += estimate(text.len());
    let cut = prefix_bytes(&model).min(text.len());
    let cut = (0..=cut).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
    let feature = body
        .get("metadata")
        .and_then(|m| m.get("feature"))
        .and_then(Value::as_str)
        .filter(|f| !f.is_empty() && f.len() <= 64)
        .map(str::to_string);
    Ok(Inspected {
        model,
        stream,
        include_usage,
        max_tokens,
        prompt_tokens: tokens,
        prefix_hash: fnv1a(&text.as_bytes()[..cut]),
        feature,
        prompt_text: text,
    })
}

/// A copy of `body` with `redact` applied to every prompt text (message contents, text parts,
/// completion prompts).
pub fn redact(api: Api, body: &Map<String, Value>, redact: &(dyn Fn(&str) -> String + Send + Sync)) -> Map<String, Value> {
    let mut out = body.clone();
    let fix = |v: &mut Value| {
        if let Value::String(s) = v {
            *s = redact(s);
        }
    };
    match api {
        Api::Chat => {
            if let Some(Value::Array(msgs)) = out.get_mut("messages") {
                for m in msgs {
                    match m.get_mut("content") {
                        Some(Value::Array(parts)) => {
                            for p in parts {
                                if let Some(t) = p.get_mut("text") {
                                    fix(t);
                                }
                            }
                        }
                        Some(c) => fix(c),
                        None => {}
                    }
                }
            }
        }
        Api::Completions => match out.get_mut("prompt") {
            Some(Value::Array(items)) => items.iter_mut().for_each(fix),
            Some(p) => fix(p),
            None => {}
        },
    }
    out
}

/// The generated text of a whole response (choices joined by newlines).
pub fn response_text(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let texts: Vec<&str> = v
        .get("choices")?
        .as_array()?
        .iter()
        .filter_map(|c| c.get("message").and_then(|m| m.get("content")).or_else(|| c.get("text")).and_then(Value::as_str))
        .collect();
    Some(texts.join("\n"))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::json;

    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn reads_the_routing_facts() {
        let body = obj(json!({"model": "m", "stream": true, "stream_options": {"include_usage": true}, "max_tokens": 7,
            "messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": [{"type": "text", "text": "Hi there"}]}]}));
        let i = inspect(Api::Chat, &body, |_| 256).unwrap();
        assert_eq!((i.model.as_str(), i.stream, i.include_usage, i.max_tokens), ("m", true, true, Some(7)));
        assert_eq!(i.prompt_tokens, 8 + ("You are terse.Hi there".len() as u64).div_ceil(4));
        let same_prefix = inspect(Api::Chat, &body, |_| 5).unwrap();
        let other = obj(json!({"model": "m", "messages": [{"role": "user", "content": "You are terse? No."}]}));
        assert_eq!(inspect(Api::Chat, &other, |_| 5).unwrap().prefix_hash, same_prefix.prefix_hash);
        assert_ne!(inspect(Api::Chat, &other, |_| 256).unwrap().prefix_hash, i.prefix_hash);
    }

    #[test]
    fn completions_count_text_and_token_prompts() {
        let i = inspect(Api::Completions, &obj(json!({"model": "m", "prompt": [[1, 2, 3], "abcd"]})), |_| 8).unwrap();
        assert_eq!(i.prompt_tokens, 3 + 1);
        assert_eq!(i.max_tokens, None);
    }

    #[test]
    fn bad_bodies_name_the_parameter() {
        let e = inspect(Api::Chat, &obj(json!({"messages": []})), |_| 8).unwrap_err();
        assert!(matches!(e, GatewayError::BadRequest { param: Some(ref p), .. } if p == "model"));
        let e = inspect(Api::Chat, &obj(json!({"model": "m", "messages": [], "max_tokens": -1})), |_| 8).unwrap_err();
        assert!(matches!(e, GatewayError::BadRequest { param: Some(ref p), .. } if p == "max_tokens"));
        let e = inspect(Api::Completions, &obj(json!({"model": "m"})), |_| 8).unwrap_err();
        assert!(matches!(e, GatewayError::BadRequest { param: Some(ref p), .. } if p == "prompt"));
    }

    #[test]
    fn redaction_reaches_every_prompt_text() {
        let upper = |s: &str| s.to_uppercase();
        let chat = obj(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": [{"type": "text", "text": "yo"}]}]}));
        let r = redact(Api::Chat, &chat, &upper);
        assert_eq!(r["messages"][0]["content"], "HI");
        assert_eq!(r["messages"][1]["content"][0]["text"], "YO");
        assert_eq!(r["model"], "m");
        let comp = obj(json!({"model": "m", "prompt": ["a", "b"]}));
        assert_eq!(redact(Api::Completions, &comp, &upper)["prompt"], json!(["A", "B"]));
    }

    #[test]
    fn the_prefix_cut_respects_utf8() {
        let body = obj(json!({"model": "m", "prompt": "héllo"}));
        inspect(Api::Completions, &body, |_| 2).unwrap();
    }
}
