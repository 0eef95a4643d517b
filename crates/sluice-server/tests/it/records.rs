//! Recorded data is visible only within its tenant: ledger rows, audit entries (with the request
//! content the policy let through) and usage. Another tenant's record answers exactly as one
//! that never existed (404), whichever endpoint is asked.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use serde_json::Value;
use sluice_gateway::mock::MockBehaviour;
use sluice_govern::{Governor, LoggingPolicy, Role};
use tower::ServiceExt;

use crate::logging::logging_setup::{SECRET, chat, post, request_entries, setup};

async fn get(app: &Router, key: &str, path: &str) -> (u16, Value) {
    let req = Request::builder().uri(path).header("authorization", format!("Bearer {key}")).body(Body::empty()).unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// Request ids of a tenant's settled ledger rows, once `n` are there.
async fn settled_ids(app: &Router, key: &str, n: usize) -> Vec<String> {
    for _ in 0..300 {
        let (status, v) = get(app, key, "/v1/requests").await;
        assert_eq!(status, 200, "{v}");
        let ids: Vec<String> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["state"] == "settled")
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect();
        if ids.len() >= n {
            return ids;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("ledger rows did not settle");
}

#[tokio::test]
async fn every_read_endpoint_keeps_tenants_apart() {
    let s = setup(&[("a", LoggingPolicy::Full), ("b", LoggingPolicy::Full)], MockBehaviour::default()).await;
    let admin = Governor::new(s.store.clone()).create_key("a", Role::Admin, "", None).await.unwrap().secret;
    let (ka, kb) = (&s.keys["a"], &s.keys["b"]);
    for (key, stream) in [(ka, false), (ka, true), (kb, false)] {
        assert_eq!(post(&s.app, key, chat(stream)).await.0, 200);
    }
    let a_ids = settled_ids(&s.app, ka, 2).await;
    let b_ids = settled_ids(&s.app, kb, 1).await;
    assert_eq!((a_ids.len(), b_ids.len()), (2, 1), "each tenant lists exactly its own requests");
    assert!(a_ids.iter().all(|id| !b_ids.contains(id)));
    request_entries(&s.store, 3).await;

    // One's own request: the row and its attempts.
    let (status, row) = get(&s.app, ka, &format!("/v1/requests/{}", a_ids[0])).await;
    assert_eq!(status, 200, "{row}");
    assert_eq!((row["route"].as_str(), row["backend"].as_str(), row["outcome"].as_str()), (Some("m"), Some("up"), Some("ok")));
    assert_eq!(row["attempt_log"].as_array().unwrap().len(), 1);
    assert_eq!(row["completion_tokens"], 3);

    // Audit entries: a's own, with its content; nothing of b's.
    let (status, audit_a) = get(&s.app, ka, "/v1/audit").await;
    assert_eq!(status, 200);
    let entries = audit_a["data"].as_array().unwrap();
    let a_tenant = row["tenant_id"].clone();
    assert!(entries.iter().all(|e| e["tenant_id"] == a_tenant), "{audit_a}");
    let requests: Vec<&Value> = entries.iter().filter(|e| e["kind"] == "request").collect();
    assert_eq!(requests.len(), 2);
    assert!(requests.iter().all(|e| e["body"]["prompt"].as_str().unwrap().contains(SECRET)), "policy full logs the text");
    let (_, audit_b) = get(&s.app, kb, "/v1/audit").await;
    let b_seqs: Vec<i64> = audit_b["data"].as_array().unwrap().iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert!(!b_seqs.is_empty() && audit_b["data"].as_array().unwrap().iter().all(|e| e["tenant_id"] != a_tenant));

    // Another tenant's record looks exactly like one that never existed.
    let never = get(&s.app, ka, "/v1/requests/req-000000000000000000").await;
    let never_audit = get(&s.app, ka, "/v1/audit/999999").await;
    assert_eq!(never.0, 404);
    assert_eq!(never.1["error"]["code"], "not_found");
    let crossings = [
        (format!("/v1/requests/{}", b_ids[0]), never.0),
        (format!("/v1/audit/{}", b_seqs[0]), never_audit.0),
        ("/v1/requests?tenant=b".to_string(), 404),
        ("/v1/audit?tenant=b".to_string(), 404),
        ("/v1/usage?tenant=b".to_string(), 404),
    ];
    for (path, want) in &crossings {
        let (status, v) = get(&s.app, ka, path).await;
        assert_eq!((status, v["error"]["code"].as_str()), (*want, Some("not_found")), "{path}: {v}");
        assert_eq!(v["error"].as_object().unwrap().len(), never.1["error"].as_object().unwrap().len());
        assert!(!v.to_string().contains("tenant_id") && !v.to_string().contains(SECRET), "no trace of the other tenant's data: {v}");
    }

    // An admin reads across tenants.
    let (status, v) = get(&s.app, &admin, &format!("/v1/requests/{}", b_ids[0])).await;
    assert_eq!(status, 200, "{v}");
    let (_, v) = get(&s.app, &admin, "/v1/requests?tenant=b").await;
    assert_eq!(v["data"].as_array().unwrap().len(), 1);
    let (status, _) = get(&s.app, &admin, &format!("/v1/audit/{}", b_seqs[0])).await;
    assert_eq!(status, 200);

    // Bad paging is a 400 naming the parameter.
    let (status, v) = get(&s.app, ka, "/v1/requests?limit=0").await;
    assert_eq!((status, v["error"]["param"].as_str()), (400, Some("limit")));
    let _ = std::fs::remove_file(&s.db_path);
}
