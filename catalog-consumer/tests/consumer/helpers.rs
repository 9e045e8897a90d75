//! Test support: a fresh catalog database, topic, dead-letter topic and consumer group per test;
//! the consumer run in-process on port 0 (or as the real binary); a producer of well-formed and
//! malformed events; readers of what was persisted, published and committed.

use std::{
    collections::HashMap,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::Context;
use catalog_consumer::{Consumer, Settings};
use chrono::{DateTime, Utc};
use clap::Parser;
use outbox_core::{
    db::CATALOG_MIGRATOR,
    event::{CloudEvent, OrderPlaced, ORDER_API_SOURCE, ORDER_PLACED_TYPE},
};
use rdkafka::{
    consumer::{BaseConsumer, Consumer as _},
    message::{Header, Headers, Message, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
    ClientConfig, Offset, TopicPartitionList,
};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use testkit::eventually;

/// How long a test waits for a condition that should hold soon.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// One test's own catalog database, topics and group.
pub struct Fixture {
    pub database_url: String,
    pub pool: PgPool,
    pub brokers: String,
    pub topic: String,
    pub dlq_topic: String,
    pub group: String,
    pub partitions: i32,
}

impl Fixture {
    pub async fn new(partitions: i32) -> Self {
        let (database_url, pool) = testkit::fresh_database(&CATALOG_MIGRATOR)
            .await
            .expect("fresh catalog database");
        let brokers = testkit::kafka_brokers().await;
        let topic = testkit::fresh_topic(&brokers, "order-events", partitions)
            .await
            .expect("fresh topic");
        let dlq_topic = testkit::fresh_topic(&brokers, "order-events-dlq", 1)
            .await
            .expect("fresh dead-letter topic");
        let group = format!("catalog-consumer-{}", Uuid::new_v4().simple());
        Self {
            database_url,
            pool,
            brokers,
            topic,
            dlq_topic,
            group,
            partitions,
        }
    }

    /// Settings for a consumer of this fixture: port 0, quick retries and commits.
    pub fn settings(&self) -> Settings {
        let mut settings = Settings::parse_from(["catalog-consumer"]);
        settings.http_addr = "127.0.0.1:0".into();
        settings.database_url = self.database_url.clone();
        settings.pool.db_acquire_timeout_secs = 1;
        settings.pool.db_max_connections = 4;
        settings.kafka.kafka_brokers = self.brokers.clone();
        settings.order_events_topic = self.topic.clone();
        settings.dlq_topic = self.dlq_topic.clone();
        settings.consumer_group = self.group.clone();
        settings.batch_size = 500;
        settings.batch_wait_ms = 20;
        settings.commit_interval_ms = 100;
        settings.kafka_session_timeout_ms = 6000;
        settings.retry_max_backoff_ms = 500;
        settings.test_hold_offsets = false;
        settings.stalled_after_secs = 60;
        settings
    }

    /// The environment the real binary needs to run as a consumer of this fixture.
    pub fn binary_env(&self, http_port: u16) -> Vec<(&'static str, String)> {
        vec![
            ("HTTP_ADDR", format!("127.0.0.1:{http_port}")),
            ("DATABASE_URL", self.database_url.clone()),
            ("KAFKA_BROKERS", self.brokers.clone()),
            ("ORDER_EVENTS_TOPIC", self.topic.clone()),
            ("DLQ_TOPIC", self.dlq_topic.clone()),
            ("CONSUMER_GROUP", self.group.clone()),
            ("BATCH_WAIT_MS", "20".into()),
            ("KAFKA_SESSION_TIMEOUT_MS", "6000".into()),
            ("RETRY_MAX_BACKOFF_MS", "500".into()),
            ("RUST_LOG", "warn".into()),
        ]
    }

    pub async fn spawn_consumer(&self) -> TestConsumer {
        spawn_consumer(self.settings()).await
    }

    pub async fn seed_products(&self, products: &[(&str, i32)]) {
        for (product_id, stock) in products {
            sqlx::query(
                "insert into products (product_id, product_name, stock, unit_price)
                 values ($1, $2, $3, 1500)",
            )
            .bind(product_id)
            .bind(format!("Product {product_id}"))
            .bind(stock)
            .execute(&self.pool)
            .await
            .expect("seed product");
        }
    }

    pub async fn stock(&self, product_id: &str) -> i32 {
        sqlx::query_scalar("select stock from products where product_id = $1")
            .bind(product_id)
            .fetch_one(&self.pool)
            .await
            .expect("stock")
    }

    /// `processed_events` rows by outcome.
    pub async fn outcomes(&self) -> HashMap<String, i64> {
        sqlx::query_as::<_, (String, i64)>(
            "select outcome, count(*) from processed_events group by outcome",
        )
        .fetch_all(&self.pool)
        .await
        .expect("outcomes")
        .into_iter()
        .collect()
    }

    pub async fn processed_count(&self) -> i64 {
        sqlx::query_scalar("select count(*) from processed_events")
            .fetch_one(&self.pool)
            .await
            .expect("processed count")
    }

    pub async fn is_processed(&self, event_id: Uuid) -> bool {
        sqlx::query_scalar("select exists (select 1 from processed_events where event_id = $1)")
            .bind(event_id)
            .fetch_one(&self.pool)
            .await
            .expect("processed lookup")
    }

    pub fn producer(&self) -> EventProducer {
        EventProducer::new(&self.brokers, &self.topic)
    }

    /// The group's committed offset of each partition (`None` when nothing was committed).
    pub async fn committed_offsets(&self) -> Vec<Option<i64>> {
        committed_offsets(&self.brokers, &self.group, &self.topic, self.partitions).await
    }

    /// Waits until the group's committed offsets are `expected`.
    pub async fn wait_for_committed(&self, expected: &[Option<i64>]) {
        let result = eventually(DEADLINE, || async {
            (self.committed_offsets().await == expected).then_some(())
        })
        .await;
        if result.is_err() {
            let last = self.committed_offsets().await;
            panic!("committed offsets are {last:?}, expected {expected:?}");
        }
    }

    /// Every message of the dead-letter topic, from the beginning.
    pub async fn dead_letters(&self, expected: usize) -> Vec<DeadLetter> {
        read_topic(&self.brokers, &self.dlq_topic, expected).await
    }

    /// Whether the dead-letter topic holds no message at all. (The high watermark is only
    /// compared with zero: Tansu 0.6 reports one past the last batch's base offset, not past
    /// its last record.)
    pub async fn dead_letter_topic_is_empty(&self) -> bool {
        high_watermarks(&self.brokers, &self.dlq_topic, 1).await == [0]
    }
}

/// The consumer running in-process.
pub struct TestConsumer {
    pub address: String,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    http: reqwest::Client,
}

pub async fn spawn_consumer(settings: Settings) -> TestConsumer {
    // Logs only when asked for: they go to stdout, past the test harness's capture.
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = outbox_core::telemetry::init("catalog-consumer");
    }
    let consumer = Consumer::build(settings).await.expect("build the consumer");
    let address = format!("http://127.0.0.1:{}", consumer.port());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(consumer.run_until_stopped(shutdown.clone()));
    TestConsumer {
        address,
        shutdown,
        task,
        http: reqwest::Client::new(),
    }
}

impl TestConsumer {
    /// As SIGTERM does: finish the batch in hand, commit, leave the group.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("consumer stops in time")
            .expect("consumer task")
            .expect("consumer stops cleanly");
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .expect("request")
    }

    pub async fn get_catalogs(&self) -> reqwest::Response {
        self.get("/catalogs").await
    }

    pub async fn get_catalog(&self, product_id: &str) -> reqwest::Response {
        self.get(&format!("/catalogs/{product_id}")).await
    }

    pub async fn metrics(&self) -> String {
        self.get("/metrics").await.text().await.expect("metrics")
    }

    /// `catalog_consumer_messages_total{result=...}`.
    pub async fn messages(&self, result: &str) -> u64 {
        messages_metric(&self.metrics().await, result)
    }

    /// `catalog_consumer_batch_retries_total{cause=...}`.
    pub async fn retries(&self, cause: &str) -> u64 {
        metric_value(
            &self.metrics().await,
            &format!("catalog_consumer_batch_retries_total{{cause=\"{cause}\"}}"),
        )
    }
}

