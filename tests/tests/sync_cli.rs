//! `rdist sync` end to end through the real binary: what a mirror reproduces (modes, mtimes,
//! links, names, type changes), the ignore rules, where roots land, how targets are grouped,
//! what dry runs, `-v` and `--json` report, foreign destinations, change detection the hash
//! cache must not fool, and deltas.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdist_tests::{Sandbox, fixed_ignored, show, snapshot, snapshot_filtered, write};
use rdist_tests::{assert_mirrors, noise, source_snapshot as source};

fn tx(dest: &Path) -> String {
    format!("popen//chdir={}", dest.display())
}

/// `rdist sync --rsyncdir R... --tx popen//chdir=DEST EXTRA...` in the project root.
fn sync(sb: &Sandbox, roots: &[&str], dest: &Path, extra: &[&str]) -> Output {
    let mut args: Vec<String> = vec!["sync".into()];
    for r in roots {
        args.push("--rsyncdir".into());
        args.push((*r).into());
    }
    args.push("--tx".into());
    args.push(tx(dest));
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    sb.rdist().args(&args).output().expect("run rdist")
}

fn code(o: &Output) -> Option<i32> {
    o.status.code()
}

fn assert_ok(o: &Output) {
    assert_eq!(code(o), Some(0), "{}", show(o));
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("bad --json ({e}): {}", show(o)))
}

fn set_mode(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn mode_of(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

fn set_mtime_ns(p: &Path, ns: i64) {
    let t = UNIX_EPOCH + Duration::from_nanos(ns as u64);
    std::fs::File::options()
        .write(true)
        .open(p)
        .unwrap()
        .set_modified(t)
        .unwrap();
}

fn mtime_of(p: &Path) -> SystemTime {
    std::fs::symlink_metadata(p).unwrap().modified().unwrap()
}

fn symlink(target: impl AsRef<Path>, link: &Path) {
    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(target, link).unwrap();
}

/// Makes directories writable again on drop, so a failed test leaves nothing the temp dir
/// cleanup cannot remove (as a non-root user).
struct Writable(Vec<PathBuf>);

impl Drop for Writable {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755));
        }
    }
}

#[test]
fn mirror_reproduces_modes_mtimes_empty_dirs_links_and_unicode_names() {
    let sb = Sandbox::new();
    let p = sb.proj();
    sb.write("pkg/__init__.py", "");
    sb.write("pkg/tool.sh", "#!/bin/sh\necho hi\n");
    set_mode(&p.join("pkg/tool.sh"), 0o751);
    sb.write("pkg/secret/key.txt", "k");
    set_mode(&p.join("pkg/secret"), 0o700);
    sb.write("pkg/ro/a.py", "a = 1\n");
    sb.write("pkg/ro/b.py", "b = 2\n");
    set_mode(&p.join("pkg/ro"), 0o555);
    sb.write("pkg/data/file.txt", "payload");
    sb.write("README.md", "# demo\n");
    set_mtime_ns(&p.join("README.md"), 1_600_000_000_123_456_789);
    set_mtime_ns(&p.join("pkg/data/file.txt"), 1_234_567_890_000_000_001);
    std::fs::create_dir_all(p.join("empty")).unwrap();
    std::fs::create_dir_all(p.join("deep/a/b/c")).unwrap();
    sb.write("dir with space/ünïcødé file.py", "x = 'ü'\n");
    sb.write("日本語/ファイル.txt", "こんにちは");
    symlink("../README.md", &p.join("pkg/readme_link"));
    symlink("does/not/exist", &p.join("pkg/dangling"));
    symlink(p.join("pkg/data/file.txt"), &p.join("links/abs_file"));
    symlink(p.join("pkg/data"), &p.join("links/abs_dir"));
    symlink(p.join("pkg/data/file.txt"), &p.join("top_abs"));
    // Fixed ignores, left out of the mirror.
    sb.write(".git/config", "[core]\n");
    sb.write("pkg/__pycache__/m.cpython-312.pyc", "bytecode");
    let dest = sb.worker("w");
    let _restore = Writable(vec![p.join("pkg/ro"), dest.join("pkg/ro")]);

    let o = sync(&sb, &["."], &dest, &[]);
    assert_ok(&o);
    assert!(!stderr(&o).contains("warning:"), "{}", show(&o));

    // Absolute links into the tree become relative and still reach the same content.
    let mut want = source(&sb);
    for s in want.iter_mut() {
        let rewritten: &[u8] = match s.path.as_str() {
            "links/abs_file" => b"../pkg/data/file.txt",
            "links/abs_dir" => b"../pkg/data",
            "top_abs" => b"pkg/data/file.txt",
            _ => continue,
        };
        s.data = rewritten.to_vec();
    }
    assert_eq!(snapshot(&dest), want);
    assert_eq!(
        std::fs::read(dest.join("links/abs_file")).unwrap(),
        b"payload"
    );
    assert_eq!(
        std::fs::read(dest.join("links/abs_dir/file.txt")).unwrap(),
        b"payload"
    );
    assert_eq!(std::fs::read(dest.join("top_abs")).unwrap(), b"payload");
    assert_eq!(
        std::fs::read(dest.join("pkg/readme_link")).unwrap(),
        b"# demo\n"
    );
    // Spot checks of what the snapshot comparison covers, so a broken snapshot cannot hide them.
    assert_eq!(mode_of(&dest.join("pkg/tool.sh")), 0o751);
    assert_eq!(mode_of(&dest.join("pkg/secret")), 0o700);
    assert_eq!(mode_of(&dest.join("pkg/ro")), 0o555);
    assert_eq!(
        mtime_of(&dest.join("README.md")),
        mtime_of(&p.join("README.md"))
    );
    assert!(dest.join("deep/a/b/c").is_dir());
    assert!(!dest.join(".git").exists());
    assert!(dest.join("pkg/__pycache__").is_dir());
    assert!(!dest.join("pkg/__pycache__/m.cpython-312.pyc").exists());

    let o = sync(&sb, &["."], &dest, &["--json"]);
    assert_ok(&o);
    assert_eq!(json(&o)["targets"][0]["up_to_date"], true, "{}", show(&o));
    assert_eq!(mode_of(&dest.join("pkg/ro")), 0o555);
}

