//! The systemd side of the harness (`systemd_notify`, `systemd_e2e`): the
//! daemon with its log in a file (for `JOURNAL_STREAM`), socket activation,
//! and the receiving ends of `sd_notify` and of the journal's native
//! protocol, decoded from that protocol's description, not by the daemon's
//! code.
//!
//! Every wait here has a deadline and panics with what it waited for; no
//! helper sleeps and hopes.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::daemon::{config, listener, reap};
use crate::log::Line;
pub use crate::which;
use crate::{daemon_bin, mono_ns};

/// Environment variables through which systemd talks to a service. They are
/// removed from every daemon the tests start, so a test runner that itself
/// runs under systemd cannot leak its own into the daemon.
pub const SYSTEMD_ENV: [&str; 9] = [
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "JOURNAL_STREAM",
    "HEARTBEATD_JOURNAL_SOCKET",
    "INVOCATION_ID",
];

/// How often the polling waits below look again.
const POLL_EVERY: Duration = Duration::from_millis(10);

/// True under CI (`CI=true`), where a test that cannot run must fail
/// instead of skipping.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Reports that a test cannot run here: a failure under CI, a printed
/// `skipped:` line (and a pass) elsewhere. The caller returns afterwards.
pub fn skip(reason: &str) {
    if in_ci() {
        panic!("cannot run under CI=true: {reason}");
    }
    println!("skipped: {reason}");
}

/// True when the tests run as root (needed to boot a container).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Polls `probe` every 10 ms until it returns `Some`, or panics naming
/// `what` once `within` has passed.
pub fn wait_until<T>(what: &str, within: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {within:?} waiting for {what}");
        thread::sleep(POLL_EVERY);
    }
}

/// `CLOCK_MONOTONIC` in microseconds: the clock of `MONOTONIC_USEC=`.
pub fn monotonic_usec() -> u64 {
    mono_ns() / 1_000
}

// ---- the daemon -----------------------------------------------------------

/// A config with one native listener `main` on `address`, `interval` and
/// `timeout` as TOML duration strings, a 100 ms tick and a short shutdown
/// grace.
pub fn config_text(address: &str, interval: &str, timeout: &str) -> String {
    let body = format!("interval = \"{interval}\"\ntimeout = \"{timeout}\"");
    config("100ms", "shutdown_grace = \"1s\"", &[listener("main", "native", address, &body)])
}

/// `heartbeatd --config CONFIG` with every systemd variable removed.
pub fn daemon_command(config: &Path) -> Command {
    let mut cmd = Command::new(daemon_bin());
    cmd.arg("--config").arg(config);
    for var in SYSTEMD_ENV {
        cmd.env_remove(var);
    }
    cmd
}

/// Like [`daemon_command`], but through `sh`, which exports each variable
/// in `own_pid_vars` set to its own pid and then `exec`s the daemon (same
/// pid). This is how a test sets `LISTEN_PID` or `WATCHDOG_PID` to the
/// daemon's pid, which is known only inside the child, without calling the
/// non-async-signal-safe `setenv` between `fork` and `exec`.
pub fn daemon_command_with_own_pid(config: &Path, own_pid_vars: &[&str]) -> Command {
    let exports: String = own_pid_vars.iter().map(|v| format!("export {v}=$$; ")).collect();
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(format!("{exports}exec \"$0\" \"$@\"")).arg(daemon_bin()).arg("--config").arg(config);
    for var in SYSTEMD_ENV {
        cmd.env_remove(var);
    }
    cmd
}

