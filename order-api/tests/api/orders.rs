use std::collections::HashSet;

use crate::helpers::{order_body, spawn_app, TOPIC};
use serde_json::Value;
use uuid::Uuid;

#[derive(sqlx::FromRow)]
struct OutboxRow {
    event_id: Uuid,
    topic: String,
    partition_key: String,
    event_type: String,
    subject: String,
    payload: Value,
    traceparent: Option<String>,
    state: String,
    attempts: i32,
}

#[tokio::test]
async fn order_and_outbox_row_are_written_in_one_transaction() {
    let app = spawn_app().await;

    let response = app
        .post_order(&order_body("user-1", "CATALOG-0001", 10, 1500))
        .await;

    assert_eq!(response.status(), 201);
    let order: Value = response.json().await.unwrap();
    assert_eq!(order["totalPrice"], 15000);
    assert_eq!(order["status"], "PLACED");
    assert_eq!(order["quantity"], 10);
    let order_id = Uuid::parse_str(order["orderId"].as_str().unwrap()).unwrap();

    let (user_id, total): (String, i64) =
        sqlx::query_as("select user_id, total_price from orders where order_id = $1")
            .bind(order_id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!((user_id.as_str(), total), ("user-1", 15000));

    let rows: Vec<OutboxRow> = sqlx::query_as(
        "select event_id, topic, partition_key, event_type, subject, payload, traceparent, state, attempts
           from outbox",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 1, "exactly one outbox row per order");
    let row = &rows[0];
    assert_eq!(row.event_id.get_version_num(), 7, "event ids are UUIDv7");
    assert_eq!(row.topic, TOPIC);
    assert_eq!(row.partition_key, "CATALOG-0001");
    assert_eq!(row.event_type, "order.placed.v1");
    assert_eq!(row.subject, order_id.to_string());
    assert_eq!((row.state.as_str(), row.attempts), ("pending", 0));
    assert!(row
        .traceparent
        .as_deref()
        .is_some_and(|t| t.starts_with("00-")));
    // The event's value is the order as the API returned it, less its status.
    let mut expected = order.clone();
    expected.as_object_mut().unwrap().remove("status");
    let payload: outbox_core::event::OrderPlaced =
        serde_json::from_value(row.payload.clone()).unwrap();
    let returned: outbox_core::event::OrderPlaced = serde_json::from_value(expected).unwrap();
    assert_eq!(payload, returned);
}

#[tokio::test]
async fn a_failing_outbox_insert_leaves_no_order() {
    let app = spawn_app().await;
    sqlx::query("alter table outbox add constraint sabotage check (false) not valid")
        .execute(&app.pool)
        .await
        .unwrap();

    let response = app
        .post_order(&order_body("user-1", "CATALOG-0001", 1, 100))
        .await;

    assert!(
        response.status().is_server_error(),
        "got {}",
        response.status()
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "internal_error");
    assert!(
        !body["message"].as_str().unwrap().contains("sabotage"),
        "database text must not reach the client: {body}"
    );
    assert_eq!(app.row_counts().await, (0, 0));
}

#[tokio::test]
async fn an_incoming_traceparent_is_continued_on_the_event() {
    let app = spawn_app().await;
    let response = app
        .client
        .post(format!("{}/orders", app.address))
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .json(&order_body("user-1", "CATALOG-0002", 1, 900))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let traceparent: String = sqlx::query_scalar("select traceparent from outbox")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
}

#[tokio::test]
async fn the_same_key_and_body_twice_makes_one_order() {
    let app = spawn_app().await;
    let body = order_body("user-1", "CATALOG-0001", 2, 1500);

    let first = app.post_order_with_key(&body, "key-1").await;
    let second = app.post_order_with_key(&body, "key-1").await;

    assert_eq!(first.status(), 201);
    assert_eq!(second.status(), 201);
    assert_eq!(second.headers()["idempotent-replayed"], "true");
    let first: Value = first.json().await.unwrap();
    let second: Value = second.json().await.unwrap();
    assert_eq!(first, second, "a replay returns the same order");
    assert_eq!(app.row_counts().await, (1, 1));
}

#[tokio::test]
async fn the_same_key_with_another_body_is_refused() {
    let app = spawn_app().await;
    let first = app
        .post_order_with_key(&order_body("user-1", "CATALOG-0001", 2, 1500), "key-1")
        .await;
    assert_eq!(first.status(), 201);

    let second = app
        .post_order_with_key(&order_body("user-1", "CATALOG-0001", 3, 1500), "key-1")
        .await;

    assert_eq!(second.status(), 422);
    let body: Value = second.json().await.unwrap();
    assert_eq!(body["error"], "idempotency_key_reused");
    assert_eq!(app.row_counts().await, (1, 1));
}

#[tokio::test]
async fn twenty_concurrent_requests_with_one_key_make_exactly_one_order() {
    let app = spawn_app().await;
    let body = order_body("user-1", "CATALOG-0003", 1, 1200);

    let responses = futures::future::join_all(
        (0..20).map(|_| app.post_order_with_key(&body, "concurrent-key")),
    )
    .await;

    let mut order_ids = HashSet::new();
    for response in responses {
        assert_eq!(response.status(), 201);
        let order: Value = response.json().await.unwrap();
        order_ids.insert(order["orderId"].as_str().unwrap().to_owned());
    }
    assert_eq!(order_ids.len(), 1, "every response names the same order");
    assert_eq!(app.row_counts().await, (1, 1));
}

#[tokio::test]
async fn an_order_can_be_read_back_by_id() {
    let app = spawn_app().await;
    let created: Value = app
        .post_order(&order_body("user-1", "CATALOG-0001", 3, 1500))
        .await
        .json()
        .await
        .unwrap();

    let response = app.get_order(created["orderId"].as_str().unwrap()).await;

    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap(), created);
    let missing = app.get_order(&Uuid::now_v7().to_string()).await;
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.json::<Value>().await.unwrap()["error"], "not_found");
    let invalid = app.get_order("not-a-uuid").await;
    assert_eq!(invalid.status(), 400);
}

