//! Applies order events to stock, exactly once per event id.
//!
//! In the caller's transaction, for each event in the order given (the order of its partition):
//! the event id is inserted into `processed_events` (`on conflict do nothing`), and only when it
//! was new is the stock decremented, guarded by `stock >= quantity`. A redelivered event changes
//! nothing; stock never goes below zero; an order that would oversell is recorded as
//! `insufficient_stock`, an unknown product as `unknown_product`. Two consumers racing on one
//! event serialise on its primary key, so only one decrements.
//!
//! Two paths, one rule. The common case, every product's new events in the batch fitting its
//! stock together, is one set-based statement: the events are recorded as `applied` and each
//! product is decremented once by the sum of the events this statement actually inserted (so an
//! event another consumer recorded first is never counted). The order within a product does not
//! matter then, since all of them apply. The other products (near zero, unknown, or only
//! duplicates) go through `apply_order_events`, one event at a time in partition order, so an
//! event that does not fit is `insufficient_stock` and a later smaller one may still apply.

use std::collections::HashSet;

use sqlx::PgConnection;
use uuid::Uuid;

use crate::decode::OrderEvent;

/// What applying one event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Stock was decremented.
    Applied,
    /// The event id was already processed; nothing changed (not re-recorded).
    Duplicate,
    /// The product had less stock than ordered; recorded, stock unchanged.
    InsufficientStock,
    /// No such product; recorded, nothing else changed.
    UnknownProduct,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [
        Outcome::Applied,
        Outcome::Duplicate,
        Outcome::InsufficientStock,
        Outcome::UnknownProduct,
    ];

    /// The name used in `processed_events.outcome` and as the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Duplicate => "duplicate",
            Outcome::InsufficientStock => "insufficient_stock",
            Outcome::UnknownProduct => "unknown_product",
        }
    }

    fn parse(outcome: &str) -> Result<Self, sqlx::Error> {
        Outcome::ALL
            .into_iter()
            .find(|o| o.as_str() == outcome)
            .ok_or_else(|| sqlx::Error::Protocol(format!("unknown outcome {outcome:?}")))
    }
}

/// Applies `events` in the caller's transaction (the caller commits) and returns each event's
/// outcome, in the order given.
pub async fn apply_events(
    conn: &mut PgConnection,
    events: &[OrderEvent],
) -> Result<Vec<(Uuid, Outcome)>, sqlx::Error> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let columns = Columns::of(events.iter());
    let fast = sqlx::query!(
        r#"with input as (
             select *
               from unnest($1::uuid[], $2::uuid[], $3::text[], $4::int[], $5::int[], $6::bigint[])
                    with ordinality as i(event_id, order_id, product_id, quantity,
                                         kafka_partition, kafka_offset, n)
         ), fits as (
             select i.product_id
               from input i
               join products p on p.product_id = i.product_id
              where not exists (select 1 from processed_events pe where pe.event_id = i.event_id)
              group by i.product_id, p.stock
             having sum(i.quantity) <= p.stock
         ), inserted as (
             insert into processed_events
                 (event_id, order_id, product_id, quantity, outcome, kafka_partition, kafka_offset)
             select i.event_id, i.order_id, i.product_id, i.quantity, 'applied',
                    i.kafka_partition, i.kafka_offset
               from input i
              where i.product_id in (select product_id from fits)
              order by i.n
             on conflict on constraint processed_events_pkey do nothing
             returning event_id, product_id, quantity
         ), decremented as (
             update products p
                set stock = p.stock - t.quantity, updated_at = now()
               from (select product_id, sum(quantity) as quantity
                       from inserted group by product_id) t
              where p.product_id = t.product_id
             returning p.product_id
         )
         select coalesce((select array_agg(product_id) from fits), '{}') as "products!",
                coalesce((select array_agg(event_id) from inserted), '{}') as "applied!",
                (select count(*) from decremented) as "decremented!""#,
        &columns.event_ids,
        &columns.order_ids,
        &columns.product_ids,
        &columns.quantities,
        &columns.partitions,
        &columns.offsets
    )
    .fetch_one(&mut *conn)
    .await?;
    let fast_products: HashSet<String> = fast.products.into_iter().collect();
    let applied: HashSet<Uuid> = fast.applied.into_iter().collect();

    let rest: Vec<&OrderEvent> = events
        .iter()
        .filter(|e| !fast_products.contains(&e.order.product_id))
        .collect();
    let mut rest_outcomes = if rest.is_empty() {
        Vec::new()
    } else {
        apply_one_by_one(conn, &Columns::of(rest.iter().copied())).await?
    }
    .into_iter();

    let mut counted: HashSet<Uuid> = HashSet::new();
    events
        .iter()
        .map(|event| {
            if fast_products.contains(&event.order.product_id) {
                // The first copy of an id this statement inserted applied; any other copy is a
                // duplicate (recorded before, or earlier in this batch).
                let first = counted.insert(event.event_id);
                let outcome = if first && applied.contains(&event.event_id) {
                    Outcome::Applied
                } else {
                    Outcome::Duplicate
                };
                Ok((event.event_id, outcome))
            } else {
                rest_outcomes.next().ok_or_else(|| {
                    sqlx::Error::Protocol("apply_order_events returned too few outcomes".into())
                })
            }
        })
        .collect()
}

/// The events as the parallel arrays the statements take.
struct Columns {
    event_ids: Vec<Uuid>,
    order_ids: Vec<Uuid>,
    product_ids: Vec<String>,
    quantities: Vec<i32>,
    partitions: Vec<i32>,
    offsets: Vec<i64>,
}

impl Columns {
    fn of<'a>(events: impl Iterator<Item = &'a OrderEvent>) -> Self {
        let mut columns = Self {
            event_ids: Vec::new(),
            order_ids: Vec::new(),
            product_ids: Vec::new(),
            quantities: Vec::new(),
            partitions: Vec::new(),
            offsets: Vec::new(),
        };
        for event in events {
            columns.event_ids.push(event.event_id);
            columns.order_ids.push(event.order.order_id);
            columns.product_ids.push(event.order.product_id.clone());
            columns.quantities.push(event.order.quantity);
            columns.partitions.push(event.partition);
            columns.offsets.push(event.offset);
        }
        columns
    }
}

/// The ordered rule, one event at a time (`apply_order_events`), for products near zero,
/// unknown products and duplicates.
async fn apply_one_by_one(
    conn: &mut PgConnection,
    columns: &Columns,
) -> Result<Vec<(Uuid, Outcome)>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"select event_id as "event_id!", outcome as "outcome!"
             from apply_order_events($1, $2, $3, $4, $5, $6)"#,
        &columns.event_ids,
        &columns.order_ids,
        &columns.product_ids,
        &columns.quantities,
        &columns.partitions,
        &columns.offsets
    )
    .fetch_all(&mut *conn)
    .await?;
    if rows.len() != columns.event_ids.len() {
        return Err(sqlx::Error::Protocol(format!(
            "apply_order_events returned {} outcomes for {} events",
            rows.len(),
            columns.event_ids.len()
        )));
    }
    rows.into_iter()
        .map(|row| Ok((row.event_id, Outcome::parse(&row.outcome)?)))
        .collect()
}
