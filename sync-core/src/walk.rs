//! Walking a tree in parallel: every entry below a root with its `lstat` data, ignore rules
//! applied while walking so ignored directories are never entered.
//!
//! Links are never followed. Entries that cannot be mirrored (sockets, FIFOs, devices, names that
//! are not UTF-8, unreadable directories) are skipped and reported as [`Problem`]s, not fatal.

use std::ffi::{CStr, CString};
use std::fs::Metadata;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::filter::Filter;
use crate::hash::{now_ns, stamp_trustworthy};
use crate::listing::{ListedDir, Listing};
use crate::manifest::Stamp;
use crate::path::RelPath;

/// A non-fatal problem with one path, reported at the end of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl Problem {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}`: {}", self.path, self.message)
    }
}

/// What a walked entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    File { stamp: Stamp, mode: u32 },
    Dir { mode: u32 },
    Symlink { target: String },
}

/// One walked entry.
#[derive(Debug, Clone)]
pub struct Walked {
    /// Where the entry lands in the destination.
    pub path: RelPath,
    /// Where it is on this machine.
    pub abs: PathBuf,
    pub found: Found,
}

/// Where a walk starts and how its entries are named.
#[derive(Debug, Clone)]
pub struct WalkRoot {
    /// The directory (or file) to walk.
    pub abs: PathBuf,
    /// The root's path relative to the project root, for anchored ignore patterns; `None` when
    /// the root is the project root itself.
    pub filter_rel: Option<RelPath>,
    /// The root's path in the destination; `None` for the destination's top.
    pub dest_rel: Option<RelPath>,
}

/// Classifies one `lstat` result.
///
/// # Errors
/// A message for entries that cannot be mirrored.
pub fn classify(abs: &Path, meta: &Metadata) -> Result<Found, String> {
    classify_mode(meta.mode(), Stamp::of(meta), || {
        std::fs::read_link(abs).map(|t| t.into_os_string().into_vec())
    })
}

/// Classifies an entry by its `st_mode` (and `stamp`, for a file); `read_link` gives a
/// symlink's target.
fn classify_mode(
    mode: u32,
    stamp: Stamp,
    read_link: impl FnOnce() -> std::io::Result<Vec<u8>>,
) -> Result<Found, String> {
    use rustix::fs::FileType;
    let perm = mode & 0o7777;
    match FileType::from_raw_mode(mode) {
        FileType::RegularFile => Ok(Found::File { stamp, mode: perm }),
        FileType::Directory => Ok(Found::Dir { mode: perm }),
        FileType::Symlink => {
            let target = read_link().map_err(|e| format!("cannot read link: {e}"))?;
            match String::from_utf8(target) {
                Ok(t) if !t.is_empty() && !t.contains('\0') => Ok(Found::Symlink { target: t }),
                _ => Err("symlink target is not valid UTF-8; skipped".to_owned()),
            }
        }
        other => {
            let what = match other {
                FileType::Fifo => "FIFO",
                FileType::Socket => "socket",
                FileType::BlockDevice | FileType::CharacterDevice => "device",
                _ => "special file",
            };
            Err(format!(
                "{what} skipped (only files, directories and symlinks are synced)"
            ))
        }
    }
}

/// Walks everything below `root` (not the root itself), in parallel, applying `filter`.
/// Returns the entries sorted by path (the order [`RelPath`]'s `Ord` gives).
///
/// Each directory is one rayon task. It opens the directory once, reads it with `getdents64`
/// into a stack buffer, and `statx`es each entry relative to the open directory, so a
/// directory costs four system calls (`std::fs::read_dir` adds an `fstat`) and an entry one,
/// with no allocation for its name. Each task sorts its own entries, and the walk then stitches
/// the sorted directories together: no sort of the whole tree, whose path comparisons cost
/// more than the rest of the walk's user time together (see DESIGN.md).
pub fn walk(root: &WalkRoot, filter: &Filter) -> (Vec<Walked>, Vec<Problem>) {
    let w = walk_listed(root, filter, None);
    (w.entries, w.problems)
}

/// What [`walk_listed`] found.
pub struct Walk {
    /// The entries, sorted by path.
    pub entries: Vec<Walked>,
    pub problems: Vec<Problem>,
    /// The directories for the next walk of this root to reuse.
    pub listing: Listing,
    /// How many directories this walk did not read, because `known` vouched for their names.
    pub reused: usize,
    /// Whether `listing` differs from the known one (and is worth saving).
    pub changed: bool,
}

