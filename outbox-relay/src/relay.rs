//! The relay process: one step ([`Relay::publish_batch`], in `step`), the loop around it
//! (`run_loop`: wake-up, the outage gate, shutdown), the keys it holds back between steps
//! (`held`), its view of the partitions (`partition_watch`), the periodic parking and gauges
//! (`stats`) and its HTTP surface (`http`), built and wired together here.
//!
//! Guarantee kept here: SIGTERM stops claiming; every step finishes the batch in hand (bounded
//! by `DELIVERY_TIMEOUT_SECS`) and the producer is flushed before the relay exits.

mod held;
mod http;
mod partition_watch;
mod run_loop;
mod stats;
mod step;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context;
use outbox_core::{
    db,
    ops::{Check, Ops, Served},
};
use rdkafka::producer::{FutureProducer, Producer};
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{
    metrics::Metrics, outbox::RetryPolicy, partitions::PartitionHealth, publish, wakeup, Settings,
};

pub use step::{BatchOutcome, RelayError};

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
    held: held::HeldKeys,
    busy_lanes: step::BusyLanes,
    backlogged_lanes: step::BackloggedLanes,
}

impl Inner {
    fn producer(&self) -> FutureProducer {
        self.producer.lock().expect("producer lock").clone()
    }
}

/// A built, bound, not yet running relay.
pub struct Relay {
    inner: Arc<Inner>,
    http: Served,
}

impl Relay {
    /// Connects to the database (applying migrations unless told not to), creates the producer
    /// and binds the HTTP port.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        settings.validate()?;
        let pool = db::connect(
            &settings.database.database_url,
            &settings.database.pool,
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
        let registry = prometheus::Registry::new();
        let metrics = Metrics::register(&registry)?;
        let database = Check::postgres(pool.clone());
        let broker = Check::kafka(&settings.kafka)?;
        let ops = Ops::new(registry, vec![database.clone(), broker.clone()]);
        let http = http::serve(&settings.http_addr, ops, pool.clone())?;
        tracing::info!(
            addr = %settings.http_addr,
            port = http.port,
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
                held: held::HeldKeys::default(),
                busy_lanes: step::BusyLanes::default(),
                backlogged_lanes: step::BackloggedLanes::default(),
            }),
            http,
        })
    }

    /// The bound HTTP port.
    pub fn port(&self) -> u16 {
        self.http.port
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
        let stats = stats::spawn(self.inner.clone(), stop_helpers.clone());
        let watch = partition_watch::spawn(self.inner.clone(), stop_helpers.clone());
        let inner = self.inner.clone();
        let publishing = async move {
            // Up to STEPS_IN_FLIGHT steps on disjoint lane sets (each holds its lanes' locks)
            // during a backlog, so the database and the broker work at the same time instead of
            // taking turns; one at a trickle (see `run_loop`).
            let backlog = Notify::new();
            let steps = (0..inner.settings.steps_in_flight.max(1))
                .map(|step| inner.run_loop(step == 0, &shutdown, &wakeup, &backlog));
            futures::future::join_all(steps).await;
            stop_helpers.cancel();
            let producer = inner.producer();
            tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(5))).await
        };
        let (flushed, served) = self.http.serve_while(publishing).await;
        if let Err(error) = flushed.context("flush task")? {
            tracing::warn!(%error, "messages still in flight at shutdown; their rows stay pending");
        }
        if let Err(error) = served {
            tracing::warn!(
                error = format!("{error:#}"),
                "the HTTP server did not stop cleanly"
            );
        }
        let _ = listener.await;
        let _ = stats.await;
        let _ = watch.await;
        tracing::info!("outbox-relay stopped");
        Ok(())
    }
}
