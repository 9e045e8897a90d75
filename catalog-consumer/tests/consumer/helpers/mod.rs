//! Test support: a fresh catalog database, topic, dead-letter topic and consumer group per test
//! ([`Fixture`]); the consumer run in-process on port 0 ([`TestConsumer`]) or as the real binary
//! ([`ConsumerProcess`]); a producer of well-formed and malformed events ([`EventProducer`]);
//! readers of what was persisted ([`database`]), published and committed ([`topics`]).

mod app;
mod database;
mod events;
mod fixture;
mod metrics;
mod process;
mod topics;

use std::time::Duration;

use anyhow::Context;

pub use app::{spawn_consumer, TestConsumer};
pub use events::{Event, EventProducer, RawMessage};
pub use fixture::Fixture;
pub use metrics::{messages_metric, metric_gauge, metric_value};
pub use process::{free_port, ConsumerProcess};
pub use testkit::eventually;

/// How long a test waits for a condition that should hold soon.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Waits for `condition`, with a message naming what was awaited.
pub async fn wait_until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually(DEADLINE, || {
        let check = condition();
        async move { check.await.then_some(()) }
    })
    .await
    .with_context(|| format!("waiting for {what}"))
    .unwrap();
}
