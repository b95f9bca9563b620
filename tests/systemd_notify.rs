//! heartbeatd speaks to systemd correctly without systemd running: the real
//! binary is started the way a service manager starts it, and the test plays
//! the manager's part over real sockets.
//!
//! What it proves:
//! - the unit files pass `systemd-analyze verify`, and the service's
//!   sandbox scores an overall exposure of at most 2.0;
//! - `sd_notify` through an `AF_UNIX` datagram `NOTIFY_SOCKET`: `READY=1`
//!   only once the listener accepts, a rate-limited `STATUS=` with the
//!   online count, `RELOADING=1` + `MONOTONIC_USEC=` then `READY=1` on
//!   SIGHUP (also when the new file is broken, with the failure in
//!   `STATUS=`), `STOPPING=1` on SIGTERM then a last `STATUS=stopped`,
//!   `WATCHDOG=1` at half of `WATCHDOG_USEC` and only for the process
//!   `WATCHDOG_PID` names; counts read "1 client", "1 listener";
//! - `heartbeatd --reload PID` (the unit's `ExecReload=`) exits 0 after a
//!   good reload and 1 with the error after one that failed in part (a new
//!   listener's port taken), which `STATUS=` names too;
//! - socket activation as systemd does it (fd 3, `LISTEN_FDS`,
//!   `LISTEN_PID`, `LISTEN_FDNAMES`): the socket is adopted by name or by
//!   address, a connection already waiting in its backlog is served, one
//!   adopted by name that serves another address than the config's fails
//!   the start, and fds meant for another pid are left alone;
//! - the journal sink against the native protocol: events carry their
//!   priority, `MESSAGE_ID` and `HEARTBEAT_*` fields, `MESSAGE` is the
//!   logfmt line, nothing is duplicated on stderr, and a stderr that is not
//!   the journal keeps plain text.

use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use heartbeatd::event::{OFFLINE_MESSAGE_ID, ONLINE_MESSAGE_ID};
use heartbeatd_harness::systemd::{
    assert_exposure_at_most, assert_units_verify, config_text, daemon_command, daemon_command_with_own_pid,
    dev_ino_of_new_file, monotonic_usec, parse_listening_address, pass_as_fd3, skip, which, FileDaemon, JournalEntry,
    JournalSocket, Notification, NotifySocket,
};
use heartbeatd_harness::{daemon_bin, hello_frame, listener, NativeClient, TempDir, BYE};

/// Time allowed for start-up, a reload or a stop. Generous: CI machines are
/// small and run tests in parallel.
const PROMPTLY: Duration = Duration::from_secs(10);

/// A temp dir with `heartbeatd.toml` (listener `main` on 127.0.0.1:0,
/// interval 1s, timeout 3s) and a bound `notify.sock`.
struct NotifyFixture {
    dir: TempDir,
    notify: NotifySocket,
}

impl NotifyFixture {
    fn new(label: &str) -> NotifyFixture {
        let dir = TempDir::new(label);
        std::fs::write(dir.join("heartbeatd.toml"), config_text("127.0.0.1:0", "1s", "3s")).expect("write config");
        let notify = NotifySocket::bind(&dir.join("notify.sock"));
        NotifyFixture { dir, notify }
    }

    fn config(&self) -> std::path::PathBuf {
        self.dir.join("heartbeatd.toml")
    }

    /// The plain daemon command with `NOTIFY_SOCKET` set.
    fn command(&self) -> Command {
        let mut cmd = daemon_command(&self.config());
        cmd.env("NOTIFY_SOCKET", self.notify.path());
        cmd
    }

    fn spawn(&self, cmd: Command) -> FileDaemon {
        FileDaemon::spawn(cmd, &self.dir.join("stderr.log"))
    }

    /// Waits for the first `READY=1` and returns everything received up to it.
    fn wait_ready(&self) -> Vec<Notification> {
        self.notify.recv_until("READY=1", PROMPTLY, |n| n.has("READY", "1"))
    }
}

fn texts(notes: &[Notification]) -> Vec<&str> {
    notes.iter().map(|n| n.text.as_str()).collect()
}

/// A STATUS-only update (not the one that comes with READY=1).
fn is_status_update(n: &Notification) -> bool {
    n.get("STATUS").is_some() && n.get("READY").is_none()
}

// ---- unit files -----------------------------------------------------------

/// Finds `systemd-analyze`, or reports the skip (a failure under CI).
fn systemd_analyze() -> Option<std::path::PathBuf> {
    let found = which("systemd-analyze");
    if found.is_none() {
        skip("systemd-analyze not found (.ci/setup installs the systemd package)");
    }
    found
}

