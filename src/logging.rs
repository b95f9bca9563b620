//! Logging set-up for the binaries: `simplelog` to stderr.
//!
//! Each line is `LEVEL message` after a UTC timestamp; the message of an
//! event is its logfmt line (see [`crate::event`]). The level can change at
//! run time (a reload) through [`set_level`], which only moves the global
//! `log` filter; the logger itself is installed once.

use log::LevelFilter;
use simplelog::{ColorChoice, ConfigBuilder, TermLogger, TerminalMode};

/// Installs the stderr logger at `level`. Calling it twice is harmless: the
/// second call only sets the level.
pub fn init(level: LevelFilter) {
    let config = ConfigBuilder::new()
        .set_time_format_rfc3339()
        .set_thread_level(LevelFilter::Off)
        .set_target_level(LevelFilter::Off)
        .set_location_level(LevelFilter::Off)
        .build();
    // The logger is installed once per process; a second init (tests, or a
    // binary that initialises early and again after reading its config) only
    // needs the level change below.
    let _ = TermLogger::init(
        LevelFilter::Trace,
        config,
        TerminalMode::Stderr,
        ColorChoice::Never,
    );
    set_level(level);
}

/// Changes the global log level.
pub fn set_level(level: LevelFilter) {
    log::set_max_level(level);
}
