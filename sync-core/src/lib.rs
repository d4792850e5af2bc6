//! rdist's sync engine. It scans a tree, applies the ignore rules, builds a BLAKE3 manifest,
//! and mirrors it into a destination through an agent that speaks the rdist wire protocol over
//! any byte stream. It never prints, parses command lines or exits: callers get values, errors
//! and problem lists back, and observe progress through callbacks.

pub mod agent;
pub mod auth;
pub mod delta;
pub mod filter;
pub mod hash;
pub mod listing;
pub mod manifest;
pub mod path;
pub mod proto;
pub mod push;
pub mod scan;
mod sealed;
pub mod stage;
pub mod walk;

/// Drops `value` on a thread of its own. Freeing a tree's worth of entries takes milliseconds
/// that the caller (about to answer its peer or exit) need not wait for.
pub(crate) fn drop_in_background<T: Send + 'static>(value: T) {
    // Without a thread to be had, the closure, and `value` with it, is dropped right here.
    let _ = std::thread::Builder::new().spawn(move || drop(value));
}

/// The last non-blank line of a tool's output, trimmed: usually its reason for failing.
pub fn last_line(text: &str) -> Option<&str> {
    text.lines().rev().map(str::trim).find(|l| !l.is_empty())
}

/// The bytes of the regular file at `file`, opened without following a final symlink or
/// waiting on a FIFO; empty when it is missing, unreadable, not a regular file or longer than
/// `max`. For the files kept in a destination, which others may have replaced with anything.
pub(crate) fn read_regular(file: &std::path::Path, max: u64) -> Vec<u8> {
    use std::io::Read;
    let read = || -> std::io::Result<Vec<u8>> {
        let f = crate::hash::open_file(file)?;
        let meta = f.metadata()?;
        if !meta.is_file() || meta.len() > max {
            return Ok(Vec::new());
        }
        let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
        f.take(max + 1).read_to_end(&mut bytes)?;
        Ok(bytes)
    };
    read()
        .ok()
        .filter(|b| b.len() as u64 <= max)
        .unwrap_or_default()
}

/// Writes `bytes` to `file` through a temp file beside it (named for this process) renamed
/// into place, so a reader sees the old file or the new one, never part of one.
pub(crate) fn write_atomic(file: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = file.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, file))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
}
