//! Helpers shared by the systemd test crates (`systemd_notify`,
//! `systemd_e2e`): temporary directories, the daemon under test with its
//! log in a file, the receiving ends of `sd_notify` and of the journal's
//! native protocol, and a tiny native-protocol client written from
//! PROTOCOL.md alone (not from the daemon's codec, so a codec bug cannot
//! hide itself).
//!
//! Every wait here has a deadline and panics with what it waited for; no
//! helper sleeps and hopes.

// Each test crate includes this module and uses a different part of it.
#![allow(dead_code)]

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::RawFd;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// The daemon binary cargo built for these tests.
pub const HEARTBEATD: &str = env!("CARGO_BIN_EXE_heartbeatd");

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

/// Finds `program` on `$PATH`.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|p| p.is_file())
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
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC)");
    u64::try_from(ts.tv_sec).expect("seconds") * 1_000_000 + u64::try_from(ts.tv_nsec).expect("nanos") / 1_000
}

// ---- temporary directories ------------------------------------------------

/// A fresh directory under the system's temp dir, removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `heartbeatd-LABEL-PID-N`, unique within and across processes.
    pub fn new(label: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("heartbeatd-{label}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("create the temp dir");
        TempDir { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

// ---- the daemon -----------------------------------------------------------

/// A config with one native listener `main` on `address`, `interval` and
/// `timeout` as TOML duration strings, a 100 ms tick and a short shutdown
/// grace.
pub fn config_text(address: &str, interval: &str, timeout: &str) -> String {
    format!(
        "[daemon]\ntick = \"100ms\"\nshutdown_grace = \"1s\"\n\n\
         [[listener]]\nname = \"main\"\naddress = \"{address}\"\nprotocol = \"native\"\n\
         interval = \"{interval}\"\ntimeout = \"{timeout}\"\n"
    )
}

/// `heartbeatd --config CONFIG` with every systemd variable removed.
pub fn daemon_command(config: &Path) -> Command {
    let mut cmd = Command::new(HEARTBEATD);
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
    cmd.arg("-c").arg(format!("{exports}exec \"$0\" \"$@\"")).arg(HEARTBEATD).arg("--config").arg(config);
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

/// A running `heartbeatd` whose stderr goes to a file. Killed on drop if it
/// is still running, so no test leaves a daemon behind, even on panic.
pub struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    /// Spawns `cmd` with stdin and stdout closed and stderr appended to
    /// `log` (created if missing; an existing file keeps its inode, so a
    /// `JOURNAL_STREAM` computed from it stays true).
    pub fn spawn(mut cmd: Command, log: &Path) -> Daemon {
        let stderr = OpenOptions::new().create(true).append(true).open(log).expect("open the daemon's log file");
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr);
        let child = cmd.spawn().expect("spawn heartbeatd");
        Daemon { child, log: log.to_owned() }
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
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("heartbeatd did not exit within {within:?}; its log:\n{}", self.log_text());
            }
            thread::sleep(POLL_EVERY);
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The `address=` of a `listening listener=... address=A ...` log line or
/// journal message.
pub fn parse_listening_address(line: &str) -> Option<SocketAddr> {
    logfmt_value(line, "address")?.parse().ok()
}

/// The value of `key=` in a logfmt line (bare values only).
pub fn logfmt_value<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {key}="))? + key.len() + 2;
    line[start..].split(' ').next()
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
    /// Decodes one datagram of the journal's native protocol, written from
    /// systemd's description of it (not from the daemon's encoder, so an
    /// encoder bug cannot hide behind its own inverse): a field is
    /// `NAME=value\n`, or `NAME\n`, a little-endian u64 length, that many
    /// bytes and `\n` for a value that may hold newlines. `None` for
    /// anything else.
    pub fn decode(datagram: &[u8]) -> Option<JournalEntry> {
        let mut fields = Vec::new();
        let mut rest = datagram;
        while !rest.is_empty() {
            let split = rest.iter().position(|&b| b == b'=' || b == b'\n')?;
            let name = std::str::from_utf8(&rest[..split]).ok()?.to_owned();
            let value;
            if rest[split] == b'=' {
                let line = &rest[split + 1..];
                let end = line.iter().position(|&b| b == b'\n')?;
                value = &line[..end];
                rest = &line[end + 1..];
            } else {
                let (len, tail) = rest[split + 1..].split_first_chunk::<8>()?;
                let len = usize::try_from(u64::from_le_bytes(*len)).ok()?;
                if tail.len() <= len || tail[len] != b'\n' {
                    return None;
                }
                value = &tail[..len];
                rest = &tail[len + 1..];
            }
            fields.push((name, std::str::from_utf8(value).ok()?.to_owned()));
        }
        Some(JournalEntry { fields })
    }

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
    /// satisfies `wanted`, decoding each datagram with
    /// [`JournalEntry::decode`]. Panics (listing what arrived) if none
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
            let entry = JournalEntry::decode(&d.data)
                .unwrap_or_else(|| panic!("undecodable journal datagram {:?}", String::from_utf8_lossy(&d.data)));
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
            self.entries.push(JournalEntry::decode(&d.data).expect("journal datagram decodes"));
        }
    }
}

