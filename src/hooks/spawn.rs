//! One hook run: the child process, its three pipes, its deadline.
//!
//! Invariants:
//! - the child is started by `std::process::Command` with nothing that
//!   forces a fork of the daemon (no `pre_exec`, no `uid`/`gid`, no working
//!   directory, `PATH` untouched, an absolute program): on glibc that is
//!   `posix_spawn` (`process_group(0)` maps to `POSIX_SPAWN_SETPGROUP`), so
//!   no copy of the daemon's page tables is made however big its table of
//!   clients;
//! - the child leads its own process group (its pid is the group id), and
//!   the group is signalled only while the child is not yet reaped, so a
//!   group id can never name a stranger's group;
//! - every pipe is non-blocking and registered with the loop's poll; a
//!   child that never reads its stdin or floods its output cannot stall the
//!   loop, and at most [`MAX_LOGGED`] bytes of its output are logged;
//! - once the child is reaped its pipes are read one last time and closed:
//!   a grandchild holding them open does not keep the run alive.

use std::io::{self, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use log::{info, warn};
use mio::unix::pipe::{Receiver, Sender};
use mio::{Interest, Registry, Token};

use crate::event::Logfmt;

/// Bytes of a run's output (stdout and stderr together) written to the
/// log; the rest is read and counted, not logged.
pub const MAX_LOGGED: usize = 64 * 1024;
/// Longest line logged as one; a longer one is cut into pieces this long.
const MAX_LINE: usize = 4096;
/// How long a hook has between SIGTERM at its timeout and SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(2);
/// Variables of the daemon's environment a hook must not inherit: they
/// address the daemon's own service manager and sockets.
const SCRUBBED: [&str; 7] =
    ["NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "WATCHDOG_USEC", "WATCHDOG_PID", "INVOCATION_ID"];

/// Which pipe a poll token names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pipe {
    /// The child's stdin (the event's JSON).
    Stdin,
    /// The child's stdout.
    Stdout,
    /// The child's stderr.
    Stderr,
}

impl Pipe {
    /// The pipe's offset within a run's three tokens.
    pub fn offset(self) -> usize {
        match self {
            Pipe::Stdin => 0,
            Pipe::Stdout => 1,
            Pipe::Stderr => 2,
        }
    }

    /// The pipe at `offset`.
    pub fn at(offset: usize) -> Option<Pipe> {
        [Pipe::Stdin, Pipe::Stdout, Pipe::Stderr].get(offset).copied()
    }
}

/// What a run is told: argv, environment, stdin.
pub struct Spec<'a> {
    /// Program and arguments.
    pub command: &'a [String],
    /// `HEARTBEAT_*` variables.
    pub env: Vec<(&'static str, String)>,
    /// The JSON object written to stdin, newline-terminated.
    pub stdin: Vec<u8>,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Exit status 0.
    Ok,
    /// A non-zero exit status.
    Failed(i32),
    /// Killed by a signal it was not sent by its timeout.
    Signaled(i32),
    /// Its timeout passed; it was sent SIGTERM (and SIGKILL after
    /// [`KILL_GRACE`]).
    TimedOut,
}

impl Outcome {
    /// The `outcome` label of `heartbeatd_hook_runs_total`.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed(_) => "failed",
            Outcome::Signaled(_) => "signaled",
            Outcome::TimedOut => "timeout",
        }
    }
}

/// A running hook.
pub struct Run {
    /// The queue key it runs for (a client id or a mass-offline key).
    pub client: Rc<str>,
    /// The hook's name, tagging its output.
    pub hook: Rc<str>,
    child: Child,
    started: Instant,
    /// When the next escalation is due: SIGTERM at the timeout, then
    /// SIGKILL [`KILL_GRACE`] later.
    deadline: Instant,
    /// SIGTERM was sent (the timeout passed).
    terminated: bool,
    stdin: Option<Sender>,
    input: Vec<u8>,
    written: usize,
    stdout: Option<Receiver>,
    stderr: Option<Receiver>,
    /// A partial line of each stream.
    partial: [Vec<u8>; 2],
    /// Output bytes logged so far; past [`MAX_LOGGED`] the rest is counted.
    logged: usize,
    discarded: usize,
}

