//! Order committed → stock applied, at a fixed offered rate, open loop, through the three release
//! services on fresh databases, topic and group: per order `processed_events.processed_at −
//! orders.created_at` (one machine, one clock). Beside it, the floor every event pays: the
//! receive latency of a plain consumer with `fetch.wait.max.ms=10`.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use anyhow::Context;
use chrono::{DateTime, Utc};
use outbox_relay::metrics::seconds_since_commit;
use rand::SeedableRng;
use rdkafka::{message::Message, producer::FutureRecord};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use super::{drain::PARTITIONS, load, say};
use crate::{
    cpu::{self, CpuMeter},
    fill, kafka,
    report::{Row, Verdict},
    services::{Kind, Service},
    stats::{int, ms, Percentiles},
    Bench,
};

const TARGET_P50_MS: f64 = 15.0;
const TARGET_P99_MS: f64 = 50.0;
const STOCK: i32 = 100_000_000;
const WARMUP_ORDERS: u64 = 20;

/// Receive latency of a plain consumer (`fetch.wait.max.ms=10`) for `count` messages produced
/// with the relay's producer one `period` apart: the broker-and-client part of every latency.
pub(super) async fn receive_floor(
    bench: &Bench,
    tag: &str,
    count: u64,
    period: Duration,
) -> anyhow::Result<Percentiles> {
    let brokers = &bench.infra.brokers;
    let topic = bench.infra.fresh_topic(tag, PARTITIONS).await?;
    let consumer = kafka::plain_consumer(brokers, &topic, PARTITIONS, 10)?;
    let producer = kafka::relay_producer(brokers)?;
    let base = Instant::now();
    let receiver = tokio::spawn(async move {
        // (index, latency) of each message; index < 0 are warm-ups. Partitions deliver in
        // their own order, so the last index is not the last message.
        let mut seen = Vec::new();
        let mut measured = 0;
        loop {
            let message = match tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await
            {
                Ok(Ok(message)) => message,
                Ok(Err(error)) => return Err(anyhow::anyhow!("receive failed: {error}")),
                Err(_) => return Ok(seen),
            };
            let now = base.elapsed().as_secs_f64() * 1e3;
            let text = std::str::from_utf8(message.payload().unwrap_or_default()).unwrap_or("");
            if let Some((index, sent)) = text.split_once(':') {
                let (index, sent): (i64, f64) = (index.parse()?, sent.parse()?);
                seen.push((index, now - sent));
                if index >= 0 {
                    measured += 1;
                    if measured == count {
                        return Ok(seen);
                    }
                }
            }
        }
    });
    let send = |index: i64| {
        let payload = format!("{index}:{}", base.elapsed().as_secs_f64() * 1e3);
        let key = format!("k{}", index.rem_euclid(1000));
        producer
            .send_result(FutureRecord::to(&topic).key(&key).payload(&payload))
            .map_err(|(e, _)| anyhow::anyhow!("cannot enqueue: {e}"))
    };
    // Warm-up: connections and metadata in place before the measured messages.
    for index in -10..0 {
        send(index)?.await.ok();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = tokio::time::Instant::now();
    let mut acks = Vec::new();
    for index in 0..count {
        tokio::time::sleep_until(start + period.mul_f64(index as f64)).await;
        acks.push(send(index as i64)?);
    }
    for ack in acks {
        ack.await.ok();
    }
    let seen = receiver.await??;
    bench.infra.delete_topics(&[&topic]).await;
    let latencies: Vec<f64> = seen
        .into_iter()
        .filter(|(index, _)| *index >= 0)
        .map(|(_, latency)| latency)
        .collect();
    anyhow::ensure!(
        latencies.len() as u64 == count,
        "the plain consumer received {} of {count} messages",
        latencies.len()
    );
    Percentiles::of(latencies).context("no message received")
}

/// `order-api 0.37 (370 µs per order), ...`, largest first (see [`cpu::largest_first`]).
fn per_order(cores: &BTreeMap<String, f64>, orders_per_second: f64) -> String {
    cpu::largest_first(cores)
        .iter()
        .map(|(client, cores)| {
            format!(
                "{client} {cores:.2} ({} µs per order)",
                int(cores * 1e6 / orders_per_second.max(1e-6))
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

async fn processed(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("select count(*) from processed_events")
        .fetch_one(pool)
        .await?)
}

/// Waits until `processed_events` holds `n` rows; fails when nothing moved for `stall`.
async fn wait_processed(
    pool: &PgPool,
    services: &mut [&mut Service],
    n: i64,
    stall: Duration,
) -> anyhow::Result<()> {
    let mut last = (-1, Instant::now());
    loop {
        let count = processed(pool).await?;
        if count >= n {
            return Ok(());
        }
        if count != last.0 {
            last = (count, Instant::now());
        }
        for service in services.iter_mut() {
            service.check_running()?;
        }
        anyhow::ensure!(
            last.1.elapsed() < stall,
            "{count} of {n} events applied, nothing moved for {stall:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn run(bench: &Bench) -> anyhow::Result<Vec<Row>> {
    let sizes = &bench.sizes;
    let (rate, seconds, products) = (sizes.rate, sizes.duration_secs, sizes.products);
    let orders_db = bench
        .infra
        .fresh_database("e2e_orders", &outbox_core::db::ORDERS_MIGRATOR)
        .await?;
    let catalog_db = bench
        .infra
        .fresh_database("e2e_catalog", &outbox_core::db::CATALOG_MIGRATOR)
        .await?;
    fill::products(&mut *catalog_db.pool.acquire().await?, products, STOCK).await?;
    let topic = bench.infra.fresh_topic("e2e", PARTITIONS).await?;
    let dlq = bench.infra.fresh_topic("e2e-dlq", 1).await?;
    let group = bench.infra.name("e2e-group");

    let mut consumer = Service::start(
        bench,
        Kind::Consumer,
        "e2e-catalog-consumer",
        &[
            ("DATABASE_URL", catalog_db.url.as_str()),
            ("ORDER_EVENTS_TOPIC", topic.as_str()),
            ("CONSUMER_GROUP", group.as_str()),
            ("DLQ_TOPIC", dlq.as_str()),
        ],
    )
    .await?;
    let mut relay = Service::start(
        bench,
        Kind::Relay,
        "e2e-outbox-relay",
        &[("DATABASE_URL", orders_db.url.as_str())],
    )
    .await?;
    let mut api = Service::start(
        bench,
        Kind::OrderApi,
        "e2e-order-api",
        &[
            ("DATABASE_URL", orders_db.url.as_str()),
            ("ORDER_EVENTS_TOPIC", topic.as_str()),
        ],
    )
    .await?;
    for service in [&mut consumer, &mut relay, &mut api] {
        service
            .wait_ready(&bench.http, Duration::from_secs(60))
            .await?;
    }
    say(
        "latency",
        "warm-up: orders until the consumer has joined and applies them",
    );
    let mut rng = rand::rngs::StdRng::from_entropy();
    for _ in 0..WARMUP_ORDERS {
        load::place(
            &bench.http,
            &api.base_url(),
            &load::order_body(products, &mut rng),
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    wait_processed(
        &catalog_db.pool,
        &mut [&mut consumer, &mut relay, &mut api],
        WARMUP_ORDERS as i64,
        Duration::from_secs(90),
    )
    .await
    .context("warm-up")?;

    say(
        "latency",
        format!(
            "{} orders/s offered for {seconds} s, open loop",
            int(rate as f64)
        ),
    );
    let meter = CpuMeter::start();
    let offered = load::open_loop(&api.base_url(), rate, seconds, products).await?;
    let cpu = meter.stop();
    let postgres_by_client = cpu
        .postgres_by_client(&mut *orders_db.pool.acquire().await?)
        .await;
    anyhow::ensure!(
        !offered.placed.is_empty(),
        "no order was accepted: {}",
        offered.first_error.clone().unwrap_or_default()
    );
    wait_processed(
        &catalog_db.pool,
        &mut [&mut consumer, &mut relay, &mut api],
        WARMUP_ORDERS as i64 + offered.placed.len() as i64,
        Duration::from_secs(60),
    )
    .await?;
    let created: Vec<(Uuid, DateTime<Utc>)> =
        sqlx::query_as("select order_id, created_at from orders where order_id = any($1)")
            .bind(&offered.placed)
            .fetch_all(&orders_db.pool)
            .await?;
    let applied: HashMap<Uuid, (DateTime<Utc>, i32, i64)> =
        sqlx::query_as::<_, (Uuid, DateTime<Utc>, i32, i64)>(
            "select order_id, processed_at, kafka_partition, kafka_offset
               from processed_events where order_id = any($1)",
        )
        .bind(&offered.placed)
        .fetch_all(&catalog_db.pool)
        .await?
        .into_iter()
        .map(|(id, at, partition, offset)| (id, (at, partition, offset)))
        .collect();
    let latencies: Vec<f64> = created
        .iter()
        .filter_map(|(id, created)| {
            applied
                .get(id)
                .map(|(at, _, _)| seconds_since_commit(*created, *at) * 1e3)
        })
        .collect();
    // Where the time went: created → produced (the relay's pick-up and publish, by the
    // producer's message timestamp) and produced → applied (broker, fetch, consumer).
    let stamps = kafka::message_timestamps(&bench.infra.brokers, &topic, PARTITIONS).await;
    let (to_produced, to_applied): (Vec<f64>, Vec<f64>) = match &stamps {
        Ok(stamps) => created
            .iter()
            .filter_map(|(id, created)| {
                let (at, partition, offset) = applied.get(id)?;
                let produced = *stamps.get(&(*partition, *offset))? as f64;
                let created = created.timestamp_micros() as f64 / 1e3;
                let at = at.timestamp_micros() as f64 / 1e3;
                Some((produced - created, at - produced))
            })
            .unzip(),
        Err(_) => (Vec::new(), Vec::new()),
    };
    let to_produced = Percentiles::of(to_produced);
    let to_applied = Percentiles::of(to_applied);
    let phases = relay.relay_step_phases(&bench.http).await;
    for service in [consumer, relay, api] {
        service.stop().await;
    }
    bench.infra.drop_database(orders_db).await;
    bench.infra.drop_database(catalog_db).await;
    bench.infra.delete_topics(&[&topic, &dlq]).await;
    let latency = Percentiles::of(latencies).context("no order was applied")?;
    let http = Percentiles::of(offered.latencies_ms.clone()).context("no answer")?;

    say("latency", "floor: a plain consumer's receive latency");
    let floor = receive_floor(
        bench,
        "e2e-floor",
        sizes.floor_count,
        Duration::from_secs_f64(1.0 / rate as f64),
    )
    .await;

    let achieved = offered.offered as f64 / offered.send_seconds.max(1e-6);
    let mut notes = vec![format!(
        "offered {} orders in {:.1} s ({} /s, client start lag max {} ms); HTTP answer {}",
        int(offered.offered as f64),
        offered.send_seconds,
        int(achieved),
        ms(offered.max_start_lag_ms),
        http.short()
    )];
    if let (Some(relay_part), Some(consumer_part)) = (&to_produced, &to_applied) {
        notes.push(format!(
            "created → produced (relay, by the message timestamp, ms precision): {}; \
             produced → applied (broker, fetch, consumer): {}",
            relay_part.short(),
            consumer_part.short()
        ));
    }
    notes.push(format!("during the offered load: {}", cpu.short()));
    notes.push(match &postgres_by_client {
        Ok(by_client) => format!(
            "PostgreSQL's cores by client: {}",
            per_order(by_client, offered.placed.len() as f64 / cpu.seconds)
        ),
        Err(error) => format!("PostgreSQL's cores by client not read: {error:#}"),
    });
    notes.push(match phases {
        Ok(phases) => format!("relay, mean per step: {phases}"),
        Err(error) => format!("relay step phases not read: {error:#}"),
    });
    notes.push(
        "processed_at is the start of the consumer's batch transaction: the apply itself \
         (a few ms) is not in the figure"
            .into(),
    );
    if offered.errors > 0 {
        notes.push(format!(
            "{} orders failed; first: {}",
            offered.errors,
            offered.first_error.clone().unwrap_or_default()
        ));
    }
    let ceiling = match &floor {
        Ok(floor) => format!(
            "plain consumer, fetch.wait.max.ms=10: p50 {} / p99 {} ms",
            ms(floor.p50_ms),
            ms(floor.p99_ms)
        ),
        Err(error) => {
            notes.push(format!("the floor could not be measured: {error:#}"));
            "plain consumer: not measured".into()
        }
    };
    let floor = floor.ok();
    let met = latency.p50_ms <= TARGET_P50_MS && latency.p99_ms <= TARGET_P99_MS;
    Ok(vec![Row {
        name: "latency".into(),
        what: format!(
            "order committed → stock applied, {} orders/s open loop, {seconds} s",
            int(rate as f64)
        ),
        figure: latency.short(),
        ceiling,
        ratio: None,
        target: format!("p50 ≤ {TARGET_P50_MS:.0}, p99 ≤ {TARGET_P99_MS:.0} ms"),
        verdict: Verdict::judge(bench.judged(), met),
        error: None,
        notes,
        metrics: json!({
            "offered_rate": rate,
            "seconds": seconds,
            "offered": offered.offered,
            "placed": offered.placed.len(),
            "errors": offered.errors,
            "achieved_offer_rate": achieved,
            "client_max_start_lag_ms": offered.max_start_lag_ms,
            "commit_to_applied": latency,
            "http": http,
            "created_to_produced": to_produced,
            "produced_to_applied": to_applied,
            "cpu": cpu,
            "postgres_cores_by_client": postgres_by_client.as_ref().ok(),
            "floor_plain_consumer": floor,
            "targets_ms": { "p50": TARGET_P50_MS, "p99": TARGET_P99_MS },
        }),
    }])
}
