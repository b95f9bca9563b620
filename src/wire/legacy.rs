//! The `legacy` wire protocol (PROTOCOL.md §2): a pure codec for the
//! `{int type; int length;}` struct of deployed clients.
//!
//! ```text
//! +----------------+----------------+---------------------+
//! | type (i32 LE)  | length (i32 LE)|  payload (length)   |
//! +----------------+----------------+---------------------+
//! ```
//!
//! Only the header is decoded: the payload is read and discarded by the
//! caller, which skips [`Header::length`] bytes, so a legacy connection
//! never buffers a payload. A frame is complete (activity) once its payload
//! has been skipped.

/// Bytes in a legacy header.
pub const HEADER_LEN: usize = 8;

/// What a legacy frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Type 0: a heartbeat.
    Heartbeat,
    /// Type 1: application data, discarded.
    Data,
}

/// A decoded legacy header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Type 0 or 1.
    pub kind: Kind,
    /// Payload bytes that follow the header, 0..=`max_frame`.
    pub length: usize,
}

/// The 8 bytes written back to a client for each heartbeat with `echo = true`:
/// type 0, length 0.
pub const HEARTBEAT_ECHO: [u8; HEADER_LEN] = [0; HEADER_LEN];

/// Why a legacy header is invalid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// A type other than 0 or 1.
    UnknownType(i32),
    /// A negative length.
    NegativeLength(i32),
    /// A length over `max_frame`.
    TooLong {
        /// The announced length.
        length: usize,
        /// The configured `max_frame`.
        limit: usize,
    },
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let _ = f;
        todo!()
    }
}

impl std::error::Error for DecodeError {}

/// Decodes the header at the start of `buf`: `Ok(None)` if fewer than
/// [`HEADER_LEN`] bytes are present, otherwise the header (which consumed
/// exactly [`HEADER_LEN`] bytes) or why it is invalid. Never panics.
pub fn decode_header(buf: &[u8], max_frame: usize) -> Result<Option<Header>, DecodeError> {
    todo!("{buf:?} {max_frame}")
}

/// Appends a header for `kind` and `length` to `out`.
///
/// # Panics
/// If `length` does not fit an `i32`.
pub fn encode_header(header: Header, out: &mut Vec<u8>) {
    todo!("{header:?} {out:?}")
}
