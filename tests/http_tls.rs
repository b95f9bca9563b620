//! The status API over HTTPS (`[http.tls]`, issue 13), against clients
//! that are not ours (curl) and against `heartbeat status|watch --tls`:
//! `/healthz` and `/clients` served over TLS; the bearer token on top of
//! it; a plain-HTTP request on the HTTPS port costs only its connection;
//! a renewed certificate taken on SIGHUP; config errors with file and line.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use heartbeatd_harness::http::http_addr;
use heartbeatd_harness::*;

/// The API's token in the tests that set one.
const TOKEN: &str = "api-s3cret-token";

/// A daemon with a native listener `main` and the status API on HTTPS
/// (`http_extra` are more `[http]` keys), its certificates made in its
/// own directory.
struct Https {
    d: Daemon,
    api: SocketAddr,
    ca: CertFiles,
    pki: Pki,
}

fn start(http_extra: &str) -> Https {
    let dir = TempDir::new("http-tls");
    let pki = Pki::new(dir.path());
    let ca = pki.ca("ca");
    let server = pki.server(&ca, "server");
    dir.write("api.token", &format!("{TOKEN}\n"));
    let text = format!(
        "{}\n[http]\naddress = \"127.0.0.1:0\"\n{http_extra}\n{}",
        config("50ms", "", &[native("main", "interval = \"1s\"\nmisses = 5")]),
        http_tls_table(&server)
    );
    let path = dir.write("heartbeatd.toml", &text);
    let d = Daemon::start_in(dir, path);
    let api = http_addr(&d);
    Https { d, api, ca, pki }
}

/// The `[http.tls]` table serving `server`.
fn http_tls_table(server: &CertFiles) -> String {
    format!("[http.tls]\ncert = {:?}\nkey = {:?}\n", server.cert, server.key)
}

