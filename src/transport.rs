//! TLS under the session: a connection's rustls state, fed the ciphertext
//! its socket gave and giving back plaintext, and sealing what the session
//! wrote. The session sees the same bytes as on a plain socket, so every
//! byte-stream protocol runs over it unchanged.
//!
//! [`Tls::recv`] keeps the meaning of one plain `recv` that the loop relies
//! on: a result shorter than the buffer says the socket is drained (the
//! loop then stops reading it this round and waits for the next edge). To
//! keep that true it reads the socket until the socket gives less than
//! asked or enough plaintext is decrypted to fill the buffer; plaintext
//! decrypted beyond what the buffer takes stays in rustls and is handed
//! out first next time.
//!
//! Output never waits inside rustls: every call moves the records rustls
//! produced (handshake flights, alerts, sealed replies) to the caller's
//! buffer, and the connection writes or queues them as it does plain
//! bytes, so ordering and the `write-stalled` bound are the connection's.
//!
//! Invariants:
//! - No more ciphertext is read than leaves rustls' received-plaintext
//!   buffer within its 16 KiB limit: what is decrypted plus what is asked
//!   never passes the caller's buffer (at most the read budget).
//! - After an error, rustls' alert (if any) is in `out`, and the
//!   connection must not be fed again.
//! - The handshake is driven only by the bytes the loop's poll found: no
//!   call blocks and none loops on a socket that said `WouldBlock`.

use std::io::{self, Read, Write};

use mio::net::TcpStream;
use rustls::pki_types::CertificateDer;
use rustls::ServerConnection;

use crate::tls::{self, ClientIdFrom};

/// What one [`Tls::recv`] gave.
#[derive(Debug)]
pub enum TlsRecv {
    /// This many plaintext bytes at the start of the buffer.
    Data(usize),
    /// Nothing now: the socket is drained (the handshake may have moved).
    WouldBlock,
    /// The peer closed: FIN, or a TLS `close_notify`.
    Eof,
    /// TLS failed, in words ([`tls::describe`]).
    Failed(String),
    /// The socket failed.
    Io(io::Error),
}

/// A TLS connection's state (boxed in the connection).
pub struct Tls {
    conn: ServerConnection,
}

impl Tls {
    /// A server-side TLS state for a freshly accepted connection.
    pub fn accept(config: &std::sync::Arc<rustls::ServerConfig>) -> Result<Tls, String> {
        ServerConnection::new(std::sync::Arc::clone(config)).map(|conn| Tls { conn }).map_err(|e| tls::describe(&e))
    }

    /// True until the handshake is complete.
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Reads from `stream` into `buf` and decrypts: see the module doc.
    /// Records to send (handshake, alerts) are appended to `out`.
    pub fn recv(&mut self, stream: &mut TcpStream, buf: &mut [u8], out: &mut Vec<u8>) -> TlsRecv {
        loop {
            let buffered = match self.conn.process_new_packets() {
                Ok(state) => state.plaintext_bytes_to_read(),
                Err(e) => return self.failed(&e, out),
            };
            if buffered >= buf.len() {
                return self.plaintext(buf);
            }
            // What is asked never lets decrypted bytes pass `buf.len()`.
            let asked = buf.len() - buffered;
            let n = match stream.read(&mut buf[..asked]) {
                Ok(0) if buffered > 0 => return self.plaintext(buf),
                Ok(0) => return TlsRecv::Eof,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && buffered > 0 => return self.plaintext(buf),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return TlsRecv::WouldBlock,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return TlsRecv::Io(e),
            };
            if let Err(e) = self.feed(&buf[..n]) {
                return self.failed(&e, out);
            }
            self.take_output(out);
            if n < asked {
                // Drained: hand out what there is; less than `buf.len()`
                // tells the loop so.
                return match self.conn.process_new_packets() {
                    Err(e) => self.failed(&e, out),
                    Ok(state) if state.plaintext_bytes_to_read() > 0 => self.plaintext(buf),
                    Ok(state) if state.peer_has_closed() => TlsRecv::Eof,
                    Ok(_) => {
                        self.take_output(out);
                        TlsRecv::WouldBlock
                    }
                };
            }
        }
    }

    /// Seals the plaintext in `buf` in place: afterwards `buf` holds the
    /// records to send (nothing while the handshake is under way: rustls
    /// keeps the plaintext until it completes, then it comes out with the
    /// records of a later call).
    pub fn seal(&mut self, buf: &mut Vec<u8>) -> io::Result<()> {
        if !buf.is_empty() {
            self.conn.writer().write_all(buf)?;
            buf.clear();
        }
        self.take_output(buf);
        Ok(())
    }

    /// Queues a `close_notify` alert (the end of the replies) and moves
    /// it, with anything else rustls has to send, to `out`.
    pub fn close(&mut self, out: &mut Vec<u8>) {
        self.conn.send_close_notify();
        self.take_output(out);
    }

    /// The names of kind `from` in the client's certificate (mutual TLS);
    /// empty without one.
    pub fn peer_names(&self, from: ClientIdFrom) -> Vec<String> {
        let leaf: Option<&CertificateDer<'_>> = self.conn.peer_certificates().and_then(|c| c.first());
        leaf.map_or_else(Vec::new, |cert| tls::names(cert, from))
    }

    /// Hands `ciphertext` to rustls, processing records as they complete
    /// so its deframer never holds more than one read.
    fn feed(&mut self, mut ciphertext: &[u8]) -> Result<(), rustls::Error> {
        while !ciphertext.is_empty() {
            match self.conn.read_tls(&mut ciphertext) {
                // After the peer's `close_notify` rustls takes nothing more.
                Ok(0) => break,
                Ok(_) => {}
                // Only "buffer full", which the module invariant rules out;
                // treated as a malformed peer rather than trusted.
                Err(e) => return Err(rustls::Error::General(e.to_string())),
            }
            self.conn.process_new_packets()?;
        }
        Ok(())
    }

    /// Copies decrypted bytes to `buf`.
    fn plaintext(&mut self, buf: &mut [u8]) -> TlsRecv {
        match self.conn.reader().read(buf) {
            Ok(0) => TlsRecv::Eof,
            Ok(n) => TlsRecv::Data(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => TlsRecv::WouldBlock,
            Err(e) => TlsRecv::Io(e),
        }
    }

    /// Moves every record rustls has to send to `out`.
    fn take_output(&mut self, out: &mut Vec<u8>) {
        while self.conn.wants_write() {
            // Writing to a `Vec` cannot fail.
            if self.conn.write_tls(out).is_err() {
                break;
            }
        }
    }

    /// The error in words, with rustls' alert for the peer moved to `out`.
    fn failed(&mut self, e: &rustls::Error, out: &mut Vec<u8>) -> TlsRecv {
        self.take_output(out);
        TlsRecv::Failed(tls::describe(e))
    }
}
