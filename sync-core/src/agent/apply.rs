//! Carrying out a plan: structural changes first (copies staged, removals, directories, links,
//! metadata), then file data from the controller, installed by a small pool of writer threads,
//! then directory modes and the saved state.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, sync_channel};

use rayon::prelude::*;

use super::plan::{Actions, Source, plan};
use super::state::{self, Current};
use super::{AgentError, AgentOptions, dry_outcome};
use crate::delta::{self, DELTA_CHUNK};
use crate::manifest::{Entry, Kind, Manifest};
use crate::path::RelPath;
use crate::proto::{Begin, Message, Outcome, Plan, ProtoError, Want, read_frame, write_frame};
use crate::stage::{FileAttrs, STATE_DIR, Staged, Stager, system_time};
use crate::walk::Problem;

/// Small files for the writer pool, as `(manifest index, content)`.
type Batch = Vec<(usize, Vec<u8>)>;

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
    current: &Current,
    touched: &[bool],
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
        let stamp = if touched.get(i).copied().unwrap_or(false) {
            state::SaveStamp::Written
        } else {
            cur.get(k)
                .filter(|c| c.path == e.path && c.kind == e.kind)
                .and_then(|_| current.stamps.get(k).copied().flatten())
                .map_or(state::SaveStamp::Uncertified, state::SaveStamp::Certified)
        };
        out.push(state::SaveFile {
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
        file_list(want, &failed, current, &touched),
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
    let staged: Vec<(usize, Result<PathBuf, String>)> = a
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
            if let Ok(tmp) = res {
                let _ = std::fs::remove_file(tmp);
            }
            continue;
        }
        match res.and_then(|tmp| {
            std::fs::rename(&tmp, ctx.path_of(j)).map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                format!("cannot rename into place: {e}")
            })
        }) {
            Ok(()) => ctx.installed(0),
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
            let res = std::fs::File::options().write(true).open(&p).and_then(|f| {
                f.set_permissions(std::fs::Permissions::from_mode(at.mode))?;
                f.set_times(std::fs::FileTimes::new().set_modified(system_time(at.mtime_ns)))
            });
            if let Err(e) = res {
                ctx.problem(j, format!("cannot set mode or mtime: {e}"));
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

fn copy_local(ctx: &Ctx<'_>, from: &Path, j: usize) -> Result<PathBuf, String> {
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
    loop {
        let job = rx.lock().unwrap().recv();
        let Ok(batch) = job else { return };
        for (index, data) in batch {
            let at = attrs(&ctx.want.entries()[index]).expect("transfers are files");
            match ctx.stager.install_bytes(&data, &at, &ctx.path_of(index)) {
                Ok(()) => ctx.installed(at.size),
                Err(e) => ctx.problem(index, crate::agent::error_chain(&e)),
            }
        }
    }
}

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
    // Files wanted whole go first, before any signature is computed, so the controller reads and
    // sends them while this side signs the old versions of the rest.
    let (whole, rest): (Vec<_>, Vec<_>) = round
        .iter()
        .filter(|(_, src)| !matches!(src, Source::Local(_)))
        .partition(|(_, src)| matches!(src, Source::Whole));
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
    if !whole.is_empty() && !rest.is_empty() {
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
            }));
        // Signatures can be large; keep each frame well under the limit.
        let mut frame = Vec::new();
        let mut bytes = 0;
        for want in wants {
            let size = match &want {
                Want::Delta { signature, .. } => signature.chunks.iter().map(|c| c.0.len()).sum(),
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
    let mut stream: Option<Stream> = None;
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
                    batch.push((take(pending, f.index, Expect::Whole)?, f.data));
                }
                tx.send(batch)
                    .map_err(|_| invalid("writer pool stopped".to_owned()))?;
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
                    match st.install(&at, &ctx.path_of(i)) {
                        Ok(()) => ctx.installed(at.size),
                        Err(e) => ctx.problem(i, crate::agent::error_chain(&e)),
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
                        let old = crate::hash::open_file(&ctx.path_of(i));
                        match (ctx.stager.create(), old) {
                            (Ok(s), Ok(o)) => (s, o, 0),
                            (Err(e), _) => {
                                ctx.problem(i, crate::agent::error_chain(&e));
                                continue;
                            }
                            (Ok(s), Err(_)) => {
                                s.discard();
                                retry.push(i);
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
                    match staged.install(&at, &ctx.path_of(i)) {
                        Ok(()) => ctx.installed(at.size),
                        Err(crate::stage::StageError::Mismatch { .. }) => retry.push(i),
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
