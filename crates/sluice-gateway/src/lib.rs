//! The gateway: one OpenAI-compatible API in front of a mixed fleet. A request names a model;
//! its route's policy orders the targets that can take it (window fits, healthy, circuit
//! closed, below capacity), then the fallbacks follow; retryable failures (connection refused
//! or reset, timeouts, 429, 5xx, a stream that breaks before its first token) are retried with
//! jittered exponential backoff, then the next target is tried. Every request ends in one
//! structured log line: request id, backend, attempts, outcome, tokens, latency.

pub mod backend;
pub mod breaker;
pub mod config;
mod error;
mod forward;
pub mod mock;
pub mod policy;
mod request;
pub mod sse;
pub mod target;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::Value;

pub use backend::{Api, Backend, HttpBackend, InProcessBackend};
pub use config::{BackendConfig, BackendKind, ConfigError, Endpoint, GatewayConfig, RouteConfig};
pub use error::GatewayError;
pub use forward::{Reply, Settled, UsageCount};
pub use target::Target;

use crate::forward::{AttemptInput, attempt, backoff};
use crate::policy::{Policy, RouteRequest};

#[derive(Debug)]
struct Route {
    cfg: RouteConfig,
    targets: Vec<Arc<Target>>,
    fallback: Vec<Arc<Target>>,
    policy: Box<dyn Policy>,
}

/// The routing core shared by every request.
#[derive(Debug)]
pub struct Gateway {
    routes: HashMap<String, Route>,
    names: Vec<String>,
    targets: Vec<Arc<Target>>,
    health_tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// The answer to one request, with the facts the server puts in headers.
#[derive(Debug)]
pub struct Routed {
    /// `x-request-id`.
    pub request_id: String,
    /// `x-sluice-backend` (empty when no backend was tried).
    pub backend: String,
    /// `x-sluice-attempts`.
    pub attempts: u32,
    /// The reply, or why there is none.
    pub result: Result<Reply, GatewayError>,
}

/// A request being routed; if its future is dropped (the client went away) before it ends,
/// its log line still gets written.
struct Progress {
    request_id: String,
    model: String,
    backend: String,
    attempts: u32,
    arrived: Instant,
    prompt_estimate: u64,
    finished: bool,
}

impl Drop for Progress {
    fn drop(&mut self) {
        if !self.finished {
            tracing::info!(
                target: "sluice::request",
                request_id = %self.request_id,
                model = %self.model,
                backend = %self.backend,
                attempts = self.attempts,
                outcome = "client_gone",
                status = 499,
                prompt_tokens = self.prompt_estimate,
                latency_ms = self.arrived.elapsed().as_secs_f64() * 1e3,
                "request"
            );
        }
    }
}

/// A process-unique request id.
pub fn request_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("req-{:012x}{:06x}", nanos & 0xffff_ffff_ffff, n & 0xff_ffff)
}

impl Gateway {
    /// Builds the gateway; `in_process` holds a backend for every `engine` entry (the caller
    /// loads models), HTTP backends are made here.
    pub fn new(cfg: &GatewayConfig, mut in_process: HashMap<String, Arc<dyn Backend>>) -> Result<Self, String> {
        let mut by_name: HashMap<String, Arc<Target>> = HashMap::new();
        let mut targets = Vec::new();
        for b in &cfg.backends {
            let backend: Arc<dyn Backend> = match &b.endpoint {
                Endpoint::Engine { .. } => in_process
                    .remove(&b.name)
                    .ok_or_else(|| format!("backend `{}` is an engine but no engine was started for it", b.name))?,
                Endpoint::Http { base_url, api_key } => Arc::new(
                    HttpBackend::new(b.kind, base_url, api_key.clone(), b.timeouts.connect)
                        .map_err(|e| format!("backend `{}`: {e}", b.name))?,
                ),
            };
            let t = Arc::new(Target::new(b.clone(), backend));
            by_name.insert(b.name.clone(), t.clone());
            targets.push(t);
        }
        let pick = |names: &[String]| -> Result<Vec<Arc<Target>>, String> {
            names.iter().map(|n| by_name.get(n).cloned().ok_or_else(|| format!("no backend named `{n}`"))).collect()
        };
        let mut routes = HashMap::new();
        for r in &cfg.routes {
            let route = Route {
                cfg: r.clone(),
                targets: pick(&r.targets)?,
                fallback: pick(&r.fallback)?,
                policy: policy::build(r.policy, &r.weights),
            };
            routes.insert(r.name.clone(), route);
        }
        let mut names: Vec<String> = routes.keys().cloned().collect();
        names.sort();
        Ok(Self { routes, names, targets, health_tasks: Vec::new() })
    }

