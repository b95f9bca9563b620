//! The native deframer (`wire/deframe.rs`, partial-frame assembly) fed an
//! arbitrary stream in arbitrary reads.
//!
//! Input: 1 byte `n`, then `n` read sizes, then 2 bytes of `max_frame`,
//! then the stream.
//! Invariants: no panic; each call uses at most the slice it is given, and
//! `Ok(None)` uses all of it; the frames and the error (if any) are exactly
//! those of `native::decode` run over the whole stream at once.
#![no_main]

use heartbeatd::wire::deframe::NativeDeframer;
use heartbeatd::wire::native;
use heartbeatd_fuzz::chunks;
use libfuzzer_sys::fuzz_target;

/// The frames of `stream` decoded whole, then the error if one ends it.
fn whole(stream: &[u8], max_frame: usize) -> Vec<String> {
    let mut items = Vec::new();
    let mut rest = stream;
    loop {
        match native::decode(rest, max_frame) {
            Ok(Some((frame, used))) => {
                items.push(format!("{frame:?}"));
                rest = &rest[used..];
            }
            Ok(None) => return items,
            Err(e) => {
                items.push(format!("error {e}"));
                return items;
            }
        }
    }
}

/// The same, through the deframer, one read per piece.
fn split(pieces: &[&[u8]], max_frame: usize) -> Vec<String> {
    let mut d = NativeDeframer::default();
    let mut items = Vec::new();
    for &piece in pieces {
        let mut rest = piece;
        loop {
            let (result, used) = d.next(rest, max_frame);
            assert!(used <= rest.len(), "used {used} of {}", rest.len());
            match result {
                Ok(Some(frame)) => items.push(format!("{frame:?}")),
                Ok(None) => {
                    assert_eq!(used, rest.len(), "need-more left bytes unused");
                    break;
                }
                Err(e) => {
                    items.push(format!("error {e}"));
                    return items;
                }
            }
            rest = &rest[used..];
        }
    }
    items
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else { return };
    let Some((sizes, rest)) = rest.split_at_checked(usize::from(n)) else { return };
    let Some((&[hi, lo], stream)) = rest.split_first_chunk::<2>() else { return };
    let max_frame = usize::from(u16::from_be_bytes([hi, lo]));
    assert_eq!(split(&chunks(stream, sizes), max_frame), whole(stream, max_frame));
});
