//! The status API against the real daemon: `/clients` and `/clients/{id}`
//! show exactly the clients that are connected (native, legacy, raw), a
//! departure shows in `/clients`, `/metrics` and as exactly one `offline`
//! event; the `/events` feed resumes with `Last-Event-ID` (replay, or `gap`
//! and a snapshot when the id is too old); `/metrics` parses as Prometheus
//! text and follows its naming rules; a subscriber that never reads is
//! dropped without delaying heartbeats; and malformed, oversized, slow,
//! excess and non-GET requests get their status codes while a native
//! client's heartbeats go on untouched.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use heartbeatd_harness::http::*;
use heartbeatd_harness::*;
use serde_json::Value as Json;

const TICK: &str = "10ms";

/// Native clients here are not expected to ping unless a test says so.
const PATIENT: &str = "interval = \"2s\"\nmisses = 5";

/// A daemon with a native listener `main`, a legacy listener `old` (echo)
/// and a raw listener `bytes` (echo), all patient, and `[http]` with
/// `http_extra`.
struct Setup {
    d: Daemon,
    http: SocketAddr,
    main: SocketAddr,
    old: SocketAddr,
    bytes: SocketAddr,
}

fn setup(http_extra: &str) -> Setup {
    let listeners = [
        native("main", PATIENT),
        legacy("old", &format!("{PATIENT}\necho = true")),
        raw("bytes", &format!("{PATIENT}\necho = true")),
    ];
    let d = Daemon::start(&with_http(&config(TICK, "", &listeners), http_extra));
    let http = http_addr(&d);
    let (main, old, bytes) = (d.addr("main"), d.addr("old"), d.addr("bytes"));
    Setup { d, http, main, old, bytes }
}

fn now_ms() -> u64 {
    u64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_millis())
        .expect("ms fit u64")
}

/// Checks the shape and values of one `/clients` entry.
fn check_client(c: &Json, id: &str, peer: SocketAddr, listener: &str, protocol: &str, session: u64, began_ms: u64) {
    let keys: Vec<&str> = c.as_object().expect("a client is an object").keys().map(String::as_str).collect();
    for key in [
        "id",
        "peer",
        "listener",
        "protocol",
        "session",
        "online_since",
        "online_since_ms",
        "last_activity_ms",
        "heartbeats",
        "tcp",
    ] {
        assert!(keys.contains(&key), "client has no `{key}`: {c}");
    }
    assert_eq!(c["id"], id, "{c}");
    assert_eq!(c["peer"], peer.to_string(), "{c}");
    assert_eq!(c["listener"], listener, "{c}");
    assert_eq!(c["protocol"], protocol, "{c}");
    assert_eq!(c["session"].as_u64(), Some(session), "{c}");

    let since_text = c["online_since"].as_str().expect("online_since is a string");
    let since = humantime::parse_rfc3339(since_text)
        .unwrap_or_else(|e| panic!("online_since {since_text:?} is not RFC 3339 ({e}): {c}"));
    let since_ms = u64::try_from(since.duration_since(UNIX_EPOCH).expect("after 1970").as_millis()).expect("u64");
    assert_eq!(c["online_since_ms"].as_u64(), Some(since_ms), "online_since and online_since_ms disagree: {c}");
    // The wall clock may be read at slightly different instants by the test
    // and the daemon; a second of slack either way.
    assert!(since_ms + 1000 >= began_ms && since_ms <= now_ms() + 1000, "online_since out of range: {c}");

    let idle = c["last_activity_ms"].as_u64().expect("last_activity_ms is a number");
    assert!(idle < 10_000, "last_activity_ms too large for a client of this test: {c}");
    assert!(c["heartbeats"].as_u64().is_some(), "heartbeats is a number: {c}");
    let tcp = &c["tcp"];
    for key in ["rtt_us", "rttvar_us", "retransmits", "unacked"] {
        assert!(tcp[key].as_u64().is_some(), "tcp.{key} is a number: {c}");
    }
    assert!(tcp["rtt_us"].as_u64() > Some(0), "a connected socket has measured an RTT: {c}");
}

/// The session of the legacy/raw client at `peer`, from its online line.
fn plain_session(d: &Daemon, peer: SocketAddr) -> u64 {
    d.wait(ev("online").kv("peer", peer)).num("session")
}

