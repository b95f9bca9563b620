//! Test clients, by hand from PROTOCOL.md: [`NativeClient`] speaks the
//! native protocol (§1), [`PlainClient`] is a bare TCP client for the
//! legacy (§2) and raw (§3) protocols.
//!
//! Invariant: every read has a deadline; no client sleeps and hopes.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use crate::DEADLINE;

// ---------------------------------------------------------------------------
// ---------------------------------------------------------------------------

/// How a test client's socket is made.
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnectOpts {
    /// Local address to bind before connecting (e.g. 127.0.0.2).
    pub bind: Option<IpAddr>,
    /// `SO_RCVBUF` to set before connecting (so the window stays small).
    pub rcvbuf: Option<usize>,
}

/// Connects to `addr` with TCP_NODELAY, so that each write leaves at once.
pub fn connect(addr: SocketAddr, opts: ConnectOpts) -> TcpStream {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).expect("creating a client socket");
    if let Some(size) = opts.rcvbuf {
        socket.set_recv_buffer_size(size).expect("setting SO_RCVBUF on the client socket");
    }
    if let Some(ip) = opts.bind {
        socket
            .bind(&SockAddr::from(SocketAddr::new(ip, 0)))
            .unwrap_or_else(|e| panic!("binding the client socket to {ip}: {e}"));
    }
    socket.connect_timeout(&SockAddr::from(addr), DEADLINE).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    socket.set_tcp_nodelay(true).expect("setting TCP_NODELAY");
    socket.into()
}

/// How a read ended without data.
#[derive(Debug)]
pub enum End {
    /// Nothing arrived before the deadline.
    Timeout,
    /// The daemon closed the connection (FIN).
    Eof,
    /// The daemon reset the connection, or another error.
    Error(io::Error),
}

impl End {
    /// True when the connection is gone (EOF or reset), not just quiet.
    pub fn is_closed(&self) -> bool {
        match self {
            End::Eof => true,
            End::Error(e) => matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted | io::ErrorKind::BrokenPipe
            ),
            End::Timeout => false,
        }
    }
}

/// Reads once into `buf` with a deadline.
pub(crate) fn read_some(stream: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> Result<usize, End> {
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(End::Timeout);
        }
        stream.set_read_timeout(Some(deadline - now)).expect("setting a read timeout");
        match stream.read(buf) {
            Ok(0) => return Err(End::Eof),
            Ok(n) => return Ok(n),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(End::Error(e)),
        }
    }
}

/// Closes `stream` with RST instead of FIN (SO_LINGER 0, then close).
pub fn reset(stream: TcpStream) {
    socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO)).expect("setting SO_LINGER 0");
    drop(stream);
}

// ---------------------------------------------------------------------------
// The native protocol, by hand from PROTOCOL.md §1
// ---------------------------------------------------------------------------

pub const HELLO: u8 = 0x01;
pub const WELCOME: u8 = 0x02;
pub const PING: u8 = 0x03;
pub const PONG: u8 = 0x04;
pub const BYE: u8 = 0x05;
pub const ERROR: u8 = 0x06;

pub const ERR_MALFORMED: u16 = 1;
pub const ERR_VERSION: u16 = 2;
pub const ERR_HANDSHAKE_TIMEOUT: u16 = 3;
pub const ERR_AUTH: u16 = 4;
pub const ERR_FULL: u16 = 5;
pub const ERR_REPLACED: u16 = 6;
pub const ERR_SEQUENCE: u16 = 7;

/// `type, flags=0, length (u16 BE), payload`.
pub fn frame(ty: u8, payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(payload.len()).expect("a frame payload fits u16");
    let mut out = vec![ty, 0];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A HELLO payload: `version:u8, id_len:u8, id, token_len:u8, token`.
pub fn hello_payload(version: u8, id: &[u8], token: &[u8]) -> Vec<u8> {
    let mut p = vec![version, u8::try_from(id.len()).expect("id fits u8")];
    p.extend_from_slice(id);
    p.push(u8::try_from(token.len()).expect("token fits u8"));
    p.extend_from_slice(token);
    p
}

/// A HELLO frame, version 1.
pub fn hello_frame(id: &str, token: &str) -> Vec<u8> {
    frame(HELLO, &hello_payload(1, id.as_bytes(), token.as_bytes()))
}

/// One frame received from the daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub ty: u8,
    pub flags: u8,
    pub payload: Vec<u8>,
}

/// A decoded WELCOME.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Welcome {
    /// How often the client must send.
    pub interval_ms: u32,
    /// Silence after which the daemon declares the client offline.
    pub timeout_ms: u32,
    /// The connection's session number.
    pub session: u64,
}