/// Makes the child see `fd` as fd 3 (`SD_LISTEN_FDS_START`), open across
/// `exec`, as systemd passes an activated socket.
pub fn pass_as_fd3(cmd: &mut Command, fd: RawFd) {
    // SAFETY: the closure runs between fork and exec and calls only dup2 and
    // fcntl, which are async-signal-safe; `fd` stays open in the parent
    // until the spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            if fd != 3 && libc::dup2(fd, 3) < 0 {
                return Err(io::Error::last_os_error());
            }
            // dup2 clears FD_CLOEXEC on the copy, but not when fd is already
            // 3: clear it explicitly either way.
            let flags = libc::fcntl(3, libc::F_GETFD);
            if flags < 0 || libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A running `heartbeatd` whose stderr goes to a file (so that a
/// `JOURNAL_STREAM` can name its device and inode). Killed on drop if it is
/// still running, so no test leaves a daemon behind, even on panic.
pub struct FileDaemon {
    child: Child,
    log: PathBuf,
}

impl FileDaemon {
    /// Spawns `cmd` with stdin and stdout closed and stderr appended to
    /// `log` (created if missing; an existing file keeps its inode, so a
    /// `JOURNAL_STREAM` computed from it stays true).
    pub fn spawn(mut cmd: Command, log: &Path) -> FileDaemon {
        let stderr = OpenOptions::new().create(true).append(true).open(log).expect("open the daemon's log file");
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr);
        let child = cmd.spawn().expect("spawn heartbeatd");
        FileDaemon { child, log: log.to_owned() }
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the daemon wrote to stderr so far.
    pub fn log_text(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// Waits for a stderr line containing `needle` and returns it. Panics
    /// with the whole log if none appears within `within`, or if the daemon
    /// exits meanwhile.
    pub fn wait_for_line(&mut self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let text = self.log_text();
            if let Some(line) = text.lines().find(|l| l.contains(needle)) {
                return line.to_owned();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("heartbeatd exited ({status}) before logging {needle:?}; its log:\n{text}");
            }
            assert!(Instant::now() < deadline, "no log line with {needle:?} within {within:?}; the log:\n{text}");
            thread::sleep(POLL_EVERY);
        }
    }

    /// The address listener `name` reports in its `listening` line (port 0
    /// resolved), waiting for the line.
    pub fn listen_addr(&mut self, name: &str) -> SocketAddr {
        let line = self.wait_for_line(&format!("listening listener={name} "), Duration::from_secs(10));
        parse_listening_address(&line).unwrap_or_else(|| panic!("no address in {line:?}"))
    }

    /// Sends `signal` to the daemon.
    pub fn signal(&self, signal: i32) {
        let pid = libc::pid_t::try_from(self.pid()).expect("pid fits pid_t");
        // SAFETY: kill on our own child's pid; it is not reaped before
        // `wait_exit` or drop, so the pid cannot have been reused.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal}): {}", io::Error::last_os_error());
    }

    /// Waits for the daemon to exit, killing it and panicking if it takes
    /// longer than `within`.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait on heartbeatd") {
                return status;
            }
            if Instant::now() >= deadline {
                reap(&mut self.child);
                panic!("heartbeatd did not exit within {within:?}; its log:\n{}", self.log_text());
            }
            thread::sleep(POLL_EVERY);
        }
    }
}

impl Drop for FileDaemon {
    fn drop(&mut self) {
        reap(&mut self.child);
    }
}

/// The `address=` of a `listening listener=... address=A ...` log line or
/// journal message.
pub fn parse_listening_address(line: &str) -> Option<SocketAddr> {
    Line::parse(0, Instant::now(), line.to_owned()).get("address")?.parse().ok()
}

// ---- datagram receivers ---------------------------------------------------

/// A datagram and when it arrived.
pub struct Datagram {
    /// When the test received it.
    pub at: Instant,
    /// Its bytes.
    pub data: Vec<u8>,
}

/// A bound `AF_UNIX` datagram socket: the test's end of `NOTIFY_SOCKET` or
/// of the journal socket.
pub struct DatagramSink {
    socket: UnixDatagram,
    path: PathBuf,
}

impl DatagramSink {
    /// Binds at `path`.
    pub fn bind(path: &Path) -> DatagramSink {
        let socket = UnixDatagram::bind(path).expect("bind the datagram socket");
        DatagramSink { socket, path: path.to_owned() }
    }

    /// Where it is bound.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next datagram, or `None` if none arrives before `deadline`.
    pub fn recv_before(&self, deadline: Instant) -> Option<Datagram> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let left = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero())?;
            self.socket.set_read_timeout(Some(left)).expect("set_read_timeout");
            match self.socket.recv(&mut buf) {
                Ok(n) => return Some(Datagram { at: Instant::now(), data: buf[..n].to_vec() }),
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => panic!("recv on {}: {e}", self.path.display()),
            }
        }
    }
}

/// One `sd_notify` message: newline-separated `KEY=value` assignments.
#[derive(Debug, Clone)]
pub struct Notification {
    /// When it arrived.
    pub at: Instant,
    /// The message as sent.
    pub text: String,
}

