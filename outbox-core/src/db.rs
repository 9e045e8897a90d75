//! The PostgreSQL pool and the embedded, forward-only migrations of both databases.

use anyhow::Context;
use sqlx::{
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPoolOptions},
    Connection, Executor, PgPool,
};

use crate::settings::PoolSettings;

/// Migrations of the `orders` database (orders, idempotency keys, outbox), used by order-api and
/// outbox-relay.
pub static ORDERS_MIGRATOR: Migrator = sqlx::migrate!("../migrations/orders");

/// Migrations of the `catalog` database (products, processed events), used by catalog-consumer.
pub static CATALOG_MIGRATOR: Migrator = sqlx::migrate!("../migrations/catalog");

/// Begins a transaction whose statements read tables through their indexes (`BEGIN` and the
/// setting in one round trip), for statements that must do bounded work whatever the table
/// holds.
///
/// Why: a connection keeps the generic plan it made of a prepared statement, from the table's
/// size at that moment. Made while a table was small, or never analyzed (autovacuum off, or not
/// yet run), that plan may be a seq scan, and it stays one as the table grows. A seq scan also
/// reads every row deleted since the last vacuum, so on the outbox it grows with every row ever
/// published. With seq scans off the planner takes an index wherever one fits.
pub const BEGIN_WITHOUT_SEQ_SCANS: &str = "begin; set local enable_seqscan = off";

/// A pooled connection idle for longer than this is pinged before it is handed out.
const PING_IF_IDLE_FOR: std::time::Duration = std::time::Duration::from_secs(5);

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
        // sqlx pings every connection before handing it out: one more round trip per order
        // and per relay step. A connection busy moments ago is alive; one idle for a while
        // (the server may have restarted meanwhile) is still checked.
        .test_before_acquire(false)
        // No JIT compilation in these sessions. PostgreSQL compiles a statement whose estimated
        // cost passes `jit_above_cost`, and the relay's claim of 2,000 rows passes it in its
        // custom plans (every step's: the step forces them): 110-170 ms of compiling for a
        // statement that runs in 6-10 ms. Every statement here is short; none gains from JIT.
        // A `SET` once per connection rather than the `options` startup parameter, which
        // PgBouncer refuses unless told to ignore it.
        .after_connect(|conn, _meta| {
            Box::pin(async move {
                conn.execute("set jit = off").await?;
                Ok(())
            })
        })
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for > PING_IF_IDLE_FOR {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
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

/// Number of outbox lanes: every row of a key is in lane `hashtext(key) & (OUTBOX_LANES - 1)`,
/// the `outbox.lane` generated column of the orders migration (a test reads the migration's
/// modulus and compares).
pub const OUTBOX_LANES: i32 = 64;

/// Age in seconds of the oldest pending outbox row, 0 when there is none. Bounded work
/// whatever the backlog: one probe of the pending-rows index per lane. Rows held behind a dead
/// key count until the relay parks them (within its `STATS_INTERVAL_SECS`).
pub async fn oldest_pending_age_seconds<'e>(
    executor: impl sqlx::PgExecutor<'e>,
) -> Result<f64, sqlx::Error> {
    sqlx::query_scalar(
        "select coalesce(extract(epoch from now() - min(o.created_at)), 0)::float8
           from generate_series(0, $1 - 1) as l(lane),
                lateral (select created_at from outbox
                          where lane = l.lane and state = 'pending'
                          order by id limit 1) o",
    )
    .bind(OUTBOX_LANES)
    .fetch_one(executor)
    .await
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

#[cfg(test)]
mod tests {
    use super::OUTBOX_LANES;

    #[test]
    fn the_lane_count_matches_the_modulus_of_the_lane_column_in_the_orders_migration() {
        let migration =
            include_str!("../../migrations/orders/20261125000001_orders_and_outbox.sql");
        let mask = format!("hashtext(partition_key) & {})", OUTBOX_LANES - 1);
        assert!(
            migration.contains(&mask),
            "the outbox.lane column must be `{mask}`"
        );
        assert_eq!(OUTBOX_LANES.count_ones(), 1, "a power of two, for the mask");
    }
}
