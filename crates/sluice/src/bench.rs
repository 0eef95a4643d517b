//! `sluice bench`: a load generator for any OpenAI-compatible server (Sluice, llama.cpp's
//! server, vLLM, ...). Fixed-concurrency sweeps or Poisson arrivals; completions or chat;
//! streamed responses timed token by token; an optional shared prompt prefix. Reports request
//! and token throughput, TTFT / TPOT / ITL / end-to-end latency (mean, p50, p90, p99), goodput
//! against SLOs, and errors by kind, as a table and optionally as JSON.
//!
//! Prompts are built from common one-token English words, so `--prompt-tokens` is exact for
//! GPT-2-style vocabularies and close for others; the server's reported usage is used for
//! token counts when it sends it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};
use futures_util::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

/// Which endpoint to load.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Endpoint {
    /// `/v1/completions`.
    Completions,
    /// `/v1/chat/completions`.
    Chat,
}

/// Arguments of `sluice bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Server base URL, e.g. http://127.0.0.1:8080 (the /v1 paths are appended).
    #[arg(long)]
    url: String,
    /// Model name to send.
    #[arg(long)]
    model: String,
    /// Endpoint to load.
    #[arg(long, value_enum, default_value = "completions")]
    endpoint: Endpoint,
    /// Concurrency levels to sweep (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    concurrency: Vec<usize>,
    /// Poisson arrivals at this many requests per second instead of fixed concurrency.
    #[arg(long)]
    request_rate: Option<f64>,
    /// Requests per setting (default: 4 x concurrency, at least 8).
    #[arg(long)]
    num_requests: Option<usize>,
    /// Prompt tokens (approximate; see the module docs).
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    /// Spread prompt lengths uniformly over ±this fraction.
    #[arg(long, default_value_t = 0.0)]
    prompt_spread: f64,
    /// Output tokens per request.
    #[arg(long, default_value_t = 128)]
    output_tokens: usize,
    /// Spread output lengths uniformly over ±this fraction.
    #[arg(long, default_value_t = 0.0)]
    output_spread: f64,
    /// A common prefix of this many tokens before every prompt (prefix-cache workloads).
    #[arg(long, default_value_t = 0)]
    shared_prefix_tokens: usize,
    /// Ask the server to ignore end-of-sequence tokens (llama.cpp, vLLM and Sluice honour it).
    #[arg(long)]
    ignore_eos: bool,
    /// SLO on time to first token, milliseconds (for goodput).
    #[arg(long)]
    slo_ttft: Option<f64>,
    /// SLO on time per output token, milliseconds (for goodput).
    #[arg(long)]
    slo_tpot: Option<f64>,
    /// API key to send as a bearer token.
    #[arg(long)]
    api_key: Option<String>,
    /// Seed for prompts, lengths and arrivals.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

const WORDS: &[&str] = &[
    "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "was", "with", "be", "by", "on", "not", "he",
    "this", "are", "or", "his", "from", "at", "which", "but", "have", "an", "had", "they", "you", "were", "their",
    "one", "all", "we", "can", "her", "has", "there", "been", "if", "more", "when", "will", "would", "who", "so", "no",
];

fn words(rng: &mut StdRng, n: usize) -> String {
    (0..n).map(|_| WORDS[rng.random_range(0..WORDS.len())]).collect::<Vec<_>>().join(" ")
}

fn spread(rng: &mut StdRng, base: usize, frac: f64) -> usize {
    if frac <= 0.0 {
        return base.max(1);
    }
    let lo = (base as f64 * (1.0 - frac)).max(1.0);
    let hi = (base as f64 * (1.0 + frac)).max(lo + 1.0);
    rng.random_range(lo..hi) as usize
}

#[derive(Debug, Clone)]
struct Work {
    prompt: String,
    max_tokens: usize,
}

#[derive(Debug, Default, Clone)]
struct Outcome {
    ok: bool,
    error: Option<String>,
    ttft: f64,
    e2e: f64,
    output_tokens: usize,
    prompt_tokens: usize,
    itl: Vec<f64>,
}

fn body(args: &BenchArgs, w: &Work) -> Value {
    let mut b = match args.endpoint {
        Endpoint::Completions => json!({"model": args.model, "prompt": w.prompt}),
        Endpoint::Chat => json!({"model": args.model, "messages": [{"role": "user", "content": w.prompt}]}),
    };
    b["max_tokens"] = json!(w.max_tokens);
    b["temperature"] = json!(0);
    b["stream"] = json!(true);
    b["stream_options"] = json!({"include_usage": true});
    if args.ignore_eos {
        b["ignore_eos"] = json!(true);
    }
    b
}

fn chunk_text(args: &BenchArgs, v: &Value) -> Option<String> {
    let c = v.get("choices")?.get(0)?;
    let t = match args.endpoint {
        Endpoint::Completions => c.get("text")?.as_str()?,
        Endpoint::Chat => c.get("delta")?.get("content")?.as_str()?,
    };
    Some(t.to_string())
}

