//! `rdist check`: verdicts and exit codes on real hosts (local workers, an unreachable ssh
//! host) and real project layouts.

use std::process::Output;

use rdist_tests::{Sandbox, have_pytest, show};

fn check(sb: &Sandbox, args: &[&str]) -> Output {
    let mut c = sb.rdist();
    c.arg("check").args(args).env_remove("RDIST_SSH");
    c.output().expect("run rdist check")
}

fn row<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no `{name}` row in\n{out}"))
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
