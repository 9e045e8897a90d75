use std::{collections::HashSet, net::ToSocketAddrs, time::Duration};

use rdkafka::mocking::MockCluster;
use sqlx::{postgres::PgConnectOptions, PgPool};
use testkit::TcpProxy;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::helpers::{event_ids, eventually, insert_rows, round_robin, TestEnv};

/// Inserts one row every 100 ms over 10 keys until `stop`; returns the event ids.
fn keep_inserting(
    pool: PgPool,
    topic: String,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<Vec<Uuid>> {
    tokio::spawn(async move {
        let mut ids = Vec::new();
        let mut seq = 1_000;
        while !stop.is_cancelled() {
            let key = format!("k{:03}", seq % 10);
            ids.extend(insert_rows(&pool, &topic, &[(key, seq)], 0).await);
            seq += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        ids
    })
}

/// The outbox and the relays' transactions at one moment.
struct Sample {
    /// Rows still pending.
    pending: i64,
    /// Rows with an attempt counted, or not pending (dead or parked).
    counted: i64,
    /// The longest open transaction of a relay, in seconds.
    longest_transaction: f64,
}

async fn outage_sample(pool: &PgPool) -> Sample {
    let (pending, counted, longest_transaction) = sqlx::query_as(
        "select (select count(*) from outbox where state = 'pending'),
                (select count(*) from outbox_blocking),
                (select coalesce(max(extract(epoch from now() - xact_start)), 0)::float8
                   from pg_stat_activity
                  where datname = current_database()
                    and application_name = 'outbox-relay'
                    and xact_start is not null)",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    Sample {
        pending,
        counted,
        longest_transaction,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thirty_second_broker_outage_counts_no_attempts_loses_nothing_and_the_backlog_drains() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let topic = format!("relay-outage-{}", Uuid::new_v4().simple());
    cluster.create_topic(&topic, 3, 1).expect("mock topic");
    let env = TestEnv::with_topic(cluster.bootstrap_servers(), topic).await;
    // Two relays: one with the default 120 s message timeout (its messages wait out the outage
    // in the producer queue), one whose messages time out after 1 s, within the delivery
    // timeout, so it sees MessageTimedOut reports (a timeout is not about the message). Two
    // attempts would make a row dead at once if an outage counted attempts.
    let strict = [
        "--max-attempts",
        "2",
        "--retry-initial-ms",
        "10",
        "--retry-max-ms",
        "10",
    ];
    let common = [
        &strict[..],
        &[
            "--delivery-timeout-secs",
            "2",
            "--outage-backoff-max-ms",
            "1000",
        ],
    ]
    .concat();
    let patient = env.spawn_relay(&common).await;
    let hasty = env
        .spawn_relay(&[&common[..], &["--message-timeout-ms", "1000"]].concat())
        .await;
    let mut inserted = env.insert(&round_robin(200, 10)).await;
    env.wait_until_drained(Duration::from_secs(30)).await;

    cluster.broker_down(1).expect("broker down");
    let stop = CancellationToken::new();
    let inserter = keep_inserting(env.pool.clone(), env.topic.clone(), stop.clone());
    let outage = tokio::time::Instant::now();
    let mut longest_transaction: f64 = 0.0;
    while outage.elapsed() < Duration::from_secs(30) {
        let sample = outage_sample(&env.pool).await;
        assert_eq!(
            sample.counted, 0,
            "an outage counted an attempt or killed a row"
        );
        longest_transaction = longest_transaction.max(sample.longest_transaction);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        longest_transaction < 10.0,
        "a claim transaction stayed open {longest_transaction} s during the outage"
    );
    let backlog: i64 = sqlx::query_scalar("select count(*) from outbox")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert!(backlog > 100, "rows kept arriving and waited: {backlog}");

    cluster.broker_up(1).expect("broker up");
    stop.cancel();
    inserted.extend(inserter.await.unwrap());
    // Nothing lost, nothing out of order.
    env.assert_drained_into_topic_in_key_order(inserted, Duration::from_secs(90))
        .await;
    for relay in [&patient, &hasty] {
        assert_eq!(relay.metric("outbox_relay_retries_total").await, 0.0);
        assert_eq!(relay.metric("outbox_relay_dead_total").await, 0.0);
    }
    let transient = patient.metric("outbox_relay_publish_failures_total").await
        + hasty.metric("outbox_relay_publish_failures_total").await;
    assert!(transient > 0.0, "the relays saw the outage");
    patient.stop().await;
    hasty.stop().await;
}

/// `url` with its host and port replaced by `addr`.
fn through(url: &str, addr: std::net::SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (credentials, rest) = rest.rsplit_once('@').map_or(("", rest), |(c, r)| (c, r));
    let path = &rest[rest.find('/').unwrap()..];
    let at = if credentials.is_empty() { "" } else { "@" };
    format!("{scheme}://{credentials}{at}{addr}{path}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_pauses_the_relay_without_counting_attempts_and_it_resumes() {
    let env = TestEnv::new(1).await;
    let options: PgConnectOptions = env.database_url.parse().unwrap();
    let upstream = (options.get_host(), options.get_port())
        .to_socket_addrs()
        .unwrap()
        .next()
        .unwrap();
    let proxy = TcpProxy::start(upstream).await.unwrap();
    let proxied = through(&env.database_url, proxy.addr());
    let relay = env
        .spawn_relay(&[
            "--database-url",
            &proxied,
            "--db-acquire-timeout-secs",
            "1",
            "--max-attempts",
            "1",
            "--outage-backoff-max-ms",
            "500",
        ])
        .await;
    let mut inserted = env.insert(&round_robin(50, 5)).await;
    env.wait_until_drained(Duration::from_secs(20)).await;

    proxy.cut();
    inserted.extend(env.insert(&round_robin(50, 5)).await);
    // The relay noticed: a step failed and waits at the outage gate for the database.
    relay
        .wait_until_metric_reaches("outbox_relay_paused", 1.0)
        .await;
    assert_eq!(
        env.rows().await.len(),
        50,
        "nothing is published without the database"
    );
    proxy.restore();

    // While cut, the relay could write nothing; once it reconnects it could record the outage
    // against the rows it had in hand. With --max-attempts 1, one attempt counted would leave a
    // dead row behind, so once no row is pending every row must be gone.
    let counted = eventually(Duration::from_secs(30), || async {
        let sample = outage_sample(&env.pool).await;
        (sample.pending == 0).then_some(sample.counted)
    })
    .await
    .expect("every row published (or counted against) after the outage");
    assert_eq!(
        counted, 0,
        "the database outage counted an attempt or killed a row"
    );
    assert_eq!(relay.metric("outbox_relay_retries_total").await, 0.0);
    assert_eq!(relay.metric("outbox_relay_dead_total").await, 0.0);
    env.wait_until_drained(Duration::from_secs(30)).await;

    assert!(!relay.task.is_finished(), "the relay kept running");
    let published = event_ids(&env.read_topic().await);
    assert_eq!(published, inserted.into_iter().collect::<HashSet<_>>());
    relay.stop().await;
}
