//! Which partitions can take messages now.
//!
//! Guarantee kept here: one partition without a leader (or refusing writes, e.g. below its
//! minimum in-sync replicas) does not slow the other partitions' keys. The relay knows where each
//! key goes (librdkafka's default partitioner, [`partition_of`]); a partition is unavailable
//! while the topic's metadata shows it without a leader, or for a growing pause after a delivery
//! to it failed or went unconfirmed. Rows of keys that go to an unavailable partition are not
//! sent; their keys wait (in order: nothing later of a waiting key is sent either) while every
//! other key flows.

use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
    time::{Duration, Instant},
};

use rdkafka::{client::Client, ClientContext};

/// The first pause of a partition after a failed or unconfirmed delivery; it doubles with each
/// further failure, up to [`MAX_SUSPECT_PAUSE`], and resets after a delivery to it succeeds.
const FIRST_SUSPECT_PAUSE: Duration = Duration::from_millis(500);
const MAX_SUSPECT_PAUSE: Duration = Duration::from_secs(30);

/// The partition librdkafka's default partitioner (`consistent_random`) sends a non-empty key
/// to: CRC-32 (IEEE) of the key modulo the partition count.
pub fn partition_of(key: &[u8], partition_count: i32) -> i32 {
    let count = u32::try_from(partition_count.max(1)).unwrap_or(1);
    (crc32(key) % count) as i32
}

/// CRC-32 (IEEE, reflected) one byte at a time through a table built at compile time.
const CRC32_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffff_u32;
    for byte in bytes {
        crc = (crc >> 8) ^ CRC32_TABLE[((crc ^ u32::from(*byte)) & 0xff) as usize];
    }
    !crc
}

/// Where a row goes and whether it may be sent now (see [`PartitionHealth::route`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub partition: i32,
    pub available: bool,
}

#[derive(Debug, Default)]
struct TopicState {
    partition_count: i32,
    leaderless: HashSet<i32>,
    /// Partition → (unavailable until, consecutive failures).
    suspect: HashMap<i32, (Instant, u32)>,
}

impl TopicState {
    fn available(&self, partition: i32, now: Instant) -> bool {
        let suspect = self
            .suspect
            .get(&partition)
            .is_some_and(|(until, _)| now < *until);
        !suspect && !self.leaderless.contains(&partition)
    }
}

/// What the relay knows about the partitions of the topics it publishes to.
#[derive(Debug, Default)]
pub struct PartitionHealth {
    topics: Mutex<HashMap<String, TopicState>>,
}

impl PartitionHealth {
    /// The partition `key` goes to on `topic`; `None` while the topic's metadata is unknown.
    pub fn partition(&self, topic: &str, key: &str) -> Option<i32> {
        let topics = self.topics.lock().expect("partition health lock");
        let state = topics.get(topic).filter(|s| s.partition_count > 0)?;
        Some(partition_of(key.as_bytes(), state.partition_count))
    }

    /// Each row's partition and whether it may be sent now, for a batch of (topic, key) pairs,
    /// under one lock (`None` while the topic's metadata is unknown).
    pub fn route<'a>(
        &self,
        rows: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Vec<Option<Route>> {
        let topics = self.topics.lock().expect("partition health lock");
        let now = Instant::now();
        let mut last: Option<(&str, Option<&TopicState>)> = None;
        rows.into_iter()
            .map(|(topic, key)| {
                let state = match last {
                    Some((seen, state)) if seen == topic => state,
                    _ => {
                        let state = topics.get(topic).filter(|s| s.partition_count > 0);
                        last = Some((topic, state));
                        state
                    }
                }?;
                let partition = partition_of(key.as_bytes(), state.partition_count);
                Some(Route {
                    partition,
                    available: state.available(partition, now),
                })
            })
            .collect()
    }

    /// Whether messages to `partition` of `topic` should be sent now.
    pub fn is_available(&self, topic: &str, partition: i32) -> bool {
        let topics = self.topics.lock().expect("partition health lock");
        topics
            .get(topic)
            .is_none_or(|state| state.available(partition, Instant::now()))
    }

