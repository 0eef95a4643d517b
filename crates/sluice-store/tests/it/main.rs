//! The store suite, run against SQLite and PostgreSQL alike. PostgreSQL comes from
//! `SLUICE_TEST_POSTGRES_URL` (`make test` starts one with scripts/postgres.sh); each test gets a
//! fresh database of its own. Without the variable the PostgreSQL half is skipped, loudly, unless
//! `SLUICE_REQUIRE_POSTGRES=1` makes that a failure (as in CI).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code may unwrap")]

mod ledger;
mod tenants;

use std::sync::atomic::{AtomicU32, Ordering};

use sluice_store::Store;

static N: AtomicU32 = AtomicU32::new(0);

/// A fresh SQLite file.
pub fn sqlite_url() -> String {
    let n = N.fetch_add(1, Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("sluice-store-{}-{n}.db", std::process::id()));
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", path.display()));
    }
    format!("sqlite://{}", path.display())
}

/// A fresh PostgreSQL database, or None when no server is configured.
pub async fn postgres_url() -> Option<String> {
    let Ok(base) = std::env::var("SLUICE_TEST_POSTGRES_URL") else {
        assert!(
            std::env::var("SLUICE_REQUIRE_POSTGRES").as_deref() != Ok("1"),
            "SLUICE_REQUIRE_POSTGRES=1 but SLUICE_TEST_POSTGRES_URL is not set"
        );
        eprintln!("SKIPPED: PostgreSQL half (set SLUICE_TEST_POSTGRES_URL, e.g. from scripts/postgres.sh start)");
        return None;
    };
    sqlx::any::install_default_drivers();
    let name = format!("t_{}_{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
    let mut admin = <sqlx::AnyConnection as sqlx::Connection>::connect(&base).await.unwrap();
    sqlx::Executor::execute(&mut admin, format!("CREATE DATABASE {name}").as_str()).await.unwrap();
    let (root, _) = base.rsplit_once('/').unwrap();
    Some(format!("{root}/{name}"))
}

/// Runs `test` against a fresh SQLite store and, when available, a fresh PostgreSQL store.
#[macro_export]
macro_rules! both {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test]
            async fn sqlite() {
                let url = $crate::sqlite_url();
                ($body)(url).await;
            }
            #[tokio::test]
            async fn postgres() {
                if let Some(url) = $crate::postgres_url().await {
                    ($body)(url).await;
                }
            }
        }
    };
}

pub async fn open(url: &str) -> Store {
    Store::open(url).await.unwrap()
}
