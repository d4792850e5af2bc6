//! A local agent: this same binary started as `rdist agent --stdio`. Used for `popen` workers,
//! so a local sync goes through exactly the protocol and process boundary a remote one does.

use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use super::StderrTail;

/// A running agent child (its stdin and stdout are handed out separately by `spawn`).
pub struct AgentChild {
    child: Child,
    stderr: StderrTail,
    tail_thread: Option<std::thread::JoinHandle<()>>,
}

impl AgentChild {
    /// Starts `rdist agent --stdio` from this executable; returns it with the pipes to write to
    /// and read from it.
    ///
    /// # Errors
    /// When the executable cannot be found or started.
    pub fn spawn() -> std::io::Result<(AgentChild, ChildStdin, ChildStdout)> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .args(["agent", "--stdio"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let (stderr, h) = StderrTail::follow(child.stderr.take().expect("piped"));
        let agent = AgentChild {
            child,
            stderr,
            tail_thread: Some(h),
        };
        Ok((agent, stdin, stdout))
    }

    /// Waits for the child to exit and its stderr to be drained; returns the stderr tail and
    /// whether the child exited successfully.
    pub fn finish(mut self) -> (bool, String) {
        let ok = self.child.wait().map(|s| s.success()).unwrap_or(false);
        if let Some(h) = self.tail_thread.take() {
            let _ = h.join();
        }
        (ok, self.stderr.text())
    }
}
