//! The client agent against the real daemon over loopback.
//!
//! Each test starts `heartbeatd` with a temp config (port 0 unless it needs
//! a fixed one), reads the bound address from its `listening` line, runs
//! the `heartbeat` binary (or the library) against it, and waits on log
//! lines with deadlines. Every spawned process is killed when its guard
//! drops, on every path. Timing assertions carry generous slack: the
//! machine has 2 cores and the tests run in parallel. Measured numbers are
//! printed (`cargo test -- --nocapture` shows them).

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use heartbeatd::client::{self, AgentConfig, LostReason, State, StopReason};

const DAEMON: &str = env!("CARGO_BIN_EXE_heartbeatd");
const AGENT: &str = env!("CARGO_BIN_EXE_heartbeat");

/// Listener interval in most tests, and the timeout it gives with 3 misses.
const INTERVAL: Duration = Duration::from_millis(200);
const TIMEOUT: Duration = Duration::from_millis(600);

/// Deadline for things that should happen "at once" on a loaded machine.
const SOON: Duration = Duration::from_secs(5);

// ---- harness -------------------------------------------------------------

/// A line a child wrote to stderr, and when the test read it.
#[derive(Clone, Debug)]
struct Line {
    at: Instant,
    text: String,
}

/// A spawned process whose stderr is read line by line; killed on drop.
struct Proc {
    name: String,
    child: Child,
    rx: Receiver<Line>,
    lines: Vec<Line>,
    /// Lines before this index have been matched by a wait already.
    cursor: usize,
    exited: Option<ExitStatus>,
}

impl Proc {
    fn spawn(name: &str, cmd: &mut Command) -> Proc {
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawning {name}: {e}"));
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for text in BufReader::new(stderr).lines() {
                let Ok(text) = text else { break };
                if tx.send(Line { at: Instant::now(), text }).is_err() {
                    break;
                }
            }
        });
        Proc { name: name.to_string(), child, rx, lines: Vec::new(), cursor: 0, exited: None }
    }

    fn pid(&self) -> libc::pid_t {
        libc::pid_t::try_from(self.child.id()).expect("pid fits")
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: plain kill(2) on a child we own and have not reaped.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill({}, {signal})", self.name);
    }

    /// Takes one more line, waiting until `until`; false on timeout or EOF.
    fn pump(&mut self, until: Instant) -> bool {
        let left = until.saturating_duration_since(Instant::now());
        match self.rx.recv_timeout(left) {
            Ok(line) => {
                self.lines.push(line);
                true
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => false,
        }
    }

    /// The next unmatched line satisfying `pred` within `within`, if any.
    fn find(&mut self, within: Duration, pred: impl Fn(&str) -> bool) -> Option<Line> {
        let until = Instant::now() + within;
        let mut scanned = self.cursor;
        loop {
            while scanned < self.lines.len() {
                if pred(&self.lines[scanned].text) {
                    self.cursor = scanned + 1;
                    return Some(self.lines[scanned].clone());
                }
                scanned += 1;
            }
            if !self.pump(until) {
                // EOF comes at once, a timeout only at `until`: either way
                // nothing more can match in time.
                if Instant::now() >= until || self.lines.len() == scanned {
                    return None;
                }
            }
        }
    }

    /// Like [`Proc::find`], but a missing line fails the test with the log.
    fn wait(&mut self, within: Duration, what: &str, pred: impl Fn(&str) -> bool) -> Line {
        match self.find(within, pred) {
            Some(line) => line,
            None => {
                let log = self.dump();
                panic!("{}: no {what} within {within:?}; log:\n{log}", self.name)
            }
        }
    }

    /// Waits for a line containing every one of `parts`.
    fn wait_for(&mut self, within: Duration, parts: &[&str]) -> Line {
        let what = format!("line with {parts:?}");
        self.wait(within, &what, |l| parts.iter().all(|p| l.contains(p)))
    }

    /// True if some line read so far (matched or not) contains `part`.
    fn saw(&self, part: &str) -> bool {
        self.lines.iter().any(|l| l.text.contains(part))
    }

    /// Waits for the process to exit: its stderr closes first.
    fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let until = Instant::now() + within;
        while self.pump(until) {}
        for _ in 0..100 {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.exited = Some(status);
                return status;
            }
            if Instant::now() >= until {
                break;
            }
            // stderr is closed, so the process is exiting: reaping it is a
            // matter of the kernel's bookkeeping, not of the test's timing.
            thread::sleep(Duration::from_millis(10));
        }
        let log = self.dump();
        panic!("{} did not exit within {within:?}; log:\n{log}", self.name);
    }

    fn kill_now(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            self.exited = self.child.wait().ok();
        }
    }

    fn dump(&mut self) -> String {
        while let Ok(line) = self.rx.try_recv() {
            self.lines.push(line);
        }
        self.lines.iter().map(|l| format!("  {}\n", l.text)).collect()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill_now();
    }
}

