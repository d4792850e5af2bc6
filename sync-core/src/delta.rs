//! Rolling-checksum deltas (fast_rsync, librsync's format) over files of any size in bounded
//! memory.
//!
//! fast_rsync works on whole buffers, so a file is cut into [`DELTA_CHUNK`]-sized chunks and
//! chunk *i* of the new version is diffed against the signature of chunk *i* of the old one. A
//! small insertion shifts later data by a few bytes, which the rolling checksum still finds
//! inside the same chunk, so the loss against a whole-file delta is a few blocks per chunk.
//! Memory per file is about two chunks whatever its size.
//!
//! # Security
//! Signatures and deltas come from the peer. Signatures are checked for a sane block size before
//! use; deltas are applied with `apply_limited` so a delta cannot make a chunk grow past its
//! declared length; and MD4 is not collision resistant, so the caller must check the BLAKE3 of
//! the result before using it.

use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use fast_rsync::{Signature, SignatureOptions};
use serde::{Deserialize, Serialize};

use crate::hash::read_full;

/// Size of the unit a file is diffed in. Small enough that an edit in a big file costs one
/// 2 MiB diff (unchanged chunks are recognised by their signature), big enough that a shifted
/// file loses only a block per chunk at the boundaries.
pub const DELTA_CHUNK: usize = 2 << 20;
/// On a local or otherwise fast link, files smaller than this are sent whole: below it a
/// signature and a delta cost more time than resending the bytes.
pub const DELTA_MIN_SIZE: u64 = 64 << 10;
/// On a network link, files smaller than this are sent whole: a signature and a delta save bytes
/// from here on.
pub const DELTA_MIN_SIZE_REMOTE: u64 = 2 << 10;
/// Below one block a delta can only be literal.
pub const MIN_BLOCK_SIZE: u64 = MIN_BLOCK as u64;
/// Strong-hash bytes per block: 8 bytes of MD4 as rsync's default; BLAKE3 guards the result.
const CRYPTO_HASH_SIZE: u32 = 8;
const MAX_BLOCK: u32 = 128 << 10;
const MIN_BLOCK: u32 = 700;

/// rsync's block size rule: about the square root of the file length, a multiple of 8, between
/// 700 bytes and 128 KiB.
pub fn block_size(len: u64) -> u32 {
    let root = (len as f64).sqrt() as u64;
    let rounded = (root / 8 * 8) as u32;
    rounded.clamp(MIN_BLOCK, MAX_BLOCK)
}

/// The signature of an old file: one librsync signature per chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSignature {
    pub block_size: u32,
    pub chunks: Vec<SigChunk>,
}

/// The librsync signature of one chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigChunk(#[serde(with = "serde_bytes")] pub Vec<u8>);

