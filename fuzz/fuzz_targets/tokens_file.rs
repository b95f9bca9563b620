//! The tokens file parser (`config/listener.rs`): arbitrary bytes as the
//! `tokens_file` of a native listener.
//!
//! The parser is reached through `config::parse` (it reads the file
//! itself), so the input is written to a scratch file first. Once the
//! parser is a pure function of the bytes, call it directly instead.
//! Invariants: no panic; a file that parses gives at least one token, each
//! 1..=255 bytes, trimmed, no comment, no line break, and each a line of
//! the file; an error names the `tokens_file` key.
#![no_main]

use heartbeatd::config;
use heartbeatd_fuzz::{scratch_dir, write};
use libfuzzer_sys::fuzz_target;

/// A native listener whose tokens come from the file `tokens` beside it.
const CONFIG: &str = "[[listener]]\nname = \"f\"\naddress = \"127.0.0.1:0\"\ntokens_file = \"tokens\"\n";

fuzz_target!(|data: &[u8]| {
    let dir = scratch_dir("tokens_file");
    if !write(&dir.join("tokens"), data) {
        return;
    }
    match config::parse(CONFIG, "fuzz.toml", dir) {
        Ok(config) => {
            let tokens = &config.listeners[0].tokens;
            assert!(!tokens.is_empty(), "no token, so no authentication");
            let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
            for token in tokens {
                assert!((1..=255).contains(&token.len()), "token of {} bytes", token.len());
                assert_eq!(token.trim_ascii(), token.as_slice());
                assert!(!token.starts_with(b"#") && !token.contains(&b'\n'));
                assert!(lines.iter().any(|line| line.trim_ascii() == token.as_slice()), "token not a line");
            }
        }
        Err(e) => assert_eq!(e.key.as_deref(), Some("listener[0].tokens_file"), "{e}"),
    }
});
