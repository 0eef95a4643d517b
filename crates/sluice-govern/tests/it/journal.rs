//! The ledger journal: what a process journaled before it died is written by the next one to
//! start, finished requests with their real usage, unfinished ones as `server_crashed`; and a
//! journaled ledger answers without waiting for the store yet loses no row.

use std::time::Duration;

use sluice_govern::journal::{Journal, Record};
use sluice_govern::{AdmitRequest, Ledger, SettleRequest};
use sluice_store::{Reservation, Settlement, Store};

use crate::{empty_dir, stores};

fn reservation(id: &str, instance: &str) -> Reservation {
    Reservation {
        request_id: id.into(),
        created_ms: sluice_store::now_ms(),
        instance_id: instance.into(),
        tenant_id: "t1".into(),
        key_id: "k1".into(),
        feature: "f".into(),
        route: "m".into(),
        reserved_micros: 500,
        budgets: vec![],
        allowance: false,
    }
}

fn settlement(id: &str, cost: i64) -> Settlement {
    Settlement {
        request_id: id.into(),
        backend: "up".into(),
        model: "m".into(),
        prompt_tokens: 7,
        completion_tokens: 3,
        cost_micros: cost,
        status: 200,
        outcome: "ok".into(),
        settled_ms: sluice_store::now_ms(),
        ..Default::default()
    }
}

#[tokio::test]
async fn what_a_dead_process_journaled_is_written_by_the_next_start() {
    for (n, store) in stores("journal_restore").await.into_iter().enumerate() {
        let dir = empty_dir(&format!("restore{n}"));
        // A process that journaled three requests and died: r1 finished, r2 was in flight, r3
        // finished and had its reservation (only) committed before the crash.
        store.apply(&[reservation("r3", "proc_dead")], &[]).await.unwrap();
        {
            let j = Journal::open(&dir, "proc_dead").unwrap();
            for r in [
                Record::Reserve(reservation("r1", "proc_dead")),
                Record::Reserve(reservation("r2", "proc_dead")),
                Record::Reserve(reservation("r3", "proc_dead")),
                Record::Settle(settlement("r1", 123)),
                Record::Settle(settlement("r3", 77)),
            ] {
                j.append(&r).unwrap();
            }
        } // dropped: its lock is free, as after a kill

        let _ledger = Ledger::start_journaled(store.clone(), &dir, None).await.unwrap();
        let r1 = store.ledger_row("r1").await.unwrap().unwrap();
        assert_eq!((r1.state.as_str(), r1.cost_micros, r1.completion_tokens, r1.outcome.as_deref()), ("settled", Some(123), Some(3), Some("ok")));
        let r2 = store.ledger_row("r2").await.unwrap().unwrap();
        assert_eq!((r2.state.as_str(), r2.outcome.as_deref()), ("settled", Some("server_crashed")));
        let r3 = store.ledger_row("r3").await.unwrap().unwrap();
        assert_eq!((r3.state.as_str(), r3.cost_micros), ("settled", Some(77)));
        let left: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).filter(|n| n.starts_with("proc_dead")).collect();
        assert!(left.is_empty(), "the dead process's journal is removed: {left:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[tokio::test]
async fn a_live_processs_journal_is_left_alone() {
    let store = Store::open(&sluice_store::testing::sqlite_url("journal_live")).await.unwrap();
    let dir = empty_dir("live");
    let live = Journal::open(&dir, "proc_live").unwrap();
    live.append(&Record::Reserve(reservation("x1", "proc_live"))).unwrap();
    let _ledger = Ledger::start_journaled(store.clone(), &dir, None).await.unwrap();
    assert!(store.ledger_row("x1").await.unwrap().is_none(), "another running process's journal is its own business");
    assert!(dir.join("proc_live.00000000.journal").exists());
    drop(live);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_journaled_ledger_answers_at_once_and_every_row_arrives() {
    for (n, store) in stores("journal_flow").await.into_iter().enumerate() {
        let dir = empty_dir(&format!("flow{n}"));
        let ledger = Ledger::start_journaled(store.clone(), &dir, None).await.unwrap();
        for i in 0..300 {
            let a = AdmitRequest {
                request_id: format!("q{i}"),
                tenant_id: "t1".into(),
                key_id: "k1".into(),
                feature: "f".into(),
                route: "m".into(),
                prompt_tokens: 5,
                max_tokens: 10,
                worst_case_micros: 40,
            };
            let pending = ledger.admit(&a).await.unwrap();
            assert!(pending.is_written(), "journaled: nothing to wait for");
            let s = Settlement { prompt_tokens: 5, completion_tokens: i % 10, ..settlement(&a.request_id, i) };
            ledger.settle(SettleRequest { tenant_id: "t1".into(), key_id: "k1".into(), feature: "f".into(), admitted_tokens: 15, settlement: s });
        }
        let t0 = std::time::Instant::now();
        loop {
            let rows = store.ledger_rows(0, i64::MAX).await.unwrap();
            if rows.len() == 300 && rows.iter().all(|r| r.state == "settled") {
                for r in &rows {
                    let i: i64 = r.request_id[1..].parse().unwrap();
                    assert_eq!((r.cost_micros, r.completion_tokens), (Some(i), Some(i % 10)), "{}", r.request_id);
                }
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(20), "rows committed: {}", rows.len());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Everything committed: the journal is empty again.
        let t0 = std::time::Instant::now();
        let journal = dir.join(format!("{}.00000000.journal", ledger.instance_id()));
        while std::fs::metadata(&journal).unwrap().len() > 0 {
            assert!(t0.elapsed() < Duration::from_secs(5), "journal emptied after the commit");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
