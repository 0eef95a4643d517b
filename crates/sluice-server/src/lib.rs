//! The HTTP API: `fn app(state) -> Router` with OpenAI-compatible handlers, server-sent-event
//! streams, health and readiness, and the mapping of errors to OpenAI error bodies.

mod admin;
pub mod auth;
mod chat;
mod collections;
mod completions;
pub mod embeddings;
pub mod error;
mod gateway;
mod generate;
pub mod ledger;
pub mod listen;
mod metrics;
pub mod params;
mod records;

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sluice_engine::EngineHandle;
use sluice_protocol::{ModelCard, ModelList};

pub use error::ApiError;
pub use gateway::{GatewayState, gateway_app};

/// Identifies this server build in responses.
pub const FINGERPRINT: &str = concat!("sluice-", env!("CARGO_PKG_VERSION"));

/// The model this server serves, once loaded.
#[derive(Debug, Clone)]
pub struct ServedModel {
    /// The name clients use in `model`.
    pub name: String,
    /// The engine running it.
    pub engine: EngineHandle,
}

#[derive(Debug)]
struct Inner {
    served: OnceLock<ServedModel>,
    created: u64,
    /// Behind a gateway in this process: accept its prefix-cache namespace header.
    trust_namespace_header: bool,
}

/// Shared state of the HTTP handlers.
#[derive(Debug, Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

impl Default for AppState {
    fn default() -> Self {
        Self::loading()
    }
}

impl AppState {
    /// State of a server whose model is still loading (`/ready` answers 503 until `set_model`).
    pub fn loading() -> Self {
        Self::new(false)
    }

    fn new(trust_namespace_header: bool) -> Self {
        Self { inner: Arc::new(Inner { served: OnceLock::new(), created: generate::unix_now(), trust_namespace_header }) }
    }

    /// State of an engine that only a gateway in this process reaches (its router has no
    /// socket), which passes each request's tenant namespace in a header.
    pub fn behind_gateway() -> Self {
        Self::new(true)
    }

    /// The prefix-cache namespace of a request: the authenticated tenant's, the gateway's
    /// header when this engine sits behind one, or the shared default.
    pub fn cache_namespace(&self, principal: Option<&sluice_govern::Principal>, headers: &axum::http::HeaderMap) -> Vec<u8> {
        if let Some(p) = principal {
            return p.cache_namespace().into_bytes();
        }
        if self.inner.trust_namespace_header
            && let Some(ns) = headers.get(auth::NAMESPACE_HEADER)
        {
            return ns.as_bytes().to_vec();
        }
        params::DEFAULT_CACHE_NAMESPACE.to_vec()
    }

    /// State serving `served` right away.
    pub fn with_model(served: ServedModel) -> Self {
        let s = Self::loading();
        s.set_model(served);
        s
    }

    /// Publishes the loaded model; later calls are ignored.
    pub fn set_model(&self, served: ServedModel) {
        let _ = self.inner.served.set(served);
    }

    /// The served model, once loaded.
    pub fn served(&self) -> Option<&ServedModel> {
        self.inner.served.get()
    }

    /// The served model if `name` names it; 404 for another name, 503 while loading.
    pub fn model(&self, name: &str) -> Result<&ServedModel, ApiError> {
        let served = self.inner.served.get().ok_or_else(|| ApiError::unavailable("The model is still loading", 5))?;
        if name == served.name {
            Ok(served)
        } else {
            Err(ApiError::unknown_model(name, &served.name))
        }
    }
}

pub(crate) fn set_request_id(resp: &mut Response, id: &str) {
    if let Ok(v) = HeaderValue::from_str(id) {
        resp.headers_mut().insert("x-request-id", v);
    }
}

async fn health() -> impl IntoResponse {
    axum::Json(serde_json::json!({ "status": "ok" }))
}

async fn ready(State(state): State<AppState>) -> Response {
    match state.inner.served.get() {
        Some(s) if s.engine.is_alive() => {
            axum::Json(serde_json::json!({ "status": "ready", "model": s.name })).into_response()
        }
        Some(_) => (StatusCode::SERVICE_UNAVAILABLE, axum::Json(serde_json::json!({ "status": "engine stopped" })))
            .into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, axum::Json(serde_json::json!({ "status": "loading" }))).into_response(),
    }
}

async fn models(State(state): State<AppState>) -> impl IntoResponse {
    let data = state
        .inner
        .served
        .get()
        .map(|s| ModelCard {
            id: s.name.clone(),
            object: "model".into(),
            created: state.inner.created,
            owned_by: "sluice".into(),
            max_model_len: s.engine.model.model.cfg.context_length as u32,
        })
        .into_iter()
        .collect();
    axum::Json(ModelList { object: "list".into(), data })
}

pub(crate) async fn not_found() -> ApiError {
    ApiError { status: StatusCode::NOT_FOUND, code: Some("not_found"), ..ApiError::bad_request("No such endpoint") }
}

pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        code: Some("method_not_allowed"),
        ..ApiError::bad_request("This endpoint does not accept this HTTP method")
    }
}

fn open_routes(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics::metrics))
        .with_state(state)
}

fn api_routes(state: AppState) -> Router {
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/completions", post(completions::completions))
        .with_state(state)
}

fn finish(router: Router) -> Router {
    router.fallback(not_found).method_not_allowed_fallback(method_not_allowed)
}

/// `api` (and the admin API, when a governor is given) behind API-key authentication.
pub fn secure(api: Router, gov: Option<sluice_govern::Governor>) -> Router {
    let api = match &gov {
        Some(g) => api.merge(admin::routes(Some(g.clone()))),
        None => api,
    };
    api.route_layer(axum::middleware::from_fn_with_state(gov, auth::authenticate))
}

/// The router with every endpoint, without authentication (tests, in-process engines).
pub fn app(state: AppState) -> Router {
    finish(open_routes(state.clone()).merge(api_routes(state)))
}

/// The router of `sluice serve --model`: API keys required when `gov` is given.
pub fn app_with_auth(state: AppState, gov: Option<sluice_govern::Governor>) -> Router {
    finish(open_routes(state.clone()).merge(secure(api_routes(state), gov)))
}

/// The read APIs over the store: usage reports, ledger rows, audit entries.
pub(crate) fn records_router(ledger: Option<std::sync::Arc<sluice_govern::Ledger>>) -> Router {
    Router::new()
        .route("/v1/usage", get(ledger::usage))
        .route("/v1/requests", get(records::list_requests))
        .route("/v1/requests/{id}", get(records::get_request))
        .route("/v1/audit", get(records::list_audit))
        .route("/v1/audit/{seq}", get(records::get_audit))
        .with_state(ledger)
}
