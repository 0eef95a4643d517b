//! API keys: `sk-sluice-` + 12 hex characters of public prefix + `-` + 64 hex characters
//! (256 bits) of secret, from the operating system's generator. Only the SHA-256 of the whole key is
//! stored; a presented key is found by its prefix and its hash compared in constant time.
//! Revocation and expiry are read from the store on every request, so they take effect on the
//! next one.

use std::sync::Arc;
use std::time::Duration;

use rand::TryRngCore;
use rand::rngs::OsRng;
use sha2::{Digest, Sha256};
use sluice_store::{KeyRecord, Store, StoreError, Tenant, now_ms};

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything, including the admin API.
    Admin,
    /// The model APIs and its own tenant's usage.
    Member,
}

impl Role {
    /// The stored label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Member => "member",
        }
    }

    /// Parses a stored or user-given label.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "admin" => Some(Self::Admin),
            "member" => Some(Self::Member),
            _ => None,
        }
    }
}

/// What a tenant's requests leave in the audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoggingPolicy {
    /// Nothing about the content.
    Off,
    /// Sizes and hashes of prompt and response.
    #[default]
    Metadata,
    /// Prompt and response with PII replaced by placeholders.
    Redacted,
    /// Prompt and response as they were.
    Full,
}

impl LoggingPolicy {
    /// The stored label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Metadata => "metadata",
            Self::Redacted => "redacted",
            Self::Full => "full",
        }
    }

    /// Parses a label.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "off" => Self::Off,
            "metadata" => Self::Metadata,
            "redacted" => Self::Redacted,
            "full" => Self::Full,
            _ => return None,
        })
    }
}

/// Who is calling: the authenticated key's tenant and role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Tenant id.
    pub tenant_id: String,
    /// Tenant name.
    pub tenant_name: String,
    /// Key id (never the key).
    pub key_id: String,
    /// Role.
    pub role: Role,
    /// The tenant's logging policy.
    pub logging: LoggingPolicy,
}

impl Principal {
    /// The prefix-cache namespace of this tenant: tenants never share cached prefixes.
    pub fn cache_namespace(&self) -> String {
        format!("tenant:{}", self.tenant_id)
    }
}

/// Why a request is not authenticated or not allowed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    #[error("Missing API key: send `Authorization: Bearer <key>`")]
    Missing,
    /// Not a key we issued, or a wrong secret.
    #[error("Invalid API key")]
    Invalid,
    /// Revoked.
    #[error("This API key was revoked{}", reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default())]
    Revoked {
        /// The reason given when revoking.
        reason: Option<String>,
    },
    /// Past its expiry.
    #[error("This API key expired at {expired_ms} (Unix ms)")]
    Expired {
        /// When.
        expired_ms: i64,
    },
    /// Authenticated, but the role does not allow this.
    #[error("This endpoint needs the {needed} role; this key is a {has} key")]
    Forbidden {
        /// Role required.
        needed: &'static str,
        /// Role held.
        has: &'static str,
    },
    /// The store failed.
    #[error("Cannot check the API key now: {0}")]
    Store(#[from] StoreError),
}

impl AuthError {
    /// Stable label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Missing => "missing_api_key",
            Self::Invalid => "invalid_api_key",
            Self::Revoked { .. } => "revoked_api_key",
            Self::Expired { .. } => "expired_api_key",
            Self::Forbidden { .. } => "forbidden",
            Self::Store(_) => "store_unavailable",
        }
    }

    /// HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            Self::Missing | Self::Invalid | Self::Revoked { .. } | Self::Expired { .. } => 401,
            Self::Forbidden { .. } => 403,
            Self::Store(_) => 503,
        }
    }

    /// Whether the same request may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Store(_))
    }
}

/// A failed administrative action.
#[derive(Debug, thiserror::Error)]
pub enum GovernError {
    /// Bad input.
    #[error("{0}")]
    Invalid(String),
    /// No such tenant or key.
    #[error("{0} not found")]
    NotFound(String),
    /// The store failed or refused.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl GovernError {
    /// Stable label.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "invalid",
            Self::NotFound(_) => "not_found",
            Self::Store(StoreError::Conflict(_)) => "conflict",
            Self::Store(_) => "store",
        }
    }

    /// HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            Self::Invalid(_) => 400,
            Self::NotFound(_) => 404,
            Self::Store(StoreError::Conflict(_)) => 409,
            Self::Store(_) => 503,
        }
    }
}

