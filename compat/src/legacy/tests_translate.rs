//! Translation end to end on in-memory inputs: which settings win, where roots are anchored,
//! what the config and the command line become, and which notes appear.

use std::path::{Path, PathBuf};

use super::discover::{ConfigFile, Format, RawEntry};
use super::values::Value;
use super::{ErrorKind, Input, Migration, Origin, migrate};

const PROJ: &str = "/p";

fn ini(format: Format, entries: &[(&str, &str)]) -> ConfigFile {
    let name = match format {
        Format::SetupCfg => "setup.cfg",
        Format::PytestIni => "pytest.ini",
        Format::PytestToml => "pytest.toml",
        Format::PyprojectIni | Format::PyprojectNative | Format::PyprojectEmpty => "pyproject.toml",
        Format::ToxIni => "tox.ini",
    };
    ConfigFile {
        path: Path::new(PROJ).join(name),
        format,
        entries: entries
            .iter()
            .enumerate()
            .map(|(i, (k, v))| RawEntry {
                key: (*k).to_owned(),
                value: Value::Str((*v).to_owned()),
                line: i + 2,
            })
            .collect(),
    }
}

fn all_exist(_: &Path) -> bool {
    true
}

fn run(
    cwd: &str,
    config: Option<ConfigFile>,
    env: Option<&str>,
    command: Option<&str>,
) -> Migration {
    try_run(cwd, config, env, command).unwrap()
}

fn try_run(
    cwd: &str,
    config: Option<ConfigFile>,
    env: Option<&str>,
    command: Option<&str>,
) -> Result<Migration, super::LegacyError> {
    migrate(&Input {
        cwd: PathBuf::from(cwd),
        config,
        env_addopts: env.map(str::to_owned),
        command: command.map(str::to_owned),
        dead_globals: Vec::new(),
        exists: &all_exist,
    })
}

fn has_note(m: &Migration, needle: &str) -> bool {
    m.notes.iter().any(|n| n.message.contains(needle))
}

#[test]
fn ini_roots_are_relative_to_the_ini_dir_and_cli_roots_to_the_cwd() {
    let cfg = ini(
        Format::ToxIni,
        &[
            ("addopts", "-d --tx ssh=h//chdir=w --rsyncdir=lib"),
            ("rsyncdirs", "tox.ini src tests"),
        ],
    );
    let m = run("/p/sub", Some(cfg), None, Some("pytest --rsyncdir ../doc"));
    let roots: Vec<_> = m.roots.iter().map(|r| r.rdist.clone().unwrap()).collect();
    // Command-line roots first (addopts, then the command), then the ini's.
    assert_eq!(roots, ["sub/lib", "doc", "tox.ini", "src", "tests"]);
    // rdist.toml holds the config file's settings only.
    assert_eq!(m.config.roots, ["sub/lib", "tox.ini", "src", "tests"]);
    assert_eq!(
        m.run.to_string(),
        "rdist run --tx ssh=h//chdir=w --rsyncdir lib --rsyncdir ../doc --rsyncdir ../tox.ini \
         --rsyncdir ../src --rsyncdir ../tests"
    );
}

#[test]
fn override_replaces_the_ini_value_and_is_split_in_ini_mode() {
    let cfg = ini(Format::ToxIni, &[("rsyncdirs", "old")]);
    let m = run(
        PROJ,
        Some(cfg),
        None,
        Some("pytest -d --tx socket=h:1 -o 'rsyncdirs=src \"my dir\"'"),
    );
    let roots: Vec<_> = m.roots.iter().map(|r| r.rdist.clone().unwrap()).collect();
    assert_eq!(roots, ["src", "my dir"]);
    // The override came from the command line: rdist.toml keeps the file's value.
    assert_eq!(m.config.roots, ["old"]);
    assert_eq!(
        m.run.to_string(),
        "rdist run --tx socket=h:1 --rsyncdir src --rsyncdir 'my dir'"
    );
}

#[test]
fn native_toml_string_is_an_error() {
    let cfg = ini(Format::PyprojectNative, &[("rsyncdirs", "src tests")]);
    let e = try_run(PROJ, Some(cfg), None, None).unwrap_err();
    assert!(matches!(e.kind, ErrorKind::Split(_)));
    assert_eq!(
        e.located(Path::new(PROJ)),
        format!(
            "pyproject.toml:2: config option `rsyncdirs` expects a list for type `paths`, got str: `src tests`"
        )
    );
    assert_eq!(e.hint().unwrap(), "write a list: `[\"src\", \"tests\"]`");
}

