//! Hooks: the programs `[[hook]]` tables run on events, on the loop's own
//! poll.
//!
//! The loop hands every event to [`Hooks::on_event`] at its fan-out. Each
//! event gets a number (`HEARTBEAT_ID`, the same as its `/events` id while
//! the status API has served since start; a `mass-offline` or `missing`
//! run gets the number of the last event before it), the hooks that want it are
//! queued per client (`queue.rs`), and runs start while fewer than
//! `daemon.hook_concurrency` are going (`spawn.rs`). A child's pipes and
//! its exit (SIGCHLD, through `signal-hook-mio`, then `try_wait` of each
//! run) arrive as poll events at [`HOOK_BASE`] and above; its timeout is a
//! deadline the loop sleeps for ([`Hooks::next_deadline`]).
//!
//! Invariants:
//! - nothing here blocks the loop: no wait, no blocking pipe, no fork of
//!   the daemon's memory;
//! - hooks never run for an event the loop says is not live (a connection
//!   restored across a restart), nor for `shutdown` offlines (a stop, or a
//!   listener removed by a reload); probes and start-up make no events;
//! - every run ends in exactly one `hook-finished` line and one count of
//!   `heartbeatd_hook_runs_total`; every queued run is started, coalesced
//!   into a later one, or (at a full queue) dropped and counted.

mod expect;
mod guard;
mod queue;
mod spawn;

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use log::{info, warn};
use mio::{Interest, Registry, Token};
use signal_hook::consts::SIGCHLD;
use signal_hook_mio::v1_0::Signals;
use slab::Slab;

use crate::config::{Config, HookConfig, HookEvent};
use crate::event::{Event, Logfmt, OfflineReason};
use crate::http::feed::unix_ms;
use crate::metrics::{family, sample};
use guard::{Damped, Flaps, MassGuard, MassPolicy, Seen};
use queue::{Job, Pushed, Queue};
use spawn::{Outcome, Pipe, Run, Spec};

/// The first poll token of hooks: SIGCHLD. Runs' pipes follow, three per
/// run; the range ends below the client listeners' tokens.
pub const HOOK_BASE: usize = 1 << 39;
/// One past the last hook token.
pub const HOOK_END: usize = HOOK_BASE + (1 << 32);

/// What a hook run is told about its event: owned, shared by every hook
/// that runs for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Fired {
    /// The event's number since the daemon started.
    pub id: u64,
    /// Which kind.
    pub kind: HookEvent,
    /// The client id (empty for a mass-offline event).
    pub client: String,
    /// The peer address (empty for a mass-offline event).
    pub peer: String,
    /// The listener.
    pub listener: String,
    /// The listener's protocol.
    pub protocol: &'static str,
    /// The connection's session number (0 for a mass-offline event).
    pub session: u64,
    /// The offline reason.
    pub reason: Option<OfflineReason>,
    /// Silence before an offline, in ms.
    pub silent_ms: u64,
    /// Time online before an offline, in ms.
    pub connected_ms: u64,
    /// Wall-clock time of the event, Unix ms.
    pub at_ms: u64,
    /// The clients a mass-offline event stands for.
    pub clients: Vec<String>,
}

impl Fired {
    /// The owned form of a loop event numbered `id`.
    pub fn of(event: &Event<'_>, id: u64, at: SystemTime) -> Fired {
        let c = event.client();
        let (kind, reason, silent, connected) = match event {
            Event::Online(_) => (HookEvent::Online, None, Duration::ZERO, Duration::ZERO),
            Event::Offline { reason, silent, connected, .. } => {
                (HookEvent::Offline, Some(*reason), *silent, *connected)
            }
        };
        Fired {
            id,
            kind,
            client: c.id.to_owned(),
            peer: c.peer.to_string(),
            listener: c.listener.to_owned(),
            protocol: c.proto.as_str(),
            session: c.session,
            reason,
            silent_ms: millis(silent),
            connected_ms: millis(connected),
            at_ms: unix_ms(at),
            clients: Vec::new(),
        }
    }

