//! The wire protocol: a magic number, then length-prefixed frames, each one postcard-encoded
//! [`Message`]. See `docs/protocol.md` for the full description and the rules for changing it.
//!
//! Both sides write [`MAGIC`] and a [`Hello`] first and check the peer's. Bytes before the
//! peer's magic (a login banner on ssh's stdout) are skipped, up to [`MAX_PREAMBLE`], and kept to
//! explain a failure. Every frame is at most [`MAX_FRAME`] bytes; anything the peer sends is
//! decoded into validated types ([`RelPath`]) or refused.

use std::io::{self, BufRead, Read, Write};

use serde::{Deserialize, Serialize};

use crate::delta::FileSignature;
use crate::manifest::{Entry, Hash};
use crate::path::RelPath;

/// Written by both sides before anything else.
pub const MAGIC: [u8; 8] = *b"\x00RDIST\r\n";
/// The protocol revision. Peers must agree exactly; see docs/protocol.md for when it changes.
pub const PROTO_VERSION: u32 = 4;
/// The largest frame body either side accepts.
pub const MAX_FRAME: usize = 16 << 20;
/// How many stray bytes may precede the peer's magic.
pub const MAX_PREAMBLE: usize = 64 << 10;
/// The largest piece of file data in one frame.
pub const DATA_CHUNK: usize = 1 << 20;

/// The first frame each side sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub proto: u32,
    /// The sender's rdist version (`CARGO_PKG_VERSION`).
    pub version: String,
    /// Optional features the sender understands ([`CAP_ZSTD`]).
    pub caps: Vec<String>,
}

/// The capability of reading [`Message::Zstd`] frames.
pub const CAP_ZSTD: &str = "zstd";

impl Hello {
    pub fn ours(version: &str) -> Hello {
        Hello {
            proto: PROTO_VERSION,
            version: version.to_owned(),
            caps: vec![CAP_ZSTD.to_owned()],
        }
    }

    /// Whether the peer that sent this hello reads [`Message::Zstd`] frames.
    pub fn reads_zstd(&self) -> bool {
        self.caps.iter().any(|c| c == CAP_ZSTD)
    }
}

/// Options of one sync, sent by the controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Begin {
    /// The destination directory on the agent's machine.
    pub dest: String,
    /// User ignore patterns; the fixed ones are implied. The agent uses them to spare
    /// worker-only entries the rules match.
    pub ignore: Vec<String>,
    pub dry_run: bool,
    /// fsync each file before its rename (durability across power loss).
    pub fsync: bool,
    /// Take over a non-empty destination that rdist did not create.
    pub adopt: bool,
    /// How long to wait for another sync to the same destination to finish.
    pub lock_wait_ms: u64,
    /// What a relative `dest` is relative to.
    pub base: DestBase,
    /// Changed files at least this big are fetched as deltas, smaller ones whole.
    pub delta_min: u64,
    /// The agent may ask for a big file by its old leaves ([`Want::Leaves`]) instead of a
    /// signature: the controller then sends its changed leaves whole. Worth it where bytes are
    /// cheap (a local target), not on a slow link.
    pub leaves: bool,
    /// The controller runs on the agent's machine, as the same user (a local target): it may
    /// answer wants for whole files with the paths of its source files ([`Message::Sources`]),
    /// which the agent reads itself instead of receiving their bytes through the pipe. An agent
    /// serving a session root over TCP refuses them.
    pub local_sources: bool,
}

/// The directory a relative destination is resolved against, on the agent's machine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum DestBase {
    /// The agent's working directory.
    #[default]
    Cwd,
    /// The agent user's home directory.
    Home,
    /// The agent's cache directory (`$RDIST_CACHE_DIR`, else `$XDG_CACHE_HOME/rdist`, else
    /// `~/.cache/rdist`).
    Cache,
}

/// How the agent wants a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Want {
    /// Send all of it.
    Whole { index: u32 },
    /// Send a delta against the old version, whose signature this is.
    Delta {
        index: u32,
        signature: FileSignature,
    },
    /// Send it leaf by leaf ([`crate::hash::LEAF`]) as `Delta` chunks: a copy of the old leaf
    /// where its chaining value is the one given here for it, the new leaf whole otherwise.
    Leaves {
        index: u32,
        cvs: Vec<crate::hash::Cv>,
    },
}

