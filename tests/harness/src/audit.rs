//! The event audit of a daemon log: PROTOCOL.md's one offline event per
//! online event, by session.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::log::Line;

/// Online and offline events of a log, by session.
#[derive(Debug, Default)]
pub struct Audit {
    pub online: HashMap<u64, Vec<Line>>,
    pub offline: HashMap<u64, Vec<Line>>,
}

impl Audit {
    pub fn of(lines: &[Line]) -> Audit {
        let mut a = Audit::default();
        for l in lines {
            if l.is("online") {
                a.online.entry(l.num("session")).or_default().push(l.clone());
            } else if l.is("offline") {
                a.offline.entry(l.num("session")).or_default().push(l.clone());
            }
        }
        a
    }

    /// Checks PROTOCOL.md's rule: every online event is followed by exactly
    /// one offline event of the same session, and no offline event lacks
    /// its online event. Returns the problems found.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (s, ons) in &self.online {
            if ons.len() != 1 {
                out.push(format!("session {s}: {} online events", ons.len()));
            }
            match self.offline.get(s).map(Vec::as_slice) {
                None | Some([]) => out.push(format!("session {s}: online but no offline event")),
                Some([off]) => {
                    if off.index < ons[0].index {
                        out.push(format!("session {s}: offline before online"));
                    }
                    for key in ["client", "peer", "listener"] {
                        if off.get(key) != ons[0].get(key) {
                            out.push(format!(
                                "session {s}: {key} differs between online ({:?}) and offline ({:?})",
                                ons[0].get(key),
                                off.get(key)
                            ));
                        }
                    }
                }
                Some(offs) => out.push(format!("session {s}: {} offline events", offs.len())),
            }
        }
        for s in self.offline.keys() {
            if !self.online.contains_key(s) {
                out.push(format!("session {s}: offline without online"));
            }
        }
        out
    }

    /// The reason of the session's offline event, if it has exactly one.
    pub fn reason(&self, session: u64) -> Option<&str> {
        match self.offline.get(&session).map(Vec::as_slice) {
            Some([off]) => off.get("reason"),
            _ => None,
        }
    }
}

/// Milliseconds of a duration as f64, for reports.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Signed milliseconds from `from` to `to`.
pub fn signed_ms(from: Instant, to: Instant) -> f64 {
    if to >= from {
        ms(to - from)
    } else {
        -ms(from - to)
    }
}
