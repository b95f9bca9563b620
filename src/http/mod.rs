//! The status API, served by the daemon's own poll: `/clients`,
//! `/metrics`, the `/events` feed and the dashboard at `/`.
//!
//! HTTP/1.1, one request per connection (`Connection: close`), except
//! `/events`, which keeps the connection as a Server-Sent Events stream.
//! Request heads are parsed by `httparse`; routing is in [`routes`], the
//! feed's encoding and history in [`feed`], the lists of everyone online
//! (`/clients`, the stream's `snapshot` event) in [`snapshot`].
//!
//! A request goes: [`read_request`] (the head) → [`routes::route`] (what
//! to answer, pure) → `start_reply` (the connection's next phase and its
//! first output); a check of the request (authentication) slots in before
//! the route.
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
//! - snapshots are made a page at a time ([`snapshot::Producer`]), at most
//!   [`PAGES_PER_ROUND`] pages per poll round over all connections, and
//!   only while the connection's queued output is under [`OUT_HIGH`]: a
//!   connection holds at most [`MAX_REQUEST`] of request and about
//!   `OUT_HIGH` plus one page (some 130 KiB) of reply, however many
//!   clients are online (a subscriber, past its snapshot, up to
//!   `subscriber_buffer` of events);
//! - a reply (and a subscriber's snapshot) not taken by the socket within
//!   `request_timeout` of the request is dropped, so a client that does not
//!   read cannot hold a connection slot;
//! - every socket is non-blocking and WRITABLE interest is registered only
//!   while output is queued.
//!
//! With `[http.tls]` every connection is TLS ([`stream`]): requests are
//! read and replies written through the same plain/TLS wrapper, the
//! handshake is driven by the poll like any read, and a failed handshake
//! (a plain-HTTP request on the HTTPS port, say) closes that connection
//! only. A reload's new certificate applies to connections accepted after
//! it.
//!
//! HTTP connections are few (bounded by config), so deadlines are found by
//! scanning them ([`Http::next_deadline`]) rather than through the wheel.

mod auth;
pub mod feed;
pub mod routes;
pub mod snapshot;
mod stream;

use std::io::{self, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use log::{debug, info, warn};
use mio::net::TcpListener;
use mio::{Interest, Registry, Token};
use slab::Slab;

use crate::api::{HttpStats, View};
use crate::config::tokens::Digest;
use crate::config::HttpConfig;
use crate::event::{Event, Logfmt};
use feed::{Feed, Start};
use routes::{reason_phrase, route, Reply};
use snapshot::{Producer, Step};
use stream::HttpStream;

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

/// Snapshot pages ([`snapshot::PAGE`] clients each) made per poll round,
/// over all connections: some 500 `TCP_INFO` calls and JSON objects, about
/// a millisecond in a release build, between two turns of the heartbeats.
pub const PAGES_PER_ROUND: usize = 4;

/// A snapshot's next page is made only while less than this is queued for
/// its connection: the reply follows the reader's pace.
pub const OUT_HIGH: usize = 64 * 1024;

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
    stream: HttpStream,
    peer: SocketAddr,
    phase: Phase,
    request: Vec<u8>,
    out: Vec<u8>,
    /// A snapshot still being made (`/clients`, or the stream's opening
    /// `snapshot` event); live events wait in the feed's history meanwhile.
    producer: Option<Producer>,
    /// The reply, or a subscriber's snapshot, must be out by then.
    reply_by: Option<Instant>,
    writable_registered: bool,
}

impl HttpConn {
    /// True when the next snapshot page may be made now.
    fn ready_to_produce(&self) -> bool {
        self.producer.is_some() && self.out.len() < OUT_HIGH
    }

