//! The agent: one thread that keeps one client id online at one daemon.
//!
//! The thread connects, says HELLO, adopts every WELCOME, PINGs every
//! interval (up to 10 % early, at random, so a fleet does not beat in
//! lockstep), answers the daemon's PINGs, and declares the daemon lost
//! after WELCOME's `timeout` of silence, on EOF, RST, a kernel timeout,
//! BYE or ERROR. It then waits out a [`Backoff`] delay and starts over,
//! until it is stopped or the daemon refuses it for good.
//!
//! The thread sleeps in `ppoll` (inside [`Link::recv`]) until the next PING
//! or the silence deadline, whichever is first, and reads only what is
//! ready, so an idle agent costs no CPU.
//! [`Handle::stop`] wakes it at once wherever it is: it sets a flag and
//! shuts down the read side of the socket (which also aborts a connect in
//! progress), or signals the condition variable the backoff waits on.
//!
//! Invariants:
//! - the status seen through the handle is written only by the thread,
//!   under the shared mutex, and every change is signalled on the condvar;
//! - once HELLO was sent, a stop sends BYE before closing, so the daemon
//!   logs `left`, not a loss;
//! - a fatal ERROR (2 version, 4 auth, 6 replaced) ends the thread: an
//!   agent never fights another agent with the same id for the session.

use std::fmt;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use socket2::Socket;

use super::backoff::Backoff;
use super::link::{self, ConnectError, Incoming, Link, LinkError};
use super::options::{AgentConfig, ConfigError};
use crate::config::TcpConfig;
use crate::event::{Logfmt, OfflineReason};
use crate::sockopt;
use crate::wire::native::{error_code, Frame, VERSION};

/// Longest a BYE may take to leave when stopping: a stop must be prompt
/// even if the daemon stopped reading.
const BYE_WRITE_TIMEOUT: Duration = Duration::from_millis(500);

/// What the agent is doing now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Resolving, connecting, or waiting for WELCOME.
    Connecting {
        /// Attempts since the last healthy connection, from 0.
        attempt: u32,
    },
    /// WELCOME received; PINGs flowing.
    Online {
        /// The daemon's address.
        peer: SocketAddr,
        /// The daemon's name for this connection.
        session: u64,
        /// PING period the daemon asked for (the latest WELCOME).
        interval: Duration,
        /// Silence after which either side declares the other gone.
        timeout: Duration,
        /// When the connection went online.
        since: Instant,
    },
    /// Waiting before the next attempt.
    BackingOff {
        /// The delay drawn for this wait.
        delay: Duration,
        /// When the next attempt starts.
        until: Instant,
    },
    /// The thread has ended, or is ending.
    Stopped(StopReason),
}

/// Why the agent stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// [`Handle::stop`], a [`Stopper`], or the handle was dropped.
    Requested,
    /// The daemon refused this agent in a way retrying cannot fix:
    /// ERROR 2 (version), 4 (authentication) or 6 (replaced by a newer
    /// connection with the same id).
    Refused {
        /// The ERROR code.
        code: u16,
        /// The daemon's message.
        message: String,
    },
    /// The agent thread panicked (a bug); the message says where.
    Panicked,
}

impl StopReason {
    /// True for every reason except a requested stop: a binary exits
    /// non-zero on these.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, StopReason::Requested)
    }

    /// A short logfmt-safe name: `requested`, `version`, `auth`,
    /// `replaced`, `refused`, `panicked`.
    pub fn as_str(&self) -> &'static str {
        match self {
            StopReason::Requested => "requested",
            StopReason::Refused { code, .. } => match *code {
                error_code::UNSUPPORTED_VERSION => "version",
                error_code::AUTH_FAILED => "auth",
                error_code::REPLACED => "replaced",
                _ => "refused",
            },
            StopReason::Panicked => "panicked",
        }
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::Requested => f.write_str("stopped on request"),
            StopReason::Refused { code, message } => {
                let why = match *code {
                    error_code::UNSUPPORTED_VERSION => "the daemon does not speak protocol version 1",
                    error_code::AUTH_FAILED => "authentication failed: the daemon rejected the token",
                    error_code::REPLACED => {
                        "replaced: another agent connected with the same id; \
                         not reconnecting, so the two do not fight over the session"
                    }
                    _ => "refused by the daemon",
                };
                write!(f, "{why} (ERROR {code}: {message})")
            }
            StopReason::Panicked => f.write_str("the agent thread panicked"),
        }
    }
}

