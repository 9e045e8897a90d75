//! The raw clients behind the ceilings: a producer with the relay's exact configuration, the
//! consumer's exact configuration, and a plain low-latency consumer; plus order events as
//! order-api and the relay make them.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use anyhow::Context;
use chrono::{SubsecRound, Utc};
use clap::Parser;
use outbox_core::event::{CloudEvent, OrderPlaced, ORDER_API_SOURCE, ORDER_PLACED_TYPE};
use rand::Rng;
use rdkafka::{
    consumer::{BaseConsumer, Consumer, StreamConsumer},
    message::OwnedHeaders,
    producer::{FutureProducer, FutureRecord},
    ClientConfig, Offset, TopicPartitionList,
};
use uuid::Uuid;

use crate::fill::product_id;

/// The relay's settings as the relay child would parse them (its defaults, or this process's
/// environment, which the children inherit).
pub fn relay_settings(brokers: &str) -> anyhow::Result<outbox_relay::Settings> {
    outbox_relay::Settings::try_parse_from(["outbox-relay", "--kafka-brokers", brokers])
        .context("cannot parse the relay's settings")
}

/// A producer configured exactly as the relay's (`outbox_relay::publish::producer_config`).
pub fn relay_producer(brokers: &str) -> anyhow::Result<FutureProducer> {
    let settings = relay_settings(brokers)?;
    outbox_relay::publish::producer_config(&settings)?
        .create()
        .context("cannot create the producer")
}

/// The consumer's settings for `topic` and `group`, as the consumer child would parse them.
pub fn consumer_settings(
    brokers: &str,
    topic: &str,
    group: &str,
) -> anyhow::Result<catalog_consumer::Settings> {
    catalog_consumer::Settings::try_parse_from([
        "catalog-consumer",
        "--kafka-brokers",
        brokers,
        "--order-events-topic",
        topic,
        "--consumer-group",
        group,
    ])
    .context("cannot parse the consumer's settings")
}

/// A plain consumer of every partition of `topic` from the beginning, answering fetches within
/// `fetch_wait_max_ms`; no group membership, no commits.
pub fn plain_consumer(
    brokers: &str,
    topic: &str,
    partitions: i32,
    fetch_wait_max_ms: u32,
) -> anyhow::Result<StreamConsumer> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{topic}-plain"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", fetch_wait_max_ms.to_string())
        .set("log_level", "3")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    Ok(consumer)
}

/// Messages on `topic` (sum of its partitions' high watermarks).
pub fn messages_on_topic(brokers: &str, topic: &str, partitions: i32) -> anyhow::Result<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("log_level", "3")
        .create()?;
    let mut total = 0;
    for partition in 0..partitions {
        let (low, high) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
        total += high - low;
    }
    Ok(total)
}

