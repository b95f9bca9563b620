//! `conf.d/*.toml` drop-ins: the files beside the main config that are
//! merged into it, so a package's conffile stays untouched while listeners
//! and hooks live in files of their own.
//!
//! Merge rules (documented in heartbeatd.toml(5) and the README):
//! - the drop-in directory is `conf.d` beside the main file; it may be
//!   absent; files whose name ends in `.toml` and does not start with `.`
//!   are read, in byte order of their names, after the main file; other
//!   names (`x.toml.dpkg-dist`, `README`, editor swap files) are ignored;
//! - a `.toml` entry that is not a regular file (or a symlink to one), or
//!   that cannot be read, is an error naming it;
//! - `[[listener]]` tables append, main file first, then each drop-in;
//! - `[daemon]` and `[http]` merge key by key: each key may be set in one
//!   file only, and a second setting is an error naming both places
//!   (nothing is silently overridden);
//! - relative `tokens_file` paths start at the main file's directory,
//!   whichever file names them.
//!
//! Invariant: spans of a merged [`RawConfig`] lie in the shared offset
//! space of the [`Source`] the files were pushed to.

use std::fs;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::raw::{RawConfig, RawDaemon, RawHttp, RawListener, RawTcp, RawTls};
use super::span::Source;
use super::ConfigError;

/// The drop-in directory of the config file at `path`.
pub(super) fn dir_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join("conf.d"),
        _ => PathBuf::from("conf.d"),
    }
}

/// The drop-ins in `dir`, in the order they are merged; none when the
/// directory does not exist.
pub(super) fn files(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let error = |path: &Path, message: String| ConfigError {
        origin: path.display().to_string(),
        line: None,
        key: None,
        message,
    };
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(error(dir, format!("cannot read drop-in directory: {e}"))),
    };
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| error(dir, format!("cannot read drop-in directory: {e}")))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        if name.starts_with('.') || !name.ends_with(".toml") {
            continue;
        }
        let path = entry.path();
        // `metadata` follows symlinks: a link to a file is a file.
        match fs::metadata(&path) {
            Ok(meta) if meta.is_file() => paths.push(path),
            Ok(_) => {
                return Err(error(&path, "not a regular file: a drop-in must be a file (or a symlink to one)".into()))
            }
            Err(e) => return Err(error(&path, format!("cannot read drop-in: {e}"))),
        }
    }
    paths.sort();
    Ok(paths)
}

/// Merges the raw tables of later files into `into`; `source` holds every
/// file, so an error names the place of both settings.
pub(super) fn merge(source: &Source<'_>, into: &mut RawConfig, other: RawConfig) -> Result<(), ConfigError> {
    if let Some(daemon) = other.daemon {
        let mine = into.daemon.get_or_insert_with(RawDaemon::default);
        merge_daemon(source, mine, daemon)?;
    }
    if let Some(http) = other.http {
        match &mut into.http {
            Some(mine) => {
                let mine = mine.get_mut();
                merge_http(source, mine, http.into_inner())?;
            }
            None => into.http = Some(http),
        }
    }
    if let Some(hooks) = other.hook {
        match &mut into.hook {
            Some(mine) => mine.get_mut().extend(hooks.into_inner()),
            None => into.hook = Some(hooks),
        }
    }
    if let Some(listeners) = other.listener {
        match &mut into.listener {
            Some(mine) => mine.get_mut().extend(listeners.into_inner()),
            None => into.listener = Some(listeners),
        }
    }
    Ok(())
}

/// Sets `mine` from `theirs`, unless both are set: then an error at the
/// second setting, naming the first.
fn one<T>(
    source: &Source<'_>,
    key: &str,
    mine: &mut Option<Spanned<T>>,
    theirs: Option<Spanned<T>>,
) -> Result<(), ConfigError> {
    let Some(theirs) = theirs else {
        return Ok(());
    };
    if let Some(first) = mine {
        return Err(source.error(
            Some(theirs.span()),
            Some(key.to_owned()),
            format!(
                "{key} is already set at {}:{}: a key may be set in one file only",
                source.origin_of(first.span().start),
                source.line_of(first.span().start)
            ),
        ));
    }
    *mine = Some(theirs);
    Ok(())
}

