//! The collections conformance suite, run on the embedded default (SQLite + usearch HNSW) and
//! on PostgreSQL + pgvector alike, with the real all-MiniLM-L6-v2.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code may unwrap")]

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{Map, Value, json};
use sluice_retrieval::testing::embedders;
use sluice_retrieval::{CollectionSpec, Collections, DocumentInput, Mode, Query, RetrievalError};

fn index_dir(tag: &str) -> PathBuf {
    sluice_store::testing::temp_path(&format!("index_{tag}"))
}

/// Collections on a fresh SQLite file, and on a fresh PostgreSQL database when one is configured.
async fn backends(tag: &str) -> Vec<(&'static str, Collections)> {
    let mut out = Vec::new();
    let s = sluice_store::Store::open(&sluice_store::testing::sqlite_url(tag)).await.unwrap();
    out.push(("sqlite", Collections::open(s, embedders(), index_dir(tag)).await.unwrap()));
    if let Some(url) = sluice_store::testing::postgres_url(tag).await {
        let s = sluice_store::Store::open(&url).await.unwrap();
        out.push(("postgres", Collections::open(s, embedders(), index_dir(tag)).await.unwrap()));
    }
    out
}

fn doc(id: &str, text: &str, meta: Value) -> DocumentInput {
    let metadata: Map<String, Value> = meta.as_object().cloned().unwrap_or_default();
    DocumentInput { id: id.into(), text: text.into(), metadata, ..Default::default() }
}

/// Hits without their age (which moves between two runs).
fn ranked(hits: Vec<sluice_retrieval::Hit>) -> Vec<(String, i64, i64, String)> {
    hits.into_iter().map(|h| (h.document_id, h.version, h.chunk_index, format!("{:.5}", h.score))).collect()
}

fn query(text: &str, k: usize, mode: Mode) -> Query {
    Query { text: text.into(), k, mode, ..Default::default() }
}

const CORPUS: [(&str, &str, &str); 6] = [
    ("cats", "Cats are small carnivorous mammals that purr and are often kept as house pets.", "en"),
    ("rust", "Rust is a systems programming language focused on memory safety without a garbage collector.", "en"),
    ("paris", "Paris is the capital of France, famous for the Eiffel Tower and the Louvre museum.", "en"),
    ("bread", "To bake sourdough bread you need flour, water, salt and an active starter.", "en"),
    ("volcano", "A volcano erupts when magma rises through the crust and escapes as lava and ash.", "en"),
    ("chat", "Le chat dort sur le canapé pendant que la pluie tombe dehors.", "fr"),
];

