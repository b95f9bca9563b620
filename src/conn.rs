//! One client connection: protocol state, the liveness clock, and the
//! little it must keep between reads (a split frame, unwritten output).
//!
//! A `Conn` turns the bytes the loop read for it into decisions
//! ([`Progress`]) and computes its own next deadline; it never touches the
//! poll, the timer wheel or other connections. Decisions that involve other
//! clients (a HELLO that replaces an older connection, the session number)
//! go back to the loop, which calls [`Conn::welcome`] and then
//! [`Conn::resume`].
//!
//! Output is built in a scratch buffer the loop owns and lends to every
//! call that may produce some (`out`), then written at once by
//! [`Conn::flush`]; only what the socket does not take is kept, in a
//! `Pending` box allocated on demand. An idle connection therefore owns
//! no heap memory beyond its id, and a heartbeat allocates nothing.
//!
//! Invariants:
//! - `last_activity` only moves forward, and only on a complete, valid frame
//!   (native, legacy) or any byte (raw); a heartbeat costs this one store.
//! - A connection is online exactly while `state == State::Online`; the
//!   loop emits the online event when it enters that state and the offline
//!   event when it leaves it, so there is one of each.
//! - The partial buffer holds at most one incomplete frame (native) or
//!   header (legacy): its length is bounded by the header checks in the
//!   codecs. `pending` is `None` whenever both of its buffers are empty.
//! - Bytes leave in the order they were produced: queued output is written
//!   before new output.
//! - More than [`OUT_LIMIT`] bytes still unwritten after a flush means the
//!   client stopped reading (`write-stalled`).

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::OnceLock;
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
    /// `Close` with a detail for the log.
    pub fn close(reason: OfflineReason, detail: impl Into<String>) -> Progress {
        Progress::Close(reason, Some(detail.into()))
    }
}

/// What a connection keeps between reads, when it keeps anything.
#[derive(Debug, Default)]
struct Pending {
    /// The start of a frame (native) or header (legacy) split across reads.
    partial: Vec<u8>,
    /// Output the socket did not take yet.
    out: Vec<u8>,
}

/// One accepted client connection.
pub struct Conn {
    /// The socket.
    pub stream: TcpStream,
    /// The peer's address.
    pub peer: SocketAddr,
    /// The key of the listener that accepted it (see [`Conn::listener`]).
    listener: u32,
    /// The listener's protocol, fixed for the connection's life.
    pub proto: Protocol,
    /// Handshake or online.
    pub state: State,
    /// Session number, assigned at accept in accept order.
    pub session: u64,
    /// The HELLO id (native, once received).
    pub id: Option<Rc<str>>,
    /// When the connection was accepted, then when it went online.
    since: Stamp,
    /// Last complete frame (native, legacy) or byte (raw) received.
    last_activity: Stamp,
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
    skip: u32,
    /// A split frame and unwritten output; `None` when there is neither.
    pending: Option<Box<Pending>>,
}

impl Conn {
    /// Wraps a freshly accepted socket. Legacy and raw connections are
    /// online from this moment (the loop emits their online event); native
    /// ones wait for HELLO.
    pub fn new(stream: TcpStream, peer: SocketAddr, listener: usize, proto: Protocol, now: Instant) -> Conn {
        Conn {
            stream,
            peer,
            // Listener keys are small slab keys; u32::MAX would name none.
            listener: u32::try_from(listener).unwrap_or(u32::MAX),
            proto,
            state: if proto == Protocol::Native { State::Handshake } else { State::Online },
            session: 0,
            id: None,
            since: Stamp::of(now),
            last_activity: Stamp::of(now),
            heartbeats: 0,
            timer: None,
            writable_registered: false,
            closing: false,
            pinged: false,
            skip: 0,
            pending: None,
        }
    }

    /// The key of the listener that accepted it.
    pub fn listener(&self) -> usize {
        self.listener as usize
    }

    /// When the connection was accepted, or when it went online once it has.
    pub fn since(&self) -> Instant {
        self.since.instant()
    }

    /// When the last activity (complete frame, or byte for raw) arrived.
    pub fn last_activity(&self) -> Instant {
        self.last_activity.instant()
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
        self.pending.as_ref().is_some_and(|p| !p.out.is_empty())
    }

