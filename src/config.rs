//! The daemon's configuration: TOML text → validated [`Config`].
//!
//! Parsing happens in two steps: serde reads the TOML into raw tables whose
//! values keep their byte spans, then validation turns them into the plain
//! types below, applying defaults and checking every contradiction. Every
//! error names the file, the line and the key.
//!
//! Keys in errors are dotted paths; listeners are numbered from 0 in file
//! order, whatever their name: `daemon.tick`, `listener[1].timeout`,
//! `listener[0].tcp.user_timeout`, `listener[0].tokens[2]`.
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
//!
//! Options a protocol does not use keep their defaults in [`ListenerConfig`]
//! (e.g. `max_frame` is 1024 on a `raw` listener) and mean nothing there.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::net::SocketAddr;
use std::ops::{Range, RangeInclusive};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

/// The default configuration, built into the binary: `config/heartbeatd.toml`.
pub const EMBEDDED: &str = include_str!("../config/heartbeatd.toml");

/// What a config file may say.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The `[daemon]` table.
    pub daemon: DaemonConfig,
    /// The `[[listener]]` tables, in file order.
    pub listeners: Vec<ListenerConfig>,
    /// The `[http]` table: the status API, metrics and event feed; `None`
    /// (no table) serves no HTTP at all.
    pub http: Option<HttpConfig>,
}

/// The `[http]` table: where and how the status API is served.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpConfig {
    /// Where to listen; port 0 picks a free port.
    pub address: SocketAddr,
    /// Most HTTP connections at once (event subscribers included); more
    /// get `503` and are closed.
    pub max_connections: usize,
    /// Time allowed from accept to a complete request head.
    pub request_timeout: Duration,
    /// Recent events kept for `Last-Event-ID` resumption.
    pub history: usize,
    /// Bytes an event subscriber may leave unread before it is dropped.
    pub subscriber_buffer: usize,
}

/// Daemon-wide settings: the `[daemon]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonConfig {
    /// Timer wheel resolution: deadlines fire at most one tick late.
    pub tick: Duration,
    /// Longest nap after a busy round before the loop polls again (wakeup
    /// coalescing, `server/coalesce.rs`); zero is off. Shorter than `tick`.
    pub coalesce: Duration,
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
        let mut location = self.origin.clone();
        if let Some(line) = self.line {
            location.push_str(&format!(":{line}"));
        }
        let parts = [Some(location.as_str()), self.key.as_deref()];
        for part in parts.into_iter().flatten().filter(|p| !p.is_empty()) {
            write!(f, "{part}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Parses and validates config text. `origin` names it in errors; relative
/// `tokens_file` paths are resolved against `base_dir`.
pub fn parse(text: &str, origin: &str, base_dir: &Path) -> Result<Config, ConfigError> {
    let source = Source { text, origin };
    let raw: RawConfig = toml::from_str(text).map_err(|e| source.toml_error(&e))?;
    let daemon = source.daemon(raw.daemon.unwrap_or_default())?;

    let listeners = match raw.listener {
        Some(listeners) if !listeners.get_ref().is_empty() => listeners.into_inner(),
        Some(empty) => {
            return Err(source.at(&empty, "listener", NO_LISTENER.to_owned()));
        }
        None => {
            return Err(source.error(None, Some("listener".to_owned()), NO_LISTENER));
        }
    };

    let http = raw.http.map(|table| source.http(table)).transpose()?;

    let mut seen = Seen::default();
    let listeners = listeners
        .into_iter()
        .enumerate()
        .map(|(index, raw)| {
            let ctx =
                ListenerSource { source: &source, prefix: format!("listener[{index}]"), tick: daemon.tick, base_dir };
            let listener = ctx.listener(raw)?;
            seen.check(&ctx, &listener)?;
            Ok(listener.config)
        })
        .collect::<Result<Vec<_>, ConfigError>>()?;

    if let Some((http, table_span)) = &http {
        if let Some(clash) = listeners.iter().find(|l| l.address == http.address && l.address.port() != 0) {
            return Err(source.error(
                Some(table_span.clone()),
                Some("http.address".to_owned()),
                format!("{} is already the address of listener {:?}", http.address, clash.name),
            ));
        }
    }
    Ok(Config { daemon, listeners, http: http.map(|(config, _)| config) })
}

/// Reads and validates the config file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let origin = path.display().to_string();
    let text = fs::read_to_string(path).map_err(|e| ConfigError {
        origin: origin.clone(),
        line: None,
        key: None,
        message: format!("cannot read config file: {e}"),
    })?;
    // `Path::parent` of a bare file name is the empty path; tokens files
    // next to it are then relative to the working directory.
    let base_dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    parse(&text, &origin, base_dir)
}

/// The embedded default config, parsed.
pub fn embedded() -> Result<Config, ConfigError> {
    parse(EMBEDDED, "embedded config", Path::new("."))
}

/// Message for a config without `[[listener]]` tables.
const NO_LISTENER: &str = "no listener: add at least one [[listener]] table";

/// Longest duration anywhere in the config: the wire protocol and the
/// kernel carry milliseconds in a `u32` (about 49.7 days).
const MAX_DURATION: Duration = Duration::from_millis(u32::MAX as u64);
/// [`MAX_DURATION`] for error messages.
const MAX_DURATION_TEXT: &str = "4294967295ms (about 49.7 days)";

/// `[daemon] tick`: default and allowed range.
const DEFAULT_TICK: Duration = Duration::from_millis(100);
const MIN_TICK: Duration = Duration::from_millis(1);
const MAX_TICK: Duration = Duration::from_secs(1);
/// `[daemon] coalesce` default, measured in docs/BENCHMARKS.md; off when the
/// tick is not longer.
const DEFAULT_COALESCE: Duration = Duration::from_millis(1);
/// `[daemon] max_clients` default.
const DEFAULT_MAX_CLIENTS: usize = 65536;
/// `[daemon] max_clients` range: 16 Mi connections is far past any fd
/// limit, and keeps connection keys within the timer wheel's `u32`.
const MAX_CLIENTS: RangeInclusive<i64> = 1..=16_777_216;
/// `[daemon] shutdown_grace`: default and upper bound (5 min).
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
const MAX_SHUTDOWN_GRACE: Duration = Duration::from_secs(300);

/// Listener defaults: `interval`, `misses`, `handshake_timeout`, `max_frame`.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(3);
const DEFAULT_MISSES: u32 = 5;
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_MAX_FRAME: usize = 1024;
/// `misses` range.
const MISSES: RangeInclusive<i64> = 1..=1000;
/// `max_frame` range for `native`: a frame length is a `u16`, and 16 bytes
/// hold a WELCOME.
const NATIVE_MAX_FRAME: RangeInclusive<i64> = 16..=65535;
/// `max_frame` range for `legacy` (16 MiB).
const LEGACY_MAX_FRAME: RangeInclusive<i64> = 0..=16_777_216;
/// Longest listener name, in characters.
const MAX_NAME_LEN: usize = 64;
/// Longest HELLO token, in bytes: its length is a `u8` on the wire.
const MAX_TOKEN_LEN: usize = 255;

/// `[listener.tcp]` defaults.
const DEFAULT_KEEPALIVE_IDLE: Duration = Duration::from_secs(15);
const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const DEFAULT_KEEPALIVE_COUNT: u32 = 3;
/// `TCP_KEEPCNT` range accepted by Linux.
const KEEPALIVE_COUNT: RangeInclusive<i64> = 1..=127;
/// Largest `TCP_KEEPIDLE` / `TCP_KEEPINTVL` Linux accepts; both are whole
/// seconds.
const MAX_KEEPALIVE_TIME: Duration = Duration::from_secs(32767);

/// The file as serde sees it: every value keeps its span for error lines.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    daemon: Option<RawDaemon>,
    listener: Option<Spanned<Vec<Spanned<RawListener>>>>,
    http: Option<Spanned<RawHttp>>,
}

/// The `[http]` table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    address: Option<Spanned<String>>,
    max_connections: Option<Spanned<i64>>,
    request_timeout: Option<Spanned<String>>,
    history: Option<Spanned<i64>>,
    subscriber_buffer: Option<Spanned<i64>>,
}

/// The `[daemon]` table as written.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    tick: Option<Spanned<String>>,
    coalesce: Option<Spanned<String>>,
    max_clients: Option<Spanned<i64>>,
    max_per_address: Option<Spanned<i64>>,
    shutdown_grace: Option<Spanned<String>>,
    log_level: Option<Spanned<String>>,
}

