//! The event loop: one `mio::Poll` for the listeners, the client sockets and
//! the signals, one timer wheel for every deadline, one thread.
//!
//! The loop owns the slot table (`Slab<Slot>`: each [`Conn`] beside the
//! flags only the loop uses), the listeners, the id registry and the wheel.
//! It reads each socket into one shared buffer, dispatches the bytes to the
//! connection's session, resolves what needs other connections (a HELLO
//! replacing an older one), and fans events out to the sinks. It knows
//! nothing of wire formats: every frame is made by a [`Session`].
//!
//! This file holds the loop and the connections; `listeners.rs` binds,
//! accepts and admits; `control.rs` stops, reloads and lists clients.
//!
//! Invariants:
//! - Exactly one offline event per online event: `Server::close` is the
//!   only place a connection leaves the online state, and it runs once per
//!   connection (`Slot::is_closing`).
//! - A closed connection is freed only at the end of the round
//!   (`end_round`; or, while shutting down, once its BYE is written), so
//!   a stale event in the same batch finds it marked `closing` instead of a
//!   reused slot.
//! - A reply reaches only its own connection: the scratch buffer is lent to
//!   one `Conn` call at a time and comes back empty.
//! - One `recv` per heartbeat: a short read ends reading a socket for the
//!   round (see `Server::read`).
//! - Every armed wheel timer belongs to a live listener or a connection that
//!   is not closing; `close` cancels the connection's timer.
//! - The poll sleeps until the wheel's next expiry (never a fixed busy
//!   tick), or not at all while a connection has read budget left over.
//!   After a busy round it may first nap up to `daemon.coalesce`
//!   (`coalesce.rs`), which ends at that same expiry and at any signal.
//! - A connection whose peer closed before it was served (its FIN or RST
//!   waiting behind its HELLO, or behind nothing at a legacy/raw accept)
//!   never goes online and replaces nobody: it is counted as abandoned and
//!   summed up in one line per second. A probe HELLO never goes online
//!   either, and replaces nobody.
//! - Drained before convicted (R1): a timeout verdict is given only after
//!   the connection's socket was read and gave nothing, and every read's
//!   bytes are stamped with the clock read after that read, never with the
//!   round's wake-up time.
//! - The loop knows when it was late (R2): each round measures its own
//!   lateness and length (`stall.rs`); a stall past `daemon.max_local_pause`
//!   is logged once (`loop-stalled`), counted, and discounted from every
//!   silence verdict and deadline. FIN, reset and read errors are not.
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

use log::{debug, info, warn};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Registry, Token};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;

use crate::config::{self, Config, ListenerConfig};
use crate::conn::{Conn, Recv};
use crate::event::{self, Client, Event, Logfmt, OfflineReason};
use crate::hooks::Hooks;
use crate::http::Http;
use crate::metrics::Metrics;
use crate::session::{Next, Session};
use crate::status::{ListenerNames, StatusView};
use crate::systemd::{self, Notifier};
use crate::trust;
use crate::wheel::{TimerId, Wheel};

mod coalesce;
mod control;
mod keep;
mod listeners;
mod stall;

use listeners::{serves_configured, take_activated};

/// Buckets in the timer wheel. With the default 100 ms tick one revolution
/// is 102.4 s, longer than any sensible heartbeat timeout, so most timers
/// fire on their first visit.
const WHEEL_SLOTS: usize = 1024;

/// Size of the read buffer shared by all connections.
const READ_BUF: usize = 64 * 1024;

/// Bytes one connection may read per poll round before the others get a
/// turn. The socket stays readable; the loop comes back to it without
/// sleeping. Small (R6, fair shares): 16 KiB is some 4,000 empty PINGs or
/// 450 of 32 bytes, whose replies take the loop well under a millisecond,
/// so a client pipelining PINGs as fast as it can holds each round for
/// that long and not for the thousands of replies a larger budget let it
/// queue ahead of its neighbours.
const READ_BUDGET: usize = 16 * 1024;

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

/// The signals the loop handles (`control.rs`).
const SIGNALS: [libc::c_int; 4] = [SIGTERM, SIGINT, SIGHUP, SIGUSR1];

/// The token of the signal pipe.
const SIGNAL_TOKEN: Token = Token(usize::MAX);

/// How long abandoned connections are summed up before one
/// `abandoned count=N` line: a backlog of ghosts makes one line, not one
/// per connection.
const ABANDONED_EVERY: Duration = Duration::from_secs(1);

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
    /// Log the abandoned connections counted since the episode began.
    Abandoned,
    /// Retry store messages the notify socket refused (`keep.rs`).
    KeepRetry,
}

