//! Persistence for tenants, API keys, limits and the cost ledger. One set of migrations in
//! portable SQL runs on SQLite (embedded, WAL mode: the default) and PostgreSQL (shared by several
//! gateway processes), through sqlx's `Any` driver; queries use `$N` placeholders, which both
//! accept. The store is plain data access: policy lives in `sluice-govern`.

mod audit;
mod ledger;
pub mod migrate;
mod tenants;
#[doc(hidden)]
pub mod testing;

use std::path::Path;
use std::time::Duration;

use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;

pub use audit::{AuditCheckpoint, AuditEntry, NewAuditEntry};
pub use ledger::{AttemptRow, BudgetFull, BudgetHold, Grant, GroupBy, LedgerRow, Limits, Reservation, Settlement, UsageLine};
pub use tenants::{KeyRecord, Tenant};

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database URL is not one we can open.
    #[error("unsupported database URL {0:?} (use sqlite://PATH or postgres://...)")]
    BadUrl(String),
    /// The database refused or failed.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration {version} ({name}) failed: {source}")]
    Migration {
        /// Its number.
        version: i64,
        /// Its file name.
        name: &'static str,
        /// Why.
        source: sqlx::Error,
    },
    /// A row that must be unique already exists.
    #[error("{0} already exists")]
    Conflict(String),
    /// Filesystem trouble around an SQLite file.
    #[error("{0}")]
    Io(String),
}

impl StoreError {
    /// Stable label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::BadUrl(_) => "bad_url",
            Self::Db(_) => "db",
            Self::Migration { .. } => "migration",
            Self::Conflict(_) => "conflict",
            Self::Io(_) => "io",
        }
    }

    /// Whether retrying may help (a busy or unreachable database).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Db(sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed))
    }
}

/// Which database is behind the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// An SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

/// The store: a connection pool over a migrated database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

impl Store {
    /// Opens `url` (`sqlite://PATH` — the file is created — or `postgres://...`) and applies
    /// pending migrations.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        Self::open_with(url, true).await
    }

    /// Like [`Store::open`]; with `checkpoints` false, an SQLite store leaves WAL checkpoints
    /// to another store of this process on the same file (one checkpointer is enough, and it
    /// can then run where it disturbs requests least).
    pub async fn open_with(url: &str, checkpoints: bool) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(StoreError::BadUrl(url.to_string()));
        };
        let url = match backend {
            Backend::Sqlite => {
                let path = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
                let path = path.split('?').next().unwrap_or(path);
                if let Some(dir) = Path::new(path).parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| StoreError::Io(format!("cannot create {}: {e}", dir.display())))?;
                }
                format!("sqlite://{path}?mode=rwc")
            }
            Backend::Postgres => url.to_string(),
        };
        let mut opts = AnyPoolOptions::new().acquire_timeout(Duration::from_secs(10));
        if backend == Backend::Sqlite {
            // One writer at a time is SQLite's nature; WAL lets readers run alongside it, and the
            // busy timeout makes writers queue instead of failing.
            opts = opts.max_connections(8).after_connect(|conn, _| {
                Box::pin(async move {
                    use sqlx::Executor;
                    // Checkpoints (which sync the database file) run in the background, not in
                    // whichever commit happens to cross the WAL threshold.
                    for pragma in [
                        "PRAGMA journal_mode=WAL",
                        "PRAGMA busy_timeout=10000",
                        "PRAGMA synchronous=NORMAL",
                        "PRAGMA foreign_keys=ON",
                        "PRAGMA wal_autocheckpoint=0",
                    ] {
                        conn.execute(pragma).await?;
                    }
                    Ok(())
                })
            });
        } else {
            opts = opts.max_connections(16);
        }
        let pool = opts.connect(&url).await?;
        let store = Self { pool, backend };
        migrate::run(&store).await?;
        if backend == Backend::Sqlite && checkpoints {
            let pool = store.pool.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(500));
                loop {
                    tick.tick().await;
                    if pool.is_closed() {
                        return;
                    }
                    if let Err(e) = sqlx::raw_sql("PRAGMA wal_checkpoint(PASSIVE)").execute(&pool).await {
                        tracing::debug!(error = %e, "WAL checkpoint failed");
                    }
                }
            });
        }
        Ok(store)
    }

    /// The database kind.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The pool, for crates that add their own queries.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }
}

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
