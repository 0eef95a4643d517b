//! Fresh databases and paths for tests (this crate's and those built on it): a new SQLite file
//! or temporary path, and a new database on the PostgreSQL server named by
//! `SLUICE_TEST_POSTGRES_URL` (`make test` starts one with scripts/postgres.sh). Without that
//! variable the PostgreSQL half of a test is skipped, loudly, unless `SLUICE_REQUIRE_POSTGRES=1`
//! makes that a failure (as in CI).
//!
//! Names carry the test process's id (`{tag}_{pid}_{n}`). A test cannot reliably clean up after
//! itself (it may fail or be killed mid-way), so the first path or database a process asks for
//! sweeps away those of test processes that have exited: without that, every local test run
//! left its databases behind (a PostgreSQL database is a copy of its template, several MB each).

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

static N: AtomicU32 = AtomicU32::new(0);
static SWEPT_FILES: AtomicBool = AtomicBool::new(false);
static SWEPT_POSTGRES: AtomicBool = AtomicBool::new(false);

fn unique(tag: &str) -> String {
    format!("{tag}_{}_{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// Whether `name` (a file stem or database name) is one of [`unique`]'s from a process that
/// has exited. Only decidable where `/proc` lists live processes; elsewhere nothing is stale.
fn stale(name: &str) -> bool {
    let mut parts = name.rsplitn(3, '_');
    let (Some(n), Some(pid), Some(_tag)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let proc = std::path::Path::new("/proc");
    numeric(n) && numeric(pid) && proc.join("self").exists() && !proc.join(pid).exists()
}

/// A new path in the temporary directory (`sluice-{tag}_{pid}_{n}`), nothing there yet; the
/// test may make it a file or a directory.
pub fn temp_path(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir();
    if !SWEPT_FILES.swap(true, Ordering::Relaxed) {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            // A SQLite file's companions (`.db-wal`, `.db-shm`) go with it.
            let stem = name.strip_prefix("sluice-").map(|n| n.split_once('.').map_or(n, |(stem, _)| stem));
            if stem.is_some_and(stale) {
                let path = entry.path();
                let _ = if path.is_dir() { std::fs::remove_dir_all(path) } else { std::fs::remove_file(path) };
            }
        }
    }
    let path = dir.join(format!("sluice-{}", unique(tag)));
    let _ = std::fs::remove_dir_all(&path);
    let _ = std::fs::remove_file(&path);
    path
}

/// A URL of a new, empty SQLite file in the temporary directory.
pub fn sqlite_url(tag: &str) -> String {
    let path = temp_path(tag).with_extension("db");
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
    if !SWEPT_POSTGRES.swap(true, Ordering::Relaxed) {
        let names: Vec<String> = sqlx::query_scalar("SELECT datname::text FROM pg_database WHERE NOT datistemplate")
            .fetch_all(&mut admin)
            .await
            .unwrap_or_default();
        for old in names.iter().filter(|n| stale(n)) {
            // Best effort: another test process may be sweeping the same one.
            let _ = sqlx::Executor::execute(&mut admin, format!("DROP DATABASE IF EXISTS {old}").as_str()).await;
        }
    }
    sqlx::Executor::execute(&mut admin, format!("CREATE DATABASE {name}").as_str())
        .await
        .unwrap_or_else(|e| panic!("cannot create the test database {name}: {e}"));
    let root = base.rsplit_once('/').map_or(base.as_str(), |(r, _)| r);
    Some(format!("{root}/{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_of_exited_test_processes_are_stale() {
        if !std::path::Path::new("/proc/self").exists() {
            return;
        }
        // Above the largest pid Linux hands out (pid_max is at most 2^22).
        assert!(stale("store_4194305_0"));
        assert!(stale("http_coll_4194305_12"));
        assert!(!stale(&format!("store_{}_0", std::process::id())), "a live process's name");
        assert!(!stale("store_1_0"), "pid 1 is alive");
        for other in ["sluice_test", "postgres", "bench_4194305", "store_x_0", "store_4194305_", "_4194305_1x"] {
            assert!(!stale(other), "{other}");
        }
    }
}
