//! Budget allowances (allowance.rs), the ledger journal's crash recovery (journal.rs), and the audit chain against tampering, on SQLite and PostgreSQL (from `SLUICE_TEST_POSTGRES_URL`,
//! required when `SLUICE_REQUIRE_POSTGRES=1`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code may unwrap")]

mod allowance;
mod journal;
mod redaction;

use sluice_govern::Tip;
use sluice_govern::audit::{CHECKPOINT_EVERY, checkpoint_mac, entry_hash, verify};
use sluice_store::{NewAuditEntry, Store};

const SECRET: &[u8] = b"a server secret kept outside the database";

/// A fresh SQLite store, and a fresh PostgreSQL one when a server is configured.
async fn stores(tag: &str) -> Vec<Store> {
    let mut out = vec![Store::open(&sluice_store::testing::sqlite_url(tag)).await.unwrap()];
    if let Some(url) = sluice_store::testing::postgres_url(tag).await {
        out.push(Store::open(&url).await.unwrap());
    }
    out
}

/// An empty temporary directory path of this test run.
fn empty_dir(tag: &str) -> std::path::PathBuf {
    sluice_store::testing::temp_path(&format!("govern_{tag}"))
}

/// 150 entries (checkpoints at 64, 128 and the last), and the tip as the writer would keep it.
async fn filled(s: &Store) -> Tip {
    let mac = |seq: i64, h: &str| checkpoint_mac(SECRET, seq, h);
    let mut tip = (0, String::new());
    for chunk in 0..3 {
        let entries: Vec<NewAuditEntry> = (0..50)
            .map(|i| NewAuditEntry {
                ts_ms: 1000 + chunk * 50 + i,
                kind: if i % 2 == 0 { "request".into() } else { "admin.key_created".into() },
                tenant_id: Some(format!("t{}", i % 3)),
                actor: Some("key_1".into()),
                body: format!("{{\"n\":{}}}", chunk * 50 + i),
            })
            .collect();
        tip = s.append_audit(&entries, &entry_hash, &mac, CHECKPOINT_EVERY, chunk == 2).await.unwrap();
    }
    Tip { seq: tip.0, hash: tip.1 }
}

async fn broken_at(s: &Store, tip: &Tip) -> Option<i64> {
    verify(s, SECRET, Some(tip)).await.unwrap().first_broken.map(|(seq, why)| {
        eprintln!("detected: {why}");
        seq
    })
}

async fn exec(s: &Store, sql: &str) {
    sqlx::raw_sql(sql).execute(s.pool()).await.unwrap();
}

#[tokio::test]
async fn an_untouched_chain_verifies() {
    for s in stores("audit").await {
        let tip = filled(&s).await;
        let v = verify(&s, SECRET, Some(&tip)).await.unwrap();
        assert_eq!((v.entries, v.checkpoints, v.first_broken), (150, 3, None));
        let wrong = verify(&s, b"another secret", None).await.unwrap();
        assert!(wrong.first_broken.unwrap().1.contains("not authentic"));
    }
}

#[tokio::test]
async fn editing_an_entry_is_detected() {
    for s in stores("audit").await {
        let tip = filled(&s).await;
        exec(&s, "UPDATE audit_log SET body = '{\"n\":9999}' WHERE seq = 50").await;
        assert_eq!(broken_at(&s, &tip).await, Some(50));
    }
}

#[tokio::test]
async fn deleting_an_entry_is_detected() {
    for s in stores("audit").await {
        let tip = filled(&s).await;
        exec(&s, "DELETE FROM audit_log WHERE seq = 70").await;
        assert_eq!(broken_at(&s, &tip).await, Some(70));
    }
}

#[tokio::test]
async fn reordering_entries_is_detected() {
    for s in stores("audit").await {
        let tip = filled(&s).await;
        // Swap the contents of 80 and 81, hashes and all.
        exec(&s, "UPDATE audit_log SET seq = -81 WHERE seq = 81").await;
        exec(&s, "UPDATE audit_log SET seq = 81 WHERE seq = 80").await;
        exec(&s, "UPDATE audit_log SET seq = 80 WHERE seq = -81").await;
        assert_eq!(broken_at(&s, &tip).await, Some(80));
    }
}

#[tokio::test]
async fn inserting_an_entry_is_detected_even_with_the_tail_rehashed() {
    for s in stores("audit").await {
        let tip = filled(&s).await;
        // Insert a forged entry at 101 and renumber the rest, keeping their hashes: the link breaks.
        let rows = s.audit_entries(100, 1000).await.unwrap();
        exec(&s, "DELETE FROM audit_log WHERE seq > 100").await;
        let before = s.audit_entries(99, 1).await.unwrap().remove(0);
        let forged = NewAuditEntry { ts_ms: 1, kind: "admin.key_created".into(), tenant_id: None, actor: Some("intruder".into()), body: "{}".into() };
        let forged_hash = entry_hash(101, &before.hash, &forged);
        let insert = |seq: i64, e: &NewAuditEntry, prev: &str, hash: &str| {
            format!(
                "INSERT INTO audit_log (seq, ts_ms, kind, tenant_id, actor, body, prev_hash, hash) VALUES ({seq}, {}, '{}', NULL, '{}', '{}', '{prev}', '{hash}')",
                e.ts_ms, e.kind, e.actor.clone().unwrap_or_default(), e.body
            )
        };
        exec(&s, &insert(101, &forged, &before.hash, &forged_hash)).await;
        for r in &rows {
            exec(&s, &insert(r.seq + 1, &r.entry, &r.prev_hash, &r.hash)).await;
        }
        assert_eq!(broken_at(&s, &tip).await, Some(102));
        // Rehash the whole tail (anyone can compute SHA-256): the chain holds, the checkpoints do not.
        let all = s.audit_entries(0, 1000).await.unwrap();
        exec(&s, "DELETE FROM audit_log WHERE seq > 101").await;
        let mut prev = forged_hash.clone();
        for r in all.iter().filter(|r| r.seq > 101) {
            let h = entry_hash(r.seq, &prev, &r.entry);
            exec(&s, &insert(r.seq, &r.entry, &prev, &h)).await;
            prev = h;
        }
        exec(&s, &format!("UPDATE audit_head SET seq = 151, hash = '{prev}' WHERE id = 1")).await;
        assert_eq!(broken_at(&s, &tip).await, Some(128), "the checkpoint at 128 no longer matches");
    }
}

#[tokio::test]
async fn cutting_the_tail_is_detected() {
    for s in stores("audit").await {
        let tip = filled(&s).await;
        // Cut 20 entries and make the head agree: the last checkpoint gives it away.
        exec(&s, "DELETE FROM audit_log WHERE seq > 130").await;
        let h130 = s.audit_entries(129, 1).await.unwrap().remove(0).hash;
        exec(&s, &format!("UPDATE audit_head SET seq = 130, hash = '{h130}' WHERE id = 1")).await;
        assert!(broken_at(&s, &tip).await.is_some());
        // Delete the newer checkpoint as well: the tip file outside the database still does.
        exec(&s, "DELETE FROM audit_checkpoints WHERE seq > 130").await;
        assert_eq!(broken_at(&s, &tip).await, Some(150));
        // Without any outside record, only the head row is left to catch a careless cut.
        assert_eq!(verify(&s, SECRET, None).await.unwrap().first_broken, None, "the documented limit: cut + checkpoints deleted + head rewritten, no tip file");
    }
}
