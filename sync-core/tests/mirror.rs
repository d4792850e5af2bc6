//! End-to-end mirror semantics through the real protocol (controller and agent in one process).

mod common;

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use common::*;
use sync_core::push::PushOptions;

fn write(p: &Path, data: &[u8]) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

#[test]
fn first_sync_then_noop_then_changes() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    write(&src.join("pkg/__init__.py"), b"");
    write(&src.join("pkg/mod.py"), b"x = 1\n");
    write(&src.join("dir with space/ünï.py"), b"u");
    write(&src.join(".git/HEAD"), b"ref");
    write(&src.join("pkg/__pycache__/mod.cpython-311.pyc"), b"pyc");
    std::fs::create_dir_all(src.join("empty")).unwrap();
    symlink("mod.py", src.join("pkg/link.py")).unwrap();
    std::fs::set_permissions(
        src.join("pkg/mod.py"),
        std::fs::Permissions::from_mode(0o751),
    )
    .unwrap();

    let r = sync(&src, &dst);
    assert!(!r.up_to_date);
    assert_eq!(
        snapshot(&src)
            .into_iter()
            .filter(|e| !e.0.starts_with(".git") && !e.0.ends_with(".pyc"))
            .collect::<Vec<_>>(),
        snapshot(&dst)
    );
    assert!(!dst.join(".git").exists());
    assert!(dst.join("pkg/__pycache__").is_dir());

    let r = sync(&src, &dst);
    assert!(r.up_to_date, "second sync must be a no-op");
    assert_eq!(r.literal_bytes, 0);

    write(&src.join("pkg/mod.py"), b"x = 2\n");
    std::fs::remove_file(src.join("dir with space/ünï.py")).unwrap();
    let r = sync(&src, &dst);
    assert_eq!(r.sent.len(), 1);
    assert_eq!(r.outcome.deleted, 1);
    assert_eq!(std::fs::read(dst.join("pkg/mod.py")).unwrap(), b"x = 2\n");
    assert!(r.outcome.problems.is_empty(), "{:?}", r.outcome.problems);
}

#[test]
fn worker_only_ignored_entries_survive() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    write(&src.join("a.py"), b"a");
    sync(&src, &dst);
    write(&dst.join(".venv/bin/python"), b"venv");
    write(&dst.join("pkg/__pycache__/m.pyc"), b"pyc");
    write(&dst.join("stray.py"), b"stray");
    let r = sync(&src, &dst);
    // `pkg/` holds only protected entries, so it stays, as rsync keeps a directory of excluded files.
    assert_eq!(r.outcome.deleted, 1, "{:?}", r.plan.deleted);
    assert!(dst.join(".venv/bin/python").exists());
    assert!(dst.join("pkg/__pycache__/m.pyc").exists());
    assert!(!dst.join("stray.py").exists());
}

