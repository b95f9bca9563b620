//! Operating the daemon: the command line, signals (SIGUSR1, SIGHUP,
//! SIGTERM, SIGINT), the one-offline-per-online rule over a busy mixed
//! scenario, and a hostile client next to a well-behaved one.

use std::collections::HashMap;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use heartbeatd_harness::*;

// ---- command line -----------------------------------------------------------

/// A config whose listener table ends at line 9, so a case can append line
/// 10 (`extra`) or replace one of the numbered lines.
fn numbered(protocol: &str, extra: &str) -> String {
    [
        "[daemon]",                            // 1
        "tick = \"100ms\"",                    // 2
        "",                                    // 3
        "[[listener]]",                        // 4
        "name = \"main\"",                     // 5
        "address = \"127.0.0.1:0\"",           // 6
        &format!("protocol = \"{protocol}\""), // 7
        "interval = \"3s\"",                   // 8
        "misses = 5",                          // 9
        extra,                                 // 10...
    ]
    .join("\n")
        + "\n"
}

fn replace_line(text: &str, line: usize, with: &str) -> String {
    text.lines().enumerate().map(|(i, l)| if i + 1 == line { with } else { l }).collect::<Vec<_>>().join("\n") + "\n"
}

/// The 1-based line of the `nth` line starting with `prefix`.
fn line_of(text: &str, prefix: &str, nth: usize) -> usize {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.starts_with(prefix))
        .nth(nth - 1)
        .map(|(i, _)| i + 1)
        .unwrap_or_else(|| panic!("no line {nth} starting with {prefix:?} in:\n{text}"))
}

