//! Planning: the difference between the destination as it is ([`Current`]) and the manifest it
//! must match, as a list of actions. Pure; nothing touches the disk here.

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use crate::manifest::{Entry, Hash, Kind, Manifest};
use crate::path::RelPath;

/// How a wanted file's content is obtained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// From the controller, whole.
    Whole,
    /// From the controller, as a delta against the old file at the same path.
    Delta,
    /// By copying a file the destination already has with the same content.
    Local(RelPath),
}

/// Everything a sync does to the destination, in the order it is done.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Actions {
    /// Files with the right content copied from elsewhere in the destination (`index`, from).
    /// Done first, before anything is deleted.
    pub copies: Vec<(usize, RelPath)>,
    /// Entries to remove, deepest first: extras, and entries whose type changes.
    pub removals: Vec<(RelPath, bool)>,
    /// Manifest indices of directories to create, parents first.
    pub mkdirs: Vec<usize>,
    /// Manifest indices of symlinks to (re)write.
    pub links: Vec<usize>,
    /// Manifest indices of files whose content is right but whose mode or mtime is not.
    pub metadata: Vec<usize>,
    /// Manifest indices of files to transfer.
    pub transfers: Vec<(usize, Source)>,
    /// Manifest indices of directories whose mode must be set at the end.
    pub dir_modes: Vec<usize>,
    /// Extras that are only removed, for reports.
    pub deleted: Vec<RelPath>,
}

/// Compares `current` with `want`. Changed files of at least `delta_min` bytes (old and new) are
/// fetched as deltas, smaller ones whole.
pub fn plan(current: &Manifest, want: &Manifest, delta_min: u64) -> Actions {
    let mut a = Actions::default();
    let (cur, wnt) = (current.entries(), want.entries());
    // Old files with the content of a wanted file that is new or changed, to copy locally.
    // Usually few files change: only their hashes are looked for.
    let mut wanted: HashSet<&Hash> = HashSet::default();
    let mut i = 0;
    for w in wnt {
        if let Kind::File { hash, size, .. } = &w.kind
            && *size > 0
        {
            while i < cur.len() && cur[i].path < w.path {
                i += 1;
            }
            if cur
                .get(i)
                .is_none_or(|c| c.path != w.path || c.kind != w.kind)
            {
                wanted.insert(hash);
            }
        }
    }
    let by_hash: HashMap<&Hash, &RelPath> = if wanted.is_empty() {
        HashMap::default()
    } else {
        cur.iter()
            .filter_map(|e| match &e.kind {
                Kind::File { hash, size, .. } if *size > 0 && wanted.contains(hash) => {
                    Some((hash, &e.path))
                }
                _ => None,
            })
            .collect()
    };
    let (mut i, mut j) = (0, 0);
    while i < cur.len() || j < wnt.len() {
        let order = match (cur.get(i), wnt.get(j)) {
            (Some(c), Some(w)) => c.path.cmp(&w.path),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, _) => std::cmp::Ordering::Greater,
        };
        match order {
            std::cmp::Ordering::Less => {
                let c = &cur[i];
                a.removals.push((c.path.clone(), c.kind.is_dir()));
                a.deleted.push(c.path.clone());
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                create(&mut a, j, &wnt[j], &by_hash);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                let (c, w) = (&cur[i], &wnt[j]);
                if !c.kind.same_type(&w.kind) {
                    a.removals.push((c.path.clone(), c.kind.is_dir()));
                    create(&mut a, j, w, &by_hash);
                } else {
                    update(&mut a, j, c, w, &by_hash, delta_min);
                }
                i += 1;
                j += 1;
            }
        }
    }
    // Children sort after their parents, so reverse order removes children first.
    a.removals.sort_by(|x, y| y.0.cmp(&x.0));
    a.deleted.sort();
    a
}

