//! How pytest turns a config value into a list: Python's `shlex.split` (POSIX mode, no
//! comments) for INI-mode strings, the list itself for TOML lists, an error for a string in
//! native TOML mode.
//!
//! `shell_words::split` is close but not the same: it reads `#` at the start of a word as a
//! comment and gives `\` inside double quotes the shell's meaning (`"\$"` is `$`), where shlex
//! keeps `#` and keeps the backslash before anything but `"` and `\`. Migrating must read the
//! values exactly as pytest did, so the split is done here.

use std::ops::Range;

use serde::Serialize;

/// A raw config value as the file holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
pub enum Value {
    /// An ini value, or a TOML scalar (pytest turns TOML scalars into `str` in INI mode).
    Str(String),
    /// A TOML array of strings.
    List(Vec<String>),
    /// A TOML value pytest cannot use as a list of strings: its Python type name and its text.
    Other { type_name: String, text: String },
}

/// How pytest reads the values of the chosen config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Strings are split with shlex; lists are taken item by item.
    Ini,
    /// Native TOML (pytest >= 9): a list of strings is required.
    Toml,
}

/// Why a value cannot be read as a list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    /// shlex's own messages.
    #[error("no closing quotation")]
    NoClosingQuotation,
    #[error("no escaped character")]
    NoEscapedCharacter,
    #[error("config option `{key}` expects a list for type `{kind}`, got {type_name}: `{text}`")]
    ExpectsList {
        key: String,
        kind: &'static str,
        type_name: String,
        text: String,
    },
}

/// `shlex.split(text)`: whitespace separates, `'…'` and `"…"` group, `\` escapes outside single
/// quotes (inside double quotes only before `"` and `\`), `#` is an ordinary character, and an
/// empty quoted word is kept.
///
/// # Errors
/// An unclosed quote, or a `\` at the very end.
pub fn shlex_split(text: &str) -> Result<Vec<String>, SplitError> {
    Ok(shlex_words(text)?.into_iter().map(|(w, _)| w).collect())
}

/// [`shlex_split`] with the byte range each word occupies in `text` (quotes included), for
/// editing a value in place.
///
/// # Errors
/// As [`shlex_split`].
pub fn shlex_words(text: &str) -> Result<Vec<(String, Range<usize>)>, SplitError> {
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        Idle,
        Word,
        Quote(char),
        Escape(Option<char>),
    }
    let mut words = Vec::new();
    let mut word = String::new();
    let mut start = 0;
    let mut state = State::Idle;
    for (at, c) in text.char_indices() {
        if state == State::Idle && !c.is_whitespace() {
            start = at;
        }
        state = match state {
            State::Idle | State::Word if c.is_whitespace() => {
                if state == State::Word {
                    words.push((std::mem::take(&mut word), start..at));
                }
                State::Idle
            }
            State::Idle | State::Word => match c {
                '\'' | '"' => State::Quote(c),
                '\\' => State::Escape(None),
                _ => {
                    word.push(c);
                    State::Word
                }
            },
            // A closed quote makes a word even when empty, so `''` is kept.
            State::Quote(q) if c == q => State::Word,
            State::Quote('"') if c == '\\' => State::Escape(Some('"')),
            State::Quote(q) => {
                word.push(c);
                State::Quote(q)
            }
            State::Escape(inside) => {
                if let Some(q) = inside
                    && c != q
                    && c != '\\'
                {
                    word.push('\\');
                }
                word.push(c);
                inside.map_or(State::Word, State::Quote)
            }
        };
    }
    match state {
        State::Quote(_) => Err(SplitError::NoClosingQuotation),
        State::Escape(_) => Err(SplitError::NoEscapedCharacter),
        State::Word => {
            words.push((word, start..text.len()));
            Ok(words)
        }
        State::Idle => Ok(words),
    }
}

/// The items of a `paths` or `args` option as pytest reads them in `mode`.
///
/// # Errors
/// A shlex error, a string in native TOML mode, or a value that is not a list of strings.
pub fn split_value(
    key: &str,
    kind: &'static str,
    value: &Value,
    mode: Mode,
) -> Result<Vec<String>, SplitError> {
    match (value, mode) {
        (Value::Str(s), Mode::Ini) => shlex_split(s),
        (Value::List(items), _) => Ok(items.clone()),
        (Value::Str(s), Mode::Toml) => Err(SplitError::ExpectsList {
            key: key.to_owned(),
            kind,
            type_name: "str".to_owned(),
            text: s.clone(),
        }),
        (Value::Other { type_name, text }, _) => Err(SplitError::ExpectsList {
            key: key.to_owned(),
            kind,
            type_name: type_name.clone(),
            text: text.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(s: &str) -> Vec<String> {
        shlex_split(s).unwrap()
    }

    #[test]
    fn shlex_table() {
        let cases: &[(&str, &[&str])] = &[
            ("", &[]),
            ("  a  b\n\tc ", &["a", "b", "c"]),
            ("*.log build", &["*.log", "build"]),
            (r#""my dir" x"#, &["my dir", "x"]),
            ("'a b'c", &["a bc"]),
            (r"C:\a\b", &["C:ab"]),
            (r"a\ b", &["a b"]),
            (r#""a\b""#, &[r"a\b"]),
            (r#""a\"b""#, &[r#"a"b"#]),
            (r#""a\\b""#, &[r"a\b"]),
            (r#""\$x""#, &[r"\$x"]),
            (r"'a\b'", &[r"a\b"]),
            ("# not a comment", &["#", "not", "a", "comment"]),
            ("a#b", &["a#b"]),
            ("'' \"\" x", &["", "", "x"]),
            ("a''", &["a"]),
            (
                r#"--tx id=x//ssh="-i key 1.2.3.4 -l root//python=python3""#,
                &["--tx", "id=x//ssh=-i key 1.2.3.4 -l root//python=python3"],
            ),
        ];
        for (input, want) in cases {
            assert_eq!(split(input), *want, "{input:?}");
        }
    }

    #[test]
    fn word_ranges_cover_the_text_as_written() {
        let text = r#"-d  --tx='a b' "x"y \z"#;
        let words = shlex_words(text).unwrap();
        let raw: Vec<&str> = words.iter().map(|(_, r)| &text[r.clone()]).collect();
        assert_eq!(raw, ["-d", "--tx='a b'", "\"x\"y", "\\z"]);
        assert_eq!(words[1].0, "--tx=a b");
    }

    #[test]
    fn shlex_errors() {
        assert_eq!(shlex_split("'a"), Err(SplitError::NoClosingQuotation));
        assert_eq!(shlex_split("\"a\\\""), Err(SplitError::NoClosingQuotation));
        assert_eq!(shlex_split("a\\"), Err(SplitError::NoEscapedCharacter));
    }

    #[test]
    fn native_toml_needs_a_list() {
        let v = Value::Str("src tests".into());
        let e = split_value("rsyncdirs", "paths", &v, Mode::Toml).unwrap_err();
        assert_eq!(
            e.to_string(),
            "config option `rsyncdirs` expects a list for type `paths`, got str: `src tests`"
        );
        assert_eq!(
            split_value("rsyncdirs", "paths", &v, Mode::Ini).unwrap(),
            ["src", "tests"]
        );
        let l = Value::List(vec!["a b".into()]);
        assert_eq!(
            split_value("rsyncdirs", "paths", &l, Mode::Ini).unwrap(),
            ["a b"]
        );
    }
}
