//! A pytest worker process: `python -m pytest -p rdist_worker ARGS` in a worker directory, with
//! xdist's environment variables. Its stdout carries JSON lines from the plugin (read by a thread
//! into the dispatcher's event channel); its stdin takes commands; a tail of its stderr is kept to
//! explain a crash.

use std::collections::HashMap;
use std::io::{BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use sync_core::proto::{DestBase, Message, WorkerStart, read_frame, write_frame};

use serde::Deserialize;

use crate::transport::StderrTail;

/// How to start one worker.
#[derive(Clone)]
pub struct WorkerSpec {
    /// The spec text it came from, for messages.
    pub spec: String,
    pub python: String,
    pub place: Place,
    pub env: Vec<(String, String)>,
    pub nice: Option<i32>,
    pub dont_write_bytecode: bool,
}

/// Where a worker runs.
#[derive(Clone)]
pub enum Place {
    /// A local directory (the project itself, or a synced copy).
    Local(PathBuf),
    /// A synced directory on a host whose agent connection carries the worker.
    Remote {
        host: Arc<RemoteHost>,
        dest: String,
        base: DestBase,
    },
}

/// One phase's report from the plugin. Fields at their default value are left out by the
/// plugin; an empty `nodeid` is the test's own (the index's).
#[derive(Debug, Clone, Deserialize)]
pub struct TestReport {
    #[serde(default)]
    pub nodeid: String,
    pub when: String,
    pub outcome: String,
    pub duration: f64,
    #[serde(default)]
    pub longrepr: String,
    #[serde(default)]
    pub sections: Vec<(String, String)>,
    #[serde(default)]
    pub skip_reason: Option<String>,
    #[serde(default)]
    pub wasxfail: Option<String>,
    /// The first line of the exception, for the short summary.
    #[serde(default)]
    pub crash_message: Option<String>,
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
        /// pytest's rootdir on the worker.
        #[serde(default)]
        rootdir: String,
        /// pytest's cache directory, relative to the rootdir (none: no cache plugin).
        #[serde(default)]
        cache_dir: Option<String>,
    },
    CollectError {
        nodeid: String,
        longrepr: String,
    },
    /// One phase (plugins of earlier builds; now folded into `Ran`).
    Report(TestReport),
    /// A test has run: the phases that carry something (the call, and any that did not pass).
    Ran {
        index: usize,
        seconds: f64,
        #[serde(default)]
        reports: Vec<TestReport>,
    },
    Done {
        reason: String,
    },
    Beat,
    /// A warning pytest recorded (`when`: `config`, `collect` or `runtest`), formatted as
    /// `warnings.formatwarning` does.
    Warning {
        #[serde(default)]
        when: String,
        #[serde(default)]
        nodeid: String,
        text: String,
    },
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

/// A running worker, here or on a host.
pub enum Worker {
    Local(LocalWorker),
    Remote { host: Arc<RemoteHost>, id: u32 },
}

/// xdist's environment variables (and the spec's own) for worker `id` of `count`.
fn worker_env(id: usize, count: usize, spec: &WorkerSpec, run_id: &str) -> Vec<(String, String)> {
    let mut env = vec![
        ("PYTEST_XDIST_WORKER".to_owned(), format!("gw{id}")),
        ("PYTEST_XDIST_WORKER_COUNT".to_owned(), count.to_string()),
        ("PYTEST_XDIST_TESTRUNUID".to_owned(), run_id.to_owned()),
    ];
    if spec.dont_write_bytecode {
        env.push(("PYTHONDONTWRITEBYTECODE".to_owned(), "1".to_owned()));
    }
    env.extend(spec.env.iter().cloned());
    env
}

impl Worker {
    /// Starts worker number `id` (`gw{id}`) of `count`.
    ///
    /// # Errors
    /// When the interpreter cannot be started here, or the host's connection is gone.
    pub fn spawn(
        id: usize,
        count: usize,
        spec: &WorkerSpec,
        run_id: &str,
        plugin_dir: &std::path::Path,
        pytest_args: &[String],
        events: Sender<Event>,
    ) -> std::io::Result<Worker> {
        let env = worker_env(id, count, spec, run_id);
        match &spec.place {
            Place::Local(dir) => {
                LocalWorker::spawn(id, spec, dir, &env, plugin_dir, pytest_args, events)
                    .map(Worker::Local)
            }
            Place::Remote { host, dest, base } => {
                host.attach(events);
                host.start(WorkerStart {
                    id: id as u32,
                    dest: dest.clone(),
                    base: *base,
                    python: spec.python.clone(),
                    args: pytest_args.to_vec(),
                    env,
                    nice: spec.nice,
                })?;
                Ok(Worker::Remote {
                    host: host.clone(),
                    id: id as u32,
                })
            }
        }
    }

    /// Asks the worker to run these test indices.
    pub fn run(&mut self, indices: &[usize]) {
        self.line(&serde_json::json!({ "run": indices }).to_string());
    }

    /// Tells the worker that nothing more is coming.
    pub fn shutdown(&mut self) {
        self.line(&serde_json::json!({ "shutdown": true }).to_string());
    }

    /// Tells the worker to drop its queued tests and exit (`shutdown` too, for plugins of
    /// earlier builds, which then run their few queued tests first).
    pub fn stop(&mut self) {
        self.line(r#"{"stop":true,"shutdown":true}"#);
    }

    fn line(&mut self, line: &str) {
        match self {
            Worker::Local(w) => w.send(line),
            Worker::Remote { host, id } => {
                // A lost connection is reported through the worker's `Closed` event.
                let _ = host.send(&Message::WorkerInput {
                    id: *id,
                    line: line.to_owned(),
                });
            }
        }
    }

    /// Kills the worker.
    pub fn kill(&mut self) {
        match self {
            Worker::Local(w) => w.kill(),
            Worker::Remote { host, id } => {
                let _ = host.send(&Message::KillWorker { id: *id });
            }
        }
    }

    /// Waits for the worker to exit; returns its exit code (`None`: killed by a signal). A
    /// remote worker is waited for until its host reports its exit or the connection ends (at
    /// most [`EXIT_WAIT`]): hanging up earlier would cut its session's end short.
    pub fn wait(&mut self) -> Option<i32> {
        self.wait_until(std::time::Instant::now() + EXIT_WAIT)
    }

    /// [`Worker::wait`], giving up on a remote worker at `deadline`: one deadline for all the
    /// workers a run waits for, so that hung session ends cost [`EXIT_WAIT`] once, not once
    /// per worker.
    pub fn wait_until(&mut self, deadline: std::time::Instant) -> Option<i32> {
        match self {
            Worker::Local(w) => w.wait(),
            Worker::Remote { host, id } => host.wait_exit(*id, deadline).and_then(|(code, _)| code),
        }
    }

    /// The tail of the worker's stderr.
    pub fn stderr_text(&self) -> String {
        match self {
            Worker::Local(w) => w.stderr.text(),
            Worker::Remote { host, id } => host.exit_of(*id).map(|(_, s)| s).unwrap_or_default(),
        }
    }
}

/// Which of a host's workers are running, how the finished ones ended, and why the connection
/// ended (once it has).
#[derive(Default)]
struct Book {
    running: std::collections::BTreeSet<u32>,
    exits: HashMap<u32, (Option<i32>, String)>,
    lost: Option<String>,
}

/// The agent connection of one host, carrying its workers: commands go out through `send`, and
/// a reader thread turns the agent's worker messages into dispatcher events.
///
/// Every worker `start` accepts gets exactly one `Closed` event: from its `WorkerExit`, or when
/// the connection ends. Starting and losing the connection take the same lock, so a worker
/// started (a restart, say) as the connection goes is either refused or closed with it, never
/// left waiting for a reader that has gone.
pub struct RemoteHost {
    pub label: String,
    writer: Mutex<Option<BufWriter<crate::transport::Writer>>>,
    reader: Mutex<Option<std::io::BufReader<crate::transport::Reader>>>,
    shared: Arc<Shared>,
    child: Mutex<Option<crate::transport::AgentChild>>,
}

/// The [`Book`], and a signal for each exit recorded in it.
#[derive(Default)]
struct Shared {
    book: Mutex<Book>,
    exited: std::sync::Condvar,
}

/// How long the end of a run waits for its remote workers to finish their sessions and exit.
pub const EXIT_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

impl RemoteHost {
    /// Takes over a connection (and the ssh process behind it) after the syncs.
    pub fn new(opened: crate::transport::Opened, label: String) -> Arc<RemoteHost> {
        let (r, w) = opened.conn.into_parts();
        Arc::new(RemoteHost {
            label,
            writer: Mutex::new(Some(w)),
            reader: Mutex::new(Some(r)),
            shared: Arc::default(),
            child: Mutex::new(opened.child),
        })
    }

    /// Asks the agent to start a worker, which is then running until its `Closed` event.
    fn start(&self, w: WorkerStart) -> std::io::Result<()> {
        let id = w.id;
        {
            let mut book = self.shared.book.lock().unwrap();
            if let Some(why) = &book.lost {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    why.clone(),
                ));
            }
            book.exits.remove(&id);
            book.running.insert(id);
        }
        let sent = self.send(&Message::StartWorker(w));
        if sent.is_err() {
            // Not started; the reader closes it anyway if the connection went meanwhile, which
            // the dispatcher ignores for a worker it already counts as dead.
            self.shared.book.lock().unwrap().running.remove(&id);
        }
        sent
    }

    /// Sends one message to the agent.
    fn send(&self, m: &Message) -> std::io::Result<()> {
        let mut guard = self.writer.lock().unwrap();
        let w = guard.as_mut().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotConnected, "connection closed")
        })?;
        write_frame(w, m).map_err(std::io::Error::other)?;
        w.flush()
    }

    fn exit_of(&self, id: u32) -> Option<(Option<i32>, String)> {
        self.shared.book.lock().unwrap().exits.get(&id).cloned()
    }

    /// Waits (until `deadline`) for worker `id` to exit, or the connection to end; returns its
    /// exit as [`RemoteHost::exit_of`] does.
    fn wait_exit(&self, id: u32, deadline: std::time::Instant) -> Option<(Option<i32>, String)> {
        let mut book = self.shared.book.lock().unwrap();
        loop {
            if let Some(exit) = book.exits.get(&id) {
                return Some(exit.clone());
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if !book.running.contains(&id) || left.is_zero() {
                return None;
            }
            book = self.shared.exited.wait_timeout(book, left).unwrap().0;
        }
    }

    /// Starts relaying the agent's worker messages to `events` (once).
    fn attach(&self, events: Sender<Event>) {
        let Some(mut r) = self.reader.lock().unwrap().take() else {
            return;
        };
        let shared = self.shared.clone();
        let label = self.label.clone();
        std::thread::spawn(move || {
            let why = loop {
                match read_frame(&mut r) {
                    Ok((Message::WorkerOutput { id, line }, _)) => {
                        let ev = match serde_json::from_str::<WorkerMsg>(&line) {
                            Ok(m) => Event::Msg(id as usize, m),
                            Err(_) => Event::Garbage(id as usize, line),
                        };
                        if events.send(ev).is_err() {
                            return;
                        }
                    }
                    Ok((Message::WorkerExit { id, code, stderr }, _)) => {
                        // Only a worker that was started closes (once): an agent that reports
                        // others is ignored.
                        let started = {
                            let mut b = shared.book.lock().unwrap();
                            let started = b.running.remove(&id);
                            if started {
                                b.exits.insert(id, (code, stderr));
                                shared.exited.notify_all();
                            }
                            started
                        };
                        if started && events.send(Event::Closed(id as usize)).is_err() {
                            return;
                        }
                    }
                    Ok((Message::Error(e), _)) => {
                        break format!("the agent on `{label}` failed: {e}");
                    }
                    Ok((other, _)) => {
                        break format!("unexpected `{}` from the agent on `{label}`", other.name());
                    }
                    Err(e) => break format!("connection to `{label}` lost: {e}"),
                }
            };
            // Every worker still running there is gone with the connection, and none starts.
            let gone = {
                let mut b = shared.book.lock().unwrap();
                b.lost = Some(why.clone());
                let gone = std::mem::take(&mut b.running);
                for &id in &gone {
                    b.exits.insert(id, (None, why.clone()));
                }
                shared.exited.notify_all();
                gone
            };
            for id in gone {
                let _ = events.send(Event::Closed(id as usize));
            }
        });
    }

    /// Closes the connection (ending the agent and its workers) and reaps the ssh process.
    pub fn close(&self) {
        // Closing our end makes the agent kill its workers and exit.
        drop(self.writer.lock().unwrap().take());
        if let Some(c) = self.child.lock().unwrap().take() {
            let _ = c.finish();
        }
    }
}

