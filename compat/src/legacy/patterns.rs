//! xdist ignore globs in rdist's pattern language.
//!
//! xdist compiles each pattern with `fnmatch.translate` and requires a full match of either an
//! entry's basename or its absolute path; `*` (and `?`, `[...]`) also match `/`. An ini
//! `rsyncignore` item becomes `<inidir>/item` first, so it can only match absolute paths below
//! the ini directory; a `--rsyncignore` value is used as written. An ignored directory is not
//! entered, in xdist as in rdist.
//!
//! rdist: a pattern without `/` matches a name at any depth; one with `/` is a path from the
//! project root (a leading `/` anchors a single name there), `*` stays within one component and
//! `**` spans several; a trailing `/` means directories only; `\`, `{` and `}` are special.
//!
//! Because matching stops at the first ignored directory, `dir/*.log` (xdist: any `.log` below
//! `dir`, at any depth) is `dir/**/*.log`, `a/*/b` is `a/*/**/b`, and `pre*` at the end of a
//! path needs nothing more. A component with a `*` inside (`a*b`), or several, and `?` or `[...]`
//! (which xdist lets match `/`) have no exact equivalent: the component is kept as written and
//! the translation says so.

use std::path::Path;

use super::translate::{lexical, relative_to};

/// The rdist pattern for a legacy one, or why there is none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Translated {
    /// `None` when the legacy pattern is dropped (it could never match inside the project).
    pub pattern: Option<String>,
    /// Set when the rdist pattern does not match exactly what xdist matched.
    pub note: Option<String>,
}

impl Translated {
    fn exact(pattern: String) -> Self {
        Translated {
            pattern: Some(pattern),
            note: None,
        }
    }
}

/// An ini `rsyncignore` item, anchored at `inidir` as pytest does (`inidir / item`).
pub fn translate_ini(item: &str, inidir: &Path, project_root: &Path) -> Translated {
    let joined = pathlib_join(inidir, item);
    let Some(rel) = below(&joined, project_root) else {
        return dropped(format!(
            "`{item}` becomes `{joined}`, outside the project: it matched nothing rdist syncs"
        ));
    };
    if rel.is_empty() {
        return dropped(format!(
            "`{item}` names the project directory itself, which xdist never filtered"
        ));
    }
    if rel.split('/').any(|c| c == "..") {
        return dropped(format!(
            "`{item}` becomes `{joined}`, which holds `..` and so never matched an entry's path"
        ));
    }
    anchored(&rel, false, item)
}

/// A `--rsyncignore` value (matched against basenames and absolute paths), given in `cwd`.
pub fn translate_cli(raw: &str, cwd: &Path, project_root: &Path) -> Translated {
    if let Some(body) = raw.strip_suffix('/') {
        let inner = translate_cli(body.trim_end_matches('/'), cwd, project_root);
        let pattern = inner.pattern.map(|p| format!("{p}/"));
        let note = format!(
            "`{raw}` never matched in xdist (paths have no trailing `/`); rdist reads it as \
             directories only"
        );
        return Translated {
            pattern,
            note: Some(note),
        };
    }
    if !raw.contains('/') {
        let mut t = Translated::exact(escape(raw, true));
        let tail = &raw[raw.len() - raw.trim_start_matches('*').len()..];
        if raw.starts_with('*') && tail.contains(['*', '?', '[']) {
            t.note = Some(format!(
                "`{raw}` also matched whole absolute paths in xdist (`*` crossing `/`); rdist \
                 matches names only"
            ));
        }
        return t;
    }
    if raw.starts_with('/') {
        return match below(raw, project_root) {
            Some(rel) if !rel.is_empty() => anchored(&rel, false, raw),
            _ => dropped(format!(
                "`{raw}` is an absolute pattern outside the project root: nothing rdist syncs \
                 matches it"
            )),
        };
    }
    if let Some(rest) = raw.strip_prefix("*/") {
        return anchored(rest.trim_start_matches('/'), true, raw);
    }
    if raw.starts_with('*') {
        let mut t = anchored(raw, false, raw);
        t.note = Some(format!(
            "`{raw}` matched the end of absolute paths in xdist; rdist reads it from the \
             project root"
        ));
        return t;
    }
    // Relative with `/`: compared with absolute paths, so it never matched anything.
    let from_root = relative_to(&lexical(&cwd.join(raw)), project_root);
    let rel = from_root.unwrap_or_else(|| raw.to_owned());
    let mut t = anchored(&rel, false, raw);
    t.note = Some(format!(
        "`{raw}` never matched anything in xdist (relative patterns with `/` were compared with \
         absolute paths); rdist ignores the path `{rel}` from the project root, as intended"
    ));
    t
}

fn dropped(note: String) -> Translated {
    Translated {
        pattern: None,
        note: Some(note),
    }
}

/// `Path(dir) / item` as a string: pathlib drops empty and `.` components and a trailing `/`,
/// keeps `..`, and an absolute item replaces `dir`.
fn pathlib_join(dir: &Path, item: &str) -> String {
    let base = if item.starts_with('/') {
        String::new()
    } else {
        dir.to_string_lossy().trim_end_matches('/').to_owned()
    };
    let parts = item.split('/').filter(|c| !c.is_empty() && *c != ".");
    let mut out = base;
    for part in parts {
        out.push('/');
        out.push_str(part);
    }
    if out.is_empty() { "/".to_owned() } else { out }
}

