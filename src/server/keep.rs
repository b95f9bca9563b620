//! Restarts no client notices (issue 11, docs/RESTARTS.md): the loop's
//! side of the fd store. At start it takes back what the previous process
//! stored (its listeners, its connections, the state memfd) and continues
//! each connection with the same session and no online event; while
//! running it keeps the store and the records current as connections come
//! and go; at a SIGTERM that `heartbeatd --stopping` marked as a restart it
//! hands everything over and exits.
//!
//! Invariants:
//! - A restored connection is online exactly when its record says so; its
//!   online event was the previous process's, and its offline event will
//!   be this one's: exactly one of each over the restart.
//! - A record whose socket did not come back (systemd closed it on the
//!   peer's reset, or the process died before storing it) gets exactly one
//!   offline event at restore, when it was online.
//! - The time the daemon was down counts as one stall of the loop (R2,
//!   `stall.rs`): every restored deadline is pushed back by it, and no
//!   silence verdict counts it.
//! - With keeping off, connections a previous process handed over are
//!   closed as a stop would have closed them (BYE `shutdown`, offline).

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use log::{info, warn};
use mio::{Interest, Token};
use slab::Slab;

use super::{publish, serves_configured, Listener, Server, Sinks, Slot, Timer};
use crate::config::ListenerConfig;
use crate::conn::Conn;
use crate::event::{Client, Event, Logfmt, OfflineReason};
use crate::fdstore::{self, Budget, Keeper, Op, Record, SessionReserve};
use crate::limits;
use crate::session::{self, Session};
use crate::stopping;
use crate::systemd::{ActivatedSocket, SharedMap};

/// How long a process that hands over waits for the notify socket to take
/// the store messages still queued.
const HANDOVER_FLUSH: Duration = Duration::from_secs(2);

/// How soon a store message the notify socket refused is retried.
const RETRY: Duration = Duration::from_millis(10);

/// What a previous process left in the store, taken out of `LISTEN_FDS`.
#[derive(Default)]
pub(super) struct Kept {
    state: Option<OwnedFd>,
    listeners: Vec<(String, OwnedFd)>,
    conns: HashMap<u64, OwnedFd>,
}

impl Kept {
    /// Takes out of `activated` the fds this daemon stored, by name; the
    /// socket unit's stay.
    pub(super) fn take(activated: &mut Vec<ActivatedSocket>) -> Kept {
        let mut kept = Kept::default();
        let mut rest = Vec::new();
        for socket in activated.drain(..) {
            match fdstore::kind(&socket.fdname) {
                fdstore::Kind::State => kept.state = Some(socket.fd),
                fdstore::Kind::Listener(name) => kept.listeners.push((name, socket.fd)),
                fdstore::Kind::Conn(session) => {
                    kept.conns.insert(session, socket.fd);
                }
                fdstore::Kind::Other => rest.push(socket),
            }
        }
        *activated = rest;
        kept
    }

    /// The stored listener for `cfg`: the same name, serving the configured
    /// address (one that serves another is closed: the config moved it).
    pub(super) fn listener(&mut self, cfg: &ListenerConfig) -> Option<OwnedFd> {
        let index = self.listeners.iter().position(|(name, _)| name == &cfg.name)?;
        let (_, fd) = self.listeners.remove(index);
        let serving = socket2::SockRef::from(&fd).local_addr().ok()?.as_socket()?;
        serves_configured(cfg.address, serving).then_some(fd)
    }
}

/// Finds the fd a store message names, if it is still open.
fn fd_of<'a>(conns: &'a Slab<Slot>, listeners: &'a Slab<Listener>) -> impl Fn(&Op) -> Option<BorrowedFd<'a>> + 'a {
    move |op| match op {
        Op::Conn { key, session } => {
            conns.get(*key).filter(|s| s.session == *session && !s.is_closing()).map(|s| s.conn.stream().as_fd())
        }
        Op::Listener { key, name } => {
            listeners.get(*key).filter(|l| &l.cfg.name == name).and_then(|l| l.socket.as_ref()).map(|s| s.as_fd())
        }
        Op::Remove(_) => None,
    }
}

