//! Settings shared by the services. Every setting is a flag with an environment variable behind
//! it (shown in `--help`) and a default that works on a developer machine.

use std::time::Duration;

use rdkafka::ClientConfig;

/// How a service connects to and prepares its PostgreSQL database.
#[derive(Debug, Clone, clap::Args)]
pub struct PoolSettings {
    /// Largest number of connections in the pool.
    #[arg(long, env = "DB_MAX_CONNECTIONS", default_value_t = 10)]
    pub db_max_connections: u32,
    /// Seconds to wait for a free pool connection before the request fails.
    #[arg(long, env = "DB_ACQUIRE_TIMEOUT_SECS", default_value_t = 5)]
    pub db_acquire_timeout_secs: u64,
    /// Do not apply the embedded migrations at start-up (for operators who migrate separately).
    #[arg(long, env = "SKIP_MIGRATIONS")]
    pub skip_migrations: bool,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            db_max_connections: 10,
            db_acquire_timeout_secs: 5,
            skip_migrations: false,
        }
    }
}

impl PoolSettings {
    /// The acquire timeout as a [`Duration`].
    pub fn acquire_timeout(&self) -> Duration {
        Duration::from_secs(self.db_acquire_timeout_secs)
    }
}

/// How a service prunes the table it keeps for a retention period (see `crate::retention`).
#[derive(Debug, Clone, clap::Args)]
pub struct PruneSettings {
    /// Seconds between two pruning rounds of the rows past their retention.
    #[arg(long, env = "PRUNE_INTERVAL_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub prune_interval_secs: u64,
    /// Most rows one pruning statement deletes (one short transaction each; a round repeats
    /// it until less than this is left).
    #[arg(long, env = "PRUNE_BATCH_SIZE", default_value_t = 5_000, value_parser = clap::value_parser!(i64).range(1..=1_000_000))]
    pub prune_batch_size: i64,
}

impl Default for PruneSettings {
    fn default() -> Self {
        Self {
            prune_interval_secs: 60,
            prune_batch_size: 5_000,
        }
    }
}

impl PruneSettings {
    pub fn interval(&self) -> Duration {
        Duration::from_secs(self.prune_interval_secs)
    }
}

/// Where the Kafka-protocol broker is.
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaSettings {
    /// Comma-separated bootstrap brokers (host:port).
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,
}

impl KafkaSettings {
    /// A client configuration with the bootstrap servers and the reconnect behaviour every
    /// client of this system wants: a short reconnect backoff, so a broker blip of a few seconds
    /// is recovered from in a few seconds rather than the default tens.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.kafka_brokers)
            .set("reconnect.backoff.ms", "50")
            .set("reconnect.backoff.max.ms", "2000")
            .set("log_level", "4");
        config
    }
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            kafka_brokers: "127.0.0.1:9092".into(),
        }
    }
}
