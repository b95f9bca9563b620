//! One client connection: its socket, its [`Session`], and the bounded
//! queue of output the socket has not taken yet.
//!
//! A `Conn` moves bytes between the socket and the session; it knows no
//! wire format (the session writes every frame), and nothing of the poll,
//! the wheel or other connections. Every call that lets the session speak
//! writes the reply at once ([`Conn::ingest`], [`Conn::welcome`],
//! [`Conn::on_timer`], [`Conn::say`]): a reply can only reach the
//! connection it belongs to.
//!
//! Output is built in a scratch buffer the loop lends to each call and
//! gets back empty; only what the socket does not take is kept, in a box
//! allocated on demand. An idle connection therefore owns no heap memory
//! beyond its session's id, and a heartbeat allocates nothing.
//!
//! A connection of a TLS listener carries a [`Tls`] state under the
//! session (`transport.rs`): `recv` gives plaintext, and output is sealed
//! before it is written or queued, so the session and the loop see the
//! same bytes and the same results as on a plain socket.
//!
//! Invariants:
//! - Bytes leave in the order they were produced: queued output is written
//!   before new output. `extra` is `None` whenever the queue would be
//!   empty and the connection is plain.
//! - More than [`OUT_LIMIT`] bytes still unwritten after a write means the
//!   client stopped reading (`write-stalled`).
//! - The scratch buffer is empty when every method returns.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::Instant;

use mio::net::TcpStream;

use crate::config::ListenerConfig;
use crate::event::OfflineReason;
use crate::session::{Next, Session};
use crate::transport::{Tls, TlsRecv};
use crate::wire::Protocol;

/// Output bytes a client may leave unread before it is dropped as
/// `write-stalled`. Frames are tiny, so 64 KiB is thousands of replies the
/// client failed to read on top of what the kernel buffers already hold.
pub const OUT_LIMIT: usize = 64 * 1024;

/// What one read from the socket gave.
#[derive(Debug)]
pub enum Recv {
    /// This many bytes, at the start of the buffer.
    Data(usize),
    /// Nothing now: the socket is drained.
    WouldBlock,
    /// The connection ended (FIN, reset, an error): close with this.
    Closed(Next),
}

/// One accepted client connection.
pub struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    /// The key of the listener that accepted it (see [`Conn::listener`]).
    listener: u32,
    session: Session,
    /// Output the socket did not take yet, and the TLS state; `None` on a
    /// plain connection with nothing queued. Boxed together: 8 bytes in
    /// every idle plain connection, for a queue that exists only while a
    /// client is slow to read and a TLS state only on TLS listeners.
    extra: Option<Box<Extra>>,
}

/// What only some connections need (see [`Conn`]'s `extra`).
struct Extra {
    /// Output the socket did not take yet; its capacity is released once
    /// it is written.
    queue: Vec<u8>,
    /// On a TLS listener: the TLS state (`transport.rs`).
    tls: Option<Tls>,
}

impl Conn {
    /// Wraps a freshly accepted socket with a new session of `proto`.
    pub fn new(stream: TcpStream, peer: SocketAddr, listener: usize, proto: Protocol, now: Instant) -> Conn {
        Conn {
            stream,
            peer,
            // Listener keys are small slab keys; u32::MAX would name none.
            listener: u32::try_from(listener).unwrap_or(u32::MAX),
            session: Session::accepted(proto, peer, now),
            extra: None,
        }
    }

    /// Runs the connection over TLS: from now on `recv` gives plaintext
    /// and output is sealed. Called once, before any byte is read.
    pub fn start_tls(&mut self, tls: Tls) {
        self.extra = Some(Box::new(Extra { queue: Vec::new(), tls: Some(tls) }));
    }

    /// Wraps a socket kept across a restart with its restored session.
    pub fn restored(stream: TcpStream, peer: SocketAddr, listener: usize, session: Session) -> Conn {
        Conn { stream, peer, listener: u32::try_from(listener).unwrap_or(u32::MAX), session, extra: None }
    }

    /// The key of the listener that accepted it.
    pub fn listener(&self) -> usize {
        self.listener as usize
    }

