//! outbox-relay: publishes the rows order-api writes into the `outbox` table to Kafka, at least
//! once and in per-key order, and deletes each row once the broker acknowledged it. Several
//! relays may run against one database (one sidecar per order-api replica).
//!
//! The guarantees are kept by the modules that hold them: [`outbox`] (the row's states and
//! transitions: lanes, state-based claims, per-key order, attempts, dead and parked rows,
//! requeue, status), [`publish`] (pipelined, acknowledged delivery; what counts as a failure
//! about one message), [`partitions`] (one bad partition does not hold up the others),
//! [`wakeup`] (prompt pick-up without a notify in the order transaction) and the relay's step
//! and loop ([`Relay`]). [`cli`] runs the command line and prints.

pub mod cli;
pub mod metrics;
pub mod outbox;
pub mod partitions;
pub mod publish;
mod relay;
pub mod wakeup;

use std::{process::ExitCode, time::Duration};

use clap::Parser;
use outbox_core::settings::{KafkaSettings, OrdersDatabase, ORDERS_DATABASE_URL};

pub use relay::{BatchOutcome, Relay, RelayError};

/// The `outbox-relay` binary: parses the command line and runs it. `src/main.rs` only calls
/// this, so other binaries (the system tests' wrappers) run exactly the same.
pub async fn main() -> anyhow::Result<ExitCode> {
    cli::run(Cli::parse()).await
}

outbox_core::service_cli!(
    name = "outbox-relay",
    about =
        "Publishes outbox rows of the orders database to Kafka, in per-key order, at least once."
);

/// What the binary does.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Run the relay (the default).
    Run(Box<Settings>),
    /// Print one JSON object: {"pending", "pending_estimated", "dead", "parked",
    /// "oldest_pending_age_seconds"}; pending is exact up to 10,000 rows, estimated above.
    Status(AdminSettings),
    /// Put dead rows (and the rows parked behind them) back to pending, in order. Prints
    /// {"requeued", "older_than_dedup_window"}. Refuses rows older than the consumer's dedup
    /// window unless --force is given.
    Requeue(RequeueArgs),
    /// List dead rows, oldest first, one JSON object per line: id, event_id, partition_key,
    /// attempts, age_seconds, last_error.
    Dead(DeadArgs),
    /// Exit 0 when the running relay's GET /readyz answers 200, 1 otherwise (for container
    /// health checks).
    Healthcheck(outbox_core::ops::HealthcheckArgs),
}

/// The default HTTP_ADDR of `run`.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8082";

/// How the relay runs: flags, each with an environment variable behind it.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "outbox-relay", args_override_self = true)]
pub struct Settings {
    /// Address to serve /healthz, /readyz, /metrics and /status on (port 0 picks a free port).
    #[arg(long, env = "HTTP_ADDR", default_value = DEFAULT_HTTP_ADDR)]
    pub http_addr: String,
    #[command(flatten)]
    pub database: OrdersDatabase,
    #[command(flatten)]
    pub kafka: KafkaSettings,
    /// Most rows claimed and published in one step (one transaction).
    #[arg(long, env = "BATCH_SIZE", default_value_t = 2_000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_size: u32,
    /// Most lanes (of 64) one step locks during a backlog; lower values spread the work of
    /// several steps and relays. At a trickle (no lane gave its full share) a step locks every
    /// lane that has rows, so no row waits for its lane to be picked.
    #[arg(long, env = "MAX_LANES_PER_BATCH", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub max_lanes_per_batch: u32,
    /// Claim-publish-delete steps in flight at once during a backlog (while steps take full
    /// batches), each on its own lanes and transaction: while one waits for the broker's acks
    /// another claims or deletes. One step at a time otherwise.
    #[arg(long, env = "STEPS_IN_FLIGHT", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub steps_in_flight: u32,
    /// Longest wait between two polls while idle; a notification on the wake-up channel
    /// cuts it short, and the wait starts at 1 ms after each batch that found work.
    #[arg(long, env = "IDLE_POLL_MAX_MS", default_value_t = 500)]
    pub idle_poll_max_ms: u64,
    /// Attempts (failures about the message itself) after which a row is dead.
    #[arg(long, env = "MAX_ATTEMPTS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,
    /// Delay before a failed message's first retry; doubles per attempt, with ±50 % jitter.
    #[arg(long, env = "RETRY_INITIAL_MS", default_value_t = 1_000)]
    pub retry_initial_ms: u64,
    /// Cap of the delay between two attempts of one message (before jitter).
    #[arg(long, env = "RETRY_MAX_MS", default_value_t = 300_000)]
    pub retry_max_ms: u64,
    /// Cap of the pause between checks while the broker or the database is unreachable (the
    /// relay never gives up).
    #[arg(long, env = "OUTAGE_BACKOFF_MAX_MS", default_value_t = 5_000)]
    pub outage_backoff_max_ms: u64,
    /// Longest wait for a batch's delivery reports while its claim transaction is open (at
    /// least 1; a message still unconfirmed then holds its key until its report arrives).
    #[arg(long, env = "DELIVERY_TIMEOUT_SECS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=3_600))]
    pub delivery_timeout_secs: u64,
    /// librdkafka `message.timeout.ms`: how long the producer keeps retrying one message (0,
    /// librdkafka's "forever", is refused: a message that never times out could hold its key
    /// for ever).
    #[arg(long, env = "MESSAGE_TIMEOUT_MS", default_value_t = 120_000, value_parser = clap::value_parser!(u64).range(1..=2_147_483_647))]
    pub message_timeout_ms: u64,
    /// librdkafka `message.max.bytes`: larger messages are refused (keep it at or below the
    /// broker's limit).
    #[arg(long, env = "MESSAGE_MAX_BYTES", default_value_t = 1_000_000, value_parser = clap::value_parser!(u32).range(1_000..=1_000_000_000))]
    pub message_max_bytes: u32,
    /// librdkafka `linger.ms`: how long the producer waits to fill a request. A batch is
    /// enqueued whole before its acks are awaited, so a longer linger only delays single rows.
    #[arg(long, env = "LINGER_MS", default_value_t = 1, value_parser = clap::value_parser!(u64).range(0..=900_000))]
    pub linger_ms: u64,
    /// Seconds between refreshes of the pending/dead/parked gauges (and parking of rows that
    /// arrived behind a dead row of their key).
    #[arg(long, env = "STATS_INTERVAL_SECS", default_value_t = 5)]
    pub stats_interval_secs: u64,
    /// Test-only fault injection: after a batch's delivery reports arrive, hang before
    /// deleting the rows, so a test can SIGKILL the process between ack and delete. Only in
    /// builds with the `test-hooks` feature (the crate's own tests).
    #[cfg(feature = "test-hooks")]
    #[arg(long, hide = true)]
    pub test_hang_after_ack: bool,
}