/// A peer-supplied signature that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    #[error("signature has block size {0}, outside {MIN_BLOCK}..={MAX_BLOCK}")]
    BlockSize(u32),
    #[error("signature chunk {0} is malformed")]
    Signature(usize),
    #[error("signature chunk {0} was made with block size {1}, not the declared {2}")]
    MixedBlockSize(usize, u32, u32),
    #[error("cannot compute delta")]
    Diff(#[source] fast_rsync::DiffError),
    #[error("delta does not apply")]
    Apply(#[source] fast_rsync::ApplyError),
}

/// Reads the file at `path` chunk by chunk and signs each chunk.
///
/// # Errors
/// When the file cannot be read.
pub fn file_signature(path: &Path, len: u64) -> io::Result<FileSignature> {
    let bs = block_size(len);
    if len >= PARALLEL_SIGN_MIN {
        return file_signature_parallel(path, len, bs);
    }
    let mut f = crate::hash::open_file(path)?;
    let mut buf = vec![0u8; DELTA_CHUNK.min(len as usize + 1)];
    let mut chunks = Vec::new();
    loop {
        let n = read_full(&mut f, &mut buf)?;
        if n == 0 {
            break;
        }
        chunks.push(SigChunk(sign(&buf[..n], bs)));
        if n < buf.len() {
            break;
        }
    }
    Ok(FileSignature {
        block_size: bs,
        chunks,
    })
}

/// Files at least this big are signed a chunk per thread. (Smaller ones are not worth it: a
/// sync's other files keep the cores busy, and the other process runs too.)
const PARALLEL_SIGN_MIN: u64 = 8 << 20;

/// [`file_signature`] with the chunks read (by offset) and signed in parallel.
fn file_signature_parallel(path: &Path, len: u64, bs: u32) -> io::Result<FileSignature> {
    use rayon::prelude::*;
    use std::os::unix::fs::FileExt;
    let f = crate::hash::open_file(path)?;
    let count = len.div_ceil(DELTA_CHUNK as u64) as usize;
    let chunks = (0..count)
        .into_par_iter()
        .map_init(Vec::new, |buf: &mut Vec<u8>, i| {
            let at = i as u64 * DELTA_CHUNK as u64;
            buf.resize((len - at).min(DELTA_CHUNK as u64) as usize, 0);
            f.read_exact_at(buf, at)?;
            Ok(SigChunk(sign(buf, bs)))
        })
        .collect::<io::Result<Vec<SigChunk>>>()?;
    Ok(FileSignature {
        block_size: bs,
        chunks,
    })
}

fn sign(data: &[u8], block_size: u32) -> Vec<u8> {
    Signature::calculate(
        data,
        SignatureOptions {
            block_size,
            crypto_hash_size: CRYPTO_HASH_SIZE,
        },
    )
    .into_serialized()
}

/// A checked, ready-to-use signature of an old file.
pub struct Differ {
    chunks: Vec<Signature>,
    empty: Signature,
    block_size: u32,
}

impl Differ {
    /// Validates a peer's signature.
    ///
    /// # Errors
    /// When the block size is out of range or a chunk does not parse.
    pub fn new(sig: FileSignature) -> Result<Differ, DeltaError> {
        if !(MIN_BLOCK..=MAX_BLOCK).contains(&sig.block_size) {
            return Err(DeltaError::BlockSize(sig.block_size));
        }
        let mut chunks = Vec::with_capacity(sig.chunks.len());
        for (i, c) in sig.chunks.into_iter().enumerate() {
            let s = Signature::deserialize(c.0).map_err(|_| DeltaError::Signature(i))?;
            // The serialized header carries block size then hash size, both big-endian u32.
            let bs = u32::from_be_bytes(s.serialized()[4..8].try_into().expect("header checked"));
            if bs != sig.block_size {
                return Err(DeltaError::MixedBlockSize(i, bs, sig.block_size));
            }
            chunks.push(s);
        }
        Ok(Differ {
            chunks,
            block_size: sig.block_size,
            empty: Signature::calculate(
                &[],
                SignatureOptions {
                    block_size: sig.block_size,
                    crypto_hash_size: CRYPTO_HASH_SIZE,
                },
            ),
        })
    }

    /// The delta that turns old chunk `index` into `new`.
    ///
    /// # Errors
    /// When fast_rsync rejects the signature.
    pub fn diff(&self, index: usize, new: &[u8]) -> Result<Vec<u8>, DeltaError> {
        let sig = self.chunks.get(index).unwrap_or(&self.empty);
        // An unchanged chunk has the old chunk's weak checksums, block for block: comparing
        // them costs a fraction of signing the chunk (MD4) and far less than a diff, which runs
        // MD4 block by block at every matching position. Then one COPY says it all. A false
        // match (every block's weak checksum equal while some block changed) is caught by the
        // BLAKE3 check of the result, and the file is resent whole.
        if !new.is_empty() && weak_sums_match(sig.serialized(), new, self.block_size) {
            return Ok(copy_whole(new.len() as u64));
        }
        let mut out = Vec::with_capacity(new.len() / 64 + 64);
        fast_rsync::diff(&sig.index(), new, &mut out).map_err(DeltaError::Diff)?;
        Ok(out)
    }
}

/// librsync's signature layout: a 12-byte header, then per block a 4-byte big-endian weak
/// checksum and `CRYPTO_HASH_SIZE` bytes of MD4.
const SIG_HEADER: usize = 12;
const SIG_ENTRY: usize = 4 + CRYPTO_HASH_SIZE as usize;

/// Whether `new`, cut into `block_size` blocks, has exactly the blocks of the signature
/// `serialized` (as [`sign`] makes it) and each block's weak checksum equals the signature's.
fn weak_sums_match(serialized: &[u8], new: &[u8], block_size: u32) -> bool {
    let Some(entries) = serialized.get(SIG_HEADER..) else {
        return false;
    };
    if entries.len() != new.len().div_ceil(block_size as usize) * SIG_ENTRY {
        return false;
    }
    new.chunks(block_size as usize)
        .zip(entries.chunks_exact(SIG_ENTRY))
        .all(|(block, e)| weak_sum(block).to_be_bytes() == e[..4])
}

/// rsync's rolling checksum of one block, as librsync (and fast_rsync) compute it:
/// `s1 = sum(b + 31)`, `s2 = sum of the running s1`, both mod 2^16, `s1 | s2 << 16`.
fn weak_sum(block: &[u8]) -> u32 {
    const MAGIC: u16 = 31;
    let len = block.len() as u32;
    // s2 = sum of b[i] * (len - i) = len * sum(b) - sum(i * b[i]), mod 2^16: in this form the
    // loop is a plain reduction, which the compiler vectorises.
    let (mut s1, mut t) = (0u16, 0u16);
    for (i, &b) in block.iter().enumerate() {
        s1 = s1.wrapping_add(b as u16);
        t = t.wrapping_add((b as u16).wrapping_mul(i as u16));
    }
    let mut s2 = (len as u16).wrapping_mul(s1).wrapping_sub(t);
    s1 = s1.wrapping_add((len as u16).wrapping_mul(MAGIC));
    s2 = s2.wrapping_add(((len.wrapping_mul(len.wrapping_add(1)) / 2) as u16).wrapping_mul(MAGIC));
    s1 as u32 | (s2 as u32) << 16
}

const DELTA_MAGIC: u32 = 0x7273_0236;
const OP_END: u8 = 0;

/// `n` in the smallest of 1/2/4/8 big-endian bytes, and that size's class (0 to 3) as librsync's
/// opcodes count it.
fn be_smallest(n: u64) -> (Vec<u8>, u8) {
    let bytes: Vec<u8> = if n <= u8::MAX as u64 {
        vec![n as u8]
    } else if n <= u16::MAX as u64 {
        (n as u16).to_be_bytes().to_vec()
    } else if n <= u32::MAX as u64 {
        (n as u32).to_be_bytes().to_vec()
    } else {
        n.to_be_bytes().to_vec()
    };
    let class = bytes.len().trailing_zeros() as u8;
    (bytes, class)
}

/// A librsync delta that copies the first `len` bytes of the old chunk: the magic, one
/// `COPY` command (offset 0 in one byte, the length in the smallest of 1/2/4/8 big-endian
/// bytes) and `END`.
pub fn copy_whole(len: u64) -> Vec<u8> {
    const OP_COPY_N1_N1: u8 = 0x45;
    let mut out = DELTA_MAGIC.to_be_bytes().to_vec();
    let (len_bytes, class) = be_smallest(len);
    out.push(OP_COPY_N1_N1 + class);
    out.push(0);
    out.extend_from_slice(&len_bytes);
    out.push(OP_END);
    out
}

/// A librsync delta that is `data` itself: the magic, one `LITERAL` command (the length in the
/// smallest of 1/2/4/8 big-endian bytes, then the bytes) and `END`. Needs no old chunk.
pub fn literal(data: &[u8]) -> Vec<u8> {
    const OP_LITERAL_N1: u8 = 0x41;
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&DELTA_MAGIC.to_be_bytes());
    if !data.is_empty() {
        let (len_bytes, class) = be_smallest(data.len() as u64);
        out.push(OP_LITERAL_N1 + class);
        out.extend_from_slice(&len_bytes);
        out.extend_from_slice(data);
    }
    out.push(OP_END);
    out
}

