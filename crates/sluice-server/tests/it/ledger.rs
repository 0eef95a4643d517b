//! The ledger end to end through the gateway: budgets under concurrency (also two gateways
//! sharing PostgreSQL), limits, and ledger rows that match what the backends reported, for
//! streamed, whole, cancelled and failed requests.

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
use sluice_govern::{Governor, Ledger, Role};
use sluice_server::GatewayState;
use sluice_server::ledger::LedgerGovernance;
use sluice_store::{Limits, Store};
use tower::ServiceExt;

use crate::Reply;

async fn sqlite_store() -> Store {
    Store::open(&sluice_store::testing::sqlite_url("ledger")).await.unwrap()
}

async fn postgres_url() -> Option<String> {
    sluice_store::testing::postgres_url("srv").await
}

struct Governed {
    app: Router,
    store: Store,
    member: String,
    tenant_id: String,
}

/// A gateway over `upstreams` (name, url, extra TOML) with route `m` over them, API keys and
/// the ledger on `store`; a member key of tenant `acme`.
async fn governed(store: Store, upstreams: &[(&str, String, &str)], route_extra: &str, key: Option<String>) -> Governed {
    let mut toml = String::new();
    for (name, url, extra) in upstreams {
        toml += &format!("[backends.{name}]\nkind = \"openai\"\nbase_url = \"{url}\"\n{extra}\n");
    }
    let names: Vec<String> = upstreams.iter().map(|u| format!("\"{}\"", u.0)).collect();
    toml += &format!("[models.m]\ntargets = [{}]\n{route_extra}\n", names.join(", "));
    let cfg = sluice_gateway::config::parse("test.toml", &toml, &|_| None).unwrap();
    let mut gateway = Gateway::new(&cfg, HashMap::new()).unwrap();
    let gov = Governor::new(store.clone());
    let tenant = gov.ensure_tenant("acme").await.unwrap();
    let member = match key {
        Some(k) => k,
        None => gov.create_key("acme", Role::Member, "test", None).await.unwrap().secret,
    };
    let ledger = Ledger::start(store.clone()).await.unwrap();
    gateway.set_governance(Arc::new(LedgerGovernance::new(ledger.clone())));
    let state = GatewayState::new(Arc::new(gateway), Vec::new()).with_governor(gov).with_ledger(ledger);
    Governed { app: sluice_server::gateway_app(state), store, member, tenant_id: tenant.id }
}

async fn post(app: &Router, key: &str, body: Value, feature: Option<&str>) -> Reply {
    let mut req = Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {key}"));
    if let Some(f) = feature {
        req = req.header("x-sluice-feature", f);
    }
    let resp = app.clone().oneshot(req.body(Body::from(body.to_string())).unwrap()).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    Reply { status, headers, text: String::from_utf8_lossy(&bytes).into_owned() }
}

fn chat(max_tokens: u32, stream: bool) -> Value {
    json!({"model": "m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": max_tokens, "stream": stream})
}

/// Waits until every ledger row is settled (settlement runs just after the response).
async fn settled_rows(store: &Store, expected: usize) -> Vec<sluice_store::LedgerRow> {
    for _ in 0..500 {
        let rows = store.ledger_rows(0, i64::MAX).await.unwrap();
        if rows.len() >= expected && rows.iter().all(|r| r.state == "settled") {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rows = store.ledger_rows(0, i64::MAX).await.unwrap();
    panic!("{} rows, {} settled, expected {expected}", rows.len(), rows.iter().filter(|r| r.state == "settled").count());
}

/// Output at $1,000 per million tokens: 10 tokens cost $0.01.
const PRICED: &str = "price = { input = 0.0, output = 1000.0 }";

async fn budget_case(stores: Vec<Store>) {
    let mock = MockUpstream::start("up", MockBehaviour { latency: Duration::from_millis(300), ..Default::default() }).await.unwrap();
    let first = governed(stores[0].clone(), &[("up", mock.url(), PRICED)], "", None).await;
    let mut gateways = vec![first.app.clone()];
    for s in &stores[1..] {
        // Another gateway process on the same database, the same key.
        gateways.push(governed(s.clone(), &[("up", mock.url(), PRICED)], "", Some(first.member.clone())).await.app);
    }
    // A daily budget that fits 10 requests of at most 10 output tokens.
    let limits = Limits { usd_micros_per_day: Some(100_000), ..Default::default() };
    first.store.set_limits("tenant", &first.tenant_id, &limits).await.unwrap();
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let app = gateways[i % gateways.len()].clone();
            let key = first.member.clone();
            tokio::spawn(async move { post(&app, &key, chat(10, false), None).await })
        })
        .collect();
    let mut ok = 0;
    let mut refused = 0;
    for t in tasks {
        let r = t.await.unwrap();
        match r.status.as_u16() {
            200 => ok += 1,
            429 => {
                let j = r.json();
                assert_eq!(j["error"]["code"], "budget_exceeded", "{j}");
                assert!(j["error"]["message"].as_str().unwrap().contains("$0.1000 per day"), "{j}");
                assert!(r.headers.contains_key("retry-after"));
                refused += 1;
            }
            s => panic!("unexpected {s}: {}", r.text),
        }
    }
    assert_eq!((ok, refused), (10, 40));
    let rows = settled_rows(&first.store, 10).await;
    assert_eq!(rows.len(), 10, "refused requests leave no ledger row");
    let period = sluice_govern::periods(sluice_store::now_ms()).0.0;
    let (spent, held) = first.store.spend("tenant", &first.tenant_id, &period).await.unwrap();
    assert_eq!((spent, held), (100_000, 0), "spent exactly the budget, nothing left held");
    assert!(rows.iter().all(|r| r.cost_micros == Some(10_000)));
}

