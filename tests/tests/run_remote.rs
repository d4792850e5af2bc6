//! `rdist run` on remote workers: the project is synced over ssh (a per-run sshd on loopback, at
//! 127.0.0.1 and 127.0.0.2) or to `rdist serve`, and the same connection then carries the pytest
//! workers. Covered on both transports: a passing and failing suite in load mode, `--dist each`
//! (two ssh hosts, with the per-worker table), a worker that kills itself over ssh, and a frozen
//! worker stopped by the heartbeat on both transports.
//!
//! Workers run the harness's Python ([`rdist_tests::python`]): over ssh through `python=` in the
//! spec (sshd's login has the system's default `PATH`), over a socket because `rdist serve` runs
//! with it first on its `PATH`, as a server started from an activated venv.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use rdist_tests::python::python_key;
use rdist_tests::sshd::{Serve, Sshd, output_within, wait_until};
use rdist_tests::{Sandbox, have_pytest, processes_in, show, use_test_python};

const LIMIT: Duration = Duration::from_secs(90);

fn project() -> Sandbox {
    let sb = Sandbox::new();
    sb.write("pkg/__init__.py", "");
    sb.write("pkg/calc.py", "def add(a, b):\n    return a + b\n");
    sb.write("tests/__init__.py", "");
    sb.write(
        "tests/test_calc.py",
        "import os\n\nfrom pkg.calc import add\n\n\
         def test_add():\n    assert add(1, 2) == 3\n\n\
         def test_worker_env():\n    assert os.environ['PYTEST_XDIST_WORKER'].startswith('gw')\n\n\
         def test_fails():\n    assert add(1, 1) == 3\n",
    );
    sb
}

/// `rdist` for ssh workers, with the harness's Python first on `PATH`: the pre-flight check
/// compares it with the workers'.
fn over_ssh(sshd: &Sshd, sb: &Sandbox) -> Command {
    let mut c = sshd.rdist(sb);
    use_test_python(&mut c);
    c
}

/// `rdist` for socket workers, with the harness's Python first on `PATH`.
fn over_socket(sb: &Sandbox) -> Command {
    let mut c = sb.rdist();
    use_test_python(&mut c);
    c
}

fn closing(o: &Output) -> String {
    rdist_tests::closing_line(&String::from_utf8_lossy(&o.stdout))
}

#[test]
fn tests_run_over_ssh_on_the_synced_copy() {
    if !have_pytest() {
        return;
    }
    let Some(sshd) = Sshd::start() else { return };
    let sb = project();
    let dest = sb.worker("remote-w");
    let spec = format!("2*ssh=rdist-a//chdir={}{}", dest.display(), python_key());
    let mut c = over_ssh(&sshd, &sb);
    c.args(["run", "--tx", &spec, "-v"]);
    let o = output_within(&mut c, LIMIT);
    assert_ended(&o, 1, "1 failed, 2 passed in ");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("[gw0]") && out.contains("[gw1]"),
        "{}",
        show(&o)
    );
    assert!(
        out.contains("FAILED tests/test_calc.py::test_fails"),
        "{}",
        show(&o)
    );
    assert!(
        dest.join("pkg/calc.py").is_file(),
        "the project was not synced there"
    );
}

#[test]
fn every_test_runs_on_every_socket_worker_with_dist_each() {
    if !have_pytest() {
        return;
    }
    let sb = project();
    let serve = Serve::start_with_test_python(&sb.worker("serve"));
    let mut c = over_socket(&sb);
    c.env_remove("RDIST_TOKEN")
        .args([
            "run",
            "--dist",
            "each",
            "--tx",
            &format!("2*socket={}", serve.addr()),
        ])
        .arg("--token-file")
        .arg(serve.token_file());
    let o = output_within(&mut c, LIMIT);
    assert_ended(&o, 1, "2 failed, 4 passed in ");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("outcomes per worker"),
        "{}",
        show(&o)
    );
}

#[test]
fn tests_pass_and_fail_on_socket_workers_in_load_mode() {
    if !have_pytest() {
        return;
    }
    let sb = project();
    let serve = Serve::start_with_test_python(&sb.worker("serve"));
    let mut c = over_socket(&sb);
    c.env_remove("RDIST_TOKEN")
        .args(["run", "-v", "--tx", &format!("2*socket={}", serve.addr())])
        .arg("--token-file")
        .arg(serve.token_file());
    let o = output_within(&mut c, LIMIT);
    assert_ended(&o, 1, "1 failed, 2 passed in ");
    let out = String::from_utf8_lossy(&o.stdout);
    // Each test once, in load mode; the failure section names the worker and its platform.
    for id in ["test_add", "test_worker_env", "test_fails"] {
        let runs = out
            .lines()
            .filter(|l| l.starts_with("[gw") && l.ends_with(&format!("::{id}")))
            .count();
        assert_eq!(runs, 1, "{id} ran {runs} times\n{}", show(&o));
    }
    assert!(
        out.lines()
            .any(|l| l.starts_with("[gw") && l.contains(" -- Python ")),
        "no worker header in the failure section\n{}",
        show(&o)
    );
    assert!(
        !out.contains("outcomes per worker"),
        "the per-worker table is for --dist each\n{}",
        show(&o)
    );
}

