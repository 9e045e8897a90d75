//! Persistence of orders: the order row and its outbox row are written by ONE statement
//! (`queries/insert_orders.sql`), which PostgreSQL runs as one transaction: either both rows
//! exist or neither does. One statement is also one round trip, and nothing in it (no
//! `pg_notify`) serialises concurrent orders. Orders that arrive together share a statement
//! (see [`OrderWriter`]).

use std::sync::Arc;

use outbox_core::event::{OrderPlaced, ORDER_API_SOURCE, ORDER_PLACED_TYPE};
use prometheus::{Histogram, IntGauge};
use serde::{ser::SerializeStruct, Serialize, Serializer};
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot, Mutex};
use uuid::Uuid;

use crate::Metrics;

/// The status of every order this service writes (the column's default).
pub const PLACED: &str = "PLACED";

/// An order as stored and as returned by the API: its `order.placed.v1` event value and its
/// status.
#[derive(Debug, Clone)]
pub struct Order {
    pub placed: OrderPlaced,
    pub status: String,
}

impl Serialize for Order {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Field by field, because the response has always put `status` before `createdAt`,
        // which `#[serde(flatten)]` cannot; destructuring makes a new event field a compile
        // error here rather than a field the response silently lacks.
        let OrderPlaced {
            order_id,
            user_id,
            product_id,
            quantity,
            unit_price,
            total_price,
            created_at,
        } = &self.placed;
        let mut order = serializer.serialize_struct("Order", 8)?;
        order.serialize_field("orderId", order_id)?;
        order.serialize_field("userId", user_id)?;
        order.serialize_field("productId", product_id)?;
        order.serialize_field("quantity", quantity)?;
        order.serialize_field("unitPrice", unit_price)?;
        order.serialize_field("totalPrice", total_price)?;
        order.serialize_field("status", &self.status)?;
        order.serialize_field("createdAt", created_at)?;
        order.end()
    }
}

/// An [`Order`] from a `query!` record of the `orders` columns; a macro, because every
/// `query!` has a record type of its own.
macro_rules! order_from_record {
    ($record:expr) => {{
        let record = $record;
        Order {
            placed: OrderPlaced {
                order_id: record.order_id,
                user_id: record.user_id,
                product_id: record.product_id,
                quantity: record.quantity,
                unit_price: record.unit_price,
                total_price: record.total_price,
                created_at: record.created_at,
            },
            status: record.status,
        }
    }};
}

/// A validated order with everything its outbox row needs.
pub struct NewOrder<'a> {
    pub order: &'a OrderPlaced,
    pub event_id: Uuid,
    pub traceparent: &'a str,
    pub tracestate: Option<&'a str>,
    /// The key and the request it was first used with.
    pub idempotency: Option<(&'a str, &'a serde_json::Value)>,
}

pub enum Inserted {
    Created,
    /// The idempotency key exists: the request it was first used with, and its order.
    Existing {
        request: serde_json::Value,
        order: Order,
    },
}

/// Writes orders for the handlers, several per statement when they arrive together.
///
/// Each order is handed to one of [`WRITERS`] tasks. A task takes every order waiting (up to
/// [`MAX_BATCH`]) and writes them all with one statement (`queries/insert_orders.sql`), one
/// transaction and one commit: under load the commits, round trips and statement overheads are
/// shared by many orders, and at a trickle every order is written alone, at once (nothing waits
/// to fill a batch). An order's row and its outbox row are still in one transaction, and each
/// handler answers only after that transaction committed. When the database refuses a statement
/// of several orders, each of them is written again alone, so one order it refuses fails alone;
/// when the database is unavailable, every order of the statement gets that answer at once.
#[derive(Clone)]
pub struct OrderWriter {
    queue: mpsc::UnboundedSender<Pending>,
    waiting: IntGauge,
    /// For reading the order of an idempotency key already taken.
    pool: PgPool,
}

/// Writer tasks: statements in flight at once. While both are busy, arriving orders queue and
/// the next statement takes them all.
pub const WRITERS: usize = 2;

/// Most orders written by one statement.
pub const MAX_BATCH: usize = 64;

/// One order handed to the writers, and where its outcome goes: whether its rows were inserted
/// (not when its idempotency key was already taken).
struct Pending {
    row: Row,
    done: oneshot::Sender<Result<bool, sqlx::Error>>,
}

