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
use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::time::{Duration, Instant};

use heartbeatd::client::{self, AgentConfig, LostReason, State, StopReason};
use heartbeatd_harness::{bin, config, listener, Daemon, Output, Proc, TempDir};

/// Listener interval in most tests, and the timeout it gives with 3 misses.
const INTERVAL: Duration = Duration::from_millis(200);
const TIMEOUT: Duration = Duration::from_millis(600);

/// Deadline for things that should happen "at once" on a loaded machine.
const SOON: Duration = Duration::from_secs(5);

// ---- helpers -------------------------------------------------------------

/// A daemon config: one native listener named `main` at `address`, tick
/// 20 ms, misses 3.
fn main_listener(address: &str, interval: Duration, listener_extra: &str, daemon_extra: &str) -> String {
    let body = format!("interval = \"{}ms\"\nmisses = 3\n{listener_extra}", interval.as_millis());
    config("20ms", daemon_extra, &[listener("main", "native", address, &body)])
}

/// Starts the daemon on `config_text` and waits until `main` listens.
fn start_daemon(config_text: &str) -> Daemon {
    let daemon = Daemon::start(config_text);
    daemon.addr("main");
    daemon
}

/// The `HOST:PORT` of the daemon's listener `main`.
fn address(daemon: &Daemon) -> String {
    daemon.addr("main").to_string()
}

/// Starts `heartbeat run` at debug level (one line per PING), following its
/// stderr.
fn agent(server: &str, id: &str, extra: &[&str]) -> Proc {
    let mut cmd = Command::new(bin("heartbeat"));
    cmd.args(["run", "--server", server, "--id", id, "--log-level", "debug"]).args(extra);
    Proc::spawn(&format!("heartbeat[{id}]"), cmd, Output::Stderr)
}

/// The agent's own timestamp of a log line (RFC 3339, UTC), as seconds of
/// the day: more precise than when the test read the line.
fn stamp(line: &str) -> f64 {
    let time = line.split(' ').next().and_then(|t| t.split_once('T')).map(|(_, t)| t.trim_end_matches('Z'));
    let parts: Vec<f64> = time.expect("timestamp").split(':').map(|p| p.parse().expect("number")).collect();
    parts[0] * 3600.0 + parts[1] * 60.0 + parts[2]
}

/// Gaps between consecutive PING lines, in ms.
fn ping_gaps(agent: &Proc, count: usize, within: Duration) -> Vec<f64> {
    let stamps: Vec<f64> = (0..=count).map(|_| stamp(&agent.wait_next(" ping ", within).text)).collect();
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
    let daemon = start_daemon(&main_listener("127.0.0.1:0", INTERVAL, "", ""));
    let agent = agent(&address(&daemon), "dev-42", &[]);

    let connected = agent.wait_next(["connected ", "id=dev-42", "interval_ms=200", "timeout_ms=600"], SOON);
    let online = daemon.wait_next(["online client=dev-42 ", "protocol=native"], SOON);
    assert_eq!(connected.field("session"), online.field("session"));
    // The socket options derived from a 200 ms interval.
    assert!(
        agent.saw("keepalive=true keepalive_idle_s=1 keepalive_interval_s=1 keepalive_count=3 user_timeout_ms=4000")
    );

    let gaps = ping_gaps(&agent, 8, SOON);
    println!("ping gaps at interval 200 ms: {gaps:.1?}");
    for gap in &gaps {
        // Up to 10 % early by design, never late beyond scheduling noise.
        assert!((175.0..=320.0).contains(gap), "gap {gap:.1} ms not within [180, 200] + slack: {gaps:.1?}");
    }
    let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
    assert!(mean < 210.0, "mean gap {mean:.1} ms: PINGs are not at the interval");
    assert!(agent.saw("pong "), "no PONG answered");
    assert!(!daemon.saw("offline client=dev-42"), "daemon dropped the agent:\n{}", daemon.log_text());

    agent.signal(libc::SIGTERM);
    assert!(agent.wait_exit(SOON).success(), "SIGTERM must exit 0");
    daemon.wait_next(["offline client=dev-42 ", "reason=left"], SOON);
}

