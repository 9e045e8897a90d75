use std::process::ExitCode;

use clap::Parser;
use outbox_relay::{Cli, Command, Relay};

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    match Cli::parse().into_command() {
        Command::Run(settings) => {
            let _telemetry = outbox_core::telemetry::init("outbox-relay");
            let shutdown = outbox_core::shutdown::on_signal();
            Relay::build(*settings)
                .await?
                .run_until_stopped(shutdown)
                .await?;
        }
        Command::Status(admin) => outbox_relay::admin::print_status(&admin).await?,
        Command::Requeue(args) => outbox_relay::admin::print_requeue(&args).await?,
        Command::Dead(args) => outbox_relay::admin::print_dead(&args).await?,
        Command::Healthcheck(args) => {
            return Ok(outbox_core::ops::healthcheck(
                &args,
                outbox_relay::DEFAULT_HTTP_ADDR,
            ))
        }
    }
    Ok(ExitCode::SUCCESS)
}