impl Run {
    /// Starts the child in its own process group with the event on stdin
    /// and its output piped to the loop; registers the pipes at
    /// `token_base + Pipe::offset`.
    pub fn start(
        spec: Spec<'_>,
        client: Rc<str>,
        hook: Rc<str>,
        timeout: Duration,
        registry: &Registry,
        token_base: usize,
        now: Instant,
    ) -> io::Result<Run> {
        let (program, args) = spec.command.split_first().ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        let mut command = Command::new(program);
        command.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
        for name in SCRUBBED {
            command.env_remove(name);
        }
        command.envs(spec.env);
        let mut child = command.spawn()?;
        let pipes = (child.stdin.take(), child.stdout.take(), child.stderr.take());
        let mut run = Run {
            client,
            hook,
            child,
            started: now,
            deadline: now + timeout,
            terminated: false,
            stdin: pipes.0.map(Sender::from),
            input: spec.stdin,
            written: 0,
            stdout: pipes.1.map(Receiver::from),
            stderr: pipes.2.map(Receiver::from),
            partial: [Vec::new(), Vec::new()],
            logged: 0,
            discarded: 0,
        };
        if let Err(e) = run.register(registry, token_base) {
            // The child runs already: it must not be left unreaped.
            run.signal(libc::SIGKILL);
            let _ = run.child.wait();
            return Err(e);
        }
        run.write_stdin(registry);
        Ok(run)
    }

    fn register(&mut self, registry: &Registry, base: usize) -> io::Result<()> {
        if let Some(stdin) = &mut self.stdin {
            stdin.set_nonblocking(true)?;
            registry.register(stdin, Token(base + Pipe::Stdin.offset()), Interest::WRITABLE)?;
        }
        for (pipe, receiver) in [(Pipe::Stdout, &mut self.stdout), (Pipe::Stderr, &mut self.stderr)] {
            if let Some(r) = receiver {
                r.set_nonblocking(true)?;
                registry.register(r, Token(base + pipe.offset()), Interest::READABLE)?;
            }
        }
        Ok(())
    }

    /// The child's pid (its process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// When [`Run::on_deadline`] is due.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Handles a ready pipe.
    pub fn on_pipe(&mut self, registry: &Registry, pipe: Pipe) {
        match pipe {
            Pipe::Stdin => self.write_stdin(registry),
            Pipe::Stdout | Pipe::Stderr => self.read_output(registry, pipe),
        }
    }

