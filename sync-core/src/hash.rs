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

use crate::listing::Listing;
use crate::manifest::{Hash, Stamp};
use crate::sealed::HEADER;

/// Files at least this big are hashed with several threads, [`BIG_BUF`] at a time.
const PARALLEL_FILE_MIN: u64 = 4 << 20;
const BIG_BUF: usize = 4 << 20;

/// The leaves of a big file: its 2 MiB pieces, each a whole subtree of the file's BLAKE3 tree,
/// and the unit of delta chunks ([`crate::delta::DELTA_CHUNK`]). Both sides keep the chaining
/// values of a big file's leaves, so a changed big file is compared leaf by leaf and its
/// unchanged leaves are neither signed, nor sent, nor hashed again (the file's hash is merged
/// from the leaves').
pub const LEAF: u64 = 2 << 20;

/// A leaf's BLAKE3 chaining value.
pub type Cv = [u8; 32];

/// BLAKE3 of a stream, hashed leaf by leaf: the same hash as [`blake3::hash`], and for a stream
/// longer than one leaf the chaining values of its leaves. Leaves known by their chaining
/// value can be appended without their bytes ([`LeafHasher::push_leaf`]).
pub struct LeafHasher {
    /// The leaf being hashed.
    cur: blake3::Hasher,
    cur_len: u64,
    /// The leaves before it.
    cvs: Vec<Cv>,
    len: u64,
    /// A short leaf was pushed: nothing may follow it.
    sealed: bool,
    /// Something was appended out of place: there is no hash.
    broken: bool,
}

impl Default for LeafHasher {
    fn default() -> Self {
        LeafHasher {
            cur: blake3::Hasher::new(),
            cur_len: 0,
            cvs: Vec::new(),
            len: 0,
            sealed: false,
            broken: false,
        }
    }
}

impl LeafHasher {
    pub fn new() -> LeafHasher {
        LeafHasher::default()
    }

    /// Bytes appended so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn close_leaf(&mut self) {
        use blake3::hazmat::HasherExt;
        let done = std::mem::replace(&mut self.cur, blake3::Hasher::new());
        self.cvs.push(done.finalize_non_root());
        self.cur_len = 0;
    }

    pub fn update(&mut self, mut data: &[u8]) {
        if self.sealed && !data.is_empty() {
            self.broken = true;
            return;
        }
        while !data.is_empty() {
            if self.cur_len == LEAF {
                self.close_leaf();
            }
            if self.cur_len == 0 && self.len > 0 {
                use blake3::hazmat::HasherExt;
                self.cur.set_input_offset(self.len);
            }
            let n = ((LEAF - self.cur_len) as usize).min(data.len());
            self.cur.update(&data[..n]);
            self.cur_len += n as u64;
            self.len += n as u64;
            data = &data[n..];
        }
    }

    /// Appends a leaf of `len` bytes known by its chaining value, at a leaf boundary. A leaf
    /// shorter than [`LEAF`] must be the last. (A stream of one leaf has no hash this way: its
    /// hash is not merged from chaining values. [`LeafHasher::finalize`] then gives `None`.)
    pub fn push_leaf(&mut self, cv: Cv, len: u64) {
        if self.cur_len == LEAF {
            self.close_leaf();
        }
        if self.cur_len != 0 || self.sealed || len == 0 || len > LEAF {
            self.broken = true;
            return;
        }
        self.cvs.push(cv);
        self.len += len;
        self.sealed = len < LEAF;
    }

    /// The hash, and the leaves' chaining values when there is more than one leaf; `None` when
    /// the appended leaves cannot form a hash (see [`LeafHasher::push_leaf`]).
    pub fn finalize(mut self) -> Option<(Hash, Vec<Cv>)> {
        if self.broken {
            return None;
        }
        if self.cvs.is_empty() {
            // One leaf or less, all hashed here from offset 0: the plain hash.
            return Some((*self.cur.finalize().as_bytes(), Vec::new()));
        }
        if self.cur_len > 0 {
            self.close_leaf();
        }
        // (One leaf here was pushed: no hash.)
        let root = root_of(&self.cvs, self.len)?;
        Some((root, self.cvs))
    }
}

