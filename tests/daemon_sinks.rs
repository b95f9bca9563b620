//! No request, subscriber or sink can stall the loop (issue 10, rule R3):
//! a stopped reader of the daemon's stderr (`heartbeatd 2>&1 | grep …` with
//! the `grep` stopped, failure 5), a journal that does not read its socket,
//! and a burst of slow `/clients` and `/events` snapshot readers with
//! thousands online (failure 2).
//!
//! Each test keeps healthy native clients pinging every 100 ms (timeout
//! 1 s) and asserts events: every healthy PING gets its PONG within the
//! timeout, and not one `offline … reason=timeout`. For the log sinks,
//! churning clients fill the log with online/offline lines; lines that
//! could not be written are counted in `heartbeatd_log_dropped_total`, and,
//! once the sink reads again, one `log-dropped lines=N` line says how many.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use heartbeatd_harness::http::{get, http_addr, with_http, Metrics, Sse};
use heartbeatd_harness::log::Follower;
use heartbeatd_harness::*;

/// Healthy clients beside the churn.
const HEALTHY: usize = 20;

/// Each healthy client pings this often.
const PING_EVERY: Duration = Duration::from_millis(100);

/// Threads connecting, saying HELLO and leaving, as fast as they can: two
/// log lines (online, offline) per turn.
const CHURNERS: usize = 4;

/// The listener: PING every 100 ms, offline after 1 s of silence; and the
/// status API, to read the dropped-line counter while the log is stuck.
fn sink_config() -> String {
    with_http(&config("100ms", "", &[native("main", "interval = \"100ms\"\ntimeout = \"1s\"")]), "")
}

/// Sends `signal` to the child `pid`.
fn signal(pid: u32, signal: i32) {
    let pid = i32::try_from(pid).expect("pid fits i32");
    // SAFETY: kill(2) on a child of this test that is not reaped yet.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill({pid}, {signal})");
}

/// The daemon with its stderr into a pipe read by `cat` (the stand-in for
/// `| grep`), whose output this test follows. Both are killed on drop.
struct PipedDaemon {
    daemon: Child,
    reader: Child,
    log: Follower,
    _dir: TempDir,
}

impl PipedDaemon {
    /// Starts the daemon; `adjust` may change its command, knowing the
    /// pipe's `device:inode` (the form of `JOURNAL_STREAM`).
    fn start(config_text: &str, adjust: impl FnOnce(&mut Command, &str)) -> PipedDaemon {
        let dir = TempDir::new("sinks");
        let path = dir.write("heartbeatd.toml", config_text);
        let mut reader = Command::new("cat")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning cat");
        let pipe = reader.stdin.take().expect("cat's stdin is piped");
        let out: ChildStdout = reader.stdout.take().expect("cat's stdout is piped");
        let log = Follower::start("cat", out);
        let pipe = File::from(OwnedFd::from(pipe));
        let meta = pipe.metadata().expect("fstat of the pipe");
        let stream = format!("{}:{}", meta.dev(), meta.ino());
        let mut command = Command::new(bin("heartbeatd"));
        adjust(&mut command, &stream);
        let daemon = command
            .arg("--config")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(pipe))
            .spawn()
            .expect("spawning heartbeatd");
        PipedDaemon { daemon, reader, log, _dir: dir }
    }

    /// The first line matching `pred`, waiting up to [`DEADLINE`].
    fn wait(&self, pred: impl Pred) -> Line {
        let description = pred.describe();
        self.log
            .poll_from(0, &pred, DEADLINE)
            .unwrap_or_else(|| panic!("no {description} within {DEADLINE:?}\n--- log ---\n{}", self.log.text()))
    }

    fn addr(&self, what: &str, key: &str) -> SocketAddr {
        let line = self.wait(ev(what));
        line.field(key).parse().expect("a socket address")
    }
}

impl Drop for PipedDaemon {
    fn drop(&mut self) {
        // A stopped reader would never see the kill otherwise.
        let _ = self.reader.kill();
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        let _ = self.reader.wait();
    }
}