/// One connection and the flags only the loop uses for it.
pub(crate) struct Slot {
    conn: Conn,
    /// Session number, assigned at accept in accept order.
    session: u64,
    flags: Flags,
}

/// The loop's flags for one connection, in 8 bytes where an
/// `Option<TimerId>` and two bools would pad the slot by 8 more: idle
/// memory per connection is a target. A closing connection has no timer.
#[derive(Debug, Clone, Copy)]
enum Flags {
    /// Serving, no timer armed.
    Idle { writable: bool },
    /// Serving, with this wheel timer armed.
    Armed { timer: TimerId, writable: bool },
    /// Closed by the loop: its events are ignored until it is freed at the
    /// end of the round (or, during shutdown, once its BYE is written).
    Closing { writable: bool },
}

impl Slot {
    fn new(conn: Conn, session: u64) -> Slot {
        Slot { conn, session, flags: Flags::Idle { writable: false } }
    }

    /// The armed wheel timer, if any.
    fn timer(&self) -> Option<TimerId> {
        match self.flags {
            Flags::Armed { timer, .. } => Some(timer),
            Flags::Idle { .. } | Flags::Closing { .. } => None,
        }
    }

    /// Records the armed timer (or none); a closing slot keeps none.
    fn set_timer(&mut self, timer: Option<TimerId>) {
        let writable = self.writable();
        self.flags = match (self.flags, timer) {
            (Flags::Closing { .. }, _) => return,
            (_, Some(timer)) => Flags::Armed { timer, writable },
            (_, None) => Flags::Idle { writable },
        };
    }

    /// True when WRITABLE interest is registered with the poll.
    fn writable(&self) -> bool {
        match self.flags {
            Flags::Idle { writable } | Flags::Armed { writable, .. } | Flags::Closing { writable } => writable,
        }
    }

    fn set_writable(&mut self, registered: bool) {
        match &mut self.flags {
            Flags::Idle { writable } | Flags::Armed { writable, .. } | Flags::Closing { writable } => {
                *writable = registered;
            }
        }
    }

    /// Marks the slot closing; returns the timer to cancel.
    fn begin_close(&mut self) -> Option<TimerId> {
        let timer = self.timer();
        self.flags = Flags::Closing { writable: self.writable() };
        timer
    }

    /// The connection.
    pub fn conn(&self) -> &Conn {
        &self.conn
    }

    /// The session number: accept order, unique for the daemon's life.
    pub fn session_number(&self) -> u64 {
        self.session
    }

    /// True once the loop closed it (it is freed at the end of the round).
    pub fn is_closing(&self) -> bool {
        matches!(self.flags, Flags::Closing { .. })
    }
}

/// What a poll event says about a connection's socket.
#[derive(Debug, Clone, Copy)]
struct Ready {
    readable: bool,
    /// The peer closed or the socket failed: read on to the FIN or error.
    closed: bool,
    writable: bool,
}

impl Ready {
    fn of(event: &mio::event::Event) -> Ready {
        Ready {
            readable: event.is_readable(),
            closed: event.is_read_closed() || event.is_error(),
            writable: event.is_writable(),
        }
    }
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
    /// The listening socket carries `cfg.tcp` (false after setting it
    /// failed: then every accepted socket gets the options set).
    options_set: bool,
    /// Sockets accepted now inherit `cfg.tcp` from the listener, so admit
    /// sets no option (`sockopt::apply_accepted`). False while the backlog
    /// may hold connections cloned before the listener got its options (an
    /// adopted socket, a reload that changed `[tcp]`) or while
    /// `options_set` is false; true again at the accept loop's next
    /// `WouldBlock` once the options are set.
    inherits_tcp: bool,
}

impl ListenerNames for Slab<Listener> {
    fn name(&self, key: usize) -> &str {
        self.get(key).map_or("", |l| l.cfg.name.as_str())
    }

