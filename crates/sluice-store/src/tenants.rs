//! Tenants and API keys. Keys are stored as a hash with a short public prefix to find them by;
//! checking a presented key against the hash is `sluice-govern`'s job.

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{Store, StoreError};

/// A tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// Random id.
    pub id: String,
    /// Unique human name (`acme`).
    pub name: String,
    /// Creation time (Unix ms).
    pub created_ms: i64,
    /// What its requests leave in the audit trail: `off`, `metadata`, `redacted` or `full`.
    pub logging_policy: String,
}

/// An API key as stored (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// Random id.
    pub id: String,
    /// Public lookup prefix, part of the key.
    pub prefix: String,
    /// SHA-256 of the whole key, hex.
    pub hash: String,
    /// Owner.
    pub tenant_id: String,
    /// `admin` or `member`.
    pub role: String,
    /// A label for people.
    pub name: String,
    /// Creation time (Unix ms).
    pub created_ms: i64,
    /// Expiry (Unix ms), if any.
    pub expires_ms: Option<i64>,
    /// Revocation time (Unix ms), if revoked.
    pub revoked_ms: Option<i64>,
    /// Why it was revoked.
    pub revoked_reason: Option<String>,
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => {
            d.code().is_some_and(|c| c == "23505" || c == "2067" || c == "1555")
                || d.message().contains("UNIQUE constraint failed")
        }
        _ => false,
    }
}

fn tenant(r: &AnyRow) -> Result<Tenant, sqlx::Error> {
    Ok(Tenant {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        created_ms: r.try_get("created_ms")?,
        logging_policy: r.try_get("logging_policy")?,
    })
}

fn key(r: &AnyRow) -> Result<KeyRecord, sqlx::Error> {
    Ok(KeyRecord {
        id: r.try_get("id")?,
        prefix: r.try_get("prefix")?,
        hash: r.try_get("hash")?,
        tenant_id: r.try_get("tenant_id")?,
        role: r.try_get("role")?,
        name: r.try_get("name")?,
        created_ms: r.try_get("created_ms")?,
        expires_ms: r.try_get("expires_ms")?,
        revoked_ms: r.try_get("revoked_ms")?,
        revoked_reason: r.try_get("revoked_reason")?,
    })
}

const KEY_COLUMNS: &str = "id, prefix, hash, tenant_id, role, name, created_ms, expires_ms, revoked_ms, revoked_reason";

