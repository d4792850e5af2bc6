//! `socket=` workers against a real `rdist serve` on 127.0.0.1: where sessions land below the
//! root, the shared token (challenge and response), hostile peers that must be refused without
//! taking the server down or writing outside its root, concurrent clients, a server killed in
//! the middle of a sync (and restarted), and a graceful stop on SIGTERM.

use std::io::{BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rdist_tests::sshd::{Serve, TOKEN, free_port, output_within, wait_output, wait_until};
use rdist_tests::{Sandbox, Snap, show, snapshot, snapshot_filtered};
use sync_core::auth::{Key, client};
use sync_core::proto::{
    Begin, DestBase, Hello, MAGIC, Message, read_frame, recv_hello, send_hello, write_frame,
};

const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Longest any one wait here may take; a hang fails the test instead of stalling the run.
const LIMIT: Duration = Duration::from_secs(30);

use rdist_tests::assert_mirrors;
use rdist_tests::{assert_ok, json_of as json, stderr_of as stderr};

fn project() -> Sandbox {
    let sb = Sandbox::new();
    sb.write("pkg/__init__.py", "");
    sb.write("pkg/core.py", "def f():\n    return 1\n");
    sb.write("pkg/data/table.csv", "a,b\n1,2\n");
    sb.write("tests/test_core.py", "from pkg.core import f\n");
    std::os::unix::fs::symlink("core.py", sb.proj().join("pkg/alias.py")).unwrap();
    sb.write(".git/HEAD", "ref: refs/heads/main\n");
    sb
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `<project dir name>-<first 8 hex of BLAKE3(canonical project path)>`, the directory a
/// project without `chdir=` gets below the server's root.
fn project_key(sb: &Sandbox) -> String {
    let root = std::fs::canonicalize(sb.proj()).unwrap();
    let f = sb.path().join("project-path");
    std::fs::write(&f, root.as_os_str().as_encoded_bytes()).unwrap();
    let len = std::fs::metadata(&f).unwrap().len();
    let hash = sync_core::hash::hash_file(&f, len).unwrap();
    std::fs::remove_file(&f).unwrap();
    format!("proj-{}", hex(&hash[..4]))
}

/// `rdist sync --rsyncdir . --tx SPEC --token-file FILE EXTRA...` (no `RDIST_TOKEN`).
fn sync_cmd(sb: &Sandbox, serve: &Serve, tx: &str, extra: &[&str]) -> Command {
    let mut c = sb.rdist();
    c.env_remove("RDIST_TOKEN")
        .args(["sync", "--rsyncdir", ".", "--tx", tx, "--token-file"])
        .arg(serve.token_file())
        .args(extra);
    c
}

fn sync(sb: &Sandbox, serve: &Serve, tx: &str, extra: &[&str]) -> Output {
    output_within(&mut sync_cmd(sb, serve, tx, extra), LIMIT)
}

/// A sync of the project to `root/good` that must work: the server is still serving.
#[track_caller]
fn assert_still_serves(serve: &Serve) {
    let sb = project();
    let o = sync(
        &sb,
        serve,
        &format!("socket={}//chdir=good", serve.addr()),
        &[],
    );
    assert_ok(&o);
    assert_mirrors(&sb, &serve.root().join("good"));
}

/// Every entry of `dir` except those below the server's root, for checking that nothing was
/// written next to the root.
fn outside_root(serve: &Serve) -> Vec<Snap> {
    let dir = serve.root().parent().unwrap().to_owned();
    snapshot_filtered(&dir, &|rel| {
        rel == "root" || rel.starts_with("root/") || rel == "serve.log"
    })
}

/// How many sessions the server has refused so far.
fn refusals(serve: &Serve) -> usize {
    serve.log().matches(": refused: ").count()
}

#[track_caller]
fn wait_refusals(serve: &Serve, n: usize) {
    assert!(
        wait_until(LIMIT, || refusals(serve) >= n),
        "the server logged {} refusals, want {n}; log:\n{}",
        refusals(serve),
        serve.log()
    );
}

#[test]
fn good_token_syncs_into_a_per_project_dir_below_the_root() {
    let t = tempfile::tempdir().unwrap();
    let serve = Serve::start(t.path());
    let sb = project();
    let spec = format!("socket={}", serve.addr());
    let o = sync(&sb, &serve, &spec, &["--json"]);
    assert_ok(&o);
    let key = project_key(&sb);
    assert_mirrors(&sb, &serve.root().join(&key));
    let j = json(&o);
    assert_eq!(
        j["targets"][0]["dest"],
        format!("{}/{key}", serve.addr()),
        "{}",
        show(&o)
    );
    assert!(serve.log().contains(": done"), "{}", serve.log());

    // The token from the environment works as well as the file.
    let o = output_within(
        sb.rdist().env("RDIST_TOKEN", TOKEN).args([
            "sync",
            "--rsyncdir",
            ".",
            "--json",
            "--tx",
            &spec,
        ]),
        LIMIT,
    );
    assert_ok(&o);
    assert_eq!(json(&o)["targets"][0]["up_to_date"], true, "{}", show(&o));
}

#[test]
fn compress_sends_fewer_bytes_for_the_same_mirror() {
    let t = tempfile::tempdir().unwrap();
    let serve = Serve::start(t.path());
    let sb = project();
    let module: String = (0..3000)
        .map(|i| format!("def handler_{i}(request):\n    return respond(request, {i})\n\n"))
        .collect();
    sb.write("pkg/handlers.py", &module);
    let wire = |dir: &str, extra: &[&str]| {
        let spec = format!("socket={}//chdir={dir}", serve.addr());
        let o = sync(&sb, &serve, &spec, &[&["--json"], extra].concat());
        assert_ok(&o);
        let summary = stderr(&o);
        assert_eq!(
            summary.contains(" on the wire"),
            extra.contains(&"--compress"),
            "{summary}"
        );
        assert_mirrors(&sb, &serve.root().join(dir));
        json(&o)["targets"][0]["wire_bytes"].as_u64().unwrap()
    };
    let plain = wire("plain", &[]);
    let packed = wire("packed", &["--compress"]);
    assert!(
        packed * 4 < plain,
        "--compress sent {packed} bytes, without it {plain}"
    );
    // An edit travels compressed too, and the result is the same.
    sb.write("pkg/handlers.py", module.replace("respond(", "answer("));
    let plain = wire("plain", &[]);
    let packed = wire("packed", &["--compress"]);
    assert!(packed < plain, "edit: {packed} compressed, {plain} not");
}

#[test]
fn chdir_lands_below_the_root() {
    let t = tempfile::tempdir().unwrap();
    let serve = Serve::start(t.path());
    let sb = project();
    let o = sync(
        &sb,
        &serve,
        &format!("socket={}//chdir=sub", serve.addr()),
        &[],
    );
    assert_ok(&o);
    assert_mirrors(&sb, &serve.root().join("sub"));
    let names: Vec<_> = std::fs::read_dir(serve.root())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["sub"], "only `sub` below the root");
}

#[test]
fn bad_token_is_refused_with_a_hint_and_the_server_keeps_serving() {
    let t = tempfile::tempdir().unwrap();
    let serve = Serve::start(t.path());
    let sb = project();
    let bad = sb.path().join("bad-token");
    std::fs::write(&bad, "not-the-token\n").unwrap();
    let o = output_within(
        sb.rdist()
            .env_remove("RDIST_TOKEN")
            .args(["sync", "--rsyncdir", ".", "--token-file"])
            .arg(&bad)
            .args(["--tx", &format!("socket={}//chdir=w", serve.addr())]),
        LIMIT,
    );
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let err = stderr(&o);
    assert!(err.contains("authentication failed"), "{}", show(&o));
    assert!(err.contains("hint:"), "{}", show(&o));
    assert!(
        !serve.root().join("w").exists(),
        "a refused client created its directory"
    );
    wait_refusals(&serve, 1);
    assert_still_serves(&serve);
}

#[test]
fn socket_worker_without_a_token_is_a_usage_error() {
    let t = tempfile::tempdir().unwrap();
    let serve = Serve::start(t.path());
    let sb = project();
    let o = output_within(
        sb.rdist().env_remove("RDIST_TOKEN").args([
            "sync",
            "--rsyncdir",
            ".",
            "--tx",
            &format!("socket={}", serve.addr()),
        ]),
        LIMIT,
    );
    assert_eq!(o.status.code(), Some(4), "{}", show(&o));
    let err = stderr(&o);
    assert!(err.contains("token"), "{}", show(&o));
    assert!(err.contains("hint:"), "{}", show(&o));
    assert!(
        !serve.log().contains("connected"),
        "a usage error must not connect: {}",
        serve.log()
    );
}

#[test]
fn server_that_is_not_running_fails_naming_the_address() {
    let sb = project();
    let t = tempfile::tempdir().unwrap();
    let token = t.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let o = output_within(
        sb.rdist()
            .env_remove("RDIST_TOKEN")
            .args(["sync", "--rsyncdir", ".", "--token-file"])
            .arg(&token)
            .args(["--connect-timeout", "3", "--tx", &format!("socket={addr}")]),
        LIMIT,
    );
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let err = stderr(&o);
    assert!(
        err.lines()
            .any(|l| l.starts_with("error:") && l.contains(&addr)),
        "{}",
        show(&o)
    );
    assert!(err.contains("hint:"), "{}", show(&o));
}

/// A raw connection to the server, every read bounded by [`LIMIT`].
struct Raw {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Raw {
    fn connect(serve: &Serve) -> Raw {
        let s = TcpStream::connect(serve.addr()).unwrap();
        s.set_read_timeout(Some(LIMIT)).unwrap();
        Raw {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        }
    }

    /// The server's magic and hello, then ours.
    fn handshake(&mut self) {
        send_hello(&mut self.w, VERSION).unwrap();
        let (hello, noise) = recv_hello(&mut self.r, VERSION).unwrap();
        assert!(
            noise.is_empty(),
            "noise before the server's hello: {noise:?}"
        );
        assert_eq!(hello.version, VERSION);
    }

    /// Handshake and authentication with the right token.
    fn authenticated(serve: &Serve) -> Raw {
        let mut raw = Raw::connect(serve);
        raw.handshake();
        client(&mut raw.r, &mut raw.w, &Key::from_token(TOKEN)).unwrap();
        raw
    }

    fn send(&mut self, m: &Message) {
        write_frame(&mut self.w, m).unwrap();
        self.w.flush().unwrap();
    }

    /// Reads whatever the server still sends until it closes the connection (an error frame,
    /// say); panics if it keeps the connection open.
    fn rest_until_closed(&mut self) -> Vec<u8> {
        let mut rest = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match self.r.read(&mut buf) {
                Ok(0) => return rest,
                Ok(n) => rest.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return rest,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => panic!("the server kept the connection open ({e})"),
            }
        }
    }
}

/// The frames in `bytes`, up to the first undecodable one.
fn frames(mut bytes: &[u8]) -> Vec<Message> {
    let mut out = Vec::new();
    while let Ok((m, _)) = read_frame(&mut bytes) {
        out.push(m);
    }
    out
}

fn begin(dest: &str) -> Message {
    Message::Begin(Begin {
        dest: dest.to_owned(),
        ignore: Vec::new(),
        dry_run: false,
        fsync: false,
        adopt: true,
        lock_wait_ms: 0,
        base: DestBase::Cwd,
        delta_min: sync_core::delta::DELTA_MIN_SIZE,
        leaves: false,
        local_sources: false,
    })
}

#[test]
fn garbage_instead_of_the_protocol_is_refused_and_the_server_keeps_serving() {
    let t = tempfile::tempdir().unwrap();
    let serve = Serve::start(t.path());
    let before = outside_root(&serve);
    let mut raw = Raw::connect(&serve);
    // More noise than the server skips looking for the magic, with no magic in it.
    let mut x: u32 = 7;
    let garbage: Vec<u8> = (0..80 << 10)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            ((x >> 16) as u8) | 1
        })
        .collect();
    let _ = raw.w.write_all(&garbage);
    let _ = raw.w.shutdown(Shutdown::Write);
    let rest = raw.rest_until_closed();
    // All the server said is its own magic and hello.
    assert!(rest.starts_with(&MAGIC), "{rest:?}");
    let said = frames(&rest[MAGIC.len()..]);
    assert!(
        matches!(said.as_slice(), [Message::Hello(Hello { .. })]),
        "{said:?}"
    );
    wait_refusals(&serve, 1);
    assert!(
        serve.log().contains("did not start the rdist protocol"),
        "{}",
        serve.log()
    );
    assert_eq!(std::fs::read_dir(serve.root()).unwrap().count(), 0);
    assert_eq!(outside_root(&serve), before);
    assert_still_serves(&serve);
}