async fn seeded(c: &Collections, tenant: &str, name: &str) {
    c.create(tenant, &CollectionSpec { name: name.into(), ..Default::default() }).await.unwrap();
    let docs = CORPUS.iter().enumerate().map(|(i, (id, text, lang))| doc(id, text, json!({"lang": lang, "n": i, "even": i % 2 == 0}))).collect();
    c.upsert(tenant, name, docs).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collections_are_per_tenant() {
    for (backend, c) in backends("coll_tenant").await {
        seeded(&c, "t1", "kb").await;
        let e = c.create("t1", &CollectionSpec { name: "kb".into(), ..Default::default() }).await.unwrap_err();
        assert!(matches!(e, RetrievalError::Conflict(_)), "{backend}: {e}");
        c.create("t2", &CollectionSpec { name: "kb".into(), ..Default::default() }).await.unwrap();
        assert_eq!(c.list("t1").await.unwrap().len(), 1);
        assert!(matches!(c.get("t3", "kb").await.unwrap_err(), RetrievalError::NotFound(_)), "{backend}");
        // t2's collection of the same name is empty: t1's documents are not visible to it.
        assert!(c.query("t2", "kb", &query("cats purr", 5, Mode::Hybrid)).await.unwrap().is_empty(), "{backend}");
        assert!(matches!(c.query("t3", "kb", &query("cats", 5, Mode::Vector)).await.unwrap_err(), RetrievalError::NotFound(_)));
        c.delete("t1", "kb").await.unwrap();
        assert!(c.list("t1").await.unwrap().is_empty());
        assert_eq!(c.list("t2").await.unwrap().len(), 1, "{backend}: the other tenant's collection stays");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mode_finds_the_right_document_with_provenance() {
    for (backend, c) in backends("coll_modes").await {
        seeded(&c, "t", "kb").await;
        for (q, want) in [("feline pets that purr", "cats"), ("memory safe programming language", "rust"), ("Eiffel Tower", "paris"), ("lava and magma", "volcano")] {
            for mode in [Mode::Vector, Mode::Lexical, Mode::Hybrid] {
                let hits = c.query("t", "kb", &query(q, 3, mode)).await.unwrap();
                if mode == Mode::Lexical && want == "cats" {
                    continue; // no shared words: lexical search rightly finds nothing better
                }
                assert_eq!(hits.first().map(|h| h.document_id.as_str()), Some(want), "{backend} {mode:?} {q:?}: {hits:?}");
                let h = &hits[0];
                let source = CORPUS.iter().find(|d| d.0 == want).unwrap().1;
                let span: String = source.chars().skip(h.start_char as usize).take((h.end_char - h.start_char) as usize).collect();
                assert_eq!(span, h.text, "{backend}: offsets point at the chunk's text");
                assert_eq!(h.version, 1);
                assert!(h.age_seconds >= 0.0 && h.age_seconds < 60.0);
            }
        }
        // Metadata filters.
        let mut q = query("a cat sleeping", 5, Mode::Vector);
        q.filter = json!({"lang": "fr"}).as_object().cloned().unwrap();
        let hits = c.query("t", "kb", &q).await.unwrap();
        assert_eq!(hits.iter().map(|h| h.document_id.as_str()).collect::<Vec<_>>(), ["chat"], "{backend}");
        q.filter = json!({"lang": "en", "even": true}).as_object().cloned().unwrap();
        let hits = c.query("t", "kb", &q).await.unwrap();
        assert!(!hits.is_empty() && hits.iter().all(|h| h.metadata["even"] == true && h.metadata["lang"] == "en"), "{backend}: {hits:?}");
        q.filter = json!({"n": 3}).as_object().cloned().unwrap();
        assert_eq!(c.query("t", "kb", &q).await.unwrap().len(), 1, "{backend}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_documents_are_chunked_with_overlap() {
    for (backend, c) in backends("coll_chunks").await {
        c.create("t", &CollectionSpec { name: "kb".into(), chunk_size: Some(48), chunk_overlap: Some(8), ..Default::default() }).await.unwrap();
        let text: String = (0..60).map(|i| format!("Sentence {i} describes item number {i} in the catalogue. ")).collect();
        let up = c.upsert("t", "kb", vec![doc("long", &text, json!({}))]).await.unwrap();
        assert!(up[0].chunks > 10, "{backend}: {up:?}");
        let hits = c.query("t", "kb", &query("item number 42", 50, Mode::Lexical)).await.unwrap();
        let mut spans: Vec<(i64, i64, i64)> = hits.iter().map(|h| (h.chunk_index, h.start_char, h.end_char)).collect();
        spans.sort();
        assert!(spans.iter().any(|s| text.chars().skip(s.1 as usize).take((s.2 - s.1) as usize).collect::<String>().contains("item number 42")));
        for w in spans.windows(2) {
            if w[1].0 == w[0].0 + 1 {
                assert!(w[1].1 < w[0].2, "{backend}: consecutive chunks overlap: {w:?}");
            }
        }
        let stats = c.stats("t", "kb").await.unwrap();
        assert_eq!((stats.documents, stats.chunks), (1, up[0].chunks as i64));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_follow_writes_and_old_versions_never_come_back() {
    for (backend, c) in backends("coll_fresh").await {
        seeded(&c, "t", "kb").await;
        let q = query("quarterly revenue forecast", 10, Mode::Hybrid);
        for v in 1..=4 {
            let text = format!("Version {v} of the quarterly revenue forecast: growth of {v}0 percent.");
            let up = c.upsert("t", "kb", vec![doc("report", &text, json!({}))]).await.unwrap();
            assert_eq!(up[0].version, v);
            let hits = c.query("t", "kb", &q).await.unwrap();
            let report: Vec<_> = hits.iter().filter(|h| h.document_id == "report").collect();
            assert!(!report.is_empty(), "{backend}: version {v} is found at once");
            assert!(report.iter().all(|h| h.version == v && h.text.contains(&format!("Version {v} "))), "{backend}: {report:?}");
        }
        let e = c.upsert("t", "kb", vec![DocumentInput { version: Some(2), ..doc("report", "stale", json!({})) }]).await.unwrap_err();
        assert!(matches!(e, RetrievalError::Conflict(_)), "{backend}: {e}");
        c.delete_document("t", "kb", "report").await.unwrap();
        let hits = c.query("t", "kb", &q).await.unwrap();
        assert!(hits.iter().all(|h| h.document_id != "report"), "{backend}: deleted documents never come back");
        assert!(matches!(c.delete_document("t", "kb", "report").await.unwrap_err(), RetrievalError::NotFound(_)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_and_max_age_exclude_stale_documents() {
    for (backend, c) in backends("coll_ttl").await {
        seeded(&c, "t", "kb").await;
        let now = sluice_store::now_ms();
        let day = 86_400_000;
        c.upsert(
            "t",
            "kb",
            vec![
                DocumentInput { updated_ms: Some(now - 2 * day), ttl_ms: Some(day), ..doc("expired", "Volcanic eruptions in Iceland last week.", json!({})) },
                DocumentInput { updated_ms: Some(now - 10 * day), ..doc("old", "Volcano observatory report from last month.", json!({})) },
            ],
        )
        .await
        .unwrap();
        let hits = c.query("t", "kb", &query("volcano eruption", 10, Mode::Hybrid)).await.unwrap();
        let ids: Vec<&str> = hits.iter().map(|h| h.document_id.as_str()).collect();
        assert!(!ids.contains(&"expired") && ids.contains(&"old"), "{backend}: {ids:?}");
        let mut q = query("volcano eruption", 10, Mode::Hybrid);
        q.max_age_ms = Some(day);
        let ids: Vec<String> = c.query("t", "kb", &q).await.unwrap().into_iter().map(|h| h.document_id).collect();
        assert!(!ids.iter().any(|i| i == "old" || i == "expired") && ids.iter().any(|i| i == "volcano"), "{backend}: {ids:?}");
        let stats = c.stats("t", "kb").await.unwrap();
        assert_eq!(stats.expired, 1, "{backend}");
        assert_eq!(stats.oldest.as_ref().map(|o| o.id.as_str()), Some("old"));
        assert!(stats.oldest.unwrap().age_seconds > 9.0 * 86_400.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_during_a_stream_of_updates_never_see_a_superseded_version() {
    for (backend, c) in backends("coll_race").await {
        let c = Arc::new(c);
        seeded(&c, "t", "kb").await;
        let acked = Arc::new(std::sync::atomic::AtomicI64::new(0));
        let writer = {
            let (c, acked) = (c.clone(), acked.clone());
            tokio::spawn(async move {
                for v in 1..=25i64 {
                    let text = format!("Inventory count {v}: the warehouse holds {v} pallets of widgets.");
                    c.upsert("t", "kb", vec![doc("inventory", &text, json!({}))]).await.unwrap();
                    acked.store(v, std::sync::atomic::Ordering::SeqCst);
                }
            })
        };
        let mut checked = 0;
        while !writer.is_finished() {
            let floor = acked.load(std::sync::atomic::Ordering::SeqCst);
            for mode in [Mode::Vector, Mode::Lexical, Mode::Hybrid] {
                let hits = c.query("t", "kb", &query("warehouse pallets of widgets", 5, mode)).await.unwrap();
                for h in hits.iter().filter(|h| h.document_id == "inventory") {
                    assert!(h.version >= floor, "{backend} {mode:?}: version {} after {floor} was acknowledged", h.version);
                    assert!(h.text.contains(&format!("count {}:", h.version)), "{backend}: text of its own version");
                    checked += 1;
                }
            }
        }
        writer.await.unwrap();
        assert!(checked > 5, "{backend}: the race was exercised ({checked} hits checked)");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_index_survives_restart_and_rebuilds_when_missing_or_corrupt() {
    let url = sluice_store::testing::sqlite_url("coll_restart");
    let dir = index_dir("coll_restart");
    let open = || async { Collections::open(sluice_store::Store::open(&url).await.unwrap(), embedders(), dir.clone()).await.unwrap() };
    let c = open().await;
    seeded(&c, "t", "kb").await;
    let q = query("capital of France", 3, Mode::Vector);
    let before = ranked(c.query("t", "kb", &q).await.unwrap());
    assert_eq!(c.save_indexes().await.unwrap(), 1);
    assert_eq!(c.save_indexes().await.unwrap(), 0, "nothing new to save");
    let id = c.get("t", "kb").await.unwrap().id;
    drop(c);
    let file = dir.join(format!("{id}.usearch"));
    assert!(file.exists());
    // Loaded from the file.
    let c = open().await;
    assert_eq!(ranked(c.query("t", "kb", &q).await.unwrap()), before);
    assert_eq!(c.stats("t", "kb").await.unwrap().index_vectors, Some(CORPUS.len()));
    drop(c);
    // Corrupt: rebuilt from the store, same answers.
    std::fs::write(&file, b"not an index").unwrap();
    let c = open().await;
    assert_eq!(ranked(c.query("t", "kb", &q).await.unwrap()), before);
    drop(c);
    // Missing: rebuilt too; and a write after a restart lands in the rebuilt index.
    std::fs::remove_file(&file).unwrap();
    let c = open().await;
    c.upsert("t", "kb", vec![doc("lyon", "Lyon is a French city known for its cuisine and silk history.", json!({}))]).await.unwrap();
    let hits = c.query("t", "kb", &query("French city famous for food", 2, Mode::Vector)).await.unwrap();
    assert_eq!(hits[0].document_id, "lyon");
    assert_eq!(c.stats("t", "kb").await.unwrap().index_vectors, Some(CORPUS.len() + 1));
}
