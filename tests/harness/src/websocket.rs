//! WebSocket clients that are not ours: Python's `websockets` library (a
//! second independent implementation of RFC 6455) driven by a small
//! script, and the checks that tell whether it is installed.
//!
//! The script connects to the URL it is given with its own pings off (so
//! only the daemon's Pings and the library's automatic Pongs flow), prints
//! `open` once upgraded, and then, by mode: `close` sends a Close (1000)
//! and prints `closed`; `hold` waits until the server closes and prints
//! `server-closed <code>`; `send` sends three text messages first, then
//! holds. A refused upgrade prints `refused <status>`.

use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The client script run by [`python_client`].
pub const PY_CLIENT: &str = r#"
import asyncio, sys
import websockets

async def main(url, mode):
    try:
        ws = await websockets.connect(url, ping_interval=None, close_timeout=2, open_timeout=10)
    except websockets.exceptions.InvalidStatus as e:
        print("refused", e.response.status_code, flush=True)
        return
    print("open", flush=True)
    if mode == "close":
        await ws.close(code=1000, reason="bye")
        print("closed", flush=True)
        return
    if mode == "send":
        for i in range(3):
            await ws.send("message %d" % i)
    await ws.wait_closed()
    print("server-closed", ws.close_code, flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"#;

/// A `python3` on PATH that imports `websockets` (`.ci/setup` installs it),
/// or `None`.
pub fn python_websockets() -> Option<PathBuf> {
    let python = crate::which("python3")?;
    let ok = Command::new(&python)
        .args(["-c", "import websockets"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(python)
}

/// [`python_websockets`], or `None` after saying `skipped` when it is
/// missing; under `CI=true` a missing library fails the test instead.
pub fn python_websockets_or_skip() -> Option<PathBuf> {
    let found = python_websockets();
    if found.is_none() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("python3 with websockets is missing, and CI=true requires this test to run (.ci/setup installs it)");
        }
        println!("skipped: python3 -m pip install websockets (or run .ci/setup as root)");
    }
    found
}

/// The command running [`PY_CLIENT`] on `url` in `mode`, unbuffered.
pub fn python_client(python: &PathBuf, url: &str, mode: &str) -> Command {
    let mut command = Command::new(python);
    command.args(["-u", "-c", PY_CLIENT, url, mode]);
    command
}

/// A minimal WebSocket client written from RFC 6455 (not from the daemon's
/// code): the upgrade, then it answers the daemon's Pings with masked
/// Pongs. For fault scenarios, where it must run inside a network
/// namespace and say exactly when it last answered.
pub struct WsClient {
    pub stream: std::net::TcpStream,
    /// This side's address (the daemon logs it as `peer`).
    pub local: std::net::SocketAddr,
    /// The instant just before the last Pong was written.
    pub last_sent: std::time::Instant,
}

impl WsClient {
    /// Connects to `addr` and upgrades with `?id=<id>`; fails the test on
    /// anything but `101`.
    pub fn connect(addr: std::net::SocketAddr, id: &str) -> WsClient {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream.set_nodelay(true).expect("nodelay");
        stream.set_read_timeout(Some(crate::DEADLINE)).expect("read timeout");
        let request = format!(
            "GET /?id={id} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).expect("write the upgrade");
        let mut answer = Vec::new();
        let mut byte = [0];
        while !answer.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).expect("read the upgrade's answer");
            answer.push(byte[0]);
        }
        assert!(answer.starts_with(b"HTTP/1.1 101 "), "{}", String::from_utf8_lossy(&answer));
        let local = stream.local_addr().expect("local address");
        WsClient { stream, local, last_sent: std::time::Instant::now() }
    }

    /// Reads the daemon's frames for `duration`, answering each Ping with
    /// a masked Pong; returns the Pings answered.
    pub fn answer_pings_for(&mut self, duration: std::time::Duration) -> usize {
        let until = std::time::Instant::now() + duration;
        let mut answered = 0;
        while self.answer_next_ping(until) {
            answered += 1;
        }
        answered
    }

    /// Reads until the daemon's next Ping and answers it at once (then
    /// `last_sent` is that Pong); false if none came before `until`.
    /// Fails on a Close or a broken stream.
    pub fn answer_next_ping(&mut self, until: std::time::Instant) -> bool {
        use std::io::{Read, Write};
        loop {
            let left = until.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            self.stream.set_read_timeout(Some(left)).expect("read timeout");
            let mut header = [0; 2];
            match self.stream.read_exact(&mut header) {
                Ok(()) => {}
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    return false
                }
                Err(e) => panic!("reading a frame: {e}"),
            }
            // The daemon's frames are unmasked and small (control frames).
            let mut payload = vec![0; usize::from(header[1] & 0x7F)];
            self.stream.read_exact(&mut payload).expect("a frame's payload");
            match header[0] & 0x0F {
                0x9 => {
                    let mask = [0x5a, 0x17, 0xc3, 0x08];
                    // A Ping's payload is at most 125 bytes.
                    let mut pong = vec![0x8A, 0x80 | payload.len() as u8];
                    pong.extend_from_slice(&mask);
                    pong.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
                    self.last_sent = std::time::Instant::now();
                    self.stream.write_all(&pong).expect("write a Pong");
                    return true;
                }
                0x8 => panic!("the daemon closed: {payload:?}"),
                _ => {}
            }
        }
    }
}
