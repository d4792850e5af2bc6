//! Directory listings kept from one walk to the next (git's "untracked cache"): the names a
//! directory held after the ignore rules, and the directory's stamp, taken before it was read.
//! While the stamp is unchanged the names are too, so the next walk `statx`es the known names
//! instead of reading the directory and matching every name against the ignore rules again.
//!
//! Why an unchanged stamp means unchanged names: creating, removing or renaming an entry
//! updates its directory's mtime and ctime, and nothing sets a ctime back. A stamp is only
//! recorded when it is older than the walk by more than the file system's timestamp tick (the
//! racy rule of [`crate::hash::stamp_trustworthy`]), so a change in the same tick as the stamp
//! cannot hide behind it. Only local file systems whose directory times are kept by the kernel
//! are trusted (not NFS and other network file systems, whose attributes are cached, nor
//! overlayfs, whose merged directories show the upper layer's times), and only directories on
//! the root's device.
//!
//! A listing also records what it was taken with (the build, the user, the root, where it
//! lands, the ignore rules): one taken with other rules says nothing and is not used. It is
//! not trusted either: names out of order, repeated, or ignored by the rules make the walk read
//! the directory instead.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::filter::Filter;
use crate::manifest::Stamp;
use crate::walk::WalkRoot;

/// Bumped when the meaning of a saved listing changes.
const LISTING_VERSION: u32 = 1;

/// The directories one walk read (or reused), for the next walk of the same root.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Listing {
    version: u32,
    /// What the listing was taken with: see [`Listing::key_for`].
    key: [u8; 32],
    pub(crate) dirs: Vec<ListedDir>,
}

/// One directory's names, as a walk found them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ListedDir {
    /// The directory's path in the destination.
    pub path: String,
    /// Its stamp, taken before it was read.
    pub stamp: Stamp,
    /// The names the ignore rules kept, sorted, each followed by a NUL.
    pub names: String,
    /// Which of `names` (by position) are directories, ascending.
    pub dirs: Vec<u32>,
}

impl Listing {
    /// What identifies the walks a listing can serve: the build (whose ignore rules, fixed
    /// ones included, decided the names), the user (whose permissions let the walk read the
    /// directories), the root, its place in the destination and in the project, and the
    /// user's ignore patterns.
    pub(crate) fn key_for(root: &WalkRoot, filter: &Filter) -> [u8; 32] {
        use std::os::unix::ffi::OsStrExt;
        let mut h = blake3::Hasher::new();
        h.update(&LISTING_VERSION.to_le_bytes());
        h.update(env!("CARGO_PKG_VERSION").as_bytes());
        for p in crate::filter::FIXED_IGNORES {
            h.update(b"\0").update(p.as_bytes());
        }
        h.update(&rustix::process::geteuid().as_raw().to_le_bytes());
        h.update(b"\0").update(root.abs.as_os_str().as_bytes());
        for p in [&root.filter_rel, &root.dest_rel] {
            h.update(b"\0");
            match p {
                Some(p) => h.update(b"+").update(p.as_str().as_bytes()),
                None => h.update(b"-"),
            };
        }
        for p in filter.user_patterns() {
            h.update(b"\0").update(p.as_bytes());
        }
        *h.finalize().as_bytes()
    }

    pub(crate) fn new(key: [u8; 32], dirs: Vec<ListedDir>) -> Listing {
        Listing {
            version: LISTING_VERSION,
            key,
            dirs,
        }
    }

    /// Whether this listing was taken with `key` (and this build's format).
    pub(crate) fn serves(&self, key: &[u8; 32]) -> bool {
        self.version == LISTING_VERSION && &self.key == key
    }

    /// How many directories it lists.
    pub fn len(&self) -> usize {
        self.dirs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.dirs.is_empty()
    }
}

/// Reads the listings saved at `file`; none when it is missing or unreadable.
pub fn load(file: &Path) -> Vec<Listing> {
    postcard::from_bytes(&crate::read_regular(file, 1 << 30)).unwrap_or_default()
}

/// Saves `listings` at `file`, atomically, creating its directory.
///
/// # Errors
/// When the file cannot be written.
pub fn save(file: &Path, listings: &[Listing]) -> std::io::Result<()> {
    let bytes = postcard::to_stdvec(listings).map_err(std::io::Error::other)?;
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    crate::write_atomic(file, &bytes)
}
