//! Test support: a relay spawned on port 0 against a fresh database and its own topic, rows
//! inserted the way order-api writes them, and a topic read to its partitions' high watermarks.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use anyhow::Context;
use clap::Parser;
use outbox_core::{
    db::ORDERS_MIGRATOR,
    event::{CloudEvent, ORDER_API_SOURCE, ORDER_PLACED_TYPE},
};
use outbox_relay::{Relay, Settings};
use rdkafka::{
    message::{OwnedHeaders, OwnedMessage},
    Message,
};
use sqlx::{PgExecutor, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use testkit::eventually;

/// A fresh orders database and its own topic on the test broker.
pub struct TestEnv {
    pub database_url: String,
    pub pool: PgPool,
    pub brokers: String,
    pub topic: String,
}

impl TestEnv {
    pub async fn new(partitions: i32) -> Self {
        let brokers = testkit::kafka_brokers().await;
        Self::with_brokers(brokers, partitions).await
    }

    /// A fresh database, and a topic on `brokers`.
    pub async fn with_brokers(brokers: String, partitions: i32) -> Self {
        let topic = testkit::fresh_topic(&brokers, "relay-test", partitions)
            .await
            .expect("fresh topic");
        Self::with_topic(brokers, topic).await
    }

    /// A fresh database, and an existing topic on `brokers` (e.g. of a mock cluster).
    pub async fn with_topic(brokers: String, topic: String) -> Self {
        let (database_url, pool) = testkit::fresh_database(&ORDERS_MIGRATOR)
            .await
            .expect("fresh database");
        Self {
            database_url,
            pool,
            brokers,
            topic,
        }
    }

    /// Relay settings for this environment: port 0, quick idle polling, and the given extra
    /// flags (e.g. `["--max-attempts", "3"]`).
    pub fn settings(&self, extra: &[&str]) -> Settings {
        // Flags given in `extra` override these.
        let mut args = vec![
            "outbox-relay",
            "--http-addr",
            "127.0.0.1:0",
            "--database-url",
            &self.database_url,
            "--kafka-brokers",
            &self.brokers,
            "--skip-migrations",
            "--stats-interval-secs",
            "1",
        ];
        args.extend_from_slice(extra);
        Settings::try_parse_from(args).expect("valid test settings")
    }

    pub async fn spawn_relay(&self, extra: &[&str]) -> RunningRelay {
        RunningRelay::spawn(self.settings(extra)).await
    }

    /// Inserts one row per `(key, seq)` in one statement, ids in the given order.
    pub async fn insert(&self, rows: &[(String, i64)]) -> Vec<Uuid> {
        insert_rows(&self.pool, &self.topic, rows, 0).await
    }

    pub async fn read_topic(&self) -> Vec<Published> {
        read_topic(&self.brokers, &self.topic).await
    }

    /// Reads the topic (to its end) until it holds at least `count` messages.
    pub async fn wait_for_messages(&self, count: usize, deadline: Duration) -> Vec<Published> {
        let brokers = self.brokers.clone();
        let topic = self.topic.clone();
        eventually(deadline, || {
            let (brokers, topic) = (brokers.clone(), topic.clone());
            async move {
                let messages = read_topic(&brokers, &topic).await;
                (messages.len() >= count).then_some(messages)
            }
        })
        .await
        .with_context(|| format!("{count} messages did not arrive on {}", self.topic))
        .unwrap()
    }

    pub async fn rows(&self) -> Vec<OutboxRow> {
        outbox_rows(&self.pool).await
    }

    /// How many lanes hold rows of the outbox.
    pub async fn lanes_with_rows(&self) -> i64 {
        sqlx::query_scalar("select count(distinct lane) from outbox")
            .fetch_one(&self.pool)
            .await
            .expect("lanes with rows")
    }

    /// The partition keys of the rows left in the outbox, in id order.
    pub async fn keys_left(&self) -> Vec<String> {
        self.rows()
            .await
            .into_iter()
            .map(|row| row.partition_key)
            .collect()
    }

    /// Waits until the outbox is drained, then reads the whole topic and asserts it holds
    /// exactly the `expected` events, every key in order; returns the messages.
    pub async fn assert_drained_into_topic_in_key_order(
        &self,
        expected: impl IntoIterator<Item = Uuid>,
        deadline: Duration,
    ) -> Vec<Published> {
        self.wait_until_drained(deadline).await;
        let messages = self.read_topic().await;
        let expected: HashSet<Uuid> = expected.into_iter().collect();
        assert_eq!(event_ids(&messages), expected, "every event, nothing else");
        assert_each_key_in_order(&messages);
        messages
    }

    /// Waits until the outbox is empty.
    pub async fn wait_until_drained(&self, deadline: Duration) {
        self.wait_for_rows_left(deadline, |left| left == 0)
            .await
            .expect("the outbox was not drained in time");
    }

    /// Waits until the number of rows left in the outbox satisfies `done`.
    pub async fn wait_for_rows_left(
        &self,
        deadline: Duration,
        done: impl Fn(i64) -> bool,
    ) -> anyhow::Result<()> {
        let pool = self.pool.clone();
        let done = &done;
        eventually(deadline, || {
            let pool = pool.clone();
            async move {
                let left: i64 = sqlx::query_scalar("select count(*) from outbox")
                    .fetch_one(&pool)
                    .await
                    .ok()?;
                done(left).then_some(())
            }
        })
        .await
    }
}

/// A relay running in this process.
pub struct RunningRelay {
    pub port: u16,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningRelay {
    pub async fn spawn(settings: Settings) -> Self {
        let relay = Relay::build(settings).await.expect("relay builds");
        let port = relay.port();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(relay.run_until_stopped(shutdown.clone()));
        Self {
            port,
            shutdown,
            task,
        }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the relay stops within 30 s")
            .expect("relay task")
            .expect("relay ran");
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        reqwest::get(format!("http://127.0.0.1:{}{path}", self.port))
            .await
            .expect("relay HTTP")
    }

    /// Waits until the relay, idle, waits at least `seconds` between polls.
    pub async fn wait_until_idle_wait_reaches(&self, seconds: f64) {
        self.wait_until_metric_reaches("outbox_relay_idle_wait_seconds", seconds)
            .await;
    }

    /// Waits until the sum of a metric's samples (see [`Self::metric`]) is at least `value`.
    pub async fn wait_until_metric_reaches(&self, name: &str, value: f64) {
        eventually(Duration::from_secs(30), || async {
            (self.metric(name).await >= value).then_some(())
        })
        .await
        .unwrap_or_else(|_| panic!("{name} did not reach {value} within 30 s"));
    }

    /// The sum of a metric's samples (all label values) from `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        let body = self.get("/metrics").await.text().await.expect("metrics");
        parse_metric(&body, name)
    }
}

pub fn parse_metric(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let metric = series.split('{').next()?;
            (metric == name).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// `n` rows over `keys` keys, round robin: key `k{i % keys}`, seq = i.
pub fn round_robin(n: i64, keys: i64) -> Vec<(String, i64)> {
    (0..n).map(|i| (format!("k{:03}", i % keys), i)).collect()
}

/// Inserts rows as order-api does (one statement), with a payload `{"key", "seq", "pad"}` where
/// `pad` is `pad_bytes` long.
pub async fn insert_rows<'e>(
    executor: impl PgExecutor<'e>,
    topic: &str,
    rows: &[(String, i64)],
    pad_bytes: usize,
) -> Vec<Uuid> {
    let event_ids: Vec<Uuid> = rows.iter().map(|_| Uuid::now_v7()).collect();
    let keys: Vec<&str> = rows.iter().map(|(key, _)| key.as_str()).collect();
    let payloads: Vec<serde_json::Value> = rows
        .iter()
        .map(|(key, seq)| serde_json::json!({ "key": key, "seq": seq, "pad": "x".repeat(pad_bytes) }))
        .collect();
    sqlx::query(
        "insert into outbox (event_id, topic, partition_key, event_type, source, subject, payload, traceparent)
         select e, $2, k, $3, $4, e::text, p, '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'
           from unnest($1::uuid[], $5::text[], $6::jsonb[]) with ordinality as r(e, k, p, n)
          order by n",
    )
    .bind(&event_ids)
    .bind(topic)
    .bind(ORDER_PLACED_TYPE)
    .bind(ORDER_API_SOURCE)
    .bind(&keys)
    .bind(&payloads)
    .execute(executor)
    .await
    .expect("insert outbox rows");
    event_ids
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct OutboxRow {
    pub id: i64,
    pub event_id: Uuid,
    pub partition_key: String,
    pub state: String,
    pub attempts: i32,
    pub last_error: Option<String>,
}

pub async fn outbox_rows(pool: &PgPool) -> Vec<OutboxRow> {
    sqlx::query_as(
        "select id, event_id, partition_key, state, attempts, last_error from outbox order by id",
    )
    .fetch_all(pool)
    .await
    .expect("read outbox")
}

/// One message read back from the topic.
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub ce_id: Uuid,
    pub seq: i64,
    pub traceparent: Option<String>,
}

/// Reads every message of `topic`, in partition and offset order, up to each partition's high
/// watermark when the call starts: everything the broker acknowledged before the call, exactly.
/// "Nothing more" is never judged by a quiet period, so a late duplicate cannot hide behind one.
pub async fn read_topic(brokers: &str, topic: &str) -> Vec<Published> {
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<Published>> {
        let mut messages = testkit::topic::read_to_end(&brokers, &topic)?
            .iter()
            .map(Published::of)
            .collect::<anyhow::Result<Vec<_>>>()?;
        messages.sort_by_key(|m| (m.partition, m.offset));
        Ok(messages)
    })
    .await
    .expect("reader task")
    .expect("read topic")
}