#[test]
fn read_only_dir_keeps_its_mode_when_a_file_inside_changes() {
    let sb = Sandbox::new();
    let p = sb.proj();
    sb.write("pkg/ro/a.py", "a = 1\n");
    sb.write("pkg/ro/b.py", "b = 2\n");
    set_mode(&p.join("pkg/ro"), 0o555);
    sb.write("other/ro/c.py", "c = 3\n");
    set_mode(&p.join("other/ro"), 0o555);
    let dest = sb.worker("w");
    let _restore = Writable(vec![
        p.join("pkg/ro"),
        p.join("other/ro"),
        dest.join("pkg/ro"),
        dest.join("other/ro"),
    ]);
    assert_ok(&sync(&sb, &["."], &dest, &[]));
    assert_mirrors(&sb, &dest);

    // A change inside the read-only directory (its file is writable).
    sb.write("pkg/ro/a.py", "a = 10\n");
    assert_ok(&sync(&sb, &["."], &dest, &[]));
    assert_eq!(
        std::fs::read(dest.join("pkg/ro/a.py")).unwrap(),
        b"a = 10\n"
    );
    assert_eq!(mode_of(&dest.join("pkg/ro")), 0o555, "changed directory");
    assert_eq!(
        mode_of(&dest.join("other/ro")),
        0o555,
        "untouched directory"
    );
    assert_mirrors(&sb, &dest);
}

#[test]
fn absolute_symlink_outside_the_roots_is_kept_verbatim_with_a_warning() {
    let sb = Sandbox::new();
    let p = sb.proj();
    sb.write("pkg/a.py", "");
    sb.write("other/x.txt", "not synced");
    let outside = sb.path().join("elsewhere/python3");
    let into_unsynced = p.join("other/x.txt");
    symlink(&outside, &p.join("pkg/python"));
    symlink(&into_unsynced, &p.join("pkg/other_link"));
    let dest = sb.worker("w");

    let o = sync(&sb, &["pkg"], &dest, &[]);
    // A problem list entry, as every non-fatal problem: the exit code says something needs a look.
    assert_eq!(code(&o), Some(1), "{}", show(&o));
    let err = stderr(&o);
    for (link, target) in [("pkg/python", &outside), ("pkg/other_link", &into_unsynced)] {
        let line = format!(
            "warning: `{}`: absolute symlink to `{}` points outside the synced roots; copied as it is",
            p.join(link).display(),
            target.display()
        );
        assert!(err.contains(&line), "missing `{line}`\n{}", show(&o));
        assert_eq!(std::fs::read_link(dest.join(link)).unwrap(), *target);
    }
    assert!(dest.join("pkg/a.py").is_file());
    assert!(!dest.join("other").exists());
}

