//! Publishing a claimed batch.
//!
//! Guarantees kept here:
//! - The producer is idempotent with `acks=all`; a batch is enqueued whole and then its delivery
//!   reports are awaited (pipelined), never one send-and-wait per row.
//! - A row counts as published only when its delivery report says the broker persisted it, and
//!   every earlier row of its key in the batch was persisted too: a row that failed is published
//!   again before its successors are deleted.
//! - A row being retried goes out last of its key in a batch, and nothing of a key is enqueued
//!   after a row of that key failed to enqueue or was held back (its partition unavailable), so
//!   a later event is not published ahead of an earlier one that is known to be failing. (A
//!   first refusal reported only in the delivery report, e.g. a broker whose size limit is below
//!   the producer's, cannot stop the later rows of its key already in flight in the same batch:
//!   they are kept and published again after it.)
//! - A message without a delivery report by the deadline is handed back unresolved (its future
//!   kept), so the caller can hold its key until the report arrives instead of sending the key's
//!   later rows past it.
//! - Whether a failure is about one message (permanent: counts an attempt) or about the broker
//!   (transient: counts nothing) is decided in one place, [`outbox_core::kafka::classify`].

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use outbox_core::kafka::{self, FailureKind};
use rdkafka::{
    error::KafkaError,
    producer::{DeliveryFuture, FutureProducer, FutureRecord},
    types::RDKafkaErrorCode,
    ClientConfig,
};

use crate::{metrics::seconds_since_commit, outbox::ClaimedRow, Settings};

/// The producer configuration: idempotent, `acks=all`, a message timeout long enough to ride out
/// a broker blip, a short linger so single rows go out within milliseconds.
pub fn producer_config(settings: &Settings) -> anyhow::Result<ClientConfig> {
    let mut config = kafka::idempotent_producer_config(&settings.kafka)?;
    config
        .set("client.id", "outbox-relay")
        .set(
            "message.timeout.ms",
            settings.message_timeout_ms.to_string(),
        )
        .set("linger.ms", settings.linger_ms.to_string())
        .set("message.max.bytes", settings.message_max_bytes.to_string())
        .set(
            "batch.size",
            settings.message_max_bytes.min(1_000_000).to_string(),
        );
    Ok(config)
}

/// One failed send or delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    /// Low-cardinality name of the cause (the rdkafka error code), for the metrics label.
    pub reason: String,
    /// The full error, for `last_error` and logs.
    pub message: String,
}

impl Failure {
    fn from_kafka(error: &KafkaError) -> Self {
        match error.rdkafka_error_code() {
            Some(code) => Self {
                kind: kafka::classify(code),
                reason: format!("{code:?}"),
                message: error.to_string(),
            },
            None => Self {
                kind: FailureKind::Transient,
                reason: "Other".into(),
                message: error.to_string(),
            },
        }
    }