/// Both units, with `/usr/bin/heartbeatd` pointing at the binary under test
/// (verify checks that every Exec binary exists), pass `systemd-analyze
/// verify` without a single complaint.
#[test]
fn units_pass_systemd_analyze_verify() {
    let Some(analyze) = systemd_analyze() else { return };
    let dir = TempDir::new("verify");
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
    let mut paths = Vec::new();
    for unit in ["heartbeatd.service", "heartbeatd.socket"] {
        let text = std::fs::read_to_string(units.join(unit)).expect("read the unit file");
        assert!(unit.ends_with(".socket") || text.contains("/usr/bin/heartbeatd"), "{unit} runs /usr/bin/heartbeatd");
        let path = dir.join(unit);
        std::fs::write(&path, text.replace("/usr/bin/heartbeatd", daemon_bin().to_str().expect("a UTF-8 path")))
            .expect("write unit");
        paths.push(path);
    }
    assert_units_verify(&analyze, dir.path(), &paths, &[]);
}

/// `systemd-analyze security --offline=true` rates the service's sandbox at
/// an overall exposure of at most 2.0 (0 is best, 10 worst).
#[test]
fn service_exposure_is_at_most_2() {
    let Some(analyze) = systemd_analyze() else { return };
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/heartbeatd.service");
    assert_exposure_at_most(&analyze, &unit, 2.0);
}

// ---- sd_notify --------------------------------------------------------------

/// `READY=1` comes only after the listener is bound: when it arrives, the
/// `listening` line is already in the log and its port answers HELLO with
/// WELCOME. It carries the first `STATUS=`.
#[test]
fn ready_is_sent_once_the_listener_accepts() {
    let fx = NotifyFixture::new("notify-ready");
    let mut daemon = fx.spawn(fx.command());
    let got = fx.wait_ready();
    // Read the log right now, without waiting: the daemon wrote the line
    // before it sent READY=1, and file writes are visible at once.
    let log = daemon.log_text();
    let line = log.lines().find(|l| l.contains("listening listener=main ")).unwrap_or_else(|| {
        panic!("READY=1 arrived before the listener was logged; notifications {:?}, log:\n{log}", texts(&got))
    });
    assert!(line.contains("socket=bound"), "{line}");
    let addr = parse_listening_address(line).expect("address in the listening line");
    let ready = got.last().expect("the READY notification");
    assert_eq!(ready.get("STATUS"), Some("0 clients online on 1 listener"), "{:?}", ready.text);
    let mut client = NativeClient::connect(addr);
    let welcome = client.join("ready-probe");
    assert_eq!((welcome.interval_ms, welcome.timeout_ms), (1000, 3000));
    daemon.wait_for_line("online client=ready-probe ", PROMPTLY);
}

/// `STATUS=` follows the online count, at most once a second: the first
/// client shows as "1 client online", two more that join at once are
/// coalesced, and leaving clients count down to 0.
#[test]
fn status_follows_online_clients_at_most_once_a_second() {
    let fx = NotifyFixture::new("notify-status");
    let mut daemon = fx.spawn(fx.command());
    fx.wait_ready();
    let addr = daemon.listen_addr("main");

    let mut first = NativeClient::connect(addr);
    first.join("status-1");
    let mut seen = fx.notify.recv_until("STATUS with 1 client", PROMPTLY, |n| {
        n.get("STATUS").is_some_and(|s| s.starts_with("1 client online"))
    });
    let mut others: Vec<NativeClient> = (2..=3)
        .map(|i| {
            let mut c = NativeClient::connect(addr);
            c.join(&format!("status-{i}"));
            c
        })
        .collect();
    seen.extend(fx.notify.recv_until("STATUS with 3 clients", PROMPTLY, |n| {
        n.get("STATUS").is_some_and(|s| s.starts_with("3 clients online"))
    }));
    for c in others.iter_mut().chain([&mut first]) {
        c.bye("status test done");
    }
    seen.extend(fx.notify.recv_until("STATUS with 0 clients", PROMPTLY, |n| {
        n.get("STATUS").is_some_and(|s| s.starts_with("0 clients online"))
    }));

    let updates: Vec<&Notification> = seen.iter().filter(|n| is_status_update(n)).collect();
    assert_eq!(
        updates.last().and_then(|n| n.get("STATUS")),
        Some("0 clients online on 1 listener"),
        "{:?}",
        texts(&seen)
    );
    for pair in updates.windows(2) {
        let gap = pair[1].at.duration_since(pair[0].at);
        assert!(
            gap >= Duration::from_millis(900),
            "STATUS updates {gap:?} apart (limit: 1/s): {:?} then {:?}",
            pair[0].text,
            pair[1].text
        );
    }
}

