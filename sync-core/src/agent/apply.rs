//! Carrying out a plan: structural changes first (copies staged, removals, directories, links,
//! metadata), then file data from the controller, installed by a small pool of writer threads,
//! then directory modes and the saved state.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use rayon::prelude::*;

use super::plan::{Actions, Source, plan};
use super::state::{self, Current};
use super::{AgentError, AgentOptions, dry_outcome};
use crate::delta::{self, DELTA_CHUNK};
use crate::hash::{Cv, LEAF};
use crate::manifest::{Entry, Kind, Manifest, Stamp};
use crate::path::RelPath;
use crate::proto::{Begin, Message, Outcome, Plan, ProtoError, Want, read_frame, write_frame};
use crate::stage::{
    FileAttrs, Finished, Installed, STATE_DIR, StageError, Staged, Stager, system_time,
};
use crate::walk::Problem;

/// Files for the writer pool, as `(manifest index, what to put there)`.
type Batch = Vec<(usize, Payload)>;

/// What a writer puts in place: bytes the controller sent, or a source file of a controller on
/// this machine, read here (see [`Begin::local_sources`]).
enum Payload {
    Bytes(Vec<u8>),
    Source(PathBuf),
}

/// Wants per `Want` frame; signatures are computed a batch at a time.
const WANT_BATCH: usize = 512;

fn attrs(e: &Entry) -> Option<FileAttrs> {
    match e.kind {
        Kind::File {
            size,
            mtime_ns,
            mode,
            hash,
        } => Some(FileAttrs {
            size,
            mtime_ns,
            mode,
            hash,
        }),
        _ => None,
    }
}

/// The regular files of `m` for the saved state, leaving out `failed` indices. Files of
/// `m` that `current` has unchanged and this sync did not touch (`touched[i]` false, or
/// `touched` empty) keep their known stamps.
pub(super) fn file_list<'a>(
    m: &'a Manifest,
    failed: &HashSet<usize>,
    current: &'a Current,
    touched: &[bool],
    written: &'a HashMap<usize, Installed>,
) -> Vec<state::SaveFile<'a>> {
    // Both manifests are sorted by path: walk them side by side instead of searching.
    let cur = current.manifest.entries();
    let mut k = 0;
    let mut out = Vec::with_capacity(m.len());
    for (i, e) in m.entries().iter().enumerate() {
        let Kind::File { size, hash, .. } = e.kind else {
            continue;
        };
        while k < cur.len() && cur[k].path < e.path {
            k += 1;
        }
        if !failed.is_empty() && failed.contains(&i) {
            continue;
        }
        let (stamp, leaves) = if touched.get(i).copied().unwrap_or(false) {
            // Leaves depend on the content only: a file whose content this sync did not
            // change (new metadata) keeps its old ones.
            let same_content = || {
                cur.get(k)
                    .filter(|c| c.path == e.path)
                    .filter(|c| matches!(c.kind, Kind::File { hash: h, .. } if h == hash))
                    .and_then(|_| current.leaves.get(&k))
            };
            let done = written.get(&i);
            (
                done.and_then(|d| d.stamp)
                    .map_or(state::SaveStamp::Uncertified, state::SaveStamp::Written),
                done.map(|d| &d.leaves)
                    .filter(|l| !l.is_empty())
                    .or_else(same_content),
            )
        } else {
            match cur
                .get(k)
                .filter(|c| c.path == e.path && c.kind == e.kind)
                .and_then(|_| current.stamps.get(k).copied().flatten())
            {
                Some(s) => (state::SaveStamp::Certified(s), current.leaves.get(&k)),
                None => (state::SaveStamp::Uncertified, None),
            }
        };
        out.push(state::SaveFile {
            leaves: leaves.map_or(&[], Vec::as_slice),
            path: &e.path,
            size,
            hash,
            stamp,
        });
    }
    out
}

/// Shared by the receiving thread and the writer pool.
struct Ctx<'a> {
    dest: &'a Path,
    want: &'a Manifest,
    /// The ignore rules: what they match on the worker is protected.
    filter: crate::filter::Filter,
    stager: Stager,
    problems: Mutex<Vec<Problem>>,
    failed: Mutex<HashSet<usize>>,
    files_written: AtomicU64,
    bytes_written: AtomicU64,
    /// Files asked for by their leaves, and their old versions' (by manifest index).
    old_leaves: HashMap<usize, OldLeaves>,
    /// The files this sync put in place or changed, by manifest index, for the saved state.
    written: Mutex<HashMap<usize, Installed>>,
    /// Source paths are accepted: the controller said it is on this machine, and this agent
    /// does not serve a session root.
    local_sources: bool,
}

/// The old version of a file asked for by its leaves: its certified stamp (the leaves hold
/// only while it is unchanged), size and leaves.
struct OldLeaves {
    stamp: Stamp,
    size: u64,
    cvs: Vec<Cv>,
}

