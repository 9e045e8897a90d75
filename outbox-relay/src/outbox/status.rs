//! What the outbox holds, by what will happen to each row: the counts `status` prints (and the
//! relay's gauges show), and the dead rows `dead` lists.
//!
//! Guarantee kept here: bounded work whatever the table holds, so an operator's `status` or a
//! relay's gauge refresh never scans a large backlog: pending rows are counted exactly up to
//! [`EXACT_PENDING_UP_TO`] and estimated above it from PostgreSQL's table statistics, dead and
//! parked rows are read from the small blocking-rows index (`outbox_blocking`), held rows only in
//! the lanes of dead keys, and the oldest age by one probe per lane (see
//! [`outbox_core::db::oldest_pending_age_seconds`]).
//!
//! Why not count a backlog exactly: counting 400,000 pending rows took seconds, every
//! `STATS_INTERVAL_SECS`, and the statement's snapshot held back the horizon below which
//! PostgreSQL marks deleted rows dead in the indexes; the relay's steps then read every row it
//! had deleted since again, and a 400,000-row drain cost 25 µs of server CPU per row instead of
//! 17.

use serde::Serialize;
use sqlx::{PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

/// Pending rows are counted exactly up to this many; above it, estimated.
pub const EXACT_PENDING_UP_TO: i64 = 10_000;

/// What `outbox-relay status` prints.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Status {
    /// Rows waiting to be published (including those waiting for a retry).
    pub pending: i64,
    /// Whether `pending` is an estimate: at least [`EXACT_PENDING_UP_TO`] rows are pending, and
    /// the figure comes from PostgreSQL's table statistics (live rows less dead and parked ones),
    /// which lag the table by a second or so.
    pub pending_estimated: bool,
    /// Rows that failed their maximum attempts.
    pub dead: i64,
    /// Rows held behind a dead or parked row of their key (parked, or pending but arrived after
    /// their key was parked and not yet parked by the relay).
    pub parked: i64,
    /// Age of the oldest pending row, 0 when there is none.
    pub oldest_pending_age_seconds: f64,
}

/// Counts the outbox rows by what will happen to them.
pub async fn status(pool: &PgPool) -> Result<Status, sqlx::Error> {
    // Through the indexes only, whatever plan a small or never-analyzed table suggests.
    let mut tx = pool
        .begin_with(outbox_core::db::BEGIN_WITHOUT_SEQ_SCANS)
        .await?;
    let status = status_in(&mut tx).await?;
    tx.commit().await?;
    Ok(status)
}

/// [`status`] in the caller's transaction, which must have begun with
/// [`outbox_core::db::BEGIN_WITHOUT_SEQ_SCANS`] for the work to stay bounded.
pub async fn status_in(conn: &mut PgConnection) -> Result<Status, sqlx::Error> {
    let counts = sqlx::query!(
        r#"with blockers as materialized (
             -- The first dead or parked row of each key: every later row of the key is held.
             select partition_key, lane, min(id) as first_id
               from outbox_blocking
              where state in ('dead', 'parked')
              group by partition_key, lane
         )
         select (select count(*) from (select from outbox where state = 'pending' limit $1) p)
                    as "pending_counted!",
                pg_stat_get_live_tuples('outbox'::regclass) as "live_rows!",
                (select count(*) from outbox_blocking where state = 'dead') as "dead!",
                (select count(*) from outbox_blocking where state = 'parked') as "parked!",
                (select count(*) from blockers b
                   join outbox o on o.lane = b.lane and o.state = 'pending'
                                and o.id > b.first_id and o.partition_key = b.partition_key)
                    as "held!""#,
        EXACT_PENDING_UP_TO
    )
    .fetch_one(&mut *conn)
    .await?;
    let oldest_pending_age_seconds = outbox_core::db::oldest_pending_age_seconds(conn).await?;
    let (pending, pending_estimated) = if counts.pending_counted < EXACT_PENDING_UP_TO {
        (counts.pending_counted, false)
    } else {
        let estimate = counts.live_rows - counts.dead - counts.parked;
        (estimate.max(EXACT_PENDING_UP_TO), true)
    };
    Ok(Status {
        pending: pending - counts.held,
        pending_estimated,
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

/// The oldest `limit` dead rows, oldest first.
pub async fn dead_rows<'e>(
    executor: impl PgExecutor<'e>,
    limit: i64,
) -> Result<Vec<DeadRow>, sqlx::Error> {
    sqlx::query_as!(
        DeadRow,
        r#"select id as "id!", event_id as "event_id!", partition_key as "partition_key!",
                  attempts as "attempts!",
                  extract(epoch from now() - created_at)::float8 as "age_seconds!",
                  last_error
             from outbox_blocking
            where state = 'dead'
            order by id
            limit $1"#,
        limit
    )
    .fetch_all(executor)
    .await
}