/// [`walk`], reusing the names of the directories in `known` whose stamp is unchanged (see
/// [`crate::listing`]), and recording the listing for the next walk (`None`: neither).
/// Listings taken with another root or other rules are not used.
pub fn walk_listed(root: &WalkRoot, filter: &Filter, known: Option<&[Listing]>) -> Walk {
    let key = Listing::key_for(root, filter);
    let known_dirs: rustc_hash::FxHashMap<&str, &ListedDir> = known
        .unwrap_or_default()
        .iter()
        .filter(|l| l.serves(&key))
        .flat_map(|l| &l.dirs)
        .map(|d| (d.path.as_str(), d))
        .collect();
    let ctx = Ctx {
        root,
        filter,
        next_id: AtomicUsize::new(1),
        listed: Mutex::new(Vec::new()),
        problems: Mutex::new(Vec::new()),
        known: known_dirs,
        trusted_dev: known.and_then(|_| trusted_dev(&root.abs)),
        started_ns: now_ns(),
        recorded: Mutex::new(Vec::new()),
        reused: AtomicUsize::new(0),
    };
    rayon::scope(|s| visit_dir(s, &ctx, 0, root.abs.clone(), None, None));
    let listed = ctx.listed.into_inner().unwrap();
    let total = listed.iter().map(|(_, items)| items.len()).sum();
    let mut by_id: Vec<Vec<Item>> = (0..ctx.next_id.into_inner()).map(|_| Vec::new()).collect();
    for (id, items) in listed {
        by_id[id] = items;
    }
    // Depth first, with an explicit stack: a directory's subtree goes where its `Sub` sorted.
    let mut out = Vec::with_capacity(total);
    let mut stack = vec![std::mem::take(&mut by_id[0]).into_iter()];
    while let Some(top) = stack.last_mut() {
        match top.next() {
            Some(Item::Entry(w, _)) => out.push(w),
            Some(Item::Sub { id, .. }) => stack.push(std::mem::take(&mut by_id[id]).into_iter()),
            None => {
                stack.pop();
            }
        }
    }
    let recorded = ctx.recorded.into_inner().unwrap();
    let reused = ctx.reused.into_inner();
    // Every known directory reused, and no other recorded: the same listing.
    let changed = !(reused == ctx.known.len() && recorded.len() == reused);
    Walk {
        entries: out,
        problems: ctx.problems.into_inner().unwrap(),
        listing: Listing::new(key, recorded),
        reused,
        changed,
    }
}

/// File systems whose directory times the kernel keeps itself (so a directory's stamp changes
/// with its names): ext2/3/4, XFS, Btrfs, tmpfs, F2FS and ZFS. Network file systems cache
/// attributes, FUSE ones keep whatever times their daemon reports, and overlayfs shows the
/// upper directory's times, which a name added to a lower layer does not change.
const TRUSTED_FS: [u32; 6] = [
    0xEF53,
    0x5846_5342,
    0x9123_683E,
    0x0102_1994,
    0xF2F5_2010,
    0x2FC1_2FC1,
];

/// The device of `root` when it is on a file system listings can be trusted on.
fn trusted_dev(root: &Path) -> Option<u64> {
    let fs = rustix::fs::statfs(root).ok()?;
    // `f_type` is a C long holding a 32-bit magic number.
    TRUSTED_FS.contains(&(fs.f_type as u32)).then_some(())?;
    rustix::fs::stat(root).ok().map(|st| st.st_dev)
}

struct Ctx<'a> {
    root: &'a WalkRoot,
    filter: &'a Filter,
    /// The id the next directory task gets (the root's is 0).
    next_id: AtomicUsize,
    /// Each directory's items, sorted, by task id.
    listed: Mutex<Vec<(usize, Vec<Item>)>>,
    problems: Mutex<Vec<Problem>>,
    /// Names of directories from an earlier walk, by destination path.
    known: rustc_hash::FxHashMap<&'a str, &'a ListedDir>,
    /// The root's device, when listings are used and recorded (see [`trusted_dev`]).
    trusted_dev: Option<u64>,
    /// When the walk started: a directory stamp is recorded only when older than this by more
    /// than the racy window.
    started_ns: i64,
    recorded: Mutex<Vec<ListedDir>>,
    reused: AtomicUsize,
}

impl Ctx<'_> {
    fn problem(&self, path: &Path, msg: String) {
        self.problems
            .lock()
            .unwrap()
            .push(Problem::new(path.display().to_string(), msg));
    }
}

/// One directory's share of the output, before the stitching.
enum Item {
    /// An entry, and where its name starts in its path.
    Entry(Walked, usize),
    /// Everything below the subdirectory `name`, listed by task `id`.
    Sub { name: Box<str>, id: usize },
}

impl Item {
    /// The item's name in its directory, and whether a `/` follows it: a subtree sorts as
    /// `name/`, which puts `a.txt` before `a/b`, as the full paths compare.
    fn key(&self) -> (&str, bool) {
        match self {
            Item::Entry(w, at) => (&w.path.as_str()[*at..], false),
            Item::Sub { name, .. } => (name, true),
        }
    }
}

/// Compares two [`Item::key`]s as the bytes `name` (+ `/`).
fn key_cmp((a, a_sub): (&str, bool), (b, b_sub): (&str, bool)) -> std::cmp::Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let n = a.len().min(b.len());
    a[..n].cmp(&b[..n]).then_with(|| {
        let next = |s: &[u8], sub: bool| s.get(n).copied().or(sub.then_some(b'/'));
        next(a, a_sub).cmp(&next(b, b_sub))
    })
}

