//! A hostile or broken controller against a real `rdist agent --stdio`: malformed frames,
//! paths that escape, manifests that would write through symlinks, data nobody asked for,
//! deltas out of order, content that does not match its hash. Every case checks that the agent
//! refuses (a non-zero exit and an `Error` frame or a message on stderr), never hangs (every
//! read and wait has a deadline), and writes nothing outside its destination.

use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use rdist_tests::noise;
use rdist_tests::{Sandbox, Snap, rdist_bin, snapshot_filtered, write};
use sync_core::manifest::{Entry, Kind, Manifest};
use sync_core::path::RelPath;
use sync_core::proto::{
    Begin, DestBase, FileData, Hello, MAGIC, MAX_FRAME, Message, Outcome, PROTO_VERSION,
    ProtoError, SourcePath, Want, read_frame, recv_hello, write_frame,
};

const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Longest wait for any one thing the agent should do; a hang fails the test instead of
/// stalling the run.
const DEADLINE: Duration = Duration::from_secs(10);

/// A running `rdist agent --stdio` and the frames it sends, read on a thread.
struct Agent {
    child: Child,
    input: Option<ChildStdin>,
    frames: Receiver<Result<Message, String>>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

/// How an agent ended.
struct Ended {
    status: ExitStatus,
    /// Frames it sent after the last one the test read.
    frames: Vec<Message>,
    stderr: String,
}

impl Ended {
    /// The text of the `Error` frame the agent sent, if any.
    fn error(&self) -> Option<&str> {
        self.frames.iter().find_map(|m| match m {
            Message::Error(e) => Some(e.as_str()),
            _ => None,
        })
    }

    fn describe(&self) -> String {
        let names: Vec<&str> = self.frames.iter().map(Message::name).collect();
        format!(
            "status {:?}, frames {names:?}, error {:?}\n--- agent stderr\n{}",
            self.status.code(),
            self.error(),
            self.stderr
        )
    }

    /// The agent failed (non-zero exit) and said why, in an `Error` frame or on stderr.
    #[track_caller]
    fn assert_refused(&self, fragment: &str) {
        assert!(
            !self.status.success(),
            "agent exited 0: {}",
            self.describe()
        );
        let said =
            self.error().is_some_and(|e| e.contains(fragment)) || self.stderr.contains(fragment);
        assert!(said, "no `{fragment}` from the agent: {}", self.describe());
    }

    /// The agent failed and reported it to the controller, not only on stderr.
    #[track_caller]
    fn assert_reported(&self, fragment: &str) {
        self.assert_refused(fragment);
        assert!(
            self.error().is_some_and(|e| e.contains(fragment)),
            "no `Error` frame with `{fragment}`: {}",
            self.describe()
        );
    }
}

impl Agent {
    /// Starts an agent in `cwd` and reads its hello.
    fn start(cwd: &Path) -> Agent {
        Agent::start_with(Command::new(rdist_bin()).current_dir(cwd))
    }

    /// Starts `cmd` (an `rdist` command: `agent --stdio` is added) and reads its hello.
    fn start_with(cmd: &mut Command) -> Agent {
        let mut child = cmd
            .args(["agent", "--stdio"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start rdist agent");
        let stdout = child.stdout.take().unwrap();
        let (tx, frames) = channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let first = recv_hello(&mut r, VERSION).map(|(h, _)| Message::Hello(h));
            let mut next = first.map_err(|e| e.to_string());
            loop {
                let stop = next.is_err();
                if tx.send(next).is_err() || stop {
                    return;
                }
                next = match read_frame(&mut r) {
                    Ok((m, _)) => Ok(m),
                    Err(ProtoError::Closed) => return,
                    Err(e) => Err(e.to_string()),
                };
            }
        });
        let mut stderr = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let mut agent = Agent {
            input: child.stdin.take(),
            child,
            frames,
            stderr: Some(stderr),
        };
        match agent.recv() {
            Message::Hello(h) => assert_eq!(h.proto, PROTO_VERSION),
            other => panic!("agent started with `{}`", other.name()),
        }
        agent
    }

    /// An agent in `sb`'s project running one test worker there (`gw0`) that has collected
    /// and was told to run the first test and then shut down (so it runs it without waiting
    /// for a next one).
    fn worker(sb: &Sandbox) -> Agent {
        Agent::worker_with(sb, &[])
    }