/// A temp directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("heartbeat-agent-test-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A daemon config: one native listener named `main`.
fn config(address: &str, interval: Duration, listener_extra: &str, daemon_extra: &str) -> String {
    format!(
        "[daemon]\ntick = \"20ms\"\n{daemon_extra}\n\n[[listener]]\nname = \"main\"\naddress = \"{address}\"\n\
         protocol = \"native\"\ninterval = \"{}ms\"\nmisses = 3\n{listener_extra}\n",
        interval.as_millis()
    )
}

/// A running daemon, its config file and its bound address.
struct Daemon {
    proc: Proc,
    config: PathBuf,
    addr: SocketAddr,
}

impl Daemon {
    fn start(dir: &TempDir, config_text: &str) -> Daemon {
        let config = dir.path().join("heartbeatd.toml");
        fs::write(&config, config_text).expect("write config");
        let mut proc = Proc::spawn("heartbeatd", Command::new(DAEMON).arg("-c").arg(&config));
        let line = proc.wait_for(SOON, &["listening listener=main"]);
        let addr = field(&line.text, "address").parse().expect("address in listening line");
        Daemon { proc, config, addr }
    }

    fn server(&self) -> String {
        self.addr.to_string()
    }
}

/// Starts `heartbeat run` at debug level (one line per PING).
fn agent(server: &str, id: &str, extra: &[&str]) -> Proc {
    let mut cmd = Command::new(AGENT);
    cmd.args(["run", "--server", server, "--id", id, "--log-level", "debug"]).args(extra);
    Proc::spawn(&format!("heartbeat[{id}]"), &mut cmd)
}

/// The value of `key=` in a logfmt line (bare values only).
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let needle = format!(" {key}=");
    let start = line.find(&needle).unwrap_or_else(|| panic!("no {key}= in {line:?}")) + needle.len();
    line[start..].split(' ').next().unwrap_or("")
}

/// The agent's own timestamp of a log line (RFC 3339, UTC), as seconds of
/// the day: more precise than when the test read the line.
fn stamp(line: &str) -> f64 {
    let time = line.split(' ').next().and_then(|t| t.split_once('T')).map(|(_, t)| t.trim_end_matches('Z'));
    let parts: Vec<f64> = time.expect("timestamp").split(':').map(|p| p.parse().expect("number")).collect();
    parts[0] * 3600.0 + parts[1] * 60.0 + parts[2]
}

/// Gaps between consecutive PING lines, in ms.
fn ping_gaps(agent: &mut Proc, count: usize, within: Duration) -> Vec<f64> {
    let stamps: Vec<f64> =
        (0..=count).map(|_| stamp(&agent.wait(within, "ping", |l| l.contains(" ping ")).text)).collect();
    // A gap across midnight would be negative by a day.
    stamps.windows(2).map(|w| ((w[1] - w[0]).rem_euclid(86_400.0)) * 1000.0).collect()
}

/// A loopback port nothing listens on.
fn dead_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

// ---- tests ---------------------------------------------------------------