    /// True for a subscriber past its snapshot: it takes live events.
    fn is_live(&self) -> bool {
        self.phase == Phase::Streaming && self.producer.is_none()
    }
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
    /// When the server was bound: an instant already past, which
    /// [`Http::next_deadline`] gives when snapshot pages are to be made.
    bound_at: Instant,
    /// Where the next round's snapshot pages start, so connections take
    /// turns.
    produce_from: usize,
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
            bound_at: now,
            produce_from: 0,
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
            Phase::Reading { .. } => {
                let token = self.cfg.token.as_ref().map(|t| &t.digest);
                read_request(conn, token, now + self.cfg.request_timeout).map(|request| {
                    if let Some((method, target, last_event_id)) = request {
                        self.requests += 1;
                        let reply = route(&method, &target, last_event_id.as_deref(), view, &stats);
                        start_reply(conn, &method, reply, &self.feed, &self.cfg, now);
                    }
                })
            }
            Phase::Streaming => drain_input(conn),
            Phase::Replying => Ok(()),
        };
        self.settle(registry, key, result);
    }

    /// Sends an event to every live subscriber and keeps it for
    /// resumption (a subscriber still receiving its snapshot gets it from
    /// the history when the snapshot is out).
    pub fn publish(&mut self, registry: &Registry, event: &Event<'_>) {
        let message = self.feed.publish(event, SystemTime::now());
        let keys: Vec<usize> = self.conns.iter().filter(|(_, c)| c.is_live()).map(|(key, _)| key).collect();
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

    /// The earliest instant [`Http::on_time`] has work: a request or reply
    /// deadline, the next keepalive, or at once when accepting must go on
    /// or a snapshot page can be made.
    pub fn next_deadline(&self) -> Option<Instant> {
        let streaming = self.conns.iter().any(|(_, c)| c.phase == Phase::Streaming);
        let produce = self.conns.iter().any(|(_, c)| c.ready_to_produce());
        self.conns
            .iter()
            .filter_map(|(_, c)| match c.phase {
                Phase::Reading { deadline } => Some(deadline),
                _ => c.reply_by,
            })
            .chain(streaming.then_some(self.next_keepalive))
            .chain(self.accept_again)
            .chain(produce.then_some(self.bound_at))
            .min()
    }

    /// Accepts what the last round's budget left, times out slow requests
    /// (408) and unread replies, makes this round's snapshot pages and
    /// sends subscriber keepalives.
    pub fn on_time(&mut self, registry: &Registry, now: Instant, view: &dyn View) {
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
            queue_error(conn, 408, "request not complete in time", now + self.cfg.request_timeout);
            self.settle(registry, key, Ok(()));
        }
        self.drop_unread(registry, now);
        self.produce(registry, view, now);
        if now >= self.next_keepalive {
            self.next_keepalive = now + KEEPALIVE_EVERY;
            // Not inside a snapshot still being written: a comment line
            // there would cut its message in two.
            let keys: Vec<usize> = self.conns.iter().filter(|(_, c)| c.is_live()).map(|(key, _)| key).collect();
            for key in keys {
                self.conns[key].out.extend_from_slice(b": keepalive\n\n");
                self.settle(registry, key, Ok(()));
            }
        }
    }

    /// Drops the connections whose reply (or snapshot) the peer did not
    /// take within `request_timeout`.
    fn drop_unread(&mut self, registry: &Registry, now: Instant) {
        let late: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| !matches!(c.phase, Phase::Reading { .. }) && c.reply_by.is_some_and(|by| by <= now))
            .map(|(key, _)| key)
            .collect();
        for key in late {
            let conn = &self.conns[key];
            if conn.phase == Phase::Streaming {
                warn!(
                    "subscriber-dropped peer={} unread_bytes={} reason=\"snapshot not read\"",
                    conn.peer,
                    conn.out.len()
                );
                self.subscribers_dropped += 1;
            } else {
                debug!("http-reply-timeout peer={} unread_bytes={}", conn.peer, conn.out.len());
            }
            self.close(registry, key);
        }
    }

    /// Makes up to [`PAGES_PER_ROUND`] snapshot pages, for connections in
    /// turn whose queued output is under [`OUT_HIGH`], and writes them.
    fn produce(&mut self, registry: &Registry, view: &dyn View, now: Instant) {
        let mut keys: Vec<usize> = self.conns.iter().filter(|(_, c)| c.ready_to_produce()).map(|(k, _)| k).collect();
        if keys.is_empty() {
            return;
        }
        // Those after the last one served first, then the rest: turns.
        keys.sort_by_key(|&k| (k < self.produce_from, k));
        let mut budget = PAGES_PER_ROUND;
        for key in keys {
            if budget == 0 {
                break;
            }
            self.produce_from = key + 1;
            let conn = &mut self.conns[key];
            while budget > 0 && conn.out.len() < OUT_HIGH {
                let Some(producer) = &mut conn.producer else { break };
                budget -= 1;
                if producer.step(view, &mut conn.out) == Step::Done {
                    let event_id = producer.event_id();
                    conn.producer = None;
                    if let Some(id) = event_id {
                        catch_up(conn, &self.feed, id, now + self.cfg.request_timeout);
                    }
                }
            }
            let over = conn.is_live() && conn.out.len() > self.cfg.subscriber_buffer;
            if over {
                warn!("subscriber-dropped peer={} unread_bytes={} reason=\"not reading\"", conn.peer, conn.out.len());
                self.subscribers_dropped += 1;
                self.close(registry, key);
                continue;
            }
            self.settle(registry, key, Ok(()));
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
                        // A TLS client could not read a plain answer: the
                        // close alone says it.
                        if self.cfg.tls.is_some() {
                            continue;
                        }
                        let mut out = Vec::new();
                        let body = routes::error_body(503, "too many HTTP connections (http.max_connections)");
                        response_head(&mut out, 503, routes::ERROR_CONTENT_TYPE, Some(body.len()));
                        out.extend_from_slice(&body);
                        // Best effort on a fresh socket; the close says the rest.
                        let _ = stream.write(&out);
                        continue;
                    }
                    let tls = self.cfg.tls.as_ref().map(|t| t.server_config());
                    let mut stream = match HttpStream::accept(stream, tls) {
                        Ok(stream) => stream,
                        Err(e) => {
                            warn!("http-tls-failed peer={peer} error={}", Logfmt(&e));
                            continue;
                        }
                    };
                    let entry = self.conns.vacant_entry();
                    let token = Token(self.token_base + 1 + entry.key());
                    if let Err(e) = registry.register(stream.tcp_mut(), token, Interest::READABLE) {
                        warn!("http-register-failed peer={peer} error={}", Logfmt(&e.to_string()));
                        continue;
                    }
                    entry.insert(HttpConn {
                        stream,
                        peer,
                        phase: Phase::Reading { deadline: now + self.cfg.request_timeout },
                        request: Vec::new(),
                        out: Vec::new(),
                        producer: None,
                        reply_by: None,
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
        let mut result = result.and_then(|()| flush(conn));
        let replied = conn.phase == Phase::Replying && conn.out.is_empty() && conn.producer.is_none();
        if replied && result.is_ok() {
            result = conn.stream.finish().map_err(|e| e.to_string());
        }
        // Over TLS the last records may still wait for the socket.
        let finished = replied && !conn.stream.pending();
        if let Err(why) = &result {
            debug!("http-closed peer={} why={}", conn.peer, Logfmt(why));
        }
        if result.is_err() || finished {
            self.close(registry, key);
            return;
        }
        let want = !conn.out.is_empty() || conn.stream.pending();
        if want != conn.writable_registered {
            let interest = if want { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
            let token = Token(self.token_base + 1 + key);
            match registry.reregister(conn.stream.tcp_mut(), token, interest) {
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
            let _ = registry.deregister(conn.stream.tcp_mut());
        }
    }
}

/// Reads until the request head is complete: `Some((method, target,
/// last_event_id))`, `None` to wait for more, `Err` to close. Errors that
/// deserve a status (400, 401 without the API's `token`, 431) are queued as
/// a response, to be out by `reply_by`, and return `Ok`.
fn read_request(
    conn: &mut HttpConn,
    token: Option<&Digest>,
    reply_by: Instant,
) -> Result<Option<(String, String, Option<String>)>, String> {
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
            queue_error(conn, 431, "request head too large", reply_by);
            Ok(None)
        }
        Ok(httparse::Status::Complete(_)) => {
            let method = request.method.unwrap_or("GET").to_owned();
            let target = request.path.unwrap_or("/").to_owned();
            let authorization = request.headers.iter().find(|h| h.name.eq_ignore_ascii_case("authorization"));
            if let Err(refusal) = auth::check(token, &target, authorization.map(|h| h.value)) {
                conn.request = Vec::new();
                conn.phase = Phase::Replying;
                conn.reply_by = Some(reply_by);
                conn.out.extend_from_slice(&auth::unauthorized(refusal));
                return Ok(None);
            }
            let last_event_id = request
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("last-event-id"))
                .and_then(|h| std::str::from_utf8(h.value).ok())
                .map(str::to_owned);
            Ok(Some((method, target, last_event_id)))
        }
        Ok(httparse::Status::Partial) if conn.request.len() > MAX_REQUEST => {
            queue_error(conn, 431, "request head too large", reply_by);
            Ok(None)
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            queue_error(conn, 431, "too many headers", reply_by);
            Ok(None)
        }
        Err(e) => {
            queue_error(conn, 400, &format!("malformed request: {e}"), reply_by);
            Ok(None)
        }
    }
}