/// What `statx` says about one entry.
struct Meta {
    /// `st_mode`: file type and permission bits.
    mode: u32,
    stamp: Stamp,
}

/// `statx` (or `fstatat` where the kernel has no `statx`) of `name` in `dir`, not following
/// a final symlink.
fn stat_at(dir: &OwnedFd, name: &CStr) -> rustix::io::Result<Meta> {
    use rustix::fs::{AtFlags, StatxFlags};
    static NO_STATX: AtomicBool = AtomicBool::new(false);
    if !NO_STATX.load(Ordering::Relaxed) {
        let want = StatxFlags::TYPE
            | StatxFlags::MODE
            | StatxFlags::INO
            | StatxFlags::SIZE
            | StatxFlags::MTIME
            | StatxFlags::CTIME;
        match rustix::fs::statx(dir, name, AtFlags::SYMLINK_NOFOLLOW, want) {
            Ok(st) => {
                let ns =
                    |t: rustix::fs::StatxTimestamp| t.tv_sec * 1_000_000_000 + t.tv_nsec as i64;
                return Ok(Meta {
                    mode: u32::from(st.stx_mode),
                    stamp: Stamp {
                        dev: rustix::fs::makedev(st.stx_dev_major, st.stx_dev_minor),
                        ino: st.stx_ino,
                        size: st.stx_size,
                        mtime_ns: ns(st.stx_mtime),
                        ctime_ns: ns(st.stx_ctime),
                    },
                });
            }
            // Kernels before 4.11, and sandboxes that filter it out.
            Err(rustix::io::Errno::NOSYS | rustix::io::Errno::PERM) => {
                NO_STATX.store(true, Ordering::Relaxed);
            }
            Err(e) => return Err(e),
        }
    }
    let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(Meta {
        mode: st.st_mode,
        stamp: Stamp {
            dev: st.st_dev,
            ino: st.st_ino,
            size: st.st_size as u64,
            mtime_ns: st.st_mtime * 1_000_000_000 + st.st_mtime_nsec as i64,
            ctime_ns: st.st_ctime * 1_000_000_000 + st.st_ctime_nsec as i64,
        },
    })
}

/// Classifies what [`stat_at`] found.
fn classify_at(dir: &OwnedFd, name: &CStr, meta: &Meta) -> Result<Found, String> {
    classify_mode(meta.mode, meta.stamp, || {
        rustix::fs::readlinkat(dir, name, Vec::new())
            .map(CString::into_bytes)
            .map_err(std::io::Error::from)
    })
}

/// A subdirectory found in a directory, to be walked once the directory is done.
struct Pending {
    id: usize,
    name: CString,
    abs: PathBuf,
    path: RelPath,
    stamp: Stamp,
}

/// One directory's entries, before its subdirectories are queued.
#[derive(Default)]
struct Listed {
    items: Vec<Item>,
    subs: Vec<Pending>,
    /// Nothing went wrong that the listing would hide: it may be recorded for the next walk.
    clean: bool,
}

impl Listed {
    /// Adds entry `name` (at `path`) of directory `dir`, open as `fd`, which `meta` describes.
    ///
    /// # Errors
    /// A message for an entry that cannot be mirrored.
    fn add(
        &mut self,
        ctx: &Ctx<'_>,
        fd: &OwnedFd,
        dir: &Path,
        (name, cname): (&str, &CStr),
        path: RelPath,
        meta: &Meta,
    ) -> Result<(), String> {
        let abs = dir.join(name);
        let found = classify_at(fd, cname, meta)?;
        if matches!(found, Found::Dir { .. }) {
            let id = ctx.next_id.fetch_add(1, Ordering::Relaxed);
            self.subs.push(Pending {
                id,
                name: cname.to_owned(),
                abs: abs.clone(),
                path: path.clone(),
                stamp: meta.stamp,
            });
            self.items.push(Item::Sub {
                name: name.into(),
                id,
            });
        }
        let at = path.as_str().len() - name.len();
        self.items
            .push(Item::Entry(Walked { path, abs, found }, at));
        Ok(())
    }
}

/// The listing of a directory's sorted `items`, for the next walk.
fn record(items: &[Item], path: &RelPath, stamp: Stamp) -> ListedDir {
    let mut names = String::new();
    let mut dirs = Vec::new();
    let entries = items.iter().filter_map(|i| match i {
        Item::Entry(w, _) => Some(w),
        Item::Sub { .. } => None,
    });
    for (n, w) in entries.enumerate() {
        if matches!(w.found, Found::Dir { .. }) {
            dirs.push(n as u32);
        }
        names.push_str(w.path.name());
        names.push('\0');
    }
    ListedDir {
        path: path.as_str().to_owned(),
        stamp,
        names,
        dirs,
    }
}