async fn one(client: &reqwest::Client, args: &BenchArgs, w: &Work) -> Outcome {
    let path = match args.endpoint {
        Endpoint::Completions => "/v1/completions",
        Endpoint::Chat => "/v1/chat/completions",
    };
    let mut req = client.post(format!("{}{path}", args.url.trim_end_matches('/'))).json(&body(args, w));
    if let Some(k) = &args.api_key {
        req = req.bearer_auth(k);
    }
    let start = Instant::now();
    let fail = |kind: String| Outcome { error: Some(kind), ..Default::default() };
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) if e.is_connect() => return fail("connect".into()),
        Err(e) if e.is_timeout() => return fail("timeout".into()),
        Err(e) => return fail(format!("request: {}", std::error::Error::source(&e).map_or(e.to_string(), |s| s.to_string()))),
    };
    if !resp.status().is_success() {
        return fail(format!("http_{}", resp.status().as_u16()));
    }
    let mut out = Outcome::default();
    let mut last: Option<Instant> = None;
    let mut chunks = 0usize;
    let mut buf = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(item) = stream.next().await {
        let Ok(bytes) = item else { return fail("stream_cut".into()) };
        buf.extend_from_slice(&bytes);
        while let Some(pos) = buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = buf.drain(..pos + 2).collect();
            for line in String::from_utf8_lossy(&event).lines() {
                let Some(data) = line.strip_prefix("data: ").or_else(|| line.strip_prefix("data:")) else { continue };
                if data.trim() == "[DONE]" {
                    continue;
                }
                let Ok(v) = serde_json::from_str::<Value>(data) else { continue };
                if v.get("error").is_some() {
                    return fail("stream_error".into());
                }
                if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
                    out.output_tokens = u.get("completion_tokens").and_then(Value::as_u64).unwrap_or(0) as usize;
                    out.prompt_tokens = u.get("prompt_tokens").and_then(Value::as_u64).unwrap_or(0) as usize;
                }
                if chunk_text(args, &v).is_some_and(|t| !t.is_empty()) {
                    let now = Instant::now();
                    match last {
                        None => out.ttft = (now - start).as_secs_f64(),
                        Some(prev) => out.itl.push((now - prev).as_secs_f64()),
                    }
                    last = Some(now);
                    chunks += 1;
                }
            }
        }
    }
    if last.is_none() {
        return fail("no_tokens".into());
    }
    out.e2e = start.elapsed().as_secs_f64();
    if out.output_tokens == 0 {
        out.output_tokens = chunks;
    }
    out.ok = true;
    out
}

pub(crate) fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(mut v: Vec<f64>) -> Value {
    v.sort_by(f64::total_cmp);
    let mean = if v.is_empty() { 0.0 } else { v.iter().sum::<f64>() / v.len() as f64 };
    json!({"mean": mean, "p50": pct(&v, 0.5), "p90": pct(&v, 0.9), "p99": pct(&v, 0.99)})
}

