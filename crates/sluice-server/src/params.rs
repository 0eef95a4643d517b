//! Parsing request bodies and validating their values once, into engine requests.
//! Every rejection names the parameter.

use serde::de::DeserializeOwned;
use sluice_engine::{GenerateRequest, SamplingParams};
use sluice_protocol::SamplingFields;

use crate::error::ApiError;

/// Prefix-cache namespace of unauthenticated requests (no store configured).
pub const DEFAULT_CACHE_NAMESPACE: &[u8] = b"sluice:default";

/// Most choices one request may ask for.
pub const MAX_N: u32 = 16;
/// Most stop sequences.
pub const MAX_STOPS: usize = 16;
/// Most alternatives per token in log-probabilities.
pub const MAX_TOP_LOGPROBS: u32 = 20;

/// The request body, or an OpenAI-shaped error with the extractor's status (413 when too large).
pub fn read_body(body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>) -> Result<axum::body::Bytes, ApiError> {
    body.map_err(|e| ApiError { status: e.status(), ..ApiError::bad_request(format!("Cannot read the request body: {}", e.body_text())) })
}

/// Parses a generation request body into `T`; errors say what is wrong and where. The shared
/// sampling fields are checked on their own first, because serde loses the field path inside a
/// flattened struct and we want every error to name its parameter.
pub fn parse_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value = json_object(bytes)?;
    from_value::<SamplingFields>(value.clone())?;
    from_value(value)
}

/// Parses a JSON object body into `T`, errors naming the parameter.
pub fn parse_object<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    from_value(json_object(bytes)?)
}

fn json_object(bytes: &[u8]) -> Result<serde_json::Value, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("The request body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_request("The request body must be a JSON object"));
    }
    Ok(value)
}

fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // A missing field is reported by serde at the parent; name it from the message.
        let param = if path == "." {
            inner.split('`').nth(1).unwrap_or("").to_string()
        } else {
            path
        };
        ApiError::invalid(param.clone(), format!("Invalid value for `{param}`: {inner}"))
    })
}

/// Validated generation settings shared by both endpoints.
#[derive(Debug, Clone)]
pub struct Generation {
    /// Sampling for the first choice (later choices derive their seed).
    pub sampling: SamplingParams,
    /// Requested maximum tokens, if any.
    pub max_tokens: Option<usize>,
    /// Choices per prompt.
    pub n: u32,
    /// Stop sequences.
    pub stop: Vec<String>,
    /// Stream as server-sent events.
    pub stream: bool,
    /// Final usage chunk in streams.
    pub include_usage: bool,
    /// Ignore end-of-sequence tokens.
    pub ignore_eos: bool,
}

fn range(param: &str, v: Option<f32>, lo: f32, hi: f32, default: f32) -> Result<f32, ApiError> {
    match v {
        None => Ok(default),
        Some(x) if x.is_finite() && x >= lo && x <= hi => Ok(x),
        Some(x) => Err(ApiError::invalid(param, format!("`{param}` must be between {lo} and {hi}, got {x}"))),
    }
}

