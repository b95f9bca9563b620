//! One blocking connection to the daemon, framed with the native codec:
//! connect with a timeout, send frames, receive frames until a deadline.
//!
//! Shared by the agent and the one-shot check. Invariants:
//! - `buf` holds at most one incomplete frame plus one read's worth of
//!   bytes: complete frames are taken out before the next read, and the
//!   codec rejects a header whose length breaks its per-type limit;
//! - [`Link::recv`] never blocks past its deadline (it waits in `ppoll`
//!   with the time left, and reads only what is ready), so callers need no
//!   timer thread and an idle agent sleeps in `recv`;
//! - over TLS ([`Link::start_tls`]) the same holds for the plaintext: the
//!   handshake is driven by the first `send` (ClientHello) and the `recv`
//!   that waits for WELCOME, under the same deadlines, and plaintext
//!   rustls already decrypted is taken before waiting on the socket.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

use crate::sockopt;
use crate::tls::{self, ClientTls};
use crate::wire::native::{self, Frame};

/// Bytes read per `read` call; frames are tiny, so one read usually holds
/// every frame the daemon sent since the last one.
const READ_CHUNK: usize = 512;

/// The largest payload any frame type allows: the codec's per-type limits
/// are what bound the buffer on the client side.
const MAX_FRAME: usize = u16::MAX as usize;

/// Length of the agent's PING payload: sequence number and send time.
const PING_PAYLOAD_LEN: usize = 16;

/// A frame from the daemon, owned, so it outlives the receive buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Incoming {
    /// Handshake reply, or a fresh one after a reload.
    Welcome { interval: Duration, timeout: Duration, session: u64 },
    /// The daemon probes us; answer with PONG and the same payload.
    Ping(Vec<u8>),
    /// The echo of one of our PINGs.
    Pong(Vec<u8>),
    /// The daemon is leaving (`shutdown`).
    Bye(String),
    /// The daemon's last frame.
    Error { code: u16, message: String },
    /// A frame only clients send (HELLO): the daemon is not speaking the
    /// protocol.
    Unexpected(&'static str),
}

/// Why a receive or a send failed.
#[derive(Debug)]
pub(crate) enum LinkError {
    /// The daemon closed its side (EOF).
    Closed,
    /// The bytes from the daemon are not valid frames.
    Protocol(String),
    /// The socket failed.
    Io(io::Error),
    /// TLS failed (a certificate refused either way, an alert), in words.
    Tls(String),
}

impl fmt::Display for LinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkError::Closed => f.write_str("the daemon closed the connection"),
            LinkError::Protocol(e) => write!(f, "malformed frame from the daemon: {e}"),
            LinkError::Io(e) => write!(f, "{e}"),
            LinkError::Tls(e) => write!(f, "tls: {e}"),
        }
    }
}

impl From<io::Error> for LinkError {
    fn from(e: io::Error) -> LinkError {
        LinkError::Io(e)
    }
}

/// A connected, framed socket.
pub(crate) struct Link {
    stream: TcpStream,
    /// Received bytes not yet decoded: the tail of a partial frame.
    buf: Vec<u8>,
    /// Scratch for encoding outgoing frames.
    out: Vec<u8>,
    /// Over TLS: the client connection state.
    tls: Option<Box<rustls::ClientConnection>>,
}

impl Link {
    /// Wraps a connected stream.
    pub(crate) fn new(stream: TcpStream) -> Link {
        Link { stream, buf: Vec::new(), out: Vec::new(), tls: None }
    }

    /// Runs the link over TLS from now on; the handshake starts with the
    /// first [`Link::send`].
    pub(crate) fn start_tls(&mut self, tls: &ClientTls) -> Result<(), LinkError> {
        self.tls = Some(Box::new(tls.connect().map_err(LinkError::Tls)?));
        Ok(())
    }

