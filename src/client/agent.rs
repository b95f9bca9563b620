//! The agent: one thread that keeps one client id online at one daemon.
//!
//! The thread connects, says HELLO, adopts every WELCOME, PINGs every
//! interval (up to 10 % early, at random, so a fleet does not beat in
//! lockstep), answers the daemon's PINGs, and declares the daemon lost
//! after WELCOME's `timeout` of silence, on EOF, RST, a kernel timeout,
//! BYE or ERROR. It then waits out a [`Backoff`] delay and starts over,
//! until it is stopped or the daemon refuses it for good.
//!
//! The thread blocks in `read` with a timeout computed from the next PING
//! or the silence deadline, whichever is first, so an idle agent sleeps.
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
use crate::event::Logfmt;
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
    /// The name used in log lines: `timeout`, `tcp-timeout`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            LostReason::Timeout => "timeout",
            LostReason::Closed => "closed",
            LostReason::Reset => "reset",
            LostReason::TcpTimeout => "tcp-timeout",
            LostReason::DaemonShutdown => "daemon-shutdown",
            LostReason::DaemonError => "daemon-error",
            LostReason::ProtocolError => "protocol-error",
            LostReason::ConnectFailed => "connect-failed",
            LostReason::HandshakeTimeout => "handshake-timeout",
            LostReason::Error => "error",
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

/// How one connection ended.
enum Outcome {
    /// A stop was requested (BYE already sent if HELLO had been).
    Stopped,
    /// The daemon refused us for good.
    Fatal(StopReason),
    /// Lost or never made; `online_for` is how long it had been online.
    Lost { reason: LostReason, detail: String, online_for: Option<Duration>, timeout: Option<Duration> },
}

impl Outcome {
    fn lost(reason: LostReason, detail: impl Into<String>) -> Outcome {
        Outcome::Lost { reason, detail: detail.into(), online_for: None, timeout: None }
    }
}

