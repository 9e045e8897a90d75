//! Persistence of orders: the order row and its outbox row are written by ONE statement
//! (`queries/insert_order.sql`), which PostgreSQL runs as one transaction: either both rows
//! exist or neither does. One statement is also one round trip, and nothing in it (no
//! `pg_notify`) serialises concurrent orders.

use outbox_core::event::{OrderPlaced, ORDER_API_SOURCE, ORDER_PLACED_TYPE};
use serde::{ser::SerializeStruct, Serialize, Serializer};
use sqlx::PgPool;
use uuid::Uuid;

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
    pub topic: &'a str,
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

#[tracing::instrument(skip_all, fields(order_id = %new.order.order_id, event_id = %new.event_id))]
pub async fn insert_with_event(pool: &PgPool, new: &NewOrder<'_>) -> Result<Inserted, sqlx::Error> {
    let order = new.order;
    let payload = serde_json::to_value(order).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let (key, request) = match new.idempotency {
        Some((key, request)) => (Some(key), Some(request)),
        None => (None, None),
    };
    // With a key, the key row is inserted first; a concurrent request with the same key waits on
    // its unique index, then inserts nothing, and reads the winner's order below.
    let inserted = sqlx::query_file_scalar!(
        "queries/insert_order.sql",
        order.order_id,
        order.user_id,
        order.product_id,
        order.quantity,
        order.unit_price,
        order.total_price,
        order.created_at,
        new.event_id,
        key,
        request,
        new.topic,
        ORDER_PLACED_TYPE,
        ORDER_API_SOURCE,
        payload,
        new.traceparent,
        new.tracestate,
    )
    .fetch_one(pool)
    .await?;
    if inserted == 1 {
        return Ok(Inserted::Created);
    }
    let Some(key) = key else {
        return Err(sqlx::Error::Protocol(
            "the order insert wrote no row".into(),
        ));
    };
    let existing = sqlx::query!(
        "select request, order_id from idempotency_keys where idempotency_key = $1",
        key
    )
    .fetch_one(pool)
    .await?;
    let (request, order_id) = (existing.request, existing.order_id);
    let order = find(pool, order_id)
        .await?
        .ok_or(sqlx::Error::RowNotFound)?;
    Ok(Inserted::Existing { request, order })
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