#[test]
fn agent_adopts_the_interval_of_a_reload() {
    let daemon = start_daemon(&main_listener("127.0.0.1:0", INTERVAL, "", ""));
    let agent = agent(&address(&daemon), "reload-1", &[]);
    agent.wait_next(["connected ", "interval_ms=200"], SOON);
    ping_gaps(&agent, 2, SOON);

    // Same listener (name, address, protocol), new interval: the daemon
    // sends a fresh WELCOME instead of closing the listener.
    // (The address stays as written, port 0: a changed address would
    // reopen the listener and drop its clients.)
    fs::write(&daemon.config_path, main_listener("127.0.0.1:0", Duration::from_millis(500), "", ""))
        .expect("rewrite config");
    daemon.signal(libc::SIGHUP);
    daemon.wait_next(["reloaded ", "changed=1"], SOON);
    agent.wait_next(["welcome-updated ", "interval_ms=500", "timeout_ms=1500"], SOON);

    // The first PING after the update may still be due on the old clock;
    // the ones after follow the new interval.
    agent.wait_next(" ping ", SOON);
    let gaps = ping_gaps(&agent, 3, SOON);
    println!("ping gaps after reload to 500 ms: {gaps:.1?}");
    for gap in &gaps {
        assert!((445.0..=650.0).contains(gap), "gap {gap:.1} ms after reload to 500 ms: {gaps:.1?}");
    }
    assert!(!daemon.saw("offline client=reload-1"));

    agent.signal(libc::SIGINT);
    assert!(agent.wait_exit(SOON).success(), "SIGINT must exit 0");
    daemon.wait_next(["offline client=reload-1 ", "reason=left"], SOON);
}

#[test]
fn frozen_daemon_is_lost_within_its_timeout_and_found_after_sigcont() {
    let daemon = start_daemon(&main_listener("127.0.0.1:0", INTERVAL, "", ""));
    let agent = agent(&address(&daemon), "frozen-1", &["--connect-timeout", "1s", "--backoff-cap", "1s"]);
    agent.wait_next(["connected "], SOON);
    daemon.wait_next(["online client=frozen-1 "], SOON);
    // Online for more than one timeout, so the backoff starts from its base.
    ping_gaps(&agent, 5, SOON);

    let frozen_at = Instant::now();
    daemon.signal(libc::SIGSTOP);
    let lost = agent.wait_next(["daemon-lost ", "reason=timeout"], SOON);
    let noticed = lost.at.duration_since(frozen_at);
    // The last PONG came about one interval or less before the freeze;
    // silent_ms below is the exact check that it waited out the timeout.
    assert!(noticed >= TIMEOUT / 2, "lost too early: {noticed:?}");
    assert!(noticed <= TIMEOUT + Duration::from_millis(700), "lost too late: {noticed:?}");
    let silent = lost.field("silent_ms").parse::<u64>().expect("silent_ms");
    assert!(silent >= 600, "declared lost after {silent} ms of silence, before the timeout");
    agent.wait_next(["reconnecting ", "in_ms="], SOON);

    // The kernel still accepts connections for the stopped process, so the
    // agent connects but gets no WELCOME and keeps retrying until thawed.
    agent.wait_next(["handshake-failed ", "reason=handshake-timeout"], SOON);
    let thawed_at = Instant::now();
    daemon.signal(libc::SIGCONT);
    let back = agent.wait_next(["connected "], SOON);
    let reconnect = back.at.duration_since(thawed_at);
    let session = back.field("session").to_string();
    daemon.wait_next(["online client=frozen-1 ", &format!("session={session}")], SOON);
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
    let agent = agent(&server, "phoenix", &["--backoff-base", "100ms", "--backoff-cap", cap]);
    for _ in 0..3 {
        agent.wait_next(["connect-failed ", "refused"], SOON);
    }
    agent.wait_next(["reconnecting ", "attempt=3"], SOON);
    let first = start_daemon(&main_listener(&server, INTERVAL, "", ""));
    agent.wait_next(["connected "], SOON);
    first.wait_next(["online client=phoenix "], SOON);
    // Online for more than one timeout (600 ms): a healthy connection.
    ping_gaps(&agent, 4, SOON);

    let killed_at = Instant::now();
    first.signal(libc::SIGKILL);
    first.wait_exit(SOON);
    let lost = agent.wait_next(["daemon-lost "], SOON);
    let noticed = lost.at.duration_since(killed_at);
    assert!(["closed", "reset"].contains(&lost.field("reason")), "{}", lost.text);
    // The schedule starts over: the first delay is within the base.
    let first_retry = agent.wait_next(["reconnecting "], SOON);
    assert_eq!(first_retry.field("attempt"), "1", "{}", first_retry.text);
    assert!(first_retry.field("in_ms").parse::<u64>().expect("in_ms") <= 100, "{}", first_retry.text);
    // While it is down, attempts are refused and spaced by the backoff.
    agent.wait_next(["connect-failed ", "refused"], SOON);
    agent.wait_next(["reconnecting ", "attempt=2"], SOON);

    // Restart on the same port (the daemon binds with SO_REUSEADDR).
    let second = start_daemon(&main_listener(&server, INTERVAL, "", ""));
    let listening_at = Instant::now();
    assert_eq!(address(&second), server);
    let back = agent.wait_next(["connected "], SOON);
    let online = second.wait_next(["online client=phoenix "], SOON);
    let reconnect = back.at.saturating_duration_since(listening_at);
    // Within one capped backoff delay of the daemon's return, plus slack.
    assert!(reconnect <= Duration::from_millis(1_000 + 1_000), "reconnect took {reconnect:?} with cap {cap}");
    assert_eq!(back.field("session"), online.field("session"));
    println!(
        "MEASURED killed daemon: lost after {} ms (reason {}); reconnected {} ms after the restart \
         (backoff base 100 ms, cap {cap})",
        noticed.as_millis(),
        lost.field("reason"),
        reconnect.as_millis()
    );
}

