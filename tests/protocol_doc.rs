//! Pins the worked examples of `docs/PROTOCOL.md` to the contract and to the
//! codec.
//!
//! Each example in the document is a fenced block preceded by a
//! `<!-- hex: NAME -->` marker; on each line of the block, the bytes come
//! first (two hex digits each, single spaces between them) and an
//! annotation follows after at least two spaces. For every example this
//! test checks three things:
//! - hand-decoding the bytes by the rules of PROTOCOL.md (written here from
//!   the text, without the library) gives the values the document states;
//! - `heartbeatd::wire::native::encode` (or the legacy echo constant)
//!   produces exactly these bytes;
//! - the library's decoder reads them back as the same frame.
//!
//! Invariant: the set of examples in the document and the set checked here
//! are the same, so an example can be neither added unchecked nor dropped
//! silently.

use std::collections::BTreeMap;

use heartbeatd::wire::legacy;
use heartbeatd::wire::native::{self, Frame};

/// The document under test, relative to the crate root.
const DOC: &str = include_str!("../docs/PROTOCOL.md");

/// The marker that names the fenced block after it.
const MARKER: &str = "<!-- hex: ";

/// The default `max_frame` of a listener.
const MAX_FRAME: usize = 1024;

/// Every `<!-- hex: NAME -->` block of the document, as bytes, by name.
fn examples() -> BTreeMap<String, Vec<u8>> {
    let mut found = BTreeMap::new();
    let mut lines = DOC.lines();
    while let Some(line) = lines.next() {
        let Some(rest) = line.trim().strip_prefix(MARKER) else {
            continue;
        };
        let name = rest.strip_suffix("-->").expect("marker ends with -->").trim().to_string();
        let fence = lines.next().expect("a fenced block follows the marker");
        assert!(fence.starts_with("```"), "{name}: expected a fence after the marker, got {fence:?}");
        let mut bytes = Vec::new();
        for body in lines.by_ref() {
            if body.starts_with("```") {
                break;
            }
            bytes.extend(parse_line(&name, body));
        }
        assert!(found.insert(name.clone(), bytes).is_none(), "example {name} appears twice");
    }
    found
}

/// The bytes of one annotated line: the hex pairs before the first run of
/// two spaces.
fn parse_line(name: &str, line: &str) -> Vec<u8> {
    let hex = line.split("  ").next().unwrap_or("");
    hex.split(' ')
        .filter(|t| !t.is_empty())
        .map(|t| {
            assert_eq!(t.len(), 2, "{name}: {t:?} in {line:?} is not one byte");
            u8::from_str_radix(t, 16).unwrap_or_else(|_| panic!("{name}: {t:?} in {line:?} is not hex"))
        })
        .collect()
}

/// A native frame taken apart by the PROTOCOL.md header rules alone:
/// `type:u8`, `flags:u8`, `length:u16` big-endian, then `length` bytes.
fn split_native(bytes: &[u8]) -> (u8, u8, &[u8]) {
    assert!(bytes.len() >= 4, "a native frame has a 4-byte header");
    let length = usize::from(u16::from_be_bytes([bytes[2], bytes[3]]));
    assert_eq!(bytes.len(), 4 + length, "the length field counts exactly the payload");
    (bytes[0], bytes[1], &bytes[4..])
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b.try_into().expect("4 bytes"))
}

/// Checks that `bytes` is what the codec encodes for `frame`, and that the
/// codec decodes it back to `frame`, consuming all of it.
fn check_codec(name: &str, bytes: &[u8], frame: Frame<'_>) {
    let mut encoded = Vec::new();
    native::encode(&frame, &mut encoded);
    assert_eq!(encoded, bytes, "{name}: the document's bytes differ from native::encode");
    assert_eq!(native::decode(bytes, MAX_FRAME), Ok(Some((frame, bytes.len()))), "{name}: decode");
}

#[test]
fn the_document_has_exactly_the_checked_examples() {
    let names: Vec<String> = examples().into_keys().collect();
    assert_eq!(names, ["bye", "error", "hello", "legacy-data-16", "legacy-heartbeat", "ping", "pong", "welcome"]);
}

#[test]
fn hello_dev_42_with_empty_token() {
    let bytes = &examples()["hello"];
    let (t, flags, p) = split_native(bytes);
    assert_eq!((t, flags), (0x01, 0));
    // version:u8, id_len:u8, id, token_len:u8, token; nothing after.
    assert_eq!(p[0], 1, "version");
    let id_len = usize::from(p[1]);
    let id = &p[2..2 + id_len];
    assert_eq!(id, b"dev-42");
    assert!(id.iter().all(|b| (0x21..=0x7E).contains(b)), "id bytes are printable ASCII without space");
    let token_len = usize::from(p[2 + id_len]);
    assert_eq!(token_len, 0);
    assert_eq!(p.len(), 3 + id_len + token_len, "no bytes after the token");
    check_codec("hello", bytes, Frame::Hello { version: 1, id: "dev-42", token: b"", probe: false });
}