#[test]
fn n_replaces_tx() {
    let cfg = ini(Format::PytestIni, &[("addopts", "--tx ssh=h -n 4")]);
    let m = run(PROJ, Some(cfg), None, None);
    assert_eq!(m.run.to_string(), "rdist run -n 4");
    assert_eq!(m.config.numprocesses.as_deref(), Some("4"));
    assert_eq!(m.config.dist.as_deref(), Some("load"));
    assert!(has_note(&m, "`-n 4` replaces the `--tx` workers"));
}

#[test]
fn n_zero_turns_distribution_off() {
    let m = run(PROJ, None, None, Some("pytest -d --tx popen -n 0 tests"));
    assert_eq!(m.run.to_string(), "pytest tests");
    assert!(has_note(&m, "`-n 0` turns distribution off"));
}

#[test]
fn tx_without_d_is_inert() {
    let cfg = ini(
        Format::PytestIni,
        &[("addopts", "--tx 2*popen//python=python3")],
    );
    let m = run(PROJ, Some(cfg.clone()), None, Some("pytest -k slow"));
    assert!(m.config.tx_inert);
    assert_eq!(m.config.dist, None);
    assert_eq!(m.run.to_string(), "pytest -k slow");
    assert!(has_note(&m, "is inert in pytest-xdist"));
    // `-d` on the command line activates the workers from addopts.
    let m = run(PROJ, Some(cfg), None, Some("pytest -d"));
    assert!(
        m.config.tx_inert,
        "the config file alone still does not distribute"
    );
    assert_eq!(
        m.run.to_string(),
        "rdist run --tx '2*popen//python=python3'"
    );
}

#[test]
fn d_forces_load_and_dist_each_is_kept_otherwise() {
    let m = run(PROJ, None, None, Some("pytest --dist=each --tx popen -d"));
    assert_eq!(m.run.to_string(), "rdist run --tx popen");
    assert!(has_note(&m, "overrides `--dist each`"));
    let m = run(PROJ, None, None, Some("pytest --dist each --tx 2*popen"));
    assert_eq!(m.run.to_string(), "rdist run --tx '2*popen' --dist each");
}

#[test]
fn env_addopts_come_between_addopts_and_the_command_line() {
    let cfg = ini(Format::ToxIni, &[("addopts", "--dist loadfile")]);
    let m = run(
        PROJ,
        Some(cfg),
        Some("--dist each"),
        Some("pytest --tx popen"),
    );
    assert_eq!(m.run.to_string(), "rdist run --tx popen --dist each");
    let origins: Vec<String> = m.settings.iter().map(|s| s.origin.to_string()).collect();
    assert_eq!(origins, ["/p/tox.ini:2", "PYTEST_ADDOPTS", "command line"]);
}

#[test]
fn ignores_keep_their_meaning() {
    let cfg = ini(Format::ToxIni, &[("rsyncignore", "*.log build .tox")]);
    let m = run(
        PROJ,
        Some(cfg),
        None,
        Some(
            "pytest -d --tx ssh=h --rsyncignore sub --rsyncignore '*/pkg/data' --rsyncignore '.*'",
        ),
    );
    let got: Vec<(&str, Option<&str>)> = m
        .ignores
        .iter()
        .map(|i| (i.legacy.as_str(), i.rdist.as_deref()))
        .collect();
    assert_eq!(
        got,
        [
            ("sub", Some("sub")),
            ("*/pkg/data", Some("**/pkg/data")),
            (".*", None),
            ("*.log", Some("*.log")),
            ("build", Some("/build")),
            (".tox", Some("/.tox")),
        ]
    );
    assert_eq!(m.config.ignore, ["*.log", "/build", "/.tox"]);
    assert!(has_note(&m, "fixed ignores"));
}

