//! One bad partition does not slow the others, and settings that would wedge the relay are
//! refused at start-up.

use std::{collections::HashSet, process::Command, time::Duration};

use outbox_relay::partitions::partition_of;
use rdkafka::{
    mocking::MockCluster,
    producer::{FutureProducer, FutureRecord},
    ClientConfig,
};
use uuid::Uuid;

use crate::helpers::{round_robin, TestEnv};

const PARTITIONS: i32 = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_of_a_partition_without_a_leader_wait_in_order_while_every_other_key_flows() {
    let cluster = MockCluster::new(3).expect("mock cluster");
    let topic = format!("relay-leaderless-{}", Uuid::new_v4().simple());
    cluster
        .create_topic(&topic, PARTITIONS, 1)
        .expect("mock topic");
    let env = TestEnv::with_topic(cluster.bootstrap_servers(), topic.clone()).await;
    cluster
        .partition_leader(&topic, 0, None)
        .expect("partition 0 without a leader");

    let rows = round_robin(3_000, 60);
    let (stuck_keys, stuck_rows) = keys_of_partition_zero(&rows);
    let inserted = env.insert(&rows).await;
    let relay = env
        .spawn_relay(&[
            "--delivery-timeout-secs",
            "3",
            "--message-timeout-ms",
            "60000",
            "--batch-size",
            "200",
        ])
        .await;

    // Every other key is published at a useful rate, long before any message timeout.
    env.wait_for_rows_left(Duration::from_secs(20), |left| left == stuck_rows)
        .await
        .expect("every key of the available partitions published within 20 s");
    let left: HashSet<String> = env.keys_left().await.into_iter().collect();
    assert_eq!(
        left, stuck_keys,
        "only the leaderless partition's keys wait"
    );
    assert!(relay.metric("outbox_relay_held_keys").await >= 1.0);
    assert_eq!(relay.metric("outbox_relay_retries_total").await, 0.0);

    cluster
        .partition_leader(&topic, 0, Some(1))
        .expect("partition 0 gets a leader");
    env.assert_drained_into_topic_in_key_order(inserted, Duration::from_secs(60))
        .await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_of_a_partition_whose_acks_lag_past_the_delivery_timeout_are_held_until_they_arrive() {
    let cluster = MockCluster::new(3).expect("mock cluster");
    let topic = format!("relay-slow-{}", Uuid::new_v4().simple());
    cluster
        .create_topic(&topic, PARTITIONS, 1)
        .expect("mock topic");
    // Partition 0 alone on broker 1, whose answers take 6 s: longer than the delivery timeout.
    for partition in 0..PARTITIONS {
        let leader = if partition == 0 { 1 } else { 2 + partition % 2 };
        cluster
            .partition_leader(&topic, partition, Some(leader))
            .expect("leader");
    }
    let env = TestEnv::with_topic(cluster.bootstrap_servers(), topic.clone()).await;
    let rows = round_robin(2_000, 40);
    let (slow_keys, slow_rows) = keys_of_partition_zero(&rows);
    let relay = env
        .spawn_relay(&[
            "--delivery-timeout-secs",
            "2",
            "--message-timeout-ms",
            "60000",
            "--batch-size",
            "200",
        ])
        .await;
    // The metadata is known (the relay read it at its first batch) before the slowness starts.
    let warm_up = env.insert(&[("warm-up".to_owned(), 0)]).await;
    env.wait_until_drained(Duration::from_secs(20)).await;
    cluster
        .broker_round_trip_time(1, Duration::from_secs(6))
        .expect("slow broker 1");
    let inserted = env.insert(&rows).await;

    env.wait_for_rows_left(Duration::from_secs(15), |left| left <= slow_rows)
        .await
        .expect("the other partitions' keys flow while partition 0's acks lag");
    let left: HashSet<String> = env.keys_left().await.into_iter().collect();
    assert!(left.is_subset(&slow_keys), "only slow keys wait: {left:?}");
    assert_eq!(relay.metric("outbox_relay_retries_total").await, 0.0);

    cluster
        .broker_round_trip_time(1, Duration::ZERO)
        .expect("broker 1 fast again");
    let expected = inserted.into_iter().chain(warm_up);
    env.assert_drained_into_topic_in_key_order(expected, Duration::from_secs(60))
        .await;
    relay.stop().await;
}

/// The keys of `rows` that go to partition 0 (some, not all), and how many rows they have.
fn keys_of_partition_zero(rows: &[(String, i64)]) -> (HashSet<String>, i64) {
    let keys: HashSet<&str> = rows.iter().map(|(key, _)| key.as_str()).collect();
    let zero: HashSet<String> = keys
        .iter()
        .filter(|key| partition_of(key.as_bytes(), PARTITIONS) == 0)
        .map(|key| key.to_string())
        .collect();
    assert!(!zero.is_empty() && zero.len() < keys.len());
    let rows = rows.iter().filter(|(key, _)| zero.contains(key)).count() as i64;
    (zero, rows)
}

#[tokio::test]
async fn the_relay_knows_the_partition_librdkafka_sends_each_key_to() {
    let env = TestEnv::new(PARTITIONS).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &env.brokers)
        .create()
        .expect("producer");
    for i in 0..120 {
        let key = format!("CATALOG-{i:04}");
        let delivered = producer
            .send(
                FutureRecord::to(&env.topic).key(&key).payload("{}"),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("delivered");
        assert_eq!(
            delivered.partition,
            partition_of(key.as_bytes(), PARTITIONS),
            "{key}"
        );
    }
}

#[test]
fn settings_that_would_wedge_the_relay_are_refused_at_start_up_naming_the_setting() {
    for (env, named) in [
        (
            &[("DELIVERY_TIMEOUT_SECS", "0")][..],
            "DELIVERY_TIMEOUT_SECS",
        ),
        (&[("MESSAGE_TIMEOUT_MS", "0")][..], "MESSAGE_TIMEOUT_MS"),
        (&[("BATCH_SIZE", "0")][..], "BATCH_SIZE"),
        (
            &[("MESSAGE_TIMEOUT_MS", "5"), ("LINGER_MS", "10")][..],
            "MESSAGE_TIMEOUT_MS",
        ),
        (
            &[("DELIVERY_TIMEOUT_SECS", "1"), ("LINGER_MS", "900")][..],
            "DELIVERY_TIMEOUT_SECS",
        ),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_outbox-relay"))
            .env_clear()
            .envs(env.iter().copied())
            .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
            .output()
            .expect("run outbox-relay");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{env:?} was accepted");
        assert!(stderr.contains(named), "{env:?}: {stderr}");
        assert!(
            !stderr.contains("cannot connect"),
            "refused before connecting: {stderr}"
        );
    }
}