    /// The `HEARTBEAT_*` environment of a run standing for `transitions`
    /// events. Every variable is always set, empty where it does not apply.
    fn env(&self, hook: &str, transitions: u32) -> Vec<(&'static str, String)> {
        let number = |n: u64| if self.kind == HookEvent::Offline { n.to_string() } else { String::new() };
        vec![
            ("HEARTBEAT_EVENT", self.kind.as_str().to_owned()),
            ("HEARTBEAT_CLIENT", self.client.clone()),
            ("HEARTBEAT_PEER", self.peer.clone()),
            ("HEARTBEAT_LISTENER", self.listener.clone()),
            ("HEARTBEAT_PROTOCOL", self.protocol.to_owned()),
            ("HEARTBEAT_REASON", self.reason.map_or_else(String::new, |r| r.as_str().to_owned())),
            ("HEARTBEAT_SESSION", if self.session == 0 { String::new() } else { self.session.to_string() }),
            ("HEARTBEAT_SILENT_MS", number(self.silent_ms)),
            ("HEARTBEAT_CONNECTED_MS", number(self.connected_ms)),
            ("HEARTBEAT_ID", self.id.to_string()),
            ("HEARTBEAT_TRANSITIONS", transitions.to_string()),
            (
                "HEARTBEAT_CLIENTS",
                if self.kind == HookEvent::MassOffline { self.clients.len().to_string() } else { String::new() },
            ),
            ("HEARTBEAT_HOOK", hook.to_owned()),
        ]
    }

    /// The JSON object on a run's stdin, one line.
    fn json(&self, hook: &str, transitions: u32) -> Vec<u8> {
        let mut object = serde_json::json!({
            "event": self.kind.as_str(),
            "id": self.id,
            "hook": hook,
            "transitions": transitions,
            "listener": self.listener,
            "protocol": self.protocol,
            "at": humantime::format_rfc3339_millis(SystemTime::UNIX_EPOCH + Duration::from_millis(self.at_ms)).to_string(),
            "at_ms": self.at_ms,
        });
        if self.kind != HookEvent::MassOffline {
            object["client"] = self.client.clone().into();
            object["peer"] = self.peer.clone().into();
            object["session"] = self.session.into();
        }
        if let Some(reason) = self.reason {
            object["reason"] = reason.as_str().into();
        }
        if self.kind == HookEvent::Offline {
            object["silent_ms"] = self.silent_ms.into();
            object["connected_ms"] = self.connected_ms.into();
        }
        if self.kind == HookEvent::MassOffline {
            object["clients"] = self.clients.clone().into();
        }
        let mut line = serde_json::to_vec(&object).unwrap_or_else(|_| b"{}".to_vec());
        line.push(b'\n');
        line
    }
}

/// Counters per hook name.
#[derive(Debug, Default, Clone)]
struct HookCounters {
    /// Runs by outcome label.
    outcomes: BTreeMap<&'static str, u64>,
    seconds: f64,
}

/// The hooks in force, their queue and their running children.
pub struct Hooks {
    hooks: Vec<Rc<HookConfig>>,
    concurrency: usize,
    queue: Queue<Rc<Fired>>,
    runs: Slab<(Run, Job<Rc<Fired>>)>,
    sigchld: Signals,
    /// The number of the last event seen.
    last_id: u64,
    per_hook: BTreeMap<Rc<str>, HookCounters>,
    dropped: u64,
    coalesced: u64,
    /// Clients online per listener, as the events tell (the mass-loss
    /// guard's denominator).
    online: HashMap<String, usize>,
    mass: MassGuard<Rc<Fired>>,
    policy: MassPolicy,
    flaps: Flaps<Rc<Fired>>,
    /// Runs left out: by a mass loss's one run, by flap damping.
    replaced_by_mass: u64,
    damped: u64,
    mass_events: BTreeMap<String, u64>,
    expected: expect::Expected,
    missing: u64,
}

impl Hooks {
    /// The hooks of `config`, with SIGCHLD registered on the loop's poll.
    pub fn new(config: &Config, registry: &Registry) -> io::Result<Hooks> {
        let mut sigchld = Signals::new([SIGCHLD])?;
        registry.register(&mut sigchld, Token(HOOK_BASE), Interest::READABLE)?;
        let mut hooks = Hooks {
            hooks: Vec::new(),
            concurrency: 1,
            queue: Queue::new(config.daemon.hook_queue),
            runs: Slab::new(),
            sigchld,
            last_id: 0,
            per_hook: BTreeMap::new(),
            dropped: 0,
            coalesced: 0,
            online: HashMap::new(),
            mass: MassGuard::default(),
            policy: policy_of(config),
            flaps: Flaps::default(),
            replaced_by_mass: 0,
            damped: 0,
            mass_events: BTreeMap::new(),
            expected: expect::Expected::default(),
            missing: 0,
        };
        hooks.reconfigure(config, |_| false, Instant::now());
        Ok(hooks)
    }

