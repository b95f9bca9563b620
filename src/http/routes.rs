//! What each URL answers: pure functions from a parsed request and a
//! read-only [`View`] of the daemon to a [`Reply`].
//!
//! | method, path | reply |
//! |---|---|
//! | `GET /` | the dashboard page (HTML, no external assets) |
//! | `GET /clients[?listener=NAME]` | JSON array of online clients, in session order (made by `snapshot`) |
//! | `GET /clients?state=all[&listener=NAME]` | every online and every expected client, with its state |
//! | `GET /clients/{id}` | one client, or 404 |
//! | `GET /metrics` | Prometheus text exposition |
//! | `GET /events` | Server-Sent Events feed (see `feed`) |
//! | `GET /healthz` | 200 and a JSON object: up, uptime, online count, the loop's lag and last stall |
//! | anything else | 404, or 405 for a method other than GET/HEAD |
//!
//! Invariant: every error reply (4xx, 5xx) is [`Reply::error`]: a JSON
//! object `{"error": "<what went wrong, and what to try>", "status": N}`
//! served as `application/json`, the same shape for every path.

use serde::Serialize;

use crate::api::{HttpStats, View};

/// The dashboard, built into the binary.
const DASHBOARD: &str = include_str!("dashboard.html");

/// The answer to a request.
#[derive(Debug, PartialEq)]
pub enum Reply {
    /// A complete response.
    Full {
        /// HTTP status code.
        status: u16,
        /// `Content-Type`.
        content_type: &'static str,
        /// The body (sent as headers only for HEAD).
        body: Vec<u8>,
    },
    /// The list of online clients, optionally of one listener: made a page
    /// at a time as the socket drains (`snapshot`).
    Clients {
        /// The `listener=` query parameter.
        listener: Option<String>,
    },
    /// Switch the connection to the event stream.
    Events {
        /// The `Last-Event-ID` header, when present and numeric.
        last_event_id: Option<u64>,
    },
}

impl Reply {
    /// An error response: `{"error": message, "status": status}`.
    pub fn error(status: u16, message: &str) -> Reply {
        Reply::Full { status, content_type: ERROR_CONTENT_TYPE, body: error_body(status, message) }
    }

    fn json(value: &impl Serialize) -> Reply {
        match serde_json::to_vec_pretty(value) {
            Ok(mut body) => {
                body.push(b'\n');
                Reply::Full { status: 200, content_type: "application/json", body }
            }
            Err(e) => Reply::error(500, &format!("encoding JSON: {e}")),
        }
    }
}

/// The `Content-Type` of every error response.
pub const ERROR_CONTENT_TYPE: &str = "application/json";

/// The body of an error response, newline-terminated like every JSON
/// reply: `{"error": message, "status": status}`.
pub fn error_body(status: u16, message: &str) -> Vec<u8> {
    let mut body = serde_json::json!({ "error": message, "status": status }).to_string().into_bytes();
    body.push(b'\n');
    body
}

/// The reason phrase of a status code this server uses.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Answers one request. `target` is the request target as sent (path and
/// query); `last_event_id` is the `Last-Event-ID` header, if any.
pub fn route(method: &str, target: &str, last_event_id: Option<&str>, view: &dyn View, stats: &HttpStats) -> Reply {
    if method != "GET" && method != "HEAD" {
        return Reply::error(405, "only GET and HEAD are served");
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    match path {
        "/" | "/index.html" => {
            Reply::Full { status: 200, content_type: "text/html; charset=utf-8", body: DASHBOARD.as_bytes().to_vec() }
        }
        "/clients" => {
            let listener = query_param(query, "listener");
            match query_param(query, "state").as_deref() {
                None | Some("online") => Reply::Clients { listener },
                Some("all") => Reply::json(&view.presence(listener.as_deref())),
                Some(other) => Reply::error(400, &format!("unknown state {other:?}: use state=online or state=all")),
            }
        }
        "/metrics" => Reply::Full {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: view.metrics(stats).into_bytes(),
        },
        "/healthz" => Reply::json(&view.health()),
        "/events" => Reply::Events { last_event_id: last_event_id.and_then(|v| v.trim().parse().ok()) },
        _ => match path.strip_prefix("/clients/").map(percent_decode) {
            Some(Some(id)) => match view.client(&id) {
                Some(client) => Reply::json(&client),
                None => Reply::error(404, &format!("no client {id:?} is online")),
            },
            Some(None) => Reply::error(400, "malformed percent-encoding in the client id"),
            None => Reply::error(404, "not found: try /, /clients, /clients/{id}, /metrics, /events or /healthz"),
        },
    }
}

/// The decoded value of `name` in a query string.
fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| percent_decode(&value.replace('+', " "))).flatten()
    })
}

