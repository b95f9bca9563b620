//! TLS on native listeners (issue 13), against clients that are not ours:
//! `openssl s_client` carrying the native bytes and Python's `ssl` module;
//! mutual TLS with the client's id from its certificate; expired and
//! wrong-CA certificates refused with a clear log line; a stalled
//! handshake cut by the handshake timeout; the certificate reloaded on
//! SIGHUP with the connections kept; config errors with file and line.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use heartbeatd_harness::*;

/// A daemon with one native TLS listener `main` (`extra` are more listener
/// keys), its certificates made in its own directory.
struct TlsDaemon {
    d: Daemon,
    ca: CertFiles,
    /// The client CA (mutual TLS only) and a second, unknown one.
    client_ca: CertFiles,
    stranger_ca: CertFiles,
    pki: Pki,
}

fn start(extra: &str, mutual: Option<&str>) -> TlsDaemon {
    let dir = TempDir::new("tls");
    let pki = Pki::new(dir.path());
    let ca = pki.ca("ca");
    let server = pki.server(&ca, "server");
    let client_ca = pki.ca("clientca");
    let stranger_ca = pki.ca("strangerca");
    let table = match mutual {
        None => tls_table(&server, None, None),
        Some("") => tls_table(&server, Some(&client_ca), None),
        Some(id) => tls_table(&server, Some(&client_ca), Some(id)),
    };
    let text = config("50ms", "", &[native("main", &format!("interval = \"1s\"\n{extra}\n{table}"))]);
    let path = dir.write("heartbeatd.toml", &text);
    let d = Daemon::start_in(dir, path);
    d.wait(ev("listening").kv("listener", "main"));
    TlsDaemon { d, ca, client_ca, stranger_ca, pki }
}

/// `openssl s_client` on `addr`, trusting `ca`, its stdout (the bytes from
/// the daemon) read by a thread.
struct SClient {
    child: Child,
    bytes: mpsc::Receiver<Vec<u8>>,
    got: Vec<u8>,
}

