//! `POST /v1/embeddings` (OpenAI-compatible): a string, a list of strings, or token ids in;
//! normalised vectors out as floats or base64 (little-endian f32, what the official clients ask
//! for by default); usage counted. An input longer than the model takes is a 400, unless the
//! request sets `"truncate": true`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use base64::Engine as _;
use sluice_protocol::{EmbeddingData, EmbeddingInput, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage, EmbeddingVector};
use sluice_retrieval::{EmbeddingService, RetrievalError};

use crate::error::ApiError;
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

/// Handles one embeddings request.
pub(crate) async fn embeddings(State(embedders): State<Embedders>, body: Result<Bytes, BytesRejection>) -> Result<Json<EmbeddingResponse>, ApiError> {
    let body = params::read_body(body)?;
    let req: EmbeddingRequest = params::parse_object(&body)?;
    let svc = service(&embedders, &req.model)?;
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
    let embedded = match req.input {
        EmbeddingInput::One(s) => svc.embed_texts(&[s], truncate).await?,
        EmbeddingInput::Many(v) => svc.embed_texts(&v, truncate).await?,
        EmbeddingInput::Tokens(ids) => svc.embed_ids(vec![ids], truncate).await?,
        EmbeddingInput::ManyTokens(v) => svc.embed_ids(v, truncate).await?,
    };
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
