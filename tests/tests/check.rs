//! `rdist check`: verdicts and exit codes on real hosts (local workers, the harness's sshd, an
//! unreachable ssh host), real project layouts and fixture environments built here: venvs with
//! hand-written package metadata, a read-only and a full destination (tmpfs mounts, as root),
//! another Python version, a worker that collects other tests. `rdist run`'s pre-flight subset
//! is covered at the end.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rdist_tests::sshd::Sshd;
use rdist_tests::{Sandbox, have_pytest, python, show, use_test_python, write};

fn check(sb: &Sandbox, args: &[&str]) -> Output {
    let mut c = sb.rdist();
    use_test_python(&mut c);
    c.arg("check").args(args).env_remove("RDIST_SSH");
    c.output().expect("run rdist check")
}

fn row<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no `{name}` row in\n{out}"))
}

/// The cell of row `name` in column `col` (0: the first host), as `MARK value`, trimmed.
fn cell(out: &str, name: &str, col: usize) -> String {
    row(out, name)
        .split(" | ")
        .nth(col + 1)
        .unwrap_or_else(|| panic!("no column {col} in the `{name}` row of\n{out}"))
        .trim()
        .to_owned()
}

/// Level, value and hint of check `name` on host `host` in a `--json` document.
fn verdict(doc: &serde_json::Value, host: usize, name: &str) -> (String, String, String) {
    let checks = doc["hosts"][host]["checks"]
        .as_array()
        .unwrap_or_else(|| panic!("no host {host} in {doc}"));
    let c = checks
        .iter()
        .find(|c| c["check"] == name)
        .unwrap_or_else(|| panic!("no `{name}` check in {doc}"));
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("").to_owned();
    (text(&c["level"]), text(&c["value"]), text(&c["hint"]))
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Where a check runs: local child agents, or the harness's sshd (host alias `rdist-a`).
enum Via {
    Popen,
    Ssh(Sshd),
}

impl Via {
    /// Both transports, or just popen (with a note) where sshd is missing.
    fn all() -> Vec<Via> {
        let mut v = vec![Via::Popen];
        v.extend(Sshd::start().map(Via::Ssh));
        v
    }

    fn name(&self) -> &'static str {
        match self {
            Via::Popen => "popen",
            Via::Ssh(_) => "ssh",
        }
    }

    /// The spec of a worker in `dir` with `extra` (`//python=...`) appended. Without a
    /// `python=` in `extra`, the worker runs the harness's Python: `python3` from `PATH` for
    /// popen, `python=` for ssh (sshd's login has the system's default `PATH`).
    fn spec(&self, dir: &Path, extra: &str) -> String {
        match self {
            Via::Popen => format!("popen//chdir={}{extra}", dir.display()),
            Via::Ssh(_) if extra.contains("//python=") => {
                format!("ssh=rdist-a//chdir={}{extra}", dir.display())
            }
            Via::Ssh(_) => format!(
                "ssh=rdist-a//chdir={}{extra}{}",
                dir.display(),
                python::python_key()
            ),
        }
    }

    /// `rdist check --json --tx SPEC` in the sandbox with one more environment variable: the
    /// output, its JSON document, and the context for assertion messages.
    fn check_json(
        &self,
        sb: &Sandbox,
        spec: &str,
        env: Option<(&str, &std::ffi::OsStr)>,
    ) -> (Output, serde_json::Value, String) {
        let mut c = self.rdist(sb);
        if let Some((k, v)) = env {
            c.env(k, v);
        }
        let o = c.args(["check", "--json", "--tx", spec]).output().unwrap();
        let ctx = format!("{}: {}", self.name(), show(&o));
        let doc = rdist_tests::json_of(&o);
        (o, doc, ctx)
    }

    /// `rdist` in the sandbox (through the sshd's client files for ssh), with the harness's
    /// Python first on `PATH`: this machine's side of every comparison.
    fn rdist(&self, sb: &Sandbox) -> Command {
        let mut c = match self {
            Via::Popen => {
                let mut c = sb.rdist();
                c.env_remove("RDIST_SSH");
                c
            }
            Via::Ssh(d) => d.rdist(sb),
        };
        use_test_python(&mut c);
        c
    }
}

/// A venv that sees the harness's Python's packages (pytest, through a `.pth` file naming its
/// `site-packages`) plus the distributions written into it by hand: `*.dist-info` with
/// `METADATA`, `top_level.txt` and, for pytest plugins, `entry_points.txt`; and the importable
/// module itself.
struct Venv(PathBuf);

