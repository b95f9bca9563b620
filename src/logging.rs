//! Logging set-up for the binaries: journald's native protocol when stderr
//! is the journal, text lines on stderr otherwise; both through the
//! non-blocking, bounded [`crate::logsink`], so a stuck reader of the log
//! never stops the caller (issue 10, rule R3).
//!
//! On a terminal each line is a UTC timestamp, the level in brackets and
//! the message (`2026-12-01T20:00:00.120000Z [INFO] online client=…`). The
//! timestamp has a fixed width ([`TIME_FORMAT`]: microseconds, trailing
//! zeros kept), so lines of one log, or of several merged, sort as text;
//! the message of an event is its logfmt line (see [`crate::event`]). Under
//! systemd the same text becomes the journal entry's `MESSAGE=`, with the
//! priority and, for events, structured fields. The level can change at run
//! time (a reload) through [`set_level`]; the logger is installed once.
//!
//! Invariants:
//! - Logging never waits for its output: a line is written, queued (at most
//!   [`crate::logsink::BUFFER_BYTES`]) or dropped and counted
//!   (`heartbeatd_log_dropped_total`, [`dropped_total`]).
//! - The daemon's loop calls [`flush`] every round and wakes within
//!   [`RETRY`] while lines wait; when the output takes everything again
//!   after drops, one `log-dropped lines=N` warning says how many, whatever
//!   the log level.
//! - The sink's lock is never held while logging, so a report cannot
//!   deadlock.

use std::fmt;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use log::{Level, LevelFilter, Log, Metadata, Record};
use simplelog::{format_description, FormatItem};

use crate::journal::{self, Journal};
use crate::logsink::Sink;
use crate::systemd;

/// The stderr timestamp: RFC 3339 in UTC with exactly six fractional
/// digits, `2026-12-01T20:00:00.120000Z`, always 27 characters (RFC 3339
/// formatters drop trailing zeros, so their width varies and logs do not
/// sort as text). The literal `Z` states the offset: UTC.
pub const TIME_FORMAT: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");

/// While lines wait for their output, the loop wakes at least this often
/// to write them.
pub const RETRY: Duration = Duration::from_millis(50);

/// How long [`finish`] waits at exit for queued lines to be written.
pub const EXIT_WAIT: Duration = Duration::from_secs(1);

/// The journal, when the process logs there. Set once at start-up, before
/// the loop runs; read-only afterwards.
static JOURNAL: OnceLock<Journal> = OnceLock::new();

/// The one sink of the process, opened on first use.
static SINK: OnceLock<Mutex<Sink>> = OnceLock::new();

/// The sink, locked. A panic while it was held leaves a consistent buffer
/// (each step is a whole line), so a poisoned lock is used as it is.
fn sink() -> MutexGuard<'static, Sink> {
    let sink = SINK.get_or_init(|| {
        let (sink, why) = Sink::open();
        if let Some(e) = why {
            // Said once, straight to fd 2: the logger is not installed yet.
            early_error(&format!(
                "heartbeatd: log-sink stderr=blocking error={}",
                crate::event::Logfmt(&e.to_string())
            ));
        }
        Mutex::new(sink)
    });
    sink.lock().unwrap_or_else(|e| e.into_inner())
}

/// Installs the logger at `level`: the journal when stderr is connected to
/// it, stderr text otherwise. Calling it twice only sets the level.
pub fn init(level: LevelFilter) {
    if systemd::stderr_is_journal() && JOURNAL.get().is_none() {
        if let Ok(journal) = Journal::from_env() {
            let _ = JOURNAL.set(journal);
        }
    }
    drop(sink());
    // The logger is installed once per process; a second init (tests, or a
    // binary that initialises early and again after reading its config) only
    // needs the level change below.
    let _ = log::set_boxed_logger(Box::new(SinkLogger));
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

/// Hands an entry to the journal, or, if the journal refuses it (not a
/// full queue: journald restarting), `message` to stderr, so no line is
/// lost that way. Never waits.
pub fn to_journal(journal: &Journal, message: &str, fields: &[(&str, &str)]) {
    let mut datagram = Vec::with_capacity(256);
    journal::encode(fields, &mut datagram);
    sink().entry(journal, datagram, format!("{message}\n").into_bytes());
}

/// Writes what the log's output takes now; after drops, once everything
/// is out, says how many were dropped. The daemon's loop calls it every
/// round.
pub fn flush() {
    let report = sink().flush(JOURNAL.get());
    if let Some(lines) = report {
        // Whatever the level: the reader must learn that lines are missing.
        write(Level::Warn, format_args!("log-dropped lines={lines}"));
    }
}

/// True while lines wait for the log's output.
pub fn pending() -> bool {
    sink().pending()
}

/// Lines dropped since the process started.
pub fn dropped_total() -> u64 {
    crate::logsink::dropped_total()
}

/// At exit: flushes until everything is written or [`EXIT_WAIT`] passes.
pub fn finish() {
    let deadline = Instant::now() + EXIT_WAIT;
    loop {
        flush();
        if !pending() || Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Writes one record at `level`: a journal entry with its priority, or a
/// stderr line.
fn write(level: Level, args: fmt::Arguments<'_>) {
    let message = args.to_string();
    match JOURNAL.get() {
        Some(journal) => {
            let priority = journal::priority(level).to_string();
            to_journal(
                journal,
                &message,
                &[("MESSAGE", &message), ("PRIORITY", &priority), ("SYSLOG_IDENTIFIER", journal::IDENTIFIER)],
            );
        }
        None => {
            let mut line = Vec::with_capacity(message.len() + 40);
            // Formatting into a Vec fails only for a format the constant
            // above does not have; the line then lacks its timestamp.
            let _ = time::OffsetDateTime::now_utc().format_into(&mut line, TIME_FORMAT);
            line.extend_from_slice(format!(" [{level}] {message}\n").as_bytes());
            sink().line(&line);
        }
    }
}

/// Every log record through the sink.
struct SinkLogger;

impl Log for SinkLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            write(record.level(), *record.args());
        }
    }

    fn flush(&self) {
        flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timestamp_has_a_fixed_width() {
        let at = time::macros::datetime!(2026-12-01 20:00:00.12 UTC);
        let text = at.format(TIME_FORMAT).expect("formats");
        assert_eq!(text, "2026-12-01T20:00:00.120000Z");
    }
}