/// Key-by-key merge of two `[daemon]` tables.
fn merge_daemon(source: &Source<'_>, mine: &mut RawDaemon, theirs: RawDaemon) -> Result<(), ConfigError> {
    let RawDaemon {
        tick,
        coalesce,
        max_local_pause,
        max_clients,
        max_per_address,
        shutdown_grace,
        log_level,
        hook_concurrency,
        hook_queue,
        mass_offline_window,
        mass_offline_fraction,
        mass_offline_min,
        keep_connections,
    } = theirs;
    one(source, "daemon.mass_offline_window", &mut mine.mass_offline_window, mass_offline_window)?;
    one(source, "daemon.mass_offline_fraction", &mut mine.mass_offline_fraction, mass_offline_fraction)?;
    one(source, "daemon.mass_offline_min", &mut mine.mass_offline_min, mass_offline_min)?;
    one(source, "daemon.hook_concurrency", &mut mine.hook_concurrency, hook_concurrency)?;
    one(source, "daemon.hook_queue", &mut mine.hook_queue, hook_queue)?;
    one(source, "daemon.tick", &mut mine.tick, tick)?;
    one(source, "daemon.coalesce", &mut mine.coalesce, coalesce)?;
    one(source, "daemon.max_local_pause", &mut mine.max_local_pause, max_local_pause)?;
    one(source, "daemon.max_clients", &mut mine.max_clients, max_clients)?;
    one(source, "daemon.max_per_address", &mut mine.max_per_address, max_per_address)?;
    one(source, "daemon.shutdown_grace", &mut mine.shutdown_grace, shutdown_grace)?;
    one(source, "daemon.log_level", &mut mine.log_level, log_level)?;
    one(source, "daemon.keep_connections", &mut mine.keep_connections, keep_connections)
}

/// Key-by-key merge of two `[http]` tables.
fn merge_http(source: &Source<'_>, mine: &mut RawHttp, theirs: RawHttp) -> Result<(), ConfigError> {
    let RawHttp { address, max_connections, request_timeout, history, subscriber_buffer, token_file, tls } = theirs;
    one(source, "http.address", &mut mine.address, address)?;
    one(source, "http.max_connections", &mut mine.max_connections, max_connections)?;
    one(source, "http.request_timeout", &mut mine.request_timeout, request_timeout)?;
    one(source, "http.history", &mut mine.history, history)?;
    one(source, "http.subscriber_buffer", &mut mine.subscriber_buffer, subscriber_buffer)?;
    one(source, "http.token_file", &mut mine.token_file, token_file)?;
    one(source, "http.tls", &mut mine.tls, tls)
}

/// Moves every span of a file's raw tables by `by`, into the shared offset
/// space of a [`Source`].
pub(super) fn shift(raw: RawConfig, by: usize) -> RawConfig {
    RawConfig {
        daemon: raw.daemon.map(|d| RawDaemon {
            tick: s(d.tick, by),
            coalesce: s(d.coalesce, by),
            max_local_pause: s(d.max_local_pause, by),
            max_clients: s(d.max_clients, by),
            max_per_address: s(d.max_per_address, by),
            shutdown_grace: s(d.shutdown_grace, by),
            log_level: s(d.log_level, by),
            hook_concurrency: s(d.hook_concurrency, by),
            hook_queue: s(d.hook_queue, by),
            mass_offline_window: s(d.mass_offline_window, by),
            mass_offline_fraction: s(d.mass_offline_fraction, by),
            mass_offline_min: s(d.mass_offline_min, by),
            keep_connections: s(d.keep_connections, by),
        }),
        hook: super::hooks::shift(raw.hook, by),
        listener: raw.listener.map(|list| {
            let span = moved(list.span(), by);
            let tables = list.into_inner().into_iter().map(|l| shift_listener(l, by)).collect();
            Spanned::new(span, tables)
        }),
        http: raw.http.map(|http| {
            let span = moved(http.span(), by);
            let h = http.into_inner();
            let table = RawHttp {
                address: s(h.address, by),
                max_connections: s(h.max_connections, by),
                request_timeout: s(h.request_timeout, by),
                history: s(h.history, by),
                subscriber_buffer: s(h.subscriber_buffer, by),
                token_file: s(h.token_file, by),
                tls: h.tls.map(|t| shift_tls(t, by)),
            };
            Spanned::new(span, table)
        }),
    }
}

