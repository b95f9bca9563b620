//! One client connection: protocol state, the tail of a partial frame, the
//! output queue and the liveness clock.
//!
//! A `Conn` turns the bytes the loop read for it into decisions
//! ([`Progress`]) and computes its own next deadline; it never touches the
//! poll, the timer wheel or other connections. Decisions that involve other
//! clients (a HELLO that replaces an older connection, the session number)
//! go back to the loop, which calls [`Conn::welcome`] and then
//! [`Conn::resume`].
//!
//! Invariants:
//! - `last_activity` only moves forward, and only on a complete, valid frame
//!   (native, legacy) or any byte (raw); a heartbeat costs this one store.
//! - A connection is online exactly while `state == State::Online`; the
//!   loop emits the online event when it enters that state and the offline
//!   event when it leaves it, so there is one of each.
//! - `partial` holds at most one incomplete frame (native) or header
//!   (legacy): its length is bounded by the header checks in the codecs.
//! - Output is appended to `out` while a read is handled and written once
//!   afterwards ([`Conn::flush`]); more than [`OUT_LIMIT`] bytes still queued
//!   after a flush means the client stopped reading (`write-stalled`).

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;

use crate::config::{ListenerConfig, Protocol};
use crate::event::OfflineReason;
use crate::wheel::TimerId;
use crate::wire::legacy;
use crate::wire::native::{self, error_code, Frame};

/// Output bytes a client may leave unread before it is dropped as
/// `write-stalled`. Frames are tiny, so 64 KiB is thousands of replies the
/// client failed to read on top of what the kernel buffers already hold.
pub const OUT_LIMIT: usize = 64 * 1024;

/// Buffers above this capacity are released once empty, so a burst does not
/// leave an idle connection holding memory.
const SHRINK_ABOVE: usize = 4 * 1024;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Native only: accepted, waiting for HELLO. Not online.
    Handshake,
    /// Online: events have been emitted for entering this state.
    Online,
}

/// What the loop must do after handing bytes or time to a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Nothing more; keep serving.
    Continue,
    /// A valid HELLO arrived (id stored in [`Conn::id`]). The loop resolves
    /// replacement, calls [`Conn::welcome`], then [`Conn::resume`] to handle
    /// the bytes that followed the HELLO.
    Hello,
    /// Close the connection. The reason is the offline reason if the
    /// connection was online; `detail` says what happened, for the log.
    Close(OfflineReason, Option<String>),
}

impl Progress {
    fn close(reason: OfflineReason, detail: impl Into<String>) -> Progress {
        Progress::Close(reason, Some(detail.into()))
    }
}

/// One accepted client connection.
pub struct Conn {
    /// The socket.
    pub stream: TcpStream,
    /// The peer's address.
    pub peer: SocketAddr,
    /// The key of the listener that accepted it.
    pub listener: usize,
    /// The listener's protocol, fixed for the connection's life.
    pub proto: Protocol,
    /// Handshake or online.
    pub state: State,
    /// Session number, assigned when the connection goes online (0 before).
    pub session: u64,
    /// The HELLO id (native, once received).
    pub id: Option<Box<str>>,
    /// When the connection was accepted, then when it went online.
    pub since: Instant,
    /// Last complete frame (native, legacy) or byte (raw) received.
    pub last_activity: Instant,
    /// Heartbeats received: PING/PONG frames (native), complete frames
    /// (legacy), reads with data (raw).
    pub heartbeats: u64,
    /// The connection's armed wheel timer, if any.
    pub timer: Option<TimerId>,
    /// True when WRITABLE interest is registered with the poll.
    pub writable_registered: bool,
    /// Closed by the loop: its events are ignored until it is freed after
    /// the current batch (or, during shutdown, once its BYE is written).
    pub closing: bool,
    /// Native with `server_ping`: a PING was sent since the last activity.
    pinged: bool,
    /// Legacy: payload bytes of the current frame still to discard.
    skip: usize,
    /// The tail of an incomplete frame or header.
    partial: Vec<u8>,
    /// Output not yet accepted by the kernel.
    out: Vec<u8>,
}