impl Server {
    /// Chooses the mode (and says which runs): keeping under systemd with
    /// `daemon.keep_connections`, else today's behaviour. Reads the session
    /// reserve of the state directory either way.
    pub(super) fn keep_init(&mut self, kept: &mut Kept) {
        if let Some((reserve, first)) = SessionReserve::open() {
            self.next_session = self.next_session.max(first);
            self.reserve = Some(reserve);
        }
        let reason = if !self.config.daemon.keep_connections {
            Some("daemon.keep_connections = false")
        } else if !self.notifier.is_active() {
            Some("no service manager ($NOTIFY_SOCKET unset)")
        } else {
            None
        };
        if let Some(reason) = reason {
            info!("keep-connections mode=off reason={}", Logfmt(reason));
            return;
        }
        let map = kept.state.take().and_then(|fd| {
            SharedMap::open(fd).map_err(|e| warn!("keep-state-unreadable error={}", Logfmt(&e.to_string()))).ok()
        });
        // The listeners and the state memfd are stored besides connections.
        let budget = Budget::under(limits::fd_limit().and_then(|l| l.soft), self.config.listeners.len() + 1);
        match Keeper::new(self.config.daemon.max_clients, budget, map) {
            Ok(keeper) => {
                info!(
                    "keep-connections mode=fdstore capacity={} fd_limit_allows={}",
                    self.config.daemon.max_clients,
                    budget.conns.min(self.config.daemon.max_clients)
                );
                self.keep = Some(keeper);
            }
            Err(e) => warn!("keep-connections mode=off reason={}", Logfmt(&format!("no memfd: {e}"))),
        }
    }

    /// Sends a store message (or queues it behind others), and arms the
    /// retry when the socket is full.
    fn keep_push(&mut self, op: Op, now: Instant) {
        let Some(keep) = &mut self.keep else { return };
        keep.push(op, &self.notifier, fd_of(&self.conns, &self.listeners));
        if keep.wants_retry() {
            self.wheel.insert(now + RETRY, Timer::KeepRetry);
        }
    }

    /// The retry timer: sends what waits, and re-arms while anything does.
    pub(super) fn keep_retry(&mut self, now: Instant) {
        let Some(keep) = &mut self.keep else { return };
        keep.retry_fired();
        keep.flush(&self.notifier, fd_of(&self.conns, &self.listeners));
        if keep.wants_retry() {
            self.wheel.insert(now + RETRY, Timer::KeepRetry);
        }
    }

    /// A listener was opened; one the daemon bound itself is stored (one
    /// systemd passed is already there, or is the socket unit's).
    pub(super) fn keep_listener_opened(&mut self, lkey: usize, bound: bool, now: Instant) {
        if bound {
            let name = self.listeners[lkey].cfg.name.clone();
            self.keep_push(Op::Listener { key: lkey, name }, now);
        }
    }

    /// A listener was closed for good (a reload removed or moved it).
    pub(super) fn keep_listener_closed(&mut self, name: &str, now: Instant) {
        self.keep_push(Op::Remove(fdstore::listener_name(name)), now);
    }

    /// The record of the connection in slot `key`, as it is now.
    fn record_of(&self, key: usize) -> Record {
        let slot = &self.conns[key];
        let cfg = &self.listeners[slot.conn.listener()].cfg;
        Record {
            session: slot.session,
            peer: slot.conn.peer(),
            listener: cfg.name.clone(),
            interval_ms: session::millis_u32(cfg.interval),
            timeout_ms: session::millis_u32(cfg.timeout),
            state: slot.conn.session().snapshot(),
        }
    }

    /// A connection was accepted and numbered: its record, then its fd.
    /// TLS connections are not kept: their keys and sequence numbers live
    /// in this process only, so a restart ends them as a stop does.
    pub(super) fn keep_conn(&mut self, key: usize, now: Instant) {
        if self.keep.is_none() || self.conns[key].conn.is_tls() {
            return;
        }
        let record = self.record_of(key);
        let session = record.session;
        if self.keep.as_mut().is_some_and(|keep| keep.admit(key, &record)) {
            self.keep_push(Op::Conn { key, session }, now);
        }
    }