/// One `[[listener]]` table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    name: Option<Spanned<String>>,
    address: Option<Spanned<String>>,
    protocol: Option<Spanned<String>>,
    interval: Option<Spanned<String>>,
    misses: Option<Spanned<i64>>,
    timeout: Option<Spanned<String>>,
    handshake_timeout: Option<Spanned<String>>,
    server_ping: Option<Spanned<bool>>,
    echo: Option<Spanned<bool>>,
    max_frame: Option<Spanned<i64>>,
    tokens: Option<Spanned<Vec<Spanned<String>>>>,
    tokens_file: Option<Spanned<String>>,
    tcp: Option<RawTcp>,
}

/// The `[listener.tcp]` table as written.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTcp {
    keepalive_idle: Option<Spanned<String>>,
    keepalive_interval: Option<Spanned<String>>,
    keepalive_count: Option<Spanned<i64>>,
    user_timeout: Option<Spanned<String>>,
    nodelay: Option<Spanned<bool>>,
}

/// The config text being validated: turns spans into lines for errors.
struct Source<'a> {
    text: &'a str,
    origin: &'a str,
}

impl Source<'_> {
    /// An error at the start of `span`, if known.
    fn error(&self, span: Option<Range<usize>>, key: Option<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            origin: self.origin.to_owned(),
            line: span.map(|span| self.line_of(span.start)),
            key,
            message: message.into(),
        }
    }

    /// An error about `value`, whose key is `key`.
    fn at<T>(&self, value: &Spanned<T>, key: &str, message: String) -> ConfigError {
        self.error(Some(value.span()), Some(key.to_owned()), message)
    }

    /// 1-based line of byte `offset`.
    fn line_of(&self, offset: usize) -> usize {
        let before = self.text.as_bytes().get(..offset).unwrap_or(self.text.as_bytes());
        1 + before.iter().filter(|&&b| b == b'\n').count()
    }

    /// A syntax, type or unknown-key error from toml. Its message has no key,
    /// so the key is recovered from the span when the text is valid TOML.
    fn toml_error(&self, error: &toml::de::Error) -> ConfigError {
        let span = error.span();
        let key = span.as_ref().and_then(|span| key_at(self.text, span.start));
        self.error(span, key, error.message())
    }

    /// A duration string, checked to fit [`MAX_DURATION`] in whole
    /// milliseconds.
    fn duration(&self, value: &Spanned<String>, key: &str) -> Result<Duration, ConfigError> {
        let text = value.get_ref();
        let duration = humantime::parse_duration(text).map_err(|e| {
            self.at(value, key, format!("invalid duration {text:?} ({e}); write e.g. \"100ms\", \"3s\" or \"5min\""))
        })?;
        if duration > MAX_DURATION {
            return Err(self.at(value, key, format!("{text:?} is too long: at most {MAX_DURATION_TEXT}")));
        }
        // Durations travel as milliseconds; a fraction would be silently
        // dropped (an interval of "500us" would reach clients as 0 ms).
        if duration.subsec_nanos() % 1_000_000 != 0 {
            return Err(self.at(value, key, format!("{text:?} is not a whole number of milliseconds")));
        }
        Ok(duration)
    }

    /// An optional duration within `range`, or `default`.
    fn duration_in(
        &self,
        value: Option<&Spanned<String>>,
        key: &str,
        range: RangeInclusive<Duration>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        let Some(value) = value else {
            return Ok(default);
        };
        let duration = self.duration(value, key)?;
        if !range.contains(&duration) {
            let allowed = if *range.end() == MAX_DURATION {
                format!("at least {}", show(*range.start()))
            } else {
                format!("{}..={}", show(*range.start()), show(*range.end()))
            };
            return Err(self.at(value, key, format!("must be {allowed}, got {}", show(duration))));
        }
        Ok(duration)
    }

    /// An optional integer within `range`, or `default`.
    fn int_in<T: TryFrom<i64>>(
        &self,
        value: Option<&Spanned<i64>>,
        key: &str,
        range: RangeInclusive<i64>,
        default: T,
    ) -> Result<T, ConfigError> {
        let Some(value) = value else {
            return Ok(default);
        };
        let number = *value.get_ref();
        if !range.contains(&number) {
            let allowed = if *range.end() == i64::MAX {
                format!(">= {}", range.start())
            } else {
                format!("{}..={}", range.start(), range.end())
            };
            return Err(self.at(value, key, format!("must be {allowed}, got {number}")));
        }
        T::try_from(number).map_err(|_| self.at(value, key, format!("{number} is too large for this platform")))
    }

    /// Validates the `[daemon]` table.
    fn daemon(&self, raw: RawDaemon) -> Result<DaemonConfig, ConfigError> {
        let log_level = match &raw.log_level {
            None => log::LevelFilter::Info,
            Some(value) => match value.get_ref().as_str() {
                "off" => log::LevelFilter::Off,
                "error" => log::LevelFilter::Error,
                "warn" => log::LevelFilter::Warn,
                "info" => log::LevelFilter::Info,
                "debug" => log::LevelFilter::Debug,
                "trace" => log::LevelFilter::Trace,
                other => {
                    return Err(self.at(
                        value,
                        "daemon.log_level",
                        format!("unknown log level {other:?}: use off, error, warn, info, debug or trace"),
                    ))
                }
            },
        };
        let tick = self.duration_in(raw.tick.as_ref(), "daemon.tick", MIN_TICK..=MAX_TICK, DEFAULT_TICK)?;
        let coalesce = match &raw.coalesce {
            // The default must not refuse a config whose tick is 1 ms.
            None if DEFAULT_COALESCE < tick => DEFAULT_COALESCE,
            None => Duration::ZERO,
            Some(value) => {
                let coalesce = self.duration(value, "daemon.coalesce")?;
                if coalesce >= tick {
                    return Err(self.at(
                        value,
                        "daemon.coalesce",
                        format!("must be shorter than the tick ({}), got {}", show(tick), show(coalesce)),
                    ));
                }
                coalesce
            }
        };
        Ok(DaemonConfig {
            tick,
            coalesce,
            max_clients: self.int_in(
                raw.max_clients.as_ref(),
                "daemon.max_clients",
                MAX_CLIENTS,
                DEFAULT_MAX_CLIENTS,
            )?,
            max_per_address: self.int_in(raw.max_per_address.as_ref(), "daemon.max_per_address", 0..=i64::MAX, 0)?,
            shutdown_grace: self.duration_in(
                raw.shutdown_grace.as_ref(),
                "daemon.shutdown_grace",
                Duration::ZERO..=MAX_SHUTDOWN_GRACE,
                DEFAULT_SHUTDOWN_GRACE,
            )?,
            log_level,
        })
    }
}

impl Source<'_> {
    /// Validates the `[http]` table; returns it with the table's span, for
    /// an address clash found later.
    fn http(&self, raw: Spanned<RawHttp>) -> Result<(HttpConfig, Range<usize>), ConfigError> {
        let span = raw.span();
        let raw = raw.into_inner();
        let Some(address) = &raw.address else {
            return Err(self.error(
                Some(span),
                Some("http.address".to_owned()),
                "missing: the [http] table needs an address such as \"127.0.0.1:7780\" (remove the table to serve no HTTP)",
            ));
        };
        let address = address.get_ref().parse::<SocketAddr>().map_err(|_| {
            self.at(
                address,
                "http.address",
                format!("invalid address {:?}: write ip:port, e.g. \"127.0.0.1:7780\"", address.get_ref()),
            )
        })?;
        let config = HttpConfig {
            address,
            max_connections: self.int_in(
                raw.max_connections.as_ref(),
                "http.max_connections",
                HTTP_MAX_CONNECTIONS,
                DEFAULT_HTTP_MAX_CONNECTIONS,
            )?,
            request_timeout: self.duration_in(
                raw.request_timeout.as_ref(),
                "http.request_timeout",
                HTTP_REQUEST_TIMEOUT,
                DEFAULT_HTTP_REQUEST_TIMEOUT,
            )?,
            history: self.int_in(raw.history.as_ref(), "http.history", HTTP_HISTORY, DEFAULT_HTTP_HISTORY)?,
            subscriber_buffer: self.int_in(
                raw.subscriber_buffer.as_ref(),
                "http.subscriber_buffer",
                HTTP_SUBSCRIBER_BUFFER,
                DEFAULT_HTTP_SUBSCRIBER_BUFFER,
            )?,
        };
        Ok((config, span))
    }
}

