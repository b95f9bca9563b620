//! The daemon's own stalls (issue 10): runs each scenario K times against
//! the release `heartbeatd` and prints the markdown table of
//! docs/FAULTS.md, "The daemon's own stalls".
//!
//! ```sh
//! cargo bench --bench stalls                     # K = 5, about 5 minutes
//! cargo bench --bench stalls -- --runs 3 --only stop,reload
//! ```
//!
//! Scenarios: the daemon SIGSTOPped for 0.5x, 2x and 10x the timeout with
//! 2,000 clients pinging (`stop`); 64 concurrent `GET /clients` with 10,000
//! online, read at full speed and not read at all (`snapshots`); 500
//! `/events` subscribers with 2,000 clients (`subscribers`); a reload from
//! 3 s / 15 s to 200 ms / 1 s with 100 clients following WELCOME
//! (`reload`). Per scenario: false offlines (any `offline` of a client that
//! kept its heartbeat: goal 0), the longest gap between two PONGs of one
//! healthy client, and the daemon's RSS (VmHWM, the peak, and VmRSS after).
//!
//! The healthy clients are native clients pinging at the interval their
//! WELCOME announces, from one thread over non-blocking sockets. Under
//! `cargo test --all-targets` (no `--bench` argument) it does nothing.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use heartbeatd_harness::http::{http_addr, with_http};
use heartbeatd_harness::*;

/// Runs per scenario unless `--runs` says otherwise.
const DEFAULT_RUNS: usize = 5;

/// The listener of the healthy clients: PING every 200 ms, offline after
/// 1 s of silence, tick 100 ms (the issue's set-up).
const HEALTHY: &str = "interval = \"200ms\"\ntimeout = \"1s\"";

/// The listener of the idle crowd: nothing due during a bench.
const CROWD: &str = "interval = \"5min\"\ntimeout = \"15min\"";

