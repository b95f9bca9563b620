//! The native protocol (PROTOCOL.md §1) against the real daemon, with a
//! client written by hand from the protocol text.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use heartbeatd_harness::*;

/// Tick of the timing configs, in the config and as a duration.
const TICK: &str = "20ms";
const TICK_D: Duration = Duration::from_millis(20);
const INTERVAL_D: Duration = Duration::from_millis(200);
const TIMEOUT_D: Duration = Duration::from_millis(600);

/// One native listener `main`: interval 200ms, misses 3 (timeout 600ms),
/// tick 20ms, plus `extra` lines.
fn fast(extra: &str) -> String {
    config(TICK, "", &[native("main", &format!("interval = \"200ms\"\nmisses = 3\n{extra}"))])
}

/// One native listener `main` with a long interval (nothing times out
/// during the test), plus `extra` lines.
fn slow(extra: &str) -> String {
    config("100ms", "", &[native("main", &format!("interval = \"3s\"\nmisses = 5\n{extra}"))])
}

#[test]
fn welcome_matches_config_and_online_event_names_session() {
    let d = Daemon::start(&config(
        "100ms",
        "",
        &[native("main", "interval = \"2s\"\nmisses = 5"), native("second", "interval = \"1500ms\"\ntimeout = \"4s\"")],
    ));
    let (a, wa) = NativeClient::handshake(d.addr("main"), "dev-a", "");
    assert_eq!((wa.interval_ms, wa.timeout_ms), (2000, 10_000), "WELCOME on main");
    let (b, wb) = NativeClient::handshake(d.addr("second"), "dev-b", "");
    assert_eq!((wb.interval_ms, wb.timeout_ms), (1500, 4000), "WELCOME on second");
    assert_ne!(wa.session, wb.session, "sessions must be unique");

    let on = d.wait(ev("online").kv("session", wa.session));
    assert_eq!(on.field("client"), "dev-a", "{on}");
    assert_eq!(on.field("peer"), a.local.to_string(), "{on}");
    assert_eq!(on.field("listener"), "main", "{on}");
    assert_eq!(on.field("protocol"), "native", "{on}");
    let on = d.wait(ev("online").kv("session", wb.session));
    assert_eq!(on.field("client"), "dev-b", "{on}");
    assert_eq!(on.field("peer"), b.local.to_string(), "{on}");
    assert_eq!(on.field("listener"), "second", "{on}");

    // The listening lines announce the same timing.
    let l = d.wait(ev("listening").kv("listener", "main"));
    assert_eq!((l.num("interval_ms"), l.num("timeout_ms")), (2000, 10_000), "{l}");
    assert_eq!(l.field("protocol"), "native", "{l}");
}

#[test]
fn ping_gets_pong_echoing_payload_byte_for_byte() {
    let d = Daemon::start(&slow(""));
    let (mut c, w) = NativeClient::handshake(d.addr("main"), "echo", "");
    let payloads: Vec<Vec<u8>> = vec![
        vec![],
        vec![0],
        vec![0xff],
        b"a=b \"c\"\n".to_vec(),
        (0..31).collect(),
        (0..32).map(|i| 255 - i).collect(),
        vec![0; 32],
    ];
    for p in &payloads {
        c.round_trip(p);
    }
    c.bye("done");
    d.wait(ev("offline").kv("session", w.session).kv("reason", "left"));
}

#[test]
fn frames_split_byte_by_byte_and_batched_in_one_write() {
    let d = Daemon::start(&slow(""));
    let mut c = NativeClient::connect(d.addr("main"));
    c.send_bytewise(&hello_frame("split-client", ""));
    let w = c.expect_welcome();
    d.wait(ev("online").kv("session", w.session).kv("client", "split-client"));

    let payload: Vec<u8> = (1..=32).collect();
    c.send_bytewise(&frame(PING, &payload));
    c.expect_pong(&payload);

    // Three frames in one write.
    let mut batch = frame(PING, b"one");
    batch.extend(frame(PING, b""));
    batch.extend(frame(PING, b"three"));
    c.send(&batch);
    c.expect_pong(b"one");
    c.expect_pong(b"");
    c.expect_pong(b"three");

    // One write ending inside a frame, the rest in the next write.
    let mut two = frame(PING, b"first");
    two.extend(frame(PING, b"second"));
    let cut = two.len() - 4;
    c.send(&two[..cut]);
    c.expect_pong(b"first");
    std::thread::sleep(Duration::from_millis(20));
    c.send(&two[cut..]);
    c.expect_pong(b"second");

    c.bye("");
    let off = d.wait(ev("offline").kv("session", w.session));
    assert_eq!(off.field("reason"), "left", "{off}");
}

