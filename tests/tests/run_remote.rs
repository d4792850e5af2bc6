//! `rdist run` on remote workers: the project is synced over ssh (a per-run sshd on loopback)
//! or to `rdist serve`, and the same connection then carries the pytest workers.

use std::process::Output;
use std::time::Duration;

use rdist_tests::sshd::{Serve, Sshd, output_within};
use rdist_tests::{Sandbox, have_pytest, show};

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

fn closing(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .rev()
        .find(|l| l.starts_with('='))
        .unwrap_or("")
        .trim_matches(|c| c == '=' || c == ' ')
        .to_owned()
}

#[test]
fn tests_run_over_ssh_on_the_synced_copy() {
    if !have_pytest() {
        return;
    }
    let Some(sshd) = Sshd::start() else { return };
    let sb = project();
    let dest = sb.worker("remote-w");
    let spec = format!("2*ssh=rdist-a//chdir={}", dest.display());
    let mut c = sshd.rdist(&sb);
    c.args(["run", "--tx", &spec, "-v"]);
    let o = output_within(&mut c, LIMIT);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(
        closing(&o).starts_with("1 failed, 2 passed in "),
        "{}",
        show(&o)
    );
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
    let serve = Serve::start(&sb.worker("serve"));
    let mut c = sb.rdist();
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
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(
        closing(&o).starts_with("2 failed, 4 passed in "),
        "{}",
        show(&o)
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("outcomes per worker"),
        "{}",
        show(&o)
    );
}
