//! Reading back what was recorded: a tenant's ledger rows (`/v1/requests`) and audit entries
//! (`/v1/audit`, which also carry request content as the tenant's logging policy allowed).
//! Members see their own tenant only; another tenant's record is a 404, exactly like one that
//! never existed, so ids cannot be probed.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_govern::{Ledger, Principal, Role};
use sluice_store::{AuditEntry, LedgerRow};

use crate::error::ApiError;
use crate::ledger::{records_access, tenant_scope};

type Ledgers = State<Option<Arc<Ledger>>>;
type Caller = Option<Extension<Principal>>;
type QueryResult<T> = Result<Query<T>, axum::extract::rejection::QueryRejection>;

const MAX_PAGE: i64 = 1000;

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(e.to_string())
}

fn page_limit(limit: Option<i64>) -> Result<i64, ApiError> {
    match limit {
        None => Ok(100),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::invalid("limit", format!("`limit` must be between 1 and {MAX_PAGE}, got {n}"))),
    }
}

/// May `p` see a record of `tenant_id` (None: not a tenant's, e.g. a failed login)?
fn visible(p: &Principal, tenant_id: Option<&str>) -> bool {
    p.role == Role::Admin || tenant_id == Some(p.tenant_id.as_str())
}

fn row_json(r: &LedgerRow) -> Value {
    json!({
        "object": "request", "id": r.request_id, "created": r.created_ms / 1000, "created_ms": r.created_ms, "state": r.state,
        "tenant_id": r.tenant_id, "key_id": r.key_id, "feature": r.feature, "route": r.route, "backend": r.backend, "model": r.model,
        "attempts": r.attempts, "prompt_tokens": r.prompt_tokens, "cached_tokens": r.cached_tokens, "completion_tokens": r.completion_tokens,
        "cost_usd": r.cost_micros.map(|c| c as f64 / 1e6), "reserved_usd": r.reserved_micros as f64 / 1e6, "ttft_ms": r.ttft_ms,
        "duration_ms": r.duration_ms, "status": r.status, "outcome": r.outcome, "error_kind": r.error_kind, "settled_ms": r.settled_ms,
    })
}

fn entry_json(e: &AuditEntry) -> Value {
    // The body was written as canonical JSON; should it not parse, show it verbatim.
    let body = serde_json::from_str::<Value>(&e.entry.body).unwrap_or_else(|_| Value::String(e.entry.body.clone()));
    json!({
        "object": "audit.entry", "seq": e.seq, "ts_ms": e.entry.ts_ms, "kind": e.entry.kind, "tenant_id": e.entry.tenant_id,
        "actor": e.entry.actor, "body": body, "prev_hash": e.prev_hash, "hash": e.hash,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RequestsQuery {
    from: Option<i64>,
    to: Option<i64>,
    limit: Option<i64>,
    tenant: Option<String>,
}

/// `GET /v1/requests?from=&to=&limit=&tenant=`: ledger rows, newest first (`from`/`to` in Unix
/// seconds, default the last 24 hours).
pub(crate) async fn list_requests(State(ledger): Ledgers, principal: Caller, q: QueryResult<RequestsQuery>) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(format!("Invalid query: {}", e.body_text())))?;
    let (ledger, p) = records_access(ledger, principal)?;
    let limit = page_limit(q.limit)?;
    let to = q.to.map_or(sluice_store::now_ms(), |s| s * 1000);
    let from = q.from.map_or(to - 86_400_000, |s| s * 1000);
    let tenant = tenant_scope(&ledger, &p, q.tenant.as_deref()).await?;
    let rows = ledger.store().ledger_page(tenant.as_deref(), from, to, limit).await.map_err(internal)?;
    Ok(Json(json!({"object": "list", "data": rows.iter().map(row_json).collect::<Vec<_>>()})))
}

/// `GET /v1/requests/{id}`: one ledger row with its attempts.
pub(crate) async fn get_request(State(ledger): Ledgers, principal: Caller, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let (ledger, p) = records_access(ledger, principal)?;
    let row = ledger.store().ledger_row(&id).await.map_err(internal)?;
    let Some(row) = row.filter(|r| visible(&p, Some(&r.tenant_id))) else {
        return Err(ApiError::not_found(format!("no request {id:?}")));
    };
    let attempts = ledger.store().ledger_attempts(&id).await.map_err(internal)?;
    let mut out = row_json(&row);
    out["attempt_log"] = attempts
        .iter()
        .map(|a| json!({"backend": a.backend, "status": a.status, "outcome": a.outcome, "error": a.error, "duration_ms": a.duration_ms}))
        .collect();
    Ok(Json(out))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditQuery {
    after: Option<i64>,
    limit: Option<i64>,
    tenant: Option<String>,
}

/// `GET /v1/audit?after=&limit=&tenant=`: audit entries in chain order after sequence `after`.
/// Members get their tenant's entries; entries of no tenant (failed logins) are admins' only.
pub(crate) async fn list_audit(State(ledger): Ledgers, principal: Caller, q: QueryResult<AuditQuery>) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(format!("Invalid query: {}", e.body_text())))?;
    let (ledger, p) = records_access(ledger, principal)?;
    let limit = page_limit(q.limit)?;
    let tenant = tenant_scope(&ledger, &p, q.tenant.as_deref()).await?;
    let entries = ledger.store().audit_page(tenant.as_deref(), q.after.unwrap_or(0), limit).await.map_err(internal)?;
    Ok(Json(json!({"object": "list", "data": entries.iter().map(entry_json).collect::<Vec<_>>()})))
}

/// `GET /v1/audit/{seq}`: one entry.
pub(crate) async fn get_audit(State(ledger): Ledgers, principal: Caller, Path(seq): Path<String>) -> Result<Json<Value>, ApiError> {
    let (ledger, p) = records_access(ledger, principal)?;
    let missing = || ApiError::not_found(format!("no audit entry {seq:?}"));
    let n: i64 = seq.parse().map_err(|_| missing())?;
    let entry = ledger.store().audit_entry(n).await.map_err(internal)?;
    let entry = entry.filter(|e| visible(&p, e.entry.tenant_id.as_deref())).ok_or_else(missing)?;
    Ok(Json(entry_json(&entry)))
}
