//! The WebSocket protocol (RFC 6455) as a heartbeat server needs it, without
//! I/O: the HTTP/1.1 upgrade request and its answers, and a deframer and
//! encoder for frames.
//!
//! A browser cannot send a heartbeat of its own from a background tab (its
//! timers are throttled), but its network stack answers a server's Ping
//! with a Pong (§5.5.2). So the server pings; any frame from the client is
//! activity; data messages are read and thrown away, never buffered.
//!
//! - [`parse_request`] reads the upgrade request from the bytes so far;
//!   [`accept_key`], [`encode_switch`] and [`encode_refusal`] answer it.
//! - [`next`] (over a [`Cursor`] and [`Kept`] bytes, or a [`Deframer`]
//!   holding both) cuts the client's byte stream into [`Item`]s, checking
//!   every rule of §5 a server must check (masking, opcodes, reserved bits,
//!   control-frame limits, fragmentation, the length forms, `max_frame`).
//! - [`encode`] writes the server's frames (unmasked, §5.1).
//! - [`deframe_all`] is the pure entry point a fuzz target calls.
//!
//! Invariants:
//! - The deframer never buffers a data payload: it counts the bytes still
//!   to skip. It keeps bytes only for a header or a control frame (at most
//!   [`MAX_PARTIAL`] bytes) split across reads, in a box that is freed as
//!   soon as that frame is complete: an idle stream owns no heap memory.
//! - Feeding a stream in any split yields the same items as feeding it
//!   whole (tested here and, end to end, in `session`).
//! - After an error the stream is dead: the caller closes with
//!   [`FrameError::close_code`].

use std::fmt;

use data_encoding::BASE64;
use sha1::{Digest, Sha1};

/// The GUID of §1.3 that `Sec-WebSocket-Accept` hashes with the key.
pub const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// The longest upgrade request read, headers included: browsers send well
/// under 2 KiB; more is refused with 431 before it is ever buffered.
pub const MAX_REQUEST: usize = 8 * 1024;
/// Headers parsed at most; more is refused with 431.
pub const MAX_HEADERS: usize = 48;
/// The largest control-frame payload (§5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;
/// The longest client frame header: 2 bytes, an 8-byte length, the mask.
pub const MAX_HEADER_LEN: usize = 2 + 8 + 4;
/// Bytes a split header or control frame may keep: a control frame's
/// header is at most 6 bytes (its length fits the first form).
pub const MAX_PARTIAL: usize = 6 + MAX_CONTROL_PAYLOAD;
/// The length of a `Sec-WebSocket-Accept` value (base64 of 20 bytes).
pub const ACCEPT_LEN: usize = 28;

/// Frame opcodes (§5.2).
pub mod opcode {
    /// A continuation of a fragmented message.
    pub const CONTINUATION: u8 = 0x0;
    /// A text message (or its first fragment).
    pub const TEXT: u8 = 0x1;
    /// A binary message (or its first fragment).
    pub const BINARY: u8 = 0x2;
    /// Close.
    pub const CLOSE: u8 = 0x8;
    /// Ping.
    pub const PING: u8 = 0x9;
    /// Pong.
    pub const PONG: u8 = 0xA;
}

/// Close status codes the server sends (§7.4.1).
pub mod close_code {
    /// Normal closure: the answer to a client's Close without a code.
    pub const NORMAL: u16 = 1000;
    /// Going away: the daemon stops.
    pub const GOING_AWAY: u16 = 1001;
    /// A frame broke the protocol.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A Close reason that is not UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    /// Policy violation: replaced by a newer connection with the same id.
    pub const POLICY: u16 = 1008;
    /// A frame larger than the listener's `max_frame`.
    pub const TOO_BIG: u16 = 1009;
}

// ---------------------------------------------------------------------------
// The upgrade request

/// A complete, valid upgrade request, borrowed from the bytes read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade<'a> {
    /// The request target's path (before any `?`).
    pub path: &'a str,
    /// The query string (after `?`), if any.
    pub query: Option<&'a str>,
    /// The `Origin` header, which browsers always send.
    pub origin: Option<&'a str>,
    /// `Sec-WebSocket-Key`, checked to be base64 of 16 bytes.
    pub key: &'a str,
    /// Bytes of the request, up to and including the blank line.
    pub len: usize,
}

/// Why an upgrade request is refused, with the HTTP status it gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestError {
    /// Not HTTP/1.1, or broken (400).
    Malformed(String),
    /// Not a WebSocket upgrade: a plain GET, or a required header missing
    /// or wrong (400).
    NotUpgrade(&'static str),
    /// A `Sec-WebSocket-Version` other than 13 (426, naming 13).
    Version,
    /// Longer than [`MAX_REQUEST`] or more than [`MAX_HEADERS`] headers (431).
    TooLarge,
}