#[test]
fn bye_goes_offline_left() {
    let d = Daemon::start(&slow(""));
    let (mut c, w) = NativeClient::handshake(d.addr("main"), "leaver", "");
    c.round_trip(b"x");
    c.bye("maintenance");
    let off = d.wait(ev("offline").kv("session", w.session));
    assert_eq!(off.field("reason"), "left", "{off}");
    assert_eq!(off.field("client"), "leaver", "{off}");
    assert_eq!(off.field("peer"), c.local.to_string(), "{off}");
    assert_eq!(off.field("listener"), "main", "{off}");
    off.num("silent_ms");
    off.num("connected_ms");
}

#[test]
fn fin_without_bye_goes_offline_closed() {
    let d = Daemon::start(&slow(""));
    let (mut c, w) = NativeClient::handshake(d.addr("main"), "finner", "");
    c.round_trip(b"");
    c.fin();
    let off = d.wait(ev("offline").kv("session", w.session));
    assert_eq!(off.field("reason"), "closed", "{off}");
}

#[test]
fn rst_goes_offline_reset() {
    let d = Daemon::start(&slow(""));
    let (mut c, w) = NativeClient::handshake(d.addr("main"), "resetter", "");
    c.round_trip(b"");
    c.reset();
    let off = d.wait(ev("offline").kv("session", w.session));
    assert_eq!(off.field("reason"), "reset", "{off}");
}

#[test]
fn silence_goes_offline_timeout_never_early_at_most_a_tick_late() {
    let d = Daemon::start(&fast(""));
    let (mut c, w) = NativeClient::handshake(d.addr("main"), "silent", "");
    assert_eq!((w.interval_ms, w.timeout_ms), (200, 600));
    c.round_trip(b"last");
    let due = c.last_sent + TIMEOUT_D;
    let off = d.wait(ev("offline").kv("session", w.session));
    let late_ms = signed_ms(due, off.at);
    println!(
        "timeout lateness: {late_ms:.1} ms (bound: tick {} ms + slack {} ms)",
        TICK_D.as_millis(),
        SLACK.as_millis()
    );
    assert_eq!(off.field("reason"), "timeout", "{off}");
    assert!(off.at >= due, "offline {:.1} ms before the timeout: {off}", -late_ms);
    assert!(off.at <= due + TICK_D + SLACK, "offline {late_ms:.1} ms after the timeout: {off}");
    assert!(off.num("silent_ms") >= 600, "silent_ms below timeout_ms: {off}");
    // Going offline closes the connection.
    c.expect_close("after the timeout");
}

#[test]
fn same_id_replaces_older_connection() {
    let d = Daemon::start(&slow(""));
    let addr = d.addr("main");
    let (mut first, w1) = NativeClient::handshake(addr, "twin", "");
    let (mut second, w2) = NativeClient::handshake(addr, "twin", "");
    assert_ne!(w1.session, w2.session);
    first.expect_error(ERR_REPLACED);
    let off = d.wait(ev("offline").kv("session", w1.session));
    assert_eq!(off.field("reason"), "replaced", "{off}");
    let on = d.wait(ev("online").kv("session", w2.session));
    assert!(off.index < on.index, "the replaced offline must precede the new online:\n{off}\n{on}");
    // The newer connection works and the older one's offline was its only one.
    second.round_trip(b"still here");
    second.bye("");
    d.wait(ev("offline").kv("session", w2.session).kv("reason", "left"));
    assert_eq!(Audit::of(&d.lines()).problems(), Vec::<String>::new());
}

