//! Side by side with a peer: the `pg-transactional-outbox` 0.5.7 harness (Node.js, its polling
//! listener publishing with kafkajs) against the same PostgreSQL and broker, beside our relay
//! draining the same number of rows over the same number of keys, and both commit → topic p99s.
//!
//! The harness is read-only where it is shipped; it is copied under `.local/peer/` and
//! `npm ci`-ed there once.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context;
use serde_json::{json, Value};

use super::{drain::RelayUnderTest, pickup, say, Shared};
use crate::{
    fill::{self, Keys, State},
    report::{Row, Verdict},
    stats::{int, ms},
    Bench,
};

const TARGET_DRAIN_TIMES: f64 = 100.0;
/// Keys of the drained rows: the harness's default number of aggregates.
const PEER_KEYS: u64 = 100;

async fn prepare_harness(source: &Path) -> anyhow::Result<PathBuf> {
    const FILES: [&str; 5] = [
        "bench.js",
        "listener.js",
        "package.json",
        "package-lock.json",
        "README.md",
    ];
    let dir = PathBuf::from(".local/peer/pg-transactional-outbox");
    anyhow::ensure!(
        source.join("bench.js").exists(),
        "no peer harness at {} (set --peer-source or PEER_HARNESS_DIR)",
        source.display()
    );
    tokio::fs::create_dir_all(&dir).await?;
    let read = |path: PathBuf| std::fs::read(path).ok();
    let lock_changed =
        read(dir.join("package-lock.json")) != read(source.join("package-lock.json"));
    for name in FILES {
        if read(dir.join(name)) != read(source.join(name)) {
            say("peer", format!("copying {name} into {}", dir.display()));
            tokio::fs::copy(source.join(name), dir.join(name))
                .await
                .with_context(|| format!("cannot copy {name} of the peer harness"))?;
        }
    }
    if lock_changed || !dir.join("node_modules").exists() {
        say("peer", "npm ci");
        let status = tokio::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .status()
            .await
            .context("cannot run npm (Node 20 is needed for the peer)")?;
        anyhow::ensure!(status.success(), "npm ci failed in {}", dir.display());
    }
    Ok(dir)
}

/// user, password, host, port of a postgres:// URL.
fn pg_parts(url: &str) -> (String, String, String, String) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let (userinfo, hostport) = authority
        .rsplit_once('@')
        .unwrap_or(("postgres", authority));
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let (host, port) = hostport.rsplit_once(':').unwrap_or((hostport, "5432"));
    (user.into(), password.into(), host.into(), port.into())
}

struct PeerResult {
    lines: Vec<Value>,
}

impl PeerResult {
    fn find(&self, measurement: &str) -> Option<&Value> {
        self.lines.iter().find(|l| l["measurement"] == measurement)
    }
}

async fn run_harness(bench: &Bench, dir: &Path) -> anyhow::Result<PeerResult> {
    let sizes = &bench.sizes;
    let (user, password, host, port) = pg_parts(bench.infra.admin_url());
    let database = format!(
        "{}{}_peer",
        crate::infra::DATABASE_PREFIX,
        bench.infra.run_id
    );
    let topic = bench.infra.name("peer");
    let broker = match crate::infra::Infra::broker_process_name() {
        Some(name) => name,
        None => "nisshi".into(),
    };
    let log = bench.log_dir.join("peer.log");
    let args = vec![
        "bench.js".to_string(),
        format!("--n={}", sizes.peer_n),
        format!("--drain={}", sizes.peer_drain),
        format!("--latency={}", sizes.peer_latency),
        format!("--latency-count={}", sizes.pickup_count),
        format!("--latency-gap-ms={}", sizes.pickup_gap_ms),
        format!("--aggregates={PEER_KEYS}"),
        format!("--db={database}"),
        format!("--topic={topic}"),
        format!("--brokers={}", bench.infra.brokers),
        format!("--broker-comm={broker}"),
        format!("--pg-host={host}"),
        format!("--pg-port={port}"),
        format!("--pg-user={user}"),
        format!("--pg-password={password}"),
        "--max-drain-s=900".into(),
    ];
    say("peer", format!("node {}", args.join(" ")));
    let output = tokio::time::timeout(
        Duration::from_secs(1_800),
        tokio::process::Command::new("node")
            .args(&args)
            .current_dir(dir)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("the peer harness did not finish within 30 minutes")?
    .context("cannot run node")?;
    tokio::fs::write(
        &log,
        [output.stdout.as_slice(), output.stderr.as_slice()].concat(),
    )
    .await?;
    bench.infra.drop_database_named(&database).await;
    bench.infra.delete_topics(&[&topic]).await;
    anyhow::ensure!(
        output.status.success(),
        "the peer harness failed ({}); see {}",
        output.status,
        log.display()
    );
    let lines = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("measurement").is_some())
        .collect();
    Ok(PeerResult { lines })
}

