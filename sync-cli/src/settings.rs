//! From parsed arguments to validated settings: the configuration file laid under them
//! ([`layers`]), the project root, the sync roots and where each lands, the ignore rules, and the
//! distinct sync targets. Every user error is found here, before
//! any work starts, with a message naming the offending value and a hint.

use std::path::{Path, PathBuf};

use anyhow::anyhow;
use compat::xspec::{Gateway, NoteLevel, XSpec};
use sync_core::filter::Filter;
use sync_core::path::RelPath;
use sync_core::proto::DestBase;
use sync_core::walk::WalkRoot;

use crate::cli::{Layout, SyncArgs};
use crate::exit::Failure;

mod layers;

pub use layers::{run_args, sync_args};

/// Files whose presence marks a project root, in the order they are looked for. Those present
/// in the project root are always synced.
pub const PROJECT_FILES: [&str; 5] = [
    "rdist.toml",
    "pyproject.toml",
    "pytest.ini",
    "tox.ini",
    "setup.cfg",
];

/// A distinct place to sync to, and how many workers use it.
#[derive(Debug, Clone)]
pub struct Target {
    /// The worker specs that share this destination, as given.
    pub specs: Vec<String>,
    pub workers: u32,
    pub transport: Transport,
    /// The destination as the agent resolves it (see `base`).
    pub dest: String,
    pub base: DestBase,
}

/// How the agent for a target is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// This binary as a local child process.
    Local,
    /// `ssh [args] host rdist agent --stdio`.
    Ssh { args: Vec<String>, host: String },
    /// A TCP connection to `rdist serve`.
    Socket { host: String, port: u16 },
}

impl Target {
    /// The destination as shown to users: `dir`, `host:dir`, `host:port/dir`.
    pub fn dest_label(&self) -> String {
        let dest = match self.base {
            DestBase::Cache => format!("<rdist cache>/{}", self.dest),
            DestBase::Home if !self.dest.starts_with('/') => format!("~/{}", self.dest),
            _ => self.dest.clone(),
        };
        match &self.transport {
            Transport::Local => dest,
            Transport::Ssh { host, .. } => format!("{host}:{dest}"),
            Transport::Socket { host, port } => format!("{host}:{port}/{dest}"),
        }
    }
}

/// Everything `rdist sync` needs.
#[derive(Debug)]
pub struct SyncSettings {
    pub project_root: PathBuf,
    pub roots: Vec<WalkRoot>,
    pub filter: Filter,
    /// The patterns the agent uses to protect worker-only entries.
    pub agent_ignore: Vec<String>,
    pub targets: Vec<Target>,
    pub dry_run: bool,
    pub fsync: bool,
    /// Compress data to remote workers (`--compress`).
    pub compress: bool,
    pub adopt: bool,
    pub lock_wait_ms: u64,
    pub verbose: bool,
    pub json: bool,
    pub cache_file: Option<PathBuf>,
    /// Seconds to wait for a worker host to answer.
    pub connect_timeout: std::time::Duration,
    /// The token for `socket=` workers (`rdist serve`).
    pub token: Option<String>,
    /// OpenSSH connection reuse for `ssh=` workers; `None` when turned off.
    pub ssh_reuse: Option<SshReuse>,
    /// Things worth telling the user once (legacy behaviour that rdist changes).
    pub notes: Vec<String>,
}

/// How `ssh=` workers keep a master connection for the next run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshReuse {
    /// rdist's cache directory; control sockets go in `ssh/` below it.
    pub cache: PathBuf,
    /// How long a master outlives its last session.
    pub persist: std::time::Duration,
}