/// Turns a routed reply into queued output (or a snapshot to make) and the
/// connection's next phase; the reply must be out by `now` +
/// `request_timeout`.
fn start_reply(conn: &mut HttpConn, method: &str, reply: Reply, feed: &Feed, cfg: &HttpConfig, now: Instant) {
    conn.request = Vec::new();
    conn.reply_by = Some(now + cfg.request_timeout);
    match reply {
        Reply::Full { status, content_type, body } => {
            conn.phase = Phase::Replying;
            // HEAD gets the headers GET would, Content-Length included.
            response_head(&mut conn.out, status, content_type, Some(body.len()));
            if method != "HEAD" {
                conn.out.extend_from_slice(&body);
            }
        }
        Reply::Clients { listener } => {
            conn.phase = Phase::Replying;
            conn.producer = Some(Producer::clients(listener, method == "HEAD"));
        }
        Reply::Events { last_event_id } => {
            conn.phase = Phase::Streaming;
            // The kernel's send buffer would otherwise autotune to megabytes
            // and hide a stalled subscriber behind it; sized like our own
            // queue, a subscriber that stops reading is found within about
            // three times `subscriber_buffer` of unread bytes. Failure only
            // means a later drop.
            let _ = socket2::SockRef::from(conn.stream.tcp()).set_send_buffer_size(cfg.subscriber_buffer);
            conn.out.extend_from_slice(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
                  X-Accel-Buffering: no\r\nConnection: keep-alive\r\n\r\n",
            );
            conn.out.extend_from_slice(format!("retry: {RETRY_MS}\n\n").as_bytes());
            match feed.start(last_event_id) {
                Start::Replay(after) => {
                    conn.reply_by = None;
                    for message in feed.after(after) {
                        conn.out.extend_from_slice(message.as_bytes());
                    }
                }
                start => begin_snapshot(conn, feed, start),
            }
        }
    }
}

