//! What was published: the whole topic read up to its high watermarks, and the per-product
//! order check on it.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use anyhow::Context;
use outbox_core::event::header;
use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    message::{Headers, Message},
    ClientConfig, Offset, TopicPartitionList,
};
use serde_json::Value;
use uuid::Uuid;

use crate::load::Accepted;

/// One message of the topic.
#[derive(Debug)]
pub struct Published {
    pub partition: i32,
    pub offset: i64,
    pub event_id: Uuid,
    pub order_id: Uuid,
    pub product_id: String,
}

/// Every message of `topic` below the high watermarks it has when the read starts (later
/// messages, such as a zombie relay's late duplicates, are left out). Reads until every
/// partition reached its watermark, never "until quiet".
pub async fn read_to_high_watermarks(
    brokers: &str,
    topic: &str,
    partitions: i32,
    deadline: Duration,
) -> anyhow::Result<Vec<Published>> {
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || read_blocking(&brokers, &topic, partitions, deadline))
        .await
        .context("topic reader task")?
}

fn read_blocking(
    brokers: &str,
    topic: &str,
    partitions: i32,
    deadline: Duration,
) -> anyhow::Result<Vec<Published>> {
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("chaos-reader-{}", Uuid::new_v4().simple()),
        )
        .set("enable.auto.commit", "false")
        .create()
        .context("topic reader")?;
    let mut next = Vec::new();
    let mut high = Vec::new();
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        let (low, hw) = reader
            .fetch_watermarks(topic, partition, Duration::from_secs(10))
            .with_context(|| format!("watermarks of partition {partition}"))?;
        next.push(low);
        high.push(hw);
        assignment.add_partition_offset(topic, partition, Offset::Offset(low))?;
    }
    reader.assign(&assignment)?;
    let started = std::time::Instant::now();
    let mut read = Vec::new();
    let mut errors = 0;
    while next.iter().zip(&high).any(|(next, high)| next < high) {
        anyhow::ensure!(
            started.elapsed() < deadline,
            "read up to offsets {next:?} of high watermarks {high:?} within {deadline:?} \
             ({errors} poll errors)"
        );
        let message = match reader.poll(Duration::from_millis(200)) {
            None => continue,
            Some(Err(_)) => {
                errors += 1;
                continue;
            }
            Some(Ok(message)) => message,
        };
        let partition = message.partition();
        let index = usize::try_from(partition).context("partition")?;
        next[index] = message.offset() + 1;
        if message.offset() >= high[index] {
            continue;
        }
        let event_id = message
            .headers()
            .and_then(|headers| {
                headers
                    .iter()
                    .find(|h| h.key == header::ID)
                    .and_then(|h| h.value)
            })
            .and_then(|value| std::str::from_utf8(value).ok()?.parse().ok())
            .with_context(|| {
                format!(
                    "no ce_id at {partition}/{}: the topic holds only the relay's events",
                    message.offset()
                )
            })?;
        let value: Value = serde_json::from_slice(message.payload().unwrap_or_default())
            .with_context(|| format!("value at {partition}/{}", message.offset()))?;
        read.push(Published {
            partition,
            offset: message.offset(),
            event_id,
            order_id: value["orderId"]
                .as_str()
                .and_then(|id| id.parse().ok())
                .context("orderId")?,
            product_id: value["productId"].as_str().context("productId")?.to_owned(),
        });
    }
    Ok(read)
}

/// What the order check found.
#[derive(Debug, Default)]
pub struct OrderCheck {
    /// Distinct events on the topic.
    pub events: usize,
    /// Messages that repeated an event already on the topic.
    pub duplicates: usize,
    /// Accepted orders with no event on the topic.
    pub missing: Vec<Uuid>,
    /// Events of orders that were never accepted.
    pub unexpected: Vec<Uuid>,
    /// Products whose events are on more than one partition.
    pub split_products: Vec<String>,
    /// Descriptions of pairs published against the order the clients saw.
    pub violations: Vec<String>,
    /// The partition of each product.
    pub partition_of: HashMap<String, i32>,
}