/// Healthy clients pinging; each counts PINGs that got no PONG within the
/// listener's timeout.
struct Healthy {
    running: Arc<AtomicBool>,
    threads: Vec<JoinHandle<(usize, usize, Duration)>>,
}

impl Healthy {
    fn start(addr: SocketAddr) -> Healthy {
        let running = Arc::new(AtomicBool::new(true));
        let threads = (0..HEALTHY)
            .map(|i| {
                let (mut c, _) = NativeClient::handshake(addr, &format!("healthy-{i}"), "");
                let running = Arc::clone(&running);
                thread::spawn(move || {
                    let (mut pongs, mut missed, mut worst) = (0, 0, Duration::ZERO);
                    let mut next = Instant::now();
                    while running.load(Ordering::Relaxed) {
                        let sent = Instant::now();
                        if c.try_send(&frame(PING, b"sink")).is_err() {
                            missed += 1;
                            break;
                        }
                        match c.read_frame(Duration::from_secs(1)) {
                            Ok(f) if f.ty == PONG => {
                                pongs += 1;
                                worst = worst.max(sent.elapsed());
                            }
                            Ok(_) => {}
                            Err(_) => missed += 1,
                        }
                        next += PING_EVERY;
                        thread::sleep(next.saturating_duration_since(Instant::now()));
                    }
                    (pongs, missed, worst)
                })
            })
            .collect();
        Healthy { running, threads }
    }

    /// Stops them; returns PONGs, PINGs without a PONG within 1 s, and the
    /// longest round trip.
    fn stop(self) -> (usize, usize, Duration) {
        self.running.store(false, Ordering::Relaxed);
        let mut total = (0, 0, Duration::ZERO);
        for t in self.threads {
            let (p, m, w) = t.join().expect("healthy client thread");
            total = (total.0 + p, total.1 + m, total.2.max(w));
        }
        total
    }
}

/// Clients that connect, HELLO, wait for WELCOME and leave, in a loop:
/// log lines, fast. A turn the daemon does not answer within a second is
/// skipped (a stuck loop is what the healthy clients report).
fn churn(addr: SocketAddr, running: &Arc<AtomicBool>) -> Vec<JoinHandle<()>> {
    (0..CHURNERS)
        .map(|t| {
            let running = Arc::clone(running);
            thread::spawn(move || {
                let mut n = 0u64;
                while running.load(Ordering::Relaxed) {
                    n += 1;
                    let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else { continue };
                    let mut c = NativeClient::from_stream(stream);
                    if c.try_send(&hello_frame(&format!("churn-{t}-{n}"), "")).is_ok() {
                        let _ = c.read_frame(Duration::from_secs(1));
                    }
                }
            })
        })
        .collect()
}

/// `heartbeatd_log_dropped_total`, or `None` while the API does not answer
/// within a second (the loop is stuck) or has no such sample.
fn dropped(api: SocketAddr) -> Option<f64> {
    let (tx, rx) = std::sync::mpsc::channel();
    // A stuck loop never answers: ask from a thread and give up after 1 s.
    thread::spawn(move || {
        let r = get(api, "/metrics");
        let text = String::from_utf8_lossy(&r.body).into_owned();
        let _ = tx.send(text);
    });
    let text = rx.recv_timeout(Duration::from_secs(1)).ok()?;
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).ok()?;
    Metrics { text, scrape }.find("heartbeatd_log_dropped_total", &[])
}

