//! The `order.placed.v1` event: its JSON value, its CloudEvents 1.0 binary-mode Kafka headers
//! and the validation both ends agree on.

use chrono::{DateTime, SecondsFormat, Utc};
use rdkafka::message::{BorrowedHeaders, Header, Headers, OwnedHeaders};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// CloudEvents `specversion`.
pub const SPEC_VERSION: &str = "1.0";
/// CloudEvents `type` of a placed order.
pub const ORDER_PLACED_TYPE: &str = "order.placed.v1";
/// CloudEvents `source` of events written by order-api.
pub const ORDER_API_SOURCE: &str = "/order-api";
/// `content-type` of every event value.
pub const CONTENT_TYPE_JSON: &str = "application/json";

/// Largest quantity one order may carry; larger is refused by order-api and dead-lettered by the
/// consumer.
pub const MAX_QUANTITY: i32 = 10_000;
/// Largest unit price in minor units (100 million in major units).
pub const MAX_UNIT_PRICE: i64 = 10_000_000_000;
/// Longest user or product id, in characters.
pub const MAX_ID_LEN: usize = 128;

/// Kafka header names of the CloudEvents binary content mode.
pub mod header {
    /// `ce_specversion`
    pub const SPEC_VERSION: &str = "ce_specversion";
    /// `ce_id`: the event id, which the consumer deduplicates on.
    pub const ID: &str = "ce_id";
    /// `ce_type`
    pub const TYPE: &str = "ce_type";
    /// `ce_source`
    pub const SOURCE: &str = "ce_source";
    /// `ce_time`: when the order was committed (RFC 3339).
    pub const TIME: &str = "ce_time";
    /// `ce_subject`: the order id.
    pub const SUBJECT: &str = "ce_subject";
    /// `content-type`
    pub const CONTENT_TYPE: &str = "content-type";
    /// W3C `traceparent`.
    pub const TRACEPARENT: &str = "traceparent";
    /// W3C `tracestate`, as the caller sent it.
    pub const TRACESTATE: &str = "tracestate";
}

/// The value of an `order.placed.v1` event (and the order-api response, less `status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderPlaced {
    /// The order's id.
    pub order_id: Uuid,
    /// Who placed it.
    pub user_id: String,
    /// The product sold; also the Kafka key, so one product's events stay in order.
    pub product_id: String,
    /// How many units, `1..=MAX_QUANTITY`.
    pub quantity: i32,
    /// Price of one unit in minor units.
    pub unit_price: i64,
    /// `quantity * unit_price`.
    pub total_price: i64,
    /// When the order was created.
    pub created_at: DateTime<Utc>,
}

impl OrderPlaced {
    /// Checks the rules both ends enforce; the error says which field is wrong and why.
    pub fn validate(&self) -> Result<(), String> {
        validate_id("userId", &self.user_id)?;
        validate_id("productId", &self.product_id)?;
        validate_quantity(self.quantity)?;
        validate_unit_price(self.unit_price)?;
        match i64::from(self.quantity).checked_mul(self.unit_price) {
            Some(total) if total == self.total_price => Ok(()),
            _ => Err("totalPrice must equal quantity * unitPrice".into()),
        }
    }
}

/// An id is 1 to [`MAX_ID_LEN`] characters with no control characters (PostgreSQL text cannot
/// hold NUL, and ids are echoed into logs).
pub fn validate_id(field: &str, value: &str) -> Result<(), String> {
    if value.trim().is_empty() {
        return Err(format!("{field} must not be empty"));
    }
    if value.chars().count() > MAX_ID_LEN {
        return Err(format!("{field} must be at most {MAX_ID_LEN} characters"));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("{field} must not contain control characters"));
    }
    Ok(())
}

/// A quantity is `1..=MAX_QUANTITY`.
pub fn validate_quantity(quantity: i32) -> Result<(), String> {
    if (1..=MAX_QUANTITY).contains(&quantity) {
        Ok(())
    } else {
        Err(format!("quantity must be between 1 and {MAX_QUANTITY}"))
    }
}

