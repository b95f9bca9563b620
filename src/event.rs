//! Online/offline events and how each sink renders them.
//!
//! One [`Event`] per state change of a client. The loop hands every event
//! to each sink, and every sink reads the same struct: [`emit`] writes it
//! to the journal with structured fields (`HEARTBEAT_*`, a `MESSAGE_ID` per
//! kind) or, off the journal, as one logfmt line through `log`; the HTTP
//! feed renders it as a Server-Sent Event (`http::feed`); the counters
//! count it (`metrics`).
//!
//! Invariant (kept by the loop, relied on by every sink): each client that
//! goes online produces exactly one offline event, with one reason.

use std::fmt::{self, Write as _};
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use crate::journal::Journal;
use crate::wire::Protocol;

/// Why a client went offline (PROTOCOL.md "Offline reasons").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OfflineReason {
    /// No activity for the listener's timeout.
    Timeout,
    /// The peer closed its side (FIN) without BYE.
    Closed,
    /// The peer reset the connection (RST).
    Reset,
    /// The kernel gave up: keepalive probes unanswered or `TCP_USER_TIMEOUT`.
    TcpTimeout,
    /// BYE from the client.
    Left,
    /// A newer connection said HELLO with the same id.
    Replaced,
    /// Malformed input from the client.
    ProtocolError,
    /// The client stopped reading and its output queue hit its bound.
    WriteStalled,
    /// The daemon is stopping, or the client's listener was removed.
    Shutdown,
    /// Any other I/O error.
    Error,
}

impl OfflineReason {
    /// Every reason, in PROTOCOL.md order.
    pub const ALL: [OfflineReason; 10] = [
        OfflineReason::Timeout,
        OfflineReason::Closed,
        OfflineReason::Reset,
        OfflineReason::TcpTimeout,
        OfflineReason::Left,
        OfflineReason::Replaced,
        OfflineReason::ProtocolError,
        OfflineReason::WriteStalled,
        OfflineReason::Shutdown,
        OfflineReason::Error,
    ];

    /// The name used on the wire of logs: `timeout`, `tcp-timeout`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            OfflineReason::Timeout => "timeout",
            OfflineReason::Closed => "closed",
            OfflineReason::Reset => "reset",
            OfflineReason::TcpTimeout => "tcp-timeout",
            OfflineReason::Left => "left",
            OfflineReason::Replaced => "replaced",
            OfflineReason::ProtocolError => "protocol-error",
            OfflineReason::WriteStalled => "write-stalled",
            OfflineReason::Shutdown => "shutdown",
            OfflineReason::Error => "error",
        }
    }

    /// The reason a socket error stands for, on either end of a
    /// connection: the one errno table the daemon (its clients' sockets)
    /// and the agent (its socket to the daemon) both classify with.
    ///
    /// `WouldBlock` is a reason only on a blocking socket with a send or
    /// receive timeout (the agent's): the peer took nothing for that whole
    /// timeout. Non-blocking callers (the daemon) retry on it instead and
    /// never pass it here.
    pub fn from_io_error(e: &io::Error) -> OfflineReason {
        match e.raw_os_error() {
            Some(libc::ECONNRESET | libc::ECONNABORTED) => OfflineReason::Reset,
            Some(libc::EPIPE) => OfflineReason::Closed,
            // The kernel's verdict after unanswered keepalive probes or an
            // expired TCP_USER_TIMEOUT is ETIMEDOUT, unless an ICMP error was
            // seen meanwhile, in which case it reports that soft error instead.
            Some(libc::ETIMEDOUT | libc::EHOSTUNREACH | libc::ENETUNREACH) => OfflineReason::TcpTimeout,
            Some(libc::EAGAIN) => OfflineReason::Timeout,
            _ => OfflineReason::Error,
        }
    }

    /// True for departures that are not losses (the client or the operator
    /// chose them): logged at a lower level than real losses.
    pub fn is_orderly(self) -> bool {
        matches!(self, OfflineReason::Left | OfflineReason::Shutdown)
    }
}

impl fmt::Display for OfflineReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who an event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client<'a> {
    /// The HELLO id (native) or the peer address (legacy, raw).
    pub id: &'a str,
    /// The peer's address.
    pub peer: SocketAddr,
    /// The listener's name.
    pub listener: &'a str,
    /// The listener's protocol.
    pub proto: Protocol,
    /// The connection's session number, unique for the daemon's lifetime.
    pub session: u64,
}

