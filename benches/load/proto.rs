//! The client dialects the generator speaks: heartbeatd's `native` and
//! `legacy` protocols (through the daemon's own codecs), `websocket` (the
//! HTTP upgrade, then masked Pings answered by Pongs) and MQTT 3.1.1's
//! CONNECT / CONNACK / PINGREQ / PINGRESP.
//!
//! Each dialect gives a handshake to send after connecting, a heartbeat to
//! send, and a parser that classifies the server's bytes one message at a
//! time. A heartbeat's reply carries no payload the generator relies on:
//! round trips are matched first-in first-out per connection, which holds
//! for all three because each server answers a connection's heartbeats in
//! order.

use heartbeatd::wire::{legacy, native, websocket};

/// The largest native frame the generator accepts from a server.
const NATIVE_MAX_FRAME: usize = u16::MAX as usize;
/// The largest legacy payload the generator accepts from a server.
const LEGACY_MAX_FRAME: usize = 1 << 20;

/// MQTT control packet types (high nibble of the first byte).
mod mqtt {
    pub const CONNECT: u8 = 0x10;
    pub const CONNACK: u8 = 0x20;
    pub const PINGREQ: u8 = 0xC0;
    pub const PINGRESP: u8 = 0xD0;
}

/// A wire dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Proto {
    /// heartbeatd native: HELLO/WELCOME, then PING/PONG.
    Native,
    /// heartbeatd legacy `{int type; int length;}` with `echo = true`.
    Legacy,
    /// MQTT 3.1.1: CONNECT with a keepalive/CONNACK, then PINGREQ/PINGRESP.
    Mqtt,
    /// RFC 6455 against a `websocket` listener: the upgrade (`?id=`), then
    /// masked Pings answered by Pongs.
    Websocket,
}

/// What one message from the server means to the generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// The handshake was accepted (WELCOME, CONNACK 0).
    Accepted,
    /// The answer to one heartbeat (PONG, echoed header, PINGRESP).
    Beat,
    /// Anything else the server may send; ignored.
    Other,
    /// The server refused or ended the session (ERROR, BYE, CONNACK != 0).
    Refused,
}

impl Proto {
    /// Appends the handshake for client `id` to `out`; nothing for legacy,
    /// whose clients are online from connect. `keepalive_s` is MQTT's.
    pub fn handshake(self, id: &str, keepalive_s: u16, out: &mut Vec<u8>) {
        match self {
            Proto::Native => {
                native::encode(&native::Frame::Hello { version: native::VERSION, id, token: b"", probe: false }, out)
            }
            Proto::Legacy => {}
            Proto::Mqtt => {
                // Variable header: protocol name, level 4 (3.1.1), flags
                // (clean session), keepalive; payload: the client id.
                let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02];
                body.extend_from_slice(&keepalive_s.to_be_bytes());
                body.extend_from_slice(&(id.len() as u16).to_be_bytes());
                body.extend_from_slice(id.as_bytes());
                out.push(mqtt::CONNECT);
                push_remaining_length(body.len(), out);
                out.extend_from_slice(&body);
            }
            Proto::Websocket => out.extend_from_slice(
                format!(
                    "GET /?id={id} HTTP/1.1\r\nHost: heartbeatd\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                     Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
                )
                .as_bytes(),
            ),
        }
    }

    /// True when the client is online as soon as it is connected.
    pub fn online_at_connect(self) -> bool {
        self == Proto::Legacy
    }

    /// The bytes of one heartbeat.
    pub fn heartbeat(self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Proto::Native => native::encode(&native::Frame::Ping(b""), &mut out),
            // Type 0, length 0: the same 8 bytes the daemon echoes.
            Proto::Legacy => out.extend_from_slice(&legacy::HEARTBEAT_ECHO),
            Proto::Mqtt => out.extend_from_slice(&[mqtt::PINGREQ, 0]),
            Proto::Websocket => websocket::encode_masked(true, websocket::opcode::PING, b"", [7, 1, 8, 2], &mut out),
        }
        out
    }

    /// Classifies the first message in `buf`: `Ok(None)` when more bytes
    /// are needed, else the reply and the bytes it used.
    pub fn parse(self, buf: &[u8]) -> Result<Option<(Reply, usize)>, String> {
        match self {
            Proto::Native => {
                let Some((frame, used)) = native::decode(buf, NATIVE_MAX_FRAME).map_err(|e| e.to_string())? else {
                    return Ok(None);
                };
                let reply = match frame {
                    native::Frame::Welcome { .. } => Reply::Accepted,
                    native::Frame::Pong(_) => Reply::Beat,
                    native::Frame::Error { .. } | native::Frame::Bye(_) => Reply::Refused,
                    native::Frame::Ping(_) | native::Frame::Hello { .. } => Reply::Other,
                };
                Ok(Some((reply, used)))
            }
            Proto::Legacy => {
                let Some(header) = legacy::decode_header(buf, LEGACY_MAX_FRAME).map_err(|e| e.to_string())? else {
                    return Ok(None);
                };
                let used = legacy::HEADER_LEN + header.length;
                if buf.len() < used {
                    return Ok(None);
                }
                let reply = if header.kind == legacy::Kind::Heartbeat { Reply::Beat } else { Reply::Other };
                Ok(Some((reply, used)))
            }
            Proto::Mqtt => {
                let Some(&first) = buf.first() else { return Ok(None) };
                let Some((length, header_len)) = read_remaining_length(&buf[1..])? else {
                    return Ok(None);
                };
                let used = 1 + header_len + length;
                let Some(body) = buf.get(1 + header_len..used) else { return Ok(None) };
                let reply = match first & 0xF0 {
                    mqtt::CONNACK if body.get(1) == Some(&0) => Reply::Accepted,
                    mqtt::CONNACK => Reply::Refused,
                    mqtt::PINGRESP => Reply::Beat,
                    _ => Reply::Other,
                };
                Ok(Some((reply, used)))
            }
            Proto::Websocket => parse_websocket(buf),
        }
    }
}

