//! Manifests: the sorted list of entries a tree consists of, and the digest that lets two sides
//! agree that their trees are equal without exchanging the list.
//!
//! The digest is the BLAKE3 of the postcard encoding of the entries in path order, so it is
//! computed the same way by the controller (from its scan) and by an agent (from its validated
//! state). Entries carry what a mirror must reproduce: kind, size, mode bits, mtime in
//! nanoseconds, content hash, symlink target.

use serde::{Deserialize, Serialize};

use crate::path::RelPath;
use xxhash_rust::xxh3::{Xxh3, xxh3_64};

/// A BLAKE3 hash of a file's content.
pub type Hash = [u8; 32];

/// One entry of a tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub path: RelPath,
    pub kind: Kind,
}

/// What an entry is, with the attributes a mirror reproduces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    File {
        size: u64,
        mtime_ns: i64,
        mode: u32,
        hash: Hash,
    },
    Dir {
        mode: u32,
    },
    Symlink {
        target: String,
    },
}

impl Kind {
    /// Short name for messages.
    pub fn label(&self) -> &'static str {
        match self {
            Kind::File { .. } => "file",
            Kind::Dir { .. } => "directory",
            Kind::Symlink { .. } => "symlink",
        }
    }

    pub fn is_dir(&self) -> bool {
        matches!(self, Kind::Dir { .. })
    }

    /// Whether `self` and `other` are the same kind of entry.
    pub fn same_type(&self, other: &Kind) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }
}

/// The file-system identity of a file when it was hashed: if all of it still matches, the
/// hash is still right. Inode and ctime catch a replaced file with a restored mtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

impl Stamp {
    pub fn of(meta: &std::fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: mtime_ns(meta),
            ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
        }
    }
}

/// Modification time in nanoseconds since the epoch.
pub fn mtime_ns(meta: &std::fs::Metadata) -> i64 {
    use std::os::unix::fs::MetadataExt;
    meta.mtime() * 1_000_000_000 + meta.mtime_nsec()
}

/// Permission bits (including setuid/setgid/sticky) of a mode.
pub fn perm_bits(mode: u32) -> u32 {
    mode & 0o7777
}

/// Appends `e` as its length (u32, little-endian) and its postcard encoding: the bytes the
/// digest and the directory summaries hash.
fn frame_into(e: &Entry, all: &mut Vec<u8>) {
    let at = all.len();
    all.extend_from_slice(&[0; 4]);
    *all = postcard::to_extend(e, std::mem::take(all)).expect("encoding into a Vec cannot fail");
    let len = (all.len() - at - 4) as u32;
    all[at..at + 4].copy_from_slice(&len.to_le_bytes());
}

/// A manifest's entries, each framed as [`frame_into`] does, one after another.
#[derive(Debug, Default)]
pub struct Framed {
    bytes: Vec<u8>,
    /// Where each entry starts, and the end.
    starts: Vec<usize>,
}

impl Framed {
    /// The manifest's digest: BLAKE3 over all of it. One buffer hashed at once is several
    /// times faster (SIMD across chunks, and threads) than thousands of small updates, and the
    /// same hash.
    pub fn digest(&self) -> Hash {
        let mut h = blake3::Hasher::new();
        if self.bytes.len() >= 1 << 20 {
            h.update_rayon(&self.bytes);
        } else {
            h.update(&self.bytes);
        }
        *h.finalize().as_bytes()
    }

    /// Entry `i`'s framed encoding.
    pub fn entry(&self, i: usize) -> &[u8] {
        &self.bytes[self.starts[i]..self.starts[i + 1]]
    }
}

/// A manifest's directory summary, and which directory each entry is in.
#[derive(Debug)]
pub struct DirIndex {
    /// [`Manifest::dir_summary`]: the top, then each directory entry in path order.
    pub keys: Vec<[u8; 16]>,
    /// For each entry, the index in `keys` of its directory.
    pub parent: Vec<u32>,
}

/// The 8-byte key of a directory path in [`Manifest::dir_summary`] (`None`: the top): XXH3-64
/// of the path, little-endian. The summary only picks which entries to exchange (the rebuilt
/// manifest is checked against the digest, which is BLAKE3), so a fast hash is enough.
pub fn dir_key(dir: Option<&RelPath>) -> [u8; 8] {
    xxh3_64(dir.map_or("", RelPath::as_str).as_bytes()).to_le_bytes()
}

