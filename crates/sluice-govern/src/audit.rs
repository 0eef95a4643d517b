//! The tamper-evident audit trail. Each entry's hash is SHA-256 over the previous entry's hash
//! and the entry's canonical serialization (a JSON array of its fields in a fixed order), so
//! editing, deleting, reordering or inserting an entry breaks the chain at that point. Every
//! `CHECKPOINT_EVERY` entries, and whenever the writer goes quiet, a checkpoint records the tip
//! under an HMAC with a secret kept outside the database, so cutting the tail (and rewriting
//! the head row to match) is detected up to the last checkpoint.
//!
//! Entries are written by one task per process with group commit; the head row's lock orders
//! appenders across processes.

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use sluice_store::{AuditEntry, NewAuditEntry, Store, StoreError, now_ms};
use tokio::sync::mpsc;

/// Entries between authenticated checkpoints.
pub const CHECKPOINT_EVERY: i64 = 64;
/// Most entries appended in one transaction.
const MAX_BATCH: usize = 256;
/// Hash of "before the first entry".
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The hash of entry `seq` after `prev`.
pub fn entry_hash(seq: i64, prev: &str, e: &NewAuditEntry) -> String {
    let canonical = serde_json::json!([seq, e.ts_ms, e.kind, e.tenant_id, e.actor, e.body]).to_string();
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(b"\n");
    h.update(canonical.as_bytes());
    hex(&h.finalize())
}

/// The checkpoint MAC of `(seq, hash)` under `secret`.
pub fn checkpoint_mac(secret: &[u8], seq: i64, hash: &str) -> String {
    match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mut m) => {
            m.update(format!("{seq}:{hash}").as_bytes());
            hex(&m.finalize().into_bytes())
        }
        Err(_) => String::new(),
    }
}

/// What verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// Entries read.
    pub entries: i64,
    /// Checkpoints checked.
    pub checkpoints: usize,
    /// The first problem: the entry (or checkpoint) number and what is wrong.
    pub first_broken: Option<(i64, String)>,
}

/// The newest checkpoint, as also kept outside the database (a file next to the secret), so
/// deleting the newest checkpoints together with the tail is detected as well.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tip {
    /// Entry number.
    pub seq: i64,
    /// Its hash.
    pub hash: String,
}

impl Tip {
    /// Reads a tip file (`seq hash mac`); `None` when absent or not authentic.
    pub fn read(path: &std::path::Path, secret: &[u8]) -> Option<Self> {
        let text = std::fs::read_to_string(path).ok()?;
        let mut it = text.split_whitespace();
        let seq: i64 = it.next()?.parse().ok()?;
        let hash = it.next()?.to_string();
        let mac = it.next()?;
        (checkpoint_mac(secret, seq, &hash) == mac).then_some(Self { seq, hash })
    }

    fn write(path: &std::path::Path, secret: &[u8], seq: i64, hash: &str) {
        let tmp = path.with_extension("tip.tmp");
        let text = format!("{seq} {hash} {}\n", checkpoint_mac(secret, seq, hash));
        if std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path)).is_err() {
            tracing::warn!(path = %path.display(), "cannot write the audit tip file");
        }
    }
}

