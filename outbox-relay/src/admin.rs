//! The operator surface: `status` and `requeue`.
//!
//! Safe while relays run: a relay only ever changes rows of lanes it holds, a requeue takes the
//! locks of the lanes it changes first, and a requeued row is claimed in id order like any
//! other, so putting a dead row and its parked successors back restores their order.

use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use sqlx::{
    postgres::{PgConnectOptions, PgPoolOptions},
    PgExecutor, PgPool,
};
use uuid::Uuid;

use crate::{AdminSettings, DeadArgs, RequeueArgs};

/// What `outbox-relay status` prints.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Status {
    /// Rows waiting to be published (including those waiting for a retry).
    pub pending: i64,
    /// Rows that failed their maximum attempts.
    pub dead: i64,
    /// Rows held behind a dead or parked row of their key (parked, or pending but arrived after
    /// their key was parked and not yet parked by the relay).
    pub parked: i64,
    /// Age of the oldest pending row, 0 when there is none.
    pub oldest_pending_age_seconds: f64,
}

/// Counts the outbox rows by what will happen to them. Bounded work, whatever the table holds:
/// the pending count reads the pending-rows index, dead and parked rows the small blocking-rows
/// index, held rows only the lanes of dead keys, and the oldest age one probe per lane (see
/// [`outbox_core::db::oldest_pending_age_seconds`]).
pub async fn status(pool: &PgPool) -> Result<Status, sqlx::Error> {
    let counts = sqlx::query!(
        r#"with blockers as materialized (
             -- The first dead or parked row of each key: every later row of the key is held.
             select partition_key, lane, min(id) as first_id
               from outbox
              where state in ('dead', 'parked') and (state <> 'pending' or attempts > 0)
              group by partition_key, lane
         )
         select (select count(*) from outbox where state = 'pending') as "pending!",
                (select count(*) from outbox
                  where state = 'dead' and (state <> 'pending' or attempts > 0)) as "dead!",
                (select count(*) from outbox
                  where state = 'parked' and (state <> 'pending' or attempts > 0)) as "parked!",
                (select count(*) from blockers b
                   join outbox o on o.lane = b.lane and o.state = 'pending'
                                and o.id > b.first_id and o.partition_key = b.partition_key)
                    as "held!""#
    )
    .fetch_one(pool)
    .await?;
    let oldest_pending_age_seconds = outbox_core::db::oldest_pending_age_seconds(pool).await?;
    Ok(Status {
        pending: counts.pending - counts.held,
        dead: counts.dead,
        parked: counts.parked + counts.held,
        oldest_pending_age_seconds,
    })
}

/// One dead row, as `outbox-relay dead` prints it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadRow {
    pub id: i64,
    pub event_id: Uuid,
    pub partition_key: String,
    pub attempts: i32,
    pub age_seconds: f64,
    pub last_error: Option<String>,
}

/// The oldest `limit` dead rows, oldest first (served by the blocking-rows partial index).
pub async fn dead_rows<'e>(
    executor: impl PgExecutor<'e>,
    limit: i64,
) -> Result<Vec<DeadRow>, sqlx::Error> {
    sqlx::query_as!(
        DeadRow,
        r#"select id, event_id, partition_key, attempts,
                  extract(epoch from now() - created_at)::float8 as "age_seconds!",
                  last_error
             from outbox
            where state = 'dead' and (state <> 'pending' or attempts > 0)
            order by id
            limit $1"#,
        limit
    )
    .fetch_all(executor)
    .await
}

/// Which dead rows a requeue puts back (with the rows parked behind them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requeue {
    /// Every dead and every parked row.
    AllDead,
    /// The dead row with this event id and the rows of its key parked behind it.
    Event(Uuid),
}

/// What a requeue did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Requeued {
    pub requeued: u64,
    /// How many of them are older than the dedup window (requeued only with `force`).
    pub older_than_dedup_window: u64,
}

/// Why a requeue did nothing.
#[derive(Debug, thiserror::Error)]
pub enum RequeueError {
    #[error("no dead outbox row has event id {0}")]
    NoSuchDeadRow(Uuid),
    #[error(
        "{older} of the {rows} rows to requeue were created more than {window} ago, before the \
         consumer's dedup window: catalog-consumer dead-letters such events \
         (older_than_dedup_window) instead of applying them, because their ids may already be \
         pruned from processed_events and applying them could change the stock twice. Nothing \
         was requeued. If the consumer's PROCESSED_EVENTS_RETENTION is longer than that window, \
         pass --dedup-window with its window; to requeue them anyway, pass --force"
    )]
    OlderThanDedupWindow {
        rows: u64,
        older: u64,
        window: String,
    },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Puts dead rows and the rows parked behind them back to pending, attempts reset, in one
