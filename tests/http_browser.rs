//! The dashboard in a real browser: headless Chromium (Debian's `chromium`)
//! driven over the DevTools protocol opens `GET /`, and the page shows what
//! the daemon knows, live: clients already online (the feed's snapshot), a
//! native client's row appearing when it connects and its RTT arriving from
//! `/clients`, "last seen" ticking between events, per-listener counts, and
//! when the client is dropped its row going and its offline event showing
//! with the reason, and the feed's state turning to `reconnecting` when
//! the daemon stops. Until its first data arrives the page says it is
//! loading rather than claiming "0 online" or "no offline events" (checked
//! with the data URLs blocked); each listener shows its interval and
//! timeout and its offline count is labelled as events; a client silent
//! for more than one interval is marked late, and unmarked once it beats.
//! Screenshots (desktop and phone width) are saved under
//! `target/test-artifacts/` for a person to look at.
//!
//! Without Chromium the test says `skipped` and passes, except under
//! `CI=true`, where it fails (`.ci/setup` installs `chromium`).

use std::io;
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use heartbeatd_harness::http::*;
use heartbeatd_harness::*;
use serde_json::{json, Value as Json};
use tungstenite::{Message, WebSocket};

/// How long the browser gets to start and to show each change.
const BROWSER_DEADLINE: Duration = Duration::from_secs(15);

/// The Chromium binary on PATH, if any.
fn find_chromium() -> Option<PathBuf> {
    which("chromium").or_else(|| which("chromium-browser"))
}

/// A headless Chromium in its own process group, with a fresh profile in a
/// temp dir; the whole group is killed on drop.
struct Chromium {
    /// The browser, its stderr followed (for the DevTools address and for
    /// failure messages).
    proc: Proc,
    /// The browser's DevTools websocket.
    ws_url: String,
    _profile: TempDir,
}

