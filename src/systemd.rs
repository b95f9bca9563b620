//! systemd integration that needs no library: `sd_notify`, the watchdog
//! period, socket activation and journal detection.
//!
//! Everything here is a no-op outside systemd: without `NOTIFY_SOCKET` the
//! [`Notifier`] sends nothing, without `LISTEN_FDS` no socket is adopted,
//! without `WATCHDOG_USEC` there is no watchdog. Nothing here knows about
//! clients or the loop; the loop decides when to call it.
//!
//! Invariants:
//! - Notification failures never stop the daemon: they are logged once at
//!   debug level and dropped (systemd may be restarting).
//! - Adopted sockets are taken at most once per process: the `LISTEN_*`
//!   variables are removed after reading, as `sd_listen_fds(1)` does.

use std::env;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use log::debug;

/// The first fd systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// Sends state changes to the service manager (`sd_notify(3)`).
pub struct Notifier {
    target: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
}

impl Notifier {
    /// Connects to `$NOTIFY_SOCKET` when it is set (a path, or `@name` for
    /// an abstract socket); otherwise every call is a no-op.
    pub fn from_env() -> Notifier {
        let target = env::var_os("NOTIFY_SOCKET").and_then(|path| {
            let address =
                notify_address(path.as_encoded_bytes()).map_err(|e| debug!("notify-disabled error={e}")).ok()?;
            let socket = UnixDatagram::unbound().map_err(|e| debug!("notify-disabled error={e}")).ok()?;
            Some((socket, address))
        });
        Notifier { target }
    }

    /// True when a service manager listens.
    pub fn is_active(&self) -> bool {
        self.target.is_some()
    }

    /// Sends one notification, e.g. `READY=1\nSTATUS=...`.
    pub fn notify(&self, state: &str) {
        if let Some((socket, address)) = &self.target {
            if let Err(e) = socket.send_to_addr(state.as_bytes(), address) {
                debug!("notify-failed state={:?} error={}", state, e);
            }
        }
    }

    /// `READY=1` with a status line.
    pub fn ready(&self, status: &str) {
        self.notify(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    /// `RELOADING=1` with the monotonic timestamp systemd requires for
    /// `Type=notify-reload` and accepts for `Type=notify`.
    pub fn reloading(&self) {
        self.notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
    }

    /// `STOPPING=1` with a status line, so `systemctl status` stops
    /// showing the running counts at once.
    pub fn stopping(&self, status: &str) {
        self.notify(&format!("STOPPING=1\nSTATUS={}", one_line(status)));
    }

    /// `WATCHDOG=1`: the loop is alive.
    pub fn watchdog(&self) {
        self.notify("WATCHDOG=1");
    }

    /// `STATUS=` text shown by `systemctl status`.
    pub fn status(&self, status: &str) {
        self.notify(&format!("STATUS={}", one_line(status)));
    }
}

/// A notification field must stay on one line.
fn one_line(text: &str) -> String {
    text.replace('\n', " ")
}

fn notify_address(path: &[u8]) -> io::Result<std::os::unix::net::SocketAddr> {
    match path.split_first() {
        Some((b'@', name)) => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name)
        }
        Some((b'/', _)) => {
            use std::os::unix::ffi::OsStrExt;
            std::os::unix::net::SocketAddr::from_pathname(std::ffi::OsStr::from_bytes(path))
        }
        _ => Err(io::Error::new(io::ErrorKind::InvalidInput, "NOTIFY_SOCKET is neither a path nor @abstract")),
    }
}

