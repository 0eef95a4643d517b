//! `sluice serve`: one model from flags, or a fleet from `--config sluice.toml` (in-process
//! engines, remote Sluice engines, any OpenAI-compatible server) behind the gateway.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use sluice_engine::{EngineConfig, EngineHandle, KvDtype, Numerics};
use sluice_gateway::config::{self, Endpoint, GatewayConfig};
use sluice_gateway::mock::{MockBehaviour, MockUpstream};
use sluice_gateway::{Backend, Gateway, InProcessBackend};
use sluice_govern::Governor;
use sluice_server::{AppState, GatewayState, ServedModel};

#[derive(Args)]
pub struct ServeArgs {
    /// A GGUF file or a Hugging Face model directory.
    #[arg(long, required_unless_present = "config", conflicts_with = "config")]
    model: Option<PathBuf>,
    /// A fleet configuration (backends and model routes); see sluice.example.toml.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The name clients pass as `model` (default: the file name without extension).
    #[arg(long)]
    served_model_name: Option<String>,
    /// TLS certificate chain (PEM): serve HTTPS (with --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Seconds a client has to send its request headers (slow clients are dropped).
    #[arg(long, default_value_t = 10)]
    header_read_timeout: u64,
    /// An embedding model directory (BERT family, e.g. all-MiniLM-L6-v2) to serve at
    /// /v1/embeddings under its directory name; may be repeated.
    #[arg(long)]
    embedding_model: Vec<PathBuf>,
    /// Where local state lives: the retrieval store when no --database-url is given
    /// (DIR/sluice.db) and embedded vector indexes (DIR/index/).
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
    /// Address to listen on (default 127.0.0.1, or the config file's).
    #[arg(long)]
    host: Option<String>,
    /// Port to listen on (default 8080, or the config file's).
    #[arg(long)]
    port: Option<u16>,
    /// Compute threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Requests that may wait for the engine before new ones get 503.
    #[arg(long, default_value_t = 64)]
    max_waiting: usize,
    /// Tokens per engine step (prefill chunks and decodes together).
    #[arg(long, default_value_t = 512)]
    max_num_batched_tokens: usize,
    /// Prompt tokens per engine step while other requests are generating: bounds the pause a
    /// new prompt puts in their streams (idle, prompts get the whole step).
    #[arg(long, default_value_t = 128)]
    max_prefill_tokens_with_decodes: usize,
    /// Sequences per engine step.
    #[arg(long, default_value_t = 32)]
    max_num_seqs: usize,
    /// KV cache memory, e.g. 512MiB or 2GiB.
    #[arg(long, default_value = "1GiB", value_parser = config::parse_bytes)]
    kv_cache_memory: usize,
    /// Positions per KV block.
    #[arg(long, default_value_t = 16)]
    block_size: usize,
    /// How the KV cache stores keys and values: f16 (half the memory; llama.cpp's default),
    /// f32, or q8_0 (8-bit codes with a scale per 32 dimensions: 56% of f16's memory).
    #[arg(long, default_value = "f16", value_parser = KvDtype::parse)]
    kv_cache_dtype: KvDtype,
    /// How matrix products round: reference (llama.cpp's CPU arithmetic bit for bit, so greedy
    /// outputs match it token for token) or fast (about 1.3x the prompt and 1.15x the batched
    /// decode throughput with AVX-512 VNNI; logits within ~1 of the reference's).
    #[arg(long, default_value = "reference", value_parser = Numerics::parse)]
    numerics: Numerics,
    /// Do not reuse cached prompt prefixes.
    #[arg(long)]
    no_prefix_cache: bool,
    /// Store for tenants and API keys (sqlite://PATH or postgres://...); API keys are required
    /// when given. On an empty store a first admin key is printed once.
    #[arg(long)]
    database_url: Option<String>,
    /// The audit trail's checkpoint secret (made on first start; keep it off the database host's
    /// backups of the database).
    #[arg(long, default_value = "data/audit.key")]
    audit_secret_file: PathBuf,
}

#[derive(Args)]
pub struct MockArgs {
    /// Port to listen on (127.0.0.1).
    #[arg(long, default_value_t = 8090)]
    port: u16,
    /// Tokens per answer when the request gives no max_tokens.
    #[arg(long, default_value_t = 8)]
    tokens: u64,
    /// Delay before each streamed token, in milliseconds.
    #[arg(long, default_value_t = 0)]
    token_delay_ms: u64,
}

