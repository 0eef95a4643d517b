//! One attempt at one target, under that target's timeouts, and the forwarding of a committed
//! stream. A stream commits at its first generated token: anything that fails before is
//! retried elsewhere without the client noticing; a failure after ends the client's stream
//! with an error event that names the backend, and the usage so far is recorded.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::time::timeout;

use crate::backend::{Api, BodyStream, TransportError, UpstreamRequest};
use crate::sse::SseReader;
use crate::target::{AttemptGuard, Target};
use crate::ticket::{Ticket, UsageCount};

/// Largest non-streamed response body we read.
const MAX_BODY: usize = 32 << 20;

/// What the client gets from a successful attempt.
#[derive(Debug)]
pub enum Reply {
    /// A whole response (any status the backend chose that is not worth retrying).
    Complete {
        /// HTTP status.
        status: u16,
        /// JSON body.
        body: Bytes,
    },
    /// Server-sent-event payloads; the stream ends after `[DONE]` or an error event.
    Stream(mpsc::Receiver<String>),
}

/// Why an attempt failed.
#[derive(Debug, Clone)]
pub struct AttemptFailure {
    /// What happened.
    pub detail: String,
    /// Another attempt may succeed.
    pub retryable: bool,
    /// The backend asked us to wait.
    pub retry_after: Option<Duration>,
    /// It was a timeout.
    pub timed_out: bool,
    /// The prompt does not fit this backend: try a larger one.
    pub too_long: bool,
    /// The backend is busy (429, or 503 with Retry-After), not broken.
    pub overloaded: bool,
}

impl AttemptFailure {
    fn retry(detail: impl Into<String>) -> Self {
        Self { detail: detail.into(), retryable: true, retry_after: None, timed_out: false, too_long: false, overloaded: false }
    }

    fn timeout(what: &str, d: Duration) -> Self {
        Self { timed_out: true, ..Self::retry(format!("{what} timed out after {} ms", d.as_millis())) }
    }
}

/// Everything an attempt needs besides the target.
#[derive(Debug, Clone)]
pub struct AttemptInput {
    /// Endpoint.
    pub api: Api,
    /// Body with the target's model name.
    pub body: Bytes,
    /// Streaming request.
    pub stream: bool,
    /// The client asked for the usage chunk (we always ask upstream for it).
    pub client_wants_usage: bool,
    /// Our prompt estimate, used when the backend reports no usage.
    pub prompt_estimate: u64,
    /// The request id, sent upstream.
    pub request_id: String,
    /// The caller's prefix-cache namespace.
    pub cache_namespace: Option<String>,
}

#[derive(Deserialize)]
struct UsagePeek {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<CachedPeek>,
    #[serde(default)]
    compute_seconds: Option<f64>,
}

#[derive(Deserialize)]
struct CachedPeek {
    #[serde(default)]
    cached_tokens: u64,
}

#[derive(Deserialize)]
struct BodyPeek {
    usage: Option<UsagePeek>,
}

#[derive(Deserialize)]
struct ChoicePeek {
    #[serde(default)]
    delta: Option<DeltaPeek>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct DeltaPeek {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize)]