/// `[http] max_connections`: default and range. A handful of dashboards,
/// scrapers and feed subscribers; each costs one fd and a buffer.
const DEFAULT_HTTP_MAX_CONNECTIONS: usize = 64;
const HTTP_MAX_CONNECTIONS: RangeInclusive<i64> = 1..=4096;
/// `[http] request_timeout`: default and range; a slowloris client is
/// dropped after this.
const DEFAULT_HTTP_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const HTTP_REQUEST_TIMEOUT: RangeInclusive<Duration> = Duration::from_millis(100)..=Duration::from_secs(300);
/// `[http] history`: default and range, in events.
const DEFAULT_HTTP_HISTORY: usize = 1024;
const HTTP_HISTORY: RangeInclusive<i64> = 1..=1_000_000;
/// `[http] subscriber_buffer`: default and range, in bytes.
const DEFAULT_HTTP_SUBSCRIBER_BUFFER: usize = 256 * 1024;
const HTTP_SUBSCRIBER_BUFFER: RangeInclusive<i64> = 4096..=64 * 1024 * 1024;

/// A validated listener, with the spans needed to report duplicates.
struct CheckedListener {
    config: ListenerConfig,
    name_span: Range<usize>,
    address_span: Range<usize>,
}

/// Validates one `[[listener]]` table; keys are prefixed `listener[i]`.
struct ListenerSource<'a> {
    source: &'a Source<'a>,
    prefix: String,
    /// The daemon's tick: a timeout must span at least two.
    tick: Duration,
    /// Where relative `tokens_file` paths start.
    base_dir: &'a Path,
}

