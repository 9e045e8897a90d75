//! Failures about one message: attempts with backoff, dead rows, and the rows parked behind them.
//!
//! Guarantees kept here:
//! - Only a failure about the message itself counts an attempt; it sets `last_error` and
//!   `next_attempt_at` (exponential backoff with jitter), and until then the later rows of its
//!   key wait behind it (the claim leaves them out).
//! - At the maximum attempts the row is `dead` and the later pending rows of its key are
//!   `parked` in the same transaction; every other key keeps flowing.
//! - Rows of a dead key that arrive later are parked too, by [`park_held`] (run periodically
//!   by every relay), so they leave the pending-rows index: claims, the oldest-pending probe and
//!   order-api's backpressure never re-read a dead key's growing backlog. Until then the claim
//!   already leaves them out.

use std::time::Duration;

use backoff::{backoff::Backoff, ExponentialBackoff, ExponentialBackoffBuilder};
use sqlx::{PgConnection, PgPool};

use super::LANE_LOCK_NAMESPACE;
use crate::Settings;

/// When a refused message is tried again, and how often.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial: Duration,
    pub max: Duration,
}

impl RetryPolicy {
    pub fn from_settings(settings: &Settings) -> Self {
        Self {
            max_attempts: settings.max_attempts.max(1),
            initial: Duration::from_millis(settings.retry_initial_ms),
            max: Duration::from_millis(settings.retry_max_ms.max(settings.retry_initial_ms)),
        }
    }

    /// The delay before the try that follows failed attempt `attempt` (1 for the first failure):
    /// `initial * 2^(attempt-1)`, capped at `max`, with ±50 % jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        let mut backoff = self.backoff();
        let mut delay = self.initial;
        for _ in 0..attempt.max(1) {
            delay = backoff.next_backoff().unwrap_or(self.max);
        }
        delay
    }

    fn backoff(&self) -> ExponentialBackoff {
        ExponentialBackoffBuilder::new()
            .with_initial_interval(self.initial)
            .with_multiplier(2.0)
            .with_randomization_factor(0.5)
            .with_max_interval(self.max)
            .with_max_elapsed_time(None)
            .build()
    }
}

/// What [`record_failures`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    /// Attempts counted (rows that will be retried or are now dead).
    pub attempts: u64,
    /// Rows that reached the maximum and are now dead.
    pub dead: u64,
    /// Later rows of the dead rows' keys now parked.
    pub parked: u64,
}

/// Counts one attempt for each failed row (`(id, attempts before, error)`), schedules its retry,
/// marks it dead at the maximum and parks the later pending rows of a dead row's key.
pub async fn record_failures(
    conn: &mut PgConnection,
    policy: &RetryPolicy,
    failed: &[(i64, i32, String)],
) -> Result<Recorded, sqlx::Error> {
    if failed.is_empty() {
        return Ok(Recorded::default());
    }
    let ids: Vec<i64> = failed.iter().map(|(id, _, _)| *id).collect();
    let errors: Vec<String> = failed.iter().map(|(_, _, e)| e.clone()).collect();
    let delays_ms: Vec<i64> = failed
        .iter()
        .map(|(_, before, _)| {
            let attempt = u32::try_from(*before).unwrap_or(0).saturating_add(1);
            i64::try_from(policy.delay(attempt).as_millis()).unwrap_or(i64::MAX)
        })
        .collect();
    let max_attempts = i32::try_from(policy.max_attempts).unwrap_or(i32::MAX);
    let dead = sqlx::query!(
        r#"with failed as (
             select * from unnest($1::bigint[], $2::text[], $3::bigint[]) as f(id, error, delay_ms)
         ), counted as (
             update outbox o
                set attempts = o.attempts + 1,
                    last_error = f.error,
                    next_attempt_at = clock_timestamp() + f.delay_ms * interval '1 millisecond',
                    state = case when o.attempts + 1 >= $4 then 'dead' else 'pending' end
               from failed f
              where o.id = f.id
             returning o.id, o.partition_key, o.lane, o.state
         )
         select id as "id!", partition_key as "partition_key!", lane as "lane!"
           from counted where state = 'dead'"#,
        &ids,
        &errors,
        &delays_ms,
        max_attempts
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut recorded = Recorded {
        attempts: ids.len() as u64,
        dead: dead.len() as u64,
        parked: 0,
    };
    if !dead.is_empty() {
        let dead_ids: Vec<i64> = dead.iter().map(|d| d.id).collect();
        let dead_keys: Vec<String> = dead.iter().map(|d| d.partition_key.clone()).collect();
        let dead_lanes: Vec<i16> = dead.iter().map(|d| d.lane).collect();
        // The lane condition lets the pending-rows index serve it: only the key's lane is read.
        let parked = sqlx::query!(
            "update outbox o
                set state = 'parked'
               from unnest($1::bigint[], $2::text[], $3::smallint[]) as d(id, partition_key, lane)
              where o.lane = d.lane
                and o.state = 'pending'
                and o.id > d.id
                and o.partition_key = d.partition_key",
            &dead_ids,
            &dead_keys,
            &dead_lanes
        )
        .execute(&mut *conn)
        .await?;
        recorded.parked = parked.rows_affected();
    }
    Ok(recorded)
}