impl Welcome {
    /// Decodes a WELCOME payload; fails the test unless it is exactly 16
    /// bytes.
    pub fn parse(p: &[u8]) -> Welcome {
        assert_eq!(p.len(), 16, "WELCOME payload must be exactly 16 bytes: {p:?}");
        Welcome {
            interval_ms: u32::from_be_bytes(p[0..4].try_into().expect("4 bytes")),
            timeout_ms: u32::from_be_bytes(p[4..8].try_into().expect("4 bytes")),
            session: u64::from_be_bytes(p[8..16].try_into().expect("8 bytes")),
        }
    }
}

/// Decodes the first complete frame of `bytes`: the frame and its length
/// on the wire, or `None` if `bytes` holds less than a whole frame.
pub fn decode_frame(bytes: &[u8]) -> Option<(Frame, usize)> {
    let header = bytes.get(..4)?;
    let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let payload = bytes.get(4..4 + len)?;
    Some((Frame { ty: header[0], flags: header[1], payload: payload.to_vec() }, 4 + len))
}

/// Splits `bytes` into its complete frames, ignoring an incomplete tail.
pub fn parse_frames(mut bytes: &[u8]) -> Vec<Frame> {
    let mut frames = Vec::new();
    while let Some((f, used)) = decode_frame(bytes) {
        frames.push(f);
        bytes = &bytes[used..];
    }
    frames
}

impl Frame {
    pub fn name(&self) -> &'static str {
        match self.ty {
            HELLO => "HELLO",
            WELCOME => "WELCOME",
            PING => "PING",
            PONG => "PONG",
            BYE => "BYE",
            ERROR => "ERROR",
            _ => "unknown",
        }
    }

    /// The WELCOME's fields; fails the test unless this is a WELCOME of
    /// exactly 16 bytes.
    pub fn welcome(&self) -> Welcome {
        assert_eq!(self.ty, WELCOME, "expected WELCOME, got {self:?}");
        Welcome::parse(&self.payload)
    }

    /// The ERROR's code and message; fails the test unless this is a valid
    /// ERROR (code, then 0..=256 bytes of UTF-8).
    pub fn error(&self) -> (u16, String) {
        assert_eq!(self.ty, ERROR, "expected ERROR, got {self:?}");
        assert!(self.payload.len() >= 2, "ERROR payload shorter than its code: {self:?}");
        let code = u16::from_be_bytes([self.payload[0], self.payload[1]]);
        let message = std::str::from_utf8(&self.payload[2..])
            .unwrap_or_else(|e| panic!("ERROR message is not UTF-8 ({e}): {self:?}"))
            .to_string();
        assert!(message.len() <= 256, "ERROR message over 256 bytes: {self:?}");
        (code, message)
    }

    /// The BYE's reason; fails the test unless this is a valid BYE.
    pub fn bye(&self) -> String {
        assert_eq!(self.ty, BYE, "expected BYE, got {self:?}");
        assert!(self.payload.len() <= 128, "BYE reason over 128 bytes: {self:?}");
        std::str::from_utf8(&self.payload)
            .unwrap_or_else(|e| panic!("BYE reason is not UTF-8 ({e}): {self:?}"))
            .to_string()
    }
}

/// A native-protocol client.
pub struct NativeClient {
    pub stream: TcpStream,
    /// Bytes read but not yet decoded.
    rbuf: Vec<u8>,
    /// The instant just before the last write started (the daemon cannot
    /// have seen the bytes earlier).
    pub last_sent: Instant,
    /// This side's address (the daemon logs it as `peer`).
    pub local: SocketAddr,
    /// The session of the last WELCOME.
    pub session: Option<u64>,
}

impl NativeClient {
    pub fn connect(addr: SocketAddr) -> NativeClient {
        NativeClient::connect_with(addr, ConnectOpts::default())
    }

    /// Connects with `opts`.
    pub fn connect_with(addr: SocketAddr, opts: ConnectOpts) -> NativeClient {
        NativeClient::from_stream(connect(addr, opts))
    }

    /// Wraps an already connected stream.
    pub fn from_stream(stream: TcpStream) -> NativeClient {
        let local = stream.local_addr().expect("reading the client's local address");
        NativeClient { stream, rbuf: Vec::new(), last_sent: Instant::now(), local, session: None }
    }

    /// Connects, says HELLO and expects WELCOME.
    pub fn handshake(addr: SocketAddr, id: &str, token: &str) -> (NativeClient, Welcome) {
        let mut c = NativeClient::connect(addr);
        c.hello(id, token);
        let w = c.expect_welcome();
        (c, w)
    }

