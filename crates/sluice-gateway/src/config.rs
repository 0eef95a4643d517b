//! `sluice.toml`: parsed into `Raw*` structs that reject unknown fields, then validated once
//! into [`GatewayConfig`], whose values are all usable as they are. Every error names the file,
//! the field and why. Secrets are read through a lookup the caller passes in (`main` owns the
//! environment), never from the environment here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use sluice_engine::{EngineConfig, KvDtype, Numerics};

use crate::policy::PolicyKind;

/// A configuration error: which file, which field, and why.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {field}: {reason}")]
pub struct ConfigError {
    /// The configuration file.
    pub file: String,
    /// Dotted path of the offending field (`backends.local.timeouts.total_ms`).
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    backends: BTreeMap<String, RawBackend>,
    #[serde(default)]
    models: BTreeMap<String, RawRoute>,
    #[serde(default)]
    store: Option<RawStore>,
    #[serde(default)]
    auth: Option<RawAuth>,
    #[serde(default)]
    audit: Option<RawAudit>,
    #[serde(default)]
    redaction: Option<RawRedaction>,
    #[serde(default)]
    embeddings: BTreeMap<String, RawEmbedding>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEmbedding {
    model_path: PathBuf,
    #[serde(default)]
    threads: Option<usize>,
}

/// An embedding model served in this process at `/v1/embeddings`.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingConfig {
    /// The name clients pass as `model`.
    pub name: String,
    /// Its Hugging Face directory.
    pub model_path: PathBuf,
    /// Compute threads (default: all cores).
    pub threads: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedaction {
    #[serde(default)]
    patterns: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    secret_file: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    database_url: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    bootstrap_key_env: Option<String>,
    bootstrap_key_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    host: Option<String>,
    port: Option<u16>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    kind: String,
    // `engine`
    model_path: Option<PathBuf>,
    threads: Option<usize>,
    max_waiting: Option<usize>,
    max_num_seqs: Option<usize>,
    max_num_batched_tokens: Option<usize>,
    max_prefill_tokens_with_decodes: Option<usize>,
    kv_cache_memory: Option<String>,
    kv_cache_dtype: Option<String>,
    numerics: Option<String>,
    block_size: Option<usize>,
    prefix_cache: Option<bool>,
    // `sluice` and `openai`
    base_url: Option<String>,
    api_key_env: Option<String>,
    api_key_file: Option<PathBuf>,
    // every kind
    model: Option<String>,
    context_window: Option<u32>,
    max_concurrent: Option<u32>,
    price: Option<RawPrice>,
    hourly_cost: Option<f64>,
    #[serde(default)]
    timeouts: RawTimeouts,
    #[serde(default)]
    breaker: RawBreaker,
    #[serde(default)]
    health: RawHealth,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrice {
    input: f64,
    #[serde(default)]
    cached_input: Option<f64>,
    output: f64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    connect_ms: Option<u64>,
    first_token_ms: Option<u64>,
    idle_ms: Option<u64>,
    total_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBreaker {
    failures: Option<u32>,
    cooldown_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    interval_ms: Option<u64>,
    timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    targets: Vec<String>,
    #[serde(default)]
    policy: Option<String>,
    #[serde(default)]
    weights: Option<Vec<u32>>,
    #[serde(default)]
    fallback: Vec<String>,
    #[serde(default)]
    retry: RawRetry,
    #[serde(default)]
    prefix_bytes: Option<usize>,
    #[serde(default)]
    redact_outbound: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    max_attempts: Option<u32>,
    attempts_per_target: Option<u32>,
    backoff_base_ms: Option<u64>,
    backoff_max_ms: Option<u64>,
}

/// Where to listen, when the file says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServerConfig {
    /// Listen address.
    pub host: Option<String>,
    /// Listen port.
    pub port: Option<u16>,
    /// TLS certificate chain (PEM) and private key (PEM), to serve HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Listen address from the file (flags override).
    pub server: ServerConfig,
    /// Backends by name, in name order.
    pub backends: Vec<BackendConfig>,
    /// Routes by client-facing model name, in name order.
    pub routes: Vec<RouteConfig>,
    /// Database for tenants, keys and the ledger; API keys are required when set.
    pub database_url: Option<String>,
    /// The first admin key, for an empty store (instead of a printed fresh one).
    pub bootstrap_key: Option<String>,
    /// The audit checkpoint secret's file (made when missing).
    pub audit_secret_file: Option<PathBuf>,
    /// Custom PII patterns `(name, regular expression)`, besides the built-in kinds.
    pub redaction_patterns: Vec<(String, String)>,
    /// Embedding models served in this process.
    pub embeddings: Vec<EmbeddingConfig>,
}

/// Which kind of server a backend is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// An engine in this process.
    Engine,
    /// A remote `sluice serve`.
    Sluice,
    /// Any OpenAI-compatible server.
    OpenAi,
}

impl BackendKind {
    /// The label used in config files and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Engine => "engine",
            Self::Sluice => "sluice",
            Self::OpenAi => "openai",
        }
    }
}