fn format_bytes(b: usize) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

fn env_secret(var: &str) -> Option<String> {
    std::env::var(var).ok()
}

/// `sluice config check FILE`.
pub fn check_config(file: &Path) -> anyhow::Result<()> {
    let cfg = config::load(file, &env_secret)?;
    for b in &cfg.backends {
        if let Endpoint::Engine { model_path, .. } = &b.endpoint
            && !model_path.exists()
        {
            anyhow::bail!("{}: backends.{}.model_path: {} does not exist", file.display(), b.name, model_path.display());
        }
    }
    tracing::info!(backends = cfg.backends.len(), models = cfg.routes.len(), "{} is valid", file.display());
    Ok(())
}

/// `sluice mock-upstream`.
pub async fn mock_upstream(args: MockArgs) -> anyhow::Result<()> {
    let behaviour = MockBehaviour {
        default_tokens: args.tokens,
        token_delay: std::time::Duration::from_millis(args.token_delay_ms),
        ..Default::default()
    };
    let addr: SocketAddr = ([127, 0, 0, 1], args.port).into();
    let mock = MockUpstream::start_on("mock", behaviour, addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    tracing::info!("mock upstream on {}", mock.url());
    let _ = tokio::signal::ctrl_c().await;
    Ok(())
}

async fn listen(host: &str, port: u16) -> anyhow::Result<(tokio::net::TcpListener, SocketAddr)> {
    let addr: SocketAddr = format!("{host}:{port}").parse().with_context(|| format!("invalid --host/--port {host}:{port}"))?;
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    Ok((listener, addr))
}

/// Loads a model and starts its engine.
async fn start_engine(path: PathBuf, threads: Option<usize>, name: String, cfg: EngineConfig) -> anyhow::Result<ServedModel> {
    let threads = threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2));
    tracing::info!(model = %path.display(), threads, "loading model");
    let started = std::time::Instant::now();
    let p = path.clone();
    let mut loaded = tokio::task::spawn_blocking(move || sluice_model::load(&p, threads))
        .await
        .context("model loading task failed")?
        .with_context(|| format!("cannot load {}", path.display()))?;
    loaded.model.set_numerics(cfg.numerics);
    let m = &loaded.model;
    if cfg.numerics == Numerics::Fast && m.isa() != sluice_model::quant::Isa::Avx512Vnni {
        tracing::warn!(kernels = ?m.isa(), "the fast numerics need AVX-512 VNNI; this CPU runs the reference arithmetic");
    }
    tracing::info!(
        architecture = m.cfg.arch.name(),
        parameters = format!("{:.1}M", m.n_params() as f64 / 1e6),
        quantization = m.quantization(),
        context = m.cfg.context_length,
        weights = format_bytes(m.weight_bytes()),
        kernels = ?m.isa(),
        numerics = ?m.numerics(),
        threads = m.threads(),
        chat_template = loaded.chat_template.is_some(),
        load_ms = started.elapsed().as_millis() as u64,
        "model loaded"
    );
    loaded.name = name.clone();
    let engine = EngineHandle::start(Arc::new(loaded), cfg.clone()).context("cannot start the engine")?;
    tracing::info!(
        model = %name,
        kv_cache = format_bytes(cfg.kv_cache_bytes),
        kv_cache_dtype = ?cfg.kv_cache_dtype,
        kv_tokens = engine.kv_capacity_tokens(),
        max_num_seqs = cfg.max_num_seqs,
        max_num_batched_tokens = cfg.max_num_batched_tokens,
        max_prefill_tokens_with_decodes = cfg.max_prefill_tokens_with_decodes,
        prefix_caching = cfg.prefix_caching,
        "engine started"
    );
    Ok(ServedModel { name, engine })
}

/// The audit secret in `path`, made (random, owner-only) when the file does not exist.
pub fn audit_secret(path: &Path) -> anyhow::Result<Vec<u8>> {
    if let Ok(text) = std::fs::read_to_string(path) {
        let s = text.trim();
        anyhow::ensure!(s.len() >= 32, "{}: the audit secret must be at least 32 characters", path.display());
        return Ok(s.as_bytes().to_vec());
    }
    let mut bytes = [0u8; 32];
    rand::TryRngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut bytes).map_err(|e| anyhow::anyhow!("random generator: {e}"))?;
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path).with_context(|| format!("cannot create {}", path.display()))?;
    std::io::Write::write_all(&mut f, secret.as_bytes())?;
    tracing::info!(path = %path.display(), "made the audit checkpoint secret");
    Ok(secret.into_bytes())
}

