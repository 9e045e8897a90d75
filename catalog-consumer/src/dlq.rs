//! The dead-letter topic. A message that cannot be understood is produced there with its
//! original key, value and headers plus the `dlq_*` headers saying why and where it came from,
//! and its offset is stored only once the broker has acknowledged that copy: a bad message is
//! never silently dropped, and never stalls its partition. A copy the dead-letter topic refuses
//! for a reason about that message (too large for it, say) is kept in the catalog database's
//! `dead_letters` table instead, in the batch's transaction; only an unavailable broker makes the
//! batch wait and retry.

use std::time::Duration;

use futures::future::join_all;
use outbox_core::{kafka, settings::KafkaSettings};
use rdkafka::{
    error::KafkaError,
    message::{Header, Headers, Message, OwnedHeaders, OwnedMessage},
    producer::{FutureProducer, FutureRecord},
};
use sqlx::PgConnection;

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
    /// A producer for `topic`; `message_max_bytes` is the largest dead letter it sends (keep it
    /// at or below the topic's limit).
    pub fn new(
        kafka_settings: &KafkaSettings,
        topic: &str,
        message_max_bytes: u32,
    ) -> anyhow::Result<Self> {
        let producer = kafka::idempotent_producer_config(kafka_settings)?
            .set(
                "message.timeout.ms",
                DELIVERY_TIMEOUT.as_millis().to_string(),
            )
            .set("message.max.bytes", message_max_bytes.to_string())
            .create()?;
        Ok(Self {
            producer,
            topic: topic.to_owned(),
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Produces every rejected message, all enqueued at once, and returns each one's result, in
    /// order, once every report is in. (The caller retries the lot after a failure about the
    /// broker; a retry may write a dead letter twice, never zero times.)
    pub async fn send_all(
        &self,
        rejected: &[(&OwnedMessage, &Rejection)],
    ) -> Vec<Result<(), KafkaError>> {
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
        join_all(sends)
            .await
            .into_iter()
            .map(|result| result.map(|_| ()).map_err(|(error, _)| error))
            .collect()
    }
}

/// Keeps a dead letter the dead-letter topic refused in the `dead_letters` table, in the
/// caller's transaction (the caller commits). Idempotent per source position.
pub async fn keep_refused(
    conn: &mut PgConnection,
    message: &OwnedMessage,
    rejection: &Rejection,
    refused_because: &str,
) -> Result<(), sqlx::Error> {
    let (header_keys, header_values): (Vec<String>, Vec<Option<Vec<u8>>>) = message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                .unzip()
        })
        .unwrap_or_default();
    sqlx::query!(
        "insert into dead_letters
             (source_topic, source_partition, source_offset, message_key, message_value,
              header_keys, header_values, reason, error, refused_because)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         on conflict (source_topic, source_partition, source_offset) do nothing",
        message.topic(),
        message.partition(),
        message.offset(),
        message.key(),
        message.payload(),
        &header_keys,
        &header_values as &[Option<Vec<u8>>],
        rejection.reason,
        &rejection.detail,
        refused_because
    )
    .execute(conn)
    .await?;
    Ok(())
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
