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
use heartbeatd_fuzz::{chunks, deframe_reads, deframer_input, shown};
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

fuzz_target!(|data: &[u8]| {
    let Some((sizes, &[hi, lo], stream)) = deframer_input::<2>(data) else { return };
    let max_frame = usize::from(u16::from_be_bytes([hi, lo]));
    let mut d = NativeDeframer::default();
    let split = deframe_reads(&chunks(stream, sizes), |bytes| shown(d.next(bytes, max_frame)));
    assert_eq!(split, whole(stream, max_frame));
});
