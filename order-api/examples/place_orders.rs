//! Load benchmark: places orders against a running order-api and prints the rate and latency.
//!
//!   cargo run --release -p order-api --example place_orders -- [BASE_URL] [ORDERS] [CONCURRENCY]
//!
//! Defaults: http://127.0.0.1:8080, 5000 orders, 32 at a time, over the three demo products.

use std::time::{Duration, Instant};

use futures::{stream, StreamExt};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let base = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:8080".into());
    let orders: usize = args.next().map_or(Ok(5000), |a| a.parse())?;
    let concurrency: usize = args.next().map_or(Ok(32), |a| a.parse())?;
    let client = reqwest::Client::new();
    let products = ["CATALOG-0001", "CATALOG-0002", "CATALOG-0003"];

    let started = Instant::now();
    let mut latencies: Vec<Duration> = stream::iter(0..orders)
        .map(|i| {
            let client = client.clone();
            let url = format!("{base}/orders");
            let body = serde_json::json!({
                "userId": format!("bench-{}", i % 100),
                "productId": products[i % products.len()],
                "quantity": 1,
                "unitPrice": 100,
            });
            async move {
                let sent = Instant::now();
                let response = client.post(url).json(&body).send().await?;
                anyhow::ensure!(response.status() == 201, "status {}", response.status());
                Ok::<_, anyhow::Error>(sent.elapsed())
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let elapsed = started.elapsed();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    println!(
        "{orders} orders in {:.2} s: {:.0} orders/s; latency p50 {:?}, p99 {:?}",
        elapsed.as_secs_f64(),
        orders as f64 / elapsed.as_secs_f64(),
        at(0.50),
        at(0.99)
    );
    Ok(())
}
