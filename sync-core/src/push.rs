//! The controller's side of a sync: offer the manifest digest, send the manifest when the agent
//! asks, then answer the agent's wants with file data: small files batched and read in
//! parallel, big files streamed in chunks, changed big files as deltas against the signature the
//! agent sent. A reader thread drains the agent's messages while this side writes, so neither
//! side can block the other on full pipes.

use std::io::{BufReader, BufWriter, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use rayon::prelude::*;

use crate::delta::{self, DELTA_CHUNK, Differ, read_new_chunk};
use crate::hash::{Cv, LEAF};
use crate::manifest::{Entry, Kind};
use crate::proto::{
    Begin, DATA_CHUNK, FileData, Message, Outcome, Plan, ProtoError, Want, read_frame, recv_hello,
    send_hello, write_data_frame, write_frame, write_frame_as,
};
use crate::scan::SourceTree;

/// Files up to this size are read whole and batched with others.
const SMALL_FILE: u64 = 256 << 10;
/// Small files are read ahead (in parallel) about this many bytes at a time.
const READ_AHEAD: u64 = 4 << 20;
/// Manifest entries are sent in frames of about this many bytes.
const MANIFEST_FRAME: usize = 1 << 20;

/// What to sync where.
#[derive(Debug, Clone)]
pub struct PushOptions {
    pub dest: String,
    pub ignore: Vec<String>,
    pub dry_run: bool,
    pub fsync: bool,
    pub adopt: bool,
    pub lock_wait_ms: u64,
    /// What a relative `dest` is relative to on the agent's machine.
    pub base: crate::proto::DestBase,
    /// The shared token of an `rdist serve` peer.
    pub token: Option<crate::auth::Key>,
    /// Changed files at least this big go as deltas (see `delta::DELTA_MIN_SIZE`).
    pub delta_min: u64,
    /// This binary's version, for the handshake.
    pub version: String,
    /// Compress manifests and file data with zstd, if the agent reads it (slow links).
    pub compress: bool,
    /// Let the agent ask for big files by their leaves (see [`crate::proto::Begin::leaves`]).
    pub leaves: bool,
    /// The agent is on this machine: it reads the files it wants whole from the source tree
    /// (see [`crate::proto::Begin::local_sources`]).
    pub local_sources: bool,
}

/// What one target's sync did.
#[derive(Debug, Clone, Default)]
pub struct PushReport {
    pub up_to_date: bool,
    pub plan: Plan,
    pub outcome: Outcome,
    /// Manifest indices of the files sent, whole or by delta. (A file whose source path went
    /// to a local agent counts unless the agent reports a problem with it: it read nothing.)
    pub sent: Vec<u32>,
    pub literal_bytes: u64,
    pub delta_bytes: u64,
    pub delta_files: u64,
    pub wire_sent: u64,
    pub wire_received: u64,
    /// The peer's version from its hello.
    pub agent_version: String,
    /// Bytes the peer printed before its handshake (a login banner).
    pub preamble: Vec<u8>,
}

/// Why a target's sync failed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error(transparent)]
    Proto(#[from] ProtoError),
    #[error("{message}")]
    Remote {
        message: String,
        hint: Option<String>,
    },
    #[error("agent sent invalid data: {0}")]
    Invalid(String),
    #[error("{0}")]
    Auth(String),
}

fn remote(text: String) -> PushError {
    match text.split_once("\nhint: ") {
        Some((m, h)) => PushError::Remote {
            message: m.to_owned(),
            hint: Some(h.to_owned()),
        },
        None => PushError::Remote {
            message: text,
            hint: None,
        },
    }
}

fn unexpected(got: &Message, expected: &'static str) -> PushError {
    match got {
        Message::Error(e) => remote(e.clone()),
        other => ProtoError::Unexpected {
            got: other.name(),
            expected,
        }
        .into(),
    }
}

/// Called with (files, bytes) as data is sent, and with (0, 0) once all the data asked for so
/// far has been sent (the agent is finishing).
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Sync);