/// Replacement follows HELLO order (PROTOCOL.md §1.5), not accept order:
/// a connection accepted earlier whose HELLO comes later is the newer
/// HELLO, so it replaces the one online (ghosts from a backlog are kept
/// out by the abandoned-connection check, not by accept order).
#[test]
fn later_hello_wins_even_from_an_earlier_connection() {
    let d = Daemon::start(&slow(""));
    let addr = d.addr("main");
    let mut earlier = NativeClient::connect(addr);
    let (mut later, w_later) = NativeClient::handshake(addr, "twin", "");
    earlier.hello("twin", "");
    let w_earlier = earlier.expect_welcome();
    assert!(w_earlier.session < w_later.session, "accept order numbers sessions");
    later.expect_error(ERR_REPLACED);
    let off = d.wait(ev("offline").kv("session", w_later.session));
    assert_eq!(off.field("reason"), "replaced", "{off}");
    let on = d.wait(ev("online").kv("session", w_earlier.session));
    assert!(off.index < on.index, "the replaced offline must precede the new online:\n{off}\n{on}");
    earlier.round_trip(b"the newer HELLO");
    earlier.bye("");
    d.wait(ev("offline").kv("session", w_earlier.session).kv("reason", "left"));
    d.assert_none(ev("handshake-failed"));
    assert_eq!(Audit::of(&d.lines()).problems(), Vec::<String>::new());
}

#[test]
fn hello_twice_is_error_7_and_protocol_error() {
    let d = Daemon::start(&slow(""));
    let (mut c, w) = NativeClient::handshake(d.addr("main"), "eager", "");
    c.hello("eager", "");
    c.expect_error(ERR_SEQUENCE);
    let off = d.wait(ev("offline").kv("session", w.session));
    assert_eq!(off.field("reason"), "protocol-error", "{off}");
}

#[test]
fn ping_before_hello_is_error_7_without_events() {
    let d = Daemon::start(&slow(""));
    let mut c = NativeClient::connect(d.addr("main"));
    c.ping(b"too soon");
    c.expect_error(ERR_SEQUENCE);
    let peer = c.local.to_string();
    d.wait(ev("handshake-failed").kv("peer", &peer));
    d.assert_none(ev("online").kv("peer", &peer));
    d.assert_none(ev("offline").kv("peer", &peer));
}

#[test]
fn unknown_frame_types_are_error_1_and_protocol_error() {
    let d = Daemon::start(&slow(""));
    let addr = d.addr("main");
    for ty in [0x00u8, 0x07, 0x42, 0xff] {
        let (mut c, w) = NativeClient::handshake(addr, &format!("odd-{ty}"), "");
        c.send_frame(ty, b"junk");
        c.expect_error(ERR_MALFORMED);
        let off = d.wait(ev("offline").kv("session", w.session));
        assert_eq!(off.field("reason"), "protocol-error", "type {ty:#04x}: {off}");
    }
}

#[test]
fn unsupported_version_is_error_2() {
    let d = Daemon::start(&slow(""));
    let addr = d.addr("main");
    for version in [0u8, 2, 255] {
        let mut c = NativeClient::connect(addr);
        c.send(&frame(HELLO, &hello_payload(version, b"dev", b"")));
        c.expect_error(ERR_VERSION);
        let peer = c.local.to_string();
        d.wait(ev("handshake-failed").kv("peer", &peer));
        d.assert_none(ev("online").kv("peer", &peer));
    }
}

