//! The real binary as a child process, configured as operators do: by environment variables.

use std::process::{Child, Command, Stdio};

use super::{messages_metric, Fixture};

impl Fixture {
    /// The environment the real binary needs to run as a consumer of this fixture.
    pub fn binary_env(&self, http_port: u16) -> Vec<(&'static str, String)> {
        vec![
            ("HTTP_ADDR", format!("127.0.0.1:{http_port}")),
            ("DATABASE_URL", self.database_url.clone()),
            ("KAFKA_BROKERS", self.brokers.clone()),
            ("ORDER_EVENTS_TOPIC", self.topic.clone()),
            ("DLQ_TOPIC", self.dlq_topic.clone()),
            ("CONSUMER_GROUP", self.group.clone()),
            ("BATCH_WAIT_MS", "20".into()),
            ("KAFKA_SESSION_TIMEOUT_MS", "6000".into()),
            ("RETRY_MAX_BACKOFF_MS", "500".into()),
            ("RUST_LOG", "warn".into()),
        ]
    }
}

/// The real binary, as a child process.
pub struct ConsumerProcess {
    pub child: Child,
    pub address: String,
}

impl ConsumerProcess {
    /// Starts the binary with `args` and only `env` (and `PATH`) in its environment.
    pub fn start(env: &[(&'static str, String)], args: &[&str], http_port: u16) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_catalog-consumer"))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start catalog-consumer");
        Self {
            child,
            address: format!("http://127.0.0.1:{http_port}"),
        }
    }

    /// `catalog_consumer_messages_total{result=...}`, once the process serves HTTP.
    pub async fn messages(&self, result: &str) -> Option<u64> {
        let metrics = reqwest::get(format!("{}/metrics", self.address))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        Some(messages_metric(&metrics, result))
    }
}

impl Drop for ConsumerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free local port (the OS picks it; it is released for the child to bind).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}