#[test]
fn clients_shows_exactly_the_connected_clients_with_their_fields() {
    let s = setup("");
    let began = now_ms();
    assert!(clients(s.http, "/clients").is_empty(), "no client yet");

    let (mut a, wa) = NativeClient::handshake(s.main, "dev-a", "");
    // Every character a URL path would mangle, all legal in a HELLO id.
    let odd = "site/a#1?x=%41&y+z";
    let (b, wb) = NativeClient::handshake(s.main, odd, "");
    let mut l = PlainClient::connect(s.old);
    let ls = plain_session(&s.d, l.local);
    let mut r = PlainClient::connect(s.bytes);
    let rs = plain_session(&s.d, r.local);

    let list = clients(s.http, "/clients");
    assert_eq!(list.len(), 4, "{list:#?}");
    let sessions: Vec<u64> = list.iter().map(|c| c["session"].as_u64().expect("session")).collect();
    assert!(sessions.windows(2).all(|w| w[0] < w[1]), "ordered by session: {sessions:?}");
    let of = |session| by_session(&list, session).unwrap_or_else(|| panic!("session {session} in {list:#?}"));
    check_client(of(wa.session), "dev-a", a.local, "main", "native", wa.session, began);
    check_client(of(wb.session), odd, b.local, "main", "native", wb.session, began);
    check_client(of(ls), &l.local.to_string(), l.local, "old", "legacy", ls, began);
    check_client(of(rs), &r.local.to_string(), r.local, "bytes", "raw", rs, began);

    // Heartbeats count every PING (each round trip proves it was handled).
    let h0 = get_json(s.http, "/clients/dev-a")["heartbeats"].as_u64().expect("heartbeats");
    for i in 0..5u8 {
        a.round_trip(&[i]);
    }
    let after = get_json(s.http, "/clients/dev-a");
    assert_eq!(after["heartbeats"].as_u64(), Some(h0 + 5), "5 PINGs later: {after}");
    assert!(after["last_activity_ms"].as_u64() < Some(1000), "just pinged: {after}");
    // The legacy and raw listeners echo, so the echo proves each was seen.
    let lid = l.local.to_string();
    let lh0 = get_json(s.http, &format!("/clients/{lid}"))["heartbeats"].as_u64().expect("heartbeats");
    for _ in 0..3 {
        l.heartbeat();
        l.expect_bytes(8);
    }
    assert_eq!(get_json(s.http, &format!("/clients/{lid}"))["heartbeats"].as_u64(), Some(lh0 + 3));
    let rid = percent_encode(&r.local.to_string());
    let rh0 = get_json(s.http, &format!("/clients/{rid}"))["heartbeats"].as_u64().expect("heartbeats");
    r.send(b"x");
    r.expect_bytes(1);
    assert_eq!(get_json(s.http, &format!("/clients/{rid}"))["heartbeats"].as_u64(), Some(rh0 + 1));

    // ?listener= filters.
    let main: Vec<u64> =
        clients(s.http, "/clients?listener=main").iter().map(|c| c["session"].as_u64().expect("s")).collect();
    assert_eq!(main, vec![wa.session, wb.session]);
    let old = clients(s.http, "/clients?listener=old");
    assert_eq!(old.len(), 1, "{old:#?}");
    assert_eq!(old[0]["session"].as_u64(), Some(ls));
    assert!(clients(s.http, "/clients?listener=nope").is_empty());
    assert_eq!(clients(s.http, "/clients?listener=%6Fld").len(), 1, "the query value is percent-decoded");

    // /clients/{id}: plain, percent-encoded, and absent.
    let one = get_json(s.http, &format!("/clients/{}", percent_encode(odd)));
    check_client(&one, odd, b.local, "main", "native", wb.session, began);
    let dev_a = get_json(s.http, "/clients/d%65v-a");
    assert_eq!(dev_a["session"].as_u64(), Some(wa.session), "{dev_a}");
    let missing = get(s.http, "/clients/nobody");
    assert_eq!(missing.status, 404, "{}", missing.text());
    missing.check_length();
}

/// Checks that `r` is an API error: `status`, and the body
/// `{"error": "...", "status": status}` as `application/json`. Returns the
/// message.
fn check_error(r: &Response, status: u16, what: &str) -> String {
    assert_eq!(r.status, status, "{what}: {}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"), "{what}: {}", r.text());
    r.check_length();
    let body = r.json();
    assert_eq!(body["status"].as_u64(), Some(u64::from(status)), "{what}: {body}");
    let message = body["error"].as_str().unwrap_or_else(|| panic!("{what}: no `error` text in {body}"));
    assert!(!message.is_empty(), "{what}: an empty message");
    assert_eq!(body.as_object().map(|o| o.len()), Some(2), "{what}: only `error` and `status`: {body}");
    message.to_owned()
}

