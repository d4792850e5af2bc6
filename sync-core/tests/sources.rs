//! Local source paths (`Begin.local_sources`) when sources change between the scan and the agent's read.

mod common;

use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::Duration;

use common::*;
use sync_core::push::{PushOptions, PushReport};
use sync_core::scan::SourceTree;

fn write(p: &Path, data: &[u8]) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

fn local(dest: &Path) -> PushOptions {
    PushOptions {
        local_sources: true,
        leaves: true,
        ..opts(dest)
    }
}

/// Syncs within 20 s or panics (a hang).
fn sync_in_time(tree: SourceTree, o: PushOptions) -> PushReport {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(sync_with(&tree, &o).map_err(|e| e.to_string()));
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("the sync hangs")
        .expect("the sync fails")
}

fn tmp_left(dest: &Path) -> usize {
    std::fs::read_dir(dest.join(".rdist/tmp")).map_or(0, |d| d.count())
}

fn mkfifo(p: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        p,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
}

#[test]
fn sources_changed_since_the_scan_are_problems_without_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let dest = dir.path().join("dest");
    for name in [
        "gone", "fifo", "fifo_w", "link", "dir", "grown", "zero", "ok",
    ] {
        write(&src.join(format!("{name}.py")), b"x = 1\n");
    }
    write(&src.join("sub/f.py"), b"y = 2\n");
    let tree = scan_dir(&src, &[]);
    std::fs::remove_file(src.join("gone.py")).unwrap();
    std::fs::remove_file(src.join("fifo.py")).unwrap();
    mkfifo(&src.join("fifo.py"));
    std::fs::remove_file(src.join("fifo_w.py")).unwrap();
    mkfifo(&src.join("fifo_w.py"));
    // A writer that keeps the FIFO open and writes nothing (read-write: its open does not
    // wait for a reader).
    let _writer = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(src.join("fifo_w.py"))
        .unwrap();
    std::fs::remove_file(src.join("link.py")).unwrap();
    symlink("ok.py", src.join("link.py")).unwrap();
    std::fs::remove_file(src.join("dir.py")).unwrap();
    std::fs::create_dir(src.join("dir.py")).unwrap();
    write(&src.join("grown.py"), &vec![b'x'; 10 << 20]);
    std::fs::remove_file(src.join("zero.py")).unwrap();
    symlink("/dev/zero", src.join("zero.py")).unwrap();
    std::fs::remove_dir_all(src.join("sub")).unwrap();
    symlink("/dev", src.join("sub")).unwrap();
    let r = sync_in_time(tree, local(&dest));
    assert_eq!(std::fs::read(dest.join("ok.py")).unwrap(), b"x = 1\n");
    assert_eq!(r.outcome.files_written, 1, "{r:?}");
    let mut problems: Vec<(&str, &str)> = r
        .outcome
        .problems
        .iter()
        .map(|(p, m)| (p.as_str(), m.as_str()))
        .collect();
    problems.sort();
    let expect = [
        ("dir.py", "Is a directory"),
        ("fifo.py", "content changed while syncing"),
        ("fifo_w.py", "Resource temporarily unavailable"),
        ("gone.py", "No such file"),
        ("grown.py", "content changed while syncing"),
        ("link.py", "Too many levels of symbolic links"),
        ("sub/f.py", "No such file"),
        ("zero.py", "Too many levels of symbolic links"),
    ];
    assert_eq!(problems.len(), expect.len(), "{problems:?}");
    for ((p, m), (ep, em)) in problems.iter().zip(expect) {
        assert_eq!(*p, ep);
        assert!(m.contains(em), "{p}: {m}");
    }
    // Nothing was put in place for them, so nothing counts as sent, and no temp file is left.
    assert_eq!(r.sent.len(), 1, "{r:?}");
    assert_eq!(r.literal_bytes, 6, "{r:?}");
    assert_eq!(tmp_left(&dest), 0);
}

#[test]
fn sources_under_a_relative_or_non_utf8_root() {
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::ffi::OsStrExt;
    let odd = std::ffi::OsStr::from_bytes(b"r\xffoot\nline");
    let src = dir.path().join(odd).join("src");
    let dest = dir.path().join("dest");
    write(&src.join("a.py"), b"a = 1\n");
    let r = sync_in_time(scan_dir(&src, &[]), local(&dest));
    assert!(r.outcome.problems.is_empty(), "{r:?}");
    assert_eq!(std::fs::read(dest.join("a.py")).unwrap(), b"a = 1\n");
    // A relative root.
    std::env::set_current_dir(dir.path()).unwrap();
    let rel = Path::new(odd).join("src");
    write(&src.join("b.py"), b"b = 1\n");
    let tree = scan_dir(&rel, &[]);
    assert!(
        tree.sources.iter().all(|p| p.is_relative()),
        "{:?}",
        tree.sources
    );
    let r = sync_in_time(tree, local(&dest));
    assert!(r.outcome.problems.is_empty(), "{r:?}");
    assert_eq!(std::fs::read(dest.join("b.py")).unwrap(), b"b = 1\n");
}

#[test]
fn sources_of_sizes_around_the_read_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let dest = dir.path().join("dest");
    for n in [
        0usize,
        1,
        (256 << 10) - 1,
        256 << 10,
        (256 << 10) + 1,
        3 << 20,
    ] {
        write(&src.join(format!("f{n}")), &vec![(n % 251) as u8; n]);
    }
    let r = sync_in_time(scan_dir(&src, &[]), local(&dest));
    assert!(r.outcome.problems.is_empty(), "{r:?}");
    assert_eq!(snapshot(&src), snapshot(&dest));
}
