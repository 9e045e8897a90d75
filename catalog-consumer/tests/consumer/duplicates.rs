use crate::helpers::{wait_until, Event, Fixture, RawMessage};

#[tokio::test]
async fn the_same_event_delivered_five_times_across_batches_and_a_restart_decrements_stock_once() {
    let fixture = Fixture::new(1).await;
    fixture.seed_products(&[("CATALOG-0001", 100)]).await;
    let producer = fixture.producer();
    let event = Event::new("CATALOG-0001", 3);
    let copy = RawMessage::from(&event);
    // Only the commits on revoke and at shutdown, never the periodic one, within this test.
    let mut settings = fixture.settings();
    settings.commit_interval_ms = 600_000;

    let first = crate::helpers::spawn_consumer(settings.clone()).await;
    producer.send_raw(&copy, None).await;
    wait_until("the first delivery applied", || async {
        first.messages("applied").await == 1
    })
    .await;
    // A later batch.
    producer.send_raw(&copy, None).await;
    wait_until("the second delivery seen as a duplicate", || async {
        first.messages("duplicate").await == 1
    })
    .await;
    first.stop().await;
    // Stopping committed what was applied.
    fixture.wait_for_committed(&[Some(2)]).await;

    // Two more while no consumer runs: one batch holding the same event twice.
    producer.send_raw(&copy, None).await;
    producer.send_raw(&copy, None).await;
    let second = crate::helpers::spawn_consumer(settings).await;
    wait_until(
        "the third and fourth deliveries seen as duplicates",
        || async { second.messages("duplicate").await == 2 },
    )
    .await;
    producer.send_raw(&copy, None).await;
    wait_until("the fifth delivery seen as a duplicate", || async {
        second.messages("duplicate").await == 3
    })
    .await;
    assert_eq!(second.messages("applied").await, 0);
    second.stop().await;

    assert_eq!(fixture.stock("CATALOG-0001").await, 97);
    assert_eq!(fixture.processed_count().await, 1);
    assert_eq!(fixture.outcomes().await.get("applied"), Some(&1));
    fixture.wait_for_committed(&[Some(5)]).await;
}
