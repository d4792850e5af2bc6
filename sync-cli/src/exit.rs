//! Exit codes, one enum for every command, mirroring pytest's so `rdist run` can stand in for it;
//! and the fatal-error type commands return.

use std::process::ExitCode;

/// The documented exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Code {
    /// Everything worked.
    Ok = 0,
    /// The work ran but something failed: a target, a file, a test.
    Failed = 1,
    /// Interrupted by the user.
    Interrupted = 2,
    /// A bug or an unexpected internal state.
    Internal = 3,
    /// Bad command line, spec or configuration.
    Usage = 4,
    /// Nothing to do where something was expected (pytest: no tests collected).
    Empty = 5,
}

impl From<Code> for ExitCode {
    fn from(c: Code) -> ExitCode {
        ExitCode::from(c as u8)
    }
}

/// A fatal error: what went wrong (with causes), a hint, and the exit code.
#[derive(Debug)]
pub struct Failure {
    pub error: anyhow::Error,
    pub hint: Option<String>,
    pub code: Code,
}

impl Failure {
    pub fn usage(error: impl Into<anyhow::Error>) -> Failure {
        Failure {
            error: error.into(),
            hint: None,
            code: Code::Usage,
        }
    }

    pub fn failed(error: impl Into<anyhow::Error>) -> Failure {
        Failure {
            error: error.into(),
            hint: None,
            code: Code::Failed,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Failure {
        self.hint = Some(hint.into());
        self
    }
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Failure {
        Failure {
            error,
            hint: None,
            code: Code::Failed,
        }
    }
}
