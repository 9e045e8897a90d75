//! `catalog-consumer audit`: checks the end-to-end guarantee from the outside, by reconciling
//! the orders database with the catalog database's `processed_events`.
//!
//! - Every order older than the grace period (by the orders database's clock) and younger than
//!   the processed events' retention has at least one `processed_events` row; one that has none
//!   is `missing` (its event was lost, or is still stuck in the outbox, the broker or the
//!   consumer). Older orders are not judged: their `processed_events` rows may have been pruned.
//! - Every `processed_events` row belongs to an order of the orders database; one that does not
//!   is `unexpected` (an event no order-api wrote, or an audit against the wrong databases).
//!
//! Both sides are streamed in `order_id` order and merged, so memory stays bounded (by the
//! listing limit) however many orders there are.
//!
//! It never writes: its connections are read-only (`default_transaction_read_only`, and each
//! reads in a `read only` transaction) and it runs no migrations, so a role with SELECT on
//! `orders` and `processed_events` is all it needs.
//!
//! The catalog snapshot is taken before the orders snapshot. An event is processed only after
//! its order committed, so every processed event the audit sees has its order in the (later)
//! orders snapshot: an order placed while the audit runs is never reported as unexpected.

use std::{collections::BTreeMap, io::Write, pin::pin, process::ExitCode, time::Duration};

use anyhow::{anyhow, Context};
use futures::{Stream, TryStreamExt};
use outbox_core::db;
use serde::Serialize;
use sqlx::{postgres::PgConnectOptions, Connection, PgConnection, Postgres, Transaction};
use uuid::Uuid;

use crate::stock::Outcome;

/// What `catalog-consumer audit` needs: both databases and how to judge them.
#[derive(Debug, Clone, clap::Args)]
pub struct AuditArgs {
    /// PostgreSQL URL of the catalog database (reads `processed_events`).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres:postgres@127.0.0.1:5432/catalog"
    )]
    pub database_url: String,
    /// PostgreSQL URL of the orders database (reads `orders`).
    #[arg(long, env = "ORDERS_DATABASE_URL")]
    pub orders_database_url: String,
    /// Orders younger than this many seconds (by the orders database's clock) may still be on
    /// their way and are not reported as missing.
    #[arg(long, env = "AUDIT_GRACE_SECS", default_value_t = 60)]
    pub grace_secs: u32,
    /// Most ids listed in `missing` and in `unexpected`; both are counted in full.
    #[arg(long, env = "AUDIT_LIMIT", default_value_t = 100)]
    pub limit: usize,
    /// The consumer's PROCESSED_EVENTS_RETENTION: orders older than it minus one hour (for
    /// clock differences) are not judged, since their processed events may have been pruned.
    #[arg(long, env = "PROCESSED_EVENTS_RETENTION", default_value = "7d", value_parser = outbox_core::retention::parse_duration)]
    pub processed_events_retention: Duration,
    /// Seconds to wait for each database to accept the connection.
    #[arg(long, env = "AUDIT_CONNECT_TIMEOUT_SECS", default_value_t = 10)]
    pub connect_timeout_secs: u64,
}

/// What `catalog-consumer audit` prints, as one JSON object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditReport {
    /// Orders in the orders database.
    pub orders: u64,
    /// Rows of `processed_events`.
    pub processed: u64,
    /// Rows of `processed_events` by outcome; every outcome a row can hold is present.
    pub outcomes: BTreeMap<String, u64>,
    /// The grace period the audit was run with.
    pub grace_secs: u32,
    /// Orders younger than the grace period with no processed event yet (not missing).
    pub unprocessed_within_grace: u64,
    /// Orders older than this many seconds are not judged (PROCESSED_EVENTS_RETENTION minus one
    /// hour): their processed events may have been pruned.
    pub window_secs: u64,
    /// Orders older than the window with no processed event (expected once pruned; not missing).
    pub unchecked_older_than_window: u64,
    /// Orders older than the grace period with no processed event.
    pub missing_count: u64,
    /// The first of them (by order id), up to the limit.
    pub missing: Vec<Uuid>,
    /// Processed events whose order is not in the orders database.
    pub unexpected_count: u64,
    /// Their event ids (ordered by order id), up to the limit.
    pub unexpected: Vec<Uuid>,
}

