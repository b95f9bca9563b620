//! The `heartbeat` command line as a user meets it: option names, exit
//! statuses and the messages of its failures.
//!
//! Each test runs the real binary to completion (with a deadline) against
//! a real daemon or a socket of the test's own, and pins the words a user
//! reads: which option to fix, which address timed out after how long,
//! which port is which.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant};

use heartbeatd_harness::http::{http_addr, with_http};
use heartbeatd_harness::{bin, config, native, run_agent, Daemon, DEADLINE};

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A daemon with one native listener `main` and the status API.
fn daemon_with_http() -> Daemon {
    let daemon = Daemon::start(&with_http(&config("20ms", "", &[native("main", "")]), ""));
    daemon.addr("main");
    http_addr(&daemon);
    daemon
}

/// A loopback port nothing listens on.
fn dead_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr")
}

// ---- one address scheme -------------------------------------------------

/// Every subcommand names the daemon's address `--server` (`-s`); for
/// `status` and `watch` it is the status API. The old `--http` still works
/// but is not advertised.
#[test]
fn every_subcommand_takes_server_and_http_is_a_hidden_alias() {
    for sub in ["run", "check", "status", "watch"] {
        let out = run_agent(&[sub, "--help"]);
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains("-s, --server <HOST:PORT>"), "{sub} --help:\n{help}");
        assert!(!help.contains("--http"), "{sub} --help advertises --http:\n{help}");
    }
    let help = String::from_utf8_lossy(&run_agent(&["status", "--help"]).stdout).into_owned();
    assert!(help.contains("[http]") && help.contains("127.0.0.1:7780"), "{help}");

    let daemon = daemon_with_http();
    let api = http_addr(&daemon).to_string();
    for spelling in ["--server", "-s", "--http"] {
        let out = run_agent(&["status", spelling, &api]);
        assert!(out.status.success(), "status {spelling} {api}: {}", stderr(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains("0 online"), "{spelling}");
        let out = run_agent(&["watch", spelling, &api, "--count", "0"]);
        assert!(out.status.success(), "watch {spelling} {api}: {}", stderr(&out));
    }
}

// ---- honest failures of `status` ------------------------------------------

/// A frozen daemon accepts (the kernel does) but never answers: `status`
/// says it timed out, after how long, at which address; not the errno text
/// of a read timeout ("Resource temporarily unavailable").
#[test]
fn status_against_a_frozen_daemon_says_it_timed_out() {
    let daemon = daemon_with_http();
    let api = http_addr(&daemon).to_string();
    daemon.signal(libc::SIGSTOP);
    let started = Instant::now();
    let out = run_agent(&["status", "--server", &api, "--timeout", "500ms"]);
    let took = started.elapsed();
    daemon.signal(libc::SIGCONT);
    let err = stderr(&out);
    println!("status (frozen, {} ms): {err}", took.as_millis());
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("timed out after 500ms"), "{err}");
    assert!(err.contains(&api), "{err}");
    assert!(!err.contains("Resource temporarily unavailable"), "{err}");
    assert!(took < Duration::from_secs(3), "status overran its timeout: {took:?}");
}

/// Pointed at a heartbeat listener, `status` does not print the frame
/// bytes it got: it says which port that is and where the API is.
#[test]
fn status_at_the_heartbeat_port_says_which_port_is_which() {
    let daemon = daemon_with_http();
    let heartbeat_port = daemon.addr("main").to_string();
    let out = run_agent(&["status", "--server", &heartbeat_port, "--timeout", "2s"]);
    let err = stderr(&out);
    println!("status at the heartbeat port: {err}");
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("this looks like heartbeatd's heartbeat port"), "{err}");
    assert!(err.contains("the status API is the [http] address"), "{err}");
    assert!(!err.contains("\\u{"), "raw frame bytes in the message: {err}");
}

/// Any other non-HTTP answer is named as such, with its first bytes
/// printable.
#[test]
fn status_at_a_non_http_port_says_it_is_not_http() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let server = thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        let mut buf = [0u8; 256];
        let _ = stream.read(&mut buf);
        let _ = stream.write_all(b"SSH-2.0-OpenSSH_9.2\r\n");
    });
    let out = run_agent(&["status", "--server", &addr, "--timeout", "2s"]);
    // If heartbeat never connected, this connection ends the accept, so the
    // test fails on its assertions instead of hanging.
    let _ = TcpStream::connect(&addr);
    server.join().expect("server thread");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("not an HTTP answer"), "{err}");
    assert!(err.contains("SSH-2.0"), "{err}");
}

// ---- arguments ------------------------------------------------------------

