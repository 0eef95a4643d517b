//! The `sluice` command line: `serve` runs the OpenAI-compatible server over a model.

mod audit;
mod bench;
mod bench_gateway;
mod bench_model;
mod bench_retrieval;
mod ingest;
mod keys;
mod serve;
mod usage;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "sluice", version, about = "Serve, route, meter and observe AI models")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate FILE: every error names the file, the field and why.
    Check {
        /// The configuration file.
        file: std::path::PathBuf,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Serve a model, or a fleet described by --config, through an OpenAI-compatible HTTP API.
    Serve(serve::ServeArgs),
    /// Create, list and revoke API keys in the store.
    Keys(keys::KeysArgs),
    /// Requests, tokens and cost from the ledger, grouped and bucketed.
    Usage(usage::UsageArgs),
    /// Verify the tamper-evident audit trail, or export it.
    Audit(audit::AuditArgs),
    /// Send files to a running server's collection (chunked and embedded there).
    Ingest(ingest::IngestArgs),
    /// Check a configuration file without serving.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Run a deterministic OpenAI-compatible mock upstream (for gateway benchmarks).
    #[command(hide = true)]
    MockUpstream(serve::MockArgs),
    /// Measure the model's prompt-processing and decode speed in process.
    BenchModel(bench_model::BenchModelArgs),
    /// Load-test any OpenAI-compatible server (throughput, TTFT, TPOT, ITL, goodput).
    Bench(bench::BenchArgs),
    /// Query latency and recall of collections at scale, embedded index and pgvector side by side.
    BenchRetrieval(bench_retrieval::BenchRetrievalArgs),
    /// Measure the latency and throughput a gateway adds in front of an upstream.
    BenchGateway(bench_gateway::BenchGatewayArgs),
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
        Command::Serve(args) => rt.block_on(serve::serve(args)),
        Command::Config(ConfigCommand::Check { file }) => serve::check_config(&file),
        Command::Keys(args) => rt.block_on(keys::run(args)),
        Command::Usage(args) => rt.block_on(usage::run(args)),
        Command::Ingest(args) => rt.block_on(ingest::run(args)),
        Command::Audit(args) => {
            if rt.block_on(audit::run(args))? {
                Ok(())
            } else {
                std::process::exit(1)
            }
        }
        Command::MockUpstream(args) => rt.block_on(serve::mock_upstream(args)),
        Command::BenchModel(_) => Ok(()),
        Command::Bench(args) => rt.block_on(bench::run(args)),
        Command::BenchGateway(args) => rt.block_on(bench_gateway::run(args)),
        Command::BenchRetrieval(args) => rt.block_on(bench_retrieval::run(args)),
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