async fn run_setting(args: Arc<BenchArgs>, concurrency: usize, work: Vec<Work>) -> Value {
    // A fresh connection per request: some servers close idle keep-alive connections in ways
    // that surface as spurious client errors, and a local connect costs microseconds.
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap_or_default();
    let total = work.len();
    let done = Arc::new(AtomicUsize::new(0));
    let work = Arc::new(work);
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let progress = {
        let done = done.clone();
        tokio::spawn(async move {
            if !tty {
                return;
            }
            loop {
                let d = done.load(Ordering::Acquire);
                eprint!("\r  {d}/{total} requests");
                if d >= total {
                    eprintln!();
                    return;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let mut tasks = Vec::new();
    match args.request_rate {
        Some(rate) => {
            // Poisson arrivals: exponential gaps, each request in its own task.
            let mut rng = StdRng::seed_from_u64(args.seed ^ 0x5eed);
            for i in 0..total {
                let gap = -(1.0 - rng.random::<f64>()).ln() / rate.max(1e-9);
                tokio::time::sleep(Duration::from_secs_f64(gap)).await;
                let (c, a, w, d) = (client.clone(), args.clone(), work.clone(), done.clone());
                tasks.push(tokio::spawn(async move {
                    let o = one(&c, &a, &w[i]).await;
                    d.fetch_add(1, Ordering::AcqRel);
                    vec![o]
                }));
            }
        }
        None => {
            for _ in 0..concurrency.max(1) {
                let (c, a, w, d, n) = (client.clone(), args.clone(), work.clone(), done.clone(), next.clone());
                tasks.push(tokio::spawn(async move {
                    let mut outs = Vec::new();
                    loop {
                        let i = n.fetch_add(1, Ordering::AcqRel);
                        if i >= w.len() {
                            return outs;
                        }
                        outs.push(one(&c, &a, &w[i]).await);
                        d.fetch_add(1, Ordering::AcqRel);
                    }
                }));
            }
        }
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.extend(t.await.unwrap_or_default());
    }
    let wall = start.elapsed().as_secs_f64();
    let _ = progress.await;
    let ok: Vec<&Outcome> = outcomes.iter().filter(|o| o.ok).collect();
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    for o in outcomes.iter().filter(|o| !o.ok) {
        *errors.entry(o.error.clone().unwrap_or_default()).or_insert(0) += 1;
    }
    let out_tokens: usize = ok.iter().map(|o| o.output_tokens).sum();
    let in_tokens: usize = ok.iter().map(|o| o.prompt_tokens).sum();
    let tpot = |o: &Outcome| if o.output_tokens > 1 { (o.e2e - o.ttft) / (o.output_tokens - 1) as f64 } else { 0.0 };
    let good = ok
        .iter()
        .filter(|o| args.slo_ttft.is_none_or(|s| o.ttft * 1e3 <= s) && args.slo_tpot.is_none_or(|s| tpot(o) * 1e3 <= s))
        .count();
    json!({
        "concurrency": if args.request_rate.is_some() { Value::Null } else { json!(concurrency) },
        "request_rate": args.request_rate,
        "requests": total,
        "completed": ok.len(),
        "errors": errors,
        "duration_s": wall,
        "request_throughput": ok.len() as f64 / wall,
        "output_token_throughput": out_tokens as f64 / wall,
        "total_token_throughput": (out_tokens + in_tokens) as f64 / wall,
        "goodput": good as f64 / wall,
        "ttft_s": summary(ok.iter().map(|o| o.ttft).collect()),
        "tpot_s": summary(ok.iter().map(|o| tpot(o)).collect()),
        "itl_s": summary(ok.iter().flat_map(|o| o.itl.iter().copied()).collect()),
        "e2e_s": summary(ok.iter().map(|o| o.e2e).collect()),
    })
}

/// Prompts for one setting. Each setting gets its own prompts (seeded by its index), so one
/// setting never hits the prefix cache warmed by another; the shared prefix stays shared.
fn workload(args: &BenchArgs, setting: usize, n: usize) -> Vec<Work> {
    let mut prefix_rng = StdRng::seed_from_u64(args.seed);
    let mut rng = StdRng::seed_from_u64(args.seed.wrapping_add(1 + setting as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let prefix =
        if args.shared_prefix_tokens > 0 { words(&mut prefix_rng, args.shared_prefix_tokens) + " " } else { String::new() };
    (0..n)
        .map(|i| {
            let len = spread(&mut rng, args.prompt_tokens, args.prompt_spread);
            // A request number first keeps prompts distinct even with a shared prefix.
            Work {
                prompt: format!("{prefix}{i} {}", words(&mut rng, len.saturating_sub(1))),
                max_tokens: spread(&mut rng, args.output_tokens, args.output_spread),
            }
        })
        .collect()
}

fn ms(v: &Value, key: &str, stat: &str) -> f64 {
    v[key][stat].as_f64().unwrap_or(0.0) * 1e3
}

/// Runs the benchmark.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let args = Arc::new(args);
    let settings: Vec<usize> = if args.request_rate.is_some() { vec![0] } else { args.concurrency.clone() };
    let mut results = Vec::new();
    for (setting, &c) in settings.iter().enumerate() {
        let n = args.num_requests.unwrap_or((4 * c).max(8));
        match args.request_rate {
            Some(r) => eprintln!("request rate {r}/s, {n} requests"),
            None => eprintln!("concurrency {c}, {n} requests"),
        }
        results.push(run_setting(args.clone(), c, workload(&args, setting, n)).await);
    }
    eprintln!(
        "\n| setting | ok | err | req/s | out tok/s | TTFT p50 ms | TTFT p99 ms | TPOT p50 ms | ITL p99 ms | e2e p50 s | goodput req/s |"
    );
    eprintln!("|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &results {
        let setting = match r["request_rate"].as_f64() {
            Some(rate) => format!("rate {rate}/s"),
            None => format!("c={}", r["concurrency"]),
        };
        let errs: u64 = r["errors"].as_object().map(|m| m.values().filter_map(Value::as_u64).sum()).unwrap_or(0);
        eprintln!(
            "| {setting} | {} | {errs} | {:.2} | {:.1} | {:.0} | {:.0} | {:.1} | {:.1} | {:.2} | {:.2} |",
            r["completed"],
            r["request_throughput"].as_f64().unwrap_or(0.0),
            r["output_token_throughput"].as_f64().unwrap_or(0.0),
            ms(r, "ttft_s", "p50"),
            ms(r, "ttft_s", "p99"),
            ms(r, "tpot_s", "p50"),
            ms(r, "itl_s", "p99"),
            r["e2e_s"]["p50"].as_f64().unwrap_or(0.0),
            r["goodput"].as_f64().unwrap_or(0.0),
        );
        if let Some(e) = r["errors"].as_object().filter(|m| !m.is_empty()) {
            eprintln!("  errors: {}", Value::Object(e.clone()));
        }
    }
    if let Some(path) = &args.json {
        let doc = json!({"url": args.url, "model": args.model, "prompt_tokens": args.prompt_tokens,
            "output_tokens": args.output_tokens, "shared_prefix_tokens": args.shared_prefix_tokens, "results": results});
        std::fs::write(path, serde_json::to_string_pretty(&doc)?).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}
