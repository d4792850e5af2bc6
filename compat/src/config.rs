//! rdist's own configuration file: `rdist.toml` in the project root (tables `[sync]` and
//! `[run]`), or `[tool.rdist]` in its `pyproject.toml` (`[tool.rdist.sync]`,
//! `[tool.rdist.run]`). The schema ([`Config`]), reading it with every error located at a
//! `file:line` ([`ConfigError`]), and finding it ([`discover`]).
//!
//! The schema holds everything [`RdistConfig::render`](crate::legacy::RdistConfig::render)
//! writes (`[sync] roots, ignore`; `[run] tx, px, numprocesses, dist`; a test parses every
//! rendering back) plus the knobs a project wants to fix once: `layout`, `lock_wait`, `fsync`,
//! `compress`, `python`, `dir`, the timeouts, `max_worker_restart`, `token_file`. Unknown tables and keys
//! are errors with a did-you-mean, so a typo never silently does nothing. Values are checked
//! here (types, `dist` modes, `numprocesses`, worker specs); paths are left as written, relative
//! to the file's directory, for the caller to resolve.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use toml_edit::{Item, TableLike, Value};

use crate::legacy::discover::{key_line, line_of};
use crate::legacy::options::DIST_MODES;
use crate::xspec::{XSpec, closest};

#[cfg(test)]
mod tests;

/// The name of rdist's own configuration file.
pub const FILE_NAME: &str = "rdist.toml";

/// The layouts `[sync] layout` accepts.
pub const LAYOUTS: [&str; 2] = ["rdist", "xdist"];

/// Settings of a configuration file; `None` (or empty) where the file says nothing.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Config {
    pub sync: SyncConfig,
    pub run: RunConfig,
}

/// `[sync]`: what to mirror and how.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SyncConfig {
    /// Roots, relative to the file's directory.
    pub roots: Option<Vec<String>>,
    /// rdist ignore patterns.
    pub ignore: Option<Vec<String>>,
    /// `rdist` or `xdist`.
    pub layout: Option<String>,
    /// Seconds to wait for another sync to the same directory.
    pub lock_wait: Option<f64>,
    pub fsync: Option<bool>,
    /// Compress data to remote workers (`--compress`).
    pub compress: Option<bool>,
}

/// `[run]`: the workers (for `rdist sync` too) and how tests run on them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunConfig {
    /// Worker specs (`--tx`), checked to parse.
    pub tx: Option<Vec<String>>,
    /// Proxy specs (`--px`), checked to parse.
    pub px: Option<Vec<String>>,
    /// `-n`: a positive count as text, `auto` or `logical`.
    pub numprocesses: Option<String>,
    /// A `--dist` mode.
    pub dist: Option<String>,
    /// The interpreter of workers whose spec has no `python=`.
    pub python: Option<String>,
    /// The directory of remote workers whose spec has no `chdir=`.
    pub dir: Option<String>,
    pub connect_timeout: Option<f64>,
    /// Seconds an ssh master connection outlives its last session; 0 = no reuse.
    pub ssh_reuse: Option<usize>,
    pub heartbeat_timeout: Option<f64>,
    pub max_worker_restart: Option<usize>,
    /// Relative to the file's directory.
    pub token_file: Option<String>,
}

/// A configuration file as read: where it is, its settings, and the line of each key.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    pub path: PathBuf,
    /// `[tool.rdist]` in a `pyproject.toml` rather than an `rdist.toml`.
    pub in_pyproject: bool,
    pub config: Config,
    /// `section.key` (`run.tx`) -> line number, for messages about a value.
    pub lines: BTreeMap<String, usize>,
    /// Things to tell the user once (a second file with settings that is ignored).
    pub notes: Vec<String>,
}

impl Loaded {
    /// The directory relative paths in the file are relative to.
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new(""))
    }

    /// `rdist.toml:7` for the key `section.key`, with the path relative to `cwd` when below it.
    pub fn origin(&self, key: &str, cwd: &Path) -> String {
        let shown = self.path.strip_prefix(cwd).unwrap_or(&self.path);
        match self.lines.get(key) {
            Some(line) => format!("{}:{line}", shown.display()),
            None => shown.display().to_string(),
        }
    }

    /// How a section is written in this file: `[run]` or `[tool.rdist.run]`.
    pub fn section(&self, section: &str) -> String {
        section_name(self.in_pyproject, section)
    }
}

