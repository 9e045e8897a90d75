//! JSON log lines on stdout, filtered by `RUST_LOG` (default `info`).

use tracing_subscriber::{layer::SubscriberExt, util::SubscriberInitExt, EnvFilter};

/// Installs the global subscriber: one JSON object per line on stdout, with the current span's
/// fields, filtered by `RUST_LOG`. Calling it twice is harmless (tests build several apps).
pub fn init() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,rdkafka=warn,sqlx=warn"));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false)
                .with_writer(std::io::stdout),
        )
        .try_init();
}