#[test]
fn big_file_edit_goes_by_delta() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    let mut data: Vec<u8> = (0..(20u32 << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    write(&src.join("blob.bin"), &data);
    sync(&src, &dst);
    for b in &mut data[(10 << 20)..(10 << 20) + 4096] {
        *b = b.wrapping_add(1);
    }
    write(&src.join("blob.bin"), &data);
    let r = sync(&src, &dst);
    assert_eq!(r.delta_files, 1);
    assert!(r.delta_bytes < 32 << 10, "delta {}", r.delta_bytes);
    assert!(r.wire_sent < 64 << 10, "wire {}", r.wire_sent);
    assert_eq!(std::fs::read(dst.join("blob.bin")).unwrap(), data);
}

/// Where bytes are cheap (a local target), a big file's changed leaves go whole and its other
/// leaves are copied on the worker from the old file, with no signature: growing, shrinking,
/// and edits in the first, a middle and the last (short) leaf.
#[test]
fn big_file_edits_go_by_leaves_where_bytes_are_cheap() {
    const LEAF: usize = sync_core::hash::LEAF as usize;
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    let o = sync_core::push::PushOptions {
        leaves: true,
        local_sources: true,
        ..opts(&dst)
    };
    let mut data: Vec<u8> = (0..(4 * LEAF + 12_345) as u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    write(&src.join("blob.bin"), &data);
    sync_with(&scan_dir(&src, &[]), &o).unwrap();
    // The worker's stamps are certified once they are older than the racy window.
    let settle = || std::thread::sleep(std::time::Duration::from_millis(80));
    type Edit = Box<dyn Fn(&mut Vec<u8>)>;
    let edits: [(&str, Edit); 5] = [
        ("middle leaf", Box::new(|d| d[2 * LEAF + 7] ^= 1)),
        (
            "first and last leaf",
            Box::new(|d| {
                d[0] ^= 1;
                let n = d.len();
                d[n - 1] ^= 1;
            }),
        ),
        (
            "grown by 1.5 leaves",
            Box::new(|d| d.extend((0..LEAF * 3 / 2).map(|i| i as u8))),
        ),
        (
            "shrunk to just over a leaf",
            Box::new(|d| d.truncate(LEAF + 5)),
        ),
        (
            "shrunk below a leaf",
            Box::new(|d| {
                d.truncate(LEAF / 2);
                d[7] ^= 1;
            }),
        ),
    ];
    for (what, edit) in edits {
        settle();
        let old = data.clone();
        edit(&mut data);
        // The new leaves that the old file does not have at the same place go whole.
        let literal: usize = data
            .chunks(LEAF)
            .zip(0..)
            .filter(|(leaf, i)| old.chunks(LEAF).nth(*i) != Some(*leaf))
            .map(|(leaf, _)| leaf.len())
            .sum();
        write(&src.join("blob.bin"), &data);
        let r = sync_with(&scan_dir(&src, &[]), &o).unwrap();
        assert_eq!(r.delta_files, 1, "{what}");
        let overhead = r.delta_bytes as usize - literal.min(r.delta_bytes as usize);
        assert!(
            r.delta_bytes as usize >= literal && overhead < 100,
            "{what}: {} delta bytes for {literal} bytes of changed leaves",
            r.delta_bytes
        );
        assert!(
            r.outcome.problems.is_empty(),
            "{what}: {:?}",
            r.outcome.problems
        );
        assert_eq!(std::fs::read(dst.join("blob.bin")).unwrap(), data, "{what}");
        assert_eq!(snapshot(&src), snapshot(&dst), "{what}");
    }
    // Without a settled (certified) old version, the file goes by signature instead.
    let n = data.len();
    data[n / 2] ^= 1;
    write(&src.join("blob.bin"), &data);
    std::fs::write(dst.join("blob.bin"), &data[..data.len() - 1]).unwrap();
    let r = sync_with(&scan_dir(&src, &[]), &o).unwrap();
    assert_eq!(std::fs::read(dst.join("blob.bin")).unwrap(), data);
    assert!(r.outcome.problems.is_empty());
}

#[test]
fn local_sources_are_read_by_the_agent_and_refused_by_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write(&src.join("pkg/a.py"), b"print('a')\n");
    write(&src.join("pkg/big.bin"), &vec![7u8; 3 << 20]);
    let tree = scan_dir(&src, &[]);
    let dest = dir.path().join("dest");
    let local = PushOptions {
        local_sources: true,
        ..opts(&dest)
    };
    let r = sync_with(&tree, &local).unwrap();
    assert_eq!(r.sent.len(), 2);
    assert!(
        r.wire_sent < 64 << 10,
        "file bytes went through the pipe: {r:?}"
    );
    assert_eq!(snapshot(&src), snapshot(&dest));
    // A source that changed since the scan is not installed, and the rest still is.
    write(&src.join("pkg/b.py"), b"b = 1\n");
    let tree = scan_dir(&src, &[]);
    write(&src.join("pkg/b.py"), b"b = 2\n");
    let r = sync_with(&tree, &local).unwrap();
    assert_eq!(r.outcome.problems.len(), 1, "{r:?}");
    assert!(r.outcome.problems[0].1.contains("content changed"), "{r:?}");
    assert!(!dest.join("pkg/b.py").exists());
    // An agent serving a session root reads nothing its controller names.
    let root = dir.path().join("served");
    std::fs::create_dir_all(&root).unwrap();
    let o = PushOptions {
        dest: "w".into(),
        ..local
    };
    let err = sync_confined(&tree, &o, Some(&root)).unwrap_err();
    assert!(err.to_string().contains("not on this machine"), "{err:#}");
    assert!(!root.join("w/pkg/a.py").exists());
}

#[test]
fn type_changes_and_renames() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    write(&src.join("x/inner.py"), b"inner");
    write(&src.join("f"), b"file");
    symlink("f", src.join("l")).unwrap();
    write(&src.join("moved_from.txt"), b"content that moves");
    sync(&src, &dst);
    std::fs::remove_dir_all(src.join("x")).unwrap();
    write(&src.join("x"), b"now a file");
    std::fs::remove_file(src.join("f")).unwrap();
    write(&src.join("f/child"), b"now a dir");
    std::fs::remove_file(src.join("l")).unwrap();
    std::fs::create_dir(src.join("l")).unwrap();
    std::fs::rename(src.join("moved_from.txt"), src.join("moved_to.txt")).unwrap();
    let r = sync(&src, &dst);
    assert_eq!(snapshot(&src), snapshot(&dst));
    assert_eq!(
        r.plan.local_copies, 1,
        "rename is a local copy, not a transfer"
    );
}