impl Chromium {
    fn launch(bin: &Path) -> Chromium {
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
struct Cdp {
    ws: WebSocket<TcpStream>,
    next_id: u64,
    session: Option<String>,
    /// `Runtime.exceptionThrown` and console errors seen so far.
    page_errors: Vec<String>,
}

impl Cdp {
    fn connect(ws_url: &str) -> Cdp {
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
    fn call(&mut self, method: &str, params: Json) -> Json {
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
    fn open(&mut self, url: &str, width: u32, height: u32, blocked: &[&str]) -> String {
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
    fn close(&mut self, target_id: &str) {
        self.session = None;
        self.call("Target.closeTarget", json!({ "targetId": target_id }));
    }

    fn viewport(&mut self, width: u32, height: u32, scale: f64, mobile: bool) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": scale, "mobile": mobile }),
        );
    }

    /// Evaluates `expression` in the page and returns its value (JSON).
    fn eval(&mut self, expression: &str) -> Json {
        let result = self.call("Runtime.evaluate", json!({ "expression": expression, "returnByValue": true }));
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("evaluating {expression}: {exception}");
        }
        result["result"]["value"].clone()
    }

    /// Polls `expression` until it yields something other than null/false,
    /// and returns it; fails with `what` and the page's state otherwise.
    fn wait_for(&mut self, what: &str, expression: &str) -> Json {
        let deadline = Instant::now() + BROWSER_DEADLINE;
        loop {
            let value = self.eval(expression);
            if !value.is_null() && value != json!(false) {
                return value;
            }
            if Instant::now() >= deadline {
                let page = self.eval("document.querySelector('main')?.innerText");
                let state = self.eval("document.getElementById('feed-state')?.dataset.state");
                panic!("the page never showed {what} within {BROWSER_DEADLINE:?}\nfeed: {state}\npage text:\n{page}");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// A PNG of the page's viewport.
    fn screenshot(&mut self) -> Vec<u8> {
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png" }));
        let data = shot["data"].as_str().expect("screenshot data");
        data_encoding::BASE64.decode(data.as_bytes()).expect("screenshot data is base64")
    }
}

/// `target/test-artifacts/` (next to the target dir's `tmp/`).
fn artifacts_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().expect("target dir").join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    dir
}

fn save(name: &str, png: &[u8]) -> PathBuf {
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{name}: not a PNG");
    let path = artifacts_dir().join(name);
    std::fs::write(&path, png).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    println!("screenshot: {}", path.display());
    path
}

/// JS: the text of `field` in the row of `session`, or null.
fn cell_js(session: u64, field: &str) -> String {
    format!(
        "(() => {{ const td = document.querySelector('#clients tr[data-session=\"{session}\"] \
         td[data-field=\"{field}\"]'); return td ? td.textContent : null; }})()"
    )
}

#[test]
fn the_dashboard_shows_clients_come_and_go_live() {
    let Some(chromium) = find_chromium() else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("chromium is not installed, and CI=true requires this test to run (.ci/setup installs it)");
        }
        println!("skipped: chromium not installed (apt-get install chromium, or run .ci/setup as root)");
        return;
    };
    let began = Instant::now();
    let patient = "interval = \"5s\"\nmisses = 3";
    let listeners = [native("main", patient), legacy("sensors", patient), native("spare", patient)];
    let d = Daemon::start(&with_http(&config("10ms", "", &listeners), ""));
    let (http, main, sensors) = (http_addr(&d), d.addr("main"), d.addr("sensors"));

    // Online before the page opens: they come from the feed's snapshot.
    let (mut kitchen, kitchen_w) = NativeClient::handshake(main, "kitchen-sensor", "");
    let (mut door, door_w) = NativeClient::handshake(main, "front-door", "");
    let legacy = PlainClient::connect(sensors);
    d.wait(ev("online").kv("peer", legacy.local));
    // One that already left: the page reads it back from the feed's history.
    let (mut gone, gone_w) = NativeClient::handshake(main, "garage-gate", "");
    gone.bye("maintenance");
    d.wait(ev("offline").kv("session", gone_w.session));

    let browser = Chromium::launch(&chromium);
    let mut page = Cdp::connect(&browser.ws_url);

    // Before any data arrives (the data URLs blocked), the page says it is
    // loading: no "0" and no "nothing went offline" it does not know yet.
    let blank = page.open(&format!("http://{http}/"), 1200, 860, &["*/events*", "*/clients*", "*/metrics*"]);
    thread::sleep(Duration::from_millis(300));
    let loading = page.eval(
        "[document.getElementById('online-count').textContent, document.getElementById('no-clients').textContent, \
          document.getElementById('no-offline').textContent, document.querySelector('main').dataset.loading, \
          document.getElementById('no-offline').hidden]",
    );
    assert_eq!(loading[0], json!("–"), "no count before the snapshot: {loading}");
    let text = |i: usize| loading[i].as_str().unwrap_or_default().to_owned();
    assert!(text(1).starts_with("Loading"), "the clients table says it is loading: {loading}");
    assert!(text(2).starts_with("Loading"), "the offline list says it is loading: {loading}");
    assert_eq!(loading[3], json!("true"), "main[data-loading]: {loading}");
    assert_eq!(loading[4], json!(false), "the offline placeholder shows (as loading): {loading}");
    save("dashboard-loading.png", &page.screenshot());
    page.close(&blank);

    page.open(&format!("http://{http}/"), 1200, 860, &[]);
    page.wait_for("the feed connected", "document.getElementById('feed-state').dataset.state === 'live'");
    page.wait_for(
        "the snapshot's clients",
        &format!(
            "document.querySelectorAll('#clients tr[data-session=\"{}\"], #clients tr[data-session=\"{}\"]').length === 2",
            kitchen_w.session, door_w.session
        ),
    );
    let client = page.eval(&cell_js(kitchen_w.session, "client"));
    assert!(client.as_str().is_some_and(|t| t.starts_with("kitchen-sensor")), "client cell: {client}");
    page.wait_for(
        "the earlier departure, read back from the feed's history",
        &format!(
            "!!document.querySelector('#offline-events li[data-session=\"{}\"][data-reason=\"left\"]')",
            gone_w.session
        ),
    );

    // A native client connects: its row appears, then its RTT from /clients.
    let (mut dev, dev_w) = NativeClient::handshake(main, "dev-42", "");
    let row = format!("#clients tr[data-session=\"{}\"]", dev_w.session);
    page.wait_for("dev-42's row", &format!("document.querySelector('{row}')?.dataset.client === 'dev-42'"));
    for i in 0..3u8 {
        dev.round_trip(&[i]);
    }
    let rtt = page.wait_for(
        "dev-42's RTT",
        &format!("(() => {{ const t = {}; return t && t !== '–' ? t : null; }})()", cell_js(dev_w.session, "rtt")),
    );
    assert!(rtt.as_str().is_some_and(|t| t.ends_with("µs") || t.ends_with("ms")), "RTT cell: {rtt}");
    assert_eq!(page.eval(&format!("document.querySelector('{row}').dataset.late")), json!("false"), "dev-42 beats");
    page.wait_for(
        "3 online on main",
        "document.querySelector('#listeners li[data-listener=\"main\"]')?.dataset.online === '3'",
    );
    page.wait_for(
        "the idle listener, from /metrics",
        "document.querySelector('#listeners li[data-listener=\"spare\"]')?.dataset.online === '0'",
    );
    assert_eq!(page.eval("document.getElementById('online-count').textContent"), json!("4"));
    assert_eq!(page.eval("document.querySelector('main').dataset.loading"), json!("false"));
    assert_eq!(page.eval("document.getElementById('no-offline').hidden"), json!(true), "offline events are listed");

    // Each listener shows its interval and timeout (from /metrics), and its
    // offline number says it counts events, not clients.
    let timing = page.wait_for(
        "main's interval and timeout",
        "document.querySelector('#listeners li[data-listener=\"main\"] [data-field=\"timing\"]')?.textContent",
    );
    assert_eq!(timing, json!("every 5s · offline after 15s"), "main's timing");
    let nums = page.eval("document.querySelector('#listeners li[data-listener=\"main\"] .nums').textContent");
    assert!(nums.as_str().is_some_and(|t| t.contains("offline events")), "main's counts: {nums}");

    // "Last seen" ticks in the page between events.
    let seen = page.eval(&cell_js(door_w.session, "last-seen"));
    page.wait_for(
        "'last seen' to tick",
        &format!("(() => {{ const t = {}; return t !== {seen} ? t : null; }})()", cell_js(door_w.session, "last-seen")),
    );

    // dev-42 is dropped (RST): its row goes, its offline event shows why.
    dev.reset();
    page.wait_for("dev-42's row to go", &format!("!document.querySelector('{row}')"));
    let offline = format!("#offline-events li[data-session=\"{}\"]", dev_w.session);
    let reason =
        page.wait_for("dev-42's offline event", &format!("document.querySelector('{offline}')?.dataset.reason"));
    assert_eq!(reason, json!("reset"), "the offline reason shown for dev-42");
    let text = page.eval(&format!("document.querySelector('{offline}').textContent"));
    assert!(text.as_str().is_some_and(|t| t.contains("dev-42") && t.contains("reset")), "offline entry: {text}");
    page.wait_for(
        "2 online on main",
        "document.querySelector('#listeners li[data-listener=\"main\"]')?.dataset.online === '2'",
    );

    // Silent for more than one interval (5s): marked late; after a
    // heartbeat, unmarked within a refresh (every second).
    let door_row = format!("#clients tr[data-session=\"{}\"]", door_w.session);
    page.wait_for("front-door marked late", &format!("document.querySelector('{door_row}')?.dataset.late === 'true'"));
    let seen = page.eval(&cell_js(door_w.session, "last-seen"));
    assert!(seen.as_str().is_some_and(|t| t.contains("late")), "the late client's last-seen cell says so: {seen}");

    // Keep the others alive for the pictures, then take them.
    kitchen.round_trip(b"k");
    door.round_trip(b"d");
    let began_beat = Instant::now();
    page.wait_for("front-door unmarked", &format!("document.querySelector('{door_row}')?.dataset.late === 'false'"));
    assert!(began_beat.elapsed() < Duration::from_secs(3), "unmarked {:?} after its heartbeat", began_beat.elapsed());
    page.wait_for(
        "RTTs for all",
        "[...document.querySelectorAll('#clients td[data-field=\"rtt\"]')].every(td => td.textContent !== '–')",
    );
    let desktop = save("dashboard.png", &page.screenshot());
    page.viewport(390, 844, 2.0, true);
    page.wait_for("the phone layout", "getComputedStyle(document.querySelector('#clients thead')).display === 'none'");
    // The whole page, as if scrolled through: a viewport as tall as it.
    let height = page.eval("document.documentElement.scrollHeight").as_u64().expect("a page height");
    page.viewport(390, u32::try_from(height).expect("height fits u32"), 2.0, true);
    save("dashboard-phone.png", &page.screenshot());

    assert!(page.page_errors.is_empty(), "the page logged errors: {:#?}", page.page_errors);
    d.assert_none(ev("offline").kv("session", kitchen_w.session));

    // The daemon goes away: the page says its feed is reconnecting.
    drop(d);
    page.wait_for("the feed reconnecting", "document.getElementById('feed-state').dataset.state === 'reconnecting'");
    println!("browser test done in {:?}; look at {}", began.elapsed(), desktop.display());
}

/// With `[http] token_file` the page (served without the token) takes the
/// token from its fragment, drops it from the address bar, and shows the
/// clients through the locked API: /clients and /metrics with the bearer
/// header, the feed with `?access_token=`.
#[test]
fn the_dashboard_works_with_a_locked_api() {
    let Some(chromium) = find_chromium() else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("chromium is not installed, and CI=true requires this test to run (.ci/setup installs it)");
        }
        println!("skipped: chromium not installed (apt-get install chromium, or run .ci/setup as root)");
        return;
    };
    let dir = TempDir::new("dashboard-token");
    dir.write("api-token", "dash-s3cret\n");
    let text = with_http(
        &config("10ms", "", &[native("main", "interval = \"5s\"\nmisses = 3")]),
        "token_file = \"api-token\"",
    );
    let path = dir.write("heartbeatd.toml", &text);
    let d = Daemon::start_in(dir, path);
    let (http, main) = (http_addr(&d), d.addr("main"));
    let (_kitchen, kitchen_w) = NativeClient::handshake(main, "kitchen-sensor", "");
    assert_eq!(get(http, "/clients").status, 401, "the API is locked");

