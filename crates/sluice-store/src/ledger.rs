//! Limits, budgets and the ledger.
//!
//! Invariants, held by single transactions with conditional updates (row locks on PostgreSQL,
//! the single writer on SQLite), so they hold across processes sharing one database:
//! - a reservation succeeds only if, for every budget it touches,
//!   `spent + reserved + amount <= limit` at the moment it is added;
//! - a ledger row goes from `reserved` to `settled` exactly once (`UPDATE … WHERE state =
//!   'reserved' RETURNING`), and only that transition moves its money from reserved to spent.
//!
//! Money is in micro-dollars.

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{Store, StoreError};

/// Limits of one scope; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Requests per minute.
    pub rpm: Option<i64>,
    /// Tokens (prompt + output) per minute.
    pub tpm: Option<i64>,
    /// Requests in flight.
    pub concurrent: Option<i64>,
    /// Budget per UTC day, micro-dollars.
    pub usd_micros_per_day: Option<i64>,
    /// Budget per UTC month, micro-dollars.
    pub usd_micros_per_month: Option<i64>,
}

impl Limits {
    /// Whether nothing is limited.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// A budget a reservation is held against.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BudgetHold {
    /// `tenant`, `key` or `feature`.
    pub scope: String,
    /// The scope's id.
    pub scope_id: String,
    /// `d2026-11-29` or `m2026-11`.
    pub period: String,
    /// The budget, micro-dollars.
    pub limit_micros: i64,
}

/// The row written at admission.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Reservation {
    /// Request id.
    pub request_id: String,
    /// Admission time (Unix ms).
    pub created_ms: i64,
    /// The admitting process.
    pub instance_id: String,
    /// Tenant id.
    pub tenant_id: String,
    /// Key id.
    pub key_id: String,
    /// Feature.
    pub feature: String,
    /// Route.
    pub route: String,
    /// Worst-case cost held, micro-dollars.
    pub reserved_micros: i64,
    /// Budgets it is held against.
    pub budgets: Vec<BudgetHold>,
    /// Admitted against its process's allowances of `budgets` (nothing to hold per request).
    #[serde(default)]
    pub allowance: bool,
}

/// What asking for a budget allowance gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// This much was added to the process's allowance.
    Granted(i64),
    /// The budget has room for the request, but too little to hand out slices: reserve per
    /// request.
    Exact,
    /// The budget has no room for the request.
    Full(BudgetFull),
}

/// A budget that had no room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetFull {
    /// The budget.
    pub hold: BudgetHold,
    /// Spent so far in the period.
    pub spent_micros: i64,
    /// Held by requests in flight.
    pub reserved_micros: i64,
}

/// One attempt, as written.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AttemptRow {
    /// Backend.
    pub backend: String,
    /// HTTP status, if any came back.
    pub status: Option<i64>,
    /// Outcome.
    pub outcome: String,
    /// Error text.
    pub error: Option<String>,
    /// Duration.
    pub duration_ms: f64,
}

/// What settlement writes.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Settlement {
    /// Request id.
    pub request_id: String,
    /// Backend that answered (or failed last).
    pub backend: String,
    /// Model sent upstream.
    pub model: String,
    /// Prompt tokens.
    pub prompt_tokens: i64,
    /// Cached prompt tokens.
    pub cached_tokens: i64,
    /// Generated tokens.
    pub completion_tokens: i64,
    /// Cost, micro-dollars.
    pub cost_micros: i64,
    /// Time to first token.
    pub ttft_ms: Option<f64>,
    /// Duration.
    pub duration_ms: f64,
    /// HTTP status the client got.
    pub status: i64,
    /// Outcome label.
    pub outcome: String,
    /// Error kind, if it failed.
    pub error_kind: Option<String>,
    /// Every attempt.
    pub attempts: Vec<AttemptRow>,
    /// Settlement time (Unix ms).
    pub settled_ms: i64,
}

