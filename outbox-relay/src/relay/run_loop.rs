//! The loop around the step: wake-up, the outage gate, shutdown.
//!
//! Guarantees kept here:
//! - After a step in which nothing was acknowledged and something failed for a reason about the
//!   broker, or the database failed, the loop claims nothing until the broker answers a metadata
//!   request and the database answers. An outage counts no attempt (the step reports it as a
//!   [`super::RelayError`], never as a failure of a message) and is waited out with backoff,
//!   without giving up.
//! - SIGTERM stops claiming; the step in hand finishes first.
//!
//! One loop leads: it answers the wake-ups and polls while idle. The others help only while
//! steps come back with full batches (a backlog): at a trickle, one step at a time takes
//! everything there is, instead of several steps splitting it into more, smaller transactions
//! and broker requests.

use std::time::Duration;

use backoff::{backoff::Backoff, ExponentialBackoff};
use rdkafka::producer::{FutureProducer, Producer};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::Inner;
use crate::{publish, wakeup::IdlePacer, Settings};

impl Inner {
    /// Runs steps until `shutdown`: at once while they find work, after an idle wait (cut short
    /// by `wakeup`) while they do not, and after the outage gate when one failed. A helper
    /// (`lead` false) instead waits for `backlog`, which a step that took a full batch signals,
    /// and goes back to waiting after a step that did not.
    pub(super) async fn run_loop(
        &self,
        lead: bool,
        shutdown: &CancellationToken,
        wakeup: &Notify,
        backlog: &Notify,
    ) {
        let mut idle = IdlePacer::new(self.settings.idle_poll_max());
        let mut outage = outage_backoff(&self.settings);
        if !lead && !wait_for(backlog, shutdown).await {
            return;
        }
        while !shutdown.is_cancelled() {
            match self.publish_batch().await {
                Ok(outcome) => {
                    outage.reset();
                    let full = outcome.claimed >= self.settings.batch_size as usize;
                    if full {
                        // There is more: a helper takes the next batch beside this loop.
                        backlog.notify_one();
                    }
                    if !lead && !full {
                        if !wait_for(backlog, shutdown).await {
                            return;
                        }
                        continue;
                    }
                    if outcome.claimed > 0 {
                        idle.reset();
                        self.metrics.idle_wait.set(0.0);
                        continue;
                    }
                    let wait = idle.next_wait();
                    self.metrics.idle_wait.set(wait.as_secs_f64());
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = wakeup.notified() => idle.reset(),
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "publishing paused; retrying when the dependency answers");
                    self.metrics.paused.inc();
                    self.wait_until_publishable(&mut outage, shutdown).await;
                    self.metrics.paused.dec();
                    idle.reset();
                }
            }
        }
    }

    /// Waits, with backoff and without giving up, until the broker answers and the database
    /// answers (a late delivery cannot be overtaken: its key stays held until its report).
    async fn wait_until_publishable(
        &self,
        outage: &mut ExponentialBackoff,
        shutdown: &CancellationToken,
    ) {
        loop {
            let pause = outage
                .next_backoff()
                .unwrap_or(Duration::from_millis(self.settings.outage_backoff_max_ms));
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
            if let Some((code, reason)) = self.producer().client().fatal_error() {
                tracing::error!(?code, %reason, "the producer failed fatally; creating a new one");
                let created = publish::producer_config(&self.settings)
                    .and_then(|config| Ok(config.create::<FutureProducer>()?));
                match created {
                    Ok(producer) => *self.producer.lock().expect("producer lock") = producer,
                    Err(error) => {
                        tracing::error!(%error, "cannot create a new producer");
                        continue;
                    }
                }
            }
            // No wait for messages in flight: a message without its report holds its key (see
            // `held`), and other steps' messages are on lanes those steps hold.
            if let Err(error) = self.broker.run().await {
                tracing::debug!(%error, "broker not answering");
                continue;
            }
            if let Err(error) = self.database.run().await {
                tracing::debug!(%error, "database not answering");
                continue;
            }
            tracing::info!("broker and database answer; publishing resumes");
            return;
        }
    }
}

/// Waits for `signal`; false when `shutdown` came first.
async fn wait_for(signal: &Notify, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = signal.notified() => true,
    }
}

fn outage_backoff(settings: &Settings) -> ExponentialBackoff {
    outbox_core::retry::until_it_answers(Duration::from_millis(settings.outage_backoff_max_ms))
}
