//! The gateway end to end: clients call `gateway_app` (no socket), backends are real — the
//! deterministic mock upstream and real engines, over loopback HTTP or in process.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sluice_engine::EngineConfig;
use sluice_gateway::mock::{MockBehaviour, MockUpstream};
use sluice_gateway::{Backend, Gateway, InProcessBackend};
use sluice_server::GatewayState;
use tower::ServiceExt;

use crate::{MODEL, Reply, state_with};

pub struct Fleet {
    pub app: Router,
    pub gateway: Arc<Gateway>,
}

pub fn fleet(toml: &str, in_process: HashMap<String, Arc<dyn Backend>>) -> Fleet {
    let cfg = sluice_gateway::config::parse("test.toml", toml, &|_| None).unwrap();
    let gateway = Arc::new(Gateway::new(&cfg, in_process).unwrap());
    Fleet { app: sluice_server::gateway_app(GatewayState::new(gateway.clone(), Vec::new())), gateway }
}

impl Fleet {
    pub async fn post(&self, path: &str, body: Value) -> Reply {
        let req = Request::builder()
            .method("POST")
            .uri(path)
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        Reply { status, headers, text: String::from_utf8_lossy(&bytes).into_owned() }
    }

    pub async fn get(&self, path: &str) -> Reply {
        let req = Request::builder().uri(path).body(Body::empty()).unwrap();
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        Reply { status, headers, text: String::from_utf8_lossy(&bytes).into_owned() }
    }

    pub fn target(&self, name: &str) -> &Arc<sluice_gateway::Target> {
        self.gateway.targets().iter().find(|t| t.name() == name).unwrap()
    }
}

pub fn header<'a>(r: &'a Reply, name: &str) -> &'a str {
    r.headers.get(name).map(|v| v.to_str().unwrap()).unwrap_or("")
}

pub fn chat(model: &str, max_tokens: u32) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "Name three colours."}], "max_tokens": max_tokens, "temperature": 0})
}

pub fn chat_stream(model: &str, max_tokens: u32, usage: bool) -> Value {
    let mut b = chat(model, max_tokens);
    b["stream"] = json!(true);
    if usage {
        b["stream_options"] = json!({"include_usage": true});
    }
    b
}

/// What every backend kind must do behind the gateway.
async fn conformance(f: &Fleet, backend: &str) {
    // Whole chat completion.
    let r = f.post("/v1/chat/completions", chat("m", 6)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(header(&r, "x-sluice-backend"), backend);
    assert_eq!(header(&r, "x-sluice-attempts"), "1");
    assert!(header(&r, "x-request-id").starts_with("req-"));
    let j = r.json();
    assert_eq!(j["object"], "chat.completion");
    assert!(!j["choices"][0]["message"]["content"].as_str().unwrap().is_empty());
    let completion = j["usage"]["completion_tokens"].as_u64().unwrap();
    assert!((1..=6).contains(&completion), "{j}");
    let t = f.target(backend);
    assert!(t.stats.completion_tokens.load(std::sync::atomic::Ordering::Relaxed) >= completion, "usage booked");

    // Stream without the usage chunk: the gateway asked for it upstream, the client must not see it.
    let r = f.post("/v1/chat/completions", chat_stream("m", 6, false)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let events = r.sse();
    assert_eq!(events.last().unwrap(), "[DONE]");
    let mut text = String::new();
    for e in &events[..events.len() - 1] {
        let c: Value = serde_json::from_str(e).unwrap();
        assert_eq!(c["object"], "chat.completion.chunk", "{e}");
        assert!(c.get("usage").is_none_or(Value::is_null), "no usage chunk unless asked: {e}");
        if let Some(s) = c["choices"][0]["delta"]["content"].as_str() {
            text.push_str(s);
        }
    }
    assert!(!text.is_empty());

    // Stream with the usage chunk.
    let r = f.post("/v1/chat/completions", chat_stream("m", 6, true)).await;
    let events = r.sse();
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert!(usage["choices"].as_array().unwrap().is_empty(), "{usage}");
    assert!((1..=6).contains(&usage["usage"]["completion_tokens"].as_u64().unwrap()), "{usage}");

    // Text completions, whole and streamed.
    let r = f.post("/v1/completions", json!({"model": "m", "prompt": "Once upon a time", "max_tokens": 4, "temperature": 0})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(!r.json()["choices"][0]["text"].as_str().unwrap().is_empty());
    let r = f.post("/v1/completions", json!({"model": "m", "prompt": "Once upon a time", "max_tokens": 4, "stream": true})).await;
    assert_eq!(r.sse().last().unwrap(), "[DONE]");

    // Unknown model and bad JSON are the gateway's own answers.
    let r = f.post("/v1/chat/completions", chat("nope", 4)).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "model_not_found");
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("Available models: m"));
    let r = f.post("/v1/chat/completions", json!({"messages": []})).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["param"], "model");

    let models = f.get("/v1/models").await.json();
    assert_eq!(models["data"][0]["id"], "m");
}

