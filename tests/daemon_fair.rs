//! Fair shares (issue 10, rule R6): one client pipelining PINGs cannot make
//! the daemon late for its neighbours, and a native client that stops
//! reading is declared `write-stalled` soon, not after megabytes of kernel
//! send buffer.
//!
//! Each test keeps 20 normal native clients pinging every 100 ms (timeout
//! 1 s), each from its own thread, beside one or more flooders, and asserts
//! events: not one `offline … reason=timeout`, and the non-reading flooder's
//! `offline reason=write-stalled` within a deadline. The neighbours' PONG
//! round trips are printed with `-- --nocapture` (measured, not asserted;
//! docs/BENCHMARKS.md, "Fair shares", says how to run it against the release
//! daemon), and so is the flood rate.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use heartbeatd_harness::*;

/// Normal clients beside the flooders.
const NEIGHBOURS: usize = 20;

/// Each neighbour pings this often.
const PING_EVERY: Duration = Duration::from_millis(100);

/// The listener: PING every 100 ms, offline after 1 s of silence.
fn fair_config() -> String {
    config("100ms", "", &[native("main", "interval = \"100ms\"\ntimeout = \"1s\"")])
}

/// Neighbours pinging, each recording its PONG round trips.
struct Neighbours {
    sessions: Vec<u64>,
    running: Arc<AtomicBool>,
    threads: Vec<JoinHandle<(Vec<Duration>, usize)>>,
}

impl Neighbours {
    fn start(addr: SocketAddr) -> Neighbours {
        let running = Arc::new(AtomicBool::new(true));
        let mut sessions = Vec::new();
        let mut threads = Vec::new();
        for i in 0..NEIGHBOURS {
            let (mut c, w) = NativeClient::handshake(addr, &format!("neighbour-{i}"), "");
            sessions.push(w.session);
            let running = Arc::clone(&running);
            threads.push(thread::spawn(move || {
                let mut rtts = Vec::new();
                let mut missed = 0;
                let mut next = Instant::now();
                while running.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    if c.try_send(&frame(PING, b"fair")).is_err() {
                        break;
                    }
                    match c.read_frame(Duration::from_secs(1)) {
                        Ok(f) if f.ty == PONG => rtts.push(sent.elapsed()),
                        Ok(_) => {}
                        Err(_) => missed += 1,
                    }
                    next += PING_EVERY;
                    thread::sleep(next.saturating_duration_since(Instant::now()));
                }
                (rtts, missed)
            }));
        }
        Neighbours { sessions, running, threads }
    }

    /// Stops the neighbours and prints their round trips.
    fn stop(self, what: &str) {
        self.running.store(false, Ordering::Relaxed);
        let mut all = Vec::new();
        let mut missed = 0;
        for t in self.threads {
            let (rtts, m) = t.join().expect("neighbour thread");
            all.extend(rtts);
            missed += m;
        }
        all.sort();
        let pct = |p: f64| all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1))).copied();
        println!(
            "{what}: {} PONGs, {missed} missed, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            all.len(),
            pct(0.50).map_or(f64::NAN, ms),
            pct(0.99).map_or(f64::NAN, ms),
            all.last().copied().map_or(f64::NAN, ms),
        );
    }
}

/// Puts the calling thread at the lowest scheduling priority (nice 19).
///
/// The flooder's threads run on the same 2 cores as the daemon and the
/// neighbours. At equal priority they take the daemon's core in
/// scheduler slices of milliseconds, which the neighbours' round trips
/// would then measure instead of the daemon's fairness; a real flooder's
/// CPU is not the daemon's. At nice 19 they still take the core the daemon
/// leaves idle, so the flood keeps the daemon busy.
fn lowest_priority() {
    // SAFETY: gettid and setpriority take and return plain integers; the
    // nice value is per thread on Linux, so this changes only the caller.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19) };
    assert_eq!(rc, 0, "setpriority: {}", std::io::Error::last_os_error());
}