/// Opens the store, applies migrations, starts the audit trail (its writer on `background`),
/// and makes the first admin key on an empty store (printed once, unless `bootstrap` gives it).
pub async fn open_governor(url: &str, bootstrap: Option<&str>, audit_secret_file: &Path, background: &sluice_govern::Background) -> anyhow::Result<Governor> {
    // WAL checkpoints run on the background store's (lower-priority) thread.
    let store = sluice_store::Store::open_with(url, false).await.with_context(|| format!("cannot open the store {}", redact(url)))?;
    let secret = audit_secret(audit_secret_file)?;
    let auditor = sluice_govern::Auditor::start_on(background, secret, Some(audit_secret_file.with_extension("tip")));
    let gov = Governor::new(store).with_auditor(auditor);
    if let Some(k) = gov.bootstrap(bootstrap).await.context("cannot create the first admin key")? {
        gov.audit("admin.key_created", Some(&k.record.tenant_id), Some("bootstrap"), serde_json::json!({"key_id": k.record.id, "prefix": k.record.prefix, "role": "admin"}));
        if bootstrap.is_some() {
            tracing::info!(key = %k.record.id, "bootstrap admin key from the configuration stored");
        } else {
            // Shown once, outside the structured log, and never stored in clear.
            eprintln!(
                "\n  First start with an empty store: an admin API key was created for tenant `admin`.\n  It is shown only now:\n\n      {}\n\n  Create member keys with it (POST /admin/keys or `sluice keys create`).\n",
                k.secret
            );
        }
    }
    Ok(gov)
}

/// A database URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{}:***{}", &url[..s + 3], user, &url[at..])
        }
        _ => url.to_string(),
    }
}

/// `sluice serve`.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    if let Some(path) = args.config.clone() {
        let cfg = config::load(&path, &env_secret)?;
        return serve_fleet(args, cfg).await;
    }
    let Some(model) = args.model.clone() else { anyhow::bail!("give --model or --config") };
    let cfg = single_model(&args, model);
    serve_fleet(args, cfg).await
}

/// `--model` as a fleet of one: the engine behind the same gateway path as a configured fleet
/// (one code path for keys, routing, metrics and logs), without retries — there is nowhere else
/// to go — and with timeouts that never cut a slow CPU generation short.
fn single_model(args: &ServeArgs, model: PathBuf) -> GatewayConfig {
    use sluice_gateway::config::{BackendKind, BreakerConfig, Cost, RetryConfig, RouteConfig, ServerConfig, Timeouts};
    let name = args.served_model_name.clone().unwrap_or_else(|| {
        model.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into())
    });
    let engine = EngineConfig {
        max_waiting: args.max_waiting,
        max_num_batched_tokens: args.max_num_batched_tokens,
        max_prefill_tokens_with_decodes: args.max_prefill_tokens_with_decodes,
        max_num_seqs: args.max_num_seqs,
        kv_cache_bytes: args.kv_cache_memory,
        kv_cache_dtype: args.kv_cache_dtype,
        numerics: args.numerics,
        block_size: args.block_size,
        prefix_caching: !args.no_prefix_cache,
    };
    let hour = std::time::Duration::from_secs(3600);
    let backend = sluice_gateway::BackendConfig {
        name: name.clone(),
        kind: BackendKind::Engine,
        endpoint: Endpoint::Engine { model_path: model, threads: args.threads, engine },
        model: name.clone(),
        context_window: None,
        max_concurrent: u32::MAX,
        cost: Cost::Unknown,
        timeouts: Timeouts { connect: hour, first_token: hour, idle: hour, total: 24 * hour },
        breaker: BreakerConfig { failures: u32::MAX, cooldown: std::time::Duration::from_secs(1) },
        health: Default::default(),
    };
    let route = RouteConfig {
        name: name.clone(),
        targets: vec![name],
        weights: vec![1],
        policy: sluice_gateway::policy::PolicyKind::RoundRobin,
        fallback: Vec::new(),
        retry: RetryConfig { max_attempts: 1, attempts_per_target: 1, ..Default::default() },
        prefix_bytes: 256,
        redact_outbound: false,
    };
    GatewayConfig {
        server: ServerConfig::default(),
        backends: vec![backend],
        routes: vec![route],
        database_url: None,
        bootstrap_key: None,
        audit_secret_file: None,
        redaction_patterns: Vec::new(),
        embeddings: flag_embeddings(args),
    }
}

