//! The status API's contract: the JSON the daemon serves on `/clients`
//! (which the client library, `heartbeat status`, reads back) and in the
//! `/events` feed, and the read-only [`View`] through which the HTTP layer
//! sees the loop.
//!
//! Knows nothing about sockets or the loop: the daemon fills these types
//! (`status.rs`, `sockopt::tcp_info`, the feed), the HTTP layer encodes
//! them (`http::routes`, `http::feed`), the client decodes them
//! (`client::status`).
//!
//! Invariant: field names and order are the wire contract; serde derives
//! them from the declarations, so renaming or reordering a field changes
//! the API (tests/http_api.rs pins the output, and so do the unit tests
//! below).

use serde::{Deserialize, Serialize};

/// One online client as `/clients` shows it (and `heartbeat status` reads
/// it back).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClientView {
    /// HELLO id, or the peer address for legacy and raw clients.
    pub id: String,
    /// Peer address.
    pub peer: String,
    /// Listener name.
    pub listener: String,
    /// `native`, `legacy` or `raw`.
    pub protocol: String,
    /// Session number.
    pub session: u64,
    /// When it went online, RFC 3339 UTC.
    pub online_since: String,
    /// The same instant in Unix milliseconds.
    pub online_since_ms: u64,
    /// Milliseconds since its last activity.
    pub last_activity_ms: u64,
    /// Frames received that counted as activity.
    pub heartbeats: u64,
    /// The kernel's view (`TCP_INFO`), when readable.
    pub tcp: Option<TcpView>,
    /// Flap damping (hooks), for a client that went offline recently;
    /// absent otherwise, and from daemons without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flap: Option<FlapView>,
}

/// A client's flap damping state: the penalty (offlines, each +1, halving
/// every 60 s) and whether its hooks are suppressed (above 3 until below 1).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct FlapView {
    /// Its hooks are suppressed now.
    pub flapping: bool,
    /// The decayed count of recent offlines.
    pub penalty: f64,
}

/// One client as `/clients?state=all` lists it: every online client and
/// every expected one (`expect`), whatever its state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PresenceView {
    /// HELLO id, or the peer address for legacy and raw clients.
    pub id: String,
    /// Listener name.
    pub listener: String,
    /// `online`, `offline` or `never-seen` (since the daemon started or
    /// the id was added to `expect`).
    pub state: String,
    /// Listed in its listener's `expect`.
    pub expected: bool,
    /// Since when it is in this state, RFC 3339 UTC.
    pub since: String,
    /// The same instant in Unix milliseconds.
    pub since_ms: u64,
    /// The reason of the last offline, when offline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Its session, when online.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<u64>,
    /// Its peer address, when online.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
}

/// The kernel's view of a connection (`TCP_INFO`), the fields operators ask
/// for: what `sockopt::tcp_info` reads and `/clients` shows as `tcp`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct TcpView {
    /// Smoothed round-trip time, microseconds.
    pub rtt_us: u32,
    /// Round-trip time variance, microseconds.
    pub rttvar_us: u32,
    /// Segments retransmitted over the connection's life.
    pub retransmits: u32,
    /// Segments sent and not yet acknowledged.
    pub unacked: u32,
}

/// One online or offline event as the `/events` feed's `data:` JSON
/// (`heartbeat watch` prints these fields).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct EventView<'a> {
    /// `online` or `offline`, as the SSE `event:` field.
    pub event: &'static str,
    /// HELLO id, or the peer address for legacy and raw clients.
    pub client: &'a str,
    /// Peer address.
    pub peer: String,
    /// Listener name.
    pub listener: &'a str,
    /// `native`, `legacy` or `raw`.
    pub protocol: &'static str,
    /// Session number.
    pub session: u64,
    /// When the event happened, RFC 3339 UTC.
    pub at: String,
    /// The same instant in Unix milliseconds.
    pub at_ms: u64,
    /// Offline only: the reason (`timeout`, `reset`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// Offline only: milliseconds since the client's last activity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub silent_ms: Option<u64>,
    /// Offline only: milliseconds it was online.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connected_ms: Option<u64>,
}

/// What `GET /healthz` answers: the daemon is up, its loop turns, and how
/// late it has been (rule R2).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Health {
    /// Always `ok`: a daemon that answers is up.
    pub status: &'static str,
    /// Milliseconds since the process started.
    pub uptime_ms: u64,
    /// Clients online now (probes never are).
    pub online: u64,
    /// Client connections open, online or not.
    pub connections: u64,
    /// How late the last round of the loop was, in milliseconds: its sleep's
    /// overrun plus the time it took (normally 0).
    pub lag_ms: u64,
    /// The length of the last stall longer than `daemon.max_local_pause`,
    /// in milliseconds (0 before any).
    pub last_stall_ms: u64,
    /// Stalls longer than `daemon.max_local_pause` since start.
    pub loop_stalls: u64,
}

