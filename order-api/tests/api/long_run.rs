//! What keeps order-api sound over months: idempotency keys pruned past their retention, and
//! the opt-in backpressure of MAX_OUTBOX_LAG_SECS.

use std::time::Duration;

use serde_json::Value;
use testkit::eventually;

use crate::helpers::{order_body, spawn_app_with, TestApp};

const DEADLINE: Duration = Duration::from_secs(20);

#[tokio::test]
async fn a_key_older_than_its_retention_is_pruned_and_a_retry_with_it_is_a_new_order() {
    let app = spawn_app_with(|settings| {
        settings.idempotency_key_retention = Duration::from_secs(3_600);
        settings.prune.prune_interval_secs = 1;
    })
    .await;
    let body = order_body("user-1", "CATALOG-0001", 1, 1500);
    let first = app.post_order_with_key(&body, "old-key").await;
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let recent = app.post_order_with_key(&body, "recent-key").await;
    assert_eq!(recent.status(), 201);
    // One key was used two hours ago.
    sqlx::query(
        "update idempotency_keys set created_at = now() - interval '2 hours'
          where idempotency_key = 'old-key'",
    )
    .execute(&app.pool)
    .await
    .unwrap();

    let pool = app.pool.clone();
    eventually(DEADLINE, || {
        let pool = pool.clone();
        async move {
            let keys: Vec<String> =
                sqlx::query_scalar("select idempotency_key from idempotency_keys")
                    .fetch_all(&pool)
                    .await
                    .ok()?;
            (keys == ["recent-key"]).then_some(())
        }
    })
    .await
    .expect("the old key pruned, the recent one kept");
    assert_eq!(
        app.metric("order_api_idempotency_keys_pruned_total").await,
        1.0
    );

    // The recent key still replays; the pruned one places a new order.
    let replay = app.post_order_with_key(&body, "recent-key").await;
    assert_eq!(replay.status(), 201);
    assert!(replay.headers().contains_key("idempotent-replayed"));
    let again = app.post_order_with_key(&body, "old-key").await;
    assert_eq!(again.status(), 201);
    assert!(!again.headers().contains_key("idempotent-replayed"));
    let again: Value = again.json().await.unwrap();
    assert_ne!(again["orderId"], first["orderId"], "a new order");
    assert_eq!(app.row_counts().await, (3, 3));
}

/// An outbox row a minute old that nothing publishes: the outbox lags. (The lag probe reads
/// each lane's lowest id, so the stale row is inserted before any order.)
async fn stale_outbox_row(app: &TestApp) {
    sqlx::query(
        "insert into outbox (event_id, topic, partition_key, event_type, source, subject, payload,
                             created_at)
         values (gen_random_uuid(), 'order-events-test', 'CATALOG-0001', 'order.placed.v1',
                 '/order-api', 'stale', '{}', now() - interval '1 minute')",
    )
    .execute(&app.pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn with_max_outbox_lag_set_orders_get_503_outbox_lagging_while_the_outbox_lags_and_not_without(
) {
    let limited = spawn_app_with(|settings| settings.max_outbox_lag_secs = Some(30)).await;
    let unlimited = spawn_app_with(|_| {}).await;
    let body = order_body("user-1", "CATALOG-0001", 1, 1500);
    stale_outbox_row(&limited).await;
    stale_outbox_row(&unlimited).await;

    eventually(DEADLINE, || {
        let limited = &limited;
        async move { (limited.metric("order_api_outbox_lagging").await == 1.0).then_some(()) }
    })
    .await
    .expect("the lag sampled and found past the limit");
    let refused = limited.post_order(&body).await;
    assert_eq!(refused.status(), 503);
    let retry_after: u64 = refused
        .headers()
        .get("retry-after")
        .expect("Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    let error: Value = refused.json().await.unwrap();
    assert_eq!(error["error"], "outbox_lagging", "{error}");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("MAX_OUTBOX_LAG_SECS")),
        "{error}"
    );
    assert_eq!(
        limited.get("/readyz").await.status(),
        200,
        "the process is healthy"
    );
    assert!(limited.metric("order_api_outbox_lag_seconds").await >= 59.0);
    assert_eq!(
        limited.row_counts().await,
        (0, 1),
        "nothing written while refusing"
    );

    // Started at the same time, with the same stale row, but without the setting: the
    // lagging app's sampler has run by now, and this one still takes orders.
    assert_eq!(unlimited.post_order(&body).await.status(), 201);
    assert_eq!(unlimited.metric("order_api_outbox_lagging").await, 0.0);

    // The relay catches up: orders are taken again.
    sqlx::query("delete from outbox where subject = 'stale'")
        .execute(&limited.pool)
        .await
        .unwrap();
    eventually(DEADLINE, || {
        let limited = &limited;
        let body = &body;
        async move { (limited.post_order(body).await.status() == 201).then_some(()) }
    })
    .await
    .expect("orders taken again once the outbox caught up");
    assert_eq!(limited.metric("order_api_outbox_lagging").await, 0.0);
}