impl Venv {
    fn new(dir: &Path) -> Venv {
        let st = Command::new(python::python())
            .args(["-m", "venv", "--without-pip"])
            .arg(dir)
            .status()
            .expect("run python -m venv");
        assert!(st.success(), "python -m venv failed");
        let out = Command::new(python::python())
            .args([
                "-c",
                "import sysconfig; print(sysconfig.get_paths()['purelib'])",
            ])
            .output()
            .expect("ask the harness's Python for its site-packages");
        assert!(out.status.success(), "{}", show(&out));
        let venv = Venv(dir.to_owned());
        write(&venv.site().join("harness.pth"), out.stdout);
        venv
    }

    fn python(&self) -> String {
        self.0.join("bin/python").display().to_string()
    }

    fn site(&self) -> PathBuf {
        let lib = std::fs::read_dir(self.0.join("lib"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        lib.join("site-packages")
    }

    /// Installs distribution `name` `version` providing module `module`; a pytest plugin
    /// (`[pytest11]` entry point) when `plugin`.
    fn add(&self, name: &str, version: &str, module: &str, plugin: bool) -> &Venv {
        let info = self
            .site()
            .join(format!("{}-{version}.dist-info", name.replace('-', "_")));
        write(
            &info.join("METADATA"),
            format!("Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"),
        );
        write(&info.join("top_level.txt"), format!("{module}\n"));
        if plugin {
            write(
                &info.join("entry_points.txt"),
                format!("[pytest11]\n{module} = {module}\n"),
            );
        }
        write(&self.site().join(module).join("__init__.py"), "");
        self
    }
}

#[test]
fn a_healthy_local_setup_passes() {
    if !have_pytest() {
        return;
    }
    let sb = Sandbox::new();
    sb.write("pkg/__init__.py", "");
    sb.write("tests/__init__.py", "");
    sb.write("tests/test_a.py", "import pkg\n\ndef test_a():\n    pass\n");
    let w = sb.worker("w");
    let o = check(
        &sb,
        &["-n", "1", "--tx", &format!("popen//chdir={}", w.display())],
    );
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    // `-n` replaces `--tx`, as in xdist: only the in-place column.
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    for r in [
        "reachable",
        "python",
        "pytest",
        "module names",
        "__init__.py",
    ] {
        assert!(row(&out, r).contains("ok "), "{r} not ok\n{out}");
    }
}

#[test]
fn a_missing_interpreter_on_a_worker_is_an_error() {
    if !have_pytest() {
        return;
    }
    let sb = Sandbox::new();
    sb.write("tests/test_a.py", "def test_a():\n    pass\n");
    let w = sb.worker("w");
    let o = check(
        &sb,
        &[
            "--tx",
            &format!("popen//chdir={}//python=python-does-not-exist", w.display()),
        ],
    );
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(row(&out, "python").contains("FAIL"), "{out}");
    assert!(row(&out, "reachable").contains("ok"), "{out}");
    assert!(row(&out, "disk").contains("free"), "{out}");
    assert!(out.contains("hint: "), "{out}");
}

#[test]
fn an_unreachable_host_cannot_be_checked() {
    let sb = Sandbox::new();
    sb.write("tests/test_a.py", "def test_a():\n    pass\n");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let spec = format!("ssh=-p {port} -o StrictHostKeyChecking=no root@127.0.0.1//chdir=/tmp/x");
    let start = std::time::Instant::now();
    let o = check(&sb, &["--tx", &spec, "--connect-timeout", "3"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    assert!(row(&out, "reachable").contains("FAIL"), "{out}");
    assert!(start.elapsed() < std::time::Duration::from_secs(20));
}

#[test]
fn clashing_test_module_names_fail_and_fix_adds_init_files() {
    if !have_pytest() {
        return;
    }
    let sb = Sandbox::new();
    sb.write("tests/unit/test_x.py", "def test_a():\n    pass\n");
    sb.write("tests/integration/test_x.py", "def test_b():\n    pass\n");
    let o = check(&sb, &["-n", "1"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(
        row(&out, "module names").contains("same basename: test_x.py"),
        "{out}"
    );
    let o = check(&sb, &["-n", "1", "--fix"]);
    assert!(sb.proj().join("tests/unit/__init__.py").is_file());
    assert!(sb.proj().join("tests/integration/__init__.py").is_file());
    let o2 = check(&sb, &["-n", "1", "--json"]);
    assert_eq!(o2.status.code(), Some(0), "{}\n{}", show(&o), show(&o2));
    let doc: serde_json::Value = serde_json::from_slice(&o2.stdout).expect("json");
    let checks = doc["hosts"][0]["checks"].as_array().expect("checks");
    assert!(
        checks
            .iter()
            .any(|c| c["check"] == "pytest" && c["level"] == "ok"),
        "{doc}"
    );
}

/// A project whose test imports `fancylib`; this machine's venv has `fancylib 1.0`, `otherlib
/// 2.0` and the plugin `pytest-extra 0.1`.
fn drift_project(sb: &Sandbox) -> Venv {
    sb.write("tests/__init__.py", "");
    sb.write(
        "tests/test_a.py",
        "import fancylib\n\ndef test_a():\n    pass\n\ndef test_b():\n    pass\n",
    );
    sb.write("tests/test_c.py", "def test_c():\n    pass\n");
    let here = Venv::new(&sb.path().join("venv-here"));
    here.add("fancylib", "1.0", "fancylib", false)
        .add("otherlib", "2.0", "otherlib", false)
        .add("pytest-extra", "0.1", "pytest_extra", true);
    here
}

#[test]
fn a_worker_venv_lacking_an_imported_package_and_a_plugin_fails_with_collection_drift() {
    if !have_pytest() {
        return;
    }
    for via in Via::all() {
        let sb = Sandbox::new();
        let here = drift_project(&sb);
        let there = Venv::new(&sb.path().join("venv-there"));
        there.add("otherlib", "2.0", "otherlib", false);
        let spec = via.spec(&sb.worker("w"), &format!("//python={}", there.python()));
        let (o, doc, ctx) = via.check_json(
            &sb,
            &spec,
            Some(("RDIST_LOCAL_PYTHON", here.python().as_ref())),
        );
        assert_eq!(o.status.code(), Some(1), "{ctx}");
        assert_eq!(
            verdict(&doc, 0, "pytest plugins"),
            (
                "error".into(),
                "missing: pytest-extra".into(),
                "install the same pytest plugins there".into()
            ),
            "{ctx}"
        );
        assert_eq!(
            verdict(&doc, 0, "packages"),
            (
                "error".into(),
                "missing, imported by the code: fancylib".into(),
                "install the project's dependencies there (the same requirements file)".into()
            ),
            "{ctx}"
        );
        let (level, value, _) = verdict(&doc, 0, "collection");
        assert_eq!(
            (level.as_str(), value.as_str()),
            ("error", "2 only here, 0 only there"),
            "{ctx}"
        );
        // The table: marks, and the short diff under the hint.
        let o = via
            .rdist(&sb)
            .env("RDIST_LOCAL_PYTHON", here.python())
            .args(["check", "--tx", &spec])
            .output()
            .unwrap();
        let out = stdout(&o);
        let ctx = format!("{}: {}", via.name(), show(&o));
        assert_eq!(o.status.code(), Some(1), "{ctx}");
        assert_eq!(
            cell(&out, "packages", 0),
            "FAIL missing, imported by the code: fancyl…",
            "{ctx}"
        );
        assert_eq!(
            cell(&out, "collection", 0),
            "FAIL 2 only here, 0 only there",
            "{ctx}"
        );
        assert!(out.contains(": collection: the worker collects other tests than this machine (below: first ids only here `-`, only there `+`); `rdist run` would stop with a collection mismatch\n    - tests/test_a.py::test_a\n    - tests/test_a.py::test_b\n    error there: tests/test_a.py: ModuleNotFoundError: No module named 'fancylib'\n"), "{ctx}");
    }
}

#[test]
fn other_package_versions_only_warn() {
    if !have_pytest() {
        return;
    }
    for via in Via::all() {
        let sb = Sandbox::new();
        let here = drift_project(&sb);
        let there = Venv::new(&sb.path().join("venv-there"));
        there
            .add("fancylib", "1.0", "fancylib", false)
            .add("otherlib", "2.1", "otherlib", false)
            .add("pytest-extra", "0.1", "pytest_extra", true);
        let spec = via.spec(&sb.worker("w"), &format!("//python={}", there.python()));
        let (o, doc, ctx) = via.check_json(
            &sb,
            &spec,
            Some(("RDIST_LOCAL_PYTHON", here.python().as_ref())),
        );
        assert_eq!(o.status.code(), Some(0), "{ctx}");
        assert_eq!(
            verdict(&doc, 0, "packages"),
            (
                "warn".into(),
                "0 missing, 1 other version, 0 extra".into(),
                "the environments differ (below: the first differences)".into()
            ),
            "{ctx}"
        );
        let packages = doc["hosts"][0]["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"] == "packages")
            .unwrap();
        assert_eq!(packages["details"][0], "otherlib 2.1 (here 2.0)", "{ctx}");
        assert_eq!(verdict(&doc, 0, "pytest plugins").0, "ok", "{ctx}");
        assert_eq!(
            verdict(&doc, 0, "collection"),
            ("ok".into(), "3 tests, same".into(), String::new()),
            "{ctx}"
        );
    }
}

#[test]
fn a_worker_that_collects_other_tests_is_an_error_with_a_short_diff() {
    if !have_pytest() {
        return;
    }
    for via in Via::all() {
        let sb = Sandbox::new();
        // A conftest that leaves a module out where the environment says so: the worker's
        // `env:` makes its collection differ from this machine's.
        sb.write(
            "conftest.py",
            "import os\ncollect_ignore = ['tests/test_b.py'] if os.environ.get('FLAVOUR') == 'lite' else []\n",
        );
        sb.write("tests/__init__.py", "");
        sb.write("tests/test_a.py", "def test_a():\n    pass\n");
        sb.write("tests/test_b.py", "def test_b():\n    pass\n");
        let spec = via.spec(&sb.worker("w"), "//env:FLAVOUR=lite");
        let (o, doc, ctx) = via.check_json(&sb, &spec, None);
        assert_eq!(o.status.code(), Some(1), "{ctx}");
        let (level, value, hint) = verdict(&doc, 0, "collection");
        assert_eq!(
            (level.as_str(), value.as_str()),
            ("error", "1 only here, 0 only there"),
            "{ctx}"
        );
        assert!(
            hint.starts_with("the worker collects other tests than this machine"),
            "{ctx}"
        );
        let coll = doc["hosts"][0]["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"] == "collection")
            .unwrap()
            .clone();
        assert_eq!(
            coll["details"],
            serde_json::json!(["- tests/test_b.py::test_b"]),
            "{ctx}"
        );
        // Everything else about the host is fine.
        assert_eq!(verdict(&doc, 0, "packages").0, "ok", "{ctx}");
    }
}

#[test]
fn a_read_only_destination_is_an_error() {
    if !have_pytest() {
        return;
    }
    for via in Via::all() {
        let sb = Sandbox::new();
        sb.write("tests/test_a.py", "def test_a():\n    pass\n");
        // Root writes through `chmod 555`; a read-only mount stops everyone.
        let dir = sb.worker("ro");
        let _ro = match rdist_tests::Tmpfs::mount(&dir, "ro,size=1m") {
            Ok(m) => m,
            Err(why) => {
                eprintln!("note: skipped: cannot mount a read-only tmpfs ({why})");
                return;
            }
        };
        let spec = via.spec(&dir, "");
        let (o, doc, ctx) = via.check_json(&sb, &spec, None);
        assert_eq!(o.status.code(), Some(1), "{ctx}");
        assert_eq!(
            verdict(&doc, 0, "destination"),
            (
                "error".into(),
                format!(
                    "cannot create `{}`: Read-only file system (os error 30)",
                    dir.display()
                ),
                "choose a writable `chdir=` or fix the permissions".into()
            ),
            "{ctx}"
        );
        assert_eq!(
            verdict(&doc, 0, "collection"),
            (
                "warn".into(),
                "not collected: the destination is not writable".into(),
                String::new()
            ),
            "{ctx}"
        );
    }
}

#[test]
fn a_destination_without_room_for_the_tree_is_an_error() {
    if !have_pytest() {
        return;
    }
    for via in Via::all() {
        let sb = Sandbox::new();
        sb.write("tests/test_a.py", "def test_a():\n    pass\n");
        sb.write("data/blob.bin", rdist_tests::noise(1536 << 10, 7));
        let dir = sb.worker("small");
        let _disk = match rdist_tests::Tmpfs::mount(&dir, "size=1m") {
            Ok(m) => m,
            Err(why) => {
                eprintln!("note: skipped: cannot mount a tmpfs ({why})");
                return;
            }
        };
        let spec = via.spec(&dir, "");
        let (o, doc, ctx) = via.check_json(&sb, &spec, None);
        assert_eq!(o.status.code(), Some(1), "{ctx}");
        assert_eq!(
            verdict(&doc, 0, "disk"),
            (
                "error".into(),
                "1.0 MiB free, the tree needs 1.5 MiB".into(),
                "free space on the worker or choose another `chdir=`".into()
            ),
            "{ctx}"
        );
        assert_eq!(verdict(&doc, 0, "destination").0, "ok", "{ctx}");
        assert_eq!(
            verdict(&doc, 0, "collection").1,
            "not collected: not enough space for the tree",
            "{ctx}"
        );
        // Nothing was written there.
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n != ".rdist")
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}

/// An interpreter on this machine with another minor version than the harness's Python, if any.
fn other_python() -> Option<(String, String)> {
    let version = |py: &str| -> Option<String> {
        let out = Command::new(py)
            .args(["-c", "import platform; print(platform.python_version())"])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let mine = version(&python::python().display().to_string())?;
    let minor = |v: &str| v.split('.').take(2).collect::<Vec<_>>().join(".");
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/bin")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with("python3.") && n[8..].chars().all(|c| c.is_ascii_digit())
        })
        .collect();
    if let Some(home) = std::env::var_os("HOME") {
        let pyenv = Path::new(&home).join(".pyenv/versions");
        candidates.extend(
            std::fs::read_dir(pyenv)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path().join("bin/python3")),
        );
    }
    candidates.sort();
    candidates.into_iter().rev().find_map(|p| {
        let py = p.display().to_string();
        let v = version(&py)?;
        (minor(&v) != minor(&mine) && v.starts_with('3')).then_some((py, mine.clone()))
    })
}

#[test]
fn another_python_version_is_shown_and_its_missing_pytest_fails() {
    if !have_pytest() {
        return;
    }
    let Some((python, mine)) = other_python() else {
        eprintln!("note: skipped: no Python 3 with another minor version than `python3` here");
        return;
    };
    for via in Via::all() {
        let sb = Sandbox::new();
        sb.write("tests/test_a.py", "def test_a():\n    pass\n");
        let spec = via.spec(&sb.worker("w"), &format!("//python={python}"));
        let (o, doc, ctx) = via.check_json(&sb, &spec, None);
        let (level, value, hint) = verdict(&doc, 0, "python");
        assert_eq!(level, "warn", "{ctx}");
        assert!(value.starts_with("CPython 3."), "{ctx}");
        assert_eq!(hint, format!("this machine runs CPython {mine}"), "{ctx}");
        let has_pytest = Command::new(&python)
            .args(["-c", "import pytest"])
            .output()
            .is_ok_and(|o| o.status.success());
        if has_pytest {
            assert_ne!(verdict(&doc, 0, "pytest").0, "error", "{ctx}");
        } else {
            assert_eq!(o.status.code(), Some(1), "{ctx}");
            let (level, value, _) = verdict(&doc, 0, "pytest");
            assert_eq!(
                (level.as_str(), value.as_str()),
                ("error", "missing"),
                "{ctx}"
            );
            assert_eq!(
                verdict(&doc, 0, "collection").1,
                "not collected: no pytest there",
                "{ctx}"
            );
        }
    }
}

#[test]
fn run_stops_before_any_test_when_the_pre_flight_check_fails_and_no_check_skips_it() {
    if !have_pytest() {
        return;
    }
    for via in Via::all() {
        let sb = Sandbox::new();
        let here = drift_project(&sb);
        let there = Venv::new(&sb.path().join("venv-there"));
        there.add("otherlib", "2.0", "otherlib", false);
        let spec = via.spec(&sb.worker("w"), &format!("//python={}", there.python()));
        let o = via
            .rdist(&sb)
            .env("RDIST_LOCAL_PYTHON", here.python())
            .args(["run", "--tx", &spec])
            .output()
            .unwrap();
        let ctx = format!("{}: {}", via.name(), show(&o));
        assert_eq!(o.status.code(), Some(1), "{ctx}");
        let out = stdout(&o);
        assert_eq!(
            cell(&out, "packages", 0),
            "FAIL missing, imported by the code: fancyl…",
            "{ctx}"
        );
        assert_eq!(
            cell(&out, "pytest plugins", 0),
            "FAIL missing: pytest-extra",
            "{ctx}"
        );
        assert!(
            !out.contains("collection"),
            "collection is not in the fast subset: {ctx}"
        );
        assert!(
            rdist_tests::stderr_of(&o)
                .contains("error: the pre-flight check found problems; no tests were run"),
            "{ctx}"
        );
        assert!(!out.contains("test session starts"), "{ctx}");
        let o = via
            .rdist(&sb)
            .env("RDIST_LOCAL_PYTHON", here.python())
            .args(["run", "--no-check", "--tx", &spec])
            .output()
            .unwrap();
        let ctx = format!("{}: {}", via.name(), show(&o));
        assert!(stdout(&o).contains("test session starts"), "{ctx}");
        assert!(!rdist_tests::stderr_of(&o).contains("pre-flight"), "{ctx}");
    }
}
