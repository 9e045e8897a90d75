//! The chaos system test: the real processes (order-api, two outbox-relays, two catalog-consumers
//! in one group, a broker of its own) under open-loop load, while relays, consumers and order-api
//! are killed and restarted, a relay is frozen and its database connections cut, and the broker
//! is paused; at the end one consumer dies for good. Afterwards every accepted order must have
//! changed stock exactly once, and each product's events must be on the topic in the order the
//! clients saw the orders accepted.

mod diagnose;
mod faults;
mod load;
mod processes;
mod topic;

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::Duration,
};

use outbox_core::db::{CATALOG_MIGRATOR, ORDERS_MIGRATOR};
use serde_json::Value;
use sqlx::PgPool;
use testkit::eventually;
use tokio::time::Instant;
use uuid::Uuid;

use crate::{
    faults::FaultLog,
    load::{Accepted, Load},
    processes::{free_port, Binaries, Broker, Service, Spec},
};

/// Their keys hash to all six partitions (librdkafka's default partitioner), so that the final
/// kill leaves events on the dead consumer's partitions whatever it was assigned; asserted below.
const PRODUCTS: [&str; 8] = [
    "CATALOG-0001",
    "CATALOG-0002",
    "CATALOG-0003",
    "CATALOG-0004",
    "CATALOG-0005",
    "CATALOG-0006",
    "CATALOG-0011",
    "CATALOG-0015",
];
const INITIAL_STOCK: i32 = 10_000_000;
const PARTITIONS: i32 = 6;
const TOPIC: &str = "order-events";
const DLQ_TOPIC: &str = "order-events.dlq";
const ORDERS_PER_SECOND: u32 = 200;
const LOAD_PERIOD: Duration = Duration::from_secs(60);
/// Session timeout of the consumers: how long a dead member keeps its partitions.
const SESSION_TIMEOUT_MS: u32 = 10_000;
/// From the final kill until every accepted order is applied.
const CONVERGENCE_DEADLINE: Duration = Duration::from_secs(90);

/// Every process of the system, and what the faults need.
pub struct System {
    pub http: reqwest::Client,
    pub broker: Broker,
    pub order_api: Service,
    pub relay_a: Service,
    pub relay_b: Service,
    pub consumer_1: Service,
    pub consumer_2: Service,
    pub orders_pool: PgPool,
}

/// The databases and topics of one run.
struct Setup {
    dir: PathBuf,
    orders_url: String,
    catalog_url: String,
    group: String,
}

