//! Helpers: run a controller and an agent in one process, connected by OS pipes.
#![allow(dead_code)]

use std::path::Path;

use sync_core::agent::{AgentOptions, serve};
use sync_core::filter::Filter;
use sync_core::hash::HashCache;
use sync_core::push::{PushError, PushOptions, PushReport, push};
use sync_core::scan::{SourceTree, scan};
use sync_core::walk::WalkRoot;

pub fn scan_dir(src: &Path, ignore: &[&str]) -> SourceTree {
    let filter = Filter::new(ignore).unwrap();
    let root = WalkRoot {
        abs: src.to_owned(),
        filter_rel: None,
        dest_rel: None,
    };
    scan(src, &[root], &filter, &mut HashCache::in_memory()).unwrap()
}

pub fn opts(dest: &Path) -> PushOptions {
    PushOptions {
        dest: dest.display().to_string(),
        ignore: vec![],
        dry_run: false,
        fsync: false,
        adopt: false,
        lock_wait_ms: 5_000,
        base: Default::default(),
        token: None,
        delta_min: sync_core::delta::DELTA_MIN_SIZE,
        version: "test".into(),
        compress: false,
        leaves: false,
        local_sources: false,
    }
}

pub fn sync_with(tree: &SourceTree, o: &PushOptions) -> Result<PushReport, PushError> {
    sync_confined(tree, o, None)
}

/// [`sync_with`] to an agent that serves the session root `confine` (as `rdist serve` does).
pub fn sync_confined(
    tree: &SourceTree,
    o: &PushOptions,
    confine: Option<&Path>,
) -> Result<PushReport, PushError> {
    let (agent_in, ctl_out) = std::io::pipe().unwrap();
    let (ctl_in, agent_out) = std::io::pipe().unwrap();
    let confine = confine.map(Path::to_owned);
    let agent = std::thread::spawn(move || {
        let opts = AgentOptions {
            version: "test".into(),
            threads: 2,
            confine,
            home: None,
            cache_dir: None,
            token: None,
            worker_plugin: None,
        };
        serve(agent_in, agent_out, &opts)
    });
    let res = push(tree, ctl_in, ctl_out, o, &|_, _| {});
    let _ = agent.join().unwrap();
    res
}

pub fn sync(src: &Path, dest: &Path) -> PushReport {
    sync_with(&scan_dir(src, &[]), &opts(dest)).unwrap()
}

/// Every entry below `dir` except `.rdist`, as (path, kind, mode, mtime_ns, content/target).
pub fn snapshot(dir: &Path) -> Vec<(String, String, u32, i64, Vec<u8>)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    for e in walkdir(dir) {
        let rel = e.strip_prefix(dir).unwrap().to_str().unwrap().to_owned();
        if rel.is_empty() || rel == ".rdist" || rel.starts_with(".rdist/") {
            continue;
        }
        let m = std::fs::symlink_metadata(&e).unwrap();
        let (kind, data, mtime) = if m.file_type().is_symlink() {
            (
                "link",
                std::fs::read_link(&e)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes(),
                0,
            )
        } else if m.is_dir() {
            ("dir", vec![], 0)
        } else {
            (
                "file",
                std::fs::read(&e).unwrap(),
                m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            )
        };
        let mode = if kind == "link" { 0 } else { m.mode() & 0o7777 };
        out.push((rel, kind.to_owned(), mode, mtime, data));
    }
    out.sort();
    out
}

/// `dir` and every path below it, symlinks not followed.
pub fn walkdir(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![dir.to_owned()];
    let mut i = 0;
    while i < out.len() {
        let p = out[i].clone();
        i += 1;
        let m = std::fs::symlink_metadata(&p).unwrap();
        if m.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                out.push(e.unwrap().path());
            }
        }
    }
    out
}
