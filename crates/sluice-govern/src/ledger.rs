//! Admission and settlement: rate limits (requests and tokens per minute, requests in flight)
//! per tenant, key and feature, budgets per UTC day and month, and the ledger row of every
//! admitted request.
//!
//! Rate limits are counted in this process (fixed one-minute windows). Budgets are held in the
//! store with conditional updates, so they hold across every process sharing the database: a
//! request reserves its worst-case cost before any backend is called and settles its real cost
//! afterwards. Each process beats a heartbeat into the store; reservations left by a process
//! that stopped beating (it crashed) are settled at no cost by whichever process notices.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_store::{BudgetFull, BudgetHold, Limits, Reservation, Settlement, Store, StoreError, now_ms};
use tokio::sync::{mpsc, oneshot};

use crate::allowance::{Allowances, Refills, Taken};
use crate::background::Background;
use crate::journal::{self, Journal, Record};
use crate::writer::{Op, Write, Writer, writer};

/// Heartbeat period of a process.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// A process silent this long is taken for dead.
const STALE: Duration = Duration::from_secs(30);
/// How long limits read from the store are used before reading them again.
const LIMITS_TTL: Duration = Duration::from_secs(2);

/// What admission needs to know.
#[derive(Debug, Clone)]
pub struct AdmitRequest {
    /// Request id.
    pub request_id: String,
    /// Tenant id.
    pub tenant_id: String,
    /// Key id.
    pub key_id: String,
    /// Feature.
    pub feature: String,
    /// Route.
    pub route: String,
    /// Estimated prompt tokens.
    pub prompt_tokens: u64,
    /// Output tokens allowed.
    pub max_tokens: u64,
    /// Worst-case cost, micro-dollars.
    pub worst_case_micros: i64,
}

/// Why a request was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AdmitError {
    /// A requests/tokens per minute or concurrency limit.
    #[error("{message}")]
    RateLimited {
        /// Which limit.
        message: String,
        /// Seconds until it may pass.
        retry_after: u32,
    },
    /// A budget.
    #[error("{message}")]
    BudgetExceeded {
        /// Which budget, and how much is left.
        message: String,
        /// Seconds until the period resets.
        retry_after: u32,
    },
    /// The store failed.
    #[error("Cannot admit the request now: the ledger is unavailable ({0})")]
    Store(String),
}

impl AdmitError {
    /// Stable label (also the OpenAI error code).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::RateLimited { .. } => "rate_limit_exceeded",
            Self::BudgetExceeded { .. } => "budget_exceeded",
            Self::Store(_) => "ledger_unavailable",
        }
    }

    /// HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            Self::RateLimited { .. } | Self::BudgetExceeded { .. } => 429,
            Self::Store(_) => 503,
        }
    }

    /// Seconds until a retry may pass.
    pub fn retry_after(&self) -> u32 {
        match self {
            Self::RateLimited { retry_after, .. } | Self::BudgetExceeded { retry_after, .. } => *retry_after,
            Self::Store(_) => 1,
        }
    }

    /// Whether the same request may pass later.
    pub fn is_retryable(&self) -> bool {
        true
    }
}

/// An admitted request whose ledger row may still be in the writer's queue.
#[derive(Debug)]
pub struct Pending(Option<oneshot::Receiver<Result<Result<(), BudgetFull>, String>>>);

impl Pending {
    /// Whether the row is known to be written.
    pub fn is_written(&self) -> bool {
        self.0.is_none()
    }

    /// Waits until the row is written.
    pub async fn written(self) -> Result<(), AdmitError> {
        match self.0 {
            None => Ok(()),
            Some(rx) => match rx.await {
                Ok(Ok(Ok(()))) => Ok(()),
                Ok(Ok(Err(_))) => Err(AdmitError::Store("a budget appeared while the row was being written".into())),
                Ok(Err(e)) => Err(AdmitError::Store(e)),
                Err(_) => Err(AdmitError::Store("the ledger writer stopped".into())),
            },
        }
    }
}

/// The facts settlement needs besides the ledger row.
#[derive(Debug, Clone)]
pub struct SettleRequest {
    /// Tenant id.
    pub tenant_id: String,
    /// Key id.
    pub key_id: String,
    /// Feature.
    pub feature: String,
    /// Tokens admission counted against tokens-per-minute.
    pub admitted_tokens: u64,
    /// The ledger row.
    pub settlement: Settlement,
}

#[derive(Debug, Default, Clone, Copy)]
struct Window {
    minute: i64,
    requests: i64,
    tokens: i64,
    in_flight: i64,
}