#[test]
fn dist_each_over_two_ssh_hosts_reports_every_platform() {
    if !have_pytest() {
        return;
    }
    let Some(sshd) = Sshd::start() else { return };
    let sb = project();
    let (a, b) = (sb.worker("host-a"), sb.worker("host-b"));
    let mut c = over_ssh(&sshd, &sb);
    c.args([
        "run",
        "--dist",
        "each",
        "--tx",
        &format!("ssh=rdist-a//chdir={}{}", a.display(), python_key()),
        "--tx",
        &format!("ssh=rdist-b//chdir={}{}", b.display(), python_key()),
    ]);
    let o = output_within(&mut c, LIMIT);
    assert_ended(&o, 1, "2 failed, 4 passed in ");
    let out = String::from_utf8_lossy(&o.stdout);
    let table: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.contains("outcomes per worker"))
        .skip(1)
        .take_while(|l| !l.starts_with('='))
        .collect();
    assert_eq!(table.len(), 2, "{}", show(&o));
    for (w, row) in table.iter().enumerate() {
        assert!(
            row.starts_with(&format!("gw{w} "))
                && row.contains("Python")
                && row.ends_with("1 failed, 2 passed"),
            "row {w}: {row:?}\n{}",
            show(&o)
        );
    }
    for w in 0..2 {
        // The failure on each host, headed with that worker, and in the short summary.
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("[gw{w}] ")) && l.contains(" -- Python ")),
            "no failure section from gw{w}\n{}",
            show(&o)
        );
        assert!(
            out.lines().any(|l| l.starts_with(&format!("[gw{w} "))
                && l.contains("] FAILED tests/test_calc.py::test_fails")),
            "no short summary line from gw{w}\n{}",
            show(&o)
        );
    }
    for dest in [&a, &b] {
        assert!(
            dest.join("pkg/calc.py").is_file(),
            "{} not synced",
            dest.display()
        );
    }
}

#[test]
fn worker_killed_over_ssh_is_restarted_and_its_test_reported() {
    if !have_pytest() {
        return;
    }
    let Some(sshd) = Sshd::start() else { return };
    let sb = Sandbox::new();
    // test_crash kills its worker (SIGKILL) the first time: it is reported failed, not run again,
    // and the other tests run on the replacement the agent starts.
    let mut suite = String::from(
        "import os\nimport pathlib\nimport signal\nimport time\n\n\
         MARK = pathlib.Path(__file__).parent / 'crashed_once'\n\n\n\
         def test_crash():\n    if not MARK.exists():\n        MARK.write_text('x')\n        \
         os.kill(os.getpid(), signal.SIGKILL)\n",
    );
    for i in 0..6 {
        suite.push_str(&format!("\n\ndef test_ok{i}():\n    time.sleep(0.05)\n"));
    }
    sb.write("tests/test_crash.py", &suite);
    let dest = sb.worker("remote-crash");
    let mut c = over_ssh(&sshd, &sb);
    c.args([
        "run",
        "--tx",
        &format!("ssh=rdist-a//chdir={}{}", dest.display(), python_key()),
    ]);
    let o = output_within(&mut c, LIMIT);
    assert_ended(&o, 1, "1 failed, 6 passed in ");
    let out = String::from_utf8_lossy(&o.stdout);
    for needle in [
        "[gw0] restarting worker (1 of 4)",
        "worker gw0 crashed while running this test (killed by a signal)",
        "] FAILED tests/test_crash.py::test_crash - worker crashed",
    ] {
        assert!(out.contains(needle), "no {needle:?}\n{}", show(&o));
    }
    assert!(
        dest.join("tests/crashed_once").is_file(),
        "the test did not run on the synced copy"
    );
}

/// Asserts the exit code and the start of pytest's closing line.
#[track_caller]
fn assert_ended(o: &Output, code: i32, starts: &str) {
    assert_eq!(o.status.code(), Some(code), "{}", show(o));
    assert!(closing(o).starts_with(starts), "{}", show(o));
}