#[test]
fn bad_ids_and_fields_are_error_1() {
    let d = Daemon::start(&slow(""));
    let addr = d.addr("main");
    let long = vec![b'x'; 65];
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("id with a space", hello_payload(1, b"has space", b"")),
        ("empty id", hello_payload(1, b"", b"")),
        ("65-byte id", hello_payload(1, &long, b"")),
        ("id with DEL", hello_payload(1, b"dev\x7f", b"")),
        ("id with newline", hello_payload(1, b"dev\nx", b"")),
        ("id with non-ASCII", hello_payload(1, "dév".as_bytes(), b"")),
        ("id_len past the payload", vec![1, 10, b'a', b'b']),
        ("token_len past the payload", vec![1, 1, b'a', 5, b't']),
        ("trailing bytes", {
            let mut p = hello_payload(1, b"dev", b"");
            p.push(0);
            p
        }),
    ];
    for (what, payload) in cases {
        let mut c = NativeClient::connect(addr);
        c.send(&frame(HELLO, &payload));
        let f = c.expect_frame(what);
        assert_eq!(f.ty, ERROR, "{what}: expected ERROR 1, got {f:?}");
        assert_eq!(f.error().0, ERR_MALFORMED, "{what}: {f:?}");
        c.expect_close(what);
        let peer = c.local.to_string();
        d.wait(ev("handshake-failed").kv("peer", &peer));
        d.assert_none(ev("online").kv("peer", &peer));
    }
    // Exactly 64 printable bytes, the widest legal id, is fine.
    let id: String = (0..64).map(|i| char::from(0x21 + (i % 94) as u8)).collect();
    let (_c, w) = NativeClient::handshake(addr, &id, "");
    let on = d.wait(ev("online").kv("session", w.session));
    assert_eq!(on.field("client"), id, "{on}");
}

#[test]
fn length_over_limits_is_error_1_without_waiting_for_payload() {
    let d = Daemon::start(&config(
        "100ms",
        "",
        &[
            native("small", "interval = \"3s\"\nmisses = 5\nmax_frame = 131"),
            native("default", "interval = \"3s\"\nmisses = 5"),
        ],
    ));
    let small = d.addr("small");
    let default = d.addr("default");

    // Over max_frame (131, the smallest the config allows) but within
    // HELLO's own limit: header only.
    let mut c = NativeClient::connect(small);
    c.send(&[HELLO, 0, 0, 200]);
    c.expect_error(ERR_MALFORMED);
    d.wait(ev("handshake-failed").kv("peer", c.local));

    // A HELLO header announcing 65535 bytes, before any HELLO.
    let mut c = NativeClient::connect(small);
    c.send(&[HELLO, 0, 0xff, 0xff]);
    c.expect_error(ERR_MALFORMED);
    d.wait(ev("handshake-failed").kv("peer", c.local));

    // Over the per-type limits with the default max_frame (1024).
    let (mut c, w) = NativeClient::handshake(default, "big-ping", "");
    c.send(&[PING, 0, 0, 33]);
    c.expect_error(ERR_MALFORMED);
    let off = d.wait(ev("offline").kv("session", w.session));
    assert_eq!(off.field("reason"), "protocol-error", "{off}");

    let (mut c, w) = NativeClient::handshake(default, "big-bye", "");
    c.send(&[BYE, 0, 0, 129]);
    c.expect_error(ERR_MALFORMED);
    let off = d.wait(ev("offline").kv("session", w.session));
    assert_eq!(off.field("reason"), "protocol-error", "{off}");

    let (mut c, w) = NativeClient::handshake(default, "huge", "");
    c.send(&[PONG, 0, 0x08, 0x00]);
    c.expect_error(ERR_MALFORMED);
    let off = d.wait(ev("offline").kv("session", w.session));
    assert_eq!(off.field("reason"), "protocol-error", "{off}");
}