pub fn messages_metric(metrics: &str, result: &str) -> u64 {
    metric_value(
        metrics,
        &format!("catalog_consumer_messages_total{{result=\"{result}\"}}"),
    )
}

/// The value of an unlabelled gauge in a `/metrics` body (0 when absent).
pub fn metric_gauge(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

pub fn metric_value(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .map_or(0, |value| value as u64)
}

/// The real binary, as a child process.
pub struct ConsumerProcess {
    pub child: Child,
    pub address: String,
}

impl ConsumerProcess {
    pub fn start(env: &[(&'static str, String)], http_port: u16) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_catalog-consumer"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start catalog-consumer");
        Self {
            child,
            address: format!("http://127.0.0.1:{http_port}"),
        }
    }

    /// `catalog_consumer_messages_total{result=...}`, once the process serves HTTP.
    pub async fn messages(&self, result: &str) -> Option<u64> {
        let metrics = reqwest::get(format!("{}/metrics", self.address))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        Some(messages_metric(&metrics, result))
    }
}

impl Drop for ConsumerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free local port (the OS picks it; it is released for the child to bind).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A well-formed `order.placed.v1` event: its id, headers and value.
pub struct Event {
    pub id: Uuid,
    pub product_id: String,
    pub time: DateTime<Utc>,
    pub order: OrderPlaced,
}

impl Event {
    pub fn new(product_id: &str, quantity: i32) -> Self {
        let time = Utc::now();
        let unit_price = 1500;
        Self {
            id: Uuid::now_v7(),
            product_id: product_id.into(),
            time,
            order: OrderPlaced {
                order_id: Uuid::now_v7(),
                user_id: "user-1".into(),
                product_id: product_id.into(),
                quantity,
                unit_price,
                total_price: i64::from(quantity) * unit_price,
                created_at: time,
            },
        }
    }

    pub fn headers(&self) -> OwnedHeaders {
        CloudEvent {
            id: self.id,
            event_type: ORDER_PLACED_TYPE.into(),
            source: ORDER_API_SOURCE.into(),
            time: self.time,
            subject: self.order.order_id.to_string(),
            traceparent: None,
            tracestate: None,
        }
        .to_kafka_headers()
    }

    pub fn value(&self) -> Vec<u8> {
        serde_json::to_vec(&self.order).expect("event json")
    }
}

/// A message as it is put on the topic, malformed or not.
#[derive(Clone)]
pub struct RawMessage {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Option<OwnedHeaders>,
}

impl From<&Event> for RawMessage {
    fn from(event: &Event) -> Self {
        Self {
            key: Some(event.product_id.clone().into_bytes()),
            value: Some(event.value()),
            headers: Some(event.headers()),
        }
    }
}

/// Produces to the test's topic and waits for each acknowledgement.
pub struct EventProducer {
    producer: FutureProducer,
    topic: String,
}

impl EventProducer {
    pub fn new(brokers: &str, topic: &str) -> Self {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .create()
            .expect("producer");
        Self {
            producer,
            topic: topic.into(),
        }
    }

    /// Sends `event` keyed by its product (the broker's partitioner picks the partition).
    pub async fn send(&self, event: &Event) -> (i32, i64) {
        self.send_raw(&RawMessage::from(event), None).await
    }

    /// Sends `event` to `partition`.
    pub async fn send_to(&self, event: &Event, partition: i32) -> (i32, i64) {
        self.send_raw(&RawMessage::from(event), Some(partition))
            .await
    }

    /// Sends a message as given; returns its partition and offset.
    pub async fn send_raw(&self, message: &RawMessage, partition: Option<i32>) -> (i32, i64) {
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic);
        if let Some(key) = &message.key {
            record = record.key(key.as_slice());
        }
        if let Some(value) = &message.value {
            record = record.payload(value.as_slice());
        }
        if let Some(headers) = &message.headers {
            record = record.headers(headers.clone());
        }
        if let Some(partition) = partition {
            record = record.partition(partition);
        }
        let delivery = self
            .producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(error, _)| error)
            .expect("produce");
        (delivery.partition, delivery.offset)
    }
}

/// The group's committed offsets of `topic`, per partition.
pub async fn committed_offsets(
    brokers: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> Vec<Option<i64>> {
    let (brokers, group, topic) = (brokers.to_owned(), group.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        // Not subscribed: it only asks the coordinator, it never joins the group.
        let reader: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .create()
            .expect("offset reader");
        let mut list = TopicPartitionList::new();
        for partition in 0..partitions {
            list.add_partition(&topic, partition);
        }
        let committed = reader
            .committed_offsets(list, Duration::from_secs(5))
            .expect("committed offsets");
        (0..partitions)
            .map(|partition| {
                match committed
                    .find_partition(&topic, partition)
                    .map(|e| e.offset())
                {
                    Some(Offset::Offset(offset)) => Some(offset),
                    _ => None,
                }
            })
            .collect()
    })
    .await
    .expect("offset reader task")
}

pub async fn high_watermarks(brokers: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let reader: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .expect("watermark reader");
        (0..partitions)
            .map(|partition| {
                reader
                    .fetch_watermarks(&topic, partition, Duration::from_secs(5))
                    .expect("watermarks")
                    .1
            })
            .collect()
    })
    .await
    .expect("watermark task")
}