impl Conn {
    /// Wraps a freshly accepted socket. Legacy and raw connections are
    /// online from this moment (the loop emits their online event); native
    /// ones wait for HELLO.
    pub fn new(stream: TcpStream, peer: SocketAddr, listener: usize, proto: Protocol, now: Instant) -> Conn {
        Conn {
            stream,
            peer,
            listener,
            proto,
            state: if proto == Protocol::Native { State::Handshake } else { State::Online },
            session: 0,
            id: None,
            since: now,
            last_activity: now,
            heartbeats: 0,
            timer: None,
            writable_registered: false,
            closing: false,
            pinged: false,
            skip: 0,
            partial: Vec::new(),
            out: Vec::new(),
        }
    }

    /// True once the connection has gone online.
    pub fn is_online(&self) -> bool {
        self.state == State::Online
    }

    /// The id events carry: the HELLO id, or the peer address for protocols
    /// without one.
    pub fn client_id(&self) -> String {
        match &self.id {
            Some(id) => id.to_string(),
            None => self.peer.to_string(),
        }
    }

    /// True while output waits for the socket to become writable.
    pub fn wants_write(&self) -> bool {
        !self.out.is_empty()
    }

    /// Handles bytes read from the socket at `now`.
    pub fn ingest(&mut self, data: &[u8], now: Instant, cfg: &ListenerConfig) -> Progress {
        match self.proto {
            Protocol::Native => self.ingest_native(data, now, cfg),
            Protocol::Legacy => self.ingest_legacy(data, now, cfg),
            Protocol::Raw => {
                if !data.is_empty() {
                    self.last_activity = now;
                    self.heartbeats += 1;
                    if cfg.echo {
                        self.out.extend_from_slice(data);
                    }
                }
                Progress::Continue
            }
        }
    }

    /// Continues with the bytes that followed a HELLO, after
    /// [`Conn::welcome`].
    pub fn resume(&mut self, now: Instant, cfg: &ListenerConfig) -> Progress {
        let rest = std::mem::take(&mut self.partial);
        let progress = self.ingest_native(&rest, now, cfg);
        self.reuse_partial(rest);
        progress
    }

    /// Puts the connection online after the loop accepted its HELLO: queues
    /// WELCOME and starts the liveness clock.
    pub fn welcome(&mut self, session: u64, now: Instant, cfg: &ListenerConfig) {
        self.state = State::Online;
        self.session = session;
        self.since = now;
        self.last_activity = now;
        self.queue_welcome(cfg);
    }

    /// Queues a WELCOME carrying the listener's current interval and timeout
    /// (after a reload changed them).
    pub fn queue_welcome(&mut self, cfg: &ListenerConfig) {
        let frame = Frame::Welcome {
            interval_ms: millis_u32(cfg.interval),
            timeout_ms: millis_u32(cfg.timeout),
            session: self.session,
        };
        native::encode(&frame, &mut self.out);
    }

    /// Queues a native frame.
    pub fn queue_frame(&mut self, frame: &Frame<'_>) {
        native::encode(frame, &mut self.out);
    }

    /// Queues an ERROR frame: the connection's last frame.
    pub fn queue_error(&mut self, code: u16, message: &str) {
        self.queue_frame(&Frame::Error { code, message });
    }

    /// The next instant this connection needs attention, or `None` when no
    /// deadline applies (raw with `timeout = "0s"`).
    pub fn next_deadline(&self, cfg: &ListenerConfig) -> Option<Instant> {
        match self.state {
            State::Handshake => Some(self.since + cfg.handshake_timeout),
            State::Online if cfg.timeout.is_zero() => None,
            State::Online => {
                let offline_at = self.last_activity + cfg.timeout;
                if cfg.server_ping && !self.pinged {
                    Some(offline_at.min(self.last_activity + cfg.interval))
                } else {
                    Some(offline_at)
                }
            }
        }
    }

    /// Handles the connection's timer firing at `now`: handshake timeout,
    /// offline for silence, or a server PING. The caller re-arms the timer
    /// at [`Conn::next_deadline`] unless this returns `Close`.
    pub fn on_timer(&mut self, now: Instant, cfg: &ListenerConfig) -> Progress {
        match self.state {
            State::Handshake => {
                if now >= self.since + cfg.handshake_timeout {
                    self.queue_error(error_code::HANDSHAKE_TIMEOUT, "no HELLO within the handshake timeout");
                    return Progress::close(OfflineReason::Timeout, "handshake timeout");
                }
            }
            State::Online => {
                let silent = now.saturating_duration_since(self.last_activity);
                // The wheel never fires early, but the deadline may have
                // moved on since this timer was armed: only the silence
                // measured now convicts.
                if !cfg.timeout.is_zero() && silent >= cfg.timeout {
                    return Progress::Close(OfflineReason::Timeout, None);
                }
                if cfg.server_ping && !self.pinged && silent >= cfg.interval {
                    self.pinged = true;
                    self.queue_frame(&Frame::Ping(&[]));
                }
            }
        }
        Progress::Continue
    }

