//! The relay: one step ([`Relay::publish_batch`]: claim, publish, delete or count attempts, in
//! one short transaction) and the loop around it, which only does wake-up, backoff and shutdown.
//!
//! Guarantees kept here:
//! - No transaction stays open across a long broker wait: the claim transaction lives for one
//!   batch, bounded by `DELIVERY_TIMEOUT_SECS`; after a failure about the broker the loop claims
//!   nothing until the producer has no message in flight and the broker answers a metadata
//!   request. A broker or database outage counts no attempt and is retried without giving up.
//! - SIGTERM stops claiming; the batch in hand is finished (bounded) before the relay exits.

use std::{
    net::TcpListener,
    sync::{Arc, Mutex},
    time::Duration,
};

use actix_web::{dev::Server, App, HttpServer};
use anyhow::Context;
use backoff::{backoff::Backoff, ExponentialBackoff, ExponentialBackoffBuilder};
use outbox_core::{
    db,
    ops::{self, Check, Ops},
};
use rdkafka::producer::{FutureProducer, Producer};
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{
    admin, claim,
    metrics::Metrics,
    publish::{self, FailureKind},
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

struct Inner {
    settings: Settings,
    pool: PgPool,
    producer: Mutex<FutureProducer>,
    retry: RetryPolicy,
    metrics: Metrics,
    /// The readiness probes, also the gate before publishing resumes after an outage.
    broker: Check,
    database: Check,
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
        let producer: FutureProducer = publish::producer_config(&settings)
            .create()
            .context("cannot create the Kafka producer")?;
        let listener = TcpListener::bind(&settings.http_addr)
            .with_context(|| format!("cannot listen on {}", settings.http_addr))?;
        let port = listener.local_addr()?.port();
        let registry = prometheus::Registry::new();
        let metrics = Metrics::register(&registry)?;
        let database = Check::postgres(pool.clone());
        let broker = Check::kafka(&settings.kafka.client_config())?;
        let ops = Ops::new(registry, vec![database.clone(), broker.clone()]);
        let server = HttpServer::new(move || {
            App::new()
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
        let handle = self.server.handle();
        let server = tokio::spawn(self.server);

        self.inner.run_loop(&shutdown, &wakeup).await;

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
        if lanes.is_empty() {
            tx.commit().await?;
            return Ok(BatchOutcome::default());
        }
        let rows =
            claim::claim_rows(&mut tx, &lanes, i64::from(settings.batch_size.max(1))).await?;
        let span = tracing::Span::current();
        span.record("claimed", rows.len());
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(BatchOutcome {
                lanes: lanes.len(),
                ..BatchOutcome::default()
            });
        }
        self.metrics.batch_size.observe(rows.len() as f64);

        let deadline = tokio::time::Instant::now() + settings.delivery_timeout();
        let deliveries = publish::publish(&producer, &rows, deadline).await;
        let settlement = publish::settle(&rows, &deliveries);
        if settings.test_hang_after_ack && !settlement.published.is_empty() {
            tracing::warn!(
                acked = settlement.published.len(),
                "test hook: delivery acknowledged, hanging before the delete"
            );
            std::future::pending::<()>().await;
        }

        let published = claim::delete_published(&mut tx, &settlement.published).await?;
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
            return Err(RelayError::BrokerUnavailable { published, reason });
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

    async fn run_loop(&self, shutdown: &CancellationToken, wakeup: &Notify) {
        let mut idle = IdlePacer::new(self.settings.idle_poll_max());
        let mut outage = outage_backoff(&self.settings);
        while !shutdown.is_cancelled() {
            match self.publish_batch().await {
                Ok(outcome) => {
                    outage.reset();
                    if outcome.claimed > 0 {
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
                    self.metrics.paused.set(1);
                    self.wait_until_publishable(&mut outage, shutdown).await;
                    self.metrics.paused.set(0);
                    idle.reset();
                }
            }
        }
    }

    /// Waits, with backoff and without giving up, until the producer has nothing in flight (so a
    /// re-claim cannot overtake a late delivery), the broker answers and the database answers.
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
                match publish::producer_config(&self.settings).create::<FutureProducer>() {
                    Ok(producer) => *self.producer.lock().expect("producer lock") = producer,
                    Err(error) => {
                        tracing::error!(%error, "cannot create a new producer");
                        continue;
                    }
                }
            }
            let in_flight = self.producer().in_flight_count();
            if in_flight > 0 {
                tracing::debug!(in_flight, "waiting for in-flight messages");
                continue;
            }
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
    // Never gives up: the backoff crate's default 15-minute limit is lifted.
    ExponentialBackoffBuilder::new()
        .with_initial_interval(Duration::from_millis(100))
        .with_max_interval(Duration::from_millis(
            settings.outage_backoff_max_ms.max(100),
        ))
        .with_max_elapsed_time(None)
        .build()
}

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
            match admin::status(&inner.pool).await {
                Ok(status) => inner.metrics.set_status(&status),
                Err(error) => tracing::debug!(%error, "cannot refresh the outbox gauges"),
            }
        }
    })
}
