//! Which config file pytest 9 uses, and its pytest section with each value's line.
//!
//! From the start directory upward, in each directory the first of these that holds pytest
//! configuration wins (pytest's `CONFIG_LOADERS_BY_NAME` and `locate_config`):
//! `pytest.toml`, `.pytest.toml` (`[pytest]`, always used), `pytest.ini`, `.pytest.ini`
//! (`[pytest]`, always used, even without the section), `pyproject.toml` (`[tool.pytest]` native
//! or `[tool.pytest.ini_options]`), `tox.ini` (`[pytest]`), `setup.cfg` (`[tool:pytest]`; a
//! plain `[pytest]` there is an error). A `pyproject.toml` without either table is used only
//! when nothing else is found, with no values.
//!
//! Also here: the scan for pre-2010 `conftest.py` globals that xdist ignores since 1.5.

use std::path::{Path, PathBuf};

use serde::Serialize;
use toml_edit::{Item, TableLike};

use super::ini;
use super::values::{Mode, Value};
use super::{ErrorKind, LegacyError, Origin};

/// The file names pytest looks for, in precedence order within one directory.
pub const CONFIG_NAMES: [&str; 7] = [
    "pytest.toml",
    ".pytest.toml",
    "pytest.ini",
    ".pytest.ini",
    "pyproject.toml",
    "tox.ini",
    "setup.cfg",
];

/// Which kind of file and section the configuration came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// `pytest.toml` / `.pytest.toml`, `[pytest]` table.
    PytestToml,
    /// `pytest.ini` / `.pytest.ini`, `[pytest]` section.
    PytestIni,
    /// `pyproject.toml`, `[tool.pytest]` (native TOML).
    PyprojectNative,
    /// `pyproject.toml`, `[tool.pytest.ini_options]`.
    PyprojectIni,
    /// `pyproject.toml` without a pytest table: it fixes the rootdir, with no values.
    PyprojectEmpty,
    /// `tox.ini`, `[pytest]` section.
    ToxIni,
    /// `setup.cfg`, `[tool:pytest]` section.
    SetupCfg,
}

impl Format {
    /// The section as written in the file, e.g. `[tool:pytest]`; empty for
    /// [`Format::PyprojectEmpty`].
    pub fn section(self) -> &'static str {
        match self {
            Format::PytestToml | Format::PytestIni | Format::ToxIni => "[pytest]",
            Format::PyprojectNative => "[tool.pytest]",
            Format::PyprojectIni => "[tool.pytest.ini_options]",
            Format::PyprojectEmpty => "",
            Format::SetupCfg => "[tool:pytest]",
        }
    }

    /// How pytest reads values from this section.
    pub fn mode(self) -> Mode {
        match self {
            Format::PytestToml | Format::PyprojectNative => Mode::Toml,
            _ => Mode::Ini,
        }
    }
}

/// One `key = value` of the chosen section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RawEntry {
    pub key: String,
    pub value: Value,
    /// 1-based line of the key.
    pub line: usize,
}

/// The config file pytest would use, with its pytest section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigFile {
    pub path: PathBuf,
    pub format: Format,
    pub entries: Vec<RawEntry>,
}

impl ConfigFile {
    /// The directory holding the file: ini paths are relative to it.
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("/"))
    }

    /// The entry for `key`, if the section has one.
    pub fn get(&self, key: &str) -> Option<&RawEntry> {
        self.entries.iter().find(|e| e.key == key)
    }

    /// Where `entry` is.
    pub fn origin(&self, entry: &RawEntry) -> Origin {
        Origin::File {
            path: self.path.clone(),
            line: entry.line,
        }
    }
}

/// The config file pytest 9 would choose when run in `start` with no path arguments.
///
/// # Errors
/// A file on the way that cannot be read or parsed (pytest stops there too), a `[pytest]`
/// section in `setup.cfg`, both `[tool.pytest]` styles in one `pyproject.toml`, or options
/// outside the `[pytest]` table of a `pytest.toml`.
pub fn discover(start: &Path) -> Result<Option<ConfigFile>, LegacyError> {
    let mut pyproject = None;
    for base in start.ancestors() {
        for name in CONFIG_NAMES {
            let path = base.join(name);
            if !path.is_file() {
                continue;
            }
            if name == "pyproject.toml" && pyproject.is_none() {
                pyproject = Some(path.clone());
            }
            if let Some(found) = load(&path)? {
                return Ok(Some(found));
            }
        }
    }
    Ok(pyproject.map(|path| ConfigFile {
        path,
        format: Format::PyprojectEmpty,
        entries: Vec::new(),
    }))
}

