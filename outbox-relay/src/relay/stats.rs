//! Every `STATS_INTERVAL_SECS`: parks the rows that arrived behind a dead row of their key (see
//! [`crate::outbox::failures::park_held`]), then refreshes the pending/dead/parked gauges.

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use super::Inner;
use crate::outbox::{failures, status};

/// Runs until `stop`.
pub(super) fn spawn(inner: Arc<Inner>, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    let period = Duration::from_secs(inner.settings.stats_interval_secs.max(1));
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticker.tick() => {}
            }
            match failures::park_held(&inner.pool).await {
                Ok(0) => {}
                Ok(parked) => tracing::info!(
                    parked,
                    "rows that arrived behind a dead row of their key parked"
                ),
                Err(error) => tracing::debug!(%error, "cannot park rows held behind dead rows"),
            }
            match status::status(&inner.pool).await {
                Ok(status) => inner.metrics.set_status(&status),
                Err(error) => tracing::debug!(%error, "cannot refresh the outbox gauges"),
            }
        }
    })
}
