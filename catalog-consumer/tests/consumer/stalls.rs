//! No stall on one message, one crash or one bad setting: a dead letter the dead-letter topic
//! refuses is kept in the database, a restarted static member takes its partitions back at once,
//! and settings that would wedge the consumer are refused at start-up.

use std::{process::Command, time::Duration};

use crate::helpers::{
    eventually, free_port, spawn_consumer, wait_until, ConsumerProcess, Event, Fixture, RawMessage,
};

/// (key, value, header keys, reason, refused because, source offset) of a `dead_letters` row.
type KeptRow = (
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Vec<String>,
    String,
    String,
    i64,
);

#[tokio::test]
async fn a_dead_letter_the_dead_letter_topic_refuses_is_kept_in_the_database_and_the_partition_moves_on(
) {
    let fixture = Fixture::new(1).await;
    fixture.seed_products(&[("CATALOG-0001", 100)]).await;
    let mut settings = fixture.settings();
    // The dead-letter topic's limit: smaller than the bad message below plus its dlq_* headers.
    settings.dlq_message_max_bytes = 1_000;
    let consumer = spawn_consumer(settings).await;
    let producer = fixture.producer();

    let event = Event::new("CATALOG-0001", 1);
    let oversized = RawMessage {
        value: Some(vec![b'x'; 3_000]),
        ..RawMessage::from(&event)
    };
    producer.send_raw(&oversized, Some(0)).await;
    let good = Event::new("CATALOG-0001", 2);
    producer.send_to(&good, 0).await;

    wait_until("the good message after it applied", || async {
        fixture.is_processed(good.id).await
    })
    .await;
    fixture.wait_for_committed(&[Some(2)]).await;
    let kept: Vec<KeptRow> = sqlx::query_as(
        "select message_key, message_value, header_keys, reason, refused_because,
                    source_offset
               from dead_letters",
    )
    .fetch_all(&fixture.pool)
    .await
    .unwrap();
    assert_eq!(kept.len(), 1, "one dead letter kept in the table: {kept:?}");
    let (key, value, header_keys, reason, refused_because, offset) = &kept[0];
    assert_eq!(key.as_deref(), Some(b"CATALOG-0001".as_slice()));
    assert_eq!(
        value.as_deref(),
        oversized.value.as_deref(),
        "the value, byte for byte"
    );
    assert!(header_keys.iter().any(|k| k == "ce_id"), "{header_keys:?}");
    assert_eq!(reason, "invalid_json");
    assert!(
        refused_because.to_lowercase().contains("size") || refused_because.contains("large"),
        "{refused_because}"
    );
    assert_eq!(*offset, 0);
    assert!(fixture.dead_letter_topic_is_empty().await);
    assert_eq!(fixture.stock("CATALOG-0001").await, 98);
    let metrics = consumer.metrics().await;
    assert!(
        metrics.contains("catalog_consumer_dead_letters_kept_total 1"),
        "{metrics}"
    );
    consumer.stop().await;
}

#[tokio::test]
async fn a_static_member_killed_and_restarted_takes_its_partitions_back_within_the_session_timeout()
{
    let fixture = Fixture::new(2).await;
    fixture.seed_products(&[("CATALOG-0001", 1000)]).await;
    let producer = fixture.producer();
    let env = |port: u16| {
        let mut env = fixture.binary_env(port);
        env.retain(|(k, _)| *k != "KAFKA_SESSION_TIMEOUT_MS");
        // Long enough that a dynamic member's restart would wait it out for the dead member.
        env.push(("KAFKA_SESSION_TIMEOUT_MS", "45000".into()));
        env.push(("CONSUMER_INSTANCE_ID", "catalog-consumer-0".into()));
        env.push(("COMMIT_INTERVAL_MS", "100".into()));
        env
    };
    let port = free_port();
    let mut first = ConsumerProcess::start(&env(port), &[], port);
    let before = Event::new("CATALOG-0001", 1);
    producer.send_to(&before, 0).await;
    wait_until("the first event applied", || async {
        fixture.is_processed(before.id).await
    })
    .await;
    first.child.kill().unwrap();
    first.child.wait().unwrap();

    let port = free_port();
    let _second = ConsumerProcess::start(&env(port), &[], port);
    let restarted = std::time::Instant::now();
    let after: Vec<Event> = (0..2).map(|_| Event::new("CATALOG-0001", 1)).collect();
    producer.send_to(&after[0], 0).await;
    producer.send_to(&after[1], 1).await;
    eventually(Duration::from_secs(20), || async {
        let mut all = true;
        for event in &after {
            all &= fixture.is_processed(event.id).await;
        }
        all.then_some(())
    })
    .await
    .expect("events of both partitions applied well within the 45 s session timeout");
    eprintln!(
        "restarted static member applied again after {:?}",
        restarted.elapsed()
    );
    assert_eq!(fixture.stock("CATALOG-0001").await, 997);
}

#[test]
fn settings_that_would_wedge_the_consumer_are_refused_at_start_up_naming_the_setting() {
    for (variable, value) in [
        ("COMMIT_INTERVAL_MS", "0"),
        ("KAFKA_SESSION_TIMEOUT_MS", "0"),
        ("BATCH_SIZE", "0"),
        ("FETCH_WAIT_MAX_MS", "0"),
        ("STALLED_AFTER_SECS", "0"),
        ("APPLY_LANES", "0"),
        // More lanes than the pool's connections (10 by default).
        ("APPLY_LANES", "11"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_catalog-consumer"))
            .env_clear()
            .env(variable, value)
            .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
            .output()
            .expect("run catalog-consumer");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{variable}={value} was accepted");
        assert!(stderr.contains(variable), "{variable}={value}: {stderr}");
    }
}
