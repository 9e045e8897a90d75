//! The consumer loop: messages from the consumer group, handed by partition to apply lanes (see
//! `lanes`); in each lane the batch step is retried until it is done, then the batch's offsets
//! are stored.
//!
//! At-least-once with manual offsets: `enable.auto.offset.store=false`, and an offset is stored
//! only after the batch's database transaction committed and its dead letters were
//! acknowledged. Auto-commit then commits only what was stored; stored offsets are also committed
//! synchronously when partitions are revoked and at shutdown. A database outage is retried with
//! backoff, forever: the consumer waits, never skips. Whatever was fetched but not yet applied
//! when the process stops (or its partition moves) is redelivered, and re-applying it is a
//! no-op (see `stock`).

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use backoff::backoff::Backoff;
use futures::FutureExt;
use rdkafka::{
    client::ClientContext,
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer},
    error::KafkaError,
    message::{Message, OwnedMessage},
    types::RDKafkaErrorCode,
    Offset, TopicPartitionList,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    batch::{Applier, Batch, Report},
    gaps::{Contiguity, Gap},
    lanes::{InFlight, Router},
    metrics::Metrics,
    Settings,
};

/// The consumer's context: commits what was stored before partitions are taken away, so the
/// next owner starts after everything this one applied; counts assignment changes, so the loop
/// knows when a partition's next offset may legitimately jump; publishes the lag of each
/// assigned partition from librdkafka's statistics.
#[derive(Default)]
pub struct GroupContext {
    /// `catalog_consumer_lag_messages`, when metrics are registered.
    lag: Option<prometheus::IntGaugeVec>,
    rebalances: AtomicU64,
    /// The committed offset of each partition at its last assignment: where its next message
    /// must start, so a gap in the very first fetch is seen too.
    assigned_at: Mutex<Vec<(String, i32, i64)>>,
}

impl GroupContext {
    /// How many assignment changes this member has seen.
    pub fn rebalances(&self) -> u64 {
        self.rebalances.load(Ordering::SeqCst)
    }

    /// The committed offsets of the partitions at their last assignment.
    pub fn assigned_at(&self) -> Vec<(String, i32, i64)> {
        self.assigned_at.lock().expect("assignment lock").clone()
    }
}

impl ClientContext for GroupContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        let Some(lag) = &self.lag else { return };
        // Only the partitions this member fetches now: a revoked one disappears.
        lag.reset();
        for topic in statistics.topics.values() {
            for partition in topic.partitions.values() {
                if partition.partition < 0 || !partition.desired || partition.consumer_lag < 0 {
                    continue;
                }
                lag.with_label_values(&[&topic.topic, &partition.partition.to_string()])
                    .set(partition.consumer_lag);
            }
        }
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.rebalances.fetch_add(1, Ordering::SeqCst);
        if let Rebalance::Revoke(partitions) = rebalance {
            tracing::info!(partitions = partitions.count(), "partitions revoked");
            commit_stored(consumer);
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance {
            tracing::info!(partitions = partitions.count(), "partitions assigned");
            let committed = consumer
                .committed_offsets((*partitions).clone(), Duration::from_secs(10))
                .map(|list| {
                    list.elements()
                        .iter()
                        .filter_map(|e| match e.offset() {
                            Offset::Offset(offset) => {
                                Some((e.topic().to_owned(), e.partition(), offset))
                            }
                            _ => None,
                        })
                        .collect()
                })
                .unwrap_or_else(|error| {
                    tracing::warn!(%error, "cannot read the committed offsets of the assignment");
                    Vec::new()
                });
            *self.assigned_at.lock().expect("assignment lock") = committed;
        }
        self.rebalances.fetch_add(1, Ordering::SeqCst);
    }
}

/// The group member this process runs.
pub type GroupConsumer = StreamConsumer<GroupContext>;

/// Synchronously commits the stored offsets. Nothing stored is not an error.
fn commit_stored<C: Consumer<GroupContext>>(consumer: &C) {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => tracing::debug!("stored offsets committed"),
        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(error) => tracing::warn!(%error, "cannot commit stored offsets"),
    }
}

/// How often librdkafka reports statistics (the lag gauge's refresh period).
const STATISTICS_INTERVAL_MS: u32 = 5_000;

