//! Diagnostics for a convergence failure: the consumer group's committed offsets and members
//! over time (a monitor thread writing `group-monitor.log` in the test directory), and, at the
//! failure, the committed offsets, watermarks and where on the topic the unapplied events are.

use std::{
    collections::{HashMap, HashSet},
    fmt::Write as _,
    io::Write as _,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::Context;
use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    ClientConfig, Offset, TopicPartitionList,
};
use sqlx::PgPool;
use tokio::time::Instant;
use uuid::Uuid;

use crate::{load::Accepted, topic::Published};

fn group_client(brokers: &str, group: &str) -> anyhow::Result<BaseConsumer> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("log_level", "3")
        .create()
        .context("group diagnostics client")
}

/// Committed offset of each partition (`None`: nothing committed, or not answered).
fn committed(
    client: &BaseConsumer,
    topic: &str,
    partitions: i32,
    timeout: Duration,
) -> anyhow::Result<Vec<Option<i64>>> {
    let mut tpl = TopicPartitionList::new();
    for partition in 0..partitions {
        tpl.add_partition(topic, partition);
    }
    let answer = client.committed_offsets(tpl, timeout)?;
    Ok((0..partitions)
        .map(|p| {
            answer
                .find_partition(topic, p)
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                })
        })
        .collect())
}

/// Parses a ConsumerProtocol assignment: version, [topic, [partition]], user data.
fn parse_assignment(bytes: &[u8]) -> Option<Vec<(String, Vec<i32>)>> {
    let mut at = 0usize;
    let mut take = |n: usize| -> Option<&[u8]> {
        let slice = bytes.get(at..at + n)?;
        at += n;
        Some(slice)
    };
    let _version = i16::from_be_bytes(take(2)?.try_into().ok()?);
    let topics = i32::from_be_bytes(take(4)?.try_into().ok()?);
    let mut out = Vec::new();
    for _ in 0..topics.max(0) {
        let len = i16::from_be_bytes(take(2)?.try_into().ok()?);
        let name = String::from_utf8_lossy(take(usize::try_from(len).ok()?)?).into_owned();
        let count = i32::from_be_bytes(take(4)?.try_into().ok()?);
        let mut partitions = Vec::new();
        for _ in 0..count.max(0) {
            partitions.push(i32::from_be_bytes(take(4)?.try_into().ok()?));
        }
        out.push((name, partitions));
    }
    Some(out)
}

/// The group's state and members with their assignments, as one line.
fn describe_group(client: &BaseConsumer, group: &str, timeout: Duration) -> String {
    match client.fetch_group_list(Some(group), timeout) {
        Err(error) => format!("group: error {error}"),
        Ok(list) => {
            let mut line = String::new();
            for info in list.groups() {
                let _ = write!(line, "group state {} members [", info.state());
                for member in info.members() {
                    let assignment = member
                        .assignment()
                        .and_then(parse_assignment)
                        .map(|a| {
                            a.iter()
                                .map(|(_, ps)| format!("{ps:?}"))
                                .collect::<Vec<_>>()
                                .join("")
                        })
                        .unwrap_or_else(|| "?".into());
                    let id = member.id();
                    let short = &id[id.len().saturating_sub(12)..];
                    let _ = write!(line, " {}(..{short})={assignment}", member.client_id());
                }
                line.push_str(" ]");
            }
            line
        }
    }
}

