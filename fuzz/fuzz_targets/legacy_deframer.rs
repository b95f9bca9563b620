//! The legacy deframer (`wire/deframe.rs`, skip counter) fed an arbitrary
//! stream in arbitrary reads.
//!
//! Input: 1 byte `n`, then `n` read sizes, then 3 bytes of `max_frame`
//! (up to the config's 16 MiB cap), then the stream.
//! Invariants: no panic; each call uses at most the slice it is given, and
//! `Ok(None)` uses all of it; the headers, ends and error are exactly those
//! of the stream read whole with `legacy::decode_header`, skipping each
//! payload.
#![no_main]

use heartbeatd::wire::deframe::{LegacyDeframer, LegacyItem};
use heartbeatd::wire::legacy::{self, HEADER_LEN};
use heartbeatd_fuzz::{chunks, deframe_reads, deframer_input, shown};
use libfuzzer_sys::fuzz_target;

/// The items of `stream` read whole.
fn whole(stream: &[u8], max_frame: usize) -> Vec<String> {
    let mut items = Vec::new();
    let mut at = 0;
    loop {
        match legacy::decode_header(&stream[at..], max_frame) {
            Ok(Some(header)) => {
                items.push(format!("{:?}", LegacyItem::Header(header.kind)));
                at += HEADER_LEN;
                if stream.len() - at < header.length {
                    return items;
                }
                at += header.length;
                items.push(format!("{:?}", LegacyItem::End));
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
    let Some((sizes, &[a, b, c], stream)) = deframer_input::<3>(data) else { return };
    let max_frame = usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c);
    let mut d = LegacyDeframer::default();
    let split = deframe_reads(&chunks(stream, sizes), |bytes| shown(d.next(bytes, max_frame)));
    assert_eq!(split, whole(stream, max_frame));
});