impl Ctx<'_> {
    fn problem(&self, index: usize, msg: String) {
        let path = self.want.entries()[index].path.to_string();
        self.problems.lock().unwrap().push(Problem::new(path, msg));
        self.failed.lock().unwrap().insert(index);
    }

    fn path_of(&self, index: usize) -> PathBuf {
        self.want.entries()[index].path.to_native(self.dest)
    }

    fn installed(&self, bytes: u64) {
        self.files_written.fetch_add(1, Ordering::Relaxed);
        self.bytes_written.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Keeps what the saved state needs of file `index`, which this sync put in place.
    fn keep(&self, index: usize, done: Installed) {
        self.written.lock().unwrap().insert(index, done);
    }

    /// Installs `staged` as file `index` (checked against the manifest), counts it and keeps
    /// what the saved state needs of it.
    fn install(&self, index: usize, staged: Staged) -> Result<(), StageError> {
        let at = attrs(&self.want.entries()[index]).expect("transfers are files");
        let done = staged.install(&at, &self.path_of(index))?;
        self.installed(at.size);
        self.keep(index, done);
        Ok(())
    }
}

/// Runs a whole sync after the manifest arrived.
pub(super) fn run<R: BufRead, W: Write + Send>(
    r: &mut R,
    w: &mut W,
    dest: &Path,
    begin: &Begin,
    current: &Current,
    want: &Manifest,
    opts: &AgentOptions,
) -> Result<(), AgentError> {
    let t0 = std::time::Instant::now();
    let timing = std::env::var_os("RDIST_TIMINGS").is_some();
    let actions = plan(
        &current.manifest,
        want,
        begin.delta_min.max(crate::delta::MIN_BLOCK_SIZE),
    );
    let plan_msg = Plan {
        deleted: actions.deleted.clone(),
        dirs_created: actions.mkdirs.len() as u64,
        links_written: actions.links.len() as u64,
        metadata_only: actions.metadata.len() as u64,
        local_copies: actions.copies.len() as u64,
        transfers: actions.transfers.iter().map(|(i, _)| *i as u32).collect(),
    };
    write_frame(w, &Message::Plan(plan_msg))?;
    if begin.dry_run {
        write_frame(w, &Message::Done(dry_outcome(current.problems.clone())))?;
        w.flush().map_err(ProtoError::from)?;
        return Ok(());
    }
    w.flush().map_err(ProtoError::from)?;
    let tmp = dest.join(STATE_DIR).join("tmp");
    let stager = Stager::new(tmp.clone(), begin.fsync).map_err(|source| AgentError::Dest {
        op: "prepare staging directory",
        path: tmp,
        source,
    })?;
    let ctx = Ctx {
        dest,
        want,
        filter: crate::filter::Filter::new(&begin.ignore)?,
        stager,
        problems: Mutex::new(current.problems.clone()),
        failed: Mutex::new(HashSet::new()),
        files_written: AtomicU64::new(0),
        bytes_written: AtomicU64::new(0),
        old_leaves: if begin.leaves {
            old_leaves(current, want, &actions)
        } else {
            HashMap::new()
        },
        written: Mutex::new(HashMap::new()),
        local_sources: begin.local_sources && opts.confine.is_none(),
    };
    let Structural {
        deleted,
        opened,
        mut kept,
        blocked,
    } = structural(&ctx, current, &actions);
    if timing {
        eprintln!("agent timings: plan+structural {:.3?}", t0.elapsed());
    }
    receive(r, w, &ctx, &actions, &blocked, opts)?;
    if timing {
        eprintln!("agent timings: +receive {:.3?}", t0.elapsed());
    }
    for &j in actions.dir_modes.iter().rev() {
        if let Kind::Dir { mode } = want.entries()[j].kind {
            let p = ctx.path_of(j);
            if let Err(e) = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)) {
                ctx.problem(j, format!("cannot set mode: {e}"));
            }
        }
    }
    // Directories opened up for writing get their (wanted) mode back, changed or not.
    for (path, _) in opened {
        if let Some(Entry {
            kind: Kind::Dir { mode },
            ..
        }) = want.get(&path)
            && let Err(e) = std::fs::set_permissions(
                path.to_native(dest),
                std::fs::Permissions::from_mode(*mode),
            )
        {
            ctx.problems.lock().unwrap().push(Problem::new(
                path.to_string(),
                format!("cannot restore mode: {e}"),
            ));
        }
    }
    // Directories kept aside earlier stay kept unless the source now has them.
    kept.extend(
        current
            .kept
            .iter()
            .filter(|p| want.get(p).is_none())
            .cloned(),
    );
    kept.sort();
    kept.dedup();
    let failed = ctx.failed.into_inner().unwrap();
    let written = ctx.written.into_inner().unwrap();
    let mut problems = ctx.problems.into_inner().unwrap();
    let mut touched = vec![false; want.len()];
    for j in actions
        .transfers
        .iter()
        .map(|(j, _)| *j)
        .chain(actions.copies.iter().map(|(j, _)| *j))
        .chain(actions.metadata.iter().copied())
    {
        touched[j] = true;
    }
    if let Err(e) = state::save(
        dest,
        file_list(want, &failed, current, &touched, &written),
        kept.clone(),
    ) {
        problems.push(Problem::new(
            dest.join(STATE_DIR).display().to_string(),
            format!("cannot save sync state (the next sync rehashes): {e}"),
        ));
    }
    let _ = std::fs::remove_dir_all(dest.join(STATE_DIR).join("tmp"));
    if timing {
        eprintln!("agent timings: +save {:.3?}", t0.elapsed());
    }
    let outcome = Outcome {
        files_written: ctx.files_written.into_inner(),
        deleted,
        bytes_written: ctx.bytes_written.into_inner(),
        problems: problems.into_iter().map(|p| (p.path, p.message)).collect(),
        kept,
    };
    write_frame(w, &Message::Done(outcome))?;
    w.flush().map_err(ProtoError::from)?;
    Ok(())
}

