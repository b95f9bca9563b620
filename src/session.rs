//! The connection protocol without I/O: what one client's bytes and the
//! passing of time mean, and what to answer.
//!
//! A [`Session`] is fed the bytes read from its socket ([`Session::ingest`])
//! and told when its deadline passed ([`Session::on_timer`]); it writes its
//! replies to an output buffer and returns a [`Next`] decision. It never sees
//! a socket, the poll, the wheel or another connection, so a unit test can
//! drive it byte by byte.
//!
//! The HELLO shape: `ingest` stops right after a valid HELLO and returns
//! [`Next::Hello`] with the number of bytes it used. Only the loop knows the
//! other connections, so it resolves replacement, then calls
//! [`Session::welcome`] (the only way into the online state) and feeds the
//! rest of the same buffer (`data[used..]`) to `ingest` again. Nothing is
//! stashed and resumed: the bytes after a HELLO stay in the caller's buffer.
//!
//! Every frame the daemon sends is produced here (welcome, replaced,
//! shutdown, server full, the ERRORs and PONGs), so the loop never names a
//! wire format. A new protocol is one deframer in `wire` and one
//! `Framing` variant.
//!
//! A probe HELLO (flags bit 0) is answered the same way, with
//! [`Next::Probe`] instead: the loop counts it and calls `welcome`, which
//! sends WELCOME but leaves the session in the probe state, never online.
//! A probe gets PONGs, and its deadline stays the handshake timeout.
//!
//! Invariants:
//! - The state is private and becomes online only in `welcome` of a HELLO
//!   that was no probe (native) or at creation (legacy, raw), and never
//!   leaves it: the loop emits the
//!   online event on entering it and the offline event when it drops the
//!   session, so there is exactly one of each.
//! - `last_activity` moves only forward, and only on a complete valid frame
//!   (native, legacy) or any byte (raw); a heartbeat costs this one store.
//! - A native session's silence counts from its last activity, or from the
//!   fresh WELCOME of a reload that changed its timing if that came later
//!   ([`Session::timing_changed`]): a reload never convicts a client for a
//!   silence the old timing allowed.
//! - After `Next::Close` the session must not be fed again; what it wrote
//!   to `out` (an ERROR) is its last word.

use std::rc::Rc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::config::ListenerConfig;
use crate::event::OfflineReason;
use crate::wire::deframe::{LegacyDeframer, LegacyItem, NativeDeframer};
use crate::wire::legacy;
use crate::wire::native::{self, error_code, Frame};
use crate::wire::Protocol;

/// What the caller must do after handing bytes or time to a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Nothing more; keep serving.
    Continue,
    /// A valid HELLO with this id arrived (native). The caller resolves
    /// replacement, calls [`Session::welcome`], then feeds the bytes after
    /// the ones `ingest` reported as used.
    Hello(Rc<str>),
    /// A valid probe HELLO arrived (native): the caller counts it and calls
    /// [`Session::welcome`], replacing nobody; the session never goes
    /// online. Then it feeds the rest, as after `Hello`.
    Probe,
    /// Close the connection. The reason is the offline reason if the
    /// session was online; the detail says what happened, for the log.
    Close(OfflineReason, Option<String>),
}

impl Next {
    /// `Close` with a detail for the log.
    pub fn close(reason: OfflineReason, detail: impl Into<String>) -> Next {
        Next::Close(reason, Some(detail.into()))
    }
}

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Native only: waiting for HELLO. Not online.
    Handshake,
    /// Native only: a probe was welcomed. Never online; PINGs get PONGs
    /// until the handshake timeout.
    Probe,
    /// Online: the online event has been emitted.
    Online,
}

/// The per-protocol framing state, and what only that protocol needs.
#[derive(Debug)]
enum Framing {
    Native {
        deframer: NativeDeframer,
        flags: NativeFlags,
    },
    Legacy(LegacyDeframer),
    /// Every byte is activity: nothing to keep.
    Raw,
}

/// Native only: where the handshake is, the server PING, and the grace of
/// a timing change. Kept in the `Framing` variant, whose padding they fill,
/// rather than in `Clock`.
#[derive(Debug, Default, Clone, Copy)]
struct NativeFlags {
    /// WELCOME was given: the session is online, or probing.
    welcomed: bool,
    /// The HELLO had the probe bit.
    probe: bool,
    /// With `server_ping`: a PING was sent since the last activity.
    pinged: bool,
    /// Milliseconds after the last activity from which silence counts: set
    /// by [`Session::timing_changed`] to the instant of a fresh WELCOME,
    /// zero again at the next activity. A `u32` relative to the activity
    /// rather than an 8-byte stamp so that it fits the variant's padding
    /// (a silence at a reload is below the old timeout, which fits `u32`
    /// milliseconds; beyond that it saturates).
    grace_ms: u32,
}

/// The liveness clock and counters every protocol shares.
#[derive(Debug)]
struct Clock {
    /// The HELLO id (native, once received).
    id: Option<Rc<str>>,
    /// When the session started, then when it went online.
    since: Stamp,
    /// Last complete frame (native, legacy) or byte (raw) received.
    last_activity: Stamp,
    /// Heartbeats: PING/PONG frames (native), complete frames (legacy),
    /// reads with data (raw).
    heartbeats: u64,
}

/// One client's protocol state.
#[derive(Debug)]
pub struct Session {
    clock: Clock,
    framing: Framing,
}

