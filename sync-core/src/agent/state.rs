//! What the destination holds now: a walk of the destination checked against the state the
//! agent saved after its last sync, so only files whose stamp changed (or is too recent to
//! trust) are read and hashed again.

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
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

/// What [`save`] writes; read back as [`LoadedState`], with borrowed paths.
#[derive(Serialize)]
struct SavedState<'a> {
    version: u32,
    saved_ns: i64,
    files: Vec<(&'a RelPath, Stamp, Hash)>,
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

/// The saved state as read back: paths borrowed from the file's bytes (they are only compared
/// with walked paths, never used to reach the file system), sorted by path.
#[derive(Deserialize, Default)]
struct LoadedState<'a> {
    version: u32,
    saved_ns: i64,
    #[serde(borrow)]
    files: Vec<(&'a str, Stamp, Hash)>,
    kept: Vec<RelPath>,
}

fn load_saved(bytes: &[u8]) -> LoadedState<'_> {
    let mut s = postcard::from_bytes::<LoadedState<'_>>(bytes)
        .ok()
        .filter(|s| s.version == STATE_VERSION)
        .unwrap_or_default();
    if !s.files.is_sorted_by(|a, b| a.0 <= b.0) {
        s.files.sort_unstable_by(|a, b| a.0.cmp(b.0));
    }
    s
}

/// Walks `dest` with `filter` and hashes what the saved state cannot vouch for.
pub fn current(dest: &Path, filter: &Filter) -> Current {
    let root = WalkRoot {
        abs: dest.to_owned(),
        filter_rel: None,
        dest_rel: None,
    };
    let bytes = std::fs::read(state_path(dest)).unwrap_or_default();
    let (saved, (mut walked, mut problems)) =
        rayon::join(|| load_saved(&bytes), || walk(&root, filter));
    let saved_ns = saved.saved_ns;
    let kept_before: HashSet<&RelPath> = saved.kept.iter().collect();
    walked.par_sort_by(|a, b| a.path.cmp(&b.path));
    // A kept-aside directory is one kept before whose walked children are all kept-aside
    // directories themselves (deepest first, so nested ones count as empty).
    let mut live: HashMap<&str, usize> = HashMap::default();
    if !kept_before.is_empty() {
        for w in &walked {
            if let Some(p) = w.path.parent_str() {
                *live.entry(p).or_insert(0) += 1;
            }
        }
    }
    let mut candidates: Vec<&RelPath> = walked
        .iter()
        .filter(|w| matches!(w.found, Found::Dir { .. }) && kept_before.contains(&&w.path))
        .map(|w| &w.path)
        .collect();
    candidates.sort_by_key(|p| std::cmp::Reverse(p.depth()));
    let mut aside: HashSet<RelPath> = HashSet::default();
    for d in candidates {
        if live.get(d.as_str()).copied().unwrap_or(0) == 0 {
            aside.insert(d.clone());
            if let Some(p) = d.parent_str()
                && let Some(n) = live.get_mut(p)
            {
                *n -= 1;
            }
        }
    }
    walked.retain(|w| !aside.contains(&w.path));
    let mut kept: Vec<RelPath> = aside.into_iter().collect();
    kept.sort();
    // Both lists are sorted by path: pair each walked entry with its saved record.
    let mut k = 0;
    let prior: Vec<Option<(Stamp, Hash)>> = walked
        .iter()
        .map(|w| {
            let p = w.path.as_str();
            while k < saved.files.len() && saved.files[k].0 < p {
                k += 1;
            }
            match saved.files.get(k) {
                Some((sp, st, h)) if *sp == p => Some((*st, *h)),
                _ => None,
            }
        })
        .collect();
    // `(hash, read)`: `read` when the file had to be read (changed, or too recent to trust).
    let hashes: Vec<Option<Result<(Hash, bool), String>>> = walked
        .par_iter()
        .zip(&prior)
        .map(|(w, prior)| match &w.found {
            Found::File { stamp, .. } => Some(match prior {
                Some((s, h)) if s == stamp && stamp_trustworthy(s, saved_ns) => Ok((*h, false)),
                _ => hash_file(&w.abs, stamp.size)
                    .map(|h| (h, true))
                    .map_err(|e| e.to_string()),
            }),
            _ => None,
        })
        .collect();
    let mut rehashed = 0;
    let mut entries = Vec::with_capacity(walked.len());
    let mut stamps = HashMap::default();
    for (w, h) in walked.into_iter().zip(hashes) {
        let kind = match (w.found, h) {
            (Found::Dir { mode }, _) => Kind::Dir { mode },
            (Found::Symlink { target }, _) => Kind::Symlink { target },
            (Found::File { stamp, mode }, Some(Ok((hash, read)))) => {
                if read {
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
pub struct SaveFile<'a> {
    pub path: &'a RelPath,
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
pub fn save(dest: &Path, files: Vec<SaveFile<'_>>, kept: Vec<RelPath>) -> std::io::Result<()> {
    let stamped: Vec<(&RelPath, Stamp, Hash)> = files
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
    let state = SavedState {
        version: STATE_VERSION,
        saved_ns: now_ns(),
        files: stamped,
        kept,
    };
    let bytes = postcard::to_stdvec(&state).map_err(std::io::Error::other)?;
    let path = state_path(dest);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, &path)
}