#[test]
fn oversized_frame_is_refused_before_and_after_authentication() {
    let t = tempfile::tempdir().unwrap();
    let serve = Serve::start(t.path());

    // Before authentication: the server's challenge, then it hangs up.
    let mut raw = Raw::connect(&serve);
    raw.handshake();
    let _ = raw.w.write_all(&u32::MAX.to_be_bytes());
    let _ = raw.w.write_all(&[0u8; 64]);
    let said = frames(&raw.rest_until_closed());
    assert!(
        matches!(said.as_slice(), [Message::Challenge { .. }]),
        "{said:?}"
    );
    wait_refusals(&serve, 1);

    // After authentication: an error frame naming the limit, then it hangs up.
    let mut raw = Raw::authenticated(&serve);
    let _ = raw.w.write_all(&((64u32 << 20) + 1).to_be_bytes());
    let said = frames(&raw.rest_until_closed());
    match said.as_slice() {
        [Message::Error(e)] => assert!(e.contains("exceeds"), "{e}"),
        other => panic!("want one error frame, got {other:?}"),
    }
    wait_refusals(&serve, 2);
    assert!(serve.log().contains("exceeds"), "{}", serve.log());
    assert_eq!(std::fs::read_dir(serve.root()).unwrap().count(), 0);
    assert_still_serves(&serve);
}