/// A connection to an agent after the handshake (and authentication): ready for a `Begin`, and
/// again after each completed sync, so one connection can serve every destination on a host.
pub struct Connection<R: Read, W: Write> {
    r: BufReader<R>,
    w: BufWriter<W>,
    /// The peer's version from its hello.
    pub agent_version: String,
    /// Bytes the peer printed before its handshake (a login banner).
    pub preamble: Vec<u8>,
    /// Whether the peer reads zstd-compressed frames.
    pub reads_zstd: bool,
}

/// A connection with a sync begun: the agent examines its destination while the controller is
/// still scanning.
pub struct Session<R: Read, W: Write> {
    conn: Connection<R, W>,
    opts: PushOptions,
    report: PushReport,
}

/// Syncs `tree` to the agent at the other end of `reader`/`writer`.
///
/// # Errors
/// A protocol failure, an agent-side fatal error, or invalid data from the agent.
pub fn push<R: Read + Send, W: Write + Send>(
    tree: &SourceTree,
    reader: R,
    writer: W,
    opts: &PushOptions,
    progress: Progress<'_>,
) -> Result<PushReport, PushError> {
    Session::open(reader, writer, opts.clone())?.sync(tree, progress)
}

impl<R: Read + Send, W: Write + Send> Connection<R, W> {
    /// Shakes hands (and authenticates with `token`, for `rdist serve`).
    ///
    /// # Errors
    /// When the handshake or authentication fails.
    pub fn open(
        reader: R,
        writer: W,
        version: &str,
        token: Option<&crate::auth::Key>,
    ) -> Result<Self, PushError> {
        let mut r = BufReader::with_capacity(256 << 10, reader);
        let mut w = BufWriter::with_capacity(1 << 20, writer);
        // If the peer exited without starting the protocol our hello may hit a closed pipe;
        // what it printed instead (still in the pipe) is the better error, so read that first.
        let sent = send_hello(&mut w, version);
        let (hello, preamble) = recv_hello(&mut r, version)?;
        sent?;
        if let Some(key) = token {
            crate::auth::client(&mut r, &mut w, key).map_err(|e| match e {
                crate::auth::AuthError::Proto(p) => PushError::from(p),
                other => PushError::Auth(other.to_string()),
            })?;
        }
        Ok(Connection {
            r,
            w,
            reads_zstd: hello.reads_zstd(),
            agent_version: hello.version,
            preamble,
        })
    }

    /// Asks the agent about its host, a destination and a Python (`rdist check`).
    ///
    /// # Errors
    /// When the connection fails or the agent refuses.
    pub fn probe(
        &mut self,
        req: crate::proto::ProbeRequest,
    ) -> Result<crate::proto::ProbeReport, PushError> {
        write_frame(&mut self.w, &Message::Probe(req))?;
        self.w.flush().map_err(ProtoError::from)?;
        match read_frame(&mut self.r)?.0 {
            Message::Probed(rep) => Ok(rep),
            other => Err(unexpected(&other, "Probed")),
        }
    }

    /// The buffered streams, for traffic after the syncs (test workers).
    pub fn into_parts(self) -> (BufReader<R>, BufWriter<W>) {
        (self.r, self.w)
    }

    /// Starts a sync to `opts.dest`.
    ///
    /// # Errors
    /// When the connection fails.
    pub fn begin(mut self, opts: PushOptions) -> Result<Session<R, W>, PushError> {
        let mut report = PushReport {
            agent_version: self.agent_version.clone(),
            preamble: std::mem::take(&mut self.preamble),
            ..PushReport::default()
        };
        report.wire_sent += write_frame(
            &mut self.w,
            &Message::Begin(Begin {
                dest: opts.dest.clone(),
                ignore: opts.ignore.clone(),
                dry_run: opts.dry_run,
                fsync: opts.fsync,
                adopt: opts.adopt,
                lock_wait_ms: opts.lock_wait_ms,
                base: opts.base,
                delta_min: opts.delta_min,
                leaves: opts.leaves,
                local_sources: opts.local_sources,
            }),
        )? as u64;
        self.w.flush().map_err(ProtoError::from)?;
        Ok(Session {
            conn: self,
            opts,
            report,
        })
    }
}