    fn transient(reason: &str, message: &str) -> Self {
        Self {
            kind: FailureKind::Transient,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// What happened to one row of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Not enqueued: its partition is unavailable, it is held behind an earlier row of its key,
    /// or the producer queue was full.
    NotAttempted,
    /// The broker persisted it, as reported at this time.
    Acked(DateTime<Utc>),
    /// Refused at enqueue or reported failed.
    Failed(Failure),
    /// No delivery report within the delivery timeout; the producer may still deliver it.
    Unconfirmed,
}

/// The deliveries of a batch, one per row in the rows' order, and the reports still awaited.
pub struct Published {
    pub deliveries: Vec<Delivery>,
    /// (row index, its delivery report to come) for every [`Delivery::Unconfirmed`] row.
    pub unresolved: Vec<(usize, DeliveryFuture)>,
}

/// Enqueues the batch (rows in id order) except the rows `sendable` refuses (and the later rows
/// of their keys), and awaits the delivery reports until `deadline`.
pub async fn publish(
    producer: &FutureProducer,
    rows: &[ClaimedRow],
    sendable: impl Fn(&ClaimedRow) -> bool,
    deadline: tokio::time::Instant,
) -> Published {
    let mut deliveries = vec![Delivery::NotAttempted; rows.len()];
    let mut in_flight = Vec::with_capacity(rows.len());
    // One span per message, only when spans are exported: a child of the order's request span
    // (from the row), whose context the message carries to the consumer.
    let tracing = outbox_core::telemetry::exporting();
    let mut spans: Vec<Option<tracing::Span>> = Vec::new();
    if tracing {
        spans.resize_with(rows.len(), || None);
    }
    let mut unresolved = Vec::new();
    let mut held_keys: HashSet<&str> = HashSet::new();
    for (index, row) in rows.iter().enumerate() {
        let key = row.partition_key.as_str();
        if !held_keys.is_empty() && held_keys.contains(key) {
            continue;
        }
        if !sendable(row) {
            held_keys.insert(key);
            continue;
        }
        let mut event = row.cloud_event();
        let carried;
        if tracing {
            let span = tracing::info_span!(
                "publish",
                otel.kind = "producer",
                event_id = %row.event_id,
                topic = %row.topic,
                key,
                trace_id = tracing::field::Empty,
                span_id = tracing::field::Empty,
            );
            carried = outbox_core::telemetry::continue_context(
                &span,
                &outbox_core::telemetry::TraceHeaders {
                    traceparent: row.traceparent.clone(),
                    tracestate: row.tracestate.clone(),
                },
            );
            event.traceparent = carried.traceparent.as_deref();
            event.tracestate = carried.tracestate.as_deref();
            spans[index] = Some(span);
        }
        let record = FutureRecord::to(&row.topic)
            .key(key)
            .payload(&row.payload)
            .headers(event.to_kafka_headers());
        match producer.send_result(record) {
            Ok(future) => {
                in_flight.push((index, future));
                if row.attempts > 0 {
                    held_keys.insert(key);
                }
            }
            Err((error, _)) => {
                if error.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) {
                    // The rest were not attempted; they are claimed again once the queue drains.
                    // Reported as a failure about the broker, so a batch that sent nothing
                    // pauses the step instead of claiming again at once.
                    deliveries[index] = Delivery::Failed(Failure::from_kafka(&error));
                    break;
                }
                deliveries[index] = Delivery::Failed(Failure::from_kafka(&error));
                held_keys.insert(key);
            }
        }
    }
    for (index, mut future) in in_flight {
        deliveries[index] = match tokio::time::timeout_at(deadline, &mut future).await {
            Ok(report) => delivery_of(report),
            Err(_elapsed) => {
                unresolved.push((index, future));
                Delivery::Unconfirmed
            }
        };
        // The span ends with the delivery report (or the batch's deadline).
        if let Some(span) = spans.get_mut(index).and_then(Option::take) {
            let _entered = span.enter();
            match &deliveries[index] {
                Delivery::Acked(_) => tracing::debug!("acknowledged"),
                other => tracing::warn!(delivery = ?other, "not acknowledged"),
            }
        }
    }
    Published {
        deliveries,
        unresolved,
    }
}

/// What a delivery report says about its row.
pub fn delivery_of(
    report: Result<
        rdkafka::producer::future_producer::OwnedDeliveryResult,
        futures::channel::oneshot::Canceled,
    >,
) -> Delivery {
    match report {
        Ok(Ok(_)) => Delivery::Acked(Utc::now()),
        Ok(Err((error, _))) => Delivery::Failed(Failure::from_kafka(&error)),
        Err(_canceled) => Delivery::Failed(Failure::transient(
            "Canceled",
            "the producer was dropped before the delivery report",
        )),
    }
}

/// What a batch's deliveries mean for its rows.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Settlement {
    /// Rows to delete: acknowledged, and every earlier row of their key in the batch too.
    pub published: Vec<i64>,
    /// Commit→ack latency of each published row, in seconds.
    pub latencies: Vec<f64>,
    /// Rows whose failure was about the message: (id, attempts before this one, error).
    pub failed: Vec<(i64, i32, String)>,
    /// Every failure, for the metrics.
    pub failures: Vec<Failure>,
    /// The first failure that was about the broker.
    pub transient: Option<String>,
    /// Indexes of the rows whose failure was about the broker, or that had no report in time:
    /// their partitions are paused.
    pub troubled: Vec<usize>,
    /// Whether any row of the batch was acknowledged (kept or not): the broker is up.
    pub any_acked: bool,
    /// Rows acknowledged but kept because an earlier row of their key was not.
    pub kept_behind: usize,
}

