//! The one harness of heartbeatd's integration suites (`tests/*.rs`) and of
//! the fault report (`benches/faults`): a library crate, compiled once and
//! linked into every suite, which stays its own test binary.
//!
//! Everything here is written from `PROTOCOL.md`, the log format and the
//! journal's native protocol alone: the frames are encoded and decoded by
//! hand and nothing of the `heartbeatd` library is used, so the tests prove
//! that an independent client can talk to the daemon and a codec bug in the
//! daemon cannot hide itself.
//!
//! - [`temp`]: [`TempDir`], removed on drop unless the test is failing.
//! - [`log`]: [`Line`] (a parsed logfmt log line), [`Pred`] and [`ev`] to
//!   match lines, and the [`log::Follower`] that collects a child's output
//!   lines, each stamped with the instant it was read.
//! - [`daemon`]: [`Daemon`], the real binary on a temp config, killed on
//!   drop; [`run_cli`]; the config builders [`config`], [`native`], ...
//! - [`proc`]: [`Proc`], any other child process (agent, helper) whose
//!   output is followed, killed on drop.
//! - [`native`]: [`NativeClient`] and [`PlainClient`] (legacy, raw).
//! - [`audit`]: [`Audit`], the one-offline-per-online check of a log.
//! - [`tls`]: certificates made with `openssl` ([`Pki`]) and a native
//!   client over Python's `ssl` ([`py_client`]).
//! - [`http`], [`systemd`], [`netns`]: the status API, systemd (notify,
//!   journal, socket activation) and network-namespace helpers.
//! - [`browser`]: headless Chromium over the DevTools protocol.
//! - [`websocket`]: Python's `websockets` as an independent WebSocket client.
//!
//! Every wait has a deadline; a timed-out wait fails the test with what was
//! waited for and the output so far.
//!
//! Binaries: cargo tells a test crate where it built the package's binaries
//! (`CARGO_BIN_EXE_<name>`) when compiling it, not this library; [`bin`]
//! finds them where cargo put them, beside the directory of the running test
//! binary (`target/<profile>/deps/..`), unless the variable is set at run
//! time.

pub mod audit;
pub mod browser;
pub mod daemon;
pub mod http;
pub mod log;
pub mod native;
pub mod netns;
pub mod proc;
pub mod systemd;
pub mod temp;
pub mod tls;
pub mod websocket;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

pub use audit::{ms, signed_ms, Audit};
pub use daemon::{config, legacy, listener, native, raw, reap, run_agent, run_cli, Daemon};
pub use log::{ev, message_of, parse_logfmt, Ev, Line, Pred, When};
pub use native::*;
pub use proc::{cpu_ticks, limit_open_files, Output, Proc};
pub use temp::TempDir;
pub use tls::{py_client, tls_table, CertFiles, Pki};

/// How long any "this must happen" wait may take before the test fails.
/// Generous: the machine has 2 cores and the tests run in parallel.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Allowed lateness on top of the protocol's bound (one tick) in timing
/// assertions. Generous for the same reason as [`DEADLINE`].
pub const SLACK: Duration = Duration::from_millis(500);

/// The path of the package's binary `name` (`heartbeatd`, `heartbeat`), if
/// cargo built it: `CARGO_BIN_EXE_<name>` when set at run time, else
/// `<name>` in the profile directory above the running test binary's
/// `deps/`.
pub fn find_bin(name: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(format!("CARGO_BIN_EXE_{name}")) {
        return Some(PathBuf::from(path));
    }
    let exe = std::env::current_exe().ok()?;
    let mut dir = exe.parent()?;
    if dir.ends_with("deps") {
        dir = dir.parent()?;
    }
    let path = dir.join(name);
    path.is_file().then_some(path)
}

/// Like [`find_bin`], failing the test if the binary is missing.
pub fn bin(name: &str) -> PathBuf {
    find_bin(name).unwrap_or_else(|| panic!("no `{name}` binary beside the test binary: build it with cargo"))
}

/// The daemon binary under test.
pub fn daemon_bin() -> &'static PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| bin("heartbeatd"))
}

/// Finds `program` on `$PATH`.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|p| p.is_file())
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock `Instant` reads on Linux,
/// shared by every process on the machine.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime fills the timespec it is given.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC)");
    u64::try_from(ts.tv_sec).expect("monotonic seconds") * 1_000_000_000 + u64::try_from(ts.tv_nsec).expect("ns")
}
