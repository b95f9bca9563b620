//! The tokens file parser (`config/tokens.rs`): arbitrary bytes as a
//! `tokens_file`, through the pure `tokens::parse`.
//!
//! Invariants: no panic; a file that parses holds at least one entry;
//! every plain token is 1..=255 bytes, trimmed, not a comment, and one
//! line of the file; every bound id is 1..=64 bytes; an error names a line of the file (0:
//! the whole file) and says what is wrong.
#![no_main]

use heartbeatd::config::tokens;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    match tokens::parse(data) {
        Ok(parsed) => {
            assert!(!parsed.is_empty(), "parsed, yet no entry");
            for token in &parsed.plain {
                assert!((1..=255).contains(&token.len()), "token of {} bytes", token.len());
                assert_eq!(token.trim_ascii(), token.as_slice());
                assert!(!token.starts_with(b"#") && !token.contains(&b'\n'));
                assert!(lines.iter().any(|line| line.trim_ascii() == token.as_slice()), "token not a line");
            }
            for id in parsed.credentials.bound.keys() {
                assert!((1..=64).contains(&id.len()), "id of {} bytes", id.len());
            }
        }
        Err(e) => {
            assert!(e.line <= lines.len(), "line {} of {}", e.line, lines.len());
            assert!(!e.message.is_empty(), "an error without a message");
        }
    }
});
