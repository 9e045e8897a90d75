use outbox_core::event::header;
use rdkafka::message::{Header, OwnedHeaders};
use serde_json::{json, Value};

use crate::helpers::{wait_until, Event, Fixture, RawMessage};

/// A malformed message: what is wrong, the message, the reason code and a phrase of the detail
/// the dead letter must carry.
struct Bad {
    description: &'static str,
    message: RawMessage,
    reason: &'static str,
    detail: &'static str,
}

/// A good event with its value replaced by `value` (or removed when `None`).
fn with_raw_value(value: Option<&[u8]>) -> RawMessage {
    RawMessage {
        value: value.map(<[u8]>::to_vec),
        ..RawMessage::from(&Event::new("CATALOG-0001", 1))
    }
}

fn with_value(value: Value) -> RawMessage {
    with_raw_value(Some(&serde_json::to_vec(&value).unwrap()))
}

fn good_value() -> Value {
    serde_json::to_value(&Event::new("CATALOG-0001", 1).order).unwrap()
}

fn with_field(field: &str, value: Value) -> RawMessage {
    let mut order = good_value();
    order[field] = value;
    with_value(order)
}

fn without_field(field: &str) -> RawMessage {
    let mut order = good_value();
    order.as_object_mut().unwrap().remove(field);
    with_value(order)
}

