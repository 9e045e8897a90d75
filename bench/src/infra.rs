//! Fresh databases and topics for one run, named after it, and their removal.

use std::{sync::Mutex, time::Duration};

use anyhow::Context;
use rdkafka::{
    admin::{AdminClient, AdminOptions},
    client::DefaultClientContext,
    ClientConfig,
};
use sqlx::{
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPoolOptions},
    Connection, PgConnection, PgPool,
};

/// Prefix of every database the benchmark creates.
pub const DATABASE_PREFIX: &str = "outbox_bench_";

/// PostgreSQL and the broker, and what this run created on them.
pub struct Infra {
    admin_url: String,
    pub brokers: String,
    pub run_id: String,
    admin: AdminClient<DefaultClientContext>,
    databases: Mutex<Vec<String>>,
    topics: Mutex<Vec<String>>,
}

/// A fresh database: its name, URL and a small pool.
pub struct Database {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
}

impl Infra {
    /// Checks that PostgreSQL and the broker answer, and removes databases left by earlier runs
    /// that nobody is connected to.
    pub async fn connect(
        admin_url: &str,
        brokers: &str,
        run_id: &str,
        need_broker: bool,
    ) -> anyhow::Result<Self> {
        let options: PgConnectOptions = admin_url.parse().context("invalid PostgreSQL URL")?;
        let mut conn = PgConnection::connect_with(&options)
            .await
            .with_context(|| format!("PostgreSQL does not answer at {admin_url}"))?;
        let leftovers: Vec<String> =
            sqlx::query_scalar("select datname from pg_database where starts_with(datname, $1)")
                .bind(DATABASE_PREFIX)
                .fetch_all(&mut conn)
                .await?;
        for name in leftovers {
            // Without `force`: a database another benchmark still uses is left alone.
            if sqlx::query(&format!("drop database if exists {name}"))
                .execute(&mut conn)
                .await
                .is_ok()
            {
                eprintln!("[bench] dropped {name}, left by an earlier run");
            }
        }
        conn.close().await?;

        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("log_level", "3")
            .create()?;
        if need_broker {
            admin
                .inner()
                .fetch_metadata(None, Duration::from_secs(10))
                .with_context(|| format!("the broker does not answer at {brokers}"))?;
        }
        Ok(Self {
            admin_url: admin_url.to_owned(),
            brokers: brokers.to_owned(),
            run_id: run_id.to_owned(),
            admin,
            databases: Mutex::new(Vec::new()),
            topics: Mutex::new(Vec::new()),
        })
    }

    /// The admin URL with its database replaced by `database`.
    pub fn url_of(&self, database: &str) -> String {
        testkit::with_database(&self.admin_url, database)
    }

    /// Transactions committed in `database` so far (PostgreSQL's statistics, which lag a
    /// little behind).
    pub async fn commits(&self, database: &str) -> anyhow::Result<i64> {
        let mut admin = PgConnection::connect(&self.admin_url).await?;
        // Statistics a backend has not flushed yet are not counted; a fresh snapshot helps.
        sqlx::query("select pg_stat_clear_snapshot()")
            .execute(&mut admin)
            .await?;
        let commits: i64 =
            sqlx::query_scalar("select xact_commit from pg_stat_database where datname = $1")
                .bind(database)
                .fetch_one(&mut admin)
                .await?;
        admin.close().await?;
        Ok(commits)
    }

    /// The admin connection URL itself.
    pub fn admin_url(&self) -> &str {
        &self.admin_url
    }

    /// Creates `outbox_bench_<run>_<tag>` and migrates it.
    pub async fn fresh_database(&self, tag: &str, migrator: &Migrator) -> anyhow::Result<Database> {
        let name = format!("{DATABASE_PREFIX}{}_{tag}", self.run_id).replace('-', "_");
        let mut admin = PgConnection::connect(&self.admin_url).await?;
        sqlx::query(&format!("create database {name}"))
            .execute(&mut admin)
            .await
            .with_context(|| format!("cannot create database {name}"))?;
        admin.close().await?;
        self.databases.lock().expect("lock").push(name.clone());
        let url = self.url_of(&name);
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect(&url)
            .await?;
        migrator
            .run(&pool)
            .await
            .with_context(|| format!("cannot migrate {name}"))?;
        Ok(Database { name, url, pool })
    }

