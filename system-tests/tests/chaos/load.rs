//! Open-loop load: orders are started on a fixed schedule, however slowly they are answered, and
//! each is retried with its own `Idempotency-Key` and body until order-api accepts it.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use serde_json::{json, Value};
use tokio::{task::JoinHandle, time::Instant};
use uuid::Uuid;

/// Per-request timeout; a timed-out request is retried with the same key.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one order may take, retries included, before the test gives up on it.
const ORDER_DEADLINE: Duration = Duration::from_secs(90);
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// An order order-api accepted (201).
#[derive(Debug, Clone)]
pub struct Accepted {
    pub order_id: Uuid,
    pub product_id: String,
    pub quantity: i32,
    /// When its first request was sent.
    pub first_sent: Instant,
    /// When the 201 answer arrived.
    pub accepted_at: Instant,
}

/// Retries by cause, shared by every order.
#[derive(Debug, Default)]
pub struct Retries {
    pub connection: AtomicU64,
    pub timeout: AtomicU64,
    pub server_error: AtomicU64,
    /// Accepted answers that were replays: an earlier attempt had committed the order.
    pub replayed: AtomicU64,
}

impl Retries {
    pub fn total(&self) -> u64 {
        self.connection.load(Ordering::Relaxed)
            + self.timeout.load(Ordering::Relaxed)
            + self.server_error.load(Ordering::Relaxed)
    }

    pub fn describe(&self) -> String {
        format!(
            "{} (connection errors {}, timeouts {}, 5xx {}; {} answered as idempotent replays)",
            self.total(),
            self.connection.load(Ordering::Relaxed),
            self.timeout.load(Ordering::Relaxed),
            self.server_error.load(Ordering::Relaxed),
            self.replayed.load(Ordering::Relaxed)
        )
    }
}

/// Places orders against order-api at `api`.
#[derive(Clone)]
pub struct Load {
    pub http: reqwest::Client,
    pub api: String,
    pub retries: Arc<Retries>,
}

impl Load {
    pub fn new(api: &str) -> Self {
        Self {
            http: reqwest::Client::new(),
            api: api.to_owned(),
            retries: Arc::default(),
        }
    }

    /// Starts `rate` orders per second for `duration`, cycling over `products` with
    /// quantities 1 to 5, each in a task of its own: the schedule never waits for answers.
    pub async fn offer(
        &self,
        products: &[&str],
        rate: u32,
        duration: Duration,
    ) -> Vec<JoinHandle<Result<Accepted, String>>> {
        let count = (f64::from(rate) * duration.as_secs_f64()) as usize;
        let mut ticks = tokio::time::interval(Duration::from_secs(1) / rate);
        // Burst (the default): a late tick is made up for, the offered rate stays the rate.
        let mut orders = Vec::with_capacity(count);
        for i in 0..count {
            ticks.tick().await;
            let product = products[i % products.len()];
            let quantity = (i / products.len() % 5) as i32 + 1;
            orders.push(tokio::spawn(
                self.clone().place(product.to_owned(), quantity),
            ));
        }
        orders
    }

    /// One order, retried with the same key and body on a connection error, a timeout or a
    /// 5xx until it is accepted; any other answer is a failure.
    pub async fn place(self, product_id: String, quantity: i32) -> Result<Accepted, String> {
        let key = Uuid::new_v4().to_string();
        let body = json!({
            "userId": format!("user-{}", &key[..4]),
            "productId": product_id,
            "quantity": quantity,
            "unitPrice": 1500,
        });
        let url = format!("{}/orders", self.api);
        let first_sent = Instant::now();
        let mut backoff = Duration::from_millis(50);
        loop {
            let sent = self
                .http
                .post(&url)
                .header("Idempotency-Key", &key)
                .json(&body)
                .timeout(REQUEST_TIMEOUT)
                .send()
                .await;
            let accepted_at = Instant::now();
            let counter = match sent {
                Ok(response) if response.status() == reqwest::StatusCode::CREATED => {
                    let replayed = response.headers().contains_key("idempotent-replayed");
                    match response.json::<Value>().await {
                        Ok(order) => {
                            let order_id = order["orderId"]
                                .as_str()
                                .and_then(|id| id.parse().ok())
                                .ok_or_else(|| format!("order {key}: no orderId in {order}"))?;
                            if replayed {
                                self.retries.replayed.fetch_add(1, Ordering::Relaxed);
                            }
                            return Ok(Accepted {
                                order_id,
                                product_id,
                                quantity,
                                first_sent,
                                accepted_at,
                            });
                        }
                        // The answer was cut off: ask again, the key makes it the same order.
                        Err(_) => &self.retries.connection,
                    }
                }
                Ok(response) if response.status().is_server_error() => &self.retries.server_error,
                Ok(response) => {
                    let status = response.status();
                    let text = response.text().await.unwrap_or_default();
                    return Err(format!("order {key}: unexpected {status}: {text}"));
                }
                Err(error) if error.is_timeout() => &self.retries.timeout,
                Err(_) => &self.retries.connection,
            };
            if first_sent.elapsed() + backoff > ORDER_DEADLINE {
                return Err(format!(
                    "order {key} ({product_id} x{quantity}) not accepted within {ORDER_DEADLINE:?}"
                ));
            }
            counter.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}
