//! Test harness shared by the integration tests in `tests/tests/`: where the `rdist` binary is,
//! throwaway projects, running the binary with an isolated cache, snapshots of trees for
//! comparing a source with its mirror, the processes a run left behind, the Python the tests
//! run pytest with ([`python`]) and the far ends of the remote transports ([`sshd`]).

pub mod python;
pub mod sshd;

pub use python::{have_pytest, use_test_python};

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `rdist` binary of this build (`target/<profile>/rdist`, next to the test executable's
/// `deps/` directory). `.ci/run` builds it before the tests; so does `cargo test --workspace`.
pub fn rdist_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("RDIST_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let bin = dir.join("rdist");
    assert!(
        bin.is_file(),
        "`{}` is missing: run `cargo build -p rdist` (or the whole workspace) before the tests",
        bin.display()
    );
    bin
}

/// A temporary directory holding a project (`proj/`, with a `pyproject.toml`) and room for
/// worker directories, plus a private hash cache.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("proj")).unwrap();
        std::fs::write(
            dir.path().join("proj/pyproject.toml"),
            "[project]\nname = \"demo\"\n",
        )
        .unwrap();
        Sandbox { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The project root.
    pub fn proj(&self) -> PathBuf {
        self.dir.path().join("proj")
    }

    /// A path for a worker directory (not created).
    pub fn worker(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a file under the project, creating parents.
    pub fn write(&self, rel: &str, data: impl AsRef<[u8]>) {
        write(&self.proj().join(rel), data);
    }

    /// `rdist ARGS` run in the project root with this sandbox's cache. ssh master connections
    /// persist 20 s instead of 60 s, a bound should the sandbox not be dropped.
    pub fn rdist(&self) -> Command {
        let mut c = Command::new(rdist_bin());
        c.current_dir(self.proj())
            .env("RDIST_CACHE_DIR", self.cache())
            .env("RDIST_SSH_REUSE", "20")
            .env_remove("RDIST_LOCK_WAIT");
        c
    }

    /// The cache `rdist` gets.
    pub fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    /// The control sockets of the ssh master connections rdist made with this sandbox's cache.
    pub fn ssh_sockets(&self) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(self.cache().join("ssh")) else {
            return Vec::new();
        };
        let mut out: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
        out.sort();
        out
    }

    /// Runs `rdist ARGS` and returns its output.
    pub fn run(&self, args: &[&str]) -> Output {
        self.rdist().args(args).output().expect("run rdist")
    }
}

impl Drop for Sandbox {
    /// Stops the ssh masters rdist left for this sandbox, so none outlives the test.
    fn drop(&mut self) {
        for socket in self.ssh_sockets() {
            let _ = ssh_control(&socket, "exit");
        }
    }
}

/// `ssh -O COMMAND` on the master at `socket` (`check`, `exit`); its output.
pub fn ssh_control(socket: &Path, command: &str) -> Output {
    Command::new("ssh")
        .args(["-F", "/dev/null", "-O", command, "-o"])
        .arg(format!("ControlPath={}", socket.display()))
        .arg("rdist-test")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run ssh -O")
}

/// Writes a file, creating parents.
pub fn write(p: &Path, data: impl AsRef<[u8]>) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

/// pytest's closing line without its rule (`1 failed, 2 passed in 0.12s`): the report's last
/// non-empty line, which must be that rule.
#[track_caller]
pub fn closing_line(report: &str) -> String {
    let last = report
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default();
    assert!(
        last.starts_with('=') && last.ends_with('='),
        "the report does not end with a closing rule: {last:?}\n{report}"
    );
    last.trim_matches(|c| c == '=' || c == ' ').to_owned()
}

/// stdout and stderr of `o`, for assertion messages.
pub fn show(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// One entry of a [`snapshot`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Snap {
    pub path: String,
    pub kind: &'static str,
    pub mode: u32,
    /// Files only; 0 otherwise.
    pub mtime_ns: i64,
    /// File content or link target.
    pub data: Vec<u8>,
}

/// Every entry below `dir`, sorted, leaving out paths for which `skip` is true (given the
/// relative path). rdist's own `.rdist` directory is always left out.
pub fn snapshot_filtered(dir: &Path, skip: &dyn Fn(&str) -> bool) -> Vec<Snap> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).unwrap() {
            let e = e.unwrap().path();
            let rel = e.strip_prefix(dir).unwrap().to_str().unwrap().to_owned();
            if rel == ".rdist" || skip(&rel) {
                continue;
            }
            let m = std::fs::symlink_metadata(&e).unwrap();
            let ft = m.file_type();
            let snap = if ft.is_symlink() {
                Snap {
                    path: rel,
                    kind: "link",
                    mode: 0,
                    mtime_ns: 0,
                    data: std::fs::read_link(&e)
                        .unwrap()
                        .into_os_string()
                        .into_encoded_bytes(),
                }
            } else if ft.is_dir() {
                stack.push(e.clone());
                Snap {
                    path: rel,
                    kind: "dir",
                    mode: m.mode() & 0o7777,
                    mtime_ns: 0,
                    data: vec![],
                }
            } else if ft.is_file() {
                Snap {
                    path: rel,
                    kind: "file",
                    mode: m.mode() & 0o7777,
                    mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
                    data: std::fs::read(&e).unwrap(),
                }
            } else {
                continue;
            };
            out.push(snap);
        }
    }
    out.sort();
    out
}