/// What the agent decided to do, for dry runs and `-v`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub deleted: Vec<RelPath>,
    pub dirs_created: u64,
    pub links_written: u64,
    pub metadata_only: u64,
    pub local_copies: u64,
    /// Manifest indices of the files to transfer (whole or by delta).
    pub transfers: Vec<u32>,
}

/// What the agent did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub files_written: u64,
    pub deleted: u64,
    pub bytes_written: u64,
    /// Non-fatal problems as `(path, message)`.
    pub problems: Vec<(String, String)>,
    /// Planned deletions that were kept: directories holding entries the ignore rules protect.
    pub kept: Vec<RelPath>,
}

/// One small file's content. (Byte buffers are encoded with `serde_bytes`: the same bytes on
/// the wire as a sequence of `u8`, but copied in one go instead of byte by byte.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileData {
    pub index: u32,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// A file the agent reads itself from the controller's tree (see [`Begin::local_sources`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourcePath {
    pub index: u32,
    /// An absolute path, as the bytes of the controller's (Unix) path.
    #[serde(with = "serde_bytes")]
    pub path: Vec<u8>,
}

/// Every message of the protocol. Variants are append-only: never reorder or remove one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Both sides, first.
    Hello(Hello),
    /// Either side: a fatal error, then the sender closes.
    Error(String),
    /// Controller: start a sync.
    Begin(Begin),
    /// Agent: the destination already matches the digest.
    UpToDate,
    /// Agent: send the manifest.
    NeedManifest,
    /// Controller: a run of manifest entries, in order.
    Manifest(Vec<Entry>),
    /// Controller: the manifest is complete.
    ManifestEnd,
    /// Agent: what it will do.
    Plan(Plan),
    /// Agent: files it needs.
    Want(Vec<Want>),
    /// Agent: no more wants in this round.
    WantEnd,
    /// Controller: small files, whole.
    Files(Vec<FileData>),
    /// Controller: a piece of a big file sent whole; pieces come in order.
    Data {
        index: u32,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
        last: bool,
    },
    /// Controller: the delta for one chunk of a file; chunks come in order.
    Delta {
        index: u32,
        chunk: u32,
        #[serde(with = "serde_bytes")]
        delta: Vec<u8>,
        last: bool,
    },
    /// Controller: a wanted file could not be sent.
    Skip { index: u32, reason: String },
    /// Controller: all wants of the round are answered.
    DataEnd,
    /// Agent: finished.
    Done(Outcome),
    /// Controller: the digest and size of its manifest. Sent after `Begin` once the scan is
    /// done, so the agent examines the destination while the controller scans.
    Offer { digest: Hash, entries: u64 },
    /// Server: prove you know the token (see `auth`).
    Challenge { nonce: [u8; 32] },
    /// Client: its nonce and MAC over both nonces.
    Proof { nonce: [u8; 32], mac: [u8; 32] },
    /// Server: its own MAC, proving it knows the token too.
    Proven { mac: [u8; 32] },
    /// Agent: send the per-directory summary (it has an older tree to compare with).
    NeedSummary,
    /// Controller: a run of `Manifest::dir_summary` keys, in order.
    Summary(Vec<[u8; 16]>),
    /// Controller: the summary is complete.
    SummaryEnd,
    /// Agent: send the entries of these directories (indices into the summary), then
    /// `ManifestEnd`.
    NeedDirs(Vec<u32>),
    /// Controller: start a test worker (after the syncs; the connection then carries workers).
    StartWorker(WorkerStart),
    /// Controller: a line for a worker's stdin.
    WorkerInput { id: u32, line: String },
    /// Controller: stop a worker now.
    KillWorker { id: u32 },
    /// Agent: a line a worker wrote on stdout.
    WorkerOutput { id: u32, line: String },
    /// Agent: a worker exited (`code` is `None` when a signal ended it), with its last stderr.
    WorkerExit {
        id: u32,
        code: Option<i32>,
        stderr: String,
    },
    /// Controller: report facts about this host, its destination and its Python (`rdist check`).
    Probe(ProbeRequest),
    /// Agent: the facts.
    Probed(ProbeReport),
    /// Either side, to a peer whose hello lists [`CAP_ZSTD`]: another message's body,
    /// compressed with zstd. [`read_frame`] unpacks it; it never holds another `Zstd`.
    Zstd(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Controller, in the data phase of a session begun with [`Begin::local_sources`]: the
    /// files wanted whole are read by the agent from these paths (each read at most one byte
    /// past its manifest size and checked against its hash like sent data).
    Sources(Vec<SourcePath>),
}

