//! The presence feed: online/offline events as Server-Sent Events, and a
//! bounded history of recent ones for `Last-Event-ID` resumption.
//!
//! Pure: nothing here does I/O. The HTTP layer writes what [`Feed`]
//! renders to each subscriber.
//!
//! Invariants:
//! - Event ids count from 1 and grow by one per event, for the daemon's
//!   lifetime; the history holds the last `capacity` of them, contiguous.
//! - Each event is rendered once, when published, and shared by every
//!   subscriber and the history.

use std::collections::VecDeque;
use std::rc::Rc;
use std::time::SystemTime;

use crate::api::EventView;
use crate::event::Event;

/// Where a new subscriber starts.
#[derive(Debug, PartialEq, Eq)]
pub enum Start {
    /// No `Last-Event-ID`: a snapshot of everyone online, then live events.
    Snapshot,
    /// Resume: replay the events after the given id, then live events.
    Replay(u64),
    /// The id is older than the history (or from the future, e.g. a daemon
    /// restart): a `gap` event, then a snapshot.
    Gap {
        /// The id the subscriber asked to resume after.
        asked: u64,
        /// The oldest id still in the history (0 when it is empty).
        oldest: u64,
    },
}

/// The recent-event history and the id counter.
pub struct Feed {
    history: VecDeque<(u64, Rc<str>)>,
    capacity: usize,
    last_id: u64,
}

impl Feed {
    /// An empty feed keeping the last `capacity` events (at least one).
    pub fn new(capacity: usize) -> Feed {
        Feed { history: VecDeque::new(), capacity: capacity.max(1), last_id: 0 }
    }

    /// The id of the newest event, 0 before any.
    pub fn last_id(&self) -> u64 {
        self.last_id
    }

    /// Continues the ids of a previous process (a restart that kept the
    /// connections, issue 11): the next event is `last + 1`, and an id up
    /// to `last` the history no longer holds gets a `gap`.
    pub fn continue_after(&mut self, last: u64) {
        self.last_id = self.last_id.max(last);
    }

    /// Changes how many events are kept, dropping the oldest if needed.
    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity.max(1);
        while self.history.len() > self.capacity {
            self.history.pop_front();
        }
    }

    /// Renders an event as an SSE message, keeps it in the history and
    /// returns it for the live subscribers.
    pub fn publish(&mut self, event: &Event<'_>, at: SystemTime) -> Rc<str> {
        self.last_id += 1;
        let c = event.client();
        let (kind, reason, silent_ms, connected_ms) = match event {
            Event::Online(_) => ("online", None, None, None),
            Event::Offline { reason, silent, connected, .. } => (
                "offline",
                Some(reason.as_str()),
                Some(millis(silent.as_millis())),
                Some(millis(connected.as_millis())),
            ),
        };
        let json = EventView {
            event: kind,
            client: c.id,
            peer: c.peer.to_string(),
            listener: c.listener,
            protocol: c.proto.as_str(),
            session: c.session,
            at: humantime::format_rfc3339_millis(at).to_string(),
            at_ms: unix_ms(at),
            reason,
            silent_ms,
            connected_ms,
        };
        let data = serde_json::to_string(&json).unwrap_or_else(|_| "{}".to_owned());
        let message: Rc<str> = message(Some(self.last_id), kind, &data).into();
        if self.history.len() == self.capacity {
            self.history.pop_front();
        }
        self.history.push_back((self.last_id, Rc::clone(&message)));
        message
    }

    /// Where a subscriber sending `last_event_id` starts.
    pub fn start(&self, last_event_id: Option<u64>) -> Start {
        let Some(asked) = last_event_id else { return Start::Snapshot };
        let oldest = self.history.front().map_or(0, |(id, _)| *id);
        // The first id the history could replay: after ids continued from a
        // previous process, nothing before the next one is kept.
        let needed = self.history.front().map_or(self.last_id + 1, |(id, _)| *id);
        // Resumable when every event after `asked` is still here (the next
        // one it needs is the oldest kept, or later) and the id is not from
        // a future this daemon never reached (an id from before a restart).
        if asked <= self.last_id && asked + 1 >= needed {
            Start::Replay(asked)
        } else {
            Start::Gap { asked, oldest }
        }
    }

    /// The kept events after `id`, oldest first.
    pub fn after(&self, id: u64) -> impl Iterator<Item = &Rc<str>> {
        self.history.iter().filter(move |(event_id, _)| *event_id > id).map(|(_, message)| message)
    }
}

