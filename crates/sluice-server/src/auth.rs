//! API keys at the edge: with a store configured, every `/v1` and `/admin` request needs
//! `Authorization: Bearer <key>`; the key's tenant and role travel in the request's extensions.
//! Without a store (local development) requests pass unauthenticated.

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sluice_govern::{AuthError, Governor, Principal, Role};

use crate::error::ApiError;

/// The prefix-cache namespace header an in-process engine accepts from its gateway (and only
/// there: that router has no socket).
pub use sluice_gateway::backend::NAMESPACE_HEADER;

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED);
        let kind = match e.status() {
            401 => "authentication_error",
            403 => "permission_error",
            _ => "service_unavailable",
        };
        ApiError {
            status,
            kind,
            message: e.to_string(),
            param: None,
            code: Some(e.kind()),
            retry_after: e.is_retryable().then_some(1),
        }
    }
}

/// Middleware: authenticates the request when a governor is configured.
pub async fn authenticate(State(gov): State<Option<Governor>>, mut req: Request, next: Next) -> Response {
    let Some(gov) = gov else { return next.run(req).await };
    let header = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    match gov.authenticate(header).await {
        Ok(p) => {
            req.extensions_mut().insert(p);
            next.run(req).await
        }
        Err(e) => {
            tracing::info!(error = e.kind(), path = %req.uri().path(), "request refused");
            if !matches!(e, AuthError::Store(_)) {
                gov.audit(
                    "auth.failed",
                    None,
                    Governor::key_prefix(header).as_deref(),
                    serde_json::json!({"reason": e.kind(), "path": req.uri().path(), "method": req.method().as_str()}),
                );
            }
            let mut resp = ApiError::from(e).into_response();
            if resp.status() == StatusCode::UNAUTHORIZED {
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
            }
            resp
        }
    }
}

/// The caller must hold the admin role.
pub fn require_admin(p: &Principal) -> Result<(), ApiError> {
    if p.role == Role::Admin {
        Ok(())
    } else {
        Err(AuthError::Forbidden { needed: "admin", has: p.role.as_str() }.into())
    }
}
