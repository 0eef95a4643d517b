//! Errors as HTTP responses in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sluice_engine::EngineError;
use sluice_protocol::{ErrorBody, ErrorDetail};

/// An error on its way to the client.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// OpenAI error type.
    pub kind: &'static str,
    /// Message for humans.
    pub message: String,
    /// Offending parameter.
    pub param: Option<String>,
    /// Machine-readable code.
    pub code: Option<&'static str>,
    /// Seconds after which a retry may succeed.
    pub retry_after: Option<u32>,
}

impl ApiError {
    /// 400 about a parameter.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            message: message.into(),
            param: Some(param.into()),
            code: Some("invalid_value"),
            retry_after: None,
        }
    }

    /// 404: the thing does not exist, or not for this caller (another tenant's data is answered
    /// exactly as a name never used).
    pub fn not_found(message: impl Into<String>) -> Self {
        Self { status: StatusCode::NOT_FOUND, code: Some("not_found"), param: None, ..Self::invalid("", message) }
    }

    /// 400 without a specific parameter.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self { param: None, code: None, ..Self::invalid("", message) }
    }

    /// 404 for a model name we do not serve.
    pub fn unknown_model(name: &str, served: &str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            kind: "invalid_request_error",
            message: format!("The model `{name}` does not exist. This server serves: {served}"),
            param: Some("model".into()),
            code: Some("model_not_found"),
            retry_after: None,
        }
    }

    /// 400 for a prompt that does not fit.
    pub fn context_length(message: String) -> Self {
        Self { code: Some("context_length_exceeded"), ..Self::invalid("messages", message) }
    }

    /// 503 while the model loads or the queue is full.
    pub fn unavailable(message: impl Into<String>, retry_after: u32) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: "service_unavailable",
            message: message.into(),
            param: None,
            code: Some("overloaded"),
            retry_after: Some(retry_after),
        }
    }

    /// 500.
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "server_error",
            message: message.into(),
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                message: self.message.clone(),
                kind: self.kind.to_string(),
                param: self.param.clone().filter(|p| !p.is_empty()),
                code: self.code.map(str::to_string),
            },
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::QueueFull { .. } => Self::unavailable(e.to_string(), 1),
            EngineError::Stopped => Self::unavailable(e.to_string(), 5),
            EngineError::InvalidRequest(m) => Self::context_length(m),
            EngineError::Model(m) => Self::internal(m),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}
