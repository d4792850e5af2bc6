//! rdist's own configuration file through the real binary: `rdist.toml` and `[tool.rdist]` in
//! `pyproject.toml` read by `rdist sync`, `rdist run` and `rdist check`; the command line
//! replacing the file's lists; `--config` and `--no-config`; the exact error lines for unknown
//! keys, wrong types and missing roots; and `rdist run` with a legacy pytest-xdist line.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use rdist_tests::{Sandbox, assert_ok, have_pytest, show, stderr_of};

fn tx(dest: &Path) -> String {
    format!("popen//chdir={}", dest.display())
}

/// A TOML basic string (Rust's debug quoting agrees for the paths of these tests).
fn quoted(s: &str) -> String {
    format!("{s:?}")
}

/// A project with `src/` (a module and a log), `other/` and `docs/`.
fn project() -> Sandbox {
    let sb = Sandbox::new();
    sb.write("src/pkg/__init__.py", "x = 1\n");
    sb.write("src/pkg/debug.log", "noise\n");
    sb.write("other/b.py", "b = 2\n");
    sb.write("docs/index.md", "# docs\n");
    sb
}

/// Runs `rdist ARGS` in the project, with pytest's and rdist's environment knobs cleared, killed
/// after a minute so a hang fails the test instead of blocking the suite.
fn rdist(sb: &Sandbox, args: &[&str]) -> Output {
    let mut cmd = sb.rdist();
    if args.first() == Some(&"run") {
        // Workers run `python3`: the harness's Python, first on PATH as in an activated venv.
        rdist_tests::use_test_python(&mut cmd);
    }
    let mut child = cmd
        .args(args)
        .env_remove("RDIST_CONNECT_TIMEOUT")
        .env_remove("RDIST_HEARTBEAT_TIMEOUT")
        .env_remove("PYTEST_ADDOPTS")
        .env_remove("PYTEST_XDIST_WORKER")
        .env_remove("RDIST_WORKER")
        .env("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start rdist");
    let start = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("`rdist {}` still running after 60 s", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("rdist output")
}

/// Asserts a usage error (exit 4) whose stderr is exactly `lines`.
#[track_caller]
fn assert_usage_error(o: &Output, lines: &str) {
    assert_eq!(o.status.code(), Some(4), "{}", show(o));
    assert_eq!(stderr_of(o), lines, "{}", show(o));
}

#[test]
fn config_alone_drives_a_sync_to_a_popen_chdir_worker() {
    let sb = project();
    let w = sb.worker("w");
    sb.write(
        "rdist.toml",
        format!(
            "[sync]\nroots = [\"src\"]\nignore = [\"*.log\"]\n\n[run]\ntx = [{}]\n",
            quoted(&tx(&w))
        ),
    );
    let o = rdist(&sb, &["sync"]);
    assert_ok(&o);
    assert_eq!(
        std::fs::read_to_string(w.join("src/pkg/__init__.py")).unwrap(),
        "x = 1\n"
    );
    assert!(w.join("rdist.toml").is_file(), "project files come along");
    assert!(!w.join("src/pkg/debug.log").exists(), "`ignore` applies");
    assert!(!w.join("other").exists(), "only `roots` are synced");
}

#[test]
fn command_line_lists_replace_the_config_lists() {
    let sb = project();
    let (w1, w2) = (sb.worker("w1"), sb.worker("w2"));
    sb.write(
        "rdist.toml",
        format!(
            "[sync]\nroots = [\"src\"]\nignore = [\"*.log\"]\n[run]\ntx = [{}]\n",
            quoted(&tx(&w1))
        ),
    );
    let o = rdist(
        &sb,
        &[
            "sync",
            "--tx",
            &tx(&w2),
            "--rsyncdir",
            "src",
            "--rsyncignore",
            "*.md",
        ],
    );
    assert_ok(&o);
    assert!(
        !w1.exists(),
        "the config's worker is replaced: {}",
        show(&o)
    );
    assert!(w2.join("src/pkg/__init__.py").is_file());
    // `--rsyncignore` replaced `ignore`: the log is synced now.
    assert!(w2.join("src/pkg/debug.log").is_file(), "{}", show(&o));
    // A command-line root replaces the config's roots.
    let w3 = sb.worker("w3");
    assert_ok(&rdist(
        &sb,
        &["sync", "--tx", &tx(&w3), "--rsyncdir", "other"],
    ));
    assert!(w3.join("other/b.py").is_file());
    assert!(!w3.join("src").exists());
}

#[test]
fn tool_rdist_in_pyproject_is_read() {
    let sb = project();
    let w = sb.worker("w");
    sb.write(
        "pyproject.toml",
        format!(
            "[project]\nname = \"demo\"\n\n[tool.rdist.sync]\nroots = [\"other\"]\n\n\
             [tool.rdist.run]\ntx = [{}]\n",
            quoted(&tx(&w))
        ),
    );
    let o = rdist(&sb, &["sync"]);
    assert_ok(&o);
    assert!(w.join("other/b.py").is_file(), "{}", show(&o));
    assert!(w.join("pyproject.toml").is_file());
    assert!(!w.join("src").exists());
}

#[test]
fn rdist_toml_wins_over_tool_rdist_and_says_so() {
    let sb = project();
    let (w1, w2) = (sb.worker("w1"), sb.worker("w2"));
    sb.write(
        "pyproject.toml",
        format!("[tool.rdist.run]\ntx = [{}]\n", quoted(&tx(&w1))),
    );
    sb.write(
        "rdist.toml",
        format!(
            "[sync]\nroots = [\"src\"]\n[run]\ntx = [{}]\n",
            quoted(&tx(&w2))
        ),
    );
    let o = rdist(&sb, &["sync"]);
    assert_ok(&o);
    assert!(w2.join("src").is_dir() && !w1.exists(), "{}", show(&o));
    assert!(
        stderr_of(&o).contains(
            "note: both `rdist.toml` and `pyproject.toml` [tool.rdist] have rdist settings; \
             using `rdist.toml` and ignoring [tool.rdist]\n"
        ),
        "{}",
        show(&o)
    );
}

#[test]
fn unknown_key_is_an_error_with_did_you_mean_in_every_command() {
    let sb = project();
    sb.write("rdist.toml", "[run]\ntx = [\"popen\"]\nnumprocess = 4\n");
    let expected = "error: rdist.toml:3: unknown key `numprocess` in [run]\n\
                    hint: did you mean `numprocesses`?\n";
    for command in ["sync", "run", "check"] {
        assert_usage_error(&rdist(&sb, &[command]), expected);
    }
    // From a subdirectory, the path is shown as it is.
    std::fs::create_dir_all(sb.proj().join("src/deep")).unwrap();
    let o = sb
        .rdist()
        .current_dir(sb.proj().join("src/deep"))
        .arg("sync")
        .output()
        .unwrap();
    let path = std::fs::canonicalize(sb.proj()).unwrap().join("rdist.toml");
    assert_usage_error(
        &o,
        &format!(
            "error: {}:3: unknown key `numprocess` in [run]\nhint: did you mean `numprocesses`?\n",
            path.display()
        ),
    );
}

#[test]
fn wrong_type_names_the_key_and_the_expected_type() {
    let sb = project();
    sb.write(
        "pyproject.toml",
        "[tool.rdist.run]\n\nconnect_timeout = \"5\"\n",
    );
    assert_usage_error(
        &rdist(&sb, &["sync"]),
        "error: pyproject.toml:3: `connect_timeout` must be a number of seconds, not a string\n",
    );
    sb.write(
        "pyproject.toml",
        "[tool.rdist.sync]\nroots = \"src other\"\n",
    );
    assert_usage_error(
        &rdist(&sb, &["sync"]),
        "error: pyproject.toml:2: `roots` must be a list of strings, not a string\n\
         hint: write `roots = [\"src\", \"other\"]`\n",
    );
}

#[test]
fn missing_root_is_reported_at_its_line() {
    let sb = project();
    let w = sb.worker("w");
    sb.write(
        "rdist.toml",
        format!(
            "[run]\ntx = [{}]\n\n[sync]\nroots = [\"src\", \"srcx\"]\n",
            quoted(&tx(&w))
        ),
    );
    let root = std::fs::canonicalize(sb.proj()).unwrap();
    assert_usage_error(
        &rdist(&sb, &["sync"]),
        &format!(
            "error: rdist.toml:5: root `srcx` does not exist\n\
             hint: roots in `rdist.toml` are relative to its directory, `{}`\n",
            root.display()
        ),
    );
    assert!(!w.exists());
}

#[test]
fn no_workers_anywhere_is_a_usage_error_with_a_hint() {
    let sb = project();
    assert_usage_error(
        &rdist(&sb, &["sync", "--rsyncdir", "src"]),
        "error: no workers given\nhint: name where to sync with `--tx SPEC` (repeatable), e.g. \
         `--tx popen//chdir=DIR`, or with `tx` in the `[run]` table of `rdist.toml`\n",
    );
}

#[test]
fn no_config_ignores_the_file_and_config_points_elsewhere() {
    let sb = project();
    sb.write("rdist.toml", "[run]\nbroken_key = 1\n");
    let w = sb.worker("w");
    let o = rdist(
        &sb,
        &["sync", "--no-config", "--rsyncdir", "src", "--tx", &tx(&w)],
    );
    assert_ok(&o);
    assert!(w.join("src/pkg/__init__.py").is_file());
    // `--config FILE`: roots relative to that file's directory.
    let w2 = sb.worker("w2");
    sb.write(
        "ci/rdist-ci.toml",
        format!(
            "[sync]\nroots = [\"../other\"]\n[run]\ntx = [{}]\n",
            quoted(&tx(&w2))
        ),
    );
    let o = rdist(&sb, &["sync", "--config", "ci/rdist-ci.toml"]);
    assert_ok(&o);
    assert!(w2.join("other/b.py").is_file(), "{}", show(&o));
    let o = rdist(&sb, &["sync", "--config", "nope.toml"]);
    assert_eq!(o.status.code(), Some(4), "{}", show(&o));
    assert!(
        stderr_of(&o).starts_with("error: nope.toml: cannot read the file\n  Caused by: "),
        "{}",
        show(&o)
    );
}

const TESTS: &str = "def test_a():\n    pass\n\n\ndef test_b():\n    pass\n";

#[test]
fn run_takes_workers_and_dist_from_the_config() {
    if !have_pytest() {
        return;
    }
    let sb = project();
    sb.write("tests/test_m.py", TESTS);
    let w = sb.worker("w");
    sb.write(
        "rdist.toml",
        format!(
            "[run]\ntx = [{}]\ndist = \"each\"\n",
            quoted(&format!("2*{}", tx(&w)))
        ),
    );
    let o = rdist(&sb, &["run", "tests"]);
    assert_ok(&o);
    let out = String::from_utf8_lossy(&o.stdout);
    // `each`: both tests on both workers.
    assert!(out.contains(" 4 passed in "), "{}", show(&o));
    assert!(w.join("tests/test_m.py").is_file());
    // `--dist` on the command line overrides the file.
    let o = rdist(&sb, &["run", "--dist", "load", "tests"]);
    assert_ok(&o);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(" 2 passed in "),
        "{}",
        show(&o)
    );
}

