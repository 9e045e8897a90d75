//! The three binaries as processes against their own databases and topic: their `healthcheck`
//! subcommands, and the Grafana dashboard in `deploy/grafana/`, which must query only metrics
//! the services export: one order goes through, and every metric name in every panel's query
//! must appear in some service's `/metrics`. Renaming a metric in a service without updating
//! the dashboard fails this test.

use std::{
    collections::BTreeSet,
    process::{Command, Stdio},
    time::Duration,
};

use outbox_core::db::{CATALOG_MIGRATOR, ORDERS_MIGRATOR};
use system_tests::{free_port, workspace_binary, KillOnDrop};
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

fn spawn(binary: &str, env: &[(&str, &str)]) -> KillOnDrop {
    KillOnDrop(
        Command::new(workspace_binary(binary))
            .envs(env.iter().copied())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("start {binary}: {error}")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_grafana_dashboard_queries_is_exported_by_a_service() {
    let queried = queried_metrics();
    assert!(queried.len() >= 10, "the dashboard queries: {queried:?}");

    let brokers = testkit::kafka_brokers().await;
    let topic = testkit::fresh_topic(&brokers, "order-events", 2)
        .await
        .unwrap();
    let dlq = testkit::fresh_topic(&brokers, "order-events-dlq", 1)
        .await
        .unwrap();
    let (orders_url, _orders) = testkit::fresh_database(&ORDERS_MIGRATOR).await.unwrap();
    let (catalog_url, catalog) = testkit::fresh_database(&CATALOG_MIGRATOR).await.unwrap();
    sqlx::query(
        "insert into products (product_id, product_name, stock, unit_price)
         values ('CATALOG-0001', 'Dashboard test', 100, 1500)
         on conflict (product_id) do update set stock = 100",
    )
    .execute(&catalog)
    .await
    .unwrap();
    let group = format!("dashboard-{}", uuid::Uuid::new_v4().simple());
    let ports = [free_port(), free_port(), free_port()];
    let addr = |port: u16| format!("127.0.0.1:{port}");
    let (api_addr, relay_addr, consumer_addr) = (addr(ports[0]), addr(ports[1]), addr(ports[2]));
    let _api = spawn(
        "order-api",
        &[
            ("HTTP_ADDR", &api_addr),
            ("DATABASE_URL", &orders_url),
            ("ORDER_EVENTS_TOPIC", &topic),
            ("MAX_OUTBOX_LAG_SECS", "3600"),
        ],
    );
    let _relay = spawn(
        "outbox-relay",
        &[
            ("HTTP_ADDR", &relay_addr),
            ("DATABASE_URL", &orders_url),
            ("KAFKA_BROKERS", &brokers),
            ("STATS_INTERVAL_SECS", "1"),
        ],
    );
    let _consumer = spawn(
        "catalog-consumer",
        &[
            ("HTTP_ADDR", &consumer_addr),
            ("DATABASE_URL", &catalog_url),
            ("KAFKA_BROKERS", &brokers),
            ("ORDER_EVENTS_TOPIC", &topic),
            ("DLQ_TOPIC", &dlq),
            ("CONSUMER_GROUP", &group),
        ],
    );
    let http = reqwest::Client::new();
    let deadline = Duration::from_secs(60);
    for address in [&api_addr, &relay_addr, &consumer_addr] {
        let url = format!("http://{address}/readyz");
        eventually(deadline, || {
            let (http, url) = (&http, &url);
            async move {
                let response = http.get(url).send().await.ok()?;
                response.status().is_success().then_some(())
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{url} ready"));
    }
    // The `healthcheck` subcommand (container health checks) agrees with /readyz, and fails
    // when nothing answers.
    for (binary, address) in [
        ("order-api", &api_addr),
        ("outbox-relay", &relay_addr),
        ("catalog-consumer", &consumer_addr),
    ] {
        let ready = Command::new(workspace_binary(binary))
            .arg("healthcheck")
            .env("HTTP_ADDR", address)
            .output()
            .unwrap();
        assert!(ready.status.success(), "{binary} healthcheck: {ready:?}");
        let nobody = format!("127.0.0.1:{}", free_port());
        let down = Command::new(workspace_binary(binary))
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

    let catalog = &catalog;
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
        for address in [&api_addr, &relay_addr, &consumer_addr] {
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