/// Every entry below `dir` except `.rdist`.
pub fn snapshot(dir: &Path) -> Vec<Snap> {
    snapshot_filtered(dir, &|_| false)
}

/// Whether any component of `rel` is matched by the fixed ignores.
pub fn fixed_ignored(rel: &str) -> bool {
    rel.split('/').any(|c| {
        c.starts_with('.') || c.ends_with(".pyc") || c.ends_with(".pyo") || c.ends_with('~')
    })
}

/// A short, readable account of how two [`snapshot`]s differ (empty when they are equal), for
/// assertion messages: whole snapshots with file contents are too long to read.
pub fn snap_diff(want: &[Snap], got: &[Snap]) -> String {
    use std::collections::BTreeMap;
    let index = |s: &[Snap]| -> BTreeMap<String, Snap> {
        s.iter().map(|e| (e.path.clone(), e.clone())).collect()
    };
    let (w, g) = (index(want), index(got));
    let mut out = String::new();
    for (p, a) in &w {
        match g.get(p) {
            None => out.push_str(&format!("missing  {p} ({})\n", a.kind)),
            Some(b) if a != b => {
                let what = |e: &Snap| {
                    format!(
                        "{} mode {:o} mtime {} {} bytes {:?}",
                        e.kind,
                        e.mode,
                        e.mtime_ns,
                        e.data.len(),
                        String::from_utf8_lossy(&e.data[..e.data.len().min(40)])
                    )
                };
                out.push_str(&format!(
                    "differs  {p}\n   want {}\n    got {}\n",
                    what(a),
                    what(b)
                ));
            }
            Some(_) => {}
        }
    }
    for (p, b) in &g {
        if !w.contains_key(p) {
            out.push_str(&format!("extra    {p} ({})\n", b.kind));
        }
    }
    out
}

/// stderr of `o` as text.
pub fn stderr_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// stdout of `o` parsed as JSON (`--json`); panics with the whole output otherwise.
pub fn json_of(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("bad --json ({e}): {}", show(o)))
}

/// Asserts exit code 0, showing the whole output otherwise.
#[track_caller]
pub fn assert_ok(o: &Output) {
    assert_eq!(o.status.code(), Some(0), "{}", show(o));
}

/// The project as a worker must see it: fixed-ignored entries left out.
pub fn source_snapshot(sb: &Sandbox) -> Vec<Snap> {
    snapshot_filtered(&sb.proj(), &fixed_ignored)
}

/// Asserts that `dest` exists and mirrors the project (fixed-ignored entries left out on both
/// sides), showing the differences otherwise.
#[track_caller]
pub fn assert_mirrors(sb: &Sandbox, dest: &Path) {
    assert!(dest.is_dir(), "`{}` was not created", dest.display());
    let got = snapshot_filtered(dest, &fixed_ignored);
    let want = source_snapshot(sb);
    assert!(
        got == want,
        "`{}` is not a mirror of the project:\n{}",
        dest.display(),
        snap_diff(&want, &got)
    );
}

/// `len` deterministic pseudo-random bytes (xorshift), for content deltas cannot guess.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// A tmpfs mounted on a directory (created if missing), unmounted when dropped (the mount point
/// is left for its sandbox to delete). Needs root; a small `size=` makes a full disk, `ro` a
/// read-only destination even for root.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs with mount `options` (`size=2m`, `ro,size=1m`) on `dir`, or says why it
    /// cannot (not root, no permission).
    ///
    /// # Errors
    /// `mount`'s complaint.
    pub fn mount(dir: &Path, options: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if out.status.success() {
            Ok(Tmpfs(dir.to_owned()))
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// Live (not zombie) processes working in `dir` or running a program from it: the current
/// directory or the executable is at or below `dir`. Each as `pid: command line`, for
/// assertions that a run left nothing behind (a worker runs in its worker directory; an
/// uploaded agent runs from its cache).
pub fn processes_in(dir: &Path) -> Vec<String> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for pid in procs.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()) {
        let proc = PathBuf::from(format!("/proc/{pid}"));
        let zombie = std::fs::read_to_string(proc.join("stat"))
            .ok()
            .and_then(|s| {
                s.rfind(')')
                    .map(|i| s[i + 1..].trim_start().starts_with('Z'))
            })
            .unwrap_or(true);
        let inside = ["cwd", "exe"]
            .iter()
            .filter_map(|l| std::fs::read_link(proc.join(l)).ok())
            .any(|p| p.starts_with(dir));
        if inside && !zombie {
            let cmd = std::fs::read(proc.join("cmdline"))
                .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
                .unwrap_or_default();
            out.push(format!("{pid}: {}", cmd.trim_end()));
        }
    }
    out
}
