//! compose.yaml cannot be run here (no Docker engine), so this test keeps it honest: every
//! service, port and variable it names must match what the binaries accept.

use std::collections::{BTreeMap, BTreeSet};

use clap::CommandFactory;
use serde_yaml::Value;

/// Every environment variable a command (and its subcommands) reads.
fn variables(command: &clap::Command) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = command
        .get_arguments()
        .filter_map(|arg| arg.get_env())
        .map(|env| env.to_string_lossy().into_owned())
        .collect();
    for sub in command.get_subcommands() {
        names.extend(variables(sub));
    }
    names
}

fn compose() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../compose.yaml");
    serde_yaml::from_str(&std::fs::read_to_string(path).expect("read compose.yaml"))
        .expect("parse compose.yaml")
}

fn environment(service: &Value) -> BTreeMap<String, String> {
    service["environment"]
        .as_mapping()
        .expect("environment is a mapping")
        .iter()
        .map(|(k, v)| {
            let value = match v {
                Value::String(s) => s.clone(),
                other => serde_yaml::to_string(other).unwrap().trim().to_owned(),
            };
            (k.as_str().unwrap().to_owned(), value)
        })
        .collect()
}

#[test]
fn compose_services_ports_and_variables_match_the_binaries() {
    let compose = compose();
    let services = compose["services"].as_mapping().expect("services");
    let names: BTreeSet<&str> = services.keys().map(|k| k.as_str().unwrap()).collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "postgres",
            "kafka",
            "kafka-topics",
            "order-api",
            "outbox-relay",
            "catalog-consumer",
            "seed-demo"
        ])
    );

    let binaries = [
        ("order-api", order_api::Settings::command(), 8080),
        ("outbox-relay", outbox_relay::Cli::command(), 8082),
        (
            "catalog-consumer",
            catalog_consumer::Settings::command(),
            8081,
        ),
    ];
    let topics_command = compose["services"]["kafka-topics"]["command"][0]
        .as_str()
        .unwrap()
        .to_owned();
    for (name, command, port) in binaries {
        let service = &compose["services"][name];
        let accepted = variables(&command);
        let env = environment(service);
        for variable in env.keys().filter(|v| *v != "RUST_LOG") {
            assert!(
                accepted.contains(variable),
                "{name}: compose sets {variable}, which the binary does not read ({accepted:?})"
            );
        }
        assert_eq!(
            service["command"][0].as_str(),
            Some(name),
            "{name}: runs its own binary"
        );
        assert_eq!(
            env["HTTP_ADDR"],
            format!("0.0.0.0:{port}"),
            "{name}: HTTP_ADDR"
        );
        let published = service["ports"][0].as_str().unwrap();
        assert!(
            published.ends_with(&format!(":{port}:{port}")),
            "{name}: publishes {port}, got {published}"
        );
        let database = if name == "catalog-consumer" {
            "catalog"
        } else {
            "orders"
        };
        assert!(
            env["DATABASE_URL"].ends_with(&format!("@postgres:5432/{database}")),
            "{name}: DATABASE_URL"
        );
        if name != "order-api" {
            assert_eq!(env["KAFKA_BROKERS"], "kafka:29092", "{name}: KAFKA_BROKERS");
        }
        for topic_variable in ["ORDER_EVENTS_TOPIC", "DLQ_TOPIC"] {
            if let Some(topic) = env.get(topic_variable) {
                assert!(
                    topics_command.contains(&format!("--topic {topic} ")),
                    "{name}: {topic} is created by kafka-topics"
                );
            }
        }
    }
    // Each service's health is its own binary's `healthcheck` (the image has no curl), and it
    // waits only for what it talks to.
    let clis = [
        ("order-api", order_api::Cli::command()),
        ("outbox-relay", outbox_relay::Cli::command()),
        ("catalog-consumer", catalog_consumer::Cli::command()),
    ];
    for (name, cli) in clis {
        let service = &compose["services"][name];
        assert!(
            cli.find_subcommand("healthcheck").is_some(),
            "{name} has a healthcheck subcommand"
        );
        let test: Vec<&str> = service["healthcheck"]["test"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{name} has a healthcheck"))
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(test, ["CMD", name, "healthcheck"], "{name}: healthcheck");

        let env = environment(service);
        let mut needed = BTreeMap::new();
        if env["DATABASE_URL"].contains("@postgres:") {
            needed.insert("postgres".to_owned(), "service_healthy".to_owned());
        }
        if env
            .get("KAFKA_BROKERS")
            .is_some_and(|b| b.starts_with("kafka:"))
        {
            needed.insert(
                "kafka-topics".to_owned(),
                "service_completed_successfully".to_owned(),
            );
        }
        let depends: BTreeMap<String, String> = service["depends_on"]
            .as_mapping()
            .expect("depends_on is a mapping")
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().unwrap().to_owned(),
                    v["condition"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert_eq!(
            depends, needed,
            "{name}: depends on exactly what it talks to"
        );
    }
    let postgres_check = compose["services"]["postgres"]["healthcheck"]["test"][1]
        .as_str()
        .unwrap();
    assert!(
        postgres_check.contains("pg_isready -h 127.0.0.1"),
        "PostgreSQL's healthcheck goes over TCP (the init server only listens on the socket): {postgres_check}"
    );
    for durable in ["postgres", "kafka"] {
        assert!(
            compose["services"][durable]["volumes"]
                .as_sequence()
                .is_some_and(|v| v.iter().any(|v| v.as_str().unwrap().contains("-data:"))),
            "{durable} keeps its data in a named volume"
        );
    }

    let seed = &compose["services"]["seed-demo"];
    assert!(
        seed["command"][0].as_str().unwrap().contains("-d catalog")
            && seed["volumes"][0]
                .as_str()
                .unwrap()
                .starts_with("./scripts/seed-demo.sql:"),
        "seed-demo loads scripts/seed-demo.sql into the catalog database"
    );
    let init = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../scripts/postgres-init.sql"
    ))
    .unwrap();
    assert!(init.contains("create database orders") && init.contains("create database catalog"));
}

#[test]
fn the_dockerfile_caches_dependencies_and_checks_health() {
    let dockerfile =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Dockerfile")).unwrap();
    let workspace: toml_like::Members = toml_like::members(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml")).unwrap(),
    );
    for member in &workspace {
        assert!(
            dockerfile.contains(&format!("COPY {member}/Cargo.toml {member}/")),
            "the dependency stage copies {member}'s manifest"
        );
    }
    let deps_stage = dockerfile
        .split("FROM deps AS build")
        .next()
        .expect("a deps stage");
    assert!(
        deps_stage.contains("cargo build --release") && !deps_stage.contains("COPY . ."),
        "dependencies are built before the sources are copied"
    );
    assert!(
        dockerfile.contains(r#"HEALTHCHECK"#)
            && dockerfile.contains(r#"["order-api", "healthcheck"]"#),
        "the image checks its health with the binary's healthcheck"
    );
}

/// The workspace members of a Cargo.toml, without a TOML parser.
mod toml_like {
    pub type Members = Vec<String>;

    pub fn members(manifest: &str) -> Members {
        let line = manifest
            .lines()
            .find(|line| line.trim_start().starts_with("members"))
            .expect("a members line");
        line.split('"')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    }
}