#[test]
fn api_errors_are_json_with_their_status() {
    let s = setup("");
    let missing = check_error(&get(s.http, "/clients/nope"), 404, "an unknown client");
    assert!(missing.contains("\"nope\""), "the message names the id: {missing}");
    let unknown = check_error(&get(s.http, "/nope"), 404, "an unknown path");
    assert!(unknown.contains("/clients"), "the message says what exists: {unknown}");
    check_error(&get(s.http, "/clients/%zz"), 400, "a malformed client id");
    let post = exchange(s.http, b"POST /clients HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
    check_error(&post, 405, "POST");
    // Refused before routing (the request head itself): the same shape.
    check_error(&exchange(s.http, b"GET / HTTP/9\r\n\r\n"), 400, "a malformed request");
}

#[test]
fn head_answers_with_the_headers_of_get_and_no_body() {
    let s = setup("");
    // Pages that do not change between two requests (no client online).
    for path in ["/", "/clients"] {
        let full = get(s.http, path);
        let head = exchange(s.http, format!("HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
        assert_eq!(head.status, full.status, "HEAD {path}");
        assert!(head.body.is_empty(), "HEAD {path} has no body: {:?}", head.text());
        assert_eq!(head.header("content-type"), full.header("content-type"), "HEAD {path}");
        // RFC 9110 §8.6: a Content-Length in a response to HEAD must be
        // the length GET would have sent (or be left out).
        let length = head.header("content-length");
        assert!(
            length.is_none() || length == full.header("content-length"),
            "HEAD {path}: Content-Length {length:?}, but GET sends {:?}",
            full.header("content-length")
        );
    }
}

#[test]
fn a_departure_shows_in_clients_metrics_and_as_exactly_one_offline_event() {
    let s = setup("");
    let mut sub = Sse::connect(s.http, None);
    let snapshot = sub.expect_kind("snapshot");
    assert_eq!(sub.retry, Some(2000), "the stream starts with `retry: 2000`");
    assert_eq!(snapshot.json()["clients"], serde_json::json!([]), "{snapshot:?}");

    let (mut leaver, wl) = NativeClient::handshake(s.main, "leaver", "");
    let (_stayer, ws) = NativeClient::handshake(s.main, "stayer", "");
    let legacy = PlainClient::connect(s.old);
    let on = sub.expect_presence("online", wl.session).json();
    assert_eq!(on["client"], "leaver", "{on}");
    assert_eq!(on["peer"], leaver.local.to_string(), "{on}");
    assert_eq!(on["listener"], "main", "{on}");
    assert_eq!(on["protocol"], "native", "{on}");
    humantime::parse_rfc3339(on["at"].as_str().expect("at")).expect("`at` is RFC 3339");
    assert!(on["at_ms"].as_u64().is_some(), "{on}");
    sub.expect_presence("online", ws.session);
    let legacy_on = sub.expect_kind("online").json();
    assert_eq!(legacy_on["client"], legacy.local.to_string(), "{legacy_on}");
    let ls = legacy_on["session"].as_u64().expect("session");

    let before = scrape(s.http);
    assert_eq!(before.value("heartbeatd_clients_online", &[("listener", "main")]), 2.0);
    assert_eq!(before.value("heartbeatd_clients_online", &[("listener", "old")]), 1.0);
    let left0 = before.value("heartbeatd_offline_total", &[("listener", "main"), ("reason", "left")]);
    let reset0 = before.value("heartbeatd_offline_total", &[("listener", "old"), ("reason", "reset")]);

    // A native client leaves with BYE, a legacy one with RST.
    leaver.bye("test over");
    let off = sub.expect_presence("offline", wl.session).json();
    assert_eq!(off["reason"], "left", "{off}");
    assert_eq!(off["client"], "leaver", "{off}");
    assert!(off["silent_ms"].as_u64().is_some() && off["connected_ms"].as_u64().is_some(), "{off}");
    legacy.reset();
    let off = sub.expect_presence("offline", ls).json();
    assert_eq!(off["reason"], "reset", "{off}");

    // Exactly one offline event each: the next event is a later client's
    // online, with nothing in between.
    let (_marker, wm) = NativeClient::handshake(s.main, "marker", "");
    sub.expect_presence("online", wm.session);
    s.d.wait(ev("online").kv("session", wm.session));
    for session in [wl.session, ls] {
        let offs = s.d.find_all(ev("offline").kv("session", session));
        assert_eq!(offs.len(), 1, "session {session}: exactly one offline line, got {offs:?}");
    }

    let list = clients(s.http, "/clients");
    let sessions: Vec<u64> = list.iter().map(|c| c["session"].as_u64().expect("session")).collect();
    assert_eq!(sessions, vec![ws.session, wm.session], "{list:#?}");
    assert_eq!(get(s.http, "/clients/leaver").status, 404);

    let after = scrape(s.http);
    assert_eq!(after.value("heartbeatd_offline_total", &[("listener", "main"), ("reason", "left")]), left0 + 1.0);
    assert_eq!(after.value("heartbeatd_offline_total", &[("listener", "old"), ("reason", "reset")]), reset0 + 1.0);
    // main: the leaver went, the marker came; old: the legacy client went.
    assert_eq!(after.value("heartbeatd_clients_online", &[("listener", "main")]), 2.0);
    assert_eq!(after.value("heartbeatd_clients_online", &[("listener", "old")]), 0.0);
    assert_eq!(after.value("heartbeatd_online_total", &[("listener", "main")]), 3.0);
}

#[test]
fn clients_online_drops_as_soon_as_the_offline_event_is_out() {
    // The gauge alone, read right after the offline event: the departed
    // client must not be counted even while its connection is being freed.
    let s = setup("");
    let mut sub = Sse::connect(s.http, None);
    sub.expect_kind("snapshot");
    let (mut c, w) = NativeClient::handshake(s.main, "gauge", "");
    sub.expect_presence("online", w.session);
    assert_eq!(scrape(s.http).value("heartbeatd_clients_online", &[("listener", "main")]), 1.0);
    c.bye("bye");
    sub.expect_presence("offline", w.session);
    assert_eq!(scrape(s.http).value("heartbeatd_clients_online", &[("listener", "main")]), 0.0);
}

/// Connects `id`, returning the client and its session.
fn join(addr: SocketAddr, id: &str) -> (NativeClient, u64) {
    let (c, w) = NativeClient::handshake(addr, id, "");
    (c, w.session)
}

#[test]
fn last_event_id_replays_exactly_the_missed_events() {
    let s = setup("");
    // `watch` sees everything and records the messages as sent.
    let mut watch = Sse::connect(s.http, None);
    assert_eq!(watch.expect_kind("snapshot").id, Some(0), "no event yet: the snapshot carries id 0");

    let mut away = Sse::connect(s.http, None);
    away.expect_kind("snapshot");
    let (mut c1, s1) = join(s.main, "r1");
    let first = watch.expect_presence("online", s1);
    assert_eq!(first.id, Some(1));
    assert_eq!(away.expect_presence("online", s1), first, "every subscriber gets the same message");
    away.close();

    // Missed while away.
    let (_c2, s2) = join(s.main, "r2");
    c1.bye("leaving");
    let (_c3, s3) = join(s.main, "r3");
    let missed = vec![
        watch.expect_presence("online", s2),
        watch.expect_presence("offline", s1),
        watch.expect_presence("online", s3),
    ];
    let ids: Vec<u64> = missed.iter().map(SseEvent::id).collect();
    assert_eq!(ids, vec![2, 3, 4], "ids count up by one");

    let mut back = Sse::connect(s.http, Some(first.id()));
    for expected in &missed {
        assert_eq!(&back.expect(&format!("replay of {}", expected.id())), expected, "replayed byte for byte");
    }
    // Nothing more was replayed: the next message is the next live event.
    let (_c4, s4) = join(s.main, "r4");
    let live = watch.expect_presence("online", s4);
    assert_eq!(back.expect("the next live event"), live);

    // Resuming from the newest id replays nothing; from 0, everything.
    let mut current = Sse::connect(s.http, Some(live.id()));
    let mut all = Sse::connect(s.http, Some(0));
    for id in 1..=live.id() {
        assert_eq!(all.expect("a replayed event").id, Some(id));
    }
    let (_c5, s5) = join(s.main, "r5");
    let live = watch.expect_presence("online", s5);
    assert_eq!(current.expect("the next live event"), live);
    assert_eq!(all.expect("the next live event"), live);
}

#[test]
fn a_too_old_last_event_id_gets_a_gap_and_a_snapshot() {
    let s = setup("history = 4");
    let mut watch = Sse::connect(s.http, None);
    watch.expect_kind("snapshot");
    // Seven events: three clients come and go, a fourth stays.
    for i in 0..3 {
        let (mut c, session) = join(s.main, &format!("brief-{i}"));
        watch.expect_presence("online", session);
        c.bye("brief");
        watch.expect_presence("offline", session);
    }
    let (stayer, stayer_session) = join(s.main, "stayer");
    assert_eq!(watch.expect_presence("online", stayer_session).id, Some(7));

    // The history holds 4..=7: resuming after 3 still works.
    let mut ok = Sse::connect(s.http, Some(3));
    let replayed: Vec<u64> = (0..4).map(|_| ok.expect("a replayed event").id()).collect();
    assert_eq!(replayed, vec![4, 5, 6, 7]);

    // After 2 (event 3 is gone) and from the future: gap, then snapshot.
    for asked in [2, 1, 99] {
        let mut late = Sse::connect(s.http, Some(asked));
        let gap = late.expect_kind("gap");
        assert_eq!(gap.id, None, "a gap is not an event of the feed: {gap:?}");
        assert_eq!(gap.json(), serde_json::json!({ "last_event_id": asked, "oldest_available": 4 }));
        let snapshot = late.expect_kind("snapshot");
        assert_eq!(snapshot.id, Some(7), "the snapshot is as of the newest event");
        let online = snapshot.json()["clients"].as_array().expect("clients").clone();
        assert_eq!(online.len(), 1, "{online:#?}");
        check_client(&online[0], "stayer", stayer.local, "main", "native", stayer_session, 0);
        late.expect_quiet(Duration::from_millis(100));
    }
}

#[test]
fn metrics_parse_as_prometheus_text_and_follow_its_naming_rules() {
    let s = setup("");
    let (mut c, _) = join(s.main, "m1");
    c.round_trip(b"x");
    c.bye("done");
    s.d.wait(ev("offline").kv("client", "m1"));
    let _l = PlainClient::connect(s.old);
    // A reload adds the reload-timestamp gauge (a float) to the page.
    let mark = s.d.mark();
    s.d.signal(libc::SIGHUP);
    s.d.wait_from(mark, "reloaded", DEADLINE);

    let m = scrape(s.http);
    // Families: HELP then TYPE, once each, before their samples.
    let mut families: Vec<(String, String)> = Vec::new();
    let mut helped: Vec<String> = Vec::new();
    let mut current: Option<String> = None;
    let mut series = std::collections::HashSet::new();
    for line in m.text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or_else(|| panic!("HELP without text: {line:?}"));
            assert!(!help.trim().is_empty(), "empty HELP: {line:?}");
            assert!(!helped.contains(&name.to_owned()), "HELP twice for {name}");
            helped.push(name.to_owned());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or_else(|| panic!("TYPE without kind: {line:?}"));
            assert!(helped.last().map(String::as_str) == Some(name), "TYPE {name} must follow its HELP");
            assert!(families.iter().all(|(n, _)| n != name), "TYPE twice for {name}");
            assert!(["counter", "gauge"].contains(&kind), "{name}: unexpected type {kind}");
            families.push((name.to_owned(), kind.to_owned()));
            current = Some(name.to_owned());
        } else {
            assert!(!line.starts_with('#'), "unexpected comment {line:?}");
            let name = line.split(['{', ' ']).next().expect("a sample name");
            assert_eq!(Some(name), current.as_deref(), "sample outside its family: {line:?}");
            let key = line.rsplit_once(' ').expect("a value").0.to_owned();
            assert!(series.insert(key), "duplicate series: {line:?}");
        }
    }
    assert!(!families.is_empty(), "no families in\n{}", m.text);
    for (name, kind) in &families {
        let valid = name
            .chars()
            .enumerate()
            .all(|(i, ch)| ch.is_ascii_alphabetic() || ch == '_' || ch == ':' || (i > 0 && ch.is_ascii_digit()));
        assert!(valid, "invalid metric name {name}");
        assert!(name.starts_with("heartbeatd_") || name.starts_with("process_"), "{name}: missing prefix");
        match kind.as_str() {
            "counter" => assert!(name.ends_with("_total"), "counter {name} must end in _total"),
            _ => assert!(!name.ends_with("_total"), "gauge {name} must not end in _total"),
        }
        assert!(m.scrape.docs.contains_key(name), "the parser found no HELP for {name}");
    }
    for sample in &m.scrape.samples {
        assert!(families.iter().any(|(n, _)| *n == sample.metric), "sample {} has no family", sample.metric);
        let expected_counter = families.iter().any(|(n, k)| *n == sample.metric && k == "counter");
        assert_eq!(matches!(sample.value, prometheus_parse::Value::Counter(_)), expected_counter, "{sample:?}");
    }
    for name in [
        "heartbeatd_clients_online",
        "heartbeatd_online_total",
        "heartbeatd_offline_total",
        "heartbeatd_heartbeats_received_total",
        "heartbeatd_event_subscribers",
        "heartbeatd_event_subscribers_dropped_total",
        "heartbeatd_http_requests_total",
        "heartbeatd_reloads_total",
        "heartbeatd_last_reload_timestamp_seconds",
        "process_start_time_seconds",
    ] {
        assert!(families.iter().any(|(n, _)| n == name), "no family {name} in\n{}", m.text);
    }
    assert_eq!(m.value("heartbeatd_offline_total", &[("listener", "main"), ("reason", "left")]), 1.0);
    assert_eq!(m.value("heartbeatd_clients_online", &[("listener", "old")]), 1.0);
    assert_eq!(m.value("heartbeatd_clients_online", &[("listener", "bytes")]), 0.0, "idle listeners show zero");
    assert_eq!(m.value("heartbeatd_reloads_total", &[("result", "success")]), 1.0);
    // HELLO, the PING and the BYE: at least the PING counts.
    assert!(m.value("heartbeatd_heartbeats_received_total", &[("listener", "main")]) >= 1.0);
    let started = m.value("process_start_time_seconds", &[]);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs_f64();
    assert!(started <= now && started > now - 60.0, "process_start_time_seconds {started} vs now {now}");
}

/// The kind of family `name` (`# TYPE` line), if the page has one.
fn family_type<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines().find_map(|l| l.strip_prefix("# TYPE ")?.strip_prefix(name)?.strip_prefix(' '))
}