#[test]
fn agent_goes_online_and_pings_at_the_welcome_interval() {
    let dir = TempDir::new();
    let mut daemon = Daemon::start(&dir, &config("127.0.0.1:0", INTERVAL, "", ""));
    let mut agent = agent(&daemon.server(), "dev-42", &[]);

    let connected = agent.wait_for(SOON, &["connected ", "id=dev-42", "interval_ms=200", "timeout_ms=600"]);
    let online = daemon.proc.wait_for(SOON, &["online client=dev-42 ", "proto=native"]);
    assert_eq!(field(&connected.text, "session"), field(&online.text, "session"));
    // The socket options derived from a 200 ms interval.
    assert!(
        agent.saw("keepalive=true keepalive_idle_s=1 keepalive_interval_s=1 keepalive_count=3 user_timeout_ms=4000")
    );

    let gaps = ping_gaps(&mut agent, 8, SOON);
    println!("ping gaps at interval 200 ms: {gaps:.1?}");
    for gap in &gaps {
        // Up to 10 % early by design, never late beyond scheduling noise.
        assert!((175.0..=320.0).contains(gap), "gap {gap:.1} ms not within [180, 200] + slack: {gaps:.1?}");
    }
    let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
    assert!(mean < 210.0, "mean gap {mean:.1} ms: PINGs are not at the interval");
    assert!(agent.saw("pong "), "no PONG answered");
    assert!(!daemon.proc.saw("offline client=dev-42"), "daemon dropped the agent:\n{}", daemon.proc.dump());

    agent.signal(libc::SIGTERM);
    assert!(agent.wait_exit(SOON).success(), "SIGTERM must exit 0");
    daemon.proc.wait_for(SOON, &["offline client=dev-42 ", "reason=left"]);
}

#[test]
fn agent_adopts_the_interval_of_a_reload() {
    let dir = TempDir::new();
    let mut daemon = Daemon::start(&dir, &config("127.0.0.1:0", INTERVAL, "", ""));
    let mut agent = agent(&daemon.server(), "reload-1", &[]);
    agent.wait_for(SOON, &["connected ", "interval_ms=200"]);
    ping_gaps(&mut agent, 2, SOON);

    // Same listener (name, address, protocol), new interval: the daemon
    // sends a fresh WELCOME instead of closing the listener.
    // (The address stays as written, port 0: a changed address would
    // reopen the listener and drop its clients.)
    fs::write(&daemon.config, config("127.0.0.1:0", Duration::from_millis(500), "", "")).expect("rewrite config");
    daemon.proc.signal(libc::SIGHUP);
    daemon.proc.wait_for(SOON, &["reloaded ", "changed=1"]);
    agent.wait_for(SOON, &["welcome-updated ", "interval_ms=500", "timeout_ms=1500"]);

    // The first PING after the update may still be due on the old clock;
    // the ones after follow the new interval.
    agent.wait(SOON, "ping", |l| l.contains(" ping "));
    let gaps = ping_gaps(&mut agent, 3, SOON);
    println!("ping gaps after reload to 500 ms: {gaps:.1?}");
    for gap in &gaps {
        assert!((445.0..=650.0).contains(gap), "gap {gap:.1} ms after reload to 500 ms: {gaps:.1?}");
    }
    assert!(!daemon.proc.saw("offline client=reload-1"));

    agent.signal(libc::SIGINT);
    assert!(agent.wait_exit(SOON).success(), "SIGINT must exit 0");
    daemon.proc.wait_for(SOON, &["offline client=reload-1 ", "reason=left"]);
}

