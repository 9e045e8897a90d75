//! Lane locks, claiming rows to publish, and deleting them once published.
//!
//! Guarantees kept here:
//! - Rows are read by their state (`pending` and due), never by "id greater than the last one
//!   seen", so a transaction that commits late with a lower id is still published.
//! - Per-key order with several relays: every row of a key is in one lane (the generated
//!   column `lane`, `hashtext(key)` masked by [`OUTBOX_LANES`]), and a relay claims a lane's rows
//!   only while its transaction holds the lane's `pg_try_advisory_xact_lock`; within the lanes
//!   it holds it takes rows in id order.
//! - Per-key order under retries: a row is never claimed while an earlier row of its key is dead,
//!   parked, or waiting for a retry that is not due yet (`outbox_blocking`).
//! - A row is deleted only once its publication was acknowledged: [`take_rows`] deletes the rows
//!   it takes inside a savepoint, which the step keeps (commits) only when every one of them was
//!   acknowledged, and otherwise rolls back before [`delete_published`] deletes the acknowledged
//!   ones.

use std::time::Duration;

use chrono::{DateTime, Utc};
use outbox_core::{db::OUTBOX_LANES, event::CloudEventRef};
use sqlx::{Executor, PgConnection, PgPool, PgTransaction};
use uuid::Uuid;

/// First key of the two-key advisory locks on lanes ("obrx"), so they cannot collide with other
/// users of advisory locks in the database.
pub const LANE_LOCK_NAMESPACE: i32 = 0x6f62_7278;

/// One claimed outbox row, with everything its Kafka message needs.
#[derive(Debug, Clone)]
pub struct ClaimedRow {
    pub id: i64,
    /// The row's lane (of [`OUTBOX_LANES`]), from its key.
    pub lane: i16,
    pub event_id: Uuid,
    pub topic: String,
    pub partition_key: String,
    pub event_type: String,
    pub source: String,
    pub subject: String,
    /// The jsonb payload as text: the message value.
    pub payload: String,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    /// Failures about this message counted so far; above 0 the row is being retried.
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
}

impl ClaimedRow {
    /// The CloudEvents attributes of the row's message.
    pub fn cloud_event(&self) -> CloudEventRef<'_> {
        CloudEventRef {
            id: self.event_id,
            event_type: &self.event_type,
            source: &self.source,
            time: self.created_at,
            subject: &self.subject,
            traceparent: self.traceparent.as_deref(),
            tracestate: self.tracestate.as_deref(),
        }
    }
}

/// Begins a step's transaction. Its settings last for it only, and go in the same round trip
/// as the `BEGIN`:
/// - plan_cache_mode force_custom_plan: after five runs on a connection PostgreSQL may switch a
///   prepared statement to a generic plan, which knows neither the lanes nor the per-lane limit;
///   during a drain of 400,000 rows the step's statements then cost 32 µs of server CPU per row
///   instead of 18. A custom plan costs well under a millisecond to plan, per step.
/// - synchronous_commit is left as the database has it (on by default), not turned off: after an
///   asynchronous commit the server cannot mark the deleted rows dead in their pages until its
///   WAL is flushed, so the next steps' index scans visit every deleted row at the head of a lane
///   again instead of skipping it (measured: 238 buffer reads for one lane's probe against 11;
///   over a drain of 200,000 rows, 19 µs of server CPU per row against 15-16, fsyncs included).
/// - idle_in_transaction_session_timeout (`idle_limit`): if this process stalls or its host
///   vanishes mid-batch, the server ends the session instead of keeping its lane locks (and the
///   vacuum horizon) until TCP gives up.
/// - enable_bitmapscan off: every statement of a step reads a few rows through an index in its
///   order; a bitmap scan would read all of a lane's pending rows (every row, during a backlog) to
///   sort them, and the planner picks it as soon as the table's statistics say a lane holds a few
///   thousand rows (measured: 216 ms instead of 6 ms for 2,000 rows).
/// - enable_seqscan off: the delete of the taken rows finds them by ctid, and the planner, seeing
///   a few hundred rows in the table, hash-joins them against a seq scan of the whole table
///   instead. The heap holds every row deleted since the last vacuum (without autovacuum, every
///   row ever written), so that scan grows without bound; by ctid it is one page read per row.
pub async fn begin_step(
    pool: &PgPool,
    idle_limit: Duration,
) -> Result<PgTransaction<'static>, sqlx::Error> {
    // A number of milliseconds, so nothing in the statement comes from outside.
    pool.begin_with(format!(
        "begin; \
         set local idle_in_transaction_session_timeout = {}; \
         set local enable_bitmapscan = off; \
         set local enable_seqscan = off; \
         set local plan_cache_mode = force_custom_plan",
        idle_limit.as_millis()
    ))
    .await
}