#[test]
fn process_metrics_and_build_info_are_there_and_sane() {
    let s = setup("");
    let _l = PlainClient::connect(s.old);
    let m = scrape(s.http);
    for (name, kind) in [
        ("process_resident_memory_bytes", "gauge"),
        ("process_virtual_memory_bytes", "gauge"),
        ("process_open_fds", "gauge"),
        ("process_max_fds", "gauge"),
        ("process_cpu_seconds_total", "counter"),
        ("process_start_time_seconds", "gauge"),
        ("heartbeatd_build_info", "gauge"),
    ] {
        assert_eq!(family_type(&m.text, name), Some(kind), "{name} in\n{}", m.text);
    }
    let rss = m.value("process_resident_memory_bytes", &[]);
    let vsz = m.value("process_virtual_memory_bytes", &[]);
    assert!(rss > 1024.0 * 1024.0 && rss < 1024.0 * 1024.0 * 1024.0, "resident memory {rss}");
    assert!(vsz >= rss, "virtual {vsz} < resident {rss}");

    // The daemon's own fd table, counted from outside, between scrapes.
    let pid = s.d.pid();
    let count = || std::fs::read_dir(format!("/proc/{pid}/fd")).expect("the daemon's fd table").count() as f64;
    let before = count();
    let open = scrape(s.http).value("process_open_fds", &[]);
    let after = count();
    // The scrape's own connection may or may not be counted from outside.
    let (low, high) = (before.min(after), before.max(after) + 1.0);
    assert!(open >= low && open <= high, "process_open_fds {open}, counted {before} then {after}");
    let max = m.value("process_max_fds", &[]);
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("the daemon's limits");
    let soft: f64 = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("a numeric soft fd limit");
    assert_eq!(max, soft, "process_max_fds is the soft RLIMIT_NOFILE");

    let cpu = m.value("process_cpu_seconds_total", &[]);
    let started = m.value("process_start_time_seconds", &[]);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs_f64();
    assert!(cpu >= 0.0 && cpu <= (now - started) * 2.0 + 1.0, "cpu {cpu}s for a process up {}s", now - started);

    let version = [("version", env!("CARGO_PKG_VERSION"))];
    assert_eq!(m.value("heartbeatd_build_info", &version), 1.0);
}

