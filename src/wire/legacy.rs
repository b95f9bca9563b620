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
//! deframer (`deframe::LegacyDeframer`), which skips [`Header::length`]
//! bytes, so a legacy connection never buffers a payload. A frame is
//! complete (activity) once its payload has been skipped. The daemon never
//! encodes a header: its only legacy output is [`HEARTBEAT_ECHO`].

/// Bytes in a legacy header.
pub const HEADER_LEN: usize = 8;

/// Wire value of [`Kind::Heartbeat`].
const TYPE_HEARTBEAT: i32 = 0;
/// Wire value of [`Kind::Data`].
const TYPE_DATA: i32 = 1;

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
        match self {
            DecodeError::UnknownType(t) => write!(f, "unknown legacy type {t}"),
            DecodeError::NegativeLength(n) => write!(f, "negative length {n}"),
            DecodeError::TooLong { length, limit } => {
                write!(f, "length {length} exceeds max_frame {limit}")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// Decodes the header at the start of `buf`: `Ok(None)` if fewer than
/// [`HEADER_LEN`] bytes are present, otherwise the header (which consumed
/// exactly [`HEADER_LEN`] bytes) or why it is invalid. Never panics.
pub fn decode_header(buf: &[u8], max_frame: usize) -> Result<Option<Header>, DecodeError> {
    let Some(&[t0, t1, t2, t3, l0, l1, l2, l3]) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    // The type is checked first: a stream that is not this protocol at all
    // is better reported as such than by whatever its "length" happens to be.
    let kind = match i32::from_le_bytes([t0, t1, t2, t3]) {
        TYPE_HEARTBEAT => Kind::Heartbeat,
        TYPE_DATA => Kind::Data,
        t => return Err(DecodeError::UnknownType(t)),
    };
    let raw = i32::from_le_bytes([l0, l1, l2, l3]);
    // On every platform this daemon targets a non-negative i32 fits usize,
    // so the conversion fails exactly for negative lengths.
    let length = usize::try_from(raw).map_err(|_| DecodeError::NegativeLength(raw))?;
    if length > max_frame {
        return Err(DecodeError::TooLong { length, limit: max_frame });
    }
    Ok(Some(Header { kind, length }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Appends a header for `kind` and `length` (the daemon only ever
    /// writes [`HEARTBEAT_ECHO`]; tests write any header).
    fn encode_header(header: Header, out: &mut Vec<u8>) {
        let t = match header.kind {
            Kind::Heartbeat => TYPE_HEARTBEAT,
            Kind::Data => TYPE_DATA,
        };
        out.extend_from_slice(&t.to_le_bytes());
        out.extend_from_slice(&i32::try_from(header.length).expect("length fits i32").to_le_bytes());
    }

    /// The default `max_frame` of the config.
    const MAX_FRAME: usize = 1024;

    /// The 8 header bytes for raw wire values `t` and `len`.
    fn raw(t: i32, len: i32) -> Vec<u8> {
        let mut v = t.to_le_bytes().to_vec();
        v.extend_from_slice(&len.to_le_bytes());
        v
    }

    fn header(kind: Kind, length: usize) -> Header {
        Header { kind, length }
    }

    fn enc(h: Header) -> Vec<u8> {
        let mut out = Vec::new();
        encode_header(h, &mut out);
        out
    }

    #[test]
    fn heartbeat_and_data_bytes() {
        assert_eq!(enc(header(Kind::Heartbeat, 0)), [0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(enc(header(Kind::Data, 0x0102_0304)), [1, 0, 0, 0, 4, 3, 2, 1]);
        assert_eq!(decode_header(&[1, 0, 0, 0, 0x10, 0, 0, 0], MAX_FRAME), Ok(Some(header(Kind::Data, 16))));
    }

    #[test]
    fn heartbeat_echo_is_an_encoded_heartbeat() {
        assert_eq!(enc(header(Kind::Heartbeat, 0)), HEARTBEAT_ECHO);
        assert_eq!(decode_header(&HEARTBEAT_ECHO, MAX_FRAME), Ok(Some(header(Kind::Heartbeat, 0))));
    }

    #[test]
    fn fewer_than_eight_bytes_need_more() {
        let bytes = raw(0, 5);
        for cut in 0..HEADER_LEN {
            assert_eq!(decode_header(&bytes[..cut], MAX_FRAME), Ok(None));
        }
        // Even an invalid type waits for the whole header.
        assert_eq!(decode_header(&raw(7, 0)[..4], MAX_FRAME), Ok(None));
    }

    #[test]
    fn only_the_header_is_read() {
        let mut bytes = raw(1, 3);
        bytes.extend_from_slice(&[0xFF; 3]);
        assert_eq!(decode_header(&bytes, MAX_FRAME), Ok(Some(header(Kind::Data, 3))));
    }

    #[test]
    fn unknown_types() {
        for t in [2, 7, -1, i32::MIN, i32::MAX, 0x100] {
            assert_eq!(decode_header(&raw(t, 0), MAX_FRAME), Err(DecodeError::UnknownType(t)));
        }
    }

    #[test]
    fn type_is_checked_before_length() {
        assert_eq!(decode_header(&raw(7, -1), MAX_FRAME), Err(DecodeError::UnknownType(7)));
        assert_eq!(decode_header(&raw(7, 5000), MAX_FRAME), Err(DecodeError::UnknownType(7)));
    }

    #[test]
    fn negative_lengths() {
        for len in [-1, i32::MIN] {
            assert_eq!(decode_header(&raw(0, len), MAX_FRAME), Err(DecodeError::NegativeLength(len)));
        }
    }

    #[test]
    fn length_limit_is_max_frame() {
        assert_eq!(decode_header(&raw(1, 1024), 1024), Ok(Some(header(Kind::Data, 1024))));
        assert_eq!(decode_header(&raw(1, 1025), 1024), Err(DecodeError::TooLong { length: 1025, limit: 1024 }));
        assert_eq!(decode_header(&raw(0, 0), 0), Ok(Some(header(Kind::Heartbeat, 0))));
        assert_eq!(decode_header(&raw(0, 1), 0), Err(DecodeError::TooLong { length: 1, limit: 0 }));
        assert_eq!(decode_header(&raw(1, i32::MAX), usize::MAX), Ok(Some(header(Kind::Data, i32::MAX as usize))));
    }

    #[test]
    fn encode_appends_to_existing_output() {
        let mut out = vec![0xAA];
        encode_header(header(Kind::Data, 2), &mut out);
        assert_eq!(out, [0xAA, 1, 0, 0, 0, 2, 0, 0, 0]);
    }

    #[test]
    fn display() {
        assert_eq!(DecodeError::UnknownType(7).to_string(), "unknown legacy type 7");
        assert_eq!(DecodeError::NegativeLength(-1).to_string(), "negative length -1");
        assert_eq!(
            DecodeError::TooLong { length: 2000, limit: 1024 }.to_string(),
            "length 2000 exceeds max_frame 1024"
        );
    }

    fn kind() -> impl Strategy<Value = Kind> {
        prop_oneof![Just(Kind::Heartbeat), Just(Kind::Data)]
    }

    proptest! {
        #[test]
        fn prop_round_trip(
            kind in kind(),
            length in 0..=i32::MAX as usize,
            slack in 0usize..1_000_000,
        ) {
            let h = header(kind, length);
            let bytes = enc(h);
            prop_assert_eq!(bytes.len(), HEADER_LEN);
            prop_assert_eq!(decode_header(&bytes, length + slack), Ok(Some(h)));
        }

        /// Headers with their payloads (which the caller skips), split at
        /// every byte: each header is seen once whole, never before.
        #[test]
        fn prop_split_at_every_byte(
            frames in proptest::collection::vec(
                (kind(), proptest::collection::vec(any::<u8>(), 0..20)),
                1..6,
            ),
        ) {
            let mut stream = Vec::new();
            // Each header, where its 8 bytes end, and where its payload ends.
            let mut expected = Vec::new();
            for (kind, payload) in &frames {
                let h = header(*kind, payload.len());
                encode_header(h, &mut stream);
                let header_end = stream.len();
                stream.extend_from_slice(payload);
                expected.push((h, header_end, stream.len()));
            }
            for cut in 0..=stream.len() {
                let prefix = &stream[..cut];
                let mut at = 0;
                let mut seen = 0;
                // Decode as a connection would: header, skip the payload,
                // until the prefix runs out mid-header or mid-payload.
                while let Some(h) = decode_header(&prefix[at..], MAX_FRAME)? {
                    let end = at + HEADER_LEN + h.length;
                    prop_assert_eq!((h, at + HEADER_LEN, end), expected[seen]);
                    seen += 1;
                    if end > cut {
                        break;
                    }
                    at = end;
                }
                // Exactly the headers whose 8 bytes lie within the prefix
                // were decoded, whether or not their payload is complete.
                let complete = expected.iter().filter(|&&(_, h_end, _)| h_end <= cut).count();
                prop_assert_eq!(seen, complete);
            }
        }

        #[test]
        fn prop_garbage_never_panics(
            buf in proptest::collection::vec(any::<u8>(), 0..32),
            max_frame in any::<usize>(),
        ) {
            check_garbage(&buf, max_frame)?;
        }

        /// Garbage with a near-valid type, so length checks are reached.
        #[test]
        fn prop_header_shaped_garbage_never_panics(
            t in -1i32..=2,
            len in any::<i32>(),
            rest in proptest::collection::vec(any::<u8>(), 0..16),
            max_frame in 0usize..4096,
        ) {
            let mut buf = raw(t, len);
            buf.extend_from_slice(&rest);
            check_garbage(&buf, max_frame)?;
        }
    }

    /// Decoding arbitrary bytes never panics; an accepted header needs all
    /// eight bytes, respects `max_frame` and re-encodes to them; and every
    /// prefix needs more.
    fn check_garbage(buf: &[u8], max_frame: usize) -> Result<(), TestCaseError> {
        let result = decode_header(buf, max_frame);
        if let Ok(Some(h)) = result {
            prop_assert!(buf.len() >= HEADER_LEN);
            prop_assert!(h.length <= max_frame);
            prop_assert_eq!(&enc(h)[..], &buf[..HEADER_LEN]);
        }
        if buf.len() < HEADER_LEN {
            prop_assert_eq!(result, Ok(None));
        }
        for cut in 0..buf.len().min(HEADER_LEN) {
            prop_assert_eq!(decode_header(&buf[..cut], max_frame), Ok(None));
        }
        Ok(())
    }
}