impl Session {
    /// A session starting at `now`. Legacy and raw sessions are online from
    /// this moment (the caller emits their online event); native ones wait
    /// for HELLO.
    pub fn new(proto: Protocol, now: Instant) -> Session {
        let framing = match proto {
            Protocol::Native => Framing::Native { deframer: NativeDeframer::default(), flags: NativeFlags::default() },
            Protocol::Legacy => Framing::Legacy(LegacyDeframer::default()),
            Protocol::Raw => Framing::Raw,
        };
        Session {
            clock: Clock { id: None, since: Stamp::of(now), last_activity: Stamp::of(now), heartbeats: 0 },
            framing,
        }
    }

    /// True when a session of `proto` is online from its creation (legacy,
    /// raw): its online event comes at accept.
    pub fn online_at_accept(proto: Protocol) -> bool {
        proto != Protocol::Native
    }

    /// Handshake (native before WELCOME) or online.
    fn state(&self) -> State {
        match self.framing {
            Framing::Native { flags, .. } if !flags.welcomed => State::Handshake,
            Framing::Native { flags, .. } if flags.probe => State::Probe,
            _ => State::Online,
        }
    }

    /// Native with `server_ping`: a PING was sent since the last activity.
    fn pinged(&self) -> bool {
        matches!(self.framing, Framing::Native { flags, .. } if flags.pinged)
    }

    /// The protocol spoken.
    pub fn proto(&self) -> Protocol {
        match self.framing {
            Framing::Native { .. } => Protocol::Native,
            Framing::Legacy(_) => Protocol::Legacy,
            Framing::Raw => Protocol::Raw,
        }
    }

    /// True once the session has gone online.
    pub fn is_online(&self) -> bool {
        self.state() == State::Online
    }

    /// True for a welcomed probe: validated, answered, never online.
    pub fn is_probe(&self) -> bool {
        self.state() == State::Probe
    }

    /// The HELLO id, once received (native only).
    pub fn id(&self) -> Option<&Rc<str>> {
        self.clock.id.as_ref()
    }

    /// When the session started, or when it went online once it has.
    pub fn since(&self) -> Instant {
        self.clock.since.instant()
    }

    /// When the last activity arrived.
    pub fn last_activity(&self) -> Instant {
        self.clock.last_activity.instant()
    }

    /// Where the silence clock starts: the last activity, or the fresh
    /// WELCOME of a timing change if that came later.
    pub fn silence_from(&self) -> Instant {
        let grace = match self.framing {
            Framing::Native { flags, .. } => flags.grace_ms,
            _ => 0,
        };
        self.last_activity() + Duration::from_millis(u64::from(grace))
    }

    /// Heartbeats received so far.
    pub fn heartbeats(&self) -> u64 {
        self.clock.heartbeats
    }

    /// Handles `data` received at `now`; replies go to `out`. Returns the
    /// decision and the bytes of `data` used: all of them unless the
    /// decision is [`Next::Hello`] (the rest follows `welcome`) or
    /// [`Next::Close`] (the rest is never read).
    pub fn ingest(&mut self, data: &[u8], now: Instant, cfg: &ListenerConfig, out: &mut Vec<u8>) -> (Next, usize) {
        let clock = &mut self.clock;
        match &mut self.framing {
            Framing::Raw => {
                if !data.is_empty() {
                    clock.activity(now);
                    if cfg.echo {
                        out.extend_from_slice(data);
                    }
                }
                (Next::Continue, data.len())
            }
            Framing::Legacy(deframer) => {
                let mut used = 0;
                loop {
                    let (item, n) = deframer.next(&data[used..], cfg.max_frame);
                    used += n;
                    match item {
                        Ok(None) => return (Next::Continue, used),
                        Ok(Some(LegacyItem::Header(kind))) => {
                            if kind == legacy::Kind::Heartbeat && cfg.echo {
                                out.extend_from_slice(&legacy::HEARTBEAT_ECHO);
                            }
                        }
                        Ok(Some(LegacyItem::End)) => clock.activity(now),
                        Err(e) => return (Next::close(OfflineReason::ProtocolError, e.to_string()), used),
                    }
                }
            }
            Framing::Native { deframer, flags } => {
                let mut used = 0;
                loop {
                    let (frame, n) = deframer.next(&data[used..], cfg.max_frame);
                    used += n;
                    let next = match frame {
                        Ok(None) => return (Next::Continue, used),
                        Ok(Some(frame)) => clock.on_frame(flags, frame, now, cfg, out),
                        Err(e) => {
                            encode_error(e.error_code(), &e.to_string(), out);
                            Next::close(OfflineReason::ProtocolError, e.to_string())
                        }
                    };
                    if next != Next::Continue {
                        return (next, used);
                    }
                }
            }
        }
    }

    /// Puts a native session online after the caller accepted its HELLO:
    /// writes WELCOME with the session number to `out` and starts the
    /// liveness clock. A probe gets the WELCOME only: it stays a probe,
    /// its deadline still counted from the start. Does nothing unless the
    /// session waits for it.
    pub fn welcome(&mut self, now: Instant, session: u64, cfg: &ListenerConfig, out: &mut Vec<u8>) {
        let Framing::Native { flags, .. } = &mut self.framing else { return };
        if flags.welcomed || self.clock.id.is_none() {
            return;
        }
        flags.welcomed = true;
        if flags.probe {
            encode_welcome(session, cfg, out);
            return;
        }
        self.clock.since = Stamp::of(now);
        self.clock.last_activity = Stamp::of(now);
        encode_welcome(session, cfg, out);
    }

