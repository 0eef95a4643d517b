//! `POST /v1/embeddings` (OpenAI-compatible): a string, a list of strings, or token ids in;
//! normalised vectors out as floats or base64 (little-endian f32, what the official clients ask
//! for by default); usage counted. An input longer than the model takes is a 400, unless the
//! request sets `"truncate": true`.

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use sluice_gateway::{LocalRequest, RequestContext};
use sluice_govern::Principal;
use base64::Engine as _;
use sluice_protocol::{EmbeddingData, EmbeddingInput, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage, EmbeddingVector};
use sluice_retrieval::{EmbeddingService, RetrievalError};

use crate::error::ApiError;
use crate::gateway::{GatewayState, audit_refusal, request_context};
use crate::params;

pub use sluice_retrieval::Embedders;

/// Most inputs in one request (OpenAI's limit).
const MAX_INPUTS: usize = 2048;

impl From<RetrievalError> for ApiError {
    fn from(e: RetrievalError) -> Self {
        let message = e.to_string();
        match e {
            RetrievalError::InputTooLong { index, .. } => {
                ApiError { code: Some("context_length_exceeded"), ..ApiError::invalid(format!("input[{index}]"), message) }
            }
            RetrievalError::Invalid(_) => ApiError::bad_request(message),
            RetrievalError::NotFound(_) => ApiError::not_found(message),
            RetrievalError::Conflict(_) => ApiError { status: StatusCode::CONFLICT, code: Some("conflict"), ..ApiError::bad_request(message) },
            RetrievalError::Index(_) | RetrievalError::Store(_) => ApiError::internal(message),
            RetrievalError::Overloaded | RetrievalError::Stopped => ApiError::unavailable(message, 1),
            RetrievalError::Model(_) => ApiError::internal(message),
        }
    }
}

/// The service serving `model`, or a 404 naming what is served.
pub(crate) fn service<'a>(embedders: &'a Embedders, model: &str) -> Result<&'a EmbeddingService, ApiError> {
    embedders.get(model).ok_or_else(|| {
        let served: Vec<&str> = embedders.keys().map(String::as_str).collect();
        ApiError {
            status: StatusCode::NOT_FOUND,
            code: Some("model_not_found"),
            ..ApiError::invalid("model", format!("The embedding model `{model}` does not exist; served: {}", served.join(", ")))
        }
    })
}

/// Handles one embeddings request: admitted against the caller's limits and settled in the
/// ledger like a routed request.
pub(crate) async fn embeddings(
    State(state): State<GatewayState>,
    principal: Option<Extension<Principal>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let ctx = request_context(principal.map(|Extension(p)| p), &headers);
    let mut admitted = None;
    let result = run(&state, &ctx, &mut admitted, body).await;
    let status = match &result {
        Ok(_) => 200,
        Err(e) => e.status.as_u16(),
    };
    if let Some((local, tokens)) = admitted {
        let outcome = if status == 200 { "ok" } else if status < 500 { "invalid_request" } else { "embedding_failed" };
        local.finish(outcome, status, tokens);
    }
    match result {
        Ok(r) => r.into_response(),
        Err(e) => e.into_response(),
    }
}

async fn run(
    state: &GatewayState,
    ctx: &RequestContext,
    admitted: &mut Option<(LocalRequest, u64)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<EmbeddingResponse>, ApiError> {
    let embedders = &state.embedders;
    let body = params::read_body(body)?;
    let req: EmbeddingRequest = params::parse_object(&body)?;
    let svc = service(embedders, &req.model)?;
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => return Err(ApiError::invalid("encoding_format", format!("`encoding_format` must be float or base64, got {other:?}"))),
    };
    if let Some(d) = req.dimensions.filter(|d| *d as usize != svc.dim()) {
        return Err(ApiError::invalid("dimensions", format!("`{}` produces {}-dimensional vectors; `dimensions` {d} is not available", req.model, svc.dim())));
    }
    let truncate = req.truncate.unwrap_or(false);
    let count = match &req.input {
        EmbeddingInput::One(_) | EmbeddingInput::Tokens(_) => 1,
        EmbeddingInput::Many(v) => v.len(),
        EmbeddingInput::ManyTokens(v) => v.len(),
    };
    if count == 0 || count > MAX_INPUTS {
        return Err(ApiError::invalid("input", format!("`input` must hold 1 to {MAX_INPUTS} items, got {count}")));
    }
    let ids = match req.input {
        EmbeddingInput::One(s) => svc.tokenize_all(vec![s]).await?,
        EmbeddingInput::Many(v) => svc.tokenize_all(v).await?,
        EmbeddingInput::Tokens(ids) => vec![ids],
        EmbeddingInput::ManyTokens(v) => v,
    };
    // Inputs the model cannot take are refused before admission: they cost nothing.
    for (index, t) in ids.iter().enumerate() {
        if t.is_empty() {
            return Err(RetrievalError::Invalid(format!("input {index} is empty")).into());
        }
        if t.len() > svc.max_tokens() && !truncate {
            return Err(RetrievalError::InputTooLong { index, tokens: t.len(), max: svc.max_tokens(), model: req.model.clone() }.into());
        }
    }
    let tokens: usize = ids.iter().map(|t| t.len().min(svc.max_tokens())).sum();
    let local = state.gateway.admit_local(ctx, &req.model, tokens as u64).await.map_err(|e| {
        audit_refusal(state, ctx, "", &e);
        ApiError::from(e)
    })?;
    *admitted = Some((local, tokens as u64));
    let embedded = svc.embed_ids(ids, truncate).await?;
    let data = embedded
        .vectors
        .into_iter()
        .enumerate()
        .map(|(i, v)| EmbeddingData {
            object: "embedding".into(),
            index: i as u32,
            embedding: if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                EmbeddingVector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                EmbeddingVector::Float(v)
            },
        })
        .collect();
    let tokens = embedded.tokens as u32;
    Ok(Json(EmbeddingResponse { object: "list".into(), data, model: req.model, usage: EmbeddingUsage { prompt_tokens: tokens, total_tokens: tokens } }))
}
