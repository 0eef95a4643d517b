//! Running a request's choices on the engine: submitting them, collecting whole results, or
//! driving a server-sent-event stream whose drop cancels the engine work.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::response::IntoResponse;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::StreamExt;
use futures_util::stream::{BoxStream, select_all};
use sluice_engine::{EngineHandle, Event, FinishReason, GenerateRequest, Logprobs, RequestStream, RequestUsage};
use tokio_stream::wrappers::ReceiverStream;

use crate::error::ApiError;

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A process-unique request id with the given prefix.
pub fn request_id(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{:012x}{:06x}", nanos & 0xffff_ffff_ffff, n & 0xff_ffff)
}

/// The id the engine logs a request under: the caller's `x-request-id` (a gateway in front of
/// us) when it is a sane token, so both logs line up; otherwise the response's own id.
pub fn log_id(headers: &axum::http::HeaderMap, own: &str) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)))
        .map_or_else(|| own.to_string(), str::to_string)
}

/// Submits every choice; if any is refused the others are cancelled (their streams dropped).
pub fn submit_all(engine: &EngineHandle, reqs: Vec<GenerateRequest>) -> Result<Vec<RequestStream>, ApiError> {
    reqs.into_iter().map(|r| engine.submit(r).map_err(ApiError::from)).collect()
}

/// A finished choice.
#[derive(Debug, Clone)]
pub struct ChoiceOutput {
    /// Generated text (stop sequences removed).
    pub text: String,
    /// Why it ended.
    pub finish: FinishReason,
    /// Generated tokens and their log-probabilities.
    pub tokens: Vec<(u32, Option<Logprobs>)>,
    /// Counts and timings.
    pub usage: RequestUsage,
}

/// Waits for one choice to finish.
pub async fn collect(mut rs: RequestStream) -> Result<ChoiceOutput, ApiError> {
    let mut text = String::new();
    let mut tokens = Vec::new();
    while let Some(ev) = rs.next().await {
        match ev {
            Event::Token { id, text: t, logprobs } => {
                text.push_str(&t);
                tokens.push((id, logprobs));
            }
            Event::Done { finish, text: t, usage } => {
                text.push_str(&t);
                return Ok(ChoiceOutput { text, finish, tokens, usage });
            }
            Event::Error(e) => return Err(ApiError::from(e)),
        }
    }
    Err(ApiError::internal("the engine ended the request without a result"))
}

/// Waits for all choices.
pub async fn collect_all(streams: Vec<RequestStream>) -> Result<Vec<ChoiceOutput>, ApiError> {
    futures_util::future::try_join_all(streams.into_iter().map(collect)).await
}

fn events(index: usize, rs: RequestStream) -> BoxStream<'static, (usize, Event)> {
    futures_util::stream::unfold(rs, |mut rs| async move { rs.next().await.map(|e| (e, rs)) })
        .map(move |e| (index, e))
        .boxed()
}

/// Renders engine events of choice `index` as SSE `data:` payloads.
pub trait StreamRenderer: Send + 'static {
    /// Payloads for one event.
    fn event(&mut self, index: usize, ev: Event) -> Vec<String>;
    /// Payloads after every choice finished (e.g. the usage chunk).
    fn finish(&mut self) -> Vec<String>;
}

/// Streams the choices as server-sent events, ending with `[DONE]`. When the client goes away
/// the forwarding task ends and drops the engine streams, which cancels them.
pub fn sse_response(
    streams: Vec<RequestStream>,
    mut renderer: impl StreamRenderer,
) -> axum::response::Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<SseEvent, Infallible>>(64);
    tokio::spawn(async move {
        let mut merged = select_all(streams.into_iter().enumerate().map(|(i, s)| events(i, s)));
        loop {
            let next = tokio::select! {
                ev = merged.next() => ev,
                _ = tx.closed() => return,
            };
            let Some((index, ev)) = next else { break };
            for payload in renderer.event(index, ev) {
                if tx.send(Ok(SseEvent::default().data(payload))).await.is_err() {
                    return;
                }
            }
        }
        for payload in renderer.finish().into_iter().chain(["[DONE]".to_string()]) {
            if tx.send(Ok(SseEvent::default().data(payload))).await.is_err() {
                return;
            }
        }
    });
    Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::default()).into_response()
}

/// Adds a finished choice's engine usage to `acc` (choice `index`, `n` choices per prompt: the
/// prompt's cached tokens count once, from its first choice; compute time adds up).
pub fn add_usage(acc: &mut sluice_protocol::Usage, index: usize, n: usize, u: &RequestUsage) {
    acc.completion_tokens += u.completion_tokens as u32;
    acc.compute_seconds = Some(acc.compute_seconds.unwrap_or(0.0) + u.compute_time.as_secs_f64());
    let details = acc.prompt_tokens_details.get_or_insert_with(Default::default);
    if index.is_multiple_of(n.max(1)) {
        details.cached_tokens += u.cached_tokens as u32;
    }
}

/// The final usage: counts with their total.
pub fn final_usage(acc: sluice_protocol::Usage) -> sluice_protocol::Usage {
    sluice_protocol::Usage { total_tokens: acc.prompt_tokens + acc.completion_tokens, ..acc }
}

/// The error payload a stream carries when the engine fails mid-stream.
pub fn stream_error_payload(e: sluice_engine::EngineError) -> String {
    serde_json::to_string(&ApiError::from(e).body()).unwrap_or_default()
}

/// OpenAI's label for a finish reason (a cancelled choice only reaches a gone client).
pub fn finish_label(f: FinishReason) -> String {
    match f {
        FinishReason::Length => "length",
        FinishReason::Stop | FinishReason::Cancelled => "stop",
    }
    .to_string()
}
