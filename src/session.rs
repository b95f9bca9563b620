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
//! A WebSocket session has the same shape: its HELLO is the HTTP upgrade
//! request. `ingest` stops right after a valid request with [`Next::Hello`]
//! (the `id` query parameter, or the peer address), and `welcome` writes
//! `101 Switching Protocols`; a refused request gets its HTTP status and
//! `Close`. Once upgraded, the daemon pings after each `interval` of
//! silence and any complete client frame is activity.
//!
//! A probe HELLO (flags bit 0) is answered the same way, with
//! [`Next::Probe`] instead: the loop counts it and calls `welcome`, which
//! sends WELCOME but leaves the session in the probe state, never online.
//! A probe gets PONGs, and its deadline stays the handshake timeout.
//!
//! Invariants:
//! - The state is private and becomes online only in `welcome` of a HELLO
//!   that was no probe (native), of an upgrade request (websocket), or at
//!   creation (legacy, raw), and never
//!   leaves it: the loop emits the
//!   online event on entering it and the offline event when it drops the
//!   session, so there is exactly one of each.
//! - `last_activity` moves only forward, and only on a complete valid frame
//!   (native, legacy, websocket) or any byte (raw); a heartbeat costs this
//!   one store.
//! - A WebSocket session keeps its upgrade request's bytes only until
//!   `welcome` (boxed, then freed): once upgraded it owns 16 boxed bytes of
//!   deframer besides its id, and more only while a frame is split
//!   across reads.
//! - A native session's silence counts from its last activity, or from the
//!   fresh WELCOME of a reload that changed its timing if that came later
//!   ([`Session::timing_changed`]): a reload never convicts a client for a
//!   silence the old timing allowed.
//! - After `Next::Close` the session must not be fed again; what it wrote
//!   to `out` (an ERROR) is its last word.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::config::ListenerConfig;
use crate::event::OfflineReason;
use crate::trust::{self, Auth};
use crate::wire::deframe::{LegacyDeframer, LegacyItem, NativeDeframer};
use crate::wire::legacy;
use crate::wire::native::{self, error_code, Frame};
use crate::wire::websocket::{self, close_code, Item};
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
    /// Native: waiting for HELLO; websocket: for the upgrade request. Not
    /// online.
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
    /// WebSocket before `welcome`: the upgrade request so far.
    Upgrading(Box<Upgrading>),
    /// WebSocket after the upgrade: the deframer (whose cursor also
    /// remembers an unanswered server Ping). Boxed: its 16 bytes inline
    /// would grow every protocol's slot by 8 (the variant would leave the
    /// enum no niche for its tag); the box costs one 32-byte heap chunk.
    WebSocket(Box<WebSocketState>),
}

/// A WebSocket connection after its `101`.
#[derive(Debug, Default)]
struct WebSocketState {
    deframer: websocket::Deframer,
    /// What its upgrade request proved (`trust.rs`): only as much may take
    /// its id over.
    auth: Auth,
}

/// A WebSocket connection before its `101`: boxed, freed at `welcome`.
#[derive(Debug)]
struct Upgrading {
    /// The start of a request split across reads (at most
    /// [`websocket::MAX_REQUEST`] bytes); empty when it came in one read.
    buf: Vec<u8>,
    /// The peer: the id when the request names none.
    peer: SocketAddr,
    /// Set once the request was accepted: the `Sec-WebSocket-Accept` that
    /// `welcome` sends.
    accept: Option<[u8; websocket::ACCEPT_LEN]>,
    /// What the accepted request proved (`trust.rs`).
    auth: Auth,
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
    /// What the HELLO proved (`trust.rs`), for the loop's takeover rule.
    auth: Auth,
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
    /// for HELLO. For tests: the peer is `0.0.0.0:0`.
    #[cfg(test)]
    pub fn new(proto: Protocol, now: Instant) -> Session {
        Session::accepted(proto, SocketAddr::from(([0, 0, 0, 0], 0)), now)
    }

