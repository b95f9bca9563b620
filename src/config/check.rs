//! Validation: the raw tables of [`super::raw`] → the typed [`Config`].
//!
//! This file holds the file-level flow, the checks of single values that
//! every table shares (durations, integers, `FromStr` names), the
//! `[daemon]` and `[http]` tables, and `FromStr` for the log level;
//! [`super::listener`] checks each `[[listener]]` table. Each check applies
//! the default when its key is absent and otherwise returns an error naming
//! the key and its line. Tables are checked in file order (daemon,
//! listeners, http), so the first error reported is the first one a reader
//! meets.
//!
//! Invariants: the messages here are pinned by tests and by operators'
//! scripts, so they change only on purpose; every duration accepted fits
//! [`MAX_DURATION`] in whole milliseconds.

use std::fmt;
use std::net::SocketAddr;
use std::ops::{Range, RangeInclusive};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use log::LevelFilter;
use toml::Spanned;

use super::listener::listeners;
use super::raw::{RawConfig, RawDaemon, RawHttp, RawListener};
use super::span::Source;
use super::tokens::{self, ApiToken};
use super::{Config, ConfigError, DaemonConfig, HttpConfig, ListenerConfig};

/// Message for a config without `[[listener]]` tables.
const NO_LISTENER: &str = "no listener: add at least one [[listener]] table";

/// Longest duration anywhere in the config: the wire protocol and the
/// kernel carry milliseconds in a `u32` (about 49.7 days).
pub(super) const MAX_DURATION: Duration = Duration::from_millis(u32::MAX as u64);
/// [`MAX_DURATION`] for error messages.
pub(super) const MAX_DURATION_TEXT: &str = "4294967295ms (about 49.7 days)";

/// `[daemon] tick`: default and allowed range.
const DEFAULT_TICK: Duration = Duration::from_millis(100);
const MIN_TICK: Duration = Duration::from_millis(1);
const MAX_TICK: Duration = Duration::from_secs(1);
/// `[daemon] coalesce` default, measured in docs/BENCHMARKS.md; off when the
/// tick is not longer.
const DEFAULT_COALESCE: Duration = Duration::from_millis(1);
/// `[daemon] max_local_pause`: default (or twice the tick, when longer) and
/// upper bound. A lateness of one tick is the wheel's resolution, not a
/// stall, hence the floor of two ticks; past a minute, "extend every
/// deadline" would hide a daemon that is really hung.
const DEFAULT_MAX_LOCAL_PAUSE: Duration = Duration::from_millis(500);
const MAX_MAX_LOCAL_PAUSE: Duration = Duration::from_secs(60);
/// `[daemon] max_clients` default.
const DEFAULT_MAX_CLIENTS: usize = 65536;
/// `[daemon] max_clients` range: 16 Mi connections is far past any fd
/// limit, and keeps connection keys within the timer wheel's `u32`.
const MAX_CLIENTS: RangeInclusive<i64> = 1..=16_777_216;
/// `[daemon] shutdown_grace`: default and upper bound (5 min).
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
const MAX_SHUTDOWN_GRACE: Duration = Duration::from_secs(300);
/// `[daemon] hook_concurrency`: default and range.
const DEFAULT_HOOK_CONCURRENCY: usize = 4;
const HOOK_CONCURRENCY: RangeInclusive<i64> = 1..=256;
/// `[daemon] hook_queue`: default and range, in waiting runs.
const DEFAULT_HOOK_QUEUE: usize = 1024;
const HOOK_QUEUE: RangeInclusive<i64> = 1..=1_000_000;
/// `[daemon] mass_offline_*`: defaults and ranges. The window must cover
/// the spread of a fleet's silence verdicts after one cut (up to an
/// interval, plus the tick); it delays silence offlines' hooks as long.
const DEFAULT_MASS_OFFLINE_WINDOW: Duration = Duration::from_secs(10);
const MASS_OFFLINE_WINDOW: RangeInclusive<Duration> = Duration::ZERO..=Duration::from_secs(600);
const DEFAULT_MASS_OFFLINE_FRACTION: f64 = 0.5;
const DEFAULT_MASS_OFFLINE_MIN: usize = 10;
const MASS_OFFLINE_MIN: RangeInclusive<i64> = 1..=16_777_216;

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

