//! Serving connections: plain HTTP/1.1 or TLS (rustls), with limits on slow and oversized
//! clients — a client must send its request headers within `header_read_timeout` (a
//! slowloris-style client is dropped), the request head may not exceed `max_header_bytes`
//! (431), the body must arrive within `body_read_timeout` (408) and stay under 2 MiB (413), TLS
//! handshakes must finish within `handshake_timeout`. JSON nesting is bounded by serde (128
//! levels, 400).

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// How connections are served.
#[derive(Clone)]
pub struct ServeOptions {
    /// TLS, when serving HTTPS.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Time a client has to send its request headers.
    pub header_read_timeout: Duration,
    /// Largest request head (request line and headers).
    pub max_header_bytes: usize,
    /// Time a client has to finish the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time a client has to send its whole request body (slow uploads get 408).
    pub body_read_timeout: Duration,
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions")
            .field("tls", &self.tls.is_some())
            .field("header_read_timeout", &self.header_read_timeout)
            .field("max_header_bytes", &self.max_header_bytes)
            .finish()
    }
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            tls: None,
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            handshake_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
        }
    }
}

/// TLS settings from a PEM certificate chain and a PEM private key; errors name the file.
pub fn tls_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate found", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key do not match or are unsupported: {e}"))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Largest request body read (the handlers' limit too).
const MAX_BODY: usize = 2 * 1024 * 1024;

/// Reads the whole request body within `timeout` (our endpoints take small JSON bodies, so
/// nothing is lost by buffering): a client that trickles its body is answered 408, one that
/// sends too much 413.
async fn read_body_in_time(
    axum::extract::State(timeout): axum::extract::State<Duration>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    use http_body_util::BodyExt;
    let (parts, body) = req.into_parts();
    let limited = http_body_util::Limited::new(body, MAX_BODY);
    let bytes = match tokio::time::timeout(timeout, limited.collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            return crate::ApiError {
                status: axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                code: Some("body_too_large"),
                ..crate::ApiError::bad_request(format!("The request body exceeds {MAX_BODY} bytes"))
            }
            .into_response();
        }
        Ok(Err(_)) => return crate::ApiError::bad_request("The request body could not be read").into_response(),
        Err(_) => {
            return crate::ApiError {
                status: axum::http::StatusCode::REQUEST_TIMEOUT,
                code: Some("request_timeout"),
                ..crate::ApiError::bad_request(format!("The request body did not arrive within {} s", timeout.as_secs()))
            }
            .into_response();
        }
    };
    next.run(axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes))).await
}

/// Serves `app` on `listener` until `shutdown` resolves (connections in progress finish on
/// their own).
pub async fn serve(listener: TcpListener, app: Router, opts: ServeOptions, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    let acceptor = opts.tls.clone().map(TlsAcceptor::from);
    let app = app.layer(axum::middleware::from_fn_with_state(opts.body_read_timeout, read_body_in_time));
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                // Out of descriptors or a reset before accept: keep serving the others.
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => return Ok(()),
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let acceptor = acceptor.clone();
        let opts = opts.clone();
        tokio::spawn(async move {
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(Some(opts.header_read_timeout))
                .max_buf_size(opts.max_header_bytes.max(8192));
            let svc = TowerToHyperService::new(app);
            let result = match acceptor {
                Some(acceptor) => match tokio::time::timeout(opts.handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => http.serve_connection(TokioIo::new(tls), svc).with_upgrades().await,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!("TLS handshake timed out");
                        return;
                    }
                },
                None => http.serve_connection(TokioIo::new(stream), svc).with_upgrades().await,
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
}
