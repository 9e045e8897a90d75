//! One step of the consumer: a batch of messages, applied as a whole.
//!
//! Every message of a batch either reaches the dead-letter topic (acknowledged by the broker) or
//! has its outcome committed in the ONE database transaction of the batch; only then does the
//! caller store the batch's offsets. A failure on the way (database or broker unavailable) is
//! transient: nothing is stored and the same batch is retried. Retrying is safe because the
//! dead letters already acknowledged are not sent again, and re-applying events that did commit
//! finds them in `processed_events` and changes nothing.

use std::{collections::BTreeMap, time::Duration};

use chrono::Utc;
use rdkafka::message::{Message, OwnedMessage};
use sqlx::PgPool;
use uuid::Uuid;

use outbox_core::kafka::FailureKind;

use crate::{
    decode::{self, OrderEvent, Rejection},
    dlq::{self, DeadLetters},
    metrics::{self, Metrics},
    stock::{self, Outcome},
};

/// The longest one attempt at the batch's transaction may take; past it the attempt counts as
/// failed and is retried (safe: see the module docs).
const APPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Messages taken from the consumer together, decoded once, with how far applying them got.
pub struct Batch {
    messages: Vec<OwnedMessage>,
    decoded: Vec<Result<OrderEvent, Rejection>>,
    dead_lettered: bool,
    /// (message index, why) of dead letters the dead-letter topic refused: they go to the
    /// `dead_letters` table in the batch's transaction.
    refused: Vec<(usize, String)>,
}

impl Batch {
    /// Decodes `messages`, which must be in the order they were consumed; an event older than
    /// `dedup_window` is rejected (see [`decode::OLDER_THAN_DEDUP_WINDOW`]).
    pub fn new(messages: Vec<OwnedMessage>, dedup_window: Duration) -> Self {
        let oldest =
            Utc::now() - chrono::Duration::from_std(dedup_window).unwrap_or(chrono::Duration::MAX);
        let decoded = messages
            .iter()
            .map(|message| decode::decode(message, oldest))
            .collect();
        Self {
            messages,
            decoded,
            dead_lettered: false,
            refused: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// The offset to store for each (topic, partition) of the batch: one past its last message.
    pub fn next_offsets(&self) -> BTreeMap<(String, i32), i64> {
        let mut next = BTreeMap::new();
        for message in &self.messages {
            let entry = next
                .entry((message.topic().to_owned(), message.partition()))
                .or_insert(message.offset() + 1);
            *entry = (*entry).max(message.offset() + 1);
        }
        next
    }
}

/// What a batch did, once it is done.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Each decoded event's outcome, in batch order.
    pub outcomes: Vec<(Uuid, Outcome)>,
    /// How many messages went to the dead-letter topic.
    pub dead_lettered: usize,
    /// How many of them the dead-letter topic refused, kept in the `dead_letters` table instead.
    pub kept_in_table: usize,
}

impl Report {
    pub fn count(&self, outcome: Outcome) -> usize {
        self.outcomes.iter().filter(|(_, o)| *o == outcome).count()
    }
}

/// Why an attempt at a batch failed. Every variant is transient: not about any one message,
/// so it is retried and counts against nothing.
#[derive(Debug, thiserror::Error)]
pub enum Transient {
    #[error("database unavailable")]
    Database(#[source] sqlx::Error),
    #[error("the batch's transaction took longer than {0:?}")]
    DatabaseTimeout(Duration),
    #[error("dead-letter topic unavailable")]
    DeadLetterTopic(#[source] rdkafka::error::KafkaError),
}

impl Transient {
    /// The `cause` label of the retry metric.
    pub fn cause(&self) -> &'static str {
        match self {
            Transient::Database(_) | Transient::DatabaseTimeout(_) => "database",
            Transient::DeadLetterTopic(_) => "dead_letter_topic",
        }
    }
}

/// What applying a batch needs: the catalog database, the dead-letter producer, the metrics.
#[derive(Clone)]
pub struct Applier {
    pool: PgPool,
    dead_letters: DeadLetters,
    metrics: Metrics,
}

impl Applier {
    pub fn new(pool: PgPool, dead_letters: DeadLetters, metrics: Metrics) -> Self {
        Self {
            pool,
            dead_letters,
            metrics,
        }
    }

