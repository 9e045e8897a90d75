//! The consumer run in-process, and one method per endpoint it serves.

use catalog_consumer::{Consumer, Settings};
use tokio_util::sync::CancellationToken;

use super::{messages_metric, metric_value, DEADLINE};

/// The consumer running in-process.
pub struct TestConsumer {
    pub address: String,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    http: reqwest::Client,
}

pub async fn spawn_consumer(settings: Settings) -> TestConsumer {
    // Logs only when asked for: they go to stdout, past the test harness's capture.
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = outbox_core::telemetry::init("catalog-consumer");
    }
    let consumer = Consumer::build(settings).await.expect("build the consumer");
    let address = format!("http://127.0.0.1:{}", consumer.port());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(consumer.run_until_stopped(shutdown.clone()));
    TestConsumer {
        address,
        shutdown,
        task,
        http: reqwest::Client::new(),
    }
}

impl TestConsumer {
    /// As SIGTERM does: finish the batch in hand, commit, leave the group.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("consumer stops in time")
            .expect("consumer task")
            .expect("consumer stops cleanly");
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .expect("request")
    }

    pub async fn get_catalogs(&self) -> reqwest::Response {
        self.get("/catalogs").await
    }

    pub async fn get_catalog(&self, product_id: &str) -> reqwest::Response {
        self.get(&format!("/catalogs/{product_id}")).await
    }

    pub async fn metrics(&self) -> String {
        self.get("/metrics").await.text().await.expect("metrics")
    }

    /// `catalog_consumer_messages_total{result=...}`.
    pub async fn messages(&self, result: &str) -> u64 {
        messages_metric(&self.metrics().await, result)
    }

    /// `catalog_consumer_batch_retries_total{cause=...}`.
    pub async fn retries(&self, cause: &str) -> u64 {
        metric_value(
            &self.metrics().await,
            &format!("catalog_consumer_batch_retries_total{{cause=\"{cause}\"}}"),
        )
    }
}