pub async fn run(bench: &Bench, shared: &mut Shared) -> anyhow::Result<Vec<Row>> {
    let sizes = &bench.sizes;
    let n = sizes.peer_n;
    let dir = prepare_harness(&bench.args.peer_source).await?;

    say(
        "peer",
        format!(
            "ours: relay drain of {} rows over {PEER_KEYS} keys",
            int(n as f64)
        ),
    );
    let mut relay = RelayUnderTest::start(bench, "peer_ours").await?;
    let mut conn = relay.db.pool.acquire().await?;
    let rows = fill::outbox_rows(
        &mut conn,
        &relay.topic,
        n,
        &Keys::Spread(PEER_KEYS),
        State::Pending,
    )
    .await?;
    let committed = Instant::now();
    fill::wake_relay(&mut conn).await?;
    let drained = relay
        .wait_drained(&mut conn, rows.first_id, rows.last_id)
        .await?;
    let ours_rate = n as f64 / (drained - committed).as_secs_f64();
    drop(conn);
    relay.finish(bench).await;
    let ours_pickup = match shared.pickup {
        Some(pickup) => pickup,
        None => {
            say("peer", "ours: commit → topic latency");
            let pickup = pickup::measure(
                bench,
                sizes.pickup_count,
                Duration::from_millis(sizes.pickup_gap_ms),
            )
            .await?;
            shared.pickup = Some(pickup);
            pickup
        }
    };

    say("peer", "the peer harness");
    let peer = run_harness(bench, &dir).await?;
    let drain = peer
        .find("drain")
        .context("the peer harness printed no drain measurement")?;
    let peer_rate = drain["events_per_s"].as_f64().context("no events_per_s")?;
    let completed = drain["completed"].as_bool().unwrap_or(false);
    let latency = peer
        .find("latency")
        .context("the peer harness printed no latency measurement")?;
    let peer_p99 = latency["p99_ms"].as_f64().context("no p99_ms")?;
    let peer_p50 = latency["p50_ms"].as_f64().unwrap_or(f64::NAN);
    let floor = peer.find("latency_floor").cloned().unwrap_or(Value::Null);

    let times = ours_rate / peer_rate;
    let mut drain_notes = vec![format!(
        "peer preset {} ({}), kafkajs acks=-1, not idempotent; ours: idempotent, acks=all, \
         per-key order; both {} rows over {PEER_KEYS} keys on a fresh topic",
        sizes.peer_drain,
        if sizes.peer_drain.starts_with("par") {
            "no per-key order"
        } else {
            "per-key order"
        },
        int(n as f64)
    )];
    if !completed {
        drain_notes.push("the peer's drain hit its time cap: its rate so far".into());
    }
    if let Some((rows, rate)) = shared.relay_drain {
        drain_notes.push(format!(
            "ours at {} rows (relay row): {} events/s = {:.0}× the peer",
            int(rows as f64),
            int(rate),
            rate / peer_rate
        ));
    }
    Ok(vec![
        Row {
            name: "peer".into(),
            what: format!(
                "drain, {} rows: ours vs pg-transactional-outbox 0.5.7 ({})",
                int(n as f64),
                sizes.peer_drain
            ),
            figure: format!("ours {} events/s", int(ours_rate)),
            ceiling: format!("peer {} events/s", int(peer_rate)),
            ratio: Some(times),
            target: format!("≥ {TARGET_DRAIN_TIMES:.0}×"),
            verdict: Verdict::judge(bench.judged(), times >= TARGET_DRAIN_TIMES),
            error: None,
            notes: drain_notes,
            metrics: json!({
                "rows": n,
                "keys": PEER_KEYS,
                "ours_events_per_s": ours_rate,
                "peer_events_per_s": peer_rate,
                "times": times,
                "peer_drain": drain,
            }),
        },
        Row {
            name: "peer".into(),
            what: format!(
                "commit → topic, one row every {} ms: ours vs peer ({})",
                sizes.pickup_gap_ms, sizes.peer_latency
            ),
            figure: format!(
                "ours p50 {} / p99 {} ms",
                ms(ours_pickup.p50_ms),
                ms(ours_pickup.p99_ms)
            ),
            ceiling: format!("peer p50 {} / p99 {} ms", ms(peer_p50), ms(peer_p99)),
            ratio: None,
            target: "ours p99 < peer p99".into(),
            verdict: Verdict::judge(bench.judged(), ours_pickup.p99_ms < peer_p99),
            error: None,
            notes: vec![
                "ours from the row's created_at (before the insert), the peer's from its COMMIT \
                 returning; both to a consumer fetching with a 10 ms wait"
                    .into(),
            ],
            metrics: json!({
                "ours": ours_pickup,
                "peer_latency": latency,
                "peer_floor": floor,
            }),
        },
    ])
}