struct ChunkPeek {
    #[serde(default)]
    choices: Vec<ChoicePeek>,
    #[serde(default)]
    usage: Option<UsagePeek>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

/// What one streamed payload carries.
enum Payload {
    Done,
    /// An error event from the backend.
    Error(String),
    /// A chunk: tokens in it, whether it ends a choice, usage if it is the usage chunk, and
    /// its text.
    Chunk { tokens: u64, finishes: bool, usage: Option<UsageCount>, text: String },
    /// Not JSON we understand: forwarded as is.
    Other,
}

fn classify(p: &str) -> Payload {
    if p.trim() == "[DONE]" {
        return Payload::Done;
    }
    match serde_json::from_str::<ChunkPeek>(p) {
        Ok(c) if c.error.is_some() => Payload::Error(
            c.error
                .as_ref()
                .and_then(|e| e.get("message"))
                .and_then(|m| m.as_str())
                .unwrap_or("error event")
                .to_string(),
        ),
        Ok(c) => {
            let mut tokens = 0;
            let mut finishes = false;
            let mut all = String::new();
            for ch in &c.choices {
                let text = ch.delta.as_ref().and_then(|d| d.content.as_deref()).or(ch.text.as_deref());
                if let Some(t) = text.filter(|t| !t.is_empty()) {
                    tokens += 1;
                    all.push_str(t);
                }
                finishes |= ch.finish_reason.is_some();
            }
            let usage = c.usage.map(|u| UsageCount {
                prompt_tokens: u.prompt_tokens,
                cached_tokens: cached_tokens(&u),
                completion_tokens: u.completion_tokens,
                reported: true,
                compute_seconds: u.compute_seconds,
            });
            Payload::Chunk { tokens, finishes, usage, text: all }
        }
        Err(_) => Payload::Other,
    }
}

async fn read_all(mut body: BodyStream) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        if out.len() + chunk.len() > MAX_BODY {
            return Err(format!("response larger than {MAX_BODY} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

fn snippet(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(&body[..body.len().min(300)]);
    // Prefer the OpenAI error message when there is one.
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error")?.get("message")?.as_str().map(str::to_string))
        .unwrap_or_else(|| s.into_owned())
}

/// A non-2xx answer: retry, move on, or hand it to the client.
fn judge_status(guard: AttemptGuard, status: u16, retry_after: Option<Duration>, body: Vec<u8>) -> Result<Attempted, AttemptFailure> {
    let detail = format!("HTTP {status}: {}", snippet(&body));
    match status {
        _ if status == 429 || (status == 503 && retry_after.is_some()) => {
            // Alive but busy (rate limited, or a full queue that says when to come back): not a
            // breaker failure.
            guard.neutral();
            Err(AttemptFailure { retry_after, overloaded: true, ..AttemptFailure::retry(detail) })
        }
        408 | 500..=599 => {
            guard.fail();
            Err(AttemptFailure { retry_after, ..AttemptFailure::retry(detail) })
        }
        400 if String::from_utf8_lossy(&body).contains("context_length_exceeded") => {
            guard.neutral();
            Err(AttemptFailure { retryable: false, too_long: true, ..AttemptFailure::retry(detail) })
        }
        _ => {
            // The client's mistake (or the backend's final word): pass it through.
            guard.neutral();
            Ok(Attempted::Complete { status, body: Bytes::from(body), usage: None })
        }
    }
}

/// A stream that produced its first token: from here on it belongs to this backend.
#[derive(Debug)]
pub struct Committed {
    guard: AttemptGuard,
    sse: SseReader,
    held: Vec<String>,
    usage: UsageCount,
    start: Instant,
    client_wants_usage: bool,
    /// Text of the events held before the commit.
    first_text: String,
}

/// A successful attempt.
#[derive(Debug)]
pub enum Attempted {
    /// A whole response; usage when the body reported it.
    Complete {
        /// HTTP status.
        status: u16,
        /// JSON body.
        body: Bytes,
        /// Reported usage.
        usage: Option<UsageCount>,
    },
    /// A stream past its first token.
    Stream(Committed),
}

fn cached_tokens(u: &UsagePeek) -> u64 {
    u.prompt_tokens_details.as_ref().map_or(0, |d| d.cached_tokens)
}

/// Runs one attempt.
pub async fn attempt(guard: AttemptGuard, input: AttemptInput) -> Result<Attempted, AttemptFailure> {
    let target = guard.target().clone();
    let t = target.cfg.timeouts;
    let start = Instant::now();
    let req = UpstreamRequest {
        api: input.api,
        body: input.body.clone(),
        request_id: input.request_id.clone(),
        cache_namespace: input.cache_namespace.clone(),
    };
    let sent = timeout(t.first_token.min(t.total), target.backend.send(req)).await;
    let resp = match sent {
        Err(_) => {
            guard.fail();
            return Err(AttemptFailure::timeout("waiting for the response", t.first_token.min(t.total)));
        }
        Ok(Err(e)) => {
            guard.fail();
            let detail = match e {
                TransportError::Connect(m) | TransportError::Request(m) => m,
            };
            return Err(AttemptFailure::retry(detail));
        }
        Ok(Ok(r)) => r,
    };
    let rest = t.total.saturating_sub(start.elapsed());
    if !(200..300).contains(&resp.status) {
        let body = match timeout(rest, read_all(resp.body)).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                guard.fail();
                return Err(AttemptFailure::retry(format!("HTTP {} and the body broke: {e}", resp.status)));
            }
            Err(_) => {
                guard.fail();
                return Err(AttemptFailure::timeout("reading the error body", t.total));
            }
        };
        return judge_status(guard, resp.status, resp.retry_after, body);
    }
    if !input.stream {
        let body = match timeout(rest, read_all(resp.body)).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                guard.fail();
                return Err(AttemptFailure::retry(format!("the response body broke: {e}")));
            }
            Err(_) => {
                guard.fail();
                return Err(AttemptFailure::timeout("the response", t.total));
            }
        };
        let usage = serde_json::from_slice::<BodyPeek>(&body).ok().and_then(|b| b.usage).map(|u| UsageCount {
            prompt_tokens: u.prompt_tokens,
            cached_tokens: cached_tokens(&u),
            completion_tokens: u.completion_tokens,
            reported: true,
            compute_seconds: u.compute_seconds,
        });
        guard.succeed(start.elapsed());
        return Ok(Attempted::Complete { status: resp.status, body: Bytes::from(body), usage });
    }
    // Stream: read until the first token before committing to this backend.
    let mut sse = SseReader::new(resp.body);
    let mut held = Vec::new();
    let mut first_text = String::new();
    let mut usage = UsageCount { prompt_tokens: input.prompt_estimate, ..Default::default() };
    let first_deadline = start + t.first_token.min(t.total);
    loop {
        let left = first_deadline.saturating_duration_since(Instant::now());
        let next = match timeout(left, sse.next()).await {
            Err(_) => {
                guard.fail();
                return Err(AttemptFailure::timeout("the first token", t.first_token.min(t.total)));
            }
            Ok(n) => n,
        };
        let payload = match next {
            None => {
                guard.fail();
                return Err(AttemptFailure::retry("the stream ended before the first token"));
            }
            Some(Err(e)) => {
                guard.fail();
                return Err(AttemptFailure::retry(format!("the stream broke before the first token: {e}")));
            }
            Some(Ok(p)) => p,
        };
        match classify(&payload) {
            Payload::Error(m) => {
                guard.fail();
                return Err(AttemptFailure::retry(format!("error event before the first token: {m}")));
            }
            Payload::Done => {
                held.push(payload);
                break;
            }
            Payload::Chunk { tokens, finishes, usage: u, text } => {
                usage.completion_tokens += tokens;
                first_text.push_str(&text);
                if let Some(u) = u {
                    usage = u;
                    if !input.client_wants_usage {
                        continue;
                    }
                }
                held.push(payload);
                if tokens > 0 || finishes {
                    break;
                }
            }
            Payload::Other => held.push(payload),
        }
    }
    Ok(Attempted::Stream(Committed { guard, sse, held, usage, start, client_wants_usage: input.client_wants_usage, first_text }))
}

