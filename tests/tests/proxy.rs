//! `--px` proxies: `popen` workers `via=` a proxy run on the proxy's host, so the project is
//! synced there once, whether the proxy is an `rdist serve` (`socket=`) or an ssh host.

use std::process::Output;
use std::time::Duration;

use rdist_tests::sshd::{Serve, Sshd, output_within};
use rdist_tests::{Sandbox, show};

const LIMIT: Duration = Duration::from_secs(60);

use rdist_tests::assert_mirrors;
use rdist_tests::{assert_ok, json_of as json, stderr_of as stderr};

fn project() -> Sandbox {
    let sb = Sandbox::new();
    sb.write("pkg/__init__.py", "");
    sb.write("pkg/core.py", "def f():\n    return 1\n");
    sb.write("tests/test_core.py", "from pkg.core import f\n");
    sb
}

/// `rdist sync --rsyncdir . --px PX --tx TX... --token-file F --json` against `serve`.
fn sync_via_serve(sb: &Sandbox, serve: &Serve, px: &str, tx: &[&str]) -> Output {
    let mut c = sb.rdist();
    c.env_remove("RDIST_TOKEN")
        .args(["sync", "--rsyncdir", ".", "--json", "--px", px])
        .arg("--token-file")
        .arg(serve.token_file());
    for t in tx {
        c.arg("--tx").arg(t);
    }
    output_within(&mut c, LIMIT)
}

#[test]
fn popen_workers_via_a_socket_proxy_are_one_target_synced_on_the_server() {
    let t = tempfile::tempdir().unwrap();
    let serve = Serve::start(t.path());
    let sb = project();
    let px = format!("id=p//socket={}", serve.addr());
    let o = sync_via_serve(&sb, &serve, &px, &["3*popen//via=p//chdir=w"]);
    assert_ok(&o);
    let j = json(&o);
    let targets = j["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 1, "{}", show(&o));
    assert_eq!(targets[0]["workers"], 3, "{}", show(&o));
    assert_eq!(
        targets[0]["dest"],
        format!("{}/w", serve.addr()),
        "{}",
        show(&o)
    );
    assert_mirrors(&sb, &serve.root().join("w"));
    // Nothing was synced locally for the popen workers.
    assert!(!sb.proj().join("w").exists());
}

#[test]
fn unknown_proxy_name_is_a_usage_error_with_a_hint() {
    let t = tempfile::tempdir().unwrap();
    let serve = Serve::start(t.path());
    let sb = project();
    let px = format!("id=p//socket={}", serve.addr());
    let o = sync_via_serve(&sb, &serve, &px, &["popen//via=q//chdir=w"]);
    assert_eq!(o.status.code(), Some(4), "{}", show(&o));
    let err = stderr(&o);
    assert!(
        err.contains("`q`"),
        "the unknown name is not named: {}",
        show(&o)
    );
    assert!(err.contains("hint:"), "{}", show(&o));
    assert!(!serve.log().contains("connected"), "{}", serve.log());
}

#[test]
fn worker_via_a_socket_proxy_needs_a_plain_relative_chdir() {
    let t = tempfile::tempdir().unwrap();
    let serve = Serve::start(t.path());
    let sb = project();
    let px = format!("id=p//socket={}", serve.addr());
    for chdir in ["../w", "/abs/w"] {
        let o = sync_via_serve(&sb, &serve, &px, &[&format!("popen//via=p//chdir={chdir}")]);
        assert_eq!(o.status.code(), Some(4), "chdir={chdir}: {}", show(&o));
        assert!(stderr(&o).contains("hint:"), "{}", show(&o));
    }
    assert!(!serve.log().contains("connected"), "{}", serve.log());
}

#[test]
fn popen_workers_via_an_ssh_proxy_land_on_that_host_path() {
    let Some(sshd) = Sshd::start() else { return };
    let sb = project();
    let dest = sb.worker("on-proxy-host");
    let o = output_within(
        sshd.rdist(&sb).args([
            "sync",
            "--rsyncdir",
            ".",
            "--json",
            "--px",
            "id=s//ssh=rdist-a",
            "--tx",
            &format!("2*popen//via=s//chdir={}", dest.display()),
        ]),
        LIMIT,
    );
    assert_ok(&o);
    let j = json(&o);
    assert_eq!(j["targets"].as_array().unwrap().len(), 1, "{}", show(&o));
    assert_eq!(j["targets"][0]["workers"], 2, "{}", show(&o));
    assert_eq!(
        j["targets"][0]["dest"],
        format!("rdist-a:{}", dest.display()),
        "{}",
        show(&o)
    );
    assert_mirrors(&sb, &dest);
    assert_eq!(
        sshd.uploaded_binaries("rdist-a").len(),
        1,
        "the proxy host got the binary"
    );
}