/// `--embedding-model DIR`s, named after their directories.
fn flag_embeddings(args: &ServeArgs) -> Vec<sluice_gateway::config::EmbeddingConfig> {
    args.embedding_model
        .iter()
        .map(|p| sluice_gateway::config::EmbeddingConfig {
            name: p.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "embedding".into()),
            model_path: p.clone(),
            threads: args.threads,
        })
        .collect()
}

/// Loads the embedding models (small: they load before the server listens).
fn start_embedders(cfg: &GatewayConfig, args: &ServeArgs) -> anyhow::Result<sluice_server::embeddings::Embedders> {
    let mut out = std::collections::BTreeMap::new();
    let mut all = cfg.embeddings.clone();
    if args.config.is_some() {
        all.extend(flag_embeddings(args));
    }
    for e in all {
        let threads = e.threads.or(args.threads).unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let model = sluice_model::EmbeddingModel::load(&e.model_path, threads)
            .with_context(|| format!("cannot load embedding model {} from {}", e.name, e.model_path.display()))?;
        tracing::info!(model = %e.name, dim = model.dim(), max_tokens = model.max_tokens(), "embedding model loaded");
        let svc = sluice_retrieval::EmbeddingService::start(model, args.max_waiting, sluice_retrieval::embed::DEFAULT_MAX_BATCH_TOKENS)?;
        out.insert(e.name, svc);
    }
    Ok(Arc::new(out))
}

/// Where the ledger journals: beside an SQLite database (it belongs to that file), else in the
/// data directory.
fn ledger_journal_dir(database_url: &str, data_dir: &std::path::Path) -> PathBuf {
    let sqlite = database_url.strip_prefix("sqlite://").or_else(|| database_url.strip_prefix("sqlite:"));
    match sqlite.map(|p| p.split('?').next().unwrap_or(p)).filter(|p| !p.is_empty() && *p != ":memory:") {
        Some(path) => PathBuf::from(format!("{path}.ledger-journal")),
        None => data_dir.join("ledger-journal"),
    }
}

/// Ctrl-C or SIGTERM (what service managers and container runtimes send) stop the server
/// gracefully: unused budget allowances go back, indexes are saved.
async fn shutdown() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