/// One SSE message: optional `id:`, `event:`, one `data:` line (JSON has no
/// raw newlines), blank line.
pub fn message(id: Option<u64>, event: &str, data: &str) -> String {
    let mut out = String::with_capacity(data.len() + 48);
    if let Some(id) = id {
        out.push_str(&format!("id: {id}\n"));
    }
    out.push_str(&format!("event: {event}\ndata: {data}\n\n"));
    out
}

/// Unix milliseconds of a wall-clock instant.
pub fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| millis(d.as_millis()))
}

fn millis(ms: u128) -> u64 {
    u64::try_from(ms).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Client, OfflineReason};
    use crate::wire::Protocol;
    use std::time::Duration;

    fn online(id: &str) -> Event<'_> {
        Event::Online(Client {
            id,
            peer: "127.0.0.1:5000".parse().expect("addr"),
            listener: "main",
            proto: Protocol::Native,
            session: 9,
        })
    }

    #[test]
    fn ids_continued_from_a_previous_process_resume_or_gap() {
        let mut feed = Feed::new(4);
        feed.continue_after(500);
        assert_eq!(feed.start(Some(500)), Start::Replay(500), "nothing happened after 500");
        assert_eq!(feed.start(Some(499)), Start::Gap { asked: 499, oldest: 0 });
        feed.publish(&online("a"), SystemTime::UNIX_EPOCH);
        assert_eq!(feed.last_id(), 501);
        assert_eq!(feed.start(Some(500)), Start::Replay(500));
        assert_eq!(feed.after(500).count(), 1);
        assert_eq!(feed.start(Some(499)), Start::Gap { asked: 499, oldest: 501 });
    }

    #[test]
    fn messages_carry_id_event_and_json() {
        let mut feed = Feed::new(4);
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let m = feed.publish(&online("dev-1"), at);
        assert!(m.starts_with("id: 1\nevent: online\ndata: {"), "{m}");
        assert!(m.ends_with("}\n\n"));
        let data: serde_json::Value =
            serde_json::from_str(m[m.find("data: ").expect("data") + 6..].trim_end()).expect("json");
        assert_eq!(data["client"], "dev-1");
        assert_eq!(data["session"], 9);
        assert_eq!(data["at_ms"], 1_700_000_000_123u64);
        assert_eq!(data["at"], "2023-11-14T22:13:20.123Z");
        assert!(data.get("reason").is_none());

        let first = online("dev-1");
        let off = Event::Offline {
            client: first.client().clone(),
            reason: OfflineReason::Timeout,
            silent: Duration::from_millis(1500),
            connected: Duration::from_secs(9),
            detail: None,
        };
        let m = feed.publish(&off, at);
        assert!(m.starts_with("id: 2\nevent: offline\n"), "{m}");
        assert!(m.contains("\"reason\":\"timeout\"") && m.contains("\"silent_ms\":1500"), "{m}");
    }

    #[test]
    fn resumption_replays_what_the_history_still_holds() {
        let mut feed = Feed::new(3);
        assert_eq!(feed.start(None), Start::Snapshot);
        assert_eq!(feed.start(Some(0)), Start::Replay(0));
        for _ in 0..5 {
            feed.publish(&online("x"), SystemTime::now());
        }
        // History holds ids 3, 4, 5.
        assert_eq!(feed.start(Some(5)), Start::Replay(5));
        assert_eq!(feed.start(Some(2)), Start::Replay(2));
        assert_eq!(feed.after(2).count(), 3);
        assert_eq!(feed.after(4).count(), 1);
        assert_eq!(feed.start(Some(1)), Start::Gap { asked: 1, oldest: 3 });
        assert_eq!(feed.start(Some(99)), Start::Gap { asked: 99, oldest: 3 });
    }

    #[test]
    fn shrinking_the_history_drops_the_oldest() {
        let mut feed = Feed::new(10);
        for _ in 0..6 {
            feed.publish(&online("x"), SystemTime::now());
        }
        feed.set_capacity(2);
        assert_eq!(feed.after(0).count(), 2);
        assert_eq!(feed.start(Some(3)), Start::Gap { asked: 3, oldest: 5 });
    }
}
