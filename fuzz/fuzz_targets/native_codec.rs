//! The native codec (`wire/native.rs`) on arbitrary bytes.
//!
//! Input: 2 bytes of `max_frame` (big-endian), then the bytes to decode.
//! Invariants: `decode` never panics; a decoded frame used at most the
//! input, and re-encodes to the same bytes (the flags byte aside, of which
//! only the probe bit is read) and decodes back to itself; every strict
//! prefix of a decodable frame is "need more", never an error (else a frame
//! split across reads would be refused); errors map to ERROR 1 or 2.
#![no_main]

use heartbeatd::wire::native::{self, error_code, Frame, HEADER_LEN, HELLO_PROBE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&[hi, lo], bytes)) = data.split_first_chunk::<2>() else { return };
    let max_frame = usize::from(u16::from_be_bytes([hi, lo]));
    match native::decode(bytes, max_frame) {
        Ok(Some((frame, used))) => {
            assert!((HEADER_LEN..=bytes.len()).contains(&used));
            assert!(used - HEADER_LEN <= max_frame, "payload over max_frame");
            let mut out = Vec::new();
            native::encode(&frame, &mut out);
            assert_eq!(out.len(), used, "re-encoded length of {frame:?}");
            assert_eq!(out[0], bytes[0]);
            let probe = matches!(frame, Frame::Hello { probe: true, .. });
            assert_eq!(out[1], if probe { HELLO_PROBE } else { 0 });
            assert_eq!(out[2..], bytes[2..used], "re-encoded bytes of {frame:?}");
            assert_eq!(native::decode(&out, max_frame), Ok(Some((frame, used))));
            for cut in 0..used {
                assert_eq!(native::decode(&bytes[..cut], max_frame), Ok(None), "prefix of {cut} bytes");
            }
        }
        Ok(None) => {
            // Incomplete: the header, if present, announces more than is here.
            if let [_, _, hi, lo, ..] = *bytes {
                assert!(HEADER_LEN + usize::from(u16::from_be_bytes([hi, lo])) > bytes.len());
            }
        }
        Err(e) => {
            assert!(matches!(e.error_code(), error_code::MALFORMED | error_code::UNSUPPORTED_VERSION));
            assert!(!e.to_string().is_empty());
        }
    }
});
