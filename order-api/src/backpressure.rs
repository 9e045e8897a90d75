//! Opt-in backpressure (`MAX_OUTBOX_LAG_SECS`): while the oldest pending outbox row is older
//! than the limit, `POST /orders` answers `503 outbox_lagging` with `Retry-After`.
//!
//! The lag is sampled by one background task (one bounded query per second, see
//! [`outbox_core::db::oldest_pending_age_seconds`]); the order path only reads an atomic. A
//! failed sample keeps the last state: the database being down already fails the orders.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use prometheus::{Gauge, IntGauge};
use sqlx::PgPool;

/// How often the lag is sampled.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// Whether orders are refused now, shared by the sampler and the handlers.
#[derive(Clone)]
pub(crate) struct Backpressure {
    limit: Option<Duration>,
    lagging: Arc<AtomicBool>,
}

impl Backpressure {
    pub fn new(limit: Option<Duration>) -> Self {
        Self {
            limit,
            lagging: Arc::new(AtomicBool::new(false)),
        }
    }

    /// `Some(retry after)` while orders must be refused.
    pub fn refusing(&self) -> Option<Duration> {
        self.lagging
            .load(Ordering::Relaxed)
            .then_some(SAMPLE_INTERVAL * 5)
    }

    /// Samples the lag every [`SAMPLE_INTERVAL`] while the limit is set; without it, spawns
    /// nothing and never refuses.
    pub fn spawn(
        &self,
        pool: PgPool,
        lag_gauge: Gauge,
        lagging_gauge: IntGauge,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let limit = self.limit?.as_secs_f64();
        let lagging = self.lagging.clone();
        Some(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(SAMPLE_INTERVAL);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let age = match outbox_core::db::oldest_pending_age_seconds(&pool).await {
                    Ok(age) => age,
                    Err(error) => {
                        tracing::debug!(%error, "cannot sample the outbox lag");
                        continue;
                    }
                };
                lag_gauge.set(age);
                let now = age > limit;
                if lagging.swap(now, Ordering::Relaxed) != now {
                    if now {
                        tracing::warn!(
                            oldest_pending_age_seconds = age,
                            max_outbox_lag_secs = limit,
                            "the outbox is lagging: new orders are refused with 503 outbox_lagging"
                        );
                    } else {
                        tracing::info!(
                            oldest_pending_age_seconds = age,
                            "the outbox caught up: orders are accepted again"
                        );
                    }
                }
                lagging_gauge.set(i64::from(now));
            }
        }))
    }
}
