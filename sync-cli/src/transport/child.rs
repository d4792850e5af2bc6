//! Agents behind a child process's stdin/stdout: this binary for `popen` workers, `ssh` for
//! remote ones. A bounded tail of the child's stderr is kept to explain a failed start.

use std::collections::VecDeque;
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::anyhow;
use sync_core::push::{Connection, PushOptions};

use super::{Opened, Reader, TargetError, Writer, with_deadline};

/// The size asked for the pipes to and from an agent (one data frame).
pub const PIPE_SIZE: usize = 1 << 20;

/// How much of an agent's stderr is kept.
const TAIL_BYTES: usize = 8 << 10;

/// The last bytes a child wrote to stderr.
#[derive(Clone, Default)]
pub struct StderrTail(Arc<Mutex<VecDeque<u8>>>);

impl StderrTail {
    /// Starts a thread that keeps the tail of `r`.
    pub fn follow(mut r: impl Read + Send + 'static) -> (StderrTail, std::thread::JoinHandle<()>) {
        let tail = StderrTail::default();
        let t = tail.clone();
        let h = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut q = t.0.lock().unwrap();
                q.extend(&buf[..n]);
                let excess = q.len().saturating_sub(TAIL_BYTES);
                q.drain(..excess);
            }
        });
        (tail, h)
    }

    /// The tail as text, trimmed; empty when the child said nothing.
    pub fn text(&self) -> String {
        let q = self.0.lock().unwrap();
        let (a, b) = q.as_slices();
        let mut v = a.to_vec();
        v.extend_from_slice(b);
        String::from_utf8_lossy(&v).trim().to_owned()
    }
}

/// `rdist agent --stdio` from this executable.
pub fn local_agent_command() -> Command {
    let exe = std::env::current_exe().unwrap_or_else(|_| "rdist".into());
    let mut c = Command::new(exe);
    c.args(["agent", "--stdio"]);
    c
}

/// A running agent process (its pipes are handed out separately).
pub struct AgentChild {
    child: Arc<Mutex<Child>>,
    stderr: StderrTail,
    tail_thread: Option<std::thread::JoinHandle<()>>,
    stdin: Option<std::process::ChildStdin>,
    stdout: Option<std::process::ChildStdout>,
}

impl AgentChild {
    /// Starts `cmd` with piped stdio.
    ///
    /// # Errors
    /// When the program cannot be started.
    pub fn spawn(mut cmd: Command) -> std::io::Result<AgentChild> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        // Linux pipes hold 64 KiB: a sync of big files would cross between the processes every
        // 64 KiB. A pipe that holds a whole data frame (best effort: the system may cap it)
        // syncs a 1 GiB file in about 0.6x the time.
        if let (Some(i), Some(o)) = (&stdin, &stdout) {
            let _ = rustix::pipe::fcntl_setpipe_size(i, PIPE_SIZE);
            let _ = rustix::pipe::fcntl_setpipe_size(o, PIPE_SIZE);
        }
        let (stderr, h) = StderrTail::follow(child.stderr.take().expect("piped"));
        Ok(AgentChild {
            child: Arc::new(Mutex::new(child)),
            stderr,
            tail_thread: Some(h),
            stdin,
            stdout,
        })
    }

    /// The child's stdout and stdin, once.
    pub fn pipes(&mut self) -> (Reader, Writer) {
        (
            Box::new(self.stdout.take().expect("pipes taken once")),
            Box::new(self.stdin.take().expect("pipes taken once")),
        )
    }

    /// Kills the child (it is reaped by `finish`).
    pub fn killer(&self) -> impl FnOnce() + Send + 'static {
        let child = self.child.clone();
        move || {
            let _ = child.lock().unwrap().kill();
        }
    }

    /// The stderr tail so far.
    pub fn stderr_now(&self) -> String {
        self.stderr.text()
    }

    /// Waits for the child to exit and its stderr to drain; returns whether it succeeded and
    /// its stderr tail.
    pub fn finish(mut self) -> (bool, String) {
        drop(self.stdin.take());
        drop(self.stdout.take());
        let ok = self
            .child
            .lock()
            .unwrap()
            .wait()
            .map(|s| s.success())
            .unwrap_or(false);
        if let Some(h) = self.tail_thread.take() {
            let _ = h.join();
        }
        (ok, self.stderr.text())
    }
}

/// Opens a session over a child's pipes; kills the child if the handshake does not complete
/// within `timeout`.
///
/// # Errors
/// When the handshake fails or times out; the error carries the child's stderr tail.
pub fn open_session(
    mut child: AgentChild,
    opts: PushOptions,
    timeout: Duration,
) -> Result<Opened, TargetError> {
    let (r, w) = child.pipes();
    let (res, timed_out) = with_deadline(timeout, child.killer(), || {
        Connection::open(r, w, &opts.version, opts.token.as_ref())
    });
    match res {
        Ok(conn) if !timed_out => Ok(Opened {
            conn,
            child: Some(child),
        }),
        Ok(_) | Err(_) if timed_out => {
            let (_, stderr) = child.finish();
            Err(TargetError {
                error: anyhow!("no answer within {:.0} s", timeout.as_secs_f64()),
                hint: Some(
                    "is the host up and reachable? raise `--connect-timeout` for slow hosts".into(),
                ),
                stderr,
                remote: false,
            })
        }
        Ok(_) => unreachable!("handled above"),
        Err(e) => {
            let (_, stderr) = child.finish();
            Err(TargetError::from_push(e, stderr))
        }
    }
}