    /// Rewrites the connection's record (its state may have changed: a
    /// HELLO, a WELCOME, a PING, a reload).
    pub(super) fn keep_save(&mut self, key: usize) {
        if self.keep.is_none() || self.conns[key].is_closing() {
            return;
        }
        let record = self.record_of(key);
        if let Some(keep) = &mut self.keep {
            keep.save(key, &record);
        }
    }

    /// Stamps the connection's last activity and heartbeats in its record.
    pub(super) fn keep_touch(&mut self, key: usize) {
        let (Some(keep), Some(slot)) = (&mut self.keep, self.conns.get(key)) else { return };
        let session = slot.conn.session();
        keep.touch(key, slot.session, session.last_activity(), session.heartbeats());
    }

    /// A restored connection, already in the store: its record at its new
    /// slot.
    fn keep_adopt(&mut self, key: usize) {
        let record = self.record_of(key);
        if let Some(keep) = &mut self.keep {
            keep.adopt(key, &record);
        }
    }

    /// The connection closed: its record goes, then its fd leaves the store
    /// (a removal of a name never stored costs systemd a look, no more).
    pub(super) fn keep_forget(&mut self, key: usize, now: Instant) {
        let Some(keep) = &mut self.keep else { return };
        let session = self.conns[key].session;
        keep.clear(key, session);
        if !keep.unqueue_conn(session) {
            self.keep_push(Op::Remove(fdstore::conn_name(session)), now);
        }
    }

    /// A new session number was given: the header and the reserve file
    /// stay ahead of it.
    pub(super) fn keep_numbered(&mut self, next: u64) {
        if let Some(keep) = &mut self.keep {
            keep.set_next_session(next);
        }
        if let Some(reserve) = &mut self.reserve {
            reserve.cover(next);
        }
    }

    /// End of a round: the loop is alive (where a restart's stall begins).
    pub(super) fn keep_round(&mut self, now: Instant) {
        if let Some(keep) = &mut self.keep {
            keep.alive(now);
            if let Some(http) = &self.http {
                keep.set_last_event_id(http.last_event_id());
            }
        }
    }

    /// True once the connections were handed over: the loop just ends.
    pub(super) fn handed_over(&self) -> bool {
        self.keep.as_ref().is_some_and(Keeper::handed_over)
    }

    /// At SIGTERM: when `heartbeatd --stopping` marked it a restart, hands
    /// every connection over to the next process (no BYE, no offline
    /// event) and returns true; the loop then ends.
    pub(super) fn hand_over(&mut self, now: Instant) -> bool {
        if self.keep.is_none() || !stopping::is_restart() {
            return false;
        }
        for (_, l) in self.listeners.iter_mut() {
            if let Some(mut socket) = l.socket.take() {
                let _ = self.poll.registry().deregister(&mut socket);
                // Dropped here: the store's copy keeps the port and its
                // backlog for the next process.
            }
        }
        // Connections not kept get the stop's BYE and offline event: TLS
        // sessions (another process cannot continue them) and those past
        // the store's budget.
        let Some(keep) = &self.keep else { return false };
        let unkept: Vec<usize> =
            self.conns.iter().filter(|(k, s)| !s.is_closing() && !keep.holds(*k, s.session)).map(|(k, _)| k).collect();
        for key in unkept {
            self.say_bye(key);
            self.close(key, OfflineReason::Shutdown, None, now);
        }
        let next = self.next_session;
        let Some(keep) = &mut self.keep else { return false };
        keep.set_next_session(next);
        keep.alive(now);
        let unsent = keep.flush_before_exit(&self.notifier, HANDOVER_FLUSH, fd_of(&self.conns, &self.listeners));
        keep.set_handed_over();
        let kept = self.conns.iter().filter(|(_, s)| !s.is_closing()).count();
        info!("handing-over clients={} connections={kept} unsent={unsent}", self.online);
        self.notifier
            .stopping(&format!("restarting: {} stay connected", super::plural(kept, "connection", "connections")));
        self.stop_by = Some(now);
        true
    }

