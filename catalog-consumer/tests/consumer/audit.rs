//! `catalog-consumer audit`, run as the real binary against a fresh orders database and a fresh
//! catalog database, both filled directly with SQL (no broker involved).

use std::process::{Command, Stdio};

use outbox_core::db::{CATALOG_MIGRATOR, ORDERS_MIGRATOR};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

/// Old enough for any grace period the tests use.
const AN_HOUR: f64 = 3600.0;

struct Databases {
    orders_url: String,
    orders: PgPool,
    catalog_url: String,
    catalog: PgPool,
}

impl Databases {
    async fn new() -> Self {
        let (orders_url, orders) = testkit::fresh_database(&ORDERS_MIGRATOR)
            .await
            .expect("fresh orders database");
        let (catalog_url, catalog) = testkit::fresh_database(&CATALOG_MIGRATOR)
            .await
            .expect("fresh catalog database");
        Self {
            orders_url,
            orders,
            catalog_url,
            catalog,
        }
    }

    /// An order created `age_secs` ago by the orders database's clock; returns its id.
    async fn order(&self, age_secs: f64) -> Uuid {
        let order_id = Uuid::now_v7();
        sqlx::query(
            "insert into orders
                 (order_id, user_id, product_id, quantity, unit_price, total_price, created_at)
             values ($1, 'user-1', 'CATALOG-0001', 2, 1500, 3000,
                     now() - make_interval(secs => $2))",
        )
        .bind(order_id)
        .bind(age_secs)
        .execute(&self.orders)
        .await
        .expect("insert order");
        order_id
    }

    /// The `processed_events` row of `order_id`'s event, as the consumer writes it; returns the
    /// event id.
    async fn processed(&self, order_id: Uuid, outcome: &str) -> Uuid {
        let event_id = Uuid::now_v7();
        self.processed_many(&[order_id], &[event_id], outcome).await;
        event_id
    }

    async fn processed_many(&self, order_ids: &[Uuid], event_ids: &[Uuid], outcome: &str) {
        sqlx::query(
            "insert into processed_events
                 (event_id, order_id, product_id, quantity, outcome, kafka_partition, kafka_offset)
             select e, o, 'CATALOG-0001', 2, $3::stock_outcome, 0, 0
               from unnest($1::uuid[], $2::uuid[]) as t (e, o)",
        )
        .bind(event_ids)
        .bind(order_ids)
        .bind(outcome)
        .execute(&self.catalog)
        .await
        .expect("insert processed events");
    }

    /// Runs `catalog-consumer audit` against both databases (URLs from the environment).
    async fn audit(&self, args: &[&str]) -> Audit {
        run_binary(
            std::iter::once("audit").chain(args.iter().copied()),
            &[
                ("DATABASE_URL", self.catalog_url.as_str()),
                ("ORDERS_DATABASE_URL", self.orders_url.as_str()),
            ],
        )
        .await
    }
}

