//! The WebSocket upgrade request parser and frame deframer
//! (`wire/websocket.rs`) fed arbitrary bytes in arbitrary reads.
//!
//! Input: 1 byte `n`, then `n` read sizes, then 2 bytes of `max_frame`,
//! then the stream; the same stream is also parsed as an upgrade request.
//! Invariants: no panic; a complete request is no longer than its input;
//! each deframer call uses at most the slice it is given; the items and
//! the error (if any) are exactly those of `deframe_all` over the whole
//! stream at once.
#![no_main]

use heartbeatd::wire::websocket::{self, Deframer};
use heartbeatd_fuzz::chunks;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else { return };
    let n = usize::from(n).min(rest.len());
    let (sizes, rest) = rest.split_at(n);
    if rest.len() < 2 {
        return;
    }
    let max_frame = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
    let stream = &rest[2..];

    if let Ok(Some(request)) = websocket::parse_request(stream) {
        assert!(request.len <= stream.len(), "request of {} bytes from {}", request.len, stream.len());
    }

    let (whole, whole_error) = websocket::deframe_all(stream, max_frame);
    let mut d = Deframer::default();
    let mut items = Vec::new();
    let mut error = None;
    'reads: for piece in chunks(stream, sizes) {
        let mut left = piece;
        loop {
            let (result, used) = d.next(left, max_frame);
            match result {
                Ok(Some(item)) => {
                    assert!(used <= left.len(), "used {used} of {}", left.len());
                    items.push(item);
                    left = &left[used..];
                }
                Ok(None) => {
                    assert_eq!(used, left.len(), "Ok(None) must use the whole read");
                    break;
                }
                Err(e) => {
                    error = Some(e);
                    break 'reads;
                }
            }
        }
    }
    assert_eq!(items, whole, "split reads gave other items");
    assert_eq!(error, whole_error, "split reads gave another error");
});
