//! OpenSSH connection reuse through a real client and server on 127.0.0.1: a later run goes
//! through the master the first one left (no new login in sshd's log), `RDIST_SSH_REUSE=0` and
//! `ssh_reuse = 0` turn it off, the user's own sharing settings are left alone, a stale socket
//! from a killed master is replaced, concurrent first runs agree on one master, and a master
//! killed during `rdist run` ends the run with an error (and the agent on the host, which lost
//! its connection too, its worker). The sandbox stops its masters when dropped.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use rdist_tests::sshd::{Sshd, output_within, wait_output, wait_until};
use rdist_tests::{Sandbox, assert_mirrors, assert_ok, processes_in, show, ssh_control};

const LIMIT: Duration = Duration::from_secs(60);

fn run(cmd: &mut Command) -> Output {
    output_within(cmd, LIMIT)
}

fn project() -> Sandbox {
    let sb = Sandbox::new();
    sb.write("pkg/__init__.py", "");
    sb.write("pkg/core.py", "def f():\n    return 1\n");
    sb.write("tests/test_core.py", "from pkg.core import f\n");
    sb
}

/// `rdist sync --rsyncdir . --tx ssh=SPEC//chdir=DEST` through the sshd's wrapper.
fn sync(sshd: &Sshd, sb: &Sandbox, spec: &str, dest: &Path) -> Output {
    run(sshd
        .rdist(sb)
        .args(["sync", "--rsyncdir", ".", "--tx"])
        .arg(format!("ssh={spec}//chdir={}", dest.display())))
}

/// The pid `ssh -O check` reports for the master at `socket`, if one is running.
fn master_pid(socket: &Path) -> Option<u32> {
    let o = ssh_control(socket, "check");
    let text = String::from_utf8_lossy(&o.stderr);
    let pid = text.split("pid=").nth(1)?.split(')').next()?;
    o.status.success().then(|| pid.parse().ok())?
}

#[test]
fn second_sync_goes_through_the_master_without_a_login() {
    let Some(sshd) = Sshd::start() else { return };
    let sb = project();
    let dest = sb.worker("w");
    let o = sync(&sshd, &sb, "rdist-a", &dest);
    assert_ok(&o);
    assert_mirrors(&sb, &dest);
    // The bootstrap, the upload and the second bootstrap all went through one login.
    assert_eq!(sshd.logins(), 1, "sshd log:\n{}", sshd.log());
    let sockets = sb.ssh_sockets();
    assert_eq!(sockets.len(), 1, "{sockets:?}");
    assert!(master_pid(&sockets[0]).is_some(), "no live master");
    let dir = std::fs::symlink_metadata(sb.cache().join("ssh")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&dir.permissions()) & 0o777,
        0o700
    );

    sb.write("pkg/new.py", "x = 1\n");
    let o = sync(&sshd, &sb, "rdist-a", &dest);
    assert_ok(&o);
    assert_mirrors(&sb, &dest);
    assert_eq!(
        sshd.logins(),
        1,
        "a second login; sshd log:\n{}",
        sshd.log()
    );
}

#[test]
fn reuse_is_off_with_rdist_ssh_reuse_0_and_with_ssh_reuse_0_in_rdist_toml() {
    let Some(sshd) = Sshd::start() else { return };
    let sb = project();
    let dest = sb.worker("w");
    let spec = format!("ssh=rdist-a//chdir={}", dest.display());
    let off = |c: &mut Command| run(c.args(["sync", "--rsyncdir", ".", "--tx", &spec]));
    for _ in 0..2 {
        let before = sshd.logins();
        let o = off(sshd.rdist(&sb).env("RDIST_SSH_REUSE", "0"));
        assert_ok(&o);
        assert!(sshd.logins() > before, "no login: {}", show(&o));
    }
    assert_mirrors(&sb, &dest);
    assert_eq!(sb.ssh_sockets(), Vec::<std::path::PathBuf>::new());

    // The file's setting applies when the environment says nothing.
    sb.write("rdist.toml", "[run]\nssh_reuse = 0\n");
    for _ in 0..2 {
        let before = sshd.logins();
        let o = off(sshd.rdist(&sb).env_remove("RDIST_SSH_REUSE"));
        assert_ok(&o);
        assert_eq!(sshd.logins(), before + 1, "{}", show(&o));
    }
    assert_eq!(sb.ssh_sockets(), Vec::<std::path::PathBuf>::new());
}

#[test]
fn the_users_own_control_socket_is_used_and_none_is_added() {
    let Some(sshd) = Sshd::start() else { return };
    let sb = project();
    let dest = sb.worker("w");
    // The user's master, started as they would: `ssh -M -S SOCKET -N HOST`.
    let theirs = sb.path().join("theirs.sock");
    let st = Command::new(sshd.wrapper())
        .env("HOME", sshd.home())
        .args(["-M", "-N", "-o", "ControlPersist=20", "-S"])
        .arg(&theirs)
        .arg("rdist-a")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let _stop = StopMaster(&theirs);
    let before = sshd.logins();
    let spec = format!("-S {} rdist-a", theirs.display());
    for _ in 0..2 {
        let o = sync(&sshd, &sb, &spec, &dest);
        assert_ok(&o);
    }
    assert_mirrors(&sb, &dest);
    assert_eq!(sshd.logins(), before, "sshd log:\n{}", sshd.log());
    assert_eq!(sb.ssh_sockets(), Vec::<std::path::PathBuf>::new());

    // A ControlPath in ~/.ssh/config (seen through `ssh -G`) is the user's choice too: no
    // master of rdist's, and no reuse either, since the config has no ControlMaster.
    let config = sshd.home().join(".ssh/config");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "Host rdist-a\n  ControlPath {}/cfg-%C\n",
        sb.path().display()
    ));
    std::fs::write(&config, text).unwrap();
    let before = sshd.logins();
    let o = sync(&sshd, &sb, "rdist-a", &dest);
    assert_ok(&o);
    assert_eq!(sshd.logins(), before + 1, "sshd log:\n{}", sshd.log());
    assert_eq!(sb.ssh_sockets(), Vec::<std::path::PathBuf>::new());
}