/// The closing line without its duration: `1 failed, 2 passed` from `== 1 failed, 2 passed in
/// 0.12s ==`.
fn tally(closing: &str) -> String {
    closing.split(" in ").next().unwrap_or("").to_owned()
}

/// Every load-type mode over both remote transports, on a suite with every kind of outcome:
/// the tally is plain pytest's (run here as the oracle), and so is the exit code.
#[test]
fn every_load_mode_over_ssh_and_socket_tallies_like_pytest() {
    if !have_pytest() {
        return;
    }
    let Some(sshd) = Sshd::start() else { return };
    let sb = project();
    sb.write(
        "tests/test_kinds.py",
        "import pytest\n\n\
         @pytest.fixture\ndef broken():\n    raise RuntimeError('setup fails')\n\n\
         def test_setup_error(broken):\n    pass\n\n\
         @pytest.mark.skip(reason='not here')\ndef test_skipped():\n    pass\n\n\
         @pytest.mark.xfail(reason='known')\ndef test_xfail():\n    assert False\n\n\
         @pytest.mark.xfail(reason='fixed?')\ndef test_xpass():\n    pass\n\n\
         class TestScope:\n    def test_a(self):\n        pass\n\n    def test_b(self):\n        pass\n\n\
         @pytest.mark.xdist_group('g')\ndef test_group_1():\n    pass\n\n\
         @pytest.mark.xdist_group('g')\ndef test_group_2():\n    pass\n\n\
         def test_warns():\n    import warnings\n    warnings.warn(UserWarning('careful'))\n",
    );
    // The oracle runs without xdist: register its marker and set the variable a test reads.
    sb.write(
        "conftest.py",
        "def pytest_configure(config):\n    \
         config.addinivalue_line('markers', 'xdist_group(name): run together')\n",
    );
    let mut plain = std::process::Command::new(rdist_tests::python::python());
    plain
        .args(["-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist"])
        .env("PYTEST_XDIST_WORKER", "gw0")
        .current_dir(sb.proj());
    let p = output_within(&mut plain, LIMIT);
    let want = tally(&closing(&p));
    assert!(want.contains("1 error"), "oracle: {}", show(&p));
    let serve = Serve::start_with_test_python(&sb.worker("serve"));
    for mode in ["load", "loadscope", "loadfile", "loadgroup", "worksteal"] {
        let dest = sb.worker(&format!("ssh-{mode}"));
        let mut c = over_ssh(&sshd, &sb);
        c.args(["run", "--dist", mode, "--tx"]).arg(format!(
            "2*ssh=rdist-a//chdir={}{}",
            dest.display(),
            python_key()
        ));
        let o = output_within(&mut c, LIMIT);
        assert_eq!(o.status.code(), p.status.code(), "ssh {mode}: {}", show(&o));
        assert_eq!(tally(&closing(&o)), want, "ssh {mode}: {}", show(&o));

        let mut c = over_socket(&sb);
        c.env_remove("RDIST_TOKEN")
            .args(["run", "--dist", mode, "--tx"])
            .arg(format!("2*socket={}", serve.addr()))
            .arg("--token-file")
            .arg(serve.token_file());
        let o = output_within(&mut c, LIMIT);
        assert_eq!(
            o.status.code(),
            p.status.code(),
            "socket {mode}: {}",
            show(&o)
        );
        assert_eq!(tally(&closing(&o)), want, "socket {mode}: {}", show(&o));
    }
}

/// Five tests; `test_stop` freezes its worker (SIGSTOP), so its heartbeat stops too.
const FREEZING: &str = "import os\nimport signal\n\n\n\
    def test_a():\n    pass\n\n\ndef test_b():\n    pass\n\n\n\
    def test_stop():\n    os.kill(os.getpid(), signal.SIGSTOP)\n\n\n\
    def test_d():\n    pass\n\n\ndef test_e():\n    pass\n";

/// The heartbeat timeout of the frozen-worker runs: 3 s, as over popen (`run.rs`): a loaded
/// machine can take 2 s between beats of a worker that is merely starting a test.
const HEARTBEAT: &str = "3";

