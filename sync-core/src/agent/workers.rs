//! The agent's test-worker mode: after the syncs, the controller starts pytest workers over the
//! same connection. The agent runs each as `python -m pytest -p rdist_worker ...` in a synced
//! directory, relays its stdout lines and its exit (with the tail of its stderr) to the
//! controller, and feeds it the controller's lines. Workers are killed when the connection ends.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};

use super::{AgentError, AgentOptions};
use crate::proto::{Message, ProtoError, WorkerStart, read_frame, write_frame};

/// How much of a worker's stderr is kept for its exit report.
const TAIL: usize = 8 << 10;

/// How long a reader of a worker's messages pauses after catching up. A worker writes one line
/// per test as soon as it has run (so a crash loses nothing), and a write that finds the reader
/// waiting wakes it: with quick tests that is a context switch per test on both sides. A reader
/// that pauses a little lets lines gather in the pipe and takes them in one read.
pub const COALESCE: std::time::Duration = std::time::Duration::from_millis(3);

/// Calls `each` with every line `r` yields (without its newline; invalid UTF-8 replaced) until
/// the end of the input, an error, or `each` returning `false`. Whenever the buffered lines are
/// used up, `caught_up` runs (`false` stops), then the reader pauses for [`COALESCE`] before the
/// next read.
///
/// # Errors
/// A read error.
pub fn coalesced_lines_then<R: Read>(
    r: &mut BufReader<R>,
    mut each: impl FnMut(&str) -> bool,
    mut caught_up: impl FnMut() -> bool,
) -> std::io::Result<()> {
    let mut line = Vec::new();
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        if !each(&String::from_utf8_lossy(&line)) {
            return Ok(());
        }
        if r.buffer().is_empty() {
            if !caught_up() {
                return Ok(());
            }
            std::thread::sleep(COALESCE);
        }
    }
}

/// [`coalesced_lines_then`] with nothing to do on catching up.
///
/// # Errors
/// A read error.
pub fn coalesced_lines<R: Read>(
    r: &mut BufReader<R>,
    each: impl FnMut(&str) -> bool,
) -> std::io::Result<()> {
    coalesced_lines_then(r, each, || true)
}

struct Running {
    child: Arc<Mutex<Child>>,
    stdin: Option<ChildStdin>,
}

/// Writes the plugin `source` into `cache` once per plugin version; returns its directory.
///
/// # Errors
/// When the cache cannot be written.
pub fn install_plugin(cache: &Path, source: &str) -> std::io::Result<PathBuf> {
    let hash = blake3::hash(source.as_bytes()).to_hex();
    let dir = cache.join("plugin").join(&hash[..16]);
    let file = dir.join("rdist_worker.py");
    if std::fs::read(&file).ok().as_deref() != Some(source.as_bytes()) {
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join(format!(".rdist_worker.{}.tmp", std::process::id()));
        std::fs::write(&tmp, source)?;
        std::fs::rename(&tmp, &file)?;
    }
    Ok(dir)
}

