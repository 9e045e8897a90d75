//! The relay's pick-up, relay only: orders placed one at a time through order-api on a fixed
//! schedule, each timed from its outbox row's `created_at` (the event's `ce_time`) to the moment
//! a plain consumer (`fetch.wait.max.ms=10`) receives it. Beside it, the same consumer's floor
//! for messages produced directly at the same pace.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context;
use chrono::Utc;
use outbox_relay::metrics::seconds_since_commit;
use rand::SeedableRng;
use rdkafka::{consumer::StreamConsumer, message::Message};
use serde_json::json;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::{drain::PARTITIONS, latency::receive_floor, load, say, Shared};
use crate::{
    kafka,
    report::{Row, Verdict},
    services::{Kind, Service},
    stats::{ms, Percentiles},
    Bench,
};

/// Delay from `ce_time` to receipt, per order id (`ce_subject`).
type Seen = Arc<Mutex<HashMap<Uuid, f64>>>;

fn spawn_receiver(
    consumer: StreamConsumer,
    seen: Seen,
    mut stop: oneshot::Receiver<()>,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    tokio::spawn(async move {
        loop {
            let message = tokio::select! {
                message = consumer.recv() => message?,
                _ = &mut stop => return Ok(()),
            };
            let received = Utc::now();
            let Ok(event) = outbox_core::event::CloudEvent::from_kafka_headers(message.headers())
            else {
                continue;
            };
            if let Ok(order_id) = Uuid::parse_str(&event.subject) {
                let delay = seconds_since_commit(event.time, received) * 1e3;
                seen.lock().expect("lock").insert(order_id, delay);
            }
        }
    })
}

async fn wait_seen(seen: &Seen, ids: &HashSet<Uuid>, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let missing = {
            let seen = seen.lock().expect("lock");
            ids.iter().filter(|id| !seen.contains_key(id)).count()
        };
        if missing == 0 {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{missing} of {} orders never reached the topic",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Commit → topic latency of the relay for `count` orders one `gap` apart.
pub(super) async fn measure(
    bench: &Bench,
    count: u64,
    gap: Duration,
) -> anyhow::Result<Percentiles> {
    let products = bench.sizes.products;
    let db = bench
        .infra
        .fresh_database("pickup", &outbox_core::db::ORDERS_MIGRATOR)
        .await?;
    let topic = bench.infra.fresh_topic("pickup", PARTITIONS).await?;
    let mut relay = Service::start(
        bench,
        Kind::Relay,
        "pickup-outbox-relay",
        &[("DATABASE_URL", db.url.as_str())],
    )
    .await?;
    let mut api = Service::start(
        bench,
        Kind::OrderApi,
        "pickup-order-api",
        &[
            ("DATABASE_URL", db.url.as_str()),
            ("ORDER_EVENTS_TOPIC", topic.as_str()),
        ],
    )
    .await?;
    relay
        .wait_ready(&bench.http, Duration::from_secs(60))
        .await?;
    api.wait_ready(&bench.http, Duration::from_secs(60)).await?;
    let consumer = kafka::plain_consumer(&bench.infra.brokers, &topic, PARTITIONS, 10)?;
    let seen: Seen = Arc::default();
    let (stop, stopped) = oneshot::channel();
    let receiver = spawn_receiver(consumer, seen.clone(), stopped);

    let base_url = api.base_url();
    let mut rng = rand::rngs::StdRng::from_entropy();
    let mut warmup = HashSet::new();
    for _ in 0..5 {
        let body = load::order_body(products, &mut rng);
        warmup.insert(load::place(&bench.http, &base_url, &body).await?);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_seen(&seen, &warmup, Duration::from_secs(60))
        .await
        .context("warm-up")?;

    let start = tokio::time::Instant::now();
    let mut placing = Vec::new();
    for index in 0..count {
        tokio::time::sleep_until(start + gap.mul_f64(index as f64)).await;
        let body = load::order_body(products, &mut rng);
        let (http, url) = (bench.http.clone(), base_url.clone());
        placing.push(tokio::spawn(async move {
            load::place(&http, &url, &body).await
        }));
    }
    let mut ids = HashSet::new();
    for placed in placing {
        ids.insert(placed.await??);
    }
    let waited = wait_seen(&seen, &ids, Duration::from_secs(30)).await;
    let _ = stop.send(());
    receiver.await??;
    relay.check_running()?;
    relay.stop().await;
    api.stop().await;
    bench.infra.drop_database(db).await;
    bench.infra.delete_topics(&[&topic]).await;
    waited?;
    let seen = seen.lock().expect("lock");
    let latencies: Vec<f64> = ids.iter().filter_map(|id| seen.get(id).copied()).collect();
    Percentiles::of(latencies).context("no order reached the topic")
}

pub async fn run(bench: &Bench, shared: &mut Shared) -> anyhow::Result<Vec<Row>> {
    let count = bench.sizes.pickup_count;
    let gap = Duration::from_millis(bench.sizes.pickup_gap_ms);
    say(
        "pickup",
        format!(
            "{count} orders one every {} ms, created → on the topic",
            gap.as_millis()
        ),
    );
    let pickup = measure(bench, count, gap).await?;
    shared.pickup = Some(pickup);
    say(
        "pickup",
        "floor: the same consumer, messages produced directly",
    );
    let floor = receive_floor(bench, "pickup-floor", count, gap).await?;
    Ok(vec![Row {
        name: "pickup".into(),
        what: format!(
            "relay pick-up: order created → on the topic, one order every {} ms",
            gap.as_millis()
        ),
        figure: pickup.short(),
        ceiling: format!(
            "plain produce → consume: p50 {} / p99 {} ms",
            ms(floor.p50_ms),
            ms(floor.p99_ms)
        ),
        ratio: None,
        target: "— (peer row compares)".into(),
        verdict: Verdict::NotJudged,
        error: None,
        notes: vec![
            "measured from the row's created_at (taken by order-api before its insert) to \
             receipt by a plain consumer with fetch.wait.max.ms=10"
                .into(),
        ],
        metrics: json!({
            "orders": count,
            "gap_ms": gap.as_millis() as u64,
            "created_to_topic": pickup,
            "floor_plain_produce_consume": floor,
        }),
    }])
}
