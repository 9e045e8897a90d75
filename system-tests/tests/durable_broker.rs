//! `scripts/run.sh` runs the local broker with durable storage so that stopping and starting the
//! local system loses no event: events published but not yet consumed before the stop are
//! still there after the broker restarts, and so is the consumer group's committed offset.

use std::{path::PathBuf, process::Command, time::Duration};

use rdkafka::{
    consumer::{BaseConsumer, CommitMode, Consumer},
    producer::{FutureProducer, FutureRecord},
    ClientConfig, Message,
};
use system_tests::{free_port, start_nisshi, KillOnDrop};

struct Broker(KillOnDrop);

impl Broker {
    /// nisshi with SQLite storage in `dir`, as `scripts/run.sh` starts it (the storage URL is
    /// relative to the working directory).
    async fn start(dir: &std::path::Path, address: &str) -> Self {
        Self(start_nisshi(dir, address, ["--storage-engine", "sqlite://nisshi.db"]).await)
    }

    /// Stops it the way `scripts/infra.sh down` does (SIGTERM), and waits for it to exit.
    fn stop(mut self) {
        let child = &mut (self.0).0;
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        child.wait().expect("nisshi exits");
    }
}

fn consumer(address: &str, group: &str) -> BaseConsumer {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", address)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "10")
        .create()
        .expect("consumer");
    consumer.subscribe(&["order-events"]).expect("subscribe");
    consumer
}

/// Reads until `count` messages arrived (or the deadline passed); returns their payloads.
fn read(consumer: &BaseConsumer, count: usize) -> Vec<String> {
    let started = std::time::Instant::now();
    let mut read = Vec::new();
    while read.len() < count && started.elapsed() < Duration::from_secs(60) {
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message.expect("message");
            read.push(String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned());
        }
    }
    read
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_published_before_a_durable_broker_restart_are_consumed_after_it() {
    let dir = tempdir();
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let broker = Broker::start(&dir, &address).await;
    testkit::create_topic(&address, "order-events", 6)
        .await
        .expect("topic");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &address)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .expect("producer");
    for i in 0..200 {
        producer
            .send(
                FutureRecord::to("order-events")
                    .key(&format!("CATALOG-{:04}", i % 7))
                    .payload(&format!("event-{i}")),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("acknowledged");
    }
    // The first 50 are consumed and committed before the stop; the other 150 are not.
    let group = "catalog-consumer-durability";
    let before = tokio::task::spawn_blocking({
        let address = address.clone();
        move || {
            let consumer = consumer(&address, group);
            let read = read(&consumer, 50);
            consumer
                .commit_consumer_state(CommitMode::Sync)
                .expect("commit");
            read
        }
    })
    .await
    .unwrap();
    assert!(before.len() >= 50, "read {} before the stop", before.len());
    drop(producer);
    broker.stop();

    let _broker = Broker::start(&dir, &address).await;
    let after = tokio::task::spawn_blocking({
        let address = address.clone();
        move || read(&consumer(&address, group), 200 - before.len())
    })
    .await
    .unwrap();
    let mut all: Vec<String> = after;
    all.sort();
    all.dedup();
    assert_eq!(
        all.len() + 50,
        200,
        "every event not consumed before the restart arrives after it, from the committed offset"
    );
    drop(_broker);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A fresh directory of this test's own under cargo's temporary directory for tests.
fn tempdir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("durable-broker-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
