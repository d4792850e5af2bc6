//! The far ends of the remote transports, started per test and stopped on drop: a private
//! OpenSSH server on 127.0.0.1 and 127.0.0.2 ([`Sshd`]), and `rdist serve` ([`Serve`]); plus
//! [`output_within`], which runs a command with a deadline.
//!
//! [`Sshd`] trusts one throwaway user key and comes with a throwaway `HOME` whose
//! `.ssh/config` defines the aliases `rdist-a` (127.0.0.1) and `rdist-b` (127.0.0.2). OpenSSH
//! reads `~/.ssh/config` from the passwd entry, not from `$HOME`, so rdist reaches it through
//! an `ssh` wrapper (`RDIST_SSH`) that passes `-F "$HOME/.ssh/config"`. Every alias sets
//! `RDIST_CACHE_DIR` on the host (sshd accepts `RDIST_*`), so uploaded binaries and default
//! worker directories land in the sandbox, never in the real home.

use std::ffi::OsString;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use crate::{Sandbox, rdist_bin};

/// How long a server may take to start listening.
const START: Duration = Duration::from_secs(15);

/// Reports a missing prerequisite: a note and `None` on a developer machine, a panic in CI
/// (which installs everything, so a skip there would hide a broken setup).
fn skip<T>(why: &str) -> Option<T> {
    if std::env::var_os("CI").is_some() {
        panic!("{why}, and CI is set: CI must provide it");
    }
    eprintln!("note: skipping: {why}");
    None
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Runs `cmd` with piped output; kills it and panics if it has not finished within `limit`.
pub fn output_within(cmd: &mut Command, limit: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    wait_output(child, limit)
}

/// Waits for `child` (with piped stdout and stderr) and collects its output; kills it and
/// panics if it has not finished within `limit`.
pub fn wait_output(mut child: Child, limit: Duration) -> Output {
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut v);
            }
            v
        })
    };
    let out = drain(child.stdout.take().map(|r| Box::new(r) as _));
    let err = drain(child.stderr.take().map(|r| Box::new(r) as _));
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = err.join().unwrap_or_default();
            panic!(
                "command did not finish within {limit:?}; stderr:\n{}",
                String::from_utf8_lossy(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Polls `done` every few milliseconds until it is true or `limit` passes; returns whether it
/// became true.
pub fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if done() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn program(name: &str, dirs: &[&str]) -> Option<PathBuf> {
    dirs.iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

fn current_user() -> String {
    let out = Command::new("id")
        .arg("-un")
        .output()
        .expect("run `id -un`");
    assert!(out.status.success(), "`id -un` failed");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `uname -s`-`uname -m` of this machine, as the bootstrap script names the binary directory.
pub fn uname_dir() -> String {
    let word = |flag: &str| {
        let out = Command::new("uname").arg(flag).output().expect("run uname");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    format!("{}-{}", word("-s"), word("-m"))
}

fn write_script(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A private sshd on 127.0.0.1 and 127.0.0.2, killed on drop.
pub struct Sshd {
    dir: tempfile::TempDir,
    port: u16,
    user: String,
    ssh: PathBuf,
    child: Child,
}

/// The host aliases the throwaway `~/.ssh/config` defines, with their addresses.
pub const ALIASES: [(&str, &str); 2] = [("rdist-a", "127.0.0.1"), ("rdist-b", "127.0.0.2")];

impl Sshd {
    /// Starts an sshd, or returns `None` after a note when OpenSSH is not installed (a panic
    /// when `CI` is set).
    pub fn start() -> Option<Sshd> {
        let Some(sshd) = program("sshd", &["/usr/sbin", "/usr/local/sbin", "/sbin"]) else {
            return skip("no sshd in /usr/sbin");
        };
        let Some(ssh) = program("ssh", &["/usr/bin", "/usr/local/bin", "/bin"]) else {
            return skip("no ssh client in /usr/bin");
        };
        let Some(keygen) = program("ssh-keygen", &["/usr/bin", "/usr/local/bin", "/bin"]) else {
            return skip("no ssh-keygen in /usr/bin");
        };
        let mut dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().to_owned();
        let d = d.as_path();
        for key in ["host_key", "user_key"] {
            let st = Command::new(&keygen)
                .args(["-q", "-t", "ed25519", "-N", "", "-C", key, "-f"])
                .arg(d.join(key))
                .stdin(Stdio::null())
                .status()
                .expect("run ssh-keygen");
            assert!(st.success(), "ssh-keygen failed for {key}");
        }
        std::fs::copy(d.join("user_key.pub"), d.join("authorized_keys")).unwrap();
        // sshd refuses to start without its privilege separation directory.
        let _ = std::fs::create_dir_all("/run/sshd");
        let user = current_user();
        let mut last_log = String::new();
        for _attempt in 0..3 {
            let port = free_port();
            let config = d.join("sshd_config");
            std::fs::write(
                &config,
                format!(
                    "ListenAddress 127.0.0.1\nListenAddress 127.0.0.2\nPort {port}\n\
                     HostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\n\
                     PidFile {d}/sshd.pid\nPasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n\
                     StrictModes no\nUsePAM no\nAcceptEnv RDIST_*\n",
                    d = d.display()
                ),
            )
            .unwrap();
            let log = std::fs::File::create(d.join("sshd.log")).unwrap();
            let child = Command::new(&sshd)
                .args(["-D", "-e", "-f"])
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn sshd");
            let mut me = Sshd {
                dir,
                port,
                user: user.clone(),
                ssh: ssh.clone(),
                child,
            };
            if me.wait_listening() {
                me.write_client_files();
                return Some(me);
            }
            last_log = me.log();
            dir = me.into_dir();
        }
        panic!("sshd did not start; its log:\n{last_log}");
    }

    /// Whether both addresses accept connections before the start timeout (false when sshd
    /// exited, e.g. because the port was taken in the meantime).
    fn wait_listening(&mut self) -> bool {
        let port = self.port;
        let up = |ip: &str| {
            let a: SocketAddr = format!("{ip}:{port}").parse().unwrap();
            TcpStream::connect_timeout(&a, Duration::from_millis(200)).is_ok()
        };
        let start = Instant::now();
        while start.elapsed() < START {
            if self.child.try_wait().expect("wait sshd").is_some() {
                return false;
            }
            if ALIASES.iter().all(|(_, ip)| up(ip)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Stops sshd and hands back its directory, for another attempt.
    fn into_dir(mut self) -> tempfile::TempDir {
        self.stop();
        let dir = tempfile::tempdir().expect("tempdir");
        std::mem::replace(&mut self.dir, dir)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The throwaway home, its ssh config, and the ssh wrapper.
    fn write_client_files(&self) {
        let ssh_dir = self.home().join(".ssh");
        std::fs::create_dir_all(&ssh_dir).unwrap();
        let mut config = String::new();
        for (alias, ip) in ALIASES {
            config.push_str(&format!(
                "Host {alias}\n  HostName {ip}\n  Port {port}\n  User {user}\n  \
                 IdentityFile {key}\n  IdentitiesOnly yes\n  StrictHostKeyChecking no\n  \
                 UserKnownHostsFile /dev/null\n  LogLevel ERROR\n  SetEnv RDIST_CACHE_DIR={cache}\n\n",
                port = self.port,
                user = self.user,
                key = self.user_key().display(),
                cache = self.remote_cache(alias).display(),
            ));
        }
        std::fs::write(ssh_dir.join("config"), config).unwrap();
        self.wrapper_with("ssh", "");
    }

    /// The port sshd listens on, at 127.0.0.1 and 127.0.0.2.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The user tests log in as: the current one (root in CI).
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The private key sshd trusts.
    pub fn user_key(&self) -> PathBuf {
        self.dir.path().join("user_key")
    }

    /// The throwaway home with `.ssh/config`.
    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// The `ssh` wrapper that reads the throwaway config.
    pub fn wrapper(&self) -> PathBuf {
        self.dir.path().join("ssh")
    }

    /// Writes another wrapper, `name`, that runs the shell lines `prelude` and then execs ssh
    /// with the throwaway config; returns its path.
    pub fn wrapper_with(&self, name: &str, prelude: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        write_script(
            &path,
            &format!(
                "#!/bin/sh\n{prelude}\nexec {} -F \"$HOME/.ssh/config\" \"$@\"\n",
                self.ssh.display()
            ),
        );
        path
    }

    /// The rdist cache on the host for logins through `name` (an alias, or any name given to
    /// [`Sshd::free_form`]).
    pub fn remote_cache(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("remote-cache-{name}"))
    }

    /// Every rdist binary uploaded into the cache for `name`: the files
    /// `<cache>/bin/<build>/<uname -s>-<uname -m>/rdist`, whatever `<build>` is.
    pub fn uploaded_binaries(&self, name: &str) -> Vec<PathBuf> {
        let Ok(builds) = std::fs::read_dir(self.remote_cache(name).join("bin")) else {
            return Vec::new();
        };
        let mut out: Vec<PathBuf> = builds
            .map(|b| b.unwrap().path().join(uname_dir()).join("rdist"))
            .filter(|p| p.exists())
            .collect();
        out.sort();
        out
    }

    /// The free-form OpenSSH arguments reaching `ip` without any config file, with the remote
    /// cache of `cache_name`: `-p PORT -i KEY -o ... user@ip`.
    pub fn free_form(&self, ip: &str, cache_name: &str) -> String {
        format!(
            "-p {port} -i {key} -o IdentitiesOnly=yes -o StrictHostKeyChecking=no \
             -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o SetEnv=RDIST_CACHE_DIR={cache} \
             {user}@{ip}",
            port = self.port,
            key = self.user_key().display(),
            cache = self.remote_cache(cache_name).display(),
            user = self.user,
        )
    }

    /// `rdist` in the sandbox's project, with the throwaway `HOME` and the ssh wrapper.
    pub fn rdist(&self, sb: &Sandbox) -> Command {
        let mut c = sb.rdist();
        c.env("HOME", self.home()).env("RDIST_SSH", self.wrapper());
        c
    }

    /// What sshd has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// How many ssh logins the server has accepted.
    pub fn logins(&self) -> usize {
        self.log().matches("Accepted publickey").count()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A running `rdist serve --listen 127.0.0.1:PORT --root DIR/root --token-file DIR/token`,
/// killed on drop. Its stderr goes to `DIR/serve.log` (appended to across restarts).
pub struct Serve {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    /// `PATH` of the server, and so of the pytest workers it starts.
    path: Option<OsString>,
}

/// The token [`Serve`] writes to its token file.
pub const TOKEN: &str = "test-token-0123456789abcdef";

impl Serve {
    /// Starts a server keeping its root, token file (holding [`TOKEN`]) and log in `dir`, on a
    /// free port.
    pub fn start(dir: &Path) -> Serve {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("token"), format!("{TOKEN}\n")).unwrap();
        Serve::launch(dir, None)
    }

    /// Like [`Serve::start`], with the tests' Python first on the server's `PATH`, so that the
    /// workers it starts (`python3`, rdist's default) run it: a server started from an activated
    /// venv. Check [`crate::have_pytest`] first.
    pub fn start_with_test_python(dir: &Path) -> Serve {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("token"), format!("{TOKEN}\n")).unwrap();
        Serve::launch(dir, Some(crate::python::path_with_python()))
    }

    /// Like [`Serve::start`], but with no token file: the server generates one there.
    pub fn start_generating_token(dir: &Path) -> Serve {
        std::fs::create_dir_all(dir).unwrap();
        Serve::launch(dir, None)
    }

    fn launch(dir: &Path, path: Option<OsString>) -> Serve {
        let mut last = String::new();
        for _attempt in 0..3 {
            let mut s = Serve {
                child: None,
                port: free_port(),
                dir: dir.to_owned(),
                path: path.clone(),
            };
            match s.spawn() {
                Ok(()) => return s,
                Err(log) => last = log,
            }
        }
        panic!("rdist serve did not start; its log:\n{last}");
    }

    /// Starts the server again on the same port and root (after [`Serve::kill`] or
    /// [`Serve::terminate`]).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the server is still running");
        // The old listener's port may take a moment to be free again.
        let start = Instant::now();
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(log) if start.elapsed() > START => {
                    panic!("rdist serve did not restart; its log:\n{log}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Spawns the server and waits for its "listening on" line; on failure returns the log.
    fn spawn(&mut self) -> Result<(), String> {
        let log_path = self.log_path();
        let before = self.log().matches("listening on").count();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let mut cmd = Command::new(rdist_bin());
        if let Some(path) = &self.path {
            cmd.env("PATH", path);
        }
        let mut child = cmd
            .arg("serve")
            .arg("--listen")
            .arg(self.addr())
            .arg("--root")
            .arg(self.root())
            .arg("--token-file")
            .arg(self.token_file())
            .env_remove("RDIST_TOKEN")
            .env("RDIST_CACHE_DIR", self.dir.join("serve-cache"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn rdist serve");
        let start = Instant::now();
        loop {
            if self.log().matches("listening on").count() > before {
                self.child = Some(child);
                return Ok(());
            }
            if child.try_wait().expect("wait").is_some() || start.elapsed() > START {
                let _ = child.kill();
                let _ = child.wait();
                return Err(self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The directory sessions are confined to.
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// The file holding [`TOKEN`].
    pub fn token_file(&self) -> PathBuf {
        self.dir.join("token")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("serve.log")
    }

    /// Everything the server has logged, across restarts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Waits up to `limit` for the log to contain `needle`.
    pub fn wait_log(&self, needle: &str, limit: Duration) -> bool {
        wait_until(limit, || self.log().contains(needle))
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM; waits up to `limit` for the exit (SIGKILL and a panic after that).
    pub fn terminate(&mut self, limit: Duration) -> ExitStatus {
        let mut c = self.child.take().expect("the server is running");
        let st = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -TERM failed");
        let start = Instant::now();
        loop {
            if let Some(s) = c.try_wait().expect("wait") {
                return s;
            }
            if start.elapsed() > limit {
                let _ = c.kill();
                let _ = c.wait();
                panic!("rdist serve did not exit within {limit:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill();
    }
}