    /// A session for a connection from `peer` accepted at `now`: as
    /// [`Session::new`], and a WebSocket request without an `id` is named
    /// by `peer`.
    pub fn accepted(proto: Protocol, peer: SocketAddr, now: Instant) -> Session {
        let framing = match proto {
            Protocol::Native => Framing::Native { deframer: NativeDeframer::default(), flags: NativeFlags::default() },
            Protocol::Legacy => Framing::Legacy(LegacyDeframer::default()),
            Protocol::Raw => Framing::Raw,
            Protocol::WebSocket => {
                Framing::Upgrading(Box::new(Upgrading { buf: Vec::new(), peer, accept: None, auth: Auth::Open }))
            }
        };
        Session {
            clock: Clock { id: None, since: Stamp::of(now), last_activity: Stamp::of(now), heartbeats: 0 },
            framing,
        }
    }

    /// True when a session of `proto` is online from its creation (legacy,
    /// raw): its online event comes at accept.
    pub fn online_at_accept(proto: Protocol) -> bool {
        matches!(proto, Protocol::Legacy | Protocol::Raw)
    }

    /// Handshake (native before WELCOME, websocket before its 101) or
    /// online.
    fn state(&self) -> State {
        match self.framing {
            Framing::Native { flags, .. } if !flags.welcomed => State::Handshake,
            Framing::Native { flags, .. } if flags.probe => State::Probe,
            Framing::Upgrading(_) => State::Handshake,
            _ => State::Online,
        }
    }

    /// True when the daemon pings this session after an interval of
    /// silence: native with `server_ping`, websocket always.
    fn pings(&self, cfg: &ListenerConfig) -> bool {
        match self.framing {
            Framing::Native { .. } => cfg.server_ping,
            Framing::WebSocket(_) => true,
            _ => false,
        }
    }

    /// A PING was sent since the last activity (native, websocket).
    fn pinged(&self) -> bool {
        match &self.framing {
            Framing::Native { flags, .. } => flags.pinged,
            Framing::WebSocket(ws) => ws.deframer.cursor.pinged(),
            _ => false,
        }
    }

