//! `POST /v1/chat/completions`.

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::{IntoResponse, Response};
use sluice_engine::{Event, Logprobs};
use sluice_model::{ChatMessage, Tokenizer};
use sluice_protocol::{
    ChatChoice, ChatChunkChoice, ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse, ChatDelta,
    ChoiceLogprobs, MessageContent, ResponseMessage, TokenLogprob, TopLogprob, Usage,
};

use crate::AppState;
use crate::error::ApiError;
use crate::generate::{self, StreamRenderer};
use crate::params::{self, parse_body};

/// Converts request messages to template messages, rejecting what we cannot render.
fn messages(req: &ChatCompletionRequest) -> Result<Vec<ChatMessage>, ApiError> {
    if req.messages.is_empty() {
        return Err(ApiError::invalid("messages", "`messages` must contain at least one message"));
    }
    req.messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let role = match m.role.as_str() {
                "developer" => "system",
                r @ ("system" | "user" | "assistant" | "tool") => r,
                other => {
                    return Err(ApiError::invalid(
                        format!("messages[{i}].role"),
                        format!("unknown role {other:?} (expected system, developer, user, assistant or tool)"),
                    ));
                }
            };
            let content = match &m.content {
                None if role == "assistant" => String::new(),
                None => return Err(ApiError::invalid(format!("messages[{i}].content"), "content is required")),
                Some(MessageContent::Text(t)) => t.clone(),
                Some(MessageContent::Parts(parts)) => {
                    let mut s = String::new();
                    for (j, p) in parts.iter().enumerate() {
                        match (p.kind.as_str(), &p.text) {
                            ("text", Some(t)) => s.push_str(t),
                            _ => {
                                return Err(ApiError::invalid(
                                    format!("messages[{i}].content[{j}]"),
                                    "only text content parts are supported by this model",
                                ));
                            }
                        }
                    }
                    s
                }
            };
            Ok(ChatMessage { role: role.to_string(), content })
        })
        .collect()
}

/// Chat-format log-probabilities of one token.
pub fn token_logprob(tok: &Tokenizer, id: u32, lp: &Logprobs) -> TokenLogprob {
    let text = |id: u32| {
        let b = tok.token_bytes(id, true).to_vec();
        (String::from_utf8_lossy(&b).into_owned(), b)
    };
    let (token, bytes) = text(id);
    TokenLogprob {
        token,
        logprob: lp.chosen,
        bytes,
        top_logprobs: lp
            .top
            .iter()
            .map(|&(t, l)| {
                let (token, bytes) = text(t);
                TopLogprob { token, logprob: l, bytes }
            })
            .collect(),
    }
}