/// SIGHUP: `RELOADING=1` with `MONOTONIC_USEC=` taken after the signal was
/// sent (CLOCK_MONOTONIC, microseconds), then `READY=1` once the new file
/// is in force, with a status that reports no failure.
#[test]
fn sighup_sends_reloading_with_monotonic_usec_then_ready() {
    let fx = NotifyFixture::new("notify-reload");
    let mut daemon = fx.spawn(fx.command());
    fx.wait_ready();
    let addr = daemon.listen_addr("main");
    let mut client = NativeClient::connect(addr);
    assert_eq!(client.join("reload-watcher").interval_ms, 1000);
    // Same listener (name and configured address), new timing.
    std::fs::write(fx.config(), config_text("127.0.0.1:0", "2s", "6s")).expect("rewrite config");

    let before = monotonic_usec();
    daemon.signal(libc::SIGHUP);
    let got = fx.notify.recv_until("READY=1 after the reload", PROMPTLY, |n| n.has("READY", "1"));
    let after = monotonic_usec();
    let reloading = got
        .iter()
        .position(|n| n.has("RELOADING", "1"))
        .unwrap_or_else(|| panic!("no RELOADING=1 before READY=1: {:?}", texts(&got)));
    let usec: u64 = got[reloading]
        .get("MONOTONIC_USEC")
        .unwrap_or_else(|| panic!("RELOADING=1 without MONOTONIC_USEC: {:?}", got[reloading].text))
        .parse()
        .expect("MONOTONIC_USEC is a number");
    assert!(
        (before..=after).contains(&usec),
        "MONOTONIC_USEC={usec} is not between the SIGHUP ({before}) and the READY=1 ({after})"
    );
    let ready = got.last().expect("READY");
    assert_eq!(ready.get("STATUS"), Some("1 client online on 1 listener"), "{:?}", ready.text);
    // The new interval is in force: the connected client is told so.
    let welcome = client.expect_welcome_within(PROMPTLY);
    assert_eq!((welcome.interval_ms, welcome.timeout_ms), (2000, 6000));
    daemon.wait_for_line("reloaded ", PROMPTLY);
}

/// A broken file on SIGHUP still ends the reload with `READY=1` (the
/// daemon serves on its running config), and the `STATUS=` says the reload
/// failed until a good file is loaded.
#[test]
fn broken_config_on_sighup_still_ends_with_ready_and_says_so() {
    let fx = NotifyFixture::new("notify-broken");
    let mut daemon = fx.spawn(fx.command());
    fx.wait_ready();
    let addr = daemon.listen_addr("main");
    let good = std::fs::read_to_string(fx.config()).expect("read config");
    std::fs::write(fx.config(), "[daemon\nthis is not toml = = =\n").expect("break config");

    daemon.signal(libc::SIGHUP);
    let got = fx.notify.recv_until("READY=1 after the failed reload", PROMPTLY, |n| n.has("READY", "1"));
    assert!(got.iter().any(|n| n.has("RELOADING", "1")), "no RELOADING=1 before READY=1: {:?}", texts(&got));
    let status = got.last().and_then(|n| n.get("STATUS")).unwrap_or_default().to_owned();
    assert!(status.contains("reload failed"), "STATUS does not tell the reload failed: {status:?}");
    daemon.wait_for_line("reload-failed ", PROMPTLY);
    // Still serving on the old config.
    let mut client = NativeClient::connect(addr);
    assert_eq!(client.join("after-broken-reload").interval_ms, 1000);

    std::fs::write(fx.config(), good).expect("restore config");
    daemon.signal(libc::SIGHUP);
    let got = fx.notify.recv_until("READY=1 after the good reload", PROMPTLY, |n| n.has("READY", "1"));
    let status = got.last().and_then(|n| n.get("STATUS")).unwrap_or_default();
    assert!(!status.contains("failed"), "STATUS still reports a failure after a good reload: {status:?}");
}

/// `heartbeatd --reload PID` as the unit's `ExecReload=` runs it: the
/// daemon's `$RUNTIME_DIRECTORY`, the daemon's pid.
fn reload_command(fx: &NotifyFixture, daemon: &FileDaemon) -> std::process::Output {
    Command::new(daemon_bin())
        .arg("--reload")
        .arg(daemon.pid().to_string())
        .env("RUNTIME_DIRECTORY", fx.dir.join("run"))
        .output()
        .expect("run heartbeatd --reload")
}

