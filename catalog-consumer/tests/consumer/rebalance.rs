use crate::helpers::{spawn_consumer, wait_until, Event, Fixture};

#[tokio::test]
async fn when_partitions_are_revoked_what_was_applied_is_committed_and_nothing_is_applied_twice() {
    let fixture = Fixture::new(2).await;
    fixture.seed_products(&[("CATALOG-0001", 1000)]).await;
    let producer = fixture.producer();
    // No periodic commit: only revocation (or shutdown) commits.
    let mut settings = fixture.settings();
    settings.commit_interval_ms = 600_000;

    let first = spawn_consumer(settings.clone()).await;
    for i in 0..10 {
        producer
            .send_to(&Event::new("CATALOG-0001", 1), i % 2)
            .await;
    }
    wait_until("ten applied by the first member", || async {
        first.messages("applied").await == 10
    })
    .await;
    assert_eq!(fixture.committed_offsets().await, [None, None]);

    // A second member joins: the first one's partitions are revoked, and it commits.
    let second = spawn_consumer(settings).await;
    fixture.wait_for_committed(&[Some(5), Some(5)]).await;

    for i in 0..10 {
        producer
            .send_to(&Event::new("CATALOG-0001", 1), i % 2)
            .await;
    }
    wait_until("twenty applied in all", || async {
        fixture.processed_count().await == 20
    })
    .await;
    let applied = first.messages("applied").await + second.messages("applied").await;
    let duplicates = first.messages("duplicate").await + second.messages("duplicate").await;
    assert_eq!((applied, duplicates), (20, 0));
    first.stop().await;
    second.stop().await;
    assert_eq!(fixture.stock("CATALOG-0001").await, 1000 - 20);
    fixture.wait_for_committed(&[Some(10), Some(10)]).await;
}
