//! The `native` v1 wire protocol (PROTOCOL.md §1): a pure codec.
//!
//! Frame layout, all integers big-endian:
//!
//! ```text
//! +--------+--------+-----------------+----------------------+
//! |  type  | flags  |  length (u16)   |  payload (length)    |
//! +--------+--------+-----------------+----------------------+
//! ```
//!
//! Invariants:
//! - [`decode`] rejects a frame as soon as its header is known to be bad
//!   (unknown type, length over `max_frame` or the per-type limit), so a
//!   hostile length never makes the caller buffer more than `max_frame`.
//! - [`decode`] never panics, whatever the input.
//! - `encode` followed by `decode` gives back the same frame.
//! - Flags are read on HELLO only, and only [`HELLO_PROBE`]; every other
//!   bit, and every flag of every other frame, is ignored (and encoded 0).

/// Bytes in a frame header: type, flags, length.
pub const HEADER_LEN: usize = 4;

/// Frame type codes.
pub mod frame_type {
    /// Client → server: first frame, names the client.
    pub const HELLO: u8 = 0x01;
    /// Server → client: handshake accepted.
    pub const WELCOME: u8 = 0x02;
    /// Either direction: liveness probe.
    pub const PING: u8 = 0x03;
    /// Either direction: echo of a PING's payload.
    pub const PONG: u8 = 0x04;
    /// Either direction: orderly goodbye with a reason.
    pub const BYE: u8 = 0x05;
    /// Server → client: the last frame before the server closes.
    pub const ERROR: u8 = 0x06;
}

/// HELLO flags bit 0: the connection is a probe (PROTOCOL.md "Probes").
pub const HELLO_PROBE: u8 = 0x01;

/// The only protocol version this codec speaks, carried in HELLO.
pub const VERSION: u8 = 1;
/// Longest client id, in bytes.
pub const MAX_ID_LEN: usize = 64;
/// Longest HELLO token, in bytes.
pub const MAX_TOKEN_LEN: usize = 255;
/// Longest PING/PONG payload, in bytes.
pub const MAX_PING_PAYLOAD: usize = 32;
/// Longest BYE reason, in bytes.
pub const MAX_BYE_REASON: usize = 128;
/// Longest ERROR message, in bytes (after the 2-byte code).
pub const MAX_ERROR_MESSAGE: usize = 256;
/// Exact WELCOME payload length: interval_ms u32, timeout_ms u32, session u64.
pub const WELCOME_LEN: usize = 16;
/// Longest HELLO payload: version, id_len, id, token_len, token.
pub const MAX_HELLO_LEN: usize = 1 + 1 + MAX_ID_LEN + 1 + MAX_TOKEN_LEN;

/// ERROR codes (PROTOCOL.md §1 "Errors").
pub mod error_code {
    /// Malformed frame (unknown type, bad length, bad field).
    pub const MALFORMED: u16 = 1;
    /// Unsupported protocol version.
    pub const UNSUPPORTED_VERSION: u16 = 2;
    /// No HELLO within the handshake timeout.
    pub const HANDSHAKE_TIMEOUT: u16 = 3;
    /// Token rejected.
    pub const AUTH_FAILED: u16 = 4;
    /// Max clients, or per-address limit.
    pub const SERVER_FULL: u16 = 5;
    /// Replaced by a newer connection with the same id.
    pub const REPLACED: u16 = 6;
    /// HELLO sent twice, or another frame before HELLO.
    pub const OUT_OF_ORDER: u16 = 7;
}

/// One decoded frame, borrowing its variable-length fields from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// Client handshake. `id` is validated (1..=64 bytes of 0x21..=0x7E).
    Hello {
        /// Protocol version; decoding only yields [`VERSION`].
        version: u8,
        /// Client id, printable ASCII without space.
        id: &'a str,
        /// Opaque token, 0..=255 bytes.
        token: &'a [u8],
        /// Flags bit 0 ([`HELLO_PROBE`]): a health check that never goes
        /// online.
        probe: bool,
    },
    /// Server handshake reply.
    Welcome {
        /// How often the client must send a frame, in ms.
        interval_ms: u32,
        /// Silence after which the daemon declares the client offline, in ms.
        timeout_ms: u32,
        /// Connection id, unique for the daemon's lifetime.
        session: u64,
    },
    /// Liveness probe with 0..=32 opaque bytes.
    Ping(&'a [u8]),
    /// Echo of a PING's payload.
    Pong(&'a [u8]),
    /// Orderly goodbye with 0..=128 bytes of UTF-8 reason.
    Bye(&'a str),
    /// Server's last frame: a code from [`error_code`] and a UTF-8 message.
    Error {
        /// One of [`error_code`].
        code: u16,
        /// 0..=256 bytes of UTF-8.
        message: &'a str,
    },
}

/// Why bytes could not be decoded into a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The type byte names no frame.
    UnknownType(u8),
    /// The length field exceeds `max_frame` or the type's own limit.
    TooLong {
        /// The frame's type byte.
        frame_type: u8,
        /// The length the header announced.
        length: usize,
        /// The smaller of `max_frame` and the type's limit.
        limit: usize,
    },
    /// A payload whose inner lengths or size do not add up
    /// (e.g. WELCOME not 16 bytes, HELLO `id_len` past the end).
    BadLength {
        /// The frame's type byte.
        frame_type: u8,
    },
    /// A field with a forbidden value: names the field.
    BadField(&'static str),
    /// HELLO with a version other than [`VERSION`].
    UnsupportedVersion(u8),
}

impl DecodeError {
    /// The ERROR code the daemon answers this with: 2 for an unsupported
    /// version, 1 (malformed) for everything else.
    pub fn error_code(&self) -> u16 {
        match self {
            DecodeError::UnsupportedVersion(_) => error_code::UNSUPPORTED_VERSION,
            _ => error_code::MALFORMED,
        }
    }
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::UnknownType(t) => write!(f, "unknown frame type {t:#04x}"),
            DecodeError::TooLong { frame_type, length, limit } => {
                write!(f, "frame type {frame_type:#04x} length {length} exceeds limit {limit}")
            }
            DecodeError::BadLength { frame_type } => {
                write!(f, "bad length for frame type {frame_type:#04x}")
            }
            DecodeError::BadField(field) => write!(f, "bad field {field}"),
            DecodeError::UnsupportedVersion(v) => write!(f, "unsupported version {v}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Why a client id is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdError {
    /// Empty, or longer than [`MAX_ID_LEN`] bytes.
    Length(usize),
    /// A byte outside 0x21..=0x7E, at this index.
    Byte(usize),
}

impl std::fmt::Display for IdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IdError::Length(n) => write!(f, "id must be 1..={MAX_ID_LEN} bytes, got {n}"),
            IdError::Byte(i) => write!(f, "id byte {i} is not printable ASCII (0x21..=0x7E)"),
        }
    }
}

