//! Orders that arrive while both writers are busy share one statement, and each still gets its
//! own answer; one order the database refuses fails alone.

use std::{collections::HashSet, time::Duration};

use serde_json::Value;
use sqlx::{Connection, PgConnection};
use testkit::eventually;
use tokio::task::JoinHandle;

use crate::helpers::{order_body, spawn_app, TestApp};

const DEADLINE: Duration = Duration::from_secs(20);

/// `POST /orders` of `body`, sent at once, answered whenever.
fn post(app: &TestApp, body: &Value) -> JoinHandle<reqwest::Response> {
    let request = app
        .client
        .post(format!("{}/orders", app.address))
        .json(body);
    tokio::spawn(async move { request.send().await.expect("POST /orders") })
}

/// Waits until `statements` insert statements have started and `waiting` orders wait for a
/// writer.
async fn wait_for(app: &TestApp, statements: f64, waiting: f64) {
    eventually(DEADLINE, || async {
        let started = app.metric("order_api_insert_batch_orders_count").await;
        let queued = app.metric("order_api_orders_waiting").await;
        (started == statements && queued == waiting).then_some(())
    })
    .await
    .unwrap_or_else(|_| panic!("{statements} statements started and {waiting} orders waiting"));
}

/// Blocks both writers, each in a statement of one order (returned, with the connection whose
/// lock on `outbox` blocks them until it is closed), then sends `bodies`, which queue; returns
/// once they all wait.
async fn queue_behind_blocked_writers(
    app: &TestApp,
    bodies: &[Value],
) -> (
    PgConnection,
    Vec<JoinHandle<reqwest::Response>>,
    Vec<JoinHandle<reqwest::Response>>,
) {
    let mut blocker = PgConnection::connect_with(&app.pool.connect_options())
        .await
        .expect("connect");
    sqlx::raw_sql("begin; lock table outbox in share mode")
        .execute(&mut blocker)
        .await
        .expect("lock the outbox");
    let first = post(app, &order_body("user-blocked", "CATALOG-0901", 1, 100));
    wait_for(app, 1.0, 0.0).await;
    let second = post(app, &order_body("user-blocked", "CATALOG-0902", 1, 100));
    wait_for(app, 2.0, 0.0).await;
    let queued = bodies.iter().map(|body| post(app, body)).collect();
    wait_for(app, 2.0, bodies.len() as f64).await;
    (blocker, vec![first, second], queued)
}

async fn answers(requests: Vec<JoinHandle<reqwest::Response>>) -> Vec<reqwest::Response> {
    futures::future::try_join_all(requests)
        .await
        .expect("every request answered")
}

#[tokio::test]
async fn orders_arriving_while_the_writers_are_busy_share_one_statement() {
    let app = spawn_app().await;
    let bodies: Vec<Value> = (1..=20)
        .map(|i| order_body(&format!("user-{i}"), &format!("CATALOG-{i:04}"), i, 100))
        .collect();
    let (blocker, blocked, queued) = queue_behind_blocked_writers(&app, &bodies).await;
    blocker.close().await.expect("release the lock");

    for response in answers(blocked).await {
        assert_eq!(response.status(), 201);
    }
    let mut order_ids = HashSet::new();
    for (response, body) in answers(queued).await.into_iter().zip(&bodies) {
        assert_eq!(response.status(), 201);
        let order: Value = response.json().await.unwrap();
        assert_eq!(
            order["productId"], body["productId"],
            "each answer is its own order"
        );
        assert_eq!(order["quantity"], body["quantity"]);
        order_ids.insert(order["orderId"].as_str().unwrap().to_owned());
    }
    assert_eq!(order_ids.len(), 20);
    assert_eq!(app.row_counts().await, (22, 22));
    // The two blocked statements, then one for the 20 orders that waited meanwhile.
    assert_eq!(app.metric("order_api_insert_batch_orders_count").await, 3.0);
    assert_eq!(app.metric("order_api_insert_batch_orders_sum").await, 22.0);
    assert_eq!(app.metric("order_api_orders_waiting").await, 0.0);
}

#[tokio::test]
async fn an_order_the_database_refuses_in_a_shared_statement_fails_alone() {
    let app = spawn_app().await;
    sqlx::query(
        "alter table outbox add constraint sabotage check (partition_key <> 'CATALOG-0666') not valid",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let products = [
        "CATALOG-0001",
        "CATALOG-0002",
        "CATALOG-0666",
        "CATALOG-0003",
    ];
    let bodies: Vec<Value> = products
        .iter()
        .map(|product| order_body("user-1", product, 1, 100))
        .collect();
    let (blocker, blocked, queued) = queue_behind_blocked_writers(&app, &bodies).await;
    blocker.close().await.expect("release the lock");

    answers(blocked).await;
    for (response, product) in answers(queued).await.into_iter().zip(products) {
        if product == "CATALOG-0666" {
            assert_eq!(response.status(), 500, "the refused order");
        } else {
            assert_eq!(
                response.status(),
                201,
                "{product}, written alone once the shared statement failed"
            );
        }
    }
    assert_eq!(app.row_counts().await, (2 + 3, 2 + 3));
    // The two blocked statements, the shared one that failed, then each of its orders alone.
    assert_eq!(
        app.metric("order_api_insert_batch_orders_count").await,
        2.0 + 1.0 + 4.0
    );
}

/// Ends the sessions of the statements waiting for `outbox`'s lock (the writers'), as a database
/// restart would.
async fn terminate_blocked_statements(app: &TestApp, expected: i64) {
    eventually(DEADLINE, || async {
        let waiting: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity
              where datname = current_database() and wait_event_type = 'Lock'",
        )
        .fetch_one(&app.pool)
        .await
        .ok()?;
        (waiting == expected).then_some(())
    })
    .await
    .expect("the writers' statements wait for the lock");
    sqlx::query(
        "select pg_terminate_backend(pid) from pg_stat_activity
          where datname = current_database() and wait_event_type = 'Lock'",
    )
    .execute(&app.pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn a_database_outage_during_a_shared_statement_answers_each_of_its_orders_at_once() {
    let app = spawn_app().await;
    let bodies: Vec<Value> = (1..=4)
        .map(|i| order_body("user-1", &format!("CATALOG-{i:04}"), 1, 100))
        .collect();
    let (blocker, blocked, queued) = queue_behind_blocked_writers(&app, &bodies).await;
    // The two statements of one order each fail; the four waiting orders then share a third,
    // which waits for the lock too, and fails the same way.
    terminate_blocked_statements(&app, 2).await;
    for response in answers(blocked).await {
        assert_eq!(response.status(), 503);
    }
    wait_for(&app, 3.0, 0.0).await;
    terminate_blocked_statements(&app, 1).await;

    // Written alone, each would wait for the lock again: the answers come while it is held.
    let answered = tokio::time::timeout(DEADLINE, answers(queued))
        .await
        .expect("every order of the failed statement answered while the outbox is still locked");
    for response in answered {
        assert_eq!(response.status(), 503);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "service_unavailable");
    }
    blocker.close().await.expect("release the lock");
    assert_eq!(app.row_counts().await, (0, 0));
    assert_eq!(app.metric("order_api_insert_batch_orders_count").await, 3.0);
}