/// Whether `delta` is exactly [`copy_whole`] of `len` bytes.
pub fn is_copy_of(delta: &[u8], len: u64) -> bool {
    delta == copy_whole(len)
}

/// Whether `delta` is exactly the one `COPY` of all of `base` that [`Differ::diff`] sends for
/// an unchanged chunk, and `base` fits in `limit`: then `base` is the result, as
/// [`apply_chunk`] would produce it.
pub fn copies_whole(delta: &[u8], base: &[u8], limit: usize) -> bool {
    !base.is_empty() && base.len() <= limit && delta == copy_whole(base.len() as u64)
}

/// Reads chunk `index` of the old file into `buf` (empty past its end).
///
/// # Errors
/// When the old file cannot be read.
pub fn read_chunk(f: &mut std::fs::File, index: usize, buf: &mut Vec<u8>) -> io::Result<()> {
    buf.resize(DELTA_CHUNK, 0);
    f.seek(SeekFrom::Start((index * DELTA_CHUNK) as u64))?;
    let n = read_full(f, buf)?;
    buf.truncate(n);
    Ok(())
}

/// Applies a peer's delta for one chunk to its old chunk, producing at most `limit` bytes.
///
/// # Errors
/// When the delta is malformed or would produce more than `limit` bytes.
pub fn apply_chunk(
    base: &[u8],
    delta: &[u8],
    limit: usize,
    out: &mut Vec<u8>,
) -> Result<(), DeltaError> {
    out.clear();
    fast_rsync::apply_limited(base, delta, out, limit).map_err(DeltaError::Apply)
}

