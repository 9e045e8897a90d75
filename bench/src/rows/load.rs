//! Orders over HTTP: a closed loop (C connections, each sends its next order when the last was
//! answered), an open loop (orders started on a fixed schedule, whatever the answers do), and
//! single orders.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use rand::{Rng, SeedableRng};
use uuid::Uuid;

use crate::fill::product_id;

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

/// `n` orders over `connections` keep-alive connections, each sending its next order as soon
/// as the last one was answered.
pub async fn closed_loop(
    base_url: &str,
    n: u64,
    connections: u64,
    products: u64,
) -> anyhow::Result<ClosedLoop> {
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(connections as usize)
        .build()?;
    let next = Arc::new(AtomicU64::new(0));
    let url = format!("{base_url}/orders");
    let started = Instant::now();
    let workers: Vec<_> = (0..connections)
        .map(|_| {
            let (http, next, url) = (http.clone(), next.clone(), url.clone());
            tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::from_entropy();
                let mut latencies = Vec::new();
                let mut errors = 0u64;
                let mut first_error = None;
                while next.fetch_add(1, Ordering::Relaxed) < n {
                    let body = order_body(products, &mut rng);
                    let sent = Instant::now();
                    let result = async {
                        let response = http.post(&url).json(&body).send().await?;
                        let status = response.status();
                        // Read the body so the connection is reused.
                        let text = response.bytes().await?;
                        anyhow::ensure!(
                            status.as_u16() == 201,
                            "POST /orders answered {status}: {}",
                            String::from_utf8_lossy(&text)
                        );
                        Ok(())
                    }
                    .await;
                    match result {
                        Ok(()) => latencies.push(sent.elapsed().as_secs_f64() * 1e3),
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

/// `rate` orders per second for `seconds`, each started at its scheduled time in its own task,
/// so a slow answer never delays the next order.
pub async fn open_loop(
    http: &reqwest::Client,
    base_url: &str,
    rate: u64,
    seconds: f64,
    products: u64,
) -> anyhow::Result<OpenLoop> {
    let offered = ((rate as f64) * seconds).round().max(1.0) as u64;
    let period = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let mut rng = rand::rngs::StdRng::from_entropy();
    let start = tokio::time::Instant::now() + Duration::from_millis(20);
    let mut tasks = Vec::with_capacity(offered as usize);
    let mut max_lag = Duration::ZERO;
    for i in 0..offered {
        let scheduled = start + period.mul_f64(i as f64);
        tokio::time::sleep_until(scheduled).await;
        max_lag = max_lag.max(tokio::time::Instant::now().saturating_duration_since(scheduled));
        let body = order_body(products, &mut rng);
        let (http, base_url) = (http.clone(), base_url.to_owned());
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let result = place(&http, &base_url, &body).await;
            (result, sent.elapsed().as_secs_f64() * 1e3)
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
}