    /// Replaces the hook set and limits (a reload). Runs already queued or
    /// going keep the command they were queued with. Expected ids new to
    /// the lists start now (`online` says which are online already).
    pub fn reconfigure(&mut self, config: &Config, online: impl Fn(&str) -> bool, now: Instant) {
        self.expected.reconfigure(&config.listeners, online, now);
        self.hooks = config.hooks.iter().cloned().map(Rc::new).collect();
        self.concurrency = config.daemon.hook_concurrency.max(1);
        self.queue.set_bound(config.daemon.hook_queue);
        self.policy = policy_of(config);
        for hook in &self.hooks {
            self.per_hook.entry(Rc::from(hook.name.as_str())).or_default();
        }
    }

    /// True for tokens in the hooks' range.
    pub fn owns(token: Token) -> bool {
        (HOOK_BASE..HOOK_END).contains(&token.0)
    }

    /// Numbers an event and queues the hooks that want it; `live` is false
    /// for events that must run no hook (a connection restored across a
    /// restart): they are numbered, nothing more.
    pub fn on_event(&mut self, registry: &Registry, event: &Event<'_>, live: bool, now: Instant) {
        self.last_id += 1;
        let listener = event.client().listener;
        let online = self.online.entry(listener.to_owned()).or_default();
        let before = *online;
        match event {
            Event::Online(_) => *online += 1,
            Event::Offline { .. } => *online = online.saturating_sub(1),
        }
        self.expected.on_event(event);
        if !live {
            return;
        }
        let silence = match event {
            Event::Offline { reason: OfflineReason::Shutdown, .. } => return,
            Event::Offline { reason, .. } => guard::is_silence(*reason),
            Event::Online(_) => false,
        };
        let fired = Rc::new(Fired::of(event, self.last_id, SystemTime::now()));
        let client = fired.client.clone();
        let seen = Seen { listener, client: &client, silence, online: before };
        if let Some(fired) = self.mass.offer(&self.policy, seen, fired, now) {
            self.damp(fired, now);
        }
        self.start_ready(registry, now);
    }

    /// Passes an event through flap damping to the queue.
    fn damp(&mut self, fired: Rc<Fired>, now: Instant) {
        let offline = fired.kind == HookEvent::Offline;
        match self.flaps.on_event(&fired.client, offline, Rc::clone(&fired), now) {
            Damped::Run => self.fire(fired, 1),
            Damped::Suppressed { began } => {
                self.damped += 1;
                if began {
                    let penalty = self.flaps.state(&fired.client, now).map_or(0.0, |(p, _)| p);
                    warn!(
                        "flapping client={} listener={} penalty={:.2} hooks=suppressed release_below={}",
                        Logfmt(&fired.client),
                        Logfmt(&fired.listener),
                        penalty,
                        guard::RELEASE_BELOW
                    );
                }
            }
        }
    }

    /// The flap state `/clients/{id}` shows: the decayed count of recent
    /// offlines and whether the client's hooks are suppressed.
    pub fn flap_state(&self, client: &str, now: Instant) -> Option<(f64, bool)> {
        self.flaps.state(client, now)
    }

    /// The expected clients and their states.
    pub fn expected(&self) -> &expect::Expected {
        &self.expected
    }

    /// Closes due mass-loss windows, releases flapping clients whose
    /// penalty decayed, and gives `missing` to expected clients not online
    /// their listener's timeout after they were expected.
    fn on_guards(&mut self, now: Instant) {
        for missing in self.expected.due(now) {
            self.missing += 1;
            warn!("missing client={} listener={}", Logfmt(&missing.id), Logfmt(&missing.listener));
            let fired = Fired {
                id: self.last_id,
                kind: HookEvent::Missing,
                client: missing.id,
                peer: String::new(),
                listener: missing.listener,
                protocol: "native",
                session: 0,
                reason: None,
                silent_ms: 0,
                connected_ms: 0,
                at_ms: unix_ms(SystemTime::now()),
                clients: Vec::new(),
            };
            self.fire(Rc::new(fired), 1);
        }
        for verdict in self.mass.close_due(&self.policy, now) {
            if let Some(ids) = verdict.mass {
                self.replaced_by_mass += u64::try_from(verdict.replaced).unwrap_or(u64::MAX);
                *self.mass_events.entry(verdict.listener.clone()).or_default() += 1;
                log::error!(
                    "mass-offline listener={} clients={} window_ms={}",
                    Logfmt(&verdict.listener),
                    ids.len(),
                    verdict.window.as_millis()
                );
                let fired = Fired {
                    id: self.last_id,
                    kind: HookEvent::MassOffline,
                    client: String::new(),
                    peer: String::new(),
                    listener: verdict.listener.clone(),
                    protocol: "",
                    session: 0,
                    reason: None,
                    silent_ms: 0,
                    connected_ms: 0,
                    at_ms: unix_ms(SystemTime::now()),
                    clients: ids,
                };
                self.fire(Rc::new(fired), 1);
            }
            for (_, fired) in verdict.release {
                self.damp(fired, now);
            }
        }
        for (client, held) in self.flaps.release(now) {
            info!("flapping-ended client={} suppressed={}", Logfmt(&client), held.as_ref().map_or(0, |(_, n)| *n));
            if let Some((fired, transitions)) = held {
                self.fire(fired, transitions);
            }
        }
    }