    /// The peer's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The protocol state.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The socket, for socket options and `TCP_INFO`.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// The socket, for (de)registering it with the poll.
    pub fn stream_mut(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// The id events carry: the HELLO id, or the peer address for protocols
    /// without one.
    pub fn client_id(&self) -> String {
        match self.session.id() {
            Some(id) => id.to_string(),
            None => self.peer.to_string(),
        }
    }

    /// True while output waits for the socket to become writable.
    pub fn wants_write(&self) -> bool {
        self.extra.as_ref().is_some_and(|e| !e.queue.is_empty())
    }

    /// True when the connection runs over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls().is_some()
    }

    /// Ends the TLS stream of a connection that is closing with a
    /// `close_notify` alert, after all earlier output, so the client can
    /// tell the end from a truncation (a client that checks treats a bare
    /// FIN as an attack). Only once the handshake is complete: before, the
    /// handshake's own alert says why. Best effort, as the connection is
    /// closing: what the socket does not take is queued like any output,
    /// and a failed write changes nothing. Plain connections: nothing.
    pub fn close_notify(&mut self) {
        let mut alert = Vec::new();
        match self.extra.as_mut().and_then(|e| e.tls.as_mut()) {
            Some(tls) if !tls.is_handshaking() => tls.close(&mut alert),
            _ => return,
        }
        self.write_out(Next::Continue, &mut alert);
    }

    /// The TLS state, on a TLS listener.
    fn tls(&self) -> Option<&Tls> {
        self.extra.as_ref().and_then(|e| e.tls.as_ref())
    }

