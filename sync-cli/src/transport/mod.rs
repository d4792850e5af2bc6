//! How the controller reaches an agent and opens a sync session with it: a local child process
//! (`popen`), the system OpenSSH client (`ssh`, with the agent bootstrapped on the host when it
//! is missing), or TCP to `rdist serve` (`socket`). Every transport ends in the same protocol
//! session; a watchdog bounds the time to a working handshake.

pub mod child;
pub mod ssh;
pub mod tcp;

use std::io::{Read, Write};
use std::time::Duration;

use anyhow::anyhow;
use sync_core::push::{Connection, PushError, PushOptions};

use crate::settings::{SyncSettings, Target, Transport};
pub use child::{AgentChild, PIPE_SIZE, StderrTail};

/// The byte streams of a connection.
pub type Reader = Box<dyn Read + Send>;
pub type Writer = Box<dyn Write + Send>;

/// A connection ready for syncs, and the child process behind it, if any.
pub struct Opened {
    pub conn: Connection<Reader, Writer>,
    pub child: Option<AgentChild>,
}

/// Why a target could not be reached or synced, with what its agent or ssh said on stderr.
#[derive(Debug)]
pub struct TargetError {
    pub error: anyhow::Error,
    pub hint: Option<String>,
    pub stderr: String,
    /// The agent reported the error itself (so its stderr only repeats it).
    pub remote: bool,
}

impl TargetError {
    pub fn local(error: anyhow::Error) -> TargetError {
        TargetError {
            error,
            hint: None,
            stderr: String::new(),
            remote: false,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> TargetError {
        self.hint = Some(hint.into());
        self
    }

    /// From a failed session, keeping the agent's hint and the stderr tail.
    pub fn from_push(e: PushError, stderr: String) -> TargetError {
        let hint = match &e {
            PushError::Remote { hint, .. } => hint.clone(),
            PushError::Auth(_) => Some(
                "give the token `rdist serve` uses, with `RDIST_TOKEN` or `--token-file`"
                    .to_owned(),
            ),
            _ => None,
        };
        TargetError {
            remote: matches!(e, PushError::Remote { .. }),
            error: anyhow!(e),
            hint,
            stderr,
        }
    }
}

/// Explains a connection that broke mid-sync: which host, and what to do.
pub fn lost(t: &Target, mut e: TargetError) -> TargetError {
    use sync_core::proto::ProtoError;
    let broken = matches!(
        e.error.downcast_ref::<PushError>(),
        Some(PushError::Proto(
            ProtoError::Closed | ProtoError::Truncated | ProtoError::Io(_)
        ))
    );
    if !broken {
        return e;
    }
    let (what, hint) = match &t.transport {
        Transport::Local => (
            "the local agent stopped",
            "run the sync again; files are old or new, never half-written",
        ),
        Transport::Ssh { .. } => (
            "the ssh connection was lost",
            "run the sync again once the host is reachable; files are old or new, never half-written",
        ),
        Transport::Socket { .. } => (
            "the connection to `rdist serve` was lost",
            "run the sync again once the server is back; files are old or new, never half-written",
        ),
    };
    let last = sync_core::last_line(&e.stderr).map(str::to_owned);
    e.error = match last {
        Some(l) if !e.remote => anyhow!("{what} ({}): {l}", e.error),
        _ => anyhow!("{what} ({})", e.error),
    };
    if e.hint.is_none() {
        e.hint = Some(hint.to_owned());
    }
    e
}

/// Connects to the agent of `t`'s host within the connect timeout (`opts` supplies the version
/// and token).
///
/// # Errors
/// When the host cannot be reached, refuses us, or has no usable rdist.
pub fn open(t: &Target, s: &SyncSettings, opts: PushOptions) -> Result<Opened, TargetError> {
    match &t.transport {
        Transport::Local => {
            let child = AgentChild::spawn(child::local_agent_command()).map_err(|e| {
                TargetError::local(
                    anyhow!(e).context("cannot start the local agent (`rdist agent --stdio`)"),
                )
            })?;
            child::open_session(child, opts, s.connect_timeout)
        }
        Transport::Ssh { args, host } => {
            ssh::open(args, host, opts, s.connect_timeout, s.ssh_reuse.as_ref())
        }
        Transport::Socket { host, port } => tcp::open(host, *port, opts, s.connect_timeout),
    }
}

/// Runs `f` unless it takes longer than `timeout`, in which case `on_timeout` is called (from
/// another thread) to unblock it.
pub fn with_deadline<T>(
    timeout: Duration,
    on_timeout: impl FnOnce() + Send,
    f: impl FnOnce() -> T,
) -> (T, bool) {
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|scope| {
        let watchdog = scope.spawn(move || {
            if done_rx.recv_timeout(timeout) == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
                on_timeout();
                true
            } else {
                false
            }
        });
        let out = f();
        let _ = done_tx.send(());
        let fired = watchdog.join().unwrap_or(false);
        (out, fired)
    })
}