#[test]
fn type_changes_between_file_dir_and_symlink_are_mirrored() {
    let sb = Sandbox::new();
    let p = sb.proj();
    let dest = sb.worker("w");
    // Round 0: t1 file, t2 directory, t3 symlink.
    sb.write("t1", "file one");
    sb.write("t2/inner.py", "inner");
    sb.write("t2/sub/deeper.py", "deeper");
    symlink("t1", &p.join("t3"));
    assert_ok(&sync(&sb, &["."], &dest, &[]));
    assert_mirrors(&sb, &dest);

    let reset = |rel: &str| {
        let q = p.join(rel);
        match std::fs::symlink_metadata(&q) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&q).unwrap(),
            Ok(_) => std::fs::remove_file(&q).unwrap(),
            Err(_) => {}
        }
    };
    // Round 1: file -> dir, dir -> symlink, symlink -> file.
    for r in ["t1", "t2", "t3"] {
        reset(r);
    }
    sb.write("t1/now_a_dir.py", "now a dir");
    symlink("t1", &p.join("t2"));
    sb.write("t3", "now a file");
    assert_ok(&sync(&sb, &["."], &dest, &[]));
    assert_mirrors(&sb, &dest);

    // Round 2: dir -> symlink, symlink -> file, file -> dir (the other three transitions);
    // t2's new content equals a file that disappears in the same sync.
    for r in ["t1", "t2", "t3"] {
        reset(r);
    }
    symlink("t3", &p.join("t1"));
    sb.write("t2", "now a dir");
    sb.write("t3/x.py", "x");
    assert_ok(&sync(&sb, &["."], &dest, &[]));
    assert_mirrors(&sb, &dest);
    assert_eq!(std::fs::read(dest.join("t1/x.py")).unwrap(), b"x");
}

#[test]
fn fifo_is_skipped_with_a_warning_and_exit_1_while_the_rest_is_synced() {
    let sb = Sandbox::new();
    sb.write("pkg/a.py", "a");
    sb.write("pkg/b/c.py", "c");
    let fifo = sb.proj().join("pkg/pipe");
    let st = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(st.success());
    let dest = sb.worker("w");

    let o = sync(&sb, &["."], &dest, &[]);
    assert_eq!(code(&o), Some(1), "{}", show(&o));
    let line = format!(
        "warning: `{}`: FIFO skipped (only files, directories and symlinks are synced)",
        fifo.display()
    );
    assert!(stderr(&o).contains(&line), "{}", show(&o));
    assert!(stderr(&o).contains("synced 1 of 1 target"), "{}", show(&o));
    assert!(!dest.join("pkg/pipe").exists());
    let src = snapshot_filtered(&sb.proj(), &|r| fixed_ignored(r) || r == "pkg/pipe");
    assert_eq!(snapshot(&dest), src);
}

#[test]
fn ignore_rules_apply_by_name_by_anchored_path_and_to_dirs_only() {
    let sb = Sandbox::new();
    // (path, synced?)
    let table: &[(&str, bool)] = &[
        ("run.log", false),
        ("pkg/deep/er/trace.log", false),
        ("pkg/log.py", true),
        ("pkg/data/blob.bin", false),
        ("other/pkg/data/blob.bin", true),
        ("pkg/data2/blob.bin", true),
        ("build/out.o", false),
        ("pkg/build/out.o", false),
        ("tools/build", true),
        (".git/config", false),
        (".venv/bin/activate", false),
        ("pkg/.coveragerc", false),
        ("pkg/__pycache__/x.cpython-312.pyc", false),
        ("pkg/x.pyo", false),
        ("notes~", false),
        ("pkg/mod.py", true),
    ];
    for (rel, _) in table {
        sb.write(rel, *rel);
    }
    let dest = sb.worker("w");
    let ignores = [
        "--rsyncignore",
        "*.log",
        "--rsyncignore",
        "pkg/data",
        "--rsyncignore",
        "build/",
    ];
    assert_ok(&sync(&sb, &["."], &dest, &ignores));
    for (rel, synced) in table {
        assert_eq!(dest.join(rel).exists(), *synced, "`{rel}` synced?");
    }
    assert!(!dest.join("pkg/data").exists());
    assert!(!dest.join("build").exists());
    assert!(
        dest.join("pkg/__pycache__").is_dir(),
        "the directory itself is not ignored"
    );

    // Worker-only entries: those the rules match survive, the rest are deleted.
    let protected = [
        ".venv/lib/python3.12/site.py",
        "pkg/__pycache__/m.cpython-312.pyc",
        "worker.log",
        "pkg/deep/er/pytest.log",
        "pkg/data/cache.bin",
    ];
    for rel in protected {
        write(&dest.join(rel), "worker only");
    }
    write(&dest.join("stray.py"), "stray");
    write(&dest.join("pkg/stray_dir/s.py"), "stray");
    let mut args = ignores.to_vec();
    args.extend(["--json", "-v"]);
    let o = sync(&sb, &["."], &dest, &args);
    assert_ok(&o);
    for rel in protected {
        assert_eq!(
            std::fs::read(dest.join(rel)).unwrap(),
            b"worker only",
            "{rel}"
        );
    }
    assert!(!dest.join("stray.py").exists());
    assert!(!dest.join("pkg/stray_dir").exists());
    assert_eq!(json(&o)["files_deleted"], 3, "{}", show(&o));
    for (rel, synced) in table {
        if *synced {
            assert_eq!(
                std::fs::read(dest.join(rel)).unwrap(),
                rel.as_bytes(),
                "{rel}"
            );
        }
    }
}

