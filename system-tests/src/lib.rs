//! Dev-only: system tests that run the services as real processes (under `tests/`), and the few
//! pieces they share: where the binaries are, a free port, a child killed on drop.
//!
//! Run with `cargo build --workspace --bins` first: the tests start the binaries built next
//! to them and never build anything themselves (a nested `cargo build` would wait on the lock
//! of the `cargo test` that runs them).

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::Child,
};

/// A service binary built next to the running test (`target/<profile>/`).
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test executable");
    // target/<profile>/deps/<test>-<hash>
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable lives in target/<profile>/deps")
        .join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `SQLX_OFFLINE=true cargo build --workspace --bins` \
         (same profile as the tests) before `cargo test -p system-tests`",
        path.display()
    );
    path
}

/// The pinned nisshi broker: `NISSHI_BIN`, or where `scripts/infra.sh` installs it.
pub fn nisshi() -> PathBuf {
    let path = std::env::var_os("NISSHI_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").expect("HOME or NISSHI_BIN must be set");
            Path::new(&home).join(".cache/outbox-nisshi/bin/nisshi")
        });
    assert!(
        path.is_file(),
        "the broker {} is missing: run `scripts/infra.sh install-broker` \
         (or point NISSHI_BIN at a nisshi binary)",
        path.display()
    );
    path
}

/// A free local port: the OS picks it, and it is released for a child to bind.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("free port")
        .port()
}

/// A child process killed (and reaped) when dropped, also when the test panics.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