impl System {
    async fn start(
        binaries: &Binaries,
        setup: &Setup,
        broker: Broker,
        orders_pool: PgPool,
    ) -> Self {
        let dir = &setup.dir;
        let brokers = broker.address.clone();
        let order_api_port = free_port();
        let order_api = Service::start(
            Spec {
                name: "order-api",
                program: binaries.order_api.clone(),
                args: vec![],
                env: vec![
                    ("HTTP_ADDR", format!("127.0.0.1:{order_api_port}")),
                    ("DATABASE_URL", setup.orders_url.clone()),
                    ("ORDER_EVENTS_TOPIC", TOPIC.into()),
                    ("SKIP_MIGRATIONS", "true".into()),
                ],
            },
            dir,
            order_api_port,
        );
        let relay = |name: &'static str| {
            let port = free_port();
            let spec = Spec {
                name,
                program: binaries.outbox_relay.clone(),
                args: vec!["run".into()],
                env: vec![
                    ("HTTP_ADDR", format!("127.0.0.1:{port}")),
                    (
                        "DATABASE_URL",
                        with_application_name(&setup.orders_url, name),
                    ),
                    ("KAFKA_BROKERS", brokers.clone()),
                    ("SKIP_MIGRATIONS", "true".into()),
                    // Fewer lanes per step than products: both relays hold lanes at once.
                    ("MAX_LANES_PER_BATCH", "4".into()),
                    ("OUTAGE_BACKOFF_MAX_MS", "1000".into()),
                    ("RUST_LOG", "warn,outbox_relay=info".into()),
                ],
            };
            Service::start(spec, dir, port)
        };
        let relay_a = relay("relay-a");
        let relay_b = relay("relay-b");
        let consumer = |name: &'static str| {
            let port = free_port();
            let spec = Spec {
                name,
                program: binaries.catalog_consumer.clone(),
                args: vec![],
                env: vec![
                    ("HTTP_ADDR", format!("127.0.0.1:{port}")),
                    ("DATABASE_URL", setup.catalog_url.clone()),
                    ("KAFKA_BROKERS", brokers.clone()),
                    ("ORDER_EVENTS_TOPIC", TOPIC.into()),
                    ("DLQ_TOPIC", DLQ_TOPIC.into()),
                    ("CONSUMER_GROUP", setup.group.clone()),
                    ("KAFKA_SESSION_TIMEOUT_MS", SESSION_TIMEOUT_MS.to_string()),
                    // Static membership: a restarted consumer takes its partitions back.
                    ("CONSUMER_INSTANCE_ID", name.into()),
                    ("SKIP_MIGRATIONS", "true".into()),
                    ("RETRY_MAX_BACKOFF_MS", "1000".into()),
                    // Rebalances ("partitions revoked"/"partitions assigned") in the logs.
                    ("RUST_LOG", "warn,catalog_consumer=info".into()),
                ],
            };
            Service::start(spec, dir, port)
        };
        let consumer_1 = consumer("c1");
        let consumer_2 = consumer("c2");
        let system = Self {
            http: reqwest::Client::new(),
            broker,
            order_api,
            relay_a,
            relay_b,
            consumer_1,
            consumer_2,
            orders_pool,
        };
        for service in system.services() {
            service.wait_ready(&system.http).await;
        }
        system
    }

    fn services(&self) -> [&Service; 5] {
        [
            &self.order_api,
            &self.relay_a,
            &self.relay_b,
            &self.consumer_1,
            &self.consumer_2,
        ]
    }
}

/// Prints the tails of every process's log when the test fails.
struct LogsOnFailure(Arc<System>);

impl Drop for LogsOnFailure {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let system = &self.0;
        let broker = system.broker.process();
        eprintln!(
            "--- {} (last lines) ---\n{}",
            broker.name(),
            broker.log_tail(30)
        );
        drop(broker);
        for service in system.services() {
            let process = service.process();
            eprintln!(
                "--- {} (last lines) ---\n{}",
                process.name(),
                process.log_tail(30)
            );
        }
    }
}

