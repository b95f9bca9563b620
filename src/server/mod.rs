//! The event loop: one `mio::Poll` for the listeners, the client sockets and
//! the signals, one timer wheel for every deadline, one thread.
//!
//! The loop owns the connection table (`Slab<Conn>`), the listeners, the id
//! registry and the wheel. It moves bytes between sockets and [`Conn`]s,
//! turns their decisions into events, and knows nothing of wire formats.
//!
//! This file holds the loop and the connections; `listeners.rs` binds,
//! accepts and admits; `signals.rs` stops, reloads and lists clients.
//!
//! Invariants:
//! - Exactly one offline event per online event: `Server::close` is the
//!   only place a connection leaves the online state, and it runs once per
//!   connection (`Conn::closing`).
//! - A closed connection is freed only after the current batch of poll
//!   events (or, while shutting down, once its BYE is written), so a stale
//!   event in the same batch finds it marked `closing` instead of a reused
//!   slot.
//! - Every armed wheel timer belongs to a live listener or a connection that
//!   is not closing; `close` cancels the connection's timer.
//! - The poll sleeps until the wheel's next expiry (never a fixed busy
//!   tick), or not at all while a connection has read budget left over.
//!   After a busy round it may first nap up to `daemon.coalesce`
//!   (`coalesce.rs`), which ends at that same expiry and at any signal.
//! - Only start-up (binding the configured listeners) and a failing poll stop
//!   the daemon; every client error closes that client alone.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use log::{info, warn};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Registry, Token};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;

use crate::config::{self, Config, ListenerConfig, Protocol};
use crate::conn::{Conn, Progress};
use crate::event::{self, Client, Event, Logfmt, OfflineReason};
use crate::http::Http;
use crate::metrics::Metrics;
use crate::status::{ListenerNames, StatusView};
use crate::systemd::{self, Notifier};
use crate::wheel::Wheel;
use crate::wire::native::{error_code, Frame};

mod coalesce;
mod listeners;
mod signals;

use listeners::take_activated;

/// Buckets in the timer wheel. With the default 100 ms tick one revolution
/// is 102.4 s, longer than any sensible heartbeat timeout, so most timers
/// fire on their first visit.
const WHEEL_SLOTS: usize = 1024;

/// Size of the read buffer shared by all connections.
const READ_BUF: usize = 64 * 1024;

/// Bytes one connection may read per poll round before the others get a
/// turn. The socket stays readable; the loop comes back to it without
/// sleeping.
const READ_BUDGET: usize = 256 * 1024;

/// Connections one listener may accept per poll round before the clients
/// already connected get their turn. The listener may still have a backlog;
/// the loop comes back to it without sleeping. Without this bound a flood
/// of connects (a fleet reconnecting at once) keeps the accept loop busy
/// while heartbeats of existing clients wait.
const ACCEPT_BUDGET: usize = 256;

/// How long accepting pauses after the process or system ran out of file
/// descriptors. Pending connections wait in the kernel's backlog meanwhile.
const ACCEPT_PAUSE: Duration = Duration::from_millis(250);

/// Poll events handled per round.
const EVENTS_CAPACITY: usize = 1024;

/// Listener tokens start here; tokens below are connection slab keys.
const LISTENER_BASE: usize = 1 << 40;

/// HTTP tokens start here (the status API's listener, then its
/// connections); below are client listeners.
const HTTP_BASE: usize = 1 << 41;

/// The signals the loop handles (`signals.rs`).
const SIGNALS: [libc::c_int; 4] = [SIGTERM, SIGINT, SIGHUP, SIGUSR1];

/// The token of the signal pipe.
const SIGNAL_TOKEN: Token = Token(usize::MAX);

/// Least time between two `STATUS=` notifications: a fleet reconnecting at
/// once must not turn into a notification per client.
const STATUS_EVERY: Duration = Duration::from_secs(1);

/// Something the wheel wakes the loop for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    /// A connection's handshake, ping or silence deadline.
    Conn(u32),
    /// Retry accepting on a listener paused by fd exhaustion.
    ResumeAccept(u32),
    /// Tell systemd the loop is alive.
    Watchdog,
    /// Send a `STATUS=` line that was held back by the rate limit.
    Status,
}

/// Why the daemon could not start or keep running.
#[derive(Debug)]
pub struct ServerError {
    /// What was being done, naming the listener or resource.
    pub op: String,
    /// The OS error.
    pub source: io::Error,
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.op, self.source)
    }
}

impl std::error::Error for ServerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

fn failed(op: impl Into<String>) -> impl FnOnce(io::Error) -> ServerError {
    let op = op.into();
    move |source| ServerError { op, source }
}