/// [`shift`] of one `[[listener]]` table.
fn shift_listener(table: Spanned<RawListener>, by: usize) -> Spanned<RawListener> {
    let span = moved(table.span(), by);
    let l = table.into_inner();
    let listener = RawListener {
        name: s(l.name, by),
        address: s(l.address, by),
        protocol: s(l.protocol, by),
        interval: s(l.interval, by),
        misses: s(l.misses, by),
        timeout: s(l.timeout, by),
        handshake_timeout: s(l.handshake_timeout, by),
        server_ping: s(l.server_ping, by),
        echo: s(l.echo, by),
        max_frame: s(l.max_frame, by),
        tokens: l.tokens.map(|list| {
            let span = moved(list.span(), by);
            Spanned::new(span, list.into_inner().into_iter().map(|t| moved_value(t, by)).collect())
        }),
        tokens_file: s(l.tokens_file, by),
        expect: l.expect.map(|list| {
            let span = moved(list.span(), by);
            Spanned::new(span, list.into_inner().into_iter().map(|t| moved_value(t, by)).collect())
        }),
        expect_file: s(l.expect_file, by),
        path: s(l.path, by),
        allowed_origins: l.allowed_origins.map(|list| {
            let span = moved(list.span(), by);
            Spanned::new(span, list.into_inner().into_iter().map(|o| moved_value(o, by)).collect())
        }),
        tcp: l.tcp.map(|t| RawTcp {
            keepalive_idle: s(t.keepalive_idle, by),
            keepalive_interval: s(t.keepalive_interval, by),
            keepalive_count: s(t.keepalive_count, by),
            user_timeout: s(t.user_timeout, by),
            nodelay: s(t.nodelay, by),
        }),
        tls: l.tls.map(|t| shift_tls(t, by)),
    };
    Spanned::new(span, listener)
}

/// [`shift`] of a `[listener.tls]` or `[http.tls]` table.
fn shift_tls(table: Spanned<RawTls>, by: usize) -> Spanned<RawTls> {
    let span = moved(table.span(), by);
    let t = table.into_inner();
    let tls =
        RawTls { cert: s(t.cert, by), key: s(t.key, by), client_ca: s(t.client_ca, by), client_id: s(t.client_id, by) };
    Spanned::new(span, tls)
}

/// An optional value, moved by `by`.
fn s<T>(value: Option<Spanned<T>>, by: usize) -> Option<Spanned<T>> {
    value.map(|v| moved_value(v, by))
}

/// A value, moved by `by`.
fn moved_value<T>(value: Spanned<T>, by: usize) -> Spanned<T> {
    let span = moved(value.span(), by);
    Spanned::new(span, value.into_inner())
}