/// The names `log_level` accepts, in the order the error lists them.
const LOG_LEVELS: [(&str, LevelFilter); 6] = [
    ("off", LevelFilter::Off),
    ("error", LevelFilter::Error),
    ("warn", LevelFilter::Warn),
    ("info", LevelFilter::Info),
    ("debug", LevelFilter::Debug),
    ("trace", LevelFilter::Trace),
];

/// A `log_level` value. `LevelFilter`'s own `FromStr` ignores case and
/// would accept `WARN`; a config spells levels exactly, as documented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct LogLevel(pub(super) LevelFilter);

/// A `log_level` that is none of [`LOG_LEVELS`]; holds the name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct UnknownLogLevel(String);

impl fmt::Display for UnknownLogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown log level {:?}: use off, error, warn, info, debug or trace", self.0)
    }
}

impl FromStr for LogLevel {
    type Err = UnknownLogLevel;

    fn from_str(name: &str) -> Result<LogLevel, UnknownLogLevel> {
        LOG_LEVELS
            .iter()
            .find(|(level, _)| *level == name)
            .map(|&(_, filter)| LogLevel(filter))
            .ok_or_else(|| UnknownLogLevel(name.to_owned()))
    }
}

/// Validates a whole file, table by table, in file order.
pub(super) fn config(source: &Source<'_>, raw: RawConfig, base_dir: &Path) -> Result<Config, ConfigError> {
    let daemon = source.daemon(raw.daemon.unwrap_or_default())?;
    let tables = listener_tables(source, raw.listener)?;
    let http = raw.http.map(|table| source.http(table, base_dir)).transpose()?;
    let listeners = listeners(source, tables, daemon.tick, base_dir)?;
    if let Some((http, table_span)) = &http {
        http_clash(source, http, table_span, &listeners)?;
    }
    let hooks = super::hooks::hooks(source, raw.hook, &listeners)?;
    Ok(Config { daemon, listeners, http: http.map(|(config, _)| config), hooks })
}

/// The `[[listener]]` tables; an error when there are none.
fn listener_tables(
    source: &Source<'_>,
    raw: Option<Spanned<Vec<Spanned<RawListener>>>>,
) -> Result<Vec<Spanned<RawListener>>, ConfigError> {
    match raw {
        Some(listeners) if !listeners.get_ref().is_empty() => Ok(listeners.into_inner()),
        Some(empty) => Err(source.at(&empty, "listener", NO_LISTENER.to_owned())),
        None => Err(source.error(None, Some("listener".to_owned()), NO_LISTENER)),
    }
}

/// Rejects an `[http]` address that a listener already has; port 0 never
/// clashes, as the kernel picks a free port for each.
fn http_clash(
    source: &Source<'_>,
    http: &HttpConfig,
    table_span: &Range<usize>,
    listeners: &[ListenerConfig],
) -> Result<(), ConfigError> {
    match listeners.iter().find(|l| l.address == http.address && l.address.port() != 0) {
        Some(clash) => Err(source.error(
            Some(table_span.clone()),
            Some("http.address".to_owned()),
            format!("{} is already the address of listener {:?}", http.address, clash.name),
        )),
        None => Ok(()),
    }
}