#[test]
fn check_config_accepts_a_full_valid_file() {
    let dir = TempDir::new("check-ok");
    let text = r#"
[daemon]
tick = "50ms"
max_clients = 1000
max_per_address = 10
shutdown_grace = "2s"
log_level = "debug"

[[listener]]
name = "main"
address = "127.0.0.1:0"
protocol = "native"
interval = "3s"
misses = 5
handshake_timeout = "5s"
server_ping = true
max_frame = 512
tokens = ["s3cret", "another"]
[listener.tcp]
keepalive_idle = "15s"
keepalive_interval = "5s"
keepalive_count = 3
user_timeout = "30s"
nodelay = true

[[listener]]
name = "old-agents"
address = "127.0.0.1:0"
protocol = "legacy"
interval = "2s"
timeout = "10s"
echo = true
max_frame = 64

[[listener]]
name = "browsers"
address = "127.0.0.1:0"
protocol = "raw"
interval = "10s"
timeout = "0s"
echo = false
[listener.tcp]
keepalive_idle = "0s"
user_timeout = "0s"
"#;
    let path = dir.write("ok.toml", text);
    let out = run_cli(&["--check-config", "--config", path.to_str().expect("utf-8 path")]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "valid config rejected\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.stdout.is_empty(), "--check-config prints something on success");
}

#[test]
fn check_config_names_file_line_and_key_of_the_error() {
    let dir = TempDir::new("check-bad");
    let tcp_short = "[listener.tcp]\nkeepalive_idle = \"15s\"\nkeepalive_interval = \"5s\"\nkeepalive_count = 3\nuser_timeout = \"20s\"";
    let two = numbered("native", "") + "\n[[listener]]\nname = \"main\"\naddress = \"127.0.0.1:0\"\nprotocol = \"native\"\ninterval = \"3s\"\nmisses = 5\n";
    // (what, text, acceptable lines, key substring or "" for any)
    let cases: Vec<(&str, String, Vec<usize>, &str)> = vec![
        ("echo on native", numbered("native", "echo = true"), vec![10], "echo"),
        ("server_ping on legacy", numbered("legacy", "server_ping = true"), vec![10], "server_ping"),
        ("tokens on raw", numbered("raw", "tokens = [\"x\"]"), vec![10], "tokens"),
        ("handshake_timeout on raw", numbered("raw", "handshake_timeout = \"1s\""), vec![10], "handshake_timeout"),
        ("unknown key", numbered("native", "intervall = \"1s\""), vec![10], "intervall"),
        ("bad duration", replace_line(&numbered("native", ""), 8, "interval = \"banana\""), vec![8], "interval"),
        ("bad protocol", replace_line(&numbered("native", ""), 7, "protocol = \"pigeon\""), vec![7], "protocol"),
        ("bad address", replace_line(&numbered("native", ""), 6, "address = \"nowhere\""), vec![6], "address"),
        ("timeout and misses", numbered("native", "timeout = \"15s\""), vec![9, 10], ""),
        ("zero timeout on native", replace_line(&numbered("native", ""), 9, "timeout = \"0s\""), vec![9], "timeout"),
        ("max_frame not a number", numbered("native", "max_frame = \"big\""), vec![10], "max_frame"),
        ("user_timeout too short", numbered("native", tcp_short), vec![14], "user_timeout"),
        ("bad log level", replace_line(&numbered("native", ""), 3, "log_level = \"chatty\""), vec![3], "log_level"),
        ("duplicate listener name", two.clone(), vec![line_of(&two, "name = ", 2)], "name"),
        ("TOML syntax", replace_line(&numbered("native", ""), 6, "address = "), vec![6], ""),
    ];
    let mut failures = Vec::new();
    for (i, (what, text, lines, key)) in cases.into_iter().enumerate() {
        let path = dir.write(&format!("bad{i}.toml"), &text);
        let p = path.to_str().expect("utf-8 path");
        let out = run_cli(&["--check-config", "--config", p]);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        let prefix = format!("heartbeatd: invalid config: {p}:");
        let problem = if out.status.code() != Some(78) {
            Some(format!("exit {:?} instead of 78 (EX_CONFIG)", out.status.code()))
        } else if let Some(rest) = stderr.lines().find_map(|l| l.strip_prefix(&prefix)) {
            // rest = "LINE: KEY: MESSAGE"
            let mut parts = rest.splitn(3, ": ");
            let line = parts.next().unwrap_or("").parse::<usize>().ok();
            let got_key = parts.next().unwrap_or("");
            if !line.is_some_and(|l| lines.contains(&l)) {
                Some(format!("line {line:?}, expected one of {lines:?}"))
            } else if !got_key.contains(key) {
                Some(format!("key {got_key:?} does not name {key:?}"))
            } else {
                None
            }
        } else {
            Some(format!("no line starting with {prefix:?}"))
        };
        if let Some(problem) = problem {
            failures.push(format!("{what}: {problem}\n  stderr: {}\n  file:\n{text}", stderr.trim_end()));
        }
    }
    assert!(failures.is_empty(), "{} bad configs misreported:\n{}", failures.len(), failures.join("\n"));

    // A file that does not exist.
    let missing = dir.join("missing.toml");
    let out = run_cli(&["--check-config", "--config", missing.to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(78), "missing file");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("heartbeatd: invalid config: "), "missing file: {stderr}");
    assert!(stderr.contains("missing.toml"), "names the file: {stderr}");
}

#[test]
fn version_prints_the_package_version() {
    let out = run_cli(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(env!("CARGO_PKG_VERSION")), "--version printed {stdout:?}");
    assert!(stdout.contains("heartbeatd"), "--version printed {stdout:?}");
}

#[test]
fn daemon_refuses_to_start_on_a_bad_config() {
    let dir = TempDir::new("start-bad");
    let path = dir.write("bad.toml", &numbered("native", "echo = true"));
    let out = run_cli(&["--config", path.to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(78), "EX_CONFIG");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("heartbeatd: invalid config: "), "{stderr}");
}

// ---- SIGUSR1 --------------------------------------------------------------

fn three_protocols(tick: &str, daemon_extra: &str) -> String {
    config(
        tick,
        daemon_extra,
        &[
            native("n", "interval = \"3s\"\nmisses = 5"),
            legacy("l", "interval = \"3s\"\nmisses = 5"),
            raw("r", "interval = \"3s\"\nmisses = 5"),
        ],
    )
}

#[test]
fn sigusr1_lists_online_clients() {
    let d = Daemon::start(&three_protocols("100ms", ""));
    let (mut a, wa) = NativeClient::handshake(d.addr("n"), "usr-a", "");
    let (b, wb) = NativeClient::handshake(d.addr("n"), "usr-b", "");
    let l = PlainClient::connect(d.addr("l"));
    let r = PlainClient::connect(d.addr("r"));
    let sl = d.wait(ev("online").kv("peer", l.local)).num("session");
    let sr = d.wait(ev("online").kv("peer", r.local)).num("session");
    d.wait(ev("online").kv("session", wa.session));
    d.wait(ev("online").kv("session", wb.session));

    let mark = d.mark();
    d.signal(libc::SIGUSR1);
    let head = d.wait_from(mark, ev("clients"), DEADLINE);
    assert_eq!(head.num("online"), 4, "{head}");
    assert_eq!(head.num("connections"), 4, "{head}");
    let expected = [
        (wa.session, "usr-a".to_string(), a.local.to_string(), "n", "native"),
        (wb.session, "usr-b".to_string(), b.local.to_string(), "n", "native"),
        (sl, l.local.to_string(), l.local.to_string(), "l", "legacy"),
        (sr, r.local.to_string(), r.local.to_string(), "r", "raw"),
    ];
    for (session, client, peer, listener, proto) in &expected {
        let line = d.wait_from(head.index, ev("client").kv("session", session), DEADLINE);
        assert_eq!(line.field("client"), client, "{line}");
        assert_eq!(line.field("peer"), peer, "{line}");
        assert_eq!(line.field("listener"), *listener, "{line}");
        assert_eq!(line.field("protocol"), *proto, "{line}");
        line.num("online_ms");
        line.num("silent_ms");
    }

    // After one leaves, the next listing omits it.
    a.bye("");
    d.wait(ev("offline").kv("session", wa.session).kv("reason", "left"));
    let mark = d.mark();
    d.signal(libc::SIGUSR1);
    let head = d.wait_from(mark, ev("clients"), DEADLINE);
    assert_eq!(head.num("online"), 3, "{head}");
    d.wait_from(head.index, ev("client").kv("session", sr), DEADLINE);
    d.wait_from(head.index, ev("client").kv("session", sl), DEADLINE);
    d.wait_from(head.index, ev("client").kv("session", wb.session), DEADLINE);
    d.assert_none(When("a client line for the departed session", |l: &Line| {
        l.index > head.index && l.is("client") && l.get("session") == Some(&wa.session.to_string())
    }));
}

// ---- SIGHUP ---------------------------------------------------------------

/// Writing the port that `:0` picked into the file is no change of
/// address: the listener and its clients stay.
#[test]
fn sighup_with_the_bound_port_keeps_the_listener() {
    let d = Daemon::start(&config("50ms", "", &[native("main", "interval = \"1s\"\nmisses = 5")]));
    let main = d.addr("main");
    let (mut a, wa) = NativeClient::handshake(main, "port-a", "");
    let mark = d.mark();
    let pinned = format!("address = \"{main}\"\n");
    let text = config("50ms", "", &[native("main", "interval = \"1s\"\nmisses = 5")])
        .replace("address = \"127.0.0.1:0\"\n", &pinned);
    assert!(text.contains(&pinned), "the rewritten config names the bound port:\n{text}");
    d.dir.write("heartbeatd.toml", &text);
    d.signal(libc::SIGHUP);
    let done = d.wait_from(mark, ev("reloaded"), DEADLINE);
    assert_eq!((done.num("added"), done.num("removed"), done.num("changed")), (0, 0, 0), "{done}");
    a.round_trip(b"same listener");
    d.assert_none(ev("offline").kv("session", wa.session));
}

#[test]
fn sighup_applies_a_good_file() {
    let d = Daemon::start(&config(
        "50ms",
        "",
        &[native("main", "interval = \"1s\"\nmisses = 5"), legacy("old", "interval = \"1s\"\nmisses = 5")],
    ));
    let main = d.addr("main");
    let old = d.addr("old");
    let (mut a, wa) = NativeClient::handshake(main, "hup-a", "");
    let (mut b, wb) = NativeClient::handshake(main, "hup-b", "");
    assert_eq!((wa.interval_ms, wa.timeout_ms), (1000, 5000));
    let mut l = PlainClient::connect(old);
    let sl = d.wait(ev("online").kv("peer", l.local)).num("session");

    let mark = d.mark();
    d.dir.write(
        "heartbeatd.toml",
        &config(
            "50ms",
            "",
            &[native("main", "interval = \"500ms\"\nmisses = 4"), raw("extra", "interval = \"1s\"\nmisses = 5")],
        ),
    );
    d.signal(libc::SIGHUP);

    let done = d.wait_from(mark, ev("reloaded"), DEADLINE);
    assert_eq!(done.num("listeners"), 2, "{done}");
    assert_eq!(done.num("added"), 1, "{done}");
    assert_eq!(done.num("removed"), 1, "{done}");
    assert_eq!(done.num("changed"), 1, "{done}");
    d.wait_from(mark, ev("listener-updated").kv("listener", "main"), DEADLINE);

    // Each native client of main gets a fresh WELCOME, same session.
    for (c, w) in [(&mut a, wa), (&mut b, wb)] {
        let fresh = c.expect_welcome();
        assert_eq!(
            fresh,
            Welcome { interval_ms: 500, timeout_ms: 2000, session: w.session },
            "fresh WELCOME after the reload"
        );
        c.round_trip(b"after reload");
    }

    // The removed listener's client goes offline (shutdown) and is closed.
    let off = d.wait_from(mark, ev("offline").kv("session", sl), DEADLINE);
    assert_eq!(off.field("reason"), "shutdown", "{off}");
    l.read_to_close();
    let refused = TcpStream::connect_timeout(&old, Duration::from_secs(2));
    assert!(refused.is_err(), "the removed listener {old} still accepts connections");

    // The added listener listens.
    let extra = d.wait_from(mark, ev("listening").kv("listener", "extra"), DEADLINE);
    assert_eq!(extra.field("protocol"), "raw", "{extra}");
    let mut x = PlainClient::connect(d.addr("extra"));
    x.send(b"hello");
    let on = d.wait(ev("online").kv("peer", x.local));
    assert_eq!(on.field("listener"), "extra", "{on}");

    // New clients of main get the new timing; the old ones are still online.
    let (_c, wc) = NativeClient::handshake(main, "hup-c", "");
    assert_eq!((wc.interval_ms, wc.timeout_ms), (500, 2000));
    d.assert_none(ev("offline").kv("session", wa.session));
    d.assert_none(ev("offline").kv("session", wb.session));
}

#[test]
fn sighup_with_a_broken_file_keeps_the_running_config() {
    let d = Daemon::start(&config("50ms", "", &[native("main", "interval = \"1s\"\nmisses = 5")]));
    let main = d.addr("main");
    let (mut a, wa) = NativeClient::handshake(main, "steady", "");

    let mark = d.mark();
    let broken = config("50ms", "", &[native("main", "interval = \"500ms\"\nmisses = 4\necho = true")]);
    d.dir.write("heartbeatd.toml", &broken);
    d.signal(libc::SIGHUP);
    let failed = d.wait_from(mark, ev("reload-failed"), DEADLINE);
    assert_eq!(failed.field("keeping"), "running-config", "{failed}");
    assert!(failed.field("error").contains("heartbeatd.toml"), "the error names the file: {failed}");
    assert!(failed.field("error").contains("echo"), "the error names the key: {failed}");

    // The client keeps working and receives no WELCOME (first frame back is
    // the PONG); new clients get the old timing.
    a.round_trip(b"still");
    let (_b, wb) = NativeClient::handshake(main, "newcomer", "");
    assert_eq!((wb.interval_ms, wb.timeout_ms), (1000, 5000));
    d.assert_none(When("a reloaded or listener-updated line after the failure", |l: &Line| {
        l.index > mark && (l.is("reloaded") || l.is("listener-updated"))
    }));
    d.assert_none(ev("offline").kv("session", wa.session));

    // A fixed file is applied by the next SIGHUP.
    let mark = d.mark();
    d.dir.write("heartbeatd.toml", &config("50ms", "", &[native("main", "interval = \"500ms\"\nmisses = 4")]));
    d.signal(libc::SIGHUP);
    d.wait_from(mark, ev("reloaded"), DEADLINE);
    let fresh = a.expect_welcome();
    assert_eq!((fresh.interval_ms, fresh.timeout_ms, fresh.session), (500, 2000, wa.session));
}

// ---- SIGTERM / SIGINT -----------------------------------------------------

#[test]
fn sigterm_says_bye_takes_everyone_offline_and_exits_0() {
    let d = Daemon::start(&three_protocols("50ms", "shutdown_grace = \"2s\""));
    let (mut a, wa) = NativeClient::handshake(d.addr("n"), "term-a", "");
    let (mut b, wb) = NativeClient::handshake(d.addr("n"), "term-b", "");
    let mut l = PlainClient::connect(d.addr("l"));
    let mut r = PlainClient::connect(d.addr("r"));
    let sl = d.wait(ev("online").kv("peer", l.local)).num("session");
    let sr = d.wait(ev("online").kv("peer", r.local)).num("session");
    // A connection still in its handshake: never online, so no event.
    let mut pending = NativeClient::connect(d.addr("n"));
    a.round_trip(b"");

    d.signal(libc::SIGTERM);
    let sd = d.wait(ev("shutdown"));
    assert_eq!(sd.num("signal"), 15, "{sd}");
    assert!(sd.num("clients") >= 4, "{sd}");
    sd.num("grace_ms");

    for c in [&mut a, &mut b] {
        let f = c.expect_frame("BYE shutdown");
        assert_eq!(f.bye(), "shutdown", "{f:?}");
        c.expect_close("after BYE shutdown");
    }
    for s in [wa.session, wb.session, sl, sr] {
        let off = d.wait(ev("offline").kv("session", s));
        assert_eq!(off.field("reason"), "shutdown", "{off}");
    }
    l.read_to_close();
    r.read_to_close();
    // The pending connection is closed too (a BYE first is fine).
    loop {
        match pending.read_frame(DEADLINE) {
            Ok(f) if f.ty == BYE => {}
            Ok(f) => panic!("pending connection got {f:?}"),
            Err(end) if end.is_closed() => break,
            Err(end) => panic!("pending connection: {end:?}"),
        }
    }
    d.wait(ev("stopped"));
    let status = d.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(0), "exit status {status}");

    let lines = d.lines();
    let audit = Audit::of(&lines);
    assert_eq!(audit.problems(), Vec::<String>::new());
    assert_eq!(audit.online.len(), 4, "four clients were online");
    assert_eq!(lines.iter().filter(|l| l.is("offline")).count(), 4, "one offline per online client");
    // Offline events after the shutdown line, stopped after them all.
    let stopped = d.wait(ev("stopped"));
    for l in lines.iter().filter(|l| l.is("offline")) {
        assert!(sd.index < l.index && l.index < stopped.index, "{l}");
    }
}