/// Everything that needs no data from the controller. Returns how many extras were deleted, the
/// directories opened up for writing (with their modes), and the extra directories kept because
/// they hold protected entries.
fn structural(ctx: &Ctx<'_>, current: &Current, a: &Actions) -> Structural {
    let dest = ctx.dest;
    let want = ctx.want;
    // Directories we must write into but may not: open them up; their mode is restored at the end.
    let mut opened = Vec::new();
    for e in current.manifest.entries() {
        if let Kind::Dir { mode } = e.kind
            && mode & 0o300 != 0o300
            && std::fs::set_permissions(
                e.path.to_native(dest),
                std::fs::Permissions::from_mode(mode | 0o700),
            )
            .is_ok()
        {
            opened.push((e.path.clone(), mode));
        }
    }
    // Copies first: their sources may be removed or replaced below.
    let staged: Vec<(usize, Result<Finished, String>)> = a
        .copies
        .par_iter()
        .map(|(j, from)| (*j, copy_local(ctx, &from.to_native(dest), *j)))
        .collect();
    let mut deleted = 0;
    let mut kept = Vec::new();
    let mut blocked: HashSet<usize> = HashSet::new();
    let extras: HashSet<&RelPath> = a.deleted.iter().collect();
    for (p, is_dir) in &a.removals {
        let native = p.to_native(dest);
        let res = if *is_dir {
            if extras.contains(p) {
                // An extra directory may still hold entries the ignore rules protect; it stays
                // then, as rsync leaves a directory holding excluded files.
                match remove_unprotected_dir(&native, p, &ctx.filter) {
                    Ok(false) => {
                        kept.push(p.clone());
                        Ok(false)
                    }
                    other => other,
                }
            } else {
                // A directory the project turned into a file or a link: its unprotected entries
                // went first (they are extras); what is left is protected, and stays, as rsync
                // refuses to delete a directory holding excluded files.
                match remove_unprotected_dir(&native, p, &ctx.filter) {
                    Ok(false) => {
                        if let Some(j) = want.position(p) {
                            ctx.problem(
                                j,
                                format!(
                                    "cannot replace directory `{p}` with a {}: it holds entries the ignore \
                                     rules protect on the worker; remove them there to allow it",
                                    want.entries()[j].kind.label()
                                ),
                            );
                            blocked.insert(j);
                        }
                        Ok(false)
                    }
                    other => other.map(|_| false),
                }
            }
        } else {
            std::fs::remove_file(&native).map(|()| extras.contains(p))
        };
        match res {
            Ok(counted) => deleted += u64::from(counted),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => ctx
                .problems
                .lock()
                .unwrap()
                .push(Problem::new(p.to_string(), format!("cannot delete: {e}"))),
        }
    }
    for &j in &a.mkdirs {
        let p = ctx.path_of(j);
        match std::fs::create_dir(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if !std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
                    ctx.problem(
                        j,
                        "cannot create directory: something else is in the way".into(),
                    );
                }
            }
            Err(e) => ctx.problem(j, format!("cannot create directory: {e}")),
        }
    }
    for (j, res) in staged {
        if blocked.contains(&j) {
            if let Ok(done) = res {
                let _ = std::fs::remove_file(done.path);
            }
            continue;
        }
        match res.and_then(|done| match std::fs::rename(&done.path, ctx.path_of(j)) {
            Ok(()) => Ok(done),
            Err(e) => {
                let _ = std::fs::remove_file(&done.path);
                Err(format!("cannot rename into place: {e}"))
            }
        }) {
            Ok(done) => {
                ctx.installed(0);
                ctx.keep(j, done.installed(&ctx.path_of(j)));
            }
            Err(msg) => ctx.problem(j, msg),
        }
    }
    for &j in &a.links {
        if blocked.contains(&j) {
            continue;
        }
        if let Kind::Symlink { target } = &want.entries()[j].kind {
            let tmp = ctx.stager.temp_path();
            let res = std::os::unix::fs::symlink(target, &tmp)
                .and_then(|()| std::fs::rename(&tmp, ctx.path_of(j)));
            if let Err(e) = res {
                let _ = std::fs::remove_file(&tmp);
                ctx.problem(j, format!("cannot create symlink: {e}"));
            }
        }
    }
    for &j in &a.metadata {
        if let Some(at) = attrs(&want.entries()[j]) {
            let p = ctx.path_of(j);
            // The content is the walk's only if the file still has the walk's certified stamp;
            // then its stamp after the change here goes with the hash into the saved state.
            let walked = current
                .manifest
                .position(&want.entries()[j].path)
                .and_then(|k| current.stamps.get(k).copied().flatten());
            match set_metadata(&p, &at, walked) {
                Ok(stamp) => ctx.keep(
                    j,
                    Installed {
                        stamp,
                        leaves: Vec::new(),
                    },
                ),
                Err(e) => ctx.problem(j, format!("cannot set mode or mtime: {e}")),
            }
        }
    }
    Structural {
        deleted,
        opened,
        kept,
        blocked,
    }
}

