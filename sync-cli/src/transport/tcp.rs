//! Agents behind `rdist serve`: a TCP connection (TCP_NODELAY) authenticated with the shared
//! token by challenge and response.

use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::anyhow;
use sync_core::push::{Connection, PushOptions};

use super::{Opened, TargetError, with_deadline};

/// Connects to `host:port` and opens a session.
///
/// # Errors
/// When the server cannot be reached, refuses the token, or does not answer in time.
pub fn open(
    host: &str,
    port: u16,
    opts: PushOptions,
    timeout: Duration,
) -> Result<Opened, TargetError> {
    let addrs: Vec<_> = (host, port)
        .to_socket_addrs()
        .map_err(|e| TargetError::local(anyhow!(e).context(format!("cannot resolve `{host}`"))))?
        .collect();
    let mut last = None;
    let mut stream = None;
    for a in &addrs {
        match TcpStream::connect_timeout(a, timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let stream = stream.ok_or_else(|| {
        let e = last.map_or_else(|| anyhow!("no address"), |e| anyhow!(e));
        TargetError::local(e.context(format!("cannot connect to `{host}:{port}`"))).with_hint(
            format!("is `rdist serve --listen {host}:{port}` running there?"),
        )
    })?;
    let _ = stream.set_nodelay(true);
    let clone = |s: &TcpStream| {
        s.try_clone()
            .map_err(|e| TargetError::local(anyhow!(e).context("cannot duplicate the socket")))
    };
    let (reader, writer, killer) = (clone(&stream)?, clone(&stream)?, stream);
    let (res, timed_out) = with_deadline(
        timeout,
        move || {
            let _ = killer.shutdown(Shutdown::Both);
        },
        || {
            Connection::open(
                Box::new(reader) as super::Reader,
                Box::new(ShutdownOnDrop(writer)) as super::Writer,
                &opts.version,
                opts.token.as_ref(),
            )
        },
    );
    match res {
        Ok(conn) if !timed_out => Ok(Opened { conn, child: None }),
        _ if timed_out => Err(TargetError::local(anyhow!(
            "`{host}:{port}` did not answer within {:.0} s",
            timeout.as_secs_f64()
        ))),
        Ok(_) => unreachable!("handled above"),
        Err(e) => Err(TargetError::from_push(e, String::new())),
    }
}

/// A socket writer that shuts the connection down when dropped, so the server sees the end of
/// the session even though a cloned reader keeps the descriptor open.
struct ShutdownOnDrop(TcpStream);

impl std::io::Write for ShutdownOnDrop {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl Drop for ShutdownOnDrop {
    fn drop(&mut self) {
        let _ = self.0.shutdown(Shutdown::Write);
    }
}
