//! `/v1/embeddings` and `/v1/collections` over HTTP behind API keys: the lifecycle of a
//! collection, errors in OpenAI's shape, and tenants kept apart on every endpoint.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sluice_gateway::Gateway;
use sluice_govern::{Governor, Role};
use sluice_retrieval::Collections;
use sluice_retrieval::testing::embedders;
use sluice_server::GatewayState;
use tower::ServiceExt;

async fn call(app: &Router, method: &str, path: &str, key: &str, body: Option<Value>) -> (u16, Value) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {key}"))
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

async fn app() -> (Router, String, String) {
    let store = sluice_store::Store::open(&sluice_store::testing::sqlite_url("http_coll")).await.unwrap();
    let gov = Governor::new(store.clone());
    for t in ["a", "b"] {
        gov.ensure_tenant(t).await.unwrap();
    }
    let ka = gov.create_key("a", Role::Member, "", None).await.unwrap().secret;
    let kb = gov.create_key("b", Role::Member, "", None).await.unwrap().secret;
    let dir = std::env::temp_dir().join(format!("sluice-http-index-{}-{}", std::process::id(), sluice_store::now_ms()));
    let collections = Arc::new(Collections::open(store, embedders(), dir).await.unwrap());
    let toml = "[backends.up]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\n[models.m]\ntargets = [\"up\"]\n";
    let cfg = sluice_gateway::config::parse("test.toml", toml, &|_| None).unwrap();
    let gateway = Arc::new(Gateway::new(&cfg, std::collections::HashMap::new()).unwrap());
    let state = GatewayState::new(gateway, Vec::new()).with_governor(gov).with_embedders(embedders()).with_collections(collections);
    (sluice_server::gateway_app(state), ka, kb)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collection_over_http_from_creation_to_deletion() {
    let (app, ka, _) = app().await;
    let (s, v) = call(&app, "POST", "/v1/collections", &ka, Some(json!({"name": "kb", "chunk_size": 64, "chunk_overlap": 8}))).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!((v["collection"]["model"].as_str(), v["collection"]["dim"].as_u64()), (Some("minilm"), Some(384)));
    let (s, _) = call(&app, "POST", "/v1/collections", &ka, Some(json!({"name": "kb"}))).await;
    assert_eq!(s, 409);
    let docs = json!({"documents": [
        {"id": "faq-1", "text": "Refunds are issued within 14 days of a return.", "metadata": {"topic": "billing"}},
        {"id": "faq-2", "text": "Passwords can be reset from the login page.", "metadata": {"topic": "account"}, "ttl_seconds": 3600}
    ]});
    let (s, v) = call(&app, "POST", "/v1/collections/kb/documents", &ka, Some(docs)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"][0]["version"], 1);
    let (s, v) = call(&app, "POST", "/v1/collections/kb/query", &ka, Some(json!({"query": "how do I get my money back", "k": 1, "mode": "vector"}))).await;
    assert_eq!(s, 200, "{v}");
    let hit = &v["data"][0];
    assert_eq!((hit["document_id"].as_str(), hit["version"].as_i64(), hit["chunk_index"].as_i64()), (Some("faq-1"), Some(1), Some(0)));
    assert!(hit["age_seconds"].as_f64().unwrap() >= 0.0 && hit["score"].as_f64().unwrap() > 0.3);
    let (s, v) = call(&app, "POST", "/v1/collections/kb/query", &ka, Some(json!({"query": "reset password", "filter": {"topic": "account"}}))).await;
    assert_eq!((s, v["data"][0]["document_id"].as_str()), (200, Some("faq-2")));
    let (s, v) = call(&app, "GET", "/v1/collections/kb/stats", &ka, None).await;
    assert_eq!((s, v["stats"]["documents"].as_i64(), v["stats"]["expired"].as_i64()), (200, Some(2), Some(0)));
    let (s, v) = call(&app, "POST", "/v1/collections/kb/query", &ka, Some(json!({"query": "x", "mode": "fuzzy"}))).await;
    assert_eq!((s, v["error"]["param"].as_str()), (400, Some("mode")));
    let (s, v) = call(&app, "POST", "/v1/collections/kb/documents", &ka, Some(json!({"documents": [{"id": "faq-1", "text": "old", "version": 1}]}))).await;
    assert_eq!((s, v["error"]["code"].as_str()), (409, Some("conflict")));
    let (s, _) = call(&app, "DELETE", "/v1/collections/kb/documents/faq-1", &ka, None).await;
    assert_eq!(s, 200);
    let (_, v) = call(&app, "POST", "/v1/collections/kb/query", &ka, Some(json!({"query": "refunds within 14 days", "k": 5}))).await;
    assert!(v["data"].as_array().unwrap().iter().all(|h| h["document_id"] != "faq-1"));
    let (s, _) = call(&app, "DELETE", "/v1/collections/kb", &ka, None).await;
    assert_eq!(s, 200);
    let (_, v) = call(&app, "GET", "/v1/collections", &ka, None).await;
    assert_eq!(v["data"].as_array().unwrap().len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_collection_does_not_exist_on_any_endpoint() {
    let (app, ka, kb) = app().await;
    call(&app, "POST", "/v1/collections", &ka, Some(json!({"name": "private"}))).await;
    let (s, _) = call(&app, "POST", "/v1/collections/private/documents", &ka, Some(json!({"documents": [{"id": "d", "text": "secret plans"}]}))).await;
    assert_eq!(s, 200);
    let never = call(&app, "GET", "/v1/collections/never-made", &kb, None).await;
    assert_eq!((never.0, never.1["error"]["code"].as_str()), (404, Some("not_found")));
    let calls: [(&str, &str, Option<Value>); 6] = [
        ("GET", "/v1/collections/private", None),
        ("GET", "/v1/collections/private/stats", None),
        ("POST", "/v1/collections/private/query", Some(json!({"query": "secret plans"}))),
        ("POST", "/v1/collections/private/documents", Some(json!({"documents": [{"id": "d", "text": "overwrite"}]}))),
        ("DELETE", "/v1/collections/private/documents/d", None),
        ("DELETE", "/v1/collections/private", None),
    ];
    for (method, path, body) in calls {
        let (s, v) = call(&app, method, path, &kb, body).await;
        assert_eq!((s, v["error"]["code"].as_str()), (404, Some("not_found")), "{method} {path}: {v}");
    }
    let (_, v) = call(&app, "GET", "/v1/collections", &kb, None).await;
    assert_eq!(v["data"].as_array().unwrap().len(), 0);
    // Still there, untouched, for its owner.
    let (s, v) = call(&app, "POST", "/v1/collections/private/query", &ka, Some(json!({"query": "secret plans", "k": 1}))).await;
    assert_eq!((s, v["data"][0]["text"].as_str()), (200, Some("secret plans")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_need_a_key_and_name_bad_inputs() {
    let (app, ka, _) = app().await;
    let (s, _) = call(&app, "POST", "/v1/embeddings", "sk-wrong", Some(json!({"model": "minilm", "input": "x"}))).await;
    assert_eq!(s, 401);
    let (s, v) = call(&app, "POST", "/v1/embeddings", &ka, Some(json!({"model": "minilm", "input": ["a", "b"]}))).await;
    assert_eq!((s, v["data"].as_array().unwrap().len()), (200, 2));
    let (s, v) = call(&app, "POST", "/v1/embeddings", &ka, Some(json!({"model": "minilm", "input": []}))).await;
    assert_eq!((s, v["error"]["param"].as_str()), (400, Some("input")));
    let (s, v) = call(&app, "POST", "/v1/embeddings", &ka, Some(json!({"model": "minilm", "input": "x", "encoding_format": "hex"}))).await;
    assert_eq!((s, v["error"]["param"].as_str()), (400, Some("encoding_format")));
    let (s, v) = call(&app, "POST", "/v1/embeddings", &ka, Some(json!({"model": "minilm", "input": 5}))).await;
    assert_eq!((s, v["error"]["param"].as_str()), (400, Some("input")), "{v}");
}

/// A gateway app with API keys, the ledger and collections; the store and a member key.
async fn governed_app(tag: &str) -> (Router, sluice_store::Store, String, String) {
    let store = sluice_store::Store::open(&sluice_store::testing::sqlite_url(tag)).await.unwrap();
    let gov = Governor::new(store.clone());
    let tenant = gov.ensure_tenant("a").await.unwrap();
    let key = gov.create_key("a", Role::Member, "", None).await.unwrap().secret;
    let ledger = sluice_govern::Ledger::start(store.clone()).await.unwrap();
    let toml = "[backends.up]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\n[models.m]\ntargets = [\"up\"]\n";
    let cfg = sluice_gateway::config::parse("test.toml", toml, &|_| None).unwrap();
    let mut gateway = Gateway::new(&cfg, std::collections::HashMap::new()).unwrap();
    gateway.set_governance(Arc::new(sluice_server::ledger::LedgerGovernance::new(ledger.clone())));
    let dir = std::env::temp_dir().join(format!("sluice-gov-index-{}-{}", std::process::id(), sluice_store::now_ms()));
    let collections = Arc::new(Collections::open(store.clone(), embedders(), dir).await.unwrap());
    let state =
        GatewayState::new(Arc::new(gateway), Vec::new()).with_governor(gov).with_ledger(ledger).with_embedders(embedders()).with_collections(collections);
    (sluice_server::gateway_app(state), store, tenant.id, key)
}

async fn settled(store: &sluice_store::Store, n: usize) -> Vec<sluice_store::LedgerRow> {
    let mut rows = Vec::new();
    for _ in 0..300 {
        rows = store.ledger_rows(0, i64::MAX).await.unwrap();
        if rows.iter().filter(|r| r.state == "settled").count() >= n {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    rows.sort_by_key(|r| r.created_ms);
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collection_writes_and_queries_land_in_the_ledger() {
    let (app, store, _, key) = governed_app("http_coll_ledger").await;
    assert_eq!(call(&app, "POST", "/v1/collections", &key, Some(json!({"name": "kb"}))).await.0, 201);
    let (s, v) = call(&app, "POST", "/v1/collections/kb/documents", &key, Some(json!({"documents": [{"id": "d", "text": "Invoices are due in 30 days."}]}))).await;
    assert_eq!(s, 200, "{v}");
    let embedded = v["data"][0]["tokens"].as_i64().unwrap();
    assert!(embedded > 5);
    assert_eq!(call(&app, "POST", "/v1/collections/kb/query", &key, Some(json!({"query": "when are invoices due"}))).await.0, 200);
    let rows = settled(&store, 2).await;
    let got: Vec<(&str, Option<&str>)> = rows.iter().map(|r| (r.route.as_str(), r.outcome.as_deref())).collect();
    assert_eq!(got, [("minilm", Some("ok")), ("minilm", Some("ok"))]);
    assert_eq!(rows[0].prompt_tokens, Some(embedded), "the write is charged the tokens it embedded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_are_rate_limited_and_land_in_the_ledger() {
    let (app, store, tenant_id, key) = governed_app("http_embed_ledger").await;
    store.set_limits("tenant", &tenant_id, &sluice_store::Limits { rpm: Some(2), ..Default::default() }).await.unwrap();
    let (s, v) = call(&app, "POST", "/v1/embeddings", &key, Some(json!({"model": "minilm", "input": ["one two", "three"]}))).await;
    assert_eq!(s, 200, "{v}");
    let tokens = v["usage"]["prompt_tokens"].as_i64().unwrap();
    // Refused before admission: no row, no request counted.
    let (s, _) = call(&app, "POST", "/v1/embeddings", &key, Some(json!({"model": "minilm", "input": "word ".repeat(600)}))).await;
    assert_eq!(s, 400);
    let (s, _) = call(&app, "POST", "/v1/embeddings", &key, Some(json!({"model": "minilm", "input": "word ".repeat(600), "truncate": true}))).await;
    assert_eq!(s, 200);
    let (s, v) = call(&app, "POST", "/v1/embeddings", &key, Some(json!({"model": "minilm", "input": "x"}))).await;
    assert_eq!((s, v["error"]["code"].as_str()), (429, Some("rate_limit_exceeded")), "{v}");
    let rows = settled(&store, 2).await;
    type Row<'a> = (&'a str, Option<i64>, Option<&'a str>, Option<i64>);
    let summary: Vec<Row> = rows.iter().map(|r| (r.route.as_str(), r.status, r.outcome.as_deref(), r.prompt_tokens)).collect();
    assert_eq!(summary.len(), 2, "the refused request has no row: {summary:?}");
    assert_eq!(summary[0], ("minilm", Some(200), Some("ok"), Some(tokens)));
    assert_eq!(summary[1], ("minilm", Some(200), Some("ok"), Some(512)));
}
