//! catalog-consumer: applies `order.placed.v1` events to the catalog's stock, each event exactly
//! once however often it is delivered, in one database transaction per batch; dead-letters what
//! it cannot understand; and serves the catalog over HTTP.

pub mod batch;
pub mod consume;
pub mod decode;
pub mod dlq;
mod metrics;
mod routes;
pub mod stock;

use std::{net::TcpListener, sync::Arc, time::Duration};

use actix_web::{dev::Server, web, App, HttpServer};
use anyhow::Context;
use outbox_core::{
    db,
    ops::{self, Check, Ops},
    settings::{KafkaSettings, PoolSettings},
};
use tokio_util::sync::CancellationToken;

pub use batch::{Applier, Batch, Report, Transient};
pub use dlq::DeadLetters;
pub use metrics::Metrics;
pub use routes::Product;

/// catalog-consumer settings: flags, each with an environment variable behind it.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "catalog-consumer",
    version,
    about = "Applies order events to the catalog's stock exactly once; serves the catalog over HTTP.",
    long_about = None
)]
pub struct Settings {
    /// Address to serve HTTP on (port 0 picks a free port).
    #[arg(long, env = "HTTP_ADDR", default_value = "127.0.0.1:8081")]
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
    /// Most messages applied in one database transaction.
    #[arg(long, env = "BATCH_SIZE", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_size: u32,
    /// Longest wait, in milliseconds, for a batch to fill once its first message arrived.
    #[arg(long, env = "BATCH_WAIT_MS", default_value_t = 50)]
    pub batch_wait_ms: u64,
    /// How often, in milliseconds, stored offsets are committed to the group (they are also
    /// committed on revoke and at shutdown).
    #[arg(long, env = "COMMIT_INTERVAL_MS", default_value_t = 1000)]
    pub commit_interval_ms: u64,
    /// Kafka group session timeout in milliseconds: how long a member that died without leaving
    /// keeps its partitions.
    #[arg(long, env = "KAFKA_SESSION_TIMEOUT_MS", default_value_t = 45_000)]
    pub kafka_session_timeout_ms: u64,
    /// Longest wait, in milliseconds, between retries of a batch while the database or the
    /// dead-letter topic is unavailable (retries start at 100 ms and never give up).
    #[arg(long, env = "RETRY_MAX_BACKOFF_MS", default_value_t = 5000)]
    pub retry_max_backoff_ms: u64,
    /// Test only: after the first batch's database commit, never store its offsets, so a test
    /// can kill the process between the two.
    #[arg(long, env = "CATALOG_CONSUMER_TEST_HOLD_OFFSETS", hide = true)]
    pub test_hold_offsets: bool,
}

/// A built consumer: connected to its database, subscribed to the topic, HTTP port bound.
pub struct Consumer {
    port: u16,
    server: Server,
    consume: consume::ConsumeLoop,
}

impl Consumer {
    /// Connects to the database (applying migrations unless told not to), joins the consumer
    /// group and binds the HTTP port.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let pool = db::connect(
            &settings.database_url,
            &settings.pool,
            "catalog-consumer",
            &db::CATALOG_MIGRATOR,
        )
        .await?;
        let registry = prometheus::Registry::new();
        let metrics = Metrics::register(&registry)?;
        let dead_letters = DeadLetters::new(&settings.kafka, &settings.dlq_topic)
            .context("cannot create the dead-letter producer")?;
        let consumer = consume::subscribe(&settings).context("cannot create the Kafka consumer")?;
        let ops = Ops::new(
            registry,
            vec![
                Check::postgres(pool.clone()),
                Check::kafka(&settings.kafka.client_config())?,
            ],
        );

        let listener = TcpListener::bind(&settings.http_addr)
            .with_context(|| format!("cannot listen on {}", settings.http_addr))?;
        let port = listener.local_addr()?.port();
        let pool_data = web::Data::new(pool.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(pool_data.clone())
                .configure(routes::configure)
                .configure(|cfg| ops.configure(cfg))
                .default_service(web::to(ops::not_found))
        })
        .disable_signals()
        .shutdown_timeout(10)
        .listen(listener)?
        .run();
        tracing::info!(
            addr = %settings.http_addr,
            port,
            topic = %settings.order_events_topic,
            group = %settings.consumer_group,
            dlq = %settings.dlq_topic,
            "catalog-consumer listening"
        );
        let consume = consume::ConsumeLoop {
            consumer: Arc::new(consumer),
            applier: Applier::new(pool, dead_letters, metrics.clone()),
            metrics,
            batch_size: settings.batch_size as usize,
            batch_wait: Duration::from_millis(settings.batch_wait_ms),
            retry_max_backoff: Duration::from_millis(settings.retry_max_backoff_ms.max(100)),
            hold_offsets_after_commit: settings.test_hold_offsets,
        };
        Ok(Self {
            port,
            server,
            consume,
        })
    }

    /// The bound HTTP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Consumes and serves until `shutdown` is cancelled; then finishes the batch in hand,
    /// commits the stored offsets, leaves the group and stops serving.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let handle = self.server.handle();
        let server = tokio::spawn(self.server);
        let consumed = self.consume.run(shutdown).await;
        handle.stop(true).await;
        let served = server.await;
        tracing::info!("catalog-consumer stopped");
        consumed?;
        served?.context("HTTP server failed")
    }
}
