//! The log's way out that never waits (issue 10, rule R3): stderr and the
//! journal socket are written without blocking, through one bounded buffer.
//!
//! A stopped reader of stderr (`heartbeatd 2>&1 | grep …` with the `grep`
//! stopped), a terminal on ^S or a busy journald must not stop the event
//! loop: a line is written at once when the sink takes it, queued when the
//! sink would block, and dropped (counted) when the queue is full. The loop
//! calls [`Sink::flush`] every round, and wakes within
//! [`crate::logging::RETRY`] while lines wait; when everything is out again
//! after drops, the caller says so in one line ([`Sink::flush`] returns the
//! count once).
//!
//! How stderr is made non-blocking without touching anyone else's file:
//! fd 2 is usually shared with the parent (a shell's terminal, a pipe), and
//! `O_NONBLOCK` is a flag of the shared open file description, so setting
//! it on fd 2 would hand `EAGAIN` to the shell and its other children.
//! Instead the sink opens `/proc/self/fd/2` again, with `O_NONBLOCK` (a new
//! description of the same pipe, terminal or file, flags our own), and
//! `O_APPEND` so a file is never overwritten. A socket cannot be reopened;
//! it is written with `send(MSG_DONTWAIT)`, which is non-blocking per call.
//! Only when neither works (no `/proc`) does the sink write fd 2 as before,
//! blocking, and says so once at start-up ([`Stderr::open`]).
//!
//! Invariants:
//! - Nothing here ever waits (at exit, [`crate::logging::finish`] naps
//!   between flushes, up to a deadline).
//! - At most [`BUFFER_BYTES`] of lines and journal entries are queued; a
//!   line or entry is queued whole or dropped whole, and every dropped one
//!   is counted once in [`dropped_total`].
//! - Lines reach stderr in the order they were taken, entries reach the
//!   journal in theirs; an entry the journal refuses (not a full queue:
//!   journald gone, too large) becomes a stderr line, as before.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::journal::Journal;

/// Bytes of log lines and journal entries the sink holds while its output
/// does not take them: some 1,000 event lines, several seconds of a busy
/// daemon. Past it, lines are dropped and counted.
pub const BUFFER_BYTES: usize = 256 * 1024;

/// Lines and entries dropped since the process started (a full buffer, or
/// an output that failed for good): `heartbeatd_log_dropped_total`.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Lines and entries dropped since the process started.
pub fn dropped_total() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Where stderr text goes.
enum Stderr {
    /// `/proc/self/fd/2` opened again with `O_NONBLOCK`: our own open file
    /// description.
    Reopened(File),
    /// fd 2 is a socket: `send` with `MSG_DONTWAIT`.
    Socket,
    /// Neither was possible: fd 2 itself, which may block.
    Blocking,
    /// A test's own writer.
    #[cfg(test)]
    Test(Box<dyn Write + Send>),
}

