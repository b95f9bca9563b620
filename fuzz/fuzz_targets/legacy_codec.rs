//! The legacy header codec (`wire/legacy.rs`) on arbitrary bytes.
//!
//! Input: 3 bytes of `max_frame` (big-endian, so up to the config's 16 MiB
//! cap), then the bytes to decode.
//! Invariants: no panic; "need more" exactly below 8 bytes; a decoded
//! header reads back as the wire's type and length, within `max_frame`;
//! each error names what the bytes say.
#![no_main]

use heartbeatd::wire::legacy::{self, DecodeError, Header, Kind, HEADER_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&[a, b, c], bytes)) = data.split_first_chunk::<3>() else { return };
    let max_frame = usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c);
    let result = legacy::decode_header(bytes, max_frame);
    let Some((t, rest)) = bytes.split_first_chunk::<4>() else {
        assert_eq!(result, Ok(None));
        return;
    };
    let Some((l, _)) = rest.split_first_chunk::<4>() else {
        assert_eq!(result, Ok(None), "{} bytes", bytes.len());
        return;
    };
    let (t, l) = (i32::from_le_bytes(*t), i32::from_le_bytes(*l));
    let expected = match (t, usize::try_from(l)) {
        (2.., _) | (..0, _) => Err(DecodeError::UnknownType(t)),
        (_, Err(_)) => Err(DecodeError::NegativeLength(l)),
        (_, Ok(length)) if length > max_frame => Err(DecodeError::TooLong { length, limit: max_frame }),
        (0, Ok(length)) => Ok(Some(Header { kind: Kind::Heartbeat, length })),
        (_, Ok(length)) => Ok(Some(Header { kind: Kind::Data, length })),
    };
    assert_eq!(result, expected);
    assert!(bytes.len() >= HEADER_LEN);
    if let Err(e) = result {
        assert!(!e.to_string().is_empty());
    }
});