/// What the HTTP layer may read of the daemon.
pub trait View {
    /// Online clients, optionally of one listener, ordered by session.
    fn clients(&self, listener: Option<&str>) -> Vec<ClientView>;
    /// At most `limit` of those clients, the first ones with a session
    /// after `after`: one page of a snapshot made a page at a time
    /// (`http::snapshot`). The daemon's view finds them without rendering
    /// the others.
    fn clients_page(&self, listener: Option<&str>, after: u64, limit: usize) -> Vec<ClientView> {
        self.clients(listener).into_iter().filter(|c| c.session > after).take(limit).collect()
    }
    /// The online client with this id.
    fn client(&self, id: &str) -> Option<ClientView>;
    /// The Prometheus exposition, including the HTTP layer's own numbers.
    fn metrics(&self, http: &HttpStats) -> String;
    /// The `/healthz` answer.
    fn health(&self) -> Health;
    /// `/clients?state=all`: every online client and every expected one,
    /// optionally of one listener. None by default (a view without
    /// expected clients lists nothing).
    fn presence(&self, listener: Option<&str>) -> Vec<PresenceView> {
        let _ = listener;
        Vec::new()
    }
}

/// The HTTP layer's own numbers, handed to [`View::metrics`] for
/// `/metrics`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HttpStats {
    /// Requests answered.
    pub requests: u64,
    /// Event subscribers connected now.
    pub subscribers: u64,
    /// Event subscribers dropped for not reading.
    pub subscribers_dropped: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The field names and their order are the contract `heartbeat status`
    /// and scripts read.
    #[test]
    fn client_json_has_the_contract_field_order() {
        let client = ClientView {
            id: "dev-42".into(),
            peer: "10.0.0.7:51234".into(),
            listener: "main".into(),
            protocol: "native".into(),
            session: 17,
            online_since: "2026-01-01T00:00:00.000Z".into(),
            online_since_ms: 1_767_225_600_000,
            last_activity_ms: 5,
            heartbeats: 2,
            tcp: Some(TcpView { rtt_us: 1500, rttvar_us: 10, retransmits: 0, unacked: 1 }),
            flap: None,
        };
        let json = serde_json::to_string(&client).expect("json");
        assert_eq!(
            json,
            "{\"id\":\"dev-42\",\"peer\":\"10.0.0.7:51234\",\"listener\":\"main\",\"protocol\":\"native\",\
             \"session\":17,\"online_since\":\"2026-01-01T00:00:00.000Z\",\"online_since_ms\":1767225600000,\
             \"last_activity_ms\":5,\"heartbeats\":2,\
             \"tcp\":{\"rtt_us\":1500,\"rttvar_us\":10,\"retransmits\":0,\"unacked\":1}}"
        );
        assert_eq!(serde_json::from_str::<ClientView>(&json).expect("decodes"), client);
        let without: ClientView = serde_json::from_str(
            &json.replace("{\"rtt_us\":1500,\"rttvar_us\":10,\"retransmits\":0,\"unacked\":1}", "null"),
        )
        .expect("decodes");
        assert_eq!(without.tcp, None);
    }

    #[test]
    fn offline_event_json_has_the_contract_field_order() {
        let event = EventView {
            event: "offline",
            client: "dev-42",
            peer: "10.0.0.7:51234".into(),
            listener: "main",
            protocol: "native",
            session: 17,
            at: "2026-01-01T00:00:00.000Z".into(),
            at_ms: 1_767_225_600_000,
            reason: Some("timeout"),
            silent_ms: Some(15012),
            connected_ms: Some(20000),
        };
        assert_eq!(
            serde_json::to_string(&event).expect("json"),
            "{\"event\":\"offline\",\"client\":\"dev-42\",\"peer\":\"10.0.0.7:51234\",\"listener\":\"main\",\
             \"protocol\":\"native\",\"session\":17,\"at\":\"2026-01-01T00:00:00.000Z\",\"at_ms\":1767225600000,\
             \"reason\":\"timeout\",\"silent_ms\":15012,\"connected_ms\":20000}"
        );
        // Online events carry no offline fields at all, not nulls.
        let online = EventView { event: "online", reason: None, silent_ms: None, connected_ms: None, ..event };
        let json = serde_json::to_string(&online).expect("json");
        assert!(json.ends_with("\"at_ms\":1767225600000}"), "{json}");
    }
}
