//! Chaos: three upstreams under steady load through the gateway; mid-run one is killed and
//! another turns flaky. Every request a healthy target could serve must succeed, and none may
//! hang. Loopback only, bounded in time (about 3 s).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_gateway::mock::{MockBehaviour, MockUpstream};

use crate::gateway::{chat, chat_stream, fleet, header};

#[derive(Default, Debug)]
struct Tally {
    ok: u32,
    /// Streams that lost their backend after tokens were sent (cannot be retried).
    failed_mid_stream: Vec<String>,
    /// Anything else: these must not happen.
    failed: Vec<String>,
    slowest: Duration,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_upstream_and_breaking_another_loses_nothing_servable() {
    let steady = MockBehaviour { latency: Duration::from_millis(2), token_delay: Duration::from_millis(2), ..Default::default() };
    let mocks: Vec<MockUpstream> = futures_util::future::join_all(
        ["a", "b", "c"].map(|n| MockUpstream::start(n, steady.clone())),
    )
    .await
    .into_iter()
    .map(Result::unwrap)
    .collect();
    let mut toml = String::new();
    for (name, m) in ["a", "b", "c"].iter().zip(&mocks) {
        toml += &format!(
            "[backends.{name}]\nkind = \"openai\"\nbase_url = \"{}\"\ntimeouts = {{ connect_ms = 200, first_token_ms = 500, idle_ms = 500, total_ms = 1000 }}\n\
             breaker = {{ failures = 3, cooldown_ms = 500 }}\n",
            m.url()
        );
    }
    toml += "[models.m]\ntargets = [\"a\", \"b\", \"c\"]\npolicy = \"least_outstanding\"\nretry = { max_attempts = 4, attempts_per_target = 1, backoff_base_ms = 2, backoff_max_ms = 20 }\n";
    let f = Arc::new(fleet(&toml, HashMap::new()));

    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..8 {
        let f = f.clone();
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let streaming = (w + i).is_multiple_of(2);
                let body = if streaming { chat_stream("m", 8, true) } else { chat("m", 8) };
                let t0 = Instant::now();
                let r = tokio::time::timeout(Duration::from_secs(5), f.post("/v1/chat/completions", body)).await;
                tally.slowest = tally.slowest.max(t0.elapsed());
                let Ok(r) = r else {
                    tally.failed.push("hung past 5 s".into());
                    continue;
                };
                let backend = header(&r, "x-sluice-backend").to_string();
                if r.status != 200 {
                    tally.failed.push(format!("{} via {backend}: {}", r.status, r.text));
                } else if streaming {
                    let events = r.sse();
                    match events.last().map(String::as_str) {
                        Some("[DONE]") => tally.ok += 1,
                        Some(last) if serde_json::from_str::<Value>(last).is_ok_and(|e| e["error"]["code"] == "backend_stream_failed") => {
                            tally.failed_mid_stream.push(format!("{backend}: {last}"))
                        }
                        other => tally.failed.push(format!("malformed stream via {backend}: {other:?}")),
                    }
                } else if r.json()["choices"][0]["message"]["content"].as_str().is_some_and(|s| s.starts_with("tok0")) {
                    tally.ok += 1;
                } else {
                    tally.failed.push(format!("bad body via {backend}: {}", r.text));
                }
            }
            tally
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    mocks[0].kill();
    tokio::time::sleep(Duration::from_millis(700)).await;
    mocks[1].set(MockBehaviour { fail_every: Some(2), cut_after: None, ..steady.clone() });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);

    let mut total = Tally::default();
    for w in workers {
        let t = w.await.unwrap();
        total.ok += t.ok;
        total.failed_mid_stream.extend(t.failed_mid_stream);
        total.failed.extend(t.failed);
        total.slowest = total.slowest.max(t.slowest);
    }
    let requests = total.ok as usize + total.failed.len() + total.failed_mid_stream.len();
    let servable = requests - total.failed_mid_stream.len();
    eprintln!(
        "chaos: {requests} requests, {} ok, success rate of servable requests {:.2}% ({}/{servable}); \
         {} streams lost their backend mid-stream when it was killed; slowest {:?}; upstream hits a={} b={} c={}",
        total.ok,
        100.0 * total.ok as f64 / servable.max(1) as f64,
        total.ok,
        total.failed_mid_stream.len(),
        total.slowest,
        mocks[0].requests(),
        mocks[1].requests(),
        mocks[2].requests()
    );
    assert!(total.failed.is_empty(), "failures a healthy target could have served: {:#?}", total.failed);
    assert!(requests > 200, "steady load: {requests}");
    // Only streams in flight on `a` when it died may fail, and at most one per worker.
    assert!(total.failed_mid_stream.len() <= 8, "{:#?}", total.failed_mid_stream);
    assert!(total.failed_mid_stream.iter().all(|f| f.starts_with("a: ")), "{:#?}", total.failed_mid_stream);
    assert!(total.slowest < Duration::from_secs(2), "no request hangs: slowest {:?}", total.slowest);
    assert!(mocks[2].requests() > 0 && mocks[1].requests() > 0);
}
