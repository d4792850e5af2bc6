//! The agent: the receiving side of a sync. It serves one destination per `Begin` over any byte
//! stream (a child's stdin/stdout, an ssh channel, a TCP connection), checks every path and
//! every byte the controller sends, and changes the destination only through atomic renames.
//!
//! Sequence of one sync (see docs/protocol.md): lock the destination, work out what it holds,
//! answer `UpToDate` when the digests agree, else take the manifest, plan, apply what needs no
//! data (copies, removals, directories, links, metadata), ask for file data, install each file
//! after checking its BLAKE3, set directory modes, save the state for the next run.

mod apply;
mod lock;
pub mod plan;
pub mod probe;
pub mod state;
pub mod workers;

use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::filter::{Filter, PatternError};
use crate::manifest::{Entry, Framed, Hash, Manifest, ManifestError};
use crate::path::RelPath;
use crate::proto::{
    Begin, DestBase, Message, Outcome, ProtoError, read_frame, recv_hello, send_hello, write_frame,
};
use crate::stage::STATE_DIR;
use rayon::prelude::*;
use rustc_hash::FxHashMap;

pub use lock::DestLock;

/// The most entries a manifest may have; a bound on the agent's memory against a hostile peer.
pub const MAX_ENTRIES: u64 = 20_000_000;

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// This binary's version, for the handshake.
    pub version: String,
    /// Threads for walking and hashing.
    pub threads: usize,
    /// When set, destinations are plain relative paths below this directory (a server's
    /// session root) and nothing outside it is touched.
    pub confine: Option<PathBuf>,
    /// The home directory, for `~/` destinations.
    pub home: Option<PathBuf>,
    /// The cache directory, for [`DestBase::Cache`] destinations.
    pub cache_dir: Option<PathBuf>,
    /// When set, the peer must prove it knows this token before anything else.
    pub token: Option<crate::auth::Key>,
    /// The pytest plugin source, for serving test workers (`None`: this agent only syncs).
    pub worker_plugin: Option<&'static str>,
}

/// Why a sync failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Proto(#[from] ProtoError),
    #[error("destination `{0}` is not empty and was not created by rdist")]
    Foreign(PathBuf),
    #[error(
        "destination `{dest}` is being synced by another rdist (pid {holder}); gave up after {waited_ms} ms"
    )]
    Locked {
        dest: PathBuf,
        holder: String,
        waited_ms: u64,
    },
    #[error(
        "destination `{0}` is outside the directory this agent serves, or not a plain relative path"
    )]
    Confined(PathBuf),
    #[error("cannot {op} `{path}`")]
    Dest {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("manifest refused")]
    Manifest(#[from] ManifestError),
    #[error("manifest entry `{0}` matches the ignore rules and would overwrite a protected entry")]
    IgnoredEntry(RelPath),
    #[error(transparent)]
    Pattern(#[from] PatternError),
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    #[error("peer sent invalid data: {0}")]
    Invalid(String),
}

impl AgentError {
    /// A hint for the user, where one helps.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            AgentError::Foreign(_) => Some(
                "choose an empty or new directory, or pass `--adopt` to mirror into this one \
                 (its entries that are not in the sync will be deleted)",
            ),
            AgentError::Locked { .. } => {
                Some("wait for the other sync to finish, or raise `--lock-wait`")
            }
            _ => None,
        }
    }
}

/// The full text of an error: its message and every cause, joined by `: `.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.ends_with(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// Serves syncs on `input`/`output` until the controller closes the stream.
///
/// # Errors
/// A handshake failure, a protocol violation, or a failed sync (after telling the peer).
pub fn serve(
    input: impl Read,
    output: impl Write + Send,
    opts: &AgentOptions,
) -> Result<(), AgentError> {
    let mut r = BufReader::with_capacity(1 << 20, input);
    let mut w = BufWriter::with_capacity(1 << 20, output);
    send_hello(&mut w, &opts.version)?;
    recv_hello(&mut r, &opts.version)?;
    if let Some(key) = &opts.token {
        crate::auth::server(&mut r, &mut w, key)?;
    }
    loop {
        let begin = match read_frame(&mut r) {
            Ok((Message::Begin(b), _)) => b,
            Ok((Message::Probe(req), _)) => {
                write_frame(&mut w, &Message::Probed(probe::probe(&req, opts)))?;
                w.flush().map_err(ProtoError::from)?;
                continue;
            }
            Ok((Message::StartWorker(ws), _)) => {
                // From here on the connection carries test workers until it closes.
                return workers::serve_workers(&mut r, &mut w, ws, opts)
                    .map_err(|e| report(&mut w, e));
            }
            Ok((Message::Error(e), _)) => return Err(ProtoError::Remote(e).into()),
            Ok((other, _)) => {
                return Err(report(
                    &mut w,
                    ProtoError::Unexpected {
                        got: other.name(),
                        expected: "Begin",
                    }
                    .into(),
                ));
            }
            Err(ProtoError::Closed) => return Ok(()),
            Err(e) => return Err(report(&mut w, e.into())),
        };
        if let Err(e) = session(&mut r, &mut w, begin, opts) {
            return Err(report(&mut w, e));
        }
    }
}

