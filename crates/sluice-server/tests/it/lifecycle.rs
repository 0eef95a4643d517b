use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use serde_json::json;
use sluice_engine::EngineConfig;
use tower::ServiceExt;

use crate::*;

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..600 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test]
async fn a_dropped_stream_stops_the_engine_within_a_step() {
    let (s, engine) = state_with(EngineConfig::default());
    let body = json!({"model": MODEL, "prompt": "Count to one thousand:", "max_tokens": 2000, "ignore_eos": true, "stream": true});
    let req = Request::post("/v1/completions").body(Body::from(body.to_string())).unwrap();
    let resp = sluice_server::app(s.clone()).oneshot(req).await.unwrap();
    let mut body = resp.into_body();
    // Read until the first token arrives, then hang up.
    let first = body.frame().await.unwrap().unwrap();
    assert!(!first.data_ref().unwrap().is_empty());
    drop(body);
    wait_until("request cancelled and engine idle", || {
        engine.stats.cancelled.load(Ordering::Acquire) == 1 && engine.stats.running.load(Ordering::Acquire) == 0
    })
    .await;
    // Its KV blocks went back to the pool.
    assert_eq!(engine.stats.kv_blocks_used.load(Ordering::Acquire), 0);
    let generated = engine.stats.generated_tokens.load(Ordering::Acquire);
    assert!(generated < 100, "engine kept generating after the client left: {generated} tokens");
    let steps = engine.stats.steps.load(Ordering::Acquire);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(engine.stats.steps.load(Ordering::Acquire), steps, "engine still stepping");
}

#[tokio::test]
async fn a_full_queue_answers_503_with_retry_after() {
    let (s, engine) = state_with(EngineConfig { max_waiting: 1, max_num_seqs: 1, ..Default::default() });
    let long = json!({"model": MODEL, "prompt": "Go:", "max_tokens": 400, "ignore_eos": true});
    let s1 = s.clone();
    let l1 = long.clone();
    let running = tokio::spawn(async move { post(&s1, "/v1/completions", l1).await });
    wait_until("first request running", || engine.stats.running.load(Ordering::Acquire) == 1).await;
    let s2 = s.clone();
    let l2 = long.clone();
    let queued = tokio::spawn(async move { post(&s2, "/v1/completions", l2).await });
    wait_until("second request queued", || engine.stats.waiting.load(Ordering::Acquire) == 1).await;
    let refused = post(&s, "/v1/completions", long).await;
    assert_eq!(refused.status, 503, "{}", refused.text);
    assert_eq!(refused.headers["retry-after"], "1");
    assert_eq!(refused.json()["error"]["type"], "service_unavailable");
    assert_eq!(running.await.unwrap().status, 200);
    assert_eq!(queued.await.unwrap().status, 200);
}
