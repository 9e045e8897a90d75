//! Orders over HTTP: a closed loop (C connections, each sends its next order when the last was
//! answered) and an open loop (orders started on a fixed schedule, whatever the answers do), both
//! through the lean client of [`crate::http1`]; and single orders, through reqwest.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use rand::{Rng, SeedableRng};
use uuid::Uuid;

use crate::{fill::product_id, http1};

/// A valid order for one of `products` products.
pub fn order_body(products: u64, rng: &mut impl Rng) -> serde_json::Value {
    serde_json::json!({
        "userId": format!("user-{}", rng.gen_range(1..=1000)),
        "productId": product_id(rng.gen_range(1..=products)),
        "quantity": rng.gen_range(1..=5),
        "unitPrice": 1500,
    })
}

/// Places one order and returns its id.
pub async fn place(
    http: &reqwest::Client,
    base_url: &str,
    body: &serde_json::Value,
) -> anyhow::Result<Uuid> {
    let response = http
        .post(format!("{base_url}/orders"))
        .json(body)
        .timeout(Duration::from_secs(30))
        .send()
        .await?;
    let status = response.status();
    let text = response.text().await?;
    anyhow::ensure!(
        status.as_u16() == 201,
        "POST /orders answered {status}: {text}"
    );
    let order: serde_json::Value = serde_json::from_str(&text)?;
    let id = order["orderId"]
        .as_str()
        .context("no orderId in the answer")?;
    Ok(Uuid::parse_str(id)?)
}

/// What a closed loop did.
#[derive(Debug)]
pub struct ClosedLoop {
    pub seconds: f64,
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub latencies_ms: Vec<f64>,
}

/// How long one order may take before it counts as failed.
const ORDER_TIMEOUT: Duration = Duration::from_secs(30);

/// The address of `base_url` (`http://host:port`, as [`crate::services::Service::base_url`]).
fn server_addr(base_url: &str) -> anyhow::Result<SocketAddr> {
    let authority = base_url
        .strip_prefix("http://")
        .with_context(|| format!("not an http:// URL: {base_url}"))?;
    authority
        .trim_end_matches('/')
        .parse()
        .with_context(|| format!("not host:port: {authority}"))
}

/// One order over `connection` (connected first when there is none); the connection is kept
/// only after a complete answer. Returns the answer's body when it was 201.
async fn post_order(
    addr: SocketAddr,
    connection: &mut Option<http1::Connection>,
    body: &[u8],
) -> anyhow::Result<Vec<u8>> {
    let mut open = match connection.take() {
        Some(open) => open,
        None => http1::Connection::connect(addr).await?,
    };
    let answer = open.post_json("/orders", body, ORDER_TIMEOUT).await?;
    if !answer.closing {
        *connection = Some(open);
    }
    anyhow::ensure!(
        answer.status == 201,
        "POST /orders answered {}: {}",
        answer.status,
        String::from_utf8_lossy(&answer.body)
    );
    Ok(answer.body)
}

/// `n` orders over `connections` keep-alive connections, each sending its next order as soon
/// as the last one was answered (on a thread of its own: [`http1::on_own_thread`]).
pub async fn closed_loop(
    base_url: &str,
    n: u64,
    connections: u64,
    products: u64,
) -> anyhow::Result<ClosedLoop> {
    let addr = server_addr(base_url)?;
    http1::on_own_thread(move || async move {
        let next = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let workers: Vec<_> = (0..connections)
            .map(|_| {
                let next = next.clone();
                tokio::spawn(async move {
                    let mut rng = rand::rngs::StdRng::from_entropy();
                    let mut connection = None;
                    let mut latencies = Vec::new();
                    let mut errors = 0u64;
                    let mut first_error = None;
                    while next.fetch_add(1, Ordering::Relaxed) < n {
                        let body = serde_json::to_vec(&order_body(products, &mut rng))
                            .expect("an order serialises");
                        let sent = Instant::now();
                        match post_order(addr, &mut connection, &body).await {
                            Ok(_) => latencies.push(sent.elapsed().as_secs_f64() * 1e3),
                            Err(error) => {
                                errors += 1;
                                first_error.get_or_insert_with(|| format!("{error:#}"));
                            }
                        }
                    }
                    (latencies, errors, first_error)
                })
            })
            .collect();
        let mut result = ClosedLoop {
            seconds: 0.0,
            ok: 0,
            errors: 0,
            first_error: None,
            latencies_ms: Vec::with_capacity(n as usize),
        };
        for worker in workers {
            let (latencies, errors, first_error) = worker.await?;
            result.ok += latencies.len() as u64;
            result.latencies_ms.extend(latencies);
            result.errors += errors;
            if result.first_error.is_none() {
                result.first_error = first_error;
            }
        }
        result.seconds = started.elapsed().as_secs_f64();
        Ok(result)
    })
    .await
}

