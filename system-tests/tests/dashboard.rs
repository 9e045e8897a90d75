//! The three binaries as processes against their own databases and topic: their `healthcheck`
//! subcommands, and the Grafana dashboard in `deploy/grafana/`, which must query only metrics
//! the services export: one order goes through, and every metric name in every panel's query
//! must appear in some service's `/metrics`. Renaming a metric in a service without updating
//! the dashboard fails this test.

use std::{collections::BTreeSet, process::Command, time::Duration};

use system_tests::{free_port, service_binary, Stack};
use testkit::eventually;

const DASHBOARD: &str = include_str!("../../deploy/grafana/outbox-dashboard.json");
const PREFIXES: [&str; 3] = ["order_api_", "outbox_relay_", "catalog_consumer_"];

/// Every metric name the dashboard's queries use.
fn queried_metrics() -> BTreeSet<String> {
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).expect("dashboard JSON");
    let mut names = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if PREFIXES.iter().any(|prefix| word.starts_with(prefix)) {
                    names.insert(word.to_owned());
                }
            }
        }
    }
    names
}

/// The sample names of a `/metrics` body (`name{labels} value` or `name value`).
fn exported(body: &str) -> BTreeSet<String> {
    body.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_grafana_dashboard_queries_is_exported_by_a_service() {
    let queried = queried_metrics();
    assert!(queried.len() >= 10, "the dashboard queries: {queried:?}");

    let stack = Stack::start(&[
        ("MAX_OUTBOX_LAG_SECS", "3600"),
        ("STATS_INTERVAL_SECS", "1"),
    ])
    .await;
    let (api_addr, relay_addr, consumer_addr) = (&stack.api, &stack.relay, &stack.consumer);
    let http = reqwest::Client::new();
    let deadline = Duration::from_secs(60);
    // The `healthcheck` subcommand (container health checks) agrees with /readyz, and fails
    // when nothing answers.
    for (binary, address) in [
        ("order-api", api_addr),
        ("outbox-relay", relay_addr),
        ("catalog-consumer", consumer_addr),
    ] {
        let ready = Command::new(service_binary(binary))
            .arg("healthcheck")
            .env("HTTP_ADDR", address)
            .output()
            .unwrap();
        assert!(ready.status.success(), "{binary} healthcheck: {ready:?}");
        let nobody = format!("127.0.0.1:{}", free_port());
        let down = Command::new(service_binary(binary))
            .args(["healthcheck", "--http-addr", &nobody])
            .output()
            .unwrap();
        assert_eq!(
            down.status.code(),
            Some(1),
            "{binary} healthcheck of nothing"
        );
        assert!(
            String::from_utf8_lossy(&down.stderr).contains("/readyz"),
            "{binary}: {down:?}"
        );
    }

    let order = http
        .post(format!("http://{api_addr}/orders"))
        .json(&serde_json::json!({
            "userId": "user-1", "productId": "CATALOG-0001", "quantity": 10, "unitPrice": 1500
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(order.status(), 201);

    let catalog = &stack.catalog;
    eventually(deadline, || async move {
        let stock: i32 =
            sqlx::query_scalar("select stock from products where product_id = 'CATALOG-0001'")
                .fetch_one(catalog)
                .await
                .ok()?;
        (stock == 90).then_some(())
    })
    .await
    .expect("the order applied: stock 100 - 10");

    // Once the consumer's statistics have reported its partitions' lag, every series the
    // dashboard needs exists.
    let scrape = || async {
        let mut names = BTreeSet::new();
        for address in [api_addr, relay_addr, consumer_addr] {
            let body = http
                .get(format!("http://{address}/metrics"))
                .send()
                .await
                .expect("GET /metrics")
                .text()
                .await
                .expect("metrics body");
            names.extend(exported(&body));
        }
        names
    };
    let complete = eventually(deadline, || async {
        queried.is_subset(&scrape().await).then_some(())
    })
    .await;
    if complete.is_err() {
        let names = scrape().await;
        let missing: Vec<&String> = queried.difference(&names).collect();
        panic!("the dashboard queries metrics no service exports: {missing:?}");
    }
}