/// A reload that fails in part (a new listener's port is taken) makes
/// `heartbeatd --reload` (the unit's `ExecReload=`, hence `systemctl
/// reload`) exit non-zero with the failure, and `STATUS=` names it; once
/// the port is free, the same reload succeeds and the listener serves.
#[test]
fn reload_that_fails_in_part_fails_the_reload_command_and_says_what() {
    let fx = NotifyFixture::new("notify-reload-part");
    std::fs::create_dir(fx.dir.join("run")).expect("create the runtime directory");
    let mut cmd = fx.command();
    cmd.env("RUNTIME_DIRECTORY", fx.dir.join("run"));
    let mut daemon = fx.spawn(cmd);
    fx.wait_ready();
    let body = "interval = \"1s\"\ntimeout = \"3s\"";

    // A good reload answers 0.
    let out = reload_command(&fx, &daemon);
    assert!(out.status.success(), "a good reload failed: {out:?}");
    fx.notify.recv_until("READY=1 after the good reload", PROMPTLY, |n| n.has("READY", "1"));

    let taken = TcpListener::bind("127.0.0.1:0").expect("take a port");
    let port = taken.local_addr().expect("local_addr");
    let two = |extra_at: std::net::SocketAddr| {
        heartbeatd_harness::config(
            "100ms",
            "shutdown_grace = \"1s\"",
            &[listener("main", "native", "127.0.0.1:0", body), listener("extra", "native", extra_at, body)],
        )
    };
    std::fs::write(fx.config(), two(port)).expect("add a listener on a taken port");
    let out = reload_command(&fx, &daemon);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("reload with a taken port: {} {}", out.status, stderr.trim());
    assert_eq!(out.status.code(), Some(1), "the reload command must fail: {out:?}");
    assert!(stderr.starts_with("heartbeatd: reload failed in part: listener extra: "), "{stderr}");
    assert!(stderr.contains(&port.to_string()), "{stderr}");
    let got = fx.notify.recv_until("READY=1 after the partial reload", PROMPTLY, |n| n.has("READY", "1"));
    let status = got.last().and_then(|n| n.get("STATUS")).unwrap_or_default().to_owned();
    assert!(
        status.starts_with("0 clients online on 1 listener; last reload failed in part: listener extra"),
        "{status}"
    );
    // What did apply is in force: the old listener still serves.
    let mut client = NativeClient::connect(daemon.listen_addr("main"));
    client.join("after-partial-reload");

    drop(taken);
    let out = reload_command(&fx, &daemon);
    assert!(out.status.success(), "the reload after freeing the port failed: {out:?}");
    let got = fx.notify.recv_until("READY=1 after the retry", PROMPTLY, |n| n.has("READY", "1"));
    assert_eq!(got.last().and_then(|n| n.get("STATUS")), Some("1 client online on 2 listeners"));
    let mut extra = NativeClient::connect(port);
    extra.join("on-extra");
}

/// A daemon that dies before it answers (here a process that SIGHUP
/// kills) fails the reload command at once, not after its 30 s wait.
#[test]
fn reload_command_fails_at_once_when_the_daemon_dies() {
    let dir = TempDir::new("reload-dies");
    let mut victim = Command::new("sleep").arg("30").spawn().expect("spawn sleep");
    let pid = victim.id();
    let reaper = std::thread::spawn(move || victim.wait());
    let started = std::time::Instant::now();
    let out = Command::new(daemon_bin())
        .args(["--reload", &pid.to_string()])
        .env("RUNTIME_DIRECTORY", dir.join("run"))
        .output()
        .expect("run heartbeatd --reload");
    let _ = reaper.join();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("exited before it answered"), "{out:?}");
    assert!(started.elapsed() < PROMPTLY, "took {:?}", started.elapsed());
}

/// Without an answer channel the reload command says so instead of
/// signalling blind.
#[test]
fn reload_command_without_runtime_directory_refuses() {
    let out = Command::new(daemon_bin())
        .args(["--reload", "1"])
        .env_remove("RUNTIME_DIRECTORY")
        .output()
        .expect("run heartbeatd --reload");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("RUNTIME_DIRECTORY"), "{out:?}");
}

/// SIGTERM: `STOPPING=1` with a status that no longer counts clients
/// online, then a clean exit whose last `STATUS=` is "stopped", so
/// `systemctl status` after a stop shows no stale client count.
#[test]
fn sigterm_sends_stopping_then_exits_cleanly() {
    let fx = NotifyFixture::new("notify-stop");
    let mut daemon = fx.spawn(fx.command());
    fx.wait_ready();
    let addr = daemon.listen_addr("main");
    let mut client = NativeClient::connect(addr);
    client.join("stop-watcher");
    daemon.signal(libc::SIGTERM);
    let got = fx.notify.recv_until("STOPPING=1", PROMPTLY, |n| n.has("STOPPING", "1"));
    let stopping = got.last().and_then(|n| n.get("STATUS"));
    assert_eq!(stopping, Some("stopping: saying BYE to 1 client (within 1000 ms)"), "{:?}", texts(&got));
    let frames = client.wait_closed(PROMPTLY);
    assert!(
        frames.iter().any(|f| (f.ty, f.payload.as_slice()) == (BYE, &b"shutdown"[..])),
        "no BYE shutdown before close: {frames:?}"
    );
    let status = daemon.wait_exit(PROMPTLY);
    assert!(status.success(), "heartbeatd exited with {status}; log:\n{}", daemon.log_text());
    let last = fx.notify.recv_for(Duration::from_millis(200));
    let statuses: Vec<&str> = got.iter().chain(&last).filter_map(|n| n.get("STATUS")).collect();
    assert_eq!(statuses.last(), Some(&"stopped"), "the last STATUS= before the exit: {statuses:?}");
}

