//! The fault schedule, run beside the load: crashes and restarts, a relay paused while its lanes
//! move on, a relay's database connections cut, and once a paused broker.

use std::{collections::BTreeMap, sync::Mutex, time::Duration};

use tokio::time::{sleep, sleep_until, Instant};

use crate::System;

/// When each round starts, from the start of the load.
const ROUNDS_AT: [u64; 4] = [2, 14, 34, 46];
/// When the broker is paused, and for how long.
const BROKER_PAUSE_AT: u64 = 27;
const BROKER_PAUSE: Duration = Duration::from_secs(6);
const RELAY_PAUSE: Duration = Duration::from_secs(3);

/// What was injected, and when.
pub struct FaultLog {
    started: Instant,
    counts: Mutex<BTreeMap<String, u64>>,
}

impl FaultLog {
    pub fn new(started: Instant) -> Self {
        Self {
            started,
            counts: Mutex::default(),
        }
    }

    pub fn note(&self, fault: &str) {
        eprintln!(
            "[chaos +{:5.1}s] {fault}",
            self.started.elapsed().as_secs_f64()
        );
        *self
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(fault.to_owned())
            .or_default() += 1;
    }

    pub fn total(&self) -> u64 {
        self.counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .sum()
    }

    pub fn describe(&self) -> String {
        self.counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(fault, count)| format!("{count}x {fault}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Runs every round and the broker pause at their times; returns how many of relay B's
/// database connections were terminated in all.
pub async fn run(system: &System, log: &FaultLog) -> u64 {
    let mut terminated = 0;
    for (round, at) in ROUNDS_AT.into_iter().enumerate() {
        if round == 2 {
            sleep_until(log.started + Duration::from_secs(BROKER_PAUSE_AT)).await;
            pause_broker(system, log).await;
        }
        sleep_until(log.started + Duration::from_secs(at)).await;
        terminated += one_round(system, log).await;
    }
    terminated
}

async fn one_round(system: &System, log: &FaultLog) -> u64 {
    let http = &system.http;

    // A relay crashes (mid-batch, likely: rows claimed or published but not deleted).
    system.relay_a.process().kill();
    log.note("kill -9 relay-a");
    sleep(Duration::from_secs(1)).await;
    system.relay_a.process().restart();
    system.relay_a.wait_ready(http).await;

    // A consumer crashes; with its static instance id it takes its partitions back at once.
    system.consumer_1.process().kill();
    log.note("kill -9 consumer c1");
    sleep(Duration::from_secs(1)).await;
    system.consumer_1.process().restart();
    system.consumer_1.wait_ready(http).await;

    // order-api crashes: requests in flight fail and are retried with their keys; some of them
    // had committed, and the retry must return the same order.
    system.order_api.process().kill();
    log.note("kill -9 order-api");
    system.order_api.process().restart();
    system.order_api.wait_ready(http).await;

    // A zombie: relay B freezes with whatever it holds, and wakes up after its lanes may have
    // moved to relay A.
    system.relay_b.process().signal("STOP");
    log.note("SIGSTOP relay-b for 3 s");
    sleep(RELAY_PAUSE).await;
    system.relay_b.process().signal("CONT");
    sleep(Duration::from_secs(1)).await;

    // Relay B's database connections are cut (its open transaction, if any, rolls back).
    let cut: Vec<bool> = sqlx::query_scalar(
        "select pg_terminate_backend(pid) from pg_stat_activity
          where application_name = 'relay-b' and datname = current_database()",
    )
    .fetch_all(&system.orders_pool)
    .await
    .expect("terminate relay-b's backends");
    log.note("relay-b's database connections terminated");
    cut.into_iter().filter(|cut| *cut).count() as u64
}

async fn pause_broker(system: &System, log: &FaultLog) {
    system.broker.process().signal("STOP");
    log.note("SIGSTOP broker for 6 s");
    sleep(BROKER_PAUSE).await;
    system.broker.process().signal("CONT");
}