/// Walks the whole chain and every checkpoint; `tip` is the newest checkpoint kept outside the
/// database, when there is one.
pub async fn verify(store: &Store, secret: &[u8], tip: Option<&Tip>) -> Result<Verification, StoreError> {
    let mut prev_seq = 0;
    let mut prev_hash = GENESIS.to_string();
    let mut hashes = std::collections::HashMap::new();
    let mut broken: Option<(i64, String)> = None;
    'walk: loop {
        let page = store.audit_entries(prev_seq, 1000).await?;
        if page.is_empty() {
            break;
        }
        for AuditEntry { seq, entry, prev_hash: stored_prev, hash } in page {
            if seq != prev_seq + 1 {
                broken = Some((prev_seq + 1, format!("entry {} is missing (the next is {seq})", prev_seq + 1)));
                break 'walk;
            }
            if stored_prev != prev_hash {
                broken = Some((seq, format!("entry {seq} does not follow entry {prev_seq} (broken link)")));
                break 'walk;
            }
            if entry_hash(seq, &prev_hash, &entry) != hash {
                broken = Some((seq, format!("entry {seq} was altered (its hash does not match its content)")));
                break 'walk;
            }
            hashes.insert(seq, hash.clone());
            prev_seq = seq;
            prev_hash = hash;
        }
    }
    let checkpoints = store.audit_checkpoints().await?;
    if broken.is_none() {
        for c in &checkpoints {
            if checkpoint_mac(secret, c.seq, &c.hash) != c.mac {
                broken = Some((c.seq, format!("checkpoint at entry {} is not authentic (wrong secret, or forged)", c.seq)));
                break;
            }
            match hashes.get(&c.seq) {
                None => {
                    broken = Some((c.seq, format!("the log ends at entry {prev_seq} but a checkpoint vouches for entry {} (tail cut)", c.seq)));
                    break;
                }
                Some(h) if *h != c.hash => {
                    broken = Some((c.seq, format!("entry {} differs from its checkpoint", c.seq)));
                    break;
                }
                Some(_) => {}
            }
        }
    }
    if broken.is_none()
        && let Some(t) = tip
    {
        match hashes.get(&t.seq) {
            None => broken = Some((t.seq, format!("the log ends at entry {prev_seq} but the tip file vouches for entry {} (tail cut)", t.seq))),
            Some(h) if *h != t.hash => broken = Some((t.seq, format!("entry {} differs from the tip file", t.seq))),
            Some(_) => {}
        }
    }
    if broken.is_none() {
        let (head_seq, head_hash) = store.audit_head().await?;
        if head_seq != prev_seq || head_hash != prev_hash {
            broken = Some((prev_seq.min(head_seq) + 1, format!("the head says {head_seq} entries, the log holds {prev_seq} (tail cut)")));
        }
    }
    Ok(Verification { entries: prev_seq, checkpoints: checkpoints.len(), first_broken: broken })
}

/// Appends entries now and checkpoints the tip (for short-lived commands, which cannot wait
/// for a background writer).
pub async fn append_now(store: &Store, secret: &[u8], tip: Option<&std::path::Path>, entries: &[NewAuditEntry]) -> Result<(), StoreError> {
    let mac = |seq: i64, hash: &str| checkpoint_mac(secret, seq, hash);
    let (seq, hash) = store.append_audit(entries, &entry_hash, &mac, CHECKPOINT_EVERY, true).await?;
    if let Some(path) = tip {
        Tip::write(path, secret, seq, &hash);
    }
    Ok(())
}

/// An entry stamped now.
pub fn entry(kind: &str, tenant_id: Option<&str>, actor: Option<&str>, body: serde_json::Value) -> NewAuditEntry {
    NewAuditEntry {
        ts_ms: now_ms(),
        kind: kind.to_string(),
        tenant_id: tenant_id.map(str::to_string),
        actor: actor.map(str::to_string),
        body: body.to_string(),
    }
}

/// Appends audit entries for this process.
#[derive(Debug)]
pub struct Auditor {
    writes: mpsc::UnboundedSender<NewAuditEntry>,
}

impl Auditor {
    /// Starts the writer over `store`, checkpointing with `secret` (and into the `tip` file).
    pub fn start(store: Store, secret: Vec<u8>, tip: Option<std::path::PathBuf>) -> Arc<Self> {
        let (writes, rx) = mpsc::unbounded_channel();
        tokio::spawn(writer(store, Arc::new(secret), tip, rx));
        Arc::new(Self { writes })
    }

    /// Like [`Auditor::start`], with the writer on `background`, over its store.
    pub fn start_on(background: &crate::Background, secret: Vec<u8>, tip: Option<std::path::PathBuf>) -> Arc<Self> {
        let (writes, rx) = mpsc::unbounded_channel();
        background.spawn(writer(background.store().clone(), Arc::new(secret), tip, rx));
        Arc::new(Self { writes })
    }

    /// Records an event; `body` is its details (never prompt text unless policy allows).
    pub fn record(&self, kind: &str, tenant_id: Option<&str>, actor: Option<&str>, body: serde_json::Value) {
        let e = entry(kind, tenant_id, actor, body);
        if self.writes.send(e).is_err() {
            tracing::error!(kind, "the audit writer stopped; entry lost");
        }
    }
}

/// The tip file is rewritten at most this often (a rename flushes data on most filesystems);
/// a newer checkpoint waiting to be written is written as soon as the writer goes idle or this
/// much time has passed.
const TIP_EVERY: Duration = Duration::from_millis(100);
/// How long the writer gathers entries before appending them.
const LINGER: Duration = Duration::from_millis(10);

