//! Content hashing: BLAKE3 of files, in parallel across files and, for big files, within a file;
//! and the hash cache that lets an unchanged file skip being read at all.
//!
//! A cached hash is trusted only when the file's [`Stamp`] (device, inode, size, mtime and ctime
//! to the nanosecond) is unchanged *and* the file was last changed clearly before the hash was
//! taken. Without the second rule an edit made in the same timestamp tick as the hashing would go
//! unseen (git's "racily clean" problem; rsync's one-second quick check has it too).

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::listing::Listing;
use crate::manifest::{Hash, Stamp};

/// Files at least this big are hashed with several threads, [`BIG_BUF`] at a time.
const PARALLEL_FILE_MIN: u64 = 4 << 20;
const BIG_BUF: usize = 4 << 20;

/// Hashes the file at `path`, which is expected to be `size` bytes long.
///
/// # Errors
/// When the file cannot be read.
pub fn hash_file(path: &Path, size: u64) -> io::Result<Hash> {
    // A file that grew since it was stamped is read one byte past its stamp, which is enough
    // for the hash to differ: a device swapped in cannot keep this reading forever.
    let mut f = open_file(path)?.take(size.saturating_add(1));
    let mut h = blake3::Hasher::new();
    if size < 64 << 10 {
        let mut buf = Vec::with_capacity(size as usize + 1);
        f.read_to_end(&mut buf)?;
        h.update(&buf);
    } else if size < PARALLEL_FILE_MIN {
        h.update_reader(&mut f)?;
    } else {
        // Two buffers: the next piece is read while the last one is hashed (itself on all
        // threads), which is 1.5x faster than reading and hashing in turn, and the buffers
        // stay small enough to be reused from the cache (see DESIGN.md).
        let (mut cur, mut next) = (vec![0u8; BIG_BUF], vec![0u8; BIG_BUF]);
        let mut n = read_full(&mut f, &mut cur)?;
        while n > 0 {
            let (read, ()) = rayon::join(
                || read_full(&mut f, &mut next),
                || {
                    h.update_rayon(&cur[..n]);
                },
            );
            n = read?;
            std::mem::swap(&mut cur, &mut next);
        }
    }
    Ok(*h.finalize().as_bytes())
}

/// Opens a file of a tree for reading without following a final symlink and without waiting
/// on a FIFO: the walk saw a regular file there, and something else may have been put in its
/// place since (a worker's destination is not ours alone).
///
/// # Errors
/// When it cannot be opened (a link now stands there: `ELOOP`).
pub fn open_file(path: &Path) -> io::Result<std::fs::File> {
    use rustix::fs::OFlags;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((OFlags::NOFOLLOW | OFlags::NONBLOCK).bits() as i32)
        .open(path)
}

/// Reads until `buf` is full or EOF; returns the number of bytes read.
///
/// # Errors
/// On read errors other than interruption.
pub fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// How long after a change a stamp stays untrusted. File systems with nanosecond timestamps
/// still advance them only at the kernel's coarse clock tick (a few ms); ones with whole-second
/// (or FAT's two-second) timestamps need the longer window.
pub fn racy_window_ns(stamp: &Stamp) -> i64 {
    let whole = |t: i64| t % 1_000_000_000 == 0;
    if whole(stamp.mtime_ns) && whole(stamp.ctime_ns) {
        2_000_000_000
    } else {
        50_000_000
    }
}

/// Whether a hash of a file with `stamp`, taken at `taken_ns`, may be trusted while the stamp is
/// unchanged.
pub fn stamp_trustworthy(stamp: &Stamp, taken_ns: i64) -> bool {
    let edge = taken_ns - racy_window_ns(stamp);
    stamp.mtime_ns < edge && stamp.ctime_ns < edge
}

/// Current wall-clock time in nanoseconds since the epoch.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

#[derive(Serialize, Deserialize)]
struct CacheFile {
    version: u32,
    records: Vec<(Stamp, Hash)>,
    listings: Vec<Listing>,
}

const CACHE_VERSION: u32 = 4;