    /// One attempt at `batch`: dead-letters the messages that cannot be understood (awaiting
    /// the broker's acknowledgements), then applies the others in one transaction. On `Ok`,
    /// every message of the batch is accounted for and its offsets may be stored.
    #[tracing::instrument(skip_all, fields(messages = batch.len()))]
    pub async fn apply_batch(&self, batch: &mut Batch) -> Result<Report, Transient> {
        let rejected: Vec<(usize, &OwnedMessage, &Rejection)> = batch
            .messages
            .iter()
            .zip(&batch.decoded)
            .enumerate()
            .filter_map(|(i, (message, decoded))| decoded.as_ref().err().map(|r| (i, message, r)))
            .collect();
        if !batch.dead_lettered && !rejected.is_empty() {
            let letters: Vec<(&OwnedMessage, &Rejection)> =
                rejected.iter().map(|(_, m, r)| (*m, *r)).collect();
            let results = self.dead_letters.send_all(&letters).await;
            // A failure about the broker: retry the lot later. A refusal of one dead letter
            // (about that message: it would be refused again) must not stall the partition.
            if let Some(error) = results
                .iter()
                .filter_map(|r| r.as_ref().err())
                .find(|e| outbox_core::kafka::classify_error(e) == FailureKind::Transient)
            {
                return Err(Transient::DeadLetterTopic(error.clone()));
            }
            let mut refused = Vec::new();
            for ((index, message, rejection), result) in rejected.iter().zip(&results) {
                if let Err(error) = result {
                    tracing::error!(
                        topic = message.topic(),
                        partition = message.partition(),
                        offset = message.offset(),
                        reason = rejection.reason,
                        %error,
                        dlq = self.dead_letters.topic(),
                        "the dead-letter topic refused this message; keeping it in the dead_letters table"
                    );
                    refused.push((*index, error.to_string()));
                    continue;
                }
                tracing::warn!(
                    topic = message.topic(),
                    partition = message.partition(),
                    offset = message.offset(),
                    reason = rejection.reason,
                    error = %rejection.detail,
                    dlq = self.dead_letters.topic(),
                    "message dead-lettered"
                );
                self.metrics
                    .dead_lettered
                    .with_label_values(&[rejection.reason])
                    .inc();
            }
            self.metrics
                .messages
                .with_label_values(&[metrics::DLQ])
                .inc_by(rejected.len() as u64);
            batch.refused = refused;
        }
        batch.dead_lettered = true;

        let events: Vec<OrderEvent> = batch
            .decoded
            .iter()
            .filter_map(|decoded| decoded.as_ref().ok().cloned())
            .collect();
        let refused: Vec<(&OwnedMessage, &Rejection, &str)> = batch
            .refused
            .iter()
            .filter_map(|(index, why)| {
                let rejection = batch.decoded[*index].as_ref().err()?;
                Some((&batch.messages[*index], rejection, why.as_str()))
            })
            .collect();
        // One span per event, only when spans are exported: a child of the relay's publish span
        // (from the message), covering the batch's transaction.
        let spans: Vec<tracing::Span> = if outbox_core::telemetry::exporting() {
            events
                .iter()
                .map(|event| {
                    let span = tracing::info_span!(
                        "apply",
                        otel.kind = "consumer",
                        event_id = %event.event_id,
                        product_id = %event.order.product_id,
                        quantity = event.order.quantity,
                        partition = event.partition,
                        offset = event.offset,
                        outcome = tracing::field::Empty,
                        trace_id = tracing::field::Empty,
                        span_id = tracing::field::Empty,
                    );
                    outbox_core::telemetry::continue_context(&span, &event.trace);
                    span
                })
                .collect()
        } else {
            Vec::new()
        };
        let started = std::time::Instant::now();
        let outcomes = tokio::time::timeout(
            APPLY_TIMEOUT,
            self.apply_in_one_transaction(&events, &refused),
        )
        .await
        .map_err(|_| Transient::DatabaseTimeout(APPLY_TIMEOUT))?
        .map_err(Transient::Database)?;
        let applied_at = Utc::now();
        for (span, (_, outcome)) in spans.iter().zip(&outcomes) {
            span.record("outcome", outcome.as_str());
        }
        drop(spans);
        self.metrics
            .apply_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics.batch_size.observe(batch.len() as f64);
        for (event, (_, outcome)) in events.iter().zip(&outcomes) {
            self.metrics
                .messages
                .with_label_values(&[outcome.as_str()])
                .inc();
            if *outcome == Outcome::Applied {
                let latency = (applied_at - event.time).num_microseconds().unwrap_or(0);
                self.metrics
                    .commit_to_applied_seconds
                    .observe((latency.max(0) as f64) / 1e6);
            }
        }
        self.metrics.dead_letters_kept.inc_by(refused.len() as u64);
        Ok(Report {
            outcomes,
            dead_lettered: rejected.len(),
            kept_in_table: refused.len(),
        })
    }

    async fn apply_in_one_transaction(
        &self,
        events: &[OrderEvent],
        refused: &[(&OwnedMessage, &Rejection, &str)],
    ) -> Result<Vec<(Uuid, Outcome)>, sqlx::Error> {
        if events.is_empty() && refused.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self
            .pool
            .begin_with(outbox_core::db::BEGIN_WITHOUT_SEQ_SCANS)
            .await?;
        let outcomes = stock::apply_events(&mut tx, events).await?;
        for (message, rejection, why) in refused {
            dlq::keep_refused(&mut tx, message, rejection, why).await?;
        }
        tx.commit().await?;
        Ok(outcomes)
    }
}
