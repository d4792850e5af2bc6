//! A pytest worker process: `python -m pytest -p rdist_worker ARGS` in a worker directory, with
//! xdist's environment variables. Its stdout carries JSON lines from the plugin (read by a thread
//! into the dispatcher's event channel); its stdin takes commands; a tail of its stderr is kept to
//! explain a crash.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::Sender;

use serde::Deserialize;

use crate::transport::StderrTail;

/// How to start one worker.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    /// The spec text it came from, for messages.
    pub spec: String,
    pub python: String,
    pub dir: PathBuf,
    pub env: Vec<(String, String)>,
    pub nice: Option<i32>,
    pub dont_write_bytecode: bool,
}

/// One phase's report from the plugin.
#[derive(Debug, Clone, Deserialize)]
pub struct TestReport {
    pub nodeid: String,
    pub when: String,
    pub outcome: String,
    pub duration: f64,
    #[serde(default)]
    pub longrepr: String,
    #[serde(default)]
    pub sections: Vec<(String, String)>,
    pub skip_reason: Option<String>,
    pub wasxfail: Option<String>,
}

/// What a worker's plugin says.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WorkerMsg {
    Collected {
        ids: Vec<String>,
        #[serde(default)]
        groups: Vec<Option<String>>,
        platform: String,
        python: String,
        implementation: String,
        executable: String,
    },
    CollectError {
        nodeid: String,
        longrepr: String,
    },
    Report(TestReport),
    Ran {
        index: usize,
        seconds: f64,
    },
    Done {
        reason: String,
    },
    Beat,
}

/// What the dispatcher hears from its workers (and the clock).
#[derive(Debug)]
pub enum Event {
    Msg(usize, WorkerMsg),
    /// A line that is not a plugin message (the worker is broken or not ours).
    Garbage(usize, String),
    /// The worker's stdout closed: it exited or is exiting.
    Closed(usize),
}

/// A running worker.
pub struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    pub stderr: StderrTail,
}

impl Worker {
    /// Starts worker number `id` (`gw{id}`) of `count`.
    ///
    /// # Errors
    /// When the interpreter cannot be started.
    pub fn spawn(
        id: usize,
        count: usize,
        spec: &WorkerSpec,
        run_id: &str,
        plugin_dir: &std::path::Path,
        pytest_args: &[String],
        events: Sender<Event>,
    ) -> std::io::Result<Worker> {
        let mut cmd = match spec.nice {
            Some(n) => {
                let mut c = Command::new("nice");
                c.arg("-n").arg(n.to_string()).arg(&spec.python);
                c
            }
            None => Command::new(&spec.python),
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
            .args(pytest_args)
            .current_dir(&spec.dir)
            .env("RDIST_WORKER", "1")
            .env("PYTHONPATH", pythonpath)
            .env("PYTEST_XDIST_WORKER", format!("gw{id}"))
            .env("PYTEST_XDIST_WORKER_COUNT", count.to_string())
            .env("PYTEST_XDIST_TESTRUNUID", run_id)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if spec.dont_write_bytecode {
            cmd.env("PYTHONDONTWRITEBYTECODE", "1");
        }
        let mut child = cmd.spawn()?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped");
        let (stderr, _) = StderrTail::follow(child.stderr.take().expect("piped"));
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let ev = match serde_json::from_str::<WorkerMsg>(&line) {
                    Ok(m) => Event::Msg(id, m),
                    Err(_) => Event::Garbage(id, line),
                };
                if events.send(ev).is_err() {
                    return;
                }
            }
            let _ = events.send(Event::Closed(id));
        });
        Ok(Worker {
            child,
            stdin,
            stderr,
        })
    }

    /// Asks the worker to run these test indices.
    pub fn run(&mut self, indices: &[usize]) {
        self.send(&serde_json::json!({ "run": indices }));
    }

    /// Tells the worker that nothing more is coming.
    pub fn shutdown(&mut self) {
        self.send(&serde_json::json!({ "shutdown": true }));
    }

    fn send(&mut self, msg: &serde_json::Value) {
        // A worker that died is noticed through its closed stdout; a failed write adds nothing.
        if let Some(stdin) = &mut self.stdin {
            let _ = writeln!(stdin, "{msg}").and_then(|()| stdin.flush());
        }
    }

    /// Kills the worker.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
    }

    /// Waits for the worker to exit; returns its exit code (`None`: killed by a signal).
    pub fn wait(&mut self) -> Option<i32> {
        drop(self.stdin.take());
        self.child.wait().ok().and_then(|s| s.code())
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Writes the plugin into rdist's cache (once per plugin version) and returns its directory.
///
/// # Errors
/// When the cache directory cannot be written.
pub fn install_plugin(cache: &std::path::Path) -> std::io::Result<PathBuf> {
    const PLUGIN: &str = include_str!("rdist_worker.py");
    let hash = blake3::hash(PLUGIN.as_bytes()).to_hex();
    let dir = cache.join("plugin").join(&hash[..16]);
    let file = dir.join("rdist_worker.py");
    if std::fs::read(&file).ok().as_deref() != Some(PLUGIN.as_bytes()) {
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join(format!(".rdist_worker.{}.tmp", std::process::id()));
        std::fs::write(&tmp, PLUGIN)?;
        std::fs::rename(&tmp, &file)?;
    }
    Ok(dir)
}
