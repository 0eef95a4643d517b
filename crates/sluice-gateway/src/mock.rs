//! A deterministic OpenAI-compatible upstream for tests and benchmarks: it answers chat and
//! text completions with a fixed text of `max_tokens` words (`tok0 tok1 …`), and can be told
//! to be slow, to answer an error status, to cut its stream after k tokens, to fail every n-th
//! request, or to refuse prompts past a window. `start` returns once the socket listens (tests
//! never sleep waiting for it); `kill` closes the socket and every open connection at once,
//! like a crashed process.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// How the mock behaves; change it at any time with [`MockUpstream::set`].
#[derive(Debug, Clone, PartialEq)]
pub struct MockBehaviour {
    /// Status of every answer (200 answers normally; others answer an OpenAI error body).
    pub status: u16,
    /// `Retry-After` seconds on error answers.
    pub retry_after: Option<u32>,
    /// Delay before the response headers.
    pub latency: Duration,
    /// Delay before each streamed token.
    pub token_delay: Duration,
    /// Tokens when the request gives no `max_tokens`.
    pub default_tokens: u64,
    /// Break the connection after this many tokens (streams; whole responses are cut before
    /// their body).
    pub cut_after: Option<u64>,
    /// Answer 500 to every n-th request (counting from the first).
    pub fail_every: Option<u64>,
    /// Answer 400 `context_length_exceeded` past this many prompt tokens (bytes / 4).
    pub context_window: Option<u64>,
    /// Health endpoints (`/health`, `/ready`, `/v1/models`) answer 200; 503 when false.
    pub healthy: bool,
}

impl Default for MockBehaviour {
    fn default() -> Self {
        Self {
            status: 200,
            retry_after: None,
            latency: Duration::ZERO,
            token_delay: Duration::ZERO,
            default_tokens: 8,
            cut_after: None,
            fail_every: None,
            context_window: None,
            healthy: true,
        }
    }
}

#[derive(Debug)]
struct Shared {
    behaviour: Mutex<MockBehaviour>,
    requests: AtomicU64,
    open_streams: AtomicU64,
    name: String,
    last_body: Mutex<Option<Value>>,
}