/// How to reach a backend.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// Load this model file into an engine in this process.
    Engine {
        /// GGUF file or Hugging Face directory.
        model_path: PathBuf,
        /// Compute threads.
        threads: Option<usize>,
        /// Engine settings.
        engine: EngineConfig,
    },
    /// An HTTP API root such as `http://10.0.0.5:8080/v1`.
    Http {
        /// API root, without a trailing slash.
        base_url: String,
        /// Bearer token, if the server wants one.
        api_key: Option<String>,
    },
}

/// Price of a backend's tokens, in US dollars per million.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Price {
    /// Prompt tokens.
    pub input: f64,
    /// Prompt tokens served from the backend's cache.
    pub cached_input: f64,
    /// Generated tokens.
    pub output: f64,
}

/// What a backend costs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cost {
    /// Per token (hosted APIs).
    PerToken(Price),
    /// Per hour of the machine, whatever it serves (owned or rented capacity); its marginal
    /// cost per request is zero.
    Hourly(f64),
    /// Not stated: treated as free.
    Unknown,
}

/// Limits on one attempt at a backend.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timeouts {
    /// TCP connect.
    pub connect: Duration,
    /// Request sent to first generated token (to the response, when not streaming).
    pub first_token: Duration,
    /// Between two streamed events.
    pub idle: Duration,
    /// The whole attempt.
    pub total: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(2),
            first_token: Duration::from_secs(60),
            idle: Duration::from_secs(30),
            total: Duration::from_secs(600),
        }
    }
}

/// When a backend's circuit opens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the circuit.
    pub failures: u32,
    /// How long it stays open before one probe may pass.
    pub cooldown: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self { failures: 5, cooldown: Duration::from_secs(10) }
    }
}

/// Active health checks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthConfig {
    /// Time between checks.
    pub interval: Duration,
    /// A check slower than this fails.
    pub timeout: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self { interval: Duration::from_secs(5), timeout: Duration::from_secs(2) }
    }
}

/// One backend.
#[derive(Debug, Clone)]
pub struct BackendConfig {
    /// Its name in the file, logs, headers and metrics.
    pub name: String,
    /// Its kind.
    pub kind: BackendKind,
    /// How to reach it.
    pub endpoint: Endpoint,
    /// The model name to send it.
    pub model: String,
    /// Context window in tokens (`None`: learned from the engine, or unlimited).
    pub context_window: Option<u32>,
    /// Concurrent requests it may hold.
    pub max_concurrent: u32,
    /// What it costs.
    pub cost: Cost,
    /// Per-attempt limits.
    pub timeouts: Timeouts,
    /// Circuit breaker.
    pub breaker: BreakerConfig,
    /// Active health checks.
    pub health: HealthConfig,
}

/// Retries of one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryConfig {
    /// Attempts over all targets.
    pub max_attempts: u32,
    /// Attempts at one target before falling back to the next.
    pub attempts_per_target: u32,
    /// First backoff; doubles per retry, jittered.
    pub backoff_base: Duration,
    /// Longest backoff.
    pub backoff_max: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            attempts_per_target: 2,
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_secs(1),
        }
    }
}