#[test]
fn run_accepts_a_legacy_xdist_line() {
    if !have_pytest() {
        return;
    }
    let sb = project();
    sb.write("tests/test_m.py", TESTS);
    let w = sb.worker("w");
    let spec = format!("--tx=2*{}", tx(&w));
    // pytest's and xdist's options mixed, as an old CI script has them.
    let line = [
        "run",
        "-x",
        "-d",
        &spec,
        "--rsyncdir",
        "tests",
        "tests/",
        "--dist=each",
        "-k",
        "test_a",
        "-v",
    ];
    let o = rdist(&sb, &line);
    assert_ok(&o);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains(" 2 passed"), "{}", show(&o));
    // `-v` is rdist's, `-k` pytest's: test_a on both workers (`each`), test_b deselected.
    let passed: Vec<&str> = out.lines().filter(|l| l.contains(" PASSED ")).collect();
    assert_eq!(passed.len(), 2, "{}", show(&o));
    assert!(
        passed
            .iter()
            .all(|l| l.ends_with("PASSED tests/test_m.py::test_a")),
        "{}",
        show(&o)
    );
    // Synced first, only what `--rsyncdir` names (plus the project files).
    assert!(w.join("tests/test_m.py").is_file(), "{}", show(&o));
    assert!(w.join("pyproject.toml").is_file());
    assert!(
        !w.join("src").exists(),
        "`--rsyncdir tests` limits the sync"
    );
}
