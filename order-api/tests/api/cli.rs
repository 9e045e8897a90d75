use std::{path::Path, process::Command};

use clap::CommandFactory;

#[test]
fn help_lists_every_setting_with_its_variable_and_default() {
    testkit::process::assert_help_lists_every_setting(
        Path::new(env!("CARGO_BIN_EXE_order-api")),
        &order_api::Cli::command(),
        &[
            ("HTTP_ADDR", Some("127.0.0.1:8080")),
            (
                "DATABASE_URL",
                Some("postgres://postgres:postgres@127.0.0.1:5432/orders"),
            ),
            ("ORDER_EVENTS_TOPIC", Some("order-events")),
            ("DB_MAX_CONNECTIONS", Some("10")),
            ("DB_ACQUIRE_TIMEOUT_SECS", Some("5")),
            ("SKIP_MIGRATIONS", None),
            ("MAX_BODY_BYTES", Some("16384")),
            ("HTTP_WORKERS", None),
        ],
    );
}

#[test]
fn an_invalid_topic_name_is_refused_at_start_up() {
    let output = Command::new(env!("CARGO_BIN_EXE_order-api"))
        .env("ORDER_EVENTS_TOPIC", "order events!")
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .output()
        .expect("run order-api");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("Kafka topic"), "{stderr}");
}
