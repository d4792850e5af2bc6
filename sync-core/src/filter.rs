//! Ignore rules: which entries of a tree are left out of a sync, and which worker-only entries a
//! sync must not delete.
//!
//! Two kinds of pattern, chosen by whether the pattern contains a `/`:
//! - without `/` (`*.log`, `build`): matched against the *name* of every entry at any depth;
//! - with `/` (`pkg/data`, `docs/**/*.png`, `/build`): matched against the entry's path relative
//!   to the project root; `*` stays inside one component and `**` spans several, as in
//!   `.gitignore`; a leading `/` is allowed and means the same as none.
//!
//! A trailing `/` (`build/`) restricts a pattern to directories. The fixed patterns
//! [`FIXED_IGNORES`] always apply and no option removes them. An ignored directory is not entered,
//! so everything below it is ignored too.

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::path::RelPath;

/// Patterns every sync ignores, as pytest-xdist's `DEFAULT_IGNORES` did.
pub const FIXED_IGNORES: [&str; 4] = [".*", "*.pyc", "*.pyo", "*~"];

/// A pattern that failed to compile.
#[derive(Debug, thiserror::Error)]
#[error("invalid ignore pattern `{pattern}`")]
pub struct PatternError {
    pub pattern: String,
    #[source]
    pub source: globset::Error,
}

/// Compiled ignore rules.
#[derive(Debug, Clone)]
pub struct Filter {
    names: GlobSet,
    dir_names: GlobSet,
    paths: GlobSet,
    dir_paths: GlobSet,
    user: Vec<String>,
}

impl Filter {
    /// Compiles the fixed ignores plus `user` patterns.
    ///
    /// # Errors
    /// When a pattern is not a valid glob.
    pub fn new<S: AsRef<str>>(user: &[S]) -> Result<Self, PatternError> {
        let mut names = GlobSetBuilder::new();
        let mut dir_names = GlobSetBuilder::new();
        let mut paths = GlobSetBuilder::new();
        let mut dir_paths = GlobSetBuilder::new();
        for raw in user {
            let raw = raw.as_ref();
            let (body, dir_only) = match raw.strip_suffix('/') {
                Some(b) => (b, true),
                None => (raw, false),
            };
            let body = body.strip_prefix('/').unwrap_or(body);
            let anchored = raw.trim_end_matches('/').contains('/');
            let glob = GlobBuilder::new(body)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|source| PatternError {
                    pattern: raw.to_owned(),
                    source,
                })?;
            let set = match (anchored, dir_only) {
                (false, false) => &mut names,
                (false, true) => &mut dir_names,
                (true, false) => &mut paths,
                (true, true) => &mut dir_paths,
            };
            set.add(glob);
        }
        let build = |b: GlobSetBuilder| b.build().expect("each glob compiled on its own");
        Ok(Filter {
            names: build(names),
            dir_names: build(dir_names),
            paths: build(paths),
            dir_paths: build(dir_paths),
            user: user.iter().map(|s| s.as_ref().to_owned()).collect(),
        })
    }

    /// The user patterns this filter was built from (the fixed ones are implied).
    pub fn user_patterns(&self) -> &[String] {
        &self.user
    }

    /// Whether the entry at project-relative `path` is ignored.
    pub fn is_ignored(&self, path: &RelPath, is_dir: bool) -> bool {
        self.is_ignored_str(path.as_str(), path.name(), is_dir)
    }

    /// [`Filter::is_ignored`] for a project-relative `path` given as text, whose last component
    /// is `name` (the walk's hot path: no `RelPath` is built for ignored entries).
    pub fn is_ignored_str(&self, path: &str, name: &str, is_dir: bool) -> bool {
        self.is_name_ignored(name, is_dir) || self.is_path_ignored(path, is_dir)
    }

    /// Whether a pattern with `/` matches the project-relative `path` (the name-only rules are
    /// [`Filter::is_name_ignored`]).
    pub fn is_path_ignored(&self, path: &str, is_dir: bool) -> bool {
        match_nonempty(&self.paths, path) || (is_dir && match_nonempty(&self.dir_paths, path))
    }

    /// Whether any pattern looks at more than an entry's name.
    pub fn has_path_patterns(&self) -> bool {
        !self.paths.is_empty() || !self.dir_paths.is_empty()
    }

    /// Whether a bare name is ignored wherever it appears (used for a root's own name).
    pub fn is_name_ignored(&self, name: &str, is_dir: bool) -> bool {
        fixed_ignored(name)
            || match_nonempty(&self.names, name)
            || (is_dir && match_nonempty(&self.dir_names, name))
    }
}

