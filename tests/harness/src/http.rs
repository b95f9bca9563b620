//! The status API's side of the harness.
//!
//! Written from the routes table (`src/http/routes.rs`), the feed format
//! (`src/http/feed.rs`) and the Prometheus text format, not from the
//! daemon's code:
//!
//! - [`with_http`] adds an `[http]` table on 127.0.0.1 port 0 to a config;
//!   [`http_addr`] reads the bound address from the `http-listening` line.
//! - [`exchange`] / [`get`] make one HTTP/1.1 request over a raw socket and
//!   read the response to the close; [`Response`] is the parsed result.
//! - [`Sse`] is an event-stream client that parses `id:`/`event:`/`data:`
//!   and rejects any line the format does not allow.
//! - [`scrape`] parses `/metrics` with the `prometheus-parse` crate and
//!   also refuses any line that crate would silently skip.
//! - [`Canary`] is a native client pinging from its own thread, to show the
//!   daemon kept answering while a test abuses the HTTP side.
//! - [`Rtts`] summarises round-trip times (p50/p99/max).
//!
//! Every read has a deadline; a missed one fails the test.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use prometheus_parse::{LineInfo, Scrape, Value};

use crate::audit::ms;
use crate::daemon::Daemon;
use crate::native::{frame, read_some, End, NativeClient, PING, PONG};
use crate::DEADLINE;

/// `config_text` with an `[http]` table on 127.0.0.1, port 0, plus
/// `extra` lines inside that table.
pub fn with_http(config_text: &str, extra: &str) -> String {
    format!("{config_text}\n[http]\naddress = \"127.0.0.1:0\"\n{extra}\n")
}

/// The status API's address, from the daemon's `http-listening` line.
pub fn http_addr(d: &Daemon) -> SocketAddr {
    let line = d.wait("http-listening");
    let address = line.field("address");
    address.parse().unwrap_or_else(|e| panic!("`address={address}` is not a socket address ({e}): {line}"))
}

// ---------------------------------------------------------------------------
// Plain HTTP
// ---------------------------------------------------------------------------

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Header names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// Parses a whole response (head and body as received up to the close).
    /// Fails the test on anything that is not an HTTP/1.1 response.
    pub fn parse(bytes: &[u8]) -> Response {
        let end = find(bytes, b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no end of head in the response: {:?}", String::from_utf8_lossy(bytes)));
        let head = std::str::from_utf8(&bytes[..end]).expect("the response head is UTF-8");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().expect("a status line");
        let mut parts = status_line.splitn(3, ' ');
        assert_eq!(parts.next(), Some("HTTP/1.1"), "status line {status_line:?}");
        let status =
            parts.next().and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no status code in {status_line:?}"));
        let headers = lines
            .map(|l| {
                let (name, value) = l.split_once(':').unwrap_or_else(|| panic!("malformed header line {l:?}"));
                (name.trim().to_ascii_lowercase(), value.trim().to_owned())
            })
            .collect();
        Response { status, headers, body: bytes[end + 4..].to_vec() }
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; fails the test unless it is JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    /// Checks `Content-Length` against the body received.
    pub fn check_length(&self) {
        let declared: usize = self
            .header("content-length")
            .unwrap_or_else(|| panic!("no Content-Length: {:?}", self.headers))
            .parse()
            .expect("Content-Length is a number");
        assert_eq!(declared, self.body.len(), "Content-Length disagrees with the body: {:?}", self.headers);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// How reading a connection to its end went.
#[derive(Debug)]
pub enum Ending {
    /// FIN after the bytes.
    Closed,
    /// RST (or another error) after the bytes.
    Reset(io::Error),
    /// Still open at the deadline.
    Open,
}

/// Reads everything until the peer closes, an error, or `deadline`.
pub fn read_until_close(stream: &mut TcpStream, deadline: Instant) -> (Vec<u8>, Ending) {
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let now = Instant::now();
        if now >= deadline {
            return (out, Ending::Open);
        }
        stream.set_read_timeout(Some(deadline - now)).expect("setting a read timeout");
        match stream.read(&mut buf) {
            Ok(0) => return (out, Ending::Closed),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (out, Ending::Reset(e)),
        }
    }
}

/// Connects to the status API (a plain socket, no options).
pub fn connect_http(addr: SocketAddr) -> TcpStream {
    TcpStream::connect_timeout(&addr, DEADLINE).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"))
}

/// Sends `request` as it is and reads the response until the daemon closes
/// the connection (every response but `/events` closes).
pub fn exchange(addr: SocketAddr, request: &[u8]) -> Response {
    let mut stream = connect_http(addr);
    stream.write_all(request).unwrap_or_else(|e| panic!("sending a request to {addr}: {e}"));
    let (bytes, ending) = read_until_close(&mut stream, Instant::now() + DEADLINE);
    match ending {
        Ending::Closed => {}
        other => {
            panic!("expected the daemon to answer and close; got {other:?} after {:?}", String::from_utf8_lossy(&bytes))
        }
    }
    Response::parse(&bytes)
}

/// `GET path`.
pub fn get(addr: SocketAddr, path: &str) -> Response {
    exchange(addr, format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: heartbeatd-tests\r\n\r\n").as_bytes())
}

/// `GET path`, which must answer 200 with JSON.
pub fn get_json(addr: SocketAddr, path: &str) -> serde_json::Value {
    let r = get(addr, path);
    assert_eq!(r.status, 200, "GET {path}: {}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"), "GET {path}");
    r.check_length();
    r.json()
}

/// `GET /clients[...]` as an array of client objects.
pub fn clients(addr: SocketAddr, path: &str) -> Vec<serde_json::Value> {
    match get_json(addr, path) {
        serde_json::Value::Array(items) => items,
        other => panic!("GET {path}: expected a JSON array, got {other}"),
    }
}

/// The client in `list` with this session, if any.
pub fn by_session(list: &[serde_json::Value], session: u64) -> Option<&serde_json::Value> {
    list.iter().find(|c| c["session"].as_u64() == Some(session))
}

/// Percent-encodes every byte outside the URL path's unreserved set.
pub fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Server-Sent Events
// ---------------------------------------------------------------------------

/// One event of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub id: Option<u64>,
    pub event: String,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("event {:?} data is not JSON ({e}): {}", self.event, self.data))
    }

    /// The event's id, which must be present.
    pub fn id(&self) -> u64 {
        self.id.unwrap_or_else(|| panic!("event without an id: {self:?}"))
    }
}