async fn serve_fleet(args: ServeArgs, cfg: GatewayConfig) -> anyhow::Result<()> {
    let host = args.host.clone().or(cfg.server.host.clone()).unwrap_or_else(|| "127.0.0.1".into());
    let port = args.port.or(cfg.server.port).unwrap_or(8080);
    let mut in_process: HashMap<String, Arc<dyn Backend>> = HashMap::new();
    let mut to_load = Vec::new();
    for b in &cfg.backends {
        if let Endpoint::Engine { model_path, threads, engine } = &b.endpoint {
            let state = AppState::behind_gateway();
            in_process.insert(b.name.clone(), Arc::new(InProcessBackend::new(sluice_server::app(state.clone()))));
            to_load.push((b.name.clone(), b.model.clone(), model_path.clone(), *threads, engine.clone(), state));
        }
    }
    let mut gateway = Gateway::new(&cfg, in_process).map_err(anyhow::Error::msg)?;
    let redactor = Arc::new(sluice_govern::Redactor::new(&cfg.redaction_patterns).context("redaction.patterns: invalid regular expression")?);
    let outbound = redactor.clone();
    gateway.set_redactor(Arc::new(move |s: &str| outbound.redact(s)));
    gateway.start_health_checks();
    let database_url = args.database_url.clone().or(cfg.database_url.clone());
    let mut governed = None;
    if let Some(url) = &database_url {
        let secret_file = cfg.audit_secret_file.clone().unwrap_or_else(|| args.audit_secret_file.clone());
        // The ledger's and audit trail's writers run at a lower priority than requests.
        let background = sluice_govern::Background::start(url).await.with_context(|| format!("cannot open the store {}", redact(url)))?;
        let gov = open_governor(url, cfg.bootstrap_key.as_deref(), &secret_file, &background).await?;
        let journal = ledger_journal_dir(url, &args.data_dir);
        let ledger = sluice_govern::Ledger::start_journaled(gov.store().clone(), &journal, Some(&background))
            .await
            .with_context(|| format!("cannot start the ledger (journal {})", journal.display()))?;
        gateway.set_governance(Arc::new(
            sluice_server::ledger::LedgerGovernance::new(ledger.clone()).with_auditor(gov.auditor().cloned(), Some(redactor.clone())),
        ));
        governed = Some((gov, ledger));
    }
    let gateway = Arc::new(gateway);
    let engines: Vec<AppState> = to_load.iter().map(|l| l.5.clone()).collect();
    let embedders = start_embedders(&cfg, &args)?;
    let store = governed.as_ref().map(|(g, _)| g.store().clone());
    let collections = open_collections(&args, &embedders, store).await?;
    let mut state = GatewayState::new(gateway.clone(), engines).with_embedders(embedders);
    if let Some(c) = &collections {
        state = state.with_collections(c.clone());
    }
    let ledger_at_exit = governed.as_ref().map(|(_, l)| l.clone());
    if let Some((gov, ledger)) = governed {
        state = state.with_governor(gov).with_ledger(ledger);
    }
    let (listener, addr) = listen(&host, port).await?;
    let app = sluice_server::gateway_app(state);
    let tls = match args.tls_cert.clone().zip(args.tls_key.clone()).or(cfg.server.tls.clone()) {
        Some((cert, key)) => Some(sluice_server::listen::tls_config(&cert, &key).map_err(anyhow::Error::msg).context("TLS")?),
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let opts = sluice_server::listen::ServeOptions {
        tls,
        header_read_timeout: std::time::Duration::from_secs(args.header_read_timeout.max(1)),
        ..Default::default()
    };
    let server = tokio::spawn(sluice_server::listen::serve(listener, app, opts, shutdown()));
    for r in &cfg.routes {
        tracing::info!(model = %r.name, policy = r.policy.as_str(), targets = ?r.targets, fallback = ?r.fallback, "route");
    }
    tracing::info!(api_keys = database_url.is_some(), "gateway listening on {scheme}://{addr}/v1 (engines load in the background; /ready says when)");
    // Engines load one after another: loading several at once would only fight over memory bandwidth.
    for (backend, name, path, threads, engine_cfg, state) in to_load {
        let served = start_engine(path, threads, name, engine_cfg).await.with_context(|| format!("backend `{backend}`"))?;
        let window = served.engine.model.model.cfg.context_length as u32;
        if let Some(t) = gateway.targets().iter().find(|t| t.name() == backend) {
            t.learn_context_window(window);
            t.set_healthy(true); // no need to wait for the next health check
        }
        state.set_model(served);
    }
    server.await.context("server task failed")?.context("server error")?;
    if let Some(l) = ledger_at_exit {
        l.give_back_allowances().await;
    }
    if let Some(c) = collections {
        c.save_indexes().await.context("cannot save the vector indexes")?;
    }
    Ok(())
}

/// Collections, when an embedding model is served: in the store of the API keys, or else in an
/// SQLite file in the data directory; embedded indexes are saved every 30 s when changed (and
/// at exit; a stale or missing index is rebuilt from the store on start).
async fn open_collections(
    args: &ServeArgs,
    embedders: &sluice_server::embeddings::Embedders,
    store: Option<sluice_store::Store>,
) -> anyhow::Result<Option<Arc<sluice_retrieval::Collections>>> {
    if embedders.is_empty() {
        return Ok(None);
    }
    let store = match store {
        Some(s) => s,
        None => {
            let url = format!("sqlite://{}", args.data_dir.join("sluice.db").display());
            sluice_store::Store::open(&url).await.with_context(|| format!("cannot open {url}"))?
        }
    };
    let c = Arc::new(
        sluice_retrieval::Collections::open(store, embedders.clone(), args.data_dir.join("index")).await.context("cannot open the collections")?,
    );
    let saver = c.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(30));
        loop {
            tick.tick().await;
            if let Err(e) = saver.save_indexes().await {
                tracing::warn!(error = %e, "saving vector indexes failed");
            }
        }
    });
    Ok(Some(c))
}
