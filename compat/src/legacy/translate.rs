//! Legacy settings (a config file, `PYTEST_ADDOPTS`, a command line, dead conftest globals)
//! combined as pytest and xdist combine them, then translated: the `rdist.toml` for what the
//! config file said, an `rdist run` line for everything together, and notes on each behaviour
//! that changes.
//!
//! xdist's rules kept here: arguments are `addopts` + `PYTEST_ADDOPTS` + the command line, in
//! that order; `-o rsyncdirs=`/`-o rsyncignore=` replace the ini value; `--dist` is the last one
//! given, `-d` forces `load`, `-n N` turns `no` into `load` and replaces `--tx` with `N` local
//! workers, `-n 0` turns distribution off; `--tx` does nothing unless the mode is not `no`.
//! Roots: ini items relative to the ini directory, `--rsyncdir` relative to the current
//! directory, command-line roots first. Ignores: see [`super::patterns`].

use std::fmt;
use std::path::{Component, Path, PathBuf};

use serde::Serialize;

use super::discover::{ConfigFile, DeadGlobal, Format};
use super::options::{self, Found, Opt, Token};
use super::render::RdistConfig;
use super::values::{self, Mode};
use super::{ErrorKind, LegacyError, Origin};
use crate::xspec::{Gateway, XSpec};

mod notes;
mod resolve;

use resolve::Resolved;

/// What a migration reads.
pub struct Input<'a> {
    /// Absolute; where pytest would run.
    pub cwd: PathBuf,
    /// The config file pytest would use (see [`super::discover::discover`]).
    pub config: Option<ConfigFile>,
    /// `PYTEST_ADDOPTS`, if set.
    pub env_addopts: Option<String>,
    /// A command line to translate (`pytest -d --tx ... tests`), as shell text.
    pub command: Option<String>,
    pub dead_globals: Vec<DeadGlobal>,
    /// Whether a path exists (a missing root stops xdist).
    pub exists: &'a dyn Fn(&Path) -> bool,
}

/// A legacy setting found, for the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Setting {
    pub origin: Origin,
    /// `rsyncdirs`, `--tx`, `-d`, `conftest.py rsyncdirs`, ...
    pub name: String,
    /// As written.
    pub text: String,
    /// A deprecated rsync setting (`rdist migrate --check` fails while one remains); `-d`,
    /// `--dist` and `-n` are not, nor are dead conftest globals.
    pub rsync: bool,
    /// A dead `conftest.py` global: reported, never edited.
    pub dead: bool,
}

/// A legacy root or ignore pattern and what it became.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mapping {
    pub origin: Origin,
    pub legacy: String,
    /// `None` when dropped (a note says why).
    pub rdist: Option<String>,
}

/// The equivalent command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunLine {
    /// `["rdist", "run"]`, or `["pytest"]` when xdist did not distribute.
    pub program: Vec<String>,
    pub args: Vec<String>,
}

impl fmt::Display for RunLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&join(self.program.iter().chain(&self.args)))
    }
}

/// Words as shell text: quoted only when needed (`=`, `:`, `@`, `,` and `/` need no quotes,
/// unlike in `shell_words::join`, so specs stay readable).
pub fn join<S: AsRef<str>>(words: impl IntoIterator<Item = S>) -> String {
    let quoted: Vec<String> = words.into_iter().map(|w| quote(w.as_ref())).collect();
    quoted.join(" ")
}

fn quote(word: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c);
    if !word.is_empty() && word.chars().all(safe) {
        return word.to_owned();
    }
    // Double quotes keep a CI script's `$VARIABLE` working.
    if word.contains('$') && !word.contains(['"', '`', '\\', '!']) {
        return format!("\"{word}\"");
    }
    format!("'{}'", word.replace('\'', "'\\''"))
}

/// How much a [`Note`] matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NoteLevel {
    /// An explanation: something xdist did that rdist does differently on purpose.
    Info,
    /// The translation is not exact, or the legacy setting never worked as written.
    Warn,
}

/// A behaviour difference or a translation caveat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Note {
    pub level: NoteLevel,
    pub origin: Option<Origin>,
    pub message: String,
}

