//! Retention of `processed_events` and the dedup window that makes it safe: an event older than
//! the window is dead-lettered, never applied, so pruning an id can never let its event
//! decrement the stock a second time.

use std::time::Duration;

use crate::helpers::{metric_value, wait_until, Event, Fixture, RawMessage};

#[tokio::test]
async fn processed_events_past_their_retention_are_pruned_in_batches_and_recent_ones_kept() {
    let fixture = Fixture::new(1).await;
    // 2,500 rows applied two days ago, 10 an hour ago.
    sqlx::query(
        "insert into processed_events
             (event_id, order_id, product_id, quantity, outcome, kafka_partition, kafka_offset,
              processed_at)
         select gen_random_uuid(), gen_random_uuid(), 'CATALOG-0001', 1, 'applied', 0, n,
                now() - case when n < 2500 then interval '2 days' else interval '1 hour' end
           from generate_series(0, 2509) as n",
    )
    .execute(&fixture.pool)
    .await
    .unwrap();
    let mut settings = fixture.settings();
    settings.processed_events_retention = Duration::from_secs(86_400);
    settings.prune.prune_interval_secs = 1;
    settings.prune.prune_batch_size = 1_000;
    let consumer = crate::helpers::spawn_consumer(settings).await;

    wait_until("the rows older than a day pruned", || async {
        fixture.processed_count().await == 10
    })
    .await;
    let metrics = consumer.metrics().await;
    assert_eq!(
        metric_value(&metrics, "catalog_consumer_processed_events_pruned_total"),
        2_500,
        "{metrics}"
    );
    let oldest_hours: f64 = sqlx::query_scalar(
        "select extract(epoch from now() - min(processed_at))::float8 / 3600 from processed_events",
    )
    .fetch_one(&fixture.pool)
    .await
    .unwrap();
    assert!(oldest_hours < 2.0, "only the recent rows are left");
    consumer.stop().await;
}

#[tokio::test]
async fn an_event_redelivered_after_its_id_was_pruned_is_dead_lettered_not_applied_twice() {
    let fixture = Fixture::new(1).await;
    fixture.seed_products(&[("CATALOG-0001", 100)]).await;
    let producer = fixture.producer();
    // A window of 12 s: retention 14 s minus a margin of 2 s; pruned every second.
    let mut settings = fixture.settings();
    settings.processed_events_retention = Duration::from_secs(14);
    settings.dedup_window_margin = Duration::from_secs(2);
    settings.prune.prune_interval_secs = 1;
    let consumer = crate::helpers::spawn_consumer(settings).await;
    // The group joined and its partition assigned: a fresh event is applied at once.
    producer.send(&Event::new("CATALOG-0001", 1)).await;
    wait_until("the consumer applies events", || async {
        consumer.messages("applied").await == 1
    })
    .await;

    let event = Event::new("CATALOG-0001", 7);
    let copy = RawMessage::from(&event);
    producer.send_raw(&copy, None).await;
    wait_until("the first delivery applied", || async {
        consumer.messages("applied").await == 2
    })
    .await;
    assert_eq!(fixture.stock("CATALOG-0001").await, 92);
    wait_until("its processed_events row pruned", || async {
        !fixture.is_processed(event.id).await
    })
    .await;

    // Redelivered (a group reset, a replayed topic): its id is gone, its ce_time is past the
    // window, so it goes to the dead-letter topic instead of decrementing the stock again.
    producer.send_raw(&copy, None).await;
    let letters = fixture.wait_for_dead_letters(1).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(
        letters[0].header("dlq_reason").as_deref(),
        Some("older_than_dedup_window")
    );
    assert_eq!(letters[0].header("ce_id"), Some(event.id.to_string()));
    wait_until("the redelivery counted as dead-lettered", || async {
        consumer.messages("dlq").await == 1
    })
    .await;
    assert_eq!(fixture.stock("CATALOG-0001").await, 92, "applied once only");
    assert_eq!(consumer.messages("applied").await, 2);
    let metrics = consumer.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            r#"catalog_consumer_dead_lettered_total{reason="older_than_dedup_window"}"#
        ),
        1,
        "{metrics}"
    );
    consumer.stop().await;
}

#[tokio::test]
async fn a_margin_as_long_as_the_retention_is_refused_at_start_up() {
    let fixture = Fixture::new(1).await;
    let mut settings = fixture.settings();
    settings.processed_events_retention = Duration::from_secs(3_600);
    settings.dedup_window_margin = Duration::from_secs(3_600);
    let error = catalog_consumer::Consumer::build(settings)
        .await
        .err()
        .expect("refused");
    let message = format!("{error:#}");
    assert!(
        message.contains("DEDUP_WINDOW_MARGIN") && message.contains("PROCESSED_EVENTS_RETENTION"),
        "{message}"
    );
}