#[test]
fn command_prefix_and_shell_variables() {
    let m = run(
        PROJ,
        None,
        None,
        Some(
            "docker exec -i ${names[0]} pytest -d --tx socket=${names[1]}:8888 --rsyncdir tests/ tests/",
        ),
    );
    assert_eq!(
        m.run.args,
        [
            "--tx",
            "socket=${names[1]}:8888",
            "--rsyncdir",
            "tests",
            "tests/"
        ]
    );
    assert!(has_note(
        &m,
        "`docker exec -i \"${names[0]}\"` before `pytest`"
    ));
    assert!(
        m.run
            .to_string()
            .starts_with("rdist run --tx \"socket=${names[1]}:8888\" ")
    );
    assert!(has_note(&m, "holds a shell variable"));
    assert!(has_note(&m, "INTERNALERROR"));
    let m = run(
        PROJ,
        None,
        None,
        Some("python -m pytest -d --tx popen//chdir=/w"),
    );
    assert!(!has_note(&m, "before `pytest`"));
}

#[test]
fn bad_specs_and_options_are_located_errors() {
    let e = try_run(PROJ, None, None, Some("pytest -d --tx popen//chdri=/w")).unwrap_err();
    assert!(e.to_string().contains("unknown key `chdri`"), "{e}");
    assert_eq!(e.hint().as_deref(), Some("did you mean `chdir`?"));
    assert_eq!(e.origin, Some(Origin::Command));
    let cfg = ini(Format::ToxIni, &[("x", "1"), ("addopts", "--dist lod")]);
    let e = try_run(PROJ, Some(cfg), None, None).unwrap_err();
    assert_eq!(
        e.located(Path::new(PROJ)),
        "tox.ini:3: invalid `--dist` value `lod`: expected one of each, load, loadscope, \
         loadfile, loadgroup, worksteal, no"
    );
}

#[test]
fn sync_notes_explain_pyexecnetcache_implicit_roots_and_layout() {
    let cfg = ini(Format::ToxIni, &[("rsyncdirs", ". src/pkg")]);
    let m = run(PROJ, Some(cfg), None, Some("pytest -d --tx ssh=h"));
    assert!(has_note(&m, "pyexecnetcache"));
    assert!(has_note(&m, "`pytest` and `_pytest` packages"));
    assert!(has_note(&m, "(`.`, `src/pkg`)"));
    assert!(!has_note(&m, "did not sync `tox.ini`"));
    let cfg = ini(Format::ToxIni, &[("rsyncdirs", "src")]);
    let m = run(
        PROJ,
        Some(cfg),
        None,
        Some("pytest -d --tx popen//chdir=/w"),
    );
    assert!(!has_note(&m, "pyexecnetcache"));
    assert!(has_note(&m, "did not sync `tox.ini`"));
}

#[test]
fn roots_without_workers_and_local_only_workers() {
    let cfg = ini(Format::ToxIni, &[("rsyncdirs", "devpi testing")]);
    let m = run(PROJ, Some(cfg.clone()), None, None);
    assert_eq!(
        m.run.to_string(),
        "rdist run --rsyncdir devpi --rsyncdir testing"
    );
    assert!(has_note(&m, "no `--tx` workers found"));
    let m = run(PROJ, Some(cfg), None, Some("pytest -d --tx 2*popen"));
    assert!(has_note(&m, "synced nothing"));
}

#[test]
fn roots_outside_the_project_are_left_out() {
    let cfg = ini(
        Format::ToxIni,
        &[("rsyncdirs", "/tmp/autotests ../sibling src")],
    );
    let m = run(PROJ, Some(cfg), None, None);
    assert_eq!(m.config.roots, ["src"]);
    assert!(has_note(
        &m,
        "root `/tmp/autotests` is outside the project root"
    ));
}

#[test]
fn rdist_toml_is_only_offered_when_there_is_something() {
    let m = run(
        PROJ,
        Some(ini(Format::ToxIni, &[("addopts", "-rs")])),
        None,
        None,
    );
    assert_eq!(m.rdist_toml(), None);
    assert!(!m.has_legacy_rsync());
    let m = run(
        PROJ,
        Some(ini(Format::SetupCfg, &[("rsyncdirs", "src")])),
        None,
        None,
    );
    assert!(m.has_legacy_rsync());
    let text = m.rdist_toml().unwrap();
    assert!(text.starts_with(
        "# rdist configuration, written by `rdist migrate` from setup.cfg [tool:pytest].\n"
    ));
    assert!(text.contains("\nroots = [\"src\"]\n"));
}
