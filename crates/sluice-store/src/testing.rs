//! Fresh databases for tests (this crate's and those built on it): a new SQLite file, and a new
//! database on the PostgreSQL server named by `SLUICE_TEST_POSTGRES_URL` (`make test` starts one
//! with scripts/postgres.sh). Without that variable the PostgreSQL half of a test is skipped,
//! loudly, unless `SLUICE_REQUIRE_POSTGRES=1` makes that a failure (as in CI).

use std::sync::atomic::{AtomicU32, Ordering};

static N: AtomicU32 = AtomicU32::new(0);

fn unique(tag: &str) -> String {
    format!("{tag}_{}_{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// A URL of a new, empty SQLite file in the temporary directory.
pub fn sqlite_url(tag: &str) -> String {
    let path = std::env::temp_dir().join(format!("sluice-{}.db", unique(tag)));
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", path.display()));
    }
    format!("sqlite://{}", path.display())
}

/// A URL of a new, empty PostgreSQL database, or `None` when no server is configured.
///
/// # Panics
/// When `SLUICE_REQUIRE_POSTGRES=1` and no server is configured, or the server refuses.
#[expect(clippy::panic, reason = "test support: a broken test database must fail the test loudly")]
pub async fn postgres_url(tag: &str) -> Option<String> {
    let Ok(base) = std::env::var("SLUICE_TEST_POSTGRES_URL") else {
        if std::env::var("SLUICE_REQUIRE_POSTGRES").as_deref() == Ok("1") {
            panic!("SLUICE_REQUIRE_POSTGRES=1 but SLUICE_TEST_POSTGRES_URL is not set");
        }
        eprintln!("SKIPPED: PostgreSQL half (set SLUICE_TEST_POSTGRES_URL, e.g. from scripts/postgres.sh start)");
        return None;
    };
    sqlx::any::install_default_drivers();
    let name = unique(tag);
    let mut admin = <sqlx::AnyConnection as sqlx::Connection>::connect(&base)
        .await
        .unwrap_or_else(|e| panic!("cannot reach the test PostgreSQL: {e}"));
    sqlx::Executor::execute(&mut admin, format!("CREATE DATABASE {name}").as_str())
        .await
        .unwrap_or_else(|e| panic!("cannot create the test database {name}: {e}"));
    let root = base.rsplit_once('/').map_or(base.as_str(), |(r, _)| r);
    Some(format!("{root}/{name}"))
}
