//! The daemon's configuration: TOML text → validated [`Config`].
//!
//! Parsing happens in two steps: serde reads the TOML into raw tables whose
//! values keep their byte spans, then validation turns them into the plain
//! types below, applying defaults and checking every contradiction. Every
//! error names the file, the line and the key.
//!
//! Invariants of a [`Config`] returned by [`parse`] or [`load`]:
//! - at least one listener; names and addresses are unique;
//! - every duration fits the protocol's `u32` milliseconds;
//! - a listener's `timeout` is zero only for `raw`, otherwise it is at least
//!   two ticks and at least its `interval`;
//! - options that a protocol does not use are rejected rather than ignored;
//! - with keepalive on and `user_timeout` non-zero,
//!   `user_timeout >= keepalive_idle + keepalive_interval * keepalive_count`
//!   (a shorter user timeout would cut the keepalive probes short).

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// The default configuration, built into the binary: `config/heartbeatd.toml`.
pub const EMBEDDED: &str = include_str!("../config/heartbeatd.toml");

/// What a config file may say.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The `[daemon]` table.
    pub daemon: DaemonConfig,
    /// The `[[listener]]` tables, in file order.
    pub listeners: Vec<ListenerConfig>,
}

/// Daemon-wide settings: the `[daemon]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonConfig {
    /// Timer wheel resolution: deadlines fire at most one tick late.
    pub tick: Duration,
    /// Most connections at once, over all listeners.
    pub max_clients: usize,
    /// Most connections from one IP address; 0 means no limit.
    pub max_per_address: usize,
    /// How long shutdown may take to flush BYE frames before exiting.
    pub shutdown_grace: Duration,
    /// Log verbosity.
    pub log_level: log::LevelFilter,
}

/// Which wire protocol a listener speaks (PROTOCOL.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// Framed protocol with HELLO/WELCOME/PING/PONG/BYE/ERROR.
    Native,
    /// `{int type; int length;}` little-endian struct.
    Legacy,
    /// Any byte is activity.
    Raw,
}

impl Protocol {
    /// The name used in config files and log lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Native => "native",
            Protocol::Legacy => "legacy",
            Protocol::Raw => "raw",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `[[listener]]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    /// Unique name, used in log lines.
    pub name: String,
    /// Where to listen; port 0 picks a free port.
    pub address: SocketAddr,
    /// Wire protocol.
    pub protocol: Protocol,
    /// How often a client must send a frame.
    pub interval: Duration,
    /// Silence after which a client is offline; zero disables the check
    /// (`raw` only).
    pub timeout: Duration,
    /// `native`: time allowed between accept and HELLO.
    pub handshake_timeout: Duration,
    /// `native`: the daemon PINGs a client silent for one interval.
    pub server_ping: bool,
    /// `legacy`/`raw`: write heartbeats (legacy) or bytes (raw) back.
    pub echo: bool,
    /// Largest frame payload accepted, in bytes (`native`, `legacy`).
    pub max_frame: usize,
    /// `native`: accepted HELLO tokens; empty means no authentication.
    pub tokens: Vec<Vec<u8>>,
    /// The `[listener.tcp]` socket options.
    pub tcp: TcpConfig,
}

/// Per-listener socket options: the `[listener.tcp]` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpConfig {
    /// Idle time before the first keepalive probe; zero turns keepalive off.
    pub keepalive_idle: Duration,
    /// Time between keepalive probes.
    pub keepalive_interval: Duration,
    /// Unanswered probes before the kernel drops the connection.
    pub keepalive_count: u32,
    /// `TCP_USER_TIMEOUT`: how long sent data may stay unacknowledged;
    /// zero leaves the kernel default.
    pub user_timeout: Duration,
    /// `TCP_NODELAY`.
    pub nodelay: bool,
}

/// A config that could not be read or is invalid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file path, or `embedded config`.
    pub origin: String,
    /// 1-based line of the offending key or value, when known.
    pub line: Option<usize>,
    /// Dotted key path, e.g. `listener[1].tcp.user_timeout`, when known.
    pub key: Option<String>,
    /// What is wrong, and what would be right.
    pub message: String,
}

impl fmt::Display for ConfigError {
    /// `origin:line: key: message`, leaving out what is unknown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let _ = f;
        todo!()
    }
}

impl std::error::Error for ConfigError {}

/// Parses and validates config text. `origin` names it in errors; relative
/// `tokens_file` paths are resolved against `base_dir`.
pub fn parse(text: &str, origin: &str, base_dir: &Path) -> Result<Config, ConfigError> {
    todo!("{text} {origin} {base_dir:?}")
}

/// Reads and validates the config file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    todo!("{path:?}")
}

/// The embedded default config, parsed.
pub fn embedded() -> Result<Config, ConfigError> {
    parse(EMBEDDED, "embedded config", Path::new("."))
}
