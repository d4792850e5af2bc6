//! The execnet "xspec" worker grammar that pytest-xdist's `--tx` and `--px` options take:
//! `[N*]key[=value]//key[=value]...`, parsed into an [`XSpec`].
//!
//! The grammar follows execnet (`xspec.py`) and xdist (`parse_tx_spec_config`), but rdist is
//! stricter where execnet fails late or silently:
//!
//! - unknown keys (a typo such as `chdri=`) are errors with a did-you-mean hint, where execnet
//!   ignores them;
//! - empty items (`popen//`), duplicate keys (including a repeated `env:NAME`), a bad `N*` (`0*`,
//!   `x*`, `*popen`), a missing value or a value given to a flag are errors located at the
//!   offending bytes ([`ParseError::span`], [`ParseError::render`]);
//! - a spec needs exactly one gateway (`popen`, `ssh=`, `socket=`, `vagrant_ssh=`); `via=` only
//!   combines with `popen`, and `python=` not with `socket=` (execnet asserts on both);
//! - `ssh=` arguments are split shell-style (quotes work, unlike execnet's `str.split()`) and
//!   read like OpenSSH does, so the host is found among options (`ssh=-p 2222 -i key user@host`);
//! - `socket=` accepts bracketed IPv6 literals (`socket=[::1]:8888`).
//!
//! Keys rdist accepts but does not honour as execnet does (`execmodel=`, `installvia=`,
//! `vagrant_ssh=`) parse fine and are explained by [`XSpec::notes`].
//!
//! [`XSpec`]'s `Display` writes the canonical text, and parsing it gives the same value back.
//! Two values have no spelling in the grammar: a value containing `//`, and more than one value
//! ending in `/` (a value ending in `/` must be the last item, so `Display` moves it there).
//!
//! Proxies (`--px id=NAME//ssh=HOST`) are parsed by [`XSpec::parse_px`] and matched to the
//! `via=NAME` of worker specs by [`resolve`].

use std::num::NonZeroU32;
use std::str::FromStr;

mod display;
mod error;
mod keys;
mod parse;
mod proxy;
mod values;

#[cfg(test)]
mod tests_errors;
#[cfg(test)]
mod tests_proxy;
#[cfg(test)]
mod tests_valid;

pub use error::{ErrorKind, ParseError};
pub(crate) use keys::closest;
pub use proxy::{Placement, ResolveError, resolve};

/// One `--tx` (or `--px`) worker spec.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct XSpec {
    /// The `N*` multiplier: how many identical workers this spec starts (1 when absent).
    pub count: NonZeroU32,
    /// How to reach the interpreter that runs the worker.
    pub gateway: Gateway,
    /// `ssh_config=PATH`: passed to ssh as `-F PATH`.
    pub ssh_config: Option<String>,
    /// `python=EXE`: the worker's interpreter, possibly with a wrapper (`sudo -u svc python3`).
    pub python: Option<String>,
    /// `chdir=DIR`: the worker's working directory, and for xdist the rsync target.
    pub chdir: Option<String>,
    /// `nice=N`: the worker's niceness increment.
    pub nice: Option<i32>,
    /// `env:NAME=VALUE` items, in the order given; names are distinct.
    pub env: Vec<(String, String)>,
    /// `id=NAME`: the gateway id, which becomes the worker id.
    pub id: Option<String>,
    /// `via=NAME`: start this worker from the proxy whose `id` is `NAME`.
    pub via: Option<String>,
    /// `dont_write_bytecode`: run Python with `-B`.
    pub dont_write_bytecode: bool,
    /// `execmodel=MODEL`: accepted and ignored (see [`XSpec::notes`]).
    pub execmodel: Option<String>,
    /// `installvia=ID`: accepted but not supported (see [`XSpec::notes`]).
    pub installvia: Option<String>,
}