/// A change in a client's liveness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<'a> {
    /// The client completed its handshake (native) or connected.
    Online(Client<'a>),
    /// The client is gone.
    Offline {
        /// Who.
        client: Client<'a>,
        /// Why.
        reason: OfflineReason,
        /// Time since its last activity.
        silent: Duration,
        /// Time since it went online.
        connected: Duration,
        /// The I/O error or protocol violation behind the reason, if any.
        detail: Option<&'a str>,
    },
}

impl Event<'_> {
    /// The client the event is about.
    pub fn client(&self) -> &Client<'_> {
        match self {
            Event::Online(c) => c,
            Event::Offline { client, .. } => client,
        }
    }

    /// The log level sinks use: online info, orderly offline info, loss warn.
    pub fn level(&self) -> log::Level {
        match self {
            Event::Online(_) => log::Level::Info,
            Event::Offline { reason, .. } if reason.is_orderly() => log::Level::Info,
            Event::Offline { .. } => log::Level::Warn,
        }
    }
}

impl fmt::Display for Event<'_> {
    /// The logfmt line of DESIGN.md, stable keys in a fixed order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Online(c) => {
                write!(
                    f,
                    "online client={} peer={} listener={} protocol={} session={}",
                    Logfmt(c.id),
                    c.peer,
                    Logfmt(c.listener),
                    c.proto,
                    c.session
                )
            }
            Event::Offline { client: c, reason, silent, connected, detail } => {
                write!(
                    f,
                    "offline client={} peer={} listener={} session={} reason={} silent_ms={} connected_ms={}",
                    Logfmt(c.id),
                    c.peer,
                    Logfmt(c.listener),
                    c.session,
                    reason,
                    silent.as_millis(),
                    connected.as_millis()
                )?;
                if let Some(detail) = detail {
                    write!(f, " detail={}", Logfmt(detail))?;
                }
                Ok(())
            }
        }
    }
}

/// `MESSAGE_ID` of online entries in the journal (`journalctl MESSAGE_ID=`).
pub const ONLINE_MESSAGE_ID: &str = "63afbcb1e38d4286acff0c8413f84386";
/// `MESSAGE_ID` of offline entries in the journal.
pub const OFFLINE_MESSAGE_ID: &str = "68e19412304e4ded9351b4b657847036";

impl Event<'_> {
    /// The syslog priority under journald: online info (6), orderly offline
    /// notice (5), loss warning (4), so `journalctl -p warning` shows
    /// exactly the losses.
    pub fn priority(&self) -> u8 {
        match self {
            Event::Online(_) => 6,
            Event::Offline { reason, .. } if reason.is_orderly() => 5,
            Event::Offline { .. } => 4,
        }
    }

    /// Sends the event as a journal entry: the logfmt line as `MESSAGE`,
    /// plus `HEARTBEAT_*` fields and a fixed `MESSAGE_ID` per kind.
    fn to_journal(&self, journal: &Journal) {
        let message = self.to_string();
        let c = self.client();
        let (peer, session, priority) = (c.peer.to_string(), c.session.to_string(), self.priority().to_string());
        let mut fields = vec![
            ("MESSAGE", message.as_str()),
            ("PRIORITY", priority.as_str()),
            ("SYSLOG_IDENTIFIER", crate::journal::IDENTIFIER),
            ("HEARTBEAT_CLIENT", c.id),
            ("HEARTBEAT_PEER", peer.as_str()),
            ("HEARTBEAT_LISTENER", c.listener),
            ("HEARTBEAT_PROTOCOL", c.proto.as_str()),
            ("HEARTBEAT_SESSION", session.as_str()),
        ];
        let (silent, connected);
        match self {
            Event::Online(_) => {
                fields.push(("MESSAGE_ID", ONLINE_MESSAGE_ID));
                fields.push(("HEARTBEAT_EVENT", "online"));
            }
            Event::Offline { reason, silent: s, connected: d, .. } => {
                (silent, connected) = (s.as_millis().to_string(), d.as_millis().to_string());
                fields.push(("MESSAGE_ID", OFFLINE_MESSAGE_ID));
                fields.push(("HEARTBEAT_EVENT", "offline"));
                fields.push(("HEARTBEAT_REASON", reason.as_str()));
                fields.push(("HEARTBEAT_SILENT_MS", silent.as_str()));
                fields.push(("HEARTBEAT_CONNECTED_MS", connected.as_str()));
            }
        }
        crate::logging::to_journal(journal, &message, &fields);
    }
}