/// Counts a streamed body while it is alive (dropped when the client goes away or it ends).
struct OpenStream(Arc<Shared>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.open_streams.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A running mock upstream.
#[derive(Debug)]
pub struct MockUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl MockUpstream {
    /// Listens on a free loopback port; `name` appears in its answers' `model` field and ids.
    pub async fn start(name: &str, behaviour: MockBehaviour) -> std::io::Result<Self> {
        Self::start_on(name, behaviour, "127.0.0.1:0".parse().map_err(std::io::Error::other)?).await
    }

    /// Listens on `addr`.
    pub async fn start_on(name: &str, behaviour: MockBehaviour, addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared { behaviour: Mutex::new(behaviour), requests: AtomicU64::new(0), open_streams: AtomicU64::new(0), name: name.into(), last_body: Mutex::new(None) });
        let router = Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/completions", post(completions))
            .route("/v1/models", get(models))
            .route("/health", get(health))
            .route("/ready", get(health))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let _ = stream.set_nodelay(true);
                        let svc = TowerToHyperService::new(router.clone());
                        conns.spawn(async move {
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        Ok(Self { addr, shared, task })
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its API root, `http://127.0.0.1:PORT/v1`.
    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Replaces the behaviour for the requests that follow.
    pub fn set(&self, b: MockBehaviour) {
        if let Ok(mut cur) = self.shared.behaviour.lock() {
            *cur = b;
        }
    }

    /// Requests received so far.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// The body of the last completion request received.
    pub fn last_body(&self) -> Option<Value> {
        self.shared.last_body.lock().ok().and_then(|b| b.clone())
    }

    /// Streamed responses still being sent.
    pub fn open_streams(&self) -> u64 {
        self.shared.open_streams.load(Ordering::Relaxed)
    }

    /// Stops listening and drops every open connection.
    pub fn kill(&self) {
        self.task.abort();
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn healthy(s: &Shared) -> bool {
    s.behaviour.lock().map(|b| b.healthy).unwrap_or(false)
}

async fn health(State(s): State<Arc<Shared>>) -> Response {
    if healthy(&s) { "ok".into_response() } else { StatusCode::SERVICE_UNAVAILABLE.into_response() }
}

async fn models(State(s): State<Arc<Shared>>) -> Response {
    if !healthy(&s) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    axum::Json(json!({"object": "list", "data": [{"id": s.name, "object": "model", "created": 0, "owned_by": "mock"}]})).into_response()
}

async fn chat(State(s): State<Arc<Shared>>, body: Bytes) -> Response {
    answer(s, body, true).await
}

async fn completions(State(s): State<Arc<Shared>>, body: Bytes) -> Response {
    answer(s, body, false).await
}

fn error(status: u16, message: &str, code: &str, retry_after: Option<u32>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let kind = if status.is_client_error() { "invalid_request_error" } else { "server_error" };
    let mut resp =
        (status, axum::Json(json!({"error": {"message": message, "type": kind, "param": null, "code": code}}))).into_response();
    if let Some(s) = retry_after {
        resp.headers_mut().insert(header::RETRY_AFTER, s.into());
    }
    resp
}

fn prompt_bytes(req: &Value) -> u64 {
    let mut n = 0;
    if let Some(msgs) = req.get("messages").and_then(Value::as_array) {
        n += msgs.iter().filter_map(|m| m.get("content").and_then(Value::as_str)).map(str::len).sum::<usize>();
    }
    if let Some(p) = req.get("prompt").and_then(Value::as_str) {
        n += p.len();
    }
    n as u64
}

async fn answer(s: Arc<Shared>, body: Bytes, chat: bool) -> Response {
    let n = s.requests.fetch_add(1, Ordering::Relaxed) + 1;
    let b = s.behaviour.lock().map(|b| b.clone()).unwrap_or_default();
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return error(400, "The request body is not valid JSON", "invalid_json", None);
    };
    if let Ok(mut last) = s.last_body.lock() {
        *last = Some(req.clone());
    }
    if !b.latency.is_zero() {
        tokio::time::sleep(b.latency).await;
    }
    if b.status != 200 {
        return error(b.status, &format!("mock {} answers {}", s.name, b.status), "mock_status", b.retry_after);
    }
    if b.fail_every.is_some_and(|k| k > 0 && n.is_multiple_of(k)) {
        return error(500, &format!("mock {} fails request {n}", s.name), "mock_flaky", None);
    }
    let prompt_tokens = prompt_bytes(&req).div_ceil(4);
    if b.context_window.is_some_and(|w| prompt_tokens > w) {
        return error(400, "This model's maximum context length is exceeded", "context_length_exceeded", None);
    }
    let tokens = req
        .get("max_completion_tokens")
        .or_else(|| req.get("max_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(b.default_tokens);
    let model = req.get("model").and_then(Value::as_str).unwrap_or("mock").to_string();
    let id = format!("{}-{n}", s.name);
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": tokens, "total_tokens": prompt_tokens + tokens});
    if !stream {
        if b.cut_after.is_some() {
            let broken = futures_util::stream::once(async { Err::<Bytes, _>(std::io::Error::other("cut")) });
            return Response::new(Body::from_stream(broken));
        }
        let text: String = (0..tokens).map(|i| format!("tok{i} ")).collect();
        let choice = if chat {
            json!({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"})
        } else {
            json!({"index": 0, "text": text, "finish_reason": "length"})
        };
        let object = if chat { "chat.completion" } else { "text_completion" };
        return axum::Json(json!({"id": id, "object": object, "created": 0, "model": model, "choices": [choice], "usage": usage}))
            .into_response();
    }
    let include_usage = req.get("stream_options").and_then(|o| o.get("include_usage")).and_then(Value::as_bool).unwrap_or(false);
    let object = if chat { "chat.completion.chunk" } else { "text_completion" };
    let chunk = move |choice: Value, usage: Option<Value>| {
        let mut c = json!({"id": id, "object": object, "created": 0, "model": model, "choices": choice});
        if let Some(u) = usage {
            c["usage"] = u;
        }
        Ok::<_, std::io::Error>(Bytes::from(format!("data: {c}\n\n")))
    };
    let mut events = Vec::new();
    if chat {
        events.push(chunk(json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]), None));
    }
    for i in 0..tokens {
        if b.cut_after == Some(i) {
            events.push(Err(std::io::Error::other("cut")));
            break;
        }
        let text = format!("tok{i} ");
        let choice = if chat {
            json!([{"index": 0, "delta": {"content": text}, "finish_reason": null}])
        } else {
            json!([{"index": 0, "text": text, "finish_reason": null}])
        };
        events.push(chunk(choice, None));
    }
    if b.cut_after.is_none_or(|k| k >= tokens) {
        let last = if chat {
            json!([{"index": 0, "delta": {}, "finish_reason": "length"}])
        } else {
            json!([{"index": 0, "text": "", "finish_reason": "length"}])
        };
        events.push(chunk(last, None));
        if include_usage {
            events.push(chunk(json!([]), Some(usage)));
        }
        events.push(Ok(Bytes::from_static(b"data: [DONE]\n\n")));
    }
    let delay = b.token_delay;
    s.open_streams.fetch_add(1, Ordering::Relaxed);
    let open = OpenStream(s.clone());
    let body = futures_util::stream::iter(events)
        .then(move |e| async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if e.is_err() {
                // Let the tokens already written reach the client before the connection drops.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            e
        })
        .map(move |e| {
            let _alive = &open;
            e
        });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}
