//! The configuration file under the command line: command line > environment (`RDIST_*`,
//! resolved by clap) > `rdist.toml` / `[tool.rdist]` > defaults. The result is the same
//! argument structs with the gaps filled, so commands see one set of options whatever their
//! source.
//!
//! A list given on the command line (`--tx`, `--px`, `--rsyncdir`, `--rsyncignore`) replaces
//! the file's list. Workers are one setting: `-n` or `--tx` on the command line replaces both
//! `tx` and `numprocesses` of the file. Roots and `token_file` in the file are relative to its
//! directory; a root that does not exist is reported at its line.

use std::path::Path;

use anyhow::anyhow;
use clap::ValueEnum;
use compat::config::{self, ConfigError, Loaded};

use super::{find_project_root, normalize};
use crate::cli::{CommonArgs, Layout, RunArgs, SyncArgs};
use crate::dispatch::schedule::Mode;
use crate::exit::Failure;

/// `rdist sync`'s options with the configuration file's settings under them.
///
/// # Errors
/// A configuration file that cannot be read or breaks the schema; a root it names that does
/// not exist.
pub fn sync_args(args: &SyncArgs, cwd: &Path) -> Result<SyncArgs, Failure> {
    let mut out = args.clone();
    let Some(loaded) = load(&args.common, cwd)? else {
        return Ok(out);
    };
    common(&mut out.common, &loaded, cwd)?;
    let (c, set) = (&loaded.config, |id: &str| args.common.is_explicit(id));
    if out.common.tx.is_empty() {
        out.common.tx = c.run.tx.clone().unwrap_or_default();
    }
    if let Some(layout) = &c.sync.layout
        && !set("layout")
    {
        out.layout = Layout::from_str(layout, false).map_err(|e| internal(&loaded, &e))?;
    }
    if let Some(secs) = c.sync.lock_wait
        && !set("lock_wait")
    {
        out.lock_wait = secs;
    }
    out.fsync |= c.sync.fsync.unwrap_or(false);
    Ok(out)
}

/// `rdist run`'s (and `rdist check`'s) options with the configuration file's settings under
/// them.
///
/// # Errors
/// As [`sync_args`].
pub fn run_args(args: &RunArgs, cwd: &Path) -> Result<RunArgs, Failure> {
    let mut out = args.clone();
    let Some(loaded) = load(&args.common, cwd)? else {
        return Ok(out);
    };
    common(&mut out.common, &loaded, cwd)?;
    let (c, set) = (&loaded.config.run, |id: &str| args.common.is_explicit(id));
    if args.numprocesses.is_none() && args.common.tx.is_empty() {
        out.numprocesses = c.numprocesses.clone();
        out.common.tx = c.tx.clone().unwrap_or_default();
    }
    if let Some(dist) = &c.dist
        && !set("dist")
    {
        out.dist = Mode::from_str(dist, false).map_err(|e| internal(&loaded, &e))?;
    }
    if let Some(n) = c.max_worker_restart
        && !set("max_worker_restart")
    {
        out.max_worker_restart = n;
    }
    if let Some(secs) = c.heartbeat_timeout
        && !set("heartbeat_timeout")
    {
        out.heartbeat_timeout = secs;
    }
    Ok(out)
}

/// The file `--config` names, else the project's; none with `--no-config`. Its notes are
/// printed here, once.
fn load(args: &CommonArgs, cwd: &Path) -> Result<Option<Loaded>, Failure> {
    if args.no_config {
        return Ok(None);
    }
    let loaded = match &args.config {
        Some(path) => config::read(&cwd.join(path)).map(Some),
        None => config::discover(&find_project_root(cwd)),
    }
    .map_err(|e| failure(&e, cwd))?;
    for note in loaded.iter().flat_map(|l| &l.notes) {
        crate::output::note(note);
    }
    Ok(loaded)
}

fn failure(e: &ConfigError, cwd: &Path) -> Failure {
    let error = match e.kind.as_ref() {
        config::ErrorKind::Read(io) => anyhow!(io.to_string()).context(e.located(cwd)),
        _ => anyhow!(e.located(cwd)),
    };
    let f = Failure::usage(error);
    match e.hint() {
        Some(h) => f.with_hint(h),
        None => f,
    }
}

/// A value the reader accepted but this build cannot map: the two lists disagree.
fn internal(loaded: &Loaded, e: &str) -> Failure {
    Failure::usage(anyhow!(
        "{}: unsupported value ({e})",
        loaded.path.display()
    ))
}

/// The settings `rdist sync`, `run` and `check` share.
fn common(out: &mut CommonArgs, loaded: &Loaded, cwd: &Path) -> Result<(), Failure> {
    let (c, dir) = (&loaded.config, loaded.dir());
    if out.rsyncdir.is_empty()
        && let Some(roots) = &c.sync.roots
    {
        for root in roots {
            let abs = normalize(&dir.join(root));
            if !abs.exists() {
                return Err(Failure::usage(anyhow!(
                    "{}: root `{root}` does not exist",
                    loaded.origin("sync.roots", cwd)
                ))
                .with_hint(format!(
                    "roots in `{}` are relative to its directory, `{}`",
                    loaded.path.file_name().unwrap_or_default().display(),
                    dir.display()
                )));
            }
            out.rsyncdir.push(abs);
        }
    }
    if out.rsyncignore.is_empty() {
        out.rsyncignore = c.sync.ignore.clone().unwrap_or_default();
    }
    if out.px.is_empty() {
        out.px = c.run.px.clone().unwrap_or_default();
    }
    if let Some(secs) = c.run.connect_timeout
        && !out.is_explicit("connect_timeout")
    {
        out.connect_timeout = secs;
    }
    if let Some(secs) = c.run.ssh_reuse
        && !out.is_explicit("ssh_reuse")
    {
        out.ssh_reuse = secs as u64;
    }
    if out.token_file.is_none() {
        out.token_file = c.run.token_file.as_ref().map(|f| dir.join(f));
    }
    out.compress |= c.sync.compress.unwrap_or(false);
    out.from_config.python = c.run.python.clone();
    out.from_config.dir = c.run.dir.clone();
    Ok(())
}
