//! catalog-consumer drain: a topic holding N events (produced beforehand with the relay's
//! producer settings, realistic payloads and headers over K products with ample stock), a fresh
//! catalog database, the release consumer with a fresh group; timed over the span in which it
//! applied them. Ceilings in the same run: a plain consume of the same topic with the consumer's
//! own client configuration, and the database's set-based apply of the same events in batches,
//! one statement per batch.

use std::time::{Duration, Instant};

use anyhow::Context;
use rand::SeedableRng;
use rdkafka::consumer::Consumer;
use serde_json::json;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{drain::PARTITIONS, say};
use crate::{
    cpu::CpuMeter,
    fill,
    kafka::{self, Event},
    report::{Row, Verdict},
    services::{Kind, Service},
    stats::int,
    Bench,
};

const TARGET_EVENTS_PER_S: f64 = 50_000.0;
/// Stock of every product: no event of the run can exhaust it.
const STOCK: i32 = 100_000_000;

/// The database's own set-based apply of a batch: record every event id, then take the summed
/// quantities of the new ones off their products, in one statement.
const SET_BASED_APPLY_SQL: &str = "with input as (
         select * from unnest($1::uuid[], $2::uuid[], $3::text[], $4::int[], $5::int[], $6::bigint[])
             as t(event_id, order_id, product_id, quantity, kafka_partition, kafka_offset)
     ), inserted as (
         insert into processed_events
             (event_id, order_id, product_id, quantity, outcome, kafka_partition, kafka_offset)
         select event_id, order_id, product_id, quantity, 'applied', kafka_partition, kafka_offset
           from input
         on conflict (event_id) do nothing
         returning product_id, quantity
     ), totals as (
         select product_id, sum(quantity)::int as quantity from inserted group by product_id
     )
     update products p
        set stock = p.stock - t.quantity, updated_at = now()
       from totals t
      where p.product_id = t.product_id";

async fn set_based_apply(
    conn: &mut PgConnection,
    events: &[Event],
    deliveries: &[(i32, i64)],
    batch: usize,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    for (events, deliveries) in events.chunks(batch).zip(deliveries.chunks(batch)) {
        let event_ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
        let order_ids: Vec<Uuid> = events.iter().map(|e| e.order.order_id).collect();
        let products: Vec<&str> = events.iter().map(|e| e.order.product_id.as_str()).collect();
        let quantities: Vec<i32> = events.iter().map(|e| e.order.quantity).collect();
        let partitions: Vec<i32> = deliveries.iter().map(|d| d.0).collect();
        let offsets: Vec<i64> = deliveries.iter().map(|d| d.1).collect();
        sqlx::query(SET_BASED_APPLY_SQL)
            .bind(&event_ids)
            .bind(&order_ids)
            .bind(&products)
            .bind(&quantities)
            .bind(&partitions)
            .bind(&offsets)
            .execute(&mut *conn)
            .await?;
    }
    Ok(events.len() as f64 / started.elapsed().as_secs_f64())
}

/// Receives `n` messages with the consumer's own client; messages per second from the first
/// message to the last (the group join is not counted).
async fn plain_consume(bench: &Bench, topic: &str, n: u64) -> anyhow::Result<f64> {
    let settings = kafka::consumer_settings(
        &bench.infra.brokers,
        topic,
        &bench.infra.name("plain-consume"),
    )?;
    let metrics = catalog_consumer::Metrics::register(&prometheus::Registry::new())?;
    let consumer = catalog_consumer::consume::subscribe(&settings, &metrics)?;
    let mut first = None;
    let mut received = 0u64;
    while received < n {
        let message = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
            .await
            .with_context(|| format!("no message for a minute after {received}"))??;
        drop(message);
        first.get_or_insert_with(Instant::now);
        received += 1;
    }
    let seconds = first.expect("received").elapsed().as_secs_f64();
    consumer.unsubscribe();
    Ok((n.saturating_sub(1)).max(1) as f64 / seconds.max(1e-6))
}

