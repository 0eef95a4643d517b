//! `sluice bench-retrieval`: query latency and recall of collections at scale, on the embedded
//! index (SQLite + usearch HNSW) and on PostgreSQL + pgvector side by side. The corpus is
//! synthetic but shaped like real embeddings — unit vectors in topic clusters, texts drawing
//! each topic's words — so that both the vector and the lexical index have work to do. Recall
//! is measured against exact search over the same vectors. Ingestion through the real
//! embedding model (the part that dominates it) is measured separately on real text.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use sluice_retrieval::chunk::Chunk;
use sluice_retrieval::{CollectionSpec, Collections, DocumentInput, Embedders, Mode, Prepared, Query};

#[derive(Args)]
pub struct BenchRetrievalArgs {
    /// Chunks in the collection.
    #[arg(long, default_value_t = 100_000)]
    chunks: usize,
    /// Topic clusters in the corpus (fewer topics: larger clusters, harder nearest-neighbour search).
    #[arg(long, default_value_t = 1000)]
    topics: usize,
    /// Queries per mode.
    #[arg(long, default_value_t = 1000)]
    queries: usize,
    /// Results per query.
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Also run on this PostgreSQL (with pgvector).
    #[arg(long)]
    postgres_url: Option<String>,
    /// Embedding model directory (the corpus takes its dimension; the ingestion figure uses it).
    #[arg(long, default_value = "models/all-MiniLM-L6-v2")]
    embedding_model: PathBuf,
    /// Real chunks to embed for the ingestion figure.
    #[arg(long, default_value_t = 512)]
    ingest_chunks: usize,
    /// Working directory (SQLite file, index).
    #[arg(long, default_value = "target/bench-retrieval")]
    dir: PathBuf,
    /// Keep the collections afterwards (to inspect query plans).
    #[arg(long)]
    keep: bool,
    /// Write results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

const DIM: usize = 384;
const VOCAB: usize = 20_000;

fn gaussian(rng: &mut StdRng) -> f32 {
    // Box-Muller.
    let (u, v): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random());
    ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
}

fn normalize(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= n);
}

/// A point of topic `t`: the centroid plus noise, normalised.
fn sample(rng: &mut StdRng, centroid: &[f32], spread: f32) -> Vec<f32> {
    let mut v: Vec<f32> = centroid.iter().map(|c| c + spread * gaussian(rng)).collect();
    normalize(&mut v);
    v
}

/// Text of topic `t`: some of its own words among common ones.
fn text(rng: &mut StdRng, t: usize, words: usize) -> String {
    (0..words)
        .map(|_| if rng.random_bool(0.3) { format!("topic{t}w{}", rng.random_range(0..8)) } else { format!("w{}", (rng.random::<f64>().powi(3) * VOCAB as f64) as usize) })
        .collect::<Vec<_>>()
        .join(" ")
}

struct Corpus {
    vectors: Vec<Vec<f32>>,
    topics: Vec<usize>,
    texts: Vec<String>,
    queries: Vec<(Vec<f32>, String)>,
}

fn corpus(n: usize, q: usize, n_topics: usize) -> Corpus {
    let mut rng = StdRng::seed_from_u64(7);
    let centroids: Vec<Vec<f32>> = (0..n_topics)
        .map(|_| {
            let mut c: Vec<f32> = (0..DIM).map(|_| gaussian(&mut rng)).collect();
            normalize(&mut c);
            c
        })
        .collect();
    // Per-dimension noise of 0.06 puts a point at cosine ~0.75 from its centroid, ~0.55 from
    // its topic's other points: near neighbours are close, but not trivially so.
    let spread = 0.06;
    let topics: Vec<usize> = (0..n).map(|_| rng.random_range(0..n_topics)).collect();
    let vectors = topics.iter().map(|&t| sample(&mut rng, &centroids[t], spread)).collect();
    let texts = topics.iter().map(|&t| text(&mut rng, t, 24)).collect();
    let queries = (0..q)
        .map(|_| {
            let t = rng.random_range(0..n_topics);
            (sample(&mut rng, &centroids[t], spread), format!("{} {}", text(&mut rng, t, 2), format_args!("topic{t}w1")))
        })
        .collect();
    Corpus { vectors, topics, texts, queries }
}