/// The BLAKE3 hash of a stream of `len` bytes from the chaining values of its leaves (at least
/// two); `None` if they do not fit `len`.
pub fn root_of(cvs: &[Cv], len: u64) -> Option<Hash> {
    use blake3::hazmat::{Mode, left_subtree_len, merge_subtrees_non_root, merge_subtrees_root};
    fn subtree(cvs: &[Cv], len: u64) -> Cv {
        if cvs.len() == 1 {
            return cvs[0];
        }
        let left = left_subtree_len(len);
        let n = (left / LEAF) as usize;
        merge_subtrees_non_root(
            &subtree(&cvs[..n], left),
            &subtree(&cvs[n..], len - left),
            Mode::Hash,
        )
    }
    if cvs.len() < 2 || len.div_ceil(LEAF) != cvs.len() as u64 {
        return None;
    }
    let left = left_subtree_len(len);
    let n = (left / LEAF) as usize;
    let root = merge_subtrees_root(
        &subtree(&cvs[..n], left),
        &subtree(&cvs[n..], len - left),
        Mode::Hash,
    );
    Some(*root.as_bytes())
}

/// The chaining value of the leaf at byte `offset` (a multiple of [`LEAF`]) of a stream longer
/// than one leaf.
pub fn leaf_cv(offset: u64, leaf: &[u8]) -> Cv {
    use blake3::hazmat::HasherExt;
    let mut h = blake3::Hasher::new();
    h.set_input_offset(offset);
    h.update(leaf);
    h.finalize_non_root()
}

/// Hashes the file at `path`, which is expected to be `size` bytes long.
///
/// # Errors
/// When the file cannot be read.
pub fn hash_file(path: &Path, size: u64) -> io::Result<Hash> {
    hash_file_leaves(path, size).map(|(h, _)| h)
}

/// [`hash_file`], with the chaining values of the file's leaves when it has more than one.
///
/// # Errors
/// When the file cannot be read.
pub fn hash_file_leaves(path: &Path, size: u64) -> io::Result<(Hash, Vec<Cv>)> {
    // A file that grew since it was stamped is read one byte past its stamp, which is enough
    // for the hash to differ: a device swapped in cannot keep this reading forever.
    let mut f = open_file(path)?.take(size.saturating_add(1));
    if size < 64 << 10 {
        let mut buf = Vec::with_capacity(size as usize + 1);
        f.read_to_end(&mut buf)?;
        return Ok((*blake3::hash(&buf).as_bytes(), Vec::new()));
    }
    if size < PARALLEL_FILE_MIN {
        let mut h = LeafHasher::new();
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let n = read_full(&mut f, &mut buf)?;
            h.update(&buf[..n]);
            if n < buf.len() {
                break;
            }
        }
        return Ok(h.finalize().expect("nothing pushed"));
    }
    // Two buffers: the next piece is read while the last one's leaves are hashed (one per
    // thread), which is 1.5x faster than reading and hashing in turn, and the buffers stay
    // small enough to be reused from the cache (see DESIGN.md).
    use rayon::prelude::*;
    let (mut cur, mut next) = (vec![0u8; BIG_BUF], vec![0u8; BIG_BUF]);
    let mut n = read_full(&mut f, &mut cur)?;
    if n as u64 <= LEAF {
        return Ok((*blake3::hash(&cur[..n]).as_bytes(), Vec::new()));
    }
    let (mut cvs, mut at) = (Vec::new(), 0u64);
    while n > 0 {
        let (read, leaves) = rayon::join(
            || read_full(&mut f, &mut next),
            || {
                cur[..n]
                    .par_chunks(LEAF as usize)
                    .enumerate()
                    .map(|(k, leaf)| leaf_cv(at + k as u64 * LEAF, leaf))
                    .collect::<Vec<Cv>>()
            },
        );
        cvs.extend(leaves);
        at += n as u64;
        n = read?;
        std::mem::swap(&mut cur, &mut next);
    }
    let root = root_of(&cvs, at).expect("leaves of more than one leaf");
    Ok((root, cvs))
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