    /// Handles bytes read from the socket at `now`; replies go to `out`.
    pub fn ingest(&mut self, data: &[u8], now: Instant, cfg: &ListenerConfig, out: &mut Vec<u8>) -> Progress {
        match self.proto {
            Protocol::Native => self.ingest_native(data, now, cfg, out),
            Protocol::Legacy => self.ingest_legacy(data, now, cfg, out),
            Protocol::Raw => {
                if !data.is_empty() {
                    self.last_activity = Stamp::of(now);
                    self.heartbeats += 1;
                    if cfg.echo {
                        out.extend_from_slice(data);
                    }
                }
                Progress::Continue
            }
        }
    }

    /// Continues with the bytes that followed a HELLO, after
    /// [`Conn::welcome`].
    pub fn resume(&mut self, now: Instant, cfg: &ListenerConfig, out: &mut Vec<u8>) -> Progress {
        let rest = self.take_partial();
        self.ingest_native(&rest, now, cfg, out)
    }

    /// Puts the connection online after the loop accepted its HELLO: writes
    /// WELCOME to `out` and starts the liveness clock.
    pub fn welcome(&mut self, now: Instant, cfg: &ListenerConfig, out: &mut Vec<u8>) {
        self.state = State::Online;
        self.since = Stamp::of(now);
        self.last_activity = Stamp::of(now);
        self.queue_welcome(cfg, out);
    }

    /// Writes a WELCOME carrying the listener's current interval and timeout
    /// (also after a reload changed them).
    pub fn queue_welcome(&self, cfg: &ListenerConfig, out: &mut Vec<u8>) {
        let frame = Frame::Welcome {
            interval_ms: millis_u32(cfg.interval),
            timeout_ms: millis_u32(cfg.timeout),
            session: self.session,
        };
        native::encode(&frame, out);
    }

    /// The next instant this connection needs attention, or `None` when no
    /// deadline applies (raw with `timeout = "0s"`).
    pub fn next_deadline(&self, cfg: &ListenerConfig) -> Option<Instant> {
        match self.state {
            State::Handshake => Some(self.since() + cfg.handshake_timeout),
            State::Online if cfg.timeout.is_zero() => None,
            State::Online => {
                let last = self.last_activity();
                let offline_at = last + cfg.timeout;
                if cfg.server_ping && !self.pinged {
                    Some(offline_at.min(last + cfg.interval))
                } else {
                    Some(offline_at)
                }
            }
        }
    }

    /// Handles the connection's timer firing at `now`: handshake timeout,
    /// offline for silence, or a server PING (to `out`). The caller re-arms
    /// the timer at [`Conn::next_deadline`] unless this returns `Close`.
    pub fn on_timer(&mut self, now: Instant, cfg: &ListenerConfig, out: &mut Vec<u8>) -> Progress {
        match self.state {
            State::Handshake => {
                if now >= self.since() + cfg.handshake_timeout {
                    let message = "no HELLO within the handshake timeout";
                    native::encode(&Frame::Error { code: error_code::HANDSHAKE_TIMEOUT, message }, out);
                    return Progress::close(OfflineReason::Timeout, "handshake timeout");
                }
            }
            State::Online => {
                let silent = now.saturating_duration_since(self.last_activity());
                // The wheel never fires early, but the deadline may have
                // moved on since this timer was armed: only the silence
                // measured now convicts.
                if !cfg.timeout.is_zero() && silent >= cfg.timeout {
                    return Progress::Close(OfflineReason::Timeout, None);
                }
                if cfg.server_ping && !self.pinged && silent >= cfg.interval {
                    self.pinged = true;
                    native::encode(&Frame::Ping(&[]), out);
                }
            }
        }
        Progress::Continue
    }

    /// Writes queued output, then `out` (which it empties). Returns `Close`
    /// when the socket failed or the client has left more than
    /// [`OUT_LIMIT`] bytes unread.
    pub fn flush(&mut self, out: &mut Vec<u8>) -> Progress {
        let result = match self.pending.as_mut() {
            // Older output first: bytes must leave in the order produced.
            Some(p) if !p.out.is_empty() => {
                p.out.append(out);
                write_all_possible(&mut self.stream, &p.out).map(|n| {
                    p.out.drain(..n);
                })
            }
            _ => write_all_possible(&mut self.stream, out).map(|n| {
                if n < out.len() {
                    self.pending.get_or_insert_with(Box::default).out.extend_from_slice(&out[n..]);
                }
                out.clear();
            }),
        };
        self.release_pending();
        if let Err(e) = result {
            return io_close(&e);
        }
        let unread = self.pending.as_ref().map_or(0, |p| p.out.len());
        if unread > OUT_LIMIT {
            return Progress::close(OfflineReason::WriteStalled, format!("{unread} bytes unread by the client"));
        }
        Progress::Continue
    }

