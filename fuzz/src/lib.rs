//! What the fuzz targets share: cutting a stream into arbitrary reads and
//! running a deframer over them, a status view with nothing in it, and a
//! scratch directory for the parsers that only read files.
//!
//! Each target states its own invariants; the config targets share
//! [`check_config`], the invariants `config/mod.rs` promises.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use heartbeatd::api::{ClientView, Health, HttpStats, View};
use heartbeatd::config::{parse, to_toml, Config, ConfigError};
use heartbeatd::wire::Protocol;

/// Cuts `stream` into consecutive reads whose lengths cycle through
/// `sizes` (a size of 0 counts as 1; no sizes means one read of it all).
/// Every byte is in exactly one piece, in order.
pub fn chunks<'a>(stream: &'a [u8], sizes: &[u8]) -> Vec<&'a [u8]> {
    if sizes.is_empty() {
        return vec![stream];
    }
    let mut pieces = Vec::new();
    let mut rest = stream;
    let mut i = 0;
    while !rest.is_empty() {
        let n = usize::from(sizes[i % sizes.len()].max(1)).min(rest.len());
        let (piece, tail) = rest.split_at(n);
        pieces.push(piece);
        rest = tail;
        i += 1;
    }
    pieces
}

/// A deframer target's input cut in its parts: 1 byte `n`, `n` read
/// sizes, `N` bytes of frame limit, then the stream; `None` when too short.
pub fn deframer_input<const N: usize>(data: &[u8]) -> Option<(&[u8], &[u8; N], &[u8])> {
    let (&n, rest) = data.split_first()?;
    let (sizes, rest) = rest.split_at_checked(usize::from(n))?;
    let (limit, stream) = rest.split_first_chunk::<N>()?;
    Some((sizes, limit, stream))
}

/// One deframer step, `(result, bytes used)`, with the item `{:?}`- and
/// the error `{}`-formatted: owned, so a frame that borrows the deframer
/// can leave the step.
pub type Shown = (Result<Option<String>, String>, usize);

/// [`Shown`] of a deframer step.
pub fn shown<T: std::fmt::Debug, E: std::fmt::Display>((result, used): (Result<Option<T>, E>, usize)) -> Shown {
    (result.map(|item| item.map(|item| format!("{item:?}"))).map_err(|e| e.to_string()), used)
}

/// What a deframer makes of `pieces`, one read per piece: `next(bytes)`
/// is its step. The items in order; an error, `error {e}`, ends the list.
/// Checks that a step uses at most the bytes it is given, and that "need
/// more" (`Ok(None)`) used them all.
pub fn deframe_reads(pieces: &[&[u8]], mut next: impl FnMut(&[u8]) -> Shown) -> Vec<String> {
    let mut items = Vec::new();
    for &piece in pieces {
        let mut rest = piece;
        loop {
            let (result, used) = next(rest);
            assert!(used <= rest.len(), "used {used} of {}", rest.len());
            rest = &rest[used..];
            match result {
                Ok(Some(item)) => items.push(item),
                Ok(None) => {
                    assert!(rest.is_empty(), "need-more left {} bytes unused", rest.len());
                    break;
                }
                Err(e) => {
                    items.push(format!("error {e}"));
                    return items;
                }
            }
        }
    }
    items
}

/// A daemon with no client online: every route answers from it.
pub struct EmptyView;

impl View for EmptyView {
    fn clients(&self, _: Option<&str>) -> Vec<ClientView> {
        Vec::new()
    }

    fn client(&self, _: &str) -> Option<ClientView> {
        None
    }

    fn metrics(&self, _: &HttpStats) -> String {
        String::new()
    }

    fn health(&self) -> Health {
        Health { status: "ok", uptime_ms: 0, online: 0, connections: 0, lag_ms: 0, last_stall_ms: 0, loop_stalls: 0 }
    }
}

/// A directory of this process's own, created on first use: targets whose
/// parser reads files write their input there (one target per process:
/// the first name given wins). In `/dev/shm` (memory)
/// where it exists: on a disk, writing each input costs milliseconds.
pub fn scratch_dir(target: &str) -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
        let dir = base.join(format!("heartbeatd-fuzz-{target}-{}", std::process::id()));
        // A failure shows as failed writes, which skip the input.
        let _ = fs::create_dir_all(&dir);
        dir
    })
}

/// Writes `bytes` to `path`, replacing it. A failed write is not a
/// finding: the input is then skipped (`false`).
pub fn write(path: &Path, bytes: &[u8]) -> bool {
    fs::write(path, bytes).is_ok()
}

/// Asserts the invariants `config/mod.rs` promises of every parsed
/// [`Config`], and that `--print-config` output parses back to it (when
/// every token is UTF-8, which `print.rs` documents as the exception).
pub fn check_config(config: &Config) {
    use std::collections::HashSet;

    let fits = |d: Duration| u32::try_from(d.as_millis()).is_ok();
    let d = &config.daemon;
    assert!(!config.listeners.is_empty(), "no listener");
    for duration in [d.tick, d.coalesce, d.max_local_pause, d.shutdown_grace] {
        assert!(fits(duration), "daemon duration {duration:?}");
    }
    let mut names = HashSet::new();
    let mut addresses = HashSet::new();
    for l in &config.listeners {
        assert!(names.insert(&l.name), "listener name {} twice", l.name);
        assert!(addresses.insert(l.address), "listener address {} twice", l.address);
        let t = &l.tcp;
        for duration in
            [l.interval, l.timeout, l.handshake_timeout, t.keepalive_idle, t.keepalive_interval, t.user_timeout]
        {
            assert!(fits(duration), "listener {} duration {duration:?}", l.name);
        }
        if l.timeout.is_zero() {
            assert_eq!(l.protocol, Protocol::Raw, "timeout 0 on {}", l.name);
        } else {
            assert!(l.timeout >= l.interval && l.timeout >= d.tick * 2, "listener {} timeout {:?}", l.name, l.timeout);
        }
        if t.keepalive() && !t.user_timeout.is_zero() {
            assert!(t.user_timeout >= t.keepalive_limit(), "listener {} user_timeout", l.name);
        }
    }
    if config.listeners.iter().flat_map(|l| &l.tokens).any(|t| std::str::from_utf8(t).is_err()) {
        return;
    }
    let printed = to_toml(config, "fuzz");
    match parse(&printed, "printed", Path::new("/nonexistent")) {
        Ok(back) => assert_eq!(&back, config, "--- printed:\n{printed}"),
        Err(e) => panic!("printed config does not parse: {e}\n--- printed:\n{printed}"),
    }
}

/// Asserts that an error names its place: an origin, and a line within
/// `text` when it gives one.
pub fn check_error(error: &ConfigError, text: &str) {
    assert!(!error.origin.is_empty() && !error.message.is_empty(), "{error:?}");
    if let Some(line) = error.line {
        assert!(line >= 1 && line <= text.lines().count().max(1) + 1, "line {line} of {error}");
    }
    assert!(!error.to_string().is_empty());
}
