use clap::Parser;
use order_api::{Application, Settings};
use outbox_core::db::ORDERS_MIGRATOR;
use serde_json::Value;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// order-api running in-process on a free port, over a fresh database of its own.
pub struct TestApp {
    pub address: String,
    pub pool: PgPool,
    pub client: reqwest::Client,
    shutdown: CancellationToken,
}

pub const TOPIC: &str = "order-events-test";

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// order-api with test defaults, then `configure`'s changes, on a fresh database.
pub async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    let (database_url, pool) = testkit::fresh_database(&ORDERS_MIGRATOR)
        .await
        .expect("fresh orders database");
    let mut settings = Settings::parse_from(["order-api"]);
    settings.http_addr = "127.0.0.1:0".into();
    settings.database.database_url = database_url;
    settings.order_events_topic = TOPIC.into();
    settings.http_workers = Some(2);
    configure(&mut settings);
    let app = Application::build(settings).await.expect("build order-api");
    let address = format!("http://127.0.0.1:{}", app.port());
    let shutdown = CancellationToken::new();
    tokio::spawn(app.run_until_stopped(shutdown.clone()));
    TestApp {
        address,
        pool,
        client: reqwest::Client::new(),
        shutdown,
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub fn order_body(user: &str, product: &str, quantity: i64, unit_price: i64) -> Value {
    serde_json::json!({
        "userId": user,
        "productId": product,
        "quantity": quantity,
        "unitPrice": unit_price,
    })
}

impl TestApp {
    pub async fn post_order(&self, body: &Value) -> reqwest::Response {
        self.client
            .post(format!("{}/orders", self.address))
            .json(body)
            .send()
            .await
            .expect("POST /orders")
    }

    pub async fn post_order_with_key(&self, body: &Value, key: &str) -> reqwest::Response {
        self.client
            .post(format!("{}/orders", self.address))
            .header("idempotency-key", key)
            .json(body)
            .send()
            .await
            .expect("POST /orders")
    }

    pub async fn get_order(&self, order_id: &str) -> reqwest::Response {
        self.client
            .get(format!("{}/orders/{order_id}", self.address))
            .send()
            .await
            .expect("GET /orders/{id}")
    }

    pub async fn get_user_orders(&self, user_id: &str) -> reqwest::Response {
        self.client
            .get(format!("{}/users/{user_id}/orders", self.address))
            .send()
            .await
            .expect("GET /users/{id}/orders")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .expect("GET")
    }

    /// (orders, outbox rows)
    pub async fn row_counts(&self) -> (i64, i64) {
        sqlx::query_as("select (select count(*) from orders), (select count(*) from outbox)")
            .fetch_one(&self.pool)
            .await
            .expect("count rows")
    }

    /// The value of an unlabelled series in the `/metrics` body.
    pub async fn metric(&self, name: &str) -> f64 {
        let body = self.get("/metrics").await.text().await.expect("metrics");
        testkit::metric_value(&body, name)
            .unwrap_or_else(|| panic!("{name} is not in /metrics:\n{body}"))
    }
}