/// A client-facing model name and how it is served.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// The name clients pass as `model`.
    pub name: String,
    /// Backends the policy chooses among.
    pub targets: Vec<String>,
    /// Per-target weights (weighted policy), same order as `targets`.
    pub weights: Vec<u32>,
    /// The policy.
    pub policy: PolicyKind,
    /// Backends tried, in order, after every target failed.
    pub fallback: Vec<String>,
    /// Retries.
    pub retry: RetryConfig,
    /// Prompt bytes hashed for prefix affinity.
    pub prefix_bytes: usize,
    /// Redact PII from prompts before they leave for an external (`openai`) backend.
    pub redact_outbound: bool,
}

/// Reads and validates `path`; `secret` looks up environment variables (owned by `main`).
pub fn load(path: &Path, secret: &dyn Fn(&str) -> Option<String>) -> Result<GatewayConfig, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError { file: file.clone(), field: "(file)".into(), reason: e.to_string() })?;
    parse(&file, &text, secret)
}

/// Parses and validates the text of a configuration file named `file`.
pub fn parse(file: &str, text: &str, secret: &dyn Fn(&str) -> Option<String>) -> Result<GatewayConfig, ConfigError> {
    let de = toml::Deserializer::parse(text)
        .map_err(|e| ConfigError { file: file.into(), field: "(syntax)".into(), reason: e.to_string().trim().to_string() })?;
    let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        ConfigError { file: file.into(), field, reason: inner.message().trim().to_string() }
    })?;
    Validator { file, secret }.config(raw)
}

/// Parses sizes like `512MiB`, `2GiB`, `1GB`, `65536`.
pub fn parse_bytes(s: &str) -> Result<usize, String> {
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

struct Validator<'a> {
    file: &'a str,
    secret: &'a dyn Fn(&str) -> Option<String>,
}