/// Tells the peer about a fatal error, as well as the broken stream allows.
fn report(w: &mut impl Write, e: AgentError) -> AgentError {
    if !matches!(
        e,
        AgentError::Proto(ProtoError::Closed | ProtoError::Truncated | ProtoError::Io(_))
            | AgentError::Auth(_)
    ) {
        let mut text = error_chain(&e);
        if let Some(h) = e.hint() {
            text.push_str("\nhint: ");
            text.push_str(h);
        }
        let _ = write_frame(w, &Message::Error(text));
        let _ = w.flush();
    }
    e
}

/// Where a `Begin` points on this machine.
///
/// # Errors
/// [`AgentError::Confined`] when a confined agent is asked for anything but a plain relative
/// path below its root, or a path component there is a symlink.
fn resolve_dest(begin: &Begin, opts: &AgentOptions) -> Result<PathBuf, AgentError> {
    if let Some(root) = &opts.confine {
        return confined_dest(root, &begin.dest);
    }
    let raw = begin.dest.as_str();
    let (raw, base) = match raw.strip_prefix("~/") {
        Some(rest) => (rest, DestBase::Home),
        None if raw == "~" => ("", DestBase::Home),
        None => (raw, begin.base),
    };
    let p = PathBuf::from(raw);
    if p.is_absolute() {
        return Ok(p);
    }
    let missing = |what: &str| AgentError::Dest {
        op: "resolve the base directory for",
        path: p.clone(),
        source: std::io::Error::other(format!("no {what} known on this machine")),
    };
    let base_dir = match base {
        DestBase::Cwd => std::env::current_dir().map_err(|source| AgentError::Dest {
            op: "resolve the current directory for",
            path: p.clone(),
            source,
        })?,
        DestBase::Home => opts.home.clone().ok_or_else(|| missing("home directory"))?,
        DestBase::Cache => opts
            .cache_dir
            .clone()
            .ok_or_else(|| missing("cache directory"))?,
    };
    Ok(base_dir.join(p))
}

/// `root/rel` for a confined agent, creating missing directories, refusing symlinks on the way.
fn confined_dest(root: &Path, raw: &str) -> Result<PathBuf, AgentError> {
    // Errors name the requested path, never the server's own directories.
    let refused = || AgentError::Confined(PathBuf::from(raw));
    let rel = RelPath::new(raw).map_err(|_| refused())?;
    let mut p = root.to_owned();
    for c in rel.as_str().split('/') {
        p.push(c);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(refused()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Err(e) = std::fs::create_dir(&p)
                    && e.kind() != std::io::ErrorKind::AlreadyExists
                {
                    return Err(AgentError::Dest {
                        op: "create",
                        path: p,
                        source: e,
                    });
                }
                if !std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
                    return Err(refused());
                }
            }
            Err(source) => {
                return Err(AgentError::Dest {
                    op: "inspect",
                    path: p,
                    source,
                });
            }
        }
    }
    Ok(p)
}

