//! The event loop: one `mio::Poll` for the listeners, the client sockets and
//! the signals, one timer wheel for every deadline, one thread.
//!
//! The loop owns the connection table (`Slab<Conn>`), the listeners, the id
//! registry and the wheel. It moves bytes between sockets and [`Conn`]s,
//! turns their decisions into events, and knows nothing of wire formats.
//!
//! Invariants:
//! - Exactly one offline event per online event: [`Server::close`] is the
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
//! - Only start-up (binding the configured listeners) and a failing poll stop
//!   the daemon; every client error closes that client alone.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Registry, Token};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;

use crate::config::{self, Config, HttpConfig, ListenerConfig, Protocol};
use crate::conn::{Conn, Progress};
use crate::event::{self, Client, Event, Logfmt, OfflineReason};
use crate::http::Http;
use crate::logging;
use crate::metrics::{Metrics, Refusal};
use crate::sockopt;
use crate::status::StatusView;
use crate::systemd::{self, ActivatedSocket, Notifier};
use crate::wheel::Wheel;
use crate::wire::native::{error_code, Frame};

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

/// The token of the signal pipe.
const SIGNAL_TOKEN: Token = Token(usize::MAX);

/// Least time between two `STATUS=` notifications: a fleet reconnecting at
/// once must not turn into a notification per client.
const STATUS_EVERY: Duration = Duration::from_secs(1);

/// Something the wheel wakes the loop for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    /// A connection's handshake, ping or silence deadline.
    Conn(usize),
    /// Retry accepting on a listener paused by fd exhaustion.
    ResumeAccept(usize),
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
}