fn one_route(backend_toml: &str) -> String {
    format!("{backend_toml}\n[models.m]\ntargets = [\"b\"]\n")
}

#[tokio::test]
async fn conformance_openai_compatible_upstream() {
    let mock = MockUpstream::start("mock", MockBehaviour::default()).await.unwrap();
    let f = fleet(&one_route(&format!("[backends.b]\nkind = \"openai\"\nbase_url = \"{}\"", mock.url())), HashMap::new());
    conformance(&f, "b").await;
}

#[tokio::test]
async fn conformance_remote_sluice_engine() {
    let (state, _engine) = state_with(EngineConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(axum::serve(listener, sluice_server::app(state)).into_future());
    let toml = format!("[backends.b]\nkind = \"sluice\"\nbase_url = \"http://{addr}/v1\"\nmodel = \"{MODEL}\"");
    let f = fleet(&one_route(&toml), HashMap::new());
    assert!(f.target("b").backend.health().await.is_ok(), "/ready answers");
    conformance(&f, "b").await;
}

#[tokio::test]
async fn conformance_in_process_engine() {
    let (state, _engine) = state_with(EngineConfig::default());
    let mut engines: HashMap<String, Arc<dyn Backend>> = HashMap::new();
    engines.insert("b".into(), Arc::new(InProcessBackend::new(sluice_server::app(state))));
    let toml = format!("[backends.b]\nkind = \"engine\"\nmodel_path = \"unused.gguf\"\nmodel = \"{MODEL}\"\ncontext_window = 8192");
    let f = fleet(&one_route(&toml), engines);
    conformance(&f, "b").await;
}

use std::future::IntoFuture;

/// Two mocks, `a` then `b` as a fallback, with quick retries and the given extra backend lines.
async fn pair(a: MockBehaviour, b: MockBehaviour, extra: &str) -> (Fleet, MockUpstream, MockUpstream) {
    let ma = MockUpstream::start("a", a).await.unwrap();
    let mb = MockUpstream::start("b", b).await.unwrap();
    let toml = format!(
        "[backends.a]\nkind = \"openai\"\nbase_url = \"{}\"\n{extra}\n[backends.b]\nkind = \"openai\"\nbase_url = \"{}\"\n{extra}\n\
         [models.m]\ntargets = [\"a\"]\nfallback = [\"b\"]\nretry = {{ backoff_base_ms = 1, backoff_max_ms = 5 }}\n",
        ma.url(),
        mb.url()
    );
    (fleet(&toml, HashMap::new()), ma, mb)
}

fn status(code: u16) -> MockBehaviour {
    MockBehaviour { status: code, ..Default::default() }
}

#[tokio::test]
async fn server_errors_are_retried_then_fall_back() {
    let (f, ma, mb) = pair(status(500), MockBehaviour::default(), "").await;
    let r = f.post("/v1/chat/completions", chat("m", 3)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(header(&r, "x-sluice-backend"), "b");
    assert_eq!(header(&r, "x-sluice-attempts"), "3", "two tries at a, then b");
    assert_eq!((ma.requests(), mb.requests()), (2, 1));
}

#[tokio::test]
async fn a_refused_connection_falls_back() {
    let (f, ma, _mb) = pair(MockBehaviour::default(), MockBehaviour::default(), "").await;
    ma.kill();
    let r = f.post("/v1/chat/completions", chat("m", 3)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(header(&r, "x-sluice-backend"), "b");
}

#[tokio::test]
async fn everything_failing_says_what_broke() {
    let (f, _ma, _mb) = pair(status(503), status(502), "").await;
    let r = f.post("/v1/chat/completions", chat("m", 3)).await;
    assert_eq!(r.status, 502, "{}", r.text);
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(msg.contains("All 4 attempts for `m` failed"), "{msg}");
    assert!(msg.contains("a: HTTP 503: mock a answers 503") && msg.contains("b: HTTP 502"), "{msg}");
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let (f, ma, mb) = pair(MockBehaviour { status: 429, retry_after: Some(30), ..Default::default() }, MockBehaviour::default(), "").await;
    let r = f.post("/v1/chat/completions", chat("m", 3)).await;
    assert_eq!(header(&r, "x-sluice-backend"), "b");
    assert_eq!(ma.requests(), 1, "no retry at a target that asked us to wait");
    ma.set(MockBehaviour::default());
    let r = f.post("/v1/chat/completions", chat("m", 3)).await;
    assert_eq!(header(&r, "x-sluice-backend"), "b");
    assert_eq!(header(&r, "x-sluice-attempts"), "1");
    assert_eq!((ma.requests(), mb.requests()), (1, 2), "a is skipped during its Retry-After");
}

#[tokio::test]
async fn client_errors_pass_through_without_retry() {
    let (f, ma, mb) = pair(status(422), MockBehaviour::default(), "").await;
    let r = f.post("/v1/chat/completions", chat("m", 3)).await;
    assert_eq!(r.status, 422);
    assert_eq!(r.json()["error"]["code"], "mock_status");
    assert_eq!((ma.requests(), mb.requests()), (1, 0));
}

#[tokio::test]
async fn a_stream_cut_before_its_first_token_is_retried_transparently() {
    let (f, _ma, _mb) = pair(MockBehaviour { cut_after: Some(0), ..Default::default() }, MockBehaviour::default(), "").await;
    let r = f.post("/v1/chat/completions", chat_stream("m", 5, false)).await;
    assert_eq!(header(&r, "x-sluice-backend"), "b");
    let events = r.sse();
    assert_eq!(events.last().unwrap(), "[DONE]");
    assert!(events.iter().all(|e| !e.contains("error")), "{events:?}");
}

#[tokio::test]
async fn a_stream_cut_after_tokens_ends_with_an_error_naming_the_backend() {
    let (f, _ma, mb) = pair(MockBehaviour { cut_after: Some(3), ..Default::default() }, MockBehaviour::default(), "").await;
    let r = f.post("/v1/chat/completions", chat_stream("m", 10, false)).await;
    let events = r.sse();
    assert_ne!(events.last().unwrap(), "[DONE]", "no [DONE] after a failure: {events:?} {:?}", r.headers);
    let err: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(err["error"]["code"], "backend_stream_failed");
    assert!(err["error"]["message"].as_str().unwrap().starts_with("Backend `a` failed mid-stream after 3 tokens"), "{err}");
    let tokens = events.iter().filter(|e| e.contains("\"content\":\"tok")).count();
    assert_eq!(tokens, 3);
    assert_eq!(mb.requests(), 0, "tokens were sent: no silent switch to another backend");
    assert_eq!(f.target("a").stats.completion_tokens.load(std::sync::atomic::Ordering::Relaxed), 3, "usage so far is counted");
}

#[tokio::test]
async fn timeouts_per_phase() {
    // First token too slow at a: b answers instead.
    let slow = MockBehaviour { latency: Duration::from_millis(2000), ..Default::default() };
    let (f, _ma, _mb) = pair(slow, MockBehaviour::default(), "timeouts = { first_token_ms = 100, total_ms = 1000 }").await;
    let t0 = Instant::now();
    let r = f.post("/v1/chat/completions", chat_stream("m", 3, false)).await;
    assert_eq!(header(&r, "x-sluice-backend"), "b");
    assert!(t0.elapsed() < Duration::from_millis(1000), "{:?}", t0.elapsed());

    // Idle between tokens: the stream ends with an error event, not a hang.
    let drip = MockBehaviour { token_delay: Duration::from_millis(400), ..Default::default() };
    let (f2, _ma2, _mb2) = pair(drip, MockBehaviour::default(), "timeouts = { idle_ms = 150, first_token_ms = 1000 }").await;
    let t0 = Instant::now();
    let r = f2.post("/v1/chat/completions", chat_stream("m", 20, false)).await;
    let last = r.sse().last().cloned().unwrap();
    assert!(last.contains("idle timeout"), "{last}");
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());

    // Whole responses: bounded by the total.
    let (f3, _a, _b) = pair(MockBehaviour { latency: Duration::from_secs(5), ..Default::default() }, MockBehaviour { latency: Duration::from_secs(5), ..Default::default() }, "timeouts = { total_ms = 200 }").await;
    let t0 = Instant::now();
    let r = f3.post("/v1/chat/completions", chat("m", 3)).await;
    assert_eq!(r.status, 504, "{}", r.text);
    assert_eq!(r.json()["error"]["code"], "upstream_timeout");
    assert!(t0.elapsed() < Duration::from_millis(1500), "4 attempts x 200 ms plus backoff: {:?}", t0.elapsed());
}

#[tokio::test]
async fn the_circuit_opens_then_a_probe_closes_it() {
    let mock = MockUpstream::start("a", status(500)).await.unwrap();
    let toml = format!(
        "[backends.a]\nkind = \"openai\"\nbase_url = \"{}\"\nbreaker = {{ failures = 2, cooldown_ms = 300 }}\n\
         [models.m]\ntargets = [\"a\"]\nretry = {{ attempts_per_target = 1, backoff_base_ms = 1 }}\n",
        mock.url()
    );
    let f = fleet(&toml, HashMap::new());
    for _ in 0..2 {
        assert_eq!(f.post("/v1/chat/completions", chat("m", 2)).await.status, 502);
    }
    let r = f.post("/v1/chat/completions", chat("m", 2)).await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("a: circuit open"));
    assert!(r.headers.get("retry-after").is_some());
    assert_eq!(mock.requests(), 2, "an open circuit sends nothing");
    mock.set(MockBehaviour::default());
    tokio::time::sleep(Duration::from_millis(350)).await; // the cooldown itself is what is tested
    let r = f.post("/v1/chat/completions", chat("m", 2)).await;
    assert_eq!(r.status, 200, "the probe passes: {}", r.text);
    assert_eq!(f.target("a").breaker_state(Instant::now()), 0, "closed again");
}

#[tokio::test]
async fn failing_health_checks_take_a_backend_out() {
    let (f, ma, mb) = {
        let ma = MockUpstream::start("a", MockBehaviour::default()).await.unwrap();
        let mb = MockUpstream::start("b", MockBehaviour::default()).await.unwrap();
        let toml = format!(
            "[backends.a]\nkind = \"openai\"\nbase_url = \"{}\"\nhealth = {{ interval_ms = 20, timeout_ms = 100 }}\n\
             [backends.b]\nkind = \"openai\"\nbase_url = \"{}\"\n[models.m]\ntargets = [\"a\", \"b\"]\n",
            ma.url(),
            mb.url()
        );
        let cfg = sluice_gateway::config::parse("test.toml", &toml, &|_| None).unwrap();
        let mut g = Gateway::new(&cfg, HashMap::new()).unwrap();
        g.start_health_checks();
        let g = Arc::new(g);
        (Fleet { app: sluice_server::gateway_app(GatewayState::new(g.clone(), Vec::new())), gateway: g }, ma, mb)
    };
    ma.kill();
    let t0 = Instant::now();
    while f.target("a").healthy() {
        assert!(t0.elapsed() < Duration::from_secs(5), "health check never noticed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for _ in 0..6 {
        let r = f.post("/v1/chat/completions", chat("m", 2)).await;
        assert_eq!(header(&r, "x-sluice-backend"), "b");
        assert_eq!(header(&r, "x-sluice-attempts"), "1", "an unhealthy backend is not even tried");
    }
    assert_eq!(mb.requests(), 6);
    let metrics = f.get("/metrics").await.text;
    assert!(metrics.contains("sluice:gateway_backend_healthy{backend=\"a\",kind=\"openai\"} 0"), "{metrics}");
}

#[tokio::test]
async fn prompts_go_where_they_fit() {
    let small = MockUpstream::start("small", MockBehaviour::default()).await.unwrap();
    let large = MockUpstream::start("large", MockBehaviour::default()).await.unwrap();
    let toml = format!(
        "[backends.small]\nkind = \"openai\"\nbase_url = \"{}\"\ncontext_window = 100\nprice = {{ input = 0.1, output = 0.1 }}\n\
         [backends.large]\nkind = \"openai\"\nbase_url = \"{}\"\ncontext_window = 1000\nprice = {{ input = 5.0, output = 5.0 }}\n\
         [models.m]\ntargets = [\"small\", \"large\"]\npolicy = \"cheapest\"\n",
        small.url(),
        large.url()
    );
    let f = fleet(&toml, HashMap::new());
    let r = f.post("/v1/chat/completions", chat("m", 10)).await;
    assert_eq!(header(&r, "x-sluice-backend"), "small", "cheapest first");
    let long = "word ".repeat(400); // ~500 tokens
    let body = json!({"model": "m", "messages": [{"role": "user", "content": long}], "max_tokens": 10});
    let r = f.post("/v1/chat/completions", body).await;
    assert_eq!(header(&r, "x-sluice-backend"), "large", "the small window is skipped");
    let huge = "word ".repeat(2000);
    let body = json!({"model": "m", "messages": [{"role": "user", "content": huge}], "max_tokens": 10});
    let r = f.post("/v1/chat/completions", body).await;
    assert_eq!(r.status, 400);
    let j = r.json();
    assert_eq!(j["error"]["code"], "context_length_exceeded");
    assert!(j["error"]["message"].as_str().unwrap().contains("the largest context window available for `m` is 1000 tokens"), "{j}");
    assert_eq!(small.requests() + large.requests(), 2);
}

#[tokio::test]
async fn weighted_and_affinity_routes_over_real_upstreams() {
    let a = MockUpstream::start("a", MockBehaviour::default()).await.unwrap();
    let b = MockUpstream::start("b", MockBehaviour::default()).await.unwrap();
    let backends = format!("[backends.a]\nkind = \"sluice\"\nbase_url = \"{}\"\n[backends.b]\nkind = \"sluice\"\nbase_url = \"{}\"\n", a.url(), b.url());
    let toml = format!("{backends}[models.w]\ntargets = [\"a\", \"b\"]\npolicy = \"weighted\"\nweights = [3, 1]\n[models.p]\ntargets = [\"a\", \"b\"]\npolicy = \"prefix_affinity\"\nprefix_bytes = 32\n");
    let f = fleet(&toml, HashMap::new());
    for _ in 0..40 {
        assert_eq!(f.post("/v1/chat/completions", chat("w", 1)).await.status, 200);
    }
    assert_eq!((a.requests(), b.requests()), (30, 10));
    let mut homes = HashMap::new();
    for user in 0..20 {
        for question in 0..3 {
            let prompt = format!("You are assistant number {user:04}. Question {question}: why?");
            let body = json!({"model": "p", "messages": [{"role": "user", "content": prompt}], "max_tokens": 1});
            let r = f.post("/v1/chat/completions", body).await;
            let backend = header(&r, "x-sluice-backend").to_string();
            assert_eq!(homes.entry(user).or_insert_with(|| backend.clone()), &backend, "same prefix, same engine");
        }
    }
    let on_a = homes.values().filter(|b| *b == "a").count();
    assert!((3..=17).contains(&on_a), "prefixes spread over both engines: {on_a}/20 on a");
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_the_upstream_stream() {
    let slow = MockBehaviour { token_delay: Duration::from_millis(50), ..Default::default() };
    let (f, ma, _mb) = pair(slow, MockBehaviour::default(), "").await;
    let req = Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Body::from(chat_stream("m", 100, false).to_string()))
        .unwrap();
    let resp = f.app.clone().oneshot(req).await.unwrap();
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.data_ref().is_some());
    assert_eq!(ma.open_streams(), 1);
    drop(body);
    let t0 = Instant::now();
    while ma.open_streams() > 0 {
        assert!(t0.elapsed() < Duration::from_secs(2), "the upstream stream kept running after the client left");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(t0.elapsed() < Duration::from_secs(2), "100 tokens x 50 ms would take 5 s");
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_a_whole_response_on_the_engine() {
    let (state, engine) = state_with(EngineConfig::default());
    let mut engines: HashMap<String, Arc<dyn Backend>> = HashMap::new();
    engines.insert("b".into(), Arc::new(InProcessBackend::new(sluice_server::app(state))));
    let toml = format!("[backends.b]\nkind = \"engine\"\nmodel_path = \"unused.gguf\"\nmodel = \"{MODEL}\"");
    let f = fleet(&one_route(&toml), engines);
    let body = json!({"model": "m", "prompt": "Hi", "max_tokens": 3000, "ignore_eos": true});
    let gone = tokio::time::timeout(Duration::from_millis(300), f.post("/v1/completions", body)).await;
    assert!(gone.is_err(), "3000 tokens cannot be done in 300 ms");
    let t0 = Instant::now();
    while engine.stats.cancelled.load(std::sync::atomic::Ordering::Acquire) == 0 {
        assert!(t0.elapsed() < Duration::from_secs(5), "the engine kept generating for a client that left");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn when_health_checks_rule_out_every_target_they_are_tried_anyway() {
    let mock = MockUpstream::start("a", MockBehaviour { healthy: false, ..Default::default() }).await.unwrap();
    let toml = format!(
        "[backends.a]\nkind = \"openai\"\nbase_url = \"{}\"\nhealth = {{ interval_ms = 20 }}\n[models.m]\ntargets = [\"a\"]\n",
        mock.url()
    );
    let cfg = sluice_gateway::config::parse("test.toml", &toml, &|_| None).unwrap();
    let mut g = Gateway::new(&cfg, HashMap::new()).unwrap();
    g.start_health_checks();
    let g = Arc::new(g);
    let f = Fleet { app: sluice_server::gateway_app(GatewayState::new(g.clone(), Vec::new())), gateway: g };
    let t0 = Instant::now();
    while f.target("a").healthy() {
        assert!(t0.elapsed() < Duration::from_secs(5), "health check never failed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = f.post("/v1/chat/completions", chat("m", 2)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(header(&r, "x-sluice-backend"), "a");
}

#[tokio::test]
async fn busy_backends_give_a_503_with_retry_after_and_keep_their_circuit_closed() {
    let busy = MockBehaviour { status: 503, retry_after: Some(2), ..Default::default() };
    let (f, ma, mb) = pair(busy.clone(), busy, "breaker = { failures = 1, cooldown_ms = 60000 }").await;
    let r = f.post("/v1/chat/completions", chat("m", 2)).await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(r.headers["retry-after"], "2");
    assert_eq!(r.json()["error"]["code"], "overloaded");
    assert_eq!((ma.requests(), mb.requests()), (1, 1), "each asked once, then left alone for 2 s");
    assert_eq!(f.target("a").breaker_state(Instant::now()), 0, "busy is not broken");
}

#[tokio::test]
async fn redact_outbound_strips_pii_before_an_external_backend_sees_it() {
    let ext = MockUpstream::start("ext", MockBehaviour::default()).await.unwrap();
    let toml = format!(
        "[backends.ext]\nkind = \"openai\"\nbase_url = \"{}\"\n[models.safe]\ntargets = [\"ext\"]\nredact_outbound = true\n[models.raw]\ntargets = [\"ext\"]\n",
        ext.url()
    );
    let cfg = sluice_gateway::config::parse("test.toml", &toml, &|_| None).unwrap();
    let mut g = Gateway::new(&cfg, HashMap::new()).unwrap();
    let redactor = sluice_govern::Redactor::new(&[]).unwrap();
    g.set_redactor(Arc::new(move |s: &str| redactor.redact(s)));
    let g = Arc::new(g);
    let f = Fleet { app: sluice_server::gateway_app(GatewayState::new(g.clone(), Vec::new())), gateway: g };
    let secret = "My card is 4111 1111 1111 1111 and mail jane@example.com";
    for (model, expect) in [("safe", "My card is [CARD] and mail [EMAIL]"), ("raw", secret)] {
        let body = json!({"model": model, "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": secret}], "max_tokens": 2});
        assert_eq!(f.post("/v1/chat/completions", body).await.status, 200);
        let seen = ext.last_body().unwrap();
        assert_eq!(seen["messages"][1]["content"], expect, "{model}");
        assert_eq!(seen["messages"][0]["content"], "Be brief.");
    }
}