/// A bound listener and its configuration.
struct Listener {
    cfg: ListenerConfig,
    /// `None` once shutdown has begun: the config stays for the offline
    /// events of the listener's clients.
    socket: Option<TcpListener>,
    /// Accepting is paused until a `ResumeAccept` timer (fd exhaustion).
    paused: bool,
    /// When accepting first failed for lack of fds, until an accept works
    /// again: one warning per episode, not one per retry.
    exhausted_since: Option<Instant>,
    /// Sockets accepted now inherit `cfg.tcp` from the listener, so admit
    /// sets no option (`sockopt::apply_accepted`). False while the backlog
    /// may hold connections cloned before the listener got its options.
    inherits_tcp: bool,
}

impl ListenerNames for Slab<Listener> {
    fn name(&self, key: usize) -> &str {
        self.get(key).map_or("", |l| l.cfg.name.as_str())
    }
}

impl Listener {
    /// The address the socket is bound to (port 0 resolved), while open.
    fn bound_address(&self) -> Option<SocketAddr> {
        self.socket.as_ref()?.local_addr().ok()
    }
}

/// The daemon: everything the loop owns.
pub struct Server {
    poll: Poll,
    config: Config,
    config_path: Option<PathBuf>,
    listeners: Slab<Listener>,
    conns: Slab<Conn>,
    wheel: Wheel<Timer>,
    /// Online native clients by HELLO id, for replacement.
    ids: HashMap<Rc<str>, usize>,
    /// Open connections per peer IP, for `max_per_address`.
    per_address: HashMap<IpAddr, usize>,
    next_session: u64,
    signals: Signals,
    /// The read buffer shared by all connections.
    buf: Vec<u8>,
    /// Output being built for one connection, written by `Conn::flush`
    /// (which leaves it empty) before the next connection is handled.
    scratch: Vec<u8>,
    /// Closed this round; freed after the batch.
    doomed: Vec<usize>,
    /// Connections whose read budget ran out while still readable.
    again: Vec<usize>,
    /// Listeners whose accept budget ran out with connections waiting.
    accept_again: Vec<usize>,
    /// Set once shutdown has begun: the instant it must be over.
    stop_by: Option<Instant>,
    /// Clients online now (native after HELLO, legacy/raw from accept).
    online: usize,
    notifier: Notifier,
    /// `WATCHDOG=1` period, when systemd asked for one.
    watchdog: Option<Duration>,
    /// A `Timer::Status` is armed: the online count changed recently.
    status_pending: bool,
    /// Why the last reload was refused, shown in `STATUS=` until the next.
    reload_error: Option<String>,
    /// The status API, when `[http]` is configured.
    http: Option<Http>,
    metrics: Metrics,
    /// Naps after busy rounds (`daemon.coalesce`).
    coalesce: coalesce::Coalescer,
}

impl Server {
    /// Binds every configured listener and installs the signal handlers.
    /// `config_path` is re-read on SIGHUP; `None` means the embedded config.
    pub fn new(config: Config, config_path: Option<PathBuf>) -> Result<Server, ServerError> {
        let poll = Poll::new().map_err(failed("creating the poll"))?;
        let mut signals = Signals::new(SIGNALS).map_err(failed("installing signal handlers"))?;
        poll.registry()
            .register(&mut signals, SIGNAL_TOKEN, Interest::READABLE)
            .map_err(failed("registering signals"))?;
        let now = Instant::now();
        let mut server = Server {
            wheel: Wheel::new(config.daemon.tick, WHEEL_SLOTS, now),
            poll,
            config_path,
            listeners: Slab::new(),
            conns: Slab::new(),
            ids: HashMap::new(),
            per_address: HashMap::new(),
            next_session: 1,
            signals,
            buf: vec![0; READ_BUF],
            scratch: Vec::new(),
            doomed: Vec::new(),
            again: Vec::new(),
            accept_again: Vec::new(),
            stop_by: None,
            online: 0,
            notifier: Notifier::from_env(),
            watchdog: systemd::watchdog_interval(),
            status_pending: false,
            reload_error: None,
            http: None,
            metrics: Metrics::new(),
            coalesce: coalesce::Coalescer::new(&SIGNALS).map_err(failed("creating the coalescing poll"))?,
            config: config.clone(),
        };
        let mut activated = systemd::take_listen_fds();
        for cfg in config.listeners {
            let adopted = take_activated(&mut activated, &cfg);
            server.open_listener(cfg, adopted)?;
        }
        for unused in activated {
            warn!(
                "activated-socket-unused fd={} name={} address={} reason=\"no listener matches its name or address\"",
                unused.fd.as_raw_fd(),
                Logfmt(unused.name.as_deref().unwrap_or("")),
                unused.address.map_or_else(String::new, |a| a.to_string())
            );
        }
        if let Some(cfg) = config.http {
            let address = cfg.address;
            let http = Http::bind(cfg, server.poll.registry(), HTTP_BASE, now)
                .map_err(failed(format!("binding the HTTP status API on {address}")))?;
            server.http = Some(http);
        }
        if let Some(every) = server.watchdog {
            server.wheel.insert(now + every, Timer::Watchdog);
        }
        server.notifier.ready(&server.status_line());
        Ok(server)
    }

