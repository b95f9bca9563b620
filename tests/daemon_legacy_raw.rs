//! The legacy (PROTOCOL.md §2) and raw (§3) protocols against the real
//! daemon.

use std::time::{Duration, Instant};

use heartbeatd_harness::*;

const TICK: &str = "20ms";
const TICK_D: Duration = Duration::from_millis(20);
const TIMEOUT_D: Duration = Duration::from_millis(600);

/// One listener `name` of `proto` (`legacy` or `raw`) with interval 200ms,
/// misses 3 (timeout 600ms), tick 20ms, plus `extra` lines.
fn fast(proto: &str, extra: &str) -> String {
    let body = format!("interval = \"200ms\"\nmisses = 3\n{extra}");
    let l = match proto {
        "legacy" => legacy("main", &body),
        "raw" => raw("main", &body),
        other => panic!("no such protocol in these tests: {other}"),
    };
    config(TICK, "", &[l])
}

/// Waits for the online event of the client at `peer` and checks it names
/// the client by its address; returns its session.
fn online_session(d: &Daemon, c: &PlainClient, proto: &str) -> u64 {
    let on = d.wait(ev("online").kv("peer", c.local));
    assert_eq!(on.field("client"), c.local.to_string(), "id must be the peer address: {on}");
    assert_eq!(on.field("protocol"), proto, "{on}");
    assert_eq!(on.field("listener"), "main", "{on}");
    on.num("session")
}

/// Sends `beat` every 100ms for 2.5 timeouts and checks the client stays
/// online throughout.
fn keep_alive_for_a_while(d: &Daemon, c: &mut PlainClient, session: u64, beat: &mut dyn FnMut(&mut PlainClient)) {
    let until = Instant::now() + TIMEOUT_D * 5 / 2;
    let offline = ev("offline").kv("session", session);
    while Instant::now() < until {
        beat(c);
        d.assert_absent_from(0, offline.clone(), Duration::from_millis(100));
    }
}

// ---- legacy ---------------------------------------------------------------

#[test]
fn legacy_heartbeats_keep_client_online_until_fin() {
    let d = Daemon::start(&fast("legacy", ""));
    let l = d.wait(ev("listening").kv("listener", "main"));
    assert_eq!(l.field("protocol"), "legacy", "{l}");
    let mut c = PlainClient::connect(d.addr("main"));
    let session = online_session(&d, &c, "legacy");
    keep_alive_for_a_while(&d, &mut c, session, &mut |c| c.heartbeat());
    c.fin();
    let off = d.wait(ev("offline").kv("session", session));
    assert_eq!(off.field("reason"), "closed", "{off}");
    assert_eq!(off.field("client"), c.local.to_string(), "{off}");
}

#[test]
fn legacy_data_frames_split_across_writes_stay_in_sync() {
    let d = Daemon::start(&fast("legacy", "echo = true"));
    let mut c = PlainClient::connect(d.addr("main"));
    let session = online_session(&d, &c, "legacy");

    // A data frame whose header and payload arrive in pieces, then a
    // heartbeat: the echo of the heartbeat proves the decoder kept its place.
    let header = legacy_header(1, 10);
    c.send(&header[..3]);
    std::thread::sleep(Duration::from_millis(20));
    c.send(&header[3..]);
    std::thread::sleep(Duration::from_millis(20));
    c.send(b"0123");
    std::thread::sleep(Duration::from_millis(20));
    c.send(b"456");
    std::thread::sleep(Duration::from_millis(20));
    c.send(b"789");
    c.heartbeat();
    assert_eq!(c.expect_bytes(8), legacy_header(0, 0), "echoed heartbeat header");

    // An empty data frame and a heartbeat in one write.
    let mut both = legacy_header(1, 0).to_vec();
    both.extend(legacy_header(0, 0));
    c.send(&both);
    assert_eq!(c.expect_bytes(8), legacy_header(0, 0), "echoed heartbeat header");

    // A data frame of exactly max_frame (default 1024) bytes.
    let mut big = legacy_header(1, 1024).to_vec();
    big.extend(vec![0x5a; 1024]);
    big.extend(legacy_header(0, 0));
    c.send(&big);
    assert_eq!(c.expect_bytes(8), legacy_header(0, 0), "echoed heartbeat header");

    // Data frames are not heartbeats: nothing else comes back.
    c.fin();
    let rest = c.read_to_close();
    assert!(rest.is_empty(), "unexpected bytes after the echoes: {rest:?}");
    let off = d.wait(ev("offline").kv("session", session));
    assert_eq!(off.field("reason"), "closed", "{off}");
}

