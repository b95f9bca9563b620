//! An HTTP connection's socket, plain or TLS (`[http.tls]`), with the
//! `read`/`write` meaning of a non-blocking `TcpStream`, so the server's
//! read and write paths are the same for both.
//!
//! Over TLS, [`HttpStream::read`] gives plaintext ([`Tls::recv`] drives the
//! handshake with the bytes the poll found), and [`HttpStream::write`]
//! seals what it accepts into `sealed`, the records not yet taken by the
//! socket. It accepts nothing while `sealed` is not empty, so the
//! connection's own queue (`out`, bounded by the server) keeps holding
//! what the peer has not taken, and `sealed` holds at most one
//! [`SEAL_CHUNK`] of records plus the handshake's and alerts.
//!
//! Invariants:
//! - no call blocks or loops on a socket that said `WouldBlock`;
//! - a TLS failure is an `Err` of this connection only (the alert rustls
//!   made is sent best effort first);
//! - [`HttpStream::pending`] is true while records wait for the socket:
//!   the server keeps WRITABLE interest and does not close before they are
//!   out (or the reply's deadline passes).

use std::io::{self, Read, Write};
use std::sync::Arc;

use mio::net::TcpStream;

use crate::transport::{Tls, TlsRecv};

/// Plaintext sealed per [`HttpStream::write`]: one TLS record's worth.
const SEAL_CHUNK: usize = 16 * 1024;

/// A connection's socket.
pub(super) enum HttpStream {
    Plain(TcpStream),
    Tls {
        stream: TcpStream,
        tls: Box<Tls>,
        /// Records rustls made that the socket has not taken yet.
        sealed: Vec<u8>,
        /// Set once `close_notify` is queued.
        closing: bool,
    },
}

impl HttpStream {
    /// A freshly accepted socket, wrapped in TLS when `config` is given.
    pub(super) fn accept(stream: TcpStream, config: Option<&Arc<rustls::ServerConfig>>) -> Result<HttpStream, String> {
        match config {
            None => Ok(HttpStream::Plain(stream)),
            Some(config) => {
                let tls = Box::new(Tls::accept(config)?);
                Ok(HttpStream::Tls { stream, tls, sealed: Vec::new(), closing: false })
            }
        }
    }

    /// The socket, for socket options.
    pub(super) fn tcp(&self) -> &TcpStream {
        match self {
            HttpStream::Plain(stream) | HttpStream::Tls { stream, .. } => stream,
        }
    }

    /// The socket, for registration.
    pub(super) fn tcp_mut(&mut self) -> &mut TcpStream {
        match self {
            HttpStream::Plain(stream) | HttpStream::Tls { stream, .. } => stream,
        }
    }

    /// True while sealed records wait for the socket.
    pub(super) fn pending(&self) -> bool {
        matches!(self, HttpStream::Tls { sealed, .. } if !sealed.is_empty())
    }

    /// Reads (plaintext) as `TcpStream::read` does: `Ok(0)` at the end,
    /// `WouldBlock` when drained.
    pub(super) fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let (stream, tls, sealed) = match self {
            HttpStream::Plain(stream) => return stream.read(buf),
            HttpStream::Tls { stream, tls, sealed, .. } => (stream, tls, sealed),
        };
        let got = tls.recv(stream, buf, sealed);
        // Handshake flights and alerts go out now; a full socket keeps
        // them for the next write readiness.
        let sent = send(stream, sealed);
        match got {
            TlsRecv::Data(n) => sent.map(|()| n),
            TlsRecv::WouldBlock => sent.and(Err(io::ErrorKind::WouldBlock.into())),
            TlsRecv::Eof => Ok(0),
            TlsRecv::Failed(why) => Err(io::Error::other(format!("tls: {why}"))),
            TlsRecv::Io(e) => Err(e),
        }
    }

    /// Writes as `TcpStream::write` does: how much of `buf` was taken, or
    /// `WouldBlock` while earlier records still wait for the socket.
    pub(super) fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let (stream, tls, sealed) = match self {
            HttpStream::Plain(stream) => return stream.write(buf),
            HttpStream::Tls { stream, tls, sealed, .. } => (stream, tls, sealed),
        };
        send(stream, sealed)?;
        if !sealed.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(SEAL_CHUNK);
        sealed.extend_from_slice(&buf[..n]);
        tls.seal(sealed)?;
        send(stream, sealed)?;
        Ok(n)
    }

    /// Sends what is sealed (TLS; nothing to do on a plain socket).
    pub(super) fn flush_sealed(&mut self) -> io::Result<()> {
        match self {
            HttpStream::Plain(_) => Ok(()),
            HttpStream::Tls { stream, sealed, .. } => send(stream, sealed),
        }
    }

    /// The reply is complete: over TLS, queues `close_notify` once, so the
    /// peer can tell the end of a body without a length from a cut.
    pub(super) fn finish(&mut self) -> io::Result<()> {
        if let HttpStream::Tls { stream, tls, sealed, closing } = self {
            if !*closing {
                *closing = true;
                tls.close(sealed);
            }
            send(stream, sealed)?;
        }
        Ok(())
    }
}

/// Writes from the front of `sealed` until it is empty or the socket is
/// full.
fn send(stream: &mut TcpStream, sealed: &mut Vec<u8>) -> io::Result<()> {
    let mut written = 0;
    let result = loop {
        if written == sealed.len() {
            break Ok(());
        }
        match stream.write(&sealed[written..]) {
            Ok(0) => break Err(io::Error::new(io::ErrorKind::WriteZero, "write returned 0")),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    sealed.drain(..written);
    result
}