impl std::error::Error for IdError {}

/// Checks a client id against PROTOCOL.md: 1..=64 bytes, each 0x21..=0x7E.
pub fn validate_id(id: &[u8]) -> Result<(), IdError> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(IdError::Length(id.len()));
    }
    match id.iter().position(|b| !(0x21..=0x7E).contains(b)) {
        Some(i) => Err(IdError::Byte(i)),
        None => Ok(()),
    }
}

/// A known frame type, so that decoding dispatches exhaustively.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Hello,
    Welcome,
    Ping,
    Pong,
    Bye,
    Error,
}

impl Kind {
    /// The kind named by type byte `t`, if any.
    fn from_byte(t: u8) -> Option<Kind> {
        match t {
            frame_type::HELLO => Some(Kind::Hello),
            frame_type::WELCOME => Some(Kind::Welcome),
            frame_type::PING => Some(Kind::Ping),
            frame_type::PONG => Some(Kind::Pong),
            frame_type::BYE => Some(Kind::Bye),
            frame_type::ERROR => Some(Kind::Error),
            _ => None,
        }
    }

    /// The largest payload this kind of frame may carry.
    fn limit(self) -> usize {
        match self {
            Kind::Hello => MAX_HELLO_LEN,
            Kind::Welcome => WELCOME_LEN,
            Kind::Ping | Kind::Pong => MAX_PING_PAYLOAD,
            Kind::Bye => MAX_BYE_REASON,
            Kind::Error => ERROR_CODE_LEN + MAX_ERROR_MESSAGE,
        }
    }

    /// The smallest payload this kind of frame may carry, as far as the
    /// length alone can tell.
    fn min_len(self) -> usize {
        match self {
            Kind::Welcome => WELCOME_LEN,
            Kind::Error => ERROR_CODE_LEN,
            // HELLO's minimum is left to the payload check, which looks at
            // the version first (see `decode_hello`).
            Kind::Hello | Kind::Ping | Kind::Pong | Kind::Bye => 0,
        }
    }
}

/// Bytes of the `code:u16` that starts an ERROR payload.
const ERROR_CODE_LEN: usize = 2;

/// Decodes the first frame in `buf`.
///
/// Returns `Ok(None)` when `buf` holds only part of a frame (read more),
/// `Ok(Some((frame, consumed)))` for a complete frame of `consumed` bytes,
/// or an error as soon as the bytes present prove the frame invalid.
/// `max_frame` caps the payload length on top of the per-type limits.
pub fn decode(buf: &[u8], max_frame: usize) -> Result<Option<(Frame<'_>, usize)>, DecodeError> {
    let Some(&t) = buf.first() else {
        return Ok(None);
    };
    // The type byte alone proves an unknown type: reject before the rest of
    // the header arrives.
    let kind = Kind::from_byte(t).ok_or(DecodeError::UnknownType(t))?;
    let Some(&[flags, hi, lo]) = buf.get(1..HEADER_LEN) else {
        return Ok(None);
    };
    let length = usize::from(u16::from_be_bytes([hi, lo]));
    let limit = max_frame.min(kind.limit());
    if length > limit {
        return Err(DecodeError::TooLong { frame_type: t, length, limit });
    }
    // A length too short for the type is rejected from the header, before
    // any of the payload is buffered. (WELCOME over 16 was TooLong above.)
    if length < kind.min_len() {
        return Err(DecodeError::BadLength { frame_type: t });
    }
    let consumed = HEADER_LEN + length;
    let Some(payload) = buf.get(HEADER_LEN..consumed) else {
        return Ok(None);
    };
    let frame = decode_payload(kind, flags, payload)?;
    Ok(Some((frame, consumed)))
}

