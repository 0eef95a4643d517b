//! Budget allowances: requests under a budget admitted in memory against slices reserved in
//! the store, by several processes at once, never spend past the budget; slices of a stopped
//! process go back to the budget.

use std::time::Duration;

use sluice_govern::{AdmitError, AdmitRequest, Ledger, SettleRequest};
use sluice_store::{Limits, Settlement, Store};

use crate::{empty_dir, stores};

const WORST: i64 = 1_000;

fn admit(id: &str) -> AdmitRequest {
    AdmitRequest {
        request_id: id.into(),
        tenant_id: "t1".into(),
        key_id: "k1".into(),
        feature: "f".into(),
        route: "m".into(),
        prompt_tokens: 10,
        max_tokens: 10,
        worst_case_micros: WORST,
    }
}

fn settle(id: &str, cost: i64) -> SettleRequest {
    SettleRequest {
        tenant_id: "t1".into(),
        key_id: "k1".into(),
        feature: "f".into(),
        admitted_tokens: 20,
        settlement: Settlement { request_id: id.into(), cost_micros: cost, status: 200, outcome: "ok".into(), settled_ms: sluice_store::now_ms(), ..Default::default() },
    }
}

fn day() -> String {
    sluice_govern::periods(sluice_store::now_ms()).0.0
}

async fn settled(store: &Store, n: usize) {
    let t0 = std::time::Instant::now();
    loop {
        let rows = store.ledger_rows(0, i64::MAX).await.unwrap();
        if rows.len() >= n && rows.iter().all(|r| r.state == "settled") {
            return;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "rows settled: {}", rows.iter().filter(|r| r.state == "settled").count());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_under_one_budget_never_spend_past_it() {
    for (n, store) in stores("allowance_two").await.into_iter().enumerate() {
        // Room for exactly 100 worst-case requests today; 2 x 90 are sent at once.
        store.set_limits("tenant", "t1", &Limits { usd_micros_per_day: Some(100 * WORST), ..Default::default() }).await.unwrap();
        let a = Ledger::start_journaled(store.clone(), &empty_dir(&format!("a{n}")), None).await.unwrap();
        let b = Ledger::start_journaled(store.clone(), &empty_dir(&format!("b{n}")), None).await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..180 {
            let l = if i % 2 == 0 { a.clone() } else { b.clone() };
            tasks.push(tokio::spawn(async move {
                let id = format!("r{i}");
                match l.admit(&admit(&id)).await {
                    Ok(p) => {
                        p.written().await.unwrap();
                        l.settle(settle(&id, WORST));
                        true
                    }
                    Err(AdmitError::BudgetExceeded { message, .. }) => {
                        assert!(message.contains("Budget exceeded for tenant t1"), "{message}");
                        false
                    }
                    Err(e) => panic!("{e}"),
                }
            }));
        }
        let mut admitted = 0;
        for t in tasks {
            admitted += usize::from(t.await.unwrap());
        }
        settled(&store, admitted).await;
        let (spent, _) = store.spend("tenant", "t1", &day()).await.unwrap();
        eprintln!("store {n}: {admitted} of 180 admitted, spent {spent} of {}", 100 * WORST);
        assert!(admitted <= 100, "{admitted} admitted: the budget fits 100");
        assert_eq!(spent, admitted as i64 * WORST);
        // Slices are handed out at half the room left, then per request: most of the budget is usable.
        assert!(admitted >= 90, "only {admitted} of 100 admitted");
        a.give_back_allowances().await;
        b.give_back_allowances().await;
        let (_, reserved) = store.spend("tenant", "t1", &day()).await.unwrap();
        assert_eq!(reserved, 0, "everything held is given back");
    }
}

#[tokio::test]
async fn a_stopped_processs_allowance_goes_back_to_the_budget() {
    for (n, store) in stores("allowance_crash").await.into_iter().enumerate() {
        store.set_limits("tenant", "t1", &Limits { usd_micros_per_day: Some(1_000 * WORST), ..Default::default() }).await.unwrap();
        let a = Ledger::start_journaled(store.clone(), &empty_dir(&format!("c{n}")), None).await.unwrap();
        for id in ["x1", "x2", "x3"] {
            a.admit(&admit(id)).await.unwrap().written().await.unwrap();
        }
        a.settle(settle("x1", 300));
        a.settle(settle("x2", 200));
        // x3 is still running when the process is taken for dead.
        let t0 = std::time::Instant::now();
        while store.ledger_rows(0, i64::MAX).await.unwrap().iter().filter(|r| r.state == "settled").count() < 2 {
            assert!(t0.elapsed() < Duration::from_secs(20));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (spent, reserved) = store.spend("tenant", "t1", &day()).await.unwrap();
        assert_eq!(spent, 500);
        assert!(reserved > WORST, "a slice is held, not one request's worth: {reserved}");
        let far = sluice_store::now_ms() + 3_600_000;
        store.recover(far, &[], far).await.unwrap();
        let (spent, reserved) = store.spend("tenant", "t1", &day()).await.unwrap();
        assert_eq!((spent, reserved), (500, 0));
        let x3 = store.ledger_row("x3").await.unwrap().unwrap();
        assert_eq!(x3.outcome.as_deref(), Some("server_crashed"));
        // The process, not dead after all, settles x3 late: its cost counts, nothing goes negative.
        a.settle(settle("x3", 100));
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (spent, reserved) = store.spend("tenant", "t1", &day()).await.unwrap();
        assert_eq!((spent, reserved), (500, 0), "x3 was settled by recovery already");
    }
}