/// Exact top-k document indexes by cosine (vectors are unit length).
fn exact(vectors: &[Vec<f32>], q: &[f32], k: usize) -> Vec<usize> {
    let mut scored: Vec<(f32, usize)> = vectors.iter().enumerate().map(|(i, v)| (v.iter().zip(q).map(|(a, b)| a * b).sum(), i)).collect();
    scored.select_nth_unstable_by(k, |a, b| b.0.total_cmp(&a.0));
    scored.truncate(k);
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    scored.into_iter().map(|s| s.1).collect()
}

use crate::bench::pct;

async fn run_backend(label: &str, c: &Collections, data: &Corpus, truth: &[Vec<usize>], k: usize, keep: bool) -> anyhow::Result<Value> {
    let name = format!("bench{}", sluice_store::now_ms());
    c.create("bench", &CollectionSpec { name: name.clone(), model: Some("bench".into()), ..Default::default() }).await?;
    let started = Instant::now();
    for (b, batch) in data.vectors.chunks(1000).enumerate() {
        let docs = batch
            .iter()
            .enumerate()
            .map(|(j, v)| {
                let i = b * 1000 + j;
                let t = &data.texts[i];
                Prepared {
                    doc: DocumentInput { id: format!("d{i}"), text: t.clone(), metadata: [("topic".to_string(), json!(data.topics[i]))].into_iter().collect(), ..Default::default() },
                    chunks: vec![Chunk { index: 0, start_char: 0, end_char: t.chars().count(), text: t.clone(), ids: Vec::new() }],
                    vectors: vec![v.clone()],
                }
            })
            .collect();
        c.upsert_embedded("bench", &name, docs).await?;
        eprint!("\r{label}: {} / {} chunks written", (b + 1) * batch.len().max(1), data.vectors.len());
    }
    let write_s = started.elapsed().as_secs_f64();
    if c.store().backend() == sluice_store::Backend::Postgres {
        // As after any bulk load (autovacuum would do it within a minute or so).
        sqlx::raw_sql("ANALYZE chunks; ANALYZE documents").execute(c.store().pool()).await?;
    }
    eprintln!("\r{label}: {} chunks written in {write_s:.1} s", data.vectors.len());
    let mut out = json!({"backend": label, "chunks": data.vectors.len(), "write_chunks_per_s": data.vectors.len() as f64 / write_s});
    for mode in [Mode::Vector, Mode::Lexical, Mode::Hybrid] {
        let mut lat = Vec::with_capacity(data.queries.len());
        let mut recall = 0.0;
        // Warm-up: caches, the index load, the connection pool.
        for (v, t) in data.queries.iter().take(20) {
            c.query("bench", &name, &Query { text: t.clone(), k, mode, vector: Some(v.clone()), ..Default::default() }).await?;
        }
        for (qi, (v, t)) in data.queries.iter().enumerate() {
            let q = Query { text: t.clone(), k, mode, vector: Some(v.clone()), ..Default::default() };
            let t0 = Instant::now();
            let hits = c.query("bench", &name, &q).await?;
            lat.push(t0.elapsed().as_secs_f64() * 1e3);
            if mode == Mode::Vector {
                let got: std::collections::HashSet<usize> = hits.iter().filter_map(|h| h.document_id[1..].parse().ok()).collect();
                recall += truth[qi].iter().filter(|i| got.contains(i)).count() as f64 / k as f64;
            }
        }
        lat.sort_by(f64::total_cmp);
        let m = match mode {
            Mode::Vector => "vector",
            Mode::Lexical => "lexical",
            Mode::Hybrid => "hybrid",
        };
        let mut r = json!({"p50_ms": pct(&lat, 0.5), "p90_ms": pct(&lat, 0.9), "p99_ms": pct(&lat, 0.99), "max_ms": pct(&lat, 1.0)});
        if mode == Mode::Vector {
            r["recall_at_k"] = json!(recall / data.queries.len() as f64);
        }
        eprintln!("{label:>9} {m:>8}: p50 {:.2} ms  p99 {:.2} ms{}", pct(&lat, 0.5), pct(&lat, 0.99), if mode == Mode::Vector { format!("  recall@{k} {:.4}", recall / data.queries.len() as f64) } else { String::new() });
        out[m] = r;
    }
    if !keep {
        c.delete("bench", &name).await?;
    }
    Ok(out)
}