/// A summary key with the path half filled in (`""`: the top).
fn key_of(dir: &str) -> [u8; 16] {
    let mut key = [0; 16];
    key[..8].copy_from_slice(&xxh3_64(dir.as_bytes()).to_le_bytes());
    key
}

/// The first entry of sorted `entries` whose parent is not a directory entry of them. One pass
/// with the directories still open on a stack, as in [`Manifest::dir_index`].
fn first_orphan(entries: &[Entry]) -> Option<usize> {
    let mut open: Vec<&str> = Vec::new();
    for (k, e) in entries.iter().enumerate() {
        let p = e.path.as_str();
        while open.last().is_some_and(|d| !under_or_beside(p, d)) {
            open.pop();
        }
        // The open directories are prefixes of `p`, shorter the deeper in the stack.
        if let Some(want) = e.path.parent_str()
            && open.binary_search_by_key(&want.len(), |d| d.len()).is_err()
        {
            return Some(k);
        }
        if e.kind.is_dir() {
            open.push(p);
        }
    }
    None
}

/// Whether the path `p`, which sorts after the directory path `d`, is below `d` or sorts
/// between `d` and the entries below it (`d-x`, `d.y`: bytes before `/`); then `d` is still
/// open in a walk in path order.
fn under_or_beside(p: &str, d: &str) -> bool {
    p.len() > d.len() && p.as_bytes()[d.len()] <= b'/' && p.starts_with(d)
}

/// A tree's entries, sorted by path, paths unique.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    entries: Vec<Entry>,
}

/// Why a list of entries is not a valid manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not sorted at `{0}`")]
    Unsorted(RelPath),
    #[error("manifest lists `{0}` twice")]
    Duplicate(RelPath),
    #[error(
        "manifest entry `{path}` has parent `{parent}` that is not a directory of the manifest"
    )]
    Orphan { path: RelPath, parent: RelPath },
}

impl Manifest {
    /// Sorts `entries` by path. Duplicate paths keep the first occurrence.
    pub fn from_unsorted(mut entries: Vec<Entry>) -> Manifest {
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        entries.dedup_by(|b, a| a.path == b.path);
        Manifest { entries }
    }

