//! Killing a sync part-way, with the real binary: the controller, the agent, or the disk
//! running out. Whatever stops a sync, every file in the worker directory must be byte-identical
//! to its old or its new version (never partial, never something else), no temp file may show
//! outside `.rdist`, and the next sync must complete the mirror.
//!
//! Kill points come from a small deterministic generator seeded per iteration, spread over the
//! measured length of a full sync. Every wait has a timeout, so a hang fails instead of
//! blocking the run.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdist_tests::{Sandbox, Tmpfs, fixed_ignored, show, snap_diff, snapshot, snapshot_filtered};

/// splitmix64: deterministic contents and kill points.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A float in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(len + 8);
        while v.len() < len {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(len);
        v
    }
}

fn seed_of(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// A tree version: project-relative path -> content.
type Version = BTreeMap<String, Arc<Vec<u8>>>;

/// Version A (`b == false`) or B of the kill tree: `small` small files in 40 packages and a
/// few big files. B changes every file's content, drops every tenth small file, adds new files
/// (some in new directories), edits the first big file in place (a delta) and swaps the others'
/// contents (local copies).
fn tree(b: bool, small: usize, big_mib: &[usize]) -> Version {
    let mut v = Version::new();
    let tag = if b { "B" } else { "A" };
    for i in 0..small {
        let path = format!("pkg{:02}/mod{:04}.py", i % 40, i);
        if b && i % 10 == 9 {
            continue;
        }
        let mut r = Rng(seed_of(&path) ^ u64::from(b));
        let len = 64 + (r.next() % 3000) as usize;
        let mut data = format!("# {path} version {tag}\n").into_bytes();
        data.extend(r.bytes(len));
        v.insert(path, Arc::new(data));
    }
    if b {
        for i in 0..small / 10 {
            let path = if i % 2 == 0 {
                format!("pkg{:02}/added{i:04}.py", i % 40)
            } else {
                format!("new{:02}/sub/added{i:04}.py", i % 7)
            };
            let mut r = Rng(seed_of(&path));
            let mut data = format!("# {path} version B\n").into_bytes();
            data.extend(r.bytes(100 + i));
            v.insert(path, Arc::new(data));
        }
    }
    let big_a = |k: usize| {
        let path = format!("data/big{k}.bin");
        Rng(seed_of(&path)).bytes(big_mib[k] << 20)
    };
    for k in 0..big_mib.len() {
        let path = format!("data/big{k}.bin");
        let data = match (b, k) {
            (false, _) => big_a(k),
            // Scattered edits: the agent asks for a delta.
            (true, 0) => {
                let mut d = big_a(0);
                for at in (0..d.len()).step_by(1 << 20) {
                    let end = (at + 4096).min(d.len());
                    for x in &mut d[at..end] {
                        *x = !*x;
                    }
                }
                d
            }
            // The others swap contents in pairs: the agent copies each from the other's old
            // file, both staged before either is replaced.
            (true, k) if k % 2 == 1 && k + 1 < big_mib.len() => big_a(k + 1),
            (true, k) if k % 2 == 0 => big_a(k - 1),
            (true, k) => {
                let mut d = big_a(k);
                d.reverse();
                d
            }
        };
        v.insert(path, Arc::new(data));
    }
    v
}

/// Makes the project hold exactly `v` (plus its `pyproject.toml`).
fn write_version(sb: &Sandbox, old: &Version, v: &Version) {
    for p in old.keys() {
        if !v.contains_key(p) {
            std::fs::remove_file(sb.proj().join(p)).unwrap();
        }
    }
    for (p, data) in v {
        rdist_tests::write(&sb.proj().join(p), data.as_slice());
    }
}

/// Checks the worker directory mid-way between two versions: every entry outside `.rdist` is a
/// directory of either version or a file equal to its `old` or `new` content; a file in both
/// versions is never missing.
fn assert_old_or_new(dest: &Path, old: &Version, new: &Version, when: &str) {
    let dirs: BTreeSet<String> = old
        .keys()
        .chain(new.keys())
        .flat_map(|p| {
            let parts: Vec<&str> = p.split('/').collect();
            (1..parts.len())
                .map(|k| parts[..k].join("/"))
                .collect::<Vec<_>>()
        })
        .collect();
    let mut seen = BTreeSet::new();
    for e in snapshot(dest) {
        if e.path == "pyproject.toml" {
            continue;
        }
        match e.kind {
            "dir" => assert!(
                dirs.contains(&e.path),
                "{when}: unexpected directory `{}` in the worker",
                e.path
            ),
            "file" => {
                let is_old = old.get(&e.path).is_some_and(|d| **d == e.data);
                let is_new = new.get(&e.path).is_some_and(|d| **d == e.data);
                assert!(
                    is_old || is_new,
                    "{when}: `{}` ({} bytes) is neither its old ({:?} bytes) nor its new ({:?} \
                     bytes) version: a partial or stray file",
                    e.path,
                    e.data.len(),
                    old.get(&e.path).map(|d| d.len()),
                    new.get(&e.path).map(|d| d.len()),
                );
                seen.insert(e.path);
            }
            other => panic!("{when}: unexpected {other} `{}` in the worker", e.path),
        }
    }
    for p in old.keys().filter(|p| new.contains_key(*p)) {
        assert!(
            seen.contains(p),
            "{when}: `{p}` is in both versions but missing from the worker"
        );
    }
}

fn assert_mirrors(sb: &Sandbox, dest: &Path, when: &str) {
    let want = snapshot_filtered(&sb.proj(), &fixed_ignored);
    let got = snapshot(dest);
    assert!(
        want == got,
        "{when}: worker differs from the project:\n{}",
        snap_diff(&want, &got)
    );
}

/// `state`, `ppid` and `pgrp` of a process, from `/proc/<pid>/stat`.
fn proc_stat(pid: u32) -> Option<(char, u32, u32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let mut f = rest.split(' ');
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    let pgrp = f.next()?.parse().ok()?;
    Some((state, ppid, pgrp))
}

/// Live (not zombie) processes whose stat matches `pred(ppid, pgrp)`.
fn live_procs(pred: impl Fn(u32, u32) -> bool) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            proc_stat(pid)
                .is_some_and(|(st, ppid, pgrp)| st != 'Z' && st != 'X' && pred(ppid, pgrp))
        })
        .collect()
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// The `rdist agent --stdio` children of `controller`.
fn agents_of(controller: u32) -> Vec<u32> {
    live_procs(|ppid, _| ppid == controller)
        .into_iter()
        .filter(|&p| cmdline(p).contains("agent"))
        .collect()
}

