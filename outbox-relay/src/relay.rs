//! The relay: one step ([`Relay::publish_batch`]: claim, publish, delete or count attempts, in
//! one short transaction) and the loop around it, which only does wake-up, backoff and shutdown.
//!
//! Guarantees kept here:
//! - No transaction stays open across a long broker wait: the claim transaction lives for one
//!   batch, bounded by `DELIVERY_TIMEOUT_SECS`; after a batch in which nothing was acknowledged
//!   and something failed for a reason about the broker, the loop claims nothing until the
//!   broker answers a metadata request. A broker or database outage counts no attempt and is
//!   retried without giving up.
//! - One bad partition does not hold up the others: rows of keys whose partition is unavailable
//!   are not sent (see [`crate::partitions`]), and a message still without a delivery report
//!   when its batch ends keeps its key held (never claimed by this relay) until the report
//!   arrives, so a later row of the key can never overtake it; an acknowledged one is deleted
//!   then. Every other key keeps flowing.
//! - SIGTERM stops claiming; the batch in hand is finished (bounded) before the relay exits.

use std::{
    collections::HashMap,
    net::TcpListener,
    sync::{Arc, Mutex},
    time::Duration,
};

use actix_web::{dev::Server, App, HttpServer};
use anyhow::Context;
use backoff::{backoff::Backoff, ExponentialBackoff};
use futures::FutureExt;
use outbox_core::{
    db,
    ops::{self, Check, Ops},
};
use rdkafka::producer::{DeliveryFuture, FutureProducer, Producer};
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use outbox_core::kafka::FailureKind;

use crate::{
    admin, claim,
    metrics::Metrics,
    partitions::PartitionHealth,
    publish::{self, Delivery},
    retry::{self, RetryPolicy},
    wakeup::{self, IdlePacer},
    Settings,
};

/// Why a step did not complete normally. Every variant is transient: it counts no attempt
/// against any message, and the loop retries after the dependency answers again.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The database refused or lost the claim transaction; nothing of it was committed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Some deliveries failed for a reason about the broker, or had no report in time. The rows
    /// acknowledged before were deleted; the others stay pending with no attempt counted.
    #[error("broker unavailable ({published} rows published in this step): {reason}")]
    BrokerUnavailable { published: u64, reason: String },
}

/// What one step did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Lanes locked for the step.
    pub lanes: usize,
    /// Rows claimed.
    pub claimed: usize,
    /// Rows acknowledged and deleted.
    pub published: u64,
    /// Attempts counted against refused messages.
    pub attempts: u64,
    /// Rows that became dead.
    pub dead: u64,
    /// Rows parked behind them.
    pub parked: u64,
}

/// A published row whose delivery report had not arrived when its batch ended.
struct Unresolved {
    id: i64,
    topic: String,
    key: String,
    future: DeliveryFuture,
}

/// Keys this relay does not claim for now, so none of their rows overtakes an earlier one.
#[derive(Default)]
struct Held {
    /// Deliveries still awaited; their keys are held until each report arrives.
    unresolved: Vec<Unresolved>,
    /// Key → (topic, partition) of keys whose partition was unavailable when last claimed.
    waiting: HashMap<String, (String, i32)>,
}

struct Inner {
    settings: Settings,
    pool: PgPool,
    producer: Mutex<FutureProducer>,
    retry: RetryPolicy,
    metrics: Metrics,
    /// The readiness probes, also the gate before publishing resumes after an outage.
    broker: Check,
    database: Check,
    partitions: Arc<PartitionHealth>,
    held: Mutex<Held>,
}

/// A built, bound, not yet running relay.
pub struct Relay {
    inner: Arc<Inner>,
    port: u16,
    server: Server,
}