/// A subscriber of `/events`.
pub struct Sse {
    pub stream: TcpStream,
    pub local: SocketAddr,
    /// The response head.
    pub head: Response,
    /// The last `retry:` value seen.
    pub retry: Option<u64>,
    /// Comment lines seen (`: keepalive`).
    pub comments: usize,
    buf: Vec<u8>,
}

impl Sse {
    /// Subscribes, sending `Last-Event-ID` when given, and checks the head.
    pub fn connect(addr: SocketAddr, last_event_id: Option<u64>) -> Sse {
        let stream = connect_http(addr);
        Sse::start(stream, addr, last_event_id)
    }

    /// Subscribes on an already connected socket.
    pub fn start(mut stream: TcpStream, addr: SocketAddr, last_event_id: Option<u64>) -> Sse {
        let resume = last_event_id.map(|id| format!("Last-Event-ID: {id}\r\n")).unwrap_or_default();
        let request = format!("GET /events HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n{resume}\r\n");
        stream.write_all(request.as_bytes()).expect("sending GET /events");
        let local = stream.local_addr().expect("the subscriber's local address");
        let mut sse = Sse {
            stream,
            local,
            head: Response::parse(b"HTTP/1.1 0 -\r\n\r\n"),
            retry: None,
            comments: 0,
            buf: Vec::new(),
        };
        let deadline = Instant::now() + DEADLINE;
        let end = loop {
            if let Some(end) = find(&sse.buf, b"\r\n\r\n") {
                break end;
            }
            sse.fill(deadline).unwrap_or_else(|end| panic!("GET /events: no response head ({end:?})"));
        };
        sse.head = Response::parse(&sse.buf[..end + 4]);
        sse.buf.drain(..end + 4);
        assert_eq!(sse.head.status, 200, "GET /events: {:?}", sse.head);
        assert_eq!(sse.head.header("content-type"), Some("text/event-stream"), "GET /events: {:?}", sse.head);
        assert_eq!(sse.head.header("content-length"), None, "an event stream has no length: {:?}", sse.head);
        sse
    }