/// A worker process on this machine.
pub struct LocalWorker {
    child: Child,
    stdin: Option<ChildStdin>,
    pub stderr: StderrTail,
}

impl LocalWorker {
    fn spawn(
        id: usize,
        spec: &WorkerSpec,
        dir: &std::path::Path,
        env: &[(String, String)],
        plugin_dir: &std::path::Path,
        pytest_args: &[String],
        events: Sender<Event>,
    ) -> std::io::Result<LocalWorker> {
        let mut cmd = sync_core::agent::workers::worker_command(
            &spec.python,
            spec.nice,
            dir,
            env,
            plugin_dir,
            pytest_args,
        );
        let mut child = cmd.spawn()?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped");
        let (stderr, _) = StderrTail::follow(child.stderr.take().expect("piped"));
        std::thread::spawn(move || {
            let mut r = BufReader::with_capacity(64 << 10, stdout);
            let _ = sync_core::agent::workers::coalesced_lines(&mut r, |line| {
                let ev = match serde_json::from_str::<WorkerMsg>(line) {
                    Ok(m) => Event::Msg(id, m),
                    Err(_) => Event::Garbage(id, line.to_owned()),
                };
                events.send(ev).is_ok()
            });
            let _ = events.send(Event::Closed(id));
        });
        Ok(LocalWorker {
            child,
            stdin,
            stderr,
        })
    }

