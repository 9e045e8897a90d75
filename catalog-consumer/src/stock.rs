//! Applies order events to stock, exactly once per event id.
//!
//! In the caller's transaction, for each event in the order given (the order of its partition):
//! the event id is inserted into `processed_events` (`on conflict do nothing`), and only when it
//! was new is the stock decremented, guarded by `stock >= quantity`. A redelivered event changes
//! nothing; stock never goes below zero; an order that would oversell is recorded as
//! `insufficient_stock`, an unknown product as `unknown_product`. Two consumers racing on one
//! event serialise on its primary key, so only one decrements.

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

/// Applies `events` in one statement in the caller's transaction (the caller commits) and
/// returns each event's outcome, in the order given.
pub async fn apply_events(
    conn: &mut PgConnection,
    events: &[OrderEvent],
) -> Result<Vec<(Uuid, Outcome)>, sqlx::Error> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let event_ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
    let order_ids: Vec<Uuid> = events.iter().map(|e| e.order.order_id).collect();
    let product_ids: Vec<String> = events.iter().map(|e| e.order.product_id.clone()).collect();
    let quantities: Vec<i32> = events.iter().map(|e| e.order.quantity).collect();
    let partitions: Vec<i32> = events.iter().map(|e| e.partition).collect();
    let offsets: Vec<i64> = events.iter().map(|e| e.offset).collect();
    let rows = sqlx::query!(
        r#"select event_id as "event_id!", outcome as "outcome!"
             from apply_order_events($1, $2, $3, $4, $5, $6)"#,
        &event_ids,
        &order_ids,
        &product_ids,
        &quantities,
        &partitions,
        &offsets
    )
    .fetch_all(&mut *conn)
    .await?;
    if rows.len() != events.len() {
        return Err(sqlx::Error::Protocol(format!(
            "apply_order_events returned {} outcomes for {} events",
            rows.len(),
            events.len()
        )));
    }
    rows.into_iter()
        .map(|row| Ok((row.event_id, Outcome::parse(&row.outcome)?)))
        .collect()
}
