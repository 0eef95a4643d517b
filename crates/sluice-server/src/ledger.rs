//! The gateway's governance hook backed by `sluice-govern`'s ledger: admission reserves the
//! worst case (and checks rate limits), settlement writes the ledger row. Plus the usage
//! report, `GET /v1/usage`.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde::Deserialize;
use serde_json::json;
use sluice_gateway::{Admission, Governance, Receipt, Refusal, Settled};
use sluice_govern::{AdmitRequest, Ledger, Principal, Role, SettleRequest};
use sluice_store::{AttemptRow, GroupBy, Settlement};

use crate::error::ApiError;

/// Limits, budgets and the ledger for the gateway.
#[derive(Debug, Clone)]
pub struct LedgerGovernance {
    ledger: Arc<Ledger>,
    auditor: Option<Arc<sluice_govern::Auditor>>,
    redactor: Option<Arc<sluice_govern::Redactor>>,
}

impl LedgerGovernance {
    /// Over a started ledger.
    pub fn new(ledger: Arc<Ledger>) -> Self {
        Self { ledger, auditor: None, redactor: None }
    }

    /// Also appends one audit entry per settled request, with its content as the tenant's
    /// logging policy allows (`redactor` serves the `redacted` policy).
    pub fn with_auditor(mut self, auditor: Option<Arc<sluice_govern::Auditor>>, redactor: Option<Arc<sluice_govern::Redactor>>) -> Self {
        self.auditor = auditor;
        self.redactor = redactor;
        self
    }
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// The content fields of a request's audit entry under `policy`: nothing (`off`), sizes and
/// SHA-256 hashes (`metadata`), text with PII replaced (`redacted`), or the text (`full`).
pub fn content_fields(policy: &str, prompt: Option<&str>, response: Option<&str>, redactor: Option<&sluice_govern::Redactor>) -> serde_json::Map<String, serde_json::Value> {
    let mut out = serde_json::Map::new();
    for (name, text) in [("prompt", prompt), ("response", response)] {
        let Some(t) = text else { continue };
        match policy {
            "metadata" => {
                out.insert(format!("{name}_bytes"), json!(t.len()));
                out.insert(format!("{name}_sha256"), json!(sha256_hex(t)));
            }
            "redacted" => {
                // Without a redactor nothing safe can be written: fall back to metadata.
                match redactor {
                    Some(r) => {
                        out.insert(name.to_string(), json!(r.redact(t)));
                    }
                    None => {
                        out.insert(format!("{name}_bytes"), json!(t.len()));
                    }
                }
            }
            "full" => {
                out.insert(name.to_string(), json!(t));
            }
            _ => {}
        }
    }
    out
}

/// The ledger row of a settled request.
pub fn settlement(s: &Settled) -> Settlement {
    Settlement {
        request_id: s.request_id.clone(),
        backend: s.backend.clone(),
        model: s.model.clone(),
        prompt_tokens: s.usage.prompt_tokens as i64,
        cached_tokens: s.usage.cached_tokens as i64,
        completion_tokens: s.usage.completion_tokens as i64,
        cost_micros: s.cost_micros,
        ttft_ms: s.ttft.map(|d| d.as_secs_f64() * 1e3),
        duration_ms: s.duration.as_secs_f64() * 1e3,
        status: i64::from(s.status),
        outcome: s.outcome.to_string(),
        error_kind: (s.outcome != "ok").then(|| s.outcome.to_string()),
        attempts: s
            .attempts
            .iter()
            .map(|a| AttemptRow {
                backend: a.backend.clone(),
                status: a.status.map(i64::from),
                outcome: a.outcome.to_string(),
                error: a.error.clone(),
                duration_ms: a.duration.as_secs_f64() * 1e3,
            })
            .collect(),
        settled_ms: sluice_store::now_ms(),
    }
}

impl Governance for LedgerGovernance {
    fn admit(&self, a: Admission) -> BoxFuture<'_, Result<Receipt, Refusal>> {
        async move {
            let req = AdmitRequest {
                request_id: a.request_id,
                tenant_id: a.caller.tenant_id,
                key_id: a.caller.key_id,
                feature: a.feature,
                route: a.route,
                prompt_tokens: a.prompt_tokens,
                max_tokens: a.max_tokens,
                worst_case_micros: a.worst_case_micros,
            };
            let refusal = |e: sluice_govern::AdmitError| Refusal {
                status: e.status(),
                code: e.kind(),
                message: e.to_string(),
                retry_after: e.retry_after(),
            };
            let pending = self.ledger.admit(&req).await.map_err(refusal)?;
            Ok(if pending.is_written() { Receipt::done() } else { Receipt::pending(async move { pending.written().await.map_err(refusal) }.boxed()) })
        }
        .boxed()
    }

