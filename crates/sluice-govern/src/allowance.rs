//! Budget allowances: a process reserves a slice of a budget in the store once, then admits
//! requests against it in memory, so a request under a budget costs no database round trip.
//!
//! The store holds every slice in the budget's `reserved` (and per process in
//! `budget_allowances`), so `spent + reserved <= limit` holds across processes exactly as with
//! per-request reservations: what one process holds, no other can spend. A slice is at most half
//! of what the budget has left; where even that is below one request's worst case, admission
//! falls back to reserving per request, so a budget can still be used to its last cent.
//! Slices idle for [`IDLE_RETURN`] are given back; a stopped process's slices are given back by
//! recovery.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sluice_store::{BudgetFull, BudgetHold, Grant, Store, StoreError};
use tokio::sync::{mpsc, oneshot};

/// A request for a new slice, carried out by the ledger's writer between its batches: the
/// writer holds the budget rows' locks in its own transactions, so a slice taken on another
/// connection would wait for them (and, on SQLite, sleep in the busy handler).
pub(crate) struct Refill {
    pub(crate) hold: BudgetHold,
    pub(crate) need: i64,
    pub(crate) want: i64,
    pub(crate) reply: oneshot::Sender<Result<Grant, StoreError>>,
}

/// Where refills go.
pub(crate) type Refills = mpsc::UnboundedSender<Refill>;

async fn ask(refills: &Refills, hold: &BudgetHold, need: i64, want: i64) -> Result<Grant, StoreError> {
    let (reply, answer) = oneshot::channel();
    refills.send(Refill { hold: hold.clone(), need, want, reply }).map_err(|_| StoreError::Io("the ledger writer stopped".into()))?;
    answer.await.map_err(|_| StoreError::Io("the ledger writer stopped".into()))?
}

/// A slice covers this many worst-case requests.
const SLICE_REQUESTS: i64 = 1024;
/// Unused slices are given back after this long without an admission.
pub(crate) const IDLE_RETURN: Duration = Duration::from_secs(2);

type Key = (String, String, String);

fn key(h: &BudgetHold) -> Key {
    (h.scope.clone(), h.scope_id.clone(), h.period.clone())
}

#[derive(Debug)]
struct Slice {
    /// Held in the store and not promised to any request.
    available: i64,
    used: Instant,
    /// Below this, a new slice is asked for in the background (half the last one).
    low_water: i64,
}

/// What admission decided.
pub(crate) enum Taken {
    /// Taken from this process's allowances; `top_up`: a slice ran low, ask for more now.
    Yes { top_up: bool },
    /// A budget is too close to its limit for slices: reserve per request.
    PerRequest,
    /// A budget has no room.
    Full(BudgetFull),
}

/// This process's allowances.
#[derive(Debug, Default)]
pub(crate) struct Allowances {
    slices: Mutex<HashMap<Key, Slice>>,
    /// Requests admitted against allowances: their budgets and worst case.
    admitted: Mutex<HashMap<String, (Vec<Key>, i64)>>,
    /// One refill at a time.
    refill: tokio::sync::Mutex<()>,
}

impl Allowances {
    /// Takes `worst` from every slice of `holds` if all have it; `Some(low)` says whether one
    /// ran low.
    fn try_take(&self, request_id: &str, holds: &[BudgetHold], worst: i64) -> Option<bool> {
        let Ok(mut slices) = self.slices.lock() else { return None };
        if !holds.iter().all(|h| slices.get(&key(h)).is_some_and(|s| s.available >= worst)) {
            return None;
        }
        let now = Instant::now();
        let mut low = false;
        for h in holds {
            if let Some(s) = slices.get_mut(&key(h)) {
                s.available -= worst;
                s.used = now;
                low |= s.available < s.low_water;
            }
        }
        drop(slices);
        if let Ok(mut a) = self.admitted.lock() {
            a.insert(request_id.to_string(), (holds.iter().map(key).collect(), worst));
        }
        Some(low)
    }

    fn available(&self, h: &BudgetHold) -> i64 {
        self.slices.lock().ok().and_then(|s| s.get(&key(h)).map(|s| s.available)).unwrap_or(0)
    }

