//! Harness for heartbeatd's integration tests.
//!
//! Everything here is written from `PROTOCOL.md` alone: the frames are
//! encoded and decoded by hand, and nothing of the `heartbeatd` library is
//! used, so the tests prove that an independent client can talk to the
//! daemon.
//!
//! - [`Daemon`] starts the real binary on a temp config, collects its stderr
//!   lines (each stamped with the instant the reader thread got it), waits
//!   for log lines with deadlines, sends signals and kills it on drop.
//! - [`Line`] is one parsed log line: the message after the level, its first
//!   word (the event name) and its logfmt `key=value` fields.
//! - [`NativeClient`] speaks the native protocol; [`PlainClient`] is a bare
//!   TCP client for the legacy and raw protocols.
//!
//! Every wait has a deadline; a timed-out wait fails the test with the whole
//! daemon log so far.

#![allow(dead_code)]

use std::collections::HashMap;
use std::fmt::{self, Display};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStderr, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The daemon binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_heartbeatd");

/// How long any "this must happen" wait may take before the test fails.
/// Generous: the machine has 2 cores and the tests run in parallel.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Allowed lateness on top of the protocol's bound (one tick) in timing
/// assertions. Generous for the same reason as [`DEADLINE`].
pub const SLACK: Duration = Duration::from_millis(500);

// ---------------------------------------------------------------------------
// Temp dirs and configs
// ---------------------------------------------------------------------------

/// A unique directory under `std::env::temp_dir()`, removed on drop unless
/// the test is failing (then it is kept for inspection).
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let path = std::env::temp_dir().join(format!("heartbeatd-test-{tag}-{}-{n}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("creating temp dir {}: {e}", path.display()));
        TempDir { path }
    }

    /// Writes `text` to `name` inside the dir (atomically: temp file and
    /// rename, so a daemon reloading at that moment never reads half a file).
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path.join(name);
        let tmp = self.path.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("writing {}: {e}", tmp.display()));
        std::fs::rename(&tmp, &path)
            .unwrap_or_else(|e| panic!("renaming {} to {}: {e}", tmp.display(), path.display()));
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A whole config file: a `[daemon]` table with `tick` and `extra` lines,
/// then one `[[listener]]` table per entry of `listeners` (each the body of
/// the table, e.g. from [`native`], [`legacy`], [`raw`]).
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
    listener(name, "native", extra)
}

/// The body of a legacy listener table on 127.0.0.1, port 0.
pub fn legacy(name: &str, extra: &str) -> String {
    listener(name, "legacy", extra)
}

/// The body of a raw listener table on 127.0.0.1, port 0.
pub fn raw(name: &str, extra: &str) -> String {
    listener(name, "raw", extra)
}

fn listener(name: &str, protocol: &str, extra: &str) -> String {
    format!("name = \"{name}\"\naddress = \"127.0.0.1:0\"\nprotocol = \"{protocol}\"\n{extra}")
}

/// Runs the binary with `args` to completion (for `--check-config`,
/// `--version`), failing the test if it does not exit within [`DEADLINE`].
pub fn run_cli(args: &[&str]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {BIN} {args:?}: {e}"));
    let deadline = Instant::now() + DEADLINE;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let out = child.wait_with_output().expect("collecting output of a killed child");
                panic!(
                    "{BIN} {args:?} did not exit within {DEADLINE:?}\nstdout: {}\nstderr: {}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Ok(None) => thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("waiting for {BIN} {args:?}: {e}"),
        }
    }
    child.wait_with_output().expect("collecting the child's output")
}

// ---------------------------------------------------------------------------
// Log lines
// ---------------------------------------------------------------------------

/// One stderr line of the daemon, parsed.
#[derive(Clone, Debug)]
pub struct Line {
    /// Position in the daemon's log (0-based): orders lines.
    pub index: usize,
    /// When the reader thread received the line.
    pub at: Instant,
    /// The raw text.
    pub text: String,
    /// The text after `<timestamp> [LEVEL]`.
    pub message: String,
    /// The first bare word of the message: `online`, `offline`, ...
    pub event: String,
    /// The logfmt `key=value` pairs of the message, values unquoted.
    pub fields: HashMap<String, String>,
}