#[test]
fn welcome_3000_15000_session_17() {
    let bytes = &examples()["welcome"];
    let (t, flags, p) = split_native(bytes);
    assert_eq!((t, flags, p.len()), (0x02, 0, 16));
    assert_eq!(be_u32(&p[0..4]), 3000, "interval_ms");
    assert_eq!(be_u32(&p[4..8]), 15000, "timeout_ms");
    assert_eq!(u64::from_be_bytes(p[8..16].try_into().expect("8 bytes")), 17, "session");
    check_codec("welcome", bytes, Frame::Welcome { interval_ms: 3000, timeout_ms: 15000, session: 17 });
}

#[test]
fn ping_and_its_pong_carry_the_same_four_bytes() {
    let all = examples();
    let (pt, pflags, ping) = split_native(&all["ping"]);
    let (qt, qflags, pong) = split_native(&all["pong"]);
    assert_eq!((pt, pflags, qt, qflags), (0x03, 0, 0x04, 0));
    assert_eq!(ping, [0, 0, 0, 42]);
    assert_eq!(pong, ping, "PONG echoes the PING's payload byte for byte");
    check_codec("ping", &all["ping"], Frame::Ping(&[0, 0, 0, 42]));
    check_codec("pong", &all["pong"], Frame::Pong(&[0, 0, 0, 42]));
}

#[test]
fn bye_shutdown() {
    let bytes = &examples()["bye"];
    let (t, flags, p) = split_native(bytes);
    assert_eq!((t, flags), (0x05, 0));
    assert_eq!(std::str::from_utf8(p), Ok("shutdown"));
    check_codec("bye", bytes, Frame::Bye("shutdown"));
}

#[test]
fn error_6_replaced() {
    let message = "replaced by a newer connection with the same id";
    let bytes = &examples()["error"];
    let (t, flags, p) = split_native(bytes);
    assert_eq!((t, flags), (0x06, 0));
    assert_eq!(u16::from_be_bytes([p[0], p[1]]), 6, "code");
    assert_eq!(std::str::from_utf8(&p[2..]), Ok(message));
    check_codec("error", bytes, Frame::Error { code: 6, message });
}

#[test]
fn legacy_headers_are_little_endian_i32_pairs() {
    let all = examples();
    let fields = |b: &[u8]| {
        assert_eq!(b.len(), legacy::HEADER_LEN);
        let t = i32::from_le_bytes(b[0..4].try_into().expect("4 bytes"));
        let len = i32::from_le_bytes(b[4..8].try_into().expect("4 bytes"));
        (t, len)
    };
    let heartbeat = &all["legacy-heartbeat"];
    assert_eq!(fields(heartbeat), (0, 0));
    assert_eq!(heartbeat[..], legacy::HEARTBEAT_ECHO, "the echo is the heartbeat header");
    let header = legacy::Header { kind: legacy::Kind::Heartbeat, length: 0 };
    assert_eq!(legacy::decode_header(heartbeat, MAX_FRAME), Ok(Some(header)));

    let data = &all["legacy-data-16"];
    assert_eq!(fields(data), (1, 16));
    let header = legacy::Header { kind: legacy::Kind::Data, length: 16 };
    assert_eq!(legacy::decode_header(data, MAX_FRAME), Ok(Some(header)));
}

#[test]
fn the_exchange_table_repeats_the_examples() {
    let all = examples();
    let row = |label: &str| -> Vec<u8> {
        let line = DOC
            .lines()
            .filter(|l| l.starts_with("| C → S |") || l.starts_with("| S → C |"))
            .find(|l| l.contains(label))
            .unwrap_or_else(|| panic!("no exchange row {label:?}"));
        let cell = line.rsplit('`').nth(1).expect("a `bytes` cell");
        parse_line(label, cell)
    };
    assert_eq!(row("| HELLO `dev-42` |"), all["hello"]);
    assert_eq!(row("| WELCOME 3000/15000/17 |"), all["welcome"]);
    assert_eq!(row("| PING |"), all["ping"]);
    assert_eq!(row("| PONG |"), all["pong"]);
    let mut bye = Vec::new();
    native::encode(&Frame::Bye(""), &mut bye);
    assert_eq!(row("| BYE (empty reason) |"), bye);
}