struct Slot {
    stamp: Stamp,
    hash: Hash,
    /// Recorded (and trusted) by this run: only these are saved.
    seen: bool,
}

/// A persistent map from a file's [`Stamp`] to its hash, and the directory listings of the
/// last scan (see [`crate::listing`]).
///
/// Keyed by (device, inode), not by path: an unchanged stamp means the same inode with the same
/// size, mtime and ctime, so the same bytes whatever name reaches it, and records carry no path
/// text to decode.
#[derive(Default)]
pub struct HashCache {
    file: Option<PathBuf>,
    map: Records,
    seen: usize,
    changed: bool,
    listings: Vec<Listing>,
    listings_changed: bool,
}

type Records = FxHashMap<(u64, u64), Slot>;

impl HashCache {
    /// A cache that remembers nothing between runs.
    pub fn in_memory() -> HashCache {
        HashCache::default()
    }

    /// Loads the cache stored at `file`; a missing, unreadable or outdated file gives an empty
    /// cache (it is only an optimisation).
    pub fn load(file: PathBuf) -> HashCache {
        let (map, listings) = read_file(&file);
        HashCache {
            map,
            listings,
            file: Some(file),
            ..HashCache::default()
        }
    }

    /// The directory listings of the last scan; `None` for a cache that is not saved (then
    /// there is no point recording them either).
    pub fn listings(&self) -> Option<&[Listing]> {
        self.file.as_ref().map(|_| self.listings.as_slice())
    }

    /// Keeps this scan's listings for the next; `changed`: they differ from the loaded ones.
    pub fn set_listings(&mut self, listings: Vec<Listing>, changed: bool) {
        self.listings_changed |= changed || listings.len() != self.listings.len();
        self.listings = listings;
    }

    /// The cached hash of the file with `stamp`, if that stamp is unchanged.
    pub fn lookup(&self, stamp: &Stamp) -> Option<Hash> {
        match self.map.get(&(stamp.dev, stamp.ino)) {
            Some(slot) if slot.stamp == *stamp => Some(slot.hash),
            _ => None,
        }
    }

    /// Records the hash of the file with `stamp` for the next run if it can be trusted then.
    /// `taken_ns` is when the hashing started.
    pub fn record(&mut self, stamp: Stamp, hash: Hash, taken_ns: i64) {
        let trusted = stamp_trustworthy(&stamp, taken_ns);
        match self.map.get_mut(&(stamp.dev, stamp.ino)) {
            Some(slot) => {
                if !trusted || slot.stamp != stamp || slot.hash != hash {
                    self.changed = true;
                }
                if trusted && !slot.seen {
                    self.seen += 1;
                }
                *slot = Slot {
                    stamp,
                    hash,
                    seen: trusted || slot.seen,
                };
            }
            None => {
                self.changed = true;
                if trusted {
                    self.seen += 1;
                    let slot = Slot {
                        stamp,
                        hash,
                        seen: true,
                    };
                    self.map.insert((stamp.dev, stamp.ino), slot);
                }
            }
        }
    }

    /// Writes the records of this run (only those) atomically, if anything changed.
    ///
    /// # Errors
    /// When the cache file cannot be written.
    pub fn save(self) -> io::Result<()> {
        let Some(file) = self.file else {
            return Ok(());
        };
        if !self.changed && !self.listings_changed && self.seen == self.map.len() {
            return Ok(());
        }
        let records = self
            .map
            .into_values()
            .filter(|slot| slot.seen)
            .map(|slot| (slot.stamp, slot.hash))
            .collect();
        let bytes = postcard::to_stdvec(&CacheFile {
            version: CACHE_VERSION,
            records,
            listings: self.listings,
        })
        .map_err(io::Error::other)?;
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        crate::write_atomic(&file, &bytes)
    }
}

