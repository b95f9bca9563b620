//! The daemon's configuration: TOML text → validated [`Config`].
//!
//! Parsing happens in two steps: serde reads the TOML into the raw tables
//! of `raw.rs`, whose values keep their byte spans; `check.rs` then turns
//! them into the plain types below, applying defaults and checking every
//! contradiction, with `listener.rs` checking each `[[listener]]` table.
//! `span.rs` turns a byte span into the file, line and key of an error, so
//! every error names all three. [`load`] also reads the `conf.d/*.toml`
//! drop-ins beside the file and `dropin.rs` merges them into the main
//! file's tables before the checks (listeners append; a `[daemon]` or
//! `[http]` key may be set in one file only). Every file read (config,
//! drop-in, tokens file) goes through `file.rs`: a regular file of at most
//! 1 MiB, opened without blocking, so neither `--check-config` nor a
//! reload can hang on a FIFO or fill memory from `/dev/zero`.
//!
//! Keys in errors are dotted paths; listeners are numbered from 0 in file
//! order within each file, whatever their name: `daemon.tick`,
//! `listener[1].timeout`, `listener[0].tcp.user_timeout`,
//! `listener[0].tokens[2]`.
//!
//! Invariants of a [`Config`] returned by [`parse`] or [`load`]:
//! - at least one listener; names and addresses are unique;
//! - every duration fits the protocol's `u32` milliseconds;
//! - a listener's `timeout` is zero only for `raw`, otherwise it is at least
//!   two ticks and at least its `interval`;
//! - options that a protocol does not use are rejected rather than ignored;
//! - with keepalive on and `user_timeout` non-zero,
//!   `user_timeout >= `[`TcpConfig::keepalive_limit`] (a shorter user
//!   timeout would cut the keepalive probes short).
//!
//! Options a protocol does not use keep their defaults in [`ListenerConfig`]
//! (e.g. `max_frame` is 1024 on a `raw` listener) and mean nothing there.

mod check;
mod dropin;
mod expect;
mod file;
mod hooks;
mod listener;
mod print;
mod raw;
mod span;
mod tls;
pub mod tokens;
mod warn;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use file::{read_capped, MAX_TOKENS_FILE_BYTES};
pub use hooks::{pattern_matches, HookConfig, HookEvent};
pub use print::to_toml;
pub use warn::{log_warnings, warnings};

use crate::wire::Protocol;

/// The default configuration, built into the binary: `config/heartbeatd.toml`.
pub const EMBEDDED: &str = include_str!("../../config/heartbeatd.toml");

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
    /// The `[[hook]]` tables, in file order (`hooks.rs`).
    pub hooks: Vec<HookConfig>,
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
    /// `token_file`: the bearer token every request but `/healthz` must
    /// carry; `None` leaves the API open.
    pub token: Option<tokens::ApiToken>,
    /// `[http.tls]`: the API is served over HTTPS with this certificate;
    /// a reload with new files applies to connections accepted after it.
    pub tls: Option<crate::tls::TlsSettings>,
}

