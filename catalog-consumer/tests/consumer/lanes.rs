//! Apply lanes: a partition's batches are applied by one lane, in order; other partitions'
//! batches go on in the other lanes meanwhile.

use crate::helpers::{wait_until, Event, Fixture};

#[tokio::test]
async fn a_partition_whose_batch_waits_on_a_lock_does_not_hold_up_the_other_partition() {
    let fixture = Fixture::new(2).await;
    fixture
        .seed_products(&[("CATALOG-0001", 100), ("CATALOG-0002", 100)])
        .await;
    let mut settings = fixture.settings();
    settings.apply_lanes = 2;
    let consumer = crate::helpers::spawn_consumer(settings).await;
    let producer = fixture.producer();

    // A transaction of the test holds CATALOG-0001's row, so the batch of partition 0 waits.
    let mut holder = fixture.pool.begin().await.unwrap();
    sqlx::query("select stock from products where product_id = 'CATALOG-0001' for update")
        .execute(&mut *holder)
        .await
        .unwrap();
    let blocked = Event::new("CATALOG-0001", 1);
    producer.send_to(&blocked, 0).await;
    wait_until(
        "the consumer's transaction waits on the held row",
        || async {
            sqlx::query_scalar::<_, i64>(
                "select count(*) from pg_stat_activity
              where datname = current_database() and wait_event_type = 'Lock'",
            )
            .fetch_one(&fixture.pool)
            .await
            .unwrap()
                == 1
        },
    )
    .await;

    let later = [Event::new("CATALOG-0002", 2), Event::new("CATALOG-0002", 3)];
    for event in &later {
        producer.send_to(event, 1).await;
    }
    wait_until("partition 1 applied while partition 0 waits", || async {
        fixture.is_processed(later[1].id).await
    })
    .await;
    assert!(!fixture.is_processed(blocked.id).await);
    assert_eq!(fixture.stock("CATALOG-0002").await, 95);

    holder.rollback().await.unwrap();
    wait_until("partition 0 applied once the row is free", || async {
        fixture.is_processed(blocked.id).await
    })
    .await;
    assert_eq!(fixture.stock("CATALOG-0001").await, 99);
    fixture.wait_for_committed(&[Some(1), Some(2)]).await;
    consumer.stop().await;
}