/// A client pipelining empty PINGs as fast as the daemon takes them; with
/// another thread draining its PONGs, both at the lowest priority. Ends
/// when `running` clears or the daemon closes the connection.
/// The writer thread returns how many bytes it wrote.
fn flood(addr: SocketAddr, id: &str, running: Arc<AtomicBool>) -> (u64, JoinHandle<usize>) {
    let (c, w) = NativeClient::handshake(addr, id, "");
    let mut stream: TcpStream = c.stream;
    let mut reader = stream.try_clone().expect("cloning the flooder's socket");
    thread::spawn(move || {
        lowest_priority();
        let mut buf = vec![0u8; 64 * 1024];
        while matches!(reader.read(&mut buf), Ok(n) if n > 0) {}
    });
    let chunk: Vec<u8> = (0..4096).flat_map(|_| frame(PING, &[])).collect();
    stream.set_write_timeout(Some(Duration::from_millis(100))).expect("write timeout");
    let t = thread::spawn(move || {
        lowest_priority();
        let mut written = 0;
        while running.load(Ordering::Relaxed) {
            match stream.write(&chunk) {
                Ok(n) => written += n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                // The daemon closed on us.
                Err(_) => break,
            }
        }
        written
    });
    (w.session, t)
}

/// Flooders that read their PONGs stay online; their neighbours are never
/// late enough to time out.
fn reading_flooders_convict_nobody(flooders: usize) {
    let d = Daemon::start(&fair_config());
    let addr = d.addr("main");
    let neighbours = Neighbours::start(addr);
    for s in &neighbours.sessions {
        d.wait(ev("online").kv("session", s));
    }
    let running = Arc::new(AtomicBool::new(true));
    let started = Instant::now();
    let floods: Vec<_> = (0..flooders).map(|i| flood(addr, &format!("flooder-{i}"), Arc::clone(&running))).collect();
    d.assert_absent_from(d.mark(), ev("offline").kv("reason", "timeout"), Duration::from_secs(3));
    neighbours.stop(&format!("{flooders} reading flooder(s)"));
    running.store(false, Ordering::Relaxed);
    let written: usize = floods.into_iter().map(|(_, t)| t.join().expect("flooder thread")).sum();
    // An empty PING is its 4-byte header.
    println!("flood: {:.0} PINGs/s in all", written as f64 / 4.0 / started.elapsed().as_secs_f64());
    d.assert_none(ev("offline").kv("reason", "timeout"));
}

#[test]
fn one_reading_flooder_convicts_nobody() {
    reading_flooders_convict_nobody(1);
}

#[test]
fn four_reading_flooders_convict_nobody() {
    reading_flooders_convict_nobody(4);
}

/// A client that pipelines 32-byte PINGs at about 200 KB/s and never
/// reads its PONGs fills the kernel's buffers and then its own queue, and is
/// closed as `write-stalled` within seconds: the send buffer is capped, so
/// that is about 320 KiB at its rate (an autotuned 4 MiB took over 20 s).
/// Its neighbours are not convicted meanwhile.
#[test]
fn a_client_that_stops_reading_is_write_stalled_soon_and_convicts_nobody() {
    let d = Daemon::start(&fair_config());
    let addr = d.addr("main");
    let neighbours = Neighbours::start(addr);
    for s in &neighbours.sessions {
        d.wait(ev("online").kv("session", s));
    }
    let (mut c, w) = NativeClient::handshake(addr, "deaf", "");
    // 56 PINGs of 36 bytes every 10 ms: some 200 KB/s.
    let burst: Vec<u8> = (0..56).flat_map(|_| frame(PING, &[0xab; 32])).collect();
    let offline = ev("offline").kv("session", w.session);
    let started = Instant::now();
    let mut next = started;
    let off = loop {
        if let Some(off) = d.poll_from(0, &offline, Duration::ZERO) {
            break off;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "not write-stalled within 10 s\n{}", d.log_text());
        if c.try_send(&burst).is_err() {
            // The daemon closed on us: it must say why in the log.
            break d.wait(offline);
        }
        next += Duration::from_millis(10);
        thread::sleep(next.saturating_duration_since(Instant::now()));
    };
    println!("non-reading client write-stalled after {:.0} ms", ms(started.elapsed()));
    assert_eq!(off.field("reason"), "write-stalled", "{off}");
    d.assert_absent_from(d.mark(), ev("offline").kv("reason", "timeout"), Duration::from_secs(1));
    neighbours.stop("1 non-reading client");
    d.assert_none(ev("offline").kv("reason", "timeout"));
}