/// rdist's cache directory on this machine: `$RDIST_CACHE_DIR`, else the platform cache
/// directory (`$XDG_CACHE_HOME` or `~/.cache`) + `rdist`.
pub fn cache_dir() -> Option<PathBuf> {
    std::env::var_os("RDIST_CACHE_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| dirs::cache_dir().map(|d| d.join("rdist")))
}

/// The directory of the nearest project file upward from `start`, else `start`.
pub fn find_project_root(start: &Path) -> PathBuf {
    for dir in start.ancestors() {
        if PROJECT_FILES.iter().any(|f| dir.join(f).is_file()) {
            return dir.to_owned();
        }
    }
    start.to_owned()
}

/// Lexically normalises `p` (no file-system access): drops `.`, resolves `..`.
pub use sync_core::scan::normalize;

fn rel_of(root: &Path, p: &Path) -> Option<Option<RelPath>> {
    let sub = p.strip_prefix(root).ok()?;
    if sub.as_os_str().is_empty() {
        return Some(None);
    }
    RelPath::from_path(sub).ok().map(Some)
}

impl SyncSettings {
    /// Validates `args` against the file system as seen from `cwd`.
    ///
    /// # Errors
    /// A usage failure naming the bad value.
    pub fn from_args(args: &SyncArgs, cwd: &Path) -> Result<SyncSettings, Failure> {
        let (sync, args) = (args, &args.common);
        let layout = sync.layout;
        let cwd = std::fs::canonicalize(cwd).map_err(|e| {
            Failure::usage(anyhow!(e).context("cannot resolve the current directory"))
        })?;
        let project_root = find_project_root(&cwd);
        let mut notes = Vec::new();

        let filter = Filter::new(&args.rsyncignore).map_err(|e| {
            Failure::usage(e)
                .with_hint("patterns are globs: `*`, `?`, `[abc]`, `**` across directories")
        })?;

        if args.rsyncdir.is_empty() {
            return Err(Failure::usage(anyhow!("no sync roots given")).with_hint(
                "name what to mirror with `--rsyncdir DIR` (repeatable), e.g. `--rsyncdir .`, \
                 or with `roots` in the `[sync]` table of `rdist.toml`",
            ));
        }
        if args.tx.is_empty() {
            return Err(Failure::usage(anyhow!("no workers given")).with_hint(
                "name where to sync with `--tx SPEC` (repeatable), e.g. `--tx popen//chdir=DIR`, \
                 or with `tx` in the `[run]` table of `rdist.toml`",
            ));
        }
        let mut resolved: Vec<(PathBuf, String)> = Vec::new();
        for raw in &args.rsyncdir {
            let abs = std::fs::canonicalize(cwd.join(raw)).map_err(|e| {
                Failure::usage(
                    anyhow!(e).context(format!("rsyncdir `{}` does not exist", raw.display())),
                )
                .with_hint("paths given to `--rsyncdir` are relative to the current directory")
            })?;
            if !abs.starts_with(&project_root) {
                return Err(Failure::usage(anyhow!(
                    "rsyncdir `{}` is outside the project root `{}`",
                    raw.display(),
                    project_root.display()
                ))
                .with_hint(
                    "run rdist from inside the project that contains it, or put an `rdist.toml` in a \
                     directory above both",
                ));
            }
            let name = abs.file_name().map(|n| n.to_string_lossy().into_owned());
            if let Some(n) = &name
                && filter.is_name_ignored(n, abs.is_dir())
            {
                return Err(Failure::usage(anyhow!(
                    "rsyncdir `{}` is itself ignored by the ignore rules",
                    raw.display()
                ))
                .with_hint("`.*`, `*.pyc`, `*.pyo` and `*~` are always ignored"));
            }
            resolved.push((abs, raw.display().to_string()));
        }

        let roots = match layout {
            Layout::Rdist => rdist_layout(&project_root, resolved)?,
            Layout::Xdist => {
                notes.push(
                    "--layout xdist: roots land at `<dir>/<basename>` as in pytest-xdist; test ids \
                     on workers may differ from local ones"
                        .to_owned(),
                );
                xdist_layout(&project_root, resolved)?
            }
        };
        // Path patterns are anchored at the project root, which only matches destination paths
        // in the rdist layout; under the xdist layout the agent protects by name only.
        let agent_ignore = match layout {
            Layout::Rdist => args.rsyncignore.clone(),
            Layout::Xdist => args
                .rsyncignore
                .iter()
                .filter(|p| !p.trim_end_matches('/').contains('/'))
                .cloned()
                .collect(),
        };

        let token = match (&args.token_file, std::env::var("RDIST_TOKEN")) {
            (Some(f), _) => Some(std::fs::read_to_string(f).map_err(|e| {
                Failure::usage(
                    anyhow!(e).context(format!("cannot read token file `{}`", f.display())),
                )
            })?),
            (None, Ok(t)) if !t.trim().is_empty() => Some(t),
            _ => None,
        };
        let project_key = project_key(&project_root);
        let default_dir = args.from_config.dir.as_deref();
        let targets = targets(
            &args.tx,
            &args.px,
            &cwd,
            &project_key,
            default_dir,
            &mut notes,
        )?;
        if token.is_none()
            && targets
                .iter()
                .any(|t| matches!(t.transport, Transport::Socket { .. }))
        {
            return Err(Failure::usage(anyhow!("`socket=` workers need the server's token"))
                .with_hint("set `RDIST_TOKEN` or pass `--token-file FILE` (the token `rdist serve` printed)"));
        }
        let cache = args
            .cache_dir
            .clone()
            .or_else(|| dirs::cache_dir().map(|d| d.join("rdist")));
        let ssh_reuse = cache
            .clone()
            .filter(|_| args.ssh_reuse > 0)
            .map(|cache| SshReuse {
                cache,
                persist: std::time::Duration::from_secs(args.ssh_reuse),
            });
        let cache_file = cache.map(|d| {
            let key = blake3::hash(project_root.as_os_str().as_encoded_bytes()).to_hex();
            d.join("hashes").join(&key[..16])
        });
        Ok(SyncSettings {
            project_root,
            roots,
            filter,
            agent_ignore,
            targets,
            dry_run: sync.dry_run,
            fsync: sync.fsync,
            compress: sync.common.compress,
            adopt: sync.adopt,
            lock_wait_ms: (sync.lock_wait.max(0.0) * 1000.0) as u64,
            verbose: sync.verbose,
            json: sync.json,
            cache_file,
            connect_timeout: std::time::Duration::from_secs_f64(args.connect_timeout.max(0.1)),
            token,
            ssh_reuse,
            notes,
        })
    }
}

/// Roots at their project-relative paths; nested roots fold into their parent; the project's
/// config files come along.
fn rdist_layout(
    project_root: &Path,
    mut resolved: Vec<(PathBuf, String)>,
) -> Result<Vec<WalkRoot>, Failure> {
    for f in PROJECT_FILES {
        let p = project_root.join(f);
        if p.is_file() {
            resolved.push((p, f.to_owned()));
        }
    }
    resolved.sort_by(|a, b| a.0.cmp(&b.0));
    let mut roots: Vec<WalkRoot> = Vec::new();
    for (abs, raw) in resolved {
        if roots.iter().any(|r| abs.starts_with(&r.abs)) {
            continue;
        }
        let rel = rel_of(project_root, &abs).ok_or_else(|| {
            Failure::usage(anyhow!(
                "rsyncdir `{raw}` has a name rdist cannot sync (not UTF-8)"
            ))
        })?;
        roots.push(WalkRoot {
            abs,
            filter_rel: rel.clone(),
            dest_rel: rel,
        });
    }
    Ok(roots)
}

/// Roots at `<dest>/<basename>`, as xdist placed them; two roots with one basename are an error
/// instead of xdist's silent mutual deletion.
fn xdist_layout(
    project_root: &Path,
    resolved: Vec<(PathBuf, String)>,
) -> Result<Vec<WalkRoot>, Failure> {
    let mut roots: Vec<(WalkRoot, String)> = Vec::new();
    for (abs, raw) in resolved {
        if roots.iter().any(|(r, _)| r.abs == abs) {
            continue;
        }
        let Some(name) = abs
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| RelPath::new(n).ok())
        else {
            return Err(Failure::usage(anyhow!(
                "rsyncdir `{raw}` has no usable base name for `--layout xdist`"
            ))
            .with_hint("use the default `--layout rdist`"));
        };
        if let Some((_, other)) = roots
            .iter()
            .find(|(r, _)| r.dest_rel.as_ref() == Some(&name))
        {
            return Err(Failure::usage(anyhow!(
                "rsyncdirs `{other}` and `{raw}` would both land in `{name}` under `--layout xdist`"
            ))
            .with_hint("use the default `--layout rdist`, which keeps their project paths"));
        }
        let filter_rel = rel_of(project_root, &abs).flatten();
        roots.push((
            WalkRoot {
                abs,
                filter_rel,
                dest_rel: Some(name),
            },
            raw,
        ));
    }
    Ok(roots.into_iter().map(|(r, _)| r).collect())
}

