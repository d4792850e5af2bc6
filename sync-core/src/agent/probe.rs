//! The agent's side of `rdist check`: facts about this host (system, clock), a destination
//! (free space, writable, case sensitivity) and a Python interpreter (through a script the
//! controller sends, so both sides run the same one).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use super::{AgentOptions, resolve_dest};
use crate::hash::now_ns;
use crate::proto::{Begin, ProbeReport, ProbeRequest};
use crate::stage::STATE_DIR;

/// How long the Python script may take.
const SCRIPT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Answers a probe.
pub fn probe(req: &ProbeRequest, opts: &AgentOptions) -> ProbeReport {
    let mut rep = ProbeReport {
        os: std::env::consts::OS.to_owned(),
        arch: std::env::consts::ARCH.to_owned(),
        hostname: hostname(),
        ..ProbeReport::default()
    };
    if let Some(dest) = &req.dest {
        let begin = Begin {
            dest: dest.clone(),
            ignore: Vec::new(),
            dry_run: true,
            fsync: false,
            adopt: false,
            lock_wait_ms: 0,
            base: req.base,
            delta_min: 0,
            leaves: false,
            local_sources: false,
        };
        match resolve_dest(&begin, opts) {
            Ok(dir) => {
                rep.dest = Some(dir.display().to_string());
                examine_dest(&dir, &mut rep);
            }
            Err(e) => rep.not_writable = Some(super::error_chain(&e)),
        }
    }
    match run_script(&req.python, &req.script) {
        Ok(out) => rep.python = Some(out),
        Err(e) => rep.python_error = Some(e),
    }
    rep.time_ns = now_ns();
    rep
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_owned())
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default()
}

/// Free space, writability and case sensitivity of `dir` (created if missing, with parents).
fn examine_dest(dir: &Path, rep: &mut ProbeReport) {
    if let Err(e) = std::fs::create_dir_all(dir.join(STATE_DIR)) {
        rep.not_writable = Some(format!("cannot create `{}`: {e}", dir.display()));
        // Free space of the nearest existing ancestor still tells something.
        let existing = dir.ancestors().find(|a| a.exists()).unwrap_or(dir);
        rep.disk_free = fs4::available_space(existing).ok();
        rep.disk_total = fs4::total_space(existing).ok();
        return;
    }
    rep.disk_free = fs4::available_space(dir).ok();
    rep.disk_total = fs4::total_space(dir).ok();
    let probe = dir
        .join(STATE_DIR)
        .join(format!("case-probe-{}", std::process::id()));
    match std::fs::write(&probe, b"x") {
        Ok(()) => {
            let upper = dir
                .join(STATE_DIR)
                .join(format!("CASE-PROBE-{}", std::process::id()));
            rep.case_sensitive = Some(!upper.exists());
            let _ = std::fs::remove_file(&probe);
        }
        Err(e) => rep.not_writable = Some(format!("cannot write in `{}`: {e}", dir.display())),
    }
}

/// Runs `script` with `python`, returning its stdout (expected to be JSON).
fn run_script(python: &str, script: &str) -> Result<String, String> {
    let mut child = Command::new(python)
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run `{python}`: {e}"))?;
    let mut stdin = child.stdin.take().expect("piped");
    let script = script.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(script.as_bytes()));
    let (tx, rx) = std::sync::mpsc::channel();
    let pid = child.id();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(SCRIPT_TIMEOUT) {
        Ok(out) => out.map_err(|e| format!("`{python}` failed: {e}"))?,
        Err(_) => {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
            return Err(format!(
                "`{python}` did not answer within {} s",
                SCRIPT_TIMEOUT.as_secs()
            ));
        }
    };
    let _ = writer.join();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = crate::last_line(&err).unwrap_or("");
        return Err(format!("`{python}` failed ({}): {last}", out.status));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