/// The interval at which to send `WATCHDOG=1`: half of `$WATCHDOG_USEC`,
/// as `sd_watchdog_enabled(3)` recommends, when the watchdog is meant for
/// this process (`$WATCHDOG_PID` unset or ours).
pub fn watchdog_interval() -> Option<Duration> {
    if let Some(pid) = env::var_os("WATCHDOG_PID") {
        if pid.to_str()?.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    let usec: u64 = env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// `CLOCK_MONOTONIC` in microseconds, the clock systemd's `MONOTONIC_USEC`
/// refers to.
pub fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always
    // exists on Linux, so the call cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs * 1_000_000 + nanos / 1_000
}

/// Sends SIGHUP to `pid`: the reload request of `heartbeatd --reload`.
pub fn send_sighup(pid: u32) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    if pid <= 0 {
        // kill(0 or negative) would signal a whole process group.
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY: kill(2) with a positive pid and a valid signal number only
    // sends a signal; it touches no memory of ours.
    if unsafe { libc::kill(pid, libc::SIGHUP) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sends `signal` to the process group `pgid` (a hook's child and what it
/// started: `crate::hooks`).
pub fn signal_group(pgid: u32, signal: libc::c_int) -> io::Result<()> {
    let pgid = libc::pid_t::try_from(pgid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    if pgid <= 1 {
        // kill(-1) would signal every process we may signal.
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY: kill(2) with a negative pid (a group id above 1) and a signal
    // number only sends a signal; it touches no memory of ours.
    if unsafe { libc::kill(-pgid, signal) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A listening socket passed by the service manager.
#[derive(Debug)]
pub struct ActivatedSocket {
    /// The socket.
    pub fd: OwnedFd,
    /// Its `FileDescriptorName=`, when systemd named it (not the default
    /// `unknown` or the unit name).
    pub name: Option<String>,
    /// The address it is bound to.
    pub address: Option<SocketAddr>,
}

/// Takes the sockets passed by socket activation (`sd_listen_fds(3)`):
/// `$LISTEN_FDS` fds from fd 3 when `$LISTEN_PID` is this process. The
/// variables are removed so nothing adopts the fds twice.
pub fn take_listen_fds() -> Vec<ActivatedSocket> {
    let pid_ok =
        env::var("LISTEN_PID").ok().and_then(|p| p.parse::<u32>().ok()).is_some_and(|p| p == std::process::id());
    let count: RawFd = env::var("LISTEN_FDS").ok().and_then(|n| n.parse().ok()).unwrap_or(0);
    let names: Vec<String> =
        env::var("LISTEN_FDNAMES").map(|n| n.split(':').map(str::to_owned).collect()).unwrap_or_default();
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        env::remove_var(var);
    }
    if !pid_ok || count <= 0 {
        return Vec::new();
    }
    (0..count)
        .filter_map(|i| {
            let raw = LISTEN_FDS_START + i;
            // Only adopt fds that are open; a bogus LISTEN_FDS must not make
            // us own (and later close) a number that is not ours.
            // SAFETY: fcntl(F_GETFD) on any integer is harmless.
            if unsafe { libc::fcntl(raw, libc::F_GETFD) } < 0 {
                return None;
            }
            // SAFETY: systemd passed this fd to us and nothing else in the
            // process owns it; it is open (checked above).
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            set_cloexec(&fd);
            let name = names
                .get(usize::try_from(i).ok()?)
                .filter(|n| !n.is_empty() && n.as_str() != "unknown" && n.as_str() != "stored")
                .cloned();
            let address = socket2::SockRef::from(&fd).local_addr().ok().and_then(|a| a.as_socket());
            Some(ActivatedSocket { fd, name, address })
        })
        .collect()
}

fn set_cloexec(fd: &OwnedFd) {
    // SAFETY: fcntl on an fd we own; failure leaves the flag as it was,
    // which only matters if the daemon ever spawned a child (it does not).
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFD);
        if flags >= 0 {
            libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, flags | libc::FD_CLOEXEC);
        }
    }
}

/// True when stderr is connected to the journal: `$JOURNAL_STREAM` names
/// the device and inode of our stderr (`systemd.exec(5)`). A stderr that
/// was redirected elsewhere keeps plain text even under systemd.
pub fn stderr_is_journal() -> bool {
    let Some(value) = env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    // SAFETY: an all-zero `stat` is a valid value to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fd 2 may be closed, in which case fstat fails and we say no.
    if unsafe { libc::fstat(libc::STDERR_FILENO, &mut st) } != 0 {
        return false;
    }
    st.st_dev == dev && st.st_ino == ino
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifier_sends_to_a_path_socket() {
        let dir = env::temp_dir().join(format!("heartbeatd-notify-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let receiver = UnixDatagram::bind(&path).expect("bind");
        let address = notify_address(path.as_os_str().as_encoded_bytes()).expect("address");
        let notifier = Notifier { target: Some((UnixDatagram::unbound().expect("socket"), address)) };
        notifier.ready("serving 0 clients\nsecond line");
        let mut buf = [0u8; 256];
        let n = receiver.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=serving 0 clients second line");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn notify_address_rejects_relative_paths() {
        assert!(notify_address(b"relative/path").is_err());
        assert!(notify_address(b"").is_err());
        assert!(notify_address(b"@abstract-name").is_ok());
    }

    #[test]
    fn monotonic_usec_moves_forward() {
        let a = monotonic_usec();
        let b = monotonic_usec();
        assert!(a > 0 && b >= a);
    }
}
