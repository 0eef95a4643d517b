//! The store suite, run against SQLite and PostgreSQL alike. PostgreSQL comes from
//! `SLUICE_TEST_POSTGRES_URL` (`make test` starts one with scripts/postgres.sh); each test gets a
//! fresh database of its own. Without the variable the PostgreSQL half is skipped, loudly, unless
//! `SLUICE_REQUIRE_POSTGRES=1` makes that a failure (as in CI).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code may unwrap")]

mod ledger;
mod tenants;

use sluice_store::Store;

/// A fresh SQLite file.
pub fn sqlite_url() -> String {
    sluice_store::testing::sqlite_url("store")
}

/// A fresh PostgreSQL database, or None when no server is configured.
pub async fn postgres_url() -> Option<String> {
    sluice_store::testing::postgres_url("t").await
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
