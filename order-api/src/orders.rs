//! Persistence of orders: the order row and its outbox row are written by ONE statement, which
//! PostgreSQL runs as one transaction: either both rows exist or neither does. One statement is
//! also one round trip, and nothing in it (no `pg_notify`) serialises concurrent orders.

use chrono::{DateTime, Utc};
use outbox_core::event::{OrderPlaced, ORDER_API_SOURCE, ORDER_PLACED_TYPE};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

/// An order as stored and as returned by the API.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Order {
    pub order_id: Uuid,
    pub user_id: String,
    pub product_id: String,
    pub quantity: i32,
    pub unit_price: i64,
    /// quantity × unitPrice, minor units.
    pub total_price: i64,
    #[schema(example = "PLACED")]
    pub status: String,
    pub created_at: DateTime<Utc>,
}

/// A validated order with everything its outbox row needs.
pub struct NewOrder<'a> {
    pub order: &'a OrderPlaced,
    pub event_id: Uuid,
    pub topic: &'a str,
    pub traceparent: &'a str,
    pub tracestate: Option<&'a str>,
    /// The key and the canonical request it was first used with.
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
    let inserted = sqlx::query_scalar!(
        r#"with gate as (
             insert into idempotency_keys (idempotency_key, request, order_id)
             select $9, $10, $1 where $9::text is not null
             on conflict (idempotency_key) do nothing
             returning order_id
         ), new_order as (
             insert into orders (order_id, user_id, product_id, quantity, unit_price, total_price, created_at)
             select $1, $2, $3, $4, $5, $6, $7
             where $9::text is null or exists (select 1 from gate)
             returning order_id
         ), new_event as (
             insert into outbox (event_id, topic, partition_key, event_type, source, subject, payload, traceparent, tracestate, created_at)
             select $8, $11, $3, $12, $13, order_id::text, $14, $15, $16, $7 from new_order
             returning id
         )
         select count(*) as "inserted!" from new_event"#,
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
    sqlx::query_as!(
        Order,
        "select order_id, user_id, product_id, quantity, unit_price, total_price, status, created_at
           from orders where order_id = $1",
        order_id
    )
    .fetch_optional(pool)
    .await
}

pub async fn list_for_user(
    pool: &PgPool,
    user_id: &str,
    limit: i64,
) -> Result<Vec<Order>, sqlx::Error> {
    sqlx::query_as!(
        Order,
        "select order_id, user_id, product_id, quantity, unit_price, total_price, status, created_at
           from orders where user_id = $1
          order by created_at desc, order_id desc
          limit $2",
        user_id,
        limit
    )
    .fetch_all(pool)
    .await
}
