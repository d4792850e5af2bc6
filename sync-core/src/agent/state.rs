//! What the destination holds now: a walk of the destination checked against the state the
//! agent saved after its last sync, so only files whose stamp changed (or was too recent to
//! vouch for their content) are read and hashed again.
//!
//! Every stamp the state holds is *certified*: the file system's clock had moved past the
//! file's last change, so any later change gives the file another stamp (git's racy-clean
//! rule). A stamp the walk took is certified when the change is older than the walk by the racy
//! window. A file this sync wrote is saved with the stamp taken right after the sync's own last
//! change of it (a later change by anything else gives it another stamp, so the next walk reads
//! it: one in a later clock tick changes the ctime, one within the same tick the mtime, which
//! the sync had set to the source's), certified against the file system's own clock, read from
//! a probe file created when the state is saved (Mercurial's "mtime boundary"), so a file
//! written a few milliseconds before the end of a sync is not read again by the next one.

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::path::Path;

use rayon::prelude::*;

use crate::filter::Filter;
use crate::hash::{Cv, hash_file_leaves, now_ns, stamp_from_row, stamp_row, stamp_trustworthy};
use crate::listing::{self, Listing};
use crate::manifest::{Entry, Hash, Kind, Manifest, Stamp};
use crate::path::RelPath;
use crate::sealed::HEADER;
use crate::stage::STATE_DIR;
use crate::walk::{Found, Problem, WalkRoot, walk_listed};

/// The state file: a header, a record per file, then the kept directories (postcard).
///
/// The header is [`crate::sealed`]'s, its count the number of records. A record: the stamp's
/// dev, ino, size, mtime_ns and ctime_ns (8 bytes each), the hash (32), the path's length and
/// the number of leaves (u32 each), the leaves' chaining values (32 bytes each), then the
/// path. Written and read with no serializer: tens of thousands of records are most of what
/// saving the state at the end of a sync and reading it at the start cost.
const STATE_MAGIC: &[u8; 8] = b"rdistst\0";
const STATE_VERSION: u32 = 6;
const STATE_FILE: &str = "state";
/// The walk's directory listing: its own file, read before the walk (which needs it) while the
/// state is read alongside the walk.
const LISTING_FILE: &str = "listing";
/// The largest state file read (a million files take about 150 MB); a larger one, like a
/// damaged one, is no state.
const MAX_STATE_BYTES: u64 = 1 << 30;

/// The destination as it is, with the stamp of every regular file.
pub struct Current {
    pub manifest: Manifest,
    /// Certified stamps of regular files, by manifest index: `None` for other entries and for
    /// files changed too recently for their stamp to vouch for the content just read.
    pub stamps: Vec<Option<Stamp>>,
    /// The leaves of big files with a certified stamp, by manifest index (see
    /// [`crate::hash::LEAF`]).
    pub leaves: HashMap<usize, Vec<Cv>>,
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
#[derive(Default)]
struct LoadedState<'a> {
    /// Certified stamps only (see the module's doc), with the leaves of big files.
    files: Vec<(&'a str, Stamp, Hash, &'a [Cv])>,
    /// Worker-only directories kept because they hold only protected entries.
    kept: Vec<RelPath>,
}

/// The state in `bytes`; an empty one when they are not a whole state file of this version.
fn load_saved(bytes: &[u8]) -> LoadedState<'_> {
    let mut s = parse_state(bytes).unwrap_or_default();
    if !s.files.is_sorted_by(|a, b| a.0 <= b.0) {
        s.files.sort_unstable_by(|a, b| a.0.cmp(b.0));
    }
    s
}

fn parse_state(bytes: &[u8]) -> Option<LoadedState<'_>> {
    let (n, mut rest) = crate::sealed::open(bytes, STATE_MAGIC, STATE_VERSION)?;
    let mut files = Vec::with_capacity(n.min(rest.len() / 80));
    for _ in 0..n {
        let (row, r) = rest.split_first_chunk::<80>()?;
        let stamp = stamp_from_row(row[..40].try_into().expect("40 bytes"));
        let hash: Hash = row[40..72].try_into().expect("32 bytes");
        let path_len = u32::from_le_bytes(row[72..76].try_into().expect("4 bytes")) as usize;
        let leaves = u32::from_le_bytes(row[76..80].try_into().expect("4 bytes")) as usize;
        let (cvs, r) = r.split_at_checked(leaves.checked_mul(32)?)?;
        let (path, r) = r.split_at_checked(path_len)?;
        files.push((
            std::str::from_utf8(path).ok()?,
            stamp,
            hash,
            cvs.as_chunks().0,
        ));
        rest = r;
    }
    match postcard::take_from_bytes(rest).ok()? {
        (kept, []) => Some(LoadedState { files, kept }),
        _ => None,
    }
}

