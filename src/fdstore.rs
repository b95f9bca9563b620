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

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::BorrowedFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use log::{debug, warn};

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
    /// A connection beyond `capacity` was not kept; said once.
    warned_capacity: bool,
    /// A retry timer is armed for the queue.
    retry_armed: bool,
    /// The process handed its connections over to the next one: it only
    /// exits now.
    handed_over: bool,
}

impl Keeper {
    /// A keeper for `capacity` connections: the memfd the previous process
    /// left (`kept`, when its size fits), else a new one.
    pub fn new(capacity: usize, kept: Option<SharedMap>) -> io::Result<Keeper> {
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
        if key >= self.capacity {
            if !self.warned_capacity {
                self.warned_capacity = true;
                warn!(
                    "keep-capacity-exceeded capacity={} reason=\"max_clients was raised by a reload: connections \
                     past the start's max_clients are not kept across a restart until the next start\"",
                    self.capacity
                );
            }
            return None;
        }
        let at = HEADER + key * RECORD;
        Some(&mut self.map.bytes_mut()[at..at + RECORD])
    }

    /// Writes the whole record of the connection in slot `key`; false when
    /// the slot is beyond the memfd (the connection is then not kept).
    pub fn save(&mut self, key: usize, record: &Record) -> bool {
        let clock = self.clock;
        match self.slot(key) {
            Some(bytes) => {
                record.encode(&clock, bytes);
                true
            }
            None => false,
        }
    }

    /// Updates the per-heartbeat words of slot `key`: two 8-byte stores.
    pub fn touch(&mut self, key: usize, session: u64, last_activity: Instant, heartbeats: u64) {
        let usec = self.clock.usec(last_activity);
        if key >= self.capacity {
            return;
        }
        let at = HEADER + key * RECORD;
        let bytes = &mut self.map.bytes_mut()[at..at + RECORD];
        if word(bytes, 0) == session {
            bytes[8..16].copy_from_slice(&usec.to_le_bytes());
            bytes[16..24].copy_from_slice(&heartbeats.to_le_bytes());
        }
    }

    /// Empties slot `key` if it holds `session`.
    pub fn clear(&mut self, key: usize, session: u64) {
        if let Some(bytes) = self.slot(key) {
            if word(bytes, 0) == session {
                bytes.fill(0);
            }
        }
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

    #[test]
    fn the_keeper_keeps_records_in_a_memfd_a_new_keeper_reads() {
        let mut keeper = Keeper::new(8, None).expect("keeper");
        let clock = *keeper.clock();
        let r = record(&clock);
        assert!(keeper.save(3, &r));
        assert!(!keeper.save(8, &r), "past the capacity");
        keeper.touch(3, r.session, r.state.last_activity + Duration::from_secs(1), 43);
        keeper.touch(3, 999, r.state.last_activity, 0);
        keeper.set_next_session(77);
        keeper.alive(clock.at);
        let dup = keeper.map.fd().try_clone_to_owned().expect("dup");
        drop(keeper);
        let again = Keeper::new(8, Some(SharedMap::open(dup).expect("map"))).expect("keeper");
        assert_eq!(again.header(), Header { alive_at: clock.usec, next_session: 77, last_event_id: 0 });
        let records = again.records();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].state.heartbeats, 43);
        assert_eq!(records[0].session, r.session);
    }

    #[test]
    fn queued_messages_wait_in_order_and_a_closed_connection_leaves_the_queue() {
        let mut keeper = Keeper::new(4, None).expect("keeper");
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