    /// Continues what the previous process stored: every recorded
    /// connection whose socket came back, with its session; one offline
    /// event for each online one that did not. Logs one `restored` line.
    pub(super) fn restore(&mut self, mut kept: Kept, now: Instant) {
        let started = Instant::now();
        for (name, _) in kept.listeners.drain(..) {
            // A listener the config no longer has (or moved): closed here,
            // and out of the store.
            self.keep_push(Op::Remove(fdstore::listener_name(&name)), now);
        }
        let Some(keep) = &mut self.keep else {
            self.close_handed_over(kept, now);
            return;
        };
        let header = keep.header();
        if let (true, Some(http)) = (header.last_event_id > 0, &mut self.http) {
            // `/events` ids go on from the previous process's: a consumer's
            // Last-Event-ID from before gets the events after it or a gap.
            http.continue_event_ids(header.last_event_id);
        }
        if !keep.has_records() {
            for session in kept.conns.keys().copied().collect::<Vec<_>>() {
                self.keep_push(Op::Remove(fdstore::conn_name(session)), now);
            }
            return;
        }
        let clock = *keep.clock();
        let records = keep.records();
        keep.clear_records();
        let down_since = (header.alive_at > 0).then(|| clock.instant(header.alive_at));
        let earliest = records.iter().map(|r| r.state.since.min(r.state.last_activity)).chain(down_since).min();
        if let Some(at) = earliest {
            session::anchor_clock(at);
        }
        let newest = records.iter().map(|r| r.session).max().unwrap_or(0);
        self.next_session = self.next_session.max(header.next_session).max(newest + 1);
        if let Some(since) = down_since {
            // The restart is a stall of the daemon (R2): nobody's silence
            // counts it, every deadline moves back by it.
            self.stalls.record(now, now.saturating_duration_since(since));
        }
        let (mut restored, mut missing) = (0usize, 0usize);
        for record in records {
            let fd = kept.conns.remove(&record.session);
            let lkey = self
                .listeners
                .iter()
                .find(|(_, l)| l.cfg.name == record.listener && l.cfg.protocol == record.state.proto)
                .map(|(k, _)| k);
            match (fd, lkey) {
                (Some(fd), Some(lkey)) => match self.restore_conn(fd, lkey, &record, now) {
                    Ok(()) => restored += 1,
                    Err(reason) => {
                        missing += 1;
                        self.gone(&record, reason, "the peer was gone when heartbeatd restarted", now);
                    }
                },
                (Some(fd), None) => {
                    // Its listener is gone from the config: a stop for it.
                    let mut out = Vec::new();
                    Session::restore(&record.state, record.peer).shutdown(&mut out);
                    let _ = std::io::Write::write(&mut std::net::TcpStream::from(fd), &out);
                    self.gone(&record, OfflineReason::Shutdown, "listener removed", now);
                    self.keep_push(Op::Remove(fdstore::conn_name(record.session)), now);
                }
                (None, _) => {
                    missing += 1;
                    self.gone(&record, OfflineReason::Closed, "the peer hung up while heartbeatd was down", now);
                }
            }
        }
        let unrecorded = kept.conns.len();
        for session in kept.conns.keys().copied().collect::<Vec<_>>() {
            // A socket without a record: a record torn by a crash. It was
            // never announced by this process; closing it is all it can do.
            self.keep_push(Op::Remove(fdstore::conn_name(session)), now);
        }
        drop(kept);
        let next = self.next_session;
        self.keep_numbered(next);
        self.metrics.count_restored(restored as u64);
        info!(
            "restored clients={restored} missing={missing} unrecorded={unrecorded} down_ms={} took_ms={}",
            down_since.map_or(0, |since| now.saturating_duration_since(since).as_millis()),
            started.elapsed().as_millis()
        );
    }

