//! The edits `rdist migrate` makes to the legacy config file: the `rsyncdirs` and `rsyncignore`
//! keys go, and so do the deprecated options in `addopts` (`--tx`, `--px`, `--rsyncdir`,
//! `--rsyncignore`, `-o rsyncdirs=...`), with the `-d` / `--dist` that only switched those
//! workers on. Everything else stays byte for byte.
//!
//! - ini files (`pytest.ini`, `tox.ini`, `setup.cfg`): only the lines holding what goes change:
//!   a key's lines (with its continuation lines) are deleted, a token is cut out of its line with
//!   the blank before it, a continuation line left empty is deleted; comments, spacing and line
//!   endings stay.
//! - TOML (`pytest.toml`, `pyproject.toml` in both styles): `toml_edit`, so formatting and
//!   comments stay (a removed key takes the comment lines right above it along).
//! - `-n` stays, and with it `-d` / `--dist`: they drive pytest-xdist's local workers, which are
//!   not deprecated (plain `pytest` keeps working), and rdist's workers ignore them. Without
//!   `-n`, `-d` and `--dist` only activated the `--tx` workers, now in `rdist.toml`.
//! - An `addopts` left empty is removed (in every format); section headers always stay, so
//!   pytest keeps choosing the same config file and rootdir.
//!
//! Pure: text in, text out.

use std::path::PathBuf;

use serde::Serialize;

use super::discover::{ConfigFile, Format};
use super::options::{self, Opt, Token};
use super::translate::{Note, NoteLevel};
use super::values::{self, SplitError};
use super::{ErrorKind, LegacyError, Origin, ini};

mod toml;

/// The keys that go whole.
pub const RSYNC_KEYS: [&str; 2] = ["rsyncdirs", "rsyncignore"];

/// One legacy file before and after its edits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileEdit {
    pub path: PathBuf,
    #[serde(skip)]
    pub before: String,
    #[serde(skip)]
    pub after: String,
    /// What went, as written: `rsyncdirs`, `--tx ssh=h`, `-d`.
    pub removed: Vec<String>,
    /// xdist options left in `addopts` on purpose (`-n 4`, `--dist each`).
    pub kept: Vec<String>,
}

impl FileEdit {
    /// The file changes (else the edit only explains what it keeps).
    pub fn changes(&self) -> bool {
        self.before != self.after
    }

    /// The edit as a unified diff (3 lines of context) with `label` in the headers.
    pub fn unified_diff(&self, label: &str) -> String {
        similar::TextDiff::from_lines(&self.before, &self.after)
            .unified_diff()
            .context_radius(3)
            .header(&format!("a/{label}"), &format!("b/{label}"))
            .to_string()
    }

    /// What the edit deliberately leaves in place.
    pub fn notes(&self) -> Vec<Note> {
        if self.kept.is_empty() {
            return Vec::new();
        }
        let name = self.path.file_name().unwrap_or_default().to_string_lossy();
        vec![Note {
            level: NoteLevel::Info,
            origin: None,
            message: format!(
                "`addopts` in `{name}` keeps `{}`: pytest-xdist's local workers (`pytest -n`) \
                 are not deprecated, rdist's workers ignore these options, and `rdist.toml` \
                 holds them for `rdist run`",
                self.kept.join(" ")
            ),
        }]
    }
}

/// The edits to `cfg`'s file, whose content is `text`; `None` when nothing needs to change and
/// nothing is kept on purpose (see [`FileEdit::changes`]).
///
/// # Errors
/// The text does not parse (it changed since discovery), or `addopts` cannot be split.
pub fn plan(cfg: &ConfigFile, text: &str) -> Result<Option<FileEdit>, LegacyError> {
    let at = |line: usize, kind: ErrorKind| LegacyError {
        origin: Some(Origin::File {
            path: cfg.path.clone(),
            line,
        }),
        kind,
    };
    let mut removed = Vec::new();
    let mut kept = Vec::new();
    let after = match cfg.format {
        Format::PyprojectEmpty => return Ok(None),
        Format::PytestIni | Format::ToxIni | Format::SetupCfg => {
            let section = match cfg.format {
                Format::SetupCfg => "tool:pytest",
                _ => "pytest",
            };
            edit_ini(text, section, &mut removed, &mut kept, &at)?
        }
        Format::PytestToml | Format::PyprojectNative | Format::PyprojectIni => {
            toml::edit(text, cfg.format, &mut removed, &mut kept, &at)?
        }
    };
    Ok((after != text || !kept.is_empty()).then(|| FileEdit {
        path: cfg.path.clone(),
        before: text.to_owned(),
        after,
        removed,
        kept,
    }))
}