/// The server's side of a websocket stream: its HTTP answer (101 is
/// accepted, anything else refused), then unmasked frames.
fn parse_websocket(buf: &[u8]) -> Result<Option<(Reply, usize)>, String> {
    if buf.starts_with(b"HTTP/") {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { return Ok(None) };
        let reply = if buf.starts_with(b"HTTP/1.1 101 ") { Reply::Accepted } else { Reply::Refused };
        return Ok(Some((reply, end + 4)));
    }
    let [b0, b1, rest @ ..] = buf else { return Ok(None) };
    let (len, header) = match b1 & 0x7F {
        126 => match rest {
            [hi, lo, ..] => (usize::from(u16::from_be_bytes([*hi, *lo])), 4),
            _ => return Ok(None),
        },
        127 => return Err("a server frame over 64 KiB".into()),
        n => (usize::from(n), 2),
    };
    if buf.len() < header + len {
        return Ok(None);
    }
    let reply = match b0 & 0x0F {
        websocket::opcode::PONG => Reply::Beat,
        websocket::opcode::CLOSE => Reply::Refused,
        _ => Reply::Other,
    };
    Ok(Some((reply, header + len)))
}

/// Appends MQTT's variable-length "remaining length".
fn push_remaining_length(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let byte = (n % 128) as u8;
        n /= 128;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Reads MQTT's "remaining length" at the start of `buf`: the length and
/// the bytes it took, `None` if incomplete.
fn read_remaining_length(buf: &[u8]) -> Result<Option<(usize, usize)>, String> {
    let mut value = 0usize;
    for (i, &byte) in buf.iter().enumerate().take(4) {
        value |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= 4 {
        return Err("MQTT remaining length longer than 4 bytes".into());
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtt_connect_bytes() {
        let mut out = Vec::new();
        Proto::Mqtt.handshake("c1", 10, &mut out);
        assert_eq!(out, [0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 10, 0, 2, b'c', b'1']);
    }

    #[test]
    fn mqtt_replies() {
        assert_eq!(Proto::Mqtt.parse(&[0x20, 2, 0, 0]), Ok(Some((Reply::Accepted, 4))));
        assert_eq!(Proto::Mqtt.parse(&[0x20, 2, 0, 5]), Ok(Some((Reply::Refused, 4))));
        assert_eq!(Proto::Mqtt.parse(&[0xD0, 0, 0xD0]), Ok(Some((Reply::Beat, 2))));
        assert_eq!(Proto::Mqtt.parse(&[0x20, 2, 0]), Ok(None));
        assert_eq!(Proto::Mqtt.heartbeat(), [0xC0, 0]);
    }

    #[test]
    fn native_and_legacy_replies() {
        assert_eq!(Proto::Native.parse(&[4, 0, 0, 0]), Ok(Some((Reply::Beat, 4))));
        assert_eq!(Proto::Native.heartbeat(), [3, 0, 0, 0]);
        assert_eq!(Proto::Legacy.parse(&[0; 8]), Ok(Some((Reply::Beat, 8))));
        assert_eq!(Proto::Legacy.parse(&[0; 7]), Ok(None));
    }

    #[test]
    fn websocket_replies() {
        let upgrade = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n";
        assert_eq!(Proto::Websocket.parse(upgrade), Ok(Some((Reply::Accepted, upgrade.len()))));
        assert_eq!(Proto::Websocket.parse(b"HTTP/1.1 403 Forbidden\r\n\r\n"), Ok(Some((Reply::Refused, 26))));
        assert_eq!(Proto::Websocket.parse(b"HTTP/1.1 101"), Ok(None));
        assert_eq!(Proto::Websocket.parse(&[0x8A, 0]), Ok(Some((Reply::Beat, 2))));
        assert_eq!(Proto::Websocket.parse(&[0x89, 0, 0x8A]), Ok(Some((Reply::Other, 2))));
        assert_eq!(Proto::Websocket.parse(&[0x88, 2, 3]), Ok(None));
        let ping = Proto::Websocket.heartbeat();
        assert_eq!(websocket::deframe_all(&ping, 0).1, None, "a valid masked client Ping");
    }

    #[test]
    fn remaining_length_round_trip() {
        for n in [0, 127, 128, 16_383, 16_384, 2_097_151] {
            let mut out = Vec::new();
            push_remaining_length(n, &mut out);
            assert_eq!(read_remaining_length(&out), Ok(Some((n, out.len()))));
        }
    }
}