/// Why a connection attempt failed or an online connection was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostReason {
    /// No frame from the daemon for WELCOME's `timeout`.
    Timeout,
    /// The daemon closed the connection (FIN) without BYE.
    Closed,
    /// The connection was reset (RST).
    Reset,
    /// The kernel gave up on the connection (`ETIMEDOUT`: keepalive or
    /// `TCP_USER_TIMEOUT`).
    TcpTimeout,
    /// BYE from the daemon: it is shutting down.
    DaemonShutdown,
    /// ERROR from the daemon that retrying may cure (e.g. 5, server full).
    DaemonError,
    /// Bytes from the daemon that are not the protocol.
    ProtocolError,
    /// No TCP connection could be made (refused, unreachable, timeout,
    /// name resolution).
    ConnectFailed,
    /// Connected, but no WELCOME within the connect timeout.
    HandshakeTimeout,
    /// Any other socket error; the detail says which.
    Error,
}

impl LostReason {
    /// Every reason.
    pub const ALL: [LostReason; 10] = [
        LostReason::Timeout,
        LostReason::Closed,
        LostReason::Reset,
        LostReason::TcpTimeout,
        LostReason::DaemonShutdown,
        LostReason::DaemonError,
        LostReason::ProtocolError,
        LostReason::ConnectFailed,
        LostReason::HandshakeTimeout,
        LostReason::Error,
    ];

    /// The daemon's reason for the same end of a connection, for the ends
    /// both sides see alike (silence, FIN, RST, the kernel's timeout,
    /// malformed bytes, another socket error); `None` for the ends only a
    /// client has. The one table from which the names and the errno
    /// classification of those shared ends follow.
    pub fn as_offline(self) -> Option<OfflineReason> {
        match self {
            LostReason::Timeout => Some(OfflineReason::Timeout),
            LostReason::Closed => Some(OfflineReason::Closed),
            LostReason::Reset => Some(OfflineReason::Reset),
            LostReason::TcpTimeout => Some(OfflineReason::TcpTimeout),
            LostReason::ProtocolError => Some(OfflineReason::ProtocolError),
            LostReason::Error => Some(OfflineReason::Error),
            LostReason::DaemonShutdown
            | LostReason::DaemonError
            | LostReason::ConnectFailed
            | LostReason::HandshakeTimeout => None,
        }
    }

    /// The client's name for an end the daemon names `reason`; `None` for
    /// the ends only the daemon sees (`left`, `replaced`, ...).
    pub fn from_offline(reason: OfflineReason) -> Option<LostReason> {
        LostReason::ALL.into_iter().find(|lost| lost.as_offline() == Some(reason))
    }

    /// The loss a socket error means, classified as the daemon classifies
    /// its side ([`OfflineReason::from_io_error`]).
    pub(crate) fn from_io_error(e: &io::Error) -> LostReason {
        LostReason::from_offline(OfflineReason::from_io_error(e)).unwrap_or(LostReason::Error)
    }

    /// The name used in log lines: `timeout`, `tcp-timeout`, ... The ends
    /// both sides share carry the daemon's names.
    pub fn as_str(self) -> &'static str {
        match self {
            LostReason::DaemonShutdown => "daemon-shutdown",
            LostReason::DaemonError => "daemon-error",
            LostReason::ConnectFailed => "connect-failed",
            LostReason::HandshakeTimeout => "handshake-timeout",
            // Every variant left is a shared end, so `as_offline` is Some.
            shared => shared.as_offline().map_or("error", OfflineReason::as_str),
        }
    }
}

