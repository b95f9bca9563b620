//! Connections that outlive the process: what the daemon keeps in systemd's
//! file descriptor store, and how it is named and encoded (issue 11,
//! docs/RESTARTS.md).
//!
//! Three kinds of fds are stored, told apart by their `FDNAME`:
//! - `hbstate`: one memfd, mapped shared ([`crate::systemd::SharedMap`]):
//!   a header (the loop's last round, the next session number) and one
//!   fixed [`RECORD`]-byte record per connection, at the connection's slot
//!   key. The loop writes it in place as connections come and go, as they
//!   go online and as heartbeats arrive; it is never written "at shutdown
//!   only", so a crash or a watchdog kill leaves it as current as the last
//!   round.
//! - `l-NAME`: a listener the daemon bound itself (one from socket
//!   activation stays the socket unit's).
//! - `cSESSION`: a client connection, stored at accept and removed
//!   (`FDSTOREREMOVE=1`) when it closes.
//!
//! Store messages go out on the non-blocking notify socket; one the socket
//! does not take (`EAGAIN`) waits in [`Keeper`]'s queue, in order, and is
//! retried at the end of the next round, so the loop never blocks on the
//! service manager.
//!
//! Invariants:
//! - A record is written before its connection's fd is sent to the store,
//!   and cleared before the fd is removed: a stored connection always has a
//!   record unless a crash tore that one record (its check then fails).
//! - A record names its session in its first 8 bytes (0 is an empty slot);
//!   the fields that change per heartbeat (last activity, heartbeat count)
//!   are 8-byte words outside the check, so writing them cannot tear it.
//! - Session numbers are never reused: the next number lives in the header
//!   and, under systemd, in a reserve file in `$STATE_DIRECTORY` that is
//!   always ahead of every number handed out ([`SessionReserve`]).
//! - The store never holds more connections than systemd 252 can hand
//!   back to the next process ([`Budget`]): past that, the next start
//!   fails and every connection is lost without an offline event.
//!   Connections past the budget are served but not kept; a restart ends
//!   them as a stop does.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::BorrowedFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use log::{debug, warn};

use crate::event::Logfmt;
use crate::session::Snapshot;
use crate::systemd::{self, Notifier, SharedMap};
use crate::trust::Auth;
use crate::wire::Protocol;

/// `FDNAME` of the state memfd.
pub const STATE_NAME: &str = "hbstate";

/// Bytes per connection record.
pub const RECORD: usize = 224;

/// The header takes the first record's room.
const HEADER: usize = RECORD;

/// First bytes of the state memfd, with its layout version.
const MAGIC: &[u8; 8] = b"HBSTATE1";

/// Longest listener name and HELLO id a record holds (both are capped at
/// 64 by the config and the protocol).
const NAME_MAX: usize = 64;

/// Sessions reserved in the state directory's file at a time: the file is
/// written once per this many accepts.
const RESERVE_BLOCK: u64 = 4096;

/// How many connections the store may hold so that systemd 252 can pass
/// them all to the next process. Two limits:
/// - the fd limit: systemd moves the passed fds to 3, 4, … in the new
///   process (`shift_fds()`, one `F_DUPFD` each), which fails with
///   `EMFILE` ("Failed to adjust passed file descriptors", `202/FDS`)
///   when no fd number is free above the one it wants. With n fds open
///   and a limit over 2n + the few it keeps for itself, one always is.
///   Seen in the container of `tests/systemd_e2e.rs`: 300 fds under
///   `LimitNOFILE=400`, and 19,502 under 20,000, failed; 10,000 under
///   20,000 passed, its layout being kinder than the worst case.
/// - `LISTEN_FDNAMES`: systemd joins every stored name with `:` into one
///   environment string, which `execve` refuses past 128 KiB
///   (`MAX_ARG_STRLEN`, `E2BIG`): some 18,000 `cSESSION` names with
///   5-digit sessions, 14,000 with 7. From
///   systemd's `build_environment()` and the kernel's limit; not seen
///   here, where the fd limit (20,000) binds first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Most connections kept.
    pub conns: usize,
    /// Bytes of their names, with one `:` each.
    pub name_bytes: usize,
}

