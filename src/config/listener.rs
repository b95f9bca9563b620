//! Validation of one `[[listener]]` table: name, address, protocol, the
//! options each protocol uses, the silence timeout, HELLO tokens and the
//! `[listener.tcp]` socket options; and, across tables, unique names and
//! addresses.
//!
//! Invariants of a listener that passes (besides those of [`super`]): a
//! timeout is zero only for `raw`, else at least two ticks and at least the
//! interval; an option the protocol does not use is an error; tokens, when
//! given, are at least one of 1..=255 bytes; keepalive times are whole
//! kernel seconds while keepalive is on; a websocket `path` is an absolute
//! path without query, and `allowed_origins`, when given, are at least one
//! `http(s)://host[:port]` origin.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::{Range, RangeInclusive};
use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use super::check::{show, socket_addr, MAX_DURATION, MAX_DURATION_TEXT};
use super::raw::{RawListener, RawTcp};
use super::span::{Source, Table};
use super::tokens::{self, Tokens};
use super::{ConfigError, ListenerConfig, TcpConfig};
use crate::wire::Protocol;

/// Listener defaults: `interval`, `misses`, `handshake_timeout`, `max_frame`.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(3);
const DEFAULT_MISSES: u32 = 5;
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_MAX_FRAME: usize = 1024;
/// `misses` range.
const MISSES: RangeInclusive<i64> = 1..=1000;
/// `max_frame` range for `native`: a frame length is a `u16`, and the
/// smallest must hold a HELLO payload with a 64-byte id (the longest
/// PROTOCOL.md allows) and a 64-byte token: version, id_len, id, token_len,
/// token. A smaller one would refuse such a client's first frame.
const NATIVE_MAX_FRAME: RangeInclusive<i64> = HELLO_64_64..=65535;
/// HELLO payload bytes for a 64-byte id and a 64-byte token.
const HELLO_64_64: i64 = 1 + 1 + 64 + 1 + 64;
/// `max_frame` range for `legacy` (16 MiB).
const LEGACY_MAX_FRAME: RangeInclusive<i64> = 0..=16_777_216;
/// `max_frame` range for `websocket`: a data frame's payload, which is
/// skipped, never buffered (16 MiB).
const WEBSOCKET_MAX_FRAME: RangeInclusive<i64> = 0..=16_777_216;
/// `max_frame` default for `websocket`: the messages a page may send cost
/// nothing (they are skipped), so the default takes any reasonable one.
const WEBSOCKET_DEFAULT_MAX_FRAME: usize = 65536;
/// Longest websocket `path`, in bytes.
const MAX_PATH_LEN: usize = 255;
/// What `name` must look like, for the "required" error.
const NAME_RULE: &str = "a unique name of 1..=64 characters from A-Z a-z 0-9 _ . -";
/// What `address` must look like, for the "required" error.
const ADDRESS_RULE: &str = "ip:port to listen on, e.g. \"127.0.0.1:7700\" or \"[::1]:7700\"";
/// Longest listener name, in characters.
const MAX_NAME_LEN: usize = 64;

/// `[listener.tcp]` defaults.
const DEFAULT_KEEPALIVE_IDLE: Duration = Duration::from_secs(15);
const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const DEFAULT_KEEPALIVE_COUNT: u32 = 3;
/// `TCP_KEEPCNT` range accepted by Linux.
const KEEPALIVE_COUNT: RangeInclusive<i64> = 1..=127;
/// Largest `TCP_KEEPIDLE` / `TCP_KEEPINTVL` Linux accepts; both are whole
/// seconds.
const MAX_KEEPALIVE_TIME: Duration = Duration::from_secs(32767);

/// Validates the listeners in file order, each against those before it.
pub(super) fn listeners(
    source: &Source<'_>,
    tables: Vec<Spanned<RawListener>>,
    tick: Duration,
    base_dir: &Path,
) -> Result<Vec<ListenerConfig>, ConfigError> {
    let mut seen = Seen::default();
    // Listeners are numbered from 0 in each file, as toml's own errors
    // about a drop-in number them.
    let mut numbers: HashMap<usize, usize> = HashMap::new();
    tables
        .into_iter()
        .map(|raw| {
            let number = numbers.entry(source.file_index(raw.span().start)).or_insert(0);
            let index = *number;
            *number += 1;
            let ctx = ListenerSource { table: Table { source, prefix: format!("listener[{index}]") }, tick, base_dir };
            let listener = ctx.listener(raw)?;
            seen.check(&ctx, &listener)?;
            Ok(listener.config)
        })
        .collect()
}

