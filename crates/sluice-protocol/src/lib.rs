//! OpenAI-compatible wire types: requests, responses, stream chunks and error bodies.
//! Serde only; validation of values lives with the server, which knows the model's limits.

use serde::{Deserialize, Serialize};

/// A string or a list of strings (`stop`, `prompt`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum StringOrList {
    /// One string.
    One(String),
    /// Several strings.
    Many(Vec<String>),
}

impl StringOrList {
    /// The strings as a list.
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    /// Send a final chunk with usage.
    #[serde(default)]
    pub include_usage: bool,
}

/// One part of a multi-part message content.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ContentPart {
    /// Part type; only `text` is supported.
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a `text` part.
    #[serde(default)]
    pub text: Option<String>,
}

/// Message content: a string or a list of parts.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum MessageContent {
    /// Plain text.
    Text(String),
    /// Parts (text only).
    Parts(Vec<ContentPart>),
}

/// A chat message in a request.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct RequestMessage {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    pub role: String,
    /// Content; may be null for assistant messages.
    #[serde(default)]
    pub content: Option<MessageContent>,
    /// Optional participant name (accepted, not used by templates).
    #[serde(default)]
    pub name: Option<String>,
}

/// Sampling and output parameters shared by chat and completions.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct SamplingFields {
    /// Maximum tokens to generate.
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// Newer name for `max_tokens` (chat).
    #[serde(default)]
    pub max_completion_tokens: Option<u32>,
    /// Softmax temperature; 0 means greedy.
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Nucleus sampling mass.
    #[serde(default)]
    pub top_p: Option<f32>,
    /// Keep only the k most likely tokens (0 or -1: off).
    #[serde(default)]
    pub top_k: Option<i32>,
    /// Drop tokens below this fraction of the top token's probability.
    #[serde(default)]
    pub min_p: Option<f32>,
    /// Seed for reproducible sampling.
    #[serde(default)]
    pub seed: Option<i64>,
    /// Stop sequences.
    #[serde(default)]
    pub stop: Option<StringOrList>,
    /// OpenAI presence penalty.
    #[serde(default)]
    pub presence_penalty: Option<f32>,
    /// OpenAI frequency penalty.
    #[serde(default)]
    pub frequency_penalty: Option<f32>,
    /// Multiplicative repetition penalty (1 = off).
    #[serde(default)]
    pub repetition_penalty: Option<f32>,
    /// Number of choices.
    #[serde(default)]
    pub n: Option<u32>,
    /// Stream the response as server-sent events.
    #[serde(default)]
    pub stream: Option<bool>,
    /// Streaming options.
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// End-user identifier (recorded, not used for sampling).
    #[serde(default)]
    pub user: Option<String>,
    /// Keep generating past end-of-sequence tokens (benchmarks).
    #[serde(default)]
    pub ignore_eos: Option<bool>,
}

/// `POST /v1/chat/completions` body.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ChatCompletionRequest {
    /// Model name.
    pub model: String,
    /// Conversation.
    pub messages: Vec<RequestMessage>,
    /// Return log-probabilities of the chosen tokens.
    #[serde(default)]
    pub logprobs: Option<bool>,
    /// How many alternatives per position (requires `logprobs`).
    #[serde(default)]
    pub top_logprobs: Option<u32>,
    /// Shared sampling fields.
    #[serde(flatten)]
    pub sampling: SamplingFields,
}

/// `POST /v1/completions` body.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct CompletionRequest {
    /// Model name.
    pub model: String,
    /// Prompt text (a string, or a list of strings: one choice set per prompt).
    pub prompt: StringOrList,
    /// Legacy logprobs: number of alternatives per position.
    #[serde(default)]
    pub logprobs: Option<u32>,
    /// Echo the prompt before the completion.
    #[serde(default)]
    pub echo: Option<bool>,
    /// Shared sampling fields.
    #[serde(flatten)]
    pub sampling: SamplingFields,
}

/// Token counts of a request.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Usage {
    /// Tokens in the prompt.
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub completion_tokens: u32,
    /// Sum of both.
    pub total_tokens: u32,
    /// Prompt tokens served from the prefix cache (OpenAI's field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
    /// Sluice engines: engine time attributable to this request — its share of every batched
    /// step it took part in, in seconds (what an hourly-priced engine charges for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_seconds: Option<f64>,
}

/// Details of prompt tokens.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PromptTokensDetails {
    /// Tokens found in the prefix cache.
    pub cached_tokens: u32,
}

impl Usage {
    /// Counts with their total.
    pub fn new(prompt_tokens: u32, completion_tokens: u32) -> Self {
        Self { prompt_tokens, completion_tokens, total_tokens: prompt_tokens + completion_tokens, ..Default::default() }
    }

    /// With an engine's cached prompt tokens and compute time.
    pub fn with_engine(self, cached_tokens: u32, compute_seconds: f64) -> Self {
        Self {
            prompt_tokens_details: Some(PromptTokensDetails { cached_tokens }),
            compute_seconds: Some(compute_seconds),
            ..self
        }
    }
}

/// One alternative in `top_logprobs`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TopLogprob {
    /// Token text.
    pub token: String,
    /// Log-probability.
    pub logprob: f32,
    /// UTF-8 bytes of the token.
    pub bytes: Vec<u8>,
}

/// Log-probability information of one generated token (chat format).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenLogprob {
    /// Token text.
    pub token: String,
    /// Log-probability.
    pub logprob: f32,
    /// UTF-8 bytes of the token.
    pub bytes: Vec<u8>,
    /// Most likely alternatives.
    pub top_logprobs: Vec<TopLogprob>,
}