    /// Drops a database this run created.
    pub async fn drop_database(&self, database: Database) {
        database.pool.close().await;
        self.drop_database_named(&database.name).await;
    }

    /// Drops a database of this run by name (also one a helper process created).
    pub async fn drop_database_named(&self, name: &str) {
        let dropped = async {
            let mut admin = PgConnection::connect(&self.admin_url).await?;
            sqlx::query(&format!("drop database if exists {name} with (force)"))
                .execute(&mut admin)
                .await?;
            admin.close().await?;
            Ok::<_, sqlx::Error>(())
        }
        .await;
        match dropped {
            Ok(()) => self.databases.lock().expect("lock").retain(|n| n != name),
            Err(error) => eprintln!("[bench] cannot drop database {name}: {error}"),
        }
    }

    /// A name for something of this run that is not a database (a topic, a consumer group).
    pub fn name(&self, tag: &str) -> String {
        format!("outbox-bench-{}-{tag}", self.run_id.replace('_', "-"))
    }

    /// Creates a fresh topic of this run and waits until the broker serves its metadata.
    pub async fn fresh_topic(&self, tag: &str, partitions: i32) -> anyhow::Result<String> {
        let name = self.name(tag);
        testkit::create_topic(&self.brokers, &name, partitions).await?;
        self.topics.lock().expect("lock").push(name.clone());
        Ok(name)
    }

    /// Deletes topics of this run (the broker keeps them in memory).
    pub async fn delete_topics(&self, names: &[&str]) {
        if names.is_empty() {
            return;
        }
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        match self.admin.delete_topics(names, &options).await {
            Ok(results) => {
                for result in results {
                    if let Err((topic, code)) = result {
                        eprintln!("[bench] cannot delete topic {topic}: {code}");
                    }
                }
            }
            Err(error) => eprintln!("[bench] cannot delete topics: {error}"),
        }
        self.topics
            .lock()
            .expect("lock")
            .retain(|t| !names.contains(&t.as_str()));
    }

    /// Removes every database and topic of this run that is still there.
    pub async fn cleanup(&self) {
        let databases = self.databases.lock().expect("lock").clone();
        for name in databases {
            self.drop_database_named(&name).await;
        }
        let topics = self.topics.lock().expect("lock").clone();
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        self.delete_topics(&topics).await;
    }

    /// The local broker process, when it is one we know (its command name).
    pub fn broker_process_name() -> Option<String> {
        ["nisshi", "tansu", "java"]
            .into_iter()
            .find(|name| {
                std::process::Command::new("pgrep")
                    .args(["-x", name])
                    .output()
                    .map(|o| o.status.success())
                    .unwrap_or(false)
            })
            .map(String::from)
    }

    /// Versions and sizes of what the figures ran on.
    pub async fn describe_host(&self) -> serde_json::Value {
        let postgres = async {
            let mut conn = PgConnection::connect(&self.admin_url).await?;
            let version: String = sqlx::query_scalar("show server_version")
                .fetch_one(&mut conn)
                .await?;
            let shared_buffers: String = sqlx::query_scalar("show shared_buffers")
                .fetch_one(&mut conn)
                .await?;
            let synchronous_commit: String = sqlx::query_scalar("show synchronous_commit")
                .fetch_one(&mut conn)
                .await?;
            conn.close().await?;
            Ok::<_, sqlx::Error>(serde_json::json!({
                "version": version,
                "shared_buffers": shared_buffers,
                "synchronous_commit": synchronous_commit,
            }))
        }
        .await
        .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }));
        serde_json::json!({
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "postgres": postgres,
            "kafka_brokers": self.brokers,
            "broker": Self::broker_process_name(),
        })
    }
}

/// A TCP port nobody listens on right now, for a child's HTTP_ADDR.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