/// Daemon-wide settings: the `[daemon]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonConfig {
    /// Timer wheel resolution: deadlines fire at most one tick late.
    pub tick: Duration,
    /// Longest nap after a busy round before the loop polls again (wakeup
    /// coalescing, `server/coalesce.rs`); zero is off. Shorter than `tick`.
    pub coalesce: Duration,
    /// The longest the loop may run late (woken after the deadline it slept
    /// for, or one round running long) before it counts as a stall of its
    /// own and every silence deadline is extended by it (`server/stall.rs`).
    /// At least twice the tick.
    pub max_local_pause: Duration,
    /// Most connections at once, over all listeners.
    pub max_clients: usize,
    /// Most connections from one IP address; 0 means no limit.
    pub max_per_address: usize,
    /// How long shutdown may take to flush BYE frames before exiting.
    pub shutdown_grace: Duration,
    /// Log verbosity.
    pub log_level: log::LevelFilter,
    /// Most hook programs running at once.
    pub hook_concurrency: usize,
    /// Most hook runs waiting to start, over all clients; more are dropped
    /// and counted.
    pub hook_queue: usize,
    /// The mass-loss guard's window (`hooks/guard.rs`); zero is off.
    pub mass_offline_window: Duration,
    /// More than this share of a listener's online clients, going silent
    /// within one window, is a mass loss…
    pub mass_offline_fraction: f64,
    /// …when they are at least this many.
    pub mass_offline_min: usize,
    /// Under systemd, keep client connections in the service's file
    /// descriptor store, so that a restart, an upgrade or a crash drops
    /// none of them (`src/fdstore.rs`, docs/RESTARTS.md).
    pub keep_connections: bool,
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
    /// `native`, `websocket`: listener-wide HELLO (or `token=`) tokens in
    /// clear (the old form): each authenticates any id not bound in
    /// `credentials`. With `credentials` also empty, the listener is open:
    /// no authentication.
    pub tokens: Vec<Vec<u8>>,
    /// `native`: the ids of the clients that should be online
    /// (`expect` or `expect_file`, `expect.rs`).
    pub expect: Vec<String>,
    /// `native`, `websocket`: hashed credentials, tokens bound to ids and
    /// listener-wide (`config::tokens`); see `crate::trust` for what they
    /// admit.
    pub credentials: tokens::Credentials,
    /// `websocket`: the only request path upgraded; `None` takes any.
    pub path: Option<String>,
    /// `websocket`: the page origins a browser may connect from; empty
    /// allows any.
    pub allowed_origins: Vec<String>,
    /// The `[listener.tcp]` socket options.
    pub tcp: TcpConfig,
    /// `native`: the `[listener.tls]` table; `None` is plain TCP.
    pub tls: Option<crate::tls::TlsSettings>,
}

/// TCP socket options: a listener's `[listener.tcp]` table, the agent's
/// resolved options, and what the kernel reports back
/// ([`crate::sockopt::effective`]), so the three compare directly.
///
/// Keepalive is off exactly when `keepalive_idle` is zero; the interval and
/// count then mean nothing.
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

impl TcpConfig {
    /// Whether kernel keepalive (`SO_KEEPALIVE`) is on.
    pub fn keepalive(&self) -> bool {
        !self.keepalive_idle.is_zero()
    }

    /// How long keepalive takes to give up on a silent peer:
    /// `keepalive_idle + keepalive_interval × keepalive_count`, zero with
    /// keepalive off. The one place this sum is made: the config's
    /// `user_timeout` check and the agent's derived user timeout both use it.
    pub fn keepalive_limit(&self) -> Duration {
        if !self.keepalive() {
            return Duration::ZERO;
        }
        self.keepalive_idle.saturating_add(self.keepalive_interval.saturating_mul(self.keepalive_count))
    }
}

impl fmt::Display for TcpConfig {
    /// logfmt keys, in the units the kernel uses.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "keepalive={} keepalive_idle_s={} keepalive_interval_s={} keepalive_count={} user_timeout_ms={} nodelay={}",
            self.keepalive(),
            self.keepalive_idle.as_secs(),
            self.keepalive_interval.as_secs(),
            self.keepalive_count,
            self.user_timeout.as_millis(),
            self.nodelay
        )
    }
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
    let source = span::Source::new(text, origin);
    let raw = raw::RawConfig::from_toml(text).map_err(|e| source.toml_error(&e))?;
    check::config(&source, raw, base_dir)
}

/// Reads and validates the config file at `path` and its drop-ins, the
/// `*.toml` files of `conf.d/` beside it, merged in name order (the rules
/// are in `dropin.rs` and heartbeatd.toml(5)).
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let mut files = vec![read(path)?];
    for dropin in dropin::files(&dropin::dir_of(path))? {
        files.push(read(&dropin)?);
    }
    // `Path::parent` of a bare file name is the empty path; tokens files
    // next to it are then relative to the working directory.
    let base_dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    parse_files(&files, base_dir)
}

/// The drop-in directory read by [`load`] for the config file at `path`.
pub fn dropin_dir(path: &Path) -> PathBuf {
    dropin::dir_of(path)
}

/// A file's name (as errors show it) and its text.
type NamedText = (String, String);

/// Reads one config file or drop-in: a regular file of at most
/// [`file::MAX_CONFIG_BYTES`], opened without blocking (see `file.rs`).
fn read(path: &Path) -> Result<NamedText, ConfigError> {
    let origin = path.display().to_string();
    let text = file::read_capped(path, file::MAX_CONFIG_BYTES)
        .and_then(|bytes| String::from_utf8(bytes).map_err(|_| "stream did not contain valid UTF-8".to_owned()));
    match text {
        Ok(text) => Ok((origin, text)),
        Err(e) => Err(ConfigError { origin, line: None, key: None, message: format!("cannot read config file: {e}") }),
    }
}