/// `<project dir name>-<8 hex of its path>`: the default directory name for a project on a
/// remote host, distinct per project and stable across runs.
pub fn project_key(project_root: &Path) -> String {
    let name: String = project_root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "project".to_owned())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let name = name.trim_start_matches('.');
    let hash = blake3::hash(project_root.as_os_str().as_encoded_bytes()).to_hex();
    format!(
        "{}-{}",
        if name.is_empty() { "project" } else { name },
        &hash[..8]
    )
}

fn parse_spec(raw: &str, px: bool) -> Result<XSpec, Failure> {
    let parsed = if px {
        XSpec::parse_px(raw)
    } else {
        raw.parse()
    };
    parsed.map_err(|e: compat::xspec::ParseError| {
        let hint = e.hint();
        let what = if px { "proxy spec" } else { "worker spec" };
        let mut f = Failure::usage(anyhow!("invalid {what}: {e}\n{}", e.carets(raw)));
        if let Some(h) = hint {
            f = f.with_hint(h);
        }
        f
    })
}

fn targets(
    tx: &[String],
    px: &[String],
    cwd: &Path,
    project_key: &str,
    default_dir: Option<&str>,
    notes: &mut Vec<String>,
) -> Result<Vec<Target>, Failure> {
    let tx_specs: Vec<XSpec> = tx
        .iter()
        .map(|raw| parse_spec(raw, false))
        .collect::<Result<_, _>>()?;
    let px_specs: Vec<XSpec> = px
        .iter()
        .map(|raw| parse_spec(raw, true))
        .collect::<Result<_, _>>()?;
    let placements = compat::xspec::resolve(&tx_specs, &px_specs).map_err(|e| {
        let hint = e.hint();
        let mut f = Failure::usage(anyhow!(e));
        if let Some(h) = hint {
            f = f.with_hint(h);
        }
        f
    })?;
    let mut out: Vec<Target> = Vec::new();
    for (raw, place) in tx.iter().zip(placements) {
        let spec = place.spec;
        for note in spec
            .notes()
            .into_iter()
            .chain(place.proxy.map(XSpec::notes).unwrap_or_default())
        {
            match note.level {
                NoteLevel::Warn => notes.push(format!("`{raw}`: {}", note.message)),
                NoteLevel::Error => {
                    return Err(Failure::usage(anyhow!(
                        "worker spec `{raw}`: {}",
                        note.message
                    )));
                }
            }
        }
        // A worker `via` a proxy runs on the proxy's host: sync there.
        let gateway = place.proxy.map_or(&spec.gateway, |p| &p.gateway);
        // `[run] dir` of the configuration file stands in for a remote worker's `chdir=`.
        let chdir = spec
            .chdir
            .as_deref()
            .or(default_dir.filter(|_| !spec.is_local()));
        let (transport, dest, base) = match gateway {
            Gateway::Popen => match chdir {
                Some(dir) => {
                    let dir = expand_home(dir);
                    (
                        Transport::Local,
                        normalize(&cwd.join(dir)).display().to_string(),
                        DestBase::Cwd,
                    )
                }
                None => {
                    notes.push(format!(
                        "`{raw}` has no `chdir=`: a local worker without one runs in place, so there \
                         is nothing to sync for it"
                    ));
                    continue;
                }
            },
            Gateway::Ssh { args, host } => ssh_place(args.clone(), host, chdir, project_key),
            Gateway::Socket { host, port } => {
                let transport = Transport::Socket {
                    host: host.clone(),
                    port: *port,
                };
                match chdir {
                    Some(dir) if RelPath::new(dir.trim_end_matches('/')).is_ok() => (
                        transport,
                        dir.trim_end_matches('/').to_owned(),
                        DestBase::Cwd,
                    ),
                    Some(dir) => {
                        return Err(Failure::usage(anyhow!(
                            "worker spec `{raw}`: `chdir={dir}` must be a plain relative path for a \
                             `socket=` worker"
                        ))
                        .with_hint("`rdist serve` keeps every session below its `--root`"));
                    }
                    None => (transport, project_key.to_owned(), DestBase::Cwd),
                }
            }
            // `vagrant ssh-config` hosts are reached as ssh aliases (see the spec's note).
            Gateway::VagrantSsh { host } => ssh_place(Vec::new(), host, chdir, project_key),
        };
        let workers = spec.count.get();
        match out
            .iter_mut()
            .find(|t| t.transport == transport && t.dest == dest && t.base == base)
        {
            Some(t) => {
                t.specs.push(raw.clone());
                t.workers += workers;
            }
            None => out.push(Target {
                specs: vec![raw.clone()],
                workers,
                transport,
                dest,
                base,
            }),
        }
    }
    if out.is_empty() {
        return Err(
            Failure::usage(anyhow!("none of the `--tx` workers needs a sync"))
                .with_hint("give a worker a directory to sync into: `--tx popen//chdir=DIR`"),
        );
    }
    Ok(out)
}

