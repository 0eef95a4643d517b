//! `/v1/collections`: tenant-scoped document collections with vector, lexical and hybrid
//! search (sluice-retrieval). Each caller sees its own tenant's collections only; another
//! tenant's collection is a 404 like one never made. Without API keys everything belongs to
//! the tenant `default`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sluice_govern::Principal;
use sluice_retrieval::{CollectionSpec, Collections, DocumentInput, Mode, Query};

use crate::error::ApiError;
use crate::gateway::{GatewayState, audit_refusal, request_context};
use crate::params;

type Coll = State<GatewayState>;
type Caller = Option<Extension<Principal>>;

fn access(state: GatewayState, p: Caller) -> Result<(Arc<Collections>, String), ApiError> {
    let c = state.collections.ok_or_else(|| ApiError::not_found("Collections need an embedding model: start with --embedding-model"))?;
    Ok((c, p.map_or_else(|| "default".to_string(), |Extension(p)| p.tenant_id)))
}

/// Runs `work` — which embeds — as a governed local request on `model`: admitted against the
/// caller's limits with `estimate` tokens, settled with the tokens it reports.
async fn governed<T>(
    state: &GatewayState,
    principal: &Caller,
    headers: &HeaderMap,
    model: &str,
    estimate: u64,
    work: impl std::future::Future<Output = Result<(T, u64), ApiError>>,
) -> Result<T, ApiError> {
    let ctx = request_context(principal.as_ref().map(|Extension(p)| p.clone()), headers);
    let local = state.gateway.admit_local(&ctx, model, estimate).await.map_err(|e| {
        audit_refusal(state, &ctx, "", &e);
        ApiError::from(e)
    })?;
    match work.await {
        Ok((v, tokens)) => {
            local.finish("ok", 200, tokens);
            Ok(v)
        }
        Err(e) => {
            local.finish(if e.status.is_client_error() { "invalid_request" } else { "retrieval_failed" }, e.status.as_u16(), 0);
            Err(e)
        }
    }
}

