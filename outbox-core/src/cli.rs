//! The command line every service binary shares: `run` with the service's settings (the default
//! when no subcommand is given) or one of its subcommands.

/// Defines `Cli` in the calling crate: `<binary> [SETTINGS]` runs the service (the same as
/// `<binary> run [SETTINGS]`), `<binary> <subcommand> …` runs one of `Command`'s other variants.
/// The calling crate provides `Settings` (`clap::Args`) and `Command` (`clap::Subcommand`) with
/// a `Run(Box<Settings>)` variant.
#[macro_export]
#[rustfmt::skip] // rustfmt re-indents the attribute inside this body on every run
macro_rules! service_cli {
    (name = $name:literal, about = $about:literal) => {
        /// The command line: `run` (the default when no subcommand is given) or a subcommand.
        #[derive(Debug, Clone, clap::Parser)]
        #[command(
            name = $name,
            version,
            about = $about,
            long_about = None,
            args_conflicts_with_subcommands = true
        )]
        pub struct Cli {
            #[command(subcommand)]
            pub command: Option<Command>,
            #[command(flatten)]
            pub run: Settings,
        }

        impl Cli {
            /// The subcommand to run; `run` with the top-level settings when none was given.
            pub fn into_command(self) -> Command {
                self.command.unwrap_or(Command::Run(Box::new(self.run)))
            }
        }
    };
}

/// Runs a service process: telemetry for `service` (kept until the end), one shutdown token
/// cancelled by SIGTERM or Ctrl-C, and `run` with that token; exit code 0 once it returns `Ok`.
pub async fn run_service<F, Fut>(
    service: &'static str,
    run: F,
) -> anyhow::Result<std::process::ExitCode>
where
    F: FnOnce(tokio_util::sync::CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let _telemetry = crate::telemetry::init(service);
    run(crate::shutdown::on_signal()).await?;
    Ok(std::process::ExitCode::SUCCESS)
}