impl Store {
    /// Creates a tenant; `Conflict` when the name is taken.
    pub async fn create_tenant(&self, t: &Tenant) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO tenants (id, name, created_ms, logging_policy) VALUES ($1, $2, $3, $4)")
            .bind(&t.id)
            .bind(&t.name)
            .bind(t.created_ms)
            .bind(&t.logging_policy)
            .execute(self.pool())
            .await
            .map_err(|e| if is_unique_violation(&e) { StoreError::Conflict(format!("tenant {:?}", t.name)) } else { e.into() })?;
        Ok(())
    }

    /// A tenant by name.
    pub async fn tenant_by_name(&self, name: &str) -> Result<Option<Tenant>, StoreError> {
        let row = sqlx::query("SELECT id, name, created_ms, logging_policy FROM tenants WHERE name = $1").bind(name).fetch_optional(self.pool()).await?;
        Ok(row.as_ref().map(tenant).transpose()?)
    }

    /// A tenant by id.
    pub async fn tenant(&self, id: &str) -> Result<Option<Tenant>, StoreError> {
        let row = sqlx::query("SELECT id, name, created_ms, logging_policy FROM tenants WHERE id = $1").bind(id).fetch_optional(self.pool()).await?;
        Ok(row.as_ref().map(tenant).transpose()?)
    }

    /// Sets a tenant's logging policy; false when there is no such tenant.
    pub async fn set_logging_policy(&self, tenant_id: &str, policy: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin().await?;
        let done = sqlx::query("UPDATE tenants SET logging_policy = $1 WHERE id = $2").bind(policy).bind(tenant_id).execute(&mut *tx).await?;
        bump_auth_epoch(&mut tx).await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }

    /// The authentication epoch: it changes whenever a cached authentication may be stale.
    pub async fn auth_epoch(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT n FROM auth_epoch WHERE id = 1").fetch_one(self.pool()).await?)
    }

    /// Every tenant, by name.
    pub async fn tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        let rows = sqlx::query("SELECT id, name, created_ms, logging_policy FROM tenants ORDER BY name").fetch_all(self.pool()).await?;
        Ok(rows.iter().map(tenant).collect::<Result<_, _>>()?)
    }

    /// Stores a new key; `Conflict` if its id or prefix exists.
    pub async fn insert_key(&self, k: &KeyRecord) -> Result<(), StoreError> {
        sqlx::query(&format!("INSERT INTO api_keys ({KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"))
            .bind(&k.id)
            .bind(&k.prefix)
            .bind(&k.hash)
            .bind(&k.tenant_id)
            .bind(&k.role)
            .bind(&k.name)
            .bind(k.created_ms)
            .bind(k.expires_ms)
            .bind(k.revoked_ms)
            .bind(k.revoked_reason.as_deref())
            .execute(self.pool())
            .await
            .map_err(|e| if is_unique_violation(&e) { StoreError::Conflict(format!("key {:?}", k.prefix)) } else { e.into() })?;
        Ok(())
    }

    /// The key with this public prefix.
    pub async fn key_by_prefix(&self, prefix: &str) -> Result<Option<KeyRecord>, StoreError> {
        let row = sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE prefix = $1"))
            .bind(prefix)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.as_ref().map(key).transpose()?)
    }

    /// The key with this public prefix and its tenant, in one round trip (the per-request
    /// authentication path).
    pub async fn key_and_tenant(&self, prefix: &str) -> Result<Option<(KeyRecord, Tenant)>, StoreError> {
        let row = sqlx::query(
            "SELECT k.id, k.prefix, k.hash, k.tenant_id, k.role, k.name, k.created_ms, k.expires_ms, k.revoked_ms, k.revoked_reason, \
             t.name AS tenant_name, t.created_ms AS tenant_created_ms, t.logging_policy AS tenant_logging FROM api_keys k JOIN tenants t ON t.id = k.tenant_id WHERE k.prefix = $1",
        )
        .bind(prefix)
        .fetch_optional(self.pool())
        .await?;
        let Some(r) = row else { return Ok(None) };
        let k = key(&r)?;
        let t = Tenant {
            id: k.tenant_id.clone(),
            name: r.try_get("tenant_name")?,
            created_ms: r.try_get("tenant_created_ms")?,
            logging_policy: r.try_get("tenant_logging")?,
        };
        Ok(Some((k, t)))
    }

    /// Keys, of one tenant or all, oldest first.
    pub async fn keys(&self, tenant_id: Option<&str>) -> Result<Vec<KeyRecord>, StoreError> {
        let rows = match tenant_id {
            Some(t) => {
                sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE tenant_id = $1 ORDER BY created_ms, id"))
                    .bind(t)
                    .fetch_all(self.pool())
                    .await?
            }
            None => sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_ms, id")).fetch_all(self.pool()).await?,
        };
        Ok(rows.iter().map(key).collect::<Result<_, _>>()?)
    }

    /// How many keys exist (bootstrap happens when there are none).
    pub async fn key_count(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM api_keys").fetch_one(self.pool()).await?)
    }

    /// Revokes a key (the first revocation's time and reason stay); false when no such key.
    pub async fn revoke_key(&self, id: &str, reason: &str, now_ms: i64) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin().await?;
        let done = sqlx::query("UPDATE api_keys SET revoked_ms = COALESCE(revoked_ms, $1), revoked_reason = COALESCE(revoked_reason, $2) WHERE id = $3")
            .bind(now_ms)
            .bind(reason)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        bump_auth_epoch(&mut tx).await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }
}

async fn bump_auth_epoch(tx: &mut sqlx::AnyConnection) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE auth_epoch SET n = n + 1 WHERE id = 1").execute(&mut *tx).await?;
    Ok(())
}
