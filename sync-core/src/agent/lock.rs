//! One sync at a time per destination: an advisory lock on `.rdist/lock`, held for the whole
//! session and released by the OS if the agent dies.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use super::AgentError;
use crate::stage::STATE_DIR;

/// A held destination lock.
pub struct DestLock {
    _file: File,
}

impl DestLock {
    /// Takes the lock of `dest`, waiting up to `wait_ms` for another holder.
    ///
    /// # Errors
    /// [`AgentError::Locked`] after the wait, with the holder's pid.
    pub fn acquire(dest: &Path, wait_ms: u64) -> Result<DestLock, AgentError> {
        let path = dest.join(STATE_DIR).join("lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|source| AgentError::Dest {
                op: "open lock file",
                path: path.clone(),
                source,
            })?;
        let start = Instant::now();
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) => {
                    let waited = start.elapsed().as_millis() as u64;
                    if waited >= wait_ms {
                        let mut holder = String::new();
                        let _ = file.read_to_string(&mut holder);
                        return Err(AgentError::Locked {
                            dest: dest.to_owned(),
                            holder: holder.trim().to_owned(),
                            waited_ms: waited,
                        });
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(TryLockError::Error(source)) => {
                    return Err(AgentError::Dest {
                        op: "lock",
                        path,
                        source,
                    });
                }
            }
        }
        let _ = file.set_len(0);
        let _ = file.rewind();
        let _ = write!(file, "{}", std::process::id());
        Ok(DestLock { _file: file })
    }
}