/// Sends SIGKILL to a process that is not our child (std's `Child::kill` covers those that
/// are); `unsafe` is forbidden here, so through kill(1).
fn sigkill(pid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// Waits until no live process is left in process group `pgrp` (the controller's, which its
/// agent shares even once orphaned).
fn wait_group_gone(pgrp: u32, limit: Duration) {
    let start = Instant::now();
    loop {
        let left = live_procs(|_, g| g == pgrp);
        if left.is_empty() {
            return;
        }
        if start.elapsed() > limit {
            for p in &left {
                sigkill(*p);
            }
            panic!("processes {left:?} of the killed sync still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits for `child` up to `limit`; kills it and panics on timeout.
fn wait_timeout(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {limit:?} (hung)");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A sandbox with its worker directory and the `--tx` spec for it.
struct Setup {
    sb: Sandbox,
    dest: PathBuf,
    tx: String,
}

impl Setup {
    fn new() -> Setup {
        let sb = Sandbox::new();
        let dest = sb.worker("w");
        let tx = format!("popen//chdir={}", dest.display());
        Setup { sb, dest, tx }
    }

    fn command(&self) -> Command {
        let mut c = self.sb.rdist();
        c.args(["sync", "--rsyncdir", ".", "--tx", &self.tx]);
        c
    }

    /// A sync run to completion (bounded); returns its output.
    fn sync(&self, when: &str) -> std::process::Output {
        let mut child = self
            .command()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (out, err) = drain(&mut child);
        let status = wait_timeout(&mut child, Duration::from_secs(60), when);
        std::process::Output {
            status,
            stdout: out.join().unwrap(),
            stderr: err.join().unwrap(),
        }
    }
}

type Drain = std::thread::JoinHandle<Vec<u8>>;

/// Reads a child's stdout and stderr on threads, so it never blocks on a full pipe.
fn drain(child: &mut Child) -> (Drain, Drain) {
    let read = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    (
        read(Box::new(child.stdout.take().unwrap())),
        read(Box::new(child.stderr.take().unwrap())),
    )
}

const SMALL_FILES: usize = 2_000;
const BIG_MIB: [usize; 3] = [4, 6, 12];
const ITERATIONS: usize = 6;

/// Syncs version A, then returns the setup, both versions and how long the full sync took.
fn prepared() -> (Setup, Version, Version, Duration) {
    let s = Setup::new();
    let a = tree(false, SMALL_FILES, &BIG_MIB);
    let b = tree(true, SMALL_FILES, &BIG_MIB);
    write_version(&s.sb, &Version::new(), &a);
    let t = Instant::now();
    let out = s.sync("first sync");
    let took = t.elapsed();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_mirrors(&s.sb, &s.dest, "after the first sync");
    eprintln!("full sync of version A took {took:?}");
    (s, a, b, took)
}

/// Syncs again after the kill described by `when` (`what` says how it ended): it must succeed
/// and leave a mirror. Returns how long it took.
fn resync(s: &Setup, when: &str, what: &str) -> Duration {
    let t = Instant::now();
    let out = s.sync(when);
    let took = t.elapsed();
    eprintln!("{when}: {what}, resync took {took:?}");
    assert_eq!(out.status.code(), Some(0), "{when}: {}", show(&out));
    assert_mirrors(&s.sb, &s.dest, &format!("{when}, then synced"));
    took
}

/// The kill point of iteration `i`: stratified over `[0, span)` so the iterations cover the
/// whole sync, jittered by a generator seeded with the iteration.
fn kill_point(i: usize, span: Duration) -> Duration {
    let u = Rng(0x5eed ^ i as u64).unit();
    span.mul_f64((i as f64 + u) / ITERATIONS as f64)
}

#[test]
fn killed_controller_leaves_every_file_old_or_new() {
    let (s, a, b, took) = prepared();
    let mut interrupted = 0;
    let (mut old, mut new) = (&a, &b);
    let mut span = took;
    for i in 0..ITERATIONS {
        write_version(&s.sb, old, new);
        let delay = kill_point(i, span);
        let mut child = s
            .command()
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        std::thread::sleep(delay);
        let done = child.try_wait().unwrap();
        if done.is_none() {
            interrupted += 1;
            child.kill().unwrap();
        }
        child.wait().unwrap();
        // The orphaned agent notices the closed pipe and exits (after the step it is in, which
        // on a loaded machine can take a while); files it was installing are renamed whole or
        // not at all.
        wait_group_gone(pid, Duration::from_secs(15).max(span * 4));
        let when = format!("iteration {i}, controller killed after {delay:?}");
        assert_old_or_new(&s.dest, old, new, &when);

        let what = format!("interrupted {}", done.is_none());
        span = span.max(resync(&s, &when, &what));
        (old, new) = (new, old);
    }
    assert!(
        interrupted >= ITERATIONS / 2,
        "only {interrupted} of {ITERATIONS} syncs were still running at their kill point"
    );
}

#[test]
fn killed_agent_fails_the_sync_cleanly() {
    let (s, a, b, took) = prepared();
    let dest = s.dest.display().to_string();
    let mut interrupted = 0;
    let mut span = took;
    let (mut old, mut new) = (&a, &b);
    for i in 0..ITERATIONS {
        write_version(&s.sb, old, new);
        let delay = kill_point(i, span);
        let mut child = s
            .command()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (out, err) = drain(&mut child);
        let pid = child.id();
        let start = Instant::now();
        std::thread::sleep(delay);
        // The agent may not have started yet at an early kill point: wait for it.
        let mut killed = None;
        while killed.is_none() && child.try_wait().unwrap().is_none() {
            if let Some(&agent) = agents_of(pid).first() {
                sigkill(agent);
                killed = Some(start.elapsed());
            } else if start.elapsed() > delay + Duration::from_secs(5) {
                let _ = child.kill();
                panic!("iteration {i}: no agent child of the controller after 5 s");
            } else {
                std::thread::sleep(Duration::from_micros(500));
            }
        }
        let status = wait_timeout(&mut child, Duration::from_secs(10), "controller");
        let o = std::process::Output {
            status,
            stdout: out.join().unwrap(),
            stderr: err.join().unwrap(),
        };
        let when = format!("iteration {i}, agent killed at {killed:?}");
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!stderr.contains("panicked"), "{when}: {}", show(&o));
        if o.status.code() == Some(0) {
            // The agent had finished its work before the signal landed.
            assert_mirrors(&s.sb, &s.dest, &when);
        } else {
            interrupted += 1;
            assert_eq!(o.status.code(), Some(1), "{when}: {}", show(&o));
            assert!(
                stderr
                    .lines()
                    .any(|l| l.starts_with("error:") && l.contains(&dest)),
                "{when}: no `error:` line naming the destination\n{}",
                show(&o)
            );
            for l in stderr.lines() {
                let lower = l.to_lowercase();
                if lower.contains("broken pipe") || lower.contains("connection closed") {
                    assert!(
                        l.contains(&dest),
                        "{when}: transport error without context: {l:?}\n{}",
                        show(&o)
                    );
                }
            }
            assert_old_or_new(&s.dest, old, new, &when);
        }
        let what = format!("exit {:?}", o.status.code());
        span = span.max(resync(&s, &when, &what));
        (old, new) = (new, old);
    }
    assert!(
        interrupted >= ITERATIONS / 2,
        "only {interrupted} of {ITERATIONS} agents were killed while the sync was running"
    );
}

/// A sandbox whose worker directory is a tmpfs; fields drop in order, so the tmpfs is unmounted
/// before the sandbox is deleted.
struct SmallDisk {
    _mount: Tmpfs,
    s: Setup,
}

/// A sandbox whose worker directory is a 2 MiB tmpfs, or `None` (with a note) where this
/// process may not mount one.
fn small_disk() -> Option<SmallDisk> {
    let s = Setup::new();
    match Tmpfs::mount(&s.dest, "size=2m") {
        Ok(m) => Some(SmallDisk { _mount: m, s }),
        Err(why) => {
            eprintln!(
                "note: skipped: cannot mount a tmpfs ({why}); run as root to cover disk-full"
            );
            None
        }
    }
}

/// The stderr lines that report `No space left on device` for one file of `paths`.
fn enospc_lines<'a>(stderr: &'a str, paths: &[&String]) -> Vec<&'a str> {
    stderr
        .lines()
        .filter(|l| l.contains("No space left on device"))
        .filter(|l| paths.iter().any(|p| l.contains(p.as_str())))
        .collect()
}

/// Fills the worker's disk with many small files (batched on the wire): each file that does not
/// fit is a per-file error, the run exits 1, and nothing partial appears.
#[test]
fn full_disk_fails_per_file_and_keeps_synced_files() {
    let Some(disk) = small_disk() else {
        return;
    };
    let s = &disk.s;
    // About 300 KiB that fits.
    let mut old = Version::new();
    for i in 0..30 {
        let p = format!("pkg/keep{i:02}.py");
        old.insert(p.clone(), Arc::new(Rng(seed_of(&p)).bytes(10_000)));
    }
    write_version(&s.sb, &Version::new(), &old);
    let out = s.sync("first sync");
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));

    // Then 48 files of 64 KiB (3 MiB) and new content for a few synced files.
    let mut new = old.clone();
    for i in 0..48 {
        let p = format!("blobs/b{i:02}.bin");
        new.insert(p.clone(), Arc::new(Rng(seed_of(&p)).bytes(64 << 10)));
    }
    for i in 0..5 {
        let p = format!("pkg/keep{i:02}.py");
        new.insert(p.clone(), Arc::new(Rng(seed_of(&p) ^ 1).bytes(12_000)));
    }
    write_version(&s.sb, &old, &new);
    let out = s.sync("sync onto a full disk");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(!stderr.contains("panicked"), "{}", show(&out));
    let blobs: Vec<&String> = new.keys().filter(|p| p.starts_with("blobs/")).collect();
    assert!(
        !enospc_lines(&stderr, &blobs).is_empty(),
        "no per-file `No space left on device` error\n{}",
        show(&out)
    );
    assert_old_or_new(&s.dest, &old, &new, "after the full-disk sync");
    for (p, data) in old.iter().skip(5) {
        assert_eq!(
            std::fs::read(s.dest.join(p)).ok().as_deref(),
            Some(data.as_slice()),
            "`{p}` was synced before and did not change, yet it changed"
        );
    }

    // Once the project fits again, the next sync completes the mirror.
    let fits: Version = new
        .iter()
        .filter(|(p, _)| !p.starts_with("blobs/"))
        .map(|(p, d)| (p.clone(), d.clone()))
        .collect();
    write_version(&s.sb, &new, &fits);
    let out = s.sync("sync after freeing space");
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_mirrors(&s.sb, &s.dest, "after freeing space");
}

/// A file bigger than the disk goes over the wire in chunks; the chunk that does not fit must
/// fail that file alone (with its `No space left on device`), not the whole sync. Today the
/// agent drops the failed stream and then takes the file's next chunk for data it never asked
/// for: the target fails with "peer sent invalid data: data for file #N that was not asked
/// for", and the disk-full cause is lost.
#[test]
fn full_disk_during_a_streamed_file_is_a_per_file_error() {
    let Some(disk) = small_disk() else {
        return;
    };
    let s = &disk.s;
    let mut old = Version::new();
    old.insert("pkg/a.py".into(), Arc::new(b"a = 1\n".to_vec()));
    write_version(&s.sb, &Version::new(), &old);
    let out = s.sync("first sync");
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));

    let mut new = old.clone();
    new.insert("pkg/a.py".into(), Arc::new(b"a = 2\n".to_vec()));
    // 3 MiB, streamed in 1 MiB frames; the second or third cannot be written.
    new.insert("data/huge.bin".into(), Arc::new(Rng(7).bytes(3 << 20)));
    write_version(&s.sb, &old, &new);
    let out = s.sync("sync of a file bigger than the disk");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(!stderr.contains("panicked"), "{}", show(&out));
    let huge = "data/huge.bin".to_owned();
    assert!(
        !enospc_lines(&stderr, &[&huge]).is_empty(),
        "no per-file `No space left on device` error for `{huge}`\n{}",
        show(&out)
    );
    assert!(
        !stderr.lines().any(|l| l.starts_with("error:")),
        "one file that does not fit failed the whole target\n{}",
        show(&out)
    );
    assert_old_or_new(&s.dest, &old, &new, "after the full-disk sync");
    assert_eq!(
        std::fs::read(s.dest.join("pkg/a.py")).unwrap(),
        b"a = 2\n",
        "the small file that fits was not synced"
    );
}