/// The result of reading and translating legacy settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Migration {
    pub cwd: PathBuf,
    /// Where `rdist.toml` goes: the config file's directory, else the current directory.
    pub project_root: PathBuf,
    pub config_file: Option<PathBuf>,
    pub config_format: Option<Format>,
    pub settings: Vec<Setting>,
    pub roots: Vec<Mapping>,
    pub ignores: Vec<Mapping>,
    /// What the config file said, for `rdist.toml`.
    pub config: RdistConfig,
    /// Everything together (config file, `PYTEST_ADDOPTS`, command line).
    pub run: RunLine,
    pub notes: Vec<Note>,
}

impl Migration {
    /// True while deprecated rsync settings remain.
    pub fn has_legacy_rsync(&self) -> bool {
        self.settings.iter().any(|s| s.rsync)
    }

    /// `tox.ini [pytest]`, or `the command line` without a config file.
    pub fn source_label(&self) -> String {
        match (&self.config_file, self.config_format) {
            (Some(path), Some(format)) => {
                let name = path.file_name().unwrap_or_default().to_string_lossy();
                format!("{name} {}", format.section()).trim_end().to_owned()
            }
            _ => "the command line".to_owned(),
        }
    }

    /// The `rdist.toml` text, or `None` when there is nothing to write.
    pub fn rdist_toml(&self) -> Option<String> {
        (!self.config.is_empty()).then(|| self.config.render(&self.source_label()))
    }

    /// Where `rdist.toml` goes.
    pub fn rdist_toml_path(&self) -> PathBuf {
        self.project_root.join("rdist.toml")
    }
}

/// Reads every legacy setting in `input` and translates it.
///
/// # Errors
/// A value pytest cannot split (unclosed quote, a string where native TOML needs a list), an
/// xdist option without its value or with a value xdist rejects, a worker spec that does not
/// parse (unless it holds a shell `$` variable).
pub fn migrate(input: &Input<'_>) -> Result<Migration, LegacyError> {
    let config = input.config.as_ref();
    let project_root = config.map_or_else(|| input.cwd.clone(), |c| c.dir().to_owned());
    let mut tokens = Vec::new();
    if let Some(cfg) = config
        && let Some(entry) = cfg.get("addopts")
    {
        let origin = cfg.origin(entry);
        let items = split(&entry.value, "addopts", "args", cfg.format.mode(), &origin)?;
        tokens.extend(items.into_iter().map(|text| Token {
            text,
            origin: origin.clone(),
        }));
    }
    if let Some(env) = &input.env_addopts {
        let items = split(
            &values::Value::Str(env.clone()),
            "",
            "",
            Mode::Ini,
            &Origin::Env,
        )?;
        tokens.extend(items.into_iter().map(|text| Token {
            text,
            origin: Origin::Env,
        }));
    }
    let mut prefix = Vec::new();
    if let Some(command) = &input.command {
        let words = values::shlex_split(command).map_err(|e| LegacyError {
            origin: Some(Origin::Command),
            kind: ErrorKind::Split(e),
        })?;
        let (before, args) = strip_program(words);
        prefix = before;
        tokens.extend(args.into_iter().map(|text| Token {
            text,
            origin: Origin::Command,
        }));
    }
    let found = options::scan(&tokens)?;
    let from_file = |f: &&Found| matches!(f.origin, Origin::File { .. });
    let file_found: Vec<Found> = found.iter().filter(from_file).cloned().collect();

    let ctx = resolve::Context {
        cwd: &input.cwd,
        project_root: &project_root,
        config,
        exists: input.exists,
    };
    let file_level = Resolved::new(&ctx, &file_found)?;
    let all = Resolved::new(&ctx, &found)?;

    let mut settings = Vec::new();
    if let Some(cfg) = config {
        for key in options::OVERRIDABLE {
            if let Some(entry) = cfg.get(key) {
                let text = match &entry.value {
                    values::Value::Str(s) => s.split_whitespace().collect::<Vec<_>>().join(" "),
                    values::Value::List(items) => format!("{items:?}"),
                    values::Value::Other { text, .. } => text.clone(),
                };
                settings.push(Setting {
                    origin: cfg.origin(entry),
                    name: key.to_owned(),
                    text: format!("{key} = {text}"),
                    rsync: true,
                    dead: false,
                });
            }
        }
    }
    for f in &found {
        let (name, rsync) = match &f.opt {
            Opt::Other(_) => continue,
            Opt::Distload => ("-d", false),
            Opt::Dist(_) => ("--dist", false),
            Opt::Numprocesses(_) => ("-n", false),
            Opt::Tx(_) => ("--tx", true),
            Opt::Px(_) => ("--px", true),
            Opt::RsyncDir(_) => ("--rsyncdir", true),
            Opt::RsyncIgnore(_) => ("--rsyncignore", true),
            Opt::Override { .. } => ("-o", true),
        };
        settings.push(Setting {
            origin: f.origin.clone(),
            name: name.to_owned(),
            text: f.text.clone(),
            rsync,
            dead: false,
        });
    }
    for g in &input.dead_globals {
        settings.push(Setting {
            origin: Origin::File {
                path: g.path.clone(),
                line: g.line,
            },
            name: format!("conftest.py {}", g.name),
            text: g.text.clone(),
            rsync: false,
            dead: true,
        });
    }

    let run = all.run_line(&input.cwd);
    let mut notes = notes::collect(&ctx, &all, &found, input, &prefix);
    notes.extend(all.notes.iter().cloned());
    for n in &file_level.notes {
        if !notes.contains(n) {
            notes.push(n.clone());
        }
    }
    Ok(Migration {
        cwd: input.cwd.clone(),
        project_root: project_root.clone(),
        config_file: config.map(|c| c.path.clone()),
        config_format: config.map(|c| c.format),
        settings,
        roots: all.root_mappings(),
        ignores: all.ignore_mappings(),
        config: file_level.to_config(),
        run,
        notes,
    })
}