fn section_name(in_pyproject: bool, section: &str) -> String {
    match (in_pyproject, section) {
        (true, "") => "[tool.rdist]".to_owned(),
        (true, s) => format!("[tool.rdist.{s}]"),
        (false, "") => "the top level".to_owned(),
        (false, s) => format!("[{s}]"),
    }
}

/// A configuration file rdist cannot use, with the line at fault where there is one.
#[derive(Debug, thiserror::Error)]
#[error("{kind}")]
pub struct ConfigError {
    pub path: PathBuf,
    pub line: Option<usize>,
    /// Boxed: the error travels through every value's `Result`.
    pub kind: Box<ErrorKind>,
}

/// Why a configuration file cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    #[error("cannot read the file")]
    Read(#[source] std::io::Error),
    #[error("invalid TOML: {0}")]
    Toml(String),
    #[error("unknown table `{name}`")]
    UnknownTable {
        name: String,
        suggestion: Option<String>,
    },
    #[error("unknown key `{key}` in {section}")]
    UnknownKey {
        key: String,
        section: String,
        suggestion: Option<String>,
        known: String,
    },
    #[error("`{key}` belongs in the {table} table")]
    Misplaced { key: String, table: String },
    #[error("`{key}` must be {expected}, not {found}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: &'static str,
        example: Option<String>,
    },
    #[error("invalid `{key}` value `{value}`: expected {expected}")]
    InvalidValue {
        key: String,
        value: String,
        expected: String,
        suggestion: Option<String>,
    },
    /// `rendered` is the xspec error with its caret lines.
    #[error("invalid {what} in `{key}`: {rendered}")]
    Spec {
        key: String,
        what: &'static str,
        rendered: String,
        hint: Option<String>,
    },
}

impl ConfigError {
    /// `path:line: message`, with the path relative to `cwd` when it lies below it.
    pub fn located(&self, cwd: &Path) -> String {
        let shown = self.path.strip_prefix(cwd).unwrap_or(&self.path);
        match self.line {
            Some(line) => format!("{}:{line}: {}", shown.display(), self.kind),
            None => format!("{}: {}", shown.display(), self.kind),
        }
    }

    /// What to do about it, as one lowercase line without the `hint:` prefix.
    pub fn hint(&self) -> Option<String> {
        match self.kind.as_ref() {
            ErrorKind::Read(_) => None,
            ErrorKind::Toml(_) => Some("fix the TOML syntax at this line".to_owned()),
            ErrorKind::UnknownTable {
                suggestion: Some(s),
                ..
            }
            | ErrorKind::InvalidValue {
                suggestion: Some(s),
                ..
            } => Some(format!("did you mean `{s}`?")),
            ErrorKind::UnknownTable { .. } => {
                Some("rdist's tables are `sync` and `run`".to_owned())
            }
            ErrorKind::UnknownKey {
                suggestion: Some(s),
                ..
            } => Some(format!("did you mean `{s}`?")),
            ErrorKind::UnknownKey { known, .. } => Some(format!("known keys: {known}")),
            ErrorKind::Misplaced { table, .. } => Some(format!("move it below a `{table}` line")),
            ErrorKind::WrongType { example, .. } => example.as_ref().map(|e| format!("write {e}")),
            ErrorKind::InvalidValue { .. } => None,
            ErrorKind::Spec { hint, .. } => hint.clone(),
        }
    }
}

/// The keys of each table, in the order the README documents them.
const SYNC_KEYS: [&str; 6] = [
    "roots",
    "ignore",
    "layout",
    "lock_wait",
    "fsync",
    "compress",
];
const RUN_KEYS: [&str; 11] = [
    "tx",
    "px",
    "numprocesses",
    "dist",
    "python",
    "dir",
    "connect_timeout",
    "ssh_reuse",
    "heartbeat_timeout",
    "max_worker_restart",
    "token_file",
];