/// Intervals between consecutive `WATCHDOG=1` among `notes`.
fn watchdog_gaps(notes: &[Notification]) -> Vec<Duration> {
    let pings: Vec<&Notification> = notes.iter().filter(|n| n.text == "WATCHDOG=1").collect();
    pings.windows(2).map(|p| p[1].at.duration_since(p[0].at)).collect()
}

/// Collects notifications until `count` `WATCHDOG=1` have arrived.
fn collect_watchdogs(notify: &NotifySocket, count: usize) -> Vec<Notification> {
    let mut got = Vec::new();
    while got.iter().filter(|n: &&Notification| n.text == "WATCHDOG=1").count() < count {
        got.extend(notify.recv_until("WATCHDOG=1", Duration::from_secs(3), |n| n.text == "WATCHDOG=1"));
    }
    got
}

/// `WATCHDOG_USEC=400000`: a `WATCHDOG=1` about every 200 ms (half the
/// timeout, as `sd_watchdog_enabled(3)` advises), steadily.
#[test]
fn watchdog_pings_at_half_of_watchdog_usec() {
    let fx = NotifyFixture::new("notify-watchdog");
    let mut cmd = fx.command();
    cmd.env("WATCHDOG_USEC", "400000");
    let _daemon = fx.spawn(cmd);
    fx.wait_ready();
    let got = collect_watchdogs(&fx.notify, 7);
    let gaps = watchdog_gaps(&got);
    assert!(gaps.len() >= 6, "{:?}", texts(&got));
    for gap in &gaps {
        assert!(
            (Duration::from_millis(100)..=Duration::from_millis(600)).contains(gap),
            "WATCHDOG=1 intervals should be ~200 ms: {gaps:?}"
        );
    }
    // The typical interval is half the timeout (200 ms, plus up to one
    // 100 ms tick), not the whole 400 ms, which would leave systemd no slack.
    let mut sorted = gaps.clone();
    sorted.sort();
    let median = sorted[sorted.len() / 2];
    assert!(
        (Duration::from_millis(150)..=Duration::from_millis(350)).contains(&median),
        "median WATCHDOG=1 interval {median:?}, expected ~200 ms: {gaps:?}"
    );
}

/// `WATCHDOG_PID` naming the daemon itself keeps the watchdog on.
#[test]
fn watchdog_pid_of_the_daemon_itself_keeps_the_watchdog() {
    let fx = NotifyFixture::new("notify-watchdog-pid");
    let mut cmd = daemon_command_with_own_pid(&fx.config(), &["WATCHDOG_PID"]);
    cmd.env("NOTIFY_SOCKET", fx.notify.path()).env("WATCHDOG_USEC", "400000");
    let _daemon = fx.spawn(cmd);
    fx.wait_ready();
    let got = collect_watchdogs(&fx.notify, 3);
    assert!(watchdog_gaps(&got).iter().all(|g| *g <= Duration::from_millis(600)), "{:?}", texts(&got));
}

/// Asserts that no `WATCHDOG=1` arrives within 1.2 s (six periods of a
/// 400 ms watchdog).
fn assert_no_watchdog(fx: &NotifyFixture) {
    let got = fx.notify.recv_for(Duration::from_millis(1200));
    assert!(got.iter().all(|n| n.get("WATCHDOG").is_none()), "unexpected watchdog pings: {:?}", texts(&got));
}

/// Without `WATCHDOG_USEC` there is no `WATCHDOG=1`.
#[test]
fn no_watchdog_without_watchdog_usec() {
    let fx = NotifyFixture::new("notify-no-watchdog");
    let _daemon = fx.spawn(fx.command());
    let got = fx.wait_ready();
    assert!(got.iter().all(|n| n.get("WATCHDOG").is_none()), "{:?}", texts(&got));
    assert_no_watchdog(&fx);
}

/// `WATCHDOG_PID` naming another process (pid 1): the watchdog is not ours,
/// so no `WATCHDOG=1`.
#[test]
fn no_watchdog_when_watchdog_pid_is_another_process() {
    let fx = NotifyFixture::new("notify-other-watchdog");
    let mut cmd = fx.command();
    cmd.env("WATCHDOG_USEC", "400000").env("WATCHDOG_PID", "1");
    let _daemon = fx.spawn(cmd);
    let got = fx.wait_ready();
    assert!(got.iter().all(|n| n.get("WATCHDOG").is_none()), "{:?}", texts(&got));
    assert_no_watchdog(&fx);
}

