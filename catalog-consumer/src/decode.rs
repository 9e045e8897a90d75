//! Turns a Kafka message into an order event the stock step can apply, or into the reason it
//! cannot be understood. Nothing here is transient: the same bytes always decode the same way,
//! so a rejection is permanent and the message belongs in the dead-letter topic.

use chrono::{DateTime, Utc};
use outbox_core::{
    event::{CloudEvent, HeaderError, OrderPlaced},
    telemetry::TraceHeaders,
};
use rdkafka::message::{Message, OwnedMessage};
use uuid::Uuid;

/// An `order.placed.v1` event that passed every check, with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderEvent {
    /// `ce_id`: what duplicates are recognised by.
    pub event_id: Uuid,
    /// `ce_time`: when the order was committed.
    pub time: DateTime<Utc>,
    pub order: OrderPlaced,
    pub partition: i32,
    pub offset: i64,
    /// The trace context the message carried (the relay's publish span, or the order's).
    pub trace: TraceHeaders,
}

/// Why a message cannot be applied. `reason` is one of a few stable codes (a metric label and
/// the `dlq_reason` header); `detail` says what exactly is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct Rejection {
    pub reason: &'static str,
    pub detail: String,
}

/// A required CloudEvents header is absent.
pub const MISSING_HEADER: &str = "missing_header";
/// A CloudEvents header is present with a value this consumer does not accept.
pub const INVALID_HEADER: &str = "invalid_header";
/// The value is empty or not JSON.
pub const INVALID_JSON: &str = "invalid_json";
/// The value is JSON but not a valid `order.placed.v1` (missing fields, wrong types, rule broken).
pub const INVALID_EVENT: &str = "invalid_event";

/// The event's `ce_time` is older than the dedup window (PROCESSED_EVENTS_RETENTION minus its
/// margin): its id may already be pruned from `processed_events`, so applying it could
/// decrement the stock twice. An operator decides (the dead letter keeps the whole message).
pub const OLDER_THAN_DEDUP_WINDOW: &str = "older_than_dedup_window";

/// Every reason code, for metrics that should show zeroes too.
pub const REASONS: [&str; 5] = [
    MISSING_HEADER,
    INVALID_HEADER,
    INVALID_JSON,
    INVALID_EVENT,
    OLDER_THAN_DEDUP_WINDOW,
];

impl Rejection {
    fn new(reason: &'static str, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

impl From<HeaderError> for Rejection {
    fn from(error: HeaderError) -> Self {
        let reason = match error {
            HeaderError::Missing(_) => MISSING_HEADER,
            HeaderError::Invalid { .. } => INVALID_HEADER,
        };
        Self::new(reason, error.to_string())
    }
}

/// Decodes the headers (CloudEvents binary mode) and the JSON value, and checks the rules
/// order-api enforces, and that the event is not older than `oldest` (the dedup window's start).
/// Once an event is too old it stays too old, so a rejection is still permanent.
///
/// The Kafka key is not checked against `productId`: a mismatch breaks the per-product order
/// guarantee upstream, but the event itself is a real, committed sale, and dead-lettering it
/// would leave the stock too high. It is applied, and logged.
pub fn decode(message: &OwnedMessage, oldest: DateTime<Utc>) -> Result<OrderEvent, Rejection> {
    let cloud_event = CloudEvent::from_kafka_headers(message.headers().map(|h| h.as_borrowed()))?;
    if cloud_event.time < oldest {
        return Err(Rejection::new(
            OLDER_THAN_DEDUP_WINDOW,
            format!(
                "ce_time {} is before the dedup window's start {}: its id may be pruned from \
                 processed_events, so applying it could change the stock twice",
                cloud_event.time.to_rfc3339(),
                oldest.to_rfc3339()
            ),
        ));
    }
    let value = match message.payload() {
        None | Some([]) => return Err(Rejection::new(INVALID_JSON, "the value is empty")),
        Some(value) => value,
    };
    let order: OrderPlaced = serde_json::from_slice(value).map_err(|error| {
        use serde_json::error::Category;
        let reason = match error.classify() {
            Category::Data => INVALID_EVENT,
            Category::Io | Category::Syntax | Category::Eof => INVALID_JSON,
        };
        Rejection::new(reason, error.to_string())
    })?;
    order
        .validate()
        .map_err(|detail| Rejection::new(INVALID_EVENT, detail))?;
    if message.key() != Some(order.product_id.as_bytes()) {
        tracing::warn!(
            event_id = %cloud_event.id,
            partition = message.partition(),
            offset = message.offset(),
            "message key is not the productId; applying it, but its product's order is not guaranteed"
        );
    }
    Ok(OrderEvent {
        event_id: cloud_event.id,
        time: cloud_event.time,
        order,
        partition: message.partition(),
        offset: message.offset(),
        trace: TraceHeaders {
            traceparent: cloud_event.traceparent,
            tracestate: cloud_event.tracestate,
        },
    })
}