fn daemon_config(listeners: &[String], http: bool) -> String {
    let text = config("100ms", "max_clients = 20000\nmax_per_address = 20000", listeners);
    if http {
        with_http(&text, "max_connections = 1024")
    } else {
        text
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit: 10,000 clients.
fn raise_open_files() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit fill and read the struct they are given.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
}

/// `VmHWM` and `VmRSS` of `pid`, in MiB.
fn rss(pid: i32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// What the pinger shares.
struct Shared {
    running: AtomicBool,
    /// Set to restart gap measurement from now.
    reset: AtomicBool,
    /// The longest gap between two PONGs of one client since the reset, µs.
    max_gap_us: AtomicU64,
}

/// Healthy clients: each pings at its WELCOME's interval (a later WELCOME,
/// after a reload, changes it) and records the gaps between its PONGs.
struct Fleet {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Member {
    stream: TcpStream,
    buf: Vec<u8>,
    interval: Duration,
    next_ping: Instant,
    last_pong: Instant,
    dead: bool,
}

impl Fleet {
    fn start(addr: SocketAddr, n: usize, prefix: &str) -> Fleet {
        let mut members = Vec::with_capacity(n);
        for i in 0..n {
            let (c, w) = NativeClient::handshake(addr, &format!("{prefix}-{i}"), "");
            c.stream.set_nonblocking(true).expect("non-blocking");
            let interval = Duration::from_millis(u64::from(w.interval_ms));
            let now = Instant::now();
            // Phases spread over the interval, as a fleet's are.
            let phase = interval.mul_f64(fastrand::f64());
            members.push(Member {
                stream: c.stream,
                buf: Vec::new(),
                interval,
                next_ping: now + phase,
                last_pong: now,
                dead: false,
            });
        }
        let shared = Arc::new(Shared {
            running: AtomicBool::new(true),
            reset: AtomicBool::new(true),
            max_gap_us: AtomicU64::new(0),
        });
        let s = Arc::clone(&shared);
        let thread = thread::spawn(move || pinger(members, &s));
        Fleet { shared, thread: Some(thread) }
    }

    /// Measures gaps from now on.
    fn reset(&self) {
        self.shared.reset.store(true, Ordering::SeqCst);
        while self.shared.reset.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// The longest PONG gap since the last reset.
    fn max_gap(&self) -> Duration {
        Duration::from_micros(self.shared.max_gap_us.load(Ordering::SeqCst))
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.shared.running.store(false, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn pinger(mut members: Vec<Member>, shared: &Shared) {
    let ping = frame(PING, b"stall");
    let mut chunk = vec![0u8; 16 * 1024];
    while shared.running.load(Ordering::Relaxed) {
        let now = Instant::now();
        if shared.reset.load(Ordering::SeqCst) {
            for m in &mut members {
                m.last_pong = now;
            }
            shared.max_gap_us.store(0, Ordering::SeqCst);
            shared.reset.store(false, Ordering::SeqCst);
        }
        for m in members.iter_mut().filter(|m| !m.dead) {
            if now >= m.next_ping {
                match m.stream.write(&ping) {
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(_) => m.dead = true,
                }
                m.next_ping += m.interval;
                if m.next_ping < now {
                    m.next_ping = now + m.interval;
                }
            }
            loop {
                match m.stream.read(&mut chunk) {
                    Ok(0) => {
                        m.dead = true;
                        break;
                    }
                    Ok(n) => m.buf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => {
                        m.dead = true;
                        break;
                    }
                }
            }
            let mut used = 0;
            while let Some((f, n)) = decode_frame(&m.buf[used..]) {
                used += n;
                match f.ty {
                    PONG => {
                        let at = Instant::now();
                        let gap = at.saturating_duration_since(m.last_pong);
                        shared.max_gap_us.fetch_max(gap.as_micros() as u64, Ordering::SeqCst);
                        m.last_pong = at;
                    }
                    // A new WELCOME (a reload) restarts the schedule: the
                    // next PING is due one new interval from now at most.
                    WELCOME => {
                        m.interval = Duration::from_millis(u64::from(Welcome::parse(&f.payload).interval_ms));
                        m.next_ping = m.next_ping.min(Instant::now() + m.interval);
                    }
                    _ => {}
                }
            }
            m.buf.drain(..used);
        }
        thread::sleep(Duration::from_millis(2));
    }
}

/// An idle crowd of `n` clients after WELCOME, held open.
fn crowd(addr: SocketAddr, n: usize) -> Vec<NativeClient> {
    (0..n).map(|i| NativeClient::handshake(addr, &format!("crowd-{i}"), "").0).collect()
}

/// One row of the table, over K runs.
struct Row {
    scenario: String,
    false_offlines: Vec<usize>,
    gaps: Vec<Duration>,
    peak_mib: f64,
    rss_mib: f64,
    note: String,
}

impl Row {
    fn new(scenario: &str) -> Row {
        Row {
            scenario: scenario.into(),
            false_offlines: Vec::new(),
            gaps: Vec::new(),
            peak_mib: 0.0,
            rss_mib: 0.0,
            note: String::new(),
        }
    }

    /// Records one run: offlines logged since `mark`, the fleet's gap, RSS.
    fn run(&mut self, d: &Daemon, mark: usize, fleet: &Fleet) {
        self.false_offlines.push(d.lines()[mark..].iter().filter(|l| l.is("offline")).count());
        self.gaps.push(fleet.max_gap());
        let (peak, now) = rss(d.pid());
        self.peak_mib = self.peak_mib.max(peak);
        self.rss_mib = now;
    }

    fn print(&self) {
        let mut gaps = self.gaps.clone();
        gaps.sort();
        let median = gaps.get(gaps.len() / 2).copied().unwrap_or_default();
        let max = gaps.last().copied().unwrap_or_default();
        println!(
            "| {} | {} | {} ({}) | {:.0} / {:.0} | {:.1} / {:.1} | {} |",
            self.scenario,
            self.gaps.len(),
            self.false_offlines.iter().sum::<usize>(),
            self.false_offlines.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
            ms(median),
            ms(max),
            self.peak_mib,
            self.rss_mib,
            self.note
        );
    }
}

/// The daemon stopped for `factors` × the 1 s timeout, K times each, with
/// 2,000 clients pinging.
fn stops(runs: usize) -> Vec<Row> {
    let d = Daemon::start(&daemon_config(&[native("main", HEALTHY)], false));
    let fleet = Fleet::start(d.addr("main"), 2000, "fleet");
    thread::sleep(Duration::from_secs(1));
    let mut rows = Vec::new();
    for factor in [0.5, 2.0, 10.0] {
        let mut row = Row::new(&format!("SIGSTOP {:.1} s (x{factor} the timeout), 2,000 clients", factor));
        for _ in 0..runs {
            let mark = d.mark();
            fleet.reset();
            thread::sleep(Duration::from_millis(500));
            d.signal(libc::SIGSTOP);
            thread::sleep(Duration::from_secs_f64(factor));
            d.signal(libc::SIGCONT);
            thread::sleep(Duration::from_secs(2));
            row.run(&d, mark, &fleet);
        }
        row.note = "gap includes the stop itself".into();
        rows.push(row);
    }
    rows
}

/// `GET /clients` from `n` threads at once; `read` false: never read, hang
/// up after `hold`. Returns the bytes read and how long the slowest took.
fn burst(api: SocketAddr, n: usize, read: bool, hold: Duration) -> (usize, Duration) {
    let began = Instant::now();
    let threads: Vec<JoinHandle<usize>> = (0..n)
        .map(|_| {
            thread::spawn(move || {
                let Ok(mut s) = TcpStream::connect(api) else { return 0 };
                let _ = s.write_all(b"GET /clients HTTP/1.1\r\nHost: x\r\n\r\n");
                if !read {
                    thread::sleep(hold);
                    return 0;
                }
                let mut buf = Vec::new();
                let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
                let _ = s.read_to_end(&mut buf);
                buf.len()
            })
        })
        .collect();
    let bytes = threads.into_iter().map(|t| t.join().unwrap_or(0)).sum();
    (bytes, began.elapsed())
}

/// 64 concurrent `GET /clients` with 10,000 online (200 of them pinging).
fn snapshots(runs: usize) -> Vec<Row> {
    let d = Daemon::start(&daemon_config(&[native("main", HEALTHY), native("crowd", CROWD)], true));
    let api = http_addr(&d);
    let fleet = Fleet::start(d.addr("main"), 200, "fleet");
    let _crowd = crowd(d.addr("crowd"), 9800);
    let mut read = Row::new("64 x GET /clients read at full speed, 10,000 online");
    let mut slowest = Duration::ZERO;
    let mut bytes = 0;
    for _ in 0..runs {
        let mark = d.mark();
        fleet.reset();
        let (b, took) = burst(api, 64, true, Duration::ZERO);
        thread::sleep(Duration::from_millis(500));
        read.run(&d, mark, &fleet);
        slowest = slowest.max(took);
        bytes = b;
    }
    read.note = format!("{:.1} MB per run, all 64 done within {:.1} s", bytes as f64 / 1e6, slowest.as_secs_f64());
    let mut unread = Row::new("64 x GET /clients never read (held 3 s), 10,000 online");
    for _ in 0..runs {
        let mark = d.mark();
        fleet.reset();
        burst(api, 64, false, Duration::from_secs(3));
        thread::sleep(Duration::from_millis(500));
        unread.run(&d, mark, &fleet);
    }
    unread.note = "replies made only as the socket drains".into();
    vec![read, unread]
}

/// 500 `/events` subscribers at once with 2,000 clients pinging; each
/// reads until its snapshot is complete, then all leave.
fn subscribers(runs: usize) -> Vec<Row> {
    let d = Daemon::start(&daemon_config(&[native("main", HEALTHY)], true));
    let api = http_addr(&d);
    let fleet = Fleet::start(d.addr("main"), 2000, "fleet");
    thread::sleep(Duration::from_secs(1));
    let mut row = Row::new("500 /events subscribers, 2,000 clients");
    let mut slowest = Duration::ZERO;
    for _ in 0..runs {
        let mark = d.mark();
        fleet.reset();
        let began = Instant::now();
        let mut subs: Vec<(TcpStream, Vec<u8>, bool)> = (0..500)
            .filter_map(|_| {
                let mut s = TcpStream::connect(api).ok()?;
                s.write_all(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
                s.set_nonblocking(true).ok()?;
                Some((s, Vec::new(), false))
            })
            .collect();
        let mut chunk = vec![0u8; 64 * 1024];
        while subs.iter().any(|(_, _, done)| !done) && began.elapsed() < Duration::from_secs(60) {
            for (s, seen, done) in subs.iter_mut().filter(|(_, _, done)| !done) {
                while let Ok(n) = s.read(&mut chunk) {
                    if n == 0 {
                        *done = true;
                        break;
                    }
                    // Only the tail matters: the snapshot ends with `]}` and
                    // a blank line.
                    seen.extend_from_slice(&chunk[..n]);
                    let keep = seen.len().saturating_sub(8);
                    seen.drain(..keep);
                    if seen.ends_with(b"]}\n\n") {
                        *done = true;
                    }
                }
            }
            thread::sleep(Duration::from_millis(2));
        }
        slowest = slowest.max(began.elapsed());
        row.run(&d, mark, &fleet);
        drop(subs);
        thread::sleep(Duration::from_millis(500));
    }
    row.note = format!("every snapshot (2,000 clients) received within {:.1} s", slowest.as_secs_f64());
    vec![row]
}

/// A reload from 3 s / 15 s to 200 ms / 1 s with 100 clients following
/// WELCOME, and back.
fn reload(runs: usize) -> Vec<Row> {
    let slow = daemon_config(&[native("main", "interval = \"3s\"\ntimeout = \"15s\"")], false);
    let d = Daemon::start(&slow);
    let fleet = Fleet::start(d.addr("main"), 100, "fleet");
    let fast = slow.replace("interval = \"3s\"\ntimeout = \"15s\"", HEALTHY);
    let mut row = Row::new("reload 3 s / 15 s -> 200 ms / 1 s, 100 clients following WELCOME");
    let apply = |text: &str| {
        let mark = d.mark();
        std::fs::write(&d.config_path, text).expect("writing the config");
        d.signal(libc::SIGHUP);
        d.wait_from(mark, ev("reloaded"), DEADLINE);
    };
    for _ in 0..runs {
        // Somewhere in the 3 s interval, as it falls.
        thread::sleep(Duration::from_millis(3000 + fastrand::u64(0..3000)));
        let mark = d.mark();
        fleet.reset();
        apply(&fast);
        thread::sleep(Duration::from_secs(3));
        row.run(&d, mark, &fleet);
        apply(&slow);
    }
    row.note = "gap counted from the reload".into();
    vec![row]
}

/// A scenario: K runs in, rows out.
type Scenario = fn(usize) -> Vec<Row>;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let runs = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_RUNS);
    let only: Option<Vec<String>> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.split(',').map(str::to_owned).collect());
    let wanted = |name: &str| only.as_ref().is_none_or(|o| o.iter().any(|n| n == name));
    raise_open_files();
    let began = Instant::now();
    let mut rows = Vec::new();
    let scenarios: [(&str, Scenario); 4] =
        [("stop", stops), ("snapshots", snapshots), ("subscribers", subscribers), ("reload", reload)];
    for (name, scenario) in scenarios {
        if wanted(name) {
            eprintln!("stalls: {name} ({runs} runs)");
            rows.extend(scenario(runs));
        }
    }
    println!("| scenario | K | false offlines (per run) | longest PONG gap, median / max (ms) | daemon RSS peak / after (MiB) | notes |");
    println!("|---|---:|---|---:|---:|---|");
    for row in &rows {
        row.print();
    }
    println!("\n{} runs per scenario, {:.0} s in all.", runs, began.elapsed().as_secs_f64());
}
