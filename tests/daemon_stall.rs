//! The daemon's own stalls never convict a healthy client (issue 10, rules
//! R1 "drained before convicted" and R2 "the loop knows when it was late").
//!
//! Each test keeps a fleet of native clients pinging every 200 ms (timeout
//! 1 s, tick 100 ms) from one thread over nonblocking sockets, stalls the
//! daemon, and asserts that not one `offline … reason=timeout` event names
//! a client of the fleet. The stall is either SIGSTOP/SIGCONT (a debugger,
//! a VM stun) or, for a pause that must land inside a poll round, the
//! debug build's `HEARTBEATD_DEBUG_STALL` hook (compiled out of release
//! builds). Numbers are printed with `-- --nocapture`.

use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use heartbeatd_harness::http::{get, http_addr, scrape, with_http};
use heartbeatd_harness::*;

/// Every client pings this often.
const PING_EVERY: Duration = Duration::from_millis(200);

/// The listener: PING every 200 ms, offline after 1 s of silence.
fn stall_config(daemon_extra: &str) -> String {
    config("100ms", daemon_extra, &[native("main", "interval = \"200ms\"\ntimeout = \"1s\"")])
}

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit: a fleet of
/// 1,100 sockets must not hit a default soft limit of 1,024.
fn raise_open_files() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit fill and read the struct they are given.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0, "getrlimit");
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0, "setrlimit");
    }
}

/// What the pinger thread shares with the test.
struct Shared {
    /// Clear to end the pinger.
    running: AtomicBool,
    /// Set while the clients must not ping (a host stun stops them too).
    paused: AtomicBool,
    /// Per client: bytes received since the last `reset_received`.
    received: Mutex<Vec<usize>>,
    /// Per client: the daemon closed the connection.
    closed: Mutex<Vec<bool>>,
    /// Ping rounds completed.
    rounds: AtomicUsize,
}

/// Native clients after WELCOME, pinged by one thread.
struct Fleet {
    sessions: Vec<u64>,
    shared: Arc<Shared>,
    pinger: Option<JoinHandle<()>>,
}

