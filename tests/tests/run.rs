//! `rdist run`, the distributed pytest, with the real binary and real pytest workers: exit codes
//! as pytest's, the pytest-style report (closing line, FAILURES/ERRORS sections, short summary,
//! `-v` lines), `--json`, the `--dist` modes, worker crashes and restarts, the heartbeat,
//! `chdir=` workers, relative test paths, and longest-first ordering from remembered durations.
//!
//! Every project is a throwaway [`Sandbox`] with its own `RDIST_CACHE_DIR`. Every run has a
//! timeout: rdist runs in its own process group (with its workers), and the whole group is
//! killed when the run takes too long, so a hang fails instead of blocking the suite.
//!
//! Workers run the harness's Python (pinned pytest in a venv, [`rdist_tests::python`]), first on
//! rdist's `PATH` as in an activated venv. Without it the tests are skipped with a note, except
//! under CI (`CI` set), where they fail.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rdist_tests::{Sandbox, have_pytest, show};

/// The longest any single `rdist run` may take before it is killed and the test fails.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// What the worker interpreter reports about itself: `sys.platform`, the Python version and
/// `sys.executable`, as the report's section headers show them.
fn python_identity() -> (String, String, String) {
    // What the workers run: `python3` from the tests' Python, first on their PATH.
    let out = Command::new(rdist_tests::python::python_dir().join("python3"))
        .args([
            "-c",
            "import platform, sys; print(sys.platform); print(platform.python_version()); print(sys.executable)",
        ])
        .output()
        .expect("the tests' python3");
    let text = String::from_utf8(out.stdout).unwrap();
    let mut l = text.lines().map(str::to_owned);
    (l.next().unwrap(), l.next().unwrap(), l.next().unwrap())
}

/// One finished `rdist run`.
struct Run {
    out: Output,
    elapsed: Duration,
}

impl Run {
    fn code(&self) -> Option<i32> {
        self.out.status.code()
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }

    fn show(&self) -> String {
        format!("{}\n--- took {:?}", show(&self.out), self.elapsed)
    }

    /// Asserts the exit code, showing the whole run when it differs.
    fn expect_code(&self, want: i32) -> &Self {
        assert_eq!(self.code(), Some(want), "{}", self.show());
        self
    }

    /// Asserts that stdout contains `needle`.
    fn expect_out(&self, needle: &str) -> &Self {
        assert!(
            self.stdout().contains(needle),
            "stdout lacks {needle:?}\n{}",
            self.show()
        );
        self
    }

    /// The text of pytest's closing line (`1 failed, 2 passed in 0.12s`), without the `=` rule.
    fn closing(&self) -> String {
        rdist_tests::closing_line(&self.stdout())
    }

    /// The `-v` lines: (worker, outcome word, node id), in the order printed.
    fn verbose_lines(&self) -> Vec<(String, String, String)> {
        verbose_lines(&self.stdout())
    }
}

/// Parses `[gw0] [ 33%] PASSED tests/test_a.py::test_a` lines.
fn verbose_lines(report: &str) -> Vec<(String, String, String)> {
    report
        .lines()
        .filter_map(|l| {
            let (worker, rest) = l.strip_prefix('[')?.split_once("] [")?;
            let (_pct, rest) = rest.split_once("%] ")?;
            let (word, id) = rest.split_once(' ')?;
            Some((worker.to_owned(), word.to_owned(), id.to_owned()))
        })
        .collect()
}

/// Asserts that a closing line reads `counts in N.NNs`.
fn assert_counts(closing: &str, counts: &str, whole: &str) {
    let rest = closing.strip_prefix(counts).unwrap_or_else(|| {
        panic!("closing line {closing:?} does not start with {counts:?}\n{whole}")
    });
    let secs = rest
        .strip_prefix(" in ")
        .and_then(|t| t.strip_suffix('s'))
        .unwrap_or_else(|| panic!("closing line {closing:?}: no ` in N.NNs` after the counts"));
    assert!(
        secs.parse::<f64>().is_ok(),
        "closing line {closing:?}: bad time"
    );
}

