//! The `sluice` command line: `serve` runs the OpenAI-compatible server over a model.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

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
    /// Prompt tokens per prefill step.
    #[arg(long, default_value_t = 512)]
    prefill_chunk: usize,
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
    let engine = EngineHandle::start(
        Arc::new(loaded),
        EngineConfig { max_waiting: args.max_waiting, prefill_chunk: args.prefill_chunk },
    )
    .context("cannot start the engine")?;
    state.set_model(ServedModel { name: name.clone(), engine });
    tracing::info!(model = %name, "serving OpenAI-compatible API on http://{addr}/v1");
    server.await.context("server task failed")?.context("server error")?;
    Ok(())
}