/// Reads directory `dir`, open as `fd`, whose destination path is `sub` (`None`: the top):
/// `getdents64`, the ignore rules, and a `statx` per entry they keep.
fn read_dir(ctx: &Ctx<'_>, fd: &OwnedFd, dir: &Path, sub: Option<&RelPath>) -> Listed {
    use rustix::fs::FileType;
    let dest_prefix = sub.or(ctx.root.dest_rel.as_ref());
    let mut listed = Listed {
        clean: true,
        ..Listed::default()
    };
    let problem = |listed: &mut Listed, path: &Path, msg: String| {
        listed.clean = false;
        ctx.problem(path, msg);
    };
    let mut buf = [MaybeUninit::<u8>::uninit(); 32 << 10];
    let mut entries = rustix::fs::RawDir::new(fd, &mut buf);
    while let Some(ent) = entries.next() {
        let ent = match ent {
            Ok(e) => e,
            Err(e) => {
                let e = std::io::Error::from(e);
                problem(&mut listed, dir, format!("cannot read directory: {e}"));
                break;
            }
        };
        let cname = ent.file_name();
        let bytes = cname.to_bytes();
        if bytes == b"." || bytes == b".." {
            continue;
        }
        let Ok(name) = std::str::from_utf8(bytes) else {
            let abs = dir.join(std::ffi::OsStr::from_bytes(bytes));
            problem(
                &mut listed,
                &abs,
                "name is not valid UTF-8; skipped".to_owned(),
            );
            continue;
        };
        // `d_type` says whether it is a directory, except on file systems that leave it
        // unknown: then the stat decides, before the ignore rules look at it.
        let mut meta = None;
        let is_dir = match ent.file_type() {
            FileType::Unknown => match stat_at(fd, cname) {
                Ok(m) => {
                    let d = FileType::from_raw_mode(m.mode) == FileType::Directory;
                    meta = Some(m);
                    d
                }
                Err(rustix::io::Errno::NOENT) => {
                    listed.clean = false;
                    continue;
                }
                Err(e) => {
                    let e = std::io::Error::from(e);
                    problem(&mut listed, &dir.join(name), format!("cannot stat: {e}"));
                    continue;
                }
            },
            t => t == FileType::Directory,
        };
        // Names first: that needs no path, and it is all the fixed ignores look at.
        if ctx.filter.is_name_ignored(name, is_dir) {
            continue;
        }
        let path = match dest_prefix {
            Some(parent) => parent.join(name),
            None => RelPath::new(name),
        };
        let path = match path {
            Ok(p) => p,
            Err(e) => {
                problem(&mut listed, &dir.join(name), format!("{e}; skipped"));
                continue;
            }
        };
        // The name rules were applied above; only the `/` ones are left.
        if path_ignored(ctx, &path, is_dir) {
            continue;
        }
        let meta = match meta.map_or_else(|| stat_at(fd, cname), Ok) {
            Ok(m) => m,
            // Vanished between readdir and stat: as if it was never there.
            Err(rustix::io::Errno::NOENT) => {
                listed.clean = false;
                continue;
            }
            Err(e) => {
                let e = std::io::Error::from(e);
                problem(&mut listed, &dir.join(name), format!("cannot stat: {e}"));
                continue;
            }
        };
        if let Err(msg) = listed.add(ctx, fd, dir, (name, cname), path, &meta) {
            problem(&mut listed, &dir.join(name), msg);
        }
    }
    listed
}

/// Lists directory `dir`, open as `fd`, from its `known` names: a `statx` each, no reading.
/// `None` when anything is not as the listing says (a name gone, a type changed) or not as a
/// walk records it (names out of order or repeated, a name the ignore rules drop, a directory
/// index that names nothing): then the directory is read. The listing is not trusted input: it
/// lies in the destination, and an older build may have written it.
fn list_known(
    ctx: &Ctx<'_>,
    fd: &OwnedFd,
    dir: &Path,
    sub: &RelPath,
    known: &ListedDir,
) -> Option<Listed> {
    use rustix::fs::FileType;
    let mut listed = Listed {
        clean: true,
        ..Listed::default()
    };
    let mut dirs = known.dirs.iter().copied().peekable();
    let mut rest = known.names.as_bytes();
    let mut n = 0u32;
    let mut last: Option<&[u8]> = None;
    while !rest.is_empty() {
        let end = rest.iter().position(|&b| b == 0)?;
        let bytes = &rest[..end];
        // Strictly ascending, as recorded: no name twice (each would be walked again, and
        // a subdirectory listed k times at each level would cost k to the depth visits).
        if last.is_some_and(|l| l >= bytes) {
            return None;
        }
        last = Some(bytes);
        let cname = CStr::from_bytes_with_nul(&rest[..=end]).ok()?;
        let name = std::str::from_utf8(bytes).ok()?;
        rest = &rest[end + 1..];
        let want_dir = dirs.next_if_eq(&n).is_some();
        n += 1;
        // A name with a `/` is refused here, before any system call.
        let path = sub.join(name).ok()?;
        if ctx.filter.is_name_ignored(name, want_dir) || path_ignored(ctx, &path, want_dir) {
            return None;
        }
        let meta = stat_at(fd, cname).ok()?;
        if (FileType::from_raw_mode(meta.mode) == FileType::Directory) != want_dir {
            return None;
        }
        listed.add(ctx, fd, dir, (name, cname), path, &meta).ok()?;
    }
    // Every directory index used, in order.
    dirs.next().is_none().then_some(listed)
}

