//! Reading a whole topic: "nothing more" is judged by the partitions' high watermarks, never by
//! a quiet period, so a late duplicate cannot hide behind a timeout.

use std::{collections::HashMap, time::Duration};

use anyhow::Context;
use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    message::OwnedMessage,
    ClientConfig, Message, Offset, TopicPartitionList,
};

/// Every message on `topic`, partition by partition in offset order, from the beginning up to
/// each partition's high watermark at the time of the call.
pub fn read_to_end(brokers: &str, topic: &str) -> anyhow::Result<Vec<OwnedMessage>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("read-{}", uuid::Uuid::new_v4().simple()),
        )
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()?;
    let timeout = Duration::from_secs(10);
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .with_context(|| format!("no metadata for {topic}"))?
        .partitions()
        .iter()
        .map(|p| p.id())
        .collect();
    let mut ends = HashMap::new();
    let mut assignment = TopicPartitionList::new();
    for &partition in &partitions {
        let (low, high) = consumer.fetch_watermarks(topic, partition, timeout)?;
        if high > low {
            ends.insert(partition, high);
            assignment.add_partition_offset(topic, partition, Offset::Offset(low))?;
        }
    }
    let mut messages: HashMap<i32, Vec<OwnedMessage>> = HashMap::new();
    if !ends.is_empty() {
        consumer.assign(&assignment)?;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !ends.is_empty() {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "{topic}: partitions {:?} not read to their high watermarks within 60 s",
            ends.keys().collect::<Vec<_>>()
        );
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message?;
        let partition = message.partition();
        let next = message.offset() + 1;
        messages
            .entry(partition)
            .or_default()
            .push(message.detach());
        if ends.get(&partition).is_some_and(|&high| next >= high) {
            ends.remove(&partition);
        }
    }
    let mut all = Vec::new();
    for partition in partitions {
        all.extend(messages.remove(&partition).unwrap_or_default());
    }
    Ok(all)
}
