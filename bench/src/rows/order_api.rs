//! order-api throughput: N orders over C keep-alive connections (closed loop) against a release
//! order-api on a fresh database, beside pgbench running the same statement with C clients for a
//! similar time on another fresh database.

use std::time::Duration;

use serde_json::json;

use super::say;
use crate::{
    cpu::CpuMeter,
    pgbench,
    report::{Row, Verdict},
    services::{Kind, Service},
    stats::{int, ms, Percentiles},
    Bench,
};

const TARGET_RATIO: f64 = 0.6;

pub async fn run(bench: &Bench) -> anyhow::Result<Vec<Row>> {
    let sizes = &bench.sizes;
    let (n, connections) = (sizes.orders, sizes.connections);
    let topic = "order-events";

    let db = bench
        .infra
        .fresh_database("order_api", &outbox_core::db::ORDERS_MIGRATOR)
        .await?;
    let mut api = Service::start(
        bench,
        Kind::OrderApi,
        "order-api",
        &[
            ("DATABASE_URL", db.url.as_str()),
            ("ORDER_EVENTS_TOPIC", topic),
        ],
    )
    .await?;
    api.wait_ready(&bench.http, Duration::from_secs(60)).await?;
    let warmup = (n / 20).clamp(100, 1_000);
    say("order-api", format!("warm-up: {warmup} orders"));
    super::load::closed_loop(&api.base_url(), warmup, connections, sizes.products).await?;
    say(
        "order-api",
        format!("{n} orders over {connections} connections"),
    );
    let commits_before = bench.infra.commits(&db.name).await?;
    let meter = CpuMeter::start();
    let load = super::load::closed_loop(&api.base_url(), n, connections, sizes.products).await?;
    let load_cpu = meter.stop();
    api.check_running()?;
    api.stop().await;
    // After the stop: every backend has flushed its statistics.
    let api_commits = bench.infra.commits(&db.name).await? - commits_before;
    bench.infra.drop_database(db).await;
    anyhow::ensure!(
        load.ok > 0,
        "no order was accepted: {}",
        load.first_error.unwrap_or_default()
    );
    let rate = load.ok as f64 / load.seconds;
    let latency = Percentiles::of(load.latencies_ms.clone()).expect("some orders");

    let seconds = load.seconds.ceil().max(1.0) as u64;
    say(
        "order-api",
        format!("pgbench: the same statement, {connections} clients, {seconds} s"),
    );
    let db = bench
        .infra
        .fresh_database("pgbench", &outbox_core::db::ORDERS_MIGRATOR)
        .await?;
    let pgbench_commits_before = bench.infra.commits(&db.name).await?;
    let meter = CpuMeter::start();
    let ceiling = pgbench::run(
        &db.url,
        connections,
        seconds,
        sizes.products,
        topic,
        &bench.log_dir,
    )
    .await;
    let pgbench_cpu = meter.stop();
    let pgbench_commits = bench.infra.commits(&db.name).await? - pgbench_commits_before;
    let written: i64 = sqlx::query_scalar("select count(*) from outbox")
        .fetch_one(&db.pool)
        .await?;
    bench.infra.drop_database(db).await;
    let ceiling = ceiling?;
    // Every pgbench transaction must have written its order and outbox row, or the ceiling is
    // not the statement's.
    anyhow::ensure!(
        written > 0 && written as u64 >= ceiling.transactions,
        "pgbench counted {} transactions but wrote {written} outbox rows",
        ceiling.transactions
    );
    let ratio = rate / ceiling.tps;

    let mut notes = vec![format!(
        "order-api: HTTP/1.1 + JSON + its pool (DB_MAX_CONNECTIONS, default 10) for {connections} \
         clients; pgbench: {connections} connections straight to PostgreSQL. \
         Both share the 2 cores with PostgreSQL, the load generator with order-api."
    )];
    notes.push(format!("order-api run: {}", load_cpu.short()));
    notes.push(format!("pgbench run: {}", pgbench_cpu.short()));
    let per_order =
        |cpu: &crate::cpu::CpuUse, orders: f64| 1e6 * cpu.seconds_of("postgres") / orders.max(1.0);
    notes.push(format!(
        "PostgreSQL per order: order-api {:.0} µs CPU and {:.2} transactions, \
         pgbench {:.0} µs and {:.2}",
        per_order(&load_cpu, load.ok as f64),
        api_commits as f64 / load.ok.max(1) as f64,
        per_order(&pgbench_cpu, ceiling.transactions as f64),
        pgbench_commits as f64 / ceiling.transactions.max(1) as f64,
    ));
    if load.errors > 0 {
        notes.push(format!(
            "{} of {n} orders failed; first: {}",
            load.errors,
            load.first_error.clone().unwrap_or_default()
        ));
    }
    if ceiling.failed > 0 {
        notes.push(format!("pgbench: {} failed transactions", ceiling.failed));
    }
    Ok(vec![Row {
        name: "order-api".into(),
        what: format!(
            "order-api, {} orders, {connections} connections",
            int(n as f64)
        ),
        figure: format!(
            "{} orders/s (p50 {} / p99 {} ms)",
            int(rate),
            ms(latency.p50_ms),
            ms(latency.p99_ms)
        ),
        ceiling: format!(
            "pgbench, same statement, {connections} clients: {} tps",
            int(ceiling.tps)
        ),
        ratio: Some(ratio),
        target: format!("≥ {TARGET_RATIO:.2}"),
        verdict: Verdict::judge(bench.judged(), ratio >= TARGET_RATIO),
        error: None,
        notes,
        metrics: json!({
            "orders": n,
            "connections": connections,
            "orders_per_s": rate,
            "ok": load.ok,
            "errors": load.errors,
            "seconds": load.seconds,
            "latency": latency,
            "pgbench": ceiling,
            "ratio": ratio,
            "target_ratio": TARGET_RATIO,
                "cpu": { "order_api_run": load_cpu, "pgbench_run": pgbench_cpu },
                "postgres_commits": { "order_api_run": api_commits, "pgbench_run": pgbench_commits },
        }),
    }])
}