    /// Writes what the stdin pipe takes; closes it once all is written, or
    /// when the child closed its end (a hook need not read its stdin).
    fn write_stdin(&mut self, registry: &Registry) {
        let Some(stdin) = &mut self.stdin else { return };
        while self.written < self.input.len() {
            match stdin.write(&self.input[self.written..]) {
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        if let Some(mut stdin) = self.stdin.take() {
            let _ = registry.deregister(&mut stdin);
        }
    }

    /// Reads a stream until it would block, logging whole lines.
    fn read_output(&mut self, registry: &Registry, pipe: Pipe) {
        let mut buf = [0u8; 4096];
        loop {
            let receiver = match pipe {
                Pipe::Stdout => &mut self.stdout,
                _ => &mut self.stderr,
            };
            let Some(r) = receiver else { return };
            match r.read(&mut buf) {
                Ok(0) => {
                    if let Some(mut r) = receiver.take() {
                        let _ = registry.deregister(&mut r);
                    }
                    self.flush_partial(pipe);
                    return;
                }
                Ok(n) => self.take_output(pipe, &buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    if let Some(mut r) = receiver.take() {
                        let _ = registry.deregister(&mut r);
                    }
                    return;
                }
            }
        }
    }

    fn take_output(&mut self, pipe: Pipe, mut bytes: &[u8]) {
        let index = usize::from(pipe == Pipe::Stderr);
        while let Some(at) = bytes.iter().position(|&b| b == b'\n') {
            self.partial[index].extend_from_slice(&bytes[..at]);
            bytes = &bytes[at + 1..];
            let line = std::mem::take(&mut self.partial[index]);
            self.log_line(pipe, &line);
        }
        self.partial[index].extend_from_slice(bytes);
        while self.partial[index].len() >= MAX_LINE {
            let rest = self.partial[index].split_off(MAX_LINE);
            let line = std::mem::replace(&mut self.partial[index], rest);
            self.log_line(pipe, &line);
        }
    }

    fn flush_partial(&mut self, pipe: Pipe) {
        let index = usize::from(pipe == Pipe::Stderr);
        if !self.partial[index].is_empty() {
            let line = std::mem::take(&mut self.partial[index]);
            self.log_line(pipe, &line);
        }
    }

    fn log_line(&mut self, pipe: Pipe, line: &[u8]) {
        if self.logged >= MAX_LOGGED {
            self.discarded += line.len() + 1;
            return;
        }
        self.logged += line.len() + 1;
        let stream = if pipe == Pipe::Stderr { "stderr" } else { "stdout" };
        info!(
            "hook-output hook={} client={} pid={} stream={} line={}",
            Logfmt(&self.hook),
            Logfmt(&self.client),
            self.pid(),
            stream,
            Logfmt(&String::from_utf8_lossy(line))
        );
    }

    /// Escalates at the deadline: SIGTERM to the group at the timeout,
    /// SIGKILL [`KILL_GRACE`] later.
    pub fn on_deadline(&mut self, now: Instant) {
        if now < self.deadline {
            return;
        }
        if self.terminated {
            self.signal(libc::SIGKILL);
            // Nothing more to escalate to; the reap follows the SIGCHLD.
            self.deadline = now + KILL_GRACE;
            return;
        }
        warn!(
            "hook-timeout hook={} client={} pid={} timeout_ms={} action=SIGTERM",
            Logfmt(&self.hook),
            Logfmt(&self.client),
            self.pid(),
            now.saturating_duration_since(self.started).as_millis()
        );
        self.terminated = true;
        self.signal(libc::SIGTERM);
        self.deadline = now + KILL_GRACE;
    }

    /// Signals the child's process group (the child and whatever it
    /// started), while the child is unreaped.
    fn signal(&self, signal: libc::c_int) {
        if let Err(e) = crate::systemd::signal_group(self.pid(), signal) {
            // ESRCH: the group is already gone.
            if e.raw_os_error() != Some(libc::ESRCH) {
                warn!(
                    "hook-signal-failed hook={} pid={} error={}",
                    Logfmt(&self.hook),
                    self.pid(),
                    Logfmt(&e.to_string())
                );
            }
        }
    }

    /// Reaps the child if it exited; then drains and closes the pipes and
    /// returns how it ended and how long it ran. A run that timed out gets
    /// its group killed before the child is reaped: what it left behind
    /// dies with it.
    pub fn try_finish(&mut self, registry: &Registry, now: Instant) -> Option<(Outcome, Option<ExitStatus>, Duration)> {
        if self.terminated && is_zombie(self.pid()) {
            // Exited but unreaped, so the group id is still ours: what the
            // child left behind gets SIGKILL now, whatever it did with the
            // SIGTERM.
            self.signal(libc::SIGKILL);
        }
        let status = match self.child.try_wait() {
            Ok(Some(status)) => status,
            Ok(None) => return None,
            // ECHILD: nothing left to reap (cannot happen for our own
            // child unless SIGCHLD is ignored); treat it as gone.
            Err(_) => return Some((Outcome::Failed(-1), None, now.saturating_duration_since(self.started))),
        };
        self.close_pipes(registry);
        let outcome = if self.terminated {
            Outcome::TimedOut
        } else {
            match (status.code(), std::os::unix::process::ExitStatusExt::signal(&status)) {
                (Some(0), _) => Outcome::Ok,
                (Some(code), _) => Outcome::Failed(code),
                (None, Some(signal)) => Outcome::Signaled(signal),
                (None, None) => Outcome::Failed(-1),
            }
        };
        Some((outcome, Some(status), now.saturating_duration_since(self.started)))
    }

    /// Output bytes read but not logged (past [`MAX_LOGGED`]).
    pub fn discarded(&self) -> usize {
        self.discarded
    }

    /// Closes the run's pipes after a final read.
    fn close_pipes(&mut self, registry: &Registry) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = registry.deregister(&mut stdin);
        }
        self.read_output(registry, Pipe::Stdout);
        self.read_output(registry, Pipe::Stderr);
        self.flush_partial(Pipe::Stdout);
        self.flush_partial(Pipe::Stderr);
        for receiver in [&mut self.stdout, &mut self.stderr] {
            if let Some(mut r) = receiver.take() {
                let _ = registry.deregister(&mut r);
            }
        }
    }
}

/// True when `pid` has exited and waits to be reaped (state `Z` in
/// `/proc/PID/stat`, the field after the command's closing parenthesis).
fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}