/// `ssh -O exit` on drop.
struct StopMaster<'a>(&'a Path);

impl Drop for StopMaster<'_> {
    fn drop(&mut self) {
        let _ = ssh_control(self.0, "exit");
    }
}

/// Syncs `sb` to `rdist-a` once; the worker directory, the master's control socket and its pid.
fn synced_through_a_master(sshd: &Sshd, sb: &Sandbox) -> (PathBuf, PathBuf, u32) {
    let dest = sb.worker("w");
    assert_ok(&sync(sshd, sb, "rdist-a", &dest));
    let socket = sb.ssh_sockets().pop().expect("a control socket");
    let pid = master_pid(&socket).expect("a live master");
    (dest, socket, pid)
}

#[test]
fn a_stale_socket_of_a_killed_master_is_replaced() {
    let Some(sshd) = Sshd::start() else { return };
    let sb = project();
    let (dest, socket, pid) = synced_through_a_master(&sshd, &sb);
    let st = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    assert!(
        rdist_tests::sshd::wait_until(Duration::from_secs(5), || master_pid(&socket).is_none()),
        "the master survived SIGKILL"
    );
    assert!(socket.exists(), "SIGKILL should leave the socket file");

    let before = sshd.logins();
    sb.write("pkg/new.py", "x = 1\n");
    let o = sync(&sshd, &sb, "rdist-a", &dest);
    assert_ok(&o);
    assert_mirrors(&sb, &dest);
    assert_eq!(sshd.logins(), before + 1, "sshd log:\n{}", sshd.log());
    let new = master_pid(&socket).expect("a new master");
    assert_ne!(new, pid);
    let before = sshd.logins();
    assert_ok(&sync(&sshd, &sb, "rdist-a", &dest));
    assert_eq!(sshd.logins(), before, "sshd log:\n{}", sshd.log());
}

#[test]
fn concurrent_first_runs_share_one_master() {
    let Some(sshd) = Sshd::start() else { return };
    let sb = project();
    // The binary is uploaded first, without reuse, so the race below is the masters' alone.
    let o = run(sshd
        .rdist(&sb)
        .env("RDIST_SSH_REUSE", "0")
        .args(["sync", "--rsyncdir", ".", "--tx"])
        .arg(format!("ssh=rdist-a//chdir={}", sb.worker("w0").display())));
    assert_ok(&o);
    let spawn = |dir: &Path| {
        sshd.rdist(&sb)
            .args(["sync", "--rsyncdir", ".", "--tx"])
            .arg(format!("ssh=rdist-a//chdir={}", dir.display()))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let dirs: Vec<_> = (1..=3).map(|i| sb.worker(&format!("w{i}"))).collect();
    let children: Vec<_> = dirs.iter().map(|d| spawn(d)).collect();
    for c in children {
        assert_ok(&wait_output(c, LIMIT));
    }
    for d in &dirs {
        assert_mirrors(&sb, d);
    }
    let sockets = sb.ssh_sockets();
    assert_eq!(sockets.len(), 1, "{sockets:?}");
    assert!(master_pid(&sockets[0]).is_some());
    let before = sshd.logins();
    assert_ok(&run(sshd
        .rdist(&sb)
        .args(["sync", "--rsyncdir", ".", "--tx"])
        .arg(format!("ssh=rdist-a//chdir={}", dirs[0].display()))));
    assert_eq!(sshd.logins(), before, "sshd log:\n{}", sshd.log());
}

#[test]
fn a_master_killed_mid_run_ends_the_run_instead_of_hanging() {
    if !rdist_tests::have_pytest() {
        return;
    }
    let Some(sshd) = Sshd::start() else { return };
    let sb = project();
    let (dest, _, pid) = synced_through_a_master(&sshd, &sb);
    // The first test kills the master that carries the run's connection.
    sb.write(
        "tests/test_core.py",
        format!(
            "import os\nimport signal\nimport time\n\n\
             def test_kill_master():\n    os.kill({pid}, signal.SIGKILL)\n    time.sleep(1)\n\n\
             def test_after():\n    pass\n"
        ),
    );
    let started = std::time::Instant::now();
    let o = run(sshd
        .rdist(&sb)
        .args(["run", "--tx"])
        .arg(format!("ssh=rdist-a//chdir={}", dest.display())));
    assert!(started.elapsed() < Duration::from_secs(30), "{}", show(&o));
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("connection to `rdist-a` lost"), "{}", show(&o));
    // On the host, the agent lost its connection too: it kills its worker and exits.
    for dir in [dest, sshd.remote_cache("rdist-a")] {
        let gone = wait_until(Duration::from_secs(10), || processes_in(&dir).is_empty());
        let left = processes_in(&dir).join("\n");
        assert!(gone, "left running in `{}`:\n{left}", dir.display());
    }
}
