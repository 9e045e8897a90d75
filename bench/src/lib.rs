//! The benchmark command: each speed figure of the system beside its ceiling measured in the same
//! run, with the ratio and the target (`scripts/bench.sh`; a measurement, not a test).
//!
//! Every row works on fresh databases (`outbox_bench_*`) and fresh topics, starts the services
//! it measures as child processes (the binaries next to this one), and removes all of it again.
//! One table goes to stdout and one JSON file to `--out-dir`.

pub mod cpu;
pub mod fill;
pub mod http1;
pub mod infra;
pub mod kafka;
pub mod pgbench;
pub mod report;
pub mod rows;
pub mod services;
pub mod stats;

use std::{path::PathBuf, time::Duration};

use anyhow::Context;
use chrono::Utc;

use crate::{
    infra::Infra,
    report::{Report, Row},
    rows::Shared,
};

/// The rows of the table, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RowName {
    /// order-api throughput vs pgbench of its statement.
    OrderApi,
    /// outbox-relay drain vs the database's claim+delete and a raw producer.
    Relay,
    /// catalog-consumer drain vs a plain consumer and a set-based apply.
    Consumer,
    /// order committed → stock applied, open loop at a fixed rate, all three services.
    Latency,
    /// relay drain with a key held behind its dead row vs the same drain without (issue 9).
    Held,
    /// relay only: outbox row created → message received by a plain consumer, paced.
    Pickup,
    /// the peer pg-transactional-outbox beside ours (needs --peer or --only peer).
    Peer,
}

impl RowName {
    pub const ALL: [RowName; 7] = [
        RowName::OrderApi,
        RowName::Relay,
        RowName::Consumer,
        RowName::Latency,
        RowName::Held,
        RowName::Pickup,
        RowName::Peer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RowName::OrderApi => "order-api",
            RowName::Relay => "relay",
            RowName::Consumer => "consumer",
            RowName::Latency => "latency",
            RowName::Held => "held",
            RowName::Pickup => "pickup",
            RowName::Peer => "peer",
        }
    }
}

const DEFAULT_PG_ADMIN_URL: &str = "postgres://postgres:postgres@127.0.0.1:5432/postgres";

