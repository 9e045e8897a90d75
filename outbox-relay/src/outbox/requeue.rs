//! Putting dead rows, and the rows parked behind them, back to pending.
//!
//! Guarantees kept here:
//! - Safe while relays run: a relay only ever changes rows of lanes it holds, a requeue takes the
//!   locks of the lanes it changes first, and a requeued row is claimed in id order like any
//!   other, so putting a dead row and its parked successors back restores their order.
//! - A row older than the consumer's dedup window is put back only when forced: the consumer
//!   would dead-letter it rather than risk applying it twice.

use std::time::Duration;

use outbox_core::db::OUTBOX_LANES;
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::claim;

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
            Requeue::AllDead => (0..OUTBOX_LANES).collect(),
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
    claim::wait_for_lanes(&mut tx, &lanes).await?;
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
               from outbox_blocking o
              where $1::uuid is null
                and o.state in ('dead', 'parked')
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
