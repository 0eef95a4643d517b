//! A request's ticket: who sent it, what it was admitted for, which attempts it made, and —
//! exactly once, whether it succeeds, fails, or its client goes away — its settlement: the log
//! line, the backend's token counters, and the governance hook that writes the ledger.

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;

use crate::config::Cost;
use crate::target::Target;

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Tenant id.
    pub tenant_id: String,
    /// API key id.
    pub key_id: String,
    /// The tenant's logging policy label (`off`, `metadata`, `redacted`, `full`): anything but
    /// `off` keeps the prompt and response text in the settlement for the governance hook.
    pub logging: String,
}

/// What the server knows about a request before routing it.
#[derive(Debug, Clone, Default)]
pub struct RequestContext {
    /// The request id (`x-request-id`); made up when empty.
    pub request_id: String,
    /// The caller, when API keys are in use.
    pub caller: Option<Caller>,
    /// Feature attribution (`X-Sluice-Feature`); the body's `metadata.feature` when empty.
    pub feature: String,
    /// The caller's prefix-cache namespace.
    pub cache_namespace: Option<String>,
}

/// What admission decides on: the request's worst-case cost on its route.
#[derive(Debug, Clone)]
pub struct Admission {
    /// Request id.
    pub request_id: String,
    /// Caller.
    pub caller: Caller,
    /// Feature.
    pub feature: String,
    /// Route (client-facing model).
    pub route: String,
    /// Estimated prompt tokens.
    pub prompt_tokens: u64,
    /// Output tokens the request may produce.
    pub max_tokens: u64,
    /// Most it can cost on any of the route's backends, in micro-dollars.
    pub worst_case_micros: i64,
}

/// Why admission said no.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// HTTP status (429 for limits and budgets, 503 when the ledger is unavailable).
    pub status: u16,
    /// `budget_exceeded`, `rate_limit_exceeded`, …
    pub code: &'static str,
    /// Which limit, and how much is left.
    pub message: String,
    /// Seconds until it may pass.
    pub retry_after: u32,
}

/// One attempt at one backend.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRecord {
    /// Backend name.
    pub backend: String,
    /// HTTP status, when one came back.
    pub status: Option<u16>,
    /// `ok`, `failed`, `busy`, `too_long`, `passed_through`.
    pub outcome: &'static str,
    /// What went wrong.
    pub error: Option<String>,
    /// How long it took.
    pub duration: Duration,
}

/// The ledger's word that a request's row exists — or will, once a write in flight commits.
/// The gateway calls the backend meanwhile, and waits for the receipt before any byte of the
/// answer reaches the client: no client ever gets an answer the ledger does not hold.
pub struct Receipt(Option<BoxFuture<'static, Result<(), Refusal>>>);

impl Debug for Receipt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Receipt(pending)" } else { "Receipt(done)" })
    }
}

impl Receipt {
    /// The row is written.
    pub fn done() -> Self {
        Self(None)
    }

    /// The row is being written; `f` resolves when it is (or fails).
    pub fn pending(f: BoxFuture<'static, Result<(), Refusal>>) -> Self {
        Self(Some(f))
    }

    /// Waits for the write.
    pub async fn wait(self) -> Result<(), Refusal> {
        match self.0 {
            Some(f) => f.await,
            None => Ok(()),
        }
    }
}

/// Limits, budgets and the ledger, as the gateway sees them.
pub trait Governance: Send + Sync + Debug {
    /// Checks limits and reserves the worst case; an error refuses the request before any
    /// backend is called.
    fn admit(&self, a: Admission) -> BoxFuture<'_, Result<Receipt, Refusal>>;
    /// Settles an admitted request (called exactly once per admitted request).
    fn settle(&self, s: Settled);
}

/// Token counts of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct UsageCount {
    /// Prompt tokens (the backend's count, or our estimate when it gave none).
    pub prompt_tokens: u64,
    /// Prompt tokens served from the backend's cache.
    pub cached_tokens: u64,
    /// Generated tokens (the backend's count, or streamed chunks counted).
    pub completion_tokens: u64,
    /// The backend reported these numbers itself.
    pub reported: bool,
    /// Engine time attributable to the request, when a Sluice engine reports it.
    pub compute_seconds: Option<f64>,
}