impl Line {
    pub fn parse(index: usize, at: Instant, text: String) -> Line {
        let message = message_of(&text).to_string();
        let (words, fields) = parse_logfmt(&message);
        let event = words.into_iter().next().unwrap_or_default();
        Line { index, at, text, message, event, fields }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }

    /// The value of `key`, which must be present.
    pub fn field(&self, key: &str) -> &str {
        self.get(key).unwrap_or_else(|| panic!("log line has no `{key}`: {}", self.text))
    }

    /// The value of `key` as a number, which must be present and numeric.
    pub fn num(&self, key: &str) -> u64 {
        let v = self.field(key);
        v.parse().unwrap_or_else(|e| panic!("`{key}={v}` is not a number ({e}): {}", self.text))
    }

    pub fn is(&self, event: &str) -> bool {
        self.event == event
    }
}

impl Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The message of a `<rfc3339 timestamp> [LEVEL] <message>` line (the level
/// may be padded inside its brackets); the whole line if it has no level.
pub fn message_of(text: &str) -> &str {
    match (text.find('['), text.find(']')) {
        (Some(open), Some(close)) if open < close => text[close + 1..].trim_start(),
        _ => text,
    }
}

/// Splits a logfmt message into its bare words (in order) and its
/// `key=value` pairs. Values may be double-quoted, with `\"`, `\\`, `\n`,
/// `\t` and `\u{hex}` escapes.
pub fn parse_logfmt(s: &str) -> (Vec<String>, HashMap<String, String>) {
    let mut words = Vec::new();
    let mut fields = HashMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c.is_whitespace() || c == '=' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if chars.peek() != Some(&'=') {
            words.push(key);
            continue;
        }
        chars.next(); // '='
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '"' => break,
                    '\\' => match chars.next() {
                        Some('n') => value.push('\n'),
                        Some('t') => value.push('\t'),
                        Some('u') if chars.peek() == Some(&'{') => {
                            chars.next();
                            let mut hex = String::new();
                            for h in chars.by_ref() {
                                if h == '}' {
                                    break;
                                }
                                hex.push(h);
                            }
                            let decoded = u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32);
                            value.push(decoded.unwrap_or('\u{fffd}'));
                        }
                        Some(other) => value.push(other),
                        None => value.push('\\'),
                    },
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        fields.insert(key, value);
    }
    (words, fields)
}

/// Something a log line can be matched against.
pub trait Pred {
    fn test(&self, line: &Line) -> bool;
    fn describe(&self) -> String;
}

/// A substring of the raw line.
impl Pred for &str {
    fn test(&self, line: &Line) -> bool {
        line.text.contains(*self)
    }
    fn describe(&self) -> String {
        format!("a line containing {self:?}")
    }
}

impl Pred for String {
    fn test(&self, line: &Line) -> bool {
        line.text.contains(self.as_str())
    }
    fn describe(&self) -> String {
        format!("a line containing {self:?}")
    }
}

/// An event name and exact field values: `ev("offline").kv("reason", "left")`.
#[derive(Clone, Debug)]
pub struct Ev {
    event: String,
    kv: Vec<(String, String)>,
}

pub fn ev(event: &str) -> Ev {
    Ev { event: event.to_string(), kv: Vec::new() }
}

impl Ev {
    pub fn kv(mut self, key: &str, value: impl Display) -> Ev {
        self.kv.push((key.to_string(), value.to_string()));
        self
    }
}

impl Pred for Ev {
    fn test(&self, line: &Line) -> bool {
        line.is(&self.event) && self.kv.iter().all(|(k, v)| line.get(k) == Some(v.as_str()))
    }
    fn describe(&self) -> String {
        let kv: Vec<String> = self.kv.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("event `{} {}`", self.event, kv.join(" "))
    }
}

