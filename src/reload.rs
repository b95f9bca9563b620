//! The reload handshake behind `systemctl reload`: the daemon writes the
//! outcome of each SIGHUP to `$RUNTIME_DIRECTORY/reload`, and
//! `heartbeatd --reload PID` (the unit's `ExecReload=`) sends SIGHUP, waits
//! for an outcome of a reload begun after it, and exits non-zero with the
//! error when the reload failed, whole or in part.
//!
//! Why a file: systemd 252 has no `Type=notify-reload`, and `sd_notify`
//! cannot carry a failure back to `systemctl reload`; a plain `kill -HUP`
//! returns before the daemon has read anything. The runtime directory is
//! private to the unit (the dynamic user's), exists whenever the service
//! runs and needs no listener, so it works with or without `[http]`.
//!
//! Invariants:
//! - the answer file is replaced atomically (write, then rename): a reader
//!   sees a whole old answer or a whole new one;
//! - each answer carries the `CLOCK_MONOTONIC` microsecond at which the
//!   reload began reading the config; the command accepts only an answer
//!   that began at or after the moment it sent SIGHUP, so it never reports
//!   an earlier reload's outcome as its own;
//! - the command ends within [`WAIT`], at once if the daemon exits first;
//! - writing the answer never stops the daemon: a failure is a warning.

use std::fs;
use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use log::warn;

use crate::event::Logfmt;
use crate::systemd;

/// The answer file's name inside `$RUNTIME_DIRECTORY`.
const ANSWER: &str = "reload";

/// How long the command waits for the daemon's answer; below the 90 s
/// systemd allows an `ExecReload=` by default.
pub const WAIT: Duration = Duration::from_secs(30);

/// How often the command looks at the answer file.
const POLL: Duration = Duration::from_millis(20);

/// The answer file: the first directory of `$RUNTIME_DIRECTORY` (systemd
/// sets it for every `Exec*=` of a unit with `RuntimeDirectory=`).
pub fn answer_path() -> Option<PathBuf> {
    let dirs = std::env::var_os("RUNTIME_DIRECTORY")?;
    let first = dirs.to_str().map_or_else(|| PathBuf::from(&dirs), |d| PathBuf::from(d.split(':').next().unwrap_or(d)));
    (!first.as_os_str().is_empty()).then(|| first.join(ANSWER))
}

/// Records the outcome of the reload that began at `started_usec`
/// (`CLOCK_MONOTONIC`): `Ok` or the error the operator should read. A
/// no-op without a runtime directory.
pub fn record(started_usec: u64, outcome: Result<(), &str>) {
    let Some(path) = answer_path() else { return };
    let text = match outcome {
        Ok(()) => format!("{started_usec} ok\n"),
        Err(e) => format!("{started_usec} failed {}\n", e.replace('\n', " ")),
    };
    let tmp = path.with_extension("tmp");
    if let Err(e) = fs::write(&tmp, text).and_then(|()| fs::rename(&tmp, &path)) {
        warn!("reload-answer-failed path={} error={}", Logfmt(&path.display().to_string()), Logfmt(&e.to_string()));
    }
}

/// One parsed answer: when its reload began, and its error if it failed.
fn parse(text: &str) -> Option<(u64, Result<(), String>)> {
    let (usec, rest) = text.trim_end().split_once(' ')?;
    let usec = usec.parse().ok()?;
    match rest.split_once(' ') {
        None if rest == "ok" => Some((usec, Ok(()))),
        Some(("failed", e)) => Some((usec, Err(e.to_owned()))),
        _ => None,
    }
}

/// Sends SIGHUP to `pid` and waits up to [`WAIT`] for the outcome of a
/// reload that began after it. `Err` holds what to tell the operator, a
/// sentence such as "reload failed in part: listener extra: …".
pub fn request(pid: u32) -> Result<(), String> {
    let path = answer_path().ok_or_else(|| {
        "reload failed: RUNTIME_DIRECTORY is not set: run `heartbeatd --reload` as the unit's ExecReload= \
         (RuntimeDirectory=heartbeatd), or send SIGHUP and read the log"
            .to_owned()
    })?;
    let sent = systemd::monotonic_usec();
    systemd::send_sighup(pid).map_err(|e| format!("reload failed: cannot signal heartbeatd (pid {pid}): {e}"))?;
    let deadline = Instant::now() + WAIT;
    loop {
        match fs::read_to_string(&path) {
            Ok(text) => match parse(&text) {
                Some((began, outcome)) if began >= sent => return outcome,
                _ => {}
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("reload failed: cannot read {}: {e}", path.display())),
        }
        if !is_running(pid) {
            return Err(format!("reload failed: heartbeatd (pid {pid}) exited before it answered: see its log"));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "reload failed: no answer from heartbeatd (pid {pid}) within {} s in {}: see its log",
                WAIT.as_secs(),
                path.display()
            ));
        }
        std::thread::sleep(POLL);
    }
}

/// True while `pid` is a live process (not gone, not a zombie), read from
/// `/proc/PID/stat`, so a daemon that dies mid-reload fails the command at
/// once instead of after [`WAIT`].
fn is_running(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the parenthesised command name, which may itself
    // hold spaces and parentheses: read it after the last ')'.
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}

#[cfg(test)]
mod tests {
    use super::{is_running, parse};

    #[test]
    fn this_process_is_running_and_a_reaped_one_is_not() {
        assert!(is_running(std::process::id()));
        let mut child = std::process::Command::new("true").spawn().expect("spawn true");
        let pid = child.id();
        child.wait().expect("reap true");
        assert!(!is_running(pid));
    }

    #[test]
    fn answers_parse_back() {
        assert_eq!(parse("12 ok\n"), Some((12, Ok(()))));
        assert_eq!(
            parse("34 failed listener extra: binding: in use\n"),
            Some((34, Err("listener extra: binding: in use".to_owned())))
        );
        assert_eq!(parse("34 maybe\n"), None);
        assert_eq!(parse(""), None);
    }
}
