//! Walking a tree in parallel: every entry below a root with its `lstat` data, ignore rules
//! applied while walking so ignored directories are never entered.
//!
//! Links are never followed. Entries that cannot be mirrored (sockets, FIFOs, devices, names that
//! are not UTF-8, unreadable directories) are skipped and reported as [`Problem`]s, not fatal.

use std::fs::Metadata;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

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
    let ft = meta.file_type();
    let mode = meta.mode() & 0o7777;
    if ft.is_file() {
        Ok(Found::File {
            stamp: Stamp::of(meta),
            mode,
        })
    } else if ft.is_dir() {
        Ok(Found::Dir { mode })
    } else if ft.is_symlink() {
        let target = std::fs::read_link(abs).map_err(|e| format!("cannot read link: {e}"))?;
        match target.into_os_string().into_string() {
            Ok(t) if !t.is_empty() && !t.contains('\0') => Ok(Found::Symlink { target: t }),
            _ => Err("symlink target is not valid UTF-8; skipped".to_owned()),
        }
    } else {
        let what = if ft.is_fifo() {
            "FIFO"
        } else if ft.is_socket() {
            "socket"
        } else if ft.is_block_device() || ft.is_char_device() {
            "device"
        } else {
            "special file"
        };
        Err(format!(
            "{what} skipped (only files, directories and symlinks are synced)"
        ))
    }
}

/// Walks everything below `root` (not the root itself), in parallel, applying `filter`.
/// Returns the entries in no particular order.
pub fn walk(root: &WalkRoot, filter: &Filter, threads: usize) -> (Vec<Walked>, Vec<Problem>) {
    let shared = Shared {
        root,
        filter,
        out: Mutex::new(Vec::new()),
        problems: Mutex::new(Vec::new()),
    };
    ignore::WalkBuilder::new(&root.abs)
        .standard_filters(false)
        .follow_links(false)
        .threads(threads)
        .build_parallel()
        .visit(&mut Builder(&shared));
    (
        shared.out.into_inner().unwrap(),
        shared.problems.into_inner().unwrap(),
    )
}

struct Shared<'a> {
    root: &'a WalkRoot,
    filter: &'a Filter,
    out: Mutex<Vec<Walked>>,
    problems: Mutex<Vec<Problem>>,
}

struct Builder<'a, 'b>(&'b Shared<'a>);

impl<'s, 'a: 's, 'b: 's> ignore::ParallelVisitorBuilder<'s> for Builder<'a, 'b> {
    fn build(&mut self) -> Box<dyn ignore::ParallelVisitor + 's> {
        Box::new(Visitor {
            shared: self.0,
            local: Vec::new(),
        })
    }
}

/// One walker thread's visitor; batches entries locally to keep the lock cold.
struct Visitor<'a, 'b> {
    shared: &'b Shared<'a>,
    local: Vec<Walked>,
}

impl Drop for Visitor<'_, '_> {
    fn drop(&mut self) {
        if let Ok(mut out) = self.shared.out.lock() {
            out.append(&mut self.local);
        }
    }
}

impl Visitor<'_, '_> {
    fn problem(&self, path: &Path, msg: String) {
        self.shared
            .problems
            .lock()
            .unwrap()
            .push(Problem::new(path.display().to_string(), msg));
    }
}

impl ignore::ParallelVisitor for Visitor<'_, '_> {
    fn visit(&mut self, res: Result<ignore::DirEntry, ignore::Error>) -> ignore::WalkState {
        use ignore::WalkState::{Continue, Skip};
        let root = self.shared.root;
        let entry = match res {
            Ok(e) => e,
            Err(e) => {
                let path = match &e {
                    ignore::Error::WithPath { path, .. } => path.clone(),
                    _ => root.abs.clone(),
                };
                self.problem(&path, format!("cannot read: {e}"));
                return Continue;
            }
        };
        if entry.depth() == 0 {
            return Continue;
        }
        let abs = entry.path();
        let sub = match abs.strip_prefix(&root.abs).map(RelPath::from_path) {
            Ok(Ok(p)) => p,
            _ => {
                self.problem(abs, "name is not valid UTF-8; skipped".to_owned());
                return Skip;
            }
        };
        let is_dir = entry.file_type().is_some_and(|t| t.is_dir());
        if self
            .shared
            .filter
            .is_ignored(&sub.under(root.filter_rel.as_ref()), is_dir)
        {
            return Skip;
        }
        let meta = match entry.metadata() {
            Ok(m) => m,
            Err(e) => {
                // Vanished between readdir and lstat: as if it was never there.
                if e.io_error().map(|e| e.kind()) != Some(std::io::ErrorKind::NotFound) {
                    self.problem(abs, format!("cannot stat: {e}"));
                }
                return Skip;
            }
        };
        match classify(abs, &meta) {
            Ok(found) => {
                self.local.push(Walked {
                    path: sub.under(root.dest_rel.as_ref()),
                    abs: abs.to_path_buf(),
                    found,
                });
                if self.local.len() >= 512 {
                    self.shared.out.lock().unwrap().append(&mut self.local);
                }
            }
            Err(msg) => self.problem(abs, msg),
        }
        Continue
    }
}