/// A described closure.
pub struct When<F>(pub &'static str, pub F);

impl<F: Fn(&Line) -> bool> Pred for When<F> {
    fn test(&self, line: &Line) -> bool {
        (self.1)(line)
    }
    fn describe(&self) -> String {
        self.0.to_string()
    }
}

// ---------------------------------------------------------------------------
// The daemon
// ---------------------------------------------------------------------------

struct LogState {
    rx: Receiver<(Instant, String)>,
    lines: Vec<Line>,
    /// The stderr pipe is closed: no more lines will come.
    closed: bool,
}

impl LogState {
    fn push(&mut self, at: Instant, text: String) {
        let index = self.lines.len();
        self.lines.push(Line::parse(index, at, text));
    }

    /// Takes every line already received without blocking.
    fn drain(&mut self) {
        loop {
            match self.rx.try_recv() {
                Ok((at, text)) => self.push(at, text),
                Err(mpsc::TryRecvError::Empty) => return,
                Err(mpsc::TryRecvError::Disconnected) => {
                    self.closed = true;
                    return;
                }
            }
        }
    }

    fn dump(&self) -> String {
        let mut out = String::new();
        for l in &self.lines {
            out.push_str(&l.text);
            out.push('\n');
        }
        out
    }
}

/// A running `heartbeatd --config <temp file>`, killed on drop.
pub struct Daemon {
    child: Mutex<Child>,
    pid: i32,
    pub dir: TempDir,
    pub config_path: PathBuf,
    log: Mutex<LogState>,
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
    /// (environment, resource limits).
    pub fn start_with(dir: TempDir, config_path: PathBuf, adjust: impl FnOnce(&mut Command)) -> Daemon {
        let mut command = Command::new(BIN);
        adjust(&mut command);
        let mut child = command
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {BIN}: {e}"));
        let stderr = child.stderr.take().expect("the child's stderr is piped");
        let (tx, rx) = mpsc::channel();
        thread::Builder::new()
            .name("heartbeatd-stderr".into())
            .spawn(move || read_lines(stderr, tx))
            .expect("spawning the stderr reader thread");
        let pid = i32::try_from(child.id()).expect("pid fits i32");
        Daemon {
            child: Mutex::new(child),
            pid,
            dir,
            config_path,
            log: Mutex::new(LogState { rx, lines: Vec::new(), closed: false }),
            exit: Mutex::new(None),
        }
    }

    fn log(&self) -> MutexGuard<'_, LogState> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The whole log received so far.
    pub fn log_text(&self) -> String {
        let mut log = self.log();
        log.drain();
        log.dump()
    }

    /// Every line received so far.
    pub fn lines(&self) -> Vec<Line> {
        let mut log = self.log();
        log.drain();
        log.lines.clone()
    }

    /// Every line received so far that matches `pred`.
    pub fn find_all(&self, pred: impl Pred) -> Vec<Line> {
        self.lines().into_iter().filter(|l| pred.test(l)).collect()
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
                let log = self.log();
                let why = if log.closed { "the daemon's stderr closed (it exited)" } else { "timed out" };
                panic!(
                    "{why} after {:?} waiting for {} (from line {start})\n--- daemon log ---\n{}--- end of log ---",
                    began.elapsed(),
                    pred.describe(),
                    log.dump()
                );
            }
        }
    }

    /// Like [`Daemon::wait_from`], but returns `None` instead of failing
    /// when no line matches within `timeout` (or the daemon's stderr closed).
    pub fn poll_from(&self, start: usize, pred: &impl Pred, timeout: Duration) -> Option<Line> {
        let deadline = Instant::now() + timeout;
        let mut log = self.log();
        let mut next = start;
        loop {
            while next < log.lines.len() {
                if pred.test(&log.lines[next]) {
                    return Some(log.lines[next].clone());
                }
                next += 1;
            }
            let now = Instant::now();
            if log.closed || now >= deadline {
                return None;
            }
            match log.rx.recv_timeout(deadline - now) {
                Ok((at, text)) => log.push(at, text),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => log.closed = true,
            }
        }
    }

    /// Watches the log for `duration` and fails the test if a line at index
    /// `start` or later matches `pred`. (A negative check can only be made
    /// by watching for a while.)
    pub fn assert_absent_from(&self, start: usize, pred: impl Pred, duration: Duration) {
        let deadline = Instant::now() + duration;
        let mut log = self.log();
        let mut next = start;
        loop {
            while next < log.lines.len() {
                if pred.test(&log.lines[next]) {
                    panic!(
                        "unexpected {}: {}\n--- daemon log ---\n{}--- end of log ---",
                        pred.describe(),
                        log.lines[next].text,
                        log.dump()
                    );
                }
                next += 1;
            }
            let now = Instant::now();
            if now >= deadline || log.closed {
                return;
            }
            match log.rx.recv_timeout(deadline - now) {
                Ok((at, text)) => log.push(at, text),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => log.closed = true,
            }
        }
    }

    /// Fails the test if any line so far matches `pred`.
    pub fn assert_none(&self, pred: impl Pred) {
        self.assert_absent_from(0, pred, Duration::ZERO);
    }

    /// Number of lines received so far (an index for [`Daemon::wait_from`]).
    pub fn mark(&self) -> usize {
        let mut log = self.log();
        log.drain();
        log.lines.len()
    }

    /// The address a listener is bound to, from its `listening` line.
    pub fn addr(&self, listener: &str) -> SocketAddr {
        let line = self.wait(ev("listening").kv("listener", listener));
        let address = line.field("address");
        address.parse().unwrap_or_else(|e| panic!("`address={address}` is not a socket address ({e}): {line}"))
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`) to the daemon.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) with the pid of our own child, which is not reaped
        // before `wait_exit` or drop, so the pid cannot name another process.
        let rc = unsafe { libc::kill(self.pid, signal) };
        if rc != 0 {
            panic!("kill({}, {signal}): {}", self.pid, io::Error::last_os_error());
        }
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

/// Kills a child that is still running (SIGKILL ends a stopped one too)
/// and reaps it, so no test leaves a process or a zombie behind.
pub fn reap(child: &mut Child) {
    if matches!(child.try_wait(), Ok(None)) {
        let _ = child.kill();
    }
    let _ = child.wait();
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        reap(&mut child);
        if thread::panicking() {
            let mut log = self.log();
            // The pipe closes with the process; take what is left of it.
            let until = Instant::now() + Duration::from_secs(1);
            while !log.closed && Instant::now() < until {
                match log.rx.recv_timeout(Duration::from_millis(100)) {
                    Ok((at, text)) => log.push(at, text),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => log.closed = true,
                }
            }
            eprintln!(
                "--- daemon log (test failed; config {}) ---\n{}--- end of log ---",
                self.config_path.display(),
                log.dump()
            );
        }
    }
}

fn read_lines(stderr: ChildStderr, tx: mpsc::Sender<(Instant, String)>) {
    let mut reader = BufReader::new(stderr);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let at = Instant::now();
                let text = String::from_utf8_lossy(&buf).trim_end_matches(['\n', '\r']).to_string();
                if tx.send((at, text)).is_err() {
                    return;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Sockets
// ---------------------------------------------------------------------------

/// How a test client's socket is made.
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnectOpts {
    /// Local address to bind before connecting (e.g. 127.0.0.2).
    pub bind: Option<IpAddr>,
    /// `SO_RCVBUF` to set before connecting (so the window stays small).
    pub rcvbuf: Option<usize>,
}

/// Connects to `addr` with TCP_NODELAY, so that each write leaves at once.
pub fn connect(addr: SocketAddr, opts: ConnectOpts) -> TcpStream {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).expect("creating a client socket");
    if let Some(size) = opts.rcvbuf {
        socket.set_recv_buffer_size(size).expect("setting SO_RCVBUF on the client socket");
    }
    if let Some(ip) = opts.bind {
        socket
            .bind(&SockAddr::from(SocketAddr::new(ip, 0)))
            .unwrap_or_else(|e| panic!("binding the client socket to {ip}: {e}"));
    }
    socket.connect_timeout(&SockAddr::from(addr), DEADLINE).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    socket.set_tcp_nodelay(true).expect("setting TCP_NODELAY");
    socket.into()
}

/// How a read ended without data.
#[derive(Debug)]
pub enum End {
    /// Nothing arrived before the deadline.
    Timeout,
    /// The daemon closed the connection (FIN).
    Eof,
    /// The daemon reset the connection, or another error.
    Error(io::Error),
}

impl End {
    /// True when the connection is gone (EOF or reset), not just quiet.
    pub fn is_closed(&self) -> bool {
        match self {
            End::Eof => true,
            End::Error(e) => matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted | io::ErrorKind::BrokenPipe
            ),
            End::Timeout => false,
        }
    }
}

/// Reads once into `buf` with a deadline.
fn read_some(stream: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> Result<usize, End> {
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(End::Timeout);
        }
        stream.set_read_timeout(Some(deadline - now)).expect("setting a read timeout");
        match stream.read(buf) {
            Ok(0) => return Err(End::Eof),
            Ok(n) => return Ok(n),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(End::Error(e)),
        }
    }
}

/// Closes `stream` with RST instead of FIN (SO_LINGER 0, then close).
pub fn reset(stream: TcpStream) {
    socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO)).expect("setting SO_LINGER 0");
    drop(stream);
}

// ---------------------------------------------------------------------------
// The native protocol, by hand from PROTOCOL.md §1
// ---------------------------------------------------------------------------

pub const HELLO: u8 = 0x01;
pub const WELCOME: u8 = 0x02;
pub const PING: u8 = 0x03;
pub const PONG: u8 = 0x04;
pub const BYE: u8 = 0x05;
pub const ERROR: u8 = 0x06;

pub const ERR_MALFORMED: u16 = 1;
pub const ERR_VERSION: u16 = 2;
pub const ERR_HANDSHAKE_TIMEOUT: u16 = 3;
pub const ERR_AUTH: u16 = 4;
pub const ERR_FULL: u16 = 5;
pub const ERR_REPLACED: u16 = 6;
pub const ERR_SEQUENCE: u16 = 7;

/// `type, flags=0, length (u16 BE), payload`.
pub fn frame(ty: u8, payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(payload.len()).expect("a frame payload fits u16");
    let mut out = vec![ty, 0];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A HELLO payload: `version:u8, id_len:u8, id, token_len:u8, token`.
pub fn hello_payload(version: u8, id: &[u8], token: &[u8]) -> Vec<u8> {
    let mut p = vec![version, u8::try_from(id.len()).expect("id fits u8")];
    p.extend_from_slice(id);
    p.push(u8::try_from(token.len()).expect("token fits u8"));
    p.extend_from_slice(token);
    p
}

/// A HELLO frame, version 1.
pub fn hello_frame(id: &str, token: &str) -> Vec<u8> {
    frame(HELLO, &hello_payload(1, id.as_bytes(), token.as_bytes()))
}

/// One frame received from the daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub ty: u8,
    pub flags: u8,
    pub payload: Vec<u8>,
}

/// A decoded WELCOME.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Welcome {
    pub interval_ms: u32,
    pub timeout_ms: u32,
    pub session: u64,
}

impl Frame {
    pub fn name(&self) -> &'static str {
        match self.ty {
            HELLO => "HELLO",
            WELCOME => "WELCOME",
            PING => "PING",
            PONG => "PONG",
            BYE => "BYE",
            ERROR => "ERROR",
            _ => "unknown",
        }
    }

    /// The WELCOME's fields; fails the test unless this is a WELCOME of
    /// exactly 16 bytes.
    pub fn welcome(&self) -> Welcome {
        assert_eq!(self.ty, WELCOME, "expected WELCOME, got {self:?}");
        assert_eq!(self.payload.len(), 16, "WELCOME payload must be exactly 16 bytes: {self:?}");
        let p = &self.payload;
        Welcome {
            interval_ms: u32::from_be_bytes(p[0..4].try_into().expect("4 bytes")),
            timeout_ms: u32::from_be_bytes(p[4..8].try_into().expect("4 bytes")),
            session: u64::from_be_bytes(p[8..16].try_into().expect("8 bytes")),
        }
    }

    /// The ERROR's code and message; fails the test unless this is a valid
    /// ERROR (code, then 0..=256 bytes of UTF-8).
    pub fn error(&self) -> (u16, String) {
        assert_eq!(self.ty, ERROR, "expected ERROR, got {self:?}");
        assert!(self.payload.len() >= 2, "ERROR payload shorter than its code: {self:?}");
        let code = u16::from_be_bytes([self.payload[0], self.payload[1]]);
        let message = std::str::from_utf8(&self.payload[2..])
            .unwrap_or_else(|e| panic!("ERROR message is not UTF-8 ({e}): {self:?}"))
            .to_string();
        assert!(message.len() <= 256, "ERROR message over 256 bytes: {self:?}");
        (code, message)
    }

    /// The BYE's reason; fails the test unless this is a valid BYE.
    pub fn bye(&self) -> String {
        assert_eq!(self.ty, BYE, "expected BYE, got {self:?}");
        assert!(self.payload.len() <= 128, "BYE reason over 128 bytes: {self:?}");
        std::str::from_utf8(&self.payload)
            .unwrap_or_else(|e| panic!("BYE reason is not UTF-8 ({e}): {self:?}"))
            .to_string()
    }
}

/// A native-protocol client.
pub struct NativeClient {
    pub stream: TcpStream,
    /// Bytes read but not yet decoded.
    rbuf: Vec<u8>,
    /// The instant just before the last write started (the daemon cannot
    /// have seen the bytes earlier).
    pub last_sent: Instant,
    /// This side's address (the daemon logs it as `peer`).
    pub local: SocketAddr,
    /// The session of the last WELCOME.
    pub session: Option<u64>,
}

impl NativeClient {
    pub fn connect(addr: SocketAddr) -> NativeClient {
        NativeClient::connect_with(addr, ConnectOpts::default())
    }

    pub fn connect_with(addr: SocketAddr, opts: ConnectOpts) -> NativeClient {
        let stream = connect(addr, opts);
        let local = stream.local_addr().expect("reading the client's local address");
        NativeClient { stream, rbuf: Vec::new(), last_sent: Instant::now(), local, session: None }
    }

    /// Connects, says HELLO and expects WELCOME.
    pub fn handshake(addr: SocketAddr, id: &str, token: &str) -> (NativeClient, Welcome) {
        let mut c = NativeClient::connect(addr);
        c.hello(id, token);
        let w = c.expect_welcome();
        (c, w)
    }

    /// Writes `bytes` as they are.
    pub fn send(&mut self, bytes: &[u8]) {
        self.last_sent = Instant::now();
        self.stream
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("client {} writing {} bytes: {e}", self.local, bytes.len()));
    }

    /// Writes `bytes` one byte per write, pausing between them so that the
    /// daemon sees them in separate reads.
    pub fn send_bytewise(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.send(std::slice::from_ref(b));
            thread::sleep(Duration::from_millis(3));
        }
    }

    /// Writes `bytes`, returning the error instead of failing.
    pub fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.last_sent = Instant::now();
        self.stream.write_all(bytes)
    }

    pub fn send_frame(&mut self, ty: u8, payload: &[u8]) {
        self.send(&frame(ty, payload));
    }

    pub fn hello(&mut self, id: &str, token: &str) {
        self.send(&hello_frame(id, token));
    }

    pub fn ping(&mut self, payload: &[u8]) {
        self.send_frame(PING, payload);
    }

    pub fn bye(&mut self, reason: &str) {
        self.send_frame(BYE, reason.as_bytes());
    }

    /// Decodes one complete frame from the read buffer, if there is one.
    fn take_frame(&mut self) -> Option<Frame> {
        if self.rbuf.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_be_bytes([self.rbuf[2], self.rbuf[3]]));
        if self.rbuf.len() < 4 + len {
            return None;
        }
        let f = Frame { ty: self.rbuf[0], flags: self.rbuf[1], payload: self.rbuf[4..4 + len].to_vec() };
        self.rbuf.drain(..4 + len);
        Some(f)
    }

    /// Reads the next frame, or how the connection ended, within `timeout`.
    pub fn read_frame(&mut self, timeout: Duration) -> Result<Frame, End> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        loop {
            if let Some(f) = self.take_frame() {
                return Ok(f);
            }
            let n = read_some(&mut self.stream, &mut buf, deadline)?;
            self.rbuf.extend_from_slice(&buf[..n]);
        }
    }

    /// Reads the next frame; fails the test if none comes within [`DEADLINE`].
    pub fn expect_frame(&mut self, what: &str) -> Frame {
        match self.read_frame(DEADLINE) {
            Ok(f) => f,
            Err(end) => panic!("client {} expected {what}, got {end:?}", self.local),
        }
    }

    pub fn expect_welcome(&mut self) -> Welcome {
        let f = self.expect_frame("WELCOME");
        let w = f.welcome();
        self.session = Some(w.session);
        w
    }

    /// Expects PONG echoing `payload` byte for byte.
    pub fn expect_pong(&mut self, payload: &[u8]) {
        let f = self.expect_frame("PONG");
        assert_eq!(f.ty, PONG, "client {} expected PONG, got {f:?}", self.local);
        assert_eq!(f.payload, payload, "client {}: PONG must echo the PING payload", self.local);
    }

    /// Sends PING(`payload`) and expects its PONG.
    pub fn round_trip(&mut self, payload: &[u8]) {
        self.ping(payload);
        self.expect_pong(payload);
    }

    /// Expects ERROR `code` as the last frame, then the connection's close.
    pub fn expect_error(&mut self, code: u16) -> String {
        let f = self.expect_frame(&format!("ERROR {code}"));
        assert_eq!(f.ty, ERROR, "client {} expected ERROR {code}, got {f:?}", self.local);
        let (got, message) = f.error();
        assert_eq!(got, code, "client {}: wrong ERROR code (message {message:?})", self.local);
        self.expect_close("after ERROR (ERROR is the last frame)");
        message
    }

    /// Expects the daemon to close the connection with nothing more sent.
    pub fn expect_close(&mut self, context: &str) {
        match self.read_frame(DEADLINE) {
            Err(end) if end.is_closed() => {}
            Ok(f) => panic!("client {}: expected close {context}, got frame {f:?}", self.local),
            Err(end) => panic!("client {}: expected close {context}, got {end:?}", self.local),
        }
    }

    /// Half-closes: sends FIN.
    pub fn fin(&self) {
        self.stream.shutdown(Shutdown::Write).expect("shutdown(SHUT_WR)");
    }

    /// Closes with RST.
    pub fn reset(self) {
        reset(self.stream);
    }
}

// ---------------------------------------------------------------------------
// Legacy (PROTOCOL.md §2) and raw (§3)
// ---------------------------------------------------------------------------

/// A legacy header: `type:i32 LE, length:i32 LE`.
pub fn legacy_header(ty: i32, length: i32) -> [u8; 8] {
    let mut h = [0u8; 8];
    h[..4].copy_from_slice(&ty.to_le_bytes());
    h[4..].copy_from_slice(&length.to_le_bytes());
    h
}

/// A bare TCP client for the legacy and raw protocols.
pub struct PlainClient {
    pub stream: TcpStream,
    /// The instant just before the last write started.
    pub last_sent: Instant,
    /// This side's address: the daemon's id for the client.
    pub local: SocketAddr,
}

impl PlainClient {
    pub fn connect(addr: SocketAddr) -> PlainClient {
        let stream = connect(addr, ConnectOpts::default());
        let local = stream.local_addr().expect("reading the client's local address");
        PlainClient { stream, last_sent: Instant::now(), local }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.last_sent = Instant::now();
        self.stream
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("client {} writing {} bytes: {e}", self.local, bytes.len()));
    }

    /// A legacy heartbeat: `{0, 0}`.
    pub fn heartbeat(&mut self) {
        self.send(&legacy_header(0, 0));
    }

    /// Reads exactly `n` bytes within [`DEADLINE`].
    pub fn expect_bytes(&mut self, n: usize) -> Vec<u8> {
        let deadline = Instant::now() + DEADLINE;
        let mut out = vec![0u8; n];
        let mut have = 0;
        while have < n {
            match read_some(&mut self.stream, &mut out[have..], deadline) {
                Ok(k) => have += k,
                Err(end) => {
                    panic!("client {} expected {n} bytes, got {have} ({:?}) then {end:?}", self.local, &out[..have])
                }
            }
        }
        out
    }

    /// Reads whatever arrives until the daemon closes the connection;
    /// fails the test if it stays open past [`DEADLINE`].
    pub fn read_to_close(&mut self) -> Vec<u8> {
        let deadline = Instant::now() + DEADLINE;
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match read_some(&mut self.stream, &mut buf, deadline) {
                Ok(k) => out.extend_from_slice(&buf[..k]),
                Err(end) if end.is_closed() => return out,
                Err(end) => {
                    panic!("client {} expected the daemon to close, got {end:?} after {} bytes", self.local, out.len())
                }
            }
        }
    }

    pub fn fin(&self) {
        self.stream.shutdown(Shutdown::Write).expect("shutdown(SHUT_WR)");
    }

    pub fn reset(self) {
        reset(self.stream);
    }
}

// ---------------------------------------------------------------------------
// Event audit
// ---------------------------------------------------------------------------

/// Online and offline events of a log, by session.
#[derive(Debug, Default)]
pub struct Audit {
    pub online: HashMap<u64, Vec<Line>>,
    pub offline: HashMap<u64, Vec<Line>>,
}

impl Audit {
    pub fn of(lines: &[Line]) -> Audit {
        let mut a = Audit::default();
        for l in lines {
            if l.is("online") {
                a.online.entry(l.num("session")).or_default().push(l.clone());
            } else if l.is("offline") {
                a.offline.entry(l.num("session")).or_default().push(l.clone());
            }
        }
        a
    }

    /// Checks PROTOCOL.md's rule: every online event is followed by exactly
    /// one offline event of the same session, and no offline event lacks
    /// its online event. Returns the problems found.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (s, ons) in &self.online {
            if ons.len() != 1 {
                out.push(format!("session {s}: {} online events", ons.len()));
            }
            match self.offline.get(s).map(Vec::as_slice) {
                None | Some([]) => out.push(format!("session {s}: online but no offline event")),
                Some([off]) => {
                    if off.index < ons[0].index {
                        out.push(format!("session {s}: offline before online"));
                    }
                    for key in ["client", "peer", "listener"] {
                        if off.get(key) != ons[0].get(key) {
                            out.push(format!(
                                "session {s}: {key} differs between online ({:?}) and offline ({:?})",
                                ons[0].get(key),
                                off.get(key)
                            ));
                        }
                    }
                }
                Some(offs) => out.push(format!("session {s}: {} offline events", offs.len())),
            }
        }
        for s in self.offline.keys() {
            if !self.online.contains_key(s) {
                out.push(format!("session {s}: offline without online"));
            }
        }
        out
    }

    /// The reason of the session's offline event, if it has exactly one.
    pub fn reason(&self, session: u64) -> Option<&str> {
        match self.offline.get(&session).map(Vec::as_slice) {
            Some([off]) => off.get("reason"),
            _ => None,
        }
    }
}

/// Milliseconds of a duration as f64, for reports.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Signed milliseconds from `from` to `to`.
pub fn signed_ms(from: Instant, to: Instant) -> f64 {
    if to >= from {
        ms(to - from)
    } else {
        -ms(from - to)
    }
}