/// Finds the configuration of the project whose root is `project_root`: `rdist.toml`, else
/// `[tool.rdist]` in `pyproject.toml`. When both have settings, `rdist.toml` wins and a note
/// says so.
///
/// # Errors
/// The file that is used cannot be read, is not TOML, or breaks the schema.
pub fn discover(project_root: &Path) -> Result<Option<Loaded>, ConfigError> {
    let own = project_root.join(FILE_NAME);
    let pyproject = project_root.join("pyproject.toml");
    if own.is_file() {
        let mut loaded = read(&own)?;
        // A broken pyproject.toml is pytest's business once rdist.toml is in charge.
        if pyproject.is_file()
            && let Ok(text) = std::fs::read_to_string(&pyproject)
            && let Ok(doc) = toml_edit::Document::parse(text.as_str())
            && tool_rdist(&doc).is_some()
        {
            loaded.notes.push(format!(
                "both `{FILE_NAME}` and `pyproject.toml` [tool.rdist] have rdist settings; using \
                 `{FILE_NAME}` and ignoring [tool.rdist]"
            ));
        }
        return Ok(Some(loaded));
    }
    if pyproject.is_file() {
        let text = std::fs::read_to_string(&pyproject).map_err(|e| ConfigError {
            path: pyproject.clone(),
            line: None,
            kind: Box::new(ErrorKind::Read(e)),
        })?;
        let loaded = parse(&text, &pyproject)?;
        // Without `[tool.rdist]` the project has no rdist configuration.
        return Ok((!loaded.lines.is_empty()).then_some(loaded));
    }
    Ok(None)
}

/// Reads the configuration file `path` (`[tool.rdist]` if it is named `pyproject.toml`).
///
/// # Errors
/// As [`discover`].
pub fn read(path: &Path) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        path: path.to_owned(),
        line: None,
        kind: Box::new(ErrorKind::Read(e)),
    })?;
    parse(&text, path)
}

fn tool_rdist<'d>(doc: &'d toml_edit::Document<&str>) -> Option<&'d dyn TableLike> {
    doc.as_table()
        .get("tool")?
        .as_table_like()?
        .get("rdist")?
        .as_table_like()
}

/// Parses `text`, the content of `path`: rdist's tables at the top level, or under
/// `[tool.rdist]` when `path` is named `pyproject.toml` (where other tables are not rdist's
/// business).
///
/// # Errors
/// Invalid TOML, an unknown table or key, a value of the wrong type or out of range, a worker
/// spec that does not parse.
pub fn parse(text: &str, path: &Path) -> Result<Loaded, ConfigError> {
    let in_pyproject = path.file_name().is_some_and(|n| n == "pyproject.toml");
    let reader = Reader {
        text,
        path,
        in_pyproject,
    };
    let doc = toml_edit::Document::parse(text).map_err(|e| {
        let line = e.span().map(|s| line_of(text, s.start));
        reader.error(line, ErrorKind::Toml(e.message().trim().to_owned()))
    })?;
    let mut loaded = Loaded {
        path: path.to_owned(),
        in_pyproject,
        config: Config::default(),
        lines: BTreeMap::new(),
        notes: Vec::new(),
    };
    let top: &dyn TableLike = if in_pyproject {
        match tool_rdist(&doc) {
            Some(t) => t,
            None => return Ok(loaded),
        }
    } else {
        doc.as_table()
    };
    // `[tool.rdist]` itself counts as a setting, so an empty one is still "the" config.
    if in_pyproject {
        loaded.lines.insert(String::new(), 1);
    }
    for (name, item) in top.iter() {
        let line = key_line(text, top, name);
        let Some(table) = item
            .as_table_like()
            .filter(|_| name == "sync" || name == "run")
        else {
            // A known key outside its table, or an unknown table.
            let home = if SYNC_KEYS.contains(&name) {
                Some("sync")
            } else if RUN_KEYS.contains(&name) {
                Some("run")
            } else {
                None
            };
            if let Some(section) = home {
                return Err(reader.error(
                    Some(line),
                    ErrorKind::Misplaced {
                        key: name.to_owned(),
                        table: section_name(in_pyproject, section),
                    },
                ));
            }
            if matches!(name, "sync" | "run") {
                return Err(reader.error(
                    Some(line),
                    ErrorKind::WrongType {
                        key: name.to_owned(),
                        expected: "a table",
                        found: type_name(item),
                        example: None,
                    },
                ));
            }
            if item.is_table_like() {
                let suggestion = closest(&name.to_ascii_lowercase(), ["sync", "run"])
                    .filter(|s| *s != name)
                    .map(|s| section_name(in_pyproject, s));
                return Err(reader.error(
                    Some(line),
                    ErrorKind::UnknownTable {
                        name: section_name(in_pyproject, name),
                        suggestion,
                    },
                ));
            }
            return Err(reader.error(
                Some(line),
                ErrorKind::UnknownKey {
                    key: name.to_owned(),
                    section: section_name(in_pyproject, ""),
                    suggestion: None,
                    known: "none: settings go in `sync` and `run` tables".to_owned(),
                },
            ));
        };
        loaded.lines.insert(name.to_owned(), line);
        if name == "sync" {
            reader.sync(table, &mut loaded)?;
        } else {
            reader.run(table, &mut loaded)?;
        }
    }
    Ok(loaded)
}

