//! Expected clients: the ids listeners' `expect` lists name, and what the
//! daemon knows of each since it started (or since the id was added).
//!
//! Pure but for the wall clock it stamps states with. Invariants:
//! - every expected id is in exactly one state: online, offline (since,
//!   last reason) or never seen;
//! - each id gets at most one `missing` verdict per time it is added: at
//!   `added + its listener's timeout`, if it is not online then;
//! - an id removed by a reload is forgotten, its pending check with it; an
//!   id kept keeps its state.

use std::collections::{BTreeSet, HashMap};
use std::time::{Instant, SystemTime};

use crate::api::PresenceView;
use crate::config::ListenerConfig;
use crate::event::{Event, OfflineReason};
use crate::http::feed::unix_ms;

/// What is known of an expected client.
#[derive(Debug, Clone, PartialEq)]
pub enum Presence {
    /// Online since then, in this session, from this peer.
    Online {
        /// Since when (wall clock).
        since: SystemTime,
        /// Its session number (0 when it was online before it was expected).
        session: u64,
        /// Its peer address.
        peer: String,
    },
    /// Offline since then, for this reason.
    Offline {
        /// Since when (wall clock).
        since: SystemTime,
        /// Why.
        reason: OfflineReason,
    },
    /// Not online at any time since the daemon started or the id was added.
    NeverSeen {
        /// When it was added (the daemon's start, or a reload).
        since: SystemTime,
    },
}

impl Presence {
    /// The `state` label: `online`, `offline`, `never-seen`.
    pub fn label(&self) -> &'static str {
        match self {
            Presence::Online { .. } => "online",
            Presence::Offline { .. } => "offline",
            Presence::NeverSeen { .. } => "never-seen",
        }
    }
}

#[derive(Debug)]
struct Entry {
    listener: String,
    state: Presence,
    /// The pending `missing` check, if not yet made.
    check: Option<Instant>,
}

/// A `missing` verdict: the id and its listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    /// The client id.
    pub id: String,
    /// Its listener.
    pub listener: String,
}

/// Every expected id and its state.
#[derive(Debug, Default)]
pub struct Expected {
    entries: HashMap<String, Entry>,
    /// Ids in config order, for listings.
    order: Vec<String>,
    checks: BTreeSet<(Instant, String)>,
}

impl Expected {
    /// Takes the lists of `listeners` in force from `now`: new ids start
    /// never seen (or online, per `online`) with a check at `now` plus
    /// their listener's timeout; kept ids keep their state; removed ids
    /// are forgotten.
    pub fn reconfigure(&mut self, listeners: &[ListenerConfig], online: impl Fn(&str) -> bool, now: Instant) {
        let wall = SystemTime::now();
        let mut order = Vec::new();
        let mut entries = HashMap::new();
        for l in listeners {
            for id in &l.expect {
                if entries.contains_key(id) {
                    // Expected by two listeners: the first one names it.
                    continue;
                }
                let entry = match self.entries.remove(id) {
                    Some(entry) => Entry { listener: l.name.clone(), ..entry },
                    None => {
                        let at = now + l.timeout;
                        self.checks.insert((at, id.clone()));
                        let state = if online(id) {
                            Presence::Online { since: wall, session: 0, peer: String::new() }
                        } else {
                            Presence::NeverSeen { since: wall }
                        };
                        Entry { listener: l.name.clone(), state, check: Some(at) }
                    }
                };
                order.push(id.clone());
                entries.insert(id.clone(), entry);
            }
        }
        for (id, gone) in self.entries.drain() {
            if let Some(at) = gone.check {
                self.checks.remove(&(at, id));
            }
        }
        self.entries = entries;
        self.order = order;
    }

    /// Follows an event of an expected client (any other is ignored).
    pub fn on_event(&mut self, event: &Event<'_>) {
        let c = event.client();
        let Some(entry) = self.entries.get_mut(c.id) else { return };
        entry.state = match event {
            Event::Online(_) => {
                Presence::Online { since: SystemTime::now(), session: c.session, peer: c.peer.to_string() }
            }
            Event::Offline { reason, .. } => Presence::Offline { since: SystemTime::now(), reason: *reason },
        };
    }

    /// When the next `missing` check is due.
    pub fn next_check(&self) -> Option<Instant> {
        self.checks.first().map(|(at, _)| *at)
    }