#[test]
fn second_agent_with_the_same_id_replaces_the_first_which_exits() {
    let daemon = start_daemon(&main_listener("127.0.0.1:0", INTERVAL, "", ""));
    let first = agent(&address(&daemon), "twin", &["--backoff-base", "50ms", "--backoff-cap", "200ms"]);
    first.wait_next(["connected "], SOON);
    let first_online = daemon.wait_next(["online client=twin "], SOON);

    let second = agent(&address(&daemon), "twin", &["--backoff-base", "50ms", "--backoff-cap", "200ms"]);
    second.wait_next(["connected "], SOON);
    daemon.wait_next(
        ["offline client=twin ", &format!("session={}", first_online.field("session")), "reason=replaced"],
        SOON,
    );
    let second_online = daemon.wait_next(["online client=twin "], SOON);

    let status = first.wait_exit(SOON);
    assert!(!status.success(), "the replaced agent must exit non-zero");
    let log = first.text();
    assert!(log.contains("stopped ") && log.contains("reason=replaced"), "{log}");
    assert!(log.contains("heartbeat: replaced: another agent connected with the same id"), "{log}");
    assert!(!log.contains("reconnecting "), "the replaced agent fought back:\n{log}");

    // The second keeps the session: no further takeover.
    assert!(daemon.poll_next(&"client=twin ", Duration::from_secs(1)).is_none(), "{}", daemon.log_text());
    assert!(!second.saw("daemon-lost"));
    second.signal(libc::SIGTERM);
    assert!(second.wait_exit(SOON).success());
    daemon.wait_next(
        ["offline client=twin ", &format!("session={}", second_online.field("session")), "reason=left"],
        SOON,
    );
}