impl ListenerSource<'_> {
    /// `listener[i].field`.
    fn key(&self, field: &str) -> String {
        format!("{}.{field}", self.prefix)
    }

    /// An error about `value` of `field`.
    fn at<T>(&self, value: &Spanned<T>, field: &str, message: String) -> ConfigError {
        self.source.at(value, &self.key(field), message)
    }

    /// Validates the whole listener table.
    fn listener(&self, raw: Spanned<RawListener>) -> Result<CheckedListener, ConfigError> {
        let table_span = raw.span();
        let raw = raw.into_inner();
        let missing = |field: &str, allowed: &str| {
            self.source.error(
                Some(table_span.clone()),
                Some(self.key(field)),
                format!("{field} is required: {allowed}"),
            )
        };

        let name = raw
            .name
            .as_ref()
            .ok_or_else(|| missing("name", "a unique name of 1..=64 characters from A-Z a-z 0-9 _ . -"))?;
        self.check_name(name)?;
        let address = raw
            .address
            .as_ref()
            .ok_or_else(|| missing("address", "ip:port to listen on, e.g. \"127.0.0.1:7700\" or \"[::1]:7700\""))?;
        let socket_address = address.get_ref().parse::<SocketAddr>().map_err(|_| {
            self.at(
                address,
                "address",
                format!(
                    "{:?} is not ip:port; write e.g. \"127.0.0.1:7700\" or \"[::1]:7700\" \
                     (no host names; port 0 picks a free port)",
                    address.get_ref()
                ),
            )
        })?;

        let protocol = match &raw.protocol {
            None => Protocol::Native,
            Some(value) => match value.get_ref().as_str() {
                "native" => Protocol::Native,
                "legacy" => Protocol::Legacy,
                "raw" => Protocol::Raw,
                other => {
                    return Err(self.at(
                        value,
                        "protocol",
                        format!("unknown protocol {other:?}: use native, legacy or raw"),
                    ))
                }
            },
        };
        // Options a protocol does not use are errors: silently ignoring
        // them would hide a wrong `protocol` line.
        use Protocol::{Legacy, Native, Raw};
        let native = (&[Native][..], "native");
        let legacy_raw = (&[Legacy, Raw][..], "legacy and raw");
        let framed = (&[Native, Legacy][..], "native and legacy");
        let protocol_only = [
            ("handshake_timeout", raw.handshake_timeout.as_ref().map(Spanned::span), native),
            ("server_ping", raw.server_ping.as_ref().map(Spanned::span), native),
            ("tokens", raw.tokens.as_ref().map(Spanned::span), native),
            ("tokens_file", raw.tokens_file.as_ref().map(Spanned::span), native),
            ("echo", raw.echo.as_ref().map(Spanned::span), legacy_raw),
            ("max_frame", raw.max_frame.as_ref().map(Spanned::span), framed),
        ];
        for (field, span, (allowed, users)) in protocol_only {
            if span.is_some() && !allowed.contains(&protocol) {
                return Err(self.source.error(
                    span,
                    Some(self.key(field)),
                    format!("{field} applies only to {users} listeners, not {protocol}"),
                ));
            }
        }

        let interval = self.source.duration_in(
            raw.interval.as_ref(),
            &self.key("interval"),
            Duration::from_millis(1)..=MAX_DURATION,
            DEFAULT_INTERVAL,
        )?;
        let timeout = self.timeout(&raw, protocol, interval)?;
        let handshake_timeout = self.source.duration_in(
            raw.handshake_timeout.as_ref(),
            &self.key("handshake_timeout"),
            Duration::from_millis(1)..=MAX_DURATION,
            DEFAULT_HANDSHAKE_TIMEOUT,
        )?;
        let max_frame_range = match protocol {
            Legacy => LEGACY_MAX_FRAME,
            // Raw never reaches the check: max_frame was rejected above.
            Native | Raw => NATIVE_MAX_FRAME,
        };
        let max_frame =
            self.source.int_in(raw.max_frame.as_ref(), &self.key("max_frame"), max_frame_range, DEFAULT_MAX_FRAME)?;
        let tokens = self.tokens(&raw)?;
        let tcp = self.tcp(raw.tcp.unwrap_or_default())?;

        Ok(CheckedListener {
            config: ListenerConfig {
                name: name.get_ref().clone(),
                address: socket_address,
                protocol,
                interval,
                timeout,
                handshake_timeout,
                server_ping: raw.server_ping.is_some_and(Spanned::into_inner),
                echo: raw.echo.is_some_and(Spanned::into_inner),
                max_frame,
                tokens,
                tcp,
            },
            name_span: name.span(),
            address_span: address.span(),
        })
    }

    /// Checks a listener name: it appears in every log line, so it must not
    /// break one.
    fn check_name(&self, name: &Spanned<String>) -> Result<(), ConfigError> {
        let text = name.get_ref();
        let valid_chars = text.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if text.is_empty() || text.chars().count() > MAX_NAME_LEN || !valid_chars {
            return Err(self.at(
                name,
                "name",
                format!("invalid name {text:?}: use 1..=64 characters from A-Z a-z 0-9 _ . -"),
            ));
        }
        Ok(())
    }

    /// The silence timeout: `timeout` as given, or `interval * misses`.
    fn timeout(&self, raw: &RawListener, protocol: Protocol, interval: Duration) -> Result<Duration, ConfigError> {
        if let (Some(misses), Some(timeout)) = (&raw.misses, &raw.timeout) {
            return Err(self.at(
                timeout,
                "timeout",
                format!(
                    "give either misses (line {}) or timeout, not both; \
                     timeout = interval * misses",
                    self.source.line_of(misses.span().start)
                ),
            ));
        }
        if let Some(value) = &raw.timeout {
            let timeout = self.source.duration(value, &self.key("timeout"))?;
            let shown = format!("timeout {}", show(timeout));
            return self.check_timeout(timeout, shown, value.span(), "timeout", protocol, interval);
        }

        let misses = self.source.int_in(raw.misses.as_ref(), &self.key("misses"), MISSES, DEFAULT_MISSES)?;
        // Blame what the operator wrote: misses if given, else interval.
        // The defaults alone (15s) always pass, as a tick is at most 1s.
        let (span, field) = match (&raw.misses, &raw.interval) {
            (Some(misses), _) => (misses.span(), "misses"),
            (None, Some(interval)) => (interval.span(), "interval"),
            (None, None) => return Ok(DEFAULT_INTERVAL * DEFAULT_MISSES),
        };
        let timeout = interval * misses;
        let shown = format!("timeout = interval {} * misses {misses} = {}", show(interval), show(timeout));
        if timeout > MAX_DURATION {
            return Err(self.source.error(
                Some(span),
                Some(self.key(field)),
                format!("{shown} is too long: at most {MAX_DURATION_TEXT}"),
            ));
        }
        self.check_timeout(timeout, shown, span, field, protocol, interval)
    }

    /// Checks a timeout against the protocol, the tick and the interval;
    /// `shown` describes it in messages, the error goes to `field` at `span`.
    fn check_timeout(
        &self,
        timeout: Duration,
        shown: String,
        span: Range<usize>,
        field: &str,
        protocol: Protocol,
        interval: Duration,
    ) -> Result<Duration, ConfigError> {
        let error = |message: String| self.source.error(Some(span.clone()), Some(self.key(field)), message);
        if timeout.is_zero() {
            // Only raw may rely on TCP alone: native and legacy clients are
            // required to send, so their silence must be detected.
            if protocol == Protocol::Raw {
                return Ok(timeout);
            }
            return Err(error(format!(
                "timeout 0s (no silence check) is allowed only for raw listeners, not {protocol}"
            )));
        }
        // The wheel fires up to one tick late and a deadline may start
        // mid-tick: below two ticks a timeout cannot be honoured.
        let two_ticks = self.tick * 2;
        if timeout < two_ticks {
            return Err(error(format!(
                "{shown} is shorter than two ticks (tick {}): must be at least {}",
                show(self.tick),
                show(two_ticks)
            )));
        }
        if timeout < interval {
            return Err(error(format!(
                "{shown} is shorter than interval {}: a client sending every interval \
                 would be declared offline",
                show(interval)
            )));
        }
        Ok(timeout)
    }

    /// HELLO tokens from `tokens` or `tokens_file`; empty when neither is
    /// given.
    fn tokens(&self, raw: &RawListener) -> Result<Vec<Vec<u8>>, ConfigError> {
        match (&raw.tokens, &raw.tokens_file) {
            (Some(_), Some(file)) => {
                Err(self.at(file, "tokens_file", "give either tokens or tokens_file, not both".to_owned()))
            }
            (Some(list), None) => {
                // An empty list would silently turn authentication off.
                if list.get_ref().is_empty() {
                    return Err(self.at(
                        list,
                        "tokens",
                        "tokens is empty: list at least one token, or leave tokens out \
                         to accept any client"
                            .to_owned(),
                    ));
                }
                list.get_ref()
                    .iter()
                    .enumerate()
                    .map(|(i, token)| {
                        let bytes = token.get_ref().as_bytes();
                        if bytes.is_empty() || bytes.len() > MAX_TOKEN_LEN {
                            return Err(self.at(
                                token,
                                &format!("tokens[{i}]"),
                                format!("token is {} bytes; tokens are 1..=255 bytes", bytes.len()),
                            ));
                        }
                        Ok(bytes.to_vec())
                    })
                    .collect()
            }
            (None, Some(file)) => self.tokens_file(file),
            (None, None) => Ok(Vec::new()),
        }
    }

    /// Reads a tokens file: one token per line, trimmed; blank lines and
    /// `#` comments skipped.
    fn tokens_file(&self, file: &Spanned<String>) -> Result<Vec<Vec<u8>>, ConfigError> {
        let path = self.base_dir.join(file.get_ref());
        let shown = path.display();
        let contents = fs::read(&path)
            .map_err(|e| self.at(file, "tokens_file", format!("cannot read tokens file {shown}: {e}")))?;
        let mut tokens = Vec::new();
        for (number, line) in contents.split(|&b| b == b'\n').enumerate() {
            let token = line.trim_ascii();
            if token.is_empty() || token.starts_with(b"#") {
                continue;
            }
            if token.len() > MAX_TOKEN_LEN {
                return Err(self.at(
                    file,
                    "tokens_file",
                    format!(
                        "tokens file {shown} line {}: token is {} bytes; tokens are 1..=255 bytes",
                        number + 1,
                        token.len()
                    ),
                ));
            }
            tokens.push(token.to_vec());
        }
        // An empty file would silently turn authentication off.
        if tokens.is_empty() {
            return Err(self.at(
                file,
                "tokens_file",
                format!("tokens file {shown} holds no token: write one token per line"),
            ));
        }
        Ok(tokens)
    }

    /// Validates the `[listener.tcp]` table.
    fn tcp(&self, raw: RawTcp) -> Result<TcpConfig, ConfigError> {
        let key = |field: &str| self.key(&format!("tcp.{field}"));
        let idle = self.source.duration_in(
            raw.keepalive_idle.as_ref(),
            &key("keepalive_idle"),
            Duration::ZERO..=MAX_DURATION,
            DEFAULT_KEEPALIVE_IDLE,
        )?;
        let interval = self.source.duration_in(
            raw.keepalive_interval.as_ref(),
            &key("keepalive_interval"),
            Duration::ZERO..=MAX_DURATION,
            DEFAULT_KEEPALIVE_INTERVAL,
        )?;
        let count: u32 = self.source.int_in(
            raw.keepalive_count.as_ref(),
            &key("keepalive_count"),
            KEEPALIVE_COUNT,
            DEFAULT_KEEPALIVE_COUNT,
        )?;
        let keepalive = !idle.is_zero();
        // With keepalive off, the probe settings are unused and not checked.
        if keepalive {
            self.keepalive_time(raw.keepalive_idle.as_ref(), idle, &key("keepalive_idle"))?;
            self.keepalive_time(raw.keepalive_interval.as_ref(), interval, &key("keepalive_interval"))?;
        }
        // At most 32767s + 32767s * 127, which fits MAX_DURATION.
        let probes = if keepalive { idle + interval * count } else { Duration::ZERO };
        let user_timeout = match &raw.user_timeout {
            None => probes,
            Some(value) => {
                let user_timeout = self.source.duration(value, &key("user_timeout"))?;
                // Zero keeps the kernel default, which never cuts probes.
                if keepalive && !user_timeout.is_zero() && user_timeout < probes {
                    return Err(self.source.at(
                        value,
                        &key("user_timeout"),
                        format!(
                            "user_timeout {} would cut keepalive probes short: needs >= {} \
                             (keepalive_idle {} + keepalive_interval {} * keepalive_count {count}), \
                             or \"0s\" for the kernel default",
                            show(user_timeout),
                            show(probes),
                            show(idle),
                            show(interval)
                        ),
                    ));
                }
                user_timeout
            }
        };
        Ok(TcpConfig {
            keepalive_idle: idle,
            keepalive_interval: interval,
            keepalive_count: count,
            user_timeout,
            nodelay: raw.nodelay.is_none_or(Spanned::into_inner),
        })
    }

    /// Checks a keepalive time the kernel takes in whole seconds,
    /// 1..=32767; `value` is `None` for a default, which is valid.
    fn keepalive_time(&self, value: Option<&Spanned<String>>, time: Duration, key: &str) -> Result<(), ConfigError> {
        match value {
            Some(value) if time.is_zero() || time.subsec_nanos() != 0 || time > MAX_KEEPALIVE_TIME => {
                Err(self.source.at(
                    value,
                    key,
                    format!(
                        "must be whole seconds in 1s..=32767s while keepalive is on \
                         (the kernel's unit and limit), got {}",
                        show(time)
                    ),
                ))
            }
            _ => Ok(()),
        }
    }
}

/// Names and addresses of the listeners validated so far, each with the
/// key prefix and line of the listener that has it.
#[derive(Default)]
struct Seen {
    names: HashMap<String, (String, usize)>,
    /// Port-0 addresses are not recorded: the kernel gives each listener
    /// its own free port, so they cannot collide.
    addresses: HashMap<SocketAddr, (String, usize)>,
}

impl Seen {
    /// Rejects a listener whose name or address an earlier one has.
    fn check(&mut self, ctx: &ListenerSource<'_>, listener: &CheckedListener) -> Result<(), ConfigError> {
        let config = &listener.config;
        let here = |span: &Range<usize>| (ctx.prefix.clone(), ctx.source.line_of(span.start));
        let duplicate = |field: &str, value: String, span: &Range<usize>, (first, line): (String, usize)| {
            ctx.source.error(
                Some(span.clone()),
                Some(ctx.key(field)),
                format!("duplicate listener {field} {value}: already used by {first} on line {line}"),
            )
        };
        if let Some(first) = self.names.insert(config.name.clone(), here(&listener.name_span)) {
            return Err(duplicate("name", format!("{:?}", config.name), &listener.name_span, first));
        }
        if config.address.port() != 0 {
            if let Some(first) = self.addresses.insert(config.address, here(&listener.address_span)) {
                return Err(duplicate("address", config.address.to_string(), &listener.address_span, first));
            }
        }
        Ok(())
    }
}

