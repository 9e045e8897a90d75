//! The relay's Prometheus metrics. Labels are low-cardinality only (a failure kind and an rdkafka
//! error code name), never an id.

use std::time::Instant;

use chrono::{DateTime, Utc};
use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry,
};

use crate::outbox::Status;

/// Seconds from a row's `created_at` (its order's commit) to `at` (the broker's ack, for
/// `outbox_relay_commit_to_ack_seconds`; the benchmark measures later points the same way);
/// 0 rather than negative when `at` reads earlier.
pub fn seconds_since_commit(created_at: DateTime<Utc>, at: DateTime<Utc>) -> f64 {
    let micros = (at - created_at).num_microseconds().unwrap_or(0);
    micros.max(0) as f64 / 1e6
}

/// The phases of `outbox_relay_step_phase_seconds`, in the order a step goes through them.
pub const STEP_PHASES: [&str; 4] = ["lock", "take", "publish", "commit"];

/// When a step reached the end of each of its phases (`outbox_relay_step_phase_seconds`).
#[derive(Debug, Clone, Copy)]
pub struct StepTimes {
    pub started: Instant,
    /// Its transaction begun and its lanes locked.
    pub locked: Instant,
    /// Its rows claimed (and deleted in the savepoint).
    pub taken: Instant,
    /// Every delivery report in, or the delivery timeout passed.
    pub published: Instant,
    pub committed: Instant,
}

/// Everything `/metrics` shows about the relay.
#[derive(Clone)]
pub struct Metrics {
    pub pending_rows: IntGauge,
    pub dead_rows: IntGauge,
    pub parked_rows: IntGauge,
    pub oldest_pending_age: Gauge,
    pub published: IntCounter,
    pub publish_failures: IntCounterVec,
    pub retries: IntCounter,
    pub dead_lettered: IntCounter,
    pub batch_size: Histogram,
    pub commit_to_ack: Histogram,
    pub step_phase: HistogramVec,
    pub paused: IntGauge,
    pub idle_wait: Gauge,
    pub held_keys: IntGauge,
}

impl Metrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let metrics = Self {
            pending_rows: IntGauge::new(
                "outbox_relay_pending_rows",
                "Outbox rows waiting to be published (refreshed periodically; exact up to 10,000, \
                 estimated from the table statistics above).",
            )?,
            dead_rows: IntGauge::new(
                "outbox_relay_dead_rows",
                "Outbox rows that failed their maximum attempts (refreshed periodically).",
            )?,
            parked_rows: IntGauge::new(
                "outbox_relay_parked_rows",
                "Outbox rows held behind a dead row of their key (refreshed periodically).",
            )?,
            oldest_pending_age: Gauge::new(
                "outbox_relay_oldest_pending_age_seconds",
                "Age of the oldest pending outbox row (refreshed periodically).",
            )?,
            published: IntCounter::new(
                "outbox_relay_published_total",
                "Rows acknowledged by the broker and deleted.",
            )?,
            publish_failures: IntCounterVec::new(
                Opts::new(
                    "outbox_relay_publish_failures_total",
                    "Failed sends and deliveries, by kind (permanent/transient) and rdkafka error code.",
                ),
                &["kind", "reason"],
            )?,
            retries: IntCounter::new(
                "outbox_relay_retries_total",
                "Attempts counted against messages the broker refused.",
            )?,
            dead_lettered: IntCounter::new(
                "outbox_relay_dead_total",
                "Rows that reached the maximum attempts and became dead.",
            )?,
            batch_size: Histogram::with_opts(
                HistogramOpts::new("outbox_relay_batch_size", "Rows claimed per step.").buckets(
                    vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 5000.0],
                ),
            )?,
            commit_to_ack: Histogram::with_opts(
                HistogramOpts::new(
                    "outbox_relay_commit_to_ack_seconds",
                    "Time from a row's created_at (the order's commit) to the broker's ack.",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    30.0, 60.0, 300.0,
                ]),
            )?,
            step_phase: HistogramVec::new(
                HistogramOpts::new(
                    "outbox_relay_step_phase_seconds",
                    "Time a step that claimed rows spent in each phase: lock (begin, lock lanes), \
                     take (claim and delete the rows), publish (enqueue, await the broker's acks), \
                     commit (settle what was not acknowledged, commit). The database bounds \
                     publishing when lock, take and commit dominate; the broker when publish does.",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                    5.0, 15.0, 60.0,
                ]),
                &["phase"],
            )?,
            paused: IntGauge::new(
                "outbox_relay_paused",
                "Steps waiting for the broker or the database to come back (0 while publishing normally).",
            )?,
            idle_wait: Gauge::new(
                "outbox_relay_idle_wait_seconds",
                "The wait before the next poll while idle (0 while there is work).",
            )?,
            held_keys: IntGauge::new(
                "outbox_relay_held_keys",
                "Keys this relay holds back (in order) while their partition is unavailable or a delivery of theirs is unresolved.",
            )?,
        };
        registry.register(Box::new(metrics.pending_rows.clone()))?;
        registry.register(Box::new(metrics.dead_rows.clone()))?;
        registry.register(Box::new(metrics.parked_rows.clone()))?;
        registry.register(Box::new(metrics.oldest_pending_age.clone()))?;
        registry.register(Box::new(metrics.published.clone()))?;
        registry.register(Box::new(metrics.publish_failures.clone()))?;
        registry.register(Box::new(metrics.retries.clone()))?;
        registry.register(Box::new(metrics.dead_lettered.clone()))?;
        registry.register(Box::new(metrics.batch_size.clone()))?;
        registry.register(Box::new(metrics.commit_to_ack.clone()))?;
        registry.register(Box::new(metrics.step_phase.clone()))?;
        // Every phase's series exists from the start, before the first step with rows.
        for phase in STEP_PHASES {
            metrics.step_phase.with_label_values(&[phase]);
        }
        registry.register(Box::new(metrics.paused.clone()))?;
        registry.register(Box::new(metrics.idle_wait.clone()))?;
        registry.register(Box::new(metrics.held_keys.clone()))?;
        Ok(metrics)
    }

    /// Records where a step that claimed rows spent its time.
    pub fn observe_step(&self, times: &StepTimes) {
        let ends = [
            times.started,
            times.locked,
            times.taken,
            times.published,
            times.committed,
        ];
        for (phase, span) in STEP_PHASES.iter().zip(ends.windows(2)) {
            let (from, to) = (span[0], span[1]);
            self.step_phase
                .with_label_values(&[phase])
                .observe(to.saturating_duration_since(from).as_secs_f64());
        }
    }

    pub fn set_status(&self, status: &Status) {
        self.pending_rows.set(status.pending);
        self.dead_rows.set(status.dead);
        self.parked_rows.set(status.parked);
        self.oldest_pending_age
            .set(status.oldest_pending_age_seconds);
    }
}