/// Checks of single values, shared by every table.
impl Source<'_> {
    /// A duration string, checked to fit [`MAX_DURATION`] in whole
    /// milliseconds.
    pub(super) fn duration(&self, value: &Spanned<String>, key: &str) -> Result<Duration, ConfigError> {
        let text = value.get_ref();
        let duration = humantime::parse_duration(text).map_err(|e| {
            let why = duration_problem(text, &e);
            self.at(value, key, format!("invalid duration {text:?}: {why}; write e.g. \"100ms\", \"3s\" or \"5min\""))
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
    pub(super) fn duration_in(
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
            // Echo what was written: `show` would turn "4294967295ms"
            // into "1month 19days …", which the operator never typed.
            return Err(self.at(value, key, format!("must be {allowed}, got {}", value.get_ref().trim())));
        }
        Ok(duration)
    }

    /// An optional integer within `range`, or `default`.
    pub(super) fn int_in<T: TryFrom<i64>>(
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

    /// An optional value parsed by `FromStr`, or `default`; the parse
    /// error's text is the message.
    pub(super) fn parsed<T: FromStr>(
        &self,
        value: Option<&Spanned<String>>,
        key: &str,
        default: T,
    ) -> Result<T, ConfigError>
    where
        T::Err: fmt::Display,
    {
        match value {
            None => Ok(default),
            Some(value) => value.get_ref().parse().map_err(|e: T::Err| self.at(value, key, e.to_string())),
        }
    }
}

/// Checks of the `[daemon]` and `[http]` tables.
impl Source<'_> {
    /// Validates `daemon.coalesce` against the tick it must stay below.
    fn coalesce(&self, raw: Option<&Spanned<String>>, tick: Duration) -> Result<Duration, ConfigError> {
        match raw {
            // The default must not refuse a config whose tick is 1 ms.
            None if DEFAULT_COALESCE < tick => Ok(DEFAULT_COALESCE),
            None => Ok(Duration::ZERO),
            Some(value) => {
                let coalesce = self.duration(value, "daemon.coalesce")?;
                if coalesce >= tick {
                    return Err(self.at(
                        value,
                        "daemon.coalesce",
                        format!("must be shorter than the tick ({}), got {}", show(tick), show(coalesce)),
                    ));
                }
                Ok(coalesce)
            }
        }
    }

    /// Validates the `[daemon]` table.
    fn daemon(&self, raw: RawDaemon) -> Result<DaemonConfig, ConfigError> {
        let LogLevel(log_level) =
            self.parsed(raw.log_level.as_ref(), "daemon.log_level", LogLevel(LevelFilter::Info))?;
        let tick = self.duration_in(raw.tick.as_ref(), "daemon.tick", MIN_TICK..=MAX_TICK, DEFAULT_TICK)?;
        Ok(DaemonConfig {
            tick,
            coalesce: self.coalesce(raw.coalesce.as_ref(), tick)?,
            max_local_pause: self.duration_in(
                raw.max_local_pause.as_ref(),
                "daemon.max_local_pause",
                tick * 2..=MAX_MAX_LOCAL_PAUSE,
                DEFAULT_MAX_LOCAL_PAUSE.max(tick * 2),
            )?,
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
            hook_concurrency: self.int_in(
                raw.hook_concurrency.as_ref(),
                "daemon.hook_concurrency",
                HOOK_CONCURRENCY,
                DEFAULT_HOOK_CONCURRENCY,
            )?,
            hook_queue: self.int_in(raw.hook_queue.as_ref(), "daemon.hook_queue", HOOK_QUEUE, DEFAULT_HOOK_QUEUE)?,
            mass_offline_window: self.duration_in(
                raw.mass_offline_window.as_ref(),
                "daemon.mass_offline_window",
                MASS_OFFLINE_WINDOW,
                DEFAULT_MASS_OFFLINE_WINDOW,
            )?,
            mass_offline_fraction: self.fraction(raw.mass_offline_fraction.as_ref())?,
            mass_offline_min: self.int_in(
                raw.mass_offline_min.as_ref(),
                "daemon.mass_offline_min",
                MASS_OFFLINE_MIN,
                DEFAULT_MASS_OFFLINE_MIN,
            )?,
            keep_connections: raw.keep_connections.is_none_or(Spanned::into_inner),
        })
    }

    /// `daemon.mass_offline_fraction`: a share in `0.0..1.0` (a mass loss
    /// is *more* than it; 1.0 could never be passed).
    fn fraction(&self, value: Option<&Spanned<f64>>) -> Result<f64, ConfigError> {
        let Some(value) = value else { return Ok(DEFAULT_MASS_OFFLINE_FRACTION) };
        let f = *value.get_ref();
        if !(0.0..1.0).contains(&f) {
            return Err(self.at(
                value,
                "daemon.mass_offline_fraction",
                format!("must be at least 0.0 and below 1.0, got {f}"),
            ));
        }
        Ok(f)
    }

    /// Validates the `[http]` table; returns it with the table's span, for
    /// an address clash found later.
    fn http(&self, raw: Spanned<RawHttp>, base_dir: &Path) -> Result<(HttpConfig, Range<usize>), ConfigError> {
        let span = raw.span();
        let raw = raw.into_inner();
        let config = HttpConfig {
            address: self.http_address(raw.address.as_ref(), &span)?,
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
            token: raw.token_file.as_ref().map(|file| self.api_token(file, base_dir)).transpose()?,
            tls: super::tls::check_http(self, raw.tls, base_dir)?,
        };
        Ok((config, span))
    }

    /// `[http] token_file`: the status API's bearer token (`tokens.rs`),
    /// read with the tokens file's cap and kept only as its hash.
    fn api_token(&self, file: &Spanned<String>, base_dir: &Path) -> Result<ApiToken, ConfigError> {
        let path = base_dir.join(file.get_ref());
        let shown = path.display();
        let contents = super::file::read_capped(&path, super::file::MAX_TOKENS_FILE_BYTES)
            .map_err(|e| self.at(file, "http.token_file", format!("cannot read token file {shown}: {e}")))?;
        let digest = tokens::api_token(&contents)
            .map_err(|e| self.at(file, "http.token_file", format!("token file {shown}: {e}")))?;
        Ok(ApiToken { file: path, digest })
    }

    /// `[http] address`, required: a table without one is an error at the
    /// table, since there is no value to point at.
    fn http_address(&self, value: Option<&Spanned<String>>, table: &Range<usize>) -> Result<SocketAddr, ConfigError> {
        let Some(address) = value else {
            return Err(self.error(
                Some(table.clone()),
                Some("http.address".to_owned()),
                "missing: the [http] table needs an address such as \"127.0.0.1:7780\" (remove the table to serve no HTTP)",
            ));
        };
        socket_addr(address.get_ref(), "\"127.0.0.1:7780\"").map_err(|e| self.at(address, "http.address", e))
    }
}

/// Why humantime refused `text`, in the operator's words.
fn duration_problem(text: &str, error: &humantime::DurationError) -> String {
    use humantime::DurationError as E;
    let char_at = |offset: usize| text.get(offset..).and_then(|rest| rest.chars().next());
    match error {
        E::Empty => "it is empty".to_owned(),
        E::NumberExpected(_) | E::InvalidCharacter(_) if text.trim_start().starts_with('-') => {
            "a duration cannot be negative".to_owned()
        }
        E::NumberExpected(offset) | E::InvalidCharacter(offset) => match char_at(*offset) {
            Some(c) => format!("unexpected {c:?} at character {}", text[..*offset].chars().count() + 1),
            None => "it ends too early".to_owned(),
        },
        E::UnknownUnit { unit, value, .. } if unit.is_empty() => format!("{value} has no unit"),
        E::UnknownUnit { unit, .. } => format!("unknown unit {unit:?} (use ms, s, min, h or d)"),
        E::NumberOverflow => format!("the number is too large: at most {MAX_DURATION_TEXT}"),
    }
}

/// Parses a literal `ip:port`; the error says what is wrong with `text`.
pub(super) fn socket_addr(text: &str, example: &str) -> Result<SocketAddr, String> {
    if let Ok(address) = text.parse::<SocketAddr>() {
        return Ok(address);
    }
    // A port past 65535 looks like ip:port to a reader: say what is wrong.
    if let Some((ip, port)) = text.rsplit_once(':') {
        let ip = ip.trim_start_matches('[').trim_end_matches(']');
        let port_is_number = !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit());
        if port_is_number && ip.parse::<std::net::IpAddr>().is_ok() {
            return Err(format!(
                "{text:?} is not ip:port: port {port} is out of range, a port is 0..=65535 (0 picks a free port)"
            ));
        }
    }
    Err(format!("{text:?} is not ip:port; write e.g. {example} (no host names; port 0 picks a free port)"))
}