#[test]
fn check_exit_codes_for_a_live_a_frozen_and_a_missing_daemon() {
    let daemon = start_daemon(&main_listener("127.0.0.1:0", INTERVAL, "", ""));

    let out =
        Command::new(bin("heartbeat")).args(["check", "--server", &address(&daemon)]).output().expect("run check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("check (live): {stdout}");
    assert!(out.status.success(), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.starts_with("healthy "), "{stdout}");
    assert!(stdout.contains("interval_ms=200 timeout_ms=600 rtt_us="), "{stdout}");

    daemon.signal(libc::SIGSTOP);
    let started = Instant::now();
    let out = Command::new(bin("heartbeat"))
        .args(["check", "--server", &address(&daemon), "--timeout", "500ms"])
        .output()
        .expect("run check");
    let took = started.elapsed();
    daemon.signal(libc::SIGCONT);
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("check (frozen, {} ms): {stdout}", took.as_millis());
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("reason=timeout"), "{stdout}");
    assert!(took < Duration::from_secs(3), "check overran its timeout: {took:?}");

    let missing = dead_port();
    let out =
        Command::new(bin("heartbeat")).args(["check", "--server", &missing.to_string()]).output().expect("run check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("check (missing): {stdout}");
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("unhealthy ") && stdout.contains("reason=connect-failed"), "{stdout}");

    let out = Command::new(bin("heartbeat")).args(["check", "--server", "no-port-here"]).output().expect("run check");
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn auth_failure_stops_and_a_token_file_gets_in() {
    let daemon = start_daemon(&main_listener("127.0.0.1:0", INTERVAL, "tokens = [\"s3cret\"]", ""));

    let rejected = agent(&address(&daemon), "auth-1", &[]);
    let status = rejected.wait_exit(SOON);
    assert!(!status.success());
    let log = rejected.text();
    assert!(log.contains("reason=auth") && log.contains("heartbeat: authentication failed"), "{log}");
    assert!(!log.contains("reconnecting "), "{log}");

    let dir = TempDir::new("agent");
    let token = dir.join("token");
    fs::write(&token, "s3cret\n").expect("write token");
    let admitted = agent(&address(&daemon), "auth-1", &["--token-file", token.to_str().expect("utf-8 path")]);
    admitted.wait_next(["connected "], SOON);
    daemon.wait_next(["online client=auth-1 "], SOON);

    let out = Command::new(bin("heartbeat"))
        .args(["check", "--server", &address(&daemon), "--token-file", token.to_str().expect("utf-8 path")])
        .output()
        .expect("run check");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn full_daemon_is_retried_with_backoff_until_a_place_frees() {
    let daemon = start_daemon(&main_listener("127.0.0.1:0", INTERVAL, "", "max_clients = 1"));
    let first = agent(&address(&daemon), "full-1", &[]);
    first.wait_next(["connected "], SOON);
    daemon.wait_next(["online client=full-1 "], SOON);

    let second = agent(&address(&daemon), "full-2", &["--backoff-base", "50ms", "--backoff-cap", "300ms"]);
    second.wait_next(["handshake-failed ", "reason=daemon-error", "ERROR 5"], SOON);
    second.wait_next(["reconnecting "], SOON);
    second.wait_next(["handshake-failed ", "ERROR 5"], SOON);

    first.signal(libc::SIGTERM);
    assert!(first.wait_exit(SOON).success());
    second.wait_next(["connected "], SOON);
    daemon.wait_next(["online client=full-2 "], SOON);
}

#[test]
fn library_handle_reports_status_and_stops_with_bye() {
    let daemon = start_daemon(&main_listener("127.0.0.1:0", INTERVAL, "", ""));
    let mut cfg = AgentConfig::new(address(&daemon), "lib-1");
    cfg.seed = Some(7);
    let agent = client::start(cfg).expect("start");

    let status = agent.wait_for(SOON, |s| s.pongs_received >= 2).expect("online with PONGs");
    match status.state {
        State::Online { interval, timeout, session, .. } => {
            assert_eq!((interval, timeout), (INTERVAL, TIMEOUT));
            daemon.wait_next(["online client=lib-1 ", &format!("session={session}")], SOON);
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
    daemon.wait_next(["offline client=lib-1 ", "reason=left"], SOON);
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

/// `heartbeat run … 2>&1 | slow-reader`: lines the agent queued while its
/// stderr pipe was full still reach the reader when it stops on SIGTERM,
/// its last `stopped` line among them (the agent flushes at exit, up to
/// 1 s), rather than dying with the queue.
#[test]
fn agent_lines_queued_behind_a_full_stderr_are_written_at_exit() {
    use std::io::Read;
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::process::Stdio;

    let daemon = start_daemon(&main_listener("127.0.0.1:0", Duration::from_millis(20), "", ""));
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0, "pipe2");
    // SAFETY: both descriptors were just created and are owned here only.
    let (read_end, write_end) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // The smallest pipe (a page), so a few dozen debug lines fill it.
    // SAFETY: fcntl on a descriptor owned here, with an integer argument.
    let size = unsafe { libc::fcntl(fds[0], libc::F_SETPIPE_SZ, 4096) };
    assert!(size > 0, "F_SETPIPE_SZ: {}", std::io::Error::last_os_error());
    let mut child = Command::new(bin("heartbeat"))
        .args(["run", "--server", &address(&daemon), "--id", "piped", "--log-level", "debug"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(write_end))
        .spawn()
        .expect("spawning heartbeat run");
    daemon.wait(heartbeatd_harness::ev("online").kv("client", "piped"));
    // Nearly full once FIONREAD says the pipe holds all but 256 bytes (a
    // line is written whole or not at all, so the pipe may never hold
    // exactly its size); the next 100 ms of lines (a ping and a pong every
    // 20 ms, some 600 bytes) cannot all fit, and wait in the agent's queue.
    let deadline = Instant::now() + SOON;
    loop {
        let mut queued: libc::c_int = 0;
        // SAFETY: FIONREAD stores an int through the pointer it is given.
        assert_eq!(unsafe { libc::ioctl(fds[0], libc::FIONREAD, &mut queued) }, 0, "FIONREAD");
        if queued >= size - 256 {
            break;
        }
        assert!(Instant::now() < deadline, "the agent's stderr pipe did not fill ({queued} of {size} bytes)");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Lines queue behind the full pipe for a while, then the agent stops.
    let queued_from = Instant::now();
    while queued_from.elapsed() < Duration::from_millis(100) {
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: kill with our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) }, 0, "kill");
    // The reader comes back a little later: by then an agent that does not
    // flush at exit is gone with its queue; one that does is still waiting.
    let signalled = Instant::now();
    while signalled.elapsed() < Duration::from_millis(300) && matches!(child.try_wait(), Ok(None)) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut text = String::new();
    std::fs::File::from(read_end).read_to_string(&mut text).expect("reading the agent's stderr");
    let status = child.wait().expect("waiting for heartbeat run");
    assert!(status.success(), "{status:?}\n{text}");
    assert!(text.contains("stopping signal=15"), "no `stopping` line:\n{text}");
    assert!(text.lines().last().is_some_and(|l| l.contains("stopped ") && l.contains("id=piped")), "{text}");
}