/// Transport and destination of an ssh worker: `chdir=` relative to the login directory (as in
/// xdist) or absolute, else a per-project directory in rdist's cache on the host.
fn ssh_place(
    args: Vec<String>,
    host: &str,
    chdir: Option<&str>,
    project_key: &str,
) -> (Transport, String, DestBase) {
    let transport = Transport::Ssh {
        args,
        host: host.to_owned(),
    };
    match chdir {
        Some(dir) => (
            transport,
            dir.trim_start_matches("~/").to_owned(),
            home_or_abs(dir),
        ),
        None => (transport, format!("work/{project_key}"), DestBase::Cache),
    }
}

/// Relative `chdir=` of a remote worker is relative to the login directory, as in xdist.
fn home_or_abs(dir: &str) -> DestBase {
    if dir.starts_with('/') {
        DestBase::Cwd
    } else {
        DestBase::Home
    }
}

fn expand_home(dir: &str) -> PathBuf {
    match (dir.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ if dir == "~" => std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| dir.into()),
        _ => PathBuf::from(dir),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_root_is_the_nearest_marked_directory() {
        let t = tempfile::tempdir().unwrap();
        let deep = t.path().join("a/b/c");
        std::fs::create_dir_all(&deep).unwrap();
        assert_eq!(find_project_root(&deep), deep);
        std::fs::write(t.path().join("a/tox.ini"), "").unwrap();
        assert_eq!(find_project_root(&deep), t.path().join("a"));
        std::fs::write(t.path().join("a/b/rdist.toml"), "").unwrap();
        assert_eq!(find_project_root(&deep), t.path().join("a/b"));
    }

    #[test]
    fn normalize_is_lexical() {
        assert_eq!(normalize(Path::new("/a/./b/../c")), PathBuf::from("/a/c"));
    }
}