impl Notification {
    /// The value of `key`, if the message assigns it.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
    }

    /// True when the message assigns `key=value`.
    pub fn has(&self, key: &str, value: &str) -> bool {
        self.get(key) == Some(value)
    }
}

/// The test's end of `NOTIFY_SOCKET`.
pub struct NotifySocket {
    sink: DatagramSink,
}

impl NotifySocket {
    /// Binds at `path`.
    pub fn bind(path: &Path) -> NotifySocket {
        NotifySocket { sink: DatagramSink::bind(path) }
    }

    /// The path to put in `NOTIFY_SOCKET`.
    pub fn path(&self) -> &Path {
        self.sink.path()
    }

    /// Receives until a message satisfies `done`, and returns every message
    /// received, the matching one last. Panics naming `what` (and listing
    /// what did arrive) after `within`.
    pub fn recv_until(&self, what: &str, within: Duration, done: impl Fn(&Notification) -> bool) -> Vec<Notification> {
        let deadline = Instant::now() + within;
        let mut got = Vec::new();
        loop {
            let Some(d) = self.sink.recv_before(deadline) else {
                let texts: Vec<&str> = got.iter().map(|n: &Notification| n.text.as_str()).collect();
                panic!("no notification {what} within {within:?}; received: {texts:?}");
            };
            let n = Notification { at: d.at, text: String::from_utf8(d.data).expect("notification is UTF-8") };
            let finished = done(&n);
            got.push(n);
            if finished {
                return got;
            }
        }
    }

    /// Every message that arrives during `window`.
    pub fn recv_for(&self, window: Duration) -> Vec<Notification> {
        let deadline = Instant::now() + window;
        let mut got = Vec::new();
        while let Some(d) = self.sink.recv_before(deadline) {
            got.push(Notification { at: d.at, text: String::from_utf8(d.data).expect("notification is UTF-8") });
        }
        got
    }
}

/// One journal entry received over the native protocol.
#[derive(Debug, Clone)]
pub struct JournalEntry {
    /// Its fields in the order sent.
    pub fields: Vec<(String, String)>,
}

impl JournalEntry {
    /// The value of field `name` (the first, if repeated).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The value of field `name`; panics naming the entry if it is missing.
    pub fn field(&self, name: &str) -> &str {
        self.get(name).unwrap_or_else(|| panic!("journal entry without {name}: {:?}", self.fields))
    }

    /// `MESSAGE=`, or "" if missing.
    pub fn message(&self) -> &str {
        self.get("MESSAGE").unwrap_or("")
    }
}

/// The test's end of the journal socket (`HEARTBEATD_JOURNAL_SOCKET`).
pub struct JournalSocket {
    sink: DatagramSink,
    /// Every entry received so far, in arrival order.
    pub entries: Vec<JournalEntry>,
}

impl JournalSocket {
    /// Binds at `path`.
    pub fn bind(path: &Path) -> JournalSocket {
        JournalSocket { sink: DatagramSink::bind(path), entries: Vec::new() }
    }

    /// The path to put in `HEARTBEATD_JOURNAL_SOCKET`.
    pub fn path(&self) -> &Path {
        self.sink.path()
    }

    /// Returns the first entry received so far or within `within` that
    /// satisfies `wanted`, decoding each datagram with [`decode_journal`].
    /// Panics (listing what arrived) if none
    /// does, or if a datagram does not decode.
    pub fn wait_for(&mut self, what: &str, within: Duration, wanted: impl Fn(&JournalEntry) -> bool) -> JournalEntry {
        if let Some(e) = self.entries.iter().find(|e| wanted(e)) {
            return e.clone();
        }
        let deadline = Instant::now() + within;
        loop {
            let Some(d) = self.sink.recv_before(deadline) else {
                let messages: Vec<&str> = self.entries.iter().map(JournalEntry::message).collect();
                panic!("no journal entry {what} within {within:?}; messages received: {messages:#?}");
            };
            let fields = decode_journal(&d.data)
                .unwrap_or_else(|| panic!("undecodable journal datagram {:?}", String::from_utf8_lossy(&d.data)));
            let entry = JournalEntry { fields };
            self.entries.push(entry.clone());
            if wanted(&entry) {
                return entry;
            }
        }
    }