impl RequestError {
    /// The HTTP status code of the refusal.
    pub fn status(&self) -> u16 {
        match self {
            RequestError::Malformed(_) | RequestError::NotUpgrade(_) => 400,
            RequestError::Version => 426,
            RequestError::TooLarge => 431,
        }
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestError::Malformed(why) => write!(f, "malformed upgrade request: {why}"),
            RequestError::NotUpgrade(why) => write!(f, "not a WebSocket upgrade: {why}"),
            RequestError::Version => f.write_str("unsupported Sec-WebSocket-Version: only 13 is spoken"),
            RequestError::TooLarge => {
                write!(f, "upgrade request larger than {MAX_REQUEST} bytes or {MAX_HEADERS} headers")
            }
        }
    }
}

impl std::error::Error for RequestError {}

/// Parses the upgrade request at the start of `buf`: `Ok(None)` while it is
/// incomplete (and under [`MAX_REQUEST`]), the request once its blank line
/// arrived, or why it is refused. Bytes after the request are not read.
pub fn parse_request(buf: &[u8]) -> Result<Option<Upgrade<'_>>, RequestError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_REQUEST => return Err(RequestError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(RequestError::TooLarge),
        Err(e) => return Err(RequestError::Malformed(e.to_string())),
    };
    if len > MAX_REQUEST {
        return Err(RequestError::TooLarge);
    }
    if req.version != Some(1) {
        return Err(RequestError::Malformed("HTTP/1.1 is required".to_owned()));
    }
    if req.method != Some("GET") {
        return Err(RequestError::NotUpgrade("the method must be GET"));
    }
    let target = req.path.unwrap_or("/");
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    let mut host = false;
    let mut upgrade = false;
    let mut connection = false;
    let mut version = None;
    let mut key = None;
    let mut origin = None;
    for h in req.headers.iter() {
        let value =
            std::str::from_utf8(h.value).map_err(|_| RequestError::Malformed(format!("{} is not UTF-8", h.name)))?;
        let value = value.trim();
        match h.name.to_ascii_lowercase().as_str() {
            "host" => host = true,
            "upgrade" => upgrade |= has_token(value, "websocket"),
            "connection" => connection |= has_token(value, "upgrade"),
            "sec-websocket-version" => version = Some(value),
            "sec-websocket-key" => key = Some(value),
            "origin" => origin = Some(value),
            _ => {}
        }
    }
    if !host {
        return Err(RequestError::NotUpgrade("no Host header"));
    }
    if !upgrade {
        return Err(RequestError::NotUpgrade("no Upgrade: websocket header"));
    }
    if !connection {
        return Err(RequestError::NotUpgrade("no Connection: Upgrade header"));
    }
    let Some(key) = key else {
        return Err(RequestError::NotUpgrade("no Sec-WebSocket-Key header"));
    };
    if BASE64.decode(key.as_bytes()).map(|k| k.len()) != Ok(16) {
        return Err(RequestError::NotUpgrade("Sec-WebSocket-Key is not base64 of 16 bytes"));
    }
    if version != Some("13") {
        return Err(RequestError::Version);
    }
    Ok(Some(Upgrade { path, query, origin, key, len }))
}

/// True when the comma-separated header `value` lists `token`, in any case.
fn has_token(value: &str, token: &str) -> bool {
    value.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The value of parameter `name` in a query string, percent-decoded
/// (RFC 3986: `+` stays `+`; pages encode with `encodeURIComponent`).
/// `None` when absent; the first occurrence wins.
pub fn query_param(query: &str, name: &str) -> Option<Vec<u8>> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| percent_decode(value))
    })
}

/// `%XX` escapes decoded; a `%` not followed by two hex digits stays as is.
fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                // Two hex digits make at most 0xFF.
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// `Sec-WebSocket-Accept` for `key`: base64(SHA-1(key + GUID)) (§4.2.2).
pub fn accept_key(key: &str) -> [u8; ACCEPT_LEN] {
    let mut hasher = Sha1::new();
    hasher.update(key.as_bytes());
    hasher.update(GUID.as_bytes());
    let digest = hasher.finalize();
    let mut accept = [0; ACCEPT_LEN];
    BASE64.encode_mut(&digest, &mut accept);
    accept
}

/// Writes the `101 Switching Protocols` answer that completes the upgrade.
pub fn encode_switch(accept: &[u8; ACCEPT_LEN], out: &mut Vec<u8>) {
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
    );
    out.extend_from_slice(accept);
    out.extend_from_slice(b"\r\n\r\n");
}

/// Writes a refusal: `status` with a one-line plain-text body saying why,
/// and `Connection: close` (the daemon closes right after). A 426 names
/// the version spoken (§4.4).
pub fn encode_refusal(status: u16, why: &str, out: &mut Vec<u8>) {
    let reason = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let extra = if status == 426 { "Sec-WebSocket-Version: 13\r\n" } else { "" };
    let body = format!("{why}\n");
    out.extend_from_slice(
        format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
}

// ---------------------------------------------------------------------------
// Frames

/// A control frame's payload, unmasked: at most 125 bytes, inline.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Payload {
    bytes: [u8; MAX_CONTROL_PAYLOAD],
    len: u8,
}