/// What `rdist check` asks a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeRequest {
    /// The destination to examine (resolved like `Begin::dest`); `None`: none.
    pub dest: Option<String>,
    pub base: DestBase,
    /// The interpreter to run `script` with.
    pub python: String,
    /// A Python script printing one JSON document on stdout.
    pub script: String,
}

/// A host's answer to a [`ProbeRequest`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeReport {
    pub os: String,
    pub arch: String,
    pub hostname: String,
    /// The host's clock, nanoseconds since the epoch, when it answered.
    pub time_ns: i64,
    /// The destination as resolved there.
    pub dest: Option<String>,
    pub disk_free: Option<u64>,
    pub disk_total: Option<u64>,
    /// Why the destination cannot be written, if it cannot.
    pub not_writable: Option<String>,
    pub case_sensitive: Option<bool>,
    /// The script's JSON output.
    pub python: Option<String>,
    /// Why the script could not run, if it could not.
    pub python_error: Option<String>,
}

/// How to start a test worker on the agent's machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerStart {
    pub id: u32,
    /// The (synced) directory to run in, resolved like `Begin::dest`.
    pub dest: String,
    pub base: DestBase,
    /// The Python interpreter.
    pub python: String,
    /// Arguments after `python -m pytest -p rdist_worker`.
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub nice: Option<i32>,
}

impl Message {
    /// Short name for error messages.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello(_) => "Hello",
            Message::Error(_) => "Error",
            Message::Begin(_) => "Begin",
            Message::UpToDate => "UpToDate",
            Message::NeedManifest => "NeedManifest",
            Message::Manifest(_) => "Manifest",
            Message::ManifestEnd => "ManifestEnd",
            Message::Plan(_) => "Plan",
            Message::Want(_) => "Want",
            Message::WantEnd => "WantEnd",
            Message::Files(_) => "Files",
            Message::Data { .. } => "Data",
            Message::Delta { .. } => "Delta",
            Message::Skip { .. } => "Skip",
            Message::DataEnd => "DataEnd",
            Message::Done(_) => "Done",
            Message::Offer { .. } => "Offer",
            Message::Challenge { .. } => "Challenge",
            Message::Proof { .. } => "Proof",
            Message::Proven { .. } => "Proven",
            Message::NeedSummary => "NeedSummary",
            Message::Summary(_) => "Summary",
            Message::SummaryEnd => "SummaryEnd",
            Message::NeedDirs(_) => "NeedDirs",
            Message::StartWorker(_) => "StartWorker",
            Message::WorkerInput { .. } => "WorkerInput",
            Message::KillWorker { .. } => "KillWorker",
            Message::WorkerOutput { .. } => "WorkerOutput",
            Message::WorkerExit { .. } => "WorkerExit",
            Message::Probe(_) => "Probe",
            Message::Probed(_) => "Probed",
            Message::Zstd(_) => "Zstd",
            Message::Sources(_) => "Sources",
        }
    }
}

/// A protocol failure.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("connection closed by peer")]
    Closed,
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("i/o error on the connection")]
    Io(#[from] io::Error),
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    FrameTooLarge(usize),
    #[error("undecodable frame")]
    Decode(#[source] postcard::Error),
    #[error("peer did not start the rdist protocol; it sent `{0}`")]
    NoMagic(String),
    #[error(
        "peer speaks protocol {theirs} (rdist {their_version}), this side speaks {ours} (rdist {our_version})"
    )]
    Version {
        ours: u32,
        our_version: String,
        theirs: u32,
        their_version: String,
    },
    #[error("unexpected `{got}` message while waiting for {expected}")]
    Unexpected {
        got: &'static str,
        expected: &'static str,
    },
    #[error("peer reported: {0}")]
    Remote(String),
    #[error("peer sent invalid data: {0}")]
    Invalid(String),
}

/// Encodes one message as a frame.
///
/// # Errors
/// When the message is larger than [`MAX_FRAME`] or the writer fails.
pub fn write_frame(w: &mut impl Write, msg: &Message) -> Result<usize, ProtoError> {
    write_body(w, &encode(msg)?)
}