/// The command line. Sizes left unset take the full-run defaults, or tiny ones with `--smoke`.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "bench",
    version,
    about = "Measures every speed figure beside its ceiling taken in the same run; prints one table and writes one JSON file.",
    long_about = None
)]
pub struct Args {
    /// Rows to run, comma-separated (default: every row but peer).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<RowName>,
    /// Tiny sizes and no thresholds: proves every row still runs (CI). Works with debug binaries.
    #[arg(long)]
    pub smoke: bool,
    /// Also run the peer pg-transactional-outbox harness (Node.js) beside ours.
    #[arg(long)]
    pub peer: bool,
    /// PostgreSQL admin URL; databases outbox_bench_* are created beside it and dropped again.
    #[arg(long, env = "PG_ADMIN_URL", default_value = DEFAULT_PG_ADMIN_URL)]
    pub database_url: String,
    /// Kafka bootstrap brokers.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,
    /// order-api row: orders placed (default 20,000; smoke 2,000).
    #[arg(long)]
    pub orders: Option<u64>,
    /// order-api row: concurrent HTTP/1.1 keep-alive connections, and pgbench clients
    /// (default 64; smoke 8).
    #[arg(long)]
    pub connections: Option<u64>,
    /// relay row: outbox rows drained (default 200,000; smoke 2,000).
    #[arg(long)]
    pub drain_rows: Option<u64>,
    /// Distinct keys (product ids) of the drained rows and events.
    #[arg(long, default_value_t = 1_000)]
    pub keys: u64,
    /// consumer row: events drained (default 200,000; smoke 2,000).
    #[arg(long)]
    pub events: Option<u64>,
    /// latency row: orders per second offered, open loop (default 1,000; smoke 200).
    #[arg(long)]
    pub rate: Option<u64>,
    /// latency row: seconds of offered load (default 20; smoke 2).
    #[arg(long)]
    pub duration_secs: Option<f64>,
    /// held row: rows of one key held behind its dead row (default 100,000; smoke 2,000).
    #[arg(long)]
    pub held_rows: Option<u64>,
    /// held row: claimable rows of other keys drained (default 100,000; smoke 2,000).
    #[arg(long)]
    pub claimable_rows: Option<u64>,
    /// pickup and peer rows: orders sent one at a time for the commit → topic latency
    /// (default 200; smoke 20).
    #[arg(long)]
    pub pickup_count: Option<u64>,
    /// pickup and peer rows: milliseconds between those orders (the peer harness's default).
    #[arg(long, default_value_t = 50)]
    pub pickup_gap_ms: u64,
    /// peer row: rows the peer drains; ours drains the same number in that row (default 20,000,
    /// about 40 s of the peer; smoke 300). The peer's rate depends on it: its first polls take
    /// one row each, and each poll sorts the whole backlog.
    #[arg(long)]
    pub peer_n: Option<u64>,
    /// peer row: the harness's drain preset (par-b100: its fastest; seq-b100 keeps per-key order).
    #[arg(long, default_value = "par-b100")]
    pub peer_drain: String,
    /// peer row: the harness's latency preset.
    #[arg(long, default_value = "poll-10")]
    pub peer_latency: String,
    /// Where the peer harness is (read-only; it is copied under .local/peer/ and `npm ci`-ed there).
    #[arg(
        long,
        env = "PEER_HARNESS_DIR",
        default_value = "../shared/peers/pg-transactional-outbox"
    )]
    pub peer_source: PathBuf,
    /// relay row: rows per statement of the database's claim+delete ceiling (the relay's BATCH_SIZE).
    #[arg(long, default_value_t = 2_000)]
    pub claim_batch: u64,
    /// consumer row: events per statement of the set-based apply ceiling.
    #[arg(long, default_value_t = 1_000)]
    pub apply_batch: u64,
    /// Directory of the service binaries (default: this binary's own, e.g. target/release).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Where the JSON file and the services' logs go.
    #[arg(long, default_value = ".local/bench")]
    pub out_dir: PathBuf,
}

/// The sizes of this run, resolved from the flags and the mode.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Sizes {
    pub smoke: bool,
    pub orders: u64,
    pub connections: u64,
    pub drain_rows: u64,
    pub keys: u64,
    pub events: u64,
    pub products: u64,
    pub rate: u64,
    pub duration_secs: f64,
    pub held_rows: u64,
    pub claimable_rows: u64,
    pub pickup_count: u64,
    pub pickup_gap_ms: u64,
    pub floor_count: u64,
    pub peer_n: u64,
    pub peer_drain: String,
    pub peer_latency: String,
    pub claim_batch: u64,
    pub apply_batch: u64,
}

impl Sizes {
    pub fn from_args(args: &Args) -> Self {
        let pick = |value: Option<u64>, full: u64, smoke: u64| {
            value
                .unwrap_or(if args.smoke { smoke } else { full })
                .max(1)
        };
        Self {
            smoke: args.smoke,
            orders: pick(args.orders, 20_000, 2_000),
            connections: pick(args.connections, 64, 8),
            drain_rows: pick(args.drain_rows, 200_000, 2_000),
            keys: args.keys.max(1),
            events: pick(args.events, 200_000, 2_000),
            products: args.keys.max(1),
            rate: pick(args.rate, 1_000, 200),
            duration_secs: args
                .duration_secs
                .unwrap_or(if args.smoke { 2.0 } else { 20.0 })
                .max(0.1),
            held_rows: pick(args.held_rows, 100_000, 2_000),
            claimable_rows: pick(args.claimable_rows, 100_000, 2_000),
            pickup_count: pick(args.pickup_count, 200, 20),
            pickup_gap_ms: args.pickup_gap_ms.max(1),
            floor_count: if args.smoke { 50 } else { 300 },
            peer_n: pick(args.peer_n, 20_000, 300),
            peer_drain: args.peer_drain.clone(),
            peer_latency: args.peer_latency.clone(),
            claim_batch: args.claim_batch.max(1),
            apply_batch: args.apply_batch.max(1),
        }
    }
}