// ---- socket activation ------------------------------------------------------

/// Starts the daemon as systemd would with `socket` as its one activated
/// fd: fd 3, `LISTEN_FDS=1`, `LISTEN_PID` = the daemon's own pid, and
/// `LISTEN_FDNAMES` when given. `listener_address` goes in the config.
fn spawn_activated(dir: &TempDir, socket: &TcpListener, names: Option<&str>, listener_address: &str) -> FileDaemon {
    let config = dir.join("heartbeatd.toml");
    std::fs::write(&config, config_text(listener_address, "1s", "3s")).expect("write config");
    let mut cmd = daemon_command_with_own_pid(&config, &["LISTEN_PID"]);
    cmd.env("LISTEN_FDS", "1");
    if let Some(names) = names {
        cmd.env("LISTEN_FDNAMES", names);
    }
    pass_as_fd3(&mut cmd, socket.as_raw_fd());
    FileDaemon::spawn(cmd, &dir.join("stderr.log"))
}

/// The socket named `main` is adopted for listener `main` even though the
/// config names another address, and clients of that socket are served.
#[test]
fn activated_socket_is_adopted_by_name() {
    let dir = TempDir::new("activate-name");
    let socket = TcpListener::bind("127.0.0.1:0").expect("bind the activated socket");
    let port = socket.local_addr().expect("local_addr");
    let mut daemon = spawn_activated(&dir, &socket, Some("main"), "127.0.0.1:0");
    let line = daemon.wait_for_line("listening listener=main ", PROMPTLY);
    assert!(line.contains("socket=systemd"), "the passed socket was not adopted: {line}");
    assert_eq!(parse_listening_address(&line), Some(port), "{line}");
    let log = daemon.log_text();
    assert!(!log.contains("activated-socket-unused"), "{log}");
    let mut client = NativeClient::connect(port);
    assert_eq!(client.join("activated-by-name").interval_ms, 1000);
}

/// Without `LISTEN_FDNAMES` the socket is matched to the listener whose
/// configured address it is bound to.
#[test]
fn activated_socket_is_adopted_by_address_without_names() {
    let dir = TempDir::new("activate-address");
    let socket = TcpListener::bind("127.0.0.1:0").expect("bind the activated socket");
    let port = socket.local_addr().expect("local_addr");
    let mut daemon = spawn_activated(&dir, &socket, None, &port.to_string());
    let line = daemon.wait_for_line("listening listener=main ", PROMPTLY);
    assert!(line.contains("socket=systemd"), "the passed socket was not adopted: {line}");
    let mut client = NativeClient::connect(port);
    assert_eq!(client.join("activated-by-address").interval_ms, 1000);
}

/// A connection made before the daemon starts waits in the passed socket's
/// backlog, HELLO already sent, and is served once the daemon runs: socket
/// activation loses no pending client.
#[test]
fn connection_pending_before_start_is_served() {
    let dir = TempDir::new("activate-pending");
    let socket = TcpListener::bind("127.0.0.1:0").expect("bind the activated socket");
    let port = socket.local_addr().expect("local_addr");
    let mut early = NativeClient::from_stream(std::net::TcpStream::connect(port).expect("connect to the backlog"));
    early.send(&hello_frame("pending-early", ""));
    let mut daemon = spawn_activated(&dir, &socket, Some("main"), "127.0.0.1:0");
    let welcome = early.expect_welcome_within(PROMPTLY);
    assert_eq!(welcome.interval_ms, 1000);
    let line = daemon.wait_for_line("online client=pending-early ", PROMPTLY);
    assert!(line.contains(&format!("session={}", welcome.session)), "{line}");
}

/// A socket adopted by name that serves another address than the
/// listener's (here: every interface where the config asks for loopback)
/// is refused at start with exit 78 (not retried by the unit), naming both
/// addresses: serving wider than configured must not pass with one warning
/// line.
#[test]
fn activated_socket_on_another_address_is_refused() {
    let dir = TempDir::new("activate-mismatch");
    let socket = TcpListener::bind("0.0.0.0:0").expect("bind the activated socket");
    let port = socket.local_addr().expect("local_addr").port();
    let configured = format!("127.0.0.1:{port}");
    let mut daemon = spawn_activated(&dir, &socket, Some("main"), &configured);
    let status = daemon.wait_exit(PROMPTLY);
    let log = daemon.log_text();
    assert_eq!(status.code(), Some(78), "not EX_CONFIG: the unit would retry it; log:\n{log}");
    let line = log.lines().find(|l| l.contains("fatal ")).unwrap_or_else(|| panic!("no fatal line:\n{log}"));
    assert!(line.contains(&format!("0.0.0.0:{port}")) && line.contains(&configured), "{line}");
    assert!(
        line.contains("make ListenStream= in heartbeatd.socket and the listener's address the same"),
        "the error does not say how to fix it: {line}"
    );
}