    fn send(&mut self, line: &str) {
        // A worker that died is noticed through its closed stdout; a failed write adds nothing.
        if let Some(stdin) = &mut self.stdin {
            let _ = writeln!(stdin, "{line}").and_then(|()| stdin.flush());
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

impl Drop for LocalWorker {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The pytest plugin that drives a worker, shipped inside the binary.
pub const PLUGIN: &str = include_str!("rdist_worker.py");

/// Writes the plugin into rdist's cache (once per plugin version) and returns its directory.
///
/// # Errors
/// When the cache directory cannot be written.
pub fn install_plugin(cache: &std::path::Path) -> std::io::Result<PathBuf> {
    sync_core::agent::workers::install_plugin(cache, PLUGIN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufReader, BufWriter};
    use std::sync::mpsc;
    use std::time::Duration;

    /// A host whose connection has already ended (the reader is at EOF) but whose writer still
    /// takes bytes, as a pipe does while the ssh client exits.
    fn ended_host() -> Arc<RemoteHost> {
        host_reading(Box::new(std::io::empty()))
    }

    fn host_reading(r: crate::transport::Reader) -> Arc<RemoteHost> {
        let w: crate::transport::Writer = Box::new(std::io::sink());
        Arc::new(RemoteHost {
            label: "h".to_owned(),
            writer: Mutex::new(Some(BufWriter::new(w))),
            reader: Mutex::new(Some(BufReader::new(r))),
            shared: Arc::default(),
            child: Mutex::new(None),
        })
    }

    fn start(host: &RemoteHost, id: u32) -> std::io::Result<()> {
        host.start(WorkerStart {
            id,
            dest: "d".to_owned(),
            base: DestBase::Cwd,
            python: "python3".to_owned(),
            args: vec![],
            env: vec![],
            nice: None,
        })
    }

    #[test]
    fn a_worker_running_when_the_connection_ends_is_closed_with_the_reason() {
        let host = ended_host();
        start(&host, 3).unwrap();
        let (tx, rx) = mpsc::channel();
        host.attach(tx);
        let ev = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(matches!(ev, Event::Closed(3)), "{ev:?}");
        let (code, why) = host.exit_of(3).unwrap();
        assert_eq!(code, None);
        assert!(why.starts_with("connection to `h` lost"), "{why}");
    }

    #[test]
    fn a_restart_after_the_connection_ended_is_refused_not_left_waiting() {
        let host = ended_host();
        let (tx, rx) = mpsc::channel();
        host.attach(tx);
        // The reader thread ends with the connection; wait until it has recorded that.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while host.shared.book.lock().unwrap().lost.is_none() {
            assert!(std::time::Instant::now() < deadline, "reader never ended");
            std::thread::sleep(Duration::from_millis(5));
        }
        // The writer would still take the bytes; the start must fail anyway.
        let e = start(&host, 0).unwrap_err();
        assert!(e.to_string().contains("connection to `h` lost"), "{e}");
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
    }

    /// Workers whose exits never come (a hung session end on a live connection): waiting for
    /// them all against one deadline costs that deadline once, not once per worker.
    #[test]
    fn hung_workers_are_waited_for_against_one_deadline() {
        // A connection that stays open and says nothing.
        let (r, w) = std::io::pipe().unwrap();
        let host = host_reading(Box::new(r));
        let (tx, _rx) = mpsc::channel();
        host.attach(tx);
        let mut workers: Vec<Worker> = (0..3)
            .map(|id| {
                start(&host, id).unwrap();
                Worker::Remote {
                    host: host.clone(),
                    id,
                }
            })
            .collect();
        let t0 = std::time::Instant::now();
        let deadline = t0 + Duration::from_millis(300);
        for wk in &mut workers {
            assert_eq!(wk.wait_until(deadline), None);
        }
        let took = t0.elapsed();
        assert!(took < Duration::from_millis(600), "{took:?}");
        drop(w);
    }
}