/// The records and listings stored at `file`: none when it is missing, unreadable or of
/// another version.
fn read_file(file: &Path) -> (Records, Vec<Listing>) {
    std::fs::read(file)
        .ok()
        .and_then(|b| postcard::from_bytes::<CacheFile>(&b).ok())
        .filter(|c| c.version == CACHE_VERSION)
        .map(|c| {
            let records = c
                .records
                .into_iter()
                .map(|(stamp, hash)| {
                    let slot = Slot {
                        stamp,
                        hash,
                        seen: false,
                    };
                    ((stamp.dev, stamp.ino), slot)
                })
                .collect();
            (records, c.listings)
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(mtime_ns: i64, ctime_ns: i64) -> Stamp {
        Stamp {
            dev: 1,
            ino: 2,
            size: 3,
            mtime_ns,
            ctime_ns,
        }
    }

    #[test]
    fn racily_clean_stamps_are_not_trusted() {
        let t = 100_000_000_000;
        assert!(stamp_trustworthy(&stamp(t - 60_000_001, t - 60_000_001), t));
        assert!(!stamp_trustworthy(&stamp(t - 1_000_001, t - 60_000_001), t));
        assert!(!stamp_trustworthy(&stamp(t - 60_000_001, t - 1), t));
        // Whole-second timestamps: the file system cannot tell edits within a second apart.
        assert!(!stamp_trustworthy(
            &stamp(t - 1_000_000_000, t - 1_000_000_000),
            t
        ));
        assert!(stamp_trustworthy(
            &stamp(t - 3_000_000_000, t - 3_000_000_000),
            t
        ));
    }

    #[test]
    fn cache_round_trip_and_stamp_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c/cache.bin");
        let s = stamp(1_000_000_123, 1_000_000_123);
        let mut c = HashCache::load(file.clone());
        c.record(s, [7; 32], now_ns());
        c.save().unwrap();
        let c = HashCache::load(file.clone());
        assert_eq!(c.lookup(&s), Some([7; 32]));
        assert_eq!(c.lookup(&stamp(1_000_000_124, 1_000_000_123)), None);
        assert_eq!(c.lookup(&Stamp { ino: 9, ..s }), None);
        // A run that records nothing keeps nothing; an untrusted stamp is not kept either.
        let mut c = HashCache::load(file.clone());
        let fresh = Stamp {
            ino: 9,
            ..stamp(now_ns(), now_ns())
        };
        c.record(fresh, [8; 32], now_ns());
        c.save().unwrap();
        let c = HashCache::load(file);
        assert_eq!(c.lookup(&s), None);
        assert_eq!(c.lookup(&fresh), None);
    }

    #[test]
    fn hash_file_neither_follows_a_link_nor_waits_on_a_fifo_nor_reads_past_the_size() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let p = fifo.clone();
        std::thread::spawn(move || tx.send(hash_file(&p, 10).is_ok()).unwrap());
        // A FIFO with no writer reads as empty at once instead of blocking the sync.
        assert!(
            rx.recv_timeout(std::time::Duration::from_secs(10)).is_ok(),
            "hash_file blocked on a FIFO"
        );
        let target = dir.path().join("target");
        std::fs::write(&target, b"outside").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(hash_file(&link, 7).is_err(), "followed a symlink");
        // A file longer than its stamp says is read one byte past it, not to its end.
        let grown = dir.path().join("grown");
        std::fs::write(&grown, b"abcdefgh").unwrap();
        assert_eq!(
            hash_file(&grown, 3).unwrap(),
            *blake3::hash(b"abcd").as_bytes()
        );
    }

    #[test]
    fn hash_file_matches_blake3_at_all_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let big = PARALLEL_FILE_MIN as usize;
        // Around the parallel path's threshold and its buffer size (one piece, several, a
        // short last one).
        for size in [
            0usize,
            1,
            65535,
            65536,
            big - 1,
            big,
            big + 3,
            3 * BIG_BUF,
            3 * BIG_BUF + 1,
        ] {
            let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
            let p = dir.path().join(format!("f{size}"));
            std::fs::write(&p, &data).unwrap();
            assert_eq!(
                hash_file(&p, size as u64).unwrap(),
                *blake3::hash(&data).as_bytes()
            );
        }
    }
}
