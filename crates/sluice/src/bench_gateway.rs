//! `sluice bench-gateway`: what the gateway adds. The same small requests go straight to an
//! upstream and through a gateway in front of it, in alternating one-second slices so both
//! see the same machine noise:
//! - open loop at a fixed rate: p50 / p99 / max for both, and the added latency (requests that
//!   could not start within 5 ms of their schedule are counted as late starts);
//! - closed loop with N connections: the highest sustained request rate through each;
//! - streaming: time to the first token, both ways.
//!
//! The client is hyper over keep-alive HTTP/1.1 connections (one per in-flight request), the
//! leanest client available, so the figures are the servers' rather than the load generator's.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::json;

/// Arguments of `sluice bench-gateway`.
#[derive(Args, Debug)]
pub struct BenchGatewayArgs {
    /// The upstream's address, e.g. 127.0.0.1:8091 (requests go to /v1/chat/completions).
    #[arg(long)]
    direct: String,
    /// The gateway's address in front of it, e.g. 127.0.0.1:8095.
    #[arg(long)]
    gateway: String,
    /// Model name to send through the gateway.
    #[arg(long)]
    model: String,
    /// Model name to send straight to the upstream (default: --model).
    #[arg(long)]
    direct_model: Option<String>,
    /// Open-loop request rate per side.
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// Seconds of load per side and phase (run as alternating one-second slices).
    #[arg(long, default_value_t = 6)]
    seconds: u32,
    /// Connections for the open loop (enough that none waits for a free one).
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Connection counts for the closed-loop (maximum rate) phase.
    #[arg(long, value_delimiter = ',', default_value = "16,64")]
    closed_connections: Vec<usize>,
    /// Open-loop rate of streamed requests (time to first token).
    #[arg(long, default_value_t = 500.0)]
    stream_rate: f64,
    /// Bearer key for the direct side.
    #[arg(long)]
    direct_api_key: Option<String>,
    /// Bearer key for the gateway side.
    #[arg(long)]
    gateway_api_key: Option<String>,
    /// Labels of the two sides in the report.
    #[arg(long, default_value = "direct,gateway")]
    labels: String,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Where one side's requests go.
#[derive(Debug, Clone)]
struct Side {
    addr: String,
    auth: Option<String>,
}

async fn connect(addr: &str) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(addr).await.with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_nodelay(true)?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(send)
}

/// One request; returns the time to the first token (streams) or to the whole body.
async fn request(send: &mut SendRequest<Full<Bytes>>, side: &Side, body: &Bytes, stream: bool) -> Result<Duration, String> {
    let t0 = Instant::now();
    send.ready().await.map_err(|e| e.to_string())?;
    let mut req = hyper::Request::post("/v1/chat/completions").header("host", &side.addr).header("content-type", "application/json");
    if let Some(k) = &side.auth {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let req = req.body(Full::new(body.clone())).map_err(|e| e.to_string())?;
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let mut body = resp.into_body();
    let mut first = None;
    let mut seen = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Some(d) = frame.data_ref()
            && stream
            && first.is_none()
        {
            seen.extend_from_slice(d);
            if seen.windows(4).any(|w| w == b"tok0") {
                first = Some(t0.elapsed());
            }
        }
    }
    if !status.is_success() {
        return Err(format!("HTTP {status}"));
    }
    Ok(first.unwrap_or_else(|| t0.elapsed()))
}

fn body(model: &str, stream: bool) -> Bytes {
    Bytes::from(
        json!({"model": model, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4, "stream": stream})
            .to_string(),
    )
}

#[derive(Debug, Default)]
struct Samples {
    latencies_us: Vec<f64>,
    errors: usize,
    completed: usize,
    /// Open loop: requests that started more than 5 ms after their scheduled time.
    late_starts: usize,
    elapsed: Duration,
}

impl Samples {
    fn merge(&mut self, o: Samples) {
        self.latencies_us.extend(o.latencies_us);
        self.errors += o.errors;
        self.late_starts += o.late_starts;
        self.completed += o.completed;
        self.elapsed += o.elapsed;
    }

    fn pct(&self, p: f64) -> f64 {
        let mut v = self.latencies_us.clone();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return f64::NAN;
        }
        v[((p / 100.0) * (v.len() - 1) as f64).round() as usize]
    }

    fn rate(&self) -> f64 {
        self.completed as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Requests at `rate` for one second; latency from each request's scheduled time.
async fn open_loop(side: &Side, body: &Bytes, rate: f64, conns: usize, stream: bool) -> anyhow::Result<Samples> {
    let n = rate.round() as usize;
    let start = Instant::now() + Duration::from_millis(5);
    let mut tasks = Vec::new();
    for k in 0..conns {
        let mut send = connect(&side.addr).await?;
        let body = body.clone();
        let side = side.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = Samples::default();
            for i in (k..n).step_by(conns) {
                let due = start + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
                let begin = Instant::now();
                match request(&mut send, &side, &body, stream).await {
                    Ok(first) => {
                        // Timed from the send: the timer wakes up to 1 ms late, which would
                        // blur both sides; late starts are counted instead.
                        s.latencies_us.push(first.as_secs_f64() * 1e6);
                        if begin.saturating_duration_since(due) > Duration::from_millis(5) {
                            s.late_starts += 1;
                        }
                        s.completed += 1;
                    }
                    Err(_) => s.errors += 1,
                }
            }
            s
        }));
    }
    let mut all = Samples::default();
    for t in tasks {
        all.merge(t.await?);
    }
    all.elapsed = Duration::from_secs(1);
    Ok(all)
}

