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
        todo!()
    }
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let _ = f;
        todo!()
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
        let _ = f;
        todo!()
    }
}

impl std::error::Error for IdError {}

/// Checks a client id against PROTOCOL.md: 1..=64 bytes, each 0x21..=0x7E.
pub fn validate_id(id: &[u8]) -> Result<(), IdError> {
    todo!("{id:?}")
}

/// Decodes the first frame in `buf`.
///
/// Returns `Ok(None)` when `buf` holds only part of a frame (read more),
/// `Ok(Some((frame, consumed)))` for a complete frame of `consumed` bytes,
/// or an error as soon as the bytes present prove the frame invalid.
/// `max_frame` caps the payload length on top of the per-type limits.
pub fn decode(buf: &[u8], max_frame: usize) -> Result<Option<(Frame<'_>, usize)>, DecodeError> {
    todo!("{buf:?} {max_frame}")
}

/// Appends the encoding of `frame` to `out`.
///
/// Text fields (BYE reason, ERROR message) longer than their limit are cut
/// at the last UTF-8 character boundary that fits; PING/PONG payloads are
/// cut to [`MAX_PING_PAYLOAD`] bytes. A HELLO's id and token must already be
/// valid ([`validate_id`], [`MAX_TOKEN_LEN`]); this is checked with
/// `debug_assert!` only, since every caller validates first.
pub fn encode(frame: &Frame<'_>, out: &mut Vec<u8>) {
    todo!("{frame:?} {out:?}")
}
