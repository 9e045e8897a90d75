//! outbox-relay drain: N rows over K keys, written as order-api writes them, committed at once
//! while a release relay is idle and ready; timed from that commit until the outbox is empty.
//! Ceilings on an identical fresh table in the same run: (a) the database's own claim+delete,
//! one connection, a batch per statement; (b) a producer with the relay's exact configuration
//! sending the same messages pipelined.

use std::time::Instant;

use chrono::{DateTime, Utc};
use outbox_core::event::CloudEvent;
use serde_json::json;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{drain::RelayUnderTest, drain::PARTITIONS, say, Shared};
use crate::{
    cpu::CpuMeter,
    fill::{self, Keys, State},
    kafka::{self, OutMessage},
    report::{Row, Verdict},
    stats::{int, ratio as fmt_ratio},
    Bench,
};

const TARGET_RATIO: f64 = 0.7;

/// The columns the relay reads of a claimed row.
type ClaimedColumns = (
    i64,
    Uuid,
    String,
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    i32,
    DateTime<Utc>,
);

/// The database's claim+delete ceiling: claim a batch in id order and delete it in one statement,
/// returning everything the relay needs to publish it.
const CLAIM_AND_DELETE_SQL: &str = "delete from outbox
     where id in (select id from outbox where state = 'pending' order by id limit $1)
     returning id, event_id, topic, partition_key, event_type, source, subject, payload::text,
               traceparent, attempts, created_at";

fn message(row: &ClaimedColumns) -> OutMessage {
    let (_, event_id, _, key, event_type, source, subject, payload, traceparent, _, created_at) =
        row;
    OutMessage {
        key: key.clone(),
        payload: payload.clone().into_bytes(),
        headers: CloudEvent {
            id: *event_id,
            event_type: event_type.clone(),
            source: source.clone(),
            time: *created_at,
            subject: subject.clone(),
            traceparent: traceparent.clone(),
            tracestate: None,
        }
        .to_kafka_headers(),
    }
}

/// Claims and deletes until the table is empty; rows per second.
async fn claim_and_delete(conn: &mut PgConnection, batch: u64) -> anyhow::Result<(u64, f64)> {
    let started = Instant::now();
    let mut rows = 0u64;
    loop {
        let claimed: Vec<ClaimedColumns> = sqlx::query_as(CLAIM_AND_DELETE_SQL)
            .bind(batch as i64)
            .fetch_all(&mut *conn)
            .await?;
        if claimed.is_empty() {
            break;
        }
        rows += claimed.len() as u64;
    }
    Ok((rows, rows as f64 / started.elapsed().as_secs_f64()))
}

