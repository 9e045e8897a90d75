//! order-api as the system tests run it: its own `main`, built by cargo for this crate's tests.

#[tokio::main]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    order_api::main().await
}