/// Locks up to `max_lanes` lanes that have due pending rows, for the rest of the transaction.
/// Lanes another relay holds are skipped (never waited for); candidates are tried in random
/// order so several relays spread over the lanes, and `skip` (the lanes this process's other
/// steps hold: they would only fail to lock) are not tried at all.
///
/// Each candidate is probed, then locked, one at a time, and the statement stops once it holds
/// `max_lanes`: a probe walks the head of its lane's pending-rows index (`order by o.id` makes
/// the planner use it), which holds the entries of every row deleted since the last vacuum, so
/// probing all 64 lanes per step cost more than the claim itself during a drain. The `case`
/// keeps the order: a lane is locked only once its probe found a row, so no step holds a lane it
/// has nothing to do in. The random order is materialized first, so the probe and the lock run
/// row by row under the limit instead of for every lane before a sort.
///
/// `backlogged` lanes (those whose last take gave its full share, see [`full_lanes`]) are tried
/// first and locked without a probe: during a drain they almost surely have rows, and the probe
/// would walk the same deleted entries the take walks again just after (measured: 3-7 ms of a
/// 2,000-row step's 35). A backlogged lane that turns out empty costs the take one index probe.
///
/// This must be its own statement, before [`take_rows`]: a statement's snapshot is taken when it
/// starts, so rows read in the statement that took the lock could predate the commit of the
/// relay that held the lane just before, and be published twice.
pub async fn lock_lanes(
    conn: &mut PgConnection,
    max_lanes: i64,
    skip: &[i32],
    backlogged: &[i32],
) -> Result<Vec<i32>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"with candidates as materialized (
             select l.lane, l.lane = any($5::int[]) as backlogged
               from generate_series(0, $2 - 1) as l(lane)
              where l.lane <> all($4::int[])
              order by 2 desc, random()
         )
         select c.lane as "lane!"
           from candidates c
          where case
                  when c.backlogged then pg_try_advisory_xact_lock($1, c.lane)
                  when (select true from outbox o
                         where o.lane = c.lane
                           and o.state = 'pending'
                           and o.next_attempt_at <= clock_timestamp()
                         order by o.id
                         limit 1)
                  then pg_try_advisory_xact_lock($1, c.lane)
                  else false
                end
          limit $3"#,
        LANE_LOCK_NAMESPACE,
        OUTBOX_LANES,
        max_lanes,
        skip,
        backlogged
    )
    .fetch_all(conn)
    .await
}

/// Each lane's share of a take of `limit` rows over `lanes` lanes (rounded up).
fn lane_share(limit: i64, lanes: usize) -> i64 {
    let lanes = lanes.max(1) as i64;
    (limit + lanes - 1) / lanes
}

/// The lanes of `lanes` that gave [`take_rows`] (called with `limit`) their full share: they
/// most likely hold more rows.
pub fn full_lanes(lanes: &[i32], rows: &[ClaimedRow], limit: i64) -> Vec<i32> {
    let share = lane_share(limit, lanes.len());
    lanes
        .iter()
        .copied()
        .filter(|lane| {
            rows.iter()
                .filter(|row| i32::from(row.lane) == *lane)
                .count() as i64
                >= share
        })
        .collect()
}

/// Locks every lane of `lanes` for the rest of the transaction, waiting for the relays' steps
/// that hold them to end (each is bounded by `DELIVERY_TIMEOUT_SECS`). Lanes are taken in
/// ascending order, so two callers cannot deadlock; relays only ever try-lock.
pub async fn wait_for_lanes(conn: &mut PgConnection, lanes: &[i32]) -> Result<(), sqlx::Error> {
    let mut lanes = lanes.to_vec();
    lanes.sort_unstable();
    lanes.dedup();
    sqlx::query!(
        "select pg_advisory_xact_lock($1, lane) from unnest($2::int[]) as l(lane) order by lane",
        LANE_LOCK_NAMESPACE,
        &lanes
    )
    .fetch_all(conn)
    .await?;
    Ok(())
}