/// Parses the main file and its drop-ins (`files[0]` is the main file),
/// merges them and validates the result.
fn parse_files(files: &[NamedText], base_dir: &Path) -> Result<Config, ConfigError> {
    let ((origin, text), dropins) = files.split_first().ok_or_else(|| ConfigError {
        origin: "config".into(),
        line: None,
        key: None,
        message: "no config file".into(),
    })?;
    let mut source = span::Source::new(text, origin);
    let mut raw = raw::RawConfig::from_toml(text).map_err(|e| source.toml_error(&e))?;
    for (origin, text) in dropins {
        // Syntax and type errors are found in the file alone, with its own
        // spans; the merge then works in the shared offset space.
        let own = span::Source::new(text, origin);
        let parsed = raw::RawConfig::from_toml(text).map_err(|e| own.toml_error(&e))?;
        let base = source.push(text, origin);
        dropin::merge(&source, &mut raw, dropin::shift(parsed, base))?;
    }
    check::config(&source, raw, base_dir)
}

/// The embedded default config, parsed.
pub fn embedded() -> Result<Config, ConfigError> {
    parse(EMBEDDED, "embedded config", Path::new("."))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::fs;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A listener table starting on line 1, with `extra` from line 4 on.
    pub(super) fn listener(extra: &str) -> String {
        format!("[[listener]]\nname = \"a\"\naddress = \"127.0.0.1:7700\"\n{extra}")
    }

    pub(super) fn parse_ok(text: &str) -> Config {
        match parse(text, "test.toml", Path::new("/nonexistent")) {
            Ok(config) => config,
            Err(e) => panic!("unexpected error: {e}\n--- config:\n{text}"),
        }
    }

    pub(super) fn parse_err(text: &str) -> ConfigError {
        match parse(text, "test.toml", Path::new("/nonexistent")) {
            Ok(config) => panic!("expected an error, got {config:?}\n--- config:\n{text}"),
            Err(e) => e,
        }
    }

    /// Asserts an error's line, key, and a fragment of its message.
    #[track_caller]
    pub(super) fn assert_err(text: &str, line: usize, key: &str, fragment: &str) {
        let e = parse_err(text);
        assert_eq!(e.origin, "test.toml", "{e}");
        assert_eq!(e.line, Some(line), "{e}");
        assert_eq!(e.key.as_deref(), Some(key), "{e}");
        assert!(e.message.contains(fragment), "{e:?} lacks {fragment:?}");
    }

    pub(super) fn only(text: &str) -> ListenerConfig {
        let mut config = parse_ok(text);
        assert_eq!(config.listeners.len(), 1);
        config.listeners.remove(0)
    }

    /// A fresh directory under the system temp dir.
    pub(super) fn temp_dir(test: &str) -> PathBuf {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "heartbeatd-config-{test}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    pub(super) fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    pub(super) fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    pub(super) fn default_tcp() -> TcpConfig {
        TcpConfig {
            keepalive_idle: secs(15),
            keepalive_interval: secs(5),
            keepalive_count: 3,
            user_timeout: secs(30),
            nodelay: true,
        }
    }

    /// The `[daemon]` table when the file sets none of its keys: the
    /// documented defaults, written out once for every test that checks them.
    pub(super) fn default_daemon() -> DaemonConfig {
        DaemonConfig {
            tick: ms(100),
            coalesce: ms(1),
            max_local_pause: ms(500),
            max_clients: 65536,
            max_per_address: 0,
            shutdown_grace: secs(5),
            log_level: log::LevelFilter::Info,
            hook_concurrency: 4,
            hook_queue: 1024,
            mass_offline_window: secs(10),
            mass_offline_fraction: 0.5,
            mass_offline_min: 10,
            keep_connections: true,
        }
    }

    #[test]
    fn embedded_is_the_documented_default() {
        let expected = Config {
            daemon: default_daemon(),
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
                expect: vec![],
                credentials: tokens::Credentials::default(),
                path: None,
                allowed_origins: vec![],
                tcp: default_tcp(),
                tls: None,
            }],
            http: Some(HttpConfig {
                address: "127.0.0.1:7780".parse().unwrap(),
                max_connections: 64,
                request_timeout: secs(10),
                history: 1024,
                subscriber_buffer: 262144,
                token: None,
                tls: None,
            }),
            hooks: vec![],
        };
        assert_eq!(embedded().unwrap(), expected);
    }

    /// The part of the embedded config before its commented-out examples.
    fn embedded_main_part() -> &'static str {
        let end = EMBEDDED.find("# Examples.").unwrap();
        &EMBEDDED[..end]
    }

    /// The embedded config with its commented-out examples (native, legacy
    /// and raw listeners) uncommented.
    pub(super) fn embedded_with_examples() -> String {
        let main = embedded_main_part();
        let examples: Vec<String> = EMBEDDED[main.len()..]
            .lines()
            .map(|line| match line.strip_prefix('#') {
                Some(rest) if rest.starts_with(|c: char| c == '[' || c.is_ascii_lowercase()) => rest.to_string(),
                _ => line.to_string(),
            })
            .collect();
        format!("{main}{}", examples.join("\n"))
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
        assert_eq!(checked, 25);
    }

    #[test]
    fn embedded_examples_parse_when_uncommented() {
        let config = parse_ok(&embedded_with_examples());
        let [native, legacy, raw, websocket] = &config.listeners[..] else {
            panic!("expected four listeners: {config:?}");
        };
        assert_eq!(native.protocol, Protocol::Native);
        assert_eq!(legacy.protocol, Protocol::Legacy);
        assert_eq!((legacy.timeout, legacy.echo, legacy.max_frame), (secs(30), true, 4096));
        assert_eq!(raw.protocol, Protocol::Raw);
        assert_eq!(raw.timeout, Duration::ZERO);
        assert_eq!(raw.tcp.user_timeout, secs(18));
        let [hook] = &config.hooks[..] else { panic!("expected one hook: {config:?}") };
        assert_eq!(hook.command[0], "/usr/local/bin/page-oncall");
        assert_eq!(websocket.protocol, Protocol::WebSocket);
        assert_eq!((websocket.path.as_deref(), websocket.allowed_origins.len()), (Some("/"), 1));
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
            "hook_concurrency",
            "hook_queue",
            "mass_offline_window",
            "mass_offline_fraction",
            "mass_offline_min",
            "[[hook]]",
            "events",
            "listeners",
            "reasons",
            "clients",
            "command",
            "token_file",
        ];
        for key in keys {
            assert!(EMBEDDED.contains(&format!("{key} ")) || EMBEDDED.contains(&format!("{key}\n")), "{key}");
        }
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

    #[test]
    fn load_resolves_tokens_files_against_the_config_directory() {
        let dir = temp_dir("load-tokens");
        fs::write(dir.join("tokens"), "alpha\n").unwrap();
        fs::write(dir.join("heartbeatd.toml"), listener("tokens_file = \"tokens\"\n")).unwrap();
        assert_eq!(load(&dir.join("heartbeatd.toml")).unwrap().listeners[0].tokens, vec![b"alpha".to_vec()]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn keepalive_limit_is_idle_plus_interval_times_count() {
        assert_eq!(default_tcp().keepalive_limit(), secs(30));
        let off = TcpConfig { keepalive_idle: Duration::ZERO, ..default_tcp() };
        assert!(!off.keepalive());
        assert_eq!(off.keepalive_limit(), Duration::ZERO);
        let huge = TcpConfig { keepalive_interval: Duration::MAX, ..default_tcp() };
        assert_eq!(huge.keepalive_limit(), Duration::MAX, "saturates rather than panics");
    }

    #[test]
    fn tcp_options_display_as_logfmt_in_kernel_units() {
        let tcp = TcpConfig { keepalive_interval: ms(2500), user_timeout: ms(1500), ..default_tcp() };
        assert_eq!(
            tcp.to_string(),
            "keepalive=true keepalive_idle_s=15 keepalive_interval_s=2 keepalive_count=3 user_timeout_ms=1500 nodelay=true"
        );
        let off = TcpConfig { keepalive_idle: Duration::ZERO, nodelay: false, ..default_tcp() };
        assert!(off.to_string().starts_with("keepalive=false keepalive_idle_s=0 "), "{off}");
        assert!(off.to_string().ends_with(" nodelay=false"), "{off}");
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