#[test]
fn frozen_daemon_is_lost_within_its_timeout_and_found_after_sigcont() {
    let dir = TempDir::new();
    let mut daemon = Daemon::start(&dir, &config("127.0.0.1:0", INTERVAL, "", ""));
    let mut agent = agent(&daemon.server(), "frozen-1", &["--connect-timeout", "1s", "--backoff-cap", "1s"]);
    agent.wait_for(SOON, &["connected "]);
    daemon.proc.wait_for(SOON, &["online client=frozen-1 "]);
    // Online for more than one timeout, so the backoff starts from its base.
    ping_gaps(&mut agent, 5, SOON);

    let frozen_at = Instant::now();
    daemon.proc.signal(libc::SIGSTOP);
    let lost = agent.wait_for(SOON, &["daemon-lost ", "reason=timeout"]);
    let noticed = lost.at.duration_since(frozen_at);
    // The last PONG came about one interval or less before the freeze;
    // silent_ms below is the exact check that it waited out the timeout.
    assert!(noticed >= TIMEOUT / 2, "lost too early: {noticed:?}");
    assert!(noticed <= TIMEOUT + Duration::from_millis(700), "lost too late: {noticed:?}");
    let silent = field(&lost.text, "silent_ms").parse::<u64>().expect("silent_ms");
    assert!(silent >= 600, "declared lost after {silent} ms of silence, before the timeout");
    agent.wait_for(SOON, &["reconnecting ", "in_ms="]);

    // The kernel still accepts connections for the stopped process, so the
    // agent connects but gets no WELCOME and keeps retrying until thawed.
    agent.wait_for(SOON, &["handshake-failed ", "reason=handshake-timeout"]);
    let thawed_at = Instant::now();
    daemon.proc.signal(libc::SIGCONT);
    let back = agent.wait_for(SOON, &["connected "]);
    let reconnect = back.at.duration_since(thawed_at);
    let session = field(&back.text, "session").to_string();
    daemon.proc.wait_for(SOON, &["online client=frozen-1 ", &format!("session={session}")]);
    // In the handshake wait at thaw time: WELCOME at once. Backing off:
    // within the cap. Plus slack for a loaded machine.
    assert!(reconnect <= Duration::from_millis(2_500), "reconnect after SIGCONT took {reconnect:?}");
    println!(
        "MEASURED frozen daemon: lost {} ms after SIGSTOP, after {silent} ms of silence \
         (timeout 600 ms, interval 200 ms); reconnected {} ms after SIGCONT",
        noticed.as_millis(),
        reconnect.as_millis()
    );
}

#[test]
fn killed_daemon_restarted_on_the_same_port_is_found_again() {
    // The port is reserved first, so the agent can start before any daemon
    // exists: its refused attempts climb the backoff schedule, which the
    // healthy connection that follows must reset.
    let server = dead_port().to_string();
    let cap = "1s";
    let mut agent = agent(&server, "phoenix", &["--backoff-base", "100ms", "--backoff-cap", cap]);
    for _ in 0..3 {
        agent.wait_for(SOON, &["connect-failed ", "refused"]);
    }
    agent.wait_for(SOON, &["reconnecting ", "attempt=3"]);
    let dir = TempDir::new();
    let mut first = Daemon::start(&dir, &config(&server, INTERVAL, "", ""));
    agent.wait_for(SOON, &["connected "]);
    first.proc.wait_for(SOON, &["online client=phoenix "]);
    // Online for more than one timeout (600 ms): a healthy connection.
    ping_gaps(&mut agent, 4, SOON);

    let killed_at = Instant::now();
    first.proc.signal(libc::SIGKILL);
    first.proc.wait_exit(SOON);
    let lost = agent.wait_for(SOON, &["daemon-lost "]);
    let noticed = lost.at.duration_since(killed_at);
    assert!(["closed", "reset"].contains(&field(&lost.text, "reason")), "{}", lost.text);
    // The schedule starts over: the first delay is within the base.
    let first_retry = agent.wait_for(SOON, &["reconnecting "]);
    assert_eq!(field(&first_retry.text, "attempt"), "1", "{}", first_retry.text);
    assert!(field(&first_retry.text, "in_ms").parse::<u64>().expect("in_ms") <= 100, "{}", first_retry.text);
    // While it is down, attempts are refused and spaced by the backoff.
    agent.wait_for(SOON, &["connect-failed ", "refused"]);
    agent.wait_for(SOON, &["reconnecting ", "attempt=2"]);

    // Restart on the same port (the daemon binds with SO_REUSEADDR).
    let dir2 = TempDir::new();
    let mut second = Daemon::start(&dir2, &config(&server, INTERVAL, "", ""));
    let listening_at = Instant::now();
    assert_eq!(second.server(), server);
    let back = agent.wait_for(SOON, &["connected "]);
    let online = second.proc.wait_for(SOON, &["online client=phoenix "]);
    let reconnect = back.at.saturating_duration_since(listening_at);
    // Within one capped backoff delay of the daemon's return, plus slack.
    assert!(reconnect <= Duration::from_millis(1_000 + 1_000), "reconnect took {reconnect:?} with cap {cap}");
    assert_eq!(field(&back.text, "session"), field(&online.text, "session"));
    println!(
        "MEASURED killed daemon: lost after {} ms (reason {}); reconnected {} ms after the restart \
         (backoff base 100 ms, cap {cap})",
        noticed.as_millis(),
        field(&lost.text, "reason"),
        reconnect.as_millis()
    );
}

