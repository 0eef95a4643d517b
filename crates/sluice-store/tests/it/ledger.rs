use std::sync::Arc;

use sluice_store::{AttemptRow, BudgetHold, GroupBy, Limits, Reservation, Settlement, Tenant};

use crate::{both, open};

fn hold(limit: i64) -> BudgetHold {
    BudgetHold { scope: "tenant".into(), scope_id: "t1".into(), period: "d2026-11-29".into(), limit_micros: limit }
}

fn reservation(id: &str, micros: i64, budgets: Vec<BudgetHold>) -> Reservation {
    Reservation {
        request_id: id.into(),
        created_ms: 1_000,
        instance_id: "proc-a".into(),
        tenant_id: "t1".into(),
        key_id: "k1".into(),
        feature: "search".into(),
        route: "m".into(),
        reserved_micros: micros,
        budgets,
        allowance: false,
    }
}

fn settlement(id: &str, cost: i64) -> Settlement {
    Settlement {
        request_id: id.into(),
        backend: "b".into(),
        model: "m".into(),
        prompt_tokens: 10,
        cached_tokens: 2,
        completion_tokens: 5,
        cost_micros: cost,
        duration_ms: 3.0,
        status: 200,
        outcome: "ok".into(),
        attempts: vec![AttemptRow { backend: "b".into(), status: Some(200), outcome: "ok".into(), error: None, duration_ms: 3.0 }],
        settled_ms: 2_000,
        ..Default::default()
    }
}

both!(concurrent_reservations_never_exceed_a_budget, |url: String| async move {
    let s = Arc::new(open(&url).await);
    // Budget for exactly 10 requests of 100 µ$ each; 50 arrive at once.
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { s.reserve(&reservation(&format!("r{i}"), 100, vec![hold(1_000)])).await.unwrap() })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        if t.await.unwrap().is_ok() {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 10);
    assert_eq!(s.spend("tenant", "t1", "d2026-11-29").await.unwrap(), (0, 1_000));
    let refused = s.reserve(&reservation("late", 100, vec![hold(1_000)])).await.unwrap().unwrap_err();
    assert_eq!((refused.spent_micros, refused.reserved_micros), (0, 1_000));
    assert!(s.ledger_row("late").await.unwrap().is_none(), "a refused request writes nothing");
});

both!(settlement_happens_once_and_moves_money, |url: String| async move {
    let s = open(&url).await;
    s.reserve(&reservation("r1", 100, vec![hold(1_000)])).await.unwrap().unwrap();
    assert!(s.settle(&settlement("r1", 30)).await.unwrap());
    assert!(!s.settle(&settlement("r1", 30)).await.unwrap(), "second settlement is refused");
    assert_eq!(s.spend("tenant", "t1", "d2026-11-29").await.unwrap(), (30, 0));
    let row = s.ledger_row("r1").await.unwrap().unwrap();
    assert_eq!(row.state, "settled");
    assert_eq!((row.prompt_tokens, row.cached_tokens, row.completion_tokens, row.cost_micros), (Some(10), Some(2), Some(5), Some(30)));
    assert_eq!(row.attempts, Some(1));
    // Room freed by the cheaper-than-reserved settlement is usable again.
    for i in 0..9 {
        s.reserve(&reservation(&format!("n{i}"), 100, vec![hold(1_000)])).await.unwrap().unwrap();
    }
    assert!(s.reserve(&reservation("n9", 100, vec![hold(1_000)])).await.unwrap().is_err(), "30 spent + 900 held + 100 > 1000");
});

both!(recovery_settles_only_orphans, |url: String| async move {
    let s = open(&url).await;
    s.heartbeat("proc-a", "host-1", 42, 10_000).await.unwrap();
    s.reserve(&reservation("alive", 100, vec![hold(1_000)])).await.unwrap().unwrap();
    let mut dead = reservation("dead", 100, vec![hold(1_000)]);
    dead.instance_id = "proc-crashed".into();
    s.reserve(&dead).await.unwrap().unwrap();
    assert_eq!(s.instances_with_reservations("host-1").await.unwrap(), [("proc-a".to_string(), 42)]);
    assert_eq!(s.recover(9_000, &[], 20_000).await.unwrap(), 1);
    assert_eq!(s.ledger_row("dead").await.unwrap().unwrap().outcome.as_deref(), Some("server_crashed"));
    assert_eq!(s.ledger_row("alive").await.unwrap().unwrap().state, "reserved");
    assert_eq!(s.spend("tenant", "t1", "d2026-11-29").await.unwrap(), (0, 100), "the orphan's hold is released");
    // A process known to be dead is recovered at once, heartbeat or not.
    assert_eq!(s.recover(9_000, &["proc-a".to_string()], 30_000).await.unwrap(), 1);
    assert_eq!(s.recover(11_000, &[], 30_000).await.unwrap(), 0);
});

