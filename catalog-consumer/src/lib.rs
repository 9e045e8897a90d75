//! catalog-consumer: applies `order.placed.v1` events to the catalog's stock, each event exactly
//! once however often it is delivered, in one database transaction per batch; dead-letters what
//! it cannot understand; and serves the catalog over HTTP. `catalog-consumer audit` ([`audit`])
//! reconciles the orders database with what was processed.

pub mod audit;
pub mod batch;
pub mod consume;
pub mod decode;
pub mod dlq;
pub mod gaps;
pub mod lanes;
mod metrics;
mod routes;
pub mod stock;

use std::{process::ExitCode, sync::Arc, time::Duration};

use actix_web::web;
use anyhow::Context;
use clap::Parser;
use outbox_core::{
    cli::run_service,
    db,
    ops::{self, Check, Ops, ServeSettings, Served},
    retention::{self, Pruner},
    settings::{KafkaSettings, PoolSettings, PruneSettings},
};
use tokio_util::sync::CancellationToken;

pub use audit::{AuditArgs, AuditReport};
pub use batch::{Applier, Batch, Report, Transient};
pub use dlq::DeadLetters;
pub use metrics::Metrics;
pub use routes::Product;

outbox_core::service_cli!(
    name = "catalog-consumer",
    about =
        "Applies order events to the catalog's stock exactly once; serves the catalog over HTTP."
);

/// What the binary does.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Run the consumer (the default).
    Run(Box<Settings>),
    /// Reconcile the orders database with the catalog's processed_events (read-only) and print
    /// one JSON object.
    ///
    /// Prints {"orders", "processed", "outcomes", "grace_secs", "unprocessed_within_grace",
    /// "window_secs", "unchecked_older_than_window", "missing_count", "missing",
    /// "unexpected_count", "unexpected"} on stdout. `missing` lists orders older than the grace
    /// period, and younger than PROCESSED_EVENTS_RETENTION minus one hour (older ones' rows may
    /// be pruned), that have no processed_events row; `unexpected` lists
    /// the event ids of processed_events rows whose order is not in the orders database. Both
    /// lists stop at --limit; their counts are complete.
    ///
    /// Exit status: 0 when nothing is missing or unexpected, 1 otherwise, 2 when the audit
    /// cannot run (a message on stderr, no JSON).
    ///
    /// Read-only: it never writes and never runs migrations, and its connections are read-only.
    /// Run it as a read-only role: it needs only SELECT on `orders` (orders database) and on
    /// `processed_events` (catalog database).
    Audit(AuditArgs),
    /// Exit 0 when the running consumer's GET /readyz answers 200, 1 otherwise (for container
    /// health checks).
    Healthcheck(outbox_core::ops::HealthcheckArgs),
}

/// The binary: parses the command line and runs the command it names.
pub async fn main() -> anyhow::Result<ExitCode> {
    match Cli::parse().into_command() {
        Command::Run(settings) => {
            run_service("catalog-consumer", |shutdown| async move {
                let consumer = Consumer::build(*settings).await?;
                consumer.run_until_stopped(shutdown).await
            })
            .await
        }
        // No log output: stdout carries only the report.
        Command::Audit(args) => Ok(audit::print_report(&args).await),
        Command::Healthcheck(args) => Ok(ops::healthcheck(&args, DEFAULT_HTTP_ADDR)),
    }
}

/// The default HTTP_ADDR of `run`.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8081";

