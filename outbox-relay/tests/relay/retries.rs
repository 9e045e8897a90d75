use std::time::Duration;

use crate::helpers::{cli_status, eventually, first_seen_order, insert_rows, run_cli, TestEnv};

/// Rows of a key `big` whose second row is larger than the relay's message.max.bytes, between
/// rows of keys a, b, c.
async fn insert_with_one_oversized(env: &TestEnv) {
    let small = |key: &str, seq: i64| (key.to_owned(), seq);
    env.insert(&[small("a", 0), small("b", 0), small("big", 0)])
        .await;
    insert_rows(&env.pool, &env.topic, &[small("big", 1)], 5_000).await;
    env.insert(&[small("big", 2), small("c", 0), small("big", 3)])
        .await;
    let later: Vec<(String, i64)> = (1..=20)
        .map(|i| (["a", "b", "c"][i as usize % 3].to_owned(), i))
        .collect();
    env.insert(&later).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_dies_after_its_attempts_parks_its_key_and_requeue_publishes_in_order()
{
    let env = TestEnv::new(3).await;
    insert_with_one_oversized(&env).await;
    let limited = [
        "--message-max-bytes",
        "2000",
        "--max-attempts",
        "3",
        "--retry-initial-ms",
        "1000",
        "--retry-max-ms",
        "1000",
    ];
    let relay = env.spawn_relay(&limited).await;

    // Meanwhile: while big/1 waits for its retry, every other key is published, and the rows of
    // its key behind it are held.
    let pool = env.pool.clone();
    eventually(Duration::from_secs(20), || {
        let pool = pool.clone();
        async move {
            let (others, retrying): (i64, i64) = sqlx::query_as(
                "select count(*) filter (where partition_key <> 'big'),
                        count(*) filter (where partition_key = 'big' and state = 'pending'
                                           and attempts between 1 and 2)
                   from outbox",
            )
            .fetch_one(&pool)
            .await
            .ok()?;
            (others == 0 && retrying == 1).then_some(())
        }
    })
    .await
    .expect("other keys published while the oversized row was being retried");

    let pool = env.pool.clone();
    eventually(Duration::from_secs(20), || {
        let pool = pool.clone();
        async move {
            let dead: i64 = sqlx::query_scalar("select count(*) from outbox where state = 'dead'")
                .fetch_one(&pool)
                .await
                .ok()?;
            (dead == 1).then_some(())
        }
    })
    .await
    .expect("the oversized row becomes dead");
    let rows = env.rows().await;
    let states: Vec<(&str, &str, i32)> = rows
        .iter()
        .map(|r| (r.partition_key.as_str(), r.state.as_str(), r.attempts))
        .collect();
    assert_eq!(
        states,
        vec![
            ("big", "dead", 3),
            ("big", "parked", 0),
            ("big", "parked", 0)
        ],
        "big/1 dead after 3 attempts, big/2 and big/3 parked, the rest published"
    );
    let last_error = rows[0].last_error.as_deref().unwrap_or_default();
    assert!(
        last_error.to_lowercase().contains("too large"),
        "last_error says why: {last_error}"
    );

    // A row of the key arriving after the park is held too, while other keys flow.
    env.insert(&[("big".into(), 4), ("d".into(), 0)]).await;
    let pool = env.pool.clone();
    eventually(Duration::from_secs(10), || {
        let pool = pool.clone();
        async move {
            let d: i64 =
                sqlx::query_scalar("select count(*) from outbox where partition_key = 'd'")
                    .fetch_one(&pool)
                    .await
                    .ok()?;
            (d == 0).then_some(())
        }
    })
    .await
    .expect("a later row of another key is published");
    assert_eq!(
        env.rows().await.len(),
        4,
        "big/4 is held behind the dead row"
    );
    // ... and the relay parks it, so no claim or oldest-pending probe reads it again.
    let pool = env.pool.clone();
    eventually(Duration::from_secs(10), || {
        let pool = pool.clone();
        async move {
            let pending: i64 =
                sqlx::query_scalar("select count(*) from outbox where state = 'pending'")
                    .fetch_one(&pool)
                    .await
                    .ok()?;
            (pending == 0).then_some(())
        }
    })
    .await
    .expect("the row that arrived behind the dead row is parked");

    let status = cli_status(&env.database_url).await;
    assert_eq!(status["pending"], 0, "{status}");
    assert_eq!(status["dead"], 1, "{status}");
    assert_eq!(status["parked"], 3, "{status}");
    assert!(status["oldest_pending_age_seconds"].is_number(), "{status}");

    // The operator's view without SQL: the dead row with its key, attempts, age and error; and
    // the same status on the relay's HTTP port.
    let (exit, stdout) = run_cli(&env.database_url, &["dead", "--limit", "5"]).await;
    assert!(exit.success(), "dead failed: {stdout}");
    let dead: Vec<serde_json::Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect();
    assert_eq!(dead.len(), 1, "{stdout}");
    assert_eq!(dead[0]["partition_key"], "big", "{stdout}");
    assert_eq!(dead[0]["attempts"], 3, "{stdout}");
    assert!(
        dead[0]["age_seconds"]
            .as_f64()
            .is_some_and(|age| age >= 0.0),
        "{stdout}"
    );
    assert!(
        dead[0]["last_error"]
            .as_str()
            .is_some_and(|e| e.to_lowercase().contains("too large")),
        "{stdout}"
    );
    let served = relay.get("/status").await;
    assert_eq!(served.status(), 200);
    let served: serde_json::Value = served.json().await.expect("status JSON");
    assert_eq!(served, status, "GET /status answers what `status` prints");

    // The cause is fixed (the limit raised); requeue puts the rows back in order.
    relay.stop().await;
    let relay = env.spawn_relay(&[]).await;
    let (exit, stdout) = run_cli(&env.database_url, &["requeue", "--dead"]).await;
    assert!(exit.success());
    let requeued: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    // big/1 dead, big/2 and big/3 parked with it, big/4 parked by the relay since.
    assert_eq!(requeued["requeued"], 4);
    env.wait_until_drained(Duration::from_secs(20)).await;

    let messages = env.read_topic().await;
    let by_key = first_seen_order(&messages);
    assert_eq!(
        by_key["big"],
        vec![0, 1, 2, 3, 4],
        "dead then parked rows, in order"
    );
    assert_eq!(
        messages.iter().filter(|m| m.key == "big").count(),
        5,
        "nothing of the key went out before the requeue"
    );
    assert_eq!(messages.len(), 3 + 1 + 20 + 5);
    let status = cli_status(&env.database_url).await;
    assert_eq!(status["pending"], 0);
    assert_eq!(status["dead"], 0);
    assert_eq!(status["parked"], 0);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeue_by_event_id_releases_only_that_dead_row_and_its_parked_successors() {
    let env = TestEnv::new(1).await;
    let x = insert_rows(&env.pool, &env.topic, &[("x".into(), 1)], 3_000).await;
    insert_rows(&env.pool, &env.topic, &[("y".into(), 1)], 3_000).await;
    env.insert(&[("x".into(), 2), ("y".into(), 2)]).await;
    let relay = env
        .spawn_relay(&["--message-max-bytes", "2000", "--max-attempts", "1"])
        .await;
    let database_url = env.database_url.clone();
    eventually(Duration::from_secs(20), || {
        let database_url = database_url.clone();
        async move {
            let status = cli_status(&database_url).await;
            (status["dead"] == 2 && status["parked"] == 2).then_some(())
        }
    })
    .await
    .expect("both oversized rows dead, their successors parked");

    // The fix: the payloads shrink.
    sqlx::query("update outbox set payload = payload - 'pad'")
        .execute(&env.pool)
        .await
        .unwrap();
    let (exit, stdout) = run_cli(
        &env.database_url,
        &["requeue", "--event-id", &x[0].to_string()],
    )
    .await;
    assert!(exit.success());
    assert_eq!(
        stdout.trim(),
        r#"{"requeued":2,"older_than_dedup_window":0}"#
    );
    let pool = env.pool.clone();
    eventually(Duration::from_secs(10), || {
        let pool = pool.clone();
        async move {
            let x: i64 =
                sqlx::query_scalar("select count(*) from outbox where partition_key = 'x'")
                    .fetch_one(&pool)
                    .await
                    .ok()?;
            (x == 0).then_some(())
        }
    })
    .await
    .expect("key x is published after its requeue");
    let left: Vec<(String, String)> = env
        .rows()
        .await
        .into_iter()
        .map(|r| (r.partition_key, r.state))
        .collect();
    assert_eq!(
        left,
        vec![("y".into(), "dead".into()), ("y".into(), "parked".into())]
    );
    let order: Vec<(String, i64)> = env
        .read_topic()
        .await
        .into_iter()
        .map(|m| (m.key, m.seq))
        .collect();
    assert_eq!(order, vec![("x".into(), 1), ("x".into(), 2)]);

    let (exit, _) = run_cli(
        &env.database_url,
        &["requeue", "--event-id", &x[0].to_string()],
    )
    .await;
    assert!(!exit.success(), "an event id with no dead row is an error");
    let (exit, _) = run_cli(&env.database_url, &["requeue"]).await;
    assert!(!exit.success(), "requeue needs --dead or --event-id");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_requeued_after_a_claim_began_still_go_before_the_later_rows_of_their_key() {
    let env = TestEnv::new(1).await;
    env.insert(&[
        ("k".into(), 0),
        ("k".into(), 1),
        ("k".into(), 2),
        ("k".into(), 3),
    ])
    .await;
    let ids: Vec<i64> = sqlx::query_scalar("select id from outbox order by id")
        .fetch_all(&env.pool)
        .await
        .unwrap();
    // k/0 dead, k/1 and k/2 parked behind it, k/3 held (it arrived after the park).
    sqlx::query(
        "update outbox set state = case when id = $1 then 'dead' else 'parked' end
          where id = any($2)",
    )
    .bind(ids[0])
    .bind(&ids[..3])
    .execute(&env.pool)
    .await
    .unwrap();
    let lane: i32 = sqlx::query_scalar("select lane::int from outbox limit 1")
        .fetch_one(&env.pool)
        .await
        .unwrap();

    // A claim's transaction begins; a requeue commits after that; then the claim reads.
    let mut claim = env.pool.begin().await.unwrap();
    let claim_began: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("select now()")
        .fetch_one(&mut *claim)
        .await
        .unwrap();
    outbox_relay::outbox::requeue::requeue(
        &env.pool,
        outbox_relay::outbox::Requeue::AllDead,
        Duration::from_secs(7 * 86_400),
        false,
    )
    .await
    .unwrap();
    let requeued_at: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("select next_attempt_at from outbox where id = $1")
            .bind(ids[0])
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert!(
        requeued_at > claim_began,
        "the requeue is later than the claim's start"
    );
    let claimed = outbox_relay::outbox::claim::take_rows(&mut claim, &[lane], &[], 100)
        .await
        .unwrap();

    let claimed: Vec<i64> = claimed.iter().map(|r| r.id).collect();
    assert_eq!(
        claimed, ids,
        "the whole key, in order: none of it skipped, none of it ahead"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeue_refuses_rows_older_than_the_dedup_window_unless_forced() {
    let env = TestEnv::new(1).await;
    env.insert(&[("k".into(), 0), ("k".into(), 1), ("j".into(), 0)])
        .await;
    // k/0 dead ten days ago, k/1 parked behind it; j/0 dead an hour ago. The default window
    // is 167 hours (the consumer's 7 days minus its 1 hour margin).
    sqlx::query(
        "update outbox set state = case when partition_key = 'k' and id = (select min(id) from outbox)
                                        then 'dead'
                                        when partition_key = 'k' then 'parked'
                                        else 'dead' end,
                           attempts = case when partition_key = 'j' or id = (select min(id) from outbox)
                                           then 3 else 0 end,
                           created_at = now() - case when partition_key = 'k' then interval '10 days'
                                                     else interval '1 hour' end",
    )
    .execute(&env.pool)
    .await
    .unwrap();

    let (exit, stdout) = run_cli(&env.database_url, &["requeue", "--dead"]).await;
    assert!(!exit.success(), "refused: {stdout}");
    let status = cli_status(&env.database_url).await;
    assert_eq!(status["dead"], 2, "nothing requeued: {status}");

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_outbox-relay"))
        .args(["requeue", "--dead"])
        .env("DATABASE_URL", &env.database_url)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("2 of the 3 rows") && stderr.contains("--force"),
        "the error says how many and what to do: {stderr}"
    );

    // A window the rows fit in (the consumer keeps ids for 30 days): no force needed.
    let (exit, stdout) = run_cli(
        &env.database_url,
        &[
            "requeue",
            "--event-id",
            &dead_event_id(&env, "j").await,
            "--dedup-window",
            "30d",
        ],
    )
    .await;
    assert!(exit.success(), "{stdout}");
    assert_eq!(
        stdout.trim(),
        r#"{"requeued":1,"older_than_dedup_window":0}"#
    );

    let (exit, stdout) = run_cli(&env.database_url, &["requeue", "--dead", "--force"]).await;
    assert!(exit.success(), "{stdout}");
    assert_eq!(
        stdout.trim(),
        r#"{"requeued":2,"older_than_dedup_window":2}"#
    );
    let status = cli_status(&env.database_url).await;
    assert_eq!(status["dead"], 0, "{status}");
    assert_eq!(status["pending"], 3, "{status}");
}

async fn dead_event_id(env: &TestEnv, key: &str) -> String {
    sqlx::query_scalar::<_, uuid::Uuid>(
        "select event_id from outbox where partition_key = $1 and state = 'dead'",
    )
    .bind(key)
    .fetch_one(&env.pool)
    .await
    .unwrap()
    .to_string()
}