/// Parks the pending rows that arrived behind a dead or parked row of their key, in the lanes of
/// dead keys that no step holds now; returns how many. Its own short transaction.
pub async fn park_held(pool: &PgPool) -> Result<u64, sqlx::Error> {
    // Through the indexes only: this runs every STATS_INTERVAL_SECS.
    let mut tx = pool
        .begin_with(outbox_core::db::BEGIN_WITHOUT_SEQ_SCANS)
        .await?;
    let lanes = lock_lanes_with_blockers(&mut tx).await?;
    let parked = park_held_in(&mut tx, &lanes).await?;
    tx.commit().await?;
    Ok(parked)
}

/// Of the lanes with a dead or parked row (read from the small blocking-rows index), locks
/// without waiting those no other transaction holds; returns them. None in the common case of
/// no dead row, and then no lock is taken at all.
async fn lock_lanes_with_blockers(conn: &mut PgConnection) -> Result<Vec<i32>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"with blocked as materialized (
             select distinct lane::int as lane from outbox_blocking
              where state in ('dead', 'parked')
         )
         select lane as "lane!" from blocked where pg_try_advisory_xact_lock($1, lane)"#,
        LANE_LOCK_NAMESPACE
    )
    .fetch_all(conn)
    .await
}

/// Parks the pending rows of `lanes` that arrived behind a dead or parked row of their key. The
/// caller holds the lanes' locks (so no requeue or claim of those lanes runs meanwhile). Reads
/// the blocking-rows index, then only the blocked keys' lanes.
async fn park_held_in(conn: &mut PgConnection, lanes: &[i32]) -> Result<u64, sqlx::Error> {
    if lanes.is_empty() {
        return Ok(0);
    }
    let parked = sqlx::query!(
        "with blockers as materialized (
             select partition_key, lane, min(id) as first_id
               from outbox_blocking
              where state in ('dead', 'parked')
                and lane = any($1::int[])
              group by partition_key, lane
         )
         update outbox o
            set state = 'parked'
           from blockers b
          where o.lane = b.lane
            and o.state = 'pending'
            and o.id > b.first_id
            and o.partition_key = b.partition_key",
        lanes
    )
    .execute(conn)
    .await?;
    Ok(parked.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_per_attempt_within_the_jitter_and_stop_at_the_cap() {
        let policy = RetryPolicy {
            max_attempts: 10,
            initial: Duration::from_millis(1_000),
            max: Duration::from_millis(8_000),
        };
        for (attempt, base) in [
            (1, 1_000.0),
            (2, 2_000.0),
            (3, 4_000.0),
            (4, 8_000.0),
            (9, 8_000.0),
        ] {
            let delay = policy.delay(attempt).as_secs_f64() * 1_000.0;
            assert!(
                delay >= base * 0.5 - 1.0 && delay <= base * 1.5 + 1.0,
                "attempt {attempt}: {delay} ms is not within 50 % of {base} ms"
            );
        }
    }
}