#[tokio::test]
async fn fifty_concurrent_requests_against_a_budget_for_ten_sqlite() {
    budget_case(vec![sqlite_store().await]).await;
}

#[tokio::test]
async fn fifty_concurrent_requests_against_a_budget_for_ten_two_gateways_on_postgres() {
    let Some(url) = postgres_url().await else { return };
    let a = Store::open(&url).await.unwrap();
    let b = Store::open(&url).await.unwrap();
    budget_case(vec![a, b]).await;
}

#[tokio::test]
async fn rate_limits_say_which_limit() {
    let mock = MockUpstream::start("up", MockBehaviour::default()).await.unwrap();
    let g = governed(sqlite_store().await, &[("up", mock.url(), PRICED)], "", None).await;
    g.store.set_limits("feature", &format!("{}/search", g.tenant_id), &Limits { rpm: Some(2), ..Default::default() }).await.unwrap();
    for _ in 0..2 {
        assert_eq!(post(&g.app, &g.member, chat(2, false), Some("search")).await.status, 200);
    }
    let r = post(&g.app, &g.member, chat(2, false), Some("search")).await;
    assert_eq!(r.status, 429);
    let j = r.json();
    assert_eq!(j["error"]["code"], "rate_limit_exceeded");
    assert!(j["error"]["message"].as_str().unwrap().contains("2 requests per minute"), "{j}");
    // Another feature of the same tenant is not limited.
    assert_eq!(post(&g.app, &g.member, chat(2, false), Some("chat")).await.status, 200);
    let rows = settled_rows(&g.store, 3).await;
    let features: Vec<&str> = rows.iter().map(|r| r.feature.as_str()).collect();
    assert_eq!(features.iter().filter(|f| **f == "search").count(), 2);
    assert!(features.contains(&"chat"));
}

