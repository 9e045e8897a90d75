//! Test support: every test gets its own database and topic on the real PostgreSQL and the real
//! broker (from `TEST_DATABASE_URL` / `KAFKA_BROKERS`, or containers with the `containers`
//! feature), a TCP proxy that can refuse and cut connections, polling with a deadline, the
//! services as processes ([`process`]) and a topic read to its end ([`topic`]).

pub mod process;
mod proxy;
pub mod topic;

use std::{future::Future, time::Duration};

use anyhow::Context;
use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    ClientConfig,
};
use sqlx::{migrate::Migrator, postgres::PgConnectOptions, Connection, PgConnection, PgPool};
use tokio::sync::OnceCell;
use uuid::Uuid;

pub use proxy::TcpProxy;

/// Prefix of every database a test creates; the test command drops leftovers by it.
pub const TEST_DATABASE_PREFIX: &str = "outbox_test_";

struct Infra {
    database_url: String,
    kafka_brokers: String,
}

static INFRA: OnceCell<Infra> = OnceCell::const_new();

async fn infra() -> &'static Infra {
    INFRA
        .get_or_init(|| async {
            let database_url = std::env::var("TEST_DATABASE_URL").ok();
            let kafka_brokers = std::env::var("KAFKA_BROKERS").ok();
            match (database_url, kafka_brokers) {
                (Some(database_url), Some(kafka_brokers)) => Infra {
                    database_url,
                    kafka_brokers,
                },
                (database_url, kafka_brokers) => {
                    containers::start(database_url, kafka_brokers).await
                }
            }
        })
        .await
}

#[cfg(feature = "containers")]
mod containers {
    use testcontainers_modules::{
        kafka::apache::Kafka,
        postgres::Postgres,
        testcontainers::{runners::AsyncRunner, ContainerAsync, ImageExt},
    };
    use tokio::sync::OnceCell;

    /// The PostgreSQL major version of compose.yaml (the orders migration needs 12 or later;
    /// the module's default image is 11).
    pub const POSTGRES_TAG: &str = "17";
    /// The Kafka image of compose.yaml.
    pub const KAFKA_TAG: &str = "3.9.1";

    /// Removes the container once this test process has exited: the statics holding the
    /// containers are never dropped, so without this every run would leave two behind.
    fn remove_when_this_process_ends(id: &str) {
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; docker rm -f -v {id} >/dev/null 2>&1",
            pid = std::process::id()
        );
        let spawned = std::process::Command::new("sh")
            .args(["-c", &script])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        if let Err(error) = spawned {
            eprintln!("cannot watch container {id} for removal: {error}");
        }
    }

    // Kept for the life of the test process.
    static POSTGRES: OnceCell<ContainerAsync<Postgres>> = OnceCell::const_new();
    static KAFKA: OnceCell<ContainerAsync<Kafka>> = OnceCell::const_new();

    pub(super) async fn start(
        database_url: Option<String>,
        kafka_brokers: Option<String>,
    ) -> super::Infra {
        let database_url = match database_url {
            Some(url) => url,
            None => {
                let container = POSTGRES
                    .get_or_init(|| async {
                        let container = Postgres::default()
                            .with_tag(POSTGRES_TAG)
                            .start()
                            .await
                            .expect("start postgres container");
                        remove_when_this_process_ends(container.id());
                        container
                    })
                    .await;
                let port = container
                    .get_host_port_ipv4(5432)
                    .await
                    .expect("postgres port");
                format!("postgres://postgres:postgres@127.0.0.1:{port}/postgres")
            }
        };
        let kafka_brokers = match kafka_brokers {
            Some(brokers) => brokers,
            None => {
                let container = KAFKA
                    .get_or_init(|| async {
                        let container = Kafka::default()
                            .with_tag(KAFKA_TAG)
                            .start()
                            .await
                            .expect("start kafka container");
                        remove_when_this_process_ends(container.id());
                        container
                    })
                    .await;
                let port = container
                    .get_host_port_ipv4(testcontainers_modules::kafka::apache::KAFKA_PORT)
                    .await
                    .expect("kafka port");
                format!("127.0.0.1:{port}")
            }
        };
        super::Infra {
            database_url,
            kafka_brokers,
        }
    }
}

