//! What the relay learns about partitions: from every batch's deliveries, and from the topics'
//! metadata, re-read every second.
//!
//! Guarantee kept here: a partition that lost its leader, or whose deliveries failed or went
//! unconfirmed, is skipped (its keys wait), and one that got its leader back or acknowledged is
//! used again (see [`crate::partitions`]).

use std::{collections::HashSet, sync::Arc, time::Duration};

use rdkafka::producer::Producer;
use tokio_util::sync::CancellationToken;

use super::Inner;
use crate::{outbox::ClaimedRow, partitions::Route, publish::Delivery};

impl Inner {
    /// Pauses the partitions of rows that failed for a reason about the broker or had no report
    /// in time; clears the pause of partitions that acknowledged. `routes` holds each row's
    /// partition ([`PartitionHealth::route`](crate::partitions::PartitionHealth::route)).
    pub(super) fn note_partitions(
        &self,
        rows: &[ClaimedRow],
        routes: &[Option<Route>],
        deliveries: &[Delivery],
        troubled: &[usize],
    ) {
        let delivered: HashSet<(&str, i32)> = rows
            .iter()
            .zip(routes)
            .zip(deliveries)
            .filter(|(_, delivery)| matches!(delivery, Delivery::Acked(_)))
            .filter_map(|((row, route), _)| route.map(|r| (row.topic.as_str(), r.partition)))
            .collect();
        self.partitions.delivered_to(delivered);
        for index in troubled {
            if let Some(route) = routes[*index] {
                self.partitions
                    .suspect(&rows[*index].topic, route.partition);
            }
        }
    }

    /// Reads the partition metadata of `topics` off the async threads.
    pub(super) async fn refresh_partitions(&self, topics: Vec<String>) {
        let producer = self.producer();
        let health = self.partitions.clone();
        let refreshed = tokio::task::spawn_blocking(move || {
            health.refresh(producer.client(), &topics, Duration::from_secs(2));
        })
        .await;
        if let Err(error) = refreshed {
            tracing::warn!(%error, "partition metadata refresh failed");
        }
    }
}

/// Re-reads the partition metadata of every topic published to, every second, until `stop`.
pub(super) fn spawn(inner: Arc<Inner>, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let topics = inner.partitions.topics();
            if !topics.is_empty() {
                inner.refresh_partitions(topics).await;
            }
        }
    })
}
