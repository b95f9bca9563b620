//! The daemon under test, its CLI, and config builders.
//!
//! Invariant: a [`Daemon`] is killed and reaped on drop, on every path, so
//! no test leaves a process or a zombie behind; while it lives its pid names
//! our own child (it is reaped only by drop or [`Daemon::wait_exit`]).

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use crate::log::{ev, Follower, Line, Pred};
use crate::temp::TempDir;
use crate::{daemon_bin, DEADLINE};

// ---------------------------------------------------------------------------
// Configs
// ---------------------------------------------------------------------------

/// A whole config file: a `[daemon]` table with `tick` and `extra` lines,
/// then one `[[listener]]` table per entry of `listeners` (each the body of
/// the table, e.g. from [`native`], [`legacy`], [`raw`], [`listener`]).
pub fn config(tick: &str, daemon_extra: &str, listeners: &[String]) -> String {
    let mut text = format!("[daemon]\ntick = \"{tick}\"\nlog_level = \"info\"\n{daemon_extra}\n");
    for l in listeners {
        text.push_str("\n[[listener]]\n");
        text.push_str(l);
        text.push('\n');
    }
    text
}

/// The body of a native listener table on 127.0.0.1, port 0.
pub fn native(name: &str, extra: &str) -> String {
    listener(name, "native", "127.0.0.1:0", extra)
}

/// The body of a legacy listener table on 127.0.0.1, port 0.
pub fn legacy(name: &str, extra: &str) -> String {
    listener(name, "legacy", "127.0.0.1:0", extra)
}

/// The body of a raw listener table on 127.0.0.1, port 0.
pub fn raw(name: &str, extra: &str) -> String {
    listener(name, "raw", "127.0.0.1:0", extra)
}

/// The body of a `[[listener]]` table at `address`; `extra` holds more keys
/// and may end with a `[listener.tcp]` table.
pub fn listener(name: &str, protocol: &str, address: impl std::fmt::Display, extra: &str) -> String {
    format!("name = \"{name}\"\naddress = \"{address}\"\nprotocol = \"{protocol}\"\n{extra}")
}

// ---------------------------------------------------------------------------
// The CLI
// ---------------------------------------------------------------------------

/// Runs the daemon binary with `args` to completion (for `--check-config`,
/// `--version`), failing the test if it does not exit within [`DEADLINE`].
pub fn run_cli(args: &[&str]) -> Output {
    run_to_end(daemon_bin(), args)
}

/// Runs the `heartbeat` agent with `args` to completion (`status`, `check`,
/// `watch` with an end), failing the test if it does not exit within
/// [`DEADLINE`].
pub fn run_agent(args: &[&str]) -> Output {
    run_to_end(&crate::bin("heartbeat"), args)
}

/// Runs `program args…` with stdin closed to completion, failing the test
/// with its output if it does not exit within [`DEADLINE`].
fn run_to_end(program: &Path, args: &[&str]) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {} {args:?}: {e}", program.display()));
    let deadline = Instant::now() + DEADLINE;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let out = child.wait_with_output().expect("collecting output of a killed child");
                panic!(
                    "{} {args:?} did not exit within {DEADLINE:?}\nstdout: {}\nstderr: {}",
                    program.display(),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Ok(None) => thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("waiting for {} {args:?}: {e}", program.display()),
        }
    }
    child.wait_with_output().expect("collecting the child's output")
}