#[cfg(not(feature = "containers"))]
mod containers {
    pub(super) async fn start(_: Option<String>, _: Option<String>) -> super::Infra {
        panic!(
            "set TEST_DATABASE_URL and KAFKA_BROKERS (the README's test command does), \
             or build the tests with `--features testkit/containers` on a machine with Docker"
        )
    }
}

/// The broker list tests connect to.
pub async fn kafka_brokers() -> String {
    infra().await.kafka_brokers.clone()
}

/// A fresh database of its own for one test, migrated by `migrator`: its URL and a pool.
pub async fn fresh_database(migrator: &Migrator) -> anyhow::Result<(String, PgPool)> {
    let base = &infra().await.database_url;
    let options: PgConnectOptions = base.parse().context("TEST_DATABASE_URL")?;
    let name = format!("{TEST_DATABASE_PREFIX}{}", Uuid::new_v4().simple());
    let mut admin = PgConnection::connect_with(&options).await?;
    sqlx::query(&format!("create database {name}"))
        .execute(&mut admin)
        .await?;
    admin.close().await?;
    let url = with_database(base, &name);
    let pool = PgPool::connect(&url).await?;
    migrator.run(&pool).await?;
    Ok((url, pool))
}

/// `url` with its database replaced by `database`.
pub fn with_database(url: &str, database: &str) -> String {
    let (without_query, query) = match url.split_once('?') {
        Some((head, query)) => (head, Some(query)),
        None => (url, None),
    };
    let scheme_end = without_query.find("://").map_or(0, |i| i + 3);
    let base = match without_query[scheme_end..].find('/') {
        Some(slash) => &without_query[..scheme_end + slash],
        None => without_query,
    };
    match query {
        Some(query) => format!("{base}/{database}?{query}"),
        None => format!("{base}/{database}"),
    }
}

/// A fresh topic of its own for one test, with `partitions` partitions.
pub async fn fresh_topic(brokers: &str, prefix: &str, partitions: i32) -> anyhow::Result<String> {
    let name = format!("{prefix}-{}", Uuid::new_v4().simple());
    create_topic(brokers, &name, partitions).await?;
    Ok(name)
}

/// Creates `name` and waits until the broker serves its metadata.
pub async fn create_topic(brokers: &str, name: &str, partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let results = admin
        .create_topics(
            [&topic],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await?;
    for result in results {
        if let Err((topic, code)) = result {
            if code != rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists {
                anyhow::bail!("cannot create topic {topic}: {code}");
            }
        }
    }
    let name = name.to_owned();
    eventually(Duration::from_secs(15), || {
        let admin = &admin;
        let name = name.clone();
        async move {
            let metadata = admin
                .inner()
                .fetch_metadata(Some(&name), Duration::from_secs(2))
                .ok()?;
            let topic = metadata.topics().iter().find(|t| t.name() == name)?;
            (topic.error().is_none() && topic.partitions().len() == partitions as usize)
                .then_some(())
        }
    })
    .await
    .with_context(|| format!("topic {name} did not appear"))
}

/// Polls `check` every 20 ms until it returns `Some`, or fails after `deadline`.
pub async fn eventually<T, F, Fut>(deadline: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = tokio::time::Instant::now();
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if started.elapsed() > deadline {
            anyhow::bail!("condition not met within {deadline:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Seq scans of `table` counted by `conn`'s session and not yet reported to the statistics:
/// inside one transaction, the difference between two readings is what the statements between
/// them scanned.
pub async fn unreported_seq_scans(conn: &mut PgConnection, table: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "select coalesce(sum(seq_scan), 0)::bigint from pg_stat_xact_user_tables
          where relname = $1",
    )
    .bind(table)
    .fetch_one(conn)
    .await?)
}

/// The value of the unlabelled sample `name` in a Prometheus `/metrics` body.
pub fn metric_value(body: &str, name: &str) -> Option<f64> {
    body.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Inserts (or resets) catalog products with their stock, at a unit price of 1500.
pub async fn seed_products(catalog: &PgPool, products: &[(&str, i32)]) -> anyhow::Result<()> {
    for (product, stock) in products {
        sqlx::query(
            "insert into products (product_id, product_name, stock, unit_price)
             values ($1, $1, $2, 1500)
             on conflict (product_id) do update set stock = excluded.stock",
        )
        .bind(product)
        .bind(stock)
        .execute(catalog)
        .await
        .with_context(|| format!("seed product {product}"))?;
    }
    Ok(())
}
