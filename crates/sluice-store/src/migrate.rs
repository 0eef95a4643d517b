//! Migrations: numbered SQL files compiled into the binary, applied in order, each in its own
//! transaction together with its row in `sluice_migrations`. Processes starting at once are
//! serialised: on PostgreSQL by an advisory lock held for the whole run, on SQLite by its single
//! writer (and the busy timeout).

use sqlx::{AnyConnection, Connection};

use crate::{Backend, Store, StoreError};

/// Every migration, in order.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "0001_tenants_and_keys.sql", include_str!("../migrations/0001_tenants_and_keys.sql")),
    (2, "0002_ledger_and_limits.sql", include_str!("../migrations/0002_ledger_and_limits.sql")),
    (3, "0003_audit.sql", include_str!("../migrations/0003_audit.sql")),
    (4, "0004_logging_policy.sql", include_str!("../migrations/0004_logging_policy.sql")),
    (5, "0005_auth_epoch.sql", include_str!("../migrations/0005_auth_epoch.sql")),
    (6, "0006_budget_allowances.sql", include_str!("../migrations/0006_budget_allowances.sql")),
];

/// Arbitrary, fixed: "sluice" in ASCII.
const LOCK_ID: i64 = 0x736c_7569_6365;

async fn applied(conn: &mut AnyConnection, version: i64) -> Result<bool, StoreError> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sluice_migrations WHERE version = $1").bind(version).fetch_one(&mut *conn).await?;
    Ok(n > 0)
}

/// Applies every migration newer than the database.
pub async fn run(store: &Store) -> Result<(), StoreError> {
    run_list(store, MIGRATIONS).await
}

/// Applies the migrations of `list` (version, name, SQL) newer than the database, under the
/// same lock and bookkeeping as the store's own. Other crates keep their schema this way, in
/// their own version range, with SQL chosen for the store's backend.
pub async fn run_list(store: &Store, list: &[(i64, &'static str, &'static str)]) -> Result<(), StoreError> {
    let mut conn = store.pool().acquire().await?;
    if store.backend() == Backend::Postgres {
        sqlx::query("SELECT pg_advisory_lock($1)").bind(LOCK_ID).execute(&mut *conn).await?;
    }
    let result = apply(&mut conn, list).await;
    if store.backend() == Backend::Postgres {
        sqlx::query("SELECT pg_advisory_unlock($1)").bind(LOCK_ID).execute(&mut *conn).await?;
    }
    result
}

async fn apply(conn: &mut AnyConnection, list: &[(i64, &'static str, &'static str)]) -> Result<(), StoreError> {
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS sluice_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_ms BIGINT NOT NULL)",
    )
    .execute(&mut *conn)
    .await?;
    for &(version, name, sql) in list {
        if applied(conn, version).await? {
            continue;
        }
        let result: Result<(), sqlx::Error> = async {
            let mut tx = conn.begin().await?;
            sqlx::query("INSERT INTO sluice_migrations (version, name, applied_ms) VALUES ($1, $2, $3)")
                .bind(version)
                .bind(name)
                .bind(crate::now_ms())
                .execute(&mut *tx)
                .await?;
            sqlx::raw_sql(sql).execute(&mut *tx).await?;
            tx.commit().await
        }
        .await;
        match result {
            Ok(()) => tracing::info!(version, name, "migration applied"),
            Err(_) if applied(conn, version).await? => {} // another process applied it
            Err(source) => return Err(StoreError::Migration { version, name, source }),
        }
    }
    Ok(())
}