/// Sets the mode and mtime of the file at `p`. Returns its stamp after that if, before, it still
/// had the stamp `walked` (certified by the walk that hashed it): then the hash the sync knows is
/// its content, and the stamp can go with it into the saved state.
fn set_metadata(p: &Path, at: &FileAttrs, walked: Option<Stamp>) -> std::io::Result<Option<Stamp>> {
    let f = std::fs::File::options().write(true).open(p)?;
    let stamp = |f: &std::fs::File| f.metadata().ok().map(|m| Stamp::of(&m));
    let unchanged = walked.is_some() && stamp(&f) == walked;
    f.set_permissions(std::fs::Permissions::from_mode(at.mode))?;
    f.set_times(std::fs::FileTimes::new().set_modified(system_time(at.mtime_ns)))?;
    Ok(stamp(&f).filter(|s| unchanged && s.mtime_ns == at.mtime_ns))
}

/// What the structural phase did.
struct Structural {
    /// Extras deleted.
    deleted: u64,
    /// Directories opened up for writing, with their modes.
    opened: Vec<(RelPath, u32)>,
    /// Extra directories kept because they hold protected entries.
    kept: Vec<RelPath>,
    /// Manifest indices that cannot be installed (a protected directory is in the way).
    blocked: HashSet<usize>,
}

/// Removes the directory `native` (destination path `rel`) unless something below it is
/// protected by the ignore rules; returns whether it was removed. Its unprotected entries were
/// removed before (they are extras), so what can remain is protected entries and the empty
/// directories that held them.
fn remove_unprotected_dir(
    native: &Path,
    rel: &RelPath,
    filter: &crate::filter::Filter,
) -> std::io::Result<bool> {
    match std::fs::remove_dir(native) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty => {
            if holds_protected(native, rel, filter)? {
                Ok(false)
            } else {
                std::fs::remove_dir_all(native).map(|()| true)
            }
        }
        Err(e) => Err(e),
    }
}

fn holds_protected(
    native: &Path,
    rel: &RelPath,
    filter: &crate::filter::Filter,
) -> std::io::Result<bool> {
    for entry in std::fs::read_dir(native)? {
        let entry = entry?;
        let is_dir = entry.file_type()?.is_dir();
        let Some(child) = entry.file_name().to_str().and_then(|n| rel.join(n).ok()) else {
            // A name rdist cannot mirror: treat it as precious.
            return Ok(true);
        };
        if filter.is_ignored(&child, is_dir)
            || (is_dir && holds_protected(&entry.path(), &child, filter)?)
        {
            return Ok(true);
        }
    }
    Ok(false)
}

fn copy_local(ctx: &Ctx<'_>, from: &Path, j: usize) -> Result<Finished, String> {
    let at = attrs(&ctx.want.entries()[j]).expect("copies are files");
    let mut src = crate::hash::open_file(from)
        .map_err(|e| format!("cannot read `{}`: {e}", from.display()))?;
    let mut staged = ctx
        .stager
        .create()
        .map_err(|e| crate::agent::error_chain(&e))?;
    let mut buf = vec![0u8; (at.size as usize).clamp(1, 1 << 20)];
    loop {
        let n = crate::hash::read_full(&mut src, &mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        staged
            .write(&buf[..n])
            .map_err(|e| crate::agent::error_chain(&e))?;
    }
    staged
        .finish(&at)
        .map_err(|e| crate::agent::error_chain(&e))
}

/// The files to ask for by their leaves: deltas whose old version has leaves and a certified
/// stamp.
fn old_leaves(current: &Current, want: &Manifest, a: &Actions) -> HashMap<usize, OldLeaves> {
    a.transfers
        .iter()
        .filter(|(_, src)| *src == Source::Delta)
        .filter_map(|&(j, _)| {
            let k = current.manifest.position(&want.entries()[j].path)?;
            let cvs = current.leaves.get(&k)?;
            let stamp = current.stamps.get(k).copied().flatten()?;
            let Kind::File { size, .. } = current.manifest.entries()[k].kind else {
                return None;
            };
            Some((
                j,
                OldLeaves {
                    stamp,
                    size,
                    cvs: cvs.clone(),
                },
            ))
        })
        .collect()
}

/// A file being received over several frames.
enum Stream {
    Whole {
        index: usize,
        staged: Staged,
    },
    Delta {
        index: usize,
        staged: Staged,
        old: std::fs::File,
        next_chunk: u32,
    },
    /// A file asked for by its leaves ([`Expect::Leaves`]): its chunks go to its thread.
    Leaves {
        index: usize,
        tx: SyncSender<LeafChunk>,
        next_chunk: u32,
    },
    /// A delta that failed part-way: its remaining chunks are read and dropped.
    Discard {
        index: usize,
    },
}

/// What one round of wants expects.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Expect {
    Whole,
    Delta,
    /// Delta chunks, each a copy of the old leaf or the new leaf whole.
    Leaves,
}

