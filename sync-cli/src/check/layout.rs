//! Layout checks on the project tree, the same for every host: test modules that pytest's
//! default (`prepend`) import mode will import under one name ("import file mismatch"), test
//! directories without `__init__.py`, and the top-level modules the code imports (to tell which
//! missing packages matter).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// What the tree says.
#[derive(Debug, Default)]
pub struct Layout {
    /// Test module basenames that appear in several package-less directories.
    pub clashes: BTreeMap<String, Vec<String>>,
    /// Directories holding test modules but no `__init__.py`.
    pub no_init: Vec<PathBuf>,
    /// Top-level module names imported by the `.py` files.
    pub imports: BTreeSet<String>,
    /// Total size of the files, for the free-space check.
    pub bytes: u64,
}

fn is_test_module(name: &str) -> bool {
    name.ends_with(".py") && (name.starts_with("test_") || name.ends_with("_test.py"))
}

/// Walks `entries` (project-relative paths of files and their sizes) under `root`.
pub fn examine(root: &Path, files: &[(String, u64)]) -> Layout {
    let mut l = Layout::default();
    let dirs_with_init: BTreeSet<&str> = files
        .iter()
        .filter_map(|(p, _)| {
            p.strip_suffix("__init__.py")
                .map(|d| d.trim_end_matches('/'))
        })
        .collect();
    let mut by_name: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut no_init: BTreeSet<String> = BTreeSet::new();
    for (path, size) in files {
        l.bytes += size;
        let (dir, name) = match path.rsplit_once('/') {
            Some((d, n)) => (d, n),
            None => ("", path.as_str()),
        };
        if is_test_module(name) && !dirs_with_init.contains(dir) {
            by_name
                .entry(name.to_owned())
                .or_default()
                .push(path.clone());
            no_init.insert(dir.to_owned());
        }
        if path.ends_with(".py")
            && let Ok(text) = std::fs::read_to_string(root.join(path))
        {
            for line in text.lines() {
                let line = line.trim_start();
                let module = line
                    .strip_prefix("import ")
                    .or_else(|| line.strip_prefix("from "))
                    .and_then(|rest| {
                        rest.split(|c: char| !(c.is_alphanumeric() || c == '_'))
                            .next()
                    });
                if let Some(m) = module
                    && !m.is_empty()
                {
                    l.imports.insert(m.to_owned());
                }
            }
        }
    }
    l.clashes = by_name.into_iter().filter(|(_, v)| v.len() > 1).collect();
    l.no_init = no_init
        .into_iter()
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .collect();
    l
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_clashes_missing_inits_and_imports() {
        let t = tempfile::tempdir().unwrap();
        let files = [
            ("a/test_x.py", "import requests\nfrom yaml import load\n"),
            ("b/test_x.py", "import os\n"),
            ("c/__init__.py", ""),
            ("c/test_x.py", ""),
        ];
        for (p, text) in files {
            std::fs::create_dir_all(t.path().join(p).parent().unwrap()).unwrap();
            std::fs::write(t.path().join(p), text).unwrap();
        }
        let list: Vec<(String, u64)> = files
            .iter()
            .map(|(p, t)| ((*p).to_owned(), t.len() as u64))
            .collect();
        let l = examine(t.path(), &list);
        assert_eq!(
            l.clashes.get("test_x.py").unwrap(),
            &vec!["a/test_x.py".to_owned(), "b/test_x.py".to_owned()]
        );
        assert_eq!(l.no_init, vec![PathBuf::from("a"), PathBuf::from("b")]);
        assert!(
            l.imports.contains("requests")
                && l.imports.contains("yaml")
                && l.imports.contains("os")
        );
    }
}
