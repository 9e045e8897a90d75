use std::{
    collections::{HashMap, HashSet},
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use clap::CommandFactory;
use uuid::Uuid;

use crate::helpers::{assert_each_key_in_order, round_robin, TestEnv};

const BIN: &str = env!("CARGO_BIN_EXE_outbox-relay");

fn help_text(args: &[&str]) -> String {
    let output = Command::new(BIN)
        .args(args)
        .env_clear()
        .output()
        .expect("run outbox-relay");
    assert!(output.status.success(), "{args:?} failed");
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn help_lists_every_setting_with_its_environment_variable_and_default() {
    testkit::process::assert_help_lists_every_setting(
        Path::new(BIN),
        &outbox_relay::Cli::command(),
        &[
            ("HTTP_ADDR", Some("127.0.0.1:8082")),
            (
                "DATABASE_URL",
                Some("postgres://postgres:postgres@127.0.0.1:5432/orders"),
            ),
            ("DB_MAX_CONNECTIONS", Some("10")),
            ("DB_ACQUIRE_TIMEOUT_SECS", Some("5")),
            ("SKIP_MIGRATIONS", None),
            ("KAFKA_BROKERS", Some("127.0.0.1:9092")),
            ("BATCH_SIZE", Some("2000")),
            ("MAX_LANES_PER_BATCH", Some("16")),
            ("IDLE_POLL_MAX_MS", Some("500")),
            ("MAX_ATTEMPTS", Some("10")),
            ("RETRY_INITIAL_MS", Some("1000")),
            ("RETRY_MAX_MS", Some("300000")),
            ("OUTAGE_BACKOFF_MAX_MS", Some("5000")),
            ("DELIVERY_TIMEOUT_SECS", Some("15")),
            ("MESSAGE_TIMEOUT_MS", Some("120000")),
            ("MESSAGE_MAX_BYTES", Some("1000000")),
            ("LINGER_MS", Some("1")),
            ("STATS_INTERVAL_SECS", Some("5")),
        ],
    );
    let help = help_text(&["--help"]);
    for subcommand in ["run", "status", "requeue", "dead", "healthcheck"] {
        assert!(help.contains(subcommand), "--help lists {subcommand}");
    }
    assert!(
        !help.contains("test-hang-after-ack"),
        "test hooks stay hidden"
    );

    let requeue = help_text(&["requeue", "--help"]);
    for expected in ["--dead", "--event-id", "[env: DATABASE_URL="] {
        assert!(
            requeue.contains(expected),
            "requeue --help lacks {expected}"
        );
    }
    assert!(help_text(&["status", "--help"]).contains("[env: DATABASE_URL="));
}

/// The relay process; killed if the test fails before it ends it.
struct RelayProcess(Child);

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_binary(env: &TestEnv, extra: &[&str]) -> RelayProcess {
    let child = Command::new(BIN)
        .arg("run")
        .args(["--http-addr", "127.0.0.1:0", "--skip-migrations"])
        .args(extra)
        .env("DATABASE_URL", &env.database_url)
        .env("KAFKA_BROKERS", &env.brokers)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn outbox-relay");
    RelayProcess(child)
}

/// Waits for a stdout line containing `needle`; the rest of stdout is drained in the background.
async fn wait_for_line(child: &mut Child, needle: &'static str, deadline: Duration) {
    let stdout = child.stdout.take().expect("piped stdout");
    let (found, seen) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut found = Some(found);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.contains(needle) {
                if let Some(found) = found.take() {
                    let _ = found.send(());
                }
            }
        }
    });
    tokio::time::timeout(deadline, seen)
        .await
        .unwrap_or_else(|_| panic!("no log line with {needle:?} within {deadline:?}"))
        .expect("the relay wrote the line before exiting");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_between_ack_and_delete_publishes_the_rows_again_with_the_same_ids() {
    let env = TestEnv::new(3).await;
    let inserted: HashSet<Uuid> = env.insert(&round_robin(30, 3)).await.into_iter().collect();
    let mut process = spawn_binary(&env, &["--test-hang-after-ack"]);
    wait_for_line(
        &mut process.0,
        "hanging before the delete",
        Duration::from_secs(30),
    )
    .await;

    let acked = env.wait_for_messages(30, Duration::from_secs(20)).await;
    assert_eq!(acked.len(), 30, "the whole batch was acknowledged");
    assert_eq!(env.rows().await.len(), 30, "and none of it deleted");
    process.0.kill().expect("SIGKILL");
    process.0.wait().expect("reaped");

    let relay = env.spawn_relay(&[]).await;
    env.wait_until_drained(Duration::from_secs(20)).await;
    // Drained: every copy was acknowledged, so the whole topic is below its high watermarks.
    let messages = env.read_topic().await;
    assert_eq!(messages.len(), 60, "every row published again");
    let mut copies: HashMap<Uuid, usize> = HashMap::new();
    for message in &messages {
        *copies.entry(message.ce_id).or_default() += 1;
    }
    assert_eq!(copies.keys().copied().collect::<HashSet<_>>(), inserted);
    assert!(
        copies.values().all(|&n| n == 2),
        "each ce_id twice: {copies:?}"
    );
    assert_each_key_in_order(&messages);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_claiming_finishes_the_batch_in_hand_and_exits_zero() {
    let env = TestEnv::new(3).await;
    env.insert(&round_robin(10_000, 50)).await;
    let mut process = spawn_binary(&env, &["--batch-size", "50"]);
    env.wait_for_rows_left(Duration::from_secs(30), |left| left < 10_000)
        .await
        .expect("the relay started publishing");

    let killed = Command::new("kill")
        .args(["-TERM", &process.0.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Some(status) = process.0.try_wait().expect("wait") {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the relay exits within 30 s of SIGTERM");
    assert_eq!(status.code(), Some(0), "exit 0 after SIGTERM");

    let left: HashSet<Uuid> = env.rows().await.into_iter().map(|r| r.event_id).collect();
    assert!(
        !left.is_empty(),
        "it stopped claiming instead of draining everything"
    );
    let messages = env.read_topic().await;
    assert!(
        messages.iter().all(|m| !left.contains(&m.ce_id)),
        "every acknowledged row of the last batch was deleted before exiting"
    );
    assert_eq!(messages.len() + left.len(), 10_000, "and nothing was lost");
}
