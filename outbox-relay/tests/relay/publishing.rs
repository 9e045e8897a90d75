use std::{
    collections::{HashMap, HashSet},
    future::Future,
    time::{Duration, Instant},
};

use outbox_relay::outbox::{claim, LANE_LOCK_NAMESPACE};
use uuid::Uuid;

use crate::helpers::{
    assert_each_key_in_order, event_ids, eventually, round_robin, RunningRelay, TestEnv,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_is_published_with_its_cloud_event_headers_and_then_deleted() {
    let env = TestEnv::new(3).await;
    let ids = env.insert(&[("CATALOG-0001".into(), 1)]).await;
    let relay = env.spawn_relay(&[]).await;

    env.wait_until_drained(Duration::from_secs(20)).await;
    let messages = env.read_topic().await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].ce_id, ids[0]);
    assert_eq!(messages[0].key, "CATALOG-0001");
    assert_eq!(
        messages[0].traceparent.as_deref(),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_relays_drain_ten_thousand_rows_over_a_hundred_keys_once_each_in_key_order() {
    let env = TestEnv::new(6).await;
    // Three relays of two steps of 8 lanes hold at most 48 of the 64 lanes, so a relay always
    // finds free lanes: a relay locks the lanes its last step found backlogged first, and with
    // more steps two relays could keep every lane between them until the drain ends. The short
    // idle poll has all three start within the drain (the rows come without a notification).
    let flags = [
        "--batch-size",
        "200",
        "--max-lanes-per-batch",
        "8",
        "--steps-in-flight",
        "2",
        "--idle-poll-max-ms",
        "20",
    ];
    let relays = [
        env.spawn_relay(&flags).await,
        env.spawn_relay(&flags).await,
        env.spawn_relay(&flags).await,
    ];
    let rows = round_robin(10_000, 100);
    let started = Instant::now();
    let inserted: HashSet<Uuid> = env.insert(&rows).await.into_iter().collect();

    env.wait_until_drained(Duration::from_secs(120)).await;
    eprintln!(
        "three relays drained 10,000 rows in {:?}",
        started.elapsed()
    );
    // Drained: every row was acknowledged, so the whole topic is below its high watermarks.
    let messages = env.read_topic().await;

    assert_eq!(messages.len(), 10_000, "no event may be published twice");
    let published = event_ids(&messages);
    assert_eq!(published.len(), 10_000, "an event id was published twice");
    assert_eq!(published, inserted, "every event arrives");
    let by_key = assert_each_key_in_order(&messages);
    assert_eq!(by_key.len(), 100);
    let mut shares = Vec::new();
    for relay in &relays {
        shares.push(relay.metric("outbox_relay_published_total").await);
    }
    eprintln!("rows published by each relay: {shares:?}");
    assert_eq!(shares.iter().sum::<f64>(), 10_000.0, "{shares:?}");
    assert!(
        shares.iter().all(|&n| n > 0.0),
        "every relay took part: {shares:?}"
    );
    for relay in relays {
        relay.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_committed_after_a_later_row_was_published_is_still_published() {
    let env = TestEnv::new(1).await;
    let relay = env.spawn_relay(&[]).await;

    let mut late = env.pool.begin().await.unwrap();
    let late_id = crate::helpers::insert_rows(&mut *late, &env.topic, &[("k".into(), 1)], 0).await;
    let early_id = env.insert(&[("k".into(), 2)]).await;
    let first = env.wait_for_messages(1, Duration::from_secs(20)).await;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].ce_id, early_id[0]);

    let ids: Vec<i64> =
        sqlx::query_scalar("select id from outbox where event_id = any($1) order by id")
            .bind([late_id[0], early_id[0]])
            .fetch_all(&mut *late)
            .await
            .unwrap();
    assert_eq!(
        ids.len(),
        1,
        "the published row is gone; the late one is not committed"
    );
    late.commit().await.unwrap();

    env.wait_until_drained(Duration::from_secs(20)).await;
    let both = env.read_topic().await;
    assert_eq!(both.len(), 2);
    assert_eq!(
        both[1].ce_id, late_id[0],
        "the late-committed row is published"
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_skips_a_lane_whose_lock_another_transaction_holds() {
    let env = TestEnv::new(1).await;
    env.insert(&[("alpha".into(), 1), ("alpha".into(), 2)])
        .await;
    let lanes: HashMap<String, i32> =
        sqlx::query_as::<_, (String, i32)>("select partition_key, lane::int from outbox")
            .fetch_all(&env.pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let alpha_lane = lanes["alpha"];
    let mut other = None;
    for i in 0..1_000 {
        let key = format!("other-{i}");
        if lane_of(&env, &key).await != alpha_lane {
            other = Some(key);
            break;
        }
    }
    let other = other.expect("a key in another lane");
    env.insert(&[(other, 3)]).await;
    let relay = outbox_relay::Relay::build(env.settings(&[])).await.unwrap();

    let mut holder = env.pool.begin().await.unwrap();
    let locked: bool = sqlx::query_scalar("select pg_try_advisory_xact_lock($1, $2)")
        .bind(LANE_LOCK_NAMESPACE)
        .bind(alpha_lane)
        .fetch_one(&mut *holder)
        .await
        .unwrap();
    assert!(locked);
    let outcome = relay.publish_batch().await.unwrap();
    assert_eq!(outcome.published, 1, "only the free lane is published");
    assert_eq!(env.keys_left().await, vec!["alpha", "alpha"]);

    holder.rollback().await.unwrap();
    let outcome = relay.publish_batch().await.unwrap();
    assert_eq!(outcome.published, 2);
    assert!(env.rows().await.is_empty());
    let order: Vec<i64> = env.read_topic().await.iter().map(|m| m.seq).collect();
    assert_eq!(order, vec![3, 1, 2]);
}

#[tokio::test]
async fn a_step_locks_every_lane_with_rows_at_a_trickle_and_only_max_lanes_in_a_backlog() {
    let env = TestEnv::new(1).await;
    env.insert(&round_robin(100, 100)).await;
    let lanes_with_rows = env.lanes_with_rows().await;
    assert!(lanes_with_rows > 8, "{lanes_with_rows} lanes");
    // Relays of at most 4 lanes per step during a backlog, with the given batch size.
    let relay = |batch_size: &'static str| {
        let settings = env.settings(&["--max-lanes-per-batch", "4", "--batch-size", batch_size]);
        async move { outbox_relay::Relay::build(settings).await.unwrap() }
    };
    let trickle = relay("1000").await;
    // Nothing backlogged: one step takes every lane that has rows, so no row waits for later
    // steps to pick its lane.
    let outcome = trickle.publish_batch().await.unwrap();
    assert_eq!(outcome.lanes as i64, lanes_with_rows);
    assert_eq!(outcome.published, 100);

    // A backlog: the first step gives every lane its full share, so the next ones lock at most
    // MAX_LANES_PER_BATCH lanes, leaving the others to other steps and relays.
    env.insert(&round_robin(2_000, 100)).await;
    let backlog = relay("40").await;
    let first = backlog.publish_batch().await.unwrap();
    assert_eq!(first.lanes as i64, lanes_with_rows);
    assert_eq!(first.published, 40);
    for _ in 0..3 {
        let outcome = backlog.publish_batch().await.unwrap();
        assert!(outcome.lanes <= 4, "{outcome:?}");
        // A lane may run out of rows within its share of 10 (a lane of one key holds 20).
        assert!((1..=40).contains(&outcome.published), "{outcome:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_holds_only_the_lane_locks_it_uses_so_other_relays_get_the_rest() {
    let env = TestEnv::new(1).await;
    env.insert(&round_robin(1_000, 100)).await;
    let busy_lanes = env.lanes_with_rows().await;
    let held_by = |pid: i32| {
        let pool = env.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "select count(*) from pg_locks where locktype = 'advisory' and pid = $1",
            )
            .bind(pid)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };

    let mut first = env.pool.begin().await.unwrap();
    let first_pid: i32 = sqlx::query_scalar("select pg_backend_pid()")
        .fetch_one(&mut *first)
        .await
        .unwrap();
    let first_lanes = claim::lock_lanes(&mut first, 3, &[], &[]).await.unwrap();
    assert_eq!(first_lanes.len(), 3);
    assert_eq!(
        held_by(first_pid).await,
        3,
        "no lock beyond the lanes returned"
    );

    let mut second = env.pool.begin().await.unwrap();
    let second_lanes = claim::lock_lanes(&mut second, 64, &[], &[]).await.unwrap();
    assert_eq!(second_lanes.len() as i64, busy_lanes - 3);
    assert!(second_lanes.iter().all(|lane| !first_lanes.contains(lane)));
    let count = "select count(*) from outbox";
    let before: i64 = sqlx::query_scalar(count)
        .fetch_one(&mut *second)
        .await
        .unwrap();
    let rows = claim::take_rows(&mut second, &second_lanes, &[], 10_000)
        .await
        .unwrap();
    let taken: i64 = sqlx::query_scalar(count)
        .fetch_one(&mut *second)
        .await
        .unwrap();
    assert_eq!(taken, before - rows.len() as i64, "taken rows are deleted");
    claim::give_back(&mut second).await.unwrap();
    let given_back: i64 = sqlx::query_scalar(count)
        .fetch_one(&mut *second)
        .await
        .unwrap();
    assert_eq!(
        given_back, before,
        "given back, every taken row is there again"
    );
    assert!(
        rows.windows(2).all(|w| w[0].id < w[1].id),
        "claimed in id order"
    );
    assert!(!rows.is_empty());
    for row in &rows {
        let lane = lane_of(&env, &row.partition_key).await;
        assert!(
            !first_lanes.contains(&lane),
            "row {} of a lane held elsewhere",
            row.id
        );
    }
}

/// The lane of `key`, as the `outbox.lane` column computes it.
async fn lane_of(env: &TestEnv, key: &str) -> i32 {
    sqlx::query_scalar("select (hashtext($1) & ($2 - 1))::int")
        .bind(key)
        .bind(outbox_core::db::OUTBOX_LANES)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

/// A relay (with `flags`) that published a warm-up row and has since idled until it waits at
/// least `idle_wait_secs` between polls.
async fn idle_relay(env: &TestEnv, flags: &[&str], idle_wait_secs: f64) -> RunningRelay {
    let relay = env.spawn_relay(flags).await;
    env.insert(&[("warm-up".into(), 0)]).await;
    env.wait_until_drained(Duration::from_secs(20)).await;
    relay.wait_until_idle_wait_reaches(idle_wait_secs).await;
    relay
}

/// Inserts one row, runs `then`, and asserts the row is published within a second.
async fn assert_one_row_is_picked_up_within_a_second(env: &TestEnv, then: impl Future) {
    let started = Instant::now();
    env.insert(&[("single".into(), 1)]).await;
    then.await;
    env.wait_until_drained(Duration::from_secs(10)).await;
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(1),
        "picked up after {elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_relay_publishes_a_new_row_within_a_second_without_a_notification() {
    let env = TestEnv::new(1).await;
    let relay = idle_relay(&env, &[], 0.5).await;
    assert_one_row_is_picked_up_within_a_second(&env, async {}).await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_wakes_a_relay_deep_in_a_long_idle_wait() {
    let env = TestEnv::new(1).await;
    // Once the idle wait is past 2 s, only the notification can explain a pick-up within a
    // second.
    let relay = idle_relay(&env, &["--idle-poll-max-ms", "60000"], 2.0).await;
    let notify = async {
        sqlx::query("select pg_notify($1, '')")
            .bind(outbox_core::db::OUTBOX_WAKEUP_CHANNEL)
            .execute(&env.pool)
            .await
            .unwrap();
    };
    assert_one_row_is_picked_up_within_a_second(&env, notify).await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics_are_served() {
    let env = TestEnv::new(1).await;
    env.insert(&[("k".into(), 1)]).await;
    let relay: RunningRelay = env.spawn_relay(&[]).await;
    env.wait_until_drained(Duration::from_secs(20)).await;

    assert_eq!(relay.get("/healthz").await.status(), 200);
    assert_eq!(relay.get("/readyz").await.status(), 200);
    let body = relay.get("/metrics").await.text().await.unwrap();
    for name in [
        "outbox_relay_pending_rows",
        "outbox_relay_dead_rows",
        "outbox_relay_oldest_pending_age_seconds",
        "outbox_relay_published_total",
        "outbox_relay_retries_total",
        "outbox_relay_batch_size_count",
        "outbox_relay_commit_to_ack_seconds_count",
    ] {
        assert!(body.contains(name), "/metrics lacks {name}");
    }
    assert_eq!(
        crate::helpers::parse_metric(&body, "outbox_relay_published_total"),
        1.0
    );
    assert_eq!(
        crate::helpers::parse_metric(&body, "outbox_relay_commit_to_ack_seconds_count"),
        1.0
    );
    // The one step that claimed the row timed each of its phases once; empty steps time none.
    for phase in outbox_relay::metrics::STEP_PHASES {
        let series = format!("outbox_relay_step_phase_seconds_count{{phase=\"{phase}\"}} 1");
        assert!(
            body.lines().any(|line| line == series),
            "/metrics lacks {series}"
        );
    }
    relay.stop().await;
}

/// STEPS_IN_FLIGHT is for a backlog: while steps take full batches, helper steps run beside the
/// leading one (several transactions hold lane locks at once); rows that trickle in are taken
/// by the leading step alone, one transaction at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helper_steps_run_beside_the_leading_one_only_during_a_backlog() {
    let env = TestEnv::new(6).await;
    let relay = env
        .spawn_relay(&[
            "--batch-size",
            "50",
            "--max-lanes-per-batch",
            "4",
            "--steps-in-flight",
            "4",
        ])
        .await;
    // The most relay transactions seen holding lane locks at the same moment.
    let watch = |pool: sqlx::PgPool, stop: tokio_util::sync::CancellationToken| {
        tokio::spawn(async move {
            let mut most = 0i64;
            while !stop.is_cancelled() {
                let holders: i64 = sqlx::query_scalar(
                    "select count(distinct pid) from pg_locks
                      where locktype = 'advisory' and objsubid = 2 and classid = $1::int::oid
                        and database = (select oid from pg_database
                                         where datname = current_database())",
                )
                .bind(LANE_LOCK_NAMESPACE)
                .fetch_one(&pool)
                .await
                .unwrap();
                most = most.max(holders);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            most
        })
    };

    // A trickle: one row every 10 ms for 1 s (a batch of 50 would take a 500 ms stall).
    let stop = tokio_util::sync::CancellationToken::new();
    let trickle_watch = watch(env.pool.clone(), stop.clone());
    for seq in 0..100 {
        env.insert(&[(format!("t{:02}", seq % 50), seq)]).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    env.wait_until_drained(Duration::from_secs(30)).await;
    stop.cancel();
    let at_a_trickle = trickle_watch.await.unwrap();
    assert_eq!(at_a_trickle, 1, "one step at a time at a trickle");

    // A backlog: 5,000 rows at once, taken in batches of 50.
    let stop = tokio_util::sync::CancellationToken::new();
    let backlog_watch = watch(env.pool.clone(), stop.clone());
    env.insert(&round_robin(5_000, 500)).await;
    env.wait_until_drained(Duration::from_secs(60)).await;
    stop.cancel();
    let in_a_backlog = backlog_watch.await.unwrap();
    assert!(
        in_a_backlog >= 2,
        "helper steps join during a backlog: at most {in_a_backlog} at once"
    );
    assert_eq!(env.read_topic().await.len(), 5_100);
    relay.stop().await;
}

#[tokio::test]
async fn a_step_reads_the_outbox_by_index_and_ctid_never_by_a_seq_scan() {
    let env = TestEnv::new(1).await;
    // Enough rows that the planner, left alone, hash-joins the taken rows' ctids against a seq
    // scan of the table; a heap that is never vacuumed makes that scan longer at every step.
    env.insert(&round_robin(600, 40)).await;
    for round in 0..8 {
        let mut tx = claim::begin_step(&env.pool, Duration::from_secs(60))
            .await
            .unwrap();
        // The counter also holds this session's earlier scans not yet reported, so the step's
        // are the difference.
        let before = testkit::unreported_seq_scans(&mut tx, "outbox")
            .await
            .unwrap();
        let lanes = claim::lock_lanes(&mut tx, 4, &[], &[]).await.unwrap();
        let rows = claim::take_rows(&mut tx, &lanes, &[], 20).await.unwrap();
        assert!(!rows.is_empty(), "round {round}: rows taken");
        claim::give_back(&mut tx).await.unwrap();
        let ids: Vec<i64> = rows.iter().map(|row| row.id).collect();
        claim::delete_published(&mut tx, &ids).await.unwrap();
        assert_eq!(
            testkit::unreported_seq_scans(&mut tx, "outbox")
                .await
                .unwrap()
                - before,
            0,
            "round {round}: a statement of the step read the outbox by a seq scan"
        );
        tx.commit().await.unwrap();
    }
}

#[tokio::test]
async fn backlogged_lanes_are_locked_first_and_without_a_probe() {
    let env = TestEnv::new(1).await;
    env.insert(&round_robin(200, 20)).await;
    let with_rows: Vec<i32> =
        sqlx::query_scalar("select distinct lane::int from outbox order by 1")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    let empty = (0..64).find(|lane| !with_rows.contains(lane)).unwrap();

    // Told backlogged, an empty lane is locked (no probe), and before any other lane.
    let mut tx = env.pool.begin().await.unwrap();
    let lanes = claim::lock_lanes(&mut tx, 2, &[], &[empty]).await.unwrap();
    assert_eq!(lanes.len(), 2);
    assert_eq!(lanes[0], empty, "{lanes:?}");
    assert!(with_rows.contains(&lanes[1]), "{lanes:?}");
    // Its take finds nothing there, so it is no longer counted as backlogged.
    let rows = claim::take_rows(&mut tx, &lanes, &[], 2).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(i32::from(rows[0].lane), lanes[1]);
    assert_eq!(claim::full_lanes(&lanes, &rows, 2), vec![lanes[1]]);
    tx.rollback().await.unwrap();

    // Not told, the empty lane is probed and left alone.
    let mut tx = env.pool.begin().await.unwrap();
    let lanes = claim::lock_lanes(&mut tx, 64, &[], &[]).await.unwrap();
    assert_eq!(lanes.len(), with_rows.len());
    assert!(!lanes.contains(&empty));
    tx.rollback().await.unwrap();
}

#[tokio::test]
async fn a_step_plans_its_statements_for_their_lanes_and_commits_synchronously() {
    let env = TestEnv::new(1).await;
    env.insert(&round_robin(600, 40)).await;
    let mut tx = claim::begin_step(&env.pool, Duration::from_secs(60))
        .await
        .unwrap();
    let (plans, commits): (String, String) = sqlx::query_as(
        "select current_setting('plan_cache_mode'), current_setting('synchronous_commit')",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    // A generic plan knows neither the lanes nor the per-lane limit (32 µs of server CPU per
    // row instead of 18 in a long drain); an asynchronous commit leaves the deleted rows
    // unmarked, so later steps visit them again.
    assert_eq!(plans, "force_custom_plan");
    assert_eq!(commits, "on");
    // The other settings of the step's transaction (see `claim::begin_step`), set with its
    // BEGIN in one round trip.
    let (idle, bitmap_scans, seq_scans): (String, String, String) = sqlx::query_as(
        "select current_setting('idle_in_transaction_session_timeout'),
                current_setting('enable_bitmapscan'), current_setting('enable_seqscan')",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert_eq!(
        (idle.as_str(), bitmap_scans.as_str(), seq_scans.as_str()),
        ("1min", "off", "off")
    );
    let plans_of_the_take = "select coalesce(sum(generic_plans), 0)::bigint,
                                    coalesce(sum(custom_plans), 0)::bigint
                               from pg_prepared_statements
                              where statement like '%picked as materialized%'
                                and statement not like '%pg_prepared_statements%'";
    let mut runs = Vec::new();
    // Past the five runs after which PostgreSQL may switch a statement to a generic plan.
    for _ in 0..8 {
        let lanes = claim::lock_lanes(&mut tx, 4, &[], &[]).await.unwrap();
        claim::take_rows(&mut tx, &lanes, &[], 10).await.unwrap();
        let plans: (i64, i64) = sqlx::query_as(plans_of_the_take)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        runs.push(plans);
    }
    // Every run planned for its own parameters.
    let expected: Vec<(i64, i64)> = (1..=8).map(|n| (0, n)).collect();
    assert_eq!(runs, expected);
    tx.rollback().await.unwrap();
}

#[tokio::test]
async fn the_relays_sessions_never_jit_compile_its_claim() {
    let env = TestEnv::new(1).await;
    env.insert(&round_robin(600, 40)).await;
    // The services' pool, as the relay makes it.
    let pool = outbox_core::db::connect(
        &env.database_url,
        &outbox_core::settings::PoolSettings::default(),
        "outbox-relay",
        &outbox_core::db::ORDERS_MIGRATOR,
    )
    .await
    .unwrap();
    let mut tx = claim::begin_step(&pool, Duration::from_secs(60))
        .await
        .unwrap();
    let jit: String = sqlx::query_scalar("show jit")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(jit, "off");
    // Even a statement whose cost passes any threshold is not compiled.
    sqlx::query("set local jit_above_cost = 0")
        .execute(&mut *tx)
        .await
        .unwrap();
    let lanes = claim::lock_lanes(&mut tx, 4, &[], &[]).await.unwrap();
    let plan: serde_json::Value = sqlx::query_scalar(
        "explain (analyze, format json) select count(*) from outbox where lane = any($1)",
    )
    .bind(&lanes)
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert!(
        plan[0].get("JIT").is_none(),
        "the statement was JIT-compiled: {plan}"
    );
    tx.rollback().await.unwrap();
}

#[tokio::test]
async fn status_estimates_a_large_backlog_instead_of_counting_it() {
    use outbox_relay::outbox::status::{status, EXACT_PENDING_UP_TO};
    let env = TestEnv::new(1).await;
    env.insert(&round_robin(30, 3)).await;
    let small = status(&env.pool).await.unwrap();
    assert_eq!((small.pending, small.pending_estimated), (30, false));

    let backlog = EXACT_PENDING_UP_TO + 2_000;
    sqlx::query(
        "insert into outbox (event_id, topic, partition_key, event_type, source, subject, payload)
         select gen_random_uuid(), $1, 'key-' || (i % 50), 'order.placed.v1', '/order-api',
                'order/' || i, '{}'::jsonb
           from generate_series(1, $2::bigint - 30) as i",
    )
    .bind(&env.topic)
    .bind(backlog)
    .execute(&env.pool)
    .await
    .unwrap();
    // The table statistics reach the server within a second or so of the insert.
    let _ = eventually(Duration::from_secs(15), || async {
        let large = status(&env.pool).await.ok()?;
        (large.pending == backlog).then_some(())
    })
    .await;
    let large = status(&env.pool).await.unwrap();
    assert_eq!((large.pending, large.pending_estimated), (backlog, true));
}

#[tokio::test]
async fn status_counts_through_the_indexes_never_by_a_seq_scan() {
    let env = TestEnv::new(1).await;
    env.insert(&round_robin(600, 40)).await;
    sqlx::query(
        "update outbox set state = 'dead', attempts = 10 where id = (select min(id) from outbox)",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    for round in 0..8 {
        let mut tx = env
            .pool
            .begin_with(outbox_core::db::BEGIN_WITHOUT_SEQ_SCANS)
            .await
            .unwrap();
        let before = testkit::unreported_seq_scans(&mut tx, "outbox")
            .await
            .unwrap();
        let status = outbox_relay::outbox::status::status_in(&mut tx)
            .await
            .unwrap();
        assert_eq!((status.dead, status.parked), (1, 14), "round {round}");
        assert_eq!(
            testkit::unreported_seq_scans(&mut tx, "outbox")
                .await
                .unwrap()
                - before,
            0,
            "round {round}: status read the outbox by a seq scan"
        );
        tx.commit().await.unwrap();
    }
}