/// Decodes a complete payload of a frame whose type and length were already
/// checked against the limits in [`decode`]. `flags` is the header's.
fn decode_payload(kind: Kind, flags: u8, payload: &[u8]) -> Result<Frame<'_>, DecodeError> {
    match kind {
        Kind::Hello => decode_hello(payload, flags & HELLO_PROBE != 0),
        Kind::Welcome => {
            // `decode` admits exactly 16 bytes; the conversion restates that
            // without a panicking index.
            let Ok(b) = <[u8; WELCOME_LEN]>::try_from(payload) else {
                return Err(DecodeError::BadLength { frame_type: frame_type::WELCOME });
            };
            Ok(Frame::Welcome {
                interval_ms: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
                timeout_ms: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
                session: u64::from_be_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]),
            })
        }
        Kind::Ping => Ok(Frame::Ping(payload)),
        Kind::Pong => Ok(Frame::Pong(payload)),
        Kind::Bye => std::str::from_utf8(payload).map(Frame::Bye).map_err(|_| DecodeError::BadField("reason")),
        Kind::Error => {
            let Some((code, message)) = payload.split_first_chunk::<ERROR_CODE_LEN>() else {
                return Err(DecodeError::BadLength { frame_type: frame_type::ERROR });
            };
            let message = std::str::from_utf8(message).map_err(|_| DecodeError::BadField("message"))?;
            Ok(Frame::Error { code: u16::from_be_bytes(*code), message })
        }
    }
}

/// Decodes a complete HELLO payload: version, id_len, id, token_len, token.
fn decode_hello(payload: &[u8], probe: bool) -> Result<Frame<'_>, DecodeError> {
    const BAD_LENGTH: DecodeError = DecodeError::BadLength { frame_type: frame_type::HELLO };
    let Some((&version, rest)) = payload.split_first() else {
        return Err(BAD_LENGTH);
    };
    // The version comes before every other check: a client of another
    // version may lay out the rest differently, and deserves code 2, not 1.
    if version != VERSION {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    let (id, rest) = take_prefixed(rest).ok_or(BAD_LENGTH)?;
    validate_id(id).map_err(|_| DecodeError::BadField("id"))?;
    // validate_id admits ASCII only, so this cannot fail; mapping the error
    // keeps the decoder free of panics all the same.
    let id = std::str::from_utf8(id).map_err(|_| DecodeError::BadField("id"))?;
    let (token, rest) = take_prefixed(rest).ok_or(BAD_LENGTH)?;
    if !rest.is_empty() {
        return Err(BAD_LENGTH);
    }
    Ok(Frame::Hello { version, id, token, probe })
}

/// Splits a `len:u8`-prefixed field off the front of `buf`, returning the
/// field and what follows it, or `None` if the field runs past the end.
fn take_prefixed(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let (&len, rest) = buf.split_first()?;
    let len = usize::from(len);
    Some((rest.get(..len)?, rest.get(len..)?))
}

/// Appends the encoding of `frame` to `out`.
///
/// Text fields (BYE reason, ERROR message) longer than their limit are cut
/// at the last UTF-8 character boundary that fits; PING/PONG payloads are
/// cut to [`MAX_PING_PAYLOAD`] bytes. A HELLO's id and token must already be
/// valid ([`validate_id`], [`MAX_TOKEN_LEN`]); this is checked with
/// `debug_assert!` only, since every caller validates first.
pub fn encode(frame: &Frame<'_>, out: &mut Vec<u8>) {
    let start = out.len();
    // The length is patched in once the payload is written.
    let flags = if matches!(frame, Frame::Hello { probe: true, .. }) { HELLO_PROBE } else { 0 };
    out.extend_from_slice(&[type_byte(frame), flags, 0, 0]);
    match *frame {
        Frame::Hello { version, id, token, .. } => {
            debug_assert!(validate_id(id.as_bytes()).is_ok(), "invalid HELLO id {id:?}");
            debug_assert!(token.len() <= MAX_TOKEN_LEN, "HELLO token too long");
            // Release builds cut rather than let the u8 length wrap, so the
            // frame stays well-formed and the peer's error names the field.
            let id = &id.as_bytes()[..id.len().min(MAX_ID_LEN)];
            let token = &token[..token.len().min(MAX_TOKEN_LEN)];
            out.push(version);
            push_prefixed(out, id);
            push_prefixed(out, token);
        }
        Frame::Welcome { interval_ms, timeout_ms, session } => {
            out.extend_from_slice(&interval_ms.to_be_bytes());
            out.extend_from_slice(&timeout_ms.to_be_bytes());
            out.extend_from_slice(&session.to_be_bytes());
        }
        Frame::Ping(payload) | Frame::Pong(payload) => {
            out.extend_from_slice(&payload[..payload.len().min(MAX_PING_PAYLOAD)]);
        }
        Frame::Bye(reason) => {
            out.extend_from_slice(cut_str(reason, MAX_BYE_REASON).as_bytes());
        }
        Frame::Error { code, message } => {
            out.extend_from_slice(&code.to_be_bytes());
            out.extend_from_slice(cut_str(message, MAX_ERROR_MESSAGE).as_bytes());
        }
    }
    let length = out.len() - start - HEADER_LEN;
    // Every payload above is bounded by its type's limit, at most
    // MAX_HELLO_LEN, so the length always fits the u16 field.
    debug_assert!(length <= MAX_HELLO_LEN);
    out[start + 2..start + HEADER_LEN].copy_from_slice(&(length as u16).to_be_bytes());
}