    /// One read into `buf`, retried when interrupted. Over TLS, plaintext
    /// (see [`Tls::recv`]); the handshake's records are sent on the way.
    pub fn recv(&mut self, buf: &mut [u8]) -> Recv {
        if let Some(tls) = self.extra.as_mut().and_then(|e| e.tls.as_mut()) {
            let mut out = Vec::new();
            let got = tls.recv(&mut self.stream, buf, &mut out);
            let next = self.write_out(Next::Continue, &mut out);
            return match got {
                _ if next != Next::Continue => Recv::Closed(next),
                TlsRecv::Data(n) => Recv::Data(n),
                TlsRecv::WouldBlock => Recv::WouldBlock,
                TlsRecv::Eof => Recv::Closed(Next::Close(OfflineReason::Closed, None)),
                TlsRecv::Failed(why) => Recv::Closed(Next::close(OfflineReason::ProtocolError, format!("tls: {why}"))),
                TlsRecv::Io(e) => Recv::Closed(io_close(&e)),
            };
        }
        loop {
            return match self.stream.read(buf) {
                Ok(0) => Recv::Closed(Next::Close(OfflineReason::Closed, None)),
                Ok(n) => Recv::Data(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Recv::WouldBlock,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => Recv::Closed(io_close(&e)),
            };
        }
    }

    /// Hands received bytes to the session and sends its replies. Returns
    /// the decision and the bytes used, as [`Session::ingest`] does; a
    /// failed write turns the decision into `Close`.
    pub fn ingest(&mut self, data: &[u8], now: Instant, cfg: &ListenerConfig, scratch: &mut Vec<u8>) -> (Next, usize) {
        let (mut next, used) = self.session.ingest(data, now, cfg, scratch);
        if let (Next::Hello(_) | Next::Probe, Some(tls), Some(settings)) = (&next, self.tls(), &cfg.tls) {
            // Mutual TLS: the certificate says who the client is.
            if settings.mutual() {
                let names = tls.peer_names(settings.client_id);
                let refused = self.session.check_identity(&names, settings.client_id.describe(), scratch);
                if refused != Next::Continue {
                    next = refused;
                }
            }
        }
        (self.send(next, scratch), used)
    }

    /// Puts the session online after its HELLO was accepted (see
    /// [`Session::welcome`]) and sends the WELCOME.
    pub fn welcome(&mut self, now: Instant, session: u64, cfg: &ListenerConfig, scratch: &mut Vec<u8>) -> Next {
        self.session.welcome(now, session, cfg, scratch);
        self.send(Next::Continue, scratch)
    }

    /// Handles the session's deadline (see [`Session::on_timer`]).
    pub fn on_timer(&mut self, now: Instant, cfg: &ListenerConfig, scratch: &mut Vec<u8>) -> Next {
        let mut next = self.session.on_timer(now, cfg, scratch);
        if let (Next::Close(OfflineReason::Timeout, _), Some(tls)) = (&next, self.tls()) {
            if tls.is_handshaking() {
                // The ERROR the session wrote cannot be sent before the
                // handshake completes; the log says which one stalled.
                next = Next::close(OfflineReason::Timeout, "tls: handshake timeout");
            }
        }
        self.send(next, scratch)
    }

    /// Tells the session its listener's timing changed at `now` (see
    /// [`Session::timing_changed`]).
    pub fn timing_changed(&mut self, now: Instant) {
        self.session.timing_changed(now);
    }

    /// Lets the session write one of its frames for the loop (shutdown,
    /// replaced, a fresh welcome) and sends it.
    pub fn say(&mut self, scratch: &mut Vec<u8>, frame: impl FnOnce(&Session, &mut Vec<u8>)) -> Next {
        frame(&self.session, scratch);
        self.send(Next::Continue, scratch)
    }

    /// Writes queued output (the socket became writable).
    pub fn flush(&mut self) -> Next {
        self.send(Next::Continue, &mut Vec::new())
    }

    /// Seals `scratch` over TLS, then writes queued output, then `scratch`
    /// (which it empties), and keeps what the socket does not take. A
    /// decision other than `Continue` stands (the write was its best-effort last word); otherwise a failed
    /// write or more than [`OUT_LIMIT`] unread bytes becomes `Close`.
    fn send(&mut self, next: Next, scratch: &mut Vec<u8>) -> Next {
        if let Some(tls) = self.extra.as_mut().and_then(|e| e.tls.as_mut()) {
            if let Err(e) = tls.seal(scratch) {
                scratch.clear();
                return if next == Next::Continue { io_close(&e) } else { next };
            }
        }
        self.write_out(next, scratch)
    }

    /// [`Conn::send`] after sealing: writes queued bytes, then `scratch`,
    /// as they are.
    fn write_out(&mut self, next: Next, scratch: &mut Vec<u8>) -> Next {
        if scratch.is_empty() && !self.wants_write() {
            return next;
        }
        let result = match self.extra.as_mut().filter(|e| !e.queue.is_empty()) {
            // Older output first: bytes must leave in the order produced.
            Some(extra) => {
                extra.queue.append(scratch);
                write_all_possible(&mut self.stream, &extra.queue).map(|n| {
                    extra.queue.drain(..n);
                })
            }
            None => write_all_possible(&mut self.stream, scratch).map(|n| {
                if n < scratch.len() {
                    let extra = self.extra.get_or_insert_with(|| Box::new(Extra { queue: Vec::new(), tls: None }));
                    extra.queue = scratch[n..].to_vec();
                }
            }),
        };
        scratch.clear();
        match &mut self.extra {
            Some(e) if e.queue.is_empty() && e.tls.is_none() => self.extra = None,
            // An idle TLS connection keeps no queue's worth of memory.
            Some(e) if e.queue.is_empty() => e.queue = Vec::new(),
            _ => {}
        }
        if next != Next::Continue {
            return next;
        }
        if let Err(e) = result {
            return io_close(&e);
        }
        let unread = self.extra.as_ref().map_or(0, |e| e.queue.len());
        if unread > OUT_LIMIT {
            return Next::close(OfflineReason::WriteStalled, format!("{unread} bytes unread by the client"));
        }
        Next::Continue
    }
}

/// Writes as much of `bytes` as the socket takes now; the count written.
fn write_all_possible(stream: &mut TcpStream, bytes: &[u8]) -> io::Result<usize> {
    let mut written = 0;
    while written < bytes.len() {
        match stream.write(&bytes[written..]) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "write returned 0")),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}

