//! Authentications remembered between requests, so a known key costs no database round trip.
//!
//! Entries are keyed by the SHA-256 of the presented key (never the key), hold the stored key
//! record and tenant, and are checked on every use exactly as a fresh read would be (revoked,
//! expired). They are dropped whole when the store's authentication epoch moves — every
//! revocation and logging-policy change bumps it in the same transaction — which this process
//! reads at most every [`EPOCH_POLL`]; changes made through this process drop them at once.
//! So a revocation made elsewhere (another gateway, `sluice keys revoke`) takes effect within
//! `EPOCH_POLL` plus one read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sluice_store::{KeyRecord, Store, StoreError, Tenant};

/// How often the epoch is read.
pub const EPOCH_POLL: Duration = Duration::from_millis(100);
/// Most entries kept (a flood of distinct valid keys only costs reads).
const MAX_ENTRIES: usize = 100_000;

#[derive(Debug, Default)]
struct Entries {
    epoch: Option<i64>,
    checked: Option<Instant>,
    by_digest: HashMap<[u8; 32], (KeyRecord, Tenant)>,
}

/// The cache of one process (shared by clones of its governor).
#[derive(Debug, Default)]
pub(crate) struct AuthCache {
    entries: Mutex<Entries>,
    refreshing: AtomicBool,
}

impl AuthCache {
    /// The remembered record of a key digest, and the epoch it was looked up under (which
    /// [`AuthCache::put`] needs). When the epoch is due to be read again, a background read is
    /// started and this lookup goes on with what is known; only before the first read does a
    /// lookup wait for it.
    pub(crate) async fn get(self: &Arc<Self>, store: &Store, digest: &[u8; 32]) -> Result<(Option<(KeyRecord, Tenant)>, Option<i64>), StoreError> {
        let (due, known) = self.entries.lock().map(|e| (e.checked.is_none_or(|t| t.elapsed() >= EPOCH_POLL), e.epoch.is_some())).unwrap_or((true, false));
        if !known {
            let n = store.auth_epoch().await?;
            self.epoch_read(n);
        } else if due && !self.refreshing.swap(true, Ordering::AcqRel) {
            let (me, store) = (self.clone(), store.clone());
            tokio::spawn(async move {
                match store.auth_epoch().await {
                    Ok(n) => me.epoch_read(n),
                    Err(e) => tracing::warn!(error = %e, "cannot read the authentication epoch"),
                }
                me.refreshing.store(false, Ordering::Release);
            });
        }
        let Ok(e) = self.entries.lock() else { return Ok((None, None)) };
        Ok((e.by_digest.get(digest).cloned(), e.epoch))
    }

    fn epoch_read(&self, n: i64) {
        if let Ok(mut e) = self.entries.lock() {
            if e.epoch != Some(n) {
                e.by_digest.clear();
                e.epoch = Some(n);
            }
            e.checked = Some(Instant::now());
        }
    }

    /// Remembers a key read from the store, unless the epoch moved since `epoch` (the one
    /// [`AuthCache::get`] gave before the read): the read may predate the change.
    pub(crate) fn put(&self, digest: [u8; 32], record: KeyRecord, tenant: Tenant, epoch: Option<i64>) {
        if let Ok(mut e) = self.entries.lock() {
            if epoch.is_none() || e.epoch != epoch {
                return;
            }
            if e.by_digest.len() >= MAX_ENTRIES {
                e.by_digest.clear();
            }
            e.by_digest.insert(digest, (record, tenant));
        }
    }

    /// Forgets everything (after a change made through this process), and trusts nothing new
    /// until the epoch is read again.
    pub(crate) fn clear(&self) {
        if let Ok(mut e) = self.entries.lock() {
            e.by_digest.clear();
            e.epoch = None;
            e.checked = None;
        }
    }
}