impl Stderr {
    /// The non-blocking way to write fd 2, or the blocking one with the
    /// reason it had to be (for one start-up warning).
    fn open() -> (Stderr, Option<io::Error>) {
        const FD2: &str = "/proc/self/fd/2";
        match std::fs::metadata(FD2) {
            Ok(meta) if meta.file_type().is_socket() => (Stderr::Socket, None),
            Ok(_) => match OpenOptions::new()
                .append(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
                .open(FD2)
            {
                Ok(file) => (Stderr::Reopened(file), None),
                Err(e) => (Stderr::Blocking, Some(e)),
            },
            Err(e) => (Stderr::Blocking, Some(e)),
        }
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        match self {
            Stderr::Reopened(file) => file.write(bytes),
            Stderr::Socket => {
                let stderr = io::stderr();
                socket2::SockRef::from(&stderr).send_with_flags(bytes, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
            }
            Stderr::Blocking => io::stderr().write(bytes),
            #[cfg(test)]
            Stderr::Test(w) => w.write(bytes),
        }
    }
}

/// One journal entry waiting for room in the journal's queue.
struct Entry {
    datagram: Vec<u8>,
    /// What stderr gets if the journal refuses the entry.
    fallback: Vec<u8>,
}

impl Entry {
    fn len(&self) -> usize {
        self.datagram.len() + self.fallback.len()
    }
}

/// What the sink does with a line or entry it is handed.
#[derive(Debug, PartialEq, Eq)]
enum Taken {
    Queued,
    Dropped,
}

/// The bounded buffer in front of stderr and the journal.
pub struct Sink {
    stderr: Stderr,
    /// Whole lines for stderr; `text[sent..]` is not written yet.
    text: Vec<u8>,
    sent: usize,
    /// Journal entries not sent yet, oldest first.
    entries: VecDeque<Entry>,
    entry_bytes: usize,
    /// Dropped since the last report.
    unreported: u64,
    /// The last write attempt could not write everything (or failed):
    /// writing has not recovered, so no report yet.
    stuck: bool,
}

impl Sink {
    /// The sink for this process's stderr; the error, if any, says why
    /// stderr could not be made non-blocking.
    pub fn open() -> (Sink, Option<io::Error>) {
        let (stderr, why) = Stderr::open();
        (Sink::with(stderr), why)
    }

    fn with(stderr: Stderr) -> Sink {
        Sink {
            stderr,
            text: Vec::new(),
            sent: 0,
            entries: VecDeque::new(),
            entry_bytes: 0,
            unreported: 0,
            stuck: false,
        }
    }

    /// Bytes queued now.
    fn queued(&self) -> usize {
        self.text.len() - self.sent + self.entry_bytes
    }

    /// True while lines or entries wait for their output.
    pub fn pending(&self) -> bool {
        self.queued() > 0
    }

    fn drop_one(&mut self) -> Taken {
        self.unreported += 1;
        DROPPED.fetch_add(1, Ordering::Relaxed);
        Taken::Dropped
    }

    /// Takes one stderr line (ending in a newline) and writes what it can.
    pub fn line(&mut self, line: &[u8]) {
        self.queue_line(line);
        self.flush_text();
    }

    fn queue_line(&mut self, line: &[u8]) -> Taken {
        if self.queued() + line.len() > BUFFER_BYTES {
            return self.drop_one();
        }
        self.text.extend_from_slice(line);
        Taken::Queued
    }

    /// Takes one journal entry (its encoded datagram, and the stderr line
    /// for when the journal refuses it) and sends what it can.
    pub fn entry(&mut self, journal: &Journal, datagram: Vec<u8>, fallback: Vec<u8>) {
        let entry = Entry { datagram, fallback };
        if self.queued() + entry.len() > BUFFER_BYTES {
            self.drop_one();
        } else {
            self.entry_bytes += entry.len();
            self.entries.push_back(entry);
        }
        self.flush_entries(journal);
    }

    /// Writes what the outputs take now, without waiting. Returns the
    /// number of lines dropped since the last report when writing has
    /// recovered (nothing left queued), once; the caller says it.
    pub fn flush(&mut self, journal: Option<&Journal>) -> Option<u64> {
        if let Some(journal) = journal {
            self.flush_entries(journal);
        }
        self.flush_text();
        if self.stuck || self.pending() || self.unreported == 0 {
            return None;
        }
        Some(std::mem::take(&mut self.unreported))
    }

    /// Sends queued entries until the journal's queue is full. Only a
    /// send that happened clears `stuck`; nothing to send changes nothing.
    fn flush_entries(&mut self, journal: &Journal) {
        if self.entries.is_empty() {
            return;
        }
        while let Some(entry) = self.entries.front() {
            match journal.send_datagram(&entry.datagram) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.stuck = true;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // journald restarting, or an entry too large for it: the
                // line goes to stderr, which the journal also reads.
                Err(_) => {
                    let fallback = std::mem::take(&mut self.entries[0].fallback);
                    self.entry_bytes -= fallback.len();
                    self.queue_line(&fallback);
                }
            }
            if let Some(done) = self.entries.pop_front() {
                self.entry_bytes -= done.len();
            }
        }
        self.stuck = false;
        self.flush_text();
    }

    /// Writes queued text until the output would block. As for entries,
    /// only a write that happened can clear `stuck`.
    fn flush_text(&mut self) {
        if self.sent == self.text.len() {
            return;
        }
        while self.sent < self.text.len() {
            match self.stderr.write(&self.text[self.sent..]) {
                Ok(0) => break,
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // The reader is gone for good (EPIPE) or the fd is broken:
                // what waits can never be written.
                Err(_) => {
                    let lines = self.text[self.sent..].iter().filter(|&&b| b == b'\n').count();
                    for _ in 0..lines {
                        self.drop_one();
                    }
                    self.text.clear();
                    self.sent = 0;
                    self.stuck = true;
                    return;
                }
            }
        }
        if self.sent == self.text.len() {
            self.text.clear();
            self.sent = 0;
            self.stuck = !self.entries.is_empty();
        } else {
            self.stuck = true;
            // Written bytes are forgotten once they are half the bound, so
            // the buffer's memory stays within about 1.5 times the bound.
            if self.sent >= BUFFER_BYTES / 2 {
                self.text.drain(..self.sent);
                self.sent = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixStream;

    /// A sink writing into a non-blocking socket pair whose other end the
    /// test reads (or does not): a pipe with a reader that can stop.
    fn sink() -> (Sink, UnixStream) {
        let (ours, theirs) = UnixStream::pair().expect("socketpair");
        ours.set_nonblocking(true).expect("non-blocking");
        (Sink::with(Stderr::Test(Box::new(ours))), theirs)
    }

    fn read_all(reader: &mut UnixStream) -> Vec<u8> {
        reader.set_nonblocking(true).expect("non-blocking");
        let mut out = Vec::new();
        let mut buf = [0u8; 65536];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        out
    }

    #[test]
    fn a_line_is_written_at_once_when_the_output_takes_it() {
        let (mut s, mut reader) = sink();
        s.line(b"one\n");
        assert!(!s.pending());
        assert_eq!(read_all(&mut reader), b"one\n");
        assert_eq!(s.flush(None), None, "nothing was dropped, nothing to report");
    }

    #[test]
    fn a_stuck_output_queues_up_to_the_bound_then_drops_whole_lines_and_reports_once() {
        let (mut s, mut reader) = sink();
        let line = [b'x'; 99].iter().copied().chain([b'\n']).collect::<Vec<u8>>();
        let before = dropped_total();
        let mut written = 0;
        // Far more than the socket buffer and the bound together.
        for _ in 0..20_000 {
            s.line(&line);
            written += 1;
        }
        assert!(s.pending());
        assert!(s.queued() <= BUFFER_BYTES, "queued {} > {BUFFER_BYTES}", s.queued());
        let dropped = s.unreported;
        assert!(dropped > 0);
        assert!(dropped_total() - before >= dropped);
        assert_eq!(s.flush(None), None, "still stuck: no report yet");
        let mut got = Vec::new();
        while s.pending() {
            got.extend(read_all(&mut reader));
            assert_eq!(s.flush(None).filter(|_| s.pending()), None);
        }
        got.extend(read_all(&mut reader));
        assert_eq!(got.len() % line.len(), 0, "only whole lines arrive");
        assert_eq!((got.len() / line.len()) as u64 + dropped, written);
        // Everything out: the report comes now, and once.
        assert_eq!(s.unreported, 0, "flush returned the count once it was drained");
    }

    #[test]
    fn the_report_comes_once_after_recovery() {
        let (mut s, mut reader) = sink();
        let line = vec![b'y'; 4096];
        let mut n = 0;
        while s.unreported == 0 {
            s.line(&line);
            n += 1;
            assert!(n < 10_000, "never dropped");
        }
        let mut report = None;
        while report.is_none() {
            read_all(&mut reader);
            report = s.flush(None);
        }
        assert_eq!(report, Some(1));
        assert_eq!(s.flush(None), None);
    }

    #[test]
    fn a_reader_gone_for_good_drops_and_never_reports() {
        let (mut s, reader) = sink();
        drop(reader);
        s.line(b"lost\n");
        assert!(!s.pending());
        assert_eq!(s.unreported, 1);
        assert_eq!(s.flush(None), None, "writing has not recovered");
    }
}
