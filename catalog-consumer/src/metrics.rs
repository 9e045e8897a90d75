use prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
};

use crate::{decode, stock::Outcome};

/// The `result` label of a dead-lettered message.
pub const DLQ: &str = "dlq";

/// catalog-consumer's metrics; labels are fixed sets of codes only, never ids.
#[derive(Clone)]
pub struct Metrics {
    /// By `result`: applied, duplicate, insufficient_stock, unknown_product, dlq.
    pub messages: IntCounterVec,
    /// By `reason`: the dead-letter reason codes.
    pub dead_lettered: IntCounterVec,
    /// By `cause`: database, dead_letter_topic. Each failed attempt of a batch.
    pub retries: IntCounterVec,
    pub batch_size: Histogram,
    pub apply_seconds: Histogram,
    pub commit_to_applied_seconds: Histogram,
    /// How long the batch in hand has been retried (0 when it is not being retried).
    pub batch_retrying_seconds: Gauge,
    /// Dead letters the dead-letter topic refused, kept in the `dead_letters` table.
    pub dead_letters_kept: IntCounter,
    /// By `result`: refetched, accepted. Offset gaps the broker served.
    pub offset_gaps: IntCounterVec,
    /// `processed_events` rows deleted past PROCESSED_EVENTS_RETENTION.
    pub processed_events_pruned: IntCounter,
    /// By `topic`, `partition`: the partition's high watermark minus the group's committed
    /// offset, for the partitions this member is assigned (from librdkafka's statistics).
    pub consumer_lag: IntGaugeVec,
}

impl Metrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let metrics = Self {
            messages: IntCounterVec::new(
                Opts::new(
                    "catalog_consumer_messages_total",
                    "Messages consumed, by result: applied, duplicate, insufficient_stock, unknown_product, dlq.",
                ),
                &["result"],
            )?,
            dead_lettered: IntCounterVec::new(
                Opts::new(
                    "catalog_consumer_dead_lettered_total",
                    "Messages produced to the dead-letter topic, by reason.",
                ),
                &["reason"],
            )?,
            retries: IntCounterVec::new(
                Opts::new(
                    "catalog_consumer_batch_retries_total",
                    "Failed attempts at a batch that will be retried, by cause (database, dead_letter_topic).",
                ),
                &["cause"],
            )?,
            batch_size: Histogram::with_opts(
                HistogramOpts::new(
                    "catalog_consumer_batch_size",
                    "Messages per batch.",
                )
                .buckets(vec![1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0]),
            )?,
            apply_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "catalog_consumer_apply_seconds",
                    "Time of the one database transaction that applies a batch.",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
                ]),
            )?,
            commit_to_applied_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "catalog_consumer_commit_to_applied_seconds",
                    "From the order's commit (ce_time) to its stock change being committed.",
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                ]),
            )?,
            batch_retrying_seconds: Gauge::new(
                "catalog_consumer_batch_retrying_seconds",
                "How long the batch in hand has been retried because the database or the dead-letter topic is unavailable (0 when not retrying).",
            )?,
            dead_letters_kept: IntCounter::new(
                "catalog_consumer_dead_letters_kept_total",
                "Dead letters the dead-letter topic refused, kept in the catalog database's dead_letters table.",
            )?,
            offset_gaps: IntCounterVec::new(
                Opts::new(
                    "catalog_consumer_offset_gaps_total",
                    "Offset gaps the broker served, by result: refetched (fetched again from the missing offset), accepted (still missing after re-fetching).",
                ),
                &["result"],
            )?,
            processed_events_pruned: IntCounter::new(
                "catalog_consumer_processed_events_pruned_total",
                "processed_events rows deleted because they were older than PROCESSED_EVENTS_RETENTION.",
            )?,
            consumer_lag: IntGaugeVec::new(
                Opts::new(
                    "catalog_consumer_lag_messages",
                    "Messages not yet committed by the group, per assigned partition: high watermark minus committed offset (librdkafka statistics, refreshed every few seconds).",
                ),
                &["topic", "partition"],
            )?,
        };
        for result in ["refetched", "accepted"] {
            metrics.offset_gaps.with_label_values(&[result]);
        }
        for outcome in Outcome::ALL {
            metrics.messages.with_label_values(&[outcome.as_str()]);
        }
        metrics.messages.with_label_values(&[DLQ]);
        for reason in decode::REASONS {
            metrics.dead_lettered.with_label_values(&[reason]);
        }
        registry.register(Box::new(metrics.messages.clone()))?;
        registry.register(Box::new(metrics.dead_lettered.clone()))?;
        registry.register(Box::new(metrics.retries.clone()))?;
        registry.register(Box::new(metrics.batch_size.clone()))?;
        registry.register(Box::new(metrics.apply_seconds.clone()))?;
        registry.register(Box::new(metrics.commit_to_applied_seconds.clone()))?;
        registry.register(Box::new(metrics.batch_retrying_seconds.clone()))?;
        registry.register(Box::new(metrics.dead_letters_kept.clone()))?;
        registry.register(Box::new(metrics.offset_gaps.clone()))?;
        registry.register(Box::new(metrics.processed_events_pruned.clone()))?;
        registry.register(Box::new(metrics.consumer_lag.clone()))?;
        Ok(metrics)
    }
}