/// Why [`append_tool_rdist`] cannot add the tables.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    #[error("`pyproject.toml` is not valid TOML: {0}")]
    Toml(String),
    #[error("`pyproject.toml` already has [tool.rdist] settings")]
    HasToolRdist,
}

/// `pyproject` with `tables` (from [`super::RdistConfig::render_tool`]) appended after a blank
/// line; unchanged when it already ends with them.
///
/// # Errors
/// The text is not TOML, or has other `[tool.rdist]` settings.
pub fn append_tool_rdist(pyproject: &str, tables: &str) -> Result<String, AppendError> {
    if pyproject.trim_end().ends_with(tables.trim_end()) {
        return Ok(pyproject.to_owned());
    }
    let doc =
        toml_edit::Document::parse(pyproject).map_err(|e| AppendError::Toml(e.to_string()))?;
    let tool = doc
        .as_table()
        .get("tool")
        .and_then(toml_edit::Item::as_table_like);
    if tool.is_some_and(|t| t.contains_key("rdist")) {
        return Err(AppendError::HasToolRdist);
    }
    let mut out = pyproject.to_owned();
    match (out.is_empty(), out.ends_with("\n\n"), out.ends_with('\n')) {
        (true, _, _) | (_, true, _) => {}
        (_, _, true) => out.push('\n'),
        _ => out.push_str("\n\n"),
    }
    out.push_str(tables);
    Ok(out)
}

/// Which of `words` (one `addopts`) go: one flag per word.
fn removable(
    words: &[String],
    line: usize,
    removed: &mut Vec<String>,
    kept: &mut Vec<String>,
    at: &dyn Fn(usize, ErrorKind) -> LegacyError,
) -> Result<Vec<bool>, LegacyError> {
    let origin = Origin::File {
        path: PathBuf::new(),
        line,
    };
    let tokens: Vec<Token> = words
        .iter()
        .map(|text| Token {
            text: text.clone(),
            origin: origin.clone(),
        })
        .collect();
    let found = options::scan(&tokens).map_err(|e| at(line, e.kind))?;
    let local = found.iter().any(|f| matches!(f.opt, Opt::Numprocesses(_)));
    let mut flags = Vec::with_capacity(words.len());
    for f in &found {
        let goes = match &f.opt {
            Opt::Tx(_) | Opt::Px(_) | Opt::RsyncDir(_) | Opt::RsyncIgnore(_) => true,
            Opt::Override { .. } => true,
            Opt::Distload | Opt::Dist(_) => !local,
            Opt::Numprocesses(_) | Opt::Other(_) => false,
        };
        if goes {
            removed.push(f.text.clone());
        } else if !matches!(f.opt, Opt::Other(_)) {
            kept.push(f.text.clone());
        }
        let n = if f.separate { 2 } else { 1 };
        flags.extend(std::iter::repeat_n(goes, n));
    }
    Ok(flags)
}

/// `text` without the words flagged in `goes` (ranges into `text`), each taking the blank
/// before it along (the blank after it when it comes first).
fn cut(text: &str, ranges: &[std::ops::Range<usize>], goes: &[bool]) -> String {
    let mut out = String::new();
    let mut prev_end = 0;
    let mut first = true;
    for (range, &goes) in ranges.iter().zip(goes) {
        if !goes {
            if first {
                out.push_str(&text[..ranges[0].start]);
            } else {
                out.push_str(&text[prev_end..range.start]);
            }
            out.push_str(&text[range.clone()]);
            first = false;
        }
        prev_end = range.end;
    }
    if first {
        return String::new();
    }
    out.push_str(&text[prev_end..]);
    out
}

fn split_err(e: SplitError) -> ErrorKind {
    ErrorKind::Split(e)
}

/// A part of the `addopts` value: `text[start..end]` of 0-based line `line`.
struct Segment {
    line: usize,
    start: usize,
    end: usize,
    /// Offset in the joined value.
    offset: usize,
}