/// Serves workers until the controller closes the connection, starting with `first`.
///
/// # Errors
/// A protocol error, or a request this agent cannot serve.
pub(super) fn serve_workers<R: BufRead, W: Write + Send>(
    r: &mut R,
    w: &mut W,
    first: WorkerStart,
    opts: &AgentOptions,
) -> Result<(), AgentError> {
    let (Some(source), Some(cache)) = (opts.worker_plugin, opts.cache_dir.as_ref()) else {
        return Err(AgentError::Invalid(
            "this agent cannot run test workers".to_owned(),
        ));
    };
    let plugin_dir = install_plugin(cache, source).map_err(|e| AgentError::Dest {
        op: "install the pytest plugin into",
        path: cache.clone(),
        source: e,
    })?;
    let out = Mutex::new(w);
    let mut running: HashMap<u32, Running> = HashMap::new();
    std::thread::scope(|scope| -> Result<(), AgentError> {
        let result = serve_loop(scope, r, &out, &mut running, first, &plugin_dir, opts);
        // No worker outlives the connection; this is done before the scope waits for the relay
        // threads, which end once their worker has. Closed stdin tells a worker to stop after
        // its running test and end its session (hooks, coverage files). When the stream ended
        // at a frame boundary (the controller hung up, or its process or ssh went away) the
        // workers get `EXIT_GRACE` to do so; after a protocol or read error, or for a worker
        // still running then (a test that does not end), they are killed.
        for rw in running.values_mut() {
            rw.stdin = None;
        }
        if result.is_ok() {
            let deadline = std::time::Instant::now() + EXIT_GRACE;
            let running_still =
                |rw: &Running| matches!(rw.child.lock().unwrap().try_wait(), Ok(None));
            while std::time::Instant::now() < deadline && running.values().any(running_still) {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        for rw in running.values_mut() {
            let _ = rw.child.lock().unwrap().kill();
        }
        result
    })
}

/// How long workers get to end by themselves once the controller has hung up cleanly.
const EXIT_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// Starts and feeds workers until the connection ends.
fn serve_loop<'scope, R: BufRead, W: Write + Send>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    r: &mut R,
    out: &'scope Mutex<&mut W>,
    running: &mut HashMap<u32, Running>,
    first: WorkerStart,
    plugin_dir: &Path,
    opts: &AgentOptions,
) -> Result<(), AgentError> {
    let mut next = Some(first);
    loop {
        if let Some(ws) = next.take() {
            let id = ws.id;
            match start(&ws, plugin_dir, opts) {
                Ok((child, stdin, stdout, stderr)) => {
                    let child = Arc::new(Mutex::new(child));
                    let tail = Arc::new(Mutex::new(Vec::<u8>::new()));
                    let t = tail.clone();
                    // Not in the scope: a process the worker left behind may hold its stderr
                    // open for long after, and the agent keeps only a tail of it.
                    std::thread::spawn(move || keep_tail(stderr, &t));
                    let c = child.clone();
                    scope.spawn(move || relay(id, stdout, &c, &tail, out));
                    running.insert(
                        id,
                        Running {
                            child,
                            stdin: Some(stdin),
                        },
                    );
                }
                Err(e) => {
                    let msg = Message::WorkerExit {
                        id,
                        code: Some(127),
                        stderr: format!("cannot start `{}`: {e}", ws.python),
                    };
                    let mut o = out.lock().unwrap();
                    write_frame(&mut **o, &msg)?;
                    o.flush().map_err(ProtoError::from)?;
                }
            }
        }
        match read_frame(r) {
            Ok((Message::StartWorker(ws), _)) => next = Some(ws),
            Ok((Message::WorkerInput { id, line }, _)) => {
                if let Some(Running {
                    stdin: Some(stdin), ..
                }) = running.get_mut(&id)
                {
                    // A worker that died is reported by its relay; a failed write adds nothing.
                    let _ = writeln!(stdin, "{line}").and_then(|()| stdin.flush());
                }
            }
            Ok((Message::KillWorker { id }, _)) => {
                if let Some(rw) = running.get_mut(&id) {
                    let _ = rw.child.lock().unwrap().kill();
                    rw.stdin = None;
                }
            }
            Ok((Message::Error(e), _)) => return Err(ProtoError::Remote(e).into()),
            Ok((other, _)) => {
                return Err(ProtoError::Unexpected {
                    got: other.name(),
                    expected: "worker messages",
                }
                .into());
            }
            Err(ProtoError::Closed) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}

/// `[nice -n N] PYTHON -m pytest -p rdist_worker ARGS` in `dir`, with the plugin on `PYTHONPATH`,
/// `RDIST_WORKER=1`, `env`, and piped stdio.
pub fn worker_command(
    python: &str,
    nice: Option<i32>,
    dir: &Path,
    env: &[(String, String)],
    plugin_dir: &Path,
    args: &[String],
) -> Command {
    let mut cmd = match nice {
        Some(n) => {
            let mut c = Command::new("nice");
            c.arg("-n").arg(n.to_string()).arg(python);
            c
        }
        None => Command::new(python),
    };
    let pythonpath = match std::env::var_os("PYTHONPATH") {
        Some(old) if !old.is_empty() => {
            let mut p = plugin_dir.as_os_str().to_owned();
            p.push(":");
            p.push(old);
            p
        }
        _ => plugin_dir.as_os_str().to_owned(),
    };
    cmd.args(["-m", "pytest", "-p", "rdist_worker"])
        .args(args)
        .current_dir(dir)
        .env("RDIST_WORKER", "1")
        .env("PYTHONPATH", pythonpath)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

type Started = (
    Child,
    ChildStdin,
    std::process::ChildStdout,
    std::process::ChildStderr,
);

fn start(ws: &WorkerStart, plugin_dir: &Path, opts: &AgentOptions) -> Result<Started, AgentError> {
    let begin = crate::proto::Begin {
        dest: ws.dest.clone(),
        ignore: Vec::new(),
        dry_run: false,
        fsync: false,
        adopt: false,
        lock_wait_ms: 0,
        base: ws.base,
        delta_min: 0,
        leaves: false,
        local_sources: false,
    };
    let dir = super::resolve_dest(&begin, opts)?;
    let mut cmd = worker_command(&ws.python, ws.nice, &dir, &ws.env, plugin_dir, &ws.args);
    let mut child = cmd.spawn().map_err(|e| AgentError::Dest {
        op: "start the worker in",
        path: dir,
        source: e,
    })?;
    let stdin = child.stdin.take().expect("piped");
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    Ok((child, stdin, stdout, stderr))
}

/// Waits for `child` to exit and returns its exit code (`None`: killed by a signal). The lock
/// is only held to look, never while waiting, so the agent can still kill the child meanwhile
/// (a relay whose connection broke stops reading and ends up here while its worker runs on).
fn reap(child: &Mutex<Child>) -> Option<i32> {
    let mut pause = std::time::Duration::from_millis(1);
    loop {
        match child.lock().unwrap().try_wait() {
            Ok(Some(status)) => return status.code(),
            Ok(None) => {}
            Err(_) => return None,
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(std::time::Duration::from_millis(20));
    }
}

fn keep_tail(mut r: impl Read, tail: &Mutex<Vec<u8>>) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = r.read(&mut buf) {
        if n == 0 {
            break;
        }
        let mut t = tail.lock().unwrap();
        t.extend_from_slice(&buf[..n]);
        let excess = t.len().saturating_sub(TAIL);
        t.drain(..excess);
    }
}

fn relay<W: Write>(
    id: u32,
    stdout: impl Read,
    child: &Mutex<Child>,
    tail: &Mutex<Vec<u8>>,
    out: &Mutex<&mut W>,
) {
    // Frames go out as lines come in; the connection is flushed once the lines read are used up.
    let mut r = BufReader::with_capacity(64 << 10, stdout);
    let _ = coalesced_lines_then(
        &mut r,
        |line| {
            let msg = Message::WorkerOutput {
                id,
                line: line.to_owned(),
            };
            write_frame(&mut **out.lock().unwrap(), &msg).is_ok()
        },
        || out.lock().unwrap().flush().is_ok(),
    );
    let code = reap(child);
    // Give the stderr reader a moment to take the last words.
    std::thread::sleep(std::time::Duration::from_millis(50));
    let stderr = String::from_utf8_lossy(&tail.lock().unwrap())
        .trim()
        .to_owned();
    let mut o = out.lock().unwrap();
    let _ = write_frame(&mut **o, &Message::WorkerExit { id, code, stderr });
    let _ = o.flush();
}
