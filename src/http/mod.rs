//! The status API, served by the daemon's own poll: `/clients`,
//! `/metrics`, the `/events` feed and the dashboard at `/`.
//!
//! HTTP/1.1, one request per connection (`Connection: close`), except
//! `/events`, which keeps the connection as a Server-Sent Events stream.
//! Request heads are parsed by `httparse`; routing is in [`routes`], the
//! feed's encoding and history in [`feed`].
//!
//! Invariants, so that no HTTP client can slow the heartbeat loop:
//! - at most `max_connections` HTTP connections; more get 503 and close;
//! - at most `ACCEPT_BUDGET` accepts per poll round: a connect flood on
//!   the status port cannot hold the loop (the rest wait for the next
//!   round, which [`Http::next_deadline`] makes immediate);
//! - a request head larger than [`MAX_REQUEST`] gets 431, one not complete
//!   within `request_timeout` gets 408 (slowloris), a malformed one 400;
//! - a subscriber whose unread output would pass `subscriber_buffer` is
//!   dropped at once; nothing ever waits for a subscriber;
//! - every socket is non-blocking and WRITABLE interest is registered only
//!   while output is queued.
//!
//! HTTP connections are few (bounded by config), so deadlines are found by
//! scanning them ([`Http::next_deadline`]) rather than through the wheel.

pub mod feed;
pub mod routes;

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use log::{debug, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use slab::Slab;

use crate::api::{HttpStats, View};
use crate::config::HttpConfig;
use crate::event::{Event, Logfmt};
use feed::{Feed, Start};
use routes::{reason_phrase, route, Reply};

/// Largest request head accepted, in bytes.
pub const MAX_REQUEST: usize = 8 * 1024;

/// Most request headers parsed; more is a 431.
const MAX_HEADERS: usize = 32;

/// Period of the comment line sent to idle subscribers: keeps proxies from
/// timing the stream out and finds subscribers that vanished.
const KEEPALIVE_EVERY: Duration = Duration::from_secs(15);

/// Connections accepted per poll round before the loop serves the rest.
/// Smaller than the client listeners' budget: HTTP is best effort, and 64
/// is the default `max_connections`, so one round can fill an empty server.
const ACCEPT_BUDGET: usize = 64;

/// Reconnect delay a browser's `EventSource` uses after the stream breaks.
const RETRY_MS: u32 = 2000;

/// Where an HTTP connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a complete request head until the deadline.
    Reading { deadline: Instant },
    /// Writing a response; closes once written.
    Replying,
    /// An event subscriber: receives every event until it leaves.
    Streaming,
}

struct HttpConn {
    stream: TcpStream,
    peer: SocketAddr,
    phase: Phase,
    request: Vec<u8>,
    out: Vec<u8>,
    writable_registered: bool,
}

/// The HTTP server: a listener and its connections, registered in the
/// daemon's poll under tokens from `token_base` up.
pub struct Http {
    cfg: HttpConfig,
    listener: TcpListener,
    address: SocketAddr,
    conns: Slab<HttpConn>,
    feed: Feed,
    token_base: usize,
    next_keepalive: Instant,
    requests: u64,
    subscribers_dropped: u64,
    /// Set when the accept budget ran out with connections maybe waiting:
    /// the edge that announced them will not come again, so
    /// [`Http::on_time`] accepts more in the next round.
    accept_again: Option<Instant>,
}

/// Why a connection ends; only logged.
type Done = Result<(), String>;

impl Http {
    /// Binds the `[http]` address and registers it as `token_base`;
    /// connections get `token_base + 1 + key`.
    pub fn bind(cfg: HttpConfig, registry: &Registry, token_base: usize, now: Instant) -> io::Result<Http> {
        let mut listener = TcpListener::bind(cfg.address)?;
        registry.register(&mut listener, Token(token_base), Interest::READABLE)?;
        let address = listener.local_addr()?;
        info!("http-listening address={address}");
        Ok(Http {
            feed: Feed::new(cfg.history),
            cfg,
            listener,
            address,
            conns: Slab::new(),
            token_base,
            next_keepalive: now + KEEPALIVE_EVERY,
            requests: 0,
            subscribers_dropped: 0,
            accept_again: None,
        })
    }

