//! The operator surface: `status` and `requeue`.
//!
//! Both are single statements, so they are safe while relays run: a relay only ever changes
//! pending rows of lanes it holds, and a requeued row is claimed in id order like any other, so
//! putting a dead row and its parked successors back restores their order.

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
    /// their key was parked).
    pub parked: i64,
    /// Age of the oldest row counted in `pending`, 0 when there is none.
    pub oldest_pending_age_seconds: f64,
}

/// Counts the outbox rows by what will happen to them.
pub async fn status<'e>(executor: impl PgExecutor<'e>) -> Result<Status, sqlx::Error> {
    sqlx::query_as!(
        Status,
        r#"with blockers as materialized (
             -- The first dead or parked row of each key: every later row of the key is held.
             select partition_key, min(id) as first_id
               from outbox
              where state in ('dead', 'parked')
              group by partition_key
         ), rows as (
             select o.state, o.created_at,
                    (o.state = 'pending' and o.id > b.first_id) is true as held
               from outbox o
               left join blockers b on b.partition_key = o.partition_key
         )
         select count(*) filter (where state = 'pending' and not held) as "pending!",
                count(*) filter (where state = 'dead') as "dead!",
                count(*) filter (where state = 'parked' or held) as "parked!",
                coalesce(extract(epoch from now() - min(created_at)
                                 filter (where state = 'pending' and not held)), 0)::float8
                    as "oldest_pending_age_seconds!"
           from rows"#
    )
    .fetch_one(executor)
    .await
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

/// Puts every dead and parked row back to pending with its attempts reset; returns how many.
pub async fn requeue_dead<'e>(executor: impl PgExecutor<'e>) -> Result<u64, sqlx::Error> {
    let requeued = sqlx::query!(
        "update outbox
            set state = 'pending', attempts = 0, next_attempt_at = now(), last_error = null
          where state in ('dead', 'parked')"
    )
    .execute(executor)
    .await?;
    Ok(requeued.rows_affected())
}

/// Puts the dead row with `event_id` and the parked rows of its key behind it back to pending;
/// returns how many (0 when no dead row has that event id).
pub async fn requeue_event<'e>(
    executor: impl PgExecutor<'e>,
    event_id: Uuid,
) -> Result<u64, sqlx::Error> {
    let requeued = sqlx::query!(
        "with target as (
             select id, partition_key from outbox where event_id = $1 and state = 'dead'
         )
         update outbox o
            set state = 'pending', attempts = 0, next_attempt_at = now(), last_error = null
           from target t
          where o.partition_key = t.partition_key
            and (o.id = t.id or (o.state = 'parked' and o.id > t.id))",
        event_id
    )
    .execute(executor)
    .await?;
    Ok(requeued.rows_affected())
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

/// `outbox-relay requeue`: requeues and prints `{"requeued": n}`; fails when `--event-id` names
/// no dead row.
pub async fn print_requeue(args: &RequeueArgs) -> anyhow::Result<()> {
    let pool = connect(&args.admin).await?;
    let requeued = match args.event_id {
        Some(event_id) => {
            let requeued = requeue_event(&pool, event_id)
                .await
                .context("cannot requeue")?;
            if requeued == 0 {
                anyhow::bail!("no dead outbox row has event id {event_id}");
            }
            requeued
        }
        None => requeue_dead(&pool).await.context("cannot requeue")?,
    };
    println!("{}", serde_json::json!({ "requeued": requeued }));
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