impl Fleet {
    /// Connects `n` clients (HELLO, WELCOME), then starts pinging them all
    /// every [`PING_EVERY`], reading and counting what comes back.
    fn start(addr: SocketAddr, n: usize, prefix: &str) -> Fleet {
        let mut clients = Vec::with_capacity(n);
        let mut sessions = Vec::with_capacity(n);
        for i in 0..n {
            let (c, w) = NativeClient::handshake(addr, &format!("{prefix}-{i}"), "");
            c.stream.set_nonblocking(true).expect("nonblocking client socket");
            sessions.push(w.session);
            clients.push(c.stream);
        }
        let shared = Arc::new(Shared {
            running: AtomicBool::new(true),
            paused: AtomicBool::new(false),
            received: Mutex::new(vec![0; n]),
            closed: Mutex::new(vec![false; n]),
            rounds: AtomicUsize::new(0),
        });
        let s = Arc::clone(&shared);
        let ping = frame(PING, b"p");
        let pinger = thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while s.running.load(Ordering::SeqCst) {
                let started = Instant::now();
                let pinging = !s.paused.load(Ordering::SeqCst);
                for (i, stream) in clients.iter_mut().enumerate() {
                    if s.closed.lock().unwrap()[i] {
                        continue;
                    }
                    if pinging {
                        // A full send buffer only delays a ping; the frame
                        // is 6 bytes and buffers hold thousands.
                        let _ = stream.write(&ping);
                    }
                    loop {
                        match stream.read(&mut buf) {
                            Ok(0) => {
                                s.closed.lock().unwrap()[i] = true;
                                break;
                            }
                            Ok(got) => s.received.lock().unwrap()[i] += got,
                            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                            Err(e) if e.kind() == ErrorKind::Interrupted => {}
                            Err(_) => {
                                s.closed.lock().unwrap()[i] = true;
                                break;
                            }
                        }
                    }
                }
                s.rounds.fetch_add(1, Ordering::SeqCst);
                thread::sleep(PING_EVERY.saturating_sub(started.elapsed()));
            }
        });
        Fleet { sessions, shared, pinger: Some(pinger) }
    }

    fn reset_received(&self) {
        self.shared.received.lock().unwrap().iter_mut().for_each(|r| *r = 0);
    }

    /// Waits until `rounds` more ping rounds have completed.
    fn wait_rounds(&self, rounds: usize) {
        let target = self.shared.rounds.load(Ordering::SeqCst) + rounds;
        let deadline = Instant::now() + DEADLINE;
        while self.shared.rounds.load(Ordering::SeqCst) < target {
            assert!(Instant::now() < deadline, "the pinger stalled");
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until every client has received bytes since the last
    /// `reset_received` (a PONG: the daemon served it) or was closed.
    fn wait_all_answered(&self) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let received = self.shared.received.lock().unwrap().clone();
            let closed = self.shared.closed.lock().unwrap().clone();
            let waiting = received.iter().zip(&closed).filter(|(r, c)| **r == 0 && !**c).count();
            if waiting == 0 {
                return;
            }
            assert!(Instant::now() < deadline, "{waiting} clients got no PONG within {DEADLINE:?}");
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn closed(&self) -> usize {
        self.shared.closed.lock().unwrap().iter().filter(|c| **c).count()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.shared.running.store(false, Ordering::SeqCst);
        if let Some(pinger) = self.pinger.take() {
            let _ = pinger.join();
        }
    }
}

/// The `offline reason=timeout` events of the fleet's sessions so far.
fn false_timeouts(d: &Daemon, fleet: &Fleet) -> Vec<Line> {
    d.find_all(ev("offline").kv("reason", "timeout"))
        .into_iter()
        .filter(|l| l.get("session").and_then(|s| s.parse().ok()).is_some_and(|s: u64| fleet.sessions.contains(&s)))
        .collect()
}

/// Watches the log for one more timeout period after the stall, then
/// asserts that no client of the fleet was declared `timeout`.
fn assert_no_false_timeouts(d: &Daemon, fleet: &Fleet, what: &str) {
    d.assert_absent_from(d.mark(), ev("offline").kv("reason", "timeout"), Duration::from_millis(1200));
    let convicted = false_timeouts(d, fleet);
    println!("{what}: {} of {} healthy clients declared timeout", convicted.len(), fleet.sessions.len());
    assert!(
        convicted.is_empty(),
        "{what}: {} of {} healthy clients declared timeout, first: {}",
        convicted.len(),
        fleet.sessions.len(),
        convicted[0].text
    );
    assert_eq!(fleet.closed(), 0, "{what}: the daemon closed healthy clients");
}

/// More clients than one poll round returns events for (1,024): after a
/// 3 s SIGSTOP every one of them has pings waiting in its socket, and the
/// ones beyond the first batch must be read, not convicted.
#[test]
fn a_stopped_daemon_with_more_ready_clients_than_a_batch_convicts_nobody() {
    raise_open_files();
    const CLIENTS: usize = 1100;
    let d = Daemon::start(&stall_config(""));
    let fleet = Fleet::start(d.addr("main"), CLIENTS, "batch");
    fleet.wait_rounds(3);

    let mark = d.mark();
    d.signal(libc::SIGSTOP);
    thread::sleep(Duration::from_secs(3));
    fleet.reset_received();
    d.signal(libc::SIGCONT);

    fleet.wait_all_answered();
    assert_no_false_timeouts(&d, &fleet, "SIGSTOP 3 s, 1,100 clients");
    let stalled = d.wait_from(mark, ev("loop-stalled"), DEADLINE);
    assert!(stalled.num("stall_ms") >= 2500, "{stalled}");
    assert_eq!(stalled.num("clients"), CLIENTS as u64, "{stalled}");
}

/// A pause inside a poll round, after the round read the clock: the bytes
/// read after it are activity at the time they were read, not at the
/// stale clock. The debug hook sleeps 3 s before one connection's read.
#[test]
#[cfg_attr(not(debug_assertions), ignore = "the pause hook exists in debug builds only")]
fn a_pause_inside_a_round_convicts_nobody() {
    const CLIENTS: usize = 50;
    let dir = TempDir::new("daemon");
    let path = dir.write("heartbeatd.toml", &with_http(&stall_config(""), ""));
    let d = Daemon::start_with(dir, path, |c| {
        // The 400th connection event: the handshakes and two ping rounds.
        c.env("HEARTBEATD_DEBUG_STALL", "400:3000");
    });
    let fleet = Fleet::start(d.addr("main"), CLIENTS, "mid");
    d.wait_for(ev("debug-stall"), DEADLINE);
    fleet.reset_received();
    fleet.wait_all_answered();
    assert_no_false_timeouts(&d, &fleet, "3 s pause inside a round, 50 clients");
    let stalled = d.wait_for(ev("loop-stalled"), DEADLINE);
    assert!(stalled.num("stall_ms") >= 2500, "{stalled}");
    let metrics = scrape(http_addr(&d));
    assert!(metrics.value("heartbeatd_loop_stalls_total", &[]) >= 1.0);
    assert!(metrics.value("heartbeatd_loop_stall_seconds", &[]) >= 2.5);
    assert!(metrics.value("heartbeatd_loop_stall_seconds_total", &[]) >= 2.5);
    // `/healthz` tells monitoring the same without an event.
    let health = get(http_addr(&d), "/healthz");
    assert_eq!(health.status, 200, "{}", health.text());
    let health = health.json();
    assert!(health["last_stall_ms"].as_u64().is_some_and(|ms| ms >= 2500), "{health}");
    assert!(health["loop_stalls"].as_u64().is_some_and(|n| n >= 1), "{health}");
    assert!(health["lag_ms"].is_u64(), "{health}");
}

/// A host stun: the daemon and its clients stop together, so no bytes wait
/// in the kernel when the daemon runs again. The loop's own lateness
/// extends every silence deadline; the clients resume pinging and stay.
/// Repeated, so the stops land at different points of the loop.
#[test]
fn a_stun_of_daemon_and_clients_together_convicts_nobody() {
    const CLIENTS: usize = 50;
    let d = Daemon::start(&stall_config(""));
    let fleet = Fleet::start(d.addr("main"), CLIENTS, "stun");
    for _ in 0..3 {
        fleet.wait_rounds(2);
        fleet.shared.paused.store(true, Ordering::SeqCst);
        fleet.wait_rounds(1);
        d.signal(libc::SIGSTOP);
        thread::sleep(Duration::from_millis(1500));
        d.signal(libc::SIGCONT);
        fleet.reset_received();
        fleet.shared.paused.store(false, Ordering::SeqCst);
        fleet.wait_all_answered();
    }
    assert_no_false_timeouts(&d, &fleet, "3 stuns of 1.5 s, 50 clients");
    assert!(d.find_all(ev("loop-stalled")).len() >= 3, "{}", d.log_text());
}

/// A client that really went silent is still convicted after a stall, and
/// a FIN during the stall still counts at once (`closed`, not `timeout`).
#[test]
fn a_stall_still_convicts_the_silent_and_closes_the_gone() {
    let d = Daemon::start(&stall_config(""));
    let addr = d.addr("main");
    let (mut silent, ws) = NativeClient::handshake(addr, "silent", "");
    let (gone, wg) = NativeClient::handshake(addr, "gone", "");
    silent.ping(b"x");
    silent.expect_pong(b"x");
    d.signal(libc::SIGSTOP);
    gone.fin();
    thread::sleep(Duration::from_millis(700));
    d.signal(libc::SIGCONT);
    let off = d.wait(ev("offline").kv("session", wg.session));
    assert_eq!(off.field("reason"), "closed", "{off}");
    let off = d.wait(ev("offline").kv("session", ws.session));
    assert_eq!(off.field("reason"), "timeout", "{off}");
}
