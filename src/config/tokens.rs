//! HELLO credentials: the tokens file format, its pure parser, and token
//! hashes.
//!
//! A tokens file (a listener's `tokens_file`, and each string of an inline
//! `tokens = [...]`) holds one entry per line; blank lines and lines whose
//! first non-blank byte is `#` are skipped, and each line is trimmed of
//! ASCII whitespace. An entry is one of:
//!
//! ```text
//! sensor-17   sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
//! *           sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae
//! plain-token
//! ```
//!
//! - `ID sha256:HEX` binds the token whose SHA-256 is `HEX` (64 hex digits)
//!   to the id `ID` (the protocol's id rules: 1..=64 bytes in
//!   0x21..=0x7E). A HELLO for a bound id authenticates only with one of
//!   that id's tokens; an id may be listed more than once (rotation).
//! - `* sha256:HEX` is a listener-wide token, stored hashed: it
//!   authenticates any id that is not bound.
//! - anything else is the old form, a listener-wide token in clear
//!   (1..=255 bytes, inner spaces kept): it too authenticates any id that
//!   is not bound. Deprecated (`--check-config` says so): a holder can
//!   claim any unbound id.
//!
//! `heartbeatd --hash-token` prints the `sha256:` form of a token read
//! from standard input.
//!
//! Invariants: [`parse`] is pure (bytes in, entries or the first error's
//! line out) and never panics, whatever the bytes; a token never appears
//! in an error message; a parsed set is never empty (an empty file would
//! silently turn authentication off).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use sha2::{Digest as _, Sha256};

/// A SHA-256 digest of a token.
pub type Digest = [u8; 32];

/// The prefix of a hashed token.
pub const SHA256_PREFIX: &str = "sha256:";

/// The id that names a listener-wide hashed token.
pub const ANY_ID: &str = "*";

/// Longest HELLO token, in bytes: its length is a `u8` on the wire.
pub const MAX_TOKEN_LEN: usize = 255;

/// Longest HELLO id, in bytes (PROTOCOL.md §1, handshake).
const MAX_ID_LEN: usize = 64;

/// One line of a tokens file, or one string of an inline `tokens` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A listener-wide token in clear (the old form).
    Plain(Vec<u8>),
    /// `* sha256:HEX`: a listener-wide token, hashed.
    Shared(Digest),
    /// `ID sha256:HEX`: a token bound to one id, hashed.
    Bound(String, Digest),
}

/// The hashed credentials of a listener: tokens bound to ids, and
/// listener-wide hashed tokens. Plain listener-wide tokens stay in
/// `ListenerConfig::tokens`, where they always were.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// Listener-wide hashed tokens (`* sha256:…`).
    pub shared: Vec<Digest>,
    /// Tokens bound to an id, by id.
    pub bound: BTreeMap<String, Vec<Digest>>,
}

impl Credentials {
    /// True when no hashed credential is configured.
    pub fn is_empty(&self) -> bool {
        self.shared.is_empty() && self.bound.is_empty()
    }

    /// Adds one hashed entry; a plain one is the caller's.
    fn add(&mut self, entry: Entry, plain: &mut Vec<Vec<u8>>) {
        match entry {
            Entry::Plain(token) => plain.push(token),
            Entry::Shared(digest) => self.shared.push(digest),
            Entry::Bound(id, digest) => self.bound.entry(id).or_default().push(digest),
        }
    }

    /// The entries, hashed ones only, in a stable order (for
    /// `--print-config`): shared first, then by id.
    pub fn entries(&self) -> Vec<String> {
        let shared = self.shared.iter().map(|d| format!("{ANY_ID} {}", format_digest(d)));
        let bound = self.bound.iter().flat_map(|(id, ds)| ds.iter().map(move |d| format!("{id} {}", format_digest(d))));
        shared.chain(bound).collect()
    }
}

/// What a tokens file holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tokens {
    /// Listener-wide tokens in clear (the old form), in file order.
    pub plain: Vec<Vec<u8>>,
    /// The hashed entries.
    pub credentials: Credentials,
}

impl Tokens {
    /// Adds one entry.
    pub fn add(&mut self, entry: Entry) {
        self.credentials.add(entry, &mut self.plain);
    }

    /// True when no entry was added.
    pub fn is_empty(&self) -> bool {
        self.plain.is_empty() && self.credentials.is_empty()
    }
}

/// Why a tokens file was refused: the 1-based line and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line; 0 when the whole file is at fault (no entry).
    pub line: usize,
    /// What is wrong, never quoting a token.
    pub message: String,
}

/// Parses a whole tokens file (see the module doc). Pure: the fuzz target
/// `tokens_file` calls it on arbitrary bytes.
pub fn parse(text: &[u8]) -> Result<Tokens, ParseError> {
    let mut tokens = Tokens::default();
    for (number, line) in text.split(|&b| b == b'\n').enumerate() {
        let line = line.trim_ascii();
        if line.is_empty() || line.starts_with(b"#") {
            continue;
        }
        let entry = entry(line).map_err(|message| ParseError { line: number + 1, message })?;
        tokens.add(entry);
    }
    if tokens.is_empty() {
        return Err(ParseError {
            line: 0,
            message: "holds no token: write one entry per line (ID sha256:HEX, or a token)".to_owned(),
        });
    }
    Ok(tokens)
}