fn split(
    value: &values::Value,
    key: &str,
    kind: &'static str,
    mode: Mode,
    origin: &Origin,
) -> Result<Vec<String>, LegacyError> {
    values::split_value(key, kind, value, mode).map_err(|e| LegacyError {
        origin: Some(origin.clone()),
        kind: ErrorKind::Split(e),
    })
}

/// Splits `docker exec box pytest -d ...` into what runs pytest and pytest's arguments.
fn strip_program(words: Vec<String>) -> (Vec<String>, Vec<String>) {
    let is_pytest = |w: &str| {
        let base = w.rsplit('/').next().unwrap_or(w);
        base == "pytest" || base == "py.test"
    };
    match words.iter().position(|w| is_pytest(w)) {
        Some(i) => {
            let mut before = words;
            let after = before.split_off(i + 1);
            before.pop();
            (before, after)
        }
        None => (Vec::new(), words),
    }
}

/// `path` with `.` and `..` resolved textually.
pub fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// `path` relative to `base` with `/` separators (`""` when equal), if it lies below it.
pub fn relative_to(path: &Path, base: &Path) -> Option<String> {
    let rest = path.strip_prefix(base).ok()?;
    let parts: Vec<String> = rest
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    Some(parts.join("/"))
}

/// `path` as seen from `cwd`: relative (with `..` if needed) when they share a prefix.
pub fn relative_from(path: &Path, cwd: &Path) -> String {
    let p: Vec<Component> = path.components().collect();
    let c: Vec<Component> = cwd.components().collect();
    let common = p.iter().zip(&c).take_while(|(a, b)| a == b).count();
    if common <= 1 && path.is_absolute() {
        return path.display().to_string();
    }
    let mut parts: Vec<String> = vec!["..".to_owned(); c.len() - common];
    parts.extend(
        p[common..]
            .iter()
            .map(|x| x.as_os_str().to_string_lossy().into_owned()),
    );
    if parts.is_empty() {
        ".".to_owned()
    } else {
        parts.join("/")
    }
}

/// Parses a worker spec; a spec holding a shell `$` variable that does not parse is `Ok(None)`.
fn parse_spec(text: &str, proxy: bool, origin: &Origin) -> Result<Option<XSpec>, LegacyError> {
    let parsed = if proxy {
        XSpec::parse_px(text)
    } else {
        text.parse()
    };
    match parsed {
        Ok(spec) => Ok(Some(spec)),
        Err(_) if text.contains('$') => Ok(None),
        Err(e) => Err(LegacyError {
            origin: Some(origin.clone()),
            kind: ErrorKind::Spec {
                rendered: e
                    .render(text)
                    .lines()
                    .filter(|l| !l.starts_with("hint:"))
                    .collect::<Vec<_>>()
                    .join("\n"),
                hint: e.hint(),
            },
        }),
    }
}

/// True when xdist synced to this worker: anything but a local `popen` without `chdir=`.
fn syncs(spec: &XSpec) -> bool {
    !(spec.gateway == Gateway::Popen && spec.via.is_none() && spec.chdir.is_none())
}
