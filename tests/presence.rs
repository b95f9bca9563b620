//! Presence is only what is really there (issue 10, R5 and R7): a
//! connection whose peer left before it was served is a ghost and never
//! goes online, and a probe HELLO never goes online either.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use heartbeatd_harness::http::*;
use heartbeatd_harness::*;

/// Native ghosts that connect, HELLO and close while the daemon is frozen.
const NATIVE_GHOSTS: usize = 20;
/// Raw ghosts that connect and close while the daemon is frozen.
const RAW_GHOSTS: usize = 5;

/// A native listener `main` (nothing times out during a test), a raw
/// listener `plain`, and the status API.
fn daemon() -> Daemon {
    Daemon::start(&with_http(
        &config("100ms", "", &[native("main", "interval = \"3s\"\nmisses = 5"), raw("plain", "interval = \"3s\"")]),
        "",
    ))
}

/// Polls `/metrics` until `name` is at least `want`, within [`DEADLINE`];
/// returns the last value seen.
fn metric_reaches(http: SocketAddr, name: &str, want: f64) -> f64 {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let value = scrape(http).value(name, &[]);
        if value >= want || Instant::now() >= deadline {
            return value;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A daemon frozen while clients connect, HELLO and give up (and a
/// `heartbeat check` times out) wakes into no online event for any of them:
/// they are counted as abandoned, in one line, and the live agent whose id
/// they used keeps its session.
#[test]
fn ghosts_from_a_frozen_backlog_never_go_online_nor_replace() {
    let d = daemon();
    let http = http_addr(&d);
    let addr = d.addr("main");
    let (mut live, w) = NativeClient::handshake(addr, "ghost-0", "");
    d.wait(ev("online").kv("session", w.session));
    let mark = d.mark();

    d.signal(libc::SIGSTOP);
    for i in 0..NATIVE_GHOSTS {
        let mut ghost = NativeClient::connect(addr);
        ghost.hello(&format!("ghost-{}", i % 4), "");
        ghost.fin();
    }
    for _ in 0..RAW_GHOSTS {
        drop(PlainClient::connect(d.addr("plain")));
    }
    let out = Command::new(bin("heartbeat"))
        .args(["check", "--server", &addr.to_string(), "--id", "ghost-0", "--timeout", "300ms"])
        .output()
        .expect("run check");
    assert_eq!(out.status.code(), Some(1), "the check must give up: {}", String::from_utf8_lossy(&out.stdout));
    d.signal(libc::SIGCONT);

    let ghosts = (NATIVE_GHOSTS + RAW_GHOSTS + 1) as f64;
    assert_eq!(metric_reaches(http, "heartbeatd_abandoned_total", ghosts), ghosts);
    let line = d.wait_from(mark, ev("abandoned"), DEADLINE);
    assert_eq!(line.num("count") as f64, ghosts, "one line for the whole burst: {line}");
    live.round_trip(b"still the one");

    let after = &d.lines()[mark..];
    let presence: Vec<&Line> = after.iter().filter(|l| l.is("online") || l.is("offline")).collect();
    assert!(presence.is_empty(), "ghosts made presence events: {presence:#?}");
    assert!(!after.iter().any(|l| l.is("handshake-failed")), "a ghost is counted, not logged alone");
    assert_eq!(after.iter().filter(|l| l.is("abandoned")).count(), 1);
}