/// catalog-consumer settings: flags, each with an environment variable behind it (also a
/// parser of its own, for tests).
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "catalog-consumer",
    long_about = None
)]
pub struct Settings {
    /// Address to serve HTTP on (port 0 picks a free port).
    #[arg(long, env = "HTTP_ADDR", default_value = DEFAULT_HTTP_ADDR)]
    pub http_addr: String,
    /// PostgreSQL URL of the catalog database.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres:postgres@127.0.0.1:5432/catalog"
    )]
    pub database_url: String,
    #[command(flatten)]
    pub pool: PoolSettings,
    #[command(flatten)]
    pub kafka: KafkaSettings,
    /// Kafka topic of the order events.
    #[arg(long, env = "ORDER_EVENTS_TOPIC", default_value = "order-events")]
    pub order_events_topic: String,
    /// Kafka consumer group; every replica uses the same one.
    #[arg(long, env = "CONSUMER_GROUP", default_value = "catalog-consumer")]
    pub consumer_group: String,
    /// Kafka topic where messages that cannot be understood are sent.
    #[arg(long, env = "DLQ_TOPIC", default_value = "order-events.dlq")]
    pub dlq_topic: String,
    /// Largest dead letter sent to the dead-letter topic, in bytes (librdkafka
    /// `message.max.bytes` of its producer; keep it at or below that topic's limit). A dead
    /// letter the topic refuses is kept in the catalog database's `dead_letters` table.
    #[arg(long, env = "DLQ_MESSAGE_MAX_BYTES", default_value_t = 1_000_000, value_parser = clap::value_parser!(u32).range(1_000..=1_000_000_000))]
    pub dlq_message_max_bytes: u32,
    /// Most messages applied in one database transaction.
    #[arg(long, env = "BATCH_SIZE", default_value_t = 2_000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_size: u32,
    /// How many batches are applied at once, each in its own database transaction, on disjoint
    /// sets of partitions (a partition is applied in order by one lane at a time). More lanes use
    /// more database connections and cores; 1 applies one batch at a time.
    #[arg(long, env = "APPLY_LANES", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub apply_lanes: u32,
    /// Longest extra wait, in milliseconds, for a batch to fill once its first message arrived.
    /// 0 (the default): a batch is what has arrived by then, so an idle consumer applies a
    /// message at once and a busy one applies large batches.
    #[arg(long, env = "BATCH_WAIT_MS", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub batch_wait_ms: u64,
    /// How often, in milliseconds, stored offsets are committed to the group (they are also
    /// committed on revoke and at shutdown). At least 1: 0 would turn committing off.
    #[arg(long, env = "COMMIT_INTERVAL_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub commit_interval_ms: u64,
    /// Kafka group session timeout in milliseconds: how long a member that died without leaving
    /// keeps its partitions.
    #[arg(long, env = "KAFKA_SESSION_TIMEOUT_MS", default_value_t = 45_000, value_parser = clap::value_parser!(u64).range(1_000..=3_600_000))]
    pub kafka_session_timeout_ms: u64,
    /// Longest wait, in milliseconds, between retries of a batch while the database or the
    /// dead-letter topic is unavailable (retries start at 100 ms and never give up).
    #[arg(long, env = "RETRY_MAX_BACKOFF_MS", default_value_t = 5000)]
    pub retry_max_backoff_ms: u64,
    /// Static group membership (Kafka `group.instance.id`): a stable name per replica (e.g. the
    /// pod name of a StatefulSet). A consumer restarted under the same id takes its partitions
    /// back at once, without a rebalance; one that never comes back loses them after the session
    /// timeout. Unset: dynamic membership. Two live replicas must never share an id.
    #[arg(long, env = "CONSUMER_INSTANCE_ID")]
    pub consumer_instance_id: Option<String>,
    /// Seconds one batch may be retried (database or dead-letter topic unavailable) before
    /// `/readyz` answers 503 naming it; `catalog_consumer_batch_retrying_seconds` shows the
    /// same all along.
    #[arg(long, env = "STALLED_AFTER_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub stalled_after_secs: u64,
    /// librdkafka `fetch.wait.max.ms`: how long the broker may hold a fetch that has no data.
    /// Brokers that do not answer a fetch early when data arrives (the local nisshi) add up to
    /// this much latency to every event; Kafka answers as soon as data arrives, so there it
    /// only sets how often an idle consumer asks (100 fetches/s per broker at 10 ms).
    #[arg(long, env = "FETCH_WAIT_MAX_MS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=300_000))]
    pub fetch_wait_max_ms: u32,
    /// librdkafka `fetch.min.bytes`: how much data a fetch waits for (up to FETCH_WAIT_MAX_MS)
    /// before the broker answers. 1 answers as soon as anything is there (lowest latency);
    /// larger values trade latency for fewer, fuller fetches when events trickle in.
    #[arg(long, env = "FETCH_MIN_BYTES", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000_000))]
    pub fetch_min_bytes: u32,
    /// How long a processed event's id is kept (and so how long a redelivery of it is
    /// recognised): `processed_events` rows older than this are deleted. Written 7d, 36h, 90m.
    /// An event whose `ce_time` is older than this minus DEDUP_WINDOW_MARGIN is never applied:
    /// it goes to the dead-letter topic with reason `older_than_dedup_window`, since its id may
    /// already be pruned and applying it could decrement the stock a second time.
    #[arg(long, env = "PROCESSED_EVENTS_RETENTION", default_value = "7d", value_parser = retention::parse_duration)]
    pub processed_events_retention: Duration,
    /// What the dedup window keeps short of the retention, for clock differences between
    /// hosts and batches retried during an outage: events older than PROCESSED_EVENTS_RETENTION
    /// minus this are dead-lettered. Must be shorter than the retention.
    #[arg(long, env = "DEDUP_WINDOW_MARGIN", default_value = "1h", value_parser = retention::parse_duration)]
    pub dedup_window_margin: Duration,
    #[command(flatten)]
    pub prune: PruneSettings,
    /// Test only: after the first batch's database commit, never store its offsets, so a test
    /// can kill the process between the two. Compiled in only with the `test-hooks` feature.
    #[cfg(feature = "test-hooks")]
    #[arg(long, hide = true)]
    pub test_hold_offsets: bool,
}

