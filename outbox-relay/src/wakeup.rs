//! When to look for work again.
//!
//! Guarantee kept here: new rows are picked up within milliseconds without a `pg_notify` inside
//! the order transaction (which would serialise order commits). The relay polls adaptively: at
//! once while batches find work, then after 1 ms, doubling up to `IDLE_POLL_MAX_MS` while idle.
//! A notification on [`OUTBOX_WAKEUP_CHANNEL`] (sent by order-api after commit, coalesced) cuts an
//! idle wait short. The listener is an accelerator only: when it fails, polling still finds
//! every row, and it reconnects with backoff.

use std::{sync::Arc, time::Duration};

use backoff::backoff::Backoff;
use outbox_core::db::OUTBOX_WAKEUP_CHANNEL;
use sqlx::{postgres::PgListener, PgPool};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The idle wait: 1 ms after work was found, doubling up to a bound.
#[derive(Debug, Clone)]
pub struct IdlePacer {
    next: Duration,
    max: Duration,
}

impl IdlePacer {
    const FIRST: Duration = Duration::from_millis(1);

    pub fn new(max: Duration) -> Self {
        Self {
            next: Self::FIRST.min(max),
            max,
        }
    }

    /// After a batch that found work, or a wake-up.
    pub fn reset(&mut self) {
        self.next = Self::FIRST.min(self.max);
    }

    /// How long to wait now; the next wait is twice as long, up to the bound.
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        wait
    }
}

/// Listens on the wake-up channel until `stop`, ringing `wakeup` for every notification and
/// after every reconnection (notifications sent while disconnected are lost).
pub fn spawn_listener(
    pool: PgPool,
    wakeup: Arc<Notify>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = outbox_core::retry::until_it_answers(Duration::from_secs(10));
        loop {
            let listened = tokio::select! {
                _ = stop.cancelled() => return,
                listened = listen(&pool, &wakeup, &mut backoff) => listened,
            };
            if let Err(error) = listened {
                tracing::warn!(%error, "wake-up listener failed; polling continues");
            }
            let pause = backoff.next_backoff().unwrap_or(Duration::from_secs(10));
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    })
}

async fn listen(
    pool: &PgPool,
    wakeup: &Notify,
    backoff: &mut impl Backoff,
) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(OUTBOX_WAKEUP_CHANNEL).await?;
    tracing::debug!(channel = OUTBOX_WAKEUP_CHANNEL, "listening for wake-ups");
    backoff.reset();
    wakeup.notify_one();
    loop {
        match listener.try_recv().await? {
            Some(_) => wakeup.notify_one(),
            // The connection was lost; the next call reconnects and listens again.
            None => {
                tracing::debug!("wake-up listener reconnecting");
                wakeup.notify_one();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_idle_wait_doubles_up_to_its_bound_and_resets() {
        let mut pacer = IdlePacer::new(Duration::from_millis(5));
        let waits: Vec<u128> = (0..5).map(|_| pacer.next_wait().as_millis()).collect();
        assert_eq!(waits, vec![1, 2, 4, 5, 5]);
        pacer.reset();
        assert_eq!(pacer.next_wait(), Duration::from_millis(1));
    }
}