/// Validates the sampling fields; `logprobs` is the number of alternatives wanted, if any.
pub fn validate(f: &SamplingFields, logprobs: Option<u32>) -> Result<Generation, ApiError> {
    let temperature = range("temperature", f.temperature, 0.0, 2.0, 1.0)?;
    let top_p = range("top_p", f.top_p, 0.0, 1.0, 1.0)?;
    if top_p == 0.0 {
        return Err(ApiError::invalid("top_p", "`top_p` must be greater than 0"));
    }
    let min_p = range("min_p", f.min_p, 0.0, 1.0, 0.0)?;
    let presence_penalty = range("presence_penalty", f.presence_penalty, -2.0, 2.0, 0.0)?;
    let frequency_penalty = range("frequency_penalty", f.frequency_penalty, -2.0, 2.0, 0.0)?;
    let repetition_penalty = range("repetition_penalty", f.repetition_penalty, 0.01, 10.0, 1.0)?;
    let top_k = match f.top_k {
        None | Some(-1) | Some(0) => 0,
        Some(k) if k > 0 => k as usize,
        Some(k) => return Err(ApiError::invalid("top_k", format!("`top_k` must be -1, 0 or positive, got {k}"))),
    };
    let max_tokens = match (f.max_completion_tokens, f.max_tokens) {
        (Some(0), _) => return Err(ApiError::invalid("max_completion_tokens", "`max_completion_tokens` must be at least 1")),
        (None, Some(0)) => return Err(ApiError::invalid("max_tokens", "`max_tokens` must be at least 1")),
        (Some(m), _) | (None, Some(m)) => Some(m as usize),
        (None, None) => None,
    };
    let n = f.n.unwrap_or(1);
    if n == 0 || n > MAX_N {
        return Err(ApiError::invalid("n", format!("`n` must be between 1 and {MAX_N}, got {n}")));
    }
    let stop = f.stop.clone().map(|s| s.into_vec()).unwrap_or_default();
    if stop.len() > MAX_STOPS {
        return Err(ApiError::invalid("stop", format!("at most {MAX_STOPS} stop sequences, got {}", stop.len())));
    }
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid("stop", "stop sequences must not be empty"));
    }
    if let Some(k) = logprobs
        && k > MAX_TOP_LOGPROBS {
            return Err(ApiError::invalid("top_logprobs", format!("at most {MAX_TOP_LOGPROBS} alternatives, got {k}")));
        }
    let stream = f.stream.unwrap_or(false);
    if f.stream_options.is_some() && !stream {
        return Err(ApiError::invalid("stream_options", "`stream_options` is only allowed when `stream` is true"));
    }
    Ok(Generation {
        sampling: SamplingParams {
            temperature,
            top_p,
            top_k,
            min_p,
            seed: f.seed.map(|s| s as u64),
            presence_penalty,
            frequency_penalty,
            repetition_penalty,
            logprobs: logprobs.map(|k| k as usize),
        },
        max_tokens,
        n,
        stop,
        stream,
        include_usage: f.stream_options.as_ref().is_some_and(|o| o.include_usage),
        ignore_eos: f.ignore_eos.unwrap_or(false),
    })
}

impl Generation {
    /// The engine requests for the `n` choices of one prompt; choice `i` samples with
    /// `seed + i`, so a seeded request is reproducible and its choices still differ.
    pub fn choices(
        &self,
        request_id: &str,
        first_index: usize,
        prompt: &[u32],
        max_tokens: usize,
        namespace: &[u8],
    ) -> Vec<GenerateRequest> {
        (0..self.n as usize)
            .map(|i| {
                let mut sampling = self.sampling.clone();
                sampling.seed = sampling.seed.map(|s| s.wrapping_add(i as u64));
                GenerateRequest {
                    request_id: format!("{request_id}/{}", first_index + i),
                    prompt: prompt.to_vec(),
                    max_tokens,
                    sampling,
                    stop: self.stop.clone(),
                    ignore_eos: self.ignore_eos,
                    // Server-chosen (tenant or default), never from the request body.
                    cache_salt: namespace.to_vec(),
                }
            })
            .collect()
    }
}

/// Tokens to generate for a prompt: the request's limit, checked against the window, or
/// whatever room the window leaves.
pub fn resolve_max_tokens(prompt_tokens: usize, requested: Option<usize>, context: usize) -> Result<usize, ApiError> {
    match requested {
        Some(m) if prompt_tokens + m > context => Err(ApiError::context_length(format!(
            "This model's maximum context length is {context} tokens. However, you requested {} tokens ({prompt_tokens} in the messages, {m} in the completion). Please reduce the length of the messages or completion.",
            prompt_tokens + m
        ))),
        Some(m) => Ok(m),
        None if prompt_tokens >= context => Err(ApiError::context_length(format!(
            "This model's maximum context length is {context} tokens. However, your messages resulted in {prompt_tokens} tokens, leaving no room for the completion. Please reduce the length of the messages."
        ))),
        None => Ok(context - prompt_tokens),
    }
}
