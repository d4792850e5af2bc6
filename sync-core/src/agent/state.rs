//! What the destination holds now: a walk of the destination checked against the state the
//! agent saved after its last sync, so only files whose stamp changed (or is too recent to
//! trust) are read and hashed again.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::filter::Filter;
use crate::hash::{hash_file, now_ns, stamp_trustworthy};
use crate::manifest::{Entry, Hash, Kind, Manifest, Stamp};
use crate::path::RelPath;
use crate::stage::STATE_DIR;
use crate::walk::{Found, Problem, WalkRoot, walk};

const STATE_VERSION: u32 = 2;
const STATE_FILE: &str = "state";

#[derive(Serialize, Deserialize)]
struct SavedState {
    version: u32,
    saved_ns: i64,
    files: Vec<(RelPath, Stamp, Hash)>,
    /// Worker-only directories kept because they hold only protected entries.
    kept: Vec<RelPath>,
}

/// The destination as it is, with the stamp of every regular file.
pub struct Current {
    pub manifest: Manifest,
    /// Stamps of regular files, by manifest index.
    pub stamps: HashMap<usize, Stamp>,
    pub problems: Vec<Problem>,
    /// Files read to hash them.
    pub rehashed: usize,
    /// Worker-only directories that hold nothing but protected entries (a `__pycache__` that
    /// pytest made on the worker): left out of `manifest`, so they neither block "up to date"
    /// nor get reported as deleted on every sync.
    pub kept: Vec<RelPath>,
}

fn state_path(dest: &Path) -> std::path::PathBuf {
    dest.join(STATE_DIR).join(STATE_FILE)
}

type Saved = (i64, HashMap<RelPath, (Stamp, Hash)>, HashSet<RelPath>);

fn load_saved(dest: &Path) -> Saved {
    std::fs::read(state_path(dest))
        .ok()
        .and_then(|b| postcard::from_bytes::<SavedState>(&b).ok())
        .filter(|s| s.version == STATE_VERSION)
        .map(|s| {
            (
                s.saved_ns,
                s.files.into_iter().map(|(p, st, h)| (p, (st, h))).collect(),
                s.kept.into_iter().collect(),
            )
        })
        .unwrap_or_default()
}

/// Walks `dest` with `filter` and hashes what the saved state cannot vouch for.
pub fn current(dest: &Path, filter: &Filter) -> Current {
    let (saved_ns, saved, kept_before) = load_saved(dest);
    let root = WalkRoot {
        abs: dest.to_owned(),
        filter_rel: None,
        dest_rel: None,
    };
    let (mut walked, mut problems) = walk(&root, filter);
    walked.sort_by(|a, b| a.path.cmp(&b.path));
    // A kept-aside directory is one kept before whose walked children are all kept-aside
    // directories themselves (deepest first, so nested ones count as empty).
    let mut live: HashMap<RelPath, usize> = HashMap::new();
    for w in &walked {
        if let Some(p) = w.path.parent() {
            *live.entry(p).or_insert(0) += 1;
        }
    }
    let mut candidates: Vec<&RelPath> = walked
        .iter()
        .filter(|w| matches!(w.found, Found::Dir { .. }) && kept_before.contains(&w.path))
        .map(|w| &w.path)
        .collect();
    candidates.sort_by_key(|p| std::cmp::Reverse(p.depth()));
    let mut aside: HashSet<RelPath> = HashSet::new();
    for d in candidates {
        if live.get(d).copied().unwrap_or(0) == 0 {
            aside.insert(d.clone());
            if let Some(p) = d.parent()
                && let Some(n) = live.get_mut(&p)
            {
                *n -= 1;
            }
        }
    }
    walked.retain(|w| !aside.contains(&w.path));
    let mut kept: Vec<RelPath> = aside.into_iter().collect();
    kept.sort();
    let hashes: Vec<Option<Result<Hash, String>>> = walked
        .par_iter()
        .map(|w| match &w.found {
            Found::File { stamp, .. } => Some(match saved.get(&w.path) {
                Some((s, h)) if s == stamp && stamp_trustworthy(s, saved_ns) => Ok(*h),
                _ => hash_file(&w.abs, stamp.size).map_err(|e| e.to_string()),
            }),
            _ => None,
        })
        .collect();
    let mut rehashed = 0;
    let mut entries = Vec::with_capacity(walked.len());
    let mut stamps = HashMap::new();
    for (w, h) in walked.into_iter().zip(hashes) {
        let kind = match (w.found, h) {
            (Found::Dir { mode }, _) => Kind::Dir { mode },
            (Found::Symlink { target }, _) => Kind::Symlink { target },
            (Found::File { stamp, mode }, Some(Ok(hash))) => {
                if saved.get(&w.path).map(|(s, _)| s) != Some(&stamp) {
                    rehashed += 1;
                }
                stamps.insert(entries.len(), stamp);
                Kind::File {
                    size: stamp.size,
                    mtime_ns: stamp.mtime_ns,
                    mode,
                    hash,
                }
            }
            (Found::File { .. }, res) => {
                let msg = match res {
                    Some(Err(e)) => e,
                    _ => "not hashed".to_owned(),
                };
                problems.push(Problem::new(
                    w.path.to_string(),
                    format!("cannot read: {msg}"),
                ));
                continue;
            }
        };
        entries.push(Entry { path: w.path, kind });
    }
    Current {
        manifest: Manifest::from_unsorted(entries),
        stamps,
        problems,
        rehashed,
        kept,
    }
}

/// A regular file of the destination as a sync left it.
pub struct SaveFile {
    pub path: RelPath,
    pub size: u64,
    pub hash: Hash,
    /// Its stamp, when this sync did not touch it (otherwise it is read again).
    pub stamp: Option<Stamp>,
}

/// Records the stamps and hashes of `files` (the destination's regular files as they now are)
/// for the next sync. Files whose stamp no longer matches their size are left out and will be
/// hashed again.
///
/// # Errors
/// When the state file cannot be written.
pub fn save(dest: &Path, files: Vec<SaveFile>, kept: Vec<RelPath>) -> std::io::Result<()> {
    let stamped: Vec<(RelPath, Stamp, Hash)> = files
        .into_par_iter()
        .filter_map(|f| match f.stamp {
            // Untouched by this sync: the stamp taken when its hash was checked still holds.
            Some(s) => Some((f.path, s, f.hash)),
            None => {
                let m = std::fs::symlink_metadata(f.path.to_native(dest)).ok()?;
                let s = Stamp::of(&m);
                (m.is_file() && s.size == f.size).then_some((f.path, s, f.hash))
            }
        })
        .collect();
    let bytes = postcard::to_stdvec(&SavedState {
        version: STATE_VERSION,
        saved_ns: now_ns(),
        files: stamped,
        kept,
    })
    .map_err(std::io::Error::other)?;
    let path = state_path(dest);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, &path)
}