    /// The bound address of the HTTP status API, if it is served.
    pub fn http_address(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(Http::address)
    }

    /// The bound address of each listener, by name (port 0 resolved).
    pub fn local_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.listeners.iter().filter_map(|(_, l)| Some((l.cfg.name.clone(), l.bound_address()?))).collect()
    }

    /// Runs until SIGTERM or SIGINT and a graceful shutdown. Returns an
    /// error only if the poll itself fails.
    pub fn run(&mut self) -> Result<(), ServerError> {
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        let mut expired = Vec::new();
        loop {
            let mut timeout = self.poll_timeout(Instant::now());
            if self.coalesce.nap(self.config.daemon.coalesce, timeout) {
                timeout = self.poll_timeout(Instant::now());
            }
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(ServerError { op: "polling".into(), source: e });
            }
            let now = Instant::now();
            self.coalesce
                .observe(now, coalesce::Round::of(&events, |Token(t)| (LISTENER_BASE..HTTP_BASE).contains(&t)));
            for event in events.iter() {
                match event.token() {
                    SIGNAL_TOKEN => self.on_signals(now),
                    token @ Token(t) if t >= HTTP_BASE => self.on_http(token, now),
                    Token(t) if t >= LISTENER_BASE => self.accept(t - LISTENER_BASE, now),
                    Token(key) => self.on_conn_event(key, event.is_writable(), now),
                }
            }
            for key in std::mem::take(&mut self.again) {
                self.on_conn_event(key, false, now);
            }
            for lkey in std::mem::take(&mut self.accept_again) {
                self.accept(lkey, now);
            }
            self.wheel.advance(now, &mut expired);
            for timer in expired.drain(..) {
                match timer {
                    Timer::Conn(key) => self.on_conn_timer(key as usize, now),
                    Timer::ResumeAccept(lkey) => {
                        if let Some(l) = self.listeners.get_mut(lkey as usize) {
                            l.paused = false;
                            self.accept(lkey as usize, now);
                        }
                    }
                    Timer::Watchdog => {
                        self.notifier.watchdog();
                        if let Some(every) = self.watchdog {
                            self.wheel.insert(now + every, Timer::Watchdog);
                        }
                    }
                    Timer::Status => {
                        self.status_pending = false;
                        self.notifier.status(&self.status_line());
                    }
                }
            }
            if let Some(http) = &mut self.http {
                if http.next_deadline().is_some_and(|at| at <= now) {
                    http.on_time(self.poll.registry(), now);
                }
            }
            self.free_doomed();
            self.metrics.count_loop_iteration();
            if let Some(stop_by) = self.stop_by {
                if self.conns.is_empty() || now >= stop_by {
                    info!("stopped clients_dropped={}", self.conns.len());
                    return Ok(());
                }
            }
        }
    }

    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        if !self.again.is_empty() || !self.accept_again.is_empty() {
            return Some(Duration::ZERO);
        }
        let http = self.http.as_ref().and_then(Http::next_deadline);
        let next = [self.wheel.next_expiry(), self.stop_by, http].into_iter().flatten().min()?;
        Some(next.saturating_duration_since(now))
    }

    // ---- connections -----------------------------------------------------

    fn on_conn_event(&mut self, key: usize, writable: bool, now: Instant) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.closing {
            if writable && self.stop_by.is_some() {
                self.drain_after_close(key);
            }
            return;
        }
        let cfg = &self.listeners[conn.listener()].cfg;
        let (mut progress, more) = conn.read_some(&mut self.buf, READ_BUDGET, now, cfg, &mut self.scratch);
        if more {
            self.again.push(key);
        }
        if progress == Progress::Hello {
            progress = self.on_hello(key, now);
        }
        self.settle(key, progress, now);
    }

    fn on_conn_timer(&mut self, key: usize, now: Instant) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        conn.timer = None;
        if conn.closing {
            return;
        }
        let cfg = &self.listeners[conn.listener()].cfg;
        let progress = conn.on_timer(now, cfg, &mut self.scratch);
        self.settle(key, progress, now);
        if !self.conns[key].closing {
            self.arm(key);
        }
    }

    /// Finishes a handler: closes on `Close`, else flushes output and keeps
    /// the poll interest in step with the output queue.
    fn settle(&mut self, key: usize, progress: Progress, now: Instant) {
        let progress = match progress {
            Progress::Continue => self.conns[key].flush(&mut self.scratch),
            other => other,
        };
        match progress {
            Progress::Close(reason, detail) => self.close(key, reason, detail, now),
            Progress::Hello | Progress::Continue => self.update_interest(key, now),
        }
    }

    /// Resolves a HELLO: replaces an older connection with the same id,
    /// puts this one online, then handles the bytes that followed the HELLO.
    fn on_hello(&mut self, key: usize, now: Instant) -> Progress {
        let Some(id) = self.conns[key].id.clone() else {
            return Progress::Close(OfflineReason::Error, Some("HELLO without id".into()));
        };
        // HELLO is the first frame, so nothing is in the scratch buffer yet
        // and the older connection's ERROR can go through it.
        debug_assert!(self.scratch.is_empty());
        let session = self.conns[key].session;
        let message = "replaced by a newer connection with the same id";
        if let Some(&online) = self.ids.get(&id) {
            crate::wire::native::encode(&Frame::Error { code: error_code::REPLACED, message }, &mut self.scratch);
            let online_session = self.conns[online].session;
            if online_session > session {
                // This connection was accepted before the one online with
                // its id: a HELLO that waited (in the backlog, or behind a
                // frozen daemon) is older, and must not displace the newer.
                return Progress::close(
                    OfflineReason::Replaced,
                    format!("stale HELLO: session {online_session} is newer"),
                );
            }
            self.close(online, OfflineReason::Replaced, Some(format!("by session {session}")), now);
        }
        let conn = &mut self.conns[key];
        let cfg = &self.listeners[conn.listener()].cfg;
        conn.welcome(now, cfg, &mut self.scratch);
        self.ids.insert(id, key);
        self.emit_online(key, now);
        self.arm(key);
        let conn = &mut self.conns[key];
        let cfg = &self.listeners[conn.listener()].cfg;
        conn.resume(now, cfg, &mut self.scratch)
    }

    fn take_session(&mut self) -> u64 {
        let session = self.next_session;
        self.next_session += 1;
        session
    }

    /// Arms (or moves) the connection's timer at its next deadline.
    fn arm(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        let deadline = conn.next_deadline(&self.listeners[conn.listener()].cfg);
        match (deadline, conn.timer) {
            (Some(at), Some(id)) => self.wheel.reschedule(id, at),
            (Some(at), None) => conn.timer = Some(self.wheel.insert(at, Timer::Conn(timer_key(key)))),
            (None, Some(id)) => {
                self.wheel.cancel(id);
                conn.timer = None;
            }
            (None, None) => {}
        }
    }

    fn update_interest(&mut self, key: usize, now: Instant) {
        let conn = &mut self.conns[key];
        let want = conn.wants_write();
        if want == conn.writable_registered {
            return;
        }
        let interest = if want { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
        match self.poll.registry().reregister(&mut conn.stream, Token(key), interest) {
            Ok(()) => conn.writable_registered = want,
            Err(e) => self.close(key, OfflineReason::Error, Some(format!("reregister: {e}")), now),
        }
    }

    /// Ends a connection: sends what is queued (an ERROR or BYE), emits the
    /// offline event if it was online, and schedules it to be freed. Runs
    /// at most once per connection.
    fn close(&mut self, key: usize, reason: OfflineReason, detail: Option<String>, now: Instant) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.closing {
            return;
        }
        conn.closing = true;
        if let Some(id) = conn.timer.take() {
            self.wheel.cancel(id);
        }
        // Best effort for the last frame; its failure changes nothing.
        let _ = conn.flush(&mut self.scratch);
        self.scratch.clear();
        let listener = &self.listeners[conn.listener()].cfg.name;
        self.metrics.count_closed_heartbeats(listener, conn.heartbeats);
        if reason == OfflineReason::ProtocolError {
            self.metrics.count_protocol_error(listener);
        }
        let was_online = conn.is_online();
        if was_online {
            self.online -= 1;
            let id = conn.client_id();
            let event = Event::Offline {
                client: Client { id: &id, peer: conn.peer, listener, proto: conn.proto, session: conn.session },
                reason,
                silent: now.saturating_duration_since(conn.last_activity()),
                connected: now.saturating_duration_since(conn.since()),
                detail: detail.as_deref(),
            };
            publish(&event, &mut self.metrics, &mut self.http, self.poll.registry());
            if let Some(id) = &conn.id {
                if self.ids.get(id) == Some(&key) {
                    self.ids.remove(id);
                }
            }
        } else {
            info!(
                "handshake-failed peer={} listener={} error={}",
                conn.peer,
                Logfmt(listener),
                Logfmt(detail.as_deref().unwrap_or(reason.as_str()))
            );
        }
        if was_online {
            self.schedule_status(now);
        }
        let conn = &mut self.conns[key];
        if let Some(n) = self.per_address.get_mut(&conn.peer.ip()) {
            *n -= 1;
            if *n == 0 {
                self.per_address.remove(&conn.peer.ip());
            }
        }
        // While stopping, a BYE that did not fit the socket buffer gets the
        // rest of the grace period to drain.
        if self.stop_by.is_some() && conn.wants_write() {
            if !conn.writable_registered {
                let interest = Interest::READABLE | Interest::WRITABLE;
                conn.writable_registered =
                    self.poll.registry().reregister(&mut conn.stream, Token(key), interest).is_ok();
            }
            if conn.writable_registered {
                return;
            }
        }
        self.doomed.push(key);
    }

    fn drain_after_close(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        if conn.flush(&mut self.scratch) != Progress::Continue || !conn.wants_write() {
            self.doomed.push(key);
        }
    }

    fn free_doomed(&mut self) {
        for key in self.doomed.drain(..) {
            if let Some(mut conn) = self.conns.try_remove(key) {
                // Closing the fd removes it from epoll anyway; deregistering
                // first is tidy and its failure harmless.
                let _ = self.poll.registry().deregister(&mut conn.stream);
            }
        }
    }

    fn emit_online(&mut self, key: usize, now: Instant) {
        self.online += 1;
        self.schedule_status(now);
        let conn = &self.conns[key];
        let id = conn.client_id();
        let event = Event::Online(Client {
            id: &id,
            peer: conn.peer,
            listener: &self.listeners[conn.listener()].cfg.name,
            proto: conn.proto,
            session: conn.session,
        });
        publish(&event, &mut self.metrics, &mut self.http, self.poll.registry());
    }

    fn on_http(&mut self, token: Token, now: Instant) {
        // Out of `self` while it reads the rest of it through the view.
        let Some(mut http) = self.http.take() else { return };
        http.handle(self.poll.registry(), token, now, &self.status_view(now));
        self.http = Some(http);
    }

    /// What `/clients`, `/metrics` and SIGUSR1 show.
    fn status_view(&self, now: Instant) -> StatusView<'_> {
        StatusView {
            conns: &self.conns,
            listeners: &self.listeners,
            ids: &self.ids,
            metrics: &self.metrics,
            wheel_timers: self.wheel.len(),
            now,
        }
    }

    /// Arms the rate-limited `STATUS=` update, when systemd listens.
    fn schedule_status(&mut self, now: Instant) {
        if self.notifier.is_active() && !self.status_pending && self.stop_by.is_none() {
            self.status_pending = true;
            self.wheel.insert(now + STATUS_EVERY, Timer::Status);
        }
    }

    /// The `STATUS=` text `systemctl status` shows.
    fn status_line(&self) -> String {
        let base = format!("{} clients online on {} listeners", self.online, self.listeners.len());
        match &self.reload_error {
            Some(e) => format!("{base}; last reload failed, running config kept: {e}"),
            None => base,
        }
    }

    /// Queues BYE `shutdown` on a native connection.
    fn say_bye(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        if conn.proto == Protocol::Native {
            crate::wire::native::encode(&Frame::Bye("shutdown"), &mut self.scratch);
        }
    }
}

/// A slab key as a timer payload. Config caps `max_clients` far below
/// `u32::MAX`, so keys fit; `u32::MAX` would name no connection, and its
/// timer would find nothing to do.
fn timer_key(key: usize) -> u32 {
    u32::try_from(key).unwrap_or(u32::MAX)
}

/// Hands an event to every sink: the log or journal, the counters, the
/// HTTP feed.
fn publish(event: &Event<'_>, metrics: &mut Metrics, http: &mut Option<Http>, registry: &Registry) {
    event::emit(event);
    metrics.record(event);
    if let Some(http) = http {
        http.publish(registry, event);
    }
}

/// Reads and validates the config for the binary: the file at `path`, or the
/// embedded default.
pub fn load_config(path: Option<&std::path::Path>) -> Result<Config, config::ConfigError> {
    match path {
        Some(p) => config::load(p),
        None => config::embedded(),
    }
}
