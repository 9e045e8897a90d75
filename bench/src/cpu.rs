//! Who used the CPU during a measurement: CPU seconds per process group (a service, PostgreSQL,
//! the broker, this load generator, pgbench) from `/proc`, sampled in the background so that
//! processes ending inside the window (pgbench's backends) still count. On 2 cores this is often
//! what limits a figure. PostgreSQL's share can be split by the client each backend serves
//! ([`CpuUse::postgres_by_client`]).

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// Linux's USER_HZ: /proc reports CPU time in these ticks.
const TICKS_PER_SECOND: f64 = 100.0;

/// The group a process counts in, by its command name (15 characters at most in /proc).
fn group(comm: &str) -> Option<&'static str> {
    Some(match comm {
        "postgres" => "postgres",
        "nisshi" | "tansu" | "java" => "broker",
        "order-api" => "order-api",
        "outbox-relay" => "outbox-relay",
        "catalog-consume" => "catalog-consumer",
        "bench" => "bench (load, ceilings)",
        "pgbench" => "pgbench",
        "node" => "node (peer)",
        _ => return None,
    })
}

/// (group, CPU seconds) of every process this counts, by pid.
fn sample() -> HashMap<u32, (&'static str, f64)> {
    let mut out = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let Some(group) = group(&stat[open + 1..close]) else {
            continue;
        };
        // Fields after the command: state is field 3, utime 14 and stime 15.
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        out.insert(pid, (group, (ticks(11) + ticks(12)) / TICKS_PER_SECOND));
    }
    out
}

/// Busy and total jiffies of the whole host.
fn host() -> (f64, f64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let values: Vec<f64> = text
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: f64 = values.iter().sum();
    let idle = values.get(3).copied().unwrap_or(0.0) + values.get(4).copied().unwrap_or(0.0);
    (total - idle, total)
}

/// A running measurement of CPU use.
pub struct CpuMeter {
    started: Instant,
    host_before: (f64, f64),
    baseline: HashMap<u32, (&'static str, f64)>,
    latest: Arc<Mutex<HashMap<u32, (&'static str, f64)>>>,
    sampler: tokio::task::JoinHandle<()>,
}

/// CPU use over a window: cores (CPU seconds per second) per group, and how busy the host was.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CpuUse {
    pub seconds: f64,
    pub cores: BTreeMap<&'static str, f64>,
    pub host_busy_pct: f64,
    /// CPU seconds of each PostgreSQL process (backends and the server's own), by pid.
    #[serde(skip)]
    pub postgres_pids: HashMap<u32, f64>,
}

impl CpuUse {
    /// CPU seconds `group` used in the window.
    pub fn seconds_of(&self, group: &str) -> f64 {
        self.cores.get(group).copied().unwrap_or(0.0) * self.seconds
    }

    /// PostgreSQL's cores split by the `application_name` of the session each backend serves
    /// (the services name their connections after themselves); the server's own processes and
    /// backends gone by now count as "other". Call while the clients are still connected.
    pub async fn postgres_by_client(
        &self,
        conn: &mut sqlx::PgConnection,
    ) -> anyhow::Result<BTreeMap<String, f64>> {
        let sessions: HashMap<i32, String> = sqlx::query_as::<_, (i32, String)>(
            "select pid, coalesce(application_name, '') from pg_stat_activity",
        )
        .fetch_all(conn)
        .await?
        .into_iter()
        .collect();
        let mut by_client: BTreeMap<String, f64> = BTreeMap::new();
        for (pid, cpu) in &self.postgres_pids {
            let client = i32::try_from(*pid)
                .ok()
                .and_then(|pid| sessions.get(&pid))
                .filter(|name| !name.is_empty())
                .map_or("other", String::as_str);
            *by_client.entry(client.to_owned()).or_default() += cpu / self.seconds;
        }
        Ok(by_client)
    }

    /// `order-api 0.92, postgres 0.81, ...` (largest first), and the host's busy share.
    pub fn short(&self) -> String {
        let groups: Vec<String> = largest_first(&self.cores)
            .iter()
            .map(|(g, c)| format!("{g} {c:.2}"))
            .collect();
        format!(
            "CPU cores: {}; host {:.0} % busy",
            groups.join(", "),
            self.host_busy_pct
        )
    }
}

/// The entries of `cores` that used 0.01 cores or more, largest first.
pub fn largest_first<K: Ord>(cores: &BTreeMap<K, f64>) -> Vec<(&K, f64)> {
    let mut used: Vec<(&K, f64)> = cores
        .iter()
        .map(|(key, cores)| (key, *cores))
        .filter(|(_, cores)| *cores >= 0.01)
        .collect();
    used.sort_by(|a, b| b.1.total_cmp(&a.1));
    used
}

impl CpuMeter {
    pub fn start() -> Self {
        let baseline = sample();
        let latest = Arc::new(Mutex::new(baseline.clone()));
        let sampler = {
            let latest = latest.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    let now = sample();
                    latest.lock().expect("lock").extend(now);
                }
            })
        };
        Self {
            started: Instant::now(),
            host_before: host(),
            baseline,
            latest,
            sampler,
        }
    }

    pub fn stop(self) -> CpuUse {
        self.sampler.abort();
        let seconds = self.started.elapsed().as_secs_f64().max(1e-6);
        let mut latest = self.latest.lock().expect("lock").clone();
        latest.extend(sample());
        let mut cores: BTreeMap<&'static str, f64> = BTreeMap::new();
        let mut postgres_pids = HashMap::new();
        for (pid, (group, cpu)) in latest {
            let before = self
                .baseline
                .get(&pid)
                .filter(|(g, _)| *g == group)
                .map_or(0.0, |(_, c)| *c);
            let used = (cpu - before).max(0.0);
            *cores.entry(group).or_default() += used / seconds;
            if group == "postgres" {
                postgres_pids.insert(pid, used);
            }
        }
        let (busy, total) = host();
        let host_busy_pct =
            100.0 * (busy - self.host_before.0) / (total - self.host_before.1).max(1.0);
        CpuUse {
            seconds,
            cores,
            host_busy_pct,
            postgres_pids,
        }
    }
}