impl Relay {
    /// Connects to the database (applying migrations unless told not to), creates the producer
    /// and binds the HTTP port.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        settings.validate()?;
        let pool = db::connect(
            &settings.database_url,
            &settings.pool,
            "outbox-relay",
            &db::ORDERS_MIGRATOR,
        )
        .await?;
        Self::build_with_pool(settings, pool)
    }

    /// Creates the producer and binds the HTTP port over an existing pool.
    pub fn build_with_pool(settings: Settings, pool: PgPool) -> anyhow::Result<Self> {
        settings.validate()?;
        let producer: FutureProducer = publish::producer_config(&settings)?
            .create()
            .context("cannot create the Kafka producer")?;
        let listener = TcpListener::bind(&settings.http_addr)
            .with_context(|| format!("cannot listen on {}", settings.http_addr))?;
        let port = listener.local_addr()?.port();
        let registry = prometheus::Registry::new();
        let metrics = Metrics::register(&registry)?;
        let database = Check::postgres(pool.clone());
        let broker = Check::kafka(&settings.kafka)?;
        let ops = Ops::new(registry, vec![database.clone(), broker.clone()]);
        let status_pool = actix_web::web::Data::new(pool.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(status_pool.clone())
                .route("/status", actix_web::web::get().to(status_route))
                .configure(|cfg| ops.configure(cfg))
                .default_service(actix_web::web::to(ops::not_found))
        })
        .disable_signals()
        .workers(1)
        .shutdown_timeout(5)
        .listen(listener)?
        .run();
        tracing::info!(
            addr = %settings.http_addr,
            port,
            brokers = %settings.kafka.kafka_brokers,
            batch_size = settings.batch_size,
            "outbox-relay listening"
        );
        let retry = RetryPolicy::from_settings(&settings);
        Ok(Self {
            inner: Arc::new(Inner {
                settings,
                pool,
                producer: Mutex::new(producer),
                retry,
                metrics,
                broker,
                database,
                partitions: Arc::new(PartitionHealth::default()),
                held: Mutex::new(Held::default()),
            }),
            port,
            server,
        })
    }

    /// The bound HTTP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// One step: claim due rows of free lanes, publish them pipelined, delete the acknowledged
    /// ones and count attempts for refused ones, all in one transaction.
    pub async fn publish_batch(&self) -> Result<BatchOutcome, RelayError> {
        self.inner.publish_batch().await
    }

    /// Publishes until `shutdown` is cancelled, then finishes the batch in hand and stops.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let stop_helpers = CancellationToken::new();
        let wakeup = Arc::new(Notify::new());
        let listener = wakeup::spawn_listener(
            self.inner.pool.clone(),
            wakeup.clone(),
            stop_helpers.clone(),
        );
        let stats = spawn_stats(self.inner.clone(), stop_helpers.clone());
        let watch = spawn_partition_watch(self.inner.clone(), stop_helpers.clone());
        let handle = self.server.handle();
        let server = tokio::spawn(self.server);

        // Several steps in flight on disjoint lane sets (each holds its lanes' locks), so the
        // database and the broker work at the same time instead of taking turns.
        let steps = (0..self.inner.settings.steps_in_flight.max(1))
            .map(|_| self.inner.run_loop(&shutdown, &wakeup));
        futures::future::join_all(steps).await;

        stop_helpers.cancel();
        let producer = self.inner.producer();
        let flushed = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(5)))
            .await
            .context("flush task")?;
        if let Err(error) = flushed {
            tracing::warn!(%error, "messages still in flight at shutdown; their rows stay pending");
        }
        handle.stop(true).await;
        let _ = server.await;
        let _ = listener.await;
        let _ = stats.await;
        let _ = watch.await;
        tracing::info!("outbox-relay stopped");
        Ok(())
    }
}

impl Inner {
    fn producer(&self) -> FutureProducer {
        self.producer.lock().expect("producer lock").clone()
    }

