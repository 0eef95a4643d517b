//! The admin API: tenants and API keys. Admin role only; a new key is returned once and
//! never again.

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::json;
use sluice_govern::{GovernError, Governor, Principal, Role};
use sluice_store::KeyRecord;

use crate::auth::require_admin;
use crate::error::ApiError;
use crate::params;

impl From<GovernError> for ApiError {
    fn from(e: GovernError) -> Self {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ApiError { status, code: Some(e.kind()), ..ApiError::bad_request(e.to_string()) }
    }
}

fn key_json(k: &KeyRecord) -> serde_json::Value {
    json!({"id": k.id, "prefix": k.prefix, "tenant_id": k.tenant_id, "role": k.role, "name": k.name,
           "created_ms": k.created_ms, "expires_ms": k.expires_ms, "revoked_ms": k.revoked_ms,
           "revoked_reason": k.revoked_reason})
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTenant {
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKeyBody {
    tenant: String,
    role: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    expires_in_seconds: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoggingBody {
    policy: String,
}

/// `PUT /admin/tenants/{name}/logging`: what the tenant's requests leave in the audit trail.
async fn set_logging(
    State(g): State<Option<Governor>>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let g = admin(g, &p, "/admin/tenants/logging")?;
    let req: LoggingBody = body(b)?;
    let policy = sluice_govern::LoggingPolicy::parse(&req.policy)
        .ok_or_else(|| ApiError::invalid("policy", "`policy` must be off, metadata, redacted or full"))?;
    let t = g.set_logging_policy(&name, policy).await?;
    g.audit("admin.logging_policy_set", Some(&t.id), Some(&p.key_id), json!({"tenant": t.name, "policy": policy.as_str()}));
    Ok(Json(json!({"tenant": t.name, "logging_policy": policy.as_str()})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Revoke {
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize)]
struct KeyFilter {
    tenant: Option<String>,
}

fn body<T: serde::de::DeserializeOwned>(b: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let b = params::read_body(b)?;
    params::parse_body(&b)
}

/// The governor, for an admin caller; a member is refused (and the refusal audited).
fn admin(g: Option<Governor>, p: &Principal, path: &str) -> Result<Governor, ApiError> {
    let g = governor(g)?;
    if let Err(e) = require_admin(p) {
        g.audit("auth.forbidden", Some(&p.tenant_id), Some(&p.key_id), json!({"path": path, "role": p.role.as_str()}));
        return Err(e);
    }
    Ok(g)
}

fn governor(g: Option<Governor>) -> Result<Governor, ApiError> {
    g.ok_or_else(|| ApiError {
        status: StatusCode::NOT_FOUND,
        code: Some("not_found"),
        ..ApiError::bad_request("The admin API needs a store: start with --database-url or [store] in the config")
    })
}

async fn list_tenants(State(g): State<Option<Governor>>, Extension(p): Extension<Principal>) -> Result<Response, ApiError> {
    let tenants = admin(g, &p, "/admin/tenants")?.store().tenants().await.map_err(GovernError::from)?;
    let data: Vec<_> =
        tenants.iter().map(|t| json!({"id": t.id, "name": t.name, "created_ms": t.created_ms, "logging_policy": t.logging_policy})).collect();
    Ok(Json(json!({"object": "list", "data": data})).into_response())
}

async fn create_tenant(
    State(g): State<Option<Governor>>,
    Extension(p): Extension<Principal>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let g = admin(g, &p, "/admin/tenants")?;
    let req: NewTenant = body(b)?;
    let t = g.create_tenant(&req.name).await?;
    tracing::info!(tenant = %t.name, by_key = %p.key_id, "tenant created");
    g.audit("admin.tenant_created", Some(&t.id), Some(&p.key_id), json!({"tenant": t.name}));
    Ok((StatusCode::CREATED, Json(json!({"id": t.id, "name": t.name, "created_ms": t.created_ms}))).into_response())
}

async fn list_keys(
    State(g): State<Option<Governor>>,
    Extension(p): Extension<Principal>,
    Query(f): Query<KeyFilter>,
) -> Result<Response, ApiError> {
    let keys = admin(g, &p, "/admin/keys")?.keys(f.tenant.as_deref()).await?;
    Ok(Json(json!({"object": "list", "data": keys.iter().map(key_json).collect::<Vec<_>>()})).into_response())
}

async fn create_key(
    State(g): State<Option<Governor>>,
    Extension(p): Extension<Principal>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let g = admin(g, &p, "/admin/keys")?;
    let req: NewKeyBody = body(b)?;
    let role = Role::parse(&req.role).ok_or_else(|| ApiError::invalid("role", "`role` must be admin or member"))?;
    let expires = req.expires_in_seconds.map(std::time::Duration::from_secs);
    let k = g.create_key(&req.tenant, role, req.name.as_deref().unwrap_or(""), expires).await?;
    tracing::info!(key = %k.record.id, tenant = %req.tenant, role = role.as_str(), by_key = %p.key_id, "API key created");
    g.audit(
        "admin.key_created",
        Some(&k.record.tenant_id),
        Some(&p.key_id),
        json!({"key_id": k.record.id, "prefix": k.record.prefix, "role": role.as_str(), "name": k.record.name, "expires_ms": k.record.expires_ms}),
    );
    let mut out = key_json(&k.record);
    out["key"] = json!(k.secret);
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

async fn revoke_key(
    State(g): State<Option<Governor>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let g = admin(g, &p, "/admin/keys/revoke")?;
    let reason = match b {
        Ok(bytes) if bytes.is_empty() => None,
        other => body::<Revoke>(other)?.reason,
    };
    let reason = reason.unwrap_or_else(|| "revoked by an admin".into());
    g.revoke_key(&id, &reason).await?;
    tracing::info!(key = %id, by_key = %p.key_id, "API key revoked");
    g.audit("admin.key_revoked", None, Some(&p.key_id), json!({"key_id": id, "reason": reason}));
    Ok(Json(json!({"id": id, "revoked": true})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsBody {
    scope: String,
    tenant: String,
    #[serde(default)]
    key_id: Option<String>,
    #[serde(default)]
    feature: Option<String>,
    #[serde(default)]
    rpm: Option<i64>,
    #[serde(default)]
    tpm: Option<i64>,
    #[serde(default)]
    concurrent: Option<i64>,
    #[serde(default)]
    usd_per_day: Option<f64>,
    #[serde(default)]
    usd_per_month: Option<f64>,
}

fn usd_micros(param: &str, v: Option<f64>) -> Result<Option<i64>, ApiError> {
    match v {
        None => Ok(None),
        Some(x) if x.is_finite() && x >= 0.0 => Ok(Some((x * 1e6).round() as i64)),
        Some(x) => Err(ApiError::invalid(param, format!("`{param}` must be a non-negative number of dollars, got {x}"))),
    }
}

/// `PUT /admin/limits`: sets (replaces) the limits of a tenant, a key or a tenant's feature;
/// omitted fields are unlimited, all omitted removes the limits.
async fn set_limits(
    State(g): State<Option<Governor>>,
    Extension(p): Extension<Principal>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let g = admin(g, &p, "/admin/limits")?;
    let req: LimitsBody = body(b)?;
    let tenant = g
        .store()
        .tenant_by_name(&req.tenant)
        .await
        .map_err(GovernError::from)?
        .ok_or_else(|| ApiError::invalid("tenant", format!("no tenant named {:?}", req.tenant)))?;
    let scope_id = match (req.scope.as_str(), &req.key_id, &req.feature) {
        ("tenant", None, None) => tenant.id.clone(),
        ("key", Some(k), None) => {
            let keys = g.keys(Some(&req.tenant)).await?;
            if !keys.iter().any(|r| &r.id == k) {
                return Err(ApiError::invalid("key_id", format!("tenant {:?} has no key {k:?}", req.tenant)));
            }
            k.clone()
        }
        ("feature", None, Some(f)) if !f.is_empty() => format!("{}/{f}", tenant.id),
        ("tenant" | "key" | "feature", _, _) => {
            return Err(ApiError::invalid("scope", "scope tenant takes only `tenant`; key needs `key_id`; feature needs `feature`"));
        }
        (other, _, _) => return Err(ApiError::invalid("scope", format!("`scope` must be tenant, key or feature, got {other:?}"))),
    };
    for (v, name) in [(req.rpm, "rpm"), (req.tpm, "tpm"), (req.concurrent, "concurrent")] {
        if v.is_some_and(|n| n < 0) {
            return Err(ApiError::invalid(name, format!("`{name}` must not be negative")));
        }
    }
    let limits = sluice_store::Limits {
        rpm: req.rpm,
        tpm: req.tpm,
        concurrent: req.concurrent,
        usd_micros_per_day: usd_micros("usd_per_day", req.usd_per_day)?,
        usd_micros_per_month: usd_micros("usd_per_month", req.usd_per_month)?,
    };
    g.store().set_limits(&req.scope, &scope_id, &limits).await.map_err(GovernError::from)?;
    tracing::info!(scope = %req.scope, scope_id = %scope_id, by_key = %p.key_id, "limits set");
    g.audit(
        "admin.limits_set",
        Some(&tenant.id),
        Some(&p.key_id),
        json!({"scope": req.scope, "scope_id": scope_id, "rpm": limits.rpm, "tpm": limits.tpm, "concurrent": limits.concurrent,
               "usd_micros_per_day": limits.usd_micros_per_day, "usd_micros_per_month": limits.usd_micros_per_month}),
    );
    Ok(Json(json!({"scope": req.scope, "scope_id": scope_id, "rpm": limits.rpm, "tpm": limits.tpm, "concurrent": limits.concurrent,
                   "usd_per_day": req.usd_per_day, "usd_per_month": req.usd_per_month, "takes_effect_within_seconds": 2}))
    .into_response())
}

async fn list_limits(State(g): State<Option<Governor>>, Extension(p): Extension<Principal>) -> Result<Response, ApiError> {
    let all = admin(g, &p, "/admin/limits")?.store().all_limits().await.map_err(GovernError::from)?;
    let data: Vec<_> = all
        .iter()
        .map(|(scope, id, l)| {
            json!({"scope": scope, "scope_id": id, "rpm": l.rpm, "tpm": l.tpm, "concurrent": l.concurrent,
                   "usd_per_day": l.usd_micros_per_day.map(|m| m as f64 / 1e6), "usd_per_month": l.usd_micros_per_month.map(|m| m as f64 / 1e6)})
        })
        .collect();
    Ok(Json(json!({"object": "list", "data": data})).into_response())
}

/// `/admin/...` routes (to be wrapped by the authentication middleware).
pub fn routes(gov: Option<Governor>) -> Router {
    Router::new()
        .route("/admin/tenants", get(list_tenants).post(create_tenant))
        .route("/admin/keys", get(list_keys).post(create_key))
        .route("/admin/keys/{id}/revoke", post(revoke_key))
        .route("/admin/limits", get(list_limits).put(set_limits))
        .route("/admin/tenants/{name}/logging", axum::routing::put(set_logging))
        .with_state(gov)
}