fn edit_ini(
    text: &str,
    section: &str,
    removed: &mut Vec<String>,
    kept: &mut Vec<String>,
    at: &dyn Fn(usize, ErrorKind) -> LegacyError,
) -> Result<String, LegacyError> {
    let parsed = ini::parse(text).map_err(|e| at(e.line, ErrorKind::Ini(e.message)))?;
    let Some(section) = parsed.section(section) else {
        return Ok(text.to_owned());
    };
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    // `None`: deleted.
    let mut out: Vec<Option<String>> = lines.iter().map(|l| Some((*l).to_owned())).collect();
    let content = |i: usize| lines[i].trim_end_matches(['\n', '\r']);
    let ending = |i: usize| &lines[i][content(i).len()..];
    let delete = |out: &mut Vec<Option<String>>, e: &ini::Entry| {
        for slot in &mut out[e.line - 1..e.last_line()] {
            *slot = None;
        }
    };
    for key in RSYNC_KEYS {
        if let Some(entry) = section.get(key) {
            removed.push(key.to_owned());
            delete(&mut out, entry);
        }
    }
    if let Some(entry) = section.get("addopts") {
        let mut segments = Vec::new();
        let mut joined = String::new();
        let first = entry.line - 1;
        let end = content(first).trim_end().len();
        let mut push = |line: usize, start: usize, end: usize| {
            if !segments.is_empty() {
                joined.push('\n');
            }
            let offset = joined.len();
            joined.push_str(&content(line)[start..end]);
            segments.push(Segment {
                line,
                start,
                end,
                offset,
            });
        };
        push(first, entry.value_start.min(end), end);
        for &l in &entry.continuations {
            let c = content(l - 1);
            let start = c.len() - c.trim_start().len();
            push(l - 1, start, c.trim_end().len().max(start));
        }
        let words = values::shlex_words(&joined).map_err(|e| at(entry.line, split_err(e)))?;
        let texts: Vec<String> = words.iter().map(|(w, _)| w.clone()).collect();
        let goes = removable(&texts, entry.line, removed, kept, at)?;
        if goes.iter().any(|&g| g) {
            if goes.iter().all(|&g| g) {
                delete(&mut out, entry);
            } else {
                let seg_of = |offset: usize| segments.iter().rposition(|s| s.offset <= offset);
                let spans_lines = words
                    .iter()
                    .any(|(_, r)| seg_of(r.start) != seg_of(r.end.saturating_sub(1)));
                if spans_lines {
                    // A quoted word runs over a line break: the whole value on the key line.
                    let indent = "\n    ";
                    let mut value = cut(
                        &joined,
                        &words.iter().map(|(_, r)| r.clone()).collect::<Vec<_>>(),
                        &goes,
                    );
                    value = value.replace('\n', indent);
                    let head = &content(first)[..segments[0].start];
                    out[first] = Some(format!("{head}{value}{}", ending(first)));
                    for s in &segments[1..] {
                        out[s.line] = None;
                    }
                } else {
                    for (index, seg) in segments.iter().enumerate() {
                        let mine: Vec<usize> = (0..words.len())
                            .filter(|&w| seg_of(words[w].1.start) == Some(index))
                            .collect();
                        if !mine.iter().any(|&w| goes[w]) {
                            continue;
                        }
                        let local: Vec<std::ops::Range<usize>> = mine
                            .iter()
                            .map(|&w| {
                                let r = &words[w].1;
                                r.start - seg.offset..r.end - seg.offset
                            })
                            .collect();
                        let flags: Vec<bool> = mine.iter().map(|&w| goes[w]).collect();
                        let c = content(seg.line);
                        let value = cut(&c[seg.start..seg.end], &local, &flags);
                        out[seg.line] = match (value.is_empty(), index) {
                            (true, 0) => {
                                let head = c[..seg.start].trim_end();
                                Some(format!("{head}{}", ending(seg.line)))
                            }
                            (true, _) => None,
                            (false, _) => Some(format!(
                                "{}{value}{}{}",
                                &c[..seg.start],
                                &c[seg.end..],
                                ending(seg.line)
                            )),
                        };
                    }
                }
            }
        }
    }
    Ok(out.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests;
