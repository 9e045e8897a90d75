//! A relay under test: a fresh orders database and topic, the relay binary started and ready
//! while the outbox is still empty, so that a drain is timed from the commit that fills it to
//! the moment the last of those rows is gone.

use std::time::{Duration, Instant};

use sqlx::PgConnection;

use crate::{
    infra::Database,
    services::{Kind, Service},
    Bench,
};

/// Partitions of every topic the benchmark creates (as infra.sh creates `order-events`).
pub const PARTITIONS: i32 = 6;

pub struct RelayUnderTest {
    pub db: Database,
    pub topic: String,
    pub relay: Service,
}

impl RelayUnderTest {
    pub async fn start(bench: &Bench, tag: &str) -> anyhow::Result<Self> {
        let db = bench
            .infra
            .fresh_database(tag, &outbox_core::db::ORDERS_MIGRATOR)
            .await?;
        let topic = bench.infra.fresh_topic(tag, PARTITIONS).await?;
        let mut relay = Service::start(
            bench,
            Kind::Relay,
            &format!("{tag}-outbox-relay"),
            &[("DATABASE_URL", db.url.as_str())],
        )
        .await?;
        relay
            .wait_ready(&bench.http, Duration::from_secs(60))
            .await?;
        Ok(Self { db, topic, relay })
    }

    /// Waits until no row with an id in `first..=last` is left, polling an index probe every
    /// 10 ms; fails when nothing moved for a minute or the relay exited. Returns when it saw
    /// them gone (so the figure is late by at most one poll).
    pub async fn wait_drained(
        &mut self,
        conn: &mut PgConnection,
        first: i64,
        last: i64,
    ) -> anyhow::Result<Instant> {
        let mut last_count: Option<i64> = None;
        let mut last_progress = Instant::now();
        let mut last_check = Instant::now();
        let mut lowest_left = first;
        loop {
            // The lowest id left, through the primary key, from the lowest id left at the last
            // look: no row of the range comes back once deleted, so each look walks only the
            // entries deleted since the one before, not every deleted row of the range again
            // (100 looks a second must not take CPU from the relay they time).
            let left: Option<i64> = sqlx::query_scalar(
                "select id from outbox where id between $1 and $2 order by id limit 1",
            )
            .bind(lowest_left)
            .bind(last)
            .fetch_optional(&mut *conn)
            .await?;
            match left {
                None => return Ok(Instant::now()),
                Some(id) => lowest_left = id,
            }
            if last_check.elapsed() > Duration::from_secs(5) {
                last_check = Instant::now();
                self.relay.check_running()?;
                let count: i64 =
                    sqlx::query_scalar("select count(*) from outbox where id between $1 and $2")
                        .bind(lowest_left)
                        .bind(last)
                        .fetch_one(&mut *conn)
                        .await?;
                if last_count != Some(count) {
                    last_count = Some(count);
                    last_progress = Instant::now();
                }
                anyhow::ensure!(
                    last_progress.elapsed() < Duration::from_secs(60),
                    "the relay made no progress for a minute ({count} rows left)"
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn finish(self, bench: &Bench) {
        self.relay.stop().await;
        bench.infra.drop_database(self.db).await;
        bench.infra.delete_topics(&[&self.topic]).await;
    }
}