/// Churns until the daemon counts dropped lines (`stop` made the sink
/// stuck), with healthy clients pinging throughout; then `resume`s the
/// sink and checks the verdicts in `log` (what the daemon wrote, read after
/// the sink recovered) and the one recovery line.
fn check_stuck_sink(api: SocketAddr, main: SocketAddr, stop: impl FnOnce(), resume: impl FnOnce() -> Vec<Line>) {
    let healthy = Healthy::start(main);
    stop();
    let running = Arc::new(AtomicBool::new(true));
    let churners = churn(main, &running);
    let began = Instant::now();
    let mut counted = None;
    while counted.is_none() && began.elapsed() < DEADLINE {
        counted = dropped(api).filter(|&n| n > 0.0);
        thread::sleep(Duration::from_millis(100));
    }
    // Keep the sink stuck a while longer: past the listener's timeout, so a
    // loop waiting on it would convict.
    thread::sleep(Duration::from_millis(1500));
    running.store(false, Ordering::Relaxed);
    for c in churners {
        c.join().expect("churn thread");
    }
    let (pongs, missed, worst) = healthy.stop();
    let log = resume();
    let text: String = log.iter().map(|l| format!("{}\n", l.text)).collect();
    println!("stuck sink: {pongs} PONGs, {missed} missed, longest round trip {:.1} ms", ms(worst));
    assert!(counted.is_some(), "no heartbeatd_log_dropped_total > 0 within {DEADLINE:?} of a stuck log sink");
    assert_eq!(missed, 0, "healthy clients missed PONGs while the log sink was stuck (longest {worst:?})");
    let reports: Vec<&Line> = log.iter().filter(|l| l.is("log-dropped")).collect();
    assert_eq!(reports.len(), 1, "one recovery line per episode:\n{text}");
    assert!(reports[0].num("lines") > 0, "{}", reports[0]);
    let false_timeouts: Vec<&Line> =
        log.iter().filter(|l| l.is("offline") && l.get("reason") == Some("timeout")).collect();
    assert!(false_timeouts.is_empty(), "false timeouts: {false_timeouts:?}");
}

/// Waits until `log` has a `log-dropped` line, then returns every line.
fn after_recovery(log: &Follower) -> Vec<Line> {
    let _ = log.poll_from(0, &ev("log-dropped"), DEADLINE);
    log.lines()
}

/// `heartbeatd 2>&1 | cat` with `cat` stopped: the pipe fills, the loop
/// goes on.
#[test]
fn a_stopped_stderr_reader_stalls_nobody() {
    let d = PipedDaemon::start(&sink_config(), |_, _| {});
    let main = d.addr("listening", "address");
    let api = d.addr("http-listening", "address");
    let reader = d.reader.id();
    check_stuck_sink(
        api,
        main,
        || signal(reader, libc::SIGSTOP),
        || {
            signal(reader, libc::SIGCONT);
            after_recovery(&d.log)
        },
    );
}

/// Reads journal entries from `socket` into `lines` (their `MESSAGE`s,
/// parsed) until `until` is found or `timeout` passes.
fn read_journal(socket: &UnixDatagram, lines: &mut Vec<Line>, until: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 64 * 1024];
    socket.set_read_timeout(Some(Duration::from_millis(100))).expect("read timeout");
    while Instant::now() < deadline {
        let Ok(n) = socket.recv(&mut buf) else { continue };
        let entry = String::from_utf8_lossy(&buf[..n]).into_owned();
        let Some(message) = entry.lines().find_map(|l| l.strip_prefix("MESSAGE=")) else { continue };
        let line = Line::parse(lines.len(), Instant::now(), message.to_owned());
        let found = line.is(until);
        lines.push(line);
        if found {
            return;
        }
    }
}

/// The journal's socket not read (journald busy): its queue fills, the
/// daemon drops entries instead of waiting for room.
#[test]
fn a_journal_that_does_not_read_stalls_nobody() {
    let dir = TempDir::new("sinks-journal");
    let path = dir.path().join("journal.socket");
    let journal = UnixDatagram::bind(&path).expect("binding the journal socket");
    // As systemd does: JOURNAL_STREAM names stderr (here the pipe), so the
    // daemon logs to the journal socket.
    let d = PipedDaemon::start(&sink_config(), |cmd, stream| {
        cmd.env("JOURNAL_STREAM", stream).env("HEARTBEATD_JOURNAL_SOCKET", &path);
    });
    let mut lines = Vec::new();
    read_journal(&journal, &mut lines, "http-listening", DEADLINE);
    let field = |event: &str| -> SocketAddr {
        let line = lines.iter().find(|l| l.is(event)).unwrap_or_else(|| panic!("no {event} entry in {lines:?}"));
        line.field("address").parse().expect("a socket address")
    };
    let (main, api) = (field("listening"), field("http-listening"));
    check_stuck_sink(
        api,
        main,
        || {},
        || {
            read_journal(&journal, &mut lines, "log-dropped", DEADLINE);
            lines.clone()
        },
    );
    // Nothing fell back to the pipe: a full journal queue is waited out,
    // not rerouted.
    assert!(d.log.lines().iter().all(|l| !l.is("online")), "{}", d.log.text());
}

