use std::process::ExitCode;

use catalog_consumer::{audit, Cli, Command, Consumer};
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    match Cli::parse().into_command() {
        Command::Run(settings) => {
            let _telemetry = outbox_core::telemetry::init("catalog-consumer");
            let shutdown = outbox_core::shutdown::on_signal();
            let consumer = Consumer::build(*settings).await?;
            consumer.run_until_stopped(shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        // No log output: stdout carries only the report.
        Command::Audit(args) => Ok(audit::print_report(&args).await),
        Command::Healthcheck(args) => Ok(outbox_core::ops::healthcheck(
            &args,
            catalog_consumer::DEFAULT_HTTP_ADDR,
        )),
    }
}