// ---- a tiny native-protocol client (PROTOCOL.md §1) ------------------------

/// Frame types of the native protocol, from the loopback suite's
/// hand-written client (written from PROTOCOL.md, not from the daemon).
pub mod frame {
    pub use crate::common::{BYE, PING, WELCOME};
}

/// Encodes one frame: type, flags 0, big-endian u16 length, payload.
pub use crate::common::frame as encode_frame;

/// A HELLO for `id`, version 1, no token.
pub fn hello_frame(id: &str) -> Vec<u8> {
    crate::common::hello_frame(id, "")
}

/// Splits `bytes` into complete frames `(type, payload)`, ignoring an
/// incomplete tail.
pub fn parse_frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    while bytes.len() >= 4 {
        let len = usize::from(u16::from_be_bytes([bytes[2], bytes[3]]));
        let Some(payload) = bytes.get(4..4 + len) else { break };
        frames.push((bytes[0], payload.to_vec()));
        bytes = &bytes[4 + len..];
    }
    frames
}

/// The fields of a WELCOME.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Welcome {
    /// How often the client must send.
    pub interval_ms: u32,
    /// Silence after which the daemon declares the client offline.
    pub timeout_ms: u32,
    /// The connection's session number.
    pub session: u64,
}

/// Decodes a WELCOME payload (exactly 16 bytes).
pub fn parse_welcome(payload: &[u8]) -> Welcome {
    assert_eq!(payload.len(), 16, "WELCOME payload is 16 bytes: {payload:?}");
    Welcome {
        interval_ms: u32::from_be_bytes(payload[0..4].try_into().expect("4 bytes")),
        timeout_ms: u32::from_be_bytes(payload[4..8].try_into().expect("4 bytes")),
        session: u64::from_be_bytes(payload[8..16].try_into().expect("8 bytes")),
    }
}

/// A blocking native client over loopback.
pub struct NativeClient {
    /// The connection.
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl NativeClient {
    /// Connects to `addr` (within 5 s).
    pub fn connect(addr: SocketAddr) -> NativeClient {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect to heartbeatd at {addr}: {e}"));
        NativeClient { stream, buf: Vec::new() }
    }

    /// Wraps an already connected stream.
    pub fn from_stream(stream: TcpStream) -> NativeClient {
        NativeClient { stream, buf: Vec::new() }
    }

    /// Writes raw bytes.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to heartbeatd");
    }

    /// Reads the next frame; panics on EOF, error or after `within`.
    pub fn read_frame(&mut self, within: Duration) -> (u8, Vec<u8>) {
        let deadline = Instant::now() + within;
        loop {
            if let Some((kind, payload)) = parse_frames(&self.buf).into_iter().next() {
                self.buf.drain(..4 + payload.len());
                return (kind, payload);
            }
            let left = deadline
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())
                .unwrap_or_else(|| panic!("no frame from heartbeatd within {within:?}"));
            self.stream.set_read_timeout(Some(left)).expect("set_read_timeout");
            let mut chunk = [0u8; 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!("heartbeatd closed the connection; unparsed bytes {:?}", self.buf),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => panic!("read from heartbeatd: {e}"),
            }
        }
    }

    /// Sends HELLO for `id` and returns the WELCOME (panics on anything
    /// else within 5 s).
    pub fn hello(&mut self, id: &str) -> Welcome {
        self.send(&hello_frame(id));
        self.expect_welcome(Duration::from_secs(5))
    }

    /// Reads the next frame and decodes it as a WELCOME.
    pub fn expect_welcome(&mut self, within: Duration) -> Welcome {
        let (kind, payload) = self.read_frame(within);
        assert_eq!(kind, frame::WELCOME, "expected WELCOME, got type {kind} payload {payload:?}");
        parse_welcome(&payload)
    }

    /// Sends BYE with `reason`.
    pub fn bye(&mut self, reason: &str) {
        self.send(&encode_frame(frame::BYE, reason.as_bytes()));
    }

    /// Sends PING with `payload`.
    pub fn ping(&mut self, payload: &[u8]) {
        self.send(&encode_frame(frame::PING, payload));
    }

    /// Waits until the daemon closes the connection (EOF or reset), within
    /// `within`; frames that arrive meanwhile are returned.
    pub fn wait_closed(&mut self, within: Duration) -> Vec<(u8, Vec<u8>)> {
        let deadline = Instant::now() + within;
        let mut chunk = [0u8; 1024];
        loop {
            let left = deadline
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())
                .unwrap_or_else(|| panic!("heartbeatd did not close the connection within {within:?}"));
            self.stream.set_read_timeout(Some(left)).expect("set_read_timeout");
            match self.stream.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("read from heartbeatd: {e}"),
            }
        }
        parse_frames(&std::mem::take(&mut self.buf))
    }
}

/// Creates an empty file at `path` and returns `"<st_dev>:<st_ino>"`, the
/// form of `JOURNAL_STREAM`.
pub fn dev_ino_of_new_file(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    File::create(path).expect("create the log file");
    let meta = fs::metadata(path).expect("stat the log file");
    format!("{}:{}", meta.dev(), meta.ino())
}
