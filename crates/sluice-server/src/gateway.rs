//! The HTTP face of the gateway (`sluice serve --config`): the OpenAI endpoints routed over
//! the configured fleet, `/v1/models` listing the routes, `/ready` once every in-process
//! engine has loaded, and `/metrics` with each backend's and each engine's figures.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::{Extension, Router};
use sluice_govern::Principal;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use sluice_gateway::{Api, Caller, Gateway, GatewayError, Reply, RequestContext, Routed};
use sluice_protocol::{ModelCard, ModelList};
use tokio_stream::wrappers::ReceiverStream;

use crate::error::ApiError;
use crate::metrics::{family, label, render_engine};
use crate::{AppState, params};

/// State of the gateway's handlers.
#[derive(Debug, Clone)]
pub struct GatewayState {
    pub(crate) gateway: Arc<Gateway>,
    engines: Vec<AppState>,
    created: u64,
    governor: Option<sluice_govern::Governor>,
    ledger: Option<Arc<sluice_govern::Ledger>>,
    pub(crate) embedders: crate::embeddings::Embedders,
    pub(crate) collections: Option<Arc<sluice_retrieval::Collections>>,
}

impl GatewayState {
    /// The gateway and the states of its in-process engines (which may still be loading).
    pub fn new(gateway: Arc<Gateway>, engines: Vec<AppState>) -> Self {
        Self { gateway, engines, created: crate::generate::unix_now(), governor: None, ledger: None, embedders: Default::default(), collections: None }
    }

    /// Serves `/v1/collections` from `collections`.
    pub fn with_collections(mut self, collections: Arc<sluice_retrieval::Collections>) -> Self {
        self.collections = Some(collections);
        self
    }

    /// Serves `/v1/embeddings` with these models (by name).
    pub fn with_embedders(mut self, embedders: crate::embeddings::Embedders) -> Self {
        self.embedders = embedders;
        self
    }

    /// Serves usage reports from `ledger` (the gateway itself must be given the matching
    /// governance hook).
    pub fn with_ledger(mut self, ledger: Arc<sluice_govern::Ledger>) -> Self {
        self.ledger = Some(ledger);
        self
    }

    /// Requires API keys checked by `gov` on the model and admin APIs.
    pub fn with_governor(mut self, gov: sluice_govern::Governor) -> Self {
        self.governor = Some(gov);
        self
    }
}

impl From<GatewayError> for ApiError {
    fn from(e: GatewayError) -> Self {
        let message = e.to_string();
        match e {
            GatewayError::BadRequest { param: Some(p), .. } => ApiError::invalid(p, message),
            GatewayError::BadRequest { param: None, .. } => ApiError::bad_request(message),
            GatewayError::UnknownModel { .. } => ApiError {
                status: StatusCode::NOT_FOUND,
                code: Some("model_not_found"),
                ..ApiError::invalid("model", message)
            },
            GatewayError::ContextLength { .. } => ApiError::context_length(message),
            GatewayError::Unavailable { retry_after, .. } => ApiError::unavailable(message, retry_after),
            GatewayError::Refused(r) => ApiError {
                status: StatusCode::from_u16(r.status).unwrap_or(StatusCode::TOO_MANY_REQUESTS),
                kind: if r.status == 429 { "rate_limit_error" } else { "service_unavailable" },
                message,
                param: None,
                code: Some(r.code),
                retry_after: Some(r.retry_after),
            },
            GatewayError::Exhausted { timed_out, .. } => ApiError {
                status: if timed_out { StatusCode::GATEWAY_TIMEOUT } else { StatusCode::BAD_GATEWAY },
                code: Some(if timed_out { "upstream_timeout" } else { "upstream_failed" }),
                ..ApiError::internal(message)
            },
        }
    }
}

fn with_route_headers(mut resp: Response, request_id: &str, backend: &str, attempts: u32) -> Response {
    let h = resp.headers_mut();
    for (name, value) in [("x-request-id", request_id), ("x-sluice-backend", backend)] {
        if let Ok(v) = HeaderValue::from_str(value) {
            h.insert(name, v);
        }
    }
    h.insert("x-sluice-attempts", HeaderValue::from(attempts));
    resp
}

