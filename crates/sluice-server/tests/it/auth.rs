//! API keys at the edge, the admin API, and tenant isolation of the prefix cache — on the
//! single-model server and behind the gateway.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sluice_engine::{EngineConfig, EngineHandle};
use sluice_gateway::{Backend, Gateway, InProcessBackend};
use sluice_govern::Governor;
use sluice_server::{AppState, GatewayState, ServedModel};
use tower::ServiceExt;

use crate::{MODEL, Reply, engine};

async fn governor() -> Governor {
    Governor::new(sluice_store::Store::open(&sluice_store::testing::sqlite_url("auth")).await.unwrap())
}

async fn send(app: &Router, method: &str, path: &str, key: Option<&str>, body: Option<Value>) -> Reply {
    let mut req = Request::builder().method(method).uri(path).header("content-type", "application/json");
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let req = req.body(body.map_or_else(Body::empty, |b| Body::from(b.to_string()))).unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    Reply { status, headers, text: String::from_utf8_lossy(&bytes).into_owned() }
}

async fn settle(engine: &EngineHandle, n: u64) {
    for _ in 0..500 {
        if engine.stats.finished.load(Ordering::Acquire) >= n {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("engine did not book {n} finished requests");
}

fn completion(prompt: &str) -> Value {
    json!({"model": MODEL, "prompt": prompt, "max_tokens": 1, "temperature": 0})
}

/// A prompt long enough to fill several KV blocks.
fn long_prompt() -> String {
    "The quick brown fox jumps over the lazy dog while the cat watches from the window. ".repeat(8)
}

#[tokio::test]
async fn keys_roles_revocation_and_the_admin_api() {
    let gov = governor().await;
    let admin = gov.bootstrap(None).await.unwrap().unwrap().secret;
    let e = engine(EngineConfig::default());
    let app = sluice_server::app_with_auth(AppState::with_model(ServedModel { name: MODEL.into(), engine: e }), Some(gov.clone()));

    let r = send(&app, "POST", "/v1/completions", None, Some(completion("Hi"))).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["code"], "missing_api_key");
    assert_eq!(r.headers["www-authenticate"], "Bearer");
    let r = send(&app, "GET", "/v1/models", Some("sk-sluice-000000000000-0000000000000000000000000000"), None).await;
    assert_eq!((r.status.as_u16(), r.json()["error"]["code"].as_str()), (401, Some("invalid_api_key")));
    assert_eq!(send(&app, "GET", "/health", None, None).await.status, 200, "liveness needs no key");
    assert_eq!(send(&app, "GET", "/metrics", None, None).await.status, 200);

    let r = send(&app, "POST", "/admin/tenants", Some(&admin), Some(json!({"name": "acme"}))).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = send(&app, "POST", "/admin/tenants", Some(&admin), Some(json!({"name": "acme"}))).await;
    assert_eq!(r.status, 409);
    let r = send(&app, "POST", "/admin/keys", Some(&admin), Some(json!({"tenant": "acme", "role": "member", "name": "ci"}))).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let member = r.json()["key"].as_str().unwrap().to_string();
    let member_id = r.json()["id"].as_str().unwrap().to_string();
    let r = send(&app, "POST", "/admin/keys", Some(&admin), Some(json!({"tenant": "acme", "role": "owner"}))).await;
    assert_eq!((r.status.as_u16(), r.json()["error"]["param"].as_str()), (400, Some("role")));

    let r = send(&app, "POST", "/v1/completions", Some(&member), Some(completion("Hi"))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = send(&app, "GET", "/admin/keys", Some(&member), None).await;
    assert_eq!((r.status.as_u16(), r.json()["error"]["code"].as_str()), (403, Some("forbidden")));

    let listed = send(&app, "GET", "/admin/keys?tenant=acme", Some(&admin), None).await.json();
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);
    assert!(!listed.to_string().contains(&member[23..]), "listing never shows a key");

    let r = send(&app, "POST", &format!("/admin/keys/{member_id}/revoke"), Some(&admin), Some(json!({"reason": "rotated"}))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = send(&app, "POST", "/v1/completions", Some(&member), Some(completion("Hi"))).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["message"], "This API key was revoked: rotated");

    let r = send(&app, "POST", "/admin/keys", Some(&admin), Some(json!({"tenant": "acme", "role": "member", "expires_in_seconds": 0}))).await;
    let expired = r.json()["key"].as_str().unwrap().to_string();
    let r = send(&app, "GET", "/v1/models", Some(&expired), None).await;
    assert_eq!((r.status.as_u16(), r.json()["error"]["code"].as_str()), (401, Some("expired_api_key")));

    // A revocation made by another process (its own governor and cache, e.g. `sluice keys
    // revoke`) reaches this one's remembered authentications through the store's epoch.
    let r = send(&app, "POST", "/admin/keys", Some(&admin), Some(json!({"tenant": "acme", "role": "member"}))).await;
    let (second, second_id) = (r.json()["key"].as_str().unwrap().to_string(), r.json()["id"].as_str().unwrap().to_string());
    for _ in 0..3 {
        assert_eq!(send(&app, "GET", "/v1/models", Some(&second), None).await.status, 200);
    }
    let elsewhere = Governor::new(gov.store().clone());
    elsewhere.revoke_key(&second_id, "leaked").await.unwrap();
    let t0 = std::time::Instant::now();
    loop {
        let r = send(&app, "GET", "/v1/models", Some(&second), None).await;
        if r.status == 401 {
            assert_eq!(r.json()["error"]["message"], "This API key was revoked: leaked");
            break;
        }
        assert!(t0.elapsed() < std::time::Duration::from_secs(1), "revocation elsewhere not seen after {:?}", t0.elapsed());
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    eprintln!("revocation by another process took effect after {:?}", t0.elapsed());
}

/// Same prompt from two tenants: the second tenant finds nothing cached; the first, repeating
/// itself, does.
async fn isolation(app: &Router, engine: &EngineHandle, key_a: &str, key_b: &str) {
    let prompt = long_prompt();
    let hits = || engine.stats.prefix_hit_tokens.load(Ordering::Acquire);
    let before = engine.stats.finished.load(Ordering::Acquire);
    assert_eq!(send(app, "POST", "/v1/completions", Some(key_a), Some(completion(&prompt))).await.status, 200);
    settle(engine, before + 1).await;
    let h0 = hits();
    assert_eq!(send(app, "POST", "/v1/completions", Some(key_b), Some(completion(&prompt))).await.status, 200);
    settle(engine, before + 2).await;
    assert_eq!(hits(), h0, "another tenant must not hit tenant A's cached prefix");
    assert_eq!(send(app, "POST", "/v1/completions", Some(key_a), Some(completion(&prompt))).await.status, 200);
    settle(engine, before + 3).await;
    assert!(hits() >= h0 + 64, "tenant A reuses its own prefix: {} -> {}", h0, hits());
}

async fn two_tenants(gov: &Governor) -> (String, String) {
    for t in ["a", "b"] {
        gov.create_tenant(t).await.unwrap();
    }
    let a = gov.create_key("a", sluice_govern::Role::Member, "", None).await.unwrap().secret;
    let b = gov.create_key("b", sluice_govern::Role::Member, "", None).await.unwrap().secret;
    (a, b)
}

#[tokio::test]
async fn tenants_never_share_cached_prefixes() {
    let gov = governor().await;
    let (a, b) = two_tenants(&gov).await;
    let e = engine(EngineConfig::default());
    let app = sluice_server::app_with_auth(AppState::with_model(ServedModel { name: MODEL.into(), engine: e.clone() }), Some(gov));
    isolation(&app, &e, &a, &b).await;
}

#[tokio::test]
async fn tenants_never_share_cached_prefixes_behind_the_gateway() {
    let gov = governor().await;
    let (a, b) = two_tenants(&gov).await;
    let e = engine(EngineConfig::default());
    let state = AppState::behind_gateway();
    state.set_model(ServedModel { name: MODEL.into(), engine: e.clone() });
    let mut engines: HashMap<String, Arc<dyn Backend>> = HashMap::new();
    engines.insert("local".into(), Arc::new(InProcessBackend::new(sluice_server::app(state))));
    let toml = format!("[backends.local]\nkind = \"engine\"\nmodel_path = \"unused.gguf\"\nmodel = \"{MODEL}\"\n[models.{MODEL}]\ntargets = [\"local\"]\n");
    let cfg = sluice_gateway::config::parse("test.toml", &toml, &|_| None).unwrap();
    let gateway = Arc::new(Gateway::new(&cfg, engines).unwrap());
    let app = sluice_server::gateway_app(GatewayState::new(gateway, Vec::new()).with_governor(gov));
    let r = send(&app, "POST", "/v1/completions", None, Some(completion("Hi"))).await;
    assert_eq!(r.status, 401, "the gateway requires keys too");
    isolation(&app, &e, &a, &b).await;
}

#[tokio::test]
async fn a_standalone_engine_ignores_a_namespace_header_from_clients() {
    let e = engine(EngineConfig::default());
    let app = sluice_server::app(AppState::with_model(ServedModel { name: MODEL.into(), engine: e.clone() }));
    let prompt = long_prompt();
    let post = |ns: &'static str| {
        let app = app.clone();
        let body = completion(&prompt).to_string();
        async move {
            let req = Request::builder()
                .method("POST")
                .uri("/v1/completions")
                .header("content-type", "application/json")
                .header(sluice_server::auth::NAMESPACE_HEADER, ns)
                .body(Body::from(body))
                .unwrap();
            assert_eq!(app.oneshot(req).await.unwrap().status(), 200);
        }
    };
    let before = e.stats.finished.load(Ordering::Acquire);
    post("tenant:x").await;
    settle(&e, before + 1).await;
    let h0 = e.stats.prefix_hit_tokens.load(Ordering::Acquire);
    post("tenant:y").await;
    settle(&e, before + 2).await;
    assert!(e.stats.prefix_hit_tokens.load(Ordering::Acquire) > h0, "the header is not trusted: one shared namespace");
}

#[tokio::test]
async fn admin_actions_and_refusals_land_in_a_verifiable_audit_trail() {
    let secret = b"0123456789abcdef0123456789abcdef".to_vec();
    let base = governor().await;
    let store = base.store().clone();
    let gov = Governor::new(store.clone()).with_auditor(sluice_govern::Auditor::start(store.clone(), secret.clone(), None));
    let admin = gov.bootstrap(None).await.unwrap().unwrap().secret;
    let e = engine(EngineConfig::default());
    let app = sluice_server::app_with_auth(AppState::with_model(ServedModel { name: MODEL.into(), engine: e }), Some(gov.clone()));
    let r = send(&app, "POST", "/admin/tenants", Some(&admin), Some(json!({"name": "acme"}))).await;
    assert_eq!(r.status, 201);
    let r = send(&app, "POST", "/admin/keys", Some(&admin), Some(json!({"tenant": "acme", "role": "member"}))).await;
    let member = r.json()["key"].as_str().unwrap().to_string();
    assert_eq!(send(&app, "GET", "/admin/keys", Some(&member), None).await.status, 403);
    assert_eq!(send(&app, "GET", "/v1/models", Some("sk-sluice-ffffffffffff-0000000000000000000000000000"), None).await.status, 401);
    let mut entries = Vec::new();
    for _ in 0..200 {
        entries = store.audit_entries(0, 100).await.unwrap();
        if entries.len() >= 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let kinds: Vec<&str> = entries.iter().map(|e| e.entry.kind.as_str()).collect();
    assert_eq!(kinds, ["admin.tenant_created", "admin.key_created", "auth.forbidden", "auth.failed"]);
    let all: String = entries.iter().map(|e| format!("{:?}{}", e.entry.actor, e.entry.body)).collect();
    assert!(!all.contains(&member[23..]), "no key secret in the trail");
    assert!(!all.contains("0000000000000000000000000000"), "only the public prefix of a presented key");
    assert_eq!(entries[3].entry.actor.as_deref(), Some("sk-sluice-ffffffffffff"));
    let v = sluice_govern::audit::verify(&store, &secret, None).await.unwrap();
    assert_eq!((v.entries, v.first_broken), (4, None));
}

#[tokio::test]
async fn a_member_reaches_no_admin_endpoint_and_no_other_tenants_data() {
    let gov = governor().await;
    let admin = gov.bootstrap(None).await.unwrap().unwrap().secret;
    let (a, _b) = two_tenants(&gov).await;
    let e = engine(EngineConfig::default());
    let app = sluice_server::app_with_auth(AppState::with_model(ServedModel { name: MODEL.into(), engine: e }), Some(gov));
    let admin_calls: [(&str, &str, Option<Value>); 8] = [
        ("GET", "/admin/tenants", None),
        ("POST", "/admin/tenants", Some(json!({"name": "x"}))),
        ("GET", "/admin/keys", None),
        ("POST", "/admin/keys", Some(json!({"tenant": "b", "role": "admin"}))),
        ("POST", "/admin/keys/key_0000/revoke", Some(json!({}))),
        ("GET", "/admin/limits", None),
        ("PUT", "/admin/limits", Some(json!({"scope": "tenant", "tenant": "b", "rpm": 1}))),
        ("PUT", "/admin/tenants/b/logging", Some(json!({"policy": "full"}))),
    ];
    for (method, path, body) in admin_calls {
        let r = send(&app, method, path, Some(&a), body.clone()).await;
        assert_eq!(r.status, 403, "{method} {path}: {}", r.text);
        assert_eq!(r.json()["error"]["code"], "forbidden");
        // The same call by an admin is not refused (so the 403 above is the role, not the route).
        let r = send(&app, method, path, Some(&admin), body).await;
        assert_ne!(r.status, 403, "{method} {path}");
    }
}
