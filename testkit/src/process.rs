//! The services as processes: start a binary, wait until it is ready, and check its `--help`.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

/// A child process killed (and reaped) when dropped, also when the test panics.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `binary` with `args` and `env` added to this process's environment (`RUST_LOG=warn`
/// unless `env` sets it); stdout (the JSON log) is discarded, stderr goes to the test's.
pub fn spawn(binary: &Path, args: &[&str], env: &[(&str, &str)]) -> KillOnDrop {
    let child = Command::new(binary)
        .args(args)
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|error| panic!("start {}: {error}", binary.display()));
    KillOnDrop(child)
}

/// Waits until `GET http://{address}/readyz` answers 200, or panics after `deadline`.
pub async fn wait_ready(address: &str, deadline: Duration) {
    let http = reqwest::Client::new();
    let url = format!("http://{address}/readyz");
    crate::eventually(deadline, || async {
        let response = http.get(&url).send().await.ok()?;
        response.status().is_success().then_some(())
    })
    .await
    .unwrap_or_else(|_| panic!("{url} did not answer 200 within {deadline:?}"));
}

/// Checks that `binary --help` lists every setting of `command` (its top-level arguments) with
/// its flag, its environment variable and its default, that every setting has a variable, and
/// that the `pinned` variables are there with exactly these defaults (the documented contract).
pub fn assert_help_lists_every_setting(
    binary: &Path,
    command: &clap::Command,
    pinned: &[(&str, Option<&str>)],
) {
    let output = Command::new(binary)
        .arg("--help")
        .env_clear()
        .output()
        .unwrap_or_else(|error| panic!("run {} --help: {error}", binary.display()));
    assert!(
        output.status.success(),
        "{} --help failed",
        binary.display()
    );
    // Whitespace folded: clap wraps `[default: …]` onto the next line when the help is wide.
    let help = String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let settings = command
        .get_arguments()
        .filter(|arg| !arg.is_hide_set() && arg.get_long().is_some())
        .filter(|arg| !matches!(arg.get_id().as_str(), "help" | "version"));
    let mut seen = 0;
    for arg in settings {
        seen += 1;
        let flag = format!("--{}", arg.get_long().unwrap_or_default());
        let variable = arg
            .get_env()
            .unwrap_or_else(|| panic!("{flag} has no environment variable"))
            .to_string_lossy();
        assert!(help.contains(&flag), "--help lacks {flag}:\n{help}");
        assert!(
            help.contains(&format!("[env: {variable}")),
            "--help lacks {variable} for {flag}:\n{help}"
        );
        for default in arg.get_default_values() {
            let default = default.to_string_lossy();
            assert!(
                help.contains(&format!("[env: {variable}=] [default: {default}]"))
                    || help.contains(&format!("[env: {variable}] [default: {default}]")),
                "--help lacks {flag}'s default {default}:\n{help}"
            );
        }
    }
    assert!(seen > 0, "{} has no settings", binary.display());
    for (variable, default) in pinned {
        let shown = match default {
            Some(default) => [
                format!("[env: {variable}=] [default: {default}]"),
                format!("[env: {variable}] [default: {default}]"),
            ]
            .iter()
            .any(|text| help.contains(text.as_str())),
            None => help.contains(&format!("[env: {variable}")),
        };
        assert!(
            shown,
            "--help lacks {variable} (default {default:?}):\n{help}"
        );
    }
}