impl Published {
    fn of(message: &OwnedMessage) -> anyhow::Result<Self> {
        let event =
            CloudEvent::from_kafka_headers(message.headers().map(OwnedHeaders::as_borrowed))
                .map_err(|e| anyhow::anyhow!("bad headers: {e}"))?;
        let value: serde_json::Value = serde_json::from_slice(message.payload().unwrap_or(b""))?;
        Ok(Self {
            partition: message.partition(),
            offset: message.offset(),
            key: String::from_utf8(message.key().unwrap_or_default().to_vec())?,
            ce_id: event.id,
            seq: value["seq"].as_i64().context("seq")?,
            traceparent: event.traceparent,
        })
    }
}

/// The event ids of `messages`, each once.
pub fn event_ids(messages: &[Published]) -> HashSet<Uuid> {
    messages.iter().map(|m| m.ce_id).collect()
}

/// Asserts that the events of every key first appear on the topic in seq order; returns each
/// key's seqs in that order.
pub fn assert_each_key_in_order(messages: &[Published]) -> HashMap<String, Vec<i64>> {
    let by_key = first_seen_order(messages);
    for (key, seqs) in &by_key {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "key {key} arrived out of order: {seqs:?}"
        );
    }
    by_key
}

/// The seqs of each key in the order their first copy appears on the topic (duplicates from a
/// re-publish after a crash are ignored).
pub fn first_seen_order(messages: &[Published]) -> HashMap<String, Vec<i64>> {
    let mut seen = std::collections::HashSet::new();
    let mut by_key: HashMap<String, Vec<i64>> = HashMap::new();
    for message in messages {
        if seen.insert(message.ce_id) {
            by_key
                .entry(message.key.clone())
                .or_default()
                .push(message.seq);
        }
    }
    by_key
}

/// Runs the `outbox-relay` binary with `args` against `database_url`; its exit status and stdout.
pub async fn run_cli(database_url: &str, args: &[&str]) -> (std::process::ExitStatus, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_outbox-relay"));
    command
        .args(args)
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "warn");
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("cli task")
        .expect("run outbox-relay");
    let stdout = String::from_utf8(output.stdout).expect("utf-8 stdout");
    if !output.status.success() {
        eprintln!("stderr: {}", String::from_utf8_lossy(&output.stderr));
    }
    (output.status, stdout)
}

/// `outbox-relay status`, parsed.
pub async fn cli_status(database_url: &str) -> serde_json::Value {
    let (status, stdout) = run_cli(database_url, &["status"]).await;
    assert!(status.success(), "status failed: {stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "status prints one line: {stdout}");
    serde_json::from_str(lines[0]).expect("status prints JSON")
}
