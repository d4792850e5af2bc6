//! `rdist agent --stdio`: the worker side. Speaks the protocol on stdin/stdout; anything it has
//! to say to a human goes to stderr, which the controller keeps the tail of.

use sync_core::agent::{AgentOptions, error_chain, serve};

use crate::cli::AgentArgs;
use crate::exit::{Code, Failure};

/// The options of an unconfined agent on this machine (also used in-process, for probes of
/// local worker directories).
pub(crate) fn options() -> AgentOptions {
    AgentOptions {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
        confine: None,
        home: std::env::var_os("HOME").map(std::path::PathBuf::from),
        cache_dir: crate::settings::cache_dir(),
        token: None,
        worker_plugin: Some(crate::dispatch::worker::PLUGIN),
    }
}

/// Serves until the controller closes the connection.
///
/// # Errors
/// A fatal protocol or destination error (already reported to the controller).
pub fn run(_args: &AgentArgs) -> Result<Code, Failure> {
    let opts = options();
    // Raw descriptors: std's stdout is line-buffered, which would split binary frames at every
    // newline byte.
    use std::os::fd::AsFd;
    let raw = |fd: std::os::fd::BorrowedFd<'_>| fd.try_clone_to_owned().map(std::fs::File::from);
    let (input, output) = match (
        raw(std::io::stdin().as_fd()),
        raw(std::io::stdout().as_fd()),
    ) {
        (Ok(i), Ok(o)) => (i, o),
        (Err(e), _) | (_, Err(e)) => {
            return Err(Failure::failed(
                anyhow::anyhow!(e).context("cannot open stdin/stdout"),
            ));
        }
    };
    // Behind ssh these are sshd's 64 KiB pipes: ask for ones that hold a data frame, as the
    // controller does for the pipes it makes (best effort; sockets and capped systems refuse).
    for fd in [input.as_fd(), output.as_fd()] {
        let _ = rustix::pipe::fcntl_setpipe_size(fd, crate::transport::PIPE_SIZE);
    }
    match serve(input, output, &opts) {
        Ok(()) => Ok(Code::Ok),
        Err(e) => {
            eprintln!("rdist agent: {}", error_chain(&e));
            Ok(Code::Failed)
        }
    }
}
