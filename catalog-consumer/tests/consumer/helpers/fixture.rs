//! One test's own catalog database, topics and consumer group, and the settings of a consumer
//! of them.

use catalog_consumer::Settings;
use clap::Parser;
use outbox_core::db::CATALOG_MIGRATOR;
use sqlx::PgPool;
use uuid::Uuid;

use super::{spawn_consumer, EventProducer, TestConsumer};

/// One test's own catalog database, topics and group.
pub struct Fixture {
    pub database_url: String,
    pub pool: PgPool,
    pub brokers: String,
    pub topic: String,
    pub dlq_topic: String,
    pub group: String,
    pub partitions: i32,
}

impl Fixture {
    pub async fn new(partitions: i32) -> Self {
        let (database_url, pool) = testkit::fresh_database(&CATALOG_MIGRATOR)
            .await
            .expect("fresh catalog database");
        let brokers = testkit::kafka_brokers().await;
        let topic = testkit::fresh_topic(&brokers, "order-events", partitions)
            .await
            .expect("fresh topic");
        let dlq_topic = testkit::fresh_topic(&brokers, "order-events-dlq", 1)
            .await
            .expect("fresh dead-letter topic");
        let group = format!("catalog-consumer-{}", Uuid::new_v4().simple());
        Self {
            database_url,
            pool,
            brokers,
            topic,
            dlq_topic,
            group,
            partitions,
        }
    }

    /// Settings for a consumer of this fixture: port 0, quick retries and commits.
    pub fn settings(&self) -> Settings {
        let mut settings = Settings::parse_from(["catalog-consumer"]);
        settings.http_addr = "127.0.0.1:0".into();
        settings.database_url = self.database_url.clone();
        settings.pool.db_acquire_timeout_secs = 1;
        settings.pool.db_max_connections = 8;
        settings.kafka.kafka_brokers = self.brokers.clone();
        settings.order_events_topic = self.topic.clone();
        settings.dlq_topic = self.dlq_topic.clone();
        settings.consumer_group = self.group.clone();
        settings.batch_size = 500;
        settings.batch_wait_ms = 20;
        settings.commit_interval_ms = 100;
        settings.kafka_session_timeout_ms = 6000;
        settings.retry_max_backoff_ms = 500;
        settings.stalled_after_secs = 60;
        settings
    }

    pub async fn spawn_consumer(&self) -> TestConsumer {
        spawn_consumer(self.settings()).await
    }

    pub fn producer(&self) -> EventProducer {
        EventProducer::new(&self.brokers, &self.topic)
    }
}
