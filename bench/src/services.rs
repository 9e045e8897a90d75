//! The services as child processes: the release (or debug) binaries next to this one, configured
//! by environment variables, each on a free port, logging to a file, killed when dropped.

use std::{path::Path, process::Stdio, time::Duration};

use anyhow::Context;
use tokio::process::{Child, Command};

use crate::{infra::free_port, Bench};

/// Which binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    OrderApi,
    Relay,
    Consumer,
}

impl Kind {
    pub fn binary(self) -> &'static str {
        match self {
            Kind::OrderApi => "order-api",
            Kind::Relay => "outbox-relay",
            Kind::Consumer => "catalog-consumer",
        }
    }
}

/// A running service. Dropping it kills the process.
pub struct Service {
    pub name: String,
    pub port: u16,
    child: Child,
    log: std::path::PathBuf,
}

impl Service {
    /// Starts `kind` with `env` on top of this process's environment (so the services' own
    /// settings, e.g. `BATCH_SIZE`, pass through), with `HTTP_ADDR` on a free port.
    pub async fn start(
        bench: &Bench,
        kind: Kind,
        name: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let binary = bench.bin_dir.join(kind.binary());
        anyhow::ensure!(
            binary.exists(),
            "{} not found: build it first (scripts/bench.sh does)",
            binary.display()
        );
        let port = free_port()?;
        let log = bench.log_dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let err = out.try_clone()?;
        let mut command = Command::new(&binary);
        command
            .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("KAFKA_BROKERS", &bench.infra.brokers)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "info");
        }
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        Ok(Self {
            name: name.to_owned(),
            port,
            child,
            log,
        })
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A relay's mean time per phase of its steps that claimed rows, from its
    /// `outbox_relay_step_phase_seconds`: where its steps wait, the database or the broker.
    pub async fn relay_step_phases(&self, http: &reqwest::Client) -> anyhow::Result<String> {
        let body = http
            .get(format!("{}/metrics", self.base_url()))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        let series = |suffix: &str, phase: &str| -> f64 {
            let name = format!("outbox_relay_step_phase_seconds_{suffix}{{phase=\"{phase}\"}}");
            testkit::metric_value(&body, &name).unwrap_or(0.0)
        };
        let steps = series("count", "take");
        anyhow::ensure!(steps > 0.0, "the relay timed no step that claimed rows");
        let phases: Vec<String> = outbox_relay::metrics::STEP_PHASES
            .iter()
            .map(|phase| format!("{phase} {:.1} ms", 1e3 * series("sum", phase) / steps))
            .collect();
        Ok(format!("{} ({steps} steps)", phases.join(", ")))
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(
        &mut self,
        http: &reqwest::Client,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let url = format!("{}/readyz", self.base_url());
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!(
                    "{} exited ({status}) before it was ready; last lines of {}:\n{}",
                    self.name,
                    self.log.display(),
                    tail(&self.log, 15)
                );
            }
            let ready = http
                .get(&url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ready {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!(
                    "{} was not ready within {timeout:?}; last lines of {}:\n{}",
                    self.name,
                    self.log.display(),
                    tail(&self.log, 15)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Fails when the process has exited (it should run until stopped).
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            anyhow::bail!(
                "{} exited ({status}); last lines of {}:\n{}",
                self.name,
                self.log.display(),
                tail(&self.log, 15)
            );
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL after a grace period.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
            if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
                .await
                .is_ok()
            {
                return;
            }
        }
        let _ = self.child.kill().await;
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
