//! Agents over the system OpenSSH client: `ssh [BatchMode, ConnectTimeout] [user args] HOST
//! <bootstrap>`, so `~/.ssh/config` aliases, keys, agents, ProxyJump and the free-form options of
//! legacy `ssh=` specs behave as in the user's shell. `RDIST_SSH` names another ssh program.
//!
//! The bootstrap is a short POSIX `sh` script: it starts this very build of rdist from the
//! host's rdist cache (`<cache>/bin/<version>-<12 hex of the binary's BLAKE3>/<uname -s>-<uname
//! -m>/rdist`, so two builds never share a path) or from `PATH` if that is the same version; otherwise it prints a marker with the host's `uname -sm` and exits. When the
//! host's system and machine match ours, the controller uploads its own binary there
//! (temp file + rename, so a half-uploaded binary is never started) and tries once more.
//!
//! Later runs skip the login through an OpenSSH master connection kept for a while ([`reuse`]).

use std::ffi::OsString;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::anyhow;
use sync_core::proto::ProtoError;
use sync_core::push::{PushError, PushOptions};

use super::child::{AgentChild, open_session};
use super::{Opened, TargetError};
use crate::settings::SshReuse;

mod reuse;

const VERSION: &str = env!("CARGO_PKG_VERSION");
const MARKER: &str = "RDIST-BOOTSTRAP-MISSING";

/// The remote cache directory, as a shell expression.
const REMOTE_CACHE: &str = r#"${RDIST_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rdist}"#;

/// `uname -s` and `uname -m` of this build's target, as a host of the same kind prints them.
pub fn local_uname() -> String {
    let os = match std::env::consts::OS {
        "linux" => "Linux",
        "macos" => "Darwin",
        "freebsd" => "FreeBSD",
        other => other,
    };
    let arch = match (std::env::consts::OS, std::env::consts::ARCH) {
        ("macos", "aarch64") => "arm64",
        (_, a) => a,
    };
    format!("{os} {arch}")
}

/// `<version>-<12 hex of this executable's BLAKE3>`, computed once per process, and remembered
/// across runs in rdist's cache keyed by the executable's stamp (hashing a 35 MiB binary on
/// every ssh sync costs more than the rest of a no-op sync's local work).
fn build_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let hash = std::env::current_exe()
            .ok()
            .and_then(|exe| exe_hash(&exe, crate::settings::cache_dir().as_deref()))
            .unwrap_or_else(|| "unknown".to_owned());
        format!("{VERSION}-{hash}")
    })
}

/// The first 12 hex digits of the BLAKE3 of `exe`, from `<cache>/build-id` when the stamp
/// recorded there is still the executable's.
fn exe_hash(exe: &std::path::Path, cache: Option<&std::path::Path>) -> Option<String> {
    use sync_core::hash::{HashCache, hash_file, now_ns};
    let meta = std::fs::metadata(exe).ok()?;
    let stamp = sync_core::manifest::Stamp::of(&meta);
    // The sync's own stamp -> hash cache, in a file of its own: it applies the racily-clean
    // rule (a binary being rebuilt is not recorded) and writes atomically.
    let mut known = match cache {
        Some(c) => HashCache::load(c.join("build-id")),
        None => HashCache::in_memory(),
    };
    let hash = match known.lookup(&stamp) {
        Some(h) => h,
        None => {
            let taken = now_ns();
            let h = hash_file(exe, stamp.size).ok()?;
            known.record(stamp, h, taken);
            // Only an optimisation: a cache that cannot be written is recomputed next time.
            let _ = known.save();
            h
        }
    };
    Some(hash[..6].iter().map(|b| format!("{b:02x}")).collect())
}

fn bin_dir() -> String {
    format!(
        r#"{REMOTE_CACHE}/bin/{}/$(uname -s)-$(uname -m)"#,
        build_id()
    )
}

/// The script that starts the agent on the host, or reports that it cannot.
pub fn bootstrap_script() -> String {
    format!(
        r#"b="{dir}/rdist"; if [ -x "$b" ]; then exec "$b" agent --stdio; fi; if command -v rdist >/dev/null 2>&1 && [ "$(rdist --version 2>/dev/null)" = "rdist {VERSION}" ]; then exec rdist agent --stdio; fi; echo "{MARKER} $(uname -s) $(uname -m)"; exit 0"#,
        dir = bin_dir()
    )
}