    /// Collects whatever arrives during `window` into [`Self::entries`].
    pub fn drain_for(&mut self, window: Duration) {
        let deadline = Instant::now() + window;
        while let Some(d) = self.sink.recv_before(deadline) {
            let fields = decode_journal(&d.data).expect("journal datagram decodes");
            self.entries.push(JournalEntry { fields });
        }
    }
}

/// Decodes one datagram of the journal's native protocol: fields, each
/// either `NAME=value\n` or `NAME\n`, a little-endian u64 length, that
/// many bytes of value and `\n`. `None` unless the whole datagram is such
/// fields with UTF-8 names and values.
pub fn decode_journal(mut data: &[u8]) -> Option<Vec<(String, String)>> {
    let mut fields = Vec::new();
    while !data.is_empty() {
        let end = data.iter().position(|&b| b == b'\n' || b == b'=')?;
        let name = std::str::from_utf8(&data[..end]).ok()?.to_owned();
        let value;
        if data[end] == b'=' {
            let len = data[end + 1..].iter().position(|&b| b == b'\n')?;
            value = &data[end + 1..end + 1 + len];
            data = &data[end + 2 + len..];
        } else {
            let len = u64::from_le_bytes(data.get(end + 1..end + 9)?.try_into().ok()?);
            let start = end + 9;
            let stop = start.checked_add(usize::try_from(len).ok()?)?;
            value = data.get(start..stop)?;
            if data.get(stop) != Some(&b'\n') {
                return None;
            }
            data = &data[stop + 1..];
        }
        fields.push((name, std::str::from_utf8(value).ok()?.to_owned()));
    }
    Some(fields)
}

/// Creates an empty file at `path` and returns `"<st_dev>:<st_ino>"`, the
/// form of `JOURNAL_STREAM`.
pub fn dev_ino_of_new_file(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    File::create(path).expect("create the log file");
    let meta = fs::metadata(path).expect("stat the log file");
    format!("{}:{}", meta.dev(), meta.ino())
}

/// Runs `systemd-analyze verify` on `units` in `dir`, with `envs` added to
/// its environment, and fails the test unless it succeeds without a single
/// complaint.
pub fn assert_units_verify(analyze: &Path, dir: &Path, units: &[PathBuf], envs: &[(&str, &Path)]) {
    let mut command = Command::new(analyze);
    command.arg("verify").args(units).env("SYSTEMD_LOG_COLOR", "0").current_dir(dir);
    for (key, value) in envs {
        command.env(key, value);
    }
    let out = command.output().expect("run systemd-analyze verify");
    let complaints = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "systemd-analyze verify failed ({}):\n{complaints}", out.status);
    assert_eq!(complaints.trim(), "", "systemd-analyze verify complained");
}

/// Runs `systemd-analyze security --offline=true` on the service file
/// `unit` and fails the test unless its overall exposure is at most `max`
/// (0 is best, 10 worst).
pub fn assert_exposure_at_most(analyze: &Path, unit: &Path, max: f64) {
    let out = Command::new(analyze)
        .args(["security", "--offline=true", "--no-pager"])
        .arg(unit)
        .env("SYSTEMD_COLORS", "0")
        .output()
        .expect("run systemd-analyze security");
    let text = String::from_utf8_lossy(&out.stdout);
    let errors = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze security failed ({}):\n{text}{errors}", out.status);
    let last = text.lines().rev().find(|l| !l.trim().is_empty()).expect("systemd-analyze printed something");
    let score: f64 = last
        .split_once(".service:")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure score in the last line {last:?}"));
    println!("systemd-analyze security: {}", last.trim());
    assert!(score <= max, "overall exposure {score} > {max}; the weak points:\n{text}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_datagrams_decode_plain_and_binary_fields() {
        let mut data = b"MESSAGE=online client=a\nDETAIL\n".to_vec();
        data.extend_from_slice(&9u64.to_le_bytes());
        data.extend_from_slice(b"two\nlines\nPRIORITY=6\n");
        let fields = decode_journal(&data).expect("decodes");
        let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(fields, [("MESSAGE", "online client=a"), ("DETAIL", "two\nlines"), ("PRIORITY", "6")]);
        // A binary value must be followed by its newline; a line must end.
        assert_eq!(decode_journal(&data[..data.len() - 13]), None);
        assert_eq!(decode_journal(b"MESSAGE=no end"), None);
    }
}