impl AuditReport {
    fn new(grace_secs: u32) -> Self {
        Self {
            orders: 0,
            processed: 0,
            outcomes: Outcome::RECORDED
                .iter()
                .map(|o| (o.as_str().to_owned(), 0))
                .collect(),
            grace_secs,
            unprocessed_within_grace: 0,
            window_secs: 0,
            unchecked_older_than_window: 0,
            missing_count: 0,
            missing: Vec::new(),
            unexpected_count: 0,
            unexpected: Vec::new(),
        }
    }

    /// Nothing missing and nothing unexpected.
    pub fn is_clean(&self) -> bool {
        self.missing_count == 0 && self.unexpected_count == 0
    }
}

/// An order as the audit reads it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OrderRow {
    pub order_id: Uuid,
    /// Created longer ago than the grace period: it must have been processed by now.
    pub due: bool,
    /// Created within the window: its processed event cannot have been pruned yet.
    pub checked: bool,
}

/// A `processed_events` row as the audit reads it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ProcessedRow {
    pub order_id: Uuid,
    pub event_id: Uuid,
    pub outcome: Outcome,
}

/// `catalog-consumer audit`: prints the report as one JSON object on stdout and returns the exit
/// status: 0 when clean, 1 when something is missing or unexpected, 2 (message on stderr, no
/// JSON) when the audit could not run.
pub async fn print_report(args: &AuditArgs) -> ExitCode {
    let report = match run(args).await {
        Ok(report) => report,
        Err(error) => {
            eprintln!("catalog-consumer audit: {}", describe(&error));
            return ExitCode::from(2);
        }
    };
    let printed = serde_json::to_string(&report)
        .map_err(anyhow::Error::from)
        .and_then(|json| Ok(writeln!(std::io::stdout().lock(), "{json}")?));
    match printed {
        Ok(()) if report.is_clean() => ExitCode::SUCCESS,
        Ok(()) => ExitCode::from(1),
        Err(error) => {
            eprintln!("catalog-consumer audit: cannot print the report: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// The error and its causes on one line, each said once (a database error's source repeats its
/// message).
fn describe(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain().map(ToString::to_string) {
        if !text.ends_with(&cause) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&cause);
        }
    }
    text
}

/// Reads both databases (read-only) and reconciles them.
pub async fn run(args: &AuditArgs) -> anyhow::Result<AuditReport> {
    let timeout = Duration::from_secs(args.connect_timeout_secs);
    let window = args
        .processed_events_retention
        .saturating_sub(Duration::from_secs(3_600));
    let mut catalog = connect(
        &args.database_url,
        "catalog database (--database-url / DATABASE_URL)",
        timeout,
    )
    .await?;
    let mut orders = connect(
        &args.orders_database_url,
        "orders database (--orders-database-url / ORDERS_DATABASE_URL)",
        timeout,
    )
    .await?;
    // Catalog first: see the module docs.
    let mut catalog_tx = snapshot(&mut catalog)
        .await
        .context("cannot start reading the catalog database")?;
    let mut orders_tx = snapshot(&mut orders)
        .await
        .context("cannot start reading the orders database")?;

    // Runtime-checked queries: the offline data of `query!` is per database schema, and this one
    // command reads two databases.
    let order_rows = sqlx::query_as::<_, OrderRow>(
        "select order_id, created_at < now() - make_interval(secs => $1) as due,
                created_at >= now() - make_interval(secs => $2) as checked
           from orders
          order by order_id",
    )
    .bind(f64::from(args.grace_secs))
    .bind(window.as_secs_f64())
    .fetch(&mut *orders_tx);
    let processed_rows = sqlx::query_as::<_, ProcessedRow>(
        "select order_id, event_id, outcome
           from processed_events
          order by order_id, event_id",
    )
    .fetch(&mut *catalog_tx);
    let mut report = reconcile(
        order_rows.map_err(|e| anyhow::Error::new(e).context("cannot read `orders`")),
        processed_rows.map_err(|e| anyhow::Error::new(e).context("cannot read `processed_events`")),
        args.grace_secs,
        args.limit,
    )
    .await?;
    report.window_secs = window.as_secs();

    // Nothing was written; ending the transactions only releases their snapshots.
    orders_tx.rollback().await.ok();
    catalog_tx.rollback().await.ok();
    orders.close().await.ok();
    catalog.close().await.ok();
    Ok(report)
}

/// Merges orders and processed events, both in ascending `order_id` order, into the report.
pub async fn reconcile<O, P>(
    orders: O,
    processed: P,
    grace_secs: u32,
    limit: usize,
) -> anyhow::Result<AuditReport>
where
    O: Stream<Item = anyhow::Result<OrderRow>>,
    P: Stream<Item = anyhow::Result<ProcessedRow>>,
{
    let (orders, processed) = (pin!(orders), pin!(processed));
    let mut orders = Sorted::new(orders, "orders", true);
    let mut processed = Sorted::new(processed, "processed_events", false);
    let mut report = AuditReport::new(grace_secs);
    let mut order = orders.next(|o| o.order_id).await?;
    let mut event = processed.next(|e| e.order_id).await?;
    // Whether the current order has a processed event (it stays current until the events pass
    // it, so several events of one order all match it).
    let mut matched = false;
    loop {
        let event_is_next = match (&order, &event) {
            (None, None) => break,
            (Some(o), Some(e)) => e.order_id <= o.order_id,
            (None, Some(_)) => true,
            (Some(_), None) => false,
        };
        if event_is_next {
            let e = event.take().expect("an event is next");
            report.count_processed(&e);
            if order.as_ref().is_some_and(|o| o.order_id == e.order_id) {
                matched = true;
            } else {
                report.unexpected_count += 1;
                if report.unexpected.len() < limit {
                    report.unexpected.push(e.event_id);
                }
            }
            event = processed.next(|e| e.order_id).await?;
        } else {
            let o = order.take().expect("an order is next");
            report.orders += 1;
            if !matched && !o.checked {
                report.unchecked_older_than_window += 1;
            } else if !matched && o.due {
                report.missing_count += 1;
                if report.missing.len() < limit {
                    report.missing.push(o.order_id);
                }
            } else if !matched {
                report.unprocessed_within_grace += 1;
            }
            matched = false;
            order = orders.next(|o| o.order_id).await?;
        }
    }
    Ok(report)
}

impl AuditReport {
    fn count_processed(&mut self, event: &ProcessedRow) {
        self.processed += 1;
        *self
            .outcomes
            .entry(event.outcome.as_str().to_owned())
            .or_default() += 1;
    }
}

/// A stream checked to come in `order_id` order: the merge is only right if both databases sort
/// uuids as Rust does (they do: PostgreSQL compares uuids bytewise, as `Uuid`'s `Ord`), and this
/// fails loudly rather than report wrong ids if that ever stops being true.
struct Sorted<S> {
    stream: S,
    what: &'static str,
    strict: bool,
    last: Option<Uuid>,
}

impl<S, T> Sorted<S>
where
    S: Stream<Item = anyhow::Result<T>> + Unpin,
{
    fn new(stream: S, what: &'static str, strict: bool) -> Self {
        Self {
            stream,
            what,
            strict,
            last: None,
        }
    }

    async fn next(&mut self, key: impl Fn(&T) -> Uuid) -> anyhow::Result<Option<T>> {
        let Some(row) = self.stream.try_next().await? else {
            return Ok(None);
        };
        let id = key(&row);
        if let Some(last) = self.last {
            if id < last || (self.strict && id == last) {
                anyhow::bail!(
                    "{} did not come in order_id order ({id} after {last})",
                    self.what
                );
            }
        }
        self.last = Some(id);
        Ok(Some(row))
    }
}

/// One read-only connection, named `catalog-consumer-audit` in `pg_stat_activity` unless the URL
/// names it.
async fn connect(url: &str, what: &str, timeout: Duration) -> anyhow::Result<PgConnection> {
    let options: PgConnectOptions = url
        .parse()
        .with_context(|| format!("the URL of the {what} is not a valid postgres:// URL"))?;
    let options = match options.get_application_name() {
        Some(_) => options,
        None => options.application_name("catalog-consumer-audit"),
    };
    let options = options.options([("default_transaction_read_only", "on")]);
    let target = db::describe(&options);
    tokio::time::timeout(timeout, PgConnection::connect_with(&options))
        .await
        .map_err(|_| {
            anyhow!("cannot connect to the {what} at {target}: no answer within {timeout:?}")
        })?
        .with_context(|| format!("cannot connect to the {what} at {target}"))
}

/// A read-only transaction whose snapshot is taken now: everything read in it is as of now.
async fn snapshot(connection: &mut PgConnection) -> sqlx::Result<Transaction<'_, Postgres>> {
    let mut tx = connection.begin().await?;
    sqlx::query("set transaction isolation level repeatable read, read only")
        .execute(&mut *tx)
        .await?;
    // A repeatable-read snapshot is taken by the transaction's first query, not by `begin`.
    sqlx::query("select 1").execute(&mut *tx).await?;
    Ok(tx)
}

#[cfg(test)]
mod tests {
    use futures::stream;

    use super::*;

    fn id(n: u8) -> Uuid {
        Uuid::from_bytes([n; 16])
    }

    fn order(n: u8, due: bool) -> anyhow::Result<OrderRow> {
        Ok(OrderRow {
            order_id: id(n),
            due,
            checked: true,
        })
    }

    fn event(order: u8, event: u8, outcome: Outcome) -> anyhow::Result<ProcessedRow> {
        Ok(ProcessedRow {
            order_id: id(order),
            event_id: id(event),
            outcome,
        })
    }

    #[tokio::test]
    async fn interleaved_gaps_on_both_sides_are_found_and_duplicates_match_one_order() {
        let orders = vec![
            order(2, true),
            order(4, true),
            order(6, false),
            order(8, true),
        ];
        let events = vec![
            event(1, 101, Outcome::Applied),
            event(2, 102, Outcome::Applied),
            event(2, 103, Outcome::Applied),
            event(5, 105, Outcome::InsufficientStock),
            event(8, 108, Outcome::UnknownProduct),
            event(9, 109, Outcome::Applied),
        ];
        let report = reconcile(stream::iter(orders), stream::iter(events), 60, 100)
            .await
            .unwrap();
        assert_eq!(report.orders, 4);
        assert_eq!(report.processed, 6);
        assert_eq!(report.outcomes["applied"], 4);
        assert_eq!(report.outcomes["insufficient_stock"], 1);
        assert_eq!(report.outcomes["unknown_product"], 1);
        assert_eq!(report.missing, [id(4)]);
        assert_eq!(report.unprocessed_within_grace, 1);
        assert_eq!(report.unexpected, [id(101), id(105), id(109)]);
        assert_eq!(report.unexpected_count, 3);
        assert!(!report.is_clean());
    }

    #[tokio::test]
    async fn listings_stop_at_the_limit_but_counts_do_not() {
        let orders: Vec<_> = (1..=10).map(|n| order(n, true)).collect();
        let events: Vec<_> = (11..=20).map(|n| event(n, n, Outcome::Applied)).collect();
        let report = reconcile(stream::iter(orders), stream::iter(events), 60, 3)
            .await
            .unwrap();
        assert_eq!(report.missing_count, 10);
        assert_eq!(report.missing, [id(1), id(2), id(3)]);
        assert_eq!(report.unexpected_count, 10);
        assert_eq!(report.unexpected, [id(11), id(12), id(13)]);
    }

    #[tokio::test]
    async fn rows_out_of_order_fail_the_audit_instead_of_misreporting() {
        let orders = vec![order(3, true), order(2, true)];
        let error = reconcile(stream::iter(orders), stream::empty(), 60, 100)
            .await
            .unwrap_err();
        assert!(error.to_string().contains("order_id order"), "{error:#}");
    }
}
