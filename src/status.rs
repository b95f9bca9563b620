//! What the daemon shows of itself: the online clients as `/clients` and
//! SIGUSR1 list them, and the live numbers `/metrics` adds to its counters
//! (clients online, each listener's interval and timeout in force).
//!
//! A [`StatusView`] borrows the loop's tables read-only for the length of
//! one request (or one page of a snapshot); it changes nothing and holds
//! nothing.

use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use slab::Slab;

use crate::api::{ClientView, FlapView, Health, HttpStats, PresenceView, View};
use crate::config::ListenerConfig;
use crate::http::feed::unix_ms;
use crate::metrics::{Gauges, Metrics};
use crate::server::Slot;
use crate::sockopt;

/// What the view needs of the loop's listener table.
pub trait ListenerNames {
    /// The name of the listener with this key ("" if there is none).
    fn name(&self, key: usize) -> &str;
    /// The configuration in force of every listener in the table.
    fn configs(&self) -> Vec<&ListenerConfig>;
}

/// The loop's tables, borrowed for one request.
pub struct StatusView<'a> {
    /// The connection table.
    pub conns: &'a Slab<Slot>,
    /// The listener table.
    pub listeners: &'a dyn ListenerNames,
    /// Online native clients by id.
    pub ids: &'a HashMap<Rc<str>, usize>,
    /// The loop's counters.
    pub metrics: &'a Metrics,
    /// The hooks, whose counters `/metrics` appends.
    pub hooks: &'a crate::hooks::Hooks,
    /// Timers armed in the wheel.
    pub wheel_timers: usize,
    /// Clients online now, as the loop counts them (no walk of the table).
    pub online: usize,
    /// The loop's current instant.
    pub now: Instant,
}

impl<'a> StatusView<'a> {
    /// Online connections, not yet closing.
    pub fn online(&self) -> impl Iterator<Item = &'a Slot> + 'a {
        self.conns.iter().map(|(_, s)| s).filter(|s| s.conn().session().is_online() && !s.is_closing())
    }

    fn view_of(&self, slot: &Slot) -> ClientView {
        let (conn, session) = (slot.conn(), slot.conn().session());
        let online_for = self.now.saturating_duration_since(session.since());
        let since = SystemTime::now().checked_sub(online_for).unwrap_or(SystemTime::UNIX_EPOCH);
        let id = conn.client_id();
        let flap = self.hooks.flap_state(&id, self.now).map(|(penalty, flapping)| FlapView {
            flapping,
            // Two decimals are all a reader needs of a decaying count.
            penalty: (penalty * 100.0).round() / 100.0,
        });
        ClientView {
            id,
            peer: conn.peer().to_string(),
            listener: self.listeners.name(conn.listener()).to_owned(),
            protocol: session.proto().as_str().to_owned(),
            session: slot.session_number(),
            online_since: humantime::format_rfc3339_millis(since).to_string(),
            online_since_ms: unix_ms(since),
            last_activity_ms: u64::try_from(self.now.saturating_duration_since(session.last_activity()).as_millis())
                .unwrap_or(u64::MAX),
            heartbeats: session.heartbeats(),
            tcp: sockopt::tcp_info(conn.stream()),
            flap,
        }
    }
}

impl View for StatusView<'_> {
    fn clients(&self, listener: Option<&str>) -> Vec<ClientView> {
        let mut clients: Vec<ClientView> = self
            .online()
            .filter(|s| listener.is_none_or(|name| self.listeners.name(s.conn().listener()) == name))
            .map(|c| self.view_of(c))
            .collect();
        clients.sort_by_key(|c| c.session);
        clients
    }

    /// One scan of the table, keeping the `limit` smallest sessions after
    /// `after` in a bounded heap; only those are rendered (each costs a
    /// `TCP_INFO` call). Cost O(table · log limit), memory O(limit).
    fn clients_page(&self, listener: Option<&str>, after: u64, limit: usize) -> Vec<ClientView> {
        let mut page: BinaryHeap<(u64, usize)> = BinaryHeap::with_capacity(limit + 1);
        for (key, slot) in self.conns.iter() {
            let session = slot.session_number();
            if session <= after
                || !slot.conn().session().is_online()
                || slot.is_closing()
                || listener.is_some_and(|name| self.listeners.name(slot.conn().listener()) != name)
            {
                continue;
            }
            if page.len() < limit {
                page.push((session, key));
            } else if page.peek().is_some_and(|&(largest, _)| session < largest) {
                page.pop();
                page.push((session, key));
            }
        }
        page.into_sorted_vec()
            .into_iter()
            .filter_map(|(_, key)| self.conns.get(key))
            .map(|slot| self.view_of(slot))
            .collect()
    }

    fn client(&self, id: &str) -> Option<ClientView> {
        if let Some(slot) = self.ids.get(id).and_then(|&key| self.conns.get(key)) {
            return Some(self.view_of(slot));
        }
        // Legacy and raw clients are named by their peer address.
        let peer: SocketAddr = id.parse().ok()?;
        self.online().find(|s| s.conn().session().id().is_none() && s.conn().peer() == peer).map(|s| self.view_of(s))
    }

    fn metrics(&self, http: &HttpStats) -> String {
        let mut listeners: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for slot in self.online() {
            let entry = listeners.entry(self.listeners.name(slot.conn().listener()).to_owned()).or_default();
            entry.0 += 1;
            entry.1 += slot.conn().session().heartbeats();
        }
        let mut messages: BTreeMap<String, u64> = BTreeMap::new();
        for slot in self.online().filter(|s| s.conn().session().proto() == crate::wire::Protocol::WebSocket) {
            *messages.entry(self.listeners.name(slot.conn().listener()).to_owned()).or_default() +=
                slot.conn().session().messages();
        }
        let gauges = Gauges {
            listeners,
            websocket_messages: messages,
            connections: u64::try_from(self.conns.len()).unwrap_or(u64::MAX),
            wheel_timers: u64::try_from(self.wheel_timers).unwrap_or(u64::MAX),
            subscribers: http.subscribers,
            subscribers_dropped: http.subscribers_dropped,
            http_requests: http.requests,
            timing: self.listeners.configs().into_iter().map(|c| (c.name.clone(), (c.interval, c.timeout))).collect(),
        };
        let mut out = self.metrics.render(&gauges);
        self.hooks.render_metrics(&mut out);
        out
    }

    fn presence(&self, listener: Option<&str>) -> Vec<PresenceView> {
        let expected = self.hooks.expected();
        let mut out: Vec<PresenceView> = self
            .clients(listener)
            .into_iter()
            .filter(|c| !expected.contains(&c.id))
            .map(|c| PresenceView {
                id: c.id,
                listener: c.listener,
                state: "online".to_owned(),
                expected: false,
                since: c.online_since,
                since_ms: c.online_since_ms,
                reason: None,
                session: Some(c.session),
                peer: Some(c.peer),
            })
            .collect();
        out.extend(expected.views(listener));
        out
    }

    fn health(&self) -> Health {
        let uptime = self.metrics.started().elapsed().unwrap_or_default();
        let (lag, last_stall, loop_stalls) = self.metrics.lateness();
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Health {
            status: "ok",
            uptime_ms: u64::try_from(uptime.as_millis()).unwrap_or(u64::MAX),
            online: u64::try_from(self.online).unwrap_or(u64::MAX),
            connections: u64::try_from(self.conns.len()).unwrap_or(u64::MAX),
            lag_ms: ms(lag),
            last_stall_ms: ms(last_stall),
            loop_stalls,
        }
    }
}
