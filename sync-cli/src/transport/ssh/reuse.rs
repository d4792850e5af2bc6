//! OpenSSH connection reuse: the first run to a host leaves a master connection behind
//! (`ControlMaster`/`ControlPersist`, as ansible does), and later sessions go through its control
//! socket instead of logging in again.
//!
//! The master is started on its own, `ssh -N -o ControlMaster=yes -o ControlPersist=N ...`, with
//! its stderr in a temp file: once authenticated it forks into the background and the foreground
//! process exits, so nothing rdist waits on for EOF is held by the long-lived master (the trap of
//! `ControlMaster=auto`, where the session that becomes master may keep its stderr pipe open).
//! `-N` runs no remote command, so the first run pays the login but no extra shell start.
//! Sessions then run with `-o ControlMaster=no -o ControlPath=P`, which falls back to a direct
//! login if the master has gone meanwhile.
//!
//! The control socket is `<cache>/ssh/<16 hex>`, keyed by the ssh program, the user's arguments
//! and the host, so a master only ever serves the very command line that started it (another
//! identity file or `SetEnv` gets its own master). rdist names the socket itself rather than
//! using OpenSSH's `%C` so that it can tell a live master from a stale socket without starting
//! a process.
//!
//! Reuse is an optimisation and never fails a sync: a cache path too long for a Unix socket, a
//! directory that is not private, or a user who set up sharing (in the spec, `~/.ssh/config`
//! or an `RDIST_SSH` wrapper, as `ssh -G` reports it) means a plain login, as before.
//!
//! # Security
//! The socket lets anyone who can connect to it run commands as the remote user, so it lives
//! in a directory of mode 0700 that rdist checks is a real directory (not a symlink), private,
//! and, for the short fallback below `/tmp`, owned by the same user as rdist's cache.

use std::ffi::OsStr;
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::anyhow;

use crate::settings::SshReuse;
use crate::transport::TargetError;

/// Longest control path: `sun_path` holds 104 bytes on macOS and the BSDs (108 on Linux) with
/// its NUL, and ssh first binds `<path>.<16 random characters>` and then links it into place.
const MAX_PATH: usize = 104 - 1 - 17;

/// Hex digits of the socket name.
const KEY_LEN: usize = 16;

/// The options a session adds to share a master at `path`.
pub fn session_options(path: &Path) -> [String; 4] {
    [
        "-o".into(),
        "ControlMaster=no".into(),
        "-o".into(),
        format!("ControlPath={}", path.display()),
    ]
}

/// The control socket the session for `host` should use, starting a master there first when
/// none is alive. `None`: connect directly, as without reuse.
///
/// # Errors
/// When the master's login fails for a reason the direct login would share (the host is down,
/// refuses the key, does not answer within `timeout`): the same error, without a second try.
pub fn prepare(
    program: &OsStr,
    args: &[String],
    host: &str,
    timeout: Duration,
    reuse: Option<&SshReuse>,
) -> Result<Option<PathBuf>, TargetError> {
    let Some(reuse) = reuse else { return Ok(None) };
    if user_shares(args) {
        return Ok(None);
    }
    let Some(dir) = control_dir(&reuse.cache, Path::new(SHORT_BASE)) else {
        return Ok(None);
    };
    let path = dir.join(key(program, args, host));
    match probe(&path) {
        Socket::Alive => return Ok(Some(path)),
        Socket::Stale => {
            let _ = std::fs::remove_file(&path);
        }
        Socket::Missing => {}
    }
    if !config_allows(program, args, host, timeout) {
        return Ok(None);
    }
    start_master(program, args, host, timeout, reuse.persist, &path)
}

/// OpenSSH's flags that take a value (`ssh -p 22`, `ssh -p22`).
const WITH_VALUE: &str = "BbcDEeFIiJLlmOoPpQRSWw";

