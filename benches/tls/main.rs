//! The TLS report (docs/BENCHMARKS.md, "TLS"): user memory per idle TLS
//! connection, CPU per heartbeat with TLS against plain, TLS handshakes
//! per second.
//!
//! ```sh
//! cargo bench --bench tls                          # N = 10,000
//! cargo bench --bench tls -- --clients 2000 --secs 3
//! ```
//!
//! Per transport (plain, then TLS) a fresh release `heartbeatd` serves one
//! native listener (TLS: an ECDSA P-256 certificate made with `openssl`,
//! TLS 1.3 negotiated). `--clients` connect from `THREADS` threads, each
//! handshaking (TLS, then HELLO → WELCOME) before the next; the daemon's
//! `VmRSS` before connecting and 2 s after the last WELCOME gives the user
//! memory per idle connection, its CPU time (utime + stime) over the
//! connects the CPU per handshake. Then `HOT` of the connections
//! heartbeat as fast as PONGs come back (one PING in flight each) for
//! `--secs`: the daemon's CPU time over the replies is the CPU per
//! heartbeat. The clients are blocking sockets (rustls' `StreamOwned`
//! for TLS), in this process: loopback only.
//!
//! Under `cargo test --all-targets` (no `--bench` argument) it does nothing.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use heartbeatd::tls::ClientTls;
use heartbeatd_harness::*;

/// Client threads for connecting and heartbeating.
const THREADS: usize = 4;
/// Connections that heartbeat in the CPU step.
const HOT: usize = 200;

/// A connected client: plain or TLS, both blocking.
trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// One transport's numbers.
struct Report {
    name: &'static str,
    clients: usize,
    rss_per_conn: f64,
    connect_secs: f64,
    cpu_per_handshake_us: f64,
    heartbeats: u64,
    cpu_per_heartbeat_us: f64,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        return ExitCode::SUCCESS;
    }
    let number = |flag: &str, default: f64| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let clients = number("--clients", 10_000.0) as usize;
    let secs = number("--secs", 5.0);
    let dir = TempDir::new("tls-bench");
    let pki = Pki::new(dir.path());
    let ca = pki.ca("ca");
    let server = pki.server(&ca, "server");
    let client = ClientTls::new(&ca.cert, None, "localhost").expect("client TLS config");
    let mut reports = Vec::new();
    for tls in [false, true] {
        let table = if tls { tls_table(&server, None, None) } else { String::new() };
        let extra = format!("interval = \"60s\"\nhandshake_timeout = \"60s\"\n{table}");
        let d = Daemon::start(&config("100ms", "max_clients = 19000", &[native("main", &extra)]));
        d.wait(ev("listening").kv("listener", "main"));
        let tls = tls.then_some(&client);
        reports.push(run(&d, tls, clients, Duration::from_secs_f64(secs)));
    }
    println!("| transport | clients | user memory per idle connection | connect time | daemon CPU per handshake | heartbeats | daemon CPU per heartbeat |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in &reports {
        println!(
            "| {} | {} | {:.0} B | {:.1} s | {:.1} µs ({:.0} handshakes/s of one core) | {} | {:.2} µs |",
            r.name,
            r.clients,
            r.rss_per_conn,
            r.connect_secs,
            r.cpu_per_handshake_us,
            1e6 / r.cpu_per_handshake_us,
            r.heartbeats,
            r.cpu_per_heartbeat_us
        );
    }
    ExitCode::SUCCESS
}

/// Connects `clients`, samples memory and CPU, then heartbeats.
fn run(d: &Daemon, tls: Option<&ClientTls>, clients: usize, secs: Duration) -> Report {
    let addr = d.addr("main");
    let pid = d.pid();
    let rss_before = rss(pid);
    let cpu_before = cpu_ticks(pid);
    let started = Instant::now();
    let per_thread = clients.div_ceil(THREADS);
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let tls = tls.cloned();
            thread::spawn(move || {
                let first = t * per_thread;
                let last = ((t + 1) * per_thread).min(clients);
                (first..last).map(|i| connect(addr, tls.as_ref(), &format!("c{i}"))).collect::<Vec<_>>()
            })
        })
        .collect();
    let mut conns: Vec<Box<dyn Stream>> = handles.into_iter().flat_map(|h| h.join().expect("connect thread")).collect();
    let connect_secs = started.elapsed().as_secs_f64();
    let cpu_connect = cpu_ticks(pid) - cpu_before;
    thread::sleep(Duration::from_secs(2));
    let rss_after = rss(pid);
    // The hot connections heartbeat; the rest stay idle.
    let hot: Vec<Box<dyn Stream>> = conns.drain(..HOT.min(clients)).collect();
    let mut groups: Vec<Vec<Box<dyn Stream>>> = (0..THREADS).map(|_| Vec::new()).collect();
    for (i, c) in hot.into_iter().enumerate() {
        groups[i % THREADS].push(c);
    }
    let cpu_before = cpu_ticks(pid);
    let deadline = Instant::now() + secs;
    let handles: Vec<_> = groups
        .into_iter()
        .map(|mut group| {
            thread::spawn(move || {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    for c in &mut group {
                        c.write_all(&frame(PING, b"12345678")).expect("PING");
                    }
                    for c in &mut group {
                        let f = read_frame(c.as_mut());
                        assert_eq!(f.0, PONG, "a PONG");
                        n += 1;
                    }
                }
                n
            })
        })
        .collect();
    let heartbeats: u64 = handles.into_iter().map(|h| h.join().expect("heartbeat thread")).sum();
    let cpu_beats = cpu_ticks(pid) - cpu_before;
    let tick_us = 1e6 / clock_ticks_per_second();
    drop(conns);
    Report {
        name: if tls.is_some() { "TLS 1.3 (rustls, ring)" } else { "plain" },
        clients,
        rss_per_conn: (rss_after.saturating_sub(rss_before)) as f64 / clients as f64,
        connect_secs,
        cpu_per_handshake_us: cpu_connect as f64 * tick_us / clients as f64,
        heartbeats,
        cpu_per_heartbeat_us: cpu_beats as f64 * tick_us / heartbeats.max(1) as f64,
    }
}

/// One client: TCP (and TLS) connect, HELLO, WELCOME.
fn connect(addr: SocketAddr, tls: Option<&ClientTls>, id: &str) -> Box<dyn Stream> {
    let tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let mut stream: Box<dyn Stream> = match tls {
        None => Box::new(tcp),
        Some(tls) => Box::new(rustls::StreamOwned::new(tls.connect().expect("client connection"), tcp)),
    };
    stream.write_all(&hello_frame(id, "")).expect("HELLO");
    assert_eq!(read_frame(stream.as_mut()).0, WELCOME, "WELCOME for {id}");
    stream
}

/// One frame: its type and payload.
fn read_frame(s: &mut dyn Stream) -> (u8, Vec<u8>) {
    let mut header = [0; 4];
    s.read_exact(&mut header).expect("frame header");
    let mut payload = vec![0; usize::from(u16::from_be_bytes([header[2], header[3]]))];
    s.read_exact(&mut payload).expect("frame payload");
    (header[0], payload)
}

/// `VmRSS` of `pid`, bytes.
fn rss(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kib = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).expect("VmRSS");
    kib.trim().trim_end_matches("kB").trim().parse::<u64>().expect("VmRSS kB") * 1024
}

/// `_SC_CLK_TCK`: the unit of utime and stime.
fn clock_ticks_per_second() -> f64 {
    // The kernel's USER_HZ, 100 on every Linux this runs on; read from
    // getconf rather than assumed.
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}