impl Payload {
    /// The payload bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// Unmasks `masked` (at most 125 bytes) with `mask`.
    fn unmask(masked: &[u8], mask: [u8; 4]) -> Payload {
        let mut bytes = [0; MAX_CONTROL_PAYLOAD];
        let len = masked.len().min(MAX_CONTROL_PAYLOAD);
        for (i, (out, b)) in bytes.iter_mut().zip(&masked[..len]).enumerate() {
            *out = b ^ mask[i % 4];
        }
        // At most 125.
        Payload { bytes, len: len as u8 }
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_slice())
    }
}

/// What a client's stream yields: one complete frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item {
    /// A Ping; its (unmasked) payload goes back in the Pong.
    Ping(Payload),
    /// A Pong: the answer to the server's Ping (or unsolicited, §5.5.3).
    Pong,
    /// A Close, with its status code if it had one (the payload after the
    /// code, a UTF-8 reason, is checked and not kept).
    Close(Option<u16>),
    /// A data frame was read and thrown away; `fin` when it ended a message.
    Data { fin: bool },
}

/// Why a client's stream is invalid; each maps to a Close code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// A reserved bit was set (no extension was negotiated).
    Reserved,
    /// An opcode §5.2 reserves.
    Opcode(u8),
    /// A client frame without a mask (§5.1).
    Unmasked,
    /// A control frame with more than 125 payload bytes.
    ControlTooLong,
    /// A control frame without FIN (§5.5: never fragmented).
    ControlFragmented,
    /// A 64-bit length with its most significant bit set (§5.2).
    LengthForm,
    /// A data frame longer than the listener's `max_frame`.
    TooBig { len: u64, max: usize },
    /// A continuation frame outside a fragmented message.
    UnexpectedContinuation,
    /// A new text or binary frame inside a fragmented message.
    UnfinishedMessage,
    /// A Close payload of one byte, or a code §7.4 does not allow.
    CloseCode,
    /// A Close reason that is not UTF-8.
    CloseReason,
}

impl FrameError {
    /// The Close status code the server answers with.
    pub fn close_code(&self) -> u16 {
        match self {
            FrameError::TooBig { .. } => close_code::TOO_BIG,
            FrameError::CloseReason => close_code::INVALID_DATA,
            _ => close_code::PROTOCOL_ERROR,
        }
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Reserved => f.write_str("reserved bit set"),
            FrameError::Opcode(op) => write!(f, "reserved opcode {op:#x}"),
            FrameError::Unmasked => f.write_str("unmasked client frame"),
            FrameError::ControlTooLong => f.write_str("control frame longer than 125 bytes"),
            FrameError::ControlFragmented => f.write_str("fragmented control frame"),
            FrameError::LengthForm => f.write_str("64-bit length with the high bit set"),
            FrameError::TooBig { len, max } => write!(f, "frame of {len} bytes exceeds max_frame {max}"),
            FrameError::UnexpectedContinuation => f.write_str("continuation frame outside a message"),
            FrameError::UnfinishedMessage => f.write_str("new message inside a fragmented one"),
            FrameError::CloseCode => f.write_str("invalid close code"),
            FrameError::CloseReason => f.write_str("close reason is not UTF-8"),
        }
    }
}

impl std::error::Error for FrameError {}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    len: u64,
    /// Bytes of the header itself.
    header_len: usize,
}

/// Decodes the header at the start of `buf`: `Ok(None)` while incomplete.
/// Each rule is checked as soon as the bytes it needs are there, so a bad
/// frame is refused before its length or payload arrives.
fn decode_header(buf: &[u8], max_frame: usize, fragmented: bool) -> Result<Option<Header>, FrameError> {
    let Some(&b0) = buf.first() else { return Ok(None) };
    if b0 & 0x70 != 0 {
        return Err(FrameError::Reserved);
    }
    let fin = b0 & 0x80 != 0;
    let op = b0 & 0x0F;
    let control = op & 0x8 != 0;
    match op {
        opcode::CONTINUATION if !fragmented => return Err(FrameError::UnexpectedContinuation),
        opcode::TEXT | opcode::BINARY if fragmented => return Err(FrameError::UnfinishedMessage),
        opcode::CONTINUATION | opcode::TEXT | opcode::BINARY | opcode::CLOSE | opcode::PING | opcode::PONG => {}
        other => return Err(FrameError::Opcode(other)),
    }
    if control && !fin {
        return Err(FrameError::ControlFragmented);
    }
    let Some(&b1) = buf.get(1) else { return Ok(None) };
    if b1 & 0x80 == 0 {
        return Err(FrameError::Unmasked);
    }
    let short = b1 & 0x7F;
    if control && usize::from(short) > MAX_CONTROL_PAYLOAD {
        return Err(FrameError::ControlTooLong);
    }
    let (len, at) = match short {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let mut be = [0; 8];
                be.copy_from_slice(b);
                let len = u64::from_be_bytes(be);
                if len >> 63 != 0 {
                    return Err(FrameError::LengthForm);
                }
                (len, 10)
            }
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    if !control && len > max_frame as u64 {
        return Err(FrameError::TooBig { len, max: max_frame });
    }
    let Some(m) = buf.get(at..at + 4) else { return Ok(None) };
    Ok(Some(Header { fin, opcode: op, mask: [m[0], m[1], m[2], m[3]], len, header_len: at + 4 }))
}

