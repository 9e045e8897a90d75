//! The command line every service binary shares: `run` with the service's settings (the default
//! when no subcommand is given) or one of its subcommands.

/// Defines `Cli` in the calling crate: `<binary> [SETTINGS]` runs the service (the same as
/// `<binary> run [SETTINGS]`), `<binary> <subcommand> …` runs one of `Command`'s other variants.
/// The calling crate provides `Settings` (`clap::Args`) and `Command` (`clap::Subcommand`) with
/// a `Run(Box<Settings>)` variant.
#[macro_export]
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