#[test]
fn handshake_timeout_is_error_3_without_events() {
    let d = Daemon::start(&config(
        TICK,
        "",
        &[native("main", "interval = \"3s\"\nmisses = 5\nhandshake_timeout = \"300ms\"")],
    ));
    let addr = d.addr("main");
    let handshake = Duration::from_millis(300);

    // Silent from the start.
    let mut c = NativeClient::connect(addr);
    let t0 = Instant::now();
    c.expect_error(ERR_HANDSHAKE_TIMEOUT);
    let took = t0.elapsed();
    println!("handshake timeout after {:.1} ms (configured 300 ms)", ms(took));
    assert!(took >= handshake, "ERROR 3 after {took:?}, before the 300ms handshake timeout");
    assert!(took <= handshake + TICK_D + SLACK, "ERROR 3 only after {took:?}");
    let peer = c.local.to_string();
    d.wait(ev("handshake-failed").kv("peer", &peer));

    // Half a HELLO is not a HELLO.
    let mut c = NativeClient::connect(addr);
    let t0 = Instant::now();
    c.send(&hello_frame("partial", "")[..5]);
    c.expect_error(ERR_HANDSHAKE_TIMEOUT);
    assert!(t0.elapsed() >= handshake, "ERROR 3 after {:?}", t0.elapsed());
    let peer2 = c.local.to_string();
    d.wait(ev("handshake-failed").kv("peer", &peer2));

    for p in [peer, peer2] {
        d.assert_none(ev("online").kv("peer", &p));
        d.assert_none(ev("offline").kv("peer", &p));
    }
}

#[test]
fn tokens_accept_right_and_refuse_wrong_with_error_4() {
    let d = Daemon::start(&config(
        "100ms",
        "",
        &[
            native("locked", "interval = \"3s\"\nmisses = 5\ntokens = [\"s3cret\", \"other-one\"]"),
            native("open", "interval = \"3s\"\nmisses = 5"),
        ],
    ));
    let locked = d.addr("locked");
    let (_a, wa) = NativeClient::handshake(locked, "good-1", "s3cret");
    d.wait(ev("online").kv("session", wa.session));
    let (_b, wb) = NativeClient::handshake(locked, "good-2", "other-one");
    d.wait(ev("online").kv("session", wb.session));
    for token in ["wrong", "", "s3cret ", "S3CRET", "s3cre"] {
        let mut c = NativeClient::connect(locked);
        c.hello("intruder", token);
        c.expect_error(ERR_AUTH);
        let peer = c.local.to_string();
        d.wait(ev("handshake-failed").kv("peer", &peer));
        d.assert_none(ev("online").kv("peer", &peer));
    }
    // A listener without tokens does not check them.
    let (_c, wc) = NativeClient::handshake(d.addr("open"), "anyone", "whatever");
    d.wait(ev("online").kv("session", wc.session));
}

#[test]
fn max_clients_refuses_with_error_5() {
    let d = Daemon::start(&config("100ms", "max_clients = 2", &[native("main", "interval = \"3s\"\nmisses = 5")]));
    let addr = d.addr("main");
    let (mut a, wa) = NativeClient::handshake(addr, "one", "");
    let (_b, _wb) = NativeClient::handshake(addr, "two", "");
    let mut c = NativeClient::connect(addr);
    c.expect_error(ERR_FULL);
    let r = d.wait(ev("refused").kv("peer", c.local));
    assert_eq!(r.field("limit"), "max_clients", "{r}");
    assert_eq!(r.num("value"), 2, "{r}");
    d.assert_none(ev("online").kv("peer", c.local));

    // A freed place can be taken again.
    a.bye("");
    d.wait(ev("offline").kv("session", wa.session).kv("reason", "left"));
    let (_d, wd) = NativeClient::handshake(addr, "three", "");
    d.wait(ev("online").kv("session", wd.session));
}

#[test]
fn max_per_address_refuses_with_error_5() {
    let d = Daemon::start(&config("100ms", "max_per_address = 1", &[native("main", "interval = \"3s\"\nmisses = 5")]));
    let addr = d.addr("main");
    let (_a, wa) = NativeClient::handshake(addr, "first", "");
    d.wait(ev("online").kv("session", wa.session));
    let mut b = NativeClient::connect(addr);
    b.expect_error(ERR_FULL);
    let r = d.wait(ev("refused").kv("peer", b.local));
    assert_eq!(r.field("limit"), "max_per_address", "{r}");
    assert_eq!(r.num("value"), 1, "{r}");

    // Another address is still welcome.
    let other = ConnectOpts { bind: Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))), rcvbuf: None };
    let mut c = NativeClient::connect_with(addr, other);
    c.hello("elsewhere", "");
    let wc = c.expect_welcome();
    let on = d.wait(ev("online").kv("session", wc.session));
    assert!(on.field("peer").starts_with("127.0.0.2:"), "{on}");
}