/// Joins the group and subscribes to the order events topic.
pub fn subscribe(settings: &Settings, metrics: &Metrics) -> anyhow::Result<GroupConsumer> {
    let mut config = settings.kafka.client_config()?;
    if let Some(instance) = &settings.consumer_instance_id {
        config.set("group.instance.id", instance);
    }
    let consumer: GroupConsumer = config
        .set("group.id", &settings.consumer_group)
        .set("fetch.wait.max.ms", settings.fetch_wait_max_ms.to_string())
        .set("fetch.min.bytes", settings.fetch_min_bytes.to_string())
        .set("enable.auto.offset.store", "false")
        .set("enable.auto.commit", "true")
        .set(
            "auto.commit.interval.ms",
            settings.commit_interval_ms.to_string(),
        )
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set(
            "session.timeout.ms",
            settings.kafka_session_timeout_ms.to_string(),
        )
        .set("statistics.interval.ms", STATISTICS_INTERVAL_MS.to_string())
        .create_with_context(GroupContext {
            lag: Some(metrics.consumer_lag.clone()),
            ..GroupContext::default()
        })?;
    consumer.subscribe(&[&settings.order_events_topic])?;
    Ok(consumer)
}

/// Since when each lane's batch in hand has been failing, for the lanes whose batch is.
#[derive(Clone, Default)]
pub struct Stall(Arc<Mutex<HashMap<usize, Instant>>>);

impl Stall {
    /// `lane`'s batch failed (again); the longest any lane's batch has been failing.
    fn failing(&self, lane: usize) -> Duration {
        let mut since = self.0.lock().expect("stall lock");
        since.entry(lane).or_insert_with(Instant::now);
        Self::longest(&since)
    }

    /// `lane`'s batch is done; the longest any other lane's batch has been failing.
    fn cleared(&self, lane: usize) -> Duration {
        let mut since = self.0.lock().expect("stall lock");
        since.remove(&lane);
        Self::longest(&since)
    }

    fn longest(since: &HashMap<usize, Instant>) -> Duration {
        since
            .values()
            .map(Instant::elapsed)
            .max()
            .unwrap_or_default()
    }

    /// The readiness check: fails while one batch has been retried for longer than `limit`.
    pub fn check(&self, limit: Duration) -> outbox_core::ops::Check {
        let stall = self.clone();
        outbox_core::ops::Check::from_fn("batch", move || {
            let failing = Self::longest(&stall.0.lock().expect("stall lock"));
            if failing > limit {
                return Err(format!(
                    "one batch has been retried for {} s (database or dead-letter topic unavailable)",
                    failing.as_secs()
                ));
            }
            Ok(())
        })
    }
}

/// Batches' worth of messages per lane that may be handed to lanes and not yet applied; beyond
/// that the receiving waits, so a stalled lane soon stops the fetching. The consumer's queue holds
/// each partition's fetched messages in one run (up to `max.partition.fetch.bytes`, a few
/// thousand events), so the limit must let the receiving read past one partition's run to the
/// next partition's, which another lane applies meanwhile.
const IN_FLIGHT_BATCHES_PER_LANE: usize = 4;

/// The loop around [`Applier::apply_batch`]: one task takes messages from the group and hands
/// each partition's to its lane (see [`crate::lanes`]); each lane applies its batches one after
/// the other, with backoff, and stores their offsets.
#[derive(Clone)]
pub struct ConsumeLoop {
    pub(crate) consumer: Arc<GroupConsumer>,
    pub(crate) applier: Applier,
    pub(crate) metrics: Metrics,
    pub(crate) batch_size: usize,
    pub(crate) batch_wait: Duration,
    /// How many batches are applied at once, each by its own lane.
    pub(crate) lanes: usize,
    /// Events older than this are dead-lettered, never applied (see `decode`).
    pub(crate) dedup_window: Duration,
    pub(crate) retry_max_backoff: Duration,
    #[cfg(feature = "test-hooks")]
    pub(crate) hold_offsets_after_commit: bool,
    pub(crate) stall: Stall,
}

