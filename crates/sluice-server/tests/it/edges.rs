//! The edges of the server: slow clients, oversized heads, deep JSON, TLS.

use std::time::{Duration, Instant};

use sluice_server::AppState;
use sluice_server::listen::{ServeOptions, serve, tls_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn start(opts: ServeOptions) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, sluice_server::app(AppState::loading()), opts, std::future::pending()));
    addr
}

/// Everything the server sends until it closes the connection (or `limit` passes).
async fn read_all(s: &mut TcpStream, limit: Duration) -> (String, bool) {
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(limit, s.read_to_end(&mut buf)).await.is_ok();
    (String::from_utf8_lossy(&buf).into_owned(), closed)
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_dropped() {
    let addr = start(ServeOptions { header_read_timeout: Duration::from_millis(300), ..Default::default() }).await;
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Drip: a").await.unwrap();
    let t0 = Instant::now();
    // Meanwhile a normal client is served.
    let mut ok = TcpStream::connect(addr).await.unwrap();
    ok.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let (resp, _) = read_all(&mut ok, Duration::from_secs(5)).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let (_, closed) = read_all(&mut slow, Duration::from_secs(5)).await;
    assert!(closed, "the slow client was not dropped");
    assert!(t0.elapsed() < Duration::from_secs(3), "dropped after {:?}", t0.elapsed());
}

#[tokio::test]
async fn oversized_heads_and_deep_json_are_refused() {
    let addr = start(ServeOptions { max_header_bytes: 16 * 1024, ..Default::default() }).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let big = "a".repeat(64 * 1024);
    s.write_all(format!("GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes()).await.unwrap();
    let (resp, _) = read_all(&mut s, Duration::from_secs(5)).await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{}", &resp[..resp.len().min(200)]);

    let deep = format!("{{\"model\": \"m\", \"prompt\": {}1{}}}", "[".repeat(500), "]".repeat(500));
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{deep}", deep.len())
            .as_bytes(),
    )
    .await
    .unwrap();
    let (resp, _) = read_all(&mut s, Duration::from_secs(5)).await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{}", &resp[..resp.len().min(300)]);
    assert!(resp.contains("recursion limit"), "{resp}");
}

#[tokio::test]
async fn serves_https_with_a_certificate() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tls");
    let tls = tls_config(&dir.join("cert.pem"), &dir.join("key.pem")).unwrap();
    let addr = start(ServeOptions { tls: Some(tls), ..Default::default() }).await;
    let ca = reqwest::Certificate::from_pem(&std::fs::read(dir.join("ca.pem")).unwrap()).unwrap();
    let client = reqwest::Client::builder().add_root_certificate(ca).build().unwrap();
    let r = client.get(format!("https://localhost:{}/health", addr.port())).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // Plain HTTP to the TLS port gets nowhere.
    assert!(reqwest::get(format!("http://127.0.0.1:{}/health", addr.port())).await.is_err());
    // A key that does not match is a clear error.
    let e = tls_config(&dir.join("cert.pem"), &dir.join("cert.pem")).unwrap_err();
    assert!(e.contains("cert.pem"), "{e}");
}

#[tokio::test]
async fn a_client_that_trickles_its_body_gets_408() {
    let addr = start(ServeOptions { body_read_timeout: Duration::from_millis(300), ..Default::default() }).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"model\"")
        .await
        .unwrap();
    let t0 = Instant::now();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap();
    let resp = String::from_utf8_lossy(&buf[..n]);
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
    assert!(resp.contains("request_timeout"), "{resp}");
    assert!(t0.elapsed() < Duration::from_secs(2));
    // A body over the limit is 413.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let big = "x".repeat(3 * 1024 * 1024);
    s.write_all(format!("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", big.len()).as_bytes())
        .await
        .unwrap();
    let _ = s.write_all(big.as_bytes()).await; // the server may stop reading early
    let (resp, _) = read_all(&mut s, Duration::from_secs(5)).await;
    assert!(resp.starts_with("HTTP/1.1 413"), "{}", &resp[..resp.len().min(200)]);
}