/// Starts a subscriber's snapshot, after a `gap` event when it asked to
/// resume from events the history no longer holds.
fn begin_snapshot(conn: &mut HttpConn, feed: &Feed, start: Start) {
    if let Start::Gap { asked, oldest } = start {
        let data = serde_json::json!({ "last_event_id": asked, "oldest_available": oldest }).to_string();
        conn.out.extend_from_slice(feed::message(None, "gap", &data).as_bytes());
    }
    conn.producer = Some(Producer::snapshot(feed.last_id()));
}

/// A subscriber's snapshot (tagged `event_id`) is out: the events
/// published while it was made follow from the history. If the history
/// lost some of them meanwhile, a `gap` and a new snapshot, which must be
/// out by `reply_by`.
fn catch_up(conn: &mut HttpConn, feed: &Feed, event_id: u64, reply_by: Instant) {
    match feed.start(Some(event_id)) {
        Start::Replay(after) => {
            conn.reply_by = None;
            for message in feed.after(after) {
                conn.out.extend_from_slice(message.as_bytes());
            }
        }
        start => {
            conn.reply_by = Some(reply_by);
            begin_snapshot(conn, feed, start);
        }
    }
}

/// Queues an error response (JSON, as every API error), forgets the
/// request, and gives the reply until `reply_by`.
fn queue_error(conn: &mut HttpConn, status: u16, message: &str, reply_by: Instant) {
    conn.request = Vec::new();
    conn.phase = Phase::Replying;
    conn.reply_by = Some(reply_by);
    let body = routes::error_body(status, message);
    response_head(&mut conn.out, status, routes::ERROR_CONTENT_TYPE, Some(body.len()));
    conn.out.extend_from_slice(&body);
}

