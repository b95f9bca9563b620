//! Rule R4 of issue 10, "a reload never convicts and never blocks":
//! config, drop-in and tokens files that are not regular files (a FIFO,
//! `/dev/zero`) are refused at once with an error naming the file, by
//! `--check-config` and by SIGHUP alike, while the loop keeps serving; and a
//! reload that shrinks a listener's timing convicts none of the clients that
//! follow the fresh WELCOME it sends.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use heartbeatd_harness::*;

/// How long a command that must not hang gets before the test fails.
const PROMPT: Duration = Duration::from_secs(5);

/// Address space the daemon may use in the `/dev/zero` cases: a daemon that
/// read the endless file would die here instead of exhausting the machine.
const ADDRESS_SPACE_KIB: u64 = 512 * 1024;

/// Makes a FIFO at `path` with mkfifo(1).
fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().expect("running mkfifo");
    assert!(status.success(), "mkfifo {}: {status}", path.display());
}

/// Runs `heartbeatd --check-config --config <config>` under an address-space
/// limit; fails the test (after killing it) if it does not exit within
/// [`PROMPT`].
fn check_config(config: &Path) -> Output {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -v {ADDRESS_SPACE_KIB} && exec \"$0\" --check-config --config \"$1\""))
        .arg(daemon_bin())
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning heartbeatd --check-config");
    let deadline = Instant::now() + PROMPT;
    while child.try_wait().expect("waiting for --check-config").is_none() {
        if Instant::now() >= deadline {
            reap(&mut child);
            panic!("--check-config --config {} did not exit within {PROMPT:?}", config.display());
        }
        thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("collecting --check-config output")
}

/// Asserts that `out` is a failed check whose stderr names `file` and says
/// `what`.
fn assert_refused(out: &Output, file: &Path, what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "--check-config accepted it: {stderr}");
    assert!(stderr.contains(&file.display().to_string()), "the error names {}: {stderr}", file.display());
    assert!(stderr.contains(what), "the error says {what:?}: {stderr}");
}

#[test]
fn check_config_refuses_a_fifo_tokens_file_at_once() {
    let dir = TempDir::new("fifo-tokens");
    let fifo = dir.join("tokens");
    mkfifo(&fifo);
    let config = dir.write("heartbeatd.toml", &config("100ms", "", &[native("main", "tokens_file = \"tokens\"")]));
    assert_refused(&check_config(&config), &fifo, "not a regular file (a FIFO)");
}

#[test]
fn check_config_refuses_a_fifo_config_and_drop_in_at_once() {
    let dir = TempDir::new("fifo-config");
    let fifo = dir.join("fifo.toml");
    mkfifo(&fifo);
    assert_refused(&check_config(&fifo), &fifo, "not a regular file (a FIFO)");

    let config = dir.write("heartbeatd.toml", &config("100ms", "", &[native("main", "")]));
    std::fs::create_dir(dir.join("conf.d")).expect("creating conf.d");
    let dropin = dir.join("conf.d/10-fifo.toml");
    mkfifo(&dropin);
    assert_refused(&check_config(&config), &dropin, "not a regular file");
}

#[test]
fn check_config_refuses_dev_zero_as_config_or_tokens_file() {
    let zero = Path::new("/dev/zero");
    assert_refused(&check_config(zero), zero, "not a regular file (a character device)");

    let dir = TempDir::new("zero-tokens");
    let config = dir.write("heartbeatd.toml", &config("100ms", "", &[native("main", "tokens_file = \"/dev/zero\"")]));
    assert_refused(&check_config(&config), zero, "not a regular file (a character device)");
}

#[test]
fn check_config_refuses_files_over_the_cap() {
    let dir = TempDir::new("big-files");
    let mut big = String::from("# padding\n");
    big.push_str(&"#".repeat(1 << 20));
    big.push('\n');
    let main = dir.write("big.toml", &big);
    assert_refused(&check_config(&main), &main, "larger than 1 MiB");

    let tokens = dir.write("tokens", &format!("token\n{big}"));
    let config = dir.write("heartbeatd.toml", &config("100ms", "", &[native("main", "tokens_file = \"tokens\"")]));
    assert_refused(&check_config(&config), &tokens, "larger than 1 MiB");
}

