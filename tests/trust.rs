//! Trust (issue 13): no id is taken over without its credential.
//!
//! A HELLO for a live id that does not authenticate as that id gets
//! ERROR 4 and one `takeover-refused` line; the live connection keeps its
//! PONGs and has no offline event.

use heartbeatd_harness::http::{connect_http, exchange, get, http_addr, scrape, with_http, Response};
use heartbeatd_harness::*;

/// A long interval: nothing times out during a test.
const SLOW: &str = "interval = \"3s\"\nmisses = 5\n";

/// The stranger is refused with ERROR 4 and the one `takeover-refused`
/// line naming the id and its peer; the victim (session `victim`) keeps
/// its PONGs and stays online.
fn assert_refused(
    d: &Daemon,
    mut stranger: NativeClient,
    id: &str,
    token: &str,
    victim: &mut NativeClient,
    session: u64,
) {
    stranger.hello(id, token);
    stranger.expect_error(ERR_AUTH);
    let peer = stranger.local.to_string();
    let line = d.wait(ev("takeover-refused").kv("id", id).kv("peer", &peer));
    assert!(!line.text.contains(token) || token.is_empty(), "the token was logged: {line}");
    d.assert_none(ev("online").kv("peer", &peer));
    d.assert_none(ev("handshake-failed").kv("peer", &peer));
    victim.round_trip(b"still mine");
    d.assert_none(ev("offline").kv("session", session));
}

#[test]
fn a_wrong_or_missing_token_never_takes_over_a_live_id() {
    let d = Daemon::start(&config("100ms", "", &[native("locked", &format!("{SLOW}tokens = [\"s3cret\"]"))]));
    let addr = d.addr("locked");
    let (mut victim, w) = NativeClient::handshake(addr, "victim", "s3cret");
    d.wait(ev("online").kv("session", w.session));
    for token in ["wrong", ""] {
        assert_refused(&d, NativeClient::connect(addr), "victim", token, &mut victim, w.session);
    }
    assert_eq!(d.find_all(ev("takeover-refused")).len(), 2);
}

#[test]
fn an_open_listener_cannot_take_over_an_id_from_a_locked_one() {
    let d = Daemon::start(&with_http(
        &config("100ms", "", &[native("locked", &format!("{SLOW}tokens = [\"s3cret\"]")), native("open", SLOW)]),
        "",
    ));
    let (mut victim, w) = NativeClient::handshake(d.addr("locked"), "victim", "s3cret");
    d.wait(ev("online").kv("session", w.session));
    assert_refused(&d, NativeClient::connect(d.addr("open")), "victim", "", &mut victim, w.session);
    // The open listener still serves ids nobody holds.
    let (_other, wo) = NativeClient::handshake(d.addr("open"), "someone-else", "");
    d.wait(ev("online").kv("session", wo.session));
    victim.round_trip(b"after");
    assert_eq!(scrape(http_addr(&d)).value("heartbeatd_takeovers_refused_total", &[]), 1.0);
}

/// A tokens file line binding `token` to `id` (`*`: listener-wide).
fn bind(id: &str, token: &str) -> String {
    format!("{id} {}\n", heartbeatd::config::tokens::format_digest(&heartbeatd::config::tokens::hash(token.as_bytes())))
}

/// A daemon whose listener `fleet` reads a tokens file binding `victim`
/// and `other` to their own tokens, with a listener-wide `*` token.
fn fleet() -> Daemon {
    let dir = TempDir::new("trust");
    let entries = format!(
        "# per-id\n{}{}{}",
        bind("victim", "victim-s3cret"),
        bind("other", "other-s3cret"),
        bind("*", "shared-s3cret")
    );
    dir.write("tokens", &entries);
    let config = dir
        .write("heartbeatd.toml", &config("100ms", "", &[native("fleet", &format!("{SLOW}tokens_file = \"tokens\""))]));
    Daemon::start_in(dir, config)
}

#[test]
fn a_bound_id_is_taken_only_with_its_own_token() {
    let d = fleet();
    let addr = d.addr("fleet");
    let (mut victim, w) = NativeClient::handshake(addr, "victim", "victim-s3cret");
    d.wait(ev("online").kv("session", w.session));
    // Another id's token, the listener-wide token, no token, a wrong one.
    for token in ["other-s3cret", "shared-s3cret", "", "victim-s3cre"] {
        assert_refused(&d, NativeClient::connect(addr), "victim", token, &mut victim, w.session);
    }
    // Those tokens still serve their own ids.
    let (_other, wo) = NativeClient::handshake(addr, "other", "other-s3cret");
    d.wait(ev("online").kv("session", wo.session));
    let (_unbound, wu) = NativeClient::handshake(addr, "unbound-7", "shared-s3cret");
    d.wait(ev("online").kv("session", wu.session));
    // An id not bound, with a bound id's token: refused, and not online.
    let mut c = NativeClient::connect(addr);
    c.hello("unbound-8", "victim-s3cret");
    c.expect_error(ERR_AUTH);
    d.wait(ev("handshake-failed").kv("peer", c.local));
    victim.round_trip(b"mine still");
    d.assert_none(ev("offline").kv("session", w.session));
}