    fn fill(&mut self, deadline: Instant) -> Result<(), End> {
        let mut chunk = [0u8; 8192];
        let n = read_some(&mut self.stream, &mut chunk, deadline)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// The next event (blocks without `data:` are not events: the opening
    /// `retry:` block), or how the stream ended, within `timeout`.
    pub fn next(&mut self, timeout: Duration) -> Result<SseEvent, End> {
        let deadline = Instant::now() + timeout;
        loop {
            while let Some(end) = find(&self.buf, b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                let block = String::from_utf8(block).expect("event-stream text is UTF-8");
                if let Some(event) = self.parse_block(block.trim_end_matches('\n')) {
                    return Ok(event);
                }
            }
            self.fill(deadline)?;
        }
    }

    fn parse_block(&mut self, block: &str) -> Option<SseEvent> {
        let (mut id, mut event, mut data) = (None, None, None::<String>);
        for line in block.split('\n') {
            if line.starts_with(':') {
                self.comments += 1;
                continue;
            }
            let (field, value) = line.split_once(": ").unwrap_or_else(|| panic!("malformed SSE line {line:?}"));
            match field {
                "id" => id = Some(value.parse().unwrap_or_else(|e| panic!("SSE id {value:?} is not a number: {e}"))),
                "event" => event = Some(value.to_owned()),
                "data" => {
                    assert!(data.is_none(), "the daemon sends one data line per event: {block:?}");
                    data = Some(value.to_owned());
                }
                "retry" => self.retry = Some(value.parse().expect("retry is a number")),
                other => panic!("unknown SSE field {other:?} in {block:?}"),
            }
        }
        let data = data?;
        let event = event.unwrap_or_else(|| panic!("every event of this feed is named: {block:?}"));
        Some(SseEvent { id, event, data })
    }

    /// The next event, which must come within [`DEADLINE`].
    pub fn expect(&mut self, what: &str) -> SseEvent {
        self.next(DEADLINE).unwrap_or_else(|end| panic!("subscriber {} expected {what}, got {end:?}", self.local))
    }

    /// The next event, which must be of kind `kind`.
    pub fn expect_kind(&mut self, kind: &str) -> SseEvent {
        let e = self.expect(kind);
        assert_eq!(e.event, kind, "subscriber {} expected a {kind} event, got {e:?}", self.local);
        e
    }

    /// The next event, which must be `kind` (`online`/`offline`) for `session`.
    pub fn expect_presence(&mut self, kind: &str, session: u64) -> SseEvent {
        let e = self.expect_kind(kind);
        assert_eq!(e.json()["session"].as_u64(), Some(session), "expected {kind} of session {session}: {e:?}");
        e
    }

    /// Fails the test if an event arrives within `duration`.
    pub fn expect_quiet(&mut self, duration: Duration) {
        match self.next(duration) {
            Err(End::Timeout) => {}
            Ok(e) => panic!("subscriber {} expected no event, got {e:?}", self.local),
            Err(end) => panic!("subscriber {} expected an open, quiet stream, got {end:?}", self.local),
        }
    }

    pub fn close(self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

// ---------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------

/// A parsed `/metrics` page.
pub struct Metrics {
    pub text: String,
    pub scrape: Scrape,
}

impl Metrics {
    /// The value of the sample `name` whose labels are exactly `labels`;
    /// fails the test if there is none.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.find(name, labels).unwrap_or_else(|| panic!("no sample {name}{labels:?} in\n{}", self.text))
    }

    pub fn find(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == name
                    && s.labels.len() == labels.len()
                    && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
            })
            .map(|s| match s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
                ref other => panic!("{name}: unexpected histogram/summary {other:?}"),
            })
    }
}

/// `GET /metrics`, parsed by `prometheus-parse`. That crate skips lines it
/// does not understand and samples whose value does not parse; this refuses
/// both, so a malformed line fails the test instead of vanishing.
pub fn scrape(addr: SocketAddr) -> Metrics {
    let r = get(addr, "/metrics");
    assert_eq!(r.status, 200, "GET /metrics: {}", r.text());
    let content_type = r.header("content-type").expect("a Content-Type on /metrics");
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "Content-Type of /metrics: {content_type}");
    r.check_length();
    let text = String::from_utf8(r.body).expect("/metrics is UTF-8");
    assert!(text.ends_with('\n'), "the exposition must end with a newline");
    let mut samples = 0;
    for line in text.lines() {
        match LineInfo::parse(line) {
            LineInfo::Sample { value, .. } => {
                samples += 1;
                assert!(value.parse::<f64>().is_ok(), "sample value {value:?} is not a number: {line:?}");
            }
            LineInfo::Doc { .. } | LineInfo::Type { .. } => {}
            LineInfo::Empty | LineInfo::Ignored => panic!("line not in the exposition format: {line:?}"),
        }
    }
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parsing /metrics");
    assert_eq!(scrape.samples.len(), samples, "the parser dropped samples of\n{text}");
    Metrics { text, scrape }
}

// ---------------------------------------------------------------------------
// Round-trip times
// ---------------------------------------------------------------------------