#[test]
fn metrics_show_each_listeners_interval_and_timeout() {
    let listeners = [native("main", PATIENT), raw("bytes", "interval = \"250ms\"\ntimeout = \"0s\"")];
    let d = Daemon::start(&with_http(&config(TICK, "", &listeners), ""));
    let m = scrape(http_addr(&d));
    assert_eq!(family_type(&m.text, "heartbeatd_listener_interval_seconds"), Some("gauge"));
    assert_eq!(family_type(&m.text, "heartbeatd_listener_timeout_seconds"), Some("gauge"));
    assert_eq!(m.value("heartbeatd_listener_interval_seconds", &[("listener", "main")]), 2.0);
    assert_eq!(m.value("heartbeatd_listener_timeout_seconds", &[("listener", "main")]), 10.0, "interval × misses");
    assert_eq!(m.value("heartbeatd_listener_interval_seconds", &[("listener", "bytes")]), 0.25);
    assert_eq!(m.value("heartbeatd_listener_timeout_seconds", &[("listener", "bytes")]), 0.0, "no silence timeout");
}

// ---------------------------------------------------------------------------
// A stalled subscriber
// ---------------------------------------------------------------------------

/// The tests that churn the daemon run one at a time: each measures what
/// the other's churn would disturb (the unpaced one takes a core), and on a
/// two-core machine running both at once starves the daemon and the
/// healthy subscriber of the paced one.
static CHURN_TESTS: Mutex<()> = Mutex::new(());

/// Takes [`CHURN_TESTS`]; a test that failed holding it does not fail the
/// others.
fn churn_alone() -> std::sync::MutexGuard<'static, ()> {
    CHURN_TESTS.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A subscriber on a socket with a 1 KiB receive buffer that takes the
/// response head and its snapshot, then never reads again. Past its
/// snapshot it is live, so what piles up for it is judged against
/// `subscriber_buffer`. A subscriber that stalls inside its snapshot is
/// dropped instead once `request_timeout` passes ("snapshot not read"),
/// and churn on a busy machine can make that the case: the daemon may
/// reach the request only when hundreds of churned clients are online.
fn stalled_subscriber(http: SocketAddr) -> TcpStream {
    let stream = connect(http, ConnectOpts { rcvbuf: Some(1024), ..ConnectOpts::default() });
    let mut sse = Sse::start(stream, http, None);
    sse.expect_kind("snapshot");
    sse.stream
}

/// Reads what the daemon had sent a dropped subscriber, then how the
/// connection ended. The 1 KiB receive buffer is enlarged first: the
/// daemon's kernel may have tens of KiB left to send, and through a window
/// smaller than its segment size it sends only on its persist timer, with
/// backoff (seen: 27 KiB of 110 KiB in 10 s on a loaded machine, against 2 ms
/// otherwise). A bigger buffer opens the window at the first read.
fn drain_dropped(stream: &mut TcpStream) -> (Vec<u8>, Ending) {
    socket2::SockRef::from(&*stream).set_recv_buffer_size(1 << 20).expect("enlarging the receive buffer");
    read_until_close(stream, Instant::now() + DEADLINE)
}