/// One order's values for `queries/insert_orders.sql`.
struct Row {
    order: OrderPlaced,
    event_id: Uuid,
    payload: serde_json::Value,
    traceparent: String,
    tracestate: Option<String>,
    key: Option<String>,
    request: Option<serde_json::Value>,
}

impl OrderWriter {
    /// Starts the writer tasks; they end once every handle of the writer is dropped.
    pub fn spawn(
        pool: PgPool,
        topic: String,
        metrics: &Metrics,
    ) -> (Self, Vec<tokio::task::JoinHandle<()>>) {
        let (queue, receiver) = mpsc::unbounded_channel();
        let receiver = Arc::new(Mutex::new(receiver));
        let writer = Writer {
            pool: pool.clone(),
            topic: topic.into(),
            batch_orders: metrics.insert_batch_orders.clone(),
            waiting: metrics.orders_waiting.clone(),
        };
        let tasks = (0..WRITERS)
            .map(|_| tokio::spawn(writer.clone().run(receiver.clone())))
            .collect();
        (
            Self {
                queue,
                waiting: metrics.orders_waiting.clone(),
                pool,
            },
            tasks,
        )
    }

    /// Writes `new` (with its outbox row); with an idempotency key already taken, writes nothing
    /// and returns the key's first request and order.
    #[tracing::instrument(skip_all, fields(order_id = %new.order.order_id, event_id = %new.event_id))]
    pub async fn insert(&self, new: &NewOrder<'_>) -> Result<Inserted, sqlx::Error> {
        let payload =
            serde_json::to_value(new.order).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        let (key, request) = match new.idempotency {
            Some((key, request)) => (Some(key), Some(request)),
            None => (None, None),
        };
        let row = Row {
            order: new.order.clone(),
            event_id: new.event_id,
            payload,
            traceparent: new.traceparent.to_owned(),
            tracestate: new.tracestate.map(str::to_owned),
            key: key.map(str::to_owned),
            request: request.cloned(),
        };
        let (done, outcome) = oneshot::channel();
        // Counted before it is sent, so the writer that takes it never counts it first.
        self.waiting.inc();
        if self.queue.send(Pending { row, done }).is_err() {
            self.waiting.dec();
            return Err(sqlx::Error::PoolClosed);
        }
        let inserted = outcome.await.map_err(|_| sqlx::Error::PoolClosed)??;
        if inserted {
            return Ok(Inserted::Created);
        }
        // With a key, the key row is inserted first; a concurrent request with the same key
        // waits on its unique index, then inserts nothing, and reads the winner's order here.
        let Some(key) = key else {
            return Err(sqlx::Error::Protocol(
                "the order insert wrote no row".into(),
            ));
        };
        let existing = sqlx::query!(
            "select request, order_id from idempotency_keys where idempotency_key = $1",
            key
        )
        .fetch_one(&self.pool)
        .await?;
        let (request, order_id) = (existing.request, existing.order_id);
        let order = find(&self.pool, order_id)
            .await?
            .ok_or(sqlx::Error::RowNotFound)?;
        Ok(Inserted::Existing { request, order })
    }
}

/// What a writer task needs.
#[derive(Clone)]
struct Writer {
    pool: PgPool,
    topic: Arc<str>,
    batch_orders: Histogram,
    waiting: IntGauge,
}