/// transaction that first takes the lanes' locks (waiting for the relays' steps on them to
/// end), so no relay parks or claims those lanes meanwhile.
///
/// Rows created before `dedup_window` are requeued only when `force` is set: the consumer
/// would dead-letter them (see `catalog-consumer`'s PROCESSED_EVENTS_RETENTION).
pub async fn requeue(
    pool: &PgPool,
    target: Requeue,
    dedup_window: Duration,
    force: bool,
) -> Result<Requeued, RequeueError> {
    let mut tx = pool.begin().await?;
    let lanes: Vec<i32> =
        match target {
            Requeue::AllDead => (0..crate::claim::LANES).collect(),
            Requeue::Event(event_id) => sqlx::query_scalar!(
                r#"select lane::int as "lane!" from outbox where event_id = $1 and state = 'dead'"#,
                event_id
            )
            .fetch_all(&mut *tx)
            .await?,
        };
    if lanes.is_empty() {
        if let Requeue::Event(event_id) = target {
            return Err(RequeueError::NoSuchDeadRow(event_id));
        }
    }
    crate::claim::wait_for_lanes(&mut tx, &lanes).await?;
    // After the locks, in a new statement (a new snapshot): what the relays left.
    let event_id = match target {
        Requeue::AllDead => None,
        Requeue::Event(event_id) => Some(event_id),
    };
    let window_secs = dedup_window.as_secs_f64();
    let requeued = sqlx::query!(
        r#"with target as (
             select id, partition_key from outbox where state = 'dead' and event_id = $1
         ), rows as (
             select o.id, o.created_at < now() - $2 * interval '1 second' as too_old
               from outbox o
              where $1::uuid is null
                and o.state in ('dead', 'parked') and (o.state <> 'pending' or o.attempts > 0)
             union
             select o.id, o.created_at < now() - $2 * interval '1 second'
               from outbox o
               join target t on o.partition_key = t.partition_key
              where o.id = t.id or (o.state = 'parked' and o.id > t.id)
         ), requeued as (
             update outbox o
                set state = 'pending', attempts = 0, next_attempt_at = now(), last_error = null
               from rows r
              where o.id = r.id and ($3 or not exists (select 1 from rows where too_old))
             returning o.id
         )
         select (select count(*) from requeued) as "requeued!",
                (select count(*) from rows) as "rows!",
                (select count(*) from rows where too_old) as "older!""#,
        event_id,
        window_secs,
        force
    )
    .fetch_one(&mut *tx)
    .await?;
    if let (Requeue::Event(event_id), 0) = (target, requeued.rows) {
        return Err(RequeueError::NoSuchDeadRow(event_id));
    }
    if requeued.older > 0 && !force {
        return Err(RequeueError::OlderThanDedupWindow {
            rows: u64::try_from(requeued.rows).unwrap_or(0),
            older: u64::try_from(requeued.older).unwrap_or(0),
            window: outbox_core::retention::format_duration(dedup_window),
        });
    }
    tx.commit().await?;
    Ok(Requeued {
        requeued: u64::try_from(requeued.requeued).unwrap_or(0),
        older_than_dedup_window: u64::try_from(requeued.older).unwrap_or(0),
    })
}

/// `outbox-relay status`: prints the status as one JSON object on stdout.
pub async fn print_status(settings: &AdminSettings) -> anyhow::Result<()> {
    let pool = connect(settings).await?;
    let status = status(&pool).await.context("cannot read the outbox")?;
    println!("{}", serde_json::to_string(&status)?);
    Ok(())
}

/// `outbox-relay dead`: prints one JSON object per line for each dead row (key, attempts, age,
/// last error), oldest first, at most `limit`.
pub async fn print_dead(args: &DeadArgs) -> anyhow::Result<()> {
    let pool = connect(&args.admin).await?;
    let rows = dead_rows(&pool, args.limit)
        .await
        .context("cannot read the outbox")?;
    for row in rows {
        println!("{}", serde_json::to_string(&row)?);
    }
    Ok(())
}

/// `outbox-relay requeue`: requeues and prints `{"requeued": n, "older_than_dedup_window": m}`;
/// fails when `--event-id` names no dead row, or when rows are older than the dedup window and
/// `--force` is not given.
pub async fn print_requeue(args: &RequeueArgs) -> anyhow::Result<()> {
    let pool = connect(&args.admin).await?;
    let target = match args.event_id {
        Some(event_id) => Requeue::Event(event_id),
        None => Requeue::AllDead,
    };
    let requeued = requeue(&pool, target, args.dedup_window, args.force).await?;
    if requeued.older_than_dedup_window > 0 {
        eprintln!(
            "warning: {} requeued rows are older than the dedup window ({}); the consumer \
             dead-letters them unless its PROCESSED_EVENTS_RETENTION covers them",
            requeued.older_than_dedup_window,
            outbox_core::retention::format_duration(args.dedup_window)
        );
    }
    println!("{}", serde_json::to_string(&requeued)?);
    Ok(())
}

async fn connect(settings: &AdminSettings) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions = settings
        .database_url
        .parse()
        .context("DATABASE_URL is not a valid postgres:// URL")?;
    let target = outbox_core::db::describe(&options);
    PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options.application_name("outbox-relay-admin"))
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {target}"))
}