/// `LISTEN_PID` naming another process: the fds are not for us, so the
/// daemon binds its configured address itself.
#[test]
fn activated_socket_for_another_pid_is_left_alone() {
    let dir = TempDir::new("activate-other-pid");
    let socket = TcpListener::bind("127.0.0.1:0").expect("bind the activated socket");
    let config = dir.join("heartbeatd.toml");
    std::fs::write(&config, config_text("127.0.0.1:0", "1s", "3s")).expect("write config");
    let mut cmd = daemon_command(&config);
    cmd.env("LISTEN_FDS", "1").env("LISTEN_PID", "1").env("LISTEN_FDNAMES", "main");
    pass_as_fd3(&mut cmd, socket.as_raw_fd());
    let mut daemon = FileDaemon::spawn(cmd, &dir.join("stderr.log"));
    let line = daemon.wait_for_line("listening listener=main ", PROMPTLY);
    assert!(line.contains("socket=bound"), "adopted an fd meant for pid 1: {line}");
    assert_ne!(parse_listening_address(&line), socket.local_addr().ok(), "{line}");
}

// ---- journal ------------------------------------------------------------------

/// The journal entry for `event` (`online`/`offline`) of client `id`.
fn event_of(id: &str, event: &str) -> impl Fn(&JournalEntry) -> bool {
    let (id, event) = (id.to_owned(), event.to_owned());
    move |e| e.get("HEARTBEAT_CLIENT") == Some(id.as_str()) && e.get("HEARTBEAT_EVENT") == Some(event.as_str())
}

/// Checks an event entry's `MESSAGE` against the logfmt line its own fields
/// describe (an offline line may end in ` detail=...`).
fn assert_message_is_logfmt_line(e: &JournalEntry) {
    let f = |k| e.field(k);
    let expected = match f("HEARTBEAT_EVENT") {
        "online" => format!(
            "online client={} peer={} listener={} protocol={} session={}",
            f("HEARTBEAT_CLIENT"),
            f("HEARTBEAT_PEER"),
            f("HEARTBEAT_LISTENER"),
            f("HEARTBEAT_PROTOCOL"),
            f("HEARTBEAT_SESSION")
        ),
        _ => format!(
            "offline client={} peer={} listener={} session={} reason={} silent_ms={} connected_ms={}",
            f("HEARTBEAT_CLIENT"),
            f("HEARTBEAT_PEER"),
            f("HEARTBEAT_LISTENER"),
            f("HEARTBEAT_SESSION"),
            f("HEARTBEAT_REASON"),
            f("HEARTBEAT_SILENT_MS"),
            f("HEARTBEAT_CONNECTED_MS")
        ),
    };
    let message = e.message();
    assert!(
        message == expected || message.starts_with(&format!("{expected} detail=")),
        "MESSAGE is not the event's logfmt line:\n  MESSAGE  {message}\n  expected {expected}"
    );
}

