//! Serving connections: plain HTTP/1.1 or TLS (rustls), with limits on slow and oversized
//! clients — a client must send its request headers within `header_read_timeout` (a
//! slowloris-style client is dropped), the request head may not exceed `max_header_bytes`
//! (431), TLS handshakes must finish within `handshake_timeout`. Bodies are bounded by the
//! handlers (2 MiB, 413) and JSON nesting by serde (128 levels, 400).

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

/// Serves `app` on `listener` until `shutdown` resolves (connections in progress finish on
/// their own).
pub async fn serve(listener: TcpListener, app: Router, opts: ServeOptions, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    let acceptor = opts.tls.clone().map(TlsAcceptor::from);
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