/// Clients online beside the healthy ones while snapshots are asked for:
/// their `/clients` reply is some 1.3 MB.
const CROWD: usize = 3000;

/// Snapshot requests in the burst, of each kind (`/clients`, `/events`).
const BURST: usize = 64;

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit: the crowd
/// and the burst need more than a default soft limit of 1,024.
fn raise_open_files() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit fill and read the struct they are given.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0, "getrlimit");
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0, "setrlimit");
    }
}

/// Sends `GET path` and reads the answer slowly (1 KiB per 20 ms) for
/// `read_for`, then hangs up; returns the bytes read.
fn slow_reader(api: SocketAddr, path: &'static str, read_for: Duration) -> JoinHandle<usize> {
    thread::spawn(move || {
        let mut stream = TcpStream::connect_timeout(&api, DEADLINE).expect("connecting to the API");
        stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).expect("sending the request");
        stream.set_read_timeout(Some(Duration::from_millis(20))).expect("read timeout");
        let began = Instant::now();
        let mut buf = [0u8; 1024];
        let mut got = 0;
        while began.elapsed() < read_for {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(_) => {}
            }
            thread::sleep(Duration::from_millis(20));
        }
        got
    })
}

/// Thousands online, then 64 `GET /clients` and 64 `GET /events` at once,
/// each read slowly: the replies are made a page at a time as the sockets
/// drain, so the healthy clients keep their PONGs; afterwards both kinds
/// of snapshot still list everyone.
#[test]
fn a_burst_of_slow_snapshot_readers_stalls_nobody() {
    raise_open_files();
    let text = with_http(
        &config(
            "100ms",
            "max_clients = 8192\nmax_per_address = 8192",
            &[
                native("main", "interval = \"100ms\"\ntimeout = \"1s\""),
                native("crowd", "interval = \"30s\"\ntimeout = \"90s\""),
            ],
        ),
        "max_connections = 256",
    );
    let d = Daemon::start(&text);
    let (main, crowd_addr, api) = (d.addr("main"), d.addr("crowd"), http_addr(&d));
    let crowd: Vec<NativeClient> =
        (0..CROWD).map(|i| NativeClient::handshake(crowd_addr, &format!("crowd-{i}"), "").0).collect();
    let healthy = Healthy::start(main);
    thread::sleep(Duration::from_millis(300));
    let readers: Vec<JoinHandle<usize>> = (0..BURST)
        .flat_map(|_| {
            [slow_reader(api, "/clients", Duration::from_secs(3)), slow_reader(api, "/events", Duration::from_secs(3))]
        })
        .collect();
    let read: usize = readers.into_iter().map(|r| r.join().expect("reader thread")).sum();
    let (pongs, missed, worst) = healthy.stop();
    println!(
        "snapshot burst: {pongs} PONGs, {missed} missed, longest round trip {:.1} ms; readers got {read} bytes",
        ms(worst)
    );
    assert_eq!(missed, 0, "healthy clients missed PONGs during the snapshot burst (longest {worst:?})");
    d.assert_none(ev("offline").kv("reason", "timeout"));
    // Both snapshots still list everyone, in session order. A list longer
    // than a page has no Content-Length: it ends with the connection.
    let reply = get(api, "/clients");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-length"), None, "a long list is streamed");
    let list: Vec<serde_json::Value> = serde_json::from_slice(&reply.body).expect("/clients is a JSON array");
    assert_eq!(list.len(), CROWD, "the crowd (the healthy clients have left)");
    let sessions: Vec<u64> = list.iter().map(|c| c["session"].as_u64().expect("a session")).collect();
    assert!(sessions.windows(2).all(|w| w[0] < w[1]), "/clients is in session order");
    let mut sse = Sse::connect(api, None);
    let snapshot = sse.expect_kind("snapshot").json();
    assert_eq!(snapshot["clients"].as_array().map(Vec::len), Some(CROWD));
    drop(crowd);
}