    fn configs(&self) -> Vec<&ListenerConfig> {
        self.iter().map(|(_, l)| &l.cfg).collect()
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
    conns: Slab<Slot>,
    wheel: Wheel<Timer>,
    /// Online native clients by HELLO id, for replacement.
    ids: HashMap<Rc<str>, usize>,
    /// Open connections per peer IP, for `max_per_address`.
    per_address: HashMap<IpAddr, usize>,
    next_session: u64,
    signals: Signals,
    /// The read buffer shared by all connections.
    buf: Vec<u8>,
    /// Output being built, lent to one `Conn` call at a time, which writes
    /// it to its own socket or queue and returns it empty.
    scratch: Vec<u8>,
    /// Closed this round; freed after the batch.
    doomed: Vec<usize>,
    /// Connections whose read budget ran out while still readable, with
    /// whether their event said the peer closed.
    again: Vec<(usize, bool)>,
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
    /// Connections abandoned since the last `abandoned` line; while
    /// non-zero a `Timer::Abandoned` is armed.
    abandoned: u64,
    /// How the last reload failed ("reload failed …"), shown in
    /// `STATUS=` until a reload succeeds.
    reload_error: Option<String>,
    /// The status API, when `[http]` is configured.
    http: Option<Http>,
    /// The `[[hook]]` programs, their queue and running children.
    hooks: Hooks,
    metrics: Metrics,
    /// Naps after busy rounds (`daemon.coalesce`).
    coalesce: coalesce::Coalescer,
    /// The loop's recent stalls, which silence verdicts discount (R2).
    stalls: stall::Stalls,
    /// The fd store and the state records, when connections are kept
    /// across restarts (`keep.rs`).
    keep: Option<crate::fdstore::Keeper>,
    /// Session numbers reserved in the state directory, under systemd.
    reserve: Option<crate::fdstore::SessionReserve>,
    /// The debug build's pause inside a round (`HEARTBEATD_DEBUG_STALL`).
    #[cfg(debug_assertions)]
    debug_stall: Option<stall::DebugStall>,
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
        let hooks = Hooks::new(&config, poll.registry()).map_err(failed("registering SIGCHLD for hooks"))?;
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
            abandoned: 0,
            reload_error: None,
            http: None,
            hooks,
            metrics: Metrics::new(),
            coalesce: coalesce::Coalescer::new(&SIGNALS).map_err(failed("creating the coalescing poll"))?,
            config: config.clone(),
            stalls: stall::Stalls::default(),
            keep: None,
            reserve: None,
            #[cfg(debug_assertions)]
            debug_stall: stall::DebugStall::from_env(),
        };
        let mut activated = systemd::take_listen_fds();
        let mut kept = keep::Kept::take(&mut activated);
        server.keep_init(&mut kept);
        for cfg in config.listeners {
            let adopted = kept.listener(&cfg).or_else(|| take_activated(&mut activated, &cfg));
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
        server.restore(kept, Instant::now());
        if let Some(every) = server.watchdog {
            server.wheel.insert(now + every, Timer::Watchdog);
        }
        server.notifier.ready(&server.status_line());
        Ok(server)
    }

