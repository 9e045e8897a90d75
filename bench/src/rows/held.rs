//! Issue 9: claims stay cheap behind a dead key. The relay drains M claimable rows of other keys
//! while H rows of one key are held behind that key's dead row (inserted pending, as order-api
//! writes them, after the dead row; what the relay makes of them is its business), against the
//! same drain with nothing held. Both timed from the commit that makes the rows visible to the
//! moment the last claimable row is gone; ratio held / not held.

use std::time::Instant;

use serde_json::json;

use super::{drain::RelayUnderTest, say};
use crate::{
    cpu::CpuMeter,
    cpu::CpuUse,
    fill::{self, Keys, State},
    report::{Row, Verdict},
    stats::int,
    Bench,
};

const TARGET_RATIO: f64 = 0.8;
/// The held key: not among the claimable rows' keys (CATALOG-0001...).
const HELD_KEY: &str = "CATALOG-0000";

struct Drain {
    seconds: f64,
    rate: f64,
    held_left: Vec<(String, i64)>,
    cpu: CpuUse,
}

async fn drain(bench: &Bench, tag: &str, held: u64) -> anyhow::Result<Drain> {
    let sizes = &bench.sizes;
    let claimable = sizes.claimable_rows;
    let mut relay = RelayUnderTest::start(bench, tag).await?;
    let mut conn = relay.db.pool.acquire().await?;
    say(
        "held",
        format!(
            "{tag}: committing {} claimable rows{}",
            int(claimable as f64),
            if held > 0 {
                format!(" after a dead row and {} rows of its key", int(held as f64))
            } else {
                String::new()
            }
        ),
    );
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    if held > 0 {
        let held_key = Keys::One(HELD_KEY.into());
        fill::outbox_rows(&mut tx, &relay.topic, 1, &held_key, State::Dead).await?;
        fill::outbox_rows(&mut tx, &relay.topic, held, &held_key, State::Pending).await?;
    }
    let rows = fill::outbox_rows(
        &mut tx,
        &relay.topic,
        claimable,
        &Keys::Spread(sizes.keys),
        State::Pending,
    )
    .await?;
    tx.commit().await?;
    let committed = Instant::now();
    let meter = CpuMeter::start();
    fill::wake_relay(&mut conn).await?;
    let drained = relay
        .wait_drained(&mut conn, rows.first_id, rows.last_id)
        .await?;
    let cpu = meter.stop();
    let seconds = (drained - committed).as_secs_f64();
    let held_left: Vec<(String, i64)> = sqlx::query_as(
        "select state, count(*) from outbox where partition_key = $1 group by state order by 1",
    )
    .bind(HELD_KEY)
    .fetch_all(&mut *conn)
    .await?;
    drop(conn);
    relay.finish(bench).await;
    Ok(Drain {
        seconds,
        rate: claimable as f64 / seconds,
        held_left,
        cpu,
    })
}

pub async fn run(bench: &Bench) -> anyhow::Result<Vec<Row>> {
    let sizes = &bench.sizes;
    let free = drain(bench, "unheld", 0).await?;
    let held = drain(bench, "held", sizes.held_rows).await?;
    let ratio = held.rate / free.rate;
    let kept: i64 = held.held_left.iter().map(|(_, n)| n).sum();
    let mut notes = vec![format!(
        "claimable rows drained in {:.2} s with nothing held, {:.2} s with the held key; \
         held key's rows afterwards: {}",
        free.seconds,
        held.seconds,
        held.held_left
            .iter()
            .map(|(state, n)| format!("{state} {}", int(*n as f64)))
            .collect::<Vec<_>>()
            .join(", ")
    )];
    notes.push(format!("nothing held: {}", free.cpu.short()));
    notes.push(format!("held: {}", held.cpu.short()));
    let all_kept = kept == sizes.held_rows as i64 + 1;
    if !all_kept {
        notes.push(format!(
            "ORDER CHECK FAILED: {} of the held key's {} rows are gone (published past its dead row?)",
            sizes.held_rows as i64 + 1 - kept,
            sizes.held_rows + 1
        ));
    }
    Ok(vec![Row {
        name: "held".into(),
        what: format!(
            "relay drain of {} claimable rows, {} held behind a dead row",
            int(sizes.claimable_rows as f64),
            int(sizes.held_rows as f64)
        ),
        figure: format!("{} events/s", int(held.rate)),
        ceiling: format!("same drain, nothing held: {} events/s", int(free.rate)),
        ratio: Some(ratio),
        target: format!("≥ {TARGET_RATIO:.2}"),
        verdict: Verdict::judge(bench.judged(), ratio >= TARGET_RATIO && all_kept),
        error: None,
        notes,
        metrics: json!({
            "claimable_rows": sizes.claimable_rows,
            "held_rows": sizes.held_rows,
            "held_key": HELD_KEY,
            "events_per_s_held": held.rate,
            "events_per_s_unheld": free.rate,
            "seconds_held": held.seconds,
            "seconds_unheld": free.seconds,
            "held_key_rows_after": held.held_left.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
            "cpu": { "unheld": free.cpu, "held": held.cpu },
            "ratio": ratio,
            "target_ratio": TARGET_RATIO,
        }),
    }])
}