impl Validator<'_> {
    fn err(&self, field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError { file: self.file.into(), field: field.into(), reason: reason.into() }
    }

    fn config(&self, raw: RawConfig) -> Result<GatewayConfig, ConfigError> {
        if raw.backends.is_empty() {
            return Err(self.err("backends", "at least one backend is required"));
        }
        if raw.models.is_empty() {
            return Err(self.err("models", "at least one model route is required"));
        }
        let backends = raw
            .backends
            .into_iter()
            .map(|(name, b)| self.backend(name, b))
            .collect::<Result<Vec<_>, _>>()?;
        let routes = raw
            .models
            .into_iter()
            .map(|(name, r)| self.route(name, r, &backends))
            .collect::<Result<Vec<_>, _>>()?;
        let database_url = match raw.store {
            Some(st) => {
                let u = st.database_url.trim();
                if !(u.starts_with("sqlite:") || u.starts_with("postgres://") || u.starts_with("postgresql://")) {
                    return Err(self.err("store.database_url", "must be sqlite://PATH or postgres://..."));
                }
                Some(u.to_string())
            }
            None => None,
        };
        let bootstrap_key = match raw.auth {
            None => None,
            Some(_) if database_url.is_none() => {
                return Err(self.err("auth", "API keys live in the store: add [store] database_url"));
            }
            Some(a) => self.secret_from("auth", a.bootstrap_key_env.as_deref(), a.bootstrap_key_file.as_deref(), "bootstrap_key")?,
        };
        let mut embeddings = Vec::new();
        for (name, e) in raw.embeddings {
            self.name("embeddings", &name)?;
            if routes.iter().any(|r: &RouteConfig| r.name == name) {
                return Err(self.err(format!("embeddings.{name}"), "a model route has the same name"));
            }
            embeddings.push(EmbeddingConfig { name, model_path: e.model_path, threads: e.threads });
        }
        if raw.audit.is_some() && database_url.is_none() {
            return Err(self.err("audit", "the audit trail lives in the store: add [store] database_url"));
        }
        Ok(GatewayConfig {
            server: ServerConfig {
                host: raw.server.host,
                port: raw.server.port,
                tls: match (raw.server.tls_cert, raw.server.tls_key) {
                    (Some(c), Some(k)) => Some((c, k)),
                    (None, None) => None,
                    _ => return Err(self.err("server.tls_key", "give both tls_cert and tls_key, or neither")),
                },
            },
            backends,
            routes,
            database_url,
            bootstrap_key,
            audit_secret_file: raw.audit.map(|a| a.secret_file),
            redaction_patterns: raw.redaction.map(|r| r.patterns.into_iter().collect()).unwrap_or_default(),
            embeddings,
        })
    }

    fn name(&self, field: &str, name: &str) -> Result<(), ConfigError> {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '/'));
        if ok {
            Ok(())
        } else {
            Err(self.err(field, "names are 1-64 characters of letters, digits and - _ . : /"))
        }
    }

    fn millis(&self, field: String, v: Option<u64>, default: Duration) -> Result<Duration, ConfigError> {
        match v {
            None => Ok(default),
            Some(0) => Err(self.err(field, "must be greater than 0")),
            Some(ms) => Ok(Duration::from_millis(ms)),
        }
    }

    fn backend(&self, name: String, b: RawBackend) -> Result<BackendConfig, ConfigError> {
        let at = |f: &str| format!("backends.{name}.{f}");
        self.name(&format!("backends.{name}"), &name)?;
        let kind = match b.kind.as_str() {
            "engine" => BackendKind::Engine,
            "sluice" => BackendKind::Sluice,
            "openai" => BackendKind::OpenAi,
            other => return Err(self.err(at("kind"), format!("unknown kind {other:?} (expected engine, sluice or openai)"))),
        };
        let endpoint = if kind == BackendKind::Engine {
            for (set, f) in [
                (b.base_url.is_some(), "base_url"),
                (b.api_key_env.is_some(), "api_key_env"),
                (b.api_key_file.is_some(), "api_key_file"),
            ] {
                if set {
                    return Err(self.err(at(f), "only `sluice` and `openai` backends have this field"));
                }
            }
            self.engine(&name, &b)?
        } else {
            for (set, f) in [
                (b.model_path.is_some(), "model_path"),
                (b.threads.is_some(), "threads"),
                (b.max_waiting.is_some(), "max_waiting"),
                (b.max_num_seqs.is_some(), "max_num_seqs"),
                (b.max_num_batched_tokens.is_some(), "max_num_batched_tokens"),
                (b.max_prefill_tokens_with_decodes.is_some(), "max_prefill_tokens_with_decodes"),
                (b.kv_cache_memory.is_some(), "kv_cache_memory"),
                (b.kv_cache_dtype.is_some(), "kv_cache_dtype"),
                (b.numerics.is_some(), "numerics"),
                (b.block_size.is_some(), "block_size"),
                (b.prefix_cache.is_some(), "prefix_cache"),
            ] {
                if set {
                    return Err(self.err(at(f), "only `engine` backends have this field"));
                }
            }
            self.http(&name, &b)?
        };
        let model = b.model.clone().unwrap_or_else(|| name.clone());
        if model.is_empty() {
            return Err(self.err(at("model"), "must not be empty"));
        }
        if b.context_window == Some(0) {
            return Err(self.err(at("context_window"), "must be greater than 0"));
        }
        let max_concurrent = match b.max_concurrent {
            Some(0) => return Err(self.err(at("max_concurrent"), "must be greater than 0")),
            Some(n) => n,
            None => 1024,
        };
        let cost = match (&b.price, b.hourly_cost) {
            (Some(_), Some(_)) => return Err(self.err(at("hourly_cost"), "give `price` or `hourly_cost`, not both")),
            (Some(p), None) => {
                let cached = p.cached_input.unwrap_or(p.input);
                for (v, f) in [(p.input, "price.input"), (cached, "price.cached_input"), (p.output, "price.output")] {
                    if !v.is_finite() || v < 0.0 {
                        return Err(self.err(at(f), format!("must be a non-negative number of dollars per 1M tokens, got {v}")));
                    }
                }
                Cost::PerToken(Price { input: p.input, cached_input: cached, output: p.output })
            }
            (None, Some(h)) if h.is_finite() && h >= 0.0 => Cost::Hourly(h),
            (None, Some(h)) => return Err(self.err(at("hourly_cost"), format!("must be a non-negative number, got {h}"))),
            (None, None) => Cost::Unknown,
        };
        let d = Timeouts::default();
        let t = &b.timeouts;
        let timeouts = Timeouts {
            connect: self.millis(at("timeouts.connect_ms"), t.connect_ms, d.connect)?,
            first_token: self.millis(at("timeouts.first_token_ms"), t.first_token_ms, d.first_token)?,
            idle: self.millis(at("timeouts.idle_ms"), t.idle_ms, d.idle)?,
            total: self.millis(at("timeouts.total_ms"), t.total_ms, d.total)?,
        };
        // Unset per-phase limits never exceed a shorter total.
        let timeouts = Timeouts {
            first_token: if t.first_token_ms.is_none() { timeouts.first_token.min(timeouts.total) } else { timeouts.first_token },
            idle: if t.idle_ms.is_none() { timeouts.idle.min(timeouts.total) } else { timeouts.idle },
            ..timeouts
        };
        if timeouts.first_token > timeouts.total {
            return Err(self.err(at("timeouts.first_token_ms"), "must not exceed timeouts.total_ms"));
        }
        let db = BreakerConfig::default();
        let breaker = BreakerConfig {
            failures: match b.breaker.failures {
                Some(0) => return Err(self.err(at("breaker.failures"), "must be at least 1")),
                Some(n) => n,
                None => db.failures,
            },
            cooldown: self.millis(at("breaker.cooldown_ms"), b.breaker.cooldown_ms, db.cooldown)?,
        };
        let dh = HealthConfig::default();
        let health = HealthConfig {
            interval: self.millis(at("health.interval_ms"), b.health.interval_ms, dh.interval)?,
            timeout: self.millis(at("health.timeout_ms"), b.health.timeout_ms, dh.timeout)?,
        };
        Ok(BackendConfig {
            name,
            kind,
            endpoint,
            model,
            context_window: b.context_window,
            max_concurrent,
            cost,
            timeouts,
            breaker,
            health,
        })
    }

    fn engine(&self, name: &str, b: &RawBackend) -> Result<Endpoint, ConfigError> {
        let at = |f: &str| format!("backends.{name}.{f}");
        let model_path = b.model_path.clone().ok_or_else(|| self.err(at("model_path"), "an `engine` backend needs the model file"))?;
        let d = EngineConfig::default();
        let positive = |v: Option<usize>, f: &str, default: usize| match v {
            Some(0) => Err(self.err(at(f), "must be greater than 0")),
            Some(n) => Ok(n),
            None => Ok(default),
        };
        let kv_cache_bytes = match &b.kv_cache_memory {
            Some(s) => parse_bytes(s).map_err(|e| self.err(at("kv_cache_memory"), e))?,
            None => d.kv_cache_bytes,
        };
        let kv_cache_dtype = match &b.kv_cache_dtype {
            Some(s) => KvDtype::parse(s).map_err(|e| self.err(at("kv_cache_dtype"), e))?,
            None => d.kv_cache_dtype,
        };
        let numerics = match &b.numerics {
            Some(s) => Numerics::parse(s).map_err(|e| self.err(at("numerics"), e))?,
            None => d.numerics,
        };
        let engine = EngineConfig {
            max_waiting: positive(b.max_waiting, "max_waiting", d.max_waiting)?,
            max_num_batched_tokens: positive(b.max_num_batched_tokens, "max_num_batched_tokens", d.max_num_batched_tokens)?,
            max_prefill_tokens_with_decodes: positive(
                b.max_prefill_tokens_with_decodes,
                "max_prefill_tokens_with_decodes",
                d.max_prefill_tokens_with_decodes,
            )?,
            max_num_seqs: positive(b.max_num_seqs, "max_num_seqs", d.max_num_seqs)?,
            kv_cache_bytes,
            kv_cache_dtype,
            numerics,
            block_size: positive(b.block_size, "block_size", d.block_size)?,
            prefix_caching: b.prefix_cache.unwrap_or(d.prefix_caching),
        };
        if b.threads == Some(0) {
            return Err(self.err(at("threads"), "must be greater than 0"));
        }
        Ok(Endpoint::Engine { model_path, threads: b.threads, engine })
    }

    fn http(&self, name: &str, b: &RawBackend) -> Result<Endpoint, ConfigError> {
        let at = |f: &str| format!("backends.{name}.{f}");
        let url = b.base_url.as_deref().ok_or_else(|| self.err(at("base_url"), "required, e.g. \"http://127.0.0.1:8081/v1\""))?;
        let parsed = reqwest::Url::parse(url).map_err(|e| self.err(at("base_url"), format!("not a URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(self.err(at("base_url"), "must be an http:// or https:// URL with a host"));
        }
        let api_key = self.secret_from(&format!("backends.{name}"), b.api_key_env.as_deref(), b.api_key_file.as_deref(), "api_key")?;
        Ok(Endpoint::Http { base_url: url.trim_end_matches('/').to_string(), api_key })
    }

    /// A secret from `{what}_env` (an environment variable) or `{what}_file`, under `section`.
    fn secret_from(
        &self,
        section: &str,
        env: Option<&str>,
        file: Option<&Path>,
        what: &str,
    ) -> Result<Option<String>, ConfigError> {
        let at = |f: &str| format!("{section}.{what}_{f}");
        match (env, file) {
            (Some(_), Some(_)) => Err(self.err(at("file"), format!("give `{what}_env` or `{what}_file`, not both"))),
            (Some(var), None) => Ok(Some(
                (self.secret)(var)
                    .filter(|v| !v.is_empty())
                    .ok_or_else(|| self.err(at("env"), format!("environment variable {var} is not set")))?,
            )),
            (None, Some(path)) => {
                let key = std::fs::read_to_string(path).map_err(|e| self.err(at("file"), format!("cannot read {}: {e}", path.display())))?;
                let key = key.trim().to_string();
                if key.is_empty() {
                    return Err(self.err(at("file"), format!("{} is empty", path.display())));
                }
                Ok(Some(key))
            }
            (None, None) => Ok(None),
        }
    }

    fn route(&self, name: String, r: RawRoute, backends: &[BackendConfig]) -> Result<RouteConfig, ConfigError> {
        let at = |f: &str| format!("models.{name}.{f}");
        self.name(&format!("models.{name}"), &name)?;
        if r.targets.is_empty() {
            return Err(self.err(at("targets"), "at least one backend is required"));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, t) in r.targets.iter().chain(&r.fallback).enumerate() {
            let field = if i < r.targets.len() { format!("targets[{i}]") } else { format!("fallback[{}]", i - r.targets.len()) };
            if !backends.iter().any(|b| &b.name == t) {
                let known: Vec<&str> = backends.iter().map(|b| b.name.as_str()).collect();
                return Err(self.err(at(&field), format!("no backend named {t:?} (backends: {})", known.join(", "))));
            }
            if !seen.insert(t) {
                return Err(self.err(at(&field), format!("backend {t:?} is listed twice")));
            }
        }
        let policy = match r.policy.as_deref() {
            None => PolicyKind::RoundRobin,
            Some(p) => PolicyKind::parse(p).ok_or_else(|| {
                self.err(at("policy"), format!("unknown policy {p:?} (expected one of: {})", PolicyKind::NAMES.join(", ")))
            })?,
        };
        let weights = match (&r.weights, policy) {
            (Some(w), PolicyKind::Weighted) => {
                if w.len() != r.targets.len() {
                    return Err(self.err(at("weights"), format!("{} weights for {} targets", w.len(), r.targets.len())));
                }
                if w.contains(&0) {
                    return Err(self.err(at("weights"), "weights must be at least 1"));
                }
                w.clone()
            }
            (Some(_), _) => return Err(self.err(at("weights"), "only the `weighted` policy takes weights")),
            (None, PolicyKind::Weighted) => return Err(self.err(at("weights"), "the `weighted` policy needs one weight per target")),
            (None, _) => vec![1; r.targets.len()],
        };
        if policy == PolicyKind::PrefixAffinity {
            for t in &r.targets {
                if backends.iter().any(|b| &b.name == t && b.kind == BackendKind::OpenAi) {
                    return Err(self.err(
                        at("policy"),
                        format!("prefix_affinity routes among Sluice engines; {t:?} is an `openai` backend (put it in `fallback`)"),
                    ));
                }
            }
        }
        let d = RetryConfig::default();
        let retry = RetryConfig {
            max_attempts: match r.retry.max_attempts {
                Some(0) => return Err(self.err(at("retry.max_attempts"), "must be at least 1")),
                Some(n) => n,
                None => d.max_attempts.max((r.targets.len() + r.fallback.len()) as u32),
            },
            attempts_per_target: match r.retry.attempts_per_target {
                Some(0) => return Err(self.err(at("retry.attempts_per_target"), "must be at least 1")),
                Some(n) => n,
                None => d.attempts_per_target,
            },
            backoff_base: self.millis(at("retry.backoff_base_ms"), r.retry.backoff_base_ms, d.backoff_base)?,
            backoff_max: self.millis(at("retry.backoff_max_ms"), r.retry.backoff_max_ms, d.backoff_max)?,
        };
        let prefix_bytes = match r.prefix_bytes {
            Some(0) => return Err(self.err(at("prefix_bytes"), "must be greater than 0")),
            Some(n) => n,
            None => 256,
        };
        Ok(RouteConfig {
            name,
            targets: r.targets,
            weights,
            policy,
            fallback: r.fallback,
            retry,
            prefix_bytes,
            redact_outbound: r.redact_outbound,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn env(var: &str) -> Option<String> {
        (var == "HOSTED_KEY").then(|| "sk-test".to_string())
    }

    fn check(text: &str) -> Result<GatewayConfig, ConfigError> {
        parse("t.toml", text, &env)
    }

    const GOOD: &str = r#"
        [server]
        port = 9000
        [backends.local]
        kind = "engine"
        model_path = "models/m.gguf"
        kv_cache_memory = "256MiB"
        hourly_cost = 0.5
        [backends.hosted]
        kind = "openai"
        base_url = "https://api.example.com/v1/"
        api_key_env = "HOSTED_KEY"
        model = "gpt-x"
        context_window = 128000
        price = { input = 0.15, output = 0.6 }
        timeouts = { connect_ms = 500, total_ms = 30000 }
        [models.chat]
        targets = ["local"]
        fallback = ["hosted"]
    "#;

    #[test]
    fn a_valid_file_becomes_runtime_values() {
        let c = check(GOOD).unwrap();
        assert_eq!(c.server.port, Some(9000));
        let hosted = c.backends.iter().find(|b| b.name == "hosted").unwrap();
        assert_eq!(hosted.model, "gpt-x");
        assert_eq!(hosted.cost, Cost::PerToken(Price { input: 0.15, cached_input: 0.15, output: 0.6 }));
        assert_eq!(hosted.timeouts.connect, Duration::from_millis(500));
        match &hosted.endpoint {
            Endpoint::Http { base_url, api_key } => {
                assert_eq!(base_url, "https://api.example.com/v1");
                assert_eq!(api_key.as_deref(), Some("sk-test"));
            }
            e => panic!("{e:?}"),
        }
        let local = c.backends.iter().find(|b| b.name == "local").unwrap();
        match &local.endpoint {
            Endpoint::Engine { engine, .. } => {
                assert_eq!(engine.kv_cache_bytes, 256 << 20);
                assert_eq!(engine.numerics, Numerics::Reference, "the default");
            }
            e => panic!("{e:?}"),
        }
        let fast = check(&GOOD.replace("hourly_cost = 0.5", "hourly_cost = 0.5\nnumerics = \"fast\"")).unwrap();
        match &fast.backends.iter().find(|b| b.name == "local").unwrap().endpoint {
            Endpoint::Engine { engine, .. } => assert_eq!(engine.numerics, Numerics::Fast),
            e => panic!("{e:?}"),
        }
        assert_eq!(c.routes[0].policy, PolicyKind::RoundRobin);
        assert_eq!(c.routes[0].fallback, vec!["hosted".to_string()]);
    }

    fn error_of(text: &str) -> String {
        check(text).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_file_the_field_and_why() {
        let e = error_of(&GOOD.replace("model = \"gpt-x\"", "model = \"gpt-x\"\n modle = 1"));
        assert!(e.starts_with("t.toml: backends.hosted.modle: unknown field `modle`, expected one of"), "{e}");
        let e = error_of(&GOOD.replace("HOSTED_KEY", "MISSING_KEY"));
        assert_eq!(e, "t.toml: backends.hosted.api_key_env: environment variable MISSING_KEY is not set");
        let e = error_of(&GOOD.replace("targets = [\"local\"]", "targets = [\"locl\"]"));
        assert!(e.starts_with("t.toml: models.chat.targets[0]: no backend named \"locl\""), "{e}");
        let e = error_of(&GOOD.replace("total_ms = 30000", "total_ms = 0"));
        assert_eq!(e, "t.toml: backends.hosted.timeouts.total_ms: must be greater than 0");
        let e = error_of(&GOOD.replace("kv_cache_memory = \"256MiB\"", "kv_cache_memory = \"256MiB\"\nkv_cache_dtype = \"int4\""));
        assert!(e.contains("backends.local.kv_cache_dtype: unknown KV cache type \"int4\" (expected f32, f16 or q8_0)"), "{e}");
        let e = error_of(&GOOD.replace("kv_cache_memory = \"256MiB\"", "kv_cache_memory = \"256MiB\"\nnumerics = \"exact\""));
        assert!(e.contains("backends.local.numerics: unknown numerics \"exact\" (expected fast or reference)"), "{e}");
        let e = error_of(&GOOD.replace("kind = \"openai\"", "kind = \"vllm\""));
        assert!(e.contains("backends.hosted.kind: unknown kind \"vllm\""), "{e}");
        let e = error_of(&GOOD.replace("[models.chat]", "[models.chat]\npolicy = \"fastest\""));
        assert!(e.contains("models.chat.policy: unknown policy \"fastest\""), "{e}");
        let e = error_of(&GOOD.replace("port = 9000", "port = 99999"));
        assert!(e.starts_with("t.toml: server.port:"), "{e}");
        let e = error_of("[backends.a\nkind=1");
        assert!(e.starts_with("t.toml: (syntax):"), "{e}");
        let e = error_of(&GOOD.replace("kv_cache_memory = \"256MiB\"", "kv_cache_memory = \"256 parsecs\""));
        assert!(e.contains("backends.local.kv_cache_memory: unknown size unit"), "{e}");
        let e = error_of(&GOOD.replace("model_path = \"models/m.gguf\"", "base_url = \"http://x/v1\""));
        assert!(e.contains("backends.local.base_url: only `sluice` and `openai` backends"), "{e}");
    }

    #[test]
    fn weights_and_affinity_are_checked_against_the_route() {
        let e = error_of(&GOOD.replace("[models.chat]", "[models.chat]\npolicy = \"weighted\""));
        assert!(e.contains("models.chat.weights: the `weighted` policy needs one weight per target"), "{e}");
        let e = error_of(&GOOD.replace("targets = [\"local\"]", "targets = [\"local\", \"hosted\"]\npolicy = \"prefix_affinity\"").replace("fallback = [\"hosted\"]", ""));
        assert!(e.contains("prefix_affinity routes among Sluice engines"), "{e}");
        let e = error_of(&GOOD.replace("fallback = [\"hosted\"]", "fallback = [\"local\"]"));
        assert!(e.contains("models.chat.fallback[0]: backend \"local\" is listed twice"), "{e}");
    }
}

#[cfg(test)]
mod example_file {
    #![allow(clippy::unwrap_used)]

    #[test]
    fn the_example_in_the_repository_is_valid() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sluice.example.toml");
        let cfg = super::load(&path, &|_| None).unwrap();
        assert_eq!(cfg.backends.len(), 3);
        assert_eq!(cfg.routes[0].name, "smollm2");
    }
}