/// Opens and closes raw clients on its own thread, pausing `pause` after
/// each: two events (online, offline `closed`) per cycle. Each sends a byte
/// before it closes: a peer gone before it was served, nothing unread, is a
/// ghost and makes no event at all.
struct Churn {
    stop: Arc<AtomicBool>,
    cycles: Arc<AtomicUsize>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Churn {
    fn start(addr: SocketAddr, pause: Duration) -> Churn {
        let stop = Arc::new(AtomicBool::new(false));
        let cycles = Arc::new(AtomicUsize::new(0));
        let (flag, count) = (Arc::clone(&stop), Arc::clone(&cycles));
        let thread = thread::Builder::new()
            .name("churn".into())
            .spawn(move || {
                // Bounded: at most this many connections, whatever happens.
                for _ in 0..20_000 {
                    if flag.load(Ordering::Relaxed) {
                        return;
                    }
                    let mut c = TcpStream::connect(addr).expect("churn: connecting to the raw listener");
                    c.write_all(b"x").expect("churn: writing a byte");
                    drop(c);
                    count.fetch_add(1, Ordering::Relaxed);
                    if !pause.is_zero() {
                        thread::sleep(pause);
                    }
                }
            })
            .expect("spawning the churn thread");
        Churn { stop, cycles, thread: Some(thread) }
    }

    fn cycles(&self) -> usize {
        self.cycles.load(Ordering::Relaxed)
    }

    fn stop(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("the churn thread panicked");
        }
        self.cycles()
    }
}

impl Drop for Churn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn a_subscriber_that_never_reads_is_dropped_without_delaying_heartbeats() {
    let _alone = churn_alone();
    let listeners = [native("main", "interval = \"1s\"\nmisses = 3"), raw("churn", "timeout = \"0s\"")];
    // 128 KiB (the daemon also sizes the kernel's send buffer by it): at
    // ~2400 events a second the stalled subscriber lasts long enough to
    // measure heartbeats meanwhile, and a reading subscriber has room for
    // scheduling hiccups of a busy machine.
    const BUFFER: usize = 131072;
    let d = Daemon::start(&with_http(&config(TICK, "", &listeners), &format!("subscriber_buffer = {BUFFER}")));
    let (http, main, churn_addr) = (http_addr(&d), d.addr("main"), d.addr("churn"));
    let (mut probe, probe_welcome) = NativeClient::handshake(main, "probe", "");
    Rtts::measure(&mut probe, 20); // warm-up

    let idle = Rtts::measure(&mut probe, 200);

    // A healthy subscriber, reading all along, must not be dropped; it is
    // there for "before" too, so the two measurements differ only by the
    // stalled subscriber.
    let mut healthy = Sse::connect(http, None);
    healthy.expect_kind("snapshot");
    let healthy_peer = healthy.local;
    let healthy_stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&healthy_stop);
    let healthy_thread = thread::spawn(move || {
        let mut events = 0usize;
        while !flag.load(Ordering::Relaxed) {
            match healthy.next(Duration::from_millis(50)) {
                Ok(_) => events += 1,
                Err(End::Timeout) => {}
                Err(end) => panic!("the healthy subscriber's stream ended: {end:?}"),
            }
        }
        (healthy, events)
    });

    // About 1200 cycles (2400 events) a second: load, not a flood. An
    // unpaced churn keeps the daemon's accept loop busy for a second at a
    // time (its backlog refills faster than it drains), which stalls every
    // client with or without a subscriber and measures something else.
    let churn = Churn::start(churn_addr, Duration::from_micros(500));
    // As long as the stall will last (~2.5 s), so the two compare.
    let before = Rtts::measure_for(&mut probe, Duration::from_secs(2), 200);

    // The stalled subscriber: a tiny receive window, and past its
    // snapshot it never reads.
    let mark = d.mark();
    let mut stalled = stalled_subscriber(http);
    let stalled_peer = stalled.local_addr().expect("local address");
    let stalled_at = Instant::now();
    let cycles_at_stall = churn.cycles();

    // Ping while the events pile up, until it is dropped.
    let dropped_pred = ev("subscriber-dropped").kv("peer", stalled_peer);
    let mut during = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    let mut cursor = mark;
    let dropped = loop {
        // Lines before `next` are scanned now; later ones on the next turn.
        let next = d.mark();
        if let Some(line) = d.poll_from(cursor, &dropped_pred, Duration::ZERO) {
            break line;
        }
        cursor = next;
        assert!(
            Instant::now() < deadline,
            "the stalled subscriber was not dropped within {DEADLINE:?} ({} churn cycles)\n{}",
            churn.cycles(),
            d.log_text()
        );
        // Small batches between looks at the log, as in `before`'s loop.
        during.extend(Rtts::measure(&mut probe, 10).0);
    };
    let cycles_at_drop = churn.cycles();
    let unread: usize = dropped.num("unread_bytes").try_into().expect("usize");
    assert!(unread <= BUFFER, "dropped once unread output would pass subscriber_buffer: {dropped}");
    let during = Rtts(during);
    let total_cycles = churn.stop();

    println!("PONG round trips of a native client (loopback, 10ms tick):");
    println!("  idle daemon:                         {}", idle.summary());
    println!("  event churn, no stalled subscriber:  {}", before.summary());
    println!(
        "  event churn, stalled subscriber:     {} (from its request to its drop: {:.0}ms, {} churn cycles)",
        during.summary(),
        ms(dropped.at.saturating_duration_since(stalled_at)),
        cycles_at_drop - cycles_at_stall
    );
    println!("  churn cycles in all: {total_cycles}");

    // The dropped subscriber's socket closes: what was sent, then EOF.
    let (bytes, ending) = drain_dropped(&mut stalled);
    assert!(!matches!(ending, Ending::Open), "the stalled subscriber's socket is still open after the drop");
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains("event: "), "it had been streaming events: {:?}", &text[..text.len().min(200)]);
    println!("  the stalled subscriber could still read {} bytes after the drop, then {ending:?}", bytes.len());

    assert!(
        during.0.len() >= 200,
        "too few round trips while the subscriber was stalled ({}): the drop came too fast to measure",
        during.0.len()
    );
    let bound = Duration::from_millis(100);
    assert!(during.max() < bound, "a stalled subscriber delayed heartbeats: {}", during.summary());
    assert!(before.max() < bound, "churn alone delayed heartbeats: {}", before.summary());

    // The healthy subscriber is still there and still gets events.
    healthy_stop.store(true, Ordering::Relaxed);
    let (mut healthy, events) = healthy_thread.join().expect("the healthy subscriber's thread panicked");
    let (_marker, marker_session) = join(main, "marker");
    println!("  healthy subscriber received {events} events during the churn and was not dropped");
    loop {
        let e = healthy.expect("the marker's online event on the healthy subscriber");
        if e.event == "online" && e.json()["session"].as_u64() == Some(marker_session) {
            break;
        }
    }
    d.assert_none(ev("subscriber-dropped").kv("peer", healthy_peer));
    assert_eq!(d.find_all("subscriber-dropped").len(), 1, "exactly one subscriber dropped");
    assert_eq!(scrape(http).value("heartbeatd_event_subscribers_dropped_total", &[]), 1.0);
    d.assert_none(ev("offline").kv("session", probe_welcome.session));
    probe.round_trip(b"still here");
}

