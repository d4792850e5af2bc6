//! Reading pytest-xdist's rsync configuration wherever it lives, and translating it to rdist.
//!
//! - [`discover`]: which config file pytest 9 uses, its pytest section with each value's line,
//!   and the dead pre-2010 `conftest.py` globals;
//! - [`ini`]: iniconfig's dialect; [`values`]: pytest's value splitting (shlex, TOML lists);
//! - [`options`]: the xdist options in `addopts`, `PYTEST_ADDOPTS` and a command line;
//! - [`patterns`]: xdist ignore globs (anchored at the ini directory, or basename-or-absolute
//!   from the command line, `*` crossing `/`) in rdist's pattern language;
//! - [`edit`]: the edits that take the rsync settings out of the legacy config file;
//! - [`translate`]: all of it combined into a [`Migration`]: the settings found, the
//!   `rdist.toml` to write ([`RdistConfig`]), an equivalent `rdist run` line and the notes on
//!   what behaves differently.
//!
//! Nothing here prints; discovery reads files, translation is pure.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

pub mod discover;
pub mod edit;
pub mod ini;
pub mod options;
pub mod patterns;
pub mod render;
pub mod translate;
pub mod values;

#[cfg(test)]
mod tests_discover;
#[cfg(test)]
mod tests_translate;

pub use discover::{ConfigFile, DeadGlobal, Format, discover as discover_config};
pub use edit::FileEdit;
pub use render::RdistConfig;
pub use translate::{Input, Mapping, Migration, Note, NoteLevel, RunLine, Setting, migrate};

/// Where a legacy setting (or an error) comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum Origin {
    /// A line of a file.
    File { path: PathBuf, line: usize },
    /// The `PYTEST_ADDOPTS` environment variable.
    Env,
    /// The command line being translated.
    Command,
}

impl Origin {
    /// `path:line` with the path relative to `cwd` when it lies below it.
    pub fn display_from(&self, cwd: &Path) -> String {
        match self {
            Origin::File { path, line } => {
                let shown = path.strip_prefix(cwd).unwrap_or(path);
                format!("{}:{line}", shown.display())
            }
            Origin::Env => "PYTEST_ADDOPTS".to_owned(),
            Origin::Command => "command line".to_owned(),
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display_from(Path::new("")))
    }
}

/// A legacy configuration rdist cannot read, located where possible.
#[derive(Debug, thiserror::Error)]
#[error("{kind}")]
pub struct LegacyError {
    pub origin: Option<Origin>,
    pub kind: ErrorKind,
}

/// Why a legacy configuration cannot be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    #[error("cannot read `{path}`")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// iniconfig's message.
    #[error("{0}")]
    Ini(String),
    #[error("invalid TOML: {0}")]
    Toml(String),
    #[error(
        "[pytest] section in setup.cfg files is no longer supported, change to [tool:pytest] \
         instead"
    )]
    SetupCfgPytestSection,
    #[error(
        "cannot use both [tool.pytest] (native TOML types) and [tool.pytest.ini_options] \
         (string-based INI format)"
    )]
    BothTables,
    #[error("pytest configuration must be under a [pytest] table (found top-level options: {0})")]
    TopLevelOptions(String),
    #[error(transparent)]
    Split(#[from] values::SplitError),
    #[error("`{option}` expects a value")]
    MissingValue { option: String },
    #[error("invalid `{option}` value `{value}`: expected {expected}")]
    InvalidValue {
        option: String,
        value: String,
        expected: String,
    },
    #[error("-o/--override-ini expects option=value style (got: `{value}`)")]
    OverrideSyntax { value: String },
    /// `rendered` is the xspec error with its caret lines.
    #[error("invalid worker spec: {rendered}")]
    Spec {
        rendered: String,
        hint: Option<String>,
    },
}

impl LegacyError {
    /// `origin: message`, with file paths relative to `cwd`.
    pub fn located(&self, cwd: &Path) -> String {
        match &self.origin {
            Some(origin) => format!("{}: {}", origin.display_from(cwd), self.kind),
            None => self.kind.to_string(),
        }
    }

    /// What to do about it, as one lowercase line without the `hint:` prefix.
    pub fn hint(&self) -> Option<String> {
        Some(match &self.kind {
            ErrorKind::Read { .. } => "check the file's permissions".to_owned(),
            ErrorKind::Ini(_) => {
                "pytest stops at this line too; fix it (continuation lines start with \
                 whitespace, comments with `#` or `;`)"
                    .to_owned()
            }
            ErrorKind::Toml(_) => "pytest stops at this line too; fix the TOML".to_owned(),
            ErrorKind::SetupCfgPytestSection => "rename the section to `[tool:pytest]`".to_owned(),
            ErrorKind::BothTables => {
                "move everything into `[tool.pytest]` (lists) or `[tool.pytest.ini_options]`"
                    .to_owned()
            }
            ErrorKind::TopLevelOptions(_) => "add a `[pytest]` line above them".to_owned(),
            ErrorKind::Split(values::SplitError::ExpectsList { text, .. }) => {
                let items = values::shlex_split(text).unwrap_or_else(|_| vec![text.clone()]);
                let quoted: Vec<String> = items.iter().map(|i| format!("\"{i}\"")).collect();
                format!("write a list: `[{}]`", quoted.join(", "))
            }
            ErrorKind::Split(_) => "close the quote, or escape it with `\\`".to_owned(),
            ErrorKind::MissingValue { option } => format!("write `{option}=VALUE`"),
            ErrorKind::InvalidValue { .. } => return None,
            ErrorKind::OverrideSyntax { .. } => "write `-o rsyncdirs=src tests`".to_owned(),
            ErrorKind::Spec { hint, .. } => return hint.clone(),
        })
    }
}