#[test]
fn authenticated_begin_outside_the_root_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let serve = Serve::start(t.path());
    // A directory next to the root, and a link inside the root pointing at it.
    let outside = t.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, serve.root().join("link")).unwrap();
    let before = outside_root(&serve);
    let root_before = snapshot(&serve.root());

    let dests = [
        "../escape",
        "/etc",
        "/tmp/rdist-escape-test",
        "a/../../escape",
        "link",
        "link/sub",
        "",
        ".",
    ];
    for (i, dest) in dests.iter().enumerate() {
        let mut raw = Raw::authenticated(&serve);
        raw.send(&begin(dest));
        let said = frames(&raw.rest_until_closed());
        match said.as_slice() {
            [Message::Error(e)] => assert!(
                e.contains("outside") || e.contains("relative"),
                "dest `{dest}`: {e}"
            ),
            other => panic!("dest `{dest}`: want one error frame, got {other:?}"),
        }
        wait_refusals(&serve, i + 1);
    }
    assert_eq!(
        outside_root(&serve),
        before,
        "something was written outside the root"
    );
    assert_eq!(snapshot(&serve.root()), root_before);
    assert!(!t.path().join("escape").exists());
    assert!(!Path::new("/tmp/rdist-escape-test").exists());
    assert_still_serves(&serve);
}