/// `curl` of `path` on `api` over HTTPS trusting `ca`, with `extra`
/// arguments; stdout is the body, and `-w` appends the status on a last
/// line.
fn curl(api: SocketAddr, path: &str, ca: &CertFiles, extra: &[&str]) -> (Output, u16, String) {
    assert!(which("curl").is_some(), "the HTTPS tests need `curl` on $PATH (.ci/setup installs it)");
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}", "--cacert"])
        .arg(&ca.cert)
        .args(extra)
        .arg(format!("https://{api}{path}"))
        .stdin(Stdio::null())
        .output()
        .expect("spawn curl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", stdout.as_str()));
    let code = code.trim().parse().unwrap_or(0);
    (out.clone(), code, body.to_owned())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn curl_reads_healthz_and_clients_over_https() {
    let t = start("");
    let (mut client, _) = NativeClient::handshake(t.d.addr("main"), "dev-1", "");
    t.d.wait(ev("online").kv("client", "dev-1"));

    let (out, code, body) = curl(t.api, "/healthz", &t.ca, &[]);
    assert_eq!(code, 200, "{}\n{body}", text(&out.stderr));
    let health: serde_json::Value = serde_json::from_str(&body).expect("healthz JSON");
    assert_eq!(health["status"], "ok", "{body}");

    // `/clients` ends with the connection (no length): curl takes the
    // end only after the daemon's close_notify.
    let (out, code, body) = curl(t.api, "/clients", &t.ca, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(code, 200, "{body}");
    let list: Vec<serde_json::Value> = serde_json::from_str(&body).expect("clients JSON");
    assert_eq!(list.len(), 1, "{body}");
    assert_eq!(list[0]["id"], "dev-1", "{body}");

    // A CA that did not sign the certificate: curl refuses the server.
    let stranger = t.pki.ca("stranger");
    let (out, _, _) = curl(t.api, "/healthz", &stranger, &[]);
    assert!(!out.status.success(), "curl trusted a certificate its CA did not sign");
    client.ping(b"still");
    client.expect_pong(b"still");
}

#[test]
fn plain_http_on_the_https_port_costs_only_its_connection() {
    let t = start("");
    let (mut client, _) = NativeClient::handshake(t.d.addr("main"), "dev-1", "");
    let mut plain = TcpStream::connect(t.api).expect("connect");
    plain.set_read_timeout(Some(DEADLINE)).expect("read timeout");
    plain.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").expect("request");
    let mut answer = Vec::new();
    // The daemon closes it (after a TLS alert at most): the read ends.
    let started = Instant::now();
    let _ = plain.read_to_end(&mut answer);
    assert!(started.elapsed() < DEADLINE, "the plain connection was not closed");
    assert!(!answer.starts_with(b"HTTP/"), "a plain answer on the HTTPS port: {}", text(&answer));
    // The API and the heartbeats go on.
    let (out, code, _) = curl(t.api, "/healthz", &t.ca, &[]);
    assert_eq!(code, 200, "{}", text(&out.stderr));
    client.ping(b"after");
    client.expect_pong(b"after");
    t.d.assert_none(ev("offline").kv("client", "dev-1"));
}

#[test]
fn the_token_is_checked_over_https_and_healthz_stays_open() {
    let t = start("token_file = \"api.token\"");
    let (_, code, _) = curl(t.api, "/healthz", &t.ca, &[]);
    assert_eq!(code, 200, "/healthz stays open");
    let (_, code, body) = curl(t.api, "/clients", &t.ca, &[]);
    assert_eq!(code, 401, "{body}");
    let bearer = format!("Authorization: Bearer {TOKEN}");
    let (_, code, body) = curl(t.api, "/clients", &t.ca, &["-H", &bearer]);
    assert_eq!(code, 200, "{body}");
}

#[test]
fn heartbeat_status_speaks_https_with_ca_and_token() {
    let t = start("token_file = \"api.token\"");
    let (_client, _) = NativeClient::handshake(t.d.addr("main"), "dev-1", "");
    t.d.wait(ev("online").kv("client", "dev-1"));
    let api = t.api.to_string();
    let ca = t.ca.cert.to_str().expect("utf-8");
    let token = t.d.dir.join("api.token");
    let token = token.to_str().expect("utf-8");

    let out = run_agent(&["status", "--server", &api, "--tls", "--ca", ca, "--token-file", token, "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("status --json");
    assert_eq!(list.len(), 1, "{}", text(&out.stdout));
    assert_eq!(list[0]["id"], "dev-1");

    let out = run_agent(&["status", "--server", &api, "--tls", "--ca", ca]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("HTTP 401") && text(&out.stderr).contains("https://"), "{}", text(&out.stderr));

    // Plain HTTP to the HTTPS port: a failure that says it is not HTTP.
    let out = run_agent(&["status", "--server", &api, "--token-file", token, "--timeout", "2s"]);
    assert!(!out.status.success(), "{}", text(&out.stdout));

    // --ca without --tls is a usage error.
    let out = run_agent(&["status", "--server", &api, "--ca", ca]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

#[test]
fn heartbeat_watch_follows_the_feed_over_https() {
    let t = start("token_file = \"api.token\"");
    let api = t.api.to_string();
    let token = t.d.dir.join("api.token");
    let mark = t.d.mark();
    let mut watch = Command::new(bin("heartbeat"))
        .args(["watch", "--server", &api, "--tls", "--ca"])
        .arg(&t.ca.cert)
        .arg("--token-file")
        .arg(&token)
        .args(["--count", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn watch");
    // Connected once the daemon counts a subscriber in /metrics.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let bearer = format!("Authorization: Bearer {TOKEN}");
        let (_, _, body) = curl(t.api, "/metrics", &t.ca, &["-H", &bearer]);
        if body.lines().any(|l| l.starts_with("heartbeatd_event_subscribers ") && !l.ends_with(" 0")) {
            break;
        }
        assert!(Instant::now() < deadline, "watch never subscribed: {body}");
        thread::sleep(Duration::from_millis(50));
    }
    let (_client, _) = NativeClient::handshake(t.d.addr("main"), "dev-2", "");
    t.d.wait_from(mark, ev("online").kv("client", "dev-2"), DEADLINE);
    let deadline = Instant::now() + DEADLINE;
    while watch.try_wait().expect("try_wait").is_none() {
        if Instant::now() >= deadline {
            let _ = watch.kill();
            panic!("watch --count 1 did not exit after an online event");
        }
        thread::sleep(Duration::from_millis(10));
    }
    let out = watch.wait_with_output().expect("output");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("online client=dev-2"), "{}", text(&out.stdout));
}

#[test]
fn a_renewed_certificate_is_served_after_sighup() {
    let t = start("");
    let new_ca = t.pki.ca("newca");
    let renewed = t.pki.server(&new_ca, "renewed");
    std::fs::copy(&renewed.cert, t.d.dir.join("server.pem")).expect("copy cert");
    std::fs::copy(&renewed.key, t.d.dir.join("server.key")).expect("copy key");
    let mark = t.d.mark();
    t.d.signal(libc::SIGHUP);
    t.d.wait_from(mark, ev("reloaded"), DEADLINE);
    let (out, code, _) = curl(t.api, "/healthz", &new_ca, &[]);
    assert_eq!(code, 200, "{}", text(&out.stderr));
    let (out, _, _) = curl(t.api, "/healthz", &t.ca, &[]);
    assert!(!out.status.success(), "the old certificate is still served");
}

#[test]
fn check_config_names_the_file_and_line_of_bad_http_tls() {
    let dir = TempDir::new("http-tls-config");
    let pki = Pki::new(dir.path());
    let ca = pki.ca("ca");
    let server = pki.server(&ca, "server");
    let base = config("50ms", "", &[native("main", "")]);
    let head = format!("{base}\n[http]\naddress = \"127.0.0.1:0\"\n");
    let line_of = |text: &str, key: &str| text.lines().position(|l| l.starts_with(key)).map(|i| i + 1);
    let check = |table: &str, key_line: &str, key: &str, what: &str| {
        let written = format!("{head}{table}");
        let path = dir.write("heartbeatd.toml", &written);
        let out = run_cli(&["--check-config", "--config", path.to_str().expect("utf-8")]);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "accepted {table}");
        let line = line_of(&written, key_line).unwrap_or_else(|| panic!("no {key_line} in {written}"));
        let place = format!("heartbeatd.toml:{line}");
        assert!(stderr.contains(&place) && stderr.contains(key) && stderr.contains(what), "{table}\n{stderr}");
    };
    let missing = CertFiles { cert: dir.join("missing.pem"), key: server.key.clone() };
    check(&http_tls_table(&missing), "cert", "http.tls.cert", "cannot read");
    check(&format!("[http.tls]\ncert = {:?}\n", server.cert), "[http.tls]", "http.tls.key", "required");
    check(
        &format!("{}client_ca = {:?}\n", http_tls_table(&server), ca.cert),
        "client_ca",
        "http.tls.client_ca",
        "no client",
    );
    let ok = dir.write("ok.toml", &format!("{head}{}", http_tls_table(&server)));
    let out = run_cli(&["--check-config", "--config", ok.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run_cli(&["--print-config", "--config", ok.to_str().expect("utf-8")]);
    assert!(text(&out.stdout).contains("[http.tls]"), "{}", text(&out.stdout));
}