/// The type byte of `frame`.
fn type_byte(frame: &Frame<'_>) -> u8 {
    match frame {
        Frame::Hello { .. } => frame_type::HELLO,
        Frame::Welcome { .. } => frame_type::WELCOME,
        Frame::Ping(_) => frame_type::PING,
        Frame::Pong(_) => frame_type::PONG,
        Frame::Bye(_) => frame_type::BYE,
        Frame::Error { .. } => frame_type::ERROR,
    }
}

/// Appends `field` with a `u8` length prefix; `field` is at most 255 bytes.
fn push_prefixed(out: &mut Vec<u8>, field: &[u8]) {
    debug_assert!(field.len() <= usize::from(u8::MAX));
    out.push(field.len() as u8);
    out.extend_from_slice(field);
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character
/// boundary.
fn cut_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    // A UTF-8 character is at most 4 bytes, so this steps back at most 3
    // times; index 0 is always a boundary, so the loop ends.
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The default `max_frame` of the config.
    const MAX_FRAME: usize = 1024;

    fn enc(frame: &Frame<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        encode(frame, &mut out);
        out
    }

    /// A header for type `t` announcing `length`, followed by `payload`.
    fn raw(t: u8, length: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![t, 0];
        v.extend_from_slice(&length.to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    /// A frame of type `t` whose length matches `payload`.
    fn framed(t: u8, payload: &[u8]) -> Vec<u8> {
        raw(t, payload.len() as u16, payload)
    }

    /// A HELLO payload built field by field, lengths taken from the fields.
    fn hello_payload(version: u8, id: &[u8], token: &[u8]) -> Vec<u8> {
        let mut p = vec![version, id.len() as u8];
        p.extend_from_slice(id);
        p.push(token.len() as u8);
        p.extend_from_slice(token);
        p
    }

    fn dec(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, DecodeError> {
        decode(buf, MAX_FRAME)
    }

    fn too_long(frame_type: u8, length: usize, limit: usize) -> DecodeError {
        DecodeError::TooLong { frame_type, length, limit }
    }

    // --- exact bytes of every frame type ---

    #[test]
    fn hello_bytes_and_round_trip() {
        let f = Frame::Hello { version: 1, id: "dev-1", token: b"tk", probe: false };
        let bytes = enc(&f);
        assert_eq!(bytes, b"\x01\x00\x00\x0a\x01\x05dev-1\x02tk");
        assert_eq!(dec(&bytes), Ok(Some((f, bytes.len()))));
    }

    #[test]
    fn probe_hello_sets_and_reads_flags_bit_0_only() {
        let f = Frame::Hello { version: 1, id: "dev-1", token: b"", probe: true };
        let bytes = enc(&f);
        assert_eq!(bytes, b"\x01\x01\x00\x08\x01\x05dev-1\x00");
        assert_eq!(dec(&bytes), Ok(Some((f, bytes.len()))));
        // Unknown bits are ignored, with or without bit 0.
        let mut other = bytes.clone();
        other[1] = 0xFE;
        assert!(matches!(dec(&other), Ok(Some((Frame::Hello { probe: false, .. }, _)))));
        other[1] = 0xFF;
        assert!(matches!(dec(&other), Ok(Some((Frame::Hello { probe: true, .. }, _)))));
        // Bit 0 means nothing on other frames.
        assert_eq!(dec(b"\x03\x01\x00\x00"), Ok(Some((Frame::Ping(b""), 4))));
    }

    #[test]
    fn hello_with_empty_token() {
        let f = Frame::Hello { version: 1, id: "a", token: b"", probe: false };
        let bytes = enc(&f);
        assert_eq!(bytes, b"\x01\x00\x00\x04\x01\x01a\x00");
        assert_eq!(dec(&bytes), Ok(Some((f, 8))));
    }

    #[test]
    fn welcome_bytes_and_round_trip() {
        let f = Frame::Welcome { interval_ms: 0x0102_0304, timeout_ms: 0x0506_0708, session: 0x090a_0b0c_0d0e_0f10 };
        let bytes = enc(&f);
        assert_eq!(bytes, [2, 0, 0, 16, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]);
        assert_eq!(dec(&bytes), Ok(Some((f, 20))));
    }

    #[test]
    fn ping_and_pong_bytes_and_round_trip() {
        let ping = Frame::Ping(b"xyz");
        let bytes = enc(&ping);
        assert_eq!(bytes, b"\x03\x00\x00\x03xyz");
        assert_eq!(dec(&bytes), Ok(Some((ping, 7))));

        let pong = Frame::Pong(b"");
        let bytes = enc(&pong);
        assert_eq!(bytes, [4, 0, 0, 0]);
        assert_eq!(dec(&bytes), Ok(Some((pong, 4))));
    }

    #[test]
    fn bye_bytes_and_round_trip() {
        let f = Frame::Bye("left");
        let bytes = enc(&f);
        assert_eq!(bytes, b"\x05\x00\x00\x04left");
        assert_eq!(dec(&bytes), Ok(Some((f, 8))));
    }

    #[test]
    fn error_bytes_and_round_trip() {
        let f = Frame::Error { code: error_code::REPLACED, message: "replaced" };
        let bytes = enc(&f);
        assert_eq!(bytes, b"\x06\x00\x00\x0a\x00\x06replaced");
        assert_eq!(dec(&bytes), Ok(Some((f, 14))));
    }

    #[test]
    fn flags_are_written_zero_and_ignored_on_read() {
        let mut bytes = enc(&Frame::Ping(b"p"));
        assert_eq!(bytes[1], 0);
        bytes[1] = 0xFF;
        assert_eq!(dec(&bytes), Ok(Some((Frame::Ping(b"p"), 5))));
    }

    // --- incomplete input ---

    #[test]
    fn empty_and_partial_header_need_more() {
        assert_eq!(dec(&[]), Ok(None));
        assert_eq!(dec(&[frame_type::PING]), Ok(None));
        assert_eq!(dec(&[frame_type::PING, 0]), Ok(None));
        assert_eq!(dec(&[frame_type::PING, 0, 0]), Ok(None));
    }

    #[test]
    fn partial_payload_needs_more() {
        let bytes = enc(&Frame::Bye("shutdown"));
        for cut in 0..bytes.len() {
            assert_eq!(dec(&bytes[..cut]), Ok(None), "prefix of {cut} bytes");
        }
    }

    #[test]
    fn does_not_read_past_the_frame() {
        let mut bytes = enc(&Frame::Ping(b"ab"));
        bytes.extend_from_slice(&[0xFF, 0xFF, 0xFF]);
        assert_eq!(dec(&bytes), Ok(Some((Frame::Ping(b"ab"), 6))));
    }

    // --- unknown type ---

    #[test]
    fn unknown_type_is_rejected_from_the_type_byte_alone() {
        for t in [0x00, 0x07, 0x09, 0x80, 0xFF] {
            assert_eq!(dec(&[t]), Err(DecodeError::UnknownType(t)));
            assert_eq!(dec(&[t, 0, 0, 0]), Err(DecodeError::UnknownType(t)));
        }
    }

    // --- per-type limits: exact limit, limit + 1 ---

    #[test]
    fn ping_and_pong_limit() {
        for t in [frame_type::PING, frame_type::PONG] {
            let ok = framed(t, &[7; MAX_PING_PAYLOAD]);
            assert_eq!(dec(&ok).map(|r| r.map(|(_, n)| n)), Ok(Some(36)));
            // Only the header is present: the length alone condemns it.
            assert_eq!(dec(&raw(t, 33, &[])), Err(too_long(t, 33, 32)));
        }
    }

    #[test]
    fn bye_limit() {
        let ok = framed(frame_type::BYE, &[b'r'; MAX_BYE_REASON]);
        assert!(matches!(dec(&ok), Ok(Some((Frame::Bye(r), 132))) if r.len() == 128));
        assert_eq!(dec(&raw(frame_type::BYE, 129, &[])), Err(too_long(frame_type::BYE, 129, 128)));
    }

    #[test]
    fn error_limit() {
        let mut p = vec![0, 1];
        p.extend_from_slice(&[b'm'; MAX_ERROR_MESSAGE]);
        let ok = framed(frame_type::ERROR, &p);
        assert!(matches!(
            dec(&ok),
            Ok(Some((Frame::Error { code: 1, message }, 262))) if message.len() == 256
        ));
        assert_eq!(dec(&raw(frame_type::ERROR, 259, &[])), Err(too_long(frame_type::ERROR, 259, 258)));
    }

    #[test]
    fn hello_limit() {
        let id = [b'i'; MAX_ID_LEN];
        let token = [0xAB; MAX_TOKEN_LEN];
        let ok = framed(frame_type::HELLO, &hello_payload(1, &id, &token));
        assert_eq!(ok.len(), HEADER_LEN + MAX_HELLO_LEN);
        assert!(matches!(
            dec(&ok),
            Ok(Some((Frame::Hello { id: i, token: t, .. }, 326))) if i.len() == 64 && t.len() == 255
        ));
        assert_eq!(dec(&raw(frame_type::HELLO, 323, &[])), Err(too_long(frame_type::HELLO, 323, 322)));
    }

    #[test]
    fn welcome_must_be_exactly_16() {
        let w = frame_type::WELCOME;
        // 15: too short, known from the header alone.
        assert_eq!(dec(&raw(w, 15, &[])), Err(DecodeError::BadLength { frame_type: w }));
        // 16: fine.
        assert!(matches!(dec(&framed(w, &[0; 16])), Ok(Some((Frame::Welcome { .. }, 20)))));
        assert_eq!(dec(&raw(w, 16, &[0; 15])), Ok(None));
        // 17: over the type's limit.
        assert_eq!(dec(&raw(w, 17, &[])), Err(too_long(w, 17, 16)));
        assert_eq!(dec(&raw(w, 0, &[])), Err(DecodeError::BadLength { frame_type: w }));
    }

    #[test]
    fn error_shorter_than_its_code_is_bad_length() {
        let e = frame_type::ERROR;
        for len in 0..2 {
            assert_eq!(dec(&raw(e, len, &[])), Err(DecodeError::BadLength { frame_type: e }));
        }
        assert_eq!(dec(&framed(e, &[0, 4])), Ok(Some((Frame::Error { code: 4, message: "" }, 6))));
    }

    #[test]
    fn max_frame_below_type_limit_wins() {
        let p = frame_type::PING;
        assert!(matches!(
            decode(&framed(p, &[0; 10]), 10),
            Ok(Some((Frame::Ping(b), 14))) if b.len() == 10
        ));
        assert_eq!(decode(&raw(p, 11, &[]), 10), Err(too_long(p, 11, 10)));

        // WELCOME's exact 16 cannot fit a max_frame of 8: TooLong, limit 8.
        let w = frame_type::WELCOME;
        assert_eq!(decode(&raw(w, 16, &[]), 8), Err(too_long(w, 16, 8)));

        let h = frame_type::HELLO;
        assert_eq!(decode(&raw(h, 20, &[]), 19), Err(too_long(h, 20, 19)));
        assert_eq!(decode(&raw(h, 0xFFFF, &[]), 0), Err(too_long(h, 0xFFFF, 0)));
    }

    #[test]
    fn max_frame_above_type_limit_does_not_raise_it() {
        let p = frame_type::PING;
        assert_eq!(decode(&raw(p, 33, &[]), 65535), Err(too_long(p, 33, 32)));
    }

    // --- HELLO fields ---

    fn dec_hello(payload: &[u8]) -> Result<Option<(Frame<'static>, usize)>, DecodeError> {
        // The buffer must outlive the frame; leak it, these are tests.
        dec(Vec::leak(framed(frame_type::HELLO, payload)))
    }

    const HELLO_BAD_LENGTH: DecodeError = DecodeError::BadLength { frame_type: frame_type::HELLO };

    #[test]
    fn hello_unsupported_version() {
        for v in [0, 2, 0xFF] {
            let r = dec_hello(&hello_payload(v, b"id", b""));
            assert_eq!(r, Err(DecodeError::UnsupportedVersion(v)));
        }
        // Version comes before the layout: a 1-byte v2 HELLO is code 2.
        assert_eq!(dec_hello(&[2]), Err(DecodeError::UnsupportedVersion(2)));
    }

    #[test]
    fn hello_version_is_checked_once_the_payload_is_complete() {
        let bytes = framed(frame_type::HELLO, &hello_payload(2, b"id", b""));
        for cut in 0..bytes.len() {
            assert_eq!(dec(&bytes[..cut]), Ok(None));
        }
        assert_eq!(dec(&bytes), Err(DecodeError::UnsupportedVersion(2)));
    }

    #[test]
    fn hello_id_of_64_is_accepted_and_65_rejected() {
        let id = [b'x'; 64];
        assert!(matches!(
            dec_hello(&hello_payload(1, &id, b"")),
            Ok(Some((Frame::Hello { id: i, .. }, _))) if i.len() == 64
        ));
        let id = [b'x'; 65];
        assert_eq!(dec_hello(&hello_payload(1, &id, b"")), Err(DecodeError::BadField("id")));
    }

    #[test]
    fn hello_id_bytes_must_be_printable_without_space() {
        for bad in [0x20, 0x7F, 0x00, 0x80, 0xFF] {
            assert_eq!(
                dec_hello(&hello_payload(1, &[b'a', bad], b"")),
                Err(DecodeError::BadField("id")),
                "byte {bad:#04x}"
            );
        }
        assert!(matches!(
            dec_hello(&hello_payload(1, &[0x21, 0x7E], b"")),
            Ok(Some((Frame::Hello { id: "!~", .. }, _)))
        ));
    }

    #[test]
    fn hello_empty_id_is_bad_field() {
        assert_eq!(dec_hello(&hello_payload(1, b"", b"t")), Err(DecodeError::BadField("id")));
    }

    #[test]
    fn hello_inner_lengths_must_add_up() {
        // No version byte at all.
        assert_eq!(dec_hello(&[]), Err(HELLO_BAD_LENGTH));
        // No id_len.
        assert_eq!(dec_hello(&[1]), Err(HELLO_BAD_LENGTH));
        // id_len runs past the payload.
        assert_eq!(dec_hello(&[1, 3, b'a', b'b']), Err(HELLO_BAD_LENGTH));
        // No token_len.
        assert_eq!(dec_hello(&[1, 2, b'a', b'b']), Err(HELLO_BAD_LENGTH));
        // token_len runs past the payload.
        assert_eq!(dec_hello(&[1, 1, b'a', 2, 0]), Err(HELLO_BAD_LENGTH));
        // Trailing bytes after the token.
        assert_eq!(dec_hello(&[1, 1, b'a', 1, 0, 0]), Err(HELLO_BAD_LENGTH));
        // The smallest valid HELLO.
        assert_eq!(
            dec_hello(&[1, 1, b'a', 0]),
            Ok(Some((Frame::Hello { version: 1, id: "a", token: b"", probe: false }, 8)))
        );
    }

    // --- text fields ---

    #[test]
    fn bye_reason_must_be_utf8() {
        let bytes = framed(frame_type::BYE, &[b'o', 0xFF, b'k']);
        assert_eq!(dec(&bytes), Err(DecodeError::BadField("reason")));
        // A character cut in half is not UTF-8 either.
        let bytes = framed(frame_type::BYE, &"é".as_bytes()[..1]);
        assert_eq!(dec(&bytes), Err(DecodeError::BadField("reason")));
    }

    #[test]
    fn error_message_must_be_utf8() {
        let bytes = framed(frame_type::ERROR, &[0, 1, 0xC3]);
        assert_eq!(dec(&bytes), Err(DecodeError::BadField("message")));
    }

    // --- encode cuts ---

    #[test]
    fn encode_cuts_ping_and_pong_to_32() {
        let long = [9; 40];
        for f in [Frame::Ping(&long), Frame::Pong(&long)] {
            let bytes = enc(&f);
            assert_eq!(bytes.len(), HEADER_LEN + 32);
            assert_eq!(&bytes[2..4], &[0, 32]);
        }
    }

    #[test]
    fn encode_cuts_bye_at_a_char_boundary() {
        let ascii = "a".repeat(200);
        let bytes = enc(&Frame::Bye(&ascii));
        assert_eq!(dec(&bytes), Ok(Some((Frame::Bye(&ascii[..128]), 132))));

        // 127 ASCII bytes then a 2-byte char: byte 128 is mid-character, so
        // the cut falls at 127.
        let s = format!("{}é", "a".repeat(127));
        let bytes = enc(&Frame::Bye(&s));
        assert_eq!(dec(&bytes), Ok(Some((Frame::Bye(&s[..127]), 131))));

        // Exactly at the limit: nothing cut.
        let s = format!("{}é", "a".repeat(126));
        let bytes = enc(&Frame::Bye(&s));
        assert_eq!(dec(&bytes), Ok(Some((Frame::Bye(&s), 132))));
    }

    #[test]
    fn encode_cuts_error_message_at_a_char_boundary() {
        // 4-byte characters: 256 / 4 = 64 fit exactly, then 255 needs a cut.
        let s = "😀".repeat(70);
        let bytes = enc(&Frame::Error { code: 1, message: &s });
        assert!(matches!(
            dec(&bytes),
            Ok(Some((Frame::Error { code: 1, message }, 262))) if message == "😀".repeat(64)
        ));
        let s = format!("x{}", "😀".repeat(70));
        let bytes = enc(&Frame::Error { code: 1, message: &s });
        assert!(matches!(
            dec(&bytes),
            Ok(Some((Frame::Error { message, .. }, 259))) if message.len() == 253
        ));
    }

    #[test]
    fn cut_str_boundaries() {
        assert_eq!(cut_str("", 0), "");
        assert_eq!(cut_str("abc", 0), "");
        assert_eq!(cut_str("abc", 3), "abc");
        assert_eq!(cut_str("é", 1), "");
        assert_eq!(cut_str("aé", 2), "a");
    }

    #[test]
    fn encode_appends_to_existing_output() {
        let mut out = vec![0xAA];
        encode(&Frame::Ping(b"1"), &mut out);
        encode(&Frame::Bye(""), &mut out);
        assert_eq!(out, [0xAA, 3, 0, 0, 1, b'1', 5, 0, 0, 0]);
    }

    #[cfg(debug_assertions)]
    #[test]
    #[should_panic(expected = "invalid HELLO id")]
    fn encode_hello_with_invalid_id_asserts_in_debug() {
        enc(&Frame::Hello { version: 1, id: "has space", token: b"", probe: false });
    }

    // --- errors: codes and messages ---

    #[test]
    fn error_codes() {
        assert_eq!(DecodeError::UnsupportedVersion(2).error_code(), 2);
        for e in [
            DecodeError::UnknownType(9),
            too_long(3, 40, 32),
            DecodeError::BadLength { frame_type: 2 },
            DecodeError::BadField("id"),
        ] {
            assert_eq!(e.error_code(), error_code::MALFORMED, "{e:?}");
        }
    }

    #[test]
    fn decode_error_display() {
        let cases = [
            (DecodeError::UnknownType(9), "unknown frame type 0x09"),
            (too_long(3, 40, 32), "frame type 0x03 length 40 exceeds limit 32"),
            (DecodeError::BadLength { frame_type: 2 }, "bad length for frame type 0x02"),
            (DecodeError::BadField("id"), "bad field id"),
            (DecodeError::UnsupportedVersion(2), "unsupported version 2"),
        ];
        for (e, s) in cases {
            assert_eq!(e.to_string(), s);
        }
    }

    #[test]
    fn validate_id_cases() {
        assert_eq!(validate_id(b""), Err(IdError::Length(0)));
        assert_eq!(validate_id(&[b'a'; 64]), Ok(()));
        assert_eq!(validate_id(&[b'a'; 65]), Err(IdError::Length(65)));
        assert_eq!(validate_id(b"abc def"), Err(IdError::Byte(3)));
        assert_eq!(validate_id(b"\x7F"), Err(IdError::Byte(0)));
        assert_eq!(validate_id(b"!~"), Ok(()));
        assert_eq!(validate_id("né".as_bytes()), Err(IdError::Byte(1)));
    }

    #[test]
    fn id_error_display() {
        assert_eq!(IdError::Length(0).to_string(), "id must be 1..=64 bytes, got 0");
        assert_eq!(IdError::Byte(3).to_string(), "id byte 3 is not printable ASCII (0x21..=0x7E)");
    }

    // --- properties ---

    /// An owned frame, so strategies can generate what `Frame` borrows.
    #[derive(Debug, Clone)]
    enum Owned {
        Hello(String, Vec<u8>, bool),
        Welcome(u32, u32, u64),
        Ping(Vec<u8>),
        Pong(Vec<u8>),
        Bye(String),
        Error(u16, String),
    }

    impl Owned {
        fn frame(&self) -> Frame<'_> {
            match self {
                Owned::Hello(id, token, probe) => Frame::Hello { version: VERSION, id, token, probe: *probe },
                Owned::Welcome(i, t, s) => Frame::Welcome { interval_ms: *i, timeout_ms: *t, session: *s },
                Owned::Ping(p) => Frame::Ping(p),
                Owned::Pong(p) => Frame::Pong(p),
                Owned::Bye(r) => Frame::Bye(r),
                Owned::Error(c, m) => Frame::Error { code: *c, message: m },
            }
        }
    }

    /// Arbitrary text of at most `max` bytes, any Unicode.
    fn text(max: usize) -> impl Strategy<Value = String> {
        proptest::collection::vec(any::<char>(), 0..=max).prop_map(move |cs| {
            let mut s: String = cs.into_iter().collect();
            while s.len() > max {
                s.pop();
            }
            s
        })
    }

    fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..=max)
    }

    /// Any valid frame, within every limit.
    fn valid_frame() -> impl Strategy<Value = Owned> {
        prop_oneof![
            ("[!-~]{1,64}", bytes(MAX_TOKEN_LEN), any::<bool>()).prop_map(|(i, t, p)| Owned::Hello(i, t, p)),
            any::<(u32, u32, u64)>().prop_map(|(i, t, s)| Owned::Welcome(i, t, s)),
            bytes(MAX_PING_PAYLOAD).prop_map(Owned::Ping),
            bytes(MAX_PING_PAYLOAD).prop_map(Owned::Pong),
            text(MAX_BYE_REASON).prop_map(Owned::Bye),
            (any::<u16>(), text(MAX_ERROR_MESSAGE)).prop_map(|(c, m)| Owned::Error(c, m)),
        ]
    }

    /// Bytes that start like a frame of a known type (or a near miss), so
    /// the fuzzing reaches the payload checks, not only UnknownType.
    fn frame_shaped() -> impl Strategy<Value = Vec<u8>> {
        (0u8..=7, any::<u8>(), 0u16..=400, bytes(400)).prop_map(|(t, flags, len, rest)| {
            let mut v = vec![t, flags];
            v.extend_from_slice(&len.to_be_bytes());
            v.extend_from_slice(&rest);
            v
        })
    }

    proptest! {
        #[test]
        fn prop_round_trip(owned in valid_frame(), slack in 0usize..2000) {
            let frame = owned.frame();
            let bytes = enc(&frame);
            // Any max_frame at least the payload length admits the frame.
            let max_frame = bytes.len() - HEADER_LEN + slack;
            prop_assert_eq!(decode(&bytes, max_frame), Ok(Some((frame, bytes.len()))));
        }

        #[test]
        fn prop_split_at_every_byte(frames in proptest::collection::vec(valid_frame(), 1..6)) {
            let mut stream = Vec::new();
            let mut ends = Vec::new();
            for f in &frames {
                encode(&f.frame(), &mut stream);
                ends.push(stream.len());
            }
            for cut in 0..=stream.len() {
                let prefix = &stream[..cut];
                let mut at = 0;
                let mut i = 0;
                // Decode as a connection would: frame after frame, until the
                // prefix runs out mid-frame.
                while let Some((frame, n)) = decode(&prefix[at..], MAX_FRAME)? {
                    prop_assert_eq!(frame, frames[i].frame());
                    at += n;
                    prop_assert_eq!(at, ends[i]);
                    i += 1;
                }
                // Exactly the frames that end within the prefix came out.
                prop_assert_eq!(i, ends.iter().filter(|&&e| e <= cut).count());
            }
        }

        #[test]
        fn prop_garbage_never_panics(buf in bytes(600), max_frame in 0usize..2000) {
            check_garbage(&buf, max_frame)?;
        }

        #[test]
        fn prop_frame_shaped_garbage_never_panics(buf in frame_shaped(), max_frame in 0usize..2000) {
            check_garbage(&buf, max_frame)?;
        }
    }

    /// Decoding arbitrary bytes neither panics nor over-consumes; what it
    /// accepts re-encodes to the same bytes (flags aside but a HELLO's
    /// probe bit); and every prefix
    /// either needs more or agrees with the whole.
    fn check_garbage(buf: &[u8], max_frame: usize) -> Result<(), TestCaseError> {
        let whole = decode(buf, max_frame);
        if let Ok(Some((frame, n))) = &whole {
            prop_assert!(*n >= HEADER_LEN && *n <= buf.len());
            let mut canonical = buf[..*n].to_vec();
            canonical[1] = if matches!(frame, Frame::Hello { probe: true, .. }) { HELLO_PROBE } else { 0 };
            prop_assert_eq!(enc(frame), canonical);
        }
        for cut in 0..buf.len() {
            match decode(&buf[..cut], max_frame) {
                Ok(None) => {}
                prefix => prop_assert_eq!(&prefix, &whole, "prefix of {} bytes", cut),
            }
        }
        Ok(())
    }
}
