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

use clap::Parser;

pub use exit::{Code, Failure};

/// Runs the command line of this process and returns its exit code.
pub fn main() -> ExitCode {
    let args = match cli::Cli::try_parse() {
        Ok(a) => a,
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