/// `--last-event-id` is an integer (the ids the feed sends); anything else
/// is a usage error, not silently ignored.
#[test]
fn watch_rejects_a_non_integer_last_event_id() {
    let out = run_agent(&["watch", "--server", &dead_port().to_string(), "--last-event-id", "abc"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--last-event-id") && err.contains("integer"), "{err}");
}

/// `run --help` promises exit status 2 for invalid arguments: the
/// arguments are checked before `starting` is logged, and each error names
/// what to fix.
#[test]
fn run_with_invalid_arguments_exits_2_before_starting() {
    let server = dead_port().to_string();
    let cases: [(&[&str], &str); 4] = [
        (&["--server", &server, "--id", "has space"], "id"),
        (&["--server", &server, "--id", ""], "id"),
        (&["--server", "no-port-here", "--id", "ok"], "HOST:PORT"),
        (&["--server", &server, "--id", "ok", "--backoff-base", "2s", "--backoff-cap", "1s"], "backoff"),
    ];
    for (args, names) in cases {
        let mut all = vec!["run"];
        all.extend_from_slice(args);
        let out = run_agent(&all);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "run {args:?}: {err}");
        assert!(!err.contains("starting"), "run {args:?} started before checking: {err}");
        assert!(err.contains(names), "run {args:?} does not name {names}: {err}");
        assert!(err.contains("heartbeat run --help"), "run {args:?}: {err}");
    }
    let help = String::from_utf8_lossy(&run_agent(&["run", "--help"]).stdout).into_owned();
    assert!(help.contains("2 for invalid arguments"), "{help}");
}

// ---- the log format -------------------------------------------------------

/// A log line's timestamp: `YYYY-MM-DDTHH:MM:SS.ffffffZ`, always 27
/// characters (microseconds, trailing zeros kept), so logs sort as text.
fn assert_fixed_width_stamp(line: &str) {
    let stamp = line.split(' ').next().unwrap_or_default();
    let b = stamp.as_bytes();
    let digits = |r: std::ops::Range<usize>| r.into_iter().all(|i| b.get(i).is_some_and(u8::is_ascii_digit));
    let shape = b.len() == 27
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b[19] == b'.'
        && digits(20..26)
        && b[26] == b'Z';
    assert!(shape, "timestamp {stamp:?} is not YYYY-MM-DDTHH:MM:SS.ffffffZ (27 characters): {line}");
}

/// Both binaries stamp every line with a fixed-width UTC time, and the
/// daemon's online line says `protocol=`, as the JSON and `watch` do.
#[test]
fn log_lines_have_fixed_width_stamps_and_say_protocol() {
    let daemon = Daemon::start(&config("20ms", "", &[native("main", "interval = \"50ms\"\nmisses = 3\n")]));
    let server = daemon.addr("main").to_string();
    let mut cmd = Command::new(bin("heartbeat"));
    cmd.args(["run", "--server", &server, "--id", "stamps", "--log-level", "debug"]);
    let agent = heartbeatd_harness::Proc::spawn("heartbeat[stamps]", cmd, heartbeatd_harness::Output::Stderr);
    agent.wait_next("connected ", DEADLINE);
    let online = daemon.wait(heartbeatd_harness::ev("online").kv("client", "stamps"));
    assert_eq!(online.field("protocol"), "native", "{online}");
    assert!(!online.text.contains(" proto="), "{online}");
    // Enough lines that some fall on a round microsecond count, whose
    // trailing zeros a variable-width format drops.
    for _ in 0..20 {
        agent.wait_next(" pong ", DEADLINE);
    }
    let lines: Vec<String> = daemon.lines().into_iter().chain(agent.lines()).map(|l| l.text).collect();
    for line in &lines {
        assert_fixed_width_stamp(line);
    }
    println!("{} lines, all 27-character stamps, e.g. {}", lines.len(), lines[0]);
}

// ---- exit statuses a service manager acts on ------------------------------

/// A refusal retrying cannot fix (ERROR 4, wrong token; ERROR 6, replaced)
/// exits 78 (EX_CONFIG), distinct from a crash (1) and a usage error (2),
/// so `heartbeat@.service` can set `RestartPreventExitStatus=` for it.
#[test]
fn a_fatal_refusal_exits_78() {
    let daemon = Daemon::start(&config("20ms", "", &[native("main", "tokens = [\"s3cret\"]\n")]));
    let server = daemon.addr("main").to_string();
    let out = run_agent(&["run", "--server", &server, "--id", "no-token"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(err.contains("authentication failed"), "{err}");
    let help = String::from_utf8_lossy(&run_agent(&["run", "--help"]).stdout).into_owned();
    assert!(help.contains("78 if the daemon refused the agent for good"), "{help}");
}

/// `--token-file` naming a FIFO is refused at once, as the daemon refuses
/// one for its `tokens_file`: the agent does not wait for a writer.
#[test]
fn a_fifo_token_file_is_refused_at_once() {
    let dir = heartbeatd_harness::TempDir::new("cli-fifo");
    let fifo = dir.path().join("token");
    let status = Command::new("mkfifo").arg(&fifo).status().expect("running mkfifo");
    assert!(status.success(), "mkfifo {}: {status}", fifo.display());
    let out = run_agent(&[
        "check",
        "--server",
        &dead_port().to_string(),
        "--id",
        "dev-1",
        "--token-file",
        fifo.to_str().expect("utf-8 path"),
    ]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("reading token file") && err.contains("not a regular file (a FIFO)"), "{err}");
}
