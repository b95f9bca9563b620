//! What the operator asks through signals: stop (SIGTERM, SIGINT), reload
//! the config (SIGHUP), list the clients (SIGUSR1).
//!
//! Invariants:
//! - a stop emits every offline event (`shutdown`) at once, then gives BYE
//!   frames until `shutdown_grace` to drain; a second stop signal ends it;
//! - a reload either applies a whole validated file or changes nothing
//!   (`reload-failed`), and tells systemd `RELOADING=1` then `READY=1`;
//!   a listener (or the status API) of a valid file that cannot be opened
//!   fails the reload in part (`reload-failed-in-part`): the rest applies,
//!   `STATUS=` names what failed, and the next reload retries it;
//! - every SIGHUP is answered in the runtime directory ([`crate::reload`]),
//!   so `systemctl reload` fails when the reload did.

use std::net::SocketAddr;
use std::time::Instant;

use log::{error, info, warn};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};

use super::{plural, Server, Slot, HTTP_BASE};
use crate::config::{self, Config, HttpConfig, ListenerConfig};
use crate::event::{Logfmt, OfflineReason};
use crate::http::Http;
use crate::logging;
use crate::session::Next;
use crate::sockopt;
use crate::{reload, systemd};

impl Server {
    pub(super) fn on_signals(&mut self, now: Instant) {
        let pending: Vec<i32> = self.signals.pending().collect();
        for signal in pending {
            match signal {
                SIGTERM | SIGINT => self.begin_shutdown(signal, now),
                SIGHUP => self.reload(now),
                SIGUSR1 => self.log_clients(now),
                _ => {}
            }
        }
    }

    pub(super) fn begin_shutdown(&mut self, signal: i32, now: Instant) {
        // A restart marked by `heartbeatd --stopping` keeps every client.
        if self.stop_by.is_none() && signal == SIGTERM && self.hand_over(now) {
            return;
        }
        if self.stop_by.is_some() {
            // A second stop signal: the operator wants out now. Every
            // offline event was already emitted when shutdown began.
            info!("stop-now signal={signal}");
            self.stop_by = Some(now);
            return;
        }
        let grace = self.config.daemon.shutdown_grace;
        self.notifier.stopping(&format!(
            "stopping: saying BYE to {} (within {} ms)",
            plural(self.online, "client", "clients"),
            grace.as_millis()
        ));
        info!("shutdown signal={} clients={} grace_ms={}", signal, self.conns.len(), grace.as_millis());
        self.stop_by = Some(now + grace);
        for (_, l) in self.listeners.iter_mut() {
            if let Some(mut socket) = l.socket.take() {
                let _ = self.poll.registry().deregister(&mut socket);
            }
        }
        let keys: Vec<usize> = self.conns.iter().filter(|(_, s)| !s.is_closing()).map(|(k, _)| k).collect();
        for key in keys {
            self.say_bye(key);
            self.close(key, OfflineReason::Shutdown, None, now);
        }
    }

    pub(super) fn reload(&mut self, now: Instant) {
        // Taken before the file is read: `heartbeatd --reload` accepts only
        // an answer from a reload that began after its SIGHUP.
        let started = systemd::monotonic_usec();
        if self.stop_by.is_some() {
            reload::record(started, Err("reload skipped: heartbeatd is stopping"));
            return;
        }
        let Some(path) = self.config_path.clone() else {
            info!("reload-skipped reason=\"no config file: running on the embedded config\"");
            reload::record(started, Err("reload skipped: no config file, heartbeatd runs on the embedded config"));
            return;
        };
        self.notifier.reloading();
        match config::load(&path) {
            Ok(new) => {
                let failures = self.apply_config(new, now);
                if failures.is_empty() {
                    self.reload_error = None;
                } else {
                    // The rest of the file is in force; what failed is
                    // retried by the next reload, and a restart would fail
                    // on it: the operator must hear of it now.
                    let what = failures.join("; ");
                    error!("reload-failed-in-part error={}", Logfmt(&what));
                    self.reload_error = Some(format!("reload failed in part: {what}"));
                }
                self.metrics.count_reload(failures.is_empty());
            }
            Err(e) => {
                error!("reload-failed keeping=running-config error={}", Logfmt(&e.to_string()));
                self.reload_error = Some(format!("reload failed, running config kept: {e}"));
                self.metrics.count_reload(false);
            }
        }
        reload::record(started, self.reload_error.as_deref().map_or(Ok(()), Err));
        // READY=1 ends the reload for systemd whether or not the file was
        // accepted: the daemon is serving either way.
        self.notifier.ready(&self.status_line());
    }