    /// Accepts entries from an untrusted peer: they must be sorted, unique, and every entry's
    /// parent must be a directory of the manifest, so no entry can be written through a symlink
    /// or a file that the same manifest puts in its way.
    ///
    /// # Errors
    /// On the first violation.
    pub fn from_sorted_checked(entries: Vec<Entry>) -> Result<Manifest, ManifestError> {
        for w in entries.windows(2) {
            match w[0].path.cmp(&w[1].path) {
                std::cmp::Ordering::Less => {}
                std::cmp::Ordering::Equal => {
                    return Err(ManifestError::Duplicate(w[1].path.clone()));
                }
                std::cmp::Ordering::Greater => {
                    return Err(ManifestError::Unsorted(w[1].path.clone()));
                }
            }
        }
        let m = Manifest { entries };
        if let Some(i) = first_orphan(&m.entries) {
            let path = m.entries[i].path.clone();
            let parent = path.parent().expect("an orphan has a parent");
            return Err(ManifestError::Orphan { path, parent });
        }
        Ok(m)
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn into_entries(self) -> Vec<Entry> {
        self.entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Index of `path`, by binary search.
    pub fn position(&self, path: &RelPath) -> Option<usize> {
        self.position_str(path.as_str())
    }

    /// The index of the entry at `path` given as text (a `RelPath` orders as its text).
    fn position_str(&self, path: &str) -> Option<usize> {
        self.entries
            .binary_search_by(|e| e.path.as_str().cmp(path))
            .ok()
    }

    pub fn get(&self, path: &RelPath) -> Option<&Entry> {
        self.get_str(path.as_str())
    }

    /// The entry at `path` given as text.
    pub fn get_str(&self, path: &str) -> Option<&Entry> {
        self.position_str(path).map(|i| &self.entries[i])
    }

    /// BLAKE3 over the canonical encoding of all entries.
    pub fn digest(&self) -> Hash {
        self.framed().digest()
    }

    /// Every entry's length-prefixed encoding, kept for [`Framed::digest`] and
    /// [`Manifest::dir_summary_with`], so the entries are encoded once for both.
    pub fn framed(&self) -> Framed {
        self.framed_reusing(|_| None)
    }

    /// [`Manifest::framed`], copying the encoding of entry `i` from `known(i)` where it gives
    /// one (entries taken over from another manifest, framed before).
    pub fn framed_reusing<'a>(&self, known: impl Fn(usize) -> Option<&'a [u8]>) -> Framed {
        let mut bytes = Vec::with_capacity(self.entries.len() * 96);
        let mut starts = Vec::with_capacity(self.entries.len() + 1);
        for (i, e) in self.entries.iter().enumerate() {
            starts.push(bytes.len());
            match known(i) {
                Some(done) => bytes.extend_from_slice(done),
                None => frame_into(e, &mut bytes),
            }
        }
        starts.push(bytes.len());
        Framed { bytes, starts }
    }

    /// One 16-byte key per directory (the top first, then every directory entry in path
    /// order): 8 bytes identifying the directory's path, 8 summarising its direct children.
    /// Two sides compare these to exchange only the entries of directories that differ.
    pub fn dir_summary(&self) -> Vec<[u8; 16]> {
        self.dir_index(&self.framed()).keys
    }

    /// The directory summary ([`Manifest::dir_summary`]) from this manifest's `framed`
    /// encodings, and the directory of each entry.
    ///
    /// One pass in path order, with the directories still open on a stack, each hashing its
    /// children's encodings as they come: a directory is complete once an entry sorts past
    /// everything below it. No map of paths, no list of children per directory, no copies of
    /// the encodings.
    pub fn dir_index(&self, framed: &Framed) -> DirIndex {
        struct Open<'a> {
            dir: u32,
            path: &'a str,
            hash: Box<Xxh3>,
        }
        let mut keys: Vec<[u8; 16]> = vec![key_of("")];
        let mut stack = vec![Open {
            dir: 0,
            path: "",
            hash: Box::default(),
        }];
        // Hashers of closed directories, for the next ones to open.
        let mut spare: Vec<Box<Xxh3>> = Vec::new();
        let close = |o: Open<'_>, keys: &mut [[u8; 16]], spare: &mut Vec<Box<Xxh3>>| {
            keys[o.dir as usize][8..].copy_from_slice(&o.hash.digest().to_le_bytes());
            let mut hash = o.hash;
            hash.reset();
            spare.push(hash);
        };
        let mut parent = Vec::with_capacity(self.entries.len());
        for (k, e) in self.entries.iter().enumerate() {
            let p = e.path.as_str();
            // Close the directories this entry sorts past: all of their subtree came before.
            // (`d-x` sorts between `d` and `d/x`, so it closes nothing.) Whenever a directory is
            // closed, so is every one opened after it.
            while stack.len() > 1 {
                let d = stack.last().expect("non-empty").path;
                if under_or_beside(p, d) {
                    break;
                }
                let o = stack.pop().expect("non-empty");
                close(o, &mut keys, &mut spare);
            }
            // Every open directory's path is now a prefix of `p`, shorter the deeper in the
            // stack: the parent is open if one of them has its length.
            let at = match e.path.parent_str() {
                None => Some(0),
                Some(want) => stack[1..]
                    .binary_search_by_key(&want.len(), |o| o.path.len())
                    .ok()
                    .map(|i| i + 1),
            };
            match at {
                Some(i) => {
                    stack[i].hash.update(framed.entry(k));
                    parent.push(stack[i].dir);
                }
                // Not in a manifest that passed its checks; such an entry is in no summary.
                None => parent.push(u32::MAX),
            }
            if e.kind.is_dir() {
                let dir = keys.len() as u32;
                keys.push(key_of(p));
                let hash = spare.pop().unwrap_or_default();
                stack.push(Open { dir, path: p, hash });
            }
        }
        while let Some(o) = stack.pop() {
            close(o, &mut keys, &mut spare);
        }
        DirIndex { keys, parent }
    }

    /// Total size of the regular files.
    pub fn file_bytes(&self) -> u64 {
        self.entries
            .iter()
            .map(|e| match e.kind {
                Kind::File { size, .. } => size,
                _ => 0,
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(p: &str) -> Entry {
        Entry {
            path: RelPath::new(p).unwrap(),
            kind: Kind::Dir { mode: 0o755 },
        }
    }
    fn file(p: &str, b: u8) -> Entry {
        Entry {
            path: RelPath::new(p).unwrap(),
            kind: Kind::File {
                size: 1,
                mtime_ns: 1,
                mode: 0o644,
                hash: [b; 32],
            },
        }
    }
    fn link(p: &str) -> Entry {
        Entry {
            path: RelPath::new(p).unwrap(),
            kind: Kind::Symlink { target: "x".into() },
        }
    }

    #[test]
    fn checked_manifest_refuses_orphans_and_disorder() {
        assert!(Manifest::from_sorted_checked(vec![dir("a"), file("a/b", 1)]).is_ok());
        assert_eq!(
            Manifest::from_sorted_checked(vec![file("a/b", 1)]).unwrap_err(),
            ManifestError::Orphan {
                path: RelPath::new("a/b").unwrap(),
                parent: RelPath::new("a").unwrap()
            }
        );
        // Writing below a symlink of the same manifest is how a peer would escape.
        assert!(matches!(
            Manifest::from_sorted_checked(vec![link("a"), file("a/b", 1)]),
            Err(ManifestError::Orphan { .. })
        ));
        assert!(matches!(
            Manifest::from_sorted_checked(vec![file("b", 1), file("a", 1)]),
            Err(ManifestError::Unsorted(_))
        ));
        assert!(matches!(
            Manifest::from_sorted_checked(vec![file("a", 1), file("a", 2)]),
            Err(ManifestError::Duplicate(_))
        ));
    }

    #[test]
    fn dir_summary_changes_only_for_the_changed_directory() {
        let a = Manifest::from_unsorted(vec![
            dir("d"),
            file("d/x", 1),
            dir("e"),
            file("e/y", 1),
            file("top", 3),
        ]);
        let b = Manifest::from_unsorted(vec![
            dir("d"),
            file("d/x", 2),
            dir("e"),
            file("e/y", 1),
            file("top", 3),
        ]);
        let (sa, sb) = (a.dir_summary(), b.dir_summary());
        assert_eq!(sa.len(), 3);
        assert_eq!(sa[0], sb[0], "top level unchanged");
        assert_ne!(sa[1], sb[1], "d changed");
        assert_eq!(sa[1][..8], sb[1][..8], "same path key");
        assert_eq!(sa[2], sb[2], "e unchanged");
        assert_eq!(a.dir_index(&a.framed()).parent, vec![0, 1, 0, 2, 0]);
    }

    #[test]
    fn digest_depends_on_every_field() {
        let a = Manifest::from_unsorted(vec![file("x", 1), dir("d")]);
        let b = Manifest::from_unsorted(vec![dir("d"), file("x", 1)]);
        assert_eq!(a.digest(), b.digest());
        let c = Manifest::from_unsorted(vec![dir("d"), file("x", 2)]);
        assert_ne!(a.digest(), c.digest());
        assert_ne!(Manifest::default().digest(), a.digest());
    }

    /// The digest is part of the protocol (both sides compute it): BLAKE3 over each entry's
    /// postcard encoding prefixed with its length as a little-endian u32, whatever the size.
    #[test]
    fn digest_is_blake3_of_length_prefixed_encodings() {
        for n in [0usize, 1, 3, 20_000] {
            let m = Manifest::from_unsorted(
                (0..n).map(|i| file(&format!("f{i:05}"), i as u8)).collect(),
            );
            let mut h = blake3::Hasher::new();
            for e in m.entries() {
                let bytes = postcard::to_stdvec(e).unwrap();
                h.update(&(bytes.len() as u32).to_le_bytes());
                h.update(&bytes);
            }
            assert_eq!(m.digest(), *h.finalize().as_bytes(), "{n} entries");
        }
    }

    /// The summary is part of the protocol too: per directory, XXH3-64 of its path and XXH3-64
    /// over its children's length-prefixed encodings, both little-endian.
    #[test]
    fn dir_summary_is_xxh3_of_the_childrens_length_prefixed_encodings() {
        let m = Manifest::from_unsorted(vec![
            dir("d"),
            file("d/x", 1),
            file("d/y", 2),
            dir("d/z"),
            file("top", 3),
        ]);
        let keys = m.dir_summary();
        let dirs = [None, Some("d"), Some("d/z")];
        let kids: [&[usize]; 3] = [&[0, 4], &[1, 2, 3], &[]];
        for ((dir, kids), key) in dirs.into_iter().zip(kids).zip(&keys) {
            let mut all = Vec::new();
            for &i in kids {
                let bytes = postcard::to_stdvec(&m.entries()[i]).unwrap();
                all.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
                all.extend_from_slice(&bytes);
            }
            assert_eq!(
                key[..8],
                xxh3_64(dir.unwrap_or("").as_bytes()).to_le_bytes()
            );
            assert_eq!(key[8..], xxh3_64(&all).to_le_bytes());
        }
        assert_eq!(keys.len(), 3);
    }

    /// The summary the plain way: each directory's children found by their parent's path.
    fn naive_summary(m: &Manifest) -> Vec<[u8; 16]> {
        let framed = m.framed();
        let mut dirs: Vec<Option<&RelPath>> = vec![None];
        dirs.extend(
            m.entries()
                .iter()
                .filter(|e| e.kind.is_dir())
                .map(|e| Some(&e.path)),
        );
        dirs.iter()
            .map(|d| {
                let mut all = Vec::new();
                for (i, e) in m.entries().iter().enumerate() {
                    if e.path.parent_str() == d.map(RelPath::as_str) {
                        all.extend_from_slice(framed.entry(i));
                    }
                }
                let mut key = [0u8; 16];
                key[..8].copy_from_slice(&dir_key(*d));
                key[8..].copy_from_slice(&xxh3_64(&all).to_le_bytes());
                key
            })
            .collect()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1000))]
        /// Names made of ` `, `!`, `-`, `.` (which sort below `/`: `a-` and `a.` come between
        /// `a` and `a/x`), `0`, `a` and `é`, up to seven levels, directories as leaves too, and
        /// sometimes without their ancestors (an unchecked manifest): the one-pass index must
        /// give what grouping children by their parent's path gives.
        #[test]
        fn dir_index_matches_the_children_found_by_path(
            paths in proptest::collection::vec("[ !\\-.0aé]{1,3}(/[ !\\-.0aé]{1,3}){0,6}", 0..100),
            ancestors in proptest::bool::ANY,
            leaf_dirs in proptest::collection::vec(proptest::bool::ANY, 100),
        ) {
            let mut entries: Vec<Entry> = Vec::new();
            let mut seen = std::collections::BTreeSet::new();
            for (i, p) in paths.iter().enumerate() {
                let Ok(p) = RelPath::new(p.as_str()) else { continue };
                for a in p.ancestors().filter(|_| ancestors) {
                    if seen.insert(a.as_str().to_owned()) {
                        entries.push(dir(a.as_str()));
                    } else if let Some(e) = entries.iter_mut().find(|e| e.path == a) {
                        e.kind = Kind::Dir { mode: 0o755 };
                    }
                }
                if seen.insert(p.as_str().to_owned()) {
                    entries.push(if leaf_dirs[i] { dir(p.as_str()) } else { file(p.as_str(), 1) });
                }
            }
            let m = Manifest::from_unsorted(entries);
            // The one-pass orphan check agrees with looking each parent up.
            let orphan = m.entries().iter().position(|e| {
                e.path.parent_str().is_some_and(|p| {
                    !matches!(m.get_str(p), Some(Entry { kind: Kind::Dir { .. }, .. }))
                })
            });
            proptest::prop_assert_eq!(first_orphan(m.entries()), orphan);
            let index = m.dir_index(&m.framed());
            proptest::prop_assert_eq!(&index.keys, &naive_summary(&m));
            let mut dirs = vec![""];
            dirs.extend(m.entries().iter().filter(|e| e.kind.is_dir()).map(|e| e.path.as_str()));
            for (e, &d) in m.entries().iter().zip(&index.parent) {
                let want = e.path.parent_str().unwrap_or("");
                if dirs.contains(&want) {
                    proptest::prop_assert_eq!(dirs[d as usize], want);
                } else {
                    // An orphan is in no directory's summary.
                    proptest::prop_assert_eq!(d, u32::MAX);
                }
            }
        }
    }
}
