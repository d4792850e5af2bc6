//! What the destination holds now: a walk of the destination checked against the state the
//! agent saved after its last sync, so only files whose stamp changed (or is too recent to
//! trust) are read and hashed again.

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::path::Path;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::filter::Filter;
use crate::hash::{hash_file, now_ns, racy_window_ns, stamp_trustworthy};
use crate::listing::{self, Listing};
use crate::manifest::{Entry, Hash, Kind, Manifest, Stamp};
use crate::path::RelPath;
use crate::stage::STATE_DIR;
use crate::walk::{Found, Problem, WalkRoot, walk_listed};

const STATE_VERSION: u32 = 2;
const STATE_FILE: &str = "state";
/// The walk's directory listing: its own file, read before the walk (which needs it) while the
/// state is read alongside the walk.
const LISTING_FILE: &str = "listing";

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
    /// Stamps of regular files, by manifest index (`None` for other entries).
    pub stamps: Vec<Option<Stamp>>,
    pub problems: Vec<Problem>,
    /// Files read to hash them.
    pub rehashed: usize,
    /// Worker-only directories that hold nothing but protected entries (a `__pycache__` that
    /// pytest made on the worker): left out of `manifest`, so they neither block "up to date"
    /// nor get reported as deleted on every sync.
    pub kept: Vec<RelPath>,
    /// The walk's directory listing, when it differs from the saved one (see
    /// [`crate::listing`]): [`save_listing`] writes it.
    pub listing: Option<Listing>,
    /// Directories the walk did not read, because the saved listing vouched for their names.
    pub reused_dirs: usize,
}

fn state_path(dest: &Path) -> std::path::PathBuf {
    dest.join(STATE_DIR).join(STATE_FILE)
}