/// A unit price is `0..=MAX_UNIT_PRICE` minor units.
pub fn validate_unit_price(unit_price: i64) -> Result<(), String> {
    if (0..=MAX_UNIT_PRICE).contains(&unit_price) {
        Ok(())
    } else {
        Err(format!(
            "unitPrice must be between 0 and {MAX_UNIT_PRICE} (minor units)"
        ))
    }
}

/// The CloudEvents attributes carried as Kafka headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudEvent {
    /// `ce_id`, a UUIDv7 made with the order.
    pub id: Uuid,
    /// `ce_type`.
    pub event_type: String,
    /// `ce_source`.
    pub source: String,
    /// `ce_time`.
    pub time: DateTime<Utc>,
    /// `ce_subject`.
    pub subject: String,
    /// W3C `traceparent`, when the request had or made one.
    pub traceparent: Option<String>,
    /// W3C `tracestate`, when the caller sent one.
    pub tracestate: Option<String>,
}

/// Why a message's headers are not a CloudEvent this system understands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// A required header is absent.
    #[error("missing header {0}")]
    Missing(&'static str),
    /// A header is present but its value is not valid.
    #[error("invalid header {name}: {reason}")]
    Invalid {
        /// The header name.
        name: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// The CloudEvents attributes of a message about to be sent, borrowed from where they are kept
/// (the relay's claimed rows), so that writing the headers copies each value once, into the
/// message.
#[derive(Debug, Clone, Copy)]
pub struct CloudEventRef<'a> {
    pub id: Uuid,
    pub event_type: &'a str,
    pub source: &'a str,
    pub time: DateTime<Utc>,
    pub subject: &'a str,
    pub traceparent: Option<&'a str>,
    pub tracestate: Option<&'a str>,
}

impl CloudEventRef<'_> {
    /// The headers of the binary content mode, in a fixed order.
    pub fn to_kafka_headers(&self) -> OwnedHeaders {
        let time = self.time.to_rfc3339_opts(SecondsFormat::Micros, true);
        let mut id = Uuid::encode_buffer();
        let id = self.id.hyphenated().encode_lower(&mut id);
        let mut headers = OwnedHeaders::new_with_capacity(9)
            .insert(Header {
                key: header::SPEC_VERSION,
                value: Some(SPEC_VERSION),
            })
            .insert(Header {
                key: header::ID,
                value: Some(id),
            })
            .insert(Header {
                key: header::TYPE,
                value: Some(self.event_type),
            })
            .insert(Header {
                key: header::SOURCE,
                value: Some(self.source),
            })
            .insert(Header {
                key: header::TIME,
                value: Some(&time),
            })
            .insert(Header {
                key: header::SUBJECT,
                value: Some(self.subject),
            })
            .insert(Header {
                key: header::CONTENT_TYPE,
                value: Some(CONTENT_TYPE_JSON),
            });
        if let Some(traceparent) = self.traceparent {
            headers = headers.insert(Header {
                key: header::TRACEPARENT,
                value: Some(traceparent),
            });
        }
        if let Some(tracestate) = self.tracestate {
            headers = headers.insert(Header {
                key: header::TRACESTATE,
                value: Some(tracestate),
            });
        }
        headers
    }
}