/// The state file's bytes for `files` (stamp, hash, leaves, in path order) and `kept`.
fn encode_state<'a>(
    files: impl Iterator<Item = (&'a RelPath, Stamp, &'a Hash, &'a [Cv])>,
    kept: &[RelPath],
    capacity: usize,
) -> std::io::Result<Vec<u8>> {
    let mut bytes = crate::sealed::start(STATE_MAGIC, STATE_VERSION, capacity);
    let mut n = 0u32;
    for (path, stamp, hash, cvs) in files {
        let len = |k: usize| u32::try_from(k).map_err(std::io::Error::other);
        bytes.extend_from_slice(&stamp_row(&stamp));
        bytes.extend_from_slice(hash);
        bytes.extend_from_slice(&len(path.as_str().len())?.to_le_bytes());
        bytes.extend_from_slice(&len(cvs.len())?.to_le_bytes());
        bytes.extend_from_slice(cvs.as_flattened());
        bytes.extend_from_slice(path.as_str().as_bytes());
        n += 1;
    }
    let mut bytes = postcard::to_extend(kept, bytes).map_err(std::io::Error::other)?;
    crate::sealed::seal(&mut bytes, n);
    Ok(bytes)
}

/// Walks `dest` with `filter` and hashes what the saved state cannot vouch for.
pub fn current(dest: &Path, filter: &Filter) -> Current {
    let root = WalkRoot {
        abs: dest.to_owned(),
        filter_rel: None,
        dest_rel: None,
    };
    let known = listing::load(&listing_path(dest));
    let bytes = crate::read_regular(&state_path(dest), MAX_STATE_BYTES);
    // Before any stamp is taken: a change older than this by the racy window is certified.
    let started = now_ns();
    let (saved, walk) = rayon::join(
        || load_saved(&bytes),
        || walk_listed(&root, filter, Some(&known)),
    );
    let (mut walked, mut problems) = (walk.entries, walk.problems);
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
    let prior: Vec<Option<(Stamp, Hash, &[Cv])>> = walked
        .iter()
        .map(|w| {
            let p = w.path.as_str();
            while k < saved.files.len() && saved.files[k].0 < p {
                k += 1;
            }
            match saved.files.get(k) {
                Some((sp, st, h, cvs)) if *sp == p => Some((*st, *h, *cvs)),
                _ => None,
            }
        })
        .collect();
    // `(hash, leaves, read)`: `read` when the file had to be read (changed, or not certified
    // before).
    type Hashed = (Hash, Vec<Cv>, bool);
    let hashes: Vec<Option<Result<Hashed, String>>> = walked
        .par_iter()
        .zip(&prior)
        .map(|(w, prior)| match &w.found {
            Found::File { stamp, .. } => Some(match prior {
                Some((s, h, cvs)) if s == stamp => Ok((*h, cvs.to_vec(), false)),
                _ => hash_file_leaves(&w.abs, stamp.size)
                    .map(|(h, cvs)| (h, cvs, true))
                    .map_err(|e| e.to_string()),
            }),
            _ => None,
        })
        .collect();
    let mut rehashed = 0;
    let mut entries = Vec::with_capacity(walked.len());
    let mut stamps = Vec::with_capacity(walked.len());
    let mut leaves = HashMap::default();
    // The walk's paths lie scattered over the heap (threads made them, among other
    // allocations); the manifest gets copies made one after another, which every later pass
    // over it reads several times faster. The originals are freed afterwards: freed one by
    // one, each would make room for its own copy.
    let mut walked_paths = Vec::with_capacity(walked.len());
    for (w, h) in walked.into_iter().zip(hashes) {
        let mut stamped = None;
        let kind = match (w.found, h) {
            (Found::Dir { mode }, _) => Kind::Dir { mode },
            (Found::Symlink { target }, _) => Kind::Symlink { target },
            (Found::File { stamp, mode }, Some(Ok((hash, cvs, read)))) => {
                if read {
                    rehashed += 1;
                }
                // A certified stamp stays certified while it is unchanged.
                stamped = (!read || stamp_trustworthy(&stamp, started)).then_some(stamp);
                if stamped.is_some() && !cvs.is_empty() {
                    leaves.insert(entries.len(), cvs);
                }
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
        entries.push(Entry {
            path: w.path.clone(),
            kind,
        });
        walked_paths.push(w.path);
        stamps.push(stamped);
    }
    drop(walked_paths);
    debug_assert!(entries.is_sorted_by(|a, b| a.path < b.path));
    Current {
        manifest: Manifest::from_unsorted(entries),
        stamps,
        leaves,
        problems,
        rehashed,
        kept,
        listing: walk.changed.then_some(walk.listing),
        reused_dirs: walk.reused,
    }
}

/// Written data from which [`save`] waits for the file system's clock to pass the last writes
/// rather than leave them to be read again by the next sync (reading 128 MiB costs about what
/// the wait does).
const RACY_WAIT_MIN: u64 = 128 << 20;
/// The longest such wait. (On whole-second file systems the next sync reads the files again
/// instead.)
const MAX_RACY_WAIT_NS: i64 = 50_000_000;
/// The probe file whose change time is the file system's clock (see the module's doc).
const CLOCK_FILE: &str = "clock";

/// What the state may record of a regular file's stamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveStamp {
    /// Certified when it was taken, and unchanged since.
    Certified(Stamp),
    /// This sync put the file in place (or changed its metadata), and this was its stamp
    /// right after: saved if it is older than the file system's clock when the state is saved
    /// (a change since then gave the file another stamp, which the next walk sees).
    Written(Stamp),
    /// Changed too recently for its stamp to vouch for its content: left out, read next time.
    Uncertified,
}

/// A regular file of the destination as a sync left it.
pub struct SaveFile<'a> {
    pub path: &'a RelPath,
    pub size: u64,
    pub hash: Hash,
    pub stamp: SaveStamp,
    /// The chaining values of its leaves, when it has more than one.
    pub leaves: &'a [Cv],
}