/// Bytes still missing before `partial` holds a whole header, as far as
/// its first two bytes tell (they were checked by `decode_header`).
fn header_needs(partial: &[u8]) -> usize {
    let total: usize = match partial.get(1) {
        None => 2,
        Some(b1) => match b1 & 0x7F {
            126 => 4 + 4,
            127 => 10 + 4,
            _ => 2 + 4,
        },
    };
    total.saturating_sub(partial.len())
}

/// The item of a complete control frame, from its masked payload.
fn control_item(h: &Header, masked: &[u8]) -> Result<Item, FrameError> {
    let payload = Payload::unmask(masked, h.mask);
    match h.opcode {
        opcode::PING => Ok(Item::Ping(payload)),
        opcode::PONG => Ok(Item::Pong),
        _ => match payload.as_slice() {
            [] => Ok(Item::Close(None)),
            [_] => Err(FrameError::CloseCode),
            [hi, lo, reason @ ..] => {
                let code = u16::from_be_bytes([*hi, *lo]);
                // §7.4.1/§7.4.2: 1000-1003, 1007-1011 and 3000-4999 may be
                // sent; 1004-1006, 1015 and the rest never appear on the wire.
                let valid = matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999);
                if !valid {
                    return Err(FrameError::CloseCode);
                }
                std::str::from_utf8(reason).map_err(|_| FrameError::CloseReason)?;
                Ok(Item::Close(Some(code)))
            }
        },
    }
}

/// A header or control frame that arrived in pieces.
#[derive(Debug)]
struct Partial {
    bytes: [u8; MAX_PARTIAL],
    len: u8,
}

impl Partial {
    fn kept(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// Appends at most `want` bytes of `data`; returns how many it took.
    fn take(&mut self, data: &[u8], want: usize) -> usize {
        let have = usize::from(self.len);
        let n = want.min(data.len()).min(MAX_PARTIAL - have);
        self.bytes[have..have + n].copy_from_slice(&data[..n]);
        // At most MAX_PARTIAL (131).
        self.len = (have + n) as u8;
        n
    }
}

/// The deframer's inline state in 4 bytes: the payload bytes of the
/// current data frame still to skip (at most [`MAX_SKIP`]) and three flags
/// in the top bits.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Cursor(u32);

/// The largest data frame a [`Cursor`] can skip: `max_frame` is capped
/// here (config allows at most 16 MiB).
pub const MAX_SKIP: usize = (1 << 29) - 1;
/// Inside a fragmented message: a data frame without FIN came.
const FRAGMENTED: u32 = 1 << 29;
/// The data frame being skipped has FIN.
const SKIP_FIN: u32 = 1 << 30;
/// A server Ping is unanswered (see [`Cursor::ping`]).
const PINGED: u32 = 1 << 31;

impl Cursor {
    fn skip(self) -> usize {
        (self.0 & MAX_SKIP as u32) as usize
    }

    fn set_skip(&mut self, n: usize) {
        // Callers pass at most MAX_SKIP (max_frame is capped to it).
        self.0 = (self.0 & !(MAX_SKIP as u32)) | (n.min(MAX_SKIP) as u32);
    }

    fn flag(self, bit: u32) -> bool {
        self.0 & bit != 0
    }

    fn set(&mut self, bit: u32, on: bool) {
        self.0 = if on { self.0 | bit } else { self.0 & !bit };
    }

    /// Writes the server's Ping and remembers it is unanswered until the
    /// next complete frame from the client.
    pub fn ping(&mut self, out: &mut Vec<u8>) {
        encode(opcode::PING, &[], out);
        self.set(PINGED, true);
    }