struct Reader<'a> {
    text: &'a str,
    path: &'a Path,
    in_pyproject: bool,
}

impl Reader<'_> {
    fn error(&self, line: Option<usize>, kind: ErrorKind) -> ConfigError {
        ConfigError {
            path: self.path.to_owned(),
            line,
            kind: Box::new(kind),
        }
    }

    /// Each key of `table` with its line, after refusing unknown ones.
    fn entries<'t>(
        &self,
        table: &'t dyn TableLike,
        section: &str,
        known: &[&str],
        loaded: &mut Loaded,
    ) -> Result<Vec<(&'t str, &'t Item, usize)>, ConfigError> {
        let mut out = Vec::new();
        for (key, item) in table.iter() {
            let line = key_line(self.text, table, key);
            if !known.contains(&key) {
                let suggestion =
                    closest(&key.to_ascii_lowercase(), known.iter().copied()).map(str::to_owned);
                let list: Vec<String> = known.iter().map(|k| format!("`{k}`")).collect();
                return Err(self.error(
                    Some(line),
                    ErrorKind::UnknownKey {
                        key: key.to_owned(),
                        section: section_name(self.in_pyproject, section),
                        suggestion,
                        known: list.join(", "),
                    },
                ));
            }
            loaded.lines.insert(format!("{section}.{key}"), line);
            out.push((key, item, line));
        }
        Ok(out)
    }

    fn sync(&self, table: &dyn TableLike, loaded: &mut Loaded) -> Result<(), ConfigError> {
        for (key, item, line) in self.entries(table, "sync", &SYNC_KEYS, loaded)? {
            let v = Typed {
                reader: self,
                key,
                item,
                line,
            };
            let c = &mut loaded.config.sync;
            match key {
                "roots" => c.roots = Some(v.strings()?),
                "ignore" => c.ignore = Some(v.strings()?),
                "layout" => c.layout = Some(v.one_of(&LAYOUTS)?),
                "lock_wait" => c.lock_wait = Some(v.seconds(true)?),
                "fsync" => c.fsync = Some(v.boolean()?),
                _ => c.compress = Some(v.boolean()?),
            }
        }
        Ok(())
    }

    fn run(&self, table: &dyn TableLike, loaded: &mut Loaded) -> Result<(), ConfigError> {
        for (key, item, line) in self.entries(table, "run", &RUN_KEYS, loaded)? {
            let v = Typed {
                reader: self,
                key,
                item,
                line,
            };
            let c = &mut loaded.config.run;
            match key {
                "tx" => c.tx = Some(v.specs(false)?),
                "px" => c.px = Some(v.specs(true)?),
                "numprocesses" => c.numprocesses = Some(v.numprocesses()?),
                "dist" => c.dist = Some(v.one_of(&DIST_MODES)?),
                "python" => c.python = Some(v.word()?),
                "dir" => c.dir = Some(v.word()?),
                "connect_timeout" => c.connect_timeout = Some(v.seconds(false)?),
                "ssh_reuse" => c.ssh_reuse = Some(v.count()?),
                "heartbeat_timeout" => c.heartbeat_timeout = Some(v.seconds(false)?),
                "max_worker_restart" => c.max_worker_restart = Some(v.count()?),
                _ => c.token_file = Some(v.word()?),
            }
        }
        Ok(())
    }
}

/// One value and what it takes to complain about it.
struct Typed<'a> {
    reader: &'a Reader<'a>,
    key: &'a str,
    item: &'a Item,
    line: usize,
}

