use std::path::PathBuf;

use super::super::discover::{ConfigFile, Format};
use super::*;

fn edited(format: Format, text: &str) -> String {
    let cfg = ConfigFile {
        path: PathBuf::from("/p/x"),
        format,
        entries: Vec::new(),
    };
    match plan(&cfg, text).unwrap() {
        Some(edit) => edit.after,
        None => text.to_owned(),
    }
}

#[test]
fn ini_edits_touch_only_the_lines_concerned() {
    let cases: &[(&str, &str)] = &[
        // Keys go with their continuation lines and the comments between them.
        (
            "[pytest]\n# keep me\nrsyncdirs =\n    src\n    ; inside\n    tests\n\nmarkers = a\n",
            "[pytest]\n# keep me\n\nmarkers = a\n",
        ),
        // Tokens go with the blank before them; other tokens keep their spelling.
        (
            "[pytest]\naddopts = -rs  -d --tx ssh=h//python=python3 'a b'\nrsyncignore = *.log\n",
            "[pytest]\naddopts = -rs 'a b'\n",
        ),
        // First token: the blank after it goes instead.
        (
            "[pytest]\naddopts = --tx=popen//chdir=/w   -x\n",
            "[pytest]\naddopts = -x\n",
        ),
        // An emptied addopts goes; the section header stays.
        (
            "[pytest]\naddopts = --tx=socket=h:1 -d\n    --rsyncdir=src\nx = 1\n",
            "[pytest]\nx = 1\n",
        ),
        // An emptied continuation line goes; an emptied key line keeps the key.
        (
            "[pytest]\naddopts = --tx=a -d\n    -rs\n    --rsyncdir src\n",
            "[pytest]\naddopts =\n    -rs\n",
        ),
        // -n keeps -d and --dist; -o of an rsync key goes, another -o stays.
        (
            "[pytest]\naddopts = -n 4 --dist each --tx=a -o rsyncdirs=x -o testpaths=t\n",
            "[pytest]\naddopts = -n 4 --dist each -o testpaths=t\n",
        ),
        // CRLF endings and the colon form.
        (
            "[pytest]\r\naddopts: -d --tx a -v\r\nrsyncdirs: src\r\nfoo = 1\r\n",
            "[pytest]\r\naddopts: -v\r\nfoo = 1\r\n",
        ),
        // Other sections are not read; a file without a final newline keeps it missing.
        (
            "[tox]\nrsyncdirs = x\n[pytest]\naddopts = -v --tx a",
            "[tox]\nrsyncdirs = x\n[pytest]\naddopts = -v",
        ),
        // Nothing to do.
        ("[pytest]\naddopts = -n 2\n", "[pytest]\naddopts = -n 2\n"),
    ];
    for (before, after) in cases {
        assert_eq!(edited(Format::PytestIni, before), *after, "{before:?}");
    }
}

#[test]
fn quoted_word_over_a_line_break_rewrites_the_value_on_the_key_line() {
    let before = "[pytest]\naddopts = -d 'a\n    b' --tx x\n";
    let after = edited(Format::PytestIni, before);
    assert_eq!(after, "[pytest]\naddopts = 'a\n    b'\n");
    let ini = ini::parse(&after).unwrap();
    let value = &ini.section("pytest").unwrap().get("addopts").unwrap().value;
    assert_eq!(values::shlex_split(value).unwrap(), ["a\nb"]);
}

#[test]
fn toml_edits_keep_formatting_and_comments() {
    let cases: &[(Format, &str, &str)] = &[
        (
            Format::PyprojectIni,
            "[project]\nname = \"demo\"\n\n[tool.pytest.ini_options]\n# roots\nrsyncdirs = \
             \"src tests\"\naddopts = \"--tx ssh=h//python=python3 -d -ra\"  # opts\nx = 1\n",
            "[project]\nname = \"demo\"\n\n[tool.pytest.ini_options]\naddopts = \"-ra\"  # \
             opts\nx = 1\n",
        ),
        (
            Format::PyprojectNative,
            "[tool.pytest]\nrsyncdirs = [\"src\", \"tests\"]\naddopts = [\"--tx=popen//chdir=/s\", \
             \"-d\"]\nminversion = \"9.0\"\n",
            "[tool.pytest]\nminversion = \"9.0\"\n",
        ),
        (
            Format::PytestToml,
            "[pytest]\naddopts = [\"-d\", \"--tx\", \"popen//chdir=/w\", \"-v\"]\n",
            "[pytest]\naddopts = [\"-v\"]\n",
        ),
        (
            Format::PytestToml,
            "[pytest]\naddopts = [\n    \"-n\", \"4\",  # local\n    \"--tx\", \"x\",\n]\n",
            "[pytest]\naddopts = [\n    \"-n\", \"4\",  # local\n]\n",
        ),
        // The table stays when emptied.
        (
            Format::PytestToml,
            "[pytest]\nrsyncdirs = [\"src\"]\n",
            "[pytest]\n",
        ),
    ];
    for (format, before, after) in cases {
        assert_eq!(edited(*format, before), *after, "{before}");
    }
}

#[test]
fn removed_and_kept_are_reported_as_written() {
    let cfg = ConfigFile {
        path: PathBuf::from("/p/pytest.ini"),
        format: Format::PytestIni,
        entries: Vec::new(),
    };
    let text = "[pytest]\naddopts = -n 4 --tx a --dist=each\nrsyncdirs = .\n";
    let edit = plan(&cfg, text).unwrap().unwrap();
    assert_eq!(edit.removed, ["rsyncdirs", "--tx a"]);
    assert_eq!(edit.kept, ["-n 4", "--dist=each"]);
    let diff = edit.unified_diff("pytest.ini");
    assert!(
        diff.starts_with("--- a/pytest.ini\n+++ b/pytest.ini\n@@"),
        "{diff}"
    );
    assert!(diff.contains("\n-rsyncdirs = .\n"), "{diff}");
}

#[test]
fn edited_files_read_back_without_legacy_rsync() {
    let cfg = ConfigFile {
        path: PathBuf::from("/p/setup.cfg"),
        format: Format::SetupCfg,
        entries: Vec::new(),
    };
    let text = "[tool:pytest]\nrsyncdirs =\n    src\naddopts = --tx=socket=h:1 -d -rs\n    \
                --rsyncdir=src\n";
    let once = plan(&cfg, text).unwrap().unwrap().after;
    assert_eq!(once, "[tool:pytest]\naddopts = -rs\n");
    assert!(
        plan(&cfg, &once).unwrap().is_none(),
        "a second edit changes nothing"
    );
}

#[test]
fn tool_rdist_tables_are_appended_once_and_read_back() {
    let config = super::super::RdistConfig {
        roots: vec!["src".into()],
        tx: vec!["ssh=h".into()],
        dist: Some("load".into()),
        ..Default::default()
    };
    let tables = config.render_tool("pyproject.toml [tool.pytest]");
    let before = "[project]\nname = \"demo\"\n";
    let after = append_tool_rdist(before, &tables).unwrap();
    assert!(
        after.starts_with("[project]\nname = \"demo\"\n\n# rdist configuration"),
        "{after}"
    );
    assert_eq!(append_tool_rdist(&after, &tables).unwrap(), after);
    let loaded = crate::config::parse(&after, std::path::Path::new("/p/pyproject.toml")).unwrap();
    assert_eq!(loaded.config.sync.roots, Some(vec!["src".to_owned()]));
    let other = "[tool.rdist.run]\ndist = \"each\"\n";
    assert_eq!(
        append_tool_rdist(other, &tables),
        Err(AppendError::HasToolRdist)
    );
}