    /// Writes queued output. Returns `Close` when the socket failed or the
    /// client has left more than [`OUT_LIMIT`] bytes unread.
    pub fn flush(&mut self) -> Progress {
        let mut written = 0;
        while written < self.out.len() {
            match self.stream.write(&self.out[written..]) {
                Ok(0) => return Progress::close(OfflineReason::Closed, "write returned 0"),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return io_close(&e),
            }
        }
        self.out.drain(..written);
        if self.out.is_empty() && self.out.capacity() > SHRINK_ABOVE {
            self.out = Vec::new();
        }
        if self.out.len() > OUT_LIMIT {
            return Progress::close(
                OfflineReason::WriteStalled,
                format!("{} bytes unread by the client", self.out.len()),
            );
        }
        Progress::Continue
    }

    /// Reads from the socket into `buf` until it would block, handing each
    /// chunk to [`Conn::ingest`]. Stops early after `budget` bytes (the
    /// caller comes back: the socket may still be readable) or at the first
    /// decision other than `Continue`. Returns the decision and whether the
    /// budget ran out.
    pub fn read_some(&mut self, buf: &mut [u8], budget: usize, now: Instant, cfg: &ListenerConfig) -> (Progress, bool) {
        let mut total = 0;
        loop {
            match self.stream.read(buf) {
                Ok(0) => return (Progress::Close(OfflineReason::Closed, None), false),
                Ok(n) => {
                    total += n;
                    let progress = self.ingest(&buf[..n], now, cfg);
                    if progress != Progress::Continue {
                        return (progress, false);
                    }
                    if total >= budget {
                        return (Progress::Continue, true);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return (Progress::Continue, false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return (io_close(&e), false),
            }
        }
    }

    fn ingest_native(&mut self, mut data: &[u8], now: Instant, cfg: &ListenerConfig) -> Progress {
        // Complete a frame split across reads first, taking only the bytes
        // it needs from `data`, so `partial` never grows past one frame.
        if !self.partial.is_empty() {
            let mut partial = std::mem::take(&mut self.partial);
            let progress = loop {
                match native::decode(&partial, cfg.max_frame) {
                    Ok(Some((frame, used))) => {
                        let progress = self.on_frame(frame, now, cfg);
                        // A frame never spans more than what was needed, so
                        // `used` is the whole of `partial` here.
                        debug_assert_eq!(used, partial.len());
                        partial.clear();
                        break progress;
                    }
                    Ok(None) if data.is_empty() => {
                        self.partial = partial;
                        return Progress::Continue;
                    }
                    Ok(None) => {
                        let need = needed(&partial).max(1).min(data.len());
                        partial.extend_from_slice(&data[..need]);
                        data = &data[need..];
                    }
                    Err(e) => break self.reject(&e),
                }
            };
            self.reuse_partial(partial);
            match progress {
                Progress::Continue => {}
                Progress::Hello => {
                    self.partial.extend_from_slice(data);
                    return Progress::Hello;
                }
                close => return close,
            }
        }
        while !data.is_empty() {
            match native::decode(data, cfg.max_frame) {
                Ok(Some((frame, used))) => {
                    data = &data[used..];
                    match self.on_frame(frame, now, cfg) {
                        Progress::Continue => {}
                        Progress::Hello => {
                            self.partial.extend_from_slice(data);
                            return Progress::Hello;
                        }
                        close => return close,
                    }
                }
                Ok(None) => {
                    self.partial.extend_from_slice(data);
                    break;
                }
                Err(e) => return self.reject(&e),
            }
        }
        Progress::Continue
    }

    fn on_frame(&mut self, frame: Frame<'_>, now: Instant, cfg: &ListenerConfig) -> Progress {
        if self.state == State::Handshake {
            let Frame::Hello { id, token, .. } = frame else {
                self.queue_error(error_code::OUT_OF_ORDER, "expected HELLO first");
                return Progress::close(OfflineReason::ProtocolError, "frame before HELLO");
            };
            if !cfg.tokens.is_empty() && !cfg.tokens.iter().any(|t| t.as_slice() == token) {
                self.queue_error(error_code::AUTH_FAILED, "authentication failed");
                return Progress::close(OfflineReason::ProtocolError, format!("bad token for id {id}"));
            }
            self.id = Some(id.into());
            self.last_activity = now;
            return Progress::Hello;
        }
        match frame {
            Frame::Ping(payload) => self.queue_frame(&Frame::Pong(payload)),
            Frame::Pong(_) => {}
            Frame::Bye(reason) => return Progress::close(OfflineReason::Left, reason),
            Frame::Hello { .. } => {
                self.queue_error(error_code::OUT_OF_ORDER, "HELLO sent twice");
                return Progress::close(OfflineReason::ProtocolError, "HELLO sent twice");
            }
            Frame::Welcome { .. } | Frame::Error { .. } => {
                self.queue_error(error_code::MALFORMED, "WELCOME and ERROR are server-to-client frames");
                return Progress::close(OfflineReason::ProtocolError, "server-to-client frame from client");
            }
        }
        self.last_activity = now;
        self.heartbeats += 1;
        self.pinged = false;
        Progress::Continue
    }

    fn reject(&mut self, e: &native::DecodeError) -> Progress {
        self.queue_error(e.error_code(), &e.to_string());
        Progress::close(OfflineReason::ProtocolError, e.to_string())
    }

    fn ingest_legacy(&mut self, mut data: &[u8], now: Instant, cfg: &ListenerConfig) -> Progress {
        while !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
                if self.skip == 0 {
                    self.last_activity = now;
                    self.heartbeats += 1;
                }
                continue;
            }
            // A header may arrive split; gather its 8 bytes in `partial`.
            let take = (legacy::HEADER_LEN - self.partial.len()).min(data.len());
            let header_bytes: &[u8] = if self.partial.is_empty() && take == legacy::HEADER_LEN {
                &data[..take]
            } else {
                self.partial.extend_from_slice(&data[..take]);
                &self.partial
            };
            let header = match legacy::decode_header(header_bytes, cfg.max_frame) {
                Ok(Some(header)) => header,
                Ok(None) => return Progress::Continue,
                Err(e) => return Progress::close(OfflineReason::ProtocolError, e.to_string()),
            };
            data = &data[take..];
            self.partial.clear();
            if header.kind == legacy::Kind::Heartbeat && cfg.echo {
                self.out.extend_from_slice(&legacy::HEARTBEAT_ECHO);
            }
            self.skip = header.length;
            if self.skip == 0 {
                self.last_activity = now;
                self.heartbeats += 1;
            }
        }
        Progress::Continue
    }

    /// Keeps a small buffer's allocation for the next partial frame, drops a
    /// large one.
    fn reuse_partial(&mut self, mut buf: Vec<u8>) {
        if self.partial.is_empty() {
            buf.clear();
            if buf.capacity() <= SHRINK_ABOVE {
                self.partial = buf;
            }
        }
    }
}

/// Bytes still missing before `partial` holds a whole native frame, as far
/// as its header tells.
fn needed(partial: &[u8]) -> usize {
    if partial.len() < native::HEADER_LEN {
        return native::HEADER_LEN - partial.len();
    }
    let length = usize::from(u16::from_be_bytes([partial[2], partial[3]]));
    (native::HEADER_LEN + length).saturating_sub(partial.len())
}

/// A duration as the protocol's `u32` milliseconds (config validation keeps
/// every duration in range; saturate rather than wrap regardless).
pub fn millis_u32(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// The offline reason for an I/O error on a client socket.
pub fn reason_for_io_error(e: &io::Error) -> OfflineReason {
    match e.raw_os_error() {
        Some(libc::ECONNRESET | libc::ECONNABORTED) => OfflineReason::Reset,
        Some(libc::EPIPE) => OfflineReason::Closed,
        // The kernel's verdict after unanswered keepalive probes or an
        // expired TCP_USER_TIMEOUT is ETIMEDOUT, unless an ICMP error was
        // seen meanwhile, in which case it reports that soft error instead.
        Some(libc::ETIMEDOUT | libc::EHOSTUNREACH | libc::ENETUNREACH) => OfflineReason::TcpTimeout,
        _ => OfflineReason::Error,
    }
}

fn io_close(e: &io::Error) -> Progress {
    Progress::Close(reason_for_io_error(e), Some(e.to_string()))
}
