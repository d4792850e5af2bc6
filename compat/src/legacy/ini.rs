//! The ini dialect pytest reads `pytest.ini`, `tox.ini` and `setup.cfg` with: iniconfig's rules,
//! not Python's `configparser`.
//!
//! - `[name]` opens a section; text after `#` or `;` on a section line is dropped;
//! - `key = value` (split at the first `=`, unless the key part holds a `:`) or `key: value`;
//! - a line starting with whitespace continues the previous value (joined with `\n`); blank
//!   lines and comment lines in between are skipped;
//! - a line whose first non-blank character is `#` or `;` is a comment; `#` later on a value
//!   line is part of the value;
//! - duplicate sections, duplicate keys in a section and values before any section are errors.

/// A parsed ini file: its sections in file order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ini {
    pub sections: Vec<Section>,
}

/// One `[name]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub name: String,
    /// 1-based line of the `[name]` header.
    pub line: usize,
    pub entries: Vec<Entry>,
}

/// One `key = value` entry; `value` has its continuation lines joined with `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: String,
    /// 1-based line of the key.
    pub line: usize,
    /// Byte offset of the value in the key's line (its end is the line's trimmed end).
    pub value_start: usize,
    /// 1-based lines continuing the value (comment and blank lines between them are not
    /// listed: iniconfig skips them).
    pub continuations: Vec<usize>,
}

impl Entry {
    /// The last line holding part of the value.
    pub fn last_line(&self) -> usize {
        self.continuations.last().copied().unwrap_or(self.line)
    }
}

/// A line iniconfig rejects, with iniconfig's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct IniError {
    /// 1-based.
    pub line: usize,
    pub message: String,
}

impl Ini {
    /// The section called `name`, if any.
    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.name == name)
    }
}

impl Section {
    /// The entry for `key`, if any.
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.key == key)
    }
}

enum Line<'a> {
    Blank,
    Section(&'a str),
    /// Key, value, and the value's byte offset in the line.
    Value(&'a str, &'a str, usize),
    Continuation(&'a str),
}

fn is_comment(line: &str) -> bool {
    // iniconfig: `line.lstrip()[:1] in "#;"`, which is also true for a blank line.
    matches!(line.trim_start().chars().next(), None | Some('#' | ';'))
}

fn classify(raw: &str) -> Result<Line<'_>, String> {
    if is_comment(raw) {
        return Ok(Line::Blank);
    }
    let line = raw.trim_end();
    if line.starts_with('[') {
        let head = line.split(['#', ';']).next().unwrap_or("").trim_end();
        return Ok(match head.strip_suffix(']') {
            Some(name) => Line::Section(&name[1..]),
            // iniconfig reads a `[` line without a closing `]` as a continuation.
            None => Line::Continuation(line.trim()),
        });
    }
    if line.starts_with(char::is_whitespace) {
        return Ok(Line::Continuation(line.trim()));
    }
    if let Some((name, rest)) = line.split_once('=')
        && !name.contains(':')
    {
        return Ok(value_line(line, name, rest));
    }
    match line.split_once(": ") {
        Some((name, rest)) => Ok(value_line(line, name, rest)),
        None => Err(format!("unexpected line: `{line}`")),
    }
}

/// `name` = `rest` (or `name: rest`), both slices of `line`.
fn value_line<'a>(line: &'a str, name: &'a str, rest: &'a str) -> Line<'a> {
    let start = line.len() - rest.trim_start().len();
    Line::Value(name.trim(), rest.trim(), start)
}