impl Settings {
    /// Refuses combinations that would wedge the relay, naming the settings to change.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.kafka.validate()?;
        if self.message_timeout_ms <= self.linger_ms {
            anyhow::bail!(
                "MESSAGE_TIMEOUT_MS ({}) must be longer than LINGER_MS ({}): every message would \
                 time out before it is sent",
                self.message_timeout_ms,
                self.linger_ms
            );
        }
        if self.delivery_timeout_secs.saturating_mul(1_000) <= self.linger_ms.saturating_mul(2) {
            anyhow::bail!(
                "DELIVERY_TIMEOUT_SECS ({} s) must be well above LINGER_MS ({} ms): no batch could \
                 be acknowledged within it",
                self.delivery_timeout_secs,
                self.linger_ms
            );
        }
        Ok(())
    }

    pub(crate) fn idle_poll_max(&self) -> Duration {
        Duration::from_millis(self.idle_poll_max_ms.max(1))
    }

    pub(crate) fn delivery_timeout(&self) -> Duration {
        Duration::from_secs(self.delivery_timeout_secs)
    }
}

/// What `status` and `requeue` need: the database.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminSettings {
    /// PostgreSQL URL of the orders database.
    #[arg(long, env = "DATABASE_URL", default_value = ORDERS_DATABASE_URL)]
    pub database_url: String,
}

/// What `dead` lists.
#[derive(Debug, Clone, clap::Args)]
pub struct DeadArgs {
    #[command(flatten)]
    pub admin: AdminSettings,
    /// Most rows listed.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..=100_000))]
    pub limit: i64,
}

/// Which rows `requeue` puts back.
#[derive(Debug, Clone, clap::Args)]
pub struct RequeueArgs {
    #[command(flatten)]
    pub admin: AdminSettings,
    /// Every dead row and every parked row.
    #[arg(
        long,
        conflicts_with = "event_id",
        required_unless_present = "event_id"
    )]
    pub dead: bool,
    /// The dead row with this event id, and the rows of its key parked behind it.
    #[arg(long)]
    pub event_id: Option<uuid::Uuid>,
    /// The consumer's dedup window (its PROCESSED_EVENTS_RETENTION minus DEDUP_WINDOW_MARGIN;
    /// the default is the consumer's default, 7d minus 1h). Rows created before it are not
    /// requeued without --force: the consumer would dead-letter them as
    /// older_than_dedup_window.
    #[arg(long, env = "DEDUP_WINDOW", default_value = "167h", value_parser = outbox_core::retention::parse_duration)]
    pub dedup_window: Duration,
    /// Requeue rows older than the dedup window too (a warning says how many).
    #[arg(long)]
    pub force: bool,
}
