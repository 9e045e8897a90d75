//! order-api: `POST /orders` writes the order and its outbox event in one PostgreSQL
//! transaction, so an order is never saved without its event nor an event sent without its order.

mod backpressure;
mod error;
mod metrics;
mod order_store;
mod routes;
mod wakeup;

use std::{process::ExitCode, time::Duration};

use actix_web::web;
use clap::Parser;
use outbox_core::{
    cli::run_service,
    db,
    ops::{self, Check, Ops, ServeSettings, Served},
    retention::{self, Pruner},
    settings::{OrdersDatabase, PruneSettings},
};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub use error::ApiError;
pub use metrics::Metrics;

/// The binary: parses the command line, then serves until SIGTERM or Ctrl-C, or runs the
/// health check.
pub async fn main() -> anyhow::Result<ExitCode> {
    match Cli::parse().into_command() {
        Command::Run(settings) => {
            run_service("order-api", |shutdown| async move {
                let app = Application::build(*settings).await?;
                app.run_until_stopped(shutdown).await
            })
            .await
        }
        Command::Healthcheck(args) => Ok(ops::healthcheck(&args, DEFAULT_HTTP_ADDR)),
    }
}

outbox_core::service_cli!(
    name = "order-api",
    about = "Takes orders over HTTP; writes each order and its outbox event in one PostgreSQL transaction."
);

/// What the binary does.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Serve the API (the default).
    Run(Box<Settings>),
    /// Exit 0 when the running order-api's GET /readyz answers 200, 1 otherwise (for container
    /// health checks).
    Healthcheck(outbox_core::ops::HealthcheckArgs),
}

/// The default HTTP_ADDR of `run`.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8080";

/// order-api settings: flags, each with an environment variable behind it (also a parser of
/// its own, for tests).
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "order-api")]
pub struct Settings {
    /// Address to serve HTTP on (port 0 picks a free port).
    #[arg(long, env = "HTTP_ADDR", default_value = DEFAULT_HTTP_ADDR)]
    pub http_addr: String,
    #[command(flatten)]
    pub database: OrdersDatabase,
    /// Kafka topic written into each outbox row (the relay publishes there).
    #[arg(long, env = "ORDER_EVENTS_TOPIC", default_value = "order-events", value_parser = kafka_topic)]
    pub order_events_topic: String,
    /// Largest accepted request body, in bytes; larger bodies get 413.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 16 * 1024)]
    pub max_body_bytes: usize,
    /// HTTP worker threads (default: one per core).
    #[arg(long, env = "HTTP_WORKERS")]
    pub http_workers: Option<usize>,
    /// How long an Idempotency-Key is remembered (7d, 24h, 90m): keys older than this are
    /// deleted, and a retried POST with such a key places a new order. Clients must not retry
    /// a request for longer than this.
    #[arg(long, env = "IDEMPOTENCY_KEY_RETENTION", default_value = "24h", value_parser = retention::parse_duration)]
    pub idempotency_key_retention: Duration,
    #[command(flatten)]
    pub prune: PruneSettings,
    /// Opt-in backpressure: while the oldest pending outbox row is older than this many
    /// seconds, POST /orders answers 503 outbox_lagging with Retry-After (sampled every second
    /// in the background). Unset (the default): orders are always taken and the outbox absorbs
    /// any broker outage, which is what it is for.
    #[arg(long, env = "MAX_OUTBOX_LAG_SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_outbox_lag_secs: Option<u64>,
}

/// A valid Kafka topic name (1 to 249 of `a-z A-Z 0-9 . _ -`, not `.` or `..`): checked at
/// start-up, because every outbox row carries it and a bad one would stall the relay later.
fn kafka_topic(name: &str) -> Result<String, String> {
    let valid = (1..=249).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if valid {
        Ok(name.to_owned())
    } else {
        Err("a Kafka topic is 1 to 249 characters of a-z, A-Z, 0-9, '.', '_' and '-'".into())
    }
}

/// What the handlers share.
pub(crate) struct AppState {
    pub pool: PgPool,
    pub orders: order_store::OrderWriter,
    pub metrics: Metrics,
    pub wakeup: wakeup::Wakeup,
    pub backpressure: backpressure::Backpressure,
}

/// Deletes up to `$2` idempotency keys created more than `$1` seconds ago, oldest first.
const PRUNE_IDEMPOTENCY_KEYS: &str = outbox_core::prune_statement!(
    "idempotency_keys",
    key = "idempotency_key",
    age = "created_at"
);

/// A built, bound, not yet running order-api.
pub struct Application {
    http: Served,
    wakeup_task: tokio::task::JoinHandle<()>,
    writer_tasks: Vec<tokio::task::JoinHandle<()>>,
    lag_task: Option<tokio::task::JoinHandle<()>>,
    pruner: Pruner,
}

impl Application {
    /// Connects to the database (applying migrations unless told not to) and binds the port.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let pool = db::connect(
            &settings.database.database_url,
            &settings.database.pool,
            "order-api",
            &db::ORDERS_MIGRATOR,
        )
        .await?;
        Self::build_with_pool(settings, pool)
    }

    /// Binds the port and prepares the server over an existing pool.
    pub fn build_with_pool(settings: Settings, pool: PgPool) -> anyhow::Result<Self> {
        let registry = prometheus::Registry::new();
        let metrics = Metrics::register(&registry)?;
        let ops = Ops::new(registry, vec![Check::postgres(pool.clone())]);
        let (wakeup, wakeup_task) = wakeup::spawn(pool.clone());
        let backpressure =
            backpressure::Backpressure::new(settings.max_outbox_lag_secs.map(Duration::from_secs));
        let (orders, writer_tasks) = order_store::OrderWriter::spawn(
            pool.clone(),
            settings.order_events_topic.clone(),
            &metrics,
        );
        let lag_task = backpressure.spawn(
            pool.clone(),
            metrics.outbox_lag.clone(),
            metrics.outbox_lagging.clone(),
        );
        let pruner = Pruner::new(
            pool.clone(),
            "idempotency_keys",
            PRUNE_IDEMPOTENCY_KEYS,
            settings.idempotency_key_retention,
            &settings.prune,
            metrics.idempotency_keys_pruned.clone(),
        );
        let state = web::Data::new(AppState {
            pool: pool.clone(),
            orders,
            metrics,
            wakeup,
            backpressure,
        });
        let max_body = settings.max_body_bytes;
        let serve = ServeSettings {
            addr: settings.http_addr.clone(),
            workers: settings.http_workers,
            shutdown_timeout_secs: 10,
        };
        let http = ops::serve(&serve, ops, move |cfg| {
            cfg.app_data(state.clone());
            routes::configure(cfg, max_body);
        })?;
        tracing::info!(
            addr = %settings.http_addr,
            port = http.port,
            topic = %settings.order_events_topic,
            "order-api listening"
        );
        Ok(Self {
            http,
            wakeup_task,
            writer_tasks,
            lag_task,
            pruner,
        })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.http.port
    }

    /// Serves until `shutdown` is cancelled, then lets requests in flight finish.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let pruning = self.pruner.spawn();
        let ((), served) = self.http.serve_while(shutdown.cancelled()).await;
        pruning.stop().await;
        self.wakeup_task.abort();
        // Every request has been answered (or given up on): no order is waiting for a writer.
        for task in self.writer_tasks {
            task.abort();
        }
        if let Some(task) = self.lag_task {
            task.abort();
        }
        tracing::info!("order-api stopped");
        served
    }
}