    /// The id of the newest `/events` event (0 before any).
    pub fn last_event_id(&self) -> u64 {
        self.feed.last_id()
    }

    /// Continues the event ids of a previous process (see
    /// [`Feed::continue_after`]).
    pub fn continue_event_ids(&mut self, last: u64) {
        self.feed.continue_after(last);
    }

    /// The bound address (port 0 resolved).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The configuration in force.
    pub fn config(&self) -> &HttpConfig {
        &self.cfg
    }

    /// Applies new limits from a reload (the address is fixed until the
    /// listener is reopened).
    pub fn set_limits(&mut self, cfg: HttpConfig) {
        self.feed.set_capacity(cfg.history);
        self.cfg = cfg;
    }

    /// The numbers `/metrics` reports for the HTTP layer.
    pub fn stats(&self) -> HttpStats {
        let subscribers = self.conns.iter().filter(|(_, c)| c.phase == Phase::Streaming).count();
        HttpStats {
            requests: self.requests,
            subscribers: u64::try_from(subscribers).unwrap_or(u64::MAX),
            subscribers_dropped: self.subscribers_dropped,
        }
    }

    /// Handles readiness of the listener or a connection.
    pub fn handle(&mut self, registry: &Registry, token: Token, now: Instant, view: &dyn View) {
        if token.0 == self.token_base {
            self.accept(registry, now);
            return;
        }
        let key = token.0 - self.token_base - 1;
        let stats = self.stats();
        let Some(conn) = self.conns.get_mut(key) else { return };
        let result = match conn.phase {
            Phase::Reading { .. } => read_request(conn).map(|request| {
                if let Some((method, target, last_event_id)) = request {
                    self.requests += 1;
                    let reply = route(&method, &target, last_event_id.as_deref(), view, &stats);
                    start_reply(conn, &method, reply, &self.feed, view, self.cfg.subscriber_buffer);
                }
            }),
            Phase::Streaming => drain_input(conn),
            Phase::Replying => Ok(()),
        };
        self.settle(registry, key, result);
    }

    /// Sends an event to every subscriber and keeps it for resumption.
    pub fn publish(&mut self, registry: &Registry, event: &Event<'_>) {
        let message = self.feed.publish(event, SystemTime::now());
        let keys: Vec<usize> =
            self.conns.iter().filter(|(_, c)| c.phase == Phase::Streaming).map(|(key, _)| key).collect();
        for key in keys {
            let conn = &mut self.conns[key];
            let unread = conn.out.len() + message.len();
            if unread > self.cfg.subscriber_buffer {
                warn!("subscriber-dropped peer={} unread_bytes={} reason=\"not reading\"", conn.peer, conn.out.len());
                self.subscribers_dropped += 1;
                self.close(registry, key);
                continue;
            }
            conn.out.extend_from_slice(message.as_bytes());
            self.settle(registry, key, Ok(()));
        }
    }

    /// The earliest instant [`Http::on_time`] has work: a request deadline,
    /// the next keepalive, or at once when accepting must go on.
    pub fn next_deadline(&self) -> Option<Instant> {
        let streaming = self.conns.iter().any(|(_, c)| c.phase == Phase::Streaming);
        self.conns
            .iter()
            .filter_map(|(_, c)| match c.phase {
                Phase::Reading { deadline } => Some(deadline),
                _ => None,
            })
            .chain(streaming.then_some(self.next_keepalive))
            .chain(self.accept_again)
            .min()
    }