#[test]
fn worker_only_pycache_dir_does_not_prevent_up_to_date() {
    let sb = Sandbox::new();
    sb.write("tests/test_a.py", "def test(): pass\n");
    let dest = sb.worker("w");
    assert_ok(&sync(&sb, &["."], &dest, &[]));
    // pytest on the worker writes bytecode next to the tests; the source has no __pycache__.
    write(
        &dest.join("tests/__pycache__/test_a.cpython-312-pytest-8.pyc"),
        "bytecode",
    );

    let o = sync(&sb, &["."], &dest, &["-v"]);
    assert_ok(&o);
    assert!(
        dest.join("tests/__pycache__/test_a.cpython-312-pytest-8.pyc")
            .is_file()
    );
    assert!(
        !stdout(&o).contains("deleted tests/__pycache__"),
        "reports deleting a directory it keeps\n{}",
        show(&o)
    );
    let o = sync(&sb, &["."], &dest, &["--json"]);
    assert_ok(&o);
    assert_eq!(json(&o)["targets"][0]["up_to_date"], true, "{}", show(&o));
}

#[test]
fn several_rsyncdirs_land_at_project_relative_paths_with_the_project_files() {
    let sb = Sandbox::new();
    let p = sb.proj();
    sb.write("src/pkg/__init__.py", "");
    sb.write("src/pkg/core.py", "core");
    sb.write("src/other/skip.py", "not a root");
    sb.write("tests/test_core.py", "test");
    sb.write("tox.ini", "[tox]\n");
    sb.write("README.md", "not a root");
    let dest = sb.worker("w");
    let o = sync(&sb, &["src/pkg", "tests"], &dest, &[]);
    assert_ok(&o);
    let got: Vec<String> = snapshot(&dest).into_iter().map(|s| s.path).collect();
    assert_eq!(
        got,
        [
            "pyproject.toml",
            "src",
            "src/pkg",
            "src/pkg/__init__.py",
            "src/pkg/core.py",
            "tests",
            "tests/test_core.py",
            "tox.ini"
        ]
    );
    assert_eq!(
        std::fs::read(dest.join("src/pkg/core.py")).unwrap(),
        b"core"
    );
    assert_eq!(
        std::fs::read(dest.join("pyproject.toml")).unwrap(),
        std::fs::read(p.join("pyproject.toml")).unwrap()
    );

    // Roots are relative to the current directory; where they land is not.
    let o = sb
        .rdist()
        .current_dir(p.join("src"))
        .args([
            "sync",
            "--rsyncdir",
            "pkg",
            "--tx",
            &tx(&sb.worker("w2")),
            "--json",
        ])
        .output()
        .unwrap();
    assert_ok(&o);
    assert!(sb.worker("w2/src/pkg/core.py").is_file(), "{}", show(&o));
    assert!(sb.worker("w2/pyproject.toml").is_file());
    assert!(!sb.worker("w2/pkg").exists());
}

#[test]
fn nested_roots_are_synced_once() {
    let sb = Sandbox::new();
    sb.write("pkg/a.py", "a");
    sb.write("pkg/sub/b.py", "b");
    sb.write("c.py", "c");
    let dest = sb.worker("w");
    let o = sync(&sb, &[".", "pkg", "pkg/sub"], &dest, &["--json"]);
    assert_ok(&o);
    let j = json(&o);
    // pyproject.toml, c.py, pkg/a.py, pkg/sub/b.py.
    assert_eq!(j["files_scanned"], 4, "{}", show(&o));
    assert_eq!(j["files_sent"], 4, "{}", show(&o));
    assert_eq!(j["entries"], 6, "{}", show(&o));
    assert_mirrors(&sb, &dest);
}

#[test]
fn xdist_layout_puts_roots_at_their_basename() {
    let sb = Sandbox::new();
    sb.write("src/pkg/core.py", "core");
    sb.write("tests/test_core.py", "test");
    let dest = sb.worker("w");
    let o = sync(&sb, &["src/pkg", "tests"], &dest, &["--layout", "xdist"]);
    assert_ok(&o);
    assert!(stderr(&o).contains("note: --layout xdist"), "{}", show(&o));
    let got: Vec<String> = snapshot(&dest).into_iter().map(|s| s.path).collect();
    assert_eq!(got, ["pkg", "pkg/core.py", "tests", "tests/test_core.py"]);
}

#[test]
fn xdist_layout_refuses_two_roots_with_one_basename() {
    let sb = Sandbox::new();
    sb.write("a/pkg/x.py", "");
    sb.write("b/pkg/y.py", "");
    let dest = sb.worker("w");
    let o = sync(&sb, &["a/pkg", "b/pkg"], &dest, &["--layout", "xdist"]);
    assert_eq!(code(&o), Some(4), "{}", show(&o));
    let err = stderr(&o);
    assert!(
        err.contains(
            "error: rsyncdirs `a/pkg` and `b/pkg` would both land in `pkg` under `--layout xdist`"
        ),
        "{}",
        show(&o)
    );
    assert!(
        err.contains("hint: use the default `--layout rdist`"),
        "{}",
        show(&o)
    );
    assert!(!dest.exists());
}