impl Typed<'_> {
    fn wrong(&self, expected: &'static str, example: Option<String>) -> ConfigError {
        self.reader.error(
            Some(self.line),
            ErrorKind::WrongType {
                key: self.key.to_owned(),
                expected,
                found: type_name(self.item),
                example,
            },
        )
    }

    fn invalid(&self, value: &str, expected: String, suggestion: Option<String>) -> ConfigError {
        self.reader.error(
            Some(self.line),
            ErrorKind::InvalidValue {
                key: self.key.to_owned(),
                value: value.to_owned(),
                expected,
                suggestion,
            },
        )
    }

    fn strings(&self) -> Result<Vec<String>, ConfigError> {
        let example = |items: &[&str]| {
            let quoted: Vec<String> = items.iter().map(|i| format!("{i:?}")).collect();
            Some(format!("`{} = [{}]`", self.key, quoted.join(", ")))
        };
        match self.item.as_value() {
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| self.wrong("a list of strings", None)),
            Some(Value::String(s)) => Err(self.wrong(
                "a list of strings",
                example(&s.value().split_whitespace().collect::<Vec<_>>()),
            )),
            _ => Err(self.wrong("a list of strings", None)),
        }
    }

    fn string(&self, expected: &'static str) -> Result<&str, ConfigError> {
        self.item.as_str().ok_or_else(|| self.wrong(expected, None))
    }

    /// A non-empty string.
    fn word(&self) -> Result<String, ConfigError> {
        let s = self.string("a string")?;
        if s.trim().is_empty() {
            return Err(self.invalid(s, "a non-empty string".to_owned(), None));
        }
        Ok(s.to_owned())
    }

    fn one_of(&self, choices: &[&str]) -> Result<String, ConfigError> {
        let s = self.string("a string")?;
        if choices.contains(&s) {
            return Ok(s.to_owned());
        }
        let list: Vec<String> = choices.iter().map(|c| format!("`{c}`")).collect();
        let suggestion =
            closest(&s.to_ascii_lowercase(), choices.iter().copied()).map(str::to_owned);
        Err(self.invalid(s, format!("one of {}", list.join(", ")), suggestion))
    }

    fn boolean(&self) -> Result<bool, ConfigError> {
        self.item
            .as_bool()
            .ok_or_else(|| self.wrong("a boolean (`true` or `false`)", None))
    }

    fn seconds(&self, zero_ok: bool) -> Result<f64, ConfigError> {
        let secs = match self.item.as_value() {
            Some(Value::Integer(i)) => *i.value() as f64,
            Some(Value::Float(f)) => *f.value(),
            _ => return Err(self.wrong("a number of seconds", None)),
        };
        if !secs.is_finite() || secs < 0.0 || (secs == 0.0 && !zero_ok) {
            let bound = if zero_ok {
                "zero or more"
            } else {
                "more than zero"
            };
            return Err(self.invalid(&secs.to_string(), format!("{bound} seconds"), None));
        }
        Ok(secs)
    }

    fn count(&self) -> Result<usize, ConfigError> {
        let Some(n) = self.item.as_integer() else {
            return Err(self.wrong("an integer", None));
        };
        usize::try_from(n)
            .map_err(|_| self.invalid(&n.to_string(), "zero or more".to_owned(), None))
    }

    fn numprocesses(&self) -> Result<String, ConfigError> {
        let expected = || "a positive integer, `auto` or `logical`".to_owned();
        match self.item.as_value() {
            Some(Value::Integer(i)) if *i.value() > 0 => Ok(i.value().to_string()),
            Some(Value::Integer(i)) => Err(self.invalid(&i.value().to_string(), expected(), None)),
            Some(Value::String(s)) => {
                let s = s.value();
                match s.as_str() {
                    "auto" | "logical" => Ok(s.clone()),
                    n if n.parse::<u32>().is_ok_and(|n| n > 0) => Ok(n.to_owned()),
                    other => Err(self.invalid(other, expected(), None)),
                }
            }
            _ => Err(self.wrong(
                "an integer or a string",
                Some("`numprocesses = 4` or `numprocesses = \"auto\"`".to_owned()),
            )),
        }
    }

    fn specs(&self, px: bool) -> Result<Vec<String>, ConfigError> {
        let specs = self.strings()?;
        for raw in &specs {
            let parsed = if px {
                XSpec::parse_px(raw).map(drop)
            } else {
                raw.parse::<XSpec>().map(drop)
            };
            if let Err(e) = parsed {
                return Err(self.reader.error(
                    Some(self.line),
                    ErrorKind::Spec {
                        key: self.key.to_owned(),
                        what: if px { "proxy spec" } else { "worker spec" },
                        rendered: format!("{e}\n{}", e.carets(raw)),
                        hint: e.hint(),
                    },
                ));
            }
        }
        Ok(specs)
    }
}

fn type_name(item: &Item) -> &'static str {
    match item {
        Item::None => "nothing",
        Item::Table(_) | Item::Value(Value::InlineTable(_)) => "a table",
        Item::ArrayOfTables(_) => "an array of tables",
        Item::Value(v) => match v {
            Value::String(_) => "a string",
            Value::Integer(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Boolean(_) => "a boolean",
            Value::Datetime(_) => "a date-time",
            Value::Array(_) => "a list",
            Value::InlineTable(_) => "a table",
        },
    }
}