/// Reads exactly one delta chunk's worth of new data.
///
/// # Errors
/// On read errors.
pub fn read_new_chunk(r: &mut impl Read, buf: &mut Vec<u8>) -> io::Result<usize> {
    buf.resize(DELTA_CHUNK, 0);
    let n = read_full(r, buf)?;
    buf.truncate(n);
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn literal_and_copy_whole_deltas_apply_as_librsync_would() {
        for len in [0usize, 1, 64, 255, 256, 65_535, 65_536, DELTA_CHUNK] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut out = Vec::new();
            apply_chunk(&[], &literal(&data), len, &mut out).unwrap();
            assert_eq!(out, data, "literal of {len} bytes");
            if len > 0 {
                apply_chunk(&data, &copy_whole(len as u64), len, &mut out).unwrap();
                assert_eq!(out, data, "copy of {len} bytes");
                // A literal does not fit a smaller limit.
                assert!(apply_chunk(&[], &literal(&data), len - 1, &mut out).is_err());
            }
        }
    }

    fn roundtrip(old: &[u8], new: &[u8]) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("old");
        std::fs::write(&p, old).unwrap();
        let sig = file_signature(&p, old.len() as u64).unwrap();
        let d = Differ::new(sig).unwrap();
        let mut f = std::fs::File::open(&p).unwrap();
        let mut result = Vec::new();
        let (mut base, mut out) = (Vec::new(), Vec::new());
        for (i, chunk) in new.chunks(DELTA_CHUNK).enumerate() {
            let delta = d.diff(i, chunk).unwrap();
            read_chunk(&mut f, i, &mut base).unwrap();
            apply_chunk(&base, &delta, chunk.len(), &mut out).unwrap();
            result.extend_from_slice(&out);
        }
        result
    }

    #[test]
    fn block_size_follows_rsync() {
        assert_eq!(block_size(0), 700);
        assert_eq!(block_size(20 << 20), 4576);
        assert_eq!(block_size(1 << 40), 128 << 10);
    }

    #[test]
    fn small_edit_in_big_file_costs_little() {
        let old: Vec<u8> = (0..20u32 << 20)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let mut new = old.clone();
        for b in &mut new[10 << 20..(10 << 20) + 4096] {
            *b ^= 0x5a;
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("old");
        std::fs::write(&p, &old).unwrap();
        let d = Differ::new(file_signature(&p, old.len() as u64).unwrap()).unwrap();
        let total: usize = new
            .chunks(DELTA_CHUNK)
            .enumerate()
            .map(|(i, c)| d.diff(i, c).unwrap().len())
            .sum();
        assert!(total < 32 << 10, "delta was {total} bytes");
        assert_eq!(roundtrip(&old, &new), new);
    }

    #[test]
    fn unchanged_chunks_are_one_copy_of_any_length() {
        for len in [1usize, 700, 255, 256, 65_535, 65_536, DELTA_CHUNK] {
            let old: Vec<u8> = (0..len).map(|i| (i * 7 % 253) as u8).collect();
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("old");
            std::fs::write(&p, &old).unwrap();
            let d = Differ::new(file_signature(&p, len as u64).unwrap()).unwrap();
            let delta = d.diff(0, &old).unwrap();
            assert!(delta.len() <= 15, "{len}: {} bytes", delta.len());
            let mut out = Vec::new();
            apply_chunk(&old, &delta, len, &mut out).unwrap();
            assert_eq!(out, old, "{len}");
            // The receiver's shortcut recognises exactly this delta, within the limit.
            assert!(copies_whole(&delta, &old, len), "{len}");
            assert!(!copies_whole(&delta, &old, len - 1), "{len}");
            assert!(!copies_whole(&delta, &old[..len - 1], len), "{len}");
            // One byte more or less is not "unchanged".
            let mut longer = old.clone();
            longer.push(1);
            assert_eq!(roundtrip(&old, &longer), longer);
            assert_eq!(roundtrip(&old, &old[..len - 1]), &old[..len - 1]);
        }
    }

    #[test]
    fn chunks_signed_in_parallel_make_the_same_signature() {
        // The parallel path itself, on a file of a few chunks (the threshold only picks it).
        let len = 5 * DELTA_CHUNK + DELTA_CHUNK / 3;
        let data: Vec<u8> = (0..len as u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 7) as u8)
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big");
        std::fs::write(&p, &data).unwrap();
        let bs = block_size(len as u64);
        let parallel = file_signature_parallel(&p, len as u64, bs).unwrap();
        let serial: Vec<SigChunk> = data
            .chunks(DELTA_CHUNK)
            .map(|c| SigChunk(sign(c, bs)))
            .collect();
        assert_eq!(parallel.block_size, bs);
        assert_eq!(parallel.chunks, serial);
        // A file that shrank since its size was taken is an error, not a short signature.
        assert!(file_signature_parallel(&p, len as u64 + DELTA_CHUNK as u64, bs).is_err());
    }

    #[test]
    fn weak_sums_are_librsyncs() {
        let data: Vec<u8> = (0..50_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
            .collect();
        for (len, bs) in [
            (0, 700),
            (1, 700),
            (699, 700),
            (700, 700),
            (50_000, 4576),
            (50_000, 700),
        ] {
            let new = &data[..len];
            let sig = sign(new, bs);
            let theirs: Vec<&[u8]> = sig[SIG_HEADER..]
                .chunks(SIG_ENTRY)
                .map(|e| &e[..4])
                .collect();
            let ours: Vec<[u8; 4]> = new
                .chunks(bs as usize)
                .map(|b| weak_sum(b).to_be_bytes())
                .collect();
            assert_eq!(theirs.len(), ours.len(), "{len}/{bs}");
            assert!(theirs.iter().zip(&ours).all(|(t, o)| t == o), "{len}/{bs}");
            assert!(weak_sums_match(&sig, new, bs), "{len}/{bs}");
            if len > 0 {
                let mut changed = new.to_vec();
                changed[len / 2] ^= 1;
                assert!(!weak_sums_match(&sig, &changed, bs), "{len}/{bs}");
                assert!(
                    !weak_sums_match(&sig, &new[..len - 1], bs),
                    "{len}/{bs} shorter"
                );
            }
        }
    }

    #[test]
    fn hostile_signatures_are_refused() {
        let bad = FileSignature {
            block_size: 0,
            chunks: vec![],
        };
        assert!(matches!(Differ::new(bad), Err(DeltaError::BlockSize(0))));
        let bad = FileSignature {
            block_size: 1024,
            chunks: vec![SigChunk(vec![1, 2, 3])],
        };
        assert!(matches!(Differ::new(bad), Err(DeltaError::Signature(0))));
        let mixed = FileSignature {
            block_size: 1024,
            chunks: vec![SigChunk(sign(b"abc", 2048))],
        };
        assert!(matches!(
            Differ::new(mixed),
            Err(DeltaError::MixedBlockSize(0, 2048, 1024))
        ));
    }

    #[test]
    fn delta_cannot_exceed_limit() {
        let d = Differ::new(FileSignature {
            block_size: 700,
            chunks: vec![],
        })
        .unwrap();
        let delta = d.diff(0, &[7u8; 5000]).unwrap();
        let mut out = Vec::new();
        assert!(apply_chunk(&[], &delta, 4999, &mut out).is_err());
        assert!(apply_chunk(&[], &delta, 5000, &mut out).is_ok());
        assert!(apply_chunk(&[], b"garbage", 5000, &mut out).is_err());
    }

    fn sizes() -> impl Strategy<Value = usize> {
        let bs = MIN_BLOCK as usize;
        prop_oneof![
            Just(0usize),
            Just(1),
            Just(bs - 1),
            Just(bs),
            Just(bs + 1),
            Just(2 * bs),
            0usize..5000
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn apply_of_diff_rebuilds_new(
            old_len in sizes(),
            new_len in sizes(),
            seed in any::<u8>(),
            edit in any::<u16>(),
        ) {
            let old: Vec<u8> = (0..old_len).map(|i| (i as u8).wrapping_mul(seed | 1)).collect();
            let mut new: Vec<u8> = (0..new_len).map(|i| (i as u8).wrapping_mul(seed | 1)).collect();
            if !new.is_empty() {
                let at = edit as usize % new.len();
                new[at] = new[at].wrapping_add(1);
            }
            prop_assert_eq!(roundtrip(&old, &new), new);
        }
    }
}