fn receive<R: BufRead, W: Write + Send>(
    r: &mut R,
    w: &mut W,
    ctx: &Ctx<'_>,
    a: &Actions,
    blocked: &HashSet<usize>,
    opts: &AgentOptions,
) -> Result<(), AgentError> {
    let mut round: Vec<(usize, Source)> = a
        .transfers
        .iter()
        .filter(|(j, _)| !blocked.contains(j))
        .cloned()
        .collect();
    let mut retried: HashSet<usize> = HashSet::new();
    let writers = opts.threads.clamp(1, 4);
    let (tx, rx) = sync_channel::<Batch>(8);
    let rx = Mutex::new(rx);
    std::thread::scope(|scope| -> Result<(), AgentError> {
        // Owned by this closure so that an early error return drops it and the writers stop.
        let tx = tx;
        for _ in 0..writers {
            let rx = &rx;
            scope.spawn(move || writer(ctx, rx));
        }
        while !round.is_empty() {
            let pending = Mutex::new(HashMap::new());
            // The wants go out from a thread of their own: while it signs old versions, this
            // one already receives the files wanted whole.
            let retry = std::thread::scope(|s| -> Result<Vec<usize>, AgentError> {
                let sender = s.spawn(|| send_wants(&mut *w, ctx, &round, &pending));
                let received = receive_round(r, ctx, &pending, &tx);
                let sent = sender
                    .join()
                    .unwrap_or_else(|_| Err(invalid("the want sender panicked".to_owned())));
                sent.and(received)
            })?;
            for (index, _) in pending.into_inner().unwrap().drain() {
                ctx.problem(index, "controller did not send this file".to_owned());
            }
            round = retry
                .into_iter()
                .filter(|i| retried.insert(*i))
                .map(|i| (i, Source::Whole))
                .collect();
        }
        drop(tx);
        Ok(())
    })
}

fn writer(ctx: &Ctx<'_>, rx: &Mutex<Receiver<Batch>>) {
    let mut buf = Vec::new();
    loop {
        let job = rx.lock().unwrap().recv();
        let Ok(batch) = job else { return };
        for (index, payload) in batch {
            let res = match payload {
                Payload::Bytes(data) => ctx.stager.create().and_then(|mut staged| {
                    staged.write(&data)?;
                    ctx.install(index, staged)
                }),
                Payload::Source(path) => copy_source(ctx, index, &path, &mut buf),
            };
            if let Err(e) = res {
                ctx.problem(index, crate::agent::error_chain(&e));
            }
        }
    }
}

/// Puts file `index` in place from the controller's source file at `path`, read at most one
/// byte past its manifest size (enough for the hash check to see a file that grew) and checked
/// like data the controller sent.
fn copy_source(
    ctx: &Ctx<'_>,
    index: usize,
    path: &Path,
    buf: &mut Vec<u8>,
) -> Result<(), StageError> {
    use std::io::Read;
    let size = attrs(&ctx.want.entries()[index]).expect("files").size;
    let unread = |source| StageError::Io {
        op: "cannot read source file",
        path: path.to_owned(),
        source,
    };
    let mut f = crate::hash::open_file(path)
        .map_err(unread)?
        .take(size.saturating_add(1));
    let mut staged = ctx.stager.create()?;
    buf.resize(size.saturating_add(1).min(SOURCE_BUF) as usize, 0);
    loop {
        let n = match crate::hash::read_full(&mut f, buf) {
            Ok(n) => n,
            Err(e) => {
                staged.discard();
                return Err(unread(e));
            }
        };
        if let Err(e) = staged.write(&buf[..n]) {
            staged.discard();
            return Err(e);
        }
        if n < buf.len() {
            break;
        }
    }
    ctx.install(index, staged)
}

/// The buffer a writer reads source files with.
const SOURCE_BUF: u64 = 256 << 10;
/// A writer's share of the source files of one frame: this many files, or this many bytes.
const SOURCE_BATCH_FILES: usize = 32;
const SOURCE_BATCH_BYTES: u64 = 1 << 20;

/// What has been asked for in this round and not yet received.
type Pending = Mutex<HashMap<usize, Expect>>;

/// Sends the wants of one round (computing signatures in parallel), each entered in `pending`
/// before it is sent.
fn send_wants<W: Write>(
    w: &mut W,
    ctx: &Ctx<'_>,
    round: &[(usize, Source)],
    pending: &Pending,
) -> Result<(), AgentError> {
    // Files asked for by their leaves go first: their copies are made here by this thread as the
    // chunks arrive, while the controller reads the small files that follow. Then the files
    // wanted whole, before any signature is computed, so the controller reads and sends them
    // while this side signs the old versions of the rest. (A retry asks for all of them whole.)
    let (whole, rest): (Vec<_>, Vec<_>) = round
        .iter()
        .filter(|(_, src)| !matches!(src, Source::Local(_)))
        .partition(|(_, src)| matches!(src, Source::Whole));
    let (leafy, rest): (Vec<_>, Vec<_>) = rest
        .into_iter()
        .partition(|(j, src)| *src == Source::Delta && ctx.old_leaves.contains_key(j));
    for (j, _) in &leafy {
        pending.lock().unwrap().insert(*j, Expect::Leaves);
        let cvs = ctx.old_leaves[j].cvs.clone();
        write_frame(
            w,
            &Message::Want(vec![Want::Leaves {
                index: *j as u32,
                cvs,
            }]),
        )?;
    }
    for batch in whole.chunks(WANT_BATCH) {
        let wants: Vec<Want> = batch
            .iter()
            .map(|(j, _)| Want::Whole { index: *j as u32 })
            .collect();
        pending
            .lock()
            .unwrap()
            .extend(batch.iter().map(|(j, _)| (*j, Expect::Whole)));
        write_frame(w, &Message::Want(wants))?;
    }
    let sent_some = !whole.is_empty() || !leafy.is_empty();
    if sent_some && !rest.is_empty() {
        w.flush().map_err(ProtoError::from)?;
    }
    for batch in rest.chunks(WANT_BATCH) {
        let wants: Vec<Want> = batch
            .par_iter()
            .map(|(j, _)| {
                let index = *j as u32;
                let p = ctx.path_of(*j);
                let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
                match delta::file_signature(&p, len) {
                    Ok(signature) => Want::Delta { index, signature },
                    Err(_) => Want::Whole { index },
                }
            })
            .collect();
        pending
            .lock()
            .unwrap()
            .extend(wants.iter().map(|want| match want {
                Want::Whole { index } => (*index as usize, Expect::Whole),
                Want::Delta { index, .. } => (*index as usize, Expect::Delta),
                Want::Leaves { index, .. } => (*index as usize, Expect::Leaves),
            }));
        // Signatures can be large; keep each frame well under the limit.
        let mut frame = Vec::new();
        let mut bytes = 0;
        for want in wants {
            let size = match &want {
                Want::Delta { signature, .. } => signature.chunks.iter().map(|c| c.0.len()).sum(),
                Want::Leaves { cvs, .. } => cvs.len() * 32,
                Want::Whole { .. } => 8,
            };
            if bytes + size > crate::proto::MAX_FRAME / 2 && !frame.is_empty() {
                write_frame(w, &Message::Want(std::mem::take(&mut frame)))?;
                bytes = 0;
            }
            bytes += size;
            frame.push(want);
        }
        if !frame.is_empty() {
            write_frame(w, &Message::Want(frame))?;
        }
    }
    write_frame(w, &Message::WantEnd)?;
    w.flush().map_err(ProtoError::from)?;
    Ok(())
}

