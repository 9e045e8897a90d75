//! The measurements, one module per row of the table, and what they share.

mod consumer;
mod drain;
mod held;
mod latency;
mod load;
mod order_api;
mod peer;
mod pickup;
mod relay;

use crate::{report::Row, stats::Percentiles, Bench, RowName};

/// Results a later row reuses instead of measuring again.
#[derive(Debug, Default)]
pub struct Shared {
    /// The relay row's drain: (rows, events/s).
    pub relay_drain: Option<(u64, f64)>,
    /// The pickup row's commit → topic latency.
    pub pickup: Option<Percentiles>,
}

/// Runs one measurement; a failure becomes an ERROR row and the next measurement still runs.
pub async fn run(name: RowName, bench: &Bench, shared: &mut Shared) -> Vec<Row> {
    let result = match name {
        RowName::OrderApi => order_api::run(bench).await,
        RowName::Relay => relay::run(bench, shared).await,
        RowName::Consumer => consumer::run(bench).await,
        RowName::Latency => latency::run(bench).await,
        RowName::Held => held::run(bench).await,
        RowName::Pickup => pickup::run(bench, shared).await,
        RowName::Peer => peer::run(bench, shared).await,
    };
    match result {
        Ok(rows) => rows,
        Err(error) => {
            eprintln!("[bench] {} failed: {error:#}", name.as_str());
            vec![Row::error(name.as_str(), &error)]
        }
    }
}

/// Progress lines on stderr (stdout carries only the table).
pub(crate) fn say(row: &str, message: impl std::fmt::Display) {
    eprintln!("[bench] {row}: {message}");
}
