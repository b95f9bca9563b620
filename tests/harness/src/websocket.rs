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