/// What one run of the binary did.
struct Audit {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Audit {
    /// The one JSON object printed on stdout.
    fn report(&self) -> Value {
        let mut lines = self.stdout.lines();
        let report = lines.next().unwrap_or_else(|| {
            panic!("no report on stdout; stderr: {}", self.stderr);
        });
        assert_eq!(lines.next(), None, "one line on stdout: {}", self.stdout);
        serde_json::from_str(report).expect("the report is JSON")
    }
}

async fn run_binary<'a>(args: impl IntoIterator<Item = &'a str>, env: &[(&str, &str)]) -> Audit {
    let mut command = Command::new(env!("CARGO_BIN_EXE_catalog-consumer"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .args(args)
        .stdin(Stdio::null());
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("audit task")
        .expect("run catalog-consumer audit");
    Audit {
        code: output.status.code(),
        stdout: String::from_utf8(output.stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[tokio::test]
async fn audit_of_orders_that_were_all_processed_exits_zero_and_counts_each_outcome() {
    let db = Databases::new().await;
    for _ in 0..4 {
        let order = db.order(AN_HOUR).await;
        db.processed(order, "applied").await;
    }
    let oversold = db.order(AN_HOUR).await;
    db.processed(oversold, "insufficient_stock").await;

    let audit = db.audit(&[]).await;

    assert_eq!(audit.code, Some(0), "stderr: {}", audit.stderr);
    assert_eq!(
        audit.report(),
        json!({
            "orders": 5,
            "processed": 5,
            "outcomes": {"applied": 4, "insufficient_stock": 1, "unknown_product": 0},
            "grace_secs": 60,
            "unprocessed_within_grace": 0,
            "window_secs": 7 * 86_400 - 3_600,
            "unchecked_older_than_window": 0,
            "missing_count": 0,
            "missing": [],
            "unexpected_count": 0,
            "unexpected": [],
        })
    );
}

#[tokio::test]
async fn order_whose_processed_event_was_deleted_is_missing_and_the_audit_exits_one() {
    let db = Databases::new().await;
    let mut orders = Vec::new();
    for _ in 0..3 {
        let order = db.order(AN_HOUR).await;
        db.processed(order, "applied").await;
        orders.push(order);
    }
    sqlx::query("delete from processed_events where order_id = $1")
        .bind(orders[1])
        .execute(&db.catalog)
        .await
        .unwrap();

    let audit = db.audit(&[]).await;

    assert_eq!(audit.code, Some(1), "stderr: {}", audit.stderr);
    let report = audit.report();
    assert_eq!(report["missing_count"], 1);
    assert_eq!(report["missing"], json!([orders[1]]));
    assert_eq!(report["unexpected_count"], 0);
    assert_eq!(report["orders"], 3);
    assert_eq!(report["processed"], 2);
}

#[tokio::test]
async fn processed_event_of_an_order_that_does_not_exist_is_unexpected_and_the_audit_exits_one() {
    let db = Databases::new().await;
    let order = db.order(AN_HOUR).await;
    db.processed(order, "applied").await;
    let foreign = db.processed(Uuid::now_v7(), "unknown_product").await;

    let audit = db.audit(&[]).await;

    assert_eq!(audit.code, Some(1), "stderr: {}", audit.stderr);
    let report = audit.report();
    assert_eq!(report["unexpected_count"], 1);
    assert_eq!(report["unexpected"], json!([foreign]));
    assert_eq!(report["missing_count"], 0);
    assert_eq!(report["processed"], 2);
    assert_eq!(report["outcomes"]["unknown_product"], 1);
}

#[tokio::test]
async fn order_younger_than_the_grace_period_without_a_processed_event_is_not_missing() {
    let db = Databases::new().await;
    let processed = db.order(AN_HOUR).await;
    db.processed(processed, "applied").await;
    let young = db.order(10.0).await;

    let audit = db.audit(&["--grace-secs", "60"]).await;

    assert_eq!(audit.code, Some(0), "stderr: {}", audit.stderr);
    let report = audit.report();
    assert_eq!(report["missing_count"], 0);
    assert_eq!(report["unprocessed_within_grace"], 1);
    assert_eq!(report["orders"], 2);

    // The same order is missing once the grace period is shorter than its age.
    let audit = db.audit(&["--grace-secs", "5"]).await;
    assert_eq!(audit.code, Some(1), "stderr: {}", audit.stderr);
    assert_eq!(audit.report()["missing"], json!([young]));
}

#[tokio::test]
async fn an_order_older_than_the_processed_events_retention_is_not_judged() {
    let db = Databases::new().await;
    // Eight days old: its processed event was pruned after the 7 days of retention.
    let pruned = db.order(8.0 * 86_400.0).await;
    let recent = db.order(AN_HOUR).await;
    db.processed(recent, "applied").await;

    let audit = db.audit(&[]).await;
    assert_eq!(audit.code, Some(0), "stderr: {}", audit.stderr);
    let report = audit.report();
    assert_eq!(report["missing_count"], 0, "{report}");
    assert_eq!(report["unchecked_older_than_window"], 1, "{report}");
    assert_eq!(report["window_secs"], 7 * 86_400 - 3_600, "{report}");

    // With a longer retention the same order is judged, and missing.
    let audit = db.audit(&["--processed-events-retention", "30d"]).await;
    assert_eq!(audit.code, Some(1), "stderr: {}", audit.stderr);
    assert_eq!(audit.report()["missing"], json!([pruned]));
}

#[tokio::test]
async fn missing_and_unexpected_are_listed_up_to_the_limit_in_order_id_order_and_counted_in_full() {
    let db = Databases::new().await;
    // Random (v4) ids, so the order of both sides depends on how each sorts uuids: PostgreSQL's
    // order must be the one the listing (and the merge) assumes.
    let orders: Vec<Uuid> = sqlx::query_scalar(
        "insert into orders (order_id, user_id, product_id, quantity, unit_price, total_price,
                             created_at)
         select gen_random_uuid(), 'user-1', 'CATALOG-0001', 1, 1500, 1500, now() - interval '1 hour'
           from generate_series(1, 3000)
         returning order_id",
    )
    .fetch_all(&db.orders)
    .await
    .unwrap();
    let (mut missing, mut processed) = (Vec::new(), Vec::new());
    for (i, order) in orders.iter().enumerate() {
        if i % 7 == 3 {
            missing.push(*order);
        } else {
            processed.push(*order);
        }
    }
    let event_ids: Vec<Uuid> = processed.iter().map(|_| Uuid::new_v4()).collect();
    db.processed_many(&processed, &event_ids, "applied").await;
    let foreign_orders: Vec<Uuid> = (0..40).map(|_| Uuid::new_v4()).collect();
    let foreign_events: Vec<Uuid> = (0..40).map(|_| Uuid::new_v4()).collect();
    db.processed_many(&foreign_orders, &foreign_events, "applied")
        .await;

    let audit = db.audit(&["--limit", "5"]).await;

    assert_eq!(audit.code, Some(1), "stderr: {}", audit.stderr);
    let report = audit.report();
    missing.sort();
    let mut unexpected: Vec<(Uuid, Uuid)> =
        foreign_orders.into_iter().zip(foreign_events).collect();
    unexpected.sort();
    assert_eq!(report["orders"], 3000);
    assert_eq!(report["processed"], processed.len() + 40);
    assert_eq!(report["missing_count"], missing.len());
    assert_eq!(report["missing"], json!(missing[..5]));
    assert_eq!(report["unexpected_count"], 40);
    let first_unexpected: Vec<Uuid> = unexpected[..5].iter().map(|(_, event)| *event).collect();
    assert_eq!(report["unexpected"], json!(first_unexpected));
}

#[tokio::test]
async fn unreachable_database_exits_two_with_a_message_and_no_json() {
    let db = Databases::new().await;
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .unwrap()
        .port();
    let unreachable = format!("postgres://postgres:postgres@127.0.0.1:{closed_port}/orders");

    let audit = db
        .audit(&["--orders-database-url", unreachable.as_str()])
        .await;

    assert_eq!(audit.code, Some(2));
    assert_eq!(audit.stdout, "", "no JSON on stdout");
    assert!(
        audit
            .stderr
            .contains("cannot connect to the orders database"),
        "stderr: {}",
        audit.stderr
    );
}

#[tokio::test]
async fn audit_help_says_it_is_read_only_and_needs_only_select_on_the_two_tables() {
    let help = run_binary(["audit", "--help"], &[]).await;

    assert_eq!(help.code, Some(0), "stderr: {}", help.stderr);
    for expected in [
        "read-only role",
        "SELECT on `orders`",
        "`processed_events`",
        "[env: ORDERS_DATABASE_URL=]",
        "[env: DATABASE_URL=]",
    ] {
        assert!(
            help.stdout.contains(expected),
            "--help mentions {expected:?}:\n{}",
            help.stdout
        );
    }
}
