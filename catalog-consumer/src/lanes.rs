//! Apply lanes: batches of different partitions applied at once, each in its own transaction.
//!
//! Guarantee kept here: between two rebalances every partition belongs to exactly one lane, and
//! a lane applies its messages in the order they were received, so a partition (and with it each
//! product, whose events share a key and so a partition) is still applied in offset order, one
//! transaction after the other. Lanes never touch the same product, so their transactions do not
//! wait on each other's row locks. At a rebalance the loop waits until every lane has finished
//! what it was given ([`InFlight::wait_idle`]) before partitions are given lanes anew, so a
//! partition never has messages on two lanes.

use std::collections::HashMap;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Which lane applies each partition seen since the last rebalance.
#[derive(Debug)]
pub struct Router {
    /// Topic → partition → lane; looked up for every message received, without allocating.
    lane_of: HashMap<String, HashMap<i32, usize>>,
    /// How many partitions each lane holds (one entry per lane).
    load: Vec<usize>,
}

impl Router {
    pub fn new(lanes: usize) -> Self {
        assert!(lanes > 0, "at least one lane");
        Self {
            lane_of: HashMap::new(),
            load: vec![0; lanes],
        }
    }

    /// The lane of a partition: the one it was given, or else the lane holding the fewest
    /// partitions (the first such), which it then keeps until [`Router::forget`].
    pub fn lane(&mut self, topic: &str, partition: i32) -> usize {
        if let Some(lane) = self
            .lane_of
            .get(topic)
            .and_then(|lanes| lanes.get(&partition))
        {
            return *lane;
        }
        let lane = (0..self.load.len())
            .min_by_key(|lane| self.load[*lane])
            .expect("at least one lane");
        self.load[lane] += 1;
        self.lane_of
            .entry(topic.to_owned())
            .or_default()
            .insert(partition, lane);
        lane
    }

    /// Forgets every partition's lane. Call only while no lane holds a message
    /// ([`InFlight::wait_idle`]): a partition may get another lane next.
    pub fn forget(&mut self) {
        self.lane_of.clear();
        self.load.iter_mut().for_each(|load| *load = 0);
    }
}

/// How many messages were handed to lanes and are not finished yet.
#[derive(Debug, Clone)]
pub struct InFlight(watch::Sender<usize>);

impl Default for InFlight {
    fn default() -> Self {
        Self(watch::channel(0).0)
    }
}

impl InFlight {
    pub fn handed(&self, messages: usize) {
        self.0.send_modify(|count| *count += messages);
    }

    /// `messages` were applied (their offsets stored), or dropped at shutdown.
    pub fn finished(&self, messages: usize) {
        self.0
            .send_modify(|count| *count = count.saturating_sub(messages));
    }

    /// Waits until no lane holds a message; false when `shutdown` came first.
    pub async fn wait_idle(&self, shutdown: &CancellationToken) -> bool {
        self.wait_below(1, shutdown).await
    }

    /// Waits until lanes hold fewer than `limit` messages; false when `shutdown` came first.
    pub async fn wait_below(&self, limit: usize, shutdown: &CancellationToken) -> bool {
        let mut count = self.0.subscribe();
        tokio::select! {
            _ = shutdown.cancelled() => false,
            below = count.wait_for(|count| *count < limit) => below.is_ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn partitions_are_spread_over_the_lanes_and_keep_theirs_until_forgotten() {
        let mut router = Router::new(2);
        // An assignment of even partitions only still uses both lanes.
        assert_eq!(router.lane("t", 0), 0);
        assert_eq!(router.lane("t", 2), 1);
        assert_eq!(router.lane("t", 4), 0);
        assert_eq!(router.lane("t", 2), 1, "a partition keeps its lane");
        assert_eq!(router.lane("t", 0), 0);
        router.forget();
        assert_eq!(router.lane("t", 4), 0);
        assert_eq!(
            router.lane("t", 0),
            1,
            "after a rebalance lanes are given anew"
        );
    }

    #[tokio::test]
    async fn waiting_for_idle_lanes_returns_once_every_handed_message_is_finished() {
        let in_flight = InFlight::default();
        let shutdown = CancellationToken::new();
        assert!(in_flight.wait_idle(&shutdown).await, "idle at first");
        in_flight.handed(3);
        in_flight.handed(2);
        let waiter = {
            let (in_flight, shutdown) = (in_flight.clone(), shutdown.clone());
            tokio::spawn(async move { in_flight.wait_idle(&shutdown).await })
        };
        in_flight.finished(3);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "two messages are still in a lane");
        in_flight.finished(2);
        let idle = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("idle once all finished")
            .unwrap();
        assert!(idle);

        in_flight.handed(1);
        shutdown.cancel();
        assert!(
            !in_flight.wait_idle(&shutdown).await,
            "shutdown ends the wait"
        );
    }
}