/// The script that receives a binary on stdin and installs it atomically.
pub fn upload_script() -> String {
    format!(
        r#"set -e; d="{dir}"; mkdir -p "$d"; t="$d/.rdist.upload.$$"; cat > "$t"; chmod 755 "$t"; mv -f "$t" "$d/rdist"; echo RDIST-UPLOADED"#,
        dir = bin_dir()
    )
}

/// Quotes `script` as one word for the remote user's shell, which runs it under `sh -c`.
fn remote_command(script: &str) -> String {
    format!("sh -c {}", shell_words::quote(script))
}

/// The ssh program: `RDIST_SSH`, else `ssh`.
fn program() -> OsString {
    std::env::var_os("RDIST_SSH").unwrap_or_else(|| "ssh".into())
}

/// The ssh command for `host` with the user's `args`, running `script` there, through the
/// master connection at `control` if one is given.
pub fn command(
    args: &[String],
    host: &str,
    timeout: Duration,
    control: Option<&Path>,
    script: &str,
) -> Command {
    let mut c = Command::new(program());
    c.args(["-o", "BatchMode=yes"])
        .arg("-o")
        .arg(format!("ConnectTimeout={}", timeout.as_secs().max(1)))
        .args(control.map(reuse::session_options).into_iter().flatten())
        .args(args)
        .arg(host)
        .arg(remote_command(script));
    c
}

fn spawn(cmd: Command, host: &str) -> Result<AgentChild, TargetError> {
    AgentChild::spawn(cmd).map_err(|e| {
        TargetError::local(anyhow!(e).context(format!("cannot run `ssh` to reach `{host}`")))
            .with_hint("install the OpenSSH client, or name another program with `RDIST_SSH`")
    })
}

/// Opens a session with rdist on `host`, installing this binary there first if it is missing.
///
/// With `reuse`, a master connection is found or started first, and every ssh command goes
/// through it.
///
/// # Errors
/// When ssh fails (with its stderr), or the host needs a binary this build cannot provide.
pub fn open(
    args: &[String],
    host: &str,
    opts: PushOptions,
    timeout: Duration,
    reuse: Option<&SshReuse>,
) -> Result<Opened, TargetError> {
    let control = reuse::prepare(&program(), args, host, timeout, reuse)?;
    let control = control.as_deref();
    let first = open_session(
        spawn(
            command(args, host, timeout, control, &bootstrap_script()),
            host,
        )?,
        opts.clone(),
        timeout,
    );
    let uname = match &first {
        Err(TargetError { error, .. }) => match error.downcast_ref::<PushError>() {
            Some(PushError::Proto(ProtoError::NoMagic(text))) if text.contains(MARKER) => text
                .split(MARKER)
                .nth(1)
                .map(|s| s.split("\\n").next().unwrap_or(s).trim().to_owned())
                .unwrap_or_default(),
            _ => return first.map_err(|e| explain(e, host)),
        },
        Ok(_) => return first,
    };
    let ours = local_uname();
    if uname != ours {
        return Err(TargetError::local(anyhow!(
            "`{host}` has no rdist {VERSION}, and it is a `{uname}` host while this rdist is built for `{ours}`"
        ))
        .with_hint(format!(
            "install rdist {VERSION} on `{host}` (`cargo install rdist --version {VERSION}`) and put it on PATH"
        )));
    }
    upload(args, host, timeout, control)?;
    open_session(
        spawn(
            command(args, host, timeout, control, &bootstrap_script()),
            host,
        )?,
        opts,
        timeout,
    )
    .map_err(|e| explain(e, host))
}

/// Copies this executable to the host's rdist cache.
fn upload(
    args: &[String],
    host: &str,
    timeout: Duration,
    control: Option<&Path>,
) -> Result<(), TargetError> {
    let exe = std::env::current_exe()
        .and_then(std::fs::read)
        .map_err(|e| {
            TargetError::local(anyhow!(e).context("cannot read this rdist executable to upload it"))
        })?;
    let mut cmd = command(args, host, timeout, control, &upload_script());
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| {
        TargetError::local(anyhow!(e).context(format!("cannot run `ssh` to reach `{host}`")))
    })?;
    let mut stdin = child.stdin.take().expect("piped");
    let writer = std::thread::spawn(move || stdin.write_all(&exe));
    let out = child.wait_with_output().map_err(|e| {
        TargetError::local(anyhow!(e).context(format!("uploading rdist to `{host}` failed")))
    })?;
    let _ = writer.join();
    if !out.status.success() || !String::from_utf8_lossy(&out.stdout).contains("RDIST-UPLOADED") {
        return Err(TargetError {
            error: anyhow!(
                "uploading rdist {VERSION} to `{host}` failed ({})",
                out.status
            ),
            hint: Some(
                "check free space and write access in the remote user's cache directory".into(),
            ),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            remote: false,
        });
    }
    Ok(())
}