    /// Tells the session that a reload changed its listener's interval or
    /// timeout at `now`, the instant its fresh WELCOME is written: an online
    /// native session's silence then counts from `now` (rounded up to the
    /// millisecond) until its next activity, so a client silent for less
    /// than the old timing allowed is not convicted by the shorter new one
    /// before it could adopt it. `last_activity` is unchanged: events and
    /// the status API keep reporting the real silence. Legacy and raw
    /// clients are told nothing and keep counting from their activity.
    pub fn timing_changed(&mut self, now: Instant) {
        if !self.is_online() {
            return;
        }
        let last = self.last_activity();
        let Framing::Native { flags, .. } = &mut self.framing else { return };
        let after = now.saturating_duration_since(last);
        let ms = u32::try_from(after.as_nanos().div_ceil(1_000_000)).unwrap_or(u32::MAX);
        flags.grace_ms = flags.grace_ms.max(ms);
    }

    /// Writes a fresh WELCOME to an online native session, after a reload
    /// changed its listener's interval or timeout.
    pub fn rewelcome(&self, session: u64, cfg: &ListenerConfig, out: &mut Vec<u8>) {
        if matches!(self.framing, Framing::Native { .. }) && self.is_online() {
            encode_welcome(session, cfg, out);
        }
    }

    /// Writes what a connection replaced by another with the same id (or
    /// refused as the older of two) is told: ERROR 6 (native).
    pub fn replaced(&self, out: &mut Vec<u8>) {
        if matches!(self.framing, Framing::Native { .. }) {
            encode_error(error_code::REPLACED, "replaced by a newer connection with the same id", out);
        }
    }

    /// Writes the goodbye of a stopping daemon: BYE `shutdown` (native).
    pub fn shutdown(&self, out: &mut Vec<u8>) {
        if matches!(self.framing, Framing::Native { .. }) {
            native::encode(&Frame::Bye("shutdown"), out);
        }
    }

    /// Writes what a connection refused at accept is told, before any
    /// session exists for it: ERROR 5 (native), nothing otherwise.
    pub fn full(proto: Protocol, out: &mut Vec<u8>) {
        if proto == Protocol::Native {
            encode_error(error_code::SERVER_FULL, "server full", out);
        }
    }

    /// The next instant this session needs [`Session::on_timer`], or `None`
    /// when no deadline applies (raw with `timeout = "0s"`).
    pub fn next_deadline(&self, cfg: &ListenerConfig) -> Option<Instant> {
        match self.state() {
            State::Handshake | State::Probe => Some(self.since() + cfg.handshake_timeout),
            State::Online if cfg.timeout.is_zero() => None,
            State::Online => {
                let last = self.silence_from();
                let offline_at = last + cfg.timeout;
                if cfg.server_ping && !self.pinged() {
                    Some(offline_at.min(last + cfg.interval))
                } else {
                    Some(offline_at)
                }
            }
        }
    }

    /// True when [`Session::on_timer`] at `now` would close the session for
    /// a timeout (handshake, or silence). The loop reads the socket first
    /// when it is: bytes waiting in the kernel are activity, not silence.
    pub fn overdue(&self, now: Instant, cfg: &ListenerConfig) -> bool {
        match self.state() {
            State::Handshake | State::Probe => now >= self.since() + cfg.handshake_timeout,
            // The deadline may have moved on since the timer was armed:
            // only the silence measured now convicts (counted from a fresh
            // WELCOME, if later than the last activity).
            State::Online => {
                !cfg.timeout.is_zero() && now.saturating_duration_since(self.silence_from()) >= cfg.timeout
            }
        }
    }

    /// Handles the deadline passing at `now`: handshake timeout, offline for
    /// silence, or a server PING (to `out`). Early calls do nothing.
    pub fn on_timer(&mut self, now: Instant, cfg: &ListenerConfig, out: &mut Vec<u8>) -> Next {
        let overdue = self.overdue(now, cfg);
        match self.state() {
            State::Handshake => {
                if overdue {
                    encode_error(error_code::HANDSHAKE_TIMEOUT, "no HELLO within the handshake timeout", out);
                    return Next::close(OfflineReason::Timeout, "handshake timeout");
                }
            }
            State::Probe => {
                if overdue {
                    return Next::close(OfflineReason::Timeout, "probe outlived the handshake timeout");
                }
            }
            State::Online => {
                if overdue {
                    return Next::Close(OfflineReason::Timeout, None);
                }
                let silent = now.saturating_duration_since(self.last_activity());
                if let Framing::Native { flags, .. } = &mut self.framing {
                    if cfg.server_ping && !flags.pinged && silent >= cfg.interval {
                        flags.pinged = true;
                        native::encode(&Frame::Ping(&[]), out);
                    }
                }
            }
        }
        Next::Continue
    }
}

/// What a new process needs to continue a session after a restart
/// (`crate::fdstore` keeps it beside the socket). The deframer is not in
/// it: a frame half read when the process ended is lost, and the next
/// bytes are read as the start of a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The protocol spoken.
    pub proto: Protocol,
    /// The HELLO id (native, once received).
    pub id: Option<String>,
    /// When the session started, or went online.
    pub since: Instant,
    /// The last activity.
    pub last_activity: Instant,
    /// Heartbeats received so far.
    pub heartbeats: u64,
    /// Native: WELCOME was given.
    pub welcomed: bool,
    /// Native: the HELLO was a probe.
    pub probe: bool,
    /// Native: a server PING is outstanding.
    pub pinged: bool,
    /// Native: the grace of a timing change, in ms after the last activity.
    pub grace_ms: u32,
}

impl Session {
    /// The state to keep for a restart.
    pub fn snapshot(&self) -> Snapshot {
        let flags = match self.framing {
            Framing::Native { flags, .. } => flags,
            Framing::Legacy(_) | Framing::Raw => NativeFlags::default(),
        };
        Snapshot {
            proto: self.proto(),
            id: self.clock.id.as_deref().map(str::to_owned),
            since: self.since(),
            last_activity: self.last_activity(),
            heartbeats: self.clock.heartbeats,
            welcomed: flags.welcomed,
            probe: flags.probe,
            pinged: flags.pinged,
            grace_ms: flags.grace_ms,
        }
    }