    /// Queues every hook that wants `fired`, under its client's key.
    fn fire(&mut self, fired: Rc<Fired>, transitions: u32) {
        let client = (fired.kind != HookEvent::MassOffline).then_some(fired.client.as_str());
        let key = match fired.kind {
            HookEvent::MassOffline => format!("\0mass-offline\0{}", fired.listener),
            _ => fired.client.clone(),
        };
        let wanted: Vec<Rc<HookConfig>> =
            self.hooks.iter().filter(|h| h.wants(fired.kind, &fired.listener, client, fired.reason)).cloned().collect();
        for hook in wanted {
            let job = Job { hook: Rc::from(hook.name.as_str()), event: Rc::clone(&fired), transitions };
            match self.queue.push(&key, job) {
                Pushed::Queued => {}
                Pushed::Coalesced => self.coalesced += 1,
                Pushed::Dropped { first } => {
                    self.dropped += 1;
                    if first {
                        warn!(
                            "hooks-dropped hook={} client={} event={} id={} queued={} reason=\"hook queue full (daemon.hook_queue): further drops are counted in heartbeatd_hooks_dropped_total until it empties\"",
                            Logfmt(&hook.name),
                            Logfmt(&fired.client),
                            fired.kind,
                            fired.id,
                            self.queue.waiting()
                        );
                    }
                }
            }
        }
    }

    /// Starts queued runs while fewer than `hook_concurrency` are going.
    fn start_ready(&mut self, registry: &Registry, now: Instant) {
        while self.runs.len() < self.concurrency {
            let Some((client, job)) = self.queue.next() else { break };
            let Some(hook) = self.hooks.iter().find(|h| *h.name == *job.hook).cloned() else {
                // Its hook was removed by a reload while the run waited.
                info!(
                    "hook-skipped hook={} client={} reason=\"removed by reload\"",
                    Logfmt(&job.hook),
                    Logfmt(&client)
                );
                self.queue.done(&client);
                continue;
            };
            let spec = Spec {
                command: &hook.command,
                env: job.event.env(&hook.name, job.transitions),
                stdin: job.event.json(&hook.name, job.transitions),
            };
            let entry = self.runs.vacant_entry();
            let base = HOOK_BASE + 1 + entry.key() * 3;
            match Run::start(spec, Rc::clone(&client), Rc::clone(&job.hook), hook.timeout, registry, base, now) {
                Ok(run) => {
                    info!(
                        "hook-started hook={} client={} event={} id={} transitions={} pid={}",
                        Logfmt(&hook.name),
                        Logfmt(&client_label(&client)),
                        job.event.kind,
                        job.event.id,
                        job.transitions,
                        run.pid()
                    );
                    entry.insert((run, job));
                }
                Err(e) => {
                    warn!(
                        "hook-finished hook={} client={} event={} id={} outcome=spawn-error error={}",
                        Logfmt(&hook.name),
                        Logfmt(&client_label(&client)),
                        job.event.kind,
                        job.event.id,
                        Logfmt(&e.to_string())
                    );
                    self.count(&job.hook, "spawn-error", Duration::ZERO);
                    self.queue.done(&client);
                }
            }
        }
        let dropped = self.queue.end_episode();
        if dropped > 0 {
            info!("hooks-drained dropped={dropped}");
        }
    }

