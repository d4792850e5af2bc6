//! `ssh=` workers through a real OpenSSH client and server on 127.0.0.1 and 127.0.0.2: host
//! aliases from `~/.ssh/config` and free-form OpenSSH arguments, the bootstrap that uploads the
//! controller's binary once, default directories in the host's rdist cache, hosts that are down
//! (an error naming the host and ssh's reason, within the connect timeout, while the other
//! targets still sync), and login banners on stdout before the handshake.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use rdist_tests::sshd::{Sshd, output_within, wait_output};
use rdist_tests::{Sandbox, rdist_bin, show};

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Longest any one `rdist sync` here may take; a hang fails the test instead of stalling.
const LIMIT: Duration = Duration::from_secs(60);

fn run(cmd: &mut Command) -> Output {
    output_within(cmd, LIMIT)
}

use rdist_tests::assert_mirrors;
use rdist_tests::{assert_ok, json_of as json, stderr_of as stderr};

/// A small project: a package, a nested data file, an executable, an empty directory, a link,
/// and entries the fixed ignores leave out.
fn project() -> Sandbox {
    let sb = Sandbox::new();
    sb.write("pkg/__init__.py", "");
    sb.write("pkg/core.py", "def f():\n    return 1\n");
    sb.write("pkg/data/table.csv", "a,b\n1,2\n");
    sb.write("tests/test_core.py", "from pkg.core import f\n");
    sb.write("bin/tool.sh", "#!/bin/sh\necho hi\n");
    std::fs::set_permissions(
        sb.proj().join("bin/tool.sh"),
        std::fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    std::fs::create_dir_all(sb.proj().join("empty")).unwrap();
    std::os::unix::fs::symlink("core.py", sb.proj().join("pkg/alias.py")).unwrap();
    sb.write(".git/HEAD", "ref: refs/heads/main\n");
    sb.write("pkg/__pycache__/core.cpython-312.pyc", "bytecode");
    sb
}

/// `rdist sync --rsyncdir . --tx SPEC... EXTRA...` through the sshd's wrapper.
fn sync(sshd: &Sshd, sb: &Sandbox, tx: &[&str], extra: &[&str]) -> Output {
    let mut c = sshd.rdist(sb);
    c.args(["sync", "--rsyncdir", "."]);
    for t in tx {
        c.arg("--tx").arg(t);
    }
    c.args(extra);
    run(&mut c)
}

fn mtime(p: &Path) -> std::time::SystemTime {
    std::fs::metadata(p).unwrap().modified().unwrap()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn blake3_of_file(p: &Path) -> [u8; 32] {
    let len = std::fs::metadata(p).unwrap().len();
    sync_core::hash::hash_file(p, len).unwrap()
}

/// The one binary uploaded into the host cache `name`, after checking that it is this build's
/// binary, executable, in `bin/<version>-<12 hex of its BLAKE3>/<uname -s>-<uname -m>/`.
#[track_caller]
fn uploaded(sshd: &Sshd, name: &str) -> PathBuf {
    let all = sshd.uploaded_binaries(name);
    assert_eq!(
        all.len(),
        1,
        "want one uploaded binary in `{name}`: {all:?}"
    );
    let p = all[0].clone();
    let hash = blake3_of_file(&rdist_bin());
    let build = p.parent().unwrap().parent().unwrap().file_name().unwrap();
    assert_eq!(
        build.to_str().unwrap(),
        format!("{VERSION}-{}", hex(&hash[..6])),
        "uploaded to the wrong directory"
    );
    let mode = std::fs::metadata(&p).unwrap().permissions().mode();
    assert!(
        mode & 0o111 != 0,
        "`{}` is not executable: {mode:o}",
        p.display()
    );
    assert_eq!(
        blake3_of_file(&p),
        hash,
        "`{}` is not this build",
        p.display()
    );
    p
}

/// `<project dir name>-<first 8 hex of BLAKE3(canonical project path)>`, as the controller
/// names a project's default directory on a host.
fn project_key(sb: &Sandbox) -> String {
    let root = std::fs::canonicalize(sb.proj()).unwrap();
    let f = sb.path().join("project-path");
    std::fs::write(&f, root.as_os_str().as_encoded_bytes()).unwrap();
    let hash = blake3_of_file(&f);
    std::fs::remove_file(&f).unwrap();
    format!("proj-{}", hex(&hash[..4]))
}

#[test]
fn alias_uploads_the_binary_once_then_is_up_to_date_and_syncs_a_change() {
    let Some(sshd) = Sshd::start() else { return };
    let sb = project();
    let dest = sb.worker("remote-w");
    let spec = format!("ssh=rdist-a//chdir={}", dest.display());

    let o = sync(&sshd, &sb, &[&spec], &["--json"]);
    assert_ok(&o);
    assert_mirrors(&sb, &dest);
    let binary = uploaded(&sshd, "rdist-a");
    let j = json(&o);
    assert_eq!(j["targets"][0]["up_to_date"], false, "{}", show(&o));
    assert_eq!(
        j["targets"][0]["dest"],
        format!("rdist-a:{}", dest.display()),
        "{}",
        show(&o)
    );
    let uploaded_at = mtime(&binary);

    let o = sync(&sshd, &sb, &[&spec], &["--json"]);
    assert_ok(&o);
    assert_eq!(json(&o)["targets"][0]["up_to_date"], true, "{}", show(&o));
    assert_eq!(mtime(&binary), uploaded_at, "the binary was uploaded again");

    sb.write("pkg/core.py", "def f():\n    return 2\n");
    sb.write("pkg/new.py", "x = 1\n");
    let o = sync(&sshd, &sb, &[&spec], &["--json"]);
    assert_ok(&o);
    assert_eq!(json(&o)["targets"][0]["files_sent"], 2, "{}", show(&o));
    assert_mirrors(&sb, &dest);
    assert_eq!(mtime(&binary), uploaded_at, "the binary was uploaded again");
}

#[test]
fn free_form_openssh_arguments_work_with_the_plain_system_ssh() {
    let Some(sshd) = Sshd::start() else { return };
    let sb = project();
    let dest = sb.worker("free-w");
    let spec = format!(
        "ssh={}//chdir={}",
        sshd.free_form("127.0.0.1", "free"),
        dest.display()
    );
    // No wrapper and no config file: only the arguments in the spec reach the server.
    let o = run(sb.rdist().env_remove("RDIST_SSH").args([
        "sync",
        "--rsyncdir",
        ".",
        "--json",
        "--tx",
        &spec,
    ]));
    assert_ok(&o);
    assert_mirrors(&sb, &dest);
    uploaded(&sshd, "free");
    assert_eq!(
        json(&o)["targets"][0]["dest"],
        format!("{}@127.0.0.1:{}", sshd.user(), dest.display()),
        "{}",
        show(&o)
    );
}

#[test]
fn two_hosts_sync_concurrently_in_one_command() {
    let Some(sshd) = Sshd::start() else { return };
    let sb = project();
    let (a, b) = (sb.worker("on-a"), sb.worker("on-b"));
    let spec_a = format!("ssh=rdist-a//chdir={}", a.display());
    let spec_b = format!("ssh=rdist-b//chdir={}", b.display());

    let o = sync(&sshd, &sb, &[&spec_a, &spec_b], &["--json"]);
    assert_ok(&o);
    let j = json(&o);
    let targets = j["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 2, "{}", show(&o));
    assert!(targets.iter().all(|t| t["ok"] == true), "{}", show(&o));
    assert_mirrors(&sb, &a);
    assert_mirrors(&sb, &b);
    // Each alias has its own cache on the host, so each got the binary.
    uploaded(&sshd, "rdist-a");
    uploaded(&sshd, "rdist-b");
}

#[test]
fn without_chdir_the_project_lands_in_the_host_cache_work_dir() {
    let Some(sshd) = Sshd::start() else { return };
    let sb = project();
    let o = sync(&sshd, &sb, &["ssh=rdist-a"], &["--json"]);
    assert_ok(&o);
    let key = project_key(&sb);
    let work = sshd.remote_cache("rdist-a").join("work");
    assert_mirrors(&sb, &work.join(&key));
    let names: Vec<String> = std::fs::read_dir(&work)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        std::slice::from_ref(&key),
        "one directory per project"
    );
    assert_eq!(
        json(&o)["targets"][0]["dest"],
        format!("rdist-a:<rdist cache>/work/{key}"),
        "{}",
        show(&o)
    );

    // Stable across runs: the second sync finds the same directory up to date.
    let o = sync(&sshd, &sb, &["ssh=rdist-a"], &["--json"]);
    assert_ok(&o);
    assert_eq!(json(&o)["targets"][0]["up_to_date"], true, "{}", show(&o));
}

#[test]
fn several_workers_on_one_host_directory_are_one_target() {
    let Some(sshd) = Sshd::start() else { return };
    let sb = project();
    let dest = sb.worker("shared");
    let spec = format!("4*ssh=rdist-a//chdir={}", dest.display());
    let o = sync(&sshd, &sb, &[&spec], &["--json"]);
    assert_ok(&o);
    let j = json(&o);
    assert_eq!(j["targets"].as_array().unwrap().len(), 1, "{}", show(&o));
    assert_eq!(j["targets"][0]["workers"], 4, "{}", show(&o));
    assert_mirrors(&sb, &dest);
}

#[test]
fn host_that_is_down_fails_with_ssh_reason_while_the_other_target_syncs() {
    let Some(sshd) = Sshd::start() else { return };
    let sb = project();
    // A port nobody listens on: bound and released, so it refuses connections.
    let closed = rdist_tests::sshd::free_port();
    let (down, good) = (sb.worker("down"), sb.worker("good"));
    let down_spec = format!(
        "ssh=-p {closed} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null {}@127.0.0.1//chdir={}",
        sshd.user(),
        down.display()
    );
    let good_spec = format!("ssh=rdist-a//chdir={}", good.display());

    let started = Instant::now();
    let o = sync(
        &sshd,
        &sb,
        &[&down_spec, &good_spec],
        &["--connect-timeout", "3", "--json"],
    );
    let took = started.elapsed();
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(
        took < Duration::from_secs(10),
        "took {took:?}: {}",
        show(&o)
    );
    let err = stderr(&o);
    let line = err
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no `error:` line: {}", show(&o)));
    assert!(line.contains("127.0.0.1"), "host not named: {}", show(&o));
    assert!(
        line.contains("Connection refused"),
        "ssh's reason missing: {}",
        show(&o)
    );
    assert!(
        !err.to_lowercase().contains("broken pipe"),
        "a bare broken pipe instead of ssh's reason: {}",
        show(&o)
    );
    assert!(!down.exists());
    assert_mirrors(&sb, &good);
    let j = json(&o);
    assert_eq!(j["targets"][0]["ok"], false, "{}", show(&o));
    assert_eq!(j["targets"][1]["ok"], true, "{}", show(&o));
}

#[test]
fn banner_on_stdout_before_the_handshake_does_not_break_the_sync() {
    let Some(sshd) = Sshd::start() else { return };
    let sb = project();
    let dest = sb.worker("bannered");
    let wrapper = sshd.wrapper_with(
        "ssh-banner",
        "echo 'Welcome to the build farm. Unauthorized access prohibited.'",
    );
    let spec = format!("ssh=rdist-a//chdir={}", dest.display());
    let mut c = sshd.rdist(&sb);
    c.env("RDIST_SSH", &wrapper)
        .args(["sync", "--rsyncdir", ".", "--json", "--tx", &spec]);
    // The first sync also goes through the bootstrap's missing-binary answer and the upload.
    let o = run(&mut c);
    assert_ok(&o);
    assert_mirrors(&sb, &dest);
    let o = run(&mut c);
    assert_ok(&o);
    assert_eq!(json(&o)["targets"][0]["up_to_date"], true, "{}", show(&o));
}

/// The bootstrap's missing-binary marker follows the banner; the controller looks for it in the
/// `NoMagic` error text, which `proto::preview` cuts to the first 300 bytes
/// (sync-core/src/proto.rs:360), so sync-cli/src/transport/ssh.rs:124 never sees it and the
/// host never gets the binary.
#[test]
fn long_banner_before_the_bootstrap_answer_still_uploads_the_binary() {
    let Some(sshd) = Sshd::start() else { return };
    let sb = project();
    let dest = sb.worker("motd");
    // A message of the day of 20 lines (about 1 KiB) on stdout, as some shell profiles print.
    let wrapper = sshd.wrapper_with(
        "ssh-motd",
        "i=0; while [ $i -lt 20 ]; do echo \"motd line $i: scheduled maintenance on Sunday, be nice\"; i=$((i+1)); done",
    );
    let spec = format!("ssh=rdist-a//chdir={}", dest.display());
    let o = run(sshd.rdist(&sb).env("RDIST_SSH", &wrapper).args([
        "sync",
        "--rsyncdir",
        ".",
        "--tx",
        &spec,
    ]));
    assert_ok(&o);
    assert_mirrors(&sb, &dest);
    uploaded(&sshd, "rdist-a");
}

#[test]
fn host_that_accepts_but_never_answers_is_given_up_after_the_connect_timeout() {
    let Some(sshd) = Sshd::start() else { return };
    let sb = project();
    // A listener nobody accepts on: the kernel completes the TCP handshake from its backlog,
    // and then no SSH banner ever comes.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let (hung, good) = (sb.worker("hung"), sb.worker("good"));
    let hung_spec = format!(
        "ssh=-p {port} {}@127.0.0.1//chdir={}",
        sshd.user(),
        hung.display()
    );
    let good_spec = format!("ssh=rdist-b//chdir={}", good.display());
    let started = Instant::now();
    let o = sync(
        &sshd,
        &sb,
        &[&hung_spec, &good_spec],
        &["--connect-timeout", "2"],
    );
    let took = started.elapsed();
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(took < Duration::from_secs(8), "took {took:?}: {}", show(&o));
    let err = stderr(&o);
    assert!(
        err.lines()
            .any(|l| l.starts_with("error:") && l.contains("127.0.0.1")),
        "{}",
        show(&o)
    );
    assert!(err.contains("hint:"), "{}", show(&o));
    assert_mirrors(&sb, &good);
    drop(silent);
}

#[test]
fn destinations_on_one_host_share_one_connection() {
    let Some(sshd) = Sshd::start() else { return };
    let sb = project();
    let dirs = [sb.worker("d1"), sb.worker("d2"), sb.worker("d3")];
    let specs: Vec<String> = dirs
        .iter()
        .map(|d| format!("ssh=rdist-a//chdir={}", d.display()))
        .collect();
    let specs: Vec<&str> = specs.iter().map(String::as_str).collect();
    // The first run uploads the binary (logins for the bootstrap, the upload and the retry).
    let o = sync(&sshd, &sb, &specs[..1], &[]);
    assert_ok(&o);

    // Without connection reuse, so that the login is there to count.
    let before = sshd.logins();
    let mut c = sshd.rdist(&sb);
    c.env("RDIST_SSH_REUSE", "0")
        .args(["sync", "--rsyncdir", ".", "--json"]);
    for s in &specs {
        c.arg("--tx").arg(s);
    }
    let o = run(&mut c);
    assert_ok(&o);
    assert_eq!(
        json(&o)["targets"].as_array().unwrap().len(),
        3,
        "{}",
        show(&o)
    );
    for d in &dirs {
        assert_mirrors(&sb, d);
    }
    assert_eq!(
        sshd.logins() - before,
        1,
        "three destinations on one host should need one login; sshd log:\n{}",
        sshd.log()
    );
}

#[test]
fn failed_destination_does_not_stop_the_next_one_on_the_same_host() {
    let Some(sshd) = Sshd::start() else { return };
    let sb = project();
    // Not empty and not created by rdist: the agent refuses it.
    let foreign = sb.worker("foreign");
    rdist_tests::write(&foreign.join("precious.txt"), "keep me");
    let good = sb.worker("after");
    let o = sync(
        &sshd,
        &sb,
        &[
            &format!("ssh=rdist-a//chdir={}", foreign.display()),
            &format!("ssh=rdist-a//chdir={}", good.display()),
        ],
        &["--json"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let j = json(&o);
    assert_eq!(j["targets"][0]["ok"], false, "{}", show(&o));
    assert_eq!(j["targets"][1]["ok"], true, "{}", show(&o));
    assert!(stderr(&o).contains("not created by rdist"), "{}", show(&o));
    assert!(stderr(&o).contains("hint:"), "{}", show(&o));
    assert_eq!(
        std::fs::read_to_string(foreign.join("precious.txt")).unwrap(),
        "keep me"
    );
    assert_mirrors(&sb, &good);
}

#[test]
fn two_first_syncs_to_one_host_at_once_both_upload_and_succeed() {
    let Some(sshd) = Sshd::start() else { return };
    let (one, two) = (project(), project());
    two.write("pkg/only_in_two.py", "x = 2\n");
    let spawn = |sb: &Sandbox, dir: &Path| {
        sshd.rdist(sb)
            .args(["sync", "--rsyncdir", ".", "--tx"])
            .arg(format!("ssh=rdist-a//chdir={}", dir.display()))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (d1, d2) = (one.worker("w"), two.worker("w"));
    let (a, b) = (spawn(&one, &d1), spawn(&two, &d2));
    let (a, b) = (wait_output(a, LIMIT), wait_output(b, LIMIT));
    assert_ok(&a);
    assert_ok(&b);
    assert_mirrors(&one, &d1);
    assert_mirrors(&two, &d2);
    uploaded(&sshd, "rdist-a");
    // No half-uploaded temp files left next to the binary.
    let bin_dir = sshd.uploaded_binaries("rdist-a")[0]
        .parent()
        .unwrap()
        .to_owned();
    let names: Vec<_> = std::fs::read_dir(&bin_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["rdist"], "{}", bin_dir.display());
}

#[test]
fn refused_login_names_the_host_and_ssh_reason() {
    let Some(sshd) = Sshd::start() else { return };
    let sb = project();
    let dest = sb.worker("nope");
    // A key the server does not trust.
    let stranger = sb.path().join("stranger");
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&stranger)
        .status()
        .unwrap();
    assert!(st.success());
    let spec = format!(
        "ssh=-p {} -i {} -o IdentitiesOnly=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null {}@127.0.0.1//chdir={}",
        sshd.port(),
        stranger.display(),
        sshd.user(),
        dest.display()
    );
    let started = Instant::now();
    let o = sync(&sshd, &sb, &[&spec], &["--connect-timeout", "5"]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(started.elapsed() < Duration::from_secs(10), "{}", show(&o));
    let err = stderr(&o);
    assert!(
        err.lines().any(|l| l.starts_with("error:")
            && l.contains("127.0.0.1")
            && l.contains("Permission denied")),
        "{}",
        show(&o)
    );
    assert!(err.contains("hint:"), "{}", show(&o));
    assert!(!dest.exists());
}

#[test]
fn failed_upload_explains_itself() {
    let Some(sshd) = Sshd::start() else { return };
    let sb = project();
    let dest = sb.worker("w");
    // The host's cache directory is below a regular file, so the upload cannot create it.
    let blocker = sb.path().join("not-a-dir");
    std::fs::write(&blocker, "").unwrap();
    let spec = format!(
        "ssh=-p {} -i {} -o IdentitiesOnly=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o SetEnv=RDIST_CACHE_DIR={}/cache {}@127.0.0.1//chdir={}",
        sshd.port(),
        sshd.user_key().display(),
        blocker.display(),
        sshd.user(),
        dest.display()
    );
    let o = sync(&sshd, &sb, &[&spec], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let err = stderr(&o);
    assert!(
        err.lines()
            .any(|l| l.starts_with("error:") && l.contains("uploading rdist")),
        "{}",
        show(&o)
    );
    assert!(
        err.contains("Not a directory"),
        "the host's reason: {}",
        show(&o)
    );
    assert!(err.contains("hint:"), "{}", show(&o));
    assert!(!dest.exists());
}
