use std::net::SocketAddr;

use sqlx::postgres::PgConnectOptions;
use testkit::TcpProxy;

use crate::helpers::{metric_gauge, spawn_consumer, wait_until, Event, Fixture};

/// `url` with its host and port replaced by `addr`.
fn through(url: &str, addr: SocketAddr) -> String {
    let options: PgConnectOptions = url.parse().unwrap();
    let authority = format!("{}:{}", options.get_host(), options.get_port());
    assert!(url.contains(&authority), "{url} names {authority}");
    url.replacen(&authority, &addr.to_string(), 1)
}

#[tokio::test]
async fn while_the_database_is_unavailable_nothing_is_dead_lettered_or_committed_and_afterwards_everything_applies_once(
) {
    let fixture = Fixture::new(2).await;
    fixture
        .seed_products(&[("CATALOG-0001", 1000), ("CATALOG-0002", 1000)])
        .await;
    let options: PgConnectOptions = fixture.database_url.parse().unwrap();
    let upstream: SocketAddr = tokio::net::lookup_host((options.get_host(), options.get_port()))
        .await
        .unwrap()
        .next()
        .unwrap();
    let proxy = TcpProxy::start(upstream).await.unwrap();
    let mut settings = fixture.settings();
    settings.database_url = through(&fixture.database_url, proxy.addr());
    settings.stalled_after_secs = 1;
    let consumer = spawn_consumer(settings).await;
    let producer = fixture.producer();

    // Before the outage: applied and committed.
    let first = Event::new("CATALOG-0001", 1);
    let (partition, offset) = producer.send_to(&first, 0).await;
    assert_eq!((partition, offset), (0, 0));
    fixture.wait_for_committed(&[Some(1), None]).await;

    proxy.cut();
    let during: Vec<Event> = (0..20)
        .map(|i| {
            Event::new(
                if i % 2 == 0 {
                    "CATALOG-0001"
                } else {
                    "CATALOG-0002"
                },
                2,
            )
        })
        .collect();
    for (i, event) in during.iter().enumerate() {
        producer.send_to(event, (i % 2) as i32).await;
    }
    // The consumer has the messages and keeps failing to apply them.
    wait_until("several failed attempts against the database", || async {
        consumer.retries("database").await >= 4
    })
    .await;
    assert!(
        fixture.dead_letter_topic_is_empty().await,
        "an outage is not a bad message"
    );
    assert_eq!(fixture.committed_offsets().await, [Some(1), None]);
    assert_eq!(consumer.messages("applied").await, 1);
    // A batch retried past STALLED_AFTER_SECS is named by /readyz and shown by the gauge.
    wait_until("readyz names the stalled batch", || async {
        let response = consumer.get("/readyz").await;
        response.status() == 503 && response.text().await.unwrap_or_default().contains("batch")
    })
    .await;
    wait_until("the retrying gauge passes 1 s", || async {
        metric_gauge(
            &consumer.metrics().await,
            "catalog_consumer_batch_retrying_seconds",
        ) >= 1.0
    })
    .await;

    proxy.restore();
    // The offsets reach the end only past applied events: once they do, every event is applied.
    fixture.wait_for_committed(&[Some(11), Some(10)]).await;
    assert_eq!(
        fixture.processed_count().await,
        21,
        "nothing committed unapplied"
    );
    wait_until("readyz answers 200 again", || async {
        consumer.get("/readyz").await.status() == 200
    })
    .await;
    assert_eq!(
        metric_gauge(
            &consumer.metrics().await,
            "catalog_consumer_batch_retrying_seconds"
        ),
        0.0
    );
    assert_eq!(fixture.stock("CATALOG-0001").await, 1000 - 1 - 10 * 2);
    assert_eq!(fixture.stock("CATALOG-0002").await, 1000 - 10 * 2);
    assert_eq!(fixture.outcomes().await.get("applied"), Some(&21));
    assert_eq!(consumer.messages("applied").await, 21);
    assert_eq!(
        consumer.messages("duplicate").await,
        0,
        "nothing applied twice"
    );
    assert!(
        fixture.dead_letter_topic_is_empty().await,
        "nothing dead-lettered because of the outage"
    );
    for event in &during {
        assert!(fixture.is_processed(event.id).await);
    }
    consumer.stop().await;
}
