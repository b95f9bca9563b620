//! The sans-I/O session (`session.rs`) driven as the loop drives it, for
//! every protocol: arbitrary bytes (and well-formed frames, so the fuzzer
//! gets past HELLO) in arbitrary reads, time passing, timers firing early
//! and late, and reloads that change the timing.
//!
//! The input is read with `arbitrary::Unstructured`: the protocol (any of
//! `Protocol::ALL`, so a new protocol is fuzzed as soon as it exists), the
//! listener options its config allows, then operations until the input
//! runs out.
//!
//! Invariants asserted:
//! - `ingest` uses at most the bytes it is given; `Continue` uses all;
//! - `Hello(id)` comes only before online, with `id()` set; `welcome` puts
//!   it online, a probe never; at most one online per session, and an
//!   online session stays online until it is closed;
//! - legacy and raw sessions are online from creation;
//! - `heartbeats` and `last_activity` never go back, nor past now;
//! - a timer that fires at or after `next_deadline` either closes the
//!   session or moves the deadline past now (else the loop would spin); an
//!   early `on_timer` does nothing and writes nothing;
//! - `overdue` agrees with what `on_timer` does;
//! - what a native session writes is a sequence of whole, valid
//!   server-to-client frames, and an ERROR is the last of them; a
//!   websocket session writes at most one HTTP response head, then only
//!   whole, unmasked control frames (Ping, Pong, Close), a Close last; a legacy
//!   session writes only heartbeat echoes; a raw session echoes exactly
//!   the bytes it was given (with `echo`) or nothing.
#![no_main]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use heartbeatd::config::{self, ListenerConfig};
use heartbeatd::session::{Next, Session};
use heartbeatd::wire::native::{self, Frame};
use heartbeatd::wire::{legacy, Protocol};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

/// One listener of each protocol, through the real config parser, parsed
/// once: the fuzzer then varies the options the config allows.
fn base(proto: Protocol) -> Option<ListenerConfig> {
    static BASES: OnceLock<Vec<Option<ListenerConfig>>> = OnceLock::new();
    let bases = BASES.get_or_init(|| {
        Protocol::ALL
            .iter()
            .map(|p| {
                let text = format!("[[listener]]\nname = \"f\"\naddress = \"127.0.0.1:0\"\nprotocol = \"{p}\"\n");
                config::parse(&text, "fuzz.toml", Path::new("/nonexistent")).ok().map(|mut c| c.listeners.remove(0))
            })
            .collect()
    });
    let i = Protocol::ALL.iter().position(|p| *p == proto)?;
    bases.get(i).cloned().flatten()
}

/// Milliseconds in `range` as a duration.
fn ms(u: &mut Unstructured<'_>, range: std::ops::RangeInclusive<u64>) -> Result<Duration> {
    Ok(Duration::from_millis(u.int_in_range(range)?))
}

/// Up to `range` bytes of the input (fewer where it runs out).
fn bytes_upto<'a>(u: &mut Unstructured<'a>, range: std::ops::RangeInclusive<usize>) -> Result<&'a [u8]> {
    let n = u.int_in_range(range)?;
    u.bytes(n.min(u.len()))
}

/// The listener's options, within what validation admits.
fn listener(u: &mut Unstructured<'_>) -> Result<Option<ListenerConfig>> {
    let proto = *u.choose(&Protocol::ALL)?;
    let Some(mut cfg) = base(proto) else { return Ok(None) };
    cfg.interval = ms(u, 1..=5_000)?;
    cfg.timeout = cfg.interval * u.int_in_range(1..=5)?;
    match proto {
        Protocol::Native => {
            cfg.handshake_timeout = ms(u, 1..=5_000)?;
            cfg.server_ping = u.arbitrary()?;
            cfg.max_frame = u.int_in_range(131..=65_535)?;
            cfg.tokens.clear();
            for _ in 0..u.int_in_range(0..=3)? {
                let token = bytes_upto(u, 1..=8)?;
                if !token.is_empty() {
                    cfg.tokens.push(token.to_vec());
                }
            }
        }
        Protocol::Legacy => {
            cfg.echo = u.arbitrary()?;
            cfg.max_frame = u.int_in_range(0..=1024)?;
        }
        Protocol::Raw => {
            cfg.echo = u.arbitrary()?;
            if u.arbitrary()? {
                cfg.timeout = Duration::ZERO;
            }
        }
        Protocol::WebSocket => {
            cfg.handshake_timeout = ms(u, 1..=5_000)?;
            cfg.max_frame = u.int_in_range(0..=4096)?;
            cfg.tokens.clear();
            if u.arbitrary()? {
                cfg.tokens.push(b"s3cret".to_vec());
            }
            if u.arbitrary()? {
                cfg.path = Some("/hb".into());
            }
            if u.arbitrary()? {
                cfg.allowed_origins = vec!["http://good".into()];
            }
        }
    }
    Ok(Some(cfg))
}

