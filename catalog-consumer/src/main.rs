use catalog_consumer::{Consumer, Settings};
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    outbox_core::telemetry::init();
    let settings = Settings::parse();
    let shutdown = outbox_core::shutdown::on_signal();
    let consumer = Consumer::build(settings).await?;
    consumer.run_until_stopped(shutdown).await
}