/// Reads `path` with the loader its name selects; `None` when that file holds no pytest
/// configuration (or is not a name pytest looks for).
///
/// # Errors
/// As [`discover`].
pub fn load(path: &Path) -> Result<Option<ConfigFile>, LegacyError> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let text = std::fs::read_to_string(path).map_err(|source| LegacyError {
        origin: None,
        kind: ErrorKind::Read {
            path: path.to_owned(),
            source,
        },
    })?;
    let at = |line: usize, kind: ErrorKind| LegacyError {
        origin: Some(Origin::File {
            path: path.to_owned(),
            line,
        }),
        kind,
    };
    let found = |format, entries| {
        Some(ConfigFile {
            path: path.to_owned(),
            format,
            entries,
        })
    };
    match name {
        "pytest.ini" | ".pytest.ini" | "tox.ini" | "setup.cfg" => {
            let parsed = ini::parse(&text).map_err(|e| at(e.line, ErrorKind::Ini(e.message)))?;
            let (wanted, format) = match name {
                "tox.ini" => ("pytest", Format::ToxIni),
                "setup.cfg" => ("tool:pytest", Format::SetupCfg),
                _ => ("pytest", Format::PytestIni),
            };
            match parsed.section(wanted) {
                Some(section) => Ok(found(format, ini_entries(section))),
                None if format == Format::PytestIni => Ok(found(format, Vec::new())),
                None if format == Format::SetupCfg => match parsed.section("pytest") {
                    Some(s) => Err(at(s.line, ErrorKind::SetupCfgPytestSection)),
                    None => Ok(None),
                },
                None => Ok(None),
            }
        }
        "pytest.toml" | ".pytest.toml" => {
            let doc = parse_toml(&text).map_err(|(line, e)| at(line, ErrorKind::Toml(e)))?;
            if let Some(table) = doc.get("pytest").and_then(Item::as_table_like) {
                return Ok(found(
                    Format::PytestToml,
                    toml_entries(&text, table, Mode::Toml),
                ));
            }
            let top: Vec<(&str, usize)> = doc
                .iter()
                .filter(|(_, item)| item.as_table_like().is_none())
                .map(|(key, _)| (key, key_line(&text, doc.as_table(), key)))
                .collect();
            match top.first() {
                Some(&(_, line)) => {
                    let keys: Vec<&str> = top.iter().map(|&(k, _)| k).collect();
                    Err(at(line, ErrorKind::TopLevelOptions(keys.join(", "))))
                }
                None => Ok(found(Format::PytestToml, Vec::new())),
            }
        }
        "pyproject.toml" => {
            let doc = parse_toml(&text).map_err(|(line, e)| at(line, ErrorKind::Toml(e)))?;
            let tool_pytest = doc
                .get("tool")
                .and_then(Item::as_table_like)
                .and_then(|t| t.get("pytest"))
                .and_then(Item::as_table_like);
            let Some(tool_pytest) = tool_pytest else {
                return Ok(None);
            };
            let ini_options = tool_pytest.get("ini_options").and_then(Item::as_table_like);
            let native: Vec<RawEntry> = toml_entries(&text, tool_pytest, Mode::Toml)
                .into_iter()
                .filter(|e| e.key != "ini_options")
                .collect();
            match (native.first(), ini_options) {
                (Some(first), Some(ini)) if !ini.is_empty() => {
                    Err(at(first.line, ErrorKind::BothTables))
                }
                (Some(_), _) => Ok(found(Format::PyprojectNative, native)),
                (None, Some(ini)) => Ok(found(
                    Format::PyprojectIni,
                    toml_entries(&text, ini, Mode::Ini),
                )),
                (None, None) => Ok(None),
            }
        }
        _ => Ok(None),
    }
}

fn ini_entries(section: &ini::Section) -> Vec<RawEntry> {
    let entries = section.entries.iter();
    entries
        .map(|e| RawEntry {
            key: e.key.clone(),
            value: Value::Str(e.value.clone()),
            line: e.line,
        })
        .collect()
}

fn parse_toml(text: &str) -> Result<toml_edit::Document<&str>, (usize, String)> {
    toml_edit::Document::parse(text).map_err(|e| {
        let line = e.span().map_or(1, |s| line_of(text, s.start));
        // The first line of toml_edit's message is its own location; keep the description.
        let message = e.message().trim().to_owned();
        (line, message)
    })
}

