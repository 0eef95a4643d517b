//! `kill -9` of a governed `sluice serve` under load, then a restart on the same store: every
//! request it admitted has exactly one settled ledger row.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code may unwrap")]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sluice_gateway::mock::{MockBehaviour, MockUpstream};
use sluice_govern::{Governor, Role};
use sluice_store::Store;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start(config: &std::path::Path, log: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

async fn wait_ready(port: u16) {
    let t0 = Instant::now();
    while !reqwest::get(format!("http://127.0.0.1:{port}/ready")).await.is_ok_and(|r| r.status().is_success()) {
        assert!(t0.elapsed() < Duration::from_secs(30), "server not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admitted_request_is_settled_once_after_a_kill_9() {
    let dir = std::env::temp_dir().join(format!("sluice-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let db = format!("sqlite://{}", dir.join("sluice.db").display());
    let key = {
        let gov = Governor::new(Store::open(&db).await.unwrap());
        let t = gov.ensure_tenant("acme").await.unwrap();
        // A daily budget: requests are admitted against the process's allowance of it.
        let limits = sluice_store::Limits { usd_micros_per_day: Some(1_000_000_000), ..Default::default() };
        gov.store().set_limits("tenant", &t.id, &limits).await.unwrap();
        (gov.create_key("acme", Role::Member, "load", None).await.unwrap().secret, t.id)
    };
    let (key, tenant_id) = key;
    let mock = MockUpstream::start("up", MockBehaviour { token_delay: Duration::from_millis(40), ..Default::default() }).await.unwrap();
    let port = free_port();
    let config = dir.join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nport = {port}\n[store]\ndatabase_url = \"{db}\"\n[audit]\nsecret_file = \"{}\"\n[backends.up]\nkind = \"openai\"\nbase_url = \"{}\"\n\
             price = {{ input = 1.0, output = 2.0 }}\n[models.m]\ntargets = [\"up\"]\n",
            dir.join("audit.key").display(),
            mock.url()
        ),
    )
    .unwrap();
    let mut server = start(&config, &dir.join("first.log"));
    wait_ready(port).await;

    // A few requests that finish (and are charged), then a steady load of streams (~0.8 s
    // each), then the process dies mid-flight.
    let client = reqwest::Client::new();
    let mut finished = Vec::new();
    for _ in 0..3 {
        let body = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2});
        let resp = client.post(format!("http://127.0.0.1:{port}/v1/chat/completions")).bearer_auth(&key).json(&body).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        finished.push(resp.headers()["x-request-id"].to_str().unwrap().to_string());
    }
    let mut tasks = Vec::new();
    for i in 0..24 {
        let client = client.clone();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(25 * i)).await;
            let body = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 20, "stream": true});
            let resp = client.post(format!("http://127.0.0.1:{port}/v1/chat/completions")).bearer_auth(&key).json(&body).send().await.ok()?;
            let id = resp.headers().get("x-request-id")?.to_str().ok()?.to_string();
            let _ = resp.text().await; // cut short by the kill
            Some(id)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let day = sluice_govern::periods(sluice_store::now_ms()).0.0;
    let (_, held) = Store::open(&db).await.unwrap().spend("tenant", &tenant_id, &day).await.unwrap();
    assert!(held > 0, "the process holds an allowance of the budget");
    server.kill().unwrap(); // SIGKILL
    server.wait().unwrap();
    let mut admitted = Vec::new();
    for t in tasks {
        if let Some(id) = t.await.unwrap() {
            admitted.push(id);
        }
    }
    assert!(admitted.len() >= 10, "requests were in flight when the server died: {}", admitted.len());

    let mut server = start(&config, &dir.join("second.log"));
    wait_ready(port).await;
    let store = Store::open(&db).await.unwrap();
    let rows = store.ledger_rows(0, i64::MAX).await.unwrap();
    server.kill().unwrap();
    server.wait().unwrap();
    for id in &admitted {
        let mine: Vec<_> = rows.iter().filter(|r| &r.request_id == id).collect();
        assert_eq!(mine.len(), 1, "request {id}: {} rows", mine.len());
        assert_eq!(mine[0].state, "settled", "request {id}");
    }
    assert!(rows.iter().all(|r| r.state == "settled"), "no reservation left open");
    let crashed = rows.iter().filter(|r| r.outcome.as_deref() == Some("server_crashed")).count();
    assert!(crashed > 0, "the in-flight requests were recovered");
    // The budget: what was spent is exactly what the ledger charged; the dead process's
    // allowance went back (nothing stays reserved).
    let (spent, reserved) = store.spend("tenant", &tenant_id, &day).await.unwrap();
    let charged: i64 = rows.iter().filter_map(|r| r.cost_micros).sum();
    assert_eq!((spent, reserved), (charged, 0), "budget after recovery");
    for id in &finished {
        let r = rows.iter().find(|r| &r.request_id == id).unwrap();
        assert!(r.outcome.as_deref() == Some("ok") && r.cost_micros.unwrap_or(0) > 0, "{id} finished and was charged: {r:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