fn create(a: &mut Actions, j: usize, w: &Entry, by_hash: &HashMap<&Hash, &RelPath>) {
    match &w.kind {
        Kind::Dir { .. } => {
            a.mkdirs.push(j);
            a.dir_modes.push(j);
        }
        Kind::Symlink { .. } => a.links.push(j),
        Kind::File { hash, size, .. } => match by_hash.get(hash) {
            Some(from) if *size > 0 => a.copies.push((j, (*from).clone())),
            _ => a.transfers.push((j, Source::Whole)),
        },
    }
}

fn update(
    a: &mut Actions,
    j: usize,
    c: &Entry,
    w: &Entry,
    by_hash: &HashMap<&Hash, &RelPath>,
    delta_min: u64,
) {
    match (&c.kind, &w.kind) {
        (Kind::Dir { mode: m1 }, Kind::Dir { mode: m2 }) => {
            if m1 != m2 {
                a.dir_modes.push(j);
            }
        }
        (Kind::Symlink { target: t1 }, Kind::Symlink { target: t2 }) => {
            if t1 != t2 {
                a.links.push(j);
            }
        }
        (
            Kind::File {
                size: s1,
                mtime_ns: t1,
                mode: m1,
                hash: h1,
            },
            Kind::File {
                size: s2,
                mtime_ns: t2,
                mode: m2,
                hash: h2,
            },
        ) => {
            if h1 == h2 && s1 == s2 {
                if t1 != t2 || m1 != m2 {
                    a.metadata.push(j);
                }
            } else if let Some(from) = by_hash.get(h2).filter(|_| *s2 > 0) {
                a.copies.push((j, (*from).clone()));
            } else if *s1 >= delta_min && *s2 >= delta_min {
                a.transfers.push((j, Source::Delta));
            } else {
                a.transfers.push((j, Source::Whole));
            }
        }
        _ => unreachable!("same_type checked by the caller"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(p: &str, kind: Kind) -> Entry {
        Entry {
            path: RelPath::new(p).unwrap(),
            kind,
        }
    }
    fn d(p: &str) -> Entry {
        e(p, Kind::Dir { mode: 0o755 })
    }
    fn f(p: &str, size: u64, h: u8) -> Entry {
        e(
            p,
            Kind::File {
                size,
                mtime_ns: 5,
                mode: 0o644,
                hash: [h; 32],
            },
        )
    }

    #[test]
    fn plans_each_kind_of_change() {
        let current = Manifest::from_unsorted(vec![
            d("a"),
            f("a/same", 1, 1),
            f("a/changed", 10, 2),
            f("a/big", 1 << 20, 3),
            f("gone", 1, 4),
            d("was_dir"),
            f("was_dir/x", 1, 5),
            f("renamed_from", 5, 6),
        ]);
        let want = Manifest::from_unsorted(vec![
            d("a"),
            f("a/same", 1, 1),
            f("a/changed", 11, 9),
            f("a/big", (1 << 20) + 1, 8),
            f("was_dir", 1, 7),
            f("renamed_to", 5, 6),
            d("new"),
        ]);
        let a = plan(&current, &want, crate::delta::DELTA_MIN_SIZE);
        let idx = |p: &str| want.position(&RelPath::new(p).unwrap()).unwrap();
        assert_eq!(
            a.copies,
            vec![(idx("renamed_to"), RelPath::new("renamed_from").unwrap())]
        );
        assert_eq!(
            a.transfers,
            vec![
                (idx("a/big"), Source::Delta),
                (idx("a/changed"), Source::Whole),
                (idx("was_dir"), Source::Whole)
            ]
        );
        let removed: Vec<&str> = a.removals.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(removed, ["was_dir/x", "was_dir", "renamed_from", "gone"]);
        assert_eq!(a.mkdirs, vec![idx("new")]);
        let deleted: Vec<&str> = a.deleted.iter().map(|p| p.as_str()).collect();
        assert_eq!(deleted, ["gone", "renamed_from", "was_dir/x"]);
    }

    #[test]
    fn identical_trees_plan_nothing() {
        let m = Manifest::from_unsorted(vec![d("a"), f("a/x", 3, 1)]);
        assert_eq!(plan(&m, &m, 1), Actions::default());
    }
}