/// The transport a spec names; exactly one per spec.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Gateway {
    /// `popen`: a local subprocess (or, with `via=`, a subprocess on the proxy's host).
    Popen,
    /// `ssh=ARGS`: `args` are the OpenSSH options in order, `host` is the destination
    /// (`[user@]host`).
    Ssh { args: Vec<String>, host: String },
    /// `socket=HOST:PORT`: a TCP connection to a running socket server; `host` has no brackets.
    Socket { host: String, port: u16 },
    /// `vagrant_ssh=HOST`: a Vagrant machine, reached by rdist as the ssh host `HOST`.
    VagrantSsh { host: String },
}

impl Gateway {
    /// The key that names this gateway in a spec: `popen`, `ssh`, `socket` or `vagrant_ssh`.
    pub fn key(&self) -> &'static str {
        match self {
            Gateway::Popen => "popen",
            Gateway::Ssh { .. } => "ssh",
            Gateway::Socket { .. } => "socket",
            Gateway::VagrantSsh { .. } => "vagrant_ssh",
        }
    }
}

/// How serious a [`SpecNote`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NoteLevel {
    /// rdist runs the spec, but not exactly as xdist would.
    Warn,
    /// rdist cannot run the spec as written; callers should refuse it.
    Error,
}

/// An explanation of a key rdist accepts but treats differently from execnet.
///
/// The message is one lowercase line naming the key and value in backticks, with what to do.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpecNote {
    pub level: NoteLevel,
    pub message: String,
}

impl std::fmt::Display for SpecNote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl XSpec {
    /// A spec with `gateway`, a count of 1 and no other keys.
    pub fn new(gateway: Gateway) -> Self {
        XSpec {
            count: NonZeroU32::MIN,
            gateway,
            ssh_config: None,
            python: None,
            chdir: None,
            nice: None,
            env: Vec::new(),
            id: None,
            via: None,
            dont_write_bytecode: false,
            execmodel: None,
            installvia: None,
        }
    }

    /// Parses a `--px` proxy spec: no `N*`, an `id=` is required and `via=` is refused.
    ///
    /// # Errors
    /// Everything [`XSpec::from_str`] rejects, plus [`ErrorKind::CountNotAllowed`],
    /// [`ErrorKind::ProxyWithoutId`] and [`ErrorKind::ProxyWithVia`].
    pub fn parse_px(input: &str) -> Result<Self, ParseError> {
        parse::parse_px(input)
    }

    /// One spec per worker: `count` copies of this spec, each with a count of 1.
    pub fn expand(&self) -> Vec<XSpec> {
        let one = XSpec {
            count: NonZeroU32::MIN,
            ..self.clone()
        };
        vec![one; self.count.get() as usize]
    }

    /// True for a worker on this machine: `popen` without `via=`.
    pub fn is_local(&self) -> bool {
        self.gateway == Gateway::Popen && self.via.is_none()
    }

    /// Explanations for keys rdist accepts but handles differently from execnet, in key order;
    /// empty for most specs.
    pub fn notes(&self) -> Vec<SpecNote> {
        let mut notes = Vec::new();
        if let Gateway::VagrantSsh { host } = &self.gateway {
            notes.push(SpecNote {
                level: NoteLevel::Warn,
                message: format!(
                    "`vagrant_ssh={host}` is reached as `ssh {host}`: rdist needs the vagrant \
                     host in your ssh config (`vagrant ssh-config {host} >> ~/.ssh/config`)"
                ),
            });
        }
        if let Some(model) = &self.execmodel {
            notes.push(SpecNote {
                level: NoteLevel::Warn,
                message: format!(
                    "`execmodel={model}` is ignored: rdist workers are always separate processes"
                ),
            });
        }
        if let Some(id) = &self.installvia {
            notes.push(SpecNote {
                level: NoteLevel::Error,
                message: format!(
                    "`installvia={id}` is not supported: start `rdist serve` on the target host \
                     and connect with `socket=HOST:PORT`"
                ),
            });
        }
        notes
    }
}

impl FromStr for XSpec {
    type Err = ParseError;

    /// Parses a `--tx` spec, `N*` multiplier included.
    fn from_str(input: &str) -> Result<Self, ParseError> {
        parse::parse_tx(input)
    }
}