pub async fn run(bench: &Bench) -> anyhow::Result<Vec<Row>> {
    let sizes = &bench.sizes;
    let (n, products) = (sizes.events, sizes.products);
    let brokers = &bench.infra.brokers;

    let mut rng = rand::rngs::StdRng::from_entropy();
    let events: Vec<Event> = (0..n).map(|_| Event::random(products, &mut rng)).collect();
    let topic = bench.infra.fresh_topic("consumer", PARTITIONS).await?;
    let dlq = bench.infra.fresh_topic("consumer-dlq", 1).await?;
    say(
        "consumer",
        format!("producing {} events to a fresh topic", int(n as f64)),
    );
    let producer = kafka::relay_producer(brokers)?;
    let produced = kafka::produce_all(
        &producer,
        &topic,
        events.iter().map(Event::message).collect(),
    )
    .await?;
    drop(producer);

    say(
        "consumer",
        "ceiling: a plain consume with the consumer's configuration",
    );
    let consume_rate = plain_consume(bench, &topic, n).await?;

    say(
        "consumer",
        format!(
            "ceiling: set-based apply, {} events per statement",
            sizes.apply_batch
        ),
    );
    let apply_db = bench
        .infra
        .fresh_database("apply", &outbox_core::db::CATALOG_MIGRATOR)
        .await?;
    let mut conn = apply_db.pool.acquire().await?;
    fill::products(&mut conn, products, STOCK).await?;
    let apply_rate = set_based_apply(
        &mut conn,
        &events,
        &produced.deliveries,
        sizes.apply_batch as usize,
    )
    .await?;
    drop(conn);
    bench.infra.drop_database(apply_db).await;

    let db = bench
        .infra
        .fresh_database("consumer", &outbox_core::db::CATALOG_MIGRATOR)
        .await?;
    let mut conn = db.pool.acquire().await?;
    fill::products(&mut conn, products, STOCK).await?;
    let group = bench.infra.name("consumer-group");
    let spawned = Instant::now();
    let meter = CpuMeter::start();
    let mut consumer = Service::start(
        bench,
        Kind::Consumer,
        "catalog-consumer",
        &[
            ("DATABASE_URL", db.url.as_str()),
            ("ORDER_EVENTS_TOPIC", topic.as_str()),
            ("CONSUMER_GROUP", group.as_str()),
            ("DLQ_TOPIC", dlq.as_str()),
        ],
    )
    .await?;
    consumer
        .wait_ready(&bench.http, Duration::from_secs(60))
        .await?;
    say(
        "consumer",
        "catalog-consumer started; waiting for every event to be applied",
    );
    // Done when the last event of every partition is recorded (a partition is applied in
    // order), confirmed by a count; the count alone, a scan, runs only every few seconds.
    let mut last_of_partition: std::collections::BTreeMap<i32, (i64, Uuid)> = Default::default();
    for (event, (partition, offset)) in events.iter().zip(&produced.deliveries) {
        let entry = last_of_partition
            .entry(*partition)
            .or_insert((*offset, event.event_id));
        if *offset >= entry.0 {
            *entry = (*offset, event.event_id);
        }
    }
    let last_ids: Vec<Uuid> = last_of_partition.values().map(|(_, id)| *id).collect();
    let mut progress = (-1i64, Instant::now());
    let mut counted = Instant::now();
    let done = loop {
        let tails: i64 =
            sqlx::query_scalar("select count(*) from processed_events where event_id = any($1)")
                .bind(&last_ids)
                .fetch_one(&mut *conn)
                .await?;
        let now = Instant::now();
        if tails == last_ids.len() as i64 || counted.elapsed() > Duration::from_secs(5) {
            counted = Instant::now();
            let count: i64 = sqlx::query_scalar("select count(*) from processed_events")
                .fetch_one(&mut *conn)
                .await?;
            if count >= n as i64 {
                break now;
            }
            if count != progress.0 {
                progress = (count, Instant::now());
            }
            consumer.check_running()?;
            anyhow::ensure!(
                progress.1.elapsed() < Duration::from_secs(60),
                "the consumer applied nothing for a minute ({count} of {n})"
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let cpu = meter.stop();
    let wall_seconds = (done - spawned).as_secs_f64();
    // Each batch's rows carry its transaction's start time: from the first batch's start to the
    // last batch's start, every event not in the first batch was applied.
    let (span, after_first): (f64, i64) = sqlx::query_as(
        "with bounds as (select min(processed_at) as first, max(processed_at) as last
                           from processed_events)
         select extract(epoch from (select last - first from bounds))::float8,
                count(*) filter (where processed_at > (select first from bounds))
           from processed_events",
    )
    .fetch_one(&mut *conn)
    .await?;
    let rate = if span > 0.0 {
        after_first as f64 / span
    } else {
        n as f64 / wall_seconds
    };
    let outcomes: Vec<(String, i64)> = sqlx::query_as(
        "select outcome::text, count(*) from processed_events group by outcome order by 1",
    )
    .fetch_all(&mut *conn)
    .await?;
    let stock_taken: i64 =
        sqlx::query_scalar("select ($1::bigint * $2::bigint) - sum(stock)::bigint from products")
            .bind(products as i64)
            .bind(i64::from(STOCK))
            .fetch_one(&mut *conn)
            .await?;
    drop(conn);
    consumer.stop().await;
    bench.infra.drop_database(db).await;
    bench.infra.delete_topics(&[&topic, &dlq]).await;

    let ordered: i64 = events.iter().map(|e| i64::from(e.order.quantity)).sum();
    let mut notes = vec![format!(
        "consumer: {} events applied in {:.2} s of batches ({:.2} s from process start, \
         group join included: {} events/s); producing them took {:.2} s ({}/s)",
        int(n as f64),
        span,
        wall_seconds,
        int(n as f64 / wall_seconds),
        produced.seconds,
        int(produced.rate())
    )];
    notes.push(format!("consumer run (from its start): {}", cpu.short()));
    if stock_taken != ordered {
        notes.push(format!(
            "EXACTLY-ONCE CHECK FAILED: stock went down by {stock_taken}, the events ordered {ordered}"
        ));
    }
    let ceiling = consume_rate.min(apply_rate);
    let ratio = rate / ceiling;
    // Only at full size: a smoke run's tiny ceilings say nothing about the machine.
    if bench.judged() && ceiling < TARGET_EVENTS_PER_S {
        let bound = if apply_rate <= consume_rate {
            "the database's own set-based apply"
        } else {
            "a plain consume"
        };
        notes.push(format!(
            "the lower ceiling of this run ({}/s) is itself below the target: on this machine, \
             now, not even {bound} alone reaches {}/s",
            int(ceiling),
            int(TARGET_EVENTS_PER_S)
        ));
    }
    Ok(vec![Row {
        name: "consumer".into(),
        what: format!(
            "catalog-consumer drain, {} events, {} products",
            int(n as f64),
            int(products as f64)
        ),
        figure: format!("{} events/s", int(rate)),
        ceiling: format!(
            "plain consume: {}/s; set-based apply ×{}: {}/s",
            int(consume_rate),
            sizes.apply_batch,
            int(apply_rate)
        ),
        ratio: Some(ratio),
        target: format!("≥ {} events/s", int(TARGET_EVENTS_PER_S)),
        verdict: Verdict::judge(
            bench.judged(),
            rate >= TARGET_EVENTS_PER_S && stock_taken == ordered,
        ),
        error: None,
        notes,
        metrics: json!({
            "events": n,
            "products": products,
            "events_per_s": rate,
            "apply_span_seconds": span,
            "wall_seconds_from_start": wall_seconds,
            "outcomes": outcomes.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
            "stock_taken": stock_taken,
            "cpu": cpu,
            "quantity_ordered": ordered,
            "produce": { "msgs_per_s": produced.rate(), "seconds": produced.seconds },
            "ceilings": {
                "plain_consume_msgs_per_s": consume_rate,
                "set_based_apply_events_per_s": apply_rate,
                "apply_batch": sizes.apply_batch,
            },
            "ratio_to_lower_ceiling": ratio,
            "target_events_per_s": TARGET_EVENTS_PER_S,
        }),
    }])
}
