//! A backend over HTTP: any OpenAI-compatible server (llama.cpp, vLLM, hosted APIs) or a remote
//! `sluice serve`. One pooled client per backend, so its connect timeout is its own.

use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt, TryStreamExt};

use super::{Backend, TransportError, UpstreamRequest, UpstreamResponse};
use crate::config::BackendKind;

/// An OpenAI-compatible server at `base_url` (the API root, e.g. `http://host:8080/v1`).
#[derive(Debug, Clone)]
pub struct HttpBackend {
    client: reqwest::Client,
    base_url: String,
    api_key: Option<String>,
    health_url: String,
}

impl HttpBackend {
    /// A backend of `kind` (`Sluice` is health-checked at `/ready`, others at `/models`).
    pub fn new(
        kind: BackendKind,
        base_url: &str,
        api_key: Option<String>,
        connect_timeout: Duration,
    ) -> Result<Self, TransportError> {
        let client = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| TransportError::Connect(format!("cannot build the HTTP client: {e}")))?;
        let base_url = base_url.trim_end_matches('/').to_string();
        let health_url = match kind {
            BackendKind::Sluice => format!("{}/ready", base_url.strip_suffix("/v1").unwrap_or(&base_url)),
            BackendKind::OpenAi | BackendKind::Engine => format!("{base_url}/models"),
        };
        Ok(Self { client, base_url, api_key, health_url })
    }

    fn describe(e: &reqwest::Error) -> String {
        // reqwest's top-level message is generic; the cause says what happened.
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(s) = src {
            msg = format!("{msg}: {s}");
            src = s.source();
        }
        msg
    }
}

impl Backend for HttpBackend {
    fn send(&self, req: UpstreamRequest) -> BoxFuture<'static, Result<UpstreamResponse, TransportError>> {
        let mut rb = self
            .client
            .post(format!("{}{}", self.base_url, req.api.path()))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("x-request-id", &req.request_id)
            .body(req.body);
        if let Some(k) = &self.api_key {
            rb = rb.bearer_auth(k);
        }
        async move {
            let resp = rb.send().await.map_err(|e| {
                if e.is_connect() {
                    TransportError::Connect(Self::describe(&e))
                } else {
                    TransportError::Request(Self::describe(&e))
                }
            })?;
            let status = resp.status().as_u16();
            let retry_after = super::retry_after(resp.headers());
            let body = resp.bytes_stream().map_err(|e| Self::describe(&e)).boxed();
            Ok(UpstreamResponse { status, retry_after, body })
        }
        .boxed()
    }

    fn health(&self) -> BoxFuture<'static, Result<(), String>> {
        let mut rb = self.client.get(&self.health_url);
        if let Some(k) = &self.api_key {
            rb = rb.bearer_auth(k);
        }
        async move {
            let resp = rb.send().await.map_err(|e| Self::describe(&e))?;
            if resp.status().is_success() { Ok(()) } else { Err(format!("health check answered {}", resp.status())) }
        }
        .boxed()
    }
}