    fn settle(&self, s: Settled) {
        let Some(caller) = s.caller.clone() else { return };
        if let Some(a) = &self.auditor {
            let mut body = json!({"request_id": s.request_id, "feature": s.feature, "route": s.route, "backend": s.backend, "model": s.model,
                   "attempts": s.attempts.len(), "prompt_tokens": s.usage.prompt_tokens, "cached_tokens": s.usage.cached_tokens,
                   "completion_tokens": s.usage.completion_tokens, "cost_micros": s.cost_micros, "status": s.status,
                   "outcome": s.outcome, "logging": caller.logging});
            if let Some(obj) = body.as_object_mut() {
                obj.extend(content_fields(&caller.logging, s.prompt_text.as_deref(), s.response_text.as_deref(), self.redactor.as_deref()));
            }
            a.record("request", Some(&caller.tenant_id), Some(&caller.key_id), body);
        }
        let req = SettleRequest {
            tenant_id: caller.tenant_id,
            key_id: caller.key_id,
            feature: s.feature.clone(),
            admitted_tokens: s.admitted_tokens,
            settlement: settlement(&s),
        };
        self.ledger.settle(req);
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UsageQuery {
    from: Option<i64>,
    to: Option<i64>,
    group_by: Option<String>,
    granularity: Option<String>,
    tenant: Option<String>,
    format: Option<String>,
}

/// `GET /v1/usage?from=&to=&group_by=tenant|key|feature|model|backend&granularity=hour|day&format=json|csv`
/// (`from`/`to` in Unix seconds, default the last 24 hours). Members see their own tenant only.
pub(crate) async fn usage(
    State(ledger): State<Option<Arc<Ledger>>>,
    principal: Option<Extension<Principal>>,
    q: Result<Query<UsageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(format!("Invalid query: {}", e.body_text())))?;
    let (ledger, p) = records_access(ledger, principal)?;
    let now = sluice_store::now_ms();
    let to = q.to.map_or(now, |s| s * 1000);
    let from = q.from.map_or(to - 86_400_000, |s| s * 1000);
    if from >= to {
        return Err(ApiError::invalid("from", "`from` must be before `to`"));
    }
    let group_by = match q.group_by.as_deref().unwrap_or("tenant") {
        "tenant" => GroupBy::Tenant,
        "key" => GroupBy::Key,
        "feature" => GroupBy::Feature,
        "model" => GroupBy::Model,
        "backend" => GroupBy::Backend,
        other => return Err(ApiError::invalid("group_by", format!("`group_by` must be tenant, key, feature, model or backend, got {other:?}"))),
    };
    let bucket = match q.granularity.as_deref().unwrap_or("day") {
        "hour" => 3_600_000,
        "day" => 86_400_000,
        other => return Err(ApiError::invalid("granularity", format!("`granularity` must be hour or day, got {other:?}"))),
    };
    let tenant_id = tenant_scope(&ledger, &p, q.tenant.as_deref()).await?;
    let lines = ledger.store().usage(from, to, bucket, group_by, tenant_id.as_deref()).await.map_err(|e| ApiError::internal(e.to_string()))?;
    if q.format.as_deref() == Some("csv") {
        let mut csv = String::from("bucket_start,group,requests,prompt_tokens,cached_tokens,completion_tokens,cost_usd\n");
        for l in &lines {
            csv.push_str(&format!(
                "{},{},{},{},{},{},{:.6}\n",
                l.bucket_ms / 1000,
                l.group.replace([',', '\n'], " "),
                l.requests,
                l.prompt_tokens,
                l.cached_tokens,
                l.completion_tokens,
                l.cost_micros as f64 / 1e6
            ));
        }
        return Ok(([(header::CONTENT_TYPE, "text/csv")], csv).into_response());
    }
    let data: Vec<_> = lines
        .iter()
        .map(|l| {
            json!({"bucket_start": l.bucket_ms / 1000, "group": l.group, "requests": l.requests, "prompt_tokens": l.prompt_tokens,
                   "cached_tokens": l.cached_tokens, "completion_tokens": l.completion_tokens, "cost_usd": l.cost_micros as f64 / 1e6})
        })
        .collect();
    Ok(Json(json!({"object": "usage", "from": from / 1000, "to": to / 1000, "group_by": q.group_by.unwrap_or_else(|| "tenant".into()), "data": data}))
        .into_response())
}

/// The store and the caller, for the read APIs (usage, requests, audit); 404 without a store.
pub(crate) fn records_access(ledger: Option<Arc<Ledger>>, principal: Option<Extension<Principal>>) -> Result<(Arc<Ledger>, Principal), ApiError> {
    match (ledger, principal) {
        (Some(l), Some(Extension(p))) => Ok((l, p)),
        _ => Err(ApiError::not_found("This needs a store and API keys: start with --database-url")),
    }
}

/// Which tenant's records a read covers: an admin's chosen tenant (by name) or every tenant; a
/// member's own tenant only. Another tenant's data does not exist for a member: 404, as for a
/// name never used.
pub(crate) async fn tenant_scope(ledger: &Ledger, p: &Principal, asked: Option<&str>) -> Result<Option<String>, ApiError> {
    if p.role != Role::Admin {
        if let Some(other) = asked.filter(|t| *t != p.tenant_name) {
            return Err(ApiError { param: Some("tenant".into()), ..ApiError::not_found(format!("no tenant named {other:?}")) });
        }
        return Ok(Some(p.tenant_id.clone()));
    }
    let Some(name) = asked else { return Ok(None) };
    let tenant = ledger.store().tenant_by_name(name).await.map_err(|e| ApiError::internal(e.to_string()))?;
    tenant.map(|t| Some(t.id)).ok_or_else(|| ApiError::invalid("tenant", format!("no tenant named {name:?}")))
}
