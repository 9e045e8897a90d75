//! What the three services share, and nothing else: settings types, telemetry (logs and
//! OpenTelemetry), the database pool and embedded migrations, the order event envelope with its
//! Kafka headers, the idempotent producer configuration and the classification of produce
//! failures, the health/readiness/metrics HTTP surface, retention of the tables that grow per
//! order, the never-give-up retry schedule for a dependency that is down, and shutdown.

pub mod cli;
pub mod db;
pub mod event;
pub mod kafka;
pub mod ops;
pub mod retention;
pub mod retry;
pub mod settings;
pub mod shutdown;
pub mod telemetry;
