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
use heartbeatd_fuzz::chunks;
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

/// The same, through the deframer, one read per piece.
fn split(pieces: &[&[u8]], max_frame: usize) -> Vec<String> {
    let mut d = LegacyDeframer::default();
    let mut items = Vec::new();
    for &piece in pieces {
        let mut rest = piece;
        loop {
            let (result, used) = d.next(rest, max_frame);
            assert!(used <= rest.len(), "used {used} of {}", rest.len());
            rest = &rest[used..];
            match result {
                Ok(Some(item)) => items.push(format!("{item:?}")),
                Ok(None) => {
                    assert!(rest.is_empty(), "need-more left {} bytes unused", rest.len());
                    break;
                }
                Err(e) => {
                    items.push(format!("error {e}"));
                    return items;
                }
            }
        }
    }
    items
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else { return };
    let Some((sizes, rest)) = rest.split_at_checked(usize::from(n)) else { return };
    let Some((&[a, b, c], stream)) = rest.split_first_chunk::<3>() else { return };
    let max_frame = usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c);
    assert_eq!(split(&chunks(stream, sizes), max_frame), whole(stream, max_frame));
});
