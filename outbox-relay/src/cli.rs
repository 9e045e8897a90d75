//! What the command line asks for: the relay, or an operator's command, which calls
//! [`crate::outbox`] and prints the result. No SQL here.

use std::process::ExitCode;

use anyhow::Context;
use outbox_core::{cli::run_service, db, settings::PoolSettings};
use sqlx::PgPool;

use crate::{
    outbox::{requeue, status, Requeue},
    AdminSettings, Cli, Command, DeadArgs, Relay, RequeueArgs, DEFAULT_HTTP_ADDR,
};

/// Runs what the command line asks for; the process's exit code.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.into_command() {
        Command::Run(settings) => {
            return run_service("outbox-relay", |shutdown| async move {
                let relay = Relay::build(*settings).await?;
                relay.run_until_stopped(shutdown).await
            })
            .await
        }
        Command::Status(admin) => print_status(&admin).await?,
        Command::Requeue(args) => print_requeue(&args).await?,
        Command::Dead(args) => print_dead(&args).await?,
        Command::Healthcheck(args) => {
            return Ok(outbox_core::ops::healthcheck(&args, DEFAULT_HTTP_ADDR))
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `outbox-relay status`: prints the status as one JSON object on stdout.
async fn print_status(settings: &AdminSettings) -> anyhow::Result<()> {
    let pool = connect(settings).await?;
    let status = status::status(&pool)
        .await
        .context("cannot read the outbox")?;
    println!("{}", serde_json::to_string(&status)?);
    Ok(())
}

/// `outbox-relay dead`: prints one JSON object per line for each dead row (key, attempts, age,
/// last error), oldest first, at most `limit`.
async fn print_dead(args: &DeadArgs) -> anyhow::Result<()> {
    let pool = connect(&args.admin).await?;
    let rows = status::dead_rows(&pool, args.limit)
        .await
        .context("cannot read the outbox")?;
    for row in rows {
        println!("{}", serde_json::to_string(&row)?);
    }
    Ok(())
}

/// `outbox-relay requeue`: requeues and prints `{"requeued": n, "older_than_dedup_window": m}`;
/// fails when `--event-id` names no dead row, or when rows are older than the dedup window and
/// `--force` is not given.
async fn print_requeue(args: &RequeueArgs) -> anyhow::Result<()> {
    let pool = connect(&args.admin).await?;
    let target = match args.event_id {
        Some(event_id) => Requeue::Event(event_id),
        None => Requeue::AllDead,
    };
    let requeued = requeue::requeue(&pool, target, args.dedup_window, args.force).await?;
    if requeued.older_than_dedup_window > 0 {
        eprintln!(
            "warning: {} requeued rows are older than the dedup window ({}); the consumer \
             dead-letters them unless its PROCESSED_EVENTS_RETENTION covers them",
            requeued.older_than_dedup_window,
            outbox_core::retention::format_duration(args.dedup_window)
        );
    }
    println!("{}", serde_json::to_string(&requeued)?);
    Ok(())
}

/// The operator commands' pool, made as the relay makes its own, but with one connection and
/// no migrations: an operator's command never changes the schema (the relays migrate at start).
async fn connect(settings: &AdminSettings) -> anyhow::Result<PgPool> {
    let pool = PoolSettings {
        db_max_connections: 1,
        skip_migrations: true,
        ..PoolSettings::default()
    };
    db::connect(
        &settings.database_url,
        &pool,
        "outbox-relay-admin",
        &db::ORDERS_MIGRATOR,
    )
    .await
}