/// Handles a chat completion, streamed or not.
pub async fn chat_completions(
    State(state): State<AppState>,
    principal: Option<axum::Extension<sluice_govern::Principal>>,
    headers: axum::http::HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let namespace = state.cache_namespace(principal.as_deref(), &headers);
    match run(state, &headers, &namespace, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn run(
    state: AppState,
    headers: &axum::http::HeaderMap,
    namespace: &[u8],
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = params::read_body(body)?;
    let req: ChatCompletionRequest = parse_body(&body)?;
    let served = state.model(&req.model)?;
    let lp_k = match (req.logprobs, req.top_logprobs) {
        (Some(true), k) => Some(k.unwrap_or(0)),
        (_, Some(_)) => return Err(ApiError::invalid("top_logprobs", "`top_logprobs` requires `logprobs: true`")),
        _ => None,
    };
    let settings = params::validate(&req.sampling, lp_k)?;
    let model = &served.engine.model;
    let template = model.chat_template.as_ref().ok_or_else(|| {
        ApiError::bad_request(format!(
            "The model `{}` has no chat template; use /v1/completions with a raw prompt",
            served.name
        ))
    })?;
    let text = template.render(&messages(&req)?, true).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let prompt = model.tokenizer.encode_prompt(&text, true);
    let max_tokens = params::resolve_max_tokens(prompt.len(), settings.max_tokens, model.model.cfg.context_length)?;
    let id = generate::request_id("chatcmpl");
    let reqs = settings.choices(&generate::log_id(headers, &id), 0, &prompt, max_tokens, namespace);
    let streams = generate::submit_all(&served.engine, reqs)?;
    let created = generate::unix_now();
    let want_logprobs = lp_k.is_some();
    if settings.stream {
        let renderer = ChatStream {
            id: id.clone(),
            created,
            model: served.name.clone(),
            engine: served.engine.clone(),
            include_usage: settings.include_usage,
            per_prompt: settings.n as usize,
            want_logprobs,
            started: vec![false; settings.n as usize],
            usage: Usage { prompt_tokens: prompt.len() as u32, ..Default::default() },
        };
        let mut resp = generate::sse_response(streams, renderer);
        crate::set_request_id(&mut resp, &id);
        return Ok(resp);
    }
    let outputs = generate::collect_all(streams).await?;
    let tok = &model.tokenizer;
    let mut usage = Usage { prompt_tokens: prompt.len() as u32, ..Default::default() };
    let choices = outputs
        .into_iter()
        .enumerate()
        .map(|(i, o)| {
            generate::add_usage(&mut usage, i, settings.n as usize, &o.usage);
            ChatChoice {
                index: i as u32,
                message: ResponseMessage { role: "assistant".into(), content: o.text },
                finish_reason: Some(generate::finish_label(o.finish)),
                logprobs: want_logprobs.then(|| ChoiceLogprobs {
                    content: o
                        .tokens
                        .iter()
                        .filter_map(|(t, lp)| lp.as_ref().map(|lp| token_logprob(tok, *t, lp)))
                        .collect(),
                }),
            }
        })
        .collect();
    let usage = generate::final_usage(usage);
    let body = ChatCompletionResponse {
        id: id.clone(),
        object: "chat.completion".into(),
        created,
        model: served.name.clone(),
        choices,
        usage,
        system_fingerprint: crate::FINGERPRINT.into(),
    };
    let mut resp = axum::Json(body).into_response();
    crate::set_request_id(&mut resp, &id);
    Ok(resp)
}

struct ChatStream {
    id: String,
    created: u64,
    model: String,
    engine: sluice_engine::EngineHandle,
    include_usage: bool,
    per_prompt: usize,
    want_logprobs: bool,
    started: Vec<bool>,
    usage: Usage,
}

impl ChatStream {
    fn chunk(&self, choices: Vec<ChatChunkChoice>, usage: Option<Usage>) -> String {
        serde_json::to_string(&ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".into(),
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
            system_fingerprint: crate::FINGERPRINT.into(),
        })
        .unwrap_or_default()
    }

    fn delta(&self, index: usize, content: Option<String>, finish: Option<String>, lp: Option<ChoiceLogprobs>) -> String {
        let role = (!self.started[index]).then(|| "assistant".to_string());
        self.chunk(
            vec![ChatChunkChoice { index: index as u32, delta: ChatDelta { role, content }, finish_reason: finish, logprobs: lp }],
            None,
        )
    }
}

impl StreamRenderer for ChatStream {
    fn event(&mut self, index: usize, ev: Event) -> Vec<String> {
        let mut out = Vec::new();
        match ev {
            Event::Token { id, text, logprobs } => {
                let lp = match (&logprobs, self.want_logprobs) {
                    (Some(lp), true) => Some(ChoiceLogprobs {
                        content: vec![token_logprob(&self.engine.model.tokenizer, id, lp)],
                    }),
                    _ => None,
                };
                if !text.is_empty() || lp.is_some() || !self.started[index] {
                    out.push(self.delta(index, Some(text), None, lp));
                    self.started[index] = true;
                }
            }
            Event::Done { finish, text, usage } => {
                generate::add_usage(&mut self.usage, index, self.per_prompt, &usage);
                if !text.is_empty() {
                    out.push(self.delta(index, Some(text), None, None));
                    self.started[index] = true;
                }
                out.push(self.delta(index, None, Some(generate::finish_label(finish)), None));
                self.started[index] = true;
            }
            Event::Error(e) => out.push(generate::stream_error_payload(e)),
        }
        out
    }

    fn finish(&mut self) -> Vec<String> {
        if !self.include_usage {
            return Vec::new();
        }
        vec![self.chunk(Vec::new(), Some(generate::final_usage(self.usage)))]
    }
}