/// Parses one entry, already trimmed and not a comment. The error never
/// quotes the text: it may be a token.
pub fn entry(text: &[u8]) -> Result<Entry, String> {
    let fields: Vec<&[u8]> = text.split(u8::is_ascii_whitespace).filter(|f| !f.is_empty()).collect();
    let hashed = fields.iter().skip(1).any(|f| f.starts_with(SHA256_PREFIX.as_bytes()));
    if !hashed {
        if text.is_empty() || text.len() > MAX_TOKEN_LEN {
            return Err(format!("token is {} bytes; tokens are 1..=255 bytes", text.len()));
        }
        return Ok(Entry::Plain(text.to_vec()));
    }
    let [id, credential] = fields[..] else {
        return Err("a hashed entry is `ID sha256:HEX` (or `* sha256:HEX`), two fields".to_owned());
    };
    let digest = parse_digest(credential)?;
    if id == ANY_ID.as_bytes() {
        return Ok(Entry::Shared(digest));
    }
    check_id(id)?;
    // check_id admits printable ASCII only, so this is UTF-8.
    let id = String::from_utf8_lossy(id).into_owned();
    Ok(Entry::Bound(id, digest))
}

/// The protocol's id rule: 1..=64 bytes, each in 0x21..=0x7E.
fn check_id(id: &[u8]) -> Result<(), String> {
    if id.len() > MAX_ID_LEN {
        return Err(format!("id is {} bytes; ids are 1..=64 bytes", id.len()));
    }
    if let Some(bad) = id.iter().find(|b| !(0x21..=0x7E).contains(*b)) {
        return Err(format!("id holds byte 0x{bad:02x}; ids are printable ASCII without spaces"));
    }
    Ok(())
}

/// `sha256:` and 64 hex digits (either case).
fn parse_digest(text: &[u8]) -> Result<Digest, String> {
    let hex = text.strip_prefix(SHA256_PREFIX.as_bytes()).unwrap_or(text);
    let wrong = || format!("{SHA256_PREFIX} wants 64 hex digits (heartbeatd --hash-token makes them)");
    if hex.len() != 64 {
        return Err(wrong());
    }
    let mut digest = [0u8; 32];
    for (byte, pair) in digest.iter_mut().zip(hex.chunks_exact(2)) {
        let high = hex_value(pair[0]).ok_or_else(wrong)?;
        let low = hex_value(pair[1]).ok_or_else(wrong)?;
        *byte = high << 4 | low;
    }
    Ok(digest)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The SHA-256 of a token.
pub fn hash(token: &[u8]) -> Digest {
    Sha256::digest(token).into()
}

/// `sha256:` and the digest in lowercase hex.
pub fn format_digest(digest: &Digest) -> String {
    let mut out = String::with_capacity(SHA256_PREFIX.len() + 64);
    out.push_str(SHA256_PREFIX);
    for b in digest {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The status API's bearer token (`[http] token_file`): where it was read,
/// and its hash, the only form kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiToken {
    /// The file, resolved against the config's directory.
    pub file: std::path::PathBuf,
    /// SHA-256 of the token.
    pub digest: Digest,
}

/// Parses a `token_file` of the status API: the token (trimmed of
/// surrounding whitespace; 1..=255 bytes of printable ASCII without
/// spaces, so it fits an `Authorization` header and a URL unescaped), or
/// its `sha256:HEX`, so the daemon's copy need not be the token itself.
pub fn api_token(text: &[u8]) -> Result<Digest, String> {
    let token = text.trim_ascii();
    if token.starts_with(SHA256_PREFIX.as_bytes()) {
        return parse_digest(token);
    }
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return Err(format!("the token is {} bytes; tokens are 1..=255 bytes", token.len()));
    }
    if let Some(bad) = token.iter().find(|b| !(0x21..=0x7E).contains(*b)) {
        return Err(format!("the token holds byte 0x{bad:02x}; API tokens are printable ASCII without spaces"));
    }
    Ok(hash(token))
}

/// `--hash-token`: the `sha256:HEX` of the token in `input` (standard
/// input), trimmed of surrounding whitespace as the agent trims its token
/// file. The error never quotes the input.
pub fn hash_input(input: &[u8]) -> Result<String, String> {
    let token = input.trim_ascii();
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return Err(format!("the token is {} bytes; tokens are 1..=255 bytes", token.len()));
    }
    Ok(format_digest(&hash(token)))
}

