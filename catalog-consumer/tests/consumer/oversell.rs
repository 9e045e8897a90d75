use std::collections::HashMap;

use catalog_consumer::{stock::Outcome, Applier, Batch, DeadLetters, Metrics};
use rdkafka::message::{OwnedMessage, Timestamp};
use uuid::Uuid;

use crate::helpers::{wait_until, Event, Fixture};

/// The consumer's default dedup window (PROCESSED_EVENTS_RETENTION 7d minus its 1h margin).
const DEDUP_WINDOW: std::time::Duration = std::time::Duration::from_secs(7 * 86_400 - 3_600);

#[tokio::test]
async fn fifty_orders_of_one_against_stock_ten_apply_ten_and_record_forty_as_insufficient_stock() {
    let fixture = Fixture::new(3).await;
    fixture
        .seed_products(&[("CATALOG-0001", 10), ("CATALOG-0002", 1000)])
        .await;
    let producer = fixture.producer();
    let consumer = fixture.spawn_consumer().await;

    // The contended product interleaved with another one and with an unknown product.
    for i in 0..50 {
        producer.send(&Event::new("CATALOG-0001", 1)).await;
        if i % 2 == 0 {
            producer.send(&Event::new("CATALOG-0002", 2)).await;
        }
        if i % 10 == 0 {
            producer.send(&Event::new("CATALOG-9999", 1)).await;
        }
    }
    wait_until("all 80 events processed", || async {
        fixture.processed_count().await == 80
    })
    .await;

    assert_eq!(fixture.stock("CATALOG-0001").await, 0);
    assert_eq!(fixture.stock("CATALOG-0002").await, 1000 - 25 * 2);
    let by_product: HashMap<(String, String), i64> = sqlx::query_as::<_, (String, String, i64)>(
        "select product_id, outcome::text, count(*) from processed_events group by 1, 2",
    )
    .fetch_all(&fixture.pool)
    .await
    .unwrap()
    .into_iter()
    .map(|(product, outcome, count)| ((product, outcome), count))
    .collect();
    let count = |product: &str, outcome: &str| {
        by_product
            .get(&(product.to_owned(), outcome.to_owned()))
            .copied()
            .unwrap_or(0)
    };
    assert_eq!(count("CATALOG-0001", "applied"), 10);
    assert_eq!(count("CATALOG-0001", "insufficient_stock"), 40);
    assert_eq!(count("CATALOG-0002", "applied"), 25);
    assert_eq!(count("CATALOG-9999", "unknown_product"), 5);
    assert_eq!(consumer.messages("applied").await, 35);
    assert_eq!(consumer.messages("insufficient_stock").await, 40);
    assert_eq!(consumer.messages("unknown_product").await, 5);
    consumer.stop().await;
}

#[tokio::test]
async fn concurrent_batches_racing_on_one_product_never_oversell_nor_apply_an_event_twice() {
    let fixture = Fixture::new(1).await;
    fixture.seed_products(&[("CATALOG-0001", 10)]).await;
    let events: Vec<Event> = (0..50).map(|_| Event::new("CATALOG-0001", 1)).collect();
    let message = |event: &Event, offset: i64| {
        OwnedMessage::new(
            Some(event.value()),
            Some(event.product_id.clone().into_bytes()),
            fixture.topic.clone(),
            Timestamp::NotAvailable,
            0,
            offset,
            Some(event.headers()),
        )
    };
    let dead_letters =
        DeadLetters::new(&fixture.settings().kafka, &fixture.dlq_topic, 1_000_000).unwrap();
    let metrics = Metrics::register(&prometheus::Registry::new()).unwrap();
    let applier = Applier::new(fixture.pool.clone(), dead_letters, metrics);

    // Five appliers at once; every event is in two of their batches (as after a rebalance).
    let mut tasks = Vec::new();
    for worker in 0..5 {
        let batch: Vec<OwnedMessage> = events
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 5 == worker || (i + 1) % 5 == worker)
            .map(|(i, event)| message(event, i as i64))
            .collect();
        let applier = applier.clone();
        tasks.push(tokio::spawn(async move {
            let mut batch = Batch::new(batch, DEDUP_WINDOW);
            // As the consumer loop does: a transient failure (a deadlock between two batches
            // locking the same rows in another order) retries the same batch.
            loop {
                match applier.apply_batch(&mut batch).await {
                    Ok(report) => return report,
                    Err(error) => eprintln!("retrying: {error:#}"),
                }
            }
        }));
    }
    let mut outcomes: HashMap<Uuid, Vec<Outcome>> = HashMap::new();
    for task in tasks {
        let report = task.await.unwrap();
        assert_eq!(report.dead_lettered, 0);
        for (event_id, outcome) in report.outcomes {
            outcomes.entry(event_id).or_default().push(outcome);
        }
    }

    let all: Vec<Outcome> = outcomes.values().flatten().copied().collect();
    let count = |o: Outcome| all.iter().filter(|x| **x == o).count();
    assert_eq!(outcomes.len(), 50);
    assert_eq!(count(Outcome::Applied), 10);
    assert_eq!(count(Outcome::InsufficientStock), 40);
    assert_eq!(count(Outcome::Duplicate), 50);
    for (event_id, seen) in &outcomes {
        assert_eq!(seen.len(), 2, "{event_id} was in two batches");
        assert_eq!(
            seen.iter().filter(|o| **o == Outcome::Duplicate).count(),
            1,
            "{event_id}: exactly one of its two deliveries is a duplicate: {seen:?}"
        );
    }
    assert_eq!(fixture.stock("CATALOG-0001").await, 0);
    let recorded = fixture.outcomes().await;
    assert_eq!(recorded.get("applied"), Some(&10));
    assert_eq!(recorded.get("insufficient_stock"), Some(&40));
}