#[tokio::test]
async fn ledger_rows_match_what_backends_reported_for_every_request() {
    // `good` answers; `flaky` fails every 3rd request (retried on `good`); streams drip tokens.
    let drip = Duration::from_millis(2);
    let good = MockUpstream::start("good", MockBehaviour { token_delay: drip, ..Default::default() }).await.unwrap();
    let flaky = MockUpstream::start("flaky", MockBehaviour { token_delay: drip, fail_every: Some(3), ..Default::default() }).await.unwrap();
    let g = governed(
        sqlite_store().await,
        &[("good", good.url(), PRICED), ("flaky", flaky.url(), PRICED)],
        "retry = { backoff_base_ms = 1, backoff_max_ms = 2 }",
        None,
    )
    .await;
    let mut expected: HashMap<String, (u64, &'static str)> = HashMap::new();
    let mut cancelled = Vec::new();
    let total = 1000;
    let mut tasks = Vec::new();
    for i in 0..total {
        let app = g.app.clone();
        let key = g.member.clone();
        tasks.push(tokio::spawn(async move {
            let max_tokens = 1 + (i % 7) as u32;
            match i % 4 {
                // Whole response.
                0 | 1 => {
                    let r = post(&app, &key, chat(max_tokens, false), None).await;
                    assert_eq!(r.status, 200, "{}", r.text);
                    let id = r.headers["x-request-id"].to_str().unwrap().to_string();
                    (id, r.json()["usage"]["completion_tokens"].as_u64().unwrap(), "whole")
                }
                // Streamed to the end, with the usage chunk.
                2 => {
                    let mut body = chat(max_tokens, true);
                    body["stream_options"] = json!({"include_usage": true});
                    let r = post(&app, &key, body, None).await;
                    let id = r.headers["x-request-id"].to_str().unwrap().to_string();
                    let events = r.sse();
                    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
                    (id, usage["usage"]["completion_tokens"].as_u64().unwrap(), "stream")
                }
                // Streamed, the client leaves after the first frame.
                _ => {
                    let req = Request::builder()
                        .method("POST")
                        .uri("/v1/chat/completions")
                        .header("content-type", "application/json")
                        .header("authorization", format!("Bearer {key}"))
                        .body(Body::from(chat(200, true).to_string()))
                        .unwrap();
                    let resp = app.oneshot(req).await.unwrap();
                    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
                    let mut body = resp.into_body();
                    let _ = body.frame().await;
                    drop(body);
                    (id, 0, "cancelled")
                }
            }
        }));
        if tasks.len() >= 16 {
            for t in tasks.drain(..) {
                let (id, tokens, kind) = t.await.unwrap();
                if kind == "cancelled" {
                    cancelled.push(id);
                } else {
                    expected.insert(id, (tokens, kind));
                }
            }
        }
    }
    for t in tasks {
        let (id, tokens, kind) = t.await.unwrap();
        if kind == "cancelled" {
            cancelled.push(id);
        } else {
            expected.insert(id, (tokens, kind));
        }
    }
    let rows = settled_rows(&g.store, total).await;
    assert_eq!(rows.len(), total, "one row per request");
    let mut mismatches = Vec::new();
    let mut retried = 0;
    for row in &rows {
        if row.attempts.unwrap_or(0) > 1 {
            retried += 1;
        }
        if let Some((tokens, kind)) = expected.get(&row.request_id) {
            if row.completion_tokens != Some(*tokens as i64) || row.outcome.as_deref() != Some("ok") {
                mismatches.push(format!("{kind} {}: ledger {:?} {:?}, reported {tokens}", row.request_id, row.completion_tokens, row.outcome));
            }
            if row.cost_micros != Some(*tokens as i64 * 1000) {
                mismatches.push(format!("{kind} {}: cost {:?} for {tokens} tokens", row.request_id, row.cost_micros));
            }
        } else {
            assert!(cancelled.contains(&row.request_id), "row for an unknown request {}", row.request_id);
            // A cancelled stream is charged the tokens that reached the gateway before the
            // client left: at least the one the client saw, never the 200 it asked for.
            let t = row.completion_tokens.unwrap_or(0);
            if row.outcome.as_deref() != Some("client_gone") || !(1..200).contains(&t) {
                mismatches.push(format!("cancelled {}: {:?} {t} tokens", row.request_id, row.outcome));
            }
        }
    }
    assert!(mismatches.is_empty(), "{} of {total} rows disagree: {:#?}", mismatches.len(), &mismatches[..mismatches.len().min(10)]);
    assert!(retried > 50, "failed upstream attempts were retried and recorded: {retried}");
    eprintln!("ledger: {total} requests ({} cancelled mid-stream, {retried} retried after an upstream failure): every row matches", cancelled.len());
}

#[tokio::test]
async fn usage_reports_by_feature_for_members_and_csv() {
    let mock = MockUpstream::start("up", MockBehaviour::default()).await.unwrap();
    let g = governed(sqlite_store().await, &[("up", mock.url(), PRICED)], "", None).await;
    for f in ["search", "search", "chat"] {
        assert_eq!(post(&g.app, &g.member, chat(3, false), Some(f)).await.status, 200);
    }
    settled_rows(&g.store, 3).await;
    let get = |q: &str| {
        let app = g.app.clone();
        let key = g.member.clone();
        let q = q.to_string();
        async move {
            let req = Request::builder().uri(format!("/v1/usage?{q}")).header("authorization", format!("Bearer {key}")).body(Body::empty()).unwrap();
            let resp = app.oneshot(req).await.unwrap();
            let status = resp.status();
            (status, String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).into_owned())
        }
    };
    let (status, text) = get("group_by=feature&granularity=hour").await;
    assert_eq!(status, 200, "{text}");
    let j: Value = serde_json::from_str(&text).unwrap();
    let data = j["data"].as_array().unwrap();
    let search = data.iter().find(|d| d["group"] == "search").unwrap();
    assert_eq!((search["requests"].as_i64(), search["completion_tokens"].as_i64()), (Some(2), Some(6)));
    assert!((search["cost_usd"].as_f64().unwrap() - 0.006).abs() < 1e-9);
    let (_, csv) = get("group_by=feature&format=csv").await;
    assert!(csv.starts_with("bucket_start,group,requests"), "{csv}");
    assert_eq!(csv.lines().count(), 3);
    let (status, _) = get("tenant=someone-else").await;
    assert_eq!(status, 404, "members see only their tenant; others do not exist for them");
    let (status, text) = get("group_by=colour").await;
    assert_eq!(status, 400, "{text}");
}