    /// Applies a validated config: daemon limits and log level at once;
    /// listeners matched by name. A listener whose address or protocol
    /// changed is closed and reopened; its clients go offline (`shutdown`).
    /// Returns what could not be opened (a listener or the status API whose
    /// address is taken), one operator-readable line each; the rest applies.
    pub(super) fn apply_config(&mut self, mut new: Config, now: Instant) -> Vec<String> {
        let mut failures = Vec::new();
        if new.daemon.tick != self.config.daemon.tick {
            warn!(
                "reload-tick-ignored running_ms={} configured_ms={} reason=\"tick changes take a restart\"",
                self.config.daemon.tick.as_millis(),
                new.daemon.tick.as_millis()
            );
            new.daemon.tick = self.config.daemon.tick;
        }
        logging::set_level(new.daemon.log_level);
        self.hooks.reconfigure(&new, |id| self.ids.contains_key(id), now);
        let (mut added, mut removed, mut changed) = (0, 0, 0);
        let current: Vec<(usize, ListenerConfig, Option<SocketAddr>)> =
            self.listeners.iter().map(|(k, l)| (k, l.cfg.clone(), l.bound_address())).collect();
        for (lkey, old, bound) in current {
            match new.listeners.iter().find(|n| n.name == old.name) {
                // The same socket keeps serving when the address is as
                // configured before, or now names the port that ":0" got.
                Some(n) if (n.address == old.address || Some(n.address) == bound) && n.protocol == old.protocol => {
                    let n = ListenerConfig { address: old.address, ..n.clone() };
                    if n != old {
                        self.update_listener(lkey, n, now);
                        changed += 1;
                    }
                }
                _ => {
                    self.close_listener(lkey, now);
                    removed += 1;
                }
            }
        }
        for cfg in &new.listeners {
            if self.listeners.iter().any(|(_, l)| l.cfg.name == cfg.name) {
                continue;
            }
            match self.open_listener(cfg.clone(), None) {
                Ok(()) => added += 1,
                Err(e) => {
                    error!("listener-failed listener={} error={}", Logfmt(&cfg.name), Logfmt(&e.to_string()));
                    failures.push(format!("listener {}: {e}", cfg.name));
                }
            }
        }
        if let Err(e) = self.apply_http(new.http.clone(), now) {
            failures.push(e);
        }
        config::log_warnings(&new);
        self.config = new;
        info!("reloaded listeners={} added={} removed={} changed={}", self.listeners.len(), added, removed, changed);
        failures
    }

    /// Applies a reloaded `[http]` table: new limits in place, or the status
    /// API closed and reopened when its address changed, added or removed.
    /// `Err` says why the new address could not be served.
    pub(super) fn apply_http(&mut self, wanted: Option<HttpConfig>, now: Instant) -> Result<(), String> {
        if let (Some(http), Some(cfg)) = (&mut self.http, &wanted) {
            if http.config().address == cfg.address {
                http.set_limits(cfg.clone());
                return Ok(());
            }
        }
        if let Some(mut old) = self.http.take() {
            old.close_all(self.poll.registry());
            info!("http-closed address={}", old.address());
        }
        if let Some(cfg) = wanted {
            let address = cfg.address;
            match Http::bind(cfg, self.poll.registry(), HTTP_BASE, now) {
                Ok(http) => self.http = Some(http),
                Err(e) => {
                    error!("http-failed address={} error={}", address, Logfmt(&e.to_string()));
                    return Err(format!("http on {address}: {e}"));
                }
            }
        }
        Ok(())
    }

    /// Applies new settings to a running listener and its clients: fresh
    /// socket options, re-armed deadlines, and a fresh WELCOME to native
    /// clients when their interval or timeout changed.
    pub(super) fn update_listener(&mut self, lkey: usize, cfg: ListenerConfig, now: Instant) {
        let old = std::mem::replace(&mut self.listeners[lkey].cfg, cfg);
        let l = &mut self.listeners[lkey];
        // Connections queued now were cloned with the old options.
        l.inherits_tcp &= old.tcp == l.cfg.tcp;
        let timing = old.interval != l.cfg.interval || old.timeout != l.cfg.timeout;
        let tcp = old.tcp != l.cfg.tcp;
        if let (true, Some(socket)) = (tcp, &l.socket) {
            // Connections accepted from now on inherit what is set here.
            let set = sockopt::apply(socket, &l.cfg.tcp);
            if let Err(e) = &set {
                warn!("sockopt-failed listener={} error={}", Logfmt(&l.cfg.name), Logfmt(&e.to_string()));
            }
            l.options_set = set.is_ok();
        }
        let l = &self.listeners[lkey];
        info!(
            "listener-updated listener={} interval_ms={} timeout_ms={}",
            Logfmt(&l.cfg.name),
            l.cfg.interval.as_millis(),
            l.cfg.timeout.as_millis()
        );
        let keys: Vec<usize> =
            self.conns.iter().filter(|(_, s)| s.conn.listener() == lkey && !s.is_closing()).map(|(k, _)| k).collect();
        for key in keys {
            let slot = &mut self.conns[key];
            let cfg = &self.listeners[lkey].cfg;
            if tcp {
                if let Err(e) = sockopt::apply(slot.conn.stream(), &cfg.tcp) {
                    warn!("sockopt-failed peer={} error={}", slot.conn.peer(), Logfmt(&e.to_string()));
                }
            }
            let mut next = Next::Continue;
            if timing {
                // The new timeout counts from now, the instant of the fresh
                // WELCOME that announces it: no native client is convicted
                // for a silence the old timing allowed (legacy and raw
                // clients are told nothing and keep their own clock).
                slot.conn.timing_changed(now);
                let session = slot.session;
                next = slot.conn.say(&mut self.scratch, |s, out| s.rewelcome(session, cfg, out));
            }
            self.settle(key, next, now);
            if !self.conns[key].is_closing() {
                self.arm(key);
            }
        }
    }

    pub(super) fn log_clients(&self, now: Instant) {
        let online: Vec<&Slot> = self.status_view(now).online().collect();
        info!("clients online={} connections={}", online.len(), self.conns.len());
        for slot in online {
            let (conn, session) = (&slot.conn, slot.conn.session());
            info!(
                "client client={} peer={} listener={} protocol={} session={} online_ms={} silent_ms={}",
                Logfmt(&conn.client_id()),
                conn.peer(),
                Logfmt(&self.listeners[conn.listener()].cfg.name),
                session.proto(),
                slot.session,
                now.saturating_duration_since(session.since()).as_millis(),
                now.saturating_duration_since(session.last_activity()).as_millis()
            );
        }
    }
}