/// A response head; every response but the event stream closes after.
/// Without a `length` the body ends with the connection (RFC 9112 §6.3).
fn response_head(out: &mut Vec<u8>, status: u16, content_type: &str, length: Option<usize>) {
    let length = length.map(|n| format!("Content-Length: {n}\r\n")).unwrap_or_default();
    out.extend_from_slice(
        format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\n{length}\
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

/// Writes what is queued (over TLS, records sealed earlier first).
fn flush(conn: &mut HttpConn) -> Done {
    conn.stream.flush_sealed().map_err(|e| e.to_string())?;
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
        http.on_time(poll.registry(), now, &NoClients);
        assert_eq!(http.conns.len(), ACCEPT_BUDGET, "nothing more in the same round");

        let later = now + Duration::from_millis(1);
        http.on_time(poll.registry(), later, &NoClients);
        assert_eq!(http.conns.len(), flood, "the rest in the next round");
        assert_eq!(http.accept_again, None, "drained: no more immediate rounds");
    }

    /// `n` online clients, sessions 1..=n, served a page at a time.
    struct Crowd(Vec<ClientView>);

    impl View for Crowd {
        fn clients(&self, _: Option<&str>) -> Vec<ClientView> {
            self.0.clone()
        }
        fn clients_page(&self, _: Option<&str>, after: u64, limit: usize) -> Vec<ClientView> {
            self.0.iter().filter(|c| c.session > after).take(limit).cloned().collect()
        }
        fn client(&self, _: &str) -> Option<ClientView> {
            None
        }
        fn metrics(&self, _: &HttpStats) -> String {
            String::new()
        }
        fn health(&self) -> crate::api::Health {
            NoClients.health()
        }
    }

    /// A `/clients` reply of 10,000 clients (some 4 MB) to a client that
    /// never reads: the queue stays under its bound while the kernel is
    /// full, and the connection is dropped at `request_timeout`.
    #[test]
    fn an_unread_snapshot_is_bounded_and_dropped_at_the_request_timeout() {
        let text = "[http]\naddress = \"127.0.0.1:0\"\nrequest_timeout = \"1s\"\n\
                    [[listener]]\nname = \"t\"\naddress = \"127.0.0.1:0\"\n";
        let cfg = match crate::config::parse(text, "test.toml", std::path::Path::new("/nonexistent")) {
            Ok(c) => c.http.expect("http table"),
            Err(e) => panic!("config: {e}"),
        };
        let crowd = Crowd(
            (1..=10_000)
                .map(|s| ClientView {
                    flap: None,
                    id: format!("client-{s}"),
                    peer: "127.0.0.1:1".into(),
                    listener: "t".into(),
                    protocol: "native".into(),
                    session: s,
                    online_since: "2026-01-01T00:00:00.000Z".into(),
                    online_since_ms: 0,
                    last_activity_ms: 5,
                    heartbeats: s,
                    tcp: None,
                })
                .collect(),
        );
        let poll = Poll::new().expect("poll");
        let now = Instant::now();
        let base = 1000;
        let mut http = Http::bind(cfg, poll.registry(), base, now).expect("bind");
        // A small receive window, as a reader that stopped leaves: the
        // kernel then holds little of the reply.
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        socket.connect(&http.address().into()).expect("connect");
        let mut client: std::net::TcpStream = socket.into();
        std::thread::sleep(Duration::from_millis(20));
        http.handle(poll.registry(), Token(base), now, &crowd);
        // And a small send buffer on our side, so the kernel cannot hold
        // the 4 MB (loopback autotuning would let it).
        for (_, conn) in http.conns.iter() {
            socket2::SockRef::from(conn.stream.tcp()).set_send_buffer_size(4096).expect("SO_SNDBUF");
        }
        client.write_all(b"GET /clients HTTP/1.1\r\nHost: x\r\n\r\n").expect("request");
        std::thread::sleep(Duration::from_millis(20));
        http.handle(poll.registry(), Token(base + 1), now, &crowd);
        assert_eq!(http.conns.len(), 1, "the request is being answered");
        // Rounds until the kernel takes no more and the queue is full.
        for _ in 0..1000 {
            if http.next_deadline().is_none_or(|at| at > now) {
                break;
            }
            http.on_time(poll.registry(), now, &crowd);
        }
        let (_, conn) = http.conns.iter().next().expect("the connection is still open");
        assert!(conn.producer.is_some(), "4 MB cannot all be in the kernel's buffers");
        assert!(conn.out.len() <= OUT_HIGH + 128 * 1024, "queued {} bytes", conn.out.len());
        assert!(!conn.ready_to_produce(), "no page is made while the queue is full");
        http.on_time(poll.registry(), now + Duration::from_secs(1), &crowd);
        assert_eq!(http.conns.len(), 0, "an unread reply is dropped at request_timeout");
    }
}