/// A duration as the config writes it, e.g. `15s`, `1m 30s`.
pub(super) fn show(duration: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(duration)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_err, default_daemon, default_tcp, listener, ms, only, parse_err, parse_ok, secs};
    use super::*;
    use crate::wire::Protocol;

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
    fn defaults() {
        let config = parse_ok(&listener(""));
        assert_eq!(config.daemon, default_daemon());
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
        assert_err(&daemon("coalesce = \"500us\""), 2, "daemon.coalesce", "whole number of milliseconds");
    }

    #[test]
    fn max_local_pause_is_at_least_two_ticks() {
        let daemon = |table: &str| format!("[daemon]\n{table}\n{}", listener(""));
        assert_eq!(parse_ok(&daemon("max_local_pause = \"2s\"")).daemon.max_local_pause, secs(2));
        assert_eq!(parse_ok(&daemon("tick = \"1s\"")).daemon.max_local_pause, secs(2));
        assert_eq!(parse_ok(&daemon("tick = \"10ms\"\nmax_local_pause = \"20ms\"")).daemon.max_local_pause, ms(20));
        assert_err(
            &daemon("tick = \"100ms\"\nmax_local_pause = \"199ms\""),
            3,
            "daemon.max_local_pause",
            "must be 200ms..=1m, got 199ms",
        );
        assert_err(&daemon("max_local_pause = \"61s\""), 2, "daemon.max_local_pause", "200ms..=1m,");
    }

    #[test]
    fn all_values_are_read() {
        let text = "[daemon]\ntick = \"10ms\"\ncoalesce = \"3ms\"\nmax_clients = 7\nmax_per_address = 2\n\
                    shutdown_grace = \"0s\"\nlog_level = \"trace\"\n"
            .to_owned()
            + &listener(
                "protocol = \"native\"\ninterval = \"1s\"\nmisses = 4\nhandshake_timeout = \"2s\"\n\
                 server_ping = true\nmax_frame = 131\ntokens = [\"t1\", \"t2\"]\n\
                 [listener.tcp]\nkeepalive_idle = \"0s\"\nkeepalive_count = 9\nnodelay = false\n",
            );
        let config = parse_ok(&text);
        assert_eq!((config.daemon.tick, config.daemon.coalesce), (ms(10), ms(3)));
        assert_eq!((config.daemon.max_clients, config.daemon.max_per_address), (7, 2));
        assert_eq!(config.daemon.shutdown_grace, Duration::ZERO);
        assert_eq!(config.daemon.log_level, log::LevelFilter::Trace);
        let l = &config.listeners[0];
        assert_eq!((l.interval, l.timeout, l.handshake_timeout), (secs(1), secs(4), secs(2)));
        assert_eq!((l.server_ping, l.max_frame), (true, 131));
        assert_eq!(l.tokens, vec![b"t1".to_vec(), b"t2".to_vec()]);
        // Keepalive off: user_timeout defaults to the kernel's (0).
        assert_eq!(l.tcp.keepalive_idle, Duration::ZERO);
        assert_eq!((l.tcp.keepalive_count, l.tcp.user_timeout, l.tcp.nodelay), (9, Duration::ZERO, false));
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
        assert_err(&listener("max_frame = 130\n"), 4, "listener[0].max_frame", "131..=65535");
        assert_eq!(only(&listener("max_frame = 131\n")).max_frame, 131);
        assert_err(&listener("max_frame = 65536\n"), 4, "listener[0].max_frame", "131..=65535");
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
    fn no_listener() {
        let e = parse_err("[daemon]\ntick = \"100ms\"\n");
        assert_eq!((e.line, e.key.as_deref()), (None, Some("listener")));
        assert!(e.message.contains("[[listener]]"), "{e}");
        assert_err("\nlistener = []\n", 2, "listener", "at least one");
        let e = parse_err("");
        assert_eq!(e.key.as_deref(), Some("listener"));
    }

    #[test]
    fn log_levels_parse_by_their_exact_names() {
        for (name, filter) in LOG_LEVELS {
            assert_eq!(name.parse::<LogLevel>(), Ok(LogLevel(filter)));
            assert_eq!(filter.as_str().to_ascii_lowercase(), name);
        }
        // LevelFilter's own parser would take these; a config does not.
        for bad in ["WARN", "Info", "warning", ""] {
            let e = bad.parse::<LogLevel>().unwrap_err();
            assert_eq!(e.to_string(), format!("unknown log level {bad:?}: use off, error, warn, info, debug or trace"));
        }
    }

    #[test]
    fn the_first_error_in_file_order_wins() {
        // A bad daemon value beats a missing listener; a bad listener beats
        // an http clash found only after all listeners.
        assert_err("[daemon]\ntick = \"9s\"\n", 2, "daemon.tick", "1ms..=1s");
        let text = format!("[http]\naddress = \"127.0.0.1:7700\"\n{}", listener("misses = 0\n"));
        assert_err(&text, 6, "listener[0].misses", "1..=1000");
        // Within a listener, the protocol is checked before the options it rules.
        assert_err(&listener("echo = true\nprotocol = \"nope\"\n"), 5, "listener[0].protocol", "unknown protocol");
    }
}

