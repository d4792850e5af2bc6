//! The edits in `pytest.toml` and `pyproject.toml`, through `toml_edit` so that everything not
//! removed keeps its formatting and comments.

use toml_edit::{DocumentMut, Item, TableLike, Value};

use super::super::discover::Format;
use super::super::values;
use super::{ErrorKind, LegacyError, RSYNC_KEYS, cut, removable, split_err};

pub(super) fn edit(
    text: &str,
    format: Format,
    removed: &mut Vec<String>,
    kept: &mut Vec<String>,
    at: &dyn Fn(usize, ErrorKind) -> LegacyError,
) -> Result<String, LegacyError> {
    let original: toml_edit::Document<&str> =
        toml_edit::Document::parse(text).map_err(|e| at(1, ErrorKind::Toml(e.to_string())))?;
    let addopts_line = original_line(text, &original, format);
    let mut doc: DocumentMut = original.into_mut();
    let path: &[&str] = match format {
        Format::PytestToml => &["pytest"],
        Format::PyprojectNative => &["tool", "pytest"],
        Format::PyprojectIni => &["tool", "pytest", "ini_options"],
        _ => return Ok(text.to_owned()),
    };
    let Some(table) = table_mut(doc.as_table_mut(), path) else {
        return Ok(text.to_owned());
    };
    for key in RSYNC_KEYS {
        if table.remove(key).is_some() {
            removed.push(key.to_owned());
        }
    }
    let mut emptied = false;
    if let Some(value) = table.get_mut("addopts").and_then(Item::as_value_mut) {
        match value {
            Value::String(s) => {
                let words =
                    values::shlex_words(s.value()).map_err(|e| at(addopts_line, split_err(e)))?;
                let texts: Vec<String> = words.iter().map(|(w, _)| w.clone()).collect();
                let goes = removable(&texts, addopts_line, removed, kept, at)?;
                if goes.iter().any(|&g| g) {
                    let ranges: Vec<_> = words.iter().map(|(_, r)| r.clone()).collect();
                    let rest = cut(s.value(), &ranges, &goes);
                    emptied = rest.trim().is_empty();
                    let decor = s.decor().clone();
                    let mut new = Value::from(rest);
                    *new.decor_mut() = decor;
                    *value = new;
                }
            }
            Value::Array(array) => {
                let Some(texts) = array
                    .iter()
                    .map(|v| v.as_str().map(str::to_owned))
                    .collect::<Option<Vec<String>>>()
                else {
                    return Ok(doc.to_string());
                };
                let goes = removable(&texts, addopts_line, removed, kept, at)?;
                for index in (0..texts.len()).rev().filter(|&i| goes[i]) {
                    let prefix = array.get(index).and_then(|v| v.decor().prefix()).cloned();
                    array.remove(index);
                    let comment: Option<String> = prefix
                        .as_ref()
                        .and_then(|p| p.as_str())
                        .filter(|p| p.contains('#'))
                        .map(str::to_owned);
                    match (array.get_mut(index), prefix) {
                        // The next item takes the removed one's spacing and comment.
                        (Some(next), Some(prefix)) if index == 0 || comment.is_some() => {
                            next.decor_mut().set_prefix(prefix);
                        }
                        (None, _) if let Some(comment) = &comment => {
                            let lines = &comment[..=comment.rfind('\n').unwrap_or(0)];
                            let trailing = array.trailing().as_str().unwrap_or("");
                            let rest = trailing.split_once('\n').map_or(trailing, |(_, r)| r);
                            let trailing = format!("{lines}{rest}");
                            array.set_trailing(trailing);
                        }
                        _ => {}
                    }
                }
                emptied = array.is_empty() && goes.iter().any(|&g| g);
            }
            _ => {}
        }
    }
    if emptied {
        table.remove("addopts");
    }
    Ok(doc.to_string())
}

fn table_mut<'a>(table: &'a mut dyn TableLike, path: &[&str]) -> Option<&'a mut dyn TableLike> {
    let Some((first, rest)) = path.split_first() else {
        return Some(table);
    };
    let next = table.get_mut(first)?.as_table_like_mut()?;
    table_mut(next, rest)
}

/// The line of `addopts` in the original text, for errors.
fn original_line(text: &str, doc: &toml_edit::Document<&str>, format: Format) -> usize {
    let path: &[&str] = match format {
        Format::PytestToml => &["pytest"],
        Format::PyprojectNative => &["tool", "pytest"],
        _ => &["tool", "pytest", "ini_options"],
    };
    let mut table: &dyn TableLike = doc.as_table();
    for key in path {
        match table.get(key).and_then(Item::as_table_like) {
            Some(t) => table = t,
            None => return 1,
        }
    }
    let span = table.get_key_value("addopts").and_then(|(k, _)| k.span());
    span.map_or(1, |s| {
        text[..s.start.min(text.len())].matches('\n').count() + 1
    })
}