#[test]
fn foreign_destination_is_refused_unless_adopted() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    write(&src.join("a"), b"a");
    write(&dst.join("precious"), b"p");
    let e = sync_with(&scan_dir(&src, &[]), &opts(&dst)).unwrap_err();
    assert!(
        e.to_string()
            .contains("is not empty and was not created by rdist"),
        "{e}"
    );
    assert!(dst.join("precious").exists());
    let mut o = opts(&dst);
    o.adopt = true;
    sync_with(&scan_dir(&src, &[]), &o).unwrap();
    assert!(!dst.join("precious").exists());
}

#[test]
fn incremental_sync_sends_only_changed_directories_entries() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    for d in 0..200 {
        for f in 0..10 {
            write(
                &src.join(format!("pkg{d}/mod{f}.py")),
                format!("x = {d}{f}\n").as_bytes(),
            );
        }
    }
    let first = sync(&src, &dst);
    write(&src.join("pkg7/mod3.py"), b"x = 'changed'\n");
    write(&src.join("pkg7/new.py"), b"new\n");
    std::fs::remove_file(src.join("pkg9/mod0.py")).unwrap();
    let r = sync(&src, &dst);
    assert_eq!(r.sent.len(), 2);
    assert_eq!(r.outcome.deleted, 1);
    assert_eq!(snapshot(&src), snapshot(&dst));
    // 2,200 entries: the first sync sent them all; this one sends a 16-byte key per directory
    // and the entries of the three directories that changed (and the top level).
    assert!(
        r.wire_sent * 4 < first.wire_sent - first.literal_bytes,
        "incremental sent {} bytes, the first sync's manifest was about {}",
        r.wire_sent,
        first.wire_sent - first.literal_bytes
    );
}

#[test]
fn a_source_gone_before_it_is_read_is_not_reported_sent() {
    // Removed after the scan: whether the controller reads it or the agent does (local
    // sources), it is a problem, and neither counted nor listed as sent.
    for local_sources in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        write(&src.join("a.py"), b"a = 1\n");
        write(&src.join("gone.py"), b"gone = 1\n");
        let tree = scan_dir(&src, &[]);
        std::fs::remove_file(src.join("gone.py")).unwrap();
        let dest = dir.path().join("dest");
        let o = PushOptions {
            local_sources,
            ..opts(&dest)
        };
        let r = sync_with(&tree, &o).unwrap();
        assert_eq!(r.outcome.problems.len(), 1, "{r:?}");
        assert_eq!(r.outcome.problems[0].0, "gone.py", "{r:?}");
        let a = tree
            .manifest
            .position(&sync_core::path::RelPath::new("a.py").unwrap())
            .unwrap() as u32;
        assert_eq!(r.sent, [a], "local_sources: {local_sources}");
        assert_eq!(r.literal_bytes, 6, "local_sources: {local_sources}");
        assert_eq!(r.outcome.files_written, 1);
    }
}