/// `conns` connections sending back to back for one second.
async fn closed_loop(side: &Side, body: &Bytes, conns: usize) -> anyhow::Result<Samples> {
    let mut tasks = Vec::new();
    let start = Instant::now();
    let end = start + Duration::from_secs(1);
    for _ in 0..conns {
        let mut send = connect(&side.addr).await?;
        let body = body.clone();
        let side = side.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = Samples::default();
            while Instant::now() < end {
                let t0 = Instant::now();
                match request(&mut send, &side, &body, false).await {
                    Ok(_) => {
                        s.latencies_us.push(t0.elapsed().as_secs_f64() * 1e6);
                        s.completed += 1;
                    }
                    Err(_) => s.errors += 1,
                }
            }
            s
        }));
    }
    let mut all = Samples::default();
    for t in tasks {
        all.merge(t.await?);
    }
    all.elapsed = start.elapsed();
    Ok(all)
}

fn report(label: &str, names: (&str, &str), direct: &Samples, gateway: &Samples) -> serde_json::Value {
    let row = |s: &Samples| {
        json!({"requests": s.completed, "errors": s.errors, "late_starts": s.late_starts, "rate": s.rate(),
               "p50_us": s.pct(50.0), "p90_us": s.pct(90.0), "p99_us": s.pct(99.0), "max_us": s.pct(100.0)})
    };
    let (dn, gn) = names;
    tracing::info!(
        "{label:<28} {dn} p50 {:>8.0} us p99 {:>8.0} us | {gn} p50 {:>8.0} us p99 {:>8.0} us | added p50 {:>7.0} us p99 {:>7.0} us | rate {:>7.0} / {:>7.0} req/s | errors {} / {} | late starts {} / {}",
        direct.pct(50.0),
        direct.pct(99.0),
        gateway.pct(50.0),
        gateway.pct(99.0),
        gateway.pct(50.0) - direct.pct(50.0),
        gateway.pct(99.0) - direct.pct(99.0),
        direct.rate(),
        gateway.rate(),
        direct.errors,
        gateway.errors,
        direct.late_starts,
        gateway.late_starts
    );
    json!({"phase": label, "sides": [dn, gn], "direct": row(direct), "gateway": row(gateway),
           "added_p50_us": gateway.pct(50.0) - direct.pct(50.0), "added_p99_us": gateway.pct(99.0) - direct.pct(99.0),
           "rate_ratio": gateway.rate() / direct.rate().max(1e-9)})
}

/// Runs every phase.
pub async fn run(args: BenchGatewayArgs) -> anyhow::Result<()> {
    let d_side = Side { addr: args.direct.clone(), auth: args.direct_api_key.clone() };
    let g_side = Side { addr: args.gateway.clone(), auth: args.gateway_api_key.clone() };
    let (dn, gn) = args.labels.split_once(',').unwrap_or(("direct", "gateway"));
    let names = (dn, gn);
    let gw_body = body(&args.model, false);
    let direct_model = args.direct_model.clone().unwrap_or_else(|| args.model.clone());
    let direct_body = body(&direct_model, false);
    // Warm both paths (connections, pools, caches).
    open_loop(&d_side, &direct_body, 200.0, 8, false).await?;
    open_loop(&g_side, &gw_body, 200.0, 8, false).await?;
    let mut results = Vec::new();

    let (mut d, mut g) = (Samples::default(), Samples::default());
    for _ in 0..args.seconds {
        d.merge(open_loop(&d_side, &direct_body, args.rate, args.connections, false).await?);
        g.merge(open_loop(&g_side, &gw_body, args.rate, args.connections, false).await?);
    }
    results.push(report(&format!("open loop {} req/s", args.rate), names, &d, &g));

    for &c in &args.closed_connections {
        let (mut d, mut g) = (Samples::default(), Samples::default());
        for _ in 0..args.seconds {
            d.merge(closed_loop(&d_side, &direct_body, c).await?);
            g.merge(closed_loop(&g_side, &gw_body, c).await?);
        }
        results.push(report(&format!("closed loop, {c} connections"), names, &d, &g));
    }

    let (ds, gs) = (body(&direct_model, true), body(&args.model, true));
    let (mut d, mut g) = (Samples::default(), Samples::default());
    for _ in 0..args.seconds {
        d.merge(open_loop(&d_side, &ds, args.stream_rate, args.connections, true).await?);
        g.merge(open_loop(&g_side, &gs, args.stream_rate, args.connections, true).await?);
    }
    results.push(report(&format!("stream TTFT {} req/s", args.stream_rate), names, &d, &g));

    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&results)?).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}
