//! The config parser with drop-ins (`config/dropin.rs`): a main file and
//! up to three `conf.d/*.toml` files, merged by `config::load`.
//!
//! Input: the files' texts separated by NUL bytes: the main file, then
//! `conf.d/10.toml`, `20.toml`, `30.toml`. The files are written to a
//! scratch directory of this process, since `load` reads files only.
//! Invariants: no panic; a merged config keeps every invariant of
//! `config/mod.rs` and round-trips through `--print-config`; an error
//! names one of the files.
#![no_main]

use std::fs;

use heartbeatd::config;
use heartbeatd_fuzz::{check_config, scratch_dir, write};
use libfuzzer_sys::fuzz_target;

/// Drop-in names, in merge order.
const DROPINS: [&str; 3] = ["10.toml", "20.toml", "30.toml"];

fuzz_target!(|data: &[u8]| {
    let mut files = data.splitn(DROPINS.len() + 1, |&b| b == 0);
    let main_text = files.next().unwrap_or_default();
    let dir = scratch_dir("config_dropin");
    let main = dir.join("heartbeatd.toml");
    let conf_d = dir.join("conf.d");
    let _ = fs::create_dir_all(&conf_d);
    if !write(&main, main_text) {
        return;
    }
    let mut origins = vec![main.display().to_string()];
    for name in DROPINS {
        let path = conf_d.join(name);
        match files.next() {
            Some(text) => {
                if !write(&path, text) {
                    return;
                }
                origins.push(path.display().to_string());
            }
            // Left by an earlier input: absent from this one.
            None => {
                let _ = fs::remove_file(&path);
            }
        }
    }
    match config::load(&main) {
        Ok(config) => check_config(&config),
        Err(e) => {
            assert!(origins.contains(&e.origin), "error from {:?}: {e}", e.origin);
            assert!(!e.message.is_empty());
        }
    }
});