#[test]
fn sighup_with_a_fifo_tokens_file_keeps_serving() {
    let d = Daemon::start(&config("100ms", "", &[native("main", "interval = \"1s\"")]));
    let (mut c, _) = NativeClient::handshake(d.addr("main"), "fifo-hup", "");

    let fifo = d.dir.join("tokens");
    mkfifo(&fifo);
    let mark = d.mark();
    d.dir.write(
        "heartbeatd.toml",
        &config("100ms", "", &[native("main", "interval = \"1s\"\ntokens_file = \"tokens\"")]),
    );
    d.signal(libc::SIGHUP);

    // The loop answers at once: a reload that blocked on the FIFO would
    // leave this PING unanswered until someone wrote to it.
    c.ping(b"during reload");
    match c.read_frame(PROMPT) {
        Ok(f) => assert_eq!((f.ty, f.payload.as_slice()), (PONG, &b"during reload"[..]), "{f:?}"),
        Err(e) => panic!("no PONG within {PROMPT:?} after a SIGHUP with a FIFO tokens file: {e:?}"),
    }
    let failed = d.wait_from(mark, ev("reload-failed"), PROMPT);
    let error = failed.field("error");
    assert!(error.contains(&fifo.display().to_string()) && error.contains("not a regular file (a FIFO)"), "{failed}");
    c.round_trip(b"still online");
    d.assert_none(ev("offline"));
}

/// Clients following WELCOME on a listener whose timing a reload shrinks
/// (3 s / 15 s → 200 ms / 1 s).
const CLIENTS: usize = 24;

/// One client that follows WELCOME as PROTOCOL.md §1 says: PING every
/// interval of the last WELCOME, adopting a fresh WELCOME's interval at
/// once. Runs until `stop`; returns the WELCOMEs it got after its first.
fn follow(addr: SocketAddr, id: String, phase: Duration, start: &Barrier, stop: &AtomicBool) -> Vec<Welcome> {
    let (mut c, first) = NativeClient::handshake(addr, &id, "");
    start.wait();
    let mut interval = Duration::from_millis(u64::from(first.interval_ms));
    // Spread the clients over the old interval, so that at the reload their
    // silences range from nothing to almost 3 s, all within what they were
    // told.
    let mut next_ping = Instant::now() + phase;
    let mut fresh = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= next_ping {
            c.ping(b"");
            next_ping = now + interval;
        }
        let wait = next_ping.saturating_duration_since(Instant::now()).min(Duration::from_millis(50));
        match c.read_frame(wait) {
            Ok(f) if f.ty == WELCOME => {
                let w = f.welcome();
                interval = Duration::from_millis(u64::from(w.interval_ms));
                // Adopt the new interval at once.
                next_ping = next_ping.min(Instant::now() + interval);
                fresh.push(w);
            }
            Ok(f) if f.ty == PONG => {}
            Ok(f) => panic!("client {id}: unexpected {}", f.name()),
            Err(End::Timeout) => {}
            Err(e) => panic!("client {id} lost its connection: {e:?}"),
        }
    }
    fresh
}

#[test]
fn a_shrinking_reload_convicts_no_client_that_follows_welcome() {
    let before = native("main", "interval = \"3s\"\ntimeout = \"15s\"");
    let d = Daemon::start(&config("50ms", "", &[before]));
    let addr = d.addr("main");
    let start = Arc::new(Barrier::new(CLIENTS + 1));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (start, stop) = (Arc::clone(&start), Arc::clone(&stop));
            let phase = Duration::from_millis(3000 * i as u64 / CLIENTS as u64);
            thread::spawn(move || follow(addr, format!("shrink-{i}"), phase, &start, &stop))
        })
        .collect();
    start.wait();
    let online_by = Instant::now() + DEADLINE;
    while d.find_all(ev("online")).len() < CLIENTS {
        assert!(Instant::now() < online_by, "not every client online within {DEADLINE:?}");
        thread::sleep(Duration::from_millis(10));
    }
    // Phases are spread over 3 s: at 3.2 s every client has pinged once,
    // and their silences range over the whole old interval.
    thread::sleep(Duration::from_millis(3200));

    let mark = d.mark();
    d.dir.write("heartbeatd.toml", &config("50ms", "", &[native("main", "interval = \"200ms\"\ntimeout = \"1s\"")]));
    d.signal(libc::SIGHUP);
    d.wait_from(mark, ev("listener-updated").kv("listener", "main"), DEADLINE);
    // Three new timeouts: a client the reload convicted is offline by now.
    thread::sleep(Duration::from_secs(3));
    let false_timeouts = d.find_all(ev("offline").kv("reason", "timeout"));
    eprintln!("shrinking reload: {} of {CLIENTS} clients declared timeout", false_timeouts.len());
    assert!(false_timeouts.is_empty(), "healthy clients convicted by the reload: {false_timeouts:#?}");
    d.assert_none(ev("offline"));

    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let fresh = c.join().expect("a client thread failed");
        assert_eq!(fresh.len(), 1, "one fresh WELCOME per client: {fresh:?}");
        assert_eq!((fresh[0].interval_ms, fresh[0].timeout_ms), (200, 1000), "{fresh:?}");
    }
}