    #[tracing::instrument(
        name = "publish_batch",
        skip_all,
        fields(claimed = tracing::field::Empty, published = tracing::field::Empty)
    )]
    async fn publish_batch(&self) -> Result<BatchOutcome, RelayError> {
        let settings = &self.settings;
        let producer = self.producer();
        let mut tx = self.pool.begin().await?;
        // Both settings last for this transaction only, and cost one round trip:
        // - synchronous_commit off: a commit lost in a server crash only loses deletes of
        //   published rows, which are then published again; at-least-once already allows that,
        //   and the consumer deduplicates.
        // - idle_in_transaction_session_timeout: if this process stalls or its host vanishes
        //   mid-batch, the server ends the session instead of keeping its lane locks (and the
        //   vacuum horizon) until TCP gives up.
        let idle_limit = settings.delivery_timeout() + Duration::from_secs(30);
        sqlx::query!(
            "select set_config('synchronous_commit', 'off', true) as synchronous_commit,
                    set_config('idle_in_transaction_session_timeout', $1, true) as idle_timeout",
            format!("{}ms", idle_limit.as_millis())
        )
        .fetch_one(&mut *tx)
        .await?;
        let lanes =
            claim::lock_lanes(&mut tx, i64::from(settings.max_lanes_per_batch.max(1))).await?;
        tracing::debug!(?lanes, "lanes locked");
        // After the lanes are locked: a step that held a key commits (and frees its lane) only
        // after recording it, so a lock taken now sees every key held for it.
        let (resolved, held_keys) = self.resolve_held();
        // Deleted before the claim, so this step cannot claim them again.
        let resolved_published = claim::delete_published(&mut tx, &resolved).await?;
        if lanes.is_empty() && resolved.is_empty() {
            tx.commit().await?;
            return Ok(BatchOutcome::default());
        }
        let rows = if lanes.is_empty() {
            Vec::new()
        } else {
            claim::claim_rows(
                &mut tx,
                &lanes,
                &held_keys,
                i64::from(settings.batch_size.max(1)),
            )
            .await?
        };
        let span = tracing::Span::current();
        span.record("claimed", rows.len());
        if rows.is_empty() {
            let published = resolved_published;
            tx.commit().await?;
            self.metrics.published.inc_by(published);
            return Ok(BatchOutcome {
                lanes: lanes.len(),
                published,
                ..BatchOutcome::default()
            });
        }
        self.metrics.batch_size.observe(rows.len() as f64);

        let unknown = self
            .partitions
            .unknown(rows.iter().map(|r| r.topic.as_str()));
        if !unknown.is_empty() {
            self.refresh_partitions(unknown).await;
        }
        let waiting = self.hold_unavailable(&rows);
        let deadline = tokio::time::Instant::now() + settings.delivery_timeout();
        let sent = publish::publish(
            &producer,
            &rows,
            |row| !waiting.contains(row.partition_key.as_str()),
            deadline,
        )
        .await;
        let settlement = publish::settle(&rows, &sent.deliveries);
        self.note_partitions(&rows, &sent.deliveries, &settlement.troubled);
        self.hold_unresolved(&rows, sent.unresolved);
        if settings.test_hang_after_ack && !settlement.published.is_empty() {
            tracing::warn!(
                acked = settlement.published.len(),
                "test hook: delivery acknowledged, hanging before the delete"
            );
            std::future::pending::<()>().await;
        }

        let published =
            claim::delete_published(&mut tx, &settlement.published).await? + resolved_published;
        let recorded = retry::record_failures(&mut tx, &self.retry, &settlement.failed).await?;
        tx.commit().await?;
        span.record("published", published);

        self.metrics.published.inc_by(published);
        for latency in &settlement.latencies {
            self.metrics.commit_to_ack.observe(*latency);
        }
        for failure in &settlement.failures {
            let kind = match failure.kind {
                FailureKind::Permanent => "permanent",
                FailureKind::Transient => "transient",
            };
            self.metrics
                .publish_failures
                .with_label_values(&[kind, &failure.reason])
                .inc();
        }
        self.metrics.retries.inc_by(recorded.attempts);
        self.metrics.dead_lettered.inc_by(recorded.dead);
        if recorded.attempts > 0 {
            tracing::warn!(
                attempts = recorded.attempts,
                dead = recorded.dead,
                parked = recorded.parked,
                error = %settlement.failed[0].2,
                "the broker refused messages; attempts counted"
            );
        }
        if let Some(reason) = settlement.transient {
            // Nothing acknowledged at all: the broker, not a partition, is in trouble.
            if !settlement.any_acked {
                return Err(RelayError::BrokerUnavailable { published, reason });
            }
            tracing::warn!(
                rows = settlement.troubled.len(),
                %reason,
                "some partitions did not take their messages; their keys wait, the others flow"
            );
        }
        Ok(BatchOutcome {
            lanes: lanes.len(),
            claimed: rows.len(),
            published,
            attempts: recorded.attempts,
            dead: recorded.dead,
            parked: recorded.parked,
        })
    }

    /// Collects the delivery reports that arrived since the last step: the ids acknowledged (to
    /// delete now), and the keys still held (unresolved deliveries, unavailable partitions).
    ///
    /// The per-key rule of [`publish::settle`] holds here too: an acknowledged row is deleted
    /// only when every earlier unresolved row of its key was acknowledged; otherwise it stays
    /// pending and is published again after them.
    fn resolve_held(&self) -> (Vec<i64>, Vec<String>) {
        let mut held = self.held.lock().expect("held lock");
        let mut acked = Vec::new();
        let mut still = Vec::with_capacity(held.unresolved.len());
        let mut broken: std::collections::HashSet<String> = std::collections::HashSet::new();
        for mut entry in std::mem::take(&mut held.unresolved) {
            let earlier_all_acked = !broken.contains(&entry.key);
            match (&mut entry.future).now_or_never() {
                None => {
                    broken.insert(entry.key.clone());
                    still.push(entry);
                }
                Some(report) => match publish::delivery_of(report) {
                    Delivery::Acked(_) if earlier_all_acked => acked.push(entry.id),
                    Delivery::Acked(_) => {
                        tracing::debug!(
                            id = entry.id,
                            "acknowledged behind an unacknowledged row of its key; kept"
                        );
                    }
                    // Still pending in the table, and the key is free again: claimed and sent
                    // again, in order, by the next step that finds its partition available.
                    other => {
                        broken.insert(entry.key.clone());
                        tracing::debug!(id = entry.id, ?other, "late delivery failed");
                        if let Some(p) = self.partitions.partition(&entry.topic, &entry.key) {
                            self.partitions.suspect(&entry.topic, p);
                        }
                    }
                },
            }
        }
        held.unresolved = still;
        let partitions = &self.partitions;
        held.waiting
            .retain(|_, (topic, partition)| !partitions.is_available(topic, *partition));
        let mut keys: Vec<String> = held.waiting.keys().cloned().collect();
        keys.extend(held.unresolved.iter().map(|u| u.key.clone()));
        keys.sort();
        keys.dedup();
        self.metrics.held_keys.set(keys.len() as i64);
        (acked, keys)
    }

    /// The keys of `rows` whose partition is unavailable now; they are held until it is back.
    fn hold_unavailable<'r>(
        &self,
        rows: &'r [claim::ClaimedRow],
    ) -> std::collections::HashSet<&'r str> {
        let mut waiting = std::collections::HashSet::new();
        let mut held = self.held.lock().expect("held lock");
        for row in rows {
            let Some(partition) = self.partitions.partition(&row.topic, &row.partition_key) else {
                continue;
            };
            if !self.partitions.is_available(&row.topic, partition) {
                waiting.insert(row.partition_key.as_str());
                held.waiting
                    .insert(row.partition_key.clone(), (row.topic.clone(), partition));
            }
        }
        waiting
    }

    /// Pauses the partitions of rows that failed for a reason about the broker or had no report
    /// in time; clears the pause of partitions that acknowledged.
    fn note_partitions(
        &self,
        rows: &[claim::ClaimedRow],
        deliveries: &[Delivery],
        troubled: &[usize],
    ) {
        for (row, delivery) in rows.iter().zip(deliveries) {
            if let Delivery::Acked(_) = delivery {
                if let Some(p) = self.partitions.partition(&row.topic, &row.partition_key) {
                    self.partitions.delivered(&row.topic, p);
                }
            }
        }
        for index in troubled {
            let row = &rows[*index];
            if let Some(p) = self.partitions.partition(&row.topic, &row.partition_key) {
                self.partitions.suspect(&row.topic, p);
            }
        }
    }

    fn hold_unresolved(
        &self,
        rows: &[claim::ClaimedRow],
        unresolved: Vec<(usize, DeliveryFuture)>,
    ) {
        if unresolved.is_empty() {
            return;
        }
        let mut held = self.held.lock().expect("held lock");
        for (index, future) in unresolved {
            let row = &rows[index];
            held.unresolved.push(Unresolved {
                id: row.id,
                topic: row.topic.clone(),
                key: row.partition_key.clone(),
                future,
            });
        }
    }

    /// Reads the partition metadata of `topics` off the async threads.
    async fn refresh_partitions(&self, topics: Vec<String>) {
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

    async fn run_loop(&self, shutdown: &CancellationToken, wakeup: &Notify) {
        let mut idle = IdlePacer::new(self.settings.idle_poll_max());
        let mut outage = outage_backoff(&self.settings);
        while !shutdown.is_cancelled() {
            match self.publish_batch().await {
                Ok(outcome) => {
                    outage.reset();
                    if outcome.claimed > 0 {
                        if outcome.claimed >= self.settings.batch_size as usize {
                            // A full batch: there is more; wake another step to take it.
                            wakeup.notify_one();
                        }
                        idle.reset();
                        self.metrics.idle_wait.set(0.0);
                        continue;
                    }
                    let wait = idle.next_wait();
                    self.metrics.idle_wait.set(wait.as_secs_f64());
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = wakeup.notified() => idle.reset(),
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "publishing paused; retrying when the dependency answers");
                    self.metrics.paused.inc();
                    self.wait_until_publishable(&mut outage, shutdown).await;
                    self.metrics.paused.dec();
                    idle.reset();
                }
            }
        }
    }

    /// Waits, with backoff and without giving up, until the broker answers and the database
    /// answers (a late delivery cannot be overtaken: its key stays held until its report).
    async fn wait_until_publishable(
        &self,
        outage: &mut ExponentialBackoff,
        shutdown: &CancellationToken,
    ) {
        loop {
            let pause = outage
                .next_backoff()
                .unwrap_or(Duration::from_millis(self.settings.outage_backoff_max_ms));
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
            if let Some((code, reason)) = self.producer().client().fatal_error() {
                tracing::error!(?code, %reason, "the producer failed fatally; creating a new one");
                let created = publish::producer_config(&self.settings)
                    .and_then(|config| Ok(config.create::<FutureProducer>()?));
                match created {
                    Ok(producer) => *self.producer.lock().expect("producer lock") = producer,
                    Err(error) => {
                        tracing::error!(%error, "cannot create a new producer");
                        continue;
                    }
                }
            }
            // No wait for messages in flight: a message without its report holds its key (see
            // `resolve_held`), and other steps' messages are on lanes those steps hold.
            if let Err(error) = self.broker.run().await {
                tracing::debug!(%error, "broker not answering");
                continue;
            }
            if let Err(error) = self.database.run().await {
                tracing::debug!(%error, "database not answering");
                continue;
            }
            tracing::info!("broker and database answer; publishing resumes");
            return;
        }
    }
}

