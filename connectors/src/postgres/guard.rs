//! A TCP stream to PostgreSQL that refuses to answer a cleartext-password request on a
//! connection that is not encrypted.
//!
//! tokio-postgres answers `AuthenticationCleartextPassword` with the password whatever the
//! transport, so a man in the middle of a plain connection (`sslmode=disable`, or `prefer`
//! against a server, real or not, that declines TLS) could ask for it and read it. This
//! wrapper watches what the server sends until authentication ends: after the server accepts
//! TLS it has nothing to watch (the bytes are encrypted); on a plain connection it reads the
//! message headers, and a cleartext-password request ends the connection before the client
//! can answer. MD5 and SCRAM send no reusable password and pass.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// `AuthenticationCleartextPassword`'s code in an `R` message.
const AUTH_CLEARTEXT: u32 = 3;
/// `AuthenticationOk`'s code: authentication is over, nothing more to watch.
const AUTH_OK: u32 = 0;

/// What the watcher expects next from the server.
#[derive(Debug)]
enum Watch {
    /// The one-byte answer to the SSLRequest (`S` or `N`).
    SslAnswer,
    /// Plain protocol messages: collecting a header (type, length) and, for `R`, the code.
    Messages {
        head: [u8; 9],
        have: usize,
        skip: u64,
    },
    /// TLS was accepted, or authentication ended: pass everything.
    Done,
}

/// The state machine over what the server sends.
#[derive(Debug)]
struct Watcher(Watch);

impl Watcher {
    fn new(ssl_request: bool) -> Self {
        Watcher(if ssl_request {
            Watch::SslAnswer
        } else {
            Watch::plain()
        })
    }

    fn done(&self) -> bool {
        matches!(self.0, Watch::Done)
    }

    /// Feeds bytes the server sent; `false` when it asked for a cleartext password on a
    /// plain connection.
    fn inspect(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            match &mut self.0 {
                Watch::Done => return true,
                Watch::SslAnswer => {
                    self.0 = if bytes[0] == b'S' {
                        Watch::Done
                    } else {
                        Watch::plain()
                    };
                    bytes = &bytes[1..];
                }
                Watch::Messages { head, have, skip } => {
                    if *skip > 0 {
                        let n = (*skip).min(bytes.len() as u64) as usize;
                        *skip -= n as u64;
                        bytes = &bytes[n..];
                        continue;
                    }
                    // The type byte and the length; for `R` also the 4-byte code.
                    let want = |head: &[u8; 9], have: usize| {
                        if have >= 1 && head[0] == b'R' { 9 } else { 5 }
                    };
                    let n = (want(head, *have) - *have).min(bytes.len());
                    head[*have..*have + n].copy_from_slice(&bytes[..n]);
                    *have += n;
                    bytes = &bytes[n..];
                    if *have < want(head, *have) {
                        continue;
                    }
                    let len = u64::from(u32::from_be_bytes([head[1], head[2], head[3], head[4]]));
                    if head[0] == b'R' {
                        match u32::from_be_bytes([head[5], head[6], head[7], head[8]]) {
                            AUTH_CLEARTEXT => return false,
                            AUTH_OK => {
                                self.0 = Watch::Done;
                                continue;
                            }
                            _ => *skip = len.saturating_sub(8),
                        }
                    } else {
                        *skip = len.saturating_sub(4);
                    }
                    *have = 0;
                }
            }
        }
        true
    }
}

impl Watch {
    fn plain() -> Self {
        Watch::Messages {
            head: [0; 9],
            have: 0,
            skip: 0,
        }
    }
}

/// A TCP stream that refuses cleartext passwords on a plain connection.
#[derive(Debug)]
pub struct GuardedStream {
    inner: TcpStream,
    watcher: Watcher,
    refused: Arc<AtomicBool>,
}

impl GuardedStream {
    /// Wraps `inner`; `ssl_request` says whether the client first asks for TLS. `refused`
    /// is set when a cleartext-password request was refused.
    pub fn new(inner: TcpStream, ssl_request: bool, refused: Arc<AtomicBool>) -> Self {
        Self {
            inner,
            watcher: Watcher::new(ssl_request),
            refused,
        }
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if !this.watcher.done() => {
                if this.watcher.inspect(&buf.filled()[before..]) {
                    Poll::Ready(Ok(()))
                } else {
                    this.refused.store(true, Ordering::Relaxed);
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        "the server asked for the password in clear text over an unencrypted connection",
                    )))
                }
            }
            other => other,
        }
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(code: u32, extra: &[u8]) -> Vec<u8> {
        let mut m = vec![b'R'];
        m.extend_from_slice(&((8 + extra.len()) as u32).to_be_bytes());
        m.extend_from_slice(&code.to_be_bytes());
        m.extend_from_slice(extra);
        m
    }

    fn message(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![kind];
        m.extend_from_slice(&((4 + body.len()) as u32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    /// Feeds `stream` in pieces of every size from 1 to its length: the answer must not
    /// depend on how the network cut it.
    fn accepted(ssl_request: bool, stream: &[u8]) -> bool {
        let answers: Vec<bool> = (1..=stream.len())
            .map(|chunk| {
                let mut w = Watcher::new(ssl_request);
                stream.chunks(chunk).all(|piece| w.inspect(piece))
            })
            .collect();
        assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:?}");
        answers[0]
    }

    #[test]
    fn a_cleartext_request_on_a_plain_connection_is_refused_however_it_arrives() {
        let notice = message(b'N', b"SWARNING\0Mhello\0\0");
        let cleartext = [notice.clone(), auth(AUTH_CLEARTEXT, &[])].concat();
        assert!(!accepted(false, &cleartext));
        // `prefer` against a server that declines TLS.
        assert!(!accepted(true, &[b"N".as_slice(), &cleartext].concat()));
        // TLS accepted: the rest is encrypted and not read.
        assert!(accepted(
            true,
            &[b"S".as_slice(), &auth(AUTH_CLEARTEXT, &[])].concat()
        ));
        // MD5 (salt) and SCRAM (mechanism list), then OK and whatever follows.
        let md5 = [
            auth(5, b"salt"),
            auth(AUTH_OK, &[]),
            auth(AUTH_CLEARTEXT, &[]),
        ]
        .concat();
        assert!(accepted(false, &md5));
        let scram = [
            auth(10, b"SCRAM-SHA-256\0\0"),
            auth(11, b"r=abc,s=def,i=4096"),
            auth(12, b"v=xyz"),
            auth(AUTH_OK, &[]),
        ]
        .concat();
        assert!(accepted(false, &scram));
        // An error before authentication (a wrong database) passes.
        assert!(accepted(false, &message(b'E', b"SFATAL\0C3D000\0\0")));
    }
}
