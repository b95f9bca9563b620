//! Reading a daemon's status API from the command line: the online clients
//! (`heartbeat status`) and the live event feed (`heartbeat watch`).
//!
//! A deliberately small HTTP/1.1 client over a blocking `TcpStream`: one
//! GET per connection (`Connection: close`), which is all the daemon's API
//! speaks; over TLS (rustls, an [`Endpoint`] with `tls`) for an API with
//! `[http.tls]`. The feed is parsed as Server-Sent Events: `field: value` lines,
//! a blank line ends an event.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, SystemTime};

use crate::api::{ClientView, PresenceView};
use crate::tls::ClientTls;

/// Where the status API is: its `HOST:PORT`, and the TLS to speak to it
/// when its `[http]` has a `[http.tls]` table.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `HOST:PORT` of the daemon's `[http]` address.
    pub address: String,
    /// Set: HTTPS, trusting this CA for the daemon's certificate.
    pub tls: Option<ClientTls>,
}

impl Endpoint {
    /// A plain-HTTP API at `address`.
    pub fn plain(address: impl Into<String>) -> Endpoint {
        Endpoint { address: address.into(), tls: None }
    }
}

impl fmt::Display for Endpoint {
    /// The API's URL base, as messages show it: `http://HOST:PORT`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        write!(f, "{scheme}://{}", self.address)
    }
}

/// A connection to the API, plain or TLS.
type Body = BufReader<Box<dyn ReadWrite>>;

/// Why the API could not be read.
#[derive(Debug)]
pub enum StatusError {
    /// Connecting, sending or receiving failed.
    Io(String, io::Error),
    /// Connecting or an answer took longer than the timeout: the address is
    /// filtered, or the daemon is frozen or overloaded.
    TimedOut {
        /// What was waited for, as it reads after "timed out after 2s".
        what: String,
        /// The bound that ran out.
        after: Duration,
    },
    /// The daemon answered with a status other than 200.
    Status(u16, String),
    /// The peer answered, but not in HTTP: the message says what it looks
    /// like (a heartbeat listener, most often) and where the API is.
    NotHttp(String),
    /// The answer was not what the API sends.
    Malformed(String),
}

impl fmt::Display for StatusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StatusError::Io(what, e) => write!(f, "{what}: {e}"),
            StatusError::TimedOut { what, after } => {
                write!(f, "timed out after {} {what}", humantime::format_duration(*after))
            }
            StatusError::Status(401, body) => write!(
                f,
                "HTTP 401: {}; give the API's token with --token-file FILE (or HEARTBEAT_API_TOKEN_FILE)",
                body.trim()
            ),
            StatusError::Status(code, body) => write!(f, "HTTP {code}: {}", body.trim()),
            StatusError::NotHttp(what) => f.write_str(what),
            StatusError::Malformed(what) => write!(f, "unexpected answer: {what}"),
        }
    }
}

impl std::error::Error for StatusError {}

/// An I/O error of `what`, with a timeout (`EAGAIN` from a read timeout,
/// `ETIMEDOUT` from a connect) said as one instead of as its errno text.
fn io_error(what: String, e: io::Error, timeout: Duration) -> StatusError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => StatusError::TimedOut { what, after: timeout },
        _ => StatusError::Io(what, e),
    }
}

/// Where the status API is, for messages about a wrong address.
const API_HINT: &str = "the status API is the [http] address (default 127.0.0.1:7780)";

/// Says what a peer at `address` that answered `head` (its first bytes,
/// not `HTTP/`) probably is. A native heartbeat listener answers a request
/// line with an ERROR frame (type 6, a 2-byte code, a UTF-8 message).
fn not_http(address: SocketAddr, head: &[u8]) -> StatusError {
    let native_error = head.len() >= 6
        && head[0] == 0x06
        && usize::from(u16::from_be_bytes([head[2], head[3]])) >= 2
        && head.iter().skip(6).all(|b| !b.is_ascii_control());
    if native_error {
        return StatusError::NotHttp(format!(
            "{address} answered with a heartbeatd ERROR frame, not HTTP: \
             this looks like heartbeatd's heartbeat port; {API_HINT}"
        ));
    }
    let shown: String = head.iter().take(32).flat_map(|&b| std::ascii::escape_default(b)).map(char::from).collect();
    StatusError::NotHttp(format!(
        "{address} sent something that is not an HTTP answer (it began \"{shown}\"): \
         is it a heartbeat listener or another service? {API_HINT}"
    ))
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `id:` field, if any.
    pub id: Option<String>,
    /// The `event:` field (`message` when absent, as in browsers).
    pub event: String,
    /// The `data:` lines, joined by newlines.
    pub data: String,
}