#[test]
fn root_outside_the_project_is_a_usage_error_with_a_hint() {
    let sb = Sandbox::new();
    write(&sb.path().join("outside/x.py"), "");
    let dest = sb.worker("w");
    let o = sync(&sb, &["../outside"], &dest, &[]);
    assert_eq!(code(&o), Some(4), "{}", show(&o));
    let err = stderr(&o);
    assert!(
        err.contains("error: rsyncdir `../outside` is outside the project root `"),
        "{}",
        show(&o)
    );
    assert!(err.contains("hint: "), "{}", show(&o));
    assert!(!dest.exists());
}

#[test]
fn missing_root_is_a_usage_error_naming_it() {
    let sb = Sandbox::new();
    let dest = sb.worker("w");
    let o = sync(&sb, &["nope/missing"], &dest, &[]);
    assert_eq!(code(&o), Some(4), "{}", show(&o));
    assert!(
        stderr(&o).contains("error: rsyncdir `nope/missing` does not exist"),
        "{}",
        show(&o)
    );
    assert!(!dest.exists());
}

#[test]
fn workers_sharing_a_directory_are_synced_once() {
    let sb = Sandbox::new();
    sb.write("pkg/a.py", "a");
    let (a, b) = (sb.worker("A"), sb.worker("B"));
    let o = sb
        .rdist()
        .args(["sync", "--rsyncdir", "pkg", "--json"])
        .args([
            "--tx",
            &format!("2*{}", tx(&a)),
            "--tx",
            &tx(&a),
            "--tx",
            &tx(&b),
        ])
        .output()
        .unwrap();
    assert_ok(&o);
    let j = json(&o);
    let targets = j["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 2, "{}", show(&o));
    assert_eq!(targets[0]["dest"], a.display().to_string());
    assert_eq!(targets[0]["workers"], 3);
    assert_eq!(targets[0]["specs"].as_array().unwrap().len(), 2);
    assert_eq!(targets[1]["dest"], b.display().to_string());
    assert_eq!(targets[1]["workers"], 1);
    for t in targets {
        assert_eq!(t["files_sent"], 2, "{}", show(&o));
    }
    assert!(stderr(&o).contains("synced 2 of 2 targets"), "{}", show(&o));
    assert_mirrors_filtered(&sb, &a, "pkg");
    assert_mirrors_filtered(&sb, &b, "pkg");
}

/// `dest` holds exactly `root` of the project plus the project file.
fn assert_mirrors_filtered(sb: &Sandbox, dest: &Path, root: &str) {
    let want = snapshot_filtered(&sb.proj(), &|r| {
        fixed_ignored(r)
            || !(r == "pyproject.toml" || r == root || r.starts_with(&format!("{root}/")))
    });
    assert_eq!(snapshot(dest), want);
}

#[test]
fn invalid_worker_spec_points_at_the_key_and_suggests_the_fix() {
    let sb = Sandbox::new();
    let o = sb.run(&["sync", "--rsyncdir", ".", "--tx", "popen//chdri=x"]);
    assert_eq!(code(&o), Some(4), "{}", show(&o));
    let err = stderr(&o);
    assert!(
        err.contains("error: invalid worker spec: unknown key `chdri`"),
        "{}",
        show(&o)
    );
    assert!(
        err.contains("\n  popen//chdri=x\n         ^^^^^\n"),
        "{}",
        show(&o)
    );
    assert!(err.contains("hint: did you mean `chdir`?"), "{}", show(&o));
    assert!(!sb.proj().join("x").exists());
}

/// A synced project and worker, then a known change: `pkg/changed.py` rewritten (40 bytes),
/// `pkg/new.py` added (25 bytes), `pkg/gone.py` removed.
fn synced_then_changed() -> (Sandbox, PathBuf) {
    let sb = Sandbox::new();
    sb.write("pkg/changed.py", "old");
    sb.write("pkg/gone.py", "bye");
    sb.write("pkg/same.py", "same");
    let dest = sb.worker("w");
    assert_ok(&sync(&sb, &["."], &dest, &[]));
    sb.write("pkg/changed.py", "x".repeat(40));
    sb.write("pkg/new.py", "y".repeat(25));
    std::fs::remove_file(sb.proj().join("pkg/gone.py")).unwrap();
    (sb, dest)
}

#[test]
fn dry_run_changes_nothing_and_lists_what_it_would_do() {
    let (sb, dest) = synced_then_changed();
    let before = snapshot(&dest);
    let o = sync(&sb, &["."], &dest, &["--dry-run"]);
    assert_ok(&o);
    assert_eq!(
        stdout(&o),
        "would send pkg/changed.py\nwould send pkg/new.py\nwould delete pkg/gone.py\n",
        "{}",
        show(&o)
    );
    assert!(
        stderr(&o).contains("rdist: dry run 1 of 1 target"),
        "{}",
        show(&o)
    );
    assert_eq!(snapshot(&dest), before);
    let o = sync(&sb, &["."], &dest, &["-n", "--json"]);
    assert_ok(&o);
    let j = json(&o);
    assert_eq!(j["dry_run"], true);
    assert_eq!(j["files_sent"], 2);
    assert_eq!(j["files_deleted"], 1);
    assert_eq!(snapshot(&dest), before);
}

#[test]
fn dry_run_to_a_new_destination_creates_nothing() {
    let sb = Sandbox::new();
    sb.write("pkg/a.py", "a");
    let dest = sb.worker("new");
    let o = sync(&sb, &["."], &dest, &["--dry-run"]);
    assert_ok(&o);
    assert!(stdout(&o).contains("would send pkg/a.py"), "{}", show(&o));
    assert!(!dest.exists(), "dry run created `{}`", dest.display());
}

#[test]
fn dry_run_json_per_target_counts_agree_with_the_totals() {
    let (sb, dest) = synced_then_changed();
    let o = sync(&sb, &["."], &dest, &["-n", "--json"]);
    assert_ok(&o);
    let j = json(&o);
    assert_eq!(
        j["targets"][0]["files_deleted"],
        j["files_deleted"],
        "{}",
        show(&o)
    );
    assert_eq!(
        j["targets"][0]["files_sent"],
        j["files_sent"],
        "{}",
        show(&o)
    );
}

#[test]
fn verbose_lists_sent_and_deleted_paths() {
    let (sb, dest) = synced_then_changed();
    let o = sync(&sb, &["."], &dest, &["-v"]);
    assert_ok(&o);
    assert_eq!(
        stdout(&o),
        "sent pkg/changed.py\nsent pkg/new.py\ndeleted pkg/gone.py\n",
        "{}",
        show(&o)
    );
    assert!(
        stderr(&o).contains(", 2 sent (65 B literal, 0 B by delta), 1 deleted"),
        "{}",
        show(&o)
    );
    assert_mirrors(&sb, &dest);
}

#[test]
fn json_reports_exact_counts_for_a_known_change() {
    let (sb, dest) = synced_then_changed();
    let o = sync(&sb, &["."], &dest, &["--json"]);
    assert_ok(&o);
    let j = json(&o);
    assert_eq!(j["dry_run"], false);
    assert_eq!(j["files_scanned"], 4, "{}", show(&o));
    assert_eq!(j["files_sent"], 2);
    assert_eq!(j["files_deleted"], 1);
    assert_eq!(j["literal_bytes"], 65);
    assert_eq!(j["delta_bytes"], 0);
    let wire = j["wire_bytes"].as_u64().unwrap();
    assert!((65..64 << 10).contains(&wire), "wire_bytes {wire}");
    let secs = j["seconds"].as_f64().unwrap();
    assert!(secs > 0.0 && secs < 60.0, "seconds {secs}");
    let t = &j["targets"].as_array().unwrap()[..];
    assert_eq!(t.len(), 1);
    assert_eq!(t[0]["ok"], true);
    assert_eq!(t[0]["up_to_date"], false);
    assert_eq!(t[0]["files_sent"], 2);
    assert_eq!(t[0]["files_deleted"], 1);
    assert_eq!(t[0]["literal_bytes"], 65);
    assert_eq!(t[0]["wire_bytes"], wire);
    assert_eq!(t[0]["dest"], dest.display().to_string());
    // stdout is the JSON document and nothing else.
    assert_eq!(stdout(&o).lines().count(), 1);
    assert_mirrors(&sb, &dest);
}

#[test]
fn noop_resync_is_up_to_date_for_every_target() {
    let sb = Sandbox::new();
    sb.write("pkg/a.py", "a");
    let (a, b) = (sb.worker("A"), sb.worker("B"));
    let run = || {
        sb.rdist()
            .args([
                "sync",
                "--rsyncdir",
                ".",
                "--json",
                "--tx",
                &tx(&a),
                "--tx",
                &tx(&b),
            ])
            .output()
            .unwrap()
    };
    assert_ok(&run());
    let o = run();
    assert_ok(&o);
    let j = json(&o);
    for t in j["targets"].as_array().unwrap() {
        assert_eq!(t["up_to_date"], true, "{}", show(&o));
        assert_eq!(t["files_sent"], 0);
    }
    assert_eq!(j["files_sent"], 0);
    assert!(stderr(&o).contains("synced 2 of 2 targets"), "{}", show(&o));
    assert!(stderr(&o).contains("all up to date"), "{}", show(&o));
}

/// The number in `... (N directories not read)` of the timing line that starts with `prefix`.
fn not_read(o: &Output, prefix: &str) -> usize {
    let err = stderr(o);
    let line = err
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no `{prefix}` line: {}", show(o)));
    let before = line.split(" directories not read").next().unwrap();
    before.rsplit(' ').next().unwrap().parse().unwrap()
}

/// Both sides keep their directory listings between syncs and reuse a directory's names while
/// its stamp is unchanged. Every kind of change in such a directory is still seen: a file added
/// to the source, a file renamed there, and a stray file on the worker whose directory then
/// had its mtime set back (only the ctime gives it away).
#[test]
fn changes_in_directories_with_kept_listings_are_all_seen() {
    let sb = Sandbox::new();
    sb.write("pkg/a.py", "a");
    sb.write("pkg/sub/b.py", "b");
    sb.write("tests/t.py", "t");
    let dest = sb.worker("w");
    let run = || {
        let o = sb
            .rdist()
            .env("RDIST_TIMINGS", "1")
            .args(["sync", "--rsyncdir", ".", "--tx", &tx(&dest)])
            .output()
            .unwrap();
        assert_ok(&o);
        o
    };
    run();
    // Past the racy window, the next sync records every directory; the one after reuses them.
    std::thread::sleep(Duration::from_millis(150));
    run();
    let o = run();
    assert_eq!(not_read(&o, "timings: scan"), 3, "{}", show(&o));
    assert_eq!(
        not_read(&o, "agent timings: current state"),
        3,
        "{}",
        show(&o)
    );

    sb.write("pkg/sub/c.py", "c");
    std::fs::rename(sb.proj().join("tests/t.py"), sb.proj().join("tests/u.py")).unwrap();
    let pkg = dest.join("pkg");
    let before = mtime_of(&pkg);
    write(&pkg.join("stray.txt"), "only on the worker");
    std::fs::File::open(&pkg)
        .unwrap()
        .set_modified(before)
        .unwrap();
    let o = run();
    assert_mirrors(&sb, &dest);
    assert!(!pkg.join("stray.txt").exists(), "{}", show(&o));
    assert!(dest.join("tests/u.py").exists() && dest.join("pkg/sub/c.py").exists());
}

#[test]
fn foreign_destination_is_refused_unless_adopted() {
    let sb = Sandbox::new();
    sb.write("pkg/a.py", "a");
    sb.write("pkg/b.py", "b");
    let dest = sb.worker("w");
    write(&dest.join("precious.txt"), "keep me?");
    write(&dest.join("pkg/a.py"), "foreign a");
    write(&dest.join(".git/HEAD"), "ref");
    let before = snapshot_filtered(&dest, &|_| false);

    let o = sync(&sb, &["."], &dest, &[]);
    assert_eq!(code(&o), Some(1), "{}", show(&o));
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "`{}` is not empty and was not created by rdist",
            dest.display()
        )),
        "{}",
        show(&o)
    );
    // The hint is checked by `refused_sync_reports_the_agents_error_and_hint_not_a_broken_pipe`.
    assert_eq!(snapshot_filtered(&dest, &|_| false), before);
    assert!(
        !dest.join(".rdist").exists(),
        "refused destination got state"
    );

    let o = sync(&sb, &["."], &dest, &["--adopt", "--json"]);
    assert_ok(&o);
    assert_mirrors(&sb, &dest);
    assert_eq!(json(&o)["files_deleted"], 1, "{}", show(&o));
    assert_eq!(
        std::fs::read(dest.join(".git/HEAD")).unwrap(),
        b"ref",
        "ignored entries are kept"
    );
    // Adopted once is rdist's from then on.
    sb.write("pkg/c.py", "c");
    assert_ok(&sync(&sb, &["."], &dest, &[]));
    assert_mirrors(&sb, &dest);
}