    /// Starts the active health checks (one task per backend, stopped when the gateway drops).
    pub fn start_health_checks(&mut self) {
        for t in &self.targets {
            let t = t.clone();
            self.health_tasks.push(tokio::spawn(async move {
                let h = t.cfg.health;
                let mut tick = tokio::time::interval(h.interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let ok = match tokio::time::timeout(h.timeout, t.backend.health()).await {
                        Ok(Ok(())) => true,
                        Ok(Err(e)) => {
                            tracing::debug!(backend = %t.name(), error = %e, "health check failed");
                            false
                        }
                        Err(_) => false,
                    };
                    t.set_healthy(ok);
                }
            }));
        }
    }

    /// Every backend.
    pub fn targets(&self) -> &[Arc<Target>] {
        &self.targets
    }

    /// Client-facing model names with the largest known window of each.
    pub fn models(&self) -> Vec<(String, Option<u32>)> {
        self.names
            .iter()
            .filter_map(|n| self.routes.get(n))
            .map(|r| {
                let window = r.targets.iter().chain(&r.fallback).filter_map(|t| t.context_window()).max();
                (r.cfg.name.clone(), window)
            })
            .collect()
    }

    /// Routes one request body for `api` and returns the reply of the backend that answered;
    /// `cache_namespace` is the caller's tenant namespace (in-process engines salt their prefix
    /// cache with it).
    pub async fn handle(&self, api: Api, body: &[u8], cache_namespace: Option<&str>) -> Routed {
        let mut p = Progress {
            request_id: request_id(),
            model: String::new(),
            backend: String::new(),
            attempts: 0,
            arrived: Instant::now(),
            prompt_estimate: 0,
            finished: false,
        };
        let result = self.route(api, body, cache_namespace, &mut p).await;
        p.finished = true;
        if let Err(e) = &result {
            tracing::info!(
                target: "sluice::request",
                request_id = %p.request_id,
                model = %p.model,
                backend = %p.backend,
                attempts = p.attempts,
                outcome = e.kind(),
                status = e.status(),
                latency_ms = p.arrived.elapsed().as_secs_f64() * 1e3,
                error = %e,
                "request"
            );
        }
        Routed { request_id: std::mem::take(&mut p.request_id), backend: std::mem::take(&mut p.backend), attempts: p.attempts, result }
    }