    /// [`Agent::worker`] with these pytest arguments.
    fn worker_with(sb: &Sandbox, args: &[&str]) -> Agent {
        let mut agent = Agent::start_with(
            Command::new(rdist_bin())
                .current_dir(sb.proj())
                .env("RDIST_CACHE_DIR", sb.cache()),
        );
        agent.hello();
        agent.send(&Message::StartWorker(sync_core::proto::WorkerStart {
            id: 0,
            dest: sb.proj().display().to_string(),
            base: DestBase::Cwd,
            python: rdist_tests::python::python().display().to_string(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            env: vec![],
            nice: None,
        }));
        agent.worker_says("\"collected\"");
        agent.send(&Message::WorkerInput {
            id: 0,
            line: r#"{"run": [0], "shutdown": true}"#.to_owned(),
        });
        agent
    }

    /// Reads the worker's lines up to one that contains `fragment`.
    fn worker_says(&mut self, fragment: &str) {
        loop {
            match self.recv() {
                Message::WorkerOutput { line, .. } if line.contains(fragment) => return,
                Message::WorkerOutput { .. } => {}
                other => panic!("expected the worker's output, got {other:?}"),
            }
        }
    }

    /// Writes raw bytes; a refused write (the agent already gave up) is not an error here.
    fn raw(&mut self, bytes: &[u8]) {
        if let Some(w) = self.input.as_mut() {
            let _ = w.write_all(bytes).and_then(|()| w.flush());
        }
    }

    fn send(&mut self, m: &Message) {
        let mut buf = Vec::new();
        write_frame(&mut buf, m).unwrap();
        self.raw(&buf);
    }

    fn hello(&mut self) {
        let mut buf = MAGIC.to_vec();
        write_frame(&mut buf, &Message::Hello(Hello::ours(VERSION))).unwrap();
        self.raw(&buf);
    }

    /// The next frame, within the deadline.
    fn recv(&mut self) -> Message {
        match self.frames.recv_timeout(DEADLINE) {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => panic!("agent sent an unreadable frame: {e}"),
            Err(RecvTimeoutError::Timeout) => {
                let _ = self.child.kill();
                panic!("agent sent nothing for {DEADLINE:?}");
            }
            Err(RecvTimeoutError::Disconnected) => {
                let _ = self.child.kill();
                let err = self
                    .stderr
                    .take()
                    .map(|h| h.join().unwrap())
                    .unwrap_or_default();
                panic!("agent closed its output early; stderr:\n{err}");
            }
        }
    }

    /// The next frame, which must be a `want`.
    #[track_caller]
    fn expect(&mut self, want: &str) -> Message {
        let m = self.recv();
        if let Message::Error(e) = &m {
            panic!("expected `{want}`, agent reported: {e}");
        }
        assert_eq!(m.name(), want, "{m:?}");
        m
    }

    /// Closes our side, then waits for the agent to exit.
    fn finish(mut self) -> Ended {
        drop(self.input.take());
        self.wait()
    }

    /// Waits for the agent to exit while our side stays open: it must give up by itself.
    fn exits_by_itself(self) -> Ended {
        self.wait()
    }

    fn wait(mut self) -> Ended {
        let deadline = Instant::now() + DEADLINE;
        let mut frames = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.frames.recv_timeout(left) {
                Ok(Ok(m)) => frames.push(m),
                // An unreadable frame from the agent: the test's assertions see it missing.
                Ok(Err(_)) => {}
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    panic!(
                        "agent did not exit within {DEADLINE:?} (still open: {})",
                        self.input.is_some()
                    );
                }
            }
        }
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("agent closed its output but did not exit within {DEADLINE:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        drop(self.input.take());
        let stderr = self
            .stderr
            .take()
            .map(|h| h.join().unwrap())
            .unwrap_or_default();
        Ended {
            status,
            frames,
            stderr,
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A sandbox with a directory the agent must never touch, a destination next to it, and a
/// record of everything outside the destination.
struct Arena {
    sb: Sandbox,
    before: Vec<Snap>,
}

impl Arena {
    fn new() -> Arena {
        Arena::with(|_| {})
    }

    /// `prepare` gets the destination path before the "before" picture is taken.
    fn with(prepare: impl FnOnce(&Path)) -> Arena {
        let sb = Sandbox::new();
        write(&sb.path().join("outside/secret.txt"), "do not touch");
        write(&sb.path().join("outside/sub/x"), "x");
        prepare(&sb.path().join("dest"));
        let before = Arena::outside_of(sb.path());
        Arena { sb, before }
    }

    fn outside_of(root: &Path) -> Vec<Snap> {
        snapshot_filtered(root, &|r| r == "dest" || r.starts_with("dest/"))
    }

    fn dest(&self) -> PathBuf {
        self.sb.path().join("dest")
    }

    fn outside(&self) -> PathBuf {
        self.sb.path().join("outside")
    }

    fn agent(&self) -> Agent {
        Agent::start(self.sb.path())
    }

    fn begin(&self) -> Begin {
        Begin {
            dest: self.dest().display().to_string(),
            ignore: Vec::new(),
            dry_run: false,
            fsync: false,
            adopt: false,
            lock_wait_ms: 2000,
            base: DestBase::default(),
            delta_min: sync_core::delta::DELTA_MIN_SIZE,
            leaves: false,
            local_sources: false,
        }
    }

    /// Everything outside the destination is as it was.
    #[track_caller]
    fn assert_untouched(&self) {
        assert_eq!(
            Arena::outside_of(self.sb.path()),
            self.before,
            "the agent changed something outside its destination"
        );
    }

    /// Entries of the destination apart from rdist's own state.
    fn dest_entries(&self) -> Vec<String> {
        if !self.dest().exists() {
            return Vec::new();
        }
        snapshot_filtered(&self.dest(), &|_| false)
            .into_iter()
            .map(|s| s.path)
            .collect()
    }
}

fn rel(p: &str) -> RelPath {
    RelPath::new(p).unwrap()
}

fn blake3_of(data: &[u8]) -> [u8; 32] {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f");
    std::fs::write(&p, data).unwrap();
    sync_core::hash::hash_file(&p, data.len() as u64).unwrap()
}

fn file(path: &str, data: &[u8]) -> Entry {
    Entry {
        path: rel(path),
        kind: Kind::File {
            size: data.len() as u64,
            mtime_ns: 1_600_000_000_000_000_000,
            mode: 0o644,
            hash: blake3_of(data),
        },
    }
}

fn dir(path: &str) -> Entry {
    Entry {
        path: rel(path),
        kind: Kind::Dir { mode: 0o755 },
    }
}

fn link(path: &str, target: &Path) -> Entry {
    Entry {
        path: rel(path),
        kind: Kind::Symlink {
            target: target.display().to_string(),
        },
    }
}

/// Hello, `begin`, and an offer of `entries` (in the order given); returns the agent's answer.
fn offer(agent: &mut Agent, begin: Begin, entries: &[Entry]) -> Message {
    agent.hello();
    agent.send(&Message::Begin(begin));
    let digest = Manifest::from_unsorted(entries.to_vec()).digest();
    agent.send(&Message::Offer {
        digest,
        entries: entries.len() as u64,
    });
    agent.recv()
}

/// Steers the agent's answer to an offer to `NeedManifest`: an agent with an older tree asks for
/// a per-directory summary first, and a summary that matches none of its directories makes it
/// ask for the whole manifest.
fn need_manifest(agent: &mut Agent, reply: Message) {
    match reply.name() {
        "NeedManifest" => {}
        "NeedSummary" => {
            agent.send(&Message::Summary(vec![[0u8; 16]]));
            agent.send(&Message::SummaryEnd);
            agent.expect("NeedManifest");
        }
        other => panic!("expected NeedManifest or NeedSummary, got {other}"),
    }
}

/// A whole session up to the agent's wants: offer, manifest, plan, wants.
fn up_to_wants(agent: &mut Agent, begin: Begin, entries: &[Entry]) -> Vec<Want> {
    let reply = offer(agent, begin, entries);
    need_manifest(agent, reply);
    agent.send(&Message::Manifest(entries.to_vec()));
    agent.send(&Message::ManifestEnd);
    agent.expect("Plan");
    let mut wants = Vec::new();
    loop {
        match agent.recv() {
            Message::Want(w) => wants.extend(w),
            Message::WantEnd => return wants,
            other => panic!("expected wants, got {other:?}"),
        }
    }
}

fn index_of(w: &Want) -> u32 {
    match w {
        Want::Whole { index } | Want::Delta { index, .. } | Want::Leaves { index, .. } => *index,
    }
}

/// A `Manifest` frame whose single file entry is named `evil`, which `RelPath` would refuse to
/// build: a same-length placeholder is encoded and its bytes replaced.
fn evil_manifest_frame(evil: &str) -> Vec<u8> {
    let placeholder = "x".repeat(evil.len());
    let mut frame = Vec::new();
    write_frame(
        &mut frame,
        &Message::Manifest(vec![file(&placeholder, b"pwned")]),
    )
    .unwrap();
    let at: Vec<usize> = (0..frame.len())
        .filter(|&i| frame[i..].starts_with(placeholder.as_bytes()))
        .collect();
    assert_eq!(at.len(), 1, "placeholder must occur once");
    frame[at[0]..at[0] + evil.len()].copy_from_slice(evil.as_bytes());
    frame
}

/// A controller that hangs up while a test runs (its ssh connection dropped): the agent tells
/// the worker to stop, gives it a grace period to end by itself, then kills it and exits.
/// (It used to wait for the worker's output to end before closing its input, which a worker
/// waiting for commands never does.)
#[test]
fn an_agent_whose_controller_hangs_up_mid_test_kills_its_worker_and_exits() {
    if !rdist_tests::have_pytest() {
        return;
    }
    let sb = Sandbox::new();
    sb.write(
        "tests/test_slow.py",
        "import pathlib, time\n\ndef test_slow():\n    \
         pathlib.Path('started').write_text('y')\n    time.sleep(60)\n",
    );
    let agent = Agent::worker(&sb);
    let started = rdist_tests::sshd::wait_until(DEADLINE, || sb.proj().join("started").exists());
    assert!(started, "the slow test never started");
    let t0 = Instant::now();
    let ended = agent.finish();
    // The worker was told to stop after its test, and killed after the grace period.
    assert!(t0.elapsed() >= Duration::from_secs(2), "{:?}", t0.elapsed());
    assert!(ended.status.success(), "{}", ended.describe());
    let gone = rdist_tests::sshd::wait_until(DEADLINE, || {
        rdist_tests::processes_in(&sb.proj()).is_empty()
    });
    let left = rdist_tests::processes_in(&sb.proj()).join("\n");
    assert!(gone, "left running:\n{left}");
}

/// A controller that hangs up as a worker finishes its session (`run`, `shutdown`, the worker
/// says `done`, and the controller goes): the worker ends its session by itself (its
/// `pytest_sessionfinish` runs to the end) and its exit code is reported, not a kill.
#[test]
fn a_worker_finishing_its_session_is_not_killed_by_the_hang_up() {
    if !rdist_tests::have_pytest() {
        return;
    }
    let sb = Sandbox::new();
    sb.write("tests/test_quick.py", "def test_quick():\n    pass\n");
    sb.write(
        "tests/conftest.py",
        "import time, pathlib\n\ndef pytest_sessionfinish(session):\n    time.sleep(1)\n    pathlib.Path(session.config.rootpath, 'finished').write_text('yes')\n",
    );
    let mut agent = Agent::worker(&sb);
    agent.worker_says("\"done\"");
    let ended = agent.finish();
    assert!(ended.status.success(), "{}", ended.describe());
    let exit = ended.frames.iter().find_map(|m| match m {
        Message::WorkerExit { code, stderr, .. } => Some((*code, stderr.clone())),
        _ => None,
    });
    let finished = sb.proj().join("finished").exists();
    assert!(
        matches!(exit, Some((Some(0), _))) && finished,
        "exit {exit:?}, sessionfinish completed: {finished}"
    );
}

/// A test that leaves a process behind holding the worker's stderr (`-s`, a background
/// `sleep`): the agent still exits once the controller hangs up, instead of waiting for that
/// process to close the stream it only keeps a tail of.
#[test]
fn a_process_left_holding_the_workers_stderr_does_not_keep_the_agent() {
    if !rdist_tests::have_pytest() {
        return;
    }
    let sb = Sandbox::new();
    sb.write(
        "tests/test_bg.py",
        "import pathlib, subprocess\n\ndef test_bg():\n    \
         p = subprocess.Popen(['sleep', '30'])\n    pathlib.Path('bg.pid').write_text(str(p.pid))\n",
    );
    let mut agent = Agent::worker_with(&sb, &["-s"]);
    agent.worker_says("\"done\"");
    let t0 = Instant::now();
    let ended = agent.finish();
    let took = t0.elapsed();
    if let Ok(pid) = std::fs::read_to_string(sb.proj().join("bg.pid")) {
        let _ = Command::new("kill").arg(pid.trim()).status();
    }
    assert!(ended.status.success(), "{}", ended.describe());
    assert!(
        took < Duration::from_secs(5),
        "the agent took {took:?} to exit"
    );
}

#[test]
fn garbage_instead_of_the_magic_is_refused() {
    // Short garbage, then end of stream.
    let a = Arena::new();
    let mut agent = a.agent();
    agent.raw(b"SSH-2.0-OpenSSH_9.6\r\nnot rdist at all\n");
    agent
        .finish()
        .assert_refused("peer did not start the rdist protocol; it sent `SSH-2.0-OpenSSH_9.6");

    // More garbage than any banner, stream left open: the agent gives up by itself.
    let mut agent = a.agent();
    let junk: Vec<u8> = b"garbage!".iter().copied().cycle().take(80 << 10).collect();
    agent.raw(&junk);
    agent
        .exits_by_itself()
        .assert_refused("peer did not start the rdist protocol");
    a.assert_untouched();
    assert!(!a.dest().exists());
}

#[test]
fn oversized_frame_length_is_refused_before_reading_the_body() {
    let a = Arena::new();
    for len in [MAX_FRAME as u32 + 1, u32::MAX] {
        // In place of `Begin`.
        let mut agent = a.agent();
        agent.hello();
        let mut bytes = len.to_be_bytes().to_vec();
        bytes.extend([0u8; 64]);
        agent.raw(&bytes);
        let ended = agent.exits_by_itself();
        ended.assert_reported(&format!(
            "frame of {len} bytes exceeds the {MAX_FRAME}-byte limit"
        ));

        // In place of the manifest.
        let mut agent = a.agent();
        assert_eq!(
            offer(&mut agent, a.begin(), &[file("a.py", b"a")]).name(),
            "NeedManifest"
        );
        agent.raw(&bytes);
        agent.exits_by_itself().assert_reported(&format!(
            "frame of {len} bytes exceeds the {MAX_FRAME}-byte limit"
        ));
    }
    a.assert_untouched();
    assert_eq!(a.dest_entries(), Vec::<String>::new());
}

#[test]
fn truncated_frame_in_a_session_fails_the_sync() {
    let a = Arena::new();
    let mut agent = a.agent();
    let entries = [dir("pkg"), file("pkg/a.py", b"a")];
    assert_eq!(
        offer(&mut agent, a.begin(), &entries).name(),
        "NeedManifest"
    );
    let mut full = Vec::new();
    write_frame(&mut full, &Message::Manifest(entries.to_vec())).unwrap();
    agent.raw(&full[..full.len() - 5]);
    let ended = agent.finish();
    assert!(!ended.status.success(), "{}", ended.describe());
    a.assert_untouched();
    assert_eq!(a.dest_entries(), Vec::<String>::new());
}

#[test]
fn truncated_frame_before_begin_is_an_error_not_a_clean_close() {
    let a = Arena::new();
    // A body shorter than its length, and a length cut short.
    for bytes in [&[0u8, 0, 0, 50, 2, 1, 2, 3][..], &[0u8, 0][..]] {
        let mut agent = a.agent();
        agent.hello();
        agent.raw(bytes);
        let ended = agent.finish();
        assert!(
            !ended.status.success(),
            "{bytes:?} then end of stream: {}",
            ended.describe()
        );
    }
    a.assert_untouched();
}

#[test]
fn unknown_or_misplaced_message_is_refused() {
    let a = Arena::new();
    // Variant 200 does not exist, in place of `Begin` and in place of the manifest.
    let mut agent = a.agent();
    agent.hello();
    agent.raw(&[0, 0, 0, 1, 200]);
    agent.exits_by_itself().assert_reported("undecodable frame");

    let mut agent = a.agent();
    assert_eq!(
        offer(&mut agent, a.begin(), &[file("a", b"a")]).name(),
        "NeedManifest"
    );
    agent.raw(&[0, 0, 0, 2, 200, 0]);
    agent.exits_by_itself().assert_reported("undecodable frame");

    // A real message out of turn.
    let mut agent = a.agent();
    agent.hello();
    agent.send(&Message::Done(Outcome::default()));
    agent
        .exits_by_itself()
        .assert_reported("unexpected `Done` message while waiting for Begin");

    let mut agent = a.agent();
    assert_eq!(
        offer(&mut agent, a.begin(), &[file("a", b"a")]).name(),
        "NeedManifest"
    );
    agent.send(&Message::DataEnd);
    agent
        .exits_by_itself()
        .assert_reported("unexpected `DataEnd` message while waiting for Manifest");
    a.assert_untouched();
    assert_eq!(a.dest_entries(), Vec::<String>::new());
}

#[test]
fn manifest_paths_that_escape_fail_to_decode() {
    let a = Arena::new();
    let abs = a.outside().join("pwned");
    for evil in [
        "../escape",
        "../outside/pwned",
        abs.to_str().unwrap(),
        "a/../../escape",
    ] {
        let mut agent = a.agent();
        assert_eq!(
            offer(&mut agent, a.begin(), &[file("x", b"x")]).name(),
            "NeedManifest"
        );
        agent.raw(&evil_manifest_frame(evil));
        agent.send(&Message::ManifestEnd);
        agent.exits_by_itself().assert_reported("undecodable frame");
    }
    a.assert_untouched();
    assert!(!a.sb.path().join("escape").exists());
    assert_eq!(a.dest_entries(), Vec::<String>::new());
}

#[test]
fn manifest_entry_below_a_symlink_of_the_same_manifest_is_refused() {
    let a = Arena::new();
    let mut agent = a.agent();
    let entries = [link("a", &a.outside()), file("a/b", b"through the link")];
    assert_eq!(
        offer(&mut agent, a.begin(), &entries).name(),
        "NeedManifest"
    );
    agent.send(&Message::Manifest(entries.to_vec()));
    agent.send(&Message::ManifestEnd);
    agent.exits_by_itself().assert_reported(
        "manifest refused: manifest entry `a/b` has parent `a` that is not a directory of the manifest",
    );
    a.assert_untouched();
    assert!(!a.outside().join("b").exists());
    assert_eq!(a.dest_entries(), Vec::<String>::new());
}

#[test]
fn protected_symlink_in_the_destination_cannot_be_written_through() {
    // (ignore patterns, the worker-only symlink they protect, the manifest that would use it)
    let cases: &[(&[&str], &str, Vec<Entry>)] = &[
        (&[], ".evil", vec![dir(".evil"), file(".evil/x", b"x")]),
        (
            &["cache"],
            "cache",
            vec![dir("cache"), file("cache/x", b"x")],
        ),
        (
            &["pkg/gen"],
            "pkg/gen",
            vec![dir("pkg"), dir("pkg/gen"), file("pkg/gen/x", b"x")],
        ),
        (
            &["*.d"],
            "deps.d",
            vec![dir("deps.d"), file("deps.d/x", b"x")],
        ),
    ];
    for (ignore, name, entries) in cases {
        let a = Arena::with(|dest| {
            std::fs::create_dir_all(dest.join(".rdist")).unwrap();
            let l = dest.join(name);
            std::fs::create_dir_all(l.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(dest.parent().unwrap().join("outside"), &l).unwrap();
        });
        let mut agent = a.agent();
        let begin = Begin {
            ignore: ignore.iter().map(|s| (*s).to_owned()).collect(),
            ..a.begin()
        };
        let reply = offer(&mut agent, begin, entries);
        need_manifest(&mut agent, reply);
        agent.send(&Message::Manifest(entries.clone()));
        agent.send(&Message::ManifestEnd);
        agent.exits_by_itself().assert_reported(&format!(
            "manifest entry `{name}` matches the ignore rules and would overwrite a protected entry"
        ));
        a.assert_untouched();
        assert_eq!(
            std::fs::read_link(a.dest().join(name)).unwrap(),
            a.outside()
        );
        assert!(!a.outside().join("x").exists());
    }
}

#[test]
fn data_for_a_file_that_was_not_wanted_is_refused() {
    let entries = [dir("d"), file("d/f", b"wanted")];
    let whole = |index: u32, data: &[u8]| {
        Message::Files(vec![FileData {
            index,
            data: data.to_vec(),
        }])
    };
    let piece = |index: u32, bytes: &[u8], last: bool| Message::Data {
        index,
        bytes: bytes.to_vec(),
        last,
    };
    let bad: Vec<(Vec<Message>, &str)> = vec![
        (
            vec![whole(7, b"x")],
            "data for file #7 that was not asked for",
        ),
        // The directory's index.
        (
            vec![whole(0, b"")],
            "data for file #0 that was not asked for",
        ),
        (
            // The same file twice in one frame.
            vec![Message::Files(vec![
                FileData {
                    index: 1,
                    data: b"wanted".to_vec(),
                },
                FileData {
                    index: 1,
                    data: b"wanted".to_vec(),
                },
            ])],
            "data for file #1 that was not asked for",
        ),
        (
            vec![piece(9, b"x", true)],
            "data for file #9 that was not asked for",
        ),
        (
            // Wanted whole, sent as a delta.
            vec![Message::Delta {
                index: 1,
                chunk: 0,
                delta: vec![0x72, 0x73, 0x02, 0x36, 0],
                last: true,
            }],
            "data for file #1 that was not asked for",
        ),
        (
            vec![piece(1, b"wanted, and then some", true)],
            "file #1 is longer than its manifest size",
        ),
        (
            vec![piece(1, b"wan", false), piece(0, b"ted", true)],
            "file #0 interleaved with another",
        ),
        (
            vec![piece(1, b"wan", false), Message::DataEnd],
            "data ended in the middle of a file",
        ),
        (
            vec![Message::WantEnd],
            "unexpected `WantEnd` message while waiting for file data",
        ),
    ];
    for (msgs, fragment) in bad {
        let a = Arena::new();
        let mut agent = a.agent();
        let wants = up_to_wants(&mut agent, a.begin(), &entries);
        assert_eq!(wants, [Want::Whole { index: 1 }]);
        for m in &msgs {
            agent.send(m);
        }
        agent.send(&Message::DataEnd);
        agent.exits_by_itself().assert_reported(fragment);
        a.assert_untouched();
        assert!(!a.dest().join("d/f").exists(), "{fragment}");
        assert!(a.dest().join("d").is_dir(), "structural changes come first");
    }
}

#[test]
fn skip_for_a_file_that_was_not_wanted_is_refused_without_a_panic() {
    let entries = [dir("d"), file("d/f", b"wanted")];
    let a = Arena::new();
    let mut agent = a.agent();
    up_to_wants(&mut agent, a.begin(), &entries);
    agent.send(&Message::Skip {
        index: 99,
        reason: "no such file".into(),
    });
    agent.send(&Message::DataEnd);
    let ended = agent.exits_by_itself();
    assert!(!ended.stderr.contains("panicked"), "{}", ended.describe());
    ended.assert_reported("#99");
    a.assert_untouched();
}

#[test]
fn manifest_that_breaks_its_own_rules_is_refused() {
    let (a1, b1, c1) = (file("a", b"a"), file("b", b"b"), file("c", b"c"));
    // (offered entries, sent entries, offered count, message)
    let cases: Vec<(Vec<Entry>, Vec<Entry>, u64, &str)> = vec![
        (
            vec![a1.clone(), b1.clone()],
            vec![a1.clone(), b1.clone(), c1.clone()],
            2,
            "manifest has more than the announced 2 entries",
        ),
        (
            vec![a1.clone(), b1.clone()],
            vec![a1.clone(), c1.clone()],
            2,
            "manifest does not match its announced digest",
        ),
        (
            vec![a1.clone(), b1.clone()],
            vec![b1.clone(), a1.clone()],
            2,
            "manifest is not sorted at `a`",
        ),
        (
            vec![a1.clone(), b1.clone()],
            vec![a1.clone(), a1.clone()],
            2,
            "manifest lists `a` twice",
        ),
    ];
    for (offered, sent, count, fragment) in cases {
        let a = Arena::new();
        let mut agent = a.agent();
        agent.hello();
        agent.send(&Message::Begin(a.begin()));
        agent.send(&Message::Offer {
            digest: Manifest::from_unsorted(offered).digest(),
            entries: count,
        });
        agent.expect("NeedManifest");
        agent.send(&Message::Manifest(sent));
        agent.send(&Message::ManifestEnd);
        agent.exits_by_itself().assert_reported(fragment);
        a.assert_untouched();
        assert_eq!(a.dest_entries(), Vec::<String>::new(), "{fragment}");
    }
}

#[test]
fn delta_chunk_out_of_order_is_refused() {
    let old = noise(100 << 10, 1);
    let a = Arena::with(|dest| {
        std::fs::create_dir_all(dest.join(".rdist")).unwrap();
        std::fs::write(dest.join("big.bin"), &old).unwrap();
    });
    let mut new = old.clone();
    new[50_000..50_100].fill(0);
    let entries = [file("big.bin", &new)];
    let mut agent = a.agent();
    let wants = up_to_wants(&mut agent, a.begin(), &entries);
    assert!(
        matches!(wants[..], [Want::Delta { index: 0, .. }]),
        "expected a delta want: {:?}",
        wants.iter().map(index_of).collect::<Vec<_>>()
    );
    agent.send(&Message::Delta {
        index: 0,
        chunk: 1,
        delta: Vec::new(),
        last: true,
    });
    agent.send(&Message::DataEnd);
    agent
        .exits_by_itself()
        .assert_reported("file #0: delta chunk 1 out of order");
    a.assert_untouched();
    assert!(
        std::fs::read(a.dest().join("big.bin")).unwrap() == old,
        "old content changed"
    );
}

/// A destination holding `old` as `big.bin`, settled past the racy window (so the agent's walk
/// certifies its stamp and leaves), and an agent session with `entries` offered up to its
/// wants, asked for by leaves.
fn leaves_session(old: &[u8], entries: &[Entry]) -> (Arena, Agent, Vec<Want>) {
    let a = Arena::with(|dest| {
        std::fs::create_dir_all(dest.join(".rdist")).unwrap();
        std::fs::write(dest.join("big.bin"), old).unwrap();
    });
    std::thread::sleep(std::time::Duration::from_millis(80));
    let mut agent = a.agent();
    let begin = Begin {
        leaves: true,
        local_sources: false,
        ..a.begin()
    };
    let wants = up_to_wants(&mut agent, begin, entries);
    (a, agent, wants)
}

/// A file asked for by its leaves: a controller that claims a changed leaf is unchanged gets a
/// result whose hash (merged from the leaves) does not match, so the file is asked for again
/// whole, and only the right content is installed.
#[test]
fn leaves_a_controller_lies_about_are_caught_by_the_files_hash() {
    const LEAF: usize = sync_core::hash::LEAF as usize;
    let old = noise(5 * LEAF / 2 + 100, 3);
    let mut new = old.clone();
    new[LEAF + 10] ^= 1;
    let (a, mut agent, wants) = leaves_session(&old, &[file("big.bin", &new)]);
    let [Want::Leaves { index: 0, cvs }] = &wants[..] else {
        panic!("expected a leaves want: {wants:?}");
    };
    assert_eq!(cvs.len(), 3);
    // Every leaf claimed unchanged, the changed one too.
    for chunk in 0..3 {
        let len = (old.len() - chunk * LEAF).min(LEAF);
        agent.send(&Message::Delta {
            index: 0,
            chunk: chunk as u32,
            delta: sync_core::delta::copy_whole(len as u64),
            last: chunk == 2,
        });
    }
    agent.send(&Message::DataEnd);
    let mut again = Vec::new();
    loop {
        match agent.recv() {
            Message::Want(w) => again.extend(w),
            Message::WantEnd => break,
            other => panic!("expected wants, got {other:?}"),
        }
    }
    assert_eq!(again, [Want::Whole { index: 0 }]);
    assert_eq!(std::fs::read(a.dest().join("big.bin")).unwrap(), old);
    let pieces: Vec<&[u8]> = new.chunks(1 << 20).collect();
    for (k, piece) in pieces.iter().enumerate() {
        agent.send(&Message::Data {
            index: 0,
            bytes: piece.to_vec(),
            last: k + 1 == pieces.len(),
        });
    }
    agent.send(&Message::DataEnd);
    let outcome = match agent.recv() {
        Message::Done(o) => o,
        other => panic!("expected `Done`, got {other:?}"),
    };
    assert!(outcome.problems.is_empty(), "{outcome:?}");
    assert_eq!(outcome.files_written, 1, "{outcome:?}");
    assert_eq!(std::fs::read(a.dest().join("big.bin")).unwrap(), new);
    a.assert_untouched();
}

#[test]
fn content_not_matching_its_hash_is_not_installed() {
    // Sent in pieces, sent in a batch, or read by the agent from a (local) source path.
    for how in ["pieces", "batch", "source"] {
        let a = Arena::with(|dest| {
            std::fs::create_dir_all(dest.join(".rdist")).unwrap();
            std::fs::write(dest.join("a.txt"), "old content").unwrap();
            write(&dest.parent().unwrap().join("src/a.txt"), "bad content");
        });
        let entries = [file("a.txt", b"new content")];
        let mut agent = a.agent();
        let begin = Begin {
            local_sources: how == "source",
            ..a.begin()
        };
        let wants = up_to_wants(&mut agent, begin, &entries);
        assert_eq!(wants, [Want::Whole { index: 0 }]);
        let bad = b"bad content".to_vec();
        agent.send(&match how {
            "pieces" => Message::Data {
                index: 0,
                bytes: bad,
                last: true,
            },
            "batch" => Message::Files(vec![FileData {
                index: 0,
                data: bad,
            }]),
            _ => Message::Sources(vec![SourcePath {
                index: 0,
                path: a
                    .sb
                    .path()
                    .join("src/a.txt")
                    .into_os_string()
                    .into_encoded_bytes(),
            }]),
        });
        agent.send(&Message::DataEnd);
        let outcome = match agent.recv() {
            Message::Done(o) => o,
            other => panic!("expected `Done`, got {other:?}"),
        };
        assert_eq!(outcome.files_written, 0, "{outcome:?}");
        assert_eq!(outcome.problems.len(), 1, "{outcome:?}");
        assert_eq!(outcome.problems[0].0, "a.txt");
        assert!(
            outcome.problems[0]
                .1
                .contains("content changed while syncing"),
            "{outcome:?}"
        );
        let ended = agent.finish();
        assert!(ended.frames.is_empty(), "{}", ended.describe());
        a.assert_untouched();
        assert_eq!(
            std::fs::read(a.dest().join("a.txt")).unwrap(),
            b"old content"
        );
        let staged = a.dest().join(".rdist/tmp");
        assert!(
            !staged.exists() || std::fs::read_dir(&staged).unwrap().next().is_none(),
            "temp files left in `{}`",
            staged.display()
        );
    }
}

#[test]
fn source_paths_are_refused_unless_the_session_asked_for_them() {
    let entries = [dir("d"), file("d/f", b"do not touch")];
    let source = |index: u32, path: &Path| {
        Message::Sources(vec![SourcePath {
            index,
            path: path.as_os_str().as_encoded_bytes().to_vec(),
        }])
    };
    let cases: Vec<(bool, u32, &str, &str)> = vec![
        (
            false,
            1,
            "outside/secret.txt",
            "source paths from a controller that is not on this machine",
        ),
        (true, 1, "", "source path of file #1 is not absolute"),
        (
            true,
            7,
            "outside/secret.txt",
            "data for file #7 that was not asked for",
        ),
        (
            true,
            0,
            "outside/secret.txt",
            "data for file #0 that was not asked for",
        ),
    ];
    for (local, index, path, fragment) in cases {
        let a = Arena::new();
        let path = if path.is_empty() {
            PathBuf::from("outside/secret.txt")
        } else {
            a.sb.path().join(path)
        };
        let mut agent = a.agent();
        let begin = Begin {
            local_sources: local,
            ..a.begin()
        };
        let wants = up_to_wants(&mut agent, begin, &entries);
        assert_eq!(wants, [Want::Whole { index: 1 }]);
        agent.send(&source(index, &path));
        agent.send(&Message::DataEnd);
        agent.exits_by_itself().assert_reported(fragment);
        a.assert_untouched();
        assert!(!a.dest().join("d/f").exists(), "{fragment}");
    }
}

/// An incremental exchange where the controller, asked for the entries of the one directory
/// that differs, slips in an entry of a directory whose summary matched: the agent's merged
/// manifest then names that path twice, and it falls back to asking for the whole manifest
/// (which it checks strictly) instead of trusting the mixture.
#[test]
fn entries_for_a_directory_that_was_not_asked_for_fall_back_to_the_full_manifest() {
    let stamp_like_file = |p: &Path, data: &[u8]| {
        write(p, std::str::from_utf8(data).unwrap());
        let f = std::fs::File::options().write(true).open(p).unwrap();
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        f.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(1_600_000_000))
            .unwrap();
    };
    let a = Arena::with(|dest| {
        std::fs::create_dir_all(dest.join(".rdist")).unwrap();
        stamp_like_file(&dest.join("x/a"), b"old a");
        stamp_like_file(&dest.join("y/b"), b"b");
        for d in ["x", "y"] {
            let p = dest.join(d);
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
        }
    });
    let wanted = [dir("x"), file("x/a", b"new a"), dir("y"), file("y/b", b"b")];
    let mut agent = a.agent();
    let reply = offer(&mut agent, a.begin(), &wanted);
    assert_eq!(reply.name(), "NeedSummary", "{reply:?}");
    let summary = Manifest::from_unsorted(wanted.to_vec()).dir_summary();
    agent.send(&Message::Summary(summary));
    agent.send(&Message::SummaryEnd);
    match agent.recv() {
        // The top, `x`, `y`: only `x` differs.
        Message::NeedDirs(dirs) => assert_eq!(dirs, vec![1]),
        other => panic!("expected NeedDirs, got {other:?}"),
    }
    agent.send(&Message::Manifest(vec![
        file("x/a", b"new a"),
        file("y/b", b"not what the summary said"),
    ]));
    agent.send(&Message::ManifestEnd);
    agent.expect("NeedManifest");
    a.assert_untouched();
    assert_eq!(std::fs::read(a.dest().join("y/b")).unwrap(), b"b");
}

/// The controller's `stream_leaves` sends `Skip` in the middle of a file when its source cannot
/// be read any more (it shrank since the scan). Like a delta stream, the file is then a problem;
/// the session must not fail.
#[test]
fn skip_in_the_middle_of_a_leaves_stream_fails_the_file_not_the_session() {
    const LEAF: usize = sync_core::hash::LEAF as usize;
    let old = noise(3 * LEAF, 5);
    let mut new = old.clone();
    new[LEAF + 10] ^= 1;
    let (a, mut agent, wants) = leaves_session(&old, &[file("big.bin", &new)]);
    assert!(
        matches!(wants[..], [Want::Leaves { index: 0, .. }]),
        "{wants:?}"
    );
    agent.send(&Message::Delta {
        index: 0,
        chunk: 0,
        delta: sync_core::delta::copy_whole(LEAF as u64),
        last: false,
    });
    agent.send(&Message::Skip {
        index: 0,
        reason: "read failed on the controller: failed to fill whole buffer".to_owned(),
    });
    agent.send(&Message::DataEnd);
    let outcome = match agent.recv() {
        Message::Done(o) => o,
        other => panic!("expected `Done`, got {other:?}"),
    };
    assert_eq!(outcome.problems.len(), 1, "{outcome:?}");
    assert!(outcome.problems[0].1.contains("not sent"), "{outcome:?}");
    assert_eq!(std::fs::read(a.dest().join("big.bin")).unwrap(), old);
    a.assert_untouched();
}

/// Old leaves are vouched for by chaining values taken at their own offsets. A controller that
/// sends short literal chunks first, so that a `COPY` of old leaf `k` lands at another offset,
/// must not get a file installed whose BLAKE3 is not the manifest's hash (the agent would then
/// also certify that hash, and those leaves, for content that has neither).
#[test]
fn a_leaf_copied_to_another_offset_does_not_pass_the_hash_check() {
    use sync_core::hash::{leaf_cv, root_of};
    const LEAF: usize = sync_core::hash::LEAF as usize;
    let old = noise(3 * LEAF, 9);
    // The content that will land: a new first leaf, then the old third leaf at offset LEAF.
    let x = noise(LEAF, 10);
    let mut landed = x.clone();
    landed.extend_from_slice(&old[2 * LEAF..]);
    // The "hash" the agent merges: the old leaf's chaining value at its old offset.
    let fake = root_of(
        &[leaf_cv(0, &x), leaf_cv(2 * LEAF as u64, &old[2 * LEAF..])],
        2 * LEAF as u64,
    )
    .unwrap();
    assert_ne!(fake, blake3_of(&landed));
    let mut entry = file("big.bin", &landed);
    if let Kind::File { hash, .. } = &mut entry.kind {
        *hash = fake;
    }
    let (a, mut agent, wants) = leaves_session(&old, &[entry]);
    assert!(
        matches!(wants[..], [Want::Leaves { index: 0, .. }]),
        "{wants:?}"
    );
    let deltas = [
        sync_core::delta::literal(&x[..LEAF / 2]),
        sync_core::delta::literal(&x[LEAF / 2..]),
        sync_core::delta::copy_whole(LEAF as u64),
    ];
    for (chunk, delta) in deltas.into_iter().enumerate() {
        agent.send(&Message::Delta {
            index: 0,
            chunk: chunk as u32,
            delta,
            last: chunk == 2,
        });
    }
    agent.send(&Message::DataEnd);
    // Asked for again (then not sent) or refused: either way not installed.
    loop {
        match agent.recv() {
            Message::Want(_) => {}
            Message::WantEnd => agent.send(&Message::DataEnd),
            Message::Done(_) | Message::Error(_) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    let on_disk = std::fs::read(a.dest().join("big.bin")).unwrap();
    assert!(
        on_disk != landed,
        "content whose BLAKE3 is not the manifest's hash was installed"
    );
}

/// A controller that hangs up in the middle of a file asked for by its leaves: the agent
/// exits (its leaf thread does not keep it) and leaves no temp file behind.
#[test]
fn a_hang_up_in_the_middle_of_a_leaves_stream_leaves_no_temp_file() {
    const LEAF: usize = sync_core::hash::LEAF as usize;
    let old = noise(4 * LEAF, 7);
    let mut new = old.clone();
    new[10] ^= 1;
    let (a, mut agent, wants) = leaves_session(&old, &[file("big.bin", &new)]);
    assert!(
        matches!(wants[..], [Want::Leaves { index: 0, .. }]),
        "{wants:?}"
    );
    agent.send(&Message::Delta {
        index: 0,
        chunk: 0,
        delta: sync_core::delta::literal(&new[..LEAF]),
        last: false,
    });
    agent.send(&Message::Delta {
        index: 0,
        chunk: 1,
        delta: sync_core::delta::copy_whole(LEAF as u64),
        last: false,
    });
    let ended = agent.finish();
    assert!(!ended.status.success(), "{}", ended.describe());
    let tmp = a.dest().join(".rdist/tmp");
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "temp files left: {left:?}");
    assert_eq!(std::fs::read(a.dest().join("big.bin")).unwrap(), old);
}

/// A source path for a file whose manifest size is the largest there is: the agent reads at
/// most one byte past it, which must not overflow (a panic in a writer took the agent down).
#[test]
fn a_source_for_the_largest_size_is_a_problem_not_a_panic() {
    // One right-sized file first: the agent adds up the sizes of a frame's files.
    let a = Arena::with(|dest| {
        write(&dest.parent().unwrap().join("src/a.txt"), "content");
    });
    let mut huge = file("b.txt", b"content");
    if let Kind::File { size, .. } = &mut huge.kind {
        *size = u64::MAX;
    }
    let mut agent = a.agent();
    let begin = Begin {
        local_sources: true,
        ..a.begin()
    };
    let wants = up_to_wants(&mut agent, begin, &[file("a.txt", b"content"), huge]);
    assert_eq!(wants, [Want::Whole { index: 0 }, Want::Whole { index: 1 }]);
    let source =
        a.sb.path()
            .join("src/a.txt")
            .into_os_string()
            .into_encoded_bytes();
    agent.send(&Message::Sources(vec![
        SourcePath {
            index: 0,
            path: source.clone(),
        },
        SourcePath {
            index: 1,
            path: source,
        },
    ]));
    agent.send(&Message::DataEnd);
    let outcome = match agent.recv() {
        Message::Done(o) => o,
        other => panic!("expected `Done`, got {other:?}"),
    };
    assert_eq!(outcome.files_written, 1, "{outcome:?}");
    assert_eq!(outcome.problems.len(), 1, "{outcome:?}");
    assert_eq!(outcome.problems[0].0, "b.txt", "{outcome:?}");
    let ended = agent.finish();
    assert!(ended.status.success(), "{}", ended.describe());
    assert!(!a.dest().join("b.txt").exists());
}