/// Takes the first occurrence of each event and checks, per product, that when order A's 201
/// arrived before order B's first request was sent, A's event comes before B's: walking a
/// product's events in topic order, a later event accepted before the latest first-send time
/// seen so far is published out of order.
pub fn check_order(published: &[Published], accepted: &[Accepted]) -> OrderCheck {
    let by_id: HashMap<Uuid, &Accepted> = accepted.iter().map(|a| (a.order_id, a)).collect();
    let mut check = OrderCheck::default();
    let mut seen_events = HashSet::new();
    let mut seen_orders = HashSet::new();
    // Within a partition, messages are read in offset order.
    let mut per_product: HashMap<&str, Vec<&Published>> = HashMap::new();
    for message in published {
        if !seen_events.insert(message.event_id) {
            check.duplicates += 1;
            continue;
        }
        seen_orders.insert(message.order_id);
        per_product
            .entry(message.product_id.as_str())
            .or_default()
            .push(message);
    }
    check.events = seen_events.len();
    check.missing = accepted
        .iter()
        .map(|a| a.order_id)
        .filter(|id| !seen_orders.contains(id))
        .collect();
    for (product, events) in per_product {
        let partitions: HashSet<i32> = events.iter().map(|e| e.partition).collect();
        if partitions.len() > 1 {
            check
                .split_products
                .push(format!("{product}: {partitions:?}"));
        }
        check
            .partition_of
            .insert(product.to_owned(), events[0].partition);
        let mut latest_first_send: Option<(tokio::time::Instant, &Published)> = None;
        for event in events {
            let Some(order) = by_id.get(&event.order_id) else {
                check.unexpected.push(event.order_id);
                continue;
            };
            if let Some((first_sent, earlier)) = latest_first_send {
                if order.accepted_at < first_sent {
                    check.violations.push(format!(
                        "{product}: order {} (accepted {:?} before order {} was first sent) is at \
                         {}/{}, after it at {}/{}",
                        event.order_id,
                        first_sent - order.accepted_at,
                        earlier.order_id,
                        event.partition,
                        event.offset,
                        earlier.partition,
                        earlier.offset
                    ));
                }
            }
            if latest_first_send.is_none_or(|(latest, _)| order.first_sent > latest) {
                latest_first_send = Some((order.first_sent, event));
            }
        }
    }
    check
}

#[test]
fn an_order_accepted_before_another_was_sent_but_published_after_it_is_out_of_order() {
    let start = tokio::time::Instant::now();
    let at = |ms| start + Duration::from_millis(ms);
    // A answered at 10 ms; B first sent at 20 ms (after A's answer); C overlapped B.
    let order = |first_sent, accepted_at| Accepted {
        order_id: Uuid::new_v4(),
        product_id: "CATALOG-0001".into(),
        quantity: 1,
        first_sent: at(first_sent),
        accepted_at: at(accepted_at),
    };
    let (a, b, c) = (order(0, 10), order(20, 30), order(25, 35));
    let published = |orders: &[&Accepted]| -> Vec<Published> {
        orders
            .iter()
            .enumerate()
            .map(|(offset, order)| Published {
                partition: 0,
                offset: offset as i64,
                // One event per order: its id can stand for the event id here.
                event_id: order.order_id,
                order_id: order.order_id,
                product_id: order.product_id.clone(),
            })
            .collect()
    };
    let accepted = [a.clone(), b.clone(), c.clone()];

    let in_order = check_order(&published(&[&a, &b, &c]), &accepted);
    assert!(in_order.violations.is_empty(), "{:?}", in_order.violations);
    let overlapping_swapped = check_order(&published(&[&a, &c, &b]), &accepted);
    assert!(
        overlapping_swapped.violations.is_empty(),
        "B and C overlapped: either order is right"
    );
    // A repeated later (a duplicate) does not count: its first occurrence is in order.
    let duplicate = check_order(&published(&[&a, &b, &a, &c]), &accepted);
    assert!(
        duplicate.violations.is_empty(),
        "{:?}",
        duplicate.violations
    );
    assert_eq!(duplicate.duplicates, 1);

    let swapped = check_order(&published(&[&b, &a, &c]), &accepted);
    assert_eq!(swapped.violations.len(), 1, "{:?}", swapped.violations);
    let missing = check_order(&published(&[&a, &c]), &accepted);
    assert_eq!(missing.missing, [b.order_id]);
}
