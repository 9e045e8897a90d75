//! The whole system as real processes: order-api takes 500 orders over HTTP, outbox-relay
//! publishes them, catalog-consumer applies each exactly once.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use futures::{stream, StreamExt};
use serde_json::{json, Value};
use system_tests::Stack;
use uuid::Uuid;

const PRODUCTS: [&str; 5] = [
    "CATALOG-0001",
    "CATALOG-0002",
    "CATALOG-0003",
    "CATALOG-0004",
    "CATALOG-0005",
];
const INITIAL_STOCK: i32 = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_orders_over_http_reach_the_catalog_exactly_once() {
    let stack = Stack::start(&[]).await;
    testkit::seed_products(&stack.catalog, &PRODUCTS.map(|p| (p, INITIAL_STOCK)))
        .await
        .expect("seed products");

    // 500 orders, 8 at a time, over the five products.
    let http = reqwest::Client::new();
    let orders: Vec<(&str, i32)> = (0..500)
        .map(|i| (PRODUCTS[i % 5], (i % 7) as i32 + 1))
        .collect();
    let created: Vec<Uuid> = stream::iter(orders.iter().enumerate())
        .map(|(i, (product, quantity))| {
            let (http, api) = (&http, &stack.api);
            async move {
                let response = http
                    .post(format!("http://{api}/orders"))
                    .json(&json!({
                        "userId": format!("user-{}", i % 13),
                        "productId": product,
                        "quantity": quantity,
                        "unitPrice": 1500,
                    }))
                    .send()
                    .await
                    .expect("POST /orders");
                assert_eq!(response.status(), 201, "order {i}");
                let body: Value = response.json().await.expect("order body");
                body["orderId"]
                    .as_str()
                    .and_then(|id| id.parse::<Uuid>().ok())
                    .expect("orderId")
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    assert_eq!(created.len(), 500);

    testkit::eventually(Duration::from_secs(60), || async {
        let applied: i64 = sqlx::query_scalar("select count(*) from processed_events")
            .fetch_one(&stack.catalog)
            .await
            .ok()?;
        (applied >= 500).then_some(())
    })
    .await
    .expect("500 events processed");

    // Every order once: the topic holds each event once (read to its high watermarks), and
    // the catalog recorded each order once, applied.
    let published = testkit::topic::read_to_end(&stack.brokers, &stack.topic).expect("topic");
    assert_eq!(published.len(), 500, "each order published once");
    let processed: Vec<(Uuid, String)> =
        sqlx::query_as("select order_id, outcome::text from processed_events")
            .fetch_all(&stack.catalog)
            .await
            .expect("processed events");
    assert_eq!(processed.len(), 500);
    let processed_orders: HashSet<Uuid> = processed.iter().map(|(order, _)| *order).collect();
    assert_eq!(processed_orders, created.iter().copied().collect());
    assert!(processed.iter().all(|(_, outcome)| outcome == "applied"));

    let mut sold: HashMap<&str, i32> = HashMap::new();
    for (product, quantity) in &orders {
        *sold.entry(product).or_default() += quantity;
    }
    let catalogs: Value = http
        .get(format!("http://{}/catalogs", stack.consumer))
        .send()
        .await
        .expect("GET /catalogs")
        .json()
        .await
        .expect("catalog JSON");
    for product in PRODUCTS {
        let listed = catalogs
            .as_array()
            .expect("a list")
            .iter()
            .find(|p| p["productId"] == product)
            .unwrap_or_else(|| panic!("{product} listed"));
        assert_eq!(listed["stock"], INITIAL_STOCK - sold[product], "{product}");
    }
    let dead_letters = testkit::topic::read_to_end(&stack.brokers, &stack.dlq).expect("DLQ");
    assert!(dead_letters.is_empty(), "nothing dead-lettered");
}