fn with_application_name(url: &str, name: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}application_name={name}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_load_crashes_and_pauses_every_accepted_order_changes_stock_once_and_in_order() {
    let test_started = Instant::now();
    let binaries = Binaries::locate();
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("chaos-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("test directory");
    eprintln!("[chaos] logs in {}", dir.display());

    let (orders_url, orders_pool) = testkit::fresh_database(&ORDERS_MIGRATOR)
        .await
        .expect("fresh orders database");
    let (catalog_url, catalog_pool) = testkit::fresh_database(&CATALOG_MIGRATOR)
        .await
        .expect("fresh catalog database");
    testkit::seed_products(&catalog_pool, &PRODUCTS.map(|p| (p, INITIAL_STOCK)))
        .await
        .expect("seed the products");
    let broker = Broker::start(&binaries.nisshi, &dir).await;
    let brokers = broker.address.clone();
    testkit::create_topic(&brokers, TOPIC, PARTITIONS)
        .await
        .expect("create the topic");
    testkit::create_topic(&brokers, DLQ_TOPIC, 1)
        .await
        .expect("create the dead-letter topic");
    let setup = Setup {
        dir: dir.clone(),
        orders_url: orders_url.clone(),
        catalog_url: catalog_url.clone(),
        group: format!("catalog-consumer-{}", Uuid::new_v4().simple()),
    };
    let system = Arc::new(System::start(&binaries, &setup, broker, orders_pool).await);
    let logs_on_failure = LogsOnFailure(system.clone());
    eprintln!(
        "[chaos] system up after {:.1}s; offering {ORDERS_PER_SECOND} orders/s for {LOAD_PERIOD:?}",
        test_started.elapsed().as_secs_f64()
    );

    let load = Load::new(&system.order_api.address);
    let load_started = Instant::now();
    let group_monitor = diagnose::GroupMonitor::start(
        &brokers,
        &setup.group,
        TOPIC,
        PARTITIONS,
        &dir,
        load_started,
    );
    let fault_log = Arc::new(FaultLog::new(load_started));
    let fault_schedule = tokio::spawn({
        let (system, fault_log) = (system.clone(), fault_log.clone());
        async move { faults::run(&system, &fault_log).await }
    });
    let orders = load.offer(&PRODUCTS, ORDERS_PER_SECOND, LOAD_PERIOD).await;
    let offered = orders.len();
    let mut accepted: Vec<Accepted> = Vec::with_capacity(offered + PRODUCTS.len());
    let mut failures = Vec::new();
    for order in orders {
        match order.await.expect("order task") {
            Ok(order) => accepted.push(order),
            Err(failure) => failures.push(failure),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {offered} orders were not accepted, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let terminated = fault_schedule.await.expect("fault schedule");
    assert!(
        terminated > 0,
        "no backend with application_name 'relay-b' was ever terminated: does the relay keep \
         the application_name given in DATABASE_URL?"
    );

    // One consumer dies for good: its partitions must move to the survivor within the session
    // timeout. The orders after it reach every partition, so some are on the dead one's.
    system.consumer_2.process().kill();
    fault_log.note("kill -9 consumer c2, for good");
    let killed_at = Instant::now();
    for product in PRODUCTS {
        let order = load
            .clone()
            .place(product.to_owned(), 1)
            .await
            .expect("an order after the final kill");
        accepted.push(order);
    }

    let expected = accepted.len() as i64;
    let converged = eventually(CONVERGENCE_DEADLINE, || async {
        (processed_count(&catalog_pool).await >= expected).then_some(())
    })
    .await;
    if converged.is_err() {
        let applied: HashSet<Uuid> = sqlx::query_scalar("select order_id from processed_events")
            .fetch_all(&catalog_pool)
            .await
            .expect("processed orders")
            .into_iter()
            .collect();
        let mut missing: HashMap<&str, usize> = HashMap::new();
        let unapplied: Vec<Uuid> = accepted
            .iter()
            .filter(|o| !applied.contains(&o.order_id))
            .map(|o| o.order_id)
            .collect();
        for order in accepted.iter().filter(|o| !applied.contains(&o.order_id)) {
            *missing.entry(order.product_id.as_str()).or_default() += 1;
        }
        // Where the unapplied events are: on the topic (the consumer side lost them) or not
        // (the relay side did).
        drop(group_monitor);
        let offsets = diagnose::offsets_report(&brokers, &setup.group, TOPIC, PARTITIONS).await;
        let published =
            topic::read_to_high_watermarks(&brokers, TOPIC, PARTITIONS, Duration::from_secs(30))
                .await;
        let on_topic: Vec<(Uuid, i32, i64)> = published
            .as_ref()
            .map(|published| {
                published
                    .iter()
                    .filter(|p| unapplied.contains(&p.order_id))
                    .map(|p| (p.order_id, p.partition, p.offset))
                    .collect()
            })
            .unwrap_or_default();
        let where_unapplied = match &published {
            Ok(published) => {
                diagnose::unapplied_report(&dir, published, &catalog_pool, &accepted, load_started)
                    .await
            }
            Err(error) => format!("cannot read the topic: {error:#}"),
        };
        let outbox_left: i64 = sqlx::query_scalar("select count(*) from outbox")
            .fetch_one(&system.orders_pool)
            .await
            .unwrap_or(-1);
        system.consumer_1.process().assert_running();
        panic!(
            "{} of {expected} accepted orders applied {CONVERGENCE_DEADLINE:?} after the final \
             kill; unapplied per product: {missing:?}; their copies on the topic (order, \
             partition, offset): {on_topic:?}. Were the dead consumer's partitions reassigned?\n\
             group: {offsets}\noutbox rows left: {outbox_left}\nunapplied on the topic:\n\
             {where_unapplied}logs, topic.tsv, processed.tsv, accepted.tsv and \
             group-monitor.log in {}",
            applied.len(),
            dir.display()
        );
    }
    let time_to_converge = killed_at.elapsed();

    let mut problems = Vec::new();

    // (1) The reconciliation finds nothing missing and nothing unexpected.
    let audit = run_audit(&binaries.catalog_consumer, &catalog_url, &orders_url).await;
    if !audit.success {
        problems.push(format!("audit: {}", audit.describe()));
    }

    // (2) Each product's stock is its start minus what the accepted orders took.
    let mut sold: HashMap<&str, i64> = HashMap::new();
    for order in &accepted {
        *sold.entry(order.product_id.as_str()).or_default() += i64::from(order.quantity);
    }
    let stock: HashMap<String, i64> =
        sqlx::query_as::<_, (String, i32)>("select product_id, stock from products")
            .fetch_all(&catalog_pool)
            .await
            .expect("stock")
            .into_iter()
            .map(|(product, stock)| (product, i64::from(stock)))
            .collect();
    for product in PRODUCTS {
        let want = i64::from(INITIAL_STOCK) - sold.get(product).copied().unwrap_or(0);
        if stock.get(product) != Some(&want) {
            problems.push(format!(
                "stock of {product}: {:?}, expected {want}",
                stock.get(product)
            ));
        }
    }

    // (3) Every accepted order's event was applied exactly once, and nothing else was.
    let processed: Vec<(Uuid, i64, String)> = sqlx::query_as(
        "select order_id, count(*), string_agg(outcome::text, ',') from processed_events group by order_id",
    )
    .fetch_all(&catalog_pool)
    .await
    .expect("processed events");
    let accepted_ids: HashSet<Uuid> = accepted.iter().map(|o| o.order_id).collect();
    if accepted_ids.len() != accepted.len() {
        problems.push(format!(
            "{} accepted answers for {} distinct orders",
            accepted.len(),
            accepted_ids.len()
        ));
    }
    let processed_ids: HashSet<Uuid> = processed.iter().map(|(id, ..)| *id).collect();
    let not_once: Vec<_> = processed
        .iter()
        .filter(|(_, count, outcome)| *count != 1 || outcome != "applied")
        .take(5)
        .collect();
    if !not_once.is_empty() {
        problems.push(format!(
            "orders not applied exactly once, e.g. {not_once:?}"
        ));
    }
    let unapplied = accepted_ids.difference(&processed_ids).count();
    let unexpected = processed_ids.difference(&accepted_ids).count();
    if unapplied + unexpected > 0 || processed.len() != accepted.len() {
        problems.push(format!(
            "processed_events has {} orders for {} accepted: {unapplied} accepted not applied, \
             {unexpected} applied but never accepted",
            processed.len(),
            accepted.len()
        ));
    }

    // (4) Per product, the topic has the events in the order the clients saw them accepted.
    let published =
        topic::read_to_high_watermarks(&brokers, TOPIC, PARTITIONS, Duration::from_secs(60))
            .await
            .expect("read the topic to its high watermarks");
    let order_check = topic::check_order(&published, &accepted);
    if !order_check.violations.is_empty() {
        problems.push(format!(
            "{} events out of order, e.g. {:?}",
            order_check.violations.len(),
            &order_check.violations[..order_check.violations.len().min(5)]
        ));
    }
    if !order_check.missing.is_empty() || !order_check.unexpected.is_empty() {
        problems.push(format!(
            "the topic up to its high watermarks lacks {} accepted orders and has {} events of \
             orders never accepted",
            order_check.missing.len(),
            order_check.unexpected.len()
        ));
    }
    if !order_check.split_products.is_empty() {
        problems.push(format!(
            "products on several partitions: {:?}",
            order_check.split_products
        ));
    }
    let partitions_used: HashSet<i32> = order_check.partition_of.values().copied().collect();
    if partitions_used.len() != PARTITIONS as usize {
        problems.push(format!(
            "the products cover partitions {partitions_used:?} only, so the final kill may \
             leave the dead consumer nothing to do: pick product ids that cover all \
             {PARTITIONS} ({:?})",
            order_check.partition_of
        ));
    }
    let dead_letters =
        topic::read_to_high_watermarks(&brokers, DLQ_TOPIC, 1, Duration::from_secs(10))
            .await
            .map(|messages| messages.len());
    if !matches!(dead_letters, Ok(0)) {
        problems.push(format!(
            "the dead-letter topic is not empty: {dead_letters:?}"
        ));
    }

    // How often the surviving consumer found a gap the broker served (and fetched it again).
    let gaps = match reqwest::Client::new()
        .get(format!("{}/metrics", system.consumer_1.address))
        .send()
        .await
    {
        Ok(response) => response
            .text()
            .await
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("catalog_consumer_offset_gaps_total"))
            .collect::<Vec<_>>()
            .join(", "),
        Err(error) => format!("unknown ({error})"),
    };
    eprintln!("[chaos] surviving consumer's offset gaps: {gaps}");
    eprintln!(
        "[chaos] summary: {offered} orders offered at {ORDERS_PER_SECOND}/s over {LOAD_PERIOD:?} \
         (+{} after the final kill), {} accepted; retries {}; {} faults injected ({}; {terminated} \
         relay-b connections terminated); converged {:.1}s after the final kill; topic: {} events, \
         {} duplicate messages; audit: {}; test took {:.1}s",
        PRODUCTS.len(),
        accepted.len(),
        load.retries.describe(),
        fault_log.total(),
        fault_log.describe(),
        time_to_converge.as_secs_f64(),
        order_check.events,
        order_check.duplicates,
        audit.stdout.trim(),
        test_started.elapsed().as_secs_f64(),
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    drop(group_monitor);
    drop(logs_on_failure);
    drop(system);
    let _ = std::fs::remove_dir_all(&dir);
}

async fn processed_count(catalog: &PgPool) -> i64 {
    sqlx::query_scalar("select count(*) from processed_events")
        .fetch_one(catalog)
        .await
        .expect("processed count")
}

struct Audit {
    success: bool,
    status: String,
    stdout: String,
    stderr: String,
}

impl Audit {
    fn describe(&self) -> String {
        let counts = serde_json::from_str::<Value>(self.stdout.trim())
            .map(|report| {
                format!(
                    "missing_count {}, unexpected_count {}",
                    report["missing_count"], report["unexpected_count"]
                )
            })
            .unwrap_or_default();
        format!(
            "exit {}; {counts}\nstdout: {}\nstderr: {}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// `catalog-consumer audit --orders-database-url URL --grace-secs 0` against the catalog
/// database.
async fn run_audit(binary: &Path, catalog_url: &str, orders_url: &str) -> Audit {
    let mut command = Command::new(binary);
    command
        .args([
            "audit",
            "--orders-database-url",
            orders_url,
            "--grace-secs",
            "0",
        ])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn")
        .env("DATABASE_URL", catalog_url);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("audit task")
        .expect("run catalog-consumer audit");
    Audit {
        success: output.status.success(),
        status: output.status.to_string(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}