/// The messages of issue 14, pinned word for word: each says what the
/// operator wrote and how to fix it, and still names file:line:key.
#[cfg(test)]
mod operator_messages {
    use super::super::tests::{listener, parse_err};

    /// Asserts the whole `file:line: key: message` text.
    #[track_caller]
    fn says(text: &str, expected: &str) {
        assert_eq!(parse_err(text).to_string(), expected, "--- config:\n{text}");
    }

    #[test]
    fn a_single_listener_table_asks_for_double_brackets() {
        says(
            "[listener]\nname = \"a\"\naddress = \"127.0.0.1:7700\"\n",
            "test.toml:1: listener: a listener is written [[listener]] (double brackets: one entry of a list \
             of tables), not [listener]",
        );
    }

    #[test]
    fn a_bare_number_for_a_duration_asks_for_quotes_and_a_unit() {
        says(
            &listener("interval = 3\n"),
            "test.toml:4: listener[0].interval: interval takes a duration in quotes with a unit, not the \
             integer 3; write e.g. interval = \"3s\"",
        );
        says(
            "[daemon]\ntick = 5\n",
            "test.toml:2: daemon.tick: tick takes a duration in quotes with a unit, not the integer 5; \
             write e.g. tick = \"100ms\"",
        );
    }

    #[test]
    fn a_boolean_for_a_number_asks_for_a_number() {
        says(
            &listener("max_frame = true\n"),
            "test.toml:4: listener[0].max_frame: max_frame takes a whole number without quotes, not the \
             boolean true; write e.g. max_frame = 1024",
        );
        says(
            &listener("echo = \"yes\"\n"),
            "test.toml:4: listener[0].echo: echo takes true or false without quotes, not the string \"yes\"; \
             write e.g. echo = true",
        );
    }

