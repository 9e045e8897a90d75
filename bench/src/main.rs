use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = bench::Args::parse();
    let code = bench::run(args).await?;
    std::process::exit(code);
}
