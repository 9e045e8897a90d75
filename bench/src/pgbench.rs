//! The ceiling of order-api: `pgbench` running the statement order-api runs, one order per
//! statement (as order-api writes an order that arrives alone), with the same number of clients,
//! on a fresh database.

use std::{path::Path, time::Duration};

use anyhow::Context;
use outbox_core::event::{ORDER_API_SOURCE, ORDER_PLACED_TYPE};

/// order-api's order + outbox statement (`order_store::OrderWriter`), from its one file.
pub const ORDER_INSERT_SQL: &str = include_str!("../../order-api/queries/insert_orders.sql");

/// What each bound parameter of [`ORDER_INSERT_SQL`] becomes in the pgbench script: random or
/// per-client values from `\set`, the constant strings from `-D`; `$1`..`$13` are columns, here
/// of one order each. Run with `-M prepared`, every `:variable` is a bound parameter, as with
/// sqlx. Ids are a per-client counter laid out like a UUIDv7 (increasing), no idempotency key
/// (as the HTTP load sends none).
const PARAMETERS: [(&str, &str); 16] = [
    ("$1", "array[lpad(to_hex(:seq::bigint), 32, '0')::uuid]"),
    ("$2", "array['user-' || :user::text]"),
    ("$3", "array['CATALOG-' || lpad(:product::text, 4, '0')]"),
    ("$4", "array[:quantity::int]"),
    ("$5", "array[:price::bigint]"),
    ("$6", "array[:total::bigint]"),
    ("$7", "array[now()]"),
    ("$8", "array[lpad(to_hex(:seq::bigint), 32, '0')::uuid]"),
    ("$9", "array[null::text]"),
    ("$10", "array[null::jsonb]"),
    ("$11", "array[:payload::jsonb]"),
    ("$12", "array[:traceparent::text]"),
    ("$13", "array[null::text]"),
    ("$14", ":topic"),
    ("$15", ":event_type"),
    ("$16", ":source"),
];

/// The pgbench script: variables, then the statement with its parameters replaced.
pub fn script(products: u64) -> String {
    let mut sql = ORDER_INSERT_SQL.replace(r#" as "order_id!""#, " as order_id");
    // Highest first, so `$1` does not match the start of `$10`..`$16`.
    for (placeholder, value) in PARAMETERS.iter().rev() {
        sql = sql.replace(placeholder, value);
    }
    let sql = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    format!(
        "\\set n :n + 1\n\
         \\set seq :n * 4096 + :client_id\n\
         \\set user random(1, 1000)\n\
         \\set product random(1, {products})\n\
         \\set quantity random(1, 5)\n\
         \\set price 1500\n\
         \\set total :quantity * :price\n\
         {sql};\n"
    )
}

/// The `-D` constants: a realistic payload and traceparent, the row's topic and CloudEvents type.
fn constants(topic: &str) -> Vec<(String, String)> {
    let payload = serde_json::json!({
        "orderId": uuid::Uuid::now_v7(),
        "userId": "user-17",
        "productId": "CATALOG-0017",
        "quantity": 3,
        "unitPrice": 1500,
        "totalPrice": 4500,
        "createdAt": chrono::Utc::now(),
    });
    vec![
        ("n".into(), "0".into()),
        ("topic".into(), topic.into()),
        ("event_type".into(), ORDER_PLACED_TYPE.into()),
        ("source".into(), ORDER_API_SOURCE.into()),
        ("payload".into(), payload.to_string()),
        (
            "traceparent".into(),
            outbox_core::telemetry::child_context(
                &tracing::Span::none(),
                &outbox_core::telemetry::TraceHeaders::default(),
            )
            .traceparent
            .expect("a new trace"),
        ),
    ]
}

/// What pgbench reported.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PgbenchResult {
    pub tps: f64,
    pub transactions: u64,
    pub failed: u64,
    pub latency_avg_ms: Option<f64>,
    pub clients: u64,
    pub threads: u64,
    pub seconds: u64,
}

/// Runs pgbench against `database_url` for `seconds` with `clients` clients.
pub async fn run(
    database_url: &str,
    clients: u64,
    seconds: u64,
    products: u64,
    topic: &str,
    work_dir: &Path,
) -> anyhow::Result<PgbenchResult> {
    let script_path = work_dir.join("order-insert.pgbench");
    tokio::fs::write(&script_path, script(products)).await?;
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get() as u64);
    let threads = clients.min(cores).max(1);
    let mut command = tokio::process::Command::new("pgbench");
    command
        .args(["--no-vacuum", "--protocol=prepared"])
        .arg(format!("--client={clients}"))
        .arg(format!("--jobs={threads}"))
        .arg(format!("--time={seconds}"))
        .arg(format!("--file={}", script_path.display()));
    for (name, value) in constants(topic) {
        command.arg(format!("--define={name}={value}"));
    }
    command.arg(database_url).kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(seconds + 120), command.output())
        .await
        .context("pgbench did not finish")?
        .context("cannot run pgbench (install the PostgreSQL client tools)")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    anyhow::ensure!(
        output.status.success(),
        "pgbench failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    let find = |prefix: &str| {
        stdout
            .lines()
            .find_map(|line| line.trim().strip_prefix(prefix))
            .map(str::trim)
    };
    let number = |text: Option<&str>| {
        text.and_then(|t| t.split_whitespace().next())
            .and_then(|t| t.parse::<f64>().ok())
    };
    let tps =
        number(find("tps =")).with_context(|| format!("no tps in pgbench output:\n{stdout}"))?;
    Ok(PgbenchResult {
        tps,
        transactions: number(find("number of transactions actually processed:")).unwrap_or(0.0)
            as u64,
        failed: number(find("number of failed transactions:")).unwrap_or(0.0) as u64,
        latency_avg_ms: number(find("latency average =")),
        clients,
        threads,
        seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_parameter_is_replaced_in_the_script() {
        let script = script(1000);
        assert!(!script.contains('$'), "{script}");
        assert!(script.contains(":seq::bigint"));
    }
}