impl<R: Read + Send, W: Write + Send> Session<R, W> {
    /// Shakes hands and sends `Begin`.
    ///
    /// # Errors
    /// When the handshake fails.
    pub fn open(reader: R, writer: W, opts: PushOptions) -> Result<Self, PushError> {
        Connection::open(reader, writer, &opts.version, opts.token.as_ref())?.begin(opts)
    }

    /// Offers `tree` and sends whatever the agent asks for.
    ///
    /// # Errors
    /// A protocol failure, an agent-side fatal error, or invalid data from the agent.
    pub fn sync(self, tree: &SourceTree, progress: Progress<'_>) -> Result<PushReport, PushError> {
        self.sync_reuse(tree, progress).map(|(report, _)| report)
    }

    /// Like [`Session::sync`], and hands the connection back for the next destination.
    ///
    /// # Errors
    /// A protocol failure, an agent-side fatal error, or invalid data from the agent.
    pub fn sync_reuse(
        self,
        tree: &SourceTree,
        progress: Progress<'_>,
    ) -> Result<(PushReport, Connection<R, W>), PushError> {
        let Session {
            conn:
                Connection {
                    mut r,
                    mut w,
                    agent_version,
                    preamble,
                    reads_zstd,
                },
            opts,
            mut report,
        } = self;
        let back = |r, w| Connection {
            r,
            w,
            agent_version: agent_version.clone(),
            preamble: Vec::new(),
            reads_zstd,
        };
        // Entries and file data go compressed when asked for and the agent can read it.
        let packed = opts.compress && reads_zstd;
        drop(preamble);
        let m = &tree.manifest;
        let offered = write_frame(
            &mut w,
            &Message::Offer {
                digest: tree.digest,
                entries: m.len() as u64,
            },
        )
        .and_then(|n| w.flush().map(|()| n).map_err(ProtoError::from));
        report.wire_sent += offered.map_err(|e| explained(&mut r, e))? as u64;
        // The agent answers the offer: up to date, or it asks for the whole manifest, or for a
        // per-directory summary and then the entries of the directories that differ.
        let index = std::cell::OnceCell::new();
        report.plan = loop {
            let (msg, n) = read_frame(&mut r)?;
            report.wire_received += n as u64;
            match msg {
                Message::UpToDate => {
                    report.up_to_date = true;
                    return Ok((report, back(r, w)));
                }
                Message::NeedManifest => {
                    send_entries(&mut w, m.entries().iter(), &mut report, packed)
                        .map_err(|e| explained_push(&mut r, e))?;
                }
                Message::NeedSummary => {
                    let keys = &index.get_or_init(|| m.dir_index(&tree.framed)).keys;
                    for part in keys.chunks(64 << 10) {
                        report.wire_sent +=
                            write_frame_as(&mut w, &Message::Summary(part.to_vec()), packed)?
                                as u64;
                    }
                    report.wire_sent += write_frame(&mut w, &Message::SummaryEnd)? as u64;
                    w.flush().map_err(ProtoError::from)?;
                }
                Message::NeedDirs(wanted) => {
                    let index = index.get_or_init(|| m.dir_index(&tree.framed));
                    let mut asked = vec![false; index.keys.len()];
                    for i in wanted {
                        *asked.get_mut(i as usize).ok_or_else(|| {
                            PushError::Invalid(format!(
                                "asked for directory #{i} of {}",
                                index.keys.len()
                            ))
                        })? = true;
                    }
                    let picked = m
                        .entries()
                        .iter()
                        .zip(&index.parent)
                        .filter(|(_, d)| asked.get(**d as usize).copied().unwrap_or(false))
                        .map(|(e, _)| e);
                    send_entries(&mut w, picked, &mut report, packed)
                        .map_err(|e| explained_push(&mut r, e))?;
                }
                Message::Plan(p) => break p,
                other => {
                    return Err(unexpected(
                        &other,
                        "UpToDate, NeedManifest, NeedSummary, NeedDirs or Plan",
                    ));
                }
            }
        };
        if opts.dry_run {
            let (msg, n) = read_frame(&mut r)?;
            report.wire_received += n as u64;
            report.outcome = match msg {
                Message::Done(o) => o,
                other => return Err(unexpected(&other, "Done")),
            };
            return Ok((report, back(r, w)));
        }
        let (r, w) = transfer(
            tree,
            r,
            w,
            &mut report,
            progress,
            packed,
            opts.local_sources,
        )?;
        Ok((report, back(r, w)))
    }
}