    /// Puts one kept socket back in the table with its restored session;
    /// `Err` with the offline reason when the socket is no longer usable.
    fn restore_conn(&mut self, fd: OwnedFd, lkey: usize, record: &Record, now: Instant) -> Result<(), OfflineReason> {
        let std = std::net::TcpStream::from(fd);
        // A socket reset while it waited has no peer any more.
        let peer = std.peer_addr().map_err(|_| OfflineReason::Reset)?;
        std.set_nonblocking(true).map_err(|_| OfflineReason::Error)?;
        let mut stream = mio::net::TcpStream::from_std(std);
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        self.poll.registry().register(&mut stream, Token(key), Interest::READABLE).map_err(|_| OfflineReason::Error)?;
        let session = Session::restore(&record.state, record.peer);
        let online = session.is_online();
        let id = session.id().cloned();
        entry.insert(Slot::new(Conn::restored(stream, peer, lkey, session), record.session));
        *self.per_address.entry(peer.ip()).or_insert(0) += 1;
        if online {
            self.online += 1;
            if let Some(id) = id {
                self.ids.insert(id, key);
            }
        }
        let cfg = &self.listeners[lkey].cfg;
        let retimed = session::millis_u32(cfg.interval) != record.interval_ms
            || session::millis_u32(cfg.timeout) != record.timeout_ms;
        if online && retimed {
            // As a reload that changed the timing does: the client hears
            // the new interval, and the new timeout counts from now.
            let slot = &mut self.conns[key];
            slot.conn.timing_changed(now);
            let number = slot.session;
            let cfg = &self.listeners[lkey].cfg;
            let next = slot.conn.say(&mut self.scratch, |s, out| s.rewelcome(number, cfg, out));
            self.settle(key, next, now);
        }
        if !self.conns[key].is_closing() {
            self.keep_adopt(key);
            self.arm(key);
        }
        Ok(())
    }

    /// The offline event of a recorded connection that did not come back
    /// (nothing if it was not online: no online event was ever given).
    fn gone(&mut self, record: &Record, reason: OfflineReason, detail: &str, now: Instant) {
        let state = &record.state;
        let online = state.welcomed && !state.probe || state.proto != crate::wire::Protocol::Native;
        if !online {
            return;
        }
        let id = state.id.clone().unwrap_or_else(|| record.peer.to_string());
        let event = Event::Offline {
            client: Client {
                id: &id,
                peer: record.peer,
                listener: &record.listener,
                proto: state.proto,
                session: record.session,
            },
            reason,
            silent: now.saturating_duration_since(state.last_activity),
            connected: now.saturating_duration_since(state.since),
            detail: Some(detail),
        };
        // A real loss (the peer hung up while no process served it): its
        // hooks run.
        let sinks = Sinks { metrics: &mut self.metrics, http: &mut self.http, hooks: &mut self.hooks };
        publish(&event, sinks, self.poll.registry(), true, now);
    }

    /// Keeping is off, yet a previous process handed connections over:
    /// each is told BYE `shutdown` and goes offline, as at a stop.
    fn close_handed_over(&mut self, mut kept: Kept, now: Instant) {
        let Some(map) = kept.state.take().and_then(|fd| SharedMap::open(fd).ok()) else { return };
        let Ok(previous) = Keeper::new(0, Budget::under(None, 0), Some(map)) else { return };
        let records = previous.records();
        let count = records.len();
        for record in records {
            if let Some(fd) = kept.conns.remove(&record.session) {
                let mut out = Vec::new();
                Session::restore(&record.state, record.peer).shutdown(&mut out);
                let _ = std::io::Write::write(&mut std::net::TcpStream::from(fd), &out);
            }
            self.gone(&record, OfflineReason::Shutdown, "daemon.keep_connections is off", now);
        }
        for session in kept.conns.keys() {
            let _ = self.notifier.remove_fd(&fdstore::conn_name(*session));
        }
        let _ = self.notifier.remove_fd(fdstore::STATE_NAME);
        info!("restored clients=0 closed={count} reason=\"daemon.keep_connections = false\"");
    }
}