/// The 1-based line of byte `offset` in `text`.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    let offset = offset.min(text.len());
    text.as_bytes()[..offset]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The line of `key` in `table` (of the TOML `text`), 1 when it has no span.
pub(crate) fn key_line(text: &str, table: &dyn TableLike, key: &str) -> usize {
    let span = table.get_key_value(key).and_then(|(k, item)| {
        k.span()
            .or_else(|| item.span())
            .or_else(|| item.as_value().and_then(toml_edit::Value::span))
    });
    span.map_or(1, |s| line_of(text, s.start))
}

fn toml_entries(text: &str, table: &dyn TableLike, mode: Mode) -> Vec<RawEntry> {
    table
        .iter()
        .map(|(key, item)| RawEntry {
            key: key.to_owned(),
            value: toml_value(item, mode),
            line: key_line(text, table, key),
        })
        .collect()
}

/// The value as pytest sees it: in INI mode scalars become `str(v)` and lists stay lists.
fn toml_value(item: &Item, mode: Mode) -> Value {
    use toml_edit::Value as V;
    let Some(value) = item.as_value() else {
        let text = item.to_string().trim().to_owned();
        return Value::Other {
            type_name: "dict".to_owned(),
            text,
        };
    };
    let other = |type_name: &str| Value::Other {
        type_name: type_name.to_owned(),
        text: value.to_string().trim().to_owned(),
    };
    match value {
        V::String(s) => Value::Str(s.value().clone()),
        V::Array(a) => {
            let items: Option<Vec<String>> =
                a.iter().map(|v| v.as_str().map(str::to_owned)).collect();
            items.map_or_else(|| other("list with non-string items"), Value::List)
        }
        V::Integer(i) if mode == Mode::Ini => Value::Str(i.value().to_string()),
        V::Float(f) if mode == Mode::Ini => Value::Str(f.value().to_string()),
        V::Boolean(b) if mode == Mode::Ini => {
            Value::Str(if *b.value() { "True" } else { "False" }.to_owned())
        }
        V::Integer(_) => other("int"),
        V::Float(_) => other("float"),
        V::Boolean(_) => other("bool"),
        V::Datetime(_) => other("datetime"),
        V::InlineTable(_) => other("dict"),
    }
}

/// A `conftest.py` global that configured rsync before xdist 1.5 and is ignored since.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadGlobal {
    pub path: PathBuf,
    /// 1-based.
    pub line: usize,
    /// `rsyncdirs`, `rsyncignore`, `option_tx` or `option_dist`.
    pub name: String,
    /// The line as written, trimmed.
    pub text: String,
}

const DEAD_GLOBALS: [&str; 4] = ["rsyncdirs", "rsyncignore", "option_tx", "option_dist"];
const SKIP_DIRS: [&str; 6] = [
    "__pycache__",
    "node_modules",
    "venv",
    "site-packages",
    "build",
    "dist",
];

/// Module-level assignments to the dead globals in the `conftest.py` files under `root` (to a
/// depth of 4, skipping hidden directories, virtualenvs and build output). A simple line scan:
/// an assignment at column 0.
pub fn dead_conftest_globals(root: &Path) -> Vec<DeadGlobal> {
    let mut found = Vec::new();
    scan_dir(root, 0, &mut found);
    found.sort_by(|a, b| (&a.path, a.line).cmp(&(&b.path, b.line)));
    found
}

fn scan_dir(dir: &Path, depth: usize, found: &mut Vec<DeadGlobal>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            if depth < 4 && !name.starts_with('.') && !SKIP_DIRS.contains(&name) {
                scan_dir(&entry.path(), depth + 1, found);
            }
        } else if kind.is_file() && name == "conftest.py" {
            let path = entry.path();
            if let Ok(text) = std::fs::read_to_string(&path) {
                found.extend(scan_conftest(&path, &text));
            }
        }
    }
}

/// The dead globals assigned in one `conftest.py`'s `text`.
pub fn scan_conftest(path: &Path, text: &str) -> Vec<DeadGlobal> {
    let mut found = Vec::new();
    for (index, line) in text.lines().enumerate() {
        for name in DEAD_GLOBALS {
            let Some(rest) = line.strip_prefix(name) else {
                continue;
            };
            let rest = rest.trim_start();
            if rest.starts_with('=') && !rest.starts_with("==") {
                found.push(DeadGlobal {
                    path: path.to_owned(),
                    line: index + 1,
                    name: name.to_owned(),
                    text: line.trim().to_owned(),
                });
            }
        }
    }
    found
}