#[test]
fn two_clients_at_once_to_different_dirs_both_sync() {
    let t = tempfile::tempdir().unwrap();
    let serve = Serve::start(t.path());
    let (one, two) = (project(), project());
    two.write("pkg/only_in_two.py", "x = 2\n");
    let spawn = |sb: &Sandbox, dir: &str| {
        sync_cmd(
            sb,
            &serve,
            &format!("socket={}//chdir={dir}", serve.addr()),
            &[],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
    };
    let (a, b) = (spawn(&one, "one"), spawn(&two, "two"));
    let (a, b) = (wait_output(a, LIMIT), wait_output(b, LIMIT));
    assert_ok(&a);
    assert_ok(&b);
    assert_mirrors(&one, &serve.root().join("one"));
    assert_mirrors(&two, &serve.root().join("two"));
}

/// A tree worth interrupting: 300 small files and one of 30 MiB.
fn big_project() -> Sandbox {
    let sb = project();
    for i in 0..300 {
        sb.write(
            &format!("many/p{:02}/m{i:03}.py", i % 20),
            format!("# module {i}\n{}\n", "x = 1\n".repeat(i % 50)),
        );
    }
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let big: Vec<u8> = (0..(30usize << 20) / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect();
    sb.write("data/big.bin", big);
    sb
}

/// Whether the agent has started writing file data into `dest`'s staging area.
fn staging_started(dest: &Path) -> bool {
    std::fs::read_dir(dest.join(".rdist/tmp")).is_ok_and(|it| {
        it.flatten()
            .any(|e| e.metadata().is_ok_and(|m| m.len() > 0))
    })
}

#[test]
fn server_killed_mid_sync_fails_the_client_and_a_retry_after_restart_completes() {
    let t = tempfile::tempdir().unwrap();
    let mut serve = Serve::start(t.path());
    let sb = big_project();
    let spec = format!("socket={}//chdir=big", serve.addr());
    let dest = serve.root().join("big");
    let child = sync_cmd(&sb, &serve, &spec, &[])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if !wait_until(LIMIT, || staging_started(&dest)) {
        let o = wait_output(child, Duration::ZERO);
        panic!(
            "the sync never started writing data: {}\nserver log:\n{}",
            show(&o),
            serve.log()
        );
    }
    serve.kill();
    let killed = Instant::now();
    let o = wait_output(child, LIMIT);
    let took = killed.elapsed();
    assert_eq!(
        o.status.code(),
        Some(1),
        "the sync must fail when its server dies (did it finish before the kill?): {}",
        show(&o)
    );
    assert!(
        took < Duration::from_secs(5),
        "took {took:?} to notice: {}",
        show(&o)
    );
    let err = stderr(&o);
    assert!(
        err.lines()
            .any(|l| l.starts_with("error:") && l.contains(&serve.addr())),
        "{}",
        show(&o)
    );

    serve.restart();
    let o = sync(&sb, &serve, &spec, &[]);
    assert_ok(&o);
    assert_mirrors(&sb, &dest);
}

#[test]
fn sigterm_stops_the_server_with_exit_0() {
    let t = tempfile::tempdir().unwrap();
    let mut serve = Serve::start(t.path());
    assert_still_serves(&serve);
    let status = serve.terminate(LIMIT);
    assert_eq!(status.code(), Some(0), "log:\n{}", serve.log());
    assert!(serve.log().contains("stopped"), "{}", serve.log());
    assert!(
        TcpStream::connect(serve.addr()).is_err(),
        "still listening after it stopped"
    );
}

#[test]
fn missing_token_file_is_generated_private_and_works_for_clients() {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    let serve = Serve::start_generating_token(t.path());
    let meta = std::fs::metadata(serve.token_file()).unwrap();
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "token file is not private"
    );
    let token = std::fs::read_to_string(serve.token_file()).unwrap();
    let token = token.trim();
    assert_eq!(token.len(), 64, "{token:?}");
    assert!(token.chars().all(|c| c.is_ascii_hexdigit()), "{token:?}");
    assert!(serve.log().contains("generated a token"), "{}", serve.log());
    assert!(
        !serve.log().contains(token),
        "the token must not be logged when it went to a file: {}",
        serve.log()
    );
    assert_still_serves(&serve);
}

#[test]
fn empty_token_file_is_a_usage_error() {
    let t = tempfile::tempdir().unwrap();
    let empty = t.path().join("token");
    std::fs::write(&empty, "\n").unwrap();
    let mut c = Command::new(rdist_tests::rdist_bin());
    c.env_remove("RDIST_TOKEN")
        .args(["serve", "--listen", "127.0.0.1:0", "--root"])
        .arg(t.path().join("root"))
        .arg("--token-file")
        .arg(&empty);
    let o = output_within(&mut c, LIMIT);
    assert_eq!(o.status.code(), Some(4), "{}", show(&o));
    assert!(stderr(&o).contains("empty"), "{}", show(&o));
}