/// A client reconnecting through a NAT that lost its state: the old
/// connection is still online, the new HELLO proves the id, so it wins.
#[test]
fn the_ids_own_token_replaces_a_stale_connection() {
    let d = fleet();
    let addr = d.addr("fleet");
    let (mut stale, w1) = NativeClient::handshake(addr, "victim", "victim-s3cret");
    let (mut fresh, w2) = NativeClient::handshake(addr, "victim", "victim-s3cret");
    stale.expect_error(ERR_REPLACED);
    let off = d.wait(ev("offline").kv("session", w1.session));
    assert_eq!(off.field("reason"), "replaced", "{off}");
    d.wait(ev("online").kv("session", w2.session));
    fresh.round_trip(b"back");
    d.assert_none(ev("takeover-refused"));
}

#[test]
fn no_token_is_ever_logged() {
    let d = fleet();
    let addr = d.addr("fleet");
    let (mut victim, w) = NativeClient::handshake(addr, "victim", "victim-s3cret");
    d.wait(ev("online").kv("session", w.session));
    assert_refused(&d, NativeClient::connect(addr), "victim", "other-s3cret", &mut victim, w.session);
    let mut c = NativeClient::connect(addr);
    c.hello("nobody", "guess-s3cret");
    c.expect_error(ERR_AUTH);
    d.wait(ev("handshake-failed").kv("peer", c.local));
    let log = d.log_text();
    assert!(!log.contains("s3cret"), "a token reached the log:\n{log}");
}

#[test]
fn hash_token_prints_the_sha256_of_stdin_trimmed() {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let hash = |input: &[u8]| {
        let mut child = Command::new(daemon_bin())
            .arg("--hash-token")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning heartbeatd --hash-token");
        child.stdin.take().expect("piped stdin").write_all(input).expect("writing the token");
        child.wait_with_output().expect("waiting for heartbeatd --hash-token")
    };
    let out = hash(b"test\n");
    assert!(out.status.success(), "{out:?}");
    // As `printf test | sha256sum` prints it.
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\n"
    );
    let out = hash(b"\n");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("0 bytes"), "{out:?}");
}

/// A daemon whose status API reads its token from `api-token`
/// (`api-s3cret`), with one client `dev-1` online.
fn locked_api() -> (Daemon, NativeClient, std::net::SocketAddr) {
    let dir = TempDir::new("trust-api");
    dir.write("api-token", "api-s3cret\n");
    let text = with_http(&config("100ms", "", &[native("main", SLOW)]), "token_file = \"api-token\"");
    let path = dir.write("heartbeatd.toml", &text);
    let d = Daemon::start_in(dir, path);
    let api = http_addr(&d);
    let (client, w) = NativeClient::handshake(d.addr("main"), "dev-1", "");
    d.wait(ev("online").kv("session", w.session));
    (d, client, api)
}

/// `GET path` with extra header lines.
fn get_with(addr: std::net::SocketAddr, path: &str, headers: &str) -> Response {
    exchange(addr, format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}\r\n").as_bytes())
}