    #[test]
    fn a_duplicated_table_names_the_table_and_both_lines() {
        says(
            "[daemon]\ntick = \"10ms\"\n[daemon]\nmax_clients = 5\n",
            "test.toml:3: daemon: [daemon] appears twice (first on line 1): merge the two into one table",
        );
    }

    #[test]
    fn a_duplicated_key_names_the_key_and_both_lines() {
        says(
            "[daemon]\ntick = \"10ms\"\ntick = \"20ms\"\n",
            "test.toml:3: daemon.tick: tick is set twice in [daemon] (first on line 2): keep one",
        );
    }

    #[test]
    fn duplicates_inside_listeners_name_the_listener() {
        let two = format!("{}{}", listener(""), listener("").replace("\"a\"", "\"b\"").replace("7700", "7701"));
        says(
            &two.replace("name = \"b\"\n", "name = \"b\"\nname = \"c\"\n"),
            "test.toml:6: listener[1].name: name is set twice in [[listener]] (first on line 5): keep one",
        );
        let tcp = format!(
            "{}[listener.tcp]\nnodelay = true\n{}[listener.tcp]\nnodelay = true\n[listener.tcp]\n",
            listener(""),
            listener("").replace("\"a\"", "\"b\"").replace("7700", "7701")
        );
        says(&tcp, "test.toml:11: listener[1].tcp: [listener.tcp] appears twice (first on line 9): merge the two into one table");
    }

    #[test]
    fn a_port_out_of_range_says_so() {
        says(
            &listener("").replace("7700", "77000"),
            "test.toml:3: listener[0].address: \"127.0.0.1:77000\" is not ip:port: port 77000 is out of \
             range, a port is 0..=65535 (0 picks a free port)",
        );
    }

    #[test]
    fn a_negative_duration_says_durations_are_not_negative() {
        says(
            &listener("interval = \"-1s\"\n"),
            "test.toml:4: listener[0].interval: invalid duration \"-1s\": a duration cannot be negative; \
             write e.g. \"100ms\", \"3s\" or \"5min\"",
        );
        says(
            &listener("interval = \"3 parsecs\"\n"),
            "test.toml:4: listener[0].interval: invalid duration \"3 parsecs\": unknown unit \"parsecs\" \
             (use ms, s, min, h or d); write e.g. \"100ms\", \"3s\" or \"5min\"",
        );
        says(
            &listener("interval = \"3\"\n"),
            "test.toml:4: listener[0].interval: invalid duration \"3\": 3 has no unit; write e.g. \
             \"100ms\", \"3s\" or \"5min\"",
        );
    }

    #[test]
    fn an_out_of_range_duration_echoes_the_operators_text() {
        says("[daemon]\ntick = \"4294967295ms\"\n", "test.toml:2: daemon.tick: must be 1ms..=1s, got 4294967295ms");
    }

    #[test]
    fn a_native_max_frame_must_hold_a_hello() {
        says(
            &listener("max_frame = 130\n"),
            "test.toml:4: listener[0].max_frame: must be 131..=65535, got 130: a HELLO with a 64-byte id \
             and a 64-byte token needs 131 payload bytes",
        );
    }
}
