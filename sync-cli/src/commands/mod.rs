//! One module per subcommand; `run` dispatches.

pub mod agent;
pub mod check;
pub mod migrate;
pub mod run;
pub mod serve;
pub mod sync;

use crate::cli::{Cli, Command};
use crate::exit::{Code, Failure};

/// Runs a parsed command line.
///
/// # Errors
/// The command's fatal failure.
pub fn run(cli: Cli) -> Result<Code, Failure> {
    match cli.command {
        Command::Sync(args) => sync::run(&args),
        Command::Agent(args) => agent::run(&args),
        Command::Serve(args) => serve::run(&args),
        Command::Run(args) => run::run(&args),
        Command::Migrate(args) => migrate::run(&args),
        Command::Check(args) => check::run(&args),
    }
}
