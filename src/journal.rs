//! A journald sink speaking the journal's native protocol: one datagram per
//! entry, `KEY=value` lines, to `/run/systemd/journal/socket`.
//!
//! Used when stderr is the journal ([`crate::systemd::stderr_is_journal`]),
//! so each entry carries its priority and structured fields
//! (`HEARTBEAT_REASON=timeout`, ...) instead of being one more text line.
//!
//! Invariants:
//! - A value containing a newline uses the protocol's binary form (name,
//!   newline, 64-bit little-endian length, bytes, newline), so no value can
//!   forge a field.
//! - A send never waits: the socket is non-blocking, and a full journal
//!   queue is `WouldBlock` for the caller ([`crate::logsink`]) to queue or
//!   drop and count; any other failed send is never silent: the caller
//!   falls back to stderr, which the journal also reads.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

/// Where journald listens for native-protocol datagrams.
pub const DEFAULT_SOCKET: &str = "/run/systemd/journal/socket";

/// Overrides [`DEFAULT_SOCKET`]: for tests and for containers that mount
/// the journal socket elsewhere.
pub const SOCKET_ENV: &str = "HEARTBEATD_JOURNAL_SOCKET";

/// The identifier entries carry (`SYSLOG_IDENTIFIER=`).
pub const IDENTIFIER: &str = "heartbeatd";

/// A connection to journald.
pub struct Journal {
    socket: UnixDatagram,
    path: PathBuf,
}

impl Journal {
    /// Prepares to send to the journal socket at `path`, without blocking.
    pub fn new(path: &Path) -> io::Result<Journal> {
        let socket = UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        Ok(Journal { socket, path: path.to_owned() })
    }

    /// The journal socket named by `$HEARTBEATD_JOURNAL_SOCKET`, or the
    /// default one.
    pub fn from_env() -> io::Result<Journal> {
        let path = std::env::var_os(SOCKET_ENV).map_or_else(|| PathBuf::from(DEFAULT_SOCKET), PathBuf::from);
        Journal::new(&path)
    }

    /// Sends one entry encoded by [`encode`]. `WouldBlock` when journald's
    /// queue is full.
    pub fn send_datagram(&self, datagram: &[u8]) -> io::Result<()> {
        self.socket.send_to(datagram, &self.path).map(drop)
    }
}

/// Appends the native-protocol encoding of `fields` to `out` (names:
/// uppercase ASCII letters, digits and `_`, not starting with `_`).
pub fn encode(fields: &[(&str, &str)], out: &mut Vec<u8>) {
    for (name, value) in fields {
        debug_assert!(valid_name(name), "journal field name {name:?}");
        out.extend_from_slice(name.as_bytes());
        if value.contains('\n') {
            out.push(b'\n');
            out.extend_from_slice(&(value.len() as u64).to_le_bytes());
        } else {
            out.push(b'=');
        }
        out.extend_from_slice(value.as_bytes());
        out.push(b'\n');
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('_')
        && name.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// The syslog priority for a log level (`PRIORITY=`).
pub fn priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes a native-protocol datagram back into fields: the inverse of
    /// [`encode`].
    fn decode(mut data: &[u8]) -> Option<Vec<(String, String)>> {
        let mut fields = Vec::new();
        while !data.is_empty() {
            let end = data.iter().position(|&b| b == b'\n' || b == b'=')?;
            let name = String::from_utf8(data[..end].to_vec()).ok()?;
            let (value, rest) = if data[end] == b'=' {
                let line_end = end + 1 + data[end + 1..].iter().position(|&b| b == b'\n')?;
                (&data[end + 1..line_end], &data[line_end + 1..])
            } else {
                let len_bytes: [u8; 8] = data.get(end + 1..end + 9)?.try_into().ok()?;
                let len = usize::try_from(u64::from_le_bytes(len_bytes)).ok()?;
                let start = end + 9;
                let value = data.get(start..start + len)?;
                (value, data.get(start + len + 1..)?)
            };
            fields.push((name, String::from_utf8(value.to_vec()).ok()?));
            data = rest;
        }
        Some(fields)
    }

    #[test]
    fn simple_and_multiline_values_round_trip() {
        let fields = [("MESSAGE", "online client=a"), ("DETAIL", "two\nlines"), ("PRIORITY", "6")];
        let mut out = Vec::new();
        encode(&fields, &mut out);
        let mut want = b"MESSAGE=online client=a\nDETAIL\n".to_vec();
        want.extend_from_slice(&9u64.to_le_bytes());
        want.extend_from_slice(b"two\nlines\nPRIORITY=6\n");
        assert_eq!(out, want);
        let back = decode(&out).expect("decodes");
        let back: Vec<(&str, &str)> = back.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(back, fields);
    }

    #[test]
    fn sends_one_datagram_per_entry() {
        let dir = std::env::temp_dir().join(format!("heartbeatd-journal-unit-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("socket");
        let _ = std::fs::remove_file(&path);
        let receiver = UnixDatagram::bind(&path).expect("bind");
        let journal = Journal::new(&path).expect("journal");
        let mut datagram = Vec::new();
        encode(&[("MESSAGE", "hello"), ("PRIORITY", "5")], &mut datagram);
        journal.send_datagram(&datagram).expect("send");
        let mut buf = [0u8; 512];
        let n = receiver.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"MESSAGE=hello\nPRIORITY=5\n");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn priorities_follow_syslog() {
        assert_eq!(priority(log::Level::Warn), 4);
        assert_eq!(priority(log::Level::Info), 6);
        assert_eq!(priority(log::Level::Error), 3);
    }
}
