//! Headless Chromium (Debian's `chromium`) driven over the DevTools
//! protocol: the dashboard test and the WebSocket browser tests use it.
//!
//! [`Chromium`] is the browser in its own process group with a fresh
//! profile (the whole group is killed on drop, and can be stopped or
//! killed on purpose: [`Chromium::signal_group`]); [`Cdp`] is one DevTools
//! connection attached to one page at a time.

use std::io;
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};
use tungstenite::{Message, WebSocket};

use crate::{which, Output, Proc, TempDir};

/// How long the browser gets to start and to show each change.
pub const BROWSER_DEADLINE: Duration = Duration::from_secs(15);

/// The Chromium binary on PATH, if any.
pub fn find_chromium() -> Option<PathBuf> {
    which("chromium").or_else(|| which("chromium-browser"))
}

/// A headless Chromium in its own process group, with a fresh profile in a
/// temp dir; the whole group is killed on drop.
pub struct Chromium {
    /// The browser, its stderr followed (for the DevTools address and for
    /// failure messages).
    pub proc: Proc,
    /// The browser's DevTools websocket.
    pub ws_url: String,
    _profile: TempDir,
}

impl Chromium {
    /// Starts the browser on `about:blank` and waits for its DevTools
    /// address.
    pub fn launch(bin: &Path) -> Chromium {
        let profile = TempDir::new("chromium");
        let mut command = Command::new(bin);
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-quic",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--mute-audio",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .process_group(0);
        let proc = Proc::spawn("chromium", command, Output::Stderr);
        let marker = "DevTools listening on ";
        let line = proc.wait_from(0, marker, BROWSER_DEADLINE);
        let ws_url = line.text.split(marker).nth(1).unwrap_or_default().trim().to_owned();
        Chromium { proc, ws_url, _profile: profile }
    }
}

impl Chromium {
    /// Sends `signal` to the browser's whole process group (its renderer
    /// and network processes too).
    pub fn signal_group(&self, signal: i32) {
        // SAFETY: kill(2) on the process group this harness created for
        // the browser (process_group(0) made its pid the group id); the
        // child is not reaped before the `Proc` drops, so the id is ours.
        unsafe {
            libc::kill(-self.proc.pid, signal);
        }
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group this test created for the
        // browser (process_group(0) made its pid the group id); the child
        // is not reaped before the `Proc` drops, after this, so the id is
        // still ours.
        unsafe {
            libc::kill(-self.proc.pid, libc::SIGKILL);
        }
    }
}

/// A DevTools protocol connection, attached to one page (flat sessions).
pub struct Cdp {
    ws: WebSocket<TcpStream>,
    next_id: u64,
    pub session: Option<String>,
    /// `Runtime.exceptionThrown` and console errors seen so far.
    pub page_errors: Vec<String>,
}

impl Cdp {
    pub fn connect(ws_url: &str) -> Cdp {
        let authority = ws_url
            .strip_prefix("ws://")
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_else(|| panic!("unexpected DevTools address {ws_url}"));
        let stream = TcpStream::connect(authority).unwrap_or_else(|e| panic!("connecting to {authority}: {e}"));
        stream.set_read_timeout(Some(BROWSER_DEADLINE)).expect("setting a read timeout");
        let (ws, _) =
            tungstenite::client(ws_url, stream).unwrap_or_else(|e| panic!("websocket handshake with {ws_url}: {e}"));
        Cdp { ws, next_id: 1, session: None, page_errors: Vec::new() }
    }