/// [`FIXED_IGNORES`], matched by hand: they run on every entry of every walk.
fn fixed_ignored(name: &str) -> bool {
    name.starts_with('.') || name.ends_with(".pyc") || name.ends_with(".pyo") || name.ends_with('~')
}

fn match_nonempty(set: &GlobSet, text: &str) -> bool {
    !set.is_empty() && set.is_match(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use globset::Glob;

    fn check(patterns: &[&str], table: &[(&str, bool, bool)]) {
        let f = Filter::new(patterns).unwrap();
        for &(path, is_dir, want) in table {
            let p = RelPath::new(path).unwrap();
            assert_eq!(
                f.is_ignored(&p, is_dir),
                want,
                "{patterns:?} on {path} (dir={is_dir})"
            );
        }
    }

    #[test]
    fn fixed_ignores_match_any_component_name() {
        check(
            &[],
            &[
                (".git", true, true),
                ("pkg/.venv", true, true),
                ("pkg/.coveragerc", false, true),
                ("pkg/__pycache__/m.cpython-311.pyc", false, true),
                ("m.pyo", false, true),
                ("notes.txt~", false, true),
                ("pkg/__pycache__", true, false),
                ("pkg/mod.py", false, false),
                ("pkg/mod.pyx", false, false),
                ("a.b/c", false, false),
                ("x~y", false, false),
            ],
        );
    }

    #[test]
    fn name_patterns_match_at_any_depth() {
        check(
            &["*.log", "build", "data*"],
            &[
                ("run.log", false, true),
                ("a/b/c/run.log", false, true),
                ("a/build", true, true),
                ("a/build", false, true),
                ("a/builder", true, false),
                ("pkg/database.py", false, true),
                ("pkg/log", false, false),
            ],
        );
    }

    #[test]
    fn path_patterns_anchor_at_the_project_root() {
        check(
            &["pkg/data", "/dist", "docs/**/*.png", "src/*/gen"],
            &[
                ("pkg/data", true, true),
                ("other/pkg/data", true, false),
                ("pkg/data2", true, false),
                ("dist", true, true),
                ("pkg/dist", true, false),
                ("docs/a/b/img.png", false, true),
                ("docs/img.png", false, true),
                ("img.png", false, false),
                ("src/x/gen", true, true),
                ("src/x/y/gen", true, false),
            ],
        );
    }

    #[test]
    fn trailing_slash_means_directories_only() {
        check(
            &["out/", "pkg/tmp/"],
            &[
                ("out", true, true),
                ("a/out", true, true),
                ("out", false, false),
                ("pkg/tmp", true, true),
                ("pkg/tmp", false, false),
            ],
        );
    }

    #[test]
    fn bad_pattern_names_itself() {
        let e = Filter::new(&["a[b"]).unwrap_err();
        assert_eq!(e.to_string(), "invalid ignore pattern `a[b`");
    }

    proptest::proptest! {
        /// The hand-written matcher agrees with the globs it stands for.
        #[test]
        fn fixed_ignores_match_their_globs(name in "[.a-z~]{0,3}(pyc|pyo|py|~|c)?[~.]?") {
            let globs: Vec<Glob> = FIXED_IGNORES.iter().map(|p| Glob::new(p).unwrap()).collect();
            let mut b = GlobSetBuilder::new();
            for g in globs {
                b.add(g);
            }
            let set = b.build().unwrap();
            proptest::prop_assert_eq!(fixed_ignored(&name), set.is_match(&name), "{:?}", name);
        }
    }
}