#[test]
fn sigint_stops_like_sigterm() {
    let d = Daemon::start(&three_protocols("50ms", "shutdown_grace = \"2s\""));
    let (mut a, wa) = NativeClient::handshake(d.addr("n"), "int-a", "");
    d.signal(libc::SIGINT);
    let sd = d.wait(ev("shutdown"));
    assert_eq!(sd.num("signal"), 2, "{sd}");
    let f = a.expect_frame("BYE shutdown");
    assert_eq!(f.bye(), "shutdown");
    let off = d.wait(ev("offline").kv("session", wa.session));
    assert_eq!(off.field("reason"), "shutdown", "{off}");
    let stopped = d.wait(ev("stopped"));
    stopped.num("clients_dropped");
    let status = d.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(0), "exit status {status}");
}

// ---- exactly one offline per online ------------------------------------------

#[test]
fn busy_mixed_scenario_has_exactly_one_offline_per_online() {
    let d = Daemon::start(&config(
        "20ms",
        "shutdown_grace = \"2s\"",
        &[
            native("n", "interval = \"3s\"\nmisses = 5"),
            native("fast", "interval = \"200ms\"\nmisses = 3"),
            legacy("l", "interval = \"3s\"\nmisses = 5"),
            raw("r", "interval = \"3s\"\nmisses = 5"),
        ],
    ));
    let n = d.addr("n");
    let fast = d.addr("fast");
    let la = d.addr("l");
    let ra = d.addr("r");
    // session → the reason it must end with.
    let mut expect: HashMap<u64, &str> = HashMap::new();
    let mut keep = Vec::new();

    // Native clients, each ending its own way.
    let (mut c, w) = NativeClient::handshake(n, "left", "");
    c.bye("");
    expect.insert(w.session, "left");
    keep.push(c);
    let (c, w) = NativeClient::handshake(n, "closed", "");
    c.fin();
    expect.insert(w.session, "closed");
    keep.push(c);
    let (c, w) = NativeClient::handshake(n, "reset", "");
    c.reset();
    expect.insert(w.session, "reset");
    let (mut c, w) = NativeClient::handshake(n, "twice", "");
    c.hello("twice", "");
    expect.insert(w.session, "protocol-error");
    keep.push(c);
    let (mut c, w) = NativeClient::handshake(n, "odd", "");
    c.send_frame(0x42, b"");
    expect.insert(w.session, "protocol-error");
    keep.push(c);
    let (c, w) = NativeClient::handshake(n, "dup", "");
    expect.insert(w.session, "replaced");
    keep.push(c);
    let (c, w) = NativeClient::handshake(n, "dup", "");
    expect.insert(w.session, "shutdown");
    keep.push(c);
    for id in ["stay-1", "stay-2"] {
        let (c, w) = NativeClient::handshake(n, id, "");
        expect.insert(w.session, "shutdown");
        keep.push(c);
    }
    let (c, w) = NativeClient::handshake(fast, "silent", "");
    expect.insert(w.session, "timeout");
    keep.push(c);
    // Handshakes that fail: never online, no events.
    let mut h = NativeClient::connect(n);
    h.ping(b"");
    keep.push(h);
    let mut h = NativeClient::connect(n);
    h.send(&frame(HELLO, &hello_payload(2, b"v2", b"")));
    keep.push(h);

    // Legacy and raw clients.
    let mut plain = Vec::new();
    let session_of = |c: &PlainClient| d.wait(ev("online").kv("peer", c.local)).num("session");
    let mut c = PlainClient::connect(la);
    c.send(&legacy_header(7, 0));
    expect.insert(session_of(&c), "protocol-error");
    plain.push(c);
    let c = PlainClient::connect(la);
    expect.insert(session_of(&c), "closed");
    c.fin();
    plain.push(c);
    let c = PlainClient::connect(la);
    expect.insert(session_of(&c), "reset");
    c.reset();
    let mut c = PlainClient::connect(la);
    c.heartbeat();
    expect.insert(session_of(&c), "shutdown");
    plain.push(c);
    let c = PlainClient::connect(ra);
    expect.insert(session_of(&c), "closed");
    c.fin();
    plain.push(c);
    let mut c = PlainClient::connect(ra);
    c.send(b"zzz");
    expect.insert(session_of(&c), "reset");
    c.reset();
    let mut c = PlainClient::connect(ra);
    c.send(b"here");
    expect.insert(session_of(&c), "shutdown");
    plain.push(c);

    // Everything that ends before shutdown has ended...
    for (s, reason) in &expect {
        if *reason != "shutdown" {
            d.wait(ev("offline").kv("session", s));
        }
    }
    // ...then the rest ends with the daemon.
    d.signal(libc::SIGTERM);
    d.wait(ev("stopped"));
    let status = d.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(0), "exit status {status}");

    let lines = d.lines();
    let audit = Audit::of(&lines);
    assert_eq!(audit.problems(), Vec::<String>::new(), "event audit");
    assert_eq!(audit.online.len(), expect.len(), "online events: {:?}", audit.online.keys());
    let mut wrong = Vec::new();
    for (s, reason) in &expect {
        if audit.reason(*s) != Some(reason) {
            wrong.push(format!("session {s}: expected {reason}, got {:?}", audit.reason(*s)));
        }
    }
    assert!(wrong.is_empty(), "wrong offline reasons:\n{}", wrong.join("\n"));
    drop(keep);
    drop(plain);
}

