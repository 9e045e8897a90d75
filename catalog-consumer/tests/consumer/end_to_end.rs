//! The whole system as real processes: order-api takes orders over HTTP, outbox-relay publishes
//! them, catalog-consumer applies them.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use futures::{stream, StreamExt};
use outbox_core::db::ORDERS_MIGRATOR;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{eventually, free_port, ConsumerProcess, Fixture};

/// A service binary of this workspace, built next to this crate's.
fn workspace_binary(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_BIN_EXE_catalog-consumer"))
        .parent()
        .expect("target directory")
        .to_owned();
    dir.join(name)
}

/// Builds the other services' binaries (cargo waits for any build in progress), so the test
/// never runs stale ones.
fn build_other_services() {
    let mut build = Command::new(env!("CARGO"));
    build.args(["build", "-p", "order-api", "-p", "outbox-relay", "--bins"]);
    if !cfg!(debug_assertions) {
        build.arg("--release");
    }
    let status = build
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("run cargo build");
    assert!(
        status.success(),
        "cargo build -p order-api -p outbox-relay failed"
    );
}

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(binary: &str, args: &[&str], env: &[(&str, String)]) -> Process {
    let path = workspace_binary(binary);
    let child = Command::new(&path)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", path.display()));
    Process(child)
}

async fn wait_ready(http: &reqwest::Client, address: &str) {
    eventually(Duration::from_secs(30), || async {
        let response = http.get(format!("{address}/readyz")).send().await.ok()?;
        response.status().is_success().then_some(())
    })
    .await
    .unwrap_or_else(|_| panic!("{address} not ready"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_orders_over_http_reach_the_catalog_exactly_once() {
    tokio::task::spawn_blocking(build_other_services)
        .await
        .unwrap();
    let fixture = Fixture::new(3).await;
    let products = [
        "CATALOG-0001",
        "CATALOG-0002",
        "CATALOG-0003",
        "CATALOG-0004",
        "CATALOG-0005",
    ];
    let initial = 10_000;
    fixture.seed_products(&products.map(|p| (p, initial))).await;
    let (orders_url, _orders_pool) = testkit::fresh_database(&ORDERS_MIGRATOR)
        .await
        .expect("fresh orders database");

    let http = reqwest::Client::new();
    let api_port = free_port();
    let api = format!("http://127.0.0.1:{api_port}");
    let _order_api = start(
        "order-api",
        &[],
        &[
            ("HTTP_ADDR", format!("127.0.0.1:{api_port}")),
            ("DATABASE_URL", orders_url.clone()),
            ("ORDER_EVENTS_TOPIC", fixture.topic.clone()),
        ],
    );
    let relay_port = free_port();
    let _relay = start(
        "outbox-relay",
        &["run"],
        &[
            ("HTTP_ADDR", format!("127.0.0.1:{relay_port}")),
            ("DATABASE_URL", orders_url.clone()),
            ("KAFKA_BROKERS", fixture.brokers.clone()),
        ],
    );
    let consumer_port = free_port();
    let consumer = ConsumerProcess::start(&fixture.binary_env(consumer_port), consumer_port);
    wait_ready(&http, &api).await;
    wait_ready(&http, &format!("http://127.0.0.1:{relay_port}")).await;
    wait_ready(&http, &consumer.address).await;

    // 500 orders, 8 at a time, over the five products.
    let orders: Vec<(String, i32)> = (0..500)
        .map(|i| (products[i % 5].to_owned(), (i % 7) as i32 + 1))
        .collect();
    let created: Vec<Uuid> = stream::iter(orders.iter().enumerate())
        .map(|(i, (product, quantity))| {
            let http = http.clone();
            let api = api.clone();
            async move {
                let response = http
                    .post(format!("{api}/orders"))
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

    eventually(Duration::from_secs(60), || async {
        (fixture.processed_count().await >= 500).then_some(())
    })
    .await
    .expect("500 events processed");
    // Nothing more arrives: the count stays exactly 500 and each order appears once.
    let processed: Vec<(Uuid, String)> =
        sqlx::query_as("select order_id, outcome from processed_events")
            .fetch_all(&fixture.pool)
            .await
            .unwrap();
    assert_eq!(processed.len(), 500);
    let processed_orders: HashSet<Uuid> = processed.iter().map(|(order, _)| *order).collect();
    assert_eq!(processed_orders, created.iter().copied().collect());
    assert!(processed.iter().all(|(_, outcome)| outcome == "applied"));

    let mut sold: HashMap<&str, i32> = HashMap::new();
    for (product, quantity) in &orders {
        *sold.entry(product.as_str()).or_default() += quantity;
    }
    for product in products {
        assert_eq!(
            fixture.stock(product).await,
            initial - sold[product],
            "{product}"
        );
    }
    let catalogs: Value = http
        .get(format!("{}/catalogs", consumer.address))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(catalogs[0]["stock"], initial - sold["CATALOG-0001"]);
    assert!(fixture.dead_letter_topic_is_empty().await);
    assert_eq!(fixture.processed_count().await, 500);
}
