//! A thread of lower scheduling priority with its own async runtime and its own store
//! connections, for the writers behind the request path (the ledger's and the audit trail's).
//! Their database work — SQLite's connection threads are started from here and inherit the
//! priority — then yields the CPU to requests being answered instead of competing with them,
//! which is what keeps the governance overhead off the latency tail when cores are few.

use sluice_store::{Store, StoreError};
use tokio::runtime::Handle;

/// Niceness of the background thread (0 is normal, 19 the lowest priority).
const NICE: i32 = 10;

/// The background runtime and the store opened on it.
#[derive(Debug, Clone)]
pub struct Background {
    handle: Handle,
    store: Store,
}

/// Lowers the calling thread's priority (on Linux the nice value is per thread).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: setpriority has no memory-safety preconditions; who = 0 is the calling thread.
        let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, NICE) };
        if rc != 0 {
            tracing::debug!("cannot lower the background thread's priority");
        }
    }
}

impl Background {
    /// Starts the thread and opens `database_url` on it.
    pub async fn start(database_url: &str) -> Result<Self, StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let url = database_url.to_string();
        std::thread::Builder::new()
            .name("sluice-background".into())
            .spawn(move || {
                lower_priority();
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(StoreError::Io(format!("cannot start the background runtime: {e}"))));
                        return;
                    }
                };
                let opened = rt.block_on(Store::open(&url)).map(|store| Self { handle: rt.handle().clone(), store });
                let failed = opened.is_err();
                let _ = tx.send(opened);
                if !failed {
                    rt.block_on(std::future::pending::<()>());
                }
            })
            .map_err(|e| StoreError::Io(format!("cannot start the background thread: {e}")))?;
        rx.await.map_err(|_| StoreError::Io("the background thread stopped".into()))?
    }

    /// The store whose connections live on the background thread.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Runs `task` on the background thread.
    pub fn spawn<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.handle.spawn(task);
    }
}