/// Whether a pattern with `/` ignores the entry at destination `path` (see [`read_dir`]).
fn path_ignored(ctx: &Ctx<'_>, path: &RelPath, is_dir: bool) -> bool {
    if !ctx.filter.has_path_patterns() {
        return false;
    }
    // The path below the root, then as seen from the project root.
    let rel = match &ctx.root.dest_rel {
        Some(d) => &path.as_str()[d.as_str().len() + 1..],
        None => path.as_str(),
    };
    match &ctx.root.filter_rel {
        Some(prefix) => ctx
            .filter
            .is_path_ignored(&format!("{prefix}/{rel}"), is_dir),
        None => ctx.filter.is_path_ignored(rel, is_dir),
    }
}

/// Lists directory `dir` (task `id`), whose path in the destination is `sub` (`None`: the
/// top), queueing a task for each subdirectory. A subdirectory is `name` in the directory open
/// as `parent`: opened relative to it, without following a link, so no path is resolved again
/// and a directory swapped for a link meanwhile (itself or any directory above it) cannot lead
/// the walk out of the root. The root itself is opened by path, following a link.
///
/// `stamp` is the directory's own, from its parent's `statx`: when an earlier walk's listing
/// has the same, the directory's known names are `statx`ed instead of reading it again.
fn visit_dir<'s>(
    s: &rayon::Scope<'s>,
    ctx: &'s Ctx<'s>,
    id: usize,
    dir: PathBuf,
    sub: Option<RelPath>,
    parent: Option<(Arc<OwnedFd>, CString, Stamp)>,
) {
    use rustix::fs::{Mode, OFlags};
    let trusted = parent
        .as_ref()
        .map(|p| p.2)
        .filter(|st| Some(st.dev) == ctx.trusted_dev);
    let known = sub
        .as_ref()
        .zip(trusted)
        .and_then(|(p, st)| ctx.known.get(p.as_str()).filter(|k| k.stamp == st));
    let open = |flags: OFlags| {
        let flags = flags | OFlags::DIRECTORY | OFlags::CLOEXEC;
        match &parent {
            None => rustix::fs::open(&dir, flags, Mode::empty()),
            Some((fd, name, _)) => {
                rustix::fs::openat(fd, name, flags | OFlags::NOFOLLOW, Mode::empty())
            }
        }
    };
    // Known names need no reading: a path-only open does (and is cheaper).
    let mut reused = None;
    if let (Some(k), Some(sub)) = (known, &sub) {
        reused = open(OFlags::PATH)
            .ok()
            .and_then(|fd| Some((list_known(ctx, &fd, &dir, sub, k)?, fd)));
    }
    let from_known = reused.is_some();
    let (listed, fd) = match reused {
        Some((listed, fd)) => {
            ctx.reused.fetch_add(1, Ordering::Relaxed);
            (listed, fd)
        }
        None => {
            let opened = open(OFlags::RDONLY);
            let is_root = parent.is_none();
            let fd = match opened {
                Ok(fd) => fd,
                Err(e) => {
                    use rustix::io::Errno;
                    // Gone, or replaced by a link or a file since its parent was read.
                    let raced =
                        e == Errno::NOENT || (!is_root && matches!(e, Errno::LOOP | Errno::NOTDIR));
                    if !raced {
                        let e = std::io::Error::from(e);
                        ctx.problem(&dir, format!("cannot read directory: {e}"));
                    }
                    return;
                }
            };
            (read_dir(ctx, &fd, &dir, sub.as_ref()), fd)
        }
    };
    // The parent stays open only until its subdirectories are.
    drop(parent);
    let Listed {
        mut items,
        subs,
        clean,
    } = listed;
    let fd = Arc::new(fd);
    for p in subs {
        let at = (Arc::clone(&fd), p.name, p.stamp);
        s.spawn(move |s| visit_dir(s, ctx, p.id, p.abs, Some(p.path), Some(at)));
    }
    drop(fd);
    items.sort_unstable_by(|a, b| key_cmp(a.key(), b.key()));
    // A name listed twice (an entry renamed while the directory was read may be): once.
    items.dedup_by(|b, a| key_cmp(a.key(), b.key()).is_eq());
    if clean
        && let (Some(sub), Some(stamp)) = (&sub, trusted)
        && stamp_trustworthy(&stamp, ctx.started_ns)
    {
        let l = match known {
            Some(k) if from_known => (*k).clone(),
            _ => record(&items, sub, stamp),
        };
        ctx.recorded.lock().unwrap().push(l);
    }
    ctx.listed.lock().unwrap().push((id, items));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names whose order as full paths differs from a depth-first walk by name: `-`, `.` and
    /// `0` sort around `/`, and a subtree sorts after a sibling that extends its name.
    #[test]
    fn entries_come_out_in_path_order_with_lstat_data() {
        let t = tempfile::tempdir().unwrap();
        let dirs = ["a", "a/b", "a-b", "a/b/c", "a0", "ab", "z", "é"];
        let files = [
            "a.txt", "a/x", "a/b.py", "a/b/c/d", "a-b/y", "a0/z", "ab/q", "A", "é/ü", "a/b-c",
        ];
        for d in dirs {
            std::fs::create_dir_all(t.path().join(d)).unwrap();
        }
        for f in files {
            std::fs::write(t.path().join(f), f).unwrap();
        }
        std::os::unix::fs::symlink("a/x", t.path().join("link")).unwrap();
        std::fs::write(t.path().join("skip.pyc"), "").unwrap();
        let root = WalkRoot {
            abs: t.path().to_owned(),
            filter_rel: None,
            dest_rel: Some(RelPath::new("top").unwrap()),
        };
        let (walked, problems) = walk(&root, &Filter::new::<&str>(&[]).unwrap());
        assert!(problems.is_empty(), "{problems:?}");
        let paths: Vec<&str> = walked.iter().map(|w| w.path.as_str()).collect();
        let mut want: Vec<String> = dirs
            .iter()
            .chain(&files)
            .chain(&["link"])
            .map(|p| format!("top/{p}"))
            .collect();
        want.sort();
        assert_eq!(paths, want);
        for w in &walked {
            let meta = std::fs::symlink_metadata(&w.abs).unwrap();
            assert_eq!(
                w.found,
                classify(&w.abs, &meta).unwrap(),
                "{}",
                w.abs.display()
            );
        }
    }

    /// A directory swapped with a link to somewhere else, over and over, while the tree is
    /// walked: the walk must never list what is outside. (With subdirectories opened by path,
    /// about one walk in a hundred did.)
    #[test]
    fn a_directory_swapped_for_a_link_mid_walk_never_leads_outside() {
        use std::sync::atomic::AtomicBool;
        let t = tempfile::tempdir().unwrap();
        let (root, outside) = (t.path().join("root"), t.path().join("outside"));
        std::fs::create_dir_all(root.join("a/b/c")).unwrap();
        std::fs::create_dir_all(outside.join("b/c")).unwrap();
        std::fs::write(outside.join("b/c/SECRET"), b"x").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("x")).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let swapper = {
            let (root, stop) = (root.clone(), Arc::clone(&stop));
            std::thread::spawn(move || {
                use rustix::fs::{CWD, RenameFlags, renameat_with};
                while !stop.load(Ordering::Relaxed) {
                    renameat_with(
                        CWD,
                        root.join("a"),
                        CWD,
                        root.join("x"),
                        RenameFlags::EXCHANGE,
                    )
                    .unwrap();
                }
            })
        };
        let filter = Filter::new::<&str>(&[]).unwrap();
        let wr = WalkRoot {
            abs: root.clone(),
            filter_rel: None,
            dest_rel: None,
        };
        let end = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let mut escaped = 0;
        while std::time::Instant::now() < end {
            let (walked, _) = walk(&wr, &filter);
            escaped += walked.iter().filter(|w| w.path.name() == "SECRET").count();
        }
        stop.store(true, Ordering::Relaxed);
        swapper.join().unwrap();
        assert_eq!(escaped, 0, "the walk listed a file outside the root");
    }

    /// A tree whose directories are older than the racy window, so their listings count.
    fn settled_tree() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        for d in ["a/b/c", "d", "e/f", "g"] {
            std::fs::create_dir_all(t.path().join(d)).unwrap();
        }
        for f in [
            "a/1.py",
            "a/b/2.py",
            "a/b/c/3.txt",
            "d/4",
            "e/f/5",
            "e/x.pyc",
            "top",
        ] {
            std::fs::write(t.path().join(f), f).unwrap();
        }
        std::os::unix::fs::symlink("1.py", t.path().join("a/l")).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(120));
        t
    }

    fn root_of(t: &tempfile::TempDir) -> WalkRoot {
        WalkRoot {
            abs: t.path().to_owned(),
            filter_rel: None,
            dest_rel: None,
        }
    }

    fn same_entries(a: &[Walked], b: &[Walked]) {
        let view = |w: &[Walked]| -> Vec<(String, Found)> {
            w.iter()
                .map(|w| (w.path.to_string(), w.found.clone()))
                .collect()
        };
        assert_eq!(view(a), view(b));
    }

    /// A walk following `known` listings, checked to find what a plain walk finds.
    #[track_caller]
    fn listed_walk(root: &WalkRoot, filter: &Filter, known: &[Listing]) -> Walk {
        let w = walk_listed(root, filter, Some(known));
        same_entries(&w.entries, &walk(root, filter).0);
        w
    }

    #[test]
    fn known_names_are_reused_while_the_directories_are_unchanged() {
        let t = settled_tree();
        let (root, filter) = (root_of(&t), Filter::new::<&str>(&[]).unwrap());
        let first = walk_listed(&root, &filter, Some(&[]));
        assert_eq!((first.reused, first.changed), (0, true));
        // Every directory below the root: a, a/b, a/b/c, d, e, e/f, g.
        assert_eq!(first.listing.len(), 7);
        let second = walk_listed(&root, &filter, Some(std::slice::from_ref(&first.listing)));
        assert_eq!((second.reused, second.changed), (7, false));
        same_entries(&second.entries, &walk(&root, &filter).0);
        same_entries(&second.entries, &first.entries);
    }

    /// Adding, removing and renaming change a directory's stamp; so does putting its mtime back
    /// (the ctime moves). Each such directory is read again, and the walk matches a plain one.
    #[test]
    fn changed_directories_are_read_again() {
        let t = settled_tree();
        let (root, filter) = (root_of(&t), Filter::new::<&str>(&[]).unwrap());
        let known = vec![walk_listed(&root, &filter, Some(&[])).listing];
        let p = |s: &str| t.path().join(s);
        std::fs::write(p("a/b/new.py"), "n").unwrap();
        std::fs::remove_file(p("d/4")).unwrap();
        std::fs::rename(p("e/f/5"), p("e/f/6")).unwrap();
        // A name added to `g`, and `g`'s mtime set back to what it was.
        let before = std::fs::metadata(p("g")).unwrap().modified().unwrap();
        std::fs::write(p("g/hidden-by-mtime"), "h").unwrap();
        std::fs::File::open(p("g"))
            .unwrap()
            .set_modified(before)
            .unwrap();
        let w = listed_walk(&root, &filter, &known);
        assert!(
            w.entries
                .iter()
                .any(|e| e.path.as_str() == "g/hidden-by-mtime")
        );
        // a, a/b/c and e reused; a/b, d, e/f and g read.
        assert_eq!((w.reused, w.changed), (3, true));
        // The directories just changed are too recent to be recorded.
        let listed: Vec<&str> = w.listing.dirs.iter().map(|d| d.path.as_str()).collect();
        assert!(
            !listed.contains(&"a/b") && !listed.contains(&"g"),
            "{listed:?}"
        );
    }

    #[test]
    fn a_listing_taken_with_other_ignore_rules_or_root_is_not_used() {
        let t = settled_tree();
        let root = root_of(&t);
        let known = vec![walk_listed(&root, &Filter::new::<&str>(&[]).unwrap(), Some(&[])).listing];
        let filter = Filter::new(&["*.py"]).unwrap();
        let w = listed_walk(&root, &filter, &known);
        assert_eq!(w.reused, 0);
        let moved = WalkRoot {
            dest_rel: Some(RelPath::new("elsewhere").unwrap()),
            ..root.clone()
        };
        assert_eq!(
            walk_listed(&moved, &Filter::new::<&str>(&[]).unwrap(), Some(&known)).reused,
            0
        );
    }

    /// A listing is not trusted input: a name with `/`, a `..`, a name that is not there or a
    /// file listed as a directory makes the walk read the directory instead of following the
    /// listing anywhere.
    #[test]
    fn a_corrupt_listing_makes_the_walk_read_the_directory() {
        let t = settled_tree();
        std::fs::write(t.path().join("secret"), "s").unwrap();
        let (root, filter) = (root_of(&t), Filter::new::<&str>(&[]).unwrap());
        let mut listing = walk_listed(&root, &filter, Some(&[])).listing;
        for d in &mut listing.dirs {
            if d.path == "d" {
                d.names = "../secret\0".to_owned();
                d.dirs.clear();
            }
            if d.path == "g" {
                d.names = "ghost\0".to_owned();
            }
            if d.path == "a/b/c" {
                d.names = "..\0".to_owned();
                d.dirs = vec![0];
            }
            if d.path == "e/f" {
                // `5` is a file, listed as a directory.
                d.dirs = vec![0];
            }
        }
        let w = listed_walk(&root, &filter, &[listing]);
        // Only a, a/b and e were as listed.
        assert_eq!(w.reused, 3);
    }

    /// What a walk never records is refused in a listing too: a name the ignore rules drop
    /// (the agent would delete a protected `.env`), a name twice (a subdirectory named six times
    /// at each of seven levels made 6^7 visits), names out of order, a directory index past the
    /// names. Each makes the walk read the directory.
    #[test]
    fn a_listing_unlike_any_walk_records_is_not_followed() {
        let t = settled_tree();
        for (f, body) in [
            ("d/.env", "secret"),
            ("d/x.pyc", "c"),
            ("d/.git/config", "c"),
        ] {
            std::fs::create_dir_all(t.path().join(f).parent().unwrap()).unwrap();
            std::fs::write(t.path().join(f), body).unwrap();
        }
        std::fs::create_dir_all(t.path().join("deep/a/a/a/a/a/a/a")).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(120));
        let (root, filter) = (root_of(&t), Filter::new::<&str>(&[]).unwrap());
        let mut listing = walk_listed(&root, &filter, Some(&[])).listing;
        for d in &mut listing.dirs {
            match d.path.as_str() {
                "d" => (d.names, d.dirs) = (".env\0.git\x004\0x.pyc\0".to_owned(), vec![1]),
                "a/b" => d.names = "c\x002.py\0".to_owned(),
                "e/f" => d.dirs = vec![0, 1],
                p if p.starts_with("deep") => {
                    (d.names, d.dirs) = ("a\0".repeat(6), (0..6).collect());
                }
                _ => {}
            }
        }
        let w = listed_walk(&root, &filter, &[listing]);
        // Only a, a/b/c, e and g were as a walk lists them.
        assert_eq!(w.reused, 4);
    }

    /// Directories renamed, swapped and replaced between walks (a listing is keyed by path and
    /// checked by inode and times): every walk matches a plain one.
    #[test]
    fn renamed_swapped_and_replaced_directories_are_listed_right() {
        use rustix::fs::{CWD, RenameFlags, renameat_with};
        let t = settled_tree();
        let (root, filter) = (root_of(&t), Filter::new::<&str>(&[]).unwrap());
        let p = |s: &str| t.path().join(s);
        let known = vec![walk_listed(&root, &filter, Some(&[])).listing];
        // `a` moved to `z`, and a new `a` with other names given the old one's mtime.
        let mtime = std::fs::metadata(p("a")).unwrap().modified().unwrap();
        std::fs::rename(p("a"), p("z")).unwrap();
        std::fs::create_dir(p("a")).unwrap();
        std::fs::write(p("a/other"), "o").unwrap();
        std::fs::File::open(p("a"))
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        // `d` and `g` swapped; `e/f` replaced by a directory moved in.
        renameat_with(CWD, p("d"), CWD, p("g"), RenameFlags::EXCHANGE).unwrap();
        std::fs::create_dir(p("moved")).unwrap();
        std::fs::write(p("moved/new"), "n").unwrap();
        std::fs::remove_dir_all(p("e/f")).unwrap();
        std::fs::rename(p("moved"), p("e/f")).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(120));
        let w = listed_walk(&root, &filter, &known);
        // And swapped back, against the listing just recorded.
        renameat_with(CWD, p("d"), CWD, p("g"), RenameFlags::EXCHANGE).unwrap();
        listed_walk(&root, &filter, &[w.listing]);
    }

    /// Names sorting around `/` (` `, `!`, `-`, `.`, and `é` above it) beside directories
    /// whose names are prefixes of them are recorded in the order a listing must have: a
    /// second walk reuses every directory, also below a destination and a project prefix with
    /// `/` patterns.
    #[test]
    fn names_sorting_around_a_slash_are_recorded_in_an_order_the_next_walk_accepts() {
        let t = tempfile::tempdir().unwrap();
        let dirs = [
            "a",
            "a/a",
            "a/a-",
            "a!",
            "a b",
            "a-x",
            "a.egg-info",
            "a/a.d",
            "a/a a",
            "é",
            "é/é!",
            "pkg",
            "pkg.egg-info",
            "pkg/sub",
            "pkg/sub-2",
            "pkg/sub/x",
            "0",
            "0/0.0",
        ];
        for d in dirs {
            std::fs::create_dir_all(t.path().join(d)).unwrap();
        }
        for f in [
            "a-",
            "a.",
            "a ",
            "a!b",
            "a.py",
            "a/a.py",
            "a/a!",
            "a/a-/f",
            "pkg.py",
            "pkg-1",
            "pkg/sub.py",
            "pkg/sub!",
            "pkg/sub ",
            "pkg/sub/x.txt",
            "0.0",
            "é-",
            "éa",
            "0/0",
        ] {
            std::fs::write(t.path().join(f), f).unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(120));
        let (root, filter) = (root_of(&t), Filter::new::<&str>(&[]).unwrap());
        let first = walk_listed(&root, &filter, Some(&[]));
        assert_eq!(first.listing.len(), dirs.len());
        let second = walk_listed(&root, &filter, Some(std::slice::from_ref(&first.listing)));
        same_entries(&second.entries, &walk(&root, &filter).0);
        assert_eq!((second.reused, second.changed), (dirs.len(), false));
        // The same below a destination prefix and a project prefix, with `/` patterns.
        let root = WalkRoot {
            abs: t.path().to_owned(),
            filter_rel: Some(RelPath::new("proj/sub").unwrap()),
            dest_rel: Some(RelPath::new("dst").unwrap()),
        };
        let filter = Filter::new(&["proj/sub/pkg/sub/x", "a/a-", "/proj/sub/0/0.0"]).unwrap();
        let first = walk_listed(&root, &filter, Some(&[]));
        let kept = first.listing.len();
        assert!(kept >= dirs.len() - 3, "{kept}");
        let second = walk_listed(&root, &filter, Some(std::slice::from_ref(&first.listing)));
        same_entries(&second.entries, &walk(&root, &filter).0);
        assert_eq!((second.reused, second.changed), (kept, false));
    }
}