    /// Writes `bytes` as they are.
    pub fn send(&mut self, bytes: &[u8]) {
        self.last_sent = Instant::now();
        self.stream
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("client {} writing {} bytes: {e}", self.local, bytes.len()));
    }

    /// Writes `bytes` one byte per write, pausing between them so that the
    /// daemon sees them in separate reads.
    pub fn send_bytewise(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.send(std::slice::from_ref(b));
            thread::sleep(Duration::from_millis(3));
        }
    }

    /// Writes `bytes`, returning the error instead of failing.
    pub fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.last_sent = Instant::now();
        self.stream.write_all(bytes)
    }

    pub fn send_frame(&mut self, ty: u8, payload: &[u8]) {
        self.send(&frame(ty, payload));
    }

    pub fn hello(&mut self, id: &str, token: &str) {
        self.send(&hello_frame(id, token));
    }

    pub fn ping(&mut self, payload: &[u8]) {
        self.send_frame(PING, payload);
    }

    pub fn bye(&mut self, reason: &str) {
        self.send_frame(BYE, reason.as_bytes());
    }

    /// Decodes one complete frame from the read buffer, if there is one.
    fn take_frame(&mut self) -> Option<Frame> {
        let (f, used) = decode_frame(&self.rbuf)?;
        self.rbuf.drain(..used);
        Some(f)
    }

    /// Reads the next frame, or how the connection ended, within `timeout`.
    pub fn read_frame(&mut self, timeout: Duration) -> Result<Frame, End> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        loop {
            if let Some(f) = self.take_frame() {
                return Ok(f);
            }
            let n = read_some(&mut self.stream, &mut buf, deadline)?;
            self.rbuf.extend_from_slice(&buf[..n]);
        }
    }

    /// Reads the next frame; fails the test if none comes within [`DEADLINE`].
    pub fn expect_frame(&mut self, what: &str) -> Frame {
        self.expect_frame_within(what, DEADLINE)
    }

    /// Reads the next frame; fails the test if none comes within `timeout`.
    pub fn expect_frame_within(&mut self, what: &str, timeout: Duration) -> Frame {
        match self.read_frame(timeout) {
            Ok(f) => f,
            Err(end) => panic!("client {} expected {what}, got {end:?}", self.local),
        }
    }

    /// Expects WELCOME within [`DEADLINE`] and remembers its session.
    pub fn expect_welcome(&mut self) -> Welcome {
        self.expect_welcome_within(DEADLINE)
    }

    /// Expects WELCOME within `timeout` and remembers its session.
    pub fn expect_welcome_within(&mut self, timeout: Duration) -> Welcome {
        let f = self.expect_frame_within("WELCOME", timeout);
        let w = f.welcome();
        self.session = Some(w.session);
        w
    }

    /// Says HELLO for `id` (no token) and expects WELCOME within 5 s: at
    /// once, for a daemon that is up.
    pub fn join(&mut self, id: &str) -> Welcome {
        self.hello(id, "");
        self.expect_welcome_within(Duration::from_secs(5))
    }

    /// Reads until the daemon closes the connection (EOF or reset), within
    /// `timeout`, and returns the frames that arrived meanwhile; fails the
    /// test if it stays open.
    pub fn wait_closed(&mut self, timeout: Duration) -> Vec<Frame> {
        let deadline = Instant::now() + timeout;
        let mut frames = Vec::new();
        loop {
            match self.read_frame(deadline.saturating_duration_since(Instant::now())) {
                Ok(f) => frames.push(f),
                Err(end) if end.is_closed() => return frames,
                Err(end) => {
                    panic!("client {}: expected the daemon to close within {timeout:?}, got {end:?}", self.local)
                }
            }
        }
    }

    /// Expects PONG echoing `payload` byte for byte.
    pub fn expect_pong(&mut self, payload: &[u8]) {
        let f = self.expect_frame("PONG");
        assert_eq!(f.ty, PONG, "client {} expected PONG, got {f:?}", self.local);
        assert_eq!(f.payload, payload, "client {}: PONG must echo the PING payload", self.local);
    }

    /// Sends PING(`payload`) and expects its PONG.
    pub fn round_trip(&mut self, payload: &[u8]) {
        self.ping(payload);
        self.expect_pong(payload);
    }

    /// Expects ERROR `code` as the last frame, then the connection's close.
    pub fn expect_error(&mut self, code: u16) -> String {
        let f = self.expect_frame(&format!("ERROR {code}"));
        assert_eq!(f.ty, ERROR, "client {} expected ERROR {code}, got {f:?}", self.local);
        let (got, message) = f.error();
        assert_eq!(got, code, "client {}: wrong ERROR code (message {message:?})", self.local);
        self.expect_close("after ERROR (ERROR is the last frame)");
        message
    }

    /// Expects the daemon to close the connection with nothing more sent.
    pub fn expect_close(&mut self, context: &str) {
        match self.read_frame(DEADLINE) {
            Err(end) if end.is_closed() => {}
            Ok(f) => panic!("client {}: expected close {context}, got frame {f:?}", self.local),
            Err(end) => panic!("client {}: expected close {context}, got {end:?}", self.local),
        }
    }

    /// Half-closes: sends FIN.
    pub fn fin(&self) {
        self.stream.shutdown(Shutdown::Write).expect("shutdown(SHUT_WR)");
    }

    /// Closes with RST.
    pub fn reset(self) {
        reset(self.stream);
    }
}