    /// The topics whose metadata is not known yet, among `topics`.
    pub fn unknown<'a>(&self, topics: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        let known = self.topics.lock().expect("partition health lock");
        let mut unknown: Vec<String> = topics
            .into_iter()
            .filter(|t| !known.contains_key(*t))
            .map(str::to_owned)
            .collect();
        unknown.sort();
        unknown.dedup();
        unknown
    }

    /// A delivery to the partition failed for a reason about the broker, or had no report in
    /// time: pause it, longer with each consecutive failure.
    pub fn suspect(&self, topic: &str, partition: i32) {
        let mut topics = self.topics.lock().expect("partition health lock");
        let state = topics.entry(topic.to_owned()).or_default();
        let failures = state.suspect.get(&partition).map_or(0, |(_, n)| *n);
        let pause = FIRST_SUSPECT_PAUSE
            .saturating_mul(1 << failures.min(10))
            .min(MAX_SUSPECT_PAUSE);
        state
            .suspect
            .insert(partition, (Instant::now() + pause, failures + 1));
    }

    /// A delivery to the partition succeeded: it is healthy again.
    pub fn delivered(&self, topic: &str, partition: i32) {
        self.delivered_to([(topic, partition)]);
    }

    /// Deliveries to these (topic, partition) pairs succeeded, under one lock.
    pub fn delivered_to<'a>(&self, partitions: impl IntoIterator<Item = (&'a str, i32)>) {
        let mut topics = self.topics.lock().expect("partition health lock");
        for (topic, partition) in partitions {
            if let Some(state) = topics.get_mut(topic) {
                if !state.suspect.is_empty() {
                    state.suspect.remove(&partition);
                }
            }
        }
    }

    /// Reads the metadata of `topics` from the broker (blocking, at most `timeout`) and records
    /// their partition counts and leaderless partitions. Topics the broker does not answer for
    /// keep what was known.
    pub fn refresh<C: ClientContext>(
        &self,
        client: &Client<C>,
        topics: &[String],
        timeout: Duration,
    ) {
        for topic in topics {
            let metadata = match client.fetch_metadata(Some(topic), timeout) {
                Ok(metadata) => metadata,
                Err(error) => {
                    tracing::debug!(%error, topic, "cannot read topic metadata");
                    continue;
                }
            };
            let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
                continue;
            };
            if found.error().is_some() || found.partitions().is_empty() {
                continue;
            }
            let leaderless: HashSet<i32> = found
                .partitions()
                .iter()
                .filter(|p| p.leader() < 0)
                .map(|p| p.id())
                .collect();
            let mut known = self.topics.lock().expect("partition health lock");
            let state = known.entry(topic.clone()).or_default();
            if state.leaderless != leaderless {
                tracing::warn!(
                    topic,
                    leaderless = ?leaderless,
                    "partitions without a leader changed; their keys wait, the others flow"
                );
            }
            state.partition_count = found.partitions().len() as i32;
            state.leaderless = leaderless;
        }
    }

    /// Every topic seen so far.
    pub fn topics(&self) -> Vec<String> {
        let known = self.topics.lock().expect("partition health lock");
        known.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_is_the_ieee_checksum_librdkafka_partitions_by() {
        // The standard check value of CRC-32/ISO-HDLC.
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"CATALOG-0001"), 0xef5d_7c9d);
    }

    #[test]
    fn a_batch_is_routed_by_key_under_one_lock_and_a_suspect_partition_is_unavailable() {
        let health = PartitionHealth::default();
        assert_eq!(health.route([("t", "a")]), vec![None], "metadata unknown");
        health.topics.lock().unwrap().insert(
            "t".into(),
            TopicState {
                partition_count: 6,
                ..TopicState::default()
            },
        );
        let suspect = partition_of(b"CATALOG-0001", 6);
        health.suspect("t", suspect);
        let routes = health.route([("t", "CATALOG-0001"), ("u", "x"), ("t", "CATALOG-0002")]);
        assert_eq!(
            routes[0],
            Some(Route {
                partition: suspect,
                available: false
            })
        );
        assert_eq!(routes[1], None);
        let other = partition_of(b"CATALOG-0002", 6);
        assert_eq!(
            routes[2],
            Some(Route {
                partition: other,
                available: other != suspect
            })
        );
        health.delivered_to([("t", suspect)]);
        assert!(health.route([("t", "CATALOG-0001")])[0].unwrap().available);
    }

    #[test]
    fn a_suspect_partition_is_paused_and_a_delivery_clears_it() {
        let health = PartitionHealth::default();
        assert!(health.is_available("t", 1));
        health.suspect("t", 1);
        assert!(!health.is_available("t", 1));
        assert!(health.is_available("t", 2));
        health.delivered("t", 1);
        assert!(health.is_available("t", 1));
    }
}