/// Decodes `%XX` escapes; `None` for a malformed escape or non-UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ClientView;

    struct Fixed(Vec<ClientView>);

    const STATS: HttpStats = HttpStats { requests: 1, subscribers: 0, subscribers_dropped: 0 };

    impl View for Fixed {
        fn clients(&self, listener: Option<&str>) -> Vec<ClientView> {
            self.0.iter().filter(|c| listener.is_none_or(|l| c.listener == l)).cloned().collect()
        }
        fn client(&self, id: &str) -> Option<ClientView> {
            self.0.iter().find(|c| c.id == id).cloned()
        }
        fn metrics(&self, stats: &HttpStats) -> String {
            format!("m {}\n", stats.requests)
        }
        fn health(&self) -> crate::api::Health {
            crate::api::Health {
                status: "ok",
                uptime_ms: 3,
                online: self.0.len() as u64,
                connections: 2,
                lag_ms: 1,
                last_stall_ms: 3000,
                loop_stalls: 1,
            }
        }
    }

    fn view() -> Fixed {
        let client = |id: &str, listener: &str| ClientView {
            id: id.into(),
            peer: "127.0.0.1:1".into(),
            listener: listener.into(),
            protocol: "native".into(),
            session: 1,
            online_since: "2026-01-01T00:00:00.000Z".into(),
            online_since_ms: 0,
            last_activity_ms: 5,
            heartbeats: 2,
            tcp: None,
            flap: None,
        };
        Fixed(vec![client("a/b c", "main"), client("z", "other")])
    }

    fn status(reply: &Reply) -> u16 {
        match reply {
            Reply::Full { status, .. } => *status,
            Reply::Clients { .. } | Reply::Events { .. } => 0,
        }
    }

    fn body(reply: &Reply) -> String {
        match reply {
            Reply::Full { body, .. } => String::from_utf8_lossy(body).into_owned(),
            Reply::Clients { .. } | Reply::Events { .. } => String::new(),
        }
    }

    #[test]
    fn routes_answer_what_the_table_says() {
        let v = view();
        assert_eq!(status(&route("GET", "/", None, &v, &STATS)), 200);
        assert!(body(&route("GET", "/", None, &v, &STATS)).contains("<html"));
        assert_eq!(route("GET", "/clients", None, &v, &STATS), Reply::Clients { listener: None });
        assert_eq!(
            route("GET", "/clients?listener=main", None, &v, &STATS),
            Reply::Clients { listener: Some("main".into()) }
        );
        let health: serde_json::Value =
            serde_json::from_str(&body(&route("GET", "/healthz", None, &v, &STATS))).expect("json");
        assert_eq!(
            health,
            serde_json::json!({"status": "ok", "uptime_ms": 3, "online": 2, "connections": 2,
                               "lag_ms": 1, "last_stall_ms": 3000, "loop_stalls": 1})
        );
        let one = route("GET", "/clients/a%2Fb%20c", None, &v, &STATS);
        assert_eq!(status(&one), 200, "{}", body(&one));
        assert_eq!(status(&route("GET", "/clients/nobody", None, &v, &STATS)), 404);
        assert_eq!(status(&route("GET", "/clients/%zz", None, &v, &STATS)), 400);
        assert_eq!(body(&route("GET", "/metrics", None, &v, &STATS)), "m 1\n");
        assert_eq!(route("GET", "/events", Some(" 42 "), &v, &STATS), Reply::Events { last_event_id: Some(42) });
        assert_eq!(route("GET", "/events", Some("junk"), &v, &STATS), Reply::Events { last_event_id: None });
        assert_eq!(status(&route("POST", "/clients", None, &v, &STATS)), 405);
        assert_eq!(status(&route("GET", "/nope", None, &v, &STATS)), 404);
    }

    /// Every error the router gives is `{"error": "...", "status": N}` as
    /// `application/json`, so scripts parse one shape whatever went wrong.
    #[test]
    fn errors_are_json_with_the_status_inside() {
        let v = view();
        for (method, target, expected) in [
            ("GET", "/clients/nope", 404),
            ("GET", "/nope", 404),
            ("GET", "/clients/%zz", 400),
            ("POST", "/clients", 405),
            ("DELETE", "/", 405),
        ] {
            let reply = route(method, target, None, &v, &STATS);
            let Reply::Full { status, content_type, body } = &reply else { panic!("{method} {target}: {reply:?}") };
            assert_eq!(*status, expected, "{method} {target}");
            assert_eq!(*content_type, "application/json", "{method} {target}");
            let json: serde_json::Value = serde_json::from_slice(body).expect("an error body is JSON");
            assert_eq!(json["status"], expected, "{method} {target}: {json}");
            let message = json["error"].as_str().unwrap_or_else(|| panic!("no error text: {json}"));
            assert!(!message.is_empty(), "{method} {target}: {json}");
            assert_eq!(json.as_object().map(|o| o.len()), Some(2), "only error and status: {json}");
        }
        let missing: serde_json::Value =
            serde_json::from_str(&body(&route("GET", "/clients/nope", None, &v, &STATS))).expect("json");
        assert_eq!(missing["error"], "no client \"nope\" is online", "the message names the id");
    }

    #[test]
    fn percent_decoding_rejects_what_is_malformed() {
        assert_eq!(percent_decode("a%20b").as_deref(), Some("a b"));
        assert_eq!(percent_decode("%"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%ff"), None);
        assert_eq!(query_param("a=1&listener=x%2Dy", "listener").as_deref(), Some("x-y"));
        assert_eq!(query_param("listener", "listener").as_deref(), Some(""));
    }
}
