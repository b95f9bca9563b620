//! Per-protocol deframers: the state a byte stream needs between reads to
//! be cut into frames, over the pure codecs of [`native`] and [`legacy`].
//!
//! A deframer is fed a slice and returns one item and how many bytes of the
//! slice it used; the caller feeds the rest back until it gets `None` (every
//! byte used, a frame still incomplete). It does no I/O and reads no clock.
//!
//! Invariants:
//! - [`NativeDeframer`] keeps at most one incomplete frame: it takes from
//!   each slice only the bytes that frame still needs, and the header
//!   checks of [`native::decode`] bound a frame before its payload arrives.
//!   It owns no heap memory unless a frame is split across slices.
//! - [`LegacyDeframer`] never buffers a payload and never allocates: it
//!   keeps up to 7 header bytes inline, then counts the payload bytes
//!   still to discard.
//! - Feeding a stream in any split yields the same items as feeding it
//!   whole (tested here and, end to end, in `session`).

use super::legacy;
use super::native::{self, DecodeError, Frame};

/// Cuts a native byte stream into frames.
#[derive(Debug, Default)]
pub struct NativeDeframer {
    /// A frame split across slices; `None` (8 bytes, no heap) otherwise.
    partial: Option<Box<Partial>>,
}

/// The bytes of a frame that arrived in pieces.
#[derive(Debug)]
struct Partial {
    bytes: Vec<u8>,
    /// `bytes` is the whole frame, returned by the previous call, which
    /// borrowed it; it is dropped at the start of the next call.
    complete: bool,
}

impl NativeDeframer {
    /// The next frame from the kept bytes followed by `data`: `Ok(None)`
    /// when all of `data` was kept as an incomplete frame, else the frame
    /// or why the stream is invalid. The `usize` is the bytes of `data`
    /// used (after an error it means nothing: the stream is dead).
    pub fn next<'a>(&'a mut self, data: &'a [u8], max_frame: usize) -> (Result<Option<Frame<'a>>, DecodeError>, usize) {
        if self.partial.as_ref().is_some_and(|p| p.complete) {
            // Frees the buffer: an idle connection keeps no heap memory.
            self.partial = None;
        }
        if self.partial.is_none() {
            return match native::decode(data, max_frame) {
                Ok(Some((frame, used))) => (Ok(Some(frame)), used),
                Ok(None) => {
                    if !data.is_empty() {
                        self.partial = Some(Box::new(Partial { bytes: data.to_vec(), complete: false }));
                    }
                    (Ok(None), data.len())
                }
                Err(e) => (Err(e), 0),
            };
        }
        let Some(partial) = self.partial.as_mut() else {
            return (Ok(None), 0);
        };
        let bytes = &mut partial.bytes;
        let mut used = 0;
        loop {
            match native::decode(bytes, max_frame) {
                Ok(Some(_)) => break,
                Ok(None) if used == data.len() => return (Ok(None), used),
                Ok(None) => {
                    // Only what this frame still needs, so `partial` never
                    // holds the start of the next one.
                    let need = needed(bytes).clamp(1, data.len() - used);
                    bytes.extend_from_slice(&data[used..used + need]);
                    used += need;
                }
                Err(e) => return (Err(e), used),
            }
        }
        partial.complete = true;
        // Decoded twice: the borrow checker cannot return the frame of the
        // loop above. Only frames split across reads take this path.
        match native::decode(&partial.bytes, max_frame) {
            Ok(Some((frame, _))) => (Ok(Some(frame)), used),
            Ok(None) => (Ok(None), used),
            Err(e) => (Err(e), used),
        }
    }
}

/// Bytes still missing before `partial` holds a whole native frame, as far
/// as its header tells.
fn needed(partial: &[u8]) -> usize {
    match partial {
        [_, _, hi, lo, ..] => {
            (native::HEADER_LEN + usize::from(u16::from_be_bytes([*hi, *lo]))).saturating_sub(partial.len())
        }
        _ => native::HEADER_LEN - partial.len(),
    }
}

/// What a legacy stream yields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegacyItem {
    /// A valid header: a frame of this kind began (its payload follows).
    Header(legacy::Kind),
    /// The current frame's payload has been skipped: the frame is complete.
    End,
}

/// Cuts a legacy byte stream into headers and skipped payloads.
#[derive(Debug)]
pub struct LegacyDeframer {
    state: LegacyState,
}

/// Where a legacy stream is: 12 bytes, no heap, ever.
#[derive(Debug, Clone, Copy)]
enum LegacyState {
    /// Gathering a header: the first `have` (0..=7) bytes of it.
    Header { bytes: [u8; legacy::HEADER_LEN - 1], have: u8 },
    /// A header was decoded: this many payload bytes remain to discard;
    /// `Skip(0)` reports [`LegacyItem::End`] on the next call.
    Skip(u32),
}

impl Default for LegacyDeframer {
    fn default() -> LegacyDeframer {
        LegacyDeframer { state: LegacyState::Header { bytes: [0; legacy::HEADER_LEN - 1], have: 0 } }
    }
}

