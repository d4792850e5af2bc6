//! The `rdist` command: argument parsing, settings, transports to agents, and output. The
//! engine lives in `sync-core`; legacy xdist grammar in `compat`. This crate is the glue and the
//! only place that prints or exits.

pub mod check;
pub mod cli;
pub mod commands;
pub mod dispatch;
pub mod exit;
pub mod output;
pub mod settings;
pub mod transport;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

pub use exit::{Code, Failure};

/// Runs the command line of this process and returns its exit code.
pub fn main() -> ExitCode {
    let argv = cli::interleaved::reorder(std::env::args_os().collect());
    let parsed = cli::Cli::command()
        .try_get_matches_from(argv)
        .and_then(|m| cli::Cli::from_arg_matches(&m).map(|a| (a, m)));
    let args = match parsed {
        Ok((mut args, matches)) => {
            if let Some((_, sub)) = matches.subcommand() {
                args.command.note_explicit(sub);
            }
            args
        }
        Err(e) => {
            let code = match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    Code::Ok
                }
                _ => Code::Usage,
            };
            let _ = e.print();
            return code.into();
        }
    };
    match commands::run(args) {
        Ok(code) => code.into(),
        Err(f) => {
            output::print_failure(&f);
            f.code.into()
        }
    }
}
