use std::process::ExitCode;

use clap::Parser;
use order_api::{Application, Cli, Command};

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    match Cli::parse().into_command() {
        Command::Run(settings) => {
            let _telemetry = outbox_core::telemetry::init("order-api");
            let shutdown = outbox_core::shutdown::on_signal();
            let app = Application::build(*settings).await?;
            app.run_until_stopped(shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Healthcheck(args) => Ok(outbox_core::ops::healthcheck(
            &args,
            order_api::DEFAULT_HTTP_ADDR,
        )),
    }
}
