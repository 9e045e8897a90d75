//! Measures how fast an idle relay picks up single orders.
//!
//! ```text
//! TEST_DATABASE_URL=postgres://postgres:postgres@127.0.0.1:5432/postgres KAFKA_BROKERS=127.0.0.1:9092 \
//!     cargo run -p outbox-relay --release --example pickup_latency
//! ```
//!
//! Against a fresh database and topic, with a relay on its default settings, it commits 200
//! single outbox rows the way order-api does (one row per transaction, then a coalesced
//! `pg_notify` after the commit), each after a pause of 20–80 ms so the relay is idle, and times
//! commit → row deleted by the relay (picked up, acknowledged by the broker, deleted) and
//! commit → message received by a consumer. It repeats without the notification (adaptive
//! polling alone) and prints p50/p99/max.

use std::time::{Duration, Instant};

use clap::Parser;
use outbox_core::{
    db::{ORDERS_MIGRATOR, OUTBOX_WAKEUP_CHANNEL},
    event::{ORDER_API_SOURCE, ORDER_PLACED_TYPE},
};
use outbox_relay::{Relay, Settings};
use rdkafka::{
    consumer::{Consumer, StreamConsumer},
    ClientConfig, Message, Offset, TopicPartitionList,
};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const ORDERS: usize = 200;

fn main() -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let brokers = testkit::kafka_brokers().await;
    let (database_url, pool) = testkit::fresh_database(&ORDERS_MIGRATOR).await?;
    let topic = testkit::fresh_topic(&brokers, "pickup-latency", 6).await?;
    let settings = Settings::try_parse_from([
        "outbox-relay",
        "--http-addr",
        "127.0.0.1:0",
        "--database-url",
        &database_url,
        "--kafka-brokers",
        &brokers,
        "--skip-migrations",
    ])?;
    let idle_max = settings.idle_poll_max_ms;
    let relay = Relay::build(settings).await?;
    let shutdown = CancellationToken::new();
    let relay_task = tokio::spawn(relay.run_until_stopped(shutdown.clone()));

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", format!("pickup-latency-{}", Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .set("fetch.error.backoff.ms", "5")
        .set("log_level", "3")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..6 {
        assignment.add_partition_offset(&topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;

    // Warm-up: connections, metadata, producer id.
    measure(&pool, &consumer, &topic, 5, true).await?;
    let with_notify = measure(&pool, &consumer, &topic, ORDERS, true).await?;
    let polling_only = measure(&pool, &consumer, &topic, ORDERS, false).await?;
    let polling = format!("polling only (IDLE_POLL_MAX_MS={idle_max})");
    report(
        "with pg_notify after commit: commit -> acked and deleted",
        with_notify.deleted,
    );
    report(
        "with pg_notify after commit: commit -> consumer received",
        with_notify.received,
    );
    report(
        &format!("{polling}: commit -> acked and deleted"),
        polling_only.deleted,
    );
    report(
        &format!("{polling}: commit -> consumer received"),
        polling_only.received,
    );

    shutdown.cancel();
    relay_task.await??;
    Ok(())
}

async fn measure(
    pool: &PgPool,
    consumer: &StreamConsumer,
    topic: &str,
    orders: usize,
    notify: bool,
) -> anyhow::Result<Timings> {
    let mut timings = Timings::default();
    for i in 0..orders {
        tokio::time::sleep(Duration::from_millis(20 + (i as u64 * 37) % 61)).await;
        let event_id = Uuid::now_v7();
        let key = format!("CATALOG-{:04}", i % 3 + 1);
        let payload = serde_json::json!({ "seq": i });
        let mut tx = pool.begin().await?;
        sqlx::query(
            "insert into outbox (event_id, topic, partition_key, event_type, source, subject, payload)
             values ($1, $2, $3, $4, $5, $1::text, $6)",
        )
        .bind(event_id)
        .bind(topic)
        .bind(&key)
        .bind(ORDER_PLACED_TYPE)
        .bind(ORDER_API_SOURCE)
        .bind(&payload)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        let committed = Instant::now();
        if notify {
            sqlx::query("select pg_notify($1, '')")
                .bind(OUTBOX_WAKEUP_CHANNEL)
                .execute(pool)
                .await?;
        }
        // Acked and deleted: the relay's own pick-up, publish and delete.
        loop {
            let left: Option<i32> = sqlx::query_scalar("select 1 from outbox where event_id = $1")
                .bind(event_id)
                .fetch_optional(pool)
                .await?;
            if left.is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        timings.deleted.push(committed.elapsed());
        let wanted = event_id.to_string();
        loop {
            let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
                .await
                .map_err(|_| anyhow::anyhow!("order {i} not received within 30 s"))??;
            let id = message
                .headers()
                .and_then(|headers| {
                    use rdkafka::message::Headers;
                    headers
                        .iter()
                        .find(|h| h.key == "ce_id")
                        .and_then(|h| h.value)
                })
                .map(|v| String::from_utf8_lossy(v).into_owned());
            if id.as_deref() == Some(wanted.as_str()) {
                break;
            }
        }
        timings.received.push(committed.elapsed());
    }
    Ok(timings)
}

#[derive(Default)]
struct Timings {
    /// Commit -> the relay deleted the row (it was acknowledged by the broker).
    deleted: Vec<Duration>,
    /// Commit -> a consumer received the message.
    received: Vec<Duration>,
}

fn report(label: &str, mut latencies: Vec<Duration>) {
    latencies.sort();
    let at = |q: f64| {
        latencies[((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1]
    };
    println!(
        "{label}: n={} p50={:.1} ms p99={:.1} ms max={:.1} ms",
        latencies.len(),
        at(0.50).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        at(1.0).as_secs_f64() * 1e3,
    );
}