    /// A session continued from a snapshot a previous process kept: in the
    /// same state (online stays online, with no new online event), its
    /// clock where it was. Call [`anchor_clock`] first with the earliest
    /// instant of the snapshots, so that none is moved later.
    pub fn restore(kept: &Snapshot) -> Session {
        let mut session = Session::new(kept.proto, kept.since);
        session.clock.id = kept.id.as_deref().map(Rc::from);
        session.clock.since = Stamp::of(kept.since);
        session.clock.last_activity = Stamp::of(kept.last_activity);
        session.clock.heartbeats = kept.heartbeats;
        if let Framing::Native { flags, .. } = &mut session.framing {
            // WELCOME without an id cannot have been given: never online
            // by a damaged snapshot.
            flags.welcomed = kept.welcomed && kept.id.is_some();
            flags.probe = kept.probe;
            flags.pinged = kept.pinged;
            flags.grace_ms = kept.grace_ms;
        }
        session
    }
}

/// Makes `at` representable: the stamps' epoch is set no later than it,
/// when no stamp was taken yet. Restored sessions started before this
/// process did; without it their instants would be moved up to the first
/// stamp of the process.
pub fn anchor_clock(at: Instant) {
    EPOCH.get_or_init(|| at);
}

impl Clock {
    /// A heartbeat: a complete frame, or raw bytes.
    fn activity(&mut self, now: Instant) {
        self.last_activity = Stamp::of(now);
        self.heartbeats += 1;
    }

    /// One native frame from the client.
    fn on_frame(
        &mut self,
        flags: &mut NativeFlags,
        frame: Frame<'_>,
        now: Instant,
        cfg: &ListenerConfig,
        out: &mut Vec<u8>,
    ) -> Next {
        if !flags.welcomed {
            if self.id.is_some() {
                // HELLO accepted, WELCOME not given: the caller did not
                // call `welcome` before feeding more. Never online twice.
                return Next::close(OfflineReason::Error, "frame fed before welcome");
            }
            let Frame::Hello { id, token, probe, .. } = frame else {
                encode_error(error_code::OUT_OF_ORDER, "expected HELLO first", out);
                return Next::close(OfflineReason::ProtocolError, "frame before HELLO");
            };
            if !cfg.tokens.is_empty() && !cfg.tokens.iter().any(|t| t.as_slice() == token) {
                encode_error(error_code::AUTH_FAILED, "authentication failed", out);
                return Next::close(OfflineReason::ProtocolError, format!("bad token for id {id}"));
            }
            let id: Rc<str> = id.into();
            self.id = Some(Rc::clone(&id));
            self.last_activity = Stamp::of(now);
            flags.probe = probe;
            return if probe { Next::Probe } else { Next::Hello(id) };
        }
        match frame {
            Frame::Ping(payload) => native::encode(&Frame::Pong(payload), out),
            Frame::Pong(_) => {}
            Frame::Bye("") => return Next::Close(OfflineReason::Left, None),
            Frame::Bye(reason) => return Next::close(OfflineReason::Left, reason),
            Frame::Hello { .. } => {
                encode_error(error_code::OUT_OF_ORDER, "HELLO sent twice", out);
                return Next::close(OfflineReason::ProtocolError, "HELLO sent twice");
            }
            Frame::Welcome { .. } | Frame::Error { .. } => {
                encode_error(error_code::MALFORMED, "WELCOME and ERROR are server-to-client frames", out);
                return Next::close(OfflineReason::ProtocolError, "server-to-client frame from client");
            }
        }
        self.activity(now);
        flags.pinged = false;
        flags.grace_ms = 0;
        Next::Continue
    }
}

fn encode_error(code: u16, message: &str, out: &mut Vec<u8>) {
    native::encode(&Frame::Error { code, message }, out);
}

fn encode_welcome(session: u64, cfg: &ListenerConfig, out: &mut Vec<u8>) {
    let frame = Frame::Welcome { interval_ms: millis_u32(cfg.interval), timeout_ms: millis_u32(cfg.timeout), session };
    native::encode(&frame, out);
}

