//! Under the default `metadata` policy a planted secret reaches neither the logs (at every
//! level) nor the store, whatever the request does. Its own binary: it owns the global log
//! subscriber.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code may unwrap")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use sluice_gateway::mock::MockBehaviour;
use sluice_govern::LoggingPolicy;

#[path = "common/logging_setup.rs"]
mod logging_setup;
use logging_setup::{SECRET, chat, post, request_entries, setup};

/// Collects everything the code under test logs (this test runs on one thread).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_planted_secret_reaches_neither_logs_nor_the_store_under_the_metadata_policy() {
    let captured = Captured::default();
    let sink = captured.clone();
    let subscriber = tracing_subscriber::fmt().with_max_level(tracing::Level::TRACE).with_writer(move || sink.clone()).finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let s = setup(&[("acme", LoggingPolicy::Metadata)], MockBehaviour { fail_every: Some(3), ..Default::default() }).await;
    let key = s.keys["acme"].clone();
    // Whole and streamed answers, an upstream failing every third request, bad bodies that
    // quote the secret, an unknown model, a prompt too long for... nothing (no window): all of it.
    for _ in 0..4 {
        post(&s.app, &key, chat(false)).await;
        post(&s.app, &key, chat(true)).await;
    }
    post(&s.app, &key, format!("{{\"model\": \"m\", \"messages\": \"{SECRET}\"}}")).await;
    post(&s.app, &key, format!("{{\"model\": \"m\", \"messages\": [{{\"role\": \"user\", \"content\": \"{SECRET}\"}}], \"max_tokens\": \"{SECRET}\"}}")).await;
    post(&s.app, &key, format!("{{not json {SECRET}")).await;
    post(&s.app, &key, json!({"model": SECRET, "messages": [{"role": "user", "content": SECRET}]}).to_string()).await;
    post(&s.app, &format!("sk-sluice-000000000000-{SECRET}0000000000"), chat(false)).await;
    request_entries(&s.store, 8).await;
    tokio::time::sleep(Duration::from_millis(200)).await; // let the writers finish their batches

    let logs = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    assert!(logs.contains("sluice::request"), "the capture works: {} bytes", logs.len());
    assert!(!logs.contains(SECRET), "the secret reached the logs:\n{}", logs.lines().filter(|l| l.contains(SECRET)).collect::<Vec<_>>().join("\n"));
    let mut stored = Vec::new();
    for ext in ["", "-wal"] {
        if let Ok(b) = std::fs::read(format!("{}{ext}", s.db_path.display())) {
            stored.extend(b);
        }
    }
    assert!(stored.len() > 10_000);
    assert!(!stored.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()), "the secret reached the database");
}
