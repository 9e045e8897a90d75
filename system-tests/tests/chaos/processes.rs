//! The system as child processes of the test: each with its own log file, killed, paused and
//! resumed by signal, and always killed when the test ends, also when it panics.

use std::{
    fs::{File, OpenOptions},
    io::Write,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use system_tests::{nisshi, service_binary};
use testkit::eventually;

/// How long a (re)started process may take to answer.
const READY_DEADLINE: Duration = Duration::from_secs(30);

/// The programs the test runs.
pub struct Binaries {
    pub order_api: PathBuf,
    pub outbox_relay: PathBuf,
    pub catalog_consumer: PathBuf,
    pub nisshi: PathBuf,
}

impl Binaries {
    /// The services as built next to this test (`target/<profile>/`), and the broker from
    /// `NISSHI_BIN` or where `scripts/infra.sh` installs it. Never builds anything: a nested
    /// `cargo build` would wait on the lock of the `cargo test` that runs us.
    pub fn locate() -> Self {
        Self {
            order_api: service_binary("order-api"),
            outbox_relay: service_binary("outbox-relay"),
            catalog_consumer: service_binary("catalog-consumer"),
            nisshi: nisshi(),
        }
    }
}

pub use system_tests::free_port;

/// How one process is started, so that it can be started again after a kill.
pub struct Spec {
    pub name: &'static str,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(&'static str, String)>,
}

/// One child process; killed on drop.
pub struct Process {
    spec: Spec,
    dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Process {
    /// Starts `spec` with `dir` as its working directory and `dir/<name>.log` as its stdout
    /// and stderr (appended to across restarts).
    pub fn start(spec: Spec, dir: &Path) -> Self {
        let log = dir.join(format!("{}.log", spec.name));
        let mut process = Self {
            spec,
            dir: dir.to_owned(),
            log,
            child: None,
        };
        process.spawn();
        process
    }

    fn spawn(&mut self) {
        assert!(
            self.child.is_none(),
            "{} is already running",
            self.spec.name
        );
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the log file");
        writeln!(log, "--- {} started by the test ---", self.spec.name).expect("write log");
        let stderr: File = log.try_clone().expect("log file handle");
        let child = Command::new(&self.spec.program)
            .args(&self.spec.args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "warn")
            .envs(self.spec.env.iter().map(|(k, v)| (*k, v.as_str())))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.spec.program.display()));
        self.child = Some(child);
    }

    pub fn name(&self) -> &'static str {
        self.spec.name
    }

    fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .unwrap_or_else(|| panic!("{} is not running", self.spec.name))
            .id()
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill -9");
            child.wait().expect("reap the killed process");
        }
    }

    /// Starts it again, with the same settings.
    pub fn restart(&mut self) {
        self.spawn();
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) with the `kill` command: the workspace forbids the
    /// unsafe code a libc call would need.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {} failed", self.spec.name);
    }

    /// Panics with the log's tail when the process has exited.
    pub fn assert_running(&mut self) {
        let name = self.spec.name;
        let exited = self
            .child
            .as_mut()
            .unwrap_or_else(|| panic!("{name} is not running"))
            .try_wait()
            .expect("try_wait");
        if let Some(status) = exited {
            panic!("{name} exited ({status}):\n{}", self.log_tail(40));
        }
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // SIGKILL also ends a process that is stopped (SIGSTOP).
        self.kill();
    }
}

/// A service with an HTTP surface (`/readyz`).
pub struct Service {
    pub address: String,
    process: Mutex<Process>,
}

impl Service {
    pub fn start(spec: Spec, dir: &Path, port: u16) -> Self {
        Self {
            address: format!("http://127.0.0.1:{port}"),
            process: Mutex::new(Process::start(spec, dir)),
        }
    }

    pub fn process(&self) -> MutexGuard<'_, Process> {
        // A panic elsewhere must not keep the drop guards from reaching the processes.
        self.process.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until `/readyz` answers 200 (its database and, where used, the broker reachable).
    pub async fn wait_ready(&self, http: &reqwest::Client) {
        let url = format!("{}/readyz", self.address);
        let ready = eventually(READY_DEADLINE, || {
            let request = http.get(&url).timeout(Duration::from_secs(2)).send();
            async {
                let response = request.await.ok()?;
                response.status().is_success().then_some(())
            }
        })
        .await;
        if ready.is_err() {
            let mut process = self.process();
            process.assert_running();
            panic!(
                "{} not ready within {READY_DEADLINE:?}:\n{}",
                process.name(),
                process.log_tail(40)
            );
        }
    }
}

/// The broker of this test alone, so that pausing it disturbs no other test.
pub struct Broker {
    pub address: String,
    process: Mutex<Process>,
}

impl Broker {
    pub async fn start(nisshi: &Path, dir: &Path) -> Self {
        let port = free_port();
        let address = format!("127.0.0.1:{port}");
        let url = format!("tcp://{address}");
        // Diagnostics: CHAOS_NISSHI_STORAGE picks another storage engine (e.g.
        // `sqlite://nisshi.db`, relative to the test directory); in-memory by default.
        let storage =
            std::env::var("CHAOS_NISSHI_STORAGE").unwrap_or_else(|_| "memory://nisshi/".into());
        let spec = Spec {
            name: "nisshi",
            program: nisshi.to_owned(),
            args: [
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                &storage,
            ]
            .map(String::from)
            .to_vec(),
            env: vec![],
        };
        let broker = Self {
            address,
            process: Mutex::new(Process::start(spec, dir)),
        };
        let accepting = eventually(READY_DEADLINE, || async {
            tokio::net::TcpStream::connect(&broker.address).await.ok()
        })
        .await;
        if accepting.is_err() {
            let mut process = broker.process();
            process.assert_running();
            panic!(
                "nisshi does not accept connections at {}:\n{}",
                broker.address,
                process.log_tail(40)
            );
        }
        broker
    }

    pub fn process(&self) -> MutexGuard<'_, Process> {
        self.process.lock().unwrap_or_else(|e| e.into_inner())
    }
}
