//! What a request leaves behind: audit entries follow each tenant's logging policy (the log
//! scan for a planted secret is its own test binary, tests/log_scan.rs, as it owns the global
//! log subscriber).

use std::collections::HashMap;

use serde_json::Value;
use sluice_gateway::mock::MockBehaviour;
use sluice_govern::LoggingPolicy;

#[path = "../common/logging_setup.rs"]
pub(crate) mod logging_setup;
use logging_setup::{SECRET, chat, post, request_entries, setup};

#[tokio::test]
async fn audit_entries_follow_each_tenants_logging_policy() {
    let policies = [("t-off", LoggingPolicy::Off), ("t-meta", LoggingPolicy::Metadata), ("t-red", LoggingPolicy::Redacted), ("t-full", LoggingPolicy::Full)];
    let s = setup(&policies, MockBehaviour::default()).await;
    for (tenant, _) in &policies {
        for stream in [false, true] {
            let (status, _) = post(&s.app, &s.keys[tenant], chat(stream)).await;
            assert_eq!(status, 200);
        }
    }
    let entries = request_entries(&s.store, 8).await;
    let mut by_policy: HashMap<String, Vec<Value>> = HashMap::new();
    for (_, body) in entries {
        by_policy.entry(body["logging"].as_str().unwrap().to_string()).or_default().push(body);
    }
    for e in &by_policy["off"] {
        assert!(e.get("prompt").is_none() && e.get("prompt_sha256").is_none() && e.get("response_bytes").is_none(), "{e}");
    }
    for e in &by_policy["metadata"] {
        assert!(!e.to_string().contains(SECRET), "{e}");
        assert_eq!(e["prompt_bytes"].as_u64(), Some(format!("Please email {SECRET} the report.").len() as u64));
        assert_eq!(e["prompt_sha256"].as_str().unwrap().len(), 64);
        assert_eq!(e["response_bytes"].as_u64(), Some("tok0 tok1 tok2 ".len() as u64), "streamed and whole alike: {e}");
    }
    for e in &by_policy["redacted"] {
        assert_eq!(e["prompt"], "Please email [EMAIL] the report.");
        assert_eq!(e["response"], "tok0 tok1 tok2 ");
    }
    for e in &by_policy["full"] {
        assert_eq!(e["prompt"], format!("Please email {SECRET} the report."));
    }
}