impl Server {
    /// Binds every configured listener and installs the signal handlers.
    /// `config_path` is re-read on SIGHUP; `None` means the embedded config.
    pub fn new(config: Config, config_path: Option<PathBuf>) -> Result<Server, ServerError> {
        let poll = Poll::new().map_err(failed("creating the poll"))?;
        let mut signals =
            Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1]).map_err(failed("installing signal handlers"))?;
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
            stop_by: None,
            online: 0,
            notifier: Notifier::from_env(),
            watchdog: systemd::watchdog_interval(),
            status_pending: false,
            reload_error: None,
            http: None,
            metrics: Metrics::new(),
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
            let timeout = self.poll_timeout(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(ServerError { op: "polling".into(), source: e });
            }
            let now = Instant::now();
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
            self.wheel.advance(now, &mut expired);
            for timer in expired.drain(..) {
                match timer {
                    Timer::Conn(key) => self.on_conn_timer(key, now),
                    Timer::ResumeAccept(lkey) => {
                        if let Some(l) = self.listeners.get_mut(lkey) {
                            l.paused = false;
                            self.accept(lkey, now);
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
        if !self.again.is_empty() {
            return Some(Duration::ZERO);
        }
        let http = self.http.as_ref().and_then(Http::next_deadline);
        let next = [self.wheel.next_expiry(), self.stop_by, http].into_iter().flatten().min()?;
        Some(next.saturating_duration_since(now))
    }

    // ---- listeners -------------------------------------------------------

    /// Opens a listener: adopts the socket systemd passed for it, if any,
    /// else binds its address.
    fn open_listener(&mut self, cfg: ListenerConfig, adopted: Option<OwnedFd>) -> Result<(), ServerError> {
        let what = format!("listener {} on {}", cfg.name, cfg.address);
        let (mut socket, origin) = match adopted {
            Some(fd) => {
                let socket = std::net::TcpListener::from(fd);
                socket.set_nonblocking(true).map_err(failed(format!("adopting {what}")))?;
                if let Err(e) = sockopt::apply(&socket, &cfg.tcp) {
                    warn!("sockopt-failed listener={} error={}", Logfmt(&cfg.name), Logfmt(&e.to_string()));
                }
                (TcpListener::from_std(socket), "systemd")
            }
            None => {
                let socket =
                    sockopt::bind_listener(cfg.address, &cfg.tcp).map_err(failed(format!("binding {what}")))?;
                (socket, "bound")
            }
        };
        let entry = self.listeners.vacant_entry();
        self.poll
            .registry()
            .register(&mut socket, Token(LISTENER_BASE + entry.key()), Interest::READABLE)
            .map_err(failed(format!("registering {what}")))?;
        let address = socket.local_addr().map_err(failed(format!("reading the address of {what}")))?;
        let tcp = match sockopt::effective(&socket) {
            Ok(eff) => eff.to_string(),
            Err(e) => format!("tcp_options_unreadable={}", Logfmt(&e.to_string())),
        };
        info!(
            "listening listener={} address={} socket={} proto={} interval_ms={} timeout_ms={} {}",
            Logfmt(&cfg.name),
            address,
            origin,
            cfg.protocol,
            cfg.interval.as_millis(),
            cfg.timeout.as_millis(),
            tcp
        );
        self.metrics.add_listener(&cfg.name);
        entry.insert(Listener { cfg, socket: Some(socket), paused: false, exhausted_since: None });
        Ok(())
    }

    fn close_listener(&mut self, lkey: usize, now: Instant) {
        let keys: Vec<usize> =
            self.conns.iter().filter(|(_, c)| c.listener == lkey && !c.closing).map(|(k, _)| k).collect();
        for key in keys {
            self.say_bye(key);
            self.close(key, OfflineReason::Shutdown, Some("listener removed".into()), now);
        }
        let l = self.listeners.remove(lkey);
        let address = l.bound_address().unwrap_or(l.cfg.address);
        if let Some(mut socket) = l.socket {
            // The socket closes on drop; deregistering first keeps the
            // poll's interest list exact, and its failure changes nothing.
            let _ = self.poll.registry().deregister(&mut socket);
        }
        info!("listener-closed listener={} address={}", Logfmt(&l.cfg.name), address);
    }

    fn accept(&mut self, lkey: usize, now: Instant) {
        loop {
            let Some(l) = self.listeners.get(lkey) else {
                return;
            };
            let Some(socket) = &l.socket else { return };
            if l.paused {
                return;
            }
            match socket.accept() {
                Ok((stream, peer)) => {
                    if let Some(since) = l.exhausted_since {
                        info!(
                            "accept-resumed listener={} paused_ms={}",
                            Logfmt(&l.cfg.name),
                            now.saturating_duration_since(since).as_millis()
                        );
                        self.listeners[lkey].exhausted_since = None;
                    }
                    self.admit(lkey, stream, peer, now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if is_resource_exhaustion(&e) => {
                    self.metrics.count_accept_error(&l.cfg.name);
                    // Accepting again at once would fail again and, with a
                    // level of pending connections, spin a core: pause this
                    // listener and let the wheel retry. Pending clients wait
                    // in the kernel's backlog meanwhile.
                    if l.exhausted_since.is_none() {
                        warn!(
                            "accept-paused listener={} error={} retry_ms={}",
                            Logfmt(&l.cfg.name),
                            Logfmt(&e.to_string()),
                            ACCEPT_PAUSE.as_millis()
                        );
                    }
                    let l = &mut self.listeners[lkey];
                    l.paused = true;
                    l.exhausted_since.get_or_insert(now);
                    self.wheel.insert(now + ACCEPT_PAUSE, Timer::ResumeAccept(lkey));
                    return;
                }
                // A connection that died in the backlog (ECONNABORTED) or an
                // interrupted call costs only itself.
                Err(e) => {
                    debug!("accept-failed listener={} error={}", Logfmt(&l.cfg.name), Logfmt(&e.to_string()));
                    self.metrics.count_accept_error(&l.cfg.name);
                }
            }
        }
    }

    fn admit(&mut self, lkey: usize, mut stream: TcpStream, peer: SocketAddr, now: Instant) {
        let daemon = &self.config.daemon;
        let cfg = &self.listeners[lkey].cfg;
        let from_peer = self.per_address.get(&peer.ip()).copied().unwrap_or(0);
        let refusal = if self.conns.len() >= daemon.max_clients {
            Some((Refusal::MaxClients, daemon.max_clients))
        } else if daemon.max_per_address > 0 && from_peer >= daemon.max_per_address {
            Some((Refusal::MaxPerAddress, daemon.max_per_address))
        } else {
            None
        };
        if let Some((limit, value)) = refusal {
            warn!("refused peer={} listener={} limit={} value={}", peer, Logfmt(&cfg.name), limit.as_str(), value);
            self.metrics.count_refused(&cfg.name, limit);
            if cfg.protocol == Protocol::Native {
                let mut out = Vec::new();
                crate::wire::native::encode(
                    &Frame::Error { code: error_code::SERVER_FULL, message: "server full" },
                    &mut out,
                );
                // Best effort: the socket is fresh, so 20-odd bytes fit its
                // buffer; a failure only means the client learns by FIN.
                let _ = io::Write::write(&mut stream, &out);
            }
            return;
        }
        if let Err(e) = sockopt::apply(&stream, &cfg.tcp) {
            warn!("sockopt-failed peer={} listener={} error={}", peer, Logfmt(&cfg.name), Logfmt(&e.to_string()));
        }
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if let Err(e) = self.poll.registry().register(&mut stream, Token(key), Interest::READABLE) {
            warn!("register-failed peer={} error={}", peer, Logfmt(&e.to_string()));
            return;
        }
        entry.insert(Conn::new(stream, peer, lkey, cfg.protocol, now));
        *self.per_address.entry(peer.ip()).or_insert(0) += 1;
        // Sessions number connections in accept order, so the one accepted
        // later is the newer one when two say HELLO with the same id.
        self.conns[key].session = self.take_session();
        if self.conns[key].is_online() {
            self.emit_online(key);
        }
        self.arm(key);
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
        let cfg = &self.listeners[conn.listener].cfg;
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
        let cfg = &self.listeners[conn.listener].cfg;
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
        let cfg = &self.listeners[conn.listener].cfg;
        conn.welcome(now, cfg, &mut self.scratch);
        self.ids.insert(id, key);
        self.emit_online(key);
        self.arm(key);
        let conn = &mut self.conns[key];
        let cfg = &self.listeners[conn.listener].cfg;
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
        let deadline = conn.next_deadline(&self.listeners[conn.listener].cfg);
        match (deadline, conn.timer) {
            (Some(at), Some(id)) => self.wheel.reschedule(id, at),
            (Some(at), None) => conn.timer = Some(self.wheel.insert(at, Timer::Conn(key))),
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
        let listener = &self.listeners[conn.listener].cfg.name;
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
                silent: now.saturating_duration_since(conn.last_activity),
                connected: now.saturating_duration_since(conn.since),
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

    fn emit_online(&mut self, key: usize) {
        self.online += 1;
        self.schedule_status(Instant::now());
        let conn = &self.conns[key];
        let id = conn.client_id();
        let event = Event::Online(Client {
            id: &id,
            peer: conn.peer,
            listener: &self.listeners[conn.listener].cfg.name,
            proto: conn.proto,
            session: conn.session,
        });
        publish(&event, &mut self.metrics, &mut self.http, self.poll.registry());
    }

    fn on_http(&mut self, token: Token, now: Instant) {
        let Some(http) = self.http.as_mut() else { return };
        let listeners = &self.listeners;
        let names = |lkey: usize| listeners.get(lkey).map_or("", |l| l.cfg.name.as_str());
        let view = StatusView {
            conns: &self.conns,
            listener_names: &names,
            ids: &self.ids,
            metrics: &self.metrics,
            wheel_timers: self.wheel.len(),
            now,
        };
        http.handle(self.poll.registry(), token, now, &view);
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

    // ---- signals ---------------------------------------------------------

    fn on_signals(&mut self, now: Instant) {
        let pending: Vec<i32> = self.signals.pending().collect();
        for signal in pending {
            match signal {
                SIGTERM | SIGINT => self.begin_shutdown(signal, now),
                SIGHUP => self.reload(now),
                SIGUSR1 => self.log_clients(now),
                _ => {}
            }
        }
    }

    fn begin_shutdown(&mut self, signal: i32, now: Instant) {
        if self.stop_by.is_some() {
            // A second stop signal: the operator wants out now. Every
            // offline event was already emitted when shutdown began.
            info!("stop-now signal={signal}");
            self.stop_by = Some(now);
            return;
        }
        self.notifier.stopping();
        let grace = self.config.daemon.shutdown_grace;
        info!("shutdown signal={} clients={} grace_ms={}", signal, self.conns.len(), grace.as_millis());
        self.stop_by = Some(now + grace);
        for (_, l) in self.listeners.iter_mut() {
            if let Some(mut socket) = l.socket.take() {
                let _ = self.poll.registry().deregister(&mut socket);
            }
        }
        let keys: Vec<usize> = self.conns.iter().filter(|(_, c)| !c.closing).map(|(k, _)| k).collect();
        for key in keys {
            self.say_bye(key);
            self.close(key, OfflineReason::Shutdown, None, now);
        }
    }

    fn reload(&mut self, now: Instant) {
        if self.stop_by.is_some() {
            return;
        }
        let Some(path) = self.config_path.clone() else {
            info!("reload-skipped reason=\"no config file: running on the embedded config\"");
            return;
        };
        self.notifier.reloading();
        match config::load(&path) {
            Ok(new) => {
                self.apply_config(new, now);
                self.reload_error = None;
                self.metrics.count_reload(true);
            }
            Err(e) => {
                error!("reload-failed keeping=running-config error={}", Logfmt(&e.to_string()));
                self.reload_error = Some(e.to_string());
                self.metrics.count_reload(false);
            }
        }
        // READY=1 ends the reload for systemd whether or not the file was
        // accepted: the daemon is serving either way.
        self.notifier.ready(&self.status_line());
    }

    /// Applies a validated config: daemon limits and log level at once;
    /// listeners matched by name. A listener whose address or protocol
    /// changed is closed and reopened; its clients go offline (`shutdown`).
    fn apply_config(&mut self, mut new: Config, now: Instant) {
        if new.daemon.tick != self.config.daemon.tick {
            warn!(
                "reload-tick-ignored running_ms={} configured_ms={} reason=\"tick changes take a restart\"",
                self.config.daemon.tick.as_millis(),
                new.daemon.tick.as_millis()
            );
            new.daemon.tick = self.config.daemon.tick;
        }
        logging::set_level(new.daemon.log_level);
        let (mut added, mut removed, mut changed) = (0, 0, 0);
        let current: Vec<(usize, ListenerConfig, Option<SocketAddr>)> =
            self.listeners.iter().map(|(k, l)| (k, l.cfg.clone(), l.bound_address())).collect();
        for (lkey, old, bound) in current {
            match new.listeners.iter().find(|n| n.name == old.name) {
                // The same socket keeps serving when the address is as
                // configured before, or now names the port that ":0" got.
                Some(n) if (n.address == old.address || Some(n.address) == bound) && n.protocol == old.protocol => {
                    let n = ListenerConfig { address: old.address, ..n.clone() };
                    if n != old {
                        self.update_listener(lkey, n, now);
                        changed += 1;
                    }
                }
                _ => {
                    self.close_listener(lkey, now);
                    removed += 1;
                }
            }
        }
        for cfg in &new.listeners {
            if self.listeners.iter().any(|(_, l)| l.cfg.name == cfg.name) {
                continue;
            }
            match self.open_listener(cfg.clone(), None) {
                Ok(()) => added += 1,
                Err(e) => error!("listener-failed listener={} error={}", Logfmt(&cfg.name), Logfmt(&e.to_string())),
            }
        }
        self.apply_http(new.http.clone(), now);
        self.config = new;
        info!("reloaded listeners={} added={} removed={} changed={}", self.listeners.len(), added, removed, changed);
    }

    /// Applies a reloaded `[http]` table: new limits in place, or the status
    /// API closed and reopened when its address changed, added or removed.
    fn apply_http(&mut self, wanted: Option<HttpConfig>, now: Instant) {
        if let (Some(http), Some(cfg)) = (&mut self.http, &wanted) {
            if http.config().address == cfg.address {
                http.set_limits(cfg.clone());
                return;
            }
        }
        if let Some(mut old) = self.http.take() {
            old.close_all(self.poll.registry());
            info!("http-closed address={}", old.address());
        }
        if let Some(cfg) = wanted {
            let address = cfg.address;
            match Http::bind(cfg, self.poll.registry(), HTTP_BASE, now) {
                Ok(http) => self.http = Some(http),
                Err(e) => error!("http-failed address={} error={}", address, Logfmt(&e.to_string())),
            }
        }
    }

    /// Applies new settings to a running listener and its clients: fresh
    /// socket options, re-armed deadlines, and a fresh WELCOME to native
    /// clients when their interval or timeout changed.
    fn update_listener(&mut self, lkey: usize, cfg: ListenerConfig, now: Instant) {
        let old = std::mem::replace(&mut self.listeners[lkey].cfg, cfg);
        let l = &self.listeners[lkey];
        let timing = old.interval != l.cfg.interval || old.timeout != l.cfg.timeout;
        let tcp = old.tcp != l.cfg.tcp;
        if let (true, Some(socket)) = (tcp, &l.socket) {
            if let Err(e) = sockopt::apply(socket, &l.cfg.tcp) {
                warn!("sockopt-failed listener={} error={}", Logfmt(&l.cfg.name), Logfmt(&e.to_string()));
            }
        }
        info!(
            "listener-updated listener={} interval_ms={} timeout_ms={}",
            Logfmt(&l.cfg.name),
            l.cfg.interval.as_millis(),
            l.cfg.timeout.as_millis()
        );
        let keys: Vec<usize> =
            self.conns.iter().filter(|(_, c)| c.listener == lkey && !c.closing).map(|(k, _)| k).collect();
        for key in keys {
            let conn = &mut self.conns[key];
            let cfg = &self.listeners[lkey].cfg;
            if tcp {
                if let Err(e) = sockopt::apply(&conn.stream, &cfg.tcp) {
                    warn!("sockopt-failed peer={} error={}", conn.peer, Logfmt(&e.to_string()));
                }
            }
            if timing && conn.proto == Protocol::Native && conn.is_online() {
                conn.queue_welcome(cfg, &mut self.scratch);
            }
            self.settle(key, Progress::Continue, now);
            if !self.conns[key].closing {
                self.arm(key);
            }
        }
    }

    fn log_clients(&self, now: Instant) {
        let names = |lkey: usize| self.listeners.get(lkey).map_or("", |l| l.cfg.name.as_str());
        let view = StatusView {
            conns: &self.conns,
            listener_names: &names,
            ids: &self.ids,
            metrics: &self.metrics,
            wheel_timers: self.wheel.len(),
            now,
        };
        let online: Vec<&Conn> = view.online().collect();
        info!("clients online={} connections={}", online.len(), self.conns.len());
        for conn in online {
            info!(
                "client client={} peer={} listener={} proto={} session={} online_ms={} silent_ms={}",
                Logfmt(&conn.client_id()),
                conn.peer,
                Logfmt(&self.listeners[conn.listener].cfg.name),
                conn.proto,
                conn.session,
                now.saturating_duration_since(conn.since).as_millis(),
                now.saturating_duration_since(conn.last_activity).as_millis()
            );
        }
    }
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

/// Removes and returns the activated socket meant for `cfg`: the one whose
/// `FileDescriptorName=` is the listener's name, else the one bound to its
/// address.
fn take_activated(activated: &mut Vec<ActivatedSocket>, cfg: &ListenerConfig) -> Option<OwnedFd> {
    let index = activated
        .iter()
        .position(|s| s.name.as_deref() == Some(cfg.name.as_str()))
        .or_else(|| activated.iter().position(|s| s.address == Some(cfg.address)))?;
    Some(activated.remove(index).fd)
}

fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}

/// Reads and validates the config for the binary: the file at `path`, or the
/// embedded default.
pub fn load_config(path: Option<&std::path::Path>) -> Result<Config, config::ConfigError> {
    match path {
        Some(p) => config::load(p),
        None => config::embedded(),
    }
}