/// A duration as the protocol's `u32` milliseconds (config validation keeps
/// every duration in range; saturate rather than wrap regardless).
pub fn millis_u32(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// The process's monotonic epoch: the first instant a session stamped.
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::Path;

    /// A listener of `proto` with `extra` TOML lines, through the real
    /// config parser (so the test follows the config's defaults).
    fn cfg(proto: &str, extra: &str) -> ListenerConfig {
        let text = format!(
            "[[listener]]\nname = \"t\"\naddress = \"127.0.0.1:0\"\nprotocol = \"{proto}\"\ninterval = \"1s\"\n{extra}"
        );
        match crate::config::parse(&text, "test.toml", Path::new("/nonexistent")) {
            Ok(mut c) => c.listeners.remove(0),
            Err(e) => panic!("config: {e}"),
        }
    }

    fn frame(f: &Frame<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        native::encode(f, &mut out);
        out
    }

    fn hello(id: &str, token: &[u8]) -> Vec<u8> {
        frame(&Frame::Hello { version: native::VERSION, id, token, probe: false })
    }

    fn probe_hello(id: &str, token: &[u8]) -> Vec<u8> {
        frame(&Frame::Hello { version: native::VERSION, id, token, probe: true })
    }

    fn legacy_frame(t: i32, len: i32) -> Vec<u8> {
        let mut v = t.to_le_bytes().to_vec();
        v.extend_from_slice(&len.to_le_bytes());
        v.extend(std::iter::repeat_n(0xAB, usize::try_from(len).unwrap_or(0)));
        v
    }

    /// The loop, modelled: feeds reads to a session, welcomes every HELLO
    /// (session number 7), and records what the outside world would see.
    struct Model {
        session: Session,
        cfg: ListenerConfig,
        now: Instant,
        /// Online and offline events, in order.
        events: Vec<String>,
        /// Every byte the session wrote.
        replies: Vec<u8>,
        closed: bool,
    }

    impl Model {
        fn new(cfg: ListenerConfig) -> Model {
            let now = Instant::now();
            let session = Session::new(cfg.protocol, now);
            let mut events = Vec::new();
            if session.is_online() {
                events.push("online".to_owned());
            }
            Model { session, cfg, now, events, replies: Vec::new(), closed: false }
        }

        /// One read of `data`, handled as the loop does.
        fn read(&mut self, mut data: &[u8]) {
            while !self.closed {
                let (next, used) = self.session.ingest(data, self.now, &self.cfg, &mut self.replies);
                assert!(used <= data.len());
                data = &data[used..];
                match next {
                    Next::Continue => {
                        assert!(data.is_empty(), "Continue leaves no byte unused");
                        return;
                    }
                    Next::Hello(id) => {
                        assert_eq!(self.session.id(), Some(&id));
                        assert!(!self.session.is_online());
                        self.session.welcome(self.now, 7, &self.cfg, &mut self.replies);
                        assert!(self.session.is_online());
                        self.events.push(format!("online {id}"));
                    }
                    Next::Probe => {
                        self.session.welcome(self.now, 7, &self.cfg, &mut self.replies);
                        assert!(self.session.is_probe() && !self.session.is_online());
                    }
                    Next::Close(reason, _) => self.close(reason),
                }
            }
        }

        fn close(&mut self, reason: OfflineReason) {
            self.closed = true;
            let event = if self.session.is_online() { "offline" } else { "handshake-failed" };
            self.events.push(format!("{event} {}", reason.as_str()));
        }

        /// Time passes to `at`; the timer fires if a deadline is due.
        fn advance(&mut self, at: Instant) {
            self.now = at;
            if self.closed {
                return;
            }
            if self.session.next_deadline(&self.cfg).is_some_and(|d| d <= at) {
                if let Next::Close(reason, _) = self.session.on_timer(at, &self.cfg, &mut self.replies) {
                    self.close(reason);
                }
            }
        }

        /// Feeds `stream` in reads of `chunk` bytes.
        fn feed(cfg: ListenerConfig, stream: &[u8], chunk: usize) -> Model {
            let mut model = Model::new(cfg);
            for piece in stream.chunks(chunk.max(1)) {
                model.read(piece);
            }
            model
        }

        /// Events and replies, the observable outcome.
        fn outcome(&self) -> (Vec<String>, Vec<u8>) {
            (self.events.clone(), self.replies.clone())
        }
    }

    /// The first frame `replies` holds after `skip` bytes.
    fn reply_at(replies: &[u8], skip: usize) -> Frame<'_> {
        match native::decode(&replies[skip..], 65535) {
            Ok(Some((f, _))) => f,
            other => panic!("no reply frame: {other:?}"),
        }
    }

    fn error_code_of(replies: &[u8]) -> u16 {
        match reply_at(replies, 0) {
            Frame::Error { code, .. } => code,
            other => panic!("not an ERROR: {other:?}"),
        }
    }

    #[test]
    fn native_byte_by_byte_hello_ping_bye() {
        let mut stream = hello("dev-1", b"");
        stream.extend(frame(&Frame::Ping(b"abc")));
        stream.extend(frame(&Frame::Bye("done")));
        let model = Model::feed(cfg("native", ""), &stream, 1);
        assert_eq!(model.events, ["online dev-1", "offline left"]);
        assert_eq!(model.session.heartbeats(), 1);
        match reply_at(&model.replies, 0) {
            Frame::Welcome { session: 7, interval_ms: 1000, .. } => {}
            other => panic!("expected WELCOME, got {other:?}"),
        }
        assert_eq!(reply_at(&model.replies, native::HEADER_LEN + native::WELCOME_LEN), Frame::Pong(b"abc"));
        assert_eq!(Model::feed(cfg("native", ""), &stream, stream.len()).outcome(), model.outcome());
    }

    #[test]
    fn hello_stops_ingest_and_reports_the_bytes_used() {
        let cfg = cfg("native", "");
        let mut session = Session::new(Protocol::Native, Instant::now());
        let mut stream = hello("a", b"");
        let hello_len = stream.len();
        stream.extend(frame(&Frame::Ping(b"")));
        let mut out = Vec::new();
        let (next, used) = session.ingest(&stream, Instant::now(), &cfg, &mut out);
        assert_eq!((next, used), (Next::Hello("a".into()), hello_len));
        assert!(out.is_empty());
        // Fed again without a welcome: refused, never online.
        let (next, _) = session.ingest(&stream[used..], Instant::now(), &cfg, &mut out);
        assert!(matches!(next, Next::Close(OfflineReason::Error, _)));
        assert!(!session.is_online());
    }

    #[test]
    fn probe_is_welcomed_pongs_never_online_and_ends_at_the_handshake_timeout() {
        let cfg = cfg("native", "handshake_timeout = \"2s\"\n");
        let mut model = Model::new(cfg);
        let start = model.now;
        model.now = start + Duration::from_millis(500);
        let mut stream = probe_hello("dev-1", b"");
        stream.extend(frame(&Frame::Ping(b"rtt")));
        model.read(&stream);
        assert!(model.session.is_probe() && !model.session.is_online());
        assert!(matches!(reply_at(&model.replies, 0), Frame::Welcome { session: 7, .. }));
        assert_eq!(reply_at(&model.replies, native::HEADER_LEN + native::WELCOME_LEN), Frame::Pong(b"rtt"));
        // Counted from the start, not from the WELCOME.
        assert_eq!(model.session.next_deadline(&model.cfg), Some(start + Duration::from_secs(2)));
        model.advance(start + Duration::from_millis(1999));
        assert!(!model.closed);
        model.advance(start + Duration::from_secs(2));
        assert!(model.closed);
        assert_eq!(model.events, ["handshake-failed timeout"], "a probe is never online");
    }

    #[test]
    fn probe_is_validated_like_any_hello() {
        let model = Model::feed(cfg("native", "tokens = [\"good\"]\n"), &probe_hello("a", b"bad"), 1);
        assert_eq!(error_code_of(&model.replies), error_code::AUTH_FAILED);
        let mut stream = probe_hello("a", b"good");
        stream.extend(frame(&Frame::Bye("check")));
        let model = Model::feed(cfg("native", "tokens = [\"good\"]\n"), &stream, 1);
        assert!(matches!(reply_at(&model.replies, 0), Frame::Welcome { .. }));
        assert_eq!(model.events, ["handshake-failed left"]);
        assert!(!model.session.is_online());
    }

    #[test]
    fn frame_before_hello_is_out_of_order() {
        let model = Model::feed(cfg("native", ""), &frame(&Frame::Ping(b"")), 1);
        assert_eq!(model.events, ["handshake-failed protocol-error"]);
        assert_eq!(error_code_of(&model.replies), error_code::OUT_OF_ORDER);
    }

    #[test]
    fn hello_twice_is_out_of_order() {
        let mut stream = hello("a", b"");
        stream.extend(hello("a", b""));
        let model = Model::feed(cfg("native", ""), &stream, 3);
        assert_eq!(model.events, ["online a", "offline protocol-error"]);
        let welcome = native::HEADER_LEN + native::WELCOME_LEN;
        assert!(matches!(reply_at(&model.replies, welcome), Frame::Error { code: error_code::OUT_OF_ORDER, .. }));
    }

    #[test]
    fn bad_token_is_refused() {
        let cfg = cfg("native", "tokens = [\"good\"]\n");
        let model = Model::feed(cfg.clone(), &hello("a", b"bad"), 1);
        assert_eq!(model.events, ["handshake-failed protocol-error"]);
        assert_eq!(error_code_of(&model.replies), error_code::AUTH_FAILED);
        let model = Model::feed(cfg, &hello("a", b"good"), 1);
        assert_eq!(model.events, ["online a"]);
    }

    #[test]
    fn oversize_frames_are_refused_from_the_header() {
        // A native HELLO header announcing 256 bytes, more than max_frame
        // (131, the least a native listener takes): refused after 4 bytes.
        let model = Model::feed(cfg("native", "max_frame = 131\n"), &[0x01, 0, 0x01, 0x00], 1);
        assert_eq!(model.events, ["handshake-failed protocol-error"]);
        assert_eq!(error_code_of(&model.replies), error_code::MALFORMED);
        let model = Model::feed(cfg("legacy", "max_frame = 16\n"), &legacy_frame(1, 17)[..8], 1);
        assert_eq!(model.events, ["online", "offline protocol-error"]);
        assert!(model.replies.is_empty());
    }

    #[test]
    fn handshake_timeout_sends_error_3() {
        let cfg = cfg("native", "handshake_timeout = \"2s\"\n");
        let mut model = Model::new(cfg);
        let start = model.now;
        assert_eq!(model.session.next_deadline(&model.cfg), Some(start + Duration::from_secs(2)));
        model.advance(start + Duration::from_millis(1999));
        assert!(!model.closed);
        model.advance(start + Duration::from_secs(2));
        assert_eq!(model.events, ["handshake-failed timeout"]);
        assert_eq!(error_code_of(&model.replies), error_code::HANDSHAKE_TIMEOUT);
    }

    #[test]
    fn server_ping_once_per_silence_then_timeout() {
        let cfg = cfg("native", "server_ping = true\nmisses = 3\n");
        let mut model = Model::new(cfg);
        let start = model.now;
        model.read(&hello("a", b""));
        model.replies.clear();
        assert_eq!(model.session.next_deadline(&model.cfg), Some(start + Duration::from_secs(1)));
        model.advance(start + Duration::from_secs(1));
        assert_eq!(reply_at(&model.replies, 0), Frame::Ping(b""));
        // One PING per silence: the next deadline is the timeout.
        assert_eq!(model.session.next_deadline(&model.cfg), Some(start + Duration::from_secs(3)));
        model.advance(start + Duration::from_secs(2));
        assert_eq!(model.replies.len(), native::HEADER_LEN);
        // A PONG is activity and re-enables the server PING.
        model.read(&frame(&Frame::Pong(b"")));
        assert_eq!(model.session.next_deadline(&model.cfg), Some(model.now + Duration::from_secs(1)));
        model.advance(model.now + Duration::from_secs(4));
        assert_eq!(model.events, ["online a", "offline timeout"]);
    }

    #[test]
    fn silence_timeout_counts_from_the_last_frame() {
        let mut model = Model::new(cfg("legacy", "misses = 2\n"));
        let start = model.now;
        model.now = start + Duration::from_secs(1);
        model.read(&legacy_frame(0, 0));
        assert_eq!(model.session.next_deadline(&model.cfg), Some(start + Duration::from_secs(3)));
        model.advance(start + Duration::from_millis(2999));
        assert!(!model.closed);
        model.advance(start + Duration::from_secs(3));
        assert_eq!(model.events, ["online", "offline timeout"]);
    }

    /// A native listener told `interval` / `timeout` (milliseconds).
    fn timed(interval: u64, timeout: u64, extra: &str) -> ListenerConfig {
        let mut c = cfg("native", extra);
        (c.interval, c.timeout) = (Duration::from_millis(interval), Duration::from_millis(timeout));
        c
    }

    /// A native session on a 3 s / 15 s listener, online at the model's
    /// start, whose one PING came `start_offset` later (the model's `now`).
    fn native_silent_since(start_offset: Duration) -> Model {
        let mut model = Model::new(timed(3000, 15000, ""));
        model.read(&hello("dev-r", b""));
        let start = model.now;
        model.now = start + start_offset;
        model.read(&frame(&Frame::Ping(b"")));
        model
    }

    #[test]
    fn a_shrinking_reload_counts_the_new_timeout_from_the_fresh_welcome() {
        let mut model = native_silent_since(Duration::from_millis(500));
        let last = model.now;
        // A reload 2.5 s into the 3 s interval: 200 ms / 1 s from now on.
        let reload = last + Duration::from_millis(2500);
        model.cfg = timed(200, 1000, "");
        model.session.timing_changed(reload);
        assert_eq!(model.session.next_deadline(&model.cfg), Some(reload + Duration::from_secs(1)));
        // The next tick convicts nobody: 2.5 s of silence is within what the
        // client was told.
        model.advance(reload + Duration::from_millis(100));
        model.advance(reload + Duration::from_millis(999));
        assert!(!model.closed, "{:?}", model.events);
        // Reported silence is still the real one.
        assert_eq!(model.session.last_activity(), last);
        // A client that never adopts the new timing is convicted one new
        // timeout after the WELCOME that announced it.
        model.advance(reload + Duration::from_secs(1));
        assert_eq!(model.events, ["online dev-r", "offline timeout"]);
    }

    #[test]
    fn after_a_timing_change_the_next_activity_counts_again() {
        let mut model = native_silent_since(Duration::ZERO);
        let reload = model.now + Duration::from_millis(2000);
        model.cfg = timed(200, 1000, "");
        model.session.timing_changed(reload);
        // The client adopts the new interval: its PING ends the grace.
        model.now = reload + Duration::from_millis(200);
        model.read(&frame(&Frame::Ping(b"")));
        assert_eq!(model.session.next_deadline(&model.cfg), Some(model.now + Duration::from_secs(1)));
        // An earlier reload than the activity changes nothing.
        model.session.timing_changed(reload);
        assert_eq!(model.session.next_deadline(&model.cfg), Some(model.now + Duration::from_secs(1)));
        let pinged = model.now;
        model.advance(pinged + Duration::from_secs(1));
        assert_eq!(model.events, ["online dev-r", "offline timeout"]);
    }

    #[test]
    fn a_timing_change_gives_server_ping_from_the_welcome_too() {
        let mut model = native_silent_since(Duration::ZERO);
        let reload = model.now + Duration::from_millis(2000);
        model.cfg = timed(200, 1000, "server_ping = true\n");
        model.session.timing_changed(reload);
        assert_eq!(model.session.next_deadline(&model.cfg), Some(reload + Duration::from_millis(200)));
        let before = model.replies.len();
        model.advance(reload + Duration::from_millis(200));
        assert!(matches!(reply_at(&model.replies, before), Frame::Ping(b"")));
        assert!(!model.closed);
    }

    #[test]
    fn timing_changes_touch_only_online_native_sessions() {
        // Legacy and raw clients are told nothing: their silence counts
        // from their own activity, as before.
        let mut legacy = Model::new(cfg("legacy", "misses = 2\n"));
        let start = legacy.now;
        legacy.session.timing_changed(start + Duration::from_secs(1));
        assert_eq!(legacy.session.next_deadline(&legacy.cfg), Some(start + Duration::from_secs(2)));
        // A native session in its handshake keeps its handshake deadline.
        let mut native = Model::new(cfg("native", ""));
        let deadline = native.session.next_deadline(&native.cfg);
        native.session.timing_changed(start + Duration::from_secs(1));
        assert_eq!(native.session.next_deadline(&native.cfg), deadline);
    }

    #[test]
    fn overdue_says_exactly_when_on_timer_would_convict() {
        let cfg = cfg("native", "handshake_timeout = \"2s\"\n");
        let start = Instant::now();
        let mut session = Session::new(Protocol::Native, start);
        assert!(!session.overdue(start + Duration::from_millis(1999), &cfg));
        assert!(session.overdue(start + Duration::from_secs(2), &cfg));
        let mut out = Vec::new();
        let (next, _) = session.ingest(&hello("a", b""), start, &cfg, &mut out);
        assert_eq!(next, Next::Hello("a".into()));
        session.welcome(start, 1, &cfg, &mut out);
        let due = start + cfg.timeout;
        assert!(!session.overdue(due - Duration::from_millis(1), &cfg));
        assert!(session.overdue(due, &cfg));
        // Asking changes nothing: the verdict is still on_timer's.
        assert_eq!(session.on_timer(due - Duration::from_millis(1), &cfg, &mut out), Next::Continue);
        assert_eq!(session.on_timer(due, &cfg, &mut out), Next::Close(OfflineReason::Timeout, None));
    }

    #[test]
    fn raw_without_timeout_has_no_deadline_and_echoes() {
        let mut model = Model::new(cfg("raw", "timeout = \"0s\"\necho = true\n"));
        assert_eq!(model.session.next_deadline(&model.cfg), None);
        model.read(b"xyz");
        assert_eq!(model.replies, b"xyz");
        assert_eq!(model.session.heartbeats(), 1);
    }

    #[test]
    fn legacy_echo_per_heartbeat_header() {
        let mut stream = legacy_frame(0, 3);
        stream.extend(legacy_frame(1, 0));
        stream.extend(legacy_frame(0, 0));
        let model = Model::feed(cfg("legacy", "echo = true\n"), &stream, 1);
        assert_eq!(model.replies, [legacy::HEARTBEAT_ECHO, legacy::HEARTBEAT_ECHO].concat());
        assert_eq!(model.session.heartbeats(), 3);
    }

    #[test]
    fn replies_for_the_loop() {
        let cfg = cfg("native", "");
        let mut out = Vec::new();
        Session::full(Protocol::Native, &mut out);
        assert_eq!(error_code_of(&out), error_code::SERVER_FULL);
        out.clear();
        Session::full(Protocol::Raw, &mut out);
        let legacy = Session::new(Protocol::Legacy, Instant::now());
        legacy.shutdown(&mut out);
        legacy.replaced(&mut out);
        legacy.rewelcome(1, &cfg, &mut out);
        assert!(out.is_empty(), "only native has frames to send");
        let native = Session::new(Protocol::Native, Instant::now());
        native.rewelcome(1, &cfg, &mut out);
        assert!(out.is_empty(), "no WELCOME before HELLO");
        native.shutdown(&mut out);
        assert_eq!(reply_at(&out, 0), Frame::Bye("shutdown"));
        out.clear();
        native.replaced(&mut out);
        assert_eq!(error_code_of(&out), error_code::REPLACED);
    }

    /// A valid native stream: HELLO, then PINGs, PONGs and maybe a BYE.
    fn native_stream() -> impl Strategy<Value = Vec<u8>> {
        let body = prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..=32).prop_map(|p| frame(&Frame::Ping(&p))),
            proptest::collection::vec(any::<u8>(), 0..=8).prop_map(|p| frame(&Frame::Pong(&p))),
        ];
        (proptest::collection::vec(body, 0..12), any::<bool>()).prop_map(|(frames, bye)| {
            let mut stream = hello("dev", b"");
            stream.extend(frames.concat());
            if bye {
                stream.extend(frame(&Frame::Bye("x")));
            }
            stream
        })
    }

    /// A valid legacy stream.
    fn legacy_stream() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec((0i32..2, 0i32..40), 0..12)
            .prop_map(|frames| frames.into_iter().flat_map(|(t, len)| legacy_frame(t, len)).collect())
    }

    /// Cut points: reads of these sizes, cycling.
    fn feed_split(cfg: ListenerConfig, stream: &[u8], sizes: &[usize]) -> Model {
        let mut model = Model::new(cfg);
        let mut rest = stream;
        for size in sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (piece, tail) = rest.split_at((*size).clamp(1, rest.len()));
            model.read(piece);
            rest = tail;
        }
        model
    }

    proptest! {
        #[test]
        fn native_any_split_same_outcome(stream in native_stream(), sizes in proptest::collection::vec(1usize..50, 1..8)) {
            let whole = Model::feed(cfg("native", ""), &stream, stream.len());
            prop_assert_eq!(feed_split(cfg("native", ""), &stream, &sizes).outcome(), whole.outcome());
        }

        #[test]
        fn legacy_any_split_same_outcome(stream in legacy_stream(), sizes in proptest::collection::vec(1usize..50, 1..8)) {
            let cfg = || cfg("legacy", "echo = true\n");
            let whole = Model::feed(cfg(), &stream, stream.len());
            let split = feed_split(cfg(), &stream, &sizes);
            prop_assert_eq!(split.session.heartbeats(), whole.session.heartbeats());
            prop_assert_eq!(split.outcome(), whole.outcome());
        }

        #[test]
        fn raw_any_split_same_outcome(stream in proptest::collection::vec(any::<u8>(), 1..200), sizes in proptest::collection::vec(1usize..50, 1..8)) {
            let cfg = || cfg("raw", "echo = true\n");
            prop_assert_eq!(feed_split(cfg(), &stream, &sizes).outcome(), Model::feed(cfg(), &stream, stream.len()).outcome());
        }

        /// Arbitrary bytes and times: no panic, every byte accounted for,
        /// at most one online and exactly one offline per online.
        #[test]
        fn arbitrary_input_never_panics_one_offline_per_online(
            proto in prop_oneof![Just("native"), Just("legacy"), Just("raw")],
            prefix_hello in any::<bool>(),
            reads in proptest::collection::vec((proptest::collection::vec(any::<u8>(), 0..64), 0u64..3000), 0..16),
        ) {
            let mut model = Model::new(cfg(proto, ""));
            let start = model.now;
            if prefix_hello && proto == "native" {
                model.read(&hello("p", b""));
            }
            for (bytes, ms) in reads {
                model.read(&bytes);
                model.advance(model.now + Duration::from_millis(ms));
            }
            model.advance(start + Duration::from_secs(3600));
            let online = model.events.iter().filter(|e| e.starts_with("online")).count();
            let offline = model.events.iter().filter(|e| e.starts_with("offline")).count();
            prop_assert!(online <= 1);
            // An hour of silence convicts every session still open.
            prop_assert!(model.closed);
            prop_assert_eq!(offline, online);
        }
    }
}