/// `logprobs` object of a chat choice.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChoiceLogprobs {
    /// One entry per generated token.
    pub content: Vec<TokenLogprob>,
}

/// Assistant message in a response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResponseMessage {
    /// Always `assistant`.
    pub role: String,
    /// Generated text.
    pub content: String,
}

/// A chat choice.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatChoice {
    /// Choice index.
    pub index: u32,
    /// The message.
    pub message: ResponseMessage,
    /// `stop` or `length`.
    pub finish_reason: Option<String>,
    /// Token log-probabilities, when asked for.
    pub logprobs: Option<ChoiceLogprobs>,
}

/// `chat.completion` response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatCompletionResponse {
    /// Request id.
    pub id: String,
    /// `chat.completion`.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    /// Model name.
    pub model: String,
    /// Choices.
    pub choices: Vec<ChatChoice>,
    /// Token counts.
    pub usage: Usage,
    /// Backend fingerprint.
    pub system_fingerprint: String,
}

/// Delta of a streamed chat chunk.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ChatDelta {
    /// Set on the first chunk of a choice.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// New text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// A streamed chat choice.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatChunkChoice {
    /// Choice index.
    pub index: u32,
    /// New content.
    pub delta: ChatDelta,
    /// Set on the last chunk of the choice.
    pub finish_reason: Option<String>,
    /// Log-probabilities of this chunk's tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<ChoiceLogprobs>,
}

/// `chat.completion.chunk`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatCompletionChunk {
    /// Request id (same for every chunk).
    pub id: String,
    /// `chat.completion.chunk`.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    /// Model name.
    pub model: String,
    /// Choices in this chunk (empty in the final usage chunk).
    pub choices: Vec<ChatChunkChoice>,
    /// Usage, only in the final chunk when `include_usage` is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Backend fingerprint.
    pub system_fingerprint: String,
}

/// Legacy completions log-probabilities.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CompletionLogprobs {
    /// Token texts.
    pub tokens: Vec<String>,
    /// Their log-probabilities.
    pub token_logprobs: Vec<f32>,
    /// Alternatives per position.
    pub top_logprobs: Vec<std::collections::BTreeMap<String, f32>>,
    /// Character offsets of each token in the text.
    pub text_offset: Vec<u32>,
}

/// A completion choice (also used for stream chunks).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompletionChoice {
    /// Choice index.
    pub index: u32,
    /// Generated text (or this chunk's part of it).
    pub text: String,
    /// `stop` or `length` (null until the end in streams).
    pub finish_reason: Option<String>,
    /// Log-probabilities, when asked for.
    pub logprobs: Option<CompletionLogprobs>,
}

/// `text_completion` response or chunk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompletionResponse {
    /// Request id.
    pub id: String,
    /// `text_completion`.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    /// Model name.
    pub model: String,
    /// Choices.
    pub choices: Vec<CompletionChoice>,
    /// Token counts (non-streamed, or the final chunk with `include_usage`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Backend fingerprint.
    pub system_fingerprint: String,
}

/// One entry of `GET /v1/models`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelCard {
    /// Model name.
    pub id: String,
    /// `model`.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    /// Owner label.
    pub owned_by: String,
    /// Context window (an extension, as vLLM reports `max_model_len`).
    pub max_model_len: u32,
}

/// `GET /v1/models` response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelList {
    /// `list`.
    pub object: String,
    /// The models.
    pub data: Vec<ModelCard>,
}

/// The error object inside an error body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Human-readable message.
    pub message: String,
    /// Category, e.g. `invalid_request_error`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The offending parameter, if any.
    pub param: Option<String>,
    /// Machine-readable code, e.g. `context_length_exceeded`.
    pub code: Option<String>,
}

/// OpenAI error body: `{"error": {...}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// `input` of an embeddings request: text(s) or token ids.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum EmbeddingInput {
    /// One text.
    One(String),
    /// Several texts.
    Many(Vec<String>),
    /// One input as token ids.
    Tokens(Vec<u32>),
    /// Several inputs as token ids.
    ManyTokens(Vec<Vec<u32>>),
}

/// `POST /v1/embeddings` body.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingRequest {
    /// Model name.
    pub model: String,
    /// What to embed.
    pub input: EmbeddingInput,
    /// `float` (default) or `base64` (little-endian f32 bytes).
    #[serde(default)]
    pub encoding_format: Option<String>,
    /// Output dimensions; only the model's own is accepted.
    #[serde(default)]
    pub dimensions: Option<u32>,
    /// End-user id (accepted, unused).
    #[serde(default)]
    pub user: Option<String>,
    /// Sluice extension: cut inputs longer than the model takes instead of refusing them.
    #[serde(default)]
    pub truncate: Option<bool>,
}

/// One vector as sent: floats, or base64 of little-endian f32.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum EmbeddingVector {
    /// `encoding_format: float`.
    Float(Vec<f32>),
    /// `encoding_format: base64`.
    Base64(String),
}

/// One entry of an embeddings response.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct EmbeddingData {
    /// Always `embedding`.
    pub object: String,
    /// Position of the input.
    pub index: u32,
    /// The vector.
    pub embedding: EmbeddingVector,
}

/// Token counts of an embeddings request.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct EmbeddingUsage {
    /// Tokens read.
    pub prompt_tokens: u32,
    /// Same as `prompt_tokens`.
    pub total_tokens: u32,
}

/// `POST /v1/embeddings` response.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct EmbeddingResponse {
    /// Always `list`.
    pub object: String,
    /// One entry per input, in order.
    pub data: Vec<EmbeddingData>,
    /// Model name.
    pub model: String,
    /// Tokens.
    pub usage: EmbeddingUsage,
}
