//! The dead-letter topic. A message that cannot be understood is produced there with its
//! original key, value and headers plus the `dlq_*` headers saying why and where it came from,
//! and its offset is stored only once the broker has acknowledged that copy: a bad message is
//! never silently dropped, and never stalls its partition.

use std::time::Duration;

use futures::future::join_all;
use outbox_core::settings::KafkaSettings;
use rdkafka::{
    message::{Header, Message, OwnedHeaders, OwnedMessage},
    producer::{FutureProducer, FutureRecord},
};

use crate::decode::Rejection;

/// `dlq_reason`: the stable reason code (`missing_header`, `invalid_header`, `invalid_json`,
/// `invalid_event`).
pub const REASON_HEADER: &str = "dlq_reason";
/// `dlq_error`: what exactly is wrong, for the human reading the dead letter.
pub const ERROR_HEADER: &str = "dlq_error";
/// `dlq_source_topic`
pub const SOURCE_TOPIC_HEADER: &str = "dlq_source_topic";
/// `dlq_source_partition`
pub const SOURCE_PARTITION_HEADER: &str = "dlq_source_partition";
/// `dlq_source_offset`
pub const SOURCE_OFFSET_HEADER: &str = "dlq_source_offset";

/// How long one dead letter may wait for the broker's acknowledgement before the attempt
/// counts as failed (and is retried, never skipped).
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// A producer for the dead-letter topic.
#[derive(Clone)]
pub struct DeadLetters {
    producer: FutureProducer,
    topic: String,
}

impl DeadLetters {
    pub fn new(kafka: &KafkaSettings, topic: &str) -> anyhow::Result<Self> {
        let producer = kafka
            .client_config()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set(
                "message.timeout.ms",
                DELIVERY_TIMEOUT.as_millis().to_string(),
            )
            .create()?;
        Ok(Self {
            producer,
            topic: topic.to_owned(),
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Produces every rejected message, all enqueued at once, and returns when the broker has
    /// acknowledged all of them, or with the first failure (the caller retries the lot; a
    /// retry may write a dead letter twice, never zero times).
    pub async fn send_all(
        &self,
        rejected: &[(&OwnedMessage, &Rejection)],
    ) -> Result<(), rdkafka::error::KafkaError> {
        let sends = rejected.iter().map(|(message, rejection)| {
            let headers = dead_letter_headers(message, rejection);
            let mut record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(&self.topic).headers(headers);
            if let Some(key) = message.key() {
                record = record.key(key);
            }
            if let Some(value) = message.payload() {
                record = record.payload(value);
            }
            self.producer.send(record, DELIVERY_TIMEOUT)
        });
        for result in join_all(sends).await {
            result.map_err(|(error, _)| error)?;
        }
        Ok(())
    }
}

fn dead_letter_headers(message: &OwnedMessage, rejection: &Rejection) -> OwnedHeaders {
    let original = message.headers().cloned().unwrap_or_default();
    let partition = message.partition().to_string();
    let offset = message.offset().to_string();
    original
        .insert(Header {
            key: REASON_HEADER,
            value: Some(rejection.reason),
        })
        .insert(Header {
            key: ERROR_HEADER,
            value: Some(&rejection.detail),
        })
        .insert(Header {
            key: SOURCE_TOPIC_HEADER,
            value: Some(message.topic()),
        })
        .insert(Header {
            key: SOURCE_PARTITION_HEADER,
            value: Some(&partition),
        })
        .insert(Header {
            key: SOURCE_OFFSET_HEADER,
            value: Some(&offset),
        })
}
