//! The PostgreSQL pool and the embedded, forward-only migrations of both databases.

use anyhow::Context;
use sqlx::{
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPoolOptions},
    PgPool,
};

use crate::settings::PoolSettings;

/// Migrations of the `orders` database (orders, idempotency keys, outbox), used by order-api and
/// outbox-relay.
pub static ORDERS_MIGRATOR: Migrator = sqlx::migrate!("../migrations/orders");

/// Migrations of the `catalog` database (products, processed events), used by catalog-consumer.
pub static CATALOG_MIGRATOR: Migrator = sqlx::migrate!("../migrations/catalog");

/// Connects a pool to `url`, naming the connections after the service (visible in
/// `pg_stat_activity`) unless the URL names them (`?application_name=relay-a`, to tell replicas
/// apart), and applies `migrator` unless the settings say not to.
///
/// Fails with a message naming the host and database (never the password) when the server
/// cannot be reached.
pub async fn connect(
    url: &str,
    settings: &PoolSettings,
    application_name: &str,
    migrator: &Migrator,
) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions = url
        .parse()
        .context("DATABASE_URL is not a valid postgres:// URL")?;
    let options = match options.get_application_name() {
        Some(_) => options,
        None => options.application_name(application_name),
    };
    let target = describe(&options);
    let pool = PgPoolOptions::new()
        .max_connections(settings.db_max_connections)
        .acquire_timeout(settings.acquire_timeout())
        .connect_with(options)
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {target}"))?;
    if !settings.skip_migrations {
        migrator
            .run(&pool)
            .await
            .with_context(|| format!("cannot apply migrations to {target}"))?;
    }
    Ok(pool)
}

/// `host:port/database` of a connection, for log lines and errors.
pub fn describe(options: &PgConnectOptions) -> String {
    format!(
        "{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("postgres")
    )
}

/// The channel order-api notifies (after commit, coalesced, never inside the order transaction)
/// and outbox-relay listens on, so an idle relay wakes within milliseconds of a new row.
pub const OUTBOX_WAKEUP_CHANNEL: &str = "outbox_wakeup";

/// Whether a database error means the database cannot be reached or is restarting (answer 503,
/// retry later) rather than that this one query failed: pool and transport failures, and the
/// SQLSTATEs of a lost connection (class 08), a shutdown or start-up in progress (57P01-57P03)
/// and a full server (53300).
pub fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03" | "53300")
        }),
        _ => false,
    }
}