impl Writer {
    /// One writer task: takes every order waiting (after waiting for a first one), writes them,
    /// answers each, and again, until every sender is gone.
    async fn run(self, receiver: Arc<Mutex<mpsc::UnboundedReceiver<Pending>>>) {
        loop {
            let batch = {
                let mut receiver = receiver.lock().await;
                let Some(first) = receiver.recv().await else {
                    return;
                };
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match receiver.try_recv() {
                        Ok(pending) => batch.push(pending),
                        Err(_) => break,
                    }
                }
                batch
            };
            self.waiting.sub(batch.len() as i64);
            self.write(batch).await;
        }
    }

    /// Writes `batch` in one statement and answers each order. When the statement fails and
    /// holds several orders: while the database is unavailable each of them gets that answer;
    /// otherwise (the database refused the statement) each is written alone, so the order it
    /// refused fails alone.
    async fn write(&self, batch: Vec<Pending>) {
        let rows: Vec<&Row> = batch.iter().map(|pending| &pending.row).collect();
        match self.insert(&rows).await {
            Ok(inserted) => {
                for pending in batch {
                    let created = inserted.contains(&pending.row.order.order_id);
                    // The handler may be gone (its client hung up): the order stands regardless.
                    let _ = pending.done.send(Ok(created));
                }
            }
            Err(error) if batch.len() == 1 => {
                let pending = batch.into_iter().next().expect("one order");
                let _ = pending.done.send(Err(error));
            }
            Err(error) if outbox_core::db::is_unavailable(&error) => {
                // Writing each order alone would only wait for the database once per order.
                tracing::warn!(
                    orders = batch.len(),
                    %error,
                    "the orders database is unavailable; every order of the statement is refused"
                );
                for pending in batch {
                    let unavailable = std::io::Error::other(error.to_string());
                    let _ = pending.done.send(Err(sqlx::Error::Io(unavailable)));
                }
            }
            Err(error) => {
                tracing::warn!(
                    orders = batch.len(),
                    %error,
                    "a statement of several orders failed; writing each alone"
                );
                for pending in batch {
                    let outcome = self
                        .insert(&[&pending.row])
                        .await
                        .map(|inserted| inserted.contains(&pending.row.order.order_id));
                    let _ = pending.done.send(outcome);
                }
            }
        }
    }

    /// Inserts `rows` and their outbox rows in one statement; returns the ids of the orders
    /// inserted (an order whose idempotency key exists is not).
    #[tracing::instrument(skip_all, fields(orders = rows.len()))]
    async fn insert(&self, rows: &[&Row]) -> Result<Vec<Uuid>, sqlx::Error> {
        fn column<T>(rows: &[&Row], value: impl Fn(&Row) -> T) -> Vec<T> {
            rows.iter().map(|row| value(row)).collect()
        }
        self.batch_orders.observe(rows.len() as f64);
        sqlx::query_file_scalar!(
            "queries/insert_orders.sql",
            &column(rows, |r| r.order.order_id),
            &column(rows, |r| r.order.user_id.clone()),
            &column(rows, |r| r.order.product_id.clone()),
            &column(rows, |r| r.order.quantity),
            &column(rows, |r| r.order.unit_price),
            &column(rows, |r| r.order.total_price),
            &column(rows, |r| r.order.created_at),
            &column(rows, |r| r.event_id),
            &column(rows, |r| r.key.clone()) as &[Option<String>],
            &column(rows, |r| r.request.clone()) as &[Option<serde_json::Value>],
            &column(rows, |r| r.payload.clone()),
            &column(rows, |r| r.traceparent.clone()),
            &column(rows, |r| r.tracestate.clone()) as &[Option<String>],
            &*self.topic,
            ORDER_PLACED_TYPE,
            ORDER_API_SOURCE,
        )
        .fetch_all(&self.pool)
        .await
    }
}

pub async fn find(pool: &PgPool, order_id: Uuid) -> Result<Option<Order>, sqlx::Error> {
    let record = sqlx::query!(
        "select order_id, user_id, product_id, quantity, unit_price, total_price, status, created_at
           from orders where order_id = $1",
        order_id
    )
    .fetch_optional(pool)
    .await?;
    Ok(record.map(|record| order_from_record!(record)))
}

pub async fn list_for_user(
    pool: &PgPool,
    user_id: &str,
    limit: i64,
) -> Result<Vec<Order>, sqlx::Error> {
    let records = sqlx::query!(
        "select order_id, user_id, product_id, quantity, unit_price, total_price, status, created_at
           from orders where user_id = $1
          order by created_at desc, order_id desc
          limit $2",
        user_id,
        limit
    )
    .fetch_all(pool)
    .await?;
    Ok(records
        .into_iter()
        .map(|record| order_from_record!(record))
        .collect())
}

#[cfg(test)]
pub(crate) mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;

    pub(crate) fn sample() -> Order {
        Order {
            placed: OrderPlaced {
                order_id: Uuid::parse_str("01a21375-100b-7142-a702-8a5f95f1f668").unwrap(),
                user_id: "u-1".into(),
                product_id: "CATALOG-0001".into(),
                quantity: 3,
                unit_price: 1500,
                total_price: 4500,
                created_at: Utc.timestamp_micros(1_795_622_768_651_963).unwrap(),
            },
            status: PLACED.into(),
        }
    }

    #[test]
    fn an_order_serialises_as_the_response_always_has() {
        assert_eq!(
            serde_json::to_string(&sample()).unwrap(),
            r#"{"orderId":"01a21375-100b-7142-a702-8a5f95f1f668","userId":"u-1","productId":"CATALOG-0001","quantity":3,"unitPrice":1500,"totalPrice":4500,"status":"PLACED","createdAt":"2026-11-25T16:06:08.651963Z"}"#
        );
    }
}