/// The facts of a finished request.
#[derive(Debug, Clone)]
pub struct Settled {
    /// Request id.
    pub request_id: String,
    /// Caller, when authenticated.
    pub caller: Option<Caller>,
    /// Feature.
    pub feature: String,
    /// Route (client-facing model).
    pub route: String,
    /// The backend that answered (or failed last); empty when none was tried.
    pub backend: String,
    /// The model name sent to it.
    pub model: String,
    /// Every attempt.
    pub attempts: Vec<AttemptRecord>,
    /// `ok`, `stream_failed`, `client_gone`, `upstream_client_error`, or an error kind.
    pub outcome: &'static str,
    /// HTTP status the client got.
    pub status: u16,
    /// Token counts.
    pub usage: UsageCount,
    /// What it cost, in micro-dollars.
    pub cost_micros: i64,
    /// Arrival to first token (streams).
    pub ttft: Option<Duration>,
    /// Arrival to end.
    pub duration: Duration,
    /// Whether admission reserved money for it (and so the ledger holds its row).
    pub admitted: bool,
    /// Tokens admission counted (prompt estimate + allowed output), for per-minute limits.
    pub admitted_tokens: u64,
    /// The prompt text, when the caller's policy captures content.
    pub prompt_text: Option<String>,
    /// The response text (choices joined), when captured.
    pub response_text: Option<String>,
}

/// Micro-dollars of `tokens` at `usd_per_million`.
fn micros(tokens: u64, usd_per_million: f64) -> f64 {
    tokens as f64 * usd_per_million
}

/// What a finished request cost on a backend: tokens at its prices, or its share of an hourly
/// machine — the engine time the engine attributes to it (its share of every batched step it
/// took part in) when reported, else its duration divided among the requests in flight there.
pub fn request_cost(cost: &Cost, usage: &UsageCount, duration: Duration, concurrent: u32) -> i64 {
    match *cost {
        Cost::PerToken(p) => {
            let fresh = usage.prompt_tokens.saturating_sub(usage.cached_tokens);
            (micros(fresh, p.input) + micros(usage.cached_tokens, p.cached_input) + micros(usage.completion_tokens, p.output)).ceil()
                as i64
        }
        Cost::Hourly(rate) => {
            let seconds = usage.compute_seconds.unwrap_or_else(|| duration.as_secs_f64() / f64::from(concurrent.max(1)));
            (rate * 1e6 * seconds / 3600.0).ceil() as i64
        }
        Cost::Unknown => 0,
    }
}

/// The most a request may cost on `target`: the whole prompt and every allowed output token at
/// its prices, or its whole total timeout of the hourly machine.
pub fn worst_case_cost(target: &Target, prompt_tokens: u64, max_tokens: u64) -> i64 {
    match target.cfg.cost {
        Cost::PerToken(p) => (micros(prompt_tokens, p.input.max(p.cached_input)) + micros(max_tokens, p.output)).ceil() as i64,
        Cost::Hourly(rate) => (rate * 1e6 * target.cfg.timeouts.total.as_secs_f64() / 3600.0).ceil() as i64,
        Cost::Unknown => 0,
    }
}

/// A request in flight; settles on `finish`, or as `client_gone` when dropped unfinished.
#[derive(Debug)]
pub struct Ticket {
    pub(crate) settled: Settled,
    pub(crate) arrived: Instant,
    pub(crate) governance: Option<Arc<dyn Governance>>,
    /// The backend of the last attempt (to book its tokens and price).
    pub(crate) target: Option<Arc<Target>>,
    done: bool,
}

impl Ticket {
    /// Whether the caller's policy wants the content kept.
    pub(crate) fn captures(&self) -> bool {
        self.settled.caller.as_ref().is_some_and(|c| c.logging != "off")
    }