    /// Makes the checks due at `now`: the ids not online then.
    pub fn due(&mut self, now: Instant) -> Vec<Missing> {
        let mut out = Vec::new();
        while let Some((at, id)) = self.checks.first().cloned() {
            if at > now {
                break;
            }
            self.checks.pop_first();
            if let Some(entry) = self.entries.get_mut(&id) {
                entry.check = None;
                if !matches!(entry.state, Presence::Online { .. }) {
                    out.push(Missing { id, listener: entry.listener.clone() });
                }
            }
        }
        out
    }

    /// How many expected ids are in each state.
    pub fn counts(&self) -> [(&'static str, usize); 3] {
        let mut counts = [("online", 0), ("offline", 0), ("never-seen", 0)];
        for entry in self.entries.values() {
            let label = entry.state.label();
            if let Some(c) = counts.iter_mut().find(|(l, _)| *l == label) {
                c.1 += 1;
            }
        }
        counts
    }

    /// True when `id` is expected.
    pub fn contains(&self, id: &str) -> bool {
        self.entries.contains_key(id)
    }

    /// Every expected id, in config order, as `/clients?state=all` lists it.
    pub fn views(&self, listener: Option<&str>) -> Vec<PresenceView> {
        self.order
            .iter()
            .filter_map(|id| self.entries.get(id).map(|e| (id, e)))
            .filter(|(_, e)| listener.is_none_or(|l| e.listener == l))
            .map(|(id, e)| {
                let (since, reason, session, peer) = match &e.state {
                    Presence::Online { since, session, peer } => {
                        (*since, None, (*session > 0).then_some(*session), (!peer.is_empty()).then(|| peer.clone()))
                    }
                    Presence::Offline { since, reason } => (*since, Some(reason.as_str().to_owned()), None, None),
                    Presence::NeverSeen { since } => (*since, None, None, None),
                };
                PresenceView {
                    id: id.clone(),
                    listener: e.listener.clone(),
                    state: e.state.label().to_owned(),
                    expected: true,
                    since: humantime::format_rfc3339_millis(since).to_string(),
                    since_ms: unix_ms(since),
                    reason,
                    session,
                    peer,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::embedded;
    use crate::event::Client;
    use crate::wire::Protocol;

    fn listeners(ids: &[&str]) -> Vec<ListenerConfig> {
        let mut l = embedded().expect("embedded").listeners;
        l[0].expect = ids.iter().map(|s| s.to_string()).collect();
        l
    }

    fn client(id: &str) -> Client<'_> {
        Client { id, peer: "127.0.0.1:1".parse().expect("addr"), listener: "main", proto: Protocol::Native, session: 3 }
    }

    #[test]
    fn a_never_seen_client_is_missing_once_after_the_timeout() {
        let t0 = Instant::now();
        let mut e = Expected::default();
        e.reconfigure(&listeners(&["a", "b", "c"]), |id| id == "c", t0);
        e.on_event(&Event::Online(client("a")));
        let timeout = Duration::from_secs(15);
        assert_eq!(e.next_check(), Some(t0 + timeout));
        assert!(e.due(t0 + timeout - Duration::from_millis(1)).is_empty());
        assert_eq!(e.due(t0 + timeout), vec![Missing { id: "b".into(), listener: "main".into() }]);
        assert!(e.due(t0 + timeout * 10).is_empty(), "once");
        assert_eq!(e.counts(), [("online", 2), ("offline", 0), ("never-seen", 1)]);
    }

    #[test]
    fn offline_is_listed_with_its_reason_and_a_reload_adds_and_removes() {
        let t0 = Instant::now();
        let mut e = Expected::default();
        e.reconfigure(&listeners(&["a", "b"]), |_| false, t0);
        e.on_event(&Event::Online(client("a")));
        e.on_event(&Event::Offline {
            client: client("a"),
            reason: OfflineReason::Timeout,
            silent: Duration::ZERO,
            connected: Duration::ZERO,
            detail: None,
        });
        let views = e.views(None);
        assert_eq!((views[0].state.as_str(), views[0].reason.as_deref()), ("offline", Some("timeout")));
        assert_eq!(views[1].state, "never-seen");
        // b removed, d added later: a keeps its state, d gets its own check.
        let t1 = t0 + Duration::from_secs(5);
        e.reconfigure(&listeners(&["a", "d"]), |_| false, t1);
        let ids: Vec<String> = e.views(None).into_iter().map(|v| v.id).collect();
        assert_eq!(ids, ["a", "d"]);
        assert_eq!(e.views(None)[0].state, "offline");
        let due = e.due(t1 + Duration::from_secs(15));
        assert_eq!(due.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), ["a", "d"]);
        assert!(e.views(Some("other")).is_empty());
    }
}