/// Whether the user's own arguments already choose a control socket or master mode: `-M`,
/// `-S path`, `-o ControlMaster=...`, `-oControlPath=...`, `-o "ControlPersist 30"`, also
/// inside a cluster of flags (`-NM`).
fn user_shares(args: &[String]) -> bool {
    let mut words = args.iter().map(String::as_str);
    while let Some(w) = words.next() {
        let Some(flags) = w.strip_prefix('-') else {
            continue;
        };
        for (i, c) in flags.char_indices() {
            if c == 'M' || c == 'S' {
                return true;
            }
            if !WITH_VALUE.contains(c) {
                continue;
            }
            let attached = &flags[i + 1..];
            let value = if attached.is_empty() {
                words.next().unwrap_or_default()
            } else {
                attached
            };
            if c == 'o' && names_sharing(value) {
                return true;
            }
            break;
        }
    }
    false
}

/// Whether an `-o` value sets one of the options of connection sharing.
fn names_sharing(option: &str) -> bool {
    let name = option
        .trim_start()
        .split(|c: char| c == '=' || c.is_whitespace())
        .next()
        .unwrap_or_default();
    ["controlmaster", "controlpath", "controlpersist"]
        .iter()
        .any(|k| name.eq_ignore_ascii_case(k))
}

/// `<16 hex of BLAKE3(program, args, host)>`.
fn key(program: &OsStr, args: &[String], host: &str) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"rdist ssh control 1\0");
    h.update(program.as_encoded_bytes());
    for a in args.iter().map(String::as_str).chain([host]) {
        h.update(b"\0");
        h.update(a.as_bytes());
    }
    h.finalize().to_hex()[..KEY_LEN].to_owned()
}

/// Where the short control directory goes (not `$TMPDIR`: on macOS that alone is ~50 bytes).
const SHORT_BASE: &str = "/tmp";

/// `<cache>/ssh`, or `<short_base>/rdist-<uid>` when that is too long for a socket path (or
/// needs quoting in an ssh option); `None` when neither is usable.
fn control_dir(cache: &Path, short_base: &Path) -> Option<PathBuf> {
    let primary = cache.join("ssh");
    let uid = private_dir(&primary)?;
    if fits(&primary) {
        return Some(primary);
    }
    let short = short_base.join(format!("rdist-{uid}"));
    (private_dir(&short)? == uid && fits(&short)).then_some(short)
}

/// Whether a socket in `dir` has a short enough path that ssh takes verbatim (no `%`, `$`,
/// `~`, quotes or spaces, which it would expand or split).
fn fits(dir: &Path) -> bool {
    let Some(s) = dir.to_str() else { return false };
    s.len() + 1 + KEY_LEN <= MAX_PATH
        && s.starts_with('/')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+,@=:".contains(&b))
}

/// Creates `dir` (mode 0700) if needed; its owner's uid when it is a real directory that only
/// its owner can enter.
fn private_dir(dir: &Path) -> Option<u32> {
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).ok()?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(_) => return None,
    }
    let meta = std::fs::symlink_metadata(dir).ok()?;
    (meta.is_dir() && meta.mode() & 0o077 == 0).then_some(meta.uid())
}

enum Socket {
    Alive,
    /// A socket file nobody listens on: its master was killed.
    Stale,
    Missing,
}

/// Connects to the socket and hangs up: a master accepts, a dead one's file refuses.
fn probe(path: &Path) -> Socket {
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Socket::Alive,
        Err(e) if e.kind() == ErrorKind::NotFound => Socket::Missing,
        Err(_) if path.exists() => Socket::Stale,
        Err(_) => Socket::Missing,
    }
}

/// Whether the effective configuration (`ssh -G`: the user's arguments, `~/.ssh/config`, and
/// whatever an `RDIST_SSH` wrapper adds) leaves connection sharing off.
fn config_allows(program: &OsStr, args: &[String], host: &str, timeout: Duration) -> bool {
    let mut c = Command::new(program);
    c.arg("-G")
        .args(args)
        .arg(host)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let Ok(mut child) = c.spawn() else {
        return false;
    };
    let out = child.stdout.take().map(|mut r| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut r, &mut s);
            s
        })
    });
    if !matches!(wait_until(&mut child, Instant::now() + timeout, || false), Waited::Exited(s) if s.success())
    {
        return false;
    }
    let text = out.and_then(|h| h.join().ok()).unwrap_or_default();
    let mut master_off = false;
    for line in text.lines() {
        match line.split_once(' ') {
            Some(("controlmaster", v)) => master_off = v.trim() == "false",
            Some(("controlpath", v)) if v.trim() != "none" => return false,
            _ => {}
        }
    }
    master_off
}