/// Asserts what a run of [`FREEZING`] reports: the frozen worker stopped by the heartbeat, its
/// test failed as a crash, the other four run (on its replacement or the other worker), exit 1,
/// well before a hang would end.
#[track_caller]
fn assert_frozen_worker_stopped(o: &Output, took: Duration) {
    assert_ended(o, 1, "1 failed, 4 passed in ");
    let out = String::from_utf8_lossy(&o.stdout);
    for needle in [
        &format!("no sign of life for {HEARTBEAT} s: stopping it"),
        "crashed while running this test",
        "FAILED tests/test_h.py::test_stop",
    ] {
        assert!(out.contains(needle), "no {needle:?}\n{}", show(o));
    }
    for id in ["test_a", "test_b", "test_d", "test_e"] {
        assert!(
            out.lines()
                .any(|l| l.starts_with("[gw")
                    && l.ends_with(&format!("PASSED tests/test_h.py::{id}"))),
            "{id} did not pass\n{}",
            show(o)
        );
    }
    assert!(took < Duration::from_secs(40), "took {took:?}\n{}", show(o));
}

/// Asserts that, within a few seconds of the run's end, no process works in or runs from
/// `dir`: the frozen worker was killed, not just abandoned, and nothing else lingers.
#[track_caller]
fn assert_nothing_left_in(dir: &Path, o: &Output) {
    let gone = wait_until(Duration::from_secs(10), || processes_in(dir).is_empty());
    assert!(
        gone,
        "left running in `{}`:\n{}\n{}",
        dir.display(),
        processes_in(dir).join("\n"),
        show(o)
    );
}

#[test]
fn frozen_worker_over_ssh_is_stopped_by_the_heartbeat_and_nothing_is_left_on_the_host() {
    if !have_pytest() {
        return;
    }
    let Some(sshd) = Sshd::start() else { return };
    let sb = Sandbox::new();
    sb.write("tests/test_h.py", FREEZING);
    let dest = sb.worker("remote-frozen");
    let mut c = over_ssh(&sshd, &sb);
    c.args(["run", "-v", "--heartbeat-timeout", HEARTBEAT, "--tx"])
        .arg(format!(
            "2*ssh=rdist-a//chdir={}{}",
            dest.display(),
            python_key()
        ));
    let start = Instant::now();
    let o = output_within(&mut c, LIMIT);
    assert_frozen_worker_stopped(&o, start.elapsed());
    assert!(
        dest.join("tests/test_h.py").is_file(),
        "the tests did not run on the synced copy"
    );
    // Workers run in `dest`; the agent runs from the host's rdist cache.
    assert_nothing_left_in(&dest, &o);
    assert_nothing_left_in(&sshd.remote_cache("rdist-a"), &o);
}

#[test]
fn frozen_worker_on_a_socket_server_is_stopped_by_the_heartbeat_and_nothing_is_left_there() {
    if !have_pytest() {
        return;
    }
    let sb = Sandbox::new();
    sb.write("tests/test_h.py", FREEZING);
    let serve = Serve::start_with_test_python(&sb.worker("serve"));
    let mut c = over_socket(&sb);
    c.env_remove("RDIST_TOKEN")
        .args(["run", "-v", "--heartbeat-timeout", HEARTBEAT, "--tx"])
        .arg(format!("2*socket={}", serve.addr()))
        .arg("--token-file")
        .arg(serve.token_file());
    let start = Instant::now();
    let o = output_within(&mut c, LIMIT);
    assert_frozen_worker_stopped(&o, start.elapsed());
    // Workers run below the server's root.
    assert_nothing_left_in(&serve.root(), &o);
}

/// A remote worker's session end (`pytest_sessionfinish`, after its `done`) runs to the end
/// when the run ends normally: `rdist run` waits for each remote worker's exit before it hangs
/// up, and the agent does not kill a worker that is exiting by itself.
#[test]
fn remote_workers_finish_their_session_after_a_normal_run() {
    if !have_pytest() {
        return;
    }
    let sb = project();
    let marks = sb.worker("marks");
    std::fs::create_dir_all(&marks).unwrap();
    sb.write(
        "tests/conftest.py",
        format!(
            "import os, pathlib, time\n\n\
             def pytest_sessionfinish(session):\n    time.sleep(1)\n    \
             pathlib.Path({:?}, os.environ.get('PYTEST_XDIST_WORKER', 'x')).write_text('done')\n",
            marks.display().to_string()
        ),
    );
    let serve = Serve::start_with_test_python(&sb.worker("serve"));
    let mut c = over_socket(&sb);
    c.env_remove("RDIST_TOKEN")
        .args(["run", "--tx", &format!("2*socket={}", serve.addr())])
        .arg("--token-file")
        .arg(serve.token_file());
    let o = output_within(&mut c, LIMIT);
    assert_ended(&o, 1, "1 failed, 2 passed in ");
    let both = wait_until(Duration::from_secs(8), || {
        marks.join("gw0").exists() && marks.join("gw1").exists()
    });
    let got: Vec<_> = std::fs::read_dir(&marks)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(both, "sessionfinish completed on: {got:?}\n{}", show(&o));
}