/// True when `digest` is one of `set`. Every digest is compared in full,
/// so the time taken does not tell how much of a guess matched.
pub fn contains(set: &[Digest], digest: &Digest) -> bool {
    set.iter().fold(false, |found, d| found | (d.iter().zip(digest).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `sha256:` of "test", as `sha256sum` prints it.
    const TEST_HASH: &str = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn hashes_as_sha256sum_does() {
        assert_eq!(format_digest(&hash(b"test")), TEST_HASH);
        assert_eq!(parse_digest(TEST_HASH.as_bytes()), Ok(hash(b"test")));
        let upper = format!("{SHA256_PREFIX}{}", TEST_HASH[SHA256_PREFIX.len()..].to_ascii_uppercase());
        assert_eq!(parse_digest(upper.as_bytes()), Ok(hash(b"test")));
    }

    #[test]
    fn parses_every_form_with_comments_and_blanks() {
        let text = format!(
            "# fleet\n\n  sensor-1   {TEST_HASH}  \r\nsensor-1\t{}\n* {}\nold token\n   # indented\n",
            format_digest(&hash(b"rotated")),
            format_digest(&hash(b"shared"))
        );
        let tokens = parse(text.as_bytes()).unwrap();
        assert_eq!(tokens.plain, vec![b"old token".to_vec()]);
        assert_eq!(tokens.credentials.shared, vec![hash(b"shared")]);
        assert_eq!(tokens.credentials.bound["sensor-1"], vec![hash(b"test"), hash(b"rotated")]);
        assert_eq!(tokens.credentials.entries().len(), 3);
    }

    #[test]
    fn the_old_one_token_per_line_file_parses_as_before() {
        let tokens = parse(b"# comment\n\n  alpha  \r\n\t\nbeta\n  # indented comment\ngamma").unwrap();
        assert_eq!(tokens.plain, vec![b"alpha".to_vec(), b"beta".to_vec(), b"gamma".to_vec()]);
        assert!(tokens.credentials.is_empty());
    }

    #[test]
    fn errors_name_the_line_and_never_the_token() {
        let long = "x".repeat(256);
        for (text, line, part) in [
            ("ok\nsecret-id sha256:abc\n".to_owned(), 2, "64 hex digits"),
            (format!("{}\n", TEST_HASH.replace('9', "g").replacen("sha256:", "a sha256:", 1)), 1, "64 hex"),
            (format!("a b {TEST_HASH}\n"), 1, "two fields"),
            (format!("{} {TEST_HASH}\n", "i".repeat(65)), 1, "1..=64 bytes"),
            (format!("\u{e9}t\u{e9} {TEST_HASH}\n"), 1, "byte 0xc3"),
            (format!("ok\n\n{long}\n"), 3, "256 bytes"),
            ("# only comments\n\n".to_owned(), 0, "holds no token"),
        ] {
            let e = parse(text.as_bytes()).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e:?}");
            assert!(e.message.contains(part), "{text:?}: {e:?}");
            assert!(!e.message.contains("secret") && !e.message.contains("xxxx"), "{e:?}");
        }
    }

    #[test]
    fn hash_input_trims_like_the_agent_and_refuses_no_token() {
        assert_eq!(hash_input(b"  test\n").as_deref(), Ok(TEST_HASH));
        assert!(hash_input(b" \n").unwrap_err().contains("0 bytes"));
        assert!(hash_input(&[b'x'; 256]).unwrap_err().contains("256 bytes"));
    }

    #[test]
    fn api_tokens_are_header_safe_or_hashed() {
        assert_eq!(api_token(b"test\n"), Ok(hash(b"test")));
        assert_eq!(api_token(format!("{TEST_HASH}\n").as_bytes()), Ok(hash(b"test")));
        assert!(api_token(b"two words").unwrap_err().contains("0x20"));
        assert!(api_token(b"\n").unwrap_err().contains("0 bytes"));
        assert!(api_token(b"sha256:00").unwrap_err().contains("64 hex"));
    }

    #[test]
    fn contains_compares_whole_digests() {
        let set = [hash(b"a"), hash(b"b")];
        assert!(contains(&set, &hash(b"b")));
        assert!(!contains(&set, &hash(b"c")));
        assert!(!contains(&[], &hash(b"a")));
    }

    proptest! {
        /// Arbitrary bytes: no panic; an accepted file is never empty.
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(tokens) = parse(&bytes) {
                prop_assert!(!tokens.is_empty());
            }
        }

        /// Printed hashed entries parse back to the same credentials.
        #[test]
        fn entries_round_trip(ids in proptest::collection::vec("[!-~]{1,64}", 1..5), shared in any::<bool>()) {
            let mut tokens = Tokens::default();
            for id in ids.iter().filter(|id| id.as_str() != ANY_ID && !id.starts_with('#')) {
                tokens.add(Entry::Bound(id.clone(), hash(id.as_bytes())));
            }
            if shared || tokens.is_empty() {
                tokens.add(Entry::Shared(hash(b"s")));
            }
            let text = tokens.credentials.entries().join("\n");
            prop_assert_eq!(parse(text.as_bytes()).map(|t| t.credentials), Ok(tokens.credentials));
        }
    }
}
