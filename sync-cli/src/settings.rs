//! From parsed arguments to validated settings: the project root, the sync roots and where each
//! lands, the ignore rules, and the distinct sync targets. Every user error is found here, before
//! any work starts, with a message naming the offending value and a hint.

use std::path::{Component, Path, PathBuf};

use anyhow::anyhow;
use compat::xspec::{Gateway, NoteLevel, XSpec};
use sync_core::filter::Filter;
use sync_core::path::RelPath;
use sync_core::walk::WalkRoot;

use crate::cli::{Layout, SyncArgs};
use crate::exit::Failure;

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
    pub kind: TargetKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetKind {
    /// A local agent process syncing into `dest`.
    Popen { dest: PathBuf },
}

impl Target {
    /// The destination as shown to users.
    pub fn dest_label(&self) -> String {
        match &self.kind {
            TargetKind::Popen { dest } => dest.display().to_string(),
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
    pub adopt: bool,
    pub lock_wait_ms: u64,
    pub verbose: bool,
    pub json: bool,
    pub cache_file: Option<PathBuf>,
    /// Things worth telling the user once (legacy behaviour that rdist changes).
    pub notes: Vec<String>,
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
pub fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

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
                "name what to mirror with `--rsyncdir DIR` (repeatable), e.g. `--rsyncdir .`",
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

        let roots = match args.layout {
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
        let agent_ignore = match args.layout {
            Layout::Rdist => args.rsyncignore.clone(),
            Layout::Xdist => args
                .rsyncignore
                .iter()
                .filter(|p| !p.trim_end_matches('/').contains('/'))
                .cloned()
                .collect(),
        };

        let targets = targets(&args.tx, &cwd, &mut notes)?;
        let cache_file = args
            .cache_dir
            .clone()
            .or_else(|| dirs::cache_dir().map(|d| d.join("rdist")))
            .map(|d| {
                let key = blake3::hash(project_root.as_os_str().as_encoded_bytes()).to_hex();
                d.join("hashes").join(&key[..16])
            });
        Ok(SyncSettings {
            project_root,
            roots,
            filter,
            agent_ignore,
            targets,
            dry_run: args.dry_run,
            fsync: args.fsync,
            adopt: args.adopt,
            lock_wait_ms: (args.lock_wait.max(0.0) * 1000.0) as u64,
            verbose: args.verbose,
            json: args.json,
            cache_file,
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

fn targets(tx: &[String], cwd: &Path, notes: &mut Vec<String>) -> Result<Vec<Target>, Failure> {
    let mut out: Vec<Target> = Vec::new();
    for raw in tx {
        let spec: XSpec = raw.parse().map_err(|e: compat::xspec::ParseError| {
            let hint = e.hint();
            // `render` repeats the message and hint around the caret lines; keep only the carets.
            let rendered = e.render(raw);
            let carets: Vec<&str> = rendered
                .lines()
                .skip(1)
                .filter(|l| !l.starts_with("hint:"))
                .collect();
            let mut f = Failure::usage(anyhow!("invalid worker spec: {e}\n{}", carets.join("\n")));
            if let Some(h) = hint {
                f = f.with_hint(h);
            }
            f
        })?;
        for note in spec.notes() {
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
        if spec.via.is_some() {
            return Err(Failure::usage(anyhow!(
                "worker spec `{raw}` uses `via=`, which `rdist sync` does not support yet"
            ))
            .with_hint("sync to the proxy host's directory directly with `popen//chdir=DIR`"));
        }
        let kind = match (&spec.gateway, &spec.chdir) {
            (Gateway::Popen, Some(dir)) => {
                let dir = expand_home(dir);
                TargetKind::Popen {
                    dest: normalize(&cwd.join(dir)),
                }
            }
            (Gateway::Popen, None) => {
                notes.push(format!(
                    "`{raw}` has no `chdir=`: a local worker without one runs in place, so there is \
                     nothing to sync for it"
                ));
                continue;
            }
            (other, _) => {
                return Err(Failure::usage(anyhow!(
                    "worker spec `{raw}`: `{}` workers are not supported by this build of `rdist sync` yet",
                    other.key()
                ))
                .with_hint("sync to local directories with `popen//chdir=DIR`"));
            }
        };
        let workers = spec.count.get();
        match out.iter_mut().find(|t| t.kind == kind) {
            Some(t) => {
                t.specs.push(raw.clone());
                t.workers += workers;
            }
            None => out.push(Target {
                specs: vec![raw.clone()],
                workers,
                kind,
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