fn invalid(msg: String) -> AgentError {
    AgentError::Invalid(msg)
}

/// Receives data until `DataEnd`; returns the files whose delta failed, to be sent whole.
fn receive_round<R: BufRead>(
    r: &mut R,
    ctx: &Ctx<'_>,
    pending: &Pending,
    tx: &std::sync::mpsc::SyncSender<Batch>,
) -> Result<Vec<usize>, AgentError> {
    let leaf_retry = Mutex::new(Vec::new());
    // The scope ends once every file's leaf thread has: on an error too (their channels close,
    // and each drops its unfinished temp file).
    let mut retry =
        std::thread::scope(|scope| receive_frames(r, ctx, pending, tx, scope, &leaf_retry))?;
    retry.extend(leaf_retry.into_inner().unwrap());
    Ok(retry)
}

/// The temp file and the old version of file `i`, sent as chunks; `None` when either cannot be
/// had: a problem is recorded, or (the old version is gone) the file goes into `retry`, to be
/// asked for whole.
fn open_chunked(
    ctx: &Ctx<'_>,
    i: usize,
    retry: &mut Vec<usize>,
) -> Option<(Staged, std::fs::File)> {
    match (ctx.stager.create(), crate::hash::open_file(&ctx.path_of(i))) {
        (Ok(s), Ok(old)) => Some((s, old)),
        (Err(e), _) => {
            ctx.problem(i, crate::agent::error_chain(&e));
            None
        }
        (Ok(s), Err(_)) => {
            s.discard();
            retry.push(i);
            None
        }
    }
}

/// A chunk of a file asked for by its leaves: (chunk, delta, last).
type LeafChunk = (u32, Vec<u8>, bool);

/// Builds file `i`, asked for by its leaves, from its chunks as they come: a copy of an old leaf
/// (by the kernel, not read here) or the new leaf whole; nothing else is accepted. After the
/// copies the old file must still have its certified stamp, for its leaves to hold; the file's
/// hash, merged from the leaves, is checked at the install. On any failure the file is asked
/// for again whole (its remaining chunks are dropped).
fn build_from_leaves(
    ctx: &Ctx<'_>,
    i: usize,
    mut staged: Staged,
    old: std::fs::File,
    rx: Receiver<LeafChunk>,
    retry: &Mutex<Vec<usize>>,
) {
    let o = &ctx.old_leaves[&i];
    let at = attrs(&ctx.want.entries()[i]).expect("files");
    let mut out = Vec::new();
    while let Ok((chunk, delta, last)) = rx.recv() {
        let limit = (at.size.saturating_sub(staged.written()) as usize).min(DELTA_CHUNK);
        let len = o.size.saturating_sub(u64::from(chunk) * LEAF).min(LEAF);
        // Every chunk starts at its own leaf's offset: an old leaf's chaining value holds
        // only there, and a short chunk would shift the leaves after it.
        let ok = staged.written() == u64::from(chunk) * LEAF
            && match o.cvs.get(chunk as usize) {
                Some(cv) if len > 0 && len as usize <= limit && delta::is_copy_of(&delta, len) => {
                    staged.copy_leaf(&old, u64::from(chunk), len, *cv).is_ok()
                }
                _ => {
                    delta::apply_chunk(&[], &delta, limit, &mut out).is_ok()
                        && staged.write(&out).is_ok()
                }
            };
        let ok = ok && !(last && old.metadata().ok().map(|m| Stamp::of(&m)) != Some(o.stamp));
        if !ok {
            staged.discard();
            retry.lock().unwrap().push(i);
            return;
        }
        if last {
            match ctx.install(i, staged) {
                Ok(()) => {}
                Err(StageError::Mismatch { .. }) => retry.lock().unwrap().push(i),
                Err(e) => ctx.problem(i, crate::agent::error_chain(&e)),
            }
            return;
        }
    }
    // The data ended before the last chunk (the session failed): nothing is installed.
    staged.discard();
}