    /// Runs until SIGTERM or SIGINT and a graceful shutdown. Returns an
    /// error only if the poll itself fails.
    pub fn run(&mut self) -> Result<(), ServerError> {
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        let mut expired = Vec::new();
        // When the previous round's timers ran: its tail counts toward the
        // next round's stall (`stall::measure`).
        let mut previous = Instant::now();
        loop {
            let before = Instant::now();
            let mut timeout = self.poll_timeout(before);
            // The deadline this round sleeps for; the coalescing nap ends
            // at the same one, so it never counts as lateness.
            let deadline = timeout.and_then(|t| before.checked_add(t));
            if self.coalesce.nap(self.config.daemon.coalesce, timeout) {
                timeout = self.poll_timeout(Instant::now());
            }
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(ServerError { op: "polling".into(), source: e });
                }
                // A signal cut the sleep short: a round without events, so
                // the sleep is not mistaken for the next round's tail.
                events.clear();
            }
            let woke = Instant::now();
            self.coalesce
                .observe(woke, coalesce::Round::of(&events, |Token(t)| (LISTENER_BASE..HTTP_BASE).contains(&t)));
            for event in events.iter() {
                match event.token() {
                    SIGNAL_TOKEN => self.on_signals(woke),
                    token if Hooks::owns(token) => self.hooks.on_ready(self.poll.registry(), token, woke),
                    token @ Token(t) if t >= HTTP_BASE => self.on_http(token, woke),
                    Token(t) if t >= LISTENER_BASE => self.accept(t - LISTENER_BASE, woke),
                    Token(key) => self.on_conn_event(key, Ready::of(event), woke),
                }
            }
            self.serve_leftovers(woke);
            // A fresh clock for the verdicts: the batch may have taken long
            // (or been paused), and its reads stamped their own times.
            let now = Instant::now();
            self.note_stall(stall::measure(previous, before, deadline, woke, now), now);
            previous = now;
            self.fire_timers(now, &mut expired);
            // Log lines a stuck output did not take wait in a bounded
            // buffer; each round writes what it takes now (R3).
            crate::logging::flush();
            if self.end_round(now) {
                return Ok(());
            }
        }
    }

    /// Records a stall longer than `daemon.max_local_pause`, which every
    /// silence verdict from now on discounts, and says so once.
    fn note_stall(&mut self, stall: Duration, now: Instant) {
        self.metrics.set_round_lag(stall);
        if stall <= self.config.daemon.max_local_pause {
            return;
        }
        self.stalls.record(now, stall);
        self.metrics.count_loop_stall(stall);
        warn!("loop-stalled stall_ms={} clients={}", stall.as_millis(), self.online);
    }

    /// Serves what a budget cut short earlier in the round: connections with
    /// bytes left to read, listeners with connections left to accept.
    fn serve_leftovers(&mut self, now: Instant) {
        for (key, closed) in std::mem::take(&mut self.again) {
            self.on_conn_event(key, Ready { readable: true, closed, writable: false }, now);
        }
        for lkey in std::mem::take(&mut self.accept_again) {
            self.accept(lkey, now);
        }
    }

    /// Runs every wheel timer due at `now`, and the HTTP server's deadlines.
    fn fire_timers(&mut self, now: Instant, expired: &mut Vec<Timer>) {
        self.wheel.advance(now, expired);
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
                Timer::Abandoned => {
                    info!("abandoned count={}", self.abandoned);
                    self.abandoned = 0;
                }
                Timer::KeepRetry => self.keep_retry(now),
            }
        }
        if let Some(mut http) = self.http.take() {
            if http.next_deadline().is_some_and(|at| at <= now) {
                http.on_time(self.poll.registry(), now, &self.status_view(now));
            }
            self.http = Some(http);
        }
        if self.hooks.next_deadline().is_some_and(|at| at <= now) {
            self.hooks.on_time(self.poll.registry(), now);
        }
    }

    /// The end of a round: frees the connections closed during it, counts
    /// the round, and says whether a shutdown is complete.
    fn end_round(&mut self, now: Instant) -> bool {
        self.free_doomed();
        self.metrics.count_loop_iteration();
        self.keep_round(now);
        match self.stop_by {
            Some(_) if self.handed_over() => true,
            Some(stop_by) if self.conns.is_empty() || now >= stop_by => {
                // A burst's summary still waiting for its timer is said now.
                if self.abandoned > 0 {
                    info!("abandoned count={}", self.abandoned);
                }
                info!("stopped clients_dropped={}", self.conns.len());
                // The last STATUS= stays in `systemctl status` after the
                // exit: it must not keep showing a client count.
                self.notifier.status(&stopped_status(self.conns.len()));
                true
            }
            _ => false,
        }
    }

    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        if !self.again.is_empty() || !self.accept_again.is_empty() {
            return Some(Duration::ZERO);
        }
        let http = self.http.as_ref().and_then(Http::next_deadline);
        let log = crate::logging::pending().then(|| now + crate::logging::RETRY);
        let next = [self.wheel.next_expiry(), self.stop_by, http, self.hooks.next_deadline(), log]
            .into_iter()
            .flatten()
            .min()?;
        Some(next.saturating_duration_since(now))
    }

    // ---- connections -----------------------------------------------------

    fn on_conn_event(&mut self, key: usize, ready: Ready, now: Instant) {
        let Some(slot) = self.conns.get_mut(key) else {
            return;
        };
        if slot.is_closing() {
            if ready.writable && self.stop_by.is_some() {
                self.drain_after_close(key);
            }
            return;
        }
        #[cfg(debug_assertions)]
        if let Some(hook) = &mut self.debug_stall {
            hook.on_conn_event();
        }
        let mut now = now;
        let mut next = Next::Continue;
        if ready.readable || ready.closed {
            next = self.read(key, ready.closed, &mut now);
        }
        if next == Next::Continue && ready.writable && self.conns[key].conn.wants_write() {
            next = self.conns[key].conn.flush();
        }
        self.settle(key, next, now);
    }

    /// Reads the connection's socket into the shared buffer and dispatches
    /// each chunk, until the socket is drained, the read budget is spent (the
    /// key goes to `again`) or a decision other than `Continue`.
    ///
    /// A read shorter than asked for drained the socket: the kernel had no
    /// more. Reading on would cost an `EAGAIN` per heartbeat, so it stops
    /// there unless the event said the peer closed or failed (`closed`):
    /// then it reads on to the FIN (0) or the error, which name the reason.
    /// Epoll is edge-triggered, and every later arrival of data, FIN or RST
    /// raises a new event, so nothing is missed.
    ///
    /// Each read's bytes are stamped with the clock read right after it,
    /// left in `now` for the caller (R1): a pause anywhere before the read
    /// (earlier in the batch, a page fault, SIGSTOP) cannot make a fresh
    /// heartbeat look old. Per read, not per batch, because such a pause
    /// can land between any two reads; it costs one vDSO `clock_gettime`
    /// (some 20 ns) beside a `recv` syscall of a microsecond or more.
    fn read(&mut self, key: usize, closed: bool, now: &mut Instant) -> Next {
        let mut total = 0;
        loop {
            // Never past the budget: one read may not hold the loop longer
            // than the budget allows.
            let want = (READ_BUDGET - total).min(self.buf.len());
            let n = match self.conns[key].conn.recv(&mut self.buf[..want]) {
                Recv::Data(n) => n,
                Recv::WouldBlock => return Next::Continue,
                Recv::Closed(next) => {
                    *now = Instant::now();
                    return next;
                }
            };
            *now = Instant::now();
            let next = self.dispatch(key, n, *now);
            self.keep_touch(key);
            if next != Next::Continue || (n < want && !closed) {
                return next;
            }
            total += n;
            if total >= READ_BUDGET {
                self.again.push((key, closed));
                return Next::Continue;
            }
        }
    }

    /// Feeds `buf[..len]` to the connection's session, resolving each HELLO
    /// before the bytes that follow it.
    fn dispatch(&mut self, key: usize, len: usize, now: Instant) -> Next {
        let mut start = 0;
        loop {
            let slot = &mut self.conns[key];
            let cfg = &self.listeners[slot.conn.listener()].cfg;
            let (next, used) = slot.conn.ingest(&self.buf[start..len], now, cfg, &mut self.scratch);
            start += used;
            match next {
                Next::Hello(id) => {
                    let next = self.on_hello(key, id, now);
                    if next != Next::Continue {
                        return next;
                    }
                }
                Next::Probe => {
                    let next = self.on_probe(key, now);
                    if next != Next::Continue {
                        return next;
                    }
                }
                other => return other,
            }
        }
    }

    fn on_conn_timer(&mut self, key: usize, now: Instant) {
        let Some(slot) = self.conns.get_mut(key) else {
            return;
        };
        slot.set_timer(None);
        if slot.is_closing() {
            return;
        }
        let mut now = now;
        let mut judged = self.verdict_time(key, now);
        let cfg = &self.listeners[self.conns[key].conn.listener()].cfg;
        if self.conns[key].conn.session().overdue(judged, cfg) {
            // R1: bytes waiting in the kernel are activity, not silence.
            // Read them through the normal path before any verdict; a FIN,
            // reset or error found there closes with its own reason.
            let next = self.read(key, false, &mut now);
            if next != Next::Continue || self.conns[key].is_closing() {
                self.settle(key, next, now);
                return;
            }
            judged = self.verdict_time(key, now);
        }
        let slot = &mut self.conns[key];
        let cfg = &self.listeners[slot.conn.listener()].cfg;
        let next = slot.conn.on_timer(judged, cfg, &mut self.scratch);
        self.settle(key, next, now);
        if !self.conns[key].is_closing() {
            self.arm(key);
        }
    }

    /// The instant a connection's deadline is judged at: `now` with the
    /// loop's own stalls since its silence began to count taken out (R2).
    fn verdict_time(&self, key: usize, now: Instant) -> Instant {
        self.stalls.verdict_time(self.conns[key].conn.session().silence_from(), now)
    }

    /// Finishes a handler: closes on `Close`, else keeps the poll interest
    /// in step with the output queue. (Replies were written when made.)
    fn settle(&mut self, key: usize, next: Next, now: Instant) {
        match next {
            Next::Close(reason, detail) => self.close(key, reason, detail, now),
            Next::Hello(_) | Next::Probe | Next::Continue => self.update_interest(key, now),
        }
    }

    /// Resolves a HELLO: replaces the connection online with the same id,
    /// if any, and puts this one online. The later HELLO wins, whatever the
    /// accept order (PROTOCOL.md §1.5), unless it proves less than the one
    /// online (`trust::may_replace`): then it is refused and the one online
    /// stays.
    fn on_hello(&mut self, key: usize, id: Rc<str>, now: Instant) -> Next {
        if let Some(gone) = self.ghost(key, now) {
            return gone;
        }
        let session = self.conns[key].session;
        if let Some(&online) = self.ids.get(&id) {
            let proved = self.conns[key].conn.session().auth();
            if !trust::may_replace(proved, self.conns[online].conn.session().auth()) {
                let _ = self.conns[key].conn.say(&mut self.scratch, Session::takeover_refused);
                self.log_takeover_refused(key, &id, proved.as_str());
                let detail = format!("takeover of id {id} refused");
                self.end(key, OfflineReason::ProtocolError, Some(detail), now, true);
                return Next::Close(OfflineReason::ProtocolError, None);
            }
            // Best effort: the older connection is closed either way.
            let _ = self.conns[online].conn.say(&mut self.scratch, Session::replaced);
            self.close(online, OfflineReason::Replaced, Some(format!("by session {session}")), now);
        }
        let slot = &mut self.conns[key];
        let cfg = &self.listeners[slot.conn.listener()].cfg;
        let next = slot.conn.welcome(now, session, cfg, &mut self.scratch);
        self.ids.insert(id, key);
        self.emit_online(key, now);
        self.arm(key);
        next
    }

    /// Answers a probe HELLO with WELCOME: counted, never online, replacing
    /// nobody; its deadline stays the handshake timeout.
    fn on_probe(&mut self, key: usize, now: Instant) -> Next {
        if let Some(gone) = self.ghost(key, now) {
            return gone;
        }
        self.metrics.count_probe();
        let slot = &mut self.conns[key];
        let cfg = &self.listeners[slot.conn.listener()].cfg;
        let next = slot.conn.welcome(now, slot.session, cfg, &mut self.scratch);
        self.arm(key);
        next
    }

    /// Closes, quietly and as abandoned, a connection whose peer closed
    /// before its HELLO was served: a client that gave up while the HELLO
    /// waited (a frozen daemon, a backlog). A ghost neither goes online
    /// nor replaces the live connection with its id.
    fn ghost(&mut self, key: usize, now: Instant) -> Option<Next> {
        if !peer_gone(self.conns[key].conn.stream()) {
            return None;
        }
        self.abandon(now);
        self.end(key, OfflineReason::Closed, None, now, true);
        Some(Next::Close(OfflineReason::Closed, None))
    }

    fn take_session(&mut self) -> u64 {
        let session = self.next_session;
        self.next_session += 1;
        self.keep_numbered(self.next_session);
        session
    }

    /// Arms (or moves) the connection's timer at its next deadline.
    fn arm(&mut self, key: usize) {
        let slot = &mut self.conns[key];
        let session = slot.conn.session();
        // Pushed back by the loop's stalls since silence began to count
        // (the last activity, or a later fresh WELCOME), as the verdict
        // discounts them (R2); no stall, no change.
        let extension = self.stalls.extension(session.silence_from());
        let deadline = session.next_deadline(&self.listeners[slot.conn.listener()].cfg).map(|at| at + extension);
        match (deadline, slot.timer()) {
            (Some(at), Some(id)) => self.wheel.reschedule(id, at),
            (Some(at), None) => slot.set_timer(Some(self.wheel.insert(at, Timer::Conn(timer_key(key))))),
            (None, Some(id)) => {
                self.wheel.cancel(id);
                slot.set_timer(None);
            }
            (None, None) => {}
        }
        self.keep_save(key);
    }

    fn update_interest(&mut self, key: usize, now: Instant) {
        let slot = &mut self.conns[key];
        let want = slot.conn.wants_write();
        if want == slot.writable() {
            return;
        }
        let interest = if want { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
        match self.poll.registry().reregister(slot.conn.stream_mut(), Token(key), interest) {
            Ok(()) => slot.set_writable(want),
            Err(e) => self.close(key, OfflineReason::Error, Some(format!("reregister: {e}")), now),
        }
    }

    /// Ends a connection: emits the offline event if it was online, and
    /// schedules it to be freed. Its last frame (an ERROR or BYE) was
    /// written when it was made. Runs at most once per connection.
    fn close(&mut self, key: usize, reason: OfflineReason, detail: Option<String>, now: Instant) {
        self.end(key, reason, detail, now, false);
    }

    /// Counts a connection abandoned by its peer before it was served; the
    /// first of an episode arms the one line that sums them up.
    fn abandon(&mut self, now: Instant) {
        self.metrics.count_abandoned();
        if self.abandoned == 0 {
            self.wheel.insert(now + ABANDONED_EVERY, Timer::Abandoned);
        }
        self.abandoned += 1;
    }

    /// [`Server::close`], with the `handshake-failed` line left out when
    /// `quiet` (an abandoned connection is counted, not logged, alone).
    fn end(&mut self, key: usize, reason: OfflineReason, detail: Option<String>, now: Instant, quiet: bool) {
        let Some(slot) = self.conns.get_mut(key) else {
            return;
        };
        if slot.is_closing() {
            return;
        }
        if let Some(id) = slot.begin_close() {
            self.wheel.cancel(id);
        }
        self.keep_forget(key, now);
        let slot = &self.conns[key];
        let conn = &slot.conn;
        let session = conn.session();
        let listener = &self.listeners[conn.listener()].cfg.name;
        self.metrics.count_closed_heartbeats(listener, session.heartbeats());
        self.metrics.count_closed_messages(listener, session.messages());
        if reason == OfflineReason::ProtocolError {
            self.metrics.count_protocol_error(listener);
        }
        let was_online = session.is_online();
        if was_online {
            self.online -= 1;
            let id = conn.client_id();
            let event = Event::Offline {
                client: Client { id: &id, peer: conn.peer(), listener, proto: session.proto(), session: slot.session },
                reason,
                silent: now.saturating_duration_since(session.last_activity()),
                connected: now.saturating_duration_since(session.since()),
                detail: detail.as_deref(),
            };
            let sinks = Sinks { metrics: &mut self.metrics, http: &mut self.http, hooks: &mut self.hooks };
            publish(&event, sinks, self.poll.registry(), true, now);
            if let Some(id) = session.id() {
                if self.ids.get(id) == Some(&key) {
                    self.ids.remove(id);
                }
            }
        } else if session.is_probe() {
            // A probe leaves no trace in presence, nor a line per check.
            debug!("probe-closed peer={} listener={} reason={}", conn.peer(), Logfmt(listener), reason.as_str());
        } else if let Some(id) = session.claimed_id().filter(|id| !quiet && self.ids.contains_key(*id)) {
            // A HELLO refused for its credential while its id is online.
            let id = Rc::clone(id);
            self.log_takeover_refused(key, &id, "none");
        } else if !quiet {
            info!(
                "handshake-failed peer={} listener={} error={}",
                conn.peer(),
                Logfmt(listener),
                Logfmt(detail.as_deref().unwrap_or(reason.as_str()))
            );
        }
        if was_online {
            self.schedule_status(now);
        }
        let slot = &mut self.conns[key];
        let ip = slot.conn.peer().ip();
        if let Some(n) = self.per_address.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_address.remove(&ip);
            }
        }
        // A socket that failed (reset, retransmissions unacknowledged, an
        // error) takes no alert; any other end is announced over TLS.
        if !matches!(reason, OfflineReason::Reset | OfflineReason::TcpTimeout | OfflineReason::Error) {
            slot.conn.close_notify();
        }
        // While stopping, a BYE that did not fit the socket buffer gets the
        // rest of the grace period to drain.
        if self.stop_by.is_some() && slot.conn.wants_write() {
            if !slot.writable() {
                let interest = Interest::READABLE | Interest::WRITABLE;
                let registered = self.poll.registry().reregister(slot.conn.stream_mut(), Token(key), interest).is_ok();
                slot.set_writable(registered);
            }
            if slot.writable() {
                return;
            }
        }
        self.doomed.push(key);
    }

    /// The one line of a refused takeover: which id, who tried (peer,
    /// listener, session) and what it proved, which session holds the id;
    /// counted in `/metrics`. No token is ever logged.
    fn log_takeover_refused(&mut self, key: usize, id: &str, proved: &str) {
        self.metrics.count_takeover_refused();
        let slot = &self.conns[key];
        let holder = self.ids.get(id).map_or(0, |&online| self.conns[online].session);
        warn!(
            "takeover-refused id={} peer={} listener={} session={} holder={holder} proved={proved}",
            Logfmt(id),
            slot.conn.peer(),
            Logfmt(&self.listeners[slot.conn.listener()].cfg.name),
            slot.session
        );
    }

    fn drain_after_close(&mut self, key: usize) {
        let conn = &mut self.conns[key].conn;
        if conn.flush() != Next::Continue || !conn.wants_write() {
            self.doomed.push(key);
        }
    }

    /// Frees the connections closed this round (see [`Server::end_round`]).
    /// Until now their slots stayed taken, so a stale event of the same
    /// batch found them `closing` instead of a reused slot.
    fn free_doomed(&mut self) {
        for key in self.doomed.drain(..) {
            if let Some(mut slot) = self.conns.try_remove(key) {
                // Closing the fd removes it from epoll anyway; deregistering
                // first is tidy and its failure harmless.
                let _ = self.poll.registry().deregister(slot.conn.stream_mut());
            }
        }
    }

    fn emit_online(&mut self, key: usize, now: Instant) {
        self.online += 1;
        self.schedule_status(now);
        let slot = &self.conns[key];
        let conn = &slot.conn;
        let id = conn.client_id();
        let event = Event::Online(Client {
            id: &id,
            peer: conn.peer(),
            listener: &self.listeners[conn.listener()].cfg.name,
            proto: conn.session().proto(),
            session: slot.session,
        });
        let sinks = Sinks { metrics: &mut self.metrics, http: &mut self.http, hooks: &mut self.hooks };
        publish(&event, sinks, self.poll.registry(), true, now);
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
            hooks: &self.hooks,
            wheel_timers: self.wheel.len(),
            online: self.online,
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
        let base = format!(
            "{} online on {}",
            plural(self.online, "client", "clients"),
            plural(self.listeners.len(), "listener", "listeners")
        );
        match &self.reload_error {
            Some(e) => format!("{base}; last {e}"),
            None => base,
        }
    }

    /// Sends BYE `shutdown` (native), before the close that follows.
    fn say_bye(&mut self, key: usize) {
        // Best effort: the connection is closed as `shutdown` either way.
        let _ = self.conns[key].conn.say(&mut self.scratch, Session::shutdown);
    }
}

