//! HTTP tests of the API through `app().oneshot()`, against the real SmolLM2 model.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code may unwrap")]

mod api;
mod auth;
mod chaos;
mod collections;
mod edges;
mod errors;
mod gateway;
mod ledger;
mod lifecycle;
mod logging;
mod records;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use sluice_engine::{EngineConfig, EngineHandle};
use sluice_model::LoadedModel;
use sluice_server::{AppState, ServedModel};
use tower::ServiceExt;

pub const MODEL: &str = "smollm2";

pub fn loaded() -> Arc<LoadedModel> {
    static M: OnceLock<Arc<LoadedModel>> = OnceLock::new();
    M.get_or_init(|| {
        let dir = std::env::var_os("SLUICE_MODELS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models"));
        let p = dir.join("SmolLM2-135M-Instruct.Q4_1.gguf");
        assert!(p.exists(), "{} missing: run scripts/fetch-models.sh", p.display());
        Arc::new(sluice_model::load(&p, 2).unwrap())
    })
    .clone()
}

pub fn engine(cfg: EngineConfig) -> EngineHandle {
    EngineHandle::start(loaded(), cfg).unwrap()
}

pub fn state_with(cfg: EngineConfig) -> (AppState, EngineHandle) {
    let e = engine(cfg);
    (AppState::with_model(ServedModel { name: MODEL.into(), engine: e.clone() }), e)
}

pub fn state() -> AppState {
    state_with(EngineConfig::default()).0
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub text: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    /// The `data:` payloads of an SSE body.
    pub fn sse(&self) -> Vec<String> {
        self.text
            .split("\n\n")
            .filter_map(|ev| ev.lines().find_map(|l| l.strip_prefix("data: ")).map(str::to_string))
            .collect()
    }
}

pub async fn call(state: &AppState, method: &str, path: &str, body: &str) -> Reply {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = sluice_server::app(state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    Reply { status, headers, text: String::from_utf8_lossy(&bytes).into_owned() }
}

pub async fn post(state: &AppState, path: &str, body: Value) -> Reply {
    call(state, "POST", path, &body.to_string()).await
}
