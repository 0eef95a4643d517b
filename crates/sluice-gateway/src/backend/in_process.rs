//! An engine in this process, called through its own HTTP router without a socket: the same
//! request and response bytes as a remote engine, so every backend kind behaves alike.

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, header};
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt, TryStreamExt};
use tower::ServiceExt;

use super::{Backend, TransportError, UpstreamRequest, UpstreamResponse};

/// Header carrying the tenant's prefix-cache namespace to an in-process engine, which trusts it
/// because nothing but this gateway can reach its router.
pub const NAMESPACE_HEADER: &str = "x-sluice-cache-namespace";

/// An engine's router (`sluice_server::app`), mounted at `/v1`.
#[derive(Debug, Clone)]
pub struct InProcessBackend {
    router: Router,
}

impl InProcessBackend {
    /// Wraps an engine's router.
    pub fn new(router: Router) -> Self {
        Self { router }
    }
}

impl Backend for InProcessBackend {
    fn send(&self, req: UpstreamRequest) -> BoxFuture<'static, Result<UpstreamResponse, TransportError>> {
        let router = self.router.clone();
        async move {
            let mut http = Request::builder()
                .method(Method::POST)
                .uri(format!("/v1{}", req.api.path()))
                .header(header::CONTENT_TYPE, "application/json")
                .header("x-request-id", &req.request_id);
            if let Some(ns) = &req.cache_namespace {
                http = http.header(NAMESPACE_HEADER, ns);
            }
            let http = http.body(Body::from(req.body)).map_err(|e| TransportError::Request(e.to_string()))?;
            let resp = match router.oneshot(http).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            let status = resp.status().as_u16();
            let retry_after = super::retry_after(resp.headers());
            let body = resp.into_body().into_data_stream().map_err(|e| e.to_string()).boxed();
            Ok(UpstreamResponse { status, retry_after, body })
        }
        .boxed()
    }

    fn health(&self) -> BoxFuture<'static, Result<(), String>> {
        let router = self.router.clone();
        async move {
            let req = Request::builder().uri("/ready").body(Body::empty()).map_err(|e| e.to_string())?;
            let resp = match router.oneshot(req).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            if resp.status().is_success() { Ok(()) } else { Err(format!("engine not ready ({})", resp.status())) }
        }
        .boxed()
    }
}