/// Feature attribution header (else the body's `metadata.feature`, else `unattributed`).
pub const FEATURE_HEADER: &str = "x-sluice-feature";

/// Who is asking and for which feature (header `X-Sluice-Feature`; else the body's
/// `metadata.feature`, else `unattributed`).
pub(crate) fn request_context(principal: Option<Principal>, headers: &axum::http::HeaderMap) -> RequestContext {
    let feature = headers
        .get(FEATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|f| !f.is_empty() && f.len() <= 64)
        .unwrap_or("")
        .to_string();
    RequestContext {
        request_id: String::new(),
        cache_namespace: principal.as_ref().map(Principal::cache_namespace),
        caller: principal.map(|p| Caller { tenant_id: p.tenant_id, key_id: p.key_id, logging: p.logging.as_str().to_string() }),
        feature,
    }
}

/// A refusal by limits or budgets goes to the audit trail.
pub(crate) fn audit_refusal(state: &GatewayState, ctx: &RequestContext, request_id: &str, e: &GatewayError) {
    if let (GatewayError::Refused(r), Some(g), Some(c)) = (e, &state.governor, &ctx.caller) {
        g.audit(
            "policy.denied",
            Some(&c.tenant_id),
            Some(&c.key_id),
            serde_json::json!({"request_id": request_id, "code": r.code, "message": r.message, "feature": ctx.feature}),
        );
    }
}

async fn proxy(
    state: GatewayState,
    principal: Option<Principal>,
    headers: &axum::http::HeaderMap,
    api: Api,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match params::read_body(body) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let ctx = request_context(principal, headers);
    let Routed { request_id, backend, attempts, result } = state.gateway.handle(api, &body, &ctx).await;
    if let Err(e) = &result {
        audit_refusal(&state, &ctx, &request_id, e);
    }
    let resp = match result {
        Err(e) => ApiError::from(e).into_response(),
        Ok(Reply::Complete { status, body }) => {
            let mut resp = Response::new(Body::from(body));
            *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            resp
        }
        Ok(Reply::Stream(rx)) => {
            let events = ReceiverStream::new(rx).map(|p| Ok::<_, Infallible>(SseEvent::default().data(p)));
            Sse::new(events).keep_alive(KeepAlive::default()).into_response()
        }
    };
    with_route_headers(resp, &request_id, &backend, attempts)
}

async fn chat(
    State(state): State<GatewayState>,
    principal: Option<Extension<Principal>>,
    headers: axum::http::HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    proxy(state, principal.map(|p| p.0), &headers, Api::Chat, body).await
}

async fn completions(
    State(state): State<GatewayState>,
    principal: Option<Extension<Principal>>,
    headers: axum::http::HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    proxy(state, principal.map(|p| p.0), &headers, Api::Completions, body).await
}

async fn models(State(state): State<GatewayState>) -> impl IntoResponse {
    let data = state
        .gateway
        .models()
        .into_iter()
        .map(|(id, window)| ModelCard {
            id,
            object: "model".into(),
            created: state.created,
            owned_by: "sluice".into(),
            max_model_len: window.unwrap_or(0),
        })
        .chain(state.embedders.values().map(|e| ModelCard {
            id: e.name().to_string(),
            object: "model".into(),
            created: state.created,
            owned_by: "sluice".into(),
            max_model_len: e.max_tokens() as u32,
        }))
        .collect();
    axum::Json(ModelList { object: "list".into(), data })
}

async fn ready(State(state): State<GatewayState>) -> Response {
    let loading = state.engines.iter().filter(|e| e.served().is_none()).count();
    if loading == 0 {
        axum::Json(serde_json::json!({ "status": "ready" })).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(serde_json::json!({ "status": "loading", "engines_loading": loading })))
            .into_response()
    }
}

