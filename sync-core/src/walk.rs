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
    let ctx = Ctx {
        root,
        filter,
        next_id: AtomicUsize::new(1),
        listed: Mutex::new(Vec::new()),
        problems: Mutex::new(Vec::new()),
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
    (out, ctx.problems.into_inner().unwrap())
}

struct Ctx<'a> {
    root: &'a WalkRoot,
    filter: &'a Filter,
    /// The id the next directory task gets (the root's is 0).
    next_id: AtomicUsize,
    /// Each directory's items, sorted, by task id.
    listed: Mutex<Vec<(usize, Vec<Item>)>>,
    problems: Mutex<Vec<Problem>>,
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

/// Lists directory `dir` (task `id`), whose path in the destination is `sub` (`None`: the
/// top), queueing a task for each subdirectory. A subdirectory is `name` in the directory open
/// as `parent`: opened relative to it, without following a link, so no path is resolved again
/// and a directory swapped for a link meanwhile (itself or any directory above it) cannot lead
/// the walk out of the root. The root itself is opened by path, following a link.
fn visit_dir<'s>(
    s: &rayon::Scope<'s>,
    ctx: &'s Ctx<'s>,
    id: usize,
    dir: PathBuf,
    sub: Option<RelPath>,
    parent: Option<(Arc<OwnedFd>, CString)>,
) {
    use rustix::fs::{FileType, Mode, OFlags};
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let opened = match &parent {
        None => rustix::fs::open(&dir, flags, Mode::empty()),
        Some((fd, name)) => rustix::fs::openat(fd, name, flags | OFlags::NOFOLLOW, Mode::empty()),
    };
    // The parent stays open only until its subdirectories are.
    let is_root = parent.is_none();
    drop(parent);
    let fd = match opened {
        Ok(fd) => Arc::new(fd),
        Err(e) => {
            use rustix::io::Errno;
            // Gone, or replaced by a link or a file since its parent was read.
            let raced = e == Errno::NOENT || (!is_root && matches!(e, Errno::LOOP | Errno::NOTDIR));
            if !raced {
                let e = std::io::Error::from(e);
                ctx.problem(&dir, format!("cannot read directory: {e}"));
            }
            return;
        }
    };
    let dest_prefix = match &sub {
        Some(p) => Some(p),
        None => ctx.root.dest_rel.as_ref(),
    };
    let mut items = Vec::new();
    let mut buf = [MaybeUninit::<u8>::uninit(); 32 << 10];
    let mut entries = rustix::fs::RawDir::new(&fd, &mut buf);
    while let Some(ent) = entries.next() {
        let ent = match ent {
            Ok(e) => e,
            Err(e) => {
                let e = std::io::Error::from(e);
                ctx.problem(&dir, format!("cannot read directory: {e}"));
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
            ctx.problem(&abs, "name is not valid UTF-8; skipped".to_owned());
            continue;
        };
        // `d_type` says whether it is a directory, except on file systems that leave it
        // unknown: then the stat decides, before the ignore rules look at it.
        let mut meta = None;
        let is_dir = match ent.file_type() {
            FileType::Unknown => match stat_at(&fd, cname) {
                Ok(m) => {
                    let d = FileType::from_raw_mode(m.mode) == FileType::Directory;
                    meta = Some(m);
                    d
                }
                Err(rustix::io::Errno::NOENT) => continue,
                Err(e) => {
                    let e = std::io::Error::from(e);
                    ctx.problem(&dir.join(name), format!("cannot stat: {e}"));
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
                ctx.problem(&dir.join(name), format!("{e}; skipped"));
                continue;
            }
        };
        if ctx.filter.has_path_patterns() {
            // The path below the root, then as seen from the project root.
            let rel = match &ctx.root.dest_rel {
                Some(d) => &path.as_str()[d.as_str().len() + 1..],
                None => path.as_str(),
            };
            let ignored = match &ctx.root.filter_rel {
                // The name rules were applied above; only the `/` ones are left.
                Some(prefix) => ctx
                    .filter
                    .is_path_ignored(&format!("{prefix}/{rel}"), is_dir),
                None => ctx.filter.is_path_ignored(rel, is_dir),
            };
            if ignored {
                continue;
            }
        }
        let abs = dir.join(name);
        let meta = match meta.map_or_else(|| stat_at(&fd, cname), Ok) {
            Ok(m) => m,
            // Vanished between readdir and stat: as if it was never there.
            Err(rustix::io::Errno::NOENT) => continue,
            Err(e) => {
                let e = std::io::Error::from(e);
                ctx.problem(&abs, format!("cannot stat: {e}"));
                continue;
            }
        };
        match classify_at(&fd, cname, &meta) {
            Ok(found) => {
                if matches!(found, Found::Dir { .. }) {
                    let child = ctx.next_id.fetch_add(1, Ordering::Relaxed);
                    let (abs, rel) = (abs.clone(), path.clone());
                    let at = (Arc::clone(&fd), cname.to_owned());
                    s.spawn(move |s| visit_dir(s, ctx, child, abs, Some(rel), Some(at)));
                    items.push(Item::Sub {
                        name: name.into(),
                        id: child,
                    });
                }
                let at = path.as_str().len() - name.len();
                items.push(Item::Entry(Walked { path, abs, found }, at));
            }
            Err(msg) => ctx.problem(&abs, msg),
        }
    }
    drop(fd);
    items.sort_unstable_by(|a, b| key_cmp(a.key(), b.key()));
    // A name listed twice (an entry renamed while the directory was read may be): once.
    items.dedup_by(|b, a| key_cmp(a.key(), b.key()).is_eq());
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
}