    /// Accepts what the last round's budget left, times out slow requests
    /// (408) and sends subscriber keepalives.
    pub fn on_time(&mut self, registry: &Registry, now: Instant) {
        // Only a later round: the round that spent the budget also calls
        // this, and must leave the backlog to the next one.
        if self.accept_again.is_some_and(|at| at < now) {
            self.accept_again = None;
            self.accept(registry, now);
        }
        let late: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(c.phase, Phase::Reading { deadline } if deadline <= now))
            .map(|(key, _)| key)
            .collect();
        for key in late {
            let conn = &mut self.conns[key];
            debug!("http-timeout peer={} received_bytes={}", conn.peer, conn.request.len());
            queue_error(conn, 408, "request not complete in time");
            self.settle(registry, key, Ok(()));
        }
        if now >= self.next_keepalive {
            self.next_keepalive = now + KEEPALIVE_EVERY;
            let keys: Vec<usize> =
                self.conns.iter().filter(|(_, c)| c.phase == Phase::Streaming).map(|(key, _)| key).collect();
            for key in keys {
                self.conns[key].out.extend_from_slice(b": keepalive\n\n");
                self.settle(registry, key, Ok(()));
            }
        }
    }

    /// Closes every HTTP connection (shutdown).
    pub fn close_all(&mut self, registry: &Registry) {
        let keys: Vec<usize> = self.conns.iter().map(|(key, _)| key).collect();
        for key in keys {
            self.close(registry, key);
        }
        let _ = registry.deregister(&mut self.listener);
    }

    fn accept(&mut self, registry: &Registry, now: Instant) {
        for _ in 0..ACCEPT_BUDGET {
            match self.listener.accept() {
                Ok((mut stream, peer)) => {
                    if self.conns.len() >= self.cfg.max_connections {
                        warn!("http-refused peer={peer} limit=max_connections value={}", self.cfg.max_connections);
                        let mut out = Vec::new();
                        let body = routes::error_body(503, "too many HTTP connections (http.max_connections)");
                        response_head(&mut out, 503, routes::ERROR_CONTENT_TYPE, body.len());
                        out.extend_from_slice(&body);
                        // Best effort on a fresh socket; the close says the rest.
                        let _ = stream.write(&out);
                        continue;
                    }
                    let entry = self.conns.vacant_entry();
                    let token = Token(self.token_base + 1 + entry.key());
                    if let Err(e) = registry.register(&mut stream, token, Interest::READABLE) {
                        warn!("http-register-failed peer={peer} error={}", Logfmt(&e.to_string()));
                        continue;
                    }
                    entry.insert(HttpConn {
                        stream,
                        peer,
                        phase: Phase::Reading { deadline: now + self.cfg.request_timeout },
                        request: Vec::new(),
                        out: Vec::new(),
                        writable_registered: false,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // Out of fds or a connection that died in the backlog: HTTP
                // is best effort and must not spin; the next connection
                // attempt brings a new readiness event.
                Err(e) => {
                    debug!("http-accept-failed error={}", Logfmt(&e.to_string()));
                    return;
                }
            }
        }
        // Budget spent before WouldBlock: come back next round, after the
        // heartbeats waiting in this one.
        self.accept_again = Some(now);
    }

    /// Writes what is queued, then closes the connection if it is done, or
    /// keeps WRITABLE interest in step with its queue.
    fn settle(&mut self, registry: &Registry, key: usize, result: Done) {
        let conn = &mut self.conns[key];
        let result = result.and_then(|()| flush(conn));
        let finished = conn.phase == Phase::Replying && conn.out.is_empty();
        if let Err(why) = &result {
            debug!("http-closed peer={} why={}", conn.peer, Logfmt(why));
        }
        if result.is_err() || finished {
            self.close(registry, key);
            return;
        }
        let want = !conn.out.is_empty();
        if want != conn.writable_registered {
            let interest = if want { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
            let token = Token(self.token_base + 1 + key);
            match registry.reregister(&mut conn.stream, token, interest) {
                Ok(()) => conn.writable_registered = want,
                Err(_) => self.close(registry, key),
            }
        }
    }

    fn close(&mut self, registry: &Registry, key: usize) {
        // Freed at once: a stale readiness event for this token in the same
        // poll round can only reach a later connection in this slot, which
        // then reads nothing (non-blocking) and carries on.
        if let Some(mut conn) = self.conns.try_remove(key) {
            let _ = registry.deregister(&mut conn.stream);
        }
    }
}

/// Reads until the request head is complete: `Some((method, target,
/// last_event_id))`, `None` to wait for more, `Err` to close. Errors that
/// deserve a status (400, 431) are queued as a response and return `Ok`.
fn read_request(conn: &mut HttpConn) -> Result<Option<(String, String, Option<String>)>, String> {
    let mut chunk = [0u8; 2048];
    loop {
        match conn.stream.read(&mut chunk) {
            Ok(0) => return Err("closed before a complete request".into()),
            Ok(n) => conn.request.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
        if conn.request.len() > MAX_REQUEST {
            break;
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(&conn.request) {
        Ok(httparse::Status::Complete(head)) if head > MAX_REQUEST => {
            queue_error(conn, 431, "request head too large");
            Ok(None)
        }
        Ok(httparse::Status::Complete(_)) => {
            let method = request.method.unwrap_or("GET").to_owned();
            let target = request.path.unwrap_or("/").to_owned();
            let last_event_id = request
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("last-event-id"))
                .and_then(|h| std::str::from_utf8(h.value).ok())
                .map(str::to_owned);
            Ok(Some((method, target, last_event_id)))
        }
        Ok(httparse::Status::Partial) if conn.request.len() > MAX_REQUEST => {
            queue_error(conn, 431, "request head too large");
            Ok(None)
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            queue_error(conn, 431, "too many headers");
            Ok(None)
        }
        Err(e) => {
            queue_error(conn, 400, &format!("malformed request: {e}"));
            Ok(None)
        }
    }
}

/// Turns a routed reply into queued output and the connection's next phase.
fn start_reply(
    conn: &mut HttpConn,
    method: &str,
    reply: Reply,
    feed: &Feed,
    view: &dyn View,
    subscriber_buffer: usize,
) {
    conn.request = Vec::new();
    match reply {
        Reply::Full { status, content_type, body } => {
            conn.phase = Phase::Replying;
            // HEAD gets the headers GET would, Content-Length included.
            response_head(&mut conn.out, status, content_type, body.len());
            if method != "HEAD" {
                conn.out.extend_from_slice(&body);
            }
        }
        Reply::Events { last_event_id } => {
            conn.phase = Phase::Streaming;
            // The kernel's send buffer would otherwise autotune to megabytes
            // and hide a stalled subscriber behind it; sized like our own
            // queue, a subscriber that stops reading is found within about
            // three times `subscriber_buffer` of unread bytes. Failure only
            // means a later drop.
            let _ = socket2::SockRef::from(&conn.stream).set_send_buffer_size(subscriber_buffer);
            conn.out.extend_from_slice(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
                  X-Accel-Buffering: no\r\nConnection: keep-alive\r\n\r\n",
            );
            conn.out.extend_from_slice(format!("retry: {RETRY_MS}\n\n").as_bytes());
            match feed.start(last_event_id) {
                Start::Snapshot => snapshot(conn, feed, view),
                Start::Replay(after) => {
                    for message in feed.after(after) {
                        conn.out.extend_from_slice(message.as_bytes());
                    }
                }
                Start::Gap { asked, oldest } => {
                    let data = serde_json::json!({ "last_event_id": asked, "oldest_available": oldest }).to_string();
                    conn.out.extend_from_slice(feed::message(None, "gap", &data).as_bytes());
                    snapshot(conn, feed, view);
                }
            }
        }
    }
}

/// Queues the `snapshot` event: everyone online now, tagged with the
/// newest event id so a reconnecting browser resumes from there.
fn snapshot(conn: &mut HttpConn, feed: &Feed, view: &dyn View) {
    let data = serde_json::json!({ "clients": view.clients(None) }).to_string();
    conn.out.extend_from_slice(feed::message(Some(feed.last_id()), "snapshot", &data).as_bytes());
}

/// Queues an error response (JSON, as every API error) and forgets the
/// request.
fn queue_error(conn: &mut HttpConn, status: u16, message: &str) {
    conn.request = Vec::new();
    conn.phase = Phase::Replying;
    let body = routes::error_body(status, message);
    response_head(&mut conn.out, status, routes::ERROR_CONTENT_TYPE, body.len());
    conn.out.extend_from_slice(&body);
}

/// A response head; every response but the event stream closes after.
fn response_head(out: &mut Vec<u8>, status: u16, content_type: &str, length: usize) {
    out.extend_from_slice(
        format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\n\
             Cache-Control: no-store\r\nConnection: close\r\n\r\n",
            reason_phrase(status)
        )
        .as_bytes(),
    );
}

/// A subscriber sends nothing we need; read and drop it so its buffer
/// cannot fill, and notice when it leaves.
fn drain_input(conn: &mut HttpConn) -> Done {
    let mut chunk = [0u8; 1024];
    loop {
        match conn.stream.read(&mut chunk) {
            Ok(0) => return Err("subscriber left".into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

fn flush(conn: &mut HttpConn) -> Done {
    let mut written = 0;
    while written < conn.out.len() {
        match conn.stream.write(&conn.out[written..]) {
            Ok(0) => return Err("write returned 0".into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    conn.out.drain(..written);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ClientView;
    use mio::Poll;

    /// A view with no clients: accepting never consults it.
    struct NoClients;

    impl View for NoClients {
        fn clients(&self, _: Option<&str>) -> Vec<ClientView> {
            Vec::new()
        }
        fn client(&self, _: &str) -> Option<ClientView> {
            None
        }
        fn metrics(&self, _: &HttpStats) -> String {
            String::new()
        }
        fn health(&self) -> crate::api::Health {
            crate::api::Health {
                status: "ok",
                uptime_ms: 0,
                online: 0,
                connections: 0,
                lag_ms: 0,
                last_stall_ms: 0,
                loop_stalls: 0,
            }
        }
    }

    #[test]
    fn a_connect_flood_is_accepted_a_budget_per_round() {
        let text = "[http]\naddress = \"127.0.0.1:0\"\nmax_connections = 4096\n\
                    [[listener]]\nname = \"t\"\naddress = \"127.0.0.1:0\"\n";
        let cfg = match crate::config::parse(text, "test.toml", std::path::Path::new("/nonexistent")) {
            Ok(c) => c.http.expect("http table"),
            Err(e) => panic!("config: {e}"),
        };
        let poll = Poll::new().expect("poll");
        let now = Instant::now();
        let base = 1000;
        let mut http = Http::bind(cfg, poll.registry(), base, now).expect("bind");
        // Fewer than the listener's backlog (128), so all wait at once.
        let flood = ACCEPT_BUDGET + 10;
        let _clients: Vec<std::net::TcpStream> =
            (0..flood).map(|_| std::net::TcpStream::connect(http.address()).expect("connect")).collect();
        std::thread::sleep(Duration::from_millis(50));

        http.handle(poll.registry(), Token(base), now, &NoClients);
        assert_eq!(http.conns.len(), ACCEPT_BUDGET, "one budget in the first round");
        assert_eq!(http.next_deadline(), Some(now), "the next round must not sleep");
        http.on_time(poll.registry(), now);
        assert_eq!(http.conns.len(), ACCEPT_BUDGET, "nothing more in the same round");

        let later = now + Duration::from_millis(1);
        http.on_time(poll.registry(), later);
        assert_eq!(http.conns.len(), flood, "the rest in the next round");
        assert_eq!(http.accept_again, None, "drained: no more immediate rounds");
    }
}
