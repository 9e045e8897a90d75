//! Tells idle relays that new outbox rows exist, after the order committed.
//!
//! A `pg_notify` inside the order transaction would serialise every order commit on the
//! notification queue lock; sent afterwards from one task, notifications coalesce: however many
//! orders commit while one notify is in flight, at most one more follows.

use std::sync::Arc;

use outbox_core::db::OUTBOX_WAKEUP_CHANNEL;
use sqlx::PgPool;
use tokio::sync::Notify;

#[derive(Clone)]
pub(crate) struct Wakeup(Arc<Notify>);

impl Wakeup {
    /// Asks for one notification soon; cheap, never blocks, never fails the caller.
    pub fn ring(&self) {
        self.0.notify_one();
    }
}

pub(crate) fn spawn(pool: PgPool) -> (Wakeup, tokio::task::JoinHandle<()>) {
    let notify = Arc::new(Notify::new());
    let waiter = notify.clone();
    let task = tokio::spawn(async move {
        loop {
            waiter.notified().await;
            // A lost wake-up only delays publication until the relay's next poll.
            if let Err(error) = sqlx::query!("select pg_notify($1, '')", OUTBOX_WAKEUP_CHANNEL)
                .execute(&pool)
                .await
            {
                tracing::debug!(%error, "outbox wake-up notification not sent");
            }
        }
    });
    (Wakeup(notify), task)
}
