//! pytest's `cache/lastfailed` (what `--lf` and `--ff` read), kept by the controller. Each
//! worker sees only its share of the results, so the plugin stops the workers from writing it
//! (the last one to finish would drop the others' failures) and the controller merges every
//! worker's outcomes into it, by pytest's own rules: a test that passed or was skipped leaves
//! it, a failure or error (in any phase, or in collection) enters it.

use std::collections::BTreeMap;
use std::path::Path;

use super::report::Outcome;

/// `old` updated with `outcomes`, in order (an error in teardown after a passed call stays).
pub fn merge(mut old: BTreeMap<String, bool>, outcomes: &[Outcome]) -> BTreeMap<String, bool> {
    for o in outcomes {
        match o.category {
            "failed" | "error" => {
                old.insert(o.nodeid.clone(), true);
            }
            _ => {
                old.remove(&o.nodeid);
            }
        }
    }
    // A file or class that failed to collect last time and has tests running now collects again.
    let bad: std::collections::HashSet<&str> = outcomes
        .iter()
        .filter(|o| matches!(o.category, "failed" | "error"))
        .map(|o| o.nodeid.as_str())
        .collect();
    old.retain(|key, _| {
        bad.contains(key.as_str())
            || !outcomes.iter().any(|o| {
                o.nodeid.len() > key.len() + 2 && o.nodeid.starts_with(&format!("{key}::"))
            })
    });
    old
}

/// Updates `cache/lastfailed` under pytest's cache directory `cache` (left alone when that
/// directory does not exist: rdist does not create a pytest cache where pytest did not).
///
/// # Errors
/// When the file cannot be written.
pub fn update(cache: &Path, outcomes: &[Outcome]) -> std::io::Result<()> {
    if !cache.is_dir() {
        return Ok(());
    }
    let dir = cache.join("v").join("cache");
    let file = dir.join("lastfailed");
    let old: BTreeMap<String, bool> = std::fs::read(&file)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let new = merge(old.clone(), outcomes);
    if new == old && file.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(&dir)?;
    // As pytest writes it: sorted keys, two-space indent.
    let text = serde_json::to_string_pretty(&new).map_err(std::io::Error::other)?;
    let tmp = dir.join(format!(".lastfailed.{}.tmp", std::process::id()));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, &file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(nodeid: &str, category: &'static str) -> Outcome {
        Outcome {
            worker: 0,
            nodeid: nodeid.to_owned(),
            category,
            duration: 0.0,
            message: String::new(),
            text: String::new(),
        }
    }

    #[test]
    fn failures_enter_passes_and_skips_leave() {
        let old: BTreeMap<String, bool> = [
            ("t.py::fixed", true),
            ("t.py::skipped_now", true),
            ("t.py::not_run", true),
            ("broken.py", true),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let outcomes = [
            outcome("t.py::fixed", "passed"),
            outcome("t.py::skipped_now", "skipped"),
            outcome("t.py::new_failure", "failed"),
            // Passed call, then an error in teardown: still failing.
            outcome("t.py::teardown", "passed"),
            outcome("t.py::teardown", "error"),
            // The file that failed to collect last time runs tests again.
            outcome("broken.py::test_a", "passed"),
            outcome("bad_collect.py", "error"),
        ];
        let new = merge(old, &outcomes);
        let keys: Vec<&str> = new.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "bad_collect.py",
                "t.py::new_failure",
                "t.py::not_run",
                "t.py::teardown"
            ]
        );
    }

    #[test]
    fn written_only_where_pytest_has_a_cache() {
        let t = tempfile::tempdir().unwrap();
        let cache = t.path().join(".pytest_cache");
        update(&cache, &[outcome("t.py::a", "failed")]).unwrap();
        assert!(!cache.exists());
        std::fs::create_dir(&cache).unwrap();
        update(&cache, &[outcome("t.py::a", "failed")]).unwrap();
        let text = std::fs::read_to_string(cache.join("v/cache/lastfailed")).unwrap();
        assert_eq!(text, "{\n  \"t.py::a\": true\n}");
    }
}