/// The dotted key path of the entry at byte `offset`, or `None` when the
/// text is not valid TOML.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let root = toml::de::DeTable::parse(text).ok()?;
    key_in_table(root.get_ref(), offset)
}

/// Searches a table: the deepest entry whose key or value covers `offset`.
fn key_in_table(table: &toml::de::DeTable<'_>, offset: usize) -> Option<String> {
    table.iter().find_map(|(key, value)| {
        let name = key.get_ref();
        // Look inside first: a table's own span is only its header, so a
        // child may match where the parent does not.
        if let Some(rest) = key_in_value(value.get_ref(), offset) {
            return Some(format!("{name}{rest}"));
        }
        (covers(&key.span(), offset) || covers(&value.span(), offset)).then(|| name.to_string())
    })
}

/// Searches inside a value; returns the path below it (`.key`, `[i]`).
fn key_in_value(value: &toml::de::DeValue<'_>, offset: usize) -> Option<String> {
    match value {
        toml::de::DeValue::Table(table) => key_in_table(table, offset).map(|key| format!(".{key}")),
        toml::de::DeValue::Array(items) => {
            items.iter().enumerate().find_map(|(i, item)| match key_in_value(item.get_ref(), offset) {
                Some(rest) => Some(format!("[{i}]{rest}")),
                None => covers(&item.span(), offset).then(|| format!("[{i}]")),
            })
        }
        _ => None,
    }
}

/// Whether `span` covers `offset`; an empty span covers its start.
fn covers(span: &Range<usize>, offset: usize) -> bool {
    span.start <= offset && offset < span.end.max(span.start + 1)
}