/// A well-formed native frame from the client's side, some of them wrong
/// at this point of the conversation (a second HELLO, a WELCOME).
fn native_frame(u: &mut Unstructured<'_>, cfg: &ListenerConfig, out: &mut Vec<u8>) -> Result<()> {
    const ID_BYTES: &[u8] = b"abcxyz019-_.:!~";
    let mut id = String::new();
    for _ in 0..u.int_in_range(1..=native::MAX_ID_LEN)? {
        id.push(char::from(*u.choose(ID_BYTES)?));
    }
    let token = match (u.arbitrary::<bool>()?, cfg.tokens.is_empty()) {
        (true, false) => u.choose(&cfg.tokens)?.clone(),
        _ => bytes_upto(u, 0..=8)?.to_vec(),
    };
    let payload = bytes_upto(u, 0..=native::MAX_PING_PAYLOAD)?;
    let text = String::from_utf8_lossy(payload);
    let frame = match u.int_in_range(0..=6)? {
        0 | 1 => Frame::Hello { version: native::VERSION, id: &id, token: &token, probe: false },
        2 => Frame::Hello { version: native::VERSION, id: &id, token: &token, probe: true },
        3 => Frame::Ping(payload),
        4 => Frame::Pong(payload),
        5 => Frame::Bye(&text),
        _ => Frame::Welcome { interval_ms: 1, timeout_ms: 2, session: 3 },
    };
    native::encode(&frame, out);
    Ok(())
}

