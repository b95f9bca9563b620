//! What an agent or a check is told: the daemon's address, the client id,
//! the token, timeouts, the backoff bounds and the socket options.
//!
//! Invariants of a config that passed [`AgentConfig::validate`]:
//! - `server` is `HOST:PORT` with a numeric port (the host is resolved at
//!   every attempt, so a DNS change is followed);
//! - `id` satisfies PROTOCOL.md (1..=64 bytes of 0x21..=0x7E) and the token
//!   fits its 255 bytes, so a HELLO can always be encoded;
//! - `connect_timeout` and `backoff_base` are non-zero and
//!   `backoff_base <= backoff_cap`.

use std::fmt;
use std::time::Duration;

use crate::config::TcpConfig;
use crate::wire::native::{self, IdError};

/// How long a connection attempt may take, and then how long the WELCOME
/// may take, unless configured otherwise.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// First reconnect ceiling.
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(200);
/// Largest reconnect ceiling: an agent waits at most this long between
/// attempts, so it comes back within 30 s of the daemon.
pub const DEFAULT_BACKOFF_CAP: Duration = Duration::from_secs(30);
/// Unanswered keepalive probes before the kernel drops the connection.
pub const DEFAULT_KEEPALIVE_COUNT: u32 = 3;

/// Everything an agent needs. Build it with [`AgentConfig::new`] and set
/// the public fields that differ from the defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// The daemon's `HOST:PORT`.
    pub server: String,
    /// The client id sent in HELLO.
    pub id: String,
    /// The HELLO token; empty when the listener has no tokens.
    pub token: Vec<u8>,
    /// Bound on a TCP connect, and separately on the wait for WELCOME.
    pub connect_timeout: Duration,
    /// First reconnect ceiling (attempt 0).
    pub backoff_base: Duration,
    /// Largest reconnect ceiling.
    pub backoff_cap: Duration,
    /// Kernel keepalive and user timeout; unset fields follow the interval.
    pub keepalive: KeepaliveOptions,
    /// Seeds the random jitter (PING and backoff), for reproducible runs;
    /// `None` seeds from the system.
    pub seed: Option<u64>,
    /// TLS to the daemon (`--tls`); `None` is plain TCP.
    pub tls: Option<crate::tls::ClientTls>,
}

impl AgentConfig {
    /// A config with every default: connect timeout 5 s, backoff 200 ms to
    /// 30 s, keepalive derived from the interval, no token.
    pub fn new(server: impl Into<String>, id: impl Into<String>) -> AgentConfig {
        AgentConfig {
            server: server.into(),
            id: id.into(),
            token: Vec::new(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            backoff_base: DEFAULT_BACKOFF_BASE,
            backoff_cap: DEFAULT_BACKOFF_CAP,
            keepalive: KeepaliveOptions::default(),
            seed: None,
            tls: None,
        }
    }

    /// Checks the invariants in the module docs.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_server(&self.server)?;
        validate_hello(&self.id, &self.token)?;
        if self.connect_timeout.is_zero() {
            return Err(ConfigError::Zero("connect timeout"));
        }
        if self.backoff_base.is_zero() {
            return Err(ConfigError::Zero("backoff base"));
        }
        if self.backoff_cap < self.backoff_base {
            return Err(ConfigError::CapBelowBase { base: self.backoff_base, cap: self.backoff_cap });
        }
        Ok(())
    }
}

/// Kernel-level liveness on the agent's socket. Each unset field is derived
/// from the WELCOME interval by [`KeepaliveOptions::resolve`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeepaliveOptions {
    /// `TCP_KEEPIDLE`; zero turns keepalive off. Default: twice the
    /// interval, in whole seconds, at least 1 s.
    pub idle: Option<Duration>,
    /// `TCP_KEEPINTVL`. Default: the interval, in whole seconds, at least 1 s.
    pub interval: Option<Duration>,
    /// `TCP_KEEPCNT`. Default: [`DEFAULT_KEEPALIVE_COUNT`].
    pub count: Option<u32>,
    /// `TCP_USER_TIMEOUT`; zero leaves the kernel default. Default:
    /// idle + interval × count, so unacknowledged PINGs are given up on in
    /// the same time unanswered probes would be.
    pub user_timeout: Option<Duration>,
}

impl KeepaliveOptions {
    /// The socket options for a daemon that asked for PINGs every
    /// `heartbeat`.
    ///
    /// Keepalive is a second line of defence here: the PINGs already keep
    /// the connection busy, so probes only run if the agent itself stalls,
    /// while the user timeout catches a daemon host that stopped
    /// acknowledging (power cut, dropped route) sooner than the kernel's
    /// default of about 15 minutes of retransmissions.
    pub fn resolve(&self, heartbeat: Duration) -> TcpConfig {
        let idle = self.idle.unwrap_or_else(|| whole_seconds(heartbeat.saturating_mul(2)));
        let interval = self.interval.unwrap_or_else(|| whole_seconds(heartbeat));
        let count = self.count.unwrap_or(DEFAULT_KEEPALIVE_COUNT);
        let mut tcp = TcpConfig {
            keepalive_idle: idle,
            keepalive_interval: interval,
            keepalive_count: count,
            user_timeout: Duration::ZERO,
            nodelay: true,
        };
        tcp.user_timeout = self.user_timeout.unwrap_or_else(|| tcp.keepalive_limit());
        tcp
    }
}

