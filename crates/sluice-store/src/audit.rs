//! The audit log's storage: appending to the hash chain under the head row's lock, and reading
//! entries and checkpoints back. Hashing and authentication are the caller's (`sluice-govern`).

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{Store, StoreError};

/// An entry to append (its sequence number and hashes are assigned when appended).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAuditEntry {
    /// Time (Unix ms).
    pub ts_ms: i64,
    /// `admin.key_created`, `auth.failed`, `policy.denied`, `request`, …
    pub kind: String,
    /// The tenant it concerns.
    pub tenant_id: Option<String>,
    /// Who acted (a key id, `cli`).
    pub actor: Option<String>,
    /// Details, canonical JSON.
    pub body: String,
}

/// A stored entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Position in the chain, from 1.
    pub seq: i64,
    /// The entry.
    pub entry: NewAuditEntry,
    /// Hash of the previous entry (zeros for the first).
    pub prev_hash: String,
    /// Hash of this entry.
    pub hash: String,
}

/// An authenticated checkpoint of the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditCheckpoint {
    /// The entry it vouches for.
    pub seq: i64,
    /// That entry's hash.
    pub hash: String,
    /// When.
    pub ts_ms: i64,
    /// HMAC of (seq, hash) under the server secret.
    pub mac: String,
}

fn entry(r: &AnyRow) -> Result<AuditEntry, sqlx::Error> {
    Ok(AuditEntry {
        seq: r.try_get("seq")?,
        entry: NewAuditEntry {
            ts_ms: r.try_get("ts_ms")?,
            kind: r.try_get("kind")?,
            tenant_id: r.try_get("tenant_id")?,
            actor: r.try_get("actor")?,
            body: r.try_get("body")?,
        },
        prev_hash: r.try_get("prev_hash")?,
        hash: r.try_get("hash")?,
    })
}

const COLUMNS: &str = "seq, ts_ms, kind, tenant_id, actor, body, prev_hash, hash";

impl Store {
    /// Appends `entries` in order: `hash(seq, prev_hash, entry)` makes each hash; when an
    /// appended sequence number is a multiple of `checkpoint_every`, or `checkpoint_last` is set,
    /// `mac(seq, hash)` authenticates a checkpoint. Returns the new tip `(seq, hash)`.
    pub async fn append_audit(
        &self,
        entries: &[NewAuditEntry],
        hash: &(dyn Fn(i64, &str, &NewAuditEntry) -> String + Sync),
        mac: &(dyn Fn(i64, &str) -> String + Sync),
        checkpoint_every: i64,
        checkpoint_last: bool,
    ) -> Result<(i64, String), StoreError> {
        let mut tx = self.pool().begin().await?;
        // Take the head's lock first (a write), so appenders from any process queue here.
        sqlx::query("UPDATE audit_head SET seq = seq WHERE id = 1").execute(&mut *tx).await?;
        let head = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1").fetch_one(&mut *tx).await?;
        let mut seq: i64 = head.try_get("seq")?;
        let mut prev: String = head.try_get("hash")?;
        // Chain in memory, then write with multi-row inserts (a few statements per batch).
        let mut rows = Vec::with_capacity(entries.len());
        let mut checkpoints = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            seq += 1;
            let h = hash(seq, &prev, e);
            if seq % checkpoint_every.max(1) == 0 || (checkpoint_last && i + 1 == entries.len()) {
                checkpoints.push((seq, h.clone(), e.ts_ms, mac(seq, &h)));
            }
            rows.push((seq, e, std::mem::replace(&mut prev, h.clone()), h));
        }
        for chunk in rows.chunks(64) {
            let values: Vec<String> = (0..chunk.len())
                .map(|r| format!("(${}, ${}, ${}, ${}, ${}, ${}, ${}, ${})", r * 8 + 1, r * 8 + 2, r * 8 + 3, r * 8 + 4, r * 8 + 5, r * 8 + 6, r * 8 + 7, r * 8 + 8))
                .collect();
            let sql = format!("INSERT INTO audit_log ({COLUMNS}) VALUES {}", values.join(", "));
            let mut q = sqlx::query(&sql);
            for (seq, e, prev_hash, h) in chunk {
                q = q
                    .bind(*seq)
                    .bind(e.ts_ms)
                    .bind(&e.kind)
                    .bind(e.tenant_id.as_deref())
                    .bind(e.actor.as_deref())
                    .bind(&e.body)
                    .bind(prev_hash)
                    .bind(h);
            }
            q.execute(&mut *tx).await?;
        }
        for (cseq, h, ts, m) in &checkpoints {
            sqlx::query("INSERT INTO audit_checkpoints (seq, hash, ts_ms, mac) VALUES ($1, $2, $3, $4)")
                .bind(*cseq)
                .bind(h)
                .bind(*ts)
                .bind(m)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1").bind(seq).bind(&prev).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok((seq, prev))
    }