fn session<R: BufRead, W: Write + Send>(
    r: &mut R,
    w: &mut W,
    begin: Begin,
    opts: &AgentOptions,
) -> Result<(), AgentError> {
    let dest = resolve_dest(&begin, opts)?;
    let dest_err = |op: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| AgentError::Dest { op, path, source }
    };
    let state_dir = dest.join(STATE_DIR);
    let ours = state_dir.is_dir();
    if !begin.adopt && !ours {
        match std::fs::read_dir(&dest) {
            Ok(it) => {
                // `.rdist` alone means another first sync got here a moment earlier.
                if it.flatten().any(|e| e.file_name() != STATE_DIR) {
                    return Err(AgentError::Foreign(dest));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(dest_err("read destination", &dest)(e)),
        }
    }
    // A dry run into a destination rdist never wrote creates nothing, not even `.rdist`.
    let _lock = if begin.dry_run && !ours {
        None
    } else {
        std::fs::create_dir_all(&state_dir).map_err(dest_err("create", &state_dir))?;
        Some(DestLock::acquire(&dest, begin.lock_wait_ms)?)
    };
    let filter = Filter::new(&begin.ignore)?;
    let t0 = std::time::Instant::now();
    let current = state::current(&dest, &filter);
    if std::env::var_os("RDIST_TIMINGS").is_some() {
        eprintln!(
            "agent timings: current state {:.3?} ({} rehashed, {} directories not read)",
            t0.elapsed(),
            current.rehashed,
            current.reused_dirs
        );
    }
    // Computed before waiting: the controller is usually still scanning, so this is free time.
    // The listing can be saved before the sync changes anything: a directory the sync changes
    // gets a new stamp, so its saved names are not used again.
    if !begin.dry_run {
        let _ = state::save_listing(&dest, &current);
    }
    let framed = current.manifest.framed();
    let ours = framed.digest();
    let (digest, entries) = match read_frame(r)?.0 {
        Message::Offer { digest, entries } => (digest, entries),
        Message::Error(e) => return Err(ProtoError::Remote(e).into()),
        other => {
            return Err(ProtoError::Unexpected {
                got: other.name(),
                expected: "Offer",
            }
            .into());
        }
    };
    if ours == digest {
        if current.rehashed > 0 && !begin.dry_run {
            let _ = state::save(
                &dest,
                apply::file_list(
                    &current.manifest,
                    &Default::default(),
                    &current,
                    &[],
                    &Default::default(),
                ),
                current.kept.clone(),
            );
        }
        write_frame(w, &Message::UpToDate)?;
        w.flush().map_err(ProtoError::from)?;
        return Ok(());
    }
    let t1 = std::time::Instant::now();
    let want = match receive_changed(r, w, &current.manifest, &framed, digest, entries, &filter)? {
        Some(want) => want,
        None => {
            write_frame(w, &Message::NeedManifest)?;
            w.flush().map_err(ProtoError::from)?;
            receive_manifest(r, digest, entries, &filter)?
        }
    };
    if std::env::var_os("RDIST_TIMINGS").is_some() {
        eprintln!("agent timings: manifest exchange {:.3?}", t1.elapsed());
    }
    let done = apply::run(r, w, &dest, &begin, &current, &want, opts);
    crate::drop_in_background((current, want));
    done
}

/// Reads `Manifest` frames until `ManifestEnd`, at most `limit` entries.
fn read_entries(r: &mut impl BufRead, limit: u64) -> Result<Vec<Entry>, AgentError> {
    let mut entries = Vec::with_capacity(limit.min(1 << 20) as usize);
    loop {
        match read_frame(r)?.0 {
            Message::Manifest(mut part) => {
                if entries.len() as u64 + part.len() as u64 > limit {
                    return Err(AgentError::Invalid(format!(
                        "manifest has more than the announced {limit} entries"
                    )));
                }
                entries.append(&mut part);
            }
            Message::ManifestEnd => return Ok(entries),
            Message::Error(e) => return Err(ProtoError::Remote(e).into()),
            other => {
                return Err(ProtoError::Unexpected {
                    got: other.name(),
                    expected: "Manifest",
                }
                .into());
            }
        }
    }
}

/// Checks a complete manifest from the peer: structure, digest, and that it names nothing the
/// ignore rules protect.
fn checked(entries: Vec<Entry>, digest: Hash, filter: &Filter) -> Result<Manifest, AgentError> {
    not_ignored(&entries, filter)?;
    verified(entries, digest)
}

/// Refuses entries that name something the ignore rules protect.
fn not_ignored(entries: &[Entry], filter: &Filter) -> Result<(), AgentError> {
    match entries
        .par_iter()
        .position_first(|e| filter.is_ignored(&e.path, e.kind.is_dir()))
    {
        Some(i) => Err(AgentError::IgnoredEntry(entries[i].path.clone())),
        None => Ok(()),
    }
}

/// Checks the structure of sorted `entries` and that they match the announced digest.
fn verified(entries: Vec<Entry>, digest: Hash) -> Result<Manifest, AgentError> {
    let want = Manifest::from_sorted_checked(entries)?;
    if want.digest() != digest {
        return Err(AgentError::Invalid(
            "manifest does not match its announced digest".to_owned(),
        ));
    }
    Ok(want)
}

fn receive_manifest(
    r: &mut impl BufRead,
    digest: Hash,
    entries_announced: u64,
    filter: &Filter,
) -> Result<Manifest, AgentError> {
    let entries = read_entries(r, entries_announced.min(MAX_ENTRIES))?;
    checked(entries, digest, filter)
}

/// Builds the wanted manifest from the entries of the directories that differ, asked for by
/// comparing per-directory summaries, and this side's own entries for the rest. `None` when
/// the full manifest is the better deal (nothing here yet, most directories differ) or the
/// rebuilt manifest does not match the digest.
fn receive_changed<R: BufRead, W: Write>(
    r: &mut R,
    w: &mut W,
    current: &Manifest,
    framed: &Framed,
    digest: Hash,
    entries_announced: u64,
    filter: &Filter,
) -> Result<Option<Manifest>, AgentError> {
    if current.is_empty() {
        return Ok(None);
    }
    write_frame(w, &Message::NeedSummary)?;
    w.flush().map_err(ProtoError::from)?;
    // Ours is computed while the controller computes and sends its own.
    let index = current.dir_index(framed);
    let ours: FxHashMap<[u8; 8], ([u8; 8], usize)> = index
        .keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let (path, content) = k.split_at(8);
            (
                path.try_into().expect("8"),
                (content.try_into().expect("8"), i),
            )
        })
        .collect();
    let limit = entries_announced.min(MAX_ENTRIES) + 1;
    let mut theirs: Vec<[u8; 16]> = Vec::new();
    loop {
        match read_frame(r)?.0 {
            Message::Summary(mut part) => {
                if theirs.len() as u64 + part.len() as u64 > limit {
                    return Err(AgentError::Invalid(
                        "summary has more directories than entries".to_owned(),
                    ));
                }
                theirs.append(&mut part);
            }
            Message::SummaryEnd => break,
            Message::Error(e) => return Err(ProtoError::Remote(e).into()),
            other => {
                return Err(ProtoError::Unexpected {
                    got: other.name(),
                    expected: "Summary",
                }
                .into());
            }
        }
    }
    let mut need = Vec::new();
    let mut same = Vec::new();
    for (i, k) in theirs.iter().enumerate() {
        let (path, content) = k.split_at(8);
        let path: [u8; 8] = path.try_into().expect("8");
        match ours.get(&path) {
            Some((c, ours_i)) if c[..] == *content => same.push(*ours_i),
            _ => need.push(i as u32),
        }
    }
    if need.len() * 2 > theirs.len() {
        return Ok(None);
    }
    write_frame(w, &Message::NeedDirs(need))?;
    w.flush().map_err(ProtoError::from)?;
    let theirs = read_entries(r, entries_announced.min(MAX_ENTRIES))?;
    // Only the peer's entries need the ignore check: ours were walked with the same rules.
    not_ignored(&theirs, filter)?;
    // Ours in the directories that match, merged with theirs: both lists are sorted by path
    // (theirs unless the peer lies, which the check below catches). Each entry comes with the
    // index of its copy on this side, whose encoding is then reused.
    const THEIRS: usize = usize::MAX;
    let mut same_dir = vec![false; index.keys.len()];
    for i in same {
        same_dir[i] = true;
    }
    let keep: Vec<bool> = index
        .parent
        .iter()
        .map(|&d| same_dir.get(d as usize).copied().unwrap_or(false))
        .collect();
    let kept = keep.iter().filter(|&&k| k).count();
    let mut entries = Vec::with_capacity(kept + theirs.len());
    let mut origin = Vec::with_capacity(kept + theirs.len());
    let mut theirs = theirs.into_iter().peekable();
    for (k, e) in current.entries().iter().enumerate() {
        if !keep[k] {
            continue;
        }
        while let Some(t) = theirs.next_if(|t| t.path < e.path) {
            entries.push(t);
            origin.push(THEIRS);
        }
        entries.push(e.clone());
        origin.push(k);
    }
    for t in theirs {
        entries.push(t);
        origin.push(THEIRS);
    }
    // Anything off (a hash collision, a peer that lies) falls back to the full manifest, which
    // is then checked strictly.
    let Ok(want) = Manifest::from_sorted_checked(entries) else {
        return Ok(None);
    };
    let reused = want.framed_reusing(|i| (origin[i] != THEIRS).then(|| framed.entry(origin[i])));
    Ok((reused.digest() == digest).then_some(want))
}

/// The outcome of a sync that changed nothing, for dry runs.
fn dry_outcome(problems: Vec<crate::walk::Problem>) -> Outcome {
    Outcome {
        problems: problems.into_iter().map(|p| (p.path, p.message)).collect(),
        ..Outcome::default()
    }
}