#[test]
fn second_agent_with_the_same_id_replaces_the_first_which_exits() {
    let dir = TempDir::new();
    let mut daemon = Daemon::start(&dir, &config("127.0.0.1:0", INTERVAL, "", ""));
    let mut first = agent(&daemon.server(), "twin", &["--backoff-base", "50ms", "--backoff-cap", "200ms"]);
    first.wait_for(SOON, &["connected "]);
    let first_online = daemon.proc.wait_for(SOON, &["online client=twin "]);

    let mut second = agent(&daemon.server(), "twin", &["--backoff-base", "50ms", "--backoff-cap", "200ms"]);
    second.wait_for(SOON, &["connected "]);
    daemon.proc.wait_for(
        SOON,
        &["offline client=twin ", &format!("session={}", field(&first_online.text, "session")), "reason=replaced"],
    );
    let second_online = daemon.proc.wait_for(SOON, &["online client=twin "]);

    let status = first.wait_exit(SOON);
    assert!(!status.success(), "the replaced agent must exit non-zero");
    let log = first.dump();
    assert!(log.contains("stopped ") && log.contains("reason=replaced"), "{log}");
    assert!(log.contains("heartbeat: replaced: another agent connected with the same id"), "{log}");
    assert!(!log.contains("reconnecting "), "the replaced agent fought back:\n{log}");

    // The second keeps the session: no further takeover.
    assert!(
        daemon.proc.find(Duration::from_secs(1), |l| l.contains("client=twin ")).is_none(),
        "{}",
        daemon.proc.dump()
    );
    assert!(!second.saw("daemon-lost"));
    second.signal(libc::SIGTERM);
    assert!(second.wait_exit(SOON).success());
    daemon.proc.wait_for(
        SOON,
        &["offline client=twin ", &format!("session={}", field(&second_online.text, "session")), "reason=left"],
    );
}

