//! The framing of rdist's own files (the controller's hash cache, the agent's state): a header
//! that names the file's kind and version and checksums the rest, so that a file of another
//! version, a cut one or a damaged one reads as no file at all.
//!
//! Header ([`HEADER`] bytes): the kind's 8-byte magic, the XXH3-64 of everything after these
//! first 16 bytes, the version and a count of records (u32 each), all little-endian. The body
//! after it is the kind's own.

use xxhash_rust::xxh3::xxh3_64;

pub(crate) const HEADER: usize = 24;

/// The header of a file of kind `magic` and `version`, for [`seal`] to complete once the body
/// is appended.
pub(crate) fn start(magic: &[u8; 8], version: u32, capacity: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(capacity.max(HEADER));
    bytes.extend_from_slice(magic);
    bytes.extend_from_slice(&[0; 8]);
    bytes.extend_from_slice(&version.to_le_bytes());
    bytes.extend_from_slice(&[0; 4]);
    bytes
}

/// Writes the record count and the checksum into a file begun with [`start`].
pub(crate) fn seal(bytes: &mut [u8], count: u32) {
    bytes[20..HEADER].copy_from_slice(&count.to_le_bytes());
    let sum = xxh3_64(&bytes[16..]);
    bytes[8..16].copy_from_slice(&sum.to_le_bytes());
}

/// The record count and the body of `bytes`, if they are a whole file of kind `magic` and
/// `version`.
pub(crate) fn open<'a>(
    bytes: &'a [u8],
    magic: &[u8; 8],
    version: u32,
) -> Option<(usize, &'a [u8])> {
    let (header, body) = bytes.split_first_chunk::<HEADER>()?;
    let u32_at = |k: usize| u32::from_le_bytes(header[k..k + 4].try_into().expect("4 bytes"));
    let sum = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    (header[..8] == *magic && xxh3_64(&bytes[16..]) == sum && u32_at(16) == version)
        .then(|| (u32_at(20) as usize, body))
}
