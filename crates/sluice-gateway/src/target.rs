//! A backend as the router sees it: its configuration, its transport, and what we have learned
//! about it (requests in flight, latency, health, circuit breaker, `Retry-After`).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::backend::Backend;
use crate::breaker::{Admission, Breaker, BreakerState};
use crate::config::{BackendConfig, BackendKind, Cost};

/// Counters per backend, for `/metrics`.
#[derive(Debug, Default)]
pub struct TargetStats {
    /// Attempts sent.
    pub attempts: AtomicU64,
    /// Attempts that failed (any reason).
    pub failures: AtomicU64,
    /// Requests answered by this backend.
    pub served: AtomicU64,
    /// Times the breaker opened.
    pub breaker_opened: AtomicU64,
    /// Prompt tokens billed by this backend.
    pub prompt_tokens: AtomicU64,
    /// Generated tokens it returned.
    pub completion_tokens: AtomicU64,
}

/// One backend and its runtime state.
#[derive(Debug)]
pub struct Target {
    /// Its configuration.
    pub cfg: BackendConfig,
    /// How requests reach it.
    pub backend: Arc<dyn Backend>,
    context_window: AtomicU32,
    outstanding: AtomicU32,
    /// Latency EWMA in microseconds (0: no sample yet).
    ewma_us: AtomicU64,
    healthy: AtomicBool,
    breaker: Mutex<Breaker>,
    not_before: Mutex<Option<Instant>>,
    /// Counters.
    pub stats: TargetStats,
}

/// Weight of a new latency sample in the moving average.
const EWMA_ALPHA: f64 = 0.3;

impl Target {
    /// A target that starts healthy with a closed breaker.
    pub fn new(cfg: BackendConfig, backend: Arc<dyn Backend>) -> Self {
        Self {
            context_window: AtomicU32::new(cfg.context_window.unwrap_or(0)),
            breaker: Mutex::new(Breaker::new(cfg.breaker)),
            cfg,
            backend,
            outstanding: AtomicU32::new(0),
            ewma_us: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            not_before: Mutex::new(None),
            stats: TargetStats::default(),
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    /// Its kind.
    pub fn kind(&self) -> BackendKind {
        self.cfg.kind
    }

    /// Its context window in tokens, if known.
    pub fn context_window(&self) -> Option<u32> {
        match self.context_window.load(Ordering::Relaxed) {
            0 => None,
            n => Some(n),
        }
    }

    /// Sets the window once an engine has loaded its model (a configured value wins).
    pub fn learn_context_window(&self, n: u32) {
        if self.cfg.context_window.is_none() {
            self.context_window.store(n, Ordering::Relaxed);
        }
    }

    /// Whether `tokens` fit its window.
    pub fn fits(&self, tokens: u64) -> bool {
        self.context_window().is_none_or(|w| tokens <= u64::from(w))
    }

    /// Requests in flight.
    pub fn outstanding(&self) -> u32 {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// Latency moving average (zero before the first sample).
    pub fn ewma(&self) -> Duration {
        Duration::from_micros(self.ewma_us.load(Ordering::Relaxed))
    }

    /// Folds a latency sample into the average.
    pub fn observe_latency(&self, d: Duration) {
        let sample = d.as_micros() as f64;
        let _ = self.ewma_us.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
            let next = if old == 0 { sample } else { EWMA_ALPHA * sample + (1.0 - EWMA_ALPHA) * old as f64 };
            Some(next.max(1.0) as u64)
        });
    }

    /// Result of the last active health check.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Records an active health check.
    pub fn set_healthy(&self, ok: bool) {
        let was = self.healthy.swap(ok, Ordering::Relaxed);
        if was != ok {
            tracing::warn!(backend = %self.name(), healthy = ok, "backend health changed");
        }
    }

    /// Marginal price of a request in dollars (zero for hourly or unpriced capacity).
    pub fn request_price(&self, prompt_tokens: u64, max_tokens: u64) -> f64 {
        match self.cfg.cost {
            Cost::PerToken(p) => (p.input * prompt_tokens as f64 + p.output * max_tokens as f64) / 1e6,
            Cost::Hourly(_) | Cost::Unknown => 0.0,
        }
    }

    /// Why a request cannot go here now, if it cannot (health checks only count when
    /// `respect_health`).
    pub fn unavailable(&self, now: Instant, respect_health: bool) -> Option<&'static str> {
        if respect_health && !self.healthy() {
            return Some("failing health checks");
        }
        if let Ok(nb) = self.not_before.lock()
            && nb.is_some_and(|t| now < t)
        {
            return Some("asked to wait (Retry-After)");
        }
        if self.outstanding() >= self.cfg.max_concurrent {
            return Some("at max_concurrent");
        }
        match self.breaker.lock() {
            Ok(b) if !b.would_admit(now) => Some("circuit open"),
            _ => None,
        }
    }