    /// Up to `limit` entries from `after_seq` on, in order.
    pub async fn audit_entries(&self, after_seq: i64, limit: i64) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2"))
            .bind(after_seq)
            .bind(limit)
            .fetch_all(self.pool())
            .await?;
        Ok(rows.iter().map(entry).collect::<Result<_, _>>()?)
    }

    /// One entry.
    pub async fn audit_entry(&self, seq: i64) -> Result<Option<AuditEntry>, StoreError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM audit_log WHERE seq = $1")).bind(seq).fetch_optional(self.pool()).await?;
        Ok(row.as_ref().map(entry).transpose()?)
    }

    /// Up to `limit` entries of one tenant (or, None, of all) after `after_seq`, in order.
    pub async fn audit_page(&self, tenant_id: Option<&str>, after_seq: i64, limit: i64) -> Result<Vec<AuditEntry>, StoreError> {
        let tenant_clause = if tenant_id.is_some() { "AND tenant_id = $3" } else { "" };
        let sql = format!("SELECT {COLUMNS} FROM audit_log WHERE seq > $1 {tenant_clause} ORDER BY seq LIMIT $2");
        let mut q = sqlx::query(&sql).bind(after_seq).bind(limit);
        if let Some(t) = tenant_id {
            q = q.bind(t);
        }
        let rows = q.fetch_all(self.pool()).await?;
        Ok(rows.iter().map(entry).collect::<Result<_, _>>()?)
    }

    /// Entries written in `[from_ms, to_ms)`, in order, optionally of one tenant.
    pub async fn audit_range(&self, from_ms: i64, to_ms: i64, tenant_id: Option<&str>) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = match tenant_id {
            Some(t) => {
                sqlx::query(&format!("SELECT {COLUMNS} FROM audit_log WHERE ts_ms >= $1 AND ts_ms < $2 AND tenant_id = $3 ORDER BY seq"))
                    .bind(from_ms)
                    .bind(to_ms)
                    .bind(t)
                    .fetch_all(self.pool())
                    .await?
            }
            None => {
                sqlx::query(&format!("SELECT {COLUMNS} FROM audit_log WHERE ts_ms >= $1 AND ts_ms < $2 ORDER BY seq"))
                    .bind(from_ms)
                    .bind(to_ms)
                    .fetch_all(self.pool())
                    .await?
            }
        };
        Ok(rows.iter().map(entry).collect::<Result<_, _>>()?)
    }

    /// Every checkpoint, in order.
    pub async fn audit_checkpoints(&self) -> Result<Vec<AuditCheckpoint>, StoreError> {
        let rows = sqlx::query("SELECT seq, hash, ts_ms, mac FROM audit_checkpoints ORDER BY seq").fetch_all(self.pool()).await?;
        rows.iter()
            .map(|r| Ok(AuditCheckpoint { seq: r.try_get("seq")?, hash: r.try_get("hash")?, ts_ms: r.try_get("ts_ms")?, mac: r.try_get("mac")? }))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// The chain's tip as recorded in the head row.
    pub async fn audit_head(&self) -> Result<(i64, String), StoreError> {
        let r = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1").fetch_one(self.pool()).await?;
        Ok((r.try_get("seq")?, r.try_get("hash")?))
    }
}