/// A duration as the config writes it, e.g. `15s`, `1m 30s`.
fn show(duration: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(duration)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A listener table starting on line 1, with `extra` from line 4 on.
    fn listener(extra: &str) -> String {
        format!("[[listener]]\nname = \"a\"\naddress = \"127.0.0.1:7700\"\n{extra}")
    }

    fn parse_ok(text: &str) -> Config {
        match parse(text, "test.toml", Path::new("/nonexistent")) {
            Ok(config) => config,
            Err(e) => panic!("unexpected error: {e}\n--- config:\n{text}"),
        }
    }

    fn parse_err(text: &str) -> ConfigError {
        match parse(text, "test.toml", Path::new("/nonexistent")) {
            Ok(config) => panic!("expected an error, got {config:?}\n--- config:\n{text}"),
            Err(e) => e,
        }
    }

    /// Asserts an error's line, key, and a fragment of its message.
    #[track_caller]
    fn assert_err(text: &str, line: usize, key: &str, fragment: &str) {
        let e = parse_err(text);
        assert_eq!(e.origin, "test.toml", "{e}");
        assert_eq!(e.line, Some(line), "{e}");
        assert_eq!(e.key.as_deref(), Some(key), "{e}");
        assert!(e.message.contains(fragment), "{e:?} lacks {fragment:?}");
    }

    fn only(text: &str) -> ListenerConfig {
        let mut config = parse_ok(text);
        assert_eq!(config.listeners.len(), 1);
        config.listeners.remove(0)
    }

    /// A fresh directory under the system temp dir.
    fn temp_dir(test: &str) -> PathBuf {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "heartbeatd-config-{test}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    fn default_tcp() -> TcpConfig {
        TcpConfig {
            keepalive_idle: secs(15),
            keepalive_interval: secs(5),
            keepalive_count: 3,
            user_timeout: secs(30),
            nodelay: true,
        }
    }

    #[test]
    fn embedded_is_the_documented_default() {
        let expected = Config {
            daemon: DaemonConfig {
                tick: ms(100),
                coalesce: ms(1),
                max_clients: 65536,
                max_per_address: 0,
                shutdown_grace: secs(5),
                log_level: log::LevelFilter::Info,
            },
            listeners: vec![ListenerConfig {
                name: "main".into(),
                address: "127.0.0.1:7700".parse().unwrap(),
                protocol: Protocol::Native,
                interval: secs(3),
                timeout: secs(15),
                handshake_timeout: secs(5),
                server_ping: false,
                echo: false,
                max_frame: 1024,
                tokens: vec![],
                tcp: default_tcp(),
            }],
            http: Some(HttpConfig {
                address: "127.0.0.1:7780".parse().unwrap(),
                max_connections: 64,
                request_timeout: secs(10),
                history: 1024,
                subscriber_buffer: 262144,
            }),
        };
        assert_eq!(embedded().unwrap(), expected);
    }

    /// The part of the embedded config before its commented-out examples.
    fn embedded_main_part() -> &'static str {
        let end = EMBEDDED.find("# Examples.").unwrap();
        &EMBEDDED[..end]
    }

    /// `#key = value` lines: an option commented out at its default.
    fn is_commented_key(line: &str) -> bool {
        line.strip_prefix('#').is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_lowercase()))
    }

    #[test]
    fn embedded_commented_out_keys_are_at_their_defaults() {
        let lines: Vec<&str> = embedded_main_part().lines().collect();
        let mut checked = 0;
        for (i, line) in lines.iter().enumerate() {
            if !is_commented_key(line) {
                continue;
            }
            let mut edited: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
            edited[i] = line[1..].to_string();
            // timeout replaces misses; both at once are an error.
            if line.starts_with("#timeout") {
                let misses = lines.iter().position(|l| l.starts_with("misses")).unwrap();
                edited[misses] = format!("#{}", lines[misses]);
            }
            let config = parse(&edited.join("\n"), "edited", Path::new(".")).unwrap();
            assert_eq!(config, embedded().unwrap(), "uncommented {line:?}");
            checked += 1;
        }
        assert_eq!(checked, 18);
    }

    #[test]
    fn embedded_examples_parse_when_uncommented() {
        let main = embedded_main_part();
        let examples: Vec<String> = EMBEDDED[main.len()..]
            .lines()
            .map(|line| match line.strip_prefix('#') {
                Some(rest) if rest.starts_with(|c: char| c == '[' || c.is_ascii_lowercase()) => rest.to_string(),
                _ => line.to_string(),
            })
            .collect();
        let config = parse_ok(&format!("{main}{}", examples.join("\n")));
        let [native, legacy, raw] = &config.listeners[..] else {
            panic!("expected three listeners: {config:?}");
        };
        assert_eq!(native.protocol, Protocol::Native);
        assert_eq!(legacy.protocol, Protocol::Legacy);
        assert_eq!((legacy.timeout, legacy.echo, legacy.max_frame), (secs(30), true, 4096));
        assert_eq!(raw.protocol, Protocol::Raw);
        assert_eq!(raw.timeout, Duration::ZERO);
        assert_eq!(raw.tcp.user_timeout, secs(18));
    }

    #[test]
    fn http_table_is_optional_and_validated() {
        assert_eq!(parse_ok(&listener("")).http, None);
        let http = parse_ok(&format!("[http]\naddress = \"127.0.0.1:0\"\nhistory = 5\n{}", listener("")))
            .http
            .expect("http table");
        assert_eq!((http.address.port(), http.history, http.max_connections), (0, 5, 64));
        assert_err(&format!("[http]\nmax_connections = 3\n{}", listener("")), 1, "http.address", "missing");
        assert_err(&format!("[http]\naddress = \"localhost:80\"\n{}", listener("")), 2, "http.address", "ip:port");
        assert_err(
            &format!("[http]\naddress = \"127.0.0.1:0\"\nhistory = 0\n{}", listener("")),
            3,
            "http.history",
            "1..=1000000",
        );
        assert_err(
            &format!("[http]\naddress = \"127.0.0.1:0\"\nbogus = 1\n{}", listener("")),
            3,
            "http.bogus",
            "unknown field",
        );
    }

    #[test]
    fn http_address_must_not_be_a_listener_address() {
        let text = "[http]\naddress = \"127.0.0.1:7700\"\n[[listener]]\nname = \"a\"\naddress = \"127.0.0.1:7700\"\n";
        assert_err(text, 1, "http.address", "listener \"a\"");
    }

    #[test]
    fn embedded_documents_every_key() {
        let keys = [
            "[daemon]",
            "tick",
            "max_clients",
            "max_per_address",
            "shutdown_grace",
            "log_level",
            "[[listener]]",
            "name",
            "address",
            "protocol",
            "interval",
            "misses",
            "timeout",
            "handshake_timeout",
            "server_ping",
            "echo",
            "max_frame",
            "tokens",
            "tokens_file",
            "[listener.tcp]",
            "keepalive_idle",
            "keepalive_interval",
            "keepalive_count",
            "user_timeout",
            "nodelay",
            "[http]",
            "max_connections",
            "request_timeout",
            "history",
            "subscriber_buffer",
        ];
        for key in keys {
            assert!(EMBEDDED.contains(&format!("{key} ")) || EMBEDDED.contains(&format!("{key}\n")), "{key}");
        }
    }

    #[test]
    fn defaults() {
        let config = parse_ok(&listener(""));
        assert_eq!(
            config.daemon,
            DaemonConfig {
                tick: ms(100),
                coalesce: ms(1),
                max_clients: 65536,
                max_per_address: 0,
                shutdown_grace: secs(5),
                log_level: log::LevelFilter::Info,
            }
        );
        let l = &config.listeners[0];
        assert_eq!(l.protocol, Protocol::Native);
        assert_eq!((l.interval, l.timeout, l.handshake_timeout), (secs(3), secs(15), secs(5)));
        assert_eq!((l.server_ping, l.echo, l.max_frame), (false, false, 1024));
        assert!(l.tokens.is_empty());
        assert_eq!(l.tcp, default_tcp());
    }

    #[test]
    fn coalesce_is_shorter_than_the_tick_and_off_by_default_at_a_1ms_tick() {
        let daemon = |table: &str| format!("[daemon]\n{table}\n{}", listener(""));
        assert_eq!(parse_ok(&daemon("coalesce = \"0s\"")).daemon.coalesce, Duration::ZERO);
        assert_eq!(parse_ok(&daemon("tick = \"1ms\"")).daemon.coalesce, Duration::ZERO);
        assert_eq!(parse_ok(&daemon("tick = \"2ms\"")).daemon.coalesce, ms(1));
        assert_err(
            &daemon("tick = \"5ms\"\ncoalesce = \"5ms\""),
            3,
            "daemon.coalesce",
            "shorter than the tick (5ms), got 5ms",
        );
        assert_err(&daemon("coalesce = \"500us\""), 2, "daemon.coalesce", "not a whole number of milliseconds");
    }

    #[test]
    fn all_values_are_read() {
        let text = "[daemon]\ntick = \"10ms\"\ncoalesce = \"3ms\"\nmax_clients = 7\nmax_per_address = 2\n\
                    shutdown_grace = \"0s\"\nlog_level = \"trace\"\n"
            .to_owned()
            + &listener(
                "protocol = \"native\"\ninterval = \"1s\"\nmisses = 4\nhandshake_timeout = \"2s\"\n\
                 server_ping = true\nmax_frame = 16\ntokens = [\"t1\", \"t2\"]\n\
                 [listener.tcp]\nkeepalive_idle = \"0s\"\nkeepalive_count = 9\nnodelay = false\n",
            );
        let config = parse_ok(&text);
        assert_eq!((config.daemon.tick, config.daemon.coalesce), (ms(10), ms(3)));
        assert_eq!((config.daemon.max_clients, config.daemon.max_per_address), (7, 2));
        assert_eq!(config.daemon.shutdown_grace, Duration::ZERO);
        assert_eq!(config.daemon.log_level, log::LevelFilter::Trace);
        let l = &config.listeners[0];
        assert_eq!((l.interval, l.timeout, l.handshake_timeout), (secs(1), secs(4), secs(2)));
        assert_eq!((l.server_ping, l.max_frame), (true, 16));
        assert_eq!(l.tokens, vec![b"t1".to_vec(), b"t2".to_vec()]);
        // Keepalive off: user_timeout defaults to the kernel's (0).
        assert_eq!(l.tcp.keepalive_idle, Duration::ZERO);
        assert_eq!((l.tcp.keepalive_count, l.tcp.user_timeout, l.tcp.nodelay), (9, Duration::ZERO, false));
    }

    #[test]
    fn display_leaves_out_unknown_parts() {
        let mut e = ConfigError {
            origin: "/etc/heartbeatd/heartbeatd.toml".into(),
            line: Some(7),
            key: Some("daemon.tick".into()),
            message: "must be 1ms..=1s, got 2s".into(),
        };
        assert_eq!(e.to_string(), "/etc/heartbeatd/heartbeatd.toml:7: daemon.tick: must be 1ms..=1s, got 2s");
        e.key = None;
        assert_eq!(e.to_string(), "/etc/heartbeatd/heartbeatd.toml:7: must be 1ms..=1s, got 2s");
        e.line = None;
        assert_eq!(e.to_string(), "/etc/heartbeatd/heartbeatd.toml: must be 1ms..=1s, got 2s");
        e.key = Some("listener".into());
        assert_eq!(e.to_string(), "/etc/heartbeatd/heartbeatd.toml: listener: must be 1ms..=1s, got 2s");
    }

    #[test]
    fn syntax_error_has_line_and_toml_message() {
        let e = parse_err("[daemon]\ntick = \"1s\"\nmax_clients = \n");
        assert_eq!(e.line, Some(3));
        assert_eq!(e.key, None);
        assert!(!e.message.is_empty());
        assert!(e.to_string().starts_with("test.toml:3: "), "{e}");
    }

    #[test]
    fn unknown_keys() {
        assert_err("[daemon]\ntick = \"1s\"\nbogus = 1\n", 3, "daemon.bogus", "unknown field `bogus`");
        assert_err(&listener("\n\n\ninterval = \"1s\"\nmisess = 3\n"), 8, "listener[0].misess", "unknown field");
        assert_err(
            &listener("[listener.tcp]\nnodelay = true\nkeepalive = \"1s\"\n"),
            6,
            "listener[0].tcp.keepalive",
            "unknown field",
        );
        assert_err(&listener("tcp = { nodelay = true, idle = 1 }\n"), 4, "listener[0].tcp.idle", "unknown field");
        assert_err(&format!("{}listeners = 1\n", listener("")), 4, "listener[0].listeners", "unknown field");
        assert_err("deamon = 1\n", 1, "deamon", "unknown field");
        // In the second listener.
        let two =
            format!("{}{}", listener(""), listener("prot = 1\n").replace("\"a\"", "\"b\"").replace("7700", "7701"));
        assert_err(&two, 7, "listener[1].prot", "unknown field");
    }

    #[test]
    fn wrong_types() {
        assert_err("[daemon]\ntick = 5\n", 2, "daemon.tick", "expected a string");
        assert_err("daemon = 5\n", 1, "daemon", "invalid type");
        assert_err(&listener("echo = \"yes\"\n"), 4, "listener[0].echo", "expected a boolean");
        assert_err(&listener("tokens = [\"x\",\n  3]\n"), 5, "listener[0].tokens[1]", "expected a string");
        assert_err(&listener("misses = 2.5\n"), 4, "listener[0].misses", "invalid type");
        assert_err("listener = 3\n", 1, "listener", "invalid type");
    }

    #[test]
    fn unparsable_and_inexact_durations() {
        assert_err(&listener("interval = \"3 parsecs\"\n"), 4, "listener[0].interval", "invalid duration");
        assert_err(&listener("interval = \"\"\n"), 4, "listener[0].interval", "invalid duration");
        assert_err(&listener("interval = \"1500us\"\n"), 4, "listener[0].interval", "whole number of milliseconds");
        assert_eq!(only(&listener("interval = \"1s 500ms\"\n")).interval, ms(1500));
    }

    #[test]
    fn numbers_out_of_range() {
        assert_err("[daemon]\nmax_clients = -1\n", 2, "daemon.max_clients", "must be 1..=16777216, got -1");
        assert_err("[daemon]\nmax_clients = 0\n", 2, "daemon.max_clients", "1..=16777216");
        assert_err("[daemon]\nmax_clients = 16777217\n", 2, "daemon.max_clients", "1..=16777216");
        assert_err("[daemon]\nmax_per_address = -5\n", 2, "daemon.max_per_address", ">= 0");
        assert_err(&listener("misses = 0\n"), 4, "listener[0].misses", "1..=1000");
        assert_err(&listener("misses = 1001\n"), 4, "listener[0].misses", "1..=1000");
        assert_eq!(only(&listener("misses = 1000\n")).timeout, secs(3000));
        assert_err(&listener("max_frame = 15\n"), 4, "listener[0].max_frame", "16..=65535");
        assert_err(&listener("max_frame = 65536\n"), 4, "listener[0].max_frame", "16..=65535");
        assert_eq!(only(&listener("max_frame = 65535\n")).max_frame, 65535);
        assert_eq!(only(&listener("protocol = \"legacy\"\nmax_frame = 0\n")).max_frame, 0);
        assert_eq!(only(&listener("protocol = \"legacy\"\nmax_frame = 16777216\n")).max_frame, 16_777_216);
        assert_err(
            &listener("protocol = \"legacy\"\nmax_frame = 16777217\n"),
            5,
            "listener[0].max_frame",
            "0..=16777216",
        );
        assert_err(
            &listener("[listener.tcp]\nkeepalive_count = 128\n"),
            5,
            "listener[0].tcp.keepalive_count",
            "1..=127",
        );
        assert_err(&listener("[listener.tcp]\nkeepalive_count = 0\n"), 5, "listener[0].tcp.keepalive_count", "1..=127");
    }

    #[test]
    fn duration_ranges() {
        assert_err("[daemon]\ntick = \"2s\"\n", 2, "daemon.tick", "1ms..=1s, got 2s");
        assert_err("[daemon]\ntick = \"0s\"\n", 2, "daemon.tick", "1ms..=1s");
        assert_eq!(
            parse_ok(&format!("[daemon]\ntick = \"1s\"\n{}", listener("interval = \"1s\"\ntimeout = \"2s\"\n")))
                .daemon
                .tick,
            secs(1)
        );
        assert_err("[daemon]\nshutdown_grace = \"5min 1s\"\n", 2, "daemon.shutdown_grace", "0s..=5m");
        assert_eq!(
            parse_ok(&format!("[daemon]\nshutdown_grace = \"5min\"\n{}", listener(""))).daemon.shutdown_grace,
            secs(300)
        );
        assert_err(&listener("interval = \"0s\"\n"), 4, "listener[0].interval", "at least 1ms");
        assert_err(&listener("handshake_timeout = \"0s\"\n"), 4, "listener[0].handshake_timeout", "at least 1ms");
    }

    #[test]
    fn durations_must_fit_u32_milliseconds() {
        assert_eq!(only(&listener("interval = \"4294967295ms\"\nmisses = 1\n")).timeout, ms(u64::from(u32::MAX)));
        assert_err(&listener("interval = \"4294967296ms\"\nmisses = 1\n"), 4, "listener[0].interval", "too long");
        assert_err(
            &listener("[listener.tcp]\nuser_timeout = \"60days\"\n"),
            5,
            "listener[0].tcp.user_timeout",
            "too long",
        );
        // interval * misses overflows: blame misses.
        assert_err(&listener("interval = \"30days\"\nmisses = 2\n"), 5, "listener[0].misses", "too long");
        // ...or the interval when misses is the default.
        assert_err(&listener("interval = \"10days\"\n"), 4, "listener[0].interval", "too long");
    }

    #[test]
    fn timeout_shorter_than_two_ticks() {
        let text = format!("[daemon]\ntick = \"100ms\"\n{}", listener("interval = \"50ms\"\ntimeout = \"150ms\"\n"));
        let e = parse_err(&text);
        assert_eq!((e.line, e.key.as_deref()), (Some(7), Some("listener[0].timeout")));
        assert!(e.message.contains("150ms") && e.message.contains("100ms") && e.message.contains("200ms"), "{e}");
        // Exactly two ticks is enough.
        let ok = format!("[daemon]\ntick = \"100ms\"\n{}", listener("interval = \"50ms\"\ntimeout = \"200ms\"\n"));
        assert_eq!(parse_ok(&ok).listeners[0].timeout, ms(200));
        // A derived timeout is checked too, blaming what was written.
        let derived = format!("[daemon]\ntick = \"100ms\"\n{}", listener("interval = \"50ms\"\nmisses = 3\n"));
        assert_err(&derived, 7, "listener[0].misses", "two ticks");
    }

    #[test]
    fn timeout_shorter_than_interval() {
        assert_err(
            &listener("interval = \"3s\"\ntimeout = \"2s\"\n"),
            5,
            "listener[0].timeout",
            "shorter than interval 3s",
        );
        assert_eq!(only(&listener("interval = \"3s\"\ntimeout = \"3s\"\n")).timeout, secs(3));
    }

    #[test]
    fn misses_or_timeout() {
        assert_eq!(only(&listener("interval = \"2s\"\nmisses = 4\n")).timeout, secs(8));
        assert_eq!(only(&listener("interval = \"2s\"\n")).timeout, secs(10));
        assert_eq!(only(&listener("interval = \"2s\"\ntimeout = \"7s\"\n")).timeout, secs(7));
        let e = parse_err(&listener("misses = 4\ntimeout = \"7s\"\n"));
        assert_eq!((e.line, e.key.as_deref()), (Some(5), Some("listener[0].timeout")));
        assert!(e.message.contains("not both") && e.message.contains("line 4"), "{e}");
    }

    #[test]
    fn zero_timeout_only_for_raw() {
        let raw = only(&listener("protocol = \"raw\"\ntimeout = \"0s\"\n"));
        assert_eq!((raw.protocol, raw.timeout), (Protocol::Raw, Duration::ZERO));
        assert_err(&listener("timeout = \"0s\"\n"), 4, "listener[0].timeout", "only for raw listeners, not native");
        assert_err(&listener("protocol = \"legacy\"\ntimeout = \"0s\"\n"), 5, "listener[0].timeout", "not legacy");
    }

    #[test]
    fn user_timeout_must_not_cut_keepalive_short() {
        let tcp = |body: &str| only(&listener(&format!("[listener.tcp]\n{body}"))).tcp;
        // Defaults: 15s + 5s * 3 = 30s; equal is allowed.
        assert_eq!(tcp("user_timeout = \"30s\"\n").user_timeout, secs(30));
        let e = parse_err(&listener("[listener.tcp]\nuser_timeout = \"29999ms\"\n"));
        assert_eq!((e.line, e.key.as_deref()), (Some(5), Some("listener[0].tcp.user_timeout")));
        assert!(e.message.contains("would cut keepalive probes short: needs >= 30s"), "{e}");
        // Custom probes: 10s + 2s * 4 = 18s.
        let custom = "keepalive_idle = \"10s\"\nkeepalive_interval = \"2s\"\nkeepalive_count = 4\n";
        assert_eq!(tcp(custom).user_timeout, secs(18));
        assert_eq!(tcp(&format!("{custom}user_timeout = \"18s\"\n")).user_timeout, secs(18));
        assert_err(
            &listener(&format!("[listener.tcp]\n{custom}user_timeout = \"17s\"\n")),
            8,
            "listener[0].tcp.user_timeout",
            "needs >= 18s",
        );
        // 0s keeps the kernel default; with keepalive off anything goes.
        assert_eq!(tcp("user_timeout = \"0s\"\n").user_timeout, Duration::ZERO);
        assert_eq!(tcp("keepalive_idle = \"0s\"\nuser_timeout = \"1s\"\n").user_timeout, secs(1));
    }

    #[test]
    fn keepalive_times_are_whole_kernel_seconds() {
        let key = "listener[0].tcp.keepalive_interval";
        assert_err(&listener("[listener.tcp]\nkeepalive_interval = \"0s\"\n"), 5, key, "1s..=32767s");
        assert_err(&listener("[listener.tcp]\nkeepalive_interval = \"1500ms\"\n"), 5, key, "whole seconds");
        assert_err(
            &listener("[listener.tcp]\nkeepalive_idle = \"32768s\"\n"),
            5,
            "listener[0].tcp.keepalive_idle",
            "32767s",
        );
        // Unused while keepalive is off.
        assert_eq!(
            only(&listener("[listener.tcp]\nkeepalive_idle = \"0s\"\nkeepalive_interval = \"0s\"\n"))
                .tcp
                .keepalive_interval,
            Duration::ZERO
        );
    }

    #[test]
    fn duplicate_names_and_addresses() {
        let second =
            |name: &str, address: &str| format!("\n[[listener]]\nname = \"{name}\"\naddress = \"{address}\"\n");
        let e = parse_err(&format!("{}{}", listener(""), second("a", "127.0.0.1:7701")));
        assert_eq!((e.line, e.key.as_deref()), (Some(6), Some("listener[1].name")));
        assert!(e.message.contains("\"a\"") && e.message.contains("listener[0] on line 2"), "{e}");
        let e = parse_err(&format!("{}{}", listener(""), second("b", "127.0.0.1:7700")));
        assert_eq!((e.line, e.key.as_deref()), (Some(7), Some("listener[1].address")));
        assert!(e.message.contains("127.0.0.1:7700") && e.message.contains("listener[0] on line 3"), "{e}");
        // IPv6 spelled differently is still the same address.
        let v6 = format!("{}{}", listener("").replace("127.0.0.1", "[::1]"), second("b", "[0::1]:7700"));
        assert_err(&v6, 7, "listener[1].address", "duplicate listener address");
        // Port 0 picks a free port: no clash.
        let free = format!("{}{}", listener("").replace("7700", "0"), second("b", "127.0.0.1:0"));
        assert_eq!(parse_ok(&free).listeners.len(), 2);
        let other_ip = format!("{}{}", listener(""), second("b", "127.0.0.2:7700"));
        assert_eq!(parse_ok(&other_ip).listeners.len(), 2);
    }

    #[test]
    fn no_listener() {
        let e = parse_err("[daemon]\ntick = \"100ms\"\n");
        assert_eq!((e.line, e.key.as_deref()), (None, Some("listener")));
        assert!(e.message.contains("[[listener]]"), "{e}");
        assert_err("\nlistener = []\n", 2, "listener", "at least one");
        let e = parse_err("");
        assert_eq!(e.key.as_deref(), Some("listener"));
    }

    #[test]
    fn options_only_for_some_protocols() {
        let cases = [
            ("native", "echo = true", "echo applies only to legacy and raw listeners, not native"),
            ("legacy", "handshake_timeout = \"5s\"", "handshake_timeout applies only to native listeners, not legacy"),
            ("raw", "server_ping = false", "server_ping applies only to native listeners, not raw"),
            ("legacy", "tokens = [\"x\"]", "tokens applies only to native listeners"),
            ("raw", "tokens_file = \"t\"", "tokens_file applies only to native listeners"),
            ("raw", "max_frame = 1024", "max_frame applies only to native and legacy listeners, not raw"),
        ];
        for (protocol, option, message) in cases {
            let text = listener(&format!("protocol = \"{protocol}\"\n{option}\n"));
            let field = option.split(' ').next().unwrap();
            assert_err(&text, 5, &format!("listener[0].{field}"), message);
        }
        // ...and accepted where they apply.
        assert!(only(&listener("protocol = \"legacy\"\necho = true\n")).echo);
        assert!(only(&listener("protocol = \"raw\"\necho = true\n")).echo);
        assert!(only(&listener("server_ping = true\n")).server_ping);
    }

    #[test]
    fn names_addresses_protocols_and_levels() {
        assert_err("[[listener]]\naddress = \"127.0.0.1:1\"\n", 1, "listener[0].name", "name is required");
        assert_err("[[listener]]\nname = \"a\"\n", 1, "listener[0].address", "address is required");
        for bad in ["", "has space", "ünï", &"x".repeat(65)] {
            let text = listener("").replace("\"a\"", &format!("{bad:?}"));
            assert_err(&text, 2, "listener[0].name", "1..=64 characters");
        }
        let longest = "A-z_0.9".repeat(9) + "x";
        assert_eq!(only(&listener("").replace("\"a\"", &format!("{longest:?}"))).name, longest);
        for bad in ["localhost:7700", "127.0.0.1", "::1:7700", "127.0.0.1:65536"] {
            let text = listener("").replace("127.0.0.1:7700", bad);
            assert_err(&text, 3, "listener[0].address", "not ip:port");
        }
        assert_eq!(only(&listener("").replace("127.0.0.1:7700", "[::1]:0")).address, "[::1]:0".parse().unwrap());
        assert_err(&listener("protocol = \"http\"\n"), 4, "listener[0].protocol", "native, legacy or raw");
        assert_err(
            "[daemon]\nlog_level = \"verbose\"\n",
            2,
            "daemon.log_level",
            "off, error, warn, info, debug or trace",
        );
        for (name, level) in [
            ("off", log::LevelFilter::Off),
            ("error", log::LevelFilter::Error),
            ("warn", log::LevelFilter::Warn),
            ("debug", log::LevelFilter::Debug),
        ] {
            let text = format!("[daemon]\nlog_level = \"{name}\"\n{}", listener(""));
            assert_eq!(parse_ok(&text).daemon.log_level, level);
        }
    }

    #[test]
    fn inline_tokens() {
        assert_err(&listener("tokens = []\n"), 4, "listener[0].tokens", "at least one token");
        assert_err(&listener("tokens = [\"ok\", \"\"]\n"), 4, "listener[0].tokens[1]", "1..=255 bytes");
        let long = "t".repeat(256);
        assert_err(&listener(&format!("tokens = [\"{long}\"]\n")), 4, "listener[0].tokens[0]", "256 bytes");
        let longest = "t".repeat(255);
        assert_eq!(only(&listener(&format!("tokens = [\"{longest}\"]\n"))).tokens, vec![longest.into_bytes()]);
        assert_err(&listener("tokens = [\"x\"]\ntokens_file = \"t\"\n"), 5, "listener[0].tokens_file", "not both");
    }

    #[test]
    fn tokens_file_is_resolved_and_read() {
        let dir = temp_dir("tokens");
        fs::write(dir.join("tokens"), "# comment\n\n  alpha  \r\n\t\nbeta\n  # indented comment\ngamma").unwrap();
        let expected = vec![b"alpha".to_vec(), b"beta".to_vec(), b"gamma".to_vec()];
        let relative = parse(&listener("tokens_file = \"tokens\"\n"), "test.toml", &dir).unwrap();
        assert_eq!(relative.listeners[0].tokens, expected);
        let absolute = format!("tokens_file = {:?}\n", dir.join("tokens").display().to_string());
        let absolute = parse(&listener(&absolute), "test.toml", Path::new("/elsewhere")).unwrap();
        assert_eq!(absolute.listeners[0].tokens, expected);

        // load() resolves against the config file's directory.
        fs::write(dir.join("heartbeatd.toml"), listener("tokens_file = \"tokens\"\n")).unwrap();
        assert_eq!(load(&dir.join("heartbeatd.toml")).unwrap().listeners[0].tokens, expected);

        let e = parse(&listener("tokens_file = \"missing\"\n"), "test.toml", &dir).unwrap_err();
        assert_eq!((e.line, e.key.as_deref()), (Some(4), Some("listener[0].tokens_file")));
        assert!(e.message.contains(&dir.join("missing").display().to_string()), "{e}");
        assert!(e.message.contains("No such file"), "{e}");

        fs::write(dir.join("empty"), "# nothing yet\n\n   \n").unwrap();
        let e = parse(&listener("tokens_file = \"empty\"\n"), "test.toml", &dir).unwrap_err();
        assert_eq!((e.line, e.key.as_deref()), (Some(4), Some("listener[0].tokens_file")));
        assert!(e.message.contains(&dir.join("empty").display().to_string()) && e.message.contains("no token"), "{e}");

        fs::write(dir.join("long"), format!("ok\n{}\n", "x".repeat(256))).unwrap();
        let e = parse(&listener("tokens_file = \"long\"\n"), "test.toml", &dir).unwrap_err();
        assert!(e.message.contains("line 2") && e.message.contains("1..=255 bytes"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn load_reports_unreadable_files() {
        let dir = temp_dir("load");
        let path = dir.join("absent.toml");
        let e = load(&path).unwrap_err();
        assert_eq!(e.origin, path.display().to_string());
        assert_eq!((e.line, e.key.as_deref()), (None, None));
        assert!(e.message.contains("No such file"), "{e}");

        let path = dir.join("bad.toml");
        fs::write(&path, "[daemon]\ntick = \"2s\"\n").unwrap();
        let e = load(&path).unwrap_err();
        assert_eq!(e.to_string(), format!("{}:2: daemon.tick: must be 1ms..=1s, got 2s", path.display()));
        fs::remove_dir_all(&dir).unwrap();
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(text in ".*") {
            let _ = parse(&text, "prop", Path::new("/nonexistent"));
        }

        #[test]
        fn parse_never_panics_on_edited_configs(
            line in 0usize..80,
            insert in "[a-z_\\[\\]\\.= \"0-9]{0,30}",
        ) {
            let mut lines: Vec<&str> = EMBEDDED.lines().collect();
            let at = line.min(lines.len());
            lines.insert(at, &insert);
            let text = lines.join("\n");
            if let Err(e) = parse(&text, "prop", Path::new("/nonexistent")) {
                // Every error that comes from the text points into it.
                proptest::prop_assert!(e.line.is_none_or(|l| (1..=lines.len() + 1).contains(&l)), "{e}");
            }
        }
    }
}