/// `path` relative to `root` (`""` for the root itself), comparing text.
fn below(path: &str, root: &Path) -> Option<String> {
    let root = root.to_string_lossy();
    let root = root.trim_end_matches('/');
    let rest = path.strip_prefix(root)?;
    if rest.is_empty() {
        return Some(String::new());
    }
    rest.strip_prefix('/').map(str::to_owned)
}

/// A pattern relative to the project root in xdist's syntax (`*` crossing `/`), where
/// `floating` means it may start at any depth.
fn anchored(rel: &str, floating: bool, legacy: &str) -> Translated {
    let comps: Vec<String> = rel
        .split('/')
        .filter(|c| !c.is_empty())
        .map(collapse_stars)
        .collect();
    let mut out: Vec<String> = Vec::new();
    if floating {
        out.push("**".to_owned());
    }
    let mut inexact = None;
    for (i, c) in comps.iter().enumerate() {
        let last = i + 1 == comps.len();
        let stars = c.matches('*').count();
        if c.contains(['?', '[']) {
            inexact = Some("`?` and `[...]` no longer match `/`");
        }
        match stars {
            0 => out.push(escape(c, c.contains(['?', '[']))),
            1 if c == "*" => {
                out.push("*".to_owned());
                if !last {
                    out.push("**".to_owned());
                }
            }
            1 if c.starts_with('*') => {
                out.push("**".to_owned());
                out.push(escape(c, true));
            }
            1 if c.ends_with('*') => {
                out.push(escape(c, true));
                if !last {
                    out.push("**".to_owned());
                }
            }
            _ => {
                inexact = Some("`*` no longer crosses `/` inside this component");
                out.push(escape(c, true));
            }
        }
    }
    out.dedup_by(|a, b| a == "**" && b == "**");
    let joined = out.join("/");
    let pattern = match joined.strip_prefix("**/") {
        Some(name) if !name.contains('/') => name.to_owned(),
        _ if !joined.contains('/') => format!("/{joined}"),
        _ => joined,
    };
    let note = inexact.map(|why| format!("`{legacy}` has no exact rdist equivalent: {why}"));
    Translated {
        pattern: Some(pattern),
        note,
    }
}

/// fnmatch reads `**` as `*`.
fn collapse_stars(c: &str) -> String {
    let mut out = String::with_capacity(c.len());
    for ch in c.chars() {
        if !(ch == '*' && out.ends_with('*')) {
            out.push(ch);
        }
    }
    out
}

/// Escapes what rdist's globs treat specially and fnmatch does not (`\`, `{`, `}`); with
/// `glob` false, also `*`, `?` and `[`.
fn escape(s: &str, glob: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        let special = matches!(ch, '\\' | '{' | '}') || (!glob && matches!(ch, '*' | '?' | '['));
        if special {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: &str = "/home/u/proj";

    fn ini(item: &str) -> (Option<String>, bool) {
        let t = translate_ini(item, Path::new(ROOT), Path::new(ROOT));
        (t.pattern, t.note.is_none())
    }

    fn cli(raw: &str) -> (Option<String>, bool) {
        let t = translate_cli(raw, Path::new(ROOT), Path::new(ROOT));
        (t.pattern, t.note.is_none())
    }

    fn some(p: &str, exact: bool) -> (Option<String>, bool) {
        (Some(p.to_owned()), exact)
    }

    #[test]
    fn ini_patterns_are_anchored_at_the_ini_directory() {
        let table = [
            ("sub", some("/sub", true)),
            (".tox", some("/.tox", true)),
            ("build/", some("/build", true)),
            ("./build", some("/build", true)),
            ("*.log", some("*.log", true)),
            ("pkg/data", some("pkg/data", true)),
            ("pkg/*.py", some("pkg/**/*.py", true)),
            ("pkg/*", some("pkg/*", true)),
            ("pkg/*/data", some("pkg/*/**/data", true)),
            ("pkg/tmp*", some("pkg/tmp*", true)),
            ("pkg/tmp*/x", some("pkg/tmp*/**/x", true)),
            // fnmatch reads `**` as `*`, which here needs at least one directory.
            ("docs/**/*.png", some("docs/*/**/*.png", true)),
            ("a*b", some("/a*b", false)),
            ("pkg/a?c", some("pkg/a?c", false)),
            ("{x}", some("/\\{x\\}", true)),
            ("/home/u/proj/data", some("/data", true)),
        ];
        for (item, want) in table {
            assert_eq!(ini(item), want, "{item}");
        }
    }

    #[test]
    fn ini_patterns_that_cannot_match_are_dropped() {
        for item in ["/tmp/x", "../other", "."] {
            assert_eq!(ini(item).0, None, "{item}");
        }
    }

    #[test]
    fn ini_directory_below_the_project_root() {
        let t = translate_ini("*.log", Path::new("/p/sub"), Path::new("/p"));
        assert_eq!(t.pattern.as_deref(), Some("sub/**/*.log"));
    }

    #[test]
    fn cli_patterns_match_basenames_or_absolute_paths() {
        let table = [
            ("sub", some("sub", true)),
            ("*.log", some("*.log", true)),
            ("*a*b", some("*a*b", false)),
            ("*/pkg/data", some("**/pkg/data", true)),
            ("*/pkg/*.tmp", some("**/pkg/**/*.tmp", true)),
            ("/home/u/proj/pkg/data", some("pkg/data", true)),
            ("/elsewhere/x", (None, false)),
            ("pkg/data", some("pkg/data", false)),
            ("build/", some("build/", false)),
        ];
        for (raw, want) in table {
            assert_eq!(cli(raw), want, "{raw}");
        }
    }
}