/// Takes the due pending rows of `lanes`, up to `limit`, in id order, leaving out every row that
/// has an earlier row of its key that is dead, parked, or retrying and not due yet, and every row
/// of `held_keys` (keys this relay holds back: a delivery still unresolved, or their partition
/// unavailable).
///
/// The rows are deleted by the same statement, inside the savepoint `taken`: the delete stands
/// only if the step commits, which it does once every taken row was acknowledged; otherwise
/// [`give_back`] restores them all and only the acknowledged ones are deleted
/// ([`delete_published`]). One statement reads and deletes each row, as the database's own
/// claim+delete would, instead of a read and a second lookup to delete.
///
/// Each lane gives at most its share of `limit` (rounded up), its first due rows in id order:
/// a prefix of each of its keys, which is all per-key order needs (a key lives in one lane).
pub async fn take_rows(
    conn: &mut PgConnection,
    lanes: &[i32],
    held_keys: &[String],
    limit: i64,
) -> Result<Vec<ClaimedRow>, sqlx::Error> {
    if lanes.is_empty() || limit <= 0 {
        return Ok(Vec::new());
    }
    let per_lane = lane_share(limit, lanes.len());
    conn.execute("savepoint taken").await?;
    // The statement's shape keeps its plan whatever the table's statistics say (a freshly
    // filled or never analyzed outbox has none): each lane is read through its own
    // pending-rows index in id order and stops at its share, so a step reads about `limit`
    // rows, never the other lanes' rows nor every deleted row at the head of the primary key
    // (the step turns bitmap scans off, which would read a whole lane to sort it: see
    // `relay::step`); the blocking check is a scalar subquery, so it stays one probe of the
    // small `outbox_blocking` index per row. The delete finds each picked row by its ctid, in
    // the same statement (so the same snapshot): no second index lookup.
    //
    // "Due" is judged against the clock read once, after this statement's snapshot was taken,
    // not against `now()` (this transaction's start). A row committed after that start by a
    // transaction that began later (an order, or a requeue) has a `next_attempt_at` past our
    // `now()`: judged by `now()` it would be left out without holding back the later rows of its
    // key, which would then be published ahead of it. Every visible row with no attempts was
    // committed before the snapshot, so against the clock it is always due.
    let mut rows = sqlx::query_as!(
        ClaimedRow,
        r#"with clock as materialized (select clock_timestamp() as at),
         picked as materialized (
             select c.ctid as row_ctid
               from clock, unnest($1::int[]) as l(lane)
              cross join lateral (
                    select o.ctid, o.id
                      from outbox o
                     where o.lane = l.lane
                       and o.state = 'pending'
                       and o.next_attempt_at <= clock.at
                       and o.partition_key <> all($3::text[])
                       and (select b.id from outbox_blocking b
                             where b.partition_key = o.partition_key
                               and b.id < o.id
                               and (b.state <> 'pending' or b.next_attempt_at > clock.at)
                             limit 1) is null
                     order by o.id
                     limit $4) c
              order by c.id
              limit $2
         )
         delete from outbox o
          using picked p
          where o.ctid = p.row_ctid
         returning o.id, o.lane, o.event_id, o.topic, o.partition_key, o.event_type, o.source,
                   o.subject, o.payload::text as "payload!", o.traceparent, o.tracestate,
                   o.attempts, o.created_at"#,
        lanes,
        limit,
        held_keys,
        per_lane
    )
    .fetch_all(&mut *conn)
    .await?;
    // `returning` has no order; the publisher needs each key's rows in id order.
    rows.sort_unstable_by_key(|row| row.id);
    Ok(rows)
}

/// Restores every row [`take_rows`] deleted in this transaction (rolls its savepoint back), for
/// a step in which not every taken row was acknowledged.
pub async fn give_back(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    conn.execute("rollback to savepoint taken").await?;
    Ok(())
}

/// Deletes rows whose publication the broker acknowledged.
pub async fn delete_published(conn: &mut PgConnection, ids: &[i64]) -> Result<u64, sqlx::Error> {
    if ids.is_empty() {
        return Ok(0);
    }
    let deleted = sqlx::query!("delete from outbox where id = any($1)", ids)
        .execute(conn)
        .await?;
    Ok(deleted.rows_affected())
}