#[test]
fn a_stalled_subscriber_is_dropped_before_much_more_than_its_buffer_is_unread() {
    // `subscriber_buffer` is "bytes a feed subscriber may leave unread
    // before it is dropped". The kernel's buffers on both sides hold some
    // more: the subscriber's receive buffer (set small here) and the
    // daemon's send buffer. This allows 64 KiB for them, sixteen times the
    // configured 4096 bytes.
    let listeners = [native("main", PATIENT), raw("churn", "timeout = \"0s\"")];
    let _alone = churn_alone();
    let d = Daemon::start(&with_http(&config(TICK, "", &listeners), "subscriber_buffer = 4096"));
    let (http, churn_addr) = (http_addr(&d), d.addr("churn"));
    let mut stalled = stalled_subscriber(http);
    let stalled_peer = stalled.local_addr().expect("local address");
    let churn = Churn::start(churn_addr, Duration::ZERO);
    let dropped = d.wait(ev("subscriber-dropped").kv("peer", stalled_peer));
    let cycles = churn.stop();
    let (bytes, ending) = drain_dropped(&mut stalled);
    assert!(!matches!(ending, Ending::Open), "the socket stayed open after {dropped}");
    let events = String::from_utf8_lossy(&bytes).matches("\n\n").count();
    println!(
        "stalled subscriber: dropped after it left {} bytes ({events} messages) unread; {cycles} churn cycles",
        bytes.len()
    );
    let allowed = 4096 + 64 * 1024;
    assert!(
        bytes.len() <= allowed,
        "the stalled subscriber was sent {} bytes ({events} messages) before being dropped, over {allowed} \
         (subscriber_buffer 4096 + 64 KiB of kernel buffers): the daemon's own queue is bounded, but the \
         socket's kernel send buffer is not, so the drop comes megabytes late. Log: {dropped}",
        bytes.len()
    );
}

// ---------------------------------------------------------------------------
// Bad requests
// ---------------------------------------------------------------------------

/// A daemon whose native listener has a 600ms timeout, a canary pinging it
/// every 50ms, and `[http]` with `http_extra`. Runs `abuse`, then checks
/// the canary never missed a PONG, never went offline and the API still
/// answers.
fn while_canary_pings(http_extra: &str, abuse: impl FnOnce(&Daemon, SocketAddr)) {
    let listeners = [native("main", "interval = \"200ms\"\nmisses = 3")];
    let d = Daemon::start(&with_http(&config(TICK, "", &listeners), http_extra));
    let (http, main) = (http_addr(&d), d.addr("main"));
    let canary = Canary::start(main, "canary", Duration::from_millis(50));
    abuse(&d, http);
    let session = canary.session;
    d.assert_none(ev("offline").kv("session", session));
    let list = clients(http, "/clients");
    assert!(by_session(&list, session).is_some(), "the canary is still listed: {list:#?}");
    let report = canary.finish();
    println!("canary during the abuse: {}", report.rtts.summary());
    assert!(report.rtts.max() < Duration::from_millis(100), "the canary was delayed: {}", report.rtts.summary());
}

/// Sends `request` and reads to the close; the response must be `status`.
/// The daemon may close with unread request bytes pending (a reset after
/// the response), so both endings are accepted as long as the response
/// arrived.
fn expect_status(http: SocketAddr, request: &[u8], status: u16) -> Response {
    let mut stream = connect_http(http);
    stream.write_all(request).expect("sending the request");
    let (bytes, ending) = read_until_close(&mut stream, Instant::now() + DEADLINE);
    assert!(!matches!(ending, Ending::Open), "still open after {:?}", String::from_utf8_lossy(&bytes));
    assert!(
        !bytes.is_empty(),
        "no response before the connection ended ({ending:?}); expected {status} for {:?}",
        String::from_utf8_lossy(&request[..request.len().min(80)])
    );
    let r = Response::parse(&bytes);
    assert_eq!(r.status, status, "{:?} -> {}", String::from_utf8_lossy(&request[..request.len().min(80)]), r.text());
    assert_eq!(r.header("connection"), Some("close"));
    r.check_length();
    r
}

#[test]
fn malformed_requests_get_400() {
    while_canary_pings("", |d, http| {
        for garbage in [
            &b"\x00\x01\x02\xff\xfe garbage\r\n\r\n"[..],
            b"GET\r\n\r\n",
            b"GET / HTTP/9\r\n\r\n",
            b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
        ] {
            expect_status(http, garbage, 400);
        }
        // Bad percent-encoding in a client id is the client's fault too.
        expect_status(http, b"GET /clients/%zz HTTP/1.1\r\n\r\n", 400);
        // Unknown paths are 404, not 400.
        expect_status(http, b"GET /nope HTTP/1.1\r\n\r\n", 404);
        d.assert_none("panicked");
    });
}