/// A write to the agent failed. An agent that refuses a sync sends `Error` and exits, so our
/// next write can hit a closed pipe: the agent's explanation, still readable, is the real error.
fn explained(r: &mut impl Read, e: ProtoError) -> PushError {
    if matches!(e, ProtoError::Io(_))
        && let Ok((Message::Error(text), _)) = read_frame(r)
    {
        return remote(text);
    }
    e.into()
}

fn explained_push(r: &mut impl Read, e: PushError) -> PushError {
    match e {
        PushError::Proto(p) => explained(r, p),
        other => other,
    }
}

/// Sends `entries` in frames of about `MANIFEST_FRAME` bytes, then `ManifestEnd`.
fn send_entries<'a, W: Write>(
    w: &mut W,
    entries: impl Iterator<Item = &'a Entry>,
    report: &mut PushReport,
    packed: bool,
) -> Result<(), PushError> {
    let mut part: Vec<Entry> = Vec::new();
    let mut bytes = 0;
    for e in entries {
        bytes += e.path.as_str().len() + 64;
        part.push(e.clone());
        if bytes >= MANIFEST_FRAME {
            report.wire_sent +=
                write_frame_as(w, &Message::Manifest(std::mem::take(&mut part)), packed)? as u64;
            bytes = 0;
        }
    }
    if !part.is_empty() {
        report.wire_sent += write_frame_as(w, &Message::Manifest(part), packed)? as u64;
    }
    report.wire_sent += write_frame(w, &Message::ManifestEnd)? as u64;
    w.flush().map_err(ProtoError::from)?;
    Ok(())
}

/// The data phase: a reader thread drains the agent's messages while this thread answers them.
fn transfer<R: Read + Send, W: Write + Send>(
    tree: &SourceTree,
    mut r: BufReader<R>,
    w: BufWriter<W>,
    report: &mut PushReport,
    progress: Progress<'_>,
    packed: bool,
    local_sources: bool,
) -> Result<(BufReader<R>, BufWriter<W>), PushError> {
    let received = AtomicU64::new(report.wire_received);
    let streams = std::thread::scope(|scope| -> Result<(BufReader<R>, BufWriter<W>), PushError> {
        // Owned by this closure: an early error drops (closes) the writer before the scope
        // joins the reader, so the agent sees end-of-stream and the reader is not left waiting.
        let mut w = w;
        let (tx, rx) = mpsc::sync_channel::<Result<Message, ProtoError>>(64);
        let received = &received;
        let reader = scope.spawn(move || {
            loop {
                let res = read_frame(&mut r);
                let stop = !matches!(res, Ok((Message::Want(_) | Message::WantEnd, _)));
                let res = res.map(|(m, n)| {
                    received.fetch_add(n as u64, Ordering::Relaxed);
                    m
                });
                if tx.send(res).is_err() || stop {
                    return r;
                }
            }
        });
        let mut sender = Sender {
            tree,
            w: &mut w,
            report: &mut *report,
            progress,
            batch: Vec::new(),
            batch_bytes: 0,
            packed,
            local_sources,
            sources: Vec::new(),
        };
        // After a failed write, the agent's own `Error` (if it sent one) explains it better.
        let explain = |e: PushError| -> PushError {
            if !matches!(e, PushError::Proto(ProtoError::Io(_))) {
                return e;
            }
            while let Ok(msg) = rx.recv_timeout(std::time::Duration::from_secs(2)) {
                if let Ok(Message::Error(text)) = msg {
                    return remote(text);
                }
            }
            e
        };
        loop {
            match rx.recv() {
                Ok(Ok(Message::Want(wants))) => sender.answer(wants).map_err(explain)?,
                Ok(Ok(Message::WantEnd)) => {
                    let ended = sender.flush_batch().and_then(|()| {
                        sender.report.wire_sent += write_frame(sender.w, &Message::DataEnd)? as u64;
                        sender.w.flush().map_err(ProtoError::from)?;
                        Ok(())
                    });
                    ended.map_err(explain)?;
                    (sender.progress)(0, 0);
                }
                Ok(Ok(Message::Done(o))) => {
                    sender.report.outcome = o;
                    sender.unsend_failed_sources();
                    break;
                }
                Ok(Ok(other)) => return Err(unexpected(&other, "Want or Done")),
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => return Err(ProtoError::Closed.into()),
            }
        }
        let r = reader
            .join()
            .map_err(|_| PushError::Invalid("the reader thread panicked".to_owned()))?;
        Ok((r, w))
    })?;
    report.wire_received = received.into_inner();
    Ok(streams)
}