    /// Sends a command (to the attached page, if any) and waits for its
    /// result, noting page errors among the events that arrive meanwhile.
    pub fn call(&mut self, method: &str, params: Json) -> Json {
        let id = self.next_id;
        self.next_id += 1;
        let mut command = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = &self.session {
            command["sessionId"] = json!(session);
        }
        self.ws.send(Message::text(command.to_string())).unwrap_or_else(|e| panic!("sending {method}: {e}"));
        let deadline = Instant::now() + BROWSER_DEADLINE;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            assert!(!remaining.is_zero(), "no answer to {method} within {BROWSER_DEADLINE:?}");
            self.ws.get_mut().set_read_timeout(Some(remaining)).expect("setting a read timeout");
            let message = match self.ws.read() {
                Ok(m) => m,
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) =>
                {
                    continue
                }
                Err(e) => panic!("reading the answer to {method}: {e}"),
            };
            let Message::Text(text) = message else { continue };
            let reply: Json = serde_json::from_str(text.as_str()).expect("DevTools messages are JSON");
            if reply["id"].as_u64() == Some(id) {
                if let Some(error) = reply.get("error") {
                    panic!("{method} failed: {error}");
                }
                return reply["result"].clone();
            }
            self.note_event(&reply);
        }
    }

    fn note_event(&mut self, event: &Json) {
        match event["method"].as_str() {
            Some("Runtime.exceptionThrown") => self.page_errors.push(event["params"]["exceptionDetails"].to_string()),
            Some("Runtime.consoleAPICalled") if event["params"]["type"] == "error" => {
                self.page_errors.push(event["params"]["args"].to_string())
            }
            _ => {}
        }
    }

    /// Opens a new page on `url` and attaches to it; requests to URLs
    /// matching `blocked` (DevTools patterns, `*` wildcards) fail. Returns
    /// the page's target id.
    pub fn open(&mut self, url: &str, width: u32, height: u32, blocked: &[&str]) -> String {
        let target = self.call("Target.createTarget", json!({ "url": "about:blank" }));
        let target_id = target["targetId"].as_str().expect("a targetId").to_owned();
        let attached = self.call("Target.attachToTarget", json!({ "targetId": target_id, "flatten": true }));
        self.session = Some(attached["sessionId"].as_str().expect("a sessionId").to_owned());
        self.call("Runtime.enable", json!({}));
        if !blocked.is_empty() {
            self.call("Network.enable", json!({}));
            self.call("Network.setBlockedURLs", json!({ "urls": blocked }));
        }
        self.viewport(width, height, 1.0, false);
        self.call("Page.navigate", json!({ "url": url }));
        // Page.navigate answers once the navigation starts; until the new
        // document has loaded, evaluations still run in about:blank.
        let loaded = format!("location.href === {} && document.readyState === 'complete'", json!(url));
        self.wait_for(&format!("{url} loaded"), &loaded);
        target_id
    }

    /// Closes a page opened by [`Cdp::open`]; commands then go to the
    /// browser until the next `open`.
    pub fn close(&mut self, target_id: &str) {
        self.session = None;
        self.call("Target.closeTarget", json!({ "targetId": target_id }));
    }

    pub fn viewport(&mut self, width: u32, height: u32, scale: f64, mobile: bool) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": scale, "mobile": mobile }),
        );
    }

    /// Evaluates `expression` in the page and returns its value (JSON).
    pub fn eval(&mut self, expression: &str) -> Json {
        let result = self.call("Runtime.evaluate", json!({ "expression": expression, "returnByValue": true }));
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("evaluating {expression}: {exception}");
        }
        result["result"]["value"].clone()
    }

    /// Polls `expression` until it yields something other than null/false,
    /// and returns it; fails with `what` and the page's state otherwise.
    pub fn wait_for(&mut self, what: &str, expression: &str) -> Json {
        let deadline = Instant::now() + BROWSER_DEADLINE;
        loop {
            let value = self.eval(expression);
            if !value.is_null() && value != json!(false) {
                return value;
            }
            if Instant::now() >= deadline {
                let page = self.eval("document.body?.innerText");
                let title = self.eval("document.title");
                panic!("the page never showed {what} within {BROWSER_DEADLINE:?}\ntitle: {title}\npage text:\n{page}");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// A PNG of the page's viewport.
    pub fn screenshot(&mut self) -> Vec<u8> {
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png" }));
        let data = shot["data"].as_str().expect("screenshot data");
        data_encoding::BASE64.decode(data.as_bytes()).expect("screenshot data is base64")
    }
}

/// [`find_chromium`], or `None` after saying `skipped`; under `CI=true` a
/// missing browser fails the test instead (`.ci/setup` installs it).
pub fn chromium_or_skip() -> Option<PathBuf> {
    let found = find_chromium();
    if found.is_none() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("chromium is not installed, and CI=true requires this test to run (.ci/setup installs it)");
        }
        println!("skipped: chromium not installed (apt-get install chromium, or run .ci/setup as root)");
    }
    found
}
