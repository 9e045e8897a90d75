//! The binaries as users get them: a release build (as the Dockerfile makes it) carries no
//! test hook.

use std::process::Command;

/// The features cargo enables for the services in a build of `edges` (`cargo tree`, which
/// resolves features exactly as a build of those packages does).
fn enabled_features(packages: &[&str], edges: &str) -> String {
    let mut tree = Command::new(env!("CARGO"));
    tree.args(["tree", "--locked", "--offline", "--prefix", "none"])
        .args(["--edges", edges, "--format", "{p} {f}"]);
    for package in packages {
        tree.args(["--package", package]);
    }
    let output = tree
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("run cargo tree");
    assert!(
        output.status.success(),
        "cargo tree: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8")
}

#[test]
fn a_release_build_as_the_dockerfile_makes_it_carries_no_test_hook() {
    let dockerfile = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Dockerfile"))
        .expect("read the Dockerfile");
    let builds: Vec<&str> = dockerfile
        .lines()
        .filter(|line| line.contains("cargo build"))
        .collect();
    assert!(!builds.is_empty(), "the Dockerfile builds the services");
    for build in &builds {
        assert!(
            build.contains("--release") && !build.contains("features"),
            "the image is a release build with default features only: {build}"
        );
    }
    let services = ["order-api", "outbox-relay", "catalog-consumer"];
    let release = enabled_features(&services, "normal,build,features");
    assert!(
        release
            .lines()
            .any(|line| line.starts_with("outbox-relay ")),
        "cargo tree lists the services:\n{release}"
    );
    assert!(
        !release.contains("test-hooks"),
        "a release build enables a test hook:\n{release}"
    );
    // The check can see a hook: the services' own tests (dev-dependencies) do enable it.
    let tests = enabled_features(&["outbox-relay", "catalog-consumer"], "all");
    assert!(
        tests.contains("test-hooks"),
        "the tests' build enables the hooks:\n{tests}"
    );
}