    fn add(&self, h: &BudgetHold, amount: i64) {
        if let Ok(mut slices) = self.slices.lock() {
            let s = slices.entry(key(h)).or_insert(Slice { available: 0, used: Instant::now(), low_water: 0 });
            s.available += amount;
            s.low_water = amount / 2;
        }
    }

    /// Admits `request_id` (worst case `worst`) against every budget in `holds`, asking the
    /// store for a new slice where this process has too little left.
    pub(crate) async fn take(&self, refills: &Refills, request_id: &str, holds: &[BudgetHold], worst: i64) -> Result<Taken, StoreError> {
        if let Some(low) = self.try_take(request_id, holds, worst) {
            return Ok(Taken::Yes { top_up: low });
        }
        let _one = self.refill.lock().await;
        if let Some(low) = self.try_take(request_id, holds, worst) {
            return Ok(Taken::Yes { top_up: low });
        }
        for h in holds {
            let have = self.available(h);
            if have >= worst {
                continue;
            }
            match ask(refills, h, worst - have, worst.max(1) * SLICE_REQUESTS).await? {
                Grant::Granted(n) => self.add(h, n),
                Grant::Exact => return Ok(Taken::PerRequest),
                Grant::Full(full) => return Ok(Taken::Full(full)),
            }
        }
        Ok(match self.try_take(request_id, holds, worst) {
            Some(low) => Taken::Yes { top_up: low },
            None => Taken::PerRequest,
        })
    }

    /// Asks for a new slice of every budget in `holds` that ran low, before requests find it
    /// empty. Skipped while another refill runs.
    pub(crate) async fn top_up(&self, refills: &Refills, holds: &[BudgetHold], worst: i64) {
        let Ok(_one) = self.refill.try_lock() else { return };
        for h in holds {
            let low = self.slices.lock().ok().and_then(|s| s.get(&key(h)).map(|s| s.available < s.low_water)).unwrap_or(true);
            if !low {
                continue;
            }
            match ask(refills, h, worst.max(1), worst.max(1) * SLICE_REQUESTS).await {
                Ok(Grant::Granted(n)) => self.add(h, n),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot top up a budget allowance"),
            }
        }
    }

    /// Settles a request admitted against allowances: what its cost left of its worst case is
    /// available again. False when it was not admitted here.
    pub(crate) fn settle(&self, request_id: &str, cost: i64) -> bool {
        let Some((keys, worst)) = self.admitted.lock().ok().and_then(|mut a| a.remove(request_id)) else { return false };
        if let Ok(mut slices) = self.slices.lock() {
            for k in keys {
                // A slice given back meanwhile is opened again: the store still holds this part.
                let s = slices.entry(k).or_insert(Slice { available: 0, used: Instant::now(), low_water: 0 });
                s.available += (worst - cost).max(0);
            }
        }
        true
    }

    /// Forgets a request admitted against allowances whose admission was undone before it ran.
    pub(crate) fn undo(&self, request_id: &str) {
        self.settle(request_id, 0);
    }

    /// Gives back to the store what slices unused for [`IDLE_RETURN`] (or `all`) still hold.
    pub(crate) async fn give_back(&self, store: &Store, instance: &str, all: bool) {
        let idle: Vec<(Key, i64)> = {
            let Ok(mut slices) = self.slices.lock() else { return };
            let keys: Vec<Key> = slices.iter().filter(|(_, s)| all || s.used.elapsed() >= IDLE_RETURN).map(|(k, _)| k.clone()).collect();
            keys.into_iter().filter_map(|k| slices.remove(&k).map(|s| (k, s.available))).collect()
        };
        for ((scope, scope_id, period), amount) in idle {
            if amount <= 0 {
                continue;
            }
            if let Err(e) = store.return_allowance(instance, &scope, &scope_id, &period, amount).await {
                // Still held in the store: recovery gives it back when this process stops.
                tracing::warn!(error = %e, scope, scope_id, period, "cannot give a budget allowance back");
            }
        }
    }
}