/// Rounds up to whole seconds, at least one: the kernel's keepalive knobs
/// count seconds, and the derived user timeout must match what they do.
fn whole_seconds(d: Duration) -> Duration {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    Duration::from_secs(secs.max(1))
}

/// A config the agent or the check cannot run with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// `server` is not `HOST:PORT`.
    Server(String),
    /// The id breaks PROTOCOL.md's rule.
    Id(IdError),
    /// The token is longer than 255 bytes.
    TokenTooLong(usize),
    /// A duration that must be positive is zero; names it.
    Zero(&'static str),
    /// The backoff cap is below its base.
    CapBelowBase {
        /// The configured base.
        base: Duration,
        /// The configured cap.
        cap: Duration,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Server(s) => {
                write!(f, "server {s:?}: expected HOST:PORT, e.g. 127.0.0.1:7700")
            }
            ConfigError::Id(e) => write!(f, "id: {e}"),
            ConfigError::TokenTooLong(n) => write!(f, "token: {n} bytes, at most {} allowed", native::MAX_TOKEN_LEN),
            ConfigError::Zero(what) => write!(f, "{what}: must be greater than zero"),
            ConfigError::CapBelowBase { base, cap } => write!(
                f,
                "backoff cap {} is below the backoff base {}",
                humantime::format_duration(*cap),
                humantime::format_duration(*base)
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Checks `HOST:PORT` syntax without resolving the host.
pub(crate) fn validate_server(server: &str) -> Result<(), ConfigError> {
    let ok = server.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Server(server.to_string()))
    }
}

/// Checks that a HELLO with this id and token can be encoded.
pub(crate) fn validate_hello(id: &str, token: &[u8]) -> Result<(), ConfigError> {
    native::validate_id(id.as_bytes()).map_err(ConfigError::Id)?;
    if token.len() > native::MAX_TOKEN_LEN {
        return Err(ConfigError::TokenTooLong(token.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalive_follows_the_interval_by_default() {
        let tcp = KeepaliveOptions::default().resolve(Duration::from_secs(3));
        assert_eq!(tcp.keepalive_idle, Duration::from_secs(6));
        assert_eq!(tcp.keepalive_interval, Duration::from_secs(3));
        assert_eq!(tcp.keepalive_count, 3);
        assert_eq!(tcp.user_timeout, Duration::from_secs(15));
        assert!(tcp.nodelay);
    }

    #[test]
    fn short_intervals_round_up_to_whole_seconds() {
        let tcp = KeepaliveOptions::default().resolve(Duration::from_millis(200));
        assert_eq!(tcp.keepalive_idle, Duration::from_secs(1));
        assert_eq!(tcp.keepalive_interval, Duration::from_secs(1));
        assert_eq!(tcp.user_timeout, Duration::from_secs(4));
        let tcp = KeepaliveOptions::default().resolve(Duration::from_millis(1_500));
        assert_eq!(tcp.keepalive_idle, Duration::from_secs(3));
        assert_eq!(tcp.keepalive_interval, Duration::from_secs(2));
        assert_eq!(tcp.user_timeout, Duration::from_secs(9));
    }

    #[test]
    fn overrides_win_and_feed_the_derived_user_timeout() {
        let opts =
            KeepaliveOptions { idle: Some(Duration::from_secs(10)), count: Some(5), ..KeepaliveOptions::default() };
        let tcp = opts.resolve(Duration::from_secs(2));
        assert_eq!(tcp.keepalive_idle, Duration::from_secs(10));
        assert_eq!(tcp.keepalive_interval, Duration::from_secs(2));
        assert_eq!(tcp.user_timeout, Duration::from_secs(20));
        let off = KeepaliveOptions { idle: Some(Duration::ZERO), ..KeepaliveOptions::default() };
        assert_eq!(off.resolve(Duration::from_secs(2)).user_timeout, Duration::ZERO);
    }

    #[test]
    fn server_syntax() {
        assert!(validate_server("127.0.0.1:7700").is_ok());
        assert!(validate_server("daemon.example:7700").is_ok());
        assert!(validate_server("[::1]:7700").is_ok());
        assert!(validate_server("127.0.0.1").is_err());
        assert!(validate_server(":7700").is_err());
        assert!(validate_server("host:70000").is_err());
    }

    #[test]
    fn backoff_bounds_are_checked() {
        let mut cfg = AgentConfig::new("127.0.0.1:7700", "dev-42");
        cfg.backoff_cap = Duration::from_millis(100);
        assert!(matches!(cfg.validate(), Err(ConfigError::CapBelowBase { .. })));
        cfg.backoff_cap = DEFAULT_BACKOFF_CAP;
        cfg.connect_timeout = Duration::ZERO;
        assert_eq!(cfg.validate(), Err(ConfigError::Zero("connect timeout")));
    }
}