/// Records the stamps and hashes of `files` (the destination's regular files as they now are)
/// for the next sync. Files whose stamp is not certified, or no longer matches their size, are
/// left out and will be hashed again.
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

/// The clock of the file system `dest` is on, read as the stamp of a file created in its state
/// directory now: any change made there after this returns gets a change time at least the
/// stamp's.
fn fs_clock(dest: &Path) -> std::io::Result<Stamp> {
    let p = dest.join(STATE_DIR).join(CLOCK_FILE);
    match std::fs::remove_file(&p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let f = std::fs::File::create_new(&p)?;
    Ok(Stamp::of(&f.metadata()?))
}

/// Whether a stamp taken after the file system's clock read `clock` is certified: its changes
/// are older than the clock, on the same file system (another one, a mount below the
/// destination, may keep another clock).
fn before_clock(s: &Stamp, clock: &Stamp) -> bool {
    s.dev == clock.dev && s.ctime_ns < clock.ctime_ns && s.mtime_ns < clock.ctime_ns
}

fn save_waiting(
    dest: &Path,
    files: Vec<SaveFile<'_>>,
    kept: Vec<RelPath>,
    wait_min: u64,
) -> std::io::Result<()> {
    // Files untouched by this sync keep the stamp taken when their hash was checked; the ones
    // it wrote keep the stamp taken right after its last change of them, certified if it is
    // older than the file system's clock, read now. Any later change of such a file gives it
    // another stamp (a change after the clock is read changes the ctime; one before it, in an
    // earlier tick, changed it already; one in the very tick of that stamp still sets an mtime
    // other than the one this sync gave the file, unless it copies that too), so the next walk
    // reads the file again: the stamp is not taken again here.
    let written: Vec<(&Stamp, u64)> = files
        .iter()
        .filter_map(|f| match &f.stamp {
            SaveStamp::Written(s) if s.size == f.size => Some((s, f.size)),
            _ => None,
        })
        .collect();
    // Without a clock nothing written is certified: it is read again next time.
    let certified = |clock: Option<&Stamp>, s: &Stamp| clock.is_some_and(|c| before_clock(s, c));
    let mut clock = fs_clock(dest).ok();
    // Files written within the clock's last tick are not certified, so the next sync would
    // read them again. When that is a lot of data, waiting for the clock to move on is the
    // cheaper deal.
    let racy: Vec<(&Stamp, u64)> = written
        .iter()
        .filter(|(s, _)| !certified(clock.as_ref(), s))
        .copied()
        .collect();
    if racy.iter().map(|(_, size)| size).sum::<u64>() >= wait_min {
        let last = racy
            .iter()
            .map(|(s, _)| s.ctime_ns.max(s.mtime_ns))
            .max()
            .unwrap_or(i64::MIN);
        let until = now_ns() + MAX_RACY_WAIT_NS;
        while now_ns() < until && fs_clock(dest).is_ok_and(|c| c.ctime_ns <= last) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        clock = fs_clock(dest).ok();
    }
    let _ = std::fs::remove_file(dest.join(STATE_DIR).join(CLOCK_FILE));
    let stamped = files.iter().filter_map(|f| {
        let s = match f.stamp {
            SaveStamp::Certified(s) => s,
            SaveStamp::Written(s) if s.size == f.size && certified(clock.as_ref(), &s) => s,
            SaveStamp::Written(_) | SaveStamp::Uncertified => return None,
        };
        Some((f.path, s, &f.hash, f.leaves))
    });
    // Sized for a typical record, so the encoding is not copied over and over as it grows.
    let bytes = encode_state(stamped, &kept, HEADER + files.len() * 144 + 64)?;
    crate::write_atomic(&state_path(dest), &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::racy_window_ns;

    fn saved_after(dir: &Path, files: Vec<SaveFile<'_>>, wait_min: u64) -> Vec<(String, Stamp)> {
        std::fs::create_dir_all(dir.join(crate::stage::STATE_DIR)).unwrap();
        save_waiting(dir, files, Vec::new(), wait_min).unwrap();
        assert!(!dir.join(STATE_DIR).join(CLOCK_FILE).exists());
        let bytes = std::fs::read(state_path(dir)).unwrap();
        let saved = parse_state(&bytes).expect("a valid state file");
        saved
            .files
            .iter()
            .map(|(p, s, _, _)| ((*p).to_owned(), *s))
            .collect()
    }

    /// File `path` of `dir` as this sync left it: its stamp now.
    fn written<'a>(dir: &Path, path: &'a RelPath) -> SaveFile<'a> {
        let m = std::fs::symlink_metadata(path.to_native(dir)).unwrap();
        SaveFile {
            path,
            size: 11,
            hash: *blake3::hash(b"fresh bytes").as_bytes(),
            stamp: SaveStamp::Written(Stamp::of(&m)),
            leaves: &[],
        }
    }

    #[test]
    fn a_state_or_listing_that_is_not_a_regular_file_is_no_state() {
        // Put there by whoever else writes the destination: a FIFO would block the agent in
        // `open` for good, a link to `/dev/zero` would have it read until memory runs out.
        for name in [STATE_FILE, LISTING_FILE] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(dir.path().join(STATE_DIR)).unwrap();
            std::fs::write(dir.path().join("a"), b"a").unwrap();
            rustix::fs::mknodat(
                rustix::fs::CWD,
                dir.path().join(STATE_DIR).join(name),
                rustix::fs::FileType::Fifo,
                rustix::fs::Mode::from_raw_mode(0o600),
                0,
            )
            .unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            let dest = dir.path().to_owned();
            std::thread::spawn(move || {
                let filter = Filter::new::<&str>(&[]).unwrap();
                tx.send(current(&dest, &filter).manifest.len()).unwrap();
            });
            let got = rx.recv_timeout(std::time::Duration::from_secs(5));
            assert_eq!(got.ok(), Some(1), "{name}: the agent waits on a FIFO");
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(STATE_DIR)).unwrap();
        std::os::unix::fs::symlink("/dev/zero", dir.path().join(STATE_DIR).join(STATE_FILE))
            .unwrap();
        assert!(crate::read_regular(&state_path(dir.path()), MAX_STATE_BYTES).is_empty());
    }

    #[test]
    fn state_files_round_trip_and_damaged_ones_are_empty() {
        let paths: Vec<RelPath> = ["a", "b/big", "b/é x"]
            .iter()
            .map(|p| RelPath::new(*p).unwrap())
            .collect();
        let stamp = |ino: u64| Stamp {
            dev: 7,
            ino,
            size: ino * 3,
            mtime_ns: -5,
            ctime_ns: i64::MAX,
        };
        let cvs = [[1u8; 32], [2; 32], [3; 32]];
        let hashes = [[4u8; 32], [5; 32], [6; 32]];
        let files = paths.iter().enumerate().map(|(k, p)| {
            let leaves: &[Cv] = if k == 1 { &cvs } else { &[] };
            (p, stamp(k as u64), &hashes[k], leaves)
        });
        let kept = vec![RelPath::new("w/__pycache__").unwrap()];
        let bytes = encode_state(files, &kept, 0).unwrap();
        let s = parse_state(&bytes).unwrap();
        assert_eq!(s.kept, kept);
        let got: Vec<_> = s
            .files
            .iter()
            .map(|f| (f.0, f.1, f.2, f.3.to_vec()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a", stamp(0), hashes[0], vec![]),
                ("b/big", stamp(1), hashes[1], cvs.to_vec()),
                ("b/é x", stamp(2), hashes[2], vec![]),
            ]
        );
        // A flipped bit, a cut file, another version, and lengths that point past the end
        // (with the checksum made to match): no state, no panic.
        let mut flipped = bytes.clone();
        flipped[HEADER + 50] ^= 1;
        let resummed = |mut b: Vec<u8>| {
            let sum = xxhash_rust::xxh3::xxh3_64(&b[16..]);
            b[8..16].copy_from_slice(&sum.to_le_bytes());
            b
        };
        let mut other = bytes.clone();
        other[16] += 1;
        let mut long_path = bytes.clone();
        long_path[HEADER + 72..HEADER + 76].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut many_leaves = bytes.clone();
        many_leaves[HEADER + 76..HEADER + 80].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut many_files = bytes.clone();
        many_files[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut fewer_files = bytes.clone();
        fewer_files[20..24].copy_from_slice(&2u32.to_le_bytes());
        for bad in [
            flipped,
            resummed(other),
            bytes[..bytes.len() - 1].to_vec(),
            resummed(long_path),
            resummed(many_leaves),
            resummed(many_files),
            resummed(fewer_files),
            Vec::new(),
        ] {
            assert!(parse_state(&bad).is_none());
            assert!(load_saved(&bad).files.is_empty());
        }
    }

    #[test]
    fn a_written_file_is_certified_once_the_file_systems_clock_moved_on() {
        let dir = tempfile::tempdir().unwrap();
        let a = RelPath::new("a").unwrap();
        std::fs::write(dir.path().join("a"), b"fresh bytes").unwrap();
        // Well past any clock tick: no waiting needed, and no re-read next time.
        std::thread::sleep(std::time::Duration::from_millis(30));
        let started = std::time::Instant::now();
        let saved = saved_after(dir.path(), vec![written(dir.path(), &a)], u64::MAX);
        assert_eq!(saved.len(), 1);
        assert_eq!(saved[0].0, "a");
        let meta = std::fs::symlink_metadata(dir.path().join("a")).unwrap();
        assert_eq!(saved[0].1, Stamp::of(&meta));
        assert!(started.elapsed() < std::time::Duration::from_secs(3));
    }

    #[test]
    fn much_freshly_written_data_is_waited_for() {
        // Written just now, so within the clock's current tick: a sync that wrote a lot (here:
        // any amount) waits for the clock to move on and saves a certified stamp.
        let dir = tempfile::tempdir().unwrap();
        let a = RelPath::new("a").unwrap();
        std::fs::write(dir.path().join("a"), b"fresh bytes").unwrap();
        let started = std::time::Instant::now();
        let saved = saved_after(dir.path(), vec![written(dir.path(), &a)], 1);
        assert_eq!(saved.len(), 1);
        assert!(started.elapsed() < std::time::Duration::from_secs(3));
    }

    #[test]
    fn a_change_time_the_clock_has_not_passed_is_never_certified() {
        // An mtime in the future: no wait makes it certain, and the wait is bounded.
        let dir = tempfile::tempdir().unwrap();
        let a = RelPath::new("a").unwrap();
        std::fs::write(dir.path().join("a"), b"fresh bytes").unwrap();
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(dir.path().join("a"))
            .unwrap()
            .set_modified(later)
            .unwrap();
        let started = std::time::Instant::now();
        assert!(saved_after(dir.path(), vec![written(dir.path(), &a)], 1).is_empty());
        assert!(started.elapsed() < std::time::Duration::from_secs(3));
    }

    #[test]
    fn a_written_file_changed_again_before_the_save_is_read_by_the_next_sync() {
        // This sync wrote `a`; something else rewrote it (same size, mtime put back, as `cp -p`
        // does) before the state was saved: the hash this sync knows is not its content, and
        // the state must not vouch for it.
        let dir = tempfile::tempdir().unwrap();
        let a = RelPath::new("a").unwrap();
        let p = dir.path().join("a");
        std::fs::write(&p, b"fresh bytes").unwrap();
        let ours = written(dir.path(), &a);
        let mtime = std::fs::symlink_metadata(&p).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&p, b"other bytes").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let now = Stamp::of(&std::fs::symlink_metadata(&p).unwrap());
        let saved = saved_after(dir.path(), vec![ours], 1);
        assert!(saved.iter().all(|(_, s)| *s != now), "{saved:?}");
        assert_read_again(dir.path(), b"other bytes");
    }

    /// The next walk of `dir` reads its one file again and finds `content`.
    #[track_caller]
    fn assert_read_again(dir: &Path, content: &[u8]) {
        let cur = current(dir, &Filter::new::<&str>(&[]).unwrap());
        assert_eq!(cur.rehashed, 1);
        assert!(matches!(
            cur.manifest.entries()[0].kind,
            Kind::File { hash, .. } if hash == *blake3::hash(content).as_bytes()
        ));
    }

    #[test]
    fn a_written_file_rewritten_in_the_same_clock_tick_is_read_by_the_next_sync() {
        // This sync wrote `a` with the source's (old) mtime; something else rewrote it at once,
        // within the same tick of the file system's clock: the ctime may be unchanged, but the
        // mtime is not the one the sync set.
        let dir = tempfile::tempdir().unwrap();
        let a = RelPath::new("a").unwrap();
        let p = dir.path().join("a");
        std::fs::write(&p, b"fresh bytes").unwrap();
        let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000);
        let f = std::fs::File::options().write(true).open(&p).unwrap();
        f.set_modified(old).unwrap();
        let ours = written(dir.path(), &a);
        std::fs::write(&p, b"other bytes").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        saved_after(dir.path(), vec![ours], 1);
        assert_read_again(dir.path(), b"other bytes");
    }

    #[test]
    fn uncertified_stamps_are_left_out_and_certified_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (RelPath::new("a").unwrap(), RelPath::new("b").unwrap());
        let stamp = Stamp {
            dev: 1,
            ino: 2,
            size: 11,
            mtime_ns: 3,
            ctime_ns: 4,
        };
        let file = |path, stamp| SaveFile {
            path,
            size: 11,
            hash: [7; 32],
            stamp,
            leaves: &[],
        };
        let files = vec![
            file(&a, SaveStamp::Certified(stamp)),
            file(&b, SaveStamp::Uncertified),
        ];
        assert_eq!(
            saved_after(dir.path(), files, u64::MAX),
            vec![("a".to_owned(), stamp)]
        );
    }

    #[test]
    fn a_file_changed_just_before_the_walk_is_read_now_and_not_vouched_for() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(STATE_DIR)).unwrap();
        std::fs::write(dir.path().join("a"), b"fresh bytes").unwrap();
        let changed = Stamp::of(&std::fs::symlink_metadata(dir.path().join("a")).unwrap());
        let filter = Filter::new::<&str>(&[]).unwrap();
        let cur = current(dir.path(), &filter);
        let took = now_ns() - changed.ctime_ns;
        assert_eq!(cur.rehashed, 1);
        let i = cur.manifest.position(&RelPath::new("a").unwrap()).unwrap();
        // The walk began within the racy window of the change (unless this machine stalled
        // for longer than the window): its stamp must not be saved as certified.
        if took < racy_window_ns(&changed) {
            assert_eq!(cur.stamps[i], None);
        }
        // Once the change is older than the window, the next walk certifies it.
        std::thread::sleep(std::time::Duration::from_nanos(
            racy_window_ns(&changed).max(0) as u64 + 5_000_000,
        ));
        let cur = current(dir.path(), &filter);
        assert_eq!(cur.stamps[i], Some(changed));
    }
}
