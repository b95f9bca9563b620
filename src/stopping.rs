//! Telling a stop from a restart (issue 11, docs/RESTARTS.md): the unit's
//! `ExecStop=heartbeatd --stopping $MAINPID` runs before systemd sends
//! SIGTERM, asks systemd which job is stopping the service, and leaves a
//! marker in `$RUNTIME_DIRECTORY` when it is a restart that keeps the
//! connections. At SIGTERM the daemon reads the marker ([`is_restart`]):
//! with it, it exits at once and leaves every connection in the fd store
//! for the next process; without it, it stops as always (BYE `shutdown`,
//! an offline event per client).
//!
//! Why so: a SIGTERM looks the same for `systemctl stop` and `systemctl
//! restart`, and systemd 252 tells the process nothing else. The job
//! stopping it does: `systemctl list-jobs` shows `restart` (also for
//! `try-restart`, `reload-or-restart` and the `deb-systemd-invoke restart`
//! of a package upgrade) or `stop`. A crash (`kill -9`) and a watchdog
//! abort send no SIGTERM at all; they need no marker.
//!
//! Invariants:
//! - Anything unclear is a stop: no marker unless the job is a restart AND
//!   the store holds fds (`NFileDescriptorStore` ≥ 1, so the unit has a
//!   `FileDescriptorStoreMax=` and the daemon's state is in it). A stop
//!   never leaves clients connected to nobody.
//! - The marker names the main PID: a stale one (a restart that failed
//!   before SIGTERM) is ignored by any other process, and removed.

use std::path::PathBuf;
use std::process::Command;

/// The marker's name inside `$RUNTIME_DIRECTORY`.
const MARKER: &str = "restart";

/// The marker path: the first directory of `$RUNTIME_DIRECTORY`.
fn marker_path() -> Option<PathBuf> {
    crate::reload::answer_path().map(|answer| answer.with_file_name(MARKER))
}

/// The unit this process runs in, from its cgroup (`…/heartbeatd.service`).
fn own_unit() -> Option<String> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    path.rsplit('/').find(|part| part.ends_with(".service")).map(str::to_owned)
}

/// The type of the job running on `unit`, from `systemctl list-jobs`
/// (`JOB UNIT TYPE STATE`), if any.
fn job_type(unit: &str) -> Result<Option<String>, String> {
    let out = Command::new("systemctl")
        .args(["list-jobs", "--no-legend", "--plain", "--full", unit])
        .output()
        .map_err(|e| format!("systemctl list-jobs: {e}"))?;
    if !out.status.success() {
        return Err(format!("systemctl list-jobs: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(parse_job_type(&String::from_utf8_lossy(&out.stdout), unit))
}

/// The TYPE column of `unit`'s line in `systemctl list-jobs` output.
fn parse_job_type(text: &str, unit: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, name, kind) = (fields.next()?, fields.next()?, fields.next()?);
        (name == unit).then(|| kind.to_owned())
    })
}

/// How many fds the unit's store holds (`NFileDescriptorStore`).
fn stored_fds(unit: &str) -> Result<u64, String> {
    let out = Command::new("systemctl")
        .args(["show", "--property=NFileDescriptorStore", "--value", unit])
        .output()
        .map_err(|e| format!("systemctl show: {e}"))?;
    String::from_utf8_lossy(&out.stdout).trim().parse().map_err(|_| "NFileDescriptorStore unreadable".to_owned())
}

/// True for the job types that start the service again right after the
/// stop: the connections stay for the next process.
fn is_restart_job(kind: &str) -> bool {
    matches!(kind, "restart" | "try-restart" | "reload-or-restart" | "try-reload-or-restart")
}

/// `heartbeatd --stopping PID`, the unit's `ExecStop=`: decides whether
/// this stop is a restart and, when it is, writes the marker for `pid`.
/// Returns the line to print; every failure means "a stop".
pub fn prepare(pid: Option<u32>) -> String {
    let Some(pid) = pid.filter(|&p| p > 0) else {
        // ExecStop= also runs after the main process died ($MAINPID empty):
        // nothing to tell.
        return "heartbeatd: no main process; nothing to hand over".to_owned();
    };
    let Some(path) = marker_path() else {
        return "heartbeatd: no $RUNTIME_DIRECTORY: a stop".to_owned();
    };
    let _ = std::fs::remove_file(&path);
    let unit = own_unit().unwrap_or_else(|| "heartbeatd.service".to_owned());
    let kind = match job_type(&unit) {
        Ok(Some(kind)) => kind,
        Ok(None) => return format!("heartbeatd: no job on {unit}: a stop"),
        Err(e) => return format!("heartbeatd: {e}: a stop"),
    };
    if !is_restart_job(&kind) {
        return format!("heartbeatd: job {kind} on {unit}: a stop (BYE shutdown to every client)");
    }
    match stored_fds(&unit) {
        Ok(n) if n > 0 => match write_marker(&path, pid) {
            Ok(()) => format!("heartbeatd: job {kind} on {unit}: connections stay in the fd store ({n} fds)"),
            Err(e) => format!("heartbeatd: writing {}: {e}: a stop", path.display()),
        },
        Ok(_) => format!("heartbeatd: job {kind} on {unit}, but the fd store is empty: a stop"),
        Err(e) => format!("heartbeatd: {e}: a stop"),
    }
}

/// Writes the marker, readable by the daemon's (dynamic) user: the helper
/// runs as root (`ExecStop=+`), and the unit's `UMask=0077` would hide it.
fn write_marker(path: &std::path::Path, pid: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("{pid}\n"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
}

/// At SIGTERM: true when `heartbeatd --stopping` marked this stop as a
/// restart of this process. The marker is removed either way.
pub fn is_restart() -> bool {
    let Some(path) = marker_path() else { return false };
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let _ = std::fs::remove_file(&path);
    text.trim().parse::<u32>().is_ok_and(|pid| pid == std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_job_type_is_the_third_column_of_the_unit_line() {
        let text = "1203 heartbeatd.service restart running\n1204 other.service stop waiting\n";
        assert_eq!(parse_job_type(text, "heartbeatd.service").as_deref(), Some("restart"));
        assert_eq!(parse_job_type(text, "other.service").as_deref(), Some("stop"));
        assert_eq!(parse_job_type(text, "missing.service"), None);
        assert_eq!(parse_job_type("", "heartbeatd.service"), None);
    }

    #[test]
    fn only_jobs_that_start_again_keep_the_connections() {
        for kind in ["restart", "try-restart", "reload-or-restart"] {
            assert!(is_restart_job(kind), "{kind}");
        }
        for kind in ["stop", "start", "reload", "verify-active", ""] {
            assert!(!is_restart_job(kind), "{kind}");
        }
    }
}