pub async fn run(bench: &Bench, shared: &mut Shared) -> anyhow::Result<Vec<Row>> {
    let sizes = &bench.sizes;
    let (n, keys) = (sizes.drain_rows, sizes.keys);
    let brokers = &bench.infra.brokers;

    // The ceilings, on a table filled exactly like the relay's.
    let ceiling_db = bench
        .infra
        .fresh_database("claim", &outbox_core::db::ORDERS_MIGRATOR)
        .await?;
    let produce_topic = bench.infra.fresh_topic("produce", PARTITIONS).await?;
    let mut conn = ceiling_db.pool.acquire().await?;
    say(
        "relay",
        format!(
            "filling a table with {} rows for the ceilings",
            int(n as f64)
        ),
    );
    fill::outbox_rows(
        &mut conn,
        &produce_topic,
        n,
        &Keys::Spread(keys),
        State::Pending,
    )
    .await?;
    sqlx::query("analyze outbox").execute(&mut *conn).await?;

    let rows: Vec<ClaimedColumns> = sqlx::query_as(
        "select id, event_id, topic, partition_key, event_type, source, subject, payload::text,
                traceparent, attempts, created_at
           from outbox order by id",
    )
    .fetch_all(&mut *conn)
    .await?;
    let payload_bytes =
        rows.iter().map(|r| r.7.len()).sum::<usize>() as f64 / rows.len().max(1) as f64;
    let messages: Vec<OutMessage> = rows.iter().map(message).collect();
    drop(rows);
    say(
        "relay",
        "ceiling (b): the relay's producer settings, same messages, pipelined",
    );
    let producer = kafka::relay_producer(brokers)?;
    let produced = kafka::produce_all(&producer, &produce_topic, messages).await?;
    drop(producer);
    bench.infra.delete_topics(&[&produce_topic]).await;
    let produce_rate = produced.rate();

    say(
        "relay",
        format!(
            "ceiling (a): claim+delete {} rows per statement, one connection",
            sizes.claim_batch
        ),
    );
    let claim_meter = CpuMeter::start();
    let (claimed, claim_rate) = claim_and_delete(&mut conn, sizes.claim_batch).await?;
    let claim_cpu = claim_meter.stop();
    anyhow::ensure!(
        claimed == n,
        "the claim+delete ceiling saw {claimed} rows, not {n}"
    );
    drop(conn);
    bench.infra.drop_database(ceiling_db).await;

    // The relay itself.
    let mut relay = RelayUnderTest::start(bench, "relay").await?;
    let mut conn = relay.db.pool.acquire().await?;
    say(
        "relay",
        format!("relay ready; committing {} rows at once", int(n as f64)),
    );
    let inserted = fill::outbox_rows(
        &mut conn,
        &relay.topic,
        n,
        &Keys::Spread(keys),
        State::Pending,
    )
    .await?;
    let committed = Instant::now();
    let meter = CpuMeter::start();
    fill::wake_relay(&mut conn).await?;
    let drained = relay
        .wait_drained(&mut conn, inserted.first_id, inserted.last_id)
        .await?;
    let cpu = meter.stop();
    let seconds = (drained - committed).as_secs_f64();
    let rate = n as f64 / seconds;
    drop(conn);
    let on_topic = kafka::messages_on_topic(brokers, &relay.topic, PARTITIONS)?;
    let phases = relay.relay.relay_step_phases(&bench.http).await;
    relay.finish(bench).await;
    shared.relay_drain = Some((n, rate));

    let floor = claim_rate.min(produce_rate);
    let ratio = rate / floor;
    let bound = if claim_rate <= produce_rate {
        "the database's claim+delete"
    } else {
        "the producer"
    };
    let mut notes = vec![format!(
        "relay drain {:.2} s; the lower ceiling is {bound}; \
         relay at {} of claim+delete and {} of raw produce",
        seconds,
        fmt_ratio(rate / claim_rate),
        fmt_ratio(rate / produce_rate),
    )];
    notes.push(format!("relay drain: {}", cpu.short()));
    notes.push(match phases {
        Ok(phases) => format!("relay drain, mean per step: {phases}"),
        Err(error) => format!("relay drain, step phases not read: {error:#}"),
    });
    notes.push(format!(
        "PostgreSQL CPU per row: relay {:.0} µs, claim+delete ceiling {:.0} µs",
        1e6 * cpu.seconds_of("postgres") / n as f64,
        1e6 * claim_cpu.seconds_of("postgres") / n as f64
    ));
    if on_topic != n as i64 {
        notes.push(format!(
            "{on_topic} messages on the relay's topic for {n} rows ({} duplicates)",
            on_topic - n as i64
        ));
    }
    Ok(vec![Row {
        name: "relay".into(),
        what: format!(
            "outbox-relay drain, {} rows, {} keys",
            int(n as f64),
            int(keys as f64)
        ),
        figure: format!("{} events/s", int(rate)),
        ceiling: format!(
            "claim+delete ×{}, 1 conn: {}/s; raw produce: {}/s",
            sizes.claim_batch,
            int(claim_rate),
            int(produce_rate)
        ),
        ratio: Some(ratio),
        target: format!("≥ {TARGET_RATIO:.2} × min"),
        verdict: Verdict::judge(bench.judged(), ratio >= TARGET_RATIO),
        error: None,
        notes,
        metrics: json!({
            "rows": n,
            "keys": keys,
            "events_per_s": rate,
            "seconds": seconds,
            "messages_on_topic": on_topic,
            "cpu": { "relay_drain": cpu, "claim_delete": claim_cpu },
            "payload_bytes_avg": payload_bytes,
            "ceilings": {
                "claim_delete_rows_per_s": claim_rate,
                "claim_delete_batch": sizes.claim_batch,
                "produce_msgs_per_s": produce_rate,
                "produce_seconds": produced.seconds,
            },
            "ratio": ratio,
            "target_ratio": TARGET_RATIO,
        }),
    }])
}