fn receive_frames<'scope, 'env, R: BufRead>(
    r: &mut R,
    ctx: &'env Ctx<'env>,
    pending: &Pending,
    tx: &std::sync::mpsc::SyncSender<Batch>,
    scope: &'scope std::thread::Scope<'scope, 'env>,
    leaf_retry: &'env Mutex<Vec<usize>>,
) -> Result<Vec<usize>, AgentError> {
    let mut stream: Option<Stream> = None;
    // The threads of files asked for by their leaves: the oldest ones have all their chunks.
    let mut leaf_threads: std::collections::VecDeque<std::thread::ScopedJoinHandle<'scope, ()>> =
        std::collections::VecDeque::new();
    let mut retry = Vec::new();
    let (mut base, mut out) = (Vec::new(), Vec::new());
    let take = |pending: &Pending, index: u32, e: Expect| {
        let i = index as usize;
        match pending.lock().unwrap().remove(&i) {
            Some(got) if got == e => Ok(i),
            _ => Err(invalid(format!(
                "data for file #{index} that was not asked for"
            ))),
        }
    };
    loop {
        let (msg, _) = read_frame(r)?;
        match msg {
            Message::Files(files) => {
                let mut batch = Vec::with_capacity(files.len());
                for f in files {
                    batch.push((
                        take(pending, f.index, Expect::Whole)?,
                        Payload::Bytes(f.data),
                    ));
                }
                tx.send(batch)
                    .map_err(|_| invalid("writer pool stopped".to_owned()))?;
            }
            Message::Sources(sources) => {
                if !ctx.local_sources {
                    return Err(invalid(
                        "source paths from a controller that is not on this machine".to_owned(),
                    ));
                }
                // Split among the writers: one frame names up to a `Want` frame's worth of
                // files, which one writer would copy one after another.
                let (mut batch, mut bytes) = (Vec::new(), 0);
                let last = sources.len().saturating_sub(1);
                for (k, s) in sources.into_iter().enumerate() {
                    use std::os::unix::ffi::OsStringExt;
                    let i = take(pending, s.index, Expect::Whole)?;
                    let path = PathBuf::from(std::ffi::OsString::from_vec(s.path));
                    if !path.is_absolute() {
                        return Err(invalid(format!(
                            "source path of file #{} is not absolute",
                            s.index
                        )));
                    }
                    bytes = attrs(&ctx.want.entries()[i])
                        .map_or(bytes, |a| a.size.saturating_add(bytes));
                    batch.push((i, Payload::Source(path)));
                    if k == last || batch.len() >= SOURCE_BATCH_FILES || bytes >= SOURCE_BATCH_BYTES
                    {
                        tx.send(std::mem::take(&mut batch))
                            .map_err(|_| invalid("writer pool stopped".to_owned()))?;
                        bytes = 0;
                    }
                }
            }
            Message::Data { index, bytes, last } => {
                let i = index as usize;
                let mut st = match stream.take() {
                    Some(Stream::Whole { index: k, staged }) if k == i => staged,
                    // A file whose write already failed: its remaining pieces are dropped.
                    Some(Stream::Discard { index: k }) if k == i => {
                        if !last {
                            stream = Some(Stream::Discard { index: k });
                        }
                        continue;
                    }
                    Some(_) => {
                        return Err(invalid(format!("file #{index} interleaved with another")));
                    }
                    None => {
                        let i = take(pending, index, Expect::Whole)?;
                        match ctx.stager.create() {
                            Ok(s) => s,
                            Err(e) => {
                                ctx.problem(i, crate::agent::error_chain(&e));
                                if !last {
                                    stream = Some(Stream::Discard { index: i });
                                }
                                continue;
                            }
                        }
                    }
                };
                let at = attrs(&ctx.want.entries()[i]).expect("files");
                if st.written() + bytes.len() as u64 > at.size {
                    st.discard();
                    return Err(invalid(format!(
                        "file #{index} is longer than its manifest size"
                    )));
                }
                if let Err(e) = st.write(&bytes) {
                    st.discard();
                    ctx.problem(i, crate::agent::error_chain(&e));
                    if !last {
                        stream = Some(Stream::Discard { index: i });
                    }
                    continue;
                }
                if last {
                    if let Err(e) = ctx.install(i, st) {
                        ctx.problem(i, crate::agent::error_chain(&e));
                    }
                } else {
                    stream = Some(Stream::Whole {
                        index: i,
                        staged: st,
                    });
                }
            }
            Message::Delta {
                index,
                chunk,
                delta,
                last,
            } => {
                let i = index as usize;
                // A file asked for by its leaves: its chunks go to a thread of its own, so the
                // files that follow reach the writers while its leaves are copied.
                let leaf_stream = match stream.take() {
                    Some(Stream::Leaves {
                        index: k,
                        tx,
                        next_chunk,
                    }) if k == i => Some((tx, next_chunk)),
                    other => {
                        stream = other;
                        None
                    }
                };
                let leaf_stream = match leaf_stream {
                    Some(s) => Some(s),
                    None if stream.is_none()
                        && pending.lock().unwrap().get(&i) == Some(&Expect::Leaves) =>
                    {
                        pending.lock().unwrap().remove(&i);
                        // A few files at a time: each holds up to 4 chunks (8 MiB) in its queue.
                        while leaf_threads.len() >= 4 {
                            let _ = leaf_threads.pop_front().expect("non-empty").join();
                        }
                        match open_chunked(ctx, i, &mut retry) {
                            Some((staged, old)) => {
                                let (tx, rx) = sync_channel(4);
                                let retry = leaf_retry;
                                leaf_threads.push_back(scope.spawn(move || {
                                    build_from_leaves(ctx, i, staged, old, rx, retry)
                                }));
                                Some((tx, 0))
                            }
                            None => {
                                if !last {
                                    stream = Some(Stream::Discard { index: i });
                                }
                                continue;
                            }
                        }
                    }
                    None => None,
                };
                if let Some((tx, next)) = leaf_stream {
                    if chunk != next {
                        return Err(invalid(format!(
                            "file #{index}: delta chunk {chunk} out of order"
                        )));
                    }
                    // Refused once the thread gave up on the file (it asks for it again).
                    let _ = tx.send((chunk, delta, last));
                    if !last {
                        stream = Some(Stream::Leaves {
                            index: i,
                            tx,
                            next_chunk: next + 1,
                        });
                    }
                    continue;
                }
                let (mut staged, mut old, next) = match stream.take() {
                    Some(Stream::Discard { index: k }) if k == i => {
                        if !last {
                            stream = Some(Stream::Discard { index: k });
                        }
                        continue;
                    }
                    Some(Stream::Delta {
                        index: k,
                        staged,
                        old,
                        next_chunk,
                    }) if k == i => (staged, old, next_chunk),
                    Some(_) => {
                        return Err(invalid(format!("file #{index} interleaved with another")));
                    }
                    None => {
                        let i = take(pending, index, Expect::Delta)?;
                        match open_chunked(ctx, i, &mut retry) {
                            Some((s, o)) => (s, o, 0),
                            None => {
                                if !last {
                                    stream = Some(Stream::Discard { index: i });
                                }
                                continue;
                            }
                        }
                    }
                };
                if chunk != next {
                    staged.discard();
                    return Err(invalid(format!(
                        "file #{index}: delta chunk {chunk} out of order"
                    )));
                }
                let at = attrs(&ctx.want.entries()[i]).expect("files");
                let remaining = at.size.saturating_sub(staged.written()) as usize;
                let limit = remaining.min(DELTA_CHUNK);
                let ok = delta::read_chunk(&mut old, chunk as usize, &mut base).is_ok()
                    && if delta::copies_whole(&delta, &base, limit) {
                        // An unchanged chunk: the old bytes as they are, no copy made.
                        staged.write(&base).is_ok()
                    } else {
                        delta::apply_chunk(&base, &delta, limit, &mut out).is_ok()
                            && staged.write(&out).is_ok()
                    };
                if !ok {
                    // A delta that does not apply is the controller's fault or a changed old
                    // file; either way the whole file is asked for again.
                    staged.discard();
                    retry.push(i);
                    if !last {
                        stream = Some(Stream::Discard { index: i });
                    }
                    continue;
                }
                if last {
                    match ctx.install(i, staged) {
                        Ok(()) => {}
                        Err(StageError::Mismatch { .. }) => retry.push(i),
                        Err(e) => ctx.problem(i, crate::agent::error_chain(&e)),
                    }
                } else {
                    stream = Some(Stream::Delta {
                        index: i,
                        staged,
                        old,
                        next_chunk: next + 1,
                    });
                }
            }
            Message::Skip { index, reason } => {
                let i = index as usize;
                match stream.take() {
                    Some(
                        Stream::Whole { index: k, staged }
                        | Stream::Delta {
                            index: k, staged, ..
                        },
                    ) if k == i => staged.discard(),
                    Some(Stream::Discard { index: k }) if k == i => {}
                    // Its thread sees the channel close and drops the temp file.
                    Some(Stream::Leaves { index: k, .. }) if k == i => {}
                    Some(_) => {
                        return Err(invalid(format!(
                            "skip of file #{index} in the middle of another"
                        )));
                    }
                    None => {
                        if pending.lock().unwrap().remove(&i).is_none() {
                            return Err(invalid(format!(
                                "skip of file #{index} that was not asked for"
                            )));
                        }
                    }
                }
                ctx.problem(i, format!("not sent: {reason}"));
            }
            Message::DataEnd => {
                if stream.is_some() {
                    return Err(invalid("data ended in the middle of a file".to_owned()));
                }
                return Ok(retry);
            }
            Message::Error(e) => return Err(ProtoError::Remote(e).into()),
            other => {
                return Err(ProtoError::Unexpected {
                    got: other.name(),
                    expected: "file data",
                }
                .into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_set_on_a_file_changed_since_the_walk_is_not_vouched_for() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"walked bytes").unwrap();
        let walked = Stamp::of(&std::fs::symlink_metadata(&p).unwrap());
        let at = FileAttrs {
            size: 12,
            mtime_ns: 1_500_000_000_000_000_000,
            mode: 0o640,
            hash: [0; 32],
        };
        // Unchanged since the walk: the stamp after the change is the one to save.
        let after = set_metadata(&p, &at, Some(walked)).unwrap().unwrap();
        assert_eq!(after, Stamp::of(&std::fs::symlink_metadata(&p).unwrap()));
        assert_eq!(after.mtime_ns, at.mtime_ns);
        // Rewritten on the worker after the walk (same size): metadata set, nothing vouched.
        let walked = after;
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&p, b"worker bytes").unwrap();
        assert_eq!(set_metadata(&p, &at, Some(walked)).unwrap(), None);
        // Not certified by the walk: nothing vouched either.
        assert_eq!(set_metadata(&p, &at, None).unwrap(), None);
        let m = std::fs::symlink_metadata(&p).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o640);
    }
}
