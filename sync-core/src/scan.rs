//! The controller's scan: the sync roots walked once, in parallel, hashed once (with the hash
//! cache), into one [`Manifest`] shared by every target, plus the local path of each file.
//!
//! Absolute symlinks that point inside a root are rewritten as relative links so they keep
//! pointing at the same file in the destination; ones that point elsewhere are kept verbatim and
//! reported.

use std::path::{Component, Path, PathBuf};

use rayon::prelude::*;

use crate::filter::Filter;
use crate::hash::{Cv, HashCache, hash_file_leaves, now_ns};
use crate::manifest::{Entry, Kind, Manifest};
use crate::path::RelPath;
use crate::walk::{Found, Problem, WalkRoot, Walked, classify, walk_listed};

/// A scanned source tree.
#[derive(Debug, Default)]
pub struct SourceTree {
    pub manifest: Manifest,
    /// `manifest.digest()`, computed once.
    pub digest: crate::manifest::Hash,
    /// The manifest's encoded entries, for its directory summaries.
    pub framed: crate::manifest::Framed,
    /// For each manifest entry (same index), where it is on this machine.
    pub sources: Vec<PathBuf>,
    /// Warnings and skipped entries.
    pub problems: Vec<Problem>,
    /// How many files were read to hash them (the rest came from the cache).
    pub hashed_files: usize,
    pub hashed_bytes: u64,
    /// Directories not read again, because the last scan's listing vouched for their names.
    pub reused_dirs: usize,
    /// The leaves' chaining values of the big files this scan read (see [`crate::hash::LEAF`]),
    /// by path.
    pub leaves: rustc_hash::FxHashMap<RelPath, Vec<Cv>>,
}

/// Why a scan could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("cannot read sync root `{path}`")]
    Root {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("sync root `{path}` is a {what}, not a file or directory")]
    RootKind { path: PathBuf, what: String },
    #[error("sync root `{path}` is a file, and a file root needs a name in the destination")]
    FileRootAtTop { path: PathBuf },
}

/// Scans `roots` (each in its own place in the destination), applying `filter`, hashing files
/// not found in `cache`. `project_root` supplies the modes of the directories above a root.
///
/// # Errors
/// When a root itself cannot be read; problems below a root are collected instead.
pub fn scan(
    project_root: &Path,
    roots: &[WalkRoot],
    filter: &Filter,
    cache: &mut HashCache,
) -> Result<SourceTree, ScanError> {
    let started = now_ns();
    let mut walked: Vec<Walked> = Vec::new();
    let mut problems = Vec::new();
    let (mut listings, mut listings_changed, mut reused_dirs) = (Vec::new(), false, 0);
    for root in roots {
        let meta = std::fs::symlink_metadata(&root.abs).map_err(|source| ScanError::Root {
            path: root.abs.clone(),
            source,
        })?;
        let found = classify(&root.abs, &meta).map_err(|what| ScanError::RootKind {
            path: root.abs.clone(),
            what,
        })?;
        if let Some(dest) = &root.dest_rel {
            for anc in dest.ancestors() {
                let mode = std::fs::metadata(anc.to_native(project_root))
                    .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777)
                    .unwrap_or(0o755);
                walked.push(Walked {
                    path: anc.clone(),
                    abs: anc.to_native(project_root),
                    found: Found::Dir { mode },
                });
            }
            walked.push(Walked {
                path: dest.clone(),
                abs: root.abs.clone(),
                found: found.clone(),
            });
        } else if !matches!(found, Found::Dir { .. }) {
            return Err(ScanError::FileRootAtTop {
                path: root.abs.clone(),
            });
        }
        if matches!(found, Found::Dir { .. }) {
            let mut w = walk_listed(root, filter, cache.listings());
            walked.append(&mut w.entries);
            problems.append(&mut w.problems);
            reused_dirs += w.reused;
            listings_changed |= w.changed;
            listings.push(w.listing);
        }
    }
    if cache.listings().is_some() {
        cache.set_listings(listings, listings_changed);
    }
    // Each walk is sorted already: this only merges the roots (and their ancestors).
    walked.sort_by(|a, b| a.path.cmp(&b.path));
    walked.dedup_by(|b, a| a.path == b.path);

    // What the cache knows, in walk order: the order it recorded them in, so each look-up is
    // mostly a comparison with its next record. Then hash the rest, in parallel.
    let cached: Vec<Option<crate::manifest::Hash>> = walked
        .iter()
        .map(|w| match &w.found {
            Found::File { stamp, .. } => cache.lookup(stamp),
            _ => None,
        })
        .collect();
    let todo: Vec<usize> = walked
        .iter()
        .zip(&cached)
        .enumerate()
        .filter_map(|(i, (w, c))| {
            (matches!(w.found, Found::File { .. }) && c.is_none()).then_some(i)
        })
        .collect();
    type Hashed = std::io::Result<(crate::manifest::Hash, Vec<Cv>)>;
    let fresh: Vec<(usize, Hashed)> = todo
        .par_iter()
        .map(|&i| {
            let w = &walked[i];
            let size = match &w.found {
                Found::File { stamp, .. } => stamp.size,
                _ => 0,
            };
            (i, hash_file_leaves(&w.abs, size))
        })
        .collect();
    let hashed_files = fresh.len();
    let mut hashed_bytes = 0;
    // In index order, as `todo` was.
    let mut fresh = fresh.into_iter().peekable();

    let link_roots: Vec<(&Path, Option<&RelPath>)> = roots
        .iter()
        .map(|r| (r.abs.as_path(), r.dest_rel.as_ref()))
        .collect();
    let mut entries = Vec::with_capacity(walked.len());
    let mut sources = Vec::with_capacity(walked.len());
    // The walk's paths lie scattered over the heap (threads made them, among other
    // allocations); the manifest gets copies made one after another, which every later pass
    // over it reads several times faster. The originals are freed afterwards: freed one by
    // one, each would make room for its own copy.
    let mut walked_paths = Vec::with_capacity(walked.len());
    let mut leaves = rustc_hash::FxHashMap::default();
    for (i, w) in walked.into_iter().enumerate() {
        let kind = match w.found {
            Found::Dir { mode } => Kind::Dir { mode },
            Found::File { stamp, mode } => {
                let hash = match fresh.next_if(|(j, _)| *j == i).map(|(_, h)| h) {
                    Some(Ok((h, cvs))) => {
                        if !cvs.is_empty() {
                            leaves.insert(w.path.clone(), cvs);
                        }
                        hashed_bytes += stamp.size;
                        cache.record(stamp, h, started);
                        h
                    }
                    Some(Err(e)) => {
                        if e.kind() != std::io::ErrorKind::NotFound {
                            problems.push(Problem::new(
                                w.abs.display().to_string(),
                                format!("cannot read: {e}"),
                            ));
                        }
                        continue;
                    }
                    None => {
                        let h = cached[i].expect("looked up before");
                        cache.record(stamp, h, started);
                        h
                    }
                };
                Kind::File {
                    size: stamp.size,
                    mtime_ns: stamp.mtime_ns,
                    mode,
                    hash,
                }
            }
            Found::Symlink { target } => {
                let target = if Path::new(&target).is_absolute() {
                    match rebase_link(&w.path, Path::new(&target), &link_roots) {
                        Some(rel) => rel,
                        None => {
                            problems.push(Problem::new(
                                w.abs.display().to_string(),
                                format!(
                                    "absolute symlink to `{target}` points outside the synced \
                                     roots; copied as it is"
                                ),
                            ));
                            target
                        }
                    }
                } else {
                    target
                };
                Kind::Symlink { target }
            }
        };
        entries.push(Entry {
            path: w.path.clone(),
            kind,
        });
        walked_paths.push(w.path);
        sources.push(w.abs);
    }
    drop(walked_paths);
    let manifest = Manifest::from_unsorted(entries);
    let framed = manifest.framed();
    Ok(SourceTree {
        digest: framed.digest(),
        framed,
        manifest,
        sources,
        problems,
        hashed_files,
        hashed_bytes,
        reused_dirs,
        leaves,
    })
}