    pub(crate) fn new(ctx: &RequestContext, request_id: String, governance: Option<Arc<dyn Governance>>) -> Self {
        Self {
            settled: Settled {
                request_id,
                caller: ctx.caller.clone(),
                feature: ctx.feature.clone(),
                route: String::new(),
                backend: String::new(),
                model: String::new(),
                attempts: Vec::new(),
                outcome: "client_gone",
                status: 499,
                usage: UsageCount::default(),
                cost_micros: 0,
                ttft: None,
                duration: Duration::ZERO,
                admitted: false,
                admitted_tokens: 0,
                prompt_text: None,
                response_text: None,
            },
            arrived: Instant::now(),
            governance,
            target: None,
            done: false,
        }
    }

    /// The attempts as `backend:outcome[:status]`, content-free (for logs).
    pub(crate) fn attempt_summary(&self) -> String {
        self.settled
            .attempts
            .iter()
            .map(|a| match a.status {
                Some(s) => format!("{}:{}:{s}", a.backend, a.outcome),
                None => format!("{}:{}", a.backend, a.outcome),
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Ends the request: one log line, the backend's counters, the ledger. `error` must not
    /// carry request content.
    pub(crate) fn finish(&mut self, outcome: &'static str, status: u16, usage: UsageCount, error: Option<&str>) {
        if self.done {
            return;
        }
        self.done = true;
        let s = &mut self.settled;
        s.outcome = outcome;
        s.status = status;
        s.usage = usage;
        s.duration = self.arrived.elapsed();
        if let Some(t) = &self.target {
            t.stats.prompt_tokens.fetch_add(usage.prompt_tokens, Ordering::Relaxed);
            t.stats.completion_tokens.fetch_add(usage.completion_tokens, Ordering::Relaxed);
            s.cost_micros = request_cost(&t.cfg.cost, &usage, s.duration, t.outstanding().max(1));
        }
        tracing::info!(
            target: "sluice::request",
            request_id = %s.request_id,
            tenant = s.caller.as_ref().map(|c| c.tenant_id.as_str()),
            feature = %s.feature,
            model = %s.route,
            backend = %s.backend,
            attempts = s.attempts.len(),
            outcome,
            status,
            prompt_tokens = usage.prompt_tokens,
            cached_tokens = usage.cached_tokens,
            completion_tokens = usage.completion_tokens,
            usage_reported = usage.reported,
            cost_usd = s.cost_micros as f64 / 1e6,
            latency_ms = s.duration.as_secs_f64() * 1e3,
            ttft_ms = s.ttft.map(|d| d.as_secs_f64() * 1e3),
            error,
            "request"
        );
        if s.admitted
            && let Some(g) = &self.governance
        {
            g.settle(s.clone());
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.done {
            // The client went away before the answer: charge what was counted so far.
            let usage = self.settled.usage;
            self.finish("client_gone", 499, usage, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Price;

    #[test]
    fn costs_follow_prices_and_hours() {
        let price = Cost::PerToken(Price { input: 1.0, cached_input: 0.5, output: 4.0 });
        let u = UsageCount { prompt_tokens: 1000, cached_tokens: 400, completion_tokens: 100, reported: true, compute_seconds: None };
        // 600 × $1 + 400 × $0.5 + 100 × $4 per million = $0.0012 = 1200 µ$.
        assert_eq!(request_cost(&price, &u, Duration::from_secs(1), 1), 1200);
        // $3.6/h for 2 s shared by 4 requests = $0.0005 = 500 µ$.
        assert_eq!(request_cost(&Cost::Hourly(3.6), &u, Duration::from_secs(2), 4), 500);
        // An engine that reports 0.25 s of step time for the request: $3.6/h × 0.25 s = 250 µ$.
        let engine = UsageCount { compute_seconds: Some(0.25), ..u };
        assert_eq!(request_cost(&Cost::Hourly(3.6), &engine, Duration::from_secs(2), 4), 250);
        assert_eq!(request_cost(&Cost::Unknown, &u, Duration::from_secs(2), 1), 0);
    }
}