#[test]
fn too_many_headers_get_431() {
    while_canary_pings("", |_, http| {
        let mut many = String::from("GET / HTTP/1.1\r\n");
        for i in 0..100 {
            many.push_str(&format!("X-H{i}: v\r\n"));
        }
        many.push_str("\r\n");
        expect_status(http, many.as_bytes(), 431);
        // Just under the size limit is fine.
        let fits = format!("GET /clients HTTP/1.1\r\nX-Padding: {}\r\n\r\n", "a".repeat(7 * 1024));
        expect_status(http, fits.as_bytes(), 200);
    });
}

/// A request head of about `size` bytes.
fn head_of(size: usize) -> String {
    let start = "GET /clients HTTP/1.1\r\nHost: x\r\nX-Padding: ";
    format!("{start}{}\r\n\r\n", "a".repeat(size - start.len() - 4))
}

/// A request head of 9 KiB (over the 8 KiB limit).
fn oversized_head() -> String {
    head_of(9 * 1024)
}

#[test]
fn an_oversized_head_sent_whole_gets_431() {
    while_canary_pings("", |_, http| {
        let sizes = [8 * 1024 + 1, 8 * 1024 + 512, 9 * 1024, 10 * 1024 - 8, 10 * 1024 + 8, 16 * 1024];
        let answers: Vec<(usize, u16)> = sizes
            .iter()
            .map(|&size| {
                let mut stream = connect_http(http);
                stream.write_all(head_of(size).as_bytes()).expect("sending the head");
                let (bytes, ending) = read_until_close(&mut stream, Instant::now() + DEADLINE);
                assert!(!bytes.is_empty(), "{size}-byte head: no response ({ending:?})");
                (size, Response::parse(&bytes).status)
            })
            .collect();
        assert!(
            answers.iter().all(|&(_, status)| status == 431),
            "heads over 8 KiB must get 431; (head bytes, status): {answers:?}"
        );
    });
}

#[test]
fn a_head_still_unfinished_past_8_kib_gets_431() {
    while_canary_pings("", |_, http| {
        // 9 KiB of head without its closing blank line, in 1 KiB pieces:
        // the daemon sees it grow past the limit before it can end.
        let big = oversized_head();
        let unfinished = big.trim_end_matches("\r\n");
        let mut stream = connect_http(http);
        for piece in unfinished.as_bytes().chunks(1024) {
            if stream.write_all(piece).is_err() {
                break; // the daemon answered and closed
            }
            thread::sleep(Duration::from_millis(5));
        }
        let (bytes, ending) = read_until_close(&mut stream, Instant::now() + DEADLINE);
        assert!(!matches!(ending, Ending::Open), "still open");
        assert!(!bytes.is_empty(), "closed ({ending:?}) without a response");
        let r = Response::parse(&bytes);
        assert_eq!(r.status, 431, "{}", r.text());
    });
}

#[test]
fn a_slowloris_request_gets_408_within_the_request_timeout() {
    let timeout = Duration::from_secs(1);
    while_canary_pings("request_timeout = \"1s\"", |_, http| {
        let mut stream = connect_http(http);
        let started = Instant::now();
        let request = b"GET /clients HTTP/1.1\r\nHost: slow\r\n\r\n";
        let mut received = Vec::new();
        let ending = 'send: {
            for b in request {
                // One byte per second, until the daemon gives up.
                if stream.write_all(std::slice::from_ref(b)).is_err() {
                    break 'send None;
                }
                let (bytes, ending) = read_until_close(&mut stream, Instant::now() + Duration::from_secs(1));
                received.extend_from_slice(&bytes);
                if !matches!(ending, Ending::Open) {
                    break 'send Some(ending);
                }
            }
            None
        };
        let elapsed = started.elapsed();
        assert!(ending.is_some(), "the daemon waited for the whole slow request ({elapsed:?})");
        assert!(elapsed >= timeout - Duration::from_millis(50), "closed before request_timeout: {elapsed:?}");
        assert!(elapsed <= timeout + SLACK, "not closed within request_timeout + {SLACK:?}: {elapsed:?}");
        if !received.is_empty() {
            let r = Response::parse(&received);
            assert_eq!(r.status, 408, "{}", r.text());
        }
        println!("slowloris: closed after {elapsed:?} with {:?}", String::from_utf8_lossy(&received).lines().next());
    });
}

#[test]
fn connections_past_max_connections_get_503() {
    while_canary_pings("max_connections = 2", |d, http| {
        // Two connections that send nothing hold both places (the request
        // timeout is 10s); the kernel queues connections in order, so the
        // third is the one past the limit.
        let idle: Vec<TcpStream> = (0..2).map(|_| connect_http(http)).collect();
        let mut third = connect_http(http);
        let (bytes, ending) = read_until_close(&mut third, Instant::now() + DEADLINE);
        assert!(!matches!(ending, Ending::Open), "the connection past the limit was kept open");
        let r = Response::parse(&bytes);
        assert_eq!(r.status, 503, "{}", r.text());
        check_error(&r, 503, "past max_connections");
        d.wait("http-refused");
        drop(idle);
        // Once the idle ones are gone, requests are served again.
        let deadline = Instant::now() + DEADLINE;
        loop {
            let mut s = connect_http(http);
            s.write_all(b"GET /clients HTTP/1.1\r\n\r\n").expect("sending");
            let (bytes, _) = read_until_close(&mut s, Instant::now() + DEADLINE);
            let r = Response::parse(&bytes);
            if r.status == 200 {
                break;
            }
            assert_eq!(r.status, 503, "{}", r.text());
            assert!(Instant::now() < deadline, "still 503 long after the idle connections closed");
            thread::sleep(Duration::from_millis(10));
        }
    });
}

#[test]
fn methods_other_than_get_and_head_get_405() {
    while_canary_pings("", |_, http| {
        for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
            let request = format!("{method} /clients HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
            expect_status(http, request.as_bytes(), 405);
        }
        expect_status(http, b"POST /events HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405);
    });
}