/// Forwards a committed stream to the client until `[DONE]`, a failure, or the client leaving;
/// the ticket settles when it ends.
pub fn spawn_forward(c: Committed, mut ticket: Ticket) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let Committed { guard, mut sse, held, mut usage, start, client_wants_usage, first_text } = c;
        let capture = ticket.captures();
        if capture {
            ticket.settled.response_text = Some(first_text);
        }
        let target: Arc<Target> = guard.target().clone();
        let t = target.cfg.timeouts;
        let deadline = start + t.total;
        let mut done = false;
        let mut counted_from_usage = usage.reported;
        for p in held {
            done |= p.trim() == "[DONE]";
            if tx.send(p).await.is_err() {
                drop(guard); // abandoned, not failed
                return ticket.finish("client_gone", 499, usage, None);
            }
        }
        let mut failure: Option<String> = None;
        let mut log_reason: Option<String> = None;
        while !done {
            let left = deadline.saturating_duration_since(Instant::now());
            let wait = t.idle.min(left);
            let next = tokio::select! {
                n = timeout(wait, sse.next()) => n,
                _ = tx.closed() => {
                    drop(guard);
                    return ticket.finish("client_gone", 499, usage, None);
                }
            };
            let payload = match next {
                Err(_) if left <= t.idle => {
                    failure = Some(format!("the total timeout of {} ms passed", t.total.as_millis()));
                    break;
                }
                Err(_) => {
                    failure = Some(format!("no event for {} ms (idle timeout)", t.idle.as_millis()));
                    break;
                }
                Ok(None) => {
                    failure = Some("the stream ended without [DONE]".into());
                    break;
                }
                Ok(Some(Err(e))) => {
                    failure = Some(format!("the stream broke: {e}"));
                    break;
                }
                Ok(Some(Ok(p))) => p,
            };
            match classify(&payload) {
                Payload::Done => done = true,
                Payload::Error(m) => {
                    // The client sees the backend's message; logs only that there was one.
                    failure = Some(format!("error event: {m}"));
                    log_reason = Some("the backend sent an error event".to_string());
                    break;
                }
                Payload::Chunk { tokens, usage: u, text, .. } => {
                    if !counted_from_usage {
                        usage.completion_tokens += tokens;
                    }
                    if capture && let Some(r) = ticket.settled.response_text.as_mut() {
                        r.push_str(&text);
                    }
                    if let Some(u) = u {
                        usage = u;
                        counted_from_usage = true;
                        if !client_wants_usage {
                            continue;
                        }
                    }
                }
                Payload::Other => {}
            }
            if tx.send(payload).await.is_err() {
                drop(guard);
                return ticket.finish("client_gone", 499, usage, None);
            }
        }
        match failure {
            None => {
                guard.succeed(ticket.settled.ttft.unwrap_or_default().min(start.elapsed()));
                ticket.finish("ok", 200, usage, None);
            }
            Some(why) => {
                guard.fail();
                let message =
                    format!("Backend `{}` failed mid-stream after {} tokens: {why}", target.name(), usage.completion_tokens);
                let event = serde_json::json!({
                    "error": { "message": message, "type": "server_error", "param": null, "code": "backend_stream_failed" }
                });
                let _ = tx.send(event.to_string()).await;
                let logged = log_reason.unwrap_or_else(|| why.clone());
                if let Some(a) = ticket.settled.attempts.last_mut() {
                    a.outcome = "stream_failed";
                    a.error = Some(logged.clone());
                }
                ticket.finish("stream_failed", 200, usage, Some(&format!("backend `{}` failed mid-stream: {logged}", target.name())));
            }
        }
    });
    rx
}