/// Sends `GET path` to `api` and returns the response reader positioned
/// at the body, after checking for status 200.
fn get(api: &Endpoint, path: &str, timeout: Duration, headers: &str) -> Result<Body, StatusError> {
    let http = api.address.as_str();
    let address = http
        .to_socket_addrs()
        .map_err(|e| StatusError::Io(format!("resolving {http}"), e))?
        .next()
        .ok_or_else(|| StatusError::Malformed(format!("{http} resolves to no address")))?;
    let stream = TcpStream::connect_timeout(&address, timeout)
        .map_err(|e| io_error(format!("connecting to {address}"), e, timeout))?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| StatusError::Io("setting a read timeout".into(), e))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {http}\r\nAccept: */*\r\nConnection: close\r\n{headers}\r\n");
    // The handshake runs inside the first write, under the same timeout.
    let mut stream: Box<dyn ReadWrite> = match &api.tls {
        None => Box::new(stream),
        Some(tls) => {
            let conn = tls.connect().map_err(|e| StatusError::Io("starting TLS".into(), io::Error::other(e)))?;
            Box::new(rustls::StreamOwned::new(conn, stream))
        }
    };
    stream.write_all(request.as_bytes()).map_err(|e| io_error(format!("sending GET {path}"), e, timeout))?;
    stream.flush().map_err(|e| io_error(format!("sending GET {path}"), e, timeout))?;
    let mut reader: Body = BufReader::new(stream);
    // The first bytes tell whether this is HTTP at all, before any of them
    // is read as text: a heartbeat listener answers with binary frames.
    let head = reader.fill_buf().map_err(|e| {
        let what = format!("waiting for {address} to answer (it accepted the connection: is the daemon frozen?)");
        io_error(what, e, timeout)
    })?;
    if head.is_empty() {
        return Err(StatusError::NotHttp(format!("{address} closed the connection without an answer; {API_HINT}")));
    }
    let n = head.len().min(5);
    if head[..n] != b"HTTP/"[..n] {
        return Err(not_http(address, head));
    }
    let mut status_line = String::new();
    reader.read_line(&mut status_line).map_err(|e| io_error("reading the status line".into(), e, timeout))?;
    let code: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| StatusError::Malformed(format!("status line {status_line:?}")))?;
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line).map_err(|e| io_error("reading headers".into(), e, timeout))?;
        if n == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    if code != 200 {
        let mut body = String::new();
        // The body only explains the status; a failure to read it is moot.
        let _ = reader.take(4096).read_to_string(&mut body);
        return Err(StatusError::Status(code, body));
    }
    Ok(reader)
}

/// A plain or TLS stream.
trait ReadWrite: Read + Write {}

impl<T: Read + Write> ReadWrite for T {}

/// The `Authorization` header line for the API's bearer `token`, if any.
fn bearer(token: Option<&str>) -> String {
    token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default()
}

/// The online clients, from `GET /clients[?listener=NAME]`; `token` is the
/// API's bearer token (`[http] token_file`), when it has one.
pub fn clients(
    api: &Endpoint,
    listener: Option<&str>,
    timeout: Duration,
    token: Option<&str>,
) -> Result<Vec<ClientView>, StatusError> {
    let path = match listener {
        Some(name) => format!("/clients?listener={}", percent_encode(name)),
        None => "/clients".to_owned(),
    };
    let mut body = String::new();
    get(api, &path, timeout, &bearer(token))?
        .read_to_string(&mut body)
        .map_err(|e| io_error("reading /clients".into(), e, timeout))?;
    serde_json::from_str(&body).map_err(|e| StatusError::Malformed(format!("/clients is not the client list: {e}")))
}

/// Reads one JSON answer of the API at `path`.
fn get_json<T: serde::de::DeserializeOwned>(
    api: &Endpoint,
    path: &str,
    timeout: Duration,
    token: Option<&str>,
) -> Result<T, StatusError> {
    let mut body = String::new();
    get(api, path, timeout, &bearer(token))?
        .read_to_string(&mut body)
        .map_err(|e| io_error(format!("reading {path}"), e, timeout))?;
    serde_json::from_str(&body).map_err(|e| StatusError::Malformed(format!("{path}: {e}")))
}

/// When the daemon started, Unix ms: its `process_start_time_seconds`
/// in `/metrics`, written to the millisecond and the same for the whole
/// life of the process, so it tells `watch --resume` which daemon
/// numbered the events. `token` is the API's bearer token, as for
/// [`clients`].
pub fn started_ms(api: &Endpoint, timeout: Duration, token: Option<&str>) -> Result<u64, StatusError> {
    let mut body = String::new();
    get(api, "/metrics", timeout, &bearer(token))?
        .read_to_string(&mut body)
        .map_err(|e| io_error("reading /metrics".into(), e, timeout))?;
    body.lines()
        .find_map(|l| l.strip_prefix("process_start_time_seconds "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|s| (s * 1000.0).round() as u64)
        .ok_or_else(|| StatusError::Malformed("/metrics has no process_start_time_seconds".into()))
}

/// Every online and every expected client, from `GET /clients?state=all`;
/// `token` as for [`clients`].
pub fn presence(
    api: &Endpoint,
    listener: Option<&str>,
    timeout: Duration,
    token: Option<&str>,
) -> Result<Vec<PresenceView>, StatusError> {
    let path = match listener {
        Some(name) => format!("/clients?state=all&listener={}", percent_encode(name)),
        None => "/clients?state=all".to_owned(),
    };
    get_json(api, &path, timeout, token)
}

/// The `heartbeat status --all` table: one row per client, expected or
/// online, with its state.
pub fn presence_table(clients: &[PresenceView], now: SystemTime) -> String {
    let header = ["ID", "LISTENER", "STATE", "EXPECTED", "SINCE", "REASON", "PEER"];
    let rows: Vec<[String; 7]> = clients
        .iter()
        .map(|c| {
            let since = SystemTime::UNIX_EPOCH + Duration::from_millis(c.since_ms);
            [
                c.id.clone(),
                c.listener.clone(),
                c.state.clone(),
                if c.expected { "yes" } else { "no" }.to_owned(),
                format!("{} ago", short(now.duration_since(since).unwrap_or_default())),
                c.reason.clone().unwrap_or_else(|| "-".into()),
                c.peer.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let mut out = columns(&header, &rows);
    let online = clients.iter().filter(|c| c.state == "online").count();
    let expected = clients.iter().filter(|c| c.expected).count();
    let missing = clients.iter().filter(|c| c.expected && c.state != "online").count();
    out.push_str(&format!("{online} online, {expected} expected, {missing} expected not online\n"));
    out
}

/// Follows `GET /events`, calling `on_event` for each event until the
/// stream ends (returns `Ok`) or `on_event` returns `false`.
/// `last_event_id` resumes after that event. `idle` bounds the silence
/// between two reads (the daemon sends a keepalive every 15 s). `token`
/// is the API's bearer token, as for [`clients`].
pub fn follow(
    api: &Endpoint,
    last_event_id: Option<&str>,
    idle: Duration,
    token: Option<&str>,
    mut on_event: impl FnMut(&SseEvent) -> bool,
) -> Result<(), StatusError> {
    let mut headers = last_event_id.map(|id| format!("Last-Event-ID: {id}\r\n")).unwrap_or_default();
    headers.push_str(&bearer(token));
    let reader = get(api, "/events", idle, &headers)?;
    let mut event = SseEvent { id: None, event: String::new(), data: String::new() };
    for line in reader.lines() {
        let line = line.map_err(|e| io_error("reading the event stream".into(), e, idle))?;
        if line.is_empty() {
            if !event.data.is_empty() || !event.event.is_empty() {
                if event.event.is_empty() {
                    event.event = "message".into();
                }
                if !on_event(&event) {
                    return Ok(());
                }
            }
            event = SseEvent { id: None, event: String::new(), data: String::new() };
            continue;
        }
        // Lines starting with ':' are comments (keepalives).
        let (field, value) = line.split_once(':').unwrap_or((line.as_str(), ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => event.id = Some(value.to_owned()),
            "event" => event.event = value.to_owned(),
            "data" => {
                if !event.data.is_empty() {
                    event.data.push('\n');
                }
                event.data.push_str(value);
            }
            _ => {}
        }
    }
    Ok(())
}

/// `header` and `rows` as left-aligned columns two spaces apart, one line
/// each, without trailing blanks.
fn columns<const N: usize>(header: &[&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let padded: Vec<String> = cells.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(padded.join("  ").trim_end());
        out.push('\n');
    };
    line(header);
    for row in rows {
        line(&row.each_ref().map(String::as_str));
    }
    out
}

/// The `heartbeat status` table: one row per client.
pub fn table(clients: &[ClientView], now: SystemTime) -> String {
    let header = ["ID", "PEER", "LISTENER", "PROTO", "SESSION", "ONLINE FOR", "LAST SEEN", "RTT"];
    let rows: Vec<[String; 8]> = clients
        .iter()
        .map(|c| {
            let since = SystemTime::UNIX_EPOCH + Duration::from_millis(c.online_since_ms);
            let online_for = now.duration_since(since).unwrap_or_default();
            [
                c.id.clone(),
                c.peer.clone(),
                c.listener.clone(),
                c.protocol.clone(),
                c.session.to_string(),
                short(online_for),
                format!("{} ago", short(Duration::from_millis(c.last_activity_ms))),
                c.tcp.map_or_else(|| "-".to_owned(), |t| format!("{:.2}ms", f64::from(t.rtt_us) / 1000.0)),
            ]
        })
        .collect();
    let mut out = columns(&header, &rows);
    out.push_str(&format!("{} online\n", clients.len()));
    out
}

/// A duration to the second (or millisecond below one second), for humans.
fn short(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        return format!("{}ms", d.as_millis());
    }
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string().replace(' ', "")
}

/// Percent-encodes a query value (everything but unreserved characters).
fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => char::from(b).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::TcpView;

    #[test]
    fn table_has_a_row_per_client_and_aligned_columns() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let client = ClientView {
            id: "dev-42".into(),
            peer: "10.0.0.7:51234".into(),
            listener: "main".into(),
            protocol: "native".into(),
            session: 17,
            online_since: String::new(),
            online_since_ms: (1_000_000 - 192) * 1000,
            last_activity_ms: 1200,
            heartbeats: 3,
            tcp: Some(TcpView { rtt_us: 1500, rttvar_us: 10, retransmits: 0, unacked: 0 }),
            flap: None,
        };
        let text = table(&[client], now);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("ID      PEER"), "{text}");
        assert!(lines[1].contains("dev-42") && lines[1].contains("3m12s") && lines[1].contains("1s ago"), "{text}");
        assert!(lines[1].ends_with("1.50ms"), "{text}");
        assert_eq!(lines[2], "1 online");
        assert_eq!(lines[0].find("PEER"), lines[1].find("10.0.0.7"));
    }

    #[test]
    fn a_native_error_frame_is_named_as_the_heartbeat_port() {
        let addr: SocketAddr = "127.0.0.1:7700".parse().expect("address");
        let mut frame = vec![0x06, 0x00, 0x00, 0x0f, 0x00, 0x03];
        frame.extend_from_slice(b"bad frame type");
        let text = not_http(addr, &frame).to_string();
        assert!(text.contains("this looks like heartbeatd's heartbeat port"), "{text}");
        assert!(text.contains("[http] address"), "{text}");
        let text = not_http(addr, b"\x00\xffjunk").to_string();
        assert!(text.contains("not an HTTP answer") && text.contains("\\x00\\xffjunk"), "{text}");
    }

    #[test]
    fn a_read_timeout_is_said_as_one() {
        let e = io::Error::from(io::ErrorKind::WouldBlock);
        let text = io_error("waiting for 127.0.0.1:7780 to answer".into(), e, Duration::from_millis(500)).to_string();
        assert_eq!(text, "timed out after 500ms waiting for 127.0.0.1:7780 to answer");
        let e = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert!(matches!(io_error("connecting".into(), e, Duration::from_secs(2)), StatusError::Io(..)));
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(percent_encode("a b/c"), "a%20b%2Fc");
        assert_eq!(percent_encode("main-1.x"), "main-1.x");
    }
}