    let browser = Chromium::launch(&chromium);
    let mut page = Cdp::connect(&browser.ws_url);
    page.open(&format!("http://{http}/healthz"), 1200, 860, &[]);
    page.call("Page.navigate", json!({ "url": format!("http://{http}/#token=dash-s3cret") }));
    page.wait_for(
        "the page loaded, the token gone from its address",
        "location.pathname === '/' && location.hash === '' && document.readyState === 'complete'",
    );
    page.wait_for("the feed connected", "document.getElementById('feed-state').dataset.state === 'live'");
    page.wait_for(
        "kitchen-sensor's row",
        &format!("document.querySelector('#clients tr[data-session=\"{}\"]')?.dataset.client", kitchen_w.session),
    );
    let rtt = page.wait_for(
        "kitchen-sensor's RTT, from /clients",
        &format!("(() => {{ const t = {}; return t && t !== '–' ? t : null; }})()", cell_js(kitchen_w.session, "rtt")),
    );
    assert!(rtt.as_str().is_some_and(|t| t.ends_with("µs") || t.ends_with("ms")), "RTT cell: {rtt}");
    page.wait_for(
        "main's timing, from /metrics",
        "document.querySelector('#listeners li[data-listener=\"main\"] [data-field=\"timing\"]')?.textContent",
    );
    assert!(page.page_errors.is_empty(), "the page logged errors: {:#?}", page.page_errors);
    save("dashboard-token.png", &page.screenshot());
}