#[test]
fn legacy_echo_writes_each_heartbeat_header_back() {
    let d = Daemon::start(&fast("legacy", "echo = true"));
    let mut c = PlainClient::connect(d.addr("main"));
    let session = online_session(&d, &c, "legacy");
    let three: Vec<u8> = (0..3).flat_map(|_| legacy_header(0, 0)).collect();
    c.send(&three);
    assert_eq!(c.expect_bytes(24), three, "three heartbeats, three 8-byte echoes");
    for b in legacy_header(0, 0) {
        c.send(&[b]);
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(c.expect_bytes(8), legacy_header(0, 0));
    c.fin();
    assert!(c.read_to_close().is_empty(), "no extra bytes");
    d.wait(ev("offline").kv("session", session).kv("reason", "closed"));
}

#[test]
fn legacy_bad_headers_are_protocol_errors() {
    let d = Daemon::start(&fast("legacy", "max_frame = 64"));
    let addr = d.addr("main");
    let cases: [(&str, [u8; 8]); 5] = [
        ("type 7", legacy_header(7, 0)),
        ("type 2", legacy_header(2, 0)),
        ("type -1", legacy_header(-1, 0)),
        ("negative length", legacy_header(1, -1)),
        ("length over max_frame", legacy_header(1, 65)),
    ];
    for (what, header) in cases {
        let mut c = PlainClient::connect(addr);
        let session = online_session(&d, &c, "legacy");
        c.heartbeat();
        c.send(&header);
        let off = d.wait(ev("offline").kv("session", session));
        assert_eq!(off.field("reason"), "protocol-error", "{what}: {off}");
        // The daemon closes the connection.
        c.read_to_close();
    }
    // Exactly max_frame is fine.
    let mut c = PlainClient::connect(addr);
    let session = online_session(&d, &c, "legacy");
    let mut ok = legacy_header(1, 64).to_vec();
    ok.extend([0u8; 64]);
    c.send(&ok);
    c.fin();
    let off = d.wait(ev("offline").kv("session", session));
    assert_eq!(off.field("reason"), "closed", "a 64-byte frame with max_frame 64: {off}");
}

#[test]
fn legacy_silence_goes_offline_timeout() {
    let d = Daemon::start(&fast("legacy", ""));
    let mut c = PlainClient::connect(d.addr("main"));
    let session = online_session(&d, &c, "legacy");
    c.heartbeat();
    let due = c.last_sent + TIMEOUT_D;
    let off = d.wait(ev("offline").kv("session", session));
    assert_eq!(off.field("reason"), "timeout", "{off}");
    let late = signed_ms(due, off.at);
    println!("legacy timeout lateness: {late:.1} ms");
    assert!(off.at >= due, "offline {:.1} ms early: {off}", -late);
    assert!(off.at <= due + TICK_D + SLACK, "offline {late:.1} ms late: {off}");
    assert!(off.num("silent_ms") >= 600, "{off}");
}

// ---- raw ------------------------------------------------------------------

#[test]
fn raw_any_bytes_keep_client_online_until_fin() {
    let d = Daemon::start(&fast("raw", ""));
    let mut c = PlainClient::connect(d.addr("main"));
    let session = online_session(&d, &c, "raw");
    let mut rng = fastrand::Rng::with_seed(7);
    keep_alive_for_a_while(&d, &mut c, session, &mut |c| {
        let n = rng.usize(1..40);
        let bytes: Vec<u8> = (0..n).map(|_| rng.u8(..)).collect();
        c.send(&bytes);
    });
    c.fin();
    let off = d.wait(ev("offline").kv("session", session));
    assert_eq!(off.field("reason"), "closed", "{off}");
}

#[test]
fn raw_echo_writes_bytes_back() {
    let d = Daemon::start(&fast("raw", "echo = true"));
    let mut c = PlainClient::connect(d.addr("main"));
    let session = online_session(&d, &c, "raw");
    let mut rng = fastrand::Rng::with_seed(11);
    for n in [1usize, 2, 100, 3000] {
        let bytes: Vec<u8> = (0..n).map(|_| rng.u8(..)).collect();
        c.send(&bytes);
        assert_eq!(c.expect_bytes(n), bytes, "echo of {n} bytes");
    }
    c.fin();
    assert!(c.read_to_close().is_empty(), "no extra bytes");
    d.wait(ev("offline").kv("session", session).kv("reason", "closed"));
}

#[test]
fn raw_without_timeout_stays_online_in_silence_until_fin() {
    let d = Daemon::start(&config(TICK, "", &[raw("main", "interval = \"100ms\"\ntimeout = \"0s\"")]));
    let l = d.wait(ev("listening").kv("listener", "main"));
    assert_eq!(l.num("timeout_ms"), 0, "{l}");
    let mut c = PlainClient::connect(d.addr("main"));
    let session = online_session(&d, &c, "raw");
    c.send(b"x");
    // Eight intervals of silence.
    d.assert_absent_from(0, ev("offline").kv("session", session), Duration::from_millis(800));
    c.fin();
    let off = d.wait(ev("offline").kv("session", session));
    assert_eq!(off.field("reason"), "closed", "{off}");
}

#[test]
fn raw_silence_goes_offline_timeout() {
    let d = Daemon::start(&fast("raw", ""));
    let mut c = PlainClient::connect(d.addr("main"));
    let session = online_session(&d, &c, "raw");
    c.send(b"?");
    let due = c.last_sent + TIMEOUT_D;
    let off = d.wait(ev("offline").kv("session", session));
    assert_eq!(off.field("reason"), "timeout", "{off}");
    let late = signed_ms(due, off.at);
    println!("raw timeout lateness: {late:.1} ms");
    assert!(off.at >= due, "offline {:.1} ms early: {off}", -late);
    assert!(off.at <= due + TICK_D + SLACK, "offline {late:.1} ms late: {off}");
}

#[test]
fn raw_rst_goes_offline_reset() {
    let d = Daemon::start(&fast("raw", ""));
    let mut c = PlainClient::connect(d.addr("main"));
    let session = online_session(&d, &c, "raw");
    c.send(b"bye");
    c.reset();
    let off = d.wait(ev("offline").kv("session", session));
    assert_eq!(off.field("reason"), "reset", "{off}");
}