/// With stderr being the journal (`JOURNAL_STREAM` = its dev:ino), every
/// line goes to the journal socket as a native-protocol entry: events with
/// priority, `MESSAGE_ID` and `HEARTBEAT_*` fields, other lines at their
/// level; and none of it is repeated on stderr.
#[test]
fn journal_entries_carry_event_fields_and_are_not_duplicated() {
    let dir = TempDir::new("journal");
    let mut journal = JournalSocket::bind(&dir.join("journal.sock"));
    let config = dir.join("heartbeatd.toml");
    std::fs::write(&config, config_text("127.0.0.1:0", "200ms", "600ms")).expect("write config");
    let log = dir.join("stderr.log");
    let stream = dev_ino_of_new_file(&log);
    let mut cmd = daemon_command(&config);
    cmd.env("JOURNAL_STREAM", &stream).env("HEARTBEATD_JOURNAL_SOCKET", journal.path());
    let mut daemon = FileDaemon::spawn(cmd, &log);

    let listening = journal.wait_for("`listening`", PROMPTLY, |e| e.message().starts_with("listening listener=main "));
    assert_eq!(listening.get("PRIORITY"), Some("6"), "{:?}", listening.fields);
    assert_eq!(listening.get("SYSLOG_IDENTIFIER"), Some("heartbeatd"), "{:?}", listening.fields);
    let addr = parse_listening_address(listening.message()).expect("address in the listening entry");

    // One client that leaves with BYE...
    let mut leaver = NativeClient::connect(addr);
    let leaver_peer = leaver.stream.local_addr().expect("local_addr").to_string();
    let leaver_session = leaver.join("journal-left").session.to_string();
    leaver.bye("done");
    leaver.wait_closed(PROMPTLY);
    // ...and one that goes silent until its 600 ms timeout.
    let mut silent = NativeClient::connect(addr);
    let silent_session = silent.join("journal-silent").session.to_string();

    let online = journal.wait_for("online of journal-left", PROMPTLY, event_of("journal-left", "online"));
    let expect = [
        ("PRIORITY", "6"),
        ("MESSAGE_ID", ONLINE_MESSAGE_ID),
        ("SYSLOG_IDENTIFIER", "heartbeatd"),
        ("HEARTBEAT_EVENT", "online"),
        ("HEARTBEAT_CLIENT", "journal-left"),
        ("HEARTBEAT_PEER", leaver_peer.as_str()),
        ("HEARTBEAT_LISTENER", "main"),
        ("HEARTBEAT_PROTOCOL", "native"),
        ("HEARTBEAT_SESSION", leaver_session.as_str()),
    ];
    for (name, value) in expect {
        assert_eq!(online.get(name), Some(value), "{name} of the online entry {:?}", online.fields);
    }
    assert_message_is_logfmt_line(&online);

    let left = journal.wait_for("offline of journal-left", PROMPTLY, event_of("journal-left", "offline"));
    let expect = [
        ("PRIORITY", "5"),
        ("MESSAGE_ID", OFFLINE_MESSAGE_ID),
        ("SYSLOG_IDENTIFIER", "heartbeatd"),
        ("HEARTBEAT_REASON", "left"),
        ("HEARTBEAT_PEER", leaver_peer.as_str()),
        ("HEARTBEAT_LISTENER", "main"),
        ("HEARTBEAT_SESSION", leaver_session.as_str()),
    ];
    for (name, value) in expect {
        assert_eq!(left.get(name), Some(value), "{name} of the left entry {:?}", left.fields);
    }
    assert_message_is_logfmt_line(&left);

    let lost = journal.wait_for("offline of journal-silent", PROMPTLY, event_of("journal-silent", "offline"));
    let expect = [
        ("PRIORITY", "4"),
        ("MESSAGE_ID", OFFLINE_MESSAGE_ID),
        ("HEARTBEAT_REASON", "timeout"),
        ("HEARTBEAT_SESSION", silent_session.as_str()),
    ];
    for (name, value) in expect {
        assert_eq!(lost.get(name), Some(value), "{name} of the timeout entry {:?}", lost.fields);
    }
    let silent_ms: u64 = lost.field("HEARTBEAT_SILENT_MS").parse().expect("HEARTBEAT_SILENT_MS is a number");
    assert!(silent_ms >= 600, "declared offline after only {silent_ms} ms of silence (timeout 600 ms)");
    assert_message_is_logfmt_line(&lost);
    drop(silent);

    daemon.signal(libc::SIGTERM);
    let status = daemon.wait_exit(PROMPTLY);
    assert!(status.success(), "heartbeatd exited with {status}");
    journal.drain_for(Duration::from_millis(200));
    for name in ["journal-left", "journal-silent"] {
        for event in ["online", "offline"] {
            let n = journal.entries.iter().filter(|e| event_of(name, event)(e)).count();
            assert_eq!(n, 1, "{event} entries for {name}");
        }
    }
    let stderr = daemon.log_text();
    for needle in ["online client=", "offline client=", "listening listener="] {
        assert!(!stderr.contains(needle), "{needle:?} went to stderr as well as the journal:\n{stderr}");
    }
}

/// `JOURNAL_STREAM` that names some other file (a redirected stderr):
/// plain text on stderr, nothing sent to the journal socket.
#[test]
fn stderr_that_is_not_the_journal_keeps_plain_text() {
    let dir = TempDir::new("journal-elsewhere");
    let journal = JournalSocket::bind(&dir.join("journal.sock"));
    let config = dir.join("heartbeatd.toml");
    std::fs::write(&config, config_text("127.0.0.1:0", "1s", "3s")).expect("write config");
    let other = dev_ino_of_new_file(&dir.join("not-stderr"));
    let mut cmd = daemon_command(&config);
    cmd.env("JOURNAL_STREAM", &other).env("HEARTBEATD_JOURNAL_SOCKET", journal.path());
    let mut daemon = FileDaemon::spawn(cmd, &dir.join("stderr.log"));
    let addr = daemon.listen_addr("main");
    NativeClient::connect(addr).join("plain-text");
    daemon.wait_for_line("online client=plain-text ", PROMPTLY);
    let mut journal = journal;
    journal.drain_for(Duration::from_millis(300));
    let messages: Vec<&str> = journal.entries.iter().map(JournalEntry::message).collect();
    assert!(messages.is_empty(), "entries sent to the journal although stderr is not it: {messages:?}");
}
