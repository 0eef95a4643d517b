//! Shared by the logging tests: a governed gateway over a mock upstream with tenants of given
//! logging policies, and requests that carry a planted secret.
#![allow(dead_code, reason = "each test binary uses part of it")]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sluice_gateway::Gateway;
use sluice_gateway::mock::{MockBehaviour, MockUpstream};
use sluice_govern::{Auditor, Governor, Ledger, LoggingPolicy, Redactor, Role};
use sluice_server::GatewayState;
use sluice_server::ledger::LedgerGovernance;
use sluice_store::Store;
use tower::ServiceExt;

pub const SECRET: &str = "planted.secret.4471@example.com";

pub struct Setup {
    pub app: Router,
    pub store: Store,
    pub db_path: std::path::PathBuf,
    pub keys: HashMap<&'static str, String>,
    _mock: MockUpstream,
}

pub async fn setup(policies: &[(&'static str, LoggingPolicy)], mock: MockBehaviour) -> Setup {
    let db_path = sluice_store::testing::temp_path("logging").with_extension("db");
    let store = Store::open(&format!("sqlite://{}", db_path.display())).await.unwrap();
    let mock = MockUpstream::start("up", mock).await.unwrap();
    let toml = format!(
        "[backends.up]\nkind = \"openai\"\nbase_url = \"{}\"\nprice = {{ input = 1.0, output = 1.0 }}\n[models.m]\ntargets = [\"up\"]\nretry = {{ backoff_base_ms = 1 }}\n",
        mock.url()
    );
    let cfg = sluice_gateway::config::parse("test.toml", &toml, &|_| None).unwrap();
    let mut gateway = Gateway::new(&cfg, HashMap::new()).unwrap();
    let auditor = Auditor::start(store.clone(), b"0123456789abcdef0123456789abcdef".to_vec(), None);
    let gov = Governor::new(store.clone()).with_auditor(auditor.clone());
    let mut keys = HashMap::new();
    for (tenant, policy) in policies {
        gov.ensure_tenant(tenant).await.unwrap();
        gov.set_logging_policy(tenant, *policy).await.unwrap();
        keys.insert(*tenant, gov.create_key(tenant, Role::Member, "", None).await.unwrap().secret);
    }
    let ledger = Ledger::start(store.clone()).await.unwrap();
    let redactor = Arc::new(Redactor::new(&[]).unwrap());
    gateway.set_governance(Arc::new(LedgerGovernance::new(ledger.clone()).with_auditor(Some(auditor), Some(redactor))));
    let app = sluice_server::gateway_app(GatewayState::new(Arc::new(gateway), Vec::new()).with_governor(gov).with_ledger(ledger));
    Setup { app, store, db_path, keys, _mock: mock }
}

pub async fn post(app: &Router, key: &str, body: String) -> (u16, String) {
    let req = Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {key}"))
        .body(Body::from(body))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    (status, String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).into_owned())
}

pub fn chat(stream: bool) -> String {
    json!({"model": "m", "messages": [{"role": "user", "content": format!("Please email {SECRET} the report.")}], "max_tokens": 3, "stream": stream})
        .to_string()
}

pub async fn request_entries(store: &Store, n: usize) -> Vec<(String, Value)> {
    for _ in 0..300 {
        let all = store.audit_entries(0, 10_000).await.unwrap();
        let reqs: Vec<(String, Value)> = all
            .iter()
            .filter(|e| e.entry.kind == "request")
            .map(|e| (e.entry.tenant_id.clone().unwrap_or_default(), serde_json::from_str(&e.entry.body).unwrap()))
            .collect();
        if reqs.len() >= n {
            return reqs;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("audit entries did not arrive");
}

