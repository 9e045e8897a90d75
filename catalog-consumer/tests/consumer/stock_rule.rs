//! The stock rule on its own, against the database only: each case through the
//! `apply_order_events` function called in SQL, and through `stock::apply_events` (the set-based
//! statement where every event of a product fits, the function for the rest), which must agree.

use std::collections::HashMap;

use catalog_consumer::{
    decode::OrderEvent,
    stock::{
        self,
        Outcome::{self, Applied, Duplicate, InsufficientStock, UnknownProduct},
    },
};
use chrono::Utc;
use outbox_core::{db::CATALOG_MIGRATOR, event::OrderPlaced};
use sqlx::PgPool;
use uuid::Uuid;

/// One product's story: its stock, the batches applied to it in order (event label,
/// quantity), each event's outcome and the stock left.
struct Case {
    description: &'static str,
    /// `None`: the product does not exist.
    stock: Option<i32>,
    batches: &'static [&'static [(u8, i32)]],
    outcomes: &'static [&'static [Outcome]],
    stock_after: Option<i32>,
}

#[rustfmt::skip]
const CASES: &[Case] = &[
    Case { description: "an order that fits", stock: Some(10),
           batches: &[&[(1, 3)]], outcomes: &[&[Applied]], stock_after: Some(7) },
    Case { description: "an order of exactly the stock", stock: Some(5),
           batches: &[&[(1, 5)]], outcomes: &[&[Applied]], stock_after: Some(0) },
    Case { description: "an order that does not fit", stock: Some(2),
           batches: &[&[(1, 3)]], outcomes: &[&[InsufficientStock]], stock_after: Some(2) },
    Case { description: "a later smaller order after one that did not fit", stock: Some(5),
           batches: &[&[(1, 4), (2, 3), (3, 1)]],
           outcomes: &[&[Applied, InsufficientStock, Applied]], stock_after: Some(0) },
    Case { description: "a duplicate event id, in the same batch and in a later one",
           stock: Some(10), batches: &[&[(1, 3), (1, 3)], &[(1, 3)]],
           outcomes: &[&[Applied, Duplicate], &[Duplicate]], stock_after: Some(7) },
    Case { description: "a duplicate of an order that did not fit", stock: Some(2),
           batches: &[&[(1, 3)], &[(1, 3), (2, 2)]],
           outcomes: &[&[InsufficientStock], &[Duplicate, Applied]], stock_after: Some(0) },
    Case { description: "an unknown product", stock: None,
           batches: &[&[(1, 1)]], outcomes: &[&[UnknownProduct]], stock_after: None },
];

/// A catalog database with one product per case.
struct Catalog {
    pool: PgPool,
}

impl Catalog {
    async fn new() -> Self {
        let (_, pool) = testkit::fresh_database(&CATALOG_MIGRATOR)
            .await
            .expect("fresh catalog database");
        for case in CASES {
            if let Some(stock) = case.stock {
                sqlx::query(
                    "insert into products (product_id, product_name, stock, unit_price)
                     values ($1, $1, $2, 1500)",
                )
                .bind(case.description)
                .bind(stock)
                .execute(&pool)
                .await
                .expect("seed product");
            }
        }
        Self { pool }
    }

    async fn stock(&self, product_id: &str) -> Option<i32> {
        sqlx::query_scalar("select stock from products where product_id = $1")
            .bind(product_id)
            .fetch_optional(&self.pool)
            .await
            .expect("stock")
    }

    async fn recorded(&self, event_id: Uuid) -> Vec<Outcome> {
        sqlx::query_scalar("select outcome from processed_events where event_id = $1")
            .bind(event_id)
            .fetch_all(&self.pool)
            .await
            .expect("recorded outcome")
    }

    /// Calls the function itself, in SQL.
    async fn apply_in_sql(&self, product_id: &str, events: &[(Uuid, i32)]) -> Vec<Outcome> {
        let (ids, quantities): (Vec<Uuid>, Vec<i32>) = events.iter().copied().unzip();
        sqlx::query_as::<_, (Uuid, Outcome)>(
            "select event_id, outcome
               from apply_order_events(array(
                        select row(e, gen_random_uuid(), $3, q, 0, n - 1)::order_event
                          from unnest($1::uuid[], $2::int[]) with ordinality as t(e, q, n)
                         order by n))",
        )
        .bind(&ids)
        .bind(&quantities)
        .bind(product_id)
        .fetch_all(&self.pool)
        .await
        .expect("apply_order_events")
        .into_iter()
        .zip(&ids)
        .map(|((event_id, outcome), id)| {
            assert_eq!(event_id, *id, "outcomes come in the order given");
            outcome
        })
        .collect()
    }

    /// Goes through the consumer's entry point, in one transaction.
    async fn apply_in_rust(&self, product_id: &str, events: &[(Uuid, i32)]) -> Vec<Outcome> {
        let events: Vec<OrderEvent> = events
            .iter()
            .enumerate()
            .map(|(offset, (event_id, quantity))| {
                order_event(*event_id, product_id, *quantity, offset)
            })
            .collect();
        let mut tx = self
            .pool
            .begin_with(outbox_core::db::BEGIN_WITHOUT_SEQ_SCANS)
            .await
            .expect("begin");
        let outcomes = stock::apply_events(&mut tx, &events)
            .await
            .expect("apply_events");
        tx.commit().await.expect("commit");
        outcomes
            .into_iter()
            .zip(&events)
            .map(|((event_id, outcome), event)| {
                assert_eq!(event_id, event.event_id, "outcomes come in the order given");
                outcome
            })
            .collect()
    }
}