/// The cache file: a header, then the records as rows of fixed width in the order the scan met
/// the files, then the directory listings (postcard). Rows are read where they lie, without
/// decoding: a scan meets the files in the same order every time, so a look-up is mostly a
/// comparison with the next row.
///
/// The header is [`crate::sealed`]'s, its count the number of rows. A row: the [`Stamp`]'s
/// dev, ino, size, mtime_ns and ctime_ns (8 bytes each, little-endian), then the hash.
const CACHE_MAGIC: &[u8; 8] = b"rdisthc\0";
const CACHE_VERSION: u32 = 6;
const ROW: usize = 72;
/// The rows a look-up tries before the index, the expected one first: room for a few files
/// removed since the last scan, one after another.
const AHEAD: usize = 8;

/// A persistent map from a file's [`Stamp`] to its hash, and the directory listings of the
/// last scan (see [`crate::listing`]).
///
/// Keyed by (device, inode), not by path: an unchanged stamp means the same inode with the same
/// size, mtime and ctime, so the same bytes whatever name reaches it, and records carry no path
/// text to decode. Which row a look-up finds only decides how fast it is: a hash is returned
/// only for a row with the whole stamp.
#[derive(Default)]
pub struct HashCache {
    file: Option<PathBuf>,
    /// The file as loaded (empty when it was missing or not valid); its rows start at
    /// [`HEADER`].
    old: Vec<u8>,
    rows: usize,
    /// The row the next look-up expects.
    cursor: usize,
    /// Row by (dev, ino), built at the first look-up the rows around the cursor cannot serve.
    index: Option<FxHashMap<(u64, u64), u32>>,
    /// The rows of this run, in the order recorded.
    new: Vec<u8>,
    listings: Vec<Listing>,
    listings_changed: bool,
}

/// A stamp as 40 bytes: dev, ino, size, mtime_ns, ctime_ns, each little-endian.
pub(crate) fn stamp_row(stamp: &Stamp) -> [u8; 40] {
    let mut r = [0u8; 40];
    let fields = [
        stamp.dev,
        stamp.ino,
        stamp.size,
        stamp.mtime_ns as u64,
        stamp.ctime_ns as u64,
    ];
    for (k, v) in fields.into_iter().enumerate() {
        r[k * 8..k * 8 + 8].copy_from_slice(&v.to_le_bytes());
    }
    r
}

/// The stamp [`stamp_row`] wrote.
pub(crate) fn stamp_from_row(row: &[u8; 40]) -> Stamp {
    let at = |k: usize| u64::from_le_bytes(row[k..k + 8].try_into().expect("8 bytes"));
    Stamp {
        dev: at(0),
        ino: at(8),
        size: at(16),
        mtime_ns: at(24) as i64,
        ctime_ns: at(32) as i64,
    }
}

fn row_key(row: &[u8]) -> (u64, u64) {
    let at = |k: usize| u64::from_le_bytes(row[k..k + 8].try_into().expect("8 bytes"));
    (at(0), at(8))
}

impl HashCache {
    /// A cache that remembers nothing between runs.
    pub fn in_memory() -> HashCache {
        HashCache::default()
    }