// ---- a hostile neighbour ------------------------------------------------------

#[test]
fn garbage_spewing_client_does_not_disturb_a_good_one() {
    let d = Daemon::start(&config("20ms", "", &[native("main", "interval = \"200ms\"\nmisses = 3")]));
    let addr = d.addr("main");
    let (mut good, w) = NativeClient::handshake(addr, "good", "");

    let stop = Arc::new(AtomicBool::new(false));
    let connections = Arc::new(AtomicUsize::new(0));
    let spewer = {
        let stop = Arc::clone(&stop);
        let connections = Arc::clone(&connections);
        thread::spawn(move || {
            let mut rng = fastrand::Rng::with_seed(0x5eed);
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut s) = TcpStream::connect(addr) else {
                    thread::sleep(Duration::from_millis(5));
                    continue;
                };
                connections.fetch_add(1, Ordering::Relaxed);
                for _ in 0..20 {
                    let n = rng.usize(1..512);
                    let junk: Vec<u8> = (0..n).map(|_| rng.u8(..)).collect();
                    if std::io::Write::write_all(&mut s, &junk).is_err() || stop.load(Ordering::Relaxed) {
                        break;
                    }
                    thread::sleep(Duration::from_millis(1));
                }
            }
        })
    };

    let until = Instant::now() + Duration::from_millis(1500);
    let mut rtts = Vec::new();
    let mut i = 0u32;
    while Instant::now() < until {
        let payload = i.to_be_bytes();
        let t0 = Instant::now();
        good.round_trip(&payload);
        rtts.push(t0.elapsed());
        i += 1;
        thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    spewer.join().expect("the spewer thread panicked");

    let max = rtts.iter().max().copied().unwrap_or_default();
    println!(
        "{} round trips next to {} garbage connections; max RTT {:.1} ms",
        rtts.len(),
        connections.load(Ordering::Relaxed),
        ms(max)
    );
    assert!(max <= SLACK, "a round trip took {max:?} next to the garbage");
    d.assert_none(ev("offline").kv("session", w.session));
    good.bye("");
    let off = d.wait(ev("offline").kv("session", w.session));
    assert_eq!(off.field("reason"), "left", "{off}");
}