#[test]
fn the_status_api_wants_its_token_except_for_healthz_and_the_page() {
    let (d, _client, api) = locked_api();
    for path in ["/clients", "/clients/dev-1", "/metrics", "/events"] {
        let r = get(api, path);
        assert_eq!(r.status, 401, "{path}: {}", r.text());
        assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"heartbeatd\""), "{path}");
        assert_eq!(r.header("content-type"), Some("application/json"), "{path}");
        assert_eq!(r.json()["status"], 401, "{path}");
        assert!(r.json()["error"].as_str().unwrap_or("").contains("token"), "{path}: {}", r.text());
    }
    let wrong = get_with(api, "/clients", "Authorization: Bearer api-s3cre\r\n");
    assert_eq!(wrong.status, 401);
    assert!(wrong.header("www-authenticate").unwrap_or("").contains("invalid_token"), "{wrong:?}");
    let right = get_with(api, "/clients", "Authorization: Bearer api-s3cret\r\n");
    assert_eq!(right.status, 200, "{}", right.text());
    assert_eq!(right.json()[0]["id"], "dev-1");
    // The query form, for EventSource.
    let mut sse = connect_http(api);
    std::io::Write::write_all(&mut sse, b"GET /events?access_token=api-s3cret HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut head = [0u8; 15];
    std::io::Read::read_exact(&mut sse, &mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200 OK");
    for open in ["/healthz", "/"] {
        assert_eq!(get(api, open).status, 200, "{open}");
    }
    assert!(!d.log_text().contains("api-s3cret"), "the API token reached the log");
}

/// `heartbeat` with `args` and `env`, to completion.
fn heartbeat(args: &[&str], env: &[(&str, &std::path::Path)]) -> std::process::Output {
    let mut cmd = std::process::Command::new(bin("heartbeat"));
    cmd.args(args).env_remove("HEARTBEAT_API_TOKEN_FILE").stdin(std::process::Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("running heartbeat")
}

#[test]
fn heartbeat_status_and_watch_take_the_token_file() {
    let (d, _client, api) = locked_api();
    let server = api.to_string();
    let token_file = d.dir.join("api-token");
    let token = token_file.to_str().expect("a UTF-8 path");
    let out = heartbeat(&["status", "--server", &server], &[]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("HTTP 401") && err.contains("--token-file"), "{err}");
    let out = heartbeat(&["status", "--server", &server, "--token-file", token], &[]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("dev-1"), "{out:?}");
    let out = heartbeat(&["status", "--server", &server, "--json"], &[("HEARTBEAT_API_TOKEN_FILE", &token_file)]);
    assert!(out.status.success(), "{out:?}");
    // `watch` follows the feed with the token; one online event ends it.
    let mut cmd = std::process::Command::new(bin("heartbeat"));
    cmd.args(["watch", "--server", &server, "--count", "1", "--token-file", token]);
    let watch = Proc::spawn("heartbeat watch", cmd, Output::Stdout);
    watch.wait_next("dev-1", DEADLINE);
    let (_second, w) = NativeClient::handshake(d.addr("main"), "dev-2", "");
    d.wait(ev("online").kv("session", w.session));
    watch.wait_next("dev-2", DEADLINE);
    assert!(watch.wait_exit(DEADLINE).success(), "{}", watch.text());
}

#[test]
fn check_config_warns_about_what_is_open_to_the_network_and_still_accepts_it() {
    let dir = TempDir::new("trust-warn");
    let open = config(
        "100ms",
        "",
        &[listener("wide", "native", "0.0.0.0:0", SLOW), native("plain", &format!("{SLOW}tokens = [\"s3cret\"]"))],
    );
    let path = dir.write("open.toml", &format!("{open}\n[http]\naddress = \"0.0.0.0:0\"\n"));
    let out = run_cli(&["--check-config", "--config", path.to_str().expect("a UTF-8 path")]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("heartbeatd: warning: ")).collect();
    assert_eq!(warnings.len(), 3, "{err}");
    assert!(warnings[0].contains("\"wide\" on 0.0.0.0:0") && warnings[0].contains("tokens_file"), "{err}");
    assert!(warnings[1].contains("\"plain\"") && warnings[1].contains("deprecated"), "{err}");
    assert!(warnings[2].contains("status API") && warnings[2].contains("http.token_file"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");

    // Per-id tokens on the wide listener, a token on the API: the token
    // would still cross the network in clear, which is the one warning left.
    dir.write("tokens", &bind("dev-1", "dev-1-s3cret"));
    dir.write("api-token", "api-s3cret\n");
    let closed =
        config("100ms", "", &[listener("wide", "native", "0.0.0.0:0", &format!("{SLOW}tokens_file = \"tokens\""))]);
    let http = "[http]\naddress = \"0.0.0.0:0\"\ntoken_file = \"api-token\"\n";
    let path = dir.write("tokened.toml", &format!("{closed}\n{http}"));
    let out = run_cli(&["--check-config", "--config", path.to_str().expect("a UTF-8 path")]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("heartbeatd: warning: ")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(warnings[0].contains("status API") && warnings[0].contains("[http.tls]"), "{err}");

    // Closed: the API over HTTPS too.
    let pki = Pki::new(dir.path());
    let server = pki.server(&pki.ca("ca"), "server");
    let tls = format!("[http.tls]\ncert = {:?}\nkey = {:?}\n", server.cert, server.key);
    let path = dir.write("closed.toml", &format!("{closed}\n{http}\n{tls}"));
    let out = run_cli(&["--check-config", "--config", path.to_str().expect("a UTF-8 path")]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "", "{out:?}");
}

#[test]
fn the_daemon_logs_the_warnings_at_start() {
    let d = Daemon::start(&config("100ms", "", &[listener("wide", "native", "0.0.0.0:0", SLOW)]));
    let line = d.wait(ev("config-warning"));
    assert!(line.field("message").contains("\"wide\""), "{line}");
}

/// A reload re-reads the tokens file: a new id's token works at once, a
/// rotated-out one no longer does, and clients online stay online.
#[test]
fn a_reload_applies_a_new_tokens_file() {
    let d = fleet();
    let addr = d.addr("fleet");
    let (mut victim, w) = NativeClient::handshake(addr, "victim", "victim-s3cret");
    d.wait(ev("online").kv("session", w.session));
    d.dir.write("tokens", &format!("{}{}", bind("victim", "victim-n3w"), bind("newcomer", "newcomer-s3cret")));
    let mark = d.mark();
    d.signal(libc::SIGHUP);
    d.wait_from(mark, "reloaded", DEADLINE);
    let (_n, wn) = NativeClient::handshake(addr, "newcomer", "newcomer-s3cret");
    d.wait(ev("online").kv("session", wn.session));
    // The old token no longer proves the id: refused, the holder stays.
    assert_refused(&d, NativeClient::connect(addr), "victim", "victim-s3cret", &mut victim, w.session);
    let (_v, wv) = NativeClient::handshake(addr, "victim", "victim-n3w");
    let off = d.wait(ev("offline").kv("session", w.session));
    assert_eq!(off.field("reason"), "replaced", "{off}");
    d.wait(ev("online").kv("session", wv.session));
}