/// `MAX_ARG_STRLEN` (32 pages) less `LISTEN_FDNAMES=`, its NUL, and room
/// for the names of the listeners, the state and a socket unit's fds.
const NAME_BYTES: usize = 32 * 4096 - 16 - 4096;

/// Fds the new process's start needs besides the passed ones (systemd's
/// own during the exec, and a margin).
const START_FDS: u64 = 64;

impl Budget {
    /// The budget under an fd limit of `soft` (`None`: unlimited), with
    /// `others` fds stored besides connections (listeners, the state).
    pub fn under(soft: Option<u64>, others: usize) -> Budget {
        let by_fds = soft.map_or(usize::MAX, |soft| {
            usize::try_from(soft.saturating_sub(START_FDS) / 2).unwrap_or(usize::MAX).saturating_sub(others)
        });
        Budget { conns: by_fds, name_bytes: NAME_BYTES }
    }
}

/// Bytes `conn_name(session)` adds to `LISTEN_FDNAMES`: `c`, the digits
/// and a `:`.
fn name_cost(session: u64) -> usize {
    session.checked_ilog10().map_or(1, |digits| digits as usize + 1) + 2
}

/// The `FDNAME` of a client connection.
pub fn conn_name(session: u64) -> String {
    format!("c{session}")
}

/// The `FDNAME` of a listener the daemon bound.
pub fn listener_name(name: &str) -> String {
    format!("l-{name}")
}

/// What a stored fd is, by its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// The state memfd.
    State,
    /// A listener, by its configured name.
    Listener(String),
    /// A client connection, by its session number.
    Conn(u64),
    /// Not one of ours (socket activation's, or unnamed).
    Other,
}

/// Tells a stored fd's kind from its `FDNAME`.
pub fn kind(fdname: &str) -> Kind {
    if fdname == STATE_NAME {
        return Kind::State;
    }
    if let Some(name) = fdname.strip_prefix("l-") {
        return Kind::Listener(name.to_owned());
    }
    match fdname.strip_prefix('c').and_then(|n| n.parse::<u64>().ok()) {
        Some(session) if session > 0 => Kind::Conn(session),
        _ => Kind::Other,
    }
}

/// One connection's record: everything the next process needs besides the
/// socket itself (whose peer address it asks the kernel for).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The session number (never 0).
    pub session: u64,
    /// The peer's address, for the offline event of a connection that did
    /// not come back.
    pub peer: SocketAddr,
    /// The listener's configured name.
    pub listener: String,
    /// The interval the client was last told (native), in ms.
    pub interval_ms: u32,
    /// The timeout the client was last told (native), in ms.
    pub timeout_ms: u32,
    /// The protocol state.
    pub state: Snapshot,
}

/// Converts between `Instant` and `CLOCK_MONOTONIC` microseconds, the
/// clock that outlives the process (it is per boot, like the store).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    at: Instant,
    usec: u64,
}

impl Clock {
    /// The two clocks read together now.
    pub fn now() -> Clock {
        Clock { at: Instant::now(), usec: systemd::monotonic_usec() }
    }

    /// `instant` as monotonic microseconds.
    pub fn usec(&self, instant: Instant) -> u64 {
        match instant.checked_duration_since(self.at) {
            Some(after) => self.usec.saturating_add(micros(after)),
            None => self.usec.saturating_sub(micros(self.at.duration_since(instant))),
        }
    }