// ---------------------------------------------------------------------------
// Legacy (PROTOCOL.md §2) and raw (§3)
// ---------------------------------------------------------------------------

/// A legacy header: `type:i32 LE, length:i32 LE`.
pub fn legacy_header(ty: i32, length: i32) -> [u8; 8] {
    let mut h = [0u8; 8];
    h[..4].copy_from_slice(&ty.to_le_bytes());
    h[4..].copy_from_slice(&length.to_le_bytes());
    h
}

/// A bare TCP client for the legacy and raw protocols.
pub struct PlainClient {
    pub stream: TcpStream,
    /// The instant just before the last write started.
    pub last_sent: Instant,
    /// This side's address: the daemon's id for the client.
    pub local: SocketAddr,
}

impl PlainClient {
    pub fn connect(addr: SocketAddr) -> PlainClient {
        let stream = connect(addr, ConnectOpts::default());
        let local = stream.local_addr().expect("reading the client's local address");
        PlainClient { stream, last_sent: Instant::now(), local }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.last_sent = Instant::now();
        self.stream
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("client {} writing {} bytes: {e}", self.local, bytes.len()));
    }

    /// A legacy heartbeat: `{0, 0}`.
    pub fn heartbeat(&mut self) {
        self.send(&legacy_header(0, 0));
    }

    /// Reads exactly `n` bytes within [`DEADLINE`].
    pub fn expect_bytes(&mut self, n: usize) -> Vec<u8> {
        let deadline = Instant::now() + DEADLINE;
        let mut out = vec![0u8; n];
        let mut have = 0;
        while have < n {
            match read_some(&mut self.stream, &mut out[have..], deadline) {
                Ok(k) => have += k,
                Err(end) => {
                    panic!("client {} expected {n} bytes, got {have} ({:?}) then {end:?}", self.local, &out[..have])
                }
            }
        }
        out
    }

    /// Reads whatever arrives until the daemon closes the connection;
    /// fails the test if it stays open past [`DEADLINE`].
    pub fn read_to_close(&mut self) -> Vec<u8> {
        let deadline = Instant::now() + DEADLINE;
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match read_some(&mut self.stream, &mut buf, deadline) {
                Ok(k) => out.extend_from_slice(&buf[..k]),
                Err(end) if end.is_closed() => return out,
                Err(end) => {
                    panic!("client {} expected the daemon to close, got {end:?} after {} bytes", self.local, out.len())
                }
            }
        }
    }

    pub fn fin(&self) {
        self.stream.shutdown(Shutdown::Write).expect("shutdown(SHUT_WR)");
    }

    pub fn reset(self) {
        reset(self.stream);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_decode_only_when_whole() {
        let mut bytes = frame(PONG, b"abc");
        bytes.extend_from_slice(&frame(BYE, b"")[..3]);
        assert_eq!(decode_frame(&bytes[..6]), None);
        let (f, used) = decode_frame(&bytes).expect("a whole frame");
        assert_eq!((f.ty, f.flags, f.payload.as_slice(), used), (PONG, 0, &b"abc"[..], 7));
        assert_eq!(parse_frames(&bytes), [f]);
    }

    #[test]
    fn hello_and_welcome_follow_the_protocol_text() {
        assert_eq!(hello_frame("ab", "t"), [HELLO, 0, 0, 6, 1, 2, b'a', b'b', 1, b't']);
        let mut p = 1000u32.to_be_bytes().to_vec();
        p.extend_from_slice(&3000u32.to_be_bytes());
        p.extend_from_slice(&7u64.to_be_bytes());
        assert_eq!(Welcome::parse(&p), Welcome { interval_ms: 1000, timeout_ms: 3000, session: 7 });
    }
}