/// A message read back from the dead-letter topic.
#[derive(Debug)]
pub struct DeadLetter {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl DeadLetter {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .and_then(|(_, value)| value.as_ref())
            .map(|value| String::from_utf8_lossy(value).into_owned())
    }
}

/// Reads partition 0 of `topic` from the beginning until `expected` messages were read (or
/// the deadline passed), then returns them.
pub async fn read_topic(brokers: &str, topic: &str, expected: usize) -> Vec<DeadLetter> {
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let reader: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", format!("reader-{}", Uuid::new_v4().simple()))
            .set("enable.auto.commit", "false")
            .create()
            .expect("topic reader");
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(&topic, 0, Offset::Beginning)
            .expect("partition");
        reader.assign(&list).expect("assign");
        let started = std::time::Instant::now();
        let mut read = Vec::new();
        while read.len() < expected && started.elapsed() < DEADLINE {
            let Some(message) = reader.poll(Duration::from_millis(200)) else {
                continue;
            };
            let message = message.expect("read message");
            let headers = message
                .headers()
                .map(|headers| {
                    headers
                        .iter()
                        .map(|h: Header<'_, &[u8]>| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                        .collect()
                })
                .unwrap_or_default();
            read.push(DeadLetter {
                key: message.key().map(<[u8]>::to_vec),
                value: message.payload().map(<[u8]>::to_vec),
                headers,
            });
        }
        read
    })
    .await
    .expect("topic reader task")
}

/// Waits for `condition` on the fixture, with a message naming what was awaited.
pub async fn wait_until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually(DEADLINE, || {
        let check = condition();
        async move { check.await.then_some(()) }
    })
    .await
    .with_context(|| format!("waiting for {what}"))
    .unwrap();
}