    /// Monotonic microseconds as an `Instant` (never after `self`'s, for a
    /// stamp from before this process: clamped to the boot otherwise).
    pub fn instant(&self, usec: u64) -> Instant {
        if usec >= self.usec {
            return self.at + Duration::from_micros(usec - self.usec);
        }
        let back = Duration::from_micros(self.usec - usec);
        self.at.checked_sub(back).unwrap_or(self.at)
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn proto_byte(proto: Protocol) -> u8 {
    match proto {
        Protocol::Native => 0,
        Protocol::Legacy => 1,
        Protocol::Raw => 2,
        Protocol::WebSocket => 3,
    }
}

/// What a session proved, in bits 3..5 of the flags byte.
fn auth_bits(auth: Auth) -> u8 {
    match auth {
        Auth::Open => 0,
        Auth::Shared => 1,
        Auth::Id => 2,
    }
}

/// The inverse of [`auth_bits`]; an unknown value proves nothing.
fn auth_of(bits: u8) -> Auth {
    match bits & 3 {
        1 => Auth::Shared,
        2 => Auth::Id,
        _ => Auth::Open,
    }
}

fn proto_of(byte: u8) -> Option<Protocol> {
    match byte {
        0 => Some(Protocol::Native),
        1 => Some(Protocol::Legacy),
        2 => Some(Protocol::Raw),
        3 => Some(Protocol::WebSocket),
        _ => None,
    }
}

/// Where a record's check is.
const CHECK_AT: usize = 208;

/// FNV-1a over the record's fixed part: the session and bytes 24..208.
fn check(bytes: &[u8]) -> u64 {
    bytes[..8]
        .iter()
        .chain(&bytes[24..CHECK_AT])
        .fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// A socket address in 19 bytes: family (4 or 6), port, 16 address bytes.
fn encode_peer(peer: SocketAddr, out: &mut [u8]) {
    out[1..3].copy_from_slice(&peer.port().to_le_bytes());
    match peer.ip() {
        IpAddr::V4(ip) => {
            out[0] = 4;
            out[3..7].copy_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out[0] = 6;
            out[3..19].copy_from_slice(&ip.octets());
        }
    }
}

fn decode_peer(bytes: &[u8]) -> Option<SocketAddr> {
    let port = u16::from_le_bytes([bytes[1], bytes[2]]);
    let ip = match bytes[0] {
        4 => IpAddr::V4(Ipv4Addr::new(bytes[3], bytes[4], bytes[5], bytes[6])),
        6 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&bytes[3..19]);
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

fn word(bytes: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(w)
}

fn half(bytes: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(w)
}

impl Record {
    /// Writes the record into `out` (exactly [`RECORD`] bytes).
    pub fn encode(&self, clock: &Clock, out: &mut [u8]) {
        out.fill(0);
        let s = &self.state;
        out[0..8].copy_from_slice(&self.session.to_le_bytes());
        out[8..16].copy_from_slice(&clock.usec(s.last_activity).to_le_bytes());
        out[16..24].copy_from_slice(&s.heartbeats.to_le_bytes());
        out[24..32].copy_from_slice(&clock.usec(s.since).to_le_bytes());
        out[32..36].copy_from_slice(&s.grace_ms.to_le_bytes());
        out[36..40].copy_from_slice(&self.interval_ms.to_le_bytes());
        out[40..44].copy_from_slice(&self.timeout_ms.to_le_bytes());
        out[44] = proto_byte(s.proto);
        out[45] = u8::from(s.welcomed) | u8::from(s.probe) << 1 | u8::from(s.pinged) << 2 | auth_bits(s.auth) << 3;
        let name = &self.listener.as_bytes()[..self.listener.len().min(NAME_MAX)];
        let id = s.id.as_deref().map_or(&[][..], |id| &id.as_bytes()[..id.len().min(NAME_MAX)]);
        // Both fit a u8: NAME_MAX is 64. An id of 0 bytes is no id: a HELLO
        // id is never empty.
        out[46] = name.len() as u8;
        out[47] = id.len() as u8;
        out[48..48 + name.len()].copy_from_slice(name);
        out[112..112 + id.len()].copy_from_slice(id);
        encode_peer(self.peer, &mut out[176..195]);
        let sum = check(out);
        out[CHECK_AT..CHECK_AT + 8].copy_from_slice(&sum.to_le_bytes());
    }

    /// Reads a record; `None` for an empty slot or one whose check fails
    /// (torn by a crash, or not a record).
    pub fn decode(clock: &Clock, bytes: &[u8]) -> Option<Record> {
        let session = word(bytes, 0);
        if session == 0 || word(bytes, CHECK_AT) != check(bytes) {
            return None;
        }
        let proto = proto_of(bytes[44])?;
        let (name_len, id_len) = (usize::from(bytes[46]), usize::from(bytes[47]));
        if name_len > NAME_MAX || id_len > NAME_MAX {
            return None;
        }
        let listener = String::from_utf8(bytes[48..48 + name_len].to_vec()).ok()?;
        let id = match id_len {
            0 => None,
            n => Some(String::from_utf8(bytes[112..112 + n].to_vec()).ok()?),
        };
        let flags = bytes[45];
        Some(Record {
            session,
            peer: decode_peer(&bytes[176..195])?,
            listener,
            interval_ms: half(bytes, 36),
            timeout_ms: half(bytes, 40),
            state: Snapshot {
                proto,
                id,
                since: clock.instant(word(bytes, 24)),
                last_activity: clock.instant(word(bytes, 8)),
                heartbeats: word(bytes, 16),
                welcomed: flags & 1 != 0,
                probe: flags & 2 != 0,
                pinged: flags & 4 != 0,
                grace_ms: half(bytes, 32),
                auth: auth_of(flags >> 3),
            },
        })
    }
}

/// What the previous process left in the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Its loop's last round (monotonic µs): the restart's stall starts here.
    pub alive_at: u64,
    /// The next session number it would have given.
    pub next_session: u64,
    /// The id of its newest `/events` event.
    pub last_event_id: u64,
}

/// A message for the store that the notify socket has not taken yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Store the connection in slot `key`, if it still has `session`.
    Conn { key: usize, session: u64 },
    /// Store the listener in slot `key`, if it is still named `name`.
    Listener { key: usize, name: String },
    /// Remove every fd of this name.
    Remove(String),
}

/// The daemon's side of the store: the state memfd and the queue of store
/// messages not sent yet.
pub struct Keeper {
    map: SharedMap,
    /// Records the memfd holds (slot keys `0..capacity`).
    capacity: usize,
    clock: Clock,
    pending: VecDeque<Op>,
    /// The memfd itself is in the store (its FDSTORE was taken).
    state_stored: bool,
    /// What the store may hold ([`Budget`]).
    budget: Budget,
    /// Connections recorded (and so stored, or queued to be).
    kept: usize,
    /// Bytes their names take in `LISTEN_FDNAMES`.
    name_bytes: usize,
    /// A connection was not kept (past the budget or the memfd); said once.
    warned_capacity: bool,
    /// A retry timer is armed for the queue.
    retry_armed: bool,
    /// The process handed its connections over to the next one: it only
    /// exits now.
    handed_over: bool,
}

impl Keeper {
    /// A keeper for `capacity` connections within `budget`: the memfd the
    /// previous process left (`kept`, when its size fits), else a new one.
    pub fn new(capacity: usize, budget: Budget, kept: Option<SharedMap>) -> io::Result<Keeper> {
        let len = HEADER + capacity.saturating_mul(RECORD);
        let (map, state_stored) = match kept {
            Some(map) if map.bytes().len() >= HEADER && &map.bytes()[..8] == MAGIC => (map, true),
            _ => (SharedMap::create(STATE_NAME, len)?, false),
        };
        let capacity = (map.bytes().len() - HEADER) / RECORD;
        let mut keeper = Keeper {
            map,
            capacity,
            clock: Clock::now(),
            pending: VecDeque::new(),
            state_stored,
            budget,
            kept: 0,
            name_bytes: 0,
            warned_capacity: false,
            retry_armed: false,
            handed_over: false,
        };
        keeper.map.bytes_mut()[..8].copy_from_slice(MAGIC);
        keeper.map.bytes_mut()[8..16].copy_from_slice(&(capacity as u64).to_le_bytes());
        Ok(keeper)
    }

    /// The two clocks of this process.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The header as the previous process left it.
    pub fn header(&self) -> Header {
        let bytes = self.map.bytes();
        Header { alive_at: word(bytes, 16), next_session: word(bytes, 24), last_event_id: word(bytes, 32) }
    }

    /// Every valid record, with its slot key in the previous process.
    pub fn records(&self) -> Vec<Record> {
        self.map.bytes()[HEADER..].chunks_exact(RECORD).filter_map(|bytes| Record::decode(&self.clock, bytes)).collect()
    }

    /// True when any record is valid: the previous process kept connections.
    pub fn has_records(&self) -> bool {
        self.map.bytes()[HEADER..].chunks_exact(RECORD).any(|bytes| Record::decode(&self.clock, bytes).is_some())
    }

    /// Empties every record slot, before the restored connections are
    /// written at their new keys.
    pub fn clear_records(&mut self) {
        self.map.bytes_mut()[HEADER..].fill(0);
        self.kept = 0;
        self.name_bytes = 0;
    }

    /// Marks the loop alive at `now` (each round).
    pub fn alive(&mut self, now: Instant) {
        let usec = self.clock.usec(now);
        self.map.bytes_mut()[16..24].copy_from_slice(&usec.to_le_bytes());
    }

    /// Records the id of the newest `/events` event.
    pub fn set_last_event_id(&mut self, id: u64) {
        self.map.bytes_mut()[32..40].copy_from_slice(&id.to_le_bytes());
    }

    /// Records the next session number the daemon will give.
    pub fn set_next_session(&mut self, next: u64) {
        self.map.bytes_mut()[24..32].copy_from_slice(&next.to_le_bytes());
    }

    fn slot(&mut self, key: usize) -> Option<&mut [u8]> {
        let at = HEADER + key.checked_mul(RECORD)?;
        self.map.bytes_mut().get_mut(at..at + RECORD)
    }

    /// True when slot `key` holds `session`'s record: the connection is
    /// kept.
    pub fn holds(&self, key: usize, session: u64) -> bool {
        let at = HEADER + key.saturating_mul(RECORD);
        self.map.bytes().get(at..at + RECORD).is_some_and(|bytes| word(bytes, 0) == session)
    }

    /// A new connection in slot `key`: records it and counts it, true when
    /// it is to be stored; false (said once, as `keep-capacity-exceeded`)
    /// when it is past the memfd or the [`Budget`]: it is served but not
    /// kept.
    pub fn admit(&mut self, key: usize, record: &Record) -> bool {
        let cost = name_cost(record.session);
        let refused = if key >= self.capacity {
            Some("max_clients was raised by a reload: connections past the start's max_clients are not kept across a restart until the next start")
        } else if self.kept >= self.budget.conns {
            Some("systemd could not pass more fds back under the fd limit (LimitNOFILE=): raise it to over twice the clients kept")
        } else if self.name_bytes + cost > self.budget.name_bytes {
            Some("systemd 252 passes at most 128 KiB of fd names (LISTEN_FDNAMES)")
        } else {
            None
        };
        if let Some(reason) = refused {
            if !self.warned_capacity {
                self.warned_capacity = true;
                warn!(
                    "keep-capacity-exceeded kept={} reason={} detail=\"the connections past it are ended at a restart \
                     as at a stop\"",
                    self.kept,
                    Logfmt(reason)
                );
            }
            return false;
        }
        self.adopt(key, record);
        true
    }

    /// A connection the store already holds (restored) in slot `key`:
    /// records and counts it, whatever the budget.
    pub fn adopt(&mut self, key: usize, record: &Record) {
        let clock = self.clock;
        if let Some(bytes) = self.slot(key) {
            record.encode(&clock, bytes);
            self.kept += 1;
            self.name_bytes += name_cost(record.session);
        }
    }

    /// Rewrites the record of a kept connection in slot `key`; nothing for
    /// one that is not kept.
    pub fn save(&mut self, key: usize, record: &Record) {
        if !self.holds(key, record.session) {
            return;
        }
        let clock = self.clock;
        if let Some(bytes) = self.slot(key) {
            record.encode(&clock, bytes);
        }
    }

    /// Updates the per-heartbeat words of slot `key`: two 8-byte stores.
    pub fn touch(&mut self, key: usize, session: u64, last_activity: Instant, heartbeats: u64) {
        if !self.holds(key, session) {
            return;
        }
        let usec = self.clock.usec(last_activity);
        if let Some(bytes) = self.slot(key) {
            bytes[8..16].copy_from_slice(&usec.to_le_bytes());
            bytes[16..24].copy_from_slice(&heartbeats.to_le_bytes());
        }
    }

    /// Empties slot `key` if it holds `session`.
    pub fn clear(&mut self, key: usize, session: u64) {
        if !self.holds(key, session) {
            return;
        }
        if let Some(bytes) = self.slot(key) {
            bytes.fill(0);
        }
        self.kept = self.kept.saturating_sub(1);
        self.name_bytes = self.name_bytes.saturating_sub(name_cost(session));
    }

    /// Queues a store message; sends it now when nothing waits before it.
    /// `fd_of` finds the fd an [`Op`] names (or `None` when it is gone).
    pub fn push<'a>(&mut self, op: Op, notifier: &Notifier, fd_of: impl Fn(&Op) -> Option<BorrowedFd<'a>>) {
        self.pending.push_back(op);
        if self.pending.len() == 1 {
            self.flush(notifier, fd_of);
        }
    }

    /// Forgets a queued store of `session` that was not sent yet; true when
    /// there was one (then no removal is needed either).
    pub fn unqueue_conn(&mut self, session: u64) -> bool {
        let before = self.pending.len();
        self.pending.retain(|op| !matches!(op, Op::Conn { session: s, .. } if *s == session));
        self.pending.len() != before
    }

    /// True when a retry timer should be armed: messages wait and none is.
    /// Marks it armed.
    pub fn wants_retry(&mut self) -> bool {
        let wants = self.has_pending() && !self.retry_armed;
        self.retry_armed |= wants;
        wants
    }

    /// The retry timer fired.
    pub fn retry_fired(&mut self) {
        self.retry_armed = false;
    }

    /// The connections were handed over to the next process.
    pub fn set_handed_over(&mut self) {
        self.handed_over = true;
    }

    /// True once the connections were handed over.
    pub fn handed_over(&self) -> bool {
        self.handed_over
    }

    /// True while store messages wait for the notify socket.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty() || !self.state_stored
    }