/// Applies the per-key ordering rule to a batch's deliveries.
pub fn settle(rows: &[ClaimedRow], deliveries: &[Delivery]) -> Settlement {
    let mut settlement = Settlement::default();
    let mut broken_keys: HashSet<&str> = HashSet::new();
    for (index, (row, delivery)) in rows.iter().zip(deliveries).enumerate() {
        let key = row.partition_key.as_str();
        let earlier_all_acked = broken_keys.is_empty() || !broken_keys.contains(key);
        if matches!(delivery, Delivery::Acked(_)) {
            settlement.any_acked = true;
        }
        match delivery {
            Delivery::Acked(at) if earlier_all_acked => {
                settlement.published.push(row.id);
                settlement
                    .latencies
                    .push(seconds_since_commit(row.created_at, *at));
            }
            Delivery::Acked(_) => settlement.kept_behind += 1,
            Delivery::Failed(failure) => {
                if failure.kind == FailureKind::Permanent {
                    settlement
                        .failed
                        .push((row.id, row.attempts, failure.message.clone()));
                } else {
                    settlement.troubled.push(index);
                    if settlement.transient.is_none() {
                        settlement.transient = Some(failure.message.clone());
                    }
                }
                settlement.failures.push(failure.clone());
                broken_keys.insert(key);
            }
            Delivery::Unconfirmed => {
                let failure = Failure::transient(
                    "DeliveryTimeout",
                    "no delivery report within the delivery timeout",
                );
                settlement.troubled.push(index);
                if settlement.transient.is_none() {
                    settlement.transient = Some(failure.message.clone());
                }
                settlement.failures.push(failure);
                broken_keys.insert(key);
            }
            Delivery::NotAttempted => {
                broken_keys.insert(key);
            }
        }
    }
    settlement
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn row(id: i64, key: &str) -> ClaimedRow {
        ClaimedRow {
            id,
            lane: 0,
            event_id: Uuid::now_v7(),
            topic: "t".into(),
            partition_key: key.into(),
            event_type: "order.placed.v1".into(),
            source: "/order-api".into(),
            subject: "s".into(),
            payload: "{}".into(),
            traceparent: None,
            tracestate: None,
            attempts: 0,
            created_at: Utc::now(),
        }
    }

    fn failed(kind: FailureKind) -> Delivery {
        Delivery::Failed(Failure {
            kind,
            reason: "X".into(),
            message: "x".into(),
        })
    }

    #[test]
    fn an_acked_row_behind_a_failed_row_of_its_key_is_kept() {
        let rows = [row(1, "a"), row(2, "b"), row(3, "a"), row(4, "b")];
        let deliveries = [
            failed(FailureKind::Permanent),
            Delivery::Acked(Utc::now()),
            Delivery::Acked(Utc::now()),
            Delivery::Acked(Utc::now()),
        ];
        let settlement = settle(&rows, &deliveries);
        assert_eq!(settlement.published, vec![2, 4]);
        assert_eq!(settlement.failed.len(), 1);
        assert_eq!(settlement.kept_behind, 1);
        assert_eq!(settlement.transient, None);
    }

    #[test]
    fn an_unconfirmed_row_is_transient_and_holds_its_key() {
        let rows = [row(1, "a"), row(2, "a"), row(3, "b")];
        let deliveries = [
            Delivery::Unconfirmed,
            Delivery::Acked(Utc::now()),
            failed(FailureKind::Transient),
        ];
        let settlement = settle(&rows, &deliveries);
        assert!(settlement.published.is_empty());
        assert!(settlement.failed.is_empty());
        assert!(settlement.transient.is_some());
    }
}