/// Kills a child that is still running (SIGKILL ends a stopped one too)
/// and reaps it, so no test leaves a process or a zombie behind.
pub fn reap(child: &mut Child) {
    if matches!(child.try_wait(), Ok(None)) {
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// Sends `signal` to `pid`, a child of ours that is not reaped yet.
pub(crate) fn kill(pid: i32, signal: i32, what: &str) {
    // SAFETY: kill(2) with the pid of our own child, which the callers do
    // not reap before their drop, so the pid cannot name another process.
    if unsafe { libc::kill(pid, signal) } != 0 {
        panic!("kill({pid}, {signal}) of {what}: {}", io::Error::last_os_error());
    }
}

// ---------------------------------------------------------------------------
// The daemon
// ---------------------------------------------------------------------------

/// A running `heartbeatd --config <temp file>` whose stderr lines are
/// followed; killed on drop.
pub struct Daemon {
    child: Mutex<Child>,
    pid: i32,
    /// The directory of its config file.
    pub dir: TempDir,
    /// Its config file.
    pub config_path: PathBuf,
    log: Follower,
    exit: Mutex<Option<ExitStatus>>,
}

impl Daemon {
    /// Writes `config_text` to a fresh temp dir and starts the daemon on it.
    pub fn start(config_text: &str) -> Daemon {
        let dir = TempDir::new("daemon");
        let config_path = dir.write("heartbeatd.toml", config_text);
        Daemon::start_in(dir, config_path)
    }

    /// Starts the daemon on a config file already written in `dir`.
    pub fn start_in(dir: TempDir, config_path: PathBuf) -> Daemon {
        Daemon::start_with(dir, config_path, |_| {})
    }

    /// Like [`Daemon::start_in`], letting `adjust` change the command first
    /// (environment, resource limits, a network namespace).
    pub fn start_with(dir: TempDir, config_path: PathBuf, adjust: impl FnOnce(&mut Command)) -> Daemon {
        let bin = daemon_bin();
        let mut command = Command::new(bin);
        adjust(&mut command);
        let mut child = command
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", bin.display()));
        let stderr = child.stderr.take().expect("the child's stderr is piped");
        let log = Follower::start("heartbeatd", stderr);
        let pid = i32::try_from(child.id()).expect("pid fits i32");
        Daemon { child: Mutex::new(child), pid, dir, config_path, log, exit: Mutex::new(None) }
    }

    /// The whole log received so far.
    pub fn log_text(&self) -> String {
        self.log.text()
    }

    /// Every line received so far.
    pub fn lines(&self) -> Vec<Line> {
        self.log.lines()
    }

    /// Every line received so far that matches `pred`.
    pub fn find_all(&self, pred: impl Pred) -> Vec<Line> {
        self.lines().into_iter().filter(|l| pred.test(l)).collect()
    }

    /// True if some line received so far contains `part`.
    pub fn saw(&self, part: &str) -> bool {
        self.find(part).is_some()
    }

    /// The first line received so far that matches `pred`.
    pub fn find(&self, pred: impl Pred) -> Option<Line> {
        self.lines().into_iter().find(|l| pred.test(l))
    }

    /// Waits until a line (anywhere in the log) matches `pred`; fails the
    /// test with the whole log if none does within `timeout`.
    pub fn wait_for(&self, pred: impl Pred, timeout: Duration) -> Line {
        self.wait_from(0, pred, timeout)
    }

    /// Like [`Daemon::wait_for`], with the default [`DEADLINE`].
    pub fn wait(&self, pred: impl Pred) -> Line {
        self.wait_from(0, pred, DEADLINE)
    }

    /// Waits until a line at index `start` or later matches `pred`.
    pub fn wait_from(&self, start: usize, pred: impl Pred, timeout: Duration) -> Line {
        let began = Instant::now();
        match self.poll_from(start, &pred, timeout) {
            Some(line) => line,
            None => {
                let why = if self.log.closed() { "the daemon's stderr closed (it exited)" } else { "timed out" };
                panic!(
                    "{why} after {:?} waiting for {} (from line {start})\n--- daemon log ---\n{}--- end of log ---",
                    began.elapsed(),
                    pred.describe(),
                    self.log.text()
                );
            }
        }
    }

    /// Like [`Daemon::wait_from`], but returns `None` instead of failing
    /// when no line matches within `timeout` (or the daemon's stderr closed).
    pub fn poll_from(&self, start: usize, pred: &impl Pred, timeout: Duration) -> Option<Line> {
        self.log.poll_from(start, pred, timeout)
    }

    /// The next line matching `pred` after the last one this returned
    /// (lines are consumed in order), within `timeout`, or `None`.
    pub fn poll_next(&self, pred: &impl Pred, timeout: Duration) -> Option<Line> {
        self.log.next(pred, timeout)
    }

    /// Like [`Daemon::poll_next`], failing the test with the log if no line
    /// matches.
    pub fn wait_next(&self, pred: impl Pred, timeout: Duration) -> Line {
        self.poll_next(&pred, timeout).unwrap_or_else(|| {
            panic!(
                "no {} after the last match within {timeout:?}\n--- daemon log ---\n{}--- end of log ---",
                pred.describe(),
                self.log.text()
            )
        })
    }

    /// Watches the log for `duration` and fails the test if a line at index
    /// `start` or later matches `pred`. (A negative check can only be made
    /// by watching for a while.)
    pub fn assert_absent_from(&self, start: usize, pred: impl Pred, duration: Duration) {
        if let Some(line) = self.log.poll_from(start, &pred, duration) {
            panic!(
                "unexpected {}: {}\n--- daemon log ---\n{}--- end of log ---",
                pred.describe(),
                line.text,
                self.log.text()
            );
        }
    }

    /// Fails the test if any line so far matches `pred`.
    pub fn assert_none(&self, pred: impl Pred) {
        self.assert_absent_from(0, pred, Duration::ZERO);
    }

    /// Number of lines received so far (an index for [`Daemon::wait_from`]).
    pub fn mark(&self) -> usize {
        self.log.mark()
    }

    /// The address a listener is bound to, from its `listening` line.
    pub fn addr(&self, listener: &str) -> SocketAddr {
        let line = self.wait(ev("listening").kv("listener", listener));
        let address = line.field("address");
        address.parse().unwrap_or_else(|e| panic!("`address={address}` is not a socket address ({e}): {line}"))
    }

    /// The daemon's pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`) to the daemon.
    pub fn signal(&self, signal: i32) {
        kill(self.pid, signal, "the daemon");
    }

    /// Waits for the daemon to exit; fails the test with the log if it does
    /// not within `timeout`.
    pub fn wait_exit(&self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = *self.exit.lock().unwrap_or_else(|e| e.into_inner()) {
                return status;
            }
            let polled =
                self.child.lock().unwrap_or_else(|e| e.into_inner()).try_wait().expect("polling the daemon process");
            if let Some(status) = polled {
                *self.exit.lock().unwrap_or_else(|e| e.into_inner()) = Some(status);
                return status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "the daemon did not exit within {timeout:?}\n--- daemon log ---\n{}--- end of log ---",
                    self.log_text()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        reap(&mut self.child.lock().unwrap_or_else(|e| e.into_inner()));
        if thread::panicking() {
            // The pipe closes with the process; take what is left of it.
            self.log.wait_closed(Instant::now() + Duration::from_secs(1));
            eprintln!(
                "--- daemon log (test failed; config {}) ---\n{}--- end of log ---",
                self.config_path.display(),
                self.log.text()
            );
        }
    }
}