#[derive(Debug, Default)]
struct LimitsCache {
    loaded: Option<Instant>,
    by_scope: HashMap<(String, String), Limits>,
}

/// Admission and settlement for one process.
#[derive(Debug)]
pub struct Ledger {
    store: Store,
    instance_id: String,
    host: String,
    writes: mpsc::UnboundedSender<Op>,
    refills: Refills,
    journal: Option<Arc<Journal>>,
    windows: Mutex<HashMap<(&'static str, String), Window>>,
    limits: tokio::sync::RwLock<LimitsCache>,
    limits_refreshing: std::sync::atomic::AtomicBool,
    allowances: Allowances,
    /// When the heartbeat last reached the store.
    last_beat: Mutex<Instant>,
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Days since 1970-01-01 of a civil date.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

const DAY_MS: i64 = 86_400_000;

/// The UTC day and month periods of a moment, and the seconds until each ends.
pub fn periods(ms: i64) -> ((String, u32), (String, u32)) {
    let days = ms.div_euclid(DAY_MS);
    let (y, m, d) = civil(days);
    let day_left = ((days + 1) * DAY_MS - ms) / 1000;
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    let month_left = (days_from_civil(ny, nm, 1) * DAY_MS - ms) / 1000;
    ((format!("d{y:04}-{m:02}-{d:02}"), day_left.max(1) as u32), (format!("m{y:04}-{m:02}"), month_left.max(1) as u32))
}

/// This machine's name (processes on it can be checked for liveness directly).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Settles the reservations of processes that stopped: silent too long anywhere, or (on this
/// host) whose pid no longer runs — so a restart after a crash recovers at once. What they
/// journaled in `journal`'s directory is written first, so their finished requests keep their real
/// usage and only the unfinished ones settle as `server_crashed`.
async fn recover(store: &Store, host: &str, journal: Option<&Journal>) -> Result<u64, StoreError> {
    if let Some(j) = journal {
        let r = journal::restore(j.dir(), j.instance(), store).await?;
        if r.journals > 0 {
            tracing::warn!(journals = r.journals, records = r.records, settled = r.settled, unreadable = r.unreadable, "wrote the ledger journal of a process that stopped");
        }
    }
    let me = i64::from(std::process::id());
    if !std::path::Path::new("/proc/self").exists() {
        // No way to see other processes here: rely on heartbeats alone.
        return store.recover(now_ms() - STALE.as_millis() as i64, &[], now_ms()).await;
    }
    let dead: Vec<String> = store
        .instances_with_reservations(host)
        .await?
        .into_iter()
        .filter(|(_, pid)| *pid != me && !std::path::Path::new(&format!("/proc/{pid}")).exists())
        .map(|(id, _)| id)
        .collect();
    store.recover(now_ms() - STALE.as_millis() as i64, &dead, now_ms()).await
}

fn dollars(micros: i64) -> String {
    format!("${:.4}", micros as f64 / 1e6)
}

impl Ledger {
    /// Registers this process, settles what crashed processes left, and keeps the heartbeat
    /// and recovery going in the background. Without a journal, a request's answer waits
    /// until its ledger row is committed; see [`Ledger::start_journaled`].
    pub async fn start(store: Store) -> Result<Arc<Self>, StoreError> {
        Self::start_with(store, None, None).await
    }

    /// Like [`Ledger::start`], with a local journal in `dir` (see [`crate::journal`]): ledger
    /// rows of requests under no budget are journaled and committed to the store behind the
    /// answer, so admission and settlement cost no database round trip. With `background`,
    /// the writer runs there, over its store.
    pub async fn start_journaled(store: Store, dir: &std::path::Path, background: Option<&Background>) -> Result<Arc<Self>, StoreError> {
        Self::start_with(store, Some(dir.to_path_buf()), background).await
    }

    async fn start_with(store: Store, journal_dir: Option<std::path::PathBuf>, background: Option<&Background>) -> Result<Arc<Self>, StoreError> {
        let mut id = [0u8; 8];
        rand::TryRngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut id).map_err(|e| StoreError::Io(e.to_string()))?;
        let instance_id = format!("proc_{}", id.iter().map(|b| format!("{b:02x}")).collect::<String>());
        let host = hostname();
        let journal = match &journal_dir {
            Some(dir) => Some(Arc::new(Journal::open(dir, &instance_id)?)),
            None => None,
        };
        store.heartbeat(&instance_id, &host, i64::from(std::process::id()), now_ms()).await?;
        let recovered = recover(&store, &host, journal.as_deref()).await?;
        if recovered > 0 {
            tracing::warn!(recovered, "settled reservations left by a process that stopped (no cost charged)");
        }
        let (writes, rx) = mpsc::unbounded_channel();
        let (refills, refill_rx) = mpsc::unbounded_channel();
        let w = Writer { instance: instance_id.clone(), journal: journal.clone(), refills: refill_rx };
        match background {
            Some(bg) => bg.spawn(writer(bg.store().clone(), w, rx)),
            None => drop(tokio::spawn(writer(store.clone(), w, rx))),
        }
        let ledger = Arc::new(Self {
            store,
            instance_id,
            host,
            writes,
            refills,
            journal,
            windows: Mutex::new(HashMap::new()),
            limits: Default::default(),
            limits_refreshing: Default::default(),
            allowances: Default::default(),
            last_beat: Mutex::new(Instant::now()),
        });
        if ledger.journal.is_some() {
            let weak = Arc::downgrade(&ledger);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(crate::allowance::IDLE_RETURN / 2);
                loop {
                    tick.tick().await;
                    let Some(l) = weak.upgrade() else { return };
                    l.allowances.give_back(&l.store, &l.instance_id, false).await;
                }
            });
        }
        let weak = Arc::downgrade(&ledger);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT);
            let mut n = 0u64;
            loop {
                tick.tick().await;
                let Some(l) = weak.upgrade() else { return };
                match l.store.heartbeat(&l.instance_id, &l.host, i64::from(std::process::id()), now_ms()).await {
                    Ok(()) => {
                        if let Ok(mut t) = l.last_beat.lock() {
                            *t = Instant::now();
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "ledger heartbeat failed"),
                }
                n += 1;
                if n.is_multiple_of(6) {
                    match recover(&l.store, &l.host, l.journal.as_deref()).await {
                        Ok(0) => {}
                        Ok(k) => tracing::warn!(recovered = k, "settled reservations of a stopped process"),
                        Err(e) => tracing::warn!(error = %e, "ledger recovery failed"),
                    }
                }
            }
        });
        Ok(ledger)
    }

    /// This process's id in the store.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The limits of `scopes`. Read from the store at first, then refreshed in the background
    /// every [`LIMITS_TTL`] while requests go on with the known ones.
    async fn limits_for(self: &Arc<Self>, scopes: &[(&'static str, String)]) -> Result<Vec<Limits>, StoreError> {
        let pick = |cache: &LimitsCache| scopes.iter().map(|(s, id)| cache.by_scope.get(&(s.to_string(), id.clone())).copied().unwrap_or_default()).collect();
        {
            let cache = self.limits.read().await;
            match cache.loaded {
                Some(t) if t.elapsed() < LIMITS_TTL => return Ok(pick(&cache)),
                Some(_) => {
                    if !self.limits_refreshing.swap(true, std::sync::atomic::Ordering::AcqRel) {
                        let me = self.clone();
                        tokio::spawn(async move {
                            if let Err(e) = me.load_limits().await {
                                tracing::warn!(error = %e, "cannot refresh limits; using the ones known");
                            }
                            me.limits_refreshing.store(false, std::sync::atomic::Ordering::Release);
                        });
                    }
                    return Ok(pick(&cache));
                }
                None => {}
            }
        }
        self.load_limits().await?;
        Ok(pick(&*self.limits.read().await))
    }

    async fn load_limits(&self) -> Result<(), StoreError> {
        let all = self.store.all_limits().await?;
        let mut cache = self.limits.write().await;
        cache.by_scope = all.into_iter().map(|(s, id, l)| ((s, id), l)).collect();
        cache.loaded = Some(Instant::now());
        Ok(())
    }

    /// Forgets cached limits (after an admin changed them).
    pub async fn reload_limits(&self) {
        self.limits.write().await.loaded = None;
    }

    fn scopes(tenant: &str, key: &str, feature: &str) -> Vec<(&'static str, String)> {
        vec![("tenant", tenant.to_string()), ("key", key.to_string()), ("feature", format!("{tenant}/{feature}"))]
    }

    /// Checks the limits and reserves the worst case; writes the ledger row. A request under a
    /// budget is admitted only once its reservation is committed; one under none is admitted
    /// at once, its row still being written: the returned [`Pending`] says when it is.
    pub async fn admit(self: &Arc<Self>, a: &AdmitRequest) -> Result<Pending, AdmitError> {
        let now = now_ms();
        let minute = now / 60_000;
        let retry_minute = (((minute + 1) * 60_000 - now) / 1000).max(1) as u32;
        let scopes = Self::scopes(&a.tenant_id, &a.key_id, &a.feature);
        let limits = self.limits_for(&scopes).await.map_err(|e| AdmitError::Store(e.to_string()))?;
        let tokens = (a.prompt_tokens + a.max_tokens) as i64;
        {
            let Ok(mut windows) = self.windows.lock() else { return Err(AdmitError::Store("rate limiter poisoned".into())) };
            for ((scope, id), l) in scopes.iter().zip(&limits) {
                let w = windows.entry((*scope, id.clone())).or_default();
                if w.minute != minute {
                    *w = Window { minute, requests: 0, tokens: 0, in_flight: w.in_flight };
                }
                let who = || format!("{scope} {id}");
                if let Some(n) = l.concurrent.filter(|&n| w.in_flight >= n) {
                    return Err(AdmitError::RateLimited { message: format!("Concurrency limit reached for {}: {n} requests in flight", who()), retry_after: 1 });
                }
                if let Some(n) = l.rpm.filter(|&n| w.requests >= n) {
                    return Err(AdmitError::RateLimited { message: format!("Rate limit reached for {}: {n} requests per minute", who()), retry_after: retry_minute });
                }
                if let Some(n) = l.tpm.filter(|&n| w.tokens + tokens > n) {
                    return Err(AdmitError::RateLimited {
                        message: format!("Rate limit reached for {}: {n} tokens per minute ({} used, this request may take {tokens})", who(), w.tokens),
                        retry_after: retry_minute,
                    });
                }
            }
            for (scope, id) in &scopes {
                let w = windows.entry((*scope, id.clone())).or_default();
                w.requests += 1;
                w.tokens += tokens;
                w.in_flight += 1;
            }
        }
        let ((day, day_left), (month, month_left)) = periods(now);
        let mut budgets = Vec::new();
        let mut resets = HashMap::new();
        for ((scope, id), l) in scopes.iter().zip(&limits) {
            for (limit, period, left) in [(l.usd_micros_per_day, &day, day_left), (l.usd_micros_per_month, &month, month_left)] {
                if let Some(limit_micros) = limit {
                    budgets.push(BudgetHold { scope: scope.to_string(), scope_id: id.clone(), period: period.clone(), limit_micros });
                    resets.insert(period.clone(), left);
                }
            }
        }
        let mut reservation = Reservation {
            request_id: a.request_id.clone(),
            created_ms: now,
            instance_id: self.instance_id.clone(),
            tenant_id: a.tenant_id.clone(),
            key_id: a.key_id.clone(),
            feature: a.feature.clone(),
            route: a.route.clone(),
            reserved_micros: a.worst_case_micros,
            budgets,
            allowance: false,
        };
        let unbudgeted = reservation.budgets.is_empty();
        // Under budgets, admit against this process's allowances where it can: journaled like
        // an unbudgeted request, no round trip.
        let mut allowance_outcome = None;
        if !unbudgeted && self.journal.is_some() && self.heart_beating() {
            match self.allowances.take(&self.refills, &a.request_id, &reservation.budgets, a.worst_case_micros).await {
                Ok(Taken::Yes { top_up }) => {
                    if top_up {
                        let (me, holds, worst) = (self.clone(), reservation.budgets.clone(), a.worst_case_micros);
                        tokio::spawn(async move { me.allowances.top_up(&me.refills, &holds, worst).await });
                    }
                    reservation.allowance = true;
                    match self.journal_append(&Record::Reserve(reservation.clone())) {
                        Some(seg) => return Ok(self.send_journaled(reservation, seg)),
                        None => {
                            self.allowances.undo(&a.request_id);
                            reservation.allowance = false;
                        }
                    }
                }
                Ok(Taken::PerRequest) => {}
                Ok(Taken::Full(full)) => allowance_outcome = Some(Ok(Err(full))),
                Err(e) => allowance_outcome = Some(Err(e.to_string())),
            }
        }
        if unbudgeted && let Some(seg) = self.journal_append(&Record::Reserve(reservation.clone())) {
            return Ok(self.send_journaled(reservation, seg));
        }
        let outcome = match allowance_outcome {
            Some(o) => o,
            None => {
                let (reply, answer) = oneshot::channel();
                match self.writes.send(Op::new(Write::Reserve(reservation), Some(reply), None)) {
                    Ok(()) if unbudgeted => return Ok(Pending(Some(answer))),
                    Ok(()) => answer.await.unwrap_or_else(|_| Err("the ledger writer stopped".into())),
                    Err(_) => Err("the ledger writer stopped".into()),
                }
            }
        };
        let refused = match outcome {
            Ok(Ok(())) => return Ok(Pending(None)),
            Ok(Err(full)) => {
                let h = &full.hold;
                let per = if h.period.starts_with('d') { "day" } else { "month" };
                AdmitError::BudgetExceeded {
                    message: format!(
                        "Budget exceeded for {} {}: {} per {per}; spent {}, held by requests in flight {}, this request may cost up to {}",
                        h.scope,
                        h.scope_id,
                        dollars(h.limit_micros),
                        dollars(full.spent_micros),
                        dollars(full.reserved_micros),
                        dollars(a.worst_case_micros)
                    ),
                    retry_after: resets.get(&h.period).copied().unwrap_or(60),
                }
            }
            Err(e) => AdmitError::Store(e),
        };
        self.release(&scopes, tokens, 0);
        Err(refused)
    }

    /// Gives back a request's slot; `tokens_used` replaces the admitted worst case in this
    /// minute's token count.
    fn release(&self, scopes: &[(&'static str, String)], admitted_tokens: i64, tokens_used: i64) {
        let minute = now_ms() / 60_000;
        if let Ok(mut windows) = self.windows.lock() {
            for (scope, id) in scopes {
                if let Some(w) = windows.get_mut(&(*scope, id.clone())) {
                    w.in_flight = (w.in_flight - 1).max(0);
                    if w.minute == minute {
                        w.tokens = (w.tokens - admitted_tokens + tokens_used).max(0);
                    }
                }
            }
        }
    }

    /// Settles an admitted request: frees its rate-limit slot now and queues its ledger row
    /// for the writer (retried a few times if the store fails).
    pub fn settle(&self, s: SettleRequest) {
        let scopes = Self::scopes(&s.tenant_id, &s.key_id, &s.feature);
        let used = s.settlement.prompt_tokens + s.settlement.completion_tokens;
        self.release(&scopes, s.admitted_tokens as i64, used);
        self.allowances.settle(&s.settlement.request_id, s.settlement.cost_micros);
        let seg = self.journal_append(&Record::Settle(s.settlement.clone()));
        if self.writes.send(Op::new(Write::Settle(s.settlement), None, seg)).is_err() {
            tracing::error!("the ledger writer stopped; the settlement is left to the journal or to recovery");
        }
    }

    /// Whether the heartbeat reached the store recently: else other processes may soon take
    /// this one for dead and give its allowances back, so it stops using them.
    fn heart_beating(&self) -> bool {
        self.last_beat.lock().map(|t| t.elapsed() < STALE / 2).unwrap_or(false)
    }

    /// Gives every unused budget allowance back (at shutdown).
    pub async fn give_back_allowances(&self) {
        self.allowances.give_back(&self.store, &self.instance_id, true).await;
    }

    /// Hands a journaled reservation to the writer; the request need not wait for it.
    fn send_journaled(&self, reservation: Reservation, seg: u64) -> Pending {
        if self.writes.send(Op::new(Write::Reserve(reservation), None, Some(seg))).is_err() {
            // Journaled: the next process to start writes it.
            tracing::error!("the ledger writer stopped; the reservation stays in the journal");
        }
        Pending(None)
    }

    /// Appends to the journal, if there is one and it works.
    fn journal_append(&self, r: &Record) -> Option<u64> {
        let j = self.journal.as_ref()?;
        match j.append(r) {
            Ok(seg) => Some(seg),
            Err(e) => {
                tracing::error!(error = %e, "cannot append to the ledger journal; this write waits for the store");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn periods_are_utc_days_and_months() {
        // 2026-11-29T13:00:00Z
        let ms = 1_795_957_200_000;
        let ((d, dl), (m, ml)) = periods(ms);
        assert_eq!((d.as_str(), m.as_str()), ("d2026-11-29", "m2026-11"));
        assert_eq!(dl, 11 * 3600);
        assert_eq!(ml, (24 + 11) * 3600);
        assert_eq!(periods(0).0.0, "d1970-01-01");
        // Leap day and year end.
        assert_eq!(periods(days_from_civil(2028, 2, 29) * DAY_MS).0.0, "d2028-02-29");
        assert_eq!(periods(days_from_civil(2026, 12, 31) * DAY_MS + 1).1, ("m2026-12".to_string(), 86_399));
    }
}
