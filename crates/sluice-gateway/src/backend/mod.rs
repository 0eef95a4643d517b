//! How a request reaches a backend. Every kind speaks the OpenAI wire format, so a backend is
//! only a transport: the in-process engine is called through its own router (no socket), the
//! others over HTTP. Timeouts, retries and stream handling live above, the same for all kinds.

mod http;
mod in_process;

use std::fmt::Debug;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;

pub use http::HttpBackend;
pub use in_process::{InProcessBackend, NAMESPACE_HEADER};

/// Which API a request calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `/chat/completions`.
    Chat,
    /// `/completions`.
    Completions,
}

impl Api {
    /// Path under the API root.
    pub fn path(self) -> &'static str {
        match self {
            Self::Chat => "/chat/completions",
            Self::Completions => "/completions",
        }
    }
}

/// A request as sent upstream: the client's body with the backend's model name.
#[derive(Debug, Clone)]
pub struct UpstreamRequest {
    /// Endpoint.
    pub api: Api,
    /// JSON body.
    pub body: Bytes,
    /// The gateway's request id, sent as `x-request-id` so both sides' logs line up.
    pub request_id: String,
    /// The caller's prefix-cache namespace (its tenant); only in-process engines receive it.
    pub cache_namespace: Option<String>,
}

/// Response body chunks; an error means the transfer broke.
pub type BodyStream = BoxStream<'static, Result<Bytes, String>>;

/// A backend's response, headers read, body still streaming.
pub struct UpstreamResponse {
    /// HTTP status.
    pub status: u16,
    /// `Retry-After`, when given in seconds.
    pub retry_after: Option<Duration>,
    /// The body.
    pub body: BodyStream,
}

impl Debug for UpstreamResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamResponse").field("status", &self.status).finish_non_exhaustive()
    }
}

/// Why a request could not be delivered or answered.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    /// No connection (refused, reset, DNS, connect timeout).
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The request failed after connecting.
    #[error("request failed: {0}")]
    Request(String),
}

/// A way to reach one backend.
pub trait Backend: Send + Sync + Debug {
    /// Sends a request; resolves when the response headers arrive.
    fn send(&self, req: UpstreamRequest) -> BoxFuture<'static, Result<UpstreamResponse, TransportError>>;
    /// An active health check: `Ok` when the backend can take requests.
    fn health(&self) -> BoxFuture<'static, Result<(), String>>;
}

/// `Retry-After` in seconds (HTTP dates are not worth honouring more precisely here).
pub(crate) fn retry_after(headers: &axum::http::HeaderMap) -> Option<Duration> {
    let v = headers.get(axum::http::header::RETRY_AFTER)?.to_str().ok()?;
    v.trim().parse::<f64>().ok().filter(|s| s.is_finite() && *s >= 0.0).map(|s| Duration::from_secs_f64(s.min(3600.0)))
}