/// The thread's body: connect, serve, back off, until stopped.
fn run(cfg: &AgentConfig, shared: &Shared) {
    let mut rng = cfg.seed.map_or_else(fastrand::Rng::new, fastrand::Rng::with_seed);
    let mut backoff = Backoff::new(cfg.backoff_base, cfg.backoff_cap, rng.fork());
    let mut session = Session::new(cfg, shared, rng);
    let reason = loop {
        let attempt = backoff.attempt();
        shared.update(|s| s.state = State::Connecting { attempt });
        let outcome = session.run();
        shared.unwatch();
        match outcome {
            Outcome::Stopped => break StopReason::Requested,
            Outcome::Fatal(reason) => break reason,
            Outcome::Lost { reason, detail, online_for, timeout } => {
                shared.update(|s| {
                    s.last_error = Some(format!("{reason}: {detail}"));
                    s.last_lost = Some(reason);
                });
                // A connection that stayed up for one timeout was healthy:
                // the next outage starts the schedule from the bottom.
                if let (Some(up), Some(timeout)) = (online_for, timeout) {
                    if up >= timeout {
                        backoff.reset();
                    }
                }
            }
        }
        let attempt = backoff.attempt();
        let delay = backoff.next_delay();
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

/// One connection's worth of work, with what persists across connections
/// (the jitter RNG, the PING sequence, the RTT epoch).
struct Session<'a> {
    cfg: &'a AgentConfig,
    shared: &'a Shared,
    rng: fastrand::Rng,
    /// PING payloads carry their send time relative to this.
    epoch: Instant,
    seq: u64,
}

impl<'a> Session<'a> {
    fn new(cfg: &'a AgentConfig, shared: &'a Shared, rng: fastrand::Rng) -> Session<'a> {
        Session { cfg, shared, rng, epoch: Instant::now(), seq: 0 }
    }

    /// Connects, handshakes and serves one connection.
    fn run(&mut self) -> Outcome {
        let shared = self.shared;
        let (stream, peer) = match link::connect(&self.cfg.server, self.cfg.connect_timeout, &mut |s| shared.watch(s)) {
            Ok(connected) => connected,
            Err(ConnectError::Abandoned) => return Outcome::Stopped,
            Err(e) => {
                if shared.stop_requested() {
                    return Outcome::Stopped;
                }
                warn!("connect-failed server={} error={}", Logfmt(&self.cfg.server), Logfmt(&e.to_string()));
                return Outcome::lost(LostReason::ConnectFailed, e.to_string());
            }
        };
        let mut link = Link::new(stream);
        let outcome = self.handshake(&mut link, peer);
        if let Outcome::Stopped = outcome {
            // HELLO was sent (or was about to be): say BYE so the daemon
            // logs `left` rather than a loss. Best effort, bounded.
            let _ = link.send(&Frame::Bye("stopped"), BYE_WRITE_TIMEOUT);
        }
        outcome
    }

    /// Sends HELLO, waits for WELCOME, then serves the connection.
    fn handshake(&mut self, link: &mut Link, peer: SocketAddr) -> Outcome {
        let cfg = self.cfg;
        let hello = Frame::Hello { version: VERSION, id: &cfg.id, token: &cfg.token };
        if let Err(e) = link.send(&hello, cfg.connect_timeout) {
            return self.io_outcome(&e, None);
        }
        let deadline = Instant::now() + cfg.connect_timeout;
        loop {
            let frame = match link.recv(deadline) {
                Ok(Some(frame)) => frame,
                Ok(None) => {
                    warn!(
                        "handshake-failed server={} peer={} reason=handshake-timeout waited_ms={}",
                        Logfmt(&cfg.server),
                        peer,
                        cfg.connect_timeout.as_millis()
                    );
                    return Outcome::lost(
                        LostReason::HandshakeTimeout,
                        format!("no WELCOME within {}", humantime::format_duration(cfg.connect_timeout)),
                    );
                }
                Err(e) => return self.link_outcome(e, None),
            };
            match frame {
                Incoming::Welcome { interval, timeout, session } => {
                    return self.online(link, peer, interval, timeout, session)
                }
                Incoming::Ping(payload) => {
                    if let Err(e) = link.send(&Frame::Pong(&payload), cfg.connect_timeout) {
                        return self.io_outcome(&e, None);
                    }
                }
                other => return self.frame_outcome(other, None),
            }
        }
    }

    /// Serves an online connection until it ends.
    fn online(
        &mut self,
        link: &mut Link,
        peer: SocketAddr,
        mut interval: Duration,
        mut timeout: Duration,
        session: u64,
    ) -> Outcome {
        let cfg = self.cfg;
        if interval.is_zero() {
            return Outcome::lost(LostReason::ProtocolError, "WELCOME with interval 0");
        }
        let since = Instant::now();
        let mut tcp = self.apply_sockopts(link, interval, None);
        info!(
            "connected server={} id={} peer={} session={} interval_ms={} timeout_ms={}",
            Logfmt(&cfg.server),
            Logfmt(&cfg.id),
            peer,
            session,
            interval.as_millis(),
            timeout.as_millis()
        );
        self.shared.update(|s| {
            s.connects += 1;
            s.state = State::Online { peer, session, interval, timeout, since };
        });
        let mut last_rx = since;
        let mut last_ping = since;
        let mut next_ping = since + self.jittered(interval);
        loop {
            let up = Some(since.elapsed());
            if self.shared.stop_requested() {
                return Outcome::Stopped;
            }
            let now = Instant::now();
            let silent = now.saturating_duration_since(last_rx);
            // A zero timeout (a WELCOME that disables the silence check)
            // leaves detection to TCP: EOF, RST, keepalive, user timeout.
            if !timeout.is_zero() && silent >= timeout {
                warn!(
                    "daemon-lost server={} session={} reason=timeout silent_ms={} connected_ms={}",
                    Logfmt(&cfg.server),
                    session,
                    silent.as_millis(),
                    since.elapsed().as_millis()
                );
                return Outcome::Lost {
                    reason: LostReason::Timeout,
                    detail: format!("no frame from the daemon for {} ms", silent.as_millis()),
                    online_for: up,
                    timeout: Some(timeout),
                };
            }
            if now >= next_ping {
                self.seq += 1;
                let payload = link::ping_payload(self.seq, self.epoch, now);
                if let Err(e) = link.send(&Frame::Ping(&payload), timeout.max(interval)) {
                    return self.log_lost(self.io_outcome(&e, up), session, timeout, last_rx);
                }
                debug!("ping server={} seq={}", Logfmt(&cfg.server), self.seq);
                self.shared.update(|s| s.pings_sent += 1);
                last_ping = now;
                next_ping = now + self.jittered(interval);
                continue;
            }
            let wake = if timeout.is_zero() { next_ping } else { next_ping.min(last_rx + timeout) };
            let frame = match link.recv(wake) {
                Ok(Some(frame)) => frame,
                Ok(None) => continue,
                Err(e) => {
                    if self.shared.stop_requested() {
                        return Outcome::Stopped;
                    }
                    let outcome = self.link_outcome(e, up);
                    return self.log_lost(outcome, session, timeout, last_rx);
                }
            };
            // Any frame from the daemon is activity.
            last_rx = Instant::now();
            match frame {
                Incoming::Pong(payload) => {
                    if let Some((seq, rtt)) = link::pong_rtt(&payload, self.epoch, last_rx) {
                        debug!("pong server={} seq={} rtt_us={}", Logfmt(&cfg.server), seq, rtt.as_micros());
                        self.shared.update(|s| {
                            s.last_rtt = Some(rtt);
                            s.pongs_received += 1;
                        });
                    }
                }
                Incoming::Ping(payload) => {
                    if let Err(e) = link.send(&Frame::Pong(&payload), timeout.max(interval)) {
                        return self.log_lost(self.io_outcome(&e, up), session, timeout, last_rx);
                    }
                }
                Incoming::Welcome { interval: new_interval, timeout: new_timeout, session: new_session } => {
                    if new_interval.is_zero() {
                        let outcome = Outcome::lost(LostReason::ProtocolError, "WELCOME with interval 0");
                        return self.log_lost(outcome, session, timeout, last_rx);
                    }
                    interval = new_interval;
                    timeout = new_timeout;
                    info!(
                        "welcome-updated server={} session={} interval_ms={} timeout_ms={}",
                        Logfmt(&cfg.server),
                        new_session,
                        interval.as_millis(),
                        timeout.as_millis()
                    );
                    // Adopt at once: the next PING is one (jittered) new
                    // interval after the last one, or now if that is past.
                    next_ping = (last_ping + self.jittered(interval)).max(last_rx);
                    tcp = self.apply_sockopts(link, interval, Some(tcp));
                    self.shared
                        .update(|s| s.state = State::Online { peer, session: new_session, interval, timeout, since });
                }
                other => {
                    let outcome = self.frame_outcome(other, up);
                    return self.log_lost(outcome, session, timeout, last_rx);
                }
            }
        }
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

    /// Logs the loss of an online connection.
    fn log_lost(&self, outcome: Outcome, session: u64, timeout: Duration, last_rx: Instant) -> Outcome {
        match outcome {
            Outcome::Lost { reason, detail, online_for, timeout: _ } => {
                warn!(
                    "daemon-lost server={} session={} reason={} silent_ms={} connected_ms={} detail={}",
                    Logfmt(&self.cfg.server),
                    session,
                    reason,
                    last_rx.elapsed().as_millis(),
                    online_for.unwrap_or_default().as_millis(),
                    Logfmt(&detail)
                );
                Outcome::Lost { reason, detail, online_for, timeout: Some(timeout) }
            }
            other => other,
        }
    }

    /// The outcome of a frame that ends the connection: BYE, ERROR, or a
    /// frame the daemon must not send.
    fn frame_outcome(&self, frame: Incoming, online_for: Option<Duration>) -> Outcome {
        let (reason, detail) = match frame {
            Incoming::Bye(reason) => (LostReason::DaemonShutdown, format!("BYE {}", Logfmt(&reason))),
            Incoming::Error { code, message } => {
                if matches!(code, error_code::UNSUPPORTED_VERSION | error_code::AUTH_FAILED | error_code::REPLACED) {
                    return Outcome::Fatal(StopReason::Refused { code, message });
                }
                (LostReason::DaemonError, format!("ERROR {code}: {message}"))
            }
            Incoming::Unexpected(what) => (LostReason::ProtocolError, format!("{what} from the daemon")),
            Incoming::Welcome { .. } | Incoming::Ping(_) | Incoming::Pong(_) => {
                (LostReason::ProtocolError, "frame out of order before WELCOME".to_string())
            }
        };
        if online_for.is_none() {
            warn!("handshake-failed server={} reason={} detail={}", Logfmt(&self.cfg.server), reason, Logfmt(&detail));
        }
        Outcome::Lost { reason, detail, online_for, timeout: None }
    }

    fn link_outcome(&self, e: LinkError, online_for: Option<Duration>) -> Outcome {
        // A stop shuts the read side down, which reads as EOF: not a loss.
        if self.shared.stop_requested() {
            return Outcome::Stopped;
        }
        match e {
            LinkError::Io(e) => self.io_outcome(&e, online_for),
            LinkError::Closed => self.lost(LostReason::Closed, e.to_string(), online_for),
            LinkError::Protocol(_) => self.lost(LostReason::ProtocolError, e.to_string(), online_for),
        }
    }

    fn io_outcome(&self, e: &io::Error, online_for: Option<Duration>) -> Outcome {
        if self.shared.stop_requested() {
            return Outcome::Stopped;
        }
        self.lost(reason_for_io_error(e), e.to_string(), online_for)
    }

    fn lost(&self, reason: LostReason, detail: String, online_for: Option<Duration>) -> Outcome {
        if online_for.is_none() {
            warn!("handshake-failed server={} reason={} detail={}", Logfmt(&self.cfg.server), reason, Logfmt(&detail));
        }
        Outcome::Lost { reason, detail, online_for, timeout: None }
    }
}

/// The loss reason for a socket error, as the daemon classifies its side.
fn reason_for_io_error(e: &io::Error) -> LostReason {
    match e.raw_os_error() {
        Some(libc::ECONNRESET | libc::ECONNABORTED) => LostReason::Reset,
        Some(libc::EPIPE) => LostReason::Closed,
        Some(libc::ETIMEDOUT | libc::EHOSTUNREACH | libc::ENETUNREACH) => LostReason::TcpTimeout,
        // A send that could not finish within its timeout: the daemon
        // stopped reading.
        Some(libc::EAGAIN) => LostReason::Timeout,
        _ => LostReason::Error,
    }
}
