use prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

/// order-api's metrics; labels are low-cardinality error codes only.
#[derive(Clone)]
pub struct Metrics {
    pub orders_created: IntCounter,
    pub idempotent_replays: IntCounter,
    pub rejected: IntCounterVec,
    pub insert_seconds: Histogram,
    /// Age of the oldest pending outbox row, sampled while MAX_OUTBOX_LAG_SECS is set.
    pub outbox_lag: Gauge,
    /// 1 while orders are refused because the outbox lags (MAX_OUTBOX_LAG_SECS), else 0.
    pub outbox_lagging: IntGauge,
    /// Idempotency keys deleted past IDEMPOTENCY_KEY_RETENTION.
    pub idempotency_keys_pruned: IntCounter,
    /// Orders per insert statement (see `order_store::OrderWriter`).
    pub insert_batch_orders: Histogram,
    /// Orders waiting for a writer: a queue that grows while the database is slow.
    pub orders_waiting: IntGauge,
}

impl Metrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let metrics = Self {
            orders_created: IntCounter::new(
                "order_api_orders_created_total",
                "Orders written together with their outbox event.",
            )?,
            idempotent_replays: IntCounter::new(
                "order_api_idempotent_replays_total",
                "Requests answered with an existing order because of their Idempotency-Key.",
            )?,
            rejected: IntCounterVec::new(
                Opts::new(
                    "order_api_requests_rejected_total",
                    "Requests answered with an error, by error code.",
                ),
                &["error"],
            )?,
            insert_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "order_api_order_insert_seconds",
                    "Time to write one order and its outbox row, waiting for a writer included.",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
                ]),
            )?,
            outbox_lag: Gauge::new(
                "order_api_outbox_lag_seconds",
                "Age of the oldest pending outbox row, sampled every second while MAX_OUTBOX_LAG_SECS is set (0 otherwise).",
            )?,
            outbox_lagging: IntGauge::new(
                "order_api_outbox_lagging",
                "1 while POST /orders answers 503 outbox_lagging (MAX_OUTBOX_LAG_SECS exceeded), else 0.",
            )?,
            idempotency_keys_pruned: IntCounter::new(
                "order_api_idempotency_keys_pruned_total",
                "Idempotency keys deleted because they were older than IDEMPOTENCY_KEY_RETENTION.",
            )?,
            insert_batch_orders: Histogram::with_opts(
                HistogramOpts::new(
                    "order_api_insert_batch_orders",
                    "Orders written by one insert statement (one transaction): orders that arrive while the writers are busy share the next one.",
                )
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
            )?,
            orders_waiting: IntGauge::new(
                "order_api_orders_waiting",
                "Orders received and not yet in an insert statement (both writers busy).",
            )?,
        };
        registry.register(Box::new(metrics.orders_created.clone()))?;
        registry.register(Box::new(metrics.insert_batch_orders.clone()))?;
        registry.register(Box::new(metrics.orders_waiting.clone()))?;
        registry.register(Box::new(metrics.outbox_lag.clone()))?;
        registry.register(Box::new(metrics.outbox_lagging.clone()))?;
        registry.register(Box::new(metrics.idempotency_keys_pruned.clone()))?;
        registry.register(Box::new(metrics.idempotent_replays.clone()))?;
        registry.register(Box::new(metrics.rejected.clone()))?;
        registry.register(Box::new(metrics.insert_seconds.clone()))?;
        Ok(metrics)
    }
}
