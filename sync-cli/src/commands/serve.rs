//! `rdist serve`: the replacement for execnet's `socketserver.py`. It listens on loopback unless
//! told otherwise, makes every client prove it knows the shared token (challenge and response;
//! the token never crosses the wire), confines each session to a directory below `--root`, serves
//! many sessions at once, refuses and logs bad peers without going down, and stops gracefully on
//! SIGTERM or Ctrl-C.

use std::io::BufReader;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use sync_core::agent::{AgentOptions, error_chain, serve};
use sync_core::auth::{Key, new_token};

use crate::cli::ServeArgs;
use crate::exit::{Code, Failure};

/// How long a session may wait for its peer before it is dropped.
const IDLE: Duration = Duration::from_secs(300);
/// How long a shutdown waits for running sessions.
const DRAIN: Duration = Duration::from_secs(30);

fn log(msg: &str) {
    eprintln!("rdist serve: {msg}");
}

/// The token: from `--token-file`, else `RDIST_TOKEN`, else a new one (written to
/// `--token-file` if that names a missing file) printed once.
fn token(args: &ServeArgs) -> Result<String, Failure> {
    if let Some(f) = &args.token_file {
        match std::fs::read_to_string(f) {
            Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_owned()),
            Ok(_) => {
                return Err(Failure::usage(anyhow!(
                    "token file `{}` is empty",
                    f.display()
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let t = new_token()
                    .map_err(|e| Failure::failed(anyhow!("cannot generate a token: {e}")))?;
                write_private(f, &t)
                    .with_context(|| format!("cannot write token file `{}`", f.display()))
                    .map_err(Failure::failed)?;
                log(&format!("generated a token into `{}`", f.display()));
                return Ok(t);
            }
            Err(e) => {
                return Err(Failure::usage(
                    anyhow!(e).context(format!("cannot read token file `{}`", f.display())),
                ));
            }
        }
    }
    if let Ok(t) = std::env::var("RDIST_TOKEN")
        && !t.trim().is_empty()
    {
        return Ok(t.trim().to_owned());
    }
    let t = new_token().map_err(|e| Failure::failed(anyhow!("cannot generate a token: {e}")))?;
    log(&format!("no token given; clients must set RDIST_TOKEN={t}"));
    Ok(t)
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    writeln!(f, "{text}")
}

/// Runs the server until SIGTERM/SIGINT.
///
/// # Errors
/// A bad root, token or address.
pub fn run(args: &ServeArgs) -> Result<Code, Failure> {
    std::fs::create_dir_all(&args.root)
        .and_then(|()| std::fs::canonicalize(&args.root))
        .map_err(|e| {
            Failure::usage(
                anyhow!(e).context(format!("cannot use `{}` as the root", args.root.display())),
            )
        })?;
    let root = std::fs::canonicalize(&args.root).expect("created above");
    let key = Key::from_token(&token(args)?);
    let addr: SocketAddr = args.listen.parse().map_err(|e| {
        Failure::usage(anyhow!("invalid listen address `{}`: {e}", args.listen))
            .with_hint("give HOST:PORT, e.g. `127.0.0.1:8888` or `[::1]:8888`")
    })?;
    if !addr.ip().is_loopback() {
        log(&format!(
            "warning: listening on non-loopback `{addr}`: anyone who can reach it and knows the token can write below `{}`",
            root.display()
        ));
    }
    let listener = TcpListener::bind(addr)
        .map_err(|e| Failure::failed(anyhow!(e).context(format!("cannot listen on `{addr}`"))))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Failure::failed(anyhow!(e).context("cannot configure the listener")))?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(|e| Failure::failed(anyhow!(e).context("cannot install signal handlers")))?;
    }
    let local = listener.local_addr().map_or(addr, |a| a);
    log(&format!(
        "listening on {local}; sessions below `{}`",
        root.display()
    ));
    let active = Arc::new(AtomicUsize::new(0));
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, peer)) => {
                if active.load(Ordering::Relaxed) >= args.max_sessions {
                    log(&format!(
                        "{peer}: refused, {} sessions already running",
                        args.max_sessions
                    ));
                    continue;
                }
                active.fetch_add(1, Ordering::Relaxed);
                let opts = AgentOptions {
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    threads,
                    confine: Some(root.clone()),
                    home: None,
                    // The plugin lives outside the root, where no session can write.
                    cache_dir: crate::settings::cache_dir(),
                    token: Some(key.clone()),
                    worker_plugin: Some(crate::dispatch::worker::PLUGIN),
                };
                let active = active.clone();
                std::thread::spawn(move || {
                    session(stream, peer, &opts);
                    active.fetch_sub(1, Ordering::Relaxed);
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                log(&format!("accept failed: {e}"));
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    drop(listener);
    let n = active.load(Ordering::Relaxed);
    if n > 0 {
        log(&format!("stopping: waiting for {n} session(s) to finish"));
    }
    let start = Instant::now();
    while active.load(Ordering::Relaxed) > 0 && start.elapsed() < DRAIN {
        std::thread::sleep(Duration::from_millis(50));
    }
    log("stopped");
    Ok(Code::Ok)
}

fn session(stream: TcpStream, peer: SocketAddr, opts: &AgentOptions) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(IDLE));
    let reader = match stream.try_clone() {
        Ok(r) => BufReader::new(r),
        Err(e) => {
            log(&format!("{peer}: {e}"));
            return;
        }
    };
    log(&format!("{peer}: connected"));
    match serve(reader, &stream, opts) {
        Ok(()) => log(&format!("{peer}: done")),
        Err(e) => log(&format!("{peer}: refused: {}", error_chain(&e))),
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

/// Where `rdist serve` keeps sessions when `--root` is not given.
pub fn default_root() -> PathBuf {
    crate::settings::cache_dir()
        .unwrap_or_else(|| PathBuf::from("."))
        .join("serve")
}