/// A WebSocket upgrade request, mostly well-formed (so the fuzzer gets
/// past it), sometimes with the wrong path, origin or token.
fn websocket_request(u: &mut Unstructured<'_>, out: &mut Vec<u8>) -> Result<()> {
    let path = *u.choose(&["/hb", "/", "/other"])?;
    let origin = *u.choose(&["http://good", "http://evil", ""])?;
    let token = *u.choose(&["", "&token=s3cret", "&token=wrong"])?;
    let id = *u.choose(&["id=dev-1", "id=", "id=a%20b", "x=1"])?;
    out.extend_from_slice(format!("GET {path}?{id}{token} HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n").as_bytes());
    out.extend_from_slice(b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n");
    out.extend_from_slice(b"Sec-WebSocket-Version: 13\r\n");
    if !origin.is_empty() {
        out.extend_from_slice(format!("Origin: {origin}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    Ok(())
}

/// A client WebSocket frame, masked (or, sometimes, not): any opcode, a
/// short payload.
fn websocket_frame(u: &mut Unstructured<'_>, out: &mut Vec<u8>) -> Result<()> {
    let first: u8 = u.arbitrary()?;
    let payload = bytes_upto(u, 0..=32)?;
    let masked: bool = u.arbitrary()?;
    out.push(first);
    out.push(u8::from(masked) << 7 | u8::try_from(payload.len()).unwrap_or(0));
    let mask: [u8; 4] = u.arbitrary()?;
    if masked {
        out.extend_from_slice(&mask);
    }
    out.extend(payload.iter().enumerate().map(|(i, b)| if masked { b ^ mask[i % 4] } else { *b }));
    Ok(())
}

/// A legacy frame: a valid header and its payload.
fn legacy_frame(u: &mut Unstructured<'_>, out: &mut Vec<u8>) -> Result<()> {
    let kind: i32 = u.int_in_range(0..=1)?;
    let payload = bytes_upto(u, 0..=16)?;
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&i32::try_from(payload.len()).unwrap_or(0).to_le_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// The loop, modelled: a session, its clock, and what it has said.
struct Model {
    session: Session,
    cfg: ListenerConfig,
    now: Instant,
    /// Every byte the session wrote.
    replies: Vec<u8>,
    /// Every byte the session was given (for raw's echo).
    given: Vec<u8>,
    onlines: u32,
    closed: bool,
    heartbeats: u64,
    last_activity: Instant,
}

impl Model {
    fn new(cfg: ListenerConfig, now: Instant) -> Model {
        let session = Session::accepted(cfg.protocol, SocketAddr::from(([192, 0, 2, 1], 4000)), now);
        let online = session.is_online();
        assert_eq!(online, Session::online_at_accept(cfg.protocol));
        let last_activity = session.last_activity();
        Model {
            session,
            cfg,
            now,
            replies: Vec::new(),
            given: Vec::new(),
            onlines: u32::from(online),
            closed: false,
            heartbeats: 0,
            last_activity,
        }
    }

    /// One read of `data`, handled as `server` does.
    fn read(&mut self, mut data: &[u8]) {
        while !self.closed {
            let was_online = self.session.is_online();
            let (next, used) = self.session.ingest(data, self.now, &self.cfg, &mut self.replies);
            assert!(used <= data.len(), "used {used} of {}", data.len());
            self.given.extend_from_slice(&data[..used]);
            data = &data[used..];
            self.check();
            match next {
                Next::Continue => {
                    assert!(data.is_empty(), "Continue left {} bytes unused", data.len());
                    return;
                }
                Next::Hello(id) => {
                    assert!(!was_online && !self.session.is_online(), "HELLO while online");
                    assert_eq!(self.session.id(), Some(&id));
                    self.session.welcome(self.now, 7, &self.cfg, &mut self.replies);
                    assert!(self.session.is_online(), "welcome did not put {id} online");
                    self.onlines += 1;
                }
                Next::Probe => {
                    assert!(!was_online);
                    self.session.welcome(self.now, 7, &self.cfg, &mut self.replies);
                    assert!(self.session.is_probe() && !self.session.is_online());
                }
                Next::Close(..) => self.closed = true,
            }
            assert!(self.onlines <= 1, "online twice");
            assert!(!was_online || self.session.is_online(), "left online without a close");
        }
    }

    /// Time passes to `at`; the timer fires if a deadline is due, as often
    /// as the loop would fire it.
    fn advance(&mut self, at: Instant) {
        self.now = at;
        while !self.closed {
            let Some(deadline) = self.session.next_deadline(&self.cfg) else { return };
            if deadline > at {
                return;
            }
            let overdue = self.session.overdue(at, &self.cfg);
            let was_online = self.session.is_online();
            match self.session.on_timer(at, &self.cfg, &mut self.replies) {
                Next::Continue => {
                    assert!(!overdue, "overdue at {at:?} but not closed");
                    assert!(self.session.is_online() == was_online);
                    let after = self.session.next_deadline(&self.cfg);
                    assert!(after.is_none_or(|d| d > at), "timer at {at:?} left the deadline at {after:?}");
                }
                Next::Close(..) => {
                    assert!(overdue, "closed by a timer while not overdue");
                    self.closed = true;
                }
                other => panic!("on_timer returned {other:?}"),
            }
            self.check();
        }
    }

    /// `on_timer` before the deadline: nothing happens.
    fn early_timer(&mut self) {
        if self.closed {
            return;
        }
        let Some(deadline) = self.session.next_deadline(&self.cfg) else { return };
        if self.now >= deadline {
            return;
        }
        let before = self.replies.len();
        assert_eq!(self.session.on_timer(self.now, &self.cfg, &mut self.replies), Next::Continue);
        assert_eq!(self.replies.len(), before, "an early timer wrote");
        assert_eq!(self.session.next_deadline(&self.cfg), Some(deadline));
    }

    /// A reload that changed the listener's timing.
    fn reload(&mut self) {
        if self.closed {
            return;
        }
        self.session.timing_changed(self.now);
        self.session.rewelcome(8, &self.cfg, &mut self.replies);
        assert!(self.session.silence_from() >= self.session.last_activity());
        self.check();
    }

    /// Counters move only forward.
    fn check(&mut self) {
        let heartbeats = self.session.heartbeats();
        let last = self.session.last_activity();
        assert!(heartbeats >= self.heartbeats, "heartbeats went back");
        assert!(last >= self.last_activity && last <= self.now, "last_activity {last:?} out of order");
        self.heartbeats = heartbeats;
        self.last_activity = last;
    }

    /// What the session wrote is what its protocol may write.
    fn check_replies(&self) {
        match self.cfg.protocol {
            Protocol::Native => {
                let mut rest = self.replies.as_slice();
                while !rest.is_empty() {
                    let (frame, used) = match native::decode(rest, usize::from(u16::MAX)) {
                        Ok(Some(decoded)) => decoded,
                        other => panic!("reply bytes are no frame: {other:?}"),
                    };
                    rest = &rest[used..];
                    match frame {
                        Frame::Welcome { .. } | Frame::Pong(_) | Frame::Ping(b"") | Frame::Bye("shutdown") => {}
                        Frame::Error { .. } => assert!(rest.is_empty(), "a frame after an ERROR"),
                        other => panic!("the daemon sent {other:?}"),
                    }
                }
            }
            Protocol::Legacy => {
                assert!(self.cfg.echo || self.replies.is_empty());
                assert_eq!(self.replies.len() % legacy::HEADER_LEN, 0);
                assert!(self.replies.iter().all(|&b| b == 0), "legacy output other than echoes");
            }
            Protocol::Raw => {
                let expected: &[u8] = if self.cfg.echo { &self.given } else { &[] };
                assert!(self.replies == expected, "raw output is not the echo of the input");
            }
            Protocol::WebSocket => {
                let mut rest = self.replies.as_slice();
                if rest.starts_with(b"HTTP/1.1 ") {
                    let end = rest.windows(4).position(|w| w == b"\r\n\r\n").expect("a whole response head");
                    let head = &rest[..end];
                    rest = &rest[end + 4..];
                    if !head.starts_with(b"HTTP/1.1 101 ") {
                        // A refusal: its body, then nothing.
                        assert!(!self.session.is_online(), "online after a refusal");
                        return;
                    }
                }
                while !rest.is_empty() {
                    assert!(rest.len() >= 2, "a torn frame header");
                    let (op, len) = (rest[0], usize::from(rest[1]));
                    assert!(matches!(op, 0x89 | 0x8A | 0x88), "the daemon sent opcode {op:#x}");
                    assert!(len <= 125, "an unmasked control frame of {len} bytes");
                    assert!(rest.len() >= 2 + len, "a torn frame");
                    rest = &rest[2 + len..];
                    if op == 0x88 {
                        assert!(rest.is_empty(), "a frame after a Close");
                    }
                }
            }
        }
    }
}

fn run(u: &mut Unstructured<'_>) -> Result<()> {
    let Some(cfg) = listener(u)? else { return Ok(()) };
    let start = Instant::now();
    let mut model = Model::new(cfg, start);
    let mut pending = Vec::new();
    while !u.is_empty() && !model.closed {
        match u.int_in_range(0..=7)? {
            0 => pending.extend_from_slice(bytes_upto(u, 0..=32)?),
            1 | 2 => native_frame(u, &model.cfg, &mut pending)?,
            3 => match model.cfg.protocol {
                Protocol::WebSocket if u.arbitrary()? => websocket_request(u, &mut pending)?,
                Protocol::WebSocket => websocket_frame(u, &mut pending)?,
                _ => legacy_frame(u, &mut pending)?,
            },
            4 => {
                // Everything pending, in reads of arbitrary sizes.
                let size = usize::from(u.int_in_range(1..=64u8)?);
                for piece in pending.chunks(size) {
                    model.read(piece);
                }
                pending.clear();
            }
            5 => {
                let at = model.now + ms(u, 0..=12_000)?;
                model.advance(at);
            }
            6 => model.early_timer(),
            _ => model.reload(),
        }
    }
    model.read(&pending);
    if !model.closed {
        model.session.shutdown(&mut model.replies);
    }
    model.check_replies();
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
