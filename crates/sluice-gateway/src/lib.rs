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
mod local;
pub mod mock;
pub mod policy;
mod request;
pub mod sse;
pub mod target;
pub mod ticket;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::Value;

pub use backend::{Api, Backend, HttpBackend, InProcessBackend};
pub use config::{BackendConfig, BackendKind, ConfigError, Endpoint, GatewayConfig, RouteConfig};
pub use error::GatewayError;
pub use forward::Reply;
pub use local::LocalRequest;
pub use target::Target;
pub use ticket::{Admission, AttemptRecord, Caller, Governance, Receipt, Refusal, RequestContext, Settled, UsageCount};

use crate::forward::{AttemptInput, Attempted, attempt, backoff, spawn_forward};
use crate::ticket::{Ticket, worst_case_cost};
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
    governance: Option<Arc<dyn Governance>>,
    redactor: Option<RedactHook>,
}

/// Replaces PII in a text (for routes with `redact_outbound`).
pub type Redact = Arc<dyn Fn(&str) -> String + Send + Sync>;

struct RedactHook(Redact);

impl std::fmt::Debug for RedactHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedactHook")
    }
}

/// What routing produced.
enum Handled {
    Complete { status: u16, body: Bytes, usage: UsageCount },
    Stream { rx: tokio::sync::mpsc::Receiver<String>, backend: String, attempts: u32 },
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
        Ok(Self { routes, names, targets, health_tasks: Vec::new(), governance: None, redactor: None })
    }

    /// Admits every authenticated request through `g` (limits, budgets) and settles it there
    /// (the ledger).
    pub fn set_governance(&mut self, g: Arc<dyn Governance>) {
        self.governance = Some(g);
    }

    /// The redaction routes with `redact_outbound` apply to prompts bound for `openai` backends.
    pub fn set_redactor(&mut self, r: Redact) {
        self.redactor = Some(RedactHook(r));
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

    /// Routes one request body for `api` and returns the reply of the backend that answered.
    /// Every request settles exactly once — log line, counters, ledger — when it ends, fails,
    /// or its client goes away (this future or the stream dropped).
    pub async fn handle(&self, api: Api, body: &[u8], ctx: &RequestContext) -> Routed {
        let id = if ctx.request_id.is_empty() { request_id() } else { ctx.request_id.clone() };
        let mut ticket = Some(Ticket::new(ctx, id.clone(), self.governance.clone()));
        let result = self.route(api, body, ctx, &mut ticket).await;
        let (backend, attempts) = match &ticket {
            Some(t) => (t.settled.backend.clone(), t.settled.attempts.len() as u32),
            None => (String::new(), 0),
        };
        let (backend, attempts, result) = match result {
            Ok(Handled::Complete { status, body, usage }) => {
                if let Some(mut t) = ticket {
                    let outcome = if status < 400 { "ok" } else { "upstream_client_error" };
                    t.finish(outcome, status, usage, None);
                }
                (backend, attempts, Ok(Reply::Complete { status, body }))
            }
            // The stream's task owns the ticket now; it knows the backend that answered.
            Ok(Handled::Stream { rx, backend, attempts }) => (backend, attempts, Ok(Reply::Stream(rx))),
            Err(e) => {
                if let Some(mut t) = ticket {
                    let usage = t.settled.usage;
                    // The error's text may quote the request (an unknown model name, a backend's
                    // message): the log gets the attempts' outcomes and statuses instead.
                    let summary = t.attempt_summary();
                    t.finish(e.kind(), e.status(), usage, (!summary.is_empty()).then_some(summary.as_str()));
                }
                (backend, attempts, Err(e))
            }
        };
        Routed { request_id: id, backend, attempts, result }
    }

    async fn route(&self, api: Api, body: &[u8], ctx: &RequestContext, slot: &mut Option<Ticket>) -> Result<Handled, GatewayError> {
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
        let Some(ticket) = slot.as_mut() else { return Err(GatewayError::bad("", "request already settled")) };
        ticket.settled.route = insp.model.clone();
        ticket.settled.usage.prompt_tokens = insp.prompt_tokens;
        if ticket.captures() {
            ticket.settled.prompt_text = Some(insp.prompt_text.clone());
        }
        if ticket.settled.feature.is_empty() {
            ticket.settled.feature = insp.feature.clone().unwrap_or_else(|| "unattributed".into());
        }
        if insp.stream {
            // Always ask for the usage chunk, so streamed usage is the backend's own count.
            obj.insert("stream_options".into(), serde_json::json!({ "include_usage": true }));
        }
        let needed = insp.prompt_tokens + insp.max_tokens.unwrap_or(1);
        let fits = |t: &&Arc<Target>| t.fits(needed);
        let primary: Vec<usize> = (0..route.targets.len()).filter(|&i| fits(&&route.targets[i])).collect();
        let fallback: Vec<&Arc<Target>> = route.fallback.iter().filter(fits).collect();
        let largest = route.targets.iter().chain(&route.fallback).filter_map(|t| t.context_window()).max();
        if primary.is_empty() && fallback.is_empty() {
            return Err(GatewayError::ContextLength { model: route.cfg.name.clone(), needed, largest: largest.unwrap_or(0) });
        }
        let mut receipt = None;
        if let (Some(g), Some(caller)) = (&self.governance, &ticket.settled.caller) {
            // Worst case over every backend the request may reach; without max_tokens, the room
            // its window leaves.
            let max_tokens = insp.max_tokens.unwrap_or_else(|| u64::from(largest.unwrap_or(8192)).saturating_sub(insp.prompt_tokens));
            let worst = primary
                .iter()
                .map(|&i| &route.targets[i])
                .chain(fallback.iter().copied())
                .map(|t| worst_case_cost(t, insp.prompt_tokens, max_tokens))
                .max()
                .unwrap_or(0);
            let admission = ticket::Admission {
                request_id: ticket.settled.request_id.clone(),
                caller: caller.clone(),
                feature: ticket.settled.feature.clone(),
                route: route.cfg.name.clone(),
                prompt_tokens: insp.prompt_tokens,
                max_tokens,
                worst_case_micros: worst,
            };
            receipt = Some(g.admit(admission).await.map_err(GatewayError::Refused)?);
            ticket.settled.admitted = true;
            ticket.settled.admitted_tokens = insp.prompt_tokens + max_tokens;
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
        // The body external backends get on a redacting route (made once, when first needed).
        let mut redacted: Option<serde_json::Map<String, Value>> = None;
        let retry = route.cfg.retry;
        let mut failures = Vec::new();
        let mut timed_out = false;
        let mut only_too_long = true;
        let mut only_overloaded = true;
        let mut longest_wait: Option<Duration> = None;
        'targets: for target in order {
            for k in 0..retry.attempts_per_target {
                if ticket.settled.attempts.len() as u32 >= retry.max_attempts {
                    break 'targets;
                }
                if k > 0 {
                    tokio::time::sleep(backoff(k, retry.backoff_base, retry.backoff_max)).await;
                }
                let Some(guard) = target.begin(Instant::now()) else {
                    failures.push(format!("{}: circuit open", target.name()));
                    continue 'targets;
                };
                ticket.settled.backend = target.name().to_string();
                ticket.settled.model = target.cfg.model.clone();
                ticket.target = Some(target.clone());
                let outbound = match (&self.redactor, route.cfg.redact_outbound && target.kind() == BackendKind::OpenAi) {
                    (Some(r), true) => redacted.get_or_insert_with(|| request::redact(api, &obj, r.0.as_ref())),
                    (None, true) => return Err(GatewayError::bad("", "this route redacts outbound prompts but no redactor is configured")),
                    _ => &mut obj,
                };
                outbound.insert("model".into(), Value::String(target.cfg.model.clone()));
                let input = AttemptInput {
                    api,
                    body: Bytes::from(serde_json::to_vec(&*outbound).unwrap_or_default()),
                    stream: insp.stream,
                    client_wants_usage: insp.include_usage,
                    prompt_estimate: insp.prompt_tokens,
                    request_id: ticket.settled.request_id.clone(),
                    cache_namespace: ctx.cache_namespace.clone(),
                };
                let started = Instant::now();
                let record = |status: Option<u16>, outcome: &'static str, error: Option<String>| AttemptRecord {
                    backend: target.name().to_string(),
                    status,
                    outcome,
                    error,
                    duration: started.elapsed(),
                };
                match attempt(guard, input).await {
                    Ok(Attempted::Complete { status, body, usage }) => {
                        if let Some(r) = receipt.take() {
                            r.wait().await.map_err(GatewayError::Refused)?;
                        }
                        target.stats.served.fetch_add(1, Ordering::Relaxed);
                        let outcome = if status < 400 { "ok" } else { "passed_through" };
                        ticket.settled.attempts.push(record(Some(status), outcome, None));
                        let usage = usage.unwrap_or(UsageCount { prompt_tokens: insp.prompt_tokens, ..Default::default() });
                        if ticket.captures() && status < 400 {
                            ticket.settled.response_text = request::response_text(&body);
                        }
                        return Ok(Handled::Complete { status, body, usage });
                    }
                    Ok(Attempted::Stream(committed)) => {
                        if let Some(r) = receipt.take() {
                            // Dropping `committed` on failure cancels the upstream stream.
                            r.wait().await.map_err(GatewayError::Refused)?;
                        }
                        target.stats.served.fetch_add(1, Ordering::Relaxed);
                        ticket.settled.attempts.push(record(Some(200), "ok", None));
                        ticket.settled.ttft = Some(ticket.arrived.elapsed());
                        let backend = ticket.settled.backend.clone();
                        let attempts = ticket.settled.attempts.len() as u32;
                        let Some(owned) = slot.take() else { return Err(GatewayError::bad("", "request already settled")) };
                        return Ok(Handled::Stream { rx: spawn_forward(committed, owned), backend, attempts });
                    }
                    Err(f) => {
                        // Only content-free facts: a backend's error text may quote the prompt.
                        tracing::debug!(
                            request_id = %ticket.settled.request_id,
                            backend = %target.name(),
                            timed_out = f.timed_out,
                            overloaded = f.overloaded,
                            too_long = f.too_long,
                            "attempt failed"
                        );
                        let outcome = if f.overloaded { "busy" } else if f.too_long { "too_long" } else { "failed" };
                        ticket.settled.attempts.push(record(None, outcome, Some(f.detail.clone())));
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
        let attempts = ticket.settled.attempts.len() as u32;
        // No tokens came back: nothing to charge.
        ticket.target = None;
        if only_overloaded && attempts > 0 {
            // Every backend said "busy": pass that on as such, with when to come back.
            return Err(GatewayError::Unavailable {
                model: route.cfg.name.clone(),
                reasons: failures.join("; "),
                retry_after: longest_wait.map_or(1, |d| d.as_secs().clamp(1, 3600) as u32),
            });
        }
        if only_too_long && attempts > 0 {
            // Our estimate fitted, the backends' tokenizers disagreed.
            return Err(GatewayError::ContextLength { model: route.cfg.name.clone(), needed, largest: largest.unwrap_or(0) });
        }
        Err(GatewayError::Exhausted { model: route.cfg.name.clone(), attempts, failures: failures.join("; "), timed_out })
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