fn listing_path(dest: &Path) -> std::path::PathBuf {
    dest.join(STATE_DIR).join(LISTING_FILE)
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
    let known = listing::load(&listing_path(dest));
    let bytes = std::fs::read(state_path(dest)).unwrap_or_default();
    let (saved, walk) = rayon::join(
        || load_saved(&bytes),
        || walk_listed(&root, filter, Some(&known)),
    );
    let (mut walked, mut problems) = (walk.entries, walk.problems);
    let saved_ns = saved.saved_ns;
    let kept_before: HashSet<&RelPath> = saved.kept.iter().collect();
    debug_assert!(walked.is_sorted_by(|a, b| a.path < b.path));
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
    let mut stamps = Vec::with_capacity(walked.len());
    for (w, h) in walked.into_iter().zip(hashes) {
        let mut stamped = None;
        let kind = match (w.found, h) {
            (Found::Dir { mode }, _) => Kind::Dir { mode },
            (Found::Symlink { target }, _) => Kind::Symlink { target },
            (Found::File { stamp, mode }, Some(Ok((hash, read)))) => {
                if read {
                    rehashed += 1;
                }
                stamped = Some(stamp);
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
        stamps.push(stamped);
    }
    debug_assert!(entries.is_sorted_by(|a, b| a.path < b.path));
    Current {
        manifest: Manifest::from_unsorted(entries),
        stamps,
        problems,
        rehashed,
        kept,
        listing: walk.changed.then_some(walk.listing),
        reused_dirs: walk.reused,
    }
}

/// Written data from which [`save`] waits out the racy window rather than leave it to be read
/// again by the next sync (reading 128 MiB costs about what the wait does).
const RACY_WAIT_MIN: u64 = 128 << 20;
/// The longest such wait: the window of file systems with sub-second timestamps. (On
/// whole-second ones the next sync reads the files again instead.)
const MAX_RACY_WAIT_NS: i64 = 50_000_000;

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
    save_waiting(dest, files, kept, RACY_WAIT_MIN)
}

/// Saves the walk's listing of `current` for the next sync, if it changed.
///
/// # Errors
/// When the listing file cannot be written.
pub fn save_listing(dest: &Path, current: &Current) -> std::io::Result<()> {
    match &current.listing {
        Some(l) => listing::save(&listing_path(dest), std::slice::from_ref(l)),
        None => Ok(()),
    }
}

fn save_waiting(
    dest: &Path,
    files: Vec<SaveFile<'_>>,
    kept: Vec<RelPath>,
    wait_min: u64,
) -> std::io::Result<()> {
    // Files untouched by this sync keep the stamp taken when their hash was checked; the ones
    // it wrote are stamped now (in parallel: they may be many).
    let written: Vec<&SaveFile<'_>> = files.iter().filter(|f| f.stamp.is_none()).collect();
    let stamp_written = || -> Vec<Option<Stamp>> {
        written
            .par_iter()
            .map(|f| {
                let m = std::fs::symlink_metadata(f.path.to_native(dest)).ok()?;
                let s = Stamp::of(&m);
                (m.is_file() && s.size == f.size).then_some(s)
            })
            .collect()
    };
    let mut fresh = stamp_written();
    // Files this sync wrote are too recent for their stamps to be trusted (the racy rule), so
    // the next sync would read them again. When that is a lot of data, waiting out the rest of
    // the window now is the cheaper deal: then their stamps are taken late enough to count.
    let now = now_ns();
    let racy = fresh
        .iter()
        .flatten()
        .filter(|s| !stamp_trustworthy(s, now));
    let racy_bytes: u64 = racy.clone().map(|s| s.size).sum();
    if racy_bytes >= wait_min {
        let until = racy
            .map(|s| s.ctime_ns.max(s.mtime_ns) + racy_window_ns(s))
            .max()
            .unwrap_or(now);
        let wait = (until - now).clamp(0, MAX_RACY_WAIT_NS) + 1_000_000;
        std::thread::sleep(std::time::Duration::from_nanos(wait as u64));
        fresh = stamp_written();
    }
    let mut fresh = fresh.into_iter();
    let stamped = files
        .iter()
        .filter_map(|f| {
            let s = f.stamp.or_else(|| fresh.next().flatten())?;
            Some((f.path, s, f.hash))
        })
        .collect();
    let state = SavedState {
        version: STATE_VERSION,
        saved_ns: now_ns(),
        files: stamped,
        kept,
    };
    // Sized for a typical record, so the encoding is not copied over and over as it grows.
    let bytes = postcard::to_extend(&state, Vec::with_capacity(files.len() * 112 + 64))
        .map_err(std::io::Error::other)?;
    crate::write_atomic(&state_path(dest), &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `a` (as a sync would), saves the state with the given waiting threshold, and
    /// says whether the next sync may trust the saved stamp of `a`.
    fn trusted_after_save(wait_min: u64) -> bool {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"fresh bytes").unwrap();
        std::fs::create_dir_all(dir.path().join(crate::stage::STATE_DIR)).unwrap();
        let path = RelPath::new("a").unwrap();
        let files = vec![SaveFile {
            path: &path,
            size: 11,
            hash: *blake3::hash(b"fresh bytes").as_bytes(),
            stamp: None,
        }];
        save_waiting(dir.path(), files, Vec::new(), wait_min).unwrap();
        let bytes = std::fs::read(state_path(dir.path())).unwrap();
        let saved = load_saved(&bytes);
        let (p, stamp, _) = saved.files[0];
        assert_eq!(p, "a");
        stamp_trustworthy(&stamp, saved.saved_ns)
    }

    #[test]
    fn much_freshly_written_data_is_waited_for_a_little_is_read_again() {
        // A sync that wrote little: its files are read again next time.
        assert!(!trusted_after_save(u64::MAX));
        // One that wrote a lot (here: any amount) waits out the window and saves trusted stamps.
        let started = std::time::Instant::now();
        assert!(trusted_after_save(1));
        assert!(started.elapsed() < std::time::Duration::from_secs(3));
    }
}
