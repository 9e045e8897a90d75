//! TLS to PostgreSQL and to the broker, through the services' own connection code:
//! `outbox_core::db::connect` with `sslmode` in the URL, and `KafkaSettings` with
//! `KAFKA_SECURITY_PROTOCOL=SSL` against a nisshi listener that only accepts TLS, its
//! certificate made by the test, and `SASL_SSL` with SCRAM-SHA-256 against one that also
//! authenticates. A plain client of a TLS listener fails with an error naming the setting to
//! change.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use outbox_core::{
    db::{self, ORDERS_MIGRATOR},
    ops::Check,
    settings::{KafkaSettings, PoolSettings, SaslMechanism, SecurityProtocol},
};
use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    consumer::{BaseConsumer, Consumer},
    producer::{FutureProducer, FutureRecord},
    Message, Offset, TopicPartitionList,
};
use system_tests::{free_port, nisshi, start_nisshi, KillOnDrop};
use testkit::eventually;

const SNAKEOIL: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";

fn pool_settings() -> PoolSettings {
    PoolSettings {
        skip_migrations: true,
        ..PoolSettings::default()
    }
}

async fn uses_tls(url: &str) -> anyhow::Result<bool> {
    let pool = db::connect(url, &pool_settings(), "tls-test", &ORDERS_MIGRATOR).await?;
    let ssl: bool = sqlx::query_scalar("select ssl from pg_stat_ssl where pid = pg_backend_pid()")
        .fetch_one(&pool)
        .await?;
    pool.close().await;
    Ok(ssl)
}

#[tokio::test]
async fn the_services_reach_postgresql_over_tls_when_the_url_asks_for_it() {
    let (url, pool) = testkit::fresh_database(&ORDERS_MIGRATOR).await.unwrap();
    let server_ssl: String = sqlx::query_scalar("show ssl")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        server_ssl, "on",
        "this test needs the local PostgreSQL with TLS on (ssl = on)"
    );
    assert!(
        uses_tls(&format!("{url}?sslmode=require")).await.unwrap(),
        "sslmode=require connects over TLS"
    );
    assert!(
        !uses_tls(&format!("{url}?sslmode=disable")).await.unwrap(),
        "sslmode=disable does not"
    );

    // verify-full: the server's certificate (Debian's snakeoil, for `localhost`) checked against
    // the root given in the URL, and its name against the host.
    if Path::new(SNAKEOIL).is_file() {
        let localhost = url.replacen("127.0.0.1", "localhost", 1);
        assert!(
            uses_tls(&format!(
                "{localhost}?sslmode=verify-full&sslrootcert={SNAKEOIL}"
            ))
            .await
            .unwrap(),
            "verify-full with the server's certificate as root"
        );
        let wrong_name =
            uses_tls(&format!("{url}?sslmode=verify-full&sslrootcert={SNAKEOIL}")).await;
        let error = format!("{:#}", wrong_name.expect_err("127.0.0.1 is not localhost"));
        assert!(
            error.contains("cannot connect to PostgreSQL"),
            "a clear error: {error}"
        );
    }
}

/// A CA and a server certificate for 127.0.0.1 signed by it, made with the openssl command.
fn make_certificates(dir: &Path) {
    let run = |args: &[&str]| {
        let status = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl is installed");
        assert!(status.success(), "openssl {args:?}");
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "san.ext",
        "-out",
        "server.pem",
    ]);
}

