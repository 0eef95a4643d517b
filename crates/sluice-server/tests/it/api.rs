use serde_json::{Value, json};

use crate::*;

fn completion_text(r: &Reply) -> String {
    r.json()["choices"][0]["text"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn chat_completion_greedy_is_deterministic_and_counts_usage() {
    let s = state();
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "Name a color."}], "max_tokens": 12, "temperature": 0});
    let a = post(&s, "/v1/chat/completions", body.clone()).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert!(a.headers.contains_key("x-request-id"));
    let j = a.json();
    assert_eq!(j["object"], "chat.completion");
    assert_eq!(j["choices"][0]["message"]["role"], "assistant");
    let u = &j["usage"];
    assert!(u["prompt_tokens"].as_u64().unwrap() > 10);
    assert!(u["completion_tokens"].as_u64().unwrap() <= 12);
    assert_eq!(u["total_tokens"].as_u64(), Some(u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap()));
    let b = post(&s, "/v1/chat/completions", body).await.json();
    assert_eq!(j["choices"][0]["message"]["content"], b["choices"][0]["message"]["content"]);
}

#[tokio::test]
async fn completion_stream_matches_non_stream_and_reports_usage() {
    let s = state();
    let base = json!({"model": MODEL, "prompt": "The capital of France is", "max_tokens": 10, "temperature": 0});
    let whole = post(&s, "/v1/completions", base.clone()).await;
    assert_eq!(whole.status, 200, "{}", whole.text);
    assert_eq!(completion_text(&whole), " Paris.\n\nThe United States has a population");
    assert_eq!(whole.json()["choices"][0]["finish_reason"], "length");
    let mut body = base;
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let r = post(&s, "/v1/completions", body).await;
    assert_eq!(r.status, 200);
    assert!(r.headers["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let events = r.sse();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["text"].as_str()).collect();
    assert_eq!(text, completion_text(&whole));
    let last_choice = chunks.iter().rev().find(|c| !c["choices"].as_array().unwrap().is_empty()).unwrap();
    assert_eq!(last_choice["choices"][0]["finish_reason"], "length");
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(usage["completion_tokens"], 10);
    assert_eq!(usage["prompt_tokens"], 5);
}

#[tokio::test]
async fn stop_sequences_are_never_emitted_streamed_or_not() {
    let s = state();
    // Greedy text is " Paris.\n\nThe United States has a population": stop on a string split across tokens.
    for stop in [json!("United"), json!(["zzz", "\n\n"]), json!(" Sta")] {
        let body = json!({"model": MODEL, "prompt": "The capital of France is", "max_tokens": 10, "temperature": 0, "stop": stop});
        let r = post(&s, "/v1/completions", body.clone()).await.json();
        let text = r["choices"][0]["text"].as_str().unwrap().to_string();
        assert_eq!(r["choices"][0]["finish_reason"], "stop", "{stop}: {text:?}");
        let full = " Paris.\n\nThe United States has a population";
        let stops: Vec<String> = match &stop {
            Value::String(s) => vec![s.clone()],
            v => v.as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_string()).collect(),
        };
        let cut = stops.iter().filter_map(|s| full.find(s.as_str())).min().unwrap();
        assert_eq!(text, full[..cut]);
        let mut sb = body;
        sb["stream"] = json!(true);
        let events = post(&s, "/v1/completions", sb).await.sse();
        let streamed: String = events
            .iter()
            .filter(|e| *e != "[DONE]")
            .filter_map(|e| serde_json::from_str::<Value>(e).ok())
            .filter_map(|c| c["choices"][0]["text"].as_str().map(str::to_string))
            .collect();
        assert_eq!(streamed, text, "{stop}");
    }
}

#[tokio::test]
async fn same_seed_same_sample_and_n_choices_differ() {
    let s = state();
    let body = json!({"model": MODEL, "prompt": "Once upon a time", "max_tokens": 16, "temperature": 1.0, "seed": 42, "n": 3});
    let a = post(&s, "/v1/completions", body.clone()).await.json();
    let b = post(&s, "/v1/completions", body).await.json();
    let texts = |j: &Value| -> Vec<String> {
        j["choices"].as_array().unwrap().iter().map(|c| c["text"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(texts(&a).len(), 3);
    assert_eq!(texts(&a), texts(&b));
    assert!(texts(&a)[0] != texts(&a)[1] || texts(&a)[1] != texts(&a)[2], "{:?}", texts(&a));
    assert_eq!(a["usage"]["prompt_tokens"], 4);
}

#[tokio::test]
async fn logprobs_are_reported_for_chat_and_completions() {
    let s = state();
    let r = post(
        &s,
        "/v1/chat/completions",
        json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "temperature": 0, "logprobs": true, "top_logprobs": 3}),
    )
    .await
    .json();
    let content = r["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert!(!content.is_empty());
    for t in content {
        let top = t["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        assert!(t["logprob"].as_f64().unwrap() <= 0.0);
        // Greedy: the chosen token is the most likely one.
        assert_eq!(t["token"], top[0]["token"]);
    }
    let r = post(&s, "/v1/completions", json!({"model": MODEL, "prompt": "Hi", "max_tokens": 3, "logprobs": 2, "temperature": 0})).await.json();
    let lp = &r["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), 3);
    assert_eq!(lp["top_logprobs"][0].as_object().unwrap().len(), 2);
}

#[tokio::test]
async fn models_health_and_ready() {
    let s = state();
    let m = call(&s, "GET", "/v1/models", "").await.json();
    assert_eq!(m["data"][0]["id"], MODEL);
    assert_eq!(m["data"][0]["max_model_len"], 8192);
    assert_eq!(call(&s, "GET", "/health", "").await.status, 200);
    assert_eq!(call(&s, "GET", "/ready", "").await.status, 200);
    let loading = AppState::loading();
    assert_eq!(call(&loading, "GET", "/health", "").await.status, 200);
    assert_eq!(call(&loading, "GET", "/ready", "").await.status, 503);
    let r = post(&loading, "/v1/completions", json!({"model": MODEL, "prompt": "x"})).await;
    assert_eq!(r.status, 503);
    assert!(r.headers.contains_key("retry-after"));
}

#[tokio::test]
async fn metrics_report_requests_tokens_and_latency() {
    let (s, engine) = state_with(sluice_engine::EngineConfig::default());
    post(&s, "/v1/completions", json!({"model": MODEL, "prompt": "Hello there", "max_tokens": 5, "temperature": 0, "ignore_eos": true})).await;
    // The engine books the request just after sending its last event.
    for _ in 0..200 {
        if engine.stats.finished.load(std::sync::atomic::Ordering::Acquire) == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let r = call(&s, "GET", "/metrics", "").await;
    assert_eq!(r.status, 200);
    assert!(r.headers["content-type"].to_str().unwrap().starts_with("text/plain"));
    let line = |name: &str| -> f64 {
        let prefix = format!("{name}{{model_name=\"{MODEL}\"}} ");
        r.text.lines().find_map(|l| l.strip_prefix(prefix.as_str())).unwrap_or_else(|| panic!("{name} missing:\n{}", r.text)).parse().unwrap()
    };
    assert_eq!(line("sluice:generation_tokens_total"), 5.0);
    assert_eq!(line("sluice:prompt_tokens_total"), 2.0);
    assert_eq!(line("sluice:requests_finished_total"), 1.0);
    assert_eq!(line("sluice:num_requests_running"), 0.0);
    assert_eq!(line("sluice:kv_cache_usage_perc"), 0.0);
    assert_eq!(line("sluice:time_to_first_token_seconds_count"), 1.0);
    assert_eq!(line("sluice:inter_token_latency_seconds_count"), 4.0);
    assert_eq!(line("sluice:e2e_request_latency_seconds_count"), 1.0);
}