/// A settled ledger row, as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct LedgerRow {
    /// Request id.
    pub request_id: String,
    /// Admission time.
    pub created_ms: i64,
    /// `reserved` or `settled`.
    pub state: String,
    /// Tenant id.
    pub tenant_id: String,
    /// Key id.
    pub key_id: String,
    /// Feature.
    pub feature: String,
    /// Route.
    pub route: String,
    /// Backend.
    pub backend: Option<String>,
    /// Model sent upstream.
    pub model: Option<String>,
    /// Prompt tokens.
    pub prompt_tokens: Option<i64>,
    /// Cached prompt tokens.
    pub cached_tokens: Option<i64>,
    /// Generated tokens.
    pub completion_tokens: Option<i64>,
    /// Cost.
    pub cost_micros: Option<i64>,
    /// Reserved.
    pub reserved_micros: i64,
    /// Status.
    pub status: Option<i64>,
    /// Outcome.
    pub outcome: Option<String>,
    /// Attempts.
    pub attempts: Option<i64>,
    /// Error kind, if it failed.
    pub error_kind: Option<String>,
    /// Time to first token.
    pub ttft_ms: Option<f64>,
    /// Duration.
    pub duration_ms: Option<f64>,
    /// Settlement time.
    pub settled_ms: Option<i64>,
}

/// Grouping of usage reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    /// By tenant id.
    Tenant,
    /// By key id.
    Key,
    /// By feature.
    Feature,
    /// By route (client-facing model).
    Model,
    /// By backend.
    Backend,
}

impl GroupBy {
    fn column(self) -> &'static str {
        match self {
            Self::Tenant => "tenant_id",
            Self::Key => "key_id",
            Self::Feature => "feature",
            Self::Model => "route",
            Self::Backend => "COALESCE(backend, '')",
        }
    }
}

/// One line of a usage report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageLine {
    /// Start of the time bucket (Unix ms).
    pub bucket_ms: i64,
    /// The group's value.
    pub group: String,
    /// Requests.
    pub requests: i64,
    /// Prompt tokens.
    pub prompt_tokens: i64,
    /// Cached prompt tokens.
    pub cached_tokens: i64,
    /// Generated tokens.
    pub completion_tokens: i64,
    /// Cost, micro-dollars.
    pub cost_micros: i64,
}

fn holds_text(b: &[BudgetHold]) -> String {
    b.iter().map(|h| format!("{}|{}|{}", h.scope, h.scope_id, h.period)).collect::<Vec<_>>().join(";")
}

fn parse_holds(s: &str) -> Vec<(String, String, String)> {
    s.split(';')
        .filter(|p| !p.is_empty())
        .filter_map(|p| {
            let mut it = p.splitn(3, '|');
            Some((it.next()?.to_string(), it.next()?.to_string(), it.next()?.to_string()))
        })
        .collect()
}

fn limits(r: &AnyRow) -> Result<Limits, sqlx::Error> {
    Ok(Limits {
        rpm: r.try_get("rpm")?,
        tpm: r.try_get("tpm")?,
        concurrent: r.try_get("concurrent")?,
        usd_micros_per_day: r.try_get("usd_micros_per_day")?,
        usd_micros_per_month: r.try_get("usd_micros_per_month")?,
    })
}

impl Store {
    /// Sets (replaces) the limits of a scope; all-`None` removes them.
    pub async fn set_limits(&self, scope: &str, scope_id: &str, l: &Limits) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        sqlx::query("DELETE FROM limits WHERE scope = $1 AND scope_id = $2").bind(scope).bind(scope_id).execute(&mut *tx).await?;
        if !l.is_empty() {
            sqlx::query(
                "INSERT INTO limits (scope, scope_id, rpm, tpm, concurrent, usd_micros_per_day, usd_micros_per_month) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(scope)
            .bind(scope_id)
            .bind(l.rpm)
            .bind(l.tpm)
            .bind(l.concurrent)
            .bind(l.usd_micros_per_day)
            .bind(l.usd_micros_per_month)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Every scope with limits: `(scope, scope_id, limits)`.
    pub async fn all_limits(&self) -> Result<Vec<(String, String, Limits)>, StoreError> {
        let rows = sqlx::query("SELECT scope, scope_id, rpm, tpm, concurrent, usd_micros_per_day, usd_micros_per_month FROM limits ORDER BY scope, scope_id")
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(|r| Ok((r.try_get("scope")?, r.try_get("scope_id")?, limits(r)?))).collect::<Result<_, sqlx::Error>>().map_err(Into::into)
    }

    /// Registers (or re-registers) a running process.
    pub async fn heartbeat(&self, instance_id: &str, host: &str, pid: i64, now_ms: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO instances (id, host, pid, started_ms, heartbeat_ms) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (id) DO UPDATE SET heartbeat_ms = $6",
        )
        .bind(instance_id)
        .bind(host)
        .bind(pid)
        .bind(now_ms)
        .bind(now_ms)
        .bind(now_ms)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Processes on `host` that hold unsettled reservations or budget allowances: `(instance id, pid)`.
    pub async fn instances_with_reservations(&self, host: &str) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, pid FROM instances WHERE host = $1 AND (EXISTS (SELECT 1 FROM ledger WHERE ledger.instance_id = instances.id AND ledger.state = 'reserved') \
             OR EXISTS (SELECT 1 FROM budget_allowances a WHERE a.instance_id = instances.id))",
        )
        .bind(host)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(|r| Ok((r.try_get("id")?, r.try_get("pid")?))).collect::<Result<_, sqlx::Error>>().map_err(Into::into)
    }

