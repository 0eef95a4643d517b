//! `GET /metrics`: Prometheus text exposition of the engine's state, named as vLLM names them
//! (`vllm:` becomes `sluice:`), so existing dashboards adapt by changing the prefix.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::AppState;

fn metric(out: &mut String, name: &str, kind: &str, help: &str, labels: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{{labels}}} {value}");
}

/// Renders every metric of the served model.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let mut out = String::new();
    if let Some(served) = state.served() {
        render_engine(&mut out, served);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// Appends one engine's metrics, labelled with its model name.
pub fn render_engine(out: &mut String, served: &crate::ServedModel) {
    {
        let s = &served.engine.stats;
        let labels = format!("model_name=\"{}\"", served.name.replace('\\', "\\\\").replace('"', "\\\""));
        let l = labels.as_str();
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Acquire);
        metric(out, "sluice:num_requests_running", "gauge", "Requests in the running batch.", l, s.running.load(Ordering::Acquire));
        metric(out, "sluice:num_requests_waiting", "gauge", "Requests waiting to be scheduled.", l, s.waiting.load(Ordering::Acquire));
        let total = s.kv_blocks_total.load(Ordering::Acquire).max(1) as f64;
        let used = s.kv_blocks_used.load(Ordering::Acquire) as f64;
        metric(out, "sluice:kv_cache_usage_perc", "gauge", "Fraction of KV blocks in use (0-1).", l, used / total);
        metric(out, "sluice:prefix_cache_queries_total", "counter", "Prompt tokens looked up in the prefix cache.", l, load(&s.prefix_queried_tokens));
        metric(out, "sluice:prefix_cache_hits_total", "counter", "Prompt tokens found in the prefix cache.", l, load(&s.prefix_hit_tokens));
        metric(out, "sluice:num_preemptions_total", "counter", "Sequences preempted for lack of KV blocks.", l, load(&s.preemptions));
        metric(out, "sluice:prompt_tokens_total", "counter", "Prompt tokens processed.", l, load(&s.prompt_tokens));
        metric(out, "sluice:generation_tokens_total", "counter", "Tokens generated.", l, load(&s.generated_tokens));
        metric(out, "sluice:requests_finished_total", "counter", "Requests ended for any reason.", l, load(&s.finished));
        metric(out, "sluice:requests_cancelled_total", "counter", "Requests whose client went away.", l, load(&s.cancelled));
        metric(out, "sluice:engine_steps_total", "counter", "Batched forward passes.", l, load(&s.steps));
        s.latency.ttft.render("sluice:time_to_first_token_seconds", "Time to first token.", l, out);
        s.latency.itl.render("sluice:inter_token_latency_seconds", "Time between two tokens of a request.", l, out);
        s.latency.e2e.render("sluice:e2e_request_latency_seconds", "Request latency, arrival to end.", l, out);
    }
}

/// Appends one metric family with a sample per label set.
pub fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, String)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{{{labels}}} {value}");
    }
}

/// A Prometheus label value with quotes and backslashes escaped.
pub fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