/// Ingestion through the real model (into the embedded store): chunk and embed `n` chunks of
/// real-looking text.
async fn ingest_figure(args: &BenchRetrievalArgs, c: &Collections) -> anyhow::Result<Option<Value>> {
    if args.ingest_chunks == 0 {
        return Ok(None);
    }
    let name = format!("ingest{}", sluice_store::now_ms());
    c.create("bench", &CollectionSpec { name: name.clone(), model: Some("minilm".into()), chunk_size: Some(128), chunk_overlap: Some(16) }).await?;
    let para = "Retrieval grounds a model's answers in documents fetched at query time. A collection stores \
                chunks of each document with their embeddings, and a query finds the nearest chunks by vector \
                similarity, by shared words, or by both fused. ";
    // Each document is 54 tokens with its special tokens: one chunk each at chunk_size 128.
    let docs: Vec<DocumentInput> =
        (0..args.ingest_chunks).map(|i| DocumentInput { id: format!("p{i}"), text: format!("Note {i}. {para}"), ..Default::default() }).collect();
    let started = Instant::now();
    let mut chunks = 0;
    for batch in docs.chunks(64) {
        chunks += c.upsert("bench", &name, batch.to_vec()).await?.iter().map(|u| u.chunks).sum::<usize>();
    }
    let s = started.elapsed().as_secs_f64();
    c.delete("bench", &name).await?;
    eprintln!("ingestion with all-MiniLM-L6-v2: {chunks} chunks in {s:.1} s = {:.1} chunks/s", chunks as f64 / s);
    Ok(Some(json!({"chunks": chunks, "seconds": s, "chunks_per_s": chunks as f64 / s})))
}

pub async fn run(args: BenchRetrievalArgs) -> anyhow::Result<()> {
    eprintln!("corpus: {} chunks x {DIM} dims in {} topics, {} queries", args.chunks, args.topics, args.queries);
    let data = corpus(args.chunks, args.queries, args.topics.max(1));
    let t0 = Instant::now();
    let truth: Vec<Vec<usize>> = data.queries.iter().map(|(q, _)| exact(&data.vectors, q, args.k)).collect();
    eprintln!("exact search for the ground truth: {:.1} s", t0.elapsed().as_secs_f64());
    let model = sluice_model::EmbeddingModel::load(&args.embedding_model, 2).context("the bench needs the embedding model (its dimension, and the ingestion figure)")?;
    let svc = sluice_retrieval::EmbeddingService::start(model, 64, 8192)?;
    // `bench` collections bring their own vectors: the model name only fixes their dimension.
    let embedders: Embedders = Arc::new([("minilm".to_string(), svc.clone()), ("bench".to_string(), svc)].into_iter().collect());
    let _ = std::fs::remove_dir_all(&args.dir);
    std::fs::create_dir_all(&args.dir)?;
    let sqlite = sluice_store::Store::open(&format!("sqlite://{}", args.dir.join("bench.db").display())).await?;
    let embedded = Collections::open(sqlite, embedders.clone(), args.dir.join("index")).await?;
    let mut results = vec![run_backend("embedded", &embedded, &data, &truth, args.k, args.keep).await?];
    if let Some(url) = &args.postgres_url {
        let pg = sluice_store::Store::open(url).await.context("cannot open the PostgreSQL store")?;
        let c = Collections::open(pg, embedders.clone(), args.dir.join("pg-index")).await?;
        results.push(run_backend("pgvector", &c, &data, &truth, args.k, args.keep).await?);
    }
    let ingest = ingest_figure(&args, &embedded).await?;
    let report = json!({"chunks": args.chunks, "topics": args.topics, "queries": args.queries, "k": args.k, "dim": DIM, "results": results, "ingestion": ingest});
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}