/// `msg`'s frame body, refused when over [`MAX_FRAME`].
fn encode(msg: &Message) -> Result<Vec<u8>, ProtoError> {
    let body = postcard::to_stdvec(msg).map_err(ProtoError::Decode)?;
    if body.len() > MAX_FRAME {
        return Err(ProtoError::FrameTooLarge(body.len()));
    }
    Ok(body)
}

/// Writes an encoded body as a frame; returns the bytes written.
fn write_body(w: &mut impl Write, body: &[u8]) -> Result<usize, ProtoError> {
    w.write_all(&(body.len() as u32).to_be_bytes())?;
    w.write_all(body)?;
    Ok(body.len() + 4)
}

/// Frames with a body smaller than this are never compressed.
const PACK_MIN: usize = 1 << 10;
/// zstd's level for [`write_frame_packed`]: its fastest regular level, to keep up with a link.
const PACK_LEVEL: i32 = 1;

/// Like [`write_frame`], but sends the body compressed (as [`Message::Zstd`]) when that makes
/// it smaller. Only for a peer whose hello lists [`CAP_ZSTD`].
///
/// # Errors
/// On I/O failure or a frame over [`MAX_FRAME`].
pub fn write_frame_packed(w: &mut impl Write, msg: &Message) -> Result<usize, ProtoError> {
    let body = encode(msg)?;
    let packed = (body.len() >= PACK_MIN)
        .then(|| zstd::bulk::compress(&body, PACK_LEVEL).ok())
        .flatten()
        .filter(|p| p.len() + 8 < body.len());
    match packed {
        Some(p) => write_frame(w, &Message::Zstd(p)),
        None => write_body(w, &body),
    }
}

/// Writes `Message::Data { index, bytes, last }` without building the message: the same
/// bytes as [`write_frame`] would write, without copying `bytes` twice on the way.
///
/// # Errors
/// On I/O failure or a frame over [`MAX_FRAME`].
pub fn write_data_frame(
    w: &mut impl Write,
    index: u32,
    bytes: &[u8],
    last: bool,
) -> Result<usize, ProtoError> {
    // postcard: the variant as a varint, then the fields in order (a tuple's fields are
    // written one after another); `serde_bytes` is a varint length and the raw bytes; a bool is
    // one byte.
    let mut head = [0u8; 5 + 5 + 10];
    let head = postcard::to_slice(&(DATA_VARIANT, index, bytes.len() as u64), &mut head)
        .map_err(ProtoError::Decode)?;
    let body_len = head.len() + bytes.len() + 1;
    if body_len > MAX_FRAME {
        return Err(ProtoError::FrameTooLarge(body_len));
    }
    w.write_all(&(body_len as u32).to_be_bytes())?;
    w.write_all(head)?;
    w.write_all(bytes)?;
    w.write_all(&[u8::from(last)])?;
    Ok(body_len + 4)
}

/// `Message::Data`'s index among the variants (pinned by `variant_bytes_are_pinned`).
const DATA_VARIANT: u32 = 11;

/// [`write_frame_packed`] when `packed`, else [`write_frame`].
///
/// # Errors
/// As theirs.
pub fn write_frame_as(
    w: &mut impl Write,
    msg: &Message,
    packed: bool,
) -> Result<usize, ProtoError> {
    if packed {
        write_frame_packed(w, msg)
    } else {
        write_frame(w, msg)
    }
}

/// The body inside a [`Message::Zstd`]: it must declare its size, at most [`MAX_FRAME`], and
/// decompress to exactly that.
fn unpack(packed: &[u8]) -> Result<Vec<u8>, ProtoError> {
    let bad = |what: &str| ProtoError::Invalid(format!("compressed frame: {what}"));
    let size = match zstd::zstd_safe::get_frame_content_size(packed) {
        Ok(Some(n)) if n <= MAX_FRAME as u64 => n as usize,
        Ok(Some(n)) => return Err(bad(&format!("unpacks to {n} bytes, over the frame limit"))),
        _ => return Err(bad("no content size")),
    };
    let body = zstd::bulk::decompress(packed, size).map_err(|e| bad(&e.to_string()))?;
    if body.len() != size {
        return Err(bad("shorter than it declares"));
    }
    Ok(body)
}

