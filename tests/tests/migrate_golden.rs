//! Golden outputs of `rdist migrate` on every fixture project in `tests/fixtures/migrate/`:
//! the preview (exit code, stdout, stderr) and the files `--write` leaves (new and edited), in
//! `snapshots/migrate/` (insta). A second `--write` must change nothing, and `--check` must
//! pass after it. New fixtures get their snapshots with `INSTA_UPDATE=always` (or `cargo insta
//! review`); CI (`CI` set, `INSTA_UPDATE=no`) fails on a missing or different snapshot.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use rdist_tests::{rdist_bin, show};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/migrate")
}

fn fixture_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Every file under `dir` with its content, by `/`-separated relative path.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path
                    .strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

fn copy(from: &Path, to: &Path) {
    for (rel, data) in files(from) {
        let target = to.join(rel);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::write(target, data).unwrap();
    }
}

fn migrate(dir: &Path, args: &[&str]) -> Output {
    std::process::Command::new(rdist_bin())
        .arg("migrate")
        .args(args)
        .current_dir(dir)
        .env_remove("PYTEST_ADDOPTS")
        .env("NO_COLOR", "1")
        .output()
        .expect("run rdist")
}

/// Exit code, stdout and stderr, with the temporary directory replaced by `[TMP]`.
fn transcript(o: &Output, tmp: &Path) -> String {
    let text = format!(
        "exit code: {}\n----- stdout -----\n{}----- stderr -----\n{}",
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    text.replace(&tmp.display().to_string(), "[TMP]")
}

fn snapshot(name: &str, text: &str) {
    insta::with_settings!({
        snapshot_path => "snapshots/migrate",
        prepend_module_to_snapshot => false,
        omit_expression => true,
    }, {
        insta::assert_snapshot!(name, text);
    });
}

#[test]
fn preview_and_written_files_of_every_fixture() {
    for name in fixture_names() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join(&name);
        copy(&fixtures().join(&name), &dir);
        let before = files(&dir);

        let o = migrate(&dir, &[]);
        snapshot(&format!("preview@{name}"), &transcript(&o, tmp.path()));
        assert_eq!(files(&dir), before, "{name}: the preview changed files");
        if o.status.code() != Some(0) {
            continue;
        }

        let o = migrate(&dir, &["--write"]);
        assert_eq!(o.status.code(), Some(0), "{name}\n{}", show(&o));
        let after = files(&dir);
        let mut written = String::new();
        for (rel, data) in &after {
            let state = match before.get(rel) {
                Some(old) if old == data => continue,
                Some(_) => "edited",
                None => "new",
            };
            let text = String::from_utf8_lossy(data);
            written.push_str(&format!("===== {rel} ({state}) =====\n{text}"));
            if !text.ends_with('\n') {
                written.push_str("\n[no newline at end of file]\n");
            }
        }
        if written.is_empty() {
            written.push_str("(nothing written)\n");
        }
        snapshot(&format!("written@{name}"), &written);

        let o = migrate(&dir, &["--write"]);
        assert_eq!(o.status.code(), Some(0), "{name}\n{}", show(&o));
        assert_eq!(files(&dir), after, "{name}: a second --write changed files");
        let o = migrate(&dir, &["--check"]);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{name}: --check after --write\n{}",
            show(&o)
        );
    }
}

#[test]
fn every_snapshot_belongs_to_a_fixture() {
    let names = fixture_names();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots/migrate");
    let mut stale = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let file = entry.unwrap().file_name().to_string_lossy().into_owned();
        let fixture = file
            .strip_suffix(".snap")
            .and_then(|f| f.split_once('@'))
            .map(|(_, f)| f.to_owned());
        if !fixture.is_some_and(|f| names.contains(&f)) {
            stale.push(file);
        }
    }
    assert!(stale.is_empty(), "snapshots without a fixture: {stale:?}");
}