#[test]
fn same_size_edit_with_restored_mtime_is_detected() {
    let sb = Sandbox::new();
    let f = sb.proj().join("pkg/m.py");
    sb.write("pkg/m.py", "value = 1\n");
    let dest = sb.worker("w");
    let sync_json = || {
        let o = sync(&sb, &["."], &dest, &["--json"]);
        assert_ok(&o);
        json(&o)
    };

    // Racy: rewritten in the same instant as the sync that hashed it.
    sync_json();
    let t = mtime_of(&f);
    std::fs::write(&f, "value = 2\n").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&f)
        .unwrap()
        .set_modified(t)
        .unwrap();
    assert_eq!(mtime_of(&f), t);
    sync_json();
    assert_eq!(
        std::fs::read(dest.join("pkg/m.py")).unwrap(),
        b"value = 2\n"
    );
    assert_mirrors(&sb, &dest);

    // Settled: the hash cache trusts the file now (nothing is rehashed)...
    std::thread::sleep(Duration::from_millis(120));
    sync_json();
    let j = sync_json();
    assert_eq!(j["hashed_files"], 0, "the cache should be in use: {j}");
    assert_eq!(j["targets"][0]["up_to_date"], true);
    // ...and still sees a same-size rewrite with the old mtime.
    let t = mtime_of(&f);
    std::fs::write(&f, "value = 3\n").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&f)
        .unwrap()
        .set_modified(t)
        .unwrap();
    let j = sync_json();
    assert_eq!(j["hashed_files"], 1, "{j}");
    assert_eq!(j["files_sent"], 1, "{j}");
    assert_eq!(
        std::fs::read(dest.join("pkg/m.py")).unwrap(),
        b"value = 3\n"
    );
    assert_mirrors(&sb, &dest);

    // The worker's own record is not fooled either: once it trusts its files, a same-size edit
    // there with the mtime restored is still repaired.
    std::thread::sleep(Duration::from_millis(120));
    assert_eq!(sync_json()["targets"][0]["up_to_date"], true);
    let wf = dest.join("pkg/m.py");
    let t = mtime_of(&wf);
    std::fs::write(&wf, "value = 9\n").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&wf)
        .unwrap()
        .set_modified(t)
        .unwrap();
    let j = sync_json();
    assert_eq!(j["targets"][0]["up_to_date"], false, "{j}");
    assert_eq!(std::fs::read(&wf).unwrap(), b"value = 3\n");
    assert_mirrors(&sb, &dest);
}

