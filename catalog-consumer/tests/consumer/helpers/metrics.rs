//! Series read from a `/metrics` body.

/// `catalog_consumer_messages_total{result=...}`.
pub fn messages_metric(metrics: &str, result: &str) -> u64 {
    metric_value(
        metrics,
        &format!("catalog_consumer_messages_total{{result=\"{result}\"}}"),
    )
}

/// The value of an unlabelled gauge (0 when absent).
pub fn metric_gauge(metrics: &str, name: &str) -> f64 {
    testkit::metric_value(metrics, name).unwrap_or(0.0)
}

/// The value of a series, named with its labels (0 when absent).
pub fn metric_value(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .map_or(0, |value| value as u64)
}
