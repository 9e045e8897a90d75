//! What the consumer published and committed: the dead-letter topic read to its end, and the
//! group's committed offsets.

use std::time::Duration;

use rdkafka::{
    consumer::{BaseConsumer, Consumer as _},
    message::{Header, Headers, Message, OwnedMessage},
    ClientConfig, Offset, TopicPartitionList,
};

use super::{eventually, Fixture, DEADLINE};

/// How long one broker request of these readers may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

impl Fixture {
    /// The group's committed offset of each partition (`None` when nothing was committed).
    pub async fn committed_offsets(&self) -> Vec<Option<i64>> {
        committed_offsets(&self.brokers, &self.group, &self.topic, self.partitions).await
    }

    /// Waits until the group's committed offsets are `expected`.
    pub async fn wait_for_committed(&self, expected: &[Option<i64>]) {
        let result = eventually(DEADLINE, || async {
            (self.committed_offsets().await == expected).then_some(())
        })
        .await;
        if result.is_err() {
            let last = self.committed_offsets().await;
            panic!("committed offsets are {last:?}, expected {expected:?}");
        }
    }

    /// Every message of the dead-letter topic: all it holds now, read to its high watermark
    /// (never up to a count or a quiet period), so a copy too many is seen as surely as one too
    /// few.
    pub async fn dead_letters(&self) -> Vec<DeadLetter> {
        let (brokers, topic) = (self.brokers.clone(), self.dlq_topic.clone());
        tokio::task::spawn_blocking(move || testkit::topic::read_to_end(&brokers, &topic))
            .await
            .expect("topic reader task")
            .expect("read the dead-letter topic")
            .iter()
            .map(DeadLetter::from)
            .collect()
    }

    /// Waits until the dead-letter topic holds at least `count` messages; returns all it holds.
    pub async fn wait_for_dead_letters(&self, count: usize) -> Vec<DeadLetter> {
        let result = eventually(DEADLINE, || async {
            let letters = self.dead_letters().await;
            (letters.len() >= count).then_some(letters)
        })
        .await;
        result.unwrap_or_else(|_| panic!("fewer than {count} dead letters"))
    }

    /// Whether the dead-letter topic holds no message at all.
    pub async fn dead_letter_topic_is_empty(&self) -> bool {
        self.dead_letters().await.is_empty()
    }
}

/// The group's committed offsets of `topic`, per partition.
async fn committed_offsets(
    brokers: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> Vec<Option<i64>> {
    let (brokers, group, topic) = (brokers.to_owned(), group.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        // Not subscribed: it only asks the coordinator, it never joins the group.
        let reader: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .create()
            .expect("offset reader");
        let mut list = TopicPartitionList::new();
        for partition in 0..partitions {
            list.add_partition(&topic, partition);
        }
        let committed = reader
            .committed_offsets(list, REQUEST_TIMEOUT)
            .expect("committed offsets");
        (0..partitions)
            .map(|partition| {
                match committed
                    .find_partition(&topic, partition)
                    .map(|e| e.offset())
                {
                    Some(Offset::Offset(offset)) => Some(offset),
                    _ => None,
                }
            })
            .collect()
    })
    .await
    .expect("offset reader task")
}

/// A message read back from the dead-letter topic.
#[derive(Debug)]
pub struct DeadLetter {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl DeadLetter {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .and_then(|(_, value)| value.as_ref())
            .map(|value| String::from_utf8_lossy(value).into_owned())
    }
}

impl From<&OwnedMessage> for DeadLetter {
    fn from(message: &OwnedMessage) -> Self {
        let headers = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|h: Header<'_, &[u8]>| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        Self {
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().map(<[u8]>::to_vec),
            headers,
        }
    }
}