    /// Handles a poll event at a hook token.
    pub fn on_ready(&mut self, registry: &Registry, token: Token, now: Instant) {
        if token.0 == HOOK_BASE {
            // Drained so the next SIGCHLD wakes the poll again; which
            // child exited is learnt from `try_wait`, one per run.
            let _ = self.sigchld.pending().count();
            self.reap(registry, now);
            return;
        }
        let offset = token.0 - HOOK_BASE - 1;
        if let (Some((run, _)), Some(pipe)) = (self.runs.get_mut(offset / 3), Pipe::at(offset % 3)) {
            run.on_pipe(registry, pipe);
        }
    }

    /// Reaps every run whose child exited, logs and counts it, and starts
    /// what waited.
    fn reap(&mut self, registry: &Registry, now: Instant) {
        let keys: Vec<usize> = self.runs.iter().map(|(k, _)| k).collect();
        for key in keys {
            let Some(ended) = self.runs[key].0.try_finish(registry, now) else { continue };
            let (run, job) = self.runs.remove(key);
            let (outcome, _, took) = ended;
            let detail = match outcome {
                Outcome::Ok => "exit_code=0".to_owned(),
                Outcome::Failed(code) => format!("exit_code={code}"),
                Outcome::Signaled(signal) => format!("signal={signal}"),
                Outcome::TimedOut => "killed=timeout".to_owned(),
            };
            let level = if outcome == Outcome::Ok { log::Level::Info } else { log::Level::Warn };
            let discarded = match run.discarded() {
                0 => String::new(),
                n => format!(" output_discarded_bytes={n}"),
            };
            log::log!(
                level,
                "hook-finished hook={} client={} event={} id={} pid={} outcome={} {} duration_ms={}{}",
                Logfmt(&run.hook),
                Logfmt(&client_label(&run.client)),
                job.event.kind,
                job.event.id,
                run.pid(),
                outcome.label(),
                detail,
                took.as_millis(),
                discarded
            );
            self.count(&run.hook, outcome.label(), took);
            self.queue.done(&run.client);
        }
        self.start_ready(registry, now);
    }

    fn count(&mut self, hook: &Rc<str>, outcome: &'static str, took: Duration) {
        let counters = self.per_hook.entry(Rc::clone(hook)).or_default();
        *counters.outcomes.entry(outcome).or_default() += 1;
        counters.seconds += took.as_secs_f64();
    }