/// Turns "connection closed" from a dead ssh into what ssh said.
fn explain(mut e: TargetError, host: &str) -> TargetError {
    let closed = matches!(
        e.error.downcast_ref::<PushError>(),
        Some(PushError::Proto(
            ProtoError::Closed | ProtoError::Truncated | ProtoError::Io(_)
        ))
    );
    if closed {
        let last = sync_core::last_line(&e.stderr).unwrap_or("").to_owned();
        e.error = if last.is_empty() {
            anyhow!(
                "cannot reach `{host}` over ssh: the connection closed before the rdist handshake"
            )
        } else {
            anyhow!("cannot reach `{host}` over ssh: {last}")
        };
        if e.hint.is_none() {
            e.hint = Some(format!(
                "try `ssh {host} true` in a shell; rdist runs ssh with BatchMode=yes, so passwords cannot be typed"
            ));
        }
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args_of(c: &Command) -> Vec<String> {
        c.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn exe_hash_is_remembered_by_stamp_and_redone_when_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("exe");
        std::fs::write(&exe, b"one build").unwrap();
        let old = std::time::SystemTime::now() - Duration::from_secs(10);
        std::fs::File::options()
            .write(true)
            .open(&exe)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let cache = dir.path().join("cache");
        let want = blake3::hash(b"one build").to_hex()[..12].to_owned();
        // ctime is "now": not trusted yet, so computed but not recorded.
        assert_eq!(exe_hash(&exe, Some(&cache)).unwrap(), want);
        // A recorded stamp that matches is believed, a stale one is not.
        let meta = std::fs::metadata(&exe).unwrap();
        let s = sync_core::manifest::Stamp::of(&meta);
        let mut known = sync_core::hash::HashCache::load(cache.join("build-id"));
        // As if hashed 10 s from now, when this stamp is old enough to trust.
        known.record(s, [0xab; 32], sync_core::hash::now_ns() + 10_000_000_000);
        known.save().unwrap();
        assert_eq!(exe_hash(&exe, Some(&cache)).unwrap(), "abababababab");
        std::fs::write(&exe, b"another build").unwrap();
        let want = blake3::hash(b"another build").to_hex()[..12].to_owned();
        assert_eq!(exe_hash(&exe, Some(&cache)).unwrap(), want);
        assert_eq!(exe_hash(&exe, None).unwrap(), want);
    }

    #[test]
    fn scripts_are_single_quoted_posix_sh() {
        let cmd = remote_command(&bootstrap_script());
        assert!(cmd.starts_with("sh -c '"), "{cmd}");
        let words = shell_words::split(&cmd).unwrap();
        assert_eq!(words.len(), 3);
        assert_eq!(words[2], bootstrap_script());
        assert!(words[2].contains(&format!("rdist {VERSION}")));
    }

    #[test]
    fn command_puts_options_before_the_host() {
        let c = command(
            &["-p".into(), "2222".into()],
            "user@h",
            Duration::from_secs(7),
            None,
            "true",
        );
        let args = args_of(&c);
        assert_eq!(
            args,
            [
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=7",
                "-p",
                "2222",
                "user@h",
                "sh -c true"
            ]
        );
    }

    #[test]
    fn command_through_a_master_puts_its_options_before_the_users() {
        let c = command(
            &["-p".into(), "2222".into()],
            "h",
            Duration::from_secs(3),
            Some(Path::new("/c/ssh/0123456789abcdef")),
            "true",
        );
        let args = args_of(&c);
        assert_eq!(
            args[4..],
            [
                "-o",
                "ControlMaster=no",
                "-o",
                "ControlPath=/c/ssh/0123456789abcdef",
                "-p",
                "2222",
                "h",
                "sh -c true"
            ]
        );
    }
}
