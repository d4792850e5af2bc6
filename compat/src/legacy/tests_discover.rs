//! Discovery precedence and loading, on throwaway directories.

use std::path::Path;

use super::discover::{Format, discover, scan_conftest};
use super::values::Value;
use super::{ErrorKind, Origin};

fn write(dir: &Path, name: &str, text: &str) {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn found(dir: &Path) -> (String, Format) {
    let cfg = discover(dir).unwrap().expect("a config file");
    let name = cfg.path.strip_prefix(dir).unwrap().display().to_string();
    (name, cfg.format)
}

#[test]
fn precedence_within_one_directory() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    write(d, "setup.cfg", "[tool:pytest]\nrsyncdirs = a\n");
    assert_eq!(found(d), ("setup.cfg".into(), Format::SetupCfg));
    write(d, "tox.ini", "[pytest]\nrsyncdirs = a\n");
    assert_eq!(found(d), ("tox.ini".into(), Format::ToxIni));
    write(
        d,
        "pyproject.toml",
        "[tool.pytest.ini_options]\nrsyncdirs = \"a\"\n",
    );
    assert_eq!(found(d), ("pyproject.toml".into(), Format::PyprojectIni));
    write(d, ".pytest.ini", "");
    assert_eq!(found(d), (".pytest.ini".into(), Format::PytestIni));
    write(d, "pytest.ini", "[other]\n");
    assert_eq!(found(d), ("pytest.ini".into(), Format::PytestIni));
    write(d, ".pytest.toml", "");
    assert_eq!(found(d), (".pytest.toml".into(), Format::PytestToml));
    write(d, "pytest.toml", "[pytest]\nrsyncdirs = [\"a\"]\n");
    assert_eq!(found(d), ("pytest.toml".into(), Format::PytestToml));
}

#[test]
fn files_without_a_pytest_section_are_skipped_upward() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    write(d, "tox.ini", "[pytest]\nrsyncdirs = a\n");
    write(d, "sub/tox.ini", "[tox]\nenvlist = py3\n");
    write(d, "sub/setup.cfg", "[metadata]\nname = x\n");
    write(d, "sub/pyproject.toml", "[project]\nname = \"x\"\n");
    let cfg = discover(&d.join("sub")).unwrap().unwrap();
    assert_eq!((cfg.path, cfg.format), (d.join("tox.ini"), Format::ToxIni));
}

#[test]
fn a_pyproject_without_tables_is_the_fallback() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    write(d, "sub/pyproject.toml", "[project]\nname = \"x\"\n");
    let cfg = discover(&d.join("sub")).unwrap().unwrap();
    assert_eq!(cfg.format, Format::PyprojectEmpty);
    assert!(cfg.entries.is_empty());
}

#[test]
fn native_and_ini_tables() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    write(
        d,
        "pyproject.toml",
        "[project]\nname = \"x\"\n\n[tool.pytest]\nrsyncdirs = [\"src\", \"tests\"]\naddopts = [\"-d\"]\n",
    );
    let cfg = discover(d).unwrap().unwrap();
    assert_eq!(cfg.format, Format::PyprojectNative);
    let e = cfg.get("rsyncdirs").unwrap();
    assert_eq!(e.line, 5);
    assert_eq!(e.value, Value::List(vec!["src".into(), "tests".into()]));
    assert_eq!(cfg.get("addopts").unwrap().line, 6);

    write(
        d,
        "pyproject.toml",
        "[tool.pytest.ini_options]\nminversion = 6\nrsyncdirs = \"src tests\"\n",
    );
    let cfg = discover(d).unwrap().unwrap();
    assert_eq!(cfg.format, Format::PyprojectIni);
    assert_eq!(cfg.get("minversion").unwrap().value, Value::Str("6".into()));
    assert_eq!(cfg.get("rsyncdirs").unwrap().line, 3);
}

#[test]
fn errors_pytest_raises_are_located() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let line_of = |e: &super::LegacyError| match &e.origin {
        Some(Origin::File { line, .. }) => *line,
        _ => 0,
    };

    write(
        d,
        "setup.cfg",
        "[metadata]\nname = x\n[pytest]\nrsyncdirs = a\n",
    );
    let e = discover(d).unwrap_err();
    assert!(matches!(e.kind, ErrorKind::SetupCfgPytestSection), "{e}");
    assert_eq!(line_of(&e), 3);
    // `[tool:pytest]` wins over a stray `[pytest]`.
    write(d, "setup.cfg", "[pytest]\n[tool:pytest]\nrsyncdirs = a\n");
    assert_eq!(found(d).1, Format::SetupCfg);
    std::fs::remove_file(d.join("setup.cfg")).unwrap();

    write(
        d,
        "pyproject.toml",
        "[tool.pytest]\nrsyncdirs = [\"a\"]\n[tool.pytest.ini_options]\naddopts = \"-d\"\n",
    );
    let e = discover(d).unwrap_err();
    assert!(matches!(e.kind, ErrorKind::BothTables), "{e}");
    assert_eq!(line_of(&e), 2);

    write(d, "pyproject.toml", "[tool.pytest\n");
    let e = discover(d).unwrap_err();
    assert!(matches!(e.kind, ErrorKind::Toml(_)), "{e}");
    assert_eq!(line_of(&e), 1);
    std::fs::remove_file(d.join("pyproject.toml")).unwrap();

    write(d, "pytest.toml", "\nrsyncdirs = [\"a\"]\n");
    let e = discover(d).unwrap_err();
    assert!(matches!(e.kind, ErrorKind::TopLevelOptions(_)), "{e}");
    assert_eq!(line_of(&e), 2);
    std::fs::remove_file(d.join("pytest.toml")).unwrap();

    write(d, "tox.ini", "[tox]\n  oops\n");
    let e = discover(d).unwrap_err();
    assert_eq!(e.to_string(), "unexpected value continuation");
    assert_eq!(line_of(&e), 2);
}

#[test]
fn dead_conftest_globals_are_found() {
    let text = "import pytest\nrsyncdirs = [\"conftest.py\", \"execnet\"]\noption_tx = ['popen']\n\
                def f():\n    rsyncdirs = 1\nrsyncignore == 3\noption_dist=True\n";
    let found = scan_conftest(Path::new("conftest.py"), text);
    let got: Vec<(usize, &str)> = found.iter().map(|g| (g.line, g.name.as_str())).collect();
    assert_eq!(
        got,
        [(2, "rsyncdirs"), (3, "option_tx"), (7, "option_dist")]
    );
}