#[test]
fn check_exit_codes_for_a_live_a_frozen_and_a_missing_daemon() {
    let dir = TempDir::new();
    let daemon = Daemon::start(&dir, &config("127.0.0.1:0", INTERVAL, "", ""));

    let out = Command::new(AGENT).args(["check", "--server", &daemon.server()]).output().expect("run check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("check (live): {stdout}");
    assert!(out.status.success(), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.starts_with("healthy "), "{stdout}");
    assert!(stdout.contains("interval_ms=200 timeout_ms=600 rtt_us="), "{stdout}");

    daemon.proc.signal(libc::SIGSTOP);
    let started = Instant::now();
    let out = Command::new(AGENT)
        .args(["check", "--server", &daemon.server(), "--timeout", "500ms"])
        .output()
        .expect("run check");
    let took = started.elapsed();
    daemon.proc.signal(libc::SIGCONT);
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("check (frozen, {} ms): {stdout}", took.as_millis());
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("reason=timeout"), "{stdout}");
    assert!(took < Duration::from_secs(3), "check overran its timeout: {took:?}");

    let missing = dead_port();
    let out = Command::new(AGENT).args(["check", "--server", &missing.to_string()]).output().expect("run check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("check (missing): {stdout}");
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("unhealthy ") && stdout.contains("reason=connect-failed"), "{stdout}");

    let out = Command::new(AGENT).args(["check", "--server", "no-port-here"]).output().expect("run check");
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn auth_failure_stops_and_a_token_file_gets_in() {
    let dir = TempDir::new();
    let mut daemon = Daemon::start(&dir, &config("127.0.0.1:0", INTERVAL, "tokens = [\"s3cret\"]", ""));

    let mut rejected = agent(&daemon.server(), "auth-1", &[]);
    let status = rejected.wait_exit(SOON);
    assert!(!status.success());
    let log = rejected.dump();
    assert!(log.contains("reason=auth") && log.contains("heartbeat: authentication failed"), "{log}");
    assert!(!log.contains("reconnecting "), "{log}");

    let token = dir.path().join("token");
    fs::write(&token, "s3cret\n").expect("write token");
    let mut admitted = agent(&daemon.server(), "auth-1", &["--token-file", token.to_str().expect("utf-8 path")]);
    admitted.wait_for(SOON, &["connected "]);
    daemon.proc.wait_for(SOON, &["online client=auth-1 "]);

    let out = Command::new(AGENT)
        .args(["check", "--server", &daemon.server(), "--token-file", token.to_str().expect("utf-8 path")])
        .output()
        .expect("run check");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn full_daemon_is_retried_with_backoff_until_a_place_frees() {
    let dir = TempDir::new();
    let mut daemon = Daemon::start(&dir, &config("127.0.0.1:0", INTERVAL, "", "max_clients = 1"));
    let mut first = agent(&daemon.server(), "full-1", &[]);
    first.wait_for(SOON, &["connected "]);
    daemon.proc.wait_for(SOON, &["online client=full-1 "]);

    let mut second = agent(&daemon.server(), "full-2", &["--backoff-base", "50ms", "--backoff-cap", "300ms"]);
    second.wait_for(SOON, &["handshake-failed ", "reason=daemon-error", "ERROR 5"]);
    second.wait_for(SOON, &["reconnecting "]);
    second.wait_for(SOON, &["handshake-failed ", "ERROR 5"]);

    first.signal(libc::SIGTERM);
    assert!(first.wait_exit(SOON).success());
    second.wait_for(SOON, &["connected "]);
    daemon.proc.wait_for(SOON, &["online client=full-2 "]);
}

#[test]
fn library_handle_reports_status_and_stops_with_bye() {
    let dir = TempDir::new();
    let mut daemon = Daemon::start(&dir, &config("127.0.0.1:0", INTERVAL, "", ""));
    let mut cfg = AgentConfig::new(daemon.server(), "lib-1");
    cfg.seed = Some(7);
    let agent = client::start(cfg).expect("start");

    let status = agent.wait_for(SOON, |s| s.pongs_received >= 2).expect("online with PONGs");
    match status.state {
        State::Online { interval, timeout, session, .. } => {
            assert_eq!((interval, timeout), (INTERVAL, TIMEOUT));
            daemon.proc.wait_for(SOON, &["online client=lib-1 ", &format!("session={session}")]);
        }
        other => panic!("not online: {other:?}"),
    }
    let rtt = status.last_rtt.expect("an RTT");
    assert!(rtt < Duration::from_millis(200), "loopback RTT {rtt:?}");
    assert_eq!(status.connects, 1);
    assert!(status.pings_sent >= 2);

    let stopping = Instant::now();
    let last = agent.stop();
    let took = stopping.elapsed();
    assert_eq!(last.stopped(), Some(&StopReason::Requested));
    assert!(took < Duration::from_millis(500), "stop took {took:?}");
    daemon.proc.wait_for(SOON, &["offline client=lib-1 ", "reason=left"]);
}

#[test]
fn library_stop_is_prompt_while_backing_off() {
    let mut cfg = AgentConfig::new(dead_port().to_string(), "lib-2");
    cfg.backoff_base = Duration::from_secs(20);
    cfg.backoff_cap = Duration::from_secs(20);
    cfg.seed = Some(1);
    let agent = client::start(cfg).expect("start");
    let status = agent
        .wait_for(SOON, |s| matches!(s.state, State::BackingOff { delay, .. } if delay > Duration::from_millis(500)))
        .expect("backing off");
    assert_eq!(status.last_lost, Some(LostReason::ConnectFailed));
    assert!(status.last_error.as_deref().is_some_and(|e| e.contains("refused")), "{:?}", status.last_error);

    let stopping = Instant::now();
    let last = agent.stop();
    assert!(stopping.elapsed() < Duration::from_millis(500), "stop waited for the backoff");
    assert_eq!(last.stopped(), Some(&StopReason::Requested));
}

#[test]
fn library_rejects_an_invalid_config() {
    let err = client::start(AgentConfig::new("127.0.0.1:7700", "has space")).err().expect("invalid id");
    assert!(err.to_string().contains("id"), "{err}");
    let err = client::start(AgentConfig::new("no-port", "ok")).err().expect("invalid server");
    assert!(err.to_string().contains("HOST:PORT"), "{err}");
}
