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

/// A probe HELLO (flags bit 0) for `id`, no token.
fn probe_hello(id: &str) -> Vec<u8> {
    let mut bytes = hello_frame(id, "");
    bytes[1] = 0x01;
    bytes
}

/// A probe with the id of a live agent is answered (WELCOME, PONG) but
/// replaces nobody and makes no event; it is counted, and closed at the
/// handshake timeout at the latest.
#[test]
fn a_probe_with_a_live_id_is_answered_never_online_and_counted() {
    let d = Daemon::start(&with_http(
        &config("20ms", "", &[native("main", "interval = \"3s\"\nmisses = 5\nhandshake_timeout = \"500ms\"")]),
        "",
    ));
    let http = http_addr(&d);
    let (mut live, w) = NativeClient::handshake(d.addr("main"), "dev-r", "");
    d.wait(ev("online").kv("session", w.session));
    let mark = d.mark();

    let mut probe = NativeClient::connect(d.addr("main"));
    let opened = Instant::now();
    probe.send(&probe_hello("dev-r"));
    let welcome = probe.expect_welcome();
    assert_ne!(welcome.session, w.session);
    probe.round_trip(b"rtt");
    probe.wait_closed(DEADLINE);
    let open_for = opened.elapsed();
    assert!(open_for >= Duration::from_millis(500), "closed before the handshake timeout: {open_for:?}");

    let mut second = NativeClient::connect(d.addr("main"));
    second.send(&probe_hello("dev-r"));
    second.expect_welcome();
    second.bye("check");
    second.expect_close("after the probe's BYE");

    live.round_trip(b"still the one");
    assert_eq!(metric_reaches(http, "heartbeatd_probes_total", 2.0), 2.0);
    let after = &d.lines()[mark..];
    let traces: Vec<&Line> =
        after.iter().filter(|l| l.is("online") || l.is("offline") || l.is("handshake-failed")).collect();
    assert!(traces.is_empty(), "a probe left a trace: {traces:#?}");
    let clients = clients(http, "/clients");
    assert_eq!(clients.len(), 1, "{clients:?}");
    assert_eq!(clients[0]["session"], w.session);
}

/// `heartbeat check --id` of a running agent: healthy, and the agent keeps
/// its session; no online/offline line; `/healthz` answers without events.
#[test]
fn heartbeat_check_leaves_no_presence_trace() {
    let d = daemon();
    let http = http_addr(&d);
    let (mut live, w) = NativeClient::handshake(d.addr("main"), "dev-r", "");
    d.wait(ev("online").kv("session", w.session));
    let mark = d.mark();
    let out = Command::new(bin("heartbeat"))
        .args(["check", "--server", &d.addr("main").to_string(), "--id", "dev-r"])
        .output()
        .expect("run check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.starts_with("healthy "), "{stdout}");
    assert_eq!(metric_reaches(http, "heartbeatd_probes_total", 1.0), 1.0);

    let health = get(http, "/healthz");
    assert_eq!(health.status, 200, "{}", health.text());
    let health = health.json();
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["online"], 1, "{health}");

    live.round_trip(b"not replaced");
    let after = &d.lines()[mark..];
    let presence: Vec<&Line> = after.iter().filter(|l| l.is("online") || l.is("offline")).collect();
    assert!(presence.is_empty(), "the check made presence events: {presence:#?}");
}
