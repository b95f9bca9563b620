//! Which wire protocol a listener speaks: the names of PROTOCOL.md's
//! protocols and of `websocket` (RFC 6455, for browsers), as config files and log lines spell them.
//!
//! Invariant: [`Protocol::as_str`], [`fmt::Display`] and [`FromStr`] agree,
//! so every name the daemon prints parses back to the same protocol.

use std::fmt;
use std::str::FromStr;

/// Which wire protocol a listener speaks (PROTOCOL.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// Framed protocol with HELLO/WELCOME/PING/PONG/BYE/ERROR.
    Native,
    /// `{int type; int length;}` little-endian struct.
    Legacy,
    /// Any byte is activity.
    Raw,
    /// RFC 6455 WebSocket after an HTTP/1.1 upgrade: the daemon pings,
    /// any frame is activity (browsers answer pings themselves).
    WebSocket,
}

impl Protocol {
    /// Every protocol, in the order config errors list them.
    pub const ALL: [Protocol; 4] = [Protocol::Native, Protocol::Legacy, Protocol::Raw, Protocol::WebSocket];

    /// The name used in config files and log lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Native => "native",
            Protocol::Legacy => "legacy",
            Protocol::Raw => "raw",
            Protocol::WebSocket => "websocket",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A protocol name that is none of [`Protocol::ALL`]; holds the name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownProtocol(pub String);

impl fmt::Display for UnknownProtocol {
    /// The config error's message, naming what would be right.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown protocol {:?}: use native, legacy, raw or websocket", self.0)
    }
}

impl std::error::Error for UnknownProtocol {}

impl FromStr for Protocol {
    type Err = UnknownProtocol;

    /// Exact, lower-case names only: a config says `native`, never `Native`.
    fn from_str(name: &str) -> Result<Protocol, UnknownProtocol> {
        Protocol::ALL.into_iter().find(|p| p.as_str() == name).ok_or_else(|| UnknownProtocol(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for protocol in Protocol::ALL {
            assert_eq!(protocol.to_string(), protocol.as_str());
            assert_eq!(protocol.as_str().parse::<Protocol>(), Ok(protocol));
        }
        assert_eq!(Protocol::Legacy.to_string(), "legacy");
        assert_eq!("websocket".parse::<Protocol>(), Ok(Protocol::WebSocket));
    }

    #[test]
    fn unknown_names_are_refused_with_the_choices() {
        for bad in ["", "Native", "RAW", "http", " native", "ws", "WebSocket"] {
            let e = bad.parse::<Protocol>().unwrap_err();
            assert_eq!(e.to_string(), format!("unknown protocol {bad:?}: use native, legacy, raw or websocket"));
        }
    }
}