/// What an open loop did.
#[derive(Debug)]
pub struct OpenLoop {
    pub offered: u64,
    /// Seconds from the first scheduled start to the last actual start.
    pub send_seconds: f64,
    /// Ids of the orders answered 201.
    pub placed: Vec<Uuid>,
    pub errors: u64,
    pub first_error: Option<String>,
    pub latencies_ms: Vec<f64>,
    /// How late the latest start was against its schedule (the client's own lag).
    pub max_start_lag_ms: f64,
}

/// The id in an order's answer.
#[derive(serde::Deserialize)]
struct PlacedOrder {
    #[serde(rename = "orderId")]
    order_id: Uuid,
}

/// `rate` orders per second for `seconds`, each started at its scheduled time in its own task
/// (on a keep-alive connection no other order is using, opened when none is idle), so a slow
/// answer never delays the next order.
pub async fn open_loop(
    base_url: &str,
    rate: u64,
    seconds: f64,
    products: u64,
) -> anyhow::Result<OpenLoop> {
    let addr = server_addr(base_url)?;
    http1::on_own_thread(move || async move {
        let offered = ((rate as f64) * seconds).round().max(1.0) as u64;
        let period = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
        let idle: Arc<Mutex<Vec<http1::Connection>>> = Arc::default();
        let mut rng = rand::rngs::StdRng::from_entropy();
        let start = tokio::time::Instant::now() + Duration::from_millis(20);
        let mut tasks = Vec::with_capacity(offered as usize);
        let mut max_lag = Duration::ZERO;
        for i in 0..offered {
            let scheduled = start + period.mul_f64(i as f64);
            tokio::time::sleep_until(scheduled).await;
            max_lag = max_lag.max(tokio::time::Instant::now().saturating_duration_since(scheduled));
            let body = serde_json::to_vec(&order_body(products, &mut rng))?;
            let idle = idle.clone();
            tasks.push(tokio::spawn(async move {
                let sent = Instant::now();
                let mut connection = idle.lock().expect("not poisoned").pop();
                // Idle ones are dropped (the stack's bottom, after a slow spell).
                if connection.as_ref().is_some_and(|c| !c.fresh()) {
                    idle.lock().expect("not poisoned").clear();
                    connection = None;
                }
                let result = post_order(addr, &mut connection, &body)
                    .await
                    .and_then(|answer| Ok(serde_json::from_slice::<PlacedOrder>(&answer)?));
                let latency = sent.elapsed().as_secs_f64() * 1e3;
                if let Some(connection) = connection {
                    idle.lock().expect("not poisoned").push(connection);
                }
                (result.map(|placed| placed.order_id), latency)
            }));
        }
        let send_seconds = start.elapsed().as_secs_f64();
        let mut result = OpenLoop {
            offered,
            send_seconds,
            placed: Vec::with_capacity(offered as usize),
            errors: 0,
            first_error: None,
            latencies_ms: Vec::with_capacity(offered as usize),
            max_start_lag_ms: max_lag.as_secs_f64() * 1e3,
        };
        for task in tasks {
            let (outcome, latency) = task.await?;
            match outcome {
                Ok(id) => {
                    result.placed.push(id);
                    result.latencies_ms.push(latency);
                }
                Err(error) => {
                    result.errors += 1;
                    result
                        .first_error
                        .get_or_insert_with(|| format!("{error:#}"));
                }
            }
        }
        Ok(result)
    })
    .await
}