#[tokio::test]
async fn a_users_orders_are_listed_newest_first() {
    let app = spawn_app().await;
    let mut created = Vec::new();
    for quantity in 1..=3 {
        let order: Value = app
            .post_order(&order_body("user-7", "CATALOG-0001", quantity, 100))
            .await
            .json()
            .await
            .unwrap();
        created.push(order["orderId"].as_str().unwrap().to_owned());
    }
    app.post_order(&order_body("someone-else", "CATALOG-0001", 1, 100))
        .await;

    let response = app.get_user_orders("user-7").await;

    assert_eq!(response.status(), 200);
    let listed: Vec<Value> = response.json().await.unwrap();
    let listed: Vec<String> = listed
        .iter()
        .map(|o| o["orderId"].as_str().unwrap().to_owned())
        .collect();
    created.reverse();
    assert_eq!(listed, created);
    let none: Vec<Value> = app.get_user_orders("nobody").await.json().await.unwrap();
    assert!(none.is_empty());
}

#[tokio::test]
async fn health_readiness_metrics_and_openapi_are_served() {
    let app = spawn_app().await;
    assert_eq!(app.get("/healthz").await.status(), 200);
    assert_eq!(app.get("/readyz").await.status(), 200);

    app.post_order(&order_body("user-1", "CATALOG-0001", 1, 100))
        .await;
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("order_api_orders_created_total 1"),
        "{metrics}"
    );

    let openapi: Value = app.get("/openapi.json").await.json().await.unwrap();
    for path in [
        "/orders",
        "/orders/{orderId}",
        "/users/{userId}/orders",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(
            openapi["paths"].get(path).is_some(),
            "openapi.json lacks {path}"
        );
    }
}