fn body<T: serde::de::DeserializeOwned>(b: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    params::parse_object(&params::read_body(b)?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: String,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    chunk_size: Option<usize>,
    #[serde(default)]
    chunk_overlap: Option<usize>,
}

async fn create(State(c): Coll, p: Caller, b: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let (c, tenant) = access(c, p)?;
    let b: CreateBody = body(b)?;
    let spec = CollectionSpec { name: b.name, model: b.model, chunk_size: b.chunk_size, chunk_overlap: b.chunk_overlap };
    let made = c.create(&tenant, &spec).await?;
    Ok((StatusCode::CREATED, Json(json!({"object": "collection", "collection": made}))).into_response())
}

async fn list(State(c): Coll, p: Caller) -> Result<Json<Value>, ApiError> {
    let (c, tenant) = access(c, p)?;
    Ok(Json(json!({"object": "list", "data": c.list(&tenant).await?})))
}

async fn show(State(c): Coll, p: Caller, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    let (c, tenant) = access(c, p)?;
    let coll = c.get(&tenant, &name).await?;
    let stats = c.stats(&tenant, &name).await?;
    Ok(Json(json!({"object": "collection", "collection": coll, "stats": stats})))
}

async fn remove(State(c): Coll, p: Caller, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    let (c, tenant) = access(c, p)?;
    c.delete(&tenant, &name).await?;
    Ok(Json(json!({"object": "collection.deleted", "name": name, "deleted": true})))
}

async fn stats(State(c): Coll, p: Caller, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    let (c, tenant) = access(c, p)?;
    Ok(Json(json!({"object": "collection.stats", "stats": c.stats(&tenant, &name).await?})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DocBody {
    id: String,
    text: String,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
    #[serde(default)]
    version: Option<i64>,
    /// Unix seconds.
    #[serde(default)]
    updated_at: Option<f64>,
    #[serde(default)]
    ttl_seconds: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpsertBody {
    documents: Vec<DocBody>,
}

/// Most documents in one upsert.
const MAX_DOCUMENTS: usize = 1000;

async fn upsert(State(state): Coll, p: Caller, headers: HeaderMap, Path(name): Path<String>, b: Result<Bytes, BytesRejection>) -> Result<Json<Value>, ApiError> {
    let (c, tenant) = access(state.clone(), p.clone())?;
    let model = c.get(&tenant, &name).await?.model;
    let b: UpsertBody = body(b)?;
    if b.documents.is_empty() || b.documents.len() > MAX_DOCUMENTS {
        return Err(ApiError::invalid("documents", format!("`documents` must hold 1 to {MAX_DOCUMENTS} documents")));
    }
    let mut docs = Vec::with_capacity(b.documents.len());
    for (i, d) in b.documents.into_iter().enumerate() {
        if d.ttl_seconds.is_some_and(|t| !(t > 0.0 && t.is_finite())) {
            return Err(ApiError::invalid(format!("documents[{i}].ttl_seconds"), "`ttl_seconds` must be a positive number"));
        }
        if d.updated_at.is_some_and(|t| !t.is_finite() || t < 0.0) {
            return Err(ApiError::invalid(format!("documents[{i}].updated_at"), "`updated_at` must be Unix seconds"));
        }
        docs.push(DocumentInput {
            id: d.id,
            text: d.text,
            metadata: d.metadata.unwrap_or_default(),
            version: d.version,
            updated_ms: d.updated_at.map(|t| (t * 1e3) as i64),
            ttl_ms: d.ttl_seconds.map(|t| (t * 1e3) as i64),
        });
    }
    // About four characters a token, until chunking counts them.
    let estimate = docs.iter().map(|d| d.text.len() as u64 / 4 + 2).sum();
    let done = governed(&state, &p, &headers, &model, estimate, async {
        let done = c.upsert(&tenant, &name, docs).await?;
        let tokens = done.iter().map(|u| u.tokens as u64).sum();
        Ok((done, tokens))
    })
    .await?;
    Ok(Json(json!({"object": "list", "data": done})))
}

async fn delete_document(State(c): Coll, p: Caller, Path((name, id)): Path<(String, String)>) -> Result<Json<Value>, ApiError> {
    let (c, tenant) = access(c, p)?;
    c.delete_document(&tenant, &name, &id).await?;
    Ok(Json(json!({"object": "document.deleted", "id": id, "deleted": true})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryBody {
    query: String,
    #[serde(default)]
    k: Option<usize>,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    filter: Option<Map<String, Value>>,
    #[serde(default)]
    max_age_seconds: Option<f64>,
    #[serde(default)]
    vector: Option<Vec<f32>>,
}

async fn query(State(state): Coll, p: Caller, headers: HeaderMap, Path(name): Path<String>, b: Result<Bytes, BytesRejection>) -> Result<Json<Value>, ApiError> {
    let (c, tenant) = access(state.clone(), p.clone())?;
    let b: QueryBody = body(b)?;
    let mode = match b.mode.as_deref() {
        None => Mode::Hybrid,
        Some(m) => Mode::parse(m).ok_or_else(|| ApiError::invalid("mode", format!("`mode` must be vector, lexical or hybrid, got {m:?}")))?,
    };
    if b.max_age_seconds.is_some_and(|a| !(a > 0.0 && a.is_finite())) {
        return Err(ApiError::invalid("max_age_seconds", "`max_age_seconds` must be a positive number"));
    }
    let q = Query { text: b.query, k: b.k.unwrap_or(10), mode, filter: b.filter.unwrap_or_default(), max_age_ms: b.max_age_seconds.map(|a| (a * 1e3) as i64), vector: b.vector };
    let model = c.get(&tenant, &name).await?.model;
    let tokens = q.text.len() as u64 / 4 + 2;
    let hits = governed(&state, &p, &headers, &model, tokens, async { Ok((c.query(&tenant, &name, &q).await?, tokens)) }).await?;
    Ok(Json(json!({"object": "list", "data": hits})))
}

/// The collections API over `collections` (None: answered with 404s saying what is missing).
pub(crate) fn router(state: GatewayState) -> Router {
    Router::new()
        .route("/v1/collections", get(list).post(create))
        .route("/v1/collections/{name}", get(show).delete(remove))
        .route("/v1/collections/{name}/stats", get(stats))
        .route("/v1/collections/{name}/documents", post(upsert))
        .route("/v1/collections/{name}/documents/{id}", axum::routing::delete(delete_document))
        .route("/v1/collections/{name}/query", post(query))
        .with_state(state)
}
