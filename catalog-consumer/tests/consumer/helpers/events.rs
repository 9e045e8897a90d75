//! Events as order-api publishes them, malformed messages, and a producer of both.

use std::time::Duration;

use chrono::{DateTime, Utc};
use outbox_core::event::{CloudEvent, OrderPlaced, ORDER_API_SOURCE, ORDER_PLACED_TYPE};
use rdkafka::{
    message::OwnedHeaders,
    producer::{FutureProducer, FutureRecord},
    ClientConfig,
};
use uuid::Uuid;

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