/// Jittered exponential backoff before retry `n` (1-based): `base × 2^(n-1)`, capped, times a
/// factor in [0.5, 1.5).
pub fn backoff(n: u32, base: Duration, max: Duration) -> Duration {
    use std::sync::atomic::AtomicU64;
    static STATE: AtomicU64 = AtomicU64::new(0x9e37_79b9_7f4a_7c15);
    let mut x = STATE.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
        ^ (Instant::now().elapsed().as_nanos() as u64);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    let unit = (x >> 11) as f64 / (1u64 << 53) as f64;
    let exp = base.saturating_mul(1u32 << (n.saturating_sub(1)).min(16)).min(max);
    exp.mul_f64(0.5 + unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let base = Duration::from_millis(20);
        let max = Duration::from_millis(100);
        for _ in 0..100 {
            let b1 = backoff(1, base, max);
            assert!(b1 >= Duration::from_millis(10) && b1 < Duration::from_millis(30), "{b1:?}");
            let b5 = backoff(5, base, max);
            assert!(b5 >= Duration::from_millis(50) && b5 < Duration::from_millis(150), "{b5:?}");
        }
        let distinct: std::collections::HashSet<_> = (0..20).map(|_| backoff(2, base, max)).collect();
        assert!(distinct.len() > 10, "jittered");
    }

    #[test]
    fn payloads_are_classified() {
        assert!(matches!(classify("[DONE]"), Payload::Done));
        assert!(matches!(classify(r#"{"error":{"message":"boom"}}"#), Payload::Error(m) if m == "boom"));
        assert!(matches!(
            classify(r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#),
            Payload::Chunk { tokens: 0, finishes: false, usage: None, .. }
        ));
        assert!(matches!(
            classify(r#"{"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}"#),
            Payload::Chunk { tokens: 1, finishes: false, .. }
        ));
        assert!(matches!(
            classify(r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}}"#),
            Payload::Chunk { usage: Some(UsageCount { prompt_tokens: 3, completion_tokens: 5, .. }), .. }
        ));
        assert!(matches!(classify(r#"{"choices":[{"text":"x","finish_reason":"length"}]}"#), Payload::Chunk { tokens: 1, finishes: true, .. }));
    }
}
