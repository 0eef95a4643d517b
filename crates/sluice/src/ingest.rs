//! `sluice ingest`: sends files to a running server's collection (`/v1/collections/NAME/
//! documents`), in batches. The server chunks and embeds them, so its index and the store stay
//! one. Plain files become one document each (id: the path, metadata: path and size); `.jsonl`
//! files hold one document per line (`{"id", "text", "metadata"?, "version"?, "ttl_seconds"?}`).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use serde_json::{Value, json};

#[derive(Args)]
pub struct IngestArgs {
    /// Files, or directories (read recursively), to ingest.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// The collection.
    #[arg(long)]
    collection: String,
    /// Server base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// API key (or SLUICE_API_KEY).
    #[arg(long)]
    api_key: Option<String>,
    /// Create the collection first if it does not exist.
    #[arg(long)]
    create: bool,
    /// Documents per request.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Expire documents this many seconds after ingestion.
    #[arg(long)]
    ttl_seconds: Option<f64>,
}

/// A document id from a path: the characters ids allow, others replaced.
fn doc_id(path: &Path) -> String {
    let s: String = path.to_string_lossy().chars().map(|c| if c.is_ascii_alphanumeric() || "-_.:".contains(c) { c } else { '_' }).collect();
    s.chars().rev().take(128).collect::<Vec<_>>().into_iter().rev().collect()
}

fn files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack: Vec<PathBuf> = paths.to_vec();
    while let Some(p) = stack.pop() {
        let meta = std::fs::metadata(&p).with_context(|| format!("cannot read {}", p.display()))?;
        if meta.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(&p)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
            entries.sort();
            stack.extend(entries.into_iter().rev());
        } else {
            out.push(p);
        }
    }
    Ok(out)
}

fn documents(path: &Path, ttl: Option<f64>) -> anyhow::Result<Vec<Value>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: not readable as UTF-8 text", path.display()))?;
    let with_ttl = |mut d: Value| {
        if let (Some(t), Some(o)) = (ttl, d.as_object_mut()) {
            o.entry("ttl_seconds").or_insert(json!(t));
        }
        d
    };
    if path.extension().is_some_and(|e| e == "jsonl") {
        return text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| serde_json::from_str::<Value>(l).map(with_ttl).with_context(|| format!("{}:{}: not a JSON document", path.display(), i + 1)))
            .collect();
    }
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    Ok(vec![with_ttl(json!({"id": doc_id(path), "text": text, "metadata": {"path": path.display().to_string(), "bytes": text.len()}}))])
}

async fn post(client: &reqwest::Client, args: &IngestArgs, path: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
    let mut req = client.post(format!("{}{path}", args.url.trim_end_matches('/'))).json(body);
    if let Some(k) = &args.api_key {
        req = req.bearer_auth(k);
    }
    let resp = req.send().await.with_context(|| format!("cannot reach {}", args.url))?;
    let status = resp.status().as_u16();
    Ok((status, resp.json().await.unwrap_or(Value::Null)))
}

pub async fn run(mut args: IngestArgs) -> anyhow::Result<()> {
    if args.api_key.is_none() {
        args.api_key = std::env::var("SLUICE_API_KEY").ok();
    }
    let client = reqwest::Client::builder().timeout(std::time::Duration::from_secs(600)).build()?;
    if args.create {
        let (s, v) = post(&client, &args, "/v1/collections", &json!({"name": args.collection})).await?;
        if s != 201 && s != 409 {
            bail!("cannot create collection {}: {s} {}", args.collection, v["error"]["message"]);
        }
    }
    let started = std::time::Instant::now();
    let (mut docs, mut chunks, mut batch) = (0usize, 0usize, Vec::new());
    let all = files(&args.paths)?;
    let path = format!("/v1/collections/{}/documents", args.collection);
    for (i, f) in all.iter().enumerate() {
        batch.extend(documents(f, args.ttl_seconds)?);
        if batch.len() >= args.batch.max(1) || i + 1 == all.len() {
            if batch.is_empty() {
                continue;
            }
            let (s, v) = post(&client, &args, &path, &json!({"documents": std::mem::take(&mut batch)})).await?;
            if s != 200 {
                bail!("the server refused a batch ({s}): {}", v["error"]["message"]);
            }
            for d in v["data"].as_array().into_iter().flatten() {
                docs += 1;
                chunks += d["chunks"].as_u64().unwrap_or(0) as usize;
            }
            eprint!("\r{docs} documents, {chunks} chunks");
        }
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!();
    writeln!(
        std::io::stdout().lock(),
        "ingested {docs} documents ({chunks} chunks) into {} in {secs:.1} s ({:.0} chunks/s)",
        args.collection,
        chunks as f64 / secs.max(1e-9)
    )?;
    Ok(())
}
