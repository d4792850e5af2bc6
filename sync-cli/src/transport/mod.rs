//! How the controller reaches an agent: a child process speaking the protocol on its stdin and
//! stdout (locally today; through `ssh` and TCP as those transports land), with a bounded tail
//! of its stderr kept to explain a failed start.

pub mod popen;

use std::collections::VecDeque;
use std::io::Read;
use std::sync::{Arc, Mutex};

/// How much of an agent's stderr is kept.
const TAIL_BYTES: usize = 8 << 10;

/// The last bytes an agent wrote to stderr.
#[derive(Clone, Default)]
pub struct StderrTail(Arc<Mutex<VecDeque<u8>>>);

impl StderrTail {
    /// Starts a thread that keeps the tail of `r`.
    pub fn follow(mut r: impl Read + Send + 'static) -> (StderrTail, std::thread::JoinHandle<()>) {
        let tail = StderrTail::default();
        let t = tail.clone();
        let h = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut q = t.0.lock().unwrap();
                q.extend(&buf[..n]);
                let excess = q.len().saturating_sub(TAIL_BYTES);
                q.drain(..excess);
            }
        });
        (tail, h)
    }

    /// The tail as text, trimmed; empty when the agent said nothing.
    pub fn text(&self) -> String {
        let q = self.0.lock().unwrap();
        let (a, b) = q.as_slices();
        let mut v = a.to_vec();
        v.extend_from_slice(b);
        String::from_utf8_lossy(&v).trim().to_owned()
    }
}