    /// Loads the cache stored at `file`; a missing, unreadable, damaged or outdated file gives
    /// an empty cache (it is only an optimisation).
    pub fn load(file: PathBuf) -> HashCache {
        let mut c = HashCache {
            file: Some(file),
            ..HashCache::default()
        };
        let Some(bytes) = c.file.as_deref().and_then(|f| std::fs::read(f).ok()) else {
            return c;
        };
        if let Some((rows, listings)) = parse(&bytes) {
            c.rows = rows;
            c.listings = listings;
            c.old = bytes;
        }
        c
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

    fn row(&self, i: usize) -> &[u8] {
        &self.old[HEADER + i * ROW..][..ROW]
    }

    /// The row of the file (dev, ino) of `key`, if any.
    fn find(&mut self, key: &[u8]) -> Option<usize> {
        let end = (self.cursor + AHEAD).min(self.rows);
        if let Some(i) = (self.cursor..end).find(|&i| self.row(i)[..16] == *key) {
            return Some(i);
        }
        if self.index.is_none() {
            let mut index = FxHashMap::default();
            index.reserve(self.rows);
            for i in 0..self.rows {
                index.insert(row_key(self.row(i)), i as u32);
            }
            self.index = Some(index);
        }
        let index = self.index.as_ref().expect("built");
        index.get(&row_key(key)).map(|&i| i as usize)
    }

    /// The cached hash of the file with `stamp`, if that stamp is unchanged. Fastest when
    /// files are looked up in the order they were recorded.
    pub fn lookup(&mut self, stamp: &Stamp) -> Option<Hash> {
        let key = stamp_row(stamp);
        let i = self.find(&key[..16])?;
        self.cursor = i + 1;
        let row = self.row(i);
        (row[..40] == key).then(|| row[40..].try_into().expect("32 bytes"))
    }

    /// Records the hash of the file with `stamp` for the next run if it can be trusted then.
    /// `taken_ns` is when the hashing started. Only what a run records is saved.
    pub fn record(&mut self, stamp: Stamp, hash: Hash, taken_ns: i64) {
        if self.file.is_some() && stamp_trustworthy(&stamp, taken_ns) {
            self.new.extend_from_slice(&stamp_row(&stamp));
            self.new.extend_from_slice(&hash);
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
        let old_rows = self
            .old
            .get(HEADER..HEADER + self.rows * ROW)
            .unwrap_or(&[]);
        if !self.listings_changed && old_rows == self.new.as_slice() {
            return Ok(());
        }
        let rows = u32::try_from(self.new.len() / ROW).map_err(io::Error::other)?;
        let capacity = HEADER + self.new.len() + (1 << 20);
        let mut bytes = crate::sealed::start(CACHE_MAGIC, CACHE_VERSION, capacity);
        bytes.extend_from_slice(&self.new);
        let mut bytes = postcard::to_extend(&self.listings, bytes).map_err(io::Error::other)?;
        crate::sealed::seal(&mut bytes, rows);
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        crate::write_atomic(&file, &bytes)
    }
}

/// The number of rows and the listings of a cache file; `None` when it is not a whole cache
/// file of this version.
fn parse(bytes: &[u8]) -> Option<(usize, Vec<Listing>)> {
    let (rows, body) = crate::sealed::open(bytes, CACHE_MAGIC, CACHE_VERSION)?;
    let tail = body.get(rows.checked_mul(ROW)?..)?;
    match postcard::take_from_bytes::<Vec<Listing>>(tail).ok()? {
        (listings, []) => Some((rows, listings)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sizes around the leaf size and the BLAKE3 tree's power-of-two splits.
    fn sizes() -> Vec<u64> {
        let l = LEAF;
        vec![
            0,
            1,
            1024,
            l - 1,
            l,
            l + 1,
            2 * l - 1,
            2 * l,
            2 * l + 1,
            3 * l,
            4 * l + 5,
            5 * l,
            7 * l + l / 2,
            8 * l,
            9 * l + 1,
        ]
    }

    fn data(len: u64) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4099) as u8).collect()
    }

    #[test]
    fn leaves_merge_into_the_plain_hash() {
        for len in sizes() {
            let d = data(len);
            let want = *blake3::hash(&d).as_bytes();
            // Fed in odd pieces.
            let mut h = LeafHasher::new();
            for piece in d.chunks(777_777) {
                h.update(piece);
            }
            let (hash, cvs) = h.finalize().unwrap();
            assert_eq!(hash, want, "{len} bytes");
            let leaves = if len > LEAF { len.div_ceil(LEAF) } else { 0 };
            assert_eq!(cvs.len() as u64, leaves, "{len} bytes");
            for (k, cv) in cvs.iter().enumerate() {
                let at = k as u64 * LEAF;
                let leaf = &d[at as usize..(at + LEAF).min(len) as usize];
                assert_eq!(*cv, leaf_cv(at, leaf));
            }
            // Read from a file, on every path of `hash_file_leaves`.
            let dir = tempfile::tempdir().unwrap();
            let f = dir.path().join("f");
            std::fs::write(&f, &d).unwrap();
            assert_eq!(hash_file_leaves(&f, len).unwrap(), (want, cvs.clone()));
            // Leaves pushed by their chaining values where there are several.
            if cvs.len() >= 2 {
                let mut h = LeafHasher::new();
                for (k, cv) in cvs.iter().enumerate() {
                    let at = k as u64 * LEAF;
                    let end = (at + LEAF).min(len);
                    if k % 2 == 0 {
                        h.push_leaf(*cv, end - at);
                    } else {
                        h.update(&d[at as usize..end as usize]);
                    }
                }
                assert_eq!(h.finalize().unwrap(), (want, cvs), "{len} bytes");
            }
        }
    }

    #[test]
    fn leaves_out_of_place_give_no_hash() {
        let cv = leaf_cv(0, &data(LEAF));
        // A lone pushed leaf: a one-leaf stream's hash is not made from chaining values.
        let mut h = LeafHasher::new();
        h.push_leaf(cv, LEAF);
        assert!(h.finalize().is_none());
        // Not at a leaf boundary.
        let mut h = LeafHasher::new();
        h.update(b"x");
        h.push_leaf(cv, LEAF);
        assert!(h.finalize().is_none());
        // Anything after a short leaf.
        let mut h = LeafHasher::new();
        h.update(&data(LEAF));
        h.push_leaf(cv, 10);
        h.update(b"x");
        assert!(h.finalize().is_none());
        // Chaining values that do not fit the length.
        assert!(root_of(&[cv, cv], 5 * LEAF).is_none());
        assert!(root_of(&[cv], LEAF).is_none());
    }

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
        let mut c = HashCache::load(file.clone());
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
        let mut c = HashCache::load(file);
        assert_eq!(c.lookup(&s), None);
        assert_eq!(c.lookup(&fresh), None);
    }