/// To a local target a changed big file goes by its 2 MiB leaves: the changed one whole, the
/// others copied on the worker. (Over a link it goes by rsync delta, a few KiB: `sync-core`'s
/// `big_file_edit_goes_by_delta`.)
#[test]
fn small_change_in_a_big_file_is_sent_as_one_leaf() {
    let sb = Sandbox::new();
    let size = 20 << 20;
    let mut data = noise(size, 0x5eed);
    sb.write("data/big.bin", &data);
    let dest = sb.worker("w");
    assert_ok(&sync(&sb, &["."], &dest, &[]));
    // Past the racy window: the worker's copy and its leaves are certified.
    std::thread::sleep(std::time::Duration::from_millis(80));

    let mid = size / 2 + 1234;
    data[mid..mid + 4096].copy_from_slice(&noise(4096, 7));
    sb.write("data/big.bin", &data);
    let o = sync(&sb, &["."], &dest, &["--json"]);
    assert_ok(&o);
    let j = json(&o);
    let delta = j["delta_bytes"].as_u64().unwrap();
    let leaf = sync_core::hash::LEAF;
    assert!(
        delta >= leaf && delta < leaf + (1 << 10),
        "delta_bytes {delta}\n{}",
        show(&o)
    );
    assert_eq!(j["literal_bytes"], 0, "{}", show(&o));
    assert_eq!(j["targets"][0]["delta_files"], 1);
    assert!(j["wire_bytes"].as_u64().unwrap() < 3 << 20, "{}", show(&o));
    assert!(
        std::fs::read(dest.join("data/big.bin")).unwrap() == data,
        "content differs"
    );
    assert_mirrors(&sb, &dest);
}