#[tokio::test]
async fn the_generated_openapi_document_states_every_route_header_error_and_limit() {
    let app = spawn_app().await;
    let openapi: Value = app.get("/openapi.json").await.json().await.unwrap();
    let paths = openapi["paths"].as_object().expect("paths");
    let routes: std::collections::BTreeSet<String> = paths
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |method| format!("{} {path}", method.to_uppercase()))
        })
        .collect();
    assert_eq!(
        routes,
        [
            "POST /orders",
            "GET /orders/{orderId}",
            "GET /users/{userId}/orders",
            "GET /healthz",
            "GET /readyz",
            "GET /metrics",
            "GET /openapi.json",
        ]
        .into_iter()
        .map(String::from)
        .collect()
    );

    let post = &openapi["paths"]["/orders"]["post"];
    let statuses: Vec<&String> = post["responses"].as_object().unwrap().keys().collect();
    assert_eq!(
        statuses,
        ["201", "400", "413", "415", "422", "500", "503"],
        "every answer of POST /orders"
    );
    let created = &post["responses"]["201"];
    assert!(created["headers"].get("Location").is_some(), "{created}");
    assert!(
        created["headers"].get("idempotent-replayed").is_some(),
        "{created}"
    );
    assert!(
        post["responses"]["503"]["headers"]
            .get("Retry-After")
            .is_some(),
        "outbox_lagging's Retry-After"
    );
    for status in ["400", "422", "503"] {
        assert_eq!(
            post["responses"][status]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/ErrorBody",
            "{status} has the error body"
        );
    }
    let key = post["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "Idempotency-Key")
        .expect("Idempotency-Key is documented");
    assert_eq!(key["in"], "header");
    assert_eq!(key["schema"]["maxLength"], 255);
    assert!(key["schema"]["pattern"].is_string(), "{key}");

    // The limits are the validation's constants.
    let create = &openapi["components"]["schemas"]["CreateOrder"];
    assert_eq!(
        create["properties"]["quantity"]["maximum"],
        outbox_core::event::MAX_QUANTITY
    );
    assert_eq!(
        create["properties"]["unitPrice"]["maximum"],
        outbox_core::event::MAX_UNIT_PRICE
    );
    assert_eq!(
        create["properties"]["userId"]["maxLength"],
        outbox_core::event::MAX_ID_LEN
    );
    assert_eq!(create["additionalProperties"], false);

    // Other methods get 405 with Allow, as the document implies.
    let response = app
        .client
        .delete(format!("{}/orders", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "POST");
    let response = app
        .client
        .put(format!("{}/healthz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "GET");
}

#[tokio::test]
async fn a_placed_order_wakes_idle_relays_after_its_commit() {
    let app = spawn_app().await;
    // A probe notifies as the order's transaction commits (a deferred trigger fires at commit,
    // after all that transaction's statements). Notifications arrive in commit order, so a
    // wake-up sent from inside the order's transaction would arrive before the probe.
    sqlx::raw_sql(
        "create function notify_order_committed() returns trigger language plpgsql as $$
         begin perform pg_notify('order_committed', new.order_id::text); return null; end $$;
         create constraint trigger order_committed after insert on orders
           deferrable initially deferred for each row execute function notify_order_committed();",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let mut listener = sqlx::postgres::PgListener::connect_with(&app.pool)
        .await
        .unwrap();
    listener
        .listen_all(["order_committed", outbox_core::db::OUTBOX_WAKEUP_CHANNEL])
        .await
        .unwrap();

    let response = app
        .post_order(&order_body("user-1", "CATALOG-0001", 1, 100))
        .await;
    assert_eq!(response.status(), 201);
    let order: Value = response.json().await.unwrap();

    let mut received = Vec::new();
    for _ in 0..2 {
        let notification = tokio::time::timeout(std::time::Duration::from_secs(5), listener.recv())
            .await
            .unwrap_or_else(|_| panic!("no notification within 5 s after {received:?}"))
            .unwrap();
        received.push((
            notification.channel().to_owned(),
            notification.payload().to_owned(),
        ));
    }
    assert_eq!(
        received,
        [
            (
                "order_committed".into(),
                order["orderId"].as_str().unwrap().into()
            ),
            (outbox_core::db::OUTBOX_WAKEUP_CHANNEL.into(), String::new()),
        ],
        "the order commits, then a wake-up follows"
    );
}