    /// Honours a backend's `Retry-After`.
    pub fn hold_off(&self, until: Instant) {
        if let Ok(mut nb) = self.not_before.lock() {
            *nb = Some(nb.map_or(until, |t| t.max(until)));
        }
    }

    /// Breaker state for metrics: 0 closed, 1 open, 2 half-open.
    pub fn breaker_state(&self, now: Instant) -> u8 {
        match self.breaker.lock().map(|b| b.state(now)) {
            Ok(BreakerState::Closed { .. }) | Err(_) => 0,
            Ok(BreakerState::Open { .. }) => 1,
            Ok(BreakerState::HalfOpen { .. }) => 2,
        }
    }

    /// Takes a slot for one attempt, if the breaker admits it; the slot is given back when the
    /// returned guard drops, and its outcome recorded through it.
    pub fn begin(self: &Arc<Self>, now: Instant) -> Option<AttemptGuard> {
        let admission = self.breaker.lock().ok()?.admit(now)?;
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        self.stats.attempts.fetch_add(1, Ordering::Relaxed);
        Some(AttemptGuard { target: self.clone(), admission, settled: false })
    }
}

/// An attempt in flight at a target.
#[derive(Debug)]
pub struct AttemptGuard {
    target: Arc<Target>,
    admission: Admission,
    settled: bool,
}

impl AttemptGuard {
    /// The target.
    pub fn target(&self) -> &Arc<Target> {
        &self.target
    }

    /// The backend answered well.
    pub fn succeed(mut self, latency: Duration) {
        self.settled = true;
        self.target.observe_latency(latency);
        if let Ok(mut b) = self.target.breaker.lock() {
            b.success();
        }
    }

    /// The backend answered, but not in a way that says anything about its speed (a 429, the
    /// client's own error): the breaker counts it alive, the latency average ignores it.
    pub fn neutral(mut self) {
        self.settled = true;
        if let Ok(mut b) = self.target.breaker.lock() {
            b.success();
        }
    }

    /// The backend failed this attempt.
    pub fn fail(mut self) {
        self.settled = true;
        let t = &self.target;
        t.stats.failures.fetch_add(1, Ordering::Relaxed);
        let opened = t.breaker.lock().map(|mut b| b.failure(Instant::now(), self.admission)).unwrap_or(false);
        if opened {
            t.stats.breaker_opened.fetch_add(1, Ordering::Relaxed);
            let cooldown = t.breaker.lock().map(|b| b.cooldown()).unwrap_or_default();
            tracing::warn!(backend = %t.name(), cooldown_ms = cooldown.as_millis() as u64, "circuit opened");
        }
    }
}

impl Drop for AttemptGuard {
    fn drop(&mut self) {
        self.target.outstanding.fetch_sub(1, Ordering::Relaxed);
        if !self.settled
            && let Ok(mut b) = self.target.breaker.lock()
        {
            b.abandon(self.admission);
        }
    }
}