impl LegacyDeframer {
    /// The next item from `data`, and the bytes of `data` used: `Ok(None)`
    /// when all of `data` was used without completing an item.
    pub fn next(&mut self, data: &[u8], max_frame: usize) -> (Result<Option<LegacyItem>, legacy::DecodeError>, usize) {
        match &mut self.state {
            LegacyState::Skip(left) => {
                // `n <= left`, which is a u32.
                let n = data.len().min(*left as usize);
                *left -= n as u32;
                if *left > 0 {
                    return (Ok(None), n);
                }
                *self = LegacyDeframer::default();
                (Ok(Some(LegacyItem::End)), n)
            }
            LegacyState::Header { bytes, have } => {
                let kept = usize::from(*have);
                let take = (legacy::HEADER_LEN - kept).min(data.len());
                if kept + take < legacy::HEADER_LEN {
                    bytes[kept..kept + take].copy_from_slice(&data[..take]);
                    // `kept + take < HEADER_LEN`, which fits a u8.
                    *have = (kept + take) as u8;
                    return (Ok(None), take);
                }
                let mut header = [0; legacy::HEADER_LEN];
                header[..kept].copy_from_slice(&bytes[..kept]);
                header[kept..].copy_from_slice(&data[..take]);
                match legacy::decode_header(&header, max_frame) {
                    Ok(Some(header)) => {
                        // Config caps legacy `max_frame` at 16 MiB, so it fits.
                        self.state = LegacyState::Skip(u32::try_from(header.length).unwrap_or(u32::MAX));
                        (Ok(Some(LegacyItem::Header(header.kind))), take)
                    }
                    Ok(None) => (Ok(None), take),
                    Err(e) => (Err(e), take),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX_FRAME: usize = 1024;

    /// Every frame of `stream` fed in chunks of `chunk` bytes, as debug text.
    fn native_frames(stream: &[u8], chunk: usize) -> Vec<String> {
        let mut d = NativeDeframer::default();
        let mut items = Vec::new();
        for mut piece in stream.chunks(chunk.max(1)) {
            loop {
                let (result, used) = d.next(piece, MAX_FRAME);
                match result {
                    Ok(Some(frame)) => items.push(format!("{frame:?}")),
                    Ok(None) => break,
                    Err(e) => {
                        items.push(format!("error {e}"));
                        return items;
                    }
                }
                piece = &piece[used..];
            }
        }
        items
    }

    /// Every item of a legacy `stream` fed in chunks of `chunk` bytes.
    fn legacy_items(stream: &[u8], chunk: usize) -> Vec<String> {
        let mut d = LegacyDeframer::default();
        let mut items = Vec::new();
        for mut piece in stream.chunks(chunk.max(1)) {
            loop {
                let (result, used) = d.next(piece, MAX_FRAME);
                piece = &piece[used..];
                match result {
                    Ok(Some(item)) => items.push(format!("{item:?}")),
                    Ok(None) => break,
                    Err(e) => {
                        items.push(format!("error {e}"));
                        return items;
                    }
                }
            }
        }
        items
    }

    fn legacy_header(t: i32, len: i32) -> Vec<u8> {
        let mut v = t.to_le_bytes().to_vec();
        v.extend_from_slice(&len.to_le_bytes());
        v
    }

    #[test]
    fn native_frame_split_at_every_byte() {
        let mut stream = Vec::new();
        native::encode(&Frame::Hello { version: native::VERSION, id: "a", token: b"t", probe: false }, &mut stream);
        native::encode(&Frame::Ping(b"12345"), &mut stream);
        native::encode(&Frame::Bye("done"), &mut stream);
        let whole = native_frames(&stream, stream.len());
        assert_eq!(whole.len(), 3);
        for chunk in 1..stream.len() {
            assert_eq!(native_frames(&stream, chunk), whole, "chunk {chunk}");
        }
    }

    #[test]
    fn native_keeps_no_heap_after_a_split_frame() {
        let mut stream = Vec::new();
        native::encode(&Frame::Ping(b"abc"), &mut stream);
        let mut d = NativeDeframer::default();
        assert!(matches!(d.next(&stream[..2], MAX_FRAME), (Ok(None), 2)));
        assert!(matches!(d.next(&stream[2..], MAX_FRAME), (Ok(Some(Frame::Ping(b"abc"))), 5)));
        assert!(matches!(d.next(&[], MAX_FRAME), (Ok(None), 0)));
        assert!(d.partial.is_none());
    }

    #[test]
    fn legacy_zero_length_frame_ends_at_once() {
        let stream = legacy_header(0, 0);
        assert_eq!(legacy_items(&stream, 8), ["Header(Heartbeat)", "End"]);
        assert_eq!(legacy_items(&stream, 3), ["Header(Heartbeat)", "End"]);
    }

    proptest! {
        #[test]
        fn native_any_split_same_items(bytes in proptest::collection::vec(any::<u8>(), 0..300), chunk in 1usize..40) {
            prop_assert_eq!(native_frames(&bytes, chunk), native_frames(&bytes, bytes.len().max(1)));
        }

        #[test]
        fn legacy_any_split_same_items(
            frames in proptest::collection::vec((0i32..2, 0i32..20), 0..20),
            junk in proptest::collection::vec(any::<u8>(), 0..16),
            chunk in 1usize..30,
        ) {
            let mut stream = Vec::new();
            for (t, len) in frames {
                stream.extend(legacy_header(t, len));
                stream.extend(std::iter::repeat_n(7u8, len as usize));
            }
            stream.extend(junk);
            prop_assert_eq!(legacy_items(&stream, chunk), legacy_items(&stream, stream.len().max(1)));
        }
    }
}
