//! Syncs that meet at one destination: the destination lock serialises them, a second sync
//! waits for the first (or gives up after `--lock-wait`), and the result is always a mirror.

use std::io::{BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use rdist_tests::assert_mirrors;
use rdist_tests::{Sandbox, rdist_bin, show, snapshot};
use sync_core::proto::{
    Begin, DestBase, Hello, MAGIC, Message, read_frame, recv_hello, write_frame,
};

const VERSION: &str = env!("CARGO_PKG_VERSION");
const DEADLINE: Duration = Duration::from_secs(20);

fn tx(dest: &Path) -> String {
    format!("popen//chdir={}", dest.display())
}

/// Waits for `child` to exit, killing it after the deadline, and collects its output.
fn finish(mut child: Child) -> Output {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("rdist did not finish within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.wait_with_output().unwrap()
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("bad --json ({e}): {}", show(o)))
}

/// An agent session that has taken the destination's lock and keeps it: it was offered a
/// manifest digest the destination does not match and waits for the manifest.
struct Holder {
    child: Child,
    input: Option<ChildStdin>,
}

impl Holder {
    fn hold(sb: &Sandbox, dest: &Path) -> Holder {
        let mut child = Command::new(rdist_bin())
            .args(["agent", "--stdio"])
            .current_dir(sb.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start rdist agent");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx): (_, Receiver<String>) = channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            if let Err(e) = recv_hello(&mut r, VERSION) {
                let _ = tx.send(format!("handshake: {e}"));
                return;
            }
            while let Ok((m, _)) = read_frame(&mut r) {
                if tx.send(m.name().to_owned()).is_err() {
                    return;
                }
            }
        });
        let mut input = child.stdin.take().unwrap();
        let mut buf = MAGIC.to_vec();
        for m in [
            Message::Hello(Hello::ours(VERSION)),
            Message::Begin(Begin {
                dest: dest.display().to_string(),
                ignore: Vec::new(),
                dry_run: false,
                fsync: false,
                adopt: false,
                lock_wait_ms: 0,
                base: DestBase::default(),
                delta_min: sync_core::delta::DELTA_MIN_SIZE,
                leaves: false,
                local_sources: false,
            }),
            Message::Offer {
                digest: [0xab; 32],
                entries: 1,
            },
        ] {
            write_frame(&mut buf, &m).unwrap();
        }
        input.write_all(&buf).unwrap();
        input.flush().unwrap();
        let mut holder = Holder {
            child,
            input: Some(input),
        };
        // The agent asks for the manifest (or, with an older tree there, a summary) only once
        // it holds the lock.
        match rx.recv_timeout(DEADLINE) {
            Ok(name) if name == "NeedManifest" || name == "NeedSummary" => {}
            other => {
                let _ = holder.child.kill();
                panic!("holder agent did not take the lock: {other:?}");
            }
        }
        holder
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Hangs up; the agent abandons the session and releases the lock.
    fn release(mut self) {
        drop(self.input.take());
        let start = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            assert!(start.elapsed() < DEADLINE, "holder agent did not exit");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn project(files: usize) -> Sandbox {
    let sb = Sandbox::new();
    for i in 0..files {
        sb.write(&format!("pkg/m{:02}/f{i}.py", i % 17), format!("x = {i}\n"));
    }
    sb
}

#[test]
fn two_syncs_to_one_destination_started_together_both_succeed() {
    let files = 300;
    let sb = project(files);
    for round in 0..3 {
        // An existing rdist destination (a brand-new one meets another bug, see
        // `concurrent_first_syncs_to_a_new_destination_never_call_it_foreign`), then a change.
        let dest = sb.worker(&format!("w{round}"));
        let o = sb.run(&["sync", "--rsyncdir", "pyproject.toml", "--tx", &tx(&dest)]);
        assert_eq!(o.status.code(), Some(0), "{}", show(&o));
        let start = || {
            sb.rdist()
                .args(["sync", "--rsyncdir", ".", "--json", "--tx", &tx(&dest)])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (a, b) = (start(), start());
        let (a, b) = (finish(a), finish(b));
        assert_eq!(a.status.code(), Some(0), "{}", show(&a));
        assert_eq!(b.status.code(), Some(0), "{}", show(&b));
        assert_mirrors(&sb, &dest);
        // One of them did the work; the other waited for it and found nothing to do.
        let mut sent: Vec<(u64, bool)> = [&a, &b]
            .iter()
            .map(|o| {
                let t = &json(o)["targets"][0];
                (
                    t["files_sent"].as_u64().unwrap(),
                    t["up_to_date"].as_bool().unwrap(),
                )
            })
            .collect();
        sent.sort();
        assert_eq!(
            sent,
            [(0, true), (files as u64, false)],
            "{}\n{}",
            show(&a),
            show(&b)
        );
    }
}

#[test]
fn lock_wait_zero_gives_up_while_another_session_holds_the_destination() {
    let sb = project(5);
    let dest = sb.worker("w");
    let sync = |extra: &[&str]| {
        sb.rdist()
            .args(["sync", "--rsyncdir", ".", "--tx", &tx(&dest)])
            .args(extra)
            .output()
            .unwrap()
    };
    let o = sync(&[]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    sb.write("pkg/new.py", "new");
    let before = snapshot(&dest);

    let holder = Holder::hold(&sb, &dest);
    let o = sync(&["--lock-wait", "0"]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    let msg = format!(
        "destination `{}` is being synced by another rdist (pid {}); gave up after",
        dest.display(),
        holder.pid()
    );
    assert!(err.contains(&msg), "missing `{msg}`\n{}", show(&o));
    // The hint is checked by `locked_destination_error_reaches_the_user_with_its_hint`.
    assert_eq!(
        snapshot(&dest),
        before,
        "a refused sync changed the destination"
    );

    holder.release();
    let o = sync(&["--lock-wait", "0"]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_mirrors(&sb, &dest);
}

#[test]
fn sync_waits_for_the_lock_and_finishes_once_it_is_released() {
    let sb = project(5);
    let dest = sb.worker("w");
    let o = sb.run(&["sync", "--rsyncdir", ".", "--tx", &tx(&dest)]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    sb.write("pkg/new.py", "new");
    let before = snapshot(&dest);

    let holder = Holder::hold(&sb, &dest);
    let mut waiting = sb
        .rdist()
        .args([
            "sync",
            "--rsyncdir",
            ".",
            "--lock-wait",
            "30",
            "--tx",
            &tx(&dest),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    assert!(
        waiting.try_wait().unwrap().is_none(),
        "the second sync did not wait for the lock"
    );
    assert_eq!(
        snapshot(&dest),
        before,
        "changed while another session held the lock"
    );
    holder.release();
    let o = finish(waiting);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_mirrors(&sb, &dest);
}

#[test]
fn concurrent_first_syncs_to_a_new_destination_never_call_it_foreign() {
    // A race: each round is a fresh destination and four syncs; the window is microseconds
    // wide, so this catches it in most runs rather than every one.
    let sb = project(3);
    for round in 0..60 {
        let dest = sb.worker(&format!("w{round}"));
        let children: Vec<Child> = (0..4)
            .map(|_| {
                sb.rdist()
                    .args(["sync", "--rsyncdir", ".", "--tx", &tx(&dest)])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for o in children.into_iter().map(finish) {
            assert_eq!(o.status.code(), Some(0), "round {round}: {}", show(&o));
        }
        assert_mirrors(&sb, &dest);
    }
}

#[test]
fn locked_destination_error_reaches_the_user_with_its_hint() {
    let sb = project(3);
    let dest = sb.worker("w");
    let sync = || {
        sb.run(&[
            "sync",
            "--rsyncdir",
            ".",
            "--lock-wait",
            "0",
            "--tx",
            &tx(&dest),
        ])
    };
    let o = sync();
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    sb.write("pkg/new.py", "new");
    let holder = Holder::hold(&sb, &dest);
    // A race between the controller's offer and the agent's refusal: run it enough times.
    for _ in 0..20 {
        let o = sync();
        assert_eq!(o.status.code(), Some(1), "{}", show(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        let want = format!(
            "error: sync to `{0}` failed: destination `{0}` is being synced by another rdist (pid {1})",
            dest.display(),
            holder.pid()
        );
        assert!(err.contains(&want), "{}", show(&o));
        assert!(
            err.contains("hint: wait for the other sync to finish, or raise `--lock-wait`"),
            "{}",
            show(&o)
        );
    }
    holder.release();
}