/// A span, moved by `by`.
fn moved(span: Range<usize>, by: usize) -> Range<usize> {
    span.start + by..span.end + by
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::super::load;
    use super::super::tests::{listener, temp_dir};

    /// `[[listener]]` named `name` on `port`, from line 1.
    fn named(name: &str, port: u16) -> String {
        listener("").replace("\"a\"", &format!("{name:?}")).replace("7700", &port.to_string())
    }

    #[test]
    fn dropins_merge_in_name_order_after_the_main_file() {
        let dir = temp_dir("dropin-order");
        fs::create_dir(dir.join("conf.d")).unwrap();
        fs::write(dir.join("heartbeatd.toml"), format!("[daemon]\ntick = \"10ms\"\n{}", named("main", 7700))).unwrap();
        fs::write(dir.join("conf.d/20-b.toml"), named("b", 7702)).unwrap();
        fs::write(dir.join("conf.d/10-a.toml"), format!("[daemon]\nmax_clients = 7\n{}", named("a", 7701))).unwrap();
        // Ignored: not .toml, hidden, dpkg leftovers.
        fs::write(dir.join("conf.d/README"), "not toml").unwrap();
        fs::write(dir.join("conf.d/.10-a.toml.swp"), "junk").unwrap();
        fs::write(dir.join("conf.d/.hidden.toml"), "junk").unwrap();
        fs::write(dir.join("conf.d/30-c.toml.dpkg-dist"), "junk").unwrap();
        let config = load(&dir.join("heartbeatd.toml")).unwrap();
        let names: Vec<&str> = config.listeners.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["main", "a", "b"]);
        assert_eq!((config.daemon.tick.as_millis(), config.daemon.max_clients), (10, 7));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn errors_in_a_dropin_name_its_file_line_and_key() {
        let dir = temp_dir("dropin-errors");
        fs::create_dir(dir.join("conf.d")).unwrap();
        let main = dir.join("heartbeatd.toml");
        fs::write(&main, format!("[daemon]\ntick = \"10ms\"\n{}", named("main", 7700))).unwrap();
        let dropin = dir.join("conf.d/10-a.toml");
        let (m, d) = (main.display(), dropin.display());

        // A check error: listeners are numbered within their file.
        fs::write(&dropin, format!("{}misses = 0\n", named("a", 7701))).unwrap();
        assert_eq!(load(&main).unwrap_err().to_string(), format!("{d}:4: listener[0].misses: must be 1..=1000, got 0"));
        // A toml type error.
        fs::write(&dropin, format!("\n{}interval = 3\n", named("a", 7701))).unwrap();
        let e = load(&main).unwrap_err();
        assert_eq!(
            (e.origin.as_str(), e.line, e.key.as_deref()),
            (d.to_string().as_str(), Some(5), Some("listener[0].interval"))
        );
        // A key set in two files: both places named.
        fs::write(&dropin, "[daemon]\n\ntick = \"20ms\"\n").unwrap();
        assert_eq!(
            load(&main).unwrap_err().to_string(),
            format!("{d}:3: daemon.tick: daemon.tick is already set at {m}:2: a key may be set in one file only")
        );
        // A listener name used in another file.
        fs::write(&dropin, named("main", 7701)).unwrap();
        assert_eq!(
            load(&main).unwrap_err().to_string(),
            format!("{d}:2: listener[0].name: duplicate listener name \"main\": already used by listener[0] at {m}:4")
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn http_and_listeners_may_live_only_in_dropins() {
        let dir = temp_dir("dropin-only");
        fs::create_dir(dir.join("conf.d")).unwrap();
        fs::write(dir.join("heartbeatd.toml"), "[daemon]\ntick = \"10ms\"\n").unwrap();
        fs::write(dir.join("conf.d/http.toml"), "[http]\naddress = \"127.0.0.1:0\"\n").unwrap();
        fs::write(dir.join("conf.d/main.toml"), named("main", 7700)).unwrap();
        let config = load(&dir.join("heartbeatd.toml")).unwrap();
        assert_eq!(config.listeners.len(), 1);
        assert_eq!(config.http.map(|h| h.address.port()), Some(0));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_dropin_that_is_not_a_readable_file_is_an_error() {
        let dir = temp_dir("dropin-odd");
        fs::create_dir_all(dir.join("conf.d/sub.toml")).unwrap();
        let main = dir.join("heartbeatd.toml");
        fs::write(&main, named("main", 7700)).unwrap();
        let e = load(&main).unwrap_err();
        assert_eq!(e.origin, dir.join("conf.d/sub.toml").display().to_string());
        assert!(e.message.contains("not a regular file"), "{e}");
        fs::remove_dir(dir.join("conf.d/sub.toml")).unwrap();

        std::os::unix::fs::symlink(dir.join("absent"), dir.join("conf.d/broken.toml")).unwrap();
        let e = load(&main).unwrap_err();
        assert!(
            e.to_string().starts_with(&format!("{}: cannot read drop-in: ", dir.join("conf.d/broken.toml").display())),
            "{e}"
        );
        fs::remove_file(dir.join("conf.d/broken.toml")).unwrap();

        // conf.d itself a file: the directory cannot be read.
        fs::remove_dir(dir.join("conf.d")).unwrap();
        fs::write(dir.join("conf.d"), "").unwrap();
        let e = load(&main).unwrap_err();
        assert!(e.message.contains("cannot read drop-in directory"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