impl Settings {
    /// Refuses settings that cannot work, naming the variable.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.kafka.validate()?;
        if self.apply_lanes > self.pool.db_max_connections {
            anyhow::bail!(
                "APPLY_LANES ({}) must not exceed DB_MAX_CONNECTIONS ({}): each lane holds a \
                 database connection while it applies a batch",
                self.apply_lanes,
                self.pool.db_max_connections
            );
        }
        if self.dedup_window_margin >= self.processed_events_retention {
            anyhow::bail!(
                "DEDUP_WINDOW_MARGIN ({}) must be shorter than PROCESSED_EVENTS_RETENTION ({}): \
                 every event would be older than the dedup window",
                retention::format_duration(self.dedup_window_margin),
                retention::format_duration(self.processed_events_retention)
            );
        }
        Ok(())
    }

    /// Events whose `ce_time` is older than this are never applied (see
    /// PROCESSED_EVENTS_RETENTION).
    pub fn dedup_window(&self) -> Duration {
        self.processed_events_retention
            .saturating_sub(self.dedup_window_margin)
    }
}

/// A built consumer: connected to its database, subscribed to the topic, HTTP port bound.
pub struct Consumer {
    http: Served,
    consume: consume::ConsumeLoop,
    pruner: Pruner,
}

/// Deletes up to `$2` processed events applied more than `$1` seconds ago, oldest first.
const PRUNE_PROCESSED_EVENTS: &str =
    outbox_core::prune_statement!("processed_events", key = "event_id", age = "processed_at");

impl Consumer {
    /// Connects to the database (applying migrations unless told not to), joins the consumer
    /// group and binds the HTTP port.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        settings.validate()?;
        let pool = db::connect(
            &settings.database_url,
            &settings.pool,
            "catalog-consumer",
            &db::CATALOG_MIGRATOR,
        )
        .await?;
        let registry = prometheus::Registry::new();
        let metrics = Metrics::register(&registry)?;
        let dead_letters = DeadLetters::new(
            &settings.kafka,
            &settings.dlq_topic,
            settings.dlq_message_max_bytes,
        )
        .context("cannot create the dead-letter producer")?;
        let consumer =
            consume::subscribe(&settings, &metrics).context("cannot create the Kafka consumer")?;
        let stall = consume::Stall::default();
        let ops = Ops::new(
            registry,
            vec![
                Check::postgres(pool.clone()),
                Check::kafka(&settings.kafka)?,
                stall.check(Duration::from_secs(settings.stalled_after_secs)),
            ],
        );

        let serve = ServeSettings {
            addr: settings.http_addr.clone(),
            workers: None,
            shutdown_timeout_secs: 10,
        };
        let pool_data = web::Data::new(pool.clone());
        let http = ops::serve(&serve, ops, move |cfg| {
            cfg.app_data(pool_data.clone());
            routes::configure(cfg);
        })?;
        tracing::info!(
            addr = %settings.http_addr,
            port = http.port,
            topic = %settings.order_events_topic,
            group = %settings.consumer_group,
            dlq = %settings.dlq_topic,
            "catalog-consumer listening"
        );
        let pruner = Pruner::new(
            pool.clone(),
            "processed_events",
            PRUNE_PROCESSED_EVENTS,
            settings.processed_events_retention,
            &settings.prune,
            metrics.processed_events_pruned.clone(),
        );
        let consume = consume::ConsumeLoop {
            consumer: Arc::new(consumer),
            applier: Applier::new(pool.clone(), dead_letters, metrics.clone()),
            dedup_window: settings.dedup_window(),
            metrics,
            batch_size: settings.batch_size as usize,
            batch_wait: Duration::from_millis(settings.batch_wait_ms),
            lanes: settings.apply_lanes as usize,
            retry_max_backoff: Duration::from_millis(settings.retry_max_backoff_ms.max(100)),
            #[cfg(feature = "test-hooks")]
            hold_offsets_after_commit: settings.test_hold_offsets,
            stall,
        };
        Ok(Self {
            http,
            consume,
            pruner,
        })
    }

    /// The bound HTTP port.
    pub fn port(&self) -> u16 {
        self.http.port
    }

    /// Consumes and serves until `shutdown` is cancelled; then finishes the batch in hand,
    /// commits the stored offsets, leaves the group and stops serving.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let pruning = self.pruner.spawn();
        let (consumed, served) = self.http.serve_while(self.consume.run(shutdown)).await;
        pruning.stop().await;
        tracing::info!("catalog-consumer stopped");
        consumed?;
        served
    }
}
