//! Dev-only: system tests that run the services as real processes (under `tests/`), and the few
//! pieces they share: where the binaries are, a free port, and the three services started
//! together over fresh databases and topics ([`Stack`]).
//!
//! The binaries are this crate's own `[[bin]]` targets (`src/bin/`), each a thin `main` over
//! its service's library, so `cargo test -p system-tests` builds them with the tests through
//! cargo's own mechanism: no prior build step, and never a nested `cargo build`.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    time::Duration,
};

pub use testkit::process::KillOnDrop;

/// The binary of service `name` (`order-api`, `outbox-relay` or `catalog-consumer`), as cargo
/// built it for these tests: `system-<name>` next to the running test (`target/<profile>/`).
pub fn service_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test executable");
    // target/<profile>/deps/<test>-<hash>
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable lives in target/<profile>/deps")
        .join(format!("system-{name}"));
    assert!(
        path.is_file(),
        "{} is missing: cargo builds it with `cargo test -p system-tests`",
        path.display()
    );
    path
}

/// The pinned nisshi broker: `NISSHI_BIN`, or where `scripts/infra.sh` installs it.
pub fn nisshi() -> PathBuf {
    let path = std::env::var_os("NISSHI_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").expect("HOME or NISSHI_BIN must be set");
            Path::new(&home).join(".cache/outbox-nisshi/bin/nisshi")
        });
    assert!(
        path.is_file(),
        "the broker {} is missing: run `scripts/infra.sh install-broker` \
         (or point NISSHI_BIN at a nisshi binary)",
        path.display()
    );
    path
}

/// A free local port: the OS picks it, and it is released for a child to bind.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("free port")
        .port()
}

/// The three service binaries as processes, each over fresh databases, a fresh topic and a
/// fresh consumer group on the test's PostgreSQL and broker (`TEST_DATABASE_URL`,
/// `KAFKA_BROKERS`), with one product, `CATALOG-0001`, stock 100. Killed when dropped.
pub struct Stack {
    /// `host:port` of order-api, outbox-relay and catalog-consumer.
    pub api: String,
    pub relay: String,
    pub consumer: String,
    /// The catalog database.
    pub catalog: sqlx::PgPool,
    /// The broker list, the order-events topic and the dead-letter topic.
    pub brokers: String,
    pub topic: String,
    pub dlq: String,
    _children: Vec<KillOnDrop>,
}

impl Stack {
    /// Starts the three binaries with `env` added to each one's environment, and waits until
    /// each answers `/readyz` with 200.
    pub async fn start(env: &[(&str, &str)]) -> Self {
        use outbox_core::db::{CATALOG_MIGRATOR, ORDERS_MIGRATOR};
        let brokers = testkit::kafka_brokers().await;
        let topic = testkit::fresh_topic(&brokers, "order-events", 2)
            .await
            .expect("topic");
        let dlq = testkit::fresh_topic(&brokers, "order-events-dlq", 1)
            .await
            .expect("dead-letter topic");
        let (orders_url, _) = testkit::fresh_database(&ORDERS_MIGRATOR)
            .await
            .expect("orders database");
        let (catalog_url, catalog) = testkit::fresh_database(&CATALOG_MIGRATOR)
            .await
            .expect("catalog database");
        testkit::seed_products(&catalog, &[("CATALOG-0001", 100)])
            .await
            .expect("seed the product");
        let group = format!("system-{}", uuid::Uuid::new_v4().simple());
        let address = || format!("127.0.0.1:{}", free_port());
        let (api, relay, consumer) = (address(), address(), address());
        let spawn = |binary: &str, own: &[(&str, &str)]| {
            let all: Vec<(&str, &str)> = own.iter().chain(env).copied().collect();
            testkit::process::spawn(&service_binary(binary), &[], &all)
        };
        let children = vec![
            spawn(
                "order-api",
                &[
                    ("HTTP_ADDR", &api),
                    ("DATABASE_URL", &orders_url),
                    ("ORDER_EVENTS_TOPIC", &topic),
                ],
            ),
            spawn(
                "outbox-relay",
                &[
                    ("HTTP_ADDR", &relay),
                    ("DATABASE_URL", &orders_url),
                    ("KAFKA_BROKERS", &brokers),
                ],
            ),
            spawn(
                "catalog-consumer",
                &[
                    ("HTTP_ADDR", &consumer),
                    ("DATABASE_URL", &catalog_url),
                    ("KAFKA_BROKERS", &brokers),
                    ("ORDER_EVENTS_TOPIC", &topic),
                    ("DLQ_TOPIC", &dlq),
                    ("CONSUMER_GROUP", &group),
                ],
            ),
        ];
        for address in [&api, &relay, &consumer] {
            testkit::process::wait_ready(address, Duration::from_secs(60)).await;
        }
        Self {
            api,
            relay,
            consumer,
            catalog,
            brokers,
            topic,
            dlq,
            _children: children,
        }
    }
}

/// nisshi on `address` (listener and advertised URL), its working directory `dir` (relative
/// storage URLs such as `sqlite://nisshi.db` live there), with `args` added after `broker` (the
/// storage engine, `--cert`/`--key`, `--authentication`); returns once it accepts connections.
pub async fn start_nisshi<I, S>(dir: &Path, address: &str, args: I) -> KillOnDrop
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let url = format!("tcp://{address}");
    let child = std::process::Command::new(nisshi())
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .args(args)
        .env("RUST_LOG", "warn")
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start nisshi");
    let broker = KillOnDrop(child);
    testkit::eventually(Duration::from_secs(30), || async {
        tokio::net::TcpStream::connect(address).await.ok()
    })
    .await
    .expect("nisshi accepts connections");
    broker
}