impl SClient {
    fn connect(addr: SocketAddr, ca: &CertFiles) -> SClient {
        let mut child = Command::new("openssl")
            .args(["s_client", "-quiet", "-verify_return_error", "-servername", "localhost", "-connect"])
            .arg(addr.to_string())
            .arg("-CAfile")
            .arg(&ca.cert)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning openssl s_client");
        let mut stdout = child.stdout.take().expect("piped stdout");
        let (tx, bytes) = mpsc::channel();
        thread::spawn(move || {
            let mut buf = [0; 4096];
            while let Ok(n @ 1..) = stdout.read(&mut buf) {
                if tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        SClient { child, bytes, got: Vec::new() }
    }

    fn send(&mut self, bytes: &[u8]) {
        let stdin = self.child.stdin.as_mut().expect("piped stdin");
        stdin.write_all(bytes).and_then(|()| stdin.flush()).expect("writing to s_client");
    }

    /// The next frame from the daemon, within [`DEADLINE`].
    fn frame(&mut self) -> Frame {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some((frame, used)) = decode_frame(&self.got) {
                self.got.drain(..used);
                return frame;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.bytes.recv_timeout(left) {
                Ok(bytes) => self.got.extend(bytes),
                Err(e) => panic!("no frame from the daemon through s_client ({e}); bytes so far {:?}", self.got),
            }
        }
    }
}

impl Drop for SClient {
    fn drop(&mut self) {
        reap(&mut self.child);
    }
}

#[test]
fn openssl_s_client_carries_native_frames() {
    let t = start("", None);
    let mut s = SClient::connect(t.d.addr("main"), &t.ca);
    s.send(&hello_frame("s-client", ""));
    let welcome = s.frame().welcome();
    t.d.wait(ev("online").kv("client", "s-client").kv("session", welcome.session));
    // Two PINGs in one write: one TLS record, two PONGs.
    let mut pings = frame(PING, b"one");
    pings.extend(frame(PING, b"two"));
    s.send(&pings);
    for payload in [&b"one"[..], b"two"] {
        let pong = s.frame();
        assert_eq!((pong.ty, pong.payload.as_slice()), (PONG, payload), "{}", pong.name());
    }
    s.send(&frame(BYE, b"done"));
    t.d.wait(ev("offline").kv("client", "s-client").kv("reason", "left"));
}

#[test]
fn python_ssl_client_goes_online_and_keeps_its_pongs() {
    let t = start("", None);
    let py = py_client(t.d.addr("main"), &t.ca, None, "python", 50);
    let hs = py.wait_next(ev("handshake"), DEADLINE);
    assert!(hs.field("version").starts_with("TLSv1."), "{}", hs.text);
    let w = py.wait_next(ev("welcome"), DEADLINE);
    t.d.wait(ev("online").kv("client", "python").kv("session", w.field("session")));
    py.wait_next(ev("pong").kv("n", 5), DEADLINE);
    t.d.assert_none(ev("offline").kv("client", "python"));
}

#[test]
fn a_plain_client_on_a_tls_listener_costs_only_itself() {
    let t = start("", None);
    let good = py_client(t.d.addr("main"), &t.ca, None, "good", 50);
    good.wait_next(ev("welcome"), DEADLINE);
    // A plaintext HELLO is no TLS record: that connection alone fails.
    let mut plain = TcpStream::connect(t.d.addr("main")).expect("connect");
    plain.write_all(&hello_frame("plain", "")).expect("write");
    let line = t.d.wait(ev("handshake-failed"));
    assert!(line.field("error").starts_with("tls: "), "{}", line.text);
    let mark = good.mark();
    good.wait_from(mark, ev("pong"), DEADLINE);
    t.d.assert_none(ev("online").kv("client", "plain"));
}

#[test]
fn a_stalled_tls_handshake_is_cut_by_the_handshake_timeout() {
    let t = start("handshake_timeout = \"300ms\"", None);
    let started = Instant::now();
    // Connected, then silent: no ClientHello ever comes.
    let _silent = TcpStream::connect(t.d.addr("main")).expect("connect");
    let line = t.d.wait(ev("handshake-failed").kv("error", "tls: handshake timeout"));
    let took = line.at.saturating_duration_since(started);
    assert!(took >= Duration::from_millis(300), "cut after {took:?}, before the 300 ms timeout");
    assert!(took < Duration::from_millis(300) + SLACK * 4, "cut after {took:?}");
}

#[test]
fn mutual_tls_takes_the_id_from_the_certificate_common_name() {
    let t = start("", Some(""));
    let alpha = t.pki.client(&t.client_ca, "alpha", "alpha", "", 30);
    let a = py_client(t.d.addr("main"), &t.ca, Some(&alpha), "alpha", 50);
    let w = a.wait_next(ev("welcome"), DEADLINE);
    t.d.wait(ev("online").kv("client", "alpha").kv("session", w.field("session")));
    // The same certificate naming another id: ERROR 4, and alpha stays.
    let b = py_client(t.d.addr("main"), &t.ca, Some(&alpha), "beta", 50);
    b.wait_next(ev("error").kv("code", ERR_AUTH), DEADLINE);
    let refused = t.d.wait(ev("handshake-failed"));
    let error = refused.field("error");
    assert!(error.contains("HELLO id beta") && error.contains("common name alpha"), "{}", refused.text);
    let mark = a.mark();
    a.wait_from(mark, ev("pong"), DEADLINE);
    t.d.assert_none(ev("offline").kv("client", "alpha"));
    t.d.assert_none(ev("online").kv("client", "beta"));
}

#[test]
fn mutual_tls_can_take_the_id_from_a_san_uri() {
    let t = start("", Some("uri"));
    let id = "spiffe://test/gamma";
    let gamma = t.pki.client(&t.client_ca, "gamma", "not-the-id", &format!("URI:{id},DNS:gamma.test"), 30);
    let g = py_client(t.d.addr("main"), &t.ca, Some(&gamma), id, 50);
    g.wait_next(ev("welcome"), DEADLINE);
    t.d.wait(ev("online").kv("client", id));
    // The common name is not the id with client_id = "uri".
    let cn = py_client(t.d.addr("main"), &t.ca, Some(&gamma), "not-the-id", 50);
    cn.wait_next(ev("error").kv("code", ERR_AUTH), DEADLINE);
}

#[test]
fn expired_and_wrong_ca_client_certificates_are_refused_in_words() {
    let t = start("", Some(""));
    let expired = t.pki.client(&t.client_ca, "expired", "old", "", -1);
    let old = py_client(t.d.addr("main"), &t.ca, Some(&expired), "old", 50);
    let line = t.d.wait(ev("handshake-failed"));
    assert!(line.field("error").starts_with("tls: expired certificate"), "{}", line.text);
    old.wait_next(When("tls-error or closed", |l: &Line| l.is("tls-error") || l.is("closed")), DEADLINE);

    let mark = t.d.mark();
    let foreign = t.pki.client(&t.stranger_ca, "foreign", "foreign", "", 30);
    let f = py_client(t.d.addr("main"), &t.ca, Some(&foreign), "foreign", 50);
    let line = t.d.wait_from(mark, ev("handshake-failed"), DEADLINE);
    assert!(line.field("error").starts_with("tls: unknown CA"), "{}", line.text);
    f.wait_next(When("tls-error or closed", |l: &Line| l.is("tls-error") || l.is("closed")), DEADLINE);

    // No certificate at all.
    let mark = t.d.mark();
    let none = py_client(t.d.addr("main"), &t.ca, None, "anonymous", 50);
    let line = t.d.wait_from(mark, ev("handshake-failed"), DEADLINE);
    assert!(line.field("error").starts_with("tls: no client certificate"), "{}", line.text);
    none.wait_next(When("tls-error or closed", |l: &Line| l.is("tls-error") || l.is("closed")), DEADLINE);
    t.d.assert_none(ev("online"));
}

#[test]
fn sighup_reloads_the_certificate_and_keeps_the_connections() {
    let t = start("", None);
    let kept = py_client(t.d.addr("main"), &t.ca, None, "kept", 50);
    kept.wait_next(ev("welcome"), DEADLINE);
    t.d.wait(ev("online").kv("client", "kept"));
    // A renewed certificate from another CA, under the same file names.
    let new_ca = t.pki.ca("newca");
    let renewed = t.pki.server(&new_ca, "renewed");
    std::fs::copy(&renewed.cert, t.d.dir.join("server.pem")).expect("copy cert");
    std::fs::copy(&renewed.key, t.d.dir.join("server.key")).expect("copy key");
    let mark = t.d.mark();
    t.d.signal(libc::SIGHUP);
    t.d.wait_from(mark, ev("listener-updated").kv("listener", "main"), DEADLINE);
    // New handshakes get the new certificate...
    let fresh = py_client(t.d.addr("main"), &new_ca, None, "fresh", 50);
    fresh.wait_next(ev("welcome"), DEADLINE);
    let stale = py_client(t.d.addr("main"), &t.ca, None, "stale", 50);
    stale.wait_next(ev("tls-error"), DEADLINE);
    // ...and the connection made before keeps its PONGs.
    let pongs = kept.mark();
    kept.wait_from(pongs + 5, ev("pong"), DEADLINE);
    t.d.assert_none(ev("offline").kv("client", "kept"));
}

#[test]
fn check_config_names_the_file_and_line_of_bad_tls() {
    let dir = TempDir::new("tls-config");
    let pki = Pki::new(dir.path());
    let ca = pki.ca("ca");
    let server = pki.server(&ca, "server");
    let other = pki.server(&ca, "other");
    let check = |table: &str, line: usize, key: &str, what: &str| {
        let path = dir.write("heartbeatd.toml", &config("50ms", "", &[native("main", table)]));
        let out = run_cli(&["--check-config", "--config", path.to_str().expect("utf-8")]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "accepted {table}");
        let place = format!("heartbeatd.toml:{line}");
        assert!(stderr.contains(&place) && stderr.contains(key) && stderr.contains(what), "{table}\n{stderr}");
    };
    let missing = CertFiles { cert: dir.join("missing.pem"), key: server.key.clone() };
    // config(): [daemon] is lines 1-4, [[listener]] line 6, its keys 7-9.
    check(&tls_table(&missing, None, None), 11, "listener[0].tls.cert", "cannot read");
    let mismatched = CertFiles { cert: server.cert.clone(), key: other.key.clone() };
    check(&tls_table(&mismatched, None, None), 12, "listener[0].tls.key", "does not fit");
    check(&format!("[listener.tls]\ncert = {:?}\n", server.cert), 10, "listener[0].tls.key", "required");
    check(&format!("{}client_id = \"cn\"\n", tls_table(&server, None, None)), 13, "client_id", "needs client_ca");
    check(&tls_table(&server, Some(&ca), Some("email")), 14, "client_id", "expected \"cn\", \"dns\" or \"uri\"");
    let ok = dir.write("ok.toml", &config("50ms", "", &[native("main", &tls_table(&server, Some(&ca), Some("dns")))]));
    let out = run_cli(&["--check-config", "--config", ok.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `heartbeat ARGS` with the TLS flags for `ca` and, for mutual TLS,
/// `identity`.
fn heartbeat_tls(args: &[&str], ca: &CertFiles, identity: Option<&CertFiles>) -> Command {
    let mut cmd = Command::new(bin("heartbeat"));
    cmd.args(args).arg("--tls").arg("--ca").arg(&ca.cert);
    if let Some(id) = identity {
        cmd.arg("--cert").arg(&id.cert).arg("--key").arg(&id.key);
    }
    cmd
}

#[test]
fn the_agent_runs_and_checks_over_mutual_tls() {
    let t = start("", Some(""));
    let server = t.d.addr("main").to_string();
    let alpha = t.pki.client(&t.client_ca, "alpha", "alpha", "", 30);
    let run =
        heartbeat_tls(&["run", "--server", &server, "--id", "alpha", "--log-level", "debug"], &t.ca, Some(&alpha));
    let agent = Proc::spawn("heartbeat run --tls", run, Output::Stderr);
    t.d.wait(ev("online").kv("client", "alpha"));
    agent.wait_next(" pong ", DEADLINE);

    let check = heartbeat_tls(&["check", "--server", &server, "--id", "alpha"], &t.ca, Some(&alpha));
    let out = { check }.output().expect("heartbeat check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.starts_with("healthy "), "{stdout}");

    // A CA that did not sign the daemon's certificate: refused in words.
    let wrong = heartbeat_tls(&["check", "--server", &server, "--id", "alpha"], &t.client_ca, Some(&alpha));
    let out = { wrong }.output().expect("heartbeat check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success() && stdout.contains("unknown CA"), "{stdout}");
    t.d.assert_none(ev("offline").kv("client", "alpha"));
}

#[test]
fn a_reload_with_a_broken_certificate_keeps_the_running_one() {
    let t = start("", None);
    let kept = py_client(t.d.addr("main"), &t.ca, None, "kept", 50);
    kept.wait_next(ev("welcome"), DEADLINE);
    std::fs::write(t.d.dir.join("server.pem"), "not a certificate\n").expect("break the cert");
    let mark = t.d.mark();
    t.d.signal(libc::SIGHUP);
    let failed = t.d.wait_from(mark, ev("reload-failed"), DEADLINE);
    assert!(failed.field("error").contains("listener[0].tls.cert"), "{}", failed.text);
    // The certificate loaded at start still serves new handshakes.
    let fresh = py_client(t.d.addr("main"), &t.ca, None, "fresh", 50);
    fresh.wait_next(ev("welcome"), DEADLINE);
    let pongs = kept.mark();
    kept.wait_from(pongs + 3, ev("pong"), DEADLINE);
    t.d.assert_none(ev("offline").kv("client", "kept"));
}

/// The daemon ends a TLS connection with a `close_notify` alert, so the
/// client can tell the end from a truncation: Python's `ssl` reads a clean
/// end (`recv` gives b"") rather than `UNEXPECTED_EOF_WHILE_READING`. Here
/// for a client replaced by a newer HELLO of its id (ERROR 6, then close).
#[test]
fn a_tls_connection_the_daemon_ends_ends_with_close_notify() {
    let t = start("", None);
    let first = py_client(t.d.addr("main"), &t.ca, None, "twin", 50);
    first.wait_next(ev("welcome"), DEADLINE);
    t.d.wait(ev("online").kv("client", "twin"));
    let second = py_client(t.d.addr("main"), &t.ca, None, "twin", 50);
    second.wait_next(ev("welcome"), DEADLINE);
    first.wait_next(ev("error").kv("code", 6), DEADLINE);
    let end = first.wait_next(When("tls-error or closed", |l: &Line| l.is("tls-error") || l.is("closed")), DEADLINE);
    assert!(end.is("closed"), "the replaced client saw no close_notify: {}", end.text);
}