/// Writes the tip file off the async workers (it blocks on the filesystem).
async fn write_tip(path: &std::path::Path, secret: &Arc<Vec<u8>>, seq: i64, hash: String) {
    let (path, secret) = (path.to_path_buf(), secret.clone());
    let _ = tokio::task::spawn_blocking(move || Tip::write(&path, &secret, seq, &hash)).await;
}

async fn writer(store: Store, secret: Arc<Vec<u8>>, tip: Option<std::path::PathBuf>, mut rx: mpsc::UnboundedReceiver<NewAuditEntry>) {
    let mac = |seq: i64, hash: &str| checkpoint_mac(&secret, seq, hash);
    let mut pending: Vec<NewAuditEntry> = Vec::new();
    // The newest checkpoint not yet in the tip file, and when the file was last written.
    let mut unwritten_tip: Option<(i64, String)> = None;
    let mut tip_written: Option<std::time::Instant> = None;
    loop {
        if pending.is_empty() {
            let next = match (&tip, unwritten_tip.take()) {
                (Some(path), Some((seq, hash))) => {
                    let wait = TIP_EVERY.saturating_sub(tip_written.map_or(TIP_EVERY, |t| t.elapsed()));
                    match tokio::time::timeout(wait, rx.recv()).await {
                        Ok(next) => {
                            unwritten_tip = Some((seq, hash));
                            next
                        }
                        Err(_) => {
                            write_tip(path, &secret, seq, hash).await;
                            tip_written = Some(std::time::Instant::now());
                            continue;
                        }
                    }
                }
                _ => rx.recv().await,
            };
            match next {
                Some(e) => pending.push(e),
                None => {
                    if let (Some(path), Some((seq, hash))) = (&tip, unwritten_tip) {
                        write_tip(path, &secret, seq, hash).await;
                    }
                    return;
                }
            }
        }
        // Gather a few milliseconds of entries: one transaction then serves many.
        let until = tokio::time::Instant::now() + LINGER;
        while pending.len() < MAX_BATCH {
            match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some(e)) => pending.push(e),
                Ok(None) | Err(_) => break,
            }
        }
        // Quiet after this batch: checkpoint its last entry, so the tip is always vouched for
        // soon after it is written.
        let quiet = rx.is_empty();
        match store.append_audit(&pending, &entry_hash, &mac, CHECKPOINT_EVERY, quiet).await {
            Ok((seq, hash)) => {
                pending.clear();
                if quiet && tip.is_some() {
                    unwritten_tip = Some((seq, hash));
                }
                if let (Some(path), Some(_)) = (&tip, &unwritten_tip)
                    && tip_written.is_none_or(|t| t.elapsed() >= TIP_EVERY)
                    && let Some((seq, hash)) = unwritten_tip.take()
                {
                    write_tip(path, &secret, seq, hash).await;
                    tip_written = Some(std::time::Instant::now());
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, entries = pending.len(), "audit append failed; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        // Key "Jefe", data "what do ya want for nothing?".
        let mut m = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap_or_else(|_| unreachable!());
        m.update(b"what do ya want for nothing?");
        assert_eq!(hex(&m.finalize().into_bytes()), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    #[test]
    fn the_hash_covers_every_field_and_the_link() {
        let e = NewAuditEntry { ts_ms: 1, kind: "k".into(), tenant_id: Some("t".into()), actor: None, body: "{}".into() };
        let h = entry_hash(1, GENESIS, &e);
        assert_ne!(h, entry_hash(2, GENESIS, &e));
        assert_ne!(h, entry_hash(1, &"1".repeat(64), &e));
        assert_ne!(h, entry_hash(1, GENESIS, &NewAuditEntry { actor: Some("a".into()), ..e.clone() }));
        assert_ne!(h, entry_hash(1, GENESIS, &NewAuditEntry { body: "{ }".into(), ..e.clone() }));
        // No ambiguity between fields: moving text from one field to the next changes the hash.
        let a = NewAuditEntry { kind: "ab".into(), tenant_id: Some("c".into()), ..e.clone() };
        let b = NewAuditEntry { kind: "a".into(), tenant_id: Some("bc".into()), ..e };
        assert_ne!(entry_hash(1, GENESIS, &a), entry_hash(1, GENESIS, &b));
    }
}
