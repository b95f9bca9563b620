//! Child processes other than the daemon: the `heartbeat` agent, helper
//! clients re-executed from the test binary.
//!
//! Invariant: a [`Proc`] is killed and reaped on drop, on every path; until
//! then its pid names our own child.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use crate::daemon::{kill, reap};
use crate::log::{Follower, Line, Pred};

/// CPU time a process has used (user + system) in clock ticks
/// (`_SC_CLK_TCK`, 100 per second on Linux), from `/proc/PID/stat`.
pub fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("reading /proc/PID/stat");
    let after_name = stat.rsplit_once(')').expect("stat has a command name").1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5); after the name,
    // the 12th and 13th.
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

/// Makes `command`'s child start with `RLIMIT_NOFILE` at `limit` (soft and
/// hard), for tests of what the daemon does at its fd limit.
pub fn limit_open_files(command: &mut Command, limit: u64) {
    // SAFETY: setrlimit is async-signal-safe; it runs in the child between
    // fork and exec and touches nothing else.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit { rlim_cur: limit, rlim_max: limit };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

/// Which output of a [`Proc`] is followed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Stdout is followed; stderr goes to the test's.
    Stdout,
    /// Stderr is followed; stdout is discarded.
    Stderr,
}

/// A child process whose output lines are followed (each stamped with the
/// instant it was read) and which is killed on drop.
pub struct Proc {
    /// What the process is, in failure messages.
    pub name: String,
    child: Mutex<Child>,
    /// Its pid.
    pub pid: i32,
    output: Follower,
}

impl Proc {
    /// Spawns `command` with stdin closed, following `output`.
    pub fn spawn(name: &str, mut command: Command, output: Output) -> Proc {
        command.stdin(Stdio::null());
        match output {
            Output::Stdout => command.stdout(Stdio::piped()).stderr(Stdio::inherit()),
            Output::Stderr => command.stdout(Stdio::null()).stderr(Stdio::piped()),
        };
        let mut child = command.spawn().unwrap_or_else(|e| panic!("spawning {name} ({command:?}): {e}"));
        let output = match output {
            Output::Stdout => Follower::start(name, child.stdout.take().expect("stdout is piped")),
            Output::Stderr => Follower::start(name, child.stderr.take().expect("stderr is piped")),
        };
        let pid = i32::try_from(child.id()).expect("pid fits i32");
        Proc { name: name.to_string(), child: Mutex::new(child), pid, output }
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<Line> {
        self.output.lines()
    }

    /// Number of lines so far (an index for [`Proc::wait_from`]).
    pub fn mark(&self) -> usize {
        self.output.mark()
    }

    /// The first line at index `start` or later matching `pred` within
    /// `timeout`, or `None`.
    pub fn poll_from(&self, start: usize, pred: &impl Pred, timeout: Duration) -> Option<Line> {
        self.output.poll_from(start, pred, timeout)
    }

    /// Like [`Proc::poll_from`], failing the test with the output if no
    /// line matches.
    pub fn wait_from(&self, start: usize, pred: impl Pred, timeout: Duration) -> Line {
        self.poll_from(start, &pred, timeout)
            .unwrap_or_else(|| self.fail(&pred, &format!("from line {start}"), timeout))
    }

    /// The next line matching `pred` after the last one this returned
    /// (lines are consumed in order), within `timeout`, or `None`.
    pub fn poll_next(&self, pred: &impl Pred, timeout: Duration) -> Option<Line> {
        self.output.next(pred, timeout)
    }

    /// Like [`Proc::poll_next`], failing the test with the output if no
    /// line matches.
    pub fn wait_next(&self, pred: impl Pred, timeout: Duration) -> Line {
        self.poll_next(&pred, timeout).unwrap_or_else(|| self.fail(&pred, "after the last match", timeout))
    }

    fn fail(&self, pred: &impl Pred, from: &str, timeout: Duration) -> ! {
        panic!(
            "{} ({}): no {} {from} within {timeout:?}\n--- output ---\n{}--- end ---",
            self.name,
            self.pid,
            pred.describe(),
            self.text()
        )
    }

    /// True if some line so far (matched or not) contains `part`.
    pub fn saw(&self, part: &str) -> bool {
        self.lines().iter().any(|l| l.text.contains(part))
    }

    /// The whole output so far.
    pub fn text(&self) -> String {
        self.output.text()
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: i32) {
        kill(self.pid, signal, &self.name);
    }

    /// True while the process has not exited.
    pub fn running(&self) -> bool {
        matches!(self.child.lock().unwrap_or_else(|e| e.into_inner()).try_wait(), Ok(None))
    }

    /// Waits for the process to exit (its output closes first); fails the
    /// test with the output if it does not within `timeout`.
    pub fn wait_exit(&self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        self.output.wait_closed(deadline);
        loop {
            if let Some(status) = self.child.lock().unwrap_or_else(|e| e.into_inner()).try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() >= deadline {
                panic!("{} did not exit within {timeout:?}\n--- output ---\n{}--- end ---", self.name, self.text());
            }
            // The output is closed, so the process is exiting: reaping it is
            // a matter of the kernel's bookkeeping, not of the test's timing.
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the process now (if it still runs) and reaps it.
    pub fn kill(&self) {
        reap(&mut self.child.lock().unwrap_or_else(|e| e.into_inner()));
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if thread::panicking() {
            eprintln!("--- output of {} (test failed) ---\n{}--- end ---", self.name, self.text());
        }
    }
}
