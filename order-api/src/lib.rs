//! order-api: `POST /orders` writes the order and its outbox event in one PostgreSQL
//! transaction, so an order is never saved without its event nor an event sent without its order.

mod error;
mod metrics;
mod orders;
mod routes;
mod wakeup;

use std::net::TcpListener;

use actix_web::{dev::Server, web, App, HttpServer};
use anyhow::Context;
use outbox_core::{
    db,
    ops::{self, Check, Ops},
    settings::PoolSettings,
};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub use error::ApiError;
pub use metrics::Metrics;

/// order-api settings: flags, each with an environment variable behind it.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "order-api",
    version,
    about = "Takes orders over HTTP; writes each order and its outbox event in one PostgreSQL transaction.",
    long_about = None
)]
pub struct Settings {
    /// Address to serve HTTP on (port 0 picks a free port).
    #[arg(long, env = "HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: String,
    /// PostgreSQL URL of the orders database.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres:postgres@127.0.0.1:5432/orders"
    )]
    pub database_url: String,
    #[command(flatten)]
    pub pool: PoolSettings,
    /// Kafka topic written into each outbox row (the relay publishes there).
    #[arg(long, env = "ORDER_EVENTS_TOPIC", default_value = "order-events", value_parser = kafka_topic)]
    pub order_events_topic: String,
    /// Largest accepted request body, in bytes; larger bodies get 413.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 16 * 1024)]
    pub max_body_bytes: usize,
    /// HTTP worker threads (default: one per core).
    #[arg(long, env = "HTTP_WORKERS")]
    pub http_workers: Option<usize>,
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
    pub topic: String,
    pub metrics: Metrics,
    pub wakeup: wakeup::Wakeup,
}

/// A built, bound, not yet running order-api.
pub struct Application {
    port: u16,
    server: Server,
    wakeup_task: tokio::task::JoinHandle<()>,
}

impl Application {
    /// Connects to the database (applying migrations unless told not to) and binds the port.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let pool = db::connect(
            &settings.database_url,
            &settings.pool,
            "order-api",
            &db::ORDERS_MIGRATOR,
        )
        .await?;
        Self::build_with_pool(settings, pool)
    }

    /// Binds the port and prepares the server over an existing pool.
    pub fn build_with_pool(settings: Settings, pool: PgPool) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(&settings.http_addr)
            .with_context(|| format!("cannot listen on {}", settings.http_addr))?;
        let port = listener.local_addr()?.port();
        let registry = prometheus::Registry::new();
        let metrics = Metrics::register(&registry)?;
        let ops = Ops::new(registry, vec![Check::postgres(pool.clone())]);
        let (wakeup, wakeup_task) = wakeup::spawn(pool.clone());
        let state = web::Data::new(AppState {
            pool,
            topic: settings.order_events_topic.clone(),
            metrics,
            wakeup,
        });
        let max_body = settings.max_body_bytes;
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .configure(|cfg| routes::configure(cfg, max_body))
                .configure(|cfg| ops.configure(cfg))
                .default_service(web::to(ops::not_found))
        })
        .disable_signals()
        .shutdown_timeout(10)
        .listen(listener)?;
        if let Some(workers) = settings.http_workers {
            server = server.workers(workers);
        }
        tracing::info!(
            addr = %settings.http_addr,
            port,
            topic = %settings.order_events_topic,
            "order-api listening"
        );
        Ok(Self {
            port,
            server: server.run(),
            wakeup_task,
        })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until `shutdown` is cancelled, then lets requests in flight finish.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let handle = self.server.handle();
        let stopper = tokio::spawn(async move {
            shutdown.cancelled().await;
            handle.stop(true).await;
        });
        let result = self.server.await;
        stopper.abort();
        self.wakeup_task.abort();
        tracing::info!("order-api stopped");
        result.context("HTTP server failed")
    }
}