fn tls_settings(address: &str, ca: &Path) -> KafkaSettings {
    KafkaSettings {
        kafka_brokers: address.to_owned(),
        kafka_security_protocol: SecurityProtocol::Ssl,
        kafka_ssl_ca_location: Some(ca.to_owned()),
        ..KafkaSettings::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_services_reach_a_tls_only_broker_with_kafka_security_protocol_ssl() {
    let dir = std::env::temp_dir().join(format!("outbox-tls-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    make_certificates(&dir);
    let address = format!("127.0.0.1:{}", free_port());
    let _broker = start_nisshi(
        &dir,
        &address,
        ["--cert", "server.pem", "--key", "server.key"],
    )
    .await;
    let settings = tls_settings(&address, &dir.join("ca.pem"));

    // The readiness check, as each service runs it, answers over TLS.
    let check = Check::kafka(&settings).unwrap();
    eventually(Duration::from_secs(30), || async { check.run().await.ok() })
        .await
        .expect("the broker answers over TLS");

    // A plain client is refused, and the error names the setting to change.
    let plain = KafkaSettings {
        kafka_brokers: address.clone(),
        ..KafkaSettings::default()
    };
    let error = Check::kafka(&plain)
        .unwrap()
        .run()
        .await
        .expect_err("a plaintext client cannot talk to a TLS listener");
    assert!(
        error.contains("KAFKA_SECURITY_PROTOCOL=SSL"),
        "the error names the setting: {error}"
    );
    // So is a TLS client that does not trust the broker's CA.
    let untrusting = tls_settings(&address, &dir.join("server.pem"));
    let error = Check::kafka(&untrusting)
        .unwrap()
        .run()
        .await
        .expect_err("the broker's certificate is not signed by server.pem");
    assert!(error.contains("KAFKA_SSL_CA_LOCATION"), "{error}");

    // An event round trip: the producer configuration every producer of the system uses, and a
    // consumer of the same settings.
    round_trip(&settings, "tls-events").await;
    std::fs::remove_dir_all(&dir).ok();
}

/// Creates `topic`, produces one event with the system's producer configuration and reads it
/// back with a consumer of the same settings.
async fn round_trip(settings: &KafkaSettings, topic: &str) {
    let admin: AdminClient<_> = settings.client_config().unwrap().create().unwrap();
    admin
        .create_topics(
            [&NewTopic::new(topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .unwrap();
    let producer: FutureProducer = outbox_core::kafka::idempotent_producer_config(settings)
        .unwrap()
        .create()
        .unwrap();
    let delivered = eventually(Duration::from_secs(30), || async {
        producer
            .send(
                FutureRecord::to(topic)
                    .key("CATALOG-0001")
                    .payload("over tls"),
                Duration::from_secs(5),
            )
            .await
            .ok()
    })
    .await
    .expect("produced");
    let consumer: BaseConsumer = settings
        .client_config()
        .unwrap()
        .set("group.id", format!("{topic}-test"))
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, delivered.partition, Offset::Beginning)
        .unwrap();
    consumer.assign(&assignment).unwrap();
    let payload = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
                return message.payload().map(<[u8]>::to_vec);
            }
        }
        None
    })
    .await
    .unwrap();
    assert_eq!(payload.as_deref(), Some(&b"over tls"[..]));
}

/// nisshi in `dir` with SQLite storage (authentication needs it), on `address`; with TLS and
/// SASL authentication when `tls_and_sasl`.
async fn sqlite_broker(dir: &Path, address: &str, tls_and_sasl: bool) -> KillOnDrop {
    let mut args = vec!["--storage-engine", "sqlite://nisshi.db"];
    if tls_and_sasl {
        args.extend([
            "--cert",
            "server.pem",
            "--key",
            "server.key",
            "--authentication",
        ]);
    }
    start_nisshi(dir, address, args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_services_authenticate_with_sasl_scram_over_tls() {
    let dir = std::env::temp_dir().join(format!("outbox-sasl-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    make_certificates(&dir);

    // nisshi keeps its users in its storage; they are created through a plaintext broker on
    // the same SQLite file, which then restarts with TLS and authentication.
    let setup = format!("127.0.0.1:{}", free_port());
    let mut broker = sqlite_broker(&dir, &setup, false).await;
    let created = eventually(Duration::from_secs(30), || async {
        let status = Command::new(nisshi())
            .args(["user", "create", "--broker", &format!("tcp://{setup}")])
            .args(["--mechanism", "scram256", "alice", "s3cret"])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .ok()?;
        status.success().then_some(())
    })
    .await;
    created.expect("user alice created");
    let _ = broker.0.kill();
    let _ = broker.0.wait();

    let address = format!("127.0.0.1:{}", free_port());
    let _broker = sqlite_broker(&dir, &address, true).await;
    let password_file = dir.join("kafka-password");
    std::fs::write(&password_file, "s3cret\n").unwrap();
    let settings = KafkaSettings {
        kafka_brokers: address.clone(),
        kafka_security_protocol: SecurityProtocol::SaslSsl,
        kafka_sasl_mechanism: Some(SaslMechanism::ScramSha256),
        kafka_sasl_username: Some("alice".into()),
        kafka_sasl_password_file: Some(password_file),
        kafka_ssl_ca_location: Some(dir.join("ca.pem")),
        ..KafkaSettings::default()
    };
    let check = Check::kafka(&settings).unwrap();
    eventually(Duration::from_secs(30), || async { check.run().await.ok() })
        .await
        .expect("the broker answers alice over TLS");
    round_trip(&settings, "sasl-events").await;

    // A wrong password is refused, and the error says what to check.
    let wrong = KafkaSettings {
        kafka_sasl_password: Some("wrong".into()),
        kafka_sasl_password_file: None,
        ..settings.clone()
    };
    let error = Check::kafka(&wrong)
        .unwrap()
        .run()
        .await
        .expect_err("a wrong password is refused");
    assert!(error.contains("KAFKA_SASL_USERNAME"), "{error}");

    // SASL without its settings is refused before anything connects, naming what is missing.
    let incomplete = KafkaSettings {
        kafka_sasl_password_file: None,
        ..settings.clone()
    };
    let message = format!("{:#}", incomplete.validate().expect_err("no password"));
    assert!(message.contains("KAFKA_SASL_PASSWORD_FILE"), "{message}");
    std::fs::remove_dir_all(&dir).ok();
}