both!(limits_are_set_replaced_and_removed, |url: String| async move {
    let s = open(&url).await;
    let l = Limits { rpm: Some(60), usd_micros_per_day: Some(5_000_000), ..Default::default() };
    s.set_limits("tenant", "t1", &l).await.unwrap();
    s.set_limits("feature", "t1/search", &Limits { tpm: Some(1000), ..Default::default() }).await.unwrap();
    assert_eq!(s.all_limits().await.unwrap()[1], ("tenant".to_string(), "t1".to_string(), l));
    s.set_limits("tenant", "t1", &Limits::default()).await.unwrap();
    assert_eq!(s.all_limits().await.unwrap().len(), 1);
});

both!(usage_reports_group_and_bucket, |url: String| async move {
    let s = open(&url).await;
    s.create_tenant(&Tenant { id: "t1".into(), name: "acme".into(), created_ms: 0, logging_policy: "metadata".into() }).await.unwrap();
    let hour = 3_600_000;
    for (i, (t, feature, at)) in [("t1", "search", 0), ("t1", "chat", 10), ("t2", "search", hour + 5)].into_iter().enumerate() {
        let mut r = reservation(&format!("u{i}"), 10, Vec::new());
        r.tenant_id = t.into();
        r.feature = feature.into();
        r.created_ms = at;
        s.reserve(&r).await.unwrap().unwrap();
        s.settle(&settlement(&format!("u{i}"), 7)).await.unwrap();
    }
    let by_tenant = s.usage(0, 2 * hour, hour, GroupBy::Tenant, None).await.unwrap();
    assert_eq!(by_tenant.len(), 2);
    assert_eq!((by_tenant[0].bucket_ms, by_tenant[0].group.as_str(), by_tenant[0].requests), (0, "t1", 2));
    assert_eq!((by_tenant[0].prompt_tokens, by_tenant[0].completion_tokens, by_tenant[0].cost_micros), (20, 10, 14));
    assert_eq!((by_tenant[1].bucket_ms, by_tenant[1].group.as_str()), (hour, "t2"));
    let by_feature = s.usage(0, 2 * hour, 2 * hour, GroupBy::Feature, Some("t1")).await.unwrap();
    let groups: Vec<&str> = by_feature.iter().map(|l| l.group.as_str()).collect();
    assert_eq!(groups, ["chat", "search"]);
});

both!(a_batch_answers_each_reservation_and_undoes_partial_holds, |url: String| async move {
    let s = open(&url).await;
    let tenant = hold(1_000);
    let key = BudgetHold { scope: "key".into(), scope_id: "k1".into(), period: "d2026-11-29".into(), limit_micros: 150 };
    let batch = vec![
        reservation("b1", 100, vec![tenant.clone(), key.clone()]),
        // The tenant budget has room, the key budget not: the tenant hold must be given back.
        reservation("b2", 100, vec![tenant.clone(), key.clone()]),
        reservation("b3", 40, vec![tenant.clone(), key.clone()]),
    ];
    let (answers, settled) = s.apply(&batch, &[]).await.unwrap();
    assert!(settled.is_empty());
    assert!(answers[0].is_ok() && answers[2].is_ok());
    let full = answers[1].clone().unwrap_err();
    assert_eq!((full.hold.scope.as_str(), full.reserved_micros), ("key", 100));
    assert_eq!(s.spend("tenant", "t1", "d2026-11-29").await.unwrap(), (0, 140), "b2's tenant hold was undone");
    assert!(s.ledger_row("b2").await.unwrap().is_none());
    let (_, settled) = s.apply(&[], &[settlement("b1", 10), settlement("b3", 5), settlement("b1", 10)]).await.unwrap();
    assert_eq!(settled, [true, true, false]);
    assert_eq!(s.spend("key", "k1", "d2026-11-29").await.unwrap(), (15, 0));
});

both!(plain_batches_insert_and_settle_in_few_statements, |url: String| async move {
    let s = open(&url).await;
    let batch: Vec<Reservation> = (0..100).map(|i| reservation(&format!("p{i}"), 0, Vec::new())).collect();
    let (answers, _) = s.apply(&batch, &[]).await.unwrap();
    assert!(answers.iter().all(Result::is_ok));
    let settlements: Vec<Settlement> = (0..100).map(|i| settlement(&format!("p{i}"), i)).collect();
    let (_, settled) = s.apply(&[], &settlements).await.unwrap();
    assert!(settled.iter().all(|&b| b));
    let rows = s.ledger_rows(0, i64::MAX).await.unwrap();
    assert_eq!(rows.len(), 100);
    assert!(rows.iter().all(|r| r.state == "settled" && r.completion_tokens == Some(5) && r.attempts == Some(1)));
    let p42 = s.ledger_row("p42").await.unwrap().unwrap();
    assert_eq!(p42.cost_micros, Some(42));
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM ledger_attempts").fetch_one(s.pool()).await.unwrap();
    assert_eq!(n, 100);
});