    #[test]
    fn cache_lookups_in_any_order_and_damaged_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cache.bin");
        let taken = now_ns();
        let s = |ino: u64| Stamp {
            ino,
            ..stamp(1_000_000_000 + ino as i64, 1_000_000_000)
        };
        let hash_of = |ino: u64| [ino as u8; 32];
        let mut c = HashCache::load(file.clone());
        for ino in 0..100 {
            c.record(s(ino), hash_of(ino), taken);
        }
        c.save().unwrap();
        // The next scan: 20 files gone from the front, 30 from the middle (more than the rows
        // tried before the index), a few new ones, and the rest in order and then backwards.
        let mut c = HashCache::load(file.clone());
        let order = (20..40)
            .chain([500, 501])
            .chain(70..100)
            .chain((40..70).rev());
        for ino in order {
            let want = (ino < 100).then(|| hash_of(ino));
            assert_eq!(c.lookup(&s(ino)), want, "inode {ino}");
        }
        // Same inode, another stamp: no hash.
        assert_eq!(c.lookup(&Stamp { size: 9, ..s(50) }), None);
        // Recording what was loaded, in the same order, leaves the file as it was.
        let before = std::fs::read(&file).unwrap();
        let mut c = HashCache::load(file.clone());
        for ino in 0..100 {
            let h = c.lookup(&s(ino)).unwrap();
            c.record(s(ino), h, taken);
        }
        std::fs::remove_file(&file).unwrap();
        c.save().unwrap();
        assert!(!file.exists(), "an unchanged cache is not written again");
        std::fs::write(&file, &before).unwrap();
        // A damaged or cut file, or one of another version, is an empty cache.
        let mut flipped = before.clone();
        flipped[HEADER + 5 * ROW + 40] ^= 1;
        let mut other = before.clone();
        other[16] += 1;
        for bad in [
            flipped,
            before[..before.len() - 1].to_vec(),
            other,
            b"junk".to_vec(),
        ] {
            std::fs::write(&file, &bad).unwrap();
            let mut c = HashCache::load(file.clone());
            assert_eq!(c.lookup(&s(5)), None);
            assert!(c.listings().unwrap().is_empty());
        }
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