/// What every row needs: sizes, infrastructure, the binaries, an HTTP client, the log directory.
pub struct Bench {
    pub sizes: Sizes,
    pub args: Args,
    pub infra: Infra,
    pub bin_dir: PathBuf,
    pub log_dir: PathBuf,
    pub http: reqwest::Client,
}

impl Bench {
    /// Whether targets are judged (not in smoke mode).
    pub fn judged(&self) -> bool {
        !self.sizes.smoke
    }
}

fn selected_rows(args: &Args) -> Vec<RowName> {
    let mut rows: Vec<RowName> = if args.only.is_empty() {
        RowName::ALL
            .into_iter()
            .filter(|r| *r != RowName::Peer || args.peer)
            .collect()
    } else {
        args.only.clone()
    };
    if args.peer && !rows.contains(&RowName::Peer) {
        rows.push(RowName::Peer);
    }
    rows.sort();
    rows.dedup();
    rows
}

fn default_bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot locate the bench binary")?;
    Ok(exe
        .parent()
        .context("the bench binary has no directory")?
        .to_path_buf())
}

/// Runs the selected rows, prints the table, writes the JSON file. Returns the exit code: 0 when
/// every row ran (missed targets included), 1 when a row could not run.
pub async fn run(args: Args) -> anyhow::Result<i32> {
    let started_at = Utc::now();
    let stamp = started_at.format("%Y%m%dT%H%M%SZ").to_string();
    let run_id = format!(
        "{}_{:04x}",
        started_at.format("%Y%m%d%H%M%S"),
        rand::random::<u16>()
    );
    let sizes = Sizes::from_args(&args);
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => default_bin_dir()?,
    };
    let profile = bin_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let log_dir = args.out_dir.join(&stamp);
    tokio::fs::create_dir_all(&log_dir)
        .await
        .with_context(|| format!("cannot create {}", log_dir.display()))?;
    let selected = selected_rows(&args);
    let need_broker = selected.iter().any(|r| *r != RowName::OrderApi);
    let infra = Infra::connect(
        &args.database_url,
        &args.kafka_brokers,
        &run_id,
        need_broker,
    )
    .await?;
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(30))
        .build()?;
    let bench = Bench {
        sizes,
        args: args.clone(),
        infra,
        bin_dir,
        log_dir: log_dir.clone(),
        http,
    };
    eprintln!(
        "[bench] run {run_id}: {} with {} binaries from {}; logs in {}",
        selected
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        profile,
        bench.bin_dir.display(),
        log_dir.display()
    );

    let mut rows: Vec<Row> = Vec::new();
    let mut shared = Shared::default();
    let interrupted = tokio::select! {
        () = async {
            for name in &selected {
                eprintln!("\n[bench] ==> {}", name.as_str());
                rows.extend(rows::run(*name, &bench, &mut shared).await);
            }
        } => false,
        () = stop_signal() => true,
    };
    // Children were killed when their handles dropped; the databases and topics go now.
    bench.infra.cleanup().await;
    if interrupted {
        eprintln!("[bench] interrupted: databases and topics of this run removed");
        return Ok(130);
    }

    let report = Report {
        run_id,
        started_at,
        finished_at: Utc::now(),
        profile,
        smoke: bench.sizes.smoke,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        host: bench.infra.describe_host().await,
        sizes: bench.sizes.clone(),
        rows,
    };
    print!("{}", report.table());
    let path = args.out_dir.join(format!("bench-{stamp}.json"));
    let json = serde_json::to_vec_pretty(&report.to_json())?;
    tokio::fs::write(&path, json)
        .await
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!("JSON: {}", path.display());
    Ok(if report.any_error() { 1 } else { 0 })
}

async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
