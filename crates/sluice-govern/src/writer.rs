//! The ledger's writer: the one task that commits ledger rows to the store, in batches, and
//! takes budget slices between them (see [`crate::allowance`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sluice_store::{BudgetFull, Reservation, Settlement, Store, StoreError};
use tokio::sync::{mpsc, oneshot};

use crate::allowance::Refill;
use crate::journal::Journal;

/// Most ledger writes committed together.
const MAX_BATCH: usize = 256;
/// Tries of a write the store refuses before it is left to recovery.
const SETTLE_TRIES: u32 = 6;

pub(crate) type ReserveReply = oneshot::Sender<Result<Result<(), BudgetFull>, String>>;

/// A ledger write for the writer task.
pub(crate) enum Write {
    Reserve(Reservation),
    Settle(Settlement),
}

pub(crate) struct Op {
    write: Write,
    /// Someone waits for a reservation's answer.
    reply: Option<ReserveReply>,
    /// The journal segment holding it, if journaled.
    journal: Option<u64>,
    /// Failed tries so far.
    tries: u32,
}

impl Op {
    pub(crate) fn new(write: Write, reply: Option<ReserveReply>, journal: Option<u64>) -> Self {
        Self { write, reply, journal, tries: 0 }
    }
}

/// Longest pause between tries while the store is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Commits `ops` in one transaction; answers the reservations that wait and tells the journal.
async fn commit(store: &Store, journal: Option<&Journal>, ops: Vec<Op>) -> Result<(), (StoreError, Vec<Op>)> {
    let mut reservations = Vec::new();
    let mut settlements = Vec::new();
    for op in &ops {
        match &op.write {
            Write::Reserve(row) => reservations.push(row.clone()),
            Write::Settle(row) => settlements.push(row.clone()),
        }
    }
    let answers = match store.apply(&reservations, &settlements).await {
        Ok((answers, _)) => answers,
        Err(e) => return Err((e, ops)),
    };
    let mut answers = answers.into_iter();
    let mut done: HashMap<u64, usize> = HashMap::new();
    for op in ops {
        if let Some(seg) = op.journal {
            *done.entry(seg).or_default() += 1;
        }
        if let Write::Reserve(_) = op.write {
            let a = answers.next().unwrap_or(Ok(()));
            if let Some(reply) = op.reply {
                let _ = reply.send(Ok(a));
            }
        }
    }
    if let Some(j) = journal {
        for (seg, n) in done {
            j.committed(seg, n);
        }
    }
    Ok(())
}

/// How long the writer gathers writes nobody waits for before committing them: one
/// transaction then serves many requests (each commit rewrites whole pages into SQLite's WAL,
/// and wakes threads), and a request's reservation and settlement often land in one.
const LINGER: Duration = Duration::from_millis(10);

/// Gathers more writes for up to [`LINGER`]; stops early for one someone waits for, a slice
/// request, or a full batch.
async fn linger(rx: &mut mpsc::UnboundedReceiver<Op>, carried: &mut std::collections::VecDeque<Op>, refills: &mpsc::UnboundedReceiver<Refill>) {
    let until = tokio::time::Instant::now() + LINGER;
    while carried.len() < MAX_BATCH && refills.is_empty() {
        match tokio::time::timeout_at(until, rx.recv()).await {
            Ok(Some(op)) => {
                let waits = op.reply.is_some();
                carried.push_back(op);
                if waits {
                    return;
                }
            }
            Ok(None) | Err(_) => return,
        }
    }
}

/// What the writer needs besides the store and its queue.
pub(crate) struct Writer {
    /// This process (allowances are taken in its name).
    pub(crate) instance: String,
    pub(crate) journal: Option<Arc<Journal>>,
    pub(crate) refills: mpsc::UnboundedReceiver<Refill>,
}

/// The one task that writes the ledger: it takes whatever writes are waiting and commits them
/// in one transaction (group commit), so under load a commit serves many requests.
///
/// When a batch fails, its writes are tried one by one, so one bad row cannot hold back the
/// others. A reservation someone waits for is answered with the error; other writes are kept,
/// in order, for the next batch: while the store is unreachable for as long as it takes (they
/// are in the journal meanwhile, or their requests' rows would otherwise be missing); a write
/// the store refuses is dropped after [`SETTLE_TRIES`] tries and left to recovery.
pub(crate) async fn writer(store: Store, mut w: Writer, mut rx: mpsc::UnboundedReceiver<Op>) {
    let journal = w.journal.take();
    let mut carried: std::collections::VecDeque<Op> = Default::default();
    let mut failures = 0u32;
    loop {
        // Slices of budgets first: requests may be waiting for them.
        while let Ok(r) = w.refills.try_recv() {
            let _ = r.reply.send(store.take_allowance(&w.instance, &r.hold, r.need, r.want).await);
        }
        if carried.is_empty() {
            tokio::select! {
                biased;
                Some(r) = w.refills.recv() => {
                    let _ = r.reply.send(store.take_allowance(&w.instance, &r.hold, r.need, r.want).await);
                    continue;
                }
                first = rx.recv() => {
                    let Some(first) = first else { return };
                    let waits = first.reply.is_some();
                    carried.push_back(first);
                    if !waits {
                        linger(&mut rx, &mut carried, &w.refills).await;
                    }
                }
            }
        }
        while carried.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => carried.push_back(op),
                Err(_) => break,
            }
        }
        let batch: Vec<Op> = carried.drain(..).collect();
        let Err((e, ops)) = commit(&store, journal.as_deref(), batch).await else {
            failures = 0;
            continue;
        };
        tracing::warn!(error = %e, writes = ops.len(), "ledger batch failed; trying its writes one by one");
        // Requests whose reservation stays behind: their settlements must not go first.
        let mut held_back = std::collections::HashSet::new();
        for op in ops {
            if let Write::Settle(s) = &op.write
                && held_back.contains(&s.request_id)
            {
                carried.push_back(op);
                continue;
            }
            let Err((e, mut ops)) = commit(&store, journal.as_deref(), vec![op]).await else { continue };
            let Some(mut op) = ops.pop() else { continue };
            if let Some(reply) = op.reply.take() {
                // The request waits: it gets an answer now, not after the store is back.
                let _ = reply.send(Err(e.to_string()));
                continue;
            }
            op.tries += 1;
            if op.tries >= SETTLE_TRIES && !e.is_retryable() {
                let id = match &op.write {
                    Write::Reserve(r) => &r.request_id,
                    Write::Settle(s) => &s.request_id,
                };
                tracing::error!(error = %e, request_id = %id, "the store keeps refusing a ledger write; dropped, recovery settles the request");
                if let (Some(j), Some(seg)) = (journal.as_deref(), op.journal) {
                    j.committed(seg, 1);
                }
                continue;
            }
            if let Write::Reserve(r) = &op.write {
                held_back.insert(r.request_id.clone());
            }
            carried.push_back(op);
        }
        if !carried.is_empty() {
            failures += 1;
            tokio::time::sleep((Duration::from_millis(50) * 2u32.saturating_pow(failures.min(7))).min(MAX_BACKOFF)).await;
        }
    }
}