impl ConsumeLoop {
    /// Consumes until `shutdown` is cancelled; then each lane finishes the batch in hand (unless
    /// the database is down: then it stays unapplied and unstored, for redelivery), the stored
    /// offsets are committed and the consumer leaves the group.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        // Cancelled with `shutdown`, or when the receiving ends for another reason.
        let stop_lanes = shutdown.child_token();
        let in_flight = InFlight::default();
        let mut senders = Vec::with_capacity(self.lanes);
        let mut lanes = tokio::task::JoinSet::new();
        for lane in 0..self.lanes {
            let (sender, receiver) = mpsc::unbounded_channel();
            senders.push(sender);
            let (this, stop, in_flight) = (self.clone(), stop_lanes.clone(), in_flight.clone());
            lanes.spawn(async move { this.run_lane(lane, receiver, &stop, &in_flight).await });
        }
        let in_flight_limit = IN_FLIGHT_BATCHES_PER_LANE * self.lanes * self.batch_size;
        let mut router = Router::new(self.lanes);
        let mut contiguity = Contiguity::default();
        let mut rebalances = self.consumer.context().rebalances();
        'receive: while let Some(messages) = self.next_batch(&shutdown).await {
            let now = self.consumer.context().rebalances();
            if now != rebalances {
                // Partitions get lanes anew only once no lane holds a message of one.
                if !in_flight.wait_idle(&shutdown).await {
                    break;
                }
                router.forget();
                contiguity.reset();
                for (topic, partition, offset) in self.consumer.context().assigned_at() {
                    contiguity.expect(&topic, partition, offset);
                }
                rebalances = now;
            }
            let messages = self.close_gaps(&mut contiguity, messages);
            in_flight.handed(messages.len());
            let mut by_lane: Vec<Vec<OwnedMessage>> = vec![Vec::new(); self.lanes];
            for message in messages {
                by_lane[router.lane(message.topic(), message.partition())].push(message);
            }
            for (sender, messages) in senders.iter().zip(by_lane) {
                if !messages.is_empty() && sender.send(messages).is_err() {
                    break 'receive;
                }
            }
            if !in_flight.wait_below(in_flight_limit, &shutdown).await {
                break;
            }
        }
        // A lane stops after the batch in hand; what it was given beyond that is not stored, so
        // it is redelivered.
        stop_lanes.cancel();
        drop(senders);
        while let Some(lane) = lanes.join_next().await {
            lane?;
        }
        let consumer = self.consumer;
        // Committing and closing block on the broker: off the async threads.
        tokio::task::spawn_blocking(move || {
            commit_stored(consumer.as_ref());
            // Dropping the last handle closes the consumer, which leaves the group.
            drop(consumer);
        })
        .await?;
        tracing::info!("consumer left the group");
        Ok(())
    }

    /// One lane: takes up to a batch of what it was given, applies it until done, stores its
    /// offsets, and again, until shutdown.
    async fn run_lane(
        &self,
        lane: usize,
        mut receiver: mpsc::UnboundedReceiver<Vec<OwnedMessage>>,
        shutdown: &CancellationToken,
        in_flight: &InFlight,
    ) {
        let mut pending: VecDeque<OwnedMessage> = VecDeque::new();
        loop {
            if pending.is_empty() {
                tokio::select! {
                    // Shutdown wins over a ready message: the batch in hand was the last one.
                    biased;
                    _ = shutdown.cancelled() => return,
                    received = receiver.recv() => match received {
                        Some(messages) => pending.extend(messages),
                        None => return,
                    },
                }
            }
            while pending.len() < self.batch_size {
                match receiver.try_recv() {
                    Ok(messages) => pending.extend(messages),
                    Err(_) => break,
                }
            }
            if shutdown.is_cancelled() {
                return;
            }
            let taken = pending.len().min(self.batch_size);
            let mut batch = Batch::new(pending.drain(..taken).collect(), self.dedup_window);
            let Some(report) = self.apply_until_done(lane, &mut batch, shutdown).await else {
                tracing::warn!(
                    lane,
                    messages = batch.len(),
                    "stopping with a batch not applied; it will be redelivered"
                );
                return;
            };
            tracing::debug!(
                lane,
                messages = batch.len(),
                dead_lettered = report.dead_lettered,
                "batch applied"
            );
            #[cfg(feature = "test-hooks")]
            if self.hold_offsets_after_commit {
                tracing::warn!("test hook: holding offsets after the database commit");
                shutdown.cancelled().await;
                return;
            }
            self.store_offsets(&batch);
            in_flight.finished(batch.len());
        }
    }

    /// Waits for a first message (or shutdown), then takes every message already fetched, up to
    /// the batch size, and, when `batch_wait` is set, waits that long at most for more.
    ///
    /// Batches size themselves to the load: while a lane applies one, the next one's messages
    /// accumulate in its queue, so an idle consumer applies a single message at once and a busy
    /// one applies large batches.
    async fn next_batch(&self, shutdown: &CancellationToken) -> Option<Vec<OwnedMessage>> {
        let mut messages = Vec::new();
        while messages.is_empty() {
            tokio::select! {
                // Shutdown wins over a ready message: the batch in hand is the last one.
                biased;
                _ = shutdown.cancelled() => return None,
                received = self.consumer.recv() => match received {
                    Ok(message) => messages.push(message.detach()),
                    Err(error) => {
                        tracing::warn!(%error, "consumer error");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        while messages.len() < self.batch_size {
            match self.consumer.recv().now_or_never() {
                Some(Ok(message)) => messages.push(message.detach()),
                Some(Err(error)) => tracing::warn!(%error, "consumer error"),
                None => break,
            }
        }
        if self.batch_wait.is_zero() {
            return Some(messages);
        }
        let deadline = tokio::time::Instant::now() + self.batch_wait;
        while messages.len() < self.batch_size {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                received = self.consumer.recv() => match received {
                    Ok(message) => messages.push(message.detach()),
                    Err(error) => tracing::warn!(%error, "consumer error"),
                },
            }
        }
        Some(messages)
    }

    /// Cuts each partition's messages at an offset gap and fetches the partition again from the
    /// missing offset (see [`crate::gaps`]).
    fn close_gaps(
        &self,
        contiguity: &mut Contiguity,
        messages: Vec<OwnedMessage>,
    ) -> Vec<OwnedMessage> {
        let positions: Vec<(&str, i32, i64)> = messages
            .iter()
            .map(|m| (m.topic(), m.partition(), m.offset()))
            .collect();
        let (keep, gaps) = contiguity.check(&positions, Instant::now());
        for gap in gaps {
            match gap {
                Gap::Refetch {
                    topic,
                    partition,
                    expected,
                    found,
                } => {
                    tracing::warn!(
                        topic,
                        partition,
                        expected,
                        found,
                        "the broker served an offset gap; fetching the partition again from the missing offset"
                    );
                    self.metrics
                        .offset_gaps
                        .with_label_values(&["refetched"])
                        .inc();
                    if let Err(error) = self.consumer.seek(
                        &topic,
                        partition,
                        Offset::Offset(expected),
                        Duration::from_secs(1),
                    ) {
                        tracing::warn!(%error, topic, partition, "cannot seek back to the gap");
                        contiguity.refetch_failed(&topic, partition, expected);
                    }
                }
                Gap::Accepted {
                    topic,
                    partition,
                    expected,
                    found,
                } => {
                    tracing::error!(
                        topic,
                        partition,
                        expected,
                        found,
                        "offsets stayed missing after re-fetching (compaction or transaction markers?); skipping them"
                    );
                    self.metrics
                        .offset_gaps
                        .with_label_values(&["accepted"])
                        .inc();
                }
            }
        }
        messages
            .into_iter()
            .zip(keep)
            .filter_map(|(message, keep)| keep.then_some(message))
            .collect()
    }

    /// Retries the batch with backoff until it is done; `None` when shutdown came first.
    async fn apply_until_done(
        &self,
        lane: usize,
        batch: &mut Batch,
        shutdown: &CancellationToken,
    ) -> Option<Report> {
        // Never gives up: a message is never skipped because a dependency is down.
        let mut backoff = outbox_core::retry::until_it_answers(self.retry_max_backoff);
        loop {
            match self.applier.apply_batch(batch).await {
                Ok(report) => {
                    let failing = self.stall.cleared(lane);
                    self.metrics
                        .batch_retrying_seconds
                        .set(failing.as_secs_f64());
                    return Some(report);
                }
                Err(error) => {
                    let failing = self.stall.failing(lane);
                    self.metrics
                        .batch_retrying_seconds
                        .set(failing.as_secs_f64());
                    self.metrics
                        .retries
                        .with_label_values(&[error.cause()])
                        .inc();
                    let wait = backoff.next_backoff().unwrap_or(self.retry_max_backoff);
                    tracing::warn!(
                        lane,
                        error = format!("{:#}", anyhow::Error::from(error)),
                        retry_in_ms = wait.as_millis() as u64,
                        messages = batch.len(),
                        "batch not applied; retrying"
                    );
                    tokio::select! {
                        _ = shutdown.cancelled() => return None,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    fn store_offsets(&self, batch: &Batch) {
        let mut offsets = TopicPartitionList::new();
        for ((topic, partition), next) in batch.next_offsets() {
            if let Err(error) =
                offsets.add_partition_offset(&topic, partition, Offset::Offset(next))
            {
                tracing::error!(%error, topic, partition, "cannot record offset");
            }
        }
        // Fails for partitions revoked meanwhile: their new owner gets those messages again and
        // finds them processed.
        if let Err(error) = self.consumer.store_offsets(&offsets) {
            tracing::warn!(%error, "cannot store offsets; the batch will be redelivered");
        }
    }
}