/// `n` with the noun that fits it: "1 client", "2 clients", "0 clients".
pub(crate) fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The final `STATUS=`: "stopped", or how many connections the grace
/// period cut.
fn stopped_status(cut: usize) -> String {
    match cut {
        0 => "stopped".to_owned(),
        n => format!("stopped: {} cut at shutdown_grace", plural(n, "connection", "connections")),
    }
}

/// True when the peer already closed or reset the connection and nothing
/// it sent is left unread: a peek of one byte finds the FIN (0) or an
/// error. One syscall, paid per HELLO and per legacy/raw accept, never per
/// heartbeat. Bytes still waiting say nothing yet: they are read first.
pub(super) fn peer_gone(stream: &mio::net::TcpStream) -> bool {
    match stream.peek(&mut [0; 1]) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted),
    }
}

/// A slab key as a timer payload. Config caps `max_clients` far below
/// `u32::MAX`, so keys fit; `u32::MAX` would name no connection, and its
/// timer would find nothing to do.
fn timer_key(key: usize) -> u32 {
    u32::try_from(key).unwrap_or(u32::MAX)
}

/// The sinks of [`publish`], borrowed from the server beside the event's
/// own borrows of the connection and listener tables.
struct Sinks<'a> {
    metrics: &'a mut Metrics,
    http: &'a mut Option<Http>,
    hooks: &'a mut Hooks,
}