/// A freshly made key: its record and the key itself, shown once.
#[derive(Debug, Clone)]
pub struct NewKey {
    /// As stored.
    pub record: KeyRecord,
    /// The key; not stored anywhere.
    pub secret: String,
}

/// Characters of a key used to find it (`sk-sluice-` and 12 hex digits for keys we make).
const PREFIX_LEN: usize = 22;
/// Shortest key accepted from configuration.
const MIN_KEY_LEN: usize = 40;

fn random_hex(bytes: usize) -> Result<String, GovernError> {
    let mut buf = vec![0u8; bytes];
    OsRng.try_fill_bytes(&mut buf).map_err(|e| GovernError::Invalid(format!("the system random generator failed: {e}")))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Equality that takes the same time wherever the first difference is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Tenancy over a store.
#[derive(Debug, Clone)]
pub struct Governor {
    store: Store,
    auditor: Option<Arc<crate::Auditor>>,
    auth_cache: Arc<crate::auth_cache::AuthCache>,
}

impl Governor {
    /// Governs with `store`.
    pub fn new(store: Store) -> Self {
        Self { store, auditor: None, auth_cache: Default::default() }
    }

    /// Records administrative actions, authentication failures and requests in `auditor`.
    pub fn with_auditor(mut self, auditor: Arc<crate::Auditor>) -> Self {
        self.auditor = Some(auditor);
        self
    }

    /// The audit trail, if one is kept.
    pub fn auditor(&self) -> Option<&Arc<crate::Auditor>> {
        self.auditor.as_ref()
    }

    /// Appends an audit entry (when a trail is kept).
    pub fn audit(&self, kind: &str, tenant_id: Option<&str>, actor: Option<&str>, body: serde_json::Value) {
        if let Some(a) = &self.auditor {
            a.record(kind, tenant_id, actor, body);
        }
    }

    /// The public prefix of a presented key, safe to record (never the secret part).
    pub fn key_prefix(authorization: Option<&str>) -> Option<String> {
        let key = authorization?.strip_prefix("Bearer ").or_else(|| authorization?.strip_prefix("bearer "))?.trim();
        (key.len() >= MIN_KEY_LEN && key.is_char_boundary(PREFIX_LEN)).then(|| key[..PREFIX_LEN].to_string())
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Checks an `Authorization` header value.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, AuthError> {
        let key = authorization
            .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or(AuthError::Missing)?;
        if key.len() < MIN_KEY_LEN || !key.is_char_boundary(PREFIX_LEN) {
            return Err(AuthError::Invalid);
        }
        let presented = digest(key);
        let (record, tenant) = match self.auth_cache.get(&self.store, &presented).await? {
            // Found by the digest of the whole key: it is this key.
            (Some(hit), _) => hit,
            (None, epoch) => {
                let (record, tenant) = self.store.key_and_tenant(&key[..PREFIX_LEN]).await?.ok_or(AuthError::Invalid)?;
                let stored = (0..record.hash.len() / 2)
                    .map(|i| u8::from_str_radix(record.hash.get(2 * i..2 * i + 2).unwrap_or("zz"), 16).unwrap_or(0))
                    .collect::<Vec<u8>>();
                if !constant_time_eq(&presented, &stored) {
                    return Err(AuthError::Invalid);
                }
                self.auth_cache.put(presented, record.clone(), tenant.clone(), epoch);
                (record, tenant)
            }
        };
        if record.revoked_ms.is_some() {
            return Err(AuthError::Revoked { reason: record.revoked_reason });
        }
        if let Some(at) = record.expires_ms
            && now_ms() >= at
        {
            return Err(AuthError::Expired { expired_ms: at });
        }
        let role = Role::parse(&record.role).ok_or(AuthError::Invalid)?;
        let logging = LoggingPolicy::parse(&tenant.logging_policy).unwrap_or_default();
        Ok(Principal { tenant_id: tenant.id, tenant_name: tenant.name, key_id: record.id, role, logging })
    }

    /// Creates a tenant.
    pub async fn create_tenant(&self, name: &str) -> Result<Tenant, GovernError> {
        if !valid_name(name) {
            return Err(GovernError::Invalid(format!("tenant names are 1-64 letters, digits, - _ or . (got {name:?})")));
        }
        let t = Tenant {
            id: format!("ten_{}", random_hex(8)?),
            name: name.to_string(),
            created_ms: now_ms(),
            logging_policy: LoggingPolicy::Metadata.as_str().to_string(),
        };
        self.store.create_tenant(&t).await?;
        Ok(t)
    }

    /// A tenant by name, created when missing.
    pub async fn ensure_tenant(&self, name: &str) -> Result<Tenant, GovernError> {
        if let Some(t) = self.store.tenant_by_name(name).await? {
            return Ok(t);
        }
        match self.create_tenant(name).await {
            Err(GovernError::Store(StoreError::Conflict(_))) => {
                self.store.tenant_by_name(name).await?.ok_or_else(|| GovernError::NotFound(format!("tenant {name:?}")))
            }
            r => r,
        }
    }

    /// Makes a key for tenant `tenant` (by name); the key is in the result and nowhere else.
    pub async fn create_key(&self, tenant: &str, role: Role, name: &str, expires_in: Option<Duration>) -> Result<NewKey, GovernError> {
        let t = self.store.tenant_by_name(tenant).await?.ok_or_else(|| GovernError::NotFound(format!("tenant {tenant:?}")))?;
        let secret = format!("sk-sluice-{}-{}", random_hex(6)?, random_hex(32)?);
        self.store_key(&t, role, name, expires_in, secret).await
    }

    async fn store_key(&self, t: &Tenant, role: Role, name: &str, expires_in: Option<Duration>, secret: String) -> Result<NewKey, GovernError> {
        let now = now_ms();
        let record = KeyRecord {
            id: format!("key_{}", random_hex(8)?),
            prefix: secret[..PREFIX_LEN].to_string(),
            hash: hex(&digest(&secret)),
            tenant_id: t.id.clone(),
            role: role.as_str().to_string(),
            name: name.to_string(),
            created_ms: now,
            expires_ms: expires_in.map(|d| now + d.as_millis() as i64),
            revoked_ms: None,
            revoked_reason: None,
        };
        self.store.insert_key(&record).await?;
        Ok(NewKey { record, secret })
    }

    /// Keys of one tenant (by name) or all.
    pub async fn keys(&self, tenant: Option<&str>) -> Result<Vec<KeyRecord>, GovernError> {
        let id = match tenant {
            Some(name) => Some(self.store.tenant_by_name(name).await?.ok_or_else(|| GovernError::NotFound(format!("tenant {name:?}")))?.id),
            None => None,
        };
        Ok(self.store.keys(id.as_deref()).await?)
    }

    /// Sets the logging policy of tenant `name`.
    pub async fn set_logging_policy(&self, name: &str, policy: LoggingPolicy) -> Result<Tenant, GovernError> {
        let t = self.store.tenant_by_name(name).await?.ok_or_else(|| GovernError::NotFound(format!("tenant {name:?}")))?;
        self.store.set_logging_policy(&t.id, policy.as_str()).await?;
        self.auth_cache.clear();
        Ok(Tenant { logging_policy: policy.as_str().to_string(), ..t })
    }

    /// Revokes a key by id.
    pub async fn revoke_key(&self, id: &str, reason: &str) -> Result<(), GovernError> {
        let found = self.store.revoke_key(id, reason, now_ms()).await?;
        self.auth_cache.clear();
        if found { Ok(()) } else { Err(GovernError::NotFound(format!("key {id:?}"))) }
    }

    /// On a store without keys, makes the first admin key (tenant `admin`): the `configured` one
    /// when given (at least 40 characters), else a fresh one, returned so it can be shown once.
    /// Returns `None` when keys already exist.
    pub async fn bootstrap(&self, configured: Option<&str>) -> Result<Option<NewKey>, GovernError> {
        if self.store.key_count().await? > 0 {
            return Ok(None);
        }
        let tenant = self.ensure_tenant("admin").await?;
        let secret = match configured {
            Some(k) if k.len() >= MIN_KEY_LEN && k.is_char_boundary(PREFIX_LEN) => k.to_string(),
            Some(_) => return Err(GovernError::Invalid(format!("the bootstrap admin key must be at least {MIN_KEY_LEN} characters"))),
            None => format!("sk-sluice-{}-{}", random_hex(6)?, random_hex(32)?),
        };
        match self.store_key(&tenant, Role::Admin, "bootstrap", None, secret).await {
            Ok(k) => Ok(Some(k)),
            // Another process bootstrapped at the same moment.
            Err(GovernError::Store(StoreError::Conflict(_))) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    async fn governor() -> Governor {
        Governor::new(Store::open(&sluice_store::testing::sqlite_url("govern")).await.unwrap())
    }

    fn bearer(k: &str) -> String {
        format!("Bearer {k}")
    }

    #[tokio::test]
    async fn keys_authenticate_until_revoked_or_expired() {
        let g = governor().await;
        g.create_tenant("acme").await.unwrap();
        let k = g.create_key("acme", Role::Member, "ci", None).await.unwrap();
        assert!(k.secret.starts_with("sk-sluice-") && k.secret.len() == 10 + 12 + 1 + 64, "{}", k.secret);
        assert!(!k.record.hash.contains(&k.secret[23..]), "only a hash is stored");
        let p = g.authenticate(Some(&bearer(&k.secret))).await.unwrap();
        assert_eq!((p.tenant_name.as_str(), p.role), ("acme", Role::Member));
        assert_eq!(p.cache_namespace(), format!("tenant:{}", p.tenant_id));

        // A wrong secret with the right prefix, garbage, nothing.
        let mut wrong = k.secret.clone();
        wrong.replace_range(30..31, if &wrong[30..31] == "0" { "1" } else { "0" });
        assert!(matches!(g.authenticate(Some(&bearer(&wrong))).await, Err(AuthError::Invalid)));
        assert!(matches!(g.authenticate(Some("Bearer short")).await, Err(AuthError::Invalid)));
        assert!(matches!(g.authenticate(None).await, Err(AuthError::Missing)));
        assert!(matches!(g.authenticate(Some("Basic abc")).await, Err(AuthError::Missing)));

        g.revoke_key(&k.record.id, "leaked in a log").await.unwrap();
        let e = g.authenticate(Some(&bearer(&k.secret))).await.unwrap_err();
        assert_eq!(e.to_string(), "This API key was revoked: leaked in a log");
        assert_eq!(e.status(), 401);

        let short = g.create_key("acme", Role::Admin, "tmp", Some(Duration::from_millis(1))).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(matches!(g.authenticate(Some(&bearer(&short.secret))).await, Err(AuthError::Expired { .. })));
    }

    #[tokio::test]
    async fn bootstrap_happens_once() {
        let g = governor().await;
        let first = g.bootstrap(None).await.unwrap().unwrap();
        assert_eq!(g.authenticate(Some(&bearer(&first.secret))).await.unwrap().role, Role::Admin);
        assert!(g.bootstrap(None).await.unwrap().is_none());

        let g = governor().await;
        let configured = "sk-sluice-configured-0123456789abcdef0123456789";
        g.bootstrap(Some(configured)).await.unwrap().unwrap();
        assert_eq!(g.authenticate(Some(&bearer(configured))).await.unwrap().tenant_name, "admin");
        assert!(matches!(governor().await.bootstrap(Some("too-short")).await, Err(GovernError::Invalid(_))));
    }

    #[tokio::test]
    async fn names_and_tenants_are_checked() {
        let g = governor().await;
        assert!(matches!(g.create_tenant("no spaces").await, Err(GovernError::Invalid(_))));
        assert!(matches!(g.create_key("ghost", Role::Member, "x", None).await, Err(GovernError::NotFound(_))));
        g.create_tenant("acme").await.unwrap();
        assert_eq!(g.create_tenant("acme").await.unwrap_err().status(), 409);
        assert_eq!(g.ensure_tenant("acme").await.unwrap().name, "acme");
    }

    #[test]
    fn constant_time_comparison_is_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