    /// Reserves a request's worst case against its budgets and writes its ledger row, or
    /// says which budget is full (and writes nothing).
    pub async fn reserve(&self, r: &Reservation) -> Result<Result<(), BudgetFull>, StoreError> {
        let mut tx = self.pool().begin().await?;
        let out = reserve_in(&mut tx, r).await?;
        tx.commit().await?;
        Ok(out)
    }

    /// Settles a reserved request: its row gets the outcome, its budgets give back the
    /// reservation and take the cost. False when it was already settled (nothing changes).
    pub async fn settle(&self, s: &Settlement) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin().await?;
        let out = settle_many(&mut tx, std::slice::from_ref(s)).await?;
        tx.commit().await?;
        Ok(out.first().copied().unwrap_or(false))
    }

    /// Many reservations and settlements in one transaction (group commit): each reservation's
    /// answer as `reserve` would give it, each settlement as `settle`. All or nothing on a
    /// database error.
    pub async fn apply(
        &self,
        reservations: &[Reservation],
        settlements: &[Settlement],
    ) -> Result<(Vec<Result<(), BudgetFull>>, Vec<bool>), StoreError> {
        let mut tx = self.pool().begin().await?;
        let mut reserved = Vec::with_capacity(reservations.len());
        // Reservations without budgets are plain inserts: one statement for all of them (those
        // with budgets insert theirs after their holds succeed).
        let plain: Vec<&Reservation> = reservations.iter().filter(|r| r.budgets.is_empty() || r.allowance).collect();
        for chunk in plain.chunks(ROWS_PER_STATEMENT) {
            insert_reservations(&mut tx, chunk).await?;
        }
        for r in reservations {
            reserved.push(if r.budgets.is_empty() || r.allowance { Ok(()) } else { reserve_in(&mut tx, r).await? });
        }
        let settled = settle_many(&mut tx, settlements).await?;
        tx.commit().await?;
        Ok((reserved, settled))
    }

    /// Writes again what a process journaled before it stopped: reservation rows that are not
    /// in the store yet (journaled reservations hold no budgets) and settlements of rows still
    /// reserved. Running it twice changes nothing the second time. Returns rows settled.
    pub async fn restore(&self, reservations: &[Reservation], settlements: &[Settlement]) -> Result<u64, StoreError> {
        let mut tx = self.pool().begin().await?;
        let rows: Vec<&Reservation> = reservations.iter().collect();
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            insert_reservations_with(&mut tx, chunk, " ON CONFLICT (request_id) DO NOTHING").await?;
        }
        let settled = settle_many(&mut tx, settlements).await?;
        tx.commit().await?;
        Ok(settled.iter().filter(|s| **s).count() as u64)
    }

    /// Adds to `instance`'s allowance of budget `hold` up to `want`, never more than half of
    /// what the budget has left (so other processes still find room), and at least `need`
    /// (one request's worst case): else says to reserve per request, or that the budget is full.
    pub async fn take_allowance(&self, instance: &str, hold: &BudgetHold, need: i64, want: i64) -> Result<Grant, StoreError> {
        for _ in 0..3 {
            let mut tx = self.pool().begin().await?;
            // The insert comes first so the transaction holds the write lock before it reads.
            ensure_spend(&mut tx, hold).await?;
            let (spent, reserved) = read_spend(&mut tx, hold).await?;
            let room = hold.limit_micros - spent - reserved;
            if room < need {
                tx.commit().await?;
                return Ok(Grant::Full(BudgetFull { hold: hold.clone(), spent_micros: spent, reserved_micros: reserved }));
            }
            let grant = want.min(room / 2);
            if grant < need {
                tx.commit().await?;
                return Ok(Grant::Exact);
            }
            if !hold_spend(&mut tx, hold, grant).await? {
                continue; // another process took room meanwhile
            }
            sqlx::query(
                "INSERT INTO budget_allowances (instance_id, scope, scope_id, period, amount_micros) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (instance_id, scope, scope_id, period) DO UPDATE SET amount_micros = budget_allowances.amount_micros + excluded.amount_micros",
            )
            .bind(instance)
            .bind(&hold.scope)
            .bind(&hold.scope_id)
            .bind(&hold.period)
            .bind(grant)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            return Ok(Grant::Granted(grant));
        }
        Ok(Grant::Exact)
    }

    /// Gives `amount` of `instance`'s allowance of a budget back to it (a row left with nothing
    /// is removed).
    pub async fn return_allowance(&self, instance: &str, scope: &str, scope_id: &str, period: &str, amount: i64) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        // Lock order: `spend`, then the allowance (as settlement does).
        sqlx::query("UPDATE spend SET reserved_micros = reserved_micros - $1 WHERE scope = $2 AND scope_id = $3 AND period = $4")
            .bind(amount)
            .bind(scope)
            .bind(scope_id)
            .bind(period)
            .execute(&mut *tx)
            .await?;
        let held = sqlx::query(
            "UPDATE budget_allowances SET amount_micros = amount_micros - $1 WHERE instance_id = $2 AND scope = $3 AND scope_id = $4 AND period = $5",
        )
        .bind(amount)
        .bind(instance)
        .bind(scope)
        .bind(scope_id)
        .bind(period)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            > 0;
        if held {
            sqlx::query("DELETE FROM budget_allowances WHERE instance_id = $1 AND scope = $2 AND scope_id = $3 AND period = $4 AND amount_micros <= 0")
                .bind(instance)
                .bind(scope)
                .bind(scope_id)
                .bind(period)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
        Ok(())
    }

    /// Settles, at no cost, every reservation whose process has not beaten its heart since
    /// `stale_before_ms`, or is one of `dead` (known to have stopped); returns how many.
    pub async fn recover(&self, stale_before_ms: i64, dead: &[String], now_ms: i64) -> Result<u64, StoreError> {
        let mut orphans: Vec<String> = sqlx::query_scalar(
            "SELECT request_id FROM ledger WHERE state = 'reserved' AND NOT EXISTS \
             (SELECT 1 FROM instances i WHERE i.id = ledger.instance_id AND i.heartbeat_ms >= $1)",
        )
        .bind(stale_before_ms)
        .fetch_all(self.pool())
        .await?;
        for instance in dead {
            let ids: Vec<String> = sqlx::query_scalar("SELECT request_id FROM ledger WHERE state = 'reserved' AND instance_id = $1")
                .bind(instance)
                .fetch_all(self.pool())
                .await?;
            orphans.extend(ids);
        }
        let mut n = 0;
        for id in orphans {
            let s = Settlement {
                request_id: id,
                status: 0,
                outcome: "server_crashed".into(),
                error_kind: Some("server_crashed".into()),
                settled_ms: now_ms,
                ..Default::default()
            };
            if self.settle(&s).await? {
                n += 1;
            }
        }
        // What those processes still held of budget allowances goes back to the budgets.
        let mut holders: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT instance_id FROM budget_allowances WHERE NOT EXISTS \
             (SELECT 1 FROM instances i WHERE i.id = budget_allowances.instance_id AND i.heartbeat_ms >= $1)",
        )
        .bind(stale_before_ms)
        .fetch_all(self.pool())
        .await?;
        holders.extend(dead.iter().cloned());
        for instance in holders {
            let rows = sqlx::query("SELECT scope, scope_id, period, amount_micros FROM budget_allowances WHERE instance_id = $1")
                .bind(&instance)
                .fetch_all(self.pool())
                .await?;
            for r in rows {
                let (scope, scope_id, period, amount): (String, String, String, i64) =
                    (r.try_get("scope")?, r.try_get("scope_id")?, r.try_get("period")?, r.try_get("amount_micros")?);
                self.return_allowance(&instance, &scope, &scope_id, &period, amount).await?;
            }
        }
        Ok(n)
    }

    /// One ledger row.
    pub async fn ledger_row(&self, request_id: &str) -> Result<Option<LedgerRow>, StoreError> {
        let row = sqlx::query(&format!("SELECT {LEDGER_COLUMNS} FROM ledger WHERE request_id = $1"))
            .bind(request_id)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.as_ref().map(ledger_row).transpose()?)
    }

    /// Ledger rows created in `[from_ms, to_ms)`, oldest first.
    pub async fn ledger_rows(&self, from_ms: i64, to_ms: i64) -> Result<Vec<LedgerRow>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {LEDGER_COLUMNS} FROM ledger WHERE created_ms >= $1 AND created_ms < $2 ORDER BY created_ms, request_id"))
            .bind(from_ms)
            .bind(to_ms)
            .fetch_all(self.pool())
            .await?;
        Ok(rows.iter().map(ledger_row).collect::<Result<_, _>>()?)
    }

    /// Up to `limit` ledger rows created in `[from_ms, to_ms)`, newest first, of one tenant or
    /// (None) of all.
    pub async fn ledger_page(&self, tenant_id: Option<&str>, from_ms: i64, to_ms: i64, limit: i64) -> Result<Vec<LedgerRow>, StoreError> {
        let tenant_clause = if tenant_id.is_some() { "AND tenant_id = $4" } else { "" };
        let sql = format!(
            "SELECT {LEDGER_COLUMNS} FROM ledger WHERE created_ms >= $1 AND created_ms < $2 {tenant_clause} \
             ORDER BY created_ms DESC, request_id DESC LIMIT $3"
        );
        let mut q = sqlx::query(&sql).bind(from_ms).bind(to_ms).bind(limit);
        if let Some(t) = tenant_id {
            q = q.bind(t);
        }
        let rows = q.fetch_all(self.pool()).await?;
        Ok(rows.iter().map(ledger_row).collect::<Result<_, _>>()?)
    }

    /// The attempts of one request, in order.
    pub async fn ledger_attempts(&self, request_id: &str) -> Result<Vec<AttemptRow>, StoreError> {
        let rows = sqlx::query("SELECT backend, status, outcome, error, duration_ms FROM ledger_attempts WHERE request_id = $1 ORDER BY attempt")
            .bind(request_id)
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|r| {
                Ok(AttemptRow {
                    backend: r.try_get("backend")?,
                    status: r.try_get("status")?,
                    outcome: r.try_get("outcome")?,
                    error: r.try_get("error")?,
                    duration_ms: r.try_get("duration_ms")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// Money spent and held on one budget in one period.
    pub async fn spend(&self, scope: &str, scope_id: &str, period: &str) -> Result<(i64, i64), StoreError> {
        let row = sqlx::query("SELECT spent_micros, reserved_micros FROM spend WHERE scope = $1 AND scope_id = $2 AND period = $3")
            .bind(scope)
            .bind(scope_id)
            .bind(period)
            .fetch_optional(self.pool())
            .await?;
        Ok(match row {
            Some(r) => (r.try_get("spent_micros")?, r.try_get("reserved_micros")?),
            None => (0, 0),
        })
    }

    /// Settled usage in `[from_ms, to_ms)`, bucketed by `bucket_ms` and grouped, optionally of
    /// one tenant.
    pub async fn usage(
        &self,
        from_ms: i64,
        to_ms: i64,
        bucket_ms: i64,
        group_by: GroupBy,
        tenant_id: Option<&str>,
    ) -> Result<Vec<UsageLine>, StoreError> {
        let col = group_by.column();
        let filter = if tenant_id.is_some() { "AND tenant_id = $4" } else { "" };
        let sql = format!(
            "SELECT (created_ms - (created_ms % $1)) AS bucket, {col} AS grp, COUNT(*) AS requests, \
             CAST(COALESCE(SUM(prompt_tokens), 0) AS BIGINT) AS prompt, CAST(COALESCE(SUM(cached_tokens), 0) AS BIGINT) AS cached, \
             CAST(COALESCE(SUM(completion_tokens), 0) AS BIGINT) AS completion, CAST(COALESCE(SUM(cost_micros), 0) AS BIGINT) AS cost \
             FROM ledger WHERE state = 'settled' AND created_ms >= $2 AND created_ms < $3 {filter} \
             GROUP BY bucket, grp ORDER BY bucket, grp"
        );
        let mut q = sqlx::query(&sql).bind(bucket_ms.max(1)).bind(from_ms).bind(to_ms);
        if let Some(t) = tenant_id {
            q = q.bind(t);
        }
        let rows = q.fetch_all(self.pool()).await?;
        rows.iter()
            .map(|r| {
                Ok(UsageLine {
                    bucket_ms: r.try_get("bucket")?,
                    group: r.try_get("grp")?,
                    requests: r.try_get("requests")?,
                    prompt_tokens: r.try_get("prompt")?,
                    cached_tokens: r.try_get("cached")?,
                    completion_tokens: r.try_get("completion")?,
                    cost_micros: r.try_get("cost")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }
}

/// Rows per multi-row statement (well under both databases' parameter limits).
const ROWS_PER_STATEMENT: usize = 64;

/// `($a, $b, …), (…)` for `rows` rows of `cols` parameters, numbered from 1.
fn placeholders(rows: usize, cols: usize, literal_after: Option<(usize, &str)>) -> String {
    (0..rows)
        .map(|r| {
            let mut cells: Vec<String> = (1..=cols).map(|c| format!("${}", r * cols + c)).collect();
            if let Some((at, lit)) = literal_after {
                cells.insert(at, lit.to_string());
            }
            format!("({})", cells.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

async fn insert_reservations(tx: &mut sqlx::AnyConnection, rows: &[&Reservation]) -> Result<(), sqlx::Error> {
    insert_reservations_with(tx, rows, "").await
}

async fn insert_reservations_with(tx: &mut sqlx::AnyConnection, rows: &[&Reservation], on_conflict: &str) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "INSERT INTO ledger (request_id, created_ms, instance_id, state, tenant_id, key_id, feature, route, reserved_micros, budgets, allowance) VALUES {}{on_conflict}",
        placeholders(rows.len(), 10, Some((3, "'reserved'")))
    );
    let mut q = sqlx::query(&sql);
    for r in rows {
        q = q
            .bind(&r.request_id)
            .bind(r.created_ms)
            .bind(&r.instance_id)
            .bind(&r.tenant_id)
            .bind(&r.key_id)
            .bind(&r.feature)
            .bind(&r.route)
            .bind(r.reserved_micros)
            .bind(holds_text(&r.budgets))
            .bind(i64::from(r.allowance));
    }
    q.execute(&mut *tx).await?;
    Ok(())
}

/// Settles requests with a few statements whatever their number: one `UPDATE … FROM (VALUES …)` per chunk, one
/// update per budget touched, one insert of every attempt.
async fn settle_many(tx: &mut sqlx::AnyConnection, all: &[Settlement]) -> Result<Vec<bool>, sqlx::Error> {
    // A request listed twice settles once: the first occurrence.
    let mut first = std::collections::HashMap::new();
    for (i, s) in all.iter().enumerate() {
        first.entry(s.request_id.as_str()).or_insert(i);
    }
    let unique: Vec<&Settlement> = all.iter().enumerate().filter(|(i, s)| first[s.request_id.as_str()] == *i).map(|(_, s)| s).collect();
    let mut claimed: std::collections::HashMap<String, Claimed> = std::collections::HashMap::new();
    for chunk in unique.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "UPDATE ledger SET state = 'settled', backend = v.column2, model = v.column3, attempts = v.column4, prompt_tokens = v.column5, \
             cached_tokens = v.column6, completion_tokens = v.column7, cost_micros = v.column8, ttft_ms = v.column9, duration_ms = v.column10, \
             status = v.column11, outcome = v.column12, error_kind = v.column13, settled_ms = v.column14 \
             FROM (VALUES {}) AS v WHERE ledger.request_id = v.column1 AND ledger.state = 'reserved' \
             RETURNING ledger.request_id, ledger.reserved_micros, ledger.budgets, ledger.allowance, ledger.instance_id",
            placeholders(chunk.len(), 14, None)
        );
        let mut q = sqlx::query(&sql);
        for s in chunk {
            q = q
                .bind(&s.request_id)
                .bind(&s.backend)
                .bind(&s.model)
                .bind(s.attempts.len() as i64)
                .bind(s.prompt_tokens)
                .bind(s.cached_tokens)
                .bind(s.completion_tokens)
                .bind(s.cost_micros)
                .bind(s.ttft_ms)
                .bind(s.duration_ms)
                .bind(s.status)
                .bind(&s.outcome)
                .bind(s.error_kind.as_deref())
                .bind(s.settled_ms);
        }
        for row in q.fetch_all(&mut *tx).await? {
            let allowance: i64 = row.try_get("allowance")?;
            claimed.insert(
                row.try_get("request_id")?,
                Claimed {
                    reserved: row.try_get("reserved_micros")?,
                    budgets: row.try_get("budgets")?,
                    allowance: (allowance != 0).then(|| row.try_get("instance_id")).transpose()?,
                },
            );
        }
    }
    let attempts: Vec<(&str, i64, &AttemptRow)> = unique
        .iter()
        .filter(|s| claimed.contains_key(&s.request_id))
        .flat_map(|s| s.attempts.iter().enumerate().map(move |(i, a)| (s.request_id.as_str(), i as i64 + 1, a)))
        .collect();
    for chunk in attempts.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO ledger_attempts (request_id, attempt, backend, status, outcome, error, duration_ms) VALUES {}",
            placeholders(chunk.len(), 7, None)
        );
        let mut q = sqlx::query(&sql);
        for (id, n, a) in chunk {
            q = q.bind(*id).bind(*n).bind(&a.backend).bind(a.status).bind(&a.outcome).bind(a.error.as_deref()).bind(a.duration_ms);
        }
        q.execute(&mut *tx).await?;
    }
    // Budget rows last: their row locks (which admissions in other processes wait for) are
    // then held only until the commit that follows. Lock order everywhere: `spend` rows by
    // (scope, scope_id, period), each followed by its allowance rows.
    //
    // Per budget: what per-request holds give back, the cost taken, and what requests admitted
    // against allowances cost, per admitting process.
    type Touch = (i64, i64, std::collections::BTreeMap<String, i64>);
    let mut per_budget: std::collections::BTreeMap<(String, String, String), Touch> = Default::default();
    for s in &unique {
        if let Some(c) = claimed.get(&s.request_id) {
            for hold in parse_holds(&c.budgets) {
                let e = per_budget.entry(hold).or_default();
                e.1 += s.cost_micros;
                match &c.allowance {
                    // An allowance's cost leaves `reserved` for `spent`.
                    Some(instance) => *e.2.entry(instance.clone()).or_default() += s.cost_micros,
                    None => e.0 += c.reserved,
                }
            }
        }
    }
    for ((scope, scope_id, period), (reserved, cost, allowances)) in per_budget {
        let from_allowances: i64 = allowances.values().sum();
        sqlx::query(
            "UPDATE spend SET reserved_micros = reserved_micros - $1, spent_micros = spent_micros + $2 WHERE scope = $3 AND scope_id = $4 AND period = $5",
        )
        .bind(reserved + from_allowances)
        .bind(cost)
        .bind(&scope)
        .bind(&scope_id)
        .bind(&period)
        .execute(&mut *tx)
        .await?;
        for (instance, amount) in allowances {
            let held = sqlx::query(
                "UPDATE budget_allowances SET amount_micros = amount_micros - $1 WHERE instance_id = $2 AND scope = $3 AND scope_id = $4 AND period = $5",
            )
            .bind(amount)
            .bind(&instance)
            .bind(&scope)
            .bind(&scope_id)
            .bind(&period)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                > 0;
            if !held {
                // The allowance was given back already (its process was recovered): the cost
                // counts as spent, but it was no longer in `reserved`.
                sqlx::query("UPDATE spend SET reserved_micros = reserved_micros + $1 WHERE scope = $2 AND scope_id = $3 AND period = $4")
                    .bind(amount)
                    .bind(&scope)
                    .bind(&scope_id)
                    .bind(&period)
                    .execute(&mut *tx)
                    .await?;
            }
        }
    }
    Ok(all.iter().enumerate().map(|(i, s)| first[s.request_id.as_str()] == i && claimed.contains_key(&s.request_id)).collect())
}

/// A settled row's claim on budgets.
struct Claimed {
    reserved: i64,
    budgets: String,
    /// The admitting process, when admitted against its allowance.
    allowance: Option<String>,
}

/// Makes sure a budget's `spend` row exists (on SQLite this also takes the write lock).
async fn ensure_spend(tx: &mut sqlx::AnyConnection, h: &BudgetHold) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO spend (scope, scope_id, period, reserved_micros, spent_micros) VALUES ($1, $2, $3, 0, 0) ON CONFLICT (scope, scope_id, period) DO NOTHING",
    )
    .bind(&h.scope)
    .bind(&h.scope_id)
    .bind(&h.period)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// What a budget has spent and holds: `(spent, reserved)`.
async fn read_spend(tx: &mut sqlx::AnyConnection, h: &BudgetHold) -> Result<(i64, i64), sqlx::Error> {
    let row = sqlx::query("SELECT reserved_micros, spent_micros FROM spend WHERE scope = $1 AND scope_id = $2 AND period = $3")
        .bind(&h.scope)
        .bind(&h.scope_id)
        .bind(&h.period)
        .fetch_one(&mut *tx)
        .await?;
    Ok((row.try_get("spent_micros")?, row.try_get("reserved_micros")?))
}

/// Holds `amount` of a budget if it fits under the limit; false when it does not.
async fn hold_spend(tx: &mut sqlx::AnyConnection, h: &BudgetHold, amount: i64) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE spend SET reserved_micros = reserved_micros + $1 WHERE scope = $2 AND scope_id = $3 AND period = $4 AND spent_micros + reserved_micros + $5 <= $6",
    )
    .bind(amount)
    .bind(&h.scope)
    .bind(&h.scope_id)
    .bind(&h.period)
    .bind(amount)
    .bind(h.limit_micros)
    .execute(&mut *tx)
    .await?;
    Ok(done.rows_affected() > 0)
}

async fn reserve_in(tx: &mut sqlx::AnyConnection, r: &Reservation) -> Result<Result<(), BudgetFull>, sqlx::Error> {
    // Budget rows are locked in one order everywhere (settlement's), so two processes never
    // wait for each other's rows.
    let mut holds: Vec<&BudgetHold> = r.budgets.iter().collect();
    holds.sort_by(|a, b| (&a.scope, &a.scope_id, &a.period).cmp(&(&b.scope, &b.scope_id, &b.period)));
    for (i, h) in holds.iter().enumerate() {
        ensure_spend(tx, h).await?;
        if !hold_spend(tx, h, r.reserved_micros).await? {
            let (spent, reserved) = read_spend(tx, h).await?;
            let full = BudgetFull { hold: (*h).clone(), spent_micros: spent, reserved_micros: reserved };
            // Give back what this reservation already took from earlier budgets.
            for prev in &holds[..i] {
                sqlx::query("UPDATE spend SET reserved_micros = reserved_micros - $1 WHERE scope = $2 AND scope_id = $3 AND period = $4")
                    .bind(r.reserved_micros)
                    .bind(&prev.scope)
                    .bind(&prev.scope_id)
                    .bind(&prev.period)
                    .execute(&mut *tx)
                    .await?;
            }
            return Ok(Err(full));
        }
    }
    insert_reservations(tx, &[r]).await?;
    Ok(Ok(()))
}

const LEDGER_COLUMNS: &str = "request_id, created_ms, state, tenant_id, key_id, feature, route, backend, model, prompt_tokens, \
    cached_tokens, completion_tokens, cost_micros, reserved_micros, status, outcome, attempts, error_kind, ttft_ms, duration_ms, settled_ms";

fn ledger_row(r: &AnyRow) -> Result<LedgerRow, sqlx::Error> {
    Ok(LedgerRow {
        request_id: r.try_get("request_id")?,
        created_ms: r.try_get("created_ms")?,
        state: r.try_get("state")?,
        tenant_id: r.try_get("tenant_id")?,
        key_id: r.try_get("key_id")?,
        feature: r.try_get("feature")?,
        route: r.try_get("route")?,
        backend: r.try_get("backend")?,
        model: r.try_get("model")?,
        prompt_tokens: r.try_get("prompt_tokens")?,
        cached_tokens: r.try_get("cached_tokens")?,
        completion_tokens: r.try_get("completion_tokens")?,
        cost_micros: r.try_get("cost_micros")?,
        reserved_micros: r.try_get("reserved_micros")?,
        status: r.try_get("status")?,
        outcome: r.try_get("outcome")?,
        attempts: r.try_get("attempts")?,
        error_kind: r.try_get("error_kind")?,
        ttft_ms: r.try_get("ttft_ms")?,
        duration_ms: r.try_get("duration_ms")?,
        settled_ms: r.try_get("settled_ms")?,
    })
}