#[tokio::test]
async fn an_hourly_engine_charges_each_request_its_share_of_the_steps() {
    use sluice_engine::EngineConfig;
    use sluice_gateway::{Backend, InProcessBackend};
    use sluice_server::{AppState, ServedModel};

    let store = sqlite_store().await;
    let e = crate::engine(EngineConfig::default());
    let state = AppState::behind_gateway();
    state.set_model(ServedModel { name: crate::MODEL.into(), engine: e });
    let mut engines: HashMap<String, Arc<dyn Backend>> = HashMap::new();
    engines.insert("local".into(), Arc::new(InProcessBackend::new(sluice_server::app(state))));
    // $36 per hour: 1 ms of engine time costs 10 µ$.
    let toml = format!(
        "[backends.local]\nkind = \"engine\"\nmodel_path = \"unused.gguf\"\nmodel = \"{}\"\nhourly_cost = 36.0\n[models.m]\ntargets = [\"local\"]\n",
        crate::MODEL
    );
    let cfg = sluice_gateway::config::parse("test.toml", &toml, &|_| None).unwrap();
    let mut gateway = Gateway::new(&cfg, engines).unwrap();
    let gov = Governor::new(store.clone());
    gov.ensure_tenant("acme").await.unwrap();
    let key = gov.create_key("acme", Role::Member, "", None).await.unwrap().secret;
    let ledger = Ledger::start(store.clone()).await.unwrap();
    gateway.set_governance(Arc::new(LedgerGovernance::new(ledger.clone())));
    let app = sluice_server::gateway_app(GatewayState::new(Arc::new(gateway), Vec::new()).with_governor(gov).with_ledger(ledger));

    let prompt = "The history of the printing press begins in the fifteenth century, when movable type changed how books were made. ".repeat(3);
    let body = |p: &str| json!({"model": "m", "messages": [{"role": "user", "content": p}], "max_tokens": 8, "temperature": 0, "ignore_eos": true});
    let t0 = std::time::Instant::now();
    let tasks: Vec<_> = (0..6)
        .map(|i| {
            let app = app.clone();
            let key = key.clone();
            let b = body(&format!("{i}: {prompt}"));
            tokio::spawn(async move { post(&app, &key, b, None).await })
        })
        .collect();
    let mut compute = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text);
        let j = r.json();
        compute.push((r.headers["x-request-id"].to_str().unwrap().to_string(), j["usage"]["compute_seconds"].as_f64().unwrap()));
    }
    let wall = t0.elapsed().as_secs_f64();
    let total: f64 = compute.iter().map(|c| c.1).sum();
    assert!(total <= wall * 1.01 && total > 0.3 * wall, "shares add up to the busy time: {total:.4} s of {wall:.4} s");
    // The same prompt again: its prefix is cached, and the cached tokens are reported and booked.
    let again = post(&app, &key, body(&format!("0: {prompt}")), None).await.json();
    let cached = again["usage"]["prompt_tokens_details"]["cached_tokens"].as_i64().unwrap();
    assert!(cached >= 16, "{again}");
    let rows = settled_rows(&store, 7).await;
    for (id, seconds) in &compute {
        let row = rows.iter().find(|r| &r.request_id == id).unwrap();
        assert_eq!(row.cost_micros, Some((36.0 * 1e6 * seconds / 3600.0).ceil() as i64), "{id}");
    }
    assert!(rows.iter().any(|r| r.cached_tokens == Some(cached)));
}
