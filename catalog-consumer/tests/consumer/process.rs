use std::{path::Path, process::Command, time::Duration};

use clap::CommandFactory;

use crate::helpers::{
    eventually, free_port, spawn_consumer, wait_until, ConsumerProcess, Event, Fixture,
};

#[tokio::test]
async fn killed_after_the_database_commit_and_before_the_offset_commit_the_redelivered_messages_are_duplicates(
) {
    let fixture = Fixture::new(1).await;
    fixture.seed_products(&[("CATALOG-0001", 1000)]).await;
    let producer = fixture.producer();
    let events: Vec<Event> = (0..30).map(|_| Event::new("CATALOG-0001", 1)).collect();
    for event in &events {
        producer.send(event).await;
    }

    let port = free_port();
    let mut env = fixture.binary_env(port);
    env.push(("COMMIT_INTERVAL_MS", "100".into()));
    let mut first = ConsumerProcess::start(&env, &["--test-hold-offsets"], port);
    wait_until("a batch committed to the database", || async {
        fixture.processed_count().await > 0
    })
    .await;
    // SIGKILL: no shutdown path runs.
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let held = fixture.processed_count().await;
    assert!(held > 0 && held <= 30);
    assert_eq!(
        fixture.committed_offsets().await,
        [None],
        "no offset was committed"
    );
    assert_eq!(fixture.stock("CATALOG-0001").await, 1000 - held as i32);

    let port = free_port();
    let second = ConsumerProcess::start(&fixture.binary_env(port), &[], port);
    wait_until("all 30 accounted for after the restart", || async {
        let (applied, duplicate) = (
            second.messages("applied").await,
            second.messages("duplicate").await,
        );
        applied.zip(duplicate).map(|(a, d)| a + d) == Some(30)
    })
    .await;
    assert_eq!(second.messages("duplicate").await, Some(held as u64));
    assert_eq!(second.messages("applied").await, Some(30 - held as u64));
    assert_eq!(fixture.stock("CATALOG-0001").await, 1000 - 30);
    assert_eq!(fixture.processed_count().await, 30);
    assert_eq!(fixture.outcomes().await.get("applied"), Some(&30));
    fixture.wait_for_committed(&[Some(30)]).await;
}

#[tokio::test]
async fn sigterm_commits_what_was_applied_leaves_the_group_and_exits_zero() {
    let fixture = Fixture::new(1).await;
    fixture.seed_products(&[("CATALOG-0001", 1000)]).await;
    let producer = fixture.producer();
    for _ in 0..10 {
        producer.send(&Event::new("CATALOG-0001", 1)).await;
    }

    let port = free_port();
    let mut env = fixture.binary_env(port);
    // No periodic commit and a long session: only the shutdown path can commit, and only
    // leaving the group lets the next member in quickly.
    env.push(("COMMIT_INTERVAL_MS", "600000".into()));
    env.push(("KAFKA_SESSION_TIMEOUT_MS", "45000".into()));
    let mut process = ConsumerProcess::start(&env, &[], port);
    wait_until("ten messages applied", || async {
        fixture.processed_count().await == 10
    })
    .await;
    let status = Command::new("kill")
        .args(["-TERM", &process.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = eventually(Duration::from_secs(20), || {
        let exited = process.child.try_wait().unwrap();
        async move { exited }
    })
    .await
    .expect("exits after SIGTERM");
    assert_eq!(exit.code(), Some(0), "{exit:?}");
    assert_eq!(fixture.committed_offsets().await, [Some(10)]);

    // The group was left: a new member gets the partition well before the 45 s session
    // timeout of the old one would have expired.
    let started = std::time::Instant::now();
    let next = spawn_consumer(fixture.settings()).await;
    producer.send(&Event::new("CATALOG-0001", 1)).await;
    wait_until("the next member applies a new message", || async {
        fixture.processed_count().await == 11
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(next.messages("duplicate").await, 0, "nothing redelivered");
    next.stop().await;
    assert_eq!(fixture.stock("CATALOG-0001").await, 1000 - 11);
}

#[test]
fn help_lists_every_setting_with_its_environment_variable_and_default() {
    let binary = Path::new(env!("CARGO_BIN_EXE_catalog-consumer"));
    testkit::process::assert_help_lists_every_setting(
        binary,
        &catalog_consumer::Cli::command(),
        &[
            ("HTTP_ADDR", Some("127.0.0.1:8081")),
            (
                "DATABASE_URL",
                Some("postgres://postgres:postgres@127.0.0.1:5432/catalog"),
            ),
            ("DB_MAX_CONNECTIONS", Some("10")),
            ("DB_ACQUIRE_TIMEOUT_SECS", Some("5")),
            ("SKIP_MIGRATIONS", None),
            ("KAFKA_BROKERS", Some("127.0.0.1:9092")),
            ("ORDER_EVENTS_TOPIC", Some("order-events")),
            ("CONSUMER_GROUP", Some("catalog-consumer")),
            ("DLQ_TOPIC", Some("order-events.dlq")),
            ("BATCH_SIZE", Some("2000")),
            ("APPLY_LANES", Some("4")),
            ("BATCH_WAIT_MS", Some("0")),
            ("COMMIT_INTERVAL_MS", Some("1000")),
            ("KAFKA_SESSION_TIMEOUT_MS", Some("45000")),
            ("RETRY_MAX_BACKOFF_MS", Some("5000")),
            ("CONSUMER_INSTANCE_ID", None),
            ("FETCH_WAIT_MAX_MS", Some("10")),
            ("FETCH_MIN_BYTES", Some("1")),
            ("STALLED_AFTER_SECS", Some("60")),
            ("DLQ_MESSAGE_MAX_BYTES", Some("1000000")),
        ],
    );
    let help = Command::new(binary).arg("--help").output().expect("--help");
    assert!(
        !String::from_utf8_lossy(&help.stdout).contains("hold-offsets"),
        "the test hook stays hidden"
    );
}
