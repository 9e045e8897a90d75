use clap::Parser;
use order_api::{Application, Settings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    outbox_core::telemetry::init();
    let settings = Settings::parse();
    let shutdown = outbox_core::shutdown::on_signal();
    let app = Application::build(settings).await?;
    app.run_until_stopped(shutdown).await
}