/// Hands an event to every sink: the log or journal, the counters, the
/// HTTP feed, the hooks. `live` is false for a state the daemon takes over
/// rather than sees change (a connection restored across a restart): such
/// an event runs no hook.
fn publish(event: &Event<'_>, sinks: Sinks<'_>, registry: &Registry, live: bool, now: Instant) {
    event::emit(event);
    sinks.metrics.record(event);
    if let Some(http) = sinks.http {
        http.publish(registry, event);
    }
    sinks.hooks.on_event(registry, event, live, now);
}

/// Reads and validates the config for the binary: the file at `path`, or the
/// embedded default.
pub fn load_config(path: Option<&std::path::Path>) -> Result<Config, config::ConfigError> {
    match path {
        Some(p) => config::load(p),
        None => config::embedded(),
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    /// Idle memory per connection is a target: the slot stays the 120
    /// bytes the old `Conn` took in a release build. With debug assertions
    /// mio's `TcpStream` carries a selector id (16 bytes, not 4); allow
    /// for exactly that.
    #[test]
    fn counts_read_in_the_singular_and_plural() {
        assert_eq!(plural(0, "client", "clients"), "0 clients");
        assert_eq!(plural(1, "client", "clients"), "1 client");
        assert_eq!(plural(2, "listener", "listeners"), "2 listeners");
        assert_eq!(stopped_status(0), "stopped");
        assert_eq!(stopped_status(1), "stopped: 1 connection cut at shutdown_grace");
    }

    #[test]
    fn slot_is_no_larger_than_before() {
        let debug_extra = (std::mem::size_of::<mio::net::TcpStream>() - 4).next_multiple_of(8);
        let size = std::mem::size_of::<Slot>();
        assert!(size <= 120 + debug_extra, "Slot is {size} bytes");
        assert_eq!(std::mem::size_of::<Flags>(), 8);
    }
}
