use sluice_store::{KeyRecord, Store, StoreError, Tenant};

use crate::{both, open};

fn key(id: &str, prefix: &str, tenant: &str) -> KeyRecord {
    KeyRecord {
        id: id.into(),
        prefix: prefix.into(),
        hash: "ab".repeat(32),
        tenant_id: tenant.into(),
        role: "member".into(),
        name: format!("key {id}"),
        created_ms: 1000,
        expires_ms: Some(5000),
        revoked_ms: None,
        revoked_reason: None,
    }
}

both!(migrations_apply_once_even_when_two_processes_race, |url: String| async move {
    let (a, b) = tokio::join!(Store::open(&url), Store::open(&url));
    let (a, _b) = (a.unwrap(), b.unwrap());
    let reopened = open(&url).await;
    let versions: Vec<i64> = sqlx::query_scalar("SELECT version FROM sluice_migrations ORDER BY version")
        .fetch_all(reopened.pool())
        .await
        .unwrap();
    assert_eq!(versions, [1, 2, 3, 4, 5, 6]);
    assert!(a.tenants().await.unwrap().is_empty());
});

both!(tenants_are_unique_by_name, |url: String| async move {
    let s = open(&url).await;
    let acme = Tenant { id: "t1".into(), name: "acme".into(), created_ms: 1, logging_policy: "metadata".into() };
    s.create_tenant(&acme).await.unwrap();
    let e = s.create_tenant(&Tenant { id: "t2".into(), ..acme.clone() }).await.unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e}");
    s.create_tenant(&Tenant { id: "t0".into(), name: "beta".into(), created_ms: 2, logging_policy: "full".into() }).await.unwrap();
    assert_eq!(s.tenant_by_name("acme").await.unwrap(), Some(acme.clone()));
    assert_eq!(s.tenant("t1").await.unwrap(), Some(acme));
    assert_eq!(s.tenant_by_name("nope").await.unwrap(), None);
    let names: Vec<String> = s.tenants().await.unwrap().into_iter().map(|t| t.name).collect();
    assert_eq!(names, ["acme", "beta"]);
    assert_eq!(s.tenant("t0").await.unwrap().unwrap().logging_policy, "full");
    assert!(s.set_logging_policy("t1", "off").await.unwrap());
    assert!(!s.set_logging_policy("nope", "off").await.unwrap());
    assert_eq!(s.tenant_by_name("acme").await.unwrap().unwrap().logging_policy, "off");
});

both!(keys_are_found_by_prefix_listed_and_revoked_once, |url: String| async move {
    let s = open(&url).await;
    s.create_tenant(&Tenant { id: "t1".into(), name: "acme".into(), created_ms: 1, logging_policy: "metadata".into() }).await.unwrap();
    s.create_tenant(&Tenant { id: "t2".into(), name: "beta".into(), created_ms: 1, logging_policy: "metadata".into() }).await.unwrap();
    assert_eq!(s.key_count().await.unwrap(), 0);
    let k1 = key("k1", "p1", "t1");
    s.insert_key(&k1).await.unwrap();
    s.insert_key(&key("k2", "p2", "t2")).await.unwrap();
    assert!(matches!(s.insert_key(&key("k3", "p1", "t1")).await.unwrap_err(), StoreError::Conflict(_)));
    assert_eq!(s.key_count().await.unwrap(), 2);
    assert_eq!(s.key_by_prefix("p1").await.unwrap(), Some(k1.clone()));
    assert_eq!(s.key_by_prefix("zz").await.unwrap(), None);
    assert_eq!(s.keys(Some("t2")).await.unwrap().len(), 1);
    assert_eq!(s.keys(None).await.unwrap().len(), 2);
    assert!(s.revoke_key("k1", "leaked", 7000).await.unwrap());
    assert!(s.revoke_key("k1", "again", 8000).await.unwrap());
    assert!(!s.revoke_key("nope", "x", 1).await.unwrap());
    let k = s.key_by_prefix("p1").await.unwrap().unwrap();
    assert_eq!((k.revoked_ms, k.revoked_reason.as_deref()), (Some(7000), Some("leaked")));
    // A key must belong to a tenant.
    assert!(s.insert_key(&key("k9", "p9", "ghost")).await.is_err());
});