impl CloudEvent {
    /// The attributes, borrowed.
    pub fn as_ref(&self) -> CloudEventRef<'_> {
        CloudEventRef {
            id: self.id,
            event_type: &self.event_type,
            source: &self.source,
            time: self.time,
            subject: &self.subject,
            traceparent: self.traceparent.as_deref(),
            tracestate: self.tracestate.as_deref(),
        }
    }

    /// The headers of the binary content mode, in a fixed order.
    pub fn to_kafka_headers(&self) -> OwnedHeaders {
        self.as_ref().to_kafka_headers()
    }

    /// Reads and checks the attributes from a message's headers.
    pub fn from_kafka_headers(headers: Option<&BorrowedHeaders>) -> Result<Self, HeaderError> {
        let get = |name: &'static str| -> Result<Option<&str>, HeaderError> {
            let Some(headers) = headers else {
                return Ok(None);
            };
            match headers.iter().find(|h| h.key == name).and_then(|h| h.value) {
                None => Ok(None),
                Some(bytes) => {
                    std::str::from_utf8(bytes)
                        .map(Some)
                        .map_err(|_| HeaderError::Invalid {
                            name,
                            reason: "not UTF-8".into(),
                        })
                }
            }
        };
        let required = |name: &'static str| get(name)?.ok_or(HeaderError::Missing(name));

        let spec = required(header::SPEC_VERSION)?;
        if spec != SPEC_VERSION {
            return Err(HeaderError::Invalid {
                name: header::SPEC_VERSION,
                reason: format!("expected {SPEC_VERSION}, got {spec:?}"),
            });
        }
        let id = required(header::ID)?;
        let id = Uuid::parse_str(id).map_err(|e| HeaderError::Invalid {
            name: header::ID,
            reason: e.to_string(),
        })?;
        let event_type = required(header::TYPE)?;
        if event_type != ORDER_PLACED_TYPE {
            return Err(HeaderError::Invalid {
                name: header::TYPE,
                reason: format!("unsupported event type {event_type:?}"),
            });
        }
        let source = required(header::SOURCE)?.to_owned();
        let time = required(header::TIME)?;
        let time = DateTime::parse_from_rfc3339(time)
            .map_err(|e| HeaderError::Invalid {
                name: header::TIME,
                reason: e.to_string(),
            })?
            .with_timezone(&Utc);
        let subject = get(header::SUBJECT)?.unwrap_or_default().to_owned();
        if let Some(content_type) = get(header::CONTENT_TYPE)? {
            if !content_type.starts_with(CONTENT_TYPE_JSON) {
                return Err(HeaderError::Invalid {
                    name: header::CONTENT_TYPE,
                    reason: format!("expected {CONTENT_TYPE_JSON}, got {content_type:?}"),
                });
            }
        }
        let traceparent = get(header::TRACEPARENT)?.map(str::to_owned);
        let tracestate = get(header::TRACESTATE)?.map(str::to_owned);
        Ok(Self {
            id,
            event_type: event_type.to_owned(),
            source,
            time,
            subject,
            traceparent,
            tracestate,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CloudEvent {
        CloudEvent {
            id: Uuid::now_v7(),
            event_type: ORDER_PLACED_TYPE.into(),
            source: ORDER_API_SOURCE.into(),
            time: Utc::now(),
            subject: Uuid::now_v7().to_string(),
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            tracestate: Some("vendor=abc".into()),
        }
    }

    #[test]
    fn headers_round_trip() {
        let event = sample();
        let headers = event.to_kafka_headers();
        let read = CloudEvent::from_kafka_headers(Some(headers.as_borrowed())).unwrap();
        assert_eq!(read.id, event.id);
        assert_eq!(read.traceparent, event.traceparent);
        assert_eq!(read.tracestate, event.tracestate);
        assert_eq!(read.time.timestamp_micros(), event.time.timestamp_micros());
    }

    #[test]
    fn missing_id_is_reported_by_name() {
        let headers = OwnedHeaders::new().insert(Header {
            key: header::SPEC_VERSION,
            value: Some("1.0"),
        });
        let error = CloudEvent::from_kafka_headers(Some(headers.as_borrowed())).unwrap_err();
        assert_eq!(error, HeaderError::Missing(header::ID));
        assert_eq!(
            CloudEvent::from_kafka_headers(None).unwrap_err(),
            HeaderError::Missing(header::SPEC_VERSION)
        );
    }

    #[test]
    fn validation_names_the_field() {
        let mut order = OrderPlaced {
            order_id: Uuid::now_v7(),
            user_id: "u".into(),
            product_id: "p".into(),
            quantity: 2,
            unit_price: 5,
            total_price: 10,
            created_at: Utc::now(),
        };
        assert_eq!(order.validate(), Ok(()));
        order.quantity = 0;
        assert!(order.validate().unwrap_err().contains("quantity"));
        order.quantity = 2;
        order.product_id = "a\0b".into();
        assert!(order.validate().unwrap_err().contains("productId"));
    }
}