fn order_event(event_id: Uuid, product_id: &str, quantity: i32, offset: usize) -> OrderEvent {
    OrderEvent {
        event_id,
        time: Utc::now(),
        order: OrderPlaced {
            order_id: Uuid::now_v7(),
            user_id: "user-1".into(),
            product_id: product_id.into(),
            quantity,
            unit_price: 1500,
            total_price: i64::from(quantity) * 1500,
            created_at: Utc::now(),
        },
        partition: 0,
        offset: offset as i64,
        trace: Default::default(),
    }
}

#[derive(Clone, Copy, Debug)]
enum Path {
    Sql,
    Rust,
}

/// Runs every case through `path`, checking the outcomes, what was recorded and the stock left.
async fn every_case_gets_its_outcomes(path: Path) {
    let catalog = Catalog::new().await;
    for case in CASES {
        let what = format!("{} ({path:?})", case.description);
        let mut ids: HashMap<u8, Uuid> = HashMap::new();
        let mut first_outcome: HashMap<Uuid, Outcome> = HashMap::new();
        for (batch, expected) in case.batches.iter().zip(case.outcomes) {
            let events: Vec<(Uuid, i32)> = batch
                .iter()
                .map(|(label, quantity)| {
                    (*ids.entry(*label).or_insert_with(Uuid::now_v7), *quantity)
                })
                .collect();
            let outcomes = match path {
                Path::Sql => catalog.apply_in_sql(case.description, &events).await,
                Path::Rust => catalog.apply_in_rust(case.description, &events).await,
            };
            assert_eq!(outcomes, *expected, "{what}");
            for ((event_id, _), outcome) in events.iter().zip(outcomes) {
                first_outcome.entry(*event_id).or_insert(outcome);
            }
        }
        for (event_id, outcome) in &first_outcome {
            assert_eq!(
                catalog.recorded(*event_id).await,
                [*outcome],
                "{what}: one row per event, with its first outcome"
            );
        }
        assert_eq!(
            catalog.stock(case.description).await,
            case.stock_after,
            "{what}"
        );
    }
}

#[tokio::test]
async fn the_stock_function_called_in_sql_gives_each_case_its_outcome_and_stock() {
    every_case_gets_its_outcomes(Path::Sql).await;
}

#[tokio::test]
async fn the_consumers_stock_step_gives_each_case_the_same_outcomes_as_the_function() {
    every_case_gets_its_outcomes(Path::Rust).await;
}

#[tokio::test]
async fn every_stock_outcome_of_the_database_is_the_consumers_outcome_of_the_same_name() {
    let catalog = Catalog::new().await;
    let (names, outcomes): (Vec<String>, Vec<Outcome>) = sqlx::query_as::<_, (String, Outcome)>(
        "select o::text, o from unnest(enum_range(null::stock_outcome)) as o",
    )
    .fetch_all(&catalog.pool)
    .await
    .expect("stock_outcome values")
    .into_iter()
    .unzip();
    assert_eq!(outcomes, Outcome::ALL);
    let labels: Vec<&str> = Outcome::ALL.iter().map(|o| o.as_str()).collect();
    assert_eq!(names, labels, "the metric labels are the database's names");
}

#[tokio::test]
async fn the_apply_probes_processed_events_by_key_when_its_plan_was_made_on_an_empty_table() {
    let catalog = Catalog::new().await;
    let product = CASES[0].description;
    sqlx::query("update products set stock = 1000000 where product_id = $1")
        .bind(product)
        .execute(&catalog.pool)
        .await
        .expect("stock");
    // One connection, as a consumer's pool connection: its statement cache keeps the plan made
    // while processed_events was empty (the generic plan from the sixth execution on).
    let mut conn = catalog.pool.acquire().await.expect("connection");
    for round in 0..8 {
        let events: Vec<OrderEvent> = (0..10)
            .map(|offset| order_event(Uuid::now_v7(), product, 1, offset))
            .collect();
        let mut tx =
            sqlx::Connection::begin_with(&mut *conn, outbox_core::db::BEGIN_WITHOUT_SEQ_SCANS)
                .await
                .expect("begin");
        // The counter also holds this session's earlier scans not yet reported (the
        // migrations'), so the batch's are the difference.
        let before = testkit::unreported_seq_scans(&mut tx, "processed_events")
            .await
            .expect("seq scans");
        let outcomes = stock::apply_events(&mut tx, &events)
            .await
            .expect("apply_events");
        assert!(
            outcomes.iter().all(|(_, outcome)| *outcome == Applied),
            "round {round}: every event applies"
        );
        assert_eq!(
            testkit::unreported_seq_scans(&mut tx, "processed_events")
                .await
                .expect("seq scans")
                - before,
            0,
            "round {round}: the batch read processed_events by a seq scan, as a plan made on \
             an empty table does; it would read the whole table for every batch as it grows"
        );
        tx.commit().await.expect("commit");
    }
}