/// The producer's timestamp (ms since the epoch) of every message on `topic`, by (partition,
/// offset): where an event's time went between the relay and the consumer.
pub async fn message_timestamps(
    brokers: &str,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<std::collections::HashMap<(i32, i64), i64>> {
    use rdkafka::message::Message;
    let consumer = plain_consumer(brokers, topic, partitions, 100)?;
    let mut remaining = 0;
    for partition in 0..partitions {
        let (low, high) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
        remaining += high - low;
    }
    let mut stamps = std::collections::HashMap::with_capacity(remaining as usize);
    while remaining > 0 {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .context("the topic was not read to its end")??;
        if let Some(ms) = message.timestamp().to_millis() {
            stamps.insert((message.partition(), message.offset()), ms);
        }
        remaining -= 1;
    }
    Ok(stamps)
}

/// One message to produce.
pub struct OutMessage {
    pub key: String,
    pub payload: Vec<u8>,
    pub headers: OwnedHeaders,
}

/// An order event as order-api makes it, with what the ceilings need of it.
#[derive(Debug, Clone)]
pub struct Event {
    pub event_id: Uuid,
    pub order: OrderPlaced,
    pub traceparent: String,
}

impl Event {
    /// Key `k` of `1..=products`, 1 to 5 units at 15.00.
    pub fn random(products: u64, rng: &mut impl Rng) -> Self {
        let quantity = rng.gen_range(1..=5);
        let order = OrderPlaced {
            order_id: Uuid::now_v7(),
            user_id: format!("user-{}", rng.gen_range(1..=1000)),
            product_id: product_id(rng.gen_range(1..=products)),
            quantity,
            unit_price: 1500,
            total_price: i64::from(quantity) * 1500,
            created_at: Utc::now().trunc_subsecs(6),
        };
        Self {
            event_id: Uuid::now_v7(),
            order,
            traceparent: outbox_core::telemetry::child_context(
                &tracing::Span::none(),
                &outbox_core::telemetry::TraceHeaders::default(),
            )
            .traceparent
            .expect("a new trace"),
        }
    }

    /// The Kafka message the relay would publish for it.
    pub fn message(&self) -> OutMessage {
        let headers = CloudEvent {
            id: self.event_id,
            event_type: ORDER_PLACED_TYPE.into(),
            source: ORDER_API_SOURCE.into(),
            time: self.order.created_at,
            subject: self.order.order_id.to_string(),
            traceparent: Some(self.traceparent.clone()),
            tracestate: None,
        }
        .to_kafka_headers();
        OutMessage {
            key: self.order.product_id.clone(),
            payload: serde_json::to_vec(&self.order).expect("an order serializes"),
            headers,
        }
    }
}

/// A timed produce of many messages.
pub struct Produced {
    /// From the second message's enqueue to the last delivery report.
    pub seconds: f64,
    /// (partition, offset) of each message, in the order given.
    pub deliveries: Vec<(i32, i64)>,
}

impl Produced {
    pub fn rate(&self) -> f64 {
        self.deliveries.len().saturating_sub(1) as f64 / self.seconds.max(1e-9)
    }
}

/// Most messages in flight: pipelined, below librdkafka's queue limit.
const PRODUCE_WINDOW: usize = 50_000;

/// Produces every message pipelined (enqueued ahead of their acks, up to a window) and times all
/// but the first from their first enqueue to the last delivery report.
pub async fn produce_all(
    producer: &FutureProducer,
    topic: &str,
    messages: Vec<OutMessage>,
) -> anyhow::Result<Produced> {
    let total = messages.len();
    let mut deliveries = Vec::with_capacity(total);
    let mut in_flight = VecDeque::with_capacity(PRODUCE_WINDOW.min(total));
    let mut messages = messages.into_iter();
    // The first message alone and untimed: connection, producer id and topic metadata are
    // start-up costs, not throughput.
    if let Some(first) = messages.next() {
        let record = FutureRecord::to(topic)
            .key(&first.key)
            .payload(&first.payload)
            .headers(first.headers);
        let future = producer
            .send_result(record)
            .map_err(|(error, _)| anyhow::anyhow!("cannot enqueue a message: {error}"))?;
        deliveries.push(await_delivery(future).await?);
    }
    let started = Instant::now();
    for message in messages {
        let mut record = FutureRecord::to(topic)
            .key(&message.key)
            .payload(&message.payload)
            .headers(message.headers);
        loop {
            match producer.send_result(record) {
                Ok(future) => {
                    in_flight.push_back(future);
                    break;
                }
                Err((error, returned)) => {
                    // Queue full: wait for the oldest ack, then enqueue again.
                    let oldest = in_flight
                        .pop_front()
                        .with_context(|| format!("cannot enqueue a message: {error}"))?;
                    deliveries.push(await_delivery(oldest).await?);
                    record = returned;
                }
            }
        }
        if in_flight.len() >= PRODUCE_WINDOW {
            let oldest = in_flight.pop_front().expect("not empty");
            deliveries.push(await_delivery(oldest).await?);
        }
    }
    while let Some(future) = in_flight.pop_front() {
        deliveries.push(await_delivery(future).await?);
    }
    Ok(Produced {
        seconds: started.elapsed().as_secs_f64(),
        deliveries,
    })
}

async fn await_delivery(future: rdkafka::producer::DeliveryFuture) -> anyhow::Result<(i32, i64)> {
    match future.await {
        Ok(Ok(delivery)) => Ok((delivery.partition, delivery.offset)),
        Ok(Err((error, _))) => Err(anyhow::anyhow!("delivery failed: {error}")),
        Err(_) => Err(anyhow::anyhow!("the producer was dropped")),
    }
}