/// Removes `.` and resolves `..` lexically (no file-system access).
pub fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// The relative link text that makes the link at `link` (a destination path) point at the
/// destination copy of the absolute `target`, if `target` is inside one of `roots`.
fn rebase_link(
    link: &RelPath,
    target: &Path,
    roots: &[(&Path, Option<&RelPath>)],
) -> Option<String> {
    let candidates = [Some(normalize(target)), std::fs::canonicalize(target).ok()];
    for t in candidates.into_iter().flatten() {
        for (abs, dest) in roots {
            let Ok(sub) = t.strip_prefix(abs) else {
                continue;
            };
            let sub = sub.to_str()?;
            let mut to: Vec<&str> = dest
                .map(|d| d.as_str().split('/').collect())
                .unwrap_or_default();
            to.extend(sub.split('/').filter(|c| !c.is_empty()));
            let parent = link.parent();
            let from: Vec<&str> = parent
                .as_ref()
                .map(|p| p.as_str().split('/').collect())
                .unwrap_or_default();
            let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
            let mut parts = vec![".."; from.len() - common];
            parts.extend(&to[common..]);
            return Some(if parts.is_empty() {
                ".".to_owned()
            } else {
                parts.join("/")
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_links_inside_a_root_become_relative() {
        let root = Path::new("/p/pkg");
        let dest = RelPath::new("pkg").unwrap();
        let roots = [(root, Some(&dest))];
        let link = RelPath::new("pkg/sub/link").unwrap();
        let cases = [
            ("/p/pkg/data.txt", Some("../data.txt")),
            ("/p/pkg/sub/x", Some("x")),
            ("/p/pkg/sub/../sub/y/z", Some("y/z")),
            ("/p/pkg", Some("..")),
            ("/p/pkg/sub", Some(".")),
            ("/p/other", None),
            ("/etc/passwd", None),
        ];
        for (target, want) in cases {
            assert_eq!(
                rebase_link(&link, Path::new(target), &roots).as_deref(),
                want,
                "{target}"
            );
        }
        let top = [(Path::new("/p"), None)];
        let link = RelPath::new("l").unwrap();
        assert_eq!(
            rebase_link(&link, Path::new("/p/a/b"), &top).as_deref(),
            Some("a/b")
        );
    }
}