/// How [`wait_until`] ended.
enum Waited {
    Exited(ExitStatus),
    /// `give_up` said so; the child was stopped.
    GaveUp,
    /// The deadline passed (or the child could not be waited for); it was stopped.
    TimedOut,
}

/// Waits for `child` until `deadline`, or until `give_up` says to stop waiting; stops it then.
fn wait_until(child: &mut Child, deadline: Instant, mut give_up: impl FnMut() -> bool) -> Waited {
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Waited::Exited(s),
            Ok(None) if give_up() => {
                stop(child);
                return Waited::GaveUp;
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            _ => {
                stop(child);
                return Waited::TimedOut;
            }
        }
    }
}

/// What ssh says when another master won the race to `path`; the loser carries on as a plain
/// connection (which rdist stops: the winner serves).
const RACE_LOST: &str = "already exists, disabling multiplexing";

/// Starts a master for `host` at `path` and waits for its login.
fn start_master(
    program: &OsStr,
    args: &[String],
    host: &str,
    timeout: Duration,
    persist: Duration,
    path: &Path,
) -> Result<Option<PathBuf>, TargetError> {
    let Ok(log) = tempfile::tempfile() else {
        return Ok(None);
    };
    let Ok(log_for_ssh) = log.try_clone() else {
        return Ok(None);
    };
    let mut c = Command::new(program);
    c.args(["-N", "-o", "BatchMode=yes", "-o"])
        .arg(format!("ConnectTimeout={}", timeout.as_secs().max(1)))
        .args(["-o", "ControlMaster=yes", "-o"])
        .arg(format!("ControlPersist={}", persist.as_secs().max(1)))
        .arg("-o")
        .arg(format!("ControlPath={}", path.display()))
        .args(args)
        .arg(host)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_for_ssh);
    let Ok(mut child) = c.spawn() else {
        // `open` reports a missing ssh program when it tries the session.
        return Ok(None);
    };
    let said = || {
        let mut buf = vec![0; 8 << 10];
        let n = log.read_at(&mut buf, 0).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).trim().to_owned()
    };
    let lost = || {
        let lost = said().contains(RACE_LOST);
        if lost {
            // ssh removes its temporary socket (`path.XXXX`) just after saying so: let it,
            // before it is stopped, or the socket is left behind.
            std::thread::sleep(Duration::from_millis(20));
        }
        lost
    };
    let status = match wait_until(&mut child, Instant::now() + timeout, lost) {
        Waited::Exited(s) => Some(s),
        Waited::GaveUp => return Ok(Some(path.to_owned())),
        Waited::TimedOut => None,
    };
    let stderr = said();
    match status {
        Some(s) if s.success() => Ok(Some(path.to_owned())),
        // Another rdist's master is serving: use it.
        _ if matches!(probe(path), Socket::Alive) => Ok(Some(path.to_owned())),
        // Something about the socket itself: a plain login may still work.
        Some(_) if stderr.contains(&*path.to_string_lossy()) || stderr.contains("ControlPath") => {
            Ok(None)
        }
        Some(_) => {
            let last = sync_core::last_line(&stderr).unwrap_or("");
            let error = if last.is_empty() {
                anyhow!("cannot reach `{host}` over ssh: ssh failed without a message")
            } else {
                anyhow!("cannot reach `{host}` over ssh: {last}")
            };
            Err(TargetError {
                error,
                hint: Some(format!(
                    "try `ssh {host} true` in a shell; rdist runs ssh with BatchMode=yes, so passwords cannot be typed"
                )),
                stderr,
                remote: false,
            })
        }
        None => Err(TargetError {
            error: anyhow!("no answer within {:.0} s", timeout.as_secs_f64()),
            hint: Some(
                "is the host up and reachable? raise `--connect-timeout` for slow hosts".into(),
            ),
            stderr,
            remote: false,
        }),
    }
}

fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_sharing_options_are_recognised_in_every_spelling() {
        let yes: &[&[&str]] = &[
            &["-o", "ControlMaster=auto"],
            &["-oControlPath=/x/%C"],
            &["-o", "controlpersist 30"],
            &["-o", "ControlPath", "host"],
            &["-S", "/tmp/sock"],
            &["-S/tmp/sock"],
            &["-M"],
            &["-MN"],
            &["-p", "22", "-NM"],
        ];
        for args in yes {
            let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            assert!(user_shares(&args), "{args:?}");
        }
        let no: &[&[&str]] = &[
            &[],
            &["-p", "2222", "-i", "/home/me/.ssh/Special", "me@h"],
            &["-o", "IdentitiesOnly=yes", "-oBatchMode=yes"],
            &["-J", "jump", "-o", "SetEnv=A=ControlPath"],
            &["-v"],
            &["-lSam", "-i", "-Strange-key-name", "-p2222"],
        ];
        for args in no {
            let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            assert!(!user_shares(&args), "{args:?}");
        }
    }

    #[test]
    fn key_depends_on_program_args_and_host() {
        let k = |p: &str, a: &[&str], h: &str| {
            let a: Vec<String> = a.iter().map(|s| s.to_string()).collect();
            key(OsStr::new(p), &a, h)
        };
        let base = k("ssh", &["-p", "22"], "h");
        assert_eq!(base.len(), KEY_LEN);
        assert_eq!(base, k("ssh", &["-p", "22"], "h"));
        assert_ne!(base, k("ssh", &["-p", "2"], "2h"));
        assert_ne!(base, k("ssh", &["-p", "22"], "g"));
        assert_ne!(base, k("/opt/ssh", &["-p", "22"], "h"));
    }

    #[test]
    fn long_or_odd_cache_paths_use_the_short_directory() {
        assert!(fits(Path::new("/home/me/.cache/rdist/ssh")));
        assert!(!fits(Path::new(&format!("/home/{}/ssh", "x".repeat(60)))));
        assert!(!fits(Path::new("/home/my name/.cache/rdist/ssh")));
        assert!(!fits(Path::new("/home/100%/.cache/rdist/ssh")));
        assert!(!fits(Path::new("relative/ssh")));

        let tmp = tempfile::tempdir().unwrap();
        let long = tmp.path().join("x".repeat(90));
        let dir = control_dir(&long, tmp.path()).unwrap();
        let name = dir.file_name().unwrap().to_str().unwrap();
        assert_eq!(dir.parent(), Some(tmp.path()));
        assert!(name.starts_with("rdist-"), "{}", dir.display());
        let meta = std::fs::symlink_metadata(&dir).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o700);
        // The long directory was still made private, and is what gave the uid.
        let made = std::fs::symlink_metadata(long.join("ssh")).unwrap();
        assert_eq!(made.mode() & 0o777, 0o700);
        assert_eq!(meta.uid(), made.uid());
        assert_eq!(name, format!("rdist-{}", meta.uid()));

        // A short directory someone else made (here: a symlink to ours) is not used.
        let other = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(&dir, other.path().join(name)).unwrap();
        assert_eq!(control_dir(&long, other.path()), None);
    }

    #[test]
    fn a_directory_others_can_enter_or_a_symlink_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let open = tmp.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(private_dir(&open), None);
        let link = tmp.path().join("link");
        let target = tmp.path().join("target");
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&target)
            .unwrap();
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert_eq!(private_dir(&link), None);
        assert!(private_dir(&target).is_some());
    }

    #[test]
    fn a_socket_file_without_a_listener_is_stale() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("s");
        assert!(matches!(probe(&path), Socket::Missing));
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(matches!(probe(&path), Socket::Alive));
        drop(listener);
        assert!(matches!(probe(&path), Socket::Stale));
    }
}