/// `Close` for an I/O error on a client socket.
/// (`WouldBlock` never gets here: both callers retry on it.)
fn io_close(e: &io::Error) -> Next {
    Next::Close(OfflineReason::from_io_error(e), Some(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::time::Duration;

    /// A `Conn` of `proto` on one end of a loopback connection, and the
    /// other end (blocking, with a read timeout).
    fn pair(proto: Protocol) -> (Conn, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let peer = std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        peer.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let (stream, addr) = listener.accept().expect("accept");
        stream.set_nonblocking(true).expect("nonblocking");
        (Conn::new(TcpStream::from_std(stream), addr, 0, proto, Instant::now()), peer)
    }

    fn cfg(proto: &str, extra: &str) -> ListenerConfig {
        let text = format!("[[listener]]\nname = \"t\"\naddress = \"127.0.0.1:0\"\nprotocol = \"{proto}\"\n{extra}");
        match crate::config::parse(&text, "test.toml", Path::new("/nonexistent")) {
            Ok(mut c) => c.listeners.remove(0),
            Err(e) => panic!("config: {e}"),
        }
    }

    /// Reads until `want` bytes arrived (or the read times out).
    fn read_n(peer: &mut std::net::TcpStream, want: usize) -> Vec<u8> {
        let mut got = vec![0; want];
        peer.read_exact(&mut got).expect("read");
        got
    }

    /// Reads from the conn until data or a close arrives.
    fn recv_wait(conn: &mut Conn, buf: &mut [u8]) -> Recv {
        for _ in 0..500 {
            match conn.recv(buf) {
                Recv::WouldBlock => std::thread::sleep(Duration::from_millis(10)),
                other => return other,
            }
        }
        Recv::WouldBlock
    }

    #[test]
    fn replies_are_written_at_once_and_scratch_comes_back_empty() {
        let (mut conn, mut peer) = pair(Protocol::Raw);
        let cfg = cfg("raw", "echo = true\n");
        peer.write_all(b"hello").expect("write");
        let mut buf = [0; 64];
        let Recv::Data(n) = recv_wait(&mut conn, &mut buf) else { panic!("no data") };
        let mut scratch = Vec::new();
        let (next, used) = conn.ingest(&buf[..n], Instant::now(), &cfg, &mut scratch);
        assert_eq!((next, used), (Next::Continue, n));
        assert!(scratch.is_empty());
        assert!(!conn.wants_write());
        assert_eq!(read_n(&mut peer, n), &buf[..n]);
    }

    #[test]
    fn fin_and_reset_are_told_apart() {
        let (mut conn, peer) = pair(Protocol::Raw);
        drop(peer);
        let mut buf = [0; 64];
        assert!(matches!(recv_wait(&mut conn, &mut buf), Recv::Closed(Next::Close(OfflineReason::Closed, None))));

        let (mut conn, peer) = pair(Protocol::Raw);
        socket2::SockRef::from(&peer).set_linger(Some(Duration::ZERO)).expect("linger");
        drop(peer);
        assert!(matches!(recv_wait(&mut conn, &mut buf), Recv::Closed(Next::Close(OfflineReason::Reset, _))));
    }

    #[test]
    fn unread_output_is_queued_in_order_then_write_stalled() {
        let (mut conn, mut peer) = pair(Protocol::Raw);
        socket2::SockRef::from(conn.stream()).set_send_buffer_size(4096).expect("sndbuf");
        let mut scratch = Vec::new();
        let mut sent = 0u32;
        let mut next = Next::Continue;
        // Numbered 1 KiB chunks until the queue passes the limit.
        while next == Next::Continue && sent < 1000 {
            next = conn.say(&mut scratch, |_, out| out.extend(std::iter::repeat_n((sent % 251) as u8, 1024)));
            sent += 1;
            assert!(scratch.is_empty());
        }
        assert!(matches!(next, Next::Close(OfflineReason::WriteStalled, _)), "{next:?}");
        assert!(conn.wants_write());
        // What was written left in the order produced.
        let first = read_n(&mut peer, 4096);
        for (i, chunk) in first.chunks(1024).enumerate() {
            assert!(chunk.iter().all(|&b| usize::from(b) == i % 251), "chunk {i}");
        }
    }
}
