//! Shared-token authentication for `rdist serve`, by challenge and response, so the token never
//! crosses the wire and a recorded exchange cannot be replayed.
//!
//! Both sides derive a key from the token (`blake3::derive_key`). After the hellos the server
//! sends a random 32-byte nonce; the client answers with its own nonce and a keyed BLAKE3 over
//! both nonces; the server checks it (constant time) and proves that it knows the token too
//! with a second MAC over the same nonces. A wrong token costs the client one `Error` frame.

use std::io::{BufRead, Write};

use crate::proto::{Message, ProtoError, read_frame, write_frame};

/// A key derived from a shared token.
#[derive(Clone)]
pub struct Key([u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    /// Derives the key for `token` (surrounding whitespace ignored).
    pub fn from_token(token: &str) -> Key {
        Key(blake3::derive_key(
            "rdist serve token v1",
            token.trim().as_bytes(),
        ))
    }

    fn mac(&self, server: &[u8; 32], client: &[u8; 32], role: &[u8]) -> blake3::Hash {
        let mut h = blake3::Hasher::new_keyed(&self.0);
        h.update(server);
        h.update(client);
        h.update(role);
        h.finalize()
    }
}

/// A fresh random token for a server that was given none: 32 bytes, hex.
///
/// # Errors
/// When the OS has no randomness to give.
pub fn new_token() -> Result<String, getrandom::Error> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn nonce() -> Result<[u8; 32], ProtoError> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| ProtoError::Invalid(format!("no randomness: {e}")))?;
    Ok(b)
}

/// Why authentication failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(transparent)]
    Proto(#[from] ProtoError),
    #[error("authentication failed: the token does not match")]
    BadToken,
    #[error("the server could not prove it knows the token")]
    BadServer,
}

/// The server's side: challenge, check, prove.
///
/// # Errors
/// A wrong token (after telling the client), or a broken exchange.
pub fn server(r: &mut impl BufRead, w: &mut impl Write, key: &Key) -> Result<(), AuthError> {
    let server_nonce = nonce()?;
    write_frame(
        w,
        &Message::Challenge {
            nonce: server_nonce,
        },
    )?;
    w.flush().map_err(ProtoError::from)?;
    let (client_nonce, mac) = match read_frame(r)?.0 {
        Message::Proof { nonce, mac } => (nonce, mac),
        other => {
            return Err(ProtoError::Unexpected {
                got: other.name(),
                expected: "Proof",
            }
            .into());
        }
    };
    if key.mac(&server_nonce, &client_nonce, b"client") != blake3::Hash::from_bytes(mac) {
        let _ = write_frame(
            w,
            &Message::Error("authentication failed: the token does not match".into()),
        );
        let _ = w.flush();
        return Err(AuthError::BadToken);
    }
    let proof = key.mac(&server_nonce, &client_nonce, b"server");
    write_frame(
        w,
        &Message::Proven {
            mac: *proof.as_bytes(),
        },
    )?;
    w.flush().map_err(ProtoError::from)?;
    Ok(())
}

/// The client's side: answer the challenge, check the server's proof.
///
/// # Errors
/// A refused token, a server that cannot prove the token, or a broken exchange.
pub fn client(r: &mut impl BufRead, w: &mut impl Write, key: &Key) -> Result<(), AuthError> {
    let server_nonce = match read_frame(r)?.0 {
        Message::Challenge { nonce } => nonce,
        Message::Error(e) => return Err(ProtoError::Remote(e).into()),
        other => {
            return Err(ProtoError::Unexpected {
                got: other.name(),
                expected: "Challenge",
            }
            .into());
        }
    };
    let client_nonce = nonce()?;
    let mac = key.mac(&server_nonce, &client_nonce, b"client");
    write_frame(
        w,
        &Message::Proof {
            nonce: client_nonce,
            mac: *mac.as_bytes(),
        },
    )?;
    w.flush().map_err(ProtoError::from)?;
    match read_frame(r)?.0 {
        Message::Proven { mac } => {
            if key.mac(&server_nonce, &client_nonce, b"server") == blake3::Hash::from_bytes(mac) {
                Ok(())
            } else {
                Err(AuthError::BadServer)
            }
        }
        Message::Error(e) if e.starts_with("authentication failed") => Err(AuthError::BadToken),
        Message::Error(e) => Err(ProtoError::Remote(e).into()),
        other => Err(ProtoError::Unexpected {
            got: other.name(),
            expected: "Proven",
        }
        .into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(
        server_token: &str,
        client_token: &str,
    ) -> (Result<(), AuthError>, Result<(), AuthError>) {
        let (sr, cw) = std::io::pipe().unwrap();
        let (cr, sw) = std::io::pipe().unwrap();
        let sk = Key::from_token(server_token);
        let s = std::thread::spawn(move || {
            let mut r = std::io::BufReader::new(sr);
            let mut w = sw;
            server(&mut r, &mut w, &sk)
        });
        let mut r = std::io::BufReader::new(cr);
        let mut w = cw;
        let c = client(&mut r, &mut w, &Key::from_token(client_token));
        drop(w);
        (s.join().unwrap(), c)
    }

    #[test]
    fn matching_tokens_authenticate_both_ways() {
        let (s, c) = run("secret\n", "secret");
        assert!(s.is_ok() && c.is_ok(), "{s:?} {c:?}");
    }

    #[test]
    fn wrong_token_is_refused_on_both_sides() {
        let (s, c) = run("secret", "guess");
        assert!(matches!(s, Err(AuthError::BadToken)));
        assert!(matches!(c, Err(AuthError::BadToken)), "{c:?}");
    }

    #[test]
    fn generated_tokens_are_distinct_hex() {
        let (a, b) = (new_token().unwrap(), new_token().unwrap());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