    /// Reads from the socket into `buf` until it would block, handing each
    /// chunk to [`Conn::ingest`]. Stops early after `budget` bytes (the
    /// caller comes back: the socket may still be readable) or at the first
    /// decision other than `Continue`. Returns the decision and whether the
    /// budget ran out.
    pub fn read_some(
        &mut self,
        buf: &mut [u8],
        budget: usize,
        now: Instant,
        cfg: &ListenerConfig,
        out: &mut Vec<u8>,
    ) -> (Progress, bool) {
        let mut total = 0;
        loop {
            match self.stream.read(buf) {
                Ok(0) => return (Progress::Close(OfflineReason::Closed, None), false),
                Ok(n) => {
                    total += n;
                    let progress = self.ingest(&buf[..n], now, cfg, out);
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

    fn ingest_native(&mut self, mut data: &[u8], now: Instant, cfg: &ListenerConfig, out: &mut Vec<u8>) -> Progress {
        // Complete a frame split across reads first, taking only the bytes
        // it needs from `data`, so the partial buffer never grows past one
        // frame.
        let mut partial = self.take_partial();
        if !partial.is_empty() {
            let progress = loop {
                match native::decode(&partial, cfg.max_frame) {
                    Ok(Some((frame, used))) => {
                        // Only the bytes the frame needed were added, so
                        // `used` is the whole of `partial` here.
                        debug_assert_eq!(used, partial.len());
                        break self.on_frame(frame, now, cfg, out);
                    }
                    Ok(None) if data.is_empty() => {
                        self.keep_partial(&partial);
                        return Progress::Continue;
                    }
                    Ok(None) => {
                        let need = needed(&partial).max(1).min(data.len());
                        partial.extend_from_slice(&data[..need]);
                        data = &data[need..];
                    }
                    Err(e) => break reject(&e, out),
                }
            };
            match progress {
                Progress::Continue => {}
                Progress::Hello => {
                    self.keep_partial(data);
                    return Progress::Hello;
                }
                close => return close,
            }
        }
        while !data.is_empty() {
            match native::decode(data, cfg.max_frame) {
                Ok(Some((frame, used))) => {
                    data = &data[used..];
                    match self.on_frame(frame, now, cfg, out) {
                        Progress::Continue => {}
                        Progress::Hello => {
                            self.keep_partial(data);
                            return Progress::Hello;
                        }
                        close => return close,
                    }
                }
                Ok(None) => {
                    self.keep_partial(data);
                    break;
                }
                Err(e) => return reject(&e, out),
            }
        }
        Progress::Continue
    }

    fn on_frame(&mut self, frame: Frame<'_>, now: Instant, cfg: &ListenerConfig, out: &mut Vec<u8>) -> Progress {
        if self.state == State::Handshake {
            let Frame::Hello { id, token, .. } = frame else {
                native::encode(&Frame::Error { code: error_code::OUT_OF_ORDER, message: "expected HELLO first" }, out);
                return Progress::close(OfflineReason::ProtocolError, "frame before HELLO");
            };
            if !cfg.tokens.is_empty() && !cfg.tokens.iter().any(|t| t.as_slice() == token) {
                native::encode(&Frame::Error { code: error_code::AUTH_FAILED, message: "authentication failed" }, out);
                return Progress::close(OfflineReason::ProtocolError, format!("bad token for id {id}"));
            }
            self.id = Some(id.into());
            self.last_activity = Stamp::of(now);
            return Progress::Hello;
        }
        match frame {
            Frame::Ping(payload) => native::encode(&Frame::Pong(payload), out),
            Frame::Pong(_) => {}
            Frame::Bye("") => return Progress::Close(OfflineReason::Left, None),
            Frame::Bye(reason) => return Progress::close(OfflineReason::Left, reason),
            Frame::Hello { .. } => {
                native::encode(&Frame::Error { code: error_code::OUT_OF_ORDER, message: "HELLO sent twice" }, out);
                return Progress::close(OfflineReason::ProtocolError, "HELLO sent twice");
            }
            Frame::Welcome { .. } | Frame::Error { .. } => {
                let message = "WELCOME and ERROR are server-to-client frames";
                native::encode(&Frame::Error { code: error_code::MALFORMED, message }, out);
                return Progress::close(OfflineReason::ProtocolError, "server-to-client frame from client");
            }
        }
        self.last_activity = Stamp::of(now);
        self.heartbeats += 1;
        self.pinged = false;
        Progress::Continue
    }

    fn ingest_legacy(&mut self, mut data: &[u8], now: Instant, cfg: &ListenerConfig, out: &mut Vec<u8>) -> Progress {
        let mut partial = self.take_partial();
        while !data.is_empty() {
            if self.skip > 0 {
                let n = data.len().min(self.skip as usize);
                // `n <= skip`, which is a u32.
                self.skip -= n as u32;
                data = &data[n..];
                if self.skip == 0 {
                    self.frame_done(now);
                }
                continue;
            }
            // A header may arrive split; gather its 8 bytes in `partial`.
            let take = (legacy::HEADER_LEN - partial.len()).min(data.len());
            let header_bytes: &[u8] = if partial.is_empty() && take == legacy::HEADER_LEN {
                &data[..take]
            } else {
                partial.extend_from_slice(&data[..take]);
                &partial
            };
            let header = match legacy::decode_header(header_bytes, cfg.max_frame) {
                Ok(Some(header)) => header,
                Ok(None) => break,
                Err(e) => return Progress::close(OfflineReason::ProtocolError, e.to_string()),
            };
            data = &data[take..];
            partial.clear();
            if header.kind == legacy::Kind::Heartbeat && cfg.echo {
                out.extend_from_slice(&legacy::HEARTBEAT_ECHO);
            }
            // Config caps legacy `max_frame` at 16 MiB, so the length fits.
            self.skip = u32::try_from(header.length).unwrap_or(u32::MAX);
            if self.skip == 0 {
                self.frame_done(now);
            }
        }
        self.keep_partial(&partial);
        Progress::Continue
    }

    /// A complete legacy frame: activity.
    fn frame_done(&mut self, now: Instant) {
        self.last_activity = Stamp::of(now);
        self.heartbeats += 1;
    }

    /// Moves the split-frame bytes out (empty when there are none).
    fn take_partial(&mut self) -> Vec<u8> {
        let taken = self.pending.as_mut().map(|p| std::mem::take(&mut p.partial)).unwrap_or_default();
        self.release_pending();
        taken
    }

    /// Keeps `bytes` as the start of the next frame.
    fn keep_partial(&mut self, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.pending.get_or_insert_with(Box::default).partial.extend_from_slice(bytes);
        }
    }

    /// Frees the pending box once it holds nothing.
    fn release_pending(&mut self) {
        if self.pending.as_ref().is_some_and(|p| p.partial.is_empty() && p.out.is_empty()) {
            self.pending = None;
        }
    }
}

/// The process's monotonic epoch: the first instant a connection stamped.
static EPOCH: OnceLock<Instant> = OnceLock::new();

/// A monotonic instant in 8 bytes where an `Instant` takes 16: nanoseconds
/// after [`EPOCH`] (584 years of range). An instant before the epoch
/// becomes the epoch: later, so a silence is never overstated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Stamp(u64);

impl Stamp {
    fn of(at: Instant) -> Stamp {
        let epoch = *EPOCH.get_or_init(|| at);
        Stamp(u64::try_from(at.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX))
    }

    fn instant(self) -> Instant {
        // A stamp exists only once the epoch is set; `of` sets it.
        EPOCH.get().map_or_else(Instant::now, |epoch| *epoch + Duration::from_nanos(self.0))
    }
}

/// ERROR for an undecodable frame, and the close that follows it.
fn reject(e: &native::DecodeError, out: &mut Vec<u8>) -> Progress {
    native::encode(&Frame::Error { code: e.error_code(), message: &e.to_string() }, out);
    Progress::close(OfflineReason::ProtocolError, e.to_string())
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