/// The headers of a good event, with `name` replaced by `value` (or removed when `None`).
fn with_header(name: &str, value: Option<&[u8]>) -> RawMessage {
    let event = Event::new("CATALOG-0001", 1);
    let mut headers = OwnedHeaders::new();
    for (key, original) in [
        (header::SPEC_VERSION, "1.0".to_owned()),
        (header::ID, event.id.to_string()),
        (header::TYPE, "order.placed.v1".to_owned()),
        (header::SOURCE, "/order-api".to_owned()),
        (header::TIME, event.time.to_rfc3339()),
        (header::SUBJECT, event.order.order_id.to_string()),
        (header::CONTENT_TYPE, "application/json".to_owned()),
    ] {
        let value = if key == name {
            value
        } else {
            Some(original.as_bytes())
        };
        if let Some(value) = value {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
    }
    RawMessage {
        headers: Some(headers),
        ..RawMessage::from(&event)
    }
}

fn without_headers() -> RawMessage {
    RawMessage {
        headers: None,
        ..RawMessage::from(&Event::new("CATALOG-0001", 1))
    }
}

fn with_absurd_quantity() -> RawMessage {
    let mut order = good_value();
    order["quantity"] = json!(1_000_000);
    order["totalPrice"] = json!(1_000_000_i64 * 1500);
    with_value(order)
}

/// Every malformed message: (description, message, reason code, phrase of the detail).
#[rustfmt::skip]
fn bad_messages() -> Vec<Bad> {
    use header::{CONTENT_TYPE, ID, SPEC_VERSION, TIME, TYPE};
    let (json, missing, header, event) =
        ("invalid_json", "missing_header", "invalid_header", "invalid_event");
    [
        ("value is not JSON", with_raw_value(Some(b"{\"orderId\": ")), json, "EOF"),
        ("value is absent", with_raw_value(None), json, "empty"),
        ("no headers at all", without_headers(), missing, "ce_specversion"),
        ("ce_id missing", with_header(ID, None), missing, "ce_id"),
        ("ce_id not a UUID", with_header(ID, Some(b"order-42")), header, "ce_id"),
        ("ce_id not UTF-8", with_header(ID, Some(&[0xff, 0xfe, 0x00])), header, "UTF-8"),
        ("ce_type of another event", with_header(TYPE, Some(b"order.cancelled.v1")), header, "ce_type"),
        ("ce_specversion not 1.0", with_header(SPEC_VERSION, Some(b"0.3")), header, "ce_specversion"),
        ("ce_time not RFC 3339", with_header(TIME, Some(b"yesterday")), header, "ce_time"),
        ("content-type not JSON", with_header(CONTENT_TYPE, Some(b"text/plain")), header, "content-type"),
        ("quantity is a string", with_field("quantity", json!("3")), event, "invalid type"),
        ("quantity missing", without_field("quantity"), event, "missing field `quantity`"),
        ("quantity zero", with_field("quantity", json!(0)), event, "quantity"),
        ("quantity negative", with_field("quantity", json!(-5)), event, "quantity"),
        ("quantity absurd", with_absurd_quantity(), event, "quantity"),
        ("quantity beyond a 32-bit integer", with_field("quantity", json!(10_000_000_000_i64)), event, "expected i32"),
        ("orderId not a UUID", with_field("orderId", json!("42")), event, "UUID"),
        ("productId empty", with_field("productId", json!("")), event, "productId"),
        ("totalPrice not quantity * unitPrice", with_field("totalPrice", json!(1)), event, "totalPrice"),
        ("value is a JSON array", with_value(json!([1, 2, 3])), event, "invalid type"),
    ]
    .into_iter()
    .map(|(description, message, reason, detail)| Bad { description, message, reason, detail })
    .collect()
}

#[tokio::test]
async fn bad_messages_go_to_the_dead_letter_topic_with_their_reason_and_never_stall_the_partition()
{
    let fixture = Fixture::new(2).await;
    fixture.seed_products(&[("CATALOG-0001", 1000)]).await;
    let producer = fixture.producer();
    let consumer = fixture.spawn_consumer().await;

    // Every bad message with a good one before and after it, all in partition 0.
    let bad = bad_messages();
    assert!(bad.len() >= 10);
    let mut good_ids = Vec::new();
    let mut sent_bad = Vec::new();
    let mut last_offset = -1;
    for case in &bad {
        let before = Event::new("CATALOG-0001", 1);
        producer.send_to(&before, 0).await;
        good_ids.push(before.id);
        let (_, offset) = producer.send_raw(&case.message, Some(0)).await;
        sent_bad.push(offset);
        let after = Event::new("CATALOG-0001", 1);
        let (_, offset) = producer.send_to(&after, 0).await;
        good_ids.push(after.id);
        last_offset = offset;
    }

    let letters = fixture.wait_for_dead_letters(bad.len()).await;
    assert_eq!(
        letters.len(),
        bad.len(),
        "every bad message is dead-lettered"
    );
    for ((case, letter), offset) in bad.iter().zip(&letters).zip(&sent_bad) {
        let what = case.description;
        assert_eq!(
            letter.header("dlq_reason").as_deref(),
            Some(case.reason),
            "{what}"
        );
        let error = letter.header("dlq_error").unwrap_or_default();
        assert!(error.contains(case.detail), "{what}: dlq_error {error:?}");
        assert_eq!(
            letter.header("dlq_source_topic"),
            Some(fixture.topic.clone()),
            "{what}"
        );
        assert_eq!(
            letter.header("dlq_source_partition").as_deref(),
            Some("0"),
            "{what}"
        );
        assert_eq!(
            letter.header("dlq_source_offset"),
            Some(offset.to_string()),
            "{what}"
        );
        assert_eq!(letter.key, case.message.key, "{what}: original key");
        assert_eq!(letter.value, case.message.value, "{what}: original value");
        let original: Vec<(String, Option<Vec<u8>>)> = case
            .message
            .headers
            .iter()
            .flat_map(|headers| {
                use rdkafka::message::Headers;
                headers
                    .iter()
                    .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(
            letter.headers[..original.len()],
            original[..],
            "{what}: original headers first"
        );
    }

    wait_until("every good message applied", || async {
        fixture.processed_count().await == good_ids.len() as i64
    })
    .await;
    for id in &good_ids {
        assert!(fixture.is_processed(*id).await);
    }
    assert_eq!(
        fixture.stock("CATALOG-0001").await,
        1000 - good_ids.len() as i32
    );
    fixture
        .wait_for_committed(&[Some(last_offset + 1), None])
        .await;
    // Each dead-lettered once: no retry sent a second copy. Every message is applied and its
    // offset committed, so nothing is left to retry: the topic as it is now is final.
    assert_eq!(
        fixture.dead_letters().await.len(),
        bad.len(),
        "dead letters on the topic"
    );
    assert_eq!(consumer.messages("dlq").await, bad.len() as u64);
    consumer.stop().await;
}