    /// The socket, for socket options.
    pub(crate) fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Sends one frame. A write that cannot finish within `timeout` (the
    /// daemon stopped reading and the buffers are full) fails with
    /// `TimedOut`/`WouldBlock`.
    pub(crate) fn send(&mut self, frame: &Frame<'_>, timeout: Duration) -> io::Result<()> {
        self.out.clear();
        native::encode(frame, &mut self.out);
        self.stream.set_write_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        match self.tls.as_mut() {
            None => self.stream.write_all(&self.out),
            Some(tls) => {
                tls.writer().write_all(&self.out)?;
                flush_tls(tls, &mut self.stream)
            }
        }
    }

    /// Returns the next frame, or `None` once `deadline` has passed with no
    /// complete frame.
    pub(crate) fn recv(&mut self, deadline: Instant) -> Result<Option<Incoming>, LinkError> {
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            if let Some(frame) = self.take_frame()? {
                return Ok(Some(frame));
            }
            if let Some(tls) = self.tls.as_mut() {
                match tls.reader().read(&mut chunk) {
                    // The daemon's close_notify.
                    Ok(0) => return Err(LinkError::Closed),
                    Ok(n) => {
                        self.buf.extend_from_slice(&chunk[..n]);
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(LinkError::Io(e)),
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            if !sockopt::wait_readable(&self.stream, left)? {
                continue;
            }
            if let Some(tls) = self.tls.as_mut() {
                match tls.read_tls(&mut self.stream) {
                    Ok(0) => return Err(LinkError::Closed),
                    Ok(_) => {
                        if let Err(e) = tls.process_new_packets() {
                            // The alert for the daemon, best effort.
                            let _ = flush_tls(tls, &mut self.stream);
                            return Err(LinkError::Tls(tls::describe(&e)));
                        }
                        // Handshake flights, and HELLO once it completes.
                        flush_tls(tls, &mut self.stream)?;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(LinkError::Io(e)),
                }
                continue;
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(LinkError::Closed),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(LinkError::Io(e)),
            }
        }
    }

    /// Decodes one complete frame out of `buf`, if there is one.
    fn take_frame(&mut self) -> Result<Option<Incoming>, LinkError> {
        let (incoming, used) = match native::decode(&self.buf, MAX_FRAME) {
            Ok(Some((frame, used))) => (to_owned(frame), used),
            Ok(None) => return Ok(None),
            Err(e) => return Err(LinkError::Protocol(e.to_string())),
        };
        self.buf.drain(..used);
        Ok(Some(incoming))
    }
}

/// Writes every record rustls has to send (blocking, under the socket's
/// write timeout).
fn flush_tls(tls: &mut rustls::ClientConnection, stream: &mut TcpStream) -> io::Result<()> {
    while tls.wants_write() {
        tls.write_tls(stream)?;
    }
    Ok(())
}

fn to_owned(frame: Frame<'_>) -> Incoming {
    match frame {
        Frame::Welcome { interval_ms, timeout_ms, session } => Incoming::Welcome {
            interval: Duration::from_millis(u64::from(interval_ms)),
            timeout: Duration::from_millis(u64::from(timeout_ms)),
            session,
        },
        Frame::Ping(p) => Incoming::Ping(p.to_vec()),
        Frame::Pong(p) => Incoming::Pong(p.to_vec()),
        Frame::Bye(reason) => Incoming::Bye(reason.to_string()),
        Frame::Error { code, message } => Incoming::Error { code, message: message.to_string() },
        Frame::Hello { .. } => Incoming::Unexpected("HELLO"),
    }
}

/// Resolves `server` and connects to the first address that accepts within
/// `timeout` each. `watch` sees every socket before its connect starts; it
/// returns false to abandon the attempt (the agent is stopping), and may
/// keep a duplicate to interrupt the connect with `shutdown`.
pub(crate) fn connect(
    server: &str,
    timeout: Duration,
    watch: &mut dyn FnMut(&Socket) -> bool,
) -> Result<(TcpStream, SocketAddr), ConnectError> {
    let addrs: Vec<SocketAddr> = server.to_socket_addrs().map_err(ConnectError::Resolve)?.collect();
    let mut last = None;
    for addr in addrs {
        let socket =
            Socket::new(Domain::for_address(addr), Type::STREAM.cloexec(), None).map_err(ConnectError::Connect)?;
        if !watch(&socket) {
            return Err(ConnectError::Abandoned);
        }
        match socket.connect_timeout(&addr.into(), timeout) {
            Ok(()) => return Ok((socket.into(), addr)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.map_or(ConnectError::NoAddress, ConnectError::Connect))
}

/// Why no connection was made.
#[derive(Debug)]
pub(crate) enum ConnectError {
    /// The host did not resolve.
    Resolve(io::Error),
    /// The host resolved to nothing.
    NoAddress,
    /// Every address refused, timed out or failed; the last error.
    Connect(io::Error),
    /// `watch` said stop.
    Abandoned,
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Resolve(e) => write!(f, "resolving: {e}"),
            ConnectError::NoAddress => f.write_str("resolving: no address"),
            ConnectError::Connect(e) if e.kind() == io::ErrorKind::TimedOut => f.write_str("connect timed out"),
            ConnectError::Connect(e) => write!(f, "connecting: {e}"),
            ConnectError::Abandoned => f.write_str("stopped while connecting"),
        }
    }
}

/// The PING payload of the agent and the check: a sequence number and the
/// send time in nanoseconds since `epoch`, both u64 big-endian. The daemon
/// echoes it byte for byte, so a PONG carries its own round-trip start and
/// no table of outstanding PINGs is needed.
pub(crate) fn ping_payload(seq: u64, epoch: Instant, now: Instant) -> [u8; PING_PAYLOAD_LEN] {
    let nanos = u64::try_from(now.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX);
    let mut p = [0u8; PING_PAYLOAD_LEN];
    p[..8].copy_from_slice(&seq.to_be_bytes());
    p[8..].copy_from_slice(&nanos.to_be_bytes());
    p
}

/// Reads a PONG payload made by [`ping_payload`]: its sequence number and
/// round-trip time. `None` for a payload of another shape or from the
/// future (not ours).
pub(crate) fn pong_rtt(payload: &[u8], epoch: Instant, now: Instant) -> Option<(u64, Duration)> {
    let p: &[u8; PING_PAYLOAD_LEN] = payload.try_into().ok()?;
    let mut seq = [0u8; 8];
    let mut nanos = [0u8; 8];
    seq.copy_from_slice(&p[..8]);
    nanos.copy_from_slice(&p[8..]);
    let sent = epoch.checked_add(Duration::from_nanos(u64::from_be_bytes(nanos)))?;
    let rtt = now.checked_duration_since(sent)?;
    Some((u64::from_be_bytes(seq), rtt))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_payload_round_trips_to_an_rtt() {
        let epoch = Instant::now();
        let sent = epoch + Duration::from_millis(5);
        let p = ping_payload(9, epoch, sent);
        let back = pong_rtt(&p, epoch, sent + Duration::from_micros(300));
        assert_eq!(back, Some((9, Duration::from_micros(300))));
        // A PONG from before its PING, or of another size, is not ours.
        assert_eq!(pong_rtt(&p, epoch, epoch), None);
        assert_eq!(pong_rtt(&p[..8], epoch, sent), None);
        assert_eq!(pong_rtt(&[], epoch, sent), None);
    }
}