fn outage_backoff(settings: &Settings) -> ExponentialBackoff {
    outbox_core::retry::until_it_answers(Duration::from_millis(settings.outage_backoff_max_ms))
}

/// `GET /status`: what `outbox-relay status` prints.
async fn status_route(pool: actix_web::web::Data<PgPool>) -> actix_web::HttpResponse {
    match admin::status(pool.get_ref()).await {
        Ok(status) => actix_web::HttpResponse::Ok().json(status),
        Err(error) => {
            tracing::warn!(%error, "cannot read the outbox status");
            ops::error_response(
                actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                "the orders database is not reachable",
            )
        }
    }
}

/// Re-reads the partition metadata of every topic published to, every second, so a partition
/// that lost its leader is skipped and one that got it back is used again.
fn spawn_partition_watch(
    inner: Arc<Inner>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
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

/// Parks the rows that arrived behind a dead row of their key, in the lanes of dead keys that no
/// step holds now.
async fn park_held(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let lanes = claim::lock_lanes_with_blockers(&mut tx).await?;
    let parked = retry::park_held(&mut tx, &lanes).await?;
    tx.commit().await?;
    Ok(parked)
}

/// Every `STATS_INTERVAL_SECS`: parks rows held behind dead rows, then refreshes the gauges.
fn spawn_stats(inner: Arc<Inner>, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    let period = Duration::from_secs(inner.settings.stats_interval_secs.max(1));
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticker.tick() => {}
            }
            match park_held(&inner.pool).await {
                Ok(0) => {}
                Ok(parked) => tracing::info!(
                    parked,
                    "rows that arrived behind a dead row of their key parked"
                ),
                Err(error) => tracing::debug!(%error, "cannot park rows held behind dead rows"),
            }
            match admin::status(&inner.pool).await {
                Ok(status) => inner.metrics.set_status(&status),
                Err(error) => tracing::debug!(%error, "cannot refresh the outbox gauges"),
            }
        }
    })
}