    /// The protocol spoken.
    pub fn proto(&self) -> Protocol {
        match self.framing {
            Framing::Native { .. } => Protocol::Native,
            Framing::Legacy(_) => Protocol::Legacy,
            Framing::Raw => Protocol::Raw,
            Framing::Upgrading(_) | Framing::WebSocket(_) => Protocol::WebSocket,
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

    /// The HELLO id (native) or the upgrade's id or peer (websocket), once
    /// received.
    pub fn id(&self) -> Option<&Rc<str>> {
        self.clock.id.as_ref()
    }

    /// What the HELLO proved (native; `Auth::Open` before HELLO and for
    /// legacy and raw, which carry no credential).
    pub fn auth(&self) -> Auth {
        match self.framing {
            Framing::Native { flags, .. } => flags.auth,
            Framing::WebSocket(ref ws) => ws.auth,
            _ => Auth::Open,
        }
    }

    /// The id a HELLO claimed when it was not welcomed: refused for its
    /// credential, or (between `ingest` and `welcome`) not yet resolved.
    pub fn claimed_id(&self) -> Option<&Rc<str>> {
        self.clock.id.as_ref().filter(|_| self.state() == State::Handshake)
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

    /// WebSocket data messages read and thrown away so far (they are
    /// heartbeats too); zero for other protocols.
    pub fn messages(&self) -> u64 {
        match &self.framing {
            Framing::WebSocket(ws) => ws.deframer.messages(),
            _ => 0,
        }
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
            Framing::Upgrading(upgrading) => clock.upgrade(upgrading, data, now, cfg, out),
            Framing::WebSocket(ws) => clock.websocket(&mut ws.deframer, data, now, cfg, out),
        }
    }

    /// Puts a native session online after the caller accepted its HELLO:
    /// writes WELCOME with the session number to `out` and starts the
    /// liveness clock. A probe gets the WELCOME only: it stays a probe,
    /// its deadline still counted from the start. Does nothing unless the
    /// session waits for it.
    pub fn welcome(&mut self, now: Instant, session: u64, cfg: &ListenerConfig, out: &mut Vec<u8>) {
        if let Framing::Upgrading(upgrading) = &self.framing {
            let Some(accept) = upgrading.accept else { return };
            websocket::encode_switch(&accept, out);
            // Frees the request's box.
            let auth = upgrading.auth;
            self.framing =
                Framing::WebSocket(Box::new(WebSocketState { deframer: websocket::Deframer::default(), auth }));
            self.clock.since = Stamp::of(now);
            self.clock.last_activity = Stamp::of(now);
            return;
        }
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
    /// refused as the older of two) is told: ERROR 6 (native), Close 1008
    /// (websocket).
    pub fn replaced(&self, out: &mut Vec<u8>) {
        const WHY: &str = "replaced by a newer connection with the same id";
        match self.framing {
            Framing::Native { .. } => encode_error(error_code::REPLACED, WHY, out),
            Framing::WebSocket(_) => websocket::encode_close(close_code::POLICY, WHY, out),
            _ => {}
        }
    }

    /// Checks the id of the HELLO `ingest` just returned against the names
    /// the client's certificate proves (mutual TLS; `what` says which kind
    /// of name, for the log): a HELLO naming another id gets ERROR 4 and
    /// `Close`, before any `welcome`. `Continue` when it names one of them:
    /// the certificate proved the id ([`Auth::Id`], `trust.rs`), so only
    /// another proof of it may take it over.
    pub fn check_identity(&mut self, allowed: &[String], what: &str, out: &mut Vec<u8>) -> Next {
        let Some(id) = self.clock.id.as_deref() else { return Next::Continue };
        if allowed.iter().any(|name| name == id) {
            match &mut self.framing {
                Framing::Native { flags, .. } => flags.auth = Auth::Id,
                Framing::Upgrading(upgrading) => upgrading.auth = Auth::Id,
                _ => {}
            }
            return Next::Continue;
        }
        const WHY: &str = "id not in the client certificate";
        if let Framing::Upgrading(_) = self.framing {
            websocket::encode_refusal(403, WHY, out);
        } else {
            encode_error(error_code::AUTH_FAILED, WHY, out);
        }
        let proven = if allowed.is_empty() { format!("no {what}") } else { format!("{what} {}", allowed.join(",")) };
        Next::close(
            OfflineReason::ProtocolError,
            format!("certificate mismatch: HELLO id {id}, certificate has {proven}"),
        )
    }

    /// Writes what a HELLO refused as a takeover (it proved less than the
    /// live connection of its id, `trust::may_replace`) is told: ERROR 4.
    pub fn takeover_refused(&self, out: &mut Vec<u8>) {
        const WHY: &str = "authentication failed: the id is online and this HELLO does not prove it";
        match self.framing {
            Framing::Native { .. } => encode_error(error_code::AUTH_FAILED, WHY, out),
            // Refused before its `101`, as a bad token is.
            Framing::Upgrading(_) => websocket::encode_refusal(403, WHY, out),
            _ => {}
        }
    }

    /// Writes the goodbye of a stopping daemon: BYE `shutdown` (native),
    /// Close 1001 `shutdown` (websocket, once upgraded).
    pub fn shutdown(&self, out: &mut Vec<u8>) {
        match self.framing {
            Framing::Native { .. } => native::encode(&Frame::Bye("shutdown"), out),
            Framing::WebSocket(_) => websocket::encode_close(close_code::GOING_AWAY, "shutdown", out),
            _ => {}
        }
    }

    /// Writes what a connection refused at accept is told, before any
    /// session exists for it: ERROR 5 (native), 503 (websocket: the
    /// answer its upgrade request will find), nothing otherwise.
    pub fn full(proto: Protocol, out: &mut Vec<u8>) {
        match proto {
            Protocol::Native => encode_error(error_code::SERVER_FULL, "server full", out),
            Protocol::WebSocket => websocket::encode_refusal(503, "server full", out),
            Protocol::Legacy | Protocol::Raw => {}
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
                if self.pings(cfg) && !self.pinged() {
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
                    if self.proto() == Protocol::WebSocket {
                        websocket::encode_refusal(408, "no upgrade request within the handshake timeout", out);
                    } else {
                        encode_error(error_code::HANDSHAKE_TIMEOUT, "no HELLO within the handshake timeout", out);
                    }
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
                // Counted as `next_deadline` counts it (from a fresh
                // WELCOME, if later), so an early call sends no PING.
                let silent = now.saturating_duration_since(self.silence_from());
                match &mut self.framing {
                    Framing::Native { flags, .. } if cfg.server_ping && !flags.pinged && silent >= cfg.interval => {
                        flags.pinged = true;
                        native::encode(&Frame::Ping(&[]), out);
                    }
                    Framing::WebSocket(ws) if !ws.deframer.cursor.pinged() && silent >= cfg.interval => {
                        ws.deframer.cursor.ping(out)
                    }
                    _ => {}
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
    /// What the HELLO (or websocket upgrade) proved (`trust.rs`): a
    /// restored connection is as hard to take over as before.
    pub auth: Auth,
}

impl Session {
    /// The state to keep for a restart.
    pub fn snapshot(&self) -> Snapshot {
        let flags = match &self.framing {
            Framing::Native { flags, .. } => *flags,
            // Upgraded: online, as a welcomed native session is.
            Framing::WebSocket(ws) => NativeFlags {
                welcomed: true,
                pinged: ws.deframer.cursor.pinged(),
                auth: ws.auth,
                ..NativeFlags::default()
            },
            Framing::Legacy(_) | Framing::Raw | Framing::Upgrading(_) => NativeFlags::default(),
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
            auth: flags.auth,
        }
    }

    /// A session continued from a snapshot a previous process kept: in the
    /// same state (online stays online, with no new online event), its
    /// clock where it was. Call [`anchor_clock`] first with the earliest
    /// instant of the snapshots, so that none is moved later.
    /// `peer` is the connection's (a websocket request without an id is
    /// named by it).
    pub fn restore(kept: &Snapshot, peer: SocketAddr) -> Session {
        let mut session = Session::accepted(kept.proto, peer, kept.since);
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
            flags.auth = kept.auth;
        }
        if kept.proto == Protocol::WebSocket && kept.welcomed && kept.id.is_some() {
            // Upgraded before the restart: frames from here on. (One that
            // was upgrading reads its request again from the start.)
            let state = WebSocketState { deframer: websocket::Deframer::default(), auth: kept.auth };
            session.framing = Framing::WebSocket(Box::new(state));
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
            // The credential check (`trust.rs`). A client certificate
            // (mutual TLS) is judged after this, by `check_identity`:
            // `Auth::Id` for the id it names, refusal for any other.
            let Some(auth) = trust::authenticate(cfg, id, token) else {
                // The id is kept, though it never goes online: the loop
                // names a refused claim on a live id `takeover-refused`.
                self.id = Some(id.into());
                encode_error(error_code::AUTH_FAILED, "authentication failed", out);
                return Next::close(OfflineReason::ProtocolError, format!("bad token for id {id}"));
            };
            let id: Rc<str> = id.into();
            self.id = Some(Rc::clone(&id));
            self.last_activity = Stamp::of(now);
            flags.probe = probe;
            flags.auth = auth;
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

impl Clock {
    /// WebSocket before the upgrade: gathers the request (from `data`
    /// directly when it came whole) and judges it once complete. Stops
    /// after the request with [`Next::Hello`], or refuses it with its HTTP
    /// status.
    fn upgrade(
        &mut self,
        upgrading: &mut Upgrading,
        data: &[u8],
        now: Instant,
        cfg: &ListenerConfig,
        out: &mut Vec<u8>,
    ) -> (Next, usize) {
        if upgrading.accept.is_some() {
            // Accepted, not welcomed: the caller did not call `welcome`
            // before feeding more. Never online twice.
            return (Next::close(OfflineReason::Error, "bytes fed before welcome"), 0);
        }
        let kept = upgrading.buf.len();
        let (parsed, taken) = if kept == 0 {
            (websocket::parse_request(data), data.len())
        } else {
            // Never more than the request may be: past it, TooLarge.
            let take = data.len().min(websocket::MAX_REQUEST - kept.min(websocket::MAX_REQUEST));
            upgrading.buf.extend_from_slice(&data[..take]);
            (websocket::parse_request(&upgrading.buf), take)
        };
        let verdict = match parsed {
            Ok(None) => None,
            Ok(Some(request)) => {
                Some(admit(&request, upgrading.peer, cfg).map(|(id, accept, auth)| (id, accept, auth, request.len)))
            }
            Err(e) => Some(Err((e.status(), e.to_string()))),
        };
        match verdict {
            None => {
                if kept == 0 {
                    upgrading.buf.extend_from_slice(&data[..data.len().min(websocket::MAX_REQUEST)]);
                }
                (Next::Continue, taken)
            }
            Some(Err((status, why))) => {
                websocket::encode_refusal(status, &why, out);
                (Next::close(OfflineReason::ProtocolError, format!("{status} {why}")), taken)
            }
            Some(Ok((id, accept, auth, len))) => {
                // The request ended `len - kept` bytes into `data`.
                upgrading.buf = Vec::new();
                upgrading.accept = Some(accept);
                upgrading.auth = auth;
                self.id = Some(Rc::clone(&id));
                self.last_activity = Stamp::of(now);
                (Next::Hello(id), len - kept)
            }
        }
    }

    /// WebSocket after the upgrade: every complete frame is activity; a
    /// Ping gets its Pong, a Close is answered and means `left`, data is
    /// thrown away; a broken frame gets a Close with its code.
    fn websocket(
        &mut self,
        deframer: &mut websocket::Deframer,
        data: &[u8],
        now: Instant,
        cfg: &ListenerConfig,
        out: &mut Vec<u8>,
    ) -> (Next, usize) {
        let mut used = 0;
        loop {
            let (item, n) = deframer.next(&data[used..], cfg.max_frame);
            used += n;
            match item {
                Ok(None) => return (Next::Continue, used),
                Ok(Some(Item::Ping(payload))) => websocket::encode(websocket::opcode::PONG, payload.as_slice(), out),
                Ok(Some(Item::Pong | Item::Data { .. })) => {}
                Ok(Some(Item::Close(code))) => {
                    // §5.5.1: answer with a Close, echoing the code.
                    websocket::encode_close(code.unwrap_or(close_code::NORMAL), "", out);
                    let detail = code.map(|c| format!("close {c}"));
                    return (Next::Close(OfflineReason::Left, detail), used);
                }
                Err(e) => {
                    websocket::encode_close(e.close_code(), &e.to_string(), out);
                    return (Next::close(OfflineReason::ProtocolError, e.to_string()), used);
                }
            }
            self.activity(now);
        }
    }
}

/// An accepted upgrade request: the id, the `Sec-WebSocket-Accept` value
/// and what the request proved.
type Admitted = (Rc<str>, [u8; websocket::ACCEPT_LEN], Auth);

/// Judges a complete upgrade request against the listener: its path, the
/// page's origin, the id (the `id` parameter, by native rules, else the
/// peer address) and the token. The id and the accept key, or the HTTP
/// status and why.
fn admit(request: &websocket::Upgrade<'_>, peer: SocketAddr, cfg: &ListenerConfig) -> Result<Admitted, (u16, String)> {
    if let Some(path) = cfg.path.as_deref() {
        if request.path != path {
            return Err((404, format!("no WebSocket at {:?}: the path is {path:?}", request.path)));
        }
    }
    if let Some(origin) = request.origin {
        // A browser always names the page's origin; other clients need not.
        if !cfg.allowed_origins.is_empty() && !cfg.allowed_origins.iter().any(|o| o.eq_ignore_ascii_case(origin)) {
            return Err((403, format!("origin {origin:?} is not allowed")));
        }
    }
    let query = request.query.unwrap_or("");
    let id: Rc<str> = match websocket::query_param(query, "id") {
        Some(id) => {
            native::validate_id(&id).map_err(|e| (400, format!("invalid id: {e}")))?;
            // validate_id allows only printable ASCII.
            String::from_utf8_lossy(&id).into()
        }
        None => peer.to_string().into(),
    };
    let token = websocket::query_param(query, "token").unwrap_or_default();
    // The same credentials, and the same levels of proof, as a native HELLO.
    let Some(auth) = trust::authenticate(cfg, &id, &token) else {
        return Err((403, format!("authentication failed for id {id}")));
    };
    Ok((id, websocket::accept_key(request.key), auth))
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
    fn a_hello_for_an_id_the_certificate_does_not_name_gets_error_4() {
        let cfg = cfg("native", "");
        let now = Instant::now();
        let mut session = Session::new(Protocol::Native, now);
        let mut out = Vec::new();
        let (next, _) = session.ingest(&hello("beta", b""), now, &cfg, &mut out);
        assert_eq!(next, Next::Hello("beta".into()));
        let names = ["alpha".to_owned(), "beta".to_owned()];
        assert_eq!(session.check_identity(&names, "SAN DNS name", &mut out), Next::Continue);
        assert!(out.is_empty());
        let next = session.check_identity(&names[..1], "common name", &mut out);
        assert_eq!(
            next,
            Next::close(
                OfflineReason::ProtocolError,
                "certificate mismatch: HELLO id beta, certificate has common name alpha"
            )
        );
        match reply_at(&out, 0) {
            Frame::Error { code: error_code::AUTH_FAILED, .. } => {}
            other => panic!("expected ERROR 4, got {other:?}"),
        }
        assert!(!session.is_online());
        let mut out = Vec::new();
        assert!(
            matches!(session.check_identity(&[], "SAN URI", &mut out), Next::Close(_, Some(d)) if d.ends_with("no SAN URI"))
        );
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

    /// Found by the `session` fuzz target (fuzz/): after a timing change,
    /// an `on_timer` before the deadline sent the server PING, counted
    /// from the last activity while the deadline counts from the fresh
    /// WELCOME. An early call must do nothing.
    #[test]
    fn an_early_timer_after_a_timing_change_sends_no_ping() {
        let mut model = native_silent_since(Duration::ZERO);
        let last = model.now;
        model.cfg = timed(1000, 5000, "server_ping = true\n");
        let reload = last + Duration::from_millis(800);
        model.session.timing_changed(reload);
        let deadline = reload + Duration::from_secs(1);
        assert_eq!(model.session.next_deadline(&model.cfg), Some(deadline));
        let before = model.replies.len();
        // One interval after the last activity, before the deadline.
        let early = last + Duration::from_secs(1);
        assert_eq!(model.session.on_timer(early, &model.cfg, &mut model.replies), Next::Continue);
        assert_eq!(model.replies.len(), before, "an early timer wrote a PING");
        assert_eq!(model.session.next_deadline(&model.cfg), Some(deadline));
        // At the deadline, one interval after the fresh WELCOME, it is sent.
        model.advance(deadline);
        assert!(matches!(reply_at(&model.replies, before), Frame::Ping(b"")));
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

    /// An upgrade request for `target` from `origin`, as a browser sends it.
    fn ws_request(target: &str, origin: &str) -> Vec<u8> {
        format!(
            "GET {target} HTTP/1.1\r\nHost: 127.0.0.1:7703\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Origin: {origin}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        .into_bytes()
    }

    fn ws_frame(op: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        websocket::encode_masked(true, op, payload, [1, 2, 3, 4], &mut out);
        out
    }

    /// The HTTP status line the session answered with.
    fn status_of(replies: &[u8]) -> String {
        String::from_utf8_lossy(replies).lines().next().unwrap_or("").to_owned()
    }

    /// The server frames after the 101 answer.
    fn ws_replies(replies: &[u8]) -> Vec<u8> {
        let end = replies.windows(4).position(|w| w == b"\r\n\r\n").map_or(0, |i| i + 4);
        replies[end..].to_vec()
    }

    #[test]
    fn websocket_upgrade_split_anywhere_goes_online_with_the_query_id() {
        let mut stream = ws_request("/?id=dev-42", "http://page");
        let request = stream.len();
        stream.extend(ws_frame(websocket::opcode::PING, b"hi"));
        stream.extend(ws_frame(websocket::opcode::TEXT, b"hello"));
        for chunk in [1, 7, request - 1, request, stream.len()] {
            let model = Model::feed(cfg("websocket", ""), &stream, chunk);
            assert_eq!(model.events, ["online dev-42"], "chunk {chunk}");
            assert_eq!(status_of(&model.replies), "HTTP/1.1 101 Switching Protocols");
            assert!(String::from_utf8_lossy(&model.replies)
                .contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
            assert_eq!(ws_replies(&model.replies), [0x8A, 2, b'h', b'i'], "a Pong with the Ping's payload");
            assert_eq!(model.session.heartbeats(), 2, "the Ping and the message are activity");
            assert_eq!(model.session.messages(), 1);
        }
    }

    #[test]
    fn websocket_without_id_is_named_by_the_peer() {
        let peer: SocketAddr = "192.0.2.7:5555".parse().unwrap();
        let mut session = Session::accepted(Protocol::WebSocket, peer, Instant::now());
        let cfg = cfg("websocket", "");
        let mut out = Vec::new();
        let (next, used) = session.ingest(&ws_request("/", "http://page"), Instant::now(), &cfg, &mut out);
        assert_eq!((next, used), (Next::Hello("192.0.2.7:5555".into()), ws_request("/", "http://page").len()));
        assert!(out.is_empty(), "the 101 waits for welcome");
        assert!(!session.is_online());
        session.welcome(Instant::now(), 1, &cfg, &mut out);
        assert!(session.is_online());
        assert_eq!(session.proto(), Protocol::WebSocket);
    }

    #[test]
    fn an_upgraded_websocket_is_restored_online_with_its_proof() {
        let peer: SocketAddr = "192.0.2.8:4444".parse().unwrap();
        let with = "tokens = [\"dev-9 sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"]\n";
        let open = cfg("websocket", "");
        let cfg = cfg("websocket", with);
        let mut session = Session::accepted(Protocol::WebSocket, peer, Instant::now());
        let mut out = Vec::new();
        // The token whose SHA-256 is above is "test".
        let (next, _) =
            session.ingest(&ws_request("/?id=dev-9&token=test", "http://page"), Instant::now(), &cfg, &mut out);
        assert_eq!(next, Next::Hello("dev-9".into()));
        session.welcome(Instant::now(), 1, &cfg, &mut out);
        let kept = session.snapshot();
        assert!(kept.welcomed && kept.auth == Auth::Id, "{kept:?}");

        let mut restored = Session::restore(&kept, peer);
        assert!(restored.is_online());
        assert_eq!((restored.proto(), restored.auth()), (Protocol::WebSocket, Auth::Id));
        // Frames, not a request: a client Ping gets its Pong.
        out.clear();
        let (next, _) = restored.ingest(&ws_frame(websocket::opcode::PING, b"p"), Instant::now(), &cfg, &mut out);
        assert_eq!(next, Next::Continue);
        assert_eq!(ws_replies(&out), [0x8A, 1, b'p']);

        // One still upgrading reads its request again, named by its peer.
        let upgrading = Session::accepted(Protocol::WebSocket, peer, Instant::now()).snapshot();
        let mut again = Session::restore(&upgrading, peer);
        assert!(!again.is_online());
        let (next, _) = again.ingest(&ws_request("/", "http://page"), Instant::now(), &open, &mut out);
        assert_eq!(next, Next::Hello("192.0.2.8:4444".into()));
    }

    #[test]
    fn websocket_refusals_have_their_status_and_never_go_online() {
        let with = "path = \"/hb\"\nallowed_origins = [\"http://good\"]\ntokens = [\"s3cret\"]\n";
        let cases = [
            (ws_request("/hb?id=a&token=s3cret", "http://evil"), "HTTP/1.1 403 Forbidden"),
            (ws_request("/hb?id=a&token=wrong", "http://good"), "HTTP/1.1 403 Forbidden"),
            (ws_request("/hb?id=a", "http://good"), "HTTP/1.1 403 Forbidden"),
            (ws_request("/other?id=a&token=s3cret", "http://good"), "HTTP/1.1 404 Not Found"),
            (ws_request("/hb?id=a%20b&token=s3cret", "http://good"), "HTTP/1.1 400 Bad Request"),
            (ws_request("/hb?id=&token=s3cret", "http://good"), "HTTP/1.1 400 Bad Request"),
            (b"GET /hb HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), "HTTP/1.1 400 Bad Request"),
        ];
        for (request, status) in cases {
            let model = Model::feed(cfg("websocket", with), &request, request.len());
            assert_eq!(model.events, ["handshake-failed protocol-error"], "{status}");
            assert_eq!(status_of(&model.replies), status);
        }
        let model = Model::feed(cfg("websocket", with), &ws_request("/hb?id=a&token=s3cret", "http://GOOD"), 5);
        assert_eq!(model.events, ["online a"]);
    }

    #[test]
    fn websocket_pings_after_each_interval_of_silence_then_times_out() {
        let mut model = Model::new(cfg("websocket", "misses = 3\n"));
        let start = model.now;
        model.read(&ws_request("/?id=b", "http://page"));
        model.replies.clear();
        assert_eq!(model.session.next_deadline(&model.cfg), Some(start + Duration::from_secs(1)));
        model.advance(start + Duration::from_secs(1));
        assert_eq!(model.replies, [0x89, 0], "an empty Ping");
        assert_eq!(model.session.next_deadline(&model.cfg), Some(start + Duration::from_secs(3)));
        // The browser's Pong is activity and allows the next Ping.
        model.now = start + Duration::from_millis(1010);
        model.read(&ws_frame(websocket::opcode::PONG, b""));
        assert_eq!(model.session.next_deadline(&model.cfg), Some(model.now + Duration::from_secs(1)));
        let pong = model.now;
        model.advance(pong + Duration::from_secs(1));
        model.advance(pong + Duration::from_millis(2999));
        assert!(!model.closed);
        model.advance(pong + Duration::from_secs(3));
        assert_eq!(model.events, ["online b", "offline timeout"]);
    }

    #[test]
    fn websocket_close_is_left_and_answered() {
        let mut stream = ws_request("/?id=c", "http://page");
        stream.extend(ws_frame(websocket::opcode::CLOSE, &1001u16.to_be_bytes()));
        let model = Model::feed(cfg("websocket", ""), &stream, 3);
        assert_eq!(model.events, ["online c", "offline left"]);
        assert_eq!(ws_replies(&model.replies), [0x88, 2, 0x03, 0xE9], "the code echoed");
    }

    #[test]
    fn websocket_protocol_errors_close_with_their_code() {
        let unmasked = {
            let mut out = Vec::new();
            websocket::encode(websocket::opcode::TEXT, b"x", &mut out);
            out
        };
        let cases =
            [(unmasked, 1002u16), (ws_frame(0x3, b""), 1002), (ws_frame(websocket::opcode::BINARY, &[0; 2000]), 1009)];
        for (frame, code) in cases {
            let mut stream = ws_request("/?id=d", "http://page");
            stream.extend(frame);
            let model = Model::feed(cfg("websocket", "max_frame = 1024\n"), &stream, stream.len());
            assert_eq!(model.events, ["online d", "offline protocol-error"]);
            let close = ws_replies(&model.replies);
            assert_eq!((close[0], u16::from_be_bytes([close[2], close[3]])), (0x88, code));
        }
    }

    #[test]
    fn websocket_handshake_timeout_is_408_and_loop_frames() {
        let mut model = Model::new(cfg("websocket", "handshake_timeout = \"2s\"\n"));
        let start = model.now;
        model.read(b"GET / HTTP/1.1\r\n");
        model.advance(start + Duration::from_secs(2));
        assert_eq!(model.events, ["handshake-failed timeout"]);
        assert_eq!(status_of(&model.replies), "HTTP/1.1 408 Request Timeout");
        let mut out = Vec::new();
        Session::full(Protocol::WebSocket, &mut out);
        assert_eq!(status_of(&out), "HTTP/1.1 503 Service Unavailable");
        let model = Model::feed(cfg("websocket", ""), &ws_request("/?id=e", "http://page"), 100);
        let mut out = Vec::new();
        model.session.shutdown(&mut out);
        assert_eq!(out[..4], [0x88, 10, 0x03, 0xE9]);
        out.clear();
        model.session.replaced(&mut out);
        assert_eq!(out[2..4], 1008u16.to_be_bytes());
        out.clear();
        model.session.rewelcome(7, &model.cfg, &mut out);
        assert!(out.is_empty());
    }

    /// A valid websocket stream: the upgrade, then client frames.
    fn websocket_stream() -> impl Strategy<Value = Vec<u8>> {
        let frame = prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..=125).prop_map(|p| ws_frame(websocket::opcode::PING, &p)),
            Just(ws_frame(websocket::opcode::PONG, b"")),
            proptest::collection::vec(any::<u8>(), 0..300).prop_map(|p| ws_frame(websocket::opcode::BINARY, &p)),
        ];
        (proptest::collection::vec(frame, 0..10), any::<bool>()).prop_map(|(frames, close)| {
            let mut stream = ws_request("/?id=w", "http://page");
            stream.extend(frames.concat());
            if close {
                stream.extend(ws_frame(websocket::opcode::CLOSE, b""));
            }
            stream
        })
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
        fn websocket_any_split_same_outcome(stream in websocket_stream(), sizes in proptest::collection::vec(1usize..50, 1..8)) {
            let whole = Model::feed(cfg("websocket", ""), &stream, stream.len());
            prop_assert_eq!(whole.events.first().map(String::as_str), Some("online w"));
            prop_assert_eq!(feed_split(cfg("websocket", ""), &stream, &sizes).outcome(), whole.outcome());
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
            proto in prop_oneof![Just("native"), Just("legacy"), Just("raw"), Just("websocket")],
            prefix_hello in any::<bool>(),
            reads in proptest::collection::vec((proptest::collection::vec(any::<u8>(), 0..64), 0u64..3000), 0..16),
        ) {
            let mut model = Model::new(cfg(proto, ""));
            let start = model.now;
            if prefix_hello && proto == "native" {
                model.read(&hello("p", b""));
            }
            if prefix_hello && proto == "websocket" {
                model.read(&ws_request("/?id=p", "http://page"));
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