/// Writes the group's committed offsets and members to `dir/group-monitor.log` whenever they
/// change (polled every 200 ms) until dropped.
pub struct GroupMonitor {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GroupMonitor {
    pub fn start(
        brokers: &str,
        group: &str,
        topic: &str,
        partitions: i32,
        dir: &Path,
        started: Instant,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (brokers, group, topic) = (brokers.to_owned(), group.to_owned(), topic.to_owned());
        let path: PathBuf = dir.join("group-monitor.log");
        let started = started.into_std();
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                let Ok(client) = group_client(&brokers, &group) else {
                    return;
                };
                let Ok(mut file) = std::fs::File::create(&path) else {
                    return;
                };
                let (mut last_offsets, mut last_group) = (String::new(), String::new());
                while !stop.load(Ordering::Relaxed) {
                    let at = started.elapsed().as_secs_f64();
                    let offsets =
                        match committed(&client, &topic, partitions, Duration::from_secs(1)) {
                            Ok(o) => format!("committed {o:?}"),
                            Err(e) => format!("committed: error {e}"),
                        };
                    if offsets != last_offsets {
                        let _ = writeln!(file, "+{at:7.3}s {offsets}");
                        last_offsets = offsets;
                    }
                    let group_line = describe_group(&client, &group, Duration::from_secs(1));
                    if group_line != last_group {
                        let _ = writeln!(file, "+{at:7.3}s {group_line}");
                        last_group = group_line;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for GroupMonitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Committed offsets and watermarks per partition, as a description.
pub async fn offsets_report(brokers: &str, group: &str, topic: &str, partitions: i32) -> String {
    let (brokers, group, topic) = (brokers.to_owned(), group.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
        let client = group_client(&brokers, &group)?;
        let committed = committed(&client, &topic, partitions, Duration::from_secs(10))?;
        let mut out = String::new();
        for partition in 0..partitions {
            let (low, high) =
                client.fetch_watermarks(&topic, partition, Duration::from_secs(10))?;
            let _ = write!(
                out,
                "p{partition}: committed {:?} low {low} high {high}; ",
                committed[partition as usize]
            );
        }
        let _ = write!(
            out,
            "{}",
            describe_group(&client, &group, Duration::from_secs(10))
        );
        Ok(out)
    })
    .await
    .map_err(anyhow::Error::from)
    .and_then(|r| r)
    .unwrap_or_else(|e| format!("cannot read the group's offsets: {e:#}"))
}

/// Writes `topic.tsv`, `processed.tsv` and `accepted.tsv` to `dir`, and describes, per
/// partition, the ranges of offsets whose events were never applied, with the neighbours'
/// processing times.
pub async fn unapplied_report(
    dir: &Path,
    published: &[Published],
    catalog: &PgPool,
    accepted: &[Accepted],
    started: Instant,
) -> String {
    let processed: Vec<(Uuid, Uuid, String, i32, i64, String)> = sqlx::query_as(
        "select event_id, order_id, product_id, kafka_partition, kafka_offset,
                to_char(processed_at, 'HH24:MI:SS.US')
           from processed_events order by kafka_partition, kafka_offset",
    )
    .fetch_all(catalog)
    .await
    .unwrap_or_default();
    let mut text = String::from("event_id\torder_id\tproduct\tpartition\toffset\tprocessed_at\n");
    for (e, o, p, part, off, at) in &processed {
        let _ = writeln!(text, "{e}\t{o}\t{p}\t{part}\t{off}\t{at}");
    }
    let _ = std::fs::write(dir.join("processed.tsv"), text);
    let applied: HashMap<Uuid, (i32, i64, String)> = processed
        .iter()
        .map(|(e, _, _, part, off, at)| (*e, (*part, *off, at.clone())))
        .collect();

    let mut text = String::from("partition\toffset\tevent_id\torder_id\tproduct\tapplied_as\n");
    for m in published {
        let applied_as = applied
            .get(&m.event_id)
            .map(|(p, o, at)| format!("{p}/{o}@{at}"))
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            text,
            "{}\t{}\t{}\t{}\t{}\t{applied_as}",
            m.partition, m.offset, m.event_id, m.order_id, m.product_id
        );
    }
    let _ = std::fs::write(dir.join("topic.tsv"), text);

    let mut text = String::from("order_id\tproduct\tfirst_sent_s\taccepted_s\n");
    for a in accepted {
        let _ = writeln!(
            text,
            "{}\t{}\t{:.3}\t{:.3}",
            a.order_id,
            a.product_id,
            a.first_sent
                .saturating_duration_since(started)
                .as_secs_f64(),
            a.accepted_at
                .saturating_duration_since(started)
                .as_secs_f64()
        );
    }
    let _ = std::fs::write(dir.join("accepted.tsv"), text);

    // Messages whose event id was never applied (a duplicate copy of an applied event is fine).
    let mut out = String::new();
    let mut by_partition: HashMap<i32, Vec<&Published>> = HashMap::new();
    for m in published {
        by_partition.entry(m.partition).or_default().push(m);
    }
    let mut partitions: Vec<_> = by_partition.keys().copied().collect();
    partitions.sort_unstable();
    for partition in partitions {
        let messages = &by_partition[&partition];
        let unapplied: Vec<usize> = messages
            .iter()
            .enumerate()
            .filter(|(_, m)| !applied.contains_key(&m.event_id))
            .map(|(i, _)| i)
            .collect();
        if unapplied.is_empty() {
            continue;
        }
        let offsets: HashSet<i64> = unapplied.iter().map(|i| messages[*i].offset).collect();
        let _ = writeln!(
            out,
            "partition {partition}: {} messages unapplied at offsets {:?}",
            offsets.len(),
            {
                let mut v: Vec<_> = offsets.iter().copied().collect();
                v.sort_unstable();
                v
            }
        );
        // The neighbourhood of the first unapplied message.
        let first = unapplied[0];
        for m in
            &messages[first.saturating_sub(6)..(first + unapplied.len() + 6).min(messages.len())]
        {
            let applied_as = applied
                .get(&m.event_id)
                .map(|(p, o, at)| format!("applied as {p}/{o} at {at}"))
                .unwrap_or_else(|| "NOT APPLIED".into());
            let _ = writeln!(
                out,
                "  {partition}/{} {} {applied_as}",
                m.offset, m.product_id
            );
        }
    }
    out
}
