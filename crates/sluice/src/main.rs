//! The `sluice` command line: `serve` runs the OpenAI-compatible server over a model.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

mod bench;
mod bench_model;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use sluice_engine::{EngineConfig, EngineHandle};
use sluice_server::{AppState, ServedModel};

#[derive(Parser)]
#[command(name = "sluice", version, about = "Serve, route, meter and observe AI models")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a model through an OpenAI-compatible HTTP API.
    Serve(ServeArgs),
    /// Measure the model's prompt-processing and decode speed in process.
    BenchModel(bench_model::BenchModelArgs),
    /// Load-test any OpenAI-compatible server (throughput, TTFT, TPOT, ITL, goodput).
    Bench(bench::BenchArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// A GGUF file or a Hugging Face model directory.
    #[arg(long)]
    model: PathBuf,
    /// The name clients pass as `model` (default: the file name without extension).
    #[arg(long)]
    served_model_name: Option<String>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Compute threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Requests that may wait for the engine before new ones get 503.
    #[arg(long, default_value_t = 64)]
    max_waiting: usize,
    /// Tokens per engine step (prefill chunks and decodes together).
    #[arg(long, default_value_t = 512)]
    max_num_batched_tokens: usize,
    /// Sequences per engine step.
    #[arg(long, default_value_t = 32)]
    max_num_seqs: usize,
    /// KV cache memory, e.g. 512MiB or 2GiB.
    #[arg(long, default_value = "1GiB", value_parser = parse_bytes)]
    kv_cache_memory: usize,
    /// Positions per KV block.
    #[arg(long, default_value_t = 16)]
    block_size: usize,
    /// Do not reuse cached prompt prefixes.
    #[arg(long)]
    no_prefix_cache: bool,
}

/// Parses sizes like `512MiB`, `2GiB`, `1GB`, `65536`.
fn parse_bytes(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("invalid size {s:?}"))?;
    let mul: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        other => return Err(format!("unknown size unit {other:?} in {s:?} (use B, KiB, MiB, GiB, KB, MB, GB)")),
    };
    let bytes = n * mul;
    if !(1.0..1e15).contains(&bytes) {
        return Err(format!("size {s:?} out of range"));
    }
    Ok(bytes as usize)
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(|| LossyStderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    if let Command::BenchModel(args) = cli.command {
        return bench_model::run(args);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match cli.command {
        Command::Serve(args) => rt.block_on(serve(args)),
        Command::BenchModel(_) => Ok(()),
        Command::Bench(args) => rt.block_on(bench::run(args)),
    }
}

/// Stderr that drops what it cannot write: a closed log pipe must never take the server down
/// (the default writer reports its own failure on stderr, which panics when stderr is gone).
struct LossyStderr;

impl std::io::Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

fn format_bytes(b: usize) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let addr: SocketAddr = format!("{}:{}", args.host, args.port)
        .parse()
        .with_context(|| format!("invalid --host/--port {}:{}", args.host, args.port))?;
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    let state = AppState::loading();
    // Serve /health and /ready (503 "loading") while the model loads.
    let server = tokio::spawn(
        axum::serve(listener, sluice_server::app(state.clone()))
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .into_future(),
    );
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2));
    let path = args.model.clone();
    tracing::info!(model = %path.display(), threads, "loading model");
    let started = std::time::Instant::now();
    let loaded = tokio::task::spawn_blocking(move || sluice_model::load(&path, threads))
        .await
        .context("model loading task failed")?
        .with_context(|| format!("cannot load {}", args.model.display()))?;
    let m = &loaded.model;
    tracing::info!(
        architecture = m.cfg.arch.name(),
        parameters = format!("{:.1}M", m.n_params() as f64 / 1e6),
        quantization = m.quantization(),
        context = m.cfg.context_length,
        weights = format_bytes(m.weight_bytes()),
        kernels = ?m.isa(),
        threads = m.threads(),
        chat_template = loaded.chat_template.is_some(),
        load_ms = started.elapsed().as_millis() as u64,
        "model loaded"
    );
    let name = args.served_model_name.clone().unwrap_or_else(|| loaded.name.clone());
    let mut loaded = loaded;
    loaded.name = name.clone();
    let engine_cfg = EngineConfig {
        max_waiting: args.max_waiting,
        max_num_batched_tokens: args.max_num_batched_tokens,
        max_num_seqs: args.max_num_seqs,
        kv_cache_bytes: args.kv_cache_memory,
        block_size: args.block_size,
        prefix_caching: !args.no_prefix_cache,
    };
    let engine = EngineHandle::start(Arc::new(loaded), engine_cfg).context("cannot start the engine")?;
    tracing::info!(
        kv_cache = format_bytes(args.kv_cache_memory),
        kv_tokens = engine.kv_capacity_tokens(),
        max_num_seqs = args.max_num_seqs,
        max_num_batched_tokens = args.max_num_batched_tokens,
        prefix_caching = !args.no_prefix_cache,
        "engine started"
    );
    state.set_model(ServedModel { name: name.clone(), engine });
    tracing::info!(model = %name, "serving OpenAI-compatible API on http://{addr}/v1");
    server.await.context("server task failed")?.context("server error")?;
    Ok(())
}