/// Parses `text` as iniconfig does.
///
/// # Errors
/// The first line iniconfig rejects: an unparsable line, a continuation with nothing to
/// continue, an empty section name, a value before any section, a duplicate section or key.
pub fn parse(text: &str) -> Result<Ini, IniError> {
    let mut ini = Ini::default();
    // Whether the last non-blank line was a value (or a continuation of one).
    let mut in_value = false;
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let err = |message: String| IniError { line, message };
        match classify(raw).map_err(err)? {
            Line::Blank => {}
            Line::Section(name) => {
                if name.is_empty() {
                    return Err(err("empty section name".to_owned()));
                }
                if ini.section(name).is_some() {
                    return Err(err(format!("duplicate section `{name}`")));
                }
                ini.sections.push(Section {
                    name: name.to_owned(),
                    line,
                    entries: Vec::new(),
                });
                in_value = false;
            }
            Line::Value(key, value, value_start) => {
                let Some(section) = ini.sections.last_mut() else {
                    return Err(err("no section header defined".to_owned()));
                };
                if section.get(key).is_some() {
                    return Err(err(format!("duplicate name `{key}`")));
                }
                section.entries.push(Entry {
                    key: key.to_owned(),
                    value: value.to_owned(),
                    line,
                    value_start,
                    continuations: Vec::new(),
                });
                in_value = true;
            }
            Line::Continuation(data) => {
                let entry = ini.sections.last_mut().and_then(|s| s.entries.last_mut());
                let Some(entry) = entry.filter(|_| in_value) else {
                    return Err(err("unexpected value continuation".to_owned()));
                };
                if !entry.value.is_empty() {
                    entry.value.push('\n');
                }
                entry.value.push_str(data);
                entry.continuations.push(line);
            }
        }
    }
    Ok(ini)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(text: &str, section: &str) -> Vec<(String, String, usize)> {
        let ini = parse(text).unwrap();
        let s = ini.section(section).unwrap();
        s.entries
            .iter()
            .map(|e| (e.key.clone(), e.value.clone(), e.line))
            .collect()
    }

    fn kv(k: &str, v: &str, line: usize) -> (String, String, usize) {
        (k.to_owned(), v.to_owned(), line)
    }

    #[test]
    fn equals_and_colon_forms() {
        let text = "[pytest]\naddopts= -ra\nrsyncdirs = a b\nmarkers: slow\nx=a:b\n";
        assert_eq!(
            values(text, "pytest"),
            [
                kv("addopts", "-ra", 2),
                kv("rsyncdirs", "a b", 3),
                kv("markers", "slow", 4),
                kv("x", "a:b", 5)
            ]
        );
    }

    #[test]
    fn continuation_lines_join_with_newlines_skipping_blanks_and_comments() {
        let text = "[tool:pytest]\nrsyncdirs =\n    src\n\n    # not this\n    tests\nnext = 1\n";
        assert_eq!(
            values(text, "tool:pytest"),
            [kv("rsyncdirs", "src\ntests", 2), kv("next", "1", 7)]
        );
        let text = "[pytest]\naddopts = --tx=socket=h:1 -d\n    --rsyncdir=src\n";
        assert_eq!(
            values(text, "pytest"),
            [kv("addopts", "--tx=socket=h:1 -d\n--rsyncdir=src", 2)]
        );
    }

    #[test]
    fn comments_are_whole_lines_only() {
        let text =
            "# top\n; also\n[pytest] # trailing\n  ; indented comment\nrsyncignore = a # b\n";
        assert_eq!(values(text, "pytest"), [kv("rsyncignore", "a # b", 5)]);
    }

    #[test]
    fn crlf_line_endings() {
        let text = "[pytest]\r\nrsyncdirs = a\r\n  b\r\n";
        assert_eq!(values(text, "pytest"), [kv("rsyncdirs", "a\nb", 2)]);
    }

    #[test]
    fn errors_name_the_line() {
        let cases = [
            ("  x\n", 1, "unexpected value continuation"),
            ("[a]\n  x\n", 2, "unexpected value continuation"),
            ("x = 1\n", 1, "no section header defined"),
            ("[]\n", 1, "empty section name"),
            ("[a]\n[a]\n", 2, "duplicate section `a`"),
            ("[a]\nk=1\nk=2\n", 3, "duplicate name `k`"),
            ("[a]\njunk\n", 2, "unexpected line: `junk`"),
            ("[a]\nk:v\n", 2, "unexpected line: `k:v`"),
        ];
        for (text, line, message) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!((e.line, e.message.as_str()), (line, message), "{text:?}");
        }
    }

    #[test]
    fn unclosed_bracket_line_continues_a_value() {
        let text = "[pytest]\nk = a\n[b\n";
        assert_eq!(values(text, "pytest"), [kv("k", "a\n[b", 2)]);
    }
}