async fn metrics(State(state): State<GatewayState>) -> Response {
    let mut out = String::new();
    let now = Instant::now();
    let targets = state.gateway.targets();
    let per = |f: &dyn Fn(&sluice_gateway::Target) -> String| -> Vec<(String, String)> {
        targets
            .iter()
            .map(|t| (format!("backend=\"{}\",kind=\"{}\"", label(t.name()), t.kind().as_str()), f(t)))
            .collect()
    };
    use std::sync::atomic::Ordering::Relaxed;
    let s = |a: &std::sync::atomic::AtomicU64| a.load(Relaxed).to_string();
    family(&mut out, "sluice:gateway_attempts_total", "counter", "Attempts sent to the backend.", &per(&|t| s(&t.stats.attempts)));
    family(&mut out, "sluice:gateway_attempt_failures_total", "counter", "Attempts that failed (retried or given up).", &per(&|t| s(&t.stats.failures)));
    family(&mut out, "sluice:gateway_requests_served_total", "counter", "Requests the backend answered.", &per(&|t| s(&t.stats.served)));
    family(&mut out, "sluice:gateway_outstanding_requests", "gauge", "Requests in flight at the backend.", &per(&|t| t.outstanding().to_string()));
    family(&mut out, "sluice:gateway_backend_healthy", "gauge", "1 when the last active health check passed.", &per(&|t| u8::from(t.healthy()).to_string()));
    family(&mut out, "sluice:gateway_circuit_state", "gauge", "Circuit breaker: 0 closed, 1 open, 2 half-open.", &per(&|t| t.breaker_state(now).to_string()));
    family(&mut out, "sluice:gateway_circuit_opened_total", "counter", "Times the circuit opened.", &per(&|t| s(&t.stats.breaker_opened)));
    family(&mut out, "sluice:gateway_latency_ewma_seconds", "gauge", "Moving average latency (to first token when streaming).", &per(&|t| t.ewma().as_secs_f64().to_string()));
    family(&mut out, "sluice:gateway_prompt_tokens_total", "counter", "Prompt tokens served by the backend.", &per(&|t| s(&t.stats.prompt_tokens)));
    family(&mut out, "sluice:gateway_completion_tokens_total", "counter", "Tokens the backend generated.", &per(&|t| s(&t.stats.completion_tokens)));
    let mut engines = String::new();
    for e in &state.engines {
        if let Some(served) = e.served() {
            render_engine(&mut engines, served);
        }
    }
    out.push_str(&merge_families(&engines));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// Groups samples of the same family under one HELP/TYPE header (several engines render the
/// same families; the exposition format wants each family once).
fn merge_families(text: &str) -> String {
    let mut order: Vec<String> = Vec::new();
    let mut groups: std::collections::HashMap<String, (Vec<String>, Vec<String>)> = Default::default();
    let mut current = String::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ").or_else(|| line.strip_prefix("# TYPE ")) {
            current = rest.split(' ').next().unwrap_or("").to_string();
            let g = groups.entry(current.clone()).or_insert_with(|| {
                order.push(current.clone());
                Default::default()
            });
            if g.0.len() < 2 && !g.0.iter().any(|h| h == line) {
                g.0.push(line.to_string());
            }
        } else if !line.is_empty() {
            groups.entry(current.clone()).or_default().1.push(line.to_string());
        }
    }
    let mut out = String::new();
    for name in order {
        if let Some((head, samples)) = groups.get(&name) {
            for l in head.iter().chain(samples) {
                out.push_str(l);
                out.push('\n');
            }
        }
    }
    out
}

/// The gateway's router.
pub fn gateway_app(state: GatewayState) -> Router {
    let open = Router::new()
        .route("/health", get(|| async { axum::Json(serde_json::json!({ "status": "ok" })) }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(state.clone());
    let api = Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .with_state(state.clone())
        .merge(crate::records_router(state.ledger.clone()))
        .merge(Router::new().route("/v1/embeddings", post(crate::embeddings::embeddings)).with_state(state.clone()))
        .merge(crate::collections::router(state.clone()));
    open.merge(crate::secure(api, state.governor.clone()))
        .fallback(crate::not_found)
        .method_not_allowed_fallback(crate::method_not_allowed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_merged_once_each() {
        let text = "# HELP a x\n# TYPE a gauge\na{m=\"1\"} 1\n# HELP b y\n# TYPE b counter\nb{m=\"1\"} 2\n# HELP a x\n# TYPE a gauge\na{m=\"2\"} 3\n";
        assert_eq!(merge_families(text), "# HELP a x\n# TYPE a gauge\na{m=\"1\"} 1\na{m=\"2\"} 3\n# HELP b y\n# TYPE b counter\nb{m=\"1\"} 2\n");
    }
}