impl fmt::Display for LostReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A snapshot of the agent, from [`Handle::status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// What it is doing.
    pub state: State,
    /// Round-trip time of the latest PING answered by a PONG.
    pub last_rtt: Option<Duration>,
    /// The latest failure, e.g. `timeout: no frame from the daemon for 612 ms`.
    pub last_error: Option<String>,
    /// The reason of the latest failure, as in `last_error`.
    pub last_lost: Option<LostReason>,
    /// Connection attempts started after the first one.
    pub reconnects: u64,
    /// Times the agent went online (WELCOME received).
    pub connects: u64,
    /// PINGs sent, over all connections.
    pub pings_sent: u64,
    /// PONGs received for our PINGs, over all connections.
    pub pongs_received: u64,
}

impl Status {
    /// True while online.
    pub fn is_online(&self) -> bool {
        matches!(self.state, State::Online { .. })
    }

    /// The stop reason, once stopped.
    pub fn stopped(&self) -> Option<&StopReason> {
        match &self.state {
            State::Stopped(reason) => Some(reason),
            _ => None,
        }
    }
}

/// What the handle and the thread share.
struct Shared {
    inner: Mutex<Inner>,
    /// Signalled on every status change and on a stop request.
    changed: Condvar,
}

struct Inner {
    status: Status,
    stop: bool,
    /// A duplicate of the current socket, so a stop can wake a blocked
    /// connect or read.
    socket: Option<Socket>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The thread never panics while holding the lock on purpose; if it
        // did, the status is still the best information there is.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn update(&self, f: impl FnOnce(&mut Status)) {
        f(&mut self.lock().status);
        self.changed.notify_all();
    }

    fn stop_requested(&self) -> bool {
        self.lock().stop
    }

    fn request_stop(&self) {
        let mut inner = self.lock();
        inner.stop = true;
        if let Some(socket) = &inner.socket {
            // Shutting down the read side makes a blocked read return EOF
            // and aborts a connect in progress, while the write side stays
            // open for the BYE. An error means the socket is already gone.
            let _ = socket.shutdown(Shutdown::Read);
        }
        drop(inner);
        self.changed.notify_all();
    }

    /// Remembers a duplicate of the socket about to be used; false if a
    /// stop was requested (the thread must not start blocking).
    fn watch(&self, socket: &Socket) -> bool {
        let mut inner = self.lock();
        if inner.stop {
            return false;
        }
        // Without a duplicate, a stop waits for the next deadline instead
        // of waking the thread at once; a degraded but correct stop.
        inner.socket = socket.try_clone().ok();
        true
    }

    fn unwatch(&self) {
        self.lock().socket = None;
    }

    /// Sleeps for `delay` unless stopped first; true if stopped.
    fn sleep(&self, delay: Duration) -> bool {
        let until = Instant::now() + delay;
        let mut inner = self.lock();
        while !inner.stop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            inner = self.changed.wait_timeout(inner, left).unwrap_or_else(PoisonError::into_inner).0;
        }
        true
    }
}

/// Starts an agent on its own thread.
///
/// Fails only on an invalid config or when the thread cannot be spawned;
/// an unreachable daemon is not an error, the agent keeps trying.
pub fn start(config: AgentConfig) -> Result<Handle, StartError> {
    config.validate().map_err(StartError::Config)?;
    let shared = Arc::new(Shared {
        inner: Mutex::new(Inner {
            status: Status {
                state: State::Connecting { attempt: 0 },
                last_rtt: None,
                last_error: None,
                last_lost: None,
                reconnects: 0,
                connects: 0,
                pings_sent: 0,
                pongs_received: 0,
            },
            stop: false,
            socket: None,
        }),
        changed: Condvar::new(),
    });
    let thread_shared = Arc::clone(&shared);
    let thread = thread::Builder::new()
        .name(format!("heartbeat-{}", config.id))
        .spawn(move || run(&config, &thread_shared))
        .map_err(StartError::Spawn)?;
    Ok(Handle { shared, thread: Some(thread) })
}

/// Why [`start`] failed.
#[derive(Debug)]
pub enum StartError {
    /// The config breaks an invariant.
    Config(ConfigError),
    /// The thread could not be spawned.
    Spawn(io::Error),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Config(e) => write!(f, "invalid agent config: {e}"),
            StartError::Spawn(e) => write!(f, "spawning the agent thread: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// The owner's side of a running agent. Dropping it stops the agent
/// (with BYE) and waits for its thread.
pub struct Handle {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Handle {
    /// The agent's current status.
    pub fn status(&self) -> Status {
        self.shared.lock().status.clone()
    }

    /// A cheap, cloneable way to ask for a stop from elsewhere (a signal
    /// handler thread), while the handle waits in [`Handle::join`].
    pub fn stopper(&self) -> Stopper {
        Stopper { shared: Arc::clone(&self.shared) }
    }

    /// Waits until `pred` holds for the status, or `timeout` passes.
    /// Returns the status that satisfied it.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&Status) -> bool) -> Option<Status> {
        let until = Instant::now() + timeout;
        let mut inner = self.shared.lock();
        loop {
            if pred(&inner.status) {
                return Some(inner.status.clone());
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            inner = self.shared.changed.wait_timeout(inner, left).unwrap_or_else(PoisonError::into_inner).0;
        }
    }

    /// Stops the agent: BYE if connected, close, join the thread. Returns
    /// the final status. Prompt: it does not wait for a PING deadline or a
    /// backoff delay.
    pub fn stop(mut self) -> Status {
        self.shared.request_stop();
        self.finish()
    }

    /// Waits until the agent ends by itself (a fatal ERROR) or through a
    /// [`Stopper`], and returns the final status.
    pub fn join(mut self) -> Status {
        self.finish()
    }

    fn finish(&mut self) -> Status {
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                self.shared.update(|s| s.state = State::Stopped(StopReason::Panicked));
            }
        }
        self.status()
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.shared.request_stop();
            self.finish();
        }
    }
}

/// Asks an agent to stop; see [`Handle::stopper`].
#[derive(Clone)]
pub struct Stopper {
    shared: Arc<Shared>,
}

impl Stopper {
    /// Requests the stop and returns at once; the thread says BYE and ends.
    pub fn stop(&self) {
        self.shared.request_stop();
    }
}

/// How one connection ended, as the run loop needs it.
enum Outcome {
    /// A stop was requested (BYE already sent if HELLO had been).
    Stopped,
    /// The daemon refused us for good.
    Fatal(StopReason),
    /// Lost, or never made. `healthy` when it had stayed online for one
    /// timeout: the backoff then starts over.
    Lost { reason: LostReason, detail: String, healthy: bool },
}

/// How a step (handshake, online loop) ended, before it is logged.
enum End {
    Stopped,
    Fatal(StopReason),
    Lost(LostReason, String),
}

/// The thread's body: connect, serve, back off, until stopped.
fn run(cfg: &AgentConfig, shared: &Shared) {
    let mut rng = cfg.seed.map_or_else(fastrand::Rng::new, fastrand::Rng::with_seed);
    let mut backoff = Backoff::new(cfg.backoff_base, cfg.backoff_cap, rng.fork());
    let mut session = Session { cfg, shared, rng, epoch: Instant::now(), seq: 0 };
    let reason = loop {
        let attempt = backoff.attempt();
        shared.update(|s| s.state = State::Connecting { attempt });
        let outcome = session.run();
        shared.unwatch();
        // A BYE `shutdown` is a planned stop: the daemon is coming back.
        let shutdown = matches!(outcome, Outcome::Lost { reason: LostReason::DaemonShutdown, .. });
        match outcome {
            Outcome::Stopped => break StopReason::Requested,
            Outcome::Fatal(reason) => break reason,
            Outcome::Lost { reason, detail, healthy } => {
                shared.update(|s| {
                    s.last_error = Some(format!("{reason}: {detail}"));
                    s.last_lost = Some(reason);
                });
                if healthy {
                    backoff.reset();
                }
            }
        }
        let attempt = backoff.attempt();
        let delay = if shutdown { backoff.after_shutdown() } else { backoff.next_delay() };
        info!("reconnecting server={} in_ms={} attempt={}", Logfmt(&cfg.server), delay.as_millis(), attempt + 1);
        shared.update(|s| s.state = State::BackingOff { delay, until: Instant::now() + delay });
        if shared.sleep(delay) {
            break StopReason::Requested;
        }
        shared.update(|s| s.reconnects += 1);
    };
    if reason.is_fatal() {
        error!(
            "stopped server={} id={} reason={} message={}",
            Logfmt(&cfg.server),
            Logfmt(&cfg.id),
            reason.as_str(),
            Logfmt(&reason.to_string())
        );
    } else {
        info!("stopped server={} id={} reason={}", Logfmt(&cfg.server), Logfmt(&cfg.id), reason.as_str());
    }
    shared.update(|s| s.state = State::Stopped(reason));
}

/// What persists across connections: the jitter RNG, the PING sequence,
/// the RTT epoch.
struct Session<'a> {
    cfg: &'a AgentConfig,
    shared: &'a Shared,
    rng: fastrand::Rng,
    /// PING payloads carry their send time relative to this.
    epoch: Instant,
    seq: u64,
}

/// One online connection's clock and settings.
struct Online {
    peer: SocketAddr,
    session: u64,
    /// From the latest WELCOME.
    interval: Duration,
    /// From the latest WELCOME; zero disables the silence check.
    timeout: Duration,
    since: Instant,
    /// Last frame received from the daemon.
    last_rx: Instant,
    last_ping: Instant,
    next_ping: Instant,
    /// The socket options last applied.
    tcp: TcpConfig,
}

impl Session<'_> {
    /// Connects, handshakes and serves one connection; logs how it ended
    /// unless it was stopped or refused (the run loop logs those).
    fn run(&mut self) -> Outcome {
        let (cfg, shared) = (self.cfg, self.shared);
        let (stream, peer) = match link::connect(&cfg.server, cfg.connect_timeout, &mut |s| shared.watch(s)) {
            Ok(connected) => connected,
            Err(ConnectError::Abandoned) => return Outcome::Stopped,
            Err(_) if shared.stop_requested() => return Outcome::Stopped,
            Err(e) => {
                warn!("connect-failed server={} error={}", Logfmt(&cfg.server), Logfmt(&e.to_string()));
                return Outcome::Lost { reason: LostReason::ConnectFailed, detail: e.to_string(), healthy: false };
            }
        };
        let mut link = Link::new(stream);
        if let Some(tls) = &cfg.tls {
            if let Err(e) = link.start_tls(tls) {
                warn!("tls-failed server={} error={}", Logfmt(&cfg.server), Logfmt(&e.to_string()));
                return Outcome::Lost { reason: LostReason::ProtocolError, detail: e.to_string(), healthy: false };
            }
        }
        let outcome = match self.handshake(&mut link) {
            Ok((interval, timeout, session)) => self.online(&mut link, peer, interval, timeout, session),
            Err(End::Stopped) => Outcome::Stopped,
            Err(End::Fatal(reason)) => Outcome::Fatal(reason),
            Err(End::Lost(reason, detail)) => {
                warn!(
                    "handshake-failed server={} peer={} reason={} detail={}",
                    Logfmt(&cfg.server),
                    peer,
                    reason,
                    Logfmt(&detail)
                );
                Outcome::Lost { reason, detail, healthy: false }
            }
        };
        if let Outcome::Stopped = outcome {
            // HELLO was sent (or about to be), and the daemon handles it
            // before what follows: BYE makes it log `left`, not a loss.
            // Best effort, and bounded so a stop stays prompt.
            let _ = link.send(&Frame::Bye("stopped"), BYE_WRITE_TIMEOUT);
        }
        outcome
    }

    /// Sends HELLO and waits for WELCOME: its interval, timeout, session.
    fn handshake(&mut self, link: &mut Link) -> Result<(Duration, Duration, u64), End> {
        let cfg = self.cfg;
        let hello = Frame::Hello { version: VERSION, id: &cfg.id, token: &cfg.token, probe: false };
        link.send(&hello, cfg.connect_timeout).map_err(|e| self.io_end(&e))?;
        let deadline = Instant::now() + cfg.connect_timeout;
        loop {
            let frame = match link.recv(deadline) {
                Ok(Some(frame)) => frame,
                Ok(None) => {
                    let waited = humantime::format_duration(cfg.connect_timeout);
                    return Err(End::Lost(LostReason::HandshakeTimeout, format!("no WELCOME within {waited}")));
                }
                Err(e) => return Err(self.link_end(e)),
            };
            match frame {
                Incoming::Welcome { interval, .. } if interval.is_zero() => {
                    return Err(End::Lost(LostReason::ProtocolError, "WELCOME with interval 0".into()))
                }
                Incoming::Welcome { interval, timeout, session } => return Ok((interval, timeout, session)),
                Incoming::Ping(payload) => {
                    link.send(&Frame::Pong(&payload), cfg.connect_timeout).map_err(|e| self.io_end(&e))?;
                }
                other => return Err(frame_end(other)),
            }
        }
    }

    /// Serves an online connection and logs how it ended.
    fn online(
        &mut self,
        link: &mut Link,
        peer: SocketAddr,
        interval: Duration,
        timeout: Duration,
        session: u64,
    ) -> Outcome {
        let cfg = self.cfg;
        let since = Instant::now();
        let tcp = self.apply_sockopts(link, interval, None);
        info!(
            "connected server={} id={} peer={} session={} interval_ms={} timeout_ms={}",
            Logfmt(&cfg.server),
            Logfmt(&cfg.id),
            peer,
            session,
            interval.as_millis(),
            timeout.as_millis()
        );
        let next_ping = since + self.jittered(interval);
        let mut conn =
            Online { peer, session, interval, timeout, since, last_rx: since, last_ping: since, next_ping, tcp };
        self.publish(&conn, true);
        match self.serve(link, &mut conn) {
            End::Stopped => Outcome::Stopped,
            End::Fatal(reason) => Outcome::Fatal(reason),
            End::Lost(reason, detail) => {
                let up = conn.since.elapsed();
                warn!(
                    "daemon-lost server={} session={} reason={} silent_ms={} connected_ms={} detail={}",
                    Logfmt(&cfg.server),
                    conn.session,
                    reason,
                    conn.last_rx.elapsed().as_millis(),
                    up.as_millis(),
                    Logfmt(&detail)
                );
                // A connection that stayed up for one timeout was healthy:
                // the next outage starts the schedule from the bottom.
                Outcome::Lost { reason, detail, healthy: up >= conn.timeout }
            }
        }
    }

    /// The online loop: PING when due, read until the next deadline.
    fn serve(&mut self, link: &mut Link, conn: &mut Online) -> End {
        loop {
            if self.shared.stop_requested() {
                return End::Stopped;
            }
            let now = Instant::now();
            let silent = now.saturating_duration_since(conn.last_rx);
            // A zero timeout (a WELCOME that disables the silence check)
            // leaves detection to TCP: EOF, RST, keepalive, user timeout.
            if !conn.timeout.is_zero() && silent >= conn.timeout {
                return End::Lost(
                    LostReason::Timeout,
                    format!("no frame from the daemon for {} ms", silent.as_millis()),
                );
            }
            if now >= conn.next_ping {
                self.seq += 1;
                let payload = link::ping_payload(self.seq, self.epoch, now);
                if let Err(e) = link.send(&Frame::Ping(&payload), write_timeout(conn)) {
                    return self.io_end(&e);
                }
                debug!("ping server={} seq={}", Logfmt(&self.cfg.server), self.seq);
                self.shared.update(|s| s.pings_sent += 1);
                conn.last_ping = now;
                conn.next_ping = now + self.jittered(conn.interval);
                continue;
            }
            let wake =
                if conn.timeout.is_zero() { conn.next_ping } else { conn.next_ping.min(conn.last_rx + conn.timeout) };
            let frame = match link.recv(wake) {
                Ok(Some(frame)) => frame,
                Ok(None) => continue,
                Err(e) => return self.link_end(e),
            };
            // Any frame from the daemon is activity.
            conn.last_rx = Instant::now();
            match frame {
                Incoming::Pong(payload) => {
                    if let Some((seq, rtt)) = link::pong_rtt(&payload, self.epoch, conn.last_rx) {
                        debug!("pong server={} seq={} rtt_us={}", Logfmt(&self.cfg.server), seq, rtt.as_micros());
                        self.shared.update(|s| {
                            s.last_rtt = Some(rtt);
                            s.pongs_received += 1;
                        });
                    }
                }
                Incoming::Ping(payload) => {
                    if let Err(e) = link.send(&Frame::Pong(&payload), write_timeout(conn)) {
                        return self.io_end(&e);
                    }
                }
                Incoming::Welcome { interval, .. } if interval.is_zero() => {
                    return End::Lost(LostReason::ProtocolError, "WELCOME with interval 0".into())
                }
                Incoming::Welcome { interval, timeout, session } => {
                    info!(
                        "welcome-updated server={} session={} interval_ms={} timeout_ms={}",
                        Logfmt(&self.cfg.server),
                        session,
                        interval.as_millis(),
                        timeout.as_millis()
                    );
                    conn.interval = interval;
                    conn.timeout = timeout;
                    conn.session = session;
                    // Adopt at once: the next PING is one (jittered) new
                    // interval after the last one, or now if that is past.
                    conn.next_ping = (conn.last_ping + self.jittered(interval)).max(conn.last_rx);
                    conn.tcp = self.apply_sockopts(link, interval, Some(conn.tcp));
                    self.publish(conn, false);
                }
                other => return frame_end(other),
            }
        }
    }

    /// Shows the online state through the handle.
    fn publish(&self, conn: &Online, connected: bool) {
        let state = State::Online {
            peer: conn.peer,
            session: conn.session,
            interval: conn.interval,
            timeout: conn.timeout,
            since: conn.since,
        };
        self.shared.update(|s| {
            s.state = state;
            if connected {
                s.connects += 1;
            }
        });
    }

    /// A PING delay: `interval` minus up to 10 %, at random, never above.
    fn jittered(&mut self, interval: Duration) -> Duration {
        let max = u64::try_from((interval / 10).as_nanos()).unwrap_or(u64::MAX);
        interval.saturating_sub(Duration::from_nanos(self.rng.u64(0..=max)))
    }

    /// Applies keepalive and user timeout for `interval`, unless they are
    /// what `previous` already set. A refused option is logged, not fatal:
    /// the PINGs still detect a dead daemon.
    fn apply_sockopts(&self, link: &Link, interval: Duration, previous: Option<TcpConfig>) -> TcpConfig {
        let tcp = self.cfg.keepalive.resolve(interval);
        if previous == Some(tcp) {
            return tcp;
        }
        match sockopt::apply(link.stream(), &tcp) {
            Ok(()) => {
                if let Ok(eff) = sockopt::effective(link.stream()) {
                    debug!("tcp-options server={} {}", Logfmt(&self.cfg.server), eff);
                }
            }
            Err(e) => warn!("sockopt-failed server={} error={}", Logfmt(&self.cfg.server), Logfmt(&e.to_string())),
        }
        tcp
    }

    fn link_end(&self, e: LinkError) -> End {
        // A stop shuts the read side down, which reads as EOF: not a loss.
        if self.shared.stop_requested() {
            return End::Stopped;
        }
        match e {
            LinkError::Io(e) => self.io_end(&e),
            LinkError::Closed => End::Lost(LostReason::Closed, e.to_string()),
            LinkError::Protocol(_) | LinkError::Tls(_) => End::Lost(LostReason::ProtocolError, e.to_string()),
        }
    }

    fn io_end(&self, e: &io::Error) -> End {
        if self.shared.stop_requested() {
            return End::Stopped;
        }
        End::Lost(LostReason::from_io_error(e), e.to_string())
    }
}

/// How long a PING or PONG may take to leave: a daemon that has not read
/// for this long is gone anyway.
fn write_timeout(conn: &Online) -> Duration {
    conn.timeout.max(conn.interval)
}

/// The end of a connection on a frame that closes it: BYE, ERROR, or a
/// frame the daemon must not send.
fn frame_end(frame: Incoming) -> End {
    match frame {
        Incoming::Bye(reason) => End::Lost(LostReason::DaemonShutdown, format!("BYE {}", Logfmt(&reason))),
        Incoming::Error { code, message } => {
            // Retrying cannot cure these, and after a replacement it would
            // take the session back from the newer agent, forever.
            if matches!(code, error_code::UNSUPPORTED_VERSION | error_code::AUTH_FAILED | error_code::REPLACED) {
                End::Fatal(StopReason::Refused { code, message })
            } else {
                End::Lost(LostReason::DaemonError, format!("ERROR {code}: {message}"))
            }
        }
        Incoming::Unexpected(what) => End::Lost(LostReason::ProtocolError, format!("{what} from the daemon")),
        Incoming::Welcome { .. } | Incoming::Ping(_) | Incoming::Pong(_) => {
            End::Lost(LostReason::ProtocolError, "frame out of order before WELCOME".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_names_are_the_public_strings() {
        let names: Vec<&str> = LostReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            names,
            [
                "timeout",
                "closed",
                "reset",
                "tcp-timeout",
                "daemon-shutdown",
                "daemon-error",
                "protocol-error",
                "connect-failed",
                "handshake-timeout",
                "error"
            ]
        );
    }

    #[test]
    fn shared_ends_map_both_ways_and_keep_one_name() {
        for lost in LostReason::ALL {
            if let Some(offline) = lost.as_offline() {
                assert_eq!(LostReason::from_offline(offline), Some(lost));
                assert_eq!(lost.as_str(), offline.as_str());
            }
        }
        for offline in [OfflineReason::Left, OfflineReason::Replaced, OfflineReason::Shutdown] {
            assert_eq!(LostReason::from_offline(offline), None);
        }
    }

    #[test]
    fn socket_errors_classify_like_the_daemon() {
        let lost = |errno| LostReason::from_io_error(&io::Error::from_raw_os_error(errno));
        assert_eq!(lost(libc::ECONNRESET), LostReason::Reset);
        assert_eq!(lost(libc::EPIPE), LostReason::Closed);
        assert_eq!(lost(libc::ETIMEDOUT), LostReason::TcpTimeout);
        assert_eq!(lost(libc::EHOSTUNREACH), LostReason::TcpTimeout);
        // A send that could not finish within its timeout: the daemon
        // stopped reading.
        assert_eq!(lost(libc::EAGAIN), LostReason::Timeout);
        assert_eq!(lost(libc::EBADF), LostReason::Error);
    }
}