/// A validated listener, with the spans needed to report duplicates.
struct CheckedListener {
    config: ListenerConfig,
    name_span: Range<usize>,
    address_span: Range<usize>,
}

/// Validates one `[[listener]]` table; keys are prefixed `listener[i]`.
struct ListenerSource<'a> {
    /// `listener[i]`.
    table: Table<'a>,
    /// The daemon's tick: a timeout must span at least two.
    tick: Duration,
    /// Where relative `tokens_file` paths start.
    base_dir: &'a Path,
}

impl ListenerSource<'_> {
    /// Validates the whole listener table. The checks run in a fixed order,
    /// so which error is reported first never depends on the key order.
    fn listener(&self, raw: Spanned<RawListener>) -> Result<CheckedListener, ConfigError> {
        let table_span = raw.span();
        let raw = raw.into_inner();
        let name = self.required(raw.name.as_ref(), &table_span, "name", NAME_RULE)?;
        self.check_name(name)?;
        let address = self.required(raw.address.as_ref(), &table_span, "address", ADDRESS_RULE)?;
        let socket_address = self.address(address)?;
        let protocol =
            self.table.source.parsed(raw.protocol.as_ref(), &self.table.key("protocol"), Protocol::Native)?;
        self.reject_unused(&raw, protocol)?;
        let interval = self.table.source.duration_in(
            raw.interval.as_ref(),
            &self.table.key("interval"),
            Duration::from_millis(1)..=MAX_DURATION,
            DEFAULT_INTERVAL,
        )?;
        let timeout = self.timeout(&raw, protocol, interval)?;
        let handshake_timeout = self.table.source.duration_in(
            raw.handshake_timeout.as_ref(),
            &self.table.key("handshake_timeout"),
            Duration::from_millis(1)..=MAX_DURATION,
            DEFAULT_HANDSHAKE_TIMEOUT,
        )?;
        let max_frame = self.max_frame(raw.max_frame.as_ref(), protocol)?;
        let Tokens { plain: tokens, credentials } = self.tokens(&raw)?;
        let expect = super::expect::expected(
            self.table.source,
            &self.table.prefix,
            super::expect::RawExpect { list: raw.expect.as_ref(), file: raw.expect_file.as_ref() },
            protocol,
            self.base_dir,
        )?;
        let path = raw.path.as_ref().map(|p| self.path(p)).transpose()?;
        let allowed_origins = raw.allowed_origins.as_ref().map(|o| self.origins(o)).transpose()?.unwrap_or_default();
        let tcp = self.tcp(raw.tcp.unwrap_or_default())?;
        let tls = super::tls::check(self.table.source, &self.table.prefix, raw.tls, protocol, self.base_dir)?;
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
                expect,
                credentials,
                path,
                allowed_origins,
                tcp,
                tls,
            },
            name_span: name.span(),
            address_span: address.span(),
        })
    }

    /// A key the table must have; its absence is reported at the table,
    /// with `rule` saying what to write.
    fn required<'r, T>(
        &self,
        value: Option<&'r Spanned<T>>,
        table: &Range<usize>,
        field: &str,
        rule: &str,
    ) -> Result<&'r Spanned<T>, ConfigError> {
        value.ok_or_else(|| self.table.error_at(table.clone(), field, format!("{field} is required: {rule}")))
    }

    /// Checks a listener name: it appears in every log line, so it must not
    /// break one.
    fn check_name(&self, name: &Spanned<String>) -> Result<(), ConfigError> {
        let text = name.get_ref();
        let valid_chars = text.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if text.is_empty() || text.chars().count() > MAX_NAME_LEN || !valid_chars {
            return Err(self.table.at(
                name,
                "name",
                format!("invalid name {text:?}: use 1..=64 characters from A-Z a-z 0-9 _ . -"),
            ));
        }
        Ok(())
    }

    /// The listen address: a literal `ip:port`, never a host name.
    fn address(&self, address: &Spanned<String>) -> Result<SocketAddr, ConfigError> {
        socket_addr(address.get_ref(), "\"127.0.0.1:7700\" or \"[::1]:7700\"")
            .map_err(|e| self.table.at(address, "address", e))
    }

    /// Rejects options `protocol` does not use: silently ignoring them
    /// would hide a wrong `protocol` line.
    fn reject_unused(&self, raw: &RawListener, protocol: Protocol) -> Result<(), ConfigError> {
        use Protocol::{Legacy, Native, Raw, WebSocket};
        let native = (&[Native][..], "native");
        let handshaking = (&[Native, WebSocket][..], "native and websocket");
        let legacy_raw = (&[Legacy, Raw][..], "legacy and raw");
        let framed = (&[Native, Legacy, WebSocket][..], "native, legacy and websocket");
        let websocket = (&[WebSocket][..], "websocket");
        let protocol_only = [
            ("handshake_timeout", raw.handshake_timeout.as_ref().map(Spanned::span), handshaking),
            ("server_ping", raw.server_ping.as_ref().map(Spanned::span), native),
            ("tokens", raw.tokens.as_ref().map(Spanned::span), handshaking),
            ("tokens_file", raw.tokens_file.as_ref().map(Spanned::span), handshaking),
            ("echo", raw.echo.as_ref().map(Spanned::span), legacy_raw),
            ("max_frame", raw.max_frame.as_ref().map(Spanned::span), framed),
            ("path", raw.path.as_ref().map(Spanned::span), websocket),
            ("allowed_origins", raw.allowed_origins.as_ref().map(Spanned::span), websocket),
        ];
        for (field, span, (allowed, users)) in protocol_only {
            if let Some(span) = span.filter(|_| !allowed.contains(&protocol)) {
                return Err(self.table.error_at(
                    span,
                    field,
                    format!("{field} applies only to {users} listeners, not {protocol}"),
                ));
            }
        }
        Ok(())
    }

    /// `max_frame` within the protocol's range, or the default.
    fn max_frame(&self, value: Option<&Spanned<i64>>, protocol: Protocol) -> Result<usize, ConfigError> {
        let (range, default) = match protocol {
            Protocol::Legacy => (LEGACY_MAX_FRAME, DEFAULT_MAX_FRAME),
            Protocol::WebSocket => (WEBSOCKET_MAX_FRAME, WEBSOCKET_DEFAULT_MAX_FRAME),
            // Raw never reaches the check: max_frame was rejected before.
            Protocol::Native | Protocol::Raw => (NATIVE_MAX_FRAME, DEFAULT_MAX_FRAME),
        };
        let key = self.table.key("max_frame");
        self.table.source.int_in(value, &key, range, default).map_err(|mut e| {
            if protocol == Protocol::Native && value.is_some_and(|v| *v.get_ref() < HELLO_64_64) {
                e.message.push_str(&format!(
                    ": a HELLO with a 64-byte id and a 64-byte token needs {HELLO_64_64} payload bytes"
                ));
            }
            e
        })
    }

    /// The silence timeout: `timeout` as given, or `interval * misses`.
    fn timeout(&self, raw: &RawListener, protocol: Protocol, interval: Duration) -> Result<Duration, ConfigError> {
        if let (Some(misses), Some(timeout)) = (&raw.misses, &raw.timeout) {
            return Err(self.table.at(
                timeout,
                "timeout",
                format!(
                    "give either misses (line {}) or timeout, not both; \
                     timeout = interval * misses",
                    self.table.source.line_of(misses.span().start)
                ),
            ));
        }
        if let Some(value) = &raw.timeout {
            let timeout = self.table.source.duration(value, &self.table.key("timeout"))?;
            let shown = format!("timeout {}", show(timeout));
            return self.check_timeout(timeout, shown, value.span(), "timeout", protocol, interval);
        }
        self.derived_timeout(raw, protocol, interval)
    }

    /// The timeout as `interval * misses`, when `timeout` is not given.
    fn derived_timeout(
        &self,
        raw: &RawListener,
        protocol: Protocol,
        interval: Duration,
    ) -> Result<Duration, ConfigError> {
        let misses =
            self.table.source.int_in(raw.misses.as_ref(), &self.table.key("misses"), MISSES, DEFAULT_MISSES)?;
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
            return Err(self.table.error_at(span, field, format!("{shown} is too long: at most {MAX_DURATION_TEXT}")));
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
        let error = |message: String| self.table.error_at(span.clone(), field, message);
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

    /// HELLO credentials from `tokens` or `tokens_file` (`tokens.rs` has
    /// the entry format); empty when neither is given.
    fn tokens(&self, raw: &RawListener) -> Result<Tokens, ConfigError> {
        match (&raw.tokens, &raw.tokens_file) {
            (Some(_), Some(file)) => {
                Err(self.table.at(file, "tokens_file", "give either tokens or tokens_file, not both".to_owned()))
            }
            (Some(list), None) => self.inline_tokens(list),
            (None, Some(file)) => self.tokens_file(file),
            (None, None) => Ok(Tokens::default()),
        }
    }

    /// The `tokens = [...]` list: at least one entry, each a token of
    /// 1..=255 bytes or a hashed `ID sha256:HEX`.
    fn inline_tokens(&self, list: &Spanned<Vec<Spanned<String>>>) -> Result<Tokens, ConfigError> {
        // An empty list would silently turn authentication off.
        if list.get_ref().is_empty() {
            return Err(self.table.at(
                list,
                "tokens",
                "tokens is empty: list at least one token, or leave tokens out \
                 to accept any client"
                    .to_owned(),
            ));
        }
        let mut tokens = Tokens::default();
        for (i, token) in list.get_ref().iter().enumerate() {
            let entry = tokens::entry(token.get_ref().as_bytes())
                .map_err(|message| self.table.at(token, &format!("tokens[{i}]"), message))?;
            tokens.add(entry);
        }
        Ok(tokens)
    }

    /// Reads a tokens file (`tokens.rs`): a regular file of at most 1 MiB,
    /// opened without blocking (see `file.rs`).
    fn tokens_file(&self, file: &Spanned<String>) -> Result<Tokens, ConfigError> {
        let path = self.base_dir.join(file.get_ref());
        let shown = path.display();
        let contents = super::file::read_capped(&path, super::file::MAX_TOKENS_FILE_BYTES)
            .map_err(|e| self.table.at(file, "tokens_file", format!("cannot read tokens file {shown}: {e}")))?;
        tokens::parse(&contents).map_err(|e| {
            let message = match e.line {
                0 => format!("tokens file {shown} {}", e.message),
                line => format!("tokens file {shown} line {line}: {}", e.message),
            };
            self.table.at(file, "tokens_file", message)
        })
    }

    /// The websocket `path`: absolute, printable ASCII, no query or
    /// fragment (the query carries the id and token).
    fn path(&self, path: &Spanned<String>) -> Result<String, ConfigError> {
        let text = path.get_ref();
        let printable = text.bytes().all(|b| (0x21..=0x7E).contains(&b) && b != b'?' && b != b'#');
        if !text.starts_with('/') || !printable || text.len() > MAX_PATH_LEN {
            return Err(self.table.at(
                path,
                "path",
                format!(
                    "invalid path {text:?}: an absolute path of at most {MAX_PATH_LEN} printable ASCII \
                     characters without ? or #, e.g. \"/heartbeat\""
                ),
            ));
        }
        Ok(text.clone())
    }

    /// `allowed_origins`: at least one, each `http://` or `https://` and a
    /// host with an optional port, as browsers send `Origin`.
    fn origins(&self, list: &Spanned<Vec<Spanned<String>>>) -> Result<Vec<String>, ConfigError> {
        // An empty list would silently allow every origin.
        if list.get_ref().is_empty() {
            return Err(self.table.at(
                list,
                "allowed_origins",
                "allowed_origins is empty: list at least one origin, or leave allowed_origins out \
                 to allow pages from any origin"
                    .to_owned(),
            ));
        }
        list.get_ref()
            .iter()
            .enumerate()
            .map(|(i, origin)| {
                let text = origin.get_ref();
                let host = text.strip_prefix("http://").or_else(|| text.strip_prefix("https://"));
                let valid =
                    host.is_some_and(|h| !h.is_empty() && h.bytes().all(|b| (0x21..=0x7E).contains(&b) && b != b'/'));
                if !valid {
                    return Err(self.table.at(
                        origin,
                        &format!("allowed_origins[{i}]"),
                        format!(
                            "invalid origin {text:?}: write scheme://host[:port] as browsers send it, \
                             e.g. \"https://panel.example\" or \"http://127.0.0.1:8080\" (no path)"
                        ),
                    ));
                }
                Ok(text.clone())
            })
            .collect()
    }

    /// Validates the `[listener.tcp]` table.
    fn tcp(&self, raw: RawTcp) -> Result<TcpConfig, ConfigError> {
        let key = |field: &str| self.table.key(&format!("tcp.{field}"));
        let mut tcp = TcpConfig {
            keepalive_idle: self.table.source.duration_in(
                raw.keepalive_idle.as_ref(),
                &key("keepalive_idle"),
                Duration::ZERO..=MAX_DURATION,
                DEFAULT_KEEPALIVE_IDLE,
            )?,
            keepalive_interval: self.table.source.duration_in(
                raw.keepalive_interval.as_ref(),
                &key("keepalive_interval"),
                Duration::ZERO..=MAX_DURATION,
                DEFAULT_KEEPALIVE_INTERVAL,
            )?,
            keepalive_count: self.table.source.int_in(
                raw.keepalive_count.as_ref(),
                &key("keepalive_count"),
                KEEPALIVE_COUNT,
                DEFAULT_KEEPALIVE_COUNT,
            )?,
            // Set below, once the probes it must not cut short are known.
            user_timeout: Duration::ZERO,
            nodelay: raw.nodelay.is_none_or(Spanned::into_inner),
        };
        // With keepalive off, the probe settings are unused and not checked.
        if tcp.keepalive() {
            self.keepalive_time(raw.keepalive_idle.as_ref(), tcp.keepalive_idle, &key("keepalive_idle"))?;
            self.keepalive_time(raw.keepalive_interval.as_ref(), tcp.keepalive_interval, &key("keepalive_interval"))?;
        }
        tcp.user_timeout = self.user_timeout(raw.user_timeout.as_ref(), &tcp, &key("user_timeout"))?;
        Ok(tcp)
    }

    /// `user_timeout`, by default the keepalive probes' span; given, it must
    /// not end them early.
    fn user_timeout(
        &self,
        value: Option<&Spanned<String>>,
        tcp: &TcpConfig,
        key: &str,
    ) -> Result<Duration, ConfigError> {
        // At most 32767s + 32767s * 127, which fits MAX_DURATION.
        let probes = tcp.keepalive_limit();
        let Some(value) = value else {
            return Ok(probes);
        };
        let user_timeout = self.table.source.duration(value, key)?;
        // Zero keeps the kernel default, which never cuts probes.
        if tcp.keepalive() && !user_timeout.is_zero() && user_timeout < probes {
            return Err(self.table.source.at(
                value,
                key,
                format!(
                    "user_timeout {} would cut keepalive probes short: needs >= {} \
                     (keepalive_idle {} + keepalive_interval {} * keepalive_count {}), \
                     or \"0s\" for the kernel default",
                    show(user_timeout),
                    show(probes),
                    show(tcp.keepalive_idle),
                    show(tcp.keepalive_interval),
                    tcp.keepalive_count
                ),
            ));
        }
        Ok(user_timeout)
    }

    /// Checks a keepalive time the kernel takes in whole seconds,
    /// 1..=32767; `value` is `None` for a default, which is valid.
    fn keepalive_time(&self, value: Option<&Spanned<String>>, time: Duration, key: &str) -> Result<(), ConfigError> {
        match value {
            Some(value) if time.is_zero() || time.subsec_nanos() != 0 || time > MAX_KEEPALIVE_TIME => {
                Err(self.table.source.at(
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
        let here = |span: &Range<usize>| (ctx.table.prefix.clone(), span.start);
        let duplicate = |field: &str, value: String, span: &Range<usize>, (first, at): (String, usize)| {
            let place = ctx.table.source.place(at, span.start);
            ctx.table.error_at(
                span.clone(),
                field,
                format!("duplicate listener {field} {value}: already used by {first} {place}"),
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

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::Path;

    use super::super::parse;
    use super::super::tests::{assert_err, listener, ms, only, parse_err, parse_ok, secs, temp_dir};
    use super::*;

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
    fn options_only_for_some_protocols() {
        let cases = [
            ("native", "echo = true", "echo applies only to legacy and raw listeners, not native"),
            (
                "legacy",
                "handshake_timeout = \"5s\"",
                "handshake_timeout applies only to native and websocket listeners, not legacy",
            ),
            ("raw", "server_ping = false", "server_ping applies only to native listeners, not raw"),
            ("legacy", "tokens = [\"x\"]", "tokens applies only to native and websocket listeners"),
            ("raw", "tokens_file = \"t\"", "tokens_file applies only to native and websocket listeners"),
            ("raw", "max_frame = 1024", "max_frame applies only to native, legacy and websocket listeners, not raw"),
            ("websocket", "server_ping = true", "server_ping applies only to native listeners, not websocket"),
            ("websocket", "echo = true", "echo applies only to legacy and raw listeners, not websocket"),
            ("native", "path = \"/hb\"", "path applies only to websocket listeners, not native"),
            ("raw", "allowed_origins = [\"http://a\"]", "allowed_origins applies only to websocket listeners, not raw"),
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
    fn websocket_path_and_origins() {
        let ws = |extra: &str| listener(&format!("protocol = \"websocket\"\n{extra}"));
        let l = only(&ws("path = \"/hb\"\nallowed_origins = [\"https://panel.example\", \"http://127.0.0.1:8080\"]\ntokens = [\"t\"]\n"));
        assert_eq!(l.path.as_deref(), Some("/hb"));
        assert_eq!(l.allowed_origins, ["https://panel.example", "http://127.0.0.1:8080"]);
        assert_eq!((l.max_frame, l.tokens.len()), (65536, 1));
        let l = only(&ws(""));
        assert_eq!((l.path, l.allowed_origins.len()), (None, 0));
        for bad in ["hb", "/a b", "/a?id=1", "/#x", ""] {
            assert_err(&ws(&format!("path = {bad:?}\n")), 5, "listener[0].path", "invalid path");
        }
        assert_err(&ws("allowed_origins = []\n"), 5, "listener[0].allowed_origins", "allowed_origins is empty");
        for bad in ["panel.example", "https://", "https://a/path", "ftp://a", "*"] {
            let text = ws(&format!("allowed_origins = [\"http://ok\", {bad:?}]\n"));
            assert_err(&text, 5, "listener[0].allowed_origins[1]", "invalid origin");
        }
        assert_err(&ws("max_frame = 16777217\n"), 5, "listener[0].max_frame", "must be 0..=16777216");
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
        assert_err(&listener("protocol = \"http\"\n"), 4, "listener[0].protocol", "native, legacy, raw or websocket");
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
    fn missing_listener_keys_are_reported_at_the_table() {
        let text = "[daemon]\ntick = \"1s\"\n\n[[listener]]\nprotocol = \"raw\"\n";
        let e = parse_err(text);
        assert_eq!(
            e.to_string(),
            "test.toml:4: listener[0].name: name is required: \
             a unique name of 1..=64 characters from A-Z a-z 0-9 _ . -"
        );
        let e = parse_err(&text.replace("protocol", "name = \"x\"\nprotocol"));
        assert_eq!(
            e.to_string(),
            "test.toml:4: listener[0].address: address is required: \
             ip:port to listen on, e.g. \"127.0.0.1:7700\" or \"[::1]:7700\""
        );
    }
}
