//! Logging set-up for the binaries: journald's native protocol when stderr
//! is the journal, `simplelog` to stderr otherwise.
//!
//! On a terminal each line is a UTC timestamp, the level and the message.
//! The timestamp has a fixed width ([`TIME_FORMAT`]: microseconds, trailing
//! zeros kept), so lines of one log, or of several merged, sort as text;
//! the message of an event is its logfmt line (see [`crate::event`]). Under
//! systemd the same text becomes the journal entry's `MESSAGE=`, with the
//! priority and, for events, structured fields. The level can change at run
//! time (a reload) through [`set_level`]; the logger is installed once.

use std::sync::OnceLock;

use log::{LevelFilter, Log, Metadata, Record};
use simplelog::{format_description, ColorChoice, ConfigBuilder, FormatItem, TermLogger, TerminalMode};

use crate::journal::{self, Journal};
use crate::systemd;

/// The stderr timestamp: RFC 3339 in UTC with exactly six fractional
/// digits, `2026-12-01T20:00:00.120000Z`, always 27 characters. (simplelog's
/// RFC 3339 format drops trailing zeros, so its width varies and logs do
/// not sort as text.) The offset is simplelog's default, UTC, which the
/// literal `Z` states.
pub const TIME_FORMAT: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");

/// The journal, when the process logs there. Set once at start-up, before
/// the loop runs; read-only afterwards.
static JOURNAL: OnceLock<Journal> = OnceLock::new();

/// Installs the logger at `level`: the journal when stderr is connected to
/// it, stderr text otherwise. Calling it twice only sets the level.
pub fn init(level: LevelFilter) {
    if systemd::stderr_is_journal() {
        if let Ok(journal) = Journal::from_env() {
            if JOURNAL.set(journal).is_ok() && log::set_boxed_logger(Box::new(JournalLogger)).is_ok() {
                set_level(level);
                return;
            }
        }
    }
    let config = ConfigBuilder::new()
        .set_time_format_custom(TIME_FORMAT)
        .set_thread_level(LevelFilter::Off)
        .set_target_level(LevelFilter::Off)
        .set_location_level(LevelFilter::Off)
        .build();
    // The logger is installed once per process; a second init (tests, or a
    // binary that initialises early and again after reading its config) only
    // needs the level change below.
    let _ = TermLogger::init(LevelFilter::Trace, config, TerminalMode::Stderr, ColorChoice::Never);
    set_level(level);
}

/// Reports an error before [`init`] (a config that cannot be used) on
/// stderr. When stderr is the journal the line carries the sd-daemon
/// prefix `<3>`, so journald files it at priority err
/// (`journalctl -p err` shows it); a terminal sees the plain line.
pub fn early_error(message: &str) {
    if systemd::stderr_is_journal() {
        eprintln!("<3>{message}");
    } else {
        eprintln!("{message}");
    }
}

/// Changes the global log level.
pub fn set_level(level: LevelFilter) {
    log::set_max_level(level);
}

/// The journal, when logging goes there.
pub fn journal() -> Option<&'static Journal> {
    JOURNAL.get()
}

/// Sends an entry to the journal, or writes `message` to stderr if the
/// journal refused it, so no line is lost while journald restarts.
pub fn to_journal(journal: &Journal, message: &str, fields: &[(&str, &str)]) {
    if journal.send(fields).is_err() {
        eprintln!("{message}");
    }
}

/// Every log record as a journal entry with its priority.
struct JournalLogger;

impl Log for JournalLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let Some(journal) = JOURNAL.get() else { return };
        let message = record.args().to_string();
        let priority = journal::priority(record.level()).to_string();
        to_journal(
            journal,
            &message,
            &[("MESSAGE", &message), ("PRIORITY", &priority), ("SYSLOG_IDENTIFIER", journal::IDENTIFIER)],
        );
    }

    fn flush(&self) {}
}