    /// True while a server Ping is unanswered: no complete frame came
    /// since [`Cursor::ping`].
    pub fn pinged(self) -> bool {
        self.flag(PINGED)
    }
}

/// The bytes a stream keeps across reads: a header or control frame split
/// between them, boxed; `None` (8 bytes, no heap) otherwise.
#[derive(Debug, Default)]
pub struct Kept(Option<Box<Partial>>);

impl Kept {
    /// True when no byte is kept: the stream owns no heap memory.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }
}

/// A whole deframer: [`Cursor`] and [`Kept`] together, and the messages
/// seen, in 16 bytes.
#[derive(Debug, Default)]
pub struct Deframer {
    /// The inline state.
    pub cursor: Cursor,
    /// The bytes kept across reads.
    pub kept: Kept,
    /// Complete data messages (a final data frame) seen so far, saturating.
    messages: u32,
}

impl Deframer {
    /// [`next`] over this deframer's parts, counting complete messages.
    pub fn next(&mut self, data: &[u8], max_frame: usize) -> (Result<Option<Item>, FrameError>, usize) {
        let (item, used) = next(&mut self.cursor, &mut self.kept, data, max_frame);
        if matches!(item, Ok(Some(Item::Data { fin: true }))) {
            self.messages = self.messages.saturating_add(1);
        }
        (item, used)
    }

    /// Complete data messages seen so far (read and thrown away).
    pub fn messages(&self) -> u64 {
        u64::from(self.messages)
    }