/// Hands an event to every sink: the journal with structured fields when
/// the daemon logs there, the log otherwise. Events below the configured
/// log level are dropped like any other line.
pub fn emit(event: &Event<'_>) {
    if !log::log_enabled!(event.level()) {
        return;
    }
    match crate::logging::journal() {
        Some(journal) => event.to_journal(journal),
        None => log::log!(event.level(), "{event}"),
    }
}

/// A logfmt value: written bare when it is safe, else double-quoted with
/// `"` and `\` escaped and control characters as `\u{..}`, so one value can
/// never split a line or forge a key.
pub struct Logfmt<'a>(pub &'a str);

impl fmt::Display for Logfmt<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bare =
            !self.0.is_empty() && self.0.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'=' && b != b'\\');
        if bare {
            return f.write_str(self.0);
        }
        f.write_char('"')?;
        for ch in self.0.chars() {
            match ch {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                c if c.is_control() => write!(f, "\\u{{{:x}}}", c as u32)?,
                c => f.write_char(c)?,
            }
        }
        f.write_char('"')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> Client<'static> {
        Client {
            id: "dev-42",
            peer: "10.0.0.7:51234".parse().expect("addr"),
            listener: "main",
            proto: Protocol::Native,
            session: 17,
        }
    }

    #[test]
    fn online_line_matches_design() {
        assert_eq!(
            Event::Online(client()).to_string(),
            "online client=dev-42 peer=10.0.0.7:51234 listener=main protocol=native session=17"
        );
    }

    #[test]
    fn offline_line_matches_design() {
        let e = Event::Offline {
            client: client(),
            reason: OfflineReason::Timeout,
            silent: Duration::from_millis(15012),
            connected: Duration::from_millis(10922113),
            detail: None,
        };
        assert_eq!(
            e.to_string(),
            "offline client=dev-42 peer=10.0.0.7:51234 listener=main session=17 reason=timeout silent_ms=15012 connected_ms=10922113"
        );
        assert_eq!(e.level(), log::Level::Warn);
    }

    #[test]
    fn orderly_reasons_are_info() {
        for reason in OfflineReason::ALL {
            let e = Event::Offline {
                client: client(),
                reason,
                silent: Duration::ZERO,
                connected: Duration::ZERO,
                detail: None,
            };
            let want = if reason.is_orderly() { log::Level::Info } else { log::Level::Warn };
            assert_eq!(e.level(), want, "{reason}");
        }
    }

    #[test]
    fn socket_errors_classify_as_the_kernel_means_them() {
        let of = |errno| OfflineReason::from_io_error(&io::Error::from_raw_os_error(errno));
        assert_eq!(of(libc::ECONNRESET), OfflineReason::Reset);
        assert_eq!(of(libc::ECONNABORTED), OfflineReason::Reset);
        assert_eq!(of(libc::EPIPE), OfflineReason::Closed);
        assert_eq!(of(libc::ETIMEDOUT), OfflineReason::TcpTimeout);
        assert_eq!(of(libc::EHOSTUNREACH), OfflineReason::TcpTimeout);
        assert_eq!(of(libc::ENETUNREACH), OfflineReason::TcpTimeout);
        assert_eq!(of(libc::EAGAIN), OfflineReason::Timeout);
        assert_eq!(of(libc::EBADF), OfflineReason::Error);
        let custom = io::Error::new(io::ErrorKind::WriteZero, "write returned 0");
        assert_eq!(OfflineReason::from_io_error(&custom), OfflineReason::Error);
    }

    #[test]
    fn logfmt_quotes_what_could_break_a_line() {
        assert_eq!(Logfmt("plain").to_string(), "plain");
        assert_eq!(Logfmt("").to_string(), "\"\"");
        assert_eq!(Logfmt("a=b").to_string(), "\"a=b\"");
        assert_eq!(Logfmt("say \"hi\"").to_string(), "\"say \\\"hi\\\"\"");
        assert_eq!(Logfmt("a\nb").to_string(), "\"a\\u{a}b\"");
        assert_eq!(Logfmt("back\\slash").to_string(), "\"back\\\\slash\"");
    }
}