    /// Sends queued messages in order until the socket is full.
    pub fn flush<'a>(&mut self, notifier: &Notifier, fd_of: impl Fn(&Op) -> Option<BorrowedFd<'a>>) {
        if !self.state_stored {
            match notifier.store_fd(STATE_NAME, self.map.fd()) {
                Ok(()) => self.state_stored = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    warn!("keep-failed fd={STATE_NAME} error={e}");
                    self.state_stored = true;
                }
            }
        }
        while let Some(op) = self.pending.front() {
            let sent = match op {
                Op::Conn { session, .. } => {
                    fd_of(op).map(|fd| (conn_name(*session), notifier.store_fd(&conn_name(*session), fd)))
                }
                Op::Listener { name, .. } => {
                    fd_of(op).map(|fd| (listener_name(name), notifier.store_fd(&listener_name(name), fd)))
                }
                Op::Remove(name) => Some((name.clone(), notifier.remove_fd(name))),
            };
            match sent {
                Some((_, Err(e))) if e.kind() == io::ErrorKind::WouldBlock => return,
                Some((name, Err(e))) => debug!("keep-failed fd={name} error={e}"),
                Some((_, Ok(()))) | None => {}
            }
            self.pending.pop_front();
        }
    }

    /// Sends everything still queued, waiting for the socket up to
    /// `within`: the process is about to end and leave its connections in
    /// the store. Returns how many messages could not be sent.
    pub fn flush_before_exit<'a>(
        &mut self,
        notifier: &Notifier,
        within: Duration,
        fd_of: impl Fn(&Op) -> Option<BorrowedFd<'a>>,
    ) -> usize {
        let until = Instant::now() + within;
        loop {
            self.flush(notifier, &fd_of);
            if !self.has_pending() || Instant::now() >= until {
                return self.pending.len() + usize::from(!self.state_stored);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Session numbers unique over the installation's life: the next number
/// is reserved in `$STATE_DIRECTORY/sessions` a block ahead, so a process
/// that ends any way (a crash too) leaves a number above all it gave.
pub struct SessionReserve {
    path: PathBuf,
    /// Numbers below this are covered by the file.
    ceiling: u64,
}

impl SessionReserve {
    /// The reserve under systemd's `StateDirectory=`, and the first number
    /// it allows; `None` without a state directory.
    pub fn open() -> Option<(SessionReserve, u64)> {
        let dirs = std::env::var_os("STATE_DIRECTORY")?;
        let dirs = dirs.to_str()?;
        let dir = PathBuf::from(dirs.split(':').next()?);
        if dir.as_os_str().is_empty() {
            return None;
        }
        let path = dir.join("sessions");
        let first = match std::fs::read_to_string(&path) {
            Ok(text) => text.trim().parse::<u64>().unwrap_or(1).max(1),
            Err(_) => 1,
        };
        Some((SessionReserve { path, ceiling: first }, first))
    }

    /// Makes sure `session` is covered by the file; writes it when not (once
    /// per [`RESERVE_BLOCK`] sessions).
    pub fn cover(&mut self, session: u64) {
        if session < self.ceiling {
            return;
        }
        let ceiling = session.saturating_add(RESERVE_BLOCK);
        let tmp = self.path.with_extension("tmp");
        let written = std::fs::write(&tmp, format!("{ceiling}\n")).and_then(|()| std::fs::rename(&tmp, &self.path));
        match written {
            Ok(()) => self.ceiling = ceiling,
            Err(e) => {
                // Numbers keep rising in this process; only a restart after
                // this could reuse some. Said once per block.
                warn!("session-reserve-failed path={} error={e}", self.path.display());
                self.ceiling = ceiling;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(clock: &Clock) -> Record {
        let now = clock.instant(clock.usec);
        Record {
            session: 1_234_567,
            peer: "[::1]:4242".parse().expect("peer"),
            listener: "main".into(),
            interval_ms: 3000,
            timeout_ms: 15000,
            state: Snapshot {
                proto: Protocol::Native,
                id: Some("agent-7".into()),
                since: now - Duration::from_secs(60),
                last_activity: now - Duration::from_millis(1500),
                heartbeats: 42,
                welcomed: true,
                probe: false,
                pinged: true,
                grace_ms: 7,
                auth: Auth::Id,
            },
        }
    }

    #[test]
    fn a_record_reads_back_as_written() {
        let clock = Clock::now();
        let r = record(&clock);
        let mut bytes = [0u8; RECORD];
        r.encode(&clock, &mut bytes);
        let back = Record::decode(&clock, &bytes).expect("decodes");
        // Instants survive to the microsecond.
        let close = |a: Instant, b: Instant| a.max(b) - a.min(b) < Duration::from_micros(2);
        assert!(close(back.state.since, r.state.since) && close(back.state.last_activity, r.state.last_activity));
        let same = Record {
            state: Snapshot { since: r.state.since, last_activity: r.state.last_activity, ..back.state.clone() },
            ..back
        };
        assert_eq!(same, r);
    }

    #[test]
    fn a_torn_or_empty_record_is_none_but_heartbeat_words_are_outside_the_check() {
        let clock = Clock::now();
        let mut bytes = [0u8; RECORD];
        assert_eq!(Record::decode(&clock, &bytes), None);
        record(&clock).encode(&clock, &mut bytes);
        bytes[8..24].fill(0xff);
        assert!(Record::decode(&clock, &bytes).is_some(), "touch words may change freely");
        bytes[50] ^= 1;
        assert_eq!(Record::decode(&clock, &bytes), None, "a flipped name byte fails the check");
    }

    #[test]
    fn names_say_what_was_stored() {
        assert_eq!(kind(STATE_NAME), Kind::State);
        assert_eq!(kind(&listener_name("main")), Kind::Listener("main".into()));
        assert_eq!(kind(&conn_name(99)), Kind::Conn(99));
        for other in ["main", "stored", "c", "c0", "cx1", ""] {
            assert_eq!(kind(other), Kind::Other, "{other:?}");
        }
    }

    #[test]
    fn the_clock_converts_both_ways() {
        let clock = Clock::now();
        let earlier = clock.at - Duration::from_millis(250);
        assert_eq!(clock.usec(earlier), clock.usec - 250_000);
        assert_eq!(clock.instant(clock.usec - 250_000), earlier);
        assert_eq!(clock.instant(clock.usec + 5), clock.at + Duration::from_micros(5));
    }

    fn unlimited() -> Budget {
        Budget::under(None, 0)
    }

    #[test]
    fn the_keeper_keeps_records_in_a_memfd_a_new_keeper_reads() {
        let mut keeper = Keeper::new(8, unlimited(), None).expect("keeper");
        let clock = *keeper.clock();
        let r = record(&clock);
        assert!(keeper.admit(3, &r));
        assert!(!keeper.admit(8, &r), "past the capacity");
        keeper.touch(3, r.session, r.state.last_activity + Duration::from_secs(1), 43);
        keeper.touch(3, 999, r.state.last_activity, 0);
        keeper.set_next_session(77);
        keeper.alive(clock.at);
        let dup = keeper.map.fd().try_clone_to_owned().expect("dup");
        drop(keeper);
        let again = Keeper::new(8, unlimited(), Some(SharedMap::open(dup).expect("map"))).expect("keeper");
        assert_eq!(again.header(), Header { alive_at: clock.usec, next_session: 77, last_event_id: 0 });
        let records = again.records();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].state.heartbeats, 43);
        assert_eq!(records[0].session, r.session);
    }

    #[test]
    fn the_budget_leaves_systemd_room_to_hand_every_fd_back() {
        // Twice the fds passed, plus what the start needs, under the limit.
        assert_eq!(Budget::under(Some(400), 3).conns, 165);
        assert_eq!(Budget::under(Some(20_000), 2).conns, 9_966);
        assert_eq!(Budget::under(Some(524_288), 2).conns, 262_110);
        assert_eq!(Budget::under(Some(10), 2).conns, 0);
        assert_eq!(Budget::under(None, 2).conns, usize::MAX);
        // `c`, the digits, `:`.
        assert_eq!((name_cost(0), name_cost(9), name_cost(10), name_cost(1_234_567)), (3, 3, 4, 9));
        assert_eq!(conn_name(1_234_567).len() + 1, name_cost(1_234_567));
    }

    #[test]
    fn connections_past_the_budget_are_served_but_not_kept_and_a_closed_one_frees_its_room() {
        let budget = Budget { conns: 2, name_bytes: usize::MAX };
        let mut keeper = Keeper::new(8, budget, None).expect("keeper");
        let clock = *keeper.clock();
        let with = |session| Record { session, ..record(&clock) };
        assert!(keeper.admit(0, &with(10)));
        assert!(keeper.admit(1, &with(11)));
        assert!(!keeper.admit(2, &with(12)), "past the budget");
        assert!(keeper.holds(0, 10) && keeper.holds(1, 11) && !keeper.holds(2, 12));
        // A rewrite of one not kept does not keep it.
        keeper.save(2, &with(12));
        assert!(!keeper.holds(2, 12));
        keeper.clear(2, 12);
        keeper.clear(0, 10);
        assert!(!keeper.holds(0, 10));
        assert!(keeper.admit(2, &with(12)), "the closed one's room");
        assert_eq!(keeper.records().len(), 2);
        // Restored connections are in the store already: counted whatever
        // the budget.
        keeper.adopt(3, &with(13));
        assert!(keeper.holds(3, 13));
        keeper.clear(1, 11);
        assert!(!keeper.admit(4, &with(14)), "three kept, budget two: no room yet");
    }

    #[test]
    fn the_names_budget_counts_each_name_and_its_colon() {
        let budget = Budget { conns: usize::MAX, name_bytes: 3 + 4 };
        let mut keeper = Keeper::new(8, budget, None).expect("keeper");
        let clock = *keeper.clock();
        let with = |session| Record { session, ..record(&clock) };
        assert!(keeper.admit(0, &with(7)), "c7: 3 bytes");
        assert!(!keeper.admit(1, &with(100)), "c100: 5 more bytes, 8 > 7");
        assert!(keeper.admit(1, &with(42)), "c42: 4 more bytes, 7");
        keeper.clear(0, 7);
        assert!(keeper.admit(0, &with(8)));
    }

    #[test]
    fn queued_messages_wait_in_order_and_a_closed_connection_leaves_the_queue() {
        let mut keeper = Keeper::new(4, unlimited(), None).expect("keeper");
        let notifier = Notifier::from_env();
        keeper.pending.push_back(Op::Conn { key: 0, session: 5 });
        keeper.pending.push_back(Op::Remove(conn_name(4)));
        assert!(keeper.unqueue_conn(5));
        assert!(!keeper.unqueue_conn(5));
        assert_eq!(keeper.pending, VecDeque::from([Op::Remove(conn_name(4))]));
        // Without a service manager every message "goes" at once.
        keeper.flush(&notifier, |_| None);
        assert!(!keeper.has_pending());
    }
}