    /// The next timeout or kill, window close or flap release due.
    pub fn next_deadline(&self) -> Option<Instant> {
        let runs = self.runs.iter().map(|(_, (run, _))| run.deadline()).min();
        [runs, self.mass.next_close(&self.policy), self.flaps.next_release(), self.expected.next_check()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Escalates runs past their deadline (SIGTERM, then SIGKILL).
    pub fn on_time(&mut self, registry: &Registry, now: Instant) {
        self.on_guards(now);
        for (_, (run, _)) in self.runs.iter_mut() {
            run.on_deadline(now);
        }
        // A SIGKILL'd child may have exited before its SIGCHLD is polled;
        // reaping now costs one waitpid per run.
        self.reap(registry, now);
    }

    /// Appends the hooks' families to the `/metrics` exposition.
    pub fn render_metrics(&self, out: &mut String) {
        family(out, "heartbeatd_hook_runs_total", "counter", "Hook runs finished, by hook and outcome.");
        for (hook, c) in &self.per_hook {
            for outcome in ["ok", "failed", "signaled", "timeout", "spawn-error"] {
                let n = c.outcomes.get(outcome).copied().unwrap_or(0);
                sample(out, "heartbeatd_hook_runs_total", &[("hook", hook), ("outcome", outcome)], n);
            }
        }
        family(out, "heartbeatd_hook_run_seconds_total", "counter", "Time hook runs took, by hook.");
        for (hook, c) in &self.per_hook {
            sample(out, "heartbeatd_hook_run_seconds_total", &[("hook", hook)], format!("{:.3}", c.seconds));
        }
        family(out, "heartbeatd_hooks_running", "gauge", "Hook programs running now.");
        sample(out, "heartbeatd_hooks_running", &[], self.runs.len());
        family(out, "heartbeatd_hooks_queued", "gauge", "Hook runs waiting to start.");
        sample(out, "heartbeatd_hooks_queued", &[], self.queue.waiting());
        family(
            out,
            "heartbeatd_hooks_dropped_total",
            "counter",
            "Hook runs dropped at a full queue (daemon.hook_queue).",
        );
        sample(out, "heartbeatd_hooks_dropped_total", &[], self.dropped);
        family(
            out,
            "heartbeatd_hooks_coalesced_total",
            "counter",
            "Hook runs merged into a later run of the same hook for the same client.",
        );
        sample(out, "heartbeatd_hooks_coalesced_total", &[], self.coalesced);
        family(
            out,
            "heartbeatd_hooks_suppressed_total",
            "counter",
            "Events whose hooks did not run: replaced by one mass-offline run, or damped while the client flapped.",
        );
        sample(out, "heartbeatd_hooks_suppressed_total", &[("reason", "mass-offline")], self.replaced_by_mass);
        sample(out, "heartbeatd_hooks_suppressed_total", &[("reason", "flapping")], self.damped);
        family(out, "heartbeatd_expected_clients", "gauge", "Expected clients (listener expect), by state.");
        for (state, n) in self.expected.counts() {
            sample(out, "heartbeatd_expected_clients", &[("state", state)], n);
        }
        family(out, "heartbeatd_missing_total", "counter", "Missing events: expected clients not online in time.");
        sample(out, "heartbeatd_missing_total", &[], self.missing);
        family(out, "heartbeatd_mass_offline_total", "counter", "Mass losses detected, by listener.");
        for (listener, n) in &self.mass_events {
            sample(out, "heartbeatd_mass_offline_total", &[("listener", listener)], n);
        }
    }
}

/// The mass-loss settings of `config`.
fn policy_of(config: &Config) -> MassPolicy {
    MassPolicy {
        window: config.daemon.mass_offline_window,
        fraction: config.daemon.mass_offline_fraction,
        min: config.daemon.mass_offline_min,
    }
}

/// A queue key as logs show it: the client id, or `mass-offline:LISTENER`.
fn client_label(key: &str) -> String {
    match key.strip_prefix("\0mass-offline\0") {
        Some(listener) => format!("mass-offline:{listener}"),
        None => key.to_owned(),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Client;
    use crate::wire::Protocol;

    fn offline() -> Fired {
        let event = Event::Offline {
            client: Client {
                id: "dev-1",
                peer: "10.0.0.7:5000".parse().expect("addr"),
                listener: "main",
                proto: Protocol::Native,
                session: 4,
            },
            reason: OfflineReason::Timeout,
            silent: Duration::from_millis(1500),
            connected: Duration::from_secs(9),
            detail: None,
        };
        Fired::of(&event, 7, SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123))
    }

    #[test]
    fn a_run_is_told_the_event_in_env_and_json() {
        let fired = offline();
        let env: BTreeMap<&str, String> = fired.env("page", 3).into_iter().collect();
        assert_eq!(env["HEARTBEAT_EVENT"], "offline");
        assert_eq!(env["HEARTBEAT_CLIENT"], "dev-1");
        assert_eq!(env["HEARTBEAT_PEER"], "10.0.0.7:5000");
        assert_eq!(env["HEARTBEAT_REASON"], "timeout");
        assert_eq!(env["HEARTBEAT_SESSION"], "4");
        assert_eq!(env["HEARTBEAT_SILENT_MS"], "1500");
        assert_eq!(env["HEARTBEAT_CONNECTED_MS"], "9000");
        assert_eq!(env["HEARTBEAT_ID"], "7");
        assert_eq!(env["HEARTBEAT_TRANSITIONS"], "3");
        assert_eq!(env["HEARTBEAT_CLIENTS"], "");
        let json: serde_json::Value = serde_json::from_slice(&fired.json("page", 3)).expect("json");
        assert_eq!(json["client"], "dev-1");
        assert_eq!(json["at"], "2023-11-14T22:13:20.123Z");
        assert_eq!(json["transitions"], 3);
        assert_eq!(json["silent_ms"], 1500);
        assert!(json.get("clients").is_none());
    }

    #[test]
    fn a_mass_offline_run_gets_the_ids() {
        let fired = Fired {
            kind: HookEvent::MassOffline,
            client: String::new(),
            peer: String::new(),
            session: 0,
            clients: vec!["a".into(), "b".into()],
            ..offline()
        };
        let env: BTreeMap<&str, String> = fired.env("page", 1).into_iter().collect();
        assert_eq!((env["HEARTBEAT_CLIENTS"].as_str(), env["HEARTBEAT_SESSION"].as_str()), ("2", ""));
        let json: serde_json::Value = serde_json::from_slice(&fired.json("page", 1)).expect("json");
        assert_eq!(json["clients"], serde_json::json!(["a", "b"]));
        assert!(json.get("client").is_none());
        assert_eq!(client_label("\0mass-offline\0main"), "mass-offline:main");
    }
}