/// A small source file's content, at most one byte past its manifest `size` (which is enough
/// for the agent to see that it changed; see [`crate::hash::open_file`]).
fn read_source(path: &std::path::Path, size: u64) -> std::io::Result<Vec<u8>> {
    let mut data = Vec::with_capacity(size as usize + 1);
    crate::hash::open_file(path)?
        .take(size + 1)
        .read_to_end(&mut data)?;
    Ok(data)
}

struct Sender<'a, W: Write> {
    tree: &'a SourceTree,
    w: &'a mut W,
    report: &'a mut PushReport,
    progress: Progress<'a>,
    batch: Vec<FileData>,
    batch_bytes: usize,
    /// Send data frames compressed.
    packed: bool,
    /// Answer wants for whole files with their paths (see [`PushOptions::local_sources`]).
    local_sources: bool,
    /// The files answered with their paths, and their sizes: counted as sent when their paths
    /// go, and taken back once the agent reports that it could not put one in place.
    sources: Vec<(u32, u64)>,
}

impl<W: Write> Sender<'_, W> {
    fn send(&mut self, m: &Message) -> Result<(), PushError> {
        self.report.wire_sent += write_frame_as(self.w, m, self.packed)? as u64;
        Ok(())
    }

    fn file(&self, index: u32) -> Result<(u64, &std::path::Path), PushError> {
        match self.tree.manifest.entries().get(index as usize) {
            Some(Entry {
                kind: Kind::File { size, .. },
                ..
            }) => Ok((*size, &self.tree.sources[index as usize])),
            _ => Err(PushError::Invalid(format!(
                "want for entry #{index}, which is not a file"
            ))),
        }
    }

    fn answer(&mut self, wants: Vec<Want>) -> Result<(), PushError> {
        if self.local_sources {
            return self.answer_with_sources(wants);
        }
        // Small files with their manifest sizes, looked up (and checked) once.
        let mut small: Vec<(u32, u64)> = Vec::new();
        let mut rest = Vec::new();
        for want in wants {
            match want {
                Want::Whole { index } => match self.file(index)?.0 {
                    size if size <= SMALL_FILE => small.push((index, size)),
                    _ => rest.push(want),
                },
                other => rest.push(other),
            }
        }
        let tree = self.tree;
        // Read in parallel, a few MiB at a time, so memory stays bounded whatever the batch.
        let mut start = 0;
        while start < small.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < small.len() && (end == start || bytes < READ_AHEAD) {
                bytes += small[end].1;
                end += 1;
            }
            let read: Vec<(u32, std::io::Result<Vec<u8>>)> = small[start..end]
                .par_iter()
                .map(|&(i, size)| (i, read_source(&tree.sources[i as usize], size)))
                .collect();
            start = end;
            self.take_read(read)?;
        }
        // The last small files go now, not after the big ones that follow: the agent's writers
        // install them while the big ones stream.
        if !rest.is_empty() {
            self.flush_batch()?;
        }
        self.answer_rest(rest)
    }

    /// Streams big files, deltas and leaves, one file after another.
    fn answer_rest(&mut self, wants: Vec<Want>) -> Result<(), PushError> {
        for want in wants {
            match want {
                Want::Whole { index } => self.stream_whole(index)?,
                Want::Delta { index, signature } => {
                    let differ =
                        Differ::new(signature).map_err(|e| PushError::Invalid(e.to_string()))?;
                    self.stream_delta(index, &differ)?;
                }
                Want::Leaves { index, cvs } => self.stream_leaves(index, &cvs)?,
            }
        }
        Ok(())
    }

    /// Answers `wants` to an agent on this machine: the files wanted whole by their paths, in
    /// one message, the others as usual.
    fn answer_with_sources(&mut self, wants: Vec<Want>) -> Result<(), PushError> {
        use std::os::unix::ffi::OsStringExt;
        let mut sources = Vec::new();
        let mut rest = Vec::new();
        for want in wants {
            match want {
                Want::Whole { index } => {
                    let (size, path) = self.file(index)?;
                    // The agent does not share this process's working directory.
                    let path = std::path::absolute(path).map_err(ProtoError::from)?;
                    sources.push(crate::proto::SourcePath {
                        index,
                        path: path.into_os_string().into_vec(),
                    });
                    self.report.sent.push(index);
                    self.report.literal_bytes += size;
                    self.sources.push((index, size));
                    (self.progress)(1, size);
                }
                other => rest.push(other),
            }
        }
        if !sources.is_empty() {
            self.send(&Message::Sources(sources))?;
        }
        if !rest.is_empty() {
            self.answer_rest(rest)?;
        }
        Ok(())
    }

    /// Takes back from the report the files answered with their paths that the agent could
    /// not put in place (gone, unreadable or changed since the scan): their bytes never went
    /// anywhere, as a file the controller cannot read is skipped and not counted either.
    fn unsend_failed_sources(&mut self) {
        if self.sources.is_empty() || self.report.outcome.problems.is_empty() {
            return;
        }
        let m = &self.tree.manifest;
        let problems: std::collections::HashSet<usize> = self
            .report
            .outcome
            .problems
            .iter()
            .filter_map(|(p, _)| crate::path::RelPath::new(p.as_str()).ok())
            .filter_map(|p| m.position(&p))
            .collect();
        let mut failed = std::collections::HashSet::new();
        for &(index, size) in &self.sources {
            if problems.contains(&(index as usize)) && failed.insert(index) {
                self.report.literal_bytes = self.report.literal_bytes.saturating_sub(size);
            }
        }
        if !failed.is_empty() {
            self.report.sent.retain(|i| !failed.contains(i));
        }
    }

    fn take_read(&mut self, read: Vec<(u32, std::io::Result<Vec<u8>>)>) -> Result<(), PushError> {
        for (index, res) in read {
            match res {
                Ok(data) => {
                    self.report.sent.push(index);
                    self.report.literal_bytes += data.len() as u64;
                    (self.progress)(1, data.len() as u64);
                    self.batch_bytes += data.len();
                    self.batch.push(FileData { index, data });
                    if self.batch_bytes >= DATA_CHUNK {
                        self.flush_batch()?;
                    }
                }
                Err(e) => self.skip(index, format!("cannot read on the controller: {e}"))?,
            }
        }
        Ok(())
    }

    fn flush_batch(&mut self) -> Result<(), PushError> {
        if !self.batch.is_empty() {
            let batch = std::mem::take(&mut self.batch);
            self.batch_bytes = 0;
            self.send(&Message::Files(batch))?;
        }
        Ok(())
    }

    /// Tells the agent that `index` will not come, and why.
    fn skip(&mut self, index: u32, reason: String) -> Result<(), PushError> {
        self.send(&Message::Skip { index, reason })
    }

    /// Opens the source of `index`; `None` (after telling the agent) when it cannot be read.
    fn open_source(&mut self, index: u32) -> Result<Option<(u64, std::fs::File)>, PushError> {
        let (size, path) = self.file(index)?;
        match crate::hash::open_file(path) {
            Ok(f) => Ok(Some((size, f))),
            Err(e) => {
                self.skip(index, format!("cannot read on the controller: {e}"))?;
                Ok(None)
            }
        }
    }

    fn stream_whole(&mut self, index: u32) -> Result<(), PushError> {
        let Some((size, mut f)) = self.open_source(index)? else {
            return Ok(());
        };
        let mut left = size;
        let mut buf = vec![0u8; DATA_CHUNK.min(size as usize).max(1)];
        loop {
            let want = left.min(buf.len() as u64) as usize;
            let n = match crate::hash::read_full(&mut f, &mut buf[..want]) {
                Ok(n) => n,
                Err(e) => {
                    return self.skip(index, format!("read failed on the controller: {e}"));
                }
            };
            if n < want {
                return self.skip(index, "file shrank while syncing".to_owned());
            }
            left -= n as u64;
            self.report.literal_bytes += n as u64;
            (self.progress)(0, n as u64);
            let last = left == 0;
            if self.packed {
                self.send(&Message::Data {
                    index,
                    bytes: buf[..n].to_vec(),
                    last,
                })?;
            } else {
                self.report.wire_sent += write_data_frame(self.w, index, &buf[..n], last)? as u64;
            }
            if last {
                break;
            }
        }
        self.report.sent.push(index);
        (self.progress)(1, 0);
        Ok(())
    }

    fn stream_delta(&mut self, index: u32, differ: &Differ) -> Result<(), PushError> {
        let Some((size, mut f)) = self.open_source(index)? else {
            return Ok(());
        };
        let chunks = (size as usize).div_ceil(DELTA_CHUNK).max(1);
        let mut buf = Vec::new();
        for chunk in 0..chunks {
            if let Err(e) = read_new_chunk(&mut f, &mut buf) {
                return self.skip(index, format!("read failed on the controller: {e}"));
            }
            let delta = differ
                .diff(chunk, &buf)
                .map_err(|e| PushError::Invalid(e.to_string()))?;
            self.send_chunk(index, chunk, chunks, delta, buf.len() as u64)?;
        }
        self.delta_sent(index);
        Ok(())
    }

    /// Sends chunk `chunk` of `chunks` of file `index` (`bytes` of it) as `delta`.
    fn send_chunk(
        &mut self,
        index: u32,
        chunk: usize,
        chunks: usize,
        delta: Vec<u8>,
        bytes: u64,
    ) -> Result<(), PushError> {
        self.report.delta_bytes += delta.len() as u64;
        (self.progress)(0, bytes);
        let last = chunk + 1 == chunks;
        self.send(&Message::Delta {
            index,
            chunk: chunk as u32,
            delta,
            last,
        })?;
        if !last {
            // A delta is mostly a few bytes: without this the agent would wait for the whole
            // file's before applying the first, instead of applying chunk by chunk while the
            // next is diffed.
            self.w.flush().map_err(ProtoError::from)?;
        }
        Ok(())
    }

    fn delta_sent(&mut self, index: u32) {
        self.report.sent.push(index);
        self.report.delta_files += 1;
        (self.progress)(1, 0);
    }

    /// Sends file `index` leaf by leaf as `Delta` chunks: a copy of the agent's old leaf where
    /// its chaining value (`old`) is this file's, the leaf whole otherwise. The file's leaves
    /// come from the scan, or are read now (a file the hash cache knew).
    fn stream_leaves(&mut self, index: u32, old: &[Cv]) -> Result<(), PushError> {
        use std::os::unix::fs::FileExt;
        let Some((size, f)) = self.open_source(index)? else {
            return Ok(());
        };
        let path = &self.tree.manifest.entries()[index as usize].path;
        let computed;
        let new: &[Cv] = match self.tree.leaves.get(path) {
            Some(cvs) => cvs,
            None if size > LEAF => {
                match crate::hash::hash_file_leaves(&self.tree.sources[index as usize], size) {
                    Ok((_, cvs)) => {
                        computed = cvs;
                        &computed
                    }
                    Err(e) => {
                        return self.skip(index, format!("read failed on the controller: {e}"));
                    }
                }
            }
            None => &[],
        };
        let chunks = (size as usize).div_ceil(DELTA_CHUNK).max(1);
        let mut buf = Vec::new();
        for chunk in 0..chunks {
            let at = chunk as u64 * LEAF;
            let len = size.saturating_sub(at).min(LEAF);
            let same =
                new.len() == chunks && new.get(chunk).is_some_and(|cv| old.get(chunk) == Some(cv));
            let delta = if same {
                delta::copy_whole(len)
            } else {
                buf.resize(len as usize, 0);
                if let Err(e) = f.read_exact_at(&mut buf, at) {
                    return self.skip(index, format!("read failed on the controller: {e}"));
                }
                delta::literal(&buf)
            };
            self.send_chunk(index, chunk, chunks, delta, len)?;
        }
        self.delta_sent(index);
        Ok(())
    }
}