    async fn route(&self, api: Api, body: &[u8], cache_namespace: Option<&str>, p: &mut Progress) -> Result<Reply, GatewayError> {
        let arrived = p.arrived;
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| GatewayError::bad("", format!("The request body is not valid JSON: {e}")))?;
        let Value::Object(mut obj) = value else {
            return Err(GatewayError::bad("", "The request body must be a JSON object"));
        };
        let insp = request::inspect(api, &obj, |m| self.routes.get(m).map_or(256, |r| r.cfg.prefix_bytes))?;
        let route = self
            .routes
            .get(&insp.model)
            .ok_or_else(|| GatewayError::UnknownModel { name: insp.model.clone(), available: self.names.clone() })?;
        p.model = insp.model.clone();
        p.prompt_estimate = insp.prompt_tokens;
        if insp.stream {
            // Always ask for the usage chunk, so streamed usage is the backend's own count.
            obj.insert("stream_options".into(), serde_json::json!({ "include_usage": true }));
        }
        let needed = insp.prompt_tokens + insp.max_tokens.unwrap_or(1);
        let fits = |t: &&Arc<Target>| t.fits(needed);
        let primary: Vec<usize> = (0..route.targets.len()).filter(|&i| fits(&&route.targets[i])).collect();
        let fallback: Vec<&Arc<Target>> = route.fallback.iter().filter(fits).collect();
        if primary.is_empty() && fallback.is_empty() {
            let largest = route.targets.iter().chain(&route.fallback).filter_map(|t| t.context_window()).max().unwrap_or(0);
            return Err(GatewayError::ContextLength { model: route.cfg.name.clone(), needed, largest });
        }
        let now = Instant::now();
        let rreq = RouteRequest { prompt_tokens: insp.prompt_tokens, max_tokens: insp.max_tokens.unwrap_or(0), prefix_hash: insp.prefix_hash };
        let mut skipped = Vec::new();
        let mut order = Vec::new();
        // Second pass ("panic mode", as Envoy calls it): when health checks rule out every
        // target, they are more likely wrong than the whole fleet is down — try them anyway.
        for respect_health in [true, false] {
            skipped.clear();
            let mut available = |t: &Arc<Target>| match t.unavailable(now, respect_health) {
                Some(why) => {
                    skipped.push(format!("{}: {why}", t.name()));
                    false
                }
                None => true,
            };
            let eligible: Vec<usize> = primary.iter().copied().filter(|&i| available(&route.targets[i])).collect();
            order = route.policy.rank(&rreq, &route.targets, &eligible).into_iter().map(|i| route.targets[i].clone()).collect();
            order.extend(fallback.iter().copied().filter(|t| available(t)).cloned());
            if !order.is_empty() {
                break;
            }
        }
        if order.is_empty() {
            return Err(GatewayError::Unavailable {
                model: route.cfg.name.clone(),
                reasons: skipped.join("; "),
                retry_after: self.soonest_retry(route),
            });
        }
        let retry = route.cfg.retry;
        let mut failures = Vec::new();
        let mut timed_out = false;
        let mut only_too_long = true;
        let mut only_overloaded = true;
        let mut longest_wait: Option<Duration> = None;
        'targets: for target in order {
            for k in 0..retry.attempts_per_target {
                if p.attempts >= retry.max_attempts {
                    break 'targets;
                }
                if k > 0 {
                    tokio::time::sleep(backoff(k, retry.backoff_base, retry.backoff_max)).await;
                }
                let Some(guard) = target.begin(Instant::now()) else {
                    failures.push(format!("{}: circuit open", target.name()));
                    continue 'targets;
                };
                p.attempts += 1;
                p.backend = target.name().to_string();
                obj.insert("model".into(), Value::String(target.cfg.model.clone()));
                let body = Bytes::from(serde_json::to_vec(&obj).unwrap_or_default());
                let input = AttemptInput {
                    api,
                    body,
                    stream: insp.stream,
                    client_wants_usage: insp.include_usage,
                    prompt_estimate: insp.prompt_tokens,
                    arrived,
                    cache_namespace: cache_namespace.map(str::to_string),
                    settled: Settled {
                        request_id: p.request_id.clone(),
                        model: route.cfg.name.clone(),
                        backend: target.name().to_string(),
                        attempts: p.attempts,
                        outcome: "ok",
                        status: 200,
                        usage: UsageCount::default(),
                        latency: Duration::ZERO,
                        ttft: None,
                    },
                };
                let settled_template = input.settled.clone();
                match attempt(guard, input).await {
                    Ok((reply, usage)) => {
                        target.stats.served.fetch_add(1, Ordering::Relaxed);
                        if let Reply::Complete { status, .. } = &reply {
                            let mut s = settled_template;
                            s.status = *status;
                            s.outcome = if *status < 400 { "ok" } else { "upstream_client_error" };
                            s.usage = usage.unwrap_or(UsageCount { prompt_tokens: insp.prompt_tokens, ..Default::default() });
                            s.latency = arrived.elapsed();
                            s.record(Some(&target));
                        }
                        return Ok(reply);
                    }
                    Err(f) => {
                        tracing::debug!(request_id = %p.request_id, backend = %target.name(), error = %f.detail, "attempt failed");
                        failures.push(format!("{}: {}", target.name(), f.detail));
                        timed_out = f.timed_out;
                        only_too_long &= f.too_long;
                        only_overloaded &= f.overloaded;
                        longest_wait = longest_wait.max(f.retry_after);
                        if let Some(ra) = f.retry_after {
                            target.hold_off(Instant::now() + ra);
                            continue 'targets;
                        }
                        if !f.retryable {
                            continue 'targets;
                        }
                    }
                }
            }
        }
        if only_overloaded && p.attempts > 0 {
            // Every backend said "busy": pass that on as such, with when to come back.
            return Err(GatewayError::Unavailable {
                model: route.cfg.name.clone(),
                reasons: failures.join("; "),
                retry_after: longest_wait.map_or(1, |d| d.as_secs().clamp(1, 3600) as u32),
            });
        }
        if only_too_long && p.attempts > 0 {
            // Our estimate fitted, the backends' tokenizers disagreed.
            let largest = route.targets.iter().chain(&route.fallback).filter_map(|t| t.context_window()).max().unwrap_or(0);
            return Err(GatewayError::ContextLength { model: route.cfg.name.clone(), needed, largest });
        }
        Err(GatewayError::Exhausted { model: route.cfg.name.clone(), attempts: p.attempts, failures: failures.join("; "), timed_out })
    }

    fn soonest_retry(&self, route: &Route) -> u32 {
        let min_cooldown = route.targets.iter().chain(&route.fallback).map(|t| t.cfg.breaker.cooldown).min().unwrap_or_default();
        min_cooldown.as_secs().clamp(1, 60) as u32
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        for t in &self.health_tasks {
            t.abort();
        }
    }
}
