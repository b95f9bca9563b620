//! `heartbeat watch --json [--resume FILE]`: the event feed as one JSON
//! object per line, in order, for programs; with `--resume`, a cursor file
//! so a restart of the watcher or of the daemon loses nothing silently.
//!
//! The cursor holds the id of the last line printed and when the daemon
//! that numbered it started (`process_start_time_seconds` of `/metrics`).
//! Invariants:
//! - a line is printed (and stdout flushed) before the cursor names it, and
//!   the cursor is replaced atomically (a temp file renamed over it), so
//!   after any crash the next run starts at or before the first line not
//!   yet printed: at least once;
//! - events resume from the cursor's id while the same daemon serves;
//!   after a daemon restart (another start time) the ids start over, so a
//!   `gap` line says so and the new daemon's history is replayed from its
//!   first event; when the history no longer holds the events after the
//!   cursor the daemon sends `gap` and a snapshot, printed as they come.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::status::{follow, started_ms, Endpoint, SseEvent, StatusError};

/// Two start times this close are the same daemon: `/metrics` writes it
/// to the millisecond, rounded.
const SAME_START: u64 = 1;

/// Where a resumed watch stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// The id of the last event printed.
    pub id: u64,
    /// When the daemon that numbered it started, Unix ms.
    pub started_ms: u64,
}

impl Cursor {
    /// Reads a cursor file: `ID STARTED_MS`; `None` when absent or unreadable.
    pub fn load(path: &Path) -> Option<Cursor> {
        let text = fs::read_to_string(path).ok()?;
        let mut parts = text.split_whitespace();
        let id = parts.next()?.parse().ok()?;
        let started_ms = parts.next()?.parse().ok()?;
        Some(Cursor { id, started_ms })
    }

    /// Replaces the cursor file atomically: a temp file beside it, synced,
    /// then renamed over it.
    pub fn store(&self, path: &Path) -> io::Result<()> {
        let tmp = temp_path(path);
        let mut file = fs::File::create(&tmp)?;
        writeln!(file, "{} {}", self.id, self.started_ms)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    }
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map_or_else(|| "cursor".into(), |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(".{name}.tmp"))
}

/// One feed event as a JSON line: its data object with `event` and `id`
/// set (`id` absent for events without one, such as `gap`).
pub fn json_line(event: &SseEvent) -> String {
    let mut value = match serde_json::from_str::<serde_json::Value>(&event.data) {
        Ok(serde_json::Value::Object(map)) => serde_json::Value::Object(map),
        _ => serde_json::json!({ "data": event.data }),
    };
    value["event"] = event.event.clone().into();
    if let Some(id) = event.id.as_deref().and_then(|id| id.parse::<u64>().ok()) {
        value["id"] = id.into();
    }
    value.to_string()
}

/// The `Last-Event-ID` to send, and a `gap` line to print first when the
/// daemon is not the one the cursor came from.
pub fn resume_point(cursor: Option<Cursor>, started_ms: u64) -> (Option<u64>, Option<String>) {
    match cursor {
        None => (None, None),
        Some(c) if c.started_ms.abs_diff(started_ms) <= SAME_START => (Some(c.id), None),
        Some(c) => {
            let gap = serde_json::json!({
                "event": "gap",
                "last_event_id": c.id,
                "reason": "daemon restarted: its event ids start over",
            });
            // The new daemon's history from its first event on.
            (Some(0), Some(gap.to_string()))
        }
    }
}

/// Follows the feed once (one connection), printing JSON lines to `out`
/// and advancing `cursor` (stored at `path`, if any) after each line with
/// an id. Returns how many online/offline events it printed; `keep_going`
/// is asked after each, with that count. `token` is the API's bearer
/// token, if it has one.
pub fn follow_once(
    api: &Endpoint,
    token: Option<&str>,
    path: Option<&Path>,
    cursor: &mut Option<Cursor>,
    idle: Duration,
    out: &mut impl Write,
    mut keep_going: impl FnMut(usize) -> bool,
) -> Result<usize, StatusError> {
    let started_ms = started_ms(api, idle, token)?;
    let (after, gap) = resume_point(*cursor, started_ms);
    if let Some(gap) = gap {
        let _ = writeln!(out, "{gap}").and_then(|()| out.flush());
    }
    let resume = after.map(|id| id.to_string());
    let mut printed = 0;
    let mut write_error = None;
    follow(api, resume.as_deref(), idle, token, |event| {
        if let Err(e) = writeln!(out, "{}", json_line(event)).and_then(|()| out.flush()) {
            // A closed stdout (the consumer went away): stop, cursor kept.
            write_error = Some(e);
            return false;
        }
        if let Some(id) = event.id.as_deref().and_then(|id| id.parse::<u64>().ok()) {
            let next = Cursor { id, started_ms };
            if let Some(path) = path {
                if let Err(e) = next.store(path) {
                    eprintln!("heartbeat: writing the cursor {}: {e}", path.display());
                }
            }
            *cursor = Some(next);
        }
        if matches!(event.event.as_str(), "online" | "offline") {
            printed += 1;
        }
        keep_going(printed)
    })?;
    match write_error {
        Some(e) => Err(StatusError::Io("writing stdout".into(), e)),
        None => Ok(printed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_through_their_file() {
        let dir = std::env::temp_dir().join(format!("heartbeat-cursor-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("cursor");
        assert_eq!(Cursor::load(&path), None);
        let c = Cursor { id: 42, started_ms: 1_700_000_000_000 };
        c.store(&path).expect("store");
        assert_eq!(Cursor::load(&path), Some(c));
        assert!(!temp_path(&path).exists(), "renamed, not left behind");
        fs::write(&path, "garbage").expect("write");
        assert_eq!(Cursor::load(&path), None);
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn the_same_daemon_resumes_and_a_new_one_is_a_gap() {
        let c = Cursor { id: 7, started_ms: 1_000_000 };
        assert_eq!(resume_point(None, 5), (None, None));
        assert_eq!(resume_point(Some(c), 1_000_001), (Some(7), None));
        let (after, gap) = resume_point(Some(c), 1_009_000);
        assert_eq!(after, Some(0));
        let gap: serde_json::Value = serde_json::from_str(&gap.expect("a gap line")).expect("json");
        assert_eq!((gap["event"].as_str(), gap["last_event_id"].as_u64()), (Some("gap"), Some(7)));
    }

    #[test]
    fn lines_carry_event_and_id() {
        let event = SseEvent { id: Some("3".into()), event: "offline".into(), data: "{\"client\":\"a\"}".into() };
        let v: serde_json::Value = serde_json::from_str(&json_line(&event)).expect("json");
        assert_eq!(
            (v["event"].as_str(), v["id"].as_u64(), v["client"].as_str()),
            (Some("offline"), Some(3), Some("a"))
        );
        let gap = SseEvent { id: None, event: "gap".into(), data: "{}".into() };
        assert!(serde_json::from_str::<serde_json::Value>(&json_line(&gap)).expect("json").get("id").is_none());
    }
}