#[test]
fn refused_sync_reports_the_agents_error_and_hint_not_a_broken_pipe() {
    let sb = Sandbox::new();
    sb.write("pkg/a.py", "a");
    let dest = sb.worker("w");
    write(&dest.join("precious.txt"), "foreign");
    // The controller writes its offer while the agent may already have refused and exited:
    // a race, so it is run enough times to lose it.
    for _ in 0..20 {
        let o = sync(&sb, &["."], &dest, &[]);
        assert_eq!(code(&o), Some(1), "{}", show(&o));
        let err = stderr(&o);
        let want = format!(
            "error: sync to `{0}` failed: destination `{0}` is not empty and was not created by rdist\n",
            dest.display()
        );
        assert!(err.contains(&want), "{}", show(&o));
        assert!(
            err.contains("hint: choose an empty or new directory, or pass `--adopt`"),
            "{}",
            show(&o)
        );
        assert!(!err.contains("Broken pipe"), "{}", show(&o));
    }
}

/// A renamed directory is rebuilt on the worker by local copies. Each finished copy must not
/// hold its temp file open until every copy is renamed into place, or a few hundred copies
/// exhaust the usual limit of 1024 descriptors (256 here to keep the test small).
#[test]
fn many_local_copies_do_not_exhaust_file_descriptors() {
    let sb = Sandbox::new();
    for i in 0..600 {
        sb.write(&format!("pkg/a/f{i}.txt"), format!("content {i}\n"));
    }
    let dest = sb.worker("w");
    assert_ok(&sync(&sb, &["."], &dest, &[]));
    std::fs::rename(sb.proj().join("pkg/a"), sb.proj().join("pkg/b")).unwrap();
    let o = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 256 && exec \"$0\" \"$@\"")
        .arg(rdist_tests::rdist_bin())
        .args(["sync", "--rsyncdir", ".", "--tx", &tx(&dest)])
        .current_dir(sb.proj())
        .env("RDIST_CACHE_DIR", sb.cache())
        .env_remove("RDIST_LOCK_WAIT")
        .output()
        .expect("run rdist");
    assert_ok(&o);
    assert_mirrors(&sb, &dest);
}
