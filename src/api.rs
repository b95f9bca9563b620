//! The status API's contract: the JSON the daemon serves on `/clients` and
//! the client library (`heartbeat status`) reads back, and the read-only
//! [`View`] through which the HTTP layer sees the loop.
//!
//! Knows nothing about sockets or the loop: the daemon fills these types
//! (`status.rs`, `sockopt::tcp_info`), the HTTP layer encodes them
//! (`http::routes`), the client decodes them (`client::status`).
//!
//! Invariant: field names and order are the wire contract; serde derives
//! them from the declarations, so renaming or reordering a field changes
//! the API (tests/http_api.rs pins the output).

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

/// What the HTTP layer may read of the daemon.
pub trait View {
    /// Online clients, optionally of one listener, ordered by session.
    fn clients(&self, listener: Option<&str>) -> Vec<ClientView>;
    /// The online client with this id.
    fn client(&self, id: &str) -> Option<ClientView>;
    /// The Prometheus exposition, including the HTTP layer's own numbers.
    fn metrics(&self, http: &HttpStats) -> String;
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
}