    /// True when no byte of a frame is kept or pending.
    pub fn is_idle(&self) -> bool {
        self.kept.is_empty() && self.cursor.skip() == 0
    }
}

/// Cuts a client's WebSocket byte stream into [`Item`]s: the next item
/// from the kept bytes followed by `data`, and the bytes of `data` used.
/// `Ok(None)` when all of `data` was used without completing a frame.
/// After an error the count means nothing.
pub fn next(
    cursor: &mut Cursor,
    kept: &mut Kept,
    data: &[u8],
    max_frame: usize,
) -> (Result<Option<Item>, FrameError>, usize) {
    // A data frame's length must fit the cursor.
    let max_frame = max_frame.min(MAX_SKIP);
    let mut used = 0;
    let skip = cursor.skip();
    if skip > 0 {
        let n = data.len().min(skip);
        cursor.set_skip(skip - n);
        if skip > n {
            return (Ok(None), n);
        }
        return (Ok(Some(end_data(cursor))), n);
    }
    let fragmented = cursor.flag(FRAGMENTED);
    let header = match kept.0.as_mut() {
        None => match decode_header(data, max_frame, fragmented) {
            Ok(Some(h)) => {
                used = h.header_len;
                h
            }
            Ok(None) => {
                if !data.is_empty() {
                    let mut partial = Box::new(Partial { bytes: [0; MAX_PARTIAL], len: 0 });
                    partial.take(data, MAX_HEADER_LEN);
                    kept.0 = Some(partial);
                }
                return (Ok(None), data.len());
            }
            Err(e) => return (Err(e), 0),
        },
        Some(partial) => {
            // Gather the header, as far as its first two bytes tell its
            // form, rechecking as it grows.
            loop {
                match decode_header(partial.kept(), max_frame, fragmented) {
                    Ok(Some(h)) => break h,
                    Ok(None) if used == data.len() => return (Ok(None), used),
                    Ok(None) => used += partial.take(&data[used..], header_needs(partial.kept()).max(1)),
                    Err(e) => return (Err(e), used),
                }
            }
        }
    };
    if header.opcode & 0x8 == 0 {
        kept.0 = None;
        if !header.fin {
            cursor.set(FRAGMENTED, true);
        }
        cursor.set(SKIP_FIN, header.fin);
        // `len <= max_frame <= MAX_SKIP`.
        let len = usize::try_from(header.len).unwrap_or(MAX_SKIP);
        let n = (data.len() - used).min(len);
        used += n;
        cursor.set_skip(len - n);
        if len > n {
            return (Ok(None), used);
        }
        return (Ok(Some(end_data(cursor))), used);
    }
    // A control frame: at most 125 payload bytes, needed whole.
    let len = header.len as usize;
    let item = match kept.0.as_mut() {
        None if data.len() - used >= len => {
            let item = control_item(&header, &data[used..used + len]);
            used += len;
            item
        }
        None => {
            let mut partial = Box::new(Partial { bytes: [0; MAX_PARTIAL], len: 0 });
            partial.take(&data[..header.header_len], header.header_len);
            partial.take(&data[used..], len);
            kept.0 = Some(partial);
            return (Ok(None), data.len());
        }
        Some(partial) => {
            let want = header.header_len + len - partial.kept().len();
            used += partial.take(&data[used..], want);
            if partial.kept().len() < header.header_len + len {
                return (Ok(None), used);
            }
            control_item(&header, &partial.kept()[header.header_len..])
        }
    };
    // Frees the box: an idle stream keeps no heap memory.
    kept.0 = None;
    match item {
        Ok(item) => {
            cursor.set(PINGED, false);
            (Ok(Some(item)), used)
        }
        Err(e) => (Err(e), used),
    }
}

/// A data frame's payload has been skipped: the frame is complete.
fn end_data(cursor: &mut Cursor) -> Item {
    let fin = cursor.flag(SKIP_FIN);
    if fin {
        cursor.set(FRAGMENTED, false);
    }
    cursor.set(PINGED, false);
    Item::Data { fin }
}

/// Writes one unmasked server frame with FIN (the server never fragments).
/// Control payloads longer than 125 bytes are cut to 125.
pub fn encode(op: u8, payload: &[u8], out: &mut Vec<u8>) {
    let payload = if op & 0x8 != 0 { &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)] } else { payload };
    out.push(0x80 | op);
    match payload.len() {
        // Each arm's range fits the form it uses.
        n @ 0..=125 => out.push(n as u8),
        n @ 126..=0xFFFF => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

/// Writes a Close frame with `code` and a reason (cut to fit 125 bytes at
/// a character boundary).
pub fn encode_close(code: u16, reason: &str, out: &mut Vec<u8>) {
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = [0; MAX_CONTROL_PAYLOAD];
    payload[..2].copy_from_slice(&code.to_be_bytes());
    payload[2..2 + end].copy_from_slice(&reason.as_bytes()[..end]);
    encode(opcode::CLOSE, &payload[..2 + end], out);
}

/// Every item of a client stream fed whole, up to the first error: the
/// pure entry point of the fuzz target (it must never panic, and any split
/// of the same bytes must give the same items).
pub fn deframe_all(stream: &[u8], max_frame: usize) -> (Vec<Item>, Option<FrameError>) {
    let mut d = Deframer::default();
    let mut items = Vec::new();
    let mut rest = stream;
    loop {
        let (result, used) = d.next(rest, max_frame);
        match result {
            Ok(Some(item)) => items.push(item),
            Ok(None) => return (items, None),
            Err(e) => return (items, Some(e)),
        }
        rest = &rest[used..];
    }
}

/// A masked client frame, as a browser sends it (for tests, the load
/// generator and the harness's own client).
pub fn encode_masked(fin: bool, op: u8, payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    out.push(if fin { 0x80 } else { 0 } | op);
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: usize = 1024;
    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    fn masked(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_masked(fin, op, payload, MASK, &mut out);
        out
    }

    /// Items of `stream` fed in chunks of `chunk` bytes, as debug text.
    fn items(stream: &[u8], chunk: usize) -> Vec<String> {
        let mut d = Deframer::default();
        let mut out = Vec::new();
        for mut piece in stream.chunks(chunk.max(1)) {
            loop {
                let (result, used) = d.next(piece, MAX);
                match result {
                    Ok(Some(item)) => out.push(format!("{item:?}")),
                    Ok(None) => {
                        assert_eq!(used, piece.len(), "None uses every byte");
                        break;
                    }
                    Err(e) => {
                        out.push(format!("error {e}"));
                        return out;
                    }
                }
                piece = &piece[used..];
            }
        }
        out
    }

    const CHROME: &[u8] = b"GET /?id=dev-42 HTTP/1.1\r\nHost: 127.0.0.1:7703\r\nConnection: Upgrade\r\nPragma: no-cache\r\n\
Upgrade: websocket\r\nOrigin: http://127.0.0.1:8080\r\nSec-WebSocket-Version: 13\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n";

    #[test]
    fn accept_key_is_the_rfc_example() {
        // RFC 6455 §1.3.
        assert_eq!(&accept_key("dGhlIHNhbXBsZSBub25jZQ=="), b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn a_browser_request_parses() {
        let up = parse_request(CHROME).unwrap().unwrap();
        assert_eq!(up.path, "/");
        assert_eq!(up.query, Some("id=dev-42"));
        assert_eq!(up.origin, Some("http://127.0.0.1:8080"));
        assert_eq!(up.key, "dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(up.len, CHROME.len());
        for cut in 0..CHROME.len() {
            assert_eq!(parse_request(&CHROME[..cut]), Ok(None), "cut {cut}");
        }
        // Bytes after the request are not its.
        let mut more = CHROME.to_vec();
        more.extend(masked(true, opcode::PONG, b""));
        assert_eq!(parse_request(&more).unwrap().unwrap().len, CHROME.len());
    }

    #[test]
    fn bad_requests_are_refused_with_their_status() {
        let text = std::str::from_utf8(CHROME).unwrap();
        let cases: [(String, u16); 8] = [
            (text.replace("GET", "POST"), 400),
            (text.replace("HTTP/1.1", "HTTP/1.0"), 400),
            (text.replace("Upgrade: websocket", "Upgrade: h2c"), 400),
            (text.replace("Connection: Upgrade", "Connection: keep-alive"), 400),
            (text.replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8"), 426),
            (text.replace("dGhlIHNhbXBsZSBub25jZQ==", "short"), 400),
            (text.replace("Host: 127.0.0.1:7703\r\n", ""), 400),
            ("\u{1}\u{2} garbage\r\n\r\n".to_owned(), 400),
        ];
        for (request, status) in cases {
            let e = parse_request(request.as_bytes()).unwrap_err();
            assert_eq!(e.status(), status, "{request:?}: {e}");
        }
        // Keep-alive, Upgrade in a list, any case: accepted.
        let listed = text.replace("Connection: Upgrade", "connection: keep-alive, UPGRADE");
        assert!(parse_request(listed.as_bytes()).unwrap().is_some());
        let endless = [b"GET / HTTP/1.1\r\nX: ".as_slice(), &[b'a'; MAX_REQUEST]].concat();
        assert_eq!(parse_request(&endless), Err(RequestError::TooLarge));
        let many: String = (0..MAX_HEADERS + 1).map(|i| format!("X-{i}: y\r\n")).collect();
        let crowded = text.replace("Pragma: no-cache\r\n", &many);
        assert_eq!(parse_request(crowded.as_bytes()), Err(RequestError::TooLarge));
    }

    #[test]
    fn query_parameters_are_percent_decoded() {
        assert_eq!(query_param("id=dev-42&token=a%2Bb%3D", "token").as_deref(), Some(&b"a+b="[..]));
        assert_eq!(query_param("id=dev-42&token=a+b", "token").as_deref(), Some(&b"a+b"[..]));
        assert_eq!(query_param("id=dev-42", "id").as_deref(), Some(&b"dev-42"[..]));
        assert_eq!(query_param("ids=x", "id"), None);
        assert_eq!(query_param("id", "id").as_deref(), Some(&b""[..]));
        assert_eq!(query_param("id=%zz%4", "id").as_deref(), Some(&b"%zz%4"[..]));
        assert_eq!(query_param("id=%41", "id").as_deref(), Some(&b"A"[..]));
    }

    #[test]
    fn responses_are_http() {
        let mut out = Vec::new();
        encode_switch(&accept_key("dGhlIHNhbXBsZSBub25jZQ=="), &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"), "{text}");
        assert!(text.ends_with("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"), "{text}");
        let mut out = Vec::new();
        encode_refusal(426, "version", &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"), "{text}");
        assert!(text.contains("Sec-WebSocket-Version: 13\r\n") && text.ends_with("\r\n\r\nversion\n"), "{text}");
    }

    #[test]
    fn control_and_data_frames() {
        let mut stream = masked(true, opcode::PING, b"hi");
        stream.extend(masked(true, opcode::PONG, b""));
        stream.extend(masked(false, opcode::TEXT, b"hel"));
        stream.extend(masked(true, opcode::PING, b""));
        stream.extend(masked(true, opcode::CONTINUATION, b"lo"));
        stream.extend(masked(true, opcode::BINARY, &[9; 300]));
        let mut close = 1000u16.to_be_bytes().to_vec();
        close.extend_from_slice(b"bye");
        stream.extend(masked(true, opcode::CLOSE, &close));
        let want = [
            "Ping([104, 105])",
            "Pong",
            "Data { fin: false }",
            "Ping([])",
            "Data { fin: true }",
            "Data { fin: true }",
            "Close(Some(1000))",
        ];
        assert_eq!(items(&stream, stream.len()), want);
        for chunk in 1..stream.len() {
            assert_eq!(items(&stream, chunk), want, "chunk {chunk}");
        }
    }

    #[test]
    fn length_forms() {
        for len in [0, 125, 126, 65535, 65536] {
            let frame = masked(true, opcode::BINARY, &vec![1; len]);
            let (items, err) = deframe_all(&frame, 70_000);
            assert_eq!((items, err), (vec![Item::Data { fin: true }], None), "len {len}");
        }
        let mut out = Vec::new();
        encode(opcode::BINARY, &[0; 70_000], &mut out);
        assert_eq!(&out[..2], &[0x82, 127]);
    }

    #[test]
    fn protocol_errors_and_their_close_codes() {
        let unmasked = {
            let mut out = Vec::new();
            encode(opcode::TEXT, b"x", &mut out);
            out
        };
        let cases: Vec<(Vec<u8>, FrameError, u16)> = vec![
            (unmasked, FrameError::Unmasked, 1002),
            (vec![0x83, 0x80], FrameError::Opcode(3), 1002),
            (vec![0x8B, 0x80], FrameError::Opcode(0xB), 1002),
            (vec![0xC1, 0x80], FrameError::Reserved, 1002),
            (vec![0x09, 0x80], FrameError::ControlFragmented, 1002),
            (vec![0x89, 0xFE], FrameError::ControlTooLong, 1002),
            (vec![0x80, 0x80], FrameError::UnexpectedContinuation, 1002),
            (
                [masked(false, opcode::TEXT, b"a"), masked(true, opcode::TEXT, b"b")].concat(),
                FrameError::UnfinishedMessage,
                1002,
            ),
            (masked(true, opcode::BINARY, &[0; MAX + 1]), FrameError::TooBig { len: MAX as u64 + 1, max: MAX }, 1009),
            (vec![0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0], FrameError::LengthForm, 1002),
            (masked(true, opcode::CLOSE, &[3]), FrameError::CloseCode, 1002),
            (masked(true, opcode::CLOSE, &1005u16.to_be_bytes()), FrameError::CloseCode, 1002),
            (masked(true, opcode::CLOSE, &[0x03, 0xE8, 0xFF]), FrameError::CloseReason, 1007),
        ];
        for (stream, error, code) in cases {
            let (_, got) = deframe_all(&stream, MAX);
            assert_eq!(got.as_ref(), Some(&error), "{stream:?}");
            assert_eq!(error.close_code(), code);
        }
    }

    #[test]
    fn oversize_is_refused_from_the_header_alone() {
        // Only the header of a 1 MiB frame: refused before any payload.
        let frame = masked(true, opcode::BINARY, &[0; 1 << 20]);
        let (_, err) = deframe_all(&frame[..14], MAX);
        assert!(matches!(err, Some(FrameError::TooBig { .. })));
    }

    #[test]
    fn no_heap_once_a_split_frame_is_complete() {
        let frame = masked(true, opcode::PING, b"abc");
        let mut d = Deframer::default();
        assert!(matches!(d.next(&frame[..3], MAX), (Ok(None), 3)));
        assert!(!d.is_idle());
        let (item, used) = d.next(&frame[3..], MAX);
        assert_eq!(used, frame.len() - 3);
        assert!(matches!(item, Ok(Some(Item::Ping(p))) if p.as_slice() == b"abc"));
        assert!(d.is_idle());
        // A large data frame is skipped, never kept.
        let data = masked(true, opcode::BINARY, &[7; 900]);
        assert!(matches!(d.next(&data[..500], MAX), (Ok(None), 500)));
        assert!(d.kept.is_empty());
        assert!(matches!(d.next(&data[500..], MAX), (Ok(Some(Item::Data { fin: true })), _)));
        assert!(d.is_idle());
        assert_eq!(d.messages(), 1);
        assert_eq!(std::mem::size_of::<Deframer>(), 16);
    }

    #[test]
    fn a_ping_is_pending_until_the_next_frame() {
        let mut d = Deframer::default();
        let mut out = Vec::new();
        d.cursor.ping(&mut out);
        assert_eq!(out, [0x89, 0x00]);
        assert!(d.cursor.pinged());
        let pong = masked(true, opcode::PONG, b"");
        assert!(matches!(d.next(&pong[..1], MAX), (Ok(None), 1)));
        assert!(d.cursor.pinged(), "half a frame is no answer");
        assert!(matches!(d.next(&pong[1..], MAX), (Ok(Some(Item::Pong)), _)));
        assert!(!d.cursor.pinged());
    }

    #[test]
    fn close_frames_encode() {
        let mut out = Vec::new();
        encode_close(1001, "shutdown", &mut out);
        assert_eq!(out[..4], [0x88, 10, 0x03, 0xE9]);
        assert_eq!(&out[4..], b"shutdown");
        out.clear();
        encode_close(1000, &"é".repeat(100), &mut out);
        assert_eq!(usize::from(out[1]), 2 + 122, "cut at a char boundary within 125");
    }

    /// A valid client frame.
    fn client_frame() -> impl Strategy<Value = Vec<u8>> {
        let payload = |n| proptest::collection::vec(any::<u8>(), 0..n);
        prop_oneof![
            payload(126).prop_map(|p| masked(true, opcode::PING, &p)),
            payload(126).prop_map(|p| masked(true, opcode::PONG, &p)),
            payload(400).prop_map(|p| masked(true, opcode::TEXT, &p)),
            (payload(200), payload(200)).prop_map(|(a, b)| [
                masked(false, opcode::BINARY, &a),
                masked(true, opcode::PING, b""),
                masked(true, opcode::CONTINUATION, &b)
            ]
            .concat()),
        ]
    }

    proptest! {
        #[test]
        fn valid_streams_any_split_same_items(frames in proptest::collection::vec(client_frame(), 0..10), chunk in 1usize..40) {
            let stream = frames.concat();
            let whole = items(&stream, stream.len().max(1));
            prop_assert!(whole.iter().all(|i| !i.starts_with("error")));
            prop_assert_eq!(items(&stream, chunk), whole);
        }

        #[test]
        fn arbitrary_bytes_any_split_same_items(bytes in proptest::collection::vec(any::<u8>(), 0..300), chunk in 1usize..40) {
            prop_assert_eq!(items(&bytes, chunk), items(&bytes, bytes.len().max(1)));
        }

        #[test]
        fn ping_payloads_round_trip(payload in proptest::collection::vec(any::<u8>(), 0..=125), mask in any::<[u8; 4]>()) {
            let mut frame = Vec::new();
            encode_masked(true, opcode::PING, &payload, mask, &mut frame);
            let (items, err) = deframe_all(&frame, MAX);
            prop_assert_eq!(err, None);
            prop_assert!(matches!(items.as_slice(), [Item::Ping(p)] if p.as_slice() == payload.as_slice()));
        }

        #[test]
        fn arbitrary_requests_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse_request(&bytes);
        }
    }
}