/// Kills a whole process group (rdist and its workers); `unsafe` is forbidden here, so through
/// kill(1).
fn kill_group(pgid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Runs `rdist run ARGS` in `dir` (a directory of the sandbox's project) with the sandbox's cache,
/// killing it (and its workers) after [`RUN_LIMIT`].
fn rdist_run_in(sb: &Sandbox, dir: &Path, args: &[&str]) -> Run {
    let mut cmd = sb.rdist();
    cmd.current_dir(dir)
        .arg("run")
        .args(args)
        // Hermetic workers: no inherited pytest options, xdist identity, heartbeat override, or
        // third-party plugins (pytest-randomly would make the workers' collections differ).
        .env_remove("RDIST_HEARTBEAT_TIMEOUT")
        .env_remove("PYTEST_ADDOPTS")
        .env_remove("PYTEST_PLUGINS")
        .env_remove("PYTEST_XDIST_WORKER")
        .env_remove("PYTEST_XDIST_WORKER_COUNT")
        .env_remove("PYTEST_XDIST_TESTRUNUID")
        .env_remove("RDIST_WORKER")
        .env_remove("RDIST_SSH")
        .env("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    rdist_tests::use_test_python(&mut cmd);
    let start = Instant::now();
    let mut child = cmd.spawn().expect("start rdist");
    let pgid = child.id();
    let reader = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out_t = reader(Box::new(child.stdout.take().unwrap()));
    let err_t = reader(Box::new(child.stderr.take().unwrap()));
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for rdist") {
            break s;
        }
        if start.elapsed() > RUN_LIMIT {
            // rdist is not reaped yet, so the group id is still its own.
            kill_group(pgid);
            let s = child.wait().unwrap();
            let out = Output {
                status: s,
                stdout: out_t.join().unwrap(),
                stderr: err_t.join().unwrap(),
            };
            panic!(
                "`rdist run {}` still running after {RUN_LIMIT:?}: killed\n{}",
                args.join(" "),
                show(&out)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // No group kill after a normal exit: rdist waits for its workers, and once it is reaped its
    // process group id could belong to someone else.
    let elapsed = start.elapsed();
    Run {
        out: Output {
            status,
            stdout: out_t.join().unwrap(),
            stderr: err_t.join().unwrap(),
        },
        elapsed,
    }
}

/// Runs `rdist run ARGS` at the project root.
fn rdist_run(sb: &Sandbox, args: &[&str]) -> Run {
    rdist_run_in(sb, &sb.proj(), args)
}

/// A sandbox project holding `files` (project-relative path, content).
fn project(files: &[(&str, &str)]) -> Sandbox {
    let sb = Sandbox::new();
    for (path, text) in files {
        sb.write(path, text);
    }
    sb
}

/// Which workers ran each node id, from `-v` lines.
fn workers_by_id(lines: &[(String, String, String)]) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (w, _, id) in lines {
        m.entry(id.clone()).or_default().push(w.clone());
    }
    m
}

const PASSING: &str = r#"def test_a():
    pass

def test_b():
    pass

def test_c():
    pass
"#;

#[test]
fn passing_suite_exits_0_with_pytest_closing_line() {
    if !have_pytest() {
        return;
    }
    let sb = project(&[("tests/test_ok.py", PASSING)]);
    let r = rdist_run(&sb, &["-n", "2"]);
    r.expect_code(0).expect_out("test session starts");
    assert_counts(&r.closing(), "3 passed", &r.show());
    assert!(
        r.stdout().contains("...") && !r.stdout().contains("PASSED"),
        "{}",
        r.show()
    );
}

#[test]
fn verbose_lists_passed_lines_of_both_workers() {
    if !have_pytest() {
        return;
    }
    let sb = project(&[("tests/test_ok.py", PASSING)]);
    let r = rdist_run(&sb, &["-n", "2", "-v"]);
    r.expect_code(0);
    let lines = r.verbose_lines();
    let mut ids: Vec<&str> = lines.iter().map(|(_, _, id)| id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        [
            "tests/test_ok.py::test_a",
            "tests/test_ok.py::test_b",
            "tests/test_ok.py::test_c"
        ],
        "{}",
        r.show()
    );
    assert!(lines.iter().all(|(_, w, _)| w == "PASSED"), "{}", r.show());
    for gw in ["gw0", "gw1"] {
        assert!(
            lines.iter().any(|(w, _, _)| w == gw),
            "no {gw} line\n{}",
            r.show()
        );
    }
    r.expect_out("[100%] PASSED ");
    assert_counts(&r.closing(), "3 passed", &r.show());
}

#[test]
fn json_output_has_outcomes_and_exit_code() {
    if !have_pytest() {
        return;
    }
    let sb = project(&[("tests/test_ok.py", PASSING)]);
    let r = rdist_run(&sb, &["-n", "2", "--json"]);
    r.expect_code(0);
    let v: serde_json::Value = serde_json::from_str(r.stdout().trim())
        .unwrap_or_else(|e| panic!("stdout is not JSON: {e}\n{}", r.show()));
    assert_eq!(v["exit_code"], 0, "{v:#}");
    assert_eq!(v["collected"], 3, "{v:#}");
    assert_eq!(v["counts"]["passed"], 3, "{v:#}");
    let tests = v["tests"].as_array().expect("tests array");
    let mut got: Vec<(String, String)> = tests
        .iter()
        .map(|t| {
            (
                t["nodeid"].as_str().unwrap().to_owned(),
                t["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    got.sort();
    let want: Vec<(String, String)> = ["a", "b", "c"]
        .iter()
        .map(|n| (format!("tests/test_ok.py::test_{n}"), "passed".to_owned()))
        .collect();
    assert_eq!(got, want, "{v:#}");
    assert!(
        tests
            .iter()
            .all(|t| matches!(t["worker"].as_str(), Some("gw0" | "gw1"))),
        "{v:#}"
    );
    // The human report goes to stderr instead.
    assert!(r.stderr().contains("3 passed in"), "{}", r.show());
}

const MIXED: &str = r#"import pytest


@pytest.fixture
def broken_setup():
    raise RuntimeError("setup went wrong")


@pytest.fixture
def broken_teardown():
    yield
    raise RuntimeError("teardown went wrong")


def test_pass1():
    pass


def test_pass2():
    pass


def test_pass3():
    pass


def test_fail():
    print("hello from the failing test")
    assert 1 + 1 == 3


def test_setup_error(broken_setup):
    pass


def test_teardown_error(broken_teardown):
    pass


def test_skip():
    pytest.skip("not today")


@pytest.mark.xfail(reason="known bug")
def test_xfail():
    assert False


@pytest.mark.xfail(reason="fixed already")
def test_xpass():
    pass
"#;

#[test]
fn mixed_suite_reports_every_outcome_like_pytest() {
    if !have_pytest() {
        return;
    }
    let (platform, version, exe) = python_identity();
    let sb = project(&[("tests/test_mixed.py", MIXED)]);
    let r = rdist_run(&sb, &["-n", "2"]);
    r.expect_code(1);
    let out = r.stdout();
    // As pytest counts them: the teardown error is a second outcome of a passed test.
    assert_counts(
        &r.closing(),
        "1 failed, 4 passed, 1 skipped, 1 xfailed, 1 xpassed, 2 errors",
        &r.show(),
    );
    let lines: Vec<&str> = out.lines().collect();
    let after = |head: &str| -> &str {
        let at = lines
            .iter()
            .position(|l| l.starts_with('_') && l.contains(&format!(" {head} ")))
            .unwrap_or_else(|| panic!("no `{head}` section\n{}", r.show()));
        lines.get(at + 1).copied().unwrap_or_default()
    };
    let worker_header = |line: &str| {
        let (gw, rest) = line
            .split_once(' ')
            .unwrap_or_else(|| panic!("bad section header {line:?}\n{}", r.show()));
        assert!(
            matches!(gw, "[gw0]" | "[gw1]"),
            "section header {line:?} names no worker"
        );
        assert_eq!(rest, format!("{platform} -- Python {version} {exe}"));
    };
    // Sections in pytest's order: ERRORS before FAILURES, each headed by its worker's platform.
    let errors = out.find("= ERRORS =").expect("ERRORS section");
    let failures = out.find("= FAILURES =").expect("FAILURES section");
    let summary = out
        .find("= short test summary info =")
        .expect("short summary");
    assert!(errors < failures && failures < summary, "{}", r.show());
    worker_header(after("test_fail"));
    worker_header(after("ERROR at setup of test_setup_error"));
    worker_header(after("ERROR at teardown of test_teardown_error"));
    for needle in [
        "E       assert (1 + 1) == 3",
        "RuntimeError: setup went wrong",
        "RuntimeError: teardown went wrong",
    ] {
        r.expect_out(needle);
    }
    // The failing test's printed output, under pytest's section rule.
    let cap = lines
        .iter()
        .position(|l| l.starts_with('-') && l.contains(" Captured stdout call "))
        .unwrap_or_else(|| panic!("no `Captured stdout call` section\n{}", r.show()));
    assert_eq!(
        lines[cap + 1],
        "hello from the failing test",
        "{}",
        r.show()
    );
    // The short summary names worker and platform.
    let summary_lines: Vec<&str> = out[summary..].lines().skip(1).collect();
    let has = |word: &str, id: &str| {
        summary_lines.iter().any(|l| {
            ["gw0", "gw1"]
                .iter()
                .any(|gw| l.starts_with(&format!("[{gw} {platform}] {word} {id}")))
        })
    };
    assert!(
        has("FAILED", "tests/test_mixed.py::test_fail - "),
        "{}",
        r.show()
    );
    assert!(
        has(
            "ERROR",
            "tests/test_mixed.py::test_setup_error - RuntimeError: setup went wrong"
        ),
        "{}",
        r.show()
    );
    assert!(
        has(
            "ERROR",
            "tests/test_mixed.py::test_teardown_error - RuntimeError: teardown went wrong"
        ),
        "{}",
        r.show()
    );
    // Neither skips, xfails nor xpasses are failures.
    for id in ["test_skip", "test_xfail", "test_xpass", "test_pass1"] {
        assert!(
            !summary_lines.iter().any(|l| l.contains(id)),
            "{id} in the short summary\n{}",
            r.show()
        );
    }
}

const SYNTAX_ERROR: &str = "def test_bad(:\n    pass\n";

#[test]
fn collection_error_exits_2_with_error_collecting_section() {
    if !have_pytest() {
        return;
    }
    let sb = project(&[
        ("tests/test_ok.py", PASSING),
        ("tests/test_bad.py", SYNTAX_ERROR),
    ]);
    let r = rdist_run(&sb, &["-n", "2"]);
    r.expect_code(2)
        .expect_out("= ERRORS =")
        .expect_out(" ERROR collecting tests/test_bad.py ")
        .expect_out("SyntaxError")
        .expect_out("Interrupted: ");
    // Nothing ran: the good tests are not reported.
    assert!(!r.stdout().contains("passed"), "{}", r.show());
}

#[test]
fn collection_error_closing_line_counts_the_error() {
    if !have_pytest() {
        return;
    }
    let sb = project(&[
        ("tests/test_ok.py", PASSING),
        ("tests/test_bad.py", SYNTAX_ERROR),
    ]);
    let r = rdist_run(&sb, &["-n", "2"]);
    r.expect_code(2);
    // pytest: `ERROR tests/test_bad.py` in the short summary,
    // `!!! Interrupted: 1 error during collection !!!`, `=== 1 error in 0.30s ===`.
    assert_counts(&r.closing(), "1 error", &r.show());
    r.expect_out("] ERROR tests/test_bad.py");
}

/// Collects `test_b` only where `VARIANT` is not set; every test that runs leaves a file.
const VARIANT_CONFTEST: &str = r#"import os


def pytest_collection_modifyitems(config, items):
    if os.environ.get("VARIANT") == "1":
        items[:] = [i for i in items if i.name != "test_b"]
"#;

const VARIANT_TESTS: &str = r#"import pathlib


def _ran(name):
    (pathlib.Path(__file__).parent / ("ran_" + name)).write_text("x")


def test_a():
    _ran("a")


def test_b():
    _ran("b")
"#;

#[test]
fn differing_collections_exit_1_and_run_nothing() {
    if !have_pytest() {
        return;
    }
    let sb = project(&[
        ("tests/conftest.py", VARIANT_CONFTEST),
        ("tests/test_v.py", VARIANT_TESTS),
    ]);
    let (a, b) = (sb.worker("A"), sb.worker("B"));
    let r = rdist_run(
        &sb,
        &[
            "--tx",
            &format!("popen//chdir={}//env:VARIANT=1", a.display()),
            "--tx",
            &format!("popen//chdir={}", b.display()),
        ],
    );
    r.expect_code(1)
        .expect_out("Different tests were collected between gw0 and gw1")
        .expect_out("tests/test_v.py::test_b");
    assert_eq!(
        r.closing().split(" in ").next(),
        Some("no tests ran"),
        "{}",
        r.show()
    );
    // Both were synced, and neither ran anything.
    for dir in [&a, &b, &sb.proj()] {
        assert!(dir.join("tests/test_v.py").is_file(), "{}", dir.display());
        for name in ["ran_a", "ran_b"] {
            assert!(
                !dir.join("tests").join(name).exists(),
                "{name} ran in {}\n{}",
                dir.display(),
                r.show()
            );
        }
    }
}

#[test]
fn no_tests_exits_5() {
    if !have_pytest() {
        return;
    }
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.proj().join("tests")).unwrap();
    let r = rdist_run(&sb, &["-n", "2"]);
    r.expect_code(5);
    assert_eq!(
        r.closing().split(" in ").next(),
        Some("no tests ran"),
        "{}",
        r.show()
    );
}

/// `test_crash` kills its own worker: on its first attempt only (a marker file) unless
/// `ALWAYS` is set. The other tests take 50 ms each, so the other worker is still busy when the
/// crash is noticed.
fn crash_suite(always: bool, others: usize) -> String {
    let mut s = format!(
        r#"import os
import pathlib
import signal
import time

MARK = pathlib.Path(__file__).parent / "crashed_once"


def test_crash():
    if {always} or not MARK.exists():
        MARK.write_text("x")
        os.kill(os.getpid(), signal.SIGKILL)
"#,
        always = if always { "True" } else { "False" }
    );
    for i in 0..others {
        s.push_str(&format!("\n\ndef test_ok{i:02}():\n    time.sleep(0.05)\n"));
    }
    s
}

#[test]
fn crashed_worker_is_restarted_and_the_test_reported_failed() {
    if !have_pytest() {
        return;
    }
    let sb = project(&[("tests/test_crash.py", &crash_suite(false, 8))]);
    let r = rdist_run(&sb, &["-n", "2", "-v"]);
    r.expect_code(1)
        .expect_out("restarting worker (1 of ")
        .expect_out("crashed while running this test");
    assert_counts(&r.closing(), "1 failed, 8 passed", &r.show());
    let lines = r.verbose_lines();
    let crash: Vec<_> = lines
        .iter()
        .filter(|(_, _, id)| id == "tests/test_crash.py::test_crash")
        .collect();
    assert_eq!(crash.len(), 1, "{}", r.show());
    assert_eq!(crash[0].1, "FAILED", "{}", r.show());
    let gw = &crash[0].0;
    assert!(
        r.stdout().lines().any(|l| l.starts_with(&format!("[{gw} "))
            && l.contains("] FAILED tests/test_crash.py::test_crash - ")
            && l.contains("crashed")),
        "short summary lacks the crash\n{}",
        r.show()
    );
    assert!(sb.proj().join("tests/crashed_once").exists());
}

#[test]
fn max_worker_restart_0_other_workers_run_the_rest() {
    if !have_pytest() {
        return;
    }
    // The crash comes first, so the other worker still has most of the suite to run.
    let sb = project(&[("tests/test_crash.py", &crash_suite(true, 10))]);
    let r = rdist_run(&sb, &["-n", "2", "-v", "--max-worker-restart", "0"]);
    r.expect_code(1)
        .expect_out("not restarting (--max-worker-restart 0)");
    assert!(!r.stdout().contains("restarting worker ("), "{}", r.show());
    assert_counts(&r.closing(), "1 failed, 10 passed", &r.show());
    let by_id = workers_by_id(&r.verbose_lines());
    assert_eq!(by_id.len(), 11, "{}", r.show());
    let crashed_on = &by_id["tests/test_crash.py::test_crash"][0];
    // The crashed worker never ran the tests queued behind the crash.
    let rest: Vec<&String> = by_id
        .iter()
        .filter(|(id, _)| !id.ends_with("::test_crash"))
        .map(|(_, w)| &w[0])
        .collect();
    assert!(rest.iter().all(|w| *w != crashed_on), "{}", r.show());
}

/// Four tests on two workers with no remembered durations: gw0 gets `test_a`, `test_b`; gw1 gets
/// `test_crash`, `test_d`; and both are told at once that nothing more is coming.
const CRASH_WITH_QUEUED: &str = r#"import os
import signal


def test_a():
    pass


def test_b():
    pass


def test_crash():
    os.kill(os.getpid(), signal.SIGKILL)


def test_d():
    pass
"#;

#[test]
fn max_worker_restart_0_does_not_lose_tests_queued_behind_the_crash() {
    if !have_pytest() {
        return;
    }
    let sb = project(&[("tests/test_c.py", CRASH_WITH_QUEUED)]);
    let r = rdist_run(&sb, &["-n", "2", "-v", "--max-worker-restart", "0"]);
    r.expect_code(1);
    // 4 items collected, so 4 outcomes: test_d runs on gw0, or is at least reported as not run.
    let by_id = workers_by_id(&r.verbose_lines());
    assert!(
        by_id.contains_key("tests/test_c.py::test_d"),
        "test_d is neither run nor reported\n{}",
        r.show()
    );
    assert_counts(&r.closing(), "1 failed, 3 passed", &r.show());
}

const STOPPING: &str = r#"import os
import signal


def test_a():
    pass


def test_b():
    pass


def test_stop():
    os.kill(os.getpid(), signal.SIGSTOP)


def test_d():
    pass


def test_e():
    pass
"#;

#[test]
fn heartbeat_timeout_stops_a_frozen_worker() {
    if !have_pytest() {
        return;
    }
    let sb = project(&[("tests/test_h.py", STOPPING)]);
    // 3 s rather than 2: the clock also runs while a worker starts, before its plugin can beat
    // (see `slow_root_conftest_is_not_taken_for_a_frozen_worker`), and a loaded machine can take
    // 2 s to start Python and import pytest.
    let r = rdist_run(&sb, &["-n", "2", "-v", "--heartbeat-timeout", "3"]);
    r.expect_code(1)
        .expect_out("no sign of life for 3 s: stopping it")
        .expect_out("FAILED tests/test_h.py::test_stop")
        .expect_out("crashed while running this test");
    assert_counts(&r.closing(), "1 failed, 4 passed", &r.show());
    // Three seconds of silence, a restart and the rest: nowhere near a hang.
    assert!(r.elapsed < Duration::from_secs(20), "{}", r.show());
}

#[test]
fn slow_root_conftest_is_not_taken_for_a_frozen_worker() {
    if !have_pytest() {
        return;
    }
    // A root conftest that takes 3 s to import (Django setup, a heavy library) is alive, not
    // frozen: a 2 s heartbeat timeout must not kill the workers while it loads.
    let sb = project(&[
        ("conftest.py", "import time\n\ntime.sleep(3)\n"),
        ("tests/test_ok.py", PASSING),
    ]);
    let r = rdist_run(&sb, &["-n", "2", "--heartbeat-timeout", "2"]);
    r.expect_code(0);
    assert_counts(&r.closing(), "3 passed", &r.show());
}

#[test]
fn dist_each_runs_every_test_on_every_worker() {
    if !have_pytest() {
        return;
    }
    let sb = project(&[("tests/test_ok.py", PASSING)]);
    let r = rdist_run(&sb, &["--tx", "2*popen", "--dist", "each", "-v"]);
    r.expect_code(0);
    assert_counts(&r.closing(), "6 passed", &r.show());
    for (id, mut ws) in workers_by_id(&r.verbose_lines()) {
        ws.sort();
        assert_eq!(ws, ["gw0", "gw1"], "{id}\n{}", r.show());
    }
}

const THREE_FILES: [(&str, &str); 3] = [
    (
        "tests/test_f1.py",
        "def test_1():\n    pass\n\n\ndef test_2():\n    pass\n\n\ndef test_3():\n    pass\n",
    ),
    (
        "tests/test_f2.py",
        "def test_1():\n    pass\n\n\ndef test_2():\n    pass\n\n\ndef test_3():\n    pass\n",
    ),
    (
        "tests/test_f3.py",
        "def test_1():\n    pass\n\n\ndef test_2():\n    pass\n",
    ),
];

/// Asserts that the tests of every unit (`unit_of(id)`) ran on one worker, and that both workers
/// ran something (so the check means something).
fn assert_units_stay_together(r: &Run, unit_of: &dyn Fn(&str) -> String, expect_tests: usize) {
    r.expect_code(0);
    let lines = r.verbose_lines();
    assert_eq!(lines.len(), expect_tests, "{}", r.show());
    let mut unit_workers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (w, _, id) in &lines {
        let ws = unit_workers.entry(unit_of(id)).or_default();
        if !ws.contains(w) {
            ws.push(w.clone());
        }
    }
    for (unit, ws) in &unit_workers {
        assert_eq!(ws.len(), 1, "{unit} ran on {ws:?}\n{}", r.show());
    }
    let mut used: Vec<&String> = lines.iter().map(|(w, _, _)| w).collect();
    used.sort();
    used.dedup();
    assert_eq!(used, ["gw0", "gw1"], "{}", r.show());
}

#[test]
fn dist_loadfile_keeps_a_file_on_one_worker() {
    if !have_pytest() {
        return;
    }
    let sb = project(&THREE_FILES);
    let r = rdist_run(&sb, &["-n", "2", "--dist", "loadfile", "-v"]);
    assert_units_stay_together(&r, &|id| id.split("::").next().unwrap().to_owned(), 8);
}

const CLASSES: &str = r#"class TestOne:
    def test_1(self):
        pass

    def test_2(self):
        pass

    def test_3(self):
        pass


class TestTwo:
    def test_1(self):
        pass

    def test_2(self):
        pass

    def test_3(self):
        pass


def test_loose_1():
    pass


def test_loose_2():
    pass
"#;

#[test]
fn dist_loadscope_keeps_a_class_on_one_worker() {
    if !have_pytest() {
        return;
    }
    let sb = project(&[("tests/test_cls.py", CLASSES)]);
    let r = rdist_run(&sb, &["-n", "2", "--dist", "loadscope", "-v"]);
    // The scope of a method is its class; of a function, its module.
    assert_units_stay_together(&r, &|id| id.rsplit_once("::").unwrap().0.to_owned(), 8);
}

const GROUP_PYPROJECT: &str = r#"[project]
name = "demo"

[tool.pytest.ini_options]
addopts = "--strict-markers"
markers = ["xdist_group(name): run these tests on one worker"]
"#;

const GROUPS: &str = r#"import pytest


@pytest.mark.xdist_group(name="g")
def test_g1():
    pass


def test_x1():
    pass


def test_x2():
    pass


@pytest.mark.xdist_group(name="g")
def test_g2():
    pass


def test_x3():
    pass


def test_x4():
    pass


@pytest.mark.xdist_group(name="g")
def test_g3():
    pass


def test_x5():
    pass
"#;

#[test]
fn dist_loadgroup_keeps_a_group_on_one_worker() {
    if !have_pytest() {
        return;
    }
    let sb = project(&[
        ("pyproject.toml", GROUP_PYPROJECT),
        ("tests/test_g.py", GROUPS),
    ]);
    let r = rdist_run(&sb, &["-n", "2", "--dist", "loadgroup", "-v"]);
    r.expect_code(0);
    assert_counts(&r.closing(), "8 passed", &r.show());
    let by_id = workers_by_id(&r.verbose_lines());
    let group: Vec<&String> = ["test_g1", "test_g2", "test_g3"]
        .iter()
        .map(|n| &by_id[&format!("tests/test_g.py::{n}")][0])
        .collect();
    assert!(
        group.iter().all(|w| *w == group[0]),
        "group g split over {group:?}\n{}",
        r.show()
    );
}

const ENV_TEST: &str = r#"import os
import pathlib


def _check(name):
    worker = os.environ["PYTEST_XDIST_WORKER"]
    assert worker in ("gw0", "gw1")
    assert os.environ["PYTEST_XDIST_WORKER_COUNT"] == "2"
    uid = os.environ["PYTEST_XDIST_TESTRUNUID"]
    assert uid
    pathlib.Path("where_" + name).write_text(os.getcwd() + "\n" + uid + "\n")


def test_one():
    _check("one")


def test_two():
    _check("two")
"#;

#[test]
fn chdir_worker_gets_the_project_synced_and_xdist_env() {
    if !have_pytest() {
        return;
    }
    let sb = project(&[("tests/test_env.py", ENV_TEST)]);
    let dir = sb.worker("w");
    let r = rdist_run(
        &sb,
        &["--tx", &format!("2*popen//chdir={}", dir.display()), "-v"],
    );
    r.expect_code(0);
    assert_counts(&r.closing(), "2 passed", &r.show());
    // Synced first: the worker directory holds the project.
    assert!(dir.join("pyproject.toml").is_file(), "{}", r.show());
    assert_eq!(
        std::fs::read_to_string(dir.join("tests/test_env.py")).unwrap(),
        ENV_TEST
    );
    // The tests ran there, not in the project, with one run id.
    let real = std::fs::canonicalize(&dir).unwrap();
    let mut uids = Vec::new();
    for name in ["one", "two"] {
        let text = std::fs::read_to_string(dir.join(format!("where_{name}")))
            .unwrap_or_else(|e| panic!("where_{name}: {e}\n{}", r.show()));
        let mut l = text.lines();
        assert_eq!(PathBuf::from(l.next().unwrap()), real);
        uids.push(l.next().unwrap().to_owned());
        assert!(!sb.proj().join(format!("where_{name}")).exists());
    }
    assert_eq!(uids[0], uids[1], "one run, one PYTEST_XDIST_TESTRUNUID");
}

const SUBDIR_TESTS: &str = r#"def test_a():
    pass


def test_b():
    pass


def test_slow_one():
    pass
"#;

#[test]
fn relative_test_path_from_a_subdirectory_runs() {
    if !have_pytest() {
        return;
    }
    let sb = project(&[("tests/test_x.py", SUBDIR_TESTS)]);
    let tests = sb.proj().join("tests");
    let r = rdist_run_in(&sb, &tests, &["-n", "2", "-v", "test_x.py::test_a"]);
    r.expect_code(0);
    assert!(!r.stdout().contains("INTERNALERROR"), "{}", r.show());
    let ids: Vec<String> = r.verbose_lines().into_iter().map(|l| l.2).collect();
    assert_eq!(ids, ["tests/test_x.py::test_a"], "{}", r.show());
    assert_counts(&r.closing(), "1 passed", &r.show());
}

#[test]
fn k_expression_passes_through_from_a_subdirectory() {
    if !have_pytest() {
        return;
    }
    let sb = project(&[
        ("tests/test_x.py", SUBDIR_TESTS),
        ("other/test_y.py", "def test_slow_elsewhere():\n    pass\n"),
    ]);
    let tests = sb.proj().join("tests");
    // No path: the subdirectory is run, as pytest would.
    let r = rdist_run_in(&sb, &tests, &["-n", "2", "-v", "-k", "slow or test_b"]);
    r.expect_code(0);
    let mut ids: Vec<String> = r.verbose_lines().into_iter().map(|l| l.2).collect();
    ids.sort();
    assert_eq!(
        ids,
        ["tests/test_x.py::test_b", "tests/test_x.py::test_slow_one"],
        "{}",
        r.show()
    );
}

#[test]
fn k_value_naming_a_directory_is_not_rewritten() {
    if !have_pytest() {
        return;
    }
    let sb = project(&[
        ("tests/test_x.py", SUBDIR_TESTS),
        ("tests/unit/test_u.py", "def test_unit_one():\n    pass\n"),
    ]);
    let tests = sb.proj().join("tests");
    // `-k unit` selects by keyword; that `tests/unit/` exists must not matter.
    let r = rdist_run_in(&sb, &tests, &["-n", "2", "-v", "-k", "unit"]);
    r.expect_code(0);
    let ids: Vec<String> = r.verbose_lines().into_iter().map(|l| l.2).collect();
    assert_eq!(ids, ["tests/unit/test_u.py::test_unit_one"], "{}", r.show());
}

#[test]
fn missing_test_path_is_a_usage_error() {
    if !have_pytest() {
        return;
    }
    let sb = project(&[("tests/test_x.py", SUBDIR_TESTS)]);
    let r = rdist_run(&sb, &["-n", "2", "tests/test_typo.py"]);
    r.expect_code(4);
    let all = format!("{}{}", r.stdout(), r.stderr());
    assert!(all.contains("file or directory not found"), "{}", r.show());
}

#[test]
fn exitfirst_stops_the_run_and_says_so() {
    if !have_pytest() {
        return;
    }
    let mut suite = String::from("import time\n\n\ndef test_fail():\n    assert 0\n");
    for i in 0..10 {
        suite.push_str(&format!("\n\ndef test_ok{i}():\n    time.sleep(0.1)\n"));
    }
    let sb = project(&[("tests/test_x.py", &suite)]);
    let r = rdist_run(&sb, &["-n", "2", "-x"]);
    r.expect_code(1).expect_out("stopping after 1 failures");
}

#[test]
fn exitfirst_drops_the_tests_already_queued_on_other_workers() {
    if !have_pytest() {
        return;
    }
    // Tests go out in chunks: the other worker has a dozen or more queued when the first fails.
    let mut suite = String::from("import time\n\n\ndef test_fail():\n    assert 0\n");
    for i in 0..100 {
        suite.push_str(&format!("\n\ndef test_ok{i}():\n    time.sleep(0.05)\n"));
    }
    let sb = project(&[("tests/test_x.py", &suite)]);
    let r = rdist_run(&sb, &["-n", "2", "-x"]);
    r.expect_code(1).expect_out("stopping after 1 failures");
    let closing = r.closing();
    let passed: usize = closing
        .split(", ")
        .find_map(|p| p.strip_suffix(" passed").and_then(|n| n.parse().ok()))
        .unwrap_or(0);
    assert!(passed < 10, "{passed} passed after the stop\n{}", r.show());
}

/// `rdist run ARGS` on a pseudo-terminal (`script`), stdout and stderr together; `None` without
/// `script`.
fn run_on_terminal(sb: &Sandbox, args: &str, ci: bool) -> Option<Output> {
    let mut c = Command::new("script");
    c.args([
        "-qec",
        &format!("{} run {args}", rdist_tests::rdist_bin().display()),
    ])
    .arg("/dev/null")
    .current_dir(sb.proj())
    .env("RDIST_CACHE_DIR", sb.worker("cache"))
    .env("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    .env_remove("PYTEST_ADDOPTS")
    .env_remove("RDIST_HEARTBEAT_TIMEOUT")
    .env_remove("CI");
    rdist_tests::use_test_python(&mut c);
    if ci {
        c.env("CI", "1");
    }
    let out = rdist_tests::sshd::output_within(&mut c, RUN_LIMIT);
    // `script` missing or refusing (no pty support): nothing to test here.
    let text = String::from_utf8_lossy(&out.stdout);
    if out.status.code() == Some(127) || !text.contains("test session starts") {
        eprintln!(
            "note: no pseudo-terminal through `script`; skipped\n{}",
            show(&out)
        );
        return None;
    }
    Some(out)
}

#[test]
fn progress_bar_on_a_terminal_never_splits_a_line_of_dots() {
    if !have_pytest() {
        return;
    }
    let mut suite = String::from("import time\n");
    for i in 0..120 {
        suite.push_str(&format!("\n\ndef test_{i}():\n    time.sleep(0.01)\n"));
    }
    let sb = project(&[("tests/test_x.py", &suite)]);
    let Some(o) = run_on_terminal(&sb, "-n 2", false) else {
        return;
    };
    let text = String::from_utf8_lossy(&o.stdout).replace("\r\n", "\n");
    const CLEAR: &str = "\x1b[2K";
    assert!(
        text.contains(" tests") && text.contains(CLEAR),
        "no bar drawn\n{text}"
    );
    let dot_lines: Vec<&str> = text.lines().filter(|l| l.ends_with("%]")).collect();
    assert_eq!(dot_lines.len(), 2, "{text}");
    for l in dot_lines {
        // The bar is cleared before a line of dots is written, and the line is written whole.
        let after_bar = l.rsplit(CLEAR).next().unwrap_or(l);
        assert!(
            after_bar.starts_with('.') && !after_bar.contains('\r'),
            "a dot line shares its line with the bar: {l:?}"
        );
    }
    assert!(
        text.trim_end().ends_with("=")
            && text.lines().last().unwrap_or("").contains("120 passed in "),
        "{text}"
    );
    // In CI, no bar: the output is what a pipe gets.
    let Some(o) = run_on_terminal(&sb, "-n 2", true) else {
        return;
    };
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(!text.contains(CLEAR) && !text.contains(" tests"), "{text}");
}

#[test]
fn lastfailed_cache_keeps_every_workers_failures_for_lf() {
    if !have_pytest() {
        return;
    }
    // Two failures that land on different workers (one per file, tests dealt in turn), among
    // passing tests: each worker alone knows one failure.
    let mut a = String::from("import time\n\n\ndef test_a_fails():\n    assert 0\n");
    let mut b = String::from("import time\n\n\ndef test_b_fails():\n    assert 0\n");
    for i in 0..10 {
        a.push_str(&format!("\n\ndef test_a{i}():\n    time.sleep(0.01)\n"));
        b.push_str(&format!("\n\ndef test_b{i}():\n    time.sleep(0.01)\n"));
    }
    let sb = project(&[("tests/test_a.py", &a), ("tests/test_b.py", &b)]);
    let lastfailed = |sb: &Sandbox| -> Vec<String> {
        let text = std::fs::read_to_string(sb.proj().join(".pytest_cache/v/cache/lastfailed"))
            .unwrap_or_default();
        let map: BTreeMap<String, bool> = serde_json::from_str(&text).unwrap_or_default();
        map.into_keys().collect()
    };
    let both = [
        "tests/test_a.py::test_a_fails",
        "tests/test_b.py::test_b_fails",
    ];
    let r = rdist_run(&sb, &["-n", "2"]);
    assert_counts(&r.closing(), "2 failed, 20 passed", &r.show());
    assert_eq!(lastfailed(&sb), both, "{}", r.show());
    // `--lf` runs exactly those two.
    let r = rdist_run(&sb, &["-n", "2", "--lf"]);
    assert_counts(&r.closing(), "2 failed", &r.show());
    // One fixed: it leaves the cache, the other stays.
    sb.write("tests/test_a.py", a.replace("assert 0", "assert 1"));
    let r = rdist_run(&sb, &["-n", "2", "--lf"]);
    assert_counts(&r.closing(), "1 failed, 1 passed", &r.show());
    assert_eq!(lastfailed(&sb), [both[1]], "{}", r.show());
}

/// 20 instant tests, then one that sleeps: collection order puts the slow one last.
fn longest_first_suite() -> String {
    let mut s = String::from("import time\n");
    for i in 0..20 {
        s.push_str(&format!("\n\ndef test_i{i:02}():\n    pass\n"));
    }
    s.push_str("\n\ndef test_zz_slow():\n    time.sleep(1.5)\n");
    s
}

#[test]
fn remembered_durations_hand_out_the_longest_test_first() {
    if !have_pytest() {
        return;
    }
    let sb = project(&[("tests/test_l.py", &longest_first_suite())]);
    const SLOW: &str = "tests/test_l.py::test_zz_slow";
    // The position of the slow test among the tests of the worker that ran it: the order a
    // worker runs its tests in is the order they were handed to it, whatever the timing.
    let position = |r: &Run| {
        let lines = r.verbose_lines();
        assert_eq!(lines.len(), 21, "{}", r.show());
        let (gw, _, _) = lines
            .iter()
            .find(|(_, _, id)| id == SLOW)
            .unwrap_or_else(|| panic!("{SLOW} did not run\n{}", r.show()));
        lines
            .iter()
            .filter(|(w, _, _)| w == gw)
            .position(|(_, _, id)| id == SLOW)
            .unwrap()
    };
    let first = rdist_run(&sb, &["-n", "2", "-v"]);
    first.expect_code(0);
    assert!(
        position(&first) > 0,
        "without durations the slow test should go in collection order (last)\n{}",
        first.show()
    );
    let remembered: Vec<PathBuf> = std::fs::read_dir(sb.path().join("cache/durations"))
        .expect("durations are remembered in $RDIST_CACHE_DIR/durations")
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(remembered.len(), 1, "{remembered:?}");
    let known: std::collections::HashMap<String, f64> =
        serde_json::from_slice(&std::fs::read(&remembered[0]).unwrap()).unwrap();
    assert!(known[SLOW] >= 1.4, "{known:?}");
    let second = rdist_run(&sb, &["-n", "2", "-v"]);
    second.expect_code(0);
    assert_eq!(
        position(&second),
        0,
        "the slow test should be handed out first\n{}",
        second.show()
    );
    // Handed out first means to the first worker.
    assert!(
        second
            .verbose_lines()
            .iter()
            .any(|(w, _, id)| w == "gw0" && id == SLOW),
        "{}",
        second.show()
    );
}

#[test]
fn invalid_tx_spec_is_a_usage_error() {
    // Fails before any worker starts: no pytest needed.
    let sb = project(&[("tests/test_ok.py", PASSING)]);
    for spec in ["popen//bogus=1", "0*popen", "popen//chdir="] {
        let r = rdist_run(&sb, &["--tx", spec]);
        r.expect_code(4);
        assert!(r.stderr().contains("invalid worker spec"), "{}", r.show());
        // The spec is shown with carets under the offending part.
        assert!(r.stderr().contains(&format!("  {spec}\n")), "{}", r.show());
        assert!(!r.stdout().contains("test session starts"), "{}", r.show());
    }
}

#[test]
fn unreachable_remote_worker_fails_with_a_hint_and_runs_nothing() {
    // Fails before any worker starts: no pytest needed.
    // `.invalid` never resolves (RFC 2606), so ssh fails at once, without any network.
    let sb = project(&[("tests/test_ok.py", PASSING)]);
    let r = rdist_run(&sb, &["--tx", "ssh=rdist-test.invalid"]);
    assert!(
        !matches!(r.code(), Some(0 | 5) | None),
        "an unreachable worker must fail the run\n{}",
        r.show()
    );
    assert!(
        r.stderr().lines().any(|l| l.starts_with("hint:")),
        "{}",
        r.show()
    );
    // No fallback to running the tests locally.
    assert!(!r.stdout().contains("passed"), "{}", r.show());
}

#[test]
fn zero_workers_is_a_usage_error() {
    // Fails before any worker starts: no pytest needed.
    let sb = project(&[("tests/test_ok.py", PASSING)]);
    let r = rdist_run(&sb, &["-n", "0"]);
    r.expect_code(4);
    assert!(r.stderr().contains("-n 0"), "{}", r.show());
    assert!(
        r.stderr().lines().any(|l| l.starts_with("hint:")),
        "{}",
        r.show()
    );
    assert!(!r.stdout().contains("test session starts"), "{}", r.show());
}
