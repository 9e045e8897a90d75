//! Retention: tables that would otherwise grow by one row per order (`processed_events`,
//! `idempotency_keys`) are pruned by the service that owns them, in a background task, in
//! bounded batches served by an index on the age column, so pruning never holds a long lock or
//! a long transaction.

use std::time::Duration;

use prometheus::IntCounter;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// Parses a duration written as a number and a unit: `45s`, `30m`, `24h`, `7d` (a bare number
/// is seconds). For retention settings, where "7d" reads better than "604800".
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration: write e.g. 45s, 30m, 24h or 7d"))?;
    let seconds = match unit.trim() {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        other => {
            return Err(format!(
                "'{other}' is not a duration unit: use s, m, h or d (e.g. 7d)"
            ))
        }
    };
    number
        .checked_mul(seconds)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("'{text}' is too long"))
}

/// Writes a duration the way [`parse_duration`] reads it, in its largest whole unit.
pub fn format_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if seconds > 0 && seconds.is_multiple_of(size) {
            return format!("{}{unit}", seconds / size);
        }
    }
    format!("{seconds}s")
}

/// The pruning statement of a retained table, written once for every such table: deletes up to
/// `$2` rows whose `age` column is more than `$1` seconds old, oldest first (through the index on
/// that column), and returns how many it deleted (as `bigint`). Made by `concat!` from literals
/// at compile time: a constant statement with bound parameters, never SQL built at run time.
#[macro_export]
#[rustfmt::skip]
macro_rules! prune_statement {
    ($table:literal, key = $key:literal, age = $age:literal) => {
        concat!(
            "with gone as (delete from ", $table,
            " where ", $key, " in (select ", $key, " from ", $table,
            " where ", $age, " < now() - $1 * interval '1 second'",
            " order by ", $age, " limit $2)",
            " returning 1) select count(*) from gone"
        )
    };
}

/// One table's pruning: a statement that deletes at most `$2` rows older than `$1` seconds and
/// returns how many it deleted (as `bigint`), see [`prune_statement!`].
pub struct Pruner {
    pool: PgPool,
    /// The table's name, for log lines.
    pub table: &'static str,
    /// `with gone as (delete ... where key in (select key ... where age < now() - $1 * interval
    /// '1 second' order by age limit $2) returning 1) select count(*) from gone`
    pub statement: &'static str,
    pub retention: Duration,
    /// Time between two pruning rounds.
    pub interval: Duration,
    /// Most rows deleted by one statement (one short transaction).
    pub batch: i64,
    pub pruned: IntCounter,
}

impl Pruner {
    /// `table`'s pruning (in `pool`'s database) by `statement` at the interval and batch size
    /// of `settings`.
    pub fn new(
        pool: PgPool,
        table: &'static str,
        statement: &'static str,
        retention: Duration,
        settings: &crate::settings::PruneSettings,
        pruned: IntCounter,
    ) -> Self {
        Self {
            pool,
            table,
            statement,
            retention,
            interval: settings.interval(),
            batch: settings.prune_batch_size,
            pruned,
        }
    }

    /// One round: batches until a batch deletes fewer rows than its limit. Returns the rows
    /// deleted.
    pub async fn prune_once(&self) -> Result<u64, sqlx::Error> {
        let mut total = 0;
        loop {
            let deleted: i64 = sqlx::query_scalar(self.statement)
                .bind(self.retention.as_secs_f64())
                .bind(self.batch)
                .fetch_one(&self.pool)
                .await?;
            let deleted = u64::try_from(deleted).unwrap_or(0);
            self.pruned.inc_by(deleted);
            total += deleted;
            if deleted < u64::try_from(self.batch).unwrap_or(u64::MAX) {
                return Ok(total);
            }
        }
    }

    /// Prunes every `interval` until [`Pruning::stop`]. A failed round (database unavailable)
    /// is logged and tried again at the next interval.
    pub fn spawn(self) -> Pruning {
        let stop = CancellationToken::new();
        let task = self.run(stop.clone());
        Pruning {
            stop,
            task: tokio::spawn(task),
        }
    }

    async fn run(self, stop: CancellationToken) {
        {
            let mut ticker = tokio::time::interval(self.interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = ticker.tick() => {}
                }
                let pruned = tokio::select! {
                    _ = stop.cancelled() => return,
                    pruned = self.prune_once() => pruned,
                };
                match pruned {
                    Ok(0) => {}
                    Ok(rows) => tracing::info!(
                        table = self.table,
                        rows,
                        retention = %format_duration(self.retention),
                        "pruned rows past their retention"
                    ),
                    Err(error) => tracing::warn!(
                        table = self.table,
                        %error,
                        "cannot prune rows past their retention; trying again at the next interval"
                    ),
                }
            }
        }
    }
}

/// A running [`Pruner`].
pub struct Pruning {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Pruning {
    /// Stops pruning; a round in progress is abandoned (its transaction rolls back).
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_with_units_and_write_back_the_same() {
        for (text, seconds) in [
            ("45", 45),
            ("45s", 45),
            ("30m", 1_800),
            ("24h", 86_400),
            ("7d", 604_800),
        ] {
            assert_eq!(parse_duration(text), Ok(Duration::from_secs(seconds)));
        }
        assert_eq!(format_duration(Duration::from_secs(604_800)), "7d");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert!(parse_duration("7 weeks").is_err());
        assert!(parse_duration("d").is_err());
        assert!(parse_duration("").is_err());
    }
}