#[test]
fn client_that_never_reads_goes_offline_write_stalled() {
    let d = Daemon::start(&slow(""));
    let opts = ConnectOpts { bind: None, rcvbuf: Some(4096) };
    let mut c = NativeClient::connect_with(d.addr("main"), opts);
    c.hello("stalled", "");
    let w = c.expect_welcome();
    d.wait(ev("online").kv("session", w.session));

    // PINGs, never reading a PONG, until the daemon gives up on us.
    let chunk: Vec<u8> = (0..1024).flat_map(|_| frame(PING, &[0xab; 32])).collect();
    c.stream.set_nonblocking(true).expect("set_nonblocking");
    let offline = ev("offline").kv("session", w.session);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut sent = 0usize;
    let mut at = 0usize;
    loop {
        assert!(Instant::now() < deadline, "no offline after sending {sent} bytes of PINGs\n{}", d.log_text());
        match std::io::Write::write(&mut c.stream, &chunk[at..]) {
            Ok(n) => {
                sent += n;
                at = (at + n) % chunk.len();
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if d.poll_from(0, &offline, Duration::from_millis(5)).is_some() {
                    break;
                }
            }
            // The daemon closed on us: it must have said why in the log.
            Err(_) => break,
        }
    }
    let off = d.wait(offline);
    println!("write-stalled after {sent} bytes of PINGs");
    assert_eq!(off.field("reason"), "write-stalled", "{off}");
}

#[test]
fn server_ping_keeps_a_responding_client_online() {
    let d = Daemon::start(&fast("server_ping = true"));
    let (mut c, w) = NativeClient::handshake(d.addr("main"), "responder", "");
    c.round_trip(b"hi");
    let quiet_since = c.last_sent;

    // The daemon PINGs after one interval of silence.
    let f = c.expect_frame("the daemon's PING");
    let after = quiet_since.elapsed();
    assert_eq!(f.ty, PING, "expected the daemon's PING, got {f:?}");
    assert!(f.payload.len() <= 32, "PING payload over 32 bytes: {f:?}");
    println!("server PING after {:.1} ms of silence (interval 200 ms)", ms(after));
    assert!(after >= INTERVAL_D, "server PING after only {after:?}");
    assert!(after <= INTERVAL_D + TICK_D + SLACK, "server PING only after {after:?}");
    c.send_frame(PONG, &f.payload);

    // Answer every PING for well past the timeout, sending nothing else.
    let until = Instant::now() + TIMEOUT_D * 3;
    let mut pings = 1;
    while Instant::now() < until {
        match c.read_frame(until.saturating_duration_since(Instant::now())) {
            Ok(f) => {
                assert_eq!(f.ty, PING, "expected only PINGs, got {f:?}");
                c.send_frame(PONG, &f.payload);
                pings += 1;
            }
            Err(End::Timeout) => break,
            Err(end) => panic!("connection ended while answering PINGs: {end:?}\n{}", d.log_text()),
        }
    }
    println!("answered {pings} server PINGs in {} ms", (TIMEOUT_D * 3).as_millis());
    assert!(pings >= 3, "only {pings} server PINGs in 1.8 s with interval 200 ms");
    d.assert_none(ev("offline").kv("session", w.session));
    c.bye("");
    let off = d.wait(ev("offline").kv("session", w.session));
    assert_eq!(off.field("reason"), "left", "{off}");
}

#[test]
fn server_ping_off_means_no_pings() {
    // Without server_ping, a silent client receives nothing and times out.
    let d = Daemon::start(&fast(""));
    let (mut c, w) = NativeClient::handshake(d.addr("main"), "quiet", "");
    match c.read_frame(DEADLINE) {
        Err(end) if end.is_closed() => {}
        Ok(f) => panic!("no frame expected without server_ping, got {f:?}"),
        Err(end) => panic!("expected the close after the timeout, got {end:?}"),
    }
    let off = d.wait(ev("offline").kv("session", w.session));
    assert_eq!(off.field("reason"), "timeout", "{off}");
}
