//! `POST /v1/completions` (legacy text completions).

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::{IntoResponse, Response};
use sluice_engine::{EngineHandle, Event, Logprobs};
use sluice_protocol::{CompletionChoice, CompletionLogprobs, CompletionRequest, CompletionResponse, Usage};

use crate::AppState;
use crate::error::ApiError;
use crate::generate::{self, StreamRenderer};
use crate::params::{self, parse_body};

/// Appends one token to legacy-format log-probabilities.
fn push_logprob(out: &mut CompletionLogprobs, engine: &EngineHandle, id: u32, lp: &Logprobs, offset: u32) {
    let tok = &engine.model.tokenizer;
    let text = |t: u32| String::from_utf8_lossy(tok.token_bytes(t, true)).into_owned();
    out.tokens.push(text(id));
    out.token_logprobs.push(lp.chosen);
    out.top_logprobs.push(lp.top.iter().map(|&(t, l)| (text(t), l)).collect::<BTreeMap<_, _>>());
    out.text_offset.push(offset);
}

/// Handles a text completion, streamed or not.
pub async fn completions(
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
    let req: CompletionRequest = parse_body(&body)?;
    let served = state.model(&req.model)?;
    let settings = params::validate(&req.sampling, req.logprobs)?;
    let model = &served.engine.model;
    let prompts = req.prompt.clone().into_vec();
    if prompts.is_empty() {
        return Err(ApiError::invalid("prompt", "`prompt` must not be an empty list"));
    }
    let echo = req.echo.unwrap_or(false);
    let id = generate::request_id("cmpl");
    let mut reqs = Vec::new();
    let mut prompt_tokens = 0u32;
    for p in &prompts {
        let ids = model.tokenizer.encode_prompt(p, true);
        if ids.is_empty() {
            return Err(ApiError::invalid("prompt", "`prompt` must not be empty"));
        }
        prompt_tokens += ids.len() as u32;
        let max_tokens = params::resolve_max_tokens(ids.len(), settings.max_tokens, model.model.cfg.context_length)
            .map_err(|e| ApiError { param: Some("prompt".into()), ..e })?;
        reqs.extend(settings.choices(&generate::log_id(headers, &id), reqs.len(), &ids, max_tokens, namespace));
    }
    let streams = generate::submit_all(&served.engine, reqs)?;
    let created = generate::unix_now();
    let n = settings.n as usize;
    let echo_text: Vec<String> = (0..streams.len()).map(|i| if echo { prompts[i / n].clone() } else { String::new() }).collect();
    if settings.stream {
        let renderer = CompletionStream {
            id: id.clone(),
            created,
            model: served.name.clone(),
            engine: served.engine.clone(),
            include_usage: settings.include_usage,
            per_prompt: n,
            want_logprobs: req.logprobs.is_some(),
            echo: echo_text.into_iter().map(Some).collect(),
            offsets: vec![0; streams.len()],
            usage: Usage { prompt_tokens, ..Default::default() },
        };
        let mut resp = generate::sse_response(streams, renderer);
        crate::set_request_id(&mut resp, &id);
        return Ok(resp);
    }
    let outputs = generate::collect_all(streams).await?;
    let mut usage = Usage { prompt_tokens, ..Default::default() };
    let choices = outputs
        .into_iter()
        .enumerate()
        .map(|(i, o)| {
            generate::add_usage(&mut usage, i, n, &o.usage);
            let logprobs = req.logprobs.map(|_| {
                let mut lp = CompletionLogprobs::default();
                let mut offset = echo_text[i].len() as u32;
                for (t, l) in &o.tokens {
                    if let Some(l) = l {
                        push_logprob(&mut lp, &served.engine, *t, l, offset);
                        offset += served.engine.model.tokenizer.token_bytes(*t, false).len() as u32;
                    }
                }
                lp
            });
            CompletionChoice {
                index: i as u32,
                text: format!("{}{}", echo_text[i], o.text),
                finish_reason: Some(generate::finish_label(o.finish)),
                logprobs,
            }
        })
        .collect();
    let usage = generate::final_usage(usage);
    let body = CompletionResponse {
        id: id.clone(),
        object: "text_completion".into(),
        created,
        model: served.name.clone(),
        choices,
        usage: Some(usage),
        system_fingerprint: crate::FINGERPRINT.into(),
    };
    let mut resp = axum::Json(body).into_response();
    crate::set_request_id(&mut resp, &id);
    Ok(resp)
}

struct CompletionStream {
    id: String,
    created: u64,
    model: String,
    engine: EngineHandle,
    include_usage: bool,
    per_prompt: usize,
    want_logprobs: bool,
    echo: Vec<Option<String>>,
    offsets: Vec<u32>,
    usage: Usage,
}

impl CompletionStream {
    fn chunk(&self, choices: Vec<CompletionChoice>, usage: Option<Usage>) -> String {
        serde_json::to_string(&CompletionResponse {
            id: self.id.clone(),
            object: "text_completion".into(),
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
            system_fingerprint: crate::FINGERPRINT.into(),
        })
        .unwrap_or_default()
    }
}

impl StreamRenderer for CompletionStream {
    fn event(&mut self, index: usize, ev: Event) -> Vec<String> {
        let prefix = self.echo[index].take().unwrap_or_default();
        match ev {
            Event::Token { id, text, logprobs } => {
                let lp = match (&logprobs, self.want_logprobs) {
                    (Some(l), true) => {
                        let mut out = CompletionLogprobs::default();
                        push_logprob(&mut out, &self.engine, id, l, self.offsets[index]);
                        Some(out)
                    }
                    _ => None,
                };
                self.offsets[index] += self.engine.model.tokenizer.token_bytes(id, false).len() as u32;
                let text = prefix + &text;
                if text.is_empty() && lp.is_none() {
                    return Vec::new();
                }
                vec![self.chunk(vec![CompletionChoice { index: index as u32, text, finish_reason: None, logprobs: lp }], None)]
            }
            Event::Done { finish, text, usage } => {
                generate::add_usage(&mut self.usage, index, self.per_prompt, &usage);
                let choice = CompletionChoice {
                    index: index as u32,
                    text: prefix + &text,
                    finish_reason: Some(generate::finish_label(finish)),
                    logprobs: None,
                };
                vec![self.chunk(vec![choice], None)]
            }
            Event::Error(e) => vec![generate::stream_error_payload(e)],
        }
    }

    fn finish(&mut self) -> Vec<String> {
        if !self.include_usage {
            return Vec::new();
        }
        vec![self.chunk(Vec::new(), Some(generate::final_usage(self.usage)))]
    }
}