/// Reads one frame. A clean end of stream before the length is [`ProtoError::Closed`]; a
/// stream that ends inside a frame is [`ProtoError::Truncated`].
///
/// # Errors
/// On a truncated or oversized frame, an undecodable body, or I/O failure.
pub fn read_frame(r: &mut impl Read) -> Result<(Message, usize), ProtoError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < len.len() {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Err(ProtoError::Closed),
            Ok(0) => return Err(ProtoError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(ProtoError::FrameTooLarge(len));
    }
    // One body buffer per thread, reused: a fresh megabyte per data frame costs page faults.
    BODY.with_borrow_mut(|body| {
        body.clear();
        if (&mut *r).take(len as u64).read_to_end(body)? < len {
            return Err(ProtoError::Truncated);
        }
        decode_body(body)
    })
    .map(|msg| (msg, len + 4))
}

thread_local! {
    static BODY: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Decodes a frame body, unpacking a [`Message::Zstd`].
fn decode_body(body: &[u8]) -> Result<Message, ProtoError> {
    let msg = match postcard::from_bytes(body).map_err(ProtoError::Decode)? {
        Message::Zstd(packed) => match postcard::from_bytes(&unpack(&packed)?) {
            Ok(Message::Zstd(_)) => {
                return Err(ProtoError::Invalid(
                    "compressed frame inside a compressed frame".to_owned(),
                ));
            }
            inner => inner.map_err(ProtoError::Decode)?,
        },
        msg => msg,
    };
    Ok(msg)
}

/// Writes our magic and hello.
///
/// # Errors
/// When the writer fails.
pub fn send_hello(w: &mut impl Write, version: &str) -> Result<(), ProtoError> {
    w.write_all(&MAGIC)?;
    write_frame(w, &Message::Hello(Hello::ours(version)))?;
    w.flush()?;
    Ok(())
}

/// Skips up to [`MAX_PREAMBLE`] bytes of noise, then reads and checks the peer's hello.
/// Returns the hello and the noise that preceded it.
///
/// # Errors
/// When no magic appears, the hello is missing, or the protocol versions differ.
pub fn recv_hello(r: &mut impl BufRead, our_version: &str) -> Result<(Hello, Vec<u8>), ProtoError> {
    let mut seen: Vec<u8> = Vec::new();
    loop {
        if seen.ends_with(&MAGIC) {
            seen.truncate(seen.len() - MAGIC.len());
            break;
        }
        if seen.len() > MAX_PREAMBLE {
            return Err(ProtoError::NoMagic(preview(&seen)));
        }
        let mut b = [0u8; 1];
        match r.read(&mut b) {
            Ok(0) if seen.is_empty() => return Err(ProtoError::Closed),
            Ok(0) => return Err(ProtoError::NoMagic(preview(&seen))),
            Ok(_) => seen.push(b[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    match read_frame(r)?.0 {
        Message::Hello(h) if h.proto == PROTO_VERSION => Ok((h, seen)),
        Message::Hello(h) => Err(ProtoError::Version {
            ours: PROTO_VERSION,
            our_version: our_version.to_owned(),
            theirs: h.proto,
            their_version: h.version,
        }),
        Message::Error(e) => Err(ProtoError::Remote(e)),
        other => Err(ProtoError::Unexpected {
            got: other.name(),
            expected: "Hello",
        }),
    }
}

/// The first few hundred bytes of `b`, printable, for an error message.
/// The start and the end of `b` (a long login banner keeps its last line, where a peer's
/// own message usually is), printable, for an error message.
pub fn preview(b: &[u8]) -> String {
    const HEAD: usize = 200;
    const TAIL: usize = 200;
    let text = |b: &[u8]| String::from_utf8_lossy(b).trim().escape_debug().to_string();
    if b.len() <= HEAD + TAIL {
        text(b)
    } else {
        format!("{} … {}", text(&b[..HEAD]), text(&b[b.len() - TAIL..]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of(m: &Message) -> Vec<u8> {
        let mut v = Vec::new();
        write_frame(&mut v, m).unwrap();
        v
    }

    /// The encoding of each variant is part of the protocol: changing any of these bytes breaks
    /// peers of the same protocol version.
    #[test]
    fn variant_bytes_are_pinned() {
        let p = RelPath::new("a/b").unwrap();
        let cases: Vec<(Message, &[u8])> = vec![
            (
                Message::Hello(Hello {
                    proto: 1,
                    version: "0.1.0".into(),
                    caps: vec![],
                }),
                &[0, 0, 0, 9, 0, 1, 5, b'0', b'.', b'1', b'.', b'0', 0],
            ),
            (Message::Error("x".into()), &[0, 0, 0, 3, 1, 1, b'x']),
            (Message::UpToDate, &[0, 0, 0, 1, 3]),
            (Message::NeedManifest, &[0, 0, 0, 1, 4]),
            (Message::ManifestEnd, &[0, 0, 0, 1, 6]),
            (Message::WantEnd, &[0, 0, 0, 1, 9]),
            (
                Message::Files(vec![FileData {
                    index: 2,
                    data: vec![9],
                }]),
                &[0, 0, 0, 5, 10, 1, 2, 1, 9],
            ),
            (
                Message::Data {
                    index: 1,
                    bytes: vec![7],
                    last: true,
                },
                &[0, 0, 0, 5, 11, 1, 1, 7, 1],
            ),
            (
                Message::Skip {
                    index: 3,
                    reason: "r".into(),
                },
                &[0, 0, 0, 4, 13, 3, 1, b'r'],
            ),
            (Message::DataEnd, &[0, 0, 0, 1, 14]),
            (
                Message::Offer {
                    digest: [7; 32],
                    entries: 300,
                },
                &[
                    0, 0, 0, 35, 16, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
                    7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 0xac, 0x02,
                ],
            ),
            (
                Message::Plan(Plan {
                    deleted: vec![p],
                    ..Plan::default()
                }),
                &[0, 0, 0, 11, 7, 1, 3, b'a', b'/', b'b', 0, 0, 0, 0, 0],
            ),
        ];
        for (m, want) in cases {
            assert_eq!(bytes_of(&m), want, "{}", m.name());
            assert_eq!(read_frame(&mut &want[..]).unwrap().0, m);
        }
    }

    #[test]
    fn packed_frames_shrink_and_read_back() {
        let big = Message::Files(vec![FileData {
            index: 4,
            data: b"import os\n".repeat(2000),
        }]);
        let mut packed = Vec::new();
        let n = write_frame_packed(&mut packed, &big).unwrap();
        assert_eq!(n, packed.len());
        assert!(n < bytes_of(&big).len() / 10, "{n} bytes");
        assert_eq!(packed[4], 31, "sent as the Zstd variant");
        assert_eq!(read_frame(&mut &packed[..]).unwrap(), (big, n));
        // Small or incompressible bodies go as they are.
        let mut x: u32 = 7;
        let noise: Vec<u8> = (0..5000)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (x >> 16) as u8
            })
            .collect();
        for m in [
            Message::UpToDate,
            Message::Files(vec![FileData {
                index: 1,
                data: noise,
            }]),
        ] {
            let mut plain = Vec::new();
            write_frame_packed(&mut plain, &m).unwrap();
            assert_eq!(plain, bytes_of(&m), "{}", m.name());
        }
    }

    #[test]
    fn data_frames_written_directly_are_the_messages_bytes() {
        for (index, len, last) in [(0u32, 0usize, true), (7, 1, false), (300, 70_000, true)] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let mut direct = Vec::new();
            let n = write_data_frame(&mut direct, index, &bytes, last).unwrap();
            let msg = Message::Data { index, bytes, last };
            assert_eq!(direct, bytes_of(&msg), "{index}/{len}");
            assert_eq!(read_frame(&mut &direct[..]).unwrap(), (msg, n));
        }
    }

    #[test]
    fn hostile_packed_frames_are_refused() {
        let invalid = |packed: Vec<u8>| match read_frame(&mut &bytes_of(&Message::Zstd(packed))[..])
        {
            Err(ProtoError::Invalid(e)) => e,
            other => panic!("{other:?}"),
        };
        let body = postcard::to_stdvec(&Message::UpToDate).unwrap();
        // A bomb: declares more than a frame may hold.
        let bomb = zstd::bulk::compress(&vec![0u8; MAX_FRAME + 1], 1).unwrap();
        assert!(bomb.len() < 4096);
        assert!(invalid(bomb).contains("over the frame limit"));
        // No declared size (streaming encoder), garbage, and a cut-off frame.
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
        enc.include_contentsize(false).unwrap();
        std::io::Write::write_all(&mut enc, &body).unwrap();
        let unsized_ = enc.finish().unwrap();
        assert!(invalid(unsized_).contains("no content size"));
        assert!(invalid(b"not zstd at all".to_vec()).contains("compressed frame"));
        let whole = zstd::bulk::compress(&b"x".repeat(5000), 1).unwrap();
        assert!(invalid(whole[..whole.len() - 3].to_vec()).contains("compressed frame"));
        // A Zstd inside a Zstd.
        let inner = postcard::to_stdvec(&Message::Zstd(zstd::bulk::compress(&body, 1).unwrap()));
        let nested = zstd::bulk::compress(&inner.unwrap(), 1).unwrap();
        assert!(invalid(nested).contains("inside a compressed frame"));
        // Unpacked bytes that are no message.
        let junk = zstd::bulk::compress(&[200, 1, 2], 1).unwrap();
        assert!(matches!(
            read_frame(&mut &bytes_of(&Message::Zstd(junk))[..]),
            Err(ProtoError::Decode(_))
        ));
    }

    #[test]
    fn hostile_frames_are_errors_not_crashes() {
        // Oversized length.
        let mut big = ((MAX_FRAME + 1) as u32).to_be_bytes().to_vec();
        big.extend([0; 16]);
        assert!(matches!(
            read_frame(&mut &big[..]),
            Err(ProtoError::FrameTooLarge(_))
        ));
        // Truncated body.
        assert!(matches!(
            read_frame(&mut &[0, 0, 0, 9, 1][..]),
            Err(ProtoError::Truncated)
        ));
        assert!(matches!(
            read_frame(&mut &[0, 0][..]),
            Err(ProtoError::Truncated)
        ));
        assert!(matches!(read_frame(&mut &[][..]), Err(ProtoError::Closed)));
        // Unknown variant.
        assert!(matches!(
            read_frame(&mut &[0, 0, 0, 1, 200][..]),
            Err(ProtoError::Decode(_))
        ));
        // A path escaping the destination, inside an otherwise valid Plan.
        let evil = [0, 0, 0, 12, 7, 1, 4, b'.', b'.', b'/', b'x', 0, 0, 0, 0, 0];
        assert!(matches!(
            read_frame(&mut &evil[..]),
            Err(ProtoError::Decode(_))
        ));
        // A vector length far beyond the frame.
        assert!(read_frame(&mut &[0, 0, 0, 6, 10, 0xff, 0xff, 0xff, 0xff, 0x0f][..]).is_err());
        // Random garbage of many lengths never panics.
        let mut x: u32 = 12345;
        for len in 0..400usize {
            let mut buf = (len as u32).to_be_bytes().to_vec();
            for _ in 0..len {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                buf.push((x >> 16) as u8);
            }
            let _ = read_frame(&mut &buf[..]);
        }
    }

    #[test]
    fn preview_keeps_the_end_of_a_long_banner() {
        let mut b = "motd line\n".repeat(100).into_bytes();
        b.extend_from_slice(b"RDIST-BOOTSTRAP-MISSING Linux x86_64\n");
        let p = preview(&b);
        assert!(p.starts_with("motd line"), "{p}");
        assert!(p.ends_with("RDIST-BOOTSTRAP-MISSING Linux x86_64"), "{p}");
        assert!(p.len() < 500);
    }

    #[test]
    fn handshake_skips_banners_and_checks_versions() {
        let mut stream = b"Welcome to host\nlast login: never\n".to_vec();
        send_hello(&mut stream, "9.9.9").unwrap();
        let (h, noise) = recv_hello(&mut &stream[..], "0.1.0").unwrap();
        assert_eq!(h.version, "9.9.9");
        assert_eq!(noise, b"Welcome to host\nlast login: never\n");

        let mut other = MAGIC.to_vec();
        write_frame(
            &mut other,
            &Message::Hello(Hello {
                proto: 99,
                version: "7.0.0".into(),
                caps: vec![],
            }),
        )
        .unwrap();
        let e = recv_hello(&mut &other[..], "0.1.0").unwrap_err();
        assert_eq!(
            e.to_string(),
            "peer speaks protocol 99 (rdist 7.0.0), this side speaks 4 (rdist 0.1.0)"
        );

        let e = recv_hello(&mut &b"bash: rdist: command not found\n"[..], "0.1.0").unwrap_err();
        assert_eq!(
            e.to_string(),
            "peer did not start the rdist protocol; it sent `bash: rdist: command not found`"
        );
    }
}
