//! The config parser (`config/`): TOML text to the validated `Config`.
//!
//! Input: the text of a config file (UTF-8; other inputs are skipped, as
//! `load` refuses them before parsing).
//! Invariants: no panic; a config that parses keeps every invariant of
//! `config/mod.rs` and prints (`--print-config`) to text that parses back
//! to the same config; an error names its file and a line of it.
#![no_main]

use std::path::Path;

use heartbeatd::config;
use heartbeatd_fuzz::{check_config, check_error};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // Relative tokens files resolve under a directory that does not exist:
    // the file system stays out of this target (see `tokens_file`).
    match config::parse(text, "fuzz.toml", Path::new("/nonexistent")) {
        Ok(config) => check_config(&config),
        Err(e) => check_error(&e, text),
    }
});