/// Round-trip times of PING/PONG.
#[derive(Debug, Clone, Default)]
pub struct Rtts(pub Vec<Duration>);

impl Rtts {
    /// Round-trips `count` PINGs on `client`, one after the other.
    pub fn measure(client: &mut NativeClient, count: usize) -> Rtts {
        let mut out = Vec::with_capacity(count);
        for i in 0..count {
            let payload = (i as u32).to_be_bytes();
            let t = Instant::now();
            client.round_trip(&payload);
            out.push(t.elapsed());
        }
        Rtts(out)
    }

    /// Round-trips PINGs back to back for `duration`, and at least `min`.
    pub fn measure_for(client: &mut NativeClient, duration: Duration, min: usize) -> Rtts {
        let until = Instant::now() + duration;
        let mut all = Rtts::measure(client, min);
        while Instant::now() < until {
            all.0.extend(Rtts::measure(client, 50).0);
        }
        all
    }

    fn sorted(&self) -> Vec<Duration> {
        let mut v = self.0.clone();
        v.sort();
        v
    }

    /// The `q` quantile (nearest rank), e.g. 0.99.
    pub fn quantile(&self, q: f64) -> Duration {
        let v = self.sorted();
        assert!(!v.is_empty(), "no round trips measured");
        let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
        v[rank - 1]
    }

    pub fn max(&self) -> Duration {
        self.0.iter().copied().max().expect("no round trips measured")
    }

    /// `n=200 p50=0.081ms p99=0.412ms max=0.950ms`.
    pub fn summary(&self) -> String {
        format!(
            "n={} p50={:.3}ms p99={:.3}ms max={:.3}ms",
            self.0.len(),
            ms(self.quantile(0.5)),
            ms(self.quantile(0.99)),
            ms(self.max())
        )
    }
}

// ---------------------------------------------------------------------------
// Canary
// ---------------------------------------------------------------------------

/// What a [`Canary`] saw.
#[derive(Debug)]
pub struct CanaryReport {
    pub rtts: Rtts,
    /// The first failure, if any (no PONG in time, a closed connection).
    pub failure: Option<String>,
}

/// A native client that round-trips a PING every `every` on its own thread
/// until [`Canary::finish`], which waits for one last round trip.
pub struct Canary {
    pub session: u64,
    pub id: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<CanaryReport>>,
}

impl Canary {
    pub fn start(addr: SocketAddr, id: &str, every: Duration) -> Canary {
        let (mut client, welcome) = NativeClient::handshake(addr, id, "");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = thread::Builder::new()
            .name(format!("canary-{id}"))
            .spawn(move || {
                let mut rtts = Vec::new();
                let mut n: u32 = 0;
                // Round trip first, then look at the flag: there is always
                // at least one round trip, and one after `finish` was asked.
                loop {
                    let stopping = flag.load(Ordering::Relaxed);
                    n = n.wrapping_add(1);
                    let payload = n.to_be_bytes();
                    let t = Instant::now();
                    if let Err(e) = client.try_send(&frame(PING, &payload)) {
                        return CanaryReport { rtts: Rtts(rtts), failure: Some(format!("sending PING {n}: {e}")) };
                    }
                    match client.read_frame(Duration::from_secs(2)) {
                        Ok(f) if f.ty == PONG && f.payload == payload => rtts.push(t.elapsed()),
                        Ok(f) => {
                            return CanaryReport {
                                rtts: Rtts(rtts),
                                failure: Some(format!("PING {n}: expected its PONG, got {f:?}")),
                            }
                        }
                        Err(end) => {
                            return CanaryReport { rtts: Rtts(rtts), failure: Some(format!("PING {n}: {end:?}")) }
                        }
                    }
                    if stopping {
                        break;
                    }
                    thread::sleep(every);
                }
                client.bye("canary done");
                CanaryReport { rtts: Rtts(rtts), failure: None }
            })
            .expect("spawning the canary thread");
        Canary { session: welcome.session, id: id.to_owned(), stop, thread: Some(thread) }
    }

    /// Stops the thread and returns what it saw; fails the test if any
    /// round trip failed.
    pub fn finish(mut self) -> CanaryReport {
        self.stop.store(true, Ordering::Relaxed);
        let report = self.thread.take().expect("finish once").join().expect("the canary thread panicked");
        if let Some(failure) = &report.failure {
            panic!("canary {} (session {}) failed: {failure}", self.id, self.session);
        }
        assert!(!report.rtts.0.is_empty(), "canary {} made no round trip", self.id);
        report
    }
}

impl Drop for Canary {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
