//! The one-shot health probe behind `heartbeat check`: one probe HELLO
//! (flags bit 0: never online, PROTOCOL.md "Probes"), one PING/PONG, BYE.
//!
//! Invariant: the whole probe, from resolving the address to reading the
//! PONG, runs within one deadline, so a script calling it never hangs
//! longer than its timeout (plus the BYE, which is bounded separately).

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::agent::LostReason;
use super::link::{self, Incoming, Link, LinkError};
use super::options::{self, ConfigError};
use crate::wire::native::{Frame, VERSION};

/// How long the closing BYE may take to leave.
const BYE_TIMEOUT: Duration = Duration::from_millis(200);

/// What to probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckConfig {
    /// The daemon's `HOST:PORT`.
    pub server: String,
    /// The id to HELLO with. The HELLO is a probe, so a running agent with
    /// the same id keeps its session (on a daemon that knows probes).
    pub id: String,
    /// The HELLO token, if the listener has tokens.
    pub token: Vec<u8>,
    /// Bound on the whole probe.
    pub timeout: Duration,
    /// TLS to the daemon (`--tls`); `None` is plain TCP.
    pub tls: Option<crate::tls::ClientTls>,
}

/// A healthy daemon's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// The address that answered.
    pub peer: SocketAddr,
    /// The session the daemon gave the probe.
    pub session: u64,
    /// The listener's PING interval.
    pub interval: Duration,
    /// The listener's silence timeout.
    pub timeout: Duration,
    /// Round trip of the PING.
    pub rtt: Duration,
}

/// Why the daemon is not healthy, or the probe could not run.
#[derive(Debug)]
pub enum CheckError {
    /// The probe's config is invalid.
    Config(ConfigError),
    /// No connection within the timeout.
    Connect(String),
    /// The daemon did not answer in time; names the step.
    Timeout(&'static str),
    /// The daemon answered ERROR.
    Refused {
        /// The ERROR code.
        code: u16,
        /// The daemon's message.
        message: String,
    },
    /// The daemon said BYE (shutting down).
    Bye(String),
    /// The connection failed, or the daemon broke the protocol.
    Link(String),
}

impl CheckError {
    /// A logfmt-safe name for the failure: `config`, `connect-failed`,
    /// `timeout`, `refused`, `daemon-shutdown`, `error`: the agent's
    /// [`LostReason`] names where the failure is one of those.
    pub fn as_str(&self) -> &'static str {
        match self {
            CheckError::Config(_) => "config",
            CheckError::Connect(_) => LostReason::ConnectFailed.as_str(),
            CheckError::Timeout(_) => LostReason::Timeout.as_str(),
            CheckError::Refused { .. } => "refused",
            CheckError::Bye(_) => LostReason::DaemonShutdown.as_str(),
            CheckError::Link(_) => LostReason::Error.as_str(),
        }
    }
}

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckError::Config(e) => write!(f, "invalid check: {e}"),
            CheckError::Connect(e) => write!(f, "{e}"),
            CheckError::Timeout(step) => write!(f, "no {step} within the timeout"),
            CheckError::Refused { code, message } => write!(f, "ERROR {code}: {message}"),
            CheckError::Bye(reason) => write!(f, "the daemon said BYE: {reason}"),
            CheckError::Link(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for CheckError {}

/// Probes the daemon once: HELLO → WELCOME, PING → PONG, BYE.
pub fn check(cfg: &CheckConfig) -> Result<CheckReport, CheckError> {
    options::validate_server(&cfg.server).map_err(CheckError::Config)?;
    options::validate_hello(&cfg.id, &cfg.token).map_err(CheckError::Config)?;
    if cfg.timeout.is_zero() {
        return Err(CheckError::Config(ConfigError::Zero("timeout")));
    }
    let start = Instant::now();
    let deadline = start + cfg.timeout;
    let (stream, peer) =
        link::connect(&cfg.server, cfg.timeout, &mut |_| true).map_err(|e| CheckError::Connect(e.to_string()))?;
    let mut link = Link::new(stream);
    if let Some(tls) = &cfg.tls {
        link.start_tls(tls).map_err(|e| CheckError::Link(e.to_string()))?;
    }
    let result = probe(&mut link, peer, cfg, start, deadline);
    if !matches!(result, Err(CheckError::Refused { .. } | CheckError::Bye(_))) {
        // The BYE ends the probe quietly (a probe never went online, so
        // there is no offline event; a daemon older than the probe bit logs
        // it as `left`, not as a loss). Best effort: the verdict is known.
        let _ = link.send(&Frame::Bye("check"), BYE_TIMEOUT);
    }
    result
}

fn probe(
    link: &mut Link,
    peer: SocketAddr,
    cfg: &CheckConfig,
    epoch: Instant,
    deadline: Instant,
) -> Result<CheckReport, CheckError> {
    let left = || deadline.saturating_duration_since(Instant::now());
    // A probe: the daemon answers but never puts it online (no events, no
    // replacement of an agent with the same id). A daemon that predates
    // the bit treats it as an ordinary HELLO.
    let hello = Frame::Hello { version: VERSION, id: &cfg.id, token: &cfg.token, probe: true };
    link.send(&hello, left()).map_err(|e| CheckError::Link(e.to_string()))?;
    let (session, interval, timeout) = match next(link, deadline, "WELCOME")? {
        Incoming::Welcome { interval, timeout, session } => (session, interval, timeout),
        other => return Err(unexpected(other)),
    };
    let payload = link::ping_payload(1, epoch, Instant::now());
    link.send(&Frame::Ping(&payload), left()).map_err(|e| CheckError::Link(e.to_string()))?;
    loop {
        match next(link, deadline, "PONG")? {
            Incoming::Pong(p) => {
                if let Some((1, rtt)) = link::pong_rtt(&p, epoch, Instant::now()) {
                    return Ok(CheckReport { peer, session, interval, timeout, rtt });
                }
            }
            // A server PING or a fresh WELCOME may come first: answer or
            // skip, and keep waiting for our PONG.
            Incoming::Ping(p) => link.send(&Frame::Pong(&p), left()).map_err(|e| CheckError::Link(e.to_string()))?,
            Incoming::Welcome { .. } => {}
            other => return Err(unexpected(other)),
        }
    }
}

fn next(link: &mut Link, deadline: Instant, step: &'static str) -> Result<Incoming, CheckError> {
    match link.recv(deadline) {
        Ok(Some(frame)) => Ok(frame),
        Ok(None) => Err(CheckError::Timeout(step)),
        Err(LinkError::Closed) => Err(CheckError::Link(format!("the daemon closed the connection before {step}"))),
        Err(e) => Err(CheckError::Link(e.to_string())),
    }
}

fn unexpected(frame: Incoming) -> CheckError {
    match frame {
        Incoming::Error { code, message } => CheckError::Refused { code, message },
        Incoming::Bye(reason) => CheckError::Bye(reason),
        other => CheckError::Link(format!("unexpected frame from the daemon: {other:?}")),
    }
}
